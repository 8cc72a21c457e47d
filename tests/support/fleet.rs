//! A fleet of simulated devices speaking the Capgo plugin protocol to a real update server, and
//! the real `ota standalone` process they talk to (or standalone mode in this process, on a test
//! clock: [`InProcess`] runs a part of the system in this process, crashable).
//!
//! Each device does what the plugin (8.x, Android, auto-update) does on a check: `POST /updates`
//! with its info object; when offered a bundle other than the one it runs, it downloads the zip
//! from the offered `url`, verifies its sha256 against `checksum`, and reports `set` (it now runs
//! that version) or `update_fail` (the scenario says this device fails with this version: it
//! rolled back and keeps its version). Devices run concurrently over a few pooled HTTP/1
//! connections (async tasks, never a thread per device).
//!
//! Used by tests/fleet.rs (a few hundred devices) and benches/fleet.rs (100,000).
#![allow(dead_code)] // the test and the benchmark each use their own part

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use ota_operator::clock::TestClock;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The app id of the simulated app.
pub const APP_ID: &str = "com.example.fleet";
/// The native version every device runs.
pub const NATIVE_VERSION: &str = "1.0.0";
/// The plugin version the devices claim.
pub const PLUGIN_VERSION: &str = "8.51.14";

/// A bundle of the simulated app: its zip and what the Bundle YAML says of it.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// The Bundle's name.
    pub name: String,
    /// Its version (what devices receive and report).
    pub version: String,
    /// The zip.
    pub zip: Vec<u8>,
    /// Lower-case hex sha256 of the zip.
    pub sha256: String,
}

impl BundleFile {
    /// A small web app of this version, zipped (index.html at the root).
    pub fn new(name: &str, version: &str) -> BundleFile {
        let mut buffer = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut buffer);
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .last_modified_time(zip::DateTime::default());
            zip.start_file("index.html", options).expect("a zip entry");
            write!(
                zip,
                "<!doctype html><title>fleet {version}</title><script src=app.js></script>"
            )
            .expect("zip writes to memory");
            zip.start_file("app.js", options).expect("a zip entry");
            write!(
                zip,
                "window.CapacitorUpdater && CapacitorUpdater.notifyAppReady(); // {version}"
            )
            .expect("zip writes to memory");
            zip.finish().expect("a finished zip");
        }
        let zip = buffer.into_inner();
        BundleFile {
            name: name.to_owned(),
            version: version.to_owned(),
            sha256: hex::encode(Sha256::digest(&zip)),
            zip,
        }
    }
}

/// The stable bundle of every scenario.
pub fn stable_bundle() -> BundleFile {
    BundleFile::new("fleet-1.0.0", "1.0.0")
}

/// The candidate of every scenario.
pub fn candidate_bundle() -> BundleFile {
    BundleFile::new("fleet-1.1.0", "1.1.0")
}

/// Writes the App (filesystem storage), the public Android channel `production` serving
/// `stable`, the two Bundles (zips next to the YAML) and `rollout_yaml` into `dir`.
///
/// The App's rate limits are off: the simulated fleet sends everything from 127.0.0.1 as fast as
/// the server answers, which the per-client limit exists to stop.
pub fn write_world(dir: &Path, stable: &BundleFile, candidate: &BundleFile, rollout_yaml: &str) {
    let channel = format!(
        "apiVersion: ota.dev/v1alpha1\nkind: Channel\nmetadata: {{name: production}}\nspec:\n  appRef: fleet\n  \
         bundleRef: {}\n  public: true\n  android: true\n",
        stable.name
    );
    write_app_and_bundles(dir, &[stable, candidate], &channel);
    write_rollout(dir, rollout_yaml);
}

/// Writes `world.yaml` into `dir`: the App (filesystem storage, rate limits off, see
/// [`write_world`]), `extra_yaml` (documents of its own, or nothing), and the Bundles, their
/// zips next to it.
pub fn write_app_and_bundles(dir: &Path, bundles: &[&BundleFile], extra_yaml: &str) {
    std::fs::create_dir_all(dir.join("bundles")).expect("a bundles folder");
    let mut yaml = format!(
        "apiVersion: ota.dev/v1alpha1\nkind: App\nmetadata: {{name: fleet}}\nspec:\n  appId: {APP_ID}\n  \
         platforms: [android]\n  storage: {{filesystem: {{path: ./storage}}}}\n  \
         server: {{rateLimits: {{enabled: false}}}}\n"
    );
    if !extra_yaml.is_empty() {
        yaml.push_str("---\n");
        yaml.push_str(extra_yaml);
    }
    for bundle in bundles {
        let file = format!("bundles/{}.zip", bundle.name);
        std::fs::write(dir.join(&file), &bundle.zip).expect("a zip written");
        yaml.push_str(&format!(
            "---\napiVersion: ota.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: {}}}\nspec:\n  appRef: fleet\n  \
             version: \"{}\"\n  source: {{path: {file}, sha256: {}}}\n",
            bundle.name, bundle.version, bundle.sha256
        ));
    }
    std::fs::write(dir.join("world.yaml"), yaml).expect("world.yaml written");
}

