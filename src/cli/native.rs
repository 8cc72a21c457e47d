//! Native dependencies of a Capacitor project: the packages of its package.json that ship
//! native code, with versions, and what changed between two lists.
//!
//! A package counts as native when its installed `node_modules/<name>/package.json` has a
//! `capacitor` or `cordova` section (how Capacitor and Cordova plugins declare their native
//! code), or it is one of Capacitor's own platform packages (`@capacitor/core`, `/android`,
//! `/ios`). When it is not installed, its name decides: `@capacitor/*` (not the CLI),
//! `@capacitor-community/*`, `@capacitor-firebase/*`, `@capgo/*` (not the CLI),
//! `cordova-plugin-*` and `capacitor-*`. Versions are the installed ones, else the lockfile's
//! (`package-lock.json`), else the range written in package.json.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::CliError;
use crate::api::bundle::NativePackage;

/// Capacitor's own packages that must match the app binary.
const PLATFORM_PACKAGES: [&str; 3] = ["@capacitor/core", "@capacitor/android", "@capacitor/ios"];

/// The native packages of the project whose package.json is `package_json`, sorted by name.
pub(super) fn native_packages(package_json: &Path) -> Result<Vec<NativePackage>, CliError> {
    let manifest = read_json(package_json)?;
    let root = package_json.parent().unwrap_or(Path::new("."));
    let lock = read_lock(&root.join("package-lock.json"))?;
    let mut packages = BTreeMap::new();
    for section in ["dependencies", "optionalDependencies"] {
        let Some(dependencies) = manifest.get(section) else {
            continue;
        };
        let Some(dependencies) = dependencies.as_object() else {
            return Err(CliError::input(format!(
                "{}: \"{section}\" is not an object",
                package_json.display()
            )));
        };
        for (name, declared) in dependencies {
            let installed = read_installed(&root.join("node_modules").join(name).join("package.json"));
            let native = match &installed {
                Some(package) => {
                    PLATFORM_PACKAGES.contains(&name.as_str())
                        || package.get("capacitor").is_some()
                        || package.get("cordova").is_some()
                }
                None => native_by_name(name),
            };
            if !native {
                continue;
            }
            let version = installed
                .as_ref()
                .and_then(|package| package.get("version")?.as_str().map(str::to_owned))
                .or_else(|| lock.get(name).cloned())
                .or_else(|| declared.as_str().map(str::to_owned))
                .ok_or_else(|| {
                    CliError::input(format!(
                        "{}: the version of {name} is not a string",
                        package_json.display()
                    ))
                })?;
            packages.insert(name.clone(), version);
        }
    }
    Ok(packages
        .into_iter()
        .map(|(name, version)| NativePackage { name, version })
        .collect())
}

/// Whether a package that is not installed is native, by its name.
fn native_by_name(name: &str) -> bool {
    let scoped = |scope: &str| name.strip_prefix(scope).is_some_and(|rest| rest != "cli");
    scoped("@capacitor/")
        || name.starts_with("@capacitor-community/")
        || name.starts_with("@capacitor-firebase/")
        || scoped("@capgo/")
        || name.starts_with("cordova-plugin-")
        || name.starts_with("capacitor-")
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    let text = super::read_text(path, "package.json")?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::input(format!("{} is not valid JSON: {e}", path.display())))?;
    if !value.is_object() {
        return Err(CliError::input(format!(
            "{} is not a JSON object",
            path.display()
        )));
    }
    Ok(value)
}

/// An installed package's package.json, if it is there and readable.
fn read_installed(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Versions from a package-lock.json (v2/v3 `packages` map), by package name.
fn read_lock(path: &Path) -> Result<BTreeMap<String, String>, CliError> {
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let lock = read_json(path)?;
    let mut versions = BTreeMap::new();
    if let Some(packages) = lock.get("packages").and_then(Value::as_object) {
        for (key, entry) in packages {
            // Only top-level packages: nested copies belong to other packages.
            let Some(name) = key.strip_prefix("node_modules/") else {
                continue;
            };
            if name.contains("/node_modules/") {
                continue;
            }
            if let Some(version) = entry.get("version").and_then(Value::as_str) {
                versions.insert(name.to_owned(), version.to_owned());
            }
        }
    }
    Ok(versions)
}

/// The package.json of the project a web build folder belongs to: in the folder or the nearest
/// folder above it.
pub(super) fn find_package_json(dist: &Path) -> Result<PathBuf, CliError> {
    let start = dist
        .canonicalize()
        .map_err(|e| CliError::input(format!("cannot read {}: {e}", dist.display())))?;
    start
        .ancestors()
        .map(|dir| dir.join("package.json"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            CliError::input(format!(
                "no package.json in {} or above it: give it with --package-json",
                dist.display()
            ))
        })
}

/// One difference between two lists of native packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NativeChange {
    /// A package the release did not have.
    Added(NativePackage),
    /// A package the release had.
    Removed(NativePackage),
    /// Another version.
    Changed {
        /// The package.
        name: String,
        /// In the release.
        from: String,
        /// Now.
        to: String,
    },
}

