//! Sends Rollout notifications ([`crate::core::notification`]) to the webhook a Rollout names,
//! in the background: a reconcile never waits on a webhook. Each delivery is retried with
//! backoff while the receiver may still take it; what cannot be delivered is logged, counted
//! and announced with a Warning Event on the Rollout, never dropped in silence.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, runtime::events::EventType};
use tokio::sync::{Semaphore, mpsc};

use super::{Context, status::publish};
use crate::{
    api::Rollout,
    core::notification::{
        DELIVERY_HEADER, EVENT_HEADER, MAX_ATTEMPTS, SIGNATURE_HEADER, WebhookEvent, retry_delay, signature,
        worth_retrying,
    },
};

/// The Secret key with the webhook's URL.
pub const URL_KEY: &str = "url";
/// The Secret key with the HMAC key.
pub const SIGNING_KEY: &str = "signingKey";
/// Deliveries waiting to be sent; more are refused (and counted) rather than held without bound.
const QUEUE: usize = 1024;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 8;
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The Warning reason of a notification that could not be delivered.
pub const NOTIFICATION_FAILED: &str = "NotificationFailed";

/// One notification to send.
struct Delivery {
    context: Arc<Context>,
    rollout: Rollout,
    secret: String,
    event: WebhookEvent,
}

/// Queues notifications for the background sender.
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Delivery>,
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    /// The Secret or one of its keys is missing: no attempt can pass until it is fixed.
    #[error("{0}")]
    Configuration(String),
    /// The receiver refused it for good (a 4xx other than 408/429).
    #[error("the webhook answered HTTP {0}")]
    Refused(u16),
    /// Every attempt failed.
    #[error("{attempts} attempts failed, the last: {last}")]
    GaveUp { attempts: u32, last: String },
}

impl Notifier {
    /// Starts the sender (on the current Tokio runtime); it ends when the Notifier is dropped
    /// and its queue is empty.
    pub fn start(http: reqwest::Client) -> Notifier {
        let (queue, mut deliveries) = mpsc::channel::<Delivery>(QUEUE);
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(CONCURRENCY));
            while let Some(delivery) = deliveries.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let http = http.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    deliver(&http, delivery).await;
                });
            }
        });
        Notifier { queue }
    }

    /// Queues the notification of `event` for `rollout`'s webhook (if it names one).
    pub fn send(&self, context: &Arc<Context>, rollout: &Rollout, event: WebhookEvent) {
        let Some(notifications) = &rollout.spec.notifications else {
            return;
        };
        let delivery = Delivery {
            context: Arc::clone(context),
            rollout: rollout.clone(),
            secret: notifications.webhook.secret_ref.name.clone(),
            event,
        };
        if let Err(error) = self.queue.try_send(delivery) {
            let outcome = match error {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "stopped",
            };
            tracing::warn!(outcome, "a Rollout notification was not queued");
            count(context, outcome);
        }
    }
}

