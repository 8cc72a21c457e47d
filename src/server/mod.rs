//! The update server: the HTTP shell around the pure core. Devices reach it with the Capgo
//! updater plugin (`updateUrl` = `<base>/updates`, `statsUrl` = `<base>/stats`, `channelUrl` =
//! `<base>/channel_self`).

pub mod assembly;
pub mod files;
mod handlers;
pub mod hygiene;
pub mod internal;
pub mod kube_source;
pub mod metrics;
pub mod rate_limits;
pub mod retention;
pub mod storage;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};

use self::storage::{AppStorage, AppStorages};
use crate::{
    clock::{Clock, SystemClock},
    core::snapshot::Snapshot,
    devices::{self, DeviceMemory, DeviceStore, WriteQueue},
    protocol::{MAX_INFO_BODY, MAX_STATS_BODY, encode::BundleUrls},
    storage::{Credentials, StorageUrls, UrlMode},
};

/// What the server serves, swapped whole when the source changes.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// The snapshot of the four kinds.
    pub snapshot: Snapshot,
    /// App id → its storage (download URLs, and the folder of filesystem storage).
    pub storage: HashMap<String, Arc<AppStorage>>,
    /// Delta manifests rendered once per snapshot: app id → bundle name → JSON array (nested,
    /// so the hot path looks them up with borrowed keys). Filled
    /// by [`ServerState::publish`].
    pub manifests: HashMap<String, HashMap<String, Box<serde_json::value::RawValue>>>,
}

impl Served {
    /// The URLs of an App's bundles: its storage's, else the server's own.
    pub fn urls<'a>(&'a self, app_id: &str, fallback: &'a StorageUrls) -> &'a StorageUrls {
        self.storage.get(app_id).map_or(fallback, |storage| &storage.urls)
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
    /// The device store, for reads off the device path (the internal listener's figures) and
    /// for standalone mode's own durable writes.
    pub store: DeviceStore,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// The server's own `/files` URLs, for Apps without a storage of their own.
    urls: StorageUrls,
    /// Apps' storages, opened once and reused across snapshots.
    storages: AppStorages,
    /// Told when a snapshot is published (the presigned-URL refresher wakes up).
    published: tokio::sync::Notify,
    /// The clock requests are stamped with and the server's timers run on.
    pub clock: Arc<dyn Clock>,
    /// The public endpoints' rate limiters, set from each snapshot.
    pub rate_limits: rate_limits::RateLimiters,
}

impl ServerState {
    /// State serving nothing yet (`/readyz` answers 503 until the first snapshot).
    pub fn new(
        public_base_url: &str,
        storage: StorageSetup,
        store: DeviceStore,
        memory: DeviceMemory,
        queue: WriteQueue,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            served: ArcSwap::from_pointee(Served::default()),
            health: ArcSwap::from_pointee(SourceHealth::Starting),
            memory,
            queue,
            store,
            metrics: metrics::Metrics::default(),
            urls: StorageUrls::server(public_base_url),
            storages: AppStorages::new(&storage.base_dir, storage.credentials, public_base_url),
            published: tokio::sync::Notify::new(),
            clock,
            rate_limits: rate_limits::RateLimiters::default(),
        }
    }

    /// Apps' storages, for the sources building what to serve.
    pub fn storages(&self) -> &AppStorages {
        &self.storages
    }

    /// The server's own URLs (`<base>/files/<app id>/<key>`).
    pub fn server_urls(&self) -> &StorageUrls {
        &self.urls
    }

