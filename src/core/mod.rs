//! The pure core: decisions as functions of (spec, observed state, request, `now`) that return
//! data. No kube client, no HTTP, no clock, no I/O in here.

pub mod active_devices;
pub mod app_children;
pub mod app_status;
pub mod backoff;
pub mod bundle_lifecycle;
pub mod channel_history;
pub mod channel_self;
pub mod channel_status;
pub mod cohort;
pub mod conditions;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod notification;
pub mod rate_limits;
pub mod rollout;
pub mod snapshot;
pub mod stats;
pub mod transitions;
pub mod update;
pub mod version;
