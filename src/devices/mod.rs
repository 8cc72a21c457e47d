//! The device store of the update server: what is known of each device (its last update check,
//! the bundle it runs, a channel it set for itself on the server), per-bundle counters of stats
//! events, the bundles each device reported as failed, each device's outcome with each version
//! (for rollout analysis), and the state of standalone rollouts and channels' histories.
//!
//! The database is an SQLite file by default (one replica) or PostgreSQL (shared by replicas).
//! One implementation serves both, through sqlx's `Any` driver: portable SQL, and one folder of
//! versioned migrations (`src/devices/migrations`) that runs unchanged on either.
//!
//! - [`DeviceStore`] opens the database, runs the migrations, applies batches of [`Write`]s and
//!   answers the reads of statistics;
//! - [`DeviceMemory`] is the in-memory copy of what the update check needs (overrides and failed
//!   marks), so the hot path never queries the database;
//! - [`WriteQueue`] takes the HTTP handlers' writes. Update-check sightings: memory at once, the
//!   database in batches (appended to a log, merged into the devices' rows in large batches; a
//!   device checking again with nothing new within [`SIGHTING_REWRITE_WINDOW`] costs no write).
//!   What a request acknowledges (stats, channel overrides): committed first, by group commit,
//!   then memory.

mod changes;
mod channel_histories;
mod device_store;
mod dialect;
mod error;
mod location;
mod memory;
mod queries;
mod queue;
mod recent;
mod records;
mod rollout_states;
mod saved_documents;
mod write_plan;
mod writes;

pub use changes::{CHANGES_CHANNEL, catch_up, follow_changes};
pub use device_store::DeviceStore;
pub use error::StoreError;
pub use memory::DeviceMemory;
pub use queue::{
    COMPACT_AFTER_SIGHTINGS, COMPACT_WHEN_IDLE, CommitError, SERVER_FLUSH_EVERY, SERVER_MAX_BATCH,
    SERVER_QUEUE_CAPACITY, WriteQueue,
};
pub use recent::{RECENT_SIGHTINGS_CAPACITY, SIGHTING_REWRITE_WINDOW};
pub use saved_documents::SavedDocument;
/// A standalone Rollout's last state, kept so a restart resumes it.
pub type RolloutStateRow = SavedDocument;
/// A standalone Channel's history, kept so a restart keeps it.
pub type ChannelHistoryRow = SavedDocument;
pub use records::{Counter, DeviceRecord, DeviceSeen, OutcomeFigures, OutcomeReport, PrunedOutcomes, Write};
