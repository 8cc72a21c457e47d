//! The Channel reconciler: checks its references and reports what it serves. Everything it
//! reads comes from the shared caches, so a reconcile does no API read; it writes the status only
//! when it changed.

use std::{sync::Arc, time::Duration};

use kube::{
    ResourceExt,
    runtime::{Controller, controller::Action, events::EventType, reflector::ReflectHandle},
};
use tokio::sync::watch;

use super::{
    Context,
    caches::{Stores, drive, in_namespace, refs_where},
    status::{
        self, ReconcileError, apply_status, apply_status_as, backoff_key, count_failure, instrumented,
        object_key, publish, retry_later,
    },
};
use crate::{
    api::{
        App, Bundle, Channel, ChannelStatus, Rollout,
        constants::{field_manager, reason},
    },
    core::{
        channel_status::{ChannelStatusPlan, channel_status, desired_status},
        conditions,
        rollout::promotion_released,
        snapshot::{Snapshot, SnapshotInputs},
        transitions::FailureCategory,
    },
};

/// The kind label of this reconciler's metrics.
const KIND: &str = "Channel";
/// How often a Channel is looked at again although nothing it watches changed: a safety net for
/// events a watch may have missed. A look that finds nothing new writes nothing.
const RESYNC: Duration = Duration::from_secs(600);

/// The plan for `channel` from the caches: its App, the App's Bundles and the Rollouts on this
/// channel, in its namespace (pure given the stores' contents).
pub fn plan(channel: &Channel, stores: &Stores) -> ChannelStatusPlan {
    let namespace = channel.metadata.namespace.as_deref();
    let app_ref = channel.spec.app_ref.as_str();
    let name = channel.name_any();
    let apps: Vec<App> = in_namespace(&stores.apps, namespace, |app| app.name_any() == app_ref)
        .into_iter()
        .map(|app| (*app).clone())
        .collect();
    let rollouts: Vec<Rollout> = in_namespace(&stores.rollouts, namespace, |rollout| {
        rollout.spec.channel_ref == name
    })
    .into_iter()
    .map(|rollout| (*rollout).clone())
    .collect();
    // Only the Bundles this channel names, directly or through its Rollouts, bear on its status;
    // judging a few instead of every Bundle of the App keeps a reconcile cheap.
    let named = |bundle: &Bundle| {
        let bundle_name = bundle.name_any();
        channel.spec.bundle_ref.as_deref() == Some(bundle_name.as_str())
            || channel.stable_bundle_ref() == Some(bundle_name.as_str())
            || rollouts.iter().any(|r| r.spec.bundle_ref == bundle_name)
    };
    let bundles: Vec<Bundle> = in_namespace(&stores.bundles, namespace, named)
        .into_iter()
        .map(|bundle| (*bundle).clone())
        .collect();
    // The snapshot of this one channel reports what the update server would refuse to serve
    // (an unsigned bundle on a protected channel, say), so the status tells what devices get.
    let inputs = SnapshotInputs {
        apps,
        channels: vec![channel.clone()],
        bundles,
        rollouts,
        manifests: Default::default(),
    };
    let (_, problems) = Snapshot::build(&inputs);
    channel_status(
        channel,
        &inputs.apps,
        &inputs.bundles,
        &inputs.rollouts,
        &problems,
    )
}

/// Runs the Channel controller until `stop` reads `true`.
pub async fn run(
    context: Arc<Context>,
    channels: ReflectHandle<Channel>,
    apps: ReflectHandle<App>,
    bundles: ReflectHandle<Bundle>,
    rollouts: ReflectHandle<Rollout>,
    stop: watch::Receiver<bool>,
) {
    let store = context.stores.channels.clone();
    let by_app = {
        let store = store.clone();
        move |app: Arc<App>| refs_where(&store, app.namespace(), |c| c.spec.app_ref == app.name_any())
    };
    let by_bundle = {
        let store = store.clone();
        move |bundle: Arc<Bundle>| {
            refs_where(&store, bundle.namespace(), |c| {
                c.spec.app_ref == bundle.spec.app_ref
            })
        }
    };
    let by_rollout = {
        let store = store.clone();
        move |rollout: Arc<Rollout>| {
            refs_where(&store, rollout.namespace(), |c| {
                c.name_any() == rollout.spec.channel_ref
            })
        }
    };
    let controller = Controller::for_shared_stream(channels, store.clone())
        .watches_shared_stream(apps, by_app)
        .watches_shared_stream(bundles, by_bundle)
        .watches_shared_stream(rollouts, by_rollout);
    drive(controller, reconcile, error_policy, context, stop).await;
}

/// Removes a recorded promotion once it is released ([`promotion_released`]: git moved
/// `spec.bundleRef` from the bundleRef it was made over).
async fn clear_stale_promotion(channel: &Channel, context: &Context) -> Result<(), ReconcileError> {
    let Some(promoted) = channel
        .promotion()
        .filter(|promoted| promotion_released(promoted, Some(channel)))
    else {
        return Ok(());
    };
    // Applying nothing under the promotion's field manager removes the field it owned.
    apply_status_as(
        context,
        channel,
        &ChannelStatus::default(),
        field_manager::PROMOTION,
    )
    .await
    .map_err(ReconcileError::api(format!(
        "writing the status of Channel {}",
        object_key(channel)
    )))?;
    let note = format!(
        "spec.bundleRef is now {}: it replaces Bundle {}, which Rollout {} had made the stable bundle",
        channel
            .spec
            .bundle_ref
            .as_deref()
            .unwrap_or("unset (the builtin assets)"),
        promoted.bundle,
        promoted.rollout
    );
    publish(
        context,
        channel,
        EventType::Normal,
        reason::PROMOTION_CLEARED,
        note,
    )
    .await;
    Ok(())
}

/// One reconcile of one Channel.
#[tracing::instrument(skip_all, fields(kind = KIND, name = %channel.name_any(), namespace = channel.namespace().unwrap_or_default()))]
pub async fn reconcile(channel: Arc<Channel>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    if let Some(wait) = context.not_now() {
        return Ok(Action::requeue(wait));
    }
    instrumented(&context, KIND, async {
        clear_stale_promotion(&channel, &context).await?;
        let plan = plan(&channel, &context.stores);
        let desired = desired_status(&channel, &plan, context.clock.now());
        if conditions::status_of(&desired.conditions, crate::api::constants::condition::STALLED)
            == Some("True")
            && let Some(warning) = &plan.warning
        {
            count_failure(&context, KIND, FailureCategory::of_reason(warning.reason));
        }
        if channel.status.as_ref() != Some(&desired) {
            // Apply only what this reconciler owns: leaving `promoted` out keeps its owner.
            let owned = ChannelStatus {
                promoted: None,
                ..desired.clone()
            };
            let written =
                apply_status(&context, channel.as_ref(), &owned)
                    .await
                    .map_err(ReconcileError::api(format!(
                        "writing the status of Channel {}",
                        object_key(channel.as_ref())
                    )))?;
            let before = channel.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
            if let Some((event_type, reason, note)) =
                status::ready_transition(before, &desired.conditions).filter(|_| written)
            {
                publish(&context, channel.as_ref(), event_type, &reason, note).await;
            }
        }
        context.backoff.reset(&backoff_key(KIND, channel.as_ref()));
        Ok(Action::requeue(RESYNC))
    })
    .await
}

/// Transient failures wait a per-object, growing, jittered delay.
pub fn error_policy(channel: Arc<Channel>, error: &ReconcileError, context: Arc<Context>) -> Action {
    retry_later(KIND, channel.as_ref(), error, &context)
}
