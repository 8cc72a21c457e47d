//! What a device's stats event means for the device store: a pure classification.

/// The calendar day of an event (days since 1970-01-01, UTC).
pub type Day = i64;

/// One stats event, decoded from the plugin's body.
#[derive(Debug, Clone, PartialEq)]
pub struct StatEvent {
    /// `app_id`.
    pub app_id: String,
    /// `device_id`, lower-cased.
    pub device_id: String,
    /// `action` (any string: unknown actions are kept, never rejected).
    pub action: String,
    /// `version_name` with a `:<file>` suffix removed (per-file failures name `<version>:<file>`).
    pub version_name: String,
    /// `old_version_name`, when not empty.
    pub old_version_name: Option<String>,
    /// `plugin_version`, when it parses.
    pub plugin_version: Option<semver::Version>,
    /// `is_prod`.
    pub is_prod: bool,
    /// `is_emulator`.
    pub is_emulator: bool,
}

/// Actions that prove a bundle does not work on the device: it is not offered to that device
/// again. Transient failures (network, disk space, memory) are not among them.
pub const DEFINITIVE_FAILURES: &[&str] = &[
    "update_fail",
    "set_fail",
    "checksum_fail",
    "checksum_required",
    "decrypt_fail",
    "unzip_fail",
    "windows_path_fail",
    "canonical_path_fail",
    "directory_path_fail",
    "manifest_path_fail",
    "download_manifest_checksum_fail",
    "download_manifest_brotli_fail",
];

/// Whether an action reports a failure of the bundle named in the event (for analysis: any
/// action ending in `_fail`, plus the checksum and disk errors the plugin names otherwise).
pub fn is_failure(action: &str) -> bool {
    action.ends_with("_fail") || action == "checksum_required" || action == "insufficient_disk_space"
}

/// What an event says about how a bundle version fared on the device, for rollout analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionOutcome {
    /// The device runs this version (a `set`).
    Succeeded(String),
    /// The device reported a failure with this version (any failure action, except those
    /// [`classify`] treats as meaningless).
    Failed(String),
}

impl VersionOutcome {
    /// The version the outcome is about.
    pub fn version(&self) -> &str {
        match self {
            VersionOutcome::Succeeded(version) | VersionOutcome::Failed(version) => version,
        }
    }

    /// Whether it is a failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, VersionOutcome::Failed(_))
    }
}

/// What the store does with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatEffect {
    /// Count the event for (version, action, day); None when it names no bundle or is ignored.
    pub count: Option<(String, String)>,
    /// Update the device's current bundle to this version (a successful `set`).
    pub current_bundle: Option<String>,
    /// Mark this version as failed on the device.
    pub failed_version: Option<String>,
    /// Refresh the device's last-seen time (every event except failures, whose version is the
    /// failed one rather than the running one, as in Capgo).
    pub touch_device: bool,
    /// The device's outcome with the version the event names: a `set` is a success, a failure
    /// action a failure; None for other actions and events that name no bundle.
    pub outcome: Option<VersionOutcome>,
}

impl StatEffect {
    /// The effect as the store keeps it, against the versions of the App's Bundles. Stats are
    /// unauthenticated, so nothing a made-up version or action names may grow the store or the
    /// memory without bound:
    ///
    /// - a failed mark (kept in memory for every device) and an outcome (read by rollout
    ///   analysis) only for a version of one of the App's Bundles;
    /// - the counter of a version that is no Bundle is kept under [`UNKNOWN_VERSION`], and that
    ///   of an action the plugin does not send ([`KNOWN_ACTIONS`]) under [`OTHER_ACTION`]; so an
    ///   App has at most [`counter_rows_per_day`] counter rows a day, whatever it is sent.
    ///
    /// The device's current bundle stays: a device may run a bundle this server never served
    /// (one deployed before the switch to ota), and it is a column of the device's row. Also
    /// says whether the event named a version that is no Bundle.
    pub fn for_known_bundles(mut self, is_bundle: impl Fn(&str) -> bool) -> (Self, bool) {
        let unknown_failure = self.failed_version.as_deref().is_some_and(|v| !is_bundle(v));
        if unknown_failure {
            self.failed_version = None;
        }
        let unknown_outcome = self.outcome.as_ref().is_some_and(|o| !is_bundle(o.version()));
        if unknown_outcome {
            self.outcome = None;
        }
        let mut unknown_count = false;
        if let Some((version, action)) = &mut self.count {
            if !is_bundle(version) {
                *version = UNKNOWN_VERSION.to_owned();
                unknown_count = true;
            }
            if !KNOWN_ACTIONS.contains(&action.as_str()) {
                *action = OTHER_ACTION.to_owned();
            }
        }
        (self, unknown_failure || unknown_outcome || unknown_count)
    }
}

