//! What the measurements of a Rollout's metrics do to it (the judgement of one measurement is
//! in [`super::metrics`]):
//! - a metric failed past its `failureLimit` applies `analysis.action`: rollback aborts, pause
//!   adds an AnalysisFailed pause for a person;
//! - inconclusive past its `inconclusiveLimit`, it adds an AnalysisInconclusive pause for a
//!   person;
//! - errors in a row past its `consecutiveErrorLimit` add a MetricsUnavailable pause with the
//!   provider's message; it never aborts, and the pause lifts by itself once every metric that
//!   acts can be measured again (a promote lifts it too; the next error pauses again);
//! - each new measurement past a limit acts again when its pause is not there (after a person
//!   promoted past it, say), so a metric that keeps failing keeps stopping the rollout;
//! - a `dryRun` metric is measured and reported (its status, and a Warning Event when it
//!   crosses a limit) but never acts;
//! - an analysis step passes only when the device failure rate passes and each metric that acts
//!   has taken `count` measurements (errors aside) since the step began, and is Running.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::{
    EventKind, Run,
    measurement::Measured,
    metrics::{self, KEPT_MEASUREMENTS, Metric},
};
use crate::api::{
    constants::{annotation, reason},
    rollout::{AnalysisAction, MeasurementPhase, MetricMeasurement, MetricPhase, MetricStatus},
};

