//! The Capgo updater plugin's "v2" end-to-end encryption, from the uploader's side and the
//! server's.
//!
//! The scheme (protocol note, section 5): a random AES-128 key and IV encrypt the zip (and each
//! delta file) in CBC mode with PKCS#7 padding; the AES key is RSA-"encrypted" with the App's
//! **private** key, which is a PKCS#1 v1.5 type-1 padded block with no DigestInfo prefix (what
//! Node's `privateEncrypt` produces, and what a raw unprefixed signature is); the session key is
//! `base64(iv):base64(that block)`; the SHA-256 of the plaintext zip is RSA-"encrypted" the same
//! way and sent as the checksum, hex for plugin 5.30 / 6.30 / 7.30 / 8.x and later, base64 of the
//! digest's hex text read as base64 for older ones. Devices undo both RSA operations with the
//! public key, so the encrypted checksum is the bundle's signature.
//!
//! - [`generate_key_pair`] makes an RSA-2048 pair as PKCS#1 PEM (the only public-key form the
//!   plugin reads);
//! - [`SigningKey`] (the private key) seals a [`SessionKey`] and encrypts checksums;
//!   [`encrypt_zip`] encrypts a zip file to another file, streaming, and returns the Bundle's
//!   `spec.encryption`;
//! - [`VerifyingKey`] (the public key) recovers what the private key signed;
//!   [`verify_bundle_signature`] is what the server checks before a protected channel serves a
//!   bundle;
//! - [`plugin`] is a decryptor written from the plugin's own code paths, for tests and for
//!   checking a bundle the way a device will.
//!
//! Everything streams through fixed buffers: no zip is ever held in memory.

pub mod plugin;

use std::{
    fmt,
    io::{Read, Write},
    path::Path,
};

use aes::Aes128;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
use rsa::{
    BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey,
    pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding},
    pkcs8::DecodePrivateKey,
    rand_core::{OsRng, RngCore},
    traits::PublicKeyParts,
};
use sha2::{Digest, Sha256};

use crate::api::bundle::BundleEncryption;

/// Bits of the RSA keys [`generate_key_pair`] makes (the plugin checks for 256-byte blocks).
pub const RSA_BITS: usize = 2048;
/// Bytes of an RSA-2048 block: what the plugin requires of an encrypted checksum.
pub const RSA_BLOCK_LEN: usize = RSA_BITS / 8;
/// Bytes of the AES-128 key.
pub const AES_KEY_LEN: usize = 16;
/// Bytes of the CBC initialisation vector (one AES block).
pub const IV_LEN: usize = 16;
/// Bytes of an AES block.
const BLOCK: usize = 16;
/// Bytes read and encrypted at a time (a multiple of the block size).
const CHUNK: usize = 64 * 1024;
/// PKCS#1 v1.5 type-1 padding: at least this many 0xFF bytes (RFC 8017, section 9.2).
const MIN_PADDING: usize = 8;

type Aes128CbcEncryptor = cbc::Encryptor<Aes128>;
type Aes128CbcDecryptor = cbc::Decryptor<Aes128>;

/// Why a key, a session key, a checksum or a stream could not be used. Messages never quote key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The private key cannot be read.
    #[error("the private key is not an RSA private key in PEM (PKCS#1 or PKCS#8): {0}")]
    InvalidPrivateKey(String),
    /// The public key cannot be read.
    #[error("the public key is not an RSA public key in PKCS#1 PEM (-----BEGIN RSA PUBLIC KEY-----): {0}")]
    InvalidPublicKey(String),
    /// The key is not the size the plugin accepts.
    #[error("the RSA key has {bits} bits; the plugin needs a {RSA_BITS}-bit key")]
    UnsupportedKeySize {
        /// Bits of the modulus.
        bits: usize,
    },
    /// Generating or using a key failed inside the RSA library.
    #[error("RSA operation failed: {0}")]
    Rsa(String),
    /// The session key is not `base64(iv):base64(encrypted key)` with the right sizes.
    #[error("malformed session key: {0}")]
    MalformedSessionKey(String),
    /// The encrypted checksum is not hex or base64 of one RSA block.
    #[error("malformed encrypted checksum: {0}")]
    MalformedChecksum(String),
    /// An RSA block did not open with the public key: it was made with another private key, or
    /// altered.
    #[error("{what} was not made with the private key of this public key (or was altered)")]
    WrongKey {
        /// What was being opened.
        what: &'static str,
    },
    /// The encrypted checksum opened to something else than the expected SHA-256.
    #[error("the encrypted checksum opens to {actual}, not the expected sha256 {expected}")]
    ChecksumMismatch {
        /// The SHA-256 expected.
        expected: String,
        /// What the checksum opened to.
        actual: String,
    },
    /// The ciphertext is empty or not a whole number of AES blocks.
    #[error("the ciphertext is truncated: {0} bytes is not a positive multiple of 16")]
    Truncated(u64),
    /// The last block's PKCS#7 padding is wrong: a wrong key, or altered data.
    #[error("bad padding after AES decryption: wrong session key, or the data was altered")]
    BadPadding,
    /// Reading or writing a file failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl CryptoError {
    fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> CryptoError {
        let action = action.into();
        move |source| CryptoError::Io { action, source }
    }
}

