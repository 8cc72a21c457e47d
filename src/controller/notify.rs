//! Sends Rollout notifications ([`crate::core::notification`]) to the webhook a Rollout names,
//! in the background: a reconcile never waits on a webhook. Each delivery is written into the
//! Rollout's `status.pendingNotifications` (under a field manager of its own) before its first
//! attempt, retried with backoff while the receiver may still take it, and removed once
//! delivered or given up; a controller that restarts, or a replica that takes the lead, resumes
//! what is pending there with the same delivery id and body ([`Notifier::resume`]). What cannot
//! be delivered is logged, counted and announced with a Warning Event on the Rollout, never
//! dropped in silence.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, runtime::events::EventType};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore, mpsc};

use super::{
    Context,
    status::{apply_status_as, object_key, publish},
};
use crate::{
    api::{Rollout, rollout::PendingNotification},
    core::notification::{
        AfterFailure, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, WebhookEvent, after_failure, due_in,
        pending, signature, worth_retrying,
    },
};

/// The Secret key with the webhook's URL.
pub const URL_KEY: &str = "url";
/// The Secret key with the HMAC key.
pub const SIGNING_KEY: &str = "signingKey";
/// The field manager of a Rollout's `status.pendingNotifications`.
pub const NOTIFICATIONS_MANAGER: &str = "ota-operator-notifications";
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
    pending: PendingNotification,
    /// Not in the Rollout's outbox yet (a new notification, not a resumed one).
    new: bool,
}

/// The pending deliveries of one Rollout as this replica knows them.
#[derive(Default)]
struct Outbox {
    /// What `status.pendingNotifications` holds (or is about to), oldest first.
    entries: Vec<PendingNotification>,
    /// The deliveries this replica is sending.
    sending: HashSet<String>,
    /// Deliveries this replica ended (delivered or given up) while the cache may still list
    /// them as pending: not resumed again. Forgotten once the cache no longer lists them.
    ended: HashSet<String>,
}

/// The outboxes by Rollout uid; one Rollout's list is changed and written under its lock, so
/// that two writes of it never cross.
#[derive(Default)]
struct Outboxes(std::sync::Mutex<HashMap<String, Arc<Mutex<Outbox>>>>);

impl Outboxes {
    fn of(&self, rollout: &Rollout) -> Arc<Mutex<Outbox>> {
        let uid = rollout.metadata.uid.clone().unwrap_or_default();
        let mut outboxes = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(outboxes.entry(uid).or_default())
    }

    fn has(&self, rollout: &Rollout) -> bool {
        let uid = rollout.metadata.uid.as_deref().unwrap_or_default();
        let outboxes = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        outboxes.contains_key(uid)
    }

    /// Forgets the outbox of a Rollout that has nothing pending and nothing being sent.
    fn forget_if_idle(&self, rollout: &Rollout, outbox: &Outbox) {
        if outbox.entries.is_empty() && outbox.sending.is_empty() && outbox.ended.is_empty() {
            let uid = rollout.metadata.uid.clone().unwrap_or_default();
            let mut outboxes = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            outboxes.remove(&uid);
        }
    }
}

