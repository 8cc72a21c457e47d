//! The device store's rows of standalone Channels' histories ([`SavedDocument`]s).

use super::{
    StoreError,
    device_store::DeviceStore,
    saved_documents::{DocumentTable, SavedDocument},
};

const CHANNEL_HISTORIES: DocumentTable = DocumentTable {
    table: "channel_histories",
    column: "history",
    operations: [
        "save a channel history",
        "read the channel histories",
        "read a channel history",
        "delete a channel history",
    ],
};

impl DeviceStore {
    /// Saves the history of a standalone Channel (replacing the one saved before), and returns
    /// once it is durable.
    pub async fn save_channel_history(
        &self,
        namespace: &str,
        name: &str,
        json: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        CHANNEL_HISTORIES
            .save(&self.pool, namespace, name, json, at_ms)
            .await
    }

    /// Every saved Channel history, by namespace then name.
    pub async fn channel_histories(&self) -> Result<Vec<SavedDocument>, StoreError> {
        CHANNEL_HISTORIES.list(&self.pool).await
    }

    /// Forgets a Channel's history; returns whether there was one.
    pub async fn delete_channel_history(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        CHANNEL_HISTORIES.delete(&self.pool, namespace, name).await
    }
}
