//! The "Prometheus-gated rollback" scenario of the fleet benchmark (benches/fleet.rs), shared
//! with its small debug run in tests/analysis_scenarios.rs.
//!
//! A Rollout serves the candidate to `PERCENT`% of the channel, gated by one Prometheus metric
//! (the checkout error rate of the candidate, served by an [`Exporter`] the run sets, scraped
//! every second by the test Prometheus server) whose failure condition is
//! `result > THRESHOLD`, with rollback as the action. Every device installs successfully, so the
//! devices' own reports never stop the rollout. Once a healthy measurement was taken, the run
//! sets the exporter's value above the threshold; the metric has crossed its threshold when the
//! Prometheus server first answers the metric's query with that value (polled every 10 ms);
//! the stable bundle is served again when a probe device of the cohort, running the candidate
//! and polling every 10 ms, is first offered the stable bundle. The time between the two, as a
//! multiple of the metric's interval, is the figure (target: at most 2).
//!
//! The including crate declares `fleet` (tests/support/fleet.rs) and `support`
//! (tests/support/mod.rs) at its root.
#![allow(dead_code)] // the benchmark and the test each use their own part

use std::time::{Duration, Instant};

use ota_operator::{
    api::{
        RolloutStatus,
        rollout::{MetricPhase, RolloutPhase},
    },
    core::cohort::in_cohort,
    devices::DeviceStore,
    standalone::rollouts::read_states,
};
use serde_json::Value;

use crate::{
    fleet::{self, Device, Fleet, no_failures},
    support::exporter::Exporter,
};

/// The Rollout's name (the candidate Bundle's name too).
pub const ROLLOUT: &str = "fleet-1.1.0";
/// The metric's name.
pub const METRIC: &str = "checkout-errors";
/// The series the exporter serves: the candidate's checkout error rate.
pub const SERIES: &str = "ota_checkout_error_ratio{version=\"1.1.0\"}";
/// The metric fails above this.
pub const THRESHOLD: f64 = 0.05;
/// The error rate while the candidate is healthy, and once it breaks.
pub const HEALTHY: f64 = 0.01;
pub const BROKEN: f64 = 0.3;
/// The share of the channel offered the candidate.
pub const PERCENT: u32 = 10;
/// The longest any wait of the run may take.
const WAIT: Duration = Duration::from_secs(120);

/// The metric's query: the exporter's series (by its label) for the candidate's version.
pub fn query(label: &str) -> String {
    format!("ota_checkout_error_ratio{{ota_test=\"{label}\",version=\"{{{{candidate}}}}\"}}")
}

/// The query as Prometheus is asked it (the candidate's version in place).
pub fn query_for_candidate(label: &str) -> String {
    query(label).replace("{{candidate}}", "1.1.0")
}

/// The gated Rollout: `PERCENT`%, then a pause until promoted; the metric on the Prometheus
/// server at `prometheus_url`, measured every `interval`; rollback when it fails.
pub fn rollout_yaml(prometheus_url: &str, label: &str, interval: Duration) -> String {
    let rollout = serde_json::json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": ROLLOUT},
        "spec": {
            "channelRef": "production", "bundleRef": ROLLOUT,
            "steps": [{"setPercent": PERCENT}, {"pause": {}}],
            "analysis": {
                "interval": "1h", "window": "1h", "action": "rollback",
                "metrics": [{
                    "name": METRIC,
                    "interval": format!("{}s", interval.as_secs().max(1)),
                    "prometheus": {"address": prometheus_url, "query": query(label), "timeout": "2s"},
                    "failureCondition": format!("result > {THRESHOLD}"),
                }],
            },
        },
    });
    serde_json::to_string(&rollout).expect("JSON is YAML")
}

