//! The real `ota` binary's `bundle` and `keys` commands, as mobile CI runs them: against a
//! filesystem storage and the real S3 server (tests/s3/s3.sh, signatures checked), with the
//! Bundle YAML it writes applied to the real API server (tests/apiserver/apiserver.sh) so the
//! CRD rules judge it, and encrypted bundles opened by the decryptor written from the plugin's
//! algorithm. Every bad input gets one line on stderr and its documented exit code.

mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
};

use object_store::{ObjectStore, ObjectStoreExt};
use ota_operator::{
    api::{Bundle, Channel},
    crypto::plugin::device_verify_zip,
    sync::{self, BundleSourceRef, SyncLimits, SyncRequest},
};
use support::{apply_document, client_with_crds, dynamic_api, unique_namespace};

const OTA: &str = env!("CARGO_BIN_EXE_ota");

fn ota(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(OTA);
    command.args(args).env("OTA_LOG", "warn");
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
    ] {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the ota binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "ota failed ({:?}):\n{}",
        output.status.code(),
        stderr(output)
    );
}

/// Exits with `code` and one clear error line holding `needle`.
#[track_caller]
fn failed_with(output: &Output, code: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    let errors: Vec<&str> = err.lines().filter(|line| line.starts_with("ota: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {err}");
    assert!(
        errors[0].contains(needle),
        "{:?} does not say {needle:?}",
        errors[0]
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn write(root: &Path, name: &str, content: &[u8]) {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A small Capacitor project: package.json with native plugins (installed), and its web build
/// in dist/ with a JS file big enough to be stored Brotli-compressed.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "dist/index.html",
        b"<!doctype html><script type=module src=assets/app.js></script>",
    );
    let mut js = String::from("import { CapacitorUpdater } from '@capgo/capacitor-updater';\n");
    for i in 0..800 {
        js.push_str(&format!("export function f{i}(a) {{ return a * {i}; }}\n"));
    }
    js.push_str("CapacitorUpdater.notifyAppReady();\n");
    write(root, "dist/assets/app.js", js.as_bytes());
    write(
        root,
        "dist/assets/logo.svg",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    );
    write(
        root,
        "package.json",
        br#"{"dependencies": {"@capacitor/core": "^6.1.0", "@capacitor/camera": "^6.0.0", "lodash": "^4.17.21"}}"#,
    );
    write(
        root,
        "node_modules/@capacitor/core/package.json",
        br#"{"version": "6.1.2"}"#,
    );
    write(
        root,
        "node_modules/@capacitor/camera/package.json",
        br#"{"version": "6.0.2", "capacitor": {"ios": {"src": "ios"}, "android": {"src": "android"}}}"#,
    );
    write(
        root,
        "node_modules/lodash/package.json",
        br#"{"version": "4.17.21"}"#,
    );
    dir
}

/// The counts of the "uploaded ..." line: (files uploaded, files already stored).
fn upload_counts(output: &Output) -> (u64, u64) {
    let err = stderr(output);
    let line = err
        .lines()
        .find(|line| line.starts_with("uploaded "))
        .unwrap_or_else(|| panic!("no upload line in {err}"));
    let number_before = |suffix: &str| -> u64 {
        let before = line.split(suffix).next().unwrap();
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (number_before(" files uploaded"), number_before(" already stored"))
}

/// The bytes of the "uploaded N objects, B bytes" line.
fn uploaded_bytes(output: &Output) -> u64 {
    let err = stderr(output);
    let line = err
        .lines()
        .find(|line| line.starts_with("uploaded "))
        .unwrap_or_else(|| panic!("no upload line in {err}"));
    let before = line.split(" bytes").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A folder storage as the operator opens it.
fn local_store(root: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root).unwrap())
}

/// Syncs a bundle pushed as files as the operator does (source.manifestKey: the zip rebuilt from
/// the stored files and verified), then returns the zip it stored.
fn rebuild_zip(store: Arc<dyn ObjectStore>, manifest_key: &str, sha256: &str) -> Vec<u8> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let prefix = object_store::path::Path::ROOT;
        let synced = sync::sync_bundle(SyncRequest {
            source: &BundleSourceRef::Manifest(manifest_key.to_owned()),
            expected_sha256: sha256,
            store: &store,
            prefix: &prefix,
            limits: &SyncLimits::default(),
            http: &reqwest::Client::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("the sync of {manifest_key} failed: {e}"));
        assert_eq!(synced.sha256, sha256);
        let path = sync::object_path(&prefix, &synced.zip_key).unwrap();
        let zip = store.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
        assert_eq!(ota_operator::crypto::sha256_of(zip.as_slice()).unwrap(), sha256);
        zip
    })
}

