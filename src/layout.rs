//! The object-storage key layout of synced bundles, and the manifest's entry type: pure
//! functions of a SHA-256, shared by the core (which keys a deletion may remove), bundle sync
//! (which writes them) and the update server (which serves them).
//!
//! Keys are relative to an App's key prefix, and every one is content-addressed:
//!
//! - `zips/<sha256>.zip`: the zip exactly as fetched (`<sha256>` is its SHA-256);
//! - `files/<sha256>`: one file of a bundle, raw (`<sha256>` is the SHA-256 of its content);
//! - `files/<sha256>.br`: one file of a bundle, Brotli-compressed (`<sha256>` is still the hash
//!   of the original content);
//! - `manifests/<sha256>.json`: the manifest of the zip `<sha256>`;
//! - `manifests/<sha256>.br.json`: the same manifest once the Brotli variants are made.

use object_store::path::Path;

/// One file of a bundle's delta manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path in the bundle (a `.br` suffix: the bytes are Brotli-compressed).
    pub file_name: String,
    /// Lower-case hex SHA-256 of the final file (or its encrypted form for encrypted bundles).
    pub file_hash: String,
    /// Storage key of the content-addressed object.
    pub key: String,
}

/// Key of a bundle's zip, relative to the prefix.
pub fn zip_key(sha256: &str) -> String {
    format!("zips/{sha256}.zip")
}

/// Key of a bundle's manifest, relative to the prefix.
pub fn manifest_key(sha256: &str) -> String {
    format!("manifests/{sha256}.json")
}

/// Key of the manifest that names a bundle's Brotli variants, relative to the prefix.
pub fn variant_manifest_key(sha256: &str) -> String {
    format!("manifests/{sha256}.br.json")
}

/// Key of one file's content, relative to the prefix (`brotli`: the compressed form).
pub fn file_key(sha256: &str, brotli: bool) -> String {
    if brotli {
        format!("files/{sha256}.br")
    } else {
        format!("files/{sha256}")
    }
}

/// Whether `value` is 64 lower-case hexadecimal characters.
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `key` is a key the sync writes: `zips/<sha256>.zip`, `manifests/<sha256>.json`,
/// `manifests/<sha256>.br.json`, or `files/<sha256>` with an optional `.br`, where `<sha256>` is
/// 64 lower-case hex characters.
pub fn is_bundle_key(key: &str) -> bool {
    let hash_between = |prefix: &str, suffix: &str| {
        key.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .is_some_and(is_sha256_hex)
    };
    hash_between("zips/", ".zip")
        || hash_between("manifests/", ".json")
        || hash_between("manifests/", ".br.json")
        || file_key_is_content_addressed(key)
}

/// Whether `key` is a content-addressed file key, `files/<sha256>` or `files/<sha256>.br`.
pub fn file_key_is_content_addressed(key: &str) -> bool {
    key.strip_prefix("files/")
        .is_some_and(|rest| is_sha256_hex(rest.strip_suffix(".br").unwrap_or(rest)))
}

/// The store path of `key` under `prefix`, or `None` when `key` is not a clean relative key
/// (empty, absolute, with `.`, `..` or empty segments, backslashes or control characters).
pub fn object_path(prefix: &Path, key: &str) -> Option<Path> {
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') || key.contains('\\') {
        return None;
    }
    let relative = Path::parse(key).ok()?;
    Some(prefix.parts().chain(relative.parts()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_are_clean_and_prefixed() {
        let prefix = Path::from("apps/shop");
        assert_eq!(
            object_path(&prefix, "files/abc").unwrap().as_ref(),
            "apps/shop/files/abc"
        );
        assert_eq!(
            object_path(&Path::ROOT, "zips/a.zip").unwrap().as_ref(),
            "zips/a.zip"
        );
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "./a",
            "a//b",
            "a\\b",
            "a/",
            "..",
            "a\u{1}b",
        ] {
            assert!(object_path(&prefix, bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn sha256_hex_is_strict() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex(&"g".repeat(64)));
    }
}
