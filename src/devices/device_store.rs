//! [`DeviceStore`]: the database behind the update server's device state, through sqlx's `Any`
//! driver, so one implementation (portable SQL, one migration folder) serves SQLite and
//! PostgreSQL.

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, atomic::AtomicI64},
    time::Duration,
};

use sqlx::{
    AnyConnection, AnyPool, ConnectOptions, Connection, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::MigrateError,
};

use super::{
    StoreError,
    location::{Location, UrlSecrets, redact_url},
};

/// How long opening waits for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections to an SQLite file: one writer at a time in any case; WAL lets readers run beside it.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// The WAL's pages after which a commit moves them into the database (SQLite's default is
/// 1,000, about 4 MiB): a smaller WAL leaves room on a nearly full disk for the checkpoint that
/// empties it, which writes into the database file first.
const SQLITE_WAL_CHECKPOINT_PAGES: u32 = 256;
/// Connections to PostgreSQL, per replica.
const POSTGRES_MAX_CONNECTIONS: u32 = 8;

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
    pub(super) pool: AnyPool,
    pub(super) backend: Backend,
    /// This store's id in the sightings log (drawn at open; clones share it).
    pub(super) writer: i64,
    /// The sequence number of this store's next sighting in the log.
    pub(super) next_seq: Arc<AtomicI64>,
    /// Where the store is.
    urls: Arc<StoreUrls>,
}

/// Where a store is.
struct StoreUrls {
    /// The URL with its password redacted, for logs and `Debug`.
    redacted: String,
    /// A PostgreSQL store's URL, for the change feed's listening connection (never logged).
    postgres: Option<String>,
}

/// The database behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Debug for DeviceStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DeviceStore")
            .field("backend", &self.backend)
            .field("url", &self.urls.redacted)
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
                    Ok(mut connection) => run_migrations(&mut connection).await.map_err(|e| e.to_string()),
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
                    Err(wal @ Preparation::Wal(_)) => return Err(connect_error(wal.to_string())),
                    Err(Preparation::Migrate(error)) => return Err(migrate_error(error.to_string())),
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
            urls: Arc::new(StoreUrls {
                redacted: redacted_url,
                postgres: (backend == Backend::Postgres).then(|| url.to_owned()),
            }),
        })
    }

    /// Whether the database answers (`SELECT 1`).
    pub(super) async fn is_reachable(&self) -> bool {
        self.pool.execute("SELECT 1").await.is_ok()
    }

    /// A PostgreSQL store's URL (None for SQLite), for a connection of the store's own.
    pub(super) fn listen_url(&self) -> Option<&str> {
        self.urls.postgres.as_deref()
    }

    /// `message` with the store URL's password replaced.
    pub(super) fn scrub(&self, message: &str) -> String {
        UrlSecrets::of(self.listen_url().unwrap_or_default()).scrub(message)
    }

    /// Closes the connections: every later read and write fails, as when the database is gone.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Why preparing a new database failed.
#[derive(Debug, thiserror::Error)]
enum Preparation {
    /// The SQLite file could not be switched to WAL mode.
    #[error("cannot switch the SQLite file to WAL mode: {0}")]
    Wal(#[source] sqlx::Error),
    /// The migrations failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// Prepares a database on its first connection: WAL for SQLite files, then the migrations.
async fn prepare(connection: &mut AnyConnection, backend: Backend) -> Result<(), Preparation> {
    if backend == Backend::Postgres {
        return Ok(run_migrations(connection).await?);
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
            Err(error) => return Err(Preparation::Wal(error)),
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "the SQLite device store could not use WAL mode");
    }
    Ok(run_migrations(connection).await?)
}

/// Applies the migrations of `src/devices/migrations` that the database lacks.
async fn run_migrations(connection: &mut AnyConnection) -> Result<(), MigrateError> {
    let mut migrator = sqlx::migrate!("src/devices/migrations");
    migrator.set_ignore_missing(true);
    migrator.run(connection).await
}

/// How long a PostgreSQL store waits for a connection of its pool before a read or write fails.
const POSTGRES_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The pool of a file or PostgreSQL store.
fn pool_options(backend: Backend) -> AnyPoolOptions {
    match backend {
        // A connection is waited for at most POSTGRES_ACQUIRE_TIMEOUT (sqlx's default is 30 s):
        // while the server is down, a write fails within that time, readiness says so, and the
        // flusher's retries go on, instead of each write hanging for half a minute.
        Backend::Postgres => AnyPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT),
        // FULL syncs the WAL at every commit, so what a request acknowledged survives a power
        // loss too (NORMAL would survive only a crash of this process); group commit shares
        // one sync among the requests of a few milliseconds.
        Backend::Sqlite => AnyPoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection.execute("PRAGMA synchronous = FULL").await?;
                    connection
                        .execute(
                            format!("PRAGMA wal_autocheckpoint = {SQLITE_WAL_CHECKPOINT_PAGES}").as_str(),
                        )
                        .await?;
                    Ok(())
                })
            }),
    }
}
