//! Round trips through the plugin's algorithm ([`super::plugin`]), and every bad input.

use std::io::Write;

use super::{plugin::*, *};

const PRIVATE: &str = include_str!("../../tests/fixtures/keys/app.key");
const PUBLIC: &str = include_str!("../../tests/fixtures/keys/app.key.pub");
const OTHER_PRIVATE: &str = include_str!("../../tests/fixtures/keys/other.key");
const OTHER_PUBLIC: &str = include_str!("../../tests/fixtures/keys/other.key.pub");
const SMALL_PRIVATE: &str = include_str!("../../tests/fixtures/keys/small.key");

fn signing() -> SigningKey {
    SigningKey::from_pem(PRIVATE).expect("the test key")
}

fn verifying() -> VerifyingKey {
    VerifyingKey::from_pem(PUBLIC).expect("the test public key")
}

/// Deterministic bytes that do not compress (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    sha256_of(bytes).unwrap()
}

#[test]
fn the_public_key_of_the_private_key_is_the_one_in_the_config() {
    assert_eq!(signing().verifying_key(), verifying());
    assert_eq!(verifying().to_pem().unwrap().trim(), PUBLIC.trim());
    assert_eq!(config_public_key(PUBLIC).unwrap(), verifying());
}

#[test]
fn generated_pairs_are_pkcs1_pem_and_match() {
    let pair = generate_key_pair().unwrap();
    assert!(pair.private_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
    assert!(pair.public_pem.starts_with("-----BEGIN RSA PUBLIC KEY-----\n"));
    let signing = SigningKey::from_pem(&pair.private_pem).unwrap();
    assert_eq!(
        signing.verifying_key(),
        VerifyingKey::from_pem(&pair.public_pem).unwrap()
    );
    // The key id devices send starts with the PKCS#1 header of a 2048-bit key.
    let id = super::key_id(&pair.public_pem).unwrap();
    assert!(id.starts_with("MIIBCgKCAQEA"), "{id}");
    assert!(!format!("{pair:?}").contains("PRIVATE"));
}

#[test]
fn aes_round_trips_at_every_length_around_the_block_and_chunk_sizes() {
    let session = SessionKey::generate();
    for len in [
        0,
        1,
        15,
        16,
        17,
        31,
        32,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        3 * CHUNK + 7,
    ] {
        let plain = noise(len, len as u64);
        let mut sealed = Vec::new();
        let written = session.encrypt(plain.as_slice(), &mut sealed).unwrap();
        assert_eq!(written as usize, sealed.len());
        assert_eq!(sealed.len(), (len / 16 + 1) * 16, "PKCS#7 adds 1 to 16 bytes");
        let mut opened = Vec::new();
        session.decrypt(sealed.as_slice(), &mut opened).unwrap();
        assert_eq!(opened, plain, "length {len}");
    }
}

#[test]
fn aes_matches_a_published_test_vector() {
    // NIST SP 800-38A, F.2.1 (CBC-AES128.Encrypt), first block; PKCS#7 then adds a full block.
    let key: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
        .unwrap()
        .try_into()
        .unwrap();
    let iv: [u8; 16] = hex::decode("000102030405060708090a0b0c0d0e0f")
        .unwrap()
        .try_into()
        .unwrap();
    let plain = hex::decode("6bc1bee22e409f96e93d7e117393172a").unwrap();
    let mut sealed = Vec::new();
    SessionKey::from_parts(key, iv)
        .encrypt(plain.as_slice(), &mut sealed)
        .unwrap();
    assert_eq!(hex::encode(&sealed[..16]), "7649abac8119b246cee98e9b12e9197d");
}

#[test]
fn session_keys_open_on_the_device_with_the_public_key() {
    let session = SessionKey::generate();
    let sealed = session.seal(&signing()).unwrap();
    let (iv, key) = sealed.split_once(':').unwrap();
    assert_eq!(BASE64.decode(iv).unwrap().len(), 16);
    assert_eq!(BASE64.decode(key).unwrap().len(), 256);
    assert_eq!(device_session_key(&sealed, &verifying()).unwrap(), session);
    assert_eq!(SessionKey::open(&sealed, &verifying()).unwrap(), session);
}

#[test]
fn a_zip_round_trips_through_the_device_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("bundle.zip");
    let plain = noise(200_000, 7);
    std::fs::write(&zip, &plain).unwrap();
    let encrypted = dir.path().join("bundle.enc");
    let result = encrypt_zip(&zip, &encrypted, &signing(), ChecksumFormat::Hex).unwrap();
    assert_eq!(result.plaintext_sha256, sha(&plain));
    let ciphertext = std::fs::read(&encrypted).unwrap();
    assert_eq!(result.encrypted_sha256, sha(&ciphertext));
    assert_eq!(result.encrypted_size, ciphertext.len() as u64);
    assert_eq!(result.encryption.encrypted_checksum.len(), 512);
    assert_ne!(&ciphertext[..16], &plain[..16]);

    let out = dir.path().join("device.zip");
    let computed = device_verify_zip(
        PUBLIC,
        &result.encryption.session_key,
        &result.encryption.encrypted_checksum,
        &encrypted,
        &out,
    )
    .unwrap();
    assert_eq!(computed, sha(&plain));
    assert_eq!(std::fs::read(&out).unwrap(), plain);

    // The server's check: both RSA blocks open with the App's public key.
    let verified = verify_bundle_signature(PUBLIC, &result.encryption, Some(&sha(&plain))).unwrap();
    assert_eq!(verified.format, ChecksumFormat::Hex);
    assert!(matches!(
        verify_bundle_signature(PUBLIC, &result.encryption, Some(&"0".repeat(64))),
        Err(CryptoError::ChecksumMismatch { .. })
    ));
}

