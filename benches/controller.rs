//! Benchmark of `ota controller` against the real test API server (issue 5's targets: with 100
//! Apps, 1,000 Channels and 10,000 pre-synced Bundles, controller start to every object
//! reconciled and idle ≤ 60 s; controller RSS ≤ 150 MiB; zero API writes over a 2-minute idle
//! window afterwards).
//!
//! `tests/bench/controller.sh` starts a test API server of its own (tests/apiserver/apiserver.sh),
//! builds `target/release/ota` and runs `cargo bench --bench controller`, which:
//!
//! 1. installs the CRDs and creates the world with concurrent requests: Namespaces, Apps
//!    (filesystem storage, one replica), Channels (each naming a Bundle of its App) and Bundles.
//!    Each Bundle gets what a controller that synced it earlier would have left: the storage
//!    finalizer, and a status written through the status subresource by the controller's status
//!    field manager, computed by the controller's own `bundle_status_after_sync`, and checked
//!    with `sync_decision` to need no storage I/O (`UpToDate`);
//! 2. starts watches on every kind the controller reads or writes and times how long listing the
//!    whole world takes (the baseline: the least any controller must do at start);
//! 3. runs the real `ota controller` binary as a child process, talking to the API server through
//!    a counting proxy in this process (so every request it makes is counted by verb), while
//!    this process plays the Deployment controller (no pods run here: it reports each update
//!    server's pods ready, as the tests do);
//! 4. measures from the process start until every App, Channel, Bundle and Rollout has
//!    `status.observedGeneration == metadata.generation` and Ready=True, the controller's
//!    `ota_controller_reconciles_total` of each kind covers its objects, and nothing has changed
//!    for a quiet period; a kind the controller never reconciles is reported as such (not
//!    waited on for ever); the controller's RSS (VmRSS, VmHWM) is sampled throughout;
//! 5. watches an idle window and counts every stored change (a new resourceVersion, creation or
//!    deletion) of every kind, every Event created or changed, and every write request the
//!    controller sent.
//!
//! It prints a report with PASS/MISS per target and exits non-zero only when something failed to
//! run. Without `--bench` (what `cargo test --benches` passes) it only builds a small world
//! offline and checks it against the API types and the Bundle lifecycle decision.
//!
//! Settings (environment): `OTA_BENCH_APPS` (100), `OTA_BENCH_CHANNELS` (1000),
//! `OTA_BENCH_BUNDLES` (10000), `OTA_BENCH_NAMESPACES` (10), `OTA_BENCH_IDLE_SECONDS` (120),
//! `OTA_BENCH_TIMEOUT_SECONDS` (300: the longest wait for everything to be reconciled),
//! `OTA_BENCH_QUIET_SECONDS` (5: how long nothing may change before the controller counts as
//! idle), `OTA_BENCH_CONCURRENCY` (16: requests in flight while creating the world),
//! `OTA_BENCH_FINALIZERS` (1: pre-write the Bundles' storage finalizer), `OTA_BENCH_PROXY` (1:
//! 0 connects the controller straight to the API server, and no requests are counted),
//! `OTA_BENCH_OTA` (the `ota` binary; default `ota` next to the bench's target folder),
//! `OTA_TEST_KUBECONFIG` or `KUBECONFIG` (the API server), `OTA_BENCH_HELPER_PIDS` (the API
//! server's and etcd's pids: their CPU is the benchmark's own, not another process's),
//! `OTA_BENCH_WORK_DIR` (target/bench/controller: logs and the proxy's kubeconfig),
//! `OTA_BENCH_IDLE_WAIT_SECONDS` (300: how long to wait, before starting the controller, for
//! other processes to leave the machine idle).

mod common;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    fmt::Debug,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use common::{cpu_of, env_number, machine_cpu, mib, verdict};
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, Event as CoreEvent, Namespace, Service, ServiceAccount},
        events::v1::Event as EventsEvent,
        networking::v1::Ingress,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Condition,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        wait::{await_condition, conditions},
        watcher,
    },
};
use ota_operator::{
    api::{
        self, App, Bundle, Channel, Rollout,
        constants::{API_VERSION, condition, field_manager, finalizer},
    },
    core::bundle_lifecycle::{SyncDecision, SyncFacts, SyncOutcome, bundle_status_after_sync, sync_decision},
    sync::{variant_manifest_key, zip_key},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

// Targets of the issue.
const TARGET_RECONCILED_SECONDS: f64 = 60.0;
const TARGET_RSS_MIB: f64 = 150.0;
const TARGET_IDLE_WRITES: u64 = 0;

/// The field manager this benchmark writes the world with.
const BENCH_MANAGER: &str = "ota-bench";
/// The field manager of the Deployment status this benchmark writes in the Deployment
/// controller's place.
const PODS_MANAGER: &str = "ota-bench-pods";
/// How long nothing may change before a kind nobody reconciles is reported as not handled.
const UNHANDLED_AFTER: Duration = Duration::from_secs(15);
const IMAGE: &str = "registry.test/ota:bench";
/// How often /metrics is scraped in the idle window (Prometheus's default interval).
const IDLE_SCRAPE_INTERVAL: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let result = if std::env::args().any(|a| a == "--bench") {
        run_driver()
    } else {
        smoke()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("controller bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and the world

struct Settings {
    namespaces: u64,
    apps: u64,
    channels: u64,
    bundles: u64,
    idle: Duration,
    timeout: Duration,
    quiet: Duration,
    concurrency: usize,
    finalizers: bool,
    proxy: bool,
    idle_wait: Duration,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let settings = Settings {
            namespaces: env_number("OTA_BENCH_NAMESPACES", 10)?,
            apps: env_number("OTA_BENCH_APPS", 100)?,
            channels: env_number("OTA_BENCH_CHANNELS", 1000)?,
            bundles: env_number("OTA_BENCH_BUNDLES", 10_000)?,
            idle: Duration::from_secs(env_number("OTA_BENCH_IDLE_SECONDS", 120)?),
            timeout: Duration::from_secs(env_number("OTA_BENCH_TIMEOUT_SECONDS", 300)?),
            quiet: Duration::from_secs(env_number("OTA_BENCH_QUIET_SECONDS", 5)?.max(1)),
            concurrency: usize::try_from(env_number("OTA_BENCH_CONCURRENCY", 16)?.max(1))?,
            finalizers: env_number("OTA_BENCH_FINALIZERS", 1)? != 0,
            proxy: env_number("OTA_BENCH_PROXY", 1)? != 0,
            idle_wait: Duration::from_secs(env_number("OTA_BENCH_IDLE_WAIT_SECONDS", 300)?),
        };
        settings.world()?;
        Ok(settings)
    }

    fn world(&self) -> anyhow::Result<World> {
        World::new(self.namespaces, self.apps, self.channels, self.bundles)
    }
}

/// Where every object goes: App `a` in namespace `a % namespaces`; Channel and Bundle `i` belong
/// to App `i % apps`, so any counts spread evenly.
struct World {
    namespaces: u64,
    apps: u64,
    channels: u64,
    bundles: u64,
}

impl World {
    fn new(namespaces: u64, apps: u64, channels: u64, bundles: u64) -> anyhow::Result<World> {
        if namespaces == 0 {
            bail!("OTA_BENCH_NAMESPACES must be at least 1");
        }
        if apps == 0 && (channels > 0 || bundles > 0) {
            bail!("Channels and Bundles need at least one App: set OTA_BENCH_APPS to 1 or more");
        }
        if channels > 0 && bundles < apps.min(channels) {
            bail!(
                "each App with a Channel needs a Bundle for it to serve: OTA_BENCH_BUNDLES={bundles} is fewer than the {} Apps that have Channels",
                apps.min(channels)
            );
        }
        if apps > 100_000 || channels > 1_000_000 || bundles > 1_000_000 {
            bail!(
                "the counts are beyond what this benchmark is meant for (apps ≤ 100,000, channels and bundles ≤ 1,000,000)"
            );
        }
        Ok(World {
            namespaces,
            apps,
            channels,
            bundles,
        })
    }

    fn namespace_name(index: u64) -> String {
        format!("ota-bench-{index:03}")
    }

    fn app_name(app: u64) -> String {
        format!("app-{app:05}")
    }

    /// The App's namespace and name.
    fn app(&self, app: u64) -> (String, String) {
        (Self::namespace_name(app % self.namespaces), Self::app_name(app))
    }

    fn namespaces(&self) -> Vec<serde_json::Value> {
        (0..self.namespaces)
            .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": Self::namespace_name(n)}}))
            .collect()
    }

    fn app_document(&self, app: u64) -> (String, serde_json::Value) {
        let (namespace, name) = self.app(app);
        let document = json!({
            "apiVersion": API_VERSION,
            "kind": "App",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "appId": format!("com.example.bench{app}"),
                "platforms": ["ios", "android"],
                "storage": {"filesystem": {"path": format!("bundles/{name}")}},
                "server": {"replicas": 1}
            }
        });
        (namespace, document)
    }

    /// The Bundle's App and its version: the `k`th Bundle of its App is version 1.0.k.
    fn bundle_parts(&self, bundle: u64) -> (u64, u64) {
        (bundle % self.apps, bundle / self.apps)
    }

    fn bundle_name(app: u64, ordinal: u64) -> String {
        format!("{}-1-0-{ordinal}", Self::app_name(app))
    }

    fn bundle_sha256(namespace: &str, name: &str) -> String {
        hex::encode(Sha256::digest(format!("{namespace}/{name}").as_bytes()))
    }

    fn bundle_document(&self, bundle: u64) -> (String, serde_json::Value) {
        let (app, ordinal) = self.bundle_parts(bundle);
        let (namespace, app_name) = self.app(app);
        let name = Self::bundle_name(app, ordinal);
        let document = json!({
            "apiVersion": API_VERSION,
            "kind": "Bundle",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "appRef": app_name,
                "version": format!("1.0.{ordinal}"),
                "source": {
                    "url": format!("https://ci.example.test/{namespace}/{app_name}/1.0.{ordinal}.zip"),
                    "sha256": Self::bundle_sha256(&namespace, &name)
                },
                "native": {"minVersion": "1.0.0"}
            }
        });
        (namespace, document)
    }

    /// The `k`th Channel of an App serves the App's Bundle number `k` (modulo its Bundles), so
    /// the Channels of one App serve different Bundles.
    fn channel_document(&self, channel: u64) -> (String, serde_json::Value) {
        let app = channel % self.apps;
        let ordinal = channel / self.apps;
        let (namespace, app_name) = self.app(app);
        let app_bundles = self.bundles / self.apps + u64::from(app < self.bundles % self.apps);
        let document = json!({
            "apiVersion": API_VERSION,
            "kind": "Channel",
            "metadata": {"name": format!("{app_name}-ch-{ordinal}"), "namespace": namespace},
            "spec": {
                "appRef": app_name,
                "bundleRef": Self::bundle_name(app, ordinal % app_bundles.max(1)),
                "public": ordinal == 0,
                "allowDeviceSelfSet": ordinal != 0
            }
        });
        (namespace, document)
    }
}

