//! The in-memory copy of what the update check needs from the device store.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use super::Write;
use crate::core::update::DeviceFacts;

/// In-memory copy of overrides and failed marks, kept in step with the store: the update check
/// reads only this. Cheap to clone: clones share the same copy.
///
/// It holds what this process loaded at start ([`super::DeviceStore::load_memory`]), what it
/// wrote since, and, on PostgreSQL, what other replicas wrote: the change feed
/// ([`super::follow_changes`]) is applied in order from the position the load was taken at.
#[derive(Clone, Default)]
pub struct DeviceMemory {
    shared: Arc<RwLock<RememberedApps>>,
}

/// Devices with something to remember, by app id then device id (two levels, so a lookup by
/// `&str` allocates nothing).
#[derive(Default)]
pub(super) struct RememberedApps {
    apps: HashMap<String, HashMap<String, RememberedDevice>>,
    /// The number of the last change of the feed this memory holds (0: none).
    pub(super) feed_position: i64,
}

/// What is remembered of one device.
#[derive(Default)]
struct RememberedDevice {
    channel_override: Option<String>,
    failed_versions: Vec<String>,
}

impl RememberedDevice {
    fn is_empty(&self) -> bool {
        self.channel_override.is_none() && self.failed_versions.is_empty()
    }
}

impl RememberedApps {
    /// The device's entry, created when missing (writes are rare: the keys are copied each time).
    fn device_mut(&mut self, app_id: &str, device_id: &str) -> &mut RememberedDevice {
        self.apps
            .entry(app_id.to_owned())
            .or_default()
            .entry(device_id.to_owned())
            .or_default()
    }

    /// Drops a device with nothing left to remember (and its app when it was the last one).
    fn forget_if_empty(&mut self, app_id: &str, device_id: &str) {
        let Some(devices) = self.apps.get_mut(app_id) else {
            return;
        };
        if devices.get(device_id).is_some_and(RememberedDevice::is_empty) {
            devices.remove(device_id);
        }
        if devices.is_empty() {
            self.apps.remove(app_id);
        }
    }

    /// Records the channel a device set for itself.
    pub(super) fn set_channel_override(&mut self, app_id: &str, device_id: &str, channel: &str) {
        self.device_mut(app_id, device_id).channel_override = Some(channel.to_owned());
    }

    /// Forgets a device's own channel.
    pub(super) fn clear_channel_override(&mut self, app_id: &str, device_id: &str) {
        if let Some(device) = self
            .apps
            .get_mut(app_id)
            .and_then(|devices| devices.get_mut(device_id))
        {
            device.channel_override = None;
        }
        self.forget_if_empty(app_id, device_id);
    }

    /// Records a version that failed on a device (once).
    pub(super) fn mark_failed(&mut self, app_id: &str, device_id: &str, version: &str) {
        let device = self.device_mut(app_id, device_id);
        if !device.failed_versions.iter().any(|failed| failed == version) {
            device.failed_versions.push(version.to_owned());
        }
    }

    fn apply(&mut self, write: &Write) {
        match write {
            Write::SetChannelOverride {
                app_id,
                device_id,
                channel,
            } => self.set_channel_override(app_id, device_id, channel),
            Write::ClearChannelOverride { app_id, device_id } => {
                self.clear_channel_override(app_id, device_id)
            }
            Write::FailedMark {
                app_id,
                device_id,
                version,
                ..
            } => self.mark_failed(app_id, device_id, version),
            Write::SeenDevice(_) | Write::CurrentBundle { .. } | Write::Count { .. } | Write::Outcome(_) => {}
        }
    }

    fn device_count(&self) -> usize {
        self.apps.values().map(HashMap::len).sum()
    }
}

impl DeviceMemory {
    /// A memory that knows nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A memory holding what was loaded from the store.
    pub(super) fn from_loaded(loaded: RememberedApps) -> Self {
        DeviceMemory {
            shared: Arc::new(RwLock::new(loaded)),
        }
    }

    /// What the update check needs: self_set_channel and failed_versions (in the order the
    /// failures were reported).
    pub fn facts(&self, app_id: &str, device_id: &str) -> DeviceFacts {
        let apps = self.read();
        match apps.apps.get(app_id).and_then(|devices| devices.get(device_id)) {
            Some(device) => DeviceFacts {
                self_set_channel: device.channel_override.clone(),
                failed_versions: device.failed_versions.clone(),
            },
            None => DeviceFacts::default(),
        }
    }

    /// Applies a write's effect on memory (overrides and failed marks; other writes are no-ops).
    pub fn apply(&self, write: &Write) {
        if remembered(write) {
            self.write().apply(write);
        }
    }

    /// Applies a write this process committed as change number `number` of the feed (None: the
    /// store keeps no feed). A change the feed already brought here is not applied again: the
    /// changes after it, which may undo it, were applied too, in order.
    pub fn apply_committed(&self, write: &Write, number: Option<i64>) {
        if !remembered(write) {
            return;
        }
        let mut apps = self.write();
        if number.is_none_or(|number| number > apps.feed_position) {
            apps.apply(write);
        }
    }

