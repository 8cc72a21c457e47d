//! Steps 4 to 7 of a sync: what the store has, and uploading files, the zip and the manifest
//! with bounded memory.
//!
//! Missing files are read back from the spool files the archive scan wrote (no second
//! decompression) by concurrent uploads, which read a file into memory when it fits in one
//! request and upload it in parts otherwise. The bytes those uploads hold at once are capped by
//! [`UPLOAD_MEMORY`]. The encrypted delta files ([`super::encrypted`]) are extracted and
//! compressed one by one with [`prepare`].

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path as FsPath, PathBuf},
    sync::{Arc, Mutex},
};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, path::Path};
use tokio::sync::Semaphore;

use super::{
    BROTLI_MIN_SIZE, STORE_CONCURRENCY, SyncError,
    archive::{self, Extract, Spooled},
    file_key, manifest_json, object_path,
};

/// Objects up to this size are uploaded in one request; larger ones in parts of this size (the
/// S3 minimum part size).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts of one upload in flight at once (plus the one being filled).
const PART_CONCURRENCY: usize = 1;
/// Cap on the bytes that concurrent file uploads hold in memory.
const UPLOAD_MEMORY: usize = 16 * 1024 * 1024;
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

/// Whether a file is worth a Brotli pass: big enough, of a format that is not compressed
/// already, and (`zip_entry`: its size in the zip and whether it is stored) that deflate could
/// shrink.
pub(super) fn worth_brotli(path: &str, size: u64, compressed_size: u64, stored: bool) -> bool {
    brotli_candidate(path, size) && (stored || compressed_size.saturating_mul(50) < size.saturating_mul(49))
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

/// Whether the store holds a content in the form a sync stores it: raw (`Some(false)`, with the
/// right size; a raw object of the wrong size is overwritten), or compressed (`Some(true)`) when
/// the compressed form is required. `None`: it must be uploaded. A Brotli variant alone does not
/// count for a file that may be raw: the first step always stores the raw form, which the
/// variants are made from.
pub(super) async fn find_content(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    hash: &str,
    size: u64,
    brotli_required: bool,
) -> Result<Option<bool>, SyncError> {
    let path = path_of(prefix, &file_key(hash, brotli_required))?;
    match store.head(&path).await {
        Ok(meta) if brotli_required => Ok((meta.size > 0).then_some(true)),
        Ok(meta) => Ok((meta.size == size).then_some(false)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(SyncError::storage("check", &path, e)),
    }
}

/// [`find_content`], where a Brotli form alone counts too (`Some(true)`): what a push needs,
/// since the operator's sync stores the raw form from the rebuilt zip.
pub(super) async fn find_any_form(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    hash: &str,
    size: u64,
    brotli_required: bool,
) -> Result<Option<bool>, SyncError> {
    match find_content(store, prefix, hash, size, brotli_required).await? {
        None if !brotli_required => find_content(store, prefix, hash, size, true).await,
        found => Ok(found),
    }
}

/// A content to upload from the spool files of the archive scan.
#[derive(Debug, Clone)]
pub(super) struct SpooledContent {
    /// Its SHA-256.
    pub hash: String,
    /// Its size.
    pub size: u64,
    /// Where it is in the spools.
    pub spooled: Spooled,
    /// Whether it must be stored compressed ([`needs_brotli`]).
    pub brotli_required: bool,
    /// Whether to store it compressed when that is smaller (a push stores the form it would
    /// upload fewer bytes of; see [`super::sync_bundle_files`]).
    pub brotli_if_smaller: bool,
}

/// Reads `len` bytes at `offset` of one spool file, as [`Read`] (positioned reads, so that
/// concurrent readers of the same file do not disturb each other).
struct SpoolRange<'a> {
    file: &'a File,
    offset: u64,
    remaining: u64,
}

impl Read for SpoolRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..want], self.offset)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.offset += read as u64;
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// Uploads the missing contents from the spools (raw; Brotli-compressed when required); returns
/// for each its hash and whether it was stored compressed.
pub(super) async fn upload_spooled(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    spools: &Arc<Vec<File>>,
    workdir: &FsPath,
    missing: Vec<SpooledContent>,
) -> Result<Vec<(String, bool)>, SyncError> {
    let temporary = Arc::new(Spools::new(workdir));
    // Permits are KiB of memory.
    let budget = Semaphore::new(UPLOAD_MEMORY / 1024);
    futures::stream::iter(missing)
        .map(|content| {
            let (budget, temporary) = (&budget, &temporary);
            async move {
                if content.brotli_required || content.brotli_if_smaller {
                    let (file, len) = compress_spooled(spools, temporary, &content).await?;
                    if content.brotli_required || len < content.size {
                        let key = file_key(&content.hash, true);
                        let path = path_of(prefix, &key)?;
                        let _permits = acquire(budget, len).await?;
                        let file = upload_file(store, &path, file, len, PART_CONCURRENCY).await?;
                        temporary.give(file);
                        tracing::trace!(key, "uploaded");
                        return Ok::<_, SyncError>((content.hash, true));
                    }
                    temporary.give(file);
                }
                let key = file_key(&content.hash, false);
                let path = path_of(prefix, &key)?;
                let _permits = acquire(budget, content.size).await?;
                upload_range(store, &path, spools, content.spooled, content.size).await?;
                tracing::trace!(key, "uploaded");
                Ok::<_, SyncError>((content.hash, false))
            }
        })
        .buffer_unordered(STORE_CONCURRENCY)
        .try_collect()
        .await
}

