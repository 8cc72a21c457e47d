//! Step 3 of a sync: validating the zip, hashing its files and spooling them for upload, in one
//! pass over the archive (blocking code, run in `spawn_blocking`).
//!
//! Nothing here trusts the archive: the entry count is checked before the central directory is
//! loaded, every name is checked, sizes are counted while decompressing (a declared size is
//! only a claim), and every refusal names the entry.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    path::Path as FsPath,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use sha2::{Digest, Sha256};
use zip::{CompressionMethod, ZipArchive};

use super::{RATIO_CHECK_MIN_SIZE, SyncError, SyncLimits};

/// Read buffer for decompression.
const CHUNK: usize = 64 * 1024;

/// File-type bits of a unix mode, and the types allowed.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// An open archive.
pub(super) type Archive = ZipArchive<BufReader<File>>;

/// One file of the bundle.
#[derive(Debug, Clone)]
pub(super) struct ScannedFile {
    /// Index of its entry in the zip.
    pub index: usize,
    /// Path relative to the bundle root (after flattening).
    pub path: String,
    /// Lower-case hex SHA-256 of its content.
    pub hash: String,
    /// Bytes of its content.
    pub size: u64,
    /// Bytes of its entry's data in the zip.
    pub compressed_size: u64,
    /// Whether its entry is stored without compression.
    pub stored: bool,
    /// Where its content was spooled, when the scan spooled (see [`scan`]).
    pub spooled: Option<Spooled>,
}

/// Where a file's content is in the scan's spool files: `size` bytes at `offset` of
/// `Scan::spools[spool]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spooled {
    /// Index of the spool file.
    pub spool: usize,
    /// Offset of the content in it.
    pub offset: u64,
}

/// What the validation found.
#[derive(Debug)]
pub(super) struct Scan {
    /// The bundle's files, in archive order.
    pub files: Vec<ScannedFile>,
    /// The spool files (one per thread that decompressed), when the scan spooled; each file's
    /// [`ScannedFile::spooled`] says where its content is.
    pub spools: Vec<File>,
    /// Bytes of those files.
    pub uncompressed_size: u64,
    /// The wrapping folder that was flattened away, if any.
    pub flattened: Option<String>,
}

/// A file content to extract again for upload.
#[derive(Debug, Clone)]
pub(super) struct Extract {
    /// Index of an entry holding it.
    pub index: usize,
    /// That entry's path in the bundle.
    pub path: String,
    /// Whether it must be stored compressed (see `objects::needs_brotli`).
    pub brotli_required: bool,
    /// Its SHA-256.
    pub hash: String,
    /// Its size.
    pub size: u64,
    /// Bytes of the entry's data in the zip.
    pub compressed_size: u64,
    /// Whether the entry is stored without compression.
    pub stored: bool,
}

fn invalid(message: String) -> SyncError {
    SyncError::InvalidArchive(message)
}

fn temp_failed(source: std::io::Error) -> SyncError {
    SyncError::TempStorage {
        action: "reading the temporary zip",
        source,
    }
}

/// Opens the temporary zip (the entry count is checked first, see [`declared_entry_count`]).
pub(super) fn open(zip_path: &FsPath, max_entries: usize) -> Result<Archive, SyncError> {
    let mut file = File::open(zip_path).map_err(temp_failed)?;
    let declared = declared_entry_count(&mut file).map_err(temp_failed)?;
    if declared > max_entries as u64 {
        return Err(invalid(format!(
            "the archive declares {declared} entries, the limit is {max_entries}"
        )));
    }
    file.seek(SeekFrom::Start(0)).map_err(temp_failed)?;
    let archive = ZipArchive::new(BufReader::with_capacity(CHUNK, file))
        .map_err(|e| invalid(format!("not a readable zip archive: {e}")))?;
    if archive.len() > max_entries {
        return Err(invalid(format!(
            "the archive has {} entries, the limit is {max_entries}",
            archive.len()
        )));
    }
    Ok(archive)
}

