use serde_json::json;

use super::*;
use crate::core::fixtures::*;

fn answer(inputs: &crate::core::snapshot::SnapshotInputs, check: &UpdateCheck) -> UpdateAnswer {
    decide_update(&snapshot(inputs), check, &DeviceFacts::default())
}

#[track_caller]
fn offered(answer: &UpdateAnswer) -> &Offer {
    match answer {
        UpdateAnswer::Offer(offer) => offer,
        other => panic!("expected an offer, got {other:?}"),
    }
}

#[track_caller]
fn refused(answer: &UpdateAnswer) -> &NoUpdate {
    match answer {
        UpdateAnswer::NoUpdate(no) => no,
        other => panic!("expected no update, got {other:?}"),
    }
}

fn version(s: &str) -> semver::Version {
    semver::Version::parse(s).unwrap()
}

#[test]
fn a_device_behind_the_public_channel_is_offered_its_bundle() {
    let a = answer(&inputs(), &check());
    let offer = offered(&a);
    assert_eq!(offer.bundle.version, "1.4.2");
    assert_eq!(offer.channel, "production");
    assert_eq!(offer.checksum, sha("1.4.2"));
    assert_eq!(offer.session_key, "");
    assert_eq!(offer.rollout, None);
    assert!(!offer.with_manifest, "the bundle has no manifest");
}

#[test]
fn a_device_on_the_target_is_up_to_date_before_any_policy() {
    let mut inputs = inputs();
    // Even a channel that would block the device answers "up to date" first.
    inputs.channels[0] = channel(
        "production",
        Some("shop-1.4.2"),
        json!({"public": true, "allowProd": false}),
    );
    let mut c = check();
    c.version_name = "1.4.2".into();
    let no = refused(&answer(&inputs, &c)).clone();
    assert_eq!(no.refusal, Refusal::NoNewVersionAvailable);
    assert_eq!(no.refusal.kind(), AnswerKind::UpToDate);
    assert_eq!(no.channel.as_deref(), Some("production"));
}

#[test]
fn unknown_apps_and_platforms_are_refused() {
    let mut c = check();
    c.app_id = "com.example.other".into();
    let no = refused(&answer(&inputs(), &c)).clone();
    assert_eq!(
        (no.refusal.code(), no.refusal.kind()),
        ("unknown_app", AnswerKind::Failed)
    );

    let mut c = check();
    c.platform = Platform::Electron;
    assert_eq!(
        refused(&answer(&inputs(), &c)).refusal.code(),
        "disabled_platform_electron"
    );
}

#[test]
fn unreadable_native_versions_and_old_plugins_fail() {
    let mut c = check();
    c.version_build = "unknown".into();
    c.native_version = None;
    assert_eq!(
        refused(&answer(&inputs(), &c)).refusal,
        Refusal::UnknownVersionBuild
    );
    c.version_build = "one.two".into();
    assert_eq!(refused(&answer(&inputs(), &c)).refusal, Refusal::SemverError);

    let mut c = check();
    c.plugin_version = version("4.17.48");
    let no = refused(&answer(&inputs(), &c)).clone();
    assert_eq!(
        (no.refusal.code(), no.refusal.kind()),
        ("unsupported_plugin_version", AnswerKind::Failed)
    );
}

#[test]
fn channel_resolution_order() {
    let mut inputs = inputs();
    inputs.channels.push(channel(
        "qa",
        Some("shop-1.5.0"),
        json!({"deviceOverrides": [{"deviceId": DEVICE}]}),
    ));
    let snap = snapshot(&inputs);
    let mut c = check();
    c.default_channel = Some("beta".into());
    let facts = DeviceFacts {
        self_set_channel: Some("beta".into()),
        failed_versions: vec![],
    };
    // Pinned beats everything, and a private channel serves its pinned devices.
    assert_eq!(offered(&decide_update(&snap, &c, &facts)).channel, "qa");

    let other = "0c4f3f8e-5a0d-4d6e-8f7a-1b2c3d4e5f60";
    c.device_id = other.into();
    c.default_channel = None;
    // The server-side self-set channel beats the public one.
    assert_eq!(offered(&decide_update(&snap, &c, &facts)).channel, "beta");
    // The requested channel, when public or self-assignable.
    c.default_channel = Some("beta".into());
    assert_eq!(
        offered(&decide_update(&snap, &c, &DeviceFacts::default())).channel,
        "beta"
    );
    // The public channel when nothing is requested.
    c.default_channel = None;
    assert_eq!(
        offered(&decide_update(&snap, &c, &DeviceFacts::default())).channel,
        "production"
    );
    // A requested private channel matches nothing, and there is no fallback (as in Capgo).
    c.default_channel = Some("qa".into());
    assert_eq!(
        refused(&decide_update(&snap, &c, &DeviceFacts::default())).refusal,
        Refusal::NoChannel
    );
    c.default_channel = Some("nonexistent".into());
    assert_eq!(
        refused(&decide_update(&snap, &c, &DeviceFacts::default())).refusal,
        Refusal::NoChannel
    );
}

