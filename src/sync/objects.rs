//! Steps 4 to 7 of a sync: what the store has, and uploading files, the zip and the manifest
//! with bounded memory.
//!
//! Missing files are extracted again from the temporary zip by a few threads (one per CPU, see
//! `super::workers`), which write each file, or its Brotli form when it is worth trying, to a
//! temporary file (so that they allocate the same few buffers over and over, whatever the files'
//! sizes). A short queue hands them to concurrent uploads, which read a file into memory when it fits in one request and
//! upload it in parts otherwise. The bytes those uploads hold at once are capped by
//! [`UPLOAD_MEMORY`].

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    path::{Path as FsPath, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, path::Path};
use tokio::sync::Semaphore;

use super::{
    BROTLI_MIN_SIZE, STORE_CONCURRENCY, SyncError,
    archive::{self, Extract},
    file_key, manifest_json, object_path,
};

/// Objects up to this size are uploaded in one request; larger ones in parts of this size (the
/// S3 minimum part size).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts of one upload in flight at once (plus the one being filled).
const PART_CONCURRENCY: usize = 1;
/// Cap on the bytes that concurrent file uploads hold in memory.
const UPLOAD_MEMORY: usize = 16 * 1024 * 1024;
/// Prepared files waiting for an upload slot.
const PREPARED_QUEUE: usize = 4;
/// Brotli quality (of 11). The `brotli` crate's quality 9 allocates a 32 MiB hash table per
/// encoder (measured: 33 to 52 MiB per encoder); quality 6 takes 4 to 12 MiB, runs about twice
/// as fast, and its output is 1 to 5 % larger on real JavaScript.
const BROTLI_QUALITY: u32 = 6;
/// Brotli window: at most 1 MiB (a larger one costs memory for little gain on web assets), and
/// no larger than the file (a window beyond the file's end holds nothing), but at least 256 KiB
/// (smaller windows switch the encoder to another match finder).
const BROTLI_LGWIN: u32 = 20;
const BROTLI_MIN_LGWIN: u32 = 18;
/// Brotli's output buffer.
const BROTLI_BUFFER: usize = 64 * 1024;
/// Buffer of reads from temporary files.
const READ_CHUNK: usize = 256 * 1024;
/// Extensions of formats that are compressed already: not worth a Brotli pass.
const COMPRESSED_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "webp", "avif", "heic", "woff", "woff2", "mp3", "mp4", "m4a", "aac", "ogg",
    "webm", "zip", "gz", "br", "zst", "xz", "7z",
];

/// Whether the zip's own compression shows that a content will not shrink: deflate saved less
/// than 2 % of it (Brotli would not save much more, and the device would decode it for nothing).
fn incompressible(extract: &Extract) -> bool {
    !extract.stored && extract.compressed_size.saturating_mul(50) >= extract.size.saturating_mul(49)
}

/// Whether a file is worth a Brotli pass.
fn brotli_candidate(path: &str, size: u64) -> bool {
    let extension = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext);
    size >= BROTLI_MIN_SIZE
        && !extension.is_some_and(|ext| {
            COMPRESSED_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

/// One file ready for upload: a temporary file, rewound.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) hash: String,
    pub(super) brotli: bool,
    pub(super) file: File,
    pub(super) len: u64,
}

/// The memory an upload of `len` bytes holds: the whole object, or the parts in flight and the
/// one being filled.
fn upload_memory(len: u64, part_concurrency: usize) -> usize {
    usize::try_from(len)
        .unwrap_or(usize::MAX)
        .min(PART_SIZE * (part_concurrency + 1))
}

/// Temporary files reused from one prepared content to the next. Creating and deleting a file
/// per content costs more than the content's own I/O on some filesystems (ext4 searches past
/// recently deleted inodes to allocate a new one), so each file goes back to the pool once
/// uploaded, and is emptied when it is taken again.
pub(super) struct Spools {
    dir: PathBuf,
    free: Mutex<Vec<File>>,
}

impl Spools {
    pub(super) fn new(dir: &FsPath) -> Self {
        Spools {
            dir: dir.to_owned(),
            free: Mutex::new(Vec::new()),
        }
    }

    /// An empty temporary file (blocking).
    pub(super) fn take(&self) -> Result<File, SyncError> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match reused {
            Some(mut file) => {
                let emptied = file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0)));
                emptied.map_err(temp_failed("emptying a temporary file"))?;
                Ok(file)
            }
            None => tempfile::tempfile_in(&self.dir).map_err(temp_failed("creating a temporary file")),
        }
    }

    pub(super) fn give(&self, file: File) {
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(file);
    }
}

