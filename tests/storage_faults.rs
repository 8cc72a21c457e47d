//! Storage unreachable during a sync (issue 12, point 3), with real processes: `ota standalone`
//! serves an App on an S3 server of the test's own (tests/s3/s3.sh with a state folder of its
//! own, so the shared test server is not disturbed); bundle A is synced and downloaded. Then the
//! S3 server is made unreachable, once hung (SIGSTOP: connections accepted, nothing answered)
//! and once killed (connections refused), and bundle B is added with a channel naming it:
//! - B is reported as retrying and its channel answers that it is not synced yet, while
//! - every update check is answered 200 with A's offer, none slow (a hung storage holds no
//!   request and no reload of the folder);
//! - once the server is back, B is synced by the retry and served, without restarting `ota`.
//!
//! The controller gets the same fault in `the_controller_retries_a_bundle_while_its_storage_hangs`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

mod support;

use support::private_s3::PrivateS3;

/// The sha256 of bundle A (examples/standalone/bundles/shop-1.4.3.zip).
const A_SHA: &str = "2b3898b01ccefd0a918bd8c28c44a02caed9ab0f58ec73c409750eb33aae920c";
/// The longest an update check may take, outage or not.
const ANSWER_BOUND: Duration = Duration::from_secs(2);
/// How soon a change to the folder is served while the storage is unreachable.
const RELOAD_BOUND: Duration = Duration::from_secs(10);
/// How soon B is reported as retrying: one attempt against the unreachable storage (bounded by
/// the storage client's timeouts) and the report.
const RETRYING_BOUND: Duration = Duration::from_secs(60);
/// How long the storage stays unreachable after B was reported as retrying: long enough for
/// another attempt (the first retry is 5 s ± 20% after the first failure).
const MORE_OUTAGE: Duration = Duration::from_secs(10);
/// How soon B is served once the storage is back: the next retry (the second or third: 10 s or
/// 20 s ± 20%), one attempt and the reload.
const RECOVERY_BOUND: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy)]
enum Outage {
    /// SIGSTOP, then SIGCONT.
    Hung,
    /// SIGKILL, then the same server started again.
    Refused,
}

