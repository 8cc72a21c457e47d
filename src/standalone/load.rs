//! Reading the four kinds from a folder of YAML, as `kubectl apply -f DIR` would: every
//! `*.yaml`/`*.yml` file, every document in it. An invalid document is reported and skipped,
//! never fatal.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::Value;

use crate::api::{App, Bundle, Channel, Rollout};

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

/// Reads every object of a folder.
pub fn load(dir: &Path) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    let mut seen = HashSet::new();
    for path in yaml_files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError {
            path: path.clone(),
            source,
        })?;
        let shown = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        let documents: Vec<Value> = match serde_saphyr::from_multiple(&text) {
            Ok(documents) => documents,
            Err(error) => {
                loaded.problems.push(format!("{shown}: not valid YAML: {error}"));
                continue;
            }
        };
        let folder = path.parent().unwrap_or(dir).to_owned();
        for (index, document) in documents.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
            if let Err(problem) = add_document(&mut loaded, &mut seen, document, &folder) {
                loaded
                    .problems
                    .push(format!("{shown}: document {}: {problem}", index + 1));
            }
        }
    }
    Ok(loaded)
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

fn add_document(
    loaded: &mut Loaded,
    seen: &mut HashSet<(String, String, String)>,
    mut document: Value,
    folder: &Path,
) -> Result<(), String> {
    let api_version = document["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = document["kind"].as_str().unwrap_or_default().to_owned();
    if api_version != crate::api::constants::API_VERSION {
        // Other kinds (Secrets, ConfigMaps, ...) may live in the same folder: not ours to read.
        return if api_version.starts_with(crate::api::constants::GROUP) {
            Err(format!(
                "apiVersion {api_version} is not served; use {}",
                crate::api::constants::API_VERSION
            ))
        } else {
            Ok(())
        };
    }
    if document["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        return Err(format!("{kind} without metadata.name"));
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
        return Err(format!(
            "{kind} {name:?}: metadata.name must be lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit (at most 253 characters)"
        ));
    }
    let namespace = document["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !is_dns_label(&namespace) {
        return Err(format!(
            "{kind} {name}: metadata.namespace {namespace:?} must be lower-case letters, digits and \
             '-', starting and ending with a letter or digit (at most 63 characters)"
        ));
    }
    let invalid = |e: serde_json::Error| format!("{kind} {name} is invalid: {e}");
    let key = (kind.clone(), namespace.clone(), name.clone());
    if seen.contains(&key) {
        // As `kubectl apply` of two such documents would leave one object: the first is kept.
        return Err(format!(
            "{kind} {namespace}/{name} is defined again; this one is skipped"
        ));
    }
    match kind.as_str() {
        "App" => loaded
            .apps
            .push(serde_json::from_value(document).map_err(invalid)?),
        "Channel" => loaded
            .channels
            .push(serde_json::from_value(document).map_err(invalid)?),
        "Bundle" => loaded.bundles.push((
            serde_json::from_value(document).map_err(invalid)?,
            folder.to_owned(),
        )),
        "Rollout" => loaded
            .rollouts
            .push(serde_json::from_value(document).map_err(invalid)?),
        other => {
            return Err(format!(
                "kind {other:?} is not one of App, Channel, Bundle, Rollout"
            ));
        }
    }
    seen.insert(key);
    Ok(())
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
    fn a_missing_folder_is_an_error() {
        assert!(load(Path::new("/nonexistent/ota/folder")).is_err());
    }
}
