//! `updatePath: stepwise`: a device walks through each release of the channel's history.

use serde_json::{Value, json};

use super::*;
use crate::core::{fixtures::*, snapshot::SnapshotInputs};

/// What a check answered, in one comparable word: `offer 1.1.0`, `offer 1.4.0 (ro)` (a rollout's
/// candidate), `builtin`, or the refusal's code with the version it names.
fn outcome(answer: &UpdateAnswer) -> String {
    match answer {
        UpdateAnswer::Offer(offer) => match &offer.rollout {
            Some(rollout) => format!("offer {} ({rollout})", offer.bundle.version),
            None => format!("offer {}", offer.bundle.version),
        },
        UpdateAnswer::RevertToBuiltin { .. } => "builtin".to_owned(),
        UpdateAnswer::NoUpdate(no) => match &no.version {
            Some(version) => format!("{} {version}", no.refusal.code()),
            None => no.refusal.code().to_owned(),
        },
    }
}

const RELEASES: [&str; 4] = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"];

fn history(versions: &[&str]) -> Value {
    json!({"history": versions
        .iter()
        .map(|v| json!({"bundle": format!("shop-{v}"), "version": v}))
        .collect::<Vec<_>>()})
}

/// App `shop` with a public `production` channel (`spec` merged in) on `bundle_ref`, its
/// history `versions`, and a synced Bundle `shop-<v>` of each of `bundles`.
fn world(spec: Value, bundle_ref: &str, versions: &[&str], bundles: &[&str]) -> SnapshotInputs {
    let mut production = channel("production", Some(bundle_ref), json!({"public": true}));
    let mut patched = serde_json::to_value(&production.spec).expect("a spec");
    merge(&mut patched, spec);
    production.spec = serde_json::from_value(patched).expect("a channel spec");
    production.status = Some(serde_json::from_value(history(versions)).expect("a status"));
    SnapshotInputs {
        apps: vec![app("shop", APP_ID, json!({}))],
        channels: vec![production],
        bundles: bundles
            .iter()
            .map(|v| bundle(&format!("shop-{v}"), v, json!({})))
            .collect(),
        ..Default::default()
    }
}

fn stepwise() -> Value {
    json!({"updatePath": "stepwise"})
}

/// The usual stepwise world: production on 1.3.0, having served every one of [`RELEASES`].
fn releases() -> SnapshotInputs {
    world(stepwise(), "shop-1.3.0", &RELEASES, &RELEASES)
}

/// An Android device on native 1.0.0 running `version`.
fn on(version: &str) -> UpdateCheck {
    UpdateCheck {
        version_name: version.into(),
        version_build: "1.0.0".into(),
        native_version: coerce("1.0.0"),
        ..check()
    }
}

fn coerce(version: &str) -> Option<semver::Version> {
    crate::core::version::coerce_native_version(version)
}

fn decide(inputs: &SnapshotInputs, check: &UpdateCheck) -> String {
    outcome(&decide_update(&snapshot(inputs), check, &DeviceFacts::default()))
}

#[test]
fn a_device_is_offered_the_lowest_release_above_its_version() {
    let builtin = UpdateCheck {
        on_builtin: true,
        ..on("1.0.0")
    };
    let builtin_on_later_native = UpdateCheck {
        on_builtin: true,
        version_name: "1.1.5".into(),
        version_build: "1.1.5".into(),
        native_version: coerce("1.1.5"),
        ..check()
    };
    let cases: [(UpdateCheck, &str, &str); 10] = [
        (on("1.0.0"), "offer 1.1.0", "the first release of the history"),
        (on("1.1.0"), "offer 1.2.0", "the next"),
        (
            on("1.2.0"),
            "offer 1.3.0",
            "the channel's bundle is the last step",
        ),
        (on("1.3.0"), "no_new_version_available", "on the newest: nothing"),
        (on("0.9.0"), "offer 1.0.0", "below every release: the lowest"),
        (on("1.1.5"), "offer 1.2.0", "between two releases: the next above"),
        (
            builtin,
            "offer 1.1.0",
            "the builtin assets count as the native version",
        ),
        (
            builtin_on_later_native,
            "offer 1.2.0",
            "builtin on a later native build: from its native version",
        ),
        (
            on("not-a-version"),
            "offer 1.0.0",
            "a version that is not semver: from the lowest",
        ),
        (
            on("2.0.0"),
            "offer 1.3.0",
            "above the channel's bundle (moved back): followed as with latest",
        ),
    ];
    let inputs = releases();
    for (check, expected, why) in cases {
        assert_eq!(decide(&inputs, &check), expected, "{why}");
    }
}

