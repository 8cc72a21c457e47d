use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::core::{
    conditions::status_of,
    fixtures::{self, NS, bundle, channel, unsynced_bundle},
    snapshot::Snapshot,
};

mod metrics;

// ---------------------------------------------------------------- statistics

#[test]
fn the_inverse_normal_cdf_matches_known_quantiles() {
    // Reference values from Python's statistics.NormalDist().inv_cdf (Wichura's AS241).
    for (p, z) in [
        (0.5, 0.0),
        (0.75, 0.6744897501960817),
        (0.9, 1.2815515655446008),
        (0.95, 1.6448536269514715),
        (0.975, 1.9599639845400536),
        (0.99, 2.3263478740408408),
        (0.999, 3.090232306167813),
        (0.9999, 3.7190164854557084),
        (0.03, -1.8807936081512509),
        (0.02, -2.0537489106318225),
        (0.001, -3.090232306167813),
        (1e-6, -4.753424308822899),
    ] {
        let got = inverse_normal_cdf(p).expect("a quantile");
        assert!((got - z).abs() < 1e-8, "Φ⁻¹({p}) = {got}, expected {z}");
    }
}

#[test]
fn the_inverse_normal_cdf_is_symmetric_and_refuses_what_is_not_a_probability() {
    for p in [0.001, 0.02425, 0.1, 0.3, 0.49] {
        let low = inverse_normal_cdf(p).expect("low");
        let high = inverse_normal_cdf(1.0 - p).expect("high");
        assert!((low + high).abs() < 1e-8, "{p}: {low} {high}");
    }
    for p in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(inverse_normal_cdf(p), None, "{p}");
    }
}

#[test]
fn the_wilson_lower_bound_matches_known_values() {
    // (failures, attempts, confidence, bound), computed independently in Python.
    for (failures, attempts, confidence, expected) in [
        (30, 100, 0.95, 0.23070495436914534),
        (0, 100, 0.95, 0.0),
        (5, 100, 0.95, 0.02454736342580413),
        (100, 100, 0.95, 0.9736572792168257),
        (1, 2, 0.95, 0.12086631942227373),
        (60, 1000, 0.99, 0.04478441028861077),
        (7, 50, 0.9, 0.08851935972566852),
        (15, 200, 0.95, 0.049718754856359224),
        (6, 50, 0.95, 0.06334039580454028),
        (30, 100, 0.5, 0.3),
    ] {
        let z = inverse_normal_cdf(confidence).expect("z");
        let got = wilson_lower_bound(failures, attempts, z).expect("a bound");
        assert!(
            (got - expected).abs() < 1e-8,
            "{failures}/{attempts} at {confidence}: {got}, expected {expected}"
        );
    }
}

#[test]
fn the_wilson_lower_bound_handles_edges_and_refuses_nonsense() {
    assert_eq!(wilson_lower_bound(0, 0, 1.645), Some(0.0));
    assert_eq!(wilson_lower_bound(3, 2, 1.645), None);
    assert_eq!(wilson_lower_bound(1, 2, -1.0), None);
    assert_eq!(wilson_lower_bound(1, 2, f64::NAN), None);
    assert_eq!(wilson_lower_bound(1, 2, f64::INFINITY), None);
    // More failures never lower the bound, more confidence never raises it.
    let mut last = 0.0;
    for failures in 0..=100 {
        let bound = wilson_lower_bound(failures, 100, 1.645).expect("a bound");
        assert!(bound >= last && bound <= failures as f64 / 100.0);
        last = bound;
    }
    assert!(wilson_lower_bound(10, 100, 2.326).unwrap() < wilson_lower_bound(10, 100, 1.645).unwrap());
}

// ---------------------------------------------------------------- fixtures

const T0: i64 = 1_800_000_000;
const CANDIDATE: &str = "shop-1.5.0";
const STABLE: &str = "shop-1.4.2";

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(T0 + seconds).expect("a valid timestamp")
}

fn rollout_with(steps: Value, analysis: Value) -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "ota.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "ro", "namespace": NS, "uid": "uid-ro", "generation": 1},
        "spec": {"channelRef": "production", "bundleRef": CANDIDATE, "steps": steps, "analysis": analysis},
    }))
    .expect("a Rollout")
}

/// 10% → pause 1h → 50% → pause until promoted → 100%, analysis every 2h (out of the way).
fn staged() -> Rollout {
    rollout_with(
        json!([{"setPercent": 10}, {"pause": {"duration": "1h"}}, {"setPercent": 50}, {"pause": {}}, {"setPercent": 100}]),
        json!({"interval": "2h"}),
    )
}

/// 20% → analysis → 60%, with the policy in `analysis`.
fn analysed(analysis: Value) -> Rollout {
    let mut policy = json!({"interval": "5m", "minAttempts": 50, "maxFailureRate": 0.05});
    fixtures::merge(&mut policy, analysis);
    rollout_with(
        json!([{"setPercent": 20}, {"analysis": {}}, {"setPercent": 60}]),
        policy,
    )
}

fn counts(attempts: i64, failures: i64) -> Option<FailureCounts> {
    Some(FailureCounts { attempts, failures })
}

/// A controller's view: the Rollout as stored, and what it observes.
struct Sim {
    rollout: Rollout,
    stable: Option<String>,
    candidate: CandidateSync,
    figures: Option<FailureCounts>,
    /// What the metric providers brought to the next decision.
    measurements: Vec<Measured>,
}

impl Sim {
    fn new(rollout: Rollout) -> Sim {
        Sim {
            rollout,
            stable: Some(STABLE.into()),
            candidate: CandidateSync::Synced,
            figures: counts(0, 0),
            measurements: Vec::new(),
        }
    }

    fn plan_at(&self, seconds: i64) -> RolloutPlan {
        let inputs = RolloutInputs {
            channel_stable: self.stable.as_deref(),
            candidate: self.candidate.clone(),
            figures: self.figures,
            measurements: &self.measurements,
        };
        progress(&self.rollout, &inputs, t(seconds))
    }

    /// Decides at T0 + `seconds` and stores the status, checking on the way that deciding again
    /// at once with the stored status changes nothing, publishes nothing and never asks to be
    /// woken at or before now (a controller woken by its own write must not spin).
    fn at(&mut self, seconds: i64) -> RolloutPlan {
        let plan = self.plan_at(seconds);
        if let Some(requeue_at) = plan.requeue_at {
            assert!(
                requeue_at > t(seconds),
                "requeue at {requeue_at} is not after now: {plan:#?}"
            );
        }
        self.rollout.status = Some(plan.status.clone());
        let again = self.plan_at(seconds);
        assert_eq!(again.status, plan.status, "not a fixed point at +{seconds}s");
        assert_eq!(again.events, [], "events on a second look at +{seconds}s");
        assert_eq!(again.requeue_at, plan.requeue_at);
        plan
    }

    fn command(&mut self, key: &str, value: &str) {
        self.rollout
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value.to_owned());
    }

    fn status(&self) -> &RolloutStatus {
        self.rollout.status.as_ref().expect("a status")
    }

    fn position(&self) -> (Option<RolloutPhase>, i32, i32) {
        let status = self.status();
        (
            status.phase,
            status.current_step_index.unwrap_or(-1),
            status.current_percent.unwrap_or(-1),
        )
    }
}

fn reasons(plan: &RolloutPlan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.reason).collect()
}

fn desired<'a>(plan: &'a RolloutPlan, type_: &str) -> &'a DesiredCondition {
    plan.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {:?}", plan.conditions))
}