/// Queues notifications for the background sender.
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Delivery>,
    outboxes: Arc<Outboxes>,
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
        let outboxes = Arc::new(Outboxes::default());
        let notifier = Notifier {
            queue,
            outboxes: Arc::clone(&outboxes),
        };
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(CONCURRENCY));
            while let Some(delivery) = deliveries.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let http = http.clone();
                let outboxes = Arc::clone(&outboxes);
                tokio::spawn(async move {
                    let _permit = permit;
                    deliver(&http, &outboxes, delivery).await;
                });
            }
        });
        notifier
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
            pending: pending(&event, context.clock.now()),
            new: true,
        };
        self.queue_delivery(context, delivery);
    }

    /// Resumes the deliveries `rollout`'s status lists as pending that this replica is not
    /// sending: after a restart, or when this replica takes the lead. Call it from each
    /// reconcile, before anything is sent for that reconcile.
    pub async fn resume(&self, context: &Arc<Context>, rollout: &Rollout) {
        let listed = rollout
            .status
            .as_ref()
            .map(|status| status.pending_notifications.as_slice())
            .unwrap_or_default();
        if listed.is_empty() && !self.outboxes.has(rollout) {
            return;
        }
        let outbox = self.outboxes.of(rollout);
        let mut outbox = outbox.lock().await;
        outbox
            .ended
            .retain(|id| listed.iter().any(|pending| &pending.id == id));
        let Some(secret) = rollout
            .spec
            .notifications
            .as_ref()
            .map(|n| n.webhook.secret_ref.name.clone())
        else {
            // The Rollout names no webhook any more: what was pending has nowhere to go.
            if !listed.is_empty() {
                tracing::warn!(
                    dropped = listed.len(),
                    "the Rollout names no webhook any more; its pending notifications are dropped"
                );
                outbox.entries.clear();
                persist(context, rollout, &outbox).await;
            }
            self.outboxes.forget_if_idle(rollout, &outbox);
            return;
        };
        for pending in listed {
            if outbox.sending.contains(&pending.id) || outbox.ended.contains(&pending.id) {
                continue;
            }
            if !outbox.entries.iter().any(|known| known.id == pending.id) {
                outbox.entries.push(pending.clone());
            }
            outbox.sending.insert(pending.id.clone());
            tracing::info!(
                delivery = pending.id,
                reason = pending.event,
                attempts = pending.attempts,
                "resuming a pending Rollout notification"
            );
            self.queue_delivery(
                context,
                Delivery {
                    context: Arc::clone(context),
                    rollout: rollout.clone(),
                    secret: secret.clone(),
                    pending: pending.clone(),
                    new: false,
                },
            );
        }
        self.outboxes.forget_if_idle(rollout, &outbox);
    }

    fn queue_delivery(&self, context: &Context, delivery: Delivery) {
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

/// The status fields the notifier owns.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationsStatus<'a> {
    pending_notifications: &'a [PendingNotification],
}

/// Writes `outbox`'s entries as the Rollout's `status.pendingNotifications`. A failure is
/// logged: the delivery goes on from memory (it is then lost if the controller stops first).
async fn persist(context: &Context, rollout: &Rollout, outbox: &Outbox) {
    let status = NotificationsStatus {
        pending_notifications: &outbox.entries,
    };
    if let Err(error) = apply_status_as(context, rollout, &status, NOTIFICATIONS_MANAGER).await {
        tracing::warn!(rollout = %object_key(rollout), %error, "could not record the pending notifications");
    }
}

/// How one delivery ended for this replica.
enum Ended {
    /// Delivered, after this many attempts in all.
    Delivered(u32),
    /// Given up: the Warning says why.
    Failed(DeliveryError),
    /// This replica stopped leading (or the controller stopped): the delivery stays pending for
    /// whoever leads next.
    Stopped,
}

