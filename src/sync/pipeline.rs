//! The sync of a plain bundle, step by step: fetch and verify the zip, scan the archive, store
//! the files storage lacks, the zip and the manifest.

use std::{collections::HashMap, sync::Arc, time::Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path};
use tracing::Instrument;

use super::{
    BundleSourceRef, STORE_CONCURRENCY, SyncError, SyncRequest, SyncedBundle, archive, archive_task_failed,
    fetch, fetched::Fetched, objects,
};
use crate::layout::{ManifestFile, file_key, is_sha256_hex, manifest_key, object_path, zip_key};

/// Fetches, verifies, validates and stores one bundle; see the [module documentation](self).
///
/// Nothing is uploaded before the zip has been verified and fully validated. The files go
/// first, then the zip, then the manifest, so a manifest in the store means a complete sync.
pub async fn sync_bundle(request: SyncRequest<'_>) -> Result<SyncedBundle, SyncError> {
    let span = sync_span(&request, false);
    sync_inner(request, StoreZip::Yes).instrument(span).await
}

/// [`sync_bundle`] without storing the zip: the files storage lacks and the manifest only.
/// `ota bundle push` does this; the Bundle it writes names the manifest
/// ([`BundleSourceRef::Manifest`]), and the sync rebuilds the zip from the stored files. A file
/// worth it is uploaded in its Brotli form only, when that is smaller (fewer bytes from CI; a
/// file stored in either form counts as present): the manifest names that form, the rebuild
/// decodes it, and the operator's sync then stores the raw form from the rebuilt zip. The
/// zip must come from [`DeterministicZip`] with `index.html` at its root (as `ota bundle zip`
/// writes it), else it cannot be rebuilt: such a zip is refused here.
pub async fn sync_bundle_files(request: SyncRequest<'_>) -> Result<SyncedBundle, SyncError> {
    let span = sync_span(&request, false);
    sync_inner(request, StoreZip::No).instrument(span).await
}

/// Whether a sync stores the zip itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreZip {
    Yes,
    No,
}

/// The span of one sync: the start of the sha256, the source kind, the prefix.
pub(super) fn sync_span(request: &SyncRequest<'_>, encrypted: bool) -> tracing::Span {
    let short = request
        .expected_sha256
        .get(..12)
        .unwrap_or(request.expected_sha256);
    tracing::info_span!(
        "bundle_sync",
        sha256 = %short,
        source = request.source.kind(),
        prefix = %request.prefix,
        encrypted,
    )
}

async fn sync_inner(request: SyncRequest<'_>, store_zip: StoreZip) -> Result<SyncedBundle, SyncError> {
    let started = Instant::now();
    let SyncRequest {
        store,
        prefix,
        limits,
        ..
    } = request;
    // 1. and 2. Fetch into a temporary file (a local file is read in place), hashing on the
    // way, and verify.
    let zip = fetch_verified(&request, "bundle.zip").await?;
    let sha256 = zip.fetched.sha256.clone();
    let zip_size = zip.fetched.size;

    // 3. One pass over the archive, on every CPU: validate it whole, hash every file and spool
    // it, before storing anything.
    let scan = {
        let zip_path = zip.zip_path.clone();
        let spool_dir = zip.workdir.path().to_owned();
        let limits = *limits;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| archive::scan(&zip_path, &limits, Some(&spool_dir)))
        })
        .await
        .map_err(|e| archive_task_failed(&e))??
    };
    tracing::debug!(
        files = scan.files.len(),
        bytes = scan.uncompressed_size,
        "archive validated"
    );
    if store_zip == StoreZip::No
        && let Some(folder) = &scan.flattened
    {
        return Err(SyncError::InvalidArchive(format!(
            "index.html is in the folder {folder}, not at the root: a zip stored as files only must \
             be rebuildable, with its files at the root"
        )));
    }

    // 4. Which contents does the store already have (raw, or compressed when that is required)?
    // Each distinct content: where it is first, whether it must be compressed.
    let mut contents: HashMap<&str, (usize, bool)> = HashMap::new();
    for (position, file) in scan.files.iter().enumerate() {
        let content = contents.entry(file.hash.as_str()).or_insert((position, false));
        content.1 |= objects::needs_brotli(&file.path);
    }
    // Owned items: futures borrowing from the iterator could not be proven `Send` by a caller
    // that runs the sync inside a spawned task (rustc's higher-ranked lifetime limitation).
    let lookups: Vec<(String, usize, u64, bool)> = contents
        .iter()
        .map(|(hash, &(position, brotli_required))| {
            (
                (*hash).to_owned(),
                position,
                scan.files[position].size,
                brotli_required,
            )
        })
        .collect();
    let found: Vec<(String, usize, bool, Option<bool>)> = futures::stream::iter(lookups)
        .map(|(hash, position, size, brotli_required)| async move {
            let stored = match store_zip {
                StoreZip::Yes => objects::find_content(store, prefix, &hash, size, brotli_required).await?,
                StoreZip::No => objects::find_any_form(store, prefix, &hash, size, brotli_required).await?,
            };
            Ok::<_, SyncError>((hash, position, brotli_required, stored))
        })
        .buffer_unordered(STORE_CONCURRENCY)
        .try_collect()
        .await?;
    let mut brotli_by_hash: HashMap<String, bool> = HashMap::with_capacity(found.len());
    let mut missing = Vec::new();
    for (hash, position, brotli_required, stored) in found {
        match stored {
            Some(brotli) => {
                brotli_by_hash.insert(hash, brotli);
            }
            None => {
                let file = &scan.files[position];
                let spooled = file
                    .spooled
                    .ok_or_else(|| SyncError::Task(format!("{} was not spooled", file.path)))?;
                missing.push(objects::SpooledContent {
                    hash,
                    size: file.size,
                    spooled,
                    brotli_required,
                    // A push uploads the smaller form; the operator stores the raw one.
                    brotli_if_smaller: store_zip == StoreZip::No
                        && objects::worth_brotli(&file.path, file.size, file.compressed_size, file.stored),
                });
            }
        }
    }
    let reused_files = brotli_by_hash.len() as u64;
    // Upload in spool order, so the spool files are read nearly sequentially.
    missing.sort_by_key(|content| (content.spooled.spool, content.spooled.offset));
    let uploaded_files = missing.len() as u64;
    tracing::debug!(
        missing = uploaded_files,
        present = reused_files,
        "checked the store"
    );

    // 5. and 6. Upload the missing files and the zip at the same time.
    let zip_key = zip_key(&sha256);
    let spools = Arc::new(scan.spools);
    let (uploaded, zip_uploaded) = futures::future::try_join(
        objects::upload_spooled(store, prefix, &spools, zip.workdir.path(), missing),
        async {
            match store_zip {
                StoreZip::Yes => objects::store_zip(store, prefix, &zip_key, &zip.zip_path, zip_size).await,
                StoreZip::No => Ok(false),
            }
        },
    )
    .await?;
    brotli_by_hash.extend(uploaded);
    tracing::debug!(uploaded = uploaded_files, zip_uploaded, "files and zip stored");

    zip.check_unchanged(store, prefix, &zip_key, zip_uploaded).await?;

    // 7. The manifest.
    let mut manifest = Vec::with_capacity(scan.files.len());
    for file in &scan.files {
        let Some(&brotli) = brotli_by_hash.get(&file.hash) else {
            return Err(SyncError::Task(format!("no stored content for {}", file.path)));
        };
        manifest.push(ManifestFile {
            file_name: if brotli {
                format!("{}.br", file.path)
            } else {
                file.path.clone()
            },
            file_hash: file.hash.clone(),
            key: file_key(&file.hash, brotli),
        });
    }
    manifest.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    let manifest_key = manifest_key(&sha256);
    let manifest_uploaded = objects::store_manifest(store, prefix, &manifest_key, &manifest).await?;

    let synced = SyncedBundle {
        sha256,
        zip_size,
        uncompressed_size: scan.uncompressed_size,
        file_count: manifest.len() as u64,
        zip_key,
        manifest_key,
        manifest,
        uploaded_files,
        reused_files,
        encrypted: false,
        compressed_variants: false,
    };
    tracing::info!(
        zip_size = synced.zip_size,
        uncompressed_size = synced.uncompressed_size,
        files = synced.file_count,
        uploaded_files,
        reused_files,
        zip_uploaded,
        manifest_uploaded,
        flattened = scan.flattened.as_deref().unwrap_or(""),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "bundle synced"
    );
    Ok(synced)
}