fn assert_kstatus(plan: &RolloutPlan, ready: &str, reconciling: &str, stalled: &str) {
    let conditions = &plan.status.conditions;
    assert_eq!(
        (
            status_of(conditions, condition::READY),
            status_of(conditions, condition::RECONCILING),
            status_of(conditions, condition::STALLED)
        ),
        (Some(ready), Some(reconciling), Some(stalled)),
        "{:#?}",
        plan.conditions
    );
}

use RolloutPhase::{Aborted, Completed, Paused, Progressing};

// ---------------------------------------------------------------- validation

fn world() -> (Vec<Channel>, Vec<Bundle>) {
    let inputs = fixtures::inputs();
    (inputs.channels, inputs.bundles)
}

#[test]
fn a_sound_rollout_is_valid() {
    let (channels, bundles) = world();
    assert_eq!(validate(&staged(), &channels, &bundles), Ok(()));
    assert_eq!(validate(&analysed(json!({})), &channels, &bundles), Ok(()));
}

#[test]
fn every_bad_spec_is_refused_with_a_clear_reason() {
    let (channels, bundles) = world();
    let long_salt = "s".repeat(129);
    let cases: Vec<(&str, Rollout, &str)> = vec![
        (
            "no steps",
            rollout_with(json!([]), json!({})),
            "needs 1 to 32 steps, not 0",
        ),
        (
            "too many steps",
            rollout_with(Value::Array(vec![json!({"setPercent": 1}); 33]), json!({})),
            "not 33",
        ),
        (
            "two kinds in a step",
            rollout_with(json!([{"setPercent": 10, "pause": {}}]), json!({})),
            "step 1 needs exactly one of setPercent, pause or analysis",
        ),
        (
            "an empty step",
            rollout_with(json!([{"setPercent": 10}, {}]), json!({})),
            "step 2 needs exactly one",
        ),
        (
            "percent above 100",
            rollout_with(json!([{"setPercent": 101}]), json!({})),
            "step 1: setPercent 101 is not between 0 and 100",
        ),
        (
            "negative percent",
            rollout_with(json!([{"setPercent": -1}]), json!({})),
            "setPercent -1 is not between",
        ),
        (
            "decreasing percent",
            rollout_with(
                json!([{"setPercent": 50}, {"pause": {}}, {"setPercent": 20}]),
                json!({}),
            ),
            "step 3: setPercent 20 is lower than step 1's 50",
        ),
        (
            "a pause that is not a duration",
            rollout_with(json!([{"pause": {"duration": "5x"}}]), json!({})),
            "step 1: pause.duration \"5x\" is not a duration",
        ),
        (
            "a pause of more than a year",
            rollout_with(json!([{"pause": {"duration": "9000h"}}]), json!({})),
            "must be at most 366 days",
        ),
        (
            "a zero interval",
            rollout_with(json!([{"setPercent": 10}]), json!({"interval": "0s"})),
            "analysis.interval \"0s\" must be at least",
        ),
        (
            "an interval below a second",
            rollout_with(json!([{"setPercent": 10}]), json!({"interval": "500ms"})),
            "analysis.interval \"500ms\" must be at least",
        ),
        (
            "a window that is not a duration",
            rollout_with(json!([{"setPercent": 10}]), json!({"window": "1 hour"})),
            "analysis.window \"1 hour\" is not a duration",
        ),
        (
            "a failure rate above 1",
            rollout_with(json!([{"setPercent": 10}]), json!({"maxFailureRate": 1.5})),
            "analysis.maxFailureRate 1.5 is not between 0 and 1",
        ),
        (
            "no attempts needed",
            rollout_with(json!([{"setPercent": 10}]), json!({"minAttempts": 0})),
            "analysis.minAttempts 0 must be at least 1",
        ),
        (
            "a confidence below one half",
            rollout_with(json!([{"setPercent": 10}]), json!({"confidence": 0.3})),
            "analysis.confidence 0.3 is not between 0.5 and 0.9999",
        ),
        (
            "a certain confidence",
            rollout_with(json!([{"setPercent": 10}]), json!({"confidence": 1.0})),
            "analysis.confidence 1 is not between",
        ),
        (
            "an empty salt",
            {
                let mut r = staged();
                r.spec.salt = Some(String::new());
                r
            },
            "salt must be 1 to 128 characters, not 0",
        ),
        (
            "a long salt",
            {
                let mut r = staged();
                r.spec.salt = Some(long_salt);
                r
            },
            "not 129",
        ),
        (
            "a rate that is not a number",
            {
                let mut r = staged();
                r.spec.analysis.max_failure_rate = f64::NAN;
                r
            },
            "analysis.maxFailureRate NaN is not between 0 and 1",
        ),
    ];
    for (what, rollout, says) in cases {
        let invalid = validate(&rollout, &channels, &bundles).expect_err(what);
        assert_eq!(invalid.reason, reason::INVALID_SPEC, "{what}");
        assert!(invalid.message.contains(says), "{what}: {}", invalid.message);
    }
}

#[test]
fn decide_starts_from_the_channels_stable_bundle_a_promotion_included_and_refuses_bad_references() {
    let (mut channels, bundles) = world();
    let plan = decide(&staged(), &channels, &bundles, None, &[], t(0));
    assert_eq!(plan.status.stable_bundle.as_deref(), Some("shop-1.4.2"));
    assert_eq!(plan.status.candidate_bundle.as_deref(), Some(CANDIDATE));
    assert_eq!(plan.status.current_percent, Some(10));

    // A candidate an earlier Rollout promoted is where the next one starts.
    channels[0].status = Some(crate::api::ChannelStatus {
        promoted: Some(crate::api::channel::PromotedBundle {
            bundle: "shop-1.5.0-beta.1".into(),
            over_bundle_ref: Some("shop-1.4.2".into()),
            rollout: "earlier".into(),
        }),
        ..Default::default()
    });
    let plan = decide(&staged(), &channels, &bundles, None, &[], t(0));
    assert_eq!(plan.status.stable_bundle.as_deref(), Some("shop-1.5.0-beta.1"));

    let mut lost = staged();
    lost.spec.channel_ref = "nowhere".into();
    let plan = decide(&lost, &channels, &bundles, None, &[], t(0));
    assert_eq!(plan.events[0].reason, reason::REFERENCE_NOT_FOUND);
    assert_eq!(plan.events[0].note, "Channel nowhere does not exist");
    assert_kstatus(&plan, "False", "False", "True");
}

#[test]
fn missing_or_foreign_references_are_refused() {
    let (mut channels, mut bundles) = world();
    let mut rollout = staged();
    rollout.spec.channel_ref = "nowhere".into();
    assert_eq!(
        validate(&rollout, &channels, &bundles),
        Err(Invalid {
            reason: reason::REFERENCE_NOT_FOUND,
            message: "Channel nowhere does not exist".into()
        })
    );

    let mut rollout = staged();
    rollout.spec.bundle_ref = "shop-9.9.9".into();
    assert_eq!(
        validate(&rollout, &channels, &bundles),
        Err(Invalid {
            reason: reason::REFERENCE_NOT_FOUND,
            message: "Bundle shop-9.9.9 does not exist".into()
        })
    );

    // Objects of another namespace do not count.
    channels[0].metadata.namespace = Some("elsewhere".into());
    let invalid = validate(&staged(), &channels, &bundles).expect_err("no channel here");
    assert_eq!(invalid.reason, reason::REFERENCE_NOT_FOUND);
    let (channels, _) = world();
    bundles
        .iter_mut()
        .for_each(|b| b.metadata.namespace = Some("elsewhere".into()));
    let invalid = validate(&staged(), &channels, &bundles).expect_err("no bundle here");
    assert_eq!(invalid.message, "Bundle shop-1.5.0 does not exist");

    // A Bundle of another App.
    let (channels, mut bundles) = world();
    bundles.push(bundle("cart-1.0.0", "1.0.0", json!({"appRef": "cart"})));
    let mut rollout = staged();
    rollout.spec.bundle_ref = "cart-1.0.0".into();
    let invalid = validate(&rollout, &channels, &bundles).expect_err("foreign bundle");
    assert_eq!(invalid.reason, reason::INVALID_SPEC);
    assert_eq!(
        invalid.message,
        "Bundle cart-1.0.0 belongs to App cart, but Channel production serves App shop"
    );
}

