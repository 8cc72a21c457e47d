//! Standalone mode's Bundles: each goes through the one sync executor ([`crate::sync_driver`])
//! with the core's decisions, and its status (the one the controller writes in a cluster) is
//! held here and served.
//!
//! A folder has no API server to count generations, so this module does: a Bundle's generation
//! goes up when its spec changes, which is what the core's decisions read.
//!
//! Syncs run in the background: a look of the folder starts the syncs that are due, waits for
//! them at most [`SYNC_WAIT`], and serves what it has. A sync still running then (a big zip, or a
//! storage that does not answer) keeps its Bundle's last status until it ends, and its end is
//! recorded at the next look ([`Bundles::look_due`]): a storage that hangs never holds the
//! folder's other changes, or the rollouts, for longer than that.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{
        Bundle,
        bundle::{BundleSpec, BundleStatus},
        constants::reason,
    },
    core::bundle_lifecycle::{SyncFailure, SyncOutcome, retry_delay_ms},
    server::assembly::OpenedApps,
    storage::OpenedStorage,
    sync::SyncError,
    sync_driver::{
        self, Attempt, BundleSyncer, NextLook, OpenFailure, StoragePort, StorageProblem, SyncStep,
    },
};

/// Looks at one Bundle in one load: a sync, the status it records, then its variants step.
const MAX_STEPS_PER_LOOK: usize = 3;

/// How long a look of the folder waits for the syncs it started before serving without them.
/// A quick sync (a small zip, a storage that answers) is served by the look that started it; a
/// longer one is served by the look after it ends.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// At most this many syncs run at once (each reads a zip and uploads its files).
const SYNCS_AT_ONCE: usize = 4;

/// A namespace and a name.
type BundleId = (String, String);

/// The Bundles of the folder, as synced so far.
pub(super) struct Bundles {
    syncs: Syncs,
    held: HashMap<BundleId, Held>,
}

/// Starts the syncs in the background.
struct Syncs {
    syncer: Arc<BundleSyncer>,
    /// Bounds the syncs running at once.
    permits: Arc<tokio::sync::Semaphore>,
    /// Woken when a sync ends.
    ended: Arc<tokio::sync::Notify>,
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
    /// The sync running in the background, if any.
    sync: Option<SyncTask>,
}

/// A sync of one generation of a Bundle, running in the background; stopped when dropped (its
/// Bundle changed, or left the folder).
struct SyncTask {
    generation: i64,
    task: tokio::task::JoinHandle<Attempt>,
}

impl Drop for SyncTask {
    fn drop(&mut self) {
        self.task.abort();
    }
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

impl Syncs {
    /// Starts the sync of `bundle` (as it is now: its generation and status) in the background.
    fn start(&self, bundle: &Bundle, apps: &OpenedApps, folder: PathBuf) -> SyncTask {
        let syncer = Arc::clone(&self.syncer);
        let permits = Arc::clone(&self.permits);
        let ended = Arc::clone(&self.ended);
        let storage = FolderStorage::of(apps, bundle);
        let bundle = bundle.clone();
        let generation = bundle.metadata.generation.unwrap_or_default();
        let task = tokio::spawn(async move {
            let attempt = match permits.acquire_owned().await {
                Ok(_permit) => match syncer.attempt(&bundle, &storage, Some(&folder)).await {
                    Ok(attempt) => attempt,
                    Err(never) => match never {},
                },
                Err(closed) => stopped(&closed),
            };
            ended.notify_one();
            attempt
        });
        SyncTask { generation, task }
    }
}

/// Standalone mode's way to a Bundle's storage: the App's, opened with the environment's
/// credentials when the folder was read (or why it cannot be used).
struct FolderStorage(Result<OpenedStorage, StorageProblem>);

impl FolderStorage {
    fn of(apps: &OpenedApps, bundle: &Bundle) -> FolderStorage {
        FolderStorage(apps.of_bundle(bundle).map(|storage| storage.opened.clone()))
    }
}

impl StoragePort for FolderStorage {
    type Error = Infallible;

    async fn open(&self, _: &Bundle) -> Result<OpenedStorage, OpenFailure<Infallible>> {
        self.0.clone().map_err(OpenFailure::Unusable)
    }
}

impl Bundles {
    pub(super) fn new(http: reqwest::Client) -> Bundles {
        Bundles {
            syncs: Syncs {
                syncer: Arc::new(BundleSyncer::new(http, crate::sync::SyncLimits::default())),
                permits: Arc::new(tokio::sync::Semaphore::new(SYNCS_AT_ONCE)),
                ended: Arc::new(tokio::sync::Notify::new()),
            },
            held: HashMap::new(),
        }
    }