/// The version the events of versions that are none of the App's Bundles are counted under
/// (a version that names no bundle for [`classify`] either, so no Bundle's counters mix in).
pub const UNKNOWN_VERSION: &str = "unknown";

/// The action the events of actions not in [`KNOWN_ACTIONS`] are counted under.
pub const OTHER_ACTION: &str = "other";

/// The actions counted under their own name: those the Capacitor updater plugin sends (to
/// 8.51, its health signals from 8.46 among them) and those Capgo's backend accepts
/// (`ALLOWED_STATS_ACTIONS`), as listed in the protocol reference.
pub const KNOWN_ACTIONS: &[&str] = &[
    // Bundle lifecycle.
    "set",
    "set_fail",
    "set_next",
    "reset",
    "delete",
    "update_fail",
    // Download progress.
    "download_0",
    "download_10",
    "download_20",
    "download_30",
    "download_40",
    "download_50",
    "download_60",
    "download_70",
    "download_80",
    "download_90",
    "download_complete",
    "download_zip_start",
    "download_zip_complete",
    "download_manifest_start",
    "download_manifest_complete",
    // Download failures.
    "download_fail",
    "finish_download_fail",
    "checksum_fail",
    "checksum_required",
    "decrypt_fail",
    "unzip_fail",
    "windows_path_fail",
    "canonical_path_fail",
    "directory_path_fail",
    "manifest_path_fail",
    "download_manifest_file_fail",
    "download_manifest_checksum_fail",
    "download_manifest_brotli_fail",
    "low_mem_fail",
    "insufficient_disk_space",
    // App lifecycle.
    "app_moved_to_foreground",
    "app_moved_to_background",
    "app_launch_start",
    "app_launch_ready",
    "app_launch_timeout",
    "blocked_by_server_url",
    // Health signals.
    "app_crash",
    "app_crash_native",
    "app_anr",
    "app_killed_low_memory",
    "app_killed_excessive_resource_usage",
    "app_initialization_failure",
    "app_memory_warning",
    "webview_javascript_error",
    "webview_unhandled_rejection",
    "webview_resource_error",
    "webview_security_policy_violation",
    "webview_unclean_restart",
    "webview_render_process_gone",
    "webview_content_process_terminated",
    "webview_dom_content_loaded",
    "webview_page_loaded",
    "os_version_changed",
    "native_app_version_changed",
    // Throttling.
    "rate_limit_reached",
    // Capgo's backend's own.
    "ping",
    "get",
    "uninstall",
    "needPlanUpgrade",
    "missingBundle",
    "noNew",
    "disablePlatformIos",
    "disablePlatformAndroid",
    "disablePlatformElectron",
    "disableAutoUpdateToMajor",
    "cannotUpdateViaPrivateChannel",
    "disableAutoUpdateToMinor",
    "disableAutoUpdateToPatch",
    "channelMisconfigured",
    "disableAutoUpdateMetadata",
    "disableAutoUpdateUnderNative",
    "disableDevBuild",
    "disableProdBuild",
    "disableEmulator",
    "disableDevice",
    "cannotGetBundle",
    "NoChannelOrOverride",
    "setChannel",
    "getChannel",
    "set_channel",
    "rateLimited",
    "disableAutoUpdate",
    "keyMismatch",
    "InvalidIp",
    "customIdBlocked",
    "backend_refusal",
];

