//! Where a bundle's zip comes from, as a Bundle's spec names it.

use std::{fmt, path::PathBuf};

use super::fetch;

/// Where a bundle's zip comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSourceRef {
    /// An https URL (plain http only when [`SyncLimits::allow_http`] is set).
    Url(url::Url),
    /// A file on the local filesystem.
    File(PathBuf),
    /// An object already in the store, by its key relative to the prefix.
    StorageKey(String),
    /// A bundle pushed as files (`ota bundle push`): the key of its manifest in the store; the
    /// zip is rebuilt from the files it lists with [`DeterministicZip`].
    Manifest(String),
}

/// Why a Bundle's `source` names no usable source (the Bundle is Stalled until it changes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceSpecError {
    /// `source.url` does not parse.
    #[error("source.url {url:?} is not a URL: {reason}")]
    NotAUrl {
        /// The value given.
        url: String,
        /// Why it does not parse.
        reason: url::ParseError,
    },
    /// `source.path` in a cluster, where a server's disk is no place for bundles.
    #[error(
        "source.path names a file on a standalone server's disk; in a cluster use source.url, \
         source.storageKey or source.manifestKey"
    )]
    LocalPathInCluster,
    /// None, or more than one, of the kinds.
    #[error("source needs exactly one of url, storageKey, manifestKey or path")]
    NotExactlyOne,
}

impl BundleSourceRef {
    /// The source a Bundle's spec names. `local_folder`: where a relative `source.path` is
    /// resolved (standalone mode); `None` in a cluster, where a path on a server's disk is
    /// refused.
    pub fn of(
        source: &crate::api::bundle::BundleSource,
        local_folder: Option<&std::path::Path>,
    ) -> Result<BundleSourceRef, SourceSpecError> {
        match (
            &source.url,
            &source.storage_key,
            &source.manifest_key,
            &source.path,
        ) {
            (Some(url), None, None, None) => {
                url::Url::parse(url)
                    .map(BundleSourceRef::Url)
                    .map_err(|reason| SourceSpecError::NotAUrl {
                        url: url.clone(),
                        reason,
                    })
            }
            (None, Some(key), None, None) => Ok(BundleSourceRef::StorageKey(key.clone())),
            (None, None, Some(key), None) => Ok(BundleSourceRef::Manifest(key.clone())),
            (None, None, None, Some(path)) => match local_folder {
                Some(folder) => Ok(BundleSourceRef::File(folder.join(path))),
                None => Err(SourceSpecError::LocalPathInCluster),
            },
            _ => Err(SourceSpecError::NotExactlyOne),
        }
    }

    /// A short name of the kind of source, for logs: `url`, `file` or `storage`.
    pub fn kind(&self) -> &'static str {
        match self {
            BundleSourceRef::Url(_) => "url",
            BundleSourceRef::File(_) => "file",
            BundleSourceRef::StorageKey(_) => "storage",
            BundleSourceRef::Manifest(_) => "manifest",
        }
    }
}

/// Shows the source for logs and errors. A URL loses its query string and fragment, which may
/// hold credentials (pre-signed URLs).
impl fmt::Display for BundleSourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleSourceRef::Url(url) => f.write_str(&fetch::redact_url(url)),
            BundleSourceRef::File(path) => write!(f, "file {}", path.display()),
            BundleSourceRef::StorageKey(key) => write!(f, "storage key {key}"),
            BundleSourceRef::Manifest(key) => write!(f, "manifest {key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundles_source_is_exactly_one_kind_and_a_local_path_only_outside_a_cluster() {
        let source = |value: serde_json::Value| -> crate::api::bundle::BundleSource {
            serde_json::from_value(value).expect("a source")
        };
        let sha = "a".repeat(64);
        let folder = std::path::Path::new("/srv/bundles");
        assert!(matches!(
            BundleSourceRef::of(
                &source(serde_json::json!({"url": "https://ci.example.com/b.zip", "sha256": sha})),
                None
            ),
            Ok(BundleSourceRef::Url(_))
        ));
        assert!(matches!(
            BundleSourceRef::of(&source(serde_json::json!({"manifestKey": "manifests/x.json", "sha256": sha})), None),
            Ok(BundleSourceRef::Manifest(key)) if key == "manifests/x.json"
        ));
        let local = source(serde_json::json!({"path": "b.zip", "sha256": sha}));
        assert!(matches!(
            BundleSourceRef::of(&local, Some(folder)),
            Ok(BundleSourceRef::File(path)) if path == folder.join("b.zip")
        ));
        let refused = BundleSourceRef::of(&local, None).expect_err("no local files in a cluster");
        assert!(
            refused.to_string().contains("in a cluster use source.url"),
            "{refused}"
        );
        let bad_url = BundleSourceRef::of(
            &source(serde_json::json!({"url": "not a url", "sha256": sha})),
            None,
        )
        .expect_err("not a URL");
        assert!(bad_url.to_string().contains("is not a URL"), "{bad_url}");
        let two =
            source(serde_json::json!({"url": "https://a.example/b.zip", "storageKey": "k", "sha256": sha}));
        let error = BundleSourceRef::of(&two, Some(folder)).expect_err("two kinds");
        assert_eq!(error, SourceSpecError::NotExactlyOne);
    }
}