/// Replaces the Rollout's YAML (a change the server picks up within its poll interval).
pub fn write_rollout(dir: &Path, rollout_yaml: &str) {
    // Written aside then renamed, so the server never reads half a file.
    let partial = dir.join(".rollout.yaml.partial");
    std::fs::write(&partial, rollout_yaml).expect("the rollout written");
    std::fs::rename(&partial, dir.join("rollout.yaml")).expect("the rollout renamed");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("a local address")
        .port()
}

/// A process of the real `ota` binary (so it can be killed like a crashed pod), logging to
/// `<log_dir>/<name>-<start>.txt`.
pub struct OtaProcess {
    child: Option<Child>,
    name: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Answers 200 once the process is ready.
    ready_url: String,
    log_dir: PathBuf,
    /// How many times it was started.
    starts: u32,
}

impl OtaProcess {
    /// Starts `ota ARGS` with `envs` added, and waits until `ready_url` answers 200.
    pub async fn start(
        name: &str,
        args: &[String],
        envs: &[(&str, &str)],
        ready_url: &str,
        log_dir: &Path,
    ) -> OtaProcess {
        let mut process = OtaProcess {
            child: None,
            name: name.to_owned(),
            args: args.to_vec(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ready_url: ready_url.to_owned(),
            log_dir: log_dir.to_owned(),
            starts: 0,
        };
        process.spawn().await;
        process
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.log_dir.join(format!("{}-{start}.txt", self.name))
    }

    /// Every log line of every start so far.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        std::fs::create_dir_all(&self.log_dir).expect("the log folder");
        let log = std::fs::File::create(self.log_path(self.starts)).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ota"))
            .args(["--log-format", "text"])
            .args(&self.args)
            .env("OTA_LOG", "info")
            .env("NO_COLOR", "1")
            // After the defaults, so a caller's OTA_LOG wins.
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("ota {} does not start: {e}", self.name));
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(&self.ready_url).send().await
                && response.status() == 200
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("ota {} exited with {status}:\n{}", self.name, self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "ota {} was not ready within 60 s:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process at once (SIGKILL: no shutdown, no flush), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process and starts it again with the same arguments.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for OtaProcess {
    fn drop(&mut self) {
        // Stop exactly the process this harness started.
        self.kill();
    }
}

/// A free port on 127.0.0.1, as an address.
pub fn free_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The real `ota standalone` serving a folder (polled every 100 ms), its device store the
/// default `DIR/.ota/devices.db`.
pub struct Standalone {
    process: OtaProcess,
    /// The folder it serves.
    pub dir: PathBuf,
    /// Its address (kept across restarts).
    pub address: SocketAddr,
}

impl Standalone {
    /// Starts `ota standalone DIR` and waits until it is ready.
    pub async fn start(dir: &Path, extra_args: &[&str]) -> Standalone {
        let address = free_address();
        let mut args: Vec<String> = ["standalone", "--poll-ms", "100", "--listen"]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        args.push(address.to_string());
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        args.push(dir.display().to_string());
        let process = OtaProcess::start(
            "standalone",
            &args,
            &[],
            &format!("http://{address}/readyz"),
            &dir.join(".ota"),
        )
        .await;
        Standalone {
            process,
            dir: dir.to_owned(),
            address,
        }
    }

    /// `http://<address>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The device store's URL.
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.dir.join(".ota/devices.db").display())
    }

    /// Every log line of every start so far.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the process again on the same folder, database and address.
    pub async fn restart(&mut self) {
        self.process.restart().await;
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// A device id in the UUID form the plugin sends, deterministic per (fleet seed, index).
pub fn device_id(seed: u32, index: usize) -> String {
    format!("{seed:08x}-0000-4000-8000-{index:012x}")
}

/// A number in 0..100 drawn from the device id, independent of the server's cohort hash (which
/// is salted): which devices fail with a bad candidate.
pub fn device_draw(device_id: &str) -> u32 {
    let digest = Sha256::digest(format!("fleet-failure/{device_id}"));
    (u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 100) as u32
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its device id.
    pub id: String,
    /// The bundle version it runs.
    pub version: String,
}

/// What one check of one device saw and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No update: the answer's `error` (`no_new_version_available`, ...).
    NoUpdate(String),
    /// Offered `version`; downloaded, verified and set.
    Set(String),
    /// Offered `version`; downloaded and verified, but the device failed with it
    /// (`update_fail` reported).
    Failed(String),
    /// Something a plugin would count as a failure of the server: an HTTP error, a checksum
    /// that does not match, an answer that is not JSON. The test fails on any.
    Broken(String),
}

