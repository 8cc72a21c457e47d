//! Secret values for object storage, by key name, that never show in logs, errors or `Debug`.

use std::{collections::BTreeMap, fmt};

/// Key of the S3 access key id.
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Key of the S3 secret access key.
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Key of an optional S3 session token (temporary credentials).
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// Key of a Google Cloud service-account JSON key.
pub const GOOGLE_SERVICE_ACCOUNT_KEY: &str = "GOOGLE_SERVICE_ACCOUNT_KEY";
/// Key of an Azure storage account key (base64).
pub const AZURE_STORAGE_ACCOUNT_KEY: &str = "AZURE_STORAGE_ACCOUNT_KEY";

/// Every key [`Credentials::from_env`] reads.
pub const KNOWN_KEYS: [&str; 5] = [
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    GOOGLE_SERVICE_ACCOUNT_KEY,
    AZURE_STORAGE_ACCOUNT_KEY,
];

/// Resolved secret values by key name: what the Secret named in a storage backend's
/// `credentialsSecretRef` holds (the controller reads it), or the process environment
/// (standalone mode and the CLI).
///
/// `Debug` shows the key names only; there is deliberately no `Display` and no `Serialize`.
/// Empty values count as absent.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    values: BTreeMap<String, String>,
}

impl Credentials {
    /// No credentials: every backend falls back to the workload's identity (its default
    /// credential chain).
    pub fn none() -> Self {
        Self::default()
    }

    /// The values of [`KNOWN_KEYS`] in the process environment (unset, empty and non-UTF-8
    /// variables are left out).
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// The values of [`KNOWN_KEYS`] that `lookup` finds (for tests and other sources).
    pub fn from_lookup(mut lookup: impl FnMut(&str) -> Option<String>) -> Self {
        Self::from_map(
            KNOWN_KEYS
                .iter()
                .filter_map(|key| lookup(key).map(|value| ((*key).to_owned(), value)))
                .collect(),
        )
    }

    /// Credentials from a map of key name to value, such as the decoded `data` of a Secret.
    /// Keys other than [`KNOWN_KEYS`] are kept (and ignored by the backends); empty values are
    /// dropped.
    pub fn from_map(values: BTreeMap<String, String>) -> Self {
        Self {
            values: values
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .collect(),
        }
    }

    /// The value of `key`, if set and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The names of the keys that have a value.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// `text` with every secret value of at least four characters replaced by `[REDACTED]`, a
    /// last line of defence for messages that quote something a backend echoed.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (key, value) in &self.values {
            // The access key id is an identifier, not a secret (servers echo it in errors).
            if key == AWS_ACCESS_KEY_ID || value.len() < 4 {
                continue;
            }
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), "[REDACTED]");
            }
            // A multi-line value (a PEM key inside a JSON key) could be quoted line by line.
            for line in value.lines().map(str::trim).filter(|line| line.len() >= 16) {
                if out.contains(line) {
                    out = out.replace(line, "[REDACTED]");
                }
            }
        }
        out
    }
}

/// Shows the key names and hides the values: `Credentials { AWS_ACCESS_KEY_ID: "<redacted>" }`.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for key in self.values.keys() {
            map.entry(&key, &format_args!("<redacted>"));
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Credentials {
        Credentials::from_map(BTreeMap::from([
            (AWS_ACCESS_KEY_ID.to_owned(), "AKIDEXAMPLE".to_owned()),
            (
                AWS_SECRET_ACCESS_KEY.to_owned(),
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
            ),
            (AWS_SESSION_TOKEN.to_owned(), String::new()),
        ]))
    }

    #[test]
    fn debug_shows_key_names_but_never_values() {
        let text = format!("{:?} {:#?}", sample(), sample());
        assert!(text.contains(AWS_ACCESS_KEY_ID), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains("AKIDEXAMPLE"), "{text}");
        assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
    }

    #[test]
    fn empty_values_are_absent() {
        let credentials = sample();
        assert_eq!(credentials.get(AWS_SESSION_TOKEN), None);
        assert_eq!(credentials.get(AWS_ACCESS_KEY_ID), Some("AKIDEXAMPLE"));
        assert_eq!(
            credentials.keys().collect::<Vec<_>>(),
            [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]
        );
        assert!(Credentials::none().is_empty());
    }

    #[test]
    fn lookup_reads_only_known_keys() {
        let credentials = Credentials::from_lookup(|key| match key {
            GOOGLE_SERVICE_ACCOUNT_KEY => Some("{}".to_owned()),
            AZURE_STORAGE_ACCOUNT_KEY => Some(String::new()),
            _ => None,
        });
        assert_eq!(
            credentials.keys().collect::<Vec<_>>(),
            [GOOGLE_SERVICE_ACCOUNT_KEY]
        );
    }

    #[test]
    fn redact_removes_secret_values_and_pem_lines() {
        let credentials = sample();
        let message =
            credentials.redact("signed with wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY by AKIDEXAMPLE");
        assert_eq!(message, "signed with [REDACTED] by AKIDEXAMPLE");
        let pem = Credentials::from_map(BTreeMap::from([(
            GOOGLE_SERVICE_ACCOUNT_KEY.to_owned(),
            "{\"private_key\": \"-----BEGIN\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END\"}".to_owned(),
        )]));
        assert_eq!(
            pem.redact("bad line MIIEvQIBADANBgkqhkiG9w0BAQEFAASC here"),
            "bad line [REDACTED] here"
        );
    }
}
