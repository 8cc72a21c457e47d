//! Step 1 of a sync: the zip from its source into a temporary file, hashed on the way.

use std::{
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path as FsPath, PathBuf},
    sync::Arc,
};

use futures::{Stream, StreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{
    BundleSourceRef, SOURCE_IDLE_TIMEOUT, SyncError, SyncLimits, error_chain, fetched::Fetched, object_path,
};

/// Buffer of the temporary file's writer and of local-file reads.
const IO_BUFFER: usize = 256 * 1024;

/// Where the fetched zip is.
#[derive(Debug)]
pub(super) enum ZipLocation {
    /// At the destination given to [`fetch`].
    Destination,
    /// A local file source, used in place rather than copied: the sync reads it where it is
    /// and checks, before it records anything, that it has not changed since it was hashed.
    InPlace {
        /// The file.
        path: PathBuf,
        /// What it was when hashed.
        stamp: FileStamp,
    },
}

/// What identifies a file's content without reading it again: its inode, size, and its
/// modification and change times (any write changes the change time, which nobody can set
/// back). A write within the same timestamp tick as the file's previous change (a few
/// milliseconds) goes unseen: local sources are files the server's own operator provides
/// (`source.path` in standalone mode, the zip `ota bundle push` just wrote), not untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    pub(super) fn of(metadata: &std::fs::Metadata) -> Self {
        FileStamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// Checks that a zip used in place is still the file that was hashed.
pub(super) fn check_unchanged(location: &ZipLocation) -> Result<(), SyncError> {
    let ZipLocation::InPlace { path, stamp } = location else {
        return Ok(());
    };
    let now = std::fs::metadata(path).map(|metadata| FileStamp::of(&metadata));
    match now {
        Ok(now) if now == *stamp => Ok(()),
        Ok(_) => Err(SyncError::SourceUnavailable(format!(
            "file {}: it changed while it was synced (it is synced again from its new content)",
            path.display()
        ))),
        Err(e) => Err(SyncError::SourceUnavailable(format!(
            "file {}: {e} (while it was synced)",
            path.display()
        ))),
    }
}

/// A URL without its query string and fragment (they may hold credentials).
pub(super) fn redact_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

/// The error for a zip above the size limit.
fn too_large(size: u64, limits: &SyncLimits) -> SyncError {
    SyncError::InvalidArchive(format!(
        "the zip is too large: {size} bytes or more, the limit is {} bytes",
        limits.max_zip_bytes
    ))
}

/// Writes `source` into `destination` (a local file is hashed in place instead) and returns its
/// size, SHA-256 and where it is.
pub(super) async fn fetch(
    source: &BundleSourceRef,
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    limits: &SyncLimits,
    http: &reqwest::Client,
    destination: &FsPath,
) -> Result<(Fetched, ZipLocation), SyncError> {
    let create = || async {
        let file = tokio::fs::File::create(destination)
            .await
            .map_err(|source| SyncError::TempStorage {
                action: "creating the temporary zip",
                source,
            })?;
        Ok::<_, SyncError>(HashingSink {
            writer: BufWriter::with_capacity(IO_BUFFER, file),
            hasher: Sha256::new(),
            size: 0,
            limits,
        })
    };
    let fetched = match source {
        BundleSourceRef::File(path) => return hash_file(path, limits).await,
        BundleSourceRef::Url(url) => {
            let mut sink = create().await?;
            fetch_url(url, limits, http, &mut sink).await?;
            sink.finish().await
        }
        BundleSourceRef::StorageKey(key) => {
            let mut sink = create().await?;
            fetch_object(key, store, prefix, limits, &mut sink).await?;
            sink.finish().await
        }
        BundleSourceRef::Manifest(key) => {
            super::rebuild::rebuild_zip(key, store, prefix, limits, destination).await
        }
    };
    Ok((fetched?, ZipLocation::Destination))
}

async fn fetch_url(
    url: &url::Url,
    limits: &SyncLimits,
    http: &reqwest::Client,
    sink: &mut HashingSink<'_>,
) -> Result<(), SyncError> {
    let shown = redact_url(url);
    let scheme_allowed = |url: &url::Url| match url.scheme() {
        "https" => true,
        "http" => limits.allow_http,
        _ => false,
    };
    if !scheme_allowed(url) {
        return Err(SyncError::SourceRefused(format!(
            "{shown}: only https URLs are accepted"
        )));
    }
    let unavailable = |message: String| SyncError::SourceUnavailable(format!("{shown}: {message}"));
    let response = tokio::time::timeout(SOURCE_IDLE_TIMEOUT, http.get(url.clone()).send())
        .await
        .map_err(|_| unavailable(format!("no answer within {} s", SOURCE_IDLE_TIMEOUT.as_secs())))?
        .map_err(|e| unavailable(error_chain(&e.without_url())))?;
    if !scheme_allowed(response.url()) {
        return Err(SyncError::SourceRefused(format!(
            "{shown} redirected to {}: only https URLs are accepted",
            redact_url(response.url())
        )));
    }
    let status = response.status();
    if !status.is_success() {
        return Err(unavailable(format!("the server answered HTTP {status}")));
    }
    if let Some(length) = response.content_length()
        && length > limits.max_zip_bytes
    {
        return Err(too_large(length, limits));
    }
    // Without the URL: it may hold credentials, and the message names the source already.
    let body = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(reqwest::Error::without_url));
    copy_stream(body, sink, |failure| {
        unavailable(format!("reading the body failed: {failure}"))
    })
    .await
}