/// `ota standalone` on a copy of examples/standalone whose App is on `s3`; killed when dropped.
struct Standalone {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Standalone {
    async fn start(s3: &PrivateS3, logs: &Path) -> Standalone {
        let dir = tempfile::tempdir().expect("a temporary folder");
        support::copy_example_dir(&support::repo_root().join("examples/standalone"), dir.path());
        let app = format!(
            "apiVersion: ota.dev/v1alpha1\nkind: App\nmetadata:\n  name: shop\nspec:\n  appId: com.example.shop\n  \
             platforms: [ios, android]\n  storage:\n    s3:\n      bucket: {}\n      region: us-east-1\n      \
             endpoint: {}\n      forcePathStyle: true\n    prefix: faults\n    presignedUrlTtl: 10m\n",
            s3.bucket, s3.endpoint
        );
        std::fs::write(dir.path().join("app.yaml"), app).expect("app.yaml");
        let log = logs.join("ota.log");
        let port = support::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ota"))
            .args(["standalone", "--poll-ms", "100", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(dir.path())
            .env("OTA_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", &s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("ota starts");
        let mut standalone = Standalone {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/readyz", standalone.base))
            .await
            .is_ok_and(|response| response.status() == 200)
        {
            if let Ok(Some(status)) = standalone.child.try_wait() {
                panic!("ota standalone exited with {status}:\n{}", standalone.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "ota standalone was not ready within 30 s:\n{}",
                standalone.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        standalone
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// An update check of a device running builtin 1.4.0, asking for `channel` ("" for none).
fn check(channel: &str) -> Value {
    json!({
        "platform": "android", "device_id": "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11",
        "app_id": "com.example.shop", "custom_id": "", "version_build": "1.4.0",
        "version_code": "140", "version_os": "14", "version_name": "builtin",
        "plugin_version": "8.51.14", "is_emulator": false, "is_prod": true,
        "install_source": "google_play", "defaultChannel": channel
    })
}

/// An update check's status, answer and how long it took, or why it got none.
type Answered = Result<(u16, Value, Duration), String>;

/// One update check.
async fn update_check(client: &reqwest::Client, base: &str, body: &Value) -> Answered {
    let sent = Instant::now();
    let response = client
        .post(format!("{base}/updates"))
        .json(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("no answer after {:?}: {e}", sent.elapsed()))?;
    let status = response.status().as_u16();
    let answer = response
        .json()
        .await
        .map_err(|e| format!("no JSON body after {:?}: {e}", sent.elapsed()))?;
    Ok((status, answer, sent.elapsed()))
}

/// Asks until `accept` takes the answer of `channel`'s device; panics after `bound`.
async fn answer_when(
    base: &str,
    channel: &str,
    bound: Duration,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + bound;
    loop {
        let last = update_check(&client, base, &check(channel)).await;
        if let Ok((200, answer, _)) = &last
            && accept(answer)
        {
            return answer.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {bound:?}; last answer {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn presigned_offer_of(answer: &Value, version: &str) -> bool {
    answer["version"] == version
        && answer["url"]
            .as_str()
            .is_some_and(|url| url.contains("X-Amz-Signature="))
}

/// Downloads `url`; its sha256.
async fn download_sha256(url: &str) -> String {
    let response = reqwest::get(url).await.expect("the download answers");
    assert_eq!(response.status(), 200, "{url}");
    support::sha256(&response.bytes().await.expect("the zip"))
}

/// Bundle B: a zip of a web app other than A's; its bytes and sha256.
fn bundle_b() -> (Vec<u8>, String) {
    use zip::{ZipWriter, write::SimpleFileOptions};
    let mut zip = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let files: [(&str, Vec<u8>); 2] = [
        (
            "index.html",
            b"<!doctype html><title>shop 1.5.0</title><script src=\"app.js\"></script>".to_vec(),
        ),
        ("app.js", support::javascript(20_000)),
    ];
    for (name, content) in files {
        zip.start_file(name, SimpleFileOptions::default())
            .expect("a zip entry");
        zip.write_all(&content).expect("zip content");
    }
    let bytes = zip.finish().expect("a finished zip").into_inner();
    let sha = support::sha256(&bytes);
    (bytes, sha)
}

/// Adds bundle B (`shop-1.5.0`, a zip next to the YAML) and the self-assignable channel `beta`
/// naming it to the folder.
fn add_bundle_b(dir: &Path, sha: &str, zip: &[u8]) {
    std::fs::write(dir.join("bundles/shop-1.5.0.zip"), zip).expect("B's zip");
    let yaml = format!(
        "apiVersion: ota.dev/v1alpha1\nkind: Bundle\nmetadata:\n  name: shop-1.5.0\nspec:\n  appRef: shop\n  \
         version: 1.5.0\n  source:\n    path: bundles/shop-1.5.0.zip\n    sha256: {sha}\n---\n\
         apiVersion: ota.dev/v1alpha1\nkind: Channel\nmetadata:\n  name: beta\nspec:\n  appRef: shop\n  \
         bundleRef: shop-1.5.0\n  allowDeviceSelfSet: true\n"
    );
    // Written whole, then renamed, so the folder is never read half-written.
    let staged = dir.join("beta.yaml.tmp");
    std::fs::write(&staged, yaml).expect("beta.yaml");
    std::fs::rename(&staged, dir.join("beta.yaml")).expect("beta.yaml in place");
}

/// Update checks of the production device every 100 ms in the background, each kept with its
/// time and result.
struct Checker {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, Answered)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Checker {
    fn start(base: String) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (stopped, recorded) = (stop.clone(), results.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stopped.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let result = update_check(&client, &base, &check("")).await;
                recorded.lock().unwrap().push((sent, result));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Checker { stop, results, task }
    }

    async fn stop(self) -> Vec<(Instant, Answered)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the checker ends");
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

async fn storage_unreachable_during_a_sync(outage: Outage) {
    let logs = tempfile::tempdir().expect("a folder for the log");
    let mut s3 = PrivateS3::start();
    let mut server = Standalone::start(&s3, logs.path()).await;

    // A is synced into the bucket and offered with a presigned URL that downloads it.
    let offer = answer_when(&server.base, "", Duration::from_secs(30), "A offered", |answer| {
        presigned_offer_of(answer, "1.4.3")
    })
    .await;
    let a_url = offer["url"].as_str().expect("A's URL").to_owned();
    assert_eq!(download_sha256(&a_url).await, A_SHA);

    let checker = Checker::start(server.base.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let down_at = Instant::now();
    match outage {
        Outage::Hung => s3.hang(),
        Outage::Refused => s3.kill(),
    }
    let (zip, b_sha) = bundle_b();
    add_bundle_b(server.dir.path(), &b_sha, &zip);
    let added_at = Instant::now();

    // The new channel is served at once, saying its bundle is not synced yet.
    let beta = answer_when(
        &server.base,
        "beta",
        RELOAD_BOUND,
        "beta served while the storage is down",
        |answer| {
            answer["message"]
                .as_str()
                .is_some_and(|message| message.contains("shop-1.5.0") && message.contains("not synced"))
        },
    )
    .await;
    let reloaded_after = added_at.elapsed();
    // B is reported as retrying, and stays unsynced while the storage is down.
    let deadline = added_at + RETRYING_BOUND;
    while !server.log_text().lines().any(|line| {
        line.contains("shop-1.5.0") && line.contains("StorageUnavailable") && line.contains("(retrying)")
    }) {
        assert!(
            Instant::now() < deadline,
            "B not reported as retrying within {RETRYING_BOUND:?}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retrying_after = added_at.elapsed();
    tokio::time::sleep(MORE_OUTAGE).await;
    let still = update_check(&reqwest::Client::new(), &server.base, &check("beta"))
        .await
        .expect("beta answered");
    assert_eq!(still.0, 200, "{still:?}");
    assert!(
        still.1["message"]
            .as_str()
            .is_some_and(|message| message.contains("not synced")),
        "B is not synced while the storage is down: {still:?}"
    );

    let up_at = Instant::now();
    match outage {
        Outage::Hung => s3.resume(),
        Outage::Refused => s3.start_again(),
    }
    // The retry syncs B, and it is served and downloads, by the same process.
    let offer_b = answer_when(
        &server.base,
        "beta",
        RECOVERY_BOUND,
        "B offered after the storage came back",
        |answer| presigned_offer_of(answer, "1.5.0"),
    )
    .await;
    let recovered_after = up_at.elapsed();
    assert_eq!(
        download_sha256(offer_b["url"].as_str().expect("B's URL")).await,
        b_sha
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = checker.stop().await;
    assert!(server.still_running(), "ota stopped:\n{}", server.log_text());
    assert_eq!(download_sha256(&a_url).await, A_SHA, "A downloads again");

    // Every update check of the production device, before, during and after the outage: 200
    // with A's offer, in time.
    let during = results
        .iter()
        .filter(|(sent, _)| *sent > down_at && *sent < up_at)
        .count();
    assert!(during > 20, "only {during} update checks during the outage");
    let mut slowest = Duration::ZERO;
    for (sent, result) in &results {
        let at = sent.saturating_duration_since(down_at);
        let (status, answer, took) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("an update check {at:?} after the outage began: {e}"));
        assert_eq!(*status, 200, "{at:?} after the outage began: {answer}");
        assert_eq!(
            answer["version"], "1.4.3",
            "{at:?} after the outage began: {answer}"
        );
        assert_eq!(answer["checksum"], A_SHA, "{answer}");
        assert!(
            *took <= ANSWER_BOUND,
            "an update check {at:?} after the outage began took {took:?}"
        );
        slowest = slowest.max(*took);
    }
    eprintln!(
        "{outage:?}: beta served {reloaded_after:?} after B was added ({beta}); B reported retrying after {retrying_after:?}; B served {recovered_after:?} after the storage came back; {} update checks ({during} during the outage) all 200 with A, slowest {slowest:?}",
        results.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_storage_during_a_sync() {
    storage_unreachable_during_a_sync(Outage::Hung).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_refusing_connections_during_a_sync() {
    storage_unreachable_during_a_sync(Outage::Refused).await;
}

/// The cluster side of the same fault: `ota controller` (in this process, against the test API
/// server) syncs Bundles into an S3 server of the test's own; while that server hangs, a new
/// Bundle is reported Synced=False (`StorageUnavailable`) and Reconciling (retrying) in bounded
/// time, the synced one stays Ready, and once the server answers the retry syncs the new one.
/// Needs the test API server (`tests/run.sh --test storage_faults`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_retries_a_bundle_while_its_storage_hangs() {
    use kube::{
        Api,
        api::{Patch, PatchParams},
    };
    use ota_operator::{
        api::{
            Bundle,
            app::{S3Storage, StorageSpec},
            common::SecretReference,
        },
        storage::{self, Credentials},
        sync,
    };

    const SECRET: &str = "faulty-storage";
    let s3 = PrivateS3::start();
    let client = support::client_with_crds().await;
    let namespace = support::unique_namespace("storage-faults");
    let spec = StorageSpec {
        s3: Some(S3Storage {
            bucket: s3.bucket.clone(),
            region: "us-east-1".to_owned(),
            endpoint: Some(s3.endpoint.clone()),
            force_path_style: true,
            credentials_secret_ref: Some(SecretReference {
                name: SECRET.to_owned(),
            }),
        }),
        prefix: Some(format!("apps/{namespace}/")),
        ..StorageSpec::default()
    };
    let credentials = Credentials::from_map(std::collections::BTreeMap::from([
        ("AWS_ACCESS_KEY_ID".to_owned(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), s3.secret_key.clone()),
    ]));
    let opened = storage::open(&spec, Path::new("/nonexistent"), &credentials).expect("the storage opens");
    // Both zips are in the storage before the outage (a Bundle's `storageKey` source).
    let a_zip = std::fs::read(support::repo_root().join("examples/standalone/bundles/shop-1.4.3.zip"))
        .expect("A's zip");
    let (b_zip, b_sha) = bundle_b();
    for (key, bytes) in [("uploads/a.zip", a_zip), ("uploads/b.zip", b_zip)] {
        let path = sync::object_path(&opened.prefix, key).expect("a clean key");
        object_store::ObjectStoreExt::put(&*opened.store, &path, bytes.into())
            .await
            .unwrap_or_else(|e| panic!("uploading {key}: {e}"));
    }

    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    });
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &namespace)
        .patch(
            SECRET,
            &PatchParams::apply(support::TEST_MANAGER),
            &Patch::Apply(&secret),
        )
        .await
        .expect("the Secret is created");
    let bundle = |name: &str, version: &str, key: &str, sha: &str| {
        json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle", "metadata": {"name": name},
            "spec": {"appRef": "shop", "version": version, "source": {"storageKey": key, "sha256": sha}}
        })
    };
    let documents = [
        json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "App", "metadata": {"name": "shop"},
            "spec": {"appId": "com.example.faults", "storage": serde_json::to_value(&spec).expect("a spec"),
                     "server": {"replicas": 1}}
        }),
        bundle("shop-1.4.3", "1.4.3", "uploads/a.zip", A_SHA),
    ];
    for document in &documents {
        support::apply_document(&client, &namespace, document)
            .await
            .expect("applied");
    }
    let controller = support::controller::start(
        &client,
        support::controller::options(&namespace, false, "storage-faults"),
    )
    .await;
    let api: Api<Bundle> = Api::namespaced(client.clone(), &namespace);
    let condition = |bundle: &Bundle, type_: &str| {
        let status = bundle.status.as_ref()?;
        (status.observed_generation == bundle.metadata.generation)
            .then(|| status.conditions.iter().find(|c| c.type_ == type_).cloned())
            .flatten()
    };
    let when = |name: &'static str, type_: &'static str, status: &'static str, seconds: u64| {
        let api = api.clone();
        async move {
            support::controller::eventually(seconds, &format!("Bundle {name} has {type_}={status}"), || {
                let api = api.clone();
                async move {
                    let bundle = api.get_opt(name).await.expect("a read")?;
                    condition(&bundle, type_)
                        .is_some_and(|c| c.status == status)
                        .then_some(bundle)
                }
            })
            .await
        }
    };
    when("shop-1.4.3", "Ready", "True", 60).await;

    s3.hang();
    let hung_at = Instant::now();
    support::apply_document(
        &client,
        &namespace,
        &bundle("shop-1.5.0", "1.5.0", "uploads/b.zip", &b_sha),
    )
    .await
    .expect("B applied");
    let retrying = when("shop-1.5.0", "Reconciling", "True", 60).await;
    let reported_after = hung_at.elapsed();
    let synced = condition(&retrying, "Synced").expect("a Synced condition");
    assert_eq!(synced.status, "False", "{synced:?}");
    assert_eq!(synced.reason, "StorageUnavailable", "{synced:?}");
    let stalled = condition(&retrying, "Stalled").expect("a Stalled condition");
    assert_eq!(stalled.status, "False", "a transient failure: {stalled:?}");
    let a = api.get("shop-1.4.3").await.expect("A");
    assert_eq!(
        condition(&a, "Ready").map(|c| c.status),
        Some("True".to_owned()),
        "A stays Ready"
    );

    s3.resume();
    let up_at = Instant::now();
    when("shop-1.5.0", "Synced", "True", 90).await;
    eprintln!(
        "controller: B reported retrying {reported_after:?} after the storage hung ({}); synced {:?} after it answered again",
        synced.message,
        up_at.elapsed()
    );
    controller.stop().await;
}
