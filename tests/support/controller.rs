//! Running `ota controller` in the test process against the real test API server.

use std::{future::Future, net::SocketAddr, time::Duration};

use kube::Client;
use ota_operator::controller::{self, Options};
use tokio::sync::oneshot;

pub const IMAGE: &str = "registry.test/ota:test";

/// A controller running in this process until the handle is dropped.
pub struct Running {
    /// Where /metrics, /livez and /readyz answer.
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), controller::ControllerError>>,
}

impl Running {
    /// Stops the controller and checks that it stopped cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("the controller stops within 20 s")
            .expect("the controller task did not panic");
        result.expect("the controller stopped without an error");
    }

    /// GETs `path` of the health and metrics server.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.address))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    }
}

/// Options for a controller that watches `namespace` (filesystem storage under a folder of its
/// own).
pub fn options(namespace: &str, leader_election: bool, identity: &str) -> Options {
    Options {
        namespace: Some(namespace.to_owned()),
        leader_election,
        lease_name: "ota-operator".to_owned(),
        lease_namespace: namespace.to_owned(),
        lease_duration_seconds: 6,
        identity: identity.to_owned(),
        default_server_image: IMAGE.to_owned(),
        storage_dir: std::env::temp_dir().join(format!("ota-controller-storage-{namespace}")),
        // Outside a cluster the App's Service does not resolve; a port nobody listens on
        // fails at once (tests that run an update server point this at it).
        figures_url_template: "http://127.0.0.1:1".to_owned(),
        clock: std::sync::Arc::new(controller::SystemClock),
        // Rollouts of these tests have no metrics; a test that gives some scripts the answers.
        metrics: std::sync::Arc::new(ota_operator::rollout_driver::ScriptedMetrics::new(
            std::sync::Arc::new(controller::SystemClock),
        )),
    }
}

/// Starts a controller in this process. `OTA_TEST_LOG` (a tracing filter such as
/// `ota_operator=debug`) shows its logs.
pub async fn start(client: &Client, options: Options) -> Running {
    if let Ok(filter) = std::env::var("OTA_TEST_LOG") {
        // Several tests of one binary may each try; the first one installs it.
        let _ = ota_operator::telemetry::init(ota_operator::telemetry::LogFormat::Text, &filter);
    }
    let listener = controller::bind("127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("a bound address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(options, client.clone(), listener, async move {
        let _ = stopped.await;
    }));
    Running {
        stop: Some(stop),
        address,
        task,
    }
}

/// Polls `check` every 200 ms until it returns Some, or panics with `what` after `seconds`.
pub async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