/// Hashes a local file where it is, in one blocking task (a copy would cost as much again).
async fn hash_file(path: &FsPath, limits: &SyncLimits) -> Result<(Fetched, ZipLocation), SyncError> {
    let (path, limits) = (path.to_owned(), *limits);
    tokio::task::spawn_blocking(move || hash_in_place(&path, &limits))
        .await
        .map_err(|e| SyncError::Task(format!("hashing the zip stopped: {e}")))?
}

fn hash_in_place(path: &FsPath, limits: &SyncLimits) -> Result<(Fetched, ZipLocation), SyncError> {
    let unavailable =
        |e: std::io::Error| SyncError::SourceUnavailable(format!("file {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(unavailable)?;
    let metadata = file.metadata().map_err(unavailable)?;
    if !metadata.is_file() {
        return Err(SyncError::SourceUnavailable(format!(
            "file {}: not a regular file",
            path.display()
        )));
    }
    if metadata.len() > limits.max_zip_bytes {
        return Err(too_large(metadata.len(), limits));
    }
    let stamp = FileStamp::of(&metadata);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut buffer = vec![0; IO_BUFFER];
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unavailable(e)),
        };
        // The file may grow while it is read.
        size = size.saturating_add(read as u64);
        if size > limits.max_zip_bytes {
            return Err(too_large(size, limits));
        }
        hasher.update(&buffer[..read]);
    }
    let location = ZipLocation::InPlace {
        path: path.to_owned(),
        stamp,
    };
    // Written to while it was read: what was hashed may be neither version.
    check_unchanged(&location)?;
    Ok((
        Fetched {
            size,
            sha256: hex::encode(hasher.finalize()),
        },
        location,
    ))
}

async fn fetch_object(
    key: &str,
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    limits: &SyncLimits,
    sink: &mut HashingSink<'_>,
) -> Result<(), SyncError> {
    let Some(path) = object_path(prefix, key) else {
        return Err(SyncError::SourceRefused(format!(
            "storage key {key:?} is not a clean relative key"
        )));
    };
    let result = match store.get(&path).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(SyncError::SourceUnavailable(format!(
                "storage key {key}: no such object"
            )));
        }
        Err(e) => return Err(SyncError::storage("read", &path, e)),
    };
    if result.meta.size > limits.max_zip_bytes {
        return Err(too_large(result.meta.size, limits));
    }
    copy_stream(result.into_stream(), sink, |failure| {
        SyncError::SourceUnavailable(format!("storage key {key}: reading failed: {failure}"))
    })
    .await
}

