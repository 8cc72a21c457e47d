//! Test support: the real Kubernetes API server (tests/apiserver/apiserver.sh), a client for
//! it, the operator's CRDs installed, and a fresh namespace per test.
#![allow(dead_code)] // each test binary uses its own part of the support module

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};
use tokio::sync::OnceCell;

pub mod controller;
pub mod exporter;
pub mod helm;
pub mod load;
pub mod private_postgres;
pub mod private_s3;
pub mod recording_proxy;
pub mod standalone;

/// The field manager the tests apply with.
pub const TEST_MANAGER: &str = "ota-tests";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The values of `keys`: from the environment when the test runner (tests/run.sh) started the
/// server (all of them must then be set), otherwise from the `KEY=VALUE` lines `script start`
/// prints (the server is then left running for the next test binary; `script stop` stops it).
/// Panics, with the reason, when the server cannot be built or started: these tests never pass
/// by skipping.
pub fn started_by(script: &str, keys: &[&str]) -> HashMap<String, String> {
    let from_env: HashMap<String, String> = keys
        .iter()
        .filter_map(|key| {
            std::env::var(key)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| ((*key).to_owned(), v))
        })
        .collect();
    if from_env.contains_key(keys[0]) {
        for key in keys {
            assert!(
                from_env.contains_key(*key),
                "{} is set but {key} is not: set all of {keys:?} or none",
                keys[0]
            );
        }
        return from_env;
    }
    let script = repo_root().join(script);
    let output = Command::new(&script)
        .arg("start")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the test server could not be started by {}:\n{}{}",
        script.display(),
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    keys.iter()
        .map(|key| {
            let prefix = format!("{key}=");
            let value = stdout
                .lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("{} printed no {key} line:\n{stdout}", script.display()));
            ((*key).to_owned(), value.to_owned())
        })
        .collect()
}

fn started_by_one(script: &str, key: &str) -> String {
    started_by(script, &[key])
        .remove(key)
        .expect("started_by returns every key")
}

/// The kubeconfig of the test API server (tests/apiserver/apiserver.sh).
pub fn kubeconfig_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        PathBuf::from(started_by_one(
            "tests/apiserver/apiserver.sh",
            "OTA_TEST_KUBECONFIG",
        ))
    })
}

/// A new, empty database on the test PostgreSQL server, named `<prefix>_<unique>`; its URL.
pub async fn fresh_postgres_database(prefix: &str) -> String {
    use sqlx::{Connection, Executor, postgres::PgConnection};
    let server = postgres_url();
    let name = format!("{prefix}_{}_{}", std::process::id(), fastrand::u32(..));
    let mut connection = PgConnection::connect(server).await.expect("PostgreSQL answers");
    connection
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("a fresh database");
    let (base, query) = server
        .split_once('?')
        .map_or((server, None), |(b, q)| (b, Some(q)));
    let (root, _) = base
        .rsplit_once('/')
        .expect("the PostgreSQL URL names a database");
    match query {
        Some(query) => format!("{root}/{name}?{query}"),
        None => format!("{root}/{name}"),
    }
}

/// The URL of the test PostgreSQL server's database `ota_test` (tests/postgres/postgres.sh).
pub fn postgres_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| started_by_one("tests/postgres/postgres.sh", "OTA_TEST_POSTGRES_URL"))
}

/// A new client for the test API server (one per test: a client belongs to its runtime).
pub async fn client() -> Client {
    ota_operator::telemetry::install_crypto_provider();
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read the test kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the test kubeconfig {} is unusable: {e}", path.display()));
    Client::try_from(config).expect("a client for the test API server")
}

/// The CRDs checked in under crds/, parsed.
pub fn checked_in_crds() -> Vec<CustomResourceDefinition> {
    let dir = repo_root().join("crds");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("a readable CRD file");
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{} is not a CRD: {e}", path.display()))
        })
        .collect()
}

/// Applies every CRD of crds/ with server-side apply and waits until each is Established.
pub async fn install_crds(client: &Client) -> Vec<String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(TEST_MANAGER).force();
    let mut names = Vec::new();
    for crd in checked_in_crds() {
        let name = crd.metadata.name.clone().expect("a CRD name");
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("the API server refused the CRD {name}: {e}"));
        names.push(name);
    }
    for name in &names {
        let established = await_condition(api.clone(), name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .unwrap_or_else(|_| panic!("the CRD {name} did not become Established within 30 s"))
            .unwrap_or_else(|e| panic!("watching the CRD {name} failed: {e}"));
    }
    names
}

/// A client for a server where the operator's CRDs are installed (once per test binary).
pub async fn client_with_crds() -> Client {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            install_crds(&client().await).await;
        })
        .await;
    client().await
}

/// A namespace name no other test uses. The test API server runs without the NamespaceLifecycle
/// admission plugin, so objects go into any valid namespace name without a Namespace object: a
/// fresh name is a fresh namespace.
pub fn unique_namespace(prefix: &str) -> String {
    unique_name(prefix, '-')
}

/// A name no other test uses: `prefix` with the process id, the time and a counter, joined by
/// `separator` (`-` for Kubernetes names, `_` for database names).
pub fn unique_name(prefix: &str, separator: char) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                separator
            }
        })
        .take(30)
        .collect();
    let prefix = prefix.trim_matches(separator);
    format!(
        "{prefix}{separator}{}{separator}{nanos:x}{separator}{n}",
        std::process::id()
    )
}

