//! Why a sync failed, whether retrying can help, and the condition reason to report.

use object_store::path::Path;

use crate::api::constants::reason;

/// Why a sync failed.
///
/// [`SyncError::is_terminal`] tells whether retrying can help; [`SyncError::reason`] gives the
/// condition reason to report.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The source is not allowed: a plain http URL without `allow_http`, another scheme, or a
    /// storage key that is not a clean relative key. Terminal.
    #[error("bundle source refused: {0}")]
    SourceRefused(String),
    /// The source could not be read (network error, HTTP error status, missing file or object).
    /// Transient.
    #[error("bundle source unavailable: {0}")]
    SourceUnavailable(String),
    /// The expected SHA-256 is not 64 hexadecimal characters. Terminal.
    #[error("invalid expected sha256 {0:?}: it must be 64 lower-case hexadecimal characters")]
    InvalidChecksum(String),
    /// The zip's SHA-256 is not the expected one. Terminal.
    #[error("checksum mismatch: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// The SHA-256 the request declared.
        expected: String,
        /// The SHA-256 of the bytes fetched.
        actual: String,
    },
    /// The zip rebuilt from a pushed manifest ([`BundleSourceRef::Manifest`]) is not the one
    /// declared: the push zipped the files with another zip writer (another `ota` version), or
    /// the stored files changed. Terminal.
    #[error(
        "checksum mismatch: the zip rebuilt from {manifest_key} has sha256 {actual}, not the declared \
         {expected}; the bundle was probably pushed by a different ota version, whose zips have other \
         bytes: push it again with this version's `ota bundle push`, or with `ota bundle push \
         --upload-zip` (source.storageKey), which stores the zip itself"
    )]
    RebuiltChecksumMismatch {
        /// The manifest the zip was rebuilt from.
        manifest_key: String,
        /// The SHA-256 the request declared.
        expected: String,
        /// The SHA-256 of the rebuilt zip.
        actual: String,
    },
    /// The zip is too large, malformed or hostile. Terminal.
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    /// Object storage failed or refused a request. Transient.
    #[error("object storage failed to {action} {key}: {source}")]
    Storage {
        /// What was being done (`read`, `write`, `check`).
        action: &'static str,
        /// The key involved (with the prefix).
        key: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A stored manifest cannot be used. Transient (it may be rewritten by a new sync).
    #[error("manifest {key} is invalid: {message}")]
    InvalidManifest {
        /// The manifest's key (relative to the prefix).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The local temporary folder failed (full disk, permissions). Transient.
    #[error("temporary storage failed while {action}: {source}")]
    TempStorage {
        /// What was being done.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A background task of the sync stopped unexpectedly. Transient.
    #[error("a sync task failed: {0}")]
    Task(String),
}

impl SyncError {
    /// Whether retrying cannot help (the bundle or its declaration must change).
    pub fn is_terminal(&self) -> bool {
        match self {
            SyncError::SourceRefused(_)
            | SyncError::InvalidChecksum(_)
            | SyncError::ChecksumMismatch { .. }
            | SyncError::RebuiltChecksumMismatch { .. }
            | SyncError::InvalidArchive(_) => true,
            SyncError::SourceUnavailable(_)
            | SyncError::Storage { .. }
            | SyncError::InvalidManifest { .. }
            | SyncError::TempStorage { .. }
            | SyncError::Task(_) => false,
        }
    }

    /// The condition reason (`ChecksumMismatch`, `InvalidArchive`, `SourceUnavailable` or
    /// `StorageUnavailable`).
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::SourceRefused(_) | SyncError::SourceUnavailable(_) => reason::SOURCE_UNAVAILABLE,
            SyncError::InvalidChecksum(_)
            | SyncError::ChecksumMismatch { .. }
            | SyncError::RebuiltChecksumMismatch { .. } => reason::CHECKSUM_MISMATCH,
            SyncError::InvalidArchive(_) => reason::INVALID_ARCHIVE,
            SyncError::Storage { .. }
            | SyncError::InvalidManifest { .. }
            | SyncError::TempStorage { .. }
            | SyncError::Task(_) => reason::STORAGE_UNAVAILABLE,
        }
    }

    pub(super) fn storage(action: &'static str, key: &Path, source: object_store::Error) -> Self {
        SyncError::Storage {
            action,
            key: key.to_string(),
            source,
        }
    }
}

/// A blocking task that reads the archive died: the archive reader panicked on this input, which
/// only a malformed archive should cause.
pub(super) fn archive_task_failed(error: &tokio::task::JoinError) -> SyncError {
    if error.is_panic() {
        SyncError::InvalidArchive("the archive reader failed on this archive".to_owned())
    } else {
        SyncError::Task(format!("the archive task was cancelled: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let archive = SyncError::InvalidArchive("x".into());
        assert!(archive.is_terminal());
        assert_eq!(archive.reason(), reason::INVALID_ARCHIVE);
        let refused = SyncError::SourceRefused("http".into());
        assert!(refused.is_terminal());
        assert_eq!(refused.reason(), reason::SOURCE_UNAVAILABLE);
        let unavailable = SyncError::SourceUnavailable("404".into());
        assert!(!unavailable.is_terminal());
        assert_eq!(unavailable.reason(), reason::SOURCE_UNAVAILABLE);
        let checksum = SyncError::InvalidChecksum("XYZ".into());
        assert!(checksum.is_terminal());
        assert_eq!(checksum.reason(), reason::CHECKSUM_MISMATCH);
        let task = SyncError::Task("x".into());
        assert!(!task.is_terminal());
        assert_eq!(task.reason(), reason::STORAGE_UNAVAILABLE);
    }
}
