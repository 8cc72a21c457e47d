//! The Rollout reconciler: validates each Rollout against the caches and moves it through its
//! steps with the pure [`crate::core::rollout`] decisions, writing the status they return (only
//! when it changed), publishing their Events, and waking at their exact next deadline.
//!
//! Failure figures come from the App's update server ([`super::figures`]): while they cannot be
//! read, analysis steps and the background analysis wait and say so in status, while percent
//! and pause steps proceed. The analysis metrics are measured through the source the controller
//! was given ([`super::Options::metrics`]). A completed candidate is recorded as its Channel's
//! stable bundle in the Channel's `status.promoted`, under a field manager of its own.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{Controller, controller::Action, events::EventType, reflector::ReflectHandle},
};
use tokio::sync::watch;

use super::{
    Context,
    caches::{drive, in_namespace, refs_where},
    status::{
        ReconcileError, apply_status, apply_status_as, backoff_key, count_failure, instrumented, object_key,
        publish, retry_later,
    },
};
use crate::{
    api::{
        App, Bundle, Channel, ChannelStatus, Rollout, RolloutStatus,
        channel::PromotedBundle,
        constants::{field_manager, reason},
    },
    core::notification::webhook_event,
    core::rollout::{EventKind, FailureCounts, FiguresQuery, RolloutEvent},
    core::transitions::FailureCategory,
    rollout_driver::{self, DriveError, FiguresSource, Objects, StatusSink},
};

/// The kind label of this reconciler's metrics.
const KIND: &str = "Rollout";
/// How often a Rollout with no deadline is looked at again although nothing changed.
const RESYNC: Duration = Duration::from_secs(600);

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

/// The Apps, Channels and Bundles a Rollout names (the candidate, and the stable bundle its
/// metrics' templates name), from the caches.
struct Named {
    apps: Vec<App>,
    channels: Vec<Channel>,
    bundles: Vec<Bundle>,
}

impl Named {
    fn of(rollout: &Rollout, context: &Context) -> Named {
        let namespace = rollout.metadata.namespace.as_deref();
        let channels: Vec<Channel> = in_namespace(&context.stores.channels, namespace, |c| {
            c.name_any() == rollout.spec.channel_ref
        })
        .iter()
        .map(|c| (**c).clone())
        .collect();
        let stable = rollout.status.as_ref().and_then(|s| s.stable_bundle.as_deref());
        let bundles: Vec<Bundle> = in_namespace(&context.stores.bundles, namespace, |b| {
            let name = b.name_any();
            name == rollout.spec.bundle_ref || Some(name.as_str()) == stable
        })
        .iter()
        .map(|b| (**b).clone())
        .collect();
        let apps: Vec<App> = in_namespace(&context.stores.apps, namespace, |a| {
            channels.iter().any(|c| c.spec.app_ref == a.name_any())
        })
        .iter()
        .map(|a| (**a).clone())
        .collect();
        Named {
            apps,
            channels,
            bundles,
        }
    }
}

/// The failure figures port in a cluster: the App's update server ([`super::figures`]).
struct UpdateServerFigures<'a> {
    context: &'a Arc<Context>,
}

impl FiguresSource for UpdateServerFigures<'_> {
    async fn figures(
        &mut self,
        rollout: &Rollout,
        channel: &Channel,
        query: &FiguresQuery,
    ) -> Option<FailureCounts> {
        let namespace = rollout.metadata.namespace.as_deref().unwrap_or_default();
        match self
            .context
            .figures
            .fetch(namespace, &channel.spec.app_ref, query)
            .await
        {
            Ok(counts) => Some(counts),
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::error_chain(&error), "failure figures unavailable; the analysis waits");
                count_failure(self.context, KIND, FailureCategory::Figures);
                None
            }
        }
    }
}

/// The status port in a cluster: the status subresource, the Channel's `status.promoted`
/// (under a field manager of its own), Kubernetes Events and webhooks.
struct KubernetesStatus<'a> {
    context: &'a Arc<Context>,
}

impl StatusSink for KubernetesStatus<'_> {
    type Error = ReconcileError;

    async fn record_promotion(
        &mut self,
        rollout: &Rollout,
        channel: &Channel,
        promoted: PromotedBundle,
    ) -> Result<(), ReconcileError> {
        let context = self.context;
        let candidate = promoted.bundle.clone();
        let status = ChannelStatus {
            promoted: Some(promoted),
            ..Default::default()
        };
        apply_status_as(context, channel, &status, field_manager::PROMOTION)
            .await
            .map_err(ReconcileError::api(format!(
                "recording Bundle {candidate} as the stable bundle of Channel {}",
                object_key(channel)
            )))?;
        let note = format!(
            "Bundle {candidate} is the stable bundle of Channel {} (Rollout {} completed); it stays so \
             while spec.bundleRef of the Channel is unchanged",
            channel.name_any(),
            rollout.name_any()
        );
        publish(
            context,
            rollout,
            EventType::Normal,
            reason::STABLE_RECORDED,
            note.clone(),
        )
        .await;
        publish(context, channel, EventType::Normal, reason::STABLE_RECORDED, note).await;
        Ok(())
    }

    async fn write_status(
        &mut self,
        rollout: &Rollout,
        status: &RolloutStatus,
    ) -> Result<bool, ReconcileError> {
        apply_status(self.context, rollout, status)
            .await
            .map_err(ReconcileError::api(format!(
                "writing the status of Rollout {}",
                object_key(rollout)
            )))
    }

    async fn publish(&mut self, rollout: &Rollout, event: &RolloutEvent, sequence: usize, now: Timestamp) {
        let context = self.context;
        context
            .notifier
            .send(context, rollout, webhook_event(rollout, event, sequence, now));
        let event_type = match event.kind {
            EventKind::Normal => EventType::Normal,
            EventKind::Warning => {
                count_failure(context, KIND, FailureCategory::of_reason(event.reason));
                EventType::Warning
            }
        };
        publish(context, rollout, event_type, event.reason, event.note.clone()).await;
    }
}

/// One reconcile of one Rollout: one drive ([`crate::rollout_driver::drive`]) through the
/// cluster's ports.
#[tracing::instrument(skip_all, fields(kind = KIND, name = %rollout.name_any(), namespace = rollout.namespace().unwrap_or_default()))]
pub async fn reconcile(rollout: Arc<Rollout>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    if let Some(wait) = context.not_now() {
        return Ok(Action::requeue(wait));
    }
    instrumented(&context, KIND, async {
        // Deliveries a previous leader left pending go on before this reconcile sends more.
        context.notifier.resume(&context, &rollout).await;
        let now = context.clock.now();
        let named = Named::of(&rollout, &context);
        let objects = Objects {
            apps: &named.apps,
            channels: &named.channels,
            bundles: &named.bundles,
        };
        let mut figures = UpdateServerFigures { context: &context };
        let mut metrics = Arc::clone(&context.metrics_source);
        let mut sink = KubernetesStatus { context: &context };
        let driven = rollout_driver::drive(
            rollout.as_ref(),
            objects,
            &mut figures,
            &mut metrics,
            &mut sink,
            now,
        )
        .await
        .map_err(DriveError::into_inner)?;
        context.backoff.reset(&backoff_key(KIND, rollout.as_ref()));
        Ok(match driven.requeue_at {
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
pub fn error_policy(rollout: Arc<Rollout>, error: &ReconcileError, context: Arc<Context>) -> Action {
    retry_later(KIND, rollout.as_ref(), error, &context)
}
