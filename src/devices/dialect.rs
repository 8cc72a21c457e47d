//! The SQL that differs between SQLite and PostgreSQL, and the statements built for a shape of
//! rows.

use super::{
    device_store::Backend,
    write_plan::{MergedOutcome, SIGHTING_CHUNK_ROWS, Sighting},
};

/// The multi-row append of sightings of distinct devices to the sightings log, numbered from
/// `first_seq` for `writer`.
/// `shape` is the index in [`SIGHTING_CHUNK_ROWS`] of the number of sightings.
pub(super) fn seen_devices_query<'q>(
    backend: Backend,
    shape: usize,
    sightings: &'q [Sighting<'q>],
    writer: i64,
    first_seq: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let sql = seen_devices_sql(backend, shape);
    let mut query = sqlx::query(sql);
    for (seq, sighting) in (first_seq..).zip(sightings) {
        let seen = sighting.seen;
        query = query
            .bind(writer)
            .bind(seq)
            .bind(seen.app_id.as_str())
            .bind(seen.device_id.as_str())
            .bind(seen.platform.as_str())
            .bind(seen.plugin_version.as_str())
            .bind(seen.native_version.as_str())
            .bind(seen.version_name.as_str())
            .bind(sighting.custom_id)
            .bind(sighting.default_channel)
            .bind(i64::from(seen.is_prod))
            .bind(i64::from(seen.is_emulator))
            .bind(seen.seen_at_ms)
            .bind(i64::from(sighting.creates_row));
    }
    query
}

/// The SQL of [`seen_devices_query`] for the rows of `SIGHTING_CHUNK_ROWS[shape]` (built once
/// per backend and shape).
///
/// SQLite gets anonymous `?` placeholders: binding a numbered one (`$N`) makes sqlx look its
/// name up in a list as long as the statement's parameters, which is quadratic in the row count
/// (it took 60% of the time of a 256-row upsert). PostgreSQL only takes `$N`.
pub(super) fn seen_devices_sql(backend: Backend, shape: usize) -> &'static str {
    static SQL: [[std::sync::OnceLock<String>; SIGHTING_CHUNK_ROWS.len()]; 2] =
        [const { [const { std::sync::OnceLock::new() }; SIGHTING_CHUNK_ROWS.len()] }; 2];
    let rows = SIGHTING_CHUNK_ROWS[shape];
    let slot = match backend {
        Backend::Sqlite => 0,
        Backend::Postgres => 1,
    };
    SQL[slot][shape].get_or_init(|| {
        format!(
            "INSERT INTO device_sightings (writer, seq, app_id, device_id, platform, plugin_version, \
             native_version, version_name, custom_id, default_channel, is_prod, is_emulator, last_seen_ms, \
             creates_row) VALUES {}",
            values_placeholders(backend, rows, 14)
        )
    })
}

/// The columns a sighting sets in `devices`.
pub(super) const SIGHTING_COLUMNS: &str = "app_id, device_id, platform, plugin_version, native_version, version_name, \
     custom_id, default_channel, is_prod, is_emulator, last_seen_ms";

/// How a sighting updates a device's row: the reported columns take the new values unless the
/// sighting is older than the stored one; a None custom id or default channel keeps the stored one.
pub(super) const SIGHTING_UPSERT: &str = "ON CONFLICT (app_id, device_id) DO UPDATE SET \
     platform = excluded.platform, plugin_version = excluded.plugin_version, \
     native_version = excluded.native_version, version_name = excluded.version_name, \
     custom_id = COALESCE(excluded.custom_id, devices.custom_id), \
     default_channel = COALESCE(excluded.default_channel, devices.default_channel), \
     is_prod = excluded.is_prod, is_emulator = excluded.is_emulator, last_seen_ms = excluded.last_seen_ms \
     WHERE excluded.last_seen_ms >= devices.last_seen_ms";

/// Which sightings of a compaction (in a subquery `s` with `may_create`, whether any of the
/// device's sightings in it may create its row) are merged: a stats event's sighting only
/// refreshes a device that has a row or is created by the same merge.
const MAY_MERGE: &str = "(s.may_create = 1 OR EXISTS (SELECT 1 FROM devices d \
     WHERE d.app_id = s.app_id AND d.device_id = s.device_id))";

/// The ranges of device ids a compaction merges one after the other: `[from, to)`, an empty `to`
/// for no end (device ids are lower-case UUIDs, so each range holds a sixteenth of them; any
/// other string falls in one range too).
pub(super) const COMPACTION_RANGES: [(&str, &str); 16] = [
    ("", "1"),
    ("1", "2"),
    ("2", "3"),
    ("3", "4"),
    ("4", "5"),
    ("5", "6"),
    ("6", "7"),
    ("7", "8"),
    ("8", "9"),
    ("9", "a"),
    ("a", "b"),
    ("b", "c"),
    ("c", "d"),
    ("d", "e"),
    ("e", "f"),
    ("f", ""),
];

