use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::{deletion::*, status::*, sync_decision::*};
use crate::core::fixtures::{self, channel, merge, rollout, sha};
use crate::{
    api::{
        Bundle,
        bundle::{BundleStatus, BundleStorageLocation},
        constants::{condition, reason},
    },
    core::conditions::ConditionStatus,
    layout::{manifest_key, variant_manifest_key, zip_key},
};

/// A bundle as the controller stores it after a successful sync of generation 1.
fn synced(name: &str, version: &str, patch: serde_json::Value) -> Bundle {
    let mut value = json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle",
        "metadata": {"name": name, "namespace": fixtures::NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"appRef": "shop", "version": version,
                 "source": {"url": format!("https://ci.example.com/{version}.zip"), "sha256": sha(version)}},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": "Synced", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ],
            "checksum": sha(version), "zipSize": 1000, "uncompressedSize": 3000, "fileCount": 3,
            "storage": {"zipKey": format!("zips/{}.zip", sha(version)), "manifestKey": format!("manifests/{}.br.json", sha(version)), "compressedVariants": true}
        }
    });
    merge(&mut value, patch);
    serde_json::from_value(value).expect("a Bundle")
}

fn unsynced(name: &str, version: &str) -> Bundle {
    let mut bundle = synced(name, version, json!({}));
    bundle.status = None;
    bundle
}

fn with_status(bundle: &Bundle, plan: BundleStatusPlan) -> Bundle {
    let mut bundle = bundle.clone();
    bundle.status = Some(plan.into_status(Timestamp::from_second(1_000).expect("a time")));
    bundle
}

fn transient() -> SyncOutcome {
    SyncOutcome::Failed(SyncFailure {
        terminal: false,
        reason: reason::SOURCE_UNAVAILABLE,
        message: "bundle source unavailable: HTTP 503".into(),
    })
}

fn terminal() -> SyncOutcome {
    // What bundle sync reports for a `SyncError::ChecksumMismatch`.
    SyncOutcome::Failed(SyncFailure {
        terminal: true,
        reason: reason::CHECKSUM_MISMATCH,
        message: format!(
            "checksum mismatch: expected sha256 {}, got {}",
            sha("a"),
            sha("b")
        ),
    })
}

fn facts(version: &str) -> SyncFacts {
    SyncFacts {
        sha256: sha(version),
        zip_size: 1000,
        uncompressed_size: Some(3000),
        file_count: Some(3),
        zip_key: zip_key(&sha(version)),
        manifest_key: Some(manifest_key(&sha(version))),
        compressed_variants: false,
    }
}

fn condition<'a>(
    status: &'a BundleStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status.conditions.iter().find(|c| c.type_ == type_).expect(type_)
}

// ---- sync_decision -------------------------------------------------------------------

#[test]
fn a_bundle_without_status_is_synced() {
    assert_eq!(
        sync_decision(&unsynced("b", "1.0.0"), None, 0),
        SyncDecision::Sync(SyncCause::NeverSynced)
    );
}

#[test]
fn a_synced_bundle_of_this_generation_is_up_to_date() {
    assert_eq!(
        sync_decision(&synced("b", "1.0.0", json!({})), None, 0),
        SyncDecision::UpToDate
    );
}

#[test]
fn a_new_generation_with_the_same_content_only_records_the_generation() {
    let bundle = synced(
        "b",
        "1.0.0",
        json!({"metadata": {"generation": 2}, "spec": {"comment": "new notes"}}),
    );
    assert_eq!(sync_decision(&bundle, None, 0), SyncDecision::RecordGeneration);
    let plan = bundle_status_after_sync(&bundle, &SyncOutcome::AlreadyStored, None, 0);
    let status = plan.into_status(Timestamp::from_second(5).expect("a time"));
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.checksum, Some(sha("1.0.0")));
    assert_eq!(condition(&status, condition::SYNCED).status, "True");
    assert_eq!(condition(&status, condition::SYNCED).observed_generation, Some(2));
    assert_eq!(
        sync_decision(
            &with_status(
                &bundle,
                bundle_status_after_sync(&bundle, &SyncOutcome::AlreadyStored, None, 0)
            ),
            None,
            0
        ),
        SyncDecision::UpToDate
    );
}

