//! Benchmark of durable acknowledgements, in one run (issue 12's targets: `/stats` throughput
//! with durable acknowledgements ≥ 0.8 × the asynchronous path; 0 acknowledged events lost to
//! a SIGKILL; the loss of update-check sightings, which stay asynchronous, reported).
//!
//! `cargo bench --bench durability` (or `tests/bench/durability.sh`, which also starts the test
//! PostgreSQL server) runs three parts:
//!
//! - **Throughput of the store path.** The writes of `OTA_BENCH_EVENTS` stats events (a `set`:
//!   a counter, an outcome, the device's current bundle, and its sighting) go through one
//!   [`WriteQueue`] on a real store, from 64 concurrent tasks, two ways in alternating rounds:
//!   the asynchronous path (every write pushed, then one flush: what `/stats` did before) and
//!   the durable one (each event's writes committed before the next, the sighting pushed: what
//!   `/stats` does now). Events per second of each, medians of `OTA_BENCH_ROUNDS` rounds, and
//!   their ratio. On an SQLite file, and on PostgreSQL when `OTA_TEST_POSTGRES_URL` is set.
//!   HTTP is left out: it costs both paths the same.
//! - **SIGKILL loss of acknowledged events.** The real `ota standalone` (release build) takes
//!   `OTA_BENCH_KILL_REQUESTS` `/stats` requests from 64 clients and is killed with SIGKILL
//!   right after the last answer; the counters it acknowledged are counted in its store.
//! - **SIGKILL loss of sightings.** The same with update checks of distinct devices: the
//!   devices it stored against those it answered (sightings are written in batches every
//!   [`SERVER_FLUSH_EVERY`]: that is the window a kill can lose).
//!
//! - **A flood of stats events.** The real `ota standalone` takes `OTA_BENCH_FLOOD_EVENTS`
//!   (default 1,000,000) `/stats` events, in batches of `OTA_BENCH_FLOOD_BATCH` (as the plugin
//!   batches) over `OTA_BENCH_FLOOD_CLIENTS` connections, from random device ids with random
//!   versions and actions (most versions made up, some the App's Bundle), while one real device
//!   sends an update check every `OTA_BENCH_CHECK_EVERY_MS`. Reports the server's peak RSS
//!   (VmHWM; target ≤ 64 MiB), the store's growth (bytes, rows per table, the counter rows
//!   against [`counter_rows_per_day`]) and the real device's update-check p50/p99 during the
//!   flood against its p99 just before it, with no flood. On an SQLite file, and on PostgreSQL
//!   when `OTA_TEST_POSTGRES_URL` is set. The App's YAML of that server is [`FLOOD_APP_YAML`].
//!
//! `OTA_BENCH_PARTS` (a comma-separated list of `store`, `kill`, `flood`; default all) picks the
//! parts to run.
//!
//! Without `--bench` (what `cargo test --benches` passes) it runs one small round of each path
//! on an in-memory store, as a smoke test.

mod common;