/// Takes from `budget` the memory an upload of `len` bytes holds.
async fn acquire(budget: &Semaphore, len: u64) -> Result<tokio::sync::SemaphorePermit<'_>, SyncError> {
    let kib = upload_memory(len, PART_CONCURRENCY).div_ceil(1024);
    budget
        .acquire_many(u32::try_from(kib).unwrap_or(u32::MAX))
        .await
        .map_err(|e| SyncError::Task(e.to_string()))
}

/// Brotli-compresses one spooled content into a temporary file (blocking task); returns it,
/// rewound, and its length.
async fn compress_spooled(
    spools: &Arc<Vec<File>>,
    temporary: &Arc<Spools>,
    content: &SpooledContent,
) -> Result<(File, u64), SyncError> {
    let (spools, temporary, spooled, size) = (
        Arc::clone(spools),
        Arc::clone(temporary),
        content.spooled,
        content.size,
    );
    tokio::task::spawn_blocking(move || {
        let spool = spools
            .get(spooled.spool)
            .ok_or_else(|| SyncError::Task("a spool file is missing".to_owned()))?;
        let mut range = SpoolRange {
            file: spool,
            offset: spooled.offset,
            remaining: size,
        };
        let target = temporary.take()?;
        let (mut file, written) = compress_into(&mut range, target, size)?;
        file.seek(SeekFrom::Start(0))
            .map_err(temp_failed("spooling a file"))?;
        Ok((file, written))
    })
    .await
    .map_err(|e| SyncError::Task(format!("a compression task stopped: {e}")))?
}

/// Brotli-compresses everything `source` yields (`size` bytes, the size hint) into `target`;
/// returns it and the compressed length.
pub(super) fn compress_into(
    source: &mut impl Read,
    target: File,
    size: u64,
) -> Result<(File, u64), SyncError> {
    let mut compressor = brotli::CompressorWriter::with_params(
        CountingWriter {
            inner: target,
            written: 0,
            error: None,
        },
        BROTLI_BUFFER,
        &brotli_params(size),
    );
    let mut buffer = vec![0; BROTLI_BUFFER];
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(SyncError::TempStorage {
                    action: "reading a file to compress",
                    source,
                });
            }
        };
        compressor
            .write_all(&buffer[..read])
            .map_err(temp_failed("compressing a file"))?;
    }
    // `into_inner` finishes the Brotli stream but drops write errors: the writer keeps them.
    match compressor.into_inner() {
        CountingWriter {
            error: Some(source), ..
        } => Err(SyncError::TempStorage {
            action: "compressing a file",
            source,
        }),
        CountingWriter { inner, written, .. } => Ok((inner, written)),
    }
}

/// Uploads `len` bytes at `spooled` of the spools: in one request up to [`PART_SIZE`], in parts
/// above.
async fn upload_range(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    spools: &Arc<Vec<File>>,
    spooled: Spooled,
    len: u64,
) -> Result<(), SyncError> {
    let read_failed = temp_failed("reading a spool file");
    let read_at = |offset: u64, want: usize| {
        let spools = Arc::clone(spools);
        async move {
            let mut bytes = vec![0; want];
            tokio::task::spawn_blocking(move || {
                let spool = spools
                    .get(spooled.spool)
                    .ok_or_else(|| std::io::Error::other("a spool file is missing"))?;
                spool.read_exact_at(&mut bytes, offset).map(|()| bytes)
            })
            .await
            .map_err(std::io::Error::other)?
        }
    };
    if len <= PART_SIZE as u64 {
        let bytes = read_at(spooled.offset, len as usize).await.map_err(read_failed)?;
        return put(store, path, PutPayload::from(bytes)).await;
    }
    let upload = store
        .put_multipart(path)
        .await
        .map_err(|e| SyncError::storage("write", path, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut done = 0;
    let result: Result<(), SyncError> = async {
        while done < len {
            let want = usize::try_from(len - done).unwrap_or(usize::MAX).min(READ_CHUNK);
            let chunk = read_at(spooled.offset + done, want).await.map_err(&read_failed)?;
            writer
                .wait_for_capacity(PART_CONCURRENCY)
                .await
                .map_err(|e| SyncError::storage("write", path, e))?;
            writer.write(&chunk);
            done += chunk.len() as u64;
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
                return rewound(inner, written, true);
            }
            // Not smaller (rare for a file worth trying): extract it again, raw.
            CountingWriter { inner, .. } => spools.give(inner),
        }
    }
    let mut raw = spool()?;
    archive::copy_entry(archive, extract.index, name, extract.size, buffer, |chunk| {
        raw.write_all(chunk).map_err(temp_failed("spooling a file"))
    })?;
    rewound(raw, extract.size, false)
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

fn rewound(mut file: File, len: u64, brotli: bool) -> Result<Prepared, SyncError> {
    file.seek(SeekFrom::Start(0))
        .map_err(temp_failed("spooling a file"))?;
    Ok(Prepared { brotli, file, len })
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
pub(super) async fn upload_file(
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
    manifest: &[crate::layout::ManifestFile],
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
