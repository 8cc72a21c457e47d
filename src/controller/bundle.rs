//! The Bundle reconciler: syncs each Bundle into its App's storage (the one implementation in
//! [`crate::sync`]), records the outcome in status, and holds a finalizer so that deleting a
//! Bundle removes from storage what only it referenced, once nothing uses it any more.
//!
//! The decisions are the pure ones of [`crate::core::bundle_lifecycle`]; this module reads the
//! caches and storage, runs the sync, and writes what those functions return.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        reflector::{ReflectHandle, Store},
    },
};
use tokio::sync::watch;

use super::{
    Context,
    caches::{drive, in_namespace, refs_where},
    status::{
        ReconcileError, apply_status, backoff_key, count_failure, instrumented, object_key, publish,
        ready_transition, retry_later,
    },
};
use crate::{
    api::{
        App, Bundle, BundleStatus, Channel, Rollout,
        constants::{finalizer, reason},
    },
    core::{
        app_children::referenced_secrets,
        bundle_lifecycle::{
            self, DeletionDecision, StoredBundle, SyncDecision, deletion_decision, sync_decision,
        },
        conditions::merge_conditions,
        transitions::FailureCategory,
    },
    storage::{self, Credentials, OpenedStorage},
    sync::{self, SyncLimits},
    sync_driver::{self, BundleSyncer, NextLook, OpenFailure, StoragePort, StorageProblem, SyncStep},
    telemetry::error_chain,
};

/// The kind label of this reconciler's metrics.
const KIND: &str = "Bundle";
/// How often a synced Bundle is looked at again although nothing changed (a look that finds it
/// up to date reads nothing from storage and writes nothing).
const RESYNC: Duration = Duration::from_secs(3600);
/// How often a Bundle whose App names a missing Secret is looked at again (Secrets are not
/// watched).
const REFERENCE_RECHECK: Duration = Duration::from_secs(30);

/// What the Bundle reconciler needs beyond the shared context.
pub struct BundleSync {
    /// Where filesystem storage folders are (their `path` is relative to it).
    pub storage_dir: PathBuf,
    /// The sync executor shared with standalone mode (it remembers transient failures).
    pub syncer: BundleSyncer,
}

impl BundleSync {
    /// Sync settings for filesystem storage under `storage_dir`.
    pub fn new(storage_dir: PathBuf, http: reqwest::Client, limits: SyncLimits) -> BundleSync {
        BundleSync {
            storage_dir,
            syncer: BundleSyncer::new(http, limits),
        }
    }
}

/// The controller's way to the storage of a Bundle's App: the App from the cache, its
/// credentials from the Secrets it names.
struct ClusterStorage<'a>(&'a Context);

impl StoragePort for ClusterStorage<'_> {
    type Error = ReconcileError;

    async fn open(&self, bundle: &Bundle) -> Result<OpenedStorage, OpenFailure<ReconcileError>> {
        let Some(app) = app_of(bundle, self.0) else {
            return Err(OpenFailure::Unusable(StorageProblem {
                reason: reason::REFERENCE_NOT_FOUND,
                message: format!("App {} does not exist", bundle.spec.app_ref),
                recheck: None,
            }));
        };
        open_storage(&app, self.0).await
    }
}

/// Runs the Bundle controller until `stop` reads `true`.
pub async fn run(
    context: Arc<Context>,
    bundles: ReflectHandle<Bundle>,
    apps: ReflectHandle<App>,
    channels: ReflectHandle<Channel>,
    rollouts: ReflectHandle<Rollout>,
    stop: watch::Receiver<bool>,
) {
    let store = context.stores.bundles.clone();
    // A new or changed App may let its Bundles sync (a storage fix, a Secret named at last);
    // those already synced have nothing to gain (an App's status changes often).
    let by_app = {
        let store = store.clone();
        move |app: Arc<App>| {
            refs_where(&store, app.namespace(), |b| {
                b.spec.app_ref == app.name_any() && sync_decision(b, None, 0) != SyncDecision::UpToDate
            })
        }
    };
    // A Channel or Rollout that lets go of a Bundle may free a held deletion.
    let deleting = |store: &Store<Bundle>, namespace: Option<String>| {
        refs_where(store, namespace, |b| b.metadata.deletion_timestamp.is_some())
    };
    let by_channel = {
        let store = store.clone();
        move |channel: Arc<Channel>| deleting(&store, channel.namespace())
    };
    let by_rollout = {
        let store = store.clone();
        move |rollout: Arc<Rollout>| deleting(&store, rollout.namespace())
    };
    let controller = Controller::for_shared_stream(bundles, store.clone())
        .watches_shared_stream(apps, by_app)
        .watches_shared_stream(channels, by_channel)
        .watches_shared_stream(rollouts, by_rollout);
    drive(controller, reconcile, error_policy, context, stop).await;
}

