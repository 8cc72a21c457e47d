//! An S3 server of one test's own, to hang, kill and start again without disturbing the shared
//! test server: tests/s3/s3.sh run with a state folder of its own (its own data folder, port and
//! keys), then signalled by its recorded PID and started again with the same command line.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A private S3 server; stopped (by s3.sh) when dropped.
pub struct PrivateS3 {
    /// Holds the script's state folder (`OTA_S3_STATE`).
    state_root: tempfile::TempDir,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// rclone's command line, as s3.sh started it (read from /proc).
    argv: Vec<String>,
    /// The server started again by [`PrivateS3::start_again`] (a child of the test).
    again: Option<Child>,
}

impl PrivateS3 {
    /// Starts a fresh server with tests/s3/s3.sh; panics with its output when it cannot (these
    /// tests never pass by skipping).
    pub fn start() -> PrivateS3 {
        let state_root = tempfile::tempdir().expect("a folder for the server's state");
        let state = state_root.path().join("s3");
        let output = Command::new(super::repo_root().join("tests/s3/s3.sh"))
            .arg("start")
            .env("OTA_S3_STATE", &state)
            .output()
            .expect("s3.sh runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "the private S3 server did not start:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("s3.sh printed no {key}:\n{stdout}"))
                .to_owned()
        };
        let mut s3 = PrivateS3 {
            endpoint: value("OTA_TEST_S3_ENDPOINT"),
            access_key: value("OTA_TEST_S3_ACCESS_KEY"),
            secret_key: value("OTA_TEST_S3_SECRET_KEY"),
            bucket: value("OTA_TEST_S3_BUCKET"),
            state_root,
            argv: Vec::new(),
            again: None,
        };
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", s3.pid())).expect("rclone's command line");
        s3.argv = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        assert!(
            s3.argv.iter().any(|arg| arg == "serve"),
            "not rclone serve: {:?}",
            s3.argv
        );
        s3
    }

    fn state(&self) -> PathBuf {
        self.state_root.path().join("s3")
    }

    /// The PID of the running server, as recorded.
    pub fn pid(&self) -> u32 {
        self.recorded_pid().expect("rclone's PID recorded")
    }

    fn recorded_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state().join("rclone.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Stops the server's process (SIGSTOP): connections are accepted by the kernel, but nothing
    /// is ever answered.
    pub fn hang(&self) {
        self.signal("STOP");
    }

    /// Lets a hung server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the endpoint has a port")
    }

    fn accepts(&self) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port())),
            Duration::from_millis(200),
        )
        .is_ok()
    }

    /// Kills the server (SIGKILL) and waits until its port refuses connections.
    pub fn kill(&mut self) {
        self.signal("KILL");
        if let Some(mut child) = self.again.take() {
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.accepts() {
            assert!(Instant::now() < deadline, "the killed server still accepts");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the killed server again with the same command line, keys, port and data; records
    /// its PID so that s3.sh stops it; waits until it answers.
    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.state().join("rclone.log"))
            .expect("rclone's log");
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            // As s3.sh gives it: rclone reads list flags from the environment as CSV.
            .env(
                "RCLONE_AUTH_KEY",
                format!("\"{},{}\"", self.access_key, self.secret_key),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log again"))
            .stderr(log)
            .spawn()
            .expect("rclone starts again");
        std::fs::write(self.state().join("rclone.pid"), format!("{}\n", child.id()))
            .expect("the PID recorded");
        self.again = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.accepts() {
            assert!(
                Instant::now() < deadline,
                "rclone did not listen again within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        // A stopped process would hold its SIGTERM until s3.sh gives up and kills it.
        if let Some(pid) = self.recorded_pid() {
            let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
        }
        let _ = Command::new(super::repo_root().join("tests/s3/s3.sh"))
            .arg("stop")
            .env("OTA_S3_STATE", self.state())
            .output();
        if let Some(mut child) = self.again.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