/// The status a controller that synced `bundle` earlier would have written: the controller's own
/// `bundle_status_after_sync` after a successful sync of the declared sha256.
fn presynced_status(bundle: &Bundle, now: Timestamp) -> api::BundleStatus {
    let sha256 = bundle.spec.source.sha256.clone();
    let facts = SyncFacts {
        zip_key: zip_key(&sha256),
        // The variants are done too: a Bundle whose variants are not needs storage I/O.
        manifest_key: Some(variant_manifest_key(&sha256)),
        compressed_variants: true,
        sha256,
        zip_size: 4_812_345,
        uncompressed_size: Some(11_234_567),
        file_count: Some(214),
    };
    let now_ms = now.as_millisecond();
    bundle_status_after_sync(bundle, &SyncOutcome::Synced(facts), None, now_ms).into_status(now)
}

/// Fails unless the controller's own decision says `bundle` needs no storage I/O.
fn check_up_to_date(bundle: &Bundle, now: Timestamp) -> anyhow::Result<()> {
    match sync_decision(bundle, None, now.as_millisecond()) {
        SyncDecision::UpToDate => Ok(()),
        other => bail!(
            "the pre-written status of Bundle {}/{} is not up to date for the controller: {other:?}",
            bundle.namespace().unwrap_or_default(),
            bundle.name_any()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Smoke test (`cargo test --benches`): the world offline

fn smoke() -> anyhow::Result<()> {
    let world = World::new(3, 7, 20, 50)?;
    let mut names = HashSet::new();
    for app in 0..world.apps {
        let (_, document) = world.app_document(app);
        let app: App = serde_json::from_value(document).context("an App document")?;
        names.insert(("App", app.name_any()));
    }
    let mut bundles = HashSet::new();
    let now = Timestamp::now();
    for index in 0..world.bundles {
        let (namespace, document) = world.bundle_document(index);
        let mut bundle: Bundle = serde_json::from_value(document).context("a Bundle document")?;
        bundles.insert((namespace, bundle.spec.app_ref.clone(), bundle.name_any()));
        bundle.metadata.generation = Some(1);
        bundle.metadata.uid = Some(format!("uid-{index}"));
        bundle.status = Some(presynced_status(&bundle, now));
        check_up_to_date(&bundle, now)?;
        // A status for another generation is not up to date: the check can fail.
        bundle.metadata.generation = Some(2);
        if check_up_to_date(&bundle, now).is_ok() {
            bail!("a status of generation 1 passed for generation 2");
        }
    }
    if bundles.len() as u64 != world.bundles {
        bail!(
            "Bundle names collide: {} distinct of {}",
            bundles.len(),
            world.bundles
        );
    }
    let mut channels = HashSet::new();
    for index in 0..world.channels {
        let (namespace, document) = world.channel_document(index);
        let channel: Channel = serde_json::from_value(document).context("a Channel document")?;
        let served = channel
            .spec
            .bundle_ref
            .clone()
            .context("a Channel without a bundleRef")?;
        if !bundles.contains(&(namespace.clone(), channel.spec.app_ref.clone(), served.clone())) {
            bail!(
                "Channel {namespace}/{} serves {served}, which is not a Bundle of its App",
                channel.name_any()
            );
        }
        channels.insert((namespace, channel.name_any()));
    }
    if channels.len() as u64 != world.channels || names.len() as u64 != world.apps {
        bail!("Channel or App names collide");
    }
    if World::new(1, 0, 1, 0).is_ok() || World::new(0, 1, 0, 0).is_ok() || World::new(1, 5, 5, 2).is_ok() {
        bail!("an impossible world was accepted");
    }
    eprintln!(
        "controller bench smoke test: a world of {} Apps, {} Channels and {} Bundles is consistent",
        world.apps, world.channels, world.bundles
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Creating the world

async fn bench_client() -> anyhow::Result<(Client, Config)> {
    ota_operator::telemetry::install_crypto_provider();
    let path = std::env::var("OTA_TEST_KUBECONFIG")
        .or_else(|_| std::env::var("KUBECONFIG"))
        .context("set OTA_TEST_KUBECONFIG (or KUBECONFIG) to the test API server's kubeconfig, as tests/bench/controller.sh does")?;
    let kubeconfig =
        Kubeconfig::read_from(&path).with_context(|| format!("cannot read the kubeconfig {path}"))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("the kubeconfig {path} is unusable"))?;
    let client = Client::try_from(config.clone()).context("a client for the API server")?;
    client
        .apiserver_version()
        .await
        .with_context(|| format!("the API server of {path} does not answer"))?;
    Ok((client, config))
}

async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(BENCH_MANAGER).force();
    for crd in api::crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("the API server refused the CRD {name}"))?;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("the CRD {name} did not become Established within 30 s"))?
        .with_context(|| format!("watching the CRD {name}"))?;
    }
    Ok(())
}