/// One reconcile of one Bundle.
#[tracing::instrument(skip_all, fields(kind = KIND, name = %bundle.name_any(), namespace = bundle.namespace().unwrap_or_default()))]
pub async fn reconcile(bundle: Arc<Bundle>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    if let Some(wait) = context.not_now() {
        return Ok(Action::requeue(wait));
    }
    instrumented(&context, KIND, async {
        let has_finalizer = bundle.finalizers().iter().any(|f| f == finalizer::BUNDLE_STORAGE);
        let action = if bundle.metadata.deletion_timestamp.is_some() {
            match has_finalizer {
                true => clean_up(&bundle, &context).await?,
                false => Action::await_change(),
            }
        } else {
            if !has_finalizer {
                add_finalizer(&bundle, &context).await?;
            }
            sync_if_needed(&bundle, &context).await?
        };
        context.backoff.reset(&backoff_key(KIND, bundle.as_ref()));
        Ok(action)
    })
    .await
}

/// Transient failures wait a per-object, growing, jittered delay.
pub fn error_policy(bundle: Arc<Bundle>, error: &ReconcileError, context: Arc<Context>) -> Action {
    retry_later(KIND, bundle.as_ref(), error, &context)
}

fn app_of(bundle: &Bundle, context: &Context) -> Option<Arc<App>> {
    in_namespace(
        &context.stores.apps,
        bundle.metadata.namespace.as_deref(),
        |app| app.name_any() == bundle.spec.app_ref,
    )
    .pop()
}

async fn sync_if_needed(bundle: &Bundle, context: &Context) -> Result<Action, ReconcileError> {
    let step = context
        .bundle_sync
        .syncer
        .step(bundle, &ClusterStorage(context), None, context.clock.now())
        .await?;
    match step {
        SyncStep::Wait(next) => Ok(action_of(next)),
        SyncStep::CompressVariants => compress_variants(bundle, context).await,
        SyncStep::Record {
            status,
            warning,
            next,
            ..
        } => {
            if let Some(warning) = &warning {
                count_failure(context, KIND, FailureCategory::of_reason(warning.reason));
            }
            write_status(bundle, context, *status, warning).await?;
            Ok(action_of(next))
        }
    }
}

fn action_of(next: NextLook) -> Action {
    match next {
        NextLook::AwaitChange => Action::await_change(),
        NextLook::After(wait) => Action::requeue(wait),
        NextLook::Resync => Action::requeue(RESYNC),
    }
}

/// The second step of a sync, once Synced is recorded (the status write wakes this reconcile):
/// the Brotli variants, then the status that names their manifest. Failures retry with the
/// reconciler's backoff; the bundle is served with raw files meanwhile.
async fn compress_variants(bundle: &Bundle, context: &Context) -> Result<Action, ReconcileError> {
    let Some(app) = app_of(bundle, context) else {
        return Ok(Action::requeue(REFERENCE_RECHECK));
    };
    let opened = match open_storage(&app, context).await {
        Ok(opened) => opened,
        Err(OpenFailure::Shell(error)) => return Err(error),
        Err(OpenFailure::Unusable(problem)) => {
            return Ok(Action::requeue(problem.recheck.unwrap_or(REFERENCE_RECHECK)));
        }
    };
    let status = sync_driver::compress_variants(
        &bundle.status.clone().unwrap_or_default(),
        &bundle.spec.source.sha256,
        &opened,
    )
    .await
    .map_err(ReconcileError::Variants)?;
    write_status(bundle, context, status, None).await?;
    Ok(Action::requeue(RESYNC))
}

