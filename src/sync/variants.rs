//! The second step of a sync: the Brotli variants of a synced bundle's files, off the critical
//! path (see the [module documentation](super)).
//!
//! [`compress_variants`] reads the manifest the first step stored, and for each distinct raw file
//! of at least [`BROTLI_MIN_SIZE`] whose first bytes do not show a compressed format: keeps the
//! `.br` variant storage already has, or streams the raw file from storage through a Brotli
//! encoder (on one of a few long-lived threads, see [`encoders`]) into a temporary file, checks
//! its SHA-256 on the way, and stores the result when it is smaller. Then it stores the manifest
//! that names those variants, `manifests/<sha256>.br.json`. Running it again (after a restart)
//! makes only the variants still missing.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::{
    BROTLI_MIN_SIZE, SyncError, file_key, is_sha256_hex, manifest_key, object_path,
    objects::{self, Spools},
    read_manifest, variant_manifest_key,
};
use crate::layout::ManifestFile;

/// Most Brotli encoders at once (each holds up to about 12 MiB).
const MAX_ENCODERS: usize = 4;
/// Chunks of a raw file in flight between its download and its encoder.
const CHUNK_QUEUE: usize = 4;
/// Bytes of a file's start kept to recognize its format.
const SNIFF_LEN: usize = 16;

/// What [`compress_variants`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressedVariants {
    /// Key of the manifest that names the variants (`manifests/<sha256>.br.json`).
    pub manifest_key: String,
    /// That manifest, sorted by file name.
    pub manifest: Vec<ManifestFile>,
    /// Distinct contents served Brotli-compressed.
    pub variants: u64,
    /// Of those, the variants this call made (the others were in storage already).
    pub made: u64,
    /// Distinct contents tried that Brotli did not make smaller, or that are compressed already.
    pub kept_raw: u64,
}

/// Whether `head`, the first bytes of a file, shows a format that is compressed already (images,
/// fonts, archives, audio and video): Brotli would not shrink it, so it is never tried.
pub fn already_compressed(head: &[u8]) -> bool {
    const PREFIXES: &[&[u8]] = &[
        b"\x89PNG\r\n\x1a\n",    // PNG
        b"\xff\xd8\xff",         // JPEG
        b"GIF87a",               // GIF
        b"GIF89a",               // GIF
        b"wOFF",                 // WOFF
        b"wOF2",                 // WOFF2
        b"PK\x03\x04",           // zip (and jar, apk, docx...)
        b"PK\x05\x06",           // empty zip
        b"\x1f\x8b",             // gzip
        b"\x1a\x45\xdf\xa3",     // Matroska, WebM
        b"BZh",                  // bzip2
        b"\xfd7zXZ\x00",         // xz
        b"\x28\xb5\x2f\xfd",     // zstd
        b"7z\xbc\xaf\x27\x1c",   // 7-Zip
        b"Rar!\x1a\x07",         // RAR
        b"OggS",                 // Ogg
        b"fLaC",                 // FLAC
        b"ID3",                  // MP3 with a tag
        b"\xff\x0a",             // JPEG XL
        b"\x00\x00\x00\x0cJXL ", // JPEG XL container
        b"\x00\x00\x01\xba",     // MPEG program stream
    ];
    let riff = |kind: &[u8]| head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == kind;
    // ISO base media (MP4, MOV, M4A, AVIF, HEIC): a box of type `ftyp` first.
    let iso_media = head.len() >= 8 && &head[4..8] == b"ftyp";
    // MPEG audio frames (MP3 without a tag, AAC ADTS): eleven set sync bits.
    let mpeg_audio = head.len() >= 2 && head[0] == 0xff && head[1] & 0xe0 == 0xe0;
    PREFIXES.iter().any(|prefix| head.starts_with(prefix))
        || riff(b"WEBP")
        || riff(b"AVI ")
        || iso_media
        || mpeg_audio
}

/// Encoders running in this process, however many bundles are compressed at once (the controller
/// reconciles several Bundles together), so memory stays bounded.
static ENCODER_PERMITS: LazyLock<tokio::sync::Semaphore> =
    LazyLock::new(|| tokio::sync::Semaphore::new(encoders()));

/// A job for the encoder threads.
type EncoderJob = Box<dyn FnOnce() + Send>;

/// The encoder threads: long-lived, one per permit. Brotli's tables are allocated and freed for
/// every file; on the runtime's blocking pool each file could land on another thread, and glibc
/// keeps a heap per thread, so the process kept tens of MiB per thread that ever compressed
/// (measured: 170 MiB of peak RSS on 2 CPUs). A fixed set of threads reuses the same heaps.
static ENCODER_THREADS: LazyLock<std::sync::Mutex<std::sync::mpsc::Sender<EncoderJob>>> =
    LazyLock::new(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<EncoderJob>();
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for index in 0..encoders() {
            let receiver = Arc::clone(&receiver);
            let spawned = std::thread::Builder::new()
                .name(format!("ota-brotli-{index}"))
                .spawn(move || {
                    loop {
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start a Brotli encoder thread");
            }
        }
        std::sync::Mutex::new(sender)
    });

/// Runs `job` on an encoder thread and waits for its result.
async fn on_encoder_thread<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    let job: EncoderJob = Box::new(move || {
        let _entered = span.enter();
        // A panic in the encoder is caught so that the thread survives; it fails this file.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
            .unwrap_or_else(|_| Err(SyncError::Task("the Brotli encoder failed".to_owned())));
        let _ = sender.send(result);
    });
    ENCODER_THREADS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send(job)
        .map_err(|_| SyncError::Task("the Brotli encoder threads are gone".to_owned()))?;
    receiver
        .await
        .map_err(|_| SyncError::Task("a Brotli encoder thread stopped".to_owned()))?
}

