//! The device store's writes: a batch applied in one transaction, and the compaction of the
//! sightings log into the devices' rows.

use sqlx::AnyConnection;

use super::{
    StoreError, Write,
    changes::record_changes,
    device_store::Backend,
    device_store::DeviceStore,
    dialect::{COMPACTION_RANGES, compaction_sql, outcomes_query, seen_devices_query},
    write_plan::{DeviceStep, MergedOutcome, WritePlan, row_chunks, sighting_chunks},
};

impl DeviceStore {
    /// Applies a batch of writes in one transaction (aggregating identical counter increments first).
    ///
    /// Writes of one device keep their order (a later override wins); an older sighting
    /// (`seen_at_ms` below the stored one) changes nothing. Sightings are appended to the
    /// sightings log; [`DeviceStore::compact`] merges them into the devices' rows (the reads of
    /// devices compact first, so they see every sighting applied). Rows are written in key order, so
    /// replicas writing the same rows at once do not deadlock.
    pub async fn apply(&self, batch: &[Write]) -> Result<(), StoreError> {
        self.apply_numbered(batch).await.map(drop)
    }

    /// [`DeviceStore::apply`], returning the number the change feed gave each write of the batch
    /// that is a change of what memory keeps (None for the others, and always on SQLite).
    pub async fn apply_numbered(&self, batch: &[Write]) -> Result<Vec<Option<i64>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(StoreError::database("begin a transaction"))?;
        let written = self.write_batch(&mut connection, batch).await;
        if written.is_err() {
            // A failed transaction may still be open on its connection: SQLite keeps it open
            // after some errors (a full disk among them), and with it the write lock, so every
            // later write would wait for it and fail "database is locked". Never reused.
            connection.close_on_drop();
            drop(connection);
            self.reclaim_wal().await;
        }
        written
    }

    /// After a failed write on SQLite: moves the WAL's pages into the database and empties the
    /// WAL file. On a full disk the WAL may have taken the last free bytes, and it is emptied only
    /// by a checkpoint, which runs after a commit, which needs room in the WAL: without this, the
    /// store would stay full after the disk had room again. Best effort; fails while the disk is
    /// still full, and is tried again after the next failure.
    async fn reclaim_wal(&self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(%error, "emptying the SQLite WAL after a failed write failed");
        }
    }

    /// [`DeviceStore::apply_numbered`] on one connection.
    async fn write_batch(
        &self,
        connection: &mut AnyConnection,
        batch: &[Write],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let plan = WritePlan::of(batch);
        let mut transaction = sqlx::Connection::begin(connection)
            .await
            .map_err(StoreError::database("begin a transaction"))?;
        for step in &plan.device_steps {
            match step {
                DeviceStep::Sightings(sightings) => {
                    for (shape, chunk) in sighting_chunks(sightings) {
                        let first_seq = self
                            .next_seq
                            .fetch_add(chunk.len() as i64, std::sync::atomic::Ordering::Relaxed);
                        seen_devices_query(self.backend, shape, chunk, self.writer, first_seq)
                            .execute(&mut *transaction)
                            .await
                            .map_err(StoreError::database("write device sightings"))?;
                    }
                }
                DeviceStep::Single(write) => apply_device_write(&mut transaction, write)
                    .await
                    .map_err(StoreError::database("write a device"))?,
            }
        }
        for write in &plan.failed_marks {
            apply_device_write(&mut transaction, write)
                .await
                .map_err(StoreError::database("write a failed mark"))?;
        }
        let outcomes: Vec<(&(&str, &str, &str), &MergedOutcome<'_>)> = plan.outcomes.iter().collect();
        for (shape, chunk) in row_chunks(&outcomes) {
            outcomes_query(self.backend, shape, chunk)
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::database("write device outcomes"))?;
        }
        for ((app_id, version, action, day), n) in &plan.counts {
            sqlx::query(
                "INSERT INTO counters (app_id, version, action, day, count) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (app_id, version, action, day) DO UPDATE SET count = counters.count + excluded.count",
            )
            .bind(*app_id)
            .bind(*version)
            .bind(*action)
            .bind(*day)
            .bind(*n)
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::database("add to a counter"))?;
        }
        // Last: the feed's lock is held from here to the commit.
        let numbers = record_changes(&mut transaction, self.backend, batch)
            .await
            .map_err(StoreError::database("record the changes in the change feed"))?;
        transaction
            .commit()
            .await
            .map_err(StoreError::database("commit a batch of writes"))?;
        tracing::debug!(
            writes = batch.len(),
            counters = plan.counts.len(),
            outcomes = plan.outcomes.len(),
            "device store batch written"
        );
        Ok(numbers)
    }

    /// Merges the sightings log into the devices' rows, in key order, in one transaction per
    /// sixteenth of the device ids; returns how many sightings were merged.
    ///
    /// For each writer in the log it takes the rows up to the last sequence number it reads
    /// first, so sightings appended meanwhile (by this process or, on PostgreSQL, by another
    /// replica) wait for the next compaction, and concurrent compactions merge nothing twice
    /// and lose nothing. The merge is the upsert of a sighting, applied in each writer's order:
    /// the newest sighting wins, an older one changes nothing, a None custom id or default
    /// channel keeps the one before. (PostgreSQL refuses to upsert one row twice in a
    /// statement, so there each device's sightings are first merged with window functions,
    /// the same way; SQLite applies them one by one.)
    pub async fn compact(&self) -> Result<u64, StoreError> {
        let writers: Vec<(i64, i64)> =
            sqlx::query_as("SELECT writer, MAX(seq) AS last FROM device_sightings GROUP BY writer")
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::database("read the sightings log"))?;
        if writers.is_empty() {
            return Ok(0);
        }
        let mut merged = 0;
        // One transaction per range of device ids: each touches its own share of the pages of
        // `devices` (so the merge costs no more page writes than one big transaction would), and
        // on SQLite the appends of the write queue get the lock between two ranges.
        for (from, to) in COMPACTION_RANGES {
            let mut connection = self
                .pool
                .acquire()
                .await
                .map_err(StoreError::database("begin a transaction"))?;
            match self.compact_range(&mut connection, &writers, from, to).await {
                Ok(n) => merged += n,
                Err(error) => {
                    // As in apply_numbered: a failed transaction's connection is never reused.
                    connection.close_on_drop();
                    return Err(error);
                }
            }
        }
        tracing::debug!(merged, "sightings log merged into the devices");
        Ok(merged)
    }

    /// Merges the log's sightings of the device ids from `from` to `to` (exclusive; '' for no
    /// end) in one transaction on `connection`; returns how many were merged.
    async fn compact_range(
        &self,
        connection: &mut AnyConnection,
        writers: &[(i64, i64)],
        from: &str,
        to: &str,
    ) -> Result<u64, StoreError> {
        let mut merged = 0;
        let mut transaction = sqlx::Connection::begin(connection)
            .await
            .map_err(StoreError::database("begin a transaction"))?;
        for &(writer, last) in writers {
            sqlx::query(compaction_sql(self.backend))
                .bind(writer)
                .bind(last)
                .bind(from)
                .bind(to)
                .execute(&mut *transaction)
                .await
                .map_err(StoreError::database("merge the sightings log into the devices"))?;
            merged += sqlx::query(
                "DELETE FROM device_sightings WHERE writer = $1 AND seq <= $2 \
                     AND device_id >= $3 AND ($4 = '' OR device_id < $4)",
            )
            .bind(writer)
            .bind(last)
            .bind(from)
            .bind(to)
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::database("empty the sightings log"))?
            .rows_affected();
        }
        transaction
            .commit()
            .await
            .map_err(StoreError::database("commit a compaction of the sightings log"))?;
        Ok(merged)
    }
}

