//! Step 1 of a sync for a bundle pushed as files (`source.manifestKey`): its zip rebuilt from
//! the content-addressed files in storage.
//!
//! `ota bundle push` uploads only the files storage lacks and the bundle's manifest; the zip it
//! hashed was written by [`DeterministicZip`], so the same writer, given the same files in the
//! same order, gives the same bytes here. The files stream from storage into the writer (a
//! blocking task writing a temporary file) through a bounded channel, so memory stays bounded
//! whatever the bundle's size; the next few objects are requested while one is copied. The
//! caller verifies the result against the declared SHA-256, as for any other source.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::Path as FsPath,
    sync::Arc,
};

use bytes::Bytes;
use futures::StreamExt;
use object_store::{GetResult, ObjectStore, ObjectStoreExt, path::Path};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{
    DeterministicZip, SOURCE_IDLE_TIMEOUT, SyncError, SyncLimits, entry_order, error_chain, fetched::Fetched,
    object_path, read_manifest,
};

/// Objects requested ahead of the one being copied (their answers wait, unread, in the HTTP
/// connection or as open files).
const OPEN_AHEAD: usize = 8;
/// Chunks in flight between the downloads and the zip writer.
const CHANNEL_DEPTH: usize = 32;
/// Buffer of the zip writer and of Brotli decoding.
const IO_BUFFER: usize = 256 * 1024;

/// One file of the zip to rebuild.
#[derive(Debug, Clone)]
struct RebuildEntry {
    /// Its name in the zip.
    name: String,
    /// Its key in storage, relative to the prefix.
    key: String,
    /// Whether the stored object is Brotli-compressed (its key ends in `.br`).
    brotli: bool,
}

/// What goes from the downloads to the zip writer.
enum Piece {
    /// A new entry; `size` is the bytes of its content when known (raw objects), else 0.
    Start {
        name: String,
        key: String,
        size: u64,
        brotli: bool,
    },
    /// Bytes of the entry's stored object.
    Data(Bytes),
    /// The end of the entry's object.
    End,
    /// Every entry was sent.
    Finish,
}

/// Rebuilds into `destination` the zip whose files the manifest `manifest_key` lists, and
/// returns its size and SHA-256.
pub(super) async fn rebuild_zip(
    manifest_key: &str,
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    limits: &SyncLimits,
    destination: &FsPath,
) -> Result<Fetched, SyncError> {
    if !manifest_key.starts_with("manifests/") || object_path(prefix, manifest_key).is_none() {
        return Err(SyncError::SourceRefused(format!(
            "manifest key {manifest_key:?} is not a clean key under manifests/"
        )));
    }
    let manifest = match read_manifest(store, prefix, manifest_key).await {
        Ok(manifest) => manifest,
        Err(SyncError::Storage {
            source: object_store::Error::NotFound { .. },
            ..
        }) => {
            return Err(SyncError::SourceUnavailable(format!(
                "manifest {manifest_key} is not in storage: run `ota bundle push` again (it uploads the manifest)"
            )));
        }
        Err(error) => return Err(error),
    };
    let entries = entries_of(manifest_key, manifest, limits)?;
    tracing::debug!(files = entries.len(), "rebuilding the zip from stored files");

    let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
    let writer = {
        let (destination, limits, manifest_key) = (destination.to_owned(), *limits, manifest_key.to_owned());
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| write_zip(receiver, &destination, &limits, &manifest_key))
        })
    };
    let (fed, written) = tokio::join!(feed(entries, store, prefix, manifest_key, sender), writer);
    let written = written.map_err(|e| SyncError::Task(format!("the zip writer stopped: {e}")))?;
    match (fed, written) {
        (Ok(()), Ok(fetched)) => Ok(fetched),
        // The writer failed first (the feed then found the channel closed).
        (_, Err(Some(error))) => Err(error),
        // The feed failed first (the writer then found the channel closed).
        (Err(error), _) => Err(error),
        (Ok(()), Err(None)) => Err(SyncError::Task(
            "the zip writer stopped before the last file".to_owned(),
        )),
    }
}

