//! The device store against its real backends: an SQLite file, an SQLite in-memory database, and
//! a real PostgreSQL server (tests/postgres/postgres.sh). The same scenario runs on each backend;
//! each test gets a database of its own (a fresh file, or `CREATE DATABASE` on PostgreSQL).
//!
//! PostgreSQL: `OTA_TEST_POSTGRES_URL` when the test runner (tests/run.sh) started the server,
//! otherwise the server is started here and left running for the next test binary
//! (`tests/postgres/postgres.sh stop` stops it). These tests never pass by skipping: when the
//! server cannot be started, they fail with the reason.

mod support;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use ota_operator::{
    core::update::DeviceFacts,
    devices::{
        ChannelHistoryRow, CommitError, Counter, DeviceMemory, DeviceRecord, DeviceSeen, DeviceStore,
        OutcomeFigures, OutcomeReport, RolloutStateRow, StoreError, Write, WriteQueue,
    },
};
use sqlx::{Connection, Executor, postgres::PgConnection};

const APP: &str = "com.example.shop";
const OTHER_APP: &str = "com.example.other";
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// 2026-09-21T12:26:40Z, a fixed "now".
const NOW_MS: i64 = 1_790_000_000_000;

fn unique_name(prefix: &str) -> String {
    support::unique_name(prefix, '_')
}

fn postgres_server_url() -> &'static str {
    support::postgres_url()
}

/// `url` naming the database `database` instead of its own (the query string is kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (server, _) = base
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("the PostgreSQL URL names no database"));
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// The backends every scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    SqliteFile,
    SqliteMemory,
    Postgres,
}

/// A database of one test, removed by [`TestDatabase::remove`] when the test passes (a failed
/// test leaves it for inspection).
struct TestDatabase {
    backend: Backend,
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Nothing,
    Folder(PathBuf),
    PostgresDatabase { name: String },
}

impl TestDatabase {
    async fn new(backend: Backend, test: &str) -> Self {
        match backend {
            Backend::SqliteMemory => TestDatabase {
                backend,
                url: "sqlite::memory:".to_owned(),
                cleanup: Cleanup::Nothing,
            },
            Backend::SqliteFile => {
                let folder = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join("device-store")
                    .join(unique_name(test));
                std::fs::create_dir_all(&folder)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", folder.display()));
                TestDatabase {
                    backend,
                    url: format!("sqlite://{}", folder.join("devices.db").display()),
                    cleanup: Cleanup::Folder(folder),
                }
            }
            Backend::Postgres => {
                let server = postgres_server_url();
                let name = unique_name(test);
                let mut admin = PgConnection::connect(server)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
                admin
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap_or_else(|e| panic!("cannot create the database {name}: {e}"));
                let _ = admin.close().await;
                TestDatabase {
                    backend,
                    url: with_database(server, &name),
                    cleanup: Cleanup::PostgresDatabase { name },
                }
            }
        }
    }

    /// Whether a second open sees what the first wrote.
    fn persistent(&self) -> bool {
        self.backend != Backend::SqliteMemory
    }

    async fn open(&self) -> DeviceStore {
        DeviceStore::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open the {:?} store: {e}", self.backend))
    }

    async fn remove(self) {
        match self.cleanup {
            Cleanup::Nothing => {}
            Cleanup::Folder(folder) => {
                let _ = std::fs::remove_dir_all(folder);
            }
            Cleanup::PostgresDatabase { name } => {
                let mut admin = PgConnection::connect(postgres_server_url())
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
                // FORCE: the stores' pools may still be closing their connections.
                admin
                    .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
                    .await
                    .unwrap_or_else(|e| panic!("cannot drop the database {name}: {e}"));
                let _ = admin.close().await;
            }
        }
    }
}

fn seen(device_id: &str, seen_at_ms: i64) -> DeviceSeen {
    DeviceSeen {
        app_id: APP.to_owned(),
        device_id: device_id.to_owned(),
        platform: "ios".to_owned(),
        plugin_version: "8.51.14".to_owned(),
        native_version: "3.2.0".to_owned(),
        version_name: "1.4.2".to_owned(),
        custom_id: None,
        default_channel: None,
        is_prod: true,
        is_emulator: false,
        seen_at_ms,
        creates_row: true,
    }
}

fn count(version: &str, action: &str, day: i64, n: i64) -> Write {
    Write::Count {
        app_id: APP.to_owned(),
        version: version.to_owned(),
        action: action.to_owned(),
        day,
        n,
    }
}

fn failed(device_id: &str, version: &str, at_ms: i64) -> Write {
    Write::FailedMark {
        app_id: APP.to_owned(),
        device_id: device_id.to_owned(),
        version: version.to_owned(),
        at_ms,
    }
}

fn set_override(device_id: &str, channel: &str) -> Write {
    Write::SetChannelOverride {
        app_id: APP.to_owned(),
        device_id: device_id.to_owned(),
        channel: channel.to_owned(),
    }
}

fn clear_override(device_id: &str) -> Write {
    Write::ClearChannelOverride {
        app_id: APP.to_owned(),
        device_id: device_id.to_owned(),
    }
}