/// Writes one device row or failed mark.
async fn apply_device_write(connection: &mut AnyConnection, write: &Write) -> Result<(), sqlx::Error> {
    let query = match write {
        Write::CurrentBundle {
            app_id,
            device_id,
            version,
            creates_row,
        } => sqlx::query(match creates_row {
            true => {
                "INSERT INTO devices (app_id, device_id, current_bundle) VALUES ($1, $2, $3) \
                 ON CONFLICT (app_id, device_id) DO UPDATE SET current_bundle = excluded.current_bundle"
            }
            false => "UPDATE devices SET current_bundle = $3 WHERE app_id = $1 AND device_id = $2",
        })
        .bind(app_id)
        .bind(device_id)
        .bind(version),
        Write::SetChannelOverride {
            app_id,
            device_id,
            channel,
        } => sqlx::query(
            "INSERT INTO devices (app_id, device_id, channel_override) VALUES ($1, $2, $3) \
             ON CONFLICT (app_id, device_id) DO UPDATE SET channel_override = excluded.channel_override",
        )
        .bind(app_id)
        .bind(device_id)
        .bind(channel),
        Write::ClearChannelOverride { app_id, device_id } => {
            sqlx::query("UPDATE devices SET channel_override = NULL WHERE app_id = $1 AND device_id = $2")
                .bind(app_id)
                .bind(device_id)
        }
        // A failed mark keeps the first time it was reported (so marks load in the order they
        // were first pushed, as memory holds them).
        Write::FailedMark {
            app_id,
            device_id,
            version,
            at_ms,
        } => sqlx::query(
            "INSERT INTO failed_marks (app_id, device_id, version, at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, device_id, version) DO UPDATE SET at_ms = excluded.at_ms \
             WHERE excluded.at_ms < failed_marks.at_ms",
        )
        .bind(app_id)
        .bind(device_id)
        .bind(version)
        .bind(*at_ms),
        // Sightings, outcomes and counters are written in bulk (see WritePlan).
        Write::SeenDevice(_) | Write::Count { .. } | Write::Outcome(_) => return Ok(()),
    };
    query.execute(connection).await?;
    Ok(())
}