async fn create<K>(api: Api<K>, document: serde_json::Value) -> anyhow::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + serde::Serialize,
{
    let object: K =
        serde_json::from_value(document).with_context(|| format!("a {} document", K::kind(&())))?;
    let namespace = api.namespace().map(str::to_owned);
    let params = PostParams {
        field_manager: Some(BENCH_MANAGER.to_owned()),
        ..PostParams::default()
    };
    api.create(&params, &object).await.with_context(|| {
        format!(
            "creating {} {}/{}",
            K::kind(&()),
            namespace.as_deref().unwrap_or(""),
            object.name_any()
        )
    })
}

/// A Bundle as a controller that synced it earlier leaves it: the storage finalizer and a Synced
/// status for its generation, both written by the controller's status field manager.
async fn create_presynced_bundle(
    client: &Client,
    namespace: &str,
    document: serde_json::Value,
    finalizers: bool,
) -> anyhow::Result<()> {
    let created: Bundle = create(Api::namespaced(client.clone(), namespace), document).await?;
    let name = created.name_any();
    let api: Api<Bundle> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(field_manager::STATUS).force();
    if finalizers {
        let patch = json!({
            "apiVersion": API_VERSION, "kind": "Bundle",
            "metadata": {"name": name, "finalizers": [finalizer::BUNDLE_STORAGE]}
        });
        api.patch(&name, &params, &Patch::Apply(&patch))
            .await
            .with_context(|| format!("adding the finalizer of Bundle {namespace}/{name}"))?;
    }
    let now = Timestamp::now();
    let status = presynced_status(&created, now);
    let patch = json!({"apiVersion": API_VERSION, "kind": "Bundle", "status": status});
    let written = api
        .patch_status(&name, &params, &Patch::Apply(&patch))
        .await
        .with_context(|| format!("writing the status of Bundle {namespace}/{name}"))?;
    check_up_to_date(&written, now)
}

/// Runs `make(i)` for every `i` in `0..count`, `concurrency` at a time; the first error stops it.
async fn for_each_concurrent<F, Fut>(count: u64, concurrency: usize, make: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    stream::iter((0..count).map(make))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

async fn create_world(client: &Client, settings: &Settings) -> anyhow::Result<()> {
    let world = settings.world()?;
    let concurrency = settings.concurrency;
    for document in world.namespaces() {
        create::<Namespace>(Api::all(client.clone()), document).await?;
    }
    let started = Instant::now();
    for_each_concurrent(world.apps, concurrency, |app| {
        let (namespace, document) = world.app_document(app);
        async move {
            create::<App>(Api::namespaced(client.clone(), &namespace), document)
                .await
                .map(drop)
        }
    })
    .await?;
    let progress = |what: &str, count: u64| {
        eprintln!("  {count} {what} after {:.1} s", started.elapsed().as_secs_f64());
    };
    progress("Apps", world.apps);
    for_each_concurrent(world.bundles, concurrency, |bundle| {
        let (namespace, document) = world.bundle_document(bundle);
        async move { create_presynced_bundle(client, &namespace, document, settings.finalizers).await }
    })
    .await?;
    progress("pre-synced Bundles", world.bundles);
    for_each_concurrent(world.channels, concurrency, |channel| {
        let (namespace, document) = world.channel_document(channel);
        async move {
            create::<Channel>(Api::namespaced(client.clone(), &namespace), document)
                .await
                .map(drop)
        }
    })
    .await?;
    progress("Channels", world.channels);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tracking every object through watches

/// What the status of an ota.dev object says about its reconcile.
#[derive(Clone, Debug, Default)]
struct Progress {
    observed_generation: Option<i64>,
    ready: Option<String>,
    /// Stalled=True: its reason and message.
    stalled: Option<(String, String)>,
}

fn progress_of(conditions: &[Condition], observed_generation: Option<i64>) -> Progress {
    let find = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    Progress {
        observed_generation,
        ready: find(condition::READY).map(|c| c.status.clone()),
        stalled: find(condition::STALLED)
            .filter(|c| c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone())),
    }
}

fn app_progress(app: &App) -> Option<Progress> {
    app.status
        .as_ref()
        .map(|s| progress_of(&s.conditions, s.observed_generation))
}

fn channel_progress(channel: &Channel) -> Option<Progress> {
    channel
        .status
        .as_ref()
        .map(|s| progress_of(&s.conditions, s.observed_generation))
}

fn bundle_progress(bundle: &Bundle) -> Option<Progress> {
    bundle
        .status
        .as_ref()
        .map(|s| progress_of(&s.conditions, s.observed_generation))
}

fn rollout_progress(rollout: &Rollout) -> Option<Progress> {
    rollout
        .status
        .as_ref()
        .map(|s| progress_of(&s.conditions, s.observed_generation))
}

fn no_progress<K>(_: &K) -> Option<Progress> {
    None
}

#[derive(Clone, Debug)]
struct Tracked {
    name: String,
    resource_version: String,
    generation: Option<i64>,
    progress: Option<Progress>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ChangeKind {
    Created,
    Modified,
    Deleted,
}

#[derive(Clone, Debug)]
struct Change {
    at: Instant,
    kind: &'static str,
    change: ChangeKind,
    uid: String,
    /// The object's namespace/name.
    name: String,
    resource_version: String,
}

#[derive(Default)]
struct KindState {
    objects: HashMap<String, Tracked>,
    /// The first list is complete.
    listed: bool,
    errors: u64,
    last_error: Option<String>,
}

/// Every tracked object of every kind, and every change seen after the first list.
#[derive(Default)]
struct Tracker {
    kinds: BTreeMap<&'static str, KindState>,
    changes: Vec<Change>,
}

type Shared = Arc<Mutex<Tracker>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Tracker> {
    // A panicking watch task cannot leave the maps half-written in a way that matters here.
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Tracker {
    fn observe(&mut self, kind: &'static str, uid: String, tracked: Tracked) {
        let state = self.kinds.entry(kind).or_default();
        let change = match state.objects.get(&uid) {
            None => Some(ChangeKind::Created),
            Some(known) if known.resource_version != tracked.resource_version => Some(ChangeKind::Modified),
            Some(_) => None,
        };
        if let (Some(change), true) = (change, state.listed) {
            self.changes.push(Change {
                at: Instant::now(),
                kind,
                change,
                uid: uid.clone(),
                name: tracked.name.clone(),
                resource_version: tracked.resource_version.clone(),
            });
        }
        state.objects.insert(uid, tracked);
    }

    fn forget(&mut self, kind: &'static str, uid: &str) {
        let state = self.kinds.entry(kind).or_default();
        if let Some(gone) = state.objects.remove(uid) {
            self.changes.push(Change {
                at: Instant::now(),
                kind,
                change: ChangeKind::Deleted,
                uid: uid.to_owned(),
                name: gone.name,
                resource_version: gone.resource_version,
            });
        }
    }
}

/// Watches every object of kind `K` (all namespaces) into `shared`.
fn track<K>(
    client: &Client,
    shared: &Shared,
    progress: fn(&K) -> Option<Progress>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let kind: &'static str = Box::leak(K::kind(&()).into_owned().into_boxed_str());
    let kind: &'static str = if K::group(&()) == "events.k8s.io" {
        "Event (events.k8s.io)"
    } else {
        kind
    };
    lock(shared).kinds.entry(kind).or_default();
    let api: Api<K> = Api::all(client.clone());
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            let describe = |object: &K| {
                let uid = object.meta().uid.clone().unwrap_or_default();
                let tracked = Tracked {
                    name: format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any()),
                    resource_version: object.resource_version().unwrap_or_default(),
                    generation: object.meta().generation,
                    progress: progress(object),
                };
                (uid, tracked)
            };
            let mut tracker = lock(&shared);
            match event {
                Ok(watcher::Event::Init) => seen.clear(),
                Ok(watcher::Event::InitApply(object)) => {
                    let (uid, tracked) = describe(&object);
                    seen.insert(uid.clone());
                    tracker.observe(kind, uid, tracked);
                }
                Ok(watcher::Event::InitDone) => {
                    let gone: Vec<String> = tracker.kinds[kind]
                        .objects
                        .keys()
                        .filter(|uid| !seen.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in gone {
                        tracker.forget(kind, &uid);
                    }
                    if let Some(state) = tracker.kinds.get_mut(kind) {
                        state.listed = true;
                    }
                }
                Ok(watcher::Event::Apply(object)) => {
                    let (uid, tracked) = describe(&object);
                    tracker.observe(kind, uid, tracked);
                }
                Ok(watcher::Event::Delete(object)) => {
                    let uid = object.meta().uid.clone().unwrap_or_default();
                    tracker.forget(kind, &uid);
                }
                Err(error) => {
                    if let Some(state) = tracker.kinds.get_mut(kind) {
                        state.errors += 1;
                        state.last_error = Some(error.to_string());
                    }
                }
            }
        }
    })
}

