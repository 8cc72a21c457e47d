//! Versions as the plugin reports them, and what each plugin version supports.

use semver::Version;

/// Coerces a native version (`version_build`) to semver the way Capgo does: `1` → `1.0.0`,
/// `1.2` → `1.2.0`; a full semver passes unchanged. `None` when it cannot be read as one.
pub fn coerce_native_version(raw: &str) -> Option<Version> {
    let raw = raw.trim();
    let raw = raw.strip_prefix('v').unwrap_or(raw);
    if let Ok(version) = Version::parse(raw) {
        return Some(version);
    }
    // Split off a pre-release or build suffix, pad the numeric core to three parts.
    let split = raw.find(['-', '+']).unwrap_or(raw.len());
    let (core, suffix) = raw.split_at(split);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut padded: Vec<String> = parts
        .iter()
        .map(|p| p.trim_start_matches('0').to_owned())
        .collect();
    for part in &mut padded {
        if part.is_empty() {
            *part = "0".to_owned();
        }
    }
    while padded.len() < 3 {
        padded.push("0".to_owned());
    }
    Version::parse(&format!("{}{suffix}", padded.join("."))).ok()
}

/// What a plugin version supports, per the protocol note's version matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginFeatures {
    /// Delta (manifest) updates with Brotli files: 5.10.0 / 6.25.0 / 7.0.35 / any 8.x.
    pub manifest: bool,
    /// `{"version":"builtin"}` reverts to the assets in the binary: 6.2.0 and later.
    pub revert_to_builtin: bool,
    /// `link` and `comment` in the update answer: 5.35 / 6.35 / 7.35 / 8.35 and later.
    pub metadata: bool,
    /// The zip checksum is SHA-256 (older plugins computed CRC32): same thresholds as manifest.
    pub sha256_checksum: bool,
    /// `key_id` is sent when the app has a public key: 8.2.0 and later.
    pub sends_key_id: bool,
    /// A `key_id` mismatch is enforced for plugins after 8.40.7.
    pub key_id_enforced: bool,
    /// Channels set with `setChannel` are kept on the device and sent as `defaultChannel`
    /// (5.34 / 6.34 / 7.34 / any 8.x); older plugins rely on a server-side override.
    pub local_channel_storage: bool,
    /// Plugin major 4 and older: not supported.
    pub unsupported: bool,
}

/// The features of a plugin version.
pub fn plugin_features(version: &Version) -> PluginFeatures {
    let at_least = |major: u64, minor: u64, patch: u64| {
        (version.major, version.minor, version.patch) >= (major, minor, patch)
    };
    // The minimum version of each major line that has a feature; majors above 8 have all.
    let line = |v5: (u64, u64, u64), v6: (u64, u64, u64), v7: (u64, u64, u64), v8: (u64, u64, u64)| {
        let min = match version.major {
            0..=4 => return false,
            5 => v5,
            6 => v6,
            7 => v7,
            8 => v8,
            _ => return true,
        };
        at_least(min.0, min.1, min.2)
    };
    PluginFeatures {
        manifest: line((5, 10, 0), (6, 25, 0), (7, 0, 35), (8, 0, 0)),
        revert_to_builtin: at_least(6, 2, 0),
        metadata: line((5, 35, 0), (6, 35, 0), (7, 35, 0), (8, 35, 0)),
        sha256_checksum: line((5, 10, 0), (6, 25, 0), (7, 0, 35), (8, 0, 0)),
        sends_key_id: at_least(8, 2, 0),
        key_id_enforced: at_least(8, 40, 8),
        local_channel_storage: line((5, 34, 0), (6, 34, 0), (7, 34, 0), (8, 0, 0)),
        unsupported: version.major <= 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn native_versions_are_coerced_like_capgo() {
        assert_eq!(coerce_native_version("1"), Some(v("1.0.0")));
        assert_eq!(coerce_native_version("1.2"), Some(v("1.2.0")));
        assert_eq!(coerce_native_version("1.2.3"), Some(v("1.2.3")));
        assert_eq!(coerce_native_version("v2.0.1"), Some(v("2.0.1")));
        assert_eq!(coerce_native_version("1.02"), Some(v("1.2.0")));
        assert_eq!(coerce_native_version("1.2-beta.1"), Some(v("1.2.0-beta.1")));
        assert_eq!(coerce_native_version("1.2.3+77"), Some(v("1.2.3+77")));
        for bad in ["", "builtin", "unknown", "1.2.3.4", "1..2", "a.b.c", "1.2.x"] {
            assert_eq!(coerce_native_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn manifest_support_follows_each_major_line() {
        for (version, expected) in [
            ("4.9.9", false),
            ("5.9.0", false),
            ("5.10.0", true),
            ("6.24.9", false),
            ("6.25.0", true),
            ("7.0.34", false),
            ("7.0.35", true),
            ("7.1.0", true),
            ("8.0.0", true),
            ("9.1.0", true),
        ] {
            assert_eq!(plugin_features(&v(version)).manifest, expected, "{version}");
            assert_eq!(
                plugin_features(&v(version)).sha256_checksum,
                expected,
                "{version}"
            );
        }
    }

    #[test]
    fn other_thresholds() {
        let f = |s| plugin_features(&v(s));
        assert!(
            !f("6.1.9").revert_to_builtin && f("6.2.0").revert_to_builtin && f("8.0.0").revert_to_builtin
        );
        assert!(!f("5.9.0").revert_to_builtin);
        assert!(
            !f("7.34.9").metadata && f("7.35.0").metadata && !f("8.34.0").metadata && f("8.35.0").metadata
        );
        assert!(!f("8.1.9").sends_key_id && f("8.2.0").sends_key_id);
        assert!(!f("8.40.7").key_id_enforced && f("8.40.8").key_id_enforced);
        assert!(!f("7.33.0").local_channel_storage && f("7.34.0").local_channel_storage);
        assert!(!f("5.9.0").local_channel_storage && f("8.0.0").local_channel_storage);
        assert!(f("4.17.48").unsupported && !f("5.0.0").unsupported);
    }
}
