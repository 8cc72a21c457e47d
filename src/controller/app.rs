//! The App reconciler: read → render (pure) → server-side apply every child → write status only
//! when it changed.

use std::{fmt::Debug, sync::Arc, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        networking::v1::Ingress,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action, reflector::ReflectHandle, watcher},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;

use super::{
    Context,
    caches::{drive, scoped},
    status::{
        ReconcileError, apply_status, backoff_key, count_failure, event_type, instrumented, object_key,
        publish, retry_later,
    },
};
use crate::{
    api::{
        App,
        constants::{MANAGED_BY_VALUE, field_manager, label, reason},
    },
    core::{
        app_children::{self, AppChildren, RenderError},
        app_status::{Outcome, desired_status, status_changed, transition_event},
        transitions::FailureCategory,
    },
};

/// The kind label of this reconciler's metrics.
const KIND: &str = "App";
/// How often a healthy App is looked at again, to repair drift the watches missed.
/// Children are watched, so a change or deletion of one triggers a reconcile at once; this is a
/// safety net, and long enough that an idle controller does not re-apply every child (each
/// apply is a write request even when it changes nothing).
const RESYNC: Duration = Duration::from_secs(3600);
/// How often an App that names a missing Secret is looked at again (Secrets are not watched).
const REFERENCE_RECHECK: Duration = Duration::from_secs(30);

/// Runs the App controller until `stop` reads `true`, on the shared App watch; the children it
/// renders are watched (by label) so that a change or deletion of one repairs it.
pub async fn run(
    context: Arc<Context>,
    namespace: Option<String>,
    apps: ReflectHandle<App>,
    stop: watch::Receiver<bool>,
) {
    let client = context.client.clone();
    let namespace = namespace.as_deref();
    let children = watcher::Config::default().labels(&format!("{}={MANAGED_BY_VALUE}", label::MANAGED_BY));
    let controller = Controller::for_shared_stream(apps, context.stores.apps.clone())
        .owns(scoped::<ServiceAccount>(&client, namespace), children.clone())
        .owns(scoped::<Role>(&client, namespace), children.clone())
        .owns(scoped::<RoleBinding>(&client, namespace), children.clone())
        .owns(scoped::<ConfigMap>(&client, namespace), children.clone())
        .owns(scoped::<Deployment>(&client, namespace), children.clone())
        .owns(scoped::<Service>(&client, namespace), children.clone())
        .owns(
            scoped::<PodDisruptionBudget>(&client, namespace),
            children.clone(),
        )
        .owns(
            scoped::<HorizontalPodAutoscaler>(&client, namespace),
            children.clone(),
        )
        .owns(scoped::<Ingress>(&client, namespace), children);
    drive(controller, reconcile, error_policy, context, stop).await;
}

/// One reconcile of one App.
#[tracing::instrument(skip_all, fields(kind = KIND, name = %app.name_any(), namespace = app.namespace().unwrap_or_default()))]
pub async fn reconcile(app: Arc<App>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    if let Some(wait) = context.not_now() {
        return Ok(Action::requeue(wait));
    }
    let result = instrumented(&context, KIND, reconcile_leader(&app, &context)).await;
    match result {
        Ok((outcome, action)) => {
            if let Outcome::Stalled { reason, .. } = &outcome {
                count_failure(&context, KIND, FailureCategory::of_reason(reason));
            }
            write_status(&app, &context, &outcome).await?;
            context.backoff.reset(&backoff_key(KIND, app.as_ref()));
            Ok(action)
        }
        Err(error) => {
            let message = crate::telemetry::error_chain(&error);
            tracing::warn!(app = %object_key(app.as_ref()), error = %message, "App reconcile failed; retrying");
            // Best effort: the retry comes from error_policy whether or not this write works.
            if let Err(status_error) = write_status(&app, &context, &Outcome::Retrying { message }).await {
                tracing::debug!(error = %status_error, "could not record the failure in status");
            }
            Err(error)
        }
    }
}

/// Transient failures wait a per-object, growing, jittered delay.
pub fn error_policy(app: Arc<App>, error: &ReconcileError, context: Arc<Context>) -> Action {
    retry_later(KIND, app.as_ref(), error, &context)
}

async fn reconcile_leader(app: &App, context: &Context) -> Result<(Outcome, Action), ReconcileError> {
    let namespace = app.namespace().unwrap_or_default();
    if let Some(message) = missing_secret(app, context, &namespace).await? {
        let outcome = Outcome::Stalled {
            reason: reason::REFERENCE_NOT_FOUND,
            message,
        };
        return Ok((outcome, Action::requeue(REFERENCE_RECHECK)));
    }
    let children = match app_children::render(app, &context.settings) {
        Ok(children) => children,
        Err(
            error
            @ (RenderError::InvalidChildName { .. } | RenderError::AutoscalingWithoutSharedStore { .. }),
        ) => {
            let outcome = Outcome::Stalled {
                reason: reason::INVALID_SPEC,
                message: error.to_string(),
            };
            // Terminal: nothing to retry until the App changes (which triggers a reconcile).
            return Ok((outcome, Action::await_change()));
        }
        Err(error @ RenderError::NotStored(_)) => {
            let outcome = Outcome::Stalled {
                reason: reason::INVALID_SPEC,
                message: error.to_string(),
            };
            return Ok((outcome, Action::await_change()));
        }
    };
    let deployment = apply_children(app, context, &children).await?;
    let ready_replicas = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let outcome = Outcome::Applied {
        endpoint: children.endpoint.clone(),
        replicas: children.replicas,
        ready_replicas,
    };
    Ok((outcome, Action::requeue(RESYNC)))
}