/// Sends one delivery with its retries, keeping the Rollout's outbox in step, and reports how
/// it ended.
#[tracing::instrument(skip_all, fields(kind = "Rollout", name = delivery.rollout.metadata.name, namespace = delivery.rollout.metadata.namespace, reason = delivery.pending.event, delivery = delivery.pending.id))]
async fn deliver(http: &reqwest::Client, outboxes: &Outboxes, delivery: Delivery) {
    let context = Arc::clone(&delivery.context);
    let context = context.as_ref();
    let outbox = outboxes.of(&delivery.rollout);
    if delivery.new {
        let mut outbox = outbox.lock().await;
        outbox.entries.push(delivery.pending.clone());
        outbox.sending.insert(delivery.pending.id.clone());
        persist(context, &delivery.rollout, &outbox).await;
    }
    let ended = tokio::select! {
        ended = attempt_all(context, http, &outbox, &delivery) => ended,
        () = leadership_lost(context) => Ended::Stopped,
    };
    let mut outbox = outbox.lock().await;
    let id = &delivery.pending.id;
    outbox.sending.remove(id);
    match &ended {
        Ended::Stopped => {
            // Whoever leads next reads what is pending from the status.
            tracing::info!("the controller stopped leading; the notification stays pending");
            outbox.entries.retain(|entry| &entry.id != id);
        }
        Ended::Delivered(_) | Ended::Failed(_) => {
            outbox.entries.retain(|entry| &entry.id != id);
            outbox.ended.insert(id.clone());
            persist(context, &delivery.rollout, &outbox).await;
        }
    }
    drop(outbox);
    match ended {
        Ended::Delivered(attempts) => {
            tracing::debug!(attempts, "notification delivered");
            count(context, "delivered");
        }
        Ended::Failed(error) => {
            tracing::warn!(error = %error, "a Rollout notification could not be delivered");
            count(context, "failed");
            let note = format!(
                "The {} notification ({}) was not delivered to the webhook of Secret {}: {error}",
                delivery.pending.event, delivery.pending.id, delivery.secret
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
        Ended::Stopped => {}
    }
}

/// Resolves once this replica does not lead any more, or the controller stopped (the leader
/// flag's sender is gone).
async fn leadership_lost(context: &Context) {
    let mut leader = context.leader.clone();
    let _ = leader.wait_for(|leads| !*leads).await;
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
    let namespace = delivery.rollout.metadata.namespace.as_deref().unwrap_or_default();
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

/// Reads the Secret and posts until an attempt passes, recording each failed attempt in the
/// Rollout's outbox. The Secret is read at each attempt, so a transient API error is retried
/// and a mended Secret is used at once.
async fn attempt_all(
    context: &Context,
    http: &reqwest::Client,
    outbox: &Mutex<Outbox>,
    delivery: &Delivery,
) -> Ended {
    let mut pending = delivery.pending.clone();
    loop {
        tokio::time::sleep(due_in(&pending, context.clock.now())).await;
        let last = match attempt(context, http, delivery, &pending).await {
            Ok(()) => {
                return Ended::Delivered(u32::try_from(pending.attempts).unwrap_or(0).saturating_add(1));
            }
            Err(AttemptError::Fatal(error)) => return Ended::Failed(error),
            Err(AttemptError::Transient(why)) => why,
        };
        match after_failure(&pending, context.clock.now()) {
            AfterFailure::GiveUp { attempts } => {
                return Ended::Failed(DeliveryError::GaveUp { attempts, last });
            }
            AfterFailure::Retry(next) => {
                tracing::debug!(
                    attempts = next.attempts,
                    last,
                    "a notification attempt failed; retrying"
                );
                let mut outbox = outbox.lock().await;
                if let Some(entry) = outbox.entries.iter_mut().find(|entry| entry.id == next.id) {
                    *entry = next.clone();
                }
                persist(context, &delivery.rollout, &outbox).await;
                pending = next;
            }
        }
    }
}

/// Why one attempt failed.
enum AttemptError {
    /// It may pass later: why, for the Warning if none does.
    Transient(String),
    /// No attempt can pass.
    Fatal(DeliveryError),
}

/// One attempt: reads the Secret and posts the body.
async fn attempt(
    context: &Context,
    http: &reqwest::Client,
    delivery: &Delivery,
    pending: &PendingNotification,
) -> Result<(), AttemptError> {
    let target = match read_target(context, delivery, pending.body.as_bytes()).await {
        Ok(target) => target,
        Err(TargetError::Fatal(error)) => return Err(AttemptError::Fatal(error)),
        Err(TargetError::Transient(why)) => return Err(AttemptError::Transient(why)),
    };
    let sent = http
        .post(target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, &target.signature)
        .header(DELIVERY_HEADER, &pending.id)
        .header(EVENT_HEADER, &pending.event)
        .timeout(ATTEMPT_TIMEOUT)
        .body(pending.body.clone())
        .send()
        .await;
    let why = match sent {
        Ok(response) if response.status().is_success() => return Ok(()),
        Ok(response) if !worth_retrying(response.status().as_u16()) => {
            return Err(AttemptError::Fatal(DeliveryError::Refused(
                response.status().as_u16(),
            )));
        }
        Ok(response) => format!("HTTP {}", response.status()),
        // The URL may be a credential: the error's text names it, so say only what failed.
        Err(error) if error.is_timeout() => "timed out".to_owned(),
        Err(error) if error.is_connect() => "could not connect".to_owned(),
        Err(_) => "the request failed".to_owned(),
    };
    Err(AttemptError::Transient(why))
}