/// Opens the App's storage with the credentials of the Secrets it names.
async fn open_storage(app: &App, context: &Context) -> Result<OpenedStorage, OpenFailure<ReconcileError>> {
    let namespace = app.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let mut values = BTreeMap::new();
    for (name, keys) in referenced_secrets(&app.spec) {
        let secret = secrets
            .get_opt(&name)
            .await
            .map_err(ReconcileError::api(format!("reading Secret {namespace}/{name}")))
            .map_err(OpenFailure::Shell)?;
        let Some(secret) = secret else {
            return Err(OpenFailure::Unusable(StorageProblem {
                reason: reason::REFERENCE_NOT_FOUND,
                message: format!(
                    "the Secret {name} that App {} names for its storage does not exist",
                    app.name_any()
                ),
                recheck: Some(REFERENCE_RECHECK),
            }));
        };
        for key in keys {
            let value = secret
                .data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|data| data.get(key))
                        .cloned()
                });
            if let Some(value) = value {
                values.insert(key.to_owned(), value);
            }
        }
    }
    let credentials = Credentials::from_map(values);
    storage::open(&app.spec.storage, &context.bundle_sync.storage_dir, &credentials).map_err(|error| {
        OpenFailure::Unusable(StorageProblem {
            reason: reason::REFERENCE_NOT_READY,
            message: format!(
                "the storage of App {} cannot be opened: {}",
                app.name_any(),
                credentials.redact(&error_chain(&error))
            ),
            recheck: None,
        })
    })
}

/// Writes `status` when it differs from the stored one, with the Event its transition deserves
/// (`warning` for a terminal failure).
async fn write_status(
    bundle: &Bundle,
    context: &Context,
    status: BundleStatus,
    warning: Option<bundle_lifecycle::WarningEvent>,
) -> Result<(), ReconcileError> {
    if bundle.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let written = apply_bundle_status(context, bundle, &status).await?;
    if !written {
        return Ok(());
    }
    let before = bundle.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    match (warning, ready_transition(before, &status.conditions)) {
        (Some(warning), Some(_)) => {
            publish(context, bundle, EventType::Warning, warning.reason, warning.note).await;
        }
        (_, Some((event_type, reason, note))) => publish(context, bundle, event_type, &reason, note).await,
        (_, None) => {}
    }
    Ok(())
}

/// [`apply_status`] for a Bundle, its error naming the Bundle.
async fn apply_bundle_status(
    context: &Context,
    bundle: &Bundle,
    status: &BundleStatus,
) -> Result<bool, ReconcileError> {
    apply_status(context, bundle, status)
        .await
        .map_err(ReconcileError::api(format!(
            "writing the status of Bundle {}",
            object_key(bundle)
        )))
}

async fn add_finalizer(bundle: &Bundle, context: &Context) -> Result<(), ReconcileError> {
    patch_finalizers(bundle, context, |finalizers| {
        finalizers.push(finalizer::BUNDLE_STORAGE.to_owned());
    })
    .await
}

async fn remove_finalizer(bundle: &Bundle, context: &Context) -> Result<(), ReconcileError> {
    patch_finalizers(bundle, context, |finalizers| {
        finalizers.retain(|f| f != finalizer::BUNDLE_STORAGE);
    })
    .await
}

/// Changes the finalizer list with a merge patch that carries the resourceVersion it started
/// from, so that a concurrent change by someone else makes the patch fail (and the reconcile
/// retry) instead of being overwritten.
async fn patch_finalizers(
    bundle: &Bundle,
    context: &Context,
    change: impl FnOnce(&mut Vec<String>),
) -> Result<(), ReconcileError> {
    let mut finalizers = bundle.metadata.finalizers.clone().unwrap_or_default();
    change(&mut finalizers);
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": bundle.metadata.resource_version,
        }
    });
    let api: Api<Bundle> = Api::namespaced(
        context.client.clone(),
        bundle.metadata.namespace.as_deref().unwrap_or_default(),
    );
    match api
        .patch(&bundle.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: nothing holds it any more.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Api {
            action: format!("updating the finalizers of Bundle {}", object_key(bundle)),
            source,
        }),
    }
}