#[test]
fn an_invalid_rollout_is_stalled_keeps_its_position_and_warns_once() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    let invalid = Invalid {
        reason: reason::REFERENCE_NOT_FOUND,
        message: "Channel production does not exist".into(),
    };
    let plan = invalid_plan(&sim.rollout, &invalid, t(5));
    assert_kstatus(&plan, "False", "False", "True");
    assert_eq!(
        desired(&plan, condition::STALLED).reason,
        reason::REFERENCE_NOT_FOUND
    );
    assert_eq!(plan.status.phase, Some(Paused));
    assert_eq!(plan.status.current_percent, Some(10));
    assert_eq!(plan.requeue_at, None);
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.events[0].kind, EventKind::Warning);
    sim.rollout.status = Some(plan.status.clone());
    let again = invalid_plan(&sim.rollout, &invalid, t(9));
    assert_eq!(again.events, []);
    assert_eq!(again.status, plan.status);

    // An aborted rollout that went through an invalid spell does not keep the stale message.
    let mut aborted = Sim::new(staged());
    aborted.at(0);
    aborted.command(annotation::ABORT, "x");
    aborted.at(10);
    let stalled = invalid_plan(&aborted.rollout, &invalid, t(20));
    aborted.rollout.status = Some(stalled.status);
    let plan = aborted.at(30);
    let message = plan.status.message.as_deref().unwrap();
    assert!(
        message.starts_with(&format!("Aborted at {} (last analysis: no figures yet)", t(10))),
        "{message}"
    );
    assert_eq!(desired(&plan, condition::STALLED).reason, reason::ABORTED);

    // A spec that does not parse reaches progress too: the same plan, never a panic.
    sim.rollout.spec.steps.clear();
    let plan = sim.plan_at(10);
    assert_eq!(desired(&plan, condition::STALLED).reason, reason::INVALID_SPEC);
    assert_eq!(plan.status.current_percent, Some(10));
}

// ---------------------------------------------------------------- steps

#[test]
fn the_first_decision_starts_and_walks_to_the_first_wait() {
    let mut sim = Sim::new(staged());
    let plan = sim.at(0);
    assert_eq!(
        reasons(&plan),
        [
            reason::ROLLOUT_STARTED,
            reason::PERCENT_INCREASED,
            reason::PAUSE_STEP
        ]
    );
    let status = &plan.status;
    assert_eq!(sim.position(), (Some(Paused), 1, 10));
    assert_eq!(status.stable_bundle.as_deref(), Some(STABLE));
    assert_eq!(status.candidate_bundle.as_deref(), Some(CANDIDATE));
    assert_eq!(status.salt.as_deref(), Some("uid-ro"));
    assert_eq!(status.started_at, Some(Time(t(0))));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.pause_conditions,
        [PauseCondition {
            reason: reason::PAUSE_STEP.into(),
            start_time: Time(t(0)),
            until: Some(Time(t(3600)))
        }]
    );
    assert_eq!(plan.requeue_at, Some(t(3600)));
    assert_kstatus(&plan, "False", "True", "False");
    assert_eq!(desired(&plan, condition::PAUSED).status, ConditionStatus::True);
    assert_eq!(desired(&plan, condition::PAUSED).reason, reason::PAUSE_STEP);
    assert_eq!(
        desired(&plan, condition::COMPLETED).status,
        ConditionStatus::False
    );
    let message = status.message.as_deref().unwrap();
    assert!(message.contains("step 2 of 5 pauses until"), "{message}");
    assert!(message.contains("offered to 10% of devices, the others get Bundle shop-1.4.2"));
    assert!(plan.events.iter().all(|e| e.kind == EventKind::Normal));
    assert_eq!(plan.record_stable, None);
}

#[test]
fn a_timed_pause_ends_exactly_at_its_deadline_then_waits_for_promotion() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    let before = sim.status().clone();
    let plan = sim.at(3599);
    assert_eq!(plan.events, []);
    assert_eq!(plan.status, before, "nothing moves before the deadline");
    assert_eq!(plan.requeue_at, Some(t(3600)));

    let plan = sim.at(3600);
    assert_eq!(plan.events[0].note, "The pause of 1h at step 2 of 5 ended");
    assert_eq!(
        reasons(&plan),
        [
            reason::PAUSE_ENDED,
            reason::PERCENT_INCREASED,
            reason::WAITING_FOR_PROMOTION
        ]
    );
    assert_eq!(sim.position(), (Some(Paused), 3, 50));
    assert_eq!(plan.status.pause_conditions.len(), 1);
    assert_eq!(
        plan.status.pause_conditions[0].reason,
        reason::WAITING_FOR_PROMOTION
    );
    assert_eq!(plan.status.pause_conditions[0].until, None);
    // Only the background analysis wakes it now.
    assert_eq!(plan.requeue_at, Some(t(2 * 3600)));

    // It waits for a person however long it takes.
    sim.figures = counts(0, 0);
    let plan = sim.at(30 * 24 * 3600);
    assert!(plan.events.is_empty());
    assert_eq!(sim.position(), (Some(Paused), 3, 50));
}

#[test]
fn promote_passes_the_pause_and_completion_records_the_stable_bundle() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.at(3600);
    sim.command(annotation::PROMOTE, "2026-01-01T00:00:00Z");
    let plan = sim.at(4000);
    assert_eq!(
        reasons(&plan),
        [
            reason::PROMOTED,
            reason::PERCENT_INCREASED,
            reason::ROLLOUT_COMPLETED
        ]
    );
    assert_eq!(sim.position(), (Some(Completed), 5, 100));
    let status = &plan.status;
    assert_eq!(status.completed_at, Some(Time(t(4000))));
    assert!(status.pause_conditions.is_empty());
    assert_eq!(plan.record_stable.as_deref(), Some(CANDIDATE));
    assert_eq!(plan.requeue_at, None);
    assert_kstatus(&plan, "True", "False", "False");
    assert_eq!(desired(&plan, condition::COMPLETED).status, ConditionStatus::True);
    assert_eq!(
        desired(&plan, condition::COMPLETED).reason,
        reason::ROLLOUT_COMPLETED
    );
    assert_eq!(desired(&plan, condition::PAUSED).status, ConditionStatus::False);
    assert_eq!(
        status
            .handled_commands
            .get(annotation::PROMOTE)
            .map(String::as_str),
        Some("2026-01-01T00:00:00Z")
    );
    // Later decisions repeat the recording, so a restart before it was done loses nothing.
    let later = sim.at(99_999);
    assert_eq!(later.record_stable.as_deref(), Some(CANDIDATE));
    assert_eq!(later.events, []);
}

