//! Standalone mode: the same YAML as in a cluster, read from a folder, served on one machine with
//! no cluster. The folder is re-read when it changes; bundles are synced (through the one sync
//! module) into each App's storage (a folder, or object storage with credentials from the
//! environment); devices are served by the same update server. Rollouts are driven by the same
//! pure core as in a cluster, with their state in the device store ([`rollouts`]).

pub mod load;
pub mod rollouts;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{Bundle, bundle::BundleStatus},
    clock::Clock,
    core::{
        bundle_lifecycle::{self, SyncFacts, bundle_status_after_sync},
        snapshot::{ManifestFile, Snapshot, SnapshotInputs},
    },
    server::{self, Served, ServerState, SourceHealth, StorageSetup, storage::AppStorage},
    storage::Credentials,
    sync::{self, BundleSourceRef, SyncLimits, SyncRequest, SyncedBundle},
};

/// How standalone mode runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The folder of YAML.
    pub dir: PathBuf,
    /// Where devices connect.
    pub listen: SocketAddr,
    /// The base URL devices use, when it is not `http://<listen>` (e.g. behind a proxy).
    pub public_url: Option<String>,
    /// The device store (`sqlite://...` or `postgres://...`); default: `<dir>/.ota/devices.db`.
    pub database: Option<String>,
    /// How often the folder is checked for changes.
    pub poll_interval: Duration,
    /// Credentials of Apps on object storage (from the environment).
    pub credentials: Credentials,
    /// Where the internal listener (rollout figures, metrics, health) listens; None: no
    /// internal listener.
    pub internal_listen: Option<SocketAddr>,
    /// The clock rollouts are decided and served on ([`crate::clock::SystemClock`] but in tests).
    pub clock: Arc<dyn Clock>,
}

/// Errors that stop standalone mode (everything else is reported and served around).
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// The folder cannot be read at start.
    #[error(transparent)]
    Load(#[from] load::LoadError),
    /// The server cannot run.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// The HTTP client for bundle sources cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    /// The saved rollout states cannot be read at start.
    #[error("cannot read the saved rollout states: {0}")]
    RolloutStates(#[source] crate::store::StoreError),
}

/// A bundle sync, remembered so that unchanged bundles are not synced again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SyncKey {
    /// The store and prefix (their `Display`: kind, bucket or folder; never credentials).
    storage: String,
    sha256: String,
    source: String,
    /// Encrypted bundles sync differently (zip only).
    encrypted: bool,
}

#[derive(Debug, Clone)]
enum SyncOutcome {
    Done(Arc<SyncedBundle>),
    /// A terminal failure (checksum, hostile zip): not retried until the Bundle changes.
    Refused(String),
    /// A transient failure: retried after `retry_at`.
    Retry {
        message: String,
        retry_at: Instant,
    },
}

