//! The update server: the HTTP shell around the pure core. Devices reach it with the Capgo
//! updater plugin (`updateUrl` = `<base>/updates`, `statsUrl` = `<base>/stats`, `channelUrl` =
//! `<base>/channel_self`).

pub mod files;
mod handlers;
pub mod kube_source;
pub mod metrics;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};

use crate::{
    core::snapshot::{AppView, BundleView, ManifestFile, Snapshot},
    protocol::{MAX_INFO_BODY, MAX_STATS_BODY, encode::BundleUrls},
    store::{DeviceMemory, WriteQueue},
};

/// What the server serves, swapped whole when the source changes.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// The snapshot of the four kinds.
    pub snapshot: Snapshot,
    /// For Apps on filesystem storage: app id → the folder their keys are relative to.
    pub file_roots: HashMap<String, PathBuf>,
    /// Delta manifests rendered once per snapshot: app id → bundle name → JSON array (nested,
    /// so the hot path looks them up with borrowed keys). Filled
    /// by [`ServerState::publish`].
    pub manifests: HashMap<String, HashMap<String, Box<serde_json::value::RawValue>>>,
}

/// Filesystem storage of an App: the folder its storage path names, and the key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStorage {
    /// The storage folder (`storage.filesystem.path` resolved against a base folder).
    pub root: PathBuf,
    /// `storage.prefix` without leading or trailing slashes.
    pub prefix: String,
}

impl LocalStorage {
    /// The filesystem storage of an App, with relative paths resolved against `base`; None when
    /// the App uses another backend.
    pub fn of(app: &crate::api::App, base: &std::path::Path) -> Option<Self> {
        let filesystem = app.spec.storage.filesystem.as_ref()?;
        let prefix = app
            .spec
            .storage
            .prefix
            .as_deref()
            .unwrap_or_default()
            .trim_matches('/')
            .to_owned();
        Some(Self {
            root: base.join(&filesystem.path),
            prefix,
        })
    }

    /// The folder that storage keys (relative to the prefix) are served from.
    pub fn served_root(&self) -> PathBuf {
        if self.prefix.is_empty() {
            self.root.clone()
        } else {
            self.root.join(&self.prefix)
        }
    }
}

/// The state of the configuration source, for `/readyz` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceHealth {
    /// No snapshot yet: not ready.
    Starting,
    /// Serving the latest configuration.
    Current,
    /// The source is lost; the last good snapshot is still served.
    Degraded(String),
}

/// Shared state of the handlers.
pub struct ServerState {
    served: ArcSwap<Served>,
    health: ArcSwap<SourceHealth>,
    /// In-memory device facts (overrides, failed marks) read by the update check.
    pub memory: DeviceMemory,
    /// Device-store writes, never awaited by a request.
    pub queue: WriteQueue,
    /// Metrics.
    pub metrics: metrics::Metrics,
    urls: ServerUrls,
}

impl ServerState {
    /// State serving nothing yet (`/readyz` answers 503 until the first snapshot).
    pub fn new(public_base_url: &str, memory: DeviceMemory, queue: WriteQueue) -> Self {
        Self {
            served: ArcSwap::from_pointee(Served::default()),
            health: ArcSwap::from_pointee(SourceHealth::Starting),
            memory,
            queue,
            metrics: metrics::Metrics::default(),
            urls: ServerUrls {
                base: public_base_url.trim_end_matches('/').to_owned(),
            },
        }
    }

    /// Serves a new snapshot (requests in flight finish on the old one).
    pub fn publish(&self, mut served: Served) {
        self.metrics
            .apps_served
            .set(served.snapshot.apps().count() as i64);
        served.manifests = render_manifests(&served.snapshot, &self.urls);
        self.served.store(Arc::new(served));
        self.set_health(SourceHealth::Current);
    }

    /// Records the source's health.
    pub fn set_health(&self, health: SourceHealth) {
        let previous = self.health.load();
        if **previous == SourceHealth::Starting && health != SourceHealth::Current {
            return; // nothing good to fall back on yet: still starting
        }
        self.metrics
            .source_degraded
            .set(i64::from(matches!(health, SourceHealth::Degraded(_))));
        self.health.store(Arc::new(health));
    }

    /// The source's health.
    pub fn health(&self) -> SourceHealth {
        (**self.health.load()).clone()
    }

    /// What is served now.
    pub fn served(&self) -> Arc<Served> {
        self.served.load_full()
    }
}