impl Run<'_> {
    /// Gives each metric of the spec its status, in the spec's order (kept by name; a metric
    /// that left the spec leaves the status), then records the measurements of this decision
    /// and acts on them. Measurements brought to the decision that starts or retries the rollout
    /// were asked for the run before it: they are dropped.
    pub(super) fn apply_measurements(&mut self) {
        self.align_metric_statuses();
        if self.started_now {
            return;
        }
        for measured in self.inputs.measurements {
            if !self.active() {
                return; // aborted by an earlier measurement
            }
            if let Some(index) = self
                .settings
                .metrics
                .iter()
                .position(|m| m.name == measured.metric)
            {
                self.record(index, measured);
            }
        }
        self.lift_outage_pause();
    }

    fn align_metric_statuses(&mut self) {
        let mut previous = std::mem::take(&mut self.status.metrics);
        self.status.metrics = self
            .settings
            .metrics
            .iter()
            .map(|metric| {
                let mut status = match previous.iter().position(|s| s.name == metric.name) {
                    Some(found) => previous.swap_remove(found),
                    None => metrics::new_status(metric),
                };
                status.dry_run = metric.dry_run;
                status.phase = metric.phase(&status);
                status
            })
            .collect();
    }

    /// Records one measurement of the `index`th metric and acts on it.
    fn record(&mut self, index: usize, measured: &Measured) {
        let metric = self.settings.metrics[index].clone();
        let status = &mut self.status.metrics[index];
        // A measurement already recorded (the same decision made again) counts once.
        if status
            .last_measurements
            .last()
            .is_some_and(|last| measured.at <= last.measured_at.0)
        {
            return;
        }
        let (phase, value, message) = match &measured.value {
            Ok(value) => {
                let (phase, message) = metric.judge(value);
                (phase, Some(metrics::value_text(value)), message)
            }
            Err(why) => (MeasurementPhase::Error, None, Some(why.clone())),
        };
        status.measurements = status.measurements.saturating_add(1);
        let counter = match phase {
            MeasurementPhase::Successful => &mut status.successful,
            MeasurementPhase::Failed => &mut status.failed,
            MeasurementPhase::Inconclusive => &mut status.inconclusive,
            MeasurementPhase::Error => &mut status.errors,
        };
        *counter = counter.saturating_add(1);
        if phase == MeasurementPhase::Error {
            status.consecutive_errors = status.consecutive_errors.saturating_add(1);
        } else {
            status.consecutive_errors = 0;
            status.step_measurements = status.step_measurements.saturating_add(1);
        }
        status.last_measurements.push(MetricMeasurement {
            phase,
            value,
            measured_at: Time(measured.at),
            message,
        });
        let excess = status.last_measurements.len().saturating_sub(KEPT_MEASUREMENTS);
        status.last_measurements.drain(..excess);
        status.phase = metric.phase(status);
        self.measured_now = true;
        let status = status.clone();
        match phase {
            MeasurementPhase::Failed if status.failed > metric.failure_limit => {
                self.metric_failed(&metric, &status);
            }
            MeasurementPhase::Inconclusive if status.inconclusive > metric.inconclusive_limit => {
                self.metric_inconclusive(&metric, &status);
            }
            MeasurementPhase::Error if status.consecutive_errors > metric.consecutive_error_limit => {
                self.metric_unavailable(&metric, &status);
            }
            _ => {}
        }
    }

    /// A dry run's report when its count just crossed its limit (once per crossing).
    fn dry_run_report(&mut self, count: i32, limit: i32, what: String) {
        if count == limit.saturating_add(1) {
            self.event(
                EventKind::Warning,
                reason::DRY_RUN_METRIC_FAILED,
                format!("Dry run: {what}; a dry-run metric does not act"),
            );
        }
    }

    fn metric_failed(&mut self, metric: &Metric, status: &MetricStatus) {
        let what = format!(
            "metric {} failed {} times (failureLimit {}); last value {} ({})",
            metric.name,
            status.failed,
            metric.failure_limit,
            last_value(status),
            metric.conditions_text()
        );
        if metric.dry_run {
            self.dry_run_report(status.failed, metric.failure_limit, what);
            return;
        }
        let step = self.step_name(self.index());
        match self.settings.policy.action {
            AnalysisAction::Rollback => self.abort(format!("Aborted at {step}: {what}")),
            AnalysisAction::Pause => {
                if !self.has_pause(reason::ANALYSIS_FAILED) {
                    self.add_pause(reason::ANALYSIS_FAILED, None);
                    let note = format!(
                        "Paused at {step}: {what}; promote to go on ({}) or abort to roll back ({})",
                        annotation::PROMOTE,
                        annotation::ABORT
                    );
                    self.event(EventKind::Warning, reason::ANALYSIS_FAILED, note);
                }
            }
        }
    }

    fn metric_inconclusive(&mut self, metric: &Metric, status: &MetricStatus) {
        let what = format!(
            "metric {} was inconclusive {} times (inconclusiveLimit {}); last value {} ({})",
            metric.name,
            status.inconclusive,
            metric.inconclusive_limit,
            last_value(status),
            metric.conditions_text()
        );
        if metric.dry_run {
            self.dry_run_report(status.inconclusive, metric.inconclusive_limit, what);
            return;
        }
        if !self.has_pause(reason::ANALYSIS_INCONCLUSIVE) {
            self.add_pause(reason::ANALYSIS_INCONCLUSIVE, None);
            let note = format!(
                "Paused at {}: {what}; promote to go on ({}) or abort to roll back ({})",
                self.step_name(self.index()),
                annotation::PROMOTE,
                annotation::ABORT
            );
            self.event(EventKind::Warning, reason::ANALYSIS_INCONCLUSIVE, note);
        }
    }

    fn metric_unavailable(&mut self, metric: &Metric, status: &MetricStatus) {
        let what = format!(
            "metric {} could not be measured {} times in a row (consecutiveErrorLimit {}): {}",
            metric.name,
            status.consecutive_errors,
            metric.consecutive_error_limit,
            last_message(status)
        );
        if metric.dry_run {
            self.dry_run_report(status.consecutive_errors, metric.consecutive_error_limit, what);
            return;
        }
        if !self.has_pause(reason::METRICS_UNAVAILABLE) {
            self.add_pause(reason::METRICS_UNAVAILABLE, None);
            let note = format!(
                "Paused at {}: {what}; it goes on by itself once the metric can be measured",
                self.step_name(self.index())
            );
            self.event(EventKind::Warning, reason::METRICS_UNAVAILABLE, note);
        }
    }

    /// Lifts the MetricsUnavailable pause once no metric that acts is past its error limit.
    fn lift_outage_pause(&mut self) {
        if !self.has_pause(reason::METRICS_UNAVAILABLE)
            || self.acting_in_phase(MetricPhase::Error).next().is_some()
        {
            return;
        }
        self.status
            .pause_conditions
            .retain(|p| p.reason != reason::METRICS_UNAVAILABLE);
        let note = format!(
            "The metrics can be measured again; the pause at {} ended",
            self.step_name(self.index())
        );
        self.event(EventKind::Normal, reason::METRICS_RECOVERED, note);
    }

    /// The statuses of the metrics that act (not dry runs) in `phase`.
    fn acting_in_phase(&self, phase: MetricPhase) -> impl Iterator<Item = &MetricStatus> {
        self.status
            .metrics
            .iter()
            .filter(move |s| !s.dry_run && s.phase == phase)
    }

    /// What an analysis step still waits for from the metrics, for people; `None` when they
    /// let it pass.
    pub(super) fn metrics_waiting(&self) -> Option<String> {
        let waits: Vec<String> = self
            .settings
            .metrics
            .iter()
            .zip(&self.status.metrics)
            .filter(|(metric, _)| !metric.dry_run)
            .filter_map(|(metric, status)| match status.phase {
                MetricPhase::Running | MetricPhase::Successful
                    if status.step_measurements >= metric.count =>
                {
                    None
                }
                MetricPhase::Running | MetricPhase::Successful => Some(format!(
                    "metric {} to be measured {} times ({} so far)",
                    metric.name, metric.count, status.step_measurements
                )),
                phase => Some(format!("metric {} ({phase:?})", metric.name)),
            })
            .collect();
        (!waits.is_empty()).then(|| waits.join(" and "))
    }

    /// The metrics an analysis step passed with, for its Event (empty without metrics).
    pub(super) fn metrics_passed_text(&self) -> String {
        let passed: Vec<String> = self
            .status
            .metrics
            .iter()
            .filter(|s| !s.dry_run)
            .map(|s| format!("{} {}", s.name, last_value(s)))
            .collect();
        match passed.is_empty() {
            true => String::new(),
            false => format!("; metrics: {}", passed.join(", ")),
        }
    }

    /// The metrics that failed past their limit, for people; `None` when none did.
    pub(super) fn failed_metrics_text(&self) -> Option<String> {
        let failed: Vec<&MetricStatus> = self.acting_in_phase(MetricPhase::Failed).collect();
        (!failed.is_empty()).then(|| describe(&failed, "failed"))
    }

    /// The metrics that act in `phase` (Inconclusive or Error), for people.
    pub(super) fn metrics_in_phase_text(&self, phase: MetricPhase) -> String {
        let found: Vec<&MetricStatus> = self.acting_in_phase(phase).collect();
        match phase {
            MetricPhase::Error if found.is_empty() => "metrics could not be measured".to_owned(),
            MetricPhase::Error => describe(&found, "cannot be measured"),
            _ if found.is_empty() => "metrics were inconclusive".to_owned(),
            _ => describe(&found, "is inconclusive"),
        }
    }

    /// When the next metric is due (a metric that is due already but was not measured waits
    /// one interval, so a shell that did not measure it does not make the controller spin).
    pub(super) fn next_measurement_at(&self) -> Option<Timestamp> {
        let started = self.status.started_at.as_ref()?.0;
        self.settings
            .metrics
            .iter()
            .map(|metric| {
                let last = self
                    .status
                    .metrics
                    .iter()
                    .find(|s| s.name == metric.name)
                    .and_then(|s| s.last_measurements.last())
                    .map_or(started, |m| m.measured_at.0);
                let due = metric.due_at(last);
                match due > self.now {
                    true => due,
                    false => metric.due_at(self.now),
                }
            })
            .min()
    }
}

fn last_value(status: &MetricStatus) -> String {
    match status.last_measurements.last() {
        Some(MetricMeasurement {
            value: Some(value), ..
        }) => value.clone(),
        Some(_) => "none (an error)".to_owned(),
        None => "none yet".to_owned(),
    }
}

fn last_message(status: &MetricStatus) -> String {
    status
        .last_measurements
        .last()
        .and_then(|m| m.message.clone())
        .unwrap_or_else(|| "no message".to_owned())
}

/// `metric error-rate failed (last value 0.2)`, or the last error of one that cannot be
/// measured, for each of `statuses`.
fn describe(statuses: &[&MetricStatus], verb: &str) -> String {
    statuses
        .iter()
        .map(|s| match s.phase {
            MetricPhase::Error => format!("metric {} {verb} ({})", s.name, last_message(s)),
            _ => format!("metric {} {verb} (last value {})", s.name, last_value(s)),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
