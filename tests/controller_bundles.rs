//! `ota controller`'s Bundle and Channel reconcilers in-process against the real test API server
//! and the real S3 server (tests/s3/s3.sh, which checks request signatures): Bundles are synced
//! into S3 and served by a real `ota server` (full and delta), hostile zips and wrong checksums
//! are Stalled with a Warning event and never served, Channels report what they serve, and
//! deleting a Bundle is held while it is used and cleans its storage once it is not.
//! Run with `tests/run.sh --test controller_bundles`.

mod support;

use std::{
    collections::BTreeMap,
    io::{Cursor, Write},
    process::{Child, Command, Stdio},
    sync::Arc,
};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use object_store::ObjectStoreExt;
use ota_operator::{
    api::{
        Bundle, Channel,
        app::{S3Storage, StorageSpec},
        common::SecretReference,
        constants::finalizer,
    },
    clock::TestClock,
    storage::{self, Credentials},
    sync,
};
use serde_json::{Value, json};
use support::{controller::*, *};
use zip::{ZipWriter, write::SimpleFileOptions};

const APP_ID: &str = "com.example.controlled";
const SECRET: &str = "bundle-storage";

/// The test S3 server's settings.
struct S3 {
    endpoint: String,
    access_key: String,
    secret_key: String,
    bucket: String,
}

fn s3() -> S3 {
    let env = s3_env();
    S3 {
        endpoint: env["OTA_TEST_S3_ENDPOINT"].clone(),
        access_key: env["OTA_TEST_S3_ACCESS_KEY"].clone(),
        secret_key: env["OTA_TEST_S3_SECRET_KEY"].clone(),
        bucket: env["OTA_TEST_S3_BUCKET"].clone(),
    }
}

fn storage_spec(prefix: &str) -> StorageSpec {
    let s3 = s3();
    StorageSpec {
        s3: Some(S3Storage {
            bucket: s3.bucket,
            region: "us-east-1".to_owned(),
            endpoint: Some(s3.endpoint),
            force_path_style: true,
            credentials_secret_ref: Some(SecretReference {
                name: SECRET.to_owned(),
            }),
        }),
        prefix: Some(prefix.to_owned()),
        ..StorageSpec::default()
    }
}

/// The App's storage, opened the way the controller opens it.
fn open_storage(prefix: &str) -> storage::OpenedStorage {
    let s3 = s3();
    let credentials = Credentials::from_map(BTreeMap::from([
        ("AWS_ACCESS_KEY_ID".to_owned(), s3.access_key),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), s3.secret_key),
    ]));
    storage::open(
        &storage_spec(prefix),
        std::path::Path::new("/nonexistent"),
        &credentials,
    )
    .expect("the test S3 storage opens")
}

async fn exists(storage: &storage::OpenedStorage, key: &str) -> bool {
    let path = sync::object_path(&storage.prefix, key).expect("a clean key");
    match storage.store.head(&path).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(error) => panic!("HEAD {key}: {error}"),
    }
}

async fn upload(storage: &storage::OpenedStorage, key: &str, bytes: Vec<u8>) {
    let path = sync::object_path(&storage.prefix, key).expect("a clean key");
    storage
        .store
        .put(&path, bytes.into())
        .await
        .unwrap_or_else(|e| panic!("uploading {key}: {e}"));
}

/// A zip of `files` (name → content).
fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in files {
        zip.start_file(*name, SimpleFileOptions::default())
            .expect("a zip entry");
        zip.write_all(content).expect("zip content");
    }
    zip.finish().expect("a finished zip").into_inner()
}

fn index_html(version: &str) -> Vec<u8> {
    format!("<!doctype html><title>{version}</title><script src=\"app.js\"></script>").into_bytes()
}

async fn create_secret(client: &Client, namespace: &str) {
    let s3 = s3();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    });
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(SECRET, &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&secret))
        .await
        .expect("the Secret is created");
}

async fn apply(client: &Client, namespace: &str, document: Value) {
    let (kind, name) = kind_and_name(&document);
    apply_document(client, namespace, &document)
        .await
        .unwrap_or_else(|e| panic!("{kind} {name} was refused: {e}"));
}

fn app(prefix: &str) -> Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "App",
        "metadata": {"name": "shop"},
        "spec": {
            "appId": APP_ID,
            "storage": serde_json::to_value(storage_spec(prefix)).expect("a storage spec"),
            "server": {"replicas": 1}
        }
    })
}

fn bundle(name: &str, version: &str, key: &str, sha256: &str) -> Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle",
        "metadata": {"name": name},
        "spec": {"appRef": "shop", "version": version, "source": {"storageKey": key, "sha256": sha256}}
    })
}

fn channel(name: &str, bundle_ref: Option<&str>) -> Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Channel",
        "metadata": {"name": name},
        "spec": {"appRef": "shop", "bundleRef": bundle_ref, "public": name == "production"}
    })
}

/// One POST a webhook receiver got: its headers of interest and its body.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    delivery: String,
    event: String,
    body: Vec<u8>,
}

/// A real webhook receiver on 127.0.0.1 that answers 503 to the first POST (so the sender must
/// retry) and 200 to the others, and keeps what it got.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Received>>>) {
    use axum::{body::Bytes, http::HeaderMap, http::StatusCode, routing::post};
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
    let kept = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let mut kept = kept.lock().unwrap();
            kept.push(Received {
                signature: header("x-ota-signature-256"),
                delivery: header("x-ota-delivery"),
                event: header("x-ota-event"),
                body: body.to_vec(),
            });
            match kept.len() {
                1 => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::OK,
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}/hook"), received)
}

