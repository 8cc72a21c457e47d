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

use object_store::{ObjectStore, path::Path};
use sha2::{Digest, Sha256};

use super::{
    SyncError, SyncLimits, archive, file_key, is_sha256_hex, manifest_key,
    objects::{self, Spools},
};
use crate::{
    crypto::{ChecksumFormat, SessionKey, SigningKey, encrypt_checksum},
    layout::ManifestFile,
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
            .map_err(|e| super::archive_task_failed(&e))??
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
    joined.map_err(|e| super::archive_task_failed(&e))?;
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
