//! What the reconcilers share over the one watch layer ([`crate::watch`]): lookups in its caches
//! and the loop that drives a controller.

use std::{fmt::Debug, sync::Arc};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Resource,
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::{ObjectRef, Store},
    },
};
use serde::de::DeserializeOwned;

use super::Context;
pub use crate::watch::{SharedWatch, Stores, Watches, scoped};

/// Reconciles of one kind that run at once. Unbounded, a start with 10,000 Bundles runs 10,000
/// reconciles together, and their transient memory is the process's peak.
const RECONCILE_CONCURRENCY: u16 = 16;

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
/// On a clock moved by hand (a test's), every object is reconciled again at each move: the
/// requeues run on tokio's timers, which do not see the clock jump past a pause's end.
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
    let controller = match context.clock.moves() {
        Some(moves) => controller.reconcile_all_on(clock_moves(moves)),
        None => controller,
    };
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

/// One item per move of a clock, ending when the clock is dropped.
fn clock_moves(moves: tokio::sync::watch::Receiver<Timestamp>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(moves, |mut moves| async move {
        moves.changed().await.ok().map(|()| ((), moves))
    })
}
