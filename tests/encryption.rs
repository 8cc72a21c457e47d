//! The plugin's v2 encryption checked by an implementation that is not ours: the `openssl`
//! command line (already a requirement of the test API server's script) recovers the RSA blocks
//! with the public key and decrypts the AES-128-CBC zip, exactly the operations the plugin runs
//! (Java's `RSA/ECB/PKCS1Padding` with a public key, `AES/CBC/PKCS5Padding`). Also the sync's
//! encrypted path: the ciphertext is verified and stored as a zip only.

use std::{path::Path, process::Command, sync::Arc};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use object_store::{ObjectStore, local::LocalFileSystem, path::Path as StorePath};
use ota_operator::{
    crypto::{ChecksumFormat, SigningKey, encrypt_zip, sha256_of},
    sync::{self, BundleSourceRef, SyncError, SyncLimits, SyncRequest},
};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (tests/apiserver/apiserver.sh needs it too)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn openssl_opens_what_we_encrypt() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("bundle.zip");
    let plain: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&zip, &plain).unwrap();
    let key = SigningKey::from_pem(&std::fs::read_to_string(fixture("app.key")).unwrap()).unwrap();
    let encrypted = dir.path().join("bundle.enc");
    let result = encrypt_zip(&zip, &encrypted, &key, ChecksumFormat::Hex).unwrap();

    // The public key as a SubjectPublicKeyInfo file for openssl pkeyutl.
    let spki = dir.path().join("public.pem");
    openssl(&[
        "rsa",
        "-RSAPublicKey_in",
        "-in",
        fixture("app.key.pub").to_str().unwrap(),
        "-pubout",
        "-out",
        spki.to_str().unwrap(),
    ]);
    let recover = |block: &[u8], name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, block).unwrap();
        openssl(&[
            "pkeyutl",
            "-verifyrecover",
            "-pubin",
            "-inkey",
            spki.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:pkcs1",
            "-in",
            path.to_str().unwrap(),
        ])
    };
    let digest = recover(
        &hex::decode(&result.encryption.encrypted_checksum).unwrap(),
        "checksum.bin",
    );
    assert_eq!(hex::encode(digest), result.plaintext_sha256);
    assert_eq!(result.plaintext_sha256, sha256_of(plain.as_slice()).unwrap());

    let (iv, sealed) = result.encryption.session_key.split_once(':').unwrap();
    let aes_key = recover(&BASE64.decode(sealed).unwrap(), "session.bin");
    assert_eq!(aes_key.len(), 16);
    let iv = BASE64.decode(iv).unwrap();
    let decrypted = openssl(&[
        "enc",
        "-d",
        "-aes-128-cbc",
        "-K",
        &hex::encode(&aes_key),
        "-iv",
        &hex::encode(&iv),
        "-in",
        encrypted.to_str().unwrap(),
    ]);
    assert_eq!(decrypted, plain);
}

#[tokio::test]
async fn the_sync_stores_an_encrypted_zip_as_is_after_checking_its_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("bundle.zip");
    std::fs::write(&zip, b"not even a zip: the server never looks inside").unwrap();
    let key = SigningKey::from_pem(&std::fs::read_to_string(fixture("app.key")).unwrap()).unwrap();
    let encrypted = dir.path().join("bundle.enc");
    let result = encrypt_zip(&zip, &encrypted, &key, ChecksumFormat::Hex).unwrap();
    let root = dir.path().join("storage");
    std::fs::create_dir_all(&root).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
    let prefix = StorePath::from("apps/shop");
    let source = BundleSourceRef::File(encrypted.clone());
    let http = reqwest::Client::new();
    let limits = SyncLimits::default();
    let request = |sha256| SyncRequest {
        source: &source,
        expected_sha256: sha256,
        store: &store,
        prefix: &prefix,
        limits: &limits,
        http: &http,
    };
    let sha = result.encrypted_sha256.as_str();
    let synced = sync::sync_encrypted_bundle(request(sha)).await.unwrap();
    assert!(synced.encrypted);
    assert_eq!(synced.stored_manifest_key(), None);
    assert!(synced.manifest.is_empty());
    assert_eq!(synced.zip_key, format!("zips/{sha}.zip"));
    let stored = std::fs::read(root.join("apps/shop").join(&synced.zip_key)).unwrap();
    assert_eq!(stored, std::fs::read(&encrypted).unwrap());
    assert!(!root.join("apps/shop/manifests").exists());
    assert!(!root.join("apps/shop/files").exists());

    // The plain sync refuses the same ciphertext as an archive; a wrong sha256 is refused.
    let error = sync::sync_bundle(request(sha)).await.unwrap_err();
    assert!(matches!(error, SyncError::InvalidArchive(_)), "{error}");
    let zeros = "0".repeat(64);
    let error = sync::sync_encrypted_bundle(request(&zeros)).await.unwrap_err();
    assert!(matches!(error, SyncError::ChecksumMismatch { .. }), "{error}");
    assert!(error.is_terminal());
}