#[test]
fn a_new_generation_that_turns_on_encryption_syncs_again() {
    let bundle = synced(
        "b",
        "1.0.0",
        json!({"metadata": {"generation": 2},
               "spec": {"encryption": {"sessionKey": "aXY=:a2V5", "encryptedChecksum": "00ff00ff00ff00ff"}}}),
    );
    assert_eq!(
        sync_decision(&bundle, None, 0),
        SyncDecision::Sync(SyncCause::NewGeneration)
    );
}

#[test]
fn a_synced_status_for_other_content_syncs_again() {
    let mut bundle = synced("b", "1.0.0", json!({}));
    bundle.status.as_mut().expect("status").checksum = Some(sha("other"));
    assert_eq!(
        sync_decision(&bundle, None, 0),
        SyncDecision::Sync(SyncCause::StatusMismatch)
    );
    let mut no_keys = synced("b", "1.0.0", json!({}));
    no_keys.status.as_mut().expect("status").storage = None;
    assert_eq!(
        sync_decision(&no_keys, None, 0),
        SyncDecision::Sync(SyncCause::StatusMismatch)
    );
}

#[test]
fn a_transient_failure_waits_for_its_retry_time_then_syncs() {
    let bundle = unsynced("b", "1.0.0");
    let plan = bundle_status_after_sync(&bundle, &transient(), None, 10_000);
    let retry = plan.retry.clone().expect("a retry");
    assert_eq!(retry.attempts, 1);
    assert_eq!(retry.retry_at_ms, 10_000 + retry_delay_ms("uid-b", 1) as i64);
    let failed = with_status(&bundle, plan);
    assert_eq!(
        sync_decision(&failed, Some(&retry), 10_001),
        SyncDecision::RetryAt {
            retry_at_ms: retry.retry_at_ms
        }
    );
    assert_eq!(
        sync_decision(&failed, Some(&retry), retry.retry_at_ms),
        SyncDecision::Sync(SyncCause::RetryDue)
    );
    // Forgotten (a restart): retry at once.
    assert_eq!(
        sync_decision(&failed, None, 10_001),
        SyncDecision::Sync(SyncCause::RetryDue)
    );
    // Remembered for an older generation: the new one syncs at once.
    let mut changed = failed.clone();
    changed.metadata.generation = Some(2);
    assert_eq!(
        sync_decision(&changed, Some(&retry), 10_001),
        SyncDecision::Sync(SyncCause::NewGeneration)
    );
    let stale = RetryState {
        generation: Some(0),
        ..retry
    };
    assert_eq!(
        sync_decision(&failed, Some(&stale), 10_001),
        SyncDecision::Sync(SyncCause::RetryDue)
    );
}

#[test]
fn attempts_count_up_and_the_delay_grows() {
    let bundle = unsynced("b", "1.0.0");
    let mut retry = None;
    let mut delays = Vec::new();
    for attempt in 1..=10u32 {
        let plan = bundle_status_after_sync(&bundle, &transient(), retry.as_ref(), 0);
        let next = plan.retry.expect("a retry");
        assert_eq!(next.attempts, attempt);
        delays.push(next.retry_at_ms);
        retry = Some(next);
    }
    assert!(delays.windows(2).take(5).all(|w| w[0] < w[1]), "{delays:?}");
    let cap = (RETRY_CAP_MS * (100 + RETRY_JITTER_PERCENT) / 100) as i64;
    assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
    // A success forgets the failures.
    let plan = bundle_status_after_sync(&bundle, &SyncOutcome::Synced(facts("1.0.0")), retry.as_ref(), 0);
    assert_eq!(plan.retry, None);
}