/// A new key pair, as PKCS#1 PEM text.
pub struct KeyPair {
    /// `-----BEGIN RSA PRIVATE KEY-----`: keep it secret (CI secrets), never in git.
    pub private_pem: String,
    /// `-----BEGIN RSA PUBLIC KEY-----`: goes into `capacitor.config` and the App's
    /// `signing.publicKey`.
    pub public_pem: String,
}

/// Shows nothing of the private key.
impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

/// Generates an RSA-2048 key pair, both halves PKCS#1 PEM, as Capgo's CLI makes them.
pub fn generate_key_pair() -> Result<KeyPair, CryptoError> {
    let private = RsaPrivateKey::new(&mut OsRng, RSA_BITS).map_err(|e| CryptoError::Rsa(e.to_string()))?;
    let private_pem = private
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| CryptoError::Rsa(e.to_string()))?
        .to_string();
    let public_pem = private
        .to_public_key()
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| CryptoError::Rsa(e.to_string()))?;
    Ok(KeyPair {
        private_pem,
        public_pem,
    })
}

/// The App's private key: it seals session keys and encrypts checksums.
#[derive(Clone)]
pub struct SigningKey(RsaPrivateKey);

/// Shows nothing of the key.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Reads a PEM private key: PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`, what Capgo's CLI and
    /// [`generate_key_pair`] write) or PKCS#8 (`-----BEGIN PRIVATE KEY-----`). It must be 2048 bits.
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let pem = pem.trim();
        let key = if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| CryptoError::InvalidPrivateKey(e.to_string()))?
        } else if pem.starts_with("-----BEGIN PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| CryptoError::InvalidPrivateKey(e.to_string()))?
        } else if pem.contains("PUBLIC KEY-----") {
            return Err(CryptoError::InvalidPrivateKey(
                "this is a public key; encryption needs the private key".to_owned(),
            ));
        } else {
            return Err(CryptoError::InvalidPrivateKey(
                "no -----BEGIN RSA PRIVATE KEY----- or -----BEGIN PRIVATE KEY----- header".to_owned(),
            ));
        };
        check_size(key.size())?;
        Ok(SigningKey(key))
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.to_public_key())
    }

    /// PKCS#1 v1.5 type-1 block of `payload` with no DigestInfo prefix (Node's
    /// `privateEncrypt` with `RSA_PKCS1_PADDING`), blinded against timing attacks.
    pub fn sign_raw(&self, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0
            .sign_with_rng(&mut OsRng, Pkcs1v15Sign::new_unprefixed(), payload)
            .map_err(|e| CryptoError::Rsa(e.to_string()))
    }
}

fn check_size(bytes: usize) -> Result<(), CryptoError> {
    if bytes == RSA_BLOCK_LEN {
        Ok(())
    } else {
        Err(CryptoError::UnsupportedKeySize { bits: bytes * 8 })
    }
}

/// The App's public key, as in `capacitor.config` and the App's `signing.publicKey`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey(RsaPublicKey);

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({} bits)", self.0.size() * 8)
    }
}

