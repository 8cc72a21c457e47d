//! The cloud storage emulators of the integration tests, and App storage specs pointing at them:
//! fake-gcs-server for Google Cloud Storage (tests/gcs/gcs.sh) and Azurite for Azure Blob Storage
//! (tests/azure/azure.sh). Each is started once per test binary through its script unless its
//! `OTA_TEST_GCS_*` / `OTA_TEST_AZURE_*` variables are set (tests/run.sh sets them); a test that
//! needs one never skips, and fails with the reason when it cannot be started.
//!
//! What each emulator checks: Azurite checks Shared Key signatures on requests and SAS
//! signatures in URLs against the account key. fake-gcs-server checks no credentials at all, so
//! GCS tests prove the requests and the signed URLs' form (the signature itself is made locally
//! with a throwaway RSA key, as a real service-account key would make it).
//!
//! A test binary that uses this module declares `mod support;` as well.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::{collections::BTreeMap, process::Command, sync::OnceLock};

use ota_operator::{
    api::{
        app::{AzureStorage, GcsStorage, StorageSpec},
        common::SecretReference,
    },
    storage::{AZURE_STORAGE_ACCOUNT_KEY, Credentials, GOOGLE_SERVICE_ACCOUNT_KEY},
};

use crate::support::started_by;

/// The variables of the GCS emulator (tests/gcs/gcs.sh), in the order `started_by` checks them.
pub const GCS_KEYS: [&str; 2] = ["OTA_TEST_GCS_ENDPOINT", "OTA_TEST_GCS_BUCKET"];

/// The variables of the Azure Blob emulator (tests/azure/azure.sh).
pub const AZURE_KEYS: [&str; 4] = [
    "OTA_TEST_AZURE_ENDPOINT",
    "OTA_TEST_AZURE_ACCOUNT",
    "OTA_TEST_AZURE_ACCOUNT_KEY",
    "OTA_TEST_AZURE_CONTAINER",
];

/// The running fake-gcs-server.
pub struct Gcs {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// A bucket that exists.
    pub bucket: String,
}

/// The running Azurite blob service.
pub struct Azure {
    /// `http://127.0.0.1:<port>/<account>` (path-style addressing).
    pub endpoint: String,
    /// The storage account.
    pub account: String,
    /// The account key (base64), random per start.
    pub account_key: String,
    /// A container that exists.
    pub container: String,
}

/// fake-gcs-server, started once per test binary.
pub fn gcs() -> &'static Gcs {
    static SERVER: OnceLock<Gcs> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut env = started_by("tests/gcs/gcs.sh", &GCS_KEYS);
        let mut take = |key: &str| env.remove(key).expect("started_by returns every key");
        Gcs {
            endpoint: take("OTA_TEST_GCS_ENDPOINT"),
            bucket: take("OTA_TEST_GCS_BUCKET"),
        }
    })
}

/// Azurite, started once per test binary.
pub fn azure() -> &'static Azure {
    static SERVER: OnceLock<Azure> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut env = started_by("tests/azure/azure.sh", &AZURE_KEYS);
        let mut take = |key: &str| env.remove(key).expect("started_by returns every key");
        Azure {
            endpoint: take("OTA_TEST_AZURE_ENDPOINT"),
            account: take("OTA_TEST_AZURE_ACCOUNT"),
            account_key: take("OTA_TEST_AZURE_ACCOUNT_KEY"),
            container: take("OTA_TEST_AZURE_CONTAINER"),
        }
    })
}

fn secret(name: &str) -> Option<SecretReference> {
    Some(SecretReference {
        name: name.to_owned(),
    })
}

/// GCS storage on the emulator under `prefix`, its key in a Secret.
pub fn gcs_spec(prefix: &str) -> StorageSpec {
    let server = gcs();
    StorageSpec {
        gcs: Some(GcsStorage {
            bucket: server.bucket.clone(),
            endpoint: Some(server.endpoint.clone()),
            credentials_secret_ref: secret("gcs-key"),
        }),
        prefix: Some(prefix.to_owned()),
        ..StorageSpec::default()
    }
}

