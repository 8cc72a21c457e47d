//! [`DeviceStore`]: the database behind the update server's device state, through sqlx's `Any`
//! driver, so one implementation (portable SQL, one migration folder) serves SQLite and
//! PostgreSQL.

use std::{
    cmp::Ordering,
    collections::BTreeMap,
    fmt,
    str::FromStr,
    sync::{Arc, atomic::AtomicI64},
    time::Duration,
};

use sqlx::{
    AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Row,
    any::{AnyConnectOptions, AnyPoolOptions, AnyRow},
};

use super::{
    Counter, DeviceMemory, DeviceRecord, DeviceSeen, OutcomeFigures, OutcomeReport, PrunedOutcomes,
    RolloutStateRow, StoreError, Write,
    location::{Location, UrlSecrets, redact_url},
    memory::RememberedApps,
};

/// How long opening waits for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections to an SQLite file: one writer at a time in any case; WAL lets readers run beside it.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// Connections to PostgreSQL, per replica.
const POSTGRES_MAX_CONNECTIONS: u32 = 8;
/// The window of [`DeviceStore::monthly_active_devices`].
const MONTH_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// The SQLite preparation of this process (the switch to WAL, then the migrations) runs one store
/// at a time: SQLite's migrator takes no lock, so two stores opening the same file at once would
/// both try to create the tables, and the switch to WAL needs the file to itself. (PostgreSQL's
/// migrator takes an advisory lock, which covers several replicas.)
static SQLITE_MIGRATIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// How many times a busy file's switch to WAL is tried again, and the pause between tries
/// (5 s in all, sqlx's busy timeout for other statements).
const WAL_SWITCH_TRIES: u32 = 100;
const WAL_SWITCH_PAUSE: Duration = Duration::from_millis(50);

/// Whether SQLite refused a statement because another connection held the file
/// (SQLITE_BUSY or SQLITE_LOCKED, extended codes included).
fn is_busy(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// The device store: devices, per-bundle counters and failed-bundle marks, in an SQLite file or
/// a PostgreSQL database. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct DeviceStore {
    pool: AnyPool,
    backend: Backend,
    /// This store's id in the sightings log (drawn at open; clones share it).
    writer: i64,
    /// The sequence number of this store's next sighting in the log.
    next_seq: Arc<AtomicI64>,
    /// The URL with its password redacted, for logs and `Debug`.
    redacted_url: Arc<str>,
}

/// The database behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Debug for DeviceStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DeviceStore")
            .field("backend", &self.backend)
            .field("url", &self.redacted_url)
            .finish()
    }
}

impl DeviceStore {
    /// `sqlite://PATH` (file created if missing, WAL mode) or `sqlite::memory:`, or `postgres://...`;
    /// runs migrations.
    ///
    /// PATH is taken as written (no percent-decoding, no query parameters); a relative PATH is
    /// relative to the working directory; its folder must exist. An in-memory
    /// database belongs to this store (and its clones) and is gone when the last one is dropped.
    /// Migrations are versioned (table `_sqlx_migrations`): opening again applies only new
    /// ones, and on PostgreSQL replicas opening at once wait for each other. Migrations that a
    /// newer version of the server applied are tolerated, so replicas of two versions can share
    /// a database during a rolling upgrade.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let location = Location::parse(url)?;
        let redacted_url = redact_url(url);
        let secrets = UrlSecrets::of(url);
        let connect_error = |reason: String| StoreError::Connect {
            url: redacted_url.clone(),
            reason: secrets.scrub(&reason),
        };
        let migrate_error = |reason: String| StoreError::Migrate {
            url: redacted_url.clone(),
            reason: secrets.scrub(&reason),
        };
        let options = AnyConnectOptions::from_str(&location.driver_url()?)
            .map_err(|error| connect_error(error.to_string()))?;
        let backend = if location.is_sqlite() {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };

        let pool = match location {
            Location::SqliteMemory => {
                // Every connection to `sqlite::memory:` is a database of its own: one connection,
                // kept open for the life of the pool, is the whole database.
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options)
                    .await
                    .map_err(|error| connect_error(error.to_string()))?;
                let migrated = match pool.acquire().await {
                    Ok(mut connection) => run_migrations(&mut connection).await,
                    Err(error) => Err(error.to_string()),
                };
                if let Err(reason) = migrated {
                    pool.close().await;
                    return Err(migrate_error(reason));
                }
                pool
            }
            Location::SqliteFile { .. } | Location::Postgres { .. } => {
                // One connection first: it reports why the database cannot be reached (the pool
                // would retry a refused connection until its timeout and only say it timed out),
                // and it prepares the database before the pool serves anything.
                let mut connection = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(error)) => return Err(connect_error(error.to_string())),
                    Err(_) => {
                        return Err(connect_error(format!(
                            "no connection within {} s",
                            CONNECT_TIMEOUT.as_secs()
                        )));
                    }
                };
                let prepared = prepare(&mut connection, backend).await;
                let closed = connection.close().await;
                match prepared {
                    Err(Preparation::Connect(reason)) => return Err(connect_error(reason)),
                    Err(Preparation::Migrate(reason)) => return Err(migrate_error(reason)),
                    Ok(()) => {}
                }
                if let Err(error) = closed {
                    tracing::debug!(%error, "closing the store's first connection failed");
                }
                pool_options(backend).connect_lazy_with(options)
            }
        };
        tracing::info!(backend = ?backend, url = %redacted_url, "device store open");
        Ok(DeviceStore {
            pool,
            backend,
            writer: fastrand::i64(..),
            next_seq: Arc::new(AtomicI64::new(0)),
            redacted_url: redacted_url.into(),
        })
    }

    /// Loads what the hot path needs into memory: server-side channel overrides and failed marks.
    pub async fn load_memory(&self) -> Result<DeviceMemory, StoreError> {
        let overrides = sqlx::query(
            "SELECT app_id, device_id, channel_override FROM devices WHERE channel_override IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database("load the channel overrides"))?;
        let failed_marks = sqlx::query(
            "SELECT app_id, device_id, version FROM failed_marks ORDER BY app_id, device_id, at_ms, version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database("load the failed marks"))?;

        let mut loaded = RememberedApps::default();
        for row in &overrides {
            let (app_id, device_id, channel) = three_texts(row, "channel_override")
                .map_err(StoreError::database("read a channel override"))?;
            loaded.set_channel_override(&app_id, &device_id, &channel);
        }
        for row in &failed_marks {
            let (app_id, device_id, version) =
                three_texts(row, "version").map_err(StoreError::database("read a failed mark"))?;
            loaded.mark_failed(&app_id, &device_id, &version);
        }
        tracing::info!(
            overrides = overrides.len(),
            failed_marks = failed_marks.len(),
            "device memory loaded"
        );
        Ok(DeviceMemory::from_loaded(loaded))
    }

    /// Applies a batch of writes in one transaction (aggregating identical counter increments first).
    ///
    /// Writes of one device keep their order (a later override wins); an older sighting
    /// (`seen_at_ms` below the stored one) changes nothing. Sightings are appended to the
    /// sightings log; [`DeviceStore::compact`] merges them into the devices' rows (the reads of
    /// devices compact first, so they see every sighting applied). Rows are written in key order, so
    /// replicas writing the same rows at once do not deadlock.
    pub async fn apply(&self, batch: &[Write]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let plan = WritePlan::of(batch);
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(StoreError::database("begin a transaction"))?;
        for step in &plan.device_steps {
            match step {
                DeviceStep::Sightings(sightings) => {
                    for (shape, chunk) in sighting_chunks(sightings) {
                        let first_seq = self
                            .next_seq
                            .fetch_add(chunk.len() as i64, std::sync::atomic::Ordering::Relaxed);
                        seen_devices_query(self.backend, shape, chunk, self.writer, first_seq)
                            .execute(&mut *transaction)
                            .await
                            .map_err(StoreError::database("write device sightings"))?;
                    }
                }
                DeviceStep::Single(write) => apply_device_write(&mut transaction, write)
                    .await
                    .map_err(StoreError::database("write a device"))?,
            }
        }
        for write in &plan.failed_marks {
            apply_device_write(&mut transaction, write)
                .await
                .map_err(StoreError::database("write a failed mark"))?;
        }
        let outcomes: Vec<(&(&str, &str, &str), &MergedOutcome<'_>)> = plan.outcomes.iter().collect();
        for (shape, chunk) in row_chunks(&outcomes) {
            outcomes_query(self.backend, shape, chunk)
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::database("write device outcomes"))?;
        }
        for ((app_id, version, action, day), n) in &plan.counts {
            sqlx::query(
                "INSERT INTO counters (app_id, version, action, day, count) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (app_id, version, action, day) DO UPDATE SET count = counters.count + excluded.count",
            )
            .bind(*app_id)
            .bind(*version)
            .bind(*action)
            .bind(*day)
            .bind(*n)
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::database("add to a counter"))?;
        }
        transaction
            .commit()
            .await
            .map_err(StoreError::database("commit a batch of writes"))?;
        tracing::debug!(
            writes = batch.len(),
            counters = plan.counts.len(),
            outcomes = plan.outcomes.len(),
            "device store batch written"
        );
        Ok(())
    }

    /// The failure figures of `version` in `channel` of `app_id`: the devices whose latest
    /// outcome with that version (a `set` or a failure, see [`Write::Outcome`]) came at or after
    /// `since_ms` while they were on that channel, and how many of them ever failed with it.
    ///
    /// One range scan of an index that holds every column it reads.
    pub async fn outcome_figures(
        &self,
        app_id: &str,
        channel: &str,
        version: &str,
        since_ms: i64,
    ) -> Result<OutcomeFigures, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS attempts, COUNT(CASE WHEN failed <> 0 THEN 1 END) AS failures \
             FROM device_outcomes WHERE app_id = $1 AND channel = $2 AND version = $3 AND at_ms >= $4",
        )
        .bind(app_id)
        .bind(channel)
        .bind(version)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::database("count the outcomes of a version"))?;
        let count = |column: &str| -> Result<u64, sqlx::Error> {
            let value: i64 = row.try_get(column)?;
            Ok(u64::try_from(value).unwrap_or(0))
        };
        Ok(OutcomeFigures {
            attempts: count("attempts").map_err(StoreError::database("read the outcome figures"))?,
            failures: count("failures").map_err(StoreError::database("read the outcome figures"))?,
        })
    }

    /// Deletes the oldest of `app_id`'s outcomes last reported before `before_ms` (see
    /// [`crate::core::rollout::outcome_retention`]): about `chunk` of them, oldest first, so the
    /// writes waiting meanwhile wait for one such transaction at most. Call it again while
    /// [`PrunedOutcomes::more`] says so.
    ///
    /// Each chunk is two range scans of the `(app_id, at_ms)` index: the time of the `chunk`-th
    /// oldest row, then a delete of the rows up to that time (more than `chunk` only when several
    /// share it). The delete names the time again, so a row that a newer report moved past it
    /// stays. On PostgreSQL a deadlock with a concurrent batch fails one of the two: the write
    /// queue retries a batch, and the caller's next round a prune.
    pub async fn prune_outcomes(
        &self,
        app_id: &str,
        before_ms: i64,
        chunk: u32,
    ) -> Result<PrunedOutcomes, StoreError> {
        let boundary: Option<i64> = sqlx::query_scalar(
            "SELECT at_ms FROM device_outcomes WHERE app_id = $1 AND at_ms < $2 \
             ORDER BY at_ms LIMIT 1 OFFSET $3",
        )
        .bind(app_id)
        .bind(before_ms)
        .bind(i64::from(chunk.max(1)) - 1)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::database("find the oldest outcomes"))?;
        // Fewer than `chunk` old rows: they all go, and this was the last chunk.
        let (sql, until) = match boundary {
            Some(at_ms) => (
                "DELETE FROM device_outcomes WHERE app_id = $1 AND at_ms <= $2",
                at_ms,
            ),
            None => (
                "DELETE FROM device_outcomes WHERE app_id = $1 AND at_ms < $2",
                before_ms,
            ),
        };
        let deleted = sqlx::query(sql)
            .bind(app_id)
            .bind(until)
            .execute(&self.pool)
            .await
            .map_err(StoreError::database("delete old outcomes"))?
            .rows_affected();
        Ok(PrunedOutcomes {
            deleted,
            // A boundary row that is gone already (moved by a newer report) ends the round too.
            more: boundary.is_some() && deleted > 0,
        })
    }

    /// Saves the state of a standalone Rollout (replacing the one saved before), and returns
    /// once it is durable.
    pub async fn save_rollout_state(
        &self,
        namespace: &str,
        name: &str,
        json: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO rollout_states (namespace, name, state, at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (namespace, name) DO UPDATE SET state = excluded.state, at_ms = excluded.at_ms",
        )
        .bind(namespace)
        .bind(name)
        .bind(json)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(StoreError::database("save a rollout state"))?;
        Ok(())
    }

    /// Every saved Rollout state, by namespace then name.
    pub async fn rollout_states(&self) -> Result<Vec<RolloutStateRow>, StoreError> {
        let rows =
            sqlx::query("SELECT namespace, name, state, at_ms FROM rollout_states ORDER BY namespace, name")
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::database("read the rollout states"))?;
        rows.iter()
            .map(|row| {
                Ok(RolloutStateRow {
                    namespace: row.try_get("namespace")?,
                    name: row.try_get("name")?,
                    json: row.try_get("state")?,
                    at_ms: row.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::database("read a rollout state"))
    }

    /// Forgets a Rollout's state; returns whether there was one.
    pub async fn delete_rollout_state(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM rollout_states WHERE namespace = $1 AND name = $2")
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(StoreError::database("delete a rollout state"))?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Distinct devices of an app seen in the 30 days up to `now_ms` (epoch ms).
    ///
    /// Only each device's last sighting is kept, so a device last seen after `now_ms` counts too.
    /// Through the [`super::WriteQueue`], a device's `last_seen_ms` may lag its latest check by
    /// less than [`super::SIGHTING_REWRITE_WINDOW`] (unchanged sightings are not rewritten
    /// sooner): a device whose every sighting of the 30 days came within that much of its last
    /// written one, 30 days ago, is not counted.
    pub async fn monthly_active_devices(&self, app_id: &str, now_ms: i64) -> Result<i64, StoreError> {
        // The devices' rows and the sightings not merged into them yet, without forcing a
        // compaction (the controller asks for every App).
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT device_id FROM devices WHERE app_id = $1 AND last_seen_ms > $2 \
             UNION SELECT device_id FROM device_sightings WHERE app_id = $1 AND last_seen_ms > $2) AS seen",
        )
        .bind(app_id)
        .bind(now_ms.saturating_sub(MONTH_MS))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::database("count the monthly active devices"))
    }

    /// Counter rows of one app and bundle version on days >= since_day (days since the epoch),
    /// by day then action.
    pub async fn counters(
        &self,
        app_id: &str,
        version: &str,
        since_day: i64,
    ) -> Result<Vec<Counter>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, action, day, count FROM counters \
             WHERE app_id = $1 AND version = $2 AND day >= $3 ORDER BY day, action",
        )
        .bind(app_id)
        .bind(version)
        .bind(since_day)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database("read the counters"))?;
        rows.iter()
            .map(|row| {
                Ok(Counter {
                    version: row.try_get("version")?,
                    action: row.try_get("action")?,
                    day: row.try_get("day")?,
                    count: row.try_get("count")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::database("read a counter"))
    }

    /// One device's row.
    pub async fn device(&self, app_id: &str, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        self.compact().await?;
        let row = sqlx::query(
            "SELECT app_id, device_id, platform, plugin_version, native_version, version_name, custom_id, \
             default_channel, is_prod, is_emulator, current_bundle, channel_override, last_seen_ms \
             FROM devices WHERE app_id = $1 AND device_id = $2",
        )
        .bind(app_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::database("read a device"))?;
        row.as_ref()
            .map(device_record)
            .transpose()
            .map_err(StoreError::database("read a device"))
    }

    /// Merges the sightings log into the devices' rows, in key order, in one transaction per
    /// sixteenth of the device ids; returns how many sightings were merged.
    ///
    /// For each writer in the log it takes the rows up to the last sequence number it reads
    /// first, so sightings appended meanwhile (by this process or, on PostgreSQL, by another
    /// replica) wait for the next compaction, and concurrent compactions merge nothing twice
    /// and lose nothing. The merge is the upsert of a sighting, applied in each writer's order:
    /// the newest sighting wins, an older one changes nothing, a None custom id or default
    /// channel keeps the one before. (PostgreSQL refuses to upsert one row twice in a
    /// statement, so there each device's sightings are first merged with window functions,
    /// the same way; SQLite applies them one by one.)
    pub async fn compact(&self) -> Result<u64, StoreError> {
        let writers: Vec<(i64, i64)> =
            sqlx::query_as("SELECT writer, MAX(seq) AS last FROM device_sightings GROUP BY writer")
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::database("read the sightings log"))?;
        if writers.is_empty() {
            return Ok(0);
        }
        let mut merged = 0;
        // One transaction per range of device ids: each touches its own share of the pages of
        // `devices` (so the merge costs no more page writes than one big transaction would), and
        // on SQLite the appends of the write queue get the lock between two ranges.
        for (from, to) in COMPACTION_RANGES {
            let mut transaction = self
                .pool
                .begin()
                .await
                .map_err(StoreError::database("begin a transaction"))?;
            for &(writer, last) in &writers {
                sqlx::query(compaction_sql(self.backend))
                    .bind(writer)
                    .bind(last)
                    .bind(from)
                    .bind(to)
                    .execute(&mut *transaction)
                    .await
                    .map_err(StoreError::database("merge the sightings log into the devices"))?;
                merged += sqlx::query(
                    "DELETE FROM device_sightings WHERE writer = $1 AND seq <= $2 \
                     AND device_id >= $3 AND ($4 = '' OR device_id < $4)",
                )
                .bind(writer)
                .bind(last)
                .bind(from)
                .bind(to)
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::database("empty the sightings log"))?
                .rows_affected();
            }
            transaction
                .commit()
                .await
                .map_err(StoreError::database("commit a compaction of the sightings log"))?;
        }
        tracing::debug!(merged, "sightings log merged into the devices");
        Ok(merged)
    }

    /// Whether the database answers (`SELECT 1`).
    pub(super) async fn is_reachable(&self) -> bool {
        self.pool.execute("SELECT 1").await.is_ok()
    }
}

