//! The Bundle: one immutable version of an App's web assets.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{IMMUTABLE_RULE, OBJECT_NAME_RULE, SEMVER_RULE, SHA256_RULE, conditions_schema};

/// A Bundle is one version of an App's web assets (the zip the plugin downloads). Its version
/// and content are immutable: publish a new Bundle for a new version. The controller syncs it
/// into the App's storage and records what it found in status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ota.dev",
    version = "v1alpha1",
    kind = "Bundle",
    plural = "bundles",
    namespaced,
    status = "BundleStatus",
    derive = "PartialEq",
    shortname = "otabundle",
    category = "ota",
    doc = "A Bundle is one immutable version of an App's web assets.",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.appRef"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Synced\")].status"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".status.zipSize",
        description = "Bytes of the zip",
        priority = 1
    ),
    printcolumn(
        name = "Files",
        type_ = "integer",
        json_path = ".status.fileCount",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.encryption) || !has(self.source.manifestKey)")
    .message("an encrypted bundle needs its encrypted zip as source (url, storageKey or path), not source.manifestKey"))]
#[serde(rename_all = "camelCase")]
pub struct BundleSpec {
    /// The App this bundle belongs to (its name in this namespace). Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new(OBJECT_NAME_RULE).message("appRef must be the name of an App"),
        validation = Rule::new(IMMUTABLE_RULE).message("appRef is immutable")
    )]
    pub app_ref: String,

    /// The bundle's version, a semantic version (`1.4.3`, `2.0.0-beta.1`). Devices receive it as
    /// the bundle name and compare it with their current one. Immutable.
    #[schemars(length(min = 5, max = 128))]
    #[x_kube(
        validation = Rule::new(SEMVER_RULE).message("version must be a semantic version such as 1.4.3"),
        validation = Rule::new(IMMUTABLE_RULE).message("version is immutable: publish a new Bundle for a new version")
    )]
    pub version: String,

    /// Where the zip comes from.
    pub source: BundleSource,

    /// What native code the bundle needs from the app binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeCompatibility>,

    /// For a bundle encrypted with the plugin's v2 scheme: the data devices need to decrypt and
    /// verify it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<BundleEncryption>,

    /// A link sent to devices with the update (e.g. release notes), when the App exposes
    /// metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub link: Option<String>,

    /// A comment sent to devices with the update, when the App exposes metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
}

/// Exactly one source of the zip, and its SHA-256.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.url), has(self.storageKey), has(self.manifestKey), has(self.path)].filter(x, x).size() == 1")
    .message("source needs exactly one of url, storageKey, manifestKey or path"))]
#[serde(rename_all = "camelCase")]
pub struct BundleSource {
    /// An https URL of the zip (e.g. a CI artifact or a release asset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("source.url must be an https URL"))]
    pub url: Option<String>,

    /// The key of a zip already in the App's storage (relative to its prefix), e.g. one that
    /// `ota bundle push` uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('..')")
        .message("source.storageKey must be a relative key without '..'"))]
    pub storage_key: Option<String>,

    /// The key of a bundle's manifest in the App's storage (`manifests/<sha256>.json`), as
    /// `ota bundle push` stores it: the push uploads only the files storage lacks and this
    /// manifest, and the sync rebuilds the zip from those files (with the same zip writer) and
    /// verifies it against `sha256`. Not for encrypted bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 16, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('manifests/') && self.endsWith('.json') && !self.contains('..')")
        .message("source.manifestKey must be a key manifests/<sha256>.json without '..'"))]
    pub manifest_key: Option<String>,

    /// A zip on the local disk, relative to the folder the YAML is in. Standalone mode only: the
    /// controller reports such a Bundle as Stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,

    /// Lower-case hex SHA-256 of the zip exactly as fetched (the ciphertext for an encrypted
    /// bundle). The sync refuses bytes that do not match. Immutable.
    #[schemars(length(min = 64, max = 64))]
    #[x_kube(
        validation = Rule::new(SHA256_RULE).message("sha256 must be 64 lower-case hexadecimal characters"),
        validation = Rule::new(IMMUTABLE_RULE).message("sha256 is immutable: publish a new Bundle for new content")
    )]
    pub sha256: String,
}

/// The native side a bundle was built against. Channels refuse to send a bundle to a device
/// whose native build does not satisfy it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NativeCompatibility {
    /// The lowest native app version (`version_build`) that can run this bundle (semver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 128))]
    #[x_kube(validation = Rule::new(SEMVER_RULE).message("native.minVersion must be a semantic version such as 1.4.0"))]
    pub min_version: Option<String>,

    /// The packages with native code (Capacitor plugins and the like) and their versions, as
    /// in the package.json the bundle was built from. `ota bundle check` compares them with a
    /// released build's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub packages: Vec<NativePackage>,
}

/// A package with native code.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NativePackage {
    /// The npm package name (e.g. `@capacitor/camera`).
    #[schemars(length(min = 1, max = 214))]
    pub name: String,
    /// Its version (as resolved, e.g. `6.1.2`).
    #[schemars(length(min = 1, max = 128))]
    pub version: String,
}

/// Data of a bundle encrypted with the plugin's v2 scheme (AES-128-CBC zip, RSA-wrapped key).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BundleEncryption {
    /// `base64(iv):base64(RSA-encrypted AES key)`, sent to devices as `session_key`.
    #[schemars(length(min = 3, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9+/]+={0,2}:[A-Za-z0-9+/]+={0,2}$')")
        .message("sessionKey must be base64(iv):base64(encrypted key)"))]
    pub session_key: String,

    /// The SHA-256 of the plaintext zip, encrypted with the App's private key: hex (512
    /// characters, plugin 5.30 / 6.30 / 7.30 / 8.x and later) or base64 (older plugins). Sent to
    /// devices as `checksum`; it is the bundle's signature.
    #[schemars(length(min = 16, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-fA-F]+$') || self.matches('^[A-Za-z0-9+/]+={0,2}$')")
        .message("encryptedChecksum must be hex or base64"))]
    pub encrypted_checksum: String,
}

/// What the sync found and where it put the bundle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    /// Ready, Reconciling, Stalled and Synced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The checksum devices verify: SHA-256 hex of the zip (or the encrypted checksum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Bytes of the zip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip_size: Option<i64>,
    /// Bytes of all files once unzipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<i64>,
    /// Files in the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_count: Option<i64>,
    /// Where the bundle is in the App's storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<BundleStorageLocation>,
}

/// Storage keys of a synced bundle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleStorageLocation {
    /// Key of the full zip.
    pub zip_key: String,
    /// Key of the per-file manifest (file names, hashes and content-addressed keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_key: Option<String>,
    /// The Brotli variants of the bundle's files are stored, and `manifestKey` names the manifest
    /// that lists them (`manifests/<sha256>.br.json`). The bundle is served as soon as it is
    /// synced, with raw files until then; the controller makes the variants right after.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compressed_variants: bool,
}
