//! Faults survived (issue 12, point 3), each with real processes: `ota standalone` under load
//! from concurrent clients (update checks and `/stats` failure reports) while
//! - its PostgreSQL server is stopped for 30 s, then started again (a server of the test's own,
//!   so that no other test is disturbed);
//! - the disk holding its SQLite file is full (a small tmpfs, filled up), then has room again;
//! - one of three replicas sharing a PostgreSQL database is killed with SIGKILL.
//!
//! Every failure report answered 200 must be in the store at the end.

use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{
    load::{self, Load, Targets},
    private_postgres::PrivatePostgres,
    standalone::StandaloneProcess,
};

/// How long the database is down. The real 30 s of the issue: longer than the store's pool
/// waits for a connection (sqlx's 30 s acquire timeout) and than the queue's longest backoff
/// (10 s), so the store must notice the database is back by itself.
const OUTAGE: Duration = Duration::from_secs(30);
/// How soon after the database is back `/stats` must be acknowledged again.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// The most the server's resident memory may grow during the outage: the write queue is bounded
/// (65,536 writes, some 14 MiB at most), so its growth is too.
const RSS_GROWTH_BOUND_KIB: u64 = 96 * 1024;

/// Samples of a server's readiness and memory, taken every 100 ms.
#[derive(Debug, Default, Clone)]
struct Samples {
    max_pending: u64,
    capacity: u64,
    max_dropped: u64,
    max_rss_kib: u64,
    saw_failing: bool,
}

