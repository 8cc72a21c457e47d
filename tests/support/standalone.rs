//! `ota standalone` as a real process on a copy of examples/standalone.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A channel devices may set for themselves, beside the example's production channel (an extra
/// file for [`StandaloneProcess::start`]).
pub const BETA_CHANNEL: (&str, &str) = (
    "beta.yaml",
    "
apiVersion: ota.dev/v1alpha1
kind: Channel
metadata:
  name: beta
spec:
  appRef: shop
  bundleRef: shop-1.4.3
  allowDeviceSelfSet: true
",
);

/// A running `ota standalone`; killed (SIGKILL) when dropped.
pub struct StandaloneProcess {
    pub child: Child,
    /// Where devices connect.
    pub base: String,
    /// The internal listener (rollout figures, metrics).
    pub internal: String,
    pub dir: tempfile::TempDir,
}

impl Drop for StandaloneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StandaloneProcess {
    /// [`StandaloneProcess::start`] with the example App's rate limits off, for a load that
    /// sends everything from 127.0.0.1 as fast as the server answers (one client, which the
    /// per-client limit exists to stop).
    pub async fn start_without_rate_limits(database: &str) -> StandaloneProcess {
        let app = example_app_without_rate_limits();
        StandaloneProcess::start(database, &[("app.yaml", app.as_str())]).await
    }

    /// Starts `ota standalone` on a copy of examples/standalone with `extra` files (name,
    /// YAML) added, its device store at `database`, and waits until it is ready.
    pub async fn start(database: &str, extra: &[(&str, &str)]) -> StandaloneProcess {
        let dir = tempfile::tempdir().expect("a temporary folder");
        super::copy_example_dir(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/standalone"),
            dir.path(),
        );
        for (name, content) in extra {
            std::fs::write(dir.path().join(name), content).expect("an extra file");
        }
        let (port, internal_port) = (super::free_port(), super::free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_ota"))
            .args(["standalone", "--database", database, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--internal-listen")
            .arg(format!("127.0.0.1:{internal_port}"))
            .arg(dir.path())
            .env("OTA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ota starts");
        let standalone = StandaloneProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            internal: format!("http://127.0.0.1:{internal_port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/readyz", standalone.base))
            .await
            .is_ok_and(|response| response.status() == 200)
        {
            assert!(
                Instant::now() < deadline,
                "ota standalone was not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        standalone
    }
}

/// examples/standalone/app.yaml with `spec.server.rateLimits.enabled: false`.
pub fn example_app_without_rate_limits() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/standalone/app.yaml");
    let app = std::fs::read_to_string(path).expect("the example App");
    assert!(
        !app.contains("\n  server:"),
        "the example App names server settings: merge rateLimits into them"
    );
    format!(
        "{}\n  server:\n    rateLimits: {{enabled: false}}\n",
        app.trim_end()
    )
}
