//! The device store's rows of standalone Rollouts' states ([`SavedDocument`]s).

use super::{
    StoreError,
    device_store::DeviceStore,
    saved_documents::{DocumentTable, SavedDocument},
};

const ROLLOUT_STATES: DocumentTable = DocumentTable {
    table: "rollout_states",
    column: "state",
    operations: [
        "save a rollout state",
        "read the rollout states",
        "read a rollout state",
        "delete a rollout state",
    ],
};

impl DeviceStore {
    /// Saves the state of a standalone Rollout (replacing the one saved before), and returns
    /// once it is durable.
    pub async fn save_rollout_state(
        &self,
        namespace: &str,
        name: &str,
        json: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        ROLLOUT_STATES
            .save(&self.pool, namespace, name, json, at_ms)
            .await
    }

    /// Every saved Rollout state, by namespace then name.
    pub async fn rollout_states(&self) -> Result<Vec<SavedDocument>, StoreError> {
        ROLLOUT_STATES.list(&self.pool).await
    }

    /// Forgets a Rollout's state; returns whether there was one.
    pub async fn delete_rollout_state(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        ROLLOUT_STATES.delete(&self.pool, namespace, name).await
    }
}
