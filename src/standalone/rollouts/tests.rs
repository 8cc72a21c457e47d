use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::*;
use crate::api::rollout::RolloutPhase;
use crate::core::rollout::measurement::{MetricValue, ProviderRequest};
use crate::{
    api::{App, Bundle, constants::reason},
    core::fixtures::{self, APP_ID, NS, bundle, channel, unsynced_bundle},
    core::rollout::promotion_of,
    devices::{OutcomeReport, RolloutStateRow, Write},
};

const STABLE: &str = "shop-1.4.2";
const CANDIDATE: &str = "shop-1.5.0";

/// The figures `rollout` needs at `now` from the world's objects.
fn figures_query(rollout: &Rollout, objects: &Objects<'_>, now: Timestamp) -> Option<FiguresQuery> {
    crate::core::rollout::figures_query(rollout, objects.apps, objects.channels, objects.bundles, now)
}

/// The core's decision for `rollout` from the world's objects.
fn decide(
    rollout: &Rollout,
    objects: &Objects<'_>,
    figures: Option<FailureCounts>,
    now: Timestamp,
) -> crate::core::rollout::RolloutPlan {
    crate::core::rollout::decide(rollout, objects.channels, objects.bundles, figures, &[], now)
}

/// A metric source for Rollouts without metrics (any measurement would be an error).
fn no_metrics() -> Arc<dyn crate::rollout_driver::SharedMetricSource> {
    Arc::new(crate::rollout_driver::ScriptedMetrics::new(Arc::new(
        crate::clock::TestClock::at(at(0)),
    )))
}
/// A Rollout as standalone mode reads it: no uid, no generation, no status.
fn rollout_of(name: &str, steps: Value, analysis: Value, annotations: Value) -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "ota.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"channelRef": "production", "bundleRef": CANDIDATE, "steps": steps, "analysis": analysis},
    }))
    .expect("a Rollout")
}

/// 10% → pause 1h → 50% → pause until promoted → 100%.
fn staged() -> Rollout {
    rollout_of(
        "ro",
        json!([{"setPercent": 10}, {"pause": {"duration": "1h"}}, {"setPercent": 50}, {"pause": {}}, {"setPercent": 100}]),
        json!({"interval": "2h"}),
        json!({}),
    )
}

/// 20% → pause until promoted → 100%, analysed every 10 s (at least 20 attempts, 5% at most).
fn guarded() -> Rollout {
    rollout_of(
        "ro",
        json!([{"setPercent": 20}, {"pause": {}}, {"setPercent": 100}]),
        json!({"interval": "10s", "minAttempts": 20, "maxFailureRate": 0.05, "window": "1h"}),
        json!({}),
    )
}

struct World {
    apps: Vec<App>,
    channels: Vec<Channel>,
    bundles: Vec<Bundle>,
}

fn world() -> World {
    World {
        apps: vec![fixtures::app("shop", APP_ID, json!({}))],
        channels: vec![channel("production", Some(STABLE), json!({"public": true}))],
        bundles: vec![
            bundle(STABLE, "1.4.2", json!({})),
            bundle(CANDIDATE, "1.5.0", json!({})),
        ],
    }
}

impl World {
    fn objects(&self) -> Objects<'_> {
        Objects {
            apps: &self.apps,
            channels: &self.channels,
            bundles: &self.bundles,
        }
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("a time")
}

fn zero() -> Option<FailureCounts> {
    Some(FailureCounts {
        attempts: 0,
        failures: 0,
    })
}

fn key(name: &str) -> ObjectKey {
    (NS.to_owned(), name.to_owned())
}

// ---------------------------------------------------------------- pure parts

