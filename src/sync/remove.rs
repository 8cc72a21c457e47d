//! Removing a deleted bundle's objects from storage, and reading which files the other bundles
//! of the same storage still list.
//!
//! What to remove is decided by [`crate::core::bundle_lifecycle::deletion_decision`]; this module
//! only does the I/O, and refuses any key that is not one the sync writes (so a wrong list can
//! never reach outside the bundle layout, let alone outside the prefix).

use std::{collections::BTreeMap, sync::Arc};

use futures::{StreamExt, TryFutureExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path};

use super::{SyncError, is_bundle_key, manifest_key, object_path, read_manifest};
use crate::api::constants::reason;

/// How many deletes or manifest reads run at once.
const CONCURRENCY: usize = 8;

/// Why removing objects, or reading the manifests that decide what to remove, failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// A key is not one the sync writes (`zips/<sha256>.zip`, `manifests/<sha256>[.br].json`,
    /// `files/<sha256>[.br]`). Nothing was removed.
    #[error(
        "refusing to remove {key:?}: only zips/, manifests/ and files/ keys named by a sha256 are removed"
    )]
    NotABundleKey {
        /// The key refused.
        key: String,
    },
    /// Object storage failed or could not be reached; retrying may help.
    #[error("object storage failed to delete {key}: {source}")]
    Storage {
        /// The key involved (with the prefix).
        key: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A manifest of another bundle could not be read or used, so the files it lists are
    /// unknown and no shared file may be removed; retrying may help.
    #[error("cannot tell which files bundle {sha256} still uses: {source}")]
    Manifest {
        /// The sha256 of that bundle's zip.
        sha256: String,
        /// Why.
        #[source]
        source: SyncError,
    },
}

impl RemoveError {
    /// Whether retrying cannot help (a caller bug: the list of keys is wrong).
    pub fn is_terminal(&self) -> bool {
        matches!(self, RemoveError::NotABundleKey { .. })
    }

    /// The condition reason to report.
    pub fn reason(&self) -> &'static str {
        match self {
            RemoveError::NotABundleKey { .. } => reason::INVALID_SPEC,
            RemoveError::Storage { .. } | RemoveError::Manifest { .. } => reason::STORAGE_UNAVAILABLE,
        }
    }
}

