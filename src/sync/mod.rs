//! Bundle sync: the one path by which a bundle's zip gets into an App's object storage.
//!
//! [`sync_bundle`] takes the zip from its source (an https URL, a local file or an object
//! already in the store), verifies its SHA-256, validates the archive (no path traversal,
//! symlinks, duplicates or zip bombs; `index.html` at the root or in one wrapping folder), computes
//! the per-file delta manifest and stores everything through [`object_store`], so that the
//! filesystem works now and S3, GCS or Azure plug in without changes here.
//!
//! Storage layout, relative to the App's key prefix (every key is content-addressed):
//!
//! - `zips/<sha256>.zip`: the zip exactly as fetched (`<sha256>` is its SHA-256);
//! - `files/<sha256>`: one file of a bundle, raw (`<sha256>` is the SHA-256 of its content);
//! - `files/<sha256>.br`: one file of a bundle, Brotli-compressed (`<sha256>` is still the hash
//!   of the original content); such a file is listed in a manifest with `.br` appended to its
//!   name. A file whose own name ends in `.br` is always stored this way, whatever its size,
//!   because the plugin Brotli-decodes every entry named `*.br`;
//! - `manifests/<sha256>.json`: the manifest of the zip `<sha256>`, a JSON array of
//!   `{"file_name", "file_hash", "key"}`, sorted by `file_name`, listing the raw files;
//! - `manifests/<sha256>.br.json`: the same manifest once the Brotli variants are made, naming
//!   the `.br` form of every file that has one.
//!
//! A sync has two steps. [`sync_bundle`] makes the bundle servable: one pass over the archive
//! (on every CPU) validates it, hashes each file and spools it to a temporary file, then the raw
//! files storage lacks, the zip and the manifest are stored. [`compress_variants`] then makes,
//! off the critical path, the Brotli variants of the files that shrink (files of at least
//! [`BROTLI_MIN_SIZE`] whose first bytes do not show a compressed format) and stores the second
//! manifest; until it is done, devices download raw files, which the plugin takes as well. It is
//! idempotent: a variant already in storage is not made again.
//!
//! A bundle encrypted with the plugin's v2 scheme goes through [`sync_encrypted_bundle`]: its zip
//! is verified and stored as is, with no files and no manifest (the server cannot decrypt it).
//!
//! Files shared by several bundles are stored once. Syncing the same bundle again uploads
//! nothing. The zip and every file go through temporary files (a local zip is read where it
//! is, and must not change before the sync is recorded), and the bytes held in memory are
//! capped, so memory stays bounded whatever the bundle's size (see
//! `benches/bundle_sync.rs`). Brotli runs at quality 6: the `brotli` crate's quality 9 needs a
//! 32 MiB hash table per encoder, for output 1 to 5 % smaller.

mod archive;
mod deterministic_zip;
mod encrypted;
mod facts;
mod fetch;
mod objects;
mod rebuild;
mod remove;
mod variants;

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

pub use deterministic_zip::{DeterministicZip, entry_order};
pub use encrypted::{EncryptedFiles, store_encrypted_files};
pub use remove::{RemoveError, remove_objects, stored_file_keys};
pub use variants::{CompressedVariants, already_compressed, compress_variants};

// The key layout lives in the pure `layout` leaf (the core reads it too); re-exported here,
// where the sync's callers have always found it.
pub use crate::layout::{
    ManifestFile, file_key, file_key_is_content_addressed, is_bundle_key, is_sha256_hex, manifest_key,
    object_path, variant_manifest_key, zip_key,
};

use crate::api::constants::reason;
use crate::error_chain::error_chain;

/// Files at least this big are offered to Brotli (the Capgo CLI's threshold).
pub const BROTLI_MIN_SIZE: u64 = 8 * 1024;

/// The per-entry compression-ratio limit applies to entries that decompress to more than this.
///
/// Small, very repetitive files (a 100 KB run of spaces, an empty JSON padded with zeros) can
/// legitimately compress better than any sane ratio limit; they cannot hurt anyone, and the
/// total size limit still counts them.
pub const RATIO_CHECK_MIN_SIZE: u64 = 1024 * 1024;

/// How long a source may stay silent (before answering, or between two chunks of the body).
pub const SOURCE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How many store requests (HEAD or upload) run at once.
const STORE_CONCURRENCY: usize = 8;

/// Most threads that decompress and hash a bundle's files at once (each holds well under 1 MiB).
const MAX_WORKERS: usize = 8;

/// Threads that decompress, hash and spool a bundle's files at once: one per CPU the process
/// may use, at most [`MAX_WORKERS`].
fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_WORKERS)
}

