-- Rollout analysis and standalone rollouts. Portable SQL, as the first migration.

-- How each bundle version fared on each device: one row per (app, version, device), written
-- from POST /stats (a `set` is a success, a failure action a failure). `failed` is sticky (0 or
-- 1): once a device failed with a version it stays failed. `channel` is the channel the device
-- resolved to at its latest report, `at_ms` that report's time.
CREATE TABLE device_outcomes (
    app_id    TEXT   NOT NULL,
    version   TEXT   NOT NULL,
    device_id TEXT   NOT NULL,
    channel   TEXT   NOT NULL,
    failed    BIGINT NOT NULL DEFAULT 0,
    at_ms     BIGINT NOT NULL,
    PRIMARY KEY (app_id, version, device_id)
);

-- The figures of a rollout (devices of one version in one channel since a time, and how many
-- failed) are a range scan of this index alone: it holds every column the count reads.
CREATE INDEX device_outcomes_by_channel_and_time
    ON device_outcomes (app_id, channel, version, at_ms, failed);

-- The last state of each Rollout that standalone mode drives (the caller's JSON).
CREATE TABLE rollout_states (
    namespace TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    state     TEXT   NOT NULL,
    at_ms     BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);