#[test]
fn a_command_acts_once_per_value() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::PROMOTE, "one");
    let plan = sim.at(10);
    assert_eq!(
        reasons(&plan),
        [
            reason::PROMOTED,
            reason::PERCENT_INCREASED,
            reason::WAITING_FOR_PROMOTION
        ]
    );
    assert_eq!(sim.position(), (Some(Paused), 3, 50));
    // The same value again: nothing (Sim::at also checks a second look at once).
    let plan = sim.at(20);
    assert_eq!(plan.events, []);
    // A new value acts again.
    sim.command(annotation::PROMOTE, "two");
    let plan = sim.at(30);
    assert_eq!(reasons(&plan)[0], reason::PROMOTED);
    assert_eq!(sim.position(), (Some(Completed), 5, 100));
}

#[test]
fn an_annotation_that_is_removed_is_forgotten() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::PAUSE, "x");
    assert_eq!(reasons(&sim.at(10)), [reason::PAUSED_BY_USER]);
    sim.command(annotation::PROMOTE, "p1");
    sim.at(20);
    sim.rollout
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(annotation::PAUSE);
    let plan = sim.at(30);
    assert_eq!(plan.events, []);
    assert!(!plan.status.handled_commands.contains_key(annotation::PAUSE));
    // Written again with the same value, it is a new command.
    sim.command(annotation::PAUSE, "x");
    assert_eq!(reasons(&sim.at(40)), [reason::PAUSED_BY_USER]);
}

#[test]
fn promote_full_skips_every_remaining_step() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::PROMOTE_FULL, "now");
    let plan = sim.at(60);
    assert_eq!(reasons(&plan), [reason::PROMOTED_FULL, reason::ROLLOUT_COMPLETED]);
    assert_eq!(sim.position(), (Some(Completed), 5, 100));
    assert_eq!(plan.record_stable.as_deref(), Some(CANDIDATE));
}

#[test]
fn a_person_pauses_and_the_timer_still_runs_but_nothing_rises_until_promoted() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::PAUSE, "t1");
    let plan = sim.at(600);
    assert_eq!(reasons(&plan), [reason::PAUSED_BY_USER]);
    assert_eq!(desired(&plan, condition::PAUSED).reason, reason::PAUSED_BY_USER);
    assert_eq!(
        desired(&plan, condition::RECONCILING).reason,
        reason::PAUSED_BY_USER
    );
    // Pausing again while paused changes nothing but says so.
    sim.command(annotation::PAUSE, "t2");
    assert_eq!(reasons(&sim.at(700)), [reason::COMMAND_IGNORED]);
    // The timed pause of step 2 ends on time; the person's pause still holds the percent.
    let plan = sim.at(3600);
    assert_eq!(reasons(&plan), [reason::PAUSE_ENDED]);
    assert_eq!(sim.position(), (Some(Paused), 2, 10));
    sim.command(annotation::PROMOTE, "go");
    let plan = sim.at(3700);
    assert_eq!(
        reasons(&plan),
        [
            reason::PROMOTED,
            reason::PERCENT_INCREASED,
            reason::WAITING_FOR_PROMOTION
        ]
    );
    assert_eq!(sim.position(), (Some(Paused), 3, 50));
}

#[test]
fn abort_serves_the_stable_bundle_to_everyone_until_retried() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.at(3600);
    sim.command(annotation::ABORT, "stop");
    let plan = sim.at(3700);
    assert_eq!(reasons(&plan), [reason::ABORTED]);
    assert_eq!(plan.events[0].kind, EventKind::Warning);
    assert_eq!(sim.position(), (Some(Aborted), 3, 0));
    assert_eq!(plan.status.aborted_at, Some(Time(t(3700))));
    assert!(plan.status.pause_conditions.is_empty());
    assert_eq!(plan.requeue_at, None);
    assert_eq!(plan.record_stable, None);
    assert_kstatus(&plan, "False", "False", "True");
    assert_eq!(desired(&plan, condition::STALLED).reason, reason::ABORTED);
    let message = plan.status.message.clone().unwrap();
    assert!(message.contains("Aborted by a person"), "{message}");
    assert!(
        message.contains("Bundle shop-1.4.2 is served to every device"),
        "{message}"
    );
    assert!(message.contains("ota.dev/retry"), "{message}");

    // Nothing else moves it: time, figures, promote.
    sim.figures = counts(1000, 0);
    sim.command(annotation::PROMOTE, "please");
    let plan = sim.at(50_000);
    assert_eq!(reasons(&plan), [reason::COMMAND_IGNORED]);
    assert!(
        plan.events[0].note.contains("retry it first"),
        "{}",
        plan.events[0].note
    );
    assert_eq!(sim.position(), (Some(Aborted), 3, 0));
    assert_eq!(plan.status.message.as_deref(), Some(message.as_str()));

    // Retry starts again from the first step, with the same cohort.
    sim.command(annotation::RETRY, "again");
    let plan = sim.at(60_000);
    assert_eq!(
        reasons(&plan),
        [reason::RETRIED, reason::PERCENT_INCREASED, reason::PAUSE_STEP]
    );
    assert_eq!(sim.position(), (Some(Paused), 1, 10));
    let status = &plan.status;
    assert_eq!(status.started_at, Some(Time(t(60_000))));
    assert_eq!((status.aborted_at.clone(), status.analysis.clone()), (None, None));
    assert_eq!(status.salt.as_deref(), Some("uid-ro"));
    assert_kstatus(&plan, "False", "True", "False");
}

#[test]
fn commands_that_do_not_apply_are_acknowledged_with_an_event() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::RETRY, "r");
    let plan = sim.at(10);
    assert_eq!(reasons(&plan), [reason::COMMAND_IGNORED]);
    assert!(plan.events[0].note.contains("not aborted"));
    sim.command(annotation::PROMOTE_FULL, "f");
    sim.at(20);
    for command in [annotation::PROMOTE, annotation::PAUSE, annotation::ABORT] {
        sim.command(command, "late");
        let plan = sim.at(30);
        assert_eq!(reasons(&plan), [reason::COMMAND_IGNORED], "{command}");
        assert!(plan.events[0].note.contains("the rollout is completed"));
        assert_eq!(sim.position(), (Some(Completed), 5, 100));
    }
}

#[test]
fn commands_arriving_together_let_the_most_cautious_win() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::PROMOTE_FULL, "a");
    sim.command(annotation::ABORT, "b");
    let plan = sim.at(10);
    assert_eq!(reasons(&plan), [reason::PROMOTED_FULL, reason::ABORTED]);
    assert_eq!(sim.position(), (Some(Aborted), 5, 0));

    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::PROMOTE, "a");
    sim.command(annotation::PAUSE, "b");
    let plan = sim.at(10);
    assert_eq!(reasons(&plan), [reason::PROMOTED, reason::PAUSED_BY_USER]);
    // Promoted past the timed pause, but paused before 50% was offered.
    assert_eq!(sim.position(), (Some(Paused), 2, 10));
}

// ---------------------------------------------------------------- analysis