use std::{
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use common::{env_number, machine, median, verdict};
use futures::{StreamExt, stream};
use ota_operator::{
    core::stats::counter_rows_per_day,
    devices::{
        DeviceMemory, DeviceSeen, DeviceStore, OutcomeReport, SERVER_FLUSH_EVERY, SERVER_MAX_BATCH,
        SERVER_QUEUE_CAPACITY, Write, WriteQueue,
    },
};
use serde_json::json;

const APP: &str = "com.example.shop";
const VERSION: &str = "1.4.3";
/// Concurrent clients of the real-binary parts.
const CONCURRENCY: usize = 64;
/// Requests in flight in the store-path rounds: a small fleet's, then a larger one's (group
/// commit shares a transaction among the requests in flight, so it gains with them).
const STORE_CONCURRENCY: [usize; 2] = [64, 512];
const TARGET_RATIO: f64 = 0.8;
/// The day of the counters (any fixed day).
const DAY: i64 = 20_000;
/// The App of the flood's server (written over the example's `app.yaml`): the one place to
/// change its settings (e.g. rate limits) for the flood.
const FLOOD_APP_YAML: &str = "\
apiVersion: ota.dev/v1alpha1
kind: App
metadata:
  name: shop
spec:
  appId: com.example.shop
  platforms: [ios, android]
  storage:
    filesystem:
      path: ./storage
  deviceStore:
    sqlite: {}
";
/// The versions of the example's Bundles (the flood names them now and then).
const FLOOD_BUNDLES: [&str; 1] = [VERSION];
/// The peak RSS target of the flood, MiB.
const FLOOD_RSS_TARGET_MIB: f64 = 64.0;
/// The tables of the device store, for the row counts (and the sightings waiting in the log
/// that may create a device's row: those of update checks).
const STORE_COUNTS: [(&str, &str); 8] = [
    ("devices", "SELECT COUNT(*) FROM devices"),
    ("device_sightings", "SELECT COUNT(*) FROM device_sightings"),
    (
        "creating sightings",
        "SELECT COUNT(*) FROM device_sightings WHERE creates_row = 1",
    ),
    ("counters", "SELECT COUNT(*) FROM counters"),
    ("failed_marks", "SELECT COUNT(*) FROM failed_marks"),
    ("device_outcomes", "SELECT COUNT(*) FROM device_outcomes"),
    ("device_changes", "SELECT COUNT(*) FROM device_changes"),
    ("rollout_states", "SELECT COUNT(*) FROM rollout_states"),
];

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("durability bench: no runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = if std::env::args().any(|a| a == "--bench") {
        runtime.block_on(run_driver())
    } else {
        runtime.block_on(smoke())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("durability bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One small round of each path, checking that every event is stored.
async fn smoke() -> anyhow::Result<()> {
    for path in [Path::Async, Path::Durable] {
        let store = DeviceStore::open("sqlite::memory:").await?;
        round(&store, path, 200, CONCURRENCY).await?;
        let stored = counted(&store).await?;
        if stored != 200 {
            bail!("{path:?}: {stored} of 200 events stored");
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Every write pushed, then one flush.
    Async,
    /// Each event's writes committed, the sighting pushed.
    Durable,
}

/// The writes of stats event number `n`: what a `set` records, and the sighting apart.
fn event_writes(n: usize) -> (Vec<Write>, Write) {
    let device_id = format!("00000000-0000-4000-8000-{n:012x}");
    let acknowledged = vec![
        Write::Count {
            app_id: APP.to_owned(),
            version: VERSION.to_owned(),
            action: "set".to_owned(),
            day: DAY,
            n: 1,
        },
        Write::Outcome(OutcomeReport {
            app_id: APP.to_owned(),
            version: VERSION.to_owned(),
            device_id: device_id.clone(),
            channel: "production".to_owned(),
            failed: false,
            at_ms: 1_790_000_000_000,
        }),
        Write::CurrentBundle {
            app_id: APP.to_owned(),
            device_id: device_id.clone(),
            version: VERSION.to_owned(),
            creates_row: true,
        },
    ];
    let sighting = Write::SeenDevice(DeviceSeen {
        app_id: APP.to_owned(),
        device_id,
        platform: "android".to_owned(),
        plugin_version: "8.51.14".to_owned(),
        native_version: "1.4.0".to_owned(),
        version_name: VERSION.to_owned(),
        custom_id: None,
        default_channel: None,
        is_prod: true,
        is_emulator: false,
        seen_at_ms: 1_790_000_000_000,
        creates_row: true,
    });
    (acknowledged, sighting)
}

/// Sends `events` events through a fresh queue on `store` the `path` way, until all are
/// stored; returns the wall time.
async fn round(
    store: &DeviceStore,
    path: Path,
    events: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    // Room for every write of the round: the asynchronous path pushes them all at once (a
    // server drops what does not fit, and dropped writes would count as fast ones).
    let (queue, flusher) = WriteQueue::start(
        store.clone(),
        DeviceMemory::empty(),
        SERVER_QUEUE_CAPACITY.max(4 * events),
        SERVER_MAX_BATCH,
        SERVER_FLUSH_EVERY,
    );
    let started = Instant::now();
    let failures: usize = stream::iter(0..events)
        .map(|n| {
            let queue = queue.clone();
            async move {
                let (acknowledged, sighting) = event_writes(n);
                let stored = match path {
                    Path::Async => acknowledged.into_iter().all(|write| queue.push(write)),
                    Path::Durable => queue.commit(acknowledged, Duration::from_secs(30)).await.is_ok(),
                };
                queue.push(sighting);
                usize::from(!stored)
            }
        })
        .buffer_unordered(concurrency)
        .fold(0, |sum, failed| async move { sum + failed })
        .await;
    queue.flush().await?;
    let elapsed = started.elapsed();
    drop(queue);
    flusher.await?;
    if failures > 0 {
        bail!("{path:?}: {failures} events not taken");
    }
    Ok(elapsed)
}

/// The `set` events counted in `store`.
async fn counted(store: &DeviceStore) -> anyhow::Result<i64> {
    Ok(store
        .counters(APP, VERSION, DAY)
        .await?
        .iter()
        .map(|counter| counter.count)
        .sum())
}

/// Rounds of both paths, alternating, on fresh stores from `open`; (async, durable) medians
/// in events per second.
async fn throughput<F, Fut>(
    label: &str,
    events: usize,
    rounds: usize,
    concurrency: usize,
    open: F,
) -> anyhow::Result<(f64, f64)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<DeviceStore>>,
{
    let (mut asynchronous, mut durable) = (Vec::new(), Vec::new());
    for index in 0..rounds {
        for path in [Path::Async, Path::Durable] {
            let store = open().await?;
            let elapsed = round(&store, path, events, concurrency).await?;
            let stored = counted(&store).await?;
            if stored != events as i64 {
                bail!("{label} {path:?}: {stored} of {events} events stored");
            }
            let rate = events as f64 / elapsed.as_secs_f64();
            eprintln!("{label} ×{concurrency} round {index} {path:?}: {rate:.0} events/s");
            match path {
                Path::Async => asynchronous.push(rate),
                Path::Durable => durable.push(rate),
            }
        }
    }
    Ok((median(&asynchronous), median(&durable)))
}

async fn run_driver() -> anyhow::Result<()> {
    let events = env_number("OTA_BENCH_EVENTS", 20_000)? as usize;
    let rounds = env_number("OTA_BENCH_ROUNDS", 3)? as usize;
    let kill_requests = env_number("OTA_BENCH_KILL_REQUESTS", 3_000)? as usize;
    let parts = std::env::var("OTA_BENCH_PARTS").unwrap_or_else(|_| "store,kill,flood".to_owned());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    if let Some(unknown) = parts.iter().find(|p| !["store", "kill", "flood"].contains(p)) {
        bail!("OTA_BENCH_PARTS: unknown part {unknown:?} (store, kill, flood)");
    }
    let work = std::env::current_dir()?.join("target/bench/durability");
    std::fs::create_dir_all(&work)?;
    let mut report = vec![
        "# Durable acknowledgements".to_owned(),
        format!("machine: {}", machine()),
    ];
    let postgres_server = std::env::var("OTA_TEST_POSTGRES_URL").ok();
    if parts.contains(&"store") {
        store_part(&mut report, &work, events, rounds, postgres_server.as_deref()).await?;
    }
    if parts.contains(&"kill") {
        kill_part(&mut report, &work, kill_requests).await?;
    }
    if parts.contains(&"flood") {
        flood_part(&mut report, &work, postgres_server.as_deref()).await?;
    }
    println!("{}", report.join("\n"));
    Ok(())
}

/// The throughput of the store path, both ways, on every store.
async fn store_part(
    report: &mut Vec<String>,
    work: &std::path::Path,
    events: usize,
    rounds: usize,
    postgres_server: Option<&str>,
) -> anyhow::Result<()> {
    report.extend([
        String::new(),
        format!("{events} events per round, {rounds} rounds per path (medians)"),
        String::new(),
        format!(
            "| store | requests in flight | async events/s | durable events/s | ratio (target ≥ {TARGET_RATIO}) | |"
        ),
        "|---|---|---|---|---|---|".to_owned(),
    ]);
    let sqlite_dir = work.join("sqlite");
    let _ = std::fs::remove_dir_all(&sqlite_dir);
    let counter = std::sync::atomic::AtomicUsize::new(0);
    for concurrency in STORE_CONCURRENCY {
        let sqlite = throughput("sqlite", events, rounds, concurrency, || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = sqlite_dir.clone();
            async move {
                std::fs::create_dir_all(&dir)?;
                let file = dir.join(format!("round-{n}.db"));
                Ok(DeviceStore::open(&format!("sqlite://{}", file.display())).await?)
            }
        })
        .await?;
        report.push(row("SQLite file (WAL, synchronous=FULL)", concurrency, sqlite));
        match postgres_server {
            Some(server) => {
                let postgres = throughput("postgres", events, rounds, concurrency, || {
                    let server = server.to_owned();
                    async move { fresh_postgres(&server).await }
                })
                .await?;
                report.push(row("PostgreSQL", concurrency, postgres));
            }
            None => report.push(format!(
                "| PostgreSQL | {concurrency} | not run: OTA_TEST_POSTGRES_URL is not set | | | |"
            )),
        }
    }
    let _ = std::fs::remove_dir_all(&sqlite_dir);
    Ok(())
}

/// What a SIGKILL loses, of acknowledged events and of sightings.
async fn kill_part(
    report: &mut Vec<String>,
    work: &std::path::Path,
    kill_requests: usize,
) -> anyhow::Result<()> {
    report.push(String::new());
    let (acknowledged, stored) = kill_after_stats(work, kill_requests).await?;
    report.push(format!(
        "SIGKILL right after the last of {acknowledged} acknowledged /stats events: {} lost (target 0) {}",
        acknowledged as i64 - stored,
        verdict(stored == acknowledged as i64)
    ));
    let (answered, sighted) = kill_after_checks(work, kill_requests).await?;
    report.push(format!(
        "SIGKILL right after the last of {answered} answered update checks (distinct devices): {} sightings lost ({:.1}%; \
         sightings are written in batches every {} ms, the window a kill can lose)",
        answered as i64 - sighted,
        100.0 * (answered as i64 - sighted) as f64 / answered as f64,
        SERVER_FLUSH_EVERY.as_millis()
    ));
    Ok(())
}

fn row(label: &str, concurrency: usize, (asynchronous, durable): (f64, f64)) -> String {
    let ratio = durable / asynchronous;
    format!(
        "| {label} | {concurrency} | {asynchronous:.0} | {durable:.0} | {ratio:.2} | {} |",
        verdict(ratio >= TARGET_RATIO)
    )
}

/// A store on a new database of the PostgreSQL server at `server`.
async fn fresh_postgres(server: &str) -> anyhow::Result<DeviceStore> {
    Ok(DeviceStore::open(&fresh_postgres_url(server).await?).await?)
}

/// The URL of a new database of the PostgreSQL server at `server`.
async fn fresh_postgres_url(server: &str) -> anyhow::Result<String> {
    use sqlx::{Connection, Executor, postgres::PgConnection};
    let name = format!("bench_durability_{}", fastrand::u32(..));
    let mut connection = PgConnection::connect(server).await?;
    connection
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let (base, query) = server
        .split_once('?')
        .map_or((server, None), |(b, q)| (b, Some(q)));
    let (root, _) = base
        .rsplit_once('/')
        .context("the PostgreSQL URL names a database")?;
    let url = match query {
        Some(query) => format!("{root}/{name}?{query}"),
        None => format!("{root}/{name}"),
    };
    Ok(url)
}

/// `ota standalone` (this build's binary) on a copy of examples/standalone under `work`, with
/// its store in `database`; its child and base URL once ready.
async fn start_standalone(work: &std::path::Path, database: &str) -> anyhow::Result<(Child, String)> {
    start_standalone_with(work, database, None).await
}

/// As [`start_standalone`], with `app_yaml` written over the example's `app.yaml` when given.
async fn start_standalone_with(
    work: &std::path::Path,
    database: &str,
    app_yaml: Option<&str>,
) -> anyhow::Result<(Child, String)> {
    let dir = work.join("standalone");
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&std::env::current_dir()?.join("examples/standalone"), &dir)?;
    if let Some(yaml) = app_yaml {
        std::fs::write(dir.join("app.yaml"), yaml)?;
    }
    // Rate limits off (the flood stands for many clients; tests/rate_limits.rs covers the limits):
    // the load comes from 127.0.0.1 as fast as the server answers, one client
    // to the server, which its per-client limit exists to stop.
    let app = std::fs::read_to_string(dir.join("app.yaml"))?;
    std::fs::write(
        dir.join("app.yaml"),
        format!(
            "{}\n  server:\n    rateLimits: {{enabled: false}}\n",
            app.trim_end()
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["standalone", "--database", database, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(&dir)
        .env("OTA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("ota standalone starts")?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{base}/readyz"))
        .await
        .is_ok_and(|response| response.status() == 200)
    {
        if Instant::now() > deadline {
            bail!("ota standalone was not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, base))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// POSTs `bodies` to `base` + `path` from [`CONCURRENCY`] clients; how many were answered 200.
async fn post_all(base: &str, path: &str, bodies: Vec<serde_json::Value>) -> usize {
    let client = reqwest::Client::new();
    stream::iter(bodies)
        .map(|body| {
            let client = client.clone();
            let url = format!("{base}{path}");
            async move {
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|response| response.status() == 200)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .fold(0, |sum, ok| async move { sum + usize::from(ok) })
        .await
}

fn device_body(n: usize) -> serde_json::Value {
    json!({
        "platform": "android", "device_id": format!("00000000-0000-4000-8000-{n:012x}"), "app_id": APP,
        "custom_id": "", "version_build": "1.4.0", "version_code": "42", "version_os": "14",
        "version_name": VERSION, "old_version_name": "1.4.2", "plugin_version": "8.51.14",
        "is_emulator": false, "is_prod": true, "defaultChannel": "",
    })
}

/// Kills `ota standalone` right after it acknowledged `requests` `set` events; (acknowledged,
/// stored).
async fn kill_after_stats(work: &std::path::Path, requests: usize) -> anyhow::Result<(usize, i64)> {
    let database = format!("sqlite://{}", work.join("kill-stats.db").display());
    remove_database(work, "kill-stats.db");
    let (mut child, base) = start_standalone(work, &database).await?;
    let bodies = (0..requests)
        .map(|n| {
            let mut body = device_body(n);
            body["action"] = json!("set");
            body
        })
        .collect();
    let acknowledged = post_all(&base, "/stats", bodies).await;
    child.kill()?;
    child.wait()?;
    let store = DeviceStore::open(&database).await?;
    let stored: i64 = store
        .counters(APP, VERSION, 0)
        .await?
        .iter()
        .map(|c| c.count)
        .sum();
    Ok((acknowledged, stored))
}

/// Kills `ota standalone` right after it answered `requests` update checks of distinct
/// devices; (answered, devices stored).
async fn kill_after_checks(work: &std::path::Path, requests: usize) -> anyhow::Result<(usize, i64)> {
    let database = format!("sqlite://{}", work.join("kill-checks.db").display());
    remove_database(work, "kill-checks.db");
    let (mut child, base) = start_standalone(work, &database).await?;
    let answered = post_all(&base, "/updates", (0..requests).map(device_body).collect()).await;
    child.kill()?;
    child.wait()?;
    let store = DeviceStore::open(&database).await?;
    // Every sighting is from "now": the month's active devices are the devices stored.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let stored = store.monthly_active_devices(APP, now_ms).await?;
    Ok((answered, stored))
}

fn remove_database(work: &std::path::Path, name: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(work.join(format!("{name}{suffix}")));
    }
}

/// The flood's settings.
struct FloodSettings {
    events: usize,
    batch: usize,
    clients: usize,
    check_every: Duration,
    baseline_checks: usize,
}

impl FloodSettings {
    fn from_env() -> anyhow::Result<Self> {
        let settings = FloodSettings {
            events: env_number("OTA_BENCH_FLOOD_EVENTS", 1_000_000)? as usize,
            batch: env_number("OTA_BENCH_FLOOD_BATCH", 20)? as usize,
            clients: env_number("OTA_BENCH_FLOOD_CLIENTS", 16)? as usize,
            check_every: Duration::from_millis(env_number("OTA_BENCH_CHECK_EVERY_MS", 50)?),
            baseline_checks: env_number("OTA_BENCH_BASELINE_CHECKS", 400)? as usize,
        };
        if settings.batch == 0 || settings.clients == 0 || settings.baseline_checks == 0 {
            bail!("OTA_BENCH_FLOOD_BATCH, OTA_BENCH_FLOOD_CLIENTS and OTA_BENCH_BASELINE_CHECKS must be > 0");
        }
        Ok(settings)
    }
}

/// The flood, on an SQLite file and (when there is one) on PostgreSQL.
async fn flood_part(
    report: &mut Vec<String>,
    work: &std::path::Path,
    postgres_server: Option<&str>,
) -> anyhow::Result<()> {
    let settings = FloodSettings::from_env()?;
    report.extend([
        String::new(),
        format!(
            "## A flood of {} /stats events (batches of {}, {} connections; random device ids, versions and actions), \
             and one device checking for updates every {} ms",
            settings.events,
            settings.batch,
            settings.clients,
            settings.check_every.as_millis()
        ),
    ]);
    remove_database(work, "flood.db");
    let sqlite = format!("sqlite://{}", work.join("flood.db").display());
    flood(report, work, "SQLite file", &sqlite, &settings).await?;
    remove_database(work, "flood.db");
    match postgres_server {
        Some(server) => {
            let url = fresh_postgres_url(server).await?;
            flood(report, work, "PostgreSQL", &url, &settings).await?;
        }
        None => report.push("PostgreSQL: not run (OTA_TEST_POSTGRES_URL is not set)".to_owned()),
    }
    Ok(())
}

/// What the store holds: bytes (SQLite: the file and its WAL; PostgreSQL: the database) and
/// rows per table.
#[derive(Debug, Clone, Default)]
struct StoreSize {
    bytes: u64,
    rows: Vec<(&'static str, i64)>,
}

async fn store_size(database: &str) -> anyhow::Result<StoreSize> {
    use sqlx::{Connection, postgres::PgConnection, sqlite::SqliteConnection};
    let mut size = StoreSize::default();
    if let Some(path) = database.strip_prefix("sqlite://") {
        for suffix in ["", "-wal"] {
            size.bytes += std::fs::metadata(format!("{path}{suffix}")).map_or(0, |m| m.len());
        }
        let options = std::str::FromStr::from_str(database)
            .map(|o: sqlx::sqlite::SqliteConnectOptions| o.read_only(true))?;
        let mut connection = SqliteConnection::connect_with(&options).await?;
        for (table, query) in STORE_COUNTS {
            let rows: i64 = sqlx::query_scalar(query).fetch_one(&mut connection).await?;
            size.rows.push((table, rows));
        }
    } else {
        let mut connection = PgConnection::connect(database).await?;
        size.bytes = sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())")
            .fetch_one(&mut connection)
            .await? as u64;
        for (table, query) in STORE_COUNTS {
            let rows: i64 = sqlx::query_scalar(query).fetch_one(&mut connection).await?;
            size.rows.push((table, rows));
        }
    }
    Ok(size)
}

/// A `/stats` event of a random device: a random version (one in ten the App's Bundle, the
/// others made up) and a random action (one in eight made up).
fn flood_event(rng: &mut fastrand::Rng) -> serde_json::Value {
    let device_id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        rng.u32(..),
        rng.u16(..),
        rng.u16(..0x1000),
        rng.u16(..0x1000),
        rng.u64(..1 << 48)
    );
    let version = if rng.u8(..10) == 0 {
        FLOOD_BUNDLES[rng.usize(..FLOOD_BUNDLES.len())].to_owned()
    } else {
        format!("{}.{}.{}", rng.u8(..100), rng.u16(..1000), rng.u32(..100_000))
    };
    let action = match rng.u8(..8) {
        0 => "set".to_owned(),
        1 => "update_fail".to_owned(),
        2 => "download_fail".to_owned(),
        3 => "download_complete".to_owned(),
        4 => "app_moved_to_background".to_owned(),
        5 => "download_50".to_owned(),
        6 => "app_moved_to_foreground".to_owned(),
        _ => format!("made_up_{}", rng.u32(..)),
    };
    json!({
        "platform": if rng.bool() { "android" } else { "ios" }, "device_id": device_id, "app_id": APP,
        "custom_id": "", "version_build": "1.4.0", "version_code": "42", "version_os": "14",
        "version_name": version, "old_version_name": "1.4.2", "plugin_version": "8.51.14",
        "is_emulator": false, "is_prod": true, "defaultChannel": "", "action": action,
    })
}

/// The update-check latencies (ms) of the real device, one check every `every`, until `stop`
/// or `limit` checks; (latencies, checks not answered 200).
async fn real_device(
    base: String,
    every: Duration,
    limit: Option<usize>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<f64>, usize) {
    let client = reqwest::Client::new();
    let body = device_body(0x5eed);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while !*stop.borrow() && limit.is_none_or(|limit| latencies.len() < limit) {
        ticks.tick().await;
        let started = Instant::now();
        let answered = client
            .post(format!("{base}/updates"))
            .json(&body)
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        failed += usize::from(!answered);
    }
    (latencies, failed)
}

/// The `q` quantile of `values` (0 for none).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

/// A field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One flood against `ota standalone` on `database`; its lines of the report.
async fn flood(
    report: &mut Vec<String>,
    work: &std::path::Path,
    label: &str,
    database: &str,
    settings: &FloodSettings,
) -> anyhow::Result<()> {
    let (mut child, base) = start_standalone_with(work, database, Some(FLOOD_APP_YAML)).await?;
    let pid = child.id();
    let result = flood_against(report, label, database, &base, pid, settings).await;
    child.kill()?;
    child.wait()?;
    result
}

async fn flood_against(
    report: &mut Vec<String>,
    label: &str,
    database: &str,
    base: &str,
    pid: u32,
    settings: &FloodSettings,
) -> anyhow::Result<()> {
    // The real device alone first: its p99 with no flood.
    let (_, never) = tokio::sync::watch::channel(false);
    let (quiet, quiet_failed) = real_device(
        base.to_owned(),
        settings.check_every,
        Some(settings.baseline_checks),
        never,
    )
    .await;
    let before = store_size(database).await?;
    let rss_before = status_kib(pid, "VmRSS:");

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let checker = tokio::spawn(real_device(
        base.to_owned(),
        settings.check_every,
        None,
        stop.clone(),
    ));
    let sampler = {
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(status_kib(pid, "VmRSS:"));
                tokio::select! {
                    _ = stop.changed() => return peak,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        })
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.clients)
        .build()?;
    let batches = settings.events.div_ceil(settings.batch);
    // Only events naming a Bundle may add a device, an outcome or a failed mark.
    let naming_a_bundle = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let statuses: std::collections::BTreeMap<u16, usize> = stream::iter(0..batches)
        .map(|index| {
            let client = client.clone();
            let url = format!("{base}/stats");
            let size = settings.batch.min(settings.events - index * settings.batch);
            let mut rng = fastrand::Rng::with_seed(index as u64);
            let events: Vec<serde_json::Value> = (0..size).map(|_| flood_event(&mut rng)).collect();
            let named = events
                .iter()
                .filter(|event| FLOOD_BUNDLES.contains(&event["version_name"].as_str().unwrap_or_default()))
                .count();
            naming_a_bundle.fetch_add(named, std::sync::atomic::Ordering::Relaxed);
            let body = serde_json::Value::Array(events);
            async move {
                let status = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_or(0, |response| response.status().as_u16());
                (status, size)
            }
        })
        .buffer_unordered(settings.clients)
        .fold(
            std::collections::BTreeMap::new(),
            |mut sum, (status, size)| async move {
                *sum.entry(status).or_default() += size;
                sum
            },
        )
        .await;
    let flood_time = started.elapsed();
    stop_tx.send(true)?;
    let (during, during_failed) = checker.await?;
    let peak_sampled = sampler.await?;
    // The sightings of the last batches are written within a flush and merged when idle.
    tokio::time::sleep(SERVER_FLUSH_EVERY * 15).await;
    let after = store_size(database).await?;
    let hwm = status_kib(pid, "VmHWM:");
    let rss_after = status_kib(pid, "VmRSS:");

    let acknowledged = statuses.get(&200).copied().unwrap_or(0);
    let answers: Vec<String> = statuses
        .iter()
        .map(|(status, events)| match status {
            0 => format!("{events} events: no answer"),
            status => format!("{events} events: {status}"),
        })
        .collect();
    let peak_mib = common::mib(hwm.max(peak_sampled));
    report.push(String::new());
    report.push(format!("### {label}"));
    report.push(format!(
        "- {} events in {:.1} s ({:.0} events/s; {})",
        settings.events,
        flood_time.as_secs_f64(),
        settings.events as f64 / flood_time.as_secs_f64(),
        answers.join(", ")
    ));
    report.push(format!(
        "- peak RSS of the server (VmHWM): {peak_mib:.1} MiB (target ≤ {FLOOD_RSS_TARGET_MIB} MiB) {}; RSS {:.1} MiB before the flood, {:.1} MiB after",
        verdict(peak_mib <= FLOOD_RSS_TARGET_MIB),
        common::mib(rss_before),
        common::mib(rss_after)
    ));
    let grown = after.bytes.saturating_sub(before.bytes);
    report.push(format!(
        "- store: {:.1} MiB before, {:.1} MiB after (+{:.1} MiB, {:.0} bytes per event acknowledged)",
        before.bytes as f64 / 1048576.0,
        after.bytes as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        grown as f64 / acknowledged.max(1) as f64
    ));
    let rows: Vec<String> = before
        .rows
        .iter()
        .zip(&after.rows)
        .map(|((table, was), (_, is))| format!("{table} {was} → {is}"))
        .collect();
    report.push(format!("- rows: {}", rows.join(", ")));
    let counter_rows = after
        .rows
        .iter()
        .find(|(table, _)| *table == "counters")
        .map_or(0, |(_, rows)| *rows);
    // A flood across midnight (UTC) counts on two days.
    let bound = 2 * counter_rows_per_day(FLOOD_BUNDLES.len());
    report.push(format!(
        "- counter rows: {counter_rows} (bound: {} a day for an App of {} Bundle) {}",
        counter_rows_per_day(FLOOD_BUNDLES.len()),
        FLOOD_BUNDLES.len(),
        verdict(counter_rows as usize <= bound)
    ));
    let naming_a_bundle = naming_a_bundle.load(std::sync::atomic::Ordering::Relaxed);
    let grown_rows = |table: &str| {
        let rows_of = |size: &StoreSize| {
            size.rows
                .iter()
                .find(|(name, _)| *name == table)
                .map_or(0, |(_, rows)| *rows)
        };
        usize::try_from(rows_of(&after) - rows_of(&before)).unwrap_or(0)
    };
    // A device's row comes from the log's merge: count both until it has run.
    let devices = grown_rows("devices") + grown_rows("creating sightings");
    let (outcomes, failed_marks) = (grown_rows("device_outcomes"), grown_rows("failed_marks"));
    report.push(format!(
        "- new devices (rows and update checks not merged) {devices}, outcomes {outcomes}, failed marks {failed_marks}; \
         bound for each: the {naming_a_bundle} events naming a Bundle {}",
        verdict(devices.max(outcomes).max(failed_marks) <= naming_a_bundle)
    ));
    let (quiet_p50, quiet_p99) = (quantile(&quiet, 0.5), quantile(&quiet, 0.99));
    let (p50, p99) = (quantile(&during, 0.5), quantile(&during, 0.99));
    report.push(format!(
        "- the real device's update checks: no flood p50 {quiet_p50:.1} ms, p99 {quiet_p99:.1} ms ({} checks, {quiet_failed} not 200); \
         during the flood p50 {p50:.1} ms, p99 {p99:.1} ms ({} checks, {during_failed} not 200): p99 ratio {:.1}",
        quiet.len(),
        during.len(),
        p99 / quiet_p99.max(f64::MIN_POSITIVE)
    ));
    eprintln!("{label}: {}", report[report.len() - 6..].join("\n"));
    Ok(())
}
