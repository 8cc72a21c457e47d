//! A Channel's status as a pure decision: are its references sound, and what does it serve.
//!
//! The rules follow what the [snapshot](crate::core::snapshot) serves, so the status tells what
//! devices get: a missing App or Bundle, a Bundle of another App, or a bundle refused by a
//! protected channel (as the snapshot reports it) leaves the channel serving nothing and is
//! Stalled; a Bundle not synced yet is Reconciling; the candidate is that of the first Rollout (by
//! name) in progress on the channel whose candidate can be served.

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{
        App, Bundle, Channel, ChannelStatus, Rollout,
        channel::{CandidateBundle, HistoryEntry, ServedBundle},
        constants::{condition, reason},
        rollout::RolloutPhase,
    },
    core::{
        bundle_lifecycle::WarningEvent,
        channel_history,
        conditions::{
            DesiredCondition, merge_conditions, ready_set, reconciling_set, stalled_set, status_of,
        },
        snapshot::Problem,
    },
};

/// The version a channel reports when it serves the assets built into the app binary.
pub const BUILTIN_VERSION: &str = "builtin";

/// What a Channel's status should say.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStatusPlan {
    /// The bundle served outside a rollout's cohort (`None`: nothing can be served).
    pub stable: Option<ServedBundle>,
    /// The candidate of a Rollout in progress and its percent.
    pub candidate: Option<CandidateBundle>,
    /// Ready, Reconciling and Stalled.
    pub conditions: Vec<DesiredCondition>,
    /// When Stalled: the Warning event to publish.
    pub warning: Option<WarningEvent>,
    /// The Bundles the channel has served as its stable bundle, the one it serves now included
    /// ([`channel_history::record`]).
    pub history: Vec<HistoryEntry>,
}

/// The status `channel` should have under `plan` (pure): the plan's conditions merged into the
/// stored ones (timestamps move only on a flip), for the current generation.
pub fn desired_status(channel: &Channel, plan: &ChannelStatusPlan, now: Timestamp) -> ChannelStatus {
    let existing = channel.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let generation = channel.metadata.generation;
    ChannelStatus {
        conditions: merge_conditions(existing, &plan.conditions, generation, now),
        observed_generation: generation,
        stable: plan.stable.clone(),
        candidate: plan.candidate.clone(),
        // Owned by the Rollout reconciler's field manager: kept as it is, never applied here.
        promoted: channel.promotion().cloned(),
        history: plan.history.clone(),
    }
}

/// Why the stable bundle cannot be served.
struct Refusal {
    reason: &'static str,
    message: String,
    /// Stalled (waits for a change), rather than Reconciling (waits for a sync).
    stalled: bool,
}

