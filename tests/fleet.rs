//! The fleet simulation: a few hundred simulated devices speaking the plugin protocol to a real
//! update server while a Rollout moves their channel from 1.0.0 to 1.1.0 (the devices are in
//! tests/support/fleet.rs). Each scenario is a test, run twice:
//!
//! - `standalone_*`: standalone mode, which drives the Rollout itself (state in its device
//!   store);
//! - `cluster_*`: the real test API server holding the objects (`tests/run.sh --test fleet`
//!   starts it), the controller driving the Rollout (figures from the update server's internal
//!   listener) and the update server serving the devices from its watch of the API server
//!   (tests/support/fleet_cluster.rs). The controller and the update server are the library code
//!   `ota controller` and `ota server` run, started in this process rather than as the binary,
//!   so they share the scenario's clock (the binary has no flag that sets the time).
//!
//! Both modes run their parts in this process (tests/support/fleet.rs's `InProcess`, each part
//! on a runtime of its own) on one test clock, which each round of the fleet moves on
//! [`CLOCK_STEP`]: the Rollout's hour-long pauses and analysis intervals pass in milliseconds.
//! (The API server stays on wall time; it only stores what the parts decide.) A crash drops a
//! part's runtime with every task in it (no shutdown, no flush), as a SIGKILL would, and starts
//! it again.
//!
//! Scenarios: a healthy candidate walks every step to 100% and every device ends on it; a
//! candidate that fails on 30% of devices is aborted at the first analysis with enough attempts,
//! and every device returns to the stable bundle (those that took the candidate too); cohorts
//! are monotonic (no device moves back while the percent rises, and the devices on the candidate
//! are exactly the cohort); crashing what drives the rollout mid-rollout (twice) changes nothing in
//! the outcome.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use kube::Api;
use ota_operator::{
    api::{Channel, Rollout, RolloutStatus, rollout::RolloutPhase},
    core::cohort::in_cohort,
    devices::DeviceStore,
    standalone::rollouts::read_states,
};
use serde_json::{Value, json};

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/fleet_cluster.rs"]
mod fleet_cluster;
mod support;

use fleet::{
    BundleFile, FailurePlan, Fleet, InProcessStandalone, Round, candidate_bundle, failing_share, no_failures,
    stable_bundle,
};
use fleet_cluster::InProcessCluster;

/// Devices per scenario.
const DEVICES: usize = 300;
/// Devices checking at once (and connections open).
const CONCURRENCY: usize = 16;
/// The longest any scenario may take.
const SCENARIO_LIMIT: Duration = Duration::from_secs(55);
/// How far the test clock moves after each round of the fleet.
const CLOCK_STEP: Duration = Duration::from_secs(1_800);
/// The Rollout's name.
const ROLLOUT: &str = "fleet-1.1.0";

/// The Rollout of the candidate on `production`, with these steps, policy and annotations.
fn rollout(steps: Value, analysis: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": ROLLOUT, "annotations": annotations},
        "spec": {"channelRef": "production", "bundleRef": "fleet-1.1.0", "steps": steps, "analysis": analysis},
    })
}

