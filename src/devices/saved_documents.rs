//! Tables of JSON documents standalone mode keeps per object (namespace, name), so that a
//! restart resumes where it stopped: a Rollout's state, a Channel's history. One implementation
//! for each such table.

use sqlx::{AnyPool, Row};

use super::StoreError;

/// A saved document of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedDocument {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The document, as the caller serialized it.
    pub json: String,
    /// When it was saved (milliseconds since the epoch).
    pub at_ms: i64,
}

/// One table of saved documents: `(namespace, name)` as its key, the document in `column`, and
/// `at_ms`.
pub(super) struct DocumentTable {
    /// The table.
    pub(super) table: &'static str,
    /// The document's column.
    pub(super) column: &'static str,
    /// What each operation is called in errors: save, read all, read one, delete.
    pub(super) operations: [&'static str; 4],
}

impl DocumentTable {
    /// Saves the document of an object (replacing the one saved before); returns once durable.
    pub(super) async fn save(
        &self,
        pool: &AnyPool,
        namespace: &str,
        name: &str,
        json: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let Self {
            table,
            column,
            operations,
        } = self;
        let sql = format!(
            "INSERT INTO {table} (namespace, name, {column}, at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (namespace, name) DO UPDATE SET {column} = excluded.{column}, at_ms = excluded.at_ms"
        );
        sqlx::query(&sql)
            .bind(namespace)
            .bind(name)
            .bind(json)
            .bind(at_ms)
            .execute(pool)
            .await
            .map_err(StoreError::database(operations[0]))?;
        Ok(())
    }

    /// Every saved document, by namespace then name.
    pub(super) async fn list(&self, pool: &AnyPool) -> Result<Vec<SavedDocument>, StoreError> {
        let Self {
            table,
            column,
            operations,
        } = self;
        let sql = format!("SELECT namespace, name, {column}, at_ms FROM {table} ORDER BY namespace, name");
        let rows = sqlx::query(&sql)
            .fetch_all(pool)
            .await
            .map_err(StoreError::database(operations[1]))?;
        rows.iter()
            .map(|row| {
                Ok(SavedDocument {
                    namespace: row.try_get("namespace")?,
                    name: row.try_get("name")?,
                    json: row.try_get(*column)?,
                    at_ms: row.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::database(operations[2]))
    }

    /// Forgets an object's document; returns whether there was one.
    pub(super) async fn delete(
        &self,
        pool: &AnyPool,
        namespace: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        let Self {
            table, operations, ..
        } = self;
        let sql = format!("DELETE FROM {table} WHERE namespace = $1 AND name = $2");
        let deleted = sqlx::query(&sql)
            .bind(namespace)
            .bind(name)
            .execute(pool)
            .await
            .map_err(StoreError::database(operations[3]))?;
        Ok(deleted.rows_affected() > 0)
    }
}