#[tokio::test]
async fn encrypted_delta_files_are_stored_checked_by_the_sync_and_open_on_a_device() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("bundle.zip");
    let script: String = (0..2000)
        .map(|i| format!("export const v{i} = {i} * 2;\n"))
        .collect();
    {
        let mut writer = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
        for (name, content) in [
            (
                "index.html",
                "<!doctype html><script src=app.js></script>".to_owned(),
            ),
            ("app.js", script.clone()),
        ] {
            writer
                .start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(content.as_bytes()).unwrap();
        }
        writer.finish().unwrap();
    }
    let key = SigningKey::from_pem(&std::fs::read_to_string(fixture("app.key")).unwrap()).unwrap();
    let encrypted = dir.path().join("bundle.enc");
    let result = encrypt_zip(&zip, &encrypted, &key, ChecksumFormat::Hex).unwrap();
    let session =
        ota_operator::crypto::SessionKey::open(&result.encryption.session_key, &key.verifying_key()).unwrap();
    let root = dir.path().join("storage");
    std::fs::create_dir_all(&root).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
    let prefix = StorePath::from("apps/shop");
    let sha = result.encrypted_sha256.as_str();
    let files = sync::store_encrypted_files(&store, &prefix, &zip, &session, &key, ChecksumFormat::Hex, sha)
        .await
        .unwrap();
    assert_eq!((files.manifest.len(), files.uploaded, files.reused), (2, 2, 0));
    // Again: the same objects are there already.
    let again = sync::store_encrypted_files(&store, &prefix, &zip, &session, &key, ChecksumFormat::Hex, sha)
        .await
        .unwrap();
    assert_eq!((again.uploaded, again.reused), (0, 2));

    let source = BundleSourceRef::File(encrypted.clone());
    let http = reqwest::Client::new();
    let limits = SyncLimits::default();
    let request = SyncRequest {
        source: &source,
        expected_sha256: sha,
        store: &store,
        prefix: &prefix,
        limits: &limits,
        http: &http,
    };
    let synced = sync::sync_encrypted_bundle(request).await.unwrap();
    assert_eq!(synced.stored_manifest_key(), Some(files.manifest_key.as_str()));
    assert_eq!(synced.manifest, files.manifest);
    let public = std::fs::read_to_string(fixture("app.key.pub")).unwrap();
    for file in &synced.manifest {
        let downloaded = std::fs::read(root.join("apps/shop").join(&file.key)).unwrap();
        let content = ota_operator::crypto::plugin::device_verify_manifest_file(
            &public,
            &result.encryption.session_key,
            &file.file_name,
            &file.file_hash,
            &downloaded,
        )
        .unwrap_or_else(|e| panic!("a device refuses {}: {e}", file.file_name));
        if file.file_name.starts_with("app.js") {
            assert_eq!(file.file_name, "app.js.br", "compressed before encryption");
            assert_eq!(content, script.as_bytes());
        }
    }

    // A manifest naming a file storage lacks is refused (a device would fail on it).
    std::fs::remove_file(root.join("apps/shop").join(&synced.manifest[0].key)).unwrap();
    let request = SyncRequest {
        source: &source,
        expected_sha256: sha,
        store: &store,
        prefix: &prefix,
        limits: &limits,
        http: &http,
    };
    let error = sync::sync_encrypted_bundle(request).await.unwrap_err();
    assert!(matches!(error, SyncError::InvalidManifest { .. }), "{error}");
}
