//! Steps 4 to 7 of a sync: what the store has, and uploading files, the zip and the manifest
//! with bounded memory.
//!
//! Missing files are extracted again from the temporary zip by one blocking task, Brotli-
//! compressed there when they are big enough, and handed through a short queue to concurrent
//! uploads. A file up to [`MEMORY_SPOOL_MAX`] travels in memory; a larger one through temporary
//! files, uploaded in parts. At most [`LARGE_UPLOADS`] such uploads run at once.

use std::{
    fs::File,
    io::{BufWriter, Seek, SeekFrom, Write},
    path::Path as FsPath,
    sync::Arc,
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, path::Path};
use tokio::{io::AsyncReadExt, sync::Semaphore};

use super::{
    BROTLI_MIN_SIZE, STORE_CONCURRENCY, SyncError,
    archive::{self, Extract},
    file_key, manifest_json, object_path,
};

/// Files up to this size are extracted and compressed in memory.
const MEMORY_SPOOL_MAX: u64 = 1024 * 1024;
/// Objects up to this size are uploaded in one request; larger ones in parts of this size (the
/// S3 minimum part size).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Uploads from temporary files that run at once (each holds up to two parts in memory).
const LARGE_UPLOADS: usize = 2;
/// Prepared files waiting for an upload slot.
const PREPARED_QUEUE: usize = 2;
/// Brotli settings: quality 9 of 11 and a 4 MiB window.
const BROTLI_QUALITY: u32 = 9;
const BROTLI_LGWIN: u32 = 22;
/// Buffer of reads from temporary files.
const READ_CHUNK: usize = 256 * 1024;

/// The bytes of one file to upload.
#[derive(Debug)]
enum Body {
    Memory(Bytes),
    File { file: File, len: u64 },
}

/// One file ready for upload.
#[derive(Debug)]
struct Prepared {
    hash: String,
    brotli: bool,
    body: Body,
}

fn temp_failed(action: &'static str) -> impl Fn(std::io::Error) -> SyncError {
    move |source| SyncError::TempStorage { action, source }
}

/// The store path of a key this module built (always clean).
fn path_of(prefix: &Path, key: &str) -> Result<Path, SyncError> {
    object_path(prefix, key).ok_or_else(|| SyncError::Task(format!("built an invalid key {key:?}")))
}

/// Whether the store holds a content: `Some(true)` compressed, `Some(false)` raw, `None` not
/// (or only a raw object of the wrong size, which is then overwritten).
pub(super) async fn find_content(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    hash: &str,
    size: u64,
) -> Result<Option<bool>, SyncError> {
    if size >= BROTLI_MIN_SIZE {
        let path = path_of(prefix, &file_key(hash, true))?;
        match store.head(&path).await {
            Ok(meta) if meta.size > 0 => return Ok(Some(true)),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(SyncError::storage("check", &path, e)),
        }
    }
    let path = path_of(prefix, &file_key(hash, false))?;
    match store.head(&path).await {
        Ok(meta) => Ok((meta.size == size).then_some(false)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(SyncError::storage("check", &path, e)),
    }
}

/// Extracts, compresses and uploads the missing contents; returns for each its hash and whether
/// it was stored compressed.
pub(super) async fn upload_files(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    zip_path: &FsPath,
    workdir: &FsPath,
    missing: Vec<Extract>,
) -> Result<Vec<(String, bool)>, SyncError> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(PREPARED_QUEUE);
    let producer = {
        let zip_path = zip_path.to_owned();
        let workdir = workdir.to_owned();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                if let Err(error) = prepare_all(&zip_path, &workdir, missing, &sender) {
                    // The receiver may be gone already; then its own error is reported.
                    let _ = sender.blocking_send(Err(error));
                }
            })
        })
    };
    let large = Semaphore::new(LARGE_UPLOADS);
    let uploaded = futures::stream::poll_fn(|cx| receiver.poll_recv(cx))
        .map(|item: Result<Prepared, SyncError>| {
            let large = &large;
            async move {
                let prepared = item?;
                let key = file_key(&prepared.hash, prepared.brotli);
                let path = path_of(prefix, &key)?;
                match prepared.body {
                    Body::Memory(bytes) => put(store, &path, PutPayload::from(bytes)).await?,
                    Body::File { file, len } => {
                        let _permit = large
                            .acquire()
                            .await
                            .map_err(|e| SyncError::Task(e.to_string()))?;
                        upload_file(store, &path, tokio::fs::File::from_std(file), len, 1).await?;
                    }
                }
                tracing::trace!(key, "uploaded");
                Ok::<_, SyncError>((prepared.hash, prepared.brotli))
            }
        })
        .buffer_unordered(STORE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await;
    // Stop the producer (its next send fails) and wait for it, so the temporary files it
    // holds are closed before the caller removes the folder.
    drop(receiver);
    let joined = producer.await;
    let uploaded = uploaded?;
    joined.map_err(|e| {
        if e.is_panic() {
            SyncError::InvalidArchive("the archive reader failed on this archive".to_owned())
        } else {
            SyncError::Task(format!("the extraction task was cancelled: {e}"))
        }
    })?;
    Ok(uploaded)
}

