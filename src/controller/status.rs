//! What every reconciler does the same way: write a status with server-side apply, publish the
//! Event a Ready transition deserves, count its work in the metrics, and retry a failure (one
//! error type for the four, so that a failure's metrics category is decided in one place).

use std::{
    collections::HashMap,
    fmt::Debug,
    future::Future,
    hash::{Hash, Hasher},
    sync::Mutex,
    time::Instant,
};

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Context, metrics::FailureLabels, metrics::Metrics};
use crate::{
    api::constants::{API_VERSION, field_manager},
    core::transitions::{self, FailureCategory, Severity},
    sync,
    telemetry::error_chain,
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

/// What this replica wrote last into each object's status: the object's resourceVersion before
/// the write, and a digest of the status written. A reconcile that runs before the cache has
/// seen that write reads the older status and would write (and announce) the same change again.
#[derive(Debug, Default)]
pub struct WrittenStatuses(Mutex<HashMap<String, (Option<String>, u64)>>);

impl WrittenStatuses {
    fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
        format!(
            "{}/{}",
            K::kind(&()),
            object.meta().uid.as_deref().unwrap_or_default()
        )
    }

    /// Whether `digest` is what was written last over exactly this cached version of `object`.
    fn already_written<K: Resource<DynamicType = ()>>(&self, object: &K, digest: u64) -> bool {
        let written = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        written
            .get(&Self::key(object))
            .is_some_and(|(version, last)| *last == digest && *version == object.meta().resource_version)
    }

    fn record<K: Resource<DynamicType = ()>>(&self, object: &K, digest: u64) {
        let mut written = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        written.insert(
            Self::key(object),
            (object.meta().resource_version.clone(), digest),
        );
    }

    /// Forgets the objects that `exists` does not know any more (deleted ones), so the map does
    /// not grow with every object ever written.
    pub fn retain(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut written = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        written.retain(|key, _| key.split_once('/').is_some_and(|(kind, uid)| exists(kind, uid)));
    }
}

/// Writes `status` as the object's whole status with the status field manager (forced).
/// Returns `false`, writing nothing, when this replica wrote the same status over the same
/// version of the object already (the cache has not caught up with that write yet).
pub async fn apply_status<K, S>(context: &Context, object: &K, status: &S) -> Result<bool, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    S: Serialize,
{
    let encoded = serde_json::to_vec(status).map_err(kube::Error::SerdeError)?;
    let digest = {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        encoded.hash(&mut hasher);
        hasher.finish()
    };
    if context.written.already_written(object, digest) {
        return Ok(false);
    }
    apply_status_as(context, object, status, field_manager::STATUS).await?;
    context.written.record(object, digest);
    Ok(true)
}

/// Applies `status` (the fields `manager` owns, and only those) to the object's status with
/// server-side apply, forced, and counts the write.
pub async fn apply_status_as<K, S>(
    context: &Context,
    object: &K,
    status: &S,
    manager: &str,
) -> Result<(), kube::Error>
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
        &PatchParams::apply(manager).force(),
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

/// The Event a change of conditions deserves, if any: (type, reason, note), as the core decides
/// it ([`transitions::ready_transition`]).
pub fn ready_transition(before: &[Condition], after: &[Condition]) -> Option<(EventType, String, String)> {
    transitions::ready_transition(before, after).map(|t| (event_type(t.severity), t.reason, t.note))
}

/// The Kubernetes Event type of a severity.
pub fn event_type(severity: Severity) -> EventType {
    match severity {
        Severity::Normal => EventType::Normal,
        Severity::Warning => EventType::Warning,
    }
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
pub fn count_failure(context: &Context, kind: &str, category: FailureCategory) {
    context
        .metrics
        .failures
        .get_or_create(&FailureLabels {
            kind: kind.to_owned(),
            error: category.label().to_owned(),
        })
        .inc();
}

/// Why a reconcile failed (transient: retried with a per-object backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or could not be reached.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Storage could not be read or written while cleaning up a deleted Bundle.
    #[error("cleaning up the storage of a deleted Bundle: {0}")]
    Cleanup(#[source] sync::RemoveError),
    /// The Brotli variants of a synced Bundle could not be made (it is served with raw files
    /// meanwhile).
    #[error("making the Brotli variants of the Bundle's files: {0}")]
    Variants(#[source] sync::SyncError),
}

impl ReconcileError {
    /// Wraps an API error with what was being done.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
        let action = action.into();
        move |source| ReconcileError::Api { action, source }
    }

    /// The metrics category of this failure.
    pub fn category(&self) -> FailureCategory {
        match self {
            ReconcileError::Api { .. } => FailureCategory::Api,
            ReconcileError::Cleanup(_) | ReconcileError::Variants(_) => FailureCategory::Storage,
        }
    }
}

/// What every reconciler does with a transient failure: log it, count it, and look again after
/// the object's next backoff delay (growing and jittered).
pub fn retry_later<K: Resource>(
    kind: &'static str,
    object: &K,
    error: &ReconcileError,
    context: &Context,
) -> Action {
    tracing::warn!(kind, object = %object_key(object), error = %error_chain(error), "reconcile failed; retrying");
    count_failure(context, kind, error.category());
    Action::requeue(context.backoff.next_delay(&backoff_key(kind, object)))
}
