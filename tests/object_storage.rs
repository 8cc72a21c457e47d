//! Object storage (`ota_operator::storage`) against real servers: `rclone serve s3` on
//! 127.0.0.1 (tests/s3/s3.sh), which checks SigV4 signatures in headers and in presigned URLs;
//! Azurite (tests/azure/azure.sh), which checks Shared Key and SAS signatures; and
//! fake-gcs-server (tests/gcs/gcs.sh), which checks no credentials. The test starts each through
//! its script unless its `OTA_TEST_*` variables are set; it never skips, and fails with the reason
//! when a server cannot be started.
//!
//! Covered for real: opening each backend from a `StorageSpec` (custom http endpoints, keys from
//! `Credentials::from_map`), the crate's bundle sync into it (every object read back, a second
//! sync uploading nothing), presigned URLs downloaded with a plain HTTP GET as a device does (the
//! exact bytes and the download headers), refusal of a wrong key by S3 and Azurite (without the
//! key in any error), tampered and expired signatures refused (S3 and Azurite), public base
//! URLs, and the filesystem backend end to end. GCS signatures cannot be checked by the emulator,
//! so the test checks them itself against the throwaway service-account key.
//!
//! Construction and credential errors of GCS and Azure need no server.

mod emulators;
mod support;

use support::{javascript, noise, sha256};

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{Read, Write},
    path::{Path as FsPath, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use object_store::{ObjectStoreExt, path::Path};
use ota_operator::{
    api::{
        app::{AzureStorage, FilesystemStorage, GcsStorage, Platform, S3Storage, StorageSpec},
        common::SecretReference,
    },
    core::snapshot::{AppView, BundleView, ManifestFile},
    protocol::encode::BundleUrls,
    server::storage::AppStorages,
    storage::{
        self, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_ACCOUNT_KEY, Backend, Credentials,
        GOOGLE_SERVICE_ACCOUNT_KEY, OpenedStorage, StorageError, StorageUrls, UrlMode,
    },
    sync::{self, BundleSourceRef, SyncError, SyncLimits, SyncRequest, SyncedBundle},
};
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

// ---------------------------------------------------------------------------------------------
// The S3 server
// ---------------------------------------------------------------------------------------------

const APP_ID: &str = "com.example.shop";

/// Connection settings of the test S3 server.
struct S3Server {
    endpoint: String,
    access_key: String,
    secret_key: String,
    bucket: String,
}

fn s3_server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let env = support::s3_env();
        let take = |key: &str| env[key].clone();
        S3Server {
            endpoint: take("OTA_TEST_S3_ENDPOINT"),
            access_key: take("OTA_TEST_S3_ACCESS_KEY"),
            secret_key: take("OTA_TEST_S3_SECRET_KEY"),
            bucket: take("OTA_TEST_S3_BUCKET"),
        }
    })
}

/// A key prefix no other test uses, so tests share the bucket safely.
fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("apps/{test}-{}-{nanos}-{n}/", std::process::id())
}

fn base_spec() -> StorageSpec {
    StorageSpec::default()
}

/// S3 storage on the test server, path-style, keys in a Secret.
fn s3_spec(prefix: &str) -> StorageSpec {
    let server = s3_server();
    StorageSpec {
        s3: Some(S3Storage {
            bucket: server.bucket.clone(),
            region: "us-east-1".to_owned(),
            endpoint: Some(server.endpoint.clone()),
            force_path_style: true,
            credentials_secret_ref: Some(SecretReference {
                name: "bundle-storage".to_owned(),
            }),
        }),
        prefix: Some(prefix.to_owned()),
        ..base_spec()
    }
}

fn credentials(access_key: &str, secret_key: &str) -> Credentials {
    Credentials::from_map(BTreeMap::from([
        (AWS_ACCESS_KEY_ID.to_owned(), access_key.to_owned()),
        (AWS_SECRET_ACCESS_KEY.to_owned(), secret_key.to_owned()),
    ]))
}

fn good_credentials() -> Credentials {
    let server = s3_server();
    credentials(&server.access_key, &server.secret_key)
}

