//! `ota controller`: the shell around the pure core. It watches Apps (and the children it
//! renders for them), applies what the core decides with server-side apply, writes status only
//! when it changed, and serves /metrics, /livez and /readyz.
//!
//! With leader election on, every replica keeps warm caches, and only the holder of the Lease
//! writes: the others' reconciles return without touching the API.

pub mod app;
pub mod backoff;
pub mod bundle;
pub mod caches;
pub mod channel;
pub mod figures;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod rollout;
pub mod status;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};
use tokio::sync::watch;

use crate::{
    api::constants::field_manager, core::app_children::RenderSettings, rollout_driver::SharedMetricSource,
    sync::SyncLimits,
};

pub use crate::clock::{Clock, SystemClock};
pub use backoff::Backoff;
pub use bundle::BundleSync;
pub use caches::Stores;
pub use metrics::Metrics;

/// How the controller runs (set by `ota controller`'s flags).
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace; `None` watches every namespace.
    pub namespace: Option<String>,
    /// Hold a Lease before writing (for several replicas).
    pub leader_election: bool,
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace.
    pub lease_namespace: String,
    /// How long a Lease is held without renewal, in seconds.
    pub lease_duration_seconds: u64,
    /// This replica's identity in the Lease and in Events (the pod name in a cluster).
    pub identity: String,
    /// The update-server image for Apps that name none.
    pub default_server_image: String,
    /// Filesystem storage paths of Apps are resolved against this folder (the controller syncs
    /// Bundles into it, so it must be the volume the update servers read).
    pub storage_dir: PathBuf,
    /// The base URL of each App's update-server internal listener, with `{namespace}`,
    /// `{app}` and `{service}` placeholders ([`figures::default_url_template`] in a cluster).
    pub figures_url_template: String,
    /// The clock every decision reads ([`SystemClock`] for `ota controller`; there is no flag
    /// that sets the time, so only a test moves it, through a [`crate::clock::TestClock`]).
    pub clock: Arc<dyn Clock>,
    /// The providers of the Rollouts' analysis metrics (Prometheus, web).
    pub metrics: Arc<dyn SharedMetricSource>,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The leader Lease could not be set up.
    #[error("cannot set up leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The cause.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The health and metrics server failed.
    #[error("the metrics and health server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The leader election task ended (the process must not go on writing without it).
    #[error("leader election stopped: {0}")]
    LeaseLost(String),
    /// The HTTP client for bundle sources could not be built.
    #[error("cannot build the HTTP client for bundle sources: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The controller's metrics.
    pub metrics: Arc<Metrics>,
    /// The clock the core is given.
    pub clock: Arc<dyn Clock>,
    /// Settings the renderer needs.
    pub settings: RenderSettings,
    /// `true` while this replica may write.
    pub leader: watch::Receiver<bool>,
    /// Per-object retry delays.
    pub backoff: Backoff,
    /// The caches of the four custom kinds.
    pub stores: Stores,
    /// What the Bundle reconciler needs to sync.
    pub bundle_sync: BundleSync,
    /// The statuses this replica wrote last.
    pub written: status::WrittenStatuses,
    /// Reads rollout failure figures from the update servers.
    pub figures: figures::FiguresClient,
    /// When each App's update server was last asked for its monthly active devices.
    pub devices_asked: app::DevicesAsked,
    /// Sends Rollout webhook notifications.
    pub notifier: notify::Notifier,
    /// Measures the Rollouts' analysis metrics.
    pub metrics_source: Arc<dyn SharedMetricSource>,
}

/// How soon a reconcile that found the caches still filling looks again.
const CACHES_RECHECK: Duration = Duration::from_millis(250);

impl Context {
    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// When a reconcile must not decide now, the delay before it looks again: while this
    /// replica does not lead (it keeps its caches warm and writes nothing), and until every
    /// cache holds its first list (a Channel judged before the Bundle cache is filled would be
    /// reported Stalled for a Bundle that exists).
    pub fn not_now(&self) -> Option<Duration> {
        if !self.is_leader() {
            Some(FOLLOWER_RECHECK)
        } else if !self.stores.synced() {
            Some(CACHES_RECHECK)
        } else {
            None
        }
    }
}

/// How often the record of written statuses forgets deleted objects.
const WRITTEN_PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Forgets the written statuses of objects no cache holds any more.
fn prune_written(context: &Context) {
    let stores = &context.stores;
    let uids: std::collections::HashSet<String> = stores
        .apps
        .state()
        .iter()
        .filter_map(|o| o.metadata.uid.clone())
        .chain(
            stores
                .channels
                .state()
                .iter()
                .filter_map(|o| o.metadata.uid.clone()),
        )
        .chain(
            stores
                .bundles
                .state()
                .iter()
                .filter_map(|o| o.metadata.uid.clone()),
        )
        .chain(
            stores
                .rollouts
                .state()
                .iter()
                .filter_map(|o| o.metadata.uid.clone()),
        )
        .collect();
    context.written.retain(|_, uid| uids.contains(uid));
}