/// Runs standalone mode until `shutdown` resolves.
pub async fn run(
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StandaloneError> {
    load::yaml_files(&options.dir)?; // the folder must exist and be readable at start
    let database = match &options.database {
        Some(url) => url.clone(),
        None => {
            let folder = options.dir.join(".ota");
            std::fs::create_dir_all(&folder).map_err(|source| load::LoadError {
                path: folder.clone(),
                source,
            })?;
            format!("sqlite://{}", folder.join("devices.db").display())
        }
    };
    let storage = StorageSetup {
        base_dir: options.dir.clone(),
        credentials: options.credentials.clone(),
    };
    let mut boot = server::boot_with_clock(
        &database,
        options.listen,
        options.public_url.as_deref(),
        storage,
        Arc::clone(&options.clock),
    )
    .await?;
    if let Some(internal) = options.internal_listen {
        boot.bind_internal(internal).await?;
    }
    let state = Arc::clone(&boot.state);
    let address = boot.address;
    let http = reqwest::Client::builder()
        .user_agent(concat!("ota-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StandaloneError::Http(e.to_string()))?;
    let mut folder = Folder {
        dir: options.dir.clone(),
        http,
        syncs: HashMap::new(),
        variants: HashMap::new(),
        last_problems: Vec::new(),
        world: None,
    };
    let mut driver = rollouts::RolloutDriver::open(state.store.clone())
        .await
        .map_err(StandaloneError::RolloutStates)?;
    // When the rollouts must be decided again although the folder did not change.
    let mut rollouts_due: Option<Timestamp> = None;

    let base = options
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    tracing::info!(folder = %options.dir.display(), %address, update_url = %format!("{base}/updates"), "standalone mode serving");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::serve_until(boot, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    }));

    let mut last_fingerprint = None;
    let mut interval = tokio::time::interval(options.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let rollouts_wake = rollouts::sleep_until(&*options.clock, rollouts_due);
        tokio::select! {
            _ = interval.tick() => {}
            () = rollouts_wake => {}
            _ = stop_rx.changed() => break,
        }
        let mut reloaded = false;
        match load::fingerprint(&options.dir) {
            Ok(fingerprint) => {
                let changed = last_fingerprint.as_ref() != Some(&fingerprint);
                if changed || folder.retry_due() {
                    match folder.refresh(&state).await {
                        Ok(()) => {
                            reloaded = true;
                            last_fingerprint = Some(fingerprint);
                        }
                        Err(error) => degrade(&state, error.to_string()),
                    }
                }
            }
            Err(error) => degrade(&state, error.to_string()),
        }
        let now = options.clock.now();
        if !reloaded && rollouts_due.is_none_or(|due| due > now) {
            continue;
        }
        let Some(world) = &folder.world else { continue };
        rollouts_due = driver.drive(&world.load(), now).await;
        let served = folder.served(&driver);
        // A reload serves what it read; a rollout decision only what changes the answers.
        if reloaded {
            tracing::info!(
                apps = served.snapshot.apps().count(),
                "serving the folder's configuration"
            );
        }
        if reloaded || served.snapshot != state.served().snapshot {
            state.publish(served);
        }
    }
    match server.await {
        Ok(outcome) => outcome.map_err(StandaloneError::from),
        Err(join) => Err(StandaloneError::Server(server::ServerError::Serve(
            std::io::Error::other(join.to_string()),
        ))),
    }
}

fn degrade(state: &ServerState, reason: String) {
    if state.health() != SourceHealth::Degraded(reason.clone()) {
        tracing::warn!(%reason, "cannot read the folder; still serving the last good configuration");
    }
    state.set_health(SourceHealth::Degraded(reason));
}

struct Folder {
    dir: PathBuf,
    http: reqwest::Client,
    syncs: HashMap<SyncKey, SyncOutcome>,
    /// The second step of each plain sync (the Brotli variants), running or finished.
    variants: HashMap<SyncKey, VariantsTask>,
    last_problems: Vec<String>,
    /// The last load, kept so rollout decisions can serve new statuses without reading again.
    world: Option<World>,
}

/// The Brotli variants of a synced bundle, made in the background (it is served with raw files
/// meanwhile).
enum VariantsTask {
    /// Being made, after `failures` failed attempts in a row.
    Running {
        task: tokio::task::JoinHandle<Result<sync::CompressedVariants, sync::SyncError>>,
        failures: u32,
    },
    /// The last attempt failed (`failures` in a row): tried again at `at`.
    Retry { at: Instant, failures: u32 },
    /// Made and recorded.
    Done,
}

/// The first wait after a failed variants step; it doubles with each failure in a row.
const VARIANTS_FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between two variants attempts.
const VARIANTS_MAX_RETRY: Duration = Duration::from_secs(300);

/// What a load of the folder gave: the objects (Bundles with their sync status), the storages
/// and the problems found on the way.
struct World {
    inputs: SnapshotInputs,
    storage: HashMap<String, Arc<AppStorage>>,
    problems: Vec<String>,
    /// Every document was read (nothing skipped as unreadable).
    complete: bool,
}

impl World {
    fn load(&self) -> rollouts::Load<'_> {
        rollouts::Load {
            objects: rollouts::Objects {
                apps: &self.inputs.apps,
                channels: &self.inputs.channels,
                bundles: &self.inputs.bundles,
            },
            rollouts: &self.inputs.rollouts,
            complete: self.complete,
        }
    }
}