/// The YAML documents of a file, as JSON values.
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    documents.into_iter().filter(|doc| !doc.is_null()).collect()
}

/// The message an example of `examples/invalid/` states on its `# expect-error: ` line.
pub fn expected_error(file: &Path, text: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix("# expect-error: "))
        .unwrap_or_else(|| panic!("{} has no '# expect-error: ' line", file.display()))
        .trim()
        .to_owned()
}

/// The YAML files under a folder of the repository, recursively, sorted, minus `skip_dir`.
pub fn yaml_files(dir: &str, skip_dir: Option<&str>) -> Vec<PathBuf> {
    fn walk(dir: &Path, skip: Option<&Path>, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                if Some(path.as_path()) != skip {
                    walk(&path, skip, out);
                }
            } else if path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
                out.push(path);
            }
        }
    }
    let root = repo_root().join(dir);
    let skip = skip_dir.map(|s| root.join(s));
    let mut files = Vec::new();
    walk(&root, skip.as_deref(), &mut files);
    files.sort();
    files
}

/// The API of one of the operator's kinds, by its `kind`, in a namespace.
pub fn dynamic_api(client: &Client, namespace: &str, kind: &str) -> kube::Api<kube::api::DynamicObject> {
    use kube::core::ApiResource;
    use ota_operator::api::{App, Bundle, Channel, Rollout};
    let resource = match kind {
        "App" => ApiResource::erase::<App>(&()),
        "Channel" => ApiResource::erase::<Channel>(&()),
        "Bundle" => ApiResource::erase::<Bundle>(&()),
        "Rollout" => ApiResource::erase::<Rollout>(&()),
        other => panic!("{other} is not a kind of the operator"),
    };
    kube::Api::namespaced_with(client.clone(), namespace, &resource)
}

/// The `kind` and `metadata.name` of a document.
pub fn kind_and_name(doc: &serde_json::Value) -> (String, String) {
    let kind = doc["kind"].as_str().expect("a document with a kind").to_owned();
    let name = doc["metadata"]["name"]
        .as_str()
        .expect("a document with metadata.name")
        .to_owned();
    (kind, name)
}

/// Applies one document with server-side apply in `namespace`.
pub async fn apply_document(
    client: &Client,
    namespace: &str,
    doc: &serde_json::Value,
) -> Result<kube::api::DynamicObject, kube::Error> {
    let (kind, name) = kind_and_name(doc);
    dynamic_api(client, namespace, &kind)
        .patch(&name, &PatchParams::apply(TEST_MANAGER), &Patch::Apply(doc))
        .await
}

/// Applies every document of every YAML file under a folder of the repository into `namespace`,
/// panicking with the file when one is refused.
pub async fn apply_folder(client: &Client, namespace: &str, folder: &str) {
    for file in yaml_files(folder, None) {
        for doc in yaml_documents(&file) {
            apply_document(client, namespace, &doc)
                .await
                .unwrap_or_else(|e| panic!("{} does not apply: {e}", file.display()));
        }
    }
}

/// Checks that every field of `expected` is in `actual` with the same value (the server may add
/// defaults and metadata, but must not drop or change what was applied). Returns the JSON path
/// of the first difference.
pub fn contains_all(
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    path: &str,
) -> Result<(), String> {
    use serde_json::Value;
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            want.iter().try_for_each(|(key, value)| match got.get(key) {
                Some(found) => contains_all(value, found, &format!("{path}.{key}")),
                None => Err(format!("{path}.{key} is missing")),
            })
        }
        (Value::Array(want), Value::Array(got)) if want.len() == got.len() => want
            .iter()
            .zip(got)
            .enumerate()
            .try_for_each(|(i, (w, g))| contains_all(w, g, &format!("{path}[{i}]"))),
        (Value::Number(want), Value::Number(got)) if want.as_f64() == got.as_f64() => Ok(()),
        (want, got) if want == got => Ok(()),
        (want, got) => Err(format!("{path}: applied {want}, read back {got}")),
    }
}

/// The variables of the test S3 server (tests/s3/s3.sh), in the order `started_by` checks them.
pub const S3_KEYS: [&str; 4] = [
    "OTA_TEST_S3_ENDPOINT",
    "OTA_TEST_S3_ACCESS_KEY",
    "OTA_TEST_S3_SECRET_KEY",
    "OTA_TEST_S3_BUCKET",
];

/// The test S3 server's endpoint, keys and bucket (`OTA_TEST_S3_*`), started once per test
/// binary unless the environment names one.
pub fn s3_env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| started_by("tests/s3/s3.sh", &S3_KEYS))
}

/// The lower-case hex sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Incompressible bytes (xorshift), deterministic per seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Compressible text that looks like a JS bundle (big enough to be stored Brotli-compressed).
pub fn javascript(len: usize) -> Vec<u8> {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < len {
        text.push_str(&format!("export function f{i}(a, b) {{ return a * {i} + b; }}\n"));
        i += 1;
    }
    text.truncate(len);
    text.into_bytes()
}

/// Copies a folder of YAML (an example) for a test, leaving out the state a server left in it
/// (`storage/`, `.ota/`).
pub fn copy_example_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "storage" || name == ".ota" {
            continue;
        }
        if entry.path().is_dir() {
            copy_example_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// A port free on 127.0.0.1 a moment ago (for a child process that takes its address as a
/// flag).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