/// Threads that Brotli-compress at once: one per CPU beyond the first, which the first step of
/// other syncs, the uploads and the rest of the process keep; at least one, at most
/// [`MAX_ENCODERS`]. On 2 CPUs a second encoder was measured (benches/bundle_sync.rs) to take
/// the process's peak RSS from about 60 to 71 MiB.
fn encoders() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .saturating_sub(1)
        .clamp(1, MAX_ENCODERS)
}

/// Makes the Brotli variants of the bundle whose zip has SHA-256 `sha256` (synced by
/// [`super::sync_bundle`]) and stores the manifest that names them; see the [module
/// documentation](self).
pub async fn compress_variants(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    sha256: &str,
) -> Result<CompressedVariants, SyncError> {
    let short = sha256.get(..12).unwrap_or(sha256);
    let span = tracing::info_span!("bundle_variants", sha256 = %short, prefix = %prefix);
    compress_inner(store, prefix, sha256).instrument(span).await
}

async fn compress_inner(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    sha256: &str,
) -> Result<CompressedVariants, SyncError> {
    if !is_sha256_hex(sha256) {
        return Err(SyncError::InvalidChecksum(sha256.to_owned()));
    }
    let started = std::time::Instant::now();
    let plain = read_manifest(store, prefix, &manifest_key(sha256)).await?;
    // Distinct raw contents (a file stored compressed already keeps its entry).
    let mut contents: Vec<String> = plain
        .iter()
        .filter(|file| is_sha256_hex(&file.file_hash) && file.key == file_key(&file.file_hash, false))
        .map(|file| file.file_hash.clone())
        .collect();
    contents.sort_unstable();
    contents.dedup();

    let workdir = tempfile::Builder::new()
        .prefix("ota-variants-")
        .tempdir()
        .map_err(|source| SyncError::TempStorage {
            action: "creating a temporary folder",
            source,
        })?;
    let spools = Arc::new(Spools::new(workdir.path()));
    let outcomes: Vec<(String, Variant)> = futures::stream::iter(contents)
        .map(|hash: String| {
            let spools = Arc::clone(&spools);
            async move {
                let variant = variant_of(store, prefix, &hash, &spools).await?;
                Ok::<_, SyncError>((hash, variant))
            }
        })
        .buffer_unordered(encoders())
        .try_collect()
        .await?;

    let mut compressed: HashMap<String, bool> = HashMap::with_capacity(outcomes.len());
    let (mut variants, mut made, mut kept_raw) = (0, 0, 0);
    for (hash, variant) in outcomes {
        match variant {
            Variant::Stored => variants += 1,
            Variant::Made => {
                variants += 1;
                made += 1;
            }
            Variant::NotWorth => kept_raw += 1,
            Variant::Small => {}
        }
        compressed.insert(hash, matches!(variant, Variant::Stored | Variant::Made));
    }
    let mut manifest: Vec<ManifestFile> = plain
        .into_iter()
        .map(|file| match compressed.get(&file.file_hash) {
            Some(true) if file.key == file_key(&file.file_hash, false) => ManifestFile {
                file_name: format!("{}.br", file.file_name),
                key: file_key(&file.file_hash, true),
                file_hash: file.file_hash,
            },
            _ => file,
        })
        .collect();
    manifest.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    let manifest_key = variant_manifest_key(sha256);
    objects::store_manifest(store, prefix, &manifest_key, &manifest).await?;
    tracing::info!(
        variants,
        made,
        kept_raw,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Brotli variants stored"
    );
    Ok(CompressedVariants {
        manifest_key,
        manifest,
        variants,
        made,
        kept_raw,
    })
}

/// What became of one content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Its variant was in storage already.
    Stored,
    /// Its variant was made and stored now.
    Made,
    /// Compressed already, or Brotli did not make it smaller: served raw.
    NotWorth,
    /// Smaller than [`BROTLI_MIN_SIZE`]: not tried.
    Small,
}

fn path_of(prefix: &Path, key: &str) -> Result<Path, SyncError> {
    object_path(prefix, key).ok_or_else(|| SyncError::Task(format!("built an invalid key {key:?}")))
}