/// Every served bundle's delta manifest, rendered once.
fn render_manifests(
    snapshot: &Snapshot,
    urls: &dyn BundleUrls,
) -> HashMap<String, HashMap<String, Box<serde_json::value::RawValue>>> {
    let mut rendered = HashMap::new();
    for app in snapshot.apps() {
        let mut by_bundle = HashMap::new();
        for channel in app.channels.values() {
            let stable = match &channel.stable {
                crate::core::snapshot::StableTarget::Bundle(bundle) => Some(bundle),
                _ => None,
            };
            let candidate = channel.rollout.as_ref().map(|r| &r.candidate);
            for bundle in stable.into_iter().chain(candidate) {
                if let Some(files) = &bundle.manifest
                    && !by_bundle.contains_key(&bundle.name)
                    && let Some(json) = crate::protocol::encode::manifest_json(app, files, urls)
                {
                    by_bundle.insert(bundle.name.clone(), json);
                }
            }
        }
        rendered.insert(app.app_id.clone(), by_bundle);
    }
    rendered
}

/// URLs under the server's own base: `<base>/files/<app_id>/<key>`.
struct ServerUrls {
    base: String,
}

impl BundleUrls for ServerUrls {
    fn zip_url(&self, app: &AppView, bundle: &BundleView) -> String {
        format!("{}/files/{}/{}", self.base, app.app_id, bundle.zip_key)
    }

    fn file_url(&self, app: &AppView, file: &ManifestFile) -> String {
        format!("{}/files/{}/{}", self.base, app.app_id, file.key)
    }
}

/// The router of every endpoint.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/updates", post(handlers::updates).get(handlers::updates_health))
        .layer(DefaultBodyLimit::max(MAX_INFO_BODY))
        .merge(
            Router::new()
                .route("/stats", post(handlers::stats))
                .layer(DefaultBodyLimit::max(MAX_STATS_BODY)),
        )
        .merge(
            Router::new()
                .route(
                    "/channel_self",
                    post(handlers::channel_self)
                        .put(handlers::channel_self)
                        .get(handlers::channel_self)
                        .delete(handlers::channel_self),
                )
                .layer(DefaultBodyLimit::max(MAX_INFO_BODY)),
        )
        .route("/files/{app_id}/{*key}", get(handlers::file))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .with_state(state)
}

/// Errors of running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The device store could not be opened.
    #[error("cannot open the device store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Binds `address` (port 0 picks a free one) and returns the listener and its real address.
pub async fn bind(address: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServerError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind { address, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { address, source })?;
    Ok((listener, local))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve)
}

/// A server ready to serve: its state, its listener and its device-store writer.
pub struct Boot {
    /// Shared state; publish snapshots into it.
    pub state: Arc<ServerState>,
    /// The bound listener.
    pub listener: tokio::net::TcpListener,
    /// The address it is bound to.
    pub address: SocketAddr,
    /// The device-store write queue's flusher task.
    pub flusher: tokio::task::JoinHandle<()>,
}

/// Opens the device store, loads what the hot path reads into memory, starts the write queue and
/// binds the listener. Devices are told `public_url`, or `http://<bound address>`.
pub async fn boot(database: &str, listen: SocketAddr, public_url: Option<&str>) -> Result<Boot, ServerError> {
    let store = crate::store::DeviceStore::open(database).await?;
    let memory = store.load_memory().await?;
    let (queue, flusher) = WriteQueue::start(
        store,
        memory.clone(),
        65_536,
        1_000,
        std::time::Duration::from_millis(200),
    );
    let (listener, address) = bind(listen).await?;
    let base = public_url.map_or_else(|| format!("http://{address}"), str::to_owned);
    let state = Arc::new(ServerState::new(&base, memory, queue));
    Ok(Boot {
        state,
        listener,
        address,
        flusher,
    })
}

/// Serves a booted server until `shutdown`, then flushes the device-store writes.
pub async fn serve_until(
    boot: Boot,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Boot {
        state,
        listener,
        flusher,
        ..
    } = boot;
    let result = serve(listener, Arc::clone(&state), shutdown).await;
    if let Err(error) = state.queue.flush().await {
        tracing::warn!(%error, "device-store writes could not all be flushed at shutdown");
    }
    flusher.abort();
    result
}

/// Milliseconds since the epoch (the shell's clock; the core is given times, never reads one).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
