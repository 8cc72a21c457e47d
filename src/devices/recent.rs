//! [`RecentSightings`]: which device rows were written lately, so that a device checking again
//! with nothing new costs no write.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use super::DeviceSeen;

/// How long after a device's row was written a sighting that would change only its
/// `last_seen_ms` is not written. A device that checks at every launch or resume would otherwise
/// cost a database write per check.
///
/// The price: a device's `last_seen_ms` may lag its latest check by less than this, so a
/// 30-day count of active devices can miss a device whose last sighting in the window came
/// less than this after its last written one, at the window's far end only.
pub const SIGHTING_REWRITE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The most devices remembered (about 50 bytes each with the maps' spare room, some 1.6 MiB in
/// all: it counts against the server's memory target, and 131,072 devices, 6.4 MiB, took the
/// benchmark's peak RSS over it). Enough for five minutes of about 100 distinct devices per
/// second; beyond that the oldest are forgotten first, and a forgotten device's next sighting
/// is simply written.
pub const RECENT_SIGHTINGS_CAPACITY: usize = 32_768;

/// Shards, so that request threads rarely wait for each other.
const SHARDS: usize = 16;

/// Device rows written lately: per device (a hash of app and device id), a hash of what its
/// row holds and when it was written. Bounded: at most [`RECENT_SIGHTINGS_CAPACITY`] devices.
///
/// Only hashes are kept, not the ids: two different devices, or two different rows, share
/// both 64-bit hashes with a probability far below that of a lost write for any other reason.
#[derive(Debug)]
pub struct RecentSightings {
    shards: Vec<Mutex<Generations>>,
    hasher: RandomState,
    window_ms: i64,
    generation_capacity: usize,
}

/// The written rows of one shard, in two generations: when the current one is full it becomes
/// the previous one, and the previous one is forgotten.
#[derive(Debug, Default)]
struct Generations {
    current: HashMap<u64, Written>,
    previous: HashMap<u64, Written>,
}

/// What was last written for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    /// Hash of the columns a sighting sets, `last_seen_ms` aside.
    row: u64,
    /// The sighting's time (ms since the epoch).
    at_ms: i64,
}

/// A sighting, hashed: which device, and what its row would hold.
#[derive(Debug, Clone, Copy)]
pub struct SightingKey {
    device: u64,
    row: u64,
    at_ms: i64,
}

impl Default for RecentSightings {
    fn default() -> Self {
        Self::new(RECENT_SIGHTINGS_CAPACITY, SIGHTING_REWRITE_WINDOW)
    }
}

impl RecentSightings {
    /// Remembers up to `capacity` devices (at least one per shard), each for `window`.
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            // Two generations per shard.
            generation_capacity: (capacity / SHARDS / 2).max(1),
        }
    }

    /// The hashes of a sighting.
    pub fn key(&self, seen: &DeviceSeen) -> SightingKey {
        let device = self.hasher.hash_one((&seen.app_id, &seen.device_id));
        let row = self.hasher.hash_one((
            &seen.platform,
            &seen.plugin_version,
            &seen.native_version,
            &seen.version_name,
            &seen.custom_id,
            &seen.default_channel,
            seen.is_prod,
            seen.is_emulator,
        ));
        SightingKey {
            device,
            row,
            at_ms: seen.seen_at_ms,
        }
    }

    /// Whether writing this sighting would change only the row's `last_seen_ms`, a write of the
    /// same row having been queued less than the window before (or after: the store keeps
    /// the latest sighting, so an older one of the same row changes nothing at all).
    pub fn is_redundant(&self, key: SightingKey) -> bool {
        let shard = self.shard(key).lock().unwrap_or_else(PoisonError::into_inner);
        shard.get(key.device).is_some_and(|written| {
            written.row == key.row && key.at_ms.saturating_sub(written.at_ms) < self.window_ms
        })
    }

    /// Records that the sighting was queued for writing.
    ///
    /// A sighting older than the one remembered may not change the row (the store keeps the
    /// latest), so the row is then unknown: the device is forgotten, and its next sighting written.
    pub fn written(&self, key: SightingKey) {
        let mut shard = self.shard(key).lock().unwrap_or_else(PoisonError::into_inner);
        match shard.get(key.device) {
            Some(known) if key.at_ms < known.at_ms => {
                if known.row != key.row {
                    shard.forget(key.device);
                }
            }
            _ => shard.insert(
                key.device,
                Written {
                    row: key.row,
                    at_ms: key.at_ms,
                },
                self.generation_capacity,
            ),
        }
    }

    fn shard(&self, key: SightingKey) -> &Mutex<Generations> {
        // The low bits of the hash pick the shard (the maps hash the key again).
        &self.shards[(key.device % SHARDS as u64) as usize]
    }

    /// Devices remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                shard.current.len() + shard.previous.len()
            })
            .sum()
    }
}

impl Generations {
    fn get(&self, device: u64) -> Option<&Written> {
        self.current.get(&device).or_else(|| self.previous.get(&device))
    }

