//! `ota standalone` end to end: the real binary serving a copy of examples/standalone over real
//! HTTP on 127.0.0.1, answering requests shaped exactly as plugin versions 5.x to 8.x send them.

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod support;

struct Running {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Stop exactly the process this test started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_example() -> Running {
    start_example_with(None, &[]).await
}

/// Starts `ota standalone` on a copy of examples/standalone, with `app_yaml` in place of its
/// app.yaml when given, and `env` added to the process's environment.
async fn start_example_with(app_yaml: Option<&str>, env: &[(&str, &str)]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    support::copy_example_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/standalone"),
        dir.path(),
    );
    if let Some(app_yaml) = app_yaml {
        std::fs::write(dir.path().join("app.yaml"), app_yaml).unwrap();
    }
    let port = support::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["standalone", "--poll-ms", "100", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(dir.path())
        .env("OTA_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ota starts");
    let mut running = Running {
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{}/readyz", running.base)).send().await
            && response.status() == 200
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

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plugin")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
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

const ZIP_SHA: &str = "2b3898b01ccefd0a918bd8c28c44a02caed9ab0f58ec73c409750eb33aae920c";

/// GET `url` with one request header.
async fn get_with(url: &str, name: &str, value: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header(name, value)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_plugin_generation_gets_the_right_answer_and_can_download_it() {
    let server = start_example().await;
    for (name, manifest, checksum, metadata) in [
        ("updates-5.9.0-android.json", false, "", false),
        ("updates-5.9.0-ios.json", false, "", false),
        ("updates-6.2.0-android.json", false, "", false),
        ("updates-7.0.35-android.json", true, ZIP_SHA, false),
        ("updates-7.33.0-ios.json", true, ZIP_SHA, false),
        ("updates-8.42.6-ios.json", true, ZIP_SHA, true),
        ("updates-8.51.14-android.json", true, ZIP_SHA, true),
        ("updates-8.51.14-ios-dev-nokey.json", true, ZIP_SHA, true),
    ] {
        let mut body = fixture(name)["body"].clone();
        // These fixtures come from apps configured with a public key; the example App has none.
        body.as_object_mut().unwrap().remove("key_id");
        let (status, answer) = post(&server.base, "/updates", &body).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(answer["version"], "1.4.3", "{name}: {answer}");
        for forbidden in ["error", "message", "kind"] {
            assert!(
                answer.get(forbidden).is_none(),
                "{name}: an offer carries no {forbidden}: {answer}"
            );
        }
        assert_eq!(answer["checksum"], checksum, "{name}");
        assert_eq!(answer["session_key"], "", "{name}");
        assert_eq!(answer.get("manifest").is_some(), manifest, "{name}: {answer}");
        assert_eq!(answer.get("link").is_some(), metadata, "{name}: {answer}");
        let zip = reqwest::get(answer["url"].as_str().unwrap()).await.unwrap();
        assert_eq!(zip.status(), 200);
        assert_eq!(zip.headers()["etag"], format!("\"{ZIP_SHA}\""));
        assert!(
            zip.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("no-transform")
        );
        assert!(zip.headers().get("content-encoding").is_none());
        assert_eq!(
            hex::encode(Sha256::digest(zip.bytes().await.unwrap())),
            ZIP_SHA,
            "{name}"
        );
        // A cache revalidating (exact, weak or in a list) gets a 304 with the same validators.
        let url = answer["url"].as_str().unwrap();
        for sent in [
            format!("\"{ZIP_SHA}\""),
            format!("W/\"{ZIP_SHA}\""),
            format!("\"other\", W/\"{ZIP_SHA}\""),
        ] {
            let again = get_with(url, "if-none-match", &sent).await;
            assert_eq!(again.status(), 304, "{sent}");
            assert_eq!(again.headers()["etag"], format!("\"{ZIP_SHA}\""));
            assert!(
                again.headers()["cache-control"]
                    .to_str()
                    .unwrap()
                    .contains("immutable")
            );
        }
        let other = get_with(url, "if-none-match", "\"other\"").await;
        assert_eq!(other.status(), 200);
    }
}

/// Waits until the example bundle's Brotli variants (made in the background after it is
/// synced and served with raw files) are in the delta manifest; that answer.
async fn answer_with_variants(base: &str) -> Value {
    let mut body = fixture("updates-8.51.14-android.json")["body"].clone();
    body.as_object_mut().unwrap().remove("key_id");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, answer) = post(base, "/updates", &body).await;
        let has_variant = answer["manifest"]
            .as_array()
            .is_some_and(|files| files.iter().any(|f| f["file_name"] == "vendor.js.br"));
        if has_variant {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "no Brotli variants within 20 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn delta_files_download_and_verify_and_ranges_resume() {
    let server = start_example().await;
    let answer = answer_with_variants(&server.base).await;
    let manifest = answer["manifest"].as_array().expect("a manifest").clone();
    let names: Vec<&str> = manifest
        .iter()
        .map(|f| f["file_name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"index.html") && names.contains(&"vendor.js.br"),
        "{names:?}"
    );
    for file in &manifest {
        let bytes = reqwest::get(file["download_url"].as_str().unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let content = if file["file_name"].as_str().unwrap().ends_with(".br") {
            let mut out = Vec::new();
            brotli::Decompressor::new(&bytes[..], 4096)
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            bytes.to_vec()
        };
        assert_eq!(
            hex::encode(Sha256::digest(&content)),
            file["file_hash"],
            "{}",
            file["file_name"]
        );
    }
    // A resumed download: the plugin sends Range: bytes=N-.
    let url = answer["url"].as_str().unwrap();
    let full = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    let partial = get_with(url, "range", "bytes=100-").await;
    assert_eq!(partial.status(), 206);
    assert_eq!(partial.bytes().await.unwrap(), full.slice(100..));
    let past_end = reqwest::Client::new()
        .get(url)
        .header("range", format!("bytes={}-", full.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(past_end.status(), 416);
    let traversal = reqwest::get(format!(
        "{}/files/com.example.shop/..%2F..%2Fetc%2Fpasswd",
        server.base
    ))
    .await
    .unwrap();
    assert!(
        traversal.status() == 400 || traversal.status() == 404,
        "{}",
        traversal.status()
    );
}

#[tokio::test]
async fn up_to_date_builtin_and_refusals_use_capgo_shapes() {
    let server = start_example().await;
    let mut body = fixture("updates-8.51.14-android.json")["body"].clone();
    body.as_object_mut().unwrap().remove("key_id");
    body["version_name"] = json!("1.4.3");
    let (status, answer) = post(&server.base, "/updates", &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        (answer["error"].as_str(), answer["kind"].as_str()),
        (Some("no_new_version_available"), Some("up_to_date"))
    );
    assert!(answer["message"].is_string());

    body["version_build"] = json!("2.0.0");
    body["version_name"] = json!("2.0.0");
    let (_, answer) = post(&server.base, "/updates", &body).await;
    assert_eq!(answer["error"], "disable_auto_update_under_native", "{answer}");
    assert_eq!(answer["kind"], "blocked");

    // 8.42.6 keeps the channel set by setChannel("beta") and sends it; the example has no beta
    // channel, and as in Capgo there is no fallback to the public one.
    let mut beta = fixture("updates-8.42.6-android.json")["body"].clone();
    beta.as_object_mut().unwrap().remove("key_id");
    let (_, answer) = post(&server.base, "/updates", &beta).await;
    assert_eq!(
        (answer["error"].as_str(), answer["kind"].as_str()),
        (Some("no_channel"), Some("failed")),
        "{answer}"
    );

    body["app_id"] = json!("com.example.unknown");
    let (status, answer) = post(&server.base, "/updates", &body).await;
    assert_eq!(status, 200, "never a 429 for an unknown app");
    assert_eq!(
        (answer["error"].as_str(), answer["kind"].as_str()),
        (Some("unknown_app"), Some("failed"))
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors_never_a_500() {
    let server = start_example().await;
    let client = reqwest::Client::new();
    let send = |path: &str, body: Vec<u8>| {
        client
            .post(format!("{}{path}", server.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = send("/updates", b"{not json".to_vec()).await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (answer["error"].as_str(), answer["kind"].as_str()),
        (Some("invalid_json_parse_body"), Some("failed"))
    );
    let response = send(
        "/updates",
        br#"{"app_id":"com.example.shop","device_id":"nope"}"#.to_vec(),
    )
    .await
    .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "invalid_device_id");
    let response = send("/updates", vec![b' '; 200 * 1024]).await.unwrap();
    assert_eq!(response.status(), 413);
    // The unread rest of the body is on the connection: the server closes it, and says so, so
    // the client's next request goes on a fresh one.
    assert_eq!(response.headers()["connection"], "close");
    let response = send("/stats", b"\"just a string\"".to_vec()).await.unwrap();
    assert_eq!(response.status(), 400);
    let response = send("/channel_self", b"[]".to_vec()).await.unwrap();
    assert_eq!(response.status(), 400);
    let health: Value = reqwest::get(format!("{}/updates", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
}

#[tokio::test]
async fn stats_of_every_generation_are_accepted_and_a_failure_stops_the_offer() {
    let server = start_example().await;
    for name in [
        "stats-5.9.0-android-set.json",
        "stats-6.2.0-android-download_fail-noupdate.json",
        "stats-7.33.0-android-worker-download_zip_start.json",
        "stats-8.42.6-android-batch.json",
        "stats-8.51.14-android-batch.json",
        "stats-8.51.14-android-worker-download_manifest_file_fail.json",
        "stats-8.51.14-ios-rate_limit_reached.json",
    ] {
        let body = fixture(name)["body"].clone();
        let (status, answer) = post(&server.base, "/stats", &body).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["status"], "ok", "{name}");
        if body.is_array() {
            let results = answer["results"].as_array().unwrap();
            assert_eq!(results.len(), body.as_array().unwrap().len(), "{name}");
            assert!(results.iter().all(|r| r["status"] == "ok"), "{name}: {answer}");
        }
    }
    // The device reports 1.4.3 failed (it never called notifyAppReady): it is not offered again.
    let mut check = fixture("updates-8.51.14-android.json")["body"].clone();
    check.as_object_mut().unwrap().remove("key_id");
    let mut failure = check.clone();
    failure["action"] = json!("update_fail");
    failure["version_name"] = json!("1.4.3");
    failure["old_version_name"] = json!("");
    let (status, _) = post(&server.base, "/stats", &failure).await;
    assert_eq!(status, 200);
    let (_, answer) = post(&server.base, "/updates", &check).await;
    assert_eq!(answer["error"], "bundle_failed_on_device", "{answer}");
    assert_eq!(answer["kind"], "blocked");
}

/// A stats event the device store cannot commit (here a table is gone from the real SQLite
/// file) is answered 503 with `Retry-After`, which makes the plugin keep it and send it again;
/// once the store is back, the same event is acknowledged and stored.
#[tokio::test]
async fn stats_the_store_cannot_commit_are_answered_503_and_stored_when_sent_again() {
    use sqlx::{Connection, Executor, sqlite::SqliteConnection};
    let server = start_example().await;
    let database = format!("sqlite://{}", server.dir.path().join(".ota/devices.db").display());
    let mut connection = SqliteConnection::connect(&database).await.expect("connect");
    connection
        .execute("ALTER TABLE counters RENAME TO counters_away")
        .await
        .expect("rename");
    let mut event = fixture("stats-8.51.14-android-batch.json")["body"][0].clone();
    event["action"] = json!("set");
    event["version_name"] = json!("1.4.3");
    let response = reqwest::Client::new()
        .post(format!("{}/stats", server.base))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "store_unavailable", "{answer}");

    connection
        .execute("ALTER TABLE counters_away RENAME TO counters")
        .await
        .expect("rename back");
    let (status, answer) = post(&server.base, "/stats", &event).await;
    assert_eq!(status, 200, "{answer}");
    let (count,): (i64,) =
        sqlx::query_as("SELECT COALESCE(SUM(count), 0) FROM counters WHERE action = 'set'")
            .fetch_one(&mut connection)
            .await
            .expect("the counters read");
    assert_eq!(count, 1, "stored once, when acknowledged");
}

/// Stats are unauthenticated: a flood of events with made-up versions and actions from made-up
/// devices leaves at most [`counter_rows_per_day`] counter rows a day (versions that are no
/// Bundle are counted as `unknown`, actions the plugin does not send as `other`), failed marks
/// and outcomes only for the App's Bundle (here 1.4.3), and a device row only for a device that
/// reported installing it (stats never create a device's row otherwise).
#[tokio::test]
async fn made_up_versions_and_actions_leave_a_bounded_number_of_rows() {
    use ota_operator::core::stats::counter_rows_per_day;
    use sqlx::{Connection, sqlite::SqliteConnection};
    const EVENTS: usize = 20_000;
    const BATCH: usize = 200;
    let server = start_example().await;
    let mut rng = fastrand::Rng::with_seed(12);
    let client = reqwest::Client::new();
    let (mut real_failures, mut made_up_versions) = (std::collections::HashSet::new(), 0);
    let mut installed = std::collections::HashSet::new();
    for _ in 0..EVENTS / BATCH {
        let batch: Vec<Value> = (0..BATCH)
            .map(|_| {
                let device = format!("00000000-0000-4000-8000-{:012x}", rng.u64(..1 << 48));
                let version = if rng.u8(..10) == 0 {
                    "1.4.3".to_owned()
                } else {
                    made_up_versions += 1;
                    format!("{}.{}.{}", rng.u8(..50), rng.u16(..500), rng.u32(..))
                };
                let action = match rng.u8(..4) {
                    0 => "set".to_owned(),
                    1 => "update_fail".to_owned(),
                    2 => "download_complete".to_owned(),
                    _ => format!("made_up_{}", rng.u32(..)),
                };
                match (action.as_str(), version.as_str()) {
                    ("update_fail", "1.4.3") => real_failures.insert(device.clone()),
                    ("set", "1.4.3") => installed.insert(device.clone()),
                    _ => false,
                };
                json!({
                    "platform": "android", "device_id": device, "app_id": "com.example.shop",
                    "version_build": "1.4.0", "version_os": "14", "version_name": version,
                    "plugin_version": "8.51.14", "is_emulator": false, "is_prod": true,
                    "action": action,
                })
            })
            .collect();
        let response = client
            .post(format!("{}/stats", server.base))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(made_up_versions > EVENTS / 2 && !real_failures.is_empty());

    let database = format!("sqlite://{}", server.dir.path().join(".ota/devices.db").display());
    let mut connection = SqliteConnection::connect(&database).await.expect("connect");
    let count = async |connection: &mut SqliteConnection, sql: &str| -> i64 {
        sqlx::query_scalar(sql).fetch_one(connection).await.expect(sql)
    };
    let counters = count(&mut connection, "SELECT COUNT(*) FROM counters").await;
    let days = count(&mut connection, "SELECT COUNT(DISTINCT day) FROM counters").await;
    assert!(
        counters as usize <= days as usize * counter_rows_per_day(1) && counters >= 2 * 4,
        "{counters} counter rows on {days} day(s), bound {} a day",
        counter_rows_per_day(1)
    );
    let versions = count(&mut connection, "SELECT COUNT(DISTINCT version) FROM counters").await;
    assert_eq!(versions, 2, "1.4.3 and unknown");
    let total = count(&mut connection, "SELECT SUM(count) FROM counters").await;
    assert_eq!(total as usize, EVENTS, "every event is counted");
    let marks = count(&mut connection, "SELECT COUNT(*) FROM failed_marks").await;
    assert_eq!(marks as usize, real_failures.len(), "failed marks of 1.4.3 only");
    let outcomes = count(
        &mut connection,
        "SELECT COUNT(*) FROM device_outcomes WHERE version <> '1.4.3'",
    )
    .await;
    assert_eq!(outcomes, 0, "outcomes of 1.4.3 only");
    let devices = count(&mut connection, "SELECT COUNT(*) FROM devices").await;
    let creating = count(
        &mut connection,
        "SELECT COUNT(*) FROM device_sightings WHERE creates_row = 1",
    )
    .await;
    assert_eq!(
        (devices as usize, creating),
        (installed.len(), 0),
        "rows of the devices that installed 1.4.3 only"
    );
}

#[tokio::test]
async fn channel_self_answers_every_method() {
    let server = start_example().await;
    let client = reqwest::Client::new();
    let set = fixture("channel-8.51.14-android-set.json")["body"].clone();
    let (status, answer) = post(&server.base, "/channel_self", &set).await;
    assert_eq!(status, 200);
    // The example has no channel the device may pick for itself.
    assert!(answer["error"].is_string(), "{answer}");
    let get = fixture("channel-8.51.14-android-get.json")["body"].clone();
    let response = client
        .put(format!("{}/channel_self", server.base))
        .json(&get)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (answer["channel"].as_str(), answer["status"].as_str()),
        (Some("production"), Some("default"))
    );
    let list = fixture("channel-8.51.14-android-list.json");
    let response = client
        .get(format!(
            "{}/channel_self?{}",
            server.base,
            list["query"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    let entries = answer.as_array().expect("a bare array");
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0]["id"].is_u64(),
        "the id must be a JSON number: {answer}"
    );
    assert_eq!(entries[0]["name"], "production");
    let unset = fixture("channel-7.33.0-android-unset.json")["body"].clone();
    let response = client
        .delete(format!("{}/channel_self", server.base))
        .json(&unset)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "cannot_override");
}

#[tokio::test]
async fn changes_to_the_folder_are_served_and_a_lost_folder_degrades_without_stopping() {
    let server = start_example().await;
    // Nothing is still being written into the folder's storage when it is taken away below.
    answer_with_variants(&server.base).await;
    let mut check = fixture("updates-8.51.14-android.json")["body"].clone();
    check.as_object_mut().unwrap().remove("key_id");
    let channels = server.dir.path().join("channels.yaml");
    std::fs::write(
        &channels,
        "apiVersion: ota.dev/v1alpha1\nkind: Channel\nmetadata: {name: production}\nspec: {appRef: shop, public: true}\n",
    )
    .unwrap();
    std::fs::write(
        server.dir.path().join("broken.yaml"),
        "apiVersion: ota.dev/v1alpha1\nkind: Channel\nspec: [\n",
    )
    .unwrap();
    let changed_at = Instant::now();
    loop {
        let (_, answer) = post(&server.base, "/updates", &check).await;
        if answer == json!({"version": "builtin"}) {
            break;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(5),
            "the change was not served: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        changed_at.elapsed() < Duration::from_secs(2),
        "served after {:?}",
        changed_at.elapsed()
    );

    // Take the folder away: the server keeps answering from the last good configuration.
    let moved = server.dir.path().with_extension("moved");
    std::fs::rename(server.dir.path(), &moved).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let readiness = loop {
        let response = reqwest::get(format!("{}/readyz", server.base)).await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if body["status"] == "degraded" || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    std::fs::rename(&moved, server.dir.path()).unwrap();
    assert_eq!(readiness.0, 200, "degraded is still serving");
    assert_eq!(readiness.1["status"], "degraded", "{}", readiness.1);
    let (_, answer) = post(&server.base, "/updates", &check).await;
    assert_eq!(answer, json!({"version": "builtin"}));
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ota_server_update_checks_total"), "{metrics}");
}

/// An App on S3 (the real test server, checking signatures): the bundle is synced into the
/// bucket, offers carry presigned URLs that download the right bytes, delta files too, and the
/// server's own `/files` URL of an object-storage App redirects to a freshly presigned one.
#[tokio::test]
async fn an_app_on_s3_is_served_with_presigned_urls() {
    let s3 = support::s3_env();
    let prefix = format!("standalone-{}-{}", std::process::id(), support::free_port());
    let app_yaml = format!(
        "apiVersion: ota.dev/v1alpha1\nkind: App\nmetadata:\n  name: shop\nspec:\n  appId: com.example.shop\n  \
         platforms: [ios, android]\n  storage:\n    s3:\n      bucket: {}\n      region: us-east-1\n      \
         endpoint: {}\n      forcePathStyle: true\n    prefix: {prefix}\n    presignedUrlTtl: 10m\n",
        s3["OTA_TEST_S3_BUCKET"], s3["OTA_TEST_S3_ENDPOINT"]
    );
    let server = start_example_with(
        Some(&app_yaml),
        &[
            ("AWS_ACCESS_KEY_ID", &s3["OTA_TEST_S3_ACCESS_KEY"]),
            ("AWS_SECRET_ACCESS_KEY", &s3["OTA_TEST_S3_SECRET_KEY"]),
        ],
    )
    .await;
    let mut body = fixture("updates-8.51.14-android.json")["body"].clone();
    body.as_object_mut().unwrap().remove("key_id");

    // The first answers may carry the server's /files URLs while the URLs are being presigned.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let (status, answer) = post(&server.base, "/updates", &body).await;
        assert_eq!(status, 200);
        let url = answer["url"].as_str().unwrap_or_default().to_owned();
        if url.contains("X-Amz-Signature=") {
            break answer;
        }
        assert!(
            url.starts_with(&format!("{}/files/", server.base)) || answer["error"].is_string(),
            "{answer}"
        );
        assert!(
            Instant::now() < deadline,
            "no presigned URL within 20 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let url = answer["url"].as_str().unwrap();
    assert!(url.starts_with(&s3["OTA_TEST_S3_ENDPOINT"]), "{url}");
    assert!(url.contains(&prefix), "{url}");
    let zip = reqwest::get(url).await.unwrap();
    assert_eq!(zip.status(), 200);
    assert_eq!(hex::encode(Sha256::digest(zip.bytes().await.unwrap())), ZIP_SHA);
    let manifest = answer["manifest"].as_array().expect("a manifest");
    assert!(!manifest.is_empty());
    for file in manifest {
        let file_url = file["download_url"].as_str().unwrap();
        assert!(file_url.contains("X-Amz-Signature="), "{file_url}");
        let response = reqwest::get(file_url).await.unwrap();
        assert_eq!(response.status(), 200, "{file_url}");
    }

    // The server's own URL redirects to a presigned one, which downloads.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let zip_key = format!("zips/{ZIP_SHA}.zip");
    let redirect = no_redirects
        .get(format!("{}/files/com.example.shop/{zip_key}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 307);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let followed = reqwest::get(&location).await.unwrap().bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&followed)), ZIP_SHA);
    // A key that escapes the prefix is refused, not signed.
    let hostile = no_redirects
        .get(format!(
            "{}/files/com.example.shop/..%2Fother%2Fsecret.zip",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(hostile.status(), 400);
    // Nothing of the bundle was written to a local folder.
    assert!(!server.dir.path().join("storage").exists());
}
