//! `ota bundle`: zip, encrypt, check and push bundles from CI.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::{Args, Subcommand, ValueEnum};
use object_store::ObjectStore;

use super::{
    CliError, EXIT_CODES_HELP, chain, dist, emit,
    native::{self, NativeChange},
    progress::{self, Counters, CountingStore, Progress},
    read_text, yaml,
};
use crate::{
    api::{
        Bundle,
        app::{AzureStorage, FilesystemStorage, GcsStorage, S3Storage, StorageSpec},
        bundle::{BundleEncryption, BundleSource, BundleSpec, NativeCompatibility, NativePackage},
        constants::API_VERSION,
    },
    crypto::{self, ChecksumFormat, SigningKey},
    storage::{self, Credentials, StorageError},
    sync::{self, BundleSourceRef, SyncError, SyncLimits, SyncRequest},
};

/// `ota bundle` subcommands.
#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Zip a web build folder exactly as the plugin takes it and print its sha256.
    ///
    /// The folder's contents go at the zip's root (index.html must be there), in name order,
    /// with fixed timestamps and permissions: the same files always give the same zip and sha256,
    /// which is what the plugin verifies after downloading.
    #[command(after_help = EXIT_CODES_HELP)]
    Zip(ZipArgs),
    /// Zip, (optionally) encrypt, upload into the App's storage, and write the Bundle YAML.
    ///
    /// The zip is built locally to learn its sha256, but only the bundle's files that the storage
    /// lacks (each in its Brotli form when that is smaller) and its manifest are uploaded (the
    /// same sync the operator runs): a one-file change uploads that file and the manifest. The Bundle YAML names the manifest (source.manifestKey
    /// and sha256) and the operator rebuilds the zip from the stored files with the same zip
    /// writer, so push with the ota version the operator runs (or a compatible one). With
    /// --upload-zip, and always with --encrypt, the whole zip is uploaded as well and the Bundle
    /// names it (source.storageKey). The YAML (plus spec.encryption when encrypted) goes to
    /// standard output or --out, ready to commit to the GitOps repository.
    ///
    /// With --channel C, a Channel patch follows: a partial Channel named C whose only field is
    /// spec.bundleRef: the new Bundle. Commit it as a kustomize patch, or apply it with
    /// `kubectl apply --server-side --field-manager=ota-cli -f FILE` (it changes nothing else of
    /// the Channel). It goes to --channel-out, or to standard output after the Bundle (as a
    /// second YAML document).
    ///
    /// Storage: a folder (the App's storage.filesystem.path), s3://BUCKET[/PREFIX],
    /// gs://BUCKET[/PREFIX] or azure://ACCOUNT/CONTAINER[/PREFIX], where PREFIX is the App's
    /// storage.prefix. Credentials come from the environment only (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, GOOGLE_SERVICE_ACCOUNT_KEY,
    /// AZURE_STORAGE_ACCOUNT_KEY, or the platform's default chain) and are never printed.
    #[command(after_help = EXIT_CODES_HELP)]
    Push(Box<PushArgs>),
    /// Fail when native code changed since a released app build.
    ///
    /// Compares the native dependencies of the project (the Capacitor and Cordova plugins and
    /// Capacitor's platform packages in its package.json, with their installed versions) with
    /// those of a released build: a Bundle YAML (its spec.native.packages, as `ota bundle push
    /// --package-json` records them) or that build's package.json. A live update cannot change
    /// native code, so any package added, removed or at another version means a store release
    /// is needed: the list goes to standard output and the exit code is 4.
    #[command(after_help = EXIT_CODES_HELP)]
    Check(CheckArgs),
    /// Encrypt a bundle zip with the App's private key (the plugin's v2 scheme).
    ///
    /// Writes the encrypted zip and prints its sha256 and the Bundle's spec.encryption
    /// (sessionKey and encryptedChecksum) as YAML.
    #[command(after_help = EXIT_CODES_HELP)]
    Encrypt(EncryptArgs),
}

