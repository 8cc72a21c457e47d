//! Deleting a Bundle frees its storage: two bundles that share files are synced for real into a
//! folder, into the real S3 server (`tests/s3/s3.sh`), into a GCS emulator (fake-gcs-server,
//! `tests/gcs/gcs.sh`) and into an Azure Blob emulator (Azurite, `tests/azure/azure.sh`), each
//! started here unless its `OTA_TEST_*` variables are set (never skipped). The deletion is
//! decided by `core::bundle_lifecycle::deletion_decision` from the manifests read back from
//! storage, and `sync::remove_objects` removes what only the deleted bundle referenced. The other
//! bundle's zip, manifest and files stay, and still download (through presigned URLs on the cloud
//! stores).

mod emulators;
mod support;

use support::{javascript, noise, sha256};

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{Read, Write},
    path::{Path as FsPath, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig, aws::AmazonS3Builder, path::Path};
use ota_operator::{
    api::{
        Bundle, Channel,
        app::{FilesystemStorage, S3Storage, StorageSpec},
        common::SecretReference,
    },
    core::{
        bundle_lifecycle::{
            DeletionDecision, StoredBundle, SyncFacts, SyncOutcome, bundle_status_after_sync,
            deletion_decision,
        },
        snapshot::ManifestFile,
    },
    storage::{
        self, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, Credentials, OpenedStorage, StorageUrls, UrlMode,
    },
    sync::{
        self, BundleSourceRef, RemoveError, SyncLimits, SyncRequest, SyncedBundle, remove_objects,
        stored_file_keys,
    },
};
use serde_json::json;
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

use support::s3_env;

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    format!("apps/{test}-{}-{nanos}/", std::process::id())
}

fn spec(filesystem: Option<FilesystemStorage>, s3: Option<S3Storage>, prefix: &str) -> StorageSpec {
    StorageSpec {
        filesystem,
        s3,
        gcs: None,
        azure: None,
        prefix: Some(prefix.to_owned()),
        public_base_url: None,
        presigned_url_ttl: "1h".to_owned(),
    }
}

fn s3_spec(prefix: &str) -> StorageSpec {
    let env = s3_env();
    spec(
        None,
        Some(S3Storage {
            bucket: env["OTA_TEST_S3_BUCKET"].clone(),
            region: "us-east-1".to_owned(),
            endpoint: Some(env["OTA_TEST_S3_ENDPOINT"].clone()),
            force_path_style: true,
            credentials_secret_ref: Some(SecretReference {
                name: "bundle-storage".to_owned(),
            }),
        }),
        prefix,
    )
}

fn s3_credentials() -> Credentials {
    let env = s3_env();
    Credentials::from_map(BTreeMap::from([
        (
            AWS_ACCESS_KEY_ID.to_owned(),
            env["OTA_TEST_S3_ACCESS_KEY"].clone(),
        ),
        (
            AWS_SECRET_ACCESS_KEY.to_owned(),
            env["OTA_TEST_S3_SECRET_KEY"].clone(),
        ),
    ]))
}

// ---------------------------------------------------------------------------------------------
// Two bundles that share files
// ---------------------------------------------------------------------------------------------

struct TestZip {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sha256: String,
}

/// A zip of `files` (name → content).
fn zip_of(files: &BTreeMap<&str, Vec<u8>>) -> TestZip {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("bundle.zip");
    let mut zip = ZipWriter::new(File::create(&path).expect("a zip file"));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, content) in files {
        zip.start_file(*name, options).expect("an entry");
        zip.write_all(content).expect("entry bytes");
    }
    zip.finish().expect("the zip");
    let mut bytes = Vec::new();
    File::open(&path)
        .expect("the zip")
        .read_to_end(&mut bytes)
        .expect("read");
    TestZip {
        sha256: sha256(&bytes),
        _dir: dir,
        path,
    }
}

