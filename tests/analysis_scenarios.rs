//! Rollouts gated on analysis metrics, end to end in standalone mode against real parts on
//! 127.0.0.1 (issue 13, point 5): the test Prometheus server (tests/prometheus/prometheus.sh)
//! scraping an exporter whose values the test sets (tests/support/exporter.rs), and a real HTTP
//! server playing a web metrics service. Standalone mode runs in this process on a test clock
//! (tests/support/fleet.rs's `InProcessStandalone`) with the real metric providers; simulated
//! devices speak the plugin protocol to it and every one of them installs the candidate
//! successfully, so only the metrics can stop the rollout. Each metric is measured every
//! second of the test clock (the shortest interval the settings allow), which the test moves by
//! hand once Prometheus answers what it should. Run with
//! `tests/run.sh --test analysis_scenarios`.
//!
//! Scenarios: the candidate's backend error rate rising in Prometheus rolls it back; a
//! Prometheus outage longer than `consecutiveErrorLimit` measurements pauses the rollout
//! (MetricsUnavailable), which resumes by itself and completes once Prometheus answers again;
//! a failing `dryRun` metric is reported and the rollout completes; a web provider answering
//! garbage is an Error with a clear message and pauses the rollout. The first scenario runs in
//! a cluster too (`cluster_*`: the objects in the real test API server, the controller with the
//! real providers and the update server in this process, tests/support/fleet_cluster.rs). Also
//! a small run of the
//! fleet benchmark's "Prometheus-gated rollback" (tests/support/gated_rollback.rs) on the real
//! `ota` binary and the wall clock.

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/fleet_cluster.rs"]
mod fleet_cluster;
#[path = "support/gated_rollback.rs"]
mod gated_rollback;
mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::RawQuery, http::header, routing::get};
use ota_operator::{
    api::{
        RolloutStatus,
        rollout::{MeasurementPhase, MetricPhase, RolloutPhase},
    },
    devices::DeviceStore,
    standalone::rollouts::read_states,
};
use serde_json::{Value, json};
use support::exporter::{Exporter, prometheus_url};
use tokio::task::JoinHandle;

use fleet::{Fleet, InProcessStandalone, candidate_bundle, no_failures, stable_bundle};
use gated_rollback::{BROKEN, ROLLOUT, SERIES, THRESHOLD};

/// Devices per scenario.
const DEVICES: usize = 40;
/// Every metric's interval, the shortest the settings allow (MIN_ANALYSIS_PERIOD).
const INTERVAL: Duration = Duration::from_secs(1);
/// The longest a wait for the server may take.
const WAIT: Duration = Duration::from_secs(30);

/// The Rollout of the candidate on `production` with these steps and metrics (rollback when
/// one fails).
fn rollout(steps: Value, metrics: Value) -> String {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": ROLLOUT},
        "spec": {
            "channelRef": "production", "bundleRef": ROLLOUT, "steps": steps,
            // The devices' own figures are judged every second too: they never stop the rollout.
            "analysis": {"interval": "1s", "window": "720h", "action": "rollback", "metrics": metrics},
        },
    })
    .to_string()
}

/// The checkout error rate of `{{candidate}}` in Prometheus at `address`, failing above
/// [`THRESHOLD`].
fn error_rate_metric(address: &str, exporter: &Exporter) -> Value {
    json!({
        "name": "checkout-errors", "interval": "1s",
        "prometheus": {"address": address, "query": gated_rollback::query(exporter.label()), "timeout": "2s"},
        "failureCondition": format!("result > {THRESHOLD}"),
    })
}

/// An exporter serving the healthy error rate, already answered by Prometheus.
async fn healthy_exporter(prefix: &str) -> Exporter {
    let exporter = Exporter::start(prefix).await;
    gated_rollback::serve_healthy(&exporter, &reqwest::Client::new(), prometheus_url())
        .await
        .expect("Prometheus answers the healthy value");
    exporter
}