/// The zip's entries, in its order, from the manifest: a `.br` object is the Brotli form of
/// the file named without that suffix.
fn entries_of(
    manifest_key: &str,
    manifest: Vec<crate::layout::ManifestFile>,
    limits: &SyncLimits,
) -> Result<Vec<RebuildEntry>, SyncError> {
    let invalid = |message: String| SyncError::InvalidManifest {
        key: manifest_key.to_owned(),
        message,
    };
    if manifest.len() > limits.max_entries {
        return Err(SyncError::InvalidArchive(format!(
            "manifest {manifest_key} lists {} files, the limit is {}",
            manifest.len(),
            limits.max_entries
        )));
    }
    let mut entries = manifest
        .into_iter()
        .map(|file| {
            let brotli = file.key.ends_with(".br");
            let name = if brotli {
                match file.file_name.strip_suffix(".br") {
                    Some(name) if !name.is_empty() && !name.ends_with('/') => name.to_owned(),
                    _ => {
                        return Err(invalid(format!(
                            "{} is stored compressed ({}) but its name does not end in .br",
                            file.file_name, file.key
                        )));
                    }
                }
            } else {
                file.file_name
            };
            Ok(RebuildEntry {
                name,
                key: file.key,
                brotli,
            })
        })
        .collect::<Result<Vec<_>, SyncError>>()?;
    entries.sort_by(|a, b| entry_order(&a.name, &b.name));
    if let Some(pair) = entries.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(invalid(format!("it lists the file {} twice", pair[0].name)));
    }
    Ok(entries)
}

/// Sends every entry's stored object, in order, to the zip writer.
async fn feed(
    entries: Vec<RebuildEntry>,
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    manifest_key: &str,
    sender: mpsc::Sender<Piece>,
) -> Result<(), SyncError> {
    let writer_gone = || SyncError::Task("the zip writer stopped".to_owned());
    let mut opened = futures::stream::iter(entries)
        .map(|entry| async move {
            let result = open(store, prefix, manifest_key, &entry.key).await?;
            Ok::<(RebuildEntry, GetResult), SyncError>((entry, result))
        })
        .buffered(OPEN_AHEAD);
    while let Some(next) = opened.next().await {
        let (entry, result) = next?;
        let size = if entry.brotli { 0 } else { result.meta.size };
        let read_failed = |message: String| {
            SyncError::SourceUnavailable(format!("stored file {}: reading failed: {message}", entry.key))
        };
        let start = Piece::Start {
            name: entry.name.clone(),
            key: entry.key.clone(),
            size,
            brotli: entry.brotli,
        };
        sender.send(start).await.map_err(|_| writer_gone())?;
        let mut body = result.into_stream();
        loop {
            let chunk = tokio::time::timeout(SOURCE_IDLE_TIMEOUT, body.next())
                .await
                .map_err(|_| read_failed(format!("no data for {} s", SOURCE_IDLE_TIMEOUT.as_secs())))?;
            match chunk {
                None => break,
                Some(Ok(bytes)) => sender.send(Piece::Data(bytes)).await.map_err(|_| writer_gone())?,
                Some(Err(error)) => return Err(read_failed(error_chain(&error))),
            }
        }
        sender.send(Piece::End).await.map_err(|_| writer_gone())?;
    }
    sender.send(Piece::Finish).await.map_err(|_| writer_gone())
}

/// Requests one stored file of the manifest.
async fn open(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    manifest_key: &str,
    key: &str,
) -> Result<GetResult, SyncError> {
    // `read_manifest` checked that every key is clean.
    let path = object_path(prefix, key)
        .ok_or_else(|| SyncError::Task(format!("manifest key {key:?} is not clean")))?;
    match store.get(&path).await {
        Ok(result) => Ok(result),
        Err(object_store::Error::NotFound { .. }) => Err(SyncError::SourceUnavailable(format!(
            "{key}, a file of {manifest_key}, is not in storage (removed since the push, with a bundle \
             that shared it?): run `ota bundle push` again, which uploads the files storage lacks"
        ))),
        Err(error) => Err(SyncError::storage("read", &path, error)),
    }
}