/// A zip fetched into a temporary folder (or a local file used in place) and verified against
/// the declared sha256.
pub(super) struct FetchedZip {
    /// The temporary folder (removed when dropped), for the zip and the spool files.
    pub(super) workdir: tempfile::TempDir,
    /// The zip: inside the temporary folder, or the local source file.
    pub(super) zip_path: std::path::PathBuf,
    /// Its size and sha256.
    pub(super) fetched: Fetched,
    /// Where the zip is (a local source must not change before the sync is recorded).
    location: fetch::ZipLocation,
}

impl FetchedZip {
    /// Fails when a local source zip changed since it was hashed. Then the zip just stored (if
    /// this sync stored it) is removed: it may not be the verified bytes.
    pub(super) async fn check_unchanged(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &Path,
        zip_key: &str,
        zip_uploaded: bool,
    ) -> Result<(), SyncError> {
        let Err(error) = fetch::check_unchanged(&self.location) else {
            return Ok(());
        };
        if zip_uploaded && let Some(path) = object_path(prefix, zip_key) {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(SyncError::storage("delete", &path, e)),
            }
        }
        Err(error)
    }
}

/// Checks the declared sha256's form, fetches the source into a new temporary folder (as
/// `file_name`), hashing on the way, and refuses a zip whose sha256 is not the declared one.
pub(super) async fn fetch_verified(
    request: &SyncRequest<'_>,
    file_name: &str,
) -> Result<FetchedZip, SyncError> {
    let expected_sha256 = request.expected_sha256;
    if !is_sha256_hex(expected_sha256) {
        return Err(SyncError::InvalidChecksum(expected_sha256.to_owned()));
    }
    let workdir = tempfile::Builder::new()
        .prefix("ota-sync-")
        .tempdir()
        .map_err(|source| SyncError::TempStorage {
            action: "creating a temporary folder",
            source,
        })?;
    let destination = workdir.path().join(file_name);
    let (fetched, location) = fetch::fetch(
        request.source,
        request.store,
        request.prefix,
        request.limits,
        request.http,
        &destination,
    )
    .await?;
    let zip_path = match &location {
        fetch::ZipLocation::Destination => destination,
        fetch::ZipLocation::InPlace { path, .. } => path.clone(),
    };
    tracing::debug!(bytes = fetched.size, "fetched");
    if fetched.sha256 != expected_sha256 {
        return Err(match request.source {
            BundleSourceRef::Manifest(manifest_key) => SyncError::RebuiltChecksumMismatch {
                manifest_key: manifest_key.clone(),
                expected: expected_sha256.to_owned(),
                actual: fetched.sha256,
            },
            _ => SyncError::ChecksumMismatch {
                expected: expected_sha256.to_owned(),
                actual: fetched.sha256,
            },
        });
    }
    Ok(FetchedZip {
        workdir,
        zip_path,
        fetched,
        location,
    })
}