fn facts(channel: Option<&str>, failed_versions: &[&str]) -> DeviceFacts {
    DeviceFacts {
        self_set_channel: channel.map(str::to_owned),
        failed_versions: failed_versions.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn outcome(device_id: &str, version: &str, channel: &str, failed: bool, at_ms: i64) -> Write {
    Write::Outcome(OutcomeReport {
        app_id: APP.to_owned(),
        version: version.to_owned(),
        device_id: device_id.to_owned(),
        channel: channel.to_owned(),
        failed,
        at_ms,
    })
}

async fn figures(store: &DeviceStore, channel: &str, version: &str, since_ms: i64) -> (u64, u64) {
    let OutcomeFigures { attempts, failures } = store
        .outcome_figures(APP, channel, version, since_ms)
        .await
        .expect("figures");
    (attempts, failures)
}

async fn apply(store: &DeviceStore, batch: &[Write]) {
    store
        .apply(batch)
        .await
        .unwrap_or_else(|e| panic!("the batch was not applied: {e}"));
}

async fn device(store: &DeviceStore, device_id: &str) -> Option<DeviceRecord> {
    store.device(APP, device_id).await.expect("a device read")
}

// ---------------------------------------------------------------------------------------------
// Scenarios, each run on every backend listed in the modules at the end.

/// Open creates the schema; opening again (the tables exist, the migration is recorded) is fine.
async fn opening_runs_the_migrations_and_opening_again_is_fine(database: &TestDatabase) {
    let store = database.open().await;
    assert_eq!(device(&store, "d1").await, None);
    assert_eq!(store.counters(APP, "1.0.0", 0).await.expect("counters"), vec![]);
    assert_eq!(store.monthly_active_devices(APP, NOW_MS).await.expect("MAU"), 0);
    let memory = store.load_memory().await.expect("memory");
    assert_eq!(memory.facts(APP, "d1"), DeviceFacts::default());
    apply(&store, &[Write::SeenDevice(seen("d1", NOW_MS))]).await;

    let again = database.open().await;
    let expected_after_reopen = database.persistent().then(|| "d1".to_owned());
    assert_eq!(
        device(&again, "d1").await.map(|d| d.device_id),
        expected_after_reopen
    );
    apply(&again, &[Write::SeenDevice(seen("d2", NOW_MS))]).await;
    assert!(device(&again, "d2").await.is_some());
    // The first store still works beside the second.
    assert!(device(&store, "d1").await.is_some());
}

/// Stores opening a fresh database at the same moment (replicas starting together) all succeed,
/// and the migration is applied once.
async fn concurrent_opens_of_a_fresh_database_all_succeed(database: &TestDatabase) {
    let (a, b, c) = tokio::join!(
        DeviceStore::open(&database.url),
        DeviceStore::open(&database.url),
        DeviceStore::open(&database.url)
    );
    let stores: Vec<DeviceStore> = [a, b, c]
        .into_iter()
        .map(|store| store.unwrap_or_else(|e| panic!("a concurrent open failed: {e}")))
        .collect();
    apply(&stores[0], &[Write::SeenDevice(seen("d1", NOW_MS))]).await;
    for store in &stores {
        assert!(device(store, "d1").await.is_some());
    }
    // A later open finds everything in place.
    let later = database.open().await;
    assert!(device(&later, "d1").await.is_some());
}

/// A sighting updates the reported columns and last_seen_ms, keeps custom_id and
/// default_channel when the new sighting has None, and an older sighting changes nothing.
async fn a_seen_device_keeps_its_last_values(database: &TestDatabase) {
    let store = database.open().await;
    let first = DeviceSeen {
        custom_id: Some("customer-42".to_owned()),
        default_channel: Some("beta".to_owned()),
        ..seen("d1", NOW_MS - 1000)
    };
    apply(&store, &[Write::SeenDevice(first)]).await;
    let record = device(&store, "d1").await.expect("the device row");
    assert_eq!(
        record,
        DeviceRecord {
            app_id: APP.to_owned(),
            device_id: "d1".to_owned(),
            platform: "ios".to_owned(),
            plugin_version: "8.51.14".to_owned(),
            native_version: "3.2.0".to_owned(),
            version_name: "1.4.2".to_owned(),
            custom_id: Some("customer-42".to_owned()),
            default_channel: Some("beta".to_owned()),
            is_prod: true,
            is_emulator: false,
            current_bundle: None,
            channel_override: None,
            last_seen_ms: NOW_MS - 1000,
        }
    );

    // Two sightings and a `set` in one batch: the last sighting wins, None keeps the stored ids.
    let later = DeviceSeen {
        platform: "android".to_owned(),
        plugin_version: "8.52.0".to_owned(),
        native_version: "3.3.0".to_owned(),
        version_name: "1.5.0".to_owned(),
        is_prod: false,
        is_emulator: true,
        ..seen("d1", NOW_MS)
    };
    let middle = DeviceSeen {
        version_name: "1.4.9".to_owned(),
        ..seen("d1", NOW_MS - 500)
    };
    apply(
        &store,
        &[
            Write::SeenDevice(middle),
            Write::CurrentBundle {
                app_id: APP.to_owned(),
                device_id: "d1".to_owned(),
                version: "1.5.0".to_owned(),
                creates_row: true,
            },
            Write::SeenDevice(later),
        ],
    )
    .await;
    let record = device(&store, "d1").await.expect("the device row");
    assert_eq!(
        (
            record.platform.as_str(),
            record.plugin_version.as_str(),
            record.native_version.as_str()
        ),
        ("android", "8.52.0", "3.3.0")
    );
    assert_eq!(record.version_name, "1.5.0");
    assert_eq!((record.is_prod, record.is_emulator), (false, true));
    assert_eq!(
        record.custom_id.as_deref(),
        Some("customer-42"),
        "None must not erase custom_id"
    );
    assert_eq!(
        record.default_channel.as_deref(),
        Some("beta"),
        "None must not erase default_channel"
    );
    assert_eq!(record.current_bundle.as_deref(), Some("1.5.0"));
    assert_eq!(record.last_seen_ms, NOW_MS);

    // A delayed, older sighting (another replica's batch) changes nothing.
    let stale = DeviceSeen {
        custom_id: Some("stale".to_owned()),
        ..seen("d1", NOW_MS - 10_000)
    };
    apply(&store, &[Write::SeenDevice(stale)]).await;
    let unchanged = device(&store, "d1").await.expect("the device row");
    assert_eq!(unchanged, record);

    // A new custom id replaces the old one; a sighting keeps the current bundle.
    let renamed = DeviceSeen {
        custom_id: Some("customer-43".to_owned()),
        ..seen("d1", NOW_MS + 1)
    };
    apply(&store, &[Write::SeenDevice(renamed)]).await;
    let record = device(&store, "d1").await.expect("the device row");
    assert_eq!(record.custom_id.as_deref(), Some("customer-43"));
    assert_eq!(record.current_bundle.as_deref(), Some("1.5.0"));
    assert_eq!(record.platform, "ios");

    // Devices are per app.
    assert_eq!(store.device(OTHER_APP, "d1").await.expect("a device read"), None);
}

/// A large batch (many statements of several sizes) with other device writes between the
/// sightings, and a device seen twice, writes every row as single writes would.
async fn a_large_batch_writes_every_device(database: &TestDatabase) {
    let store = database.open().await;
    let mut batch: Vec<Write> = (0..301)
        .map(|i| Write::SeenDevice(seen(&format!("bulk-{i:03}"), NOW_MS + i)))
        .collect();
    batch.insert(100, set_override("bulk-150", "beta"));
    batch.push(Write::SeenDevice(DeviceSeen {
        version_name: "9.9.9".to_owned(),
        ..seen("bulk-007", NOW_MS + 1000)
    }));
    batch.push(Write::CurrentBundle {
        app_id: APP.to_owned(),
        device_id: "bulk-300".to_owned(),
        version: "1.5.0".to_owned(),
        creates_row: true,
    });
    apply(&store, &batch).await;
    assert_eq!(store.monthly_active_devices(APP, NOW_MS).await.expect("MAU"), 301);
    for i in [0, 1, 150, 255, 256, 299, 300] {
        let record = device(&store, &format!("bulk-{i:03}"))
            .await
            .expect("every device");
        assert_eq!(record.last_seen_ms, NOW_MS + i, "device {i}");
    }
    let twice = device(&store, "bulk-007").await.expect("the device seen twice");
    assert_eq!(
        (twice.version_name.as_str(), twice.last_seen_ms),
        ("9.9.9", NOW_MS + 1000)
    );
    let overridden = device(&store, "bulk-150")
        .await
        .expect("the device with an override");
    assert_eq!(overridden.channel_override.as_deref(), Some("beta"));
    assert_eq!(overridden.platform, "ios");
    let current = device(&store, "bulk-300")
        .await
        .expect("the device with a current bundle");
    assert_eq!(current.current_bundle.as_deref(), Some("1.5.0"));
}

/// Outcomes count devices, not reports: a failure is sticky, the latest report sets the time and
/// the channel, within a batch as across batches; figures filter by app, channel, version and
/// time.
async fn outcomes_count_devices_with_sticky_failures(database: &TestDatabase) {
    let store = database.open().await;
    let minute = 60_000;
    assert_eq!(figures(&store, "production", "1.5.0", 0).await, (0, 0));
    apply(
        &store,
        &[
            outcome("d1", "1.5.0", "production", false, NOW_MS),
            // d2 fails, then reports a set: still a failure, at the later time.
            outcome("d2", "1.5.0", "production", true, NOW_MS),
            outcome("d2", "1.5.0", "production", false, NOW_MS + minute),
            // d3 reported on beta first, then production (in one batch, out of order).
            outcome("d3", "1.5.0", "production", false, NOW_MS + 2 * minute),
            outcome("d3", "1.5.0", "beta", false, NOW_MS + minute),
            // Other versions, apps and channels do not count.
            outcome("d4", "1.4.2", "production", true, NOW_MS),
            outcome("d5", "1.5.0", "beta", true, NOW_MS),
            Write::Outcome(OutcomeReport {
                app_id: OTHER_APP.to_owned(),
                ..match outcome("d6", "1.5.0", "production", true, NOW_MS) {
                    Write::Outcome(report) => report,
                    _ => unreachable!(),
                }
            }),
            Write::SeenDevice(seen("d1", NOW_MS)),
            count("1.5.0", "set", NOW_MS / DAY_MS, 1),
        ],
    )
    .await;
    assert_eq!(figures(&store, "production", "1.5.0", 0).await, (3, 1));
    assert_eq!(figures(&store, "production", "1.5.0", NOW_MS + 1).await, (2, 1));
    assert_eq!(
        figures(&store, "production", "1.5.0", NOW_MS + minute + 1).await,
        (1, 0)
    );
    assert_eq!(
        figures(&store, "production", "1.5.0", NOW_MS + 3 * minute).await,
        (0, 0)
    );
    assert_eq!(figures(&store, "beta", "1.5.0", 0).await, (1, 1));
    assert_eq!(figures(&store, "production", "1.4.2", 0).await, (1, 1));
    assert_eq!(
        store
            .outcome_figures(OTHER_APP, "production", "1.5.0", 0)
            .await
            .expect("figures"),
        OutcomeFigures {
            attempts: 1,
            failures: 1
        }
    );

    // Across batches: d1 fails now (sticky from here on), d3 moves to beta with a later report,
    // and an older report changes neither time nor channel.
    apply(
        &store,
        &[
            outcome("d1", "1.5.0", "production", true, NOW_MS + 5 * minute),
            outcome("d1", "1.5.0", "production", false, NOW_MS + 6 * minute),
            outcome("d3", "1.5.0", "beta", false, NOW_MS + 5 * minute),
            outcome("d2", "1.5.0", "beta", false, NOW_MS - minute),
        ],
    )
    .await;
    assert_eq!(figures(&store, "production", "1.5.0", 0).await, (2, 2));
    assert_eq!(
        figures(&store, "production", "1.5.0", NOW_MS + 6 * minute).await,
        (1, 1)
    );
    assert_eq!(figures(&store, "beta", "1.5.0", 0).await, (2, 1));
    assert_eq!(
        figures(&store, "beta", "1.5.0", NOW_MS + 5 * minute).await,
        (1, 0)
    );

    // Through the write queue, as the server writes them.
    let (queue, _flusher) = WriteQueue::start(
        store.clone(),
        DeviceMemory::empty(),
        100,
        100,
        Duration::from_secs(3600),
    );
    for i in 0..10 {
        assert!(queue.push(outcome(
            &format!("q{i}"),
            "1.6.0",
            "production",
            i % 5 == 0,
            NOW_MS + i
        )));
    }
    queue.flush().await.expect("flush");
    assert_eq!(figures(&store, "production", "1.6.0", NOW_MS).await, (10, 2));
    assert_eq!(figures(&store, "production", "1.6.0", NOW_MS + 5).await, (5, 1));
}

/// Pruning deletes one app's outcomes last reported before a time, in chunks, and nothing else;
/// a device whose old failure was pruned counts afresh when it reports again.
async fn old_outcomes_are_pruned_per_app_in_chunks(database: &TestDatabase) {
    let store = database.open().await;
    let day = 24 * 3600 * 1000;
    let mut batch: Vec<Write> = (0..5_i64)
        .map(|i| {
            outcome(
                &format!("old{i}"),
                "1.5.0",
                "production",
                i == 0,
                NOW_MS - 10 * day + i,
            )
        })
        .collect();
    batch.extend([
        outcome("recent", "1.5.0", "production", true, NOW_MS - day),
        outcome("now", "1.5.0", "production", false, NOW_MS),
        Write::Outcome(OutcomeReport {
            app_id: OTHER_APP.to_owned(),
            ..match outcome("other", "1.5.0", "production", true, NOW_MS - 10 * day) {
                Write::Outcome(report) => report,
                _ => unreachable!(),
            }
        }),
    ]);
    apply(&store, &batch).await;
    assert_eq!(figures(&store, "production", "1.5.0", 0).await, (7, 2));

    // Chunks of two, oldest first: 2, 2, then the last one, which says nothing older remains.
    let mut chunks = Vec::new();
    loop {
        let chunk = store
            .prune_outcomes(APP, NOW_MS - 2 * day, 2)
            .await
            .expect("a prune");
        chunks.push(chunk.deleted);
        if !chunk.more {
            break;
        }
    }
    assert_eq!(chunks, [2, 2, 1]);
    assert_eq!(figures(&store, "production", "1.5.0", 0).await, (2, 1));
    let other = store
        .outcome_figures(OTHER_APP, "production", "1.5.0", 0)
        .await
        .expect("figures");
    assert_eq!(
        (other.attempts, other.failures),
        (1, 1),
        "another app's outcomes stay"
    );
    let again = store
        .prune_outcomes(APP, NOW_MS - 2 * day, 2)
        .await
        .expect("a second prune");
    assert_eq!((again.deleted, again.more), (0, false));

    // Rows that share the time of a chunk's last row go with it: a chunk never stops at a time.
    let tied: Vec<Write> = (0..3)
        .map(|i| {
            outcome(
                &format!("tied{i}"),
                "1.6.0",
                "production",
                false,
                NOW_MS - 5 * day,
            )
        })
        .collect();
    apply(&store, &tied).await;
    let chunk = store
        .prune_outcomes(APP, NOW_MS - 2 * day, 2)
        .await
        .expect("a prune of ties");
    assert_eq!(chunk.deleted, 3);
    assert_eq!(figures(&store, "production", "1.6.0", 0).await, (0, 0));

    // old0 failed ten days ago; its row is gone, so its set today is a success.
    apply(&store, &[outcome("old0", "1.5.0", "production", false, NOW_MS)]).await;
    assert_eq!(figures(&store, "production", "1.5.0", NOW_MS).await, (2, 0));
}

/// Sightings of one device from several batches wait in the log together and merge as the
/// upserts would have applied them one by one: the newest wins, an older one changes nothing,
/// a None custom id or default channel keeps the one before.
async fn sightings_waiting_in_the_log_merge_as_upserts_would(database: &TestDatabase) {
    let store = database.open().await;
    let sighting =
        |device: &str, at_ms: i64, version: &str, custom_id: Option<&str>, channel: Option<&str>| {
            Write::SeenDevice(DeviceSeen {
                version_name: version.to_owned(),
                custom_id: custom_id.map(str::to_owned),
                default_channel: channel.map(str::to_owned),
                ..seen(device, at_ms)
            })
        };
    for batch in [
        vec![sighting("d1", NOW_MS + 5, "1.0.0", Some("first"), Some("beta"))],
        vec![sighting("d1", NOW_MS + 7, "1.1.0", None, None)],
        // Older than the one before: changes nothing, not even the custom id.
        vec![sighting("d1", NOW_MS + 6, "0.9.0", Some("stale"), Some("stale"))],
        // As old as the latest: the later one wins.
        vec![sighting("d1", NOW_MS + 7, "1.2.0", None, Some("production"))],
        vec![sighting("d2", NOW_MS + 9, "2.0.0", Some("two"), None)],
        vec![sighting("d2", NOW_MS + 8, "1.9.0", None, Some("stale"))],
    ] {
        apply(&store, &batch).await;
    }
    // A row already in devices, older than what the log holds.
    let d1 = device(&store, "d1").await.expect("d1");
    assert_eq!(
        (
            d1.version_name.as_str(),
            d1.last_seen_ms,
            d1.custom_id.as_deref(),
            d1.default_channel.as_deref()
        ),
        ("1.2.0", NOW_MS + 7, Some("first"), Some("production"))
    );
    let d2 = device(&store, "d2").await.expect("d2");
    assert_eq!(
        (
            d2.version_name.as_str(),
            d2.last_seen_ms,
            d2.custom_id.as_deref(),
            d2.default_channel.as_deref()
        ),
        ("2.0.0", NOW_MS + 9, Some("two"), None)
    );
    // Merged rows keep their own columns; a later log of older sightings changes nothing.
    apply(&store, &[sighting("d1", NOW_MS + 1, "0.1.0", Some("old"), None)]).await;
    apply(&store, &[sighting("d1", NOW_MS + 10, "1.3.0", None, None)]).await;
    assert_eq!(store.compact().await.expect("compact"), 2);
    assert_eq!(store.compact().await.expect("nothing left"), 0);
    let d1 = device(&store, "d1").await.expect("d1");
    assert_eq!(
        (
            d1.version_name.as_str(),
            d1.last_seen_ms,
            d1.custom_id.as_deref(),
            d1.default_channel.as_deref()
        ),
        ("1.3.0", NOW_MS + 10, Some("first"), Some("production"))
    );
}

/// A stats event's sighting refreshes a device that has a row, or that an update check in the
/// same merge creates (before or after it, in its batch or another); it leaves no row, and no
/// active device, for an id that nothing else named.
async fn a_stats_sighting_creates_no_device(database: &TestDatabase) {
    let store = database.open().await;
    let from_stats = |device: &str, at_ms: i64| {
        Write::SeenDevice(DeviceSeen {
            version_name: "1.5.0".to_owned(),
            creates_row: false,
            ..seen(device, at_ms)
        })
    };
    let update_check = |device: &str, at_ms: i64| Write::SeenDevice(seen(device, at_ms));
    apply(&store, &[update_check("known", NOW_MS)]).await;
    store.compact().await.expect("compact");
    for batch in [
        vec![from_stats("known", NOW_MS + 1)],
        vec![from_stats("made-up", NOW_MS + 1)],
        vec![update_check("new", NOW_MS + 2)],
        vec![from_stats("new", NOW_MS + 3)],
        vec![from_stats("late", NOW_MS + 4)],
        vec![update_check("late", NOW_MS + 3)],
        vec![
            from_stats("batched", NOW_MS + 5),
            update_check("batched", NOW_MS + 4),
        ],
    ] {
        apply(&store, &batch).await;
    }
    assert_eq!(
        store.monthly_active_devices(APP, NOW_MS + 10).await.expect("MAU"),
        4,
        "known, new, late and batched"
    );
    store.compact().await.expect("compact");
    for device_id in ["known", "new", "late", "batched"] {
        let row = device(&store, device_id).await;
        assert_eq!(
            row.map(|row| row.version_name),
            Some("1.5.0".to_owned()),
            "{device_id}: the stats event's version"
        );
    }
    assert_eq!(device(&store, "made-up").await, None);
    assert_eq!(
        store.monthly_active_devices(APP, NOW_MS + 10).await.expect("MAU"),
        4
    ); // A stats event's install of a version that is no Bundle changes a row, creates none.
    let installed = |device: &str| Write::CurrentBundle {
        app_id: APP.to_owned(),
        device_id: device.to_owned(),
        version: "9.9.9".to_owned(),
        creates_row: false,
    };
    apply(&store, &[installed("known"), installed("made-up")]).await;
    let known = device(&store, "known").await.expect("known");
    assert_eq!(known.current_bundle.as_deref(), Some("9.9.9"));
    assert_eq!(device(&store, "made-up").await, None);
}

/// Many devices in one batch (several statement sizes) all count.
async fn outcomes_of_many_devices_all_count(database: &TestDatabase) {
    let store = database.open().await;
    let batch: Vec<Write> = (0..1_000)
        .map(|i| {
            outcome(
                &format!("many-{i:04}"),
                "1.5.0",
                "production",
                i % 10 == 0,
                NOW_MS + i,
            )
        })
        .collect();
    apply(&store, &batch).await;
    assert_eq!(figures(&store, "production", "1.5.0", 0).await, (1_000, 100));
    assert_eq!(
        figures(&store, "production", "1.5.0", NOW_MS + 500).await,
        (500, 50)
    );
}

/// Rollout states are saved (replacing the previous one), listed in order, deleted, and on a
/// persistent store still there after a reopen.
async fn rollout_states_are_saved_listed_and_deleted(database: &TestDatabase) {
    let row = |namespace: &str, name: &str, json: &str, at_ms: i64| RolloutStateRow {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        json: json.to_owned(),
        at_ms,
    };
    let store = database.open().await;
    assert_eq!(store.rollout_states().await.expect("states"), vec![]);
    let first = r#"{"phase":"Progressing","currentStepIndex":0}"#;
    let second = r#"{"phase":"Paused","currentStepIndex":1,"note":"é ✓"}"#;
    store
        .save_rollout_state("shop", "shop-1.5.0", first, NOW_MS)
        .await
        .expect("save");
    store
        .save_rollout_state("default", "zeta", "{}", NOW_MS + 1)
        .await
        .expect("save");
    store
        .save_rollout_state("shop", "alpha", "{}", NOW_MS + 2)
        .await
        .expect("save");
    store
        .save_rollout_state("shop", "shop-1.5.0", second, NOW_MS + 3)
        .await
        .expect("replace");
    let expected = vec![
        row("default", "zeta", "{}", NOW_MS + 1),
        row("shop", "alpha", "{}", NOW_MS + 2),
        row("shop", "shop-1.5.0", second, NOW_MS + 3),
    ];
    assert_eq!(store.rollout_states().await.expect("states"), expected);
    assert!(store.delete_rollout_state("shop", "alpha").await.expect("delete"));
    assert!(
        !store
            .delete_rollout_state("shop", "alpha")
            .await
            .expect("delete again")
    );
    assert!(
        !store
            .delete_rollout_state("other", "zeta")
            .await
            .expect("another namespace")
    );
    drop(store);
    if database.persistent() {
        let reopened = database.open().await;
        assert_eq!(
            reopened.rollout_states().await.expect("states"),
            vec![expected[0].clone(), expected[2].clone()]
        );
    }
}

/// Channel histories are saved (replacing the previous one), listed in order, deleted, and on a
/// persistent store still there after a reopen.
async fn channel_histories_are_saved_listed_and_deleted(database: &TestDatabase) {
    let row = |namespace: &str, name: &str, json: &str, at_ms: i64| ChannelHistoryRow {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        json: json.to_owned(),
        at_ms,
    };
    let store = database.open().await;
    assert_eq!(store.channel_histories().await.expect("histories"), vec![]);
    let first = r#"[{"bundle":"shop-1.0.0","version":"1.0.0"}]"#;
    let second = r#"[{"bundle":"shop-1.0.0","version":"1.0.0"},{"bundle":"shop-1.1.0","version":"1.1.0"}]"#;
    for (namespace, name, json, at_ms) in [
        ("shop", "production", first, NOW_MS),
        ("default", "beta", "[]", NOW_MS + 1),
        ("shop", "production", second, NOW_MS + 2),
    ] {
        store
            .save_channel_history(namespace, name, json, at_ms)
            .await
            .expect("save");
    }
    let expected = vec![
        row("default", "beta", "[]", NOW_MS + 1),
        row("shop", "production", second, NOW_MS + 2),
    ];
    assert_eq!(store.channel_histories().await.expect("histories"), expected);
    assert!(
        store
            .delete_channel_history("default", "beta")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_channel_history("default", "beta")
            .await
            .expect("delete again")
    );
    drop(store);
    if database.persistent() {
        let reopened = database.open().await;
        assert_eq!(
            reopened.channel_histories().await.expect("histories"),
            vec![expected[1].clone()]
        );
    }
}

/// Identical increments add up within a batch and across batches; reads filter by app,
/// version and day.
async fn counters_add_up_within_and_across_batches(database: &TestDatabase) {
    let store = database.open().await;
    let day = NOW_MS / DAY_MS;
    apply(
        &store,
        &[
            count("1.0.0", "set", day, 1),
            count("1.0.0", "set", day, 2),
            count("1.0.0", "download_fail", day, 1),
            count("1.0.0", "set", day - 1, 5),
            count("1.0.0", "set", day - 3, 7),
            count("1.0.0", "set", day, 3),
            count("2.0.0", "set", day, 100),
            Write::Count {
                app_id: OTHER_APP.to_owned(),
                version: "1.0.0".to_owned(),
                action: "set".to_owned(),
                day,
                n: 1000,
            },
        ],
    )
    .await;
    apply(
        &store,
        &[count("1.0.0", "set", day, 4), count("1.0.0", "get", day - 1, 1)],
    )
    .await;

    let counter = |version: &str, action: &str, day: i64, count: i64| Counter {
        version: version.to_owned(),
        action: action.to_owned(),
        day,
        count,
    };
    assert_eq!(
        store.counters(APP, "1.0.0", day - 1).await.expect("counters"),
        vec![
            counter("1.0.0", "get", day - 1, 1),
            counter("1.0.0", "set", day - 1, 5),
            counter("1.0.0", "download_fail", day, 1),
            counter("1.0.0", "set", day, 10),
        ]
    );
    assert_eq!(store.counters(APP, "1.0.0", 0).await.expect("counters").len(), 5);
    assert_eq!(
        store.counters(APP, "2.0.0", day).await.expect("counters"),
        vec![counter("2.0.0", "set", day, 100)]
    );
    assert_eq!(
        store.counters(OTHER_APP, "1.0.0", day).await.expect("counters"),
        vec![counter("1.0.0", "set", day, 1000)]
    );
    assert_eq!(
        store.counters(APP, "1.0.0", day + 1).await.expect("counters"),
        vec![]
    );
}

/// Failed marks and overrides reach a memory loaded from the store; a cleared override is gone,
/// from the row and from memory; clearing an unknown device creates nothing.
async fn overrides_and_failed_marks_load_into_memory(database: &TestDatabase) {
    let store = database.open().await;
    apply(
        &store,
        &[
            failed("d1", "1.5.0", NOW_MS - 10),
            failed("d1", "1.6.0", NOW_MS),
            failed("d1", "1.5.0", NOW_MS + 5),
            set_override("d1", "beta"),
            set_override("d2", "alpha"),
            set_override("d2", "nightly"),
            set_override("d3", "beta"),
            clear_override("d3"),
            clear_override("never-seen"),
        ],
    )
    .await;
    let memory = store.load_memory().await.expect("memory");
    assert_eq!(memory.facts(APP, "d1"), facts(Some("beta"), &["1.5.0", "1.6.0"]));
    assert_eq!(memory.facts(APP, "d2"), facts(Some("nightly"), &[]));
    assert_eq!(memory.facts(APP, "d3"), DeviceFacts::default());
    assert_eq!(memory.facts(OTHER_APP, "d1"), DeviceFacts::default());
    assert_eq!(device(&store, "never-seen").await, None);

    // An override may come before any sighting: the row exists, not yet seen.
    let d2 = device(&store, "d2")
        .await
        .expect("the row of an overridden device");
    assert_eq!(d2.channel_override.as_deref(), Some("nightly"));
    assert_eq!((d2.last_seen_ms, d2.platform.as_str()), (0, ""));
    assert_eq!(store.monthly_active_devices(APP, NOW_MS).await.expect("MAU"), 0);

    apply(
        &store,
        &[clear_override("d1"), Write::SeenDevice(seen("d2", NOW_MS))],
    )
    .await;
    assert_eq!(device(&store, "d1").await.expect("d1").channel_override, None);
    let d2 = device(&store, "d2").await.expect("d2");
    assert_eq!(
        d2.channel_override.as_deref(),
        Some("nightly"),
        "a sighting keeps the override"
    );
    assert_eq!(d2.platform, "ios");
    let memory = store.load_memory().await.expect("memory");
    assert_eq!(memory.facts(APP, "d1"), facts(None, &["1.5.0", "1.6.0"]));
    assert_eq!(memory.facts(APP, "d2"), facts(Some("nightly"), &[]));
}

/// What was written is there after the store is dropped and opened again.
async fn overrides_and_failed_marks_survive_a_reopen(database: &TestDatabase) {
    {
        let store = database.open().await;
        apply(
            &store,
            &[
                failed("d1", "1.5.0", NOW_MS),
                set_override("d1", "beta"),
                set_override("d2", "alpha"),
                Write::SeenDevice(seen("d3", NOW_MS)),
                count("1.5.0", "set", 1, 2),
            ],
        )
        .await;
        apply(&store, &[clear_override("d2")]).await;
    }
    let reopened = database.open().await;
    let memory = reopened.load_memory().await.expect("memory");
    assert_eq!(memory.facts(APP, "d1"), facts(Some("beta"), &["1.5.0"]));
    assert_eq!(memory.facts(APP, "d2"), DeviceFacts::default());
    assert!(device(&reopened, "d3").await.is_some());
    assert_eq!(
        reopened.counters(APP, "1.5.0", 0).await.expect("counters")[0].count,
        2
    );
}

/// Only devices of the app seen in the 30 days before now count.
async fn monthly_active_devices_counts_the_last_30_days(database: &TestDatabase) {
    let store = database.open().await;
    let other_app = DeviceSeen {
        app_id: OTHER_APP.to_owned(),
        ..seen("o1", NOW_MS)
    };
    apply(
        &store,
        &[
            Write::SeenDevice(seen("now", NOW_MS)),
            Write::SeenDevice(seen("yesterday", NOW_MS - DAY_MS)),
            Write::SeenDevice(seen("29-days-ago", NOW_MS - 29 * DAY_MS)),
            Write::SeenDevice(seen("almost-30-days-ago", NOW_MS - 30 * DAY_MS + 1)),
            Write::SeenDevice(seen("30-days-ago", NOW_MS - 30 * DAY_MS)),
            Write::SeenDevice(seen("31-days-ago", NOW_MS - 31 * DAY_MS)),
            Write::SeenDevice(seen("last-year", NOW_MS - 365 * DAY_MS)),
            Write::SeenDevice(other_app),
            set_override("override-only", "beta"),
        ],
    )
    .await;
    // The same device seen twice counts once.
    apply(&store, &[Write::SeenDevice(seen("yesterday", NOW_MS - 2))]).await;
    assert_eq!(store.monthly_active_devices(APP, NOW_MS).await.expect("MAU"), 4);
    assert_eq!(
        store
            .monthly_active_devices(OTHER_APP, NOW_MS)
            .await
            .expect("MAU"),
        1
    );
    assert_eq!(
        store
            .monthly_active_devices("com.example.none", NOW_MS)
            .await
            .expect("MAU"),
        0
    );
    // 31 days later only the devices seen since then count: none.
    assert_eq!(
        store
            .monthly_active_devices(APP, NOW_MS + 31 * DAY_MS)
            .await
            .expect("MAU"),
        0
    );
}

/// A push shows in memory before anything is written; flush writes everything, across several
/// batches; a flush with nothing pending returns at once.
async fn the_write_queue_updates_memory_at_once_and_flush_writes_everything(database: &TestDatabase) {
    let store = database.open().await;
    let memory = DeviceMemory::empty();
    // Batches of 7, and no timer in the test's time: only the batch size and flush write.
    let (queue, flusher) =
        WriteQueue::start(store.clone(), memory.clone(), 1000, 7, Duration::from_secs(3600));
    assert!(queue.push(failed("d1", "1.5.0", NOW_MS)));
    assert!(queue.push(set_override("d1", "beta")));
    assert_eq!(
        memory.facts(APP, "d1"),
        facts(Some("beta"), &["1.5.0"]),
        "memory sees a push at once"
    );

    let day = NOW_MS / DAY_MS;
    for i in 0..40 {
        let pusher = queue.clone();
        assert!(pusher.push(Write::SeenDevice(seen(&format!("device-{i}"), NOW_MS))));
        assert!(pusher.push(count("1.5.0", "get", day, 1)));
    }
    assert!(queue.push(clear_override("d1")));
    assert_eq!(memory.facts(APP, "d1"), facts(None, &["1.5.0"]));
    queue.flush().await.expect("flush");

    assert_eq!(store.monthly_active_devices(APP, NOW_MS).await.expect("MAU"), 40);
    assert_eq!(
        store.counters(APP, "1.5.0", day).await.expect("counters"),
        vec![Counter {
            version: "1.5.0".to_owned(),
            action: "get".to_owned(),
            day,
            count: 40
        }]
    );
    let loaded = store.load_memory().await.expect("memory");
    assert_eq!(loaded.facts(APP, "d1"), facts(None, &["1.5.0"]));
    assert_eq!((queue.dropped(), queue.rejected()), (0, 0));

    let started = Instant::now();
    queue.flush().await.expect("an empty flush");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Dropping every clone ends the flusher.
    drop(queue);
    tokio::time::timeout(Duration::from_secs(10), flusher)
        .await
        .expect("the flusher ends when the queue is dropped")
        .expect("the flusher does not panic");
}

/// Without flush, a batch is written flush_every after its first write.
async fn the_write_queue_writes_on_its_own(database: &TestDatabase) {
    let store = database.open().await;
    let (queue, _flusher) = WriteQueue::start(
        store.clone(),
        DeviceMemory::empty(),
        100,
        1000,
        Duration::from_millis(50),
    );
    assert!(queue.push(Write::SeenDevice(seen("d1", NOW_MS))));
    let deadline = Instant::now() + Duration::from_secs(10);
    while device(&store, "d1").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the queue did not write within 10 s without a flush"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Capacity bounds the writes not yet written: with capacity 1 and a flusher that holds its
/// batch (no timer, a large batch size), the second push is dropped and counted, whatever the
/// scheduling. Memory still sees it. After a flush there is room again.
async fn a_full_write_queue_drops_and_counts(database: &TestDatabase) {
    let store = database.open().await;
    let memory = DeviceMemory::empty();
    let (queue, _flusher) =
        WriteQueue::start(store.clone(), memory.clone(), 1, 1000, Duration::from_secs(3600));
    assert!(queue.push(Write::SeenDevice(seen("kept", NOW_MS))));
    // Let the flusher take the first write into its batch: that frees no room.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!queue.push(Write::SeenDevice(seen("dropped", NOW_MS))));
    assert!(!queue.push(failed("dropped", "1.5.0", NOW_MS)));
    assert_eq!(queue.dropped(), 2);
    assert_eq!(
        memory.facts(APP, "dropped"),
        facts(None, &["1.5.0"]),
        "memory is updated even when dropped"
    );

    queue.flush().await.expect("flush");
    assert!(device(&store, "kept").await.is_some());
    assert_eq!(device(&store, "dropped").await, None);
    assert_eq!(
        store.load_memory().await.expect("memory").facts(APP, "dropped"),
        DeviceFacts::default()
    );

    assert!(
        queue.push(Write::SeenDevice(seen("after-flush", NOW_MS))),
        "a flush frees the room"
    );
    queue.flush().await.expect("flush");
    assert!(device(&store, "after-flush").await.is_some());
    assert_eq!(queue.dropped(), 2);
}

/// What a commit acknowledges is in the database when it returns (a second store opened on
/// the same database reads it), and only then in memory; concurrent commits share
/// transactions and all land; an async batch that never comes due does not hold them up.
async fn a_commit_is_stored_when_it_returns(database: &TestDatabase) {
    let store = database.open().await;
    let memory = DeviceMemory::empty();
    let (queue, _flusher) = WriteQueue::start(
        store.clone(),
        memory.clone(),
        1000,
        1000,
        Duration::from_secs(3600),
    );
    assert!(queue.push(Write::SeenDevice(seen("sighted", NOW_MS))));
    let day = NOW_MS / DAY_MS;
    queue
        .commit(
            vec![failed("d1", "1.5.0", NOW_MS), set_override("d1", "beta")],
            Duration::from_secs(10),
        )
        .await
        .expect("committed");
    assert_eq!(memory.facts(APP, "d1"), facts(Some("beta"), &["1.5.0"]));
    let other = database.open().await;
    assert_eq!(
        other.load_memory().await.expect("memory").facts(APP, "d1"),
        facts(Some("beta"), &["1.5.0"]),
        "committed before the answer"
    );
    let commits = (0..50).map(|_| {
        let queue = queue.clone();
        async move {
            queue
                .commit(vec![count("1.5.0", "set", day, 1)], Duration::from_secs(10))
                .await
        }
    });
    for outcome in futures::future::join_all(commits).await {
        outcome.expect("committed");
    }
    let counted = other.counters(APP, "1.5.0", day).await.expect("counters");
    assert_eq!(counted.iter().map(|c| c.count).sum::<i64>(), 50);
    assert_eq!(
        device(&other, "sighted").await,
        None,
        "the async batch is not due yet"
    );
}

/// A store that cannot be reached fails a commit at once as unavailable, and nothing of it is
/// in memory.
async fn a_commit_to_a_store_that_is_gone_is_unavailable(database: &TestDatabase) {
    let store = database.open().await;
    let memory = DeviceMemory::empty();
    let (queue, _flusher) = WriteQueue::start(
        store.clone(),
        memory.clone(),
        1000,
        1000,
        Duration::from_secs(3600),
    );
    store.close().await;
    let outcome = queue
        .commit(vec![set_override("d1", "beta")], Duration::from_secs(10))
        .await;
    assert_eq!(outcome, Err(CommitError::Unavailable));
    assert_eq!(memory.facts(APP, "d1"), DeviceFacts::default());
}

/// Runs one scenario on a fresh database of the backend, and removes the database if it passes.
macro_rules! scenarios_on {
    ($backend:ident: $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let database = TestDatabase::new(Backend::$backend, stringify!($scenario)).await;
                super::$scenario(&database).await;
                database.remove().await;
            }
        )+
    };
}

mod sqlite_file {
    use super::*;
    scenarios_on!(SqliteFile:
        opening_runs_the_migrations_and_opening_again_is_fine,
        concurrent_opens_of_a_fresh_database_all_succeed,
        a_seen_device_keeps_its_last_values,
        counters_add_up_within_and_across_batches,
        overrides_and_failed_marks_load_into_memory,
        overrides_and_failed_marks_survive_a_reopen,
        monthly_active_devices_counts_the_last_30_days,
        the_write_queue_updates_memory_at_once_and_flush_writes_everything,
        the_write_queue_writes_on_its_own,
        a_full_write_queue_drops_and_counts,
        a_large_batch_writes_every_device,
        outcomes_count_devices_with_sticky_failures,
        old_outcomes_are_pruned_per_app_in_chunks,
        outcomes_of_many_devices_all_count,
        sightings_waiting_in_the_log_merge_as_upserts_would,
        a_stats_sighting_creates_no_device,
        rollout_states_are_saved_listed_and_deleted,
        channel_histories_are_saved_listed_and_deleted,
        a_commit_is_stored_when_it_returns,
        a_commit_to_a_store_that_is_gone_is_unavailable,
    );

    /// The `detail` lines of an `EXPLAIN QUERY PLAN` query.
    async fn plan_of<'q>(
        connection: &mut sqlx::sqlite::SqliteConnection,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Vec<String> {
        use sqlx::Row;
        query
            .fetch_all(connection)
            .await
            .expect("plan")
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect()
    }

    /// The figures are one range scan of the covering index (never a scan of the table).
    #[tokio::test]
    async fn outcome_figures_read_only_their_index() {
        use sqlx::sqlite::SqliteConnection;
        let database = TestDatabase::new(Backend::SqliteFile, "figures_plan").await;
        let store = database.open().await;
        let mut connection = SqliteConnection::connect(&database.url).await.expect("connect");
        let plan = plan_of(
            &mut connection,
            sqlx::query(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) AS attempts, COUNT(CASE WHEN failed <> 0 THEN 1 END) \
                 AS failures FROM device_outcomes WHERE app_id = ?1 AND channel = ?2 AND version = ?3 \
                 AND at_ms >= ?4",
            )
            .bind(APP)
            .bind("production")
            .bind("1.5.0")
            .bind(0_i64),
        )
        .await;
        assert_eq!(
            plan,
            vec![
                "SEARCH device_outcomes USING COVERING INDEX device_outcomes_by_channel_and_time \
                 (app_id=? AND channel=? AND version=? AND at_ms>?)"
            ]
        );
        let _ = connection.close().await;
        drop(store);
        database.remove().await;
    }

    /// A prune reads and deletes one app's outcomes through the `(app_id, at_ms)` index.
    #[tokio::test]
    async fn a_prune_reads_outcomes_by_app_and_time() {
        use sqlx::sqlite::SqliteConnection;
        let database = TestDatabase::new(Backend::SqliteFile, "prune_plan").await;
        let store = database.open().await;
        let mut connection = SqliteConnection::connect(&database.url).await.expect("connect");
        // The two statements of DeviceStore::prune_outcomes.
        for sql in [
            "EXPLAIN QUERY PLAN SELECT at_ms FROM device_outcomes WHERE app_id = ?1 AND at_ms < ?2 \
             ORDER BY at_ms LIMIT 1 OFFSET ?3",
            "EXPLAIN QUERY PLAN DELETE FROM device_outcomes WHERE app_id = ?1 AND at_ms <= ?2",
        ] {
            let plan = plan_of(
                &mut connection,
                sqlx::query(sql).bind(APP).bind(NOW_MS).bind(1000_i64),
            )
            .await;
            assert_eq!(plan.len(), 1, "{sql}: {plan:#?}");
            assert!(
                plan[0].starts_with("SEARCH device_outcomes USING")
                    && plan[0].contains("INDEX device_outcomes_by_app_and_time (app_id=? AND at_ms<"),
                "{sql}: {plan:#?}"
            );
        }
        let _ = connection.close().await;
        drop(store);
        database.remove().await;
    }

    /// The file is created in WAL mode.
    #[tokio::test]
    async fn the_file_is_in_wal_mode() {
        let database = TestDatabase::new(Backend::SqliteFile, "wal").await;
        let store = database.open().await;
        apply(&store, &[Write::SeenDevice(seen("d1", NOW_MS))]).await;
        let Cleanup::Folder(folder) = &database.cleanup else {
            panic!("a file database has a folder")
        };
        assert!(
            folder.join("devices.db-wal").exists(),
            "no WAL file beside the database"
        );
        drop(store);
        database.remove().await;
    }
}