#[test]
fn a_requested_channel_must_serve_the_platform() {
    let mut inputs = inputs();
    inputs.channels[1] = channel(
        "beta",
        Some("shop-1.5.0-beta.1"),
        json!({"allowDeviceSelfSet": true, "android": false}),
    );
    let mut c = check();
    c.default_channel = Some("beta".into());
    assert_eq!(refused(&answer(&inputs, &c)).refusal, Refusal::NoChannel);
    c.platform = Platform::Ios;
    assert_eq!(offered(&answer(&inputs, &c)).channel, "beta");
}

#[test]
fn the_first_public_channel_by_name_serving_the_platform_wins_then_the_app_default() {
    let mut inputs = inputs();
    inputs.channels = vec![
        channel(
            "b-ios",
            Some("shop-1.4.2"),
            json!({"public": true, "android": false}),
        ),
        channel("c-android", Some("shop-1.5.0"), json!({"public": true})),
        channel("d-android", Some("shop-1.5.0-beta.1"), json!({"public": true})),
        channel(
            "a-private",
            Some("shop-1.4.2"),
            json!({"allowDeviceSelfSet": true}),
        ),
    ];
    assert_eq!(offered(&answer(&inputs, &check())).channel, "c-android");

    inputs.channels = vec![channel(
        "fallback",
        Some("shop-1.4.2"),
        json!({"allowDeviceSelfSet": true}),
    )];
    assert_eq!(refused(&answer(&inputs, &check())).refusal, Refusal::NoChannel);
    inputs.apps = vec![app("shop", APP_ID, json!({"defaultChannel": "fallback"}))];
    assert_eq!(offered(&answer(&inputs, &check())).channel, "fallback");
}

#[test]
fn a_private_app_default_channel_is_refused_unless_pinned() {
    let mut inputs = inputs();
    inputs.apps = vec![app("shop", APP_ID, json!({"defaultChannel": "internal"}))];
    inputs.channels = vec![channel("internal", Some("shop-1.4.2"), json!({}))];
    let no = refused(&answer(&inputs, &check())).clone();
    assert_eq!(
        (no.refusal.code(), no.refusal.kind()),
        ("cannot_update_via_private_channel", AnswerKind::Blocked)
    );
}

#[test]
fn a_channel_without_a_bundle_reverts_to_builtin() {
    let mut inputs = inputs();
    inputs.channels = vec![channel("production", None, json!({"public": true}))];
    assert_eq!(
        answer(&inputs, &check()),
        UpdateAnswer::RevertToBuiltin {
            channel: "production".into()
        }
    );

    let mut c = check();
    c.plugin_version = version("6.1.0");
    assert_eq!(
        refused(&answer(&inputs, &c)).refusal,
        Refusal::RevertToBuiltinPluginVersionTooOld
    );

    let mut c = check();
    c.on_builtin = true;
    c.version_name = c.version_build.clone();
    let no = refused(&answer(&inputs, &c)).clone();
    assert_eq!(
        (no.refusal.code(), no.refusal.kind()),
        ("already_on_builtin", AnswerKind::UpToDate)
    );
}

fn world_with(
    bundle_version: &str,
    channel_patch: serde_json::Value,
) -> crate::core::snapshot::SnapshotInputs {
    let mut inputs = inputs();
    let mut patch = json!({"public": true});
    merge(&mut patch, channel_patch);
    inputs.channels = vec![channel("production", Some("target"), patch)];
    inputs.bundles = vec![bundle("target", bundle_version, json!({}))];
    inputs
}

#[test]
fn disable_auto_update_major_blocks_a_higher_major_with_capgo_fields() {
    let no = refused(&answer(&world_with("2.0.0", json!({})), &check())).clone();
    assert_eq!(no.refusal.code(), "disable_auto_update_to_major");
    assert_eq!(no.refusal.kind(), AnswerKind::Blocked);
    assert!(no.major);
    assert_eq!(no.version.as_deref(), Some("2.0.0"));
    assert_eq!(no.old.as_deref(), Some("1.4.0"));
    // A higher minor passes the major rule.
    assert_eq!(
        offered(&answer(&world_with("1.9.0", json!({})), &check()))
            .bundle
            .version,
        "1.9.0"
    );
}