    /// Serves a new snapshot (requests in flight finish on the old one).
    pub fn publish(&self, mut served: Served) {
        self.metrics
            .apps_served
            .set(served.snapshot.apps().count() as i64);
        served.manifests = render_manifests(&served, &self.urls);
        self.rate_limits.update(&served.snapshot);
        self.served.store(Arc::new(served));
        self.set_health(SourceHealth::Current);
        self.published.notify_one();
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
    served: &Served,
    fallback: &StorageUrls,
) -> HashMap<String, HashMap<String, Box<serde_json::value::RawValue>>> {
    let mut rendered = HashMap::new();
    for app in served.snapshot.apps() {
        let urls: &dyn BundleUrls = served.urls(&app.app_id, fallback);
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

/// The longest wait between two refreshes of presigned URLs.
const MAX_PRESIGN_REFRESH: Duration = Duration::from_secs(300);

/// Keeps the presigned URLs of every served App signed ahead of need: after each publish and
/// every quarter of the shortest TTL, signs what the cache lacks and, when anything was signed,
/// renders the manifests again (their URLs are baked in). Until then devices get the server's
/// `/files` URLs, which redirect to a freshly signed URL, so nothing ever points at an expired one.
pub async fn keep_presigned_urls_fresh(state: Arc<ServerState>) {
    loop {
        let served = state.served();
        let mut signed = 0;
        let mut shortest_ttl: Option<Duration> = None;
        for app in served.snapshot.apps() {
            let Some(storage) = served.storage.get(&app.app_id) else {
                continue;
            };
            if storage.urls.mode() != UrlMode::Presigned {
                continue;
            }
            if let Some(ttl) = storage.urls.presigned_url_ttl() {
                shortest_ttl = Some(shortest_ttl.map_or(ttl, |shortest| shortest.min(ttl)));
            }
            match storage.urls.prepare_app(app).await {
                Ok(count) => signed += count,
                Err(error) => tracing::warn!(app_id = %app.app_id, %error, "cannot presign the bundle URLs"),
            }
        }
        if signed > 0 {
            tracing::debug!(signed, "presigned URLs refreshed");
            let mut refreshed = (*served).clone();
            refreshed.manifests = render_manifests(&refreshed, &state.urls);
            // Swap only if no newer snapshot was published meanwhile (it renders its own).
            let previous = state.served.compare_and_swap(&served, Arc::new(refreshed));
            if !Arc::ptr_eq(&previous, &served) {
                continue;
            }
        }
        let wait = shortest_ttl.map_or(MAX_PRESIGN_REFRESH, |ttl| (ttl / 4).min(MAX_PRESIGN_REFRESH));
        tokio::select! {
            () = state.published.notified() => {}
            () = state.clock.sleep(wait.max(Duration::from_secs(1))) => {}
        }
    }
}

/// The router of every endpoint. `/updates`, `/stats`, `/channel_self`, `/files` and `/metrics`
/// are under the per-client rate limit (the handlers add the per-App one); the probes are not.
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
        .route("/metrics", get(handlers::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            rate_limits::per_client,
        ))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        // Outermost, so that 404s and 405s are covered too.
        .layer(axum::middleware::from_fn(hygiene::close_unless_body_read))
        .with_state(state)
}

/// Errors of running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The device store could not be opened.
    #[error("cannot open the device store: {0}")]
    Store(#[from] crate::devices::StoreError),
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
    // The peer's address, for the per-client rate limit.
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
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
    /// The internal listener (rollout figures, metrics, health), when one was bound with
    /// [`Boot::bind_internal`].
    pub internal: Option<(tokio::net::TcpListener, SocketAddr)>,
}

impl Boot {
    /// Binds the internal listener (see [`internal`]) on `address` (port 0 picks a free one);
    /// [`serve_until`] serves it beside the devices' listener. Returns its real address.
    pub async fn bind_internal(&mut self, address: SocketAddr) -> Result<SocketAddr, ServerError> {
        let (listener, bound) = bind(address).await?;
        self.internal = Some((listener, bound));
        Ok(bound)
    }
}

/// Where Apps' storages are: filesystem paths are relative to `base_dir`; object stores use
/// `credentials`.
#[derive(Debug, Clone)]
pub struct StorageSetup {
    /// The folder filesystem storage paths are relative to.
    pub base_dir: PathBuf,
    /// Object storage credentials (the environment, never a CR).
    pub credentials: Credentials,
}

/// Opens the device store, loads what the hot path reads into memory, starts the write queue and
/// binds the listener. Devices are told `public_url`, or `http://<bound address>`.
pub async fn boot(
    database: &str,
    listen: SocketAddr,
    public_url: Option<&str>,
    storage: StorageSetup,
) -> Result<Boot, ServerError> {
    boot_with_clock(database, listen, public_url, storage, Arc::new(SystemClock)).await
}

/// [`boot`] on `clock` (standalone mode shares its own; tests move a [`crate::clock::TestClock`]).
pub async fn boot_with_clock(
    database: &str,
    listen: SocketAddr,
    public_url: Option<&str>,
    storage: StorageSetup,
    clock: Arc<dyn Clock>,
) -> Result<Boot, ServerError> {
    let store = devices::DeviceStore::open(database).await?;
    let memory = store.load_memory().await?;
    let (queue, flusher) = WriteQueue::start(
        store.clone(),
        memory.clone(),
        devices::SERVER_QUEUE_CAPACITY,
        devices::SERVER_MAX_BATCH,
        devices::SERVER_FLUSH_EVERY,
    );
    let (listener, address) = bind(listen).await?;
    let base = public_url.map_or_else(|| format!("http://{address}"), str::to_owned);
    let state = Arc::new(ServerState::new(&base, storage, store, memory, queue, clock));
    Ok(Boot {
        state,
        listener,
        address,
        flusher,
        internal: None,
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
        internal,
        ..
    } = boot;
    let presigner = tokio::spawn(keep_presigned_urls_fresh(Arc::clone(&state)));
    let pruner = tokio::spawn(retention::prune_outcomes_periodically(Arc::clone(&state)));
    let limits = tokio::spawn(rate_limits::retain_recent_periodically(Arc::clone(&state)));
    // Replicas on one PostgreSQL database: what the others write reaches memory within a
    // second (nothing on SQLite).
    let follower = tokio::spawn(devices::follow_changes(state.store.clone(), state.memory.clone()));
    let (stop_internal, internal_stopped) = tokio::sync::oneshot::channel::<()>();
    let internal = internal.map(|(listener, address)| {
        tracing::info!(%address, "internal listener (rollout figures, metrics, health) listening");
        let app = internal::router(Arc::clone(&state));
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = internal_stopped.await;
                })
                .await
        })
    });
    let result = serve(listener, Arc::clone(&state), shutdown).await;
    let _ = stop_internal.send(());
    if let Some(internal) = internal {
        match internal.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the internal listener failed"),
            Err(error) => tracing::warn!(%error, "the internal listener's task failed"),
        }
    }
    presigner.abort();
    pruner.abort();
    limits.abort();
    follower.abort();
    if let Err(error) = state.queue.flush().await {
        tracing::warn!(%error, "device-store writes could not all be flushed at shutdown");
    }
    flusher.abort();
    result
}