/// Where a bundle's zip comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSourceRef {
    /// An https URL (plain http only when [`SyncLimits::allow_http`] is set).
    Url(url::Url),
    /// A file on the local filesystem.
    File(PathBuf),
    /// An object already in the store, by its key relative to the prefix.
    StorageKey(String),
    /// A bundle pushed as files (`ota bundle push`): the key of its manifest in the store; the
    /// zip is rebuilt from the files it lists with [`DeterministicZip`].
    Manifest(String),
}

impl BundleSourceRef {
    /// The source a Bundle's spec names. `local_folder`: where a relative `source.path` is
    /// resolved (standalone mode); `None` in a cluster, where a path on a server's disk is
    /// refused.
    pub fn of(
        source: &crate::api::bundle::BundleSource,
        local_folder: Option<&std::path::Path>,
    ) -> Result<BundleSourceRef, String> {
        match (
            &source.url,
            &source.storage_key,
            &source.manifest_key,
            &source.path,
        ) {
            (Some(url), None, None, None) => url::Url::parse(url)
                .map(BundleSourceRef::Url)
                .map_err(|e| format!("source.url {url:?} is not a URL: {e}")),
            (None, Some(key), None, None) => Ok(BundleSourceRef::StorageKey(key.clone())),
            (None, None, Some(key), None) => Ok(BundleSourceRef::Manifest(key.clone())),
            (None, None, None, Some(path)) => match local_folder {
                Some(folder) => Ok(BundleSourceRef::File(folder.join(path))),
                None => Err(
                    "source.path names a file on a standalone server's disk; in a cluster use \
                     source.url, source.storageKey or source.manifestKey"
                        .to_owned(),
                ),
            },
            _ => Err("source needs exactly one of url, storageKey, manifestKey or path".to_owned()),
        }
    }

    /// A short name of the kind of source, for logs: `url`, `file` or `storage`.
    pub fn kind(&self) -> &'static str {
        match self {
            BundleSourceRef::Url(_) => "url",
            BundleSourceRef::File(_) => "file",
            BundleSourceRef::StorageKey(_) => "storage",
            BundleSourceRef::Manifest(_) => "manifest",
        }
    }
}

/// Shows the source for logs and errors. A URL loses its query string and fragment, which may
/// hold credentials (pre-signed URLs).
impl fmt::Display for BundleSourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleSourceRef::Url(url) => f.write_str(&fetch::redact_url(url)),
            BundleSourceRef::File(path) => write!(f, "file {}", path.display()),
            BundleSourceRef::StorageKey(key) => write!(f, "storage key {key}"),
            BundleSourceRef::Manifest(key) => write!(f, "manifest {key}"),
        }
    }
}

/// Limits that protect the sync (and devices) from oversized or hostile bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLimits {
    /// Largest zip accepted, in bytes.
    pub max_zip_bytes: u64,
    /// Most entries (files and folders) in the zip.
    pub max_entries: usize,
    /// Largest total of the files once decompressed, in bytes.
    pub max_uncompressed_bytes: u64,
    /// Highest ratio of decompressed to compressed size of one entry (for entries larger than
    /// [`RATIO_CHECK_MIN_SIZE`]).
    pub max_compression_ratio: u64,
    /// Accept plain `http://` URLs (for tests and trusted networks only).
    pub allow_http: bool,
}

impl Default for SyncLimits {
    /// 512 MiB zip, 20,000 entries, 2 GiB decompressed, ratio 200:1, https only.
    fn default() -> Self {
        SyncLimits {
            max_zip_bytes: 512 * 1024 * 1024,
            max_entries: 20_000,
            max_uncompressed_bytes: 2 * 1024 * 1024 * 1024,
            max_compression_ratio: 200,
            allow_http: false,
        }
    }
}

/// One bundle to sync.
#[derive(Debug, Clone, Copy)]
pub struct SyncRequest<'a> {
    /// Where the zip comes from.
    pub source: &'a BundleSourceRef,
    /// Lower-case hex SHA-256 the zip must have.
    pub expected_sha256: &'a str,
    /// The App's object storage.
    pub store: &'a Arc<dyn ObjectStore>,
    /// The App's key prefix in that storage (every key is relative to it).
    pub prefix: &'a Path,
    /// Limits on the zip.
    pub limits: &'a SyncLimits,
    /// The HTTP client for URL sources (its timeouts, proxy and TLS settings apply).
    pub http: &'a reqwest::Client,
}