#[test]
fn saved_states_read_back_and_unreadable_rows_are_reported_not_fatal() {
    let status = RolloutStatus {
        phase: Some(RolloutPhase::Paused),
        current_step_index: Some(3),
        current_percent: Some(50),
        salt: Some("shop-ns/ro".to_owned()),
        ..RolloutStatus::default()
    };
    let promoted = PromotedBundle {
        bundle: CANDIDATE.to_owned(),
        over_bundle_ref: Some(STABLE.to_owned()),
        rollout: "ro".to_owned(),
    };
    let row = |name: &str, json: String| RolloutStateRow {
        namespace: NS.to_owned(),
        name: name.to_owned(),
        json,
        at_ms: 1,
    };
    let rollout_json = serde_json::to_string(&StoredState::Rollout {
        status: Box::new(status.clone()),
    })
    .unwrap();
    let channel_json = serde_json::to_string(&StoredState::Channel {
        promoted: promoted.clone(),
    })
    .unwrap();
    let states = States::from_rows(&[
        row("ro", rollout_json.clone()),
        row("Channel/production", channel_json.clone()),
        row("broken", "{not json".to_owned()),
        row("other", json!({"kind": "gadget"}).to_string()),
        row("Channel/beta", rollout_json),
        row("misplaced", channel_json),
    ]);
    assert_eq!(states.rollouts, BTreeMap::from([(key("ro"), status)]));
    assert_eq!(states.promotions, BTreeMap::from([(key("production"), promoted)]));
    assert_eq!(states.unreadable.len(), 4, "{:#?}", states.unreadable);
    assert!(
        states
            .unreadable
            .iter()
            .any(|p| p.starts_with("shop-ns/broken: not a saved rollout state"))
    );
    assert!(
        states
            .unreadable
            .iter()
            .any(|p| p.starts_with("shop-ns/other: not a saved rollout state"))
    );
    assert!(
        states
            .unreadable
            .iter()
            .any(|p| p.contains("Channel/beta: a Rollout status under a channel's name"))
    );
    assert!(
        states
            .unreadable
            .iter()
            .any(|p| p.contains("misplaced: a channel promotion under a Rollout's name"))
    );
}

#[test]
fn the_figures_are_asked_for_the_candidate_version_in_its_channel_since_the_rollout_started() {
    let world = world();
    let mut rollout = guarded();
    // Not started: the figures cover nothing yet (from now).
    let query = figures_query(&rollout, &world.objects(), at(100)).expect("a query");
    assert_eq!(
        query,
        FiguresQuery {
            app_id: APP_ID.to_owned(),
            channel: "production".to_owned(),
            version: "1.5.0".to_owned(),
            since_ms: at(100).as_millisecond(),
        }
    );
    // Started at 0 with a 1h window: since the start, until the window is shorter than that.
    rollout.status = Some(decide(&rollout, &world.objects(), zero(), at(0)).status);
    let query = figures_query(&rollout, &world.objects(), at(100)).expect("a query");
    assert_eq!(query.since_ms, at(0).as_millisecond());
    let query = figures_query(&rollout, &world.objects(), at(7_200)).expect("a query");
    assert_eq!(query.since_ms, at(3_600).as_millisecond());
}

#[test]
fn no_figures_are_asked_when_the_channel_the_candidate_or_the_app_is_missing() {
    let mut world = world();
    let rollout = guarded();
    world.apps.clear();
    assert_eq!(figures_query(&rollout, &world.objects(), at(0)), None);
    let mut world = self::world();
    world
        .bundles
        .retain(|b| b.metadata.name.as_deref() != Some(CANDIDATE));
    assert_eq!(figures_query(&rollout, &world.objects(), at(0)), None);
    let mut world = self::world();
    world.channels.clear();
    assert_eq!(figures_query(&rollout, &world.objects(), at(0)), None);
}

#[test]
fn a_rollout_on_a_missing_channel_or_of_another_apps_bundle_is_stalled_with_the_reason() {
    let mut world = world();
    world.channels.clear();
    let plan = decide(&staged(), &world.objects(), zero(), at(0));
    assert_eq!(plan.status.phase, None);
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap()
            .contains("Channel production does not exist"),
        "{:?}",
        plan.status.message
    );
    assert_eq!(plan.requeue_at, None);
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.events[0].reason, reason::REFERENCE_NOT_FOUND);

    let mut world = self::world();
    world.bundles[1] = bundle(CANDIDATE, "1.5.0", json!({"appRef": "other"}));
    let plan = decide(&staged(), &world.objects(), zero(), at(0));
    assert_eq!(plan.events[0].reason, reason::INVALID_SPEC);
}

