//! The limits that protect a sync (and devices) from oversized or hostile bundles, and how much
//! of the machine a sync uses.

use std::time::Duration;

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
pub(super) const STORE_CONCURRENCY: usize = 8;

/// Most threads that decompress and hash a bundle's files at once (each holds well under 1 MiB).
const MAX_WORKERS: usize = 8;

/// Threads that decompress, hash and spool a bundle's files at once: one per CPU the process
/// may use, at most [`MAX_WORKERS`].
pub(super) fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_WORKERS)
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