#[test]
fn the_backoff_doubles_to_its_cap_with_bounded_deterministic_jitter() {
    assert_eq!(nominal_retry_delay_ms(1), 5_000);
    assert_eq!(nominal_retry_delay_ms(2), 10_000);
    assert_eq!(nominal_retry_delay_ms(3), 20_000);
    assert_eq!(nominal_retry_delay_ms(7), RETRY_CAP_MS);
    assert_eq!(nominal_retry_delay_ms(u32::MAX), RETRY_CAP_MS);
    assert_eq!(nominal_retry_delay_ms(0), RETRY_BASE_MS);
    let mut distinct = BTreeSet::new();
    for uid in 0..200 {
        let uid = format!("uid-{uid}");
        for attempt in 1..=8 {
            let delay = retry_delay_ms(&uid, attempt);
            let nominal = nominal_retry_delay_ms(attempt);
            assert!(delay >= nominal * 80 / 100 && delay <= nominal * 120 / 100);
            assert_eq!(delay, retry_delay_ms(&uid, attempt), "deterministic");
        }
        distinct.insert(retry_delay_ms(&uid, 1));
    }
    // Bundles failing together spread out.
    assert!(distinct.len() > 20, "{distinct:?}");
}

#[test]
fn a_missing_app_or_unusable_storage_is_checked_again_at_each_look() {
    let bundle = unsynced("b", "1.0.0");
    for (reason, recheck) in [
        (reason::REFERENCE_NOT_FOUND, true),
        (reason::REFERENCE_NOT_READY, true),
        (reason::INVALID_SPEC, false),
    ] {
        let failure = SyncOutcome::Failed(SyncFailure {
            terminal: true,
            reason,
            message: "the App's storage cannot be used".to_owned(),
        });
        let stalled = with_status(&bundle, bundle_status_after_sync(&bundle, &failure, None, 0));
        let expected = match recheck {
            true => SyncDecision::Sync(SyncCause::ReferenceRecheck),
            false => SyncDecision::AwaitChange {
                reason: reason.to_owned(),
            },
        };
        assert_eq!(sync_decision(&stalled, None, 0), expected, "{reason}");
    }
}

#[test]
fn a_terminal_failure_stalls_warns_and_waits_for_a_spec_change() {
    let bundle = unsynced("b", "1.0.0");
    let plan = bundle_status_after_sync(&bundle, &terminal(), None, 0);
    assert_eq!(plan.retry, None);
    let warning = plan.warning.clone().expect("a warning");
    assert_eq!(warning.reason, reason::CHECKSUM_MISMATCH);
    assert!(warning.note.contains("checksum mismatch"), "{}", warning.note);
    let failed = with_status(&bundle, plan);
    let status = failed.status.as_ref().expect("status");
    assert_eq!(condition(status, condition::STALLED).status, "True");
    assert_eq!(
        condition(status, condition::STALLED).reason,
        reason::CHECKSUM_MISMATCH
    );
    assert_eq!(condition(status, condition::READY).status, "False");
    assert_eq!(condition(status, condition::RECONCILING).status, "False");
    assert_eq!(condition(status, condition::SYNCED).status, "False");
    assert!(status.checksum.is_none() && status.storage.is_none());
    assert_eq!(
        sync_decision(&failed, None, i64::MAX),
        SyncDecision::AwaitChange {
            reason: reason::CHECKSUM_MISMATCH.into()
        }
    );
    let mut changed = failed;
    changed.metadata.generation = Some(2);
    assert_eq!(
        sync_decision(&changed, None, 0),
        SyncDecision::Sync(SyncCause::NewGeneration)
    );
}

#[test]
fn a_hostile_zip_is_terminal_too() {
    // What bundle sync reports for a `SyncError::InvalidArchive`.
    let outcome = SyncOutcome::Failed(SyncFailure {
        terminal: true,
        reason: reason::INVALID_ARCHIVE,
        message: "invalid archive: entry ../x escapes the bundle".into(),
    });
    let plan = bundle_status_after_sync(&unsynced("b", "1.0.0"), &outcome, None, 0);
    assert_eq!(plan.warning.expect("a warning").reason, reason::INVALID_ARCHIVE);
    let status = plan.status.clone();
    assert!(status.checksum.is_none());
    assert!(plan.conditions.iter().any(|c| c.type_ == condition::STALLED
        && c.status == ConditionStatus::True
        && c.message.contains("../x")));
}

