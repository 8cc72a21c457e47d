//! Rollout notifications: what a webhook receives for each transition, how it is signed, how
//! long a failed delivery waits before the next attempt, and when it is given up. Pure: the
//! shell sends, and keeps the pending deliveries in the Rollout's `status.pendingNotifications`
//! so that a restart resumes them.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use sha2::{Digest, Sha256};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::rollout::{EventKind, RolloutEvent};
use crate::api::{
    Rollout,
    constants::API_VERSION,
    rollout::{AnalysisFigures, MetricStatus, PendingNotification, RolloutPhase},
};

/// The header that carries the signature: `sha256=` and the hex HMAC-SHA256 of the body under
/// the Secret's `signingKey`.
pub const SIGNATURE_HEADER: &str = "X-Ota-Signature-256";
/// The header that carries the delivery's id (the same on every attempt, so receivers can
/// drop a repeat).
pub const DELIVERY_HEADER: &str = "X-Ota-Delivery";
/// The header that carries the event's reason.
pub const EVENT_HEADER: &str = "X-Ota-Event";
/// How many times one delivery is attempted.
pub const MAX_ATTEMPTS: u32 = 6;

/// The JSON body of one notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    /// `ota.dev/v1alpha1`.
    pub api_version: &'static str,
    /// `RolloutEvent`.
    pub kind: &'static str,
    /// Unique per transition; the same on every attempt.
    pub id: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// The transition (`RolloutStarted`, `PercentIncreased`, `Aborted`, ...).
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
    /// When it was decided (RFC 3339).
    pub time: String,
    /// The Rollout.
    pub rollout: RolloutRef,
    /// Its Channel.
    pub channel: String,
    /// The candidate Bundle.
    pub candidate_bundle: String,
    /// The bundle served outside the cohort (absent: the builtin assets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_bundle: Option<String>,
    /// The phase after the transition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// The step after the transition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_index: Option<i32>,
    /// The share of devices offered the candidate after the transition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    /// The latest failure figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisFigures>,
    /// Where each metric of the analysis stands (its counts and last measurements).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricStatus>,
}

/// Which Rollout an event is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// The notification of `event`, a transition of `rollout` decided at `now` (`rollout` carries
/// the status after it). `sequence` is the event's position among those of one decision.
pub fn webhook_event(
    rollout: &Rollout,
    event: &RolloutEvent,
    sequence: usize,
    now: Timestamp,
) -> WebhookEvent {
    let namespace = rollout.metadata.namespace.clone().unwrap_or_default();
    let name = rollout.metadata.name.clone().unwrap_or_default();
    let status = rollout.status.clone().unwrap_or_default();
    let time = now.to_string();
    // The same on every attempt of one delivery: a digest of the Rollout, the decision's time,
    // the event's position and reason, not a random id.
    let id = {
        let uid = rollout.metadata.uid.as_deref().unwrap_or_default();
        let digest = Sha256::digest(format!("{uid}\n{time}\n{sequence}\n{}", event.reason));
        hex::encode(&digest[..16])
    };
    WebhookEvent {
        api_version: API_VERSION,
        kind: "RolloutEvent",
        id,
        type_: match event.kind {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        },
        reason: event.reason,
        message: event.note.clone(),
        time,
        rollout: RolloutRef { namespace, name },
        channel: rollout.spec.channel_ref.clone(),
        candidate_bundle: rollout.spec.bundle_ref.clone(),
        stable_bundle: status.stable_bundle,
        phase: status.phase,
        step_index: status.current_step_index,
        percent: status.current_percent,
        analysis: status.analysis,
        metrics: status.metrics,
    }
}