/// The servers a scenario runs.
enum Servers {
    Standalone {
        server: InProcessStandalone,
        store: DeviceStore,
    },
    Cluster(Box<InProcessCluster>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Standalone,
    Cluster,
}

/// The durations a scenario's Rollout names, in the time it runs on.
struct Timing {
    /// A pause between two steps.
    pause: &'static str,
    /// The pause a crash falls into.
    long_pause: &'static str,
    /// The analysis interval of a guarded rollout.
    interval: &'static str,
    /// Its analysis window (the whole scenario).
    window: &'static str,
    /// An interval that never comes within the scenario (no background analysis).
    never: &'static str,
}

/// The durations of every scenario's Rollouts, on the test clock ([`CLOCK_STEP`] per round).
const TIMING: Timing = Timing {
    pause: "1h",
    long_pause: "3h",
    // Every second round: an analysis then reads a whole round's reports (the server writes
    // them in batches).
    interval: "1h",
    window: "720h",
    never: "8000h",
};

/// A scenario: the servers, the fleet on the stable bundle, and what every round did.
struct Scenario {
    dir: tempfile::TempDir,
    servers: Servers,
    fleet: Fleet,
    stable: BundleFile,
    candidate: BundleFile,
    fails: FailurePlan,
    started: Instant,
    /// Each device's version after every round so far (index 0: before the first round).
    history: Vec<Vec<String>>,
}

impl Scenario {
    async fn start(mode: Mode, rollout: Value, fails: FailurePlan, seed: u32) -> Scenario {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (stable, candidate) = (stable_bundle(), candidate_bundle());
        let servers = match mode {
            Mode::Standalone => {
                fleet::write_world(
                    dir.path(),
                    &stable,
                    &candidate,
                    &serde_json::to_string(&rollout).expect("JSON"),
                );
                let server = InProcessStandalone::start(dir.path()).await;
                let store = DeviceStore::open(&server.database_url())
                    .await
                    .expect("the server's device store opens beside it");
                Servers::Standalone { server, store }
            }
            Mode::Cluster => {
                let database = fleet_cluster::database_in(dir.path());
                let cluster = InProcessCluster::start(database, &stable, &candidate, rollout).await;
                Servers::Cluster(Box::new(cluster))
            }
        };
        let fleet = Fleet::new(seed, DEVICES, &stable.version, CONCURRENCY);
        let history = vec![fleet.devices.iter().map(|d| d.version.clone()).collect()];
        Scenario {
            dir,
            servers,
            fleet,
            stable,
            candidate,
            fails,
            started: Instant::now(),
            history,
        }
    }

    fn base(&self) -> String {
        match &self.servers {
            Servers::Standalone { server, .. } => server.base(),
            Servers::Cluster(cluster) => cluster.base(),
        }
    }

    /// The Rollout's status (in a cluster, only once it describes the current generation).
    async fn status(&self) -> Option<RolloutStatus> {
        match &self.servers {
            Servers::Standalone { store, .. } => read_states(store)
                .await
                .expect("the rollout states read")
                .rollouts
                .get(&("default".to_owned(), ROLLOUT.to_owned()))
                .cloned(),
            Servers::Cluster(cluster) => {
                let rollout = Api::<Rollout>::namespaced(cluster.client.clone(), &cluster.namespace)
                    .get(ROLLOUT)
                    .await
                    .expect("the Rollout");
                let status = rollout.status?;
                (status.observed_generation == rollout.metadata.generation).then_some(status)
            }
        }
    }

    /// The bundle recorded as the channel's stable one by a completed rollout.
    async fn promoted(&self) -> Option<String> {
        match &self.servers {
            Servers::Standalone { store, .. } => read_states(store)
                .await
                .expect("the rollout states read")
                .promotions
                .get(&("default".to_owned(), "production".to_owned()))
                .map(|p| p.bundle.clone()),
            Servers::Cluster(cluster) => {
                Api::<Channel>::namespaced(cluster.client.clone(), &cluster.namespace)
                    .get("production")
                    .await
                    .expect("the Channel")
                    .status
                    .and_then(|s| s.promoted)
                    .map(|p| p.bundle)
            }
        }
    }

    /// Replaces the Rollout (a new YAML file, or a server-side apply).
    async fn set_rollout(&self, rollout: Value) {
        match &self.servers {
            Servers::Standalone { .. } => {
                fleet::write_rollout(self.dir.path(), &serde_json::to_string(&rollout).expect("JSON"));
            }
            Servers::Cluster(cluster) => {
                support::apply_document(&cluster.client, &cluster.namespace, &rollout)
                    .await
                    .expect("the Rollout applies");
            }
        }
    }

    /// Crashes what drives the rollout and starts it again.
    async fn crash_the_driver(&mut self) {
        match &mut self.servers {
            Servers::Standalone { server, .. } => server.restart().await,
            Servers::Cluster(cluster) => cluster.restart_controller().await,
        }
    }

    /// Crashes what devices talk to and starts it again.
    async fn crash_the_server(&mut self) {
        match &mut self.servers {
            Servers::Standalone { server, .. } => server.restart().await,
            Servers::Cluster(cluster) => cluster.restart_server().await,
        }
    }

    fn logs(&self) -> String {
        match &self.servers {
            Servers::Standalone { server, .. } => server.logs(),
            Servers::Cluster(cluster) => cluster.logs(),
        }
    }

    /// The clock every part of the scenario runs on.
    fn clock(&self) -> &ota_operator::clock::TestClock {
        match &self.servers {
            Servers::Standalone { server, .. } => &server.clock,
            Servers::Cluster(cluster) => &cluster.clock,
        }
    }

