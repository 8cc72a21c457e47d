//! What a sync is asked to do, and what a successful one found and stored.

use std::sync::Arc;

use object_store::{ObjectStore, path::Path};

use super::{BundleSourceRef, CompressedVariants, SyncLimits};
use crate::layout::ManifestFile;

/// One bundle to sync.
#[derive(Debug, Clone, Copy)]
pub struct SyncRequest<'a> {
    /// Where the zip comes from.
    pub source: &'a BundleSourceRef,
    /// Lower-case hex SHA-256 the zip must have.
    pub expected_sha256: &'a str,
    /// The App's object storage.
    pub store: &'a Arc<dyn ObjectStore>,
    /// The App's key prefix in that storage (every key is relative to it).
    pub prefix: &'a Path,
    /// Limits on the zip.
    pub limits: &'a SyncLimits,
    /// The HTTP client for URL sources (its timeouts, proxy and TLS settings apply).
    pub http: &'a reqwest::Client,
}

/// What a successful sync found and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedBundle {
    /// Lower-case hex SHA-256 of the zip.
    pub sha256: String,
    /// Bytes of the zip.
    pub zip_size: u64,
    /// Bytes of the bundle's files once decompressed.
    pub uncompressed_size: u64,
    /// Files in the bundle (entries of the manifest).
    pub file_count: u64,
    /// Key of the zip, relative to the prefix (`zips/<sha256>.zip`).
    pub zip_key: String,
    /// Key of the manifest, relative to the prefix (`manifests/<sha256>.json`).
    pub manifest_key: String,
    /// The manifest, sorted by file name (keys relative to the prefix).
    pub manifest: Vec<ManifestFile>,
    /// Distinct file contents this sync uploaded.
    pub uploaded_files: u64,
    /// Distinct file contents that were already in the store.
    pub reused_files: u64,
    /// The zip is encrypted with the plugin's v2 scheme ([`sync_encrypted_bundle`]): the zip is
    /// stored as is, and `uncompressed_size` is 0 (unknown). Its delta files and manifest are
    /// there only when who encrypted it stored them; otherwise `manifest_key` is empty,
    /// `manifest` too and `file_count` 0, and devices get the zip whole.
    pub encrypted: bool,
    /// The Brotli variants are made ([`compress_variants`]): `manifest_key` is
    /// `manifests/<sha256>.br.json` and `manifest` names the `.br` form of the files that have
    /// one. False after [`sync_bundle`].
    pub compressed_variants: bool,
}

impl SyncedBundle {
    /// The manifest's key, when a manifest was stored (an encrypted bundle has one only when
    /// its delta files were stored with it).
    pub fn stored_manifest_key(&self) -> Option<&str> {
        (!self.manifest_key.is_empty()).then_some(self.manifest_key.as_str())
    }

    /// The bundle once [`compress_variants`] made its Brotli variants.
    pub fn with_variants(self, variants: CompressedVariants) -> SyncedBundle {
        SyncedBundle {
            manifest_key: variants.manifest_key,
            manifest: variants.manifest,
            compressed_variants: true,
            ..self
        }
    }
}
