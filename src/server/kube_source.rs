//! The Kubernetes snapshot source: reflectors watch the four kinds; every change rebuilds the
//! snapshot, which is swapped in whole. Requests never wait on the watch. When the API server is
//! lost, the last good snapshot keeps being served and `/readyz` says so.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use super::{Served, ServerState, SourceHealth};
use crate::{
    api::{App, Bundle, Channel, Rollout},
    core::snapshot::{ManifestFile, Snapshot, SnapshotInputs},
    storage::OpenedStorage,
};

/// How long the watch must be quiet before a rebuild.
const QUIET: Duration = Duration::from_millis(50);
/// The longest a change waits for a rebuild while events keep coming.
const MAX_DELAY: Duration = Duration::from_millis(300);

/// What to watch.
#[derive(Debug, Clone)]
pub struct KubeSourceOptions {
    /// The namespace to watch; None watches every namespace.
    pub namespace: Option<String>,
    /// Serve only the App of this name (an update server deployed for one App).
    pub app: Option<String>,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A reflector for one kind: its store and the stream that feeds it (items are "something
/// changed" or a watch error).
fn watch<K>(client: &Client, namespace: Option<&str>) -> (Store<K>, BoxStream<'static, Result<(), String>>)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api::<K>(client, namespace), watcher::Config::default()),
    )
    .default_backoff()
    .map(|event| {
        event
            .map(|_| ())
            .map_err(|e| format!("watching {}: {e}", K::kind(&())))
    })
    .boxed();
    (reader, stream)
}

/// Watches until the process stops, publishing a snapshot after each burst of changes.
pub async fn run(client: Client, options: KubeSourceOptions, state: Arc<ServerState>) {
    let namespace = options.namespace.as_deref();
    let (apps, app_events) = watch::<App>(&client, namespace);
    let (channels, channel_events) = watch::<Channel>(&client, namespace);
    let (bundles, bundle_events) = watch::<Bundle>(&client, namespace);
    let (rollouts, rollout_events) = watch::<Rollout>(&client, namespace);
    let stores = Stores {
        apps,
        channels,
        bundles,
        rollouts,
    };
    let mut events = futures::stream::select_all([app_events, channel_events, bundle_events, rollout_events]);
    let mut manifests = ManifestCache::default();
    // When the first unserved change arrived; a steady trickle of events must not postpone the
    // rebuild forever.
    let mut dirty_since = Some(std::time::Instant::now());
    loop {
        // Coalesce a burst of events (an apply of many objects) into one rebuild.
        let next = match dirty_since {
            Some(since) if since.elapsed() >= MAX_DELAY => None,
            Some(_) => tokio::time::timeout(QUIET, events.next()).await.ok(),
            None => Some(events.next().await),
        };
        match next {
            Some(Some(Ok(()))) => {
                dirty_since.get_or_insert_with(std::time::Instant::now);
                continue;
            }
            Some(Some(Err(reason))) => {
                if state.health() != SourceHealth::Degraded(reason.clone()) {
                    tracing::warn!(%reason, "lost the API server; still serving the last good snapshot");
                }
                state.set_health(SourceHealth::Degraded(reason));
                continue;
            }
            Some(None) => return, // the streams ended: the process is stopping
            None => {}            // quiet, or waited long enough: rebuild now
        }
        if !stores.all_ready() {
            // Not every kind is listed yet: wait for more events (at most QUIET at a time).
            dirty_since = Some(std::time::Instant::now());
            continue;
        }
        if dirty_since.is_none() {
            continue;
        }
        dirty_since = None;
        let served = build(&options, &state, &stores, &mut manifests).await;
        state.publish(served);
    }
}

trait ReadyStore {
    fn is_ready(&self) -> bool;
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> ReadyStore for Store<K> {
    fn is_ready(&self) -> bool {
        // A store is ready once its first list has been applied.
        futures::FutureExt::now_or_never(self.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

fn cloned<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<K> {
    store.state().iter().map(|object| (**object).clone()).collect()
}

async fn build(
    options: &KubeSourceOptions,
    state: &ServerState,
    stores: &Stores,
    manifests: &mut ManifestCache,
) -> Served {
    let mut apps = cloned(&stores.apps);
    if let Some(only) = &options.app {
        apps.retain(|app| app.metadata.name.as_deref() == Some(only.as_str()));
    }
    let bundles = cloned(&stores.bundles);
    let mut storage = HashMap::new();
    apps.retain(|app| match state.storages().of(app) {
        Ok(opened) => {
            storage.insert(app.spec.app_id.clone(), opened);
            true
        }
        Err(error) => {
            tracing::warn!(app = app.metadata.name.as_deref().unwrap_or_default(), %error,
                "cannot open the App's storage; not serving it");
            false
        }
    });
    state
        .storages()
        .retain(&apps.iter().map(|app| app.spec.app_id.as_str()).collect());
    let mut manifest_map = HashMap::new();
    for app in &apps {
        let Some(app_storage) = storage.get(&app.spec.app_id) else {
            continue;
        };
        for bundle in bundles.iter().filter(|b| {
            Some(&b.spec.app_ref) == app.metadata.name.as_ref()
                && b.metadata.namespace == app.metadata.namespace
        }) {
            let Some(key) = bundle
                .status
                .as_ref()
                .and_then(|s| s.storage.as_ref())
                .and_then(|s| s.manifest_key.as_deref())
            else {
                continue;
            };
            if let Some(files) = manifests.get(&app_storage.opened, key).await {
                let id = (
                    bundle.metadata.namespace.clone().unwrap_or_default(),
                    bundle.metadata.name.clone().unwrap_or_default(),
                );
                manifest_map.insert(id, files);
            }
        }
    }
    let inputs = SnapshotInputs {
        apps,
        channels: cloned(&stores.channels),
        bundles,
        rollouts: cloned(&stores.rollouts),
        manifests: manifest_map,
    };
    let (snapshot, problems) = Snapshot::build(&inputs);
    for problem in problems {
        tracing::debug!(object = %problem.object, message = %problem.message, "not served");
    }
    Served {
        snapshot,
        storage,
        manifests: HashMap::new(),
    }
}

/// The reflectors' stores of the four kinds.
struct Stores {
    apps: Store<App>,
    channels: Store<Channel>,
    bundles: Store<Bundle>,
    rollouts: Store<Rollout>,
}

impl Stores {
    fn all_ready(&self) -> bool {
        self.apps.is_ready()
            && self.channels.is_ready()
            && self.bundles.is_ready()
            && self.rollouts.is_ready()
    }
}

/// Manifests are content-addressed (the key names the zip's sha256), so a key read once never
/// changes, whichever storage it was read from.
#[derive(Default)]
struct ManifestCache {
    files: HashMap<String, Arc<[ManifestFile]>>,
}

impl ManifestCache {
    async fn get(&mut self, storage: &OpenedStorage, key: &str) -> Option<Arc<[ManifestFile]>> {
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