    /// One round of every device; fails the test on any protocol breakage.
    async fn round(&mut self) -> Round {
        assert!(
            self.started.elapsed() < SCENARIO_LIMIT,
            "the scenario took longer than {SCENARIO_LIMIT:?}; rollout status: {:#?}\nlogs:\n{}",
            self.status().await,
            self.logs()
        );
        let round = self.fleet.round(&self.base(), &self.fails).await;
        self.clock().advance(CLOCK_STEP);
        let broken = round.broken();
        assert!(broken.is_empty(), "devices saw broken answers: {broken:?}");
        self.history
            .push(self.fleet.devices.iter().map(|d| d.version.clone()).collect());
        round
    }

    /// Rounds until `done` holds for the latest status (checked after each round).
    async fn rounds_until(&mut self, done: impl Fn(&RolloutStatus, &Fleet) -> bool) -> RolloutStatus {
        loop {
            self.round().await;
            if let Some(status) = self.status().await
                && done(&status, &self.fleet)
            {
                return status;
            }
        }
    }

    fn on(&self, version: &str) -> usize {
        self.fleet.versions().get(version).copied().unwrap_or(0)
    }

    fn on_candidate(&self) -> BTreeSet<usize> {
        self.fleet
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.version == self.candidate.version)
            .map(|(i, _)| i)
            .collect()
    }

    /// No device ever went from the candidate back to the stable bundle.
    fn assert_no_device_moved_back(&self) {
        for (round, pair) in self.history.windows(2).enumerate() {
            for (device, (before, after)) in pair[0].iter().zip(&pair[1]).enumerate() {
                assert!(
                    !(before == &self.candidate.version && after == &self.stable.version),
                    "device {device} went back from {before} to {after} in round {}",
                    round + 1
                );
            }
        }
    }
}

fn phase(status: &RolloutStatus) -> Option<RolloutPhase> {
    status.phase
}

/// Checks, after a round, that the devices on the candidate are exactly the cohort: every device
/// in it at the round's start took the candidate, none outside it at the round's end did, and
/// none left it since the previous round.
fn assert_exactly_the_cohort(
    scenario: &Scenario,
    round: &fleet::Round,
    before: &BTreeSet<usize>,
    percent_before: i32,
    status: &RolloutStatus,
) -> BTreeSet<usize> {
    let on_candidate = scenario.on_candidate();
    assert!(
        on_candidate.is_superset(before),
        "devices left the cohort: {:?}\nlogs:\n{}",
        before.difference(&on_candidate).collect::<Vec<_>>(),
        scenario.logs()
    );
    let salt = status.salt.as_deref().expect("a salt");
    let percent_after = status.current_percent.unwrap_or(0);
    for (index, device) in scenario.fleet.devices.iter().enumerate() {
        if in_cohort(salt, &device.id, percent_before as u32) {
            assert!(
                on_candidate.contains(&index),
                "device {index} is in the {percent_before}% cohort, but its check gave {:?}\nstatus: {status:#?}\nlogs:\n{}",
                round.outcomes[index],
                scenario.logs()
            );
        }
        if on_candidate.contains(&index) {
            assert!(
                in_cohort(salt, &device.id, percent_after as u32),
                "device {index} took the candidate outside the {percent_after}% cohort"
            );
        }
    }
    on_candidate
}

// ---------------------------------------------------------------- the scenarios