#[test]
fn a_transient_failure_is_reconciling_not_stalled() {
    let plan = bundle_status_after_sync(&unsynced("b", "1.0.0"), &transient(), None, 0);
    assert_eq!(plan.warning, None);
    let status = plan.into_status(Timestamp::from_second(1).expect("a time"));
    assert_eq!(condition(&status, condition::RECONCILING).status, "True");
    assert_eq!(
        condition(&status, condition::RECONCILING).reason,
        reason::PROGRESSING_WITH_RETRY
    );
    assert_eq!(condition(&status, condition::STALLED).status, "False");
    assert_eq!(
        condition(&status, condition::READY).reason,
        reason::SOURCE_UNAVAILABLE
    );
    let synced = condition(&status, condition::SYNCED);
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", reason::SOURCE_UNAVAILABLE)
    );
    assert!(synced.message.contains("HTTP 503") && synced.message.contains("attempt 1"));
}

#[test]
fn success_records_every_field_and_ready() {
    let bundle = unsynced("b", "1.0.0");
    let plan = bundle_status_after_sync(&bundle, &SyncOutcome::Synced(facts("1.0.0")), None, 0);
    let status = plan.into_status(Timestamp::from_second(1).expect("a time"));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.checksum, Some(sha("1.0.0")));
    assert_eq!(
        (status.zip_size, status.uncompressed_size, status.file_count),
        (Some(1000), Some(3000), Some(3))
    );
    assert_eq!(
        status.storage,
        Some(BundleStorageLocation {
            zip_key: zip_key(&sha("1.0.0")),
            manifest_key: Some(manifest_key(&sha("1.0.0"))),
            compressed_variants: false,
        })
    );
    for (type_, want) in [
        (condition::READY, "True"),
        (condition::SYNCED, "True"),
        (condition::RECONCILING, "False"),
        (condition::STALLED, "False"),
    ] {
        assert_eq!(condition(&status, type_).status, want, "{type_}");
    }
    // Served now with raw files; the Brotli variants come next.
    let mut synced = bundle.clone();
    synced.status = Some(status.clone());
    assert_eq!(sync_decision(&synced, None, 0), SyncDecision::CompressVariants);
    let mut done = bundle.clone();
    done.status = Some(status_with_variants(
        &status,
        &variant_manifest_key(&sha("1.0.0")),
    ));
    let storage = done
        .status
        .as_ref()
        .and_then(|s| s.storage.as_ref())
        .expect("storage");
    assert!(storage.compressed_variants);
    assert_eq!(storage.manifest_key, Some(variant_manifest_key(&sha("1.0.0"))));
    assert_eq!(
        done.status.as_ref().map(|s| &s.conditions),
        synced.status.as_ref().map(|s| &s.conditions),
        "the conditions do not change"
    );
    assert_eq!(sync_decision(&done, None, 0), SyncDecision::UpToDate);
    // A status that claims the variants with the first step's manifest describes no sync.
    let mut confused = done.clone();
    if let Some(storage) = confused.status.as_mut().and_then(|s| s.storage.as_mut()) {
        storage.manifest_key = Some(manifest_key(&sha("1.0.0")));
    }
    assert_eq!(
        sync_decision(&confused, None, 0),
        SyncDecision::Sync(SyncCause::StatusMismatch)
    );
    // A new generation with the same bytes keeps the variants (nothing is fetched again).
    let mut relabeled = done.clone();
    relabeled.metadata.generation = Some(2);
    assert_eq!(sync_decision(&relabeled, None, 0), SyncDecision::RecordGeneration);
    let kept = with_status(
        &relabeled,
        bundle_status_after_sync(&relabeled, &SyncOutcome::AlreadyStored, None, 0),
    );
    assert_eq!(sync_decision(&kept, None, 0), SyncDecision::UpToDate);
}

