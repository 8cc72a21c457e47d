//! An App's status as a pure decision: what a reconcile's outcome makes the status say, whether
//! that differs from what is stored, and the Event the change deserves.

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{
        App, AppStatus,
        constants::{condition, reason},
    },
    core::{
        conditions,
        transitions::{Transition, ready_transition},
    },
};

/// Where a reconcile got to, as the status should tell it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every child is applied; `ready_replicas` of `replicas` pods are ready.
    Applied {
        /// The base URL devices reach.
        endpoint: String,
        /// Pods wanted.
        replicas: i32,
        /// Pods ready, from the Deployment's status.
        ready_replicas: i32,
    },
    /// Stuck until the App (or what it names) changes.
    Stalled {
        /// A PascalCase reason.
        reason: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A transient failure, retried with backoff.
    Retrying {
        /// The failure.
        message: String,
    },
}

/// The status an App should have after `outcome` (pure). Conditions other than the kstatus
/// three and fields the controller does not own are left out: server-side apply keeps them.
/// `monthly_active_devices` is what the update server said now; when it could not be asked, the
/// status keeps the last figure.
pub fn desired_status(
    app: &App,
    outcome: &Outcome,
    monthly_active_devices: Option<i64>,
    now: Timestamp,
) -> AppStatus {
    let existing = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation;
    let (wanted, endpoint, replicas, ready_replicas) = match outcome {
        Outcome::Applied {
            endpoint,
            replicas,
            ready_replicas,
        } => {
            let set = if ready_replicas >= replicas {
                conditions::ready_set(format!(
                    "the update server is serving at {endpoint} ({ready_replicas} of {replicas} pods ready)"
                ))
            } else {
                conditions::reconciling_set(
                    reason::PROGRESSING,
                    format!("waiting for update-server pods: {ready_replicas} of {replicas} ready"),
                )
            };
            (
                set,
                Some(endpoint.clone()),
                Some(*replicas),
                Some(*ready_replicas),
            )
        }
        Outcome::Stalled { reason, message } => (
            conditions::stalled_set(reason, message.clone()),
            existing.endpoint.clone(),
            existing.replicas,
            existing.ready_replicas,
        ),
        Outcome::Retrying { message } => (
            conditions::reconciling_set(reason::PROGRESSING_WITH_RETRY, message.clone()),
            existing.endpoint.clone(),
            existing.replicas,
            existing.ready_replicas,
        ),
    };
    let merged = conditions::merge_conditions(&existing.conditions, &wanted, generation, now);
    AppStatus {
        conditions: merged
            .into_iter()
            .filter(|c| KSTATUS_TYPES.contains(&c.type_.as_str()))
            .collect(),
        observed_generation: generation,
        endpoint,
        ready_replicas,
        replicas,
        monthly_active_devices: monthly_active_devices.or(existing.monthly_active_devices),
    }
}

const KSTATUS_TYPES: [&str; 3] = [condition::READY, condition::RECONCILING, condition::STALLED];

/// Whether writing `desired` would change what the App's status says (pure).
pub fn status_changed(app: &App, desired: &AppStatus) -> bool {
    let existing = app.status.clone().unwrap_or_default();
    let ours: Vec<_> = existing
        .conditions
        .iter()
        .filter(|c| KSTATUS_TYPES.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    ours != desired.conditions
        || existing.observed_generation != desired.observed_generation
        || existing.endpoint != desired.endpoint
        || existing.replicas != desired.replicas
        || existing.ready_replicas != desired.ready_replicas
        || existing.monthly_active_devices != desired.monthly_active_devices
}

/// The Event a status change deserves, if any.
pub fn transition_event(app: &App, desired: &AppStatus) -> Option<Transition> {
    let before = app.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    ready_transition(before, &desired.conditions)
}

#[cfg(test)]
mod tests;
