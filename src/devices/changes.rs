//! The change feed that keeps replicas in step: on PostgreSQL, every transaction that sets or
//! clears a channel override or records a failed mark also appends those changes to
//! `device_changes`, numbered in commit order, and notifies [`CHANGES_CHANNEL`]. Each update
//! server follows the feed ([`follow_changes`]): a notification, a reconnection or a periodic
//! look makes it read every change after the last one it applied, so none is missed.
//!
//! Numbers come from `MAX(seq) + 1` under a transaction-level advisory lock taken just before
//! the commit: writers of changes commit one at a time, so the numbers have no holes and a
//! reader that has applied change N has seen every change before it.

use std::time::Duration;

use sqlx::{AnyConnection, Row, postgres::PgListener};

use super::{DeviceMemory, DeviceStore, StoreError, Write, device_store::Backend};

/// The PostgreSQL notification channel of the feed.
pub const CHANGES_CHANNEL: &str = "ota_device_changes";
/// How many of the latest changes the feed keeps; a replica further behind reloads its memory.
const KEEP_CHANGES: i64 = 100_000;
/// The advisory lock that orders the writers of changes (any fixed number, ours alone).
const CHANGES_LOCK: i64 = 0x07A0_C4A6;
/// How often a follower reads the feed without a notification: a safety net for a notification
/// lost with a connection.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How many changes one read takes.
const READ_LIMIT: i64 = 1000;

/// A change of what the update check remembers, as the feed stores it.
fn row_of(write: &Write) -> Option<(&str, &str, &'static str, &str)> {
    match write {
        Write::SetChannelOverride {
            app_id,
            device_id,
            channel,
        } => Some((app_id, device_id, "set_override", channel)),
        Write::ClearChannelOverride { app_id, device_id } => Some((app_id, device_id, "clear_override", "")),
        Write::FailedMark {
            app_id,
            device_id,
            version,
            ..
        } => Some((app_id, device_id, "failed", version)),
        _ => None,
    }
}

/// The write a feed row stands for (None for a kind this version does not know).
fn write_of(app_id: String, device_id: String, kind: &str, value: String) -> Option<Write> {
    match kind {
        "set_override" => Some(Write::SetChannelOverride {
            app_id,
            device_id,
            channel: value,
        }),
        "clear_override" => Some(Write::ClearChannelOverride { app_id, device_id }),
        "failed" => Some(Write::FailedMark {
            app_id,
            device_id,
            version: value,
            at_ms: 0,
        }),
        _ => None,
    }
}

/// Appends the changes of `batch` to the feed, in the batch's order, inside the caller's
/// transaction (PostgreSQL only; nothing on SQLite), and notifies the followers at commit.
/// Returns the number given to each write of the batch that is a change.
pub(super) async fn record_changes(
    connection: &mut AnyConnection,
    backend: Backend,
    batch: &[Write],
) -> Result<Vec<Option<i64>>, sqlx::Error> {
    let mut numbers = vec![None; batch.len()];
    if backend != Backend::Postgres || batch.iter().all(|write| row_of(write).is_none()) {
        return Ok(numbers);
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHANGES_LOCK)
        .execute(&mut *connection)
        .await?;
    let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM device_changes")
        .fetch_one(&mut *connection)
        .await?;
    let mut seq = last;
    for (number, write) in numbers.iter_mut().zip(batch) {
        let Some((app_id, device_id, kind, value)) = row_of(write) else {
            continue;
        };
        seq += 1;
        sqlx::query(
            "INSERT INTO device_changes (seq, app_id, device_id, kind, value) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(seq)
        .bind(app_id)
        .bind(device_id)
        .bind(kind)
        .bind(value)
        .execute(&mut *connection)
        .await?;
        *number = Some(seq);
    }
    // Pruning now and then keeps the feed short without a task of its own.
    if last / READ_LIMIT != seq / READ_LIMIT {
        sqlx::query("DELETE FROM device_changes WHERE seq <= $1")
            .bind(seq - KEEP_CHANGES)
            .execute(&mut *connection)
            .await?;
    }
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANGES_CHANNEL)
        .execute(&mut *connection)
        .await?;
    Ok(numbers)
}

impl DeviceStore {
    /// The number of the latest change in the feed (0 when none, and always on SQLite).
    pub async fn latest_change(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM device_changes")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::database("read the latest change"))
    }

    /// Up to `limit` changes after `after`, in order, with their numbers.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<(i64, Write)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, app_id, device_id, kind, value FROM device_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database("read the change feed"))?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let read = |column: &str| row.try_get::<String, _>(column);
            let seq: i64 = row
                .try_get("seq")
                .map_err(StoreError::database("read the change feed"))?;
            let (app_id, device_id, kind, value) =
                (read("app_id"), read("device_id"), read("kind"), read("value"));
            let (Ok(app_id), Ok(device_id), Ok(kind), Ok(value)) = (app_id, device_id, kind, value) else {
                return Err(StoreError::FeedRow { seq });
            };
            match write_of(app_id, device_id, &kind, value) {
                Some(write) => changes.push((seq, write)),
                // A kind written by a newer version: skipped, as its number still counts.
                None => tracing::debug!(seq, %kind, "a change of an unknown kind in the feed; skipped"),
            }
        }
        Ok(changes)
    }
}

/// Reads and applies every change after the memory's position in the feed. When changes it
/// needs were pruned (it fell more than the feed keeps behind), reloads the whole memory.
pub async fn catch_up(store: &DeviceStore, memory: &DeviceMemory) -> Result<(), StoreError> {
    loop {
        let after = memory.feed_position();
        let changes = store.changes_after(after, READ_LIMIT).await?;
        let Some(&(first, _)) = changes.first() else {
            return Ok(());
        };
        if first > after + 1 && after > 0 {
            memory.replace_with(&store.load_memory().await?);
            tracing::warn!(
                after,
                "the change feed moved on past this replica: memory reloaded"
            );
            continue;
        }
        let full = changes.len() as i64 == READ_LIMIT;
        for (seq, write) in &changes {
            memory.apply_change(write, *seq);
        }
        if !full {
            return Ok(());
        }
    }
}

/// Follows the feed of a PostgreSQL store until the task is dropped: listens on
/// [`CHANGES_CHANNEL`] (through a connection of its own, re-established when lost) and catches
/// up on every notification, after every reconnection and every [`LOOK_EVERY`]. Returns at
/// once for SQLite.
pub async fn follow_changes(store: DeviceStore, memory: DeviceMemory) {
    let Some(url) = store.listen_url().map(str::to_owned) else {
        return;
    };
    let mut listener: Option<PgListener> = None;
    loop {
        if listener.is_none() {
            listener = match PgListener::connect(&url).await {
                Ok(mut connected) => match connected.listen(CHANGES_CHANNEL).await {
                    Ok(()) => Some(connected),
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen to the change feed; reading it every {LOOK_EVERY:?}");
                        None
                    }
                },
                Err(error) => {
                    tracing::warn!(error = %store.scrub(&error.to_string()), "cannot connect to follow the change feed; reading it every {LOOK_EVERY:?}");
                    None
                }
            };
        }
        if let Some(connected) = listener.as_mut() {
            // Ok(None): the connection was lost (it reconnects on the next call, and what was
            // notified meanwhile is read now).
            match tokio::time::timeout(LOOK_EVERY, connected.try_recv()).await {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the change feed's connection failed; connecting again");
                    listener = None;
                }
            }
        } else {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        if let Err(error) = catch_up(&store, &memory).await {
            tracing::warn!(%error, "cannot read the change feed; trying again");
        }
    }
}