#[test]
fn an_analysis_step_waits_for_enough_attempts_then_passes() {
    let mut sim = Sim::new(analysed(json!({})));
    sim.at(0);
    // Right after the start, figures read before it are not used: it waits one interval.
    assert_eq!(sim.position(), (Some(Progressing), 1, 20));
    sim.figures = counts(10, 5);
    let plan = sim.at(300);
    assert_eq!(reasons(&plan), [] as [&str; 0], "already announced as waiting");
    assert_eq!(
        desired(&plan, condition::RECONCILING).reason,
        reason::WAITING_FOR_ANALYSIS
    );
    let figures = plan.status.analysis.clone().expect("figures");
    assert_eq!((figures.attempts, figures.failures), (10, 5));
    assert_eq!(figures.failure_rate, 0.5);
    assert_eq!(figures.evaluated_at, Time(t(300)));
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap()
            .contains("waits for at least 50 attempts (10 so far)")
    );
    assert_eq!(plan.requeue_at, Some(t(600)));
    // New figures before the interval is over are not looked at.
    sim.figures = counts(200, 2);
    let plan = sim.at(599);
    assert_eq!(plan.status.analysis.as_ref().unwrap().attempts, 10);
    // At the interval they are, and they pass.
    let plan = sim.at(600);
    assert_eq!(
        reasons(&plan),
        [
            reason::ANALYSIS_PASSED,
            reason::PERCENT_INCREASED,
            reason::ROLLOUT_COMPLETED
        ]
    );
    assert!(
        plan.events[0].note.contains("2 failures in 200 attempts (1%"),
        "{}",
        plan.events[0].note
    );
    assert_eq!(sim.position(), (Some(Completed), 3, 100));
}

#[test]
fn an_analysis_step_reached_mid_rollout_evaluates_at_once() {
    let mut sim = Sim::new(rollout_with(
        json!([{"setPercent": 20}, {"pause": {"duration": "10m"}}, {"analysis": {}}, {"setPercent": 60}]),
        json!({"interval": "1h", "minAttempts": 50}),
    ));
    sim.at(0);
    sim.figures = counts(100, 1);
    let plan = sim.at(600);
    assert_eq!(
        reasons(&plan),
        [
            reason::PAUSE_ENDED,
            reason::ANALYSIS_PASSED,
            reason::PERCENT_INCREASED,
            reason::ROLLOUT_COMPLETED
        ]
    );
    assert_eq!(sim.position(), (Some(Completed), 4, 100));
}

#[test]
fn a_failing_analysis_step_rolls_back() {
    let mut sim = Sim::new(analysed(json!({"action": "rollback"})));
    sim.at(0);
    sim.figures = counts(100, 30);
    let plan = sim.at(300);
    assert_eq!(reasons(&plan), [reason::ABORTED]);
    assert_eq!(sim.position(), (Some(Aborted), 1, 0));
    assert_kstatus(&plan, "False", "False", "True");
    let message = plan.status.message.clone().unwrap();
    assert!(
        message.contains("Aborted by the background analysis: 30 failures in 100 attempts (30%; lower bound 23.07% at 95% confidence; maximum 5%)"),
        "{message}"
    );
    assert_eq!(desired(&plan, condition::STALLED).message, message);
}

#[test]
fn a_failing_analysis_step_with_the_pause_action_waits_for_a_person() {
    let mut sim = Sim::new(rollout_with(
        json!([{"setPercent": 20}, {"pause": {"duration": "10m"}}, {"analysis": {}}, {"setPercent": 60}]),
        json!({"interval": "1h", "minAttempts": 50, "action": "pause"}),
    ));
    sim.at(0);
    sim.figures = counts(100, 30);
    let plan = sim.at(600);
    assert_eq!(reasons(&plan), [reason::PAUSE_ENDED, reason::ANALYSIS_FAILED]);
    assert_eq!(plan.events[1].kind, EventKind::Warning);
    assert!(
        plan.events[1]
            .note
            .starts_with("Paused by the analysis of step 3 of 4: 30 failures")
    );
    assert_eq!(sim.position(), (Some(Paused), 2, 20));
    // Failing and waiting for a person: Stalled, so GitOps health reads Degraded.
    assert_kstatus(&plan, "False", "False", "True");
    assert_eq!(desired(&plan, condition::STALLED).reason, reason::ANALYSIS_FAILED);
    assert_eq!(desired(&plan, condition::PAUSED).reason, reason::ANALYSIS_FAILED);
    // The next background analysis fails again without a second pause or Event.
    assert_eq!(plan.requeue_at, Some(t(600 + 3600)));
    let plan = sim.at(600 + 3600);
    assert_eq!(plan.events, []);
    assert_eq!(plan.status.pause_conditions.len(), 1);
    // Promote passes the failed analysis step.
    sim.command(annotation::PROMOTE, "accept");
    let plan = sim.at(600 + 3700);
    assert_eq!(
        reasons(&plan),
        [
            reason::PROMOTED,
            reason::PERCENT_INCREASED,
            reason::ROLLOUT_COMPLETED
        ]
    );
}

#[test]
fn the_background_analysis_runs_every_interval_and_acts_only_with_enough_attempts() {
    let mut sim = Sim::new(staged()); // interval 2h, minAttempts 50, rollback
    let plan = sim.at(0);
    assert_eq!(plan.status.analysis, None);
    sim.figures = counts(40, 40); // every attempt failed, but too few of them
    let plan = sim.at(3600);
    assert_eq!(plan.status.analysis, None, "not due before the interval");
    let plan = sim.at(7200);
    assert_eq!(plan.status.analysis.as_ref().unwrap().evaluated_at, Time(t(7200)));
    assert_eq!(sim.position(), (Some(Paused), 3, 50));
    assert_eq!(plan.requeue_at, Some(t(2 * 7200)));
    // Failing figures arrive: nothing happens until the next due time, exactly.
    sim.figures = counts(500, 100);
    assert_eq!(sim.at(2 * 7200 - 1).events, []);
    let plan = sim.at(2 * 7200);
    assert_eq!(reasons(&plan), [reason::ABORTED]);
    assert!(
        plan.events[0]
            .note
            .starts_with("Aborted by the background analysis: 100 failures in 500 attempts")
    );
    assert_eq!(sim.position(), (Some(Aborted), 3, 0));
}

#[test]
fn a_late_decision_runs_the_analysis_once_and_schedules_from_now() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.figures = counts(100, 0);
    let plan = sim.at(5 * 7200 + 17);
    assert_eq!(
        plan.status.analysis.as_ref().unwrap().evaluated_at,
        Time(t(5 * 7200 + 17))
    );
    assert_eq!(plan.requeue_at, Some(t(6 * 7200 + 17)));
}

#[test]
fn the_failure_rate_must_exceed_the_maximum_at_the_lower_bound() {
    // 6 failures in 50 attempts is 12%, far above 5%, but its 95% lower bound is 6.3%: fails.
    // 15 in 200 is 7.5%, but its lower bound is 4.97%: passes.
    for (failures, attempts, aborted) in [(6, 50, true), (15, 200, false), (3, 60, false), (0, 50, false)] {
        let mut sim = Sim::new(analysed(json!({})));
        sim.at(0);
        sim.figures = counts(attempts, failures);
        sim.at(300);
        assert_eq!(
            sim.status().phase == Some(Aborted),
            aborted,
            "{failures}/{attempts}: {:?}",
            sim.status().analysis
        );
    }
}

