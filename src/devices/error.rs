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
    /// A [`StoreError::Database`] maker for `map_err`.
    pub(super) fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { operation, source }
    }
}
