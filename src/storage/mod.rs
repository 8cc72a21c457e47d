//! Object storage backends: opening an App's storage from its [`StorageSpec`], and the URLs
//! devices download bundles from.
//!
//! [`open`] turns a spec (filesystem, S3 or an S3-compatible service, Google Cloud Storage or
//! Azure Blob Storage) and its resolved [`Credentials`] into an [`OpenedStorage`]: an
//! [`ObjectStore`] that bundle sync ([`crate::sync`]) writes into, the key prefix every key is
//! relative to, and a [`Signer`] for presigned download URLs where the backend has one.
//!
//! [`StorageUrls`] is the [`BundleUrls`](crate::protocol::encode::BundleUrls) of one App: a
//! public/CDN base URL, presigned URLs (signed without waiting, cached), or the update server's
//! own `/files` route for filesystem storage.
//!
//! Credentials never show in logs, errors or `Debug` output: [`Credentials`] redacts itself,
//! messages from the backends are passed through [`Credentials::redact`], and validation errors
//! name the key, never its value.

mod credentials;
mod redacted;
mod urls;

use std::{
    fmt,
    path::{Path as FsPath, PathBuf},
    sync::Arc,
};

use object_store::{
    ClientOptions, ObjectStore, aws::AmazonS3Builder, azure::MicrosoftAzureBuilder,
    gcp::GoogleCloudStorageBuilder, local::LocalFileSystem, path::Path, signer::Signer,
};

use self::redacted::Redacted;
// Durations are a pure leaf (the core parses them too); re-exported where callers found them.
pub use self::{
    credentials::{
        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AZURE_STORAGE_ACCOUNT_KEY, Credentials,
        GOOGLE_SERVICE_ACCOUNT_KEY, KNOWN_KEYS,
    },
    urls::{MAX_PRESIGNED_URL_TTL, StorageUrls, UrlMode},
};
use crate::api::app::{AzureStorage, GcsStorage, S3Storage, StorageSpec};
pub use crate::duration::parse_duration;
use crate::error_chain::error_chain;

/// The kind of storage an App uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A folder on a local volume.
    Filesystem,
    /// Amazon S3 or an S3-compatible service.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

