//! The controller's Prometheus metrics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::Stores;
use crate::{api::constants::condition, core::conditions::status_of};

/// The kstatus state of an object from its conditions: Stalled wins, then Ready, then
/// Reconciling; `Unknown` without a status.
fn state_of(conditions: Option<&[Condition]>) -> &'static str {
    let Some(conditions) = conditions else {
        return "Unknown";
    };
    if status_of(conditions, condition::STALLED) == Some("True") {
        "Stalled"
    } else if status_of(conditions, condition::READY) == Some("True") {
        "Ready"
    } else if conditions.is_empty() {
        "Unknown"
    } else {
        "Reconciling"
    }
}

/// Labels of reconciles.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The reconciled kind (`App`, ...).
    pub kind: String,
}

/// Labels of failed reconciles.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The reconciled kind.
    pub kind: String,
    /// The error category (`api`, `invalid_spec`, `reference_not_found`).
    pub error: String,
}

/// Labels of notification deliveries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `delivered`, `failed`, `queue_full` or `stopped`.
    pub outcome: String,
}

/// Labels of the domain gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The kind (`App`, `Channel`, `Bundle`, `Rollout`).
    pub kind: String,
    /// `Ready`, `Stalled`, `Reconciling` or `Unknown` (no status yet); for Rollouts also their
    /// phase (`Progressing`, `Paused`, `Completed`, `Aborted`).
    pub state: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

/// Every metric of the controller.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run, by kind.
    pub reconciles: Family<KindLabels, Counter>,
    /// Reconciles that failed or stalled, by kind and error category.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile durations in seconds, by kind.
    pub durations: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// Status writes, by kind (a status is written only when it changed).
    pub status_writes: Family<KindLabels, Counter>,
    /// 1 while this replica holds the leader Lease (or runs without leader election).
    pub leader: Gauge,
    /// Objects by kind and state, counted from the caches at each scrape.
    pub objects: Family<StateLabels, Gauge>,
    /// Rollouts by phase, counted from the cache at each scrape.
    pub rollout_phases: Family<StateLabels, Gauge>,
    /// Rollout webhook notifications, by outcome.
    pub notifications: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ota_controller");
        let reconciles = Family::<KindLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconciles that failed or stalled, by kind and error category",
            failures.clone(),
        );
        let durations =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile durations, by kind",
            durations.clone(),
        );
        let status_writes = Family::<KindLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Status writes, by kind (only changed statuses are written)",
            status_writes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        let objects = Family::<StateLabels, Gauge>::default();
        registry.register(
            "objects",
            "Objects by kind and state (Ready, Stalled, Reconciling, Unknown)",
            objects.clone(),
        );
        let rollout_phases = Family::<StateLabels, Gauge>::default();
        registry.register("rollouts", "Rollouts by phase", rollout_phases.clone());
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "notifications",
            "Rollout webhook notifications, by outcome (delivered, failed, queue_full, stopped)",
            notifications.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            durations,
            status_writes,
            leader,
            objects,
            rollout_phases,
            notifications,
        }
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Sets the domain gauges from the caches: how many objects of each kind are in each state.
    pub fn observe(&self, stores: &Stores) {
        self.objects.clear();
        self.rollout_phases.clear();
        let count = |kind: &str, conditions: Option<&[Condition]>| {
            let labels = StateLabels {
                kind: kind.to_owned(),
                state: state_of(conditions).to_owned(),
            };
            self.objects.get_or_create(&labels).inc();
        };
        for app in stores.apps.state() {
            count("App", app.status.as_ref().map(|s| &s.conditions[..]));
        }
        for channel in stores.channels.state() {
            count("Channel", channel.status.as_ref().map(|s| &s.conditions[..]));
        }
        for bundle in stores.bundles.state() {
            count("Bundle", bundle.status.as_ref().map(|s| &s.conditions[..]));
        }
        for rollout in stores.rollouts.state() {
            let status = rollout.status.as_ref();
            count("Rollout", status.map(|s| &s.conditions[..]));
            if let Some(phase) = status.and_then(|s| s.phase) {
                let labels = StateLabels {
                    kind: "Rollout".to_owned(),
                    state: format!("{phase:?}"),
                };
                self.rollout_phases.get_or_create(&labels).inc();
            }
        }
    }

    /// Labels for `kind`.
    pub fn kind(kind: &str) -> KindLabels {
        KindLabels {
            kind: kind.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_render_with_their_labels() {
        let metrics = Metrics::default();
        metrics.reconciles.get_or_create(&Metrics::kind("App")).inc();
        metrics
            .failures
            .get_or_create(&FailureLabels {
                kind: "App".to_owned(),
                error: "api".to_owned(),
            })
            .inc();
        metrics
            .durations
            .get_or_create(&Metrics::kind("App"))
            .observe(0.2);
        metrics.leader.set(1);
        let text = metrics.render();
        assert!(
            text.contains("ota_controller_reconciles_total{kind=\"App\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ota_controller_reconcile_failures_total{kind=\"App\",error=\"api\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ota_controller_reconcile_duration_seconds_count{kind=\"App\"} 1"),
            "{text}"
        );
        assert!(text.contains("ota_controller_leader 1"), "{text}");
    }

    #[test]
    fn an_object_state_follows_its_kstatus_conditions() {
        let condition = |type_: &str, status: &str| Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: "R".to_owned(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        assert_eq!(state_of(None), "Unknown");
        assert_eq!(state_of(Some(&[])), "Unknown");
        assert_eq!(state_of(Some(&[condition("Ready", "True")])), "Ready");
        assert_eq!(
            state_of(Some(&[
                condition("Ready", "False"),
                condition("Reconciling", "True")
            ])),
            "Reconciling"
        );
        assert_eq!(
            state_of(Some(&[condition("Ready", "False"), condition("Stalled", "True")])),
            "Stalled"
        );
    }
}
