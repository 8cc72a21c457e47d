//! What every reconciler does the same way: write a status with server-side apply, publish the
//! Event a Ready transition deserves, and count its work in the metrics.

use std::{fmt::Debug, future::Future, time::Instant};

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Context, metrics::FailureLabels, metrics::Metrics};
use crate::{
    api::constants::{API_VERSION, condition, field_manager, reason},
    core::conditions,
};

/// `namespace/name` of an object, for logs and per-object backoff.
pub fn object_key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// The per-object backoff key: kinds apart, so that a Channel and an App of one name do not share
/// their failure counts.
pub fn backoff_key<K: Resource>(kind: &str, object: &K) -> String {
    format!("{kind}/{}", object_key(object))
}

/// Writes `status` as the object's whole status with the status field manager (forced).
pub async fn apply_status<K, S>(context: &Context, object: &K, status: &S) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    S: Serialize,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(
        context.client.clone(),
        object.meta().namespace.as_deref().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(field_manager::STATUS).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    context
        .metrics
        .status_writes
        .get_or_create(&Metrics::kind(&kind))
        .inc();
    Ok(())
}

/// The Event a change of conditions deserves, if any: (type, reason, note). Only a change of
/// the Ready condition's status or reason is a transition; Warning when the object is Stalled
/// or retrying.
pub fn ready_transition(before: &[Condition], after: &[Condition]) -> Option<(EventType, String, String)> {
    let ready_before = before.iter().find(|c| c.type_ == condition::READY);
    let ready_after = after.iter().find(|c| c.type_ == condition::READY)?;
    if ready_before.is_some_and(|b| b.status == ready_after.status && b.reason == ready_after.reason) {
        return None;
    }
    let stalled = conditions::status_of(after, condition::STALLED) == Some("True");
    let event_type = if stalled || ready_after.reason == reason::PROGRESSING_WITH_RETRY {
        EventType::Warning
    } else {
        EventType::Normal
    };
    Some((
        event_type,
        ready_after.reason.clone(),
        ready_after.message.clone(),
    ))
}

/// Publishes an Event about `object`; a failure is logged, never fatal (Events are best effort).
pub async fn publish<K>(context: &Context, object: &K, event_type: EventType, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_: event_type,
        reason: reason.to_owned(),
        note: Some(truncate(note, 1024)),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = context.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(object = %object_key(object), %error, "could not publish an Event");
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Runs one reconcile of `kind`, counting it and timing it.
pub async fn instrumented<T, E>(
    context: &Context,
    kind: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let labels = Metrics::kind(kind);
    context.metrics.reconciles.get_or_create(&labels).inc();
    let result = work.await;
    context
        .metrics
        .durations
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Counts a failure of `kind` in `category`.
pub fn count_failure(context: &Context, kind: &str, category: &str) {
    context
        .metrics
        .failures
        .get_or_create(&FailureLabels {
            kind: kind.to_owned(),
            error: category.to_owned(),
        })
        .inc();
}

/// The metrics category of a Stalled reason.
pub fn category_of(reason: &str) -> &'static str {
    match reason {
        reason::REFERENCE_NOT_FOUND => "reference_not_found",
        reason::CHECKSUM_MISMATCH | reason::INVALID_ARCHIVE => "invalid_bundle",
        reason::SIGNATURE_REQUIRED | reason::INVALID_SIGNATURE => "signature",
        _ => "invalid_spec",
    }
}