fn name_of(meta: &kube::api::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// The status of `channel`, from the objects of its namespace (objects of other namespaces are
/// ignored) and the problems the snapshot reported.
pub fn channel_status(
    channel: &Channel,
    apps: &[App],
    bundles: &[Bundle],
    rollouts: &[Rollout],
    problems: &[Problem],
) -> ChannelStatusPlan {
    let history = channel
        .status
        .as_ref()
        .map_or(&[][..], |status| &status.history[..]);
    let plan = plan_without_history(channel, apps, bundles, rollouts, problems);
    // Only a bundle the channel can serve becomes part of its history.
    let history = match &plan.stable {
        Some(stable) => channel_history::record(history, stable),
        None => history.to_vec(),
    };
    ChannelStatusPlan { history, ..plan }
}

fn plan_without_history(
    channel: &Channel,
    apps: &[App],
    bundles: &[Bundle],
    rollouts: &[Rollout],
    problems: &[Problem],
) -> ChannelStatusPlan {
    let namespace = channel.metadata.namespace.as_deref();
    let name = name_of(&channel.metadata);
    let app_ref = channel.spec.app_ref.as_str();
    let in_namespace = |meta: &kube::api::ObjectMeta| meta.namespace.as_deref() == namespace;

    if !apps
        .iter()
        .any(|app| in_namespace(&app.metadata) && name_of(&app.metadata) == app_ref)
    {
        return refused(Refusal {
            reason: reason::REFERENCE_NOT_FOUND,
            message: format!("App {app_ref} does not exist"),
            stalled: true,
        });
    }
    let find_bundle = |bundle: &str| {
        bundles
            .iter()
            .find(|b| in_namespace(&b.metadata) && name_of(&b.metadata) == bundle)
    };
    let object = |kind: &str, object: &str| format!("{kind}/{}/{object}", namespace.unwrap_or_default());
    let servable = |bundle_name: &str, user: &str| -> Result<&Bundle, Refusal> {
        let bundle = find_bundle(bundle_name).ok_or_else(|| Refusal {
            reason: reason::REFERENCE_NOT_FOUND,
            message: format!("Bundle {bundle_name} does not exist"),
            stalled: true,
        })?;
        if bundle.spec.app_ref != app_ref {
            return Err(Refusal {
                reason: reason::INVALID_SPEC,
                message: format!(
                    "Bundle {bundle_name} belongs to App {}, not to App {app_ref}",
                    bundle.spec.app_ref
                ),
                stalled: true,
            });
        }
        if let Some(refusal) = sync_refusal(bundle_name, bundle) {
            return Err(refusal);
        }
        if let Some(refusal) = signature_refusal(problems, user) {
            return Err(refusal);
        }
        Ok(bundle)
    };

    let stable = match channel.stable_bundle_ref() {
        None => Ok(ServedBundle {
            bundle: None,
            version: BUILTIN_VERSION.to_owned(),
        }),
        Some(bundle_name) => servable(bundle_name, &object("Channel", name)).map(|bundle| ServedBundle {
            bundle: Some(bundle_name.to_owned()),
            version: bundle.spec.version.clone(),
        }),
    };

    let mut on_channel: Vec<&Rollout> = rollouts
        .iter()
        .filter(|r| in_namespace(&r.metadata) && r.spec.channel_ref == name)
        .collect();
    on_channel.sort_by_key(|r| name_of(&r.metadata));
    let candidate = on_channel.into_iter().find_map(|rollout| {
        let status = rollout.status.as_ref()?;
        let percent = match status.phase? {
            RolloutPhase::Progressing | RolloutPhase::Paused => status.current_percent.unwrap_or(0),
            // Served through the Channel's promotion, as the snapshot does.
            RolloutPhase::Completed | RolloutPhase::Aborted => return None,
        };
        let candidate = rollout.spec.bundle_ref.as_str();
        if status.candidate_bundle.as_deref() != Some(candidate) {
            return None; // the status describes an earlier candidate
        }
        let bundle = servable(candidate, &object("Rollout", name_of(&rollout.metadata))).ok()?;
        Some(CandidateBundle {
            bundle: candidate.to_owned(),
            version: bundle.spec.version.clone(),
            rollout: name_of(&rollout.metadata).to_owned(),
            percent: percent.clamp(0, 100),
        })
    });
    // A completed rollout whose candidate became the stable bundle offers nothing more.
    let candidate = candidate.filter(|c| {
        stable
            .as_ref()
            .map_or(true, |s| s.bundle.as_deref() != Some(c.bundle.as_str()))
    });
    let candidate_note = candidate.as_ref().map_or(String::new(), |c| {
        format!(
            "; Rollout {} offers Bundle {} ({}) to {}% of devices",
            c.rollout, c.bundle, c.version, c.percent
        )
    });

    match stable {
        Ok(stable) => {
            let serving = match &stable.bundle {
                Some(bundle) => format!("Serving Bundle {bundle} ({})", stable.version),
                None => "Serving the assets built into the app (no bundleRef)".to_owned(),
            };
            ChannelStatusPlan {
                stable: Some(stable),
                candidate,
                conditions: ready_set(format!("{serving}{candidate_note}")),
                warning: None,
                history: Vec::new(),
            }
        }
        Err(refusal) => ChannelStatusPlan {
            candidate,
            ..refused(Refusal {
                message: format!("{}{candidate_note}", refusal.message),
                ..refusal
            })
        },
    }
}

fn refused(refusal: Refusal) -> ChannelStatusPlan {
    let message = format!("{}; the channel serves no bundle", refusal.message);
    let (conditions, warning) = match refusal.stalled {
        true => (
            stalled_set(refusal.reason, message.clone()),
            Some(WarningEvent {
                reason: refusal.reason,
                note: message,
            }),
        ),
        false => (reconciling_set(refusal.reason, message), None),
    };
    ChannelStatusPlan {
        stable: None,
        candidate: None,
        conditions,
        warning,
        history: Vec::new(),
    }
}

/// Why `bundle` cannot be served yet, if it is not Synced: Stalled when its sync failed for good,
/// Reconciling while it may still sync.
fn sync_refusal(name: &str, bundle: &Bundle) -> Option<Refusal> {
    let conditions = bundle.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    if status_of(conditions, condition::SYNCED) == Some("True") {
        return None;
    }
    let stalled = conditions
        .iter()
        .find(|c| c.type_ == condition::STALLED && c.status == "True");
    Some(match stalled {
        Some(stalled) => Refusal {
            reason: reason::REFERENCE_NOT_READY,
            message: format!(
                "Bundle {name} cannot be synced ({}: {})",
                stalled.reason, stalled.message
            ),
            stalled: true,
        },
        None => Refusal {
            reason: reason::REFERENCE_NOT_READY,
            message: format!("Bundle {name} is not synced yet"),
            stalled: false,
        },
    })
}

/// A protected channel's refusal, as the snapshot reported it for `object` (`Kind/ns/name`):
/// a problem whose message starts with `SignatureRequired:` or `InvalidSignature:`.
fn signature_refusal(problems: &[Problem], object: &str) -> Option<Refusal> {
    problems.iter().filter(|p| p.object == object).find_map(|p| {
        [reason::SIGNATURE_REQUIRED, reason::INVALID_SIGNATURE]
            .into_iter()
            .find_map(|reason| {
                let message = p.message.strip_prefix(reason)?.strip_prefix(": ")?;
                Some(Refusal {
                    reason,
                    message: message.to_owned(),
                    stalled: true,
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::{
        conditions::ConditionStatus,
        fixtures::{self, app, bundle, channel, rollout, unsynced_bundle},
        snapshot::Snapshot,
    };

    struct World {
        apps: Vec<App>,
        bundles: Vec<Bundle>,
        rollouts: Vec<Rollout>,
        problems: Vec<Problem>,
    }

    fn world() -> World {
        let inputs = fixtures::inputs();
        World {
            apps: inputs.apps,
            bundles: inputs.bundles,
            rollouts: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn plan(world: &World, channel: &Channel) -> ChannelStatusPlan {
        channel_status(
            channel,
            &world.apps,
            &world.bundles,
            &world.rollouts,
            &world.problems,
        )
    }

    fn condition<'a>(plan: &'a ChannelStatusPlan, type_: &str) -> &'a DesiredCondition {
        plan.conditions.iter().find(|c| c.type_ == type_).expect(type_)
    }

    fn assert_stalled(plan: &ChannelStatusPlan, reason: &str, says: &str) {
        let stalled = condition(plan, condition::STALLED);
        assert_eq!(stalled.status, ConditionStatus::True, "{plan:?}");
        assert_eq!(stalled.reason, reason);
        assert!(stalled.message.contains(says), "{}", stalled.message);
        assert_eq!(condition(plan, condition::READY).status, ConditionStatus::False);
        assert_eq!(plan.stable, None);
        let warning = plan.warning.as_ref().expect("a warning");
        assert_eq!(warning.reason, reason);
    }

    #[test]
    fn a_channel_on_a_synced_bundle_is_ready_and_reports_it() {
        let plan = plan(&world(), &channel("production", Some("shop-1.4.2"), json!({})));
        assert_eq!(
            plan.stable,
            Some(ServedBundle {
                bundle: Some("shop-1.4.2".into()),
                version: "1.4.2".into()
            })
        );
        assert_eq!(plan.candidate, None);
        assert_eq!(plan.warning, None);
        let ready = condition(&plan, condition::READY);
        assert_eq!(ready.status, ConditionStatus::True);
        assert!(ready.message.contains("shop-1.4.2 (1.4.2)"), "{}", ready.message);
        assert_eq!(
            condition(&plan, condition::STALLED).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn a_channel_without_bundle_serves_builtin() {
        let plan = plan(&world(), &channel("production", None, json!({})));
        assert_eq!(
            plan.stable,
            Some(ServedBundle {
                bundle: None,
                version: BUILTIN_VERSION.into()
            })
        );
        assert_eq!(condition(&plan, condition::READY).status, ConditionStatus::True);
    }

    #[test]
    fn a_missing_app_stalls() {
        let plan = plan(
            &world(),
            &channel("production", Some("shop-1.4.2"), json!({"appRef": "nope"})),
        );
        assert_stalled(&plan, reason::REFERENCE_NOT_FOUND, "App nope does not exist");
    }

    #[test]
    fn an_app_of_another_namespace_does_not_count() {
        let mut world = world();
        world.apps[0].metadata.namespace = Some("elsewhere".into());
        let plan = plan(&world, &channel("production", Some("shop-1.4.2"), json!({})));
        assert_stalled(&plan, reason::REFERENCE_NOT_FOUND, "App shop");
    }

    #[test]
    fn a_missing_bundle_stalls() {
        let plan = plan(&world(), &channel("production", Some("shop-9.9.9"), json!({})));
        assert_stalled(
            &plan,
            reason::REFERENCE_NOT_FOUND,
            "Bundle shop-9.9.9 does not exist",
        );
    }

    #[test]
    fn a_bundle_of_another_app_stalls() {
        let mut world = world();
        world.apps.push(app("cart", "com.example.cart", json!({})));
        world
            .bundles
            .push(bundle("cart-1.0.0", "1.0.0", json!({"appRef": "cart"})));
        let plan = plan(&world, &channel("production", Some("cart-1.0.0"), json!({})));
        assert_stalled(
            &plan,
            reason::INVALID_SPEC,
            "belongs to App cart, not to App shop",
        );
    }

    #[test]
    fn an_unsynced_bundle_is_reconciling_without_a_warning() {
        let mut world = world();
        world.bundles.push(unsynced_bundle("shop-2.0.0", "2.0.0"));
        let plan = plan(&world, &channel("production", Some("shop-2.0.0"), json!({})));
        assert_eq!(plan.stable, None);
        assert_eq!(plan.warning, None);
        let reconciling = condition(&plan, condition::RECONCILING);
        assert_eq!(reconciling.status, ConditionStatus::True);
        assert_eq!(reconciling.reason, reason::REFERENCE_NOT_READY);
        assert!(reconciling.message.contains("not synced yet"));
        assert_eq!(
            condition(&plan, condition::STALLED).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn a_bundle_that_failed_for_good_stalls_with_its_reason() {
        let mut world = world();
        let mut broken = unsynced_bundle("shop-2.0.0", "2.0.0");
        broken.status = Some(
            serde_json::from_value(json!({"conditions": [
                {"type": "Synced", "status": "False", "reason": "ChecksumMismatch", "message": "checksum mismatch", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Stalled", "status": "True", "reason": "ChecksumMismatch", "message": "checksum mismatch: expected a, got b", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}))
            .expect("a status"),
        );
        world.bundles.push(broken);
        let plan = plan(&world, &channel("production", Some("shop-2.0.0"), json!({})));
        assert_stalled(
            &plan,
            reason::REFERENCE_NOT_READY,
            "cannot be synced (ChecksumMismatch: checksum mismatch: expected a, got b)",
        );
    }

    #[test]
    fn a_protected_channel_reports_the_snapshots_signature_refusal() {
        let mut inputs = fixtures::inputs();
        inputs.channels = vec![channel(
            "production",
            Some("shop-1.4.2"),
            json!({"requireSigned": true}),
        )];
        let (_, problems) = Snapshot::build(&inputs);
        let world = World { problems, ..world() };
        let plan = plan(&world, &inputs.channels[0]);
        assert_stalled(
            &plan,
            reason::SIGNATURE_REQUIRED,
            "Channel production requires signed bundles and Bundle shop-1.4.2 is not signed",
        );
        // Another channel's problem does not concern this one.
        let other = plan_for_other(&world);
        assert_eq!(condition(&other, condition::READY).status, ConditionStatus::True);
    }

    fn plan_for_other(world: &World) -> ChannelStatusPlan {
        plan(world, &channel("beta", Some("shop-1.4.2"), json!({})))
    }

    #[test]
    fn an_invalid_signature_stalls_with_its_own_reason() {
        let world = World {
            problems: vec![Problem {
                object: format!("Channel/{}/production", fixtures::NS),
                message: "InvalidSignature: Channel production requires signed bundles and Bundle \
                          shop-1.4.2 has a signature that does not verify"
                    .into(),
            }],
            ..world()
        };
        let plan = plan(&world, &channel("production", Some("shop-1.4.2"), json!({})));
        assert_stalled(&plan, reason::INVALID_SIGNATURE, "does not verify");
    }

    #[test]
    fn a_rollout_in_progress_gives_the_candidate_and_its_percent() {
        let mut world = world();
        world
            .rollouts
            .push(rollout("ro", "production", "shop-1.5.0", 25, "Progressing"));
        let plan = plan(&world, &channel("production", Some("shop-1.4.2"), json!({})));
        assert_eq!(
            plan.candidate,
            Some(CandidateBundle {
                bundle: "shop-1.5.0".into(),
                version: "1.5.0".into(),
                rollout: "ro".into(),
                percent: 25
            })
        );
        assert!(
            condition(&plan, condition::READY)
                .message
                .contains("Rollout ro offers Bundle shop-1.5.0 (1.5.0) to 25% of devices")
        );
    }

    #[test]
    fn rollouts_that_cannot_be_served_give_no_candidate() {
        let channel = channel("production", Some("shop-1.4.2"), json!({}));
        for (rollout, why) in [
            (
                rollout("ro", "production", "shop-1.5.0", 25, "Aborted"),
                "aborted",
            ),
            (
                rollout("ro", "beta", "shop-1.5.0", 25, "Progressing"),
                "another channel",
            ),
            (
                rollout("ro", "production", "shop-9.9.9", 25, "Progressing"),
                "missing bundle",
            ),
            (
                {
                    let mut r = rollout("ro", "production", "shop-1.5.0", 25, "Progressing");
                    r.status.as_mut().expect("status").candidate_bundle = Some("shop-1.4.9".into());
                    r
                },
                "status of an earlier candidate",
            ),
            (
                {
                    let mut r = rollout("ro", "production", "shop-1.5.0", 25, "Progressing");
                    r.status = None;
                    r
                },
                "no status",
            ),
        ] {
            let world = World {
                rollouts: vec![rollout],
                ..world()
            };
            let plan = plan(&world, &channel);
            assert_eq!(plan.candidate, None, "{why}");
            assert_eq!(
                condition(&plan, condition::READY).status,
                ConditionStatus::True,
                "{why}"
            );
        }
    }

    #[test]
    fn the_first_servable_rollout_by_name_wins_and_percent_is_clamped() {
        let mut world = world();
        world.bundles.push(unsynced_bundle("shop-2.0.0", "2.0.0"));
        world.rollouts = vec![
            rollout("c", "production", "shop-1.5.0", 10, "Paused"),
            rollout("b", "production", "shop-1.5.0", 250, "Progressing"),
            rollout("a", "production", "shop-2.0.0", 50, "Progressing"), // not synced: skipped
        ];
        let plan = plan(&world, &channel("production", Some("shop-1.4.2"), json!({})));
        let candidate = plan.candidate.expect("a candidate");
        assert_eq!((candidate.rollout.as_str(), candidate.percent), ("b", 100));
    }

    #[test]
    fn a_completed_rollout_is_served_through_the_channels_promotion_not_as_a_candidate() {
        let mut world = world();
        world
            .rollouts
            .push(rollout("ro", "production", "shop-1.5.0", 40, "Completed"));
        let unrecorded = plan(&world, &channel("production", Some("shop-1.4.2"), json!({})));
        assert_eq!(unrecorded.candidate, None);
        assert_eq!(unrecorded.stable.expect("stable").version, "1.4.2");
        let mut promoted = channel("production", Some("shop-1.4.2"), json!({}));
        promoted.status = Some(crate::api::ChannelStatus {
            promoted: Some(crate::api::channel::PromotedBundle {
                bundle: "shop-1.5.0".into(),
                over_bundle_ref: Some("shop-1.4.2".into()),
                rollout: "ro".into(),
            }),
            ..Default::default()
        });
        let recorded = plan(&world, &promoted);
        assert_eq!(recorded.candidate, None);
        assert_eq!(recorded.stable.expect("stable").version, "1.5.0");
    }

    #[test]
    fn the_history_records_each_stable_bundle_served_and_a_completed_rollouts_candidate() {
        let mut world = world();
        world.bundles.push(bundle("shop-1.6.0", "1.6.0", json!({})));
        let versions = |channel: &Channel| -> Vec<String> {
            channel
                .status
                .iter()
                .flat_map(|s| &s.history)
                .map(|e| e.version.clone())
                .collect()
        };
        let mut channel = channel("production", Some("shop-1.4.2"), json!({}));
        // Each step writes the status as the controller does, then reads it back.
        let reconcile = |channel: &mut Channel| {
            let plan = plan(&world, channel);
            channel.status = Some(desired_status(channel, &plan, Timestamp::UNIX_EPOCH));
        };
        reconcile(&mut channel);
        assert_eq!(versions(&channel), ["1.4.2"]);
        channel.spec.bundle_ref = Some("shop-1.5.0".into());
        reconcile(&mut channel);
        assert_eq!(versions(&channel), ["1.4.2", "1.5.0"], "git moved bundleRef");
        for (bundle_ref, why) in [(Some("shop-9.9.9"), "a missing Bundle"), (None, "builtin")] {
            channel.spec.bundle_ref = bundle_ref.map(str::to_owned);
            reconcile(&mut channel);
            assert_eq!(versions(&channel), ["1.4.2", "1.5.0"], "{why} is no release");
        }
        channel.spec.bundle_ref = Some("shop-1.5.0".into());
        channel.status.as_mut().expect("a status").promoted = Some(crate::api::channel::PromotedBundle {
            bundle: "shop-1.6.0".into(),
            over_bundle_ref: Some("shop-1.5.0".into()),
            rollout: "ro".into(),
        });
        reconcile(&mut channel);
        assert_eq!(
            versions(&channel),
            ["1.4.2", "1.5.0", "1.6.0"],
            "a completed rollout's candidate"
        );
    }

    #[test]
    fn a_stalled_channel_still_reports_a_served_candidate() {
        let mut world = world();
        world
            .rollouts
            .push(rollout("ro", "production", "shop-1.5.0", 5, "Progressing"));
        let plan = plan(&world, &channel("production", Some("shop-9.9.9"), json!({})));
        assert_eq!(plan.stable, None);
        assert_eq!(plan.candidate.as_ref().expect("a candidate").percent, 5);
        assert!(
            condition(&plan, condition::STALLED)
                .message
                .contains("Rollout ro offers Bundle shop-1.5.0")
        );
    }
}