/// The blocking producer: every missing content, in archive order.
fn prepare_all(
    zip_path: &FsPath,
    workdir: &FsPath,
    missing: Vec<Extract>,
    sender: &tokio::sync::mpsc::Sender<Result<Prepared, SyncError>>,
) -> Result<(), SyncError> {
    // Already validated, entry count included.
    let mut archive = archive::open(zip_path, usize::MAX)?;
    let mut buffer = vec![0; 64 * 1024];
    for extract in missing {
        let prepared = prepare(&mut archive, &extract, workdir, &mut buffer)?;
        if sender.blocking_send(Ok(prepared)).is_err() {
            break;
        }
    }
    Ok(())
}

/// Extracts one content and keeps the smaller of its raw and Brotli forms.
fn prepare(
    archive: &mut archive::Archive,
    extract: &Extract,
    workdir: &FsPath,
    buffer: &mut [u8],
) -> Result<Prepared, SyncError> {
    let name = format!("entry #{}", extract.index);
    let try_brotli = extract.size >= BROTLI_MIN_SIZE;
    let hash = extract.hash.clone();
    if extract.size <= MEMORY_SPOOL_MAX {
        let mut raw = Vec::with_capacity(extract.size as usize);
        archive::copy_entry(archive, extract.index, &name, extract.size, buffer, |chunk| {
            raw.extend_from_slice(chunk);
            Ok(())
        })?;
        if try_brotli {
            let mut compressor = brotli::CompressorWriter::new(
                Vec::with_capacity(raw.len() / 2),
                4096,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            );
            compressor
                .write_all(&raw)
                .map_err(temp_failed("compressing a file"))?;
            let compressed = compressor.into_inner();
            if compressed.len() < raw.len() {
                return Ok(Prepared {
                    hash,
                    brotli: true,
                    body: Body::Memory(compressed.into()),
                });
            }
        }
        return Ok(Prepared {
            hash,
            brotli: false,
            body: Body::Memory(raw.into()),
        });
    }

    // Large: raw and compressed forms go to temporary files in one pass.
    let spool = || tempfile::tempfile_in(workdir).map_err(temp_failed("creating a temporary file"));
    let mut raw = BufWriter::with_capacity(READ_CHUNK, spool()?);
    let mut compressor = brotli::CompressorWriter::new(
        CountingWriter {
            inner: BufWriter::with_capacity(READ_CHUNK, spool()?),
            written: 0,
            error: None,
        },
        64 * 1024,
        BROTLI_QUALITY,
        BROTLI_LGWIN,
    );
    archive::copy_entry(archive, extract.index, &name, extract.size, buffer, |chunk| {
        raw.write_all(chunk).map_err(temp_failed("spooling a file"))?;
        compressor
            .write_all(chunk)
            .map_err(temp_failed("compressing a file"))
    })?;
    // `into_inner` finishes the Brotli stream but drops write errors: the writer keeps them.
    let counted = compressor.into_inner();
    if let Some(error) = counted.error {
        return Err(SyncError::TempStorage {
            action: "compressing a file",
            source: error,
        });
    }
    let (file, len, brotli) = if counted.written < extract.size {
        let file = counted
            .inner
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(temp_failed("compressing a file"))?;
        (file, counted.written, true)
    } else {
        let file = raw
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(temp_failed("spooling a file"))?;
        (file, extract.size, false)
    };
    let mut file = file;
    file.seek(SeekFrom::Start(0))
        .map_err(temp_failed("spooling a file"))?;
    Ok(Prepared {
        hash,
        brotli,
        body: Body::File { file, len },
    })
}