/// Why preparing a new database failed.
enum Preparation {
    /// The connection failed (WAL could not be set).
    Connect(String),
    /// The migrations failed.
    Migrate(String),
}

/// Prepares a database on its first connection: WAL for SQLite files, then the migrations.
async fn prepare(connection: &mut AnyConnection, backend: Backend) -> Result<(), Preparation> {
    if backend == Backend::Postgres {
        return run_migrations(connection).await.map_err(Preparation::Migrate);
    }
    // Stores of this process prepare one at a time: switching to WAL needs the file to itself.
    let _one_at_a_time = SQLITE_MIGRATIONS.lock().await;
    // WAL is a property of the file: set once, it holds for every later connection. Another
    // process opening the file at the same moment can make SQLite refuse the switch at once
    // (busy, without waiting: it would deadlock otherwise), so a busy file is tried again.
    let mut tries = 0;
    let mode: String = loop {
        match sqlx::query_scalar("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *connection)
            .await
        {
            Ok(mode) => break mode,
            Err(error) if tries < WAL_SWITCH_TRIES && is_busy(&error) => {
                tries += 1;
                tokio::time::sleep(WAL_SWITCH_PAUSE).await;
            }
            Err(error) => {
                return Err(Preparation::Connect(format!(
                    "cannot switch the SQLite file to WAL mode: {error}"
                )));
            }
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "the SQLite device store could not use WAL mode");
    }
    run_migrations(connection).await.map_err(Preparation::Migrate)
}

/// Applies the migrations of `src/store/migrations` that the database lacks.
async fn run_migrations(connection: &mut AnyConnection) -> Result<(), String> {
    let mut migrator = sqlx::migrate!("src/store/migrations");
    migrator.set_ignore_missing(true);
    migrator.run(connection).await.map_err(|error| error.to_string())
}

/// The pool of a file or PostgreSQL store.
fn pool_options(backend: Backend) -> AnyPoolOptions {
    match backend {
        Backend::Postgres => AnyPoolOptions::new().max_connections(POSTGRES_MAX_CONNECTIONS),
        // In WAL mode, NORMAL syncs at checkpoints only: a power loss may lose the last
        // transactions, never corrupt the file.
        Backend::Sqlite => AnyPoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            }),
    }
}

