//! Nothing acknowledged is lost: `ota standalone`, a real process, takes 3,000 requests (stats
//! events, one by one and in batches, and `/channel_self` sets) from 64 concurrent clients, is
//! killed with SIGKILL right after its last answer, and every write it acknowledged is in its
//! device store: counters, outcomes, failed marks and channel overrides. On an SQLite file and
//! on the real PostgreSQL server (`tests/run.sh --test durability` starts it).

use futures::{StreamExt, stream};
use ota_operator::devices::DeviceStore;
use serde_json::{Value, json};

mod support;

use support::standalone::{BETA_CHANNEL, StandaloneProcess};

const APP: &str = "com.example.shop";
/// The example's bundle: events that name it count for failed marks and outcomes.
const VERSION: &str = "1.4.3";
/// Devices that report stats; as many others set their channel.
const DEVICES: usize = 1000;
const CONCURRENCY: usize = 64;

/// Starts `ota standalone` with a beta channel, its device store at `database`.
async fn start(database: &str) -> StandaloneProcess {
    StandaloneProcess::start(database, &[BETA_CHANNEL]).await
}

/// The UUID of the device that reports stats number `device`.
fn stats_device(device: usize) -> String {
    format!("00000000-0000-4000-8000-{device:012x}")
}

/// The UUID of the device that sets its channel number `device`.
fn chooser_device(device: usize) -> String {
    format!("00000000-0000-4000-9000-{device:012x}")
}

fn stats_event(device: usize, action: &str) -> Value {
    json!({
        "platform": "android", "device_id": stats_device(device), "app_id": APP,
        "custom_id": "", "version_build": "1.4.0", "version_code": "42", "version_os": "14",
        "version_name": VERSION, "old_version_name": "1.4.2", "plugin_version": "8.51.14",
        "is_emulator": false, "is_prod": true, "defaultChannel": "", "action": action,
    })
}

/// The requests: for each device, a `set` alone, a batch of `download_complete` and
/// `update_fail`, and, for a device of its own, a channel set; interleaved.
fn requests() -> Vec<(&'static str, Value)> {
    (0..DEVICES)
        .flat_map(|device| {
            [
                ("/stats", stats_event(device, "set")),
                (
                    "/stats",
                    json!([
                        stats_event(device, "download_complete"),
                        stats_event(device, "update_fail")
                    ]),
                ),
                (
                    "/channel_self",
                    json!({
                        "platform": "android", "device_id": chooser_device(device),
                        "app_id": APP, "version_build": "1.4.0", "version_code": "42",
                        "version_name": "builtin", "plugin_version": "7.33.0", "is_emulator": false,
                        "is_prod": true, "channel": "beta",
                    }),
                ),
            ]
        })
        .collect()
}

/// Sends every request (each must be answered 200), then kills the server at once.
async fn send_all_then_kill(mut server: StandaloneProcess) {
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let answers: Vec<(u16, String)> = stream::iter(requests())
        .map(|(path, body)| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let response = client
                    .post(format!("{base}{path}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("POST {path}: {e}"));
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    // SIGKILL, before anything else: what was acknowledged must already be stored.
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("the server is gone");
    let refused: Vec<_> = answers.iter().filter(|(status, _)| *status != 200).collect();
    assert!(
        refused.is_empty(),
        "{} requests not acknowledged: {:?}",
        refused.len(),
        refused.first()
    );
}

/// Checks that every acknowledged write is in the store at `database`.
async fn assert_everything_stored(database: &str) {
    let store = DeviceStore::open(database)
        .await
        .expect("the store opens after the kill");
    let mut counted: Vec<(String, i64)> = store
        .counters(APP, VERSION, 0)
        .await
        .expect("counters")
        .into_iter()
        .map(|counter| (counter.action, counter.count))
        .collect();
    counted.sort();
    let devices = DEVICES as i64;
    assert_eq!(
        counted,
        vec![
            ("download_complete".to_owned(), devices),
            ("set".to_owned(), devices),
            ("update_fail".to_owned(), devices),
        ]
    );
    let memory = store.load_memory().await.expect("overrides and failed marks");
    let marked = (0..DEVICES)
        .filter(|&device| memory.facts(APP, &stats_device(device)).failed_versions == [VERSION])
        .count();
    let chosen = (0..DEVICES)
        .filter(|&device| {
            memory
                .facts(APP, &chooser_device(device))
                .self_set_channel
                .as_deref()
                == Some("beta")
        })
        .count();
    assert_eq!(
        (marked, chosen),
        (DEVICES, DEVICES),
        "failed marks, channel overrides"
    );
    let figures = store
        .outcome_figures(APP, "production", VERSION, 0)
        .await
        .expect("outcome figures");
    assert_eq!(
        (figures.attempts, figures.failures),
        (DEVICES as u64, DEVICES as u64)
    );
}

#[tokio::test]
async fn sigkill_after_the_last_acknowledgement_loses_nothing_on_sqlite() {
    let folder = tempfile::tempdir().expect("a folder for the database");
    let database = format!("sqlite://{}", folder.path().join("devices.db").display());
    send_all_then_kill(start(&database).await).await;
    assert_everything_stored(&database).await;
}

#[tokio::test]
async fn sigkill_after_the_last_acknowledgement_loses_nothing_on_postgres() {
    let database = support::fresh_postgres_database("durability").await;
    send_all_then_kill(start(&database).await).await;
    assert_everything_stored(&database).await;
}
