//! Status conditions as data: a desired condition merged into a status's existing list, and the
//! kstatus sets (Ready / Reconciling / Stalled) every kind reports.
//!
//! `lastTransitionTime` moves only when a condition's status flips, so writing the same status
//! twice changes nothing and a controller does not wake itself up with its own writes.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::api::constants::{condition, reason};

/// The three values of a condition's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
    /// `"Unknown"`.
    Unknown,
}

impl ConditionStatus {
    /// The string Kubernetes stores.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// What a condition should say, without the bookkeeping (times, generation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    /// The condition type (`Ready`, `Stalled`, ...).
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// A PascalCase reason.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

impl DesiredCondition {
    /// A desired condition.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> DesiredCondition {
        DesiredCondition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Merges `desired` into `existing`: conditions of other types are kept as they are, a condition
/// of a desired type is replaced, keeping its `lastTransitionTime` unless its status changed.
/// Every desired condition gets `observed_generation`. The result is sorted by type, so the same
/// inputs always give the same list.
pub fn merge_conditions(
    existing: &[Condition],
    desired: &[DesiredCondition],
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = existing
        .iter()
        .filter(|old| !desired.iter().any(|want| want.type_ == old.type_))
        .cloned()
        .collect();
    for want in desired {
        let previous = existing.iter().find(|old| old.type_ == want.type_);
        let last_transition_time = match previous {
            Some(old) if old.status == want.status.as_str() => old.last_transition_time.clone(),
            _ => Time(now),
        };
        merged.push(Condition {
            type_: want.type_.clone(),
            status: want.status.as_str().to_owned(),
            reason: want.reason.clone(),
            message: want.message.clone(),
            observed_generation,
            last_transition_time,
        });
    }
    merged.sort_by(|a, b| a.type_.cmp(&b.type_));
    merged
}

/// Replaces every condition of `types` in `existing` with nothing (e.g. to drop `Stalled` once an
/// object recovers), keeping the others.
pub fn without_types(existing: &[Condition], types: &[&str]) -> Vec<Condition> {
    existing
        .iter()
        .filter(|c| !types.contains(&c.type_.as_str()))
        .cloned()
        .collect()
}

/// The status of the condition of `type_`, if present.
pub fn status_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// kstatus: everything is in place. Ready=True, Reconciling=False, Stalled=False.
pub fn ready_set(message: impl Into<String>) -> Vec<DesiredCondition> {
    let message = message.into();
    vec![
        DesiredCondition::new(
            condition::READY,
            ConditionStatus::True,
            reason::RECONCILED,
            message.clone(),
        ),
        DesiredCondition::new(
            condition::RECONCILING,
            ConditionStatus::False,
            reason::RECONCILED,
            message.clone(),
        ),
        DesiredCondition::new(
            condition::STALLED,
            ConditionStatus::False,
            reason::RECONCILED,
            message,
        ),
    ]
}

/// kstatus: work in progress (waiting for pods, or retrying a transient failure with `reason`).
/// Ready=False, Reconciling=True, Stalled=False.
pub fn reconciling_set(reason: &str, message: impl Into<String>) -> Vec<DesiredCondition> {
    let message = message.into();
    vec![
        DesiredCondition::new(condition::READY, ConditionStatus::False, reason, message.clone()),
        DesiredCondition::new(
            condition::RECONCILING,
            ConditionStatus::True,
            reason,
            message.clone(),
        ),
        DesiredCondition::new(
            condition::STALLED,
            ConditionStatus::False,
            reason::PROGRESSING,
            message,
        ),
    ]
}

/// kstatus: stuck until the object (or what it references) changes.
/// Ready=False, Reconciling=False, Stalled=True, all with `reason`.
pub fn stalled_set(reason: &str, message: impl Into<String>) -> Vec<DesiredCondition> {
    let message = message.into();
    vec![
        DesiredCondition::new(condition::READY, ConditionStatus::False, reason, message.clone()),
        DesiredCondition::new(
            condition::RECONCILING,
            ConditionStatus::False,
            reason,
            message.clone(),
        ),
        DesiredCondition::new(condition::STALLED, ConditionStatus::True, reason, message),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("a valid timestamp")
    }

    #[test]
    fn a_new_condition_gets_now_and_the_generation() {
        let merged = merge_conditions(&[], &ready_set("serving"), Some(3), at(100));
        assert_eq!(merged.len(), 3);
        for c in &merged {
            assert_eq!(c.last_transition_time, Time(at(100)));
            assert_eq!(c.observed_generation, Some(3));
            assert_eq!(c.message, "serving");
        }
        assert_eq!(status_of(&merged, condition::READY), Some("True"));
        assert_eq!(status_of(&merged, condition::RECONCILING), Some("False"));
        assert_eq!(status_of(&merged, condition::STALLED), Some("False"));
    }

    #[test]
    fn the_transition_time_stays_while_the_status_stays() {
        let first = merge_conditions(&[], &ready_set("serving"), Some(1), at(100));
        let second = merge_conditions(&first, &ready_set("still serving"), Some(2), at(200));
        let ready = second
            .iter()
            .find(|c| c.type_ == condition::READY)
            .expect("Ready");
        assert_eq!(ready.last_transition_time, Time(at(100)));
        assert_eq!(ready.message, "still serving");
        assert_eq!(ready.observed_generation, Some(2));
    }

    #[test]
    fn the_transition_time_moves_when_the_status_flips() {
        let first = merge_conditions(&[], &ready_set("serving"), Some(1), at(100));
        let second = merge_conditions(&first, &stalled_set("InvalidSpec", "bad"), Some(2), at(200));
        let time_of = |list: &[Condition], type_: &str| {
            list.iter()
                .find(|c| c.type_ == type_)
                .map(|c| c.last_transition_time.clone())
                .expect("the condition")
        };
        assert_eq!(time_of(&second, condition::READY), Time(at(200)));
        assert_eq!(time_of(&second, condition::STALLED), Time(at(200)));
        // Reconciling was False and stays False: its reason changes, not its time.
        assert_eq!(time_of(&second, condition::RECONCILING), Time(at(100)));
        let third = merge_conditions(&second, &ready_set("ok"), Some(3), at(300));
        assert_eq!(time_of(&third, condition::RECONCILING), Time(at(100)));
        assert_eq!(status_of(&third, condition::STALLED), Some("False"));
        let stalled = third
            .iter()
            .find(|c| c.type_ == condition::STALLED)
            .expect("Stalled");
        assert_eq!(stalled.last_transition_time, Time(at(300)));
    }

    #[test]
    fn merging_the_same_conditions_twice_changes_nothing() {
        let first = merge_conditions(&[], &reconciling_set("Progressing", "waiting"), Some(1), at(100));
        let again = merge_conditions(
            &first,
            &reconciling_set("Progressing", "waiting"),
            Some(1),
            at(999),
        );
        assert_eq!(first, again);
    }

    #[test]
    fn conditions_of_other_types_are_kept() {
        let other = DesiredCondition::new(
            condition::AVAILABLE,
            ConditionStatus::True,
            "MinimumReplicasAvailable",
            "up",
        );
        let first = merge_conditions(&[], &[other], Some(1), at(50));
        let merged = merge_conditions(&first, &ready_set("ok"), Some(2), at(100));
        assert_eq!(merged.len(), 4);
        let available = merged
            .iter()
            .find(|c| c.type_ == condition::AVAILABLE)
            .expect("kept");
        assert_eq!(available.observed_generation, Some(1));
        assert_eq!(available.last_transition_time, Time(at(50)));
        let types: Vec<&str> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Available", "Ready", "Reconciling", "Stalled"]);
    }

    #[test]
    fn kstatus_sets_have_the_expected_polarity() {
        let stalled = merge_conditions(&[], &stalled_set("ReferenceNotFound", "no secret"), None, at(1));
        assert_eq!(status_of(&stalled, condition::READY), Some("False"));
        assert_eq!(status_of(&stalled, condition::RECONCILING), Some("False"));
        assert_eq!(status_of(&stalled, condition::STALLED), Some("True"));
        assert!(stalled.iter().all(|c| c.reason == "ReferenceNotFound"));
        let progressing = merge_conditions(&[], &reconciling_set("Progressing", "pods"), None, at(1));
        assert_eq!(status_of(&progressing, condition::READY), Some("False"));
        assert_eq!(status_of(&progressing, condition::RECONCILING), Some("True"));
        assert_eq!(status_of(&progressing, condition::STALLED), Some("False"));
    }

    #[test]
    fn without_types_drops_only_the_named_types() {
        let merged = merge_conditions(&[], &ready_set("ok"), None, at(1));
        let left = without_types(&merged, &[condition::STALLED]);
        assert_eq!(left.len(), 2);
        assert_eq!(status_of(&left, condition::STALLED), None);
    }
}