impl VerifyingKey {
    /// Reads a PKCS#1 PEM public key (`-----BEGIN RSA PUBLIC KEY-----`), the only form the plugin
    /// reads. It must be 2048 bits.
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let pem = pem.trim();
        if !pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
            return Err(CryptoError::InvalidPublicKey(
                if pem.contains("PRIVATE KEY-----") {
                    "this is a private key; give the public key".to_owned()
                } else {
                    "no -----BEGIN RSA PUBLIC KEY----- header".to_owned()
                },
            ));
        }
        let key =
            RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| CryptoError::InvalidPublicKey(e.to_string()))?;
        check_size(key.size())?;
        Ok(VerifyingKey(key))
    }

    /// The key as PKCS#1 PEM.
    pub fn to_pem(&self) -> Result<String, CryptoError> {
        self.0
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| CryptoError::Rsa(e.to_string()))
    }

    /// Recovers what the private key signed into `block` (the public-key "decryption" of the
    /// plugin: RSA with the public exponent, then the type-1 padding checked and removed).
    /// `what` names the block in errors.
    pub fn recover(&self, block: &[u8], what: &'static str) -> Result<Vec<u8>, CryptoError> {
        let size = self.0.size();
        if block.len() != size {
            return Err(CryptoError::WrongKey { what });
        }
        let signature = BigUint::from_bytes_be(block);
        if &signature >= self.0.n() {
            return Err(CryptoError::WrongKey { what });
        }
        let message = signature.modpow(self.0.e(), self.0.n()).to_bytes_be();
        // `to_bytes_be` drops leading zeros: put them back to the block size.
        let mut padded = vec![0u8; size.saturating_sub(message.len())];
        padded.extend_from_slice(&message);
        unpad_type1(&padded).ok_or(CryptoError::WrongKey { what })
    }
}

/// Removes PKCS#1 v1.5 type-1 padding: `00 01 FF..FF 00 payload`, with at least eight `FF`.
fn unpad_type1(block: &[u8]) -> Option<Vec<u8>> {
    let rest = block.strip_prefix(&[0x00, 0x01])?;
    let ones = rest.iter().take_while(|&&b| b == 0xFF).count();
    if ones < MIN_PADDING {
        return None;
    }
    let rest = rest[ones..].strip_prefix(&[0x00])?;
    Some(rest.to_vec())
}

/// An AES-128 key and IV: one per bundle, shared by its zip and its delta files.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey {
    key: [u8; AES_KEY_LEN],
    iv: [u8; IV_LEN],
}