/// Deletes exactly `keys` (relative to `prefix`). Every key is checked before anything is
/// deleted: a key that is not a bundle key ([`is_bundle_key`]) refuses the whole call. A key
/// already absent is fine, so calling again after a partial failure finishes the job. Returns
/// how many keys were deleted or already absent.
pub async fn remove_objects(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    keys: &[String],
) -> Result<usize, RemoveError> {
    let mut paths = Vec::with_capacity(keys.len());
    for key in keys {
        let path = is_bundle_key(key)
            .then(|| object_path(prefix, key))
            .flatten()
            .ok_or_else(|| RemoveError::NotABundleKey { key: key.clone() })?;
        paths.push(path);
    }
    futures::stream::iter(paths)
        .map(|path| async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(source) => Err(RemoveError::Storage {
                    key: path.to_string(),
                    source,
                }),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_fold(0usize, |count, ()| async move { Ok(count + 1) })
        .inspect_ok(|count| tracing::info!(removed = count, %prefix, "bundle objects removed"))
        .await
}

/// The file keys listed by the stored manifest of each zip in `sha256s`
/// (`manifests/<sha256>.json`), by sha256. A zip with no manifest in storage (never synced,
/// encrypted, or mid-sync) is absent from the result; a manifest that cannot be read or parsed is
/// an error, since the files it lists would be unknown.
pub async fn stored_file_keys<'a>(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    sha256s: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, Vec<String>>, RemoveError> {
    // Owned items: futures borrowing from the iterator could not be proven `Send` by a caller
    // that runs this inside a spawned task (rustc's higher-ranked lifetime limitation).
    let mut distinct: Vec<String> = sha256s.into_iter().map(str::to_owned).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let found: Vec<Option<(String, Vec<String>)>> = futures::stream::iter(distinct)
        .map(|sha256: String| async move {
            let key = manifest_key(&sha256);
            match read_manifest(store, prefix, &key).await {
                Ok(files) => Ok(Some((sha256, files.into_iter().map(|file| file.key).collect()))),
                Err(SyncError::Storage {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) => Ok(None),
                Err(source) => Err(RemoveError::Manifest { sha256, source }),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use object_store::{PutPayload, memory::InMemory};

    use super::*;

    fn hash(seed: u8) -> String {
        hex::encode([seed; 32])
    }

    #[test]
    fn bundle_keys_are_exactly_the_sync_layout() {
        let h = hash(0xab);
        for good in [
            format!("zips/{h}.zip"),
            format!("manifests/{h}.json"),
            format!("files/{h}"),
            format!("files/{h}.br"),
        ] {
            assert!(is_bundle_key(&good), "{good}");
        }
        for bad in [
            String::new(),
            "zips/x.zip".to_owned(),
            format!("zips/{h}"),
            format!("zips/{h}.zip/extra"),
            format!("files/{}", h.to_uppercase()),
            format!("files/{h}.gz"),
            format!("other/{h}"),
            format!("../files/{h}"),
            format!("/files/{h}"),
            format!("files/../{h}"),
            "index.html".to_owned(),
        ] {
            assert!(!is_bundle_key(&bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_bad_key_refuses_the_whole_call_before_deleting_anything() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("apps/shop");
        let good = format!("files/{}", hash(1));
        store
            .put(
                &object_path(&prefix, &good).expect("a path"),
                PutPayload::from_static(b"x"),
            )
            .await
            .expect("put");
        let error = remove_objects(&store, &prefix, &[good.clone(), "../../etc/passwd".to_owned()])
            .await
            .expect_err("refused");
        assert!(matches!(error, RemoveError::NotABundleKey { .. }), "{error}");
        assert!(error.is_terminal());
        assert!(error.to_string().contains("../../etc/passwd"), "{error}");
        assert!(
            store
                .head(&object_path(&prefix, &good).expect("a path"))
                .await
                .is_ok(),
            "nothing was deleted"
        );
    }

    #[tokio::test]
    async fn removal_is_exact_and_idempotent() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("apps/shop");
        let (gone, kept) = (format!("files/{}", hash(1)), format!("files/{}", hash(2)));
        for key in [&gone, &kept] {
            store
                .put(
                    &object_path(&prefix, key).expect("a path"),
                    PutPayload::from_static(b"x"),
                )
                .await
                .expect("put");
        }
        // The same key without the prefix, which must not be touched.
        store
            .put(&Path::from(gone.as_str()), PutPayload::from_static(b"x"))
            .await
            .expect("put");
        let missing = format!("zips/{}.zip", hash(3));
        assert_eq!(
            remove_objects(&store, &prefix, &[gone.clone(), missing.clone()])
                .await
                .expect("removed"),
            2
        );
        assert_eq!(
            remove_objects(&store, &prefix, &[gone.clone(), missing])
                .await
                .expect("again"),
            2
        );
        let left: Vec<String> = store
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .expect("list");
        let mut left = left;
        left.sort();
        assert_eq!(left, [format!("apps/shop/{kept}"), gone]);
    }

    #[tokio::test]
    async fn stored_file_keys_skips_missing_manifests_and_refuses_broken_ones() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let prefix = Path::from("p");
        let (present, absent, broken) = (hash(1), hash(2), hash(3));
        let manifest = format!(
            r#"[{{"file_name":"index.html","file_hash":"{h}","key":"files/{h}"}}]"#,
            h = hash(9)
        );
        store
            .put(
                &object_path(&prefix, &manifest_key(&present)).expect("a path"),
                PutPayload::from(manifest.into_bytes()),
            )
            .await
            .expect("put");
        let found = stored_file_keys(
            &store,
            &prefix,
            [present.as_str(), absent.as_str(), present.as_str()],
        )
        .await
        .expect("read");
        assert_eq!(found.len(), 1);
        assert_eq!(found[&present], [format!("files/{}", hash(9))]);

        store
            .put(
                &object_path(&prefix, &manifest_key(&broken)).expect("a path"),
                PutPayload::from_static(b"not json"),
            )
            .await
            .expect("put");
        let error = stored_file_keys(&store, &prefix, [present.as_str(), broken.as_str()])
            .await
            .expect_err("broken");
        assert!(!error.is_terminal());
        assert_eq!(error.reason(), reason::STORAGE_UNAVAILABLE);
        assert!(error.to_string().contains(&broken), "{error}");
    }
}