/// The size of the zip `ota bundle zip` makes of `dist`.
fn zip_size(dist: &Path) -> u64 {
    let out = tempfile::tempdir().unwrap();
    let zip = out.path().join("b.zip");
    succeeded(&ota(
        &[
            "bundle",
            "zip",
            dist.to_str().unwrap(),
            "--out",
            zip.to_str().unwrap(),
        ],
        &[],
    ));
    std::fs::metadata(zip).unwrap().len()
}

fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(text)
        .unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn fixture(name: &str) -> PathBuf {
    support::repo_root().join("tests/fixtures/keys").join(name)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn zip_is_deterministic_and_has_index_html_at_the_root() {
    let project = project();
    let dist = project.path().join("dist");
    let out = tempfile::tempdir().unwrap();
    let a = out.path().join("a.zip");
    let b = out.path().join("b.zip");
    let first = ota(
        &[
            "bundle",
            "zip",
            dist.to_str().unwrap(),
            "--out",
            a.to_str().unwrap(),
        ],
        &[],
    );
    succeeded(&first);
    // A rewritten file (new timestamp), same content: the same zip.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(
        &dist,
        "assets/logo.svg",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    );
    let second = ota(
        &[
            "bundle",
            "zip",
            dist.to_str().unwrap(),
            "--out",
            b.to_str().unwrap(),
        ],
        &[],
    );
    succeeded(&second);
    let sha = stdout(&first).trim().to_owned();
    assert_eq!(sha.len(), 64);
    assert_eq!(sha, stdout(&second).trim());
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(ota_operator::crypto::sha256_of(bytes.as_slice()).unwrap(), sha);
    assert_eq!(bytes, std::fs::read(&b).unwrap());
    let archive = zip::ZipArchive::new(std::fs::File::open(&a).unwrap()).unwrap();
    assert!(
        archive
            .file_names()
            .any(|name| name.as_deref().is_ok_and(|n| n == "index.html"))
    );
}