fn sample_in_background(
    base: String,
    pid: u32,
) -> (
    tokio::task::JoinHandle<Samples>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = tokio::spawn(async move {
        let mut samples = Samples::default();
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let ready = load::readiness(&base).await;
            let store = &ready["device_store"];
            samples.max_pending = samples
                .max_pending
                .max(store["pending_writes"].as_u64().unwrap_or(0));
            samples.capacity = samples.capacity.max(store["capacity"].as_u64().unwrap_or(0));
            samples.max_dropped = samples
                .max_dropped
                .max(store["writes_dropped"].as_u64().unwrap_or(0));
            samples.saw_failing |= store["status"] == "failing";
            samples.max_rss_kib = samples.max_rss_kib.max(load::rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    });
    (handle, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_for_30_s_under_load() {
    let postgres = PrivatePostgres::start();
    let server = StandaloneProcess::start_without_rate_limits(&postgres.url).await;
    let pid = server.child.id();
    let targets = Targets::new(vec![server.base.clone()]);
    let load = Load::start(targets, 8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = load::rss_kib(pid);
    let (sampler, stop_sampling) = sample_in_background(server.base.clone(), pid);

    postgres.stop();
    let down_at = Instant::now();
    eprintln!(
        "PostgreSQL stopped; {} reports acknowledged before",
        load.acknowledged()
    );
    // Readiness says the store is failing, with the reason, while the database is down.
    let deadline = Instant::now() + Duration::from_secs(15);
    let failing = loop {
        let ready = load::readiness(&server.base).await;
        if ready["device_store"]["status"] == "failing" || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failing["status"], "degraded", "{failing}");
    assert_eq!(failing["device_store"]["status"], "failing", "{failing}");
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;

    let up_at = Instant::now();
    postgres.start_again();
    let started_at = Instant::now();
    eprintln!(
        "PostgreSQL started again after {:?} down (pg_ctl start took {:?})",
        up_at - down_at,
        started_at - up_at
    );
    // Acknowledged again within the bound, and readiness back to ready.
    let deadline = started_at + RECOVERY_BOUND;
    let acknowledged_while_down = load.acknowledged();
    let recovered_at = loop {
        let ready = load::readiness(&server.base).await;
        if ready["status"] == "ready" && load.acknowledged() > acknowledged_while_down {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "not ready {RECOVERY_BOUND:?} after PostgreSQL came back: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Keep the load on a little longer after the recovery.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = load.stop().await;
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await.expect("the sampler ends");
    let ready_after = load::readiness(&server.base).await;
    drop(server);

    assert!(
        tally.wrong.is_empty(),
        "{} wrong answers, e.g. {:?}",
        tally.wrong.len(),
        &tally.wrong[..tally.wrong.len().min(5)]
    );
    // Never a 200 while the database was down (from a moment after it was stopped until it was
    // started again): nothing can have been committed then.
    let settled = down_at + Duration::from_secs(1);
    let during: Vec<_> = tally
        .acknowledged
        .iter()
        .filter(|ack| ack.sent > settled && ack.answered < up_at)
        .collect();
    assert!(
        during.is_empty(),
        "{} reports acknowledged while PostgreSQL was down",
        during.len()
    );
    let refused_during = tally
        .refused
        .iter()
        .filter(|at| **at > down_at && **at < started_at)
        .count();
    assert!(refused_during > 0, "no 503 while PostgreSQL was down");
    let recovery = tally
        .acknowledged
        .iter()
        .filter(|ack| ack.sent >= started_at)
        .map(|ack| ack.answered - started_at)
        .min()
        .expect("a report acknowledged after PostgreSQL came back");
    assert!(
        recovery <= RECOVERY_BOUND,
        "first acknowledgement {recovery:?} after PostgreSQL came back"
    );
    assert!(
        samples.capacity > 0 && samples.max_pending <= samples.capacity,
        "{samples:?}"
    );
    assert!(samples.saw_failing, "{samples:?}");
    assert!(
        samples.max_rss_kib <= rss_before + RSS_GROWTH_BOUND_KIB,
        "RSS grew from {rss_before} KiB to {} KiB",
        samples.max_rss_kib
    );
    assert_eq!(ready_after["device_store"]["status"], "ok", "{ready_after}");

    let stored = load::assert_acknowledged_stored(&postgres.url, &tally.acknowledged).await;
    eprintln!(
        "outage {:?}; first acknowledgement {recovery:?} after restart (ready at {:?}); {} reports acknowledged, {stored} stored, {} refused with 503 ({refused_during} while down), e.g. {:?}; {} update checks answered; queue depth max {} of {}, {} writes dropped; RSS {rss_before} KiB before, max {} KiB",
        up_at - down_at,
        recovered_at - started_at,
        tally.acknowledged.len(),
        tally.refused.len(),
        tally.refused_bodies.first(),
        tally.update_checks_answered,
        samples.max_pending,
        samples.capacity,
        samples.max_dropped,
        samples.max_rss_kib,
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `4m`). Panics when it cannot: the disk-full scenario is
    /// part of the suite, and CI runs as root where mounting works; it never passes by skipping.
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("a mount point");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(
            output.status.success(),
            "cannot mount a tmpfs for the disk-full scenario (this test needs root, as in CI): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("a filler file");
        let chunk = vec![0u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(28) => break, // ENOSPC
                Err(error) => panic!("filling the disk: {error}"),
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `PRAGMA integrity_check` of an SQLite file, read-only.
async fn integrity_check(path: &std::path::Path) -> String {
    use sqlx::{Connection, sqlite::SqliteConnection};
    let mut connection = SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect("the SQLite file opens");
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut connection)
        .await
        .expect("integrity_check runs");
    rows.into_iter().map(|(row,)| row).collect::<Vec<_>>().join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_disk_full_then_room_again() {
    let disk = SmallDisk::mount("4m");
    let file = disk.path().join("devices.db");
    let database = format!("sqlite://{}", file.display());
    let server = StandaloneProcess::start_without_rate_limits(&database).await;
    let targets = Targets::new(vec![server.base.clone()]);
    let load = Load::start(targets, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        load.acknowledged() > 0,
        "nothing acknowledged before the disk was full"
    );

    let filler = disk.fill();
    let full_at = Instant::now();
    // The store fails to commit once SQLite needs a page the disk has no room for.
    let deadline = full_at + Duration::from_secs(60);
    let degraded = loop {
        let ready = load::readiness(&server.base).await;
        if ready["device_store"]["status"] == "failing" {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "the store never failed on a full disk: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "readiness on a full disk after {:?}: {degraded}",
        full_at.elapsed()
    );
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    let reason = degraded["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("full"),
        "the reason names the full disk: {reason}"
    );
    // A moment on the full disk: `/stats` refused with a clear message.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(integrity_check(&file).await, "ok", "integrity on the full disk");

    std::fs::remove_file(&filler).expect("room again");
    let room_at = Instant::now();
    let acknowledged_before = load.acknowledged();
    let deadline = room_at + RECOVERY_BOUND;
    loop {
        let ready = load::readiness(&server.base).await;
        if ready["status"] == "ready" && load.acknowledged() > acknowledged_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready {RECOVERY_BOUND:?} after the disk had room: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = room_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A full disk is the database's condition, not bad data: every write waited for room,
    // none was dropped as refused.
    let ready = load::readiness(&server.base).await;
    assert_eq!(ready["device_store"]["writes_rejected"], 0, "{ready}");
    assert_eq!(ready["device_store"]["writes_dropped"], 0, "{ready}");
    let tally = load.stop().await;
    drop(server);

    assert!(
        tally.wrong.is_empty(),
        "{} wrong answers, e.g. {:?}",
        tally.wrong.len(),
        &tally.wrong[..tally.wrong.len().min(5)]
    );
    let refused_full = tally
        .refused
        .iter()
        .filter(|at| **at > full_at && **at < room_at)
        .count();
    assert!(refused_full > 0, "no 503 while the disk was full");
    let body: Value = serde_json::from_str(tally.refused_bodies.last().expect("a 503 body")).expect("JSON");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("full"), "a clear message: {body}");
    assert_eq!(integrity_check(&file).await, "ok", "integrity after the recovery");
    let stored = load::assert_acknowledged_stored(&database, &tally.acknowledged).await;
    eprintln!(
        "disk full: {} reports acknowledged, {stored} stored, {refused_full} refused while full ({body}); ready and acknowledging {recovered:?} after the disk had room",
        tally.acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load() {
    let database = support::fresh_postgres_database("faults_replicas").await;
    let mut replicas = [
        StandaloneProcess::start_without_rate_limits(&database).await,
        StandaloneProcess::start_without_rate_limits(&database).await,
        StandaloneProcess::start_without_rate_limits(&database).await,
    ];
    let targets = Targets::new(replicas.iter().map(|replica| replica.base.clone()).collect());
    let load = Load::start(targets.clone(), 12);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = load.acknowledged();
    let victim = &mut replicas[1];
    targets.kill(&victim.base);
    victim.child.kill().expect("SIGKILL");
    victim.child.wait().expect("the replica is gone");
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = load.stop().await;

    assert!(
        tally.wrong.is_empty(),
        "{} wrong answers, e.g. {:?}",
        tally.wrong.len(),
        &tally.wrong[..tally.wrong.len().min(5)]
    );
    assert!(
        tally.refused.is_empty(),
        "{} reports refused",
        tally.refused.len()
    );
    let after_kill = tally
        .acknowledged
        .iter()
        .filter(|ack| ack.sent > killed_at)
        .count();
    assert!(after_kill > 0, "nothing acknowledged after the kill");
    let stored = load::assert_acknowledged_stored(&database, &tally.acknowledged).await;
    eprintln!(
        "replica killed after {before_kill} acknowledged reports; {} acknowledged in all, {after_kill} after the kill, {stored} stored; {} update checks answered",
        tally.acknowledged.len(),
        tally.update_checks_answered
    );
}