/// Azure Blob storage on the emulator under `prefix`, its key in a Secret.
pub fn azure_spec(prefix: &str) -> StorageSpec {
    let server = azure();
    StorageSpec {
        azure: Some(AzureStorage {
            account: server.account.clone(),
            container: server.container.clone(),
            endpoint: Some(server.endpoint.clone()),
            credentials_secret_ref: secret("azure-key"),
        }),
        prefix: Some(prefix.to_owned()),
        ..StorageSpec::default()
    }
}

/// One credential, as a Secret with one key would give it.
pub fn one_credential(key: &str, value: &str) -> Credentials {
    Credentials::from_map(BTreeMap::from([(key.to_owned(), value.to_owned())]))
}

/// The emulator's account key.
pub fn azure_credentials() -> Credentials {
    one_credential(AZURE_STORAGE_ACCOUNT_KEY, &azure().account_key)
}

/// A throwaway service-account JSON key (a fresh RSA key, made once per test binary).
pub fn gcs_service_account_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        serde_json::json!({
            "type": "service_account",
            "client_email": "ota@example-project.iam.gserviceaccount.com",
            "private_key_id": "0123456789abcdef",
            "private_key": rsa_private_key_pem(),
        })
        .to_string()
    })
}

/// The throwaway service-account key.
pub fn gcs_credentials() -> Credentials {
    one_credential(GOOGLE_SERVICE_ACCOUNT_KEY, gcs_service_account_key())
}

/// A fresh RSA key (PKCS#8 PEM) from the openssl command line.
pub fn rsa_private_key_pem() -> String {
    let output = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed to make a test service-account key: {e}"));
    assert!(
        output.status.success(),
        "openssl genpkey failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("a PEM key")
}

/// The host every GCS signed URL is signed for: object_store puts `host:storage.googleapis.com`
/// in the canonical request whatever the endpoint (see `GcsStorage::endpoint`).
pub const GCS_SIGNING_HOST: &str = "storage.googleapis.com";

/// Whether a GCS V4 signed GET URL carries a valid signature by the throwaway service-account
/// key ([`gcs_service_account_key`]), checked as Google's servers check it (the canonical
/// request of the URL's path and query with the host [`GCS_SIGNING_HOST`], its SHA-256 in the
/// string to sign, RSA PKCS#1 v1.5 with SHA-256), with the openssl command line: fake-gcs-server
/// accepts any signature, so this is where a GCS signature is checked.
pub fn gcs_signature_verifies(url: &str) -> bool {
    use sha2::{Digest, Sha256};

    // The strict percent-encoding of canonical query strings: only unreserved bytes are kept.
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    let url = url::Url::parse(url).expect("a URL");
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let take = |pairs: &[(String, String)], name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {url}"))
    };
    let signature = hex::decode(take(&pairs, "X-Goog-Signature")).expect("a hex signature");
    let date = take(&pairs, "X-Goog-Date");
    let credential = take(&pairs, "X-Goog-Credential");
    let scope = credential
        .split_once('/')
        .map(|(_, scope)| scope.to_owned())
        .expect("a credential scope");
    pairs.retain(|(k, _)| k != "X-Goog-Signature");
    let mut query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    query.sort();
    let canonical_request = format!(
        "GET\n{}\n{}\nhost:{GCS_SIGNING_HOST}\n\nhost\nUNSIGNED-PAYLOAD",
        url.path(),
        query.join("&")
    );
    let string_to_sign = format!(
        "GOOG4-RSA-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );

    let key: serde_json::Value = serde_json::from_str(gcs_service_account_key()).expect("JSON");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("a temporary file");
        path
    };
    let private = write("key.pem", key["private_key"].as_str().expect("a PEM").as_bytes());
    let public = dir.path().join("public.pem");
    let derived = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl");
    assert!(derived.success(), "openssl pkey -pubout failed");
    let signature = write("signature.bin", &signature);
    let message = write("message.txt", string_to_sign.as_bytes());
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&public)
        .arg("-signature")
        .arg(&signature)
        .arg(&message)
        .output()
        .expect("openssl dgst")
        .status
        .success()
}