#[test]
fn push_to_a_folder_uploads_only_what_the_storage_lacks_and_writes_a_valid_bundle() {
    let project = project();
    let dist = project.path().join("dist");
    let storage = tempfile::tempdir().unwrap();
    let gitops = tempfile::tempdir().unwrap();
    let bundle_file = gitops.path().join("bundles/shop-1.4.3.yaml");
    let channel_file = gitops.path().join("patches/production.yaml");
    let push = |version: &str, out: &Path, channel_out: &Path| {
        ota(
            &[
                "bundle",
                "push",
                dist.to_str().unwrap(),
                "--app",
                "shop",
                "--version",
                version,
                "--channel",
                "production",
                "--storage",
                storage.path().to_str().unwrap(),
                "--package-json",
                project.path().join("package.json").to_str().unwrap(),
                "--min-native-version",
                "1.4.0",
                "--out",
                out.to_str().unwrap(),
                "--channel-out",
                channel_out.to_str().unwrap(),
            ],
            &[],
        )
    };
    let first = push("1.4.3", &bundle_file, &channel_file);
    succeeded(&first);
    assert_eq!(upload_counts(&first), (3, 0));
    // The same content again (a new version name): nothing new to upload.
    let second = push(
        "1.4.4",
        &gitops.path().join("b2.yaml"),
        &gitops.path().join("c2.yaml"),
    );
    succeeded(&second);
    assert_eq!(upload_counts(&second), (0, 3));
    // One file changed: only that file.
    write(
        &dist,
        "assets/logo.svg",
        b"<svg xmlns='http://www.w3.org/2000/svg' width='2'/>",
    );
    let third = push(
        "1.4.5",
        &gitops.path().join("b3.yaml"),
        &gitops.path().join("c3.yaml"),
    );
    succeeded(&third);
    assert_eq!(upload_counts(&third), (1, 2));
    // Its bytes: that file and the manifest, nothing else.
    let third_bundle: Bundle = serde_json::from_value(
        documents(&std::fs::read_to_string(gitops.path().join("b3.yaml")).unwrap())[0].clone(),
    )
    .unwrap();
    let third_manifest = storage
        .path()
        .join(third_bundle.spec.source.manifest_key.as_deref().unwrap());
    let logo = std::fs::metadata(dist.join("assets/logo.svg")).unwrap().len();
    assert_eq!(
        uploaded_bytes(&third),
        logo + std::fs::metadata(third_manifest).unwrap().len()
    );
    assert_eq!(
        rebuild_zip(
            local_store(storage.path()),
            third_bundle.spec.source.manifest_key.as_deref().unwrap(),
            &third_bundle.spec.source.sha256
        )
        .len() as u64,
        zip_size(&dist)
    );

    let docs = documents(&std::fs::read_to_string(&bundle_file).unwrap());
    assert_eq!(docs.len(), 1);
    let bundle: Bundle = serde_json::from_value(docs[0].clone()).expect("a Bundle");
    assert_eq!(bundle.metadata.name.as_deref(), Some("shop-1.4.3"));
    assert_eq!(bundle.spec.app_ref, "shop");
    assert_eq!(bundle.spec.version, "1.4.3");
    // The files and the manifest are stored, not the zip: the sync rebuilds it from them.
    assert_eq!(bundle.spec.source.storage_key, None);
    let manifest_key = bundle.spec.source.manifest_key.clone().expect("a manifest key");
    assert_eq!(
        manifest_key,
        format!("manifests/{}.json", bundle.spec.source.sha256)
    );
    let zip_key = format!("zips/{}.zip", bundle.spec.source.sha256);
    assert!(!storage.path().join(&zip_key).exists(), "no zip uploaded");
    rebuild_zip(
        local_store(storage.path()),
        &manifest_key,
        &bundle.spec.source.sha256,
    );
    let native = bundle.spec.native.clone().expect("native packages");
    assert_eq!(native.min_version.as_deref(), Some("1.4.0"));
    let names: Vec<(&str, &str)> = native
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    assert_eq!(
        names,
        [("@capacitor/camera", "6.0.2"), ("@capacitor/core", "6.1.2")]
    );
    assert!(
        storage
            .path()
            .join("manifests")
            .join(format!("{}.json", bundle.spec.source.sha256))
            .is_file()
    );

    let patch = documents(&std::fs::read_to_string(&channel_file).unwrap());
    assert_eq!(
        patch,
        [serde_json::json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Channel",
            "metadata": {"name": "production"}, "spec": {"bundleRef": "shop-1.4.3"},
        })]
    );

    // The YAML passes the CRD rules of a real API server, and the patch moves the channel
    // without touching its other fields.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = client_with_crds().await;
        let namespace = unique_namespace("bundle-cli");
        let app = serde_json::json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "App", "metadata": {"name": "shop"},
            "spec": {"appId": "com.example.shop", "storage": {"filesystem": {"path": "./storage"}}},
        });
        let channel = serde_json::json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Channel", "metadata": {"name": "production"},
            "spec": {"appRef": "shop", "public": true, "allowEmulator": false},
        });
        for doc in [&app, &channel, &docs[0]] {
            apply_document(&client, &namespace, doc)
                .await
                .unwrap_or_else(|e| panic!("refused: {e}\n{doc}"));
        }
        dynamic_api(&client, &namespace, "Channel")
            .patch(
                "production",
                &kube::api::PatchParams::apply(ota_operator::api::constants::field_manager::CLI),
                &kube::api::Patch::Apply(&patch[0]),
            )
            .await
            .expect("the Channel patch applies");
        let stored = dynamic_api(&client, &namespace, "Channel")
            .get("production")
            .await
            .unwrap();
        let stored: Channel = serde_json::from_value(serde_json::to_value(stored).unwrap()).unwrap();
        assert_eq!(stored.spec.bundle_ref.as_deref(), Some("shop-1.4.3"));
        assert!(stored.spec.public && !stored.spec.allow_emulator);
    });
}

#[test]
fn push_with_upload_zip_stores_the_whole_zip_and_names_it() {
    let project = project();
    let dist = project.path().join("dist");
    let storage = tempfile::tempdir().unwrap();
    let output = ota(
        &[
            "bundle",
            "push",
            dist.to_str().unwrap(),
            "--app",
            "shop",
            "--version",
            "1.0.0",
            "--storage",
            storage.path().to_str().unwrap(),
            "--upload-zip",
        ],
        &[],
    );
    succeeded(&output);
    let bundle: Bundle = serde_json::from_value(documents(&stdout(&output))[0].clone()).unwrap();
    assert_eq!(bundle.spec.source.manifest_key, None);
    let key = bundle.spec.source.storage_key.clone().expect("a storage key");
    let zip = std::fs::read(storage.path().join(&key)).expect("the zip in storage");
    assert_eq!(
        ota_operator::crypto::sha256_of(zip.as_slice()).unwrap(),
        bundle.spec.source.sha256
    );
    assert_eq!(zip.len() as u64, zip_size(&dist));
    assert!(
        uploaded_bytes(&output) > zip.len() as u64,
        "the zip and the files"
    );
}

