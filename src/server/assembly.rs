//! What the update server serves, assembled once for both sources (the Kubernetes watch and
//! standalone mode's folder): open the Apps' storages, collect the synced Bundles' manifests,
//! build the snapshot inputs, and report what cannot be served.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{Served, ServerState, storage::AppStorage};
use crate::{
    api::{App, Bundle, Channel, Rollout, constants::reason},
    core::snapshot::{ManifestFile, Snapshot, SnapshotInputs},
    storage::OpenedStorage,
    sync_driver::StorageProblem,
};

/// A namespace and a name.
type ObjectId = (String, String);

fn id_of(meta: &kube::api::ObjectMeta) -> ObjectId {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The Apps whose storage could be opened, with those storages; the others are problems.
pub struct OpenedApps {
    /// The Apps to serve.
    pub apps: Vec<App>,
    /// Their storages, by app id.
    pub storage: HashMap<String, Arc<AppStorage>>,
    /// Their storages, by the App's namespace and name.
    by_app: BTreeMap<ObjectId, Arc<AppStorage>>,
    /// The Apps whose storage cannot be opened, with why.
    unopened: BTreeMap<ObjectId, String>,
    /// What cannot be served, for the log.
    pub problems: Vec<String>,
}

/// Opens (or reuses) the storage of each App; storages of Apps no longer served are let go.
pub fn open_storages(state: &ServerState, apps: Vec<App>) -> OpenedApps {
    let mut opened = OpenedApps {
        apps: Vec::new(),
        storage: HashMap::new(),
        by_app: BTreeMap::new(),
        unopened: BTreeMap::new(),
        problems: Vec::new(),
    };
    for app in apps {
        match state.storages().of(&app) {
            Ok(storage) => {
                opened
                    .storage
                    .insert(app.spec.app_id.clone(), Arc::clone(&storage));
                opened.by_app.insert(id_of(&app.metadata), storage);
                opened.apps.push(app);
            }
            Err(error) => {
                opened.problems.push(format!(
                    "App {}: cannot open its storage: {error}",
                    app.metadata.name.as_deref().unwrap_or_default()
                ));
                opened.unopened.insert(id_of(&app.metadata), error.to_string());
            }
        }
    }
    state
        .storages()
        .retain(&opened.apps.iter().map(|app| app.spec.app_id.as_str()).collect());
    opened
}

impl OpenedApps {
    /// The storage of `bundle`'s App, or why the Bundle cannot be synced into it.
    pub fn of_bundle(&self, bundle: &Bundle) -> Result<&Arc<AppStorage>, StorageProblem> {
        let app = (
            bundle.metadata.namespace.clone().unwrap_or_default(),
            bundle.spec.app_ref.clone(),
        );
        if let Some(storage) = self.by_app.get(&app) {
            return Ok(storage);
        }
        Err(match self.unopened.get(&app) {
            Some(error) => StorageProblem {
                reason: reason::REFERENCE_NOT_READY,
                message: format!("the storage of App {} cannot be opened: {error}", app.1),
                recheck: None,
            },
            None => StorageProblem {
                reason: reason::REFERENCE_NOT_FOUND,
                message: format!("App {} does not exist", app.1),
                recheck: None,
            },
        })
    }
}

/// The four kinds as read from a source, their Apps' storages opened.
pub struct Objects {
    /// The Apps to serve and their storages.
    pub apps: OpenedApps,
    /// Channels.
    pub channels: Vec<Channel>,
    /// Bundles, with their sync status.
    pub bundles: Vec<Bundle>,
    /// Rollouts.
    pub rollouts: Vec<Rollout>,
}

/// What a source serves, before the snapshot is built.
pub struct Assembled {
    /// The snapshot's inputs.
    pub inputs: SnapshotInputs,
    /// The Apps' storages, by app id.
    pub storage: HashMap<String, Arc<AppStorage>>,
    /// What cannot be served, for the log.
    pub problems: Vec<String>,
}

/// The snapshot inputs of `objects`: each synced Bundle of a served App with the manifest its
/// status names (read through `manifests`).
pub async fn assemble(objects: Objects, manifests: &mut ManifestCache) -> Assembled {
    let Objects {
        apps,
        channels,
        bundles,
        rollouts,
    } = objects;
    let mut manifest_map = HashMap::new();
    for bundle in &bundles {
        let Ok(app_storage) = apps.of_bundle(bundle) else {
            continue;
        };
        let Some(key) = bundle
            .status
            .as_ref()
            .and_then(|s| s.storage.as_ref())
            .and_then(|s| s.manifest_key.as_deref())
        else {
            continue;
        };
        if let Some(files) = manifests.get(&app_storage.opened, key).await {
            manifest_map.insert(id_of(&bundle.metadata), files);
        }
    }
    Assembled {
        inputs: SnapshotInputs {
            apps: apps.apps,
            channels,
            bundles,
            rollouts,
            manifests: manifest_map,
        },
        storage: apps.storage,
        problems: apps.problems,
    }
}

/// What to serve from `inputs`, and what of them the snapshot leaves out (`object: why`).
pub fn served(inputs: &SnapshotInputs, storage: HashMap<String, Arc<AppStorage>>) -> (Served, Vec<String>) {
    let (snapshot, problems) = Snapshot::build(inputs);
    let problems = problems
        .into_iter()
        .map(|p| format!("{}: {}", p.object, p.message))
        .collect();
    (
        Served {
            snapshot,
            storage,
            manifests: HashMap::new(),
        },
        problems,
    )
}

/// Manifests are content-addressed (the key names the zip's sha256), so a key read once never
/// changes, whichever storage it was read from.
#[derive(Default)]
pub struct ManifestCache {
    files: HashMap<String, Arc<[ManifestFile]>>,
}

impl ManifestCache {
    /// The manifest at `key` in `storage`, read once.
    pub async fn get(&mut self, storage: &OpenedStorage, key: &str) -> Option<Arc<[ManifestFile]>> {
        if let Some(files) = self.files.get(key) {
            return Some(Arc::clone(files));
        }
        match crate::sync::read_manifest(&storage.store, &storage.prefix, key).await {
            Ok(files) => {
                let files: Arc<[ManifestFile]> = files.into();
                self.files.insert(key.to_owned(), Arc::clone(&files));
                Some(files)
            }
            Err(error) => {
                tracing::warn!(%error, key, "cannot read a bundle manifest; serving the bundle without delta");
                None
            }
        }
    }
}