fn open_s3(prefix: &str, credentials: &Credentials) -> OpenedStorage {
    storage::open(&s3_spec(prefix), FsPath::new("/nonexistent"), credentials)
        .unwrap_or_else(|e| panic!("cannot open the test S3 storage: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Bundles
// ---------------------------------------------------------------------------------------------

/// A bundle zip in a temporary folder: index.html at the root, a big JS file, a binary asset.
struct TestBundle {
    _dir: tempfile::TempDir,
    path: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
    /// File name in the zip → content.
    files: BTreeMap<String, Vec<u8>>,
}

fn test_bundle(seed: u64) -> TestBundle {
    test_bundle_with_asset(seed, 20 * 1024)
}

/// Above the sync's part size (5 MiB), the zip and its incompressible asset are uploaded in parts
/// (S3 multipart upload, Azure blocks).
const OVER_THE_PART_SIZE: usize = 6 * 1024 * 1024;

/// [`test_bundle`] with a binary asset of `asset_len` incompressible bytes.
fn test_bundle_with_asset(seed: u64, asset_len: usize) -> TestBundle {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("bundle.zip");
    let files = BTreeMap::from([
        (
            "index.html".to_owned(),
            format!("<!doctype html><script src=\"assets/app.js\"></script><!-- {seed} -->").into_bytes(),
        ),
        ("assets/app.js".to_owned(), javascript(64 * 1024)),
        ("assets/logo.bin".to_owned(), noise(asset_len, seed)),
    ]);
    let mut zip = ZipWriter::new(File::create(&path).expect("a zip file"));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, content) in &files {
        zip.start_file(name.as_str(), options).expect("a zip entry");
        zip.write_all(content).expect("zip bytes");
    }
    zip.finish().expect("a finished zip");
    let bytes = std::fs::read(&path).expect("the zip");
    TestBundle {
        sha256: sha256(&bytes),
        _dir: dir,
        path,
        bytes,
        files,
    }
}

/// Both steps of a sync, as the controller runs them: the bundle, then its Brotli variants.
async fn sync_into(storage: &OpenedStorage, bundle: &TestBundle) -> Result<SyncedBundle, SyncError> {
    let synced = sync::sync_bundle(SyncRequest {
        source: &BundleSourceRef::File(bundle.path.clone()),
        expected_sha256: &bundle.sha256,
        store: &storage.store,
        prefix: &storage.prefix,
        limits: &SyncLimits::default(),
        http: &reqwest::Client::new(),
    })
    .await?;
    let variants = sync::compress_variants(&storage.store, &storage.prefix, &synced.sha256).await?;
    Ok(synced.with_variants(variants))
}

fn app_view() -> AppView {
    AppView {
        namespace: "shop-ns".to_owned(),
        name: "shop".to_owned(),
        app_id: APP_ID.to_owned(),
        platforms: vec![Platform::Ios, Platform::Android],
        default_channel: None,
        expose_metadata: false,
        key_id: None,
        channels: BTreeMap::new(),
        device_overrides: HashMap::new(),
        bundle_versions: Default::default(),
        outcome_retention: ota_operator::core::rollout::OUTCOME_RETENTION_MARGIN,
        rate_limits: Default::default(),
    }
}

fn bundle_view(synced: &SyncedBundle) -> BundleView {
    BundleView {
        name: "shop-1.0.0".to_owned(),
        version: "1.0.0".to_owned(),
        semver: semver::Version::new(1, 0, 0),
        sha256: synced.sha256.clone(),
        zip_key: synced.zip_key.clone(),
        manifest: Some(synced.manifest.clone().into()),
        encryption: None,
        min_native_version: None,
        link: None,
        comment: None,
    }
}

fn brotli_decompress(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_end(&mut out)
        .expect("valid Brotli");
    out
}

/// The content a manifest entry's bytes decode to.
fn decoded(file: &ManifestFile, bytes: &[u8]) -> Vec<u8> {
    if file.file_name.ends_with(".br") {
        brotli_decompress(bytes)
    } else {
        bytes.to_vec()
    }
}

async fn get(url: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a response body").to_vec();
    (status, body)
}

fn init() {
    ota_operator::telemetry::install_crypto_provider();
}

/// Syncs `bundle` into `storage` as the controller does, then reads every object back through
/// the store's API: the zip, each file (raw and its Brotli variant), both manifests, exactly the
/// sync module's layout under the prefix, and a second sync that finds everything and uploads
/// nothing.
async fn sync_and_check_every_object(storage: &OpenedStorage, bundle: &TestBundle) -> SyncedBundle {
    let synced = sync_into(storage, bundle).await.expect("the sync succeeds");
    assert_eq!(synced.sha256, bundle.sha256);
    assert_eq!(synced.file_count, 3);
    assert_eq!(synced.uploaded_files, 3);

    // Every object, read back through the storage API.
    let read = |key: String| {
        let store = storage.store.clone();
        let path = sync::object_path(&storage.prefix, &key).expect("a clean key");
        async move {
            store
                .get(&path)
                .await
                .unwrap_or_else(|e| panic!("{path} is not in the bucket: {e}"))
                .bytes()
                .await
                .expect("the object's bytes")
                .to_vec()
        }
    };
    assert_eq!(read(format!("zips/{}.zip", bundle.sha256)).await, bundle.bytes);
    for file in &synced.manifest {
        let name = file.file_name.trim_end_matches(".br");
        let content = decoded(file, &read(file.key.clone()).await);
        assert_eq!(content, bundle.files[name], "{}", file.file_name);
        assert_eq!(file.file_hash, sha256(&content));
    }
    assert!(
        synced.manifest.iter().any(|f| f.file_name == "assets/app.js.br"),
        "the big JS file is stored compressed: {:?}",
        synced.manifest
    );
    let manifest = sync::read_manifest(&storage.store, &storage.prefix, &synced.manifest_key)
        .await
        .expect("the manifest reads back");
    assert_eq!(manifest, synced.manifest);

    // Exactly the layout of the sync module, under the prefix.
    let mut listed: Vec<String> =
        futures::TryStreamExt::try_collect::<Vec<_>>(storage.store.list(Some(&storage.prefix)))
            .await
            .expect("a listing")
            .into_iter()
            .map(|meta| meta.location.to_string())
            .collect();
    listed.sort();
    // Each file raw, and its Brotli variant when the manifest names one; the zip; both manifests.
    let mut expected: Vec<String> = synced
        .manifest
        .iter()
        .flat_map(|f| [f.key.clone(), f.key.trim_end_matches(".br").to_owned()])
        .chain([
            synced.zip_key.clone(),
            synced.manifest_key.clone(),
            sync::manifest_key(&synced.sha256),
        ])
        .map(|key| format!("{}/{key}", storage.prefix))
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(listed, expected);

    // A second sync finds everything already there (HEAD requests) and uploads nothing.
    let again = sync_into(storage, bundle)
        .await
        .expect("the second sync succeeds");
    assert_eq!((again.uploaded_files, again.reused_files), (0, 3));
    assert_eq!(again.manifest, synced.manifest);
    synced
}

/// What a device does with the URLs an update check answers: a plain GET, without credentials,
/// of the zip URL and of every manifest file's URL, each giving the exact bytes. The zip comes
/// with the headers the server's own /files route sends.
async fn assert_devices_download(
    urls: &StorageUrls,
    app: &AppView,
    view: &BundleView,
    bundle: &TestBundle,
    synced: &SyncedBundle,
) {
    // A plain GET, no credentials: the exact bytes.
    // Stored with the headers the server's own /files route sends: devices download from the
    // bucket directly, and a CDN in front of it must neither expire nor re-encode the bytes.
    let zip_url = urls.zip_url(app, view);
    let headers = reqwest::get(&zip_url).await.expect("GET").headers().clone();
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some(ota_operator::storage::IMMUTABLE_CACHE_CONTROL)
    );
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    let (status, body) = get(&zip_url).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sha256(&body), bundle.sha256);
    assert_eq!(body, bundle.bytes);

    // Every manifest file through its presigned URL.
    for file in &synced.manifest {
        let url = urls.file_url(app, file);
        let (status, body) = get(&url).await;
        assert_eq!(
            status,
            200,
            "{}: {}",
            file.file_name,
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            sha256(&decoded(file, &body)),
            file.file_hash,
            "{}",
            file.file_name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// S3, for real
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bundle_sync_stores_every_object_in_s3() {
    init();
    let prefix = unique_prefix("sync");
    let storage = open_s3(&prefix, &good_credentials());
    assert_eq!(storage.backend, Backend::S3);
    assert_eq!(storage.prefix.as_ref(), prefix.trim_end_matches('/'));
    storage.check().await.expect("the server accepts the keys");

    let bundle = test_bundle(1);
    sync_and_check_every_object(&storage, &bundle).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_key_is_refused_by_the_server_and_never_shown() {
    init();
    let server = s3_server();
    let prefix = unique_prefix("wrong-key");
    let wrong_secret = "WrongSecretKey0123456789abcdefWRONG";
    let storage = open_s3(&prefix, &credentials(&server.access_key, wrong_secret));
    let shown = |text: &str| {
        assert!(!text.contains(wrong_secret), "the wrong secret leaked: {text}");
        assert!(
            !text.contains(&server.secret_key),
            "the real secret leaked: {text}"
        );
    };
    shown(&format!("{storage:?} {:?}", storage.store));

    let error = storage
        .check()
        .await
        .expect_err("the server must refuse a wrong secret");
    let text = error.to_string();
    assert!(error.is_refusal(), "not a refusal: {text}");
    assert!(
        text.starts_with("s3 storage refused the request (list):"),
        "{text}"
    );
    assert!(
        text.contains("SignatureDoesNotMatch"),
        "the server's reason is missing: {text}"
    );
    shown(&text);
    shown(&format!("{error:?}"));

    let bundle = test_bundle(2);
    let error = sync_into(&storage, &bundle)
        .await
        .expect_err("the sync must fail");
    let text = error.to_string();
    assert!(matches!(error, SyncError::Storage { .. }), "{text}");
    assert!(!error.is_terminal(), "a storage refusal can be retried: {text}");
    // The sync's first request is a HEAD: the refusal has a status and no body.
    assert!(text.contains("403 Forbidden"), "{text}");
    shown(&text);
    shown(&format!("{error:?}"));

    // An unknown access key is refused too.
    let storage = open_s3(&prefix, &credentials("AKUNKNOWN0000000000", &server.secret_key));
    let error = storage
        .check()
        .await
        .expect_err("an unknown access key is refused");
    assert!(error.is_refusal(), "{error}");
    shown(&error.to_string());

    // Nothing was written with the wrong keys.
    let good = open_s3(&prefix, &good_credentials());
    let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(good.store.list(Some(&good.prefix)))
        .await
        .expect("a listing");
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_urls_download_the_exact_bytes_and_tampering_is_refused() {
    init();
    let server = s3_server();
    let prefix = unique_prefix("presign");
    let spec = s3_spec(&prefix);
    let storage = open_s3(&prefix, &good_credentials());
    let bundle = test_bundle(3);
    let synced = sync_into(&storage, &bundle).await.expect("the sync succeeds");

    let urls = StorageUrls::new(&spec, &storage, "http://update-server.invalid").expect("URLs");
    assert_eq!(urls.mode(), UrlMode::Presigned);
    assert_eq!(urls.presigned_url_ttl(), Some(Duration::from_secs(3600)));
    let app = app_view();
    let view = bundle_view(&synced);

    let started = Instant::now();
    let zip_url = urls.zip_url(&app, &view);
    let first_sign = started.elapsed();
    let expected_start = format!(
        "{}/{}/{}zips/{}.zip?",
        server.endpoint, server.bucket, prefix, bundle.sha256
    );
    assert!(zip_url.starts_with(&expected_start), "{zip_url}");
    for part in [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Expires=3600",
        "X-Amz-Signature=",
    ] {
        assert!(zip_url.contains(part), "{part} missing in {zip_url}");
    }
    assert!(!zip_url.contains(&server.secret_key), "{zip_url}");
    // Cached: the same URL again, without signing.
    let started = Instant::now();
    assert_eq!(urls.zip_url(&app, &view), zip_url);
    let cached = started.elapsed();
    eprintln!("presigning: first {first_sign:?}, cached {cached:?}");
    assert_eq!(urls.cached(), 1);

    assert_devices_download(&urls, &app, &view, &bundle, &synced).await;

    // A tampered signature, another key under the same signature, and no signature: refused.
    let mut tampered = zip_url.clone();
    let last = tampered.pop().expect("a non-empty signature");
    tampered.push(if last == '0' { '1' } else { '0' });
    let (status, body) = get(&tampered).await;
    assert_eq!(
        status,
        403,
        "a tampered signature was accepted: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("SignatureDoesNotMatch"));
    let manifest_file = &synced.manifest[0];
    let other_key = zip_url.replacen(&format!("zips/{}.zip", bundle.sha256), &manifest_file.key, 1);
    assert_ne!(other_key, zip_url);
    let (status, _) = get(&other_key).await;
    assert_eq!(status, 403, "a signature was accepted for another key");
    let unsigned = &zip_url[..zip_url.find('?').expect("a query")];
    let (status, _) = get(unsigned).await;
    assert!(matches!(status, 400 | 403), "an unsigned GET answered {status}");

    // The async path (for a redirecting /files route) gives the cached URL.
    assert_eq!(urls.presigned_url(&view.zip_key).await.expect("a URL"), zip_url);

    // An expired URL is refused: a 1 s TTL, used after 2 s.
    let short = StorageUrls::new(
        &StorageSpec {
            presigned_url_ttl: "1s".to_owned(),
            ..spec.clone()
        },
        &storage,
        "http://update-server.invalid",
    )
    .expect("URLs");
    let short_url = short.zip_url(&app, &view);
    assert!(short_url.contains("X-Amz-Expires=1&"), "{short_url}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = get(&short_url).await;
    // rclone answers 400 AccessDenied for an expired URL (Amazon S3 answers 403 AccessDenied).
    let body = String::from_utf8_lossy(&body);
    assert!(
        matches!(status, 400 | 403) && body.contains("AccessDenied"),
        "an expired URL was not refused: {status} {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_presigns_ahead_so_the_hot_path_only_reads_the_cache() {
    init();
    let prefix = unique_prefix("prepare");
    let spec = s3_spec(&prefix);
    let storage = open_s3(&prefix, &good_credentials());
    let bundle = test_bundle(4);
    let synced = sync_into(&storage, &bundle).await.expect("the sync succeeds");
    let urls = StorageUrls::new(&spec, &storage, "http://update-server.invalid").expect("URLs");
    let keys: Vec<&str> = std::iter::once(synced.zip_key.as_str())
        .chain(synced.manifest.iter().map(|f| f.key.as_str()))
        .collect();
    assert_eq!(urls.prepare(keys.iter().copied()).await.expect("signed"), 4);
    assert_eq!(urls.cached(), 4);
    assert_eq!(urls.prepare(keys.iter().copied()).await.expect("signed"), 0);
    let app = app_view();
    let view = bundle_view(&synced);
    let started = Instant::now();
    let rounds = 10_000u32;
    for _ in 0..rounds {
        let url = urls.zip_url(&app, &view);
        assert!(url.contains("X-Amz-Signature="));
    }
    eprintln!(
        "cached presigned zip URL: {:?} per call",
        started.elapsed() / rounds
    );
    let (status, body) = get(&urls.zip_url(&app, &view)).await;
    assert_eq!(status, 200);
    assert_eq!(body, bundle.bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_base_url_gives_cdn_urls() {
    init();
    let prefix = unique_prefix("public");
    let spec = StorageSpec {
        public_base_url: Some("https://cdn.example.com/ota/".to_owned()),
        ..s3_spec(&prefix)
    };
    let storage = storage::open(&spec, FsPath::new("/"), &good_credentials()).expect("open");
    let urls = StorageUrls::new(&spec, &storage, "http://update-server.invalid").expect("URLs");
    assert_eq!(urls.mode(), UrlMode::PublicBaseUrl);
    let bundle = test_bundle(5);
    let synced = sync_into(&storage, &bundle).await.expect("the sync succeeds");
    let app = app_view();
    assert_eq!(
        urls.zip_url(&app, &bundle_view(&synced)),
        format!("https://cdn.example.com/ota/{prefix}zips/{}.zip", bundle.sha256)
    );
    let file = &synced.manifest[0];
    assert_eq!(
        urls.file_url(&app, file),
        format!("https://cdn.example.com/ota/{prefix}{}", file.key)
    );
    // The CDN URL names the very object the sync stored.
    let key = urls
        .file_url(&app, file)
        .strip_prefix("https://cdn.example.com/ota/")
        .expect("the base")
        .to_owned();
    let stored = storage.store.head(&Path::from(key.as_str())).await;
    assert!(stored.is_ok(), "{key}: {stored:?}");
}

// ---------------------------------------------------------------------------------------------
// Filesystem
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_filesystem_backend_round_trips_and_is_served_by_the_server() {
    init();
    let base = tempfile::tempdir().expect("a temporary folder");
    let spec = StorageSpec {
        filesystem: Some(FilesystemStorage {
            path: "bundles".to_owned(),
            persistent_volume_claim: None,
        }),
        prefix: Some("/apps/com.example.shop/".to_owned()),
        ..base_spec()
    };
    let storage = storage::open(&spec, base.path(), &Credentials::none()).expect("open");
    assert_eq!(storage.backend, Backend::Filesystem);
    assert!(storage.signer.is_none());
    assert!(base.path().join("bundles").is_dir(), "the folder is created");
    storage.check().await.expect("an empty folder is fine");

    let bundle = test_bundle(6);
    let synced = sync_into(&storage, &bundle).await.expect("the sync succeeds");
    // The objects are files where the update server's /files route looks for them.
    let app: ota_operator::api::App = serde_json::from_value(serde_json::json!({
        "apiVersion": "ota.dev/v1alpha1",
        "kind": "App",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"appId": APP_ID, "platforms": ["ios"], "storage": spec},
    }))
    .expect("an App");
    let storages = AppStorages::new(base.path(), Credentials::none(), "https://updates.example.com/");
    let served = storages.of(&app).expect("the App's storage");
    let served_root = served
        .local_root
        .clone()
        .expect("filesystem storage is served from a folder");
    assert_eq!(served_root, base.path().join("bundles/apps/com.example.shop"));
    assert!(
        std::sync::Arc::ptr_eq(&served, &storages.of(&app).expect("again")),
        "an unchanged spec reuses the opened storage"
    );
    let zip_file = served_root.join(&synced.zip_key);
    assert_eq!(std::fs::read(&zip_file).expect("the zip file"), bundle.bytes);
    for file in &synced.manifest {
        let bytes = std::fs::read(served_root.join(&file.key)).expect("a file");
        assert_eq!(sha256(&decoded(file, &bytes)), file.file_hash);
    }

    let urls = StorageUrls::new(&spec, &storage, "https://updates.example.com/").expect("URLs");
    assert_eq!(urls.mode(), UrlMode::Server);
    let app = app_view();
    assert_eq!(
        urls.zip_url(&app, &bundle_view(&synced)),
        format!(
            "https://updates.example.com/files/{APP_ID}/zips/{}.zip",
            bundle.sha256
        )
    );
    assert!(matches!(
        urls.presigned_url(&synced.zip_key).await,
        Err(StorageError::NotPresigned)
    ));
}

// ---------------------------------------------------------------------------------------------
// GCS and Azure: construction and credential errors (no server needed)
// ---------------------------------------------------------------------------------------------

fn gcs_spec(secret: Option<&str>) -> StorageSpec {
    StorageSpec {
        gcs: Some(GcsStorage {
            bucket: "ota-bundles".to_owned(),
            endpoint: None,
            credentials_secret_ref: secret.map(|name| SecretReference {
                name: name.to_owned(),
            }),
        }),
        prefix: Some("apps/shop".to_owned()),
        ..base_spec()
    }
}

fn azure_spec(secret: Option<&str>, endpoint: Option<&str>) -> StorageSpec {
    StorageSpec {
        azure: Some(AzureStorage {
            account: "otabundles".to_owned(),
            container: "bundles".to_owned(),
            endpoint: endpoint.map(str::to_owned),
            credentials_secret_ref: secret.map(|name| SecretReference {
                name: name.to_owned(),
            }),
        }),
        prefix: Some("apps/shop".to_owned()),
        ..base_spec()
    }
}

fn one(key: &str, value: &str) -> Credentials {
    Credentials::from_map(BTreeMap::from([(key.to_owned(), value.to_owned())]))
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_construction_and_credential_errors() {
    init();
    let error = storage::open(&gcs_spec(Some("gcs-key")), FsPath::new("/"), &Credentials::none())
        .expect_err("a named Secret without the key is an error");
    assert_eq!(
        error.to_string(),
        "gcs storage: the credentials Secret gcs-key lack GOOGLE_SERVICE_ACCOUNT_KEY; set it there"
    );

    let not_json = "this-is-not-json-but-a-secret-value-1234";
    let error = storage::open(
        &gcs_spec(Some("gcs-key")),
        FsPath::new("/"),
        &one(GOOGLE_SERVICE_ACCOUNT_KEY, not_json),
    )
    .expect_err("a key that is not JSON");
    let text = error.to_string();
    assert!(
        text.starts_with(
            "gcs storage: GOOGLE_SERVICE_ACCOUNT_KEY is invalid: not a JSON service-account key"
        ),
        "{text}"
    );
    assert!(!text.contains("secret-value"), "{text}");

    let no_private_key = r#"{"type": "service_account", "client_email": "x@y.iam.gserviceaccount.com", "private_key_id": "topsecretid"}"#;
    let error = storage::open(
        &gcs_spec(Some("gcs-key")),
        FsPath::new("/"),
        &one(GOOGLE_SERVICE_ACCOUNT_KEY, no_private_key),
    )
    .expect_err("a key without private_key");
    assert!(
        error.to_string().contains("needs a string field private_key"),
        "{error}"
    );
    assert!(!error.to_string().contains("topsecretid"), "{error}");

    let mut spec = gcs_spec(None);
    spec.gcs.as_mut().expect("gcs").endpoint = Some("ftp://fake-gcs".to_owned());
    let error = storage::open(&spec, FsPath::new("/"), &Credentials::none()).expect_err("a bad endpoint");
    assert!(error.to_string().contains("must be an http(s) URL"), "{error}");

    let bad_pem = r#"{"client_email": "x@y.iam.gserviceaccount.com", "private_key": "-----BEGIN PRIVATE KEY-----\nTm90QUtleVRoaXNJc1NlY3JldEJ5dGVz\n-----END PRIVATE KEY-----\n", "private_key_id": "k1"}"#;
    let error = storage::open(
        &gcs_spec(Some("gcs-key")),
        FsPath::new("/"),
        &one(GOOGLE_SERVICE_ACCOUNT_KEY, bad_pem),
    )
    .expect_err("a key that is not an RSA key");
    let text = format!("{error} {error:?}");
    assert!(
        matches!(
            error,
            StorageError::Config {
                backend: Backend::Gcs,
                ..
            }
        ),
        "{text}"
    );
    assert!(!text.contains("Tm90QUtleVRoaXNJc1NlY3JldEJ5dGVz"), "{text}");

    // A well-formed key: the store opens, and URLs are signed locally (RSA), without a server.
    let pem = emulators::rsa_private_key_pem();
    let key = serde_json::json!({
        "type": "service_account",
        "client_email": "ota@example-project.iam.gserviceaccount.com",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
    })
    .to_string();
    let spec = gcs_spec(Some("gcs-key"));
    let storage =
        storage::open(&spec, FsPath::new("/"), &one(GOOGLE_SERVICE_ACCOUNT_KEY, &key)).expect("open");
    assert_eq!(storage.backend, Backend::Gcs);
    let pem_body = pem.lines().nth(1).expect("a PEM body line");
    let debug = format!("{storage:?} {:?}", storage.store);
    assert!(!debug.contains(pem_body), "{debug}");
    let urls = StorageUrls::new(&spec, &storage, "http://update-server.invalid").expect("URLs");
    let url = urls.url(APP_ID, "zips/abc.zip");
    assert!(
        url.starts_with("https://storage.googleapis.com/ota-bundles/apps/shop/zips/abc.zip?"),
        "{url}"
    );
    assert!(url.contains("X-Goog-Signature="), "{url}");

    // No Secret and no key: workload identity (the metadata server), so opening works and the
    // first URL, which would need the metadata server, falls back to the server's URL at once.
    let spec = gcs_spec(None);
    let storage = storage::open(&spec, FsPath::new("/"), &Credentials::none()).expect("open");
    let urls = StorageUrls::new(&spec, &storage, "http://update-server.invalid").expect("URLs");
    let started = Instant::now();
    let url = urls.url(APP_ID, "zips/abc.zip");
    assert!(started.elapsed() < Duration::from_secs(1), "the hot path waited");
    assert_eq!(
        url,
        format!("http://update-server.invalid/files/{APP_ID}/zips/abc.zip")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_construction_and_credential_errors() {
    init();
    let error = storage::open(
        &azure_spec(Some("az-key"), None),
        FsPath::new("/"),
        &Credentials::none(),
    )
    .expect_err("a named Secret without the key is an error");
    assert_eq!(
        error.to_string(),
        "azure storage: the credentials Secret az-key lack AZURE_STORAGE_ACCOUNT_KEY; set it there"
    );

    let bad = "not base64 but a secret!";
    let error = storage::open(
        &azure_spec(Some("az-key"), None),
        FsPath::new("/"),
        &one(AZURE_STORAGE_ACCOUNT_KEY, bad),
    )
    .expect_err("a key that is not base64");
    assert!(
        error.to_string().contains("AZURE_STORAGE_ACCOUNT_KEY is invalid"),
        "{error}"
    );
    assert!(!error.to_string().contains("a secret"), "{error}");

    let error = storage::open(
        &azure_spec(Some("az-key"), Some("ftp://azurite")),
        FsPath::new("/"),
        &one(AZURE_STORAGE_ACCOUNT_KEY, "c2VjcmV0"),
    )
    .expect_err("a bad endpoint");
    assert!(error.to_string().contains("must be an http(s) URL"), "{error}");

    // A well-formed key: the store opens, and SAS URLs are signed locally (HMAC).
    let key_bytes = noise(64, 7);
    let key = {
        // Standard base64, written out to need no extra crate.
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in key_bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    for (endpoint, expected) in [
        (
            None,
            "https://otabundles.blob.core.windows.net/bundles/apps/shop/zips/abc.zip?",
        ),
        (
            Some("http://127.0.0.1:10000/otabundles"),
            "http://127.0.0.1:10000/otabundles/bundles/apps/shop/zips/abc.zip?",
        ),
    ] {
        let spec = azure_spec(Some("az-key"), endpoint);
        let storage =
            storage::open(&spec, FsPath::new("/"), &one(AZURE_STORAGE_ACCOUNT_KEY, &key)).expect("open");
        assert_eq!(storage.backend, Backend::Azure);
        let debug = format!("{storage:?} {:?}", storage.store);
        assert!(!debug.contains(&key), "{debug}");
        let decoded_list = format!("{:?}", &key_bytes[..8]).trim_end_matches(']').to_owned();
        assert!(!debug.contains(&decoded_list), "the decoded key leaked: {debug}");
        let urls = StorageUrls::new(&spec, &storage, "http://update-server.invalid").expect("URLs");
        let url = urls.url(APP_ID, "zips/abc.zip");
        assert!(url.starts_with(expected), "{url}");
        assert!(url.contains("sig="), "{url}");
    }
}

// ---------------------------------------------------------------------------------------------
// GCS, on fake-gcs-server (which checks no credentials: see tests/emulators)
// ---------------------------------------------------------------------------------------------

fn open_gcs(prefix: &str) -> OpenedStorage {
    storage::open(
        &emulators::gcs_spec(prefix),
        FsPath::new("/nonexistent"),
        &emulators::gcs_credentials(),
    )
    .unwrap_or_else(|e| panic!("cannot open the test GCS storage: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_sync_stores_every_object_in_gcs() {
    init();
    let prefix = unique_prefix("gcs-sync");
    let storage = open_gcs(&prefix);
    assert_eq!(storage.backend, Backend::Gcs);
    storage.check().await.expect("the emulator answers a listing");
    sync_and_check_every_object(&storage, &test_bundle(11)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_signed_urls_name_the_endpoint_and_a_device_downloads_the_exact_bytes() {
    init();
    let server = emulators::gcs();
    let prefix = unique_prefix("gcs-presign");
    let spec = emulators::gcs_spec(&prefix);
    let storage = open_gcs(&prefix);
    let bundle = test_bundle(12);
    let synced = sync_into(&storage, &bundle).await.expect("the sync succeeds");

    let urls = StorageUrls::new(&spec, &storage, "http://update-server.invalid").expect("URLs");
    assert_eq!(urls.mode(), UrlMode::Presigned);
    let app = app_view();
    let view = bundle_view(&synced);
    let zip_url = urls.zip_url(&app, &view);
    let expected_start = format!(
        "{}/{}/{}zips/{}.zip?",
        server.endpoint, server.bucket, prefix, bundle.sha256
    );
    assert!(zip_url.starts_with(&expected_start), "{zip_url}");
    for part in [
        "X-Goog-Algorithm=GOOG4-RSA-SHA256",
        "X-Goog-Credential=ota%40example-project.iam.gserviceaccount.com%2F",
        "X-Goog-Expires=3600",
        "X-Goog-Signature=",
    ] {
        assert!(zip_url.contains(part), "{part} missing in {zip_url}");
    }
    // The emulator accepts any signature: check it here, as Google checks it. The signature
    // covers the object, so the same signature on another key fails.
    assert!(
        emulators::gcs_signature_verifies(&zip_url),
        "not a valid signature by the service-account key: {zip_url}"
    );
    let manifest_file = &synced.manifest[0];
    let other_key = zip_url.replacen(&format!("zips/{}.zip", bundle.sha256), &manifest_file.key, 1);
    assert!(!emulators::gcs_signature_verifies(&other_key), "{other_key}");
    assert!(emulators::gcs_signature_verifies(
        &urls.file_url(&app, manifest_file)
    ));
    assert_devices_download(&urls, &app, &view, &bundle, &synced).await;
}

// ---------------------------------------------------------------------------------------------
// Azure Blob Storage, on Azurite (which checks Shared Key and SAS signatures)
// ---------------------------------------------------------------------------------------------

fn open_azure(prefix: &str, credentials: &Credentials) -> OpenedStorage {
    storage::open(
        &emulators::azure_spec(prefix),
        FsPath::new("/nonexistent"),
        credentials,
    )
    .unwrap_or_else(|e| panic!("cannot open the test Azure storage: {e}"))
}

/// `url` with the first character of its query parameter `name` changed.
fn tampered(url: &str, name: &str) -> String {
    let at = url
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        + name.len()
        + 1;
    let mut out = url.to_owned();
    let replacement = if url[at..].starts_with('A') { "B" } else { "A" };
    out.replace_range(at..at + 1, replacement);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_sync_stores_every_object_in_azure() {
    init();
    let prefix = unique_prefix("azure-sync");
    let storage = open_azure(&prefix, &emulators::azure_credentials());
    assert_eq!(storage.backend, Backend::Azure);
    storage.check().await.expect("Azurite accepts the key");
    sync_and_check_every_object(&storage, &test_bundle(21)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_azure_key_is_refused_by_azurite_and_never_shown() {
    init();
    let server = emulators::azure();
    let prefix = unique_prefix("azure-wrong-key");
    // A well-formed key of the right length (64 bytes), but not the account's.
    let wrong_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(noise(64, 24))
    };
    assert_ne!(wrong_key, server.account_key);
    let storage = open_azure(&prefix, &one(AZURE_STORAGE_ACCOUNT_KEY, &wrong_key));
    let shown = |text: &str| {
        assert!(!text.contains(&wrong_key), "the wrong key leaked: {text}");
        assert!(!text.contains(&server.account_key), "the real key leaked: {text}");
    };
    shown(&format!("{storage:?} {:?}", storage.store));

    let error = storage
        .check()
        .await
        .expect_err("Azurite must refuse a wrong key");
    let text = error.to_string();
    assert!(error.is_refusal(), "not a refusal: {text}");
    assert!(
        text.starts_with("azure storage refused the request (list):"),
        "{text}"
    );
    shown(&text);
    shown(&format!("{error:?}"));

    let error = sync_into(&storage, &test_bundle(22))
        .await
        .expect_err("the sync must fail");
    let text = error.to_string();
    assert!(matches!(error, SyncError::Storage { .. }), "{text}");
    assert!(!error.is_terminal(), "a storage refusal can be retried: {text}");
    shown(&text);
    shown(&format!("{error:?}"));

    // Nothing was written with the wrong key.
    let good = open_azure(&prefix, &emulators::azure_credentials());
    let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(good.store.list(Some(&good.prefix)))
        .await
        .expect("a listing");
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_sas_urls_download_the_exact_bytes_and_tampering_or_expiry_is_refused() {
    init();
    let server = emulators::azure();
    let prefix = unique_prefix("azure-presign");
    let spec = emulators::azure_spec(&prefix);
    let storage = open_azure(&prefix, &emulators::azure_credentials());
    let bundle = test_bundle(23);
    let synced = sync_into(&storage, &bundle).await.expect("the sync succeeds");

    let urls = StorageUrls::new(&spec, &storage, "http://update-server.invalid").expect("URLs");
    assert_eq!(urls.mode(), UrlMode::Presigned);
    let app = app_view();
    let view = bundle_view(&synced);
    let zip_url = urls.zip_url(&app, &view);
    let expected_start = format!(
        "{}/{}/{}zips/{}.zip?",
        server.endpoint, server.container, prefix, bundle.sha256
    );
    assert!(zip_url.starts_with(&expected_start), "{zip_url}");
    for part in ["sp=r&", "sr=b&", "sig="] {
        assert!(zip_url.contains(part), "{part} missing in {zip_url}");
    }
    assert!(!zip_url.contains(&server.account_key), "{zip_url}");
    assert_devices_download(&urls, &app, &view, &bundle, &synced).await;

    // A tampered signature, the signature of one blob used for another, and no signature.
    let (status, body) = get(&tampered(&zip_url, "sig")).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "a tampered signature was accepted: {body}");
    assert!(
        body.contains("AuthenticationFailed") || body.contains("AuthorizationFailure"),
        "{body}"
    );
    let manifest_file = &synced.manifest[0];
    let other_blob = zip_url.replacen(&format!("zips/{}.zip", bundle.sha256), &manifest_file.key, 1);
    assert_ne!(other_blob, zip_url);
    let (status, _) = get(&other_blob).await;
    assert_eq!(status, 403, "a signature was accepted for another blob");
    let unsigned = &zip_url[..zip_url.find('?').expect("a query")];
    let (status, body) = get(unsigned).await;
    assert_ne!(status, 200, "an unsigned GET was answered");
    assert_ne!(body, bundle.bytes);

    // An expired URL is refused: a 2 s TTL (the expiry is written in whole seconds, so at
    // least 1 s of validity), used at once and after 3 s.
    let short = StorageUrls::new(
        &StorageSpec {
            presigned_url_ttl: "2s".to_owned(),
            ..spec.clone()
        },
        &storage,
        "http://update-server.invalid",
    )
    .expect("URLs");
    let short_url = short.zip_url(&app, &view);
    let (status, _) = get(&short_url).await;
    assert_eq!(status, 200, "the short-lived URL works while it is valid");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, body) = get(&short_url).await;
    assert_eq!(
        status,
        403,
        "an expired URL was not refused: {}",
        String::from_utf8_lossy(&body)
    );
}

// ---------------------------------------------------------------------------------------------
// Bundles over the part size, uploaded in parts
// ---------------------------------------------------------------------------------------------

/// Syncs a bundle whose zip and asset are over the part size, and checks every object and the
/// download a device makes. Not run on GCS: fake-gcs-server has no XML API multipart upload.
async fn a_bundle_over_the_part_size_round_trips(storage: &OpenedStorage, spec: &StorageSpec) {
    let bundle = test_bundle_with_asset(31, OVER_THE_PART_SIZE);
    assert!(bundle.bytes.len() > OVER_THE_PART_SIZE, "{}", bundle.bytes.len());
    let synced = sync_and_check_every_object(storage, &bundle).await;
    let urls = StorageUrls::new(spec, storage, "http://update-server.invalid").expect("URLs");
    assert_devices_download(&urls, &app_view(), &bundle_view(&synced), &bundle, &synced).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_over_the_part_size_goes_to_s3_in_parts() {
    init();
    let prefix = unique_prefix("s3-parts");
    a_bundle_over_the_part_size_round_trips(&open_s3(&prefix, &good_credentials()), &s3_spec(&prefix)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_over_the_part_size_goes_to_azure_in_blocks() {
    init();
    let prefix = unique_prefix("azure-parts");
    a_bundle_over_the_part_size_round_trips(
        &open_azure(&prefix, &emulators::azure_credentials()),
        &emulators::azure_spec(&prefix),
    )
    .await;
}