#[test]
fn without_out_files_the_bundle_and_the_channel_patch_go_to_stdout() {
    let project = project();
    let storage = tempfile::tempdir().unwrap();
    let output = ota(
        &[
            "bundle",
            "push",
            project.path().join("dist").to_str().unwrap(),
            "--app",
            "shop",
            "--version",
            "2.0.0-beta.1",
            "--namespace",
            "mobile",
            "--channel",
            "beta",
            "--storage",
            storage.path().to_str().unwrap(),
        ],
        &[],
    );
    succeeded(&output);
    let docs = documents(&stdout(&output));
    assert_eq!(docs.len(), 2, "{}", stdout(&output));
    let bundle: Bundle = serde_json::from_value(docs[0].clone()).unwrap();
    assert_eq!(bundle.metadata.name.as_deref(), Some("shop-2.0.0-beta.1"));
    assert_eq!(bundle.metadata.namespace.as_deref(), Some("mobile"));
    assert_eq!(docs[1]["spec"]["bundleRef"], "shop-2.0.0-beta.1");
    assert_eq!(docs[1]["metadata"]["namespace"], "mobile");
}

#[test]
fn an_encrypted_push_stores_ciphertext_only_and_devices_can_open_the_zip_and_each_delta_file() {
    let project = project();
    let dist = project.path().join("dist");
    let storage = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let output = ota(
        &[
            "bundle",
            "push",
            dist.to_str().unwrap(),
            "--app",
            "shop",
            "--version",
            "1.5.0",
            "--encrypt",
            fixture("app.key").to_str().unwrap(),
            "--storage",
            storage.path().to_str().unwrap(),
        ],
        &[],
    );
    succeeded(&output);
    let bundle: Bundle = serde_json::from_value(documents(&stdout(&output))[0].clone()).unwrap();
    let encryption = bundle.spec.encryption.clone().expect("spec.encryption");
    assert_eq!(encryption.encrypted_checksum.len(), 512);
    let stored = storage
        .path()
        .join(bundle.spec.source.storage_key.as_deref().unwrap());
    // The delta files: encrypted one by one, listed by a manifest under the encrypted zip's
    // sha256 with encrypted hashes; a device opens each to the dist folder's bytes.
    let public = std::fs::read_to_string(fixture("app.key.pub")).unwrap();
    let manifest_path = storage
        .path()
        .join(format!("manifests/{}.json", bundle.spec.source.sha256));
    let manifest: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("a manifest")).unwrap();
    assert_eq!(manifest.len(), 3, "{manifest:?}");
    let mut names = Vec::new();
    for entry in &manifest {
        let file_name = entry["file_name"].as_str().unwrap();
        let file_hash = entry["file_hash"].as_str().unwrap();
        assert_eq!(file_hash.len(), 512, "an encrypted hash, hex: {file_hash}");
        let downloaded = std::fs::read(storage.path().join(entry["key"].as_str().unwrap())).unwrap();
        let content = ota_operator::crypto::plugin::device_verify_manifest_file(
            &public,
            &encryption.session_key,
            file_name,
            file_hash,
            &downloaded,
        )
        .unwrap_or_else(|e| panic!("a device refuses {file_name}: {e}"));
        let original = file_name.strip_suffix(".br").unwrap_or(file_name);
        assert_eq!(content, std::fs::read(dist.join(original)).unwrap(), "{original}");
        // Nothing in storage is plaintext.
        assert_ne!(downloaded, content);
        names.push(file_name.to_owned());
    }
    names.sort();
    // app.js is large enough to be Brotli-compressed before encryption.
    assert_eq!(names, ["assets/app.js.br", "assets/logo.svg", "index.html"]);

    // The plain zip of the same folder, and what a device decrypts from the stored one.
    let plain = work.path().join("plain.zip");
    let zipped = ota(
        &[
            "bundle",
            "zip",
            dist.to_str().unwrap(),
            "--out",
            plain.to_str().unwrap(),
        ],
        &[],
    );
    succeeded(&zipped);
    let opened = work.path().join("device.zip");
    let sha = device_verify_zip(
        &public,
        &encryption.session_key,
        &encryption.encrypted_checksum,
        &stored,
        &opened,
    )
    .expect("the device accepts the bundle");
    assert_eq!(sha, stdout(&zipped).trim());
    assert_eq!(std::fs::read(&opened).unwrap(), std::fs::read(&plain).unwrap());
    // A device with another key refuses it.
    let other = std::fs::read_to_string(fixture("other.key.pub")).unwrap();
    assert!(
        device_verify_zip(
            &other,
            &encryption.session_key,
            &encryption.encrypted_checksum,
            &stored,
            &opened
        )
        .is_err()
    );

    // `ota bundle encrypt` gives the same kind of result for a zip.
    let encrypted = work.path().join("out.enc");
    let output = ota(
        &[
            "bundle",
            "encrypt",
            plain.to_str().unwrap(),
            "--key",
            fixture("app.key").to_str().unwrap(),
            "--out",
            encrypted.to_str().unwrap(),
        ],
        &[],
    );
    succeeded(&output);
    let printed = &documents(&stdout(&output))[0];
    let sha256 = printed["sha256"].as_str().unwrap();
    let ciphertext = std::fs::read(&encrypted).unwrap();
    assert_eq!(
        ota_operator::crypto::sha256_of(ciphertext.as_slice()).unwrap(),
        sha256
    );
    let device = device_verify_zip(
        &public,
        printed["encryption"]["sessionKey"].as_str().unwrap(),
        printed["encryption"]["encryptedChecksum"].as_str().unwrap(),
        &encrypted,
        &work.path().join("device2.zip"),
    )
    .unwrap();
    assert_eq!(device, stdout(&zipped).trim());
}