#[test]
fn an_encrypted_success_has_no_manifest_and_no_file_figures() {
    let bundle = unsynced("b", "1.0.0");
    let bundle = Bundle {
        spec: crate::api::BundleSpec {
            encryption: Some(crate::api::bundle::BundleEncryption {
                session_key: "aXY=:a2V5".into(),
                encrypted_checksum: "00ff00ff00ff00ff".into(),
            }),
            ..bundle.spec.clone()
        },
        ..bundle
    };
    let facts = SyncFacts {
        uncompressed_size: None,
        file_count: None,
        manifest_key: None,
        ..facts("1.0.0")
    };
    let plan = bundle_status_after_sync(&bundle, &SyncOutcome::Synced(facts), None, 0);
    assert!(plan.conditions.iter().any(|c| c.message.contains("encrypted")));
    let done = with_status(&bundle, plan);
    let status = done.status.as_ref().expect("status");
    assert_eq!((status.uncompressed_size, status.file_count), (None, None));
    assert_eq!(status.storage.as_ref().expect("storage").manifest_key, None);
    assert_eq!(sync_decision(&done, None, 0), SyncDecision::UpToDate);
}

#[test]
fn an_encrypted_bundles_delta_files_are_counted_in_its_status() {
    // Encrypted with its delta files stored: the manifest and the file count, no size.
    let with_delta = SyncFacts {
        sha256: sha("x"),
        zip_size: 10,
        uncompressed_size: None,
        file_count: Some(2),
        zip_key: zip_key(&sha("x")),
        manifest_key: Some(manifest_key(&sha("x"))),
        compressed_variants: false,
    };
    let plan = synced_plan(BundleStatus::default(), &with_delta);
    assert!(
        plan.conditions[0].message.contains("2 encrypted delta files"),
        "{}",
        plan.conditions[0].message
    );
}

#[test]
fn already_stored_without_a_recorded_sync_is_a_transient_failure() {
    let plan = bundle_status_after_sync(&unsynced("b", "1.0.0"), &SyncOutcome::AlreadyStored, None, 0);
    assert!(plan.retry.is_some());
    assert!(plan.warning.is_none());
}

// ---- deletion_decision ---------------------------------------------------------------

fn files(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("files/{}", sha(n))).collect()
}

fn keys_of(decision: DeletionDecision) -> Vec<String> {
    match decision {
        DeletionDecision::Remove { keys } => keys,
        other => panic!("expected Remove, got {other:?}"),
    }
}

#[test]
fn an_unused_bundle_removes_its_zip_manifest_and_only_its_own_files() {
    let old = synced("old", "1.0.0", json!({}));
    let new = synced("new", "1.1.0", json!({}));
    let old_files = files(&["index", "vendor", "old-app"]);
    let mut new_files = files(&["index", "vendor", "new-app"]);
    new_files.push(format!("files/{}.br", sha("old-app"))); // another form of the same content
    let decision = deletion_decision(
        StoredBundle {
            bundle: &old,
            file_keys: Some(&old_files),
        },
        &[StoredBundle {
            bundle: &new,
            file_keys: Some(&new_files),
        }],
        &[channel("production", Some("new"), json!({}))],
        &[],
    );
    assert_eq!(decision.conditions(), None);
    // The bundle's manifest goes with its variant manifest; old-app's raw form stays, since
    // the other bundle lists its Brotli form (the two forms go together).
    let mut want = vec![
        zip_key(&sha("1.0.0")),
        manifest_key(&sha("1.0.0")),
        variant_manifest_key(&sha("1.0.0")),
    ];
    want.sort();
    assert_eq!(keys_of(decision), want);
    // Without that sibling, both forms of its files go.
    let keys = keys_of(deletion_decision(
        StoredBundle {
            bundle: &old,
            file_keys: Some(&old_files),
        },
        &[],
        &[],
        &[],
    ));
    assert!(keys.contains(&format!("files/{}", sha("old-app"))));
    assert!(keys.contains(&format!("files/{}.br", sha("old-app"))));
}