/// The largest entry count any end-of-central-directory record near the end of the file
/// declares (zip64 records included), so that a hostile count is refused before the central
/// directory is loaded into memory. Zero when there is no such record (the zip reader then
/// refuses the file).
fn declared_entry_count(file: &mut File) -> std::io::Result<u64> {
    const EOCD: &[u8; 4] = b"PK\x05\x06";
    const EOCD_LEN: usize = 22;
    const LOCATOR: &[u8; 4] = b"PK\x06\x07";
    const LOCATOR_LEN: usize = 20;
    const EOCD64: &[u8; 4] = b"PK\x06\x06";
    const EOCD64_LEN: usize = 56;

    let len = file.seek(SeekFrom::End(0))?;
    // The record is at most a 64 KiB comment away from the end.
    let tail_len = len.min((EOCD_LEN + 4 + (1 << 16)) as u64);
    let tail_start = len - tail_len;
    let mut tail = vec![0; tail_len as usize];
    file.seek(SeekFrom::Start(tail_start))?;
    file.read_exact(&mut tail)?;

    let u16_at = |buf: &[u8], at: usize| u64::from(u16::from_le_bytes([buf[at], buf[at + 1]]));
    let u64_at = |buf: &[u8], at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&buf[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let mut largest = 0;
    for at in (0..tail.len().saturating_sub(EOCD_LEN - 1)).rev() {
        if &tail[at..at + 4] != EOCD {
            continue;
        }
        let on_disk = u16_at(&tail, at + 8);
        let total = u16_at(&tail, at + 10);
        let mut count = on_disk.max(total);
        if (on_disk == 0xFFFF || total == 0xFFFF)
            && at >= LOCATOR_LEN
            && &tail[at - LOCATOR_LEN..at - 16] == LOCATOR
        {
            let record_at = u64_at(&tail, at - LOCATOR_LEN + 8);
            if record_at
                .checked_add(EOCD64_LEN as u64)
                .is_some_and(|end| end <= len)
            {
                let mut record = [0; EOCD64_LEN];
                file.seek(SeekFrom::Start(record_at))?;
                file.read_exact(&mut record)?;
                if &record[..4] == EOCD64 {
                    count = u64_at(&record, 24).max(u64_at(&record, 32));
                }
            }
        }
        largest = largest.max(count);
    }
    Ok(largest)
}

/// The first name the central directory lists twice (the zip reader keeps only one entry per
/// name, so the raw directory is walked again). Best effort: `None` when it cannot be read.
fn duplicate_name(zip_path: &FsPath, directory_start: u64, max_entries: usize) -> Option<String> {
    const HEADER_LEN: usize = 46;
    let mut reader = BufReader::new(File::open(zip_path).ok()?);
    reader.seek(SeekFrom::Start(directory_start)).ok()?;
    let mut seen = HashSet::new();
    let mut header = [0; HEADER_LEN];
    for _ in 0..=max_entries {
        reader.read_exact(&mut header).ok()?;
        if &header[..4] != b"PK\x01\x02" {
            return None;
        }
        let field = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let mut name = vec![0; usize::from(field(28))];
        reader.read_exact(&mut name).ok()?;
        let skip = i64::from(field(30)) + i64::from(field(32));
        reader.seek_relative(skip).ok()?;
        if !seen.insert(name.clone()) {
            return Some(String::from_utf8_lossy(&name).into_owned());
        }
    }
    None
}

/// One entry of the central directory, checked.
#[derive(Debug)]
struct Entry {
    index: usize,
    /// The name as in the archive (for messages).
    name: String,
    /// Normalized path components (no empty, `.` or `..` component).
    components: Vec<String>,
    is_dir: bool,
    size: u64,
    compressed_size: u64,
    stored: bool,
}

/// Why an entry's name is refused (the message follows the quoted name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum UnsafeName {
    #[error("contains control characters")]
    ControlCharacters,
    #[error("contains a backslash")]
    Backslash,
    #[error("is an absolute path")]
    Absolute,
    #[error("is an absolute path (drive letter)")]
    DriveLetter,
    #[error("escapes the bundle root (`..`)")]
    Escapes,
}

/// Checks a name and splits it into path components.
fn name_components(name: &str) -> Result<Vec<String>, UnsafeName> {
    if name.chars().any(|c| c.is_control()) {
        return Err(UnsafeName::ControlCharacters);
    }
    if name.contains('\\') {
        return Err(UnsafeName::Backslash);
    }
    if name.starts_with('/') {
        return Err(UnsafeName::Absolute);
    }
    let components: Vec<String> = name
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .map(str::to_owned)
        .collect();
    if let Some(first) = components.first() {
        let bytes = first.as_bytes();
        if bytes.len() == 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
            return Err(UnsafeName::DriveLetter);
        }
    }
    if components.iter().any(|part| part == "..") {
        return Err(UnsafeName::Escapes);
    }
    Ok(components)
}

/// Top-level entries that do not count when looking for a wrapping folder.
fn ignored_at_top(component: &str) -> bool {
    component.starts_with("__MACOSX") || component.starts_with('.')
}

