//! Delta files of an encrypted bundle, as Capgo's uploader makes them for the plugin: each file
//! Brotli-compressed first where that makes it smaller (the manifest then names it `<name>.br`),
//! then AES-encrypted with the bundle's session key; each manifest `file_hash` is the SHA-256 of
//! the original file, encrypted like the zip's checksum.
//!
//! Only who holds the private key can make them (`ota bundle push --encrypt`): the server never
//! does. Each stored object is content-addressed by the SHA-256 of its encrypted bytes, so the
//! layout, the deletion rules and the file URLs are those of plain bundles; a new session key
//! gives new objects, so encrypted bundles share no files.

use std::{
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom, Write},
    path::Path as FsPath,
    sync::Arc,
};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, path::Path};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::{
    BundleSourceRef, STORE_CONCURRENCY, SyncError, SyncLimits, SyncRequest, SyncedBundle, archive,
    archive_task_failed, file_key, is_sha256_hex, manifest_key,
    objects::{self, Spools},
    pipeline::{fetch_verified, sync_span},
    read_manifest,
};
use crate::{
    crypto::{ChecksumFormat, SessionKey, SigningKey, encrypt_checksum},
    layout::{ManifestFile, object_path, zip_key},
};

/// What [`store_encrypted_files`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedFiles {
    /// Key of the manifest (`manifests/<sha256 of the encrypted zip>.json`).
    pub manifest_key: String,
    /// The manifest, in archive order.
    pub manifest: Vec<ManifestFile>,
    /// Objects uploaded.
    pub uploaded: u64,
    /// Objects the store had already (the same push run again).
    pub reused: u64,
}

/// Stores the delta files of the plaintext zip at `plaintext_zip` encrypted with `session`, and
/// their manifest under the key of the encrypted zip `encrypted_sha256`; the file hashes are
/// encrypted with `signing` in `format`. The zip is validated as a sync validates one; memory
/// stays bounded (each file goes through temporary files).
pub async fn store_encrypted_files(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    plaintext_zip: &FsPath,
    session: &SessionKey,
    signing: &SigningKey,
    format: ChecksumFormat,
    encrypted_sha256: &str,
) -> Result<EncryptedFiles, SyncError> {
    if !is_sha256_hex(encrypted_sha256) {
        return Err(SyncError::InvalidChecksum(encrypted_sha256.to_owned()));
    }
    let scan = {
        let zip = plaintext_zip.to_owned();
        tokio::task::spawn_blocking(move || archive::scan(&zip, &SyncLimits::default(), None))
            .await
            .map_err(|e| archive_task_failed(&e))??
    };
    let workdir = tempfile::Builder::new()
        .prefix("ota-encrypt-")
        .tempdir()
        .map_err(|source| SyncError::TempStorage {
            action: "creating a temporary folder",
            source,
        })?;
    let spools = Arc::new(Spools::new(workdir.path()));
    // One blocking producer reads the archive once, in order, and hands each sealed file over a
    // short queue to the uploads here.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Sealed, SyncError>>(SEALED_QUEUE);
    let producer = {
        let (zip, spools, session) = (plaintext_zip.to_owned(), Arc::clone(&spools), session.clone());
        let files = scan.files;
        tokio::task::spawn_blocking(move || {
            let sealed_all = || -> Result<(), SyncError> {
                let mut archive = archive::open(&zip, usize::MAX)?;
                let mut buffer = vec![0; 64 * 1024];
                for file in files {
                    let sealed = seal_file(&mut archive, file, &spools, &session, &mut buffer);
                    let failed = sealed.is_err();
                    if sender.blocking_send(sealed).is_err() || failed {
                        break;
                    }
                }
                Ok(())
            };
            if let Err(error) = sealed_all() {
                let _ = sender.blocking_send(Err(error));
            }
        })
    };
    let mut manifest = Vec::new();
    let (mut uploaded, mut reused) = (0, 0);
    let result: Result<(), SyncError> = async {
        while let Some(sealed) = receiver.recv().await {
            let sealed = sealed?;
            let key = file_key(&sealed.sha256, false);
            if objects::store_file(store, prefix, &key, sealed.file, sealed.len, &spools).await? {
                uploaded += 1;
            } else {
                reused += 1;
            }
            let file_hash = encrypt_checksum(&sealed.plain_sha256, signing, format)
                .map_err(|e| SyncError::Task(format!("cannot encrypt the hash of {}: {e}", sealed.path)))?;
            manifest.push(ManifestFile {
                file_name: match sealed.brotli {
                    true => format!("{}.br", sealed.path),
                    false => sealed.path,
                },
                file_hash,
                key,
            });
        }
        Ok(())
    }
    .await;
    // Stop the producer (its next send fails) and wait for it, so its temporary files are
    // closed before the folder is removed.
    drop(receiver);
    let joined = producer.await;
    result?;
    joined.map_err(|e| archive_task_failed(&e))?;
    let manifest_key = manifest_key(encrypted_sha256);
    objects::store_manifest(store, prefix, &manifest_key, &manifest).await?;
    Ok(EncryptedFiles {
        manifest_key,
        manifest,
        uploaded,
        reused,
    })
}

/// Sealed files waiting for an upload.
const SEALED_QUEUE: usize = 4;

/// One file, encrypted, in a temporary file.
struct Sealed {
    /// Its path in the bundle.
    path: String,
    /// SHA-256 of its original content.
    plain_sha256: String,
    file: File,
    len: u64,
    /// SHA-256 of the encrypted bytes (the object's key).
    sha256: String,
    brotli: bool,
}

