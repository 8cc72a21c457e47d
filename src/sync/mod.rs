//! Bundle sync: the one path by which a bundle's zip gets into an App's object storage.
//!
//! [`sync_bundle`] takes the zip from its source (an https URL, a local file or an object
//! already in the store), verifies its SHA-256, validates the archive (no path traversal,
//! symlinks, duplicates or zip bombs; `index.html` at the root or in one wrapping folder), computes
//! the per-file delta manifest and stores everything through [`object_store`], so that the
//! filesystem works now and S3, GCS or Azure plug in without changes here.
//!
//! Storage layout, relative to the App's key prefix (every key is content-addressed):
//!
//! - `zips/<sha256>.zip`: the zip exactly as fetched (`<sha256>` is its SHA-256);
//! - `files/<sha256>`: one file of a bundle, raw (`<sha256>` is the SHA-256 of its content);
//! - `files/<sha256>.br`: one file of a bundle, Brotli-compressed (`<sha256>` is still the hash
//!   of the original content); such a file is listed in a manifest with `.br` appended to its
//!   name. A file whose own name ends in `.br` is always stored this way, whatever its size,
//!   because the plugin Brotli-decodes every entry named `*.br`;
//! - `manifests/<sha256>.json`: the manifest of the zip `<sha256>`, a JSON array of
//!   `{"file_name", "file_hash", "key"}`, sorted by `file_name`, listing the raw files;
//! - `manifests/<sha256>.br.json`: the same manifest once the Brotli variants are made, naming
//!   the `.br` form of every file that has one.
//!
//! A sync has two steps. [`sync_bundle`] makes the bundle servable: one pass over the archive
//! (on every CPU) validates it, hashes each file and spools it to a temporary file, then the raw
//! files storage lacks, the zip and the manifest are stored. [`compress_variants`] then makes,
//! off the critical path, the Brotli variants of the files that shrink (files of at least
//! [`BROTLI_MIN_SIZE`] whose first bytes do not show a compressed format) and stores the second
//! manifest; until it is done, devices download raw files, which the plugin takes as well. It is
//! idempotent: a variant already in storage is not made again.
//!
//! A bundle encrypted with the plugin's v2 scheme goes through [`sync_encrypted_bundle`]: its zip
//! is verified and stored as is, with no files and no manifest (the server cannot decrypt it).
//!
//! Files shared by several bundles are stored once. Syncing the same bundle again uploads
//! nothing. The zip and every file go through temporary files (a local zip is read where it
//! is, and must not change before the sync is recorded), and the bytes held in memory are
//! capped, so memory stays bounded whatever the bundle's size (see
//! `benches/bundle_sync.rs`). Brotli runs at quality 6: the `brotli` crate's quality 9 needs a
//! 32 MiB hash table per encoder, for output 1 to 5 % smaller.

mod archive;
mod deterministic_zip;
mod encrypted;
mod error;
mod facts;
mod fetch;
mod fetched;
mod limits;
mod manifest;
mod objects;
mod pipeline;
mod rebuild;
mod remove;
mod request;
mod source;
mod variants;

pub use deterministic_zip::{DeterministicZip, entry_order};
pub use encrypted::{EncryptedFiles, store_encrypted_files, sync_encrypted_bundle};
pub use error::SyncError;
pub use limits::{BROTLI_MIN_SIZE, RATIO_CHECK_MIN_SIZE, SOURCE_IDLE_TIMEOUT, SyncLimits};
pub use manifest::read_manifest;
pub use pipeline::{sync_bundle, sync_bundle_files};
pub use remove::{RemoveError, remove_objects, stored_file_keys};
pub use request::{SyncRequest, SyncedBundle};
pub use source::{BundleSourceRef, SourceSpecError};
pub use variants::{CompressedVariants, already_compressed, compress_variants};

// The key layout lives in the pure `layout` leaf (the core reads it too); re-exported here,
// where the sync's callers have always found it.
pub use crate::layout::{
    ManifestFile, file_key, file_key_is_content_addressed, is_bundle_key, is_sha256_hex, manifest_key,
    object_path, variant_manifest_key, zip_key,
};
// For the submodules.
use self::{
    error::archive_task_failed,
    limits::{STORE_CONCURRENCY, workers},
    manifest::manifest_json,
};
use crate::error_chain::error_chain;