/// Version 1.0.0 and 1.1.0 of an app: the same big JS file and vendor asset, each with its own
/// index.html and one asset of its own.
fn two_versions() -> (TestZip, TestZip) {
    let shared_js = javascript(64 * 1024);
    let shared_vendor = noise(16 * 1024, 99);
    let old = BTreeMap::from([
        ("index.html", b"<!doctype html><title>1.0.0</title>".to_vec()),
        ("assets/app.js", shared_js.clone()),
        ("assets/vendor.bin", shared_vendor.clone()),
        ("assets/old-only.bin", noise(12 * 1024, 1)),
    ]);
    let new = BTreeMap::from([
        ("index.html", b"<!doctype html><title>1.1.0</title>".to_vec()),
        ("assets/app.js", shared_js),
        ("assets/vendor.bin", shared_vendor),
        ("assets/new-only.bin", noise(12 * 1024, 2)),
    ]);
    (zip_of(&old), zip_of(&new))
}

/// Both steps of a sync, as the controller runs them: the bundle, then its Brotli variants.
async fn sync_into(storage: &OpenedStorage, zip: &TestZip) -> SyncedBundle {
    let synced = sync::sync_bundle(SyncRequest {
        source: &BundleSourceRef::File(zip.path.clone()),
        expected_sha256: &zip.sha256,
        store: &storage.store,
        prefix: &storage.prefix,
        limits: &SyncLimits::default(),
        http: &reqwest::Client::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("the sync failed: {e}"));
    let variants = sync::compress_variants(&storage.store, &storage.prefix, &synced.sha256)
        .await
        .unwrap_or_else(|e| panic!("the Brotli variants failed: {e}"));
    synced.with_variants(variants)
}

/// The Bundle as the controller would have written it after `synced`.
fn bundle_object(name: &str, version: &str, synced: &SyncedBundle) -> Bundle {
    let mut bundle: Bundle = serde_json::from_value(json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle",
        "metadata": {"name": name, "namespace": "shop-ns", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"appRef": "shop", "version": version,
                 "source": {"storageKey": synced.zip_key, "sha256": synced.sha256}},
    }))
    .expect("a Bundle");
    let plan = bundle_status_after_sync(&bundle, &SyncOutcome::Synced(SyncFacts::from(synced)), None, 0);
    bundle.status = Some(plan.into_status(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    bundle
}

fn channel_on(bundle: &str) -> Channel {
    serde_json::from_value(json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Channel",
        "metadata": {"name": "production", "namespace": "shop-ns"},
        "spec": {"appRef": "shop", "bundleRef": bundle},
    }))
    .expect("a Channel")
}

async fn listing(storage: &OpenedStorage) -> BTreeSet<String> {
    let prefix = format!("{}/", storage.prefix);
    storage
        .store
        .list(Some(&storage.prefix))
        .map_ok(|meta| {
            meta.location
                .to_string()
                .strip_prefix(&prefix)
                .expect("under the prefix")
                .to_owned()
        })
        .try_collect()
        .await
        .expect("a listing")
}

/// Every object a synced bundle has in storage: its zip, both manifests, each file's raw form
/// and its Brotli variant when the manifest names one.
fn layout(synced: &SyncedBundle) -> BTreeSet<String> {
    synced
        .manifest
        .iter()
        .flat_map(|f| [f.key.clone(), f.key.trim_end_matches(".br").to_owned()])
        .chain([
            synced.zip_key.clone(),
            synced.manifest_key.clone(),
            sync::manifest_key(&synced.sha256),
        ])
        .collect()
}

fn decoded(file: &ManifestFile, bytes: &[u8]) -> Vec<u8> {
    if file.file_name.ends_with(".br") {
        let mut out = Vec::new();
        brotli::Decompressor::new(bytes, 4096)
            .read_to_end(&mut out)
            .expect("valid Brotli");
        out
    } else {
        bytes.to_vec()
    }
}

