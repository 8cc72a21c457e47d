//! Standalone mode's Bundles: each goes through the one sync executor ([`crate::sync_driver`])
//! with the core's decisions, and its status (the one the controller writes in a cluster) is
//! held here and served.
//!
//! A folder has no API server to count generations, so this module does: a Bundle's generation
//! goes up when its spec changes, which is what the core's decisions read.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    path::PathBuf,
};

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{
        Bundle,
        bundle::{BundleSpec, BundleStatus},
    },
    core::bundle_lifecycle::retry_delay_ms,
    server::assembly::OpenedApps,
    storage::OpenedStorage,
    sync::SyncError,
    sync_driver::{self, BundleSyncer, NextLook, OpenFailure, StoragePort, SyncStep},
};

/// Looks at one Bundle in one load: a sync, the status it records, then its variants step.
const MAX_STEPS_PER_LOOK: usize = 3;

/// A namespace and a name.
type BundleId = (String, String);

/// The Bundles of the folder, as synced so far.
pub(super) struct Bundles {
    syncer: BundleSyncer,
    held: HashMap<BundleId, Held>,
}

/// What is held of one Bundle between two loads of the folder.
struct Held {
    /// The spec of the current generation.
    spec: BundleSpec,
    generation: i64,
    /// The storage it is synced into (store and prefix; never credentials): another storage
    /// starts over.
    storage: String,
    /// The status the controller would have written.
    status: Option<BundleStatus>,
    /// What went wrong at the last sync, for the log.
    problem: Option<String>,
    /// When the executor asked to look again (ms since the Unix epoch).
    look_at_ms: Option<i64>,
    /// The second step of a plain sync (the Brotli variants), running or waiting for a retry.
    variants: Option<VariantsTask>,
}

/// The Brotli variants of a synced bundle, made in the background (it is served with raw files
/// meanwhile).
enum VariantsTask {
    /// Being made, after `failures` failed attempts in a row.
    Running {
        task: tokio::task::JoinHandle<Result<BundleStatus, SyncError>>,
        failures: u32,
    },
    /// The last attempt failed (`failures` in a row): tried again at `at_ms`.
    Retry { at_ms: i64, failures: u32 },
}

/// Standalone mode's way to a Bundle's storage: the App's, opened with the environment's
/// credentials when the folder was read.
struct FolderStorage<'a>(&'a OpenedApps);

impl StoragePort for FolderStorage<'_> {
    type Error = Infallible;

    async fn open(&self, bundle: &Bundle) -> Result<OpenedStorage, OpenFailure<Infallible>> {
        self.0
            .of_bundle(bundle)
            .map(|storage| storage.opened.clone())
            .map_err(OpenFailure::Unusable)
    }
}

impl Bundles {
    pub(super) fn new(http: reqwest::Client) -> Bundles {
        Bundles {
            syncer: BundleSyncer::new(http, crate::sync::SyncLimits::default()),
            held: HashMap::new(),
        }
    }

    /// Whether a Bundle is due for another look at `now`: a retry, or a variants step that
    /// finished or may be tried again.
    pub(super) fn look_due(&self, now: Timestamp) -> bool {
        let now_ms = now.as_millisecond();
        self.held.values().any(|held| {
            held.look_at_ms.is_some_and(|at| at <= now_ms)
                || match &held.variants {
                    Some(VariantsTask::Running { task, .. }) => task.is_finished(),
                    Some(VariantsTask::Retry { at_ms, .. }) => *at_ms <= now_ms,
                    None => false,
                }
        })
    }

