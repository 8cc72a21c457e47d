//! Reading the four kinds, and the Secrets their analysis metrics take header values from,
//! from a folder of YAML, as `kubectl apply -f DIR` would: every `*.yaml`/`*.yml` file, every
//! document in it. An invalid document is reported and skipped, never fatal.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::SystemTime,
};

use base64::Engine;
use serde_json::Value;

use crate::{
    analysis::{SecretData, SecretMap},
    api::{App, Bundle, Channel, Rollout},
};

/// The namespace objects without one are put in (so that references resolve as in a cluster).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The objects read from a folder.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Apps.
    pub apps: Vec<App>,
    /// Channels.
    pub channels: Vec<Channel>,
    /// Bundles, with the folder of the file each came from (relative `source.path` is resolved
    /// against it).
    pub bundles: Vec<(Bundle, PathBuf)>,
    /// Rollouts.
    pub rollouts: Vec<Rollout>,
    /// Secrets (`apiVersion: v1`, `kind: Secret`), by namespace and name: their `data`
    /// (base64) and `stringData` (plain text, taking precedence, as the API server does).
    pub secrets: SecretMap,
    /// Documents that were skipped, and why.
    pub problems: Vec<String>,
}

/// Why a folder could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct LoadError {
    /// The folder or file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// The YAML files of a folder (recursively, sorted), skipping hidden entries.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|source| LoadError {
            path: folder.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError {
                path: folder.clone(),
                source,
            })?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A fingerprint of the folder's YAML files (paths, sizes and modification times): when it
/// changes, the folder is read again.
pub fn fingerprint(dir: &Path) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>, LoadError> {
    yaml_files(dir)?
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).map_err(|source| LoadError {
                path: path.clone(),
                source,
            })?;
            Ok((path, meta.len(), meta.modified().ok()))
        })
        .collect()
}

/// An object's identity: kind, namespace, name.
type ObjectKey = (String, String, String);

/// Reads a folder again and again, remembering the last version of each object it accepted, so
/// that an edited document is checked as an update of it (the CRDs' transition rules, such as an
/// immutable `sha256`), as `kubectl apply` of the edited file would be. An object whose update is
/// refused keeps its accepted version, which goes on being served (as the API server goes on
/// serving the object a refused `kubectl apply` left alone); one whose documents are gone is
/// forgotten (as deleted).
#[derive(Debug, Default)]
pub struct Loader {
    accepted: HashMap<ObjectKey, Accepted>,
}

/// An accepted document, with the folder of the file it came from.
#[derive(Clone)]
struct Accepted {
    document: Value,
    folder: PathBuf,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the document: it may be a Secret.
        f.debug_struct("Accepted")
            .field("folder", &self.folder)
            .finish_non_exhaustive()
    }
}

/// Reads every object of a folder, with no earlier version of any.
pub fn load(dir: &Path) -> Result<Loaded, LoadError> {
    Loader::default().load(dir)
}

/// One read of the folder.
struct Pass<'a> {
    loaded: Loaded,
    /// The documents accepted in this read.
    seen: HashMap<ObjectKey, Accepted>,
    /// The objects that have a document in this read that was refused.
    refused: HashSet<ObjectKey>,
    /// The versions accepted by earlier reads.
    earlier: &'a HashMap<ObjectKey, Accepted>,
}

impl Loader {
    /// Reads every object of a folder. A document is checked as the API server would check it
    /// ([`super::validate`]): against the version of the same object earlier in the folder, or
    /// else the one this loader accepted last time, as an update.
    pub fn load(&mut self, dir: &Path) -> Result<Loaded, LoadError> {
        let mut pass = Pass {
            loaded: Loaded::default(),
            seen: HashMap::new(),
            refused: HashSet::new(),
            earlier: &self.accepted,
        };
        for path in yaml_files(dir)? {
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError {
                path: path.clone(),
                source,
            })?;
            let shown = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
            let documents: Vec<Value> = match serde_saphyr::from_multiple(&text) {
                Ok(documents) => documents,
                Err(error) => {
                    pass.loaded
                        .problems
                        .push(format!("{shown}: not valid YAML: {error}"));
                    continue;
                }
            };
            let folder = path.parent().unwrap_or(dir).to_owned();
            for (index, document) in documents.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
                if let Err(problem) = pass.add_document(document, &folder) {
                    pass.loaded
                        .problems
                        .push(format!("{shown}: document {}: {problem}", index + 1));
                }
            }
        }
        let Pass {
            mut loaded,
            mut seen,
            refused,
            ..
        } = pass;
        for key in refused {
            if !seen.contains_key(&key)
                && let Some(kept) = self.accepted.remove(&key)
            {
                // Accepted before, so it reads as its kind.
                if push_object(&mut loaded, &key.0, kept.document.clone(), &kept.folder).is_ok() {
                    seen.insert(key, kept);
                }
            }
        }
        self.accepted = seen;
        Ok(loaded)
    }
}

