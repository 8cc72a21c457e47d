//! The zip of a web build folder, as the plugin takes it: the folder's contents at the zip's root
//! (so `index.html` is at the root), and the same bytes, so the same SHA-256, for the same files
//! whatever their timestamps, permissions or the order the filesystem lists them in. The bytes
//! come from [`DeterministicZip`], the writer the sync rebuilds pushed bundles with.

use std::{
    fs::File,
    io::{BufReader, Read, Write},
    path::{Path, PathBuf},
};

use super::CliError;
use crate::sync::{DeterministicZip, entry_order};

/// The call the plugin needs from the app after each load, or it rolls the bundle back.
const NOTIFY_APP_READY: &[u8] = b"notifyAppReady";
/// Bytes copied at a time.
const CHUNK: usize = 64 * 1024;

/// A zip built from a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BuiltZip {
    /// Lower-case hex SHA-256 of the zip: what the plugin verifies.
    pub sha256: String,
    /// Bytes of the zip.
    pub size: u64,
    /// Files in it.
    pub files: u64,
    /// Whether some `.js` file mentions `notifyAppReady`.
    pub calls_notify_app_ready: bool,
}

/// One file to add: its name in the zip (with `/`) and where it is.
struct Entry {
    name: String,
    path: PathBuf,
    size: u64,
}

/// Zips the contents of `dist` into `out`. Refuses a folder without `index.html` at its root,
/// symbolic links, and names the plugin cannot unzip (backslashes, not UTF-8).
pub(super) fn zip_dist(dist: &Path, out: &Path) -> Result<BuiltZip, CliError> {
    let metadata = std::fs::metadata(dist).map_err(|e| {
        CliError::input(format!(
            "cannot read the web build folder {}: {e}",
            dist.display()
        ))
    })?;
    if !metadata.is_dir() {
        return Err(CliError::input(format!(
            "{} is not a folder: give the web build folder (e.g. dist or www)",
            dist.display()
        )));
    }
    let index = dist.join("index.html");
    if !std::fs::symlink_metadata(&index).is_ok_and(|m| m.is_file()) {
        return Err(CliError::input(format!(
            "{} has no index.html at its root: the plugin loads <bundle>/index.html (give the folder that holds it)",
            dist.display()
        )));
    }
    let mut entries = Vec::new();
    collect(dist, "", &mut entries)?;
    // The order the sync rebuilds the zip in from stored files.
    entries.sort_by(|a, b| entry_order(&a.name, &b.name));

    let file =
        File::create(out).map_err(|e| CliError::input(format!("cannot create {}: {e}", out.display())))?;
    let mut zip = DeterministicZip::new(std::io::BufWriter::new(file));
    let write_failed =
        |e: &dyn std::fmt::Display| CliError::input(format!("cannot write {}: {e}", out.display()));
    let mut calls_notify_app_ready = false;
    let mut buffer = vec![0u8; CHUNK];
    for entry in &entries {
        zip.start_file(&entry.name, entry.size)
            .map_err(|e| write_failed(&e))?;
        let source = File::open(&entry.path)
            .map_err(|e| CliError::input(format!("cannot read {}: {e}", entry.path.display())))?;
        let search = !calls_notify_app_ready && entry.name.ends_with(".js");
        let found = copy(BufReader::new(source), &mut zip, &mut buffer, search)
            .map_err(|e| CliError::input(format!("cannot zip {}: {e}", entry.path.display())))?;
        calls_notify_app_ready |= found;
    }
    let mut writer = zip.finish().map_err(|e| write_failed(&e))?;
    writer.flush().map_err(|e| write_failed(&e))?;
    drop(writer);
    let file = File::open(out).map_err(|e| CliError::input(format!("cannot read {}: {e}", out.display())))?;
    let size = file
        .metadata()
        .map_err(|e| CliError::input(format!("cannot read {}: {e}", out.display())))?
        .len();
    let sha256 =
        crate::crypto::sha256_of(BufReader::new(file)).map_err(|e| CliError::input(e.to_string()))?;
    Ok(BuiltZip {
        sha256,
        size,
        files: entries.len() as u64,
        calls_notify_app_ready,
    })
}