/// The most counter rows an App with `bundles` Bundle versions gets in a day: one per Bundle
/// version and [`UNKNOWN_VERSION`], times one per known action and [`OTHER_ACTION`].
pub fn counter_rows_per_day(bundles: usize) -> usize {
    (bundles + 1) * (KNOWN_ACTIONS.len() + 1)
}

/// Versions that name no bundle.
fn names_a_bundle(version: &str) -> bool {
    !version.is_empty() && version != "builtin" && version != "unknown"
}

/// Classifies an event.
pub fn classify(event: &StatEvent) -> StatEffect {
    let failure = is_failure(&event.action);
    // Plugins before 7.17.0 (6.x: 6.14.25) sent download_fail when there was simply no update.
    let meaningless_download_fail = event.action == "download_fail"
        && event.plugin_version.as_ref().is_none_or(|v| match v.major {
            0..=5 => true,
            6 => (v.minor, v.patch) < (14, 25),
            7 => v.minor < 17,
            _ => false,
        });
    let bundle = names_a_bundle(&event.version_name).then(|| event.version_name.clone());
    let outcome = match &bundle {
        Some(version) if event.action == "set" => Some(VersionOutcome::Succeeded(version.clone())),
        Some(version) if failure && !meaningless_download_fail => {
            Some(VersionOutcome::Failed(version.clone()))
        }
        _ => None,
    };
    StatEffect {
        count: if meaningless_download_fail {
            None
        } else {
            bundle.clone().map(|version| (version, event.action.clone()))
        },
        current_bundle: (event.action == "set").then(|| bundle.clone()).flatten(),
        failed_version: if DEFINITIVE_FAILURES.contains(&event.action.as_str()) {
            bundle
        } else {
            None
        },
        touch_device: !failure,
        outcome,
    }
}