#[test]
fn keys_generate_writes_a_pair_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let output = ota(&["keys", "generate", "--out", out.to_str().unwrap()], &[]);
    succeeded(&output);
    let public = std::fs::read_to_string(out.join(".capgo_key_v2.pub")).unwrap();
    assert!(public.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
    assert_eq!(
        stdout(&output),
        public,
        "the public key is printed for capacitor.config"
    );
    let private = std::fs::read_to_string(out.join(".capgo_key_v2")).unwrap();
    assert!(private.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(!stdout(&output).contains("PRIVATE") && !stderr(&output).contains("PRIVATE KEY-----"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join(".capgo_key_v2"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = ota(&["keys", "generate", "--out", out.to_str().unwrap()], &[]);
    failed_with(&again, 1, "already exists: refusing to overwrite");
    assert_eq!(
        std::fs::read_to_string(out.join(".capgo_key_v2")).unwrap(),
        private
    );
    // Only the public key left: still refused (the pair would not match).
    std::fs::remove_file(out.join(".capgo_key_v2")).unwrap();
    let again = ota(&["keys", "generate", "--out", out.to_str().unwrap()], &[]);
    failed_with(&again, 1, ".capgo_key_v2.pub already exists");
}

#[test]
fn check_fails_with_a_list_when_native_code_changed() {
    let project = project();
    let dist = project.path().join("dist");
    let storage = tempfile::tempdir().unwrap();
    let released = project.path().join("released.yaml");
    succeeded(&ota(
        &[
            "bundle",
            "push",
            dist.to_str().unwrap(),
            "--app",
            "shop",
            "--version",
            "1.0.0",
            "--storage",
            storage.path().to_str().unwrap(),
            "--package-json",
            project.path().join("package.json").to_str().unwrap(),
            "--out",
            released.to_str().unwrap(),
        ],
        &[],
    ));
    let check = |against: &Path| {
        ota(
            &[
                "bundle",
                "check",
                dist.to_str().unwrap(),
                "--against",
                against.to_str().unwrap(),
            ],
            &[],
        )
    };
    let same = check(&released);
    succeeded(&same);
    assert!(stderr(&same).contains("no native change: 2 native packages match"));

    // A plugin upgraded and one added.
    write(
        project.path(),
        "node_modules/@capacitor/camera/package.json",
        br#"{"version": "6.1.0", "capacitor": {"ios": {}, "android": {}}}"#,
    );
    write(
        project.path(),
        "package.json",
        br#"{"dependencies": {"@capacitor/core": "^6.1.0", "@capacitor/camera": "^6.0.0", "@capacitor-community/sqlite": "^6.0.0"}}"#,
    );
    let changed = check(&released);
    failed_with(&changed, 4, "native code changed since");
    assert_eq!(
        stdout(&changed),
        "added @capacitor-community/sqlite ^6.0.0\nchanged @capacitor/camera 6.0.2 -> 6.1.0\n"
    );

    // Against another package.json (the released build's).
    let old = tempfile::tempdir().unwrap();
    write(
        old.path(),
        "package.json",
        br#"{"dependencies": {"@capacitor/core": "^6.1.0"}}"#,
    );
    let changed = check(&old.path().join("package.json"));
    failed_with(&changed, 4, "2 added, 0 removed, 1 at another version");

    // Bad inputs.
    let bad = project.path().join("bad.yaml");
    std::fs::write(&bad, "kind: App\n").unwrap();
    failed_with(&check(&bad), 1, "holds no Bundle");
    failed_with(
        &check(&project.path().join("missing.yaml")),
        1,
        "cannot read the Bundle YAML",
    );
}

#[test]
fn bad_inputs_get_one_clear_line_and_their_exit_code() {
    let project = project();
    let dist = project.path().join("dist");
    let storage = tempfile::tempdir().unwrap();
    let push = |extra: &[&str]| {
        let mut args = vec![
            "bundle",
            "push",
            dist.to_str().unwrap(),
            "--app",
            "shop",
            "--version",
            "1.0.0",
            "--storage",
            storage.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ota(&args, &[])
    };
    // A public key where the private key belongs, a missing key file, a key that is no key.
    failed_with(
        &push(&["--encrypt", fixture("app.key.pub").to_str().unwrap()]),
        1,
        "this is a public key",
    );
    failed_with(
        &push(&["--encrypt", "/nonexistent/key"]),
        1,
        "cannot read the private key",
    );
    failed_with(
        &push(&["--encrypt", fixture("README.md").to_str().unwrap()]),
        1,
        "no -----BEGIN RSA PRIVATE KEY-----",
    );
    failed_with(
        &push(&["--encrypt", fixture("small.key").to_str().unwrap()]),
        1,
        "1024 bits",
    );
    let bad_version = ota(
        &[
            "bundle",
            "push",
            dist.to_str().unwrap(),
            "--app",
            "shop",
            "--version",
            "v1",
            "--storage",
            storage.path().to_str().unwrap(),
        ],
        &[],
    );
    failed_with(&bad_version, 1, "is not a semantic version");
    failed_with(&push(&["--channel", "Production"]), 1, "is not a Kubernetes name");
    // No index.html at the root.
    std::fs::remove_file(dist.join("index.html")).unwrap();
    failed_with(&push(&[]), 1, "has no index.html at its root");
    failed_with(
        &ota(&["bundle", "zip", dist.to_str().unwrap()], &[]),
        1,
        "has no index.html at its root",
    );
    assert!(!storage.path().join("zips").exists(), "nothing uploaded");
    // Usage errors are clap's exit code 2.
    let usage = ota(&["bundle", "push", dist.to_str().unwrap()], &[]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    // Encrypt: a key that is not the one, a zip that is not there.
    let enc = ota(
        &[
            "bundle",
            "encrypt",
            "/nonexistent.zip",
            "--key",
            fixture("app.key").to_str().unwrap(),
        ],
        &[],
    );
    failed_with(&enc, 1, "is not a file");
}

// ---------------------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------------------

fn s3() -> &'static HashMap<String, String> {
    support::s3_env()
}

#[test]
fn push_to_s3_uploads_only_what_the_bucket_lacks_and_never_prints_the_secret() {
    let server = s3();
    let project = project();
    let dist = project.path().join("dist");
    let prefix = unique_namespace("cli");
    let location = format!("s3://{}/apps/{prefix}", server["OTA_TEST_S3_BUCKET"]);
    let secret = server["OTA_TEST_S3_SECRET_KEY"].as_str();
    let push_args = |version: &str| -> Vec<String> {
        [
            "bundle",
            "push",
            dist.to_str().unwrap(),
            "--app",
            "shop",
            "--version",
            version,
            "--storage",
            &location,
            "--s3-endpoint",
            &server["OTA_TEST_S3_ENDPOINT"],
            "--s3-path-style",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    };
    let push = |version: &str, secret: &str| {
        ota(
            &push_args(version).iter().map(String::as_str).collect::<Vec<_>>(),
            &[
                ("AWS_ACCESS_KEY_ID", &server["OTA_TEST_S3_ACCESS_KEY"]),
                ("AWS_SECRET_ACCESS_KEY", secret),
            ],
        )
    };
    let first = push("1.0.0", secret);
    succeeded(&first);
    assert_eq!(upload_counts(&first), (3, 0));
    let second = push("1.0.1", secret);
    succeeded(&second);
    assert_eq!(upload_counts(&second), (0, 3));
    let bundle: Bundle = serde_json::from_value(documents(&stdout(&first))[0].clone()).unwrap();
    let manifest_key = bundle.spec.source.manifest_key.clone().expect("a manifest key");
    let opened = ota_operator::storage::open(
        &ota_operator::api::app::StorageSpec {
            s3: Some(ota_operator::api::app::S3Storage {
                bucket: server["OTA_TEST_S3_BUCKET"].clone(),
                region: "us-east-1".to_owned(),
                endpoint: Some(server["OTA_TEST_S3_ENDPOINT"].clone()),
                force_path_style: true,
                credentials_secret_ref: None,
            }),
            prefix: Some(format!("apps/{prefix}")),
            ..Default::default()
        },
        Path::new("/nonexistent"),
        &ota_operator::storage::Credentials::from_map(
            [
                ("AWS_ACCESS_KEY_ID", &server["OTA_TEST_S3_ACCESS_KEY"]),
                ("AWS_SECRET_ACCESS_KEY", &server["OTA_TEST_S3_SECRET_KEY"]),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect(),
        ),
    )
    .unwrap();
    // The whole-zip push works against S3 too.
    let mut zipped = push_args("1.0.3");
    zipped.push("--upload-zip".to_owned());
    let with_zip = ota(
        &zipped.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            ("AWS_ACCESS_KEY_ID", &server["OTA_TEST_S3_ACCESS_KEY"]),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ],
    );
    succeeded(&with_zip);
    let zipped: Bundle = serde_json::from_value(documents(&stdout(&with_zip))[0].clone()).unwrap();
    assert!(zipped.spec.source.storage_key.unwrap().starts_with("zips/"));
    // The zip, the raw form of app.js (the files-only pushes stored its Brotli form alone) and
    // the manifest that lists it raw.
    let manifest_size = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let path = sync::object_path(&opened.prefix, &manifest_key).unwrap();
        opened.store.head(&path).await.unwrap().size
    });
    assert_eq!(
        uploaded_bytes(&with_zip),
        zip_size(&dist) + std::fs::metadata(dist.join("assets/app.js")).unwrap().len() + manifest_size,
    );
    // The operator's sync rebuilds the zip from the files in the bucket: the same bytes.
    let zip = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let synced = sync::sync_bundle(SyncRequest {
            source: &BundleSourceRef::Manifest(manifest_key.clone()),
            expected_sha256: &bundle.spec.source.sha256,
            store: &opened.store,
            prefix: &opened.prefix,
            limits: &SyncLimits::default(),
            http: &reqwest::Client::new(),
        })
        .await
        .unwrap();
        let path = sync::object_path(&opened.prefix, &synced.zip_key).unwrap();
        opened.store.get(&path).await.unwrap().bytes().await.unwrap()
    });
    assert_eq!(
        ota_operator::crypto::sha256_of(&zip[..]).unwrap(),
        bundle.spec.source.sha256
    );
    assert_eq!(zip.len() as u64, zip_size(&dist));

    for output in [&first, &second] {
        assert!(!stderr(output).contains(secret) && !stdout(output).contains(secret));
    }

    // A wrong secret: refused by the server, exit 3, and the secret is not echoed.
    let wrong_secret = "definitely-not-the-secret-key-0123456789";
    let refused = push("1.0.2", wrong_secret);
    failed_with(&refused, 3, "s3 storage refused the request");
    assert!(!stderr(&refused).contains(wrong_secret));
}

#[test]
fn unreachable_storage_is_exit_code_3() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let project = project();
    let output = ota(
        &[
            "bundle",
            "push",
            project.path().join("dist").to_str().unwrap(),
            "--app",
            "shop",
            "--version",
            "1.0.0",
            "--storage",
            "s3://bundles/apps",
            "--s3-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--s3-path-style",
            "--storage-timeout",
            "3",
        ],
        &[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SKSKSKSK")],
    );
    failed_with(&output, 3, "s3 storage");
}

// ---------------------------------------------------------------------------------------------
// A one-file change in a 3,000-file bundle: bytes uploaded and bytes a device downloads
// ---------------------------------------------------------------------------------------------

/// A web build of `files` files: index.html, distinct JavaScript chunks of 0.5 to 24 KB and a
/// few incompressible images.
fn big_web_build(root: &Path, files: usize) {
    write(
        root,
        "index.html",
        b"<!doctype html><script type=module src=assets/main.js></script>",
    );
    write(root, "assets/main.js", b"CapacitorUpdater.notifyAppReady();");
    for i in 2..files {
        if i % 50 == 0 {
            write(
                root,
                &format!("assets/img/picture-{i:04}.png"),
                &support::noise(2_000 + i * 3, i as u64),
            );
        } else {
            let mut chunk = format!("// chunk {i}\n").into_bytes();
            chunk.extend(support::javascript(500 + (i * 37) % 24_000));
            write(root, &format!("assets/chunk-{i:04}.js"), &chunk);
        }
    }
}

/// Every object of a folder storage: key → size.
fn storage_listing(root: &Path) -> HashMap<String, u64> {
    fn walk(root: &Path, dir: &Path, out: &mut HashMap<String, u64>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let key = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                out.insert(key, entry.metadata().unwrap().len());
            }
        }
    }
    let mut out = HashMap::new();
    walk(root, root, &mut out);
    out
}

