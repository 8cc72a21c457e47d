//! A decryptor written from the plugin's own algorithm (protocol note, section 5.3; Android
//! `CryptoCipher` and `CapgoUpdater.finishDownload`, iOS `CryptoCipher` and `AES128Key`), to prove
//! that what [`super`] produces is what devices accept, and to check a bundle the way a device
//! will before it is published.
//!
//! The device's steps, each a function here:
//!
//! 1. read `publicKey` from `capacitor.config` ([`config_public_key`]: whitespace removed, the
//!    PKCS#1 armour stripped, base64, PKCS#1 DER);
//! 2. split `session_key` on `:`, decode the IV (16 bytes) and the sealed key, open it with the
//!    public key (PKCS#1 v1.5, type 1), which must give 16 bytes ([`device_session_key`]);
//! 3. AES-128-CBC-decrypt the zip (or a delta file) with PKCS#7 padding ([`decrypt_download`]);
//! 4. SHA-256 the plaintext, and `decryptChecksum` the answer's checksum
//!    ([`device_decrypt_checksum`]: hex when it has only hex characters, else base64; exactly
//!    256 bytes; opened with the public key; printed as lower-case hex);
//! 5. compare the two exactly ([`device_verify_zip`]); for a delta file, Brotli-decode after
//!    decrypting when the name ends in `.br`, and compare with the decrypted `file_hash`
//!    ([`device_verify_manifest_file`]).
//!
//! Legacy plugins (before 5.30 / 6.30 / 7.30) open a base64 checksum and print the result as
//! base64 ([`legacy_decrypt_checksum`]).