/// Waits until Prometheus answers `value` for the exporter's series.
async fn prometheus_answers(exporter: &Exporter, value: f64) {
    gated_rollback::wait_for_value(
        &reqwest::Client::new(),
        prometheus_url(),
        &gated_rollback::query_for_candidate(exporter.label()),
        value,
    )
    .await
    .expect("Prometheus answers the new value");
}

/// Standalone mode serving the world with `rollout`, and a fleet on the stable bundle.
struct Scenario {
    _dir: tempfile::TempDir,
    server: InProcessStandalone,
    store: DeviceStore,
    fleet: Fleet,
}

impl Scenario {
    async fn start(rollout: &str, seed: u32) -> Scenario {
        let dir = tempfile::tempdir().expect("a temporary folder");
        fleet::write_world(dir.path(), &stable_bundle(), &candidate_bundle(), rollout);
        let server = InProcessStandalone::start(dir.path()).await;
        let store = DeviceStore::open(&server.database_url())
            .await
            .expect("the server's device store opens beside it");
        Scenario {
            _dir: dir,
            server,
            store,
            fleet: Fleet::new(seed, DEVICES, "1.0.0", 8),
        }
    }

    async fn status(&self) -> Option<RolloutStatus> {
        read_states(&self.store)
            .await
            .expect("the rollout states read")
            .rollouts
            .get(&("default".to_owned(), ROLLOUT.to_owned()))
            .cloned()
    }