/// Why reading a source's body stopped: its message goes into the [`SyncError`] the caller
/// makes of it.
#[derive(Debug, thiserror::Error)]
enum ReadFailure<E: std::error::Error + 'static> {
    /// No chunk came for [`SOURCE_IDLE_TIMEOUT`].
    #[error("no data for {} s", SOURCE_IDLE_TIMEOUT.as_secs())]
    Silent,
    /// The source's stream failed.
    #[error("{}", error_chain(.0))]
    Source(E),
}

/// Copies a stream of chunks into the sink, failing when the source stays silent too long.
async fn copy_stream<S, B, E>(
    body: S,
    sink: &mut HashingSink<'_>,
    failed: impl Fn(ReadFailure<E>) -> SyncError,
) -> Result<(), SyncError>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: std::error::Error + 'static,
{
    let mut body = std::pin::pin!(body);
    loop {
        let next = tokio::time::timeout(SOURCE_IDLE_TIMEOUT, body.next())
            .await
            .map_err(|_| failed(ReadFailure::Silent))?;
        match next {
            None => return Ok(()),
            Some(Ok(chunk)) => sink.write(chunk.as_ref()).await?,
            Some(Err(error)) => return Err(failed(ReadFailure::Source(error))),
        }
    }
}

/// The temporary zip being written: counts, hashes and enforces the size limit.
struct HashingSink<'a> {
    writer: BufWriter<tokio::fs::File>,
    hasher: Sha256,
    size: u64,
    limits: &'a SyncLimits,
}

impl HashingSink<'_> {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), SyncError> {
        self.size = self.size.saturating_add(chunk.len() as u64);
        if self.size > self.limits.max_zip_bytes {
            return Err(too_large(self.size, self.limits));
        }
        self.hasher.update(chunk);
        self.writer
            .write_all(chunk)
            .await
            .map_err(|source| SyncError::TempStorage {
                action: "writing the temporary zip",
                source,
            })
    }

    async fn finish(mut self) -> Result<Fetched, SyncError> {
        let failed = |source| SyncError::TempStorage {
            action: "writing the temporary zip",
            source,
        };
        self.writer.flush().await.map_err(failed)?;
        let mut file = self.writer.into_inner();
        file.flush().await.map_err(failed)?;
        Ok(Fetched {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_zip_is_hashed_in_place_and_a_change_after_hashing_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.zip");
        std::fs::write(&path, b"zip bytes").unwrap();
        let (fetched, location) = hash_in_place(&path, &SyncLimits::default()).unwrap();
        assert_eq!(fetched.size, 9);
        assert_eq!(fetched.sha256, hex::encode(Sha256::digest(b"zip bytes")));
        assert!(matches!(&location, ZipLocation::InPlace { path: p, .. } if *p == path));
        check_unchanged(&location).unwrap();

        // The same length, rewritten in place (after the filesystem's timestamp tick).
        std::thread::sleep(std::time::Duration::from_millis(25));
        std::fs::write(&path, b"zip BYTES").unwrap();
        let error = check_unchanged(&location).unwrap_err();
        assert!(!error.is_terminal(), "{error}");
        assert!(
            error.to_string().contains("changed while it was synced"),
            "{error}"
        );
        // Replaced by another file.
        let (_, location) = hash_in_place(&path, &SyncLimits::default()).unwrap();
        std::fs::write(dir.path().join("other"), b"zip BYTES").unwrap();
        std::fs::rename(dir.path().join("other"), &path).unwrap();
        assert!(check_unchanged(&location).is_err());
        // Removed.
        std::fs::remove_file(&path).unwrap();
        assert!(check_unchanged(&location).is_err());
        // The destination of other sources needs no check.
        check_unchanged(&ZipLocation::Destination).unwrap();
    }
}
