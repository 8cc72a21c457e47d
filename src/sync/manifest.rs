//! A bundle's manifest as stored: a JSON array of `{file_name, file_hash, key}`.

use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, path::Path};
use serde::{Deserialize, Serialize};

use super::SyncError;
use crate::layout::{ManifestFile, is_sha256_hex, object_path};

/// A manifest entry as stored (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct StoredManifestEntry {
    file_name: String,
    file_hash: String,
    key: String,
}

/// Largest manifest [`read_manifest`] accepts (20,000 entries take about 5 MB).
const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// Whether `value` has the form of a hash encrypted with a 2048-bit RSA key, as the delta files
/// of an encrypted bundle list them: 256 bytes, in hex (current plugins) or base64 (older ones).
fn is_encrypted_checksum(value: &str) -> bool {
    use base64::Engine as _;
    let hex = value.len() == 512 && value.bytes().all(|b| b.is_ascii_hexdigit());
    hex || base64::engine::general_purpose::STANDARD
        .decode(value)
        .is_ok_and(|bytes| bytes.len() == 256)
}

/// Reads a manifest previously written by [`sync_bundle`] or [`store_encrypted_files`] (the
/// update server loads these at start).
pub async fn read_manifest(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    manifest_key: &str,
) -> Result<Vec<ManifestFile>, SyncError> {
    let invalid = |message: String| SyncError::InvalidManifest {
        key: manifest_key.to_owned(),
        message,
    };
    let path = object_path(prefix, manifest_key).ok_or_else(|| invalid("not a clean relative key".into()))?;
    let result = store
        .get(&path)
        .await
        .map_err(|e| SyncError::storage("read", &path, e))?;
    if result.meta.size > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "{} bytes is more than the limit of {MAX_MANIFEST_BYTES}",
            result.meta.size
        )));
    }
    let bytes = result
        .bytes()
        .await
        .map_err(|e| SyncError::storage("read", &path, e))?;
    let entries: Vec<StoredManifestEntry> =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not a JSON manifest: {e}")))?;
    if entries.is_empty() {
        return Err(invalid("it lists no file".into()));
    }
    entries
        .into_iter()
        .map(|entry| {
            let name_ok = !entry.file_name.is_empty()
                && !entry.file_name.contains('\\')
                && entry
                    .file_name
                    .split('/')
                    .all(|part| !matches!(part, "" | "." | ".."));
            let key_ok = entry.key.strip_prefix("files/").is_some_and(|rest| {
                is_sha256_hex(rest.strip_suffix(".br").unwrap_or(rest))
                    && object_path(prefix, &entry.key).is_some()
            });
            if !name_ok {
                return Err(invalid(format!("bad file name {:?}", entry.file_name)));
            }
            if !is_sha256_hex(&entry.file_hash) && !is_encrypted_checksum(&entry.file_hash) {
                return Err(invalid(format!(
                    "bad hash {:?} for {}",
                    entry.file_hash, entry.file_name
                )));
            }
            if !key_ok {
                return Err(invalid(format!(
                    "bad key {:?} for {}",
                    entry.key, entry.file_name
                )));
            }
            Ok(ManifestFile {
                file_name: entry.file_name,
                file_hash: entry.file_hash,
                key: entry.key,
            })
        })
        .collect()
}

/// The manifest as stored: a JSON array of `{file_name, file_hash, key}`.
pub(super) fn manifest_json(manifest: &[ManifestFile]) -> Result<Vec<u8>, SyncError> {
    let entries: Vec<StoredManifestEntry> = manifest
        .iter()
        .map(|file| StoredManifestEntry {
            file_name: file.file_name.clone(),
            file_hash: file.file_hash.clone(),
            key: file.key.clone(),
        })
        .collect();
    serde_json::to_vec(&entries).map_err(|e| SyncError::Task(format!("cannot encode the manifest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_hashes_are_256_bytes_in_hex_or_base64() {
        use base64::Engine as _;
        assert!(is_encrypted_checksum(&"ab".repeat(256)));
        assert!(is_encrypted_checksum(
            &base64::engine::general_purpose::STANDARD.encode([7u8; 256])
        ));
        assert!(!is_encrypted_checksum(&"ab".repeat(32)), "a plain sha256");
        assert!(!is_encrypted_checksum(&"zz".repeat(256)));
        assert!(!is_encrypted_checksum(
            &base64::engine::general_purpose::STANDARD.encode([7u8; 128])
        ));
    }
}
