//! The Rollout reconciler: validates each Rollout against the caches and moves it through its
//! steps with the pure [`crate::core::rollout`] decisions, writing the status they return (only
//! when it changed), publishing their Events, and waking at their exact next deadline.
//!
//! Failure figures: the controller has no access to the devices' reports yet (they live in each
//! App's device store), so it decides with `figures: None`; analysis steps and the background
//! analysis then wait and say so in status, while percent and pause steps proceed.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{Controller, controller::Action, events::EventType, reflector::ReflectHandle},
};
use tokio::sync::watch;

use super::{
    Context,
    status::{apply_status, backoff_key, category_of, count_failure, instrumented, object_key, publish},
    stores::{drive, in_namespace, refs_where},
};
use crate::{
    api::{Bundle, Channel, Rollout, constants::reason},
    core::rollout::{
        CandidateSync, EventKind, Invalid, RolloutInputs, RolloutPlan, invalid_plan, progress, validate,
    },
};

/// The kind label of this reconciler's metrics.
const KIND: &str = "Rollout";
/// How often a Rollout with no deadline is looked at again although nothing changed.
const RESYNC: Duration = Duration::from_secs(600);

/// Why a Rollout reconcile failed (transient: retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The status could not be written.
    #[error("writing the status of Rollout {object}: {source}")]
    WriteStatus {
        /// `namespace/name`.
        object: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Runs the Rollout controller until `stop` reads `true`.
pub async fn run(
    context: Arc<Context>,
    rollouts: ReflectHandle<Rollout>,
    channels: ReflectHandle<Channel>,
    bundles: ReflectHandle<Bundle>,
    stop: watch::Receiver<bool>,
) {
    let store = context.stores.rollouts.clone();
    let by_channel = {
        let store = store.clone();
        move |channel: Arc<Channel>| {
            refs_where(&store, channel.namespace(), |r| {
                r.spec.channel_ref == channel.name_any()
            })
        }
    };
    let by_bundle = {
        let store = store.clone();
        move |bundle: Arc<Bundle>| {
            refs_where(&store, bundle.namespace(), |r| {
                r.spec.bundle_ref == bundle.name_any()
            })
        }
    };
    let controller = Controller::for_shared_stream(rollouts, store.clone())
        .watches_shared_stream(channels, by_channel)
        .watches_shared_stream(bundles, by_bundle);
    drive(controller, reconcile, error_policy, context, stop).await;
}

/// The plan for `rollout` from the caches (pure given their contents and `now`).
pub fn plan(rollout: &Rollout, context: &Context, now: Timestamp) -> RolloutPlan {
    let namespace = rollout.metadata.namespace.as_deref();
    let channels: Vec<Channel> = in_namespace(&context.stores.channels, namespace, |c| {
        c.name_any() == rollout.spec.channel_ref
    })
    .iter()
    .map(|c| (**c).clone())
    .collect();
    let bundles: Vec<Bundle> = in_namespace(&context.stores.bundles, namespace, |b| {
        b.name_any() == rollout.spec.bundle_ref
    })
    .iter()
    .map(|b| (**b).clone())
    .collect();
    let (channel, candidate) = match (
        validate(rollout, &channels, &bundles),
        channels.first(),
        bundles.first(),
    ) {
        (Ok(()), Some(channel), Some(candidate)) => (channel, candidate),
        (Err(invalid), _, _) => return invalid_plan(rollout, &invalid, now),
        // validate() checks both references; this only keeps the decision total.
        (Ok(()), _, _) => {
            let invalid = Invalid {
                reason: reason::REFERENCE_NOT_FOUND,
                message: format!(
                    "Channel {} or Bundle {} does not exist",
                    rollout.spec.channel_ref, rollout.spec.bundle_ref
                ),
            };
            return invalid_plan(rollout, &invalid, now);
        }
    };
    let inputs = RolloutInputs {
        channel_stable: channel.spec.bundle_ref.as_deref(),
        candidate: CandidateSync::of(candidate),
        figures: None,
    };
    progress(rollout, &inputs, now)
}

/// One reconcile of one Rollout.
#[tracing::instrument(skip_all, fields(kind = KIND, name = %rollout.name_any(), namespace = rollout.namespace().unwrap_or_default()))]
pub async fn reconcile(rollout: Arc<Rollout>, context: Arc<Context>) -> Result<Action, RolloutError> {
    if let Some(wait) = context.not_now() {
        return Ok(Action::requeue(wait));
    }
    instrumented(&context, KIND, async {
        let now = context.clock.now();
        let plan = plan(&rollout, &context, now);
        if rollout.status.as_ref() != Some(&plan.status) {
            let written = apply_status(&context, rollout.as_ref(), &plan.status)
                .await
                .map_err(|source| RolloutError::WriteStatus {
                    object: object_key(rollout.as_ref()),
                    source,
                })?;
            for event in plan.events.iter().filter(|_| written) {
                let event_type = match event.kind {
                    EventKind::Normal => EventType::Normal,
                    EventKind::Warning => {
                        count_failure(&context, KIND, category_of(event.reason));
                        EventType::Warning
                    }
                };
                publish(
                    &context,
                    rollout.as_ref(),
                    event_type,
                    event.reason,
                    event.note.clone(),
                )
                .await;
            }
        }
        context.backoff.reset(&backoff_key(KIND, rollout.as_ref()));
        Ok(match plan.requeue_at {
            Some(at) => {
                let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
                Action::requeue(wait.clamp(Duration::from_millis(100), RESYNC))
            }
            None => Action::requeue(RESYNC),
        })
    })
    .await
}

/// Transient failures wait a per-object, growing, jittered delay.
pub fn error_policy(rollout: Arc<Rollout>, error: &RolloutError, context: Arc<Context>) -> Action {
    tracing::warn!(rollout = %object_key(rollout.as_ref()), error = %crate::telemetry::error_chain(error), "Rollout reconcile failed; retrying");
    count_failure(&context, KIND, "api");
    Action::requeue(context.backoff.next_delay(&backoff_key(KIND, rollout.as_ref())))
}
