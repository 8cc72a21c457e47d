//! One watch per custom kind, shared by every reconciler: each kind is listed and watched once,
//! cached once, and fanned out to the controllers that react to it.

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
        Controller, WatchStreamExt,
        controller::{self, Action},
        reflector::{self, ObjectRef, ReflectHandle, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use super::Context;
use crate::api::{App, Bundle, Channel, Rollout};

/// Reconciles of one kind that run at once. Unbounded, a start with 10,000 Bundles runs 10,000
/// reconciles together, and their transient memory is the process's peak.
const RECONCILE_CONCURRENCY: u16 = 16;

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
    pub fn run(self) -> impl Stream<Item = ()> + Send {
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
                Ok(watcher::Event::InitDone) => synced.store(true, Ordering::Relaxed),
                Ok(_) => {}
                Err(error) => tracing::warn!(%kind, %error, "watch failed; retrying with backoff"),
            })
    }
}

/// Namespace-scoped or cluster-wide, as the controller is configured.
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

    /// Drives the four watches until the returned future is dropped.
    pub async fn run(self) {
        let streams = futures::stream::select_all([
            self.apps.run().boxed(),
            self.channels.run().boxed(),
            self.bundles.run().boxed(),
            self.rollouts.run().boxed(),
        ]);
        streams.for_each(|()| std::future::ready(())).await;
    }
}

/// Objects of `store` in `namespace` that `keep` accepts.
pub fn in_namespace<K>(store: &Store<K>, namespace: Option<&str>, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.state_filter(|object| object.meta().namespace.as_deref() == namespace && keep(object))
}

/// References to the objects of `store` in `namespace` that `keep` accepts: what a watch of
/// another kind maps its events to.
pub fn refs_where<K>(
    store: &Store<K>,
    namespace: Option<String>,
    keep: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    in_namespace(store, namespace.as_deref(), keep)
        .iter()
        .map(|object| ObjectRef::from_obj(object.as_ref()))
        .collect()
}

/// Runs `controller` until `stop` reads `true`, with the reconciler and error policy of its kind.
pub async fn drive<K, Fut, E>(
    controller: Controller<K>,
    reconcile: impl FnMut(Arc<K>, Arc<Context>) -> Fut,
    error_policy: impl Fn(Arc<K>, &E, Arc<Context>) -> Action,
    context: Arc<Context>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    Fut: futures::TryFuture<Ok = Action, Error = E> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let kind = K::kind(&()).to_string();
    controller
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            if let Err(error) = result {
                tracing::debug!(%kind, %error, "a reconcile ended with an error");
            }
            std::future::ready(())
        })
        .await;
}