#[test]
fn a_file_a_sibling_lists_in_one_form_is_kept_in_both() {
    let old = synced("old", "1.0.0", json!({}));
    let new = synced("new", "2.0.0", json!({}));
    // The old bundle's variants are done (it lists the `.br` form); the new one's are not
    // yet (it lists the raw form, and its second step may be about to use the variant).
    let old_files = vec![format!("files/{}.br", sha("shared"))];
    let new_files = vec![format!("files/{}", sha("shared"))];
    let keys = keys_of(deletion_decision(
        StoredBundle {
            bundle: &old,
            file_keys: Some(&old_files),
        },
        &[StoredBundle {
            bundle: &new,
            file_keys: Some(&new_files),
        }],
        &[],
        &[],
    ));
    assert!(keys.iter().all(|key| !key.starts_with("files/")), "{keys:?}");
}

#[test]
fn a_bundle_a_channel_uses_is_held() {
    let bundle = synced("b", "1.0.0", json!({}));
    let own = files(&["index"]);
    let decision = deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: Some(&own),
        },
        &[],
        &[
            channel("production", Some("b"), json!({})),
            channel("beta", Some("other"), json!({})),
        ],
        &[],
    );
    let DeletionDecision::Hold { users, message } = &decision else {
        panic!("expected Hold, got {decision:?}")
    };
    assert_eq!(users, &["Channel/production"]);
    assert!(message.contains("Channel/production"), "{message}");
    let conditions = decision.conditions().expect("conditions");
    assert_eq!(conditions[0].type_, condition::RECONCILING);
    assert_eq!(conditions[0].reason, reason::IN_USE);
}

#[test]
fn a_channel_still_serving_it_by_status_holds_it() {
    let bundle = synced("b", "1.0.0", json!({}));
    let mut moved = channel("production", Some("next"), json!({}));
    moved.status = Some(crate::api::ChannelStatus {
        stable: Some(crate::api::channel::ServedBundle {
            bundle: Some("b".into()),
            version: "1.0.0".into(),
        }),
        ..Default::default()
    });
    let decision = deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: None,
        },
        &[],
        &[moved],
        &[],
    );
    assert!(matches!(decision, DeletionDecision::Hold { .. }), "{decision:?}");
}

#[test]
fn a_bundle_recorded_as_a_channels_promoted_stable_is_held() {
    let bundle = synced("b", "1.0.0", json!({}));
    let mut promoted_on = channel("production", Some("old"), json!({}));
    promoted_on.status = Some(crate::api::ChannelStatus {
        promoted: Some(crate::api::channel::PromotedBundle {
            bundle: "b".into(),
            over_bundle_ref: Some("old".into()),
            rollout: "ro".into(),
        }),
        ..Default::default()
    });
    let stored = StoredBundle {
        bundle: &bundle,
        file_keys: None,
    };
    let DeletionDecision::Hold { users, .. } = deletion_decision(stored, &[], &[promoted_on], &[]) else {
        panic!("expected Hold")
    };
    assert_eq!(users, ["Channel/production"]);
}

#[test]
fn a_bundle_a_rollout_uses_is_held_as_candidate_or_stable() {
    let bundle = synced("b", "1.0.0", json!({}));
    let stored = StoredBundle {
        bundle: &bundle,
        file_keys: None,
    };
    let candidate = rollout("ro", "production", "b", 10, "Progressing");
    let DeletionDecision::Hold { users, .. } = deletion_decision(stored, &[], &[], &[candidate]) else {
        panic!("expected Hold")
    };
    assert_eq!(users, ["Rollout/ro"]);
    let mut from = rollout("ro2", "production", "next", 10, "Aborted");
    from.status.as_mut().expect("status").stable_bundle = Some("b".into());
    let decision = deletion_decision(stored, &[], &[], &[from]);
    assert!(matches!(decision, DeletionDecision::Hold { .. }), "{decision:?}");
    // A rollout of another namespace does not count.
    let mut elsewhere = rollout("ro3", "production", "b", 10, "Progressing");
    elsewhere.metadata.namespace = Some("other-ns".into());
    assert!(matches!(
        deletion_decision(stored, &[], &[], &[elsewhere]),
        DeletionDecision::Remove { .. }
    ));
}