async fn healthy_candidate_walks_every_step(mode: Mode) {
    let Timing {
        pause,
        interval,
        window,
        ..
    } = TIMING;
    let rollout = rollout(
        json!([{"setPercent": 10}, {"pause": {"duration": pause}}, {"setPercent": 30}, {"analysis": {}},
               {"pause": {"duration": pause}}, {"setPercent": 60}, {"pause": {"duration": pause}}, {"setPercent": 100}]),
        json!({"interval": interval, "minAttempts": 20, "maxFailureRate": 0.05, "window": window, "action": "rollback"}),
        json!({}),
    );
    let mut scenario = Scenario::start(mode, rollout, no_failures(), 1).await;
    let status = scenario
        .rounds_until(|status, fleet| {
            phase(status) == Some(RolloutPhase::Completed)
                && fleet.devices.iter().all(|d| d.version == "1.1.0")
        })
        .await;
    // The walk went through its steps, and the analysis passed with enough attempts.
    assert_eq!(status.current_percent, Some(100));
    assert_eq!(status.current_step_index, Some(8));
    let figures = status.analysis.as_ref().expect("analysis figures");
    assert!(figures.attempts >= 20, "{figures:?}");
    assert_eq!(figures.failures, 0);
    assert_eq!(scenario.on("1.1.0"), DEVICES);
    scenario.assert_no_device_moved_back();
    // The share rose in steps (each step was served to the fleet).
    let shares: BTreeSet<usize> = scenario
        .history
        .iter()
        .map(|versions| versions.iter().filter(|v| *v == "1.1.0").count())
        .collect();
    assert!(shares.len() >= 3, "the share rose in steps: {shares:?}");
    if mode == Mode::Standalone {
        // Standalone mode logs the events a cluster would publish.
        let logs = scenario.logs();
        for percent in [10, 30, 60] {
            assert!(
                logs.contains(&format!("is offered to {percent}% of devices")),
                "no {percent}% step in the logs:\n{logs}"
            );
        }
        assert!(logs.contains("AnalysisPassed"), "{logs}");
        assert!(logs.contains("RolloutCompleted"), "{logs}");
    }
    // The candidate is now the channel's stable bundle: a device never seen before gets it.
    let promoted = fleet::eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the candidate recorded as the channel's stable bundle",
        || scenario.promoted(),
    )
    .await;
    assert_eq!(promoted, "fleet-1.1.0");
    let mut newcomers = Fleet::new(99, 20, "1.0.0", 4);
    newcomers.round(&scenario.base(), &no_failures()).await;
    assert_eq!(newcomers.versions().get("1.1.0"), Some(&20));
}

