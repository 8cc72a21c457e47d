//! Step 1 of a sync: the zip from its source into a temporary file, hashed on the way.

use std::{
    io::{Read, Write},
    path::Path as FsPath,
    sync::Arc,
};

use futures::{Stream, StreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{BundleSourceRef, SOURCE_IDLE_TIMEOUT, SyncError, SyncLimits, error_chain, object_path};

/// Buffer of the temporary file's writer and of local-file reads.
const IO_BUFFER: usize = 256 * 1024;

/// A zip fetched into a temporary file.
#[derive(Debug)]
pub(super) struct Fetched {
    /// Bytes written.
    pub size: u64,
    /// Lower-case hex SHA-256 of those bytes.
    pub sha256: String,
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

/// Writes `source` into `destination` and returns its size and SHA-256.
pub(super) async fn fetch(
    source: &BundleSourceRef,
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    limits: &SyncLimits,
    http: &reqwest::Client,
    destination: &FsPath,
) -> Result<Fetched, SyncError> {
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
    match source {
        BundleSourceRef::File(path) => fetch_file(path, limits, destination).await,
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
    }
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
    let body = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(|e| error_chain(&e.without_url())));
    copy_stream(body, sink, |message| {
        unavailable(format!("reading the body failed: {message}"))
    })
    .await
}

/// Copies a local file in one blocking task: reading, hashing and writing in one loop costs far
/// less than a hop between threads per chunk.
async fn fetch_file(path: &FsPath, limits: &SyncLimits, destination: &FsPath) -> Result<Fetched, SyncError> {
    let (path, destination, limits) = (path.to_owned(), destination.to_owned(), *limits);
    tokio::task::spawn_blocking(move || copy_file(&path, &limits, &destination))
        .await
        .map_err(|e| SyncError::Task(format!("the copy of the zip stopped: {e}")))?
}

fn copy_file(path: &FsPath, limits: &SyncLimits, destination: &FsPath) -> Result<Fetched, SyncError> {
    let unavailable =
        |e: std::io::Error| SyncError::SourceUnavailable(format!("file {}: {e}", path.display()));
    let write_failed = |source| SyncError::TempStorage {
        action: "writing the temporary zip",
        source,
    };
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
    let mut output = std::fs::File::create(destination).map_err(|source| SyncError::TempStorage {
        action: "creating the temporary zip",
        source,
    })?;
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
        output.write_all(&buffer[..read]).map_err(write_failed)?;
    }
    output.flush().map_err(write_failed)?;
    Ok(Fetched {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
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
    let body = result
        .into_stream()
        .map(|chunk| chunk.map_err(|e| error_chain(&e)));
    copy_stream(body, sink, |message| {
        SyncError::SourceUnavailable(format!("storage key {key}: reading failed: {message}"))
    })
    .await
}

/// Copies a stream of chunks into the sink, failing when the source stays silent too long.
async fn copy_stream<S, B>(
    body: S,
    sink: &mut HashingSink<'_>,
    failed: impl Fn(String) -> SyncError,
) -> Result<(), SyncError>
where
    S: Stream<Item = Result<B, String>>,
    B: AsRef<[u8]>,
{
    let mut body = std::pin::pin!(body);
    loop {
        let next = tokio::time::timeout(SOURCE_IDLE_TIMEOUT, body.next())
            .await
            .map_err(|_| failed(format!("no data for {} s", SOURCE_IDLE_TIMEOUT.as_secs())))?;
        match next {
            None => return Ok(()),
            Some(Ok(chunk)) => sink.write(chunk.as_ref()).await?,
            Some(Err(message)) => return Err(failed(message)),
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