#[test]
fn disable_auto_update_minor_patch_and_none() {
    let c = check();
    let code = |v: &str, rule: &str| match answer(&world_with(v, json!({"disableAutoUpdate": rule})), &c) {
        UpdateAnswer::Offer(_) => "offered",
        UpdateAnswer::NoUpdate(no) => no.refusal.code(),
        UpdateAnswer::RevertToBuiltin { .. } => "builtin",
    };
    assert_eq!(code("1.4.9", "minor"), "offered");
    assert_eq!(code("1.5.0", "minor"), "disable_auto_update_to_minor");
    assert_eq!(code("2.4.0", "minor"), "disable_auto_update_to_minor");
    assert_eq!(
        code("1.4.0-hotfix.1", "patch"),
        "disable_auto_update_under_native"
    );
    assert_eq!(code("1.4.0+build.7", "patch"), "offered");
    assert_eq!(code("1.4.2", "patch"), "disable_auto_update_to_patch");
    assert_eq!(code("3.0.0", "none"), "offered");
}

#[test]
fn disable_auto_update_metadata_compares_min_update_version_with_native() {
    let c = check();
    let with_min = |min: &str| {
        world_with(
            "1.6.0",
            json!({"disableAutoUpdate": "metadata", "minUpdateVersion": min}),
        )
    };
    assert!(matches!(answer(&with_min("1.4.0"), &c), UpdateAnswer::Offer(_)));
    assert!(matches!(answer(&with_min("1.3.0"), &c), UpdateAnswer::Offer(_)));
    assert_eq!(
        refused(&answer(&with_min("1.5.0"), &c)).refusal,
        Refusal::DisableAutoUpdateToMetadata
    );
    // Nothing to compare with: Capgo's misconfigured_channel, a failure with version and old.
    for world in [
        with_min("not-a-version"),
        world_with("1.6.0", json!({"disableAutoUpdate": "metadata"})),
    ] {
        let answered = answer(&world, &c);
        let no = refused(&answered);
        assert_eq!(no.refusal, Refusal::MisconfiguredChannel);
        assert_eq!(
            (no.refusal.code(), no.refusal.kind()),
            ("misconfigured_channel", AnswerKind::Failed)
        );
        assert_eq!(no.version.as_deref(), Some("1.6.0"));
        assert!(no.old.is_some() && !no.major);
    }
}

#[test]
fn bundles_below_native_are_refused_unless_allowed() {
    assert_eq!(
        refused(&answer(&world_with("1.3.9", json!({})), &check())).refusal,
        Refusal::DisableAutoUpdateUnderNative
    );
    let allowed = world_with("1.3.9", json!({"disableAutoUpdateUnderNative": false}));
    assert_eq!(offered(&answer(&allowed, &check())).bundle.version, "1.3.9");
}

#[test]
fn device_kind_flags() {
    let code = |patch: serde_json::Value, prod: bool, emulator: bool| {
        let mut c = check();
        c.is_prod = prod;
        c.is_emulator = emulator;
        match answer(&world_with("1.4.5", patch), &c) {
            UpdateAnswer::Offer(_) => "offered",
            UpdateAnswer::NoUpdate(no) => no.refusal.code(),
            UpdateAnswer::RevertToBuiltin { .. } => "builtin",
        }
    };
    assert_eq!(
        code(json!({"allowProd": false}), true, false),
        "disable_prod_build"
    );
    assert_eq!(code(json!({"allowProd": false}), false, false), "offered");
    assert_eq!(
        code(json!({"allowDev": false}), false, false),
        "disable_dev_build"
    );
    assert_eq!(
        code(json!({"allowPhysicalDevice": false}), true, false),
        "disable_device"
    );
    assert_eq!(code(json!({"allowPhysicalDevice": false}), true, true), "offered");
    assert_eq!(
        code(json!({"allowEmulator": false}), true, true),
        "disable_emulator"
    );
    assert_eq!(code(json!({"android": false}), true, false), "no_channel");
}