#[test]
fn legacy_checksums_open_on_legacy_plugins_and_not_on_current_ones() {
    let digest = sha(b"bundle");
    let legacy = encrypt_checksum(&digest, &signing(), ChecksumFormat::Base64).unwrap();
    assert!(!legacy.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(legacy_decrypt_checksum(&legacy, &verifying()).unwrap(), digest);
    assert_eq!(
        open_checksum(&legacy, &verifying()).unwrap(),
        (digest.clone(), ChecksumFormat::Base64)
    );
    // A current plugin prints the 48 opened bytes as 96 hex characters: never the digest.
    let current = device_decrypt_checksum(&legacy, &verifying()).unwrap();
    assert_eq!(current.len(), 96);
    assert_ne!(current, digest);
}

#[test]
fn delta_files_round_trip_raw_and_brotli() {
    let session = SessionKey::generate();
    let sealed_session = session.seal(&signing()).unwrap();
    let text = "export const a = 1;\n".repeat(2000).into_bytes();
    for (name, brotli) in [("assets/app.js.br", true), ("assets/logo.bin", false)] {
        let mut encrypted = Vec::new();
        let file_hash = encrypt_manifest_file(
            &session,
            &signing(),
            ChecksumFormat::Hex,
            text.as_slice(),
            brotli,
            &mut encrypted,
        )
        .unwrap();
        if brotli {
            assert!(encrypted.len() < text.len() / 4, "compressed before encryption");
        }
        let content =
            device_verify_manifest_file(PUBLIC, &sealed_session, name, &file_hash, &encrypted).unwrap();
        assert_eq!(content, text);
        // The wrong name (no .br on a compressed file) fails the hash, as on a device.
        if brotli {
            assert!(matches!(
                device_verify_manifest_file(PUBLIC, &sealed_session, "assets/app.js", &file_hash, &encrypted),
                Err(DeviceRefusal::ChecksumFail { .. })
            ));
        }
    }
}

#[test]
fn the_wrong_public_key_is_refused_everywhere() {
    let session = SessionKey::generate();
    let sealed = session.seal(&signing()).unwrap();
    let other = VerifyingKey::from_pem(OTHER_PUBLIC).unwrap();
    assert!(matches!(
        device_session_key(&sealed, &other),
        Err(DeviceRefusal::Crypto(CryptoError::WrongKey { .. }))
    ));
    let checksum = encrypt_checksum(&sha(b"x"), &signing(), ChecksumFormat::Hex).unwrap();
    assert!(matches!(
        device_decrypt_checksum(&checksum, &other),
        Err(DeviceRefusal::Crypto(CryptoError::WrongKey { .. }))
    ));
    let encryption = BundleEncryption {
        session_key: sealed,
        encrypted_checksum: checksum,
    };
    let error = verify_bundle_signature(OTHER_PUBLIC, &encryption, None).unwrap_err();
    assert!(
        error.to_string().contains("not made with the private key"),
        "{error}"
    );
    // Signed by another private key: the same.
    let forged = BundleEncryption {
        session_key: SessionKey::generate()
            .seal(&SigningKey::from_pem(OTHER_PRIVATE).unwrap())
            .unwrap(),
        ..encryption
    };
    assert!(verify_bundle_signature(PUBLIC, &forged, None).is_err());
}

#[test]
fn a_wrong_session_key_gives_bad_padding_or_garbage_never_the_plaintext() {
    let plain = noise(5000, 3);
    let right = SessionKey::generate();
    let mut sealed = Vec::new();
    right.encrypt(plain.as_slice(), &mut sealed).unwrap();
    let wrong = SessionKey::generate();
    let mut out = Vec::new();
    match wrong.decrypt(sealed.as_slice(), &mut out) {
        Err(CryptoError::BadPadding) => {}
        Ok(_) => assert_ne!(out, plain),
        Err(other) => panic!("unexpected {other}"),
    }
}

#[test]
fn truncated_and_altered_ciphertext_is_refused() {
    let session = SessionKey::generate();
    let mut sealed = Vec::new();
    session
        .encrypt(&b"hello, device: a bundle"[..], &mut sealed)
        .unwrap();
    assert_eq!(sealed.len(), 32);
    for cut in [0, 1, 15, 17, 31] {
        let error = session.decrypt(&sealed[..cut], Vec::new()).unwrap_err();
        assert!(matches!(error, CryptoError::Truncated(_)), "cut {cut}: {error}");
    }
    // In CBC a flipped bit in the block before the last flips the same bit of the
    // last plaintext block: the final padding byte 0x09 becomes 0x08, which is
    // always bad padding. (Altering the last block itself garbles it at random and
    // leaves valid padding about once in 256 runs.)
    let mut altered = sealed.clone();
    altered[15] ^= 0x01;
    assert!(matches!(
        session.decrypt(altered.as_slice(), Vec::new()),
        Err(CryptoError::BadPadding)
    ));
    // Empty input on the device: refused, never an empty bundle.
    assert!(decrypt_download(&session, &[][..], Vec::new()).is_err());
}

#[test]
fn malformed_session_keys_get_clear_errors() {
    let key = verifying();
    let good = SessionKey::generate().seal(&signing()).unwrap();
    let (iv, sealed) = good.split_once(':').unwrap();
    let short_iv = BASE64.encode([0u8; 8]);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "no ':'"),
        ("abc".into(), "no ':'"),
        (format!("{iv}:{sealed}:x"), "more than one"),
        (format!("!!!:{sealed}"), "IV is not base64"),
        (format!("{short_iv}:{sealed}"), "8 bytes, not 16"),
        (format!("{iv}:%%%"), "not base64"),
        (format!("{iv}:{}", BASE64.encode([1u8; 10])), "10 bytes, not 256"),
        (
            format!("{iv}:{}", BASE64.encode([0x7fu8; 256])),
            "not made with the private key",
        ),
    ];
    for (input, needle) in cases {
        let error = SessionKey::open(&input, &key).unwrap_err().to_string();
        assert!(error.contains(needle), "{input:?}: {error}");
        assert!(!error.contains('\n'));
    }
    for bad in ["", "abc", "abc:", ":", &format!("{short_iv}:{sealed}")] {
        assert!(device_session_key(bad, &key).is_err(), "{bad:?}");
    }
}