fn count(context: &Context, outcome: &str) {
    context
        .metrics
        .notifications
        .get_or_create(&super::metrics::OutcomeLabels {
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Sends one delivery with its retries and reports how it ended.
#[tracing::instrument(skip_all, fields(kind = "Rollout", name = delivery.event.rollout.name, namespace = delivery.event.rollout.namespace, reason = delivery.event.reason))]
async fn deliver(http: &reqwest::Client, delivery: Delivery) {
    let context = delivery.context.as_ref();
    match attempt_all(context, http, &delivery).await {
        Ok(attempts) => {
            tracing::debug!(attempts, "notification delivered");
            count(context, "delivered");
        }
        Err(error) => {
            tracing::warn!(error = %error, "a Rollout notification could not be delivered");
            count(context, "failed");
            let note = format!(
                "The {} notification ({}) was not delivered to the webhook of Secret {}: {error}",
                delivery.event.reason, delivery.event.id, delivery.secret
            );
            publish(
                context,
                &delivery.rollout,
                EventType::Warning,
                NOTIFICATION_FAILED,
                note,
            )
            .await;
        }
    }
}

/// Where one attempt posts, and the key it signs with, from the Secret.
struct Target {
    url: reqwest::Url,
    /// The value of the signature header.
    signature: String,
}

/// Why the Secret gave no target.
enum TargetError {
    /// The read failed and may pass later.
    Transient(String),
    /// The Secret or one of its keys is missing or wrong: no attempt can pass until it is fixed.
    Fatal(DeliveryError),
}

impl From<DeliveryError> for TargetError {
    fn from(error: DeliveryError) -> Self {
        TargetError::Fatal(error)
    }
}

/// Reads the Secret: where to post and the signature.
async fn read_target(context: &Context, delivery: &Delivery, body: &[u8]) -> Result<Target, TargetError> {
    let namespace = delivery.event.rollout.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    let secret = match secrets.get_opt(&delivery.secret).await {
        Ok(secret) => secret,
        Err(error) => {
            return Err(TargetError::Transient(format!(
                "reading Secret {}: {error}",
                delivery.secret
            )));
        }
    };
    let secret = secret
        .ok_or_else(|| DeliveryError::Configuration(format!("Secret {} does not exist", delivery.secret)))?;
    let key = |name: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(name))
            .map(|value| value.0.clone())
            .ok_or_else(|| {
                DeliveryError::Configuration(format!("Secret {} has no key {name}", delivery.secret))
            })
    };
    let url = String::from_utf8(key(URL_KEY)?).map_err(|_| {
        DeliveryError::Configuration(format!(
            "the {URL_KEY} of Secret {} is not UTF-8",
            delivery.secret
        ))
    })?;
    let url = reqwest::Url::parse(url.trim()).map_err(|error| {
        DeliveryError::Configuration(format!(
            "the {URL_KEY} of Secret {} is not a URL: {error}",
            delivery.secret
        ))
    })?;
    let signature = signature(&key(SIGNING_KEY)?, body).map_err(|error| {
        DeliveryError::Configuration(format!(
            "the {SIGNING_KEY} of Secret {} cannot sign: {error}",
            delivery.secret
        ))
    })?;
    Ok(Target { url, signature })
}

/// Reads the Secret and posts until an attempt passes; the number of attempts it took. The
/// Secret is read at each attempt, so a transient API error is retried and a mended Secret is
/// used at once.
async fn attempt_all(
    context: &Context,
    http: &reqwest::Client,
    delivery: &Delivery,
) -> Result<u32, DeliveryError> {
    // Serializing plain data cannot fail.
    let body = serde_json::to_vec(&delivery.event).unwrap_or_default();
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(retry_delay(attempt - 1)).await;
        }
        let target = match read_target(context, delivery, &body).await {
            Ok(target) => target,
            Err(TargetError::Fatal(error)) => return Err(error),
            Err(TargetError::Transient(why)) => {
                last = why;
                continue;
            }
        };
        let sent = http
            .post(target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &target.signature)
            .header(DELIVERY_HEADER, &delivery.event.id)
            .header(EVENT_HEADER, delivery.event.reason)
            .timeout(ATTEMPT_TIMEOUT)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return Ok(attempt),
            Ok(response) if !worth_retrying(response.status().as_u16()) => {
                return Err(DeliveryError::Refused(response.status().as_u16()));
            }
            Ok(response) => last = format!("HTTP {}", response.status()),
            // The URL may be a credential: the error's text names it, so say only what failed.
            Err(error) if error.is_timeout() => last = "timed out".to_owned(),
            Err(error) if error.is_connect() => last = "could not connect".to_owned(),
            Err(_) => last = "the request failed".to_owned(),
        }
    }
    Err(DeliveryError::GaveUp {
        attempts: MAX_ATTEMPTS,
        last,
    })
}
