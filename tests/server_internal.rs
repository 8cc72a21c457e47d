//! The update server's internal listener over real HTTP on 127.0.0.1: rollout figures from the
//! device outcomes that `POST /stats` records (the real `ota standalone` binary), bad
//! parameters, a store that cannot be read (in process, on a real SQLite file), and that the
//! public listener does not serve it.

use std::{
    io::Read,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use ota_operator::{
    server::{self, StorageSetup},
    storage::Credentials,
};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, sqlite::SqliteConnection};

mod support;

const APP: &str = "com.example.shop";
/// The version the standalone example's production channel serves.
const VERSION: &str = "1.4.3";

struct Running {
    child: Child,
    base: String,
    internal: String,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Stop exactly the process this test started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ota standalone` on a copy of examples/standalone, with an internal listener.
async fn start_standalone() -> Running {
    let dir = tempfile::tempdir().unwrap();
    support::copy_example_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/standalone"),
        dir.path(),
    );
    let (port, internal_port) = (support::free_port(), support::free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["standalone", "--poll-ms", "100", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(dir.path())
        .env("OTA_INTERNAL_LISTEN", format!("127.0.0.1:{internal_port}"))
        .env("OTA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ota starts");
    let mut running = Running {
        child,
        base: format!("http://127.0.0.1:{port}"),
        internal: format!("http://127.0.0.1:{internal_port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{}/readyz", running.base)).send().await;
        let internal = client.get(format!("{}/healthz", running.internal)).send().await;
        if let (Ok(ready), Ok(internal)) = (ready, internal)
            && ready.status() == 200
            && internal.status() == 200
        {
            return running;
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            let mut stderr = String::new();
            running
                .child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("ota standalone exited with {status}:\n{stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "ota standalone was not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn device(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A stats event as plugin 8.51.14 on Android sends it.
fn event(device_id: &str, action: &str, version: &str) -> Value {
    json!({
        "platform": "android", "device_id": device_id, "app_id": APP, "custom_id": "",
        "version_build": "1.4.0", "version_code": "140", "version_os": "14",
        "version_name": version, "old_version_name": "builtin", "plugin_version": "8.51.14",
        "is_emulator": false, "is_prod": true, "action": action, "defaultChannel": "",
        "install_source": "google_play"
    })
}

async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn figures_url(base: &str, channel: &str, version: &str, since_ms: i64) -> String {
    format!(
        "{base}/internal/v1/rollout-figures?app_id={APP}&channel={channel}&version={version}&since_ms={since_ms}"
    )
}

/// Polls the figures until they equal `expected` (writes reach the store in batches).
async fn wait_for_figures(url: &str, expected: Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(url).await;
        assert_eq!(status, 200, "{body}");
        let figures: Value = serde_json::from_str(&body).expect("JSON figures");
        if figures == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "figures {figures} never became {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stats_become_rollout_figures_on_the_internal_listener_only() {
    let server = start_standalone().await;
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Four devices take 1.4.3; two of them then fail with it (one in a batch).
    for n in 1..=4 {
        let (status, answer) = post(&server.base, "/stats", &event(&device(n), "set", VERSION)).await;
        assert_eq!((status, &answer["status"]), (200, &json!("ok")), "{answer}");
    }
    let (status, _) = post(&server.base, "/stats", &event(&device(2), "update_fail", VERSION)).await;
    assert_eq!(status, 200);
    // The failure is stamped by a device whose clock is a day behind: it counts from when the
    // server heard of it (rollout windows are on the server's clock).
    let mut skewed = event(&device(3), "decrypt_fail", VERSION);
    skewed["timestamp"] = json!(start_ms - 86_400_000);
    let batch = json!([event(&device(3), "download_complete", VERSION), skewed]);
    let (status, answer) = post(&server.base, "/stats", &batch).await;
    assert_eq!(status, 200, "{answer}");
    // An old plugin's download_fail (sent when there was no update) is not a failure.
    let mut old = event(&device(4), "download_fail", VERSION);
    old["plugin_version"] = json!("7.16.9");
    let (status, _) = post(&server.base, "/stats", &old).await;
    assert_eq!(status, 200);
    // A platform no channel serves: no channel resolves, so no outcome (counted).
    let mut unknown = event(&device(5), "set", VERSION);
    unknown["platform"] = json!("windows");
    let (status, _) = post(&server.base, "/stats", &unknown).await;
    assert_eq!(status, 200);
    // A device that asks for a channel that does not exist resolves none either (as in Capgo).
    let mut missing = event(&device(6), "update_fail", VERSION);
    missing["defaultChannel"] = json!("nightly");
    let (status, _) = post(&server.base, "/stats", &missing).await;
    assert_eq!(status, 200);

    // Versions that are none of the App's Bundles leave no failure and no outcome (stats are
    // unauthenticated; each would otherwise be remembered for the device), only a count.
    for junk in ["9.9.9", "junk-1"] {
        let (status, _) = post(&server.base, "/stats", &event(&device(7), "update_fail", junk)).await;
        assert_eq!(status, 200);
    }

    let url = figures_url(&server.internal, "production", VERSION, 0);
    wait_for_figures(&url, json!({"attempts": 4, "failures": 2})).await;
    let (_, body) = get(&figures_url(&server.internal, "production", "9.9.9", 0)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"attempts": 0, "failures": 0})
    );
    let since_start = figures_url(&server.internal, "production", VERSION, start_ms);
    let (_, body) = get(&since_start).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"attempts": 4, "failures": 2})
    );
    let future = figures_url(&server.internal, "production", VERSION, start_ms + 3_600_000);
    let (_, body) = get(&future).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"attempts": 0, "failures": 0})
    );
    let (_, body) = get(&figures_url(&server.internal, "beta", VERSION, 0)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"attempts": 0, "failures": 0})
    );

    let (status, metrics) = get(&format!("{}/metrics", server.internal)).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ota_server_outcomes_without_channel_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ota_server_stats_unknown_versions_total 2"),
        "{metrics}"
    );
    let (status, health) = get(&format!("{}/healthz", server.internal)).await;
    assert_eq!((status, health.as_str()), (200, "ok\n"));

    // Bad parameters: 400 with a message naming the problem.
    for (query, expected) in [
        (
            "app_id=com.example.shop&channel=production&version=1.4.3",
            "since_ms",
        ),
        ("app_id=com.example.shop&version=1.4.3&since_ms=0", "channel"),
        (
            "app_id=com.example.shop&channel=production&version=1.4.3&since_ms=soon",
            "since_ms \"soon\"",
        ),
        (
            "app_id=com.example.shop&channel=production&channel=beta&version=1.4.3&since_ms=0",
            "more than once",
        ),
        (
            "appId=com.example.shop&channel=production&version=1.4.3&since_ms=0",
            "appId",
        ),
    ] {
        let (status, body) = get(&format!(
            "{}/internal/v1/rollout-figures?{query}",
            server.internal
        ))
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(body["error"], "bad_request");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(expected), "{query}: {message}");
    }

    // The public listener does not serve the figures.
    let (status, _) = get(&figures_url(&server.base, "production", VERSION, 0)).await;
    assert_eq!(status, 404);
}

/// The controller's client reads an App's monthly active devices from the real internal
/// listener: each device that checked counts once; the query must be exactly one app_id.
#[tokio::test]
async fn monthly_active_devices_are_read_by_the_controllers_client() {
    use ota_operator::controller::figures::FiguresClient;
    let server = start_standalone().await;
    for n in [11, 12, 13, 11] {
        let (status, answer) = post(&server.base, "/updates", &event(&device(n), "", VERSION)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let client = FiguresClient::new(reqwest::Client::new(), server.internal.clone());
    // Sightings reach the store in batches.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let devices = client
            .monthly_active_devices("default", "shop", APP)
            .await
            .expect("the count");
        if devices == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{devices} devices, not 3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = client
        .monthly_active_devices("default", "shop", "com.example.other")
        .await
        .expect("the count");
    assert_eq!(other, 0);

    let path = format!("{}/internal/v1/monthly-active-devices", server.internal);
    for query in [
        "",
        "?app_id=",
        "?appId=com.example.shop",
        "?app_id=a&app_id=b",
        "?app_id=a&x=1",
    ] {
        let (status, body) = get(&format!("{path}{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(body["error"], "bad_request", "{query}");
    }
    // Not on the public listener.
    let (status, _) = get(&format!(
        "{}/internal/v1/monthly-active-devices?app_id={APP}",
        server.base
    ))
    .await;
    assert_eq!(status, 404);
}

#[test]
fn both_serving_commands_take_the_internal_listen_flag() {
    for command in ["server", "standalone"] {
        let output = Command::new(env!("CARGO_BIN_EXE_ota"))
            .args([command, "--help"])
            .output()
            .expect("ota runs");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(
            help.contains("--internal-listen") && help.contains("OTA_INTERNAL_LISTEN"),
            "{command}: {help}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["standalone", ".", "--internal-listen", "not-an-address"])
        .output()
        .expect("ota runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--internal-listen"), "{stderr}");
}

/// A store that cannot be read answers 503 with the reason (here the table is gone from the
/// real SQLite file), and the next request after it is back answers again.
#[tokio::test]
async fn an_unreadable_store_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("devices.db");
    let database = format!("sqlite://{}", file.display());
    let storage = StorageSetup {
        base_dir: dir.path().to_owned(),
        credentials: Credentials::default(),
    };
    let mut boot = server::boot(&database, "127.0.0.1:0".parse().unwrap(), None, storage)
        .await
        .expect("boot");
    let internal: SocketAddr = boot
        .bind_internal("127.0.0.1:0".parse().unwrap())
        .await
        .expect("the internal listener binds");
    let public = boot.address;
    let state = Arc::clone(&boot.state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve_until(boot, async move {
        let _ = stopped.await;
    }));
    let base = format!("http://{internal}");
    let url = figures_url(&base, "production", VERSION, 0);
    let (status, body) = get(&url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"attempts": 0, "failures": 0})
    );

    let mut connection = SqliteConnection::connect(&database).await.expect("connect");
    connection
        .execute("ALTER TABLE device_outcomes RENAME TO device_outcomes_away")
        .await
        .expect("rename");
    let (status, body) = get(&url).await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(body["error"], "store_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("count the outcomes of a version"),
        "{body}"
    );
    assert!(
        state
            .metrics
            .render()
            .contains("ota_server_rollout_figures_unavailable_total 1")
    );

    connection
        .execute("ALTER TABLE device_outcomes_away RENAME TO device_outcomes")
        .await
        .expect("rename back");
    let _ = connection.close().await;
    let (status, _) = get(&url).await;
    assert_eq!(status, 200);
    // The devices' listener has no internal routes.
    let (status, _) = get(&figures_url(
        &format!("http://{public}"),
        "production",
        VERSION,
        0,
    ))
    .await;
    assert_eq!(status, 404);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stops")
        .expect("the server task")
        .expect("the server ends cleanly");
}

/// Outcomes older than the served App's longest Rollout window plus a day are pruned (in
/// process, on a real SQLite file); younger ones, and those of Apps this server does not serve,
/// stay. A store that cannot be pruned is logged and counted, and the next round prunes. A
/// Rollout missing from a later snapshot does not shorten the retention.
#[tokio::test]
async fn outcomes_past_every_rollout_window_are_pruned_for_the_apps_served() {
    use ota_operator::{
        core::snapshot::{Snapshot, SnapshotInputs},
        devices::{OutcomeReport, Write},
        server::{Served, retention::OutcomePruner},
    };
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("devices.db").display());
    let storage = StorageSetup {
        base_dir: dir.path().to_owned(),
        credentials: Credentials::default(),
    };
    let boot = server::boot(&database, "127.0.0.1:0".parse().unwrap(), None, storage)
        .await
        .expect("boot");
    let state = Arc::clone(&boot.state);
    fn object<K: serde::de::DeserializeOwned>(value: Value) -> K {
        serde_json::from_value(value).expect("an object")
    }
    let meta = |name: &str| json!({"name": name, "namespace": "shop-ns", "uid": format!("uid-{name}")});
    let inputs = SnapshotInputs {
        apps: vec![object(
            json!({"apiVersion": "ota.dev/v1alpha1", "kind": "App", "metadata": meta("shop"),
            "spec": {"appId": APP, "platforms": ["android"], "storage": {"filesystem": {"path": "store"}}}}),
        )],
        channels: vec![object(
            json!({"apiVersion": "ota.dev/v1alpha1", "kind": "Channel", "metadata": meta("production"),
            "spec": {"appRef": "shop", "public": true}}),
        )],
        bundles: vec![],
        rollouts: vec![object(
            json!({"apiVersion": "ota.dev/v1alpha1", "kind": "Rollout", "metadata": meta("to-1.5.0"),
            "spec": {"channelRef": "production", "bundleRef": "shop-1.5.0", "steps": [{"setPercent": 10}],
                     "analysis": {"window": "2h"}}}),
        )],
        manifests: Default::default(),
    };
    let (snapshot, _) = Snapshot::build(&inputs);
    let now_ms = 1_800_000_000_000;
    let keep_ms = (2 + 24) * 3600 * 1000;
    let outcome = |app: &str, device: &str, at_ms: i64| {
        Write::Outcome(OutcomeReport {
            app_id: app.to_owned(),
            version: "1.5.0".to_owned(),
            device_id: device.to_owned(),
            channel: "production".to_owned(),
            failed: true,
            at_ms,
        })
    };
    state
        .store
        .apply(&[
            outcome(APP, "past", now_ms - keep_ms - 1),
            outcome(APP, "within", now_ms - keep_ms + 60_000),
            outcome("com.example.other", "past", now_ms - keep_ms - 1),
        ])
        .await
        .expect("the outcomes are written");
    let figures = |app: &'static str| {
        let store = state.store.clone();
        async move {
            let figures = store
                .outcome_figures(app, "production", "1.5.0", 0)
                .await
                .expect("figures");
            figures.attempts
        }
    };

    let mut pruner = OutcomePruner::default();
    assert_eq!(pruner.prune(&state, now_ms).await, 0, "nothing is served yet");
    state.publish(Served {
        snapshot,
        storage: Default::default(),
        manifests: Default::default(),
    });
    assert_eq!(pruner.prune(&state, now_ms).await, 1);
    assert_eq!(
        figures(APP).await,
        1,
        "the outcome within the window and a day stays"
    );
    assert_eq!(
        figures("com.example.other").await,
        1,
        "an App not served here is not pruned"
    );
    assert!(
        state
            .metrics
            .render()
            .contains("ota_server_outcomes_pruned_total 1")
    );

    let mut connection = SqliteConnection::connect(&database).await.expect("connect");
    connection
        .execute("ALTER TABLE device_outcomes RENAME TO device_outcomes_away")
        .await
        .expect("rename");
    assert_eq!(pruner.prune(&state, now_ms + keep_ms).await, 0);
    assert!(
        state
            .metrics
            .render()
            .contains("ota_server_outcome_prunes_failed_total 1")
    );
    connection
        .execute("ALTER TABLE device_outcomes_away RENAME TO device_outcomes")
        .await
        .expect("rename back");
    let _ = connection.close().await;

    // A snapshot that lacks the Rollout for a moment (a YAML file half saved) does not shorten
    // the retention: the outcome 25 h old stays.
    state
        .store
        .apply(&[outcome(APP, "a-day-old", now_ms + keep_ms - 25 * 3600 * 1000)])
        .await
        .expect("written");
    let (without_rollout, _) = Snapshot::build(&SnapshotInputs {
        rollouts: vec![],
        ..inputs
    });
    state.publish(Served {
        snapshot: without_rollout,
        storage: Default::default(),
        manifests: Default::default(),
    });
    assert_eq!(
        pruner.prune(&state, now_ms + keep_ms).await,
        1,
        "only the one past 26 h"
    );
    assert_eq!(figures(APP).await, 1);
    // A pruner started afresh on that snapshot keeps a day: the 25 h one goes.
    assert_eq!(OutcomePruner::default().prune(&state, now_ms + keep_ms).await, 1);
    assert_eq!(figures(APP).await, 0);
    drop(boot);
}
