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
use ota_operator::devices::{
    DeviceMemory, DeviceSeen, DeviceStore, OutcomeReport, SERVER_FLUSH_EVERY, SERVER_MAX_BATCH,
    SERVER_QUEUE_CAPACITY, Write, WriteQueue,
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
    let work = std::env::current_dir()?.join("target/bench/durability");
    std::fs::create_dir_all(&work)?;
    let mut report = vec![
        "# Durable acknowledgements".to_owned(),
        format!("machine: {}", machine()),
        format!("{events} events per round, {rounds} rounds per path (medians)"),
        String::new(),
        format!(
            "| store | requests in flight | async events/s | durable events/s | ratio (target ≥ {TARGET_RATIO}) | |"
        ),
        "|---|---|---|---|---|---|".to_owned(),
    ];
    let sqlite_dir = work.join("sqlite");
    let _ = std::fs::remove_dir_all(&sqlite_dir);
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let postgres_server = std::env::var("OTA_TEST_POSTGRES_URL").ok();
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
        match &postgres_server {
            Some(server) => {
                let postgres = throughput("postgres", events, rounds, concurrency, || {
                    let server = server.clone();
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
    report.push(String::new());
    let (acknowledged, stored) = kill_after_stats(&work, kill_requests).await?;
    report.push(format!(
        "SIGKILL right after the last of {acknowledged} acknowledged /stats events: {} lost (target 0) {}",
        acknowledged as i64 - stored,
        verdict(stored == acknowledged as i64)
    ));
    let (answered, sighted) = kill_after_checks(&work, kill_requests).await?;
    report.push(format!(
        "SIGKILL right after the last of {answered} answered update checks (distinct devices): {} sightings lost ({:.1}%; \
         sightings are written in batches every {} ms, the window a kill can lose)",
        answered as i64 - sighted,
        100.0 * (answered as i64 - sighted) as f64 / answered as f64,
        SERVER_FLUSH_EVERY.as_millis()
    ));
    println!("{}", report.join("\n"));
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
    Ok(DeviceStore::open(&url).await?)
}

/// `ota standalone` (this build's binary) on a copy of examples/standalone under `work`, with
/// its store in `database`; its child and base URL once ready.
async fn start_standalone(work: &std::path::Path, database: &str) -> anyhow::Result<(Child, String)> {
    let dir = work.join("standalone");
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&std::env::current_dir()?.join("examples/standalone"), &dir)?;
    // Rate limits off: the load comes from 127.0.0.1 as fast as the server answers, one client
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
