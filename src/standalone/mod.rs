//! Standalone mode: the same YAML as in a cluster, read from a folder, served on one machine with
//! no cluster. The folder is re-read when it changes; bundles are synced (through the one sync
//! executor and the core's decisions, as in a cluster: [`bundles`]) into each App's storage (a
//! folder, or object storage with credentials from the environment); devices are served by the same update server. Rollouts are driven by the same
//! pure core as in a cluster, with their state in the device store ([`rollouts`]), as are the
//! Channels' histories, the steps of `updatePath: stepwise` ([`history`]).

mod bundles;
mod folder;
pub mod history;
pub mod load;
pub mod rollouts;
pub mod validate;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;

use self::folder::Folder;
use crate::{
    analysis::{FolderSecrets, Providers},
    clock::Clock,
    rollout_driver::SharedMetricSource,
    server::{self, ServerState, SourceHealth, StorageSetup},
    storage::Credentials,
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
    /// Where the Rollouts' analysis metrics are measured; None: the Prometheus and web providers
    /// ([`crate::analysis::Providers`]), reading header values from the folder's Secrets.
    pub metrics: Option<Arc<dyn SharedMetricSource>>,
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
    RolloutStates(#[source] crate::devices::StoreError),
    /// The saved channel histories cannot be read at start.
    #[error("cannot read the saved channel histories: {0}")]
    ChannelHistories(#[source] crate::devices::StoreError),
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
    // The folder's Secrets as its last read found them: where the metric providers read header
    // values from.
    let metric_secrets = FolderSecrets::new();
    let metrics: Arc<dyn SharedMetricSource> = match &options.metrics {
        Some(metrics) => Arc::clone(metrics),
        None => Arc::new(
            Providers::new(metric_secrets.clone(), Arc::clone(&options.clock))
                .map_err(|e| StandaloneError::Http(e.to_string()))?,
        ),
    };
    let mut folder = Folder::new(options.dir.clone(), http, metric_secrets);
    let mut driver = rollouts::RolloutDriver::open(state.store.clone(), metrics)
        .await
        .map_err(StandaloneError::RolloutStates)?;
    let mut histories = history::HistoryKeeper::open(state.store.clone())
        .await
        .map_err(StandaloneError::ChannelHistories)?;
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
        // The one reading of the clock in this loop: every decision below gets it.
        let now = options.clock.now();
        let mut reloaded = false;
        match load::fingerprint(&options.dir) {
            Ok(fingerprint) => {
                let changed = last_fingerprint.as_ref() != Some(&fingerprint);
                if changed || folder.look_due(now) {
                    match folder.refresh(&state, now).await {
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
        if !reloaded && rollouts_due.is_none_or(|due| due > now) {
            continue;
        }
        let Some(world) = folder.world() else { continue };
        rollouts_due = driver.drive(&world.load(), now).await;
        histories.forget_missing(&world.load()).await;
        let mut served = folder.served(&driver, &histories);
        // A new stable bundle joins its channel's history (saved first), which is then served.
        let recorded = histories.record(&served.snapshot, now).await;
        if recorded.changed {
            served = folder.served(&driver, &histories);
        }
        if recorded.retry {
            let retry = now
                .saturating_add(std::time::Duration::from_secs(1))
                .unwrap_or(Timestamp::MAX);
            rollouts_due = Some(rollouts_due.map_or(retry, |due| due.min(retry)));
        }
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