#[test]
fn malformed_checksums_get_clear_errors() {
    let key = verifying();
    for (input, needle) in [
        ("", "not one 256-byte RSA block"),
        ("abc", "odd-length"),
        (&*"ab".repeat(32), "32 bytes, not one 256-byte"),
        (&*"ff".repeat(256), "not made with the private key"),
        ("@@@", "neither hex nor base64"),
    ] {
        let error = open_checksum(input, &key).unwrap_err().to_string();
        assert!(error.contains(needle), "{input:?}: {error}");
    }
    assert!(device_decrypt_checksum(&"ab".repeat(32), &key).is_err());
    assert!(device_decrypt_checksum("", &key).is_err());
    assert!(encrypt_checksum("ABC", &signing(), ChecksumFormat::Hex).is_err());
}

#[test]
fn bad_keys_get_clear_errors() {
    for (input, needle) in [
        ("", "no -----BEGIN RSA PRIVATE KEY-----"),
        (PUBLIC, "this is a public key"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----",
            "PKCS#1 or PKCS#8",
        ),
        (SMALL_PRIVATE, "1024 bits"),
    ] {
        let error = SigningKey::from_pem(input).unwrap_err().to_string();
        assert!(error.contains(needle), "{error}");
    }
    for (input, needle) in [
        ("", "no -----BEGIN RSA PUBLIC KEY----- header"),
        (PRIVATE, "this is a private key"),
        (
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "header",
        ),
        (
            "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----",
            "PKCS#1 PEM",
        ),
    ] {
        let error = VerifyingKey::from_pem(input).unwrap_err().to_string();
        assert!(error.contains(needle), "{error}");
    }
    assert!(matches!(
        config_public_key("MIIB"),
        Err(DeviceRefusal::NotDecrypted(_))
    ));
    // PKCS#8 private keys are read too.
    let pkcs8 = {
        use rsa::pkcs8::EncodePrivateKey;
        signing().0.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    };
    assert_eq!(SigningKey::from_pem(&pkcs8).unwrap().verifying_key(), verifying());
}

#[test]
fn the_device_refuses_a_checksum_that_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("a.zip");
    std::fs::File::create(&zip)
        .unwrap()
        .write_all(b"plaintext")
        .unwrap();
    let encrypted = dir.path().join("a.enc");
    let result = encrypt_zip(&zip, &encrypted, &signing(), ChecksumFormat::Hex).unwrap();
    let other_checksum = encrypt_checksum(&sha(b"something else"), &signing(), ChecksumFormat::Hex).unwrap();
    let out = dir.path().join("out");
    let error = device_verify_zip(
        PUBLIC,
        &result.encryption.session_key,
        &other_checksum,
        &encrypted,
        &out,
    )
    .unwrap_err();
    assert!(matches!(error, DeviceRefusal::ChecksumFail { .. }), "{error}");
    let error = device_verify_zip(PUBLIC, &result.encryption.session_key, "", &encrypted, &out).unwrap_err();
    assert!(matches!(error, DeviceRefusal::ChecksumRequired), "{error}");
}