#[test]
fn the_background_analysis_pauses_a_rollout_a_person_paused_without_a_second_pause() {
    let mut sim = Sim::new(rollout_with(
        json!([{"setPercent": 10}, {"pause": {}}, {"setPercent": 100}]),
        json!({"interval": "1m", "action": "pause"}),
    ));
    sim.at(0);
    sim.command(annotation::PAUSE, "me");
    sim.at(10);
    sim.figures = counts(1000, 500);
    let plan = sim.at(60);
    assert_eq!(reasons(&plan), [reason::ANALYSIS_FAILED]);
    let reasons_held: Vec<&str> = plan
        .status
        .pause_conditions
        .iter()
        .map(|p| p.reason.as_str())
        .collect();
    assert_eq!(
        reasons_held,
        [
            reason::WAITING_FOR_PROMOTION,
            reason::PAUSED_BY_USER,
            reason::ANALYSIS_FAILED
        ]
    );
    assert_eq!(desired(&plan, condition::STALLED).reason, reason::ANALYSIS_FAILED);
    assert_eq!(sim.at(120).events, []);
}

#[test]
fn unusable_figures_hold_the_analysis_and_say_why() {
    for (figures, says) in [
        (None, "the device store could not be read"),
        (counts(10, 11), "inconsistent figures: 11 failures in 10 attempts"),
        (counts(-1, 0), "negative figures"),
    ] {
        let mut sim = Sim::new(analysed(json!({})));
        sim.at(0);
        sim.figures = figures;
        let plan = sim.at(300);
        assert_eq!(reasons(&plan), [reason::ANALYSIS_UNAVAILABLE], "{says}");
        assert_eq!(plan.events[0].kind, EventKind::Warning);
        assert!(plan.events[0].note.contains(says), "{}", plan.events[0].note);
        assert_eq!(
            desired(&plan, condition::RECONCILING).reason,
            reason::ANALYSIS_UNAVAILABLE
        );
        assert_eq!(sim.position(), (Some(Progressing), 1, 20));
        assert_eq!(plan.requeue_at, Some(t(600)));
        // Still unusable later: no second Event.
        assert_eq!(sim.at(600).events, []);
        // Usable again: the analysis goes on.
        sim.figures = counts(100, 0);
        let plan = sim.at(900);
        assert_eq!(
            reasons(&plan),
            [
                reason::ANALYSIS_PASSED,
                reason::PERCENT_INCREASED,
                reason::ROLLOUT_COMPLETED
            ]
        );
    }
}

// ---------------------------------------------------------------- candidate and new versions

#[test]
fn nothing_advances_until_the_candidate_is_synced() {
    let mut sim = Sim::new(staged());
    sim.candidate = CandidateSync::Pending;
    let plan = sim.at(0);
    assert_eq!(
        reasons(&plan),
        [reason::ROLLOUT_STARTED, reason::REFERENCE_NOT_READY]
    );
    assert_eq!(sim.position(), (Some(Progressing), 0, 0));
    assert_kstatus(&plan, "False", "True", "False");
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap()
            .starts_with("Waiting for Bundle shop-1.5.0 to sync")
    );
    assert_eq!(sim.at(60).events, []);
    // promote-full still waits for the sync: nothing completes with a bundle that cannot be served.
    sim.command(annotation::PROMOTE_FULL, "x");
    let plan = sim.at(70);
    assert_eq!(reasons(&plan), [reason::PROMOTED_FULL]);
    assert_eq!(sim.position(), (Some(Progressing), 5, 0));
    assert_eq!(plan.record_stable, None);

    sim.candidate = CandidateSync::Failed {
        reason: reason::CHECKSUM_MISMATCH.into(),
        message: "expected a, got b".into(),
    };
    let plan = sim.at(80);
    assert_eq!(reasons(&plan), [reason::REFERENCE_NOT_READY]);
    assert_eq!(plan.events[0].kind, EventKind::Warning);
    assert_kstatus(&plan, "False", "False", "True");
    assert!(
        plan.events[0]
            .note
            .contains("cannot be synced (ChecksumMismatch: expected a, got b)")
    );

    sim.candidate = CandidateSync::Synced;
    let plan = sim.at(90);
    assert_eq!(reasons(&plan), [reason::ROLLOUT_COMPLETED]);
}

#[test]
fn candidate_sync_is_read_from_the_bundle_status() {
    assert_eq!(
        CandidateSync::of(&bundle("b", "1.0.0", json!({}))),
        CandidateSync::Synced
    );
    assert_eq!(
        CandidateSync::of(&unsynced_bundle("b", "1.0.0")),
        CandidateSync::Pending
    );
    let mut broken = unsynced_bundle("b", "1.0.0");
    broken.status = Some(
        serde_json::from_value(json!({"conditions": [
            {"type": "Synced", "status": "False", "reason": "InvalidArchive", "message": "bad", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Stalled", "status": "True", "reason": "InvalidArchive", "message": "a symlink", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]}))
        .expect("a status"),
    );
    assert_eq!(
        CandidateSync::of(&broken),
        CandidateSync::Failed {
            reason: "InvalidArchive".into(),
            message: "a symlink".into()
        }
    );
}

#[test]
fn a_new_bundle_ref_starts_a_new_rollout_from_the_current_stable() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::PROMOTE_FULL, "1");
    sim.at(10);
    assert_eq!(sim.position(), (Some(Completed), 5, 100));
    // The shell recorded 1.5.0 as the channel's stable; git names the next candidate.
    sim.stable = Some(CANDIDATE.into());
    sim.rollout.spec.bundle_ref = "shop-1.6.0".into();
    sim.rollout.metadata.generation = Some(2);
    let plan = sim.at(100);
    assert_eq!(
        reasons(&plan),
        [
            reason::ROLLOUT_STARTED,
            reason::PERCENT_INCREASED,
            reason::PAUSE_STEP
        ]
    );
    assert_eq!(sim.position(), (Some(Paused), 1, 10));
    let status = &plan.status;
    assert_eq!(status.stable_bundle.as_deref(), Some(CANDIDATE));
    assert_eq!(status.candidate_bundle.as_deref(), Some("shop-1.6.0"));
    assert_eq!(
        (status.completed_at.clone(), status.started_at.clone()),
        (None, Some(Time(t(100))))
    );
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(plan.record_stable, None);
    // The handled promote-full is not replayed on the new rollout.
    assert_eq!(
        status
            .handled_commands
            .get(annotation::PROMOTE_FULL)
            .map(String::as_str),
        Some("1")
    );
    assert_kstatus(&plan, "False", "True", "False");
    assert_eq!(
        desired(&plan, condition::COMPLETED).status,
        ConditionStatus::False
    );
}

#[test]
fn a_new_bundle_ref_also_leaves_an_aborted_rollout() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    sim.command(annotation::ABORT, "1");
    sim.at(10);
    sim.rollout.spec.bundle_ref = "shop-1.5.1".into();
    let plan = sim.at(20);
    assert_eq!(reasons(&plan)[0], reason::ROLLOUT_STARTED);
    assert_eq!(sim.position(), (Some(Paused), 1, 10));
    assert_eq!(plan.status.aborted_at, None);
    assert_kstatus(&plan, "False", "True", "False");
}

#[test]
fn a_status_without_a_phase_starts_the_rollout() {
    let mut sim = Sim::new(staged());
    sim.rollout.status = Some(RolloutStatus {
        candidate_bundle: Some(CANDIDATE.into()),
        current_percent: Some(40),
        ..RolloutStatus::default()
    });
    let plan = sim.at(0);
    assert_eq!(reasons(&plan)[0], reason::ROLLOUT_STARTED);
    assert_eq!(sim.position(), (Some(Paused), 1, 10));
}

#[test]
fn a_candidate_that_already_is_the_stable_bundle_completes_at_once() {
    let mut sim = Sim::new(staged());
    sim.stable = Some(CANDIDATE.into());
    let plan = sim.at(0);
    assert_eq!(
        reasons(&plan),
        [reason::ROLLOUT_STARTED, reason::ROLLOUT_COMPLETED]
    );
    assert_eq!(sim.position(), (Some(Completed), 5, 100));
}

#[test]
fn a_channel_on_builtin_rolls_out_from_builtin() {
    let mut sim = Sim::new(staged());
    sim.stable = None;
    let plan = sim.at(0);
    assert_eq!(plan.status.stable_bundle, None);
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap()
            .contains("the others get the assets built into the app")
    );
    sim.command(annotation::ABORT, "x");
    let plan = sim.at(10);
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap()
            .contains("the assets built into the app is served to every device")
    );
}

