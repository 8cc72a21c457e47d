-- The device store's first schema. Portable SQL: this file runs unchanged on SQLite and on
-- PostgreSQL (TEXT and BIGINT only; booleans are 0 or 1). sqlx applies it once, in a
-- transaction, and records it in _sqlx_migrations; on PostgreSQL under an advisory lock, so
-- replicas that start together apply it once.

-- One row per device of an app: what the last update check or stats event reported, the bundle
-- of the last successful `set`, and a channel the device set for itself on the server.
-- A row may exist before the device is seen (a `set` or an override that came first): its
-- reported columns are then empty and last_seen_ms is 0.
CREATE TABLE devices (
    app_id           TEXT   NOT NULL,
    device_id        TEXT   NOT NULL,
    platform         TEXT   NOT NULL DEFAULT '',
    plugin_version   TEXT   NOT NULL DEFAULT '',
    native_version   TEXT   NOT NULL DEFAULT '',
    version_name     TEXT   NOT NULL DEFAULT '',
    custom_id        TEXT,
    default_channel  TEXT,
    is_prod          BIGINT NOT NULL DEFAULT 0,
    is_emulator      BIGINT NOT NULL DEFAULT 0,
    current_bundle   TEXT,
    channel_override TEXT,
    last_seen_ms     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, device_id)
);

-- Monthly active devices: a range scan of one app's devices by last sighting.
CREATE INDEX devices_by_app_and_last_seen ON devices (app_id, last_seen_ms);

-- Loading the overrides into memory reads only the few devices that have one.
CREATE INDEX devices_with_channel_override ON devices (app_id, device_id, channel_override)
    WHERE channel_override IS NOT NULL;

-- Stats events per app, bundle version, action and day (days since 1970-01-01, UTC).
CREATE TABLE counters (
    app_id  TEXT   NOT NULL,
    version TEXT   NOT NULL,
    action  TEXT   NOT NULL,
    day     BIGINT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (app_id, version, action, day)
);

-- Bundle versions a device reported as definitively failed: never offered to it again.
CREATE TABLE failed_marks (
    app_id    TEXT   NOT NULL,
    device_id TEXT   NOT NULL,
    version   TEXT   NOT NULL,
    at_ms     BIGINT NOT NULL,
    PRIMARY KEY (app_id, device_id, version)
);
