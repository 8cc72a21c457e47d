-- Device sightings are appended to a log in arrival order and merged into `devices` in key order
-- by a compaction, in large batches. A new device on a random key then costs an append (pages
-- fill in order) instead of an upsert on a random page of the primary-key index: each page of
-- `devices` is written once per compaction instead of once per batch of sightings. Portable SQL.
--
-- `writer` is a random id drawn by each process that opens the store and `seq` counts that
-- process's sightings, so a compaction can take, for each writer, exactly the rows up to a
-- sequence number it read first (rows appended meanwhile stay for the next one). No key and no
-- index: appends are all this table serves between compactions, which read it whole.
CREATE TABLE device_sightings (
    writer           BIGINT NOT NULL,
    seq              BIGINT NOT NULL,
    app_id           TEXT   NOT NULL,
    device_id        TEXT   NOT NULL,
    platform         TEXT   NOT NULL,
    plugin_version   TEXT   NOT NULL,
    native_version   TEXT   NOT NULL,
    version_name     TEXT   NOT NULL,
    custom_id        TEXT,
    default_channel  TEXT,
    is_prod          BIGINT NOT NULL,
    is_emulator      BIGINT NOT NULL,
    last_seen_ms     BIGINT NOT NULL
);
