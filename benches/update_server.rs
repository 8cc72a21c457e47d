//! Benchmark of the update server's `POST /updates` against a bare hyper server, in one run.
//!
//! `cargo bench --bench update_server` (or `tests/bench/update_server.sh`, which installs `wrk`
//! first) runs the driver. The same binary plays four main roles, chosen by `OTA_BENCH_ROLE` (or a
//! first argument of the same name), so each server is a process of its own and the update
//! server's memory is measured alone:
//!
//! - `ota-server`: builds a synthetic world in memory (100 Apps × 5 Channels × 20 synced
//!   Bundles with 30-file delta manifests, one Rollout at 10% per App), boots the real server on
//!   127.0.0.1 with a device store in a temporary SQLite file, prints `LISTENING <address>` and
//!   serves until killed (or until its standard input closes, i.e. the driver is gone);
//! - `ota-server-limited`: the same with every App's rate limits on, at limits no run reaches
//!   (every check passes the per-client and the per-App limiter): the driver runs it in the same
//!   rounds and reports its throughput against `ota-server`'s (whose Apps have rate limits off,
//!   as the benchmark's load is one client on 127.0.0.1); `OTA_BENCH_LIMITER=0` leaves it out;
//! - `bare`: a bare hyper 1 HTTP/1 server answering every request with a fixed 300-byte JSON
//!   body, on the same Tokio runtime settings;
//! - `driver` (the default): starts both, samples an answer mix from the update server, drives
//!   each with `wrk` (warm-up, then rounds of maximum throughput, alternating the servers), then
//!   measures latency at half of each server's maximum rate with an open-loop generator of its
//!   own (and the bare server's at the update server's rate: the machine's floor there),
//!   samples the update server's RSS from `/proc` throughout, and prints a report with
//!   PASS/MISS per target. It exits non-zero only when something failed to run.
//!
//! Without `--bench` (what `cargo test --benches` passes) the driver only builds the world and
//! checks it, so a test run never starts a load.
//!
//! Three more roles help to dig: `wrk-script` prints the wrk Lua script, `probe` runs the
//! latency probe alone against a server already running at `OTA_BENCH_PROBE_ADDRESS`, at
//! `OTA_BENCH_PROBE_RATE` requests/s, and `store-rate` measures the device store's write rate
//! alone.
//!
//! Client and servers share the machine's CPUs: the report gives the CPU time each server spent
//! per request (from `/proc`), which does not depend on how the CPUs were shared, and how much
//! CPU processes that the benchmark did not start took meanwhile (a run disturbed by them says
//! so).
//!
//! Settings (environment): `OTA_BENCH_LIMITER` (1: also run `ota-server-limited`), `OTA_BENCH_WORKERS` (server worker threads, default: the CPU count),
//! `OTA_BENCH_WRK_THREADS` (2), `OTA_BENCH_CONNECTIONS` (64), `OTA_BENCH_WARMUP_SECONDS` (3),
//! `OTA_BENCH_SECONDS` (10, per round), `OTA_BENCH_ROUNDS` (3), `OTA_BENCH_PROBE_SECONDS` (10),
//! `OTA_BENCH_PROBE_CONNECTIONS` (32), `OTA_BENCH_DATABASE` (`file`, or `memory` for
//! `sqlite::memory:`), `OTA_BENCH_IDLE_WAIT_SECONDS` (300: how long the driver first waits for
//! the machine to be idle), `OTA_BENCH_RETRIES` (2: how many times a phase disturbed by other
//! processes is run again), `OTA_BENCH_BARE_BYTES` (the bare answer's size when the `bare` role
//! is run by hand; the driver wants 300).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    io::{BufRead, BufReader, Read, Write as _},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use common::{cpu_of, env_number, machine_cpu, median, mib, verdict};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    client::conn::http1::SendRequest,
    header::{CONTENT_TYPE, HOST},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use ota_operator::{
    api::{App, Bundle, Channel, Rollout},
    core::snapshot::{ManifestFile, Snapshot, SnapshotInputs},
    server::{self, Served, StorageSetup, storage::AppStorages},
    storage::Credentials,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::{net::TcpStream, time::Instant};

const ROLE_ENV: &str = "OTA_BENCH_ROLE";
/// The name of the update server with rate limits on in the report.
const LIMITED: &str = "ota+limits";
const APPS: usize = 100;
const BUNDLES: usize = 20;
const FILES_PER_BUNDLE: usize = 30;
/// The bundle production serves (1-based), and the rollout's candidate.
const STABLE_BUNDLE: usize = 10;
const CANDIDATE_BUNDLE: usize = 11;
const ROLLOUT_PERCENT: u32 = 10;
/// Requests sent one by one before the load to see what the answers are.
const MIX_SAMPLE: usize = 1_000;
const BARE_BODY_LEN: usize = 300;
/// Device sightings written to measure the device store's write rate.
const STORE_RATE_WRITES: usize = 50_000;

// Targets of the issue.
const TARGET_RATIO: f64 = 0.70;
const TARGET_P99_MS: f64 = 2.0;
const TARGET_RSS_MIB: f64 = 64.0;
/// A measured phase during which other processes took more than this share of the machine's CPU
/// is run again (`OTA_BENCH_RETRIES` times at most), and the report flags it.
const FOREIGN_LIMIT: f64 = 0.10;
/// The name, in the report, of the bare server probed at the update server's rate.
const FLOOR_PROBE: &str = "floor";

fn main() -> ExitCode {
    let first_arg = std::env::args().nth(1);
    let role = std::env::var(ROLE_ENV).ok().or_else(|| {
        first_arg.filter(|a| {
            [
                "ota-server",
                "ota-server-limited",
                "bare",
                "driver",
                "wrk-script",
                "probe",
                "store-rate",
            ]
            .contains(&a.as_str())
        })
    });
    let result = match role.as_deref() {
        Some("ota-server") => run_ota_server(false),
        Some("ota-server-limited") => run_ota_server(true),
        Some("bare") => run_bare(),
        Some("driver") => run_driver(),
        Some("wrk-script") => {
            print!("{}", wrk_script());
            Ok(())
        }
        Some("probe") => run_probe_only(),
        Some("store-rate") => run_store_rate_only(),
        _ if std::env::args().any(|a| a == "--bench") => run_driver(),
        _ => smoke(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "update_server bench ({}): {error:#}",
                role.as_deref().unwrap_or("driver")
            );
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings

fn cpu_count() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

fn server_workers() -> anyhow::Result<usize> {
    Ok(usize::try_from(env_number("OTA_BENCH_WORKERS", cpu_count() as u64)?)?.max(1))
}

fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_workers()?)
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")
}

/// Ends this server process when its standard input closes: the driver is gone, whatever way it
/// ended, so no server outlives it.
fn exit_when_stdin_closes() {
    thread::spawn(|| {
        let mut buffer = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buffer), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

// ---------------------------------------------------------------------------------------------
// The synthetic world

const NAMESPACE_PREFIX: &str = "bench-";

/// (channel name, public, bundle it serves (1-based; None: builtin), extra spec).
fn channel_plan() -> [(&'static str, bool, Option<usize>, Value); 5] {
    [
        ("production", true, Some(STABLE_BUNDLE), json!({})),
        ("beta", false, Some(15), json!({})),
        ("staging", false, Some(12), json!({})),
        ("nightly", false, None, json!({})),
        ("qa", false, Some(18), json!({"disableAutoUpdate": "minor"})),
    ]
}

fn app_name(index: usize) -> String {
    format!("app{index:02}")
}

fn app_id(index: usize) -> String {
    format!("com.bench.{}", app_name(index))
}

fn bundle_version(number: usize) -> String {
    format!("1.{number}.0")
}

fn sha(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

fn object<T: serde::de::DeserializeOwned>(
    kind: &str,
    namespace: &str,
    name: &str,
    spec: Value,
    status: Option<Value>,
) -> anyhow::Result<T> {
    let mut value = json!({
        "apiVersion": "ota.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}")},
        "spec": spec,
    });
    if let Some(status) = status {
        value["status"] = status;
    }
    serde_json::from_value(value).with_context(|| format!("building {kind}/{namespace}/{name}"))
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, patch) => *base = patch,
    }
}

/// The 30 files of one bundle: a few change with every version, the rest every fifth version
/// (so consecutive bundles share most of their content, as real builds do).
fn manifest(app: usize, number: usize) -> Arc<[ManifestFile]> {
    const NAMES: [&str; 10] = [
        "index.html",
        "assets/index.js.br",
        "assets/vendor.js.br",
        "assets/index.css.br",
        "assets/polyfills.js.br",
        "manifest.json",
        "assets/routes.js.br",
        "assets/runtime.js.br",
        "assets/fonts/inter.woff2",
        "assets/logo.svg",
    ];
    (0..FILES_PER_BUNDLE)
        .map(|file| {
            let file_name = match file {
                0..10 => NAMES[file].to_owned(),
                10..20 => format!("assets/i18n/lang-{:02}.json.br", file - 10),
                _ => format!("assets/img/icon-{:02}.png", file - 20),
            };
            let revision = if file < 5 { number } else { number / 5 };
            let file_hash = sha(&format!("{app}/{file_name}/{revision}"));
            let key = if file_name.ends_with(".br") {
                format!("files/{file_hash}.br")
            } else {
                format!("files/{file_hash}")
            };
            ManifestFile {
                file_name,
                file_hash,
                key,
            }
        })
        .collect::<Vec<_>>()
        .into()
}

/// The Apps' `server.rateLimits`: off, as every request comes from 127.0.0.1 (one client,
/// which the per-client limit exists to stop), or on with limits no run reaches (role
/// `ota-server-limited`), to measure what counting costs.
fn rate_limits(limited: bool) -> Value {
    if limited {
        let never = json!({"requestsPerSecond": 100_000_000, "burst": 1_000_000_000});
        json!({"enabled": true, "perClient": never, "perApp": never})
    } else {
        json!({"enabled": false})
    }
}

fn world_inputs(storage: &Path, limited: bool) -> anyhow::Result<SnapshotInputs> {
    let mut inputs = SnapshotInputs::default();
    for app in 0..APPS {
        let namespace = format!("{NAMESPACE_PREFIX}{}", app_name(app));
        let name = app_name(app);
        inputs.apps.push(object::<App>(
            "App",
            &namespace,
            &name,
            json!({
                "appId": app_id(app),
                "platforms": ["ios", "android"],
                "storage": {"filesystem": {"path": storage.join(&name).display().to_string()}},
                "server": {"rateLimits": rate_limits(limited)},
            }),
            None,
        )?);
        for (channel, public, bundle, patch) in channel_plan() {
            let mut spec = json!({
                "appRef": name, "public": public, "allowDeviceSelfSet": !public,
                "ios": true, "android": true, "electron": true,
                "allowDev": true, "allowProd": true, "allowEmulator": true, "allowPhysicalDevice": true,
                "disableAutoUpdate": "major", "disableAutoUpdateUnderNative": true, "requireSigned": false,
            });
            if let Some(number) = bundle {
                spec["bundleRef"] = json!(format!("{name}-{}", bundle_version(number)));
            }
            merge(&mut spec, patch);
            inputs
                .channels
                .push(object::<Channel>("Channel", &namespace, channel, spec, None)?);
        }
        for number in 1..=BUNDLES {
            let version = bundle_version(number);
            let bundle_name = format!("{name}-{version}");
            let zip_sha = sha(&format!("{app}/{version}/zip"));
            inputs.bundles.push(object::<Bundle>(
                "Bundle",
                &namespace,
                &bundle_name,
                json!({
                    "appRef": name, "version": version,
                    "source": {"url": format!("https://ci.example.com/{name}/{version}.zip"), "sha256": zip_sha},
                }),
                Some(json!({
                    "conditions": [{"type": "Synced", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                    "checksum": zip_sha,
                    "zipSize": 1_048_576,
                    "fileCount": FILES_PER_BUNDLE,
                    "storage": {"zipKey": format!("zips/{zip_sha}.zip"), "manifestKey": format!("manifests/{zip_sha}.json")},
                })),
            )?);
            inputs
                .manifests
                .insert((namespace.clone(), bundle_name), manifest(app, number));
        }
        let candidate = format!("{name}-{}", bundle_version(CANDIDATE_BUNDLE));
        inputs.rollouts.push(object::<Rollout>(
            "Rollout",
            &namespace,
            &format!("{name}-rollout"),
            json!({"channelRef": "production", "bundleRef": candidate,
                   "steps": [{"setPercent": ROLLOUT_PERCENT}, {"setPercent": 50}, {"setPercent": 100}]}),
            Some(
                json!({"phase": "Progressing", "currentStepIndex": 0, "currentPercent": ROLLOUT_PERCENT,
                        "stableBundle": format!("{name}-{}", bundle_version(STABLE_BUNDLE)),
                        "candidateBundle": candidate}),
            ),
        )?);
    }
    Ok(inputs)
}

/// The world as the server serves it, each App's storage opened by `storages` (as the sources
/// of the real server do); the objects it was built from are dropped here.
fn build_world(storage: &Path, storages: &AppStorages, limited: bool) -> anyhow::Result<Served> {
    let inputs = world_inputs(storage, limited)?;
    let mut app_storage = HashMap::new();
    for app in &inputs.apps {
        app_storage.insert(app.spec.app_id.clone(), storages.of(app)?);
    }
    let (snapshot, problems) = Snapshot::build(&inputs);
    if !problems.is_empty() {
        bail!("the synthetic world has problems: {problems:#?}");
    }
    let served_apps = snapshot.apps().count();
    let rollouts = snapshot
        .apps()
        .filter(|app| {
            app.channels
                .get("production")
                .is_some_and(|c| c.rollout.is_some())
        })
        .count();
    if served_apps != APPS || rollouts != APPS {
        bail!("the synthetic world serves {served_apps} apps and {rollouts} rollouts, not {APPS}");
    }
    Ok(Served {
        snapshot,
        storage: app_storage,
        manifests: HashMap::new(),
    })
}

/// `cargo test --benches`: build and check the world, start no load.
fn smoke() -> anyhow::Result<()> {
    let storage = tempfile::tempdir()?;
    let storages = AppStorages::new(storage.path(), Credentials::none(), "http://127.0.0.1");
    build_world(storage.path(), &storages, false)?;
    let limited = build_world(storage.path(), &storages, true)?;
    if limited
        .snapshot
        .apps()
        .any(|app| app.rate_limits.per_client.is_none() || app.rate_limits.per_app.is_none())
    {
        bail!("the world of ota-server-limited has an App without rate limits");
    }
    let mut generator = Generator::new(1);
    let body = generator.body();
    ota_operator::protocol::decode::decode_update(body.as_bytes())
        .map_err(|e| anyhow::anyhow!("a generated body does not decode: {e}: {body}"))?;
    println!(
        "update_server bench: world and request generator OK (run `cargo bench --bench update_server` to measure)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The request mix, shared by the Rust generator and the wrk Lua script

/// Plugin versions seen in the field: mostly 8.x, some 7.x, 6.x and 5.x (weights in percent).
const PLUGIN_VERSIONS: &[(&str, u32)] = &[
    ("8.51.14", 40),
    ("8.42.6", 20),
    ("8.35.0", 12),
    ("7.33.0", 8),
    ("7.0.35", 5),
    ("6.25.0", 5),
    ("6.2.0", 4),
    ("5.10.0", 4),
    ("5.9.0", 2),
];
const PLATFORMS: &[(&str, u32)] = &[("ios", 1), ("android", 1)];
/// Native versions: most on 1.0.0, some newer natives (older bundles are refused under them).
const VERSION_BUILDS: &[(&str, u32)] = &[("1.0.0", 80), ("1.2.0", 10), ("1.15.0", 10)];
/// Channels devices ask for: mostly none (production), some self-assigned ones, a few unknown.
const DEFAULT_CHANNELS: &[(&str, u32)] = &[
    ("", 80),
    ("beta", 8),
    ("staging", 4),
    ("nightly", 3),
    ("qa", 3),
    ("canary", 2),
];
const IS_PROD: &[(&str, u32)] = &[("true", 95), ("false", 5)];
const IS_EMULATOR: &[(&str, u32)] = &[("false", 97), ("true", 3)];

fn expand(table: &[(&str, u32)]) -> Vec<String> {
    table
        .iter()
        .flat_map(|(value, weight)| std::iter::repeat_n((*value).to_owned(), *weight as usize))
        .collect()
}

/// The percent of checks from devices already on the version their channel serves:
/// `OTA_BENCH_UP_TO_DATE`, 90 by default. Between releases nearly every check is one (a device
/// asks at every launch and takes a new bundle once); 0 gives a release-day storm in which
/// nearly every device is offered a bundle.
fn up_to_date_percent() -> u64 {
    env_number("OTA_BENCH_UP_TO_DATE", 90).map_or(90, |percent| percent.min(100))
}

/// The channels devices ask for (`""` is the default, production) → the version each serves.
fn current_versions() -> Vec<(String, String)> {
    channel_plan()
        .into_iter()
        .map(|(channel, _, bundle, _)| {
            let channel = if channel == "production" { "" } else { channel };
            (
                channel.to_owned(),
                bundle.map_or_else(|| "builtin".to_owned(), bundle_version),
            )
        })
        .collect()
}

/// What devices that are not up to date run: `builtin` for one in ten, else any of the 20
/// bundles.
fn version_names() -> Vec<String> {
    let mut names = vec!["builtin".to_owned(); 20];
    for number in 1..=BUNDLES {
        names.extend(std::iter::repeat_n(bundle_version(number), 9));
    }
    names
}

fn app_ids() -> Vec<String> {
    (0..APPS).map(app_id).collect()
}

/// SplitMix64: small, fast, good enough to draw requests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, values: &'a [String]) -> &'a str {
        &values[(self.next() % values.len() as u64) as usize]
    }
}

/// Builds `/updates` bodies like the plugin's (8.51.14 shape), one new device each.
struct Generator {
    rng: Rng,
    apps: Vec<String>,
    plugins: Vec<String>,
    platforms: Vec<String>,
    builds: Vec<String>,
    names: Vec<String>,
    channels: Vec<String>,
    prod: Vec<String>,
    emulator: Vec<String>,
    /// Channel asked for → the version it serves (what an up-to-date device runs).
    current: HashMap<String, String>,
    /// Percent of devices already on their channel's version.
    up_to_date: u64,
}

impl Generator {
    fn new(seed: u64) -> Self {
        Self {
            current: current_versions().into_iter().collect(),
            up_to_date: up_to_date_percent(),
            rng: Rng(seed),
            apps: app_ids(),
            plugins: expand(PLUGIN_VERSIONS),
            platforms: expand(PLATFORMS),
            builds: expand(VERSION_BUILDS),
            names: version_names(),
            channels: expand(DEFAULT_CHANNELS),
            prod: expand(IS_PROD),
            emulator: expand(IS_EMULATOR),
        }
    }

    fn device_id(&mut self) -> String {
        let a = self.rng.next();
        let b = self.rng.next();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }

    fn body(&mut self) -> String {
        let device = self.device_id();
        let rng = &mut self.rng;
        let channel = rng.pick(&self.channels);
        let up_to_date = rng.next() % 100 < self.up_to_date;
        let version_name = match self.current.get(channel) {
            Some(current) if up_to_date => current.as_str(),
            _ => rng.pick(&self.names),
        };
        let platform = rng.pick(&self.platforms);
        let (version_os, install_source) = if platform == "android" {
            ("14", r#","install_source":"google_play""#)
        } else {
            ("17.4", "")
        };
        format!(
            concat!(
                r#"{{"platform":"{}","device_id":"{}","app_id":"{}","custom_id":"","version_build":"{}","#,
                r#""version_code":"100","version_os":"{}","version_name":"{}","plugin_version":"{}","#,
                r#""is_emulator":{},"is_prod":{},"defaultChannel":"{}"{}}}"#
            ),
            platform,
            device,
            rng.pick(&self.apps),
            rng.pick(&self.builds),
            version_os,
            version_name,
            rng.pick(&self.plugins),
            rng.pick(&self.emulator),
            rng.pick(&self.prod),
            channel,
            install_source,
        )
    }
}

fn lua_map(entries: &[(String, String)]) -> String {
    let pairs: Vec<String> = entries.iter().map(|(k, v)| format!("[{k:?}]={v:?}")).collect();
    format!("{{{}}}", pairs.join(","))
}

fn lua_table(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("{{{}}}", quoted.join(","))
}

/// The wrk script: the same mix as [`Generator`], drawn with LuaJIT's generator, and a `done`
/// that prints one line the driver parses.
fn wrk_script() -> String {
    format!(
        r#"-- Written by benches/update_server.rs: POST /updates with a new device each time.
local apps = {apps}
local plugins = {plugins}
local platforms = {platforms}
local builds = {builds}
local names = {names}
local channels = {channels}
local prod = {prod}
local emulator = {emulator}
local current = {current}
local up_to_date = {up_to_date}
local headers = {{["Content-Type"] = "application/json; charset=utf-8"}}
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919 + math.floor(os.clock() * 1000000))
  for _ = 1, 10 do math.random() end
end

local random = math.random
local function pick(t) return t[random(#t)] end

local function device_id()
  return string.format("%08x-%04x-4%03x-%04x-%04x%08x",
    random(0, 4294967295), random(0, 65535), random(0, 4095),
    32768 + random(0, 16383), random(0, 65535), random(0, 4294967295))
end

function request()
  local channel = pick(channels)
  local name = current[channel]
  if name == nil or random(100) > up_to_date then name = pick(names) end
  local platform = pick(platforms)
  local os_version, install = "17.4", ""
  if platform == "android" then os_version, install = "14", ',"install_source":"google_play"' end
  local body = '{{"platform":"' .. platform .. '","device_id":"' .. device_id() ..
    '","app_id":"' .. pick(apps) .. '","custom_id":"","version_build":"' .. pick(builds) ..
    '","version_code":"100","version_os":"' .. os_version .. '","version_name":"' .. name ..
    '","plugin_version":"' .. pick(plugins) .. '","is_emulator":' .. pick(emulator) ..
    ',"is_prod":' .. pick(prod) .. ',"defaultChannel":"' .. channel .. '"' .. install .. '}}'
  return wrk.format("POST", "/updates", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local f = math.floor
  io.write(string.format("WRK_RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
    f(summary.requests), f(summary.duration), f(summary.bytes), f(e.connect), f(e.read), f(e.write),
    f(e.status), f(e.timeout), f(latency:percentile(50)), f(latency:percentile(99)), f(latency.max)))
end
"#,
        apps = lua_table(&app_ids()),
        plugins = lua_table(&expand(PLUGIN_VERSIONS)),
        platforms = lua_table(&expand(PLATFORMS)),
        builds = lua_table(&expand(VERSION_BUILDS)),
        names = lua_table(&version_names()),
        channels = lua_table(&expand(DEFAULT_CHANNELS)),
        prod = lua_table(&expand(IS_PROD)),
        emulator = lua_table(&expand(IS_EMULATOR)),
        current = lua_map(&current_versions()),
        up_to_date = up_to_date_percent(),
    )
}

// ---------------------------------------------------------------------------------------------
// Role: ota-server

/// `limited`: the Apps' rate limits on, with limits no run reaches.
fn run_ota_server(limited: bool) -> anyhow::Result<()> {
    exit_when_stdin_closes();
    let memory_database = std::env::var("OTA_BENCH_DATABASE").is_ok_and(|v| v == "memory");
    let runtime = server_runtime()?;
    runtime.block_on(async {
        let folder = tempfile::tempdir()?;
        let database = if memory_database {
            "sqlite::memory:".to_owned()
        } else {
            format!("sqlite://{}", folder.path().join("devices.db").display())
        };
        let setup = StorageSetup {
            base_dir: folder.path().to_owned(),
            credentials: Credentials::none(),
        };
        let boot = server::boot(&database, "127.0.0.1:0".parse()?, None, setup).await?;
        let served = build_world(folder.path(), boot.state.storages(), limited)?;
        boot.state.publish(served);
        let mut stdout = std::io::stdout();
        writeln!(stdout, "LISTENING {}", boot.address)?;
        stdout.flush()?;
        server::serve_until(boot, std::future::pending()).await?;
        drop(folder);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Role: bare

/// A 300-byte JSON answer shaped like an offer without a manifest (`OTA_BENCH_BARE_BYTES`
/// changes its size, for experiments: the driver checks for 300).
fn bare_body() -> anyhow::Result<Bytes> {
    let size = usize::try_from(env_number("OTA_BENCH_BARE_BYTES", BARE_BODY_LEN as u64)?)?;
    let mut body = format!(
        r#"{{"version":"1.10.0","url":"http://127.0.0.1:8080/files/com.bench.app00/zips/{}.zip","session_key":"","checksum":"{}","comment":""#,
        sha("zip"),
        sha("checksum")
    );
    while body.len() < size.saturating_sub(2) {
        body.push('x');
    }
    body.push_str("\"}");
    Ok(Bytes::from(body))
}

fn run_bare() -> anyhow::Result<()> {
    exit_when_stdin_closes();
    let body = bare_body()?;
    let runtime = server_runtime()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "LISTENING {}", listener.local_addr()?)?;
        stdout.flush()?;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    eprintln!("bare: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        // Read the request body, as the update server does.
                        let _ = request.into_body().collect().await;
                        let mut response = Response::new(Full::new(body));
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, "application/json".parse().expect("a header value"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Driver: child processes

/// A server process this driver started; killed (by its own pid) when dropped, on every path.
struct ServerProcess {
    name: &'static str,
    child: Child,
    address: SocketAddr,
}

impl ServerProcess {
    fn start(role: &'static str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, role)
            // As the operator runs the update server (its ConfigMap sets it); the same for the
            // bare server.
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {role} server"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            // Keep draining, so the child never blocks on a full pipe.
            for _ in lines {}
        });
        // From here on, dropping `process` kills the child.
        let mut process = ServerProcess {
            name: role,
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = receiver
            .recv_timeout(Duration::from_secs(120))
            .with_context(|| format!("the {role} server did not say where it listens"))?;
        process.address = line
            .strip_prefix("LISTENING ")
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("the {role} server said {line:?}"))?;
        Ok(process)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped the {} server (pid {})", self.name, self.child.id());
    }
}

// ---------------------------------------------------------------------------------------------
// Driver: memory of a process

#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    rss_kib: u64,
    hwm_kib: u64,
}

fn read_rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Rss {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Samples a process's VmRSS every 50 ms and keeps the highest.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<Mutex<Rss>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new(Rss::default()));
        let handle = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(now) = read_rss(pid) {
                        let mut peak = peak.lock().expect("rss lock");
                        peak.rss_kib = peak.rss_kib.max(now.rss_kib);
                        peak.hwm_kib = peak.hwm_kib.max(now.hwm_kib);
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    fn peak(&self) -> Rss {
        *self.peak.lock().expect("rss lock")
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver: HTTP client

async fn connect(address: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "127.0.0.1")
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn wait_ready(address: SocketAddr, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut sender = connect(address).await?;
            send(&mut sender, "GET", path, Bytes::new()).await
        };
        match attempt.await {
            Ok((status, _)) if status == StatusCode::OK => return Ok(()),
            Ok((status, _)) if Instant::now() > deadline => bail!("GET {path} answers {status}"),
            Err(error) if Instant::now() > deadline => return Err(error.context(format!("GET {path}"))),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver: answer mix

#[derive(Default)]
struct AnswerMix {
    counts: BTreeMap<String, u64>,
    offers_with_manifest: u64,
    candidate_offers: u64,
    offer_bytes: u64,
    offers: u64,
    other_bytes: u64,
    others: u64,
}

async fn sample_answers(address: SocketAddr, requests: usize) -> anyhow::Result<AnswerMix> {
    let mut sender = connect(address).await?;
    let mut generator = Generator::new(0x5eed);
    let mut mix = AnswerMix::default();
    for _ in 0..requests {
        let (status, body) = send(&mut sender, "POST", "/updates", Bytes::from(generator.body())).await?;
        if status != StatusCode::OK {
            bail!(
                "POST /updates answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let answer: Value = serde_json::from_slice(&body).context("an /updates answer is not JSON")?;
        let label = if let Some(code) = answer.get("error").and_then(Value::as_str) {
            code.to_owned()
        } else if answer.get("version").and_then(Value::as_str) == Some("builtin") {
            "revert to builtin".to_owned()
        } else if answer.get("url").is_some() {
            mix.offers += 1;
            mix.offer_bytes += body.len() as u64;
            if answer.get("manifest").is_some() {
                mix.offers_with_manifest += 1;
            }
            if answer.get("version").and_then(Value::as_str) == Some(&bundle_version(CANDIDATE_BUNDLE)) {
                mix.candidate_offers += 1;
            }
            *mix.counts.entry("offer".to_owned()).or_default() += 1;
            continue;
        } else {
            format!("unexpected answer {answer}")
        };
        mix.others += 1;
        mix.other_bytes += body.len() as u64;
        *mix.counts.entry(label).or_default() += 1;
    }
    Ok(mix)
}

/// `ota_server_rate_limited_total` of the server at `address`, every limit together.
async fn rate_limited(address: SocketAddr) -> anyhow::Result<u64> {
    let mut sender = connect(address).await?;
    let (_, body) = send(&mut sender, "GET", "/metrics", Bytes::new()).await?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|line| line.strip_prefix("ota_server_rate_limited_total{"))
        .filter_map(|rest| rest.split_once("} "))
        .map(|(_, value)| value.trim().parse::<u64>().unwrap_or(0))
        .sum())
}

/// `ota_server_update_checks_total` by answer, the dropped device-store writes and the skipped
/// (unchanged, recently written) device sightings.
async fn server_counters(address: SocketAddr) -> anyhow::Result<(BTreeMap<String, u64>, u64, u64)> {
    let mut sender = connect(address).await?;
    let (_, body) = send(&mut sender, "GET", "/metrics", Bytes::new()).await?;
    let text = String::from_utf8_lossy(&body);
    let mut answers = BTreeMap::new();
    let (mut dropped, mut skipped) = (0, 0);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ota_server_update_checks_total{answer=\"") {
            if let Some((label, value)) = rest.split_once("\"} ") {
                answers.insert(label.to_owned(), value.trim().parse().unwrap_or(0));
            }
        } else if let Some(value) = line.strip_prefix("ota_server_device_store_writes_dropped ") {
            dropped = value.trim().parse().unwrap_or(0);
        } else if let Some(value) = line.strip_prefix("ota_server_device_store_sightings_skipped ") {
            skipped = value.trim().parse().unwrap_or(0);
        }
    }
    Ok((answers, dropped, skipped))
}

// ---------------------------------------------------------------------------------------------
// Driver: the device store alone

/// How many device sightings per second the device store absorbs through its write queue (the
/// path of every `/updates` answer), in a temporary SQLite file, with the server's queue settings.
async fn device_store_rate(writes: usize) -> anyhow::Result<f64> {
    use ota_operator::devices::{self, DeviceSeen, DeviceStore, Write, WriteQueue};
    let folder = tempfile::tempdir()?;
    let store = DeviceStore::open(&format!("sqlite://{}", folder.path().join("rate.db").display())).await?;
    let memory = store.load_memory().await?;
    let (queue, flusher) = WriteQueue::start(
        store.clone(),
        memory,
        devices::SERVER_QUEUE_CAPACITY,
        devices::SERVER_MAX_BATCH,
        devices::SERVER_FLUSH_EVERY,
    );
    let mut generator = Generator::new(0xD0D0);
    let sightings: Vec<Write> = (0..writes)
        .map(|i| {
            Write::SeenDevice(DeviceSeen {
                app_id: app_id(i % APPS),
                device_id: generator.device_id(),
                platform: "android".into(),
                plugin_version: "8.51.14".into(),
                native_version: "1.0.0".into(),
                version_name: bundle_version(1 + i % BUNDLES),
                custom_id: None,
                default_channel: None,
                is_prod: true,
                is_emulator: false,
                seen_at_ms: 1_767_225_600_000 + i as i64,
                creates_row: true,
            })
        })
        .collect();
    let started = Instant::now();
    for chunk in sightings.chunks(devices::SERVER_QUEUE_CAPACITY) {
        for write in chunk {
            if !queue.push(write.clone()) {
                bail!("the write queue dropped a write");
            }
        }
        queue.flush().await?;
    }
    // Until every sighting is merged into the devices' rows, not only appended to the log.
    store.compact().await?;
    let rate = writes as f64 / started.elapsed().as_secs_f64();
    drop(queue);
    let _ = flusher.await;
    Ok(rate)
}

/// The `store-rate` role: the device store's write rate alone (`OTA_BENCH_STORE_WRITES`
/// sightings, default 50,000), for looking at the device store without the HTTP load.
fn run_store_rate_only() -> anyhow::Result<()> {
    let writes = usize::try_from(env_number("OTA_BENCH_STORE_WRITES", STORE_RATE_WRITES as u64)?)?;
    let rate = server_runtime()?.block_on(device_store_rate(writes))?;
    println!("device store: {rate:.0} device sightings/s ({writes} sightings, SQLite file)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Driver: wrk

#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    bytes: u64,
    errors: u64,
    error_detail: String,
    p50_us: u64,
    p99_us: u64,
    /// How long the server kept working once the load stopped (writing queued sightings).
    settle_ms: u64,
}

impl WrkResult {
    fn rate(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
}

struct WrkSettings {
    threads: u64,
    connections: u64,
}

fn run_wrk(
    settings: &WrkSettings,
    script: &Path,
    address: SocketAddr,
    seconds: u64,
) -> anyhow::Result<WrkResult> {
    let output = Command::new("wrk")
        .arg("-t")
        .arg(settings.threads.to_string())
        .arg("-c")
        .arg(settings.connections.to_string())
        .arg("-d")
        .arg(format!("{seconds}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(script)
        .arg(format!("http://{address}/updates"))
        .stdin(Stdio::null())
        .output()
        .context("cannot run wrk (install it: apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_RESULT "))
        .with_context(|| format!("wrk printed no result: {stdout}"))?;
    let fields: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let get = |k: &str| fields.get(k).copied().unwrap_or(0);
    let error_kinds = ["connect", "read", "write", "status", "timeout"];
    let errors = error_kinds.iter().map(|k| get(k)).sum();
    let error_detail = error_kinds
        .iter()
        .filter(|k| get(k) > 0)
        .map(|k| format!("{k} {}", get(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let result = WrkResult {
        requests: get("requests"),
        duration_us: get("duration_us"),
        bytes: get("bytes"),
        errors,
        error_detail,
        p50_us: get("p50_us"),
        p99_us: get("p99_us"),
        settle_ms: 0,
    };
    if result.requests == 0 {
        bail!("wrk completed no request: {stdout}");
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Driver: open-loop latency probe

struct Probe {
    target_rate: f64,
    achieved_rate: f64,
    requests: u64,
    errors: u64,
    histogram: Histogram<u64>,
}

/// Sends `/updates` requests at a fixed rate over `connections` keep-alive connections, each on
/// its own fixed schedule (rate / connections), whatever the answers' timing: an open loop, like
/// wrk2. A request's latency runs from its scheduled time when the connection was still busy
/// with earlier ones at that time (the server made it wait: no coordinated omission), else from
/// when it was actually sent (so the client's 1 ms timer granularity is not counted).
async fn probe(address: SocketAddr, rate: f64, seconds: u64, connections: u64) -> anyhow::Result<Probe> {
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for k in 0..connections {
        let mut sender = connect(address).await?;
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut generator = Generator::new(0xC0FFEE + k);
            let mut next = start + interval.mul_f64(k as f64 / connections as f64);
            let mut free_at = start;
            let (mut sent, mut errors) = (0u64, 0u64);
            while next < end {
                let body = Bytes::from(generator.body());
                tokio::time::sleep_until(next).await;
                let sent_at = Instant::now();
                let from = if free_at > next { next } else { sent_at };
                match send(&mut sender, "POST", "/updates", body).await {
                    Ok((StatusCode::OK, _)) => {
                        let done = Instant::now();
                        histogram.saturating_record((done - from).as_micros() as u64);
                        free_at = done;
                    }
                    Ok(_) | Err(_) => {
                        errors += 1;
                        free_at = Instant::now();
                        if let Ok(new) = connect(address).await {
                            sender = new;
                        }
                    }
                }
                sent += 1;
                next += interval;
            }
            (histogram, sent, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors) = (0, 0);
    for task in tasks {
        let (h, sent, failed) = task.await?;
        histogram.add(h)?;
        requests += sent;
        errors += failed;
    }
    let elapsed = (Instant::now() - start).as_secs_f64().max(1e-3);
    Ok(Probe {
        target_rate: rate,
        achieved_rate: requests as f64 / elapsed,
        requests,
        errors,
        histogram,
    })
}

/// `probe`: the latency probe alone, against a server already running at
/// `OTA_BENCH_PROBE_ADDRESS`, at `OTA_BENCH_PROBE_RATE` requests/s.
fn run_probe_only() -> anyhow::Result<()> {
    let address: SocketAddr = std::env::var("OTA_BENCH_PROBE_ADDRESS")
        .context("set OTA_BENCH_PROBE_ADDRESS")?
        .parse()?;
    let rate = env_number("OTA_BENCH_PROBE_RATE", 1_000)?.max(1) as f64;
    let seconds = env_number("OTA_BENCH_PROBE_SECONDS", 10)?.max(1);
    let connections = env_number("OTA_BENCH_PROBE_CONNECTIONS", 32)?.max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cpu_before = cpu_seconds(std::process::id());
    let p = runtime.block_on(probe(address, rate, seconds, connections))?;
    let cpu = cpu_seconds(std::process::id()) - cpu_before;
    println!("{}", probe_line("probe", &p));
    println!(
        "        the probe client used {:.0}% of a CPU",
        cpu * 100.0 / seconds as f64
    );
    Ok(())
}

fn cpu_seconds(pid: u32) -> f64 {
    cpu_of(pid).0
}

/// The share of the machine's CPU in use over `window`.
fn machine_busy(window: Duration) -> f64 {
    let (busy0, total0) = machine_cpu();
    thread::sleep(window);
    let (busy1, total1) = machine_cpu();
    (busy1 - busy0) / (total1 - total0).max(1e-9)
}

/// Waits, up to `limit`, until the machine is nearly idle: other processes (a build, say) would
/// take CPU from the servers and the load generators and disturb every figure.
fn wait_for_idle(limit: Duration) -> f64 {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let busy = machine_busy(Duration::from_secs(2));
        if busy < 0.10 || std::time::Instant::now() >= deadline {
            return busy;
        }
        eprintln!(
            "the machine is {:.0}% busy with other processes; waiting for it to calm down (up to {} s more)...",
            busy * 100.0,
            deadline
                .saturating_duration_since(std::time::Instant::now())
                .as_secs()
        );
        thread::sleep(Duration::from_secs(3));
    }
}

/// Waits, up to `limit`, until a server is idle again after a load: the update server goes on
/// writing its queued device sightings for a while, and that CPU belongs to its phase (and must
/// not disturb the next one). Returns how long it took.
fn wait_settled(pid: u32, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let before = cpu_of(pid).0;
        thread::sleep(Duration::from_millis(500));
        let used = cpu_of(pid).0 - before;
        if used < 0.025 || started.elapsed() >= limit {
            // The last half second was the quiet one.
            return started.elapsed().saturating_sub(Duration::from_millis(500));
        }
    }
}

/// Where the machine's CPU went during one phase.
#[derive(Debug, Clone, Copy, Default)]
struct CpuPhase {
    /// CPU seconds of the server under load.
    server: f64,
    /// CPU seconds of the load generator: wrk (a child the driver waited for) or the probe
    /// (the driver itself).
    generator: f64,
    /// CPU seconds of processes this benchmark did not start.
    foreign: f64,
    /// CPU seconds the machine had (CPUs x wall time).
    available: f64,
}

impl CpuPhase {
    fn foreign_share(&self) -> f64 {
        self.foreign / self.available.max(1e-9)
    }
}

/// Runs `phase` and accounts for the machine's CPU meanwhile: the server `loaded` (a pid), the
/// idle server `other`, this driver and the children it waited for (wrk), and everything else.
fn measured<T>(
    loaded: u32,
    other: u32,
    phase: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, CpuPhase)> {
    let me = std::process::id();
    let before = (cpu_of(loaded).0, cpu_of(other).0, cpu_of(me), machine_cpu());
    let result = phase()?;
    let after = (cpu_of(loaded).0, cpu_of(other).0, cpu_of(me), machine_cpu());
    let server = after.0 - before.0;
    let idle_server = after.1 - before.1;
    let generator = (after.2.0 - before.2.0) + (after.2.1 - before.2.1);
    let busy = after.3.0 - before.3.0;
    Ok((
        result,
        CpuPhase {
            server,
            generator,
            foreign: (busy - server - idle_server - generator).max(0.0),
            available: after.3.1 - before.3.1,
        },
    ))
}

fn probe_line(name: &str, p: &Probe) -> String {
    let h = &p.histogram;
    format!(
        "  {name:<5} target {:>6.0}/s achieved {:>6.0}/s  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({} requests, {} errors)",
        p.target_rate,
        p.achieved_rate,
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        p.requests,
        p.errors
    )
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Driver: machine

fn wrk_version() -> String {
    Command::new("wrk")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "wrk (version unknown)".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Driver

fn run_driver() -> anyhow::Result<()> {
    let settings = WrkSettings {
        threads: env_number("OTA_BENCH_WRK_THREADS", 2)?.max(1),
        connections: env_number("OTA_BENCH_CONNECTIONS", 64)?.max(1),
    };
    let warmup = env_number("OTA_BENCH_WARMUP_SECONDS", 3)?;
    let seconds = env_number("OTA_BENCH_SECONDS", 10)?.max(1);
    let rounds = env_number("OTA_BENCH_ROUNDS", 3)?.max(1);
    let probe_seconds = env_number("OTA_BENCH_PROBE_SECONDS", 10)?.max(1);
    let probe_connections = env_number("OTA_BENCH_PROBE_CONNECTIONS", 32)?.max(1);
    let workers = server_workers()?;
    let database = if std::env::var("OTA_BENCH_DATABASE").is_ok_and(|v| v == "memory") {
        "sqlite::memory:"
    } else {
        "SQLite file in a temporary folder"
    };
    let wrk = wrk_version();
    if !wrk.to_ascii_lowercase().contains("wrk") {
        bail!("wrk is not installed (apt-get install wrk, or run tests/bench/update_server.sh)");
    }

    let folder = tempfile::tempdir()?;
    let script = folder.path().join("updates.lua");
    std::fs::write(&script, wrk_script())?;

    let idle_wait = env_number("OTA_BENCH_IDLE_WAIT_SECONDS", 300)?;
    let busy_before = wait_for_idle(Duration::from_secs(idle_wait));

    eprintln!("starting the servers (the update server builds its world first)...");
    let ota = ServerProcess::start("ota-server")?;
    let bare = ServerProcess::start("bare")?;
    // The same update server with rate limits on (never reached): what counting costs.
    let limited = if env_number("OTA_BENCH_LIMITER", 1)? != 0 {
        Some(ServerProcess::start("ota-server-limited")?)
    } else {
        None
    };
    let ota_watch = RssWatch::start(ota.pid());
    let bare_watch = RssWatch::start(bare.pid());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        wait_ready(ota.address, "/readyz").await?;
        if let Some(limited) = &limited {
            wait_ready(limited.address, "/readyz").await?;
        }
        wait_ready(bare.address, "/").await
    })?;
    thread::sleep(Duration::from_millis(300));
    let ota_idle = read_rss(ota.pid()).context("cannot read the update server's memory")?;
    let bare_idle = read_rss(bare.pid()).unwrap_or_default();

    eprintln!("sampling {MIX_SAMPLE} answers...");
    let mix = runtime.block_on(sample_answers(ota.address, MIX_SAMPLE))?;
    let bare_check = runtime.block_on(async {
        let mut sender = connect(bare.address).await?;
        send(
            &mut sender,
            "POST",
            "/updates",
            Bytes::from(Generator::new(7).body()),
        )
        .await
    })?;
    if bare_check.1.len() != BARE_BODY_LEN {
        bail!("the bare server answered {} bytes", bare_check.1.len());
    }

    eprintln!("measuring the device store's write rate...");
    let store_rate = runtime.block_on(device_store_rate(STORE_RATE_WRITES))?;

    let mut servers = vec![("bare", &bare), ("ota", &ota)];
    if let Some(limited) = &limited {
        servers.push((LIMITED, limited));
    }
    if warmup > 0 {
        for &(name, server) in &servers {
            eprintln!("warm-up: wrk on {name} for {warmup} s...");
            run_wrk(&settings, &script, server.address, warmup)?;
            wait_settled(server.pid(), Duration::from_secs(60));
        }
    }
    let retries = env_number("OTA_BENCH_RETRIES", 2)?;
    let mut results: BTreeMap<&str, Vec<(WrkResult, CpuPhase)>> = BTreeMap::new();
    for round in 1..=rounds {
        let mut attempt = 0;
        loop {
            let mut pair = Vec::new();
            for &(name, server) in &servers {
                eprintln!("round {round}/{rounds}: wrk on {name} for {seconds} s...");
                let other = if name == "bare" { ota.pid() } else { bare.pid() };
                let (result, cpu) = measured(server.pid(), other, || {
                    let result = run_wrk(&settings, &script, server.address, seconds)?;
                    let settled = wait_settled(server.pid(), Duration::from_secs(60));
                    if settled > Duration::from_secs(1) {
                        eprintln!(
                            "  the {name} server worked {:.1} s more after the load",
                            settled.as_secs_f64()
                        );
                    }
                    Ok((result, settled))
                })?;
                let (mut result, settled) = result;
                result.settle_ms = settled.as_millis() as u64;
                eprintln!(
                    "  {:.0} requests/s; other processes used {:.0}% of the machine",
                    result.rate(),
                    cpu.foreign_share() * 100.0
                );
                pair.push((name, result, cpu));
            }
            let worst = pair
                .iter()
                .map(|(_, _, cpu)| cpu.foreign_share())
                .fold(0.0, f64::max);
            if worst <= FOREIGN_LIMIT || attempt >= retries {
                for (name, result, cpu) in pair {
                    results.entry(name).or_default().push((result, cpu));
                }
                break;
            }
            attempt += 1;
            eprintln!(
                "  round {round} was disturbed by other processes ({:.0}% of the machine): running it again",
                worst * 100.0
            );
            wait_for_idle(Duration::from_secs(120));
        }
    }
    let rates = |name: &str| results[name].iter().map(|(r, _)| r.rate()).collect::<Vec<_>>();
    let (bare_max, ota_max) = (median(&rates("bare")), median(&rates("ota")));
    let ota_load_peak = ota_watch.peak();

    let mut probes = BTreeMap::new();
    // The third probe is the floor of this machine and client at the update server's rate: the
    // bare server, which does no work, at the same rate as `ota`.
    for (name, server, max) in [
        ("bare", &bare, bare_max),
        ("ota", &ota, ota_max),
        (FLOOR_PROBE, &bare, ota_max),
    ] {
        let rate = (max / 2.0).max(1.0);
        eprintln!("latency: {name} at {rate:.0} requests/s for {probe_seconds} s...");
        let other = if name == "ota" { bare.pid() } else { ota.pid() };
        let mut attempt = 0;
        loop {
            let (result, cpu) = measured(server.pid(), other, || {
                let result = runtime.block_on(probe(server.address, rate, probe_seconds, probe_connections));
                wait_settled(server.pid(), Duration::from_secs(60));
                result
            })?;
            if cpu.foreign_share() <= FOREIGN_LIMIT || attempt >= retries {
                probes.insert(name, (result, cpu));
                break;
            }
            attempt += 1;
            eprintln!(
                "  disturbed by other processes ({:.0}% of the machine): running it again",
                cpu.foreign_share() * 100.0
            );
            wait_for_idle(Duration::from_secs(120));
        }
    }
    thread::sleep(Duration::from_millis(200));
    let ota_end = read_rss(ota.pid()).context("cannot read the update server's memory")?;
    let ota_peak = ota_watch.peak();
    let bare_end = read_rss(bare.pid()).unwrap_or_default();
    let bare_peak = bare_watch.peak();
    let (counters, dropped, skipped) = runtime.block_on(server_counters(ota.address))?;
    let refused_by_limits = match &limited {
        Some(limited) => Some(runtime.block_on(rate_limited(limited.address))?),
        None => None,
    };
    drop(ota_watch);
    drop(bare_watch);
    drop(ota);
    drop(bare);
    drop(limited);

    // ---- The report
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line("== ota-operator update server benchmark: POST /updates vs a bare hyper server ==".into());
    line(format!("machine: {}", common::machine()));
    line(format!(
        "note: wrk, the latency probe and both servers share these {} CPUs (client and server compete for them); \
         the machine was {:.0}% busy just before the run",
        cpu_count(),
        busy_before * 100.0
    ));
    line(format!(
        "world: {APPS} apps x 5 channels x {BUNDLES} synced bundles ({} bundles, {FILES_PER_BUNDLE}-file delta manifests), \
         1 rollout per app on production at {ROLLOUT_PERCENT}% (candidate {}, stable {})",
        APPS * BUNDLES,
        bundle_version(CANDIDATE_BUNDLE),
        bundle_version(STABLE_BUNDLE)
    ));
    line(format!(
        "servers: one process each, Tokio multi-thread runtime with {workers} workers; update server device store: {database}"
    ));
    line(format!(
        "load: {wrk}; {} threads, {} connections; {warmup} s warm-up, then {rounds} rounds x {seconds} s per server, alternating; \
         every request a new device (UUID v4), random app, plugin, platform and channel; {}% of devices already on \
         their channel's version (OTA_BENCH_UP_TO_DATE), the others on builtin or any bundle",
        settings.threads,
        settings.connections,
        up_to_date_percent()
    ));
    line(String::new());
    line(format!(
        "answer mix ({MIX_SAMPLE} requests of the same mix sent one by one before the load):"
    ));
    for (label, count) in &mix.counts {
        line(format!(
            "  {label:<40} {count:>5}  {:>5.1}%",
            *count as f64 * 100.0 / MIX_SAMPLE as f64
        ));
    }
    line(format!(
        "  offers with a manifest: {} of {}; offers of the rollout candidate {}: {}; \
         mean answer size: offers {} B, others {} B",
        mix.offers_with_manifest,
        mix.offers,
        bundle_version(CANDIDATE_BUNDLE),
        mix.candidate_offers,
        mix.offer_bytes.checked_div(mix.offers).unwrap_or(0),
        mix.other_bytes.checked_div(mix.others).unwrap_or(0),
    ));
    line(String::new());
    line("maximum throughput (wrk, requests/s; CPU time per request from /proc):".into());
    line(format!(
        "  {:<7} {:>9} {:>9} {:>8}  {:>13} {:>13}  {:>13} {:>13}  {:>9}",
        "round",
        "bare",
        "ota",
        "ota/bare",
        "bare srv us",
        "ota srv us",
        "wrk us(bare)",
        "wrk us(ota)",
        "foreign"
    ));
    let per_request = |(r, cpu): &(WrkResult, CpuPhase)| {
        let n = r.requests.max(1) as f64;
        (cpu.server * 1e6 / n, cpu.generator * 1e6 / n)
    };
    let mut worst_foreign: f64 = 0.0;
    for (round, (b, o)) in results["bare"].iter().zip(&results["ota"]).enumerate() {
        let ((bs, bw), (os, ow)) = (per_request(b), per_request(o));
        let foreign = b.1.foreign_share().max(o.1.foreign_share());
        worst_foreign = worst_foreign.max(foreign);
        line(format!(
            "  {:<7} {:>9.0} {:>9.0} {:>8.2}  {:>13.1} {:>13.1}  {:>13.1} {:>13.1}  {:>8.0}%",
            round + 1,
            b.0.rate(),
            o.0.rate(),
            o.0.rate() / b.0.rate(),
            bs,
            os,
            bw,
            ow,
            foreign * 100.0
        ));
    }
    // Each round pairs two runs a few seconds apart: the median of their ratios is the least
    // sensitive to a machine whose load changes during the run.
    let ratio = median(
        &results["bare"]
            .iter()
            .zip(&results["ota"])
            .map(|((b, _), (o, _))| o.rate() / b.rate())
            .collect::<Vec<_>>(),
    );
    line(format!(
        "  {:<7} {:>9.0} {:>9.0} {:>8.2}   (ratio: median of the rounds' ratios)",
        "median", bare_max, ota_max, ratio
    ));
    let cost = |name: &str| {
        median(
            &results[name]
                .iter()
                .map(|(r, cpu)| (cpu.server + cpu.generator) * 1e6 / r.requests.max(1) as f64)
                .collect::<Vec<_>>(),
        )
    };
    let (bare_cost, ota_cost) = (cost("bare"), cost("ota"));
    line(format!(
        "  CPU cost per request, server + wrk (medians): bare {bare_cost:.1} us, ota {ota_cost:.1} us; \
         their ratio bare/ota = {:.2} is the throughput ratio when the two CPUs go to server and wrk alone \
         (it does not depend on other processes)",
        bare_cost / ota_cost.max(1e-9)
    ));
    line(
        "  (srv us: CPU microseconds the server process spent per request; wrk us: same for wrk; \
         foreign: share of the machine's CPU used by processes this benchmark did not start)"
            .into(),
    );
    if let Some(refused) = refused_by_limits {
        let ratios: Vec<f64> = results["ota"]
            .iter()
            .zip(&results[LIMITED])
            .map(|((o, _), (l, _))| l.rate() / o.rate())
            .collect();
        let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        let limited_cost = cost(LIMITED);
        line(format!(
            "  rate limits on (never reached; per-client and per-App limiter on every check) vs off: throughput \
             ratio {:.3} (median; rounds {}; medians {:.0} vs {:.0} requests/s); CPU cost per request, server + wrk: \
             {limited_cost:.1} vs {ota_cost:.1} us (ratio off/on {:.3}); requests the limited server answered 429: {refused}",
            median(&ratios),
            rounds.join(" / "),
            median(&rates(LIMITED)),
            ota_max,
            ota_cost / limited_cost.max(1e-9)
        ));
    }
    for name in ["bare", "ota", LIMITED] {
        if !results.contains_key(name) {
            continue;
        }
        let errors: u64 = results[name].iter().map(|(r, _)| r.errors).sum();
        if errors > 0 {
            let detail: Vec<&str> = results[name]
                .iter()
                .map(|(r, _)| r.error_detail.as_str())
                .collect();
            line(format!(
                "  WARNING: {name}: {errors} wrk errors ({})",
                detail.join("; ")
            ));
        }
    }
    let wire = |name: &str| {
        let bytes: u64 = results[name].iter().map(|(r, _)| r.bytes).sum();
        let requests: u64 = results[name].iter().map(|(r, _)| r.requests).sum();
        bytes.checked_div(requests).unwrap_or(0)
    };
    let settles: Vec<String> = results["ota"]
        .iter()
        .map(|(r, _)| format!("{:.1}", r.settle_ms as f64 / 1000.0))
        .collect();
    line(format!(
        "  after each {seconds} s round the update server kept working for {} s (writing queued device sightings; \
         counted in its CPU per request)",
        settles.join(" / ")
    ));
    line(format!(
        "  mean response on the wire, headers included: ota {} B, bare {} B",
        wire("ota"),
        wire("bare")
    ));
    let wrk_latency = |name: &str| {
        let r = &results[name];
        (
            median(&r.iter().map(|(r, _)| ms(r.p50_us)).collect::<Vec<_>>()),
            median(&r.iter().map(|(r, _)| ms(r.p99_us)).collect::<Vec<_>>()),
        )
    };
    let ((bp50, bp99), (op50, op99)) = (wrk_latency("bare"), wrk_latency("ota"));
    line(format!(
        "  latency under maximum load (wrk, closed loop, medians): bare p50 {bp50:.2} ms p99 {bp99:.2} ms; ota p50 {op50:.2} ms p99 {op99:.2} ms"
    ));
    line(format!(
        "  TARGET throughput ota/bare >= {TARGET_RATIO:.2}: {ratio:.2}  {}",
        verdict(ratio >= TARGET_RATIO)
    ));
    line(String::new());
    line(format!(
        "latency at half of each server's maximum rate (open loop, {probe_connections} keep-alive connections, {probe_seconds} s, same request mix):"
    ));
    for name in ["bare", "ota", FLOOR_PROBE] {
        let (p, cpu) = &probes[name];
        let seconds = probe_seconds as f64;
        worst_foreign = worst_foreign.max(cpu.foreign_share());
        line(probe_line(name, p));
        line(format!(
            "        CPU: server {:.0}% of a CPU, probe client {:.0}%, foreign {:.0}% of the machine",
            cpu.server * 100.0 / seconds,
            cpu.generator * 100.0 / seconds,
            cpu.foreign_share() * 100.0
        ));
    }
    let ota_p99 = ms(probes["ota"].0.histogram.value_at_quantile(0.99));
    let floor_p99 = ms(probes[FLOOR_PROBE].0.histogram.value_at_quantile(0.99));
    let ota_probe_errors = probes["ota"].0.errors;
    line(format!(
        "  ({FLOOR_PROBE}: the bare server, which does no work, at the update server's rate: the floor of this \
         machine and probe client at that rate; ota p99 / floor p99 = {:.2})",
        ota_p99 / floor_p99.max(1e-3)
    ));
    line(format!(
        "  TARGET ota p99 <= {TARGET_P99_MS:.1} ms at half its maximum rate: {ota_p99:.3} ms  {}",
        verdict(ota_p99 <= TARGET_P99_MS && ota_probe_errors == 0)
    ));
    line(String::new());
    line("memory of the update server process (from /proc/<pid>/status):".into());
    line(format!(
        "  after boot, idle: VmRSS {:.1} MiB (VmHWM {:.1} MiB, the peak of building the world)",
        mib(ota_idle.rss_kib),
        mib(ota_idle.hwm_kib)
    ));
    line(format!(
        "  during the wrk rounds: peak VmRSS {:.1} MiB",
        mib(ota_load_peak.rss_kib)
    ));
    line(format!(
        "  whole run: peak VmRSS {:.1} MiB, VmHWM {:.1} MiB; at the end VmRSS {:.1} MiB",
        mib(ota_peak.rss_kib),
        mib(ota_end.hwm_kib.max(ota_peak.hwm_kib)),
        mib(ota_end.rss_kib)
    ));
    line(format!(
        "  (bare server for reference: idle {:.1} MiB, peak {:.1} MiB, end {:.1} MiB)",
        mib(bare_idle.rss_kib),
        mib(bare_peak.rss_kib.max(bare_end.hwm_kib)),
        mib(bare_end.rss_kib)
    ));
    let rss_peak = mib(ota_end.hwm_kib.max(ota_peak.hwm_kib));
    line(format!(
        "  TARGET update server peak RSS (VmHWM) <= {TARGET_RSS_MIB:.0} MiB: {rss_peak:.1} MiB  {}",
        verdict(rss_peak <= TARGET_RSS_MIB)
    ));
    line(String::new());
    line(format!(
        "device store alone (SQLite file, through the write queue, before the load): {store_rate:.0} device sightings/s; \
         every /updates answer from a known app queues one"
    ));
    let total: u64 = counters.values().sum();
    line(format!(
        "update server counters over the whole run (/metrics): {total} update checks, {dropped} device-store writes dropped, \
         {skipped} device sightings skipped (unchanged, written less than {} s before)",
        ota_operator::devices::SIGHTING_REWRITE_WINDOW.as_secs()
    ));
    for (label, count) in &counters {
        line(format!(
            "  {label:<40} {count:>9}  {:>5.1}%",
            *count as f64 * 100.0 / total.max(1) as f64
        ));
    }
    line(String::new());
    if worst_foreign > FOREIGN_LIMIT {
        line(format!(
            "WARNING: processes this benchmark did not start used up to {:.0}% of the machine's CPU during a measured phase; \
             the figures above are disturbed: rerun on an idle machine",
            worst_foreign * 100.0
        ));
    } else {
        line(format!(
            "other processes used at most {:.1}% of the machine's CPU during any measured phase",
            worst_foreign * 100.0
        ));
    }
    line(format!(
        "summary: throughput ratio {ratio:.2} {} | ota p99 {ota_p99:.3} ms {} (the bare server's at that rate: {floor_p99:.3} ms) | ota peak RSS {rss_peak:.1} MiB {}",
        verdict(ratio >= TARGET_RATIO),
        verdict(ota_p99 <= TARGET_P99_MS && ota_probe_errors == 0),
        verdict(rss_peak <= TARGET_RSS_MIB)
    ));
    print!("{out}");
    std::io::stdout().flush()?;
    drop(folder);
    Ok(())
}