/// `ota bundle zip`.
#[derive(Args, Debug)]
pub struct ZipArgs {
    /// The web build folder (with index.html at its root), e.g. dist or www.
    #[arg(value_name = "DIST")]
    dist: PathBuf,
    /// Where to write the zip [default: bundle.zip].
    #[arg(long, value_name = "FILE", default_value = "bundle.zip")]
    out: PathBuf,
}

/// `ota bundle push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The web build folder (with index.html at its root).
    #[arg(value_name = "DIST")]
    dist: PathBuf,
    /// The App's name (its metadata.name): the Bundle's spec.appRef.
    #[arg(long, value_name = "NAME")]
    app: String,
    /// The bundle's version (semver, e.g. 1.4.3): what devices receive.
    #[arg(long, value_name = "VERSION")]
    version: String,
    /// The Bundle's name [default: APP-VERSION].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The Bundle's (and Channel patch's) namespace [default: none, kubectl's current one].
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Also write a Channel patch pointing this Channel at the new Bundle.
    #[arg(long, value_name = "CHANNEL")]
    channel: Option<String>,
    /// Encrypt and sign with this private key (PEM file, e.g. .capgo_key_v2). The encrypted zip
    /// is uploaded whole (only devices can decrypt it, so the operator cannot rebuild it).
    #[arg(long, value_name = "PRIVATE_KEY")]
    encrypt: Option<PathBuf>,
    /// Also upload the whole zip, and name it in the Bundle (source.storageKey) instead of the
    /// manifest: the operator then syncs the zip as uploaded, whatever its ota version.
    #[arg(long)]
    upload_zip: bool,
    /// The encrypted checksum's format: hex for plugin 5.30 / 6.30 / 7.30 / 8.x and later,
    /// base64 for older plugins.
    #[arg(long, value_enum, default_value_t = Format::Hex, requires = "encrypt")]
    checksum_format: Format,
    /// Record the project's native packages (from this package.json) in spec.native.packages,
    /// for `ota bundle check`.
    #[arg(long, value_name = "FILE")]
    package_json: Option<PathBuf>,
    /// The lowest native app version that can run this bundle (spec.native.minVersion).
    #[arg(long, value_name = "VERSION")]
    min_native_version: Option<String>,
    /// A release-notes link sent to devices (spec.link).
    #[arg(long, value_name = "URL")]
    link: Option<String>,
    /// A comment sent to devices (spec.comment).
    #[arg(long, value_name = "TEXT")]
    comment: Option<String>,
    /// Write the Bundle YAML here instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the Channel patch here instead of standard output.
    #[arg(long, value_name = "FILE", requires = "channel")]
    channel_out: Option<PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
}

/// Where `ota bundle push` uploads.
#[derive(Args, Debug)]
struct StorageArgs {
    /// DIR, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or azure://ACCOUNT/CONTAINER[/PREFIX].
    #[arg(long, value_name = "LOCATION")]
    storage: String,
    /// Endpoint of an S3-compatible service (e.g. https://minio.example.com:9000).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// The S3 region.
    #[arg(long, value_name = "REGION", env = "AWS_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// Address buckets by path (https://host/bucket/key), as most S3-compatible services need.
    #[arg(long)]
    s3_path_style: bool,
    /// Endpoint of Azure Blob Storage (e.g. an Azurite emulator).
    #[arg(long, value_name = "URL")]
    azure_endpoint: Option<String>,
    /// Seconds to wait for the storage to answer the first request.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    storage_timeout: u64,
}

/// `ota bundle check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The web build folder; its project's package.json is the nearest one in or above it.
    #[arg(value_name = "DIST")]
    dist: PathBuf,
    /// The released build: a Bundle YAML file or that build's package.json.
    #[arg(long, value_name = "BUNDLE_YAML_OR_PACKAGE_JSON")]
    against: PathBuf,
    /// The project's package.json, when it is not in or above DIST.
    #[arg(long, value_name = "FILE")]
    package_json: Option<PathBuf>,
}