/// HMAC-SHA256 of `body` under `key`, as the receiver checks it (written here from the
/// algorithm, not through the crate's signer).
fn expected_signature(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Waits until the Bundle's status has `type_` = `status` for its current generation.
async fn bundle_when(client: &Client, namespace: &str, name: &str, type_: &str, status: &str) -> Bundle {
    let api: Api<Bundle> = Api::namespaced(client.clone(), namespace);
    eventually(60, &format!("Bundle {name} has {type_}={status}"), || async {
        let bundle = api.get_opt(name).await.expect("a read")?;
        let current = bundle.status.as_ref()?;
        (current.observed_generation == bundle.metadata.generation
            && find(&current.conditions, type_).is_some_and(|c| c.status == status))
        .then_some(bundle)
    })
    .await
}

/// Waits until the Bundle's status records its Brotli variants (the second step of its sync).
async fn variants_done(client: &Client, namespace: &str, name: &str) -> Bundle {
    let api: Api<Bundle> = Api::namespaced(client.clone(), namespace);
    eventually(60, &format!("Bundle {name} has its Brotli variants"), || async {
        let bundle = api.get_opt(name).await.expect("a read")?;
        let storage = bundle.status.as_ref()?.storage.as_ref()?;
        storage.compressed_variants.then_some(bundle)
    })
    .await
}

async fn channel_when(client: &Client, namespace: &str, name: &str, type_: &str, status: &str) -> Channel {
    let api: Api<Channel> = Api::namespaced(client.clone(), namespace);
    eventually(60, &format!("Channel {name} has {type_}={status}"), || async {
        let channel = api.get_opt(name).await.expect("a read")?;
        let current = channel.status.as_ref()?;
        (current.observed_generation == channel.metadata.generation
            && find(&current.conditions, type_).is_some_and(|c| c.status == status))
        .then_some(channel)
    })
    .await
}

/// The reasons of the Events about `kind`/`name` of type `type_`.
async fn event_reasons(client: &Client, namespace: &str, kind: &str, name: &str, type_: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .expect("Events are listed")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
                && e.type_.as_deref() == Some(type_)
        })
        .filter_map(|e| e.reason)
        .collect()
}

