-- Outcomes older than any Rollout's analysis window are pruned (DeviceStore::prune_outcomes):
-- a range scan of one app's outcomes by time. Portable SQL, as the first migration.
CREATE INDEX device_outcomes_by_app_and_time ON device_outcomes (app_id, at_ms);