/// Whether `name` is a DNS subdomain (RFC 1123), as the API server requires of object names:
/// they also key standalone mode's saved rollout state.
fn is_dns_subdomain(name: &str) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && alphanumeric(bytes[0])
        && alphanumeric(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| alphanumeric(b) || b == b'-' || b == b'.')
}

/// Whether `namespace` is a DNS label (RFC 1123), as namespaces are.
fn is_dns_label(namespace: &str) -> bool {
    namespace.len() <= 63 && !namespace.contains('.') && is_dns_subdomain(namespace)
}

/// Why one document of the folder is skipped (reported with its file and position).
#[derive(Debug, thiserror::Error)]
enum DocumentProblem {
    /// An apiVersion of the operator's group other than the one served.
    #[error(
        "apiVersion {api_version} is not served; use {}",
        crate::api::constants::API_VERSION
    )]
    UnservedVersion { api_version: String },
    /// No `metadata.name`.
    #[error("{kind} without metadata.name")]
    NoName { kind: String },
    /// A name the API server would refuse.
    #[error(
        "{kind} {name:?}: metadata.name must be lower-case letters, digits, '-' and '.', \
         starting and ending with a letter or digit (at most 253 characters)"
    )]
    InvalidName { kind: String, name: String },
    /// A namespace the API server would refuse.
    #[error(
        "{kind} {name}: metadata.namespace {namespace:?} must be lower-case letters, digits and \
         '-', starting and ending with a letter or digit (at most 63 characters)"
    )]
    InvalidNamespace {
        kind: String,
        name: String,
        namespace: String,
    },
    /// Refused by the CRD's schema or rules, worded as the serde problems below, with the API
    /// server's causes.
    #[error("{kind} {name} is invalid: {}", refused.causes_text())]
    Refused {
        kind: String,
        name: String,
        refused: super::validate::Invalid,
    },
    /// The same object again: as `kubectl apply` of two such documents would leave one
    /// object, the first is kept.
    #[error("{kind} {namespace}/{name} is defined again; this one is skipped")]
    DefinedAgain {
        kind: String,
        namespace: String,
        name: String,
    },
    /// A Secret whose data cannot be read (the message names the key, never a value).
    #[error("Secret {namespace}/{name} is invalid: {reason}")]
    BadSecret {
        namespace: String,
        name: String,
        reason: String,
    },
    /// A kind of the group that is not one of the four.
    #[error("kind {kind:?} is not one of App, Channel, Bundle, Rollout")]
    UnknownKind { kind: String },
    /// The document does not read as its kind.
    #[error("{kind} {name} is invalid: {source}")]
    Unreadable {
        kind: String,
        name: String,
        source: serde_json::Error,
    },
}