#[tokio::test]
async fn a_rollout_whose_spec_no_api_server_checked_is_stalled_with_the_reason_and_saved() {
    let store = store().await;
    let world = world();
    // Standalone YAML skips the API server's schema: the core checks it again.
    let bad = [
        (
            json!([{"setPercent": 50}, {"setPercent": 20}]),
            json!({}),
            "must not decrease",
        ),
        (
            json!([{"pause": {"duration": "soon"}}]),
            json!({}),
            "is not a duration",
        ),
        (
            json!([{"setPercent": 10}]),
            json!({"interval": "0s"}),
            "must be at least",
        ),
        (
            json!([{"setPercent": 10}, {"setPercent": 20, "analysis": {}}]),
            json!({}),
            "exactly one of",
        ),
        // What no CRD rule can refuse: a condition that is not CEL, an unknown placeholder.
        (
            json!([{"setPercent": 10}]),
            json!({"metrics": [{"name": "error-rate", "successCondition": "result <",
                "prometheus": {"address": "http://prometheus:9090", "query": "errors"}}]}),
            "metric error-rate: successCondition \"result <\" is not a CEL expression",
        ),
        (
            json!([{"setPercent": 10}]),
            json!({"metrics": [{"name": "error-rate", "successCondition": "result < 0.01",
                "prometheus": {"address": "http://prometheus:9090", "query": "errors{v=\"{{version}}\"}"}}]}),
            "metric error-rate: prometheus.query: {{version}} is not a placeholder",
        ),
    ];
    for (steps, analysis, why) in bad {
        let rollout = rollout_of("bad", steps, analysis, json!({}));
        let mut driver = RolloutDriver::open(store.clone(), no_metrics()).await.unwrap();
        let next = driver
            .drive(&load(&world, std::slice::from_ref(&rollout)), at(0))
            .await;
        assert_eq!(next, None, "an invalid spec waits for the YAML to change");
        let status = &driver.states().rollouts[&key("bad")];
        assert_eq!(status.phase, None, "nothing is served: {status:?}");
        let message = status.message.as_deref().unwrap_or_default();
        assert!(message.contains(why), "{why}: {message}");
        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .expect("Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", reason::INVALID_SPEC)
        );
        assert_eq!(read_states(&store).await.unwrap().rollouts[&key("bad")], *status);
    }
}

#[test]
fn a_rollout_walks_with_the_cores_decisions_and_the_salt_of_its_name() {
    let world = world();
    let mut rollout = staged();
    let plan = decide(&rollout, &world.objects(), zero(), at(0));
    assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(plan.status.current_percent, Some(10));
    assert_eq!(plan.status.stable_bundle.as_deref(), Some(STABLE));
    // No uid in standalone mode: the cohort's salt is the Rollout's namespace and name, the
    // same after any restart.
    assert_eq!(plan.status.salt.as_deref(), Some("shop-ns/ro"));
    assert_eq!(plan.requeue_at, Some(at(3_600)));
    rollout.status = Some(plan.status);
    // Deciding again at the same time changes nothing.
    let again = decide(&rollout, &world.objects(), zero(), at(0));
    assert_eq!(Some(&again.status), rollout.status.as_ref());
    assert!(again.events.is_empty());
    // An unsynced candidate holds the rollout at 0%.
    let mut unsynced = self::world();
    unsynced.bundles[1] = unsynced_bundle(CANDIDATE, "1.5.0");
    let plan = decide(&staged(), &unsynced.objects(), zero(), at(0));
    assert_eq!(plan.status.current_percent, Some(0));
}