/// The operator's two steps for a bundle pushed as files: the sync (zip rebuilt from the
/// files), then the Brotli variants. Returns the manifest devices get.
fn operator_sync(
    store: &Arc<dyn ObjectStore>,
    bundle: &Bundle,
) -> Vec<ota_operator::core::snapshot::ManifestFile> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let prefix = object_store::path::Path::ROOT;
        let synced = sync::sync_bundle(SyncRequest {
            source: &BundleSourceRef::Manifest(bundle.spec.source.manifest_key.clone().unwrap()),
            expected_sha256: &bundle.spec.source.sha256,
            store,
            prefix: &prefix,
            limits: &SyncLimits::default(),
            http: &reqwest::Client::new(),
        })
        .await
        .unwrap();
        let variants = sync::compress_variants(store, &prefix, &synced.sha256)
            .await
            .unwrap();
        synced.with_variants(variants).manifest
    })
}

/// The manifest as the update server lists it in an offer (filesystem storage: its own URLs).
fn served_manifest(files: &[ota_operator::core::snapshot::ManifestFile]) -> String {
    let app = ota_operator::core::snapshot::AppView {
        namespace: "default".to_owned(),
        name: "shop".to_owned(),
        app_id: "com.example.shop".to_owned(),
        platforms: vec![ota_operator::api::app::Platform::Ios],
        default_channel: None,
        expose_metadata: false,
        key_id: None,
        channels: Default::default(),
        device_overrides: HashMap::new(),
        bundle_versions: Default::default(),
        outcome_retention: ota_operator::core::rollout::OUTCOME_RETENTION_MARGIN,
        rate_limits: Default::default(),
    };
    let urls = ota_operator::storage::StorageUrls::server("https://ota.example.com");
    ota_operator::protocol::encode::manifest_json(&app, files, &urls)
        .expect("a manifest")
        .get()
        .to_owned()
}

