//! The Capgo updater plugin's wire protocol: decoding what devices send and encoding what they
//! receive. Pure: bytes and JSON in, typed values out (and back).

pub mod decode;
pub mod encode;

/// The longest body accepted by `/updates` and `/channel_self` (an info object is < 1 KiB).
pub const MAX_INFO_BODY: usize = 64 * 1024;
/// The longest body accepted by `/stats` (a batch holds at most 200 events).
pub const MAX_STATS_BODY: usize = 4 * 1024 * 1024;
/// The most events accepted in one stats batch (the plugin's queue holds 200).
pub const MAX_STATS_EVENTS: usize = 1_000;