#[test]
fn a_new_rollout_starts_from_the_channels_promoted_bundle_while_its_bundle_ref_is_unchanged() {
    let world = world();
    let promotions = BTreeMap::from([(
        key("production"),
        PromotedBundle {
            bundle: "shop-1.4.9".to_owned(),
            over_bundle_ref: Some(STABLE.to_owned()),
            rollout: "earlier".to_owned(),
        },
    )]);
    let channels = with_promotions(&world.channels, &promotions);
    let objects = Objects {
        channels: &channels,
        ..world.objects()
    };
    let plan = decide(&staged(), &objects, zero(), at(0));
    assert_eq!(plan.status.stable_bundle.as_deref(), Some("shop-1.4.9"));
    // git moved the channel's bundleRef since: git's choice wins.
    let mut moved = world.channels.clone();
    moved[0].spec.bundle_ref = Some("shop-1.4.8".to_owned());
    let channels = with_promotions(&moved, &promotions);
    let objects = Objects {
        channels: &channels,
        ..world.objects()
    };
    let plan = decide(&staged(), &objects, zero(), at(0));
    assert_eq!(plan.status.stable_bundle.as_deref(), Some("shop-1.4.8"));
}

#[test]
fn only_the_completing_decision_records_the_candidate_as_the_channels_stable_bundle() {
    let world = world();
    let rollout = rollout_of("ro", json!([{"setPercent": 100}]), json!({}), json!({}));
    let plan = decide(&rollout, &world.objects(), zero(), at(0));
    assert_eq!(plan.status.phase, Some(RolloutPhase::Completed));
    let promoted = promotion_of(&rollout, &plan, &world.channels[0]).expect("a promotion");
    assert_eq!(
        promoted,
        PromotedBundle {
            bundle: CANDIDATE.to_owned(),
            over_bundle_ref: Some(STABLE.to_owned()),
            rollout: "ro".to_owned(),
        }
    );
    // Later decisions of the completed rollout repeat record_stable but record nothing, so a
    // bundleRef that git moves afterwards is not taken back.
    let mut completed = rollout.clone();
    completed.status = Some(plan.status.clone());
    let later = decide(&completed, &world.objects(), zero(), at(60));
    assert_eq!(later.record_stable.as_deref(), Some(CANDIDATE));
    assert_eq!(promotion_of(&completed, &later, &world.channels[0]), None);
    // A rollout that is still progressing records nothing.
    let plan = decide(&staged(), &world.objects(), zero(), at(0));
    assert_eq!(promotion_of(&staged(), &plan, &world.channels[0]), None);
}

#[test]
fn statuses_and_promotions_are_attached_by_namespace_and_name() {
    let world = world();
    let mut other_namespace = staged();
    other_namespace.metadata.namespace = Some("elsewhere".to_owned());
    let statuses = BTreeMap::from([(
        key("ro"),
        RolloutStatus {
            current_percent: Some(42),
            ..RolloutStatus::default()
        },
    )]);
    let rollouts = with_statuses(&[staged(), other_namespace], &statuses);
    assert_eq!(rollouts[0].status.as_ref().unwrap().current_percent, Some(42));
    assert_eq!(rollouts[1].status, None);
    let channels = with_promotions(&world.channels, &BTreeMap::new());
    assert_eq!(channels, world.channels);
}

// ---------------------------------------------------------------- with a real device store

async fn store() -> DeviceStore {
    DeviceStore::open("sqlite::memory:")
        .await
        .expect("an in-memory store")
}

fn load<'a>(world: &'a World, rollouts: &'a [Rollout]) -> Load<'a> {
    Load {
        objects: world.objects(),
        rollouts,
        complete: true,
    }
}

async fn report(
    store: &DeviceStore,
    devices: std::ops::Range<usize>,
    failed: impl Fn(usize) -> bool,
    at_ms: i64,
) {
    let writes: Vec<Write> = devices
        .map(|i| {
            Write::Outcome(OutcomeReport {
                app_id: APP_ID.to_owned(),
                version: "1.5.0".to_owned(),
                device_id: format!("00000000-0000-4000-8000-{i:012x}"),
                channel: "production".to_owned(),
                failed: failed(i),
                at_ms,
            })
        })
        .collect();
    store.apply(&writes).await.expect("outcomes written");
}

