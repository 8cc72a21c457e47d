//! The fleet benchmark: 100,000 simulated devices against `ota standalone` while Rollouts move
//! their channel (the devices of tests/support/fleet.rs, speaking the plugin protocol over a
//! few pooled connections).
//!
//! `cargo bench --bench fleet` (or `tests/bench/fleet.sh`, which keeps the report in
//! target/bench/fleet.txt) measures the two targets of issue 6:
//!
//! 1. **Share vs percent.** A Rollout of `setPercent` steps separated by pauses until promoted
//!    (1, 5, 10, 25, 50, 100). At each step (promoted through the YAML's `ota.dev/promote`
//!    annotation, once the server serves it) every device checks once; the share of the fleet
//!    then running the candidate must be within ±1 percentage point of the step's percent.
//! 2. **Abort latency.** A second Rollout (10% of a fresh fleet; the candidate fails on a
//!    deterministic 30% of devices; background analysis every `OTA_BENCH_INTERVAL_SECONDS`,
//!    `minAttempts` `OTA_BENCH_MIN_ATTEMPTS`, maxFailureRate 5% at 95% confidence, rollback).
//!    The threshold is crossed when the reports the server has acknowledged so far first reach
//!    `minAttempts` with a Wilson lower bound above 5% (computed here, with the core's own
//!    statistics); the abort is served when a probe device in the cohort, polling every 10 ms,
//!    is first offered the stable bundle back. The time between the two must be at most
//!    2 × the interval: the report gives it as a ratio of the interval.
//! 3. **Prometheus-gated rollback** (issue 13; tests/support/gated_rollback.rs). A third Rollout
//!    (10% of a fresh fleet, every install successful) gated on one Prometheus metric measured
//!    every `OTA_BENCH_INTERVAL_SECONDS`: the candidate's checkout error rate, served by an
//!    exporter this process sets and scraped every second by a real Prometheus server
//!    (tests/prometheus/prometheus.sh, started by tests/bench/fleet.sh, or by this process when
//!    OTA_TEST_PROMETHEUS_URL is not set), failing above 5%, rollback. The bench raises the
//!    error rate; the metric has crossed its threshold when Prometheus first answers the new
//!    value; the stable bundle is served again when a probe device of the cohort is first
//!    offered it. Target: at most 2 × the metric's interval.
//!
//! The report also says how loaded the machine was: the CPU time the server and this process
//! (the devices) took, and what other processes took meanwhile. Without `--bench` (what `cargo
//! test --benches` passes) it only writes a world and checks that standalone mode reads it.
//!
//! Settings (environment): `OTA_BENCH_DEVICES` (100000), `OTA_BENCH_CONCURRENCY` (64: devices
//! checking at once, and connections), `OTA_BENCH_INTERVAL_SECONDS` (2),
//! `OTA_BENCH_MIN_ATTEMPTS` (500).

mod common;
#[path = "../tests/support/fleet.rs"]
mod fleet;
#[path = "../tests/support/gated_rollback.rs"]
mod gated_rollback;
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use common::{cpu_of, env_number, machine, machine_cpu, verdict};
use fleet::{Device, Fleet, Standalone, candidate_bundle, failing_share, no_failures, stable_bundle};
use ota_operator::{
    api::{RolloutStatus, rollout::RolloutPhase},
    core::{
        cohort::in_cohort,
        rollout::{inverse_normal_cdf, wilson_lower_bound},
    },
    devices::DeviceStore,
    standalone::rollouts::read_states,
};

/// The percents of the share run.
const PERCENTS: [u32; 6] = [1, 5, 10, 25, 50, 100];
/// The largest distance allowed between a step's percent and the share on the candidate.
const SHARE_TOLERANCE_POINTS: f64 = 1.0;
/// The abort must be served within this many analysis intervals of the threshold being crossed.
const ABORT_TARGET_INTERVALS: f64 = 2.0;
/// The abort run: percent of the fleet offered the candidate, and the share that fails with it.
const ABORT_PERCENT: u32 = 10;
const FAILING_PERCENT: u32 = 30;
const MAX_FAILURE_RATE: f64 = 0.05;
const CONFIDENCE: f64 = 0.95;
const ROLLOUT: &str = "fleet-1.1.0";

