//! The device store's reads: what the hot path loads into memory, and the statistics.

use sqlx::{Row, any::AnyRow};

use super::{
    Counter, DeviceMemory, DeviceRecord, OutcomeFigures, PrunedOutcomes, StoreError,
    device_store::DeviceStore, memory::RememberedApps,
};

/// The window of [`DeviceStore::monthly_active_devices`].
const MONTH_MS: i64 = 30 * 24 * 60 * 60 * 1000;

impl DeviceStore {
    /// Loads what the hot path needs into memory: server-side channel overrides and failed marks.
    pub async fn load_memory(&self) -> Result<DeviceMemory, StoreError> {
        // The feed's position first: a change committed during the load is then applied again
        // by the follower, never missed (applying one twice changes nothing).
        let feed_position = self.latest_change().await?;
        let overrides = sqlx::query(
            "SELECT app_id, device_id, channel_override FROM devices WHERE channel_override IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database("load the channel overrides"))?;
        let failed_marks = sqlx::query(
            "SELECT app_id, device_id, version FROM failed_marks ORDER BY app_id, device_id, at_ms, version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database("load the failed marks"))?;

        let mut loaded = RememberedApps::default();
        loaded.feed_position = feed_position;
        for row in &overrides {
            let (app_id, device_id, channel) = three_texts(row, "channel_override")
                .map_err(StoreError::database("read a channel override"))?;
            loaded.set_channel_override(&app_id, &device_id, &channel);
        }
        for row in &failed_marks {
            let (app_id, device_id, version) =
                three_texts(row, "version").map_err(StoreError::database("read a failed mark"))?;
            loaded.mark_failed(&app_id, &device_id, &version);
        }
        tracing::info!(
            overrides = overrides.len(),
            failed_marks = failed_marks.len(),
            "device memory loaded"
        );
        Ok(DeviceMemory::from_loaded(loaded))
    }

    /// The failure figures of `version` in `channel` of `app_id`: the devices whose latest
    /// outcome with that version (a `set` or a failure, see [`Write::Outcome`]) came at or after
    /// `since_ms` while they were on that channel, and how many of them ever failed with it.
    ///
    /// One range scan of an index that holds every column it reads.
    pub async fn outcome_figures(
        &self,
        app_id: &str,
        channel: &str,
        version: &str,
        since_ms: i64,
    ) -> Result<OutcomeFigures, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS attempts, COUNT(CASE WHEN failed <> 0 THEN 1 END) AS failures \
             FROM device_outcomes WHERE app_id = $1 AND channel = $2 AND version = $3 AND at_ms >= $4",
        )
        .bind(app_id)
        .bind(channel)
        .bind(version)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::database("count the outcomes of a version"))?;
        let count = |column: &str| -> Result<u64, sqlx::Error> {
            let value: i64 = row.try_get(column)?;
            Ok(u64::try_from(value).unwrap_or(0))
        };
        Ok(OutcomeFigures {
            attempts: count("attempts").map_err(StoreError::database("read the outcome figures"))?,
            failures: count("failures").map_err(StoreError::database("read the outcome figures"))?,
        })
    }

    /// Deletes the oldest of `app_id`'s outcomes last reported before `before_ms` (see
    /// [`crate::core::rollout::outcome_retention`]): about `chunk` of them, oldest first, so the
    /// writes waiting meanwhile wait for one such transaction at most. Call it again while
    /// [`PrunedOutcomes::more`] says so.
    ///
    /// Each chunk is two range scans of the `(app_id, at_ms)` index: the time of the `chunk`-th
    /// oldest row, then a delete of the rows up to that time (more than `chunk` only when several
    /// share it). The delete names the time again, so a row that a newer report moved past it
    /// stays. On PostgreSQL a deadlock with a concurrent batch fails one of the two: the write
    /// queue retries a batch, and the caller's next round a prune.
    pub async fn prune_outcomes(
        &self,
        app_id: &str,
        before_ms: i64,
        chunk: u32,
    ) -> Result<PrunedOutcomes, StoreError> {
        let boundary: Option<i64> = sqlx::query_scalar(
            "SELECT at_ms FROM device_outcomes WHERE app_id = $1 AND at_ms < $2 \
             ORDER BY at_ms LIMIT 1 OFFSET $3",
        )
        .bind(app_id)
        .bind(before_ms)
        .bind(i64::from(chunk.max(1)) - 1)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::database("find the oldest outcomes"))?;
        // Fewer than `chunk` old rows: they all go, and this was the last chunk.
        let (sql, until) = match boundary {
            Some(at_ms) => (
                "DELETE FROM device_outcomes WHERE app_id = $1 AND at_ms <= $2",
                at_ms,
            ),
            None => (
                "DELETE FROM device_outcomes WHERE app_id = $1 AND at_ms < $2",
                before_ms,
            ),
        };
        let deleted = sqlx::query(sql)
            .bind(app_id)
            .bind(until)
            .execute(&self.pool)
            .await
            .map_err(StoreError::database("delete old outcomes"))?
            .rows_affected();
        Ok(PrunedOutcomes {
            deleted,
            // A boundary row that is gone already (moved by a newer report) ends the round too.
            more: boundary.is_some() && deleted > 0,
        })
    }

    /// Distinct devices of an app seen in the 30 days up to `now_ms` (epoch ms).
    ///
    /// Only each device's last sighting is kept, so a device last seen after `now_ms` counts too.
    /// Through the [`super::WriteQueue`], a device's `last_seen_ms` may lag its latest check by
    /// less than [`super::SIGHTING_REWRITE_WINDOW`] (unchanged sightings are not rewritten
    /// sooner): a device whose every sighting of the 30 days came within that much of its last
    /// written one, 30 days ago, is not counted.
    pub async fn monthly_active_devices(&self, app_id: &str, now_ms: i64) -> Result<i64, StoreError> {
        // The devices' rows and the sightings not merged into them yet, without forcing a
        // compaction (the controller asks for every App); a stats event's sighting counts only
        // for a device with a row, as the compaction will merge it.
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT device_id FROM devices WHERE app_id = $1 AND last_seen_ms > $2 \
             UNION SELECT device_id FROM device_sightings s WHERE app_id = $1 AND last_seen_ms > $2 \
             AND (creates_row = 1 OR EXISTS (SELECT 1 FROM devices d \
             WHERE d.app_id = s.app_id AND d.device_id = s.device_id))) AS seen",
        )
        .bind(app_id)
        .bind(now_ms.saturating_sub(MONTH_MS))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::database("count the monthly active devices"))
    }

    /// Counter rows of one app and bundle version on days >= since_day (days since the epoch),
    /// by day then action.
    pub async fn counters(
        &self,
        app_id: &str,
        version: &str,
        since_day: i64,
    ) -> Result<Vec<Counter>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, action, day, count FROM counters \
             WHERE app_id = $1 AND version = $2 AND day >= $3 ORDER BY day, action",
        )
        .bind(app_id)
        .bind(version)
        .bind(since_day)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::database("read the counters"))?;
        rows.iter()
            .map(|row| {
                Ok(Counter {
                    version: row.try_get("version")?,
                    action: row.try_get("action")?,
                    day: row.try_get("day")?,
                    count: row.try_get("count")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::database("read a counter"))
    }

    /// One device's row.
    pub async fn device(&self, app_id: &str, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        self.compact().await?;
        let row = sqlx::query(
            "SELECT app_id, device_id, platform, plugin_version, native_version, version_name, custom_id, \
             default_channel, is_prod, is_emulator, current_bundle, channel_override, last_seen_ms \
             FROM devices WHERE app_id = $1 AND device_id = $2",
        )
        .bind(app_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::database("read a device"))?;
        row.as_ref()
            .map(device_record)
            .transpose()
            .map_err(StoreError::database("read a device"))
    }
}

/// (app_id, device_id, `third`) of a row, all text.
pub(super) fn three_texts(row: &AnyRow, third: &str) -> Result<(String, String, String), sqlx::Error> {
    Ok((
        row.try_get("app_id")?,
        row.try_get("device_id")?,
        row.try_get(third)?,
    ))
}

pub(super) fn device_record(row: &AnyRow) -> Result<DeviceRecord, sqlx::Error> {
    Ok(DeviceRecord {
        app_id: row.try_get("app_id")?,
        device_id: row.try_get("device_id")?,
        platform: row.try_get("platform")?,
        plugin_version: row.try_get("plugin_version")?,
        native_version: row.try_get("native_version")?,
        version_name: row.try_get("version_name")?,
        custom_id: row.try_get("custom_id")?,
        default_channel: row.try_get("default_channel")?,
        is_prod: row.try_get::<i64, _>("is_prod")? != 0,
        is_emulator: row.try_get::<i64, _>("is_emulator")? != 0,
        current_bundle: row.try_get("current_bundle")?,
        channel_override: row.try_get("channel_override")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
    })
}