#[test]
fn a_device_on_the_first_release_walks_through_each_one_in_three_checks() {
    let snapshot = snapshot(&releases());
    let mut device = on("1.0.0");
    let mut walked = Vec::new();
    for _ in 0..4 {
        let answer = decide_update(&snapshot, &device, &DeviceFacts::default());
        walked.push(outcome(&answer));
        if let UpdateAnswer::Offer(offer) = answer {
            device.version_name = offer.bundle.version.clone();
        }
    }
    assert_eq!(
        walked,
        [
            "offer 1.1.0",
            "offer 1.2.0",
            "offer 1.3.0",
            "no_new_version_available"
        ]
    );
}

#[test]
fn latest_ignores_the_history_and_is_the_default() {
    for spec in [json!({"updatePath": "latest"}), json!({})] {
        let inputs = world(spec, "shop-1.3.0", &RELEASES, &RELEASES);
        assert_eq!(decide(&inputs, &on("1.0.0")), "offer 1.3.0");
    }
}

#[test]
fn the_walk_goes_only_up_to_the_channels_bundle_and_skips_deleted_releases() {
    let cases: [(&str, &[&str], &str, &str, &str); 5] = [
        (
            "shop-1.2.0",
            &RELEASES,
            "1.0.0",
            "offer 1.1.0",
            "git moved back to 1.2.0: still a step",
        ),
        (
            "shop-1.2.0",
            &RELEASES,
            "1.1.0",
            "offer 1.2.0",
            "1.3.0, above the channel's bundle, is no step",
        ),
        (
            "shop-1.3.0",
            &["1.0.0", "1.1.0", "1.3.0"],
            "1.1.0",
            "offer 1.3.0",
            "a deleted Bundle of the history is skipped",
        ),
        (
            "shop-1.3.0",
            &["1.3.0"],
            "1.0.0",
            "offer 1.3.0",
            "every earlier release deleted: as latest",
        ),
        (
            "shop-1.3.0",
            &["1.1.0", "1.3.0"],
            "1.0.0",
            "offer 1.1.0",
            "the history names 1.2.0 but its Bundle is gone",
        ),
    ];
    for (bundle_ref, bundles, version, expected, why) in cases {
        let inputs = world(stepwise(), bundle_ref, &RELEASES, bundles);
        assert_eq!(decide(&inputs, &on(version)), expected, "{why}");
    }
}

#[test]
fn a_release_rebuilt_under_another_version_or_not_synced_is_no_step() {
    let mut inputs = releases();
    inputs.bundles[1] = bundle("shop-1.1.0", "1.1.9", json!({}));
    assert_eq!(decide(&inputs, &on("1.0.0")), "offer 1.2.0", "rebuilt");
    let mut inputs = releases();
    inputs.bundles[1] = unsynced_bundle("shop-1.1.0", "1.1.0");
    // An unsynced Bundle is reported by the snapshot; the channel still serves the rest.
    let (snapshot, _) = Snapshot::build(&inputs);
    let answer = decide_update(&snapshot, &on("1.0.0"), &DeviceFacts::default());
    assert_eq!(outcome(&answer), "offer 1.2.0", "not synced");
}

#[test]
fn during_a_rollout_the_candidate_is_the_step_after_the_stable_bundle_for_its_cohort_only() {
    let with_rollout = |percent: i32| {
        let mut inputs = releases();
        inputs.bundles.push(bundle("shop-1.4.0", "1.4.0", json!({})));
        inputs.rollouts = vec![rollout("ro", "production", "shop-1.4.0", percent, "Progressing")];
        inputs
    };
    let cases: [(i32, &str, &str, &str); 6] = [
        (100, "1.0.0", "offer 1.1.0", "the cohort walks the history first"),
        (100, "1.2.0", "offer 1.3.0", "then the stable bundle"),
        (100, "1.3.0", "offer 1.4.0 (ro)", "then the candidate"),
        (100, "1.4.0", "no_new_version_available", "on the candidate"),
        (
            0,
            "1.3.0",
            "no_new_version_available",
            "outside the cohort: no candidate",
        ),
        (0, "1.0.0", "offer 1.1.0", "outside the cohort: the same walk"),
    ];
    for (percent, version, expected, why) in cases {
        assert_eq!(decide(&with_rollout(percent), &on(version)), expected, "{why}");
    }
    // Git moved the channel back to 1.2.0: 1.3.0, above the stable bundle, is no step on the way
    // to the candidate either.
    let mut moved_back = with_rollout(100);
    moved_back.channels[0].spec.bundle_ref = Some("shop-1.2.0".into());
    assert_eq!(decide(&moved_back, &on("1.2.0")), "offer 1.4.0 (ro)");
}