/// Adds the files under `dir` (named `prefix` + their relative path).
fn collect(dir: &Path, prefix: &str, entries: &mut Vec<Entry>) -> Result<(), CliError> {
    let listing =
        std::fs::read_dir(dir).map_err(|e| CliError::input(format!("cannot list {}: {e}", dir.display())))?;
    for item in listing {
        let item = item.map_err(|e| CliError::input(format!("cannot list {}: {e}", dir.display())))?;
        let path = item.path();
        let Some(file_name) = item.file_name().to_str().map(str::to_owned) else {
            return Err(CliError::input(format!(
                "{} has a name that is not UTF-8: rename it",
                path.display()
            )));
        };
        if file_name.contains('\\') {
            return Err(CliError::input(format!(
                "{} has a backslash in its name, which the plugin refuses (windows_path_fail): rename it",
                path.display()
            )));
        }
        let name = format!("{prefix}{file_name}");
        let kind = item
            .file_type()
            .map_err(|e| CliError::input(format!("cannot read {}: {e}", path.display())))?;
        if kind.is_symlink() {
            return Err(CliError::input(format!(
                "{} is a symbolic link: bundles hold regular files only (copy the file instead)",
                path.display()
            )));
        } else if kind.is_dir() {
            collect(&path, &format!("{name}/"), entries)?;
        } else if kind.is_file() {
            let size = item
                .metadata()
                .map_err(|e| CliError::input(format!("cannot read {}: {e}", path.display())))?
                .len();
            entries.push(Entry { name, path, size });
        } else {
            return Err(CliError::input(format!(
                "{} is not a regular file or folder",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Copies `reader` into `writer`; when `search`, tells whether [`NOTIFY_APP_READY`] occurs
/// (also across two chunks).
fn copy<R: Read, W: Write>(
    mut reader: R,
    writer: &mut W,
    buffer: &mut [u8],
    search: bool,
) -> std::io::Result<bool> {
    let mut found = false;
    // The end of the previous chunk, to find a match that straddles two chunks.
    let mut tail: Vec<u8> = Vec::with_capacity(2 * NOTIFY_APP_READY.len());
    loop {
        let read = match reader.read(buffer) {
            Ok(0) => return Ok(found),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buffer[..read];
        writer.write_all(chunk)?;
        if search && !found {
            let keep = NOTIFY_APP_READY.len() - 1;
            tail.extend_from_slice(&chunk[..chunk.len().min(keep)]);
            found = contains(&tail, NOTIFY_APP_READY) || contains(chunk, NOTIFY_APP_READY);
            // Keep the last bytes seen, for a match that continues in the next chunk.
            if chunk.len() >= keep {
                tail.clear();
                tail.extend_from_slice(&chunk[chunk.len() - keep..]);
            } else {
                tail.drain(..tail.len().saturating_sub(keep));
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, name: &str, content: &[u8]) {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn web_build(root: &Path) {
        write(
            root,
            "index.html",
            b"<!doctype html><script src=assets/app.js></script>",
        );
        write(
            root,
            "assets/app.js",
            b"import { CapacitorUpdater } from '@capgo/capacitor-updater'; CapacitorUpdater.notifyAppReady();",
        );
        write(root, "assets/z/deep.css", b"body{}");
        write(root, ".well-known/x", b"dot folders are kept");
    }

    #[test]
    fn the_same_files_give_the_same_zip_whatever_their_timestamps() {
        let dist = tempfile::tempdir().unwrap();
        web_build(dist.path());
        let out = tempfile::tempdir().unwrap();
        let first = zip_dist(dist.path(), &out.path().join("a.zip")).unwrap();
        // Rewrite a file (new mtime) with the same content: same zip.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(dist.path(), "assets/z/deep.css", b"body{}");
        let second = zip_dist(dist.path(), &out.path().join("b.zip")).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.files, 4);
        assert!(first.calls_notify_app_ready);
        write(dist.path(), "assets/z/deep.css", b"body{color:red}");
        let third = zip_dist(dist.path(), &out.path().join("c.zip")).unwrap();
        assert_ne!(first.sha256, third.sha256);

        let mut archive = zip::ZipArchive::new(File::open(out.path().join("a.zip")).unwrap()).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                ".well-known/x",
                "assets/app.js",
                "assets/z/deep.css",
                "index.html"
            ]
        );
        let mut index = String::new();
        archive
            .by_name("index.html")
            .unwrap()
            .read_to_string(&mut index)
            .unwrap();
        assert!(index.starts_with("<!doctype html>"));
    }

    #[test]
    fn a_folder_without_index_html_at_its_root_is_refused() {
        let dist = tempfile::tempdir().unwrap();
        write(dist.path(), "www/index.html", b"<html>");
        let out = tempfile::tempdir().unwrap();
        let error = zip_dist(dist.path(), &out.path().join("a.zip")).unwrap_err();
        assert!(
            error.to_string().contains("has no index.html at its root"),
            "{error}"
        );
        let error = zip_dist(&dist.path().join("missing"), &out.path().join("a.zip")).unwrap_err();
        assert!(
            error.to_string().contains("cannot read the web build folder"),
            "{error}"
        );
        let error = zip_dist(&dist.path().join("www/index.html"), &out.path().join("a.zip")).unwrap_err();
        assert!(error.to_string().contains("is not a folder"), "{error}");
    }

    #[test]
    fn symbolic_links_and_backslashes_are_refused() {
        let dist = tempfile::tempdir().unwrap();
        web_build(dist.path());
        std::os::unix::fs::symlink("/etc/passwd", dist.path().join("assets/passwd")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let error = zip_dist(dist.path(), &out.path().join("a.zip")).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
        std::fs::remove_file(dist.path().join("assets/passwd")).unwrap();
        write(dist.path(), "a\\b.js", b"x");
        let error = zip_dist(dist.path(), &out.path().join("a.zip")).unwrap_err();
        assert!(error.to_string().contains("backslash"), "{error}");
    }

    #[test]
    fn notify_app_ready_is_found_across_chunks_and_only_in_javascript() {
        let mut text = vec![b' '; CHUNK - 5];
        text.extend_from_slice(b"notifyAppReady()");
        let mut buffer = vec![0u8; CHUNK];
        assert!(copy(text.as_slice(), &mut Vec::new(), &mut buffer, true).unwrap());
        assert!(!copy(&b"notifyAppReadx"[..], &mut Vec::new(), &mut buffer, true).unwrap());
        let dist = tempfile::tempdir().unwrap();
        write(dist.path(), "index.html", b"notifyAppReady()");
        let out = tempfile::tempdir().unwrap();
        assert!(
            !zip_dist(dist.path(), &out.path().join("a.zip"))
                .unwrap()
                .calls_notify_app_ready
        );
    }
}
