//! The controller's Prometheus metrics.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

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
        Self {
            registry,
            reconciles,
            failures,
            durations,
            status_writes,
            leader,
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
}