#[test]
fn the_salt_comes_from_the_spec_then_the_uid_then_the_name() {
    let mut with_salt = staged();
    with_salt.spec.salt = Some("shared-cohort".into());
    let mut without_uid = staged();
    without_uid.metadata.uid = None;
    for (rollout, salt) in [
        (staged(), "uid-ro"),
        (with_salt, "shared-cohort"),
        (without_uid, "shop-ns/ro"),
    ] {
        let mut sim = Sim::new(rollout);
        assert_eq!(sim.at(0).status.salt.as_deref(), Some(salt));
    }
}

// ---------------------------------------------------------------- spec edits

#[test]
fn editing_steps_mid_rollout_keeps_the_position_and_never_lowers_the_percent() {
    let steps = |value: Value| -> Vec<crate::api::rollout::RolloutStep> {
        serde_json::from_value(value).expect("steps")
    };
    let mut sim = Sim::new(staged());
    sim.at(0);
    // The pause becomes 2h: its end moves with it, from the same start.
    sim.rollout.spec.steps[1].pause.as_mut().unwrap().duration = Some("2h".into());
    let plan = sim.at(60);
    assert_eq!(plan.status.pause_conditions[0].until, Some(Time(t(7200))));
    assert_eq!(plan.requeue_at, Some(t(7200)));
    // The pause step becomes a percent: the pause goes and the walk goes on.
    sim.rollout.spec.steps[1] = serde_json::from_value(json!({"setPercent": 30})).unwrap();
    let plan = sim.at(120);
    assert_eq!(plan.status.pause_conditions.len(), 1);
    assert_eq!(
        reasons(&plan),
        [
            reason::PERCENT_INCREASED,
            reason::PERCENT_INCREASED,
            reason::WAITING_FOR_PROMOTION
        ]
    );
    assert_eq!(sim.position(), (Some(Paused), 3, 50));
    // Lower percents ahead: passing them keeps 50%.
    sim.rollout.spec.steps = steps(json!([
        {"setPercent": 5}, {"setPercent": 20}, {"setPercent": 30}, {"pause": {}},
        {"setPercent": 40}, {"pause": {}}, {"setPercent": 100}
    ]));
    assert_eq!(sim.at(180).events, []);
    sim.command(annotation::PROMOTE, "x");
    let plan = sim.at(240);
    assert_eq!(reasons(&plan), [reason::PROMOTED, reason::WAITING_FOR_PROMOTION]);
    assert_eq!(sim.position(), (Some(Paused), 5, 50));
    // Steps cut below the position: the rollout completes.
    sim.rollout.spec.steps.truncate(2);
    let plan = sim.at(300);
    assert_eq!(reasons(&plan), [reason::ROLLOUT_COMPLETED]);
    assert_eq!(sim.position(), (Some(Completed), 2, 100));
}

// ---------------------------------------------------------------- what the server serves

#[test]
fn the_update_server_serves_what_the_status_says() {
    let mut sim = Sim::new(staged());
    let served = |sim: &Sim| {
        let mut inputs = fixtures::inputs();
        inputs.channels = vec![channel("production", Some(STABLE), json!({"public": true}))];
        inputs.rollouts = vec![sim.rollout.clone()];
        let (snapshot, problems) = Snapshot::build(&inputs);
        assert_eq!(problems, []);
        let app = snapshot.app(fixtures::APP_ID).expect("the app").clone();
        app.channels["production"]
            .rollout
            .as_ref()
            .map(|r| (r.candidate.name.clone(), r.percent, r.salt.clone()))
    };
    sim.at(0);
    assert_eq!(served(&sim), Some((CANDIDATE.into(), 10, "uid-ro".into())));
    sim.at(3600);
    assert_eq!(served(&sim), Some((CANDIDATE.into(), 50, "uid-ro".into())));
    sim.command(annotation::ABORT, "x");
    sim.at(3700);
    assert_eq!(served(&sim), None, "aborted: the stable bundle to every device");
    sim.command(annotation::RETRY, "x");
    sim.at(3800);
    assert_eq!(served(&sim), Some((CANDIDATE.into(), 10, "uid-ro".into())));
    sim.command(annotation::PROMOTE_FULL, "x");
    sim.at(3900);
    assert_eq!(
        served(&sim),
        None,
        "completed: served through the Channel's promotion, not as a rollout"
    );
}

#[test]
fn the_figures_window_starts_no_earlier_than_the_rollout() {
    let mut sim = Sim::new(staged()); // window 1h by default
    assert_eq!(figures_since(&sim.rollout, t(0)), Ok(t(0)), "not started yet");
    sim.at(0);
    assert_eq!(figures_since(&sim.rollout, t(600)), Ok(t(0)));
    assert_eq!(figures_since(&sim.rollout, t(5 * 3600)), Ok(t(4 * 3600)));
    sim.rollout.spec.bundle_ref = "shop-1.6.0".into();
    assert_eq!(
        figures_since(&sim.rollout, t(5 * 3600)),
        Ok(t(5 * 3600)),
        "a new candidate"
    );
    sim.rollout.spec.analysis.window = "forever".into();
    assert_eq!(
        figures_since(&sim.rollout, t(0)).unwrap_err().reason,
        reason::INVALID_SPEC
    );
}

#[test]
fn condition_times_move_only_when_a_condition_flips() {
    let mut sim = Sim::new(staged());
    sim.at(0);
    let time_of = |sim: &Sim, type_: &str| {
        sim.status()
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.last_transition_time.clone())
            .expect(type_)
    };
    sim.at(3600);
    assert_eq!(time_of(&sim, condition::RECONCILING), Time(t(0)));
    assert_eq!(time_of(&sim, condition::PAUSED), Time(t(0)));
    sim.command(annotation::PROMOTE, "x");
    sim.at(4000);
    assert_eq!(time_of(&sim, condition::READY), Time(t(4000)));
    assert_eq!(time_of(&sim, condition::COMPLETED), Time(t(4000)));
}

// ---------------------------------------------------------------- outcome retention

#[test]
fn outcomes_are_kept_for_the_analysis_window_and_a_day() {
    let day = Duration::from_secs(24 * 3600);
    let hours = |n: u64| Duration::from_secs(n * 3600);
    assert_eq!(
        outcome_retention(&staged()),
        hours(1) + day,
        "the default window is 1h"
    );
    assert_eq!(
        outcome_retention(&analysed(json!({"window": "72h"}))),
        hours(72) + day
    );
    // A spec invalid for another reason keeps its window: it reads it once mended.
    let invalid = rollout_with(json!([]), json!({"window": "72h"}));
    assert!(Settings::parse(&invalid.spec).is_err());
    assert_eq!(outcome_retention(&invalid), hours(72) + day);
    // A window that does not parse keeps the longest a Rollout may name.
    let unreadable = analysed(json!({"window": "forever"}));
    assert_eq!(outcome_retention(&unreadable), MAX_DURATION + day);
}

