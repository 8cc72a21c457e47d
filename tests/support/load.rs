//! Load for the fault tests: concurrent clients sending update checks and `/stats` failure
//! reports to `ota standalone` processes, tallying what each answer was.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub const APP: &str = "com.example.shop";
/// The example's bundle: a failure of it marks the device.
pub const VERSION: &str = "1.4.3";

/// The UUID of the device whose failure report is number `n`.
pub fn reporting_device(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// A device that only checks for updates (random: each sighting is a new row to write).
fn checking_device() -> String {
    format!("00000000-0000-4000-9000-{:012x}", fastrand::u64(..1 << 48))
}

/// A `/stats` event: device `device` failed to apply the example's bundle.
pub fn failure_event(device: &str) -> Value {
    json!({
        "platform": "android", "device_id": device, "app_id": APP,
        "custom_id": "", "version_build": "1.4.0", "version_code": "42", "version_os": "14",
        "version_name": VERSION, "old_version_name": "1.4.2", "plugin_version": "8.51.14",
        "is_emulator": false, "is_prod": true, "defaultChannel": "", "action": "update_fail",
    })
}

fn update_check(device: &str) -> Value {
    json!({
        "platform": "android", "device_id": device, "app_id": APP, "custom_id": "",
        "version_build": "1.4.0", "version_code": "140", "version_os": "14",
        "version_name": "1.4.2", "plugin_version": "8.51.14", "is_emulator": false,
        "is_prod": true, "defaultChannel": "",
    })
}

/// A failure report answered 200: its device, and when the request was sent and answered.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    pub device: String,
    pub sent: Instant,
    pub answered: Instant,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub acknowledged: Vec<Acknowledged>,
    /// `/stats` answered 503 with `Retry-After`, and when each was answered.
    pub refused: Vec<Instant>,
    /// The first few 503 bodies.
    pub refused_bodies: Vec<String>,
    pub update_checks_answered: u64,
    /// Anything the scenario does not allow (a 5xx to an update check, a 503 without
    /// `Retry-After`, another status, a failed connection to a server still running).
    pub wrong: Vec<String>,
}

/// The servers the clients spread their requests over; a killed one is taken out of the
/// rotation (as a load balancer would), and a request it failed is not held against it.
#[derive(Default)]
pub struct Targets {
    live: Mutex<Vec<String>>,
    killed: Mutex<HashSet<String>>,
}

impl Targets {
    pub fn new(bases: Vec<String>) -> Arc<Targets> {
        Arc::new(Targets {
            live: Mutex::new(bases),
            killed: Mutex::default(),
        })
    }

    /// Takes `base` out of the rotation: call right before killing it.
    pub fn kill(&self, base: &str) {
        self.killed.lock().unwrap().insert(base.to_owned());
        self.live.lock().unwrap().retain(|live| live != base);
    }

    fn pick(&self, n: u64) -> String {
        let live = self.live.lock().unwrap();
        live[(n as usize) % live.len()].clone()
    }

    fn is_killed(&self, base: &str) -> bool {
        self.killed.lock().unwrap().contains(base)
    }
}

/// Running clients; [`Load::stop`] ends them and returns the tally.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients, each sending an update check then a failure report of a new
    /// device, again and again, to the targets in turn.
    pub fn start(targets: Arc<Targets>, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let next_device = Arc::new(AtomicU64::new(0));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("an HTTP client");
        let clients = (0..clients)
            .map(|_| {
                let (stop, tally, next_device, http, targets) = (
                    stop.clone(),
                    tally.clone(),
                    next_device.clone(),
                    http.clone(),
                    targets.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = next_device.fetch_add(1, Ordering::Relaxed);
                        let base = targets.pick(n);
                        check(&http, &base, &targets, &tally).await;
                        report(&http, &targets.pick(n + 1), n, &targets, &tally).await;
                    }
                })
            })
            .collect();
        Load { stop, tally, clients }
    }

    /// Failure reports acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.tally.lock().unwrap().acknowledged.len()
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("a client ends");
        }
        Arc::try_unwrap(self.tally)
            .expect("every client ended")
            .into_inner()
            .unwrap()
    }
}

async fn check(http: &reqwest::Client, base: &str, targets: &Targets, tally: &Mutex<Tally>) {
    let sent = http
        .post(format!("{base}/updates"))
        .json(&update_check(&checking_device()))
        .send()
        .await;
    let mut tally = tally.lock().unwrap();
    match sent {
        Ok(response) if response.status() == 200 => tally.update_checks_answered += 1,
        Ok(response) => tally
            .wrong
            .push(format!("update check to {base}: {}", response.status())),
        Err(_) if targets.is_killed(base) => {}
        Err(error) => tally.wrong.push(format!("update check to {base}: {error}")),
    }
}

async fn report(http: &reqwest::Client, base: &str, n: u64, targets: &Targets, tally: &Mutex<Tally>) {
    let device = reporting_device(n);
    let sent = Instant::now();
    let response = http
        .post(format!("{base}/stats"))
        .json(&failure_event(&device))
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(_) if targets.is_killed(base) => return,
        Err(error) => {
            tally
                .lock()
                .unwrap()
                .wrong
                .push(format!("stats to {base}: {error}"));
            return;
        }
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body = response.text().await;
    let answered = Instant::now();
    let mut tally = tally.lock().unwrap();
    match (status, body) {
        (200, Ok(_)) => tally.acknowledged.push(Acknowledged {
            device,
            sent,
            answered,
        }),
        // The answer was lost with the killed process: not acknowledged.
        (200, Err(_)) if targets.is_killed(base) => {}
        (503, Ok(body)) if retry_after => {
            tally.refused.push(answered);
            if tally.refused_bodies.len() < 5 {
                tally.refused_bodies.push(body);
            }
        }
        (status, body) => tally.wrong.push(format!(
            "stats to {base}: {status} (Retry-After: {retry_after}) {body:?}"
        )),
    }
}

/// The resident memory of a process, in KiB (VmRSS of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The server's readiness body.
pub async fn readiness(base: &str) -> Value {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Checks that the device of every acknowledged failure report is marked failed in the store at
/// `database`, and that the store counts at least as many failures; returns the count stored.
pub async fn assert_acknowledged_stored(database: &str, acknowledged: &[Acknowledged]) -> i64 {
    let store = ota_operator::devices::DeviceStore::open(database)
        .await
        .expect("the store opens");
    let memory = store.load_memory().await.expect("failed marks");
    let missing: Vec<&str> = acknowledged
        .iter()
        .filter(|ack| memory.facts(APP, &ack.device).failed_versions != [VERSION])
        .map(|ack| ack.device.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged failure reports are not in the store, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        missing.first()
    );
    let stored = store
        .counters(APP, VERSION, 0)
        .await
        .expect("counters")
        .into_iter()
        .find(|counter| counter.action == "update_fail")
        .map_or(0, |counter| counter.count);
    assert!(
        stored >= acknowledged.len() as i64,
        "{stored} failures counted, {} acknowledged",
        acknowledged.len()
    );
    stored
}