    /// Polls the status until `done` holds; panics with the status and logs after [`WAIT`].
    async fn until(&self, what: &str, done: impl Fn(&RolloutStatus) -> bool) -> RolloutStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if let Some(status) = status.as_ref().filter(|s| done(s)) {
                return status.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; the status: {status:#?}\nlogs:\n{}",
                self.server.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves the clock one metric interval on and waits for the measurement it brings.
    async fn measure(&self) -> RolloutStatus {
        let before = self.status().await.as_ref().and_then(last_measured);
        self.server.clock.advance(INTERVAL);
        self.until("a new measurement", |s| last_measured(s) > before)
            .await
    }

    /// Moves the clock one metric interval at a time (each waiting for the measurement it
    /// brings, or a second) until `done` holds, checking `always` of every status on the way.
    async fn advance_until(
        &self,
        what: &str,
        done: impl Fn(&RolloutStatus) -> bool,
        always: impl Fn(&RolloutStatus),
    ) -> RolloutStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if let Some(status) = &status {
                always(status);
                if done(status) {
                    return status.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; the status: {status:#?}\nlogs:\n{}",
                self.server.logs()
            );
            let before = status.as_ref().and_then(last_measured);
            self.server.clock.advance(INTERVAL);
            let waiting = Instant::now() + Duration::from_secs(1);
            while Instant::now() < waiting {
                let now = self.status().await;
                if now.as_ref().is_some_and(|s| last_measured(s) > before || done(s)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Every device checks once and installs what it is offered, successfully.
    async fn round(&mut self) {
        let round = self.fleet.round(&self.server.base(), &no_failures()).await;
        assert_eq!(round.broken(), Vec::new(), "devices saw broken answers");
    }

    /// Rounds of the fleet until every device runs `version` (the server serves a decision
    /// right after saving it).
    async fn rounds_until_all_on(&mut self, version: &str) {
        for _ in 0..20 {
            self.round().await;
            if self.on(version) == DEVICES {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the devices run {:?}, not all {version}", self.fleet.versions());
    }

    fn on(&self, version: &str) -> usize {
        self.fleet.versions().get(version).copied().unwrap_or(0)
    }
}

/// When the latest measurement of any metric was taken.
fn last_measured(status: &RolloutStatus) -> Option<k8s_openapi::jiff::Timestamp> {
    status
        .metrics
        .iter()
        .filter_map(|m| m.last_measurements.last())
        .map(|m| m.measured_at.0)
        .max()
}

fn paused_for_metrics(status: &RolloutStatus) -> bool {
    status
        .pause_conditions
        .iter()
        .any(|p| p.reason == "MetricsUnavailable")
}

#[tokio::test]
async fn a_candidate_whose_backend_error_rate_rises_in_prometheus_is_rolled_back_although_every_install_succeeds()
 {
    let exporter = healthy_exporter("scenario-rollback").await;
    let steps = json!([{"setPercent": 50}, {"pause": {}}]);
    let mut scenario = Scenario::start(
        &rollout(steps, json!([error_rate_metric(prometheus_url(), &exporter)])),
        1,
    )
    .await;
    scenario
        .until("50% is served", |s| s.current_percent == Some(50))
        .await;
    scenario.round().await;
    let on_candidate = scenario.on("1.1.0");
    assert!(on_candidate > 0, "no device took the candidate");
    let healthy = scenario.measure().await;
    let metric = &healthy.metrics[0];
    assert_eq!(metric.phase, MetricPhase::Running, "{healthy:#?}");
    assert!(metric.successful >= 1, "{healthy:#?}");
    assert_eq!(metric.failed, 0);
    let figures = healthy.analysis.as_ref().expect("the devices' figures");
    assert_eq!(figures.failures, 0, "every install succeeded");

    // The candidate's backend starts failing: Prometheus scrapes it, the next measurement fails.
    exporter.set(SERIES, BROKEN);
    prometheus_answers(&exporter, BROKEN).await;
    scenario.server.clock.advance(INTERVAL);
    let aborted = scenario
        .until("the failing metric rolls the candidate back", |s| {
            s.phase == Some(RolloutPhase::Aborted)
        })
        .await;
    assert_eq!(aborted.current_percent, Some(0));
    let metric = &aborted.metrics[0];
    assert_eq!(metric.phase, MetricPhase::Failed);
    assert_eq!(metric.failed, 1);
    let last = metric.last_measurements.last().expect("a measurement");
    assert_eq!(last.phase, MeasurementPhase::Failed);
    assert_eq!(last.value.as_deref(), Some("0.3"));
    let message = aborted.message.as_deref().unwrap_or_default();
    assert!(message.contains("checkout-errors"), "{message}");

    // The stable bundle is served again: every device that took the candidate goes back.
    scenario.rounds_until_all_on("1.0.0").await;
}

/// Scenario (a) in a cluster: the Rollout in the real test API server, the controller (with the
/// real providers, tests/support/fleet_cluster.rs) and the update server in this process on a
/// test clock, the same real Prometheus server and devices.
#[tokio::test]
async fn cluster_a_candidate_whose_backend_error_rate_rises_in_prometheus_is_rolled_back_by_the_controller() {
    let exporter = healthy_exporter("scenario-cluster").await;
    let steps = json!([{"setPercent": 50}, {"pause": {}}]);
    let rollout: Value = serde_json::from_str(&rollout(
        steps,
        json!([error_rate_metric(prometheus_url(), &exporter)]),
    ))
    .expect("JSON");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let cluster = fleet_cluster::InProcessCluster::start(
        fleet_cluster::database_in(dir.path()),
        &stable_bundle(),
        &candidate_bundle(),
        rollout,
    )
    .await;
    let rollouts: kube::Api<ota_operator::api::Rollout> =
        kube::Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let status = || async {
        let rollout = rollouts.get(ROLLOUT).await.expect("the Rollout");
        rollout
            .status
            .filter(|s| s.observed_generation == rollout.metadata.generation)
    };
    let until = |what: &'static str, done: fn(&RolloutStatus) -> bool| {
        let status = &status;
        let logs = || cluster.logs();
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let now = status().await;
                if let Some(now) = now.as_ref().filter(|s| done(s)) {
                    return now.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {WAIT:?}; the status: {now:#?}\nlogs:\n{}",
                    logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until("50% is served", |s| s.current_percent == Some(50)).await;
    // The update server follows the status through its watch: the devices of the cohort take
    // the candidate within a few rounds, and report success.
    let mut devices = Fleet::new(6, DEVICES, "1.0.0", 8);
    rounds_until(&mut devices, &cluster.base(), |f| {
        f.versions().contains_key("1.1.0")
    })
    .await;
    cluster.clock.advance(INTERVAL);
    let healthy = until("a healthy measurement", |s| {
        s.metrics.first().is_some_and(|m| m.successful >= 1)
    })
    .await;
    assert_eq!(healthy.metrics[0].failed, 0);

    exporter.set(SERIES, BROKEN);
    prometheus_answers(&exporter, BROKEN).await;
    cluster.clock.advance(INTERVAL);
    let aborted = until("the failing metric rolls the candidate back", |s| {
        s.phase == Some(RolloutPhase::Aborted)
    })
    .await;
    assert_eq!(aborted.current_percent, Some(0));
    assert_eq!(aborted.metrics[0].phase, MetricPhase::Failed);
    assert_eq!(
        aborted.metrics[0]
            .last_measurements
            .last()
            .and_then(|m| m.value.as_deref()),
        Some("0.3")
    );
    rounds_until(&mut devices, &cluster.base(), |f| {
        f.versions().get("1.0.0") == Some(&DEVICES)
    })
    .await;
}

/// Rounds of `devices` (each installing what it is offered, successfully) until `done` holds.
async fn rounds_until(devices: &mut Fleet, base: &str, done: impl Fn(&Fleet) -> bool) {
    for _ in 0..50 {
        let round = devices.round(base, &no_failures()).await;
        assert_eq!(round.broken(), Vec::new(), "devices saw broken answers");
        if done(devices) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the devices run {:?}", devices.versions());
}

/// A TCP gate in front of the test Prometheus server, on a port of its own: open, it forwards
/// every connection; closed, it refuses new connections and cuts the open ones, as a network
/// outage between standalone mode and its Prometheus would. The shared server keeps running
/// for the other tests.
struct Gate {
    address: SocketAddr,
    open: Option<(JoinHandle<()>, Forwards)>,
}

/// The connections an open gate forwards.
type Forwards = Arc<Mutex<Vec<JoinHandle<()>>>>;

impl Gate {
    async fn start() -> Gate {
        let mut gate = Gate {
            address: SocketAddr::from(([127, 0, 0, 1], support::free_port())),
            open: None,
        };
        gate.open().await;
        gate
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn open(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.address)
            .await
            .expect("the gate's port is free again");
        let upstream = prometheus_url()
            .strip_prefix("http://")
            .expect("an http:// URL")
            .to_owned();
        let connections = Forwards::default();
        let held = Arc::clone(&connections);
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().expect("the gate's connections").push(forward);
            }
        });
        self.open = Some((accepting, connections));
    }

    fn close(&mut self) {
        if let Some((accepting, connections)) = self.open.take() {
            accepting.abort();
            for connection in connections.lock().expect("the gate's connections").drain(..) {
                connection.abort();
            }
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

#[tokio::test]
async fn a_prometheus_outage_pauses_the_rollout_never_aborts_it_and_it_completes_once_prometheus_answers_again()
 {
    let exporter = healthy_exporter("scenario-outage").await;
    let mut gate = Gate::start().await;
    let mut metric = error_rate_metric(&gate.url(), &exporter);
    metric["consecutiveErrorLimit"] = json!(2);
    let steps = json!([{"setPercent": 50}, {"pause": {"duration": "1h"}}, {"setPercent": 100}]);
    let mut scenario = Scenario::start(&rollout(steps, json!([metric])), 2).await;
    scenario
        .until("50% is served", |s| s.current_percent == Some(50))
        .await;
    scenario.round().await;
    let healthy = scenario.measure().await;
    assert!(healthy.metrics[0].successful >= 1, "{healthy:#?}");

    // Prometheus cannot be reached: two errors in a row are within the limit...
    gate.close();
    for errors in 1..=2 {
        let status = scenario.measure().await;
        let metric = &status.metrics[0];
        assert_eq!(metric.consecutive_errors, errors, "{status:#?}");
        assert!(!paused_for_metrics(&status), "{status:#?}");
        assert_ne!(status.phase, Some(RolloutPhase::Aborted));
    }
    // ... the third pauses the rollout, with the provider's message.
    let paused = scenario.measure().await;
    assert!(paused_for_metrics(&paused), "{paused:#?}");
    assert_eq!(paused.phase, Some(RolloutPhase::Paused));
    assert_eq!(paused.metrics[0].phase, MetricPhase::Error);
    let message = paused.message.as_deref().unwrap_or_default();
    assert!(message.contains("checkout-errors"), "{message}");
    assert!(
        message.contains(&gate.url()),
        "the message says what is unreachable: {message}"
    );
    let last = paused.metrics[0].last_measurements.last().expect("a measurement");
    assert_eq!(last.phase, MeasurementPhase::Error);
    assert!(
        last.message
            .as_deref()
            .unwrap_or_default()
            .contains("cannot reach"),
        "{last:?}"
    );
    // The outage goes on: the rollout waits, and never aborts.
    for _ in 0..3 {
        let status = scenario.measure().await;
        assert_eq!(status.phase, Some(RolloutPhase::Paused), "{status:#?}");
        assert!(paused_for_metrics(&status));
        assert_eq!(status.current_percent, Some(50));
    }

    // Prometheus answers again: the pause lifts by itself at the next measurement.
    gate.open().await;
    let resumed = scenario.measure().await;
    assert!(!paused_for_metrics(&resumed), "{resumed:#?}");
    assert_eq!(resumed.metrics[0].consecutive_errors, 0);
    assert_eq!(resumed.metrics[0].errors, 6);
    // The pause step's hour passes; the rollout completes, every device ends on the candidate.
    scenario.server.clock.advance(Duration::from_secs(3_600));
    let completed = scenario
        .advance_until(
            "the rollout completes",
            |s| s.phase == Some(RolloutPhase::Completed),
            |s| assert_ne!(s.phase, Some(RolloutPhase::Aborted), "{s:#?}"),
        )
        .await;
    assert_eq!(
        completed.metrics[0].phase,
        MetricPhase::Successful,
        "{completed:#?}"
    );
    scenario.rounds_until_all_on("1.1.0").await;
}

#[tokio::test]
async fn a_failing_dry_run_metric_is_reported_and_the_rollout_still_completes() {
    let exporter = healthy_exporter("scenario-dry-run").await;
    exporter.set(SERIES, BROKEN);
    prometheus_answers(&exporter, BROKEN).await;
    let mut metric = error_rate_metric(prometheus_url(), &exporter);
    metric["dryRun"] = json!(true);
    let steps = json!([{"setPercent": 50}, {"pause": {"duration": "3s"}}, {"setPercent": 100}]);
    let mut scenario = Scenario::start(&rollout(steps, json!([metric])), 3).await;
    scenario
        .until("50% is served", |s| s.current_percent == Some(50))
        .await;
    scenario.round().await;
    // Each second of the pause brings a failed measurement; the rollout walks on.
    let completed = scenario
        .advance_until(
            "the rollout completes",
            |s| s.phase == Some(RolloutPhase::Completed),
            |s| {
                assert_ne!(s.phase, Some(RolloutPhase::Aborted), "{s:#?}");
                assert!(
                    s.pause_conditions.iter().all(|p| p.reason == "PauseStep"),
                    "{s:#?}"
                );
            },
        )
        .await;
    let metric = &completed.metrics[0];
    assert!(metric.dry_run);
    assert_eq!(metric.phase, MetricPhase::Failed, "{completed:#?}");
    assert!(metric.failed >= 2, "{metric:?}");
    let last = metric.last_measurements.last().expect("a measurement");
    assert_eq!(last.phase, MeasurementPhase::Failed);
    assert_eq!(last.value.as_deref(), Some("0.3"));
    scenario.rounds_until_all_on("1.1.0").await;
}

/// A web metrics service that answers an HTML error page with status 200, recording the query
/// strings it is asked.
async fn garbage_service() -> (String, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&asked);
    let app = Router::new().route(
        "/api/stats",
        get(move |RawQuery(query): RawQuery| {
            let recorded = Arc::clone(&recorded);
            async move {
                recorded
                    .lock()
                    .expect("the asked queries")
                    .push(query.unwrap_or_default());
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><body>Service temporarily overloaded</body></html>",
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the web service");
    let address = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("the web service serves");
    });
    (format!("http://{address}/api/stats"), asked)
}

#[tokio::test]
async fn a_web_provider_answering_garbage_is_an_error_with_a_clear_message_and_pauses_the_rollout() {
    let (url, asked) = garbage_service().await;
    let metric = json!({
        "name": "crash-free", "interval": "1s", "consecutiveErrorLimit": 0,
        "web": {"url": format!("{url}?release={{{{candidate}}}}"), "jsonPath": "$.crashFreeRate", "timeout": "2s"},
        "successCondition": "result > 0.99",
    });
    let steps = json!([{"setPercent": 50}, {"pause": {"duration": "1h"}}, {"setPercent": 100}]);
    let mut scenario = Scenario::start(&rollout(steps, json!([metric])), 4).await;
    scenario
        .until("50% is served", |s| s.current_percent == Some(50))
        .await;
    scenario.round().await;
    let paused = scenario
        .advance_until("the garbage pauses the rollout", paused_for_metrics, |s| {
            assert_ne!(s.phase, Some(RolloutPhase::Aborted), "{s:#?}")
        })
        .await;
    assert_eq!(paused.phase, Some(RolloutPhase::Paused));
    let metric = &paused.metrics[0];
    assert_eq!(metric.phase, MetricPhase::Error, "{paused:#?}");
    let last = metric.last_measurements.last().expect("a measurement");
    assert_eq!(last.phase, MeasurementPhase::Error);
    assert_eq!(last.value, None);
    let error = last.message.as_deref().unwrap_or_default();
    assert!(error.contains("not JSON"), "{error}");
    assert!(error.contains("text/html"), "the content type is named: {error}");
    assert!(
        error.contains("Service temporarily overloaded"),
        "an excerpt: {error}"
    );
    let message = paused.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("crash-free") && message.contains("not JSON"),
        "{message}"
    );
    assert!(
        asked
            .lock()
            .expect("the asked queries")
            .iter()
            .all(|q| q == "release=1.1.0"),
        "the URL's placeholder is the candidate's version"
    );
    // More garbage: the rollout waits for it, and never aborts.
    for _ in 0..3 {
        let status = scenario.measure().await;
        assert_eq!(status.phase, Some(RolloutPhase::Paused), "{status:#?}");
        assert!(paused_for_metrics(&status), "{status:#?}");
        assert_eq!(status.current_percent, Some(50));
    }
    scenario.round().await;
    assert_eq!(
        scenario.on("1.0.0") + scenario.on("1.1.0"),
        DEVICES,
        "{:?}",
        scenario.fleet.versions()
    );
}

/// The fleet benchmark's "Prometheus-gated rollback" (tests/support/gated_rollback.rs), small:
/// the real `ota standalone` binary on the wall clock, 200 devices, a metric measured every
/// second. The benchmark reports the time; here it only has to be bounded (a debug build on a
/// busy machine), the rollout aborted by the metric, and the stable bundle served again.
#[tokio::test]
async fn the_fleet_benchmarks_prometheus_gated_rollback_serves_the_stable_bundle_again() {
    let exporter = healthy_exporter("bench-gated").await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    fleet::write_world(
        dir.path(),
        &stable_bundle(),
        &candidate_bundle(),
        &gated_rollback::rollout_yaml(prometheus_url(), exporter.label(), INTERVAL),
    );
    let server = fleet::Standalone::start(dir.path(), &[]).await;
    let store = DeviceStore::open(&server.database_url())
        .await
        .expect("the server's device store");
    let mut devices = Fleet::new(5, 200, "1.0.0", 16);
    let figures = gated_rollback::run(&server.base(), &store, &exporter, prometheus_url(), &mut devices)
        .await
        .unwrap_or_else(|e| panic!("{e}\nlogs:\n{}", server.logs()));
    eprintln!(
        "gated rollback: crossed → served {:?} ({:.2} × the interval), scrape {:?}",
        figures.latency,
        figures.latency.as_secs_f64() / INTERVAL.as_secs_f64(),
        figures.scrape_lag
    );
    assert!(figures.installed > 0);
    assert!(
        figures.latency < 5 * INTERVAL,
        "crossed → served took {:?}",
        figures.latency
    );
    assert_eq!(figures.status.current_percent, Some(0));
}