impl Backend {
    /// The name used in the spec, logs and errors: `filesystem`, `s3`, `gcs` or `azure`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Filesystem => "filesystem",
            Backend::S3 => "s3",
            Backend::Gcs => "gcs",
            Backend::Azure => "azure",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why storage could not be opened, checked or signed for. No variant ever holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The spec names no backend or more than one.
    #[error("storage needs exactly one of filesystem, s3, gcs or azure; {0} are set")]
    BackendCount(usize),
    /// `prefix` is not a clean relative key prefix.
    #[error("storage prefix {prefix:?} is invalid: {reason}")]
    InvalidPrefix {
        /// The prefix as written.
        prefix: String,
        /// What is wrong.
        reason: String,
    },
    /// The storage folder cannot be created or opened.
    #[error("cannot use the storage folder {}: {message}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A setting of the backend is invalid (endpoint, bucket, ...), or the backend's client
    /// refused the configuration.
    #[error("{backend} storage is misconfigured: {message}")]
    Config {
        /// The backend.
        backend: Backend,
        /// What is wrong (credentials redacted).
        message: String,
    },
    /// `credentialsSecretRef` names a Secret, but required keys are missing from it (or from the
    /// environment, in standalone mode).
    #[error(
        "{backend} storage: the credentials {source_name} lack {}; set {} there",
        missing.join(" and "),
        if missing.len() == 1 { "it" } else { "them" }
    )]
    MissingCredentials {
        /// The backend.
        backend: Backend,
        /// Where the credentials come from (`Secret <name>`).
        source_name: String,
        /// The missing keys.
        missing: Vec<&'static str>,
    },
    /// A credential has the wrong form (the message describes the form, never the value).
    #[error("{backend} storage: {key} is invalid: {reason}")]
    InvalidCredential {
        /// The backend.
        backend: Backend,
        /// The key name.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The service refused the credentials (HTTP 401 or 403: a wrong key, an expired token or
    /// missing permissions).
    #[error("{backend} storage refused the request ({action}): {message}")]
    Refused {
        /// The backend.
        backend: Backend,
        /// What was being done.
        action: &'static str,
        /// The service's answer (credentials redacted).
        message: String,
    },
    /// The service could not be reached or failed.
    #[error("{backend} storage is unavailable ({action}): {message}")]
    Unavailable {
        /// The backend.
        backend: Backend,
        /// What was being done.
        action: &'static str,
        /// What failed (credentials redacted).
        message: String,
    },
    /// `presignedUrlTtl` is not a usable duration.
    #[error("presignedUrlTtl {value:?} is invalid: {reason}")]
    InvalidTtl {
        /// The value as written.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// `publicBaseUrl` is not an http(s) URL.
    #[error("publicBaseUrl {value:?} is invalid: {reason}")]
    InvalidPublicBaseUrl {
        /// The value as written.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A storage key is not a clean relative key.
    #[error("invalid storage key {0:?}")]
    InvalidKey(String),
    /// The storage serves no presigned URLs (filesystem storage, or a public base URL is set).
    #[error("this storage does not serve presigned URLs")]
    NotPresigned,
    /// Signing a URL failed.
    #[error("cannot presign a URL for {key}: {message}")]
    Sign {
        /// The key (relative to the prefix).
        key: String,
        /// What failed (credentials redacted).
        message: String,
    },
}

/// An App's storage, ready for bundle sync and for serving.
#[derive(Clone)]
pub struct OpenedStorage {
    /// The object store (keys are full paths: the prefix, then the key).
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix (`storage.prefix` without its slashes; [`Path::ROOT`] when unset).
    pub prefix: Path,
    /// Presigns download URLs: S3, GCS and Azure have one, filesystem storage has none.
    pub signer: Option<Arc<dyn Signer>>,
    /// The backend.
    pub backend: Backend,
}

/// Shows the backend, the store (its `Display`: kind and bucket, never credentials) and the
/// prefix.
impl fmt::Debug for OpenedStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedStorage")
            .field("backend", &self.backend)
            .field("store", &format_args!("{}", self.store))
            .field("prefix", &self.prefix.as_ref())
            .field("signer", &self.signer.is_some())
            .finish()
    }
}

impl OpenedStorage {
    /// Checks that the storage answers and accepts the credentials, by listing one level under
    /// the prefix. A wrong key gives [`StorageError::Refused`].
    pub async fn check(&self) -> Result<(), StorageError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        match self.store.list_with_delimiter(prefix).await {
            Ok(_) => Ok(()),
            // A folder that holds nothing yet is fine.
            Err(object_store::Error::NotFound { .. }) if self.backend == Backend::Filesystem => Ok(()),
            Err(error) => Err(StorageError::from_store(self.backend, "list", &error, None)),
        }
    }
}

impl StorageError {
    /// Classifies an error of the store: [`StorageError::Refused`] for 401/403, else
    /// [`StorageError::Unavailable`]. The message is redacted with `credentials` when given.
    pub fn from_store(
        backend: Backend,
        action: &'static str,
        error: &object_store::Error,
        credentials: Option<&Credentials>,
    ) -> Self {
        let message = error_chain(error);
        let refused = matches!(
            error,
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
        ) || is_auth_failure(&message);
        let message = credentials.map_or(message.clone(), |c| c.redact(&message));
        if refused {
            StorageError::Refused {
                backend,
                action,
                message,
            }
        } else {
            StorageError::Unavailable {
                backend,
                action,
                message,
            }
        }
    }

    /// Whether the service refused the credentials.
    pub fn is_refusal(&self) -> bool {
        matches!(self, StorageError::Refused { .. })
    }
}

/// Whether an error message shows an authentication or authorisation failure.
///
/// object_store maps 401/403 to [`object_store::Error::PermissionDenied`] for some requests
/// only: most S3 errors (listing, multipart uploads) arrive as `Generic` errors whose text holds
/// the HTTP status and the service's error code, so those are recognised here.
fn is_auth_failure(message: &str) -> bool {
    const MARKERS: [&str; 10] = [
        "status code: 401",
        "status code: 403",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
    ];
    MARKERS.iter().any(|marker| message.contains(marker))
}

