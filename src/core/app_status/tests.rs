use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::core::transitions::Severity;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).expect("a valid timestamp")
}

fn app(generation: i64) -> App {
    let mut app = App::new(
        "shop",
        serde_json::from_value(serde_json::json!({
            "appId": "com.example.shop",
            "storage": {"filesystem": {"path": "bundles"}}
        }))
        .expect("a spec"),
    );
    app.metadata.namespace = Some("ns".to_owned());
    app.metadata.generation = Some(generation);
    app
}

fn applied(ready: i32) -> Outcome {
    Outcome::Applied {
        endpoint: "http://ota-shop.ns.svc".to_owned(),
        replicas: 1,
        ready_replicas: ready,
    }
}

fn with_status(mut app: App, status: AppStatus) -> App {
    app.status = Some(status);
    app
}

#[test]
fn a_ready_deployment_makes_the_app_ready_with_its_endpoint_and_generation() {
    let status = desired_status(&app(4), &applied(1), None, at(10));
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!(status.endpoint.as_deref(), Some("http://ota-shop.ns.svc"));
    assert_eq!((status.replicas, status.ready_replicas), (Some(1), Some(1)));
    assert_eq!(
        conditions::status_of(&status.conditions, condition::READY),
        Some("True")
    );
    assert_eq!(
        conditions::status_of(&status.conditions, condition::STALLED),
        Some("False")
    );
    assert!(status.conditions.iter().all(|c| c.observed_generation == Some(4)));
}

#[test]
fn monthly_active_devices_are_the_servers_figure_or_the_last_one_known() {
    assert_eq!(
        desired_status(&app(1), &applied(1), None, at(10)).monthly_active_devices,
        None
    );
    let counted = desired_status(&app(1), &applied(1), Some(1_234), at(10));
    assert_eq!(counted.monthly_active_devices, Some(1_234));
    let stored = with_status(app(1), counted);
    // The server cannot be asked (or is not ready): the last figure stays.
    assert_eq!(
        desired_status(&stored, &applied(0), None, at(20)).monthly_active_devices,
        Some(1_234)
    );
    assert_eq!(
        desired_status(&stored, &applied(1), Some(7), at(30)).monthly_active_devices,
        Some(7)
    );
}

#[test]
fn pods_not_ready_yet_is_reconciling() {
    let status = desired_status(&app(1), &applied(0), None, at(10));
    assert_eq!(
        conditions::status_of(&status.conditions, condition::READY),
        Some("False")
    );
    assert_eq!(
        conditions::status_of(&status.conditions, condition::RECONCILING),
        Some("True")
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .unwrap();
    assert_eq!(ready.reason, reason::PROGRESSING);
    assert!(ready.message.contains("0 of 1"), "{}", ready.message);
}

#[test]
fn the_same_outcome_twice_writes_nothing_and_emits_no_event() {
    let first = desired_status(&app(1), &applied(1), None, at(10));
    let stored = with_status(app(1), first.clone());
    let again = desired_status(&stored, &applied(1), None, at(99));
    assert_eq!(again, first, "times do not move without a flip");
    assert!(!status_changed(&stored, &again));
    assert!(transition_event(&stored, &again).is_none());
}

#[test]
fn a_new_generation_or_more_ready_pods_is_a_change() {
    let stored = with_status(app(1), desired_status(&app(1), &applied(0), None, at(10)));
    let newer = desired_status(&app(2), &applied(0), None, at(20));
    assert!(status_changed(&app(2), &newer));
    let ready = desired_status(&stored, &applied(1), None, at(30));
    assert!(status_changed(&stored, &ready));
    let transition = transition_event(&stored, &ready).expect("an event for becoming Ready");
    assert_eq!(transition.severity, Severity::Normal);
    assert_eq!(transition.reason, reason::RECONCILED);
    let ready_condition = ready
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .unwrap();
    assert_eq!(ready_condition.last_transition_time, Time(at(30)));
}

#[test]
fn stalled_keeps_the_endpoint_and_warns() {
    let stored = with_status(app(1), desired_status(&app(1), &applied(1), None, at(10)));
    let stalled = desired_status(
        &stored,
        &Outcome::Stalled {
            reason: reason::REFERENCE_NOT_FOUND,
            message: "the Secret s3 named by the App does not exist".to_owned(),
        },
        None,
        at(20),
    );
    assert_eq!(
        conditions::status_of(&stalled.conditions, condition::STALLED),
        Some("True")
    );
    assert_eq!(stalled.endpoint.as_deref(), Some("http://ota-shop.ns.svc"));
    let transition = transition_event(&stored, &stalled).expect("a warning");
    assert_eq!(transition.severity, Severity::Warning);
    assert_eq!(transition.reason, reason::REFERENCE_NOT_FOUND);
    assert!(transition.note.contains("Secret s3"));
}

#[test]
fn a_transient_failure_is_reconciling_with_retry_and_warns() {
    let retrying = desired_status(
        &app(1),
        &Outcome::Retrying {
            message: "connection refused".to_owned(),
        },
        None,
        at(5),
    );
    assert_eq!(
        conditions::status_of(&retrying.conditions, condition::RECONCILING),
        Some("True")
    );
    let transition = transition_event(&app(1), &retrying).expect("an event");
    assert_eq!(transition.severity, Severity::Warning);
    assert_eq!(transition.reason, reason::PROGRESSING_WITH_RETRY);
}

#[test]
fn conditions_of_other_owners_are_not_claimed() {
    let mut status = desired_status(&app(1), &applied(1), None, at(10));
    status
        .conditions
        .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: condition::AVAILABLE.to_owned(),
            status: "True".to_owned(),
            reason: "Serving".to_owned(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(at(1)),
        });
    let stored = with_status(app(1), status);
    let desired = desired_status(&stored, &applied(1), None, at(20));
    assert!(desired.conditions.iter().all(|c| c.type_ != condition::AVAILABLE));
    assert!(!status_changed(&stored, &desired));
}