/// Shows nothing of the key.
impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A random key and IV from the operating system's generator.
    pub fn generate() -> Self {
        let mut key = [0u8; AES_KEY_LEN];
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut key);
        OsRng.fill_bytes(&mut iv);
        SessionKey { key, iv }
    }

    /// A session key from its parts (tests, and the [`plugin`] decryptor).
    pub fn from_parts(key: [u8; AES_KEY_LEN], iv: [u8; IV_LEN]) -> Self {
        SessionKey { key, iv }
    }

    /// The `session_key` devices receive: `base64(iv):base64(AES key signed with the private key)`.
    pub fn seal(&self, signing: &SigningKey) -> Result<String, CryptoError> {
        let sealed = signing.sign_raw(&self.key)?;
        Ok(format!("{}:{}", BASE64.encode(self.iv), BASE64.encode(sealed)))
    }

    /// Opens a `session_key` with the public key (strict: standard base64, exact sizes).
    pub fn open(session_key: &str, key: &VerifyingKey) -> Result<Self, CryptoError> {
        let malformed = |m: &str| CryptoError::MalformedSessionKey(m.to_owned());
        let (iv, sealed) = session_key
            .split_once(':')
            .ok_or_else(|| malformed("no ':' between the IV and the encrypted key"))?;
        if sealed.contains(':') {
            return Err(malformed("more than one ':'"));
        }
        let iv = BASE64
            .decode(iv)
            .map_err(|e| CryptoError::MalformedSessionKey(format!("the IV is not base64: {e}")))?;
        let iv: [u8; IV_LEN] = iv.try_into().map_err(|iv: Vec<u8>| {
            CryptoError::MalformedSessionKey(format!("the IV has {} bytes, not 16", iv.len()))
        })?;
        let sealed = BASE64
            .decode(sealed)
            .map_err(|e| CryptoError::MalformedSessionKey(format!("the encrypted key is not base64: {e}")))?;
        if sealed.len() != RSA_BLOCK_LEN {
            return Err(CryptoError::MalformedSessionKey(format!(
                "the encrypted key has {} bytes, not {RSA_BLOCK_LEN}",
                sealed.len()
            )));
        }
        let aes = key.recover(&sealed, "the session key")?;
        let aes: [u8; AES_KEY_LEN] = aes.try_into().map_err(|aes: Vec<u8>| {
            CryptoError::MalformedSessionKey(format!("the AES key has {} bytes, not 16", aes.len()))
        })?;
        Ok(SessionKey { key: aes, iv })
    }

    /// Encrypts `reader` into `writer` with AES-128-CBC and PKCS#7 padding, a chunk at a time;
    /// returns the bytes written. Used for the zip and, with the same session key, for each
    /// delta file (Brotli-compressed first when its name ends in `.br`).
    pub fn encrypt<R: Read, W: Write>(&self, mut reader: R, mut writer: W) -> Result<u64, CryptoError> {
        let mut cipher = Aes128CbcEncryptor::new(&self.key.into(), &self.iv.into());
        let mut buffer = vec![0u8; CHUNK + BLOCK];
        let mut filled = 0;
        let mut written = 0u64;
        loop {
            let read = read_some(&mut reader, &mut buffer[filled..CHUNK])?;
            filled += read;
            if read == 0 || filled == CHUNK {
                let whole = filled - filled % BLOCK;
                let last = read == 0;
                let end = if last {
                    // PKCS#7: 1 to 16 bytes, each the count (a full block when already aligned).
                    let pad = BLOCK - filled % BLOCK;
                    buffer[filled..filled + pad].fill(pad as u8);
                    filled + pad
                } else {
                    whole
                };
                for block in buffer[..end].chunks_exact_mut(BLOCK) {
                    cipher.encrypt_block_mut(GenericArray::from_mut_slice(block));
                }
                writer
                    .write_all(&buffer[..end])
                    .map_err(CryptoError::io("writing the ciphertext"))?;
                written += end as u64;
                if last {
                    writer
                        .flush()
                        .map_err(CryptoError::io("writing the ciphertext"))?;
                    return Ok(written);
                }
                buffer.copy_within(whole..filled, 0);
                filled -= whole;
            }
        }
    }

    /// Decrypts what [`SessionKey::encrypt`] wrote, a chunk at a time, checking the padding;
    /// returns the plaintext bytes written.
    pub fn decrypt<R: Read, W: Write>(&self, mut reader: R, mut writer: W) -> Result<u64, CryptoError> {
        let mut cipher = Aes128CbcDecryptor::new(&self.key.into(), &self.iv.into());
        let mut buffer = vec![0u8; CHUNK + BLOCK];
        // The last block read is held back until the end, when its padding is removed.
        let mut held: Option<[u8; BLOCK]> = None;
        let mut filled = 0;
        let mut total = 0u64;
        let mut written = 0u64;
        loop {
            let read = read_some(&mut reader, &mut buffer[filled..CHUNK])?;
            filled += read;
            total += read as u64;
            let last = read == 0;
            if !last && filled < CHUNK {
                continue;
            }
            let whole = filled - filled % BLOCK;
            if last && filled % BLOCK != 0 {
                return Err(CryptoError::Truncated(total));
            }
            for block in buffer[..whole].chunks_exact_mut(BLOCK) {
                cipher.decrypt_block_mut(GenericArray::from_mut_slice(block));
                let mut plain = [0u8; BLOCK];
                plain.copy_from_slice(block);
                if let Some(previous) = held.replace(plain) {
                    writer
                        .write_all(&previous)
                        .map_err(CryptoError::io("writing the plaintext"))?;
                    written += BLOCK as u64;
                }
            }
            buffer.copy_within(whole..filled, 0);
            filled -= whole;
            if last {
                let block = held.ok_or(CryptoError::Truncated(total))?;
                let pad = usize::from(block[BLOCK - 1]);
                if pad == 0 || pad > BLOCK || block[BLOCK - pad..].iter().any(|&b| usize::from(b) != pad) {
                    return Err(CryptoError::BadPadding);
                }
                writer
                    .write_all(&block[..BLOCK - pad])
                    .map_err(CryptoError::io("writing the plaintext"))?;
                writer.flush().map_err(CryptoError::io("writing the plaintext"))?;
                return Ok(written + (BLOCK - pad) as u64);
            }
        }
    }
}