/// A batch sorted for writing: device rows, then failed marks, then counters (summed), each in
/// key order. The sort is stable, so writes of one key keep their order.
struct WritePlan<'a> {
    device_steps: Vec<DeviceStep<'a>>,
    failed_marks: Vec<&'a Write>,
    /// (app, version, device) → the outcomes of the batch merged as the upsert would merge them.
    outcomes: BTreeMap<(&'a str, &'a str, &'a str), MergedOutcome<'a>>,
    counts: BTreeMap<(&'a str, &'a str, &'a str, i64), i64>,
}

/// A device's outcomes with one version within a batch, merged: failed if any failed, the
/// latest time, and the channel of the latest report (of the last among equally late ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MergedOutcome<'a> {
    channel: &'a str,
    failed: bool,
    at_ms: i64,
}

impl<'a> MergedOutcome<'a> {
    fn of(report: &'a OutcomeReport) -> Self {
        MergedOutcome {
            channel: &report.channel,
            failed: report.failed,
            at_ms: report.at_ms,
        }
    }

    fn then(self, later: &'a OutcomeReport) -> Self {
        let latest = later.at_ms >= self.at_ms;
        MergedOutcome {
            channel: if latest { &later.channel } else { self.channel },
            failed: self.failed || later.failed,
            at_ms: self.at_ms.max(later.at_ms),
        }
    }
}

/// One step of writing device rows, in key order.
enum DeviceStep<'a> {
    /// Sightings of distinct devices, one per device, written by multi-row upserts.
    Sightings(Vec<Sighting<'a>>),
    /// Any other device write (a current bundle, an override), written on its own.
    Single(&'a Write),
}

/// The sightings of one device in a batch, merged into the one the database would keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sighting<'a> {
    /// The latest sighting (the last of equal ones).
    seen: &'a DeviceSeen,
    /// Its custom id, or the last one an earlier sighting of the batch reported.
    custom_id: Option<&'a str>,
    /// Its default channel, or the last one an earlier sighting of the batch reported.
    default_channel: Option<&'a str>,
}

impl<'a> Sighting<'a> {
    fn of(seen: &'a DeviceSeen) -> Self {
        Sighting {
            seen,
            custom_id: seen.custom_id.as_deref(),
            default_channel: seen.default_channel.as_deref(),
        }
    }

    /// The effect of `later` applied after `self`, as the upsert would have it: an older sighting
    /// changes nothing; a newer one (or an equally old one) replaces the reported columns and
    /// keeps the earlier custom id and default channel where it reports none.
    fn then(self, later: &'a DeviceSeen) -> Self {
        if later.seen_at_ms < self.seen.seen_at_ms {
            return self;
        }
        Sighting {
            seen: later,
            custom_id: later.custom_id.as_deref().or(self.custom_id),
            default_channel: later.default_channel.as_deref().or(self.default_channel),
        }
    }
}