    /// Applies change number `number` of the feed, if this memory does not hold it yet.
    pub fn apply_change(&self, write: &Write, number: i64) {
        let mut apps = self.write();
        if number > apps.feed_position {
            if remembered(write) {
                apps.apply(write);
            }
            apps.feed_position = number;
        }
    }

    /// The number of the last change of the feed this memory holds.
    pub fn feed_position(&self) -> i64 {
        self.read().feed_position
    }

    /// Takes what `loaded` holds, its feed position included (a reload).
    pub fn replace_with(&self, loaded: &DeviceMemory) {
        let taken = std::mem::take(&mut *loaded.write());
        *self.write() = taken;
    }

    // A panic while holding the lock cannot leave the maps half-updated in a way that matters
    // (each update is one map operation), so a poisoned lock is used as it is.
    fn read(&self) -> RwLockReadGuard<'_, RememberedApps> {
        self.shared.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, RememberedApps> {
        self.shared.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether memory keeps anything of `write`.
fn remembered(write: &Write) -> bool {
    matches!(
        write,
        Write::SetChannelOverride { .. } | Write::ClearChannelOverride { .. } | Write::FailedMark { .. }
    )
}

impl fmt::Debug for DeviceMemory {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let apps = self.read();
        formatter
            .debug_struct("DeviceMemory")
            .field("apps", &apps.apps.len())
            .field("devices", &apps.device_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(version: &str) -> Write {
        Write::FailedMark {
            app_id: "app".into(),
            device_id: "d1".into(),
            version: version.into(),
            at_ms: 1,
        }
    }

    fn set(channel: &str) -> Write {
        Write::SetChannelOverride {
            app_id: "app".into(),
            device_id: "d1".into(),
            channel: channel.into(),
        }
    }

    fn clear() -> Write {
        Write::ClearChannelOverride {
            app_id: "app".into(),
            device_id: "d1".into(),
        }
    }

    fn channel(memory: &DeviceMemory) -> Option<String> {
        memory.facts("app", "d1").self_set_channel
    }

    #[test]
    fn the_feed_applies_in_order_and_a_late_local_apply_never_undoes_a_newer_change() {
        let memory = DeviceMemory::empty();
        // This replica committed change 10 (beta); another committed 11 (a clear), and the feed
        // brought both before this replica put its own in memory: its late apply is skipped.
        memory.apply_change(&set("beta"), 10);
        memory.apply_change(&clear(), 11);
        memory.apply_committed(&set("beta"), Some(10));
        assert_eq!(channel(&memory), None);
        assert_eq!(memory.feed_position(), 11);
        // A local change ahead of the feed shows at once; the feed then brings it again.
        memory.apply_committed(&set("beta"), Some(12));
        assert_eq!(channel(&memory), Some("beta".into()));
        memory.apply_change(&set("beta"), 12);
        // A change the feed already passed is not applied twice; without a feed (SQLite)
        // every committed write applies.
        memory.apply_change(&clear(), 12);
        assert_eq!(channel(&memory), Some("beta".into()));
        memory.apply_committed(&clear(), None);
        assert_eq!(channel(&memory), None);
        // A reload takes the loaded copy and its position.
        let loaded = DeviceMemory::empty();
        loaded.apply_change(&set("gamma"), 40);
        memory.replace_with(&loaded);
        assert_eq!(
            (channel(&memory), memory.feed_position()),
            (Some("gamma".into()), 40)
        );
    }

    #[test]
    fn memory_remembers_overrides_and_failures_per_device() {
        let memory = DeviceMemory::empty();
        assert_eq!(memory.facts("app", "d1"), DeviceFacts::default());
        memory.apply(&failed("1.0.0"));
        memory.apply(&failed("1.1.0"));
        memory.apply(&failed("1.0.0"));
        memory.apply(&Write::SetChannelOverride {
            app_id: "app".into(),
            device_id: "d1".into(),
            channel: "beta".into(),
        });
        let shared = memory.clone();
        assert_eq!(
            shared.facts("app", "d1"),
            DeviceFacts {
                self_set_channel: Some("beta".into()),
                failed_versions: vec!["1.0.0".into(), "1.1.0".into()],
            }
        );
        assert_eq!(memory.facts("app", "d2"), DeviceFacts::default());
        assert_eq!(memory.facts("other", "d1"), DeviceFacts::default());
        memory.apply(&Write::ClearChannelOverride {
            app_id: "app".into(),
            device_id: "d1".into(),
        });
        assert_eq!(memory.facts("app", "d1").self_set_channel, None);
        assert_eq!(memory.facts("app", "d1").failed_versions.len(), 2);
    }

    #[test]
    fn clearing_the_last_fact_forgets_the_device() {
        let memory = DeviceMemory::empty();
        memory.apply(&Write::SetChannelOverride {
            app_id: "app".into(),
            device_id: "d1".into(),
            channel: "beta".into(),
        });
        memory.apply(&Write::ClearChannelOverride {
            app_id: "app".into(),
            device_id: "d1".into(),
        });
        memory.apply(&Write::ClearChannelOverride {
            app_id: "app".into(),
            device_id: "d9".into(),
        });
        assert_eq!(memory.read().device_count(), 0);
        assert!(memory.read().apps.is_empty());
    }
}