#[tokio::test]
async fn a_driven_rollout_is_saved_and_a_new_driver_resumes_it_at_the_same_step_with_the_same_salt() {
    let store = store().await;
    let world = world();
    let rollouts = [staged()];
    let mut driver = RolloutDriver::open(store.clone(), no_metrics()).await.unwrap();
    let next = driver.drive(&load(&world, &rollouts), at(0)).await;
    assert_eq!(next, Some(at(3_600)), "the end of the timed pause");
    let saved = read_states(&store).await.unwrap();
    let status = saved.rollouts.get(&key("ro")).expect("a saved status").clone();
    assert_eq!(status.current_percent, Some(10));
    assert_eq!(driver.states().rollouts.get(&key("ro")), Some(&status));
    let (served, _) = driver.served(&load(&world, &rollouts));
    assert_eq!(served[0].status.as_ref(), Some(&status));

    // A restart: a new driver on the same store continues where the first one was.
    let mut restarted = RolloutDriver::open(store.clone(), no_metrics()).await.unwrap();
    assert_eq!(restarted.states().rollouts.get(&key("ro")), Some(&status));
    let next = restarted.drive(&load(&world, &rollouts), at(10)).await;
    assert_eq!(next, Some(at(3_600)));
    assert_eq!(
        restarted.states().rollouts.get(&key("ro")),
        Some(&status),
        "nothing moved"
    );
    // The pause ends at its deadline: 50%, then waiting to be promoted.
    restarted.drive(&load(&world, &rollouts), at(3_600)).await;
    let moved = restarted.states().rollouts.get(&key("ro")).unwrap().clone();
    assert_eq!(moved.current_percent, Some(50));
    assert_eq!(moved.salt, status.salt);
    assert_eq!(moved.started_at, status.started_at);
    assert_eq!(moved.current_step_index, Some(3));
    assert_eq!(
        read_states(&store).await.unwrap().rollouts.get(&key("ro")),
        Some(&moved)
    );
}

#[tokio::test]
async fn the_promote_annotation_of_the_yaml_moves_a_waiting_rollout_once_per_value() {
    let store = store().await;
    let world = world();
    let mut driver = RolloutDriver::open(store, no_metrics()).await.unwrap();
    driver.drive(&load(&world, &[staged()]), at(0)).await;
    driver.drive(&load(&world, &[staged()]), at(3_600)).await;
    assert_eq!(driver.states().rollouts[&key("ro")].current_step_index, Some(3));
    let mut promoted = staged();
    promoted.metadata.annotations = Some(
        [(
            crate::api::constants::annotation::PROMOTE.to_owned(),
            "1".to_owned(),
        )]
        .into(),
    );
    let next = driver
        .drive(&load(&world, std::slice::from_ref(&promoted)), at(3_700))
        .await;
    let status = &driver.states().rollouts[&key("ro")];
    assert_eq!(status.phase, Some(RolloutPhase::Completed));
    assert_eq!(status.current_percent, Some(100));
    assert_eq!(next, None, "a completed rollout waits for nothing");
    // The channel now serves the candidate as its stable bundle, recorded durably.
    let promotion = &driver.states().promotions[&key("production")];
    assert_eq!(promotion.bundle, CANDIDATE);
    assert_eq!(promotion.over_bundle_ref.as_deref(), Some(STABLE));
    let (_, channels) = driver.served(&load(&world, std::slice::from_ref(&promoted)));
    assert_eq!(channels[0].stable_bundle_ref(), Some(CANDIDATE));
}