impl Outcome {
    /// The version offered, if any.
    pub fn offered(&self) -> Option<&str> {
        match self {
            Outcome::Set(version) | Outcome::Failed(version) => Some(version),
            _ => None,
        }
    }
}

/// One check of every device.
#[derive(Debug, Clone)]
pub struct Round {
    /// When the round started.
    pub started: Instant,
    /// When the last device finished.
    pub finished: Instant,
    /// Per device (by index): the version it ran before the check, and the outcome.
    pub outcomes: Vec<(String, Outcome)>,
    /// Per device (by index): when the server acknowledged its `set` or `update_fail` report.
    pub reported_at: Vec<Option<Instant>>,
}

impl Round {
    /// The outcomes that broke the protocol, with their device index.
    pub fn broken(&self) -> Vec<(usize, String)> {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, (_, o))| match o {
                Outcome::Broken(why) => Some((i, why.clone())),
                _ => None,
            })
            .collect()
    }

    /// How many devices reported `set` of `version`, and `update_fail` of it.
    pub fn reports(&self, version: &str) -> (usize, usize) {
        let set = self
            .outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Set(version.to_owned()))
            .count();
        let failed = self
            .outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Failed(version.to_owned()))
            .count();
        (set, failed)
    }
}

/// Which devices fail with which version: `fails(device_id, version)`.
pub type FailurePlan = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// No device fails.
pub fn no_failures() -> FailurePlan {
    Arc::new(|_, _| false)
}

/// The devices whose draw is below `percent` fail with `version` (a deterministic share).
pub fn failing_share(version: &str, percent: u32) -> FailurePlan {
    let version = version.to_owned();
    Arc::new(move |device: &str, offered: &str| offered == version && device_draw(device) < percent)
}

/// N devices and the HTTP client they share.
pub struct Fleet {
    /// The devices, by index.
    pub devices: Vec<Device>,
    client: reqwest::Client,
    /// How many devices talk to the server at once (= the most connections open).
    pub concurrency: usize,
}

impl Fleet {
    /// `count` devices running `version`, at most `concurrency` of them checking at once.
    pub fn new(seed: u32, count: usize, version: &str, concurrency: usize) -> Fleet {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Fleet {
            devices: (0..count)
                .map(|i| Device {
                    id: device_id(seed, i),
                    version: version.to_owned(),
                })
                .collect(),
            client,
            concurrency,
        }
    }

    /// Every device checks once (concurrently), in a shuffled order so no part of the fleet is
    /// always first.
    pub async fn round(&mut self, base: &str, fails: &FailurePlan) -> Round {
        let indices: Vec<usize> = (0..self.devices.len()).collect();
        self.round_of(base, fails, indices).await
    }