/// `ota bundle encrypt`.
#[derive(Args, Debug)]
pub struct EncryptArgs {
    /// The zip to encrypt.
    #[arg(value_name = "ZIP")]
    zip: PathBuf,
    /// The App's private key (PEM file, e.g. .capgo_key_v2).
    #[arg(long, value_name = "PRIVATE_KEY")]
    key: PathBuf,
    /// Where to write the encrypted zip [default: ZIP with .enc appended].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The encrypted checksum's format: hex for plugin 5.30 / 6.30 / 7.30 / 8.x and later,
    /// base64 for older plugins.
    #[arg(long, value_enum, default_value_t = Format::Hex)]
    checksum_format: Format,
}

/// The encrypted checksum's format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Hex (plugin 5.30 / 6.30 / 7.30 / 8.x and later).
    Hex,
    /// Base64 (older plugins).
    Base64,
}

impl From<Format> for ChecksumFormat {
    fn from(format: Format) -> Self {
        match format {
            Format::Hex => ChecksumFormat::Hex,
            Format::Base64 => ChecksumFormat::Base64,
        }
    }
}

/// Runs an `ota bundle` command.
pub fn run(command: BundleCommand) -> Result<(), CliError> {
    match command {
        BundleCommand::Zip(args) => zip(&args),
        BundleCommand::Push(args) => push(&args),
        BundleCommand::Check(args) => check(&args),
        BundleCommand::Encrypt(args) => encrypt(&args),
    }
}

fn zip(args: &ZipArgs) -> Result<(), CliError> {
    let built = dist::zip_dist(&args.dist, &args.out)?;
    warn_without_notify_app_ready(&built);
    eprintln!(
        "wrote {} ({} files, {} bytes)",
        args.out.display(),
        built.files,
        built.size
    );
    emit(None, &format!("{}\n", built.sha256))
}

fn warn_without_notify_app_ready(built: &dist::BuiltZip) {
    if !built.calls_notify_app_ready {
        eprintln!(
            "warning: no .js file mentions notifyAppReady: the plugin rolls back a bundle that does not call CapacitorUpdater.notifyAppReady()"
        );
    }
}

fn load_signing_key(path: &Path) -> Result<SigningKey, CliError> {
    let pem = read_text(path, "the private key")?;
    SigningKey::from_pem(&pem).map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

/// Encrypts and stores the delta files of the plaintext zip with the session key of `encryption`,
/// so that devices can download only the files they lack.
async fn store_encrypted_delta(
    store: &Arc<dyn ObjectStore>,
    prefix: &object_store::path::Path,
    plaintext_zip: &Path,
    encryption: &BundleEncryption,
    key: &crypto::SigningKey,
    args: &PushArgs,
    encrypted_sha256: &str,
) -> Result<(), SyncError> {
    let session = crypto::SessionKey::open(&encryption.session_key, &key.verifying_key())
        .map_err(|e| SyncError::Task(format!("cannot reopen the session key just made: {e}")))?;
    let stored = sync::store_encrypted_files(
        store,
        prefix,
        plaintext_zip,
        &session,
        key,
        args.checksum_format.into(),
        encrypted_sha256,
    )
    .await?;
    eprintln!(
        "encrypted delta files: {} ({} uploaded, {} already stored)",
        stored.manifest.len(),
        stored.uploaded,
        stored.reused
    );
    Ok(())
}

fn encrypt(args: &EncryptArgs) -> Result<(), CliError> {
    let key = load_signing_key(&args.key)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let mut name = args.zip.clone().into_os_string();
        name.push(".enc");
        PathBuf::from(name)
    });
    if out == args.zip {
        return Err(CliError::input("--out must differ from the zip"));
    }
    if !args.zip.is_file() {
        return Err(CliError::input(format!("{} is not a file", args.zip.display())));
    }
    let encrypted = crypto::encrypt_zip(&args.zip, &out, &key, args.checksum_format.into())
        .map_err(|e| CliError::input(e.to_string()))?;
    eprintln!(
        "wrote {} ({} bytes; sha256 of the encrypted zip, for source.sha256: {})",
        out.display(),
        encrypted.encrypted_size,
        encrypted.encrypted_sha256
    );
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Printed<'a> {
        sha256: &'a str,
        encryption: &'a BundleEncryption,
    }
    emit(
        None,
        &yaml(&Printed {
            sha256: &encrypted.encrypted_sha256,
            encryption: &encrypted.encryption,
        })?,
    )
}

