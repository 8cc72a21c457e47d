//! Errors of the device store.

use std::path::PathBuf;

/// What can go wrong with the device store. URLs in these messages have their password
/// replaced by `****`, and reasons that come from the database driver while opening have any
/// password of the URL scrubbed, so an error can be logged as it is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no backend the store supports, or is malformed.
    #[error(
        "the device store URL '{url}' is not supported ({reason}); use sqlite://PATH, sqlite::memory: or postgres://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    UnsupportedUrl {
        /// The URL as given, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The folder that should hold the SQLite file does not exist (SQLite creates the file,
    /// not its folders).
    #[error("the folder {} of the SQLite device store {} does not exist", folder.display(), path.display())]
    MissingFolder {
        /// The database file asked for.
        path: PathBuf,
        /// Its folder, which is missing.
        folder: PathBuf,
    },
    /// The database could not be reached or opened.
    #[error("cannot open the device store at {url}: {reason}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why (the driver's message, passwords scrubbed).
        reason: String,
    },
    /// The schema migrations could not be applied.
    #[error("cannot migrate the device store at {url}: {reason}")]
    Migrate {
        /// The URL, password redacted.
        url: String,
        /// Why (the migrator's message, passwords scrubbed).
        reason: String,
    },
    /// A read or a write of an open store failed.
    #[error("the device store could not {operation}: {source}")]
    Database {
        /// What the store was doing, as a verb phrase (`apply a batch of writes`).
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A row of the change feed could not be read as text.
    #[error("the device store's change feed has an unreadable row (number {seq})")]
    FeedRow {
        /// The row's number.
        seq: i64,
    },
    /// The write queue's flusher task is no longer running, so nothing more will be written.
    #[error("the device store's write queue has stopped: its flusher task is no longer running")]
    QueueStopped,
}

impl StoreError {
    /// Whether the failure is the database's condition rather than the writes' content: a full
    /// disk, an I/O error, a lock held too long, a lost connection, a server shutting down or
    /// short of resources. Such writes are tried again as they are; only the others are tried
    /// one by one to find the write the database refuses.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database { source, .. } => is_transient(source),
            StoreError::Connect { .. } | StoreError::QueueStopped => true,
            _ => false,
        }
    }

    /// A [`StoreError::Database`] maker for `map_err`.
    pub(super) fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { operation, source }
    }
}

/// [`StoreError::is_transient`] of a driver error.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| is_transient_code(&code)),
        _ => false,
    }
}

/// Whether a database error code names a condition of the database: SQLite's result codes
/// (extended codes keep the primary one in their low byte) BUSY, LOCKED, IOERR, FULL and
/// CANTOPEN; PostgreSQL's SQLSTATE classes 08 (connection), 53 (insufficient resources), 57
/// (operator intervention, e.g. a shutdown) and 58 (system error), and the serialization
/// failures 40001 and 40P01 (deadlock).
fn is_transient_code(code: &str) -> bool {
    if let Ok(number) = code.parse::<u32>()
        && code.len() < 5
    {
        return matches!(number & 0xff, 5 | 6 | 10 | 13 | 14);
    }
    ["08", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "40001"
        || code == "40P01"
}

#[cfg(test)]
mod tests {
    use super::is_transient_code;

    #[test]
    fn database_conditions_are_told_from_refused_writes() {
        for (code, transient) in [
            ("13", true),     // SQLITE_FULL
            ("5", true),      // SQLITE_BUSY
            ("517", true),    // SQLITE_BUSY_SNAPSHOT
            ("6", true),      // SQLITE_LOCKED
            ("266", true),    // SQLITE_IOERR_READ
            ("14", true),     // SQLITE_CANTOPEN
            ("19", false),    // SQLITE_CONSTRAINT
            ("2067", false),  // SQLITE_CONSTRAINT_UNIQUE
            ("1", false),     // SQLITE_ERROR
            ("08006", true),  // connection failure
            ("53100", true),  // disk full
            ("57P01", true),  // admin shutdown
            ("58030", true),  // I/O error
            ("40001", true),  // serialization failure
            ("40P01", true),  // deadlock
            ("23505", false), // unique violation
            ("22001", false), // string too long
            ("42P01", false), // undefined table
            ("", false),
        ] {
            assert_eq!(is_transient_code(code), transient, "{code}");
        }
    }
}