/// The value of [`SIGNATURE_HEADER`] for `body` under `key` (HMAC takes keys of any length;
/// the error is the crate's signature, never met).
pub fn signature(key: &[u8], body: &[u8]) -> Result<String, hmac::digest::InvalidLength> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)?;
    mac.update(body);
    Ok(format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

/// How long to wait after failed attempt number `attempt` (1-based): 1 s, 2 s, 4 s, ... at
/// most a minute.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Whether an HTTP status is worth another attempt: server errors, throttling and timeouts
/// are; other client errors (a wrong URL, a refused signature) would fail again.
pub fn worth_retrying(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// The pending delivery of `event`: its body as every attempt will send it, due at `now`.
pub fn pending(event: &WebhookEvent, now: Timestamp) -> PendingNotification {
    PendingNotification {
        id: event.id.clone(),
        event: event.reason.to_owned(),
        // Serializing plain data cannot fail.
        body: serde_json::to_string(event).unwrap_or_default(),
        attempts: 0,
        next_attempt_at: Time(now),
    }
}

/// How long until `pending`'s next attempt is due (zero when it is due already).
pub fn due_in(pending: &PendingNotification, now: Timestamp) -> Duration {
    Duration::try_from(pending.next_attempt_at.0.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// What follows a failed attempt that may pass later.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterFailure {
    /// Another attempt, when the returned delivery says.
    Retry(PendingNotification),
    /// [`MAX_ATTEMPTS`] attempts failed.
    GiveUp {
        /// How many attempts were made.
        attempts: u32,
    },
}

/// What follows the failure, at `now`, of `pending`'s next attempt: another one after
/// [`retry_delay`], or giving up once [`MAX_ATTEMPTS`] failed.
pub fn after_failure(pending: &PendingNotification, now: Timestamp) -> AfterFailure {
    let attempts = u32::try_from(pending.attempts).unwrap_or(0).saturating_add(1);
    if attempts >= MAX_ATTEMPTS {
        return AfterFailure::GiveUp { attempts };
    }
    let delay = k8s_openapi::jiff::SignedDuration::try_from(retry_delay(attempts))
        .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
    AfterFailure::Retry(PendingNotification {
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        next_attempt_at: Time(now.saturating_add(delay).unwrap_or(now)),
        ..pending.clone()
    })
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;
    use crate::api::{
        constants::reason,
        rollout::{RolloutSpec, RolloutStatus},
    };

    fn rollout() -> Rollout {
        let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
            "channelRef": "production",
            "bundleRef": "shop-1.5.0",
            "steps": [{"setPercent": 10}, {"pause": {}}],
        }))
        .expect("a spec");
        Rollout {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                namespace: Some("ns".into()),
                uid: Some("0c0ffee0-0000-4000-8000-000000000001".into()),
                ..Default::default()
            },
            spec,
            status: Some(RolloutStatus {
                phase: Some(RolloutPhase::Aborted),
                current_step_index: Some(1),
                current_percent: Some(0),
                stable_bundle: Some("shop-1.4.0".into()),
                ..Default::default()
            }),
        }
    }

    fn aborted() -> RolloutEvent {
        RolloutEvent {
            kind: EventKind::Warning,
            reason: reason::ABORTED,
            note: "3 failures in 10 attempts".into(),
        }
    }

    #[test]
    fn the_body_names_the_transition_and_where_the_rollout_stands_after_it() {
        let now: Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
        let event = webhook_event(&rollout(), &aborted(), 0, now);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["apiVersion"], "ota.dev/v1alpha1");
        assert_eq!(json["kind"], "RolloutEvent");
        assert_eq!(json["type"], "Warning");
        assert_eq!(json["reason"], "Aborted");
        assert_eq!(json["message"], "3 failures in 10 attempts");
        assert_eq!(json["time"], "2026-11-27T10:00:00Z");
        assert_eq!(
            json["rollout"],
            serde_json::json!({"namespace": "ns", "name": "shop"})
        );
        assert_eq!(json["channel"], "production");
        assert_eq!(json["candidateBundle"], "shop-1.5.0");
        assert_eq!(json["stableBundle"], "shop-1.4.0");
        assert_eq!(json["phase"], "Aborted");
        assert_eq!(json["stepIndex"], 1);
        assert_eq!(json["percent"], 0);
        assert!(json.get("analysis").is_none());
    }

    #[test]
    fn a_metric_that_fails_is_notified_with_its_figures() {
        let now: Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
        let mut rollout = rollout();
        let status: RolloutStatus = serde_json::from_value(serde_json::json!({
            "phase": "Aborted",
            "metrics": [{"name": "error-rate", "phase": "Failed", "measurements": 1, "successful": 0,
                         "failed": 1, "inconclusive": 0, "errors": 0, "consecutiveErrors": 0,
                         "stepMeasurements": 1,
                         "lastMeasurements": [{"phase": "Failed", "value": "0.2", "measuredAt": "2026-11-27T10:00:00Z"}]}]
        }))
        .expect("a status");
        rollout.status = Some(status);
        let event = RolloutEvent {
            kind: EventKind::Warning,
            reason: reason::ABORTED,
            note: "Aborted at step 2 of 3: metric error-rate failed 1 times".into(),
        };
        let json = serde_json::to_value(webhook_event(&rollout, &event, 0, now)).unwrap();
        assert_eq!(json["reason"], "Aborted");
        assert_eq!(json["metrics"][0]["name"], "error-rate");
        assert_eq!(json["metrics"][0]["phase"], "Failed");
        assert_eq!(json["metrics"][0]["lastMeasurements"][0]["value"], "0.2");
    }

    #[test]
    fn the_id_is_the_same_for_the_same_transition_and_differs_otherwise() {
        let now: Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
        let later: Timestamp = "2026-11-27T10:00:01Z".parse().unwrap();
        let id = |sequence, at| webhook_event(&rollout(), &aborted(), sequence, at).id;
        assert_eq!(id(0, now), id(0, now));
        assert_eq!(id(0, now).len(), 32);
        assert_ne!(id(0, now), id(1, now));
        assert_ne!(id(0, now), id(0, later));
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?").unwrap(),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(
            signature(b"Jefe", b"what do ya want for nothing!"),
            signature(b"Jefe", b"what do ya want for nothing?")
        );
    }

    #[test]
    fn retries_back_off_to_a_minute_and_only_for_errors_that_may_pass() {
        let delays: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert!(worth_retrying(503) && worth_retrying(500) && worth_retrying(429) && worth_retrying(408));
        assert!(!worth_retrying(400) && !worth_retrying(401) && !worth_retrying(404));
    }

    #[test]
    fn a_pending_delivery_keeps_the_id_and_the_exact_body_and_is_due_at_once() {
        let now: Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
        let event = webhook_event(&rollout(), &aborted(), 0, now);
        let pending = pending(&event, now);
        assert_eq!(pending.id, event.id);
        assert_eq!(pending.event, "Aborted");
        assert_eq!(pending.body.as_bytes(), serde_json::to_vec(&event).unwrap());
        assert_eq!(pending.attempts, 0);
        assert_eq!(due_in(&pending, now), Duration::ZERO);
    }

    #[test]
    fn failed_attempts_back_off_and_the_last_one_gives_up() {
        let now: Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
        let mut pending = pending(&webhook_event(&rollout(), &aborted(), 0, now), now);
        let first = pending.clone();
        let mut waits = Vec::new();
        let outcome = loop {
            match after_failure(&pending, now) {
                AfterFailure::Retry(next) => {
                    assert_eq!(
                        (next.id.as_str(), next.body.as_str()),
                        (first.id.as_str(), first.body.as_str())
                    );
                    waits.push(due_in(&next, now).as_secs());
                    pending = next;
                }
                given_up => break given_up,
            }
        };
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(pending.attempts, 5);
        assert_eq!(
            outcome,
            AfterFailure::GiveUp {
                attempts: MAX_ATTEMPTS
            }
        );
        // A delivery due in the past (the controller was down) is due at once.
        let later: Timestamp = "2026-11-27T11:00:00Z".parse().unwrap();
        assert_eq!(due_in(&pending, later), Duration::ZERO);
    }
}
