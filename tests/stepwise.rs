//! `updatePath: stepwise` end to end: a Channel that served 1.0.0, 1.1.0, 1.2.0 and 1.3.0 (git
//! moved its `bundleRef` from one to the next) walks a fleet of devices on 1.0.0 through each
//! release, one per update check, over HTTP, as the plugin does it (tests/support/fleet.rs: each
//! device downloads the offered zip, checks its sha256 and reports `set`).
//!
//! - `standalone_*`: the real `ota standalone` binary serving a folder of YAML and zips; it is
//!   killed and started again before the walk, so the history it keeps in its device store must
//!   survive a restart.
//! - `cluster_*`: the real test API server holding the objects (`tests/run.sh --test stepwise`
//!   starts it), the controller writing the Channel's `status.history` and the update server
//!   serving from its watch (tests/support/fleet_cluster.rs, both in this process).

use std::time::Duration;

use kube::Api;
use ota_operator::api::Channel;
use serde_json::{Value, json};

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/fleet_cluster.rs"]
mod fleet_cluster;
mod support;

use fleet::{BundleFile, Device, Fleet, Outcome, Standalone, no_failures, offered};
use fleet_cluster::InProcessCluster;

/// The releases, in the order git moves the channel through them.
const RELEASES: [&str; 4] = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"];
/// Devices in the fleet.
const DEVICES: usize = 40;
/// Devices checking at once.
const CONCURRENCY: usize = 8;
/// The longest a change of the configuration may take to be served.
const SERVED_WITHIN: Duration = Duration::from_secs(30);

fn bundles() -> Vec<BundleFile> {
    RELEASES
        .iter()
        .map(|version| BundleFile::new(&format!("fleet-{version}"), version))
        .collect()
}

/// The public Android channel `production` on `bundle`, with `updatePath: path`.
fn channel(bundle: &str, path: &str) -> Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Channel", "metadata": {"name": "production"},
        "spec": {"appRef": "fleet", "bundleRef": bundle, "public": true, "android": true, "updatePath": path},
    })
}

/// A device running `version` that is not part of the fleet.
fn probe(version: &str) -> Device {
    Device {
        id: "0f0f0f0f-0000-4000-8000-00000000abcd".to_owned(),
        version: version.to_owned(),
    }
}

/// Waits until a device on `version` is offered `expected` (`None`: no update).
async fn until_offered(base: &str, version: &str, expected: Option<&str>, logs: impl Fn() -> String) {
    let client = reqwest::Client::new();
    let device = probe(version);
    let deadline = std::time::Instant::now() + SERVED_WITHIN;
    loop {
        let answer = offered(&client, base, &device).await;
        if matches!(&answer, Ok(offer) if offer.as_deref() == expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a device on {version} should be offered {expected:?}, got {answer:?} for {SERVED_WITHIN:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Devices on 1.0.0 check four times: they take 1.1.0, 1.2.0, 1.3.0, then are up to date.
async fn walk_the_fleet(base: &str, logs: impl Fn() -> String) {
    let mut fleet = Fleet::new(7, DEVICES, "1.0.0", CONCURRENCY);
    let fails = no_failures();
    for expected in ["1.1.0", "1.2.0", "1.3.0"] {
        let round = fleet.round(base, &fails).await;
        assert!(round.broken().is_empty(), "{:?}\n{}", round.broken(), logs());
        for (before, outcome) in &round.outcomes {
            assert_eq!(
                *outcome,
                Outcome::Set(expected.to_owned()),
                "a device on {before} should take {expected}\n{}",
                logs()
            );
        }
    }
    let last = fleet.round(base, &fails).await;
    for (before, outcome) in &last.outcomes {
        assert_eq!(before, "1.3.0");
        assert_eq!(*outcome, Outcome::NoUpdate("no_new_version_available".to_owned()));
    }
    assert_eq!(
        fleet.versions().into_iter().collect::<Vec<_>>(),
        [("1.3.0".to_owned(), DEVICES)]
    );
}

/// The App, the Bundles (zips next to the YAML) in `world.yaml`; the Channel in `channel.yaml`.
fn write_world(dir: &std::path::Path, bundles: &[BundleFile]) {
    fleet::write_app_and_bundles(dir, &bundles.iter().collect::<Vec<_>>(), "");
}

/// Replaces the Channel's YAML (written aside then renamed: never read half written).
fn write_channel(dir: &std::path::Path, channel: &Value) {
    let partial = dir.join(".channel.yaml.partial");
    std::fs::write(&partial, serde_json::to_string(channel).expect("JSON")).expect("written");
    std::fs::rename(&partial, dir.join("channel.yaml")).expect("renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_devices_on_1_0_0_walk_each_release_in_three_checks() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    write_world(dir.path(), &bundles());
    write_channel(dir.path(), &channel("fleet-1.0.0", "stepwise"));
    let mut server = Standalone::start(dir.path(), &[]).await;
    let base = server.base();
    until_offered(&base, "0.9.0", Some("1.0.0"), || server.logs()).await;
    // Git moves the channel one release at a time; each is served (and so recorded) before the
    // next.
    for pair in RELEASES.windows(2) {
        let (before, next) = (pair[0], pair[1]);
        write_channel(dir.path(), &channel(&format!("fleet-{next}"), "stepwise"));
        until_offered(&base, before, Some(next), || server.logs()).await;
    }
    // The history is in the device store: a restart keeps the steps.
    server.restart().await;
    until_offered(&base, "1.0.0", Some("1.1.0"), || server.logs()).await;
    walk_the_fleet(&base, || server.logs()).await;

    // The same channel with `latest` sends a device on 1.0.0 straight to 1.3.0.
    write_channel(dir.path(), &channel("fleet-1.3.0", "latest"));
    until_offered(&base, "1.0.0", Some("1.3.0"), || server.logs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_devices_on_1_0_0_walk_each_release_in_three_checks() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let bundles = bundles();
    let refs: Vec<&BundleFile> = bundles.iter().collect();
    let cluster = InProcessCluster::start_with(
        fleet_cluster::database_in(dir.path()),
        &refs,
        vec![channel("fleet-1.0.0", "stepwise")],
    )
    .await;
    let channels = Api::<Channel>::namespaced(cluster.client.clone(), &cluster.namespace);
    let history = || async {
        channels
            .get("production")
            .await
            .expect("the Channel")
            .status
            .map(|s| s.history.into_iter().map(|e| e.version).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // Git moves the channel one release at a time; the controller records each in the status
    // once the Bundle is synced and served.
    for (served, release) in RELEASES.iter().enumerate() {
        if served > 0 {
            support::apply_document(
                &cluster.client,
                &cluster.namespace,
                &channel(&format!("fleet-{release}"), "stepwise"),
            )
            .await
            .expect("the Channel applies");
        }
        let expected: Vec<String> = RELEASES[..=served].iter().map(|v| (*v).to_owned()).collect();
        let found = tokio::time::timeout(SERVED_WITHIN, async {
            while history().await != expected {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "status.history should be {expected:?}, is {:?}\n{}",
            history().await,
            cluster.logs()
        );
    }
    let base = cluster.base();
    // The update server serves the Channel as the API server holds it now.
    until_offered(&base, "1.2.0", Some("1.3.0"), || cluster.logs()).await;
    until_offered(&base, "1.0.0", Some("1.1.0"), || cluster.logs()).await;
    walk_the_fleet(&base, || cluster.logs()).await;
}