#[test]
fn a_one_file_change_in_a_3000_file_bundle_uploads_and_downloads_about_that_file_and_the_manifest() {
    const FILES: usize = 3_000;
    let project = tempfile::tempdir().unwrap();
    let dist = project.path().join("dist");
    big_web_build(&dist, FILES);
    let storage = tempfile::tempdir().unwrap();
    let store = local_store(storage.path());
    let push = |version: &str| {
        let output = ota(
            &[
                "bundle",
                "push",
                dist.to_str().unwrap(),
                "--app",
                "shop",
                "--version",
                version,
                "--storage",
                storage.path().to_str().unwrap(),
            ],
            &[],
        );
        succeeded(&output);
        let bundle: Bundle = serde_json::from_value(documents(&stdout(&output))[0].clone()).unwrap();
        (output, bundle)
    };
    let (_, first) = push("1.0.0");
    let old_manifest = operator_sync(&store, &first);
    assert_eq!(old_manifest.len(), FILES);

    // One file changes.
    let changed = "assets/chunk-1234.js";
    let mut content = std::fs::read(dist.join(changed)).unwrap();
    content.extend_from_slice(b"\nexport const hotfix = 1;\n");
    write(&dist, changed, &content);
    let before = storage_listing(storage.path());
    let (output, second) = push("1.0.1");
    let after = storage_listing(storage.path());
    let uploaded: u64 = after
        .iter()
        .filter(|(key, size)| before.get(*key) != Some(size))
        .map(|(_, size)| size)
        .sum();
    assert_eq!(
        uploaded,
        uploaded_bytes(&output),
        "the listing and the push agree"
    );
    let stored_manifest = after[second.spec.source.manifest_key.as_deref().unwrap()];

    // The operator syncs it; a device on 1.0.0 downloads the files whose hash it lacks.
    let new_manifest = operator_sync(&store, &second);
    let owned: std::collections::HashSet<&str> =
        old_manifest.iter().map(|file| file.file_hash.as_str()).collect();
    let downloaded_files: Vec<&ota_operator::core::snapshot::ManifestFile> = new_manifest
        .iter()
        .filter(|file| !owned.contains(file.file_hash.as_str()))
        .collect();
    assert_eq!(downloaded_files.len(), 1, "{downloaded_files:?}");
    assert_eq!(downloaded_files[0].file_name, format!("{changed}.br"));
    let compressed_file = storage_listing(storage.path())[&downloaded_files[0].key];
    let served = served_manifest(&new_manifest).len() as u64;
    let downloaded = compressed_file + served;

    let upload_target = compressed_file + stored_manifest;
    let download_target = compressed_file + served;
    eprintln!(
        "one-file change in {FILES} files: changed file {} bytes raw, {compressed_file} Brotli; \
         manifest {stored_manifest} bytes stored, {served} served; uploaded {uploaded} bytes = \
         {:.3} x (file compressed + stored manifest); device downloads {downloaded} bytes = {:.3} x \
         (file compressed + served manifest)",
        content.len(),
        uploaded as f64 / upload_target as f64,
        downloaded as f64 / download_target as f64,
    );
    // Uploaded: the file's Brotli form (the one devices download) and the manifest.
    assert_eq!(uploaded, compressed_file + stored_manifest);
    assert!(
        uploaded * 10 <= upload_target * 11,
        "{uploaded} > 1.1 x {upload_target}"
    );
}