impl Folder {
    fn retry_due(&self) -> bool {
        let now = Instant::now();
        self.syncs
            .values()
            .any(|o| matches!(o, SyncOutcome::Retry { retry_at, .. } if *retry_at <= now))
            || self.variants.values().any(|task| match task {
                VariantsTask::Running { task, .. } => task.is_finished(),
                VariantsTask::Retry { at, .. } => *at <= now,
                VariantsTask::Done => false,
            })
    }

    /// Reads the folder and syncs what changed.
    async fn refresh(&mut self, state: &ServerState) -> Result<(), load::LoadError> {
        let loaded = load::load(&self.dir)?;
        let complete = loaded.problems.is_empty();
        let mut problems = loaded.problems.clone();
        let mut storage = HashMap::new();
        let mut storage_of: BTreeMap<(String, String), Arc<AppStorage>> = BTreeMap::new();
        let mut apps = Vec::new();
        for app in loaded.apps {
            match state.storages().of(&app) {
                Ok(opened) => {
                    let key = (
                        app.metadata.namespace.clone().unwrap_or_default(),
                        app.metadata.name.clone().unwrap_or_default(),
                    );
                    storage.insert(app.spec.app_id.clone(), Arc::clone(&opened));
                    storage_of.insert(key, opened);
                    apps.push(app);
                }
                Err(error) => problems.push(format!(
                    "App {}: cannot open its storage: {error}",
                    app.metadata.name.as_deref().unwrap_or_default()
                )),
            }
        }
        state
            .storages()
            .retain(&apps.iter().map(|app| app.spec.app_id.as_str()).collect());
        let mut bundles = Vec::new();
        let mut manifests = HashMap::new();
        for (bundle, folder) in &loaded.bundles {
            let namespace = bundle.metadata.namespace.clone().unwrap_or_default();
            let name = bundle.metadata.name.clone().unwrap_or_default();
            let mut bundle = bundle.clone();
            match storage_of.get(&(namespace.clone(), bundle.spec.app_ref.clone())) {
                Some(app_storage) => match self.sync(&bundle, folder, app_storage).await {
                    Ok(synced) => {
                        bundle.status = Some(synced_status(&bundle, &synced));
                        manifests.insert(
                            (namespace, name),
                            Arc::from(synced.manifest.clone().into_boxed_slice()) as Arc<[ManifestFile]>,
                        );
                    }
                    Err(message) => problems.push(format!("Bundle {name}: {message}")),
                },
                None => problems.push(format!(
                    "Bundle {name}: App {} is not served",
                    bundle.spec.app_ref
                )),
            }
            bundles.push(bundle);
        }
        let inputs = SnapshotInputs {
            apps,
            channels: loaded.channels,
            bundles,
            rollouts: loaded.rollouts,
            manifests,
        };
        self.world = Some(World {
            inputs,
            storage,
            problems,
            complete,
        });
        Ok(())
    }

    /// What to serve: the last load with the Rollouts' statuses and the Channels' promotions.
    fn served(&mut self, driver: &rollouts::RolloutDriver) -> Served {
        let Some(world) = &self.world else {
            return Served::default();
        };
        let (rollouts, channels) = driver.served(&world.load());
        let inputs = SnapshotInputs {
            channels,
            rollouts,
            ..world.inputs.clone()
        };
        let mut problems = world.problems.clone();
        let (snapshot, snapshot_problems) = Snapshot::build(&inputs);
        problems.extend(
            snapshot_problems
                .into_iter()
                .map(|p| format!("{}: {}", p.object, p.message)),
        );
        if problems != self.last_problems {
            for problem in &problems {
                tracing::warn!(%problem, "skipped");
            }
            self.last_problems = problems;
        }
        Served {
            snapshot,
            storage: world.storage.clone(),
            manifests: HashMap::new(),
        }
    }