/// The zip writer (blocking): writes every entry it receives into `destination`, then hashes
/// it. `Err(None)`: the feed stopped before [`Piece::Finish`] (its own error says why).
fn write_zip(
    mut receiver: mpsc::Receiver<Piece>,
    destination: &FsPath,
    limits: &SyncLimits,
    manifest_key: &str,
) -> Result<Fetched, Option<SyncError>> {
    let temp =
        |action: &'static str| move |source: std::io::Error| Some(SyncError::TempStorage { action, source });
    let zip_failed = |error: zip::result::ZipError| {
        Some(match error {
            zip::result::ZipError::Io(source) => SyncError::TempStorage {
                action: "writing the rebuilt zip",
                source,
            },
            other => SyncError::InvalidArchive(format!(
                "the files of manifest {manifest_key} cannot be zipped: {other}"
            )),
        })
    };
    let file = File::create(destination).map_err(temp("creating the rebuilt zip"))?;
    let mut zip = DeterministicZip::new(BufWriter::with_capacity(IO_BUFFER, file));
    let mut budget = Budget {
        left: limits.max_uncompressed_bytes,
        limit: limits.max_uncompressed_bytes,
    };
    let mut buffer = vec![0u8; IO_BUFFER];
    loop {
        let (name, key, size, brotli) = match receiver.blocking_recv() {
            None => return Err(None),
            Some(Piece::Finish) => break,
            Some(Piece::Start {
                name,
                key,
                size,
                brotli,
            }) => (name, key, size, brotli),
            Some(Piece::Data(_) | Piece::End) => {
                return Err(Some(SyncError::Task("file data without a file".to_owned())));
            }
        };
        zip.start_file(&name, size).map_err(zip_failed)?;
        let mut object = PieceReader {
            receiver: &mut receiver,
            current: Bytes::new(),
            ended: false,
            closed: false,
        };
        let copied = if brotli {
            let mut decoder = brotli::Decompressor::new(&mut object, IO_BUFFER);
            copy(&mut decoder, &mut zip, &mut buffer, &mut budget)
        } else {
            copy(&mut object, &mut zip, &mut buffer, &mut budget)
        };
        if object.closed {
            return Err(None);
        }
        match copied {
            Ok(()) => {}
            Err(CopyError::Read(error)) => {
                return Err(Some(SyncError::InvalidManifest {
                    key: manifest_key.to_owned(),
                    message: format!("its file {key} cannot be read as Brotli: {error}"),
                }));
            }
            Err(CopyError::Write(source)) => {
                return Err(Some(SyncError::TempStorage {
                    action: "writing the rebuilt zip",
                    source,
                }));
            }
            Err(CopyError::TooLarge) => {
                return Err(Some(SyncError::InvalidArchive(format!(
                    "the files of manifest {manifest_key} make more than {} bytes, the limit",
                    budget.limit
                ))));
            }
        }
        // Whatever follows the end of a Brotli stream is not part of the file.
        object.drain();
        if object.closed {
            return Err(None);
        }
    }
    let mut writer = zip.finish().map_err(zip_failed)?;
    writer.flush().map_err(temp("writing the rebuilt zip"))?;
    drop(writer);
    let file = File::open(destination).map_err(temp("reading the rebuilt zip"))?;
    let size = file.metadata().map_err(temp("reading the rebuilt zip"))?.len();
    if size > limits.max_zip_bytes {
        return Err(Some(SyncError::InvalidArchive(format!(
            "the zip rebuilt from manifest {manifest_key} has {size} bytes, the limit is {}",
            limits.max_zip_bytes
        ))));
    }
    let sha256 = hash_file(file).map_err(temp("reading the rebuilt zip"))?;
    Ok(Fetched { size, sha256 })
}

fn hash_file(file: File) -> std::io::Result<String> {
    let mut reader = BufReader::with_capacity(IO_BUFFER, file);
    let mut hasher = Sha256::new();
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(chunk);
        let read = chunk.len();
        reader.consume(read);
    }
}

/// The bytes the files may still add (the limit on decompressed bytes).
struct Budget {
    left: u64,
    limit: u64,
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
    TooLarge,
}

fn copy(
    reader: &mut impl Read,
    writer: &mut impl Write,
    buffer: &mut [u8],
    budget: &mut Budget,
) -> Result<(), CopyError> {
    loop {
        let read = match reader.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        budget.left = budget.left.checked_sub(read as u64).ok_or(CopyError::TooLarge)?;
        writer.write_all(&buffer[..read]).map_err(CopyError::Write)?;
    }
}

/// One entry's stored object, as it arrives through the channel.
struct PieceReader<'a> {
    receiver: &'a mut mpsc::Receiver<Piece>,
    current: Bytes,
    /// [`Piece::End`] was received.
    ended: bool,
    /// The channel closed (or something else than data came) before [`Piece::End`].
    closed: bool,
}

impl PieceReader<'_> {
    /// Reads and drops the rest of the object.
    fn drain(&mut self) {
        self.current = Bytes::new();
        while !self.ended && !self.closed {
            self.next_piece();
        }
    }

    fn next_piece(&mut self) {
        match self.receiver.blocking_recv() {
            Some(Piece::Data(bytes)) => self.current = bytes,
            Some(Piece::End) => self.ended = true,
            Some(Piece::Start { .. } | Piece::Finish) | None => self.closed = true,
        }
    }
}

impl Read for PieceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            if self.closed {
                return Err(std::io::Error::other("the download of the file stopped"));
            }
            self.next_piece();
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