/// The value the Prometheus server at `prometheus_url` answers for `query` now (None: no
/// series yet).
pub async fn prometheus_value(
    client: &reqwest::Client,
    prometheus_url: &str,
    query: &str,
) -> Result<Option<f64>, String> {
    let url = reqwest::Url::parse_with_params(&format!("{prometheus_url}/api/v1/query"), [("query", query)])
        .map_err(|e| format!("the Prometheus URL {prometheus_url}: {e}"))?;
    let answer: Value = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("Prometheus: {e}"))?
        .json()
        .await
        .map_err(|e| format!("Prometheus's answer: {e}"))?;
    Ok(answer["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok()))
}

/// Polls the Prometheus server every 10 ms until it answers `want` for `query`; returns when
/// it first did.
pub async fn wait_for_value(
    client: &reqwest::Client,
    prometheus_url: &str,
    query: &str,
    want: f64,
) -> Result<Instant, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if prometheus_value(client, prometheus_url, query).await? == Some(want) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "Prometheus never answered {want} for {query} within {WAIT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves the healthy error rate and waits until Prometheus answers it: before standalone mode
/// starts, so that its first measurement already finds the series.
pub async fn serve_healthy(
    exporter: &Exporter,
    client: &reqwest::Client,
    prometheus_url: &str,
) -> Result<(), String> {
    exporter.set(SERIES, HEALTHY);
    wait_for_value(
        client,
        prometheus_url,
        &query_for_candidate(exporter.label()),
        HEALTHY,
    )
    .await
    .map(|_| ())
}

/// The gated Rollout's saved status.
pub async fn status_of(store: &DeviceStore) -> Result<Option<RolloutStatus>, String> {
    Ok(read_states(store)
        .await
        .map_err(|e| format!("the rollout states: {e}"))?
        .rollouts
        .get(&("default".to_owned(), ROLLOUT.to_owned()))
        .cloned())
}

/// Polls the saved status every 20 ms until `done` holds for it.
async fn wait_status(
    store: &DeviceStore,
    what: &str,
    done: impl Fn(&RolloutStatus) -> bool,
) -> Result<RolloutStatus, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status_of(store).await?;
        if let Some(status) = status.as_ref().filter(|s| done(s)) {
            return Ok(status.clone());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {WAIT:?}; the status: {status:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one gated rollback took.
#[derive(Debug)]
pub struct GatedFigures {
    /// From the metric crossing its threshold to the stable bundle served again.
    pub latency: Duration,
    /// From the exporter's new value to Prometheus answering it (a scrape).
    pub scrape_lag: Duration,
    /// Devices of the fleet that installed the candidate (each reported success).
    pub installed: usize,
    /// The status once aborted.
    pub status: RolloutStatus,
}

/// Runs the scenario against standalone mode at `base` (its device store `store`), serving a
/// folder with [`rollout_yaml`] for `exporter` and `interval`, on the wall clock.
pub async fn run(
    base: &str,
    store: &DeviceStore,
    exporter: &Exporter,
    prometheus_url: &str,
    fleet: &mut Fleet,
) -> Result<GatedFigures, String> {
    let client = fleet.client().clone();
    let query = query_for_candidate(exporter.label());
    let salt = wait_status(store, "the candidate is served", |s| {
        s.current_percent == Some(PERCENT as i32) && s.salt.is_some()
    })
    .await?
    .salt
    .unwrap_or_default();
    // Every device installs successfully: the devices' reports never stop the rollout.
    let round = fleet.round(base, &no_failures()).await;
    let broken = round.broken();
    if !broken.is_empty() {
        return Err(format!(
            "devices saw broken answers: {:?}",
            &broken[..broken.len().min(3)]
        ));
    }
    let installed = round.reports("1.1.0").0;
    if installed == 0 {
        return Err("no device of the fleet was offered the candidate".to_owned());
    }
    wait_status(store, "a healthy measurement", |s| {
        s.metrics.first().is_some_and(|m| m.successful >= 1)
    })
    .await?;
    let probe = Device {
        id: (0..)
            .map(|i| fleet::device_id(0x9a7e, i))
            .find(|id| in_cohort(&salt, id, PERCENT))
            .ok_or("a probe device in the cohort")?,
        version: "1.1.0".to_owned(),
    };
    let watcher = {
        let (client, base) = (client.clone(), base.to_owned());
        tokio::spawn(async move {
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(version)) = fleet::offered(&client, &base, &probe).await
                    && version == "1.0.0"
                {
                    return Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        })
    };
    let set_at = Instant::now();
    exporter.set(SERIES, BROKEN);
    let crossed = wait_for_value(&client, prometheus_url, &query, BROKEN).await?;
    let served = watcher
        .await
        .map_err(|e| format!("the probe: {e}"))?
        .ok_or_else(|| format!("the stable bundle was not served again within {WAIT:?}"))?;
    let status = wait_status(store, "the rollout is aborted", |s| {
        s.phase == Some(RolloutPhase::Aborted)
    })
    .await?;
    let failed = status
        .metrics
        .first()
        .is_some_and(|m| m.phase == MetricPhase::Failed);
    if !failed {
        return Err(format!("aborted, but not by the metric: {status:?}"));
    }
    Ok(GatedFigures {
        latency: served.saturating_duration_since(crossed),
        scrape_lag: crossed.saturating_duration_since(set_at),
        installed,
        status,
    })
}