fn check(args: &CheckArgs) -> Result<(), CliError> {
    let package_json = match &args.package_json {
        Some(path) => path.clone(),
        None => native::find_package_json(&args.dist)?,
    };
    let current = native::native_packages(&package_json)?;
    let released = released_packages(&args.against)?;
    let changes = native::compare(&released, &current);
    if changes.is_empty() {
        eprintln!(
            "no native change: {} native packages match {}",
            current.len(),
            args.against.display()
        );
        return Ok(());
    }
    let list: String = changes.iter().map(|change| format!("{change}\n")).collect();
    emit(None, &list)?;
    let kinds = |f: fn(&NativeChange) -> bool| changes.iter().filter(|c| f(c)).count();
    Err(CliError::NativeChanged(format!(
        "native code changed since {}: {} added, {} removed, {} at another version; this needs a new app build, not a live update",
        args.against.display(),
        kinds(|c| matches!(c, NativeChange::Added(_))),
        kinds(|c| matches!(c, NativeChange::Removed(_))),
        kinds(|c| matches!(c, NativeChange::Changed { .. })),
    )))
}

/// The native packages of the released build: a Bundle's spec.native.packages, or those of a
/// package.json (by file name).
fn released_packages(path: &Path) -> Result<Vec<NativePackage>, CliError> {
    if path.file_name().is_some_and(|name| name == "package.json") {
        return native::native_packages(path);
    }
    let text = read_text(path, "the Bundle YAML")?;
    let mut bundles = Vec::new();
    for (index, document) in serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .map_err(|e| CliError::input(format!("{} is not YAML: {e}", path.display())))?
        .into_iter()
        .enumerate()
    {
        if document.get("kind").and_then(|k| k.as_str()) != Some("Bundle") {
            continue;
        }
        let bundle: Bundle = serde_json::from_value(document).map_err(|e| {
            CliError::input(format!(
                "{}: document {} is not a valid Bundle: {e}",
                path.display(),
                index + 1
            ))
        })?;
        bundles.push(bundle);
    }
    match bundles.len() {
        1 => {
            let bundle = bundles.remove(0);
            Ok(bundle
                .spec
                .native
                .map(|native| native.packages)
                .unwrap_or_default())
        }
        0 => Err(CliError::input(format!(
            "{} holds no Bundle (give a Bundle YAML or a package.json)",
            path.display()
        ))),
        n => Err(CliError::input(format!(
            "{} holds {n} Bundles: give a file with the released one only",
            path.display()
        ))),
    }
}

/// Whether `name` is a name Kubernetes accepts for an object (an RFC 1123 subdomain).
fn is_object_name(name: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// The default Bundle name: `<app>-<version>` with what Kubernetes refuses replaced by `-`.
fn default_bundle_name(app: &str, version: &str) -> String {
    let name: String = format!("{app}-{version}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            _ => '-',
        })
        .collect();
    name.trim_matches(|c| c == '-' || c == '.').to_owned()
}

