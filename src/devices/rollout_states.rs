//! The device store's rows of standalone Rollouts' states.

use sqlx::Row;

use super::{RolloutStateRow, StoreError, device_store::DeviceStore};

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
        sqlx::query(
            "INSERT INTO rollout_states (namespace, name, state, at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (namespace, name) DO UPDATE SET state = excluded.state, at_ms = excluded.at_ms",
        )
        .bind(namespace)
        .bind(name)
        .bind(json)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(StoreError::database("save a rollout state"))?;
        Ok(())
    }

    /// Every saved Rollout state, by namespace then name.
    pub async fn rollout_states(&self) -> Result<Vec<RolloutStateRow>, StoreError> {
        let rows =
            sqlx::query("SELECT namespace, name, state, at_ms FROM rollout_states ORDER BY namespace, name")
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::database("read the rollout states"))?;
        rows.iter()
            .map(|row| {
                Ok(RolloutStateRow {
                    namespace: row.try_get("namespace")?,
                    name: row.try_get("name")?,
                    json: row.try_get("state")?,
                    at_ms: row.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::database("read a rollout state"))
    }

    /// Forgets a Rollout's state; returns whether there was one.
    pub async fn delete_rollout_state(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM rollout_states WHERE namespace = $1 AND name = $2")
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(StoreError::database("delete a rollout state"))?;
        Ok(deleted.rows_affected() > 0)
    }
}