async fn failing_candidate_is_aborted(mode: Mode) {
    const MIN_ATTEMPTS: i64 = 30;
    let Timing { interval, window, .. } = TIMING;
    let rollout = rollout(
        json!([{"setPercent": 50}, {"pause": {}}, {"setPercent": 100}]),
        json!({"interval": interval, "minAttempts": MIN_ATTEMPTS, "maxFailureRate": 0.05, "window": window, "action": "rollback"}),
        json!({}),
    );
    let mut scenario = Scenario::start(mode, rollout, failing_share("1.1.0", 30), 2).await;
    let mut took_candidate = BTreeSet::new();
    let mut failed = 0;
    let aborted = loop {
        let round = scenario.round().await;
        for (device, (_, outcome)) in round.outcomes.iter().enumerate() {
            match outcome {
                fleet::Outcome::Set(version) if version == "1.1.0" => {
                    took_candidate.insert(device);
                }
                fleet::Outcome::Failed(_) => failed += 1,
                _ => {}
            }
        }
        let Some(status) = scenario.status().await else {
            continue;
        };
        if phase(&status) == Some(RolloutPhase::Aborted) {
            break status;
        }
        // Every analysis with enough attempts aborts: a status that counted as many and still
        // runs would be an analysis that let the candidate through.
        if let Some(figures) = &status.analysis {
            assert!(
                figures.attempts < MIN_ATTEMPTS,
                "an analysis with {} attempts did not abort: {status:#?}",
                figures.attempts
            );
        }
    };
    let figures = aborted.analysis.as_ref().expect("the figures of the abort");
    assert!(figures.attempts >= MIN_ATTEMPTS, "{figures:?}");
    let rate = figures.failures as f64 / figures.attempts as f64;
    assert!(
        (0.15..=0.45).contains(&rate),
        "a failure rate near 30%: {figures:?}"
    );
    assert!(figures.lower_bound > 0.05, "{figures:?}");
    assert_eq!(aborted.current_percent, Some(0));
    assert!(
        failed > 0 && !took_candidate.is_empty(),
        "some devices tried the candidate"
    );
    if mode == Mode::Standalone {
        let logs = scenario.logs();
        assert!(logs.contains("Aborted by the background analysis"), "{logs}");
    }
    // Every device goes back to 1.0.0, including those that took 1.1.0 (the server may take a
    // moment to serve the abort).
    for _ in 0..10 {
        scenario.round().await;
        if scenario.on("1.0.0") == DEVICES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(scenario.on("1.0.0"), DEVICES, "{:?}", scenario.fleet.versions());
    // And nobody is offered the candidate again.
    let round = scenario.round().await;
    let offered: Vec<_> = round
        .outcomes
        .iter()
        .filter(|(_, o)| o.offered().is_some())
        .collect();
    assert!(offered.is_empty(), "{offered:?}");
    assert_eq!(
        scenario.status().await.and_then(|s| s.phase),
        Some(RolloutPhase::Aborted),
        "an aborted rollout stays aborted"
    );
}

/// Waits until the update server offers the candidate to a probe device (not of the fleet) that
/// the salted hash puts in the `percent` cohort but not in the `percent - 1` one, so the server
/// serves at least `percent`. (A probe anywhere below `percent` can be served by a server that
/// still serves an earlier step: the test may first see a status two steps in, while the
/// server's watch still holds the step before.)
async fn wait_until_served(scenario: &Scenario, salt: &str, percent: i32) {
    let percent = u32::try_from(percent).expect("a percent above 0");
    let probe = (0..1_000_000)
        .map(|n| format!("00000000-0000-4000-8000-{n:012}"))
        .find(|id| in_cohort(salt, id, percent) && !in_cohort(salt, id, percent - 1))
        .expect("a device id in the new share of the cohort");
    let device = fleet::Device {
        id: probe,
        version: "1.0.0".to_owned(),
    };
    let base = scenario.base();
    fleet::eventually(
        Duration::from_secs(10),
        Duration::from_millis(25),
        &format!("the update server serves {percent}%"),
        || async {
            let offered = fleet::offered(scenario.fleet.client(), &base, &device)
                .await
                .ok()??;
            (offered == "1.1.0").then_some(())
        },
    )
    .await;
}

async fn cohorts_are_monotonic(mode: Mode) {
    let Timing { pause, never, .. } = TIMING;
    let rollout = rollout(
        json!([{"setPercent": 5}, {"pause": {"duration": pause}}, {"setPercent": 15}, {"pause": {"duration": pause}},
               {"setPercent": 35}, {"pause": {"duration": pause}}, {"setPercent": 65}, {"pause": {"duration": pause}},
               {"setPercent": 100}]),
        json!({"interval": never}),
        json!({}),
    );
    let mut scenario = Scenario::start(mode, rollout, no_failures(), 3).await;
    let mut on_candidate = BTreeSet::new();
    let mut served_percent = 0;
    loop {
        let status_before = scenario.status().await;
        let percent_before = status_before
            .as_ref()
            .and_then(|s| s.current_percent)
            .unwrap_or(0);
        if let Some(salt) = status_before.as_ref().and_then(|s| s.salt.as_deref())
            && percent_before > served_percent
        {
            // The update server learns a new status through its watch (in a cluster) or right
            // after it is saved (standalone): wait until a device new to the cohort is offered
            // the candidate, so the round below runs at the percent it is checked against.
            wait_until_served(&scenario, salt, percent_before).await;
            served_percent = percent_before;
        }
        let round = scenario.round().await;
        let Some(status) = scenario.status().await else {
            continue;
        };
        on_candidate = assert_exactly_the_cohort(&scenario, &round, &on_candidate, percent_before, &status);
        if phase(&status) == Some(RolloutPhase::Completed) && on_candidate.len() == DEVICES {
            break;
        }
    }
    scenario.assert_no_device_moved_back();
    let shares: BTreeSet<usize> = scenario
        .history
        .iter()
        .map(|versions| versions.iter().filter(|v| *v == "1.1.0").count())
        .collect();
    assert!(shares.len() >= 4, "the share rose in steps: {shares:?}");
}

async fn a_crash_mid_rollout_changes_nothing(mode: Mode) {
    let Timing {
        long_pause, never, ..
    } = TIMING;
    let steps = json!([{"setPercent": 20}, {"pause": {"duration": long_pause}}, {"setPercent": 50}, {"pause": {}}, {"setPercent": 100}]);
    let analysis = json!({"interval": never});
    let mut scenario = Scenario::start(
        mode,
        rollout(steps.clone(), analysis.clone(), json!({})),
        no_failures(),
        4,
    )
    .await;
    // Mid-pause at 20%: kill, restart, and the pause still ends at its first deadline.
    let paused = scenario
        .rounds_until(|status, _| status.current_percent == Some(20) && status.current_step_index == Some(1))
        .await;
    let on_candidate_before = scenario.on_candidate();
    scenario.crash_the_driver().await;
    let after_restart = scenario.status().await.expect("the status survived");
    assert_eq!(after_restart.salt, paused.salt);
    assert_eq!(after_restart.started_at, paused.started_at);
    assert_eq!(after_restart.pause_conditions, paused.pause_conditions);
    // The same cohort: nobody on the candidate leaves it.
    scenario.round().await;
    assert!(scenario.on_candidate().is_superset(&on_candidate_before));
    // Waiting at 50% for a person.
    let waiting = scenario
        .rounds_until(|status, _| status.current_percent == Some(50) && status.current_step_index == Some(3))
        .await;
    // Rounds take the new half of the cohort to the candidate (once the server serves 50%: in a
    // cluster it follows the status within a second); then nothing moves.
    let salt = waiting.salt.clone().expect("a salt");
    let cohort: BTreeSet<usize> = (0..DEVICES)
        .filter(|i| in_cohort(&salt, &scenario.fleet.devices[*i].id, 50))
        .collect();
    while scenario.on_candidate() != cohort {
        scenario.round().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_candidate = scenario.on_candidate();
    let round = scenario.round().await;
    assert!(
        round.outcomes.iter().all(|(_, o)| o.offered().is_none()),
        "settled at 50%"
    );
    // Crash the driver again, and the server devices talk to (in standalone mode, one part).
    scenario.crash_the_driver().await;
    if mode == Mode::Cluster {
        scenario.crash_the_server().await;
    }
    let after_restart = scenario.status().await.expect("the status survived");
    assert_eq!(after_restart.current_step_index, waiting.current_step_index);
    assert_eq!(after_restart.salt, waiting.salt);
    let round = scenario.round().await;
    assert!(
        round.outcomes.iter().all(|(_, o)| o.offered().is_none()),
        "after the restarts every device is offered what it already runs"
    );
    assert_eq!(scenario.on_candidate(), on_candidate);
    // Promoted by a person: to 100%.
    scenario
        .set_rollout(rollout(steps, analysis, json!({"ota.dev/promote": "1"})))
        .await;
    let status = scenario
        .rounds_until(|status, fleet| {
            phase(status) == Some(RolloutPhase::Completed)
                && fleet.devices.iter().all(|d| d.version == "1.1.0")
        })
        .await;
    assert_eq!(status.salt, paused.salt);
    assert_eq!(status.started_at, paused.started_at);
    scenario.assert_no_device_moved_back();
    if mode == Mode::Standalone {
        let logs = scenario.logs();
        assert!(logs.contains("Promoted past step 4 of 5"), "{logs}");
    }
}

#[tokio::test]
async fn standalone_a_healthy_candidate_walks_every_step_to_100_percent_and_every_device_ends_on_it() {
    healthy_candidate_walks_every_step(Mode::Standalone).await;
}

#[tokio::test]
async fn standalone_a_candidate_failing_on_30_percent_of_devices_is_aborted_and_every_device_returns_to_stable()
 {
    failing_candidate_is_aborted(Mode::Standalone).await;
}

#[tokio::test]
async fn standalone_cohorts_are_monotonic_no_device_flips_back_while_the_percent_rises() {
    cohorts_are_monotonic(Mode::Standalone).await;
}

#[tokio::test]
async fn standalone_killing_the_server_mid_rollout_changes_nothing_in_the_outcome() {
    a_crash_mid_rollout_changes_nothing(Mode::Standalone).await;
}

#[tokio::test]
async fn cluster_a_healthy_candidate_walks_every_step_to_100_percent_and_every_device_ends_on_it() {
    healthy_candidate_walks_every_step(Mode::Cluster).await;
}

#[tokio::test]
async fn cluster_a_candidate_failing_on_30_percent_of_devices_is_aborted_and_every_device_returns_to_stable()
{
    failing_candidate_is_aborted(Mode::Cluster).await;
}

#[tokio::test]
async fn cluster_cohorts_are_monotonic_no_device_flips_back_while_the_percent_rises() {
    cohorts_are_monotonic(Mode::Cluster).await;
}

#[tokio::test]
async fn cluster_killing_the_controller_mid_rollout_changes_nothing_in_the_outcome() {
    a_crash_mid_rollout_changes_nothing(Mode::Cluster).await;
}