/// Syncs both versions, checks that a deletion of 1.0.0 is held while a Channel uses it, then
/// moves the Channel to 1.1.0, deletes 1.0.0 and checks what is left. Returns the new version's
/// sync, whose objects must all still be there.
async fn delete_the_old_version(storage: &OpenedStorage) -> SyncedBundle {
    let (old_zip, new_zip) = two_versions();
    let old = sync_into(storage, &old_zip).await;
    let new = sync_into(storage, &new_zip).await;
    assert_eq!(
        new.reused_files, 2,
        "app.js and vendor.bin are stored once and shared"
    );
    let shared: BTreeSet<String> = layout(&old).intersection(&layout(&new)).cloned().collect();
    assert_eq!(
        shared.len(),
        3,
        "app.js raw and its variant, vendor.bin: {shared:?}"
    );
    assert_eq!(listing(storage).await, &layout(&old) | &layout(&new));

    let old_bundle = bundle_object("shop-1.0.0", "1.0.0", &old);
    let new_bundle = bundle_object("shop-1.1.0", "1.1.0", &new);
    let files = stored_file_keys(
        &storage.store,
        &storage.prefix,
        [old.sha256.as_str(), new.sha256.as_str()],
    )
    .await
    .expect("both manifests read back");
    let decide = |channels: &[Channel]| {
        deletion_decision(
            StoredBundle {
                bundle: &old_bundle,
                file_keys: files.get(&old.sha256).map(Vec::as_slice),
            },
            &[StoredBundle {
                bundle: &new_bundle,
                file_keys: files.get(&new.sha256).map(Vec::as_slice),
            }],
            channels,
            &[],
        )
    };

    // In use: held, nothing removed.
    let DeletionDecision::Hold { users, .. } = decide(&[channel_on("shop-1.0.0")]) else {
        panic!("a bundle a Channel uses is held")
    };
    assert_eq!(users, ["Channel/production"]);

    // Free: only what 1.0.0 alone referenced goes.
    let DeletionDecision::Remove { keys } = decide(&[channel_on("shop-1.1.0")]) else {
        panic!("an unused bundle is removed")
    };
    let only_old: BTreeSet<String> = layout(&old).difference(&layout(&new)).cloned().collect();
    let keys_set: BTreeSet<String> = keys.iter().cloned().collect();
    assert!(
        keys_set.is_superset(&only_old),
        "{keys:?} lacks some of {only_old:?}"
    );
    // The other keys listed are the missing forms of its own files (never made): nothing else.
    let stored = listing(storage).await;
    for extra in keys_set.difference(&only_old) {
        assert!(
            !stored.contains(extra),
            "{extra} is stored and shared, yet listed"
        );
    }
    assert_eq!(
        only_old.len(),
        5,
        "zip, both manifests, index.html and old-only.bin: {only_old:?}"
    );
    assert_eq!(
        remove_objects(&storage.store, &storage.prefix, &keys)
            .await
            .expect("removed"),
        keys.len()
    );
    assert_eq!(listing(storage).await, layout(&new));
    // Again (a retried finalizer): nothing left to do, and no error.
    remove_objects(&storage.store, &storage.prefix, &keys)
        .await
        .expect("removing again is fine");
    assert_eq!(listing(storage).await, layout(&new));

    // The remaining bundle is whole: its manifest reads back and every file has its content.
    let manifest = sync::read_manifest(&storage.store, &storage.prefix, &new.manifest_key)
        .await
        .expect("the manifest of 1.1.0");
    assert_eq!(manifest, new.manifest);
    for file in &manifest {
        let path = sync::object_path(&storage.prefix, &file.key).expect("a key");
        let bytes = storage
            .store
            .get(&path)
            .await
            .unwrap_or_else(|e| panic!("{} is gone: {e}", file.key))
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(
            sha256(&decoded(file, &bytes)),
            file.file_hash,
            "{}",
            file.file_name
        );
    }
    new
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_bundle_on_the_filesystem_frees_only_its_own_objects() {
    let base = tempfile::tempdir().expect("a temporary folder");
    let spec = spec(
        Some(FilesystemStorage {
            path: "bundles".to_owned(),
            persistent_volume_claim: None,
        }),
        None,
        "apps/com.example.shop",
    );
    let storage = storage::open(&spec, base.path(), &Credentials::none()).expect("open");
    let new = delete_the_old_version(&storage).await;
    // The server's /files route reads these very files.
    let root = base.path().join("bundles/apps/com.example.shop");
    assert!(root.join(&new.zip_key).is_file());
    for file in &new.manifest {
        assert!(root.join(&file.key).is_file(), "{}", file.key);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_bundle_on_s3_frees_only_its_own_objects_and_the_rest_still_downloads() {
    ota_operator::telemetry::install_crypto_provider();
    let prefix = unique_prefix("removal");
    let spec = s3_spec(&prefix);
    let storage = storage::open(&spec, FsPath::new("/nonexistent"), &s3_credentials()).expect("open");
    let new = delete_the_old_version(&storage).await;

    assert_the_rest_downloads(&spec, &storage, &new).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_bundle_on_gcs_frees_only_its_own_objects_and_the_rest_still_downloads() {
    ota_operator::telemetry::install_crypto_provider();
    let spec = emulators::gcs_spec(&unique_prefix("gcs-removal"));
    let storage =
        storage::open(&spec, FsPath::new("/nonexistent"), &emulators::gcs_credentials()).expect("open");
    let new = delete_the_old_version(&storage).await;
    assert_the_rest_downloads(&spec, &storage, &new).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_bundle_on_azure_frees_only_its_own_objects_and_the_rest_still_downloads() {
    ota_operator::telemetry::install_crypto_provider();
    let spec = emulators::azure_spec(&unique_prefix("azure-removal"));
    let storage = storage::open(
        &spec,
        FsPath::new("/nonexistent"),
        &emulators::azure_credentials(),
    )
    .expect("open");
    let new = delete_the_old_version(&storage).await;
    assert_the_rest_downloads(&spec, &storage, &new).await;
}

/// The remaining bundle is served: presigned URLs of its zip and of every file download the
/// exact content with a plain GET, as a device does.
async fn assert_the_rest_downloads(spec: &StorageSpec, storage: &OpenedStorage, new: &SyncedBundle) {
    // Served: presigned URLs of the zip and every file download the exact content.
    let urls = StorageUrls::new(spec, storage, "http://update-server.invalid").expect("URLs");
    assert_eq!(urls.mode(), UrlMode::Presigned);
    let get = |key: String| {
        let urls = urls.clone();
        async move {
            let url = urls.presigned_url(&key).await.expect("a presigned URL");
            let response = reqwest::get(&url).await.expect("GET");
            assert_eq!(response.status().as_u16(), 200, "{key}");
            response.bytes().await.expect("a body").to_vec()
        }
    };
    assert_eq!(sha256(&get(new.zip_key.clone()).await), new.sha256);
    for file in &new.manifest {
        let body = get(file.key.clone()).await;
        assert_eq!(
            sha256(&decoded(file, &body)),
            file.file_hash,
            "{}",
            file.file_name
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_storage_is_a_transient_error_naming_the_key() {
    // A port nothing listens on, and no retries, so the test does not wait out a backoff.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_bucket_name("bundles")
            .with_region("us-east-1")
            .with_access_key_id("AK")
            .with_secret_access_key("SKSKSKSK")
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 0,
                retry_timeout: Duration::from_secs(1),
                ..RetryConfig::default()
            })
            .build()
            .expect("an S3 client"),
    );
    let key = format!("files/{}", sha256(b"x"));
    let error = remove_objects(&store, &Path::from("apps/shop"), std::slice::from_ref(&key))
        .await
        .expect_err("unreachable");
    assert!(matches!(error, RemoveError::Storage { .. }), "{error}");
    assert!(!error.is_terminal());
    assert!(error.to_string().contains(&format!("apps/shop/{key}")), "{error}");
    let error = stored_file_keys(&store, &Path::from("apps/shop"), [sha256(b"y").as_str()])
        .await
        .expect_err("unreachable");
    assert!(matches!(error, RemoveError::Manifest { .. }), "{error}");
    assert!(!error.is_terminal());
}