/// Opens an App's storage.
///
/// - filesystem: the folder `base_dir.join(path)` (created if missing);
/// - s3: `bucket` in `region`, at `endpoint` when set (plain `http://` endpoints are allowed),
///   path-style addressing when `forcePathStyle`, else virtual-hosted (`<bucket>.<endpoint
///   host>`); static keys from `credentials` (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
///   optional `AWS_SESSION_TOKEN`), else the default chain (web identity, container or instance
///   credentials, configured by the usual `AWS_*` variables of the process);
/// - gcs: `bucket` (at `endpoint` when set, plain `http://` allowed), with
///   `GOOGLE_SERVICE_ACCOUNT_KEY` when given, else application default credentials or the
///   metadata server (workload identity);
/// - azure: `account` and `container` (at `endpoint` when set), with
///   `AZURE_STORAGE_ACCOUNT_KEY` when given, else workload or managed identity.
///
/// When a backend names a `credentialsSecretRef`, its keys are required and their absence is an
/// error; without one, credentials that are present (e.g. from the environment) are used and
/// absent ones fall back to the workload's identity. Nothing here does network I/O: use
/// [`OpenedStorage::check`] to test the connection.
pub fn open(
    spec: &StorageSpec,
    base_dir: &FsPath,
    credentials: &Credentials,
) -> Result<OpenedStorage, StorageError> {
    let count = [
        spec.filesystem.is_some(),
        spec.s3.is_some(),
        spec.gcs.is_some(),
        spec.azure.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if count != 1 {
        return Err(StorageError::BackendCount(count));
    }
    let prefix = parse_prefix(spec.prefix.as_deref().unwrap_or_default())?;
    if let Some(filesystem) = &spec.filesystem {
        let folder = base_dir.join(&filesystem.path);
        std::fs::create_dir_all(&folder).map_err(|e| StorageError::Folder {
            path: folder.clone(),
            message: e.to_string(),
        })?;
        let store = LocalFileSystem::new_with_prefix(&folder).map_err(|e| StorageError::Folder {
            path: folder.clone(),
            message: error_chain(&e),
        })?;
        return Ok(OpenedStorage {
            store: Arc::new(store),
            prefix,
            signer: None,
            backend: Backend::Filesystem,
        });
    }
    if let Some(s3) = &spec.s3 {
        return Ok(cloud(open_s3(s3, credentials)?, prefix, Backend::S3));
    }
    if let Some(gcs) = &spec.gcs {
        return Ok(cloud(open_gcs(gcs, credentials)?, prefix, Backend::Gcs));
    }
    if let Some(azure) = &spec.azure {
        return Ok(cloud(open_azure(azure, credentials)?, prefix, Backend::Azure));
    }
    Err(StorageError::BackendCount(0))
}

/// The `Cache-Control` of content-addressed objects: they never change, and proxies must not
/// re-encode them (`.br` files reach the device compressed, as the plugin expects).
pub const IMMUTABLE_CACHE_CONTROL: &str = "public, max-age=31536000, immutable, no-transform";
/// The `Cache-Control` of any other object served to devices.
pub const NO_TRANSFORM_CACHE_CONTROL: &str = "no-transform";

/// The SHA-256 a content-addressed key names (`files/<sha>`, `files/<sha>.br`, `zips/<sha>.zip`).
/// Not a manifest's key: it names its bundle's zip, and the sync may rewrite it (new variants,
/// an encrypted bundle's files sealed again).
pub fn content_hash(key: &str) -> Option<&str> {
    if key.starts_with("manifests/") || key.contains("/manifests/") {
        return None;
    }
    let name = key.rsplit('/').next()?;
    let hash = name.split('.').next()?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// The `Cache-Control` a device should get for the object at `key`.
pub fn cache_control_for(key: &str) -> &'static str {
    match content_hash(key) {
        Some(_) => IMMUTABLE_CACHE_CONTROL,
        None => NO_TRANSFORM_CACHE_CONTROL,
    }
}

/// A cloud store that is also its signer, behind [`Redacted`] so that `Debug` shows no key.
fn cloud<T: ObjectStore + Signer>(store: T, prefix: Path, backend: Backend) -> OpenedStorage {
    let store = Arc::new(Redacted(store));
    OpenedStorage {
        store: store.clone(),
        prefix,
        signer: Some(store),
        backend,
    }
}

/// `storage.prefix` as a store path: slashes at either end are ignored; empty means the root.
pub fn parse_prefix(prefix: &str) -> Result<Path, StorageError> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Path::ROOT);
    }
    let invalid = |reason: String| StorageError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    if trimmed.contains('\\') {
        return Err(invalid("it contains a backslash".to_owned()));
    }
    Path::parse(trimmed).map_err(|e| invalid(e.to_string()))
}

