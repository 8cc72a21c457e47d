//! The test Prometheus server (tests/prometheus/prometheus.sh) and an exporter whose values a
//! test sets: a real HTTP server on 127.0.0.1 serving `/metrics` in Prometheus's text format,
//! registered with the server through a target file of its own (file-based service discovery),
//! with a label no other test uses, so that tests running at once never see each other's series.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use axum::{Router, extract::State, routing::get};

/// The variables of the test Prometheus server, in the order `started_by` checks them.
pub const PROMETHEUS_KEYS: [&str; 2] = ["OTA_TEST_PROMETHEUS_URL", "OTA_TEST_PROMETHEUS_TARGETS"];

/// The test Prometheus server's URL and its folder of target files, started once per test
/// binary unless the environment names one.
pub fn prometheus_env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| super::started_by("tests/prometheus/prometheus.sh", &PROMETHEUS_KEYS))
}

/// The test Prometheus server's base URL.
pub fn prometheus_url() -> &'static str {
    &prometheus_env()["OTA_TEST_PROMETHEUS_URL"]
}

type Series = Arc<Mutex<BTreeMap<String, f64>>>;

/// An exporter scraped by the test Prometheus server; its series carry the label
/// `ota_test="<label>"` (added by the server from the target file). Dropping it removes its
/// target file and stops it.
pub struct Exporter {
    label: String,
    address: SocketAddr,
    series: Series,
    target_file: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Exporter {
    /// Starts an exporter serving nothing yet and registers it with the test Prometheus server.
    pub async fn start(prefix: &str) -> Exporter {
        let label = super::unique_name(prefix, '_');
        let series = Series::default();
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(Arc::clone(&series));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the exporter");
        let address = listener.local_addr().expect("the exporter's address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the exporter serves");
        });
        let targets = PathBuf::from(&prometheus_env()["OTA_TEST_PROMETHEUS_TARGETS"]);
        let target_file = targets.join(format!("{label}.json"));
        let target = serde_json::json!([{
            "targets": [address.to_string()],
            "labels": {"ota_test": label},
        }]);
        // Written under a name the server does not read, then renamed: never read half-written.
        let partial = targets.join(format!("{label}.partial"));
        std::fs::write(&partial, target.to_string()).expect("the target file is written");
        std::fs::rename(&partial, &target_file).expect("the target file is put in place");
        Exporter {
            label,
            address,
            series,
            target_file,
            server,
        }
    }

    /// The value of the `ota_test` label of this exporter's series.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The exporter's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves `value` for `series` (a metric name with optional labels:
    /// `http_errors{code="500"}`) from now on.
    pub fn set(&self, series: &str, value: f64) {
        self.series
            .lock()
            .expect("the exporter's series")
            .insert(series.to_owned(), value);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.target_file);
        self.server.abort();
    }
}

/// The series in the text exposition format.
async fn metrics(State(series): State<Series>) -> ([(&'static str, &'static str); 1], String) {
    let series = series.lock().expect("the exporter's series");
    let mut text = String::new();
    for (name, value) in series.iter() {
        let value = if value.is_nan() {
            "NaN".to_owned()
        } else if value.is_infinite() {
            if *value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
        } else {
            value.to_string()
        };
        text.push_str(&format!("{name} {value}\n"));
    }
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}