/// The variant of one content: found in storage, or made from the raw file.
async fn variant_of(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    hash: &str,
    spools: &Arc<Spools>,
) -> Result<Variant, SyncError> {
    let variant_path = path_of(prefix, &file_key(hash, true))?;
    match store.head(&variant_path).await {
        Ok(meta) if meta.size > 0 => return Ok(Variant::Stored),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(SyncError::storage("check", &variant_path, e)),
    }
    let _permit = ENCODER_PERMITS
        .acquire()
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?;
    let raw_path = path_of(prefix, &file_key(hash, false))?;
    let raw = store
        .get(&raw_path)
        .await
        .map_err(|e| SyncError::storage("read", &raw_path, e))?;
    let size = raw.meta.size;
    if size < BROTLI_MIN_SIZE {
        return Ok(Variant::Small);
    }

    // The encoder runs on a blocking thread and takes the download's chunks from a short queue.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHUNK_QUEUE);
    let encoder = {
        let spools = Arc::clone(spools);
        on_encoder_thread(move || {
            let mut source = QueueReader {
                receiver: &mut receiver,
                current: bytes::Bytes::new(),
                hasher: Sha256::new(),
                head: Vec::with_capacity(SNIFF_LEN),
            };
            if source.fill_head() && already_compressed(&source.head) {
                return Ok(None);
            }
            let target = spools.take()?;
            let (file, written) = objects::compress_into(&mut source, target, size)?;
            Ok(Some((file, written, hex::encode(source.hasher.finalize()))))
        })
    };
    let download = async {
        let mut stream = raw.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| SyncError::storage("read", &raw_path, e))?;
            // The encoder stopped early (a compressed format): the rest is not needed.
            if sender.send(chunk).await.is_err() {
                break;
            }
        }
        drop(sender);
        Ok::<_, SyncError>(())
    };
    let (downloaded, encoded) = futures::future::join(download, encoder).await;
    downloaded?;
    let Some((mut file, written, actual)) = encoded? else {
        return Ok(Variant::NotWorth);
    };
    if actual != hash {
        // Storage holds other bytes under this content's key: making a variant of them would
        // spread the damage. Leave the raw file as it is (devices verify hashes) and say so.
        tracing::warn!(key = %raw_path, actual, "a stored file does not match its hash; no variant made");
        spools.give(file);
        return Ok(Variant::NotWorth);
    }
    if written >= size {
        spools.give(file);
        return Ok(Variant::NotWorth);
    }
    use std::io::Seek as _;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|source| SyncError::TempStorage {
            action: "reading a compressed file",
            source,
        })?;
    let file = objects::upload_file(store, &variant_path, file, written, 1).await?;
    spools.give(file);
    Ok(Variant::Made)
}

/// The chunks of a download as [`std::io::Read`] on a blocking thread, hashed on the way.
struct QueueReader<'a> {
    receiver: &'a mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
    hasher: Sha256,
    /// The first bytes, read ahead by [`QueueReader::fill_head`] and yielded first.
    head: Vec<u8>,
}

impl QueueReader<'_> {
    /// Reads ahead up to [`SNIFF_LEN`] bytes into `head`; false when the file is shorter.
    fn fill_head(&mut self) -> bool {
        while self.head.len() < SNIFF_LEN {
            if self.current.is_empty() {
                match self.receiver.blocking_recv() {
                    Some(chunk) => {
                        self.hasher.update(&chunk);
                        self.current = chunk;
                        continue;
                    }
                    None => return false,
                }
            }
            let take = (SNIFF_LEN - self.head.len()).min(self.current.len());
            self.head.extend_from_slice(&self.current.split_to(take));
        }
        true
    }
}

impl std::io::Read for QueueReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.head.is_empty() {
            let take = self.head.len().min(buf.len());
            buf[..take].copy_from_slice(&self.head[..take]);
            self.head.drain(..take);
            return Ok(take);
        }
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => {
                    self.hasher.update(&chunk);
                    self.current = chunk;
                }
                None => return Ok(0),
            }
        }
        let take = self.current.len().min(buf.len());
        buf[..take].copy_from_slice(&self.current.split_to(take));
        Ok(take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_formats_are_recognized_by_their_first_bytes() {
        for head in [
            &b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..],
            b"\xff\xd8\xff\xe0\0\x10JFIF",
            b"GIF89a\x01\0\x01\0",
            b"RIFF\x10\0\0\0WEBPVP8 ",
            b"wOF2\0\x01\0\0",
            b"wOFF\0\x01\0\0",
            b"PK\x03\x04\x14\0",
            b"\x1f\x8b\x08\0",
            b"\0\0\0\x20ftypisom",
            b"\x1a\x45\xdf\xa3\x9f\x42",
            b"ID3\x04\0\0",
            b"\x28\xb5\x2f\xfd\x04",
        ] {
            assert!(already_compressed(head), "{head:?}");
        }
        for head in [
            &b"<!doctype html><html>"[..],
            b"function a(){return 1}",
            b"{\"key\": 1}",
            b"<svg xmlns=\"http://",
            b"RIFF\x10\0\0\0WAVEfmt ",
            b"",
        ] {
            assert!(!already_compressed(head), "{head:?}");
        }
    }

    #[test]
    fn the_variant_manifest_has_a_key_of_its_own() {
        let sha = "a".repeat(64);
        assert_eq!(variant_manifest_key(&sha), format!("manifests/{sha}.br.json"));
        assert_ne!(variant_manifest_key(&sha), manifest_key(&sha));
    }
}