/// Reads until `buffer` is full or the end (so that short reads do not end a stream early).
fn read_some<R: Read>(reader: &mut R, buffer: &mut [u8]) -> Result<usize, CryptoError> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CryptoError::io("reading the input")(e)),
        }
    }
    Ok(filled)
}

/// How an encrypted checksum is written, by plugin generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumFormat {
    /// The 32 digest bytes encrypted, as hex (512 characters): plugin 5.30 / 6.30 / 7.30 / 8.x
    /// and later ("V3").
    #[default]
    Hex,
    /// The digest's 64 hex characters read as base64 (48 bytes), encrypted, as base64: older
    /// plugins ("V2"). Current plugins cannot verify it.
    Base64,
}

/// Encrypts a lower-case hex SHA-256 with the private key, in `format`.
pub fn encrypt_checksum(
    sha256_hex: &str,
    key: &SigningKey,
    format: ChecksumFormat,
) -> Result<String, CryptoError> {
    if !is_sha256_hex(sha256_hex) {
        return Err(CryptoError::MalformedChecksum(
            "a checksum to encrypt must be 64 lower-case hexadecimal characters".to_owned(),
        ));
    }
    Ok(match format {
        ChecksumFormat::Hex => {
            let digest =
                hex::decode(sha256_hex).map_err(|e| CryptoError::MalformedChecksum(e.to_string()))?;
            hex::encode(key.sign_raw(&digest)?)
        }
        ChecksumFormat::Base64 => {
            // The legacy scheme: the hex text decoded as if it were base64.
            let bytes = BASE64
                .decode(sha256_hex)
                .map_err(|e| CryptoError::MalformedChecksum(e.to_string()))?;
            BASE64.encode(key.sign_raw(&bytes)?)
        }
    })
}

/// Opens an encrypted checksum with the public key: hex (current plugins) or base64 (legacy),
/// told apart as the plugin does (only hex characters: hex). Returns the lower-case hex SHA-256
/// it holds and the format found.
pub fn open_checksum(encrypted: &str, key: &VerifyingKey) -> Result<(String, ChecksumFormat), CryptoError> {
    let is_hex = !encrypted.is_empty() && encrypted.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let block = hex::decode(encrypted)
            .map_err(|e| CryptoError::MalformedChecksum(format!("odd-length or invalid hex: {e}")))?;
        require_block(block.len())?;
        let digest = key.recover(&block, "the encrypted checksum")?;
        if digest.len() != 32 {
            return Err(CryptoError::MalformedChecksum(format!(
                "it opens to {} bytes, not a 32-byte SHA-256",
                digest.len()
            )));
        }
        Ok((hex::encode(digest), ChecksumFormat::Hex))
    } else {
        let block = BASE64
            .decode(encrypted)
            .map_err(|e| CryptoError::MalformedChecksum(format!("neither hex nor base64: {e}")))?;
        require_block(block.len())?;
        let payload = key.recover(&block, "the encrypted checksum")?;
        let text = BASE64.encode(payload);
        if !is_sha256_hex(&text) {
            return Err(CryptoError::MalformedChecksum(
                "the legacy (base64) checksum does not open to a hex SHA-256".to_owned(),
            ));
        }
        Ok((text, ChecksumFormat::Base64))
    }
}

fn require_block(len: usize) -> Result<(), CryptoError> {
    if len == RSA_BLOCK_LEN {
        Ok(())
    } else {
        Err(CryptoError::MalformedChecksum(format!(
            "{len} bytes, not one {RSA_BLOCK_LEN}-byte RSA block: the bundle was not encrypted"
        )))
    }
}

pub use crate::layout::is_sha256_hex;

/// The key id devices send for a PKCS#1 PEM public key: the first 20 characters of the base64
/// body, headers and whitespace removed.
pub fn key_id(public_key_pem: &str) -> Option<String> {
    let body: String = public_key_pem
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----"))
        .collect::<String>()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    (!body.is_empty()).then(|| body.chars().take(20).collect())
}

/// What [`verify_bundle_signature`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The SHA-256 of the plaintext zip that the private key signed (lower-case hex).
    pub plaintext_sha256: String,
    /// The checksum's format.
    pub format: ChecksumFormat,
}

