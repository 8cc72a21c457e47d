//! `ota server` against the real test API server: reflectors watch the four kinds, devices get
//! answers over real HTTP, and a change to a Channel is served within a second.

mod support;

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use object_store::{ObjectStore, local::LocalFileSystem, path::Path as StorePath};
use ota_operator::{
    api::{Bundle, Channel, constants::field_manager},
    sync::{BundleSourceRef, SyncLimits, SyncRequest, sync_bundle},
};
use serde_json::{Value, json};
use support::*;

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ota server` on a free port for one namespace, with its database and storage in
/// `dir`; returns the process (stopped on drop) and its base URL.
fn start_server(
    namespace: &str,
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
) -> (ServerProcess, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let process = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args([
            "server",
            "--namespace",
            namespace,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--database")
        .arg(format!("sqlite://{}", dir.join("devices.db").display()))
        .arg("--storage-root")
        .arg(dir)
        .env("KUBECONFIG", kubeconfig)
        .env("OTA_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ota server starts");
    (ServerProcess(process), format!("http://127.0.0.1:{port}"))
}

const ZIP_SHA: &str = "2b3898b01ccefd0a918bd8c28c44a02caed9ab0f58ec73c409750eb33aae920c";

#[tokio::test]
async fn the_server_follows_the_cluster_and_serves_changes_within_a_second() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("server");
    apply_folder(&client, &namespace, "examples/standalone").await;
    // What the controller's sync would do: put the bundle into the App's storage and say so in
    // status.
    let storage = tempfile::tempdir().unwrap();
    let root = storage.path().join("storage");
    std::fs::create_dir_all(&root).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
    let source = BundleSourceRef::File(repo_root().join("examples/standalone/bundles/shop-1.4.3.zip"));
    let synced = sync_bundle(SyncRequest {
        source: &source,
        expected_sha256: ZIP_SHA,
        store: &store,
        prefix: &StorePath::from(""),
        limits: &SyncLimits::default(),
        http: &reqwest::Client::new(),
    })
    .await
    .expect("the example bundle syncs");
    let bundles: Api<Bundle> = Api::namespaced(client.clone(), &namespace);
    let status = json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle",
        "status": {
            "conditions": [{"type": "Synced", "status": "True", "reason": "Reconciled", "message": "synced",
                            "lastTransitionTime": "2026-11-27T00:00:00Z"}],
            "checksum": synced.sha256, "zipSize": synced.zip_size, "fileCount": synced.file_count,
            "storage": {"zipKey": synced.zip_key, "manifestKey": synced.manifest_key},
        }
    });
    bundles
        .patch_status(
            "shop-1.4.3",
            &PatchParams::apply(field_manager::STATUS).force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("the status is accepted");

    let (_server, base) = start_server(&namespace, kubeconfig_path(), storage.path());
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "ota server was not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/plugin/updates-8.51.14-android.json"))
            .unwrap(),
    )
    .unwrap();
    let mut check = fixture["body"].clone();
    check.as_object_mut().unwrap().remove("key_id");
    let ask = || async {
        http.post(format!("{base}/updates"))
            .json(&check)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    // The snapshot can trail readiness by one event burst.
    let mut answer = ask().await;
    while answer["version"] != "1.4.3" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = ask().await;
    }
    assert_eq!(answer["version"], "1.4.3", "{answer}");
    assert_eq!(answer["checksum"], ZIP_SHA);
    assert!(
        answer["manifest"].as_array().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
    let zip = http.get(answer["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(zip.status(), 200);

    // Point the channel at nothing: devices are sent back to builtin, within a second.
    let channels: Api<Channel> = Api::namespaced(client.clone(), &namespace);
    let channel = json!({"apiVersion": "ota.dev/v1alpha1", "kind": "Channel", "metadata": {"name": "production"},
                         "spec": {"appRef": "shop", "public": true}});
    channels
        .patch(
            "production",
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&channel),
        )
        .await
        .expect("the channel changes");
    let changed = Instant::now();
    loop {
        let answer = ask().await;
        if answer == json!({"version": "builtin"}) {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "the change was never served: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "served after {:?}",
        changed.elapsed()
    );
}

/// A TCP proxy in front of the API server that the test can cut, to lose the API server without
/// stopping the one the other tests share.
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

async fn proxy_to(target: std::net::SocketAddr) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let mut cut_now = cut_rx.clone();
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = cut_now.wait_for(|cut| *cut) => return,
            };
            let Ok((mut inbound, _)) = accepted else { return };
            let mut cut_conn = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_conn.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    Proxy { port, cut }
}

#[tokio::test]
async fn losing_the_api_server_keeps_the_last_snapshot_served_and_says_so() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("lost");
    apply_folder(&client, &namespace, "examples/standalone").await;
    // A kubeconfig that reaches the API server through the proxy.
    let kubeconfig = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let server_line = kubeconfig
        .lines()
        .find(|l| l.trim_start().starts_with("server:"))
        .unwrap();
    let target: std::net::SocketAddr = server_line
        .trim()
        .trim_start_matches("server: https://")
        .parse()
        .unwrap();
    let proxy = proxy_to(target).await;
    let dir = tempfile::tempdir().unwrap();
    let proxied = dir.path().join("kubeconfig");
    std::fs::write(
        &proxied,
        kubeconfig.replace(
            server_line,
            &server_line.replace(&target.port().to_string(), &proxy.port.to_string()),
        ),
    )
    .unwrap();

    let (_server, base) = start_server(&namespace, &proxied, dir.path());
    let http = reqwest::Client::new();
    let readiness = || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json::<Value>().await.ok()?))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while readiness().await.is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "ota server was not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = json!({"app_id": "com.example.shop", "device_id": "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11",
        "platform": "android", "version_name": "1.4.2", "version_build": "1.4.0", "plugin_version": "8.51.14",
        "is_emulator": false, "is_prod": true});
    let ask = || async {
        http.post(format!("{base}/updates"))
            .json(&check)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    // The bundle is not synced (no controller runs here): the answer names the channel's bundle.
    let before = ask().await;
    assert_eq!(before["error"], "no_bundle", "{before}");

    proxy.cut.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let degraded = loop {
        if let Some((status, body)) = readiness().await
            && body["status"] == "degraded"
        {
            break (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "the lost API server was never reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(degraded.0, 200, "degraded still serves: {}", degraded.1);
    assert!(
        degraded.1["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{}",
        degraded.1
    );
    assert_eq!(ask().await, before, "the last good snapshot is still served");
}