/// A sentence naming the first Secret (or key) the App references that does not exist.
async fn missing_secret(
    app: &App,
    context: &Context,
    namespace: &str,
) -> Result<Option<String>, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    for (name, keys) in app_children::referenced_secrets(&app.spec) {
        let secret = secrets
            .get_opt(&name)
            .await
            .map_err(ReconcileError::api(format!("reading Secret {namespace}/{name}")))?;
        let Some(secret) = secret else {
            return Ok(Some(format!(
                "the Secret {name} named by the App does not exist in namespace {namespace}: create it"
            )));
        };
        let has = |key: &str| {
            secret.data.as_ref().is_some_and(|d| d.contains_key(key))
                || secret.string_data.as_ref().is_some_and(|d| d.contains_key(key))
        };
        if let Some(key) = keys.iter().find(|key| !has(key)) {
            return Ok(Some(format!("the Secret {name} has no key {key}")));
        }
    }
    Ok(None)
}

async fn apply<K>(context: &Context, namespace: &str, object: &K) -> Result<K, ReconcileError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(context.client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(field_manager::CONTROLLER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(ReconcileError::api(format!(
        "applying {} {namespace}/{name}",
        K::kind(&())
    )))
}

/// Deletes the optional child `name` of kind `K` if it exists and this App controls it.
async fn remove_if_owned<K>(
    context: &Context,
    app: &App,
    namespace: &str,
    name: &str,
) -> Result<(), ReconcileError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(context.client.clone(), namespace);
    let action = || format!("removing {} {namespace}/{name}", K::kind(&()));
    let Some(existing) = api.get_opt(name).await.map_err(ReconcileError::api(action()))? else {
        return Ok(());
    };
    let owned = existing
        .owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && Some(&owner.uid) == app.metadata.uid.as_ref());
    if owned {
        match api.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(ReconcileError::api(action())(error)),
        }
    }
    Ok(())
}

async fn apply_children(
    app: &App,
    context: &Context,
    children: &AppChildren,
) -> Result<Deployment, ReconcileError> {
    let namespace = children.namespace.as_str();
    apply(context, namespace, &children.service_account).await?;
    apply(context, namespace, &children.role).await?;
    apply(context, namespace, &children.role_binding).await?;
    apply(context, namespace, &children.config_map).await?;
    let deployment = apply(context, namespace, &children.deployment).await?;
    apply(context, namespace, &children.service).await?;
    apply(context, namespace, &children.internal_service).await?;
    match &children.pod_disruption_budget {
        Some(pdb) => drop(apply(context, namespace, pdb).await?),
        None => remove_if_owned::<PodDisruptionBudget>(context, app, namespace, &children.name).await?,
    }
    match &children.autoscaler {
        Some(hpa) => drop(apply(context, namespace, hpa).await?),
        None => remove_if_owned::<HorizontalPodAutoscaler>(context, app, namespace, &children.name).await?,
    }
    match &children.ingress {
        Some(ingress) => drop(apply(context, namespace, ingress).await?),
        None => remove_if_owned::<Ingress>(context, app, namespace, &children.name).await?,
    }
    Ok(deployment)
}

/// How often an App's update server is asked for its monthly active devices.
const DEVICES_EVERY: Duration = Duration::from_secs(3600);

/// When each App (by uid) last had its update server asked for its monthly active devices: the
/// figure is asked at most every [`DEVICES_EVERY`], so the status write it causes (and the
/// reconcile that write starts) asks nothing.
#[derive(Debug, Default)]
pub struct DevicesAsked(std::sync::Mutex<std::collections::HashMap<String, Timestamp>>);

impl DevicesAsked {
    /// Whether the App is due (never asked, or asked `DEVICES_EVERY` ago); if so, records `now`.
    fn take_if_due(&self, uid: &str, now: Timestamp) -> bool {
        let mut asked = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = asked
            .get(uid)
            .is_none_or(|last| now.duration_since(*last).unsigned_abs() >= DEVICES_EVERY);
        if due {
            asked.insert(uid.to_owned(), now);
        }
        due
    }
}

/// The App's devices seen in 30 days, from its update server once a pod of it is ready and at
/// most every [`DEVICES_EVERY`] (`None` otherwise, or when the server cannot tell: logged, and
/// the status keeps its last figure).
async fn monthly_active_devices(app: &App, context: &Context, outcome: &Outcome) -> Option<i64> {
    let Outcome::Applied { ready_replicas, .. } = outcome else {
        return None;
    };
    if *ready_replicas < 1
        || !context
            .devices_asked
            .take_if_due(&app.uid().unwrap_or_default(), context.clock.now())
    {
        return None;
    }
    let namespace = app.namespace().unwrap_or_default();
    match context
        .figures
        .monthly_active_devices(&namespace, &app.name_any(), &app.spec.app_id)
        .await
    {
        Ok(devices) => Some(devices),
        Err(error) => {
            tracing::debug!(error = %crate::telemetry::error_chain(&error), "monthly active devices unavailable");
            None
        }
    }
}

async fn write_status(app: &App, context: &Context, outcome: &Outcome) -> Result<(), ReconcileError> {
    let devices = monthly_active_devices(app, context, outcome).await;
    let desired = desired_status(app, outcome, devices, context.clock.now());
    if !status_changed(app, &desired) {
        return Ok(());
    }
    let written = apply_status(context, app, &desired)
        .await
        .map_err(ReconcileError::api(format!(
            "writing the status of App {}",
            object_key(app)
        )))?;
    if !written {
        return Ok(());
    }
    if let Some(transition) = transition_event(app, &desired) {
        publish(
            context,
            app,
            event_type(transition.severity),
            &transition.reason,
            transition.note,
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