async fn warning_event(client: &Client, namespace: &str, kind: &str, name: &str, reason: &str) {
    eventually(
        30,
        &format!("a Warning {reason} event about {kind}/{name}"),
        || async {
            event_reasons(client, namespace, kind, name, "Warning")
                .await
                .iter()
                .any(|r| r == reason)
                .then_some(())
        },
    )
    .await;
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ota server` for the namespace, with the S3 keys in its environment as the App's Deployment
/// gives them from the Secret.
fn start_server(namespace: &str, dir: &std::path::Path) -> (ServerProcess, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let s3 = s3();
    let process = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["server", "--namespace", namespace, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--database")
        .arg(format!("sqlite://{}", dir.join("devices.db").display()))
        .arg("--storage-root")
        .arg(dir)
        .env("KUBECONFIG", kubeconfig_path())
        .env("AWS_ACCESS_KEY_ID", s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", s3.secret_key)
        .env("OTA_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ota server starts");
    (ServerProcess(process), format!("http://127.0.0.1:{port}"))
}

fn update_check(version_name: &str) -> Value {
    json!({
        "app_id": APP_ID, "device_id": "0f0e0d0c-0b0a-4908-8706-050403020100",
        "platform": "android", "version_name": version_name, "version_build": "1.0.0",
        "version_code": "1", "version_os": "14", "plugin_version": "7.8.0",
        "is_emulator": false, "is_prod": true, "defaultChannel": "production"
    })
}

/// The server's answer to a device on `current` once `wanted` accepts it (within 30 s); the
/// panic shows the last answer.
async fn offered(
    http: &reqwest::Client,
    base: &str,
    current: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        let response = http
            .post(format!("{base}/updates"))
            .json(&update_check(current))
            .send()
            .await;
        if let Ok(response) = response {
            last = response.json().await.unwrap_or(Value::Null);
            if wanted(&last) {
                return last;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("the server never gave the expected answer to a device on {current}; last: {last}");
}

#[tokio::test]
async fn bundles_sync_into_s3_channels_report_what_they_serve_and_the_server_serves_them() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-bundles");
    let prefix = format!("apps/{namespace}/");
    let storage = open_storage(&prefix);

    // A shared file, so the second bundle is a delta of the first.
    let shared = javascript(40_000);
    let v1 = zip_of(&[("index.html", index_html("1.0.0")), ("app.js", shared.clone())]);
    let v2 = zip_of(&[("index.html", index_html("1.1.0")), ("app.js", shared.clone())]);
    let hostile = zip_of(&[
        ("index.html", index_html("evil")),
        ("../escape.js", b"x".to_vec()),
    ]);
    upload(&storage, "uploads/v1.zip", v1.clone()).await;
    upload(&storage, "uploads/v2.zip", v2.clone()).await;
    upload(&storage, "uploads/hostile.zip", hostile.clone()).await;

    create_secret(&client, &namespace).await;
    apply(&client, &namespace, app(&prefix)).await;
    apply(
        &client,
        &namespace,
        bundle("shop-1.0.0", "1.0.1", "uploads/v1.zip", &sha256(&v1)),
    )
    .await;
    apply(
        &client,
        &namespace,
        bundle("shop-1.1.0", "1.1.0", "uploads/v2.zip", &sha256(&v2)),
    )
    .await;
    // The right bytes under a wrong checksum, and a zip that escapes its folder.
    apply(
        &client,
        &namespace,
        bundle("shop-bad-sum", "1.2.0", "uploads/v1.zip", &sha256(b"other")),
    )
    .await;
    apply(
        &client,
        &namespace,
        bundle("shop-hostile", "1.3.0", "uploads/hostile.zip", &sha256(&hostile)),
    )
    .await;
    apply(&client, &namespace, channel("production", Some("shop-1.0.0"))).await;
    apply(&client, &namespace, channel("beta", Some("shop-bad-sum"))).await;
    apply(&client, &namespace, channel("qa", Some("no-such-bundle"))).await;

    let running = start(&client, options(&namespace, false, "solo")).await;

    // Synced into S3: the zip, the manifest and the content-addressed files.
    let synced = bundle_when(&client, &namespace, "shop-1.0.0", "Synced", "True").await;
    let status = synced.status.clone().expect("a status");
    assert_eq!(status.checksum.as_deref(), Some(sha256(&v1).as_str()));
    assert_eq!(status.file_count, Some(2));
    let location = status.storage.expect("storage keys");
    assert!(exists(&storage, &location.zip_key).await, "the zip is in S3");
    assert!(exists(&storage, location.manifest_key.as_deref().expect("a manifest")).await);
    assert!(
        exists(&storage, &format!("files/{}", sha256(&shared))).await
            || exists(&storage, &format!("files/{}.br", sha256(&shared))).await
    );
    assert!(find(&status.conditions, "Ready").is_some_and(|c| c.status == "True"));
    assert!(synced.finalizers().iter().any(|f| f == finalizer::BUNDLE_STORAGE));

    // Terminal failures: Stalled with the reason, a Warning event, and never served.
    let bad = bundle_when(&client, &namespace, "shop-bad-sum", "Stalled", "True").await;
    let stalled = find(&bad.status.as_ref().expect("a status").conditions, "Stalled")
        .cloned()
        .expect("Stalled");
    assert_eq!(stalled.reason, "ChecksumMismatch", "{stalled:?}");
    warning_event(&client, &namespace, "Bundle", "shop-bad-sum", "ChecksumMismatch").await;
    let hostile_status = bundle_when(&client, &namespace, "shop-hostile", "Stalled", "True").await;
    let reason = &find(
        &hostile_status.status.as_ref().expect("a status").conditions,
        "Stalled",
    )
    .expect("Stalled")
    .reason;
    assert_eq!(reason, "InvalidArchive");
    assert!(
        !exists(&storage, &sync::zip_key(&sha256(&hostile))).await,
        "a hostile zip is never stored"
    );

    // Channels: what they serve, or why they serve nothing.
    let production = channel_when(&client, &namespace, "production", "Ready", "True").await;
    let stable = production
        .status
        .as_ref()
        .and_then(|s| s.stable.clone())
        .expect("a stable bundle");
    assert_eq!(
        (stable.bundle.as_deref(), stable.version.as_str()),
        (Some("shop-1.0.0"), "1.0.1")
    );
    let beta = channel_when(&client, &namespace, "beta", "Stalled", "True").await;
    assert!(beta.status.as_ref().and_then(|s| s.stable.clone()).is_none());
    let qa = channel_when(&client, &namespace, "qa", "Stalled", "True").await;
    let qa_stalled = find(&qa.status.as_ref().expect("a status").conditions, "Stalled")
        .cloned()
        .expect("Stalled");
    assert_eq!(qa_stalled.reason, "ReferenceNotFound");
    assert!(
        qa_stalled.message.contains("no-such-bundle"),
        "{}",
        qa_stalled.message
    );
    warning_event(&client, &namespace, "Channel", "qa", "ReferenceNotFound").await;

    // A broken reference mended: the channel follows.
    apply(&client, &namespace, channel("qa", Some("shop-1.1.0"))).await;
    channel_when(&client, &namespace, "qa", "Ready", "True").await;

    // The update server serves the synced bundles from S3: full, then as a delta.
    bundle_when(&client, &namespace, "shop-1.1.0", "Synced", "True").await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (_server, base) = start_server(&namespace, dir.path());
    let http = reqwest::Client::new();
    let answer = offered(&http, &base, "builtin", |a| a["version"] == "1.0.1").await;
    let zip = http
        .get(answer["url"].as_str().expect("a URL"))
        .send()
        .await
        .expect("the zip downloads")
        .bytes()
        .await
        .expect("zip bytes");
    assert_eq!(
        sha256(&zip),
        sha256(&v1),
        "the device gets exactly the synced zip"
    );
    assert_eq!(answer["checksum"], sha256(&v1));

    // Move production to 1.1.0: a device on 1.0.1 gets a manifest and downloads only the changed
    // file from S3.
    apply(&client, &namespace, channel("production", Some("shop-1.1.0"))).await;
    let delta = offered(&http, &base, "1.0.1", |a| {
        a["version"] == "1.1.0" && a["manifest"].is_array()
    })
    .await;
    let manifest = delta["manifest"].as_array().expect("a manifest");
    let index = manifest
        .iter()
        .find(|f| f["file_name"] == "index.html")
        .expect("index.html in the manifest");
    let body = http
        .get(index["download_url"].as_str().expect("a file URL"))
        .send()
        .await
        .expect("the file downloads")
        .bytes()
        .await
        .expect("file bytes");
    assert_eq!(body.as_ref(), index_html("1.1.0").as_slice());

    running.stop().await;
}

#[tokio::test]
async fn deleting_a_bundle_in_use_is_held_and_an_unused_one_cleans_its_storage() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-delete");
    let prefix = format!("apps/{namespace}/");
    let storage = open_storage(&prefix);
    let shared = javascript(30_000);
    let only_a = noise(20_000, 1);
    let only_b = noise(20_000, 2);
    let a = zip_of(&[
        ("index.html", index_html("a")),
        ("app.js", shared.clone()),
        ("a.bin", only_a.clone()),
    ]);
    let b = zip_of(&[
        ("index.html", index_html("b")),
        ("app.js", shared.clone()),
        ("b.bin", only_b.clone()),
    ]);
    upload(&storage, "uploads/a.zip", a.clone()).await;
    upload(&storage, "uploads/b.zip", b.clone()).await;
    create_secret(&client, &namespace).await;
    apply(&client, &namespace, app(&prefix)).await;
    apply(
        &client,
        &namespace,
        bundle("shop-a", "2.0.0", "uploads/a.zip", &sha256(&a)),
    )
    .await;
    apply(
        &client,
        &namespace,
        bundle("shop-b", "2.1.0", "uploads/b.zip", &sha256(&b)),
    )
    .await;
    apply(&client, &namespace, channel("production", Some("shop-a"))).await;
    let running = start(&client, options(&namespace, false, "solo")).await;
    bundle_when(&client, &namespace, "shop-a", "Synced", "True").await;
    bundle_when(&client, &namespace, "shop-b", "Synced", "True").await;
    for name in ["shop-a", "shop-b"] {
        let done = variants_done(&client, &namespace, name).await;
        let storage = done.status.and_then(|s| s.storage).expect("storage");
        assert!(
            storage.manifest_key.is_some_and(|key| key.ends_with(".br.json")),
            "the status names the manifest of the variants"
        );
    }
    let shared_key = format!("files/{}.br", sha256(&shared));
    let a_key = format!("files/{}", sha256(&only_a));
    let b_key = format!("files/{}", sha256(&only_b));
    assert!(
        exists(&storage, &shared_key).await,
        "the shared file is stored once, compressed"
    );
    assert!(exists(&storage, &a_key).await && exists(&storage, &b_key).await);

    let bundles: Api<Bundle> = Api::namespaced(client.clone(), &namespace);
    // In use by the production channel: held, and the status says why.
    bundles
        .delete("shop-a", &DeleteParams::default())
        .await
        .expect("the delete is accepted");
    let held = eventually(30, "the deletion of shop-a is held", || async {
        let bundle = bundles.get_opt("shop-a").await.expect("a read")?;
        let reconciling = find(&bundle.status.as_ref()?.conditions, "Reconciling")?.clone();
        (reconciling.reason == "InUse").then_some(reconciling)
    })
    .await;
    assert!(held.message.contains("Channel/production"), "{}", held.message);
    assert!(
        exists(&storage, &sync::zip_key(&sha256(&a))).await,
        "a held bundle keeps its storage"
    );

    // Unused: removed with what only it referenced; what shop-a shares stays.
    bundles
        .delete("shop-b", &DeleteParams::default())
        .await
        .expect("the delete is accepted");
    eventually(30, "shop-b is gone", || async {
        bundles
            .get_opt("shop-b")
            .await
            .expect("a read")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        !exists(&storage, &sync::zip_key(&sha256(&b))).await,
        "shop-b's zip is removed"
    );
    assert!(
        !exists(&storage, &b_key).await,
        "the file only shop-b had is removed"
    );
    assert!(
        exists(&storage, &shared_key).await,
        "the file shop-a shares stays"
    );
    assert!(exists(&storage, &a_key).await);

    // The channel lets go of shop-a: its deletion proceeds.
    apply(&client, &namespace, channel("production", None)).await;
    eventually(60, "shop-a is gone once nothing uses it", || async {
        bundles
            .get_opt("shop-a")
            .await
            .expect("a read")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!exists(&storage, &sync::zip_key(&sha256(&a))).await);
    assert!(!exists(&storage, &shared_key).await && !exists(&storage, &a_key).await);
    let normal = event_reasons(&client, &namespace, "Bundle", "shop-a", "Normal").await;
    assert!(normal.iter().any(|r| r == "InUse"), "{normal:?}");
    assert!(normal.iter().any(|r| r == "StorageCleaned"), "{normal:?}");
    running.stop().await;
}

#[tokio::test]
async fn a_bundle_whose_app_names_a_missing_secret_waits_and_syncs_once_it_exists() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-secret");
    let prefix = format!("apps/{namespace}/");
    let storage = open_storage(&prefix);
    let zip = zip_of(&[("index.html", index_html("3.0.0"))]);
    upload(&storage, "uploads/3.zip", zip.clone()).await;
    apply(&client, &namespace, app(&prefix)).await;
    apply(
        &client,
        &namespace,
        bundle("shop-3", "3.0.0", "uploads/3.zip", &sha256(&zip)),
    )
    .await;
    let running = start(&client, options(&namespace, false, "solo")).await;
    let waiting = bundle_when(&client, &namespace, "shop-3", "Stalled", "True").await;
    let stalled = find(&waiting.status.as_ref().expect("a status").conditions, "Stalled")
        .cloned()
        .expect("Stalled");
    assert_eq!(stalled.reason, "ReferenceNotFound");
    assert!(stalled.message.contains(SECRET), "{}", stalled.message);
    // Secrets are not watched: the Bundle looks again on its own.
    create_secret(&client, &namespace).await;
    let synced = bundle_when(&client, &namespace, "shop-3", "Synced", "True").await;
    assert!(
        find(&synced.status.expect("a status").conditions, "Stalled").is_some_and(|c| c.status == "False")
    );
    running.stop().await;
}

/// A Bundle pushed as files (`ota bundle push`): its source names the manifest.
fn pushed_bundle(name: &str, version: &str, manifest_key: &str, sha256: &str) -> Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle",
        "metadata": {"name": name},
        "spec": {"appRef": "shop", "version": version,
                 "source": {"manifestKey": manifest_key, "sha256": sha256}}
    })
}

#[tokio::test]
async fn a_bundle_pushed_as_files_is_rebuilt_and_synced_and_a_rebuild_with_other_bytes_is_stalled() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-pushed");
    let prefix = format!("apps/{namespace}/");
    let storage = open_storage(&prefix);
    create_secret(&client, &namespace).await;

    // What `ota bundle push` stores: the files and the manifest of its deterministic zip.
    let files = [
        ("index.html", index_html("4.0.0")),
        ("app.js", javascript(40_000)),
    ];
    let dir = tempfile::tempdir().expect("a temporary folder");
    let zip_path = dir.path().join("bundle.zip");
    let mut zip = sync::DeterministicZip::new(std::fs::File::create(&zip_path).expect("a zip file"));
    let mut sorted = files.clone();
    sorted.sort_by(|a, b| sync::entry_order(a.0, b.0));
    for (name, content) in &sorted {
        zip.start_file(name, content.len() as u64).expect("an entry");
        zip.write_all(content).expect("zip content");
    }
    zip.finish().expect("a finished zip");
    let sha = sha256(&std::fs::read(&zip_path).expect("the zip"));
    let pushed = sync::sync_bundle_files(sync::SyncRequest {
        source: &sync::BundleSourceRef::File(zip_path.clone()),
        expected_sha256: &sha,
        store: &storage.store,
        prefix: &storage.prefix,
        limits: &sync::SyncLimits::default(),
        http: &reqwest::Client::new(),
    })
    .await
    .expect("the push");
    assert!(!exists(&storage, &sync::zip_key(&sha)).await);
    // The same files zipped by another writer (as another ota version might).
    let other_sha = sha256(&zip_of(&files));
    assert_ne!(other_sha, sha);

    apply(&client, &namespace, app(&prefix)).await;
    apply(
        &client,
        &namespace,
        pushed_bundle("shop-4", "4.0.0", &pushed.manifest_key, &sha),
    )
    .await;
    apply(
        &client,
        &namespace,
        pushed_bundle("shop-4-other", "4.0.1", &pushed.manifest_key, &other_sha),
    )
    .await;
    let running = start(&client, options(&namespace, false, "solo")).await;

    let synced = variants_done(&client, &namespace, "shop-4").await;
    let status = synced.status.expect("a status");
    assert_eq!(status.checksum.as_deref(), Some(sha.as_str()));
    let location = status.storage.expect("storage keys");
    assert_eq!(location.zip_key, sync::zip_key(&sha));
    assert!(
        exists(&storage, &location.zip_key).await,
        "the rebuilt zip is stored"
    );

    let stalled = bundle_when(&client, &namespace, "shop-4-other", "Stalled", "True").await;
    let condition = find(&stalled.status.as_ref().expect("a status").conditions, "Stalled")
        .cloned()
        .expect("Stalled");
    assert_eq!(condition.reason, "ChecksumMismatch");
    assert!(
        condition
            .message
            .contains("probably pushed by a different ota version"),
        "{}",
        condition.message
    );
    warning_event(&client, &namespace, "Bundle", "shop-4-other", "ChecksumMismatch").await;
    assert!(!exists(&storage, &sync::zip_key(&other_sha)).await);
    running.stop().await;
}

fn rollout(name: &str, channel: &str, bundle: &str, steps: Value) -> Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {"channelRef": channel, "bundleRef": bundle, "steps": steps}
    })
}

/// A namespace's App with two synced Bundles, shop-MAJOR.0 (stable, on Channel production) and
/// shop-MAJOR.1 (the candidate), and the webhook Secret `hooks` of a receiver signing with
/// `signing_key`: what the rollout scenarios start from. Returns the receiver's deliveries.
async fn two_bundles_on_production(
    client: &kube::Client,
    namespace: &str,
    major: u32,
    signing_key: &str,
) -> std::sync::Arc<std::sync::Mutex<Vec<Received>>> {
    let prefix = format!("apps/{namespace}/");
    let storage = open_storage(&prefix);
    let stable = zip_of(&[("index.html", index_html(&format!("{major}.0.0")))]);
    let candidate = zip_of(&[("index.html", index_html(&format!("{major}.1.0")))]);
    upload(&storage, &format!("uploads/{major}.0.zip"), stable.clone()).await;
    upload(&storage, &format!("uploads/{major}.1.zip"), candidate.clone()).await;
    create_secret(client, namespace).await;
    apply(client, namespace, app(&prefix)).await;
    for (bundle_name, version, zip) in [("0", "0", &stable), ("1", "1", &candidate)] {
        apply(
            client,
            namespace,
            bundle(
                &format!("shop-{major}.{bundle_name}"),
                &format!("{major}.{version}.0"),
                &format!("uploads/{major}.{bundle_name}.zip"),
                &sha256(zip),
            ),
        )
        .await;
    }
    apply(
        client,
        namespace,
        channel("production", Some(&format!("shop-{major}.0"))),
    )
    .await;
    let (hook_url, received) = webhook_receiver().await;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            "hooks",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hooks"},
                "stringData": {"url": hook_url, "signingKey": signing_key}
            })),
        )
        .await
        .expect("the webhook Secret is created");
    received
}

#[tokio::test]
async fn a_rollout_is_validated_and_walks_its_steps_to_completion() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-rollout");
    // Every transition goes to a webhook, signed with the Secret's key.
    const SIGNING_KEY: &str = "a shared secret of the receiver";
    let received = two_bundles_on_production(&client, &namespace, 4, SIGNING_KEY).await;
    let steps = json!([{"setPercent": 10}, {"pause": {"duration": "1h"}}, {"setPercent": 50}, {"pause": {}}, {"setPercent": 100}]);
    let mut notified = rollout("to-4.1", "production", "shop-4.1", steps.clone());
    notified["spec"]["notifications"] = json!({"webhook": {"secretRef": {"name": "hooks"}}});
    apply(&client, &namespace, notified).await;
    // A Rollout naming a Channel that does not exist is Stalled, with a Warning event.
    apply(
        &client,
        &namespace,
        rollout("nowhere", "no-such-channel", "shop-4.1", steps),
    )
    .await;
    // The controller decides on a test clock, so the hour-long pause passes when the test
    // moves it.
    let clock = TestClock::starting_now();
    let mut on_test_clock = options(&namespace, false, "solo");
    on_test_clock.clock = Arc::new(clock.clone());
    let running = start(&client, on_test_clock).await;

    let rollouts: Api<ota_operator::api::Rollout> = Api::namespaced(client.clone(), &namespace);
    let status_of = |name: &'static str| {
        let rollouts = rollouts.clone();
        async move {
            let rollout = rollouts.get(name).await.expect("the Rollout");
            let status = rollout.status.clone()?;
            (status.observed_generation == rollout.metadata.generation).then_some(status)
        }
    };
    let stalled = eventually(30, "the Rollout on a missing Channel is Stalled", || async {
        let status = status_of("nowhere").await?;
        find(&status.conditions, "Stalled")
            .filter(|c| c.status == "True")
            .cloned()
    })
    .await;
    assert_eq!(stalled.reason, "ReferenceNotFound");
    warning_event(&client, &namespace, "Rollout", "nowhere", "ReferenceNotFound").await;

    // 10% once the candidate is synced, then 50% after the timed pause, then a wait for a person.
    eventually(60, "the Rollout pauses at 10%", || async {
        let status = status_of("to-4.1").await?;
        (status.current_percent == Some(10) && status.current_step_index == Some(1)).then_some(())
    })
    .await;
    clock.advance(std::time::Duration::from_secs(3600));
    let waiting = eventually(60, "the Rollout waits for promotion at 50%", || async {
        let status = status_of("to-4.1").await?;
        (status.current_percent == Some(50)
            && status
                .pause_conditions
                .iter()
                .any(|p| p.reason == "WaitingForPromotion"))
        .then_some(status)
    })
    .await;
    assert_eq!(waiting.stable_bundle.as_deref(), Some("shop-4.0"));
    assert_eq!(waiting.candidate_bundle.as_deref(), Some("shop-4.1"));
    assert_eq!(waiting.current_step_index, Some(3));
    // The Channel reports the candidate and its share.
    channel_when(&client, &namespace, "production", "Ready", "True").await;
    eventually(30, "the Channel reports the candidate at 50%", || async {
        let channels: Api<Channel> = Api::namespaced(client.clone(), &namespace);
        let channel = channels.get("production").await.expect("the Channel");
        let candidate = channel.status?.candidate?;
        (candidate.bundle == "shop-4.1" && candidate.percent == 50).then_some(())
    })
    .await;

    // Promote: the annotation moves it past the pause, to 100% and Completed.
    let promote = json!({"metadata": {"annotations": {ota_operator::api::constants::annotation::PROMOTE: "2026-11-27T00:00:00Z"}}});
    rollouts
        .patch("to-4.1", &PatchParams::default(), &Patch::Merge(&promote))
        .await
        .expect("the promotion is written");
    let done = eventually(30, "the Rollout completes", || async {
        let status = status_of("to-4.1").await?;
        (status.phase == Some(ota_operator::api::rollout::RolloutPhase::Completed)).then_some(status)
    })
    .await;
    assert_eq!(done.current_percent, Some(100));
    assert!(
        find(&done.conditions, "Ready").is_some_and(|c| c.status == "True"),
        "{:?}",
        done.conditions
    );
    let normal = event_reasons(&client, &namespace, "Rollout", "to-4.1", "Normal").await;
    assert!(normal.len() >= 3, "every transition is an Event: {normal:?}");

    // The candidate is recorded as the Channel's stable bundle (in status: spec.bundleRef is
    // git's and stays as it was), and the Channel then reports it as what it serves.
    let channels: Api<Channel> = Api::namespaced(client.clone(), &namespace);
    let served = eventually(
        30,
        "the Channel serves the completed candidate as stable",
        || async {
            let channel = channels.get("production").await.expect("the Channel");
            let status = channel.status.as_ref()?;
            (status.stable.as_ref()?.bundle.as_deref() == Some("shop-4.1")).then_some(channel)
        },
    )
    .await;
    let promoted = served
        .status
        .as_ref()
        .and_then(|s| s.promoted.clone())
        .expect("promoted");
    assert_eq!(promoted.bundle, "shop-4.1");
    assert_eq!(promoted.over_bundle_ref.as_deref(), Some("shop-4.0"));
    assert_eq!(promoted.rollout, "to-4.1");
    assert_eq!(served.spec.bundle_ref.as_deref(), Some("shop-4.0"));
    let recorded = event_reasons(&client, &namespace, "Channel", "production", "Normal").await;
    assert!(recorded.iter().any(|r| r == "StableRecorded"), "{recorded:?}");

    // Git takes the choice back: the Channel's bundleRef moves to the candidate, which clears
    // the promotion; a later revert to the old bundleRef serves the old bundle again (the
    // completed Rollout, still there, does not override git).
    apply(&client, &namespace, channel("production", Some("shop-4.1"))).await;
    eventually(
        30,
        "the promotion is cleared once git moved bundleRef",
        || async {
            let channel = channels.get("production").await.expect("the Channel");
            let status = channel.status?;
            (status.promoted.is_none() && status.stable?.bundle.as_deref() == Some("shop-4.1")).then_some(())
        },
    )
    .await;
    let cleared = event_reasons(&client, &namespace, "Channel", "production", "Normal").await;
    assert!(cleared.iter().any(|r| r == "PromotionCleared"), "{cleared:?}");
    apply(&client, &namespace, channel("production", Some("shop-4.0"))).await;
    eventually(30, "a revert in git serves the old bundle", || async {
        let channel = channels.get("production").await.expect("the Channel");
        let status = channel.status?;
        (status.promoted.is_none()
            && status.stable?.bundle.as_deref() == Some("shop-4.0")
            && status.candidate.is_none())
        .then_some(())
    })
    .await;

    // Every transition reached the webhook, signed; the refused first POST was sent again with
    // the same delivery id.
    let received = eventually(
        30,
        "the webhook gets the completion and the refused first delivery again",
        || async {
            let received = received.lock().unwrap().clone();
            let first = received.first()?;
            let again = received[1..].iter().any(|r| r.delivery == first.delivery);
            (again && received.iter().any(|r| r.event == "RolloutCompleted")).then_some(received)
        },
    )
    .await;
    for post in &received {
        assert_eq!(
            post.signature,
            expected_signature(SIGNING_KEY.as_bytes(), &post.body),
            "{post:?}"
        );
        let body: Value = serde_json::from_slice(&post.body).expect("a JSON body");
        assert_eq!(body["kind"], "RolloutEvent");
        assert_eq!(body["reason"], post.event.as_str());
        assert_eq!(body["id"], post.delivery.as_str());
        assert_eq!(body["rollout"]["name"], "to-4.1");
        assert_eq!(body["channel"], "production");
        assert_eq!(body["candidateBundle"], "shop-4.1");
    }
    assert!(
        received[1..]
            .iter()
            .any(|r| r.delivery == received[0].delivery && r.body == received[0].body),
        "the refused first delivery was sent again, unchanged"
    );
    let reasons: Vec<&str> = received.iter().map(|r| r.event.as_str()).collect();
    for reason in [
        "RolloutStarted",
        "PercentIncreased",
        "Promoted",
        "RolloutCompleted",
    ] {
        assert!(reasons.contains(&reason), "{reason} missing from {reasons:?}");
    }
    // Deliveries are concurrent (a retried one may land last): the completion says Completed.
    let completed = received.iter().find(|r| r.event == "RolloutCompleted").unwrap();
    let body: Value = serde_json::from_slice(&completed.body).expect("JSON");
    assert_eq!(body["phase"], "Completed");
    assert_eq!(body["percent"], 100);
    running.stop().await;
}

/// The controller measures a Rollout's metrics through the source it was given. Scripted
/// answers stand in for the Prometheus and web providers here, so that each outcome comes when
/// the test says (tests/analysis_providers.rs runs the providers against a real Prometheus); the
/// rest is real: the API server, the status, the Events and the webhook.
#[tokio::test]
async fn a_metric_pauses_the_rollout_while_it_cannot_be_measured_then_rolls_it_back_when_it_fails() {
    use ota_operator::{core::rollout::measurement::MetricValue, rollout_driver::ScriptedMetrics};
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-metrics");
    let received = two_bundles_on_production(&client, &namespace, 5, "key").await;
    let mut guarded = rollout(
        "to-5.1",
        "production",
        "shop-5.1",
        json!([{"setPercent": 10}, {"pause": {}}, {"setPercent": 100}]),
    );
    guarded["spec"]["notifications"] = json!({"webhook": {"secretRef": {"name": "hooks"}}});
    guarded["spec"]["analysis"] = json!({"interval": "1h", "action": "rollback", "metrics": [{
        "name": "error-rate", "interval": "1m", "consecutiveErrorLimit": 0,
        "prometheus": {"address": "http://prometheus.monitoring:9090",
                       "query": "errors{version=\"{{candidate}}\",channel=\"{{channel}}\"}"},
        "failureCondition": "result > 0.05"}]});
    apply(&client, &namespace, guarded).await;
    let clock = TestClock::starting_now();
    let metrics = ScriptedMetrics::new(Arc::new(clock.clone()));
    let mut on_test_clock = options(&namespace, false, "solo");
    on_test_clock.clock = Arc::new(clock.clone());
    on_test_clock.metrics = Arc::new(metrics.clone());
    let running = start(&client, on_test_clock).await;
    let rollouts: Api<ota_operator::api::Rollout> = Api::namespaced(client.clone(), &namespace);
    let status = || async {
        let rollout = rollouts.get("to-5.1").await.expect("the Rollout");
        rollout
            .status
            .filter(|s| s.observed_generation == rollout.metadata.generation)
    };
    eventually(60, "the Rollout waits at 10%", || async {
        let status = status().await?;
        (status.current_percent == Some(10) && status.metrics.len() == 1).then_some(())
    })
    .await;
    // The provider is down: the first error pauses (limit 0), it never aborts.
    metrics.answer(
        "error-rate",
        Err("Get http://prometheus.monitoring:9090: connection refused".to_owned()),
    );
    clock.advance(std::time::Duration::from_secs(60));
    let paused = eventually(30, "an outage pauses the Rollout", || async {
        let status = status().await?;
        status
            .pause_conditions
            .iter()
            .any(|p| p.reason == "MetricsUnavailable")
            .then_some(status)
    })
    .await;
    assert_eq!(paused.metrics[0].errors, 1);
    assert!(
        paused
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("connection refused"),
        "{paused:?}"
    );
    warning_event(&client, &namespace, "Rollout", "to-5.1", "MetricsUnavailable").await;
    let asked = metrics.asked();
    match &asked[0].provider {
        ota_operator::core::rollout::measurement::ProviderRequest::Prometheus { query, .. } => {
            assert_eq!(query, "errors{version=\"5.1.0\",channel=\"production\"}")
        }
        other => panic!("a Prometheus request, not {other:?}"),
    }
    // It answers again: the pause lifts by itself.
    metrics.answer("error-rate", Ok(MetricValue::Number(0.01)));
    clock.advance(std::time::Duration::from_secs(60));
    eventually(30, "the outage pause lifts", || async {
        let status = status().await?;
        (!status
            .pause_conditions
            .iter()
            .any(|p| p.reason == "MetricsUnavailable")
            && status.metrics[0].successful == 1)
            .then_some(())
    })
    .await;
    // The error rate rises: the candidate is rolled back.
    metrics.answer("error-rate", Ok(MetricValue::Number(0.2)));
    clock.advance(std::time::Duration::from_secs(60));
    let aborted = eventually(30, "a failing metric rolls the candidate back", || async {
        let status = status().await?;
        (status.phase == Some(ota_operator::api::rollout::RolloutPhase::Aborted)).then_some(status)
    })
    .await;
    assert_eq!(aborted.current_percent, Some(0));
    let metric = &aborted.metrics[0];
    assert_eq!(metric.phase, ota_operator::api::rollout::MetricPhase::Failed);
    assert_eq!(
        metric.last_measurements.last().and_then(|m| m.value.as_deref()),
        Some("0.2")
    );
    warning_event(&client, &namespace, "Rollout", "to-5.1", "Aborted").await;
    let notified = eventually(30, "the abort reaches the webhook", || async {
        let received = received.lock().unwrap().clone();
        received.into_iter().find(|r| r.event == "Aborted")
    })
    .await;
    let body: Value = serde_json::from_slice(&notified.body).expect("JSON");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("metric error-rate failed"),
        "{body}"
    );
    assert_eq!(body["metrics"][0]["name"], "error-rate");
    assert_eq!(body["metrics"][0]["phase"], "Failed");
    running.stop().await;
}

#[tokio::test]
async fn every_object_of_the_examples_gets_a_status_for_its_generation_that_says_what_is_wrong() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-examples");
    for file in ["app.yaml", "bundles.yaml", "channels.yaml", "rollout.yaml"] {
        for document in yaml_documents(&repo_root().join("examples").join(file)) {
            apply(&client, &namespace, document).await;
        }
    }
    let running = start(&client, options(&namespace, false, "solo")).await;
    // The example names Secrets that do not exist here: the App says so and waits.
    let apps: Api<ota_operator::api::App> = Api::namespaced(client.clone(), &namespace);
    let app = eventually(30, "the example App is Stalled on its missing Secret", || async {
        let app = apps.get("shop").await.expect("the App");
        let status = app.status.clone()?;
        let stalled = find(&status.conditions, "Stalled")?.clone();
        (status.observed_generation == app.metadata.generation && stalled.status == "True").then_some(stalled)
    })
    .await;
    assert_eq!(app.reason, "ReferenceNotFound");
    assert!(app.message.contains("shop-ota"), "{}", app.message);
    // Every other object has a status for its generation with a Ready condition and a reason.
    let bundles: Api<Bundle> = Api::namespaced(client.clone(), &namespace);
    let channels: Api<Channel> = Api::namespaced(client.clone(), &namespace);
    let rollouts: Api<ota_operator::api::Rollout> = Api::namespaced(client.clone(), &namespace);
    let described = |generation: Option<i64>, observed: Option<i64>, conditions: &[Condition]| {
        observed == generation && find(conditions, "Ready").is_some_and(|c| !c.reason.is_empty())
    };
    eventually(
        60,
        "every example object has a status for its generation",
        || async {
            let all_bundles = bundles.list(&ListParams::default()).await.expect("Bundles");
            let all_channels = channels.list(&ListParams::default()).await.expect("Channels");
            let all_rollouts = rollouts.list(&ListParams::default()).await.expect("Rollouts");
            let bundles_done = all_bundles.items.iter().all(|b| {
                b.status
                    .as_ref()
                    .is_some_and(|s| described(b.metadata.generation, s.observed_generation, &s.conditions))
            });
            let channels_done = all_channels.items.iter().all(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| described(c.metadata.generation, s.observed_generation, &s.conditions))
            });
            let rollouts_done = all_rollouts.items.iter().all(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| described(r.metadata.generation, s.observed_generation, &s.conditions))
            });
            (bundles_done && channels_done && rollouts_done && all_bundles.items.len() == 3).then_some(())
        },
    )
    .await;
    // The Bundles cannot reach their App's storage: not Ready, and never reported as synced.
    for bundle in bundles.list(&ListParams::default()).await.expect("Bundles").items {
        let status = bundle.status.expect("a status");
        assert!(
            find(&status.conditions, "Ready").is_some_and(|c| c.status == "False"),
            "{:?}",
            status.conditions
        );
        assert!(status.storage.is_none() && status.checksum.is_none());
    }
    running.stop().await;
}

/// Runs `kubectl-ota` against the test API server; returns its exit code and output. Awaited, so
/// that the controller in this process goes on working meanwhile.
async fn kubectl_ota(namespace: &str, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ota"))
        .args(["--namespace", namespace])
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .await
        .expect("kubectl-ota runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn the_kubectl_plugin_shows_promotes_aborts_and_waits_for_rollouts() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-kubectl");
    let prefix = format!("apps/{namespace}/");
    let storage = open_storage(&prefix);
    let stable = zip_of(&[("index.html", index_html("5.0.0"))]);
    let candidate = zip_of(&[("index.html", index_html("5.1.0"))]);
    upload(&storage, "uploads/5.0.zip", stable.clone()).await;
    upload(&storage, "uploads/5.1.zip", candidate.clone()).await;
    create_secret(&client, &namespace).await;
    apply(&client, &namespace, app(&prefix)).await;
    apply(
        &client,
        &namespace,
        bundle("shop-5.0", "5.0.0", "uploads/5.0.zip", &sha256(&stable)),
    )
    .await;
    apply(
        &client,
        &namespace,
        bundle("shop-5.1", "5.1.0", "uploads/5.1.zip", &sha256(&candidate)),
    )
    .await;
    apply(&client, &namespace, channel("production", Some("shop-5.0"))).await;
    apply(&client, &namespace, channel("beta", Some("shop-5.0"))).await;
    let steps = json!([{"setPercent": 20}, {"pause": {}}, {"setPercent": 100}]);
    apply(
        &client,
        &namespace,
        rollout("to-5.1", "production", "shop-5.1", steps.clone()),
    )
    .await;
    apply(
        &client,
        &namespace,
        rollout("beta-5.1", "beta", "shop-5.1", steps),
    )
    .await;
    let running = start(&client, options(&namespace, false, "solo")).await;

    let view = eventually(60, "the Rollout waits for promotion", || async {
        let (code, view) = kubectl_ota(&namespace, &["get", "rollout", "to-5.1"]).await;
        (code == 0 && view.contains("->  1. pause until promoted")).then_some(view)
    })
    .await;
    assert!(view.contains("Percent:   20%"), "{view}");
    assert!(view.contains("Bundles:   shop-5.0 -> shop-5.1"), "{view}");
    // Still waiting: `status` gives up with its own exit code.
    let (code, output) = kubectl_ota(&namespace, &["status", "to-5.1", "--timeout", "2"]).await;
    assert_eq!(code, 4, "{output}");
    // Promote, and `status` waits for the completion.
    let (code, output) = kubectl_ota(&namespace, &["promote", "to-5.1"]).await;
    assert_eq!(code, 0, "{output}");
    let (code, output) = kubectl_ota(&namespace, &["status", "to-5.1", "--timeout", "60"]).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("Completed"), "{output}");

    // Abort the other one: `status` says so with exit code 3.
    eventually(60, "the beta Rollout is at 20%", || async {
        let (_, view) = kubectl_ota(&namespace, &["get", "rollout", "beta-5.1"]).await;
        view.contains("Percent:   20%").then_some(())
    })
    .await;
    let (code, output) = kubectl_ota(&namespace, &["abort", "beta-5.1"]).await;
    assert_eq!(code, 0, "{output}");
    let (code, output) = kubectl_ota(&namespace, &["status", "beta-5.1", "--timeout", "60"]).await;
    assert_eq!(code, 3, "{output}");
    // No such rollout: a clear error and exit code 1.
    let (code, output) = kubectl_ota(&namespace, &["promote", "nope"]).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("nope"), "{output}");
    running.stop().await;
}