/// What a successful sync found and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedBundle {
    /// Lower-case hex SHA-256 of the zip.
    pub sha256: String,
    /// Bytes of the zip.
    pub zip_size: u64,
    /// Bytes of the bundle's files once decompressed.
    pub uncompressed_size: u64,
    /// Files in the bundle (entries of the manifest).
    pub file_count: u64,
    /// Key of the zip, relative to the prefix (`zips/<sha256>.zip`).
    pub zip_key: String,
    /// Key of the manifest, relative to the prefix (`manifests/<sha256>.json`).
    pub manifest_key: String,
    /// The manifest, sorted by file name (keys relative to the prefix).
    pub manifest: Vec<ManifestFile>,
    /// Distinct file contents this sync uploaded.
    pub uploaded_files: u64,
    /// Distinct file contents that were already in the store.
    pub reused_files: u64,
    /// The zip is encrypted with the plugin's v2 scheme ([`sync_encrypted_bundle`]): the zip is
    /// stored as is, and `uncompressed_size` is 0 (unknown). Its delta files and manifest are
    /// there only when who encrypted it stored them; otherwise `manifest_key` is empty,
    /// `manifest` too and `file_count` 0, and devices get the zip whole.
    pub encrypted: bool,
    /// The Brotli variants are made ([`compress_variants`]): `manifest_key` is
    /// `manifests/<sha256>.br.json` and `manifest` names the `.br` form of the files that have
    /// one. False after [`sync_bundle`].
    pub compressed_variants: bool,
}

impl SyncedBundle {
    /// The manifest's key, when a manifest was stored (an encrypted bundle has one only when
    /// its delta files were stored with it).
    pub fn stored_manifest_key(&self) -> Option<&str> {
        (!self.manifest_key.is_empty()).then_some(self.manifest_key.as_str())
    }

    /// The bundle once [`compress_variants`] made its Brotli variants.
    pub fn with_variants(self, variants: CompressedVariants) -> SyncedBundle {
        SyncedBundle {
            manifest_key: variants.manifest_key,
            manifest: variants.manifest,
            compressed_variants: true,
            ..self
        }
    }
}

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

    fn storage(action: &'static str, key: &Path, source: object_store::Error) -> Self {
        SyncError::Storage {
            action,
            key: key.to_string(),
            source,
        }
    }
}

/// A manifest entry as stored (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct StoredManifestEntry {
    file_name: String,
    file_hash: String,
    key: String,
}