// Every pooled connection to `sqlite::memory:` would be a database of its own: the store keeps
// one connection for the pool's life. Persistence across opens does not apply (a new open is a
// new database), nor do concurrent opens of one database.
mod sqlite_memory {
    use super::*;
    scenarios_on!(SqliteMemory:
        opening_runs_the_migrations_and_opening_again_is_fine,
        a_seen_device_keeps_its_last_values,
        counters_add_up_within_and_across_batches,
        overrides_and_failed_marks_load_into_memory,
        monthly_active_devices_counts_the_last_30_days,
        the_write_queue_updates_memory_at_once_and_flush_writes_everything,
        the_write_queue_writes_on_its_own,
        a_full_write_queue_drops_and_counts,
        a_large_batch_writes_every_device,
        outcomes_count_devices_with_sticky_failures,
        old_outcomes_are_pruned_per_app_in_chunks,
        outcomes_of_many_devices_all_count,
        sightings_waiting_in_the_log_merge_as_upserts_would,
        a_stats_sighting_creates_no_device,
        rollout_states_are_saved_listed_and_deleted,
        channel_histories_are_saved_listed_and_deleted,
        a_commit_to_a_store_that_is_gone_is_unavailable,
    );
}

mod postgres {
    use super::*;
    scenarios_on!(Postgres:
        opening_runs_the_migrations_and_opening_again_is_fine,
        concurrent_opens_of_a_fresh_database_all_succeed,
        a_seen_device_keeps_its_last_values,
        counters_add_up_within_and_across_batches,
        overrides_and_failed_marks_load_into_memory,
        overrides_and_failed_marks_survive_a_reopen,
        monthly_active_devices_counts_the_last_30_days,
        the_write_queue_updates_memory_at_once_and_flush_writes_everything,
        the_write_queue_writes_on_its_own,
        a_full_write_queue_drops_and_counts,
        a_large_batch_writes_every_device,
        outcomes_count_devices_with_sticky_failures,
        old_outcomes_are_pruned_per_app_in_chunks,
        outcomes_of_many_devices_all_count,
        sightings_waiting_in_the_log_merge_as_upserts_would,
        a_stats_sighting_creates_no_device,
        rollout_states_are_saved_listed_and_deleted,
        channel_histories_are_saved_listed_and_deleted,
        a_commit_is_stored_when_it_returns,
        a_commit_to_a_store_that_is_gone_is_unavailable,
    );