impl<'a> WritePlan<'a> {
    fn of(batch: &'a [Write]) -> Self {
        let mut device_writes = Vec::new();
        let mut plan = WritePlan {
            device_steps: Vec::new(),
            failed_marks: Vec::new(),
            outcomes: BTreeMap::new(),
            counts: BTreeMap::new(),
        };
        for write in batch {
            match write {
                Write::Count {
                    app_id,
                    version,
                    action,
                    day,
                    n,
                } => {
                    let total = plan.counts.entry((app_id, version, action, *day)).or_insert(0);
                    *total = total.saturating_add(*n);
                }
                Write::FailedMark { .. } => plan.failed_marks.push(write),
                Write::Outcome(report) => {
                    let key = (
                        report.app_id.as_str(),
                        report.version.as_str(),
                        report.device_id.as_str(),
                    );
                    plan.outcomes
                        .entry(key)
                        .and_modify(|merged| *merged = merged.then(report))
                        .or_insert_with(|| MergedOutcome::of(report));
                }
                Write::SeenDevice(_)
                | Write::CurrentBundle { .. }
                | Write::SetChannelOverride { .. }
                | Write::ClearChannelOverride { .. } => device_writes.push(write),
            }
        }
        plan.counts.retain(|_, n| *n != 0);
        device_writes.sort_by(|a, b| compare_keys(a, b));
        plan.failed_marks.sort_by(|a, b| compare_keys(a, b));
        plan.device_steps = device_steps(&device_writes);
        plan
    }
}

/// Groups the sorted device writes into steps that keep key order: each device's sightings merge
/// into one, and runs of merged sightings become one step. A device's other writes follow its
/// sighting; they touch other columns, so the order between the two kinds does not matter, while
/// writes of one kind keep their order.
fn device_steps<'a>(sorted: &[&'a Write]) -> Vec<DeviceStep<'a>> {
    let mut steps = Vec::new();
    let mut sightings: Vec<Sighting<'a>> = Vec::new();
    for group in sorted.chunk_by(|a, b| row_key(a) == row_key(b)) {
        let merged = group
            .iter()
            .filter_map(|write| match write {
                Write::SeenDevice(seen) => Some(seen),
                _ => None,
            })
            .fold(None, |merged: Option<Sighting<'a>>, seen| {
                Some(merged.map_or_else(|| Sighting::of(seen), |merged| merged.then(seen)))
            });
        sightings.extend(merged);
        let mut others = group
            .iter()
            .filter(|write| !matches!(write, Write::SeenDevice(_)))
            .peekable();
        if others.peek().is_some() {
            if !sightings.is_empty() {
                steps.push(DeviceStep::Sightings(std::mem::take(&mut sightings)));
            }
            steps.extend(others.map(|write| DeviceStep::Single(write)));
        }
    }
    if !sightings.is_empty() {
        steps.push(DeviceStep::Sightings(sightings));
    }
    steps
}

/// Rows per multi-row upsert, largest first: a batch is cut into the fewest statements of these
/// few shapes, so each connection prepares at most four of them (13 parameters a row keeps the
/// largest under both SQLite's and PostgreSQL's parameter limits).
const SIGHTING_CHUNK_ROWS: [usize; 4] = [256, 32, 4, 1];

/// Cuts sightings into chunks of the sizes of [`SIGHTING_CHUNK_ROWS`], in order; each chunk
/// comes with the index of its size.
fn sighting_chunks<'s, 'a>(sightings: &'s [Sighting<'a>]) -> Vec<(usize, &'s [Sighting<'a>])> {
    row_chunks(sightings)
}

/// Cuts rows into chunks of the sizes of [`SIGHTING_CHUNK_ROWS`] (also used for outcomes), in
/// order; each chunk comes with the index of its size.
fn row_chunks<T>(mut rows: &[T]) -> Vec<(usize, &[T])> {
    let mut chunks = Vec::new();
    for (shape, size) in SIGHTING_CHUNK_ROWS.into_iter().enumerate() {
        while rows.len() >= size {
            let (chunk, rest) = rows.split_at(size);
            chunks.push((shape, chunk));
            rows = rest;
        }
    }
    chunks
}

/// The row a device write or failed mark touches: (app, device, version).
fn row_key(write: &Write) -> (&str, &str, &str) {
    match write {
        Write::SeenDevice(seen) => (&seen.app_id, &seen.device_id, ""),
        Write::CurrentBundle {
            app_id, device_id, ..
        }
        | Write::SetChannelOverride {
            app_id, device_id, ..
        }
        | Write::ClearChannelOverride { app_id, device_id } => (app_id, device_id, ""),
        Write::FailedMark {
            app_id,
            device_id,
            version,
            ..
        } => (app_id, device_id, version),
        Write::Count {
            app_id,
            version,
            action,
            ..
        } => (app_id, version, action),
        Write::Outcome(report) => (&report.app_id, &report.device_id, &report.version),
    }
}

fn compare_keys(a: &Write, b: &Write) -> Ordering {
    row_key(a).cmp(&row_key(b))
}