    /// The devices at `indices` check once (concurrently); the others keep their state and
    /// have no outcome in the round (reported as `NoUpdate("skipped")`).
    pub async fn round_of(&mut self, base: &str, fails: &FailurePlan, mut indices: Vec<usize>) -> Round {
        let started = Instant::now();
        fastrand::shuffle(&mut indices);
        let mut outcomes: Vec<(String, Outcome)> = self
            .devices
            .iter()
            .map(|d| (d.version.clone(), Outcome::NoUpdate("skipped".to_owned())))
            .collect();
        let client = &self.client;
        let devices = &self.devices;
        let mut reported_at = vec![None; self.devices.len()];
        let results: Vec<(usize, Outcome, Option<Instant>)> = futures::stream::iter(indices)
            .map(|index| {
                let device = &devices[index];
                async move {
                    let outcome = check(client, base, device, fails.as_ref()).await;
                    let reported = matches!(outcome, Outcome::Set(_) | Outcome::Failed(_)).then(Instant::now);
                    (index, outcome, reported)
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (index, outcome, reported) in results {
            if let Outcome::Set(version) = &outcome {
                self.devices[index].version = version.clone();
            }
            outcomes[index].1 = outcome;
            reported_at[index] = reported;
        }
        Round {
            started,
            finished: Instant::now(),
            outcomes,
            reported_at,
        }
    }

    /// How many devices run each version.
    pub fn versions(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for device in &self.devices {
            *counts.entry(device.version.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The client the devices share (for probes of the same server).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// The info object a device sends (Android, plugin 8.51.14, production build).
pub fn info_object(device: &Device) -> Value {
    json!({
        "platform": "android",
        "device_id": device.id,
        "app_id": APP_ID,
        "custom_id": "",
        "version_build": NATIVE_VERSION,
        "version_code": "100",
        "version_os": "14",
        "version_name": device.version,
        "plugin_version": PLUGIN_VERSION,
        "is_emulator": false,
        "is_prod": true,
        "defaultChannel": "",
    })
}

/// `POST /updates` for `device`: the answer's JSON.
pub async fn ask(client: &reqwest::Client, base: &str, device: &Device) -> Result<Value, String> {
    let response = client
        .post(format!("{base}/updates"))
        .json(&info_object(device))
        .send()
        .await
        .map_err(|e| format!("POST /updates: {e}"))?;
    let status = response.status();
    if status != 200 {
        return Err(format!("POST /updates answered {status}"));
    }
    response
        .json()
        .await
        .map_err(|e| format!("POST /updates answered no JSON: {e}"))
}

async fn report(
    client: &reqwest::Client,
    base: &str,
    device: &Device,
    action: &str,
    version: &str,
) -> Result<(), String> {
    let mut event = info_object(device);
    event["action"] = json!(action);
    event["version_name"] = json!(version);
    event["old_version_name"] = json!(match action {
        "set" => device.version.as_str(),
        _ => "",
    });
    // 8.x sends its queued stats as a batch.
    let response = client
        .post(format!("{base}/stats"))
        .json(&json!([event]))
        .send()
        .await
        .map_err(|e| format!("POST /stats: {e}"))?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => Err(format!("POST /stats answered {status}")),
    }
}

/// One check of one device, as the plugin does it.
pub async fn check(
    client: &reqwest::Client,
    base: &str,
    device: &Device,
    fails: &(dyn Fn(&str, &str) -> bool + Send + Sync),
) -> Outcome {
    let answer = match ask(client, base, device).await {
        Ok(answer) => answer,
        Err(why) => return Outcome::Broken(why),
    };
    let offered = answer
        .get("version")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty());
    let Some(version) = offered.filter(|v| *v != device.version) else {
        return match answer.get("error").and_then(Value::as_str) {
            Some(error) => Outcome::NoUpdate(error.to_owned()),
            None if offered.is_some() => Outcome::NoUpdate("same version offered".to_owned()),
            None => Outcome::Broken(format!("neither an offer nor an error: {answer}")),
        };
    };
    if answer.get("error").is_some() || answer.get("kind").is_some() {
        // A refusal carrying the target version (e.g. a blocked major update): not an offer.
        let error = answer["error"].as_str().unwrap_or("refused");
        return Outcome::NoUpdate(error.to_owned());
    }
    let (Some(url), Some(checksum)) = (
        answer.get("url").and_then(Value::as_str),
        answer.get("checksum").and_then(Value::as_str),
    ) else {
        return Outcome::Broken(format!("an offer without url or checksum: {answer}"));
    };
    let zip = match client.get(url).send().await {
        Ok(response) if response.status() == 200 => match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return Outcome::Broken(format!("reading {url}: {e}")),
        },
        Ok(response) => return Outcome::Broken(format!("GET {url} answered {}", response.status())),
        Err(e) => return Outcome::Broken(format!("GET {url}: {e}")),
    };
    let computed = hex::encode(Sha256::digest(&zip));
    if computed != checksum {
        let _ = report(client, base, device, "checksum_fail", version).await;
        return Outcome::Broken(format!(
            "the zip of {version} has sha256 {computed}, the answer said {checksum}"
        ));
    }
    let (action, outcome) = match fails(&device.id, version) {
        true => ("update_fail", Outcome::Failed(version.to_owned())),
        false => ("set", Outcome::Set(version.to_owned())),
    };
    match report(client, base, device, action, version).await {
        Ok(()) => outcome,
        Err(why) => Outcome::Broken(why),
    }
}

/// The version the server offers `device` now, without acting on it (`None`: no update).
pub async fn offered(
    client: &reqwest::Client,
    base: &str,
    device: &Device,
) -> Result<Option<String>, String> {
    let answer = ask(client, base, device).await?;
    if answer.get("error").is_some() {
        return Ok(None);
    }
    Ok(answer
        .get("version")
        .and_then(Value::as_str)
        .filter(|v| *v != device.version)
        .map(str::to_owned))
}

/// Polls `check` every `every` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, every: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(every).await;
    }
}

/// A part of the system (standalone mode, the update server, the controller) run in this process
/// so that it shares a scenario's [`TestClock`]: each start runs on a runtime of its own on a
/// thread of its own, whose log lines it keeps, and [`InProcess::kill`] drops that runtime with
/// every task in it (no shutdown, no flush), as a crash would.
pub struct InProcess {
    /// What runs (in messages).
    name: String,
    /// The log filter of its lines.
    log_filter: String,
    logs: Arc<Mutex<Vec<u8>>>,
    running: Option<(std::thread::JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
}

impl InProcess {
    /// Nothing running yet; `log_filter` (a tracing filter) selects the lines it keeps.
    pub fn new(name: &str, log_filter: &str) -> InProcess {
        InProcess {
            name: name.to_owned(),
            log_filter: log_filter.to_owned(),
            logs: Arc::new(Mutex::new(Vec::new())),
            running: None,
        }
    }

    /// Runs the future `start` makes (on the new thread's runtime, so the clients it opens
    /// belong to that runtime) until it ends or [`InProcess::kill`], then waits until
    /// `ready_url` answers 200.
    pub async fn start<F, Fut>(&mut self, ready_url: &str, start: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let logs = Arc::clone(&self.logs);
        let filter = self.log_filter.clone();
        let name = self.name.clone();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // One thread runs every task of this start, so its log lines all land here.
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(move || SharedLog(Arc::clone(&logs)))
                .finish();
            let _logging = tracing::subscriber::set_default(subscriber);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                tokio::select! {
                    outcome = start() => {
                        if let Err(error) = outcome {
                            tracing::error!(%error, "{name} stopped");
                        }
                    }
                    _ = killed => {}
                }
            });
            // Drops every task of this start without letting it finish: a crash.
            runtime.shutdown_background();
        });
        self.running = Some((thread, kill));
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(ready_url).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                self.running
                    .as_ref()
                    .is_some_and(|(thread, _)| !thread.is_finished()),
                "{} stopped:\n{}",
                self.name,
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "{} was not ready within 60 s:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every log line of every start so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().expect("the log")).into_owned()
    }

    /// Stops it at once (its runtime dropped with every task: no shutdown, no flush).
    pub fn kill(&mut self) {
        if let Some((thread, kill)) = self.running.take() {
            let _ = kill.send(());
            thread.join().expect("the thread of an in-process part ends");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `ota standalone` run in this process ([`InProcess`]) on a [`TestClock`], so a scenario moves
/// time by hand.
pub struct InProcessStandalone {
    /// The folder it serves.
    pub dir: PathBuf,
    /// Its address (kept across restarts).
    pub address: SocketAddr,
    /// The clock it decides and stamps reports on.
    pub clock: TestClock,
    running: InProcess,
}

impl InProcessStandalone {
    /// Starts standalone mode on `dir` (polled every 50 ms) on a test clock standing at the
    /// system clock's now, and waits until it is ready.
    pub async fn start(dir: &Path) -> InProcessStandalone {
        let mut server = InProcessStandalone {
            dir: dir.to_owned(),
            address: free_address(),
            clock: TestClock::starting_now(),
            running: InProcess::new("standalone mode", "info"),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let options = ota_operator::standalone::Options {
            dir: self.dir.clone(),
            listen: self.address,
            public_url: None,
            database: None,
            poll_interval: Duration::from_millis(50),
            credentials: Default::default(),
            internal_listen: None,
            clock: Arc::new(self.clock.clone()),
            // The real providers, as `ota standalone` has them.
            metrics: None,
        };
        let ready = format!("{}/readyz", self.base());
        self.running
            .start(&ready, move || async move {
                ota_operator::standalone::run(options, std::future::pending())
                    .await
                    .map_err(|error| error.to_string())
            })
            .await;
    }

    /// `http://<address>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The device store's URL.
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.dir.join(".ota/devices.db").display())
    }

    /// Every log line of every start so far.
    pub fn logs(&self) -> String {
        self.running.logs()
    }

    /// Stops it at once (its runtime dropped with every task: no shutdown, no flush).
    pub fn kill(&mut self) {
        self.running.kill();
    }

    /// Kills it and starts it again on the same folder, database, address and clock.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

/// A log writer appending to a shared buffer.
struct SharedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("the log lock is poisoned"))?
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
