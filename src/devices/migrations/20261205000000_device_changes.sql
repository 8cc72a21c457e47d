-- The change feed of what the update check keeps in memory: every channel override set or
-- cleared and every failed mark, numbered in commit order (PostgreSQL only: replicas sharing
-- the database follow it with LISTEN/NOTIFY and a catch-up read by sequence number; a single
-- SQLite replica has no one to tell). Portable SQL, as the first migration.
--
-- kind: 'set_override' (value: the channel), 'clear_override' (value: ''), 'failed' (value:
-- the version). The oldest rows are pruned; a replica that fell further behind reloads.
CREATE TABLE device_changes (
    seq       BIGINT NOT NULL PRIMARY KEY,
    app_id    TEXT   NOT NULL,
    device_id TEXT   NOT NULL,
    kind      TEXT   NOT NULL,
    value     TEXT   NOT NULL
);