#[test]
fn an_encrypted_bundle_removes_only_its_zip() {
    let bundle = synced(
        "enc",
        "2.0.0",
        json!({"spec": {"encryption": {"sessionKey": "aXY=:a2V5", "encryptedChecksum": "00ff00ff00ff00ff"}},
               "status": {"storage": {"manifestKey": null}}}),
    );
    let other = synced("plain", "1.0.0", json!({}));
    let other_files = files(&["index"]);
    let decision = deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: None,
        },
        &[StoredBundle {
            bundle: &other,
            file_keys: Some(&other_files),
        }],
        &[],
        &[],
    );
    // The manifest key is listed too: removing a missing key is a no-op, and it clears one
    // left by an earlier unencrypted sync of the same zip.
    assert_eq!(
        keys_of(decision),
        [
            variant_manifest_key(&sha("2.0.0")),
            manifest_key(&sha("2.0.0")),
            zip_key(&sha("2.0.0"))
        ]
    );
}

#[test]
fn two_bundles_of_the_same_zip_share_everything() {
    let first = synced("a", "1.0.0", json!({}));
    let mut twin = synced("twin", "1.0.0", json!({}));
    twin.spec.version = "1.0.1".into(); // same bytes, another version
    let own = files(&["index"]);
    let decision = deletion_decision(
        StoredBundle {
            bundle: &first,
            file_keys: Some(&own),
        },
        &[StoredBundle {
            bundle: &twin,
            file_keys: Some(&own),
        }],
        &[],
        &[],
    );
    assert_eq!(keys_of(decision), Vec::<String>::new());
}

#[test]
fn a_source_manifest_key_of_another_bundle_is_kept() {
    let bundle = synced("a", "1.0.0", json!({}));
    let mut reader = unsynced("reader", "3.0.0");
    reader.spec.source.url = None;
    reader.spec.source.manifest_key = Some(manifest_key(&sha("1.0.0")));
    let keys = keys_of(deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: None,
        },
        &[StoredBundle {
            bundle: &reader,
            file_keys: None,
        }],
        &[],
        &[],
    ));
    assert_eq!(
        keys,
        [variant_manifest_key(&sha("1.0.0")), zip_key(&sha("1.0.0"))]
    );
}

#[test]
fn a_source_storage_key_of_another_bundle_is_kept() {
    let bundle = synced("a", "1.0.0", json!({}));
    let reader = unsynced("reader", "3.0.0");
    let mut reader = reader;
    reader.spec.source.url = None;
    reader.spec.source.storage_key = Some(zip_key(&sha("1.0.0")));
    reader.spec.encryption = Some(crate::api::bundle::BundleEncryption {
        session_key: "aXY=:a2V5".into(),
        encrypted_checksum: "00ff00ff00ff00ff".into(),
    });
    let keys = keys_of(deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: None,
        },
        &[StoredBundle {
            bundle: &reader,
            file_keys: None,
        }],
        &[],
        &[],
    ));
    assert_eq!(
        keys,
        [variant_manifest_key(&sha("1.0.0")), manifest_key(&sha("1.0.0"))]
    );
}

