//! A PostgreSQL server of one test's own, to stop and start again without disturbing the shared
//! test server: tests/postgres/postgres.sh run with a state folder of its own (its own data
//! directory and port), then stopped and started with `pg_ctl` from the same install.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A private PostgreSQL server; stopped (by postgres.sh) when dropped.
pub struct PrivatePostgres {
    /// Holds the script's state folder (`OTA_POSTGRES_STATE`).
    state_root: tempfile::TempDir,
    /// The database `ota_test` on it.
    pub url: String,
}

impl PrivatePostgres {
    /// Starts a fresh server with tests/postgres/postgres.sh; panics with its output when it
    /// cannot (these tests never pass by skipping).
    pub fn start() -> PrivatePostgres {
        let state_root = tempfile::tempdir().expect("a folder for the server's state");
        let mut started = PrivatePostgres {
            state_root,
            url: String::new(),
        };
        let output = started.script("start");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the private PostgreSQL server did not start:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        started.url = stdout
            .lines()
            .find_map(|line| line.strip_prefix("OTA_TEST_POSTGRES_URL="))
            .unwrap_or_else(|| panic!("postgres.sh printed no URL:\n{stdout}"))
            .to_owned();
        started
    }

    fn state(&self) -> PathBuf {
        self.state_root.path().join("postgres")
    }

    fn script(&self, command: &str) -> std::process::Output {
        Command::new(super::repo_root().join("tests/postgres/postgres.sh"))
            .arg(command)
            .env("OTA_POSTGRES_STATE", self.state())
            .output()
            .expect("postgres.sh runs")
    }

    fn recorded(&self, name: &str) -> String {
        let path = self.state().join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// Runs `pg_ctl <args> -D <data>` as the server's user (postgres.sh runs the server as
    /// `postgres` when the tests run as root: PostgreSQL refuses to run as root).
    fn pg_ctl(&self, args: &[&str]) {
        let pg_ctl = Path::new(&self.recorded("bindir")).join("pg_ctl");
        let pgdir = PathBuf::from(self.recorded("pgdir"));
        let data = pgdir.join("data");
        let log = pgdir.join("postgres.log");
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
        let mut command = if as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            command
        } else {
            Command::new(&pg_ctl)
        };
        let output = command
            .args(args)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "-s"])
            .current_dir("/")
            .output()
            .expect("pg_ctl runs");
        assert!(
            output.status.success(),
            "pg_ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops the server (fast shutdown: every connection is closed), waiting until it is down.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// Starts the stopped server again on the same data directory and port, waiting until it
    /// accepts connections; records its new PID so that postgres.sh can stop it.
    pub fn start_again(&self) {
        self.pg_ctl(&["start"]);
        let pid_file = PathBuf::from(self.recorded("pgdir")).join("data/postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("postmaster.pid");
        let pid = pid.lines().next().expect("a PID line");
        std::fs::write(self.state().join("postgres.pid"), format!("{pid}\n")).expect("the PID recorded");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let pgdir = std::fs::read_to_string(self.state().join("pgdir")).ok();
        let _ = self.script("stop");
        // The server's folder may be outside the state folder (under /tmp, see postgres.sh).
        if let Some(pgdir) = pgdir {
            let _ = std::fs::remove_dir_all(pgdir.trim());
        }
    }
}