    async fn sync(
        &mut self,
        bundle: &Bundle,
        folder: &Path,
        storage: &AppStorage,
    ) -> Result<Arc<SyncedBundle>, String> {
        let spec = &bundle.spec.source;
        let source = BundleSourceRef::of(spec, Some(folder))?;
        let key = SyncKey {
            storage: format!("{}/{}", storage.opened.store, storage.opened.prefix),
            sha256: spec.sha256.clone(),
            source: format!("{source:?}"),
            encrypted: bundle.spec.encryption.is_some(),
        };
        match self.syncs.get(&key) {
            Some(SyncOutcome::Done(synced)) => {
                let synced = Arc::clone(synced);
                return Ok(self.with_variants(key, synced, storage).await);
            }
            Some(SyncOutcome::Refused(message)) => return Err(message.clone()),
            Some(SyncOutcome::Retry { message, retry_at }) if *retry_at > Instant::now() => {
                return Err(message.clone());
            }
            _ => {}
        }
        let store = &storage.opened.store;
        let prefix_path = &storage.opened.prefix;
        let limits = SyncLimits::default();
        let request = SyncRequest {
            source: &source,
            expected_sha256: &spec.sha256,
            store,
            prefix: prefix_path,
            limits: &limits,
            http: &self.http,
        };
        let result = match bundle.spec.encryption {
            Some(_) => sync::sync_encrypted_bundle(request).await,
            None => sync::sync_bundle(request).await,
        };
        let outcome = match result {
            Ok(synced) => SyncOutcome::Done(Arc::new(synced)),
            Err(error) if error.is_terminal() => SyncOutcome::Refused(format!("{}: {error}", error.reason())),
            Err(error) => SyncOutcome::Retry {
                message: format!("{}: {error} (retrying)", error.reason()),
                retry_at: Instant::now() + Duration::from_secs(10),
            },
        };
        self.syncs.insert(key.clone(), outcome.clone());
        match outcome {
            SyncOutcome::Done(synced) => Ok(self.with_variants(key, synced, storage).await),
            SyncOutcome::Refused(message) | SyncOutcome::Retry { message, .. } => Err(message),
        }
    }

    /// The synced bundle with its Brotli variants once the background step made them: starts
    /// that step the first time, and records its result when it is done.
    async fn with_variants(
        &mut self,
        key: SyncKey,
        synced: Arc<SyncedBundle>,
        storage: &AppStorage,
    ) -> Arc<SyncedBundle> {
        if synced.encrypted || synced.compressed_variants {
            return synced;
        }
        let failures = match self.variants.get(&key) {
            Some(VariantsTask::Running { task, .. }) if task.is_finished() => {
                let Some(VariantsTask::Running { task, failures }) = self.variants.remove(&key) else {
                    return synced;
                };
                let failure = match task.await {
                    Ok(Ok(variants)) => {
                        let done = Arc::new((*synced).clone().with_variants(variants));
                        self.syncs
                            .insert(key.clone(), SyncOutcome::Done(Arc::clone(&done)));
                        self.variants.insert(key, VariantsTask::Done);
                        return done;
                    }
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => format!("the task stopped: {error}"),
                };
                let failures = failures + 1;
                let wait = VARIANTS_FIRST_RETRY
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(VARIANTS_MAX_RETRY);
                tracing::warn!(error = %failure, retry_in = ?wait, "cannot make the Brotli variants; serving raw files meanwhile");
                self.variants.insert(
                    key,
                    VariantsTask::Retry {
                        at: Instant::now() + wait,
                        failures,
                    },
                );
                return synced;
            }
            Some(VariantsTask::Retry { at, failures }) if *at <= Instant::now() => *failures,
            Some(_) => return synced,
            None => 0,
        };
        let (store, prefix, sha256) = (
            Arc::clone(&storage.opened.store),
            storage.opened.prefix.clone(),
            synced.sha256.clone(),
        );
        let task = tokio::spawn(async move { sync::compress_variants(&store, &prefix, &sha256).await });
        self.variants
            .insert(key, VariantsTask::Running { task, failures });
        synced
    }
}

/// The status the controller writes for a synced bundle (the same pure function).
fn synced_status(bundle: &Bundle, synced: &SyncedBundle) -> BundleStatus {
    bundle_status_after_sync(
        bundle,
        &bundle_lifecycle::SyncOutcome::Synced(SyncFacts::from(synced)),
        None,
        0,
    )
    .into_status(k8s_openapi::jiff::Timestamp::now())
}