/// Writes one device row or failed mark.
async fn apply_device_write(connection: &mut AnyConnection, write: &Write) -> Result<(), sqlx::Error> {
    let query = match write {
        Write::CurrentBundle {
            app_id,
            device_id,
            version,
        } => sqlx::query(
            "INSERT INTO devices (app_id, device_id, current_bundle) VALUES ($1, $2, $3) \
             ON CONFLICT (app_id, device_id) DO UPDATE SET current_bundle = excluded.current_bundle",
        )
        .bind(app_id)
        .bind(device_id)
        .bind(version),
        Write::SetChannelOverride {
            app_id,
            device_id,
            channel,
        } => sqlx::query(
            "INSERT INTO devices (app_id, device_id, channel_override) VALUES ($1, $2, $3) \
             ON CONFLICT (app_id, device_id) DO UPDATE SET channel_override = excluded.channel_override",
        )
        .bind(app_id)
        .bind(device_id)
        .bind(channel),
        Write::ClearChannelOverride { app_id, device_id } => {
            sqlx::query("UPDATE devices SET channel_override = NULL WHERE app_id = $1 AND device_id = $2")
                .bind(app_id)
                .bind(device_id)
        }
        // A failed mark keeps the first time it was reported (so marks load in the order they
        // were first pushed, as memory holds them).
        Write::FailedMark {
            app_id,
            device_id,
            version,
            at_ms,
        } => sqlx::query(
            "INSERT INTO failed_marks (app_id, device_id, version, at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, device_id, version) DO UPDATE SET at_ms = excluded.at_ms \
             WHERE excluded.at_ms < failed_marks.at_ms",
        )
        .bind(app_id)
        .bind(device_id)
        .bind(version)
        .bind(*at_ms),
        // Sightings, outcomes and counters are written in bulk (see WritePlan).
        Write::SeenDevice(_) | Write::Count { .. } | Write::Outcome(_) => return Ok(()),
    };
    query.execute(connection).await?;
    Ok(())
}

/// The multi-row append of sightings of distinct devices to the sightings log, numbered from
/// `first_seq` for `writer`.
/// `shape` is the index in [`SIGHTING_CHUNK_ROWS`] of the number of sightings.
fn seen_devices_query<'q>(
    backend: Backend,
    shape: usize,
    sightings: &'q [Sighting<'q>],
    writer: i64,
    first_seq: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let sql = seen_devices_sql(backend, shape);
    let mut query = sqlx::query(sql);
    for (seq, sighting) in (first_seq..).zip(sightings) {
        let seen = sighting.seen;
        query = query
            .bind(writer)
            .bind(seq)
            .bind(seen.app_id.as_str())
            .bind(seen.device_id.as_str())
            .bind(seen.platform.as_str())
            .bind(seen.plugin_version.as_str())
            .bind(seen.native_version.as_str())
            .bind(seen.version_name.as_str())
            .bind(sighting.custom_id)
            .bind(sighting.default_channel)
            .bind(i64::from(seen.is_prod))
            .bind(i64::from(seen.is_emulator))
            .bind(seen.seen_at_ms);
    }
    query
}

/// The SQL of [`seen_devices_query`] for the rows of `SIGHTING_CHUNK_ROWS[shape]` (built once
/// per backend and shape).
///
/// SQLite gets anonymous `?` placeholders: binding a numbered one (`$N`) makes sqlx look its
/// name up in a list as long as the statement's parameters, which is quadratic in the row count
/// (it took 60% of the time of a 256-row upsert). PostgreSQL only takes `$N`.
fn seen_devices_sql(backend: Backend, shape: usize) -> &'static str {
    static SQL: [[std::sync::OnceLock<String>; SIGHTING_CHUNK_ROWS.len()]; 2] =
        [const { [const { std::sync::OnceLock::new() }; SIGHTING_CHUNK_ROWS.len()] }; 2];
    let rows = SIGHTING_CHUNK_ROWS[shape];
    let slot = match backend {
        Backend::Sqlite => 0,
        Backend::Postgres => 1,
    };
    SQL[slot][shape].get_or_init(|| {
        format!(
            "INSERT INTO device_sightings (writer, seq, app_id, device_id, platform, plugin_version, \
             native_version, version_name, custom_id, default_channel, is_prod, is_emulator, last_seen_ms) \
             VALUES {}",
            values_placeholders(backend, rows, 13)
        )
    })
}

/// The columns a sighting sets in `devices`.
const SIGHTING_COLUMNS: &str = "app_id, device_id, platform, plugin_version, native_version, version_name, \
     custom_id, default_channel, is_prod, is_emulator, last_seen_ms";

/// How a sighting updates a device's row: the reported columns take the new values unless the
/// sighting is older than the stored one; a None custom id or default channel keeps the stored one.
const SIGHTING_UPSERT: &str = "ON CONFLICT (app_id, device_id) DO UPDATE SET \
     platform = excluded.platform, plugin_version = excluded.plugin_version, \
     native_version = excluded.native_version, version_name = excluded.version_name, \
     custom_id = COALESCE(excluded.custom_id, devices.custom_id), \
     default_channel = COALESCE(excluded.default_channel, devices.default_channel), \
     is_prod = excluded.is_prod, is_emulator = excluded.is_emulator, last_seen_ms = excluded.last_seen_ms \
     WHERE excluded.last_seen_ms >= devices.last_seen_ms";

/// The ranges of device ids a compaction merges one after the other: `[from, to)`, an empty `to`
/// for no end (device ids are lower-case UUIDs, so each range holds a sixteenth of them; any
/// other string falls in one range too).
const COMPACTION_RANGES: [(&str, &str); 16] = [
    ("", "1"),
    ("1", "2"),
    ("2", "3"),
    ("3", "4"),
    ("4", "5"),
    ("5", "6"),
    ("6", "7"),
    ("7", "8"),
    ("8", "9"),
    ("9", "a"),
    ("a", "b"),
    ("b", "c"),
    ("c", "d"),
    ("d", "e"),
    ("e", "f"),
    ("f", ""),
];