#[test]
fn a_sibling_mid_sync_without_a_manifest_makes_the_deletion_wait() {
    let bundle = synced("a", "1.0.0", json!({}));
    let syncing = unsynced("syncing", "1.1.0");
    let own = files(&["index", "a"]);
    let decision = deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: Some(&own),
        },
        &[StoredBundle {
            bundle: &syncing,
            file_keys: None,
        }],
        &[],
        &[],
    );
    let DeletionDecision::WaitForSync { bundles, message } = &decision else {
        panic!("expected WaitForSync, got {decision:?}")
    };
    assert_eq!(bundles, &["syncing"]);
    assert!(message.contains("Bundle/syncing"), "{message}");
    assert_eq!(
        decision.conditions().expect("conditions")[0].reason,
        reason::WAITING_FOR_SYNC
    );
    // Once it has a manifest, its files are known and the deletion proceeds.
    let theirs = files(&["index"]);
    let keys = keys_of(deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: Some(&own),
        },
        &[StoredBundle {
            bundle: &syncing,
            file_keys: Some(&theirs),
        }],
        &[],
        &[],
    ));
    assert!(keys.contains(&format!("files/{}", sha("a"))));
    assert!(!keys.contains(&format!("files/{}", sha("index"))));
}

#[test]
fn settled_siblings_without_a_manifest_do_not_make_it_wait() {
    let bundle = synced("a", "1.0.0", json!({}));
    let own = files(&["index"]);
    let stalled = with_status(
        &unsynced("broken", "1.1.0"),
        bundle_status_after_sync(&unsynced("broken", "1.1.0"), &terminal(), None, 0),
    );
    let encrypted_syncing = {
        let mut b = unsynced("enc", "1.2.0");
        b.spec.encryption = Some(crate::api::bundle::BundleEncryption {
            session_key: "aXY=:a2V5".into(),
            encrypted_checksum: "00ff00ff00ff00ff".into(),
        });
        b
    };
    let keys = keys_of(deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: Some(&own),
        },
        &[
            StoredBundle {
                bundle: &stalled,
                file_keys: None,
            },
            StoredBundle {
                bundle: &encrypted_syncing,
                file_keys: None,
            },
        ],
        &[],
        &[],
    ));
    assert!(keys.contains(&format!("files/{}", sha("index"))));
    // A bundle with no files of its own never waits.
    let decision = deletion_decision(
        StoredBundle {
            bundle: &bundle,
            file_keys: None,
        },
        &[StoredBundle {
            bundle: &unsynced("syncing", "1.3.0"),
            file_keys: None,
        }],
        &[],
        &[],
    );
    assert!(
        matches!(decision, DeletionDecision::Remove { .. }),
        "{decision:?}"
    );
}

#[test]
fn a_sibling_being_deleted_protects_its_files_only_while_it_is_used() {
    let bundle = synced("a", "1.0.0", json!({}));
    let going = synced(
        "going",
        "1.1.0",
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    let shared = files(&["index"]);
    let stored = [StoredBundle {
        bundle: &going,
        file_keys: Some(&shared),
    }];
    let me = StoredBundle {
        bundle: &bundle,
        file_keys: Some(&shared),
    };
    let keys = keys_of(deletion_decision(me, &stored, &[], &[]));
    assert!(keys.contains(&shared[0]), "both are going: the shared file goes");
    let keys = keys_of(deletion_decision(
        me,
        &stored,
        &[channel("production", Some("going"), json!({}))],
        &[],
    ));
    assert!(
        !keys.contains(&shared[0]),
        "the other is held: the shared file stays"
    );
}

#[test]
fn the_deleted_bundle_itself_in_the_sibling_list_is_ignored_and_foreign_keys_are_never_removed() {
    let bundle = synced("a", "1.0.0", json!({}));
    let own = vec![
        format!("files/{}", sha("index")),
        "../escape".to_owned(),
        "zips/other.zip".to_owned(),
        "files/not-a-hash".to_owned(),
    ];
    let me = StoredBundle {
        bundle: &bundle,
        file_keys: Some(&own),
    };
    let keys = keys_of(deletion_decision(me, &[me], &[], &[]));
    let mut want = vec![
        zip_key(&sha("1.0.0")),
        manifest_key(&sha("1.0.0")),
        variant_manifest_key(&sha("1.0.0")),
        format!("files/{}", sha("index")),
        format!("files/{}.br", sha("index")),
    ];
    want.sort();
    assert_eq!(keys, want);
}