#[test]
fn a_channel_reached_by_override_still_checks_its_platform_flag() {
    let mut inputs = world_with(
        "1.4.5",
        json!({"android": false, "deviceOverrides": [{"deviceId": DEVICE}]}),
    );
    inputs.channels[0].spec.public = false;
    assert_eq!(
        refused(&answer(&inputs, &check())).refusal,
        Refusal::DisabledPlatform(Platform::Android)
    );
}

#[test]
fn a_bundle_needing_a_newer_native_build_is_refused() {
    let mut inputs = world_with("1.5.0", json!({}));
    inputs.bundles = vec![bundle(
        "target",
        "1.5.0",
        json!({"native": {"minVersion": "1.5"}}),
    )];
    let no = refused(&answer(&inputs, &check())).clone();
    assert_eq!(
        (no.refusal.code(), no.old.as_deref()),
        ("native_version_too_old", Some("1.4.0"))
    );
    let mut c = check();
    c.version_build = "1.5.0".into();
    c.native_version = Some(version("1.5.0"));
    assert_eq!(offered(&answer(&inputs, &c)).bundle.version, "1.5.0");
}

#[test]
fn a_bundle_that_cannot_be_served_fails_clearly() {
    let mut inputs = inputs();
    inputs.bundles[0] = unsynced_bundle("shop-1.4.2", "1.4.2");
    let (snap, problems) = crate::core::snapshot::Snapshot::build(&inputs);
    assert!(
        problems.iter().any(|p| p.object == "Bundle/shop-ns/shop-1.4.2"),
        "{problems:?}"
    );
    let a = decide_update(&snap, &check(), &DeviceFacts::default());
    let no = refused(&a);
    assert_eq!(
        (no.refusal.code(), no.refusal.kind()),
        ("no_bundle", AnswerKind::Failed)
    );
    assert!(no.message.contains("not synced"), "{}", no.message);
}

fn rollout_world(percent: i32, phase: &str) -> crate::core::snapshot::SnapshotInputs {
    let mut inputs = inputs();
    inputs.rollouts = vec![rollout("to-1.5.0", "production", "shop-1.5.0", percent, phase)];
    inputs
}

fn device(i: u32) -> String {
    format!("{i:08x}-3b1c-4c55-9a7e-2d7f0c9b1a11")
}

#[test]
fn rollout_cohorts_get_the_candidate_and_everyone_else_the_stable_bundle() {
    let snap = snapshot(&rollout_world(25, "Progressing"));
    let mut candidate = 0;
    for i in 0..4_000 {
        let mut c = check();
        c.device_id = device(i);
        let offer = offered(&decide_update(&snap, &c, &DeviceFacts::default())).clone();
        let in_cohort = crate::core::cohort::in_cohort("uid-to-1.5.0", &c.device_id, 25);
        assert_eq!(offer.bundle.version == "1.5.0", in_cohort, "device {i}");
        assert_eq!(offer.rollout.is_some(), in_cohort);
        candidate += usize::from(in_cohort);
    }
    assert!((900..1_100).contains(&candidate), "{candidate} of 4000 at 25%");
}

#[test]
fn rollout_phases() {
    let count = |inputs| {
        let snap = snapshot(&inputs);
        (0..1_000)
            .filter(|&i| {
                let mut c = check();
                c.device_id = device(i);
                offered(&decide_update(&snap, &c, &DeviceFacts::default()))
                    .bundle
                    .version
                    == "1.5.0"
            })
            .count()
    };
    assert_eq!(count(rollout_world(0, "Progressing")), 0);
    assert_eq!(count(rollout_world(100, "Paused")), 1_000);
    assert_eq!(
        count(rollout_world(40, "Completed")),
        0,
        "a completed rollout is served through its Channel's promotion, not as a rollout"
    );
    assert_eq!(
        count(rollout_world(40, "Aborted")),
        0,
        "an aborted rollout serves stable to everyone"
    );
}

#[test]
fn a_rollout_whose_status_describes_another_candidate_is_not_served() {
    let mut inputs = rollout_world(100, "Progressing");
    inputs.rollouts[0].spec.bundle_ref = "shop-1.5.0-beta.1".into();
    assert_eq!(offered(&answer(&inputs, &check())).bundle.version, "1.4.2");
}