/// The statement that merges one writer's sightings up to a sequence number (`$1`, `$2`) with
/// device ids in `[$3, $4)` into `devices`, in key order (see [`DeviceStore::compact`]).
fn compaction_sql(backend: Backend) -> &'static str {
    static SQL: [std::sync::OnceLock<String>; 2] = [const { std::sync::OnceLock::new() }; 2];
    match backend {
        // SQLite applies the rows of one INSERT one after the other, in the ORDER BY's order
        // (the WHERE also keeps the parser from reading ON CONFLICT as a join constraint).
        Backend::Sqlite => SQL[0].get_or_init(|| {
            format!(
                "INSERT INTO devices ({SIGHTING_COLUMNS}) SELECT {SIGHTING_COLUMNS} FROM device_sightings \
                 WHERE writer = $1 AND seq <= $2 AND device_id >= $3 AND ($4 = '' OR device_id < $4) \
                 ORDER BY app_id, device_id, seq {SIGHTING_UPSERT}"
            )
        }),
        // One row per device, as applying its sightings in order would leave it: the newest
        // sighting (the last of equally old ones), with the custom id and default channel of the
        // last applied sighting that has one (a sighting older than the stored row or than one
        // before it applies not).
        Backend::Postgres => SQL[1].get_or_init(|| {
            format!(
                "INSERT INTO devices ({SIGHTING_COLUMNS}) SELECT app_id, device_id, platform, plugin_version, \
                 native_version, version_name, kept_custom_id, kept_default_channel, is_prod, is_emulator, \
                 last_seen_ms FROM (SELECT app_id, device_id, platform, plugin_version, native_version, \
                 version_name, is_prod, is_emulator, last_seen_ms, \
                 ROW_NUMBER() OVER (PARTITION BY app_id, device_id ORDER BY last_seen_ms DESC, seq DESC) AS rank, \
                 FIRST_VALUE(applied_custom_id) OVER (PARTITION BY app_id, device_id \
                 ORDER BY applied_custom_id IS NULL, seq DESC) AS kept_custom_id, \
                 FIRST_VALUE(applied_default_channel) OVER (PARTITION BY app_id, device_id \
                 ORDER BY applied_default_channel IS NULL, seq DESC) AS kept_default_channel \
                 FROM (SELECT app_id, device_id, platform, plugin_version, native_version, version_name, \
                 is_prod, is_emulator, last_seen_ms, seq, \
                 CASE WHEN applied THEN custom_id END AS applied_custom_id, \
                 CASE WHEN applied THEN default_channel END AS applied_default_channel \
                 FROM (SELECT s.app_id, s.device_id, s.platform, s.plugin_version, s.native_version, \
                 s.version_name, s.custom_id, s.default_channel, s.is_prod, s.is_emulator, s.last_seen_ms, s.seq, \
                 s.last_seen_ms >= COALESCE(MAX(s.last_seen_ms) OVER (PARTITION BY s.app_id, s.device_id \
                 ORDER BY s.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), s.last_seen_ms) \
                 AND s.last_seen_ms >= COALESCE(d.last_seen_ms, s.last_seen_ms) AS applied \
                 FROM device_sightings s LEFT JOIN devices d ON d.app_id = s.app_id AND d.device_id = s.device_id \
                 WHERE s.writer = $1 AND s.seq <= $2 AND s.device_id >= $3 AND ($4 = '' OR s.device_id < $4)) \
                 AS ordered) \
                 AS applied_values) AS merged WHERE rank = 1 ORDER BY app_id, device_id {SIGHTING_UPSERT}"
            )
        }),
    }
}

/// The multi-row upsert of merged outcomes of distinct (app, version, device) rows: `failed`
/// stays set once set, `at_ms` keeps the latest time and `channel` follows it.
/// `shape` is the index in [`SIGHTING_CHUNK_ROWS`] of the number of rows.
fn outcomes_query<'q>(
    backend: Backend,
    shape: usize,
    outcomes: &'q [(&'q (&'q str, &'q str, &'q str), &'q MergedOutcome<'q>)],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let sql = outcomes_sql(backend, shape);
    let mut query = sqlx::query(sql);
    for ((app_id, version, device_id), merged) in outcomes {
        query = query
            .bind(*app_id)
            .bind(*version)
            .bind(*device_id)
            .bind(merged.channel)
            .bind(i64::from(merged.failed))
            .bind(merged.at_ms);
    }
    query
}

/// The SQL of [`outcomes_query`] (built once per backend and shape; placeholders as in
/// [`seen_devices_sql`]).
fn outcomes_sql(backend: Backend, shape: usize) -> &'static str {
    static SQL: [[std::sync::OnceLock<String>; SIGHTING_CHUNK_ROWS.len()]; 2] =
        [const { [const { std::sync::OnceLock::new() }; SIGHTING_CHUNK_ROWS.len()] }; 2];
    let slot = match backend {
        Backend::Sqlite => 0,
        Backend::Postgres => 1,
    };
    SQL[slot][shape].get_or_init(|| {
        format!(
            "INSERT INTO device_outcomes (app_id, version, device_id, channel, failed, at_ms) VALUES {} \
             ON CONFLICT (app_id, version, device_id) DO UPDATE SET \
             channel = CASE WHEN excluded.at_ms >= device_outcomes.at_ms \
             THEN excluded.channel ELSE device_outcomes.channel END, \
             failed = CASE WHEN excluded.failed <> 0 OR device_outcomes.failed <> 0 THEN 1 ELSE 0 END, \
             at_ms = CASE WHEN excluded.at_ms > device_outcomes.at_ms \
             THEN excluded.at_ms ELSE device_outcomes.at_ms END",
            values_placeholders(backend, SIGHTING_CHUNK_ROWS[shape], 6)
        )
    })
}

/// `(?, ?), (?, ?)` for SQLite, `($1, $2), ($3, $4)` for PostgreSQL: `rows` rows of `columns`.
fn values_placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let placeholders: Vec<String> = (1..=columns)
                .map(|column| match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::Postgres => format!("${}", row * columns + column),
                })
                .collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    values.join(", ")
}

/// (app_id, device_id, `third`) of a row, all text.
fn three_texts(row: &AnyRow, third: &str) -> Result<(String, String, String), sqlx::Error> {
    Ok((
        row.try_get("app_id")?,
        row.try_get("device_id")?,
        row.try_get(third)?,
    ))
}