// ---------------------------------------------------------------- restart safety

/// One decision of a scripted rollout: when, a command written before it, the figures, and
/// whether the candidate is synced.
type ScriptStep = (
    i64,
    Option<(&'static str, &'static str)>,
    Option<FailureCounts>,
    bool,
);

fn script() -> Vec<ScriptStep> {
    vec![
        (0, None, counts(0, 0), false),
        (30, None, counts(0, 0), true),
        (300, None, counts(20, 0), true),
        (600, None, counts(80, 1), true),
        (900, Some((annotation::PAUSE, "1")), counts(90, 1), true),
        (1200, Some((annotation::PROMOTE, "1")), counts(120, 2), true),
        (4000, None, counts(300, 3), true),
        (5000, Some((annotation::ABORT, "1")), counts(300, 3), true),
        (6000, Some((annotation::RETRY, "1")), counts(300, 3), true),
        (6300, None, counts(10, 0), true),
        (9000, None, counts(400, 100), true),
    ]
}

fn scripted_rollout() -> Rollout {
    rollout_with(
        json!([{"setPercent": 5}, {"analysis": {}}, {"setPercent": 25}, {"pause": {"duration": "30m"}},
               {"setPercent": 50}, {"pause": {}}, {"analysis": {}}, {"setPercent": 100}]),
        json!({"interval": "5m", "minAttempts": 50}),
    )
}

/// Runs the script, restarting the controller (losing everything but the stored Rollout, which
/// goes through JSON as the API server stores it) before the decisions `restart_before` selects.
fn run_script(restart_before: impl Fn(usize) -> bool) -> Vec<RolloutPlan> {
    let mut sim = Sim::new(scripted_rollout());
    let mut plans = Vec::new();
    for (i, (seconds, command, figures, synced)) in script().into_iter().enumerate() {
        if restart_before(i) {
            let stored = serde_json::to_string(&sim.rollout).expect("serializes");
            sim = Sim {
                rollout: serde_json::from_str(&stored).expect("deserializes"),
                ..Sim::new(scripted_rollout())
            };
        }
        if let Some((key, value)) = command {
            sim.command(key, value);
        }
        sim.figures = figures;
        sim.candidate = match synced {
            true => CandidateSync::Synced,
            false => CandidateSync::Pending,
        };
        plans.push(sim.at(seconds));
    }
    plans
}

#[test]
fn a_restart_at_any_point_gives_the_same_plans() {
    let reference = run_script(|_| false);
    let phases: Vec<_> = reference
        .iter()
        .map(|p| (p.status.phase, p.status.current_percent))
        .collect();
    assert_eq!(
        phases,
        [
            (Some(Progressing), Some(0)),
            (Some(Progressing), Some(5)),
            (Some(Progressing), Some(5)),
            (Some(Paused), Some(25)),
            (Some(Paused), Some(25)),
            (Some(Paused), Some(50)),
            (Some(Paused), Some(50)),
            (Some(Aborted), Some(0)),
            (Some(Progressing), Some(5)),
            (Some(Progressing), Some(5)),
            (Some(Aborted), Some(0)),
        ]
    );
    for restart in 0..script().len() {
        assert_eq!(
            run_script(|i| i == restart),
            reference,
            "restart before decision {restart}"
        );
    }
    assert_eq!(run_script(|_| true), reference, "a restart before every decision");
}

#[test]
fn a_decision_lost_in_a_crash_is_taken_again_later_at_the_same_step() {
    // The controller decided at the end of the pause but died before writing; the next one
    // decides 100 s later.
    let mut sim = Sim::new(staged());
    sim.at(0);
    let lost = sim.plan_at(3600);
    assert_eq!(lost.status.current_percent, Some(50));
    let late = sim.at(3700);
    assert_eq!(
        (
            late.status.current_step_index,
            late.status.current_percent,
            late.status.salt.clone()
        ),
        (
            lost.status.current_step_index,
            lost.status.current_percent,
            lost.status.salt.clone()
        )
    );
    assert_eq!(reasons(&late), reasons(&lost));
}

// ---------------------------------------------------------------- properties

#[derive(Debug, Clone)]
enum Action {
    Wait(i64),
    Command(usize),
    Figures(i64, i64),
    Candidate(u8),
    NewBundle,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1i64..4000).prop_map(Action::Wait),
        2 => (0usize..5).prop_map(Action::Command),
        2 => (0i64..400, 0i64..400).prop_map(|(a, f)| Action::Figures(a, f.min(a))),
        1 => (0u8..4).prop_map(Action::Candidate),
        1 => Just(Action::NewBundle),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens, each decision is a fixed point (checked by `Sim::at`), never asks to be
    /// woken at or before now, keeps the percent within 0..=100, never lowers it while the same
    /// rollout runs, and reports 0% when aborted and 100% (with the stable to record) when
    /// completed.
    #[test]
    fn the_percent_only_rises_within_a_rollout(
        actions in proptest::collection::vec(action(), 1..40),
        pause_action in any::<bool>(),
    ) {
        let mut rollout = rollout_with(
            json!([{"setPercent": 5}, {"pause": {"duration": "30m"}}, {"analysis": {}}, {"setPercent": 40},
                   {"pause": {}}, {"analysis": {}}, {"setPercent": 100}]),
            json!({"interval": "5m", "minAttempts": 20, "maxFailureRate": 0.1}),
        );
        if pause_action {
            rollout.spec.analysis.action = AnalysisAction::Pause;
        }
        let mut sim = Sim::new(rollout);
        let mut now = 0;
        let mut last = sim.at(now);
        let commands = [annotation::RETRY, annotation::PROMOTE_FULL, annotation::PROMOTE, annotation::PAUSE, annotation::ABORT];
        let mut versions = 0;
        for (i, action) in actions.into_iter().enumerate() {
            match action {
                Action::Wait(seconds) => now += seconds,
                Action::Command(c) => sim.command(commands[c], &i.to_string()),
                Action::Figures(attempts, failures) => sim.figures = counts(attempts, failures),
                Action::Candidate(c) => sim.candidate = match c {
                    0 => CandidateSync::Pending,
                    1 => CandidateSync::Failed { reason: "InvalidArchive".into(), message: "x".into() },
                    _ => CandidateSync::Synced,
                },
                Action::NewBundle => {
                    versions += 1;
                    sim.rollout.spec.bundle_ref = format!("shop-2.0.{versions}");
                }
            }
            let plan = sim.at(now);
            let status = &plan.status;
            let percent = status.current_percent.unwrap_or(0);
            prop_assert!((0..=100).contains(&percent));
            let same_rollout = status.started_at == last.status.started_at
                && status.candidate_bundle == last.status.candidate_bundle;
            if same_rollout && status.phase != Some(Aborted) {
                prop_assert!(percent >= last.status.current_percent.unwrap_or(0), "{:?} → {:?}", last.status, status);
            }
            match status.phase {
                Some(Aborted) => prop_assert_eq!(percent, 0),
                Some(Completed) => {
                    prop_assert_eq!(percent, 100);
                    prop_assert_eq!(plan.record_stable.as_deref(), status.candidate_bundle.as_deref());
                }
                _ => prop_assert!(plan.requeue_at.is_some()),
            }
            prop_assert_eq!(status.salt.as_deref(), Some("uid-ro"));
            last = plan;
        }
    }
}