/// The statement that merges one writer's sightings up to a sequence number (`$1`, `$2`) with
/// device ids in `[$3, $4)` into `devices`, in key order (see [`DeviceStore::compact`]).
pub(super) fn compaction_sql(backend: Backend) -> &'static str {
    static SQL: [std::sync::OnceLock<String>; 2] = [const { std::sync::OnceLock::new() }; 2];
    match backend {
        // SQLite applies the rows of one INSERT one after the other, in the ORDER BY's order
        // (the WHERE also keeps the parser from reading ON CONFLICT as a join constraint; its
        // EXISTS reads `devices` as it was before the statement).
        Backend::Sqlite => SQL[0].get_or_init(|| {
            format!(
                "INSERT INTO devices ({SIGHTING_COLUMNS}) SELECT {SIGHTING_COLUMNS} FROM (SELECT *, \
                 MAX(creates_row) OVER (PARTITION BY app_id, device_id) AS may_create FROM device_sightings \
                 WHERE writer = $1 AND seq <= $2 AND device_id >= $3 AND ($4 = '' OR device_id < $4)) AS s \
                 WHERE {MAY_MERGE} ORDER BY app_id, device_id, seq {SIGHTING_UPSERT}"
            )
        }),
        // One row per device, as applying its sightings in order would leave it: the newest
        // sighting (the last of equally old ones), with the custom id and default channel of the
        // last applied sighting that has one (a sighting older than the stored row or than one
        // before it applies not).
        Backend::Postgres => SQL[1].get_or_init(|| {
            format!(
                "INSERT INTO devices ({SIGHTING_COLUMNS}) SELECT app_id, device_id, platform, plugin_version, \
                 native_version, version_name, kept_custom_id, kept_default_channel, is_prod, is_emulator, \
                 last_seen_ms FROM (SELECT app_id, device_id, platform, plugin_version, native_version, \
                 version_name, is_prod, is_emulator, last_seen_ms, has_row, \
                 MAX(creates_row) OVER (PARTITION BY app_id, device_id) AS may_create, \
                 ROW_NUMBER() OVER (PARTITION BY app_id, device_id ORDER BY last_seen_ms DESC, seq DESC) AS rank, \
                 FIRST_VALUE(applied_custom_id) OVER (PARTITION BY app_id, device_id \
                 ORDER BY applied_custom_id IS NULL, seq DESC) AS kept_custom_id, \
                 FIRST_VALUE(applied_default_channel) OVER (PARTITION BY app_id, device_id \
                 ORDER BY applied_default_channel IS NULL, seq DESC) AS kept_default_channel \
                 FROM (SELECT app_id, device_id, platform, plugin_version, native_version, version_name, \
                 is_prod, is_emulator, last_seen_ms, seq, creates_row, has_row, \
                 CASE WHEN applied THEN custom_id END AS applied_custom_id, \
                 CASE WHEN applied THEN default_channel END AS applied_default_channel \
                 FROM (SELECT s.app_id, s.device_id, s.platform, s.plugin_version, s.native_version, \
                 s.version_name, s.custom_id, s.default_channel, s.is_prod, s.is_emulator, s.last_seen_ms, s.seq, \
                 s.creates_row, d.device_id IS NOT NULL AS has_row, s.last_seen_ms >= COALESCE(MAX(s.last_seen_ms) OVER (PARTITION BY s.app_id, s.device_id \
                 ORDER BY s.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), s.last_seen_ms) \
                 AND s.last_seen_ms >= COALESCE(d.last_seen_ms, s.last_seen_ms) AS applied \
                 FROM device_sightings s LEFT JOIN devices d ON d.app_id = s.app_id AND d.device_id = s.device_id \
                 WHERE s.writer = $1 AND s.seq <= $2 AND s.device_id >= $3 AND ($4 = '' OR s.device_id < $4)) \
                 AS ordered) \
                 AS applied_values) AS merged WHERE rank = 1 AND (may_create = 1 OR has_row) ORDER BY app_id, device_id {SIGHTING_UPSERT}"
            )
        }),
    }
}

/// The multi-row upsert of merged outcomes of distinct (app, version, device) rows: `failed`
/// stays set once set, `at_ms` keeps the latest time and `channel` follows it.
/// `shape` is the index in [`SIGHTING_CHUNK_ROWS`] of the number of rows.
pub(super) fn outcomes_query<'q>(
    backend: Backend,
    shape: usize,
    outcomes: &'q [(&'q (&'q str, &'q str, &'q str), &'q MergedOutcome<'q>)],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let sql = outcomes_sql(backend, shape);
    let mut query = sqlx::query(sql);
    for ((app_id, version, device_id), merged) in outcomes {
        query = query
            .bind(*app_id)
            .bind(*version)
            .bind(*device_id)
            .bind(merged.channel)
            .bind(i64::from(merged.failed))
            .bind(merged.at_ms);
    }
    query
}

/// The SQL of [`outcomes_query`] (built once per backend and shape; placeholders as in
/// [`seen_devices_sql`]).
pub(super) fn outcomes_sql(backend: Backend, shape: usize) -> &'static str {
    static SQL: [[std::sync::OnceLock<String>; SIGHTING_CHUNK_ROWS.len()]; 2] =
        [const { [const { std::sync::OnceLock::new() }; SIGHTING_CHUNK_ROWS.len()] }; 2];
    let slot = match backend {
        Backend::Sqlite => 0,
        Backend::Postgres => 1,
    };
    SQL[slot][shape].get_or_init(|| {
        format!(
            "INSERT INTO device_outcomes (app_id, version, device_id, channel, failed, at_ms) VALUES {} \
             ON CONFLICT (app_id, version, device_id) DO UPDATE SET \
             channel = CASE WHEN excluded.at_ms >= device_outcomes.at_ms \
             THEN excluded.channel ELSE device_outcomes.channel END, \
             failed = CASE WHEN excluded.failed <> 0 OR device_outcomes.failed <> 0 THEN 1 ELSE 0 END, \
             at_ms = CASE WHEN excluded.at_ms > device_outcomes.at_ms \
             THEN excluded.at_ms ELSE device_outcomes.at_ms END",
            values_placeholders(backend, SIGHTING_CHUNK_ROWS[shape], 6)
        )
    })
}

/// `(?, ?), (?, ?)` for SQLite, `($1, $2), ($3, $4)` for PostgreSQL: `rows` rows of `columns`.
pub(super) fn values_placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let placeholders: Vec<String> = (1..=columns)
                .map(|column| match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::Postgres => format!("${}", row * columns + column),
                })
                .collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    values.join(", ")
}