    fn insert(&mut self, device: u64, written: Written, generation_capacity: usize) {
        if self.current.len() >= generation_capacity && !self.current.contains_key(&device) {
            self.previous = std::mem::take(&mut self.current);
            // The new generation fills up to the same size: reserve it once.
            self.current.reserve(generation_capacity);
        }
        self.previous.remove(&device);
        self.current.insert(device, written);
    }

    fn forget(&mut self, device: u64) {
        self.current.remove(&device);
        self.previous.remove(&device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: i64 = 60_000;

    fn seen(device: &str, version_name: &str, at_ms: i64) -> DeviceSeen {
        DeviceSeen {
            app_id: "com.example.shop".into(),
            device_id: device.into(),
            platform: "android".into(),
            plugin_version: "8.51.14".into(),
            native_version: "1.4.0".into(),
            version_name: version_name.into(),
            custom_id: None,
            default_channel: None,
            is_prod: true,
            is_emulator: false,
            seen_at_ms: at_ms,
            creates_row: true,
        }
    }

    /// Pushes a sighting as the write queue does; true when it would be written.
    fn push(recent: &RecentSightings, seen: &DeviceSeen) -> bool {
        let key = recent.key(seen);
        if recent.is_redundant(key) {
            return false;
        }
        recent.written(key);
        true
    }

    #[test]
    fn an_unchanged_device_is_written_once_per_window() {
        let recent = RecentSightings::default();
        let t = 1_790_000_000_000;
        assert!(push(&recent, &seen("d1", "1.0.0", t)));
        assert!(!push(&recent, &seen("d1", "1.0.0", t + MINUTE_MS)));
        assert!(!push(&recent, &seen("d1", "1.0.0", t + 4 * MINUTE_MS)));
        // The window counts from the last write, not the last sighting.
        assert!(push(&recent, &seen("d1", "1.0.0", t + 5 * MINUTE_MS)));
        assert!(!push(&recent, &seen("d1", "1.0.0", t + 6 * MINUTE_MS)));
        // Another device, another app: their own rows.
        assert!(push(&recent, &seen("d2", "1.0.0", t + MINUTE_MS)));
        let other_app = DeviceSeen {
            app_id: "com.example.other".into(),
            ..seen("d1", "1.0.0", t + MINUTE_MS)
        };
        assert!(push(&recent, &other_app));
    }

    #[test]
    fn any_change_to_the_row_is_written() {
        let recent = RecentSightings::default();
        let t = 1_790_000_000_000;
        let first = seen("d1", "1.0.0", t);
        assert!(push(&recent, &first));
        let changes = [
            DeviceSeen {
                version_name: "1.1.0".into(),
                ..first.clone()
            },
            DeviceSeen {
                platform: "ios".into(),
                ..first.clone()
            },
            DeviceSeen {
                plugin_version: "8.52.0".into(),
                ..first.clone()
            },
            DeviceSeen {
                native_version: "1.5.0".into(),
                ..first.clone()
            },
            DeviceSeen {
                custom_id: Some("customer-7".into()),
                ..first.clone()
            },
            DeviceSeen {
                default_channel: Some("beta".into()),
                ..first.clone()
            },
            DeviceSeen {
                is_prod: false,
                ..first.clone()
            },
            DeviceSeen {
                is_emulator: true,
                ..first.clone()
            },
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let change = DeviceSeen {
                seen_at_ms: t + 1 + i as i64,
                ..change
            };
            assert!(push(&recent, &change), "{change:?}");
            // ... and the device is back where it was: a change again.
            let back = DeviceSeen {
                seen_at_ms: t + 100 + i as i64,
                ..first.clone()
            };
            assert!(push(&recent, &back), "{back:?}");
        }
    }

    #[test]
    fn an_older_sighting_of_another_row_makes_the_device_unknown() {
        let recent = RecentSightings::default();
        let t = 1_790_000_000_000;
        assert!(push(&recent, &seen("d1", "1.0.0", t)));
        // A batched stats event from before: the store keeps the later row, so nothing is
        // known of what it holds until the next write.
        assert!(push(&recent, &seen("d1", "0.9.0", t - MINUTE_MS)));
        assert!(push(&recent, &seen("d1", "1.0.0", t + MINUTE_MS)));
        // An older sighting of the same row changes nothing in the store: skipped.
        assert!(!push(&recent, &seen("d1", "1.0.0", t)));
        assert!(!push(&recent, &seen("d1", "1.0.0", t + 2 * MINUTE_MS)));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_devices_are_forgotten_first() {
        let capacity = 1_024;
        let recent = RecentSightings::new(capacity, SIGHTING_REWRITE_WINDOW);
        let t = 1_790_000_000_000;
        for i in 0..20 * capacity {
            assert!(push(&recent, &seen(&format!("d{i}"), "1.0.0", t)));
            assert!(recent.len() <= capacity, "{} devices at {i}", recent.len());
        }
        assert!(recent.len() >= capacity / 2, "{}", recent.len());
        let last = 20 * capacity - 1;
        assert!(!push(&recent, &seen(&format!("d{last}"), "1.0.0", t + 1)));
        assert!(
            push(&recent, &seen("d0", "1.0.0", t + 1)),
            "forgotten, so written"
        );
    }
}