/// The kinds whose objects must end reconciled, and every kind watched for changes.
const RECONCILED_KINDS: [&str; 4] = ["App", "Channel", "Bundle", "Rollout"];
const EVENT_KINDS: [&str; 2] = ["Event", "Event (events.k8s.io)"];

fn track_everything(client: &Client, shared: &Shared) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        track::<App>(client, shared, app_progress),
        track::<Channel>(client, shared, channel_progress),
        track::<Bundle>(client, shared, bundle_progress),
        track::<Rollout>(client, shared, rollout_progress),
        track::<Deployment>(client, shared, no_progress),
        track::<Service>(client, shared, no_progress),
        track::<ConfigMap>(client, shared, no_progress),
        track::<ServiceAccount>(client, shared, no_progress),
        track::<Role>(client, shared, no_progress),
        track::<RoleBinding>(client, shared, no_progress),
        track::<PodDisruptionBudget>(client, shared, no_progress),
        track::<HorizontalPodAutoscaler>(client, shared, no_progress),
        track::<Ingress>(client, shared, no_progress),
        track::<Namespace>(client, shared, no_progress),
        track::<CoreEvent>(client, shared, no_progress),
        track::<EventsEvent>(client, shared, no_progress),
    ]
}

/// One kind's reconcile state.
#[derive(Debug, Default)]
struct KindSummary {
    total: usize,
    /// Status written for the current generation.
    observed: usize,
    ready: usize,
    stalled: usize,
    /// An object that is not done yet, and why.
    example: Option<String>,
}

fn summarize(state: &KindState) -> KindSummary {
    let mut summary = KindSummary {
        total: state.objects.len(),
        ..KindSummary::default()
    };
    for object in state.objects.values() {
        let progress = object.progress.clone().unwrap_or_default();
        let observed = object.progress.is_some() && progress.observed_generation == object.generation;
        let ready = observed && progress.ready.as_deref() == Some("True");
        summary.observed += usize::from(observed);
        summary.ready += usize::from(ready);
        if let Some((reason, message)) = &progress.stalled {
            summary.stalled += 1;
            summary
                .example
                .get_or_insert_with(|| format!("{} is Stalled ({reason}): {message}", object.name));
        } else if !ready && summary.example.is_none() {
            summary.example = Some(match &object.progress {
                None => format!("{} has no status", object.name),
                Some(p) if !observed => format!(
                    "{} has observedGeneration {:?} for generation {:?}",
                    object.name, p.observed_generation, object.generation
                ),
                Some(p) => format!("{} is not Ready (Ready={:?})", object.name, p.ready),
            });
        }
    }
    summary
}

// ---------------------------------------------------------------------------------------------
// The Deployment controller's part: report each update server's pods ready

fn play_deployment_controller(
    client: &Client,
    bench_writes: Arc<Mutex<HashSet<(String, String)>>>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    let client = client.clone();
    tokio::spawn(async move {
        let api: Api<Deployment> = Api::all(client.clone());
        let mut events = std::pin::pin!(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
        );
        let mut written = 0u64;
        loop {
            let deployment = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return Ok(written),
                next = events.next() => match next {
                    Some(Ok(deployment)) => deployment,
                    Some(Err(error)) => {
                        eprintln!("  (the Deployment watch failed once: {error}; it restarts)");
                        continue;
                    }
                    None => return Ok(written),
                },
            };
            let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let status = deployment.status.clone().unwrap_or_default();
            if status.observed_generation == deployment.metadata.generation
                && status.ready_replicas == Some(wanted)
            {
                continue;
            }
            let namespace = deployment.namespace().unwrap_or_default();
            let name = deployment.name_any();
            let patch = json!({"status": {
                "observedGeneration": deployment.metadata.generation,
                "replicas": wanted, "readyReplicas": wanted, "availableReplicas": wanted,
                "updatedReplicas": wanted
            }});
            let params = PatchParams {
                field_manager: Some(PODS_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            let updated = api
                .patch_status(&name, &params, &Patch::Merge(&patch))
                .await
                .with_context(|| format!("reporting the pods of Deployment {namespace}/{name} ready"))?;
            written += 1;
            if let (Some(uid), Some(version)) = (updated.uid(), updated.resource_version()) {
                bench_writes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((uid, version));
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The counting proxy between the controller and the API server

#[derive(Clone, Debug)]
struct RequestRecord {
    at: Instant,
    verb: &'static str,
    resource: String,
    status: u16,
}

impl RequestRecord {
    fn is_write(&self) -> bool {
        matches!(self.verb, "create" | "update" | "patch" | "delete")
    }
}

/// `resource` or `resource/subresource` of an API path.
fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let (resource, sub) = match rest {
        ["namespaces", _, resource, _, sub, ..] => (*resource, Some(*sub)),
        ["namespaces", _, resource, ..] => (*resource, None),
        [resource, _, sub, ..] => (*resource, Some(*sub)),
        [resource, ..] => (*resource, None),
        [] => (path, None),
    };
    match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    }
}

fn verb_of(method: &hyper::Method, query: &str) -> &'static str {
    let watching = query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1");
    match *method {
        hyper::Method::GET if watching => "watch",
        hyper::Method::GET => "get/list",
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE => "delete",
        _ => "other",
    }
}

type ProxyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn text_response(status: u16, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    response
}

async fn forward(
    upstream: Client,
    records: Arc<Mutex<Vec<RequestRecord>>>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let verb = verb_of(&parts.method, &query);
    let record = |status: u16| {
        records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RequestRecord {
                at: Instant::now(),
                verb,
                resource: resource_of(&path),
                status,
            });
    };
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            record(400);
            return Ok(text_response(
                400,
                format!("the proxy could not read the request body: {error}"),
            ));
        }
    };
    let mut builder = Request::builder().method(parts.method).uri(
        parts
            .uri
            .path_and_query()
            .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned()),
    );
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            builder = builder.header(name, value);
        }
    }
    let upstream_request = match builder.body(kube::client::Body::from(body)) {
        Ok(request) => request,
        Err(error) => {
            record(400);
            return Ok(text_response(
                400,
                format!("the proxy could not rebuild the request: {error}"),
            ));
        }
    };
    match upstream.send(upstream_request).await {
        Ok(response) => {
            record(response.status().as_u16());
            let (mut parts, body) = response.into_parts();
            for hop in ["connection", "content-length", "transfer-encoding", "keep-alive"] {
                parts.headers.remove(hop);
            }
            Ok(Response::from_parts(
                parts,
                body.map_err(Into::into).boxed_unsync(),
            ))
        }
        Err(error) => {
            record(502);
            Ok(text_response(
                502,
                format!("the proxy could not reach the API server: {error}"),
            ))
        }
    }
}