impl Pass<'_> {
    fn add_document(&mut self, mut document: Value, folder: &Path) -> Result<(), DocumentProblem> {
        let api_version = document["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = document["kind"].as_str().unwrap_or_default().to_owned();
        // Secrets hold the header values of analysis metrics (a bearer token for Prometheus).
        let secret = api_version == "v1" && kind == "Secret";
        if api_version != crate::api::constants::API_VERSION && !secret {
            // Other kinds (ConfigMaps, ...) may live in the same folder: not ours to read.
            return if api_version.starts_with(crate::api::constants::GROUP) {
                Err(DocumentProblem::UnservedVersion { api_version })
            } else {
                Ok(())
            };
        }
        if document["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            return Err(DocumentProblem::NoName { kind });
        }
        if document["metadata"]["namespace"].is_null() {
            document["metadata"]["namespace"] = Value::String(DEFAULT_NAMESPACE.to_owned());
        }
        // Status is the server's to write: a status in the YAML is ignored.
        if let Some(object) = document.as_object_mut() {
            object.remove("status");
        }
        let name = document["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !is_dns_subdomain(&name) {
            return Err(DocumentProblem::InvalidName { kind, name });
        }
        let namespace = document["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !is_dns_label(&namespace) {
            return Err(DocumentProblem::InvalidNamespace {
                kind,
                name,
                namespace,
            });
        }
        let key = (kind.clone(), namespace.clone(), name.clone());
        if secret {
            if let Err(reason) = secret_data(&document) {
                self.refused.insert(key);
                return Err(DocumentProblem::BadSecret {
                    namespace,
                    name,
                    reason,
                });
            }
        } else {
            let previous = self
                .seen
                .get(&key)
                .or_else(|| self.earlier.get(&key))
                .map(|accepted| &accepted.document);
            if let Err(refused) = super::validate::Validator::shared().validate(&document, previous) {
                self.refused.insert(key);
                // Worded as the serde problems below, with the API server's causes.
                return Err(DocumentProblem::Refused { kind, name, refused });
            }
        }
        if self.seen.contains_key(&key) {
            // As `kubectl apply` of two such documents would leave one object: the first is kept.
            return Err(DocumentProblem::DefinedAgain {
                kind,
                namespace,
                name,
            });
        }
        let accepted = Accepted {
            document: document.clone(),
            folder: folder.to_owned(),
        };
        if let Err(problem) = push_object(&mut self.loaded, &kind, document, folder) {
            if matches!(problem, DocumentProblem::Unreadable { .. }) {
                self.refused.insert(key);
            }
            return Err(problem);
        }
        self.seen.insert(key, accepted);
        Ok(())
    }
}

/// Adds a document that passed validation to the objects read, as its kind.
fn push_object(
    loaded: &mut Loaded,
    kind: &str,
    document: Value,
    folder: &Path,
) -> Result<(), DocumentProblem> {
    let name = document["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if kind == "Secret" {
        let namespace = document["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return match secret_data(&document) {
            Ok(data) => {
                loaded.secrets.insert((namespace, name), data);
                Ok(())
            }
            Err(reason) => Err(DocumentProblem::BadSecret {
                namespace,
                name,
                reason,
            }),
        };
    }
    let parsed = match kind {
        "App" => serde_json::from_value(document).map(|app| loaded.apps.push(app)),
        "Channel" => serde_json::from_value(document).map(|channel| loaded.channels.push(channel)),
        "Bundle" => {
            serde_json::from_value(document).map(|bundle| loaded.bundles.push((bundle, folder.to_owned())))
        }
        "Rollout" => serde_json::from_value(document).map(|rollout| loaded.rollouts.push(rollout)),
        other => {
            return Err(DocumentProblem::UnknownKind {
                kind: other.to_owned(),
            });
        }
    };
    parsed.map_err(|source| DocumentProblem::Unreadable {
        kind: kind.to_owned(),
        name,
        source,
    })
}

