//! Which status changes deserve an Event, and the metrics category of a failure: pure
//! decisions, shared by every reconciler (the controller turns them into Kubernetes Events and
//! counters).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::{
    api::constants::{condition, reason},
    core::conditions,
};

/// How loud an Event is (Kubernetes has Normal and Warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Progress as expected.
    Normal,
    /// Something needs a person, or is being retried.
    Warning,
}

/// An Event to publish about a change of conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Normal or Warning.
    pub severity: Severity,
    /// The Ready condition's new reason.
    pub reason: String,
    /// The Ready condition's new message.
    pub note: String,
}

/// The Event a change of conditions deserves, if any. Only a change of the Ready condition's
/// status or reason is a transition; Warning when the object is Stalled or retrying.
pub fn ready_transition(before: &[Condition], after: &[Condition]) -> Option<Transition> {
    let ready_before = before.iter().find(|c| c.type_ == condition::READY);
    let ready_after = after.iter().find(|c| c.type_ == condition::READY)?;
    if ready_before.is_some_and(|b| b.status == ready_after.status && b.reason == ready_after.reason) {
        return None;
    }
    let stalled = conditions::status_of(after, condition::STALLED) == Some("True");
    let severity = if stalled || ready_after.reason == reason::PROGRESSING_WITH_RETRY {
        Severity::Warning
    } else {
        Severity::Normal
    };
    Some(Transition {
        severity,
        reason: ready_after.reason.clone(),
        note: ready_after.message.clone(),
    })
}

/// The metrics category of a failure (the `error` label of the failure counters): every
/// category a counter can carry, and the one mapping from a Stalled reason to its category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCategory {
    /// The API server refused a request or could not be reached.
    Api,
    /// Object storage could not be read or written.
    Storage,
    /// A Rollout's failure figures could not be read from the update server.
    Figures,
    /// An object names another that does not exist.
    ReferenceNotFound,
    /// A Bundle's archive is not what its spec says (checksum, zip).
    InvalidBundle,
    /// A signature is missing or does not verify.
    Signature,
    /// Any other Stalled reason: the spec asks for something that cannot be done.
    InvalidSpec,
}

impl FailureCategory {
    /// The category of a Stalled (or Warning Event) reason.
    pub fn of_reason(reason: &str) -> FailureCategory {
        match reason {
            reason::REFERENCE_NOT_FOUND => FailureCategory::ReferenceNotFound,
            reason::CHECKSUM_MISMATCH | reason::INVALID_ARCHIVE => FailureCategory::InvalidBundle,
            reason::SIGNATURE_REQUIRED | reason::INVALID_SIGNATURE => FailureCategory::Signature,
            _ => FailureCategory::InvalidSpec,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            FailureCategory::Api => "api",
            FailureCategory::Storage => "storage",
            FailureCategory::Figures => "figures",
            FailureCategory::ReferenceNotFound => "reference_not_found",
            FailureCategory::InvalidBundle => "invalid_bundle",
            FailureCategory::Signature => "signature",
            FailureCategory::InvalidSpec => "invalid_spec",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: &str, reason: &str) -> Condition {
        named(condition::READY, status, reason)
    }

    fn named(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: format!("{type_} {status} {reason}"),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }
    }

    #[test]
    fn only_a_change_of_readys_status_or_reason_is_a_transition() {
        let synced = ready("True", "Synced");
        assert_eq!(
            ready_transition(std::slice::from_ref(&synced), std::slice::from_ref(&synced)),
            None
        );
        assert_eq!(ready_transition(&[], &[]), None);
        let first = ready_transition(&[], std::slice::from_ref(&synced)).expect("a first Ready");
        assert_eq!(first.severity, Severity::Normal);
        assert_eq!(
            (first.reason.as_str(), first.note.as_str()),
            ("Synced", "Ready True Synced")
        );
        let mut reworded = synced.clone();
        reworded.message = "other words".to_owned();
        assert_eq!(ready_transition(std::slice::from_ref(&synced), &[reworded]), None);
    }

    #[test]
    fn stalled_or_retrying_is_a_warning() {
        let stalled = [
            ready("False", reason::INVALID_SPEC),
            named(condition::STALLED, "True", reason::INVALID_SPEC),
        ];
        let retrying = [ready("False", reason::PROGRESSING_WITH_RETRY)];
        for after in [&stalled[..], &retrying[..]] {
            let transition = ready_transition(&[ready("True", "Synced")], after).expect("a change");
            assert_eq!(transition.severity, Severity::Warning);
        }
    }

    #[test]
    fn stalled_reasons_map_to_their_categories() {
        let cases = [
            (reason::REFERENCE_NOT_FOUND, "reference_not_found"),
            (reason::CHECKSUM_MISMATCH, "invalid_bundle"),
            (reason::INVALID_ARCHIVE, "invalid_bundle"),
            (reason::SIGNATURE_REQUIRED, "signature"),
            (reason::INVALID_SIGNATURE, "signature"),
            (reason::INVALID_SPEC, "invalid_spec"),
        ];
        for (reason, category) in cases {
            assert_eq!(FailureCategory::of_reason(reason).label(), category, "{reason}");
        }
    }
}