/// Extracts one file (Brotli-compressed where smaller, as a plain sync stores it) and encrypts it
/// into a second temporary file, hashing the ciphertext on the way.
fn seal_file(
    archive: &mut archive::Archive,
    file: archive::ScannedFile,
    spools: &Spools,
    session: &SessionKey,
    buffer: &mut [u8],
) -> Result<Sealed, SyncError> {
    let extract = archive::Extract {
        index: file.index,
        brotli_required: objects::needs_brotli(&file.path),
        path: file.path,
        hash: file.hash,
        size: file.size,
        compressed_size: file.compressed_size,
        stored: file.stored,
    };
    let prepared = objects::prepare(archive, &extract, spools, buffer)?;
    let (brotli, plain) = (prepared.brotli, prepared.file);
    let mut sink = HashingFile {
        file: spools.take()?,
        hasher: Sha256::new(),
    };
    let len = session
        .encrypt(BufReader::new(plain.take(prepared.len)), &mut sink)
        .map_err(|e| SyncError::Task(format!("cannot encrypt {}: {e}", extract.path)))?;
    let HashingFile { mut file, hasher } = sink;
    file.seek(SeekFrom::Start(0))
        .map_err(|source| SyncError::TempStorage {
            action: "rewinding a temporary file",
            source,
        })?;
    Ok(Sealed {
        path: extract.path,
        plain_sha256: extract.hash,
        file,
        len,
        sha256: hex::encode(hasher.finalize()),
        brotli,
    })
}

/// A temporary file that hashes what is written to it.
struct HashingFile {
    file: File,
    hasher: Sha256,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Syncs a bundle encrypted with the plugin's v2 scheme (a Bundle with `spec.encryption`): its
/// zip is AES ciphertext that only devices can decrypt (the server never holds the private key),
/// so it cannot be validated or split into files. The zip is fetched, its declared SHA-256 (of
/// the ciphertext) verified, and stored as is under `zips/<sha256>.zip`. When its encrypted
/// delta files are stored already ([`store_encrypted_files`], by who holds the private key),
/// their manifest is checked and recorded.
pub async fn sync_encrypted_bundle(request: SyncRequest<'_>) -> Result<SyncedBundle, SyncError> {
    let span = sync_span(&request, true);
    sync_encrypted_inner(request).instrument(span).await
}

async fn sync_encrypted_inner(request: SyncRequest<'_>) -> Result<SyncedBundle, SyncError> {
    let SyncRequest { store, prefix, .. } = request;
    if let BundleSourceRef::Manifest(key) = request.source {
        return Err(SyncError::SourceRefused(format!(
            "manifest {key}: an encrypted bundle cannot be rebuilt from files (only devices can \
             decrypt them); its source must be the encrypted zip (url, storageKey or path)"
        )));
    }
    // The temporary folder lives until the zip is stored.
    let zip = fetch_verified(&request, "bundle.zip.enc").await?;
    let fetched = &zip.fetched;
    let zip_key = zip_key(&fetched.sha256);
    let zip_uploaded = objects::store_zip(store, prefix, &zip_key, &zip.zip_path, fetched.size).await?;
    zip.check_unchanged(store, prefix, &zip_key, zip_uploaded).await?;
    // Delta files exist only when who encrypted the bundle stored them (`ota bundle push
    // --encrypt`); the server cannot make them.
    let manifest = stored_encrypted_manifest(store, prefix, &fetched.sha256).await?;
    tracing::info!(
        zip_size = fetched.size,
        zip_uploaded,
        delta_files = manifest.as_ref().map_or(0, |(_, files)| files.len()),
        "encrypted bundle synced"
    );
    let (manifest_key, manifest) = manifest.unwrap_or_default();
    Ok(SyncedBundle {
        sha256: fetched.sha256.clone(),
        zip_size: fetched.size,
        uncompressed_size: 0,
        file_count: manifest.len() as u64,
        zip_key,
        manifest_key,
        manifest,
        uploaded_files: 0,
        reused_files: 0,
        encrypted: true,
        compressed_variants: false,
    })
}

/// The manifest of an encrypted bundle's delta files, when one is stored: every file it lists
/// must be in the store (a device would fail on a missing one), else it is refused.
async fn stored_encrypted_manifest(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    sha256: &str,
) -> Result<Option<(String, Vec<ManifestFile>)>, SyncError> {
    let key = manifest_key(sha256);
    let files = match read_manifest(store, prefix, &key).await {
        Ok(files) => files,
        Err(SyncError::Storage {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return Ok(None),
        Err(error) => return Err(error),
    };
    // Owned keys: a stream over borrowed items could not be proven `Send` by the controller.
    let keys: Vec<String> = files.iter().map(|file| file.key.clone()).collect();
    let missing = futures::stream::iter(keys)
        .map(|file_key: String| async move {
            let path = object_path(prefix, &file_key);
            let found = match &path {
                Some(path) => match store.head(path).await {
                    Ok(_) => true,
                    Err(object_store::Error::NotFound { .. }) => false,
                    Err(e) => return Err(SyncError::storage("check", path, e)),
                },
                None => false,
            };
            Ok((!found).then_some(file_key))
        })
        .buffer_unordered(STORE_CONCURRENCY)
        .try_collect::<Vec<Option<String>>>()
        .await?;
    let missing: Vec<String> = missing.into_iter().flatten().collect();
    if let Some(first) = missing.first() {
        return Err(SyncError::InvalidManifest {
            key,
            message: format!("{} of its files are not in storage, e.g. {first}", missing.len()),
        });
    }
    Ok(Some((key, files)))
}