/// Checks a Bundle's `spec.encryption` against the App's public key (PKCS#1 PEM): the session
/// key and the encrypted checksum must both open with it, the checksum to a SHA-256 digest, and
/// to `expected_plaintext_sha256` when it is known.
///
/// The server never holds the private key nor the plaintext, so without an expected digest this
/// proves that the App's private key signed the bundle's session key and checksum, which is what
/// the plugin will check on the device.
pub fn verify_bundle_signature(
    public_key_pem: &str,
    encryption: &BundleEncryption,
    expected_plaintext_sha256: Option<&str>,
) -> Result<VerifiedSignature, CryptoError> {
    let key = VerifyingKey::from_pem(public_key_pem)?;
    SessionKey::open(&encryption.session_key, &key)?;
    let (plaintext_sha256, format) = open_checksum(&encryption.encrypted_checksum, &key)?;
    if let Some(expected) = expected_plaintext_sha256
        && expected != plaintext_sha256
    {
        return Err(CryptoError::ChecksumMismatch {
            expected: expected.to_owned(),
            actual: plaintext_sha256,
        });
    }
    Ok(VerifiedSignature {
        plaintext_sha256,
        format,
    })
}

/// What [`encrypt_zip`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct EncryptedZip {
    /// The Bundle's `spec.encryption`.
    pub encryption: BundleEncryption,
    /// SHA-256 of the plaintext zip (what devices compute after decrypting).
    pub plaintext_sha256: String,
    /// SHA-256 of the encrypted file (the Bundle's `source.sha256`).
    pub encrypted_sha256: String,
    /// Bytes of the encrypted file.
    pub encrypted_size: u64,
}

/// Encrypts the zip at `input` into `output` with a new session key, hashing both sides on the
/// way (one pass over the plaintext for its hash, one to encrypt).
pub fn encrypt_zip(
    input: &Path,
    output: &Path,
    key: &SigningKey,
    format: ChecksumFormat,
) -> Result<EncryptedZip, CryptoError> {
    let open = |path: &Path| {
        std::fs::File::open(path).map_err(CryptoError::io(format!("cannot read {}", path.display())))
    };
    let plaintext_sha256 = sha256_of(open(input)?)?;
    let session = SessionKey::generate();
    let file = std::fs::File::create(output)
        .map_err(CryptoError::io(format!("cannot create {}", output.display())))?;
    let mut sink = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
    };
    let encrypted_size = session.encrypt(std::io::BufReader::new(open(input)?), &mut sink)?;
    sink.inner
        .into_inner()
        .map_err(|e| CryptoError::io(format!("cannot write {}", output.display()))(e.into_error()))?
        .sync_all()
        .map_err(CryptoError::io(format!("cannot write {}", output.display())))?;
    Ok(EncryptedZip {
        encryption: BundleEncryption {
            session_key: session.seal(key)?,
            encrypted_checksum: encrypt_checksum(&plaintext_sha256, key, format)?,
        },
        plaintext_sha256,
        encrypted_sha256: hex::encode(sink.hasher.finalize()),
        encrypted_size,
    })
}

/// Encrypts one delta file as Capgo's CLI does for the plugin: Brotli first when `brotli` (the
/// manifest then names it `<name>.br`), then AES with the bundle's session key; returns the
/// manifest's `file_hash` for it, the SHA-256 of the original content encrypted like the zip's
/// checksum.
pub fn encrypt_manifest_file<R: Read, W: Write>(
    session: &SessionKey,
    key: &SigningKey,
    format: ChecksumFormat,
    content: R,
    brotli: bool,
    writer: W,
) -> Result<String, CryptoError> {
    let mut hashing = HashingReader {
        inner: content,
        hasher: Sha256::new(),
    };
    if brotli {
        // Quality 6 and a 1 MiB window, as the sync compresses files.
        let compressed = ::brotli::CompressorReader::new(&mut hashing, 64 * 1024, 6, 20);
        session.encrypt(compressed, writer)?;
    } else {
        session.encrypt(&mut hashing, writer)?;
    }
    let sha256 = hex::encode(hashing.hasher.finalize());
    encrypt_checksum(&sha256, key, format)
}

/// A reader that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// Lower-case hex SHA-256 of everything `reader` yields.
pub fn sha256_of<R: Read>(mut reader: R) -> Result<String, CryptoError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = read_some(&mut reader, &mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

/// A writer that hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
