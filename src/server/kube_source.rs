//! The Kubernetes snapshot source: the one watch layer ([`crate::watch`]) watches the four kinds;
//! every change rebuilds the snapshot, which is swapped in whole. Requests never wait on the
//! watch. When the API server is lost, the last good snapshot keeps being served and `/readyz`
//! says so.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{Client, Resource, runtime::reflector::Store};

use super::{
    Served, ServerState, SourceHealth,
    assembly::{self, ManifestCache, Objects},
};
use crate::watch::{Stores, Watches};

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

/// Watches until the process stops, publishing a snapshot after each burst of changes.
pub async fn run(client: Client, options: KubeSourceOptions, state: Arc<ServerState>) {
    let (watches, stores) = Watches::new(&client, options.namespace.as_deref());
    let mut events = watches.changes().boxed();
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
            Some(Some(Err(error))) => {
                let reason = error.to_string();
                if state.health() != SourceHealth::Degraded(reason.clone()) {
                    tracing::warn!(%reason, "lost the API server; still serving the last good snapshot");
                }
                state.set_health(SourceHealth::Degraded(reason));
                continue;
            }
            Some(None) => return, // the streams ended: the process is stopping
            None => {}            // quiet, or waited long enough: rebuild now
        }
        if !stores.synced() {
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
    let objects = Objects {
        apps: assembly::open_storages(state, apps),
        channels: cloned(&stores.channels),
        bundles: cloned(&stores.bundles),
        rollouts: cloned(&stores.rollouts),
    };
    let assembled = assembly::assemble(objects, manifests).await;
    for problem in &assembled.problems {
        tracing::warn!(%problem, "not serving the App");
    }
    let (served, problems) = assembly::served(&assembled.inputs, assembled.storage);
    for problem in problems {
        tracing::debug!(%problem, "not served");
    }
    served
}