#[test]
fn a_step_a_guard_refuses_stops_the_walk_with_that_guards_answer() {
    const MAJORS: [&str; 4] = ["1.0.0", "1.1.0", "2.0.0", "2.1.0"];
    let major = |path: &str| world(json!({"updatePath": path}), "shop-2.1.0", &MAJORS, &MAJORS);
    let metadata = |path: &str| {
        world(
            json!({"updatePath": path, "disableAutoUpdate": "metadata", "minUpdateVersion": "1.2.0"}),
            "shop-1.3.0",
            &RELEASES,
            &RELEASES,
        )
    };
    let needs_native = |path: &str| {
        let mut inputs = world(json!({"updatePath": path}), "shop-1.3.0", &RELEASES, &RELEASES);
        inputs.bundles[2] = bundle("shop-1.2.0", "1.2.0", json!({"native": {"minVersion": "1.1.0"}}));
        inputs
    };
    let pinned_off_platform = |path: &str| {
        world(
            json!({"updatePath": path, "public": false, "android": false,
                   "deviceOverrides": [{"deviceId": DEVICE}]}),
            "shop-1.3.0",
            &RELEASES,
            &RELEASES,
        )
    };
    type World = fn(&str) -> SnapshotInputs;
    let cases: [(World, &str, &str, &str, &str); 6] = [
        (
            major,
            "1.0.0",
            "offer 1.1.0",
            "disable_auto_update_to_major 2.1.0",
            "major: a step within the major is taken",
        ),
        (
            major,
            "1.1.0",
            "disable_auto_update_to_major 2.0.0",
            "disable_auto_update_to_major 2.1.0",
            "major: the first step of the next major is refused",
        ),
        (
            metadata,
            "1.0.0",
            "disable_auto_update_to_metadata 1.1.0",
            "disable_auto_update_to_metadata 1.3.0",
            "minUpdateVersion above the native build",
        ),
        (
            needs_native,
            "1.1.0",
            "native_version_too_old 1.2.0",
            "offer 1.3.0",
            "a step needing a newer native build stops the walk",
        ),
        (
            needs_native,
            "1.0.0",
            "offer 1.1.0",
            "offer 1.3.0",
            "the steps before it are taken",
        ),
        (
            pinned_off_platform,
            "1.0.0",
            "disabled_platform_android 1.1.0",
            "disabled_platform_android 1.3.0",
            "a channel that does not serve the platform",
        ),
    ];
    for (world, version, stepwise, latest, why) in cases {
        assert_eq!(decide(&world("stepwise"), &on(version)), stepwise, "{why}");
        assert_eq!(decide(&world("latest"), &on(version)), latest, "{why} (latest)");
    }
}

#[test]
fn a_step_that_failed_on_the_device_is_not_offered_again_and_the_walk_stops() {
    let facts = DeviceFacts {
        failed_versions: vec!["1.2.0".into()],
        ..Default::default()
    };
    let snapshot = snapshot(&releases());
    let answer = decide_update(&snapshot, &on("1.1.0"), &facts);
    assert_eq!(outcome(&answer), "bundle_failed_on_device 1.2.0");
    let answer = decide_update(&snapshot, &on("1.0.0"), &facts);
    assert_eq!(outcome(&answer), "offer 1.1.0");
}

#[test]
fn a_channel_on_the_builtin_assets_reverts_whatever_its_history() {
    let mut inputs = releases();
    inputs.channels[0].spec.bundle_ref = None;
    assert_eq!(decide(&inputs, &on("1.1.0")), "builtin");
}

#[test]
fn a_step_below_the_native_build_stops_the_walk_unless_allowed() {
    // A device still running bundle 1.0.0 on a native 1.2.0 build: 1.1.0 is older than its
    // native build. The walk stops there rather than skip 1.1.0, unless the channel allows
    // bundles under native.
    let device = UpdateCheck {
        version_build: "1.2.0".into(),
        native_version: coerce("1.2.0"),
        ..on("1.0.0")
    };
    assert_eq!(
        decide(&releases(), &device),
        "disable_auto_update_under_native 1.1.0"
    );
    let allowed = world(
        json!({"updatePath": "stepwise", "disableAutoUpdateUnderNative": false}),
        "shop-1.3.0",
        &RELEASES,
        &RELEASES,
    );
    assert_eq!(decide(&allowed, &device), "offer 1.1.0");
}