#[test]
fn a_device_that_failed_the_candidate_gets_stable_and_a_failed_stable_is_not_offered_again() {
    let snap = snapshot(&rollout_world(100, "Progressing"));
    let facts = DeviceFacts {
        self_set_channel: None,
        failed_versions: vec!["1.5.0".into()],
    };
    assert_eq!(
        offered(&decide_update(&snap, &check(), &facts)).bundle.version,
        "1.4.2"
    );

    let facts = DeviceFacts {
        self_set_channel: None,
        failed_versions: vec!["1.4.2".into()],
    };
    let plain = snapshot(&inputs());
    let a = decide_update(&plain, &check(), &facts);
    let no = refused(&a);
    assert_eq!(
        (no.refusal.code(), no.refusal.kind()),
        ("bundle_failed_on_device", AnswerKind::Blocked)
    );
}

#[test]
fn delta_manifests_and_checksums_follow_the_plugin_version() {
    let mut inputs = inputs();
    inputs
        .manifests
        .insert((NS.into(), "shop-1.4.2".into()), manifest_for("1.4.2"));
    let snap = snapshot(&inputs);
    for (plugin, manifest, checksum) in [
        ("5.9.0", false, ""),
        ("5.10.0", true, "sha"),
        ("6.24.0", false, ""),
        ("6.25.0", true, "sha"),
        ("7.0.34", false, ""),
        ("7.0.35", true, "sha"),
        ("7.33.0", true, "sha"),
        ("8.0.0", true, "sha"),
        ("8.51.14", true, "sha"),
    ] {
        let mut c = check();
        c.plugin_version = version(plugin);
        let a = decide_update(&snap, &c, &DeviceFacts::default());
        let offer = offered(&a);
        assert_eq!(offer.with_manifest, manifest, "{plugin}");
        let expected = if checksum.is_empty() {
            String::new()
        } else {
            sha("1.4.2")
        };
        assert_eq!(offer.checksum, expected, "{plugin}");
    }
}

#[test]
fn link_and_comment_only_when_exposed_and_supported() {
    let mut inputs = inputs();
    inputs.bundles[0] = bundle(
        "shop-1.4.2",
        "1.4.2",
        json!({"link": "https://example.com/notes", "comment": "Faster"}),
    );
    let mut c = check();
    assert!(
        !offered(&answer(&inputs, &c)).with_metadata,
        "not exposed by the App"
    );
    inputs.apps = vec![app("shop", APP_ID, json!({"exposeMetadata": true}))];
    assert!(offered(&answer(&inputs, &c)).with_metadata);
    c.plugin_version = version("8.34.0");
    assert!(!offered(&answer(&inputs, &c)).with_metadata);
    c.plugin_version = version("7.35.0");
    assert!(offered(&answer(&inputs, &c)).with_metadata);
}

const PUBLIC_KEY: &str = "-----BEGIN RSA PUBLIC KEY-----\nMIIBCgKCAQEApnI9VDgvMVyi/jKTHroKMuhf5y0Db650Fr6KKiJj0QXs4gag8Vq9\n-----END RSA PUBLIC KEY-----\n";

fn encrypted_world() -> crate::core::snapshot::SnapshotInputs {
    let mut inputs = inputs();
    inputs.apps = vec![app("shop", APP_ID, json!({"signing": {"publicKey": PUBLIC_KEY}}))];
    inputs.bundles[0] = bundle(
        "shop-1.4.2",
        "1.4.2",
        json!({"encryption": {"sessionKey": "aXY=:a2V5", "encryptedChecksum": "ab".repeat(256)}}),
    );
    inputs
}

#[test]
fn encrypted_bundles_send_the_encrypted_checksum_and_session_key() {
    let mut c = check();
    c.key_id = Some("MIIBCgKCAQEApnI9VDgv".into());
    let a = answer(&encrypted_world(), &c);
    let offer = offered(&a);
    assert_eq!(offer.checksum, "ab".repeat(256));
    assert_eq!(offer.session_key, "aXY=:a2V5");
}

#[test]
fn an_encrypted_bundle_with_stored_delta_files_is_offered_as_a_delta() {
    let mut c = check();
    c.key_id = Some("MIIBCgKCAQEApnI9VDgv".into());
    assert!(
        !offered(&answer(&encrypted_world(), &c)).with_manifest,
        "without delta files it is sent whole"
    );
    let mut world = encrypted_world();
    world
        .manifests
        .insert((NS.into(), "shop-1.4.2".into()), manifest_for("1.4.2"));
    let snap = snapshot(&world);
    let a = decide_update(&snap, &c, &DeviceFacts::default());
    let offer = offered(&a);
    assert!(offer.with_manifest);
    assert_eq!(
        offer.session_key, "aXY=:a2V5",
        "the files are opened with the session key"
    );
}