    /// Waits until every running sync ended, or until `deadline`.
    async fn wait_for_syncs(&self, deadline: tokio::time::Instant) {
        loop {
            let running = self
                .held
                .values()
                .any(|held| held.sync.as_ref().is_some_and(|sync| !sync.task.is_finished()));
            if !running
                || tokio::time::timeout_at(deadline, self.syncs.ended.notified())
                    .await
                    .is_err()
            {
                return;
            }
        }
    }

    /// Whether a Bundle is due for another look at `now`: a retry, a sync that ended, or a
    /// variants step that finished or may be tried again.
    pub(super) fn look_due(&self, now: Timestamp) -> bool {
        let now_ms = now.as_millisecond();
        self.held.values().any(|held| {
            held.look_at_ms.is_some_and(|at| at <= now_ms)
                || held.sync.as_ref().is_some_and(|sync| sync.task.is_finished())
                || match &held.variants {
                    Some(VariantsTask::Running { task, .. }) => task.is_finished(),
                    Some(VariantsTask::Retry { at_ms, .. }) => *at_ms <= now_ms,
                    None => false,
                }
        })
    }

    /// The folder's Bundles with their statuses after a look at each at `now` (starting the syncs
    /// the core says to, and waiting for them at most [`SYNC_WAIT`]), and the problems found, for
    /// the log.
    pub(super) async fn look(
        &mut self,
        loaded: Vec<(Bundle, PathBuf)>,
        apps: &OpenedApps,
        now: Timestamp,
    ) -> (Vec<Bundle>, Vec<String>) {
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        // Every Bundle with its generation and status as held; the syncs that are due started.
        let mut looked = Vec::with_capacity(loaded.len());
        let mut started = false;
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
                sync: None,
            });
            held.observe(&bundle.spec, storage);
            held.collect_variants(&id, now).await;
            bundle.metadata.generation = Some(held.generation);
            bundle.status = held.status.clone();
            if held.sync.is_none()
                && let Some(cause) = self.syncs.syncer.sync_due(&bundle, now)
            {
                tracing::info!(bundle = %id.1, ?cause, "syncing");
                held.sync = Some(self.syncs.start(&bundle, apps, folder.clone()));
                started = true;
            }
            looked.push((bundle, folder, id));
        }
        let seen: HashSet<&BundleId> = looked.iter().map(|(_, _, id)| id).collect();
        self.held.retain(|id, _| seen.contains(id));
        if started {
            self.wait_for_syncs(deadline).await;
        }

        let mut bundles = Vec::with_capacity(looked.len());
        let mut problems = Vec::new();
        for (mut bundle, folder, id) in looked {
            let Some(held) = self.held.get_mut(&id) else {
                continue;
            };
            // A recorded change is looked at again at once, as the controller's status write
            // wakes its reconcile (a sync, then its variants step); an unchanged one is not.
            for _ in 0..MAX_STEPS_PER_LOOK {
                let step = match &mut held.sync {
                    Some(sync) if sync.task.is_finished() => {
                        let attempt = match (&mut sync.task).await {
                            Ok(attempt) => attempt,
                            Err(error) => stopped(&error),
                        };
                        let current = sync.generation == held.generation;
                        held.sync = None;
                        if !current {
                            continue;
                        }
                        self.syncs.syncer.plan(&bundle, attempt, now)
                    }
                    // Still running: the Bundle keeps its status until it ends.
                    Some(_) => break,
                    None => match self.syncs.syncer.look(&bundle, now) {
                        Some(step) => step,
                        None => {
                            held.sync = Some(self.syncs.start(&bundle, apps, folder.clone()));
                            break;
                        }
                    },
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
            bundles.push(bundle);
        }
        (bundles, problems)
    }
}

/// A sync that stopped without an outcome (its task panicked, or was cancelled): a transient
/// failure, tried again on the core's schedule.
fn stopped(error: &dyn std::fmt::Display) -> Attempt {
    Attempt::Outcome(SyncOutcome::Failed(SyncFailure {
        terminal: false,
        reason: reason::STORAGE_UNAVAILABLE,
        message: format!("the sync stopped: {error}"),
    }))
}

impl Held {
    /// A new generation when the spec changed; a fresh start in another storage.
    fn observe(&mut self, spec: &BundleSpec, storage: String) {
        if self.storage != storage {
            self.storage = storage;
            self.status = None;
            self.problem = None;
            self.variants = None;
            self.sync = None;
        }
        if self.spec != *spec {
            self.spec = spec.clone();
            self.generation = self.generation.saturating_add(1);
            self.variants = None;
            self.sync = None;
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