    /// A write PostgreSQL refuses (a NUL byte in text) fails its batch with an error, and in the
    /// queue it is dropped and counted while the other writes of its batch are written.
    #[tokio::test]
    async fn a_write_the_database_rejects_does_not_block_the_queue() {
        let database = TestDatabase::new(Backend::Postgres, "rejected_write").await;
        let store = database.open().await;
        let poisoned = Write::SeenDevice(seen("bad\0device", NOW_MS));
        let error = store
            .apply(std::slice::from_ref(&poisoned))
            .await
            .expect_err("PostgreSQL refuses a NUL byte in text");
        assert!(matches!(error, StoreError::Database { .. }), "{error:?}");

        let (queue, _flusher) = WriteQueue::start(
            store.clone(),
            DeviceMemory::empty(),
            100,
            100,
            Duration::from_secs(3600),
        );
        assert!(queue.push(Write::SeenDevice(seen("good-1", NOW_MS))));
        assert!(queue.push(poisoned));
        assert!(queue.push(Write::SeenDevice(seen("good-2", NOW_MS))));
        tokio::time::timeout(Duration::from_secs(30), queue.flush())
            .await
            .expect("the flush ends: the bad write does not block the queue")
            .expect("flush");
        assert!(device(&store, "good-1").await.is_some());
        assert!(device(&store, "good-2").await.is_some());
        assert_eq!((queue.rejected(), queue.dropped()), (1, 0));
        drop(store);
        database.remove().await;
    }