/// Validates the whole archive and hashes every file of the bundle. With `spool_dir`, the same
/// pass also writes the content of every file of the bundle to spool files created there (one per
/// thread), so that uploading them needs no second decompression.
pub(super) fn scan(
    zip_path: &FsPath,
    limits: &SyncLimits,
    spool_dir: Option<&FsPath>,
) -> Result<Scan, SyncError> {
    let mut archive = open(zip_path, limits.max_entries)?;
    if archive.is_empty() {
        return Err(invalid("the archive is empty".into()));
    }
    if archive.has_duplicate_names() {
        let name = duplicate_name(zip_path, archive.central_directory_start(), limits.max_entries)
            .map(|name| format!(" ({name:?})"))
            .unwrap_or_default();
        return Err(invalid(format!(
            "the archive lists the same entry name more than once{name}"
        )));
    }
    archive.validate_header_consistency().map_err(|e| {
        invalid(format!(
            "the archive's local headers do not match its directory: {e}"
        ))
    })?;

    // Names, types and declared sizes, without decompressing anything.
    let mut entries = Vec::with_capacity(archive.len());
    let mut declared_total: u64 = 0;
    for index in 0..archive.len() {
        let entry = archive
            .by_index_data(index)
            .map_err(|e| invalid(format!("entry #{index}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| invalid(format!("entry #{index} has an unreadable name: {e}")))?
            .into_owned();
        let components = name_components(&name).map_err(|why| invalid(format!("entry {name:?} {why}")))?;
        let file_type = entry.unix_mode().map(|mode| mode & S_IFMT);
        match file_type {
            Some(S_IFLNK) => return Err(invalid(format!("entry {name:?} is a symbolic link"))),
            None | Some(0 | S_IFREG | S_IFDIR) => {}
            Some(_) => return Err(invalid(format!("entry {name:?} is not a regular file or folder"))),
        }
        if entry.encrypted() {
            return Err(invalid(format!(
                "entry {name:?} is encrypted (zip passwords are not supported)"
            )));
        }
        let is_dir = name.ends_with('/') || file_type == Some(S_IFDIR);
        let size = entry.size();
        let compressed = entry.compressed_size();
        let stored = entry.compression() == CompressionMethod::Stored;
        if is_dir {
            if size > 0 {
                return Err(invalid(format!("folder entry {name:?} has content")));
            }
        } else {
            if components.is_empty() {
                return Err(invalid(format!("entry {name:?} has no file name")));
            }
            declared_total = declared_total.saturating_add(size);
            if declared_total > limits.max_uncompressed_bytes {
                return Err(invalid(format!(
                    "entry {name:?} ({size} bytes) brings the decompressed total over the limit of {} bytes",
                    limits.max_uncompressed_bytes
                )));
            }
            if size > RATIO_CHECK_MIN_SIZE && size > compressed.saturating_mul(limits.max_compression_ratio) {
                return Err(invalid(format!(
                    "entry {name:?} is a zip bomb: {size} bytes from {compressed} compressed, a ratio above the limit of {}:1",
                    limits.max_compression_ratio
                )));
            }
        }
        entries.push(Entry {
            index,
            name,
            components,
            is_dir,
            size,
            compressed_size: compressed,
            stored,
        });
    }

    // Where the bundle root is.
    let is_file_at = |path: &[&str]| entries.iter().any(|e| !e.is_dir && e.components == path);
    let flattened = if is_file_at(&["index.html"]) {
        None
    } else {
        let tops: HashSet<&str> = entries
            .iter()
            .filter_map(|e| e.components.first().map(String::as_str))
            .filter(|top| !ignored_at_top(top))
            .collect();
        match tops.into_iter().collect::<Vec<_>>().as_slice() {
            [top] if is_file_at(&[top, "index.html"]) => Some((*top).to_owned()),
            _ => {
                return Err(invalid(
                    "no index.html at the root of the archive, nor in a single top-level folder".into(),
                ));
            }
        }
    };

    // Final paths: unique, and no path both a file and a folder.
    let strip = usize::from(flattened.is_some());
    let mut included = Vec::new();
    let mut by_path: HashMap<String, &str> = HashMap::new();
    let mut folders: HashMap<String, &str> = HashMap::new();
    for entry in &entries {
        if let Some(top) = &flattened
            && entry.components.first() != Some(top)
        {
            continue;
        }
        let parts = &entry.components[strip..];
        if parts.is_empty() {
            continue;
        }
        for depth in 1..parts.len() {
            folders.entry(parts[..depth].join("/")).or_insert(&entry.name);
        }
        let path = parts.join("/");
        if entry.is_dir {
            folders.entry(path).or_insert(&entry.name);
            continue;
        }
        if let Some(other) = by_path.insert(path.clone(), &entry.name) {
            return Err(invalid(format!(
                "entries {other:?} and {:?} are both the file {path:?}",
                entry.name
            )));
        }
        included.push((entry, path));
    }
    for (entry, path) in &included {
        if let Some(folder_entry) = folders.get(path) {
            return Err(invalid(format!(
                "entry {:?} is the file {path:?}, which entry {folder_entry:?} uses as a folder",
                entry.name
            )));
        }
    }

    // Decompress everything the zip holds (devices that take the full zip unzip it all),
    // counting real sizes and hashing the bundle's files.
    let included: HashMap<usize, String> = included
        .into_iter()
        .map(|(entry, path)| (entry.index, path))
        .collect();
    let files_entries: Vec<(&Entry, bool)> = entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| (e, included.contains_key(&e.index)))
        .collect();
    let hashed = hash_entries(
        zip_path,
        &mut archive,
        &files_entries,
        limits,
        super::workers(),
        spool_dir,
    )?;
    let mut files = Vec::with_capacity(included.len());
    let mut uncompressed_size: u64 = 0;
    for ((entry, _), (hash, spooled)) in files_entries.iter().zip(hashed.hashes) {
        if let Some(path) = included.get(&entry.index) {
            uncompressed_size = uncompressed_size.saturating_add(entry.size);
            files.push(ScannedFile {
                index: entry.index,
                path: path.clone(),
                hash,
                size: entry.size,
                compressed_size: entry.compressed_size,
                stored: entry.stored,
                spooled,
            });
        }
    }
    if let Some(top) = &flattened {
        let dropped = entries
            .iter()
            .filter(|e| e.components.first() != Some(top))
            .count();
        if dropped > 0 {
            tracing::warn!(
                folder = %top,
                dropped,
                "flattened a wrapping folder and left out the entries beside it (iOS does not flatten such zips)"
            );
        }
    }
    Ok(Scan {
        files,
        spools: hashed.spools,
        uncompressed_size,
        flattened,
    })
}

/// One entry's SHA-256 and where it was spooled.
type HashedEntry = (String, Option<Spooled>);

/// What [`hash_entries`] found: each entry's SHA-256 and where it was spooled, and the spools.
struct Hashed {
    hashes: Vec<HashedEntry>,
    spools: Vec<File>,
}

/// Buffer of a spool file's writer.
const SPOOL_BUFFER: usize = 256 * 1024;

/// One thread's spool: an unnamed temporary file written in order.
struct SpoolWriter {
    writer: BufWriter<File>,
    written: u64,
}

impl SpoolWriter {
    fn create(dir: &FsPath) -> Result<Self, SyncError> {
        let file = tempfile::tempfile_in(dir).map_err(|source| SyncError::TempStorage {
            action: "creating a spool file",
            source,
        })?;
        Ok(SpoolWriter {
            writer: BufWriter::with_capacity(SPOOL_BUFFER, file),
            written: 0,
        })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), SyncError> {
        self.writer
            .write_all(chunk)
            .map_err(|source| SyncError::TempStorage {
                action: "writing a spool file",
                source,
            })?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<File, SyncError> {
        self.writer.into_inner().map_err(|e| SyncError::TempStorage {
            action: "writing a spool file",
            source: e.into_error(),
        })
    }
}

/// Decompresses every entry of `entries` (files, each checked against its declared size, and all
/// together against the total limit) and returns their SHA-256s, in the same order. With
/// `spool_dir`, the content of each entry marked `true` (a file of the bundle) is written to the
/// spool of the thread that decompressed it, and its place returned.
///
/// `workers` threads share the work, each with its own reader of the zip (`archive` is the
/// first's), taking the next entry in archive order as they go, so the file is read nearly
/// sequentially. When entries are refused, the refusal of the first of them in archive order is
/// returned.
fn hash_entries(
    zip_path: &FsPath,
    archive: &mut Archive,
    entries: &[(&Entry, bool)],
    limits: &SyncLimits,
    workers: usize,
    spool_dir: Option<&FsPath>,
) -> Result<Hashed, SyncError> {
    let workers = workers.max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let actual_total = AtomicU64::new(0);
    let hashes: Mutex<Vec<Option<HashedEntry>>> = Mutex::new(vec![None; entries.len()]);
    let errors: Mutex<Vec<(usize, SyncError)>> = Mutex::new(Vec::new());
    let spools: Mutex<Vec<Option<File>>> = Mutex::new((0..workers).map(|_| None).collect());
    let span = tracing::Span::current();
    let fail = |position: usize, error: SyncError| {
        failed.store(true, Ordering::Relaxed);
        lock(&errors).push((position, error));
    };
    let work = |worker: usize, archive: &mut Archive| {
        let _entered = span.enter();
        let mut spool = match spool_dir.map(SpoolWriter::create).transpose() {
            Ok(spool) => spool,
            Err(error) => return fail(0, error),
        };
        let mut buffer = vec![0; CHUNK];
        while !failed.load(Ordering::Relaxed) {
            let position = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(entry, included)) = entries.get(position) else {
                break;
            };
            let mut hasher = Sha256::new();
            let mut target = spool.as_mut().filter(|_| included);
            let spooled = target.as_ref().map(|spool| Spooled {
                spool: worker,
                offset: spool.written,
            });
            let copied = copy_entry(
                archive,
                entry.index,
                &entry.name,
                entry.size,
                &mut buffer,
                |chunk| {
                    let len = chunk.len() as u64;
                    let total = actual_total.fetch_add(len, Ordering::Relaxed).saturating_add(len);
                    if total > limits.max_uncompressed_bytes {
                        return Err(invalid(format!(
                            "entry {:?} brings the decompressed total over the limit of {} bytes",
                            entry.name, limits.max_uncompressed_bytes
                        )));
                    }
                    hasher.update(chunk);
                    match target.as_mut() {
                        Some(spool) => spool.write(chunk),
                        None => Ok(()),
                    }
                },
            );
            match copied {
                Ok(_) => lock(&hashes)[position] = Some((hex::encode(hasher.finalize()), spooled)),
                Err(error) => fail(position, error),
            }
        }
        if let Some(spool) = spool {
            match spool.finish() {
                Ok(file) => lock(&spools)[worker] = Some(file),
                Err(error) => fail(entries.len(), error),
            }
        }
    };
    std::thread::scope(|scope| {
        for worker in 1..workers {
            let work = &work;
            let fail = &fail;
            scope.spawn(move || match open(zip_path, usize::MAX) {
                Ok(mut own) => work(worker, &mut own),
                Err(error) => fail(0, error),
            });
        }
        work(0, archive);
    });
    let mut errors = errors
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    errors.sort_by_key(|(position, _)| *position);
    if let Some((_, error)) = errors.into_iter().next() {
        return Err(error);
    }
    let hashes = hashes
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .into_iter()
        .map(|hash| hash.ok_or_else(|| SyncError::Task("an entry of the zip was not hashed".to_owned())))
        .collect::<Result<_, _>>()?;
    let spools = match spool_dir {
        Some(_) => spools
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .into_iter()
            .map(|spool| spool.ok_or_else(|| SyncError::Task("a spool file was lost".to_owned())))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Hashed { hashes, spools })
}

/// Locks a mutex whose data stays consistent even if a holder panicked (it only pushes or sets).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Decompresses one entry chunk by chunk into `sink`, refusing it as soon as it yields more than
/// its declared size (and when it yields less, or its data is corrupt). Returns its size.
pub(super) fn copy_entry(
    archive: &mut Archive,
    index: usize,
    name: &str,
    declared: u64,
    buffer: &mut [u8],
    mut sink: impl FnMut(&[u8]) -> Result<(), SyncError>,
) -> Result<u64, SyncError> {
    let mut reader = archive
        .by_index(index)
        .map_err(|e| invalid(format!("entry {name:?} cannot be read: {e}")))?;
    let mut count: u64 = 0;
    loop {
        let read = match reader.read(buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(invalid(format!("entry {name:?} has corrupt data: {e}"))),
        };
        count = count.saturating_add(read as u64);
        if count > declared {
            return Err(invalid(format!(
                "entry {name:?} decompresses to more than its declared {declared} bytes"
            )));
        }
        sink(&buffer[..read])?;
    }
    if count != declared {
        return Err(invalid(format!(
            "entry {name:?} decompresses to {count} bytes, not its declared {declared}"
        )));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_normalized() {
        assert_eq!(name_components("assets/app.js").unwrap(), ["assets", "app.js"]);
        assert_eq!(name_components("./assets//app.js").unwrap(), ["assets", "app.js"]);
        assert_eq!(name_components("assets/").unwrap(), ["assets"]);
        for bad in [
            "/etc/passwd",
            "../evil",
            "a/../../b",
            "a\\b",
            "C:/x",
            "a\u{0}b",
            "x/..",
        ] {
            assert!(name_components(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn macos_and_dot_files_are_ignored_at_the_top() {
        assert!(ignored_at_top("__MACOSX"));
        assert!(ignored_at_top(".DS_Store"));
        assert!(!ignored_at_top("dist"));
    }
}