#[tokio::test]
async fn failure_figures_from_the_store_abort_the_rollout_at_the_next_analysis() {
    let store = store().await;
    let world = world();
    let rollouts = [guarded()];
    let mut driver = RolloutDriver::open(store.clone(), no_metrics()).await.unwrap();
    let next = driver.drive(&load(&world, &rollouts), at(0)).await;
    assert_eq!(next, Some(at(10)), "the next analysis");
    // Too few attempts at the first analysis: it waits.
    report(&store, 0..10, |i| i % 3 == 0, at(5).as_millisecond()).await;
    let next = driver.drive(&load(&world, &rollouts), at(10)).await;
    let status = &driver.states().rollouts[&key("ro")];
    assert_eq!(status.phase, Some(RolloutPhase::Paused));
    assert_eq!(status.analysis.as_ref().unwrap().attempts, 10);
    assert_eq!(next, Some(at(20)));
    // 30 devices, a third of them failed: the analysis at 20 s aborts.
    report(&store, 10..30, |i| i % 3 == 0, at(15).as_millisecond()).await;
    driver.drive(&load(&world, &rollouts), at(20)).await;
    let status = &driver.states().rollouts[&key("ro")];
    assert_eq!(status.phase, Some(RolloutPhase::Aborted));
    assert_eq!(status.current_percent, Some(0));
    let figures = status.analysis.as_ref().unwrap();
    assert_eq!((figures.attempts, figures.failures), (30, 10));
    assert_eq!(read_states(&store).await.unwrap().rollouts[&key("ro")], *status);
    assert!(driver.states().promotions.is_empty());
}

#[tokio::test]
async fn reports_from_before_the_rollout_started_do_not_count() {
    let store = store().await;
    let world = world();
    let rollouts = [guarded()];
    // Failures of the candidate an hour before this rollout (an earlier attempt).
    report(&store, 0..100, |_| true, at(-10).as_millisecond()).await;
    let mut driver = RolloutDriver::open(store.clone(), no_metrics()).await.unwrap();
    driver.drive(&load(&world, &rollouts), at(0)).await;
    driver.drive(&load(&world, &rollouts), at(10)).await;
    let status = &driver.states().rollouts[&key("ro")];
    assert_eq!(status.phase, Some(RolloutPhase::Paused));
    assert_eq!(status.analysis.as_ref().unwrap().attempts, 0);
}

#[tokio::test]
async fn state_of_objects_that_left_the_folder_is_forgotten_only_after_a_complete_load() {
    let store = store().await;
    let world = world();
    let mut driver = RolloutDriver::open(store.clone(), no_metrics()).await.unwrap();
    let done = rollout_of("done", json!([{"setPercent": 100}]), json!({}), json!({}));
    driver
        .drive(&load(&world, std::slice::from_ref(&done)), at(0))
        .await;
    assert_eq!(read_states(&store).await.unwrap().rollouts.len(), 1);
    assert_eq!(read_states(&store).await.unwrap().promotions.len(), 1);
    // A load with unreadable documents keeps everything (the Rollout may be the broken one).
    let partial = Load {
        objects: world.objects(),
        rollouts: &[],
        complete: false,
    };
    driver.drive(&partial, at(1)).await;
    assert_eq!(read_states(&store).await.unwrap().rollouts.len(), 1);
    // A complete load without the Rollout forgets it; the channel keeps its promotion (the
    // completed candidate stays its stable bundle after the Rollout is deleted).
    driver.drive(&load(&world, &[]), at(2)).await;
    let saved = read_states(&store).await.unwrap();
    assert!(saved.rollouts.is_empty());
    assert_eq!(saved.promotions[&key("production")].bundle, CANDIDATE);
    // Git moves the channel's bundleRef: its choice stands, and the promotion is forgotten, so
    // a later return to the bundleRef it was made over serves that bundleRef, not the promotion.
    let mut moved = self::world();
    moved.channels[0].spec.bundle_ref = Some(CANDIDATE.to_owned());
    driver.drive(&load(&moved, &[]), at(3)).await;
    assert!(read_states(&store).await.unwrap().promotions.is_empty());
    assert!(driver.states().promotions.is_empty());
    let reverted = with_promotions(&world.channels, &driver.states().promotions);
    assert_eq!(reverted[0].stable_bundle_ref(), Some(STABLE));
    // Without the channel, its promotion goes too.
    let done_again = rollout_of("again", json!([{"setPercent": 100}]), json!({}), json!({}));
    driver
        .drive(&load(&world, std::slice::from_ref(&done_again)), at(4))
        .await;
    assert_eq!(read_states(&store).await.unwrap().promotions.len(), 1);
    let no_channels = World {
        channels: Vec::new(),
        ..self::world()
    };
    driver.drive(&load(&no_channels, &[]), at(5)).await;
    assert!(read_states(&store).await.unwrap().promotions.is_empty());
    assert!(driver.states().promotions.is_empty());
}