    /// A request whose writes PostgreSQL refuses (a NUL byte in text) fails alone; the requests
    /// that shared its transaction are committed.
    #[tokio::test]
    async fn a_commit_the_database_refuses_fails_alone() {
        let database = TestDatabase::new(Backend::Postgres, "refused_commit").await;
        let store = database.open().await;
        let (queue, _flusher) = WriteQueue::start(
            store.clone(),
            DeviceMemory::empty(),
            100,
            100,
            Duration::from_secs(3600),
        );
        let commit = |device: &'static str| {
            let queue = queue.clone();
            async move {
                queue
                    .commit(vec![failed(device, "1.5.0", NOW_MS)], Duration::from_secs(30))
                    .await
            }
        };
        let (good, bad, other) = tokio::join!(commit("good-1"), commit("bad\0device"), commit("good-2"));
        assert_eq!((good, bad, other), (Ok(()), Err(CommitError::Refused), Ok(())));
        let memory = store.load_memory().await.expect("memory");
        assert_eq!(memory.facts(APP, "good-1"), facts(None, &["1.5.0"]));
        assert_eq!(memory.facts(APP, "good-2"), facts(None, &["1.5.0"]));
        assert_eq!(queue.rejected(), 1);
        drop(store);
        database.remove().await;
    }

    /// Errors about the real server (a wrong password, a missing database) never show the password.
    #[tokio::test]
    async fn connection_errors_of_the_real_server_hide_the_password() {
        let server = postgres_server_url();
        let password = server
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(user_info, _)| user_info.split_once(':'))
            .map(|(_, password)| password.to_owned())
            .expect("the test server's URL has a password");

        let missing_database = with_database(server, &unique_name("missing"));
        let error = DeviceStore::open(&missing_database)
            .await
            .expect_err("no such database");
        let message = error.to_string();
        assert!(matches!(error, StoreError::Connect { .. }), "{error:?}");
        assert!(message.contains("does not exist"), "{message}");
        assert!(
            !message.contains(&password) && !format!("{error:?}").contains(&password),
            "{message}"
        );
        assert!(message.contains("ota:****@"), "{message}");

        let wrong_password = "wrong-password-8d1c";
        let wrong = server.replacen(&format!(":{password}@"), &format!(":{wrong_password}@"), 1);
        let error = DeviceStore::open(&wrong).await.expect_err("a wrong password");
        let message = error.to_string();
        assert!(message.contains("password authentication failed"), "{message}");
        assert!(
            !message.contains(wrong_password) && !format!("{error:?}").contains(wrong_password),
            "{message}"
        );

        let database = TestDatabase::new(Backend::Postgres, "debug_output").await;
        let store = database.open().await;
        let debug = format!("{store:?}");
        assert!(!debug.contains(&password) && debug.contains("****"), "{debug}");
        drop(store);
        database.remove().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input: clear errors, never a panic, never a password.

