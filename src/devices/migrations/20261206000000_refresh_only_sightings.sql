-- Only an update check creates a device's row. A /stats event refreshes the row of a device
-- that has one, and leaves none for a device id it made up: stats need no credentials, so a
-- flood of made-up ids would otherwise grow `devices` without bound. The compaction merges a
-- sighting with `creates_row = 0` only when the device has a row, or another sighting in the
-- same merge creates it. Portable SQL, as the first migration.
ALTER TABLE device_sightings ADD COLUMN creates_row BIGINT NOT NULL DEFAULT 1;
