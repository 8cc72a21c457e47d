//! What is written to the device store and what is read back.

/// One write to the device store. Writes of one device apply in the order given; counters add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Upsert a device (on every update check; a non-failure stat refreshes an existing row).
    SeenDevice(DeviceSeen),
    /// A successful `set`: the device now runs this bundle version.
    CurrentBundle {
        /// The app.
        app_id: String,
        /// The device.
        device_id: String,
        /// The bundle version the device now runs.
        version: String,
        /// Whether this creates the device's row when it has none: only for a Bundle of the App
        /// (stats need no credentials, so made-up versions from made-up device ids must not
        /// grow the store); otherwise only a row that exists is changed.
        creates_row: bool,
    },
    /// Increment a per-bundle counter for (app, version, action, day) by n.
    Count {
        /// The app.
        app_id: String,
        /// The bundle version the event names.
        version: String,
        /// The stats action (`set`, `download_fail`, ...).
        action: String,
        /// The day of the event (days since 1970-01-01, UTC).
        day: i64,
        /// How much to add.
        n: i64,
    },
    /// The device reported this version as definitively failed.
    FailedMark {
        /// The app.
        app_id: String,
        /// The device.
        device_id: String,
        /// The bundle version that failed.
        version: String,
        /// When (milliseconds since the epoch).
        at_ms: i64,
    },
    /// A channel a (pre-7.34 plugin) device set for itself on the server.
    SetChannelOverride {
        /// The app.
        app_id: String,
        /// The device.
        device_id: String,
        /// The channel the device chose.
        channel: String,
    },
    /// The device went back to the channel it would get without an override.
    ClearChannelOverride {
        /// The app.
        app_id: String,
        /// The device.
        device_id: String,
    },
    /// How a bundle version fared on a device (a `set`, or a failure), for rollout analysis:
    /// one row per (app, version, device), failed for good once any report failed.
    Outcome(OutcomeReport),
}

/// A device's report of a bundle version: it runs it, or it failed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeReport {
    /// The app.
    pub app_id: String,
    /// The bundle version.
    pub version: String,
    /// The device.
    pub device_id: String,
    /// The channel the device resolves to when it reports.
    pub channel: String,
    /// Whether the report is a failure.
    pub failed: bool,
    /// When (milliseconds since the epoch).
    pub at_ms: i64,
}

/// The failure figures of one version in one channel: devices that reported it since a time,
/// and how many of them ever failed with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutcomeFigures {
    /// Devices with an outcome for the version in the channel since the time asked.
    pub attempts: u64,
    /// How many of them failed.
    pub failures: u64,
}

/// What one chunk of [`super::DeviceStore::prune_outcomes`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrunedOutcomes {
    /// Outcomes deleted.
    pub deleted: u64,
    /// Whether older outcomes may remain (call again).
    pub more: bool,
}

/// What an update check or a stats event tells about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSeen {
    /// The app.
    pub app_id: String,
    /// The device (lower-cased by the caller).
    pub device_id: String,
    /// `ios`, `android` or `electron`, as the plugin reports it.
    pub platform: String,
    /// The plugin's version.
    pub plugin_version: String,
    /// The native app's version (`version_build`).
    pub native_version: String,
    /// The bundle the device reports running (`version_name`).
    pub version_name: String,
    /// The app's own id for the device; None keeps the stored one.
    pub custom_id: Option<String>,
    /// The channel configured in the app (`defaultChannel`); None keeps the stored one.
    pub default_channel: Option<String>,
    /// A production build.
    pub is_prod: bool,
    /// An emulator or simulator.
    pub is_emulator: bool,
    /// When the device was seen (milliseconds since the epoch).
    pub seen_at_ms: i64,
    /// Whether this sighting creates the device's row when it has none: true for an update
    /// check, false for a stats event, which only refreshes a row that exists (stats need no
    /// credentials, so made-up device ids must not grow the store).
    pub creates_row: bool,
}

/// A device's row in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The app.
    pub app_id: String,
    /// The device.
    pub device_id: String,
    /// The platform last reported (empty until the device is seen by a [`Write::SeenDevice`]).
    pub platform: String,
    /// The plugin version last reported (empty until seen).
    pub plugin_version: String,
    /// The native app version last reported (empty until seen).
    pub native_version: String,
    /// The bundle the device last reported running (empty until seen).
    pub version_name: String,
    /// The app's own id for the device, the last one reported.
    pub custom_id: Option<String>,
    /// The channel configured in the app, the last one reported.
    pub default_channel: Option<String>,
    /// A production build, as last reported (false until seen).
    pub is_prod: bool,
    /// An emulator, as last reported (false until seen).
    pub is_emulator: bool,
    /// The bundle of the last successful `set`.
    pub current_bundle: Option<String>,
    /// The channel the device set for itself on the server.
    pub channel_override: Option<String>,
    /// When the device was last seen (milliseconds since the epoch; 0 until seen).
    pub last_seen_ms: i64,
}

/// One per-bundle counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// The bundle version.
    pub version: String,
    /// The stats action.
    pub action: String,
    /// The day (days since 1970-01-01, UTC).
    pub day: i64,
    /// How many events.
    pub count: i64,
}