/// A writer that counts bytes and remembers the first error (Brotli's `into_inner` drops it).
struct CountingWriter<W> {
    inner: W,
    written: u64,
    error: Option<std::io::Error>,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.write(buf) {
            Ok(written) => {
                self.written += written as u64;
                Ok(written)
            }
            Err(error) => {
                let copy = std::io::Error::new(error.kind(), error.to_string());
                self.error.get_or_insert(error);
                Err(copy)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().inspect_err(|error| {
            if self.error.is_none() {
                self.error = Some(std::io::Error::new(error.kind(), error.to_string()));
            }
        })
    }
}

async fn put(store: &Arc<dyn ObjectStore>, path: &Path, payload: PutPayload) -> Result<(), SyncError> {
    store
        .put(path, payload)
        .await
        .map(drop)
        .map_err(|e| SyncError::storage("write", path, e))
}

/// Uploads a file: in one request up to [`PART_SIZE`], in parts above (at most
/// `part_concurrency` parts in flight, plus one being filled).
async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    mut file: tokio::fs::File,
    len: u64,
    part_concurrency: usize,
) -> Result<(), SyncError> {
    let read_failed = temp_failed("reading a temporary file");
    if len <= PART_SIZE as u64 {
        let mut bytes = Vec::with_capacity(len as usize);
        (&mut file)
            .take(len)
            .read_to_end(&mut bytes)
            .await
            .map_err(read_failed)?;
        return put(store, path, PutPayload::from(bytes)).await;
    }
    let upload = store
        .put_multipart(path)
        .await
        .map_err(|e| SyncError::storage("write", path, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut buffer = vec![0; READ_CHUNK];
    let mut remaining = len;
    let result: Result<(), SyncError> = async {
        while remaining > 0 {
            let want = buffer.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let read = file.read(&mut buffer[..want]).await.map_err(&read_failed)?;
            if read == 0 {
                return Err(SyncError::TempStorage {
                    action: "reading a temporary file",
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            writer
                .wait_for_capacity(part_concurrency)
                .await
                .map_err(|e| SyncError::storage("write", path, e))?;
            writer.write(&buffer[..read]);
            remaining -= read as u64;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => writer
            .finish()
            .await
            .map(drop)
            .map_err(|e| SyncError::storage("write", path, e)),
        Err(error) => {
            if let Err(abort) = writer.abort().await {
                tracing::debug!(error = %abort, key = %path, "could not abort a multipart upload");
            }
            Err(error)
        }
    }
}

/// Stores the zip unless the store has it already; returns whether it uploaded.
pub(super) async fn store_zip(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    key: &str,
    zip_path: &FsPath,
    size: u64,
) -> Result<bool, SyncError> {
    let path = path_of(prefix, key)?;
    match store.head(&path).await {
        Ok(meta) if meta.size == size => return Ok(false),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(SyncError::storage("check", &path, e)),
    }
    let file = tokio::fs::File::open(zip_path)
        .await
        .map_err(temp_failed("reading the temporary zip"))?;
    upload_file(store, &path, file, size, 3).await?;
    Ok(true)
}

/// Stores the manifest unless the same bytes are there already; returns whether it uploaded.
pub(super) async fn store_manifest(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    key: &str,
    manifest: &[crate::core::snapshot::ManifestFile],
) -> Result<bool, SyncError> {
    let path = path_of(prefix, key)?;
    let json = manifest_json(manifest)?;
    match store.get(&path).await {
        Ok(existing) if existing.meta.size == json.len() as u64 => {
            let bytes = existing
                .bytes()
                .await
                .map_err(|e| SyncError::storage("read", &path, e))?;
            if bytes == json {
                return Ok(false);
            }
        }
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(SyncError::storage("read", &path, e)),
    }
    put(store, &path, PutPayload::from(json)).await?;
    Ok(true)
}