/// Serves the proxy on a free port of 127.0.0.1 until the runtime ends.
async fn start_proxy(
    upstream_config: Config,
    records: Arc<Mutex<Vec<RequestRecord>>>,
) -> anyhow::Result<SocketAddr> {
    let upstream = Client::try_from(upstream_config).context("the proxy's client for the API server")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("the proxy cannot listen")?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            let records = Arc::clone(&records);
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| forward(upstream.clone(), Arc::clone(&records), request));
                // A connection the controller drops mid-watch ends here; nothing to report.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

fn write_proxy_kubeconfig(path: &Path, address: SocketAddr) -> anyhow::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bench-proxy\n  cluster:\n    server: http://{address}\nusers:\n- name: bench\n  user: {{}}\ncontexts:\n- name: bench\n  context: {{cluster: bench-proxy, user: bench, namespace: default}}\ncurrent-context: bench\n"
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The controller process, its metrics and its memory

/// The controller's counters from /metrics: series (name with labels) to value.
type Counters = BTreeMap<String, f64>;

fn parse_metrics(text: &str) -> Counters {
    text.lines()
        .filter(|line| line.starts_with("ota_controller_") && !line.contains("_created"))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of counter `name` (without `_total`) for `kind`, summed over its other labels.
fn counter(counters: &Counters, name: &str, kind: &str) -> f64 {
    let prefix = format!("ota_controller_{name}_total{{");
    let label = format!("kind=\"{kind}\"");
    counters
        .iter()
        .filter(|(series, _)| series.starts_with(&prefix) && series.contains(&label))
        // A fold from +0.0: the sum of no f64s is -0.0, which prints as "-0".
        .fold(0.0, |total, (_, value)| total + value)
}

/// Sums of every `ota_controller_{name}_total` series by label set, minus `before`.
fn counter_deltas(after: &Counters, before: &Counters, name: &str) -> Vec<(String, f64)> {
    let prefix = format!("ota_controller_{name}_total");
    after
        .iter()
        .filter(|(series, _)| series.starts_with(&prefix))
        .map(|(series, value)| {
            let labels = series.strip_prefix(&prefix).unwrap_or(series).to_owned();
            (labels, value - before.get(series).copied().unwrap_or(0.0))
        })
        .filter(|(_, delta)| *delta != 0.0)
        .collect()
}

#[derive(Default)]
struct ControllerWatch {
    /// How often /metrics is scraped: every second until everything is reconciled, then as
    /// often as Prometheus would (each scrape makes the controller count its caches' objects
    /// by state, which costs CPU in proportion to the objects).
    scrape_every: Duration,
    scrapes: u64,
    counters: Counters,
    /// When any reconcile counter last moved.
    last_reconcile_at: Option<Instant>,
    ready_at: Option<Instant>,
    scrape_errors: u64,
    rss_kib: u64,
    peak_rss_kib: u64,
    hwm_kib: u64,
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Scrapes /metrics and /readyz and samples the process's memory every 100 ms.
fn observe_controller(
    pid: u32,
    metrics: SocketAddr,
    shared: Arc<Mutex<ControllerWatch>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_scrape: Option<Instant> = None;
        loop {
            tick.tick().await;
            let rss = status_kib(pid, "VmRSS:");
            let hwm = status_kib(pid, "VmHWM:");
            let (scrape_every, ready_known) = {
                let watch = shared.lock().unwrap_or_else(|p| p.into_inner());
                (watch.scrape_every, watch.ready_at.is_some())
            };
            let due = last_scrape.is_none_or(|at| at.elapsed() >= scrape_every);
            let scrape = if due {
                last_scrape = Some(Instant::now());
                Some(
                    http.get(format!("http://{metrics}/metrics"))
                        .send()
                        .await
                        .and_then(|r| r.error_for_status()),
                )
            } else {
                None
            };
            let text = match scrape {
                Some(Ok(response)) => Some(response.text().await),
                Some(Err(error)) => Some(Err(error)),
                None => None,
            };
            let ready = if !ready_known {
                http.get(format!("http://{metrics}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            } else {
                false
            };
            let mut watch = shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(rss) = rss {
                watch.rss_kib = rss;
                watch.peak_rss_kib = watch.peak_rss_kib.max(rss);
            }
            if let Some(hwm) = hwm {
                watch.hwm_kib = watch.hwm_kib.max(hwm);
            }
            if ready && watch.ready_at.is_none() {
                watch.ready_at = Some(Instant::now());
            }
            match text {
                Some(Ok(text)) => {
                    watch.scrapes += 1;
                    let counters = parse_metrics(&text);
                    let reconciles = |c: &Counters| {
                        c.iter()
                            .filter(|(s, _)| s.starts_with("ota_controller_reconciles_total"))
                            .map(|(_, v)| *v)
                            .sum::<f64>()
                    };
                    if reconciles(&counters) != reconciles(&watch.counters) {
                        watch.last_reconcile_at = Some(Instant::now());
                    }
                    watch.counters = counters;
                }
                Some(Err(_)) => watch.scrape_errors += 1,
                None => {}
            }
        }
    })
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

fn ota_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("OTA_BENCH_OTA") {
        Some(path) => PathBuf::from(path),
        None => {
            // The bench runs from target/<profile>/deps/; `ota` is in target/<profile>/.
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(Path::parent)
                .map(|dir| dir.join("ota"))
                .context("cannot find the target folder")?
        }
    };
    if !path.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release --bin ota` (tests/bench/controller.sh does) or set OTA_BENCH_OTA",
            path.display()
        );
    }
    Ok(path)
}

fn stop_child(child: &mut Child) {
    let pid = child.id().to_string();
    // SIGTERM first: the controller stops gracefully on it.
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn work_dir() -> anyhow::Result<PathBuf> {
    let work = std::env::var_os("OTA_BENCH_WORK_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/controller"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    Ok(work)
}

// ---------------------------------------------------------------------------------------------
// The driver

/// CPU seconds of the benchmark's own processes: this one, its children, the API server and etcd.
fn own_cpu(helpers: &[u32], controller: u32) -> f64 {
    let (mine, children) = cpu_of(std::process::id());
    mine + children + cpu_of(controller).0 + helpers.iter().map(|pid| cpu_of(*pid).0).sum::<f64>()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Waits (at most `limit`) until processes other than the benchmark's own take under 10% of the
/// machine, measured over 2 s; returns the last share measured.
async fn wait_for_idle(helpers: &[u32], limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let (machine0, own0) = (machine_cpu(), own_cpu(helpers, 0));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (machine1, own1) = (machine_cpu(), own_cpu(helpers, 0));
        let foreign =
            ((machine1.0 - machine0.0) - (own1 - own0)).max(0.0) / (machine1.1 - machine0.1).max(1e-9);
        if foreign < 0.10 || Instant::now() >= deadline {
            return foreign;
        }
        eprintln!(
            "other processes take {:.0}% of the machine; waiting for it to calm down (up to {} s more)...",
            foreign * 100.0,
            deadline.saturating_duration_since(Instant::now()).as_secs()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// How the wait for "everything reconciled" ended.
enum WaitEnd {
    /// Everything reconciled, then nothing changed for the quiet period.
    Done {
        reconciled: f64,
        idle: f64,
    },
    /// The handled kinds are done and the controller went quiet; these kinds were never
    /// reconciled.
    Unhandled {
        kinds: Vec<&'static str>,
        idle: f64,
    },
    TimedOut,
}

struct Counts {
    expected: BTreeMap<&'static str, u64>,
}

fn run_driver() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let helpers: Vec<u32> = std::env::var("OTA_BENCH_HELPER_PIDS")
        .unwrap_or_default()
        .split_whitespace()
        .map(|pid| {
            pid.parse()
                .with_context(|| format!("OTA_BENCH_HELPER_PIDS: {pid:?} is not a pid"))
        })
        .collect::<anyhow::Result<_>>()?;
    let ota = ota_binary()?;
    let work = work_dir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(drive(settings, helpers, ota, work))
}

async fn drive(settings: Settings, helpers: Vec<u32>, ota: PathBuf, work: PathBuf) -> anyhow::Result<()> {
    let (client, config) = bench_client().await?;
    let counts = Counts {
        expected: BTreeMap::from([
            ("App", settings.apps),
            ("Channel", settings.channels),
            ("Bundle", settings.bundles),
            ("Rollout", 0),
        ]),
    };

    eprintln!("installing the CRDs...");
    install_crds(&client).await?;
    let existing: Api<App> = Api::all(client.clone());
    if !existing.list(&Default::default()).await?.items.is_empty() {
        bail!(
            "the API server already holds Apps: give the benchmark a fresh one (tests/bench/controller.sh starts its own)"
        );
    }
    eprintln!(
        "creating {} namespaces, {} Apps, {} pre-synced Bundles and {} Channels ({} requests in flight)...",
        settings.namespaces, settings.apps, settings.bundles, settings.channels, settings.concurrency
    );
    let creation_started = Instant::now();
    create_world(&client, &settings).await?;
    let creation_seconds = creation_started.elapsed().as_secs_f64();
    let requests_per_bundle = if settings.finalizers { 3 } else { 2 };
    let creation_requests =
        settings.namespaces + settings.apps + settings.channels + settings.bundles * requests_per_bundle;

    // The baseline: this process lists (and then watches) the whole world.
    eprintln!("listing the world (the baseline)...");
    let shared: Shared = Arc::default();
    let list_started = Instant::now();
    let watches = track_everything(&client, &shared);
    loop {
        {
            let tracker = lock(&shared);
            if tracker.kinds.values().all(|k| k.listed) {
                break;
            }
        }
        if list_started.elapsed() > Duration::from_secs(120) {
            bail!("the bench's own watches did not list every kind within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let baseline_seconds = list_started.elapsed().as_secs_f64();
    {
        let tracker = lock(&shared);
        for (kind, expected) in &counts.expected {
            let listed = tracker.kinds.get(kind).map_or(0, |k| k.objects.len()) as u64;
            if listed != *expected {
                bail!("the API server lists {listed} {kind}s, not the {expected} created");
            }
        }
    }

    // The controller, through the counting proxy.
    let records: Arc<Mutex<Vec<RequestRecord>>> = Arc::default();
    let controller_kubeconfig = if settings.proxy {
        let address = start_proxy(config.clone(), Arc::clone(&records)).await?;
        let path = work.join("proxy-kubeconfig");
        write_proxy_kubeconfig(&path, address)?;
        path
    } else {
        PathBuf::from(
            std::env::var("OTA_TEST_KUBECONFIG")
                .or_else(|_| std::env::var("KUBECONFIG"))
                .context("no kubeconfig")?,
        )
    };
    let bench_writes: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let (stop_pods, pods_stopped) = watch::channel(false);
    let pods = play_deployment_controller(&client, Arc::clone(&bench_writes), pods_stopped);

    let metrics_port = free_port()?;
    let metrics_address: SocketAddr = format!("127.0.0.1:{metrics_port}").parse()?;
    let log_path = work.join("controller.log");
    let log =
        std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let busy_before = wait_for_idle(&helpers, settings.idle_wait).await;
    let changes_before_start = lock(&shared).changes.len();
    eprintln!("starting {} controller...", ota.display());
    let cpu_at_start = (machine_cpu(), own_cpu(&helpers, 0));
    let started = Instant::now();
    let mut child = Command::new(&ota)
        .args([
            "controller",
            "--server-image",
            IMAGE,
            "--metrics-listen",
            &metrics_address.to_string(),
            "--identity",
            "ota-bench",
        ])
        .env("KUBECONFIG", &controller_kubeconfig)
        .env_remove("OTA_NAMESPACE")
        .env_remove("OTA_LEADER_ELECTION")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", ota.display()))?;
    let pid = child.id();
    let observed = Arc::new(Mutex::new(ControllerWatch {
        scrape_every: Duration::from_secs(1),
        ..ControllerWatch::default()
    }));
    let observer = observe_controller(pid, metrics_address, Arc::clone(&observed));

    let outcome = wait_until_reconciled(
        &settings, &counts, &shared, &observed, &mut child, started, &log_path,
    )
    .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            stop_child(&mut child);
            return Err(error);
        }
    };
    let start_phase_end = Instant::now();
    let cpu_at_reconciled = (machine_cpu(), own_cpu(&helpers, pid));
    let controller_cpu_start = cpu_of(pid).0;
    let rss_at_reconciled = observed.lock().unwrap_or_else(|p| p.into_inner()).rss_kib;
    let _ = stop_pods.send(true);
    let pod_writes = pods.await.context("the Deployment-controller task")??;

    // The idle window.
    let (idle_counters_before, scrapes_before_idle) = {
        let mut watch = observed.lock().unwrap_or_else(|p| p.into_inner());
        watch.scrape_every = IDLE_SCRAPE_INTERVAL;
        (watch.counters.clone(), watch.scrapes)
    };
    let idle_started = Instant::now();
    let controller_cpu_idle0 = cpu_of(pid).0;
    eprintln!("idle window: {} s...", settings.idle.as_secs());
    let mut next_note = idle_started + Duration::from_secs(30);
    while idle_started.elapsed() < settings.idle {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the controller exited during the idle window ({status}); the end of its log ({}):\n{}",
                log_path.display(),
                log_tail(&log_path, 30)
            );
        }
        if Instant::now() >= next_note {
            next_note += Duration::from_secs(30);
            let changes = lock(&shared)
                .changes
                .iter()
                .filter(|c| c.at >= idle_started)
                .count();
            eprintln!(
                "  {:.0} s: {changes} stored changes so far",
                idle_started.elapsed().as_secs_f64()
            );
        }
    }
    let idle_ended = Instant::now();
    let controller_cpu_idle = cpu_of(pid).0 - controller_cpu_idle0;
    let cpu_at_end = (machine_cpu(), own_cpu(&helpers, pid));
    let (idle_counters_after, idle_scrapes, rss_end, peak_rss, hwm, scrape_errors, ready_at) = {
        let watch = observed.lock().unwrap_or_else(|p| p.into_inner());
        let hwm = status_kib(pid, "VmHWM:").unwrap_or(0).max(watch.hwm_kib);
        (
            watch.counters.clone(),
            watch.scrapes - scrapes_before_idle,
            watch.rss_kib,
            watch.peak_rss_kib,
            hwm,
            watch.scrape_errors,
            watch.ready_at,
        )
    };
    let controller_cpu_total = cpu_of(pid).0;
    observer.abort();
    stop_child(&mut child);
    for task in watches {
        task.abort();
    }
    let tracker = lock(&shared);
    let figures = Figures {
        bench_writes: bench_writes.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        records: records.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        changes_before_start,
        start_phase_end,
        idle_started,
        idle_ended,
        creation_seconds,
        creation_requests,
        busy_before,
        baseline_seconds,
        ota,
        metrics_address,
        log_path,
        ready_at,
        started,
        pod_writes,
        idle_counters_before,
        idle_counters_after,
        idle_scrapes,
        cpu_at_start,
        cpu_at_reconciled,
        cpu_at_end,
        controller_cpu_start,
        controller_cpu_idle,
        controller_cpu_total,
        outcome,
        rss_at_reconciled,
        rss_end,
        peak_rss,
        hwm,
        scrape_errors,
    };
    print_report(&settings, &counts, &tracker, figures);
    Ok(())
}

/// Everything the report needs, measured by [`drive`].
struct Figures {
    /// Deployment status writes of this process (uid, resourceVersion).
    bench_writes: HashSet<(String, String)>,
    /// Every request the controller sent through the proxy.
    records: Vec<RequestRecord>,
    /// Changes seen before the controller started (this process's own setup).
    changes_before_start: usize,
    start_phase_end: Instant,
    idle_started: Instant,
    idle_ended: Instant,
    creation_seconds: f64,
    creation_requests: u64,
    /// The share of the machine other processes took just before the controller started.
    busy_before: f64,
    baseline_seconds: f64,
    ota: PathBuf,
    metrics_address: SocketAddr,
    log_path: PathBuf,
    ready_at: Option<Instant>,
    /// When the controller process was started.
    started: Instant,
    pod_writes: u64,
    idle_counters_before: Counters,
    idle_counters_after: Counters,
    /// /metrics scrapes in the idle window.
    idle_scrapes: u64,
    /// (machine busy, machine total) and the benchmark's own CPU seconds at three moments.
    cpu_at_start: ((f64, f64), f64),
    cpu_at_reconciled: ((f64, f64), f64),
    cpu_at_end: ((f64, f64), f64),
    controller_cpu_start: f64,
    controller_cpu_idle: f64,
    controller_cpu_total: f64,
    outcome: WaitEnd,
    rss_at_reconciled: u64,
    rss_end: u64,
    peak_rss: u64,
    hwm: u64,
    scrape_errors: u64,
}

fn print_report(settings: &Settings, counts: &Counts, tracker: &Tracker, figures: Figures) {
    let Figures {
        bench_writes,
        records,
        changes_before_start,
        start_phase_end,
        idle_started,
        idle_ended,
        creation_seconds,
        creation_requests,
        busy_before,
        baseline_seconds,
        ota,
        metrics_address,
        log_path,
        ready_at,
        started,
        pod_writes,
        idle_counters_before,
        idle_counters_after,
        idle_scrapes,
        cpu_at_start,
        cpu_at_reconciled,
        cpu_at_end,
        controller_cpu_start,
        controller_cpu_idle,
        controller_cpu_total,
        outcome,
        rss_at_reconciled,
        rss_end,
        peak_rss,
        hwm,
        scrape_errors,
    } = figures;
    let idle_seconds = (idle_ended - idle_started).as_secs_f64();
    let by_controller =
        |change: &&Change| !bench_writes.contains(&(change.uid.clone(), change.resource_version.clone()));
    let start_changes: Vec<&Change> = tracker.changes[changes_before_start..]
        .iter()
        .filter(|c| c.at < start_phase_end)
        .filter(by_controller)
        .collect();
    let idle_changes: Vec<&Change> = tracker
        .changes
        .iter()
        .filter(|c| c.at >= idle_started && c.at < idle_ended)
        .collect();
    let start_requests: Vec<&RequestRecord> = records.iter().filter(|r| r.at < start_phase_end).collect();
    let idle_requests: Vec<&RequestRecord> = records
        .iter()
        .filter(|r| r.at >= idle_started && r.at < idle_ended)
        .collect();

    println!("controller benchmark (benches/controller.rs)");
    println!("machine: {}", common::machine());
    println!(
        "load average (1, 5, 15 min) at the end: {}; other processes took {:.0}% of the machine just before the controller started",
        load_average(),
        busy_before * 100.0
    );
    println!(
        "world: {} namespaces, {} Apps (filesystem storage, 1 replica), {} Channels, {} Bundles pre-synced (status written by {}{}); created in {creation_seconds:.1} s ({creation_requests} requests, {:.0}/s)",
        settings.namespaces,
        settings.apps,
        settings.channels,
        settings.bundles,
        field_manager::STATUS,
        if settings.finalizers {
            ", with the storage finalizer"
        } else {
            ""
        },
        creation_requests as f64 / creation_seconds.max(1e-9)
    );
    println!("baseline: this process lists every watched kind of the world once: {baseline_seconds:.2} s");
    println!(
        "controller: {} (through {}), metrics on {metrics_address}; log in {}",
        ota.display(),
        if settings.proxy {
            "a counting proxy in this process"
        } else {
            "a direct connection: requests not counted"
        },
        log_path.display()
    );
    if let Some(ready_at) = ready_at {
        println!(
            "  /readyz answered 200 (caches synced) {:.2} s after the process started",
            (ready_at - started).as_secs_f64()
        );
    } else {
        println!("  /readyz never answered 200");
    }
    println!(
        "  this process reported the pods of {pod_writes} Deployments ready (in the Deployment controller's place)"
    );

    println!("start: every object reconciled");
    for kind in RECONCILED_KINDS {
        let expected = counts.expected[kind];
        let summary = tracker.kinds.get(kind).map(summarize).unwrap_or_default();
        let reconciles = counter(&idle_counters_before, "reconciles", kind);
        let writes = counter(&idle_counters_before, "status_writes", kind);
        let failures = counter(&idle_counters_before, "reconcile_failures", kind);
        println!(
            "  {kind:<8} {:>6} objects: {:>6} with status for their generation, {:>6} Ready, {:>4} Stalled; controller: {reconciles:.0} reconciles, {writes:.0} status writes, {failures:.0} failures",
            expected, summary.observed, summary.ready, summary.stalled
        );
        if let Some(example) = summary.example.filter(|_| summary.ready < summary.total) {
            println!("           e.g. {example}");
        }
    }
    let mut start_by_kind: BTreeMap<(&str, ChangeKind), u64> = BTreeMap::new();
    for change in &start_changes {
        *start_by_kind.entry((change.kind, change.change)).or_default() += 1;
    }
    println!(
        "  stored changes by the controller until then: {}",
        describe_changes(&start_by_kind)
    );
    if settings.proxy {
        println!("  requests until then: {}", describe_requests(&start_requests));
    }
    let machine_delta = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0, b.1 - a.1);
    let (busy, total) = machine_delta(cpu_at_start.0, cpu_at_reconciled.0);
    let foreign_start = ((busy - (cpu_at_reconciled.1 - cpu_at_start.1)) / total.max(1e-9)).max(0.0);
    println!(
        "  controller CPU: {controller_cpu_start:.2} CPU-s until reconciled; other processes took {:.1}% of the machine meanwhile{}",
        foreign_start * 100.0,
        if foreign_start > 0.10 {
            " (DISTURBED: the time is not reliable)"
        } else {
            ""
        }
    );

    let reconciled_time = match &outcome {
        WaitEnd::Done { reconciled, idle } => {
            println!(
                "  every object reconciled {reconciled:.2} s after the process started; idle (nothing changed for {} s) from {idle:.2} s",
                settings.quiet.as_secs()
            );
            Some(*idle)
        }
        WaitEnd::Unhandled { kinds, idle } => {
            println!(
                "  NOT ALL KINDS HANDLED: the controller reconciled none of the {} (no status for their generation from it, no reconciles in its metrics) and went quiet; the handled kinds were done and idle at {idle:.2} s",
                kinds.join(", ")
            );
            None
        }
        WaitEnd::TimedOut => {
            println!(
                "  TIMED OUT after {} s: not every object was reconciled (see above)",
                settings.timeout.as_secs()
            );
            None
        }
    };

    println!("idle window: {idle_seconds:.0} s");
    let mut idle_by_kind: BTreeMap<(&str, ChangeKind), u64> = BTreeMap::new();
    for change in &idle_changes {
        *idle_by_kind.entry((change.kind, change.change)).or_default() += 1;
    }
    let idle_events = idle_changes
        .iter()
        .filter(|c| EVENT_KINDS.contains(&c.kind))
        .count() as u64;
    let idle_stored = idle_changes.len() as u64 - idle_events;
    println!(
        "  stored changes (new resourceVersions, creations, deletions) of every watched kind: {idle_stored}"
    );
    println!("  Events created or changed: {idle_events}");
    if !idle_changes.is_empty() {
        println!("    {}", describe_changes(&idle_by_kind));
        for change in idle_changes.iter().take(10) {
            println!(
                "    +{:.1} s {:?} {} {}",
                (change.at - idle_started).as_secs_f64(),
                change.change,
                change.kind,
                change.name
            );
        }
    }
    let idle_write_requests = idle_requests.iter().filter(|r| r.is_write()).count() as u64;
    if settings.proxy {
        println!(
            "  requests by the controller: {} (writes: {idle_write_requests})",
            describe_requests(&idle_requests)
        );
    }
    let reconcile_deltas = counter_deltas(&idle_counters_after, &idle_counters_before, "reconciles");
    let write_deltas = counter_deltas(&idle_counters_after, &idle_counters_before, "status_writes");
    println!(
        "  controller metrics: reconciles {}, status writes {}",
        describe_deltas(&reconcile_deltas),
        describe_deltas(&write_deltas)
    );
    println!(
        "  controller CPU in the window: {controller_cpu_idle:.2} CPU-s ({:.2}% of one CPU, with {idle_scrapes} /metrics scrapes, one every {} s); in all {controller_cpu_total:.2} CPU-s",
        controller_cpu_idle / idle_seconds.max(1e-9) * 100.0,
        IDLE_SCRAPE_INTERVAL.as_secs()
    );
    let (busy, total) = machine_delta(cpu_at_reconciled.0, cpu_at_end.0);
    let foreign_idle = ((busy - (cpu_at_end.1 - cpu_at_reconciled.1)) / total.max(1e-9)).max(0.0);
    println!(
        "  other processes took {:.1}% of the machine in the window",
        foreign_idle * 100.0
    );
    println!(
        "memory: controller RSS {:.1} MiB when reconciled, {:.1} MiB at the end, highest sample {:.1} MiB, peak (VmHWM) {:.1} MiB{}",
        mib(rss_at_reconciled),
        mib(rss_end),
        mib(peak_rss),
        mib(hwm),
        if scrape_errors > 0 {
            format!("; {scrape_errors} metric scrapes failed")
        } else {
            String::new()
        }
    );
    for kind in tracker.kinds.keys() {
        let state = &tracker.kinds[kind];
        if state.errors > 0 {
            println!(
                "note: the bench's watch of {kind} failed {} times (last: {})",
                state.errors,
                state.last_error.as_deref().unwrap_or("?")
            );
        }
    }

    let idle_writes = idle_stored + idle_events + idle_write_requests;
    println!("targets:");
    match reconciled_time {
        Some(seconds) => println!(
            "  start to every object reconciled and idle = {seconds:.2} s, {:.1} × the baseline list (target <= {TARGET_RECONCILED_SECONDS} s)  {}",
            seconds / baseline_seconds.max(1e-9),
            verdict(seconds <= TARGET_RECONCILED_SECONDS)
        ),
        None => println!(
            "  start to every object reconciled and idle: never (target <= {TARGET_RECONCILED_SECONDS} s)  {}",
            verdict(false)
        ),
    }
    println!(
        "  controller peak RSS (VmHWM) = {:.1} MiB (target <= {TARGET_RSS_MIB} MiB)  {}",
        mib(hwm),
        verdict(mib(hwm) <= TARGET_RSS_MIB)
    );
    println!(
        "  API writes in the {idle_seconds:.0} s idle window = {idle_writes} ({idle_stored} stored changes, {idle_events} Events, {idle_write_requests} write requests{}) (target {TARGET_IDLE_WRITES})  {}",
        if settings.proxy {
            ""
        } else {
            " not counted: no proxy"
        },
        verdict(idle_writes == TARGET_IDLE_WRITES)
    );
}

/// Waits until every expected object is reconciled and the controller has been quiet for the
/// quiet period, until only never-reconciled kinds remain and it has been quiet for longer, or
/// until the timeout. Prints progress every 5 s.
async fn wait_until_reconciled(
    settings: &Settings,
    counts: &Counts,
    shared: &Shared,
    observed: &Arc<Mutex<ControllerWatch>>,
    child: &mut Child,
    started: Instant,
    log_path: &Path,
) -> anyhow::Result<WaitEnd> {
    let mut complete_since: Option<Instant> = None;
    let mut next_note = started + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the controller exited ({status}); the end of its log ({}):\n{}",
                log_path.display(),
                log_tail(log_path, 30)
            );
        }
        let now = Instant::now();
        let (counters, last_reconcile, rss) = {
            let watch = observed.lock().unwrap_or_else(|p| p.into_inner());
            (watch.counters.clone(), watch.last_reconcile_at, watch.rss_kib)
        };
        let (summaries, last_change) = {
            let tracker = lock(shared);
            let summaries: BTreeMap<&str, KindSummary> = RECONCILED_KINDS
                .iter()
                .map(|kind| (*kind, tracker.kinds.get(kind).map(summarize).unwrap_or_default()))
                .collect();
            (summaries, tracker.changes.last().map(|c| c.at))
        };
        let last_activity = [last_change, last_reconcile, Some(started)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(started);
        let quiet_for = now.saturating_duration_since(last_activity);
        let done_kind = |kind: &str| {
            let expected = counts.expected[kind];
            let summary = &summaries[kind];
            summary.total as u64 == expected
                && summary.ready as u64 == expected
                && counter(&counters, "reconciles", kind) >= expected as f64
        };
        let all_done = RECONCILED_KINDS.iter().all(|kind| done_kind(kind));
        if all_done {
            let since = *complete_since.get_or_insert(now);
            if quiet_for >= settings.quiet {
                return Ok(WaitEnd::Done {
                    reconciled: (since - started).as_secs_f64(),
                    idle: (last_activity.max(since) - started).as_secs_f64(),
                });
            }
        } else {
            complete_since = None;
            let never: Vec<&'static str> = RECONCILED_KINDS
                .iter()
                .copied()
                .filter(|kind| counts.expected[kind] > 0 && counter(&counters, "reconciles", kind) == 0.0)
                .collect();
            let others_done = RECONCILED_KINDS
                .iter()
                .filter(|kind| !never.contains(kind))
                .all(|kind| done_kind(kind));
            if !never.is_empty() && others_done && quiet_for >= UNHANDLED_AFTER.max(settings.quiet) {
                return Ok(WaitEnd::Unhandled {
                    kinds: never,
                    idle: (last_activity - started).as_secs_f64(),
                });
            }
        }
        if now - started >= settings.timeout {
            return Ok(WaitEnd::TimedOut);
        }
        if now >= next_note {
            next_note += Duration::from_secs(5);
            let line: Vec<String> = RECONCILED_KINDS
                .iter()
                .filter(|kind| counts.expected[*kind] > 0)
                .map(|kind| {
                    format!(
                        "{kind} {}/{} ready ({:.0} reconciles)",
                        summaries[kind].ready,
                        counts.expected[kind],
                        counter(&counters, "reconciles", kind)
                    )
                })
                .collect();
            eprintln!(
                "  {:.0} s: {}; RSS {:.1} MiB",
                (now - started).as_secs_f64(),
                line.join(", "),
                mib(rss)
            );
        }
    }
}

fn describe_changes(by_kind: &BTreeMap<(&str, ChangeKind), u64>) -> String {
    if by_kind.is_empty() {
        return "none".to_owned();
    }
    by_kind
        .iter()
        .map(|((kind, change), count)| format!("{kind} {change:?} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_requests(records: &[&RequestRecord]) -> String {
    if records.is_empty() {
        return "none".to_owned();
    }
    let mut by_verb: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut failed = 0;
    for record in records {
        *by_verb
            .entry((record.verb, record.resource.as_str()))
            .or_default() += 1;
        failed += u64::from(record.status >= 400 && record.status != 404);
    }
    let mut text = format!("{} in all", records.len());
    for ((verb, resource), count) in by_verb {
        text.push_str(&format!(", {verb} {resource} {count}"));
    }
    if failed > 0 {
        text.push_str(&format!(" ({failed} failed)"));
    }
    text
}

fn describe_deltas(deltas: &[(String, f64)]) -> String {
    if deltas.is_empty() {
        return "none".to_owned();
    }
    deltas
        .iter()
        .map(|(labels, delta)| format!("{labels} +{delta:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
