//! What the core's Bundle lifecycle needs to know of a sync: the facts of a stored bundle and why
//! a sync failed. The core defines these shapes (it must not know the sync's types); the
//! conversions live here, in the shell that has both.

use super::{SyncError, SyncedBundle};
use crate::{
    core::bundle_lifecycle::{SyncFacts, SyncFailure},
    error_chain::error_chain,
};

impl From<&SyncedBundle> for SyncFacts {
    fn from(synced: &SyncedBundle) -> Self {
        SyncFacts {
            sha256: synced.sha256.clone(),
            zip_size: synced.zip_size,
            uncompressed_size: (!synced.encrypted).then_some(synced.uncompressed_size),
            file_count: (!synced.encrypted || synced.file_count > 0).then_some(synced.file_count),
            zip_key: synced.zip_key.clone(),
            manifest_key: synced.stored_manifest_key().map(str::to_owned),
            compressed_variants: synced.compressed_variants,
        }
    }
}

impl From<&SyncError> for SyncFailure {
    fn from(error: &SyncError) -> Self {
        SyncFailure {
            terminal: error.is_terminal(),
            reason: error.reason(),
            message: error_chain(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::constants::reason,
        layout::{manifest_key, zip_key},
    };

    fn sha(seed: &str) -> String {
        crate::core::fixtures::sha(seed)
    }

    #[test]
    fn sync_facts_come_from_a_synced_bundle() {
        let synced = SyncedBundle {
            sha256: sha("x"),
            zip_size: 10,
            uncompressed_size: 20,
            file_count: 2,
            zip_key: zip_key(&sha("x")),
            manifest_key: manifest_key(&sha("x")),
            manifest: Vec::new(),
            uploaded_files: 2,
            reused_files: 0,
            encrypted: false,
            compressed_variants: false,
        };
        let plain = SyncFacts::from(&synced);
        assert_eq!((plain.file_count, plain.manifest_key.is_some()), (Some(2), true));
        let encrypted = SyncFacts::from(&SyncedBundle {
            encrypted: true,
            manifest_key: String::new(),
            file_count: 0,
            ..synced.clone()
        });
        assert_eq!(
            (
                encrypted.file_count,
                encrypted.uncompressed_size,
                encrypted.manifest_key
            ),
            (None, None, None)
        );
        // Encrypted with its delta files stored: the manifest and the file count, no size.
        let with_delta = SyncFacts::from(&SyncedBundle {
            encrypted: true,
            ..synced
        });
        assert_eq!(
            (
                with_delta.file_count,
                with_delta.uncompressed_size,
                with_delta.manifest_key.clone()
            ),
            (Some(2), None, Some(manifest_key(&sha("x"))))
        );
    }

    #[test]
    fn a_sync_error_becomes_its_reason_terminality_and_message() {
        let failure = SyncFailure::from(&SyncError::ChecksumMismatch {
            expected: sha("a"),
            actual: sha("b"),
        });
        assert_eq!(
            failure,
            SyncFailure {
                terminal: true,
                reason: reason::CHECKSUM_MISMATCH,
                message: format!(
                    "checksum mismatch: expected sha256 {}, got {}",
                    sha("a"),
                    sha("b")
                ),
            }
        );
        let archive = SyncFailure::from(&SyncError::InvalidArchive("entry ../x escapes the bundle".into()));
        assert_eq!(
            (archive.terminal, archive.reason, archive.message.as_str()),
            (
                true,
                reason::INVALID_ARCHIVE,
                "invalid archive: entry ../x escapes the bundle"
            )
        );
    }
}
