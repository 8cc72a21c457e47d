//! Leader election on a coordination.k8s.io/v1 Lease, through kube-lease-manager.

use tokio::{sync::watch, task::JoinHandle};

use super::{ControllerError, Options};
use crate::api::constants::field_manager;

/// The task that holds the Lease; it ends only on an error or when every receiver is gone.
pub type LeaseTask =
    JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>;

/// Starts competing for the Lease of `options`. The receiver reads `true` while this replica
/// holds it.
pub async fn elect(
    client: &kube::Client,
    options: &Options,
) -> Result<(watch::Receiver<bool>, LeaseTask), ControllerError> {
    let duration = options.lease_duration_seconds.max(2);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &options.lease_name)
        .with_namespace(&options.lease_namespace)
        .with_identity(&options.identity)
        .with_duration(duration)
        // Renew a third of the way before expiry.
        .with_grace((duration / 3).max(1))
        .with_field_manager(field_manager::CONTROLLER)
        .build()
        .await
        .map_err(|source| ControllerError::Lease {
            namespace: options.lease_namespace.clone(),
            name: options.lease_name.clone(),
            source,
        })?;
    Ok(manager.watch().await)
}