fn push(args: &PushArgs) -> Result<(), CliError> {
    // Everything that can be checked locally first, before any upload.
    if !is_object_name(&args.app) {
        return Err(CliError::input(format!(
            "--app {:?} is not an App name (lower-case letters, digits, '-' and '.')",
            args.app
        )));
    }
    semver::Version::parse(&args.version).map_err(|e| {
        CliError::input(format!(
            "--version {:?} is not a semantic version such as 1.4.3: {e}",
            args.version
        ))
    })?;
    if let Some(min) = &args.min_native_version {
        semver::Version::parse(min).map_err(|e| {
            CliError::input(format!(
                "--min-native-version {min:?} is not a semantic version such as 1.4.0: {e}"
            ))
        })?;
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_bundle_name(&args.app, &args.version));
    for (flag, value) in [
        ("--name", Some(&name)),
        ("--channel", args.channel.as_ref()),
        ("--namespace", args.namespace.as_ref()),
    ] {
        if let Some(value) = value
            && !is_object_name(value)
        {
            return Err(CliError::input(format!(
                "{flag} {value:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.')"
            )));
        }
    }
    let key = args.encrypt.as_deref().map(load_signing_key).transpose()?;
    let packages = args
        .package_json
        .as_deref()
        .map(native::native_packages)
        .transpose()?;
    let spec = storage_spec(&args.storage)?;
    let opened = storage::open(&spec, Path::new("."), &Credentials::from_env()).map_err(storage_error)?;

    let workdir = tempfile::Builder::new()
        .prefix("ota-push-")
        .tempdir()
        .map_err(|e| CliError::input(format!("cannot create a temporary folder: {e}")))?;
    let zip_path = workdir.path().join("bundle.zip");
    let built = dist::zip_dist(&args.dist, &zip_path)?;
    warn_without_notify_app_ready(&built);
    eprintln!(
        "zipped {} ({} files, {} bytes, sha256 {})",
        args.dist.display(),
        built.files,
        built.size,
        built.sha256
    );
    let plaintext_zip = zip_path.clone();
    let (upload_path, sha256, encryption) = match &key {
        Some(key) => {
            let encrypted_path = workdir.path().join("bundle.zip.enc");
            let encrypted = crypto::encrypt_zip(&zip_path, &encrypted_path, key, args.checksum_format.into())
                .map_err(|e| CliError::input(e.to_string()))?;
            eprintln!(
                "encrypted ({} bytes, sha256 {})",
                encrypted.encrypted_size, encrypted.encrypted_sha256
            );
            (
                encrypted_path,
                encrypted.encrypted_sha256,
                Some(encrypted.encryption),
            )
        }
        None => (zip_path, built.sha256.clone(), None),
    };

    // Files and manifest only: the operator rebuilds the zip (impossible for an encrypted one).
    let files_only = key.is_none() && !args.upload_zip;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::input(format!("cannot start the async runtime: {e}")))?;
    let timeout = Duration::from_secs(args.storage.storage_timeout.max(1));
    let synced = runtime.block_on(async {
        match tokio::time::timeout(timeout, opened.check()).await {
            Err(_) => {
                return Err(CliError::storage(format!(
                    "{} storage did not answer within {} s",
                    opened.backend,
                    timeout.as_secs()
                )));
            }
            Ok(result) => result.map_err(storage_error)?,
        }
        let counters = Arc::new(Counters::default());
        let store: Arc<dyn ObjectStore> = Arc::new(CountingStore::new(
            Arc::clone(&opened.store),
            Arc::clone(&counters),
        ));
        let http = reqwest::Client::new();
        let limits = SyncLimits::default();
        let source = BundleSourceRef::File(upload_path.clone());
        let request = SyncRequest {
            source: &source,
            expected_sha256: &sha256,
            store: &store,
            prefix: &opened.prefix,
            limits: &limits,
            http: &http,
        };
        let progress = Progress::start(counters);
        let result = match (&encryption, &key) {
            // The delta files first: the sync then finds their manifest, checks it and reports it.
            (Some(encryption), Some(key)) => {
                match store_encrypted_delta(
                    &store,
                    &opened.prefix,
                    &plaintext_zip,
                    encryption,
                    key,
                    args,
                    &sha256,
                )
                .await
                {
                    Ok(()) => sync::sync_encrypted_bundle(request).await,
                    Err(error) => Err(error),
                }
            }
            _ if files_only => sync::sync_bundle_files(request).await,
            _ => sync::sync_bundle(request).await,
        };
        let (bytes, objects, elapsed) = progress.finish();
        let synced = result.map_err(sync_error)?;
        // The operator rebuilds the zip from the manifest: it must list every file of the zip.
        if files_only && synced.file_count != built.files {
            return Err(CliError::input(format!(
                "the manifest lists {} files but the zip holds {}: push with --upload-zip",
                synced.file_count, built.files
            )));
        }
        eprintln!(
            "uploaded {objects} objects, {bytes} bytes in {:.1} s ({}); {} files uploaded, {} already stored",
            elapsed.as_secs_f64(),
            progress::rate(bytes, elapsed),
            synced.uploaded_files,
            synced.reused_files,
        );
        Ok(synced)
    })?;

    let native = (packages.is_some() || args.min_native_version.is_some()).then(|| NativeCompatibility {
        min_version: args.min_native_version.clone(),
        packages: packages.unwrap_or_default(),
    });
    let mut bundle = Bundle::new(
        &name,
        BundleSpec {
            app_ref: args.app.clone(),
            version: args.version.clone(),
            source: BundleSource {
                url: None,
                storage_key: (!files_only).then(|| synced.zip_key.clone()),
                manifest_key: files_only.then(|| synced.manifest_key.clone()),
                path: None,
                sha256: synced.sha256.clone(),
            },
            native,
            encryption,
            link: args.link.clone(),
            comment: args.comment.clone(),
        },
    );
    bundle.metadata.namespace = args.namespace.clone();
    let bundle_yaml = yaml(&bundle)?;
    let channel_yaml = match &args.channel {
        Some(channel) => {
            let mut metadata = serde_json::json!({"name": channel});
            if let Some(namespace) = &args.namespace {
                metadata["namespace"] = serde_json::json!(namespace);
            }
            Some(yaml(&serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "Channel",
                "metadata": metadata,
                "spec": {"bundleRef": name},
            }))?)
        }
        None => None,
    };
    match (&args.out, &channel_yaml, &args.channel_out) {
        (Some(out), _, _) => {
            emit(Some(out), &bundle_yaml)?;
            eprintln!("wrote {}", out.display());
        }
        (None, Some(_), None) => emit(None, &format!("{bundle_yaml}---\n"))?,
        (None, _, _) => emit(None, &bundle_yaml)?,
    }
    if let Some(channel_yaml) = channel_yaml {
        emit(args.channel_out.as_deref(), &channel_yaml)?;
        if let Some(out) = &args.channel_out {
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}

/// The StorageSpec that `--storage` and its flags describe.
fn storage_spec(args: &StorageArgs) -> Result<StorageSpec, CliError> {
    let mut spec = StorageSpec::default();
    let location = args.storage.as_str();
    let split = |rest: &str| -> (String, Option<String>) {
        match rest.split_once('/') {
            Some((first, prefix)) => (
                first.to_owned(),
                Some(prefix.to_owned()).filter(|p| !p.is_empty()),
            ),
            None => (rest.to_owned(), None),
        }
    };
    let needs = |what: &str| CliError::input(format!("--storage {location:?} needs {what}"));
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = split(rest);
        if bucket.is_empty() {
            return Err(needs("a bucket: s3://BUCKET[/PREFIX]"));
        }
        spec.s3 = Some(S3Storage {
            bucket,
            region: args.s3_region.clone(),
            endpoint: args.s3_endpoint.clone(),
            force_path_style: args.s3_path_style,
            credentials_secret_ref: None,
        });
        spec.prefix = prefix;
    } else if let Some(rest) = location.strip_prefix("gs://") {
        let (bucket, prefix) = split(rest);
        if bucket.is_empty() {
            return Err(needs("a bucket: gs://BUCKET[/PREFIX]"));
        }
        spec.gcs = Some(GcsStorage {
            bucket,
            endpoint: None,
            credentials_secret_ref: None,
        });
        spec.prefix = prefix;
    } else if let Some(rest) = location.strip_prefix("azure://") {
        let (account, rest) = split(rest);
        let (container, prefix) = split(rest.as_deref().unwrap_or_default());
        if account.is_empty() || container.is_empty() {
            return Err(needs(
                "an account and a container: azure://ACCOUNT/CONTAINER[/PREFIX]",
            ));
        }
        spec.azure = Some(AzureStorage {
            account,
            container,
            endpoint: args.azure_endpoint.clone(),
            credentials_secret_ref: None,
        });
        spec.prefix = prefix;
    } else if location.contains("://") {
        return Err(CliError::input(format!(
            "--storage {location:?}: unknown scheme (use a folder, s3://, gs:// or azure://)"
        )));
    } else if location.is_empty() {
        return Err(needs("a folder or a URL"));
    } else {
        spec.filesystem = Some(FilesystemStorage {
            path: location.to_owned(),
            persistent_volume_claim: None,
        });
    }
    if args.s3_endpoint.is_some() && spec.s3.is_none() {
        return Err(CliError::input("--s3-endpoint needs an s3:// --storage"));
    }
    if args.azure_endpoint.is_some() && spec.azure.is_none() {
        return Err(CliError::input("--azure-endpoint needs an azure:// --storage"));
    }
    Ok(spec)
}