/// The keys and values of a Secret document: `data` base64-decoded, then `stringData` over it.
/// A problem names the key, never the value.
fn secret_data(document: &Value) -> Result<SecretData, String> {
    let mut secret = SecretData::default();
    let valid_key = |key: &str| {
        !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    for field in ["data", "stringData"] {
        let entries = match &document[field] {
            Value::Null => continue,
            Value::Object(entries) => entries,
            _ => return Err(format!("{field} is not a map of keys to values")),
        };
        for (key, value) in entries {
            if !valid_key(key) {
                return Err(format!(
                    "{field} key {key:?} must be letters, digits, '-', '_' and '.'"
                ));
            }
            let Value::String(text) = value else {
                return Err(format!("{field}.{key} is not a string"));
            };
            let bytes = if field == "data" {
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| format!("data.{key} is not base64 (plain text goes under stringData)"))?
            } else {
                text.as_bytes().to_vec()
            };
            secret.insert(key.clone(), bytes);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_load_and_invalid_documents_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("good.yaml"),
            "apiVersion: ota.dev/v1alpha1\nkind: App\nmetadata: {name: shop}\nspec:\n  appId: com.example.shop\n  storage: {filesystem: {path: ./storage}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            "apiVersion: ota.dev/v1alpha1\nkind: Channel\nmetadata: {name: c}\nspec: {public: true}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.yml"), "a: [unclosed\n").unwrap();
        std::fs::write(
            dir.path().join("kind.yaml"),
            "apiVersion: ota.dev/v1alpha1\nkind: Gadget\nmetadata: {name: g}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.apps.len(), 1);
        assert_eq!(
            loaded.apps[0].metadata.namespace.as_deref(),
            Some(DEFAULT_NAMESPACE)
        );
        assert_eq!(loaded.channels.len(), 0);
        assert_eq!(loaded.problems.len(), 3, "{:#?}", loaded.problems);
        assert!(
            loaded
                .problems
                .iter()
                .any(|p| p.starts_with("bad.yaml: document 1: Channel c is invalid"))
        );
        assert!(
            loaded
                .problems
                .iter()
                .any(|p| p.starts_with("broken.yml: not valid YAML"))
        );
        assert!(loaded.problems.iter().any(|p| p.contains("Gadget")));
    }

    #[test]
    fn bad_names_and_second_definitions_are_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let rollout = |name: &str, namespace: &str, bundle: &str| {
            format!(
                "apiVersion: ota.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: {name:?}, namespace: {namespace:?}}}\n\
                 spec: {{channelRef: production, bundleRef: {bundle}, steps: [{{setPercent: 100}}]}}\n"
            )
        };
        let documents = [
            rollout("to-1.5", "default", "first"),
            rollout("to-1.5", "default", "second"),
            rollout("to-1.5", "other", "elsewhere"),
            rollout("Channel/production", "default", "x"),
            rollout("ok", "Not_A_Namespace", "x"),
            rollout("-dash", "default", "x"),
        ]
        .join("---\n");
        std::fs::write(dir.path().join("rollouts.yaml"), documents).unwrap();
        let loaded = load(dir.path()).unwrap();
        let kept: Vec<(&str, &str)> = loaded
            .rollouts
            .iter()
            .map(|r| {
                (
                    r.metadata.namespace.as_deref().unwrap(),
                    r.spec.bundle_ref.as_str(),
                )
            })
            .collect();
        assert_eq!(kept, [("default", "first"), ("other", "elsewhere")]);
        assert_eq!(loaded.problems.len(), 4, "{:#?}", loaded.problems);
        assert!(loaded.problems[0].contains("Rollout default/to-1.5 is defined again"));
        assert!(loaded.problems[1].contains("\"Channel/production\": metadata.name must be"));
        assert!(loaded.problems[2].contains("metadata.namespace \"Not_A_Namespace\""));
        assert!(loaded.problems[3].contains("\"-dash\": metadata.name must be"));
    }

    #[test]
    fn a_document_the_api_server_would_refuse_is_skipped_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let app = |name: &str, app_id: &str| {
            format!(
                "apiVersion: ota.dev/v1alpha1\nkind: App\nmetadata: {{name: {name}}}\n\
                 spec: {{appId: {app_id}, storage: {{filesystem: {{path: ./s}}}}}}\n"
            )
        };
        let documents = [app("good", "com.example.good"), app("bad", "shop")].join("---\n");
        std::fs::write(dir.path().join("apps.yaml"), documents).unwrap();
        let loaded = load(dir.path()).unwrap();
        let served: Vec<_> = loaded.apps.iter().map(|a| a.metadata.name.as_deref()).collect();
        assert_eq!(served, [Some("good")]);
        assert_eq!(
            loaded.problems,
            [
                "apps.yaml: document 2: App bad is invalid: spec.appId: Invalid value: \"string\": \
              appId must be a reverse-DNS app id such as com.example.app"
            ]
        );
    }

    #[test]
    fn an_edit_is_checked_as_an_update_of_the_version_accepted_before() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bundle.yaml");
        let bundle = |sha256: char| {
            format!(
                "apiVersion: ota.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: b}}\nspec:\n  \
                 appRef: shop\n  version: 1.0.0\n  source: {{url: 'https://ci.example.com/w.zip', \
                 sha256: {}}}\n",
                sha256.to_string().repeat(64)
            )
        };
        let mut loader = Loader::default();
        let mut reload = |content: Option<String>| {
            match content {
                Some(content) => std::fs::write(&file, content).unwrap(),
                None => std::fs::remove_file(&file).unwrap(),
            }
            let loaded = loader.load(dir.path()).unwrap();
            let served: Vec<String> = loaded
                .bundles
                .iter()
                .map(|(bundle, _)| bundle.spec.source.sha256.clone())
                .collect();
            (served, loaded.problems)
        };
        let served = |sha256: char| vec![sha256.to_string().repeat(64)];
        assert_eq!(reload(Some(bundle('a'))), (served('a'), vec![]));
        // The refused edit is reported, and the version accepted before goes on being served,
        // as the API server goes on serving the object a refused apply left alone.
        let (kept, problems) = reload(Some(bundle('b')));
        assert_eq!(kept, served('a'));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("spec.source.sha256: Invalid value: \"string\": sha256 is immutable"));
        // The refused edit left the accepted version as it was: going back to it is no change.
        assert_eq!(reload(Some(bundle('a'))), (served('a'), vec![]));
        // A Bundle whose document is gone is deleted: a new one may have any sha256.
        assert_eq!(reload(None), (vec![], vec![]));
        assert_eq!(reload(Some(bundle('b'))), (served('b'), vec![]));
    }

    #[test]
    fn secrets_are_read_with_their_data_decoded_and_bad_ones_reported_without_their_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secrets.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: prometheus}\n\
             data: {token: c2VjcmV0LXRva2Vu, both: ZnJvbS1kYXRh}\n\
             stringData: {plain: 'Bearer abc', both: from-stringData}\n\
             ---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: sentry, namespace: shop}\n\
             stringData: {token: s3}\n\
             ---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: broken}\n\
             data: {token: 'not base64 hunter2!'}\n\
             ---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: numeric}\n\
             stringData: {pin: 1234}\n\
             ---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n",
        )
        .unwrap();
        let loaded = load(dir.path()).unwrap();
        let prometheus = &loaded.secrets[&("default".to_owned(), "prometheus".to_owned())];
        assert_eq!(prometheus.get("token"), Some(&b"secret-token"[..]));
        assert_eq!(prometheus.get("plain"), Some(&b"Bearer abc"[..]));
        assert_eq!(prometheus.get("both"), Some(&b"from-stringData"[..]));
        let sentry = &loaded.secrets[&("shop".to_owned(), "sentry".to_owned())];
        assert_eq!(sentry.get("token"), Some(&b"s3"[..]));
        assert_eq!(loaded.secrets.len(), 2, "{:?}", loaded.secrets);
        assert_eq!(
            loaded.problems,
            [
                "secrets.yaml: document 3: Secret default/broken is invalid: data.token is not \
                 base64 (plain text goes under stringData)",
                "secrets.yaml: document 4: Secret default/numeric is invalid: stringData.pin is \
                 not a string",
            ]
        );
        assert!(!format!("{loaded:?}").contains("secret-token"));
    }

    #[test]
    fn a_secret_edit_that_is_refused_keeps_the_version_read_before() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.yaml");
        let mut loader = Loader::default();
        let token = |loader: &mut Loader| {
            let loaded = loader.load(dir.path()).unwrap();
            let token = loaded
                .secrets
                .get(&("default".to_owned(), "api".to_owned()))
                .and_then(|secret| secret.get("token"))
                .map(<[u8]>::to_vec);
            (token, loaded.problems.len())
        };
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Secret\nmetadata: {name: api}\nstringData: {token: one}\n",
        )
        .unwrap();
        assert_eq!(token(&mut loader), (Some(b"one".to_vec()), 0));
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Secret\nmetadata: {name: api}\ndata: {token: '%%%'}\n",
        )
        .unwrap();
        assert_eq!(token(&mut loader), (Some(b"one".to_vec()), 1));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(token(&mut loader), (None, 0));
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        assert!(load(Path::new("/nonexistent/ota/folder")).is_err());
    }
}