#[tokio::test]
async fn a_store_that_fails_leaves_the_analysis_waiting_and_nothing_is_served_unsaved() {
    use sqlx::{Connection, Executor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.db");
    let store = DeviceStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let world = world();
    let rollouts = [guarded()];
    let mut driver = RolloutDriver::open(store.clone(), no_metrics()).await.unwrap();
    driver.drive(&load(&world, &rollouts), at(0)).await;
    let before = driver.states().rollouts[&key("ro")].clone();
    // The tables go away under the store: no figures can be read and no state saved. The
    // served status stays the saved one, and the decision is tried again within a second.
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    connection
        .execute("DROP TABLE device_outcomes; DROP TABLE rollout_states;")
        .await
        .unwrap();
    connection.close().await.unwrap();
    // A person promotes meanwhile: the decision moves on, but its state cannot be saved, so it is
    // neither kept nor served (and its events are not logged); it is tried again in a second.
    let mut promoted = guarded();
    promoted.metadata.annotations = Some(
        [(
            crate::api::constants::annotation::PROMOTE.to_owned(),
            "1".to_owned(),
        )]
        .into(),
    );
    let objects = world.objects();
    let mut with_status = promoted.clone();
    with_status.status = Some(before.clone());
    assert_ne!(
        decide(&with_status, &objects, None, at(10)).status,
        before,
        "a decision that moves"
    );
    let next = driver
        .drive(&load(&world, std::slice::from_ref(&promoted)), at(10))
        .await;
    assert_eq!(driver.states().rollouts[&key("ro")], before);
    assert_eq!(next, Some(at(10) + SignedDuration::from_secs(1)));
    let (served, _) = driver.served(&load(&world, std::slice::from_ref(&promoted)));
    assert_eq!(served[0].status.as_ref(), Some(&before));
}

#[tokio::test]
async fn a_metric_that_fails_in_standalone_mode_rolls_the_candidate_back() {
    let store = store().await;
    let world = world();
    let rollouts = [rollout_of(
        "ro",
        json!([{"setPercent": 20}, {"pause": {}}, {"setPercent": 100}]),
        json!({"interval": "1h", "metrics": [{"name": "error-rate", "interval": "30s",
            "prometheus": {"address": "http://prometheus:9090", "query": "errors{version=\"{{candidate}}\"}"},
            "failureCondition": "result > 0.05"}]}),
        json!({}),
    )];
    let clock = crate::clock::TestClock::at(at(0));
    let metrics = crate::rollout_driver::ScriptedMetrics::new(Arc::new(clock.clone()));
    let mut driver = RolloutDriver::open(store.clone(), Arc::new(metrics.clone()))
        .await
        .unwrap();
    let next = driver.drive(&load(&world, &rollouts), at(0)).await;
    assert_eq!(next, Some(at(30)), "the metric is due");
    assert!(metrics.asked().is_empty());
    metrics.answer("error-rate", Ok(MetricValue::Number(0.01)));
    clock.set(at(30));
    let next = driver.drive(&load(&world, &rollouts), at(30)).await;
    assert_eq!(next, Some(at(60)));
    let asked = metrics.asked();
    assert_eq!(asked.len(), 1);
    match &asked[0].provider {
        ProviderRequest::Prometheus { query, .. } => assert_eq!(query, "errors{version=\"1.5.0\"}"),
        other => panic!("a Prometheus request, not {other:?}"),
    }
    metrics.answer("error-rate", Ok(MetricValue::Number(0.2)));
    clock.set(at(60));
    let next = driver.drive(&load(&world, &rollouts), at(60)).await;
    assert_eq!(next, None, "an aborted rollout waits for a person");
    let status = read_states(&store).await.unwrap().rollouts[&key("ro")].clone();
    assert_eq!(status.phase, Some(RolloutPhase::Aborted));
    assert_eq!(status.metrics[0].failed, 1);
    assert_eq!(status.metrics[0].successful, 1);
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("metric error-rate failed 1 times"),
        "{:?}",
        status.message
    );
}