/// Storage errors: the service could not be reached or refused (exit 3), or the settings are
/// wrong (exit 1). Their messages never hold credentials.
fn storage_error(error: StorageError) -> CliError {
    match error {
        StorageError::Refused { .. } | StorageError::Unavailable { .. } => CliError::storage(chain(&error)),
        other => CliError::input(chain(&other)),
    }
}

/// Sync errors: storage failures are exit 3, the rest input errors.
fn sync_error(error: SyncError) -> CliError {
    match error {
        SyncError::Storage { .. } => CliError::storage(chain(&error)),
        other => CliError::input(chain(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_args(location: &str) -> StorageArgs {
        StorageArgs {
            storage: location.to_owned(),
            s3_endpoint: None,
            s3_region: "us-east-1".to_owned(),
            s3_path_style: false,
            azure_endpoint: None,
            storage_timeout: 60,
        }
    }

    #[test]
    fn storage_locations_become_storage_specs() {
        let spec = storage_spec(&storage_args("s3://bucket/apps/shop")).unwrap();
        assert_eq!(spec.s3.unwrap().bucket, "bucket");
        assert_eq!(spec.prefix.as_deref(), Some("apps/shop"));
        let spec = storage_spec(&storage_args("gs://b")).unwrap();
        assert_eq!(spec.gcs.unwrap().bucket, "b");
        assert_eq!(spec.prefix, None);
        let spec = storage_spec(&storage_args("azure://acct/cont/p/q")).unwrap();
        let azure = spec.azure.unwrap();
        assert_eq!(
            (azure.account.as_str(), azure.container.as_str()),
            ("acct", "cont")
        );
        assert_eq!(spec.prefix.as_deref(), Some("p/q"));
        let spec = storage_spec(&storage_args("./storage")).unwrap();
        assert_eq!(spec.filesystem.unwrap().path, "./storage");
        for (bad, needle) in [
            ("s3://", "needs a bucket"),
            ("azure://acct", "an account and a container"),
            ("ftp://x", "unknown scheme"),
            ("", "a folder or a URL"),
        ] {
            let error = storage_spec(&storage_args(bad)).unwrap_err().to_string();
            assert!(error.contains(needle), "{bad}: {error}");
        }
        let mut args = storage_args("./x");
        args.s3_endpoint = Some("http://127.0.0.1:9000".into());
        assert!(storage_spec(&args).is_err());
    }

    #[test]
    fn bundle_names_are_kubernetes_names() {
        assert_eq!(default_bundle_name("shop", "1.4.3"), "shop-1.4.3");
        assert_eq!(
            default_bundle_name("shop", "2.0.0-Beta.1+build.7"),
            "shop-2.0.0-beta.1-build.7"
        );
        assert!(is_object_name("shop-1.4.3"));
        for bad in ["", "Shop", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }
}