/// Splits the per-file form `<version>:<file>` of `version_name`.
pub fn bundle_version_of(version_name: &str) -> &str {
    version_name
        .split_once(':')
        .map_or(version_name, |(version, _)| version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, version: &str, plugin: &str) -> StatEvent {
        StatEvent {
            app_id: "com.example.shop".into(),
            device_id: "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11".into(),
            action: action.into(),
            version_name: version.into(),
            old_version_name: None,
            plugin_version: semver::Version::parse(plugin).ok(),
            is_prod: true,
            is_emulator: false,
        }
    }

    #[test]
    fn a_set_moves_the_device_and_counts() {
        let effect = classify(&event("set", "1.4.2", "8.51.14"));
        assert_eq!(effect.count, Some(("1.4.2".into(), "set".into())));
        assert_eq!(effect.current_bundle.as_deref(), Some("1.4.2"));
        assert_eq!(effect.failed_version, None);
        assert!(effect.touch_device);
    }

    #[test]
    fn definitive_failures_mark_the_bundle_and_do_not_touch_the_device() {
        for action in [
            "update_fail",
            "checksum_fail",
            "decrypt_fail",
            "unzip_fail",
            "set_fail",
        ] {
            let effect = classify(&event(action, "1.5.0", "8.51.14"));
            assert_eq!(effect.failed_version.as_deref(), Some("1.5.0"), "{action}");
            assert!(!effect.touch_device, "{action}");
            assert_eq!(effect.count, Some(("1.5.0".into(), action.into())));
        }
    }

    #[test]
    fn only_versions_of_bundles_get_failed_marks_and_outcomes() {
        let is_bundle = |v: &str| v == "1.5.0";
        let (known, left_out) =
            classify(&event("update_fail", "1.5.0", "8.51.14")).for_known_bundles(is_bundle);
        assert!(!left_out);
        assert_eq!(known.failed_version.as_deref(), Some("1.5.0"));
        assert_eq!(known.outcome, Some(VersionOutcome::Failed("1.5.0".into())));
        let (junk, left_out) =
            classify(&event("update_fail", "junk-7", "8.51.14")).for_known_bundles(is_bundle);
        assert!(left_out);
        assert_eq!((junk.failed_version, junk.outcome), (None, None));
        assert_eq!(
            junk.count,
            Some((UNKNOWN_VERSION.into(), "update_fail".into())),
            "still counted, under the unknown version"
        );
        let (set, _) = classify(&event("set", "1.2.3", "8.51.14")).for_known_bundles(is_bundle);
        assert_eq!(set.outcome, None);
        assert_eq!(
            set.current_bundle.as_deref(),
            Some("1.2.3"),
            "the device still runs it"
        );
    }

    #[test]
    fn counters_of_made_up_versions_and_actions_are_folded() {
        let is_bundle = |v: &str| v == "1.5.0" || v == "1.4.2";
        // (action, version) sent → (counted as, whether the version is no Bundle)
        type Row = (
            (&'static str, &'static str),
            Option<(&'static str, &'static str)>,
            bool,
        );
        let table: &[Row] = &[
            (("set", "1.5.0"), Some(("1.5.0", "set")), false),
            (
                ("download_complete", "1.4.2"),
                Some(("1.4.2", "download_complete")),
                false,
            ),
            (("set", "9.9.9"), Some(("unknown", "set")), true),
            (
                ("download_complete", "0.0.1-junk"),
                Some(("unknown", "download_complete")),
                true,
            ),
            (("made_up_action", "1.5.0"), Some(("1.5.0", "other")), false),
            (("x-41", "junk-41"), Some(("unknown", "other")), true),
            (("unknown_fail", "9.0.0"), Some(("unknown", "other")), true),
            // No bundle named: nothing counted, nothing left out.
            (("set", "builtin"), None, false),
            (("made_up_action", ""), None, false),
        ];
        for &((action, version), counted, left_out) in table {
            let (effect, unknown) = classify(&event(action, version, "8.51.14")).for_known_bundles(is_bundle);
            assert_eq!(
                effect.count.as_ref().map(|(v, a)| (v.as_str(), a.as_str())),
                counted,
                "{action} {version}"
            );
            assert_eq!(unknown, left_out, "{action} {version}");
        }
        // The device's current bundle is not folded: it is the device's own column.
        let (set, _) = classify(&event("set", "9.9.9", "8.51.14")).for_known_bundles(is_bundle);
        assert_eq!(set.current_bundle.as_deref(), Some("9.9.9"));
    }

    #[test]
    fn counter_rows_are_bounded_whatever_the_events() {
        let bundles = ["1.0.0", "1.1.0", "2.0.0"];
        let is_bundle = |v: &str| bundles.contains(&v);
        let mut rows = std::collections::HashSet::new();
        for n in 0..5_000 {
            let action = match n % 4 {
                0 => format!("made_up_{n}"),
                1 => KNOWN_ACTIONS[n % KNOWN_ACTIONS.len()].to_owned(),
                2 => "set".to_owned(),
                _ => format!("x_{n}_fail"),
            };
            let version = match n % 3 {
                0 => bundles[n % bundles.len()].to_owned(),
                _ => format!("{}.{}.{n}", n % 7, n % 11),
            };
            let (effect, _) = classify(&event(&action, &version, "8.51.14")).for_known_bundles(is_bundle);
            rows.extend(effect.count);
        }
        assert!(
            rows.len() <= counter_rows_per_day(bundles.len()),
            "{} rows, bound {}",
            rows.len(),
            counter_rows_per_day(bundles.len())
        );
        assert!(
            rows.len() > bundles.len() * 4,
            "the table covers many rows: {}",
            rows.len()
        );
    }

    #[test]
    fn known_actions_hold_every_failure_the_core_acts_on() {
        let unique: std::collections::HashSet<_> = KNOWN_ACTIONS.iter().collect();
        assert_eq!(unique.len(), KNOWN_ACTIONS.len(), "no action twice");
        for action in DEFINITIVE_FAILURES {
            assert!(KNOWN_ACTIONS.contains(action), "{action}");
        }
        // The plugin's health signals and launch reports are counted under their own names.
        for action in [
            "app_crash",
            "app_anr",
            "app_launch_timeout",
            "webview_render_process_gone",
        ] {
            assert!(KNOWN_ACTIONS.contains(&action), "{action}");
        }
        for action in [OTHER_ACTION, UNKNOWN_VERSION] {
            assert!(!KNOWN_ACTIONS.contains(&action), "{action}");
        }
        assert!(
            !names_a_bundle(UNKNOWN_VERSION),
            "no Bundle's counters mix with the unknown ones"
        );
    }

    #[test]
    fn transient_failures_count_but_do_not_mark() {
        for action in ["download_fail", "insufficient_disk_space", "low_mem_fail"] {
            let effect = classify(&event(action, "1.5.0", "8.51.14"));
            assert_eq!(effect.failed_version, None, "{action}");
            assert!(effect.count.is_some(), "{action}");
        }
    }

    #[test]
    fn old_plugins_download_fail_is_ignored() {
        assert_eq!(classify(&event("download_fail", "1.5.0", "7.16.9")).count, None);
        assert_eq!(classify(&event("download_fail", "1.5.0", "6.14.24")).count, None);
        assert!(
            classify(&event("download_fail", "1.5.0", "6.14.25"))
                .count
                .is_some()
        );
        assert!(
            classify(&event("download_fail", "1.5.0", "7.17.0"))
                .count
                .is_some()
        );
        assert_eq!(
            classify(&event("download_fail", "1.5.0", "not-a-version")).count,
            None
        );
    }

    #[test]
    fn unknown_actions_are_counted_and_builtin_counts_nothing() {
        assert_eq!(
            classify(&event("some_future_action", "1.4.2", "9.0.0")).count,
            Some(("1.4.2".into(), "some_future_action".into()))
        );
        let effect = classify(&event("app_moved_to_foreground", "builtin", "8.51.14"));
        assert_eq!(effect.count, None);
        assert!(effect.touch_device);
        assert_eq!(classify(&event("set", "", "8.51.14")).current_bundle, None);
    }

    #[test]
    fn a_set_is_a_success_and_every_failure_action_a_failure() {
        assert_eq!(
            classify(&event("set", "1.4.2", "8.51.14")).outcome,
            Some(VersionOutcome::Succeeded("1.4.2".into()))
        );
        for action in [
            "update_fail",
            "set_fail",
            "checksum_fail",
            "checksum_required",
            "decrypt_fail",
            "unzip_fail",
            "download_fail",
            "download_manifest_brotli_fail",
            "insufficient_disk_space",
            "some_future_fail",
        ] {
            let outcome = classify(&event(action, "1.5.0", "8.51.14")).outcome;
            assert_eq!(outcome, Some(VersionOutcome::Failed("1.5.0".into())), "{action}");
            assert!(outcome.as_ref().is_some_and(VersionOutcome::is_failure));
            assert_eq!(outcome.as_ref().map(VersionOutcome::version), Some("1.5.0"));
        }
    }

    #[test]
    fn other_actions_and_meaningless_failures_have_no_outcome() {
        for (action, version, plugin) in [
            ("get", "1.5.0", "8.51.14"),
            ("download_complete", "1.5.0", "8.51.14"),
            ("app_moved_to_foreground", "1.5.0", "8.51.14"),
            ("set_channel", "1.5.0", "8.51.14"),
            // Old plugins sent download_fail when there was no update at all.
            ("download_fail", "1.5.0", "7.16.9"),
            ("download_fail", "1.5.0", "6.14.24"),
            ("download_fail", "1.5.0", "5.9.0"),
            // No bundle named.
            ("set", "builtin", "8.51.14"),
            ("update_fail", "", "8.51.14"),
            ("update_fail", "unknown", "8.51.14"),
        ] {
            assert_eq!(
                classify(&event(action, version, plugin)).outcome,
                None,
                "{action} {version} {plugin}"
            );
        }
        assert!(
            classify(&event("download_fail", "1.5.0", "7.17.0"))
                .outcome
                .is_some_and(|outcome| outcome.is_failure())
        );
    }

    #[test]
    fn per_file_version_names_are_split() {
        assert_eq!(bundle_version_of("1.5.0:assets/app.js"), "1.5.0");
        assert_eq!(bundle_version_of("1.5.0"), "1.5.0");
    }
}