#[tokio::test]
async fn an_unknown_scheme_is_a_clear_error() {
    for url in [
        "mysql://root:hunter2-secret@db:3306/ota",
        "redis://db",
        "devices.db",
        "",
    ] {
        let error = DeviceStore::open(url).await.expect_err("not a supported URL");
        let message = error.to_string();
        assert!(
            matches!(error, StoreError::UnsupportedUrl { .. }),
            "{url}: {error:?}"
        );
        assert!(message.contains("sqlite://PATH"), "{message}");
        assert!(!message.contains("hunter2-secret"), "{message}");
    }
    let error = DeviceStore::open("mysql://root:hunter2-secret@db:3306/ota")
        .await
        .expect_err("mysql");
    assert!(error.to_string().contains("unknown scheme 'mysql'"), "{error}");
}

#[tokio::test]
async fn a_file_in_a_missing_folder_is_a_clear_error() {
    let folder = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(unique_name("missing"))
        .join("nested");
    let url = format!("sqlite://{}", folder.join("devices.db").display());
    let error = DeviceStore::open(&url)
        .await
        .expect_err("the folder does not exist");
    assert!(
        matches!(&error, StoreError::MissingFolder { folder: missing, .. } if *missing == folder),
        "{error:?}"
    );
    assert!(error.to_string().contains("does not exist"), "{error}");
    assert!(!folder.exists(), "the store must not create folders");

    // A folder where the file should be.
    let folder_as_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_name("folder"));
    std::fs::create_dir_all(&folder_as_file).expect("a folder");
    let error = DeviceStore::open(&format!("sqlite://{}", folder_as_file.display()))
        .await
        .expect_err("a folder is no database");
    assert!(error.to_string().contains("is a folder"), "{error}");
    let _ = std::fs::remove_dir_all(folder_as_file);
}

#[tokio::test]
async fn a_postgres_error_never_prints_the_password() {
    // Port 1 on the loopback refuses at once.
    let cases = [
        (
            "postgres://ota:Sup3r-S3cret-Pw@127.0.0.1:1/ota",
            "Sup3r-S3cret-Pw",
        ),
        (
            "postgres://ota:p%40ss%3Aw0rd-xyz@127.0.0.1:1/ota?sslmode=disable",
            "w0rd-xyz",
        ),
        (
            "postgresql://ota@127.0.0.1:1/ota?password=Query-Secret-123",
            "Query-Secret-123",
        ),
    ];
    for (url, secret) in cases {
        let error = DeviceStore::open(url)
            .await
            .expect_err("nothing listens on port 1");
        let message = error.to_string();
        assert!(matches!(error, StoreError::Connect { .. }), "{error:?}");
        assert!(!message.contains(secret), "the password leaked: {message}");
        assert!(
            !format!("{error:?}").contains(secret),
            "the password leaked in Debug: {error:?}"
        );
        assert!(
            message.contains("127.0.0.1:1") && message.contains("****"),
            "{message}"
        );
    }
}