/// How often a follower looks at an object again, to take over quickly once it leads.
const FOLLOWER_RECHECK: Duration = Duration::from_secs(5);

/// Readiness shared with the health server.
#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    stores: Stores,
}

fn health_router(health: Health) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(health): State<Health>| async move {
                if health.stores.synced() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(health): State<Health>| async move {
                health.metrics.observe(&health.stores);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    health.metrics.render(),
                )
                    .into_response()
            }),
        )
        .with_state(health)
}

/// Binds the metrics and health address.
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, ControllerError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(ControllerError::Http)
}

/// Runs the controller until `shutdown` resolves: leader election (if on), the App controller,
/// and the health server on `listener`.
pub async fn run(
    options: Options,
    client: Client,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let metrics = Arc::new(Metrics::default());
    // Without leader election this replica always leads; the sender lives as long as `run`.
    let mut _always_leader = None;
    let (leader, lease_task) = if options.leader_election {
        let (receiver, task) = leader::elect(&client, &options).await?;
        (receiver, Some(task))
    } else {
        let (sender, receiver) = watch::channel(true);
        _always_leader = Some(sender);
        (receiver, None)
    };
    let reporter = Reporter {
        controller: field_manager::CONTROLLER.to_owned(),
        instance: Some(options.identity.clone()),
    };
    let http = reqwest::Client::builder()
        .user_agent(concat!("ota-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ControllerError::HttpClient)?;
    let (watches, stores) = caches::Watches::new(&client, options.namespace.as_deref());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        metrics: Arc::clone(&metrics),
        clock: Arc::clone(&options.clock),
        settings: RenderSettings {
            default_image: options.default_server_image.clone(),
        },
        leader: leader.clone(),
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(300)),
        stores: stores.clone(),
        bundle_sync: BundleSync::new(options.storage_dir.clone(), http.clone(), SyncLimits::default()),
        written: status::WrittenStatuses::default(),
        figures: figures::FiguresClient::new(http.clone(), options.figures_url_template.clone()),
        devices_asked: app::DevicesAsked::default(),
        notifier: notify::Notifier::start(http),
        metrics_source: Arc::clone(&options.metrics),
    });
    let health = Health {
        metrics: Arc::clone(&metrics),
        stores: stores.clone(),
    };
    let (stop_sender, stop_receiver) = watch::channel(false);
    let http = {
        let mut stop = stop_receiver.clone();
        let router = health_router(health.clone());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await
        })
    };
    let apps = app::run(
        Arc::clone(&context),
        options.namespace.clone(),
        watches.apps.subscribe(),
        stop_receiver.clone(),
    );
    let channels = channel::run(
        Arc::clone(&context),
        watches.channels.subscribe(),
        watches.apps.subscribe(),
        watches.bundles.subscribe(),
        watches.rollouts.subscribe(),
        stop_receiver.clone(),
    );
    let bundles = bundle::run(
        Arc::clone(&context),
        watches.bundles.subscribe(),
        watches.apps.subscribe(),
        watches.channels.subscribe(),
        watches.rollouts.subscribe(),
        stop_receiver.clone(),
    );
    let rollouts = rollout::run(
        Arc::clone(&context),
        watches.rollouts.subscribe(),
        watches.channels.subscribe(),
        watches.bundles.subscribe(),
        stop_receiver.clone(),
    );
    let pruning = {
        let context = Arc::clone(&context);
        async move {
            let mut every = tokio::time::interval(WRITTEN_PRUNE_INTERVAL);
            loop {
                every.tick().await;
                prune_written(&context);
            }
        }
    };
    let controllers = async move {
        tokio::join!(apps, channels, bundles, rollouts, pruning);
    };
    let mut leader_metric = leader.clone();
    let leader_gauge = metrics.leader.clone();
    let leader_watch = async move {
        loop {
            leader_gauge.set(i64::from(*leader_metric.borrow_and_update()));
            if leader_metric.changed().await.is_err() {
                return;
            }
        }
    };
    let lease_end = async move {
        match lease_task {
            Some(task) => match task.await {
                Ok(Ok(_)) => "the lease task ended".to_owned(),
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            },
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = shutdown => Ok(()),
        reason = lease_end => Err(ControllerError::LeaseLost(reason)),
        _ = leader_watch => Ok(()),
        _ = controllers => Ok(()),
        _ = watches.run() => Ok(()),
    };
    let _ = stop_sender.send(true);
    if let Ok(Err(error)) = http.await {
        return Err(ControllerError::Http(error));
    }
    outcome
}