    /// The folder's Bundles with their statuses after a look at each at `now` (syncing those the
    /// core says to), and the problems found, for the log.
    pub(super) async fn look(
        &mut self,
        loaded: Vec<(Bundle, PathBuf)>,
        apps: &OpenedApps,
        now: Timestamp,
    ) -> (Vec<Bundle>, Vec<String>) {
        let mut bundles = Vec::with_capacity(loaded.len());
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for (mut bundle, folder) in loaded {
            let id = (
                bundle.metadata.namespace.clone().unwrap_or_default(),
                bundle.metadata.name.clone().unwrap_or_default(),
            );
            let storage = apps
                .of_bundle(&bundle)
                .map(|s| format!("{}/{}", s.opened.store, s.opened.prefix))
                .unwrap_or_default();
            let held = self.held.entry(id.clone()).or_insert_with(|| Held {
                spec: bundle.spec.clone(),
                generation: 1,
                storage: storage.clone(),
                status: None,
                problem: None,
                look_at_ms: None,
                variants: None,
            });
            held.observe(&bundle.spec, storage);
            held.collect_variants(&id, now).await;
            bundle.metadata.generation = Some(held.generation);
            bundle.status = held.status.clone();
            // A recorded change is looked at again at once, as the controller's status write
            // wakes its reconcile (a sync, then its variants step); an unchanged one is not.
            for _ in 0..MAX_STEPS_PER_LOOK {
                let step = match self
                    .syncer
                    .step(&bundle, &FolderStorage(apps), Some(&folder), now)
                    .await
                {
                    Ok(step) => step,
                    Err(never) => match never {},
                };
                match step {
                    SyncStep::Record {
                        status,
                        problem,
                        next,
                        ..
                    } => {
                        held.problem = problem;
                        held.look_at_ms = look_at(next, now);
                        let changed = bundle.status.as_ref() != Some(&*status);
                        bundle.status = Some((*status).clone());
                        held.status = Some(*status);
                        if changed {
                            continue;
                        }
                    }
                    SyncStep::Wait(next) => held.look_at_ms = look_at(next, now),
                    SyncStep::CompressVariants => held.start_variants(&bundle, apps, now),
                }
                break;
            }
            if let Some(problem) = &held.problem {
                problems.push(format!(
                    "Bundle {}: {problem}",
                    bundle.metadata.name.as_deref().unwrap_or_default()
                ));
            }
            seen.insert(id);
            bundles.push(bundle);
        }
        self.held.retain(|id, _| seen.contains(id));
        (bundles, problems)
    }
}

impl Held {
    /// A new generation when the spec changed; a fresh start in another storage.
    fn observe(&mut self, spec: &BundleSpec, storage: String) {
        if self.storage != storage {
            self.storage = storage;
            self.status = None;
            self.problem = None;
            self.variants = None;
        }
        if self.spec != *spec {
            self.spec = spec.clone();
            self.generation = self.generation.saturating_add(1);
            self.variants = None;
        }
    }

    /// Records the variants step once it finished: its status, or when to try again (the core's
    /// retry schedule).
    async fn collect_variants(&mut self, id: &BundleId, now: Timestamp) {
        let Some(VariantsTask::Running { task, .. }) = &self.variants else {
            return;
        };
        if !task.is_finished() {
            return;
        }
        let Some(VariantsTask::Running { task, failures }) = self.variants.take() else {
            return;
        };
        let failure = match task.await {
            Ok(Ok(status)) => {
                self.status = Some(status);
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(error) => format!("the task stopped: {error}"),
        };
        let failures = failures.saturating_add(1);
        let wait_ms = retry_delay_ms(&format!("{}/{}", id.0, id.1), failures);
        tracing::warn!(error = %failure, retry_in_ms = wait_ms, "cannot make the Brotli variants; serving raw files meanwhile");
        self.variants = Some(VariantsTask::Retry {
            at_ms: now
                .as_millisecond()
                .saturating_add(i64::try_from(wait_ms).unwrap_or(i64::MAX)),
            failures,
        });
    }

    /// Starts the variants step in the background, unless it runs or waits for its retry.
    fn start_variants(&mut self, bundle: &Bundle, apps: &OpenedApps, now: Timestamp) {
        let failures = match &self.variants {
            Some(VariantsTask::Running { .. }) => return,
            Some(VariantsTask::Retry { at_ms, .. }) if *at_ms > now.as_millisecond() => return,
            Some(VariantsTask::Retry { failures, .. }) => *failures,
            None => 0,
        };
        let Ok(storage) = apps.of_bundle(bundle) else {
            return;
        };
        let opened = storage.opened.clone();
        let status = bundle.status.clone().unwrap_or_default();
        let sha256 = bundle.spec.source.sha256.clone();
        let task =
            tokio::spawn(async move { sync_driver::compress_variants(&status, &sha256, &opened).await });
        self.variants = Some(VariantsTask::Running { task, failures });
    }
}

/// When to look again, for a look at `now` that asked for `next`.
fn look_at(next: NextLook, now: Timestamp) -> Option<i64> {
    match next {
        NextLook::After(wait) => Some(
            now.as_millisecond()
                .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
        ),
        // The folder is read again when it changes; an up-to-date bundle has nothing to recheck.
        NextLook::AwaitChange | NextLook::Resync => None,
    }
}
