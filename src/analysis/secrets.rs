//! Where the providers read the header values a metric takes from a Secret: the cluster's
//! Secrets for the controller ([`KubeSecrets`]), the folder's `kind: Secret` documents for
//! standalone mode ([`FolderSecrets`]). A Secret's value never appears in an error or a log.

use std::{collections::HashMap, future::Future, sync::Arc};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// Reads one key of a Secret in a Rollout's namespace.
pub trait SecretSource: Send + Sync {
    /// The value of `key` in Secret `name` of `namespace`.
    fn secret_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<u8>, SecretError>> + Send;
}

/// Why a Secret gave no value. The messages name the Secret and the key, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No such Secret.
    #[error("Secret {namespace}/{name} does not exist")]
    Missing {
        /// The Rollout's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// The Secret has no such key.
    #[error("Secret {namespace}/{name} has no key {key}")]
    NoKey {
        /// The Rollout's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The key.
        key: String,
    },
    /// The Secret could not be read (the API server's error); a later read may pass.
    #[error("cannot read Secret {namespace}/{name}: {reason}")]
    Unreadable {
        /// The Rollout's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The client's error.
        reason: String,
    },
}

/// The cluster's Secrets, read one by one with a GET at each measurement (the chart's role may
/// `get` Secrets, not list or watch them), so a rotated token is used at once.
#[derive(Clone)]
pub struct KubeSecrets {
    client: Client,
}

impl KubeSecrets {
    /// Reads Secrets through `client`.
    pub fn new(client: Client) -> KubeSecrets {
        KubeSecrets { client }
    }
}

impl std::fmt::Debug for KubeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecrets").finish_non_exhaustive()
    }
}

impl SecretSource for KubeSecrets {
    async fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|error| SecretError::Unreadable {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                reason: crate::error_chain::error_chain(&error),
            })?
            .ok_or_else(|| SecretError::Missing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        // The API server folds `stringData` into `data`; a Secret read back has `data` only.
        secret
            .data
            .and_then(|mut data| data.remove(key))
            .map(|value| value.0)
            .ok_or_else(|| SecretError::NoKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key: key.to_owned(),
            })
    }
}

/// One Secret's keys and values (its `Debug` shows the keys only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData {
    values: HashMap<String, Vec<u8>>,
}

impl SecretData {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    /// Sets `key` (a later value of a key replaces an earlier one, as `stringData` does `data`).
    pub fn insert(&mut self, key: String, value: Vec<u8>) {
        self.values.insert(key, value);
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.values.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }
}

impl FromIterator<(String, Vec<u8>)> for SecretData {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(iter: I) -> Self {
        SecretData {
            values: iter.into_iter().collect(),
        }
    }
}

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData").field("keys", &self.keys()).finish()
    }
}

/// Secrets by namespace and name.
pub type SecretMap = HashMap<(String, String), SecretData>;

/// The Secret documents of standalone mode's folder as the last read found them. Clones share
/// them: the folder replaces them at each read ([`FolderSecrets::replace`]), the providers read
/// the current ones.
#[derive(Clone, Default)]
pub struct FolderSecrets {
    current: Arc<ArcSwap<SecretMap>>,
}

impl FolderSecrets {
    /// No Secrets yet.
    pub fn new() -> FolderSecrets {
        FolderSecrets::default()
    }

    /// Replaces the Secrets with those of a new read of the folder.
    pub fn replace(&self, secrets: SecretMap) {
        self.current.store(Arc::new(secrets));
    }
}

impl std::fmt::Debug for FolderSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The names only: the values are secret.
        let current = self.current.load();
        let mut names: Vec<String> = current.keys().map(|(ns, name)| format!("{ns}/{name}")).collect();
        names.sort();
        f.debug_struct("FolderSecrets").field("secrets", &names).finish()
    }
}

impl SecretSource for FolderSecrets {
    async fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
        let current = self.current.load();
        let secret = current
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| SecretError::Missing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        secret
            .get(key)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| SecretError::NoKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key: key.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn folder_secrets_give_the_current_value_and_name_what_is_missing() {
        let secrets = FolderSecrets::new();
        let reader = secrets.clone();
        assert_eq!(
            reader.secret_value("default", "prometheus", "token").await,
            Err(SecretError::Missing {
                namespace: "default".into(),
                name: "prometheus".into()
            })
        );
        let data = SecretData::from_iter([("token".to_owned(), b"s3cr3t".to_vec())]);
        secrets.replace(SecretMap::from([(("default".into(), "prometheus".into()), data)]));
        assert_eq!(
            reader.secret_value("default", "prometheus", "token").await,
            Ok(b"s3cr3t".to_vec())
        );
        let missing_key = reader
            .secret_value("default", "prometheus", "password")
            .await
            .expect_err("no such key");
        assert_eq!(
            missing_key.to_string(),
            "Secret default/prometheus has no key password"
        );
        // Another namespace's Secret of the same name is another Secret.
        assert!(reader.secret_value("shop", "prometheus", "token").await.is_err());
        assert!(!format!("{reader:?}").contains("s3cr3t"));
    }
}
