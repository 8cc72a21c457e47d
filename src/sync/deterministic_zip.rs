//! The one writer of bundle zips: the same files (names and contents, in any order) always give
//! the same bytes, so the same SHA-256, whatever their timestamps, permissions or the machine.
//!
//! `ota bundle push` zips a web build with it to learn the bundle's SHA-256, and the sync
//! rebuilds that zip from the content-addressed files in storage with it
//! ([`super::rebuild`]): both must produce the same bytes, so there is exactly one writer.
//! Anything that changes its output (entry options, the entry order, the deflate level, the
//! `zip` or `flate2` crate's encoder) makes zips pushed by an older `ota` fail to rebuild, with
//! a checksum mismatch that says so.

use std::io::{Seek, Write};

use zip::{CompressionMethod, DateTime, ZipWriter, result::ZipError, write::SimpleFileOptions};

/// The deflate level of every entry.
const DEFLATE_LEVEL: i64 = 6;

/// A zip being written. Add the entries sorted by [`entry_order`], each with [`start_file`] followed
/// by its content through [`Write`], then [`finish`].
///
/// [`start_file`]: DeterministicZip::start_file
/// [`finish`]: DeterministicZip::finish
pub struct DeterministicZip<W: Write + Seek> {
    zip: ZipWriter<W>,
}

/// The order of the entries in the zip: by the bytes of their names, the same on every machine.
pub fn entry_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.as_bytes().cmp(b.as_bytes())
}

impl<W: Write + Seek> DeterministicZip<W> {
    /// A zip written into `writer`.
    pub fn new(writer: W) -> Self {
        DeterministicZip {
            zip: ZipWriter::new(writer),
        }
    }

    /// Starts the entry `name` (with `/` between folders), whose content has `size` bytes: every
    /// entry is deflated at level 6, dated 1980-01-01 00:00 and has the mode 0644.
    pub fn start_file(&mut self, name: &str, size: u64) -> Result<(), ZipError> {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(DEFLATE_LEVEL))
            .last_modified_time(DateTime::default())
            .unix_permissions(0o644)
            .large_file(size >= u64::from(u32::MAX));
        self.zip.start_file(name, options)
    }

    /// Writes the central directory and returns the writer.
    pub fn finish(self) -> Result<W, ZipError> {
        self.zip.finish()
    }
}

/// The content of the entry last started.
impl<W: Write + Seek> Write for DeterministicZip<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.zip.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.zip.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read};

    use super::*;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
        names.sort_by(|a, b| entry_order(a, b));
        let mut zip = DeterministicZip::new(Cursor::new(Vec::new()));
        for name in names {
            let content = files.iter().find(|(n, _)| *n == name).unwrap().1;
            zip.start_file(name, content.len() as u64).unwrap();
            zip.write_all(content).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn the_same_files_in_any_order_give_the_same_bytes() {
        let a = zip_of(&[("index.html", b"<html>"), ("a/b.js", b"x()"), ("a.js", b"")]);
        let b = zip_of(&[("a.js", b""), ("index.html", b"<html>"), ("a/b.js", b"x()")]);
        assert_eq!(a, b);
        let c = zip_of(&[("a.js", b""), ("index.html", b"<html>"), ("a/b.js", b"y()")]);
        assert_ne!(a, c);

        let mut archive = zip::ZipArchive::new(Cursor::new(a)).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().into_owned())
            .collect();
        assert_eq!(names, ["a.js", "a/b.js", "index.html"]);
        let mut content = String::new();
        archive
            .by_name("a/b.js")
            .unwrap()
            .read_to_string(&mut content)
            .unwrap();
        assert_eq!(content, "x()");
    }
}
