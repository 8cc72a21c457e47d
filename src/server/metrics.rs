//! The update server's Prometheus metrics.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels of update-check answers. The answers are a fixed set of static names, so counting
/// one allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    /// `offer`, `builtin`, or the refusal's error code.
    pub answer: &'static str,
}

/// Labels of `/channel_self` requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The HTTP method.
    pub method: String,
}

/// Labels of requests answered 503 because their writes were not committed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitLabels {
    /// `unavailable`, `refused` or `timed_out`.
    pub reason: &'static str,
}

/// Labels of requests answered 429.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `per_client` or `per_app`.
    pub limit: &'static str,
}

/// Every metric of the update server.
pub struct Metrics {
    registry: Registry,
    /// Update checks by answer.
    pub update_checks: Family<AnswerLabels, Counter>,
    /// Stats events received (decoded or not).
    pub stats_events: Counter,
    /// Stats events that could not be decoded.
    pub stats_rejected: Counter,
    /// Outcomes (a `set` or a failure of a version) not recorded for rollout analysis because
    /// no channel resolves for the device.
    pub outcomes_without_channel: Counter,
    /// Requests for rollout figures on the internal listener that the store could not answer.
    pub figures_unavailable: Counter,
    /// Stats events naming a version that is none of the App's Bundles: no failed mark, no
    /// outcome, and counted under the unknown version.
    pub stats_unknown_versions: Counter,
    /// Outcomes deleted because no Rollout's analysis window reaches them any more.
    pub outcomes_pruned: Counter,
    /// Prunes of an App's old outcomes that failed (tried again at the next round).
    pub outcome_prunes_failed: Counter,
    /// `/channel_self` requests by method.
    pub channel_requests: Family<MethodLabels, Counter>,
    /// Device-store writes dropped because the queue was full.
    pub writes_dropped: Gauge,
    /// Device-store writes the database refused on their own (bad data, not its condition),
    /// dropped.
    pub writes_rejected: Gauge,
    /// Requests answered 503 because their writes could not be committed, by reason.
    pub commits_failed: Family<CommitLabels, Counter>,
    /// Device sightings not written: the row was written lately and would change only its
    /// last-seen time.
    pub sightings_skipped: Gauge,
    /// Requests answered 429 because they were over a rate limit, by limit.
    pub rate_limited: Family<LimitLabels, Counter>,
    /// Clients the per-client rate limiter remembers (after its last cleanup).
    pub rate_limit_clients: Gauge,
    /// Apps in the served snapshot.
    pub apps_served: Gauge,
    /// 1 while the snapshot source is lost and the last good snapshot is served.
    pub source_degraded: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ota_server");
        let update_checks = Family::<AnswerLabels, Counter>::default();
        registry.register("update_checks", "Update checks by answer", update_checks.clone());
        let stats_events = Counter::default();
        registry.register("stats_events", "Stats events received", stats_events.clone());
        let stats_rejected = Counter::default();
        registry.register(
            "stats_rejected",
            "Stats events that could not be decoded",
            stats_rejected.clone(),
        );
        let outcomes_without_channel = Counter::default();
        registry.register(
            "outcomes_without_channel",
            "Version outcomes from stats events not recorded because no channel resolves for the device",
            outcomes_without_channel.clone(),
        );
        let figures_unavailable = Counter::default();
        registry.register(
            "rollout_figures_unavailable",
            "Rollout-figure requests answered 503 because the device store could not be read",
            figures_unavailable.clone(),
        );
        let stats_unknown_versions = Counter::default();
        registry.register(
            "stats_unknown_versions",
            "Stats events naming a version that is none of the App's Bundles (no failed mark or outcome recorded; counted under the version unknown)",
            stats_unknown_versions.clone(),
        );
        let outcomes_pruned = Counter::default();
        registry.register(
            "outcomes_pruned",
            "Device outcomes deleted because no Rollout's analysis window reaches them any more",
            outcomes_pruned.clone(),
        );
        let outcome_prunes_failed = Counter::default();
        registry.register(
            "outcome_prunes_failed",
            "Prunes of an App's old device outcomes that failed",
            outcome_prunes_failed.clone(),
        );
        let channel_requests = Family::<MethodLabels, Counter>::default();
        registry.register(
            "channel_requests",
            "channel_self requests by method",
            channel_requests.clone(),
        );
        let writes_dropped = Gauge::default();
        registry.register(
            "device_store_writes_dropped",
            "Device-store writes dropped because the write queue was full",
            writes_dropped.clone(),
        );
        let writes_rejected = Gauge::default();
        registry.register(
            "device_store_writes_rejected",
            "Device-store writes the database refused on their own while it took others, dropped",
            writes_rejected.clone(),
        );
        let commits_failed = Family::<CommitLabels, Counter>::default();
        registry.register(
            "device_store_commits_failed",
            "Requests answered 503 because the device store did not commit their writes",
            commits_failed.clone(),
        );
        let sightings_skipped = Gauge::default();
        registry.register(
            "device_store_sightings_skipped",
            "Device sightings not written because the device's row was written lately and would change only its last-seen time",
            sightings_skipped.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests answered 429 because they were over a rate limit, by limit (per_client, per_app)",
            rate_limited.clone(),
        );
        let rate_limit_clients = Gauge::default();
        registry.register(
            "rate_limit_clients",
            "Clients the per-client rate limiter remembers, after its last cleanup",
            rate_limit_clients.clone(),
        );
        let apps_served = Gauge::default();
        registry.register("apps_served", "Apps in the served snapshot", apps_served.clone());
        let source_degraded = Gauge::default();
        registry.register(
            "source_degraded",
            "1 while the configuration source is lost and the last good snapshot is served",
            source_degraded.clone(),
        );
        Self {
            registry,
            update_checks,
            stats_events,
            stats_rejected,
            outcomes_without_channel,
            figures_unavailable,
            stats_unknown_versions,
            outcomes_pruned,
            outcome_prunes_failed,
            channel_requests,
            writes_dropped,
            writes_rejected,
            commits_failed,
            sightings_skipped,
            rate_limited,
            rate_limit_clients,
            apps_served,
            source_degraded,
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