fn temp_failed(action: &'static str) -> impl Fn(std::io::Error) -> SyncError {
    move |source| SyncError::TempStorage { action, source }
}

/// The store path of a key this module built (always clean).
fn path_of(prefix: &Path, key: &str) -> Result<Path, SyncError> {
    object_path(prefix, key).ok_or_else(|| SyncError::Task(format!("built an invalid key {key:?}")))
}

/// Whether a file must be stored compressed: its name ends in `.br` (a pre-compressed asset),
/// and the plugin Brotli-decodes every manifest entry named so. Compressed once more, it is
/// listed as `<name>.br` and the plugin writes `<name>` with the original bytes.
pub(super) fn needs_brotli(path: &str) -> bool {
    path.ends_with(".br")
}

/// Whether the store holds a content: `Some(true)` compressed, `Some(false)` raw, `None` not
/// (or only a raw object of the wrong size, which is then overwritten; or only a raw object
/// when the compressed form is required).
pub(super) async fn find_content(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    hash: &str,
    size: u64,
    brotli_required: bool,
) -> Result<Option<bool>, SyncError> {
    if brotli_required || size >= BROTLI_MIN_SIZE {
        let path = path_of(prefix, &file_key(hash, true))?;
        match store.head(&path).await {
            Ok(meta) if meta.size > 0 => return Ok(Some(true)),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(SyncError::storage("check", &path, e)),
        }
    }
    if brotli_required {
        return Ok(None);
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
    let spools = Arc::new(Spools::new(workdir));
    let producer = {
        let zip_path = zip_path.to_owned();
        let spools = Arc::clone(&spools);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                if let Err(error) = prepare_all(&zip_path, &spools, missing, &sender) {
                    // The receiver may be gone already; then its own error is reported.
                    let _ = sender.blocking_send(Err(error));
                }
            })
        })
    };
    // Permits are KiB of memory.
    let budget = Semaphore::new(UPLOAD_MEMORY / 1024);
    let uploaded = futures::stream::poll_fn(|cx| receiver.poll_recv(cx))
        .map(|item: Result<Prepared, SyncError>| {
            let (budget, spools) = (&budget, &spools);
            async move {
                let prepared = item?;
                let key = file_key(&prepared.hash, prepared.brotli);
                let path = path_of(prefix, &key)?;
                let kib = upload_memory(prepared.len, PART_CONCURRENCY).div_ceil(1024);
                let _permits = budget
                    .acquire_many(u32::try_from(kib).unwrap_or(u32::MAX))
                    .await
                    .map_err(|e| SyncError::Task(e.to_string()))?;
                let file = upload_file(store, &path, prepared.file, prepared.len, PART_CONCURRENCY).await?;
                spools.give(file);
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

/// The blocking producers: every missing content, taken in archive order by a few threads. A
/// content that cannot be prepared is sent as an error; a closed queue stops them all.
fn prepare_all(
    zip_path: &FsPath,
    spools: &Spools,
    missing: Vec<Extract>,
    sender: &tokio::sync::mpsc::Sender<Result<Prepared, SyncError>>,
) -> Result<(), SyncError> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let span = tracing::Span::current();
    let work = || -> Result<(), SyncError> {
        let _entered = span.enter();
        // Already validated, entry count included.
        let mut archive = archive::open(zip_path, usize::MAX)?;
        let mut buffer = vec![0; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let Some(extract) = missing.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let prepared = prepare(&mut archive, extract, spools, &mut buffer);
            let failed = prepared.is_err();
            if sender.blocking_send(prepared).is_err() || failed {
                stop.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..super::workers()).map(|_| scope.spawn(work)).collect();
        let mut result = work();
        for other in others {
            match other.join() {
                Ok(outcome) => result = result.and(outcome),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        result
    })
}

/// Extracts one content to a temporary file: its Brotli form when it is worth trying and comes
/// out smaller (or is required), else the raw bytes.
pub(super) fn prepare(
    archive: &mut archive::Archive,
    extract: &Extract,
    spools: &Spools,
    buffer: &mut [u8],
) -> Result<Prepared, SyncError> {
    let name = extract.path.as_str();
    let spool = || spools.take();
    let try_brotli =
        extract.brotli_required || (brotli_candidate(name, extract.size) && !incompressible(extract));
    if try_brotli {
        let mut compressor = brotli::CompressorWriter::with_params(
            CountingWriter {
                inner: spool()?,
                written: 0,
                error: None,
            },
            BROTLI_BUFFER,
            &brotli_params(extract.size),
        );
        archive::copy_entry(archive, extract.index, name, extract.size, buffer, |chunk| {
            compressor
                .write_all(chunk)
                .map_err(temp_failed("compressing a file"))
        })?;
        // `into_inner` finishes the Brotli stream but drops write errors: the writer keeps them.
        match compressor.into_inner() {
            CountingWriter {
                error: Some(error), ..
            } => {
                return Err(SyncError::TempStorage {
                    action: "compressing a file",
                    source: error,
                });
            }
            CountingWriter { inner, written, .. } if written < extract.size || extract.brotli_required => {
                return rewound(inner, extract, written, true);
            }
            // Not smaller (rare for a file worth trying): extract it again, raw.
            CountingWriter { inner, .. } => spools.give(inner),
        }
    }
    let mut raw = spool()?;
    archive::copy_entry(archive, extract.index, name, extract.size, buffer, |chunk| {
        raw.write_all(chunk).map_err(temp_failed("spooling a file"))
    })?;
    rewound(raw, extract, extract.size, false)
}

/// The encoder's settings for a file of `size` bytes: the size is given up front, so that a
/// small file gets the encoder's small tables, and the window fits the file.
fn brotli_params(size: u64) -> brotli::enc::BrotliEncoderParams {
    let size_bits = 64 - size.saturating_sub(1).leading_zeros();
    brotli::enc::BrotliEncoderParams {
        quality: BROTLI_QUALITY as i32,
        lgwin: size_bits.clamp(BROTLI_MIN_LGWIN, BROTLI_LGWIN) as i32,
        size_hint: usize::try_from(size).unwrap_or(usize::MAX),
        ..brotli::enc::BrotliEncoderParams::default()
    }
}

fn rewound(mut file: File, extract: &Extract, len: u64, brotli: bool) -> Result<Prepared, SyncError> {
    file.seek(SeekFrom::Start(0))
        .map_err(temp_failed("spooling a file"))?;
    Ok(Prepared {
        hash: extract.hash.clone(),
        brotli,
        file,
        len,
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

/// Reads a local file chunk by chunk in blocking tasks, into a buffer allocated by the caller.
///
/// `tokio::fs::File` allocates its read buffers (up to 2 MiB) on whichever blocking thread runs
/// the read; with glibc's per-thread arenas that memory then stays resident on many threads.
/// Here every buffer is allocated on the calling task's thread and only lent to the blocking
/// task.
pub(super) struct ChunkReader {
    file: Option<File>,
    buffer: Vec<u8>,
}

impl ChunkReader {
    /// A reader with a buffer of `chunk` bytes.
    pub(super) fn new(file: File, chunk: usize) -> Self {
        ChunkReader {
            file: Some(file),
            buffer: vec![0; chunk],
        }
    }

    /// The file, unless a read failed.
    fn into_file(self) -> Option<File> {
        self.file
    }

    /// The next chunk, at most `max` bytes; empty at the end of the file.
    pub(super) async fn next(&mut self, max: usize) -> std::io::Result<&[u8]> {
        let Some(mut file) = self.file.take() else {
            return Err(std::io::Error::other("an earlier read failed"));
        };
        let mut buffer = std::mem::take(&mut self.buffer);
        let want = max.min(buffer.len());
        let (file, buffer, result) = tokio::task::spawn_blocking(move || {
            let result = read_retrying(&mut file, &mut buffer[..want]);
            (file, buffer, result)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        self.buffer = buffer;
        let read = result?;
        Ok(&self.buffer[..read])
    }
}

fn read_retrying(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Reads `len` bytes of a local file in a blocking task, into a vector allocated here (see
/// [`ChunkReader`]); gives the file back.
async fn read_exactly(file: File, len: u64) -> std::io::Result<(File, Vec<u8>)> {
    let mut bytes = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        file.read_exact(&mut bytes).map(|()| (file, bytes))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Uploads `len` bytes of a file: in one request up to [`PART_SIZE`], in parts above (at most
/// `part_concurrency` parts in flight, plus one being filled). Gives the file back.
async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    file: File,
    len: u64,
    part_concurrency: usize,
) -> Result<File, SyncError> {
    let read_failed = temp_failed("reading a temporary file");
    if len <= PART_SIZE as u64 {
        let (file, bytes) = read_exactly(file, len).await.map_err(read_failed)?;
        put(store, path, PutPayload::from(bytes)).await?;
        return Ok(file);
    }
    let upload = store
        .put_multipart(path)
        .await
        .map_err(|e| SyncError::storage("write", path, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut reader = ChunkReader::new(file, READ_CHUNK);
    let mut remaining = len;
    let result: Result<(), SyncError> = async {
        while remaining > 0 {
            let want = usize::try_from(remaining).unwrap_or(usize::MAX);
            let chunk = reader.next(want).await.map_err(&read_failed)?;
            if chunk.is_empty() {
                return Err(read_failed(std::io::ErrorKind::UnexpectedEof.into()));
            }
            writer
                .wait_for_capacity(part_concurrency)
                .await
                .map_err(|e| SyncError::storage("write", path, e))?;
            writer.write(chunk);
            remaining -= chunk.len() as u64;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            writer
                .finish()
                .await
                .map_err(|e| SyncError::storage("write", path, e))?;
            reader
                .into_file()
                .ok_or_else(|| read_failed(std::io::Error::other("the file was lost after a read")))
        }
        Err(error) => {
            if let Err(abort) = writer.abort().await {
                tracing::debug!(error = %abort, key = %path, "could not abort a multipart upload");
            }
            Err(error)
        }
    }
}

/// Stores one prepared file under `key` unless the store has an object of its size there
/// already (keys are content-addressed); returns whether it uploaded. The file goes back to
/// `spools`.
pub(super) async fn store_file(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    key: &str,
    file: File,
    len: u64,
    spools: &Spools,
) -> Result<bool, SyncError> {
    let path = path_of(prefix, key)?;
    match store.head(&path).await {
        Ok(meta) if meta.size == len => {
            spools.give(file);
            return Ok(false);
        }
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(SyncError::storage("check", &path, e)),
    }
    let file = upload_file(store, &path, file, len, PART_CONCURRENCY).await?;
    spools.give(file);
    Ok(true)
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
    let file = File::open(zip_path).map_err(temp_failed("reading the temporary zip"))?;
    upload_file(store, &path, file, size, 2).await?;
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