fn device_record(row: &AnyRow) -> Result<DeviceRecord, sqlx::Error> {
    Ok(DeviceRecord {
        app_id: row.try_get("app_id")?,
        device_id: row.try_get("device_id")?,
        platform: row.try_get("platform")?,
        plugin_version: row.try_get("plugin_version")?,
        native_version: row.try_get("native_version")?,
        version_name: row.try_get("version_name")?,
        custom_id: row.try_get("custom_id")?,
        default_channel: row.try_get("default_channel")?,
        is_prod: row.try_get::<i64, _>("is_prod")? != 0,
        is_emulator: row.try_get::<i64, _>("is_emulator")? != 0,
        current_bundle: row.try_get("current_bundle")?,
        channel_override: row.try_get("channel_override")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(version: &str, action: &str, day: i64, n: i64) -> Write {
        Write::Count {
            app_id: "app".into(),
            version: version.into(),
            action: action.into(),
            day,
            n,
        }
    }

    fn override_of(device: &str, channel: Option<&str>) -> Write {
        match channel {
            Some(channel) => Write::SetChannelOverride {
                app_id: "app".into(),
                device_id: device.into(),
                channel: channel.into(),
            },
            None => Write::ClearChannelOverride {
                app_id: "app".into(),
                device_id: device.into(),
            },
        }
    }

    fn seen(device: &str, at_ms: i64, custom_id: Option<&str>, channel: Option<&str>) -> Write {
        Write::SeenDevice(DeviceSeen {
            app_id: "app".into(),
            device_id: device.into(),
            platform: "ios".into(),
            plugin_version: "8.0.0".into(),
            native_version: "1.0.0".into(),
            version_name: format!("at-{at_ms}"),
            custom_id: custom_id.map(str::to_owned),
            default_channel: channel.map(str::to_owned),
            is_prod: true,
            is_emulator: false,
            seen_at_ms: at_ms,
        })
    }

    /// The steps of a plan as (kind, device, detail) triples, to compare whole plans at once.
    fn steps(plan: &WritePlan<'_>) -> Vec<String> {
        plan.device_steps
            .iter()
            .map(|step| match step {
                DeviceStep::Sightings(sightings) => {
                    let rows: Vec<String> = sightings
                        .iter()
                        .map(|s| {
                            format!(
                                "{}@{}/{:?}/{:?}",
                                s.seen.device_id, s.seen.seen_at_ms, s.custom_id, s.default_channel
                            )
                        })
                        .collect();
                    format!("sightings [{}]", rows.join(", "))
                }
                DeviceStep::Single(write) => format!("single {write:?}"),
            })
            .collect()
    }

    #[test]
    fn a_plan_sums_counters_and_keeps_the_order_of_each_device() {
        let batch = vec![
            count("1.0.0", "set", 10, 1),
            override_of("d2", Some("beta")),
            override_of("d1", Some("beta")),
            count("1.0.0", "set", 10, 2),
            override_of("d2", None),
            count("1.0.0", "get", 10, 1),
            count("1.0.0", "get", 10, -1),
            override_of("d1", Some("alpha")),
        ];
        let plan = WritePlan::of(&batch);
        assert_eq!(plan.counts.len(), 1);
        assert_eq!(plan.counts.get(&("app", "1.0.0", "set", 10)), Some(&3));
        let expected: Vec<String> = [&batch[2], &batch[7], &batch[1], &batch[4]]
            .iter()
            .map(|write| format!("single {write:?}"))
            .collect();
        assert_eq!(
            steps(&plan),
            expected,
            "sorted by device, in order within a device"
        );
    }

    #[test]
    fn sightings_of_one_device_merge_as_the_upsert_would_apply_them() {
        let batch = vec![
            seen("d1", 5, Some("first"), Some("beta")),
            seen("d1", 7, None, None),
            // Older than the one before: changes nothing.
            seen("d1", 6, Some("stale"), Some("stale")),
            // As old as the latest: the later one wins.
            seen("d1", 7, None, Some("prod")),
            seen("d0", 1, None, None),
        ];
        let plan = WritePlan::of(&batch);
        assert_eq!(
            steps(&plan),
            vec![r#"sightings [d0@1/None/None, d1@7/Some("first")/Some("prod")]"#]
        );
        let Write::SeenDevice(last) = &batch[3] else {
            unreachable!()
        };
        let DeviceStep::Sightings(sightings) = &plan.device_steps[0] else {
            panic!("one step of sightings")
        };
        assert!(
            std::ptr::eq(sightings[1].seen, last),
            "the latest sighting's columns are kept"
        );
    }

    #[test]
    fn other_device_writes_cut_the_sightings_in_key_order() {
        let batch = vec![
            seen("d3", 1, None, None),
            override_of("d2", Some("beta")),
            seen("d1", 1, None, None),
            seen("d2", 1, None, None),
        ];
        let plan = WritePlan::of(&batch);
        assert_eq!(
            steps(&plan),
            vec![
                "sightings [d1@1/None/None, d2@1/None/None]".to_owned(),
                format!("single {:?}", batch[1]),
                "sightings [d3@1/None/None]".to_owned(),
            ]
        );
    }

    #[test]
    fn sightings_are_cut_into_few_statement_shapes() {
        let batch: Vec<Write> = (0..300)
            .map(|i| seen(&format!("d{i:03}"), 1, None, None))
            .collect();
        let plan = WritePlan::of(&batch);
        let DeviceStep::Sightings(sightings) = &plan.device_steps[0] else {
            panic!("one step of sightings")
        };
        let shapes: Vec<(usize, usize)> = sighting_chunks(sightings)
            .iter()
            .map(|(shape, chunk)| (*shape, chunk.len()))
            .collect();
        // 300 = 256 + 32 + 3 × 4.
        assert_eq!(shapes, vec![(0, 256), (1, 32), (2, 4), (2, 4), (2, 4)]);
        assert!(sighting_chunks(&[]).is_empty());
        let sql = seen_devices_sql(Backend::Postgres, 2);
        assert_eq!(sql.matches("), (").count(), 3, "four rows of values");
        assert!(sql.contains("$52)") && !sql.contains("$53"), "{sql}");
        let sql = seen_devices_sql(Backend::Sqlite, 2);
        assert_eq!(sql.matches('?').count(), 52, "{sql}");
        assert!(!sql.contains('$'), "{sql}");
    }
}
