//! The device store's rows of standalone Channels' histories.

use sqlx::Row;

use super::{StoreError, device_store::DeviceStore};

/// A standalone Channel's history, kept in the store so a restart keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelHistoryRow {
    /// The Channel's namespace.
    pub namespace: String,
    /// The Channel's name.
    pub name: String,
    /// The history, as the caller serialized it.
    pub json: String,
    /// When it was saved (milliseconds since the epoch).
    pub at_ms: i64,
}

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
        sqlx::query(
            "INSERT INTO channel_histories (namespace, name, history, at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (namespace, name) DO UPDATE SET history = excluded.history, at_ms = excluded.at_ms",
        )
        .bind(namespace)
        .bind(name)
        .bind(json)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(StoreError::database("save a channel history"))?;
        Ok(())
    }

    /// Every saved Channel history, by namespace then name.
    pub async fn channel_histories(&self) -> Result<Vec<ChannelHistoryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT namespace, name, history, at_ms FROM channel_histories ORDER BY namespace, name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database("read the channel histories"))?;
        rows.iter()
            .map(|row| {
                Ok(ChannelHistoryRow {
                    namespace: row.try_get("namespace")?,
                    name: row.try_get("name")?,
                    json: row.try_get("history")?,
                    at_ms: row.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::database("read a channel history"))
    }

    /// Forgets a Channel's history; returns whether there was one.
    pub async fn delete_channel_history(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM channel_histories WHERE namespace = $1 AND name = $2")
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(StoreError::database("delete a channel history"))?;
        Ok(deleted.rows_affected() > 0)
    }
}