struct Settings {
    devices: usize,
    concurrency: usize,
    interval: Duration,
    min_attempts: u64,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        Ok(Settings {
            devices: usize::try_from(env_number("OTA_BENCH_DEVICES", 100_000)?)?,
            concurrency: usize::try_from(env_number("OTA_BENCH_CONCURRENCY", 64)?)?.max(1),
            interval: Duration::from_secs(env_number("OTA_BENCH_INTERVAL_SECONDS", 2)?.max(1)),
            min_attempts: env_number("OTA_BENCH_MIN_ATTEMPTS", 500)?.max(1),
        })
    }
}

fn main() -> ExitCode {
    let result = if std::env::args().any(|a| a == "--bench") {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("a Tokio runtime")
            .and_then(|runtime| runtime.block_on(run()))
    } else {
        smoke()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleet bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn share_rollout(annotations: &str) -> String {
    let steps: Vec<String> = PERCENTS
        .iter()
        .enumerate()
        .flat_map(|(i, percent)| {
            let pause = (i + 1 < PERCENTS.len()).then(|| "{pause: {}}".to_owned());
            std::iter::once(format!("{{setPercent: {percent}}}")).chain(pause)
        })
        .collect();
    format!(
        "apiVersion: ota.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: {ROLLOUT}\n  annotations: {annotations}\n\
         spec:\n  channelRef: production\n  bundleRef: {ROLLOUT}\n  steps: [{}]\n  analysis: {{interval: 1h}}\n",
        steps.join(", ")
    )
}

fn abort_rollout(settings: &Settings) -> String {
    format!(
        "apiVersion: ota.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: {ROLLOUT}\n\
         spec:\n  channelRef: production\n  bundleRef: {ROLLOUT}\n  steps: [{{setPercent: {ABORT_PERCENT}}}, {{pause: {{}}}}]\n  \
         analysis: {{interval: {}s, minAttempts: {}, maxFailureRate: {MAX_FAILURE_RATE}, confidence: {CONFIDENCE}, \
         window: 1h, action: rollback}}\n",
        settings.interval.as_secs(),
        settings.min_attempts
    )
}

/// `cargo test --benches`: the worlds are read by standalone mode as they are written.
fn smoke() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let gated = gated_rollback::rollout_yaml("http://127.0.0.1:9090", "smoke", settings.interval);
    for rollout in [share_rollout("{}"), abort_rollout(&settings), gated] {
        let dir = tempfile::tempdir()?;
        fleet::write_world(dir.path(), &stable_bundle(), &candidate_bundle(), &rollout);
        let loaded = ota_operator::standalone::load::load(dir.path())?;
        if !loaded.problems.is_empty() || loaded.rollouts.len() != 1 || loaded.bundles.len() != 2 {
            bail!("the bench's world does not load: {:?}", loaded.problems);
        }
    }
    // The failing share is what the scenario says.
    let failing = (0..10_000)
        .filter(|i| fleet::device_draw(&fleet::device_id(1, *i)) < FAILING_PERCENT)
        .count();
    if !(2_700..=3_300).contains(&failing) {
        bail!("{failing} of 10,000 devices fail, not about 30%");
    }
    println!("fleet bench: smoke test passed (run with --bench to measure)");
    Ok(())
}

async fn status_of(store: &DeviceStore) -> anyhow::Result<Option<RolloutStatus>> {
    Ok(read_states(store)
        .await?
        .rollouts
        .get(&("default".to_owned(), ROLLOUT.to_owned()))
        .cloned())
}

/// Waits until the server serves `percent`: the saved status says so, and a device whose bucket
/// is in the `percent` cohort but not the `percent - 1` one (so only a server at `percent` or
/// above offers it anything) is offered the candidate. Returns the salt.
async fn wait_served(
    server: &Standalone,
    store: &DeviceStore,
    client: &reqwest::Client,
    percent: u32,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let salt = loop {
        if let Some(status) = status_of(store).await?
            && status.current_percent == Some(percent as i32)
        {
            break status.salt.context("a salt in the status")?;
        }
        if Instant::now() > deadline {
            bail!("the server did not reach {percent}% within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let probe = (0..)
        .map(|i| fleet::device_id(0xfeed, i))
        .find(|id| in_cohort(&salt, id, percent) && !in_cohort(&salt, id, percent - 1))
        .context("a probe device")?;
    let device = Device {
        id: probe,
        version: "1.0.0".to_owned(),
    };
    loop {
        if fleet::offered(client, &server.base(), &device)
            .await
            .map_err(anyhow::Error::msg)?
            .as_deref()
            == Some("1.1.0")
        {
            return Ok(salt);
        }
        if Instant::now() > deadline {
            bail!("{percent}% was not served within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct StepFigures {
    percent: u32,
    share: f64,
    /// The share of the fleet in the cohort, from the salted hash computed here.
    cohort: f64,
    seconds: f64,
    checks: usize,
}

/// CPU seconds of the machine (busy, total) and of the benchmark's own processes.
struct CpuMark {
    machine_busy: f64,
    machine_total: f64,
    ours: f64,
}

fn cpu_mark(server_pid: Option<u32>) -> CpuMark {
    let (machine_busy, machine_total) = machine_cpu();
    let own = cpu_of(std::process::id()).0;
    let server = server_pid.map_or(0.0, |pid| cpu_of(pid).0);
    CpuMark {
        machine_busy,
        machine_total,
        ours: own + server,
    }
}

/// The share of the machine's CPU that other processes took between two marks, and ours.
fn load_between(start: &CpuMark, end: &CpuMark, server_cpu: f64) -> (f64, f64) {
    let total = (end.machine_total - start.machine_total).max(f64::EPSILON);
    let busy = end.machine_busy - start.machine_busy;
    let ours = end.ours - start.ours + server_cpu;
    (
        ((busy - ours) / total).clamp(0.0, 1.0),
        (ours / total).clamp(0.0, 1.0),
    )
}

async fn share_run(settings: &Settings) -> anyhow::Result<(Vec<StepFigures>, f64)> {
    let dir = tempfile::tempdir()?;
    fleet::write_world(
        dir.path(),
        &stable_bundle(),
        &candidate_bundle(),
        &share_rollout("{}"),
    );
    let server = Standalone::start(dir.path(), &[]).await;
    let store = DeviceStore::open(&server.database_url()).await?;
    let mut fleet = Fleet::new(7, settings.devices, "1.0.0", settings.concurrency);
    let mut steps = Vec::new();
    let server_cpu_start = server.pid().map_or(0.0, |pid| cpu_of(pid).0);
    for (index, percent) in PERCENTS.into_iter().enumerate() {
        if index > 0 {
            fleet::write_rollout(
                dir.path(),
                &share_rollout(&format!("{{ota.dev/promote: \"{index}\"}}")),
            );
        }
        let salt = wait_served(&server, &store, fleet.client(), percent).await?;
        let in_the_cohort = fleet
            .devices
            .iter()
            .filter(|d| in_cohort(&salt, &d.id, percent))
            .count();
        let round = fleet.round(&server.base(), &no_failures()).await;
        let broken = round.broken();
        if !broken.is_empty() {
            bail!(
                "{} devices saw broken answers at {percent}%, e.g. {:?}",
                broken.len(),
                &broken[..broken.len().min(3)]
            );
        }
        let on_candidate = fleet.versions().get("1.1.0").copied().unwrap_or(0);
        let figures = StepFigures {
            percent,
            share: on_candidate as f64 * 100.0 / settings.devices as f64,
            cohort: in_the_cohort as f64 * 100.0 / settings.devices as f64,
            seconds: (round.finished - round.started).as_secs_f64(),
            checks: settings.devices,
        };
        eprintln!(
            "fleet bench: {percent}%: {:.2}% of devices on the candidate ({:.1} s)",
            figures.share, figures.seconds
        );
        steps.push(figures);
    }
    let server_cpu = server.pid().map_or(0.0, |pid| cpu_of(pid).0) - server_cpu_start;
    Ok((steps, server_cpu))
}

struct AbortFigures {
    /// From the threshold crossed to the abort served.
    latency: Duration,
    attempts_at_crossing: u64,
    failures_at_crossing: u64,
    status: RolloutStatus,
    devices_on_candidate: usize,
}

async fn abort_run(settings: &Settings) -> anyhow::Result<(AbortFigures, f64)> {
    let dir = tempfile::tempdir()?;
    fleet::write_world(
        dir.path(),
        &stable_bundle(),
        &candidate_bundle(),
        &abort_rollout(settings),
    );
    let server = Standalone::start(dir.path(), &[]).await;
    let server_cpu_start = server.pid().map_or(0.0, |pid| cpu_of(pid).0);
    let store = DeviceStore::open(&server.database_url()).await?;
    let mut fleet = Fleet::new(8, settings.devices, "1.0.0", settings.concurrency);
    let salt = wait_served(&server, &store, fleet.client(), ABORT_PERCENT).await?;
    // The probe runs the candidate, in the cohort: offered the stable bundle once aborted.
    let probe = Device {
        id: (0..)
            .map(|i| fleet::device_id(0xabcd, i))
            .find(|id| in_cohort(&salt, id, ABORT_PERCENT))
            .context("a probe device")?,
        version: "1.1.0".to_owned(),
    };
    let client = fleet.client().clone();
    let base = server.base();
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if let Ok(Some(version)) = fleet::offered(&client, &base, &probe).await
                && version == "1.0.0"
            {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    });
    let fails = failing_share("1.1.0", FAILING_PERCENT);
    let round = fleet.round(&server.base(), &fails).await;
    // The threshold as the analysis sees it, from the reports the server acknowledged.
    let mut reports: Vec<(Instant, bool)> = round
        .outcomes
        .iter()
        .zip(&round.reported_at)
        .filter_map(|((_, outcome), at)| match outcome {
            fleet::Outcome::Set(v) if v == "1.1.0" => at.map(|at| (at, false)),
            fleet::Outcome::Failed(_) => at.map(|at| (at, true)),
            _ => None,
        })
        .collect();
    reports.sort_by_key(|(at, _)| *at);
    let z = inverse_normal_cdf(CONFIDENCE).context("a quantile")?;
    let (mut attempts, mut failures) = (0u64, 0u64);
    let mut crossing = None;
    for (at, failed) in &reports {
        attempts += 1;
        failures += u64::from(*failed);
        if attempts >= settings.min_attempts
            && wilson_lower_bound(failures, attempts, z).is_some_and(|bound| bound > MAX_FAILURE_RATE)
        {
            crossing = Some(*at);
            break;
        }
    }
    let crossing = crossing.with_context(|| {
        format!(
            "the reports never crossed the threshold ({} reports, {} of them failures)",
            reports.len(),
            reports.iter().filter(|(_, f)| *f).count()
        )
    })?;
    let served = watcher.await?.context("the abort was not served within 600 s")?;
    let status = status_of(&store).await?.context("a status")?;
    if status.phase != Some(RolloutPhase::Aborted) {
        bail!("the rollout is not aborted: {status:?}");
    }
    let server_cpu = server.pid().map_or(0.0, |pid| cpu_of(pid).0) - server_cpu_start;
    Ok((
        AbortFigures {
            latency: served.saturating_duration_since(crossing),
            attempts_at_crossing: attempts,
            failures_at_crossing: failures,
            status,
            devices_on_candidate: fleet.versions().get("1.1.0").copied().unwrap_or(0),
        },
        server_cpu,
    ))
}

async fn gated_run(settings: &Settings) -> anyhow::Result<(gated_rollback::GatedFigures, f64)> {
    let exporter = support::exporter::Exporter::start("bench-gated").await;
    let prometheus = support::exporter::prometheus_url();
    let client = reqwest::Client::new();
    gated_rollback::serve_healthy(&exporter, &client, prometheus)
        .await
        .map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    fleet::write_world(
        dir.path(),
        &stable_bundle(),
        &candidate_bundle(),
        &gated_rollback::rollout_yaml(prometheus, exporter.label(), settings.interval),
    );
    let server = Standalone::start(dir.path(), &[]).await;
    let server_cpu_start = server.pid().map_or(0.0, |pid| cpu_of(pid).0);
    let store = DeviceStore::open(&server.database_url()).await?;
    let mut fleet = Fleet::new(9, settings.devices, "1.0.0", settings.concurrency);
    let figures = gated_rollback::run(&server.base(), &store, &exporter, prometheus, &mut fleet)
        .await
        .map_err(anyhow::Error::msg)?;
    let server_cpu = server.pid().map_or(0.0, |pid| cpu_of(pid).0) - server_cpu_start;
    Ok((figures, server_cpu))
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    eprintln!(
        "fleet bench: {} devices, {} at once; building the world",
        settings.devices, settings.concurrency
    );
    let start = cpu_mark(None);
    let wall = Instant::now();
    let (steps, share_server_cpu) = share_run(&settings).await?;
    let (abort, abort_server_cpu) = abort_run(&settings).await?;
    let (gated, gated_server_cpu) = gated_run(&settings).await?;
    let end = cpu_mark(None);
    let elapsed = wall.elapsed().as_secs_f64();
    let (others, ours) = load_between(
        &start,
        &end,
        share_server_cpu + abort_server_cpu + gated_server_cpu,
    );

    println!(
        "# Fleet benchmark (issues 6 and 13): {} simulated devices against ota standalone",
        settings.devices
    );
    println!();
    println!("machine: {}", machine());
    println!(
        "load: this benchmark (devices and server) took {:.0}% of the machine's CPU over {elapsed:.0} s, other processes {:.0}%{}",
        ours * 100.0,
        others * 100.0,
        if others > 0.10 {
            " (a busy machine: the times below are pessimistic)"
        } else {
            ""
        }
    );
    println!(
        "server CPU: {:.1} s for the share run, {:.1} s for the abort run, {:.1} s for the Prometheus-gated run",
        share_server_cpu, abort_server_cpu, gated_server_cpu
    );
    println!();
    println!(
        "## Share of devices on the candidate at each step (target: within ±{SHARE_TOLERANCE_POINTS} point)"
    );
    println!();
    println!(
        "| step percent | share on candidate | share / percent | distance (points) | the cohort's share | round (s) | checks/s | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut all_within = true;
    for step in &steps {
        let distance = step.share - f64::from(step.percent);
        let within = distance.abs() <= SHARE_TOLERANCE_POINTS;
        all_within &= within;
        println!(
            "| {}% | {:.3}% | {:.4} | {:+.3} | {:.3}% | {:.1} | {:.0} | {} |",
            step.percent,
            step.share,
            step.share / f64::from(step.percent),
            distance,
            step.cohort,
            step.seconds,
            step.checks as f64 / step.seconds.max(f64::EPSILON),
            verdict(within)
        );
    }
    println!();
    let ratio = abort.latency.as_secs_f64() / settings.interval.as_secs_f64();
    let figures = abort.status.analysis.as_ref();
    println!("## Abort latency (target: at most {ABORT_TARGET_INTERVALS} × the analysis interval)");
    println!();
    println!(
        "- rollout at {ABORT_PERCENT}%, {FAILING_PERCENT}% of devices fail with the candidate; analysis every {} s, \
         minAttempts {}, maxFailureRate {MAX_FAILURE_RATE} at {CONFIDENCE} confidence, action rollback",
        settings.interval.as_secs(),
        settings.min_attempts
    );
    println!(
        "- threshold crossed at {} acknowledged reports ({} failures)",
        abort.attempts_at_crossing, abort.failures_at_crossing
    );
    if let Some(figures) = figures {
        println!(
            "- the abort's figures: {} failures in {} attempts (rate {:.3}, lower bound {:.3})",
            figures.failures, figures.attempts, figures.failure_rate, figures.lower_bound
        );
    }
    println!(
        "- crossed → served: {:.3} s = {ratio:.2} × the interval: {}",
        abort.latency.as_secs_f64(),
        verdict(ratio <= ABORT_TARGET_INTERVALS)
    );
    println!(
        "- devices left on the candidate after the round: {} (they go back at their next check)",
        abort.devices_on_candidate
    );
    println!();
    let gated_ratio = gated.latency.as_secs_f64() / settings.interval.as_secs_f64();
    println!(
        "## Prometheus-gated rollback (target: at most {ABORT_TARGET_INTERVALS} × the metric's interval)"
    );
    println!();
    println!(
        "- rollout at {}%, every install successful ({} devices installed the candidate); metric {} measured every {} s, \
         failureCondition result > {}, action rollback; the exporter's error rate raised from {} to {}",
        gated_rollback::PERCENT,
        gated.installed,
        gated_rollback::METRIC,
        settings.interval.as_secs(),
        gated_rollback::THRESHOLD,
        gated_rollback::HEALTHY,
        gated_rollback::BROKEN
    );
    println!(
        "- from the exporter's new value to Prometheus answering it (a scrape): {:.3} s",
        gated.scrape_lag.as_secs_f64()
    );
    if let Some(metric) = gated.status.metrics.first() {
        println!(
            "- the metric when aborted: {:?}, {} measurements ({} successful, {} failed, {} errors)",
            metric.phase, metric.measurements, metric.successful, metric.failed, metric.errors
        );
    }
    println!(
        "- crossed → stable served again: {:.3} s = {gated_ratio:.2} × the interval: {}",
        gated.latency.as_secs_f64(),
        verdict(gated_ratio <= ABORT_TARGET_INTERVALS)
    );
    println!();
    println!(
        "verdict: share {}, abort latency {}, Prometheus-gated rollback {}",
        verdict(all_within),
        verdict(ratio <= ABORT_TARGET_INTERVALS),
        verdict(gated_ratio <= ABORT_TARGET_INTERVALS)
    );
    Ok(())
}