/// Largest manifest [`read_manifest`] accepts (20,000 entries take about 5 MB).
const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

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
fn sync_span(request: &SyncRequest<'_>, encrypted: bool) -> tracing::Span {
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

/// Syncs a bundle encrypted with the plugin's v2 scheme (a Bundle with `spec.encryption`): its
/// zip is AES ciphertext that only devices can decrypt (the server never holds the private key),
/// so it cannot be validated or split into files. The zip is fetched, its declared SHA-256 (of
/// the ciphertext) verified, and stored as is under `zips/<sha256>.zip`. When its encrypted
/// delta files are stored already ([`store_encrypted_files`], by who holds the private key),
/// their manifest is checked and recorded.
pub async fn sync_encrypted_bundle(request: SyncRequest<'_>) -> Result<SyncedBundle, SyncError> {
    let span = sync_span(&request, true);
    sync_encrypted_inner(request).instrument(span).await
}

/// A zip fetched into a temporary folder (or a local file used in place) and verified against
/// the declared sha256.
struct FetchedZip {
    /// The temporary folder (removed when dropped), for the zip and the spool files.
    workdir: tempfile::TempDir,
    /// The zip: inside the temporary folder, or the local source file.
    zip_path: std::path::PathBuf,
    /// Its size and sha256.
    fetched: fetch::Fetched,
    /// Where the zip is (a local source must not change before the sync is recorded).
    location: fetch::ZipLocation,
}

impl FetchedZip {
    /// Fails when a local source zip changed since it was hashed. Then the zip just stored (if
    /// this sync stored it) is removed: it may not be the verified bytes.
    async fn check_unchanged(
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
async fn fetch_verified(request: &SyncRequest<'_>, file_name: &str) -> Result<FetchedZip, SyncError> {
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

async fn sync_encrypted_inner(request: SyncRequest<'_>) -> Result<SyncedBundle, SyncError> {
    let SyncRequest { store, prefix, .. } = request;
    if let BundleSourceRef::Manifest(key) = request.source {
        return Err(SyncError::SourceRefused(format!(
            "manifest {key}: an encrypted bundle cannot be rebuilt from files (only devices can \
             decrypt them); its source must be the encrypted zip (url, storageKey or path)"
        )));
    }
    // The temporary folder lives until the zip is stored.
    let zip = fetch_verified(&request, "bundle.zip.enc").await?;
    let fetched = &zip.fetched;
    let zip_key = zip_key(&fetched.sha256);
    let zip_uploaded = objects::store_zip(store, prefix, &zip_key, &zip.zip_path, fetched.size).await?;
    zip.check_unchanged(store, prefix, &zip_key, zip_uploaded).await?;
    // Delta files exist only when who encrypted the bundle stored them (`ota bundle push
    // --encrypt`); the server cannot make them.
    let manifest = stored_encrypted_manifest(store, prefix, &fetched.sha256).await?;
    tracing::info!(
        zip_size = fetched.size,
        zip_uploaded,
        delta_files = manifest.as_ref().map_or(0, |(_, files)| files.len()),
        "encrypted bundle synced"
    );
    let (manifest_key, manifest) = manifest.unwrap_or_default();
    Ok(SyncedBundle {
        sha256: fetched.sha256.clone(),
        zip_size: fetched.size,
        uncompressed_size: 0,
        file_count: manifest.len() as u64,
        zip_key,
        manifest_key,
        manifest,
        uploaded_files: 0,
        reused_files: 0,
        encrypted: true,
        compressed_variants: false,
    })
}

/// The manifest of an encrypted bundle's delta files, when one is stored: every file it lists
/// must be in the store (a device would fail on a missing one), else it is refused.
async fn stored_encrypted_manifest(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    sha256: &str,
) -> Result<Option<(String, Vec<ManifestFile>)>, SyncError> {
    let key = manifest_key(sha256);
    let files = match read_manifest(store, prefix, &key).await {
        Ok(files) => files,
        Err(SyncError::Storage {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return Ok(None),
        Err(error) => return Err(error),
    };
    // Owned keys: a stream over borrowed items could not be proven `Send` by the controller.
    let keys: Vec<String> = files.iter().map(|file| file.key.clone()).collect();
    let missing = futures::stream::iter(keys)
        .map(|file_key: String| async move {
            let path = object_path(prefix, &file_key);
            let found = match &path {
                Some(path) => match store.head(path).await {
                    Ok(_) => true,
                    Err(object_store::Error::NotFound { .. }) => false,
                    Err(e) => return Err(SyncError::storage("check", path, e)),
                },
                None => false,
            };
            Ok((!found).then_some(file_key))
        })
        .buffer_unordered(STORE_CONCURRENCY)
        .try_collect::<Vec<Option<String>>>()
        .await?;
    let missing: Vec<String> = missing.into_iter().flatten().collect();
    if let Some(first) = missing.first() {
        return Err(SyncError::InvalidManifest {
            key,
            message: format!("{} of its files are not in storage, e.g. {first}", missing.len()),
        });
    }
    Ok(Some((key, files)))
}

/// A blocking task that reads the archive died: the archive reader panicked on this input, which
/// only a malformed archive should cause.
fn archive_task_failed(error: &tokio::task::JoinError) -> SyncError {
    if error.is_panic() {
        SyncError::InvalidArchive("the archive reader failed on this archive".to_owned())
    } else {
        SyncError::Task(format!("the archive task was cancelled: {error}"))
    }
}

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
fn manifest_json(manifest: &[ManifestFile]) -> Result<Vec<u8>, SyncError> {
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

    #[test]
    fn a_bundles_source_is_exactly_one_kind_and_a_local_path_only_outside_a_cluster() {
        let source = |value: serde_json::Value| -> crate::api::bundle::BundleSource {
            serde_json::from_value(value).expect("a source")
        };
        let sha = "a".repeat(64);
        let folder = std::path::Path::new("/srv/bundles");
        assert!(matches!(
            BundleSourceRef::of(
                &source(serde_json::json!({"url": "https://ci.example.com/b.zip", "sha256": sha})),
                None
            ),
            Ok(BundleSourceRef::Url(_))
        ));
        assert!(matches!(
            BundleSourceRef::of(&source(serde_json::json!({"manifestKey": "manifests/x.json", "sha256": sha})), None),
            Ok(BundleSourceRef::Manifest(key)) if key == "manifests/x.json"
        ));
        let local = source(serde_json::json!({"path": "b.zip", "sha256": sha}));
        assert!(matches!(
            BundleSourceRef::of(&local, Some(folder)),
            Ok(BundleSourceRef::File(path)) if path == folder.join("b.zip")
        ));
        let refused = BundleSourceRef::of(&local, None).expect_err("no local files in a cluster");
        assert!(refused.contains("in a cluster use source.url"), "{refused}");
        let bad_url = BundleSourceRef::of(
            &source(serde_json::json!({"url": "not a url", "sha256": sha})),
            None,
        )
        .expect_err("not a URL");
        assert!(bad_url.contains("is not a URL"), "{bad_url}");
        let two =
            source(serde_json::json!({"url": "https://a.example/b.zip", "storageKey": "k", "sha256": sha}));
        let error = BundleSourceRef::of(&two, Some(folder)).expect_err("two kinds");
        assert!(error.contains("exactly one of"), "{error}");
    }
}