/// The required keys missing from `credentials` when the backend names a Secret.
fn require(
    backend: Backend,
    secret: Option<&crate::api::common::SecretReference>,
    credentials: &Credentials,
    keys: &[&'static str],
) -> Result<(), StorageError> {
    let Some(secret) = secret else { return Ok(()) };
    let missing: Vec<&'static str> = keys
        .iter()
        .copied()
        .filter(|key| credentials.get(key).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StorageError::MissingCredentials {
            backend,
            source_name: format!("Secret {}", secret.name),
            missing,
        })
    }
}

/// A configuration error of a backend's client, redacted.
fn config_error(backend: Backend, error: &object_store::Error, credentials: &Credentials) -> StorageError {
    StorageError::Config {
        backend,
        message: credentials.redact(&error_chain(error)),
    }
}

/// An endpoint URL: http or https, with a host, and whether it is plain http.
fn parse_endpoint(backend: Backend, endpoint: &str) -> Result<(url::Url, bool), StorageError> {
    let invalid = |reason: &str| StorageError::Config {
        backend,
        message: format!("endpoint {endpoint:?} {reason}"),
    };
    let url = url::Url::parse(endpoint).map_err(|e| invalid(&format!("is not a URL: {e}")))?;
    let http = match url.scheme() {
        "http" => true,
        "https" => false,
        _ => return Err(invalid("must be an http(s) URL")),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Do not echo the endpoint: it carries a password.
        return Err(StorageError::Config {
            backend,
            message: "the endpoint must not carry a user name or password; use credentialsSecretRef"
                .to_owned(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok((url, http))
}

/// How long a request to object storage is retried by the client, at most. A request that gets
/// no answer still fails at the client's own timeout (30 s, object_store's default), then is not
/// tried again: the Bundle's own retry schedule (5 s doubling to 5 min) takes over, so an
/// unreachable storage is reported as such within about 30 s, not after object_store's default
/// of 3 minutes of retries.
const REQUEST_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The retries of every object-storage client: object_store's backoff and count, within
/// [`REQUEST_RETRY_TIMEOUT`].
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        retry_timeout: REQUEST_RETRY_TIMEOUT,
        ..object_store::RetryConfig::default()
    }
}

/// Environment variables of the AWS default credential chain that `AmazonS3Builder` reads as
/// configuration (only these: the spec, not the environment, decides bucket and endpoint).
const AWS_CHAIN_ENV: [&str; 8] = [
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
];

fn open_s3(spec: &S3Storage, credentials: &Credentials) -> Result<object_store::aws::AmazonS3, StorageError> {
    let backend = Backend::S3;
    require(
        backend,
        spec.credentials_secret_ref.as_ref(),
        credentials,
        &[AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY],
    )?;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&spec.bucket)
        .with_region(&spec.region)
        .with_virtual_hosted_style_request(!spec.force_path_style);
    if let Some(endpoint) = &spec.endpoint {
        let (mut url, http) = parse_endpoint(backend, endpoint)?;
        if !spec.force_path_style {
            // Virtual-hosted style: object_store expects the bucket's own endpoint.
            let host = url.host_str().unwrap_or_default().to_owned();
            let is_ip = host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[');
            if is_ip || host == "localhost" {
                return Err(StorageError::Config {
                    backend,
                    message: format!(
                        "endpoint {endpoint:?} cannot address buckets by virtual host; set forcePathStyle: true"
                    ),
                });
            }
            url.set_host(Some(&format!("{}.{host}", spec.bucket)))
                .map_err(|e| StorageError::Config {
                    backend,
                    message: format!("bucket {:?} cannot be a host name: {e}", spec.bucket),
                })?;
        }
        builder = builder
            .with_endpoint(url.as_str().trim_end_matches('/'))
            .with_allow_http(http);
    }
    match (
        credentials.get(AWS_ACCESS_KEY_ID),
        credentials.get(AWS_SECRET_ACCESS_KEY),
    ) {
        (Some(key_id), Some(secret)) => {
            builder = builder.with_access_key_id(key_id).with_secret_access_key(secret);
            if let Some(token) = credentials.get(AWS_SESSION_TOKEN) {
                builder = builder.with_token(token);
            }
        }
        (None, None) => {
            for name in AWS_CHAIN_ENV {
                if let Ok(value) = std::env::var(name)
                    && !value.is_empty()
                    && let Ok(key) = name.to_ascii_lowercase().parse()
                {
                    builder = builder.with_config(key, value);
                }
            }
        }
        (key_id, _) => {
            return Err(StorageError::MissingCredentials {
                backend,
                source_name: spec.credentials_secret_ref.as_ref().map_or_else(
                    || "in the environment".to_owned(),
                    |secret| format!("Secret {}", secret.name),
                ),
                missing: vec![if key_id.is_none() {
                    AWS_ACCESS_KEY_ID
                } else {
                    AWS_SECRET_ACCESS_KEY
                }],
            });
        }
    }
    builder
        .with_retry(retry_config())
        .build()
        .map_err(|e| config_error(backend, &e, credentials))
}

fn open_gcs(
    spec: &GcsStorage,
    credentials: &Credentials,
) -> Result<object_store::gcp::GoogleCloudStorage, StorageError> {
    let backend = Backend::Gcs;
    require(
        backend,
        spec.credentials_secret_ref.as_ref(),
        credentials,
        &[GOOGLE_SERVICE_ACCOUNT_KEY],
    )?;
    let mut builder = GoogleCloudStorageBuilder::new().with_bucket_name(&spec.bucket);
    if let Some(endpoint) = &spec.endpoint {
        let (url, http) = parse_endpoint(backend, endpoint)?;
        builder = builder
            .with_base_url(url.as_str().trim_end_matches('/'))
            .with_client_options(ClientOptions::new().with_allow_http(http));
    }
    match credentials.get(GOOGLE_SERVICE_ACCOUNT_KEY) {
        Some(key) => {
            check_service_account_key(key)?;
            builder = builder.with_service_account_key(key);
        }
        None => {
            if let Ok(path) = std::env::var("GOOGLE_APPLICATION_CREDENTIALS")
                && !path.is_empty()
            {
                builder = builder.with_application_credentials(path);
            }
        }
    }
    builder
        .with_retry(retry_config())
        .build()
        .map_err(|e| config_error(backend, &e, credentials))
}

/// Checks the shape of a service-account JSON key without echoing any of it.
fn check_service_account_key(key: &str) -> Result<(), StorageError> {
    let invalid = |reason: String| StorageError::InvalidCredential {
        backend: Backend::Gcs,
        key: GOOGLE_SERVICE_ACCOUNT_KEY,
        reason,
    };
    // serde_json's syntax errors give a line and column only, never the text.
    let value: serde_json::Value = serde_json::from_str(key).map_err(|e| {
        invalid(format!(
            "not a JSON service-account key (syntax error at line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| invalid("not a JSON object".to_owned()))?;
    for field in ["private_key", "client_email"] {
        if !object.get(field).is_some_and(serde_json::Value::is_string) {
            return Err(invalid(format!(
                "a service-account key needs a string field {field}"
            )));
        }
    }
    Ok(())
}

/// Environment variables of Azure workload identity that `MicrosoftAzureBuilder` reads.
const AZURE_CHAIN_ENV: [&str; 4] = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
];

fn open_azure(
    spec: &AzureStorage,
    credentials: &Credentials,
) -> Result<object_store::azure::MicrosoftAzure, StorageError> {
    let backend = Backend::Azure;
    require(
        backend,
        spec.credentials_secret_ref.as_ref(),
        credentials,
        &[AZURE_STORAGE_ACCOUNT_KEY],
    )?;
    let mut builder = MicrosoftAzureBuilder::new()
        .with_account(&spec.account)
        .with_container_name(&spec.container);
    if let Some(endpoint) = &spec.endpoint {
        let (url, http) = parse_endpoint(backend, endpoint)?;
        builder = builder
            .with_endpoint(url.as_str().trim_end_matches('/').to_owned())
            .with_allow_http(http);
    }
    match credentials.get(AZURE_STORAGE_ACCOUNT_KEY) {
        Some(key) => {
            if !is_base64(key.trim()) {
                return Err(StorageError::InvalidCredential {
                    backend,
                    key: AZURE_STORAGE_ACCOUNT_KEY,
                    reason: "an account key is base64 (as the Azure portal shows it)".to_owned(),
                });
            }
            builder = builder.with_access_key(key.trim());
        }
        None => {
            for name in AZURE_CHAIN_ENV {
                if let Ok(value) = std::env::var(name)
                    && !value.is_empty()
                    && let Ok(key) = name.to_ascii_lowercase().parse()
                {
                    builder = builder.with_config(key, value);
                }
            }
        }
    }
    builder
        .with_retry(retry_config())
        .build()
        .map_err(|e| config_error(backend, &e, credentials))
}

/// Whether `text` is standard base64 with padding (what Azure account keys are).
fn is_base64(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    !text.is_empty()
        && text.len().is_multiple_of(4)
        && text.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::{
        app::{FilesystemStorage, S3Storage},
        common::SecretReference,
    };

    fn spec() -> StorageSpec {
        StorageSpec::default()
    }

    fn s3(endpoint: Option<&str>, force_path_style: bool) -> StorageSpec {
        StorageSpec {
            s3: Some(S3Storage {
                bucket: "bundles".to_owned(),
                region: "us-east-1".to_owned(),
                endpoint: endpoint.map(str::to_owned),
                force_path_style,
                credentials_secret_ref: Some(SecretReference {
                    name: "s3-keys".to_owned(),
                }),
            }),
            ..spec()
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> Credentials {
        Credentials::from_map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn prefixes_are_trimmed_and_checked() {
        assert_eq!(parse_prefix("").unwrap(), Path::ROOT);
        assert_eq!(parse_prefix("/").unwrap(), Path::ROOT);
        assert_eq!(
            parse_prefix("/apps/com.example.app/").unwrap().as_ref(),
            "apps/com.example.app"
        );
        for bad in ["a//b", "a/../b", "a\\b", "./a"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exactly_one_backend() {
        let error = open(&spec(), FsPath::new("/tmp"), &Credentials::none()).unwrap_err();
        assert!(matches!(error, StorageError::BackendCount(0)), "{error}");
        let mut both = s3(None, false);
        both.filesystem = Some(FilesystemStorage {
            path: "x".to_owned(),
            persistent_volume_claim: None,
        });
        let error = open(&both, FsPath::new("/tmp"), &Credentials::none()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "storage needs exactly one of filesystem, s3, gcs or azure; 2 are set"
        );
    }

    #[test]
    fn a_named_secret_must_hold_the_keys() {
        let error = open(&s3(None, false), FsPath::new("/"), &Credentials::none()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "s3 storage: the credentials Secret s3-keys lack AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; set them there"
        );
        let error = open(
            &s3(None, false),
            FsPath::new("/"),
            &keys(&[(AWS_ACCESS_KEY_ID, "AK")]),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("lack AWS_SECRET_ACCESS_KEY; set it there"),
            "{error}"
        );
    }

    #[test]
    fn half_a_key_pair_from_the_environment_is_an_error() {
        let mut spec = s3(None, false);
        spec.s3.as_mut().unwrap().credentials_secret_ref = None;
        let error = open(
            &spec,
            FsPath::new("/"),
            &keys(&[(AWS_SECRET_ACCESS_KEY, "very-secret-value")]),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("lack AWS_ACCESS_KEY_ID"), "{text}");
        assert!(!text.contains("very-secret-value"), "{text}");
    }

    #[test]
    fn s3_endpoints() {
        let credentials = keys(&[(AWS_ACCESS_KEY_ID, "AK"), (AWS_SECRET_ACCESS_KEY, "SK")]);
        let opened = open(
            &s3(Some("http://127.0.0.1:9000"), true),
            FsPath::new("/"),
            &credentials,
        )
        .unwrap();
        assert_eq!(opened.backend, Backend::S3);
        assert!(opened.signer.is_some());
        let error = open(
            &s3(Some("http://127.0.0.1:9000"), false),
            FsPath::new("/"),
            &credentials,
        )
        .unwrap_err();
        assert!(error.to_string().contains("set forcePathStyle: true"), "{error}");
        let error = open(&s3(Some("ftp://x"), true), FsPath::new("/"), &credentials).unwrap_err();
        assert!(error.to_string().contains("must be an http(s) URL"), "{error}");
        let error = open(
            &s3(Some("https://user:hunter22@example.com"), true),
            FsPath::new("/"),
            &credentials,
        )
        .unwrap_err();
        assert!(!error.to_string().contains("hunter22"), "{error}");
        open(
            &s3(Some("https://s3.example.com"), false),
            FsPath::new("/"),
            &credentials,
        )
        .unwrap();
    }

    #[test]
    fn s3_addressing_styles_show_in_presigned_urls() {
        let credentials = keys(&[(AWS_ACCESS_KEY_ID, "AK"), (AWS_SECRET_ACCESS_KEY, "SK")]);
        for (endpoint, path_style, expected) in [
            (
                None,
                false,
                "https://bundles.s3.us-east-1.amazonaws.com/apps/x/zips/a.zip?",
            ),
            (
                None,
                true,
                "https://s3.us-east-1.amazonaws.com/bundles/apps/x/zips/a.zip?",
            ),
            (
                Some("https://s3.example.com/"),
                false,
                "https://bundles.s3.example.com/apps/x/zips/a.zip?",
            ),
            (
                Some("http://minio:9000"),
                true,
                "http://minio:9000/bundles/apps/x/zips/a.zip?",
            ),
        ] {
            let mut spec = s3(endpoint, path_style);
            spec.prefix = Some("apps/x".to_owned());
            let opened = open(&spec, FsPath::new("/"), &credentials).unwrap();
            let urls = StorageUrls::new(&spec, &opened, "http://server").unwrap();
            let url = urls.url("app.id", "zips/a.zip");
            assert!(url.starts_with(expected), "{endpoint:?} {path_style}: {url}");
            assert!(url.contains("X-Amz-Credential=AK%2F"), "{url}");
        }
    }

    #[test]
    fn debug_of_an_opened_store_hides_the_keys() {
        let credentials = keys(&[
            (AWS_ACCESS_KEY_ID, "AKIDEXAMPLE"),
            (AWS_SECRET_ACCESS_KEY, "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"),
            (AWS_SESSION_TOKEN, "session-token-value-123"),
        ]);
        let opened = open(&s3(None, false), FsPath::new("/"), &credentials).unwrap();
        let text = format!("{opened:?} {:?}", opened.store);
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        assert!(!text.contains("session-token-value"), "{text}");
    }

    #[test]
    fn base64_check() {
        assert!(is_base64("QUJD"));
        assert!(is_base64("QUI="));
        assert!(is_base64("QQ=="));
        assert!(!is_base64("QQ="));
        assert!(!is_base64("Q==="));
        assert!(!is_base64("not base64!"));
        assert!(!is_base64(""));
    }
}
