//! The custom resources of `ota.dev/v1alpha1` and every contract string.
//!
//! Doc comments on these types become the field descriptions of the generated CRDs
//! (`ota crds`), so they are written for the people who read `kubectl explain`.

// kube's `printcolumn(name = .., type_ = ..)` repeats argument names across columns, which
// clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod app;
pub mod bundle;
pub mod channel;
pub mod common;
pub mod constants;
pub mod rollout;

pub use app::{App, AppSpec, AppStatus};
pub use bundle::{Bundle, BundleSpec, BundleStatus};
pub use channel::{Channel, ChannelSpec, ChannelStatus};
pub use rollout::{Rollout, RolloutSpec, RolloutStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD of the operator, in a stable order (App, Channel, Bundle, Rollout).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![App::crd(), Channel::crd(), Bundle::crd(), Rollout::crd()]
}
