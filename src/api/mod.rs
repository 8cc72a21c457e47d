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
mod platform;
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

#[cfg(test)]
mod tests {
    use kube::Resource;

    use super::{constants::*, *};

    /// The derive attributes need literals; this keeps them equal to the named constants.
    #[test]
    fn generated_crds_use_the_named_constants() {
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap();
            assert_eq!(crd.spec.group, GROUP, "{name}");
            assert_eq!(crd.spec.scope, "Namespaced", "{name}");
            assert_eq!(crd.spec.versions.len(), 1, "{name}");
            assert_eq!(crd.spec.versions[0].name, VERSION, "{name}");
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&[CATEGORY.to_owned()][..]),
                "{name}"
            );
            assert!(
                crd.spec.versions[0]
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
            let columns = crd.spec.versions[0]
                .additional_printer_columns
                .clone()
                .unwrap_or_default();
            let ready = format!(".status.conditions[?(@.type==\"{}\")].status", condition::READY);
            assert!(
                columns.iter().any(|c| c.json_path == ready),
                "{name} has no Ready column"
            );
        }
        assert_eq!(App::api_version(&()), API_VERSION);
        assert_eq!(Rollout::api_version(&()), API_VERSION);
    }

    #[test]
    fn the_crds_come_in_a_stable_order_with_distinct_short_names() {
        let crds = crds();
        let kinds: Vec<&str> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
        assert_eq!(kinds, ["App", "Channel", "Bundle", "Rollout"]);
        let short: Vec<String> = crds
            .iter()
            .flat_map(|c| c.spec.names.short_names.clone().unwrap())
            .collect();
        assert_eq!(short, ["otaapp", "otach", "otabundle", "otaro"]);
    }
}