#[test]
fn key_ids_must_match_for_plugins_that_enforce_them() {
    let mut c = check();
    c.key_id = Some("MIIBCgKCAQEAzzzzzzzz".into());
    let no = refused(&answer(&encrypted_world(), &c)).clone();
    assert_eq!(
        (no.refusal.code(), no.refusal.kind()),
        ("key_id_mismatch", AnswerKind::Blocked)
    );
    // 8.2.0 to 8.40.7 sent 4-character key ids, and the mismatch was not enforced.
    c.plugin_version = version("8.40.7");
    assert!(matches!(answer(&encrypted_world(), &c), UpdateAnswer::Offer(_)));
    c.plugin_version = version("8.41.0");
    c.key_id = Some("MIIB".into());
    assert!(
        matches!(answer(&encrypted_world(), &c), UpdateAnswer::Offer(_)),
        "a 4-character prefix matches"
    );
}

#[test]
fn encryption_must_match_the_device() {
    // An encrypted bundle to a current plugin that sent no key id: it would unzip ciphertext.
    let no = refused(&answer(&encrypted_world(), &check())).clone();
    assert_eq!(no.refusal.code(), "encryption_mismatch");
    // A plain bundle to a device with a key: it would refuse the plain checksum.
    let mut c = check();
    c.key_id = Some("MIIBCgKCAQEApnI9VDgv".into());
    assert_eq!(
        refused(&answer(&inputs(), &c)).refusal.code(),
        "encryption_mismatch"
    );
}

#[test]
fn protected_channels_refuse_unsigned_bundles() {
    let mut inputs = inputs();
    inputs.channels[0] = channel(
        "production",
        Some("shop-1.4.2"),
        json!({"public": true, "requireSigned": true}),
    );
    // The snapshot already refuses the bundle (see core::snapshot), so the channel serves
    // nothing and the device is told why.
    let (snapshot, problems) = crate::core::snapshot::Snapshot::build(&inputs);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let answer = decide_update(&snapshot, &check(), &DeviceFacts::default());
    let no = refused(&answer).clone();
    assert_eq!(
        (no.refusal.code(), no.refusal.kind()),
        ("no_bundle", AnswerKind::Failed)
    );
    assert!(no.message.contains("SignatureRequired"), "{}", no.message);
}

#[test]
fn device_channel_resolves_as_the_update_check_does() {
    let mut inputs = inputs();
    inputs.channels.push(channel(
        "qa",
        Some("shop-1.5.0"),
        json!({"deviceOverrides": [{"deviceId": DEVICE}]}),
    ));
    let snap = snapshot(&inputs);
    let app = snap.app(APP_ID).expect("the app");
    let other = "0c4f3f8e-5a0d-4d6e-8f7a-1b2c3d4e5f60";
    let resolve =
        |device_id: &str, platform: Option<Platform>, requested: Option<&str>, facts: &DeviceFacts| {
            let device = DeviceChannelInputs {
                device_id,
                platform,
                default_channel: requested,
            };
            device_channel(app, &device, facts).map(|channel| channel.name.clone())
        };
    let self_set = DeviceFacts {
        self_set_channel: Some("beta".into()),
        failed_versions: vec![],
    };
    let none = DeviceFacts::default();
    let android = Some(Platform::Android);
    // Pinned > self-set > requested > public, as decide_update picks them.
    assert_eq!(
        resolve(DEVICE, android, Some("beta"), &self_set).as_deref(),
        Some("qa")
    );
    assert_eq!(resolve(other, android, None, &self_set).as_deref(), Some("beta"));
    assert_eq!(
        resolve(other, android, Some("beta"), &none).as_deref(),
        Some("beta")
    );
    assert_eq!(
        resolve(other, android, None, &none).as_deref(),
        Some("production")
    );
    assert_eq!(resolve(other, android, Some("qa"), &none), None);
    let mut c = check();
    c.device_id = other.into();
    for (requested, facts) in [(None, &self_set), (Some("beta"), &none), (None, &none)] {
        c.default_channel = requested.map(str::to_owned);
        assert_eq!(
            Some(offered(&decide_update(&snap, &c, facts)).channel.clone()),
            resolve(other, android, requested, facts)
        );
    }
    // A platform the server does not serve: only a pinned or self-set channel resolves.
    assert_eq!(resolve(DEVICE, None, None, &none).as_deref(), Some("qa"));
    assert_eq!(resolve(other, None, None, &self_set).as_deref(), Some("beta"));
    assert_eq!(resolve(other, None, Some("beta"), &none), None);
}
