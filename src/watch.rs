//! One watch layer for the four custom kinds, used by the controller and by the update server's
//! Kubernetes source: each kind is listed and watched once, cached once, and fanned out to those
//! that react to it.

use std::{
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ReflectHandle, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use crate::api::{App, Bundle, Channel, Rollout};

/// A watch of one kind failed (it is retried with backoff).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watching {kind}: {message}")]
pub struct WatchError {
    /// The kind watched.
    pub kind: String,
    /// What failed.
    pub message: String,
}

/// Events a slow subscriber may lag behind before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The caches of the four custom kinds.
#[derive(Clone)]
pub struct Stores {
    /// Apps.
    pub apps: Store<App>,
    /// Channels.
    pub channels: Store<Channel>,
    /// Bundles.
    pub bundles: Store<Bundle>,
    /// Rollouts.
    pub rollouts: Store<Rollout>,
    /// One flag per kind, set once its first list is in the cache.
    synced: [Arc<AtomicBool>; 4],
}

impl Stores {
    /// Whether every cache has been filled by its first list.
    ///
    /// This reads flags the watches set, rather than waiting on the stores: a store wakes only
    /// its latest waiter, so another waiter would take the wake-up from its controller's runner.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|flag| flag.load(Ordering::Relaxed))
    }
}

/// A shared watch of one kind: its cache, and the writer that hands out subscriptions until the
/// watch is started.
pub struct SharedWatch<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    synced: Arc<AtomicBool>,
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// A new shared watch of `api` and its cache.
    pub fn new(api: Api<K>) -> (SharedWatch<K>, Store<K>) {
        let (reader, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        let watch = SharedWatch {
            writer,
            api,
            synced: Arc::new(AtomicBool::new(false)),
        };
        (watch, reader)
    }

    /// A stream of the objects as they are listed and changed, for a controller.
    pub fn subscribe(&self) -> ReflectHandle<K> {
        self.writer
            .subscribe()
            .expect("a store made by store_shared always hands out subscriptions")
    }

    /// The watch itself: it must be polled for the cache and the subscribers to see anything.
    /// Each item says that something changed, or that the watch failed (it goes on, with
    /// backoff).
    pub fn run(self) -> impl Stream<Item = Result<(), WatchError>> + Send {
        let kind = K::kind(&()).to_string();
        let synced = self.synced;
        watcher(self.api, watcher::Config::default())
            .default_backoff()
            // Managed fields are most of an object's size and no reconciler reads them: the
            // cache keeps objects without them.
            .modify(|object: &mut K| {
                object.meta_mut().managed_fields = None;
            })
            .reflect_shared(self.writer)
            .map(move |event| match event {
                Ok(watcher::Event::InitDone) => {
                    synced.store(true, Ordering::Relaxed);
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(error) => {
                    tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
                    Err(WatchError {
                        kind: kind.clone(),
                        message: error.to_string(),
                    })
                }
            })
    }
}

/// Namespace-scoped or cluster-wide, as the controller (or the update server) is configured.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The shared watches of the four kinds, not started yet.
pub struct Watches {
    /// Apps.
    pub apps: SharedWatch<App>,
    /// Channels.
    pub channels: SharedWatch<Channel>,
    /// Bundles.
    pub bundles: SharedWatch<Bundle>,
    /// Rollouts.
    pub rollouts: SharedWatch<Rollout>,
}

impl Watches {
    /// The watches and their caches.
    pub fn new(client: &Client, namespace: Option<&str>) -> (Watches, Stores) {
        let (apps, app_store) = SharedWatch::new(scoped(client, namespace));
        let (channels, channel_store) = SharedWatch::new(scoped(client, namespace));
        let (bundles, bundle_store) = SharedWatch::new(scoped(client, namespace));
        let (rollouts, rollout_store) = SharedWatch::new(scoped(client, namespace));
        let stores = Stores {
            apps: app_store,
            channels: channel_store,
            bundles: bundle_store,
            rollouts: rollout_store,
            synced: [
                Arc::clone(&apps.synced),
                Arc::clone(&channels.synced),
                Arc::clone(&bundles.synced),
                Arc::clone(&rollouts.synced),
            ],
        };
        (
            Watches {
                apps,
                channels,
                bundles,
                rollouts,
            },
            stores,
        )
    }

    /// The four watches as one stream of their changes and failures; polling it drives them.
    pub fn changes(self) -> impl Stream<Item = Result<(), WatchError>> + Send {
        futures::stream::select_all([
            self.apps.run().boxed(),
            self.channels.run().boxed(),
            self.bundles.run().boxed(),
            self.rollouts.run().boxed(),
        ])
    }

    /// Drives the four watches until the returned future is dropped.
    pub async fn run(self) {
        self.changes().for_each(|_| std::future::ready(())).await;
    }
}