/// A deleted Bundle: hold while it is used, else remove what only it referenced, then let go.
async fn clean_up(bundle: &Bundle, context: &Context) -> Result<Action, ReconcileError> {
    let namespace = bundle.metadata.namespace.as_deref();
    let Some(app) = app_of(bundle, context) else {
        // Without its App the storage is unknown: nothing can be cleaned, so nothing may hold
        // the Bundle back. Say so, once.
        publish(
            context,
            bundle,
            EventType::Warning,
            reason::REFERENCE_NOT_FOUND,
            format!(
                "App {} no longer exists, so the Bundle's objects in its storage were left in place",
                bundle.spec.app_ref
            ),
        )
        .await;
        remove_finalizer(bundle, context).await?;
        return Ok(Action::await_change());
    };
    let channels: Vec<Channel> = in_namespace(&context.stores.channels, namespace, |_| true)
        .into_iter()
        .map(|c| (*c).clone())
        .collect();
    let rollouts: Vec<Rollout> = in_namespace(&context.stores.rollouts, namespace, |_| true)
        .into_iter()
        .map(|r| (*r).clone())
        .collect();
    // Bundles of every App that stores into the same place may share content-addressed files.
    let same_storage: Vec<Arc<App>> = context
        .stores
        .apps
        .state_filter(|other| other.spec.storage == app.spec.storage);
    let siblings: Vec<Arc<Bundle>> = context.stores.bundles.state_filter(|other| {
        other.metadata.uid != bundle.metadata.uid
            && same_storage.iter().any(|owner| {
                owner.metadata.namespace == other.metadata.namespace && owner.name_any() == other.spec.app_ref
            })
    });

    // Deciding needs the stored manifests (which files each bundle lists): read them only when
    // no Channel or Rollout holds the bundle, since a held bundle removes nothing anyway.
    let held = bundle_lifecycle::bundle_users(&bundle.metadata, &channels, &rollouts);
    let (opened, file_keys) = if held.is_empty() {
        let opened = match open_storage(&app, context).await {
            Ok(opened) => opened,
            Err(OpenFailure::Shell(error)) => return Err(error),
            Err(OpenFailure::Unusable(problem)) => {
                let conditions = vec![crate::core::conditions::DesiredCondition::new(
                    crate::api::constants::condition::RECONCILING,
                    crate::core::conditions::ConditionStatus::True,
                    problem.reason,
                    format!("Deletion waits: {}", problem.message),
                )];
                record_deletion_wait(bundle, context, &conditions).await?;
                return Ok(Action::requeue(problem.recheck.unwrap_or(REFERENCE_RECHECK)));
            }
        };
        let sha256s = std::iter::once(bundle.spec.source.sha256.as_str())
            .chain(siblings.iter().map(|s| s.spec.source.sha256.as_str()));
        let keys = sync::stored_file_keys(&opened.store, &opened.prefix, sha256s)
            .await
            .map_err(ReconcileError::Cleanup)?;
        (Some(opened), keys)
    } else {
        (None, BTreeMap::new())
    };
    let stored = |b: &Bundle| file_keys.get(&b.spec.source.sha256).map(Vec::as_slice);
    let sibling_views: Vec<StoredBundle<'_>> = siblings
        .iter()
        .map(|s| StoredBundle {
            bundle: s.as_ref(),
            file_keys: stored(s),
        })
        .collect();
    let decision = deletion_decision(
        StoredBundle {
            bundle,
            file_keys: stored(bundle),
        },
        &sibling_views,
        &channels,
        &rollouts,
    );
    match (&decision, opened) {
        (DeletionDecision::Remove { keys }, Some(opened)) => {
            let removed = sync::remove_objects(&opened.store, &opened.prefix, keys)
                .await
                .map_err(ReconcileError::Cleanup)?;
            remove_finalizer(bundle, context).await?;
            publish(
                context,
                bundle,
                EventType::Normal,
                "StorageCleaned",
                format!("Removed {removed} objects that only this Bundle referenced from the App's storage"),
            )
            .await;
            Ok(Action::await_change())
        }
        _ => {
            let conditions = decision.conditions().unwrap_or_default();
            record_deletion_wait(bundle, context, &conditions).await?;
            // Channels and Rollouts are watched: a change to one of them looks again. A sync
            // that runs elsewhere is not, so a wait for one looks again soon.
            Ok(match decision {
                DeletionDecision::WaitForSync { .. } => Action::requeue(Duration::from_secs(10)),
                _ => Action::requeue(RESYNC),
            })
        }
    }
}

/// Records in status why a deletion waits (only when that changed), with a Normal event.
async fn record_deletion_wait(
    bundle: &Bundle,
    context: &Context,
    conditions: &[crate::core::conditions::DesiredCondition],
) -> Result<(), ReconcileError> {
    let existing = bundle.status.clone().unwrap_or_default();
    let merged = merge_conditions(
        &existing.conditions,
        conditions,
        existing.observed_generation,
        context.clock.now(),
    );
    if merged == existing.conditions {
        return Ok(());
    }
    let status = BundleStatus {
        conditions: merged,
        ..existing
    };
    let written = apply_bundle_status(context, bundle, &status).await?;
    if let Some(condition) = conditions.first().filter(|_| written) {
        publish(
            context,
            bundle,
            EventType::Normal,
            &condition.reason,
            condition.message.clone(),
        )
        .await;
    }
    Ok(())
}