impl std::fmt::Display for NativeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NativeChange::Added(p) => write!(f, "added {} {}", p.name, p.version),
            NativeChange::Removed(p) => write!(f, "removed {} {}", p.name, p.version),
            NativeChange::Changed { name, from, to } => write!(f, "changed {name} {from} -> {to}"),
        }
    }
}

/// What changed from `released` to `current`, by package name.
pub(super) fn compare(released: &[NativePackage], current: &[NativePackage]) -> Vec<NativeChange> {
    let before: BTreeMap<&str, &str> = released
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let after: BTreeMap<&str, &str> = current
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let mut changes = Vec::new();
    for (name, version) in &after {
        match before.get(name) {
            None => changes.push(NativeChange::Added(NativePackage {
                name: (*name).to_owned(),
                version: (*version).to_owned(),
            })),
            Some(old) if old != version => changes.push(NativeChange::Changed {
                name: (*name).to_owned(),
                from: (*old).to_owned(),
                to: (*version).to_owned(),
            }),
            Some(_) => {}
        }
    }
    for (name, version) in &before {
        if !after.contains_key(name) {
            changes.push(NativeChange::Removed(NativePackage {
                name: (*name).to_owned(),
                version: (*version).to_owned(),
            }));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn write(path: &Path, value: &Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    }

    fn package(name: &str, version: &str) -> NativePackage {
        NativePackage {
            name: name.into(),
            version: version.into(),
        }
    }

    #[test]
    fn installed_packages_are_native_by_their_capacitor_or_cordova_section() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join("package.json"),
            &json!({"dependencies": {
                "@capacitor/core": "^6.1.0", "@capacitor/camera": "^6.0.0", "lodash": "^4.17.0",
                "some-cordova-thing": "1.0.0", "@capacitor/cli": "^6.0.0", "not-installed-lib": "1.0.0",
                "capacitor-secure-storage": "~2.0.0"
            }}),
        );
        let nm = root.join("node_modules");
        write(
            &nm.join("@capacitor/core/package.json"),
            &json!({"version": "6.1.2"}),
        );
        write(
            &nm.join("@capacitor/camera/package.json"),
            &json!({"version": "6.0.2", "capacitor": {"ios": {"src": "ios"}, "android": {"src": "android"}}}),
        );
        write(&nm.join("lodash/package.json"), &json!({"version": "4.17.21"}));
        write(
            &nm.join("some-cordova-thing/package.json"),
            &json!({"version": "1.0.0", "cordova": {"id": "x"}}),
        );
        write(
            &nm.join("@capacitor/cli/package.json"),
            &json!({"version": "6.0.0"}),
        );
        write(
            &root.join("package-lock.json"),
            &json!({"packages": {"node_modules/capacitor-secure-storage": {"version": "2.0.3"}}}),
        );
        let found = native_packages(&root.join("package.json")).unwrap();
        assert_eq!(
            found,
            [
                package("@capacitor/camera", "6.0.2"),
                package("@capacitor/core", "6.1.2"),
                package("capacitor-secure-storage", "2.0.3"),
                package("some-cordova-thing", "1.0.0"),
            ]
        );
    }

    #[test]
    fn changes_list_additions_removals_and_versions() {
        let released = [
            package("@capacitor/core", "6.1.2"),
            package("@capacitor/camera", "6.0.2"),
        ];
        let current = [
            package("@capacitor/core", "6.2.0"),
            package("@capgo/native-audio", "1.0.0"),
        ];
        let changes: Vec<String> = compare(&released, &current)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            [
                "changed @capacitor/core 6.1.2 -> 6.2.0",
                "added @capgo/native-audio 1.0.0",
                "removed @capacitor/camera 6.0.2"
            ]
        );
        assert!(compare(&released, &released).is_empty());
    }

    #[test]
    fn bad_package_json_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("package.json");
        std::fs::write(&path, "{ not json").unwrap();
        assert!(
            native_packages(&path)
                .unwrap_err()
                .to_string()
                .contains("is not valid JSON")
        );
        std::fs::write(&path, "[1]").unwrap();
        assert!(
            native_packages(&path)
                .unwrap_err()
                .to_string()
                .contains("not a JSON object")
        );
        std::fs::write(&path, r#"{"dependencies": []}"#).unwrap();
        assert!(
            native_packages(&path)
                .unwrap_err()
                .to_string()
                .contains("is not an object")
        );
        assert!(
            native_packages(&dir.path().join("missing.json"))
                .unwrap_err()
                .to_string()
                .contains("cannot read package.json")
        );
    }
}