use std::{
    io::{Read, Write},
    path::Path,
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use rsa::{RsaPublicKey, pkcs1::DecodeRsaPublicKey};

use super::{AES_KEY_LEN, CryptoError, IV_LEN, RSA_BLOCK_LEN, SessionKey, VerifyingKey, sha256_of};

/// Why a device would refuse an encrypted download.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRefusal {
    /// Android skips decryption silently (and then fails to unzip ciphertext) when the session
    /// key is empty or not two `:`-separated parts, or the key is not PKCS#1.
    #[error("the device would not decrypt: {0}")]
    NotDecrypted(&'static str),
    /// A decryption step failed.
    #[error("decryption failed: {0}")]
    Crypto(#[from] CryptoError),
    /// `checksum_required`: a device with a public key got no checksum.
    #[error("checksum_required: the answer has no checksum and the app has a public key")]
    ChecksumRequired,
    /// `checksum_fail`: the decrypted checksum differs from the plaintext's SHA-256.
    #[error("checksum_fail: the plaintext's sha256 is {computed}, the checksum opens to {decrypted}")]
    ChecksumFail {
        /// SHA-256 of the decrypted bytes.
        computed: String,
        /// What the checksum opened to.
        decrypted: String,
    },
    /// The ciphertext decrypted to nothing ("Empty decrypted data").
    #[error("the download decrypted to no bytes")]
    EmptyPlaintext,
    /// Brotli decoding of a `.br` delta file failed.
    #[error("download_manifest_brotli_fail: {0}")]
    Brotli(String),
}

/// Step 1: the public key as the plugin reads `publicKey` (Android `stringToPublicKey`). The
/// plugin refuses to decrypt when the text does not start with the PKCS#1 armour.
pub fn config_public_key(config_value: &str) -> Result<VerifyingKey, DeviceRefusal> {
    if !config_value.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        return Err(DeviceRefusal::NotDecrypted(
            "the publicKey does not start with -----BEGIN RSA PUBLIC KEY-----",
        ));
    }
    let body: String = config_value.chars().filter(|c| !c.is_whitespace()).collect();
    let body = body
        .replace("-----BEGINRSAPUBLICKEY-----", "")
        .replace("-----ENDRSAPUBLICKEY-----", "");
    let der = BASE64
        .decode(body)
        .map_err(|e| CryptoError::InvalidPublicKey(format!("the body is not base64: {e}")))?;
    let key = RsaPublicKey::from_pkcs1_der(&der).map_err(|e| CryptoError::InvalidPublicKey(e.to_string()))?;
    Ok(VerifyingKey(key))
}

/// Step 2: the AES key and IV from `session_key` (Android `decryptFile`, iOS `decryptFile`).
pub fn device_session_key(session_key: &str, key: &VerifyingKey) -> Result<SessionKey, DeviceRefusal> {
    // Java's split drops trailing empty parts; iOS counts them. Both want exactly two.
    let parts: Vec<&str> = session_key.split(':').collect();
    if session_key.is_empty() || parts.len() != 2 || parts[1].is_empty() {
        return Err(DeviceRefusal::NotDecrypted(
            "the session key is not two ':'-separated parts",
        ));
    }
    let iv = BASE64
        .decode(parts[0])
        .map_err(|e| CryptoError::MalformedSessionKey(format!("the IV is not base64: {e}")))?;
    let iv: [u8; IV_LEN] = iv
        .try_into()
        .map_err(|_| CryptoError::MalformedSessionKey("IV must be 16 bytes".to_owned()))?;
    let sealed = BASE64
        .decode(parts[1])
        .map_err(|e| CryptoError::MalformedSessionKey(format!("the encrypted key is not base64: {e}")))?;
    let aes = key.recover(&sealed, "the session key")?;
    let aes: [u8; AES_KEY_LEN] = aes
        .try_into()
        .map_err(|_| CryptoError::MalformedSessionKey("decrypted session key must be 16 bytes".to_owned()))?;
    Ok(SessionKey::from_parts(aes, iv))
}

/// Step 3: decrypts a downloaded file (the zip, or one delta file) into `output`. Like the
/// plugin, empty ciphertext and empty plaintext are errors.
pub fn decrypt_download<R: Read, W: Write>(
    session: &SessionKey,
    input: R,
    output: W,
) -> Result<u64, DeviceRefusal> {
    let written = session.decrypt(input, output)?;
    if written == 0 {
        return Err(DeviceRefusal::EmptyPlaintext);
    }
    Ok(written)
}

/// Step 4: `decryptChecksum` of current plugins: the lower-case hex of what the checksum opens
/// to, whatever its length (the comparison then fails when it is not the SHA-256).
pub fn device_decrypt_checksum(checksum: &str, key: &VerifyingKey) -> Result<String, DeviceRefusal> {
    let is_hex = !checksum.is_empty() && checksum.bytes().all(|b| b.is_ascii_hexdigit());
    let bytes = if is_hex {
        if !checksum.len().is_multiple_of(2) {
            return Err(CryptoError::MalformedChecksum("odd-length hex".to_owned()).into());
        }
        hex::decode(checksum).map_err(|e| CryptoError::MalformedChecksum(e.to_string()))?
    } else {
        BASE64
            .decode(checksum)
            .map_err(|e| CryptoError::MalformedChecksum(format!("not base64: {e}")))?
    };
    if bytes.len() != RSA_BLOCK_LEN {
        return Err(CryptoError::MalformedChecksum(format!(
            "Bundle checksum is not encrypted ({} bytes, expected {RSA_BLOCK_LEN})",
            bytes.len()
        ))
        .into());
    }
    Ok(hex::encode(key.recover(&bytes, "the encrypted checksum")?))
}

/// `decryptChecksum` of legacy plugins: base64 in, base64 out.
pub fn legacy_decrypt_checksum(checksum: &str, key: &VerifyingKey) -> Result<String, DeviceRefusal> {
    let bytes = BASE64
        .decode(checksum)
        .map_err(|e| CryptoError::MalformedChecksum(format!("not base64: {e}")))?;
    Ok(BASE64.encode(key.recover(&bytes, "the encrypted checksum")?))
}

/// Steps 2 to 5 for a zip (Android `finishDownload`): decrypts `encrypted` into `plaintext_out`
/// and checks the checksum; returns the plaintext's SHA-256.
pub fn device_verify_zip(
    public_key: &str,
    session_key: &str,
    checksum: &str,
    encrypted: &Path,
    plaintext_out: &Path,
) -> Result<String, DeviceRefusal> {
    let key = config_public_key(public_key)?;
    let session = device_session_key(session_key, &key)?;
    let input = std::fs::File::open(encrypted).map_err(CryptoError::io("reading the download"))?;
    let output = std::fs::File::create(plaintext_out).map_err(CryptoError::io("writing the plaintext"))?;
    decrypt_download(
        &session,
        std::io::BufReader::new(input),
        std::io::BufWriter::new(output),
    )?;
    let computed =
        sha256_of(std::fs::File::open(plaintext_out).map_err(CryptoError::io("reading the plaintext"))?)?;
    if checksum.is_empty() {
        return Err(DeviceRefusal::ChecksumRequired);
    }
    let decrypted = device_decrypt_checksum(checksum, &key)?;
    if decrypted != computed {
        return Err(DeviceRefusal::ChecksumFail { computed, decrypted });
    }
    Ok(computed)
}

/// Steps 2 to 5 for one delta file (Android `DownloadService.downloadAndVerify`): decrypts,
/// Brotli-decodes when `file_name` ends in `.br`, and checks the SHA-256 against the decrypted
/// `file_hash` (case-insensitively, as the plugin does); returns the file's final bytes.
pub fn device_verify_manifest_file(
    public_key: &str,
    session_key: &str,
    file_name: &str,
    file_hash: &str,
    downloaded: &[u8],
) -> Result<Vec<u8>, DeviceRefusal> {
    let key = config_public_key(public_key)?;
    let session = device_session_key(session_key, &key)?;
    let expected = device_decrypt_checksum(file_hash, &key)?;
    let mut decrypted = Vec::new();
    decrypt_download(&session, downloaded, &mut decrypted)?;
    let content = if file_name.ends_with(".br") {
        let mut out = Vec::new();
        brotli::BrotliDecompress(&mut decrypted.as_slice(), &mut out)
            .map_err(|e| DeviceRefusal::Brotli(e.to_string()))?;
        out
    } else {
        decrypted
    };
    let computed = sha256_of(content.as_slice())?;
    if !computed.eq_ignore_ascii_case(&expected) {
        return Err(DeviceRefusal::ChecksumFail {
            computed,
            decrypted: expected,
        });
    }
    Ok(content)
}
