//! A Rollout's progression as pure decisions: is it valid, and what comes next.
//!
//! [`validate`] checks what the API server's schema cannot (references, durations, and again
//! every schema rule, since standalone mode reads YAML no API server has seen). [`progress`]
//! takes the Rollout (spec, annotations and current status), what the shell observed
//! ([`RolloutInputs`]: the channel's stable bundle, the candidate's sync state, the failure
//! figures read from the device store) and `now`, and returns a [`RolloutPlan`]: the new status,
//! the Events to publish, the exact time to look again, and whether the candidate is now the
//! channel's stable bundle.
//!
//! Everything the next decision needs is in the status (step index, percent, salt, pause
//! conditions with their start times, the time of the last analysis, the command annotations
//! already handled), so a restarted controller continues at the same step with the same cohort.
//! Calling [`progress`] again with the status it returned and the same `now` changes nothing and
//! publishes nothing, so a controller woken by its own status write does not spin.
//!
//! Semantics:
//! - `setPercent N` offers the candidate to N% of devices (the percent never decreases while the
//!   rollout runs; an abort sets it to 0). `pause` with a duration waits until its start plus
//!   the duration; without one it waits to be promoted. An `analysis` step evaluates the policy:
//!   it goes on when it passes, applies the policy's action when it fails, and waits (looking
//!   again every `interval`) while fewer than `minAttempts` devices have tried the candidate.
//! - A background analysis runs every `interval` for the whole rollout, paused or not. It acts
//!   when attempts ≥ `minAttempts` and the Wilson lower bound of the failure rate at
//!   `confidence` exceeds `maxFailureRate`: `pause` adds an AnalysisFailed pause (a person
//!   promotes or aborts), `rollback` aborts (percent 0: the stable bundle to every device).
//! - Metrics (`analysis.metrics`: Prometheus queries and web services judged by CEL conditions)
//!   are measured by the shell when [`measurements_due`] says so and brought back in
//!   [`RolloutInputs::measurements`]; a failed metric applies the policy's action, an
//!   inconclusive one pauses for a person, one that cannot be measured pauses until it can
//!   (never aborting), a dry run only reports, and an analysis step also waits for each
//!   metric's `count` ([`metric_analysis`], [`metrics`]).
//! - No step advances and nothing completes while the candidate is not synced.
//! - Commands are annotations ([`crate::api::constants::annotation`]); each acts once per new
//!   value (the value acted on is kept in `status.handledCommands`). When several arrive at once
//!   they apply in the order retry, promote-full, promote, pause, abort, so the most cautious
//!   wins. A command that does not apply in the current phase is acknowledged with an Event.
//! - A new `spec.bundleRef` starts a new rollout from the channel's current stable bundle; an
//!   aborted rollout stays aborted until retried (or given a new bundleRef).

mod figures;
pub mod measurement;
mod metric_analysis;
mod metrics;
mod settings;
mod stats;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

pub use self::{
    figures::FiguresQueryError,
    metrics::KEPT_MEASUREMENTS,
    settings::{MAX_DURATION, MAX_METRICS, MAX_SALT_CHARS, MAX_STEPS, MIN_ANALYSIS_PERIOD},
    stats::{inverse_normal_cdf, wilson_lower_bound},
};
use self::{
    measurement::{Measured, MeasurementRequest},
    settings::{Settings, Step},
};
use crate::{
    api::{
        App, Bundle, Channel, Rollout, RolloutStatus,
        channel::PromotedBundle,
        constants::{annotation, condition, reason},
        rollout::{AnalysisAction, AnalysisFigures, MetricPhase, PauseCondition, RolloutPhase},
    },
    core::conditions::{
        ConditionStatus, DesiredCondition, merge_conditions, ready_set, reconciling_set, stalled_set,
    },
};

/// Why a Rollout cannot proceed as written. `reason` is [`reason::INVALID_SPEC`] or
/// [`reason::REFERENCE_NOT_FOUND`]; either way the Rollout is Stalled until it (or what it
/// references) changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Invalid {
    /// The condition reason.
    pub reason: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl Invalid {
    fn spec(message: impl Into<String>) -> Invalid {
        Invalid {
            reason: reason::INVALID_SPEC,
            message: message.into(),
        }
    }
}

fn name_of(meta: &kube::api::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// Checks `rollout` against the objects of its namespace (objects of other namespaces are
/// ignored): the spec is sound (steps, durations, policy bounds), its Channel exists, and its
/// candidate Bundle exists and belongs to the Channel's App. A missing object gives
/// [`reason::REFERENCE_NOT_FOUND`], anything else [`reason::INVALID_SPEC`].
pub fn validate(rollout: &Rollout, channels: &[Channel], bundles: &[Bundle]) -> Result<(), Invalid> {
    named(rollout, channels, bundles).map(|_| ())
}

/// [`validate`], giving the Channel and the candidate it found.
fn named<'a>(
    rollout: &Rollout,
    channels: &'a [Channel],
    bundles: &'a [Bundle],
) -> Result<(&'a Channel, &'a Bundle), Invalid> {
    Settings::parse(&rollout.spec)?;
    let namespace = rollout.metadata.namespace.as_deref();
    let in_namespace = |meta: &kube::api::ObjectMeta| meta.namespace.as_deref() == namespace;
    let spec = &rollout.spec;
    let channel = channels
        .iter()
        .find(|c| in_namespace(&c.metadata) && name_of(&c.metadata) == spec.channel_ref)
        .ok_or_else(|| Invalid {
            reason: reason::REFERENCE_NOT_FOUND,
            message: format!("Channel {} does not exist", spec.channel_ref),
        })?;
    let bundle = bundles
        .iter()
        .find(|b| in_namespace(&b.metadata) && name_of(&b.metadata) == spec.bundle_ref)
        .ok_or_else(|| Invalid {
            reason: reason::REFERENCE_NOT_FOUND,
            message: format!("Bundle {} does not exist", spec.bundle_ref),
        })?;
    if bundle.spec.app_ref != channel.spec.app_ref {
        return Err(Invalid::spec(format!(
            "Bundle {} belongs to App {}, but Channel {} serves App {}",
            spec.bundle_ref, bundle.spec.app_ref, spec.channel_ref, channel.spec.app_ref
        )));
    }
    Ok((channel, bundle))
}

/// Whether the candidate Bundle can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CandidateSync {
    /// Synced: it can be offered.
    Synced,
    /// Not synced yet (or syncing again); the rollout waits.
    Pending,
    /// Its sync failed for good; the rollout waits for the Bundle to change (Stalled).
    Failed {
        /// The Bundle's Stalled reason.
        reason: String,
        /// The Bundle's Stalled message.
        message: String,
    },
}

impl CandidateSync {
    /// The sync state a Bundle's status reports: Synced=True, or Stalled=True, or neither.
    pub fn of(bundle: &Bundle) -> CandidateSync {
        let conditions = bundle.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
        let true_condition = |type_: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == ConditionStatus::True.as_str())
        };
        if true_condition(condition::SYNCED).is_some() {
            return CandidateSync::Synced;
        }
        match true_condition(condition::STALLED) {
            Some(stalled) => CandidateSync::Failed {
                reason: stalled.reason.clone(),
                message: stalled.message.clone(),
            },
            None => CandidateSync::Pending,
        }
    }
}

/// What devices reported about the candidate in this channel since [`figures_since`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCounts {
    /// Devices that tried the candidate.
    pub attempts: i64,
    /// Devices among them that reported a failure with it.
    pub failures: i64,
}

/// What the shell observed for [`progress`].
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutInputs<'a> {
    /// The Bundle the channel serves outside any rollout's cohort (`None`: the assets built into
    /// the app). A new rollout starts from it and an abort returns to it.
    pub channel_stable: Option<&'a str>,
    /// The candidate's sync state ([`CandidateSync::of`]).
    pub candidate: CandidateSync,
    /// The failure figures of the candidate in this channel, counted since
    /// [`figures_since`]; `None` when the device store could not be read (the analysis then
    /// waits and says so).
    pub figures: Option<FailureCounts>,
    /// The measurements of the metrics [`measurements_due`] asked for (a provider's failure is
    /// an error measurement, never left out).
    pub measurements: &'a [Measured],
}

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A transition as planned.
    Normal,
    /// A failure or an abort.
    Warning,
}

/// An Event to publish on the Rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutEvent {
    /// Normal or Warning.
    pub kind: EventKind,
    /// PascalCase reason (a constant of [`reason`]).
    pub reason: &'static str,
    /// What happened.
    pub note: String,
}

/// What [`progress`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// The complete new status (its conditions are the previous ones merged with `conditions`).
    pub status: RolloutStatus,
    /// Ready, Reconciling, Stalled, Paused and Completed as they should read.
    pub conditions: Vec<DesiredCondition>,
    /// The transitions of this decision, in order.
    pub events: Vec<RolloutEvent>,
    /// When to decide again even if nothing changes (the end of a timed pause, the next
    /// analysis); `None`: only a change of the Rollout or its inputs matters.
    pub requeue_at: Option<Timestamp>,
    /// The candidate, once the rollout completed: record it as the channel's stable bundle.
    /// Repeated on every decision of a completed rollout, so recording it is idempotent and a
    /// restart between the status write and the recording loses nothing.
    pub record_stable: Option<String>,
}

/// A fraction as a percent for people: at most two decimals, no trailing zeros (`5%`, `99.99%`).
fn percent_text(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

fn after(time: Timestamp, duration: Duration) -> Timestamp {
    time.saturating_add(duration).unwrap_or(Timestamp::MAX)
}

/// The start of the stretch the failure figures of [`RolloutInputs::figures`] cover: the
/// policy's window before `now`, but never before the rollout (or its latest retry) started, so
/// the failures that caused an abort do not judge the retry. `now` when the status does not
/// describe the spec's candidate yet (the next decision starts a new rollout).
pub fn figures_since(rollout: &Rollout, now: Timestamp) -> Result<Timestamp, Invalid> {
    let settings = Settings::parse(&rollout.spec)?;
    let window_start = now
        .saturating_sub(settings.policy.window)
        .unwrap_or(Timestamp::MIN);
    let status = rollout.status.as_ref();
    let current = status.is_some_and(|s| s.candidate_bundle.as_deref() == Some(&rollout.spec.bundle_ref));
    Ok(match status.and_then(|s| s.started_at.as_ref()) {
        Some(started) if current => window_start.max(started.0),
        _ => now,
    })
}

/// The margin [`outcome_retention`] adds to a Rollout's analysis window: clocks that disagree,
/// and a decision made just before a prune.
pub const OUTCOME_RETENTION_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// How long the device store must keep devices' outcomes for `rollout`'s analysis: its window
/// plus [`OUTCOME_RETENTION_MARGIN`]. The figures of a decision count outcomes since
/// [`figures_since`], never before its window, so older outcomes are never read again.
///
/// The window is read alone: a Rollout invalid for another reason (a step, say) resumes once
/// mended and then reads its whole window. A window that does not parse keeps the longest one
/// a Rollout may name.
pub fn outcome_retention(rollout: &Rollout) -> Duration {
    settings::analysis_window(&rollout.spec)
        .unwrap_or(MAX_DURATION)
        .saturating_add(OUTCOME_RETENTION_MARGIN)
}

/// Whether `status` describes the spec's candidate in one of `phases`.
fn ended(rollout: &Rollout, status: Option<&RolloutStatus>, phases: &[RolloutPhase]) -> bool {
    status.is_some_and(|s| {
        s.candidate_bundle.as_deref() == Some(rollout.spec.bundle_ref.as_str())
            && s.phase.is_some_and(|phase| phases.contains(&phase))
    })
}

/// The promotion to record for `plan`, if this decision completes the rollout: its candidate
/// over the channel's current `spec.bundleRef`. Only the completing decision records it (a
/// completed rollout repeats `record_stable` on every decision; recording it again after git
/// moved the channel's `bundleRef` would take the choice back from git). Record it before the
/// Completed status: the snapshot serves a completed rollout through the promotion alone, so a
/// restart between the two writes completes again and records the same promotion.
pub fn promotion_of(rollout: &Rollout, plan: &RolloutPlan, channel: &Channel) -> Option<PromotedBundle> {
    let completed = |status: Option<&RolloutStatus>| ended(rollout, status, &[RolloutPhase::Completed]);
    if completed(rollout.status.as_ref()) || !completed(Some(&plan.status)) {
        return None;
    }
    Some(PromotedBundle {
        bundle: plan.record_stable.clone()?,
        over_bundle_ref: channel.spec.bundle_ref.clone(),
        rollout: name_of(&rollout.metadata).to_owned(),
    })
}

/// Whether a recorded promotion is released: its Channel is gone (`None`), or git moved the
/// Channel's `spec.bundleRef` from the bundleRef it was made over. Git's choice then stands, also
/// when it later returns to that bundleRef, so a released promotion is removed, not kept aside.
pub fn promotion_released(promoted: &PromotedBundle, channel: Option<&Channel>) -> bool {
    channel.is_none_or(|channel| !promoted.holds_over(channel.spec.bundle_ref.as_deref()))
}

/// What the analysis of a Rollout asks the device store: how many devices of `channel` reported
/// on `version` of `app_id` since `since_ms`, and how many of them failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiguresQuery {
    /// The App's `appId`.
    pub app_id: String,
    /// The Channel's name.
    pub channel: String,
    /// The candidate's version.
    pub version: String,
    /// Reports at or after this time count (milliseconds since the epoch; [`figures_since`]).
    pub since_ms: i64,
}

/// The figures `rollout` (with its last status) needs at `now`, from the Apps, Channels and
/// Bundles of its namespace; `None` when it needs none: it is completed or aborted, or its
/// Channel, candidate or App is missing or its spec does not parse (the decision reports that).
pub fn figures_query(
    rollout: &Rollout,
    apps: &[App],
    channels: &[Channel],
    bundles: &[Bundle],
    now: Timestamp,
) -> Option<FiguresQuery> {
    let settled = [RolloutPhase::Completed, RolloutPhase::Aborted];
    if ended(rollout, rollout.status.as_ref(), &settled) {
        return None;
    }
    let (channel, candidate) = named(rollout, channels, bundles).ok()?;
    let namespace = rollout.metadata.namespace.as_deref();
    let app = apps.iter().find(|a| {
        a.metadata.namespace.as_deref() == namespace && name_of(&a.metadata) == channel.spec.app_ref
    })?;
    Some(FiguresQuery {
        app_id: app.spec.app_id.clone(),
        channel: rollout.spec.channel_ref.clone(),
        version: candidate.spec.version.clone(),
        since_ms: figures_since(rollout, now).ok()?.as_millisecond(),
    })
}

/// The plan for a Rollout that [`validate`] refused: the status keeps its phase and position
/// (what the update server serves does not change) and reads Stalled with the reason; a Warning
/// Event when this is news.
pub fn invalid_plan(rollout: &Rollout, invalid: &Invalid, now: Timestamp) -> RolloutPlan {
    let previous = rollout.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = rollout.metadata.generation;
    status.message = Some(invalid.message.clone());
    let conditions = stalled_set(invalid.reason, invalid.message.clone());
    let already_reported = previous.conditions.iter().any(|c| {
        c.type_ == condition::STALLED
            && c.status == ConditionStatus::True.as_str()
            && c.reason == invalid.reason
            && c.message == invalid.message
    });
    let events = match already_reported {
        true => Vec::new(),
        false => vec![RolloutEvent {
            kind: EventKind::Warning,
            reason: invalid.reason,
            note: invalid.message.clone(),
        }],
    };
    status.conditions = merge_conditions(&previous.conditions, &conditions, status.observed_generation, now);
    RolloutPlan {
        status,
        conditions,
        events,
        requeue_at: None,
        record_stable: None,
    }
}

/// The whole decision for `rollout` at `now`: [`validate`] against the Channels and Bundles of
/// its namespace that it names (others are ignored), then [`progress`] from its Channel's
/// stable bundle, its candidate's sync state and the failure figures the shell read.
pub fn decide(
    rollout: &Rollout,
    channels: &[Channel],
    bundles: &[Bundle],
    figures: Option<FailureCounts>,
    measurements: &[Measured],
    now: Timestamp,
) -> RolloutPlan {
    let (channel, candidate) = match named(rollout, channels, bundles) {
        Ok(found) => found,
        Err(invalid) => return invalid_plan(rollout, &invalid, now),
    };
    let inputs = RolloutInputs {
        channel_stable: channel.stable_bundle_ref(),
        candidate: CandidateSync::of(candidate),
        figures,
        measurements,
    };
    progress(rollout, &inputs, now)
}

/// The measurements of `rollout`'s metrics due at `now` (each metric every `interval` from the
/// rollout's start, then from its last measurement), their templates filled from the Channels
/// and Bundles of its namespace (the candidate's version, the stable bundle's version or
/// `builtin`, ...). None unless the status describes the spec's candidate Progressing or
/// Paused (whatever paused it: a metric that paused the rollout is measured to lift the
/// pause), and none while the spec or its references are invalid.
pub fn measurements_due(
    rollout: &Rollout,
    channels: &[Channel],
    bundles: &[Bundle],
    now: Timestamp,
) -> Vec<MeasurementRequest> {
    let status = rollout.status.as_ref();
    let running = [RolloutPhase::Progressing, RolloutPhase::Paused];
    let (Some(status), true) = (status, ended(rollout, status, &running)) else {
        return Vec::new();
    };
    let (Ok(settings), Ok((channel, candidate))) =
        (Settings::parse(&rollout.spec), named(rollout, channels, bundles))
    else {
        return Vec::new();
    };
    let Some(started) = status.started_at.as_ref().map(|t| t.0) else {
        return Vec::new();
    };
    let namespace = rollout.metadata.namespace.as_deref();
    // A stable Bundle out of view is named rather than left out.
    let stable = match &status.stable_bundle {
        None => "builtin".to_owned(),
        Some(name) => bundles
            .iter()
            .find(|b| b.metadata.namespace.as_deref() == namespace && name_of(&b.metadata) == name)
            .map_or_else(|| name.clone(), |b| b.spec.version.clone()),
    };
    let values = metrics::TemplateValues {
        candidate: candidate.spec.version.clone(),
        stable,
        channel: rollout.spec.channel_ref.clone(),
        app: channel.spec.app_ref.clone(),
        namespace: namespace.unwrap_or_default().to_owned(),
        percent: status.current_percent.unwrap_or(0).to_string(),
        started_at: started.to_string(),
    };
    settings
        .metrics
        .iter()
        .filter(|metric| {
            let last = status
                .metrics
                .iter()
                .find(|s| s.name == metric.name)
                .and_then(|s| s.last_measurements.last())
                .map_or(started, |m| m.measured_at.0);
            metric.due_at(last) <= now
        })
        .map(|metric| metric.request(&values))
        .collect()
}

/// The next status of `rollout` at `now`, given what the shell observed. A spec that does not
/// parse gives [`invalid_plan`] (call [`validate`] first to check the references too).
pub fn progress(rollout: &Rollout, inputs: &RolloutInputs<'_>, now: Timestamp) -> RolloutPlan {
    let settings = match Settings::parse(&rollout.spec) {
        Ok(settings) => settings,
        Err(invalid) => return invalid_plan(rollout, &invalid, now),
    };
    let previous = rollout.status.clone().unwrap_or_default();
    let mut run = Run {
        rollout,
        settings,
        inputs,
        now,
        status: previous.clone(),
        events: Vec::new(),
        started_now: false,
        entered_step: false,
        evaluation: None,
        abort_message: None,
        measured_now: false,
    };
    run.status.observed_generation = rollout.metadata.generation;
    run.status.salt = Some(run.salt());
    let describes_spec = run.status.candidate_bundle.as_deref() == Some(rollout.spec.bundle_ref.as_str());
    if !describes_spec || run.status.phase.is_none() {
        run.start(reason::ROLLOUT_STARTED);
    }
    run.handle_commands();
    if run.active() {
        run.keep_current_pauses();
        run.apply_measurements();
    }
    if run.active() {
        run.background_analysis();
        run.walk();
    }
    run.finish(&previous)
}

/// The verdict of one evaluation of the policy.
#[derive(Debug, Clone, PartialEq)]
enum Evaluation {
    /// Fewer attempts than `minAttempts`.
    TooFewAttempts,
    Pass,
    Fail,
    /// No usable figures: why, for people.
    Unavailable(String),
    /// The rollout (re)started in this decision: figures read before it do not count yet.
    NotYet,
}

/// One decision in progress.
struct Run<'a> {
    rollout: &'a Rollout,
    settings: Settings,
    inputs: &'a RolloutInputs<'a>,
    now: Timestamp,
    status: RolloutStatus,
    events: Vec<RolloutEvent>,
    /// The rollout started or was retried in this decision.
    started_now: bool,
    /// The current step became current in this decision.
    entered_step: bool,
    /// The evaluation of this decision, once made (background and step share it).
    evaluation: Option<Evaluation>,
    /// Set when this decision aborts: the message the aborted status keeps.
    abort_message: Option<String>,
    /// A metric's measurement was recorded in this decision.
    measured_now: bool,
}

/// The pause reasons in the order the status explains them: what the analysis found first (a
/// metrics outage before the pauses people asked for: it is the news, and it ends by itself).
const PAUSE_PRIORITY: [&str; 6] = [
    reason::ANALYSIS_FAILED,
    reason::ANALYSIS_INCONCLUSIVE,
    reason::METRICS_UNAVAILABLE,
    reason::PAUSED_BY_USER,
    reason::WAITING_FOR_PROMOTION,
    reason::PAUSE_STEP,
];

impl Run<'_> {
    fn event(&mut self, kind: EventKind, reason: &'static str, note: impl Into<String>) {
        self.events.push(RolloutEvent {
            kind,
            reason,
            note: note.into(),
        });
    }

    fn salt(&self) -> String {
        let meta = &self.rollout.metadata;
        self.rollout
            .spec
            .salt
            .clone()
            .or_else(|| meta.uid.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    meta.namespace.as_deref().unwrap_or_default(),
                    name_of(meta)
                )
            })
    }

    fn active(&self) -> bool {
        matches!(
            self.status.phase,
            Some(RolloutPhase::Progressing | RolloutPhase::Paused)
        )
    }

    fn index(&self) -> usize {
        usize::try_from(self.status.current_step_index.unwrap_or(0)).unwrap_or(0)
    }

    fn set_index(&mut self, index: usize) {
        self.status.current_step_index = Some(i32::try_from(index).unwrap_or(i32::MAX));
        self.entered_step = true;
        // An analysis step counts the measurements taken since it began.
        for metric in &mut self.status.metrics {
            metric.step_measurements = 0;
        }
    }

    fn percent(&self) -> i32 {
        self.status.current_percent.unwrap_or(0)
    }

    fn step_name(&self, index: usize) -> String {
        match self.settings.steps.len() {
            steps if index < steps => format!("step {} of {steps}", index + 1),
            steps => format!("the end of its {steps} steps"),
        }
    }

    fn candidate(&self) -> &str {
        &self.rollout.spec.bundle_ref
    }

    fn stable_name(&self) -> String {
        match &self.status.stable_bundle {
            Some(bundle) => format!("Bundle {bundle}"),
            None => "the assets built into the app".to_owned(),
        }
    }

    fn has_pause(&self, reason: &str) -> bool {
        self.status.pause_conditions.iter().any(|p| p.reason == reason)
    }

    fn add_pause(&mut self, reason: &str, until: Option<Timestamp>) {
        self.status.pause_conditions.push(PauseCondition {
            reason: reason.to_owned(),
            start_time: Time(self.now),
            until: until.map(Time),
        });
    }

    /// A new rollout of the spec's candidate (or a retry of it) from the channel's stable bundle.
    fn start(&mut self, why: &'static str) {
        let status = &mut self.status;
        status.phase = Some(RolloutPhase::Progressing);
        status.current_percent = Some(0);
        status.stable_bundle = self.inputs.channel_stable.map(str::to_owned);
        status.candidate_bundle = Some(self.rollout.spec.bundle_ref.clone());
        status.pause_conditions.clear();
        status.started_at = Some(Time(self.now));
        status.aborted_at = None;
        status.completed_at = None;
        status.analysis = None;
        status.metrics.clear();
        self.set_index(0);
        self.started_now = true;
        let note = format!(
            "Rollout of Bundle {} started from {}, cohort salt {}",
            self.candidate(),
            self.stable_name(),
            self.status.salt.as_deref().unwrap_or_default()
        );
        let note = match why {
            reason::RETRIED => format!("Retried: {note}"),
            _ => note,
        };
        self.event(EventKind::Normal, why, note);
        if self.inputs.channel_stable == Some(self.rollout.spec.bundle_ref.as_str()) {
            // Nothing to move: the candidate already is the stable bundle.
            let last = self.settings.steps.len();
            self.set_index(last);
        }
    }

    fn abort(&mut self, message: String) {
        let status = &mut self.status;
        status.phase = Some(RolloutPhase::Aborted);
        status.current_percent = Some(0);
        status.pause_conditions.clear();
        status.aborted_at = Some(Time(self.now));
        let message = format!(
            "{message}; {} is served to every device. Retry with `kubectl ota retry` (a new value of \
             the annotation {}) or set a new bundleRef",
            self.stable_name(),
            annotation::RETRY
        );
        self.event(EventKind::Warning, reason::ABORTED, message.clone());
        self.abort_message = Some(message);
    }

    fn ignore(&mut self, command: &str, why: String) {
        self.event(
            EventKind::Normal,
            reason::COMMAND_IGNORED,
            format!("{command} ignored: {why}"),
        );
    }

    fn phase_name(&self) -> &'static str {
        match self.status.phase {
            Some(RolloutPhase::Progressing) => "progressing",
            Some(RolloutPhase::Paused) => "paused",
            Some(RolloutPhase::Completed) => "completed",
            Some(RolloutPhase::Aborted) => "aborted",
            None => "not started",
        }
    }

    /// Acts on each command annotation whose value was not handled yet, and forgets the handled
    /// value of an annotation that is gone (so adding it again acts again).
    fn handle_commands(&mut self) {
        let annotations = self.rollout.metadata.annotations.clone().unwrap_or_default();
        let commands = [
            annotation::RETRY,
            annotation::PROMOTE_FULL,
            annotation::PROMOTE,
            annotation::PAUSE,
            annotation::ABORT,
        ];
        let handled = std::mem::take(&mut self.status.handled_commands);
        let mut now_handled = BTreeMap::new();
        for command in commands {
            let Some(value) = annotations.get(command) else {
                continue;
            };
            now_handled.insert(command.to_owned(), value.clone());
            if handled.get(command) != Some(value) {
                self.command(command);
            }
        }
        // Other keys are not commands of this version; keep nothing else.
        self.status.handled_commands = now_handled;
    }

    fn command(&mut self, command: &'static str) {
        let active = self.active();
        match command {
            annotation::RETRY => match self.status.phase {
                Some(RolloutPhase::Aborted) => self.start(reason::RETRIED),
                _ => self.ignore(
                    command,
                    format!("the rollout is {}, not aborted", self.phase_name()),
                ),
            },
            annotation::ABORT if active => {
                let message = format!(
                    "Aborted by a person ({command}) at {}",
                    self.step_name(self.index())
                );
                self.abort(message);
            }
            annotation::PAUSE if active => {
                if self.has_pause(reason::PAUSED_BY_USER) {
                    self.ignore(command, "the rollout is already paused by a person".to_owned());
                } else {
                    self.add_pause(reason::PAUSED_BY_USER, None);
                    let note = format!(
                        "Paused by a person at {}; promote to go on ({})",
                        self.step_name(self.index()),
                        annotation::PROMOTE
                    );
                    self.event(EventKind::Normal, reason::PAUSED_BY_USER, note);
                }
            }
            annotation::PROMOTE if active => {
                let index = self.index();
                let waiting_step = matches!(
                    self.settings.steps.get(index),
                    Some(Step::Pause(_) | Step::Analysis)
                );
                if !waiting_step && self.status.pause_conditions.is_empty() {
                    self.ignore(command, format!("nothing waits at {}", self.step_name(index)));
                    return;
                }
                self.status.pause_conditions.clear();
                let note = match waiting_step {
                    true => {
                        self.set_index(index + 1);
                        format!("Promoted past {}", self.step_name(index))
                    }
                    false => format!("Promoted: the pause ended at {}", self.step_name(index)),
                };
                self.event(EventKind::Normal, reason::PROMOTED, note);
            }
            annotation::PROMOTE_FULL if active => {
                let from = self.step_name(self.index());
                self.status.pause_conditions.clear();
                let last = self.settings.steps.len();
                self.set_index(last);
                self.event(
                    EventKind::Normal,
                    reason::PROMOTED_FULL,
                    format!("Promoted past every remaining step from {from}"),
                );
            }
            _ => {
                let why = match self.status.phase {
                    Some(RolloutPhase::Aborted) => {
                        format!("the rollout is aborted; retry it first ({})", annotation::RETRY)
                    }
                    _ => format!("the rollout is {}", self.phase_name()),
                };
                self.ignore(command, why);
            }
        }
    }

    /// Drops the pauses that belong to a step other than the current one (the spec changed under
    /// them) and recomputes a timed pause's end from its start and the current duration.
    fn keep_current_pauses(&mut self) {
        let step = self.settings.steps.get(self.index()).copied();
        self.status
            .pause_conditions
            .retain_mut(|pause| match pause.reason.as_str() {
                reason::PAUSE_STEP => match step {
                    Some(Step::Pause(Some(duration))) => {
                        pause.until = Some(Time(after(pause.start_time.0, duration)));
                        true
                    }
                    _ => false,
                },
                reason::WAITING_FOR_PROMOTION => matches!(step, Some(Step::Pause(None))),
                reason::PAUSED_BY_USER
                | reason::ANALYSIS_FAILED
                | reason::ANALYSIS_INCONCLUSIVE
                | reason::METRICS_UNAVAILABLE => true,
                _ => false,
            });
    }

    fn next_analysis_at(&self) -> Timestamp {
        let last = self
            .status
            .analysis
            .as_ref()
            .map(|a| a.evaluated_at.0)
            .or_else(|| self.status.started_at.as_ref().map(|t| t.0))
            .unwrap_or(self.now);
        after(last, self.settings.policy.interval)
    }

    /// The evaluation of this decision (made once, recorded in the status's figures).
    fn evaluate(&mut self) -> Evaluation {
        if let Some(evaluation) = &self.evaluation {
            return evaluation.clone();
        }
        let evaluation = self.evaluate_figures();
        self.evaluation = Some(evaluation.clone());
        evaluation
    }

    fn evaluate_figures(&mut self) -> Evaluation {
        if self.started_now {
            return Evaluation::NotYet;
        }
        let Some(counts) = self.inputs.figures else {
            return Evaluation::Unavailable("the device store could not be read".to_owned());
        };
        let (Ok(attempts), Ok(failures)) = (u64::try_from(counts.attempts), u64::try_from(counts.failures))
        else {
            return Evaluation::Unavailable(format!(
                "negative figures ({} failures in {} attempts)",
                counts.failures, counts.attempts
            ));
        };
        let policy = self.settings.policy;
        let Some(lower_bound) = wilson_lower_bound(failures, attempts, policy.z) else {
            return Evaluation::Unavailable(format!(
                "inconsistent figures: {failures} failures in {attempts} attempts"
            ));
        };
        let failure_rate = match attempts {
            0 => 0.0,
            _ => failures as f64 / attempts as f64,
        };
        self.status.analysis = Some(AnalysisFigures {
            attempts: counts.attempts,
            failures: counts.failures,
            failure_rate,
            lower_bound,
            evaluated_at: Time(self.now),
        });
        if counts.attempts < policy.min_attempts {
            Evaluation::TooFewAttempts
        } else if lower_bound > policy.max_failure_rate {
            Evaluation::Fail
        } else {
            Evaluation::Pass
        }
    }

    /// The figures of the last evaluation, for people.
    fn figures_text(&self) -> String {
        let policy = self.settings.policy;
        match &self.status.analysis {
            Some(a) => format!(
                "{} failures in {} attempts ({}; lower bound {} at {} confidence; maximum {})",
                a.failures,
                a.attempts,
                percent_text(a.failure_rate),
                percent_text(a.lower_bound),
                percent_text(policy.confidence),
                percent_text(policy.max_failure_rate)
            ),
            None => "no figures yet".to_owned(),
        }
    }

    /// Applies the policy's action to a failed evaluation.
    fn analysis_failed(&mut self, source: &str) {
        let figures = self.figures_text();
        match self.settings.policy.action {
            AnalysisAction::Rollback => {
                self.abort(format!("Aborted by the {source}: {figures}"));
            }
            AnalysisAction::Pause => {
                if !self.has_pause(reason::ANALYSIS_FAILED) {
                    self.add_pause(reason::ANALYSIS_FAILED, None);
                    let note = format!(
                        "Paused by the {source}: {figures}; promote to go on ({}) or abort to roll back ({})",
                        annotation::PROMOTE,
                        annotation::ABORT
                    );
                    self.event(EventKind::Warning, reason::ANALYSIS_FAILED, note);
                }
            }
        }
    }

    fn background_analysis(&mut self) {
        if self.now < self.next_analysis_at() {
            return;
        }
        if self.evaluate() == Evaluation::Fail {
            self.analysis_failed("background analysis");
        }
    }

    /// Moves through the steps as far as they allow now.
    fn walk(&mut self) {
        while self.active() {
            let index = self.index();
            // A timed pause of the current step ends on its own, even under another pause.
            if let Some(Step::Pause(Some(_))) = self.settings.steps.get(index)
                && let Some(position) = self
                    .status
                    .pause_conditions
                    .iter()
                    .position(|p| p.reason == reason::PAUSE_STEP)
                && self.status.pause_conditions[position]
                    .until
                    .as_ref()
                    .is_some_and(|until| until.0 <= self.now)
            {
                self.status.pause_conditions.remove(position);
                self.set_index(index + 1);
                let written = self.rollout.spec.steps[index]
                    .pause
                    .as_ref()
                    .and_then(|p| p.duration.as_deref());
                let note = format!(
                    "The pause of {} at {} ended",
                    written.unwrap_or_default(),
                    self.step_name(index)
                );
                self.event(EventKind::Normal, reason::PAUSE_ENDED, note);
                continue;
            }
            if !self.status.pause_conditions.is_empty() || self.inputs.candidate != CandidateSync::Synced {
                return;
            }
            let Some(step) = self.settings.steps.get(index).copied() else {
                self.complete();
                return;
            };
            match step {
                Step::SetPercent(percent) => {
                    if percent > self.percent() {
                        self.status.current_percent = Some(percent);
                        let note = format!(
                            "{}: Bundle {} is offered to {percent}% of devices",
                            self.step_name(index),
                            self.candidate()
                        );
                        self.event(EventKind::Normal, reason::PERCENT_INCREASED, note);
                    }
                    self.set_index(index + 1);
                }
                Step::Pause(duration) => {
                    let until = duration.map(|d| after(self.now, d));
                    match until {
                        Some(until) => {
                            self.add_pause(reason::PAUSE_STEP, Some(until));
                            let note = format!("{}: paused until {until}", self.step_name(index));
                            self.event(EventKind::Normal, reason::PAUSE_STEP, note);
                        }
                        None => {
                            self.add_pause(reason::WAITING_FOR_PROMOTION, None);
                            let note = format!(
                                "{}: waiting to be promoted ({})",
                                self.step_name(index),
                                annotation::PROMOTE
                            );
                            self.event(EventKind::Normal, reason::WAITING_FOR_PROMOTION, note);
                        }
                    }
                }
                Step::Analysis => {
                    if !self.entered_step
                        && self.now < self.next_analysis_at()
                        && self.evaluation.is_none()
                        && !self.measured_now
                    {
                        return; // waiting for the next look
                    }
                    match self.evaluate() {
                        Evaluation::Pass => {
                            if self.metrics_waiting().is_some() {
                                return;
                            }
                            let note = format!(
                                "{}: analysis passed: {}{}",
                                self.step_name(index),
                                self.figures_text(),
                                self.metrics_passed_text()
                            );
                            self.event(EventKind::Normal, reason::ANALYSIS_PASSED, note);
                            self.set_index(index + 1);
                        }
                        Evaluation::Fail => {
                            let source = format!("analysis of {}", self.step_name(index));
                            self.analysis_failed(&source);
                            return;
                        }
                        Evaluation::TooFewAttempts | Evaluation::Unavailable(_) | Evaluation::NotYet => {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn complete(&mut self) {
        let status = &mut self.status;
        status.phase = Some(RolloutPhase::Completed);
        status.current_percent = Some(100);
        status.completed_at = Some(Time(self.now));
        status.pause_conditions.clear();
        for metric in &mut status.metrics {
            if metric.phase == MetricPhase::Running {
                metric.phase = MetricPhase::Successful;
            }
        }
        let last = self.settings.steps.len();
        self.set_index(last);
        let note = format!(
            "Bundle {} is now the stable bundle of Channel {}",
            self.candidate(),
            self.rollout.spec.channel_ref
        );
        self.event(EventKind::Normal, reason::ROLLOUT_COMPLETED, note);
    }

    /// What an active rollout waits for: (condition reason, sentence, stalled).
    fn waiting(&self) -> (&'static str, String, bool) {
        let index = self.index();
        let step = self.step_name(index);
        if let Some(top) = PAUSE_PRIORITY.into_iter().find(|r| self.has_pause(r)) {
            let sentence = match top {
                reason::ANALYSIS_FAILED => format!(
                    "Paused by the analysis at {step}: {}; promote to go on ({}) or abort to roll back ({})",
                    self.failed_metrics_text().unwrap_or_else(|| self.figures_text()),
                    annotation::PROMOTE,
                    annotation::ABORT
                ),
                reason::ANALYSIS_INCONCLUSIVE => format!(
                    "Paused at {step}: {}; promote to go on ({}) or abort to roll back ({})",
                    self.metrics_in_phase_text(MetricPhase::Inconclusive),
                    annotation::PROMOTE,
                    annotation::ABORT
                ),
                reason::METRICS_UNAVAILABLE => format!(
                    "Paused at {step}: {}; it goes on by itself once they can be measured",
                    self.metrics_in_phase_text(MetricPhase::Error)
                ),
                reason::PAUSED_BY_USER => {
                    format!(
                        "Paused by a person at {step}; promote to go on ({})",
                        annotation::PROMOTE
                    )
                }
                reason::WAITING_FOR_PROMOTION => {
                    format!("{step} waits to be promoted ({})", annotation::PROMOTE)
                }
                _ => {
                    let until = self
                        .status
                        .pause_conditions
                        .iter()
                        .find(|p| p.reason == reason::PAUSE_STEP)
                        .and_then(|p| p.until.as_ref())
                        .map_or(String::new(), |t| format!(" until {}", t.0));
                    format!("{step} pauses{until}")
                }
            };
            let needs_a_person = matches!(top, reason::ANALYSIS_FAILED | reason::ANALYSIS_INCONCLUSIVE);
            return (top, sentence, needs_a_person);
        }
        match &self.inputs.candidate {
            CandidateSync::Failed { reason: why, message } => {
                return (
                    reason::REFERENCE_NOT_READY,
                    format!("Bundle {} cannot be synced ({why}: {message})", self.candidate()),
                    true,
                );
            }
            CandidateSync::Pending => {
                return (
                    reason::REFERENCE_NOT_READY,
                    format!("Waiting for Bundle {} to sync", self.candidate()),
                    false,
                );
            }
            CandidateSync::Synced => {}
        }
        if let Some(Evaluation::Unavailable(why)) = &self.evaluation {
            return (
                reason::ANALYSIS_UNAVAILABLE,
                format!("The analysis cannot run: {why}"),
                false,
            );
        }
        if let Some(Step::Analysis) = self.settings.steps.get(index) {
            let attempts = self.status.analysis.as_ref().map_or(0, |a| a.attempts);
            let mut waits = Vec::new();
            if attempts < self.settings.policy.min_attempts {
                waits.push(format!(
                    "at least {} attempts ({attempts} so far)",
                    self.settings.policy.min_attempts
                ));
            }
            waits.extend(self.metrics_waiting());
            if waits.is_empty() {
                waits.push("its next analysis".to_owned());
            }
            return (
                reason::WAITING_FOR_ANALYSIS,
                format!("{step} waits for {}", waits.join(" and ")),
                false,
            );
        }
        (reason::PROGRESSING, format!("At {step}"), false)
    }

    fn finish(mut self, previous: &RolloutStatus) -> RolloutPlan {
        if self.active() {
            self.status.phase = Some(match self.status.pause_conditions.is_empty() {
                true => RolloutPhase::Progressing,
                false => RolloutPhase::Paused,
            });
        }
        let served = format!(
            "Bundle {} is offered to {}% of devices, the others get {}",
            self.candidate(),
            self.percent(),
            self.stable_name()
        );
        let (conditions, message, requeue_at, record_stable) = match self.status.phase {
            Some(RolloutPhase::Completed) => {
                let message = format!(
                    "Completed: Bundle {} is the stable bundle of Channel {}",
                    self.candidate(),
                    self.rollout.spec.channel_ref
                );
                let mut conditions = ready_set(message.clone());
                conditions.push(DesiredCondition::new(
                    condition::PAUSED,
                    ConditionStatus::False,
                    reason::ROLLOUT_COMPLETED,
                    message.clone(),
                ));
                conditions.push(DesiredCondition::new(
                    condition::COMPLETED,
                    ConditionStatus::True,
                    reason::ROLLOUT_COMPLETED,
                    message.clone(),
                ));
                (conditions, message, None, Some(self.candidate().to_owned()))
            }
            Some(RolloutPhase::Aborted) => {
                // The abort's own message, kept while the status still reads Aborted (an invalid
                // spell in between replaced it: say what the status still knows).
                let kept = previous
                    .conditions
                    .iter()
                    .any(|c| c.type_ == condition::STALLED && c.reason == reason::ABORTED)
                    .then(|| previous.message.clone())
                    .flatten();
                let message = self.abort_message.clone().or(kept).unwrap_or_else(|| {
                    let when = self
                        .status
                        .aborted_at
                        .as_ref()
                        .map_or(String::new(), |t| format!(" at {}", t.0));
                    format!(
                        "Aborted{when} (last analysis: {}); {} is served to every device. Retry with \
                         `kubectl ota retry` (a new value of the annotation {}) or set a new bundleRef",
                        self.figures_text(),
                        self.stable_name(),
                        annotation::RETRY
                    )
                });
                let mut conditions = stalled_set(reason::ABORTED, message.clone());
                conditions.push(DesiredCondition::new(
                    condition::PAUSED,
                    ConditionStatus::False,
                    reason::ABORTED,
                    message.clone(),
                ));
                conditions.push(DesiredCondition::new(
                    condition::COMPLETED,
                    ConditionStatus::False,
                    reason::ABORTED,
                    message.clone(),
                ));
                (conditions, message, None, None)
            }
            _ => {
                let (why, sentence, stalled) = self.waiting();
                let message = format!("{sentence}; {served}");
                let mut conditions = match stalled {
                    true => stalled_set(why, message.clone()),
                    false => reconciling_set(why, message.clone()),
                };
                let paused = !self.status.pause_conditions.is_empty();
                conditions.push(DesiredCondition::new(
                    condition::PAUSED,
                    match paused {
                        true => ConditionStatus::True,
                        false => ConditionStatus::False,
                    },
                    if paused { why } else { reason::PROGRESSING },
                    message.clone(),
                ));
                conditions.push(DesiredCondition::new(
                    condition::COMPLETED,
                    ConditionStatus::False,
                    reason::PROGRESSING,
                    message.clone(),
                ));
                self.waiting_event(previous, why, stalled, &sentence);
                (conditions, message, Some(self.requeue_at()), None)
            }
        };
        let mut status = self.status;
        status.message = Some(message);
        status.conditions = merge_conditions(
            &previous.conditions,
            &conditions,
            status.observed_generation,
            self.now,
        );
        RolloutPlan {
            status,
            conditions,
            events: self.events,
            requeue_at,
            record_stable,
        }
    }

    /// An Event when an active rollout starts waiting on something no other Event announced
    /// (the candidate's sync, the analysis figures, the attempts of an analysis step).
    fn waiting_event(&mut self, previous: &RolloutStatus, why: &'static str, stalled: bool, sentence: &str) {
        let announced_elsewhere = !matches!(
            why,
            reason::REFERENCE_NOT_READY | reason::ANALYSIS_UNAVAILABLE | reason::WAITING_FOR_ANALYSIS
        );
        let headline = |type_: &str| {
            previous
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == ConditionStatus::True.as_str())
                .map(|c| c.reason.as_str())
        };
        let type_ = match stalled {
            true => condition::STALLED,
            false => condition::RECONCILING,
        };
        // An analysis step reached anew waits anew; the other waits do not depend on the step.
        let new_step = why == reason::WAITING_FOR_ANALYSIS && self.entered_step;
        if announced_elsewhere || (headline(type_) == Some(why) && !new_step) {
            return;
        }
        let kind = match stalled || why == reason::ANALYSIS_UNAVAILABLE {
            true => EventKind::Warning,
            false => EventKind::Normal,
        };
        self.event(kind, why, sentence.to_owned());
    }

    /// The next time something changes by itself: a timed pause ends, the analysis or a metric
    /// is due.
    fn requeue_at(&self) -> Timestamp {
        let analysis = match &self.evaluation {
            // Nothing was recorded: look again one interval from now rather than at once.
            Some(Evaluation::Unavailable(_)) => after(self.now, self.settings.policy.interval),
            _ => self.next_analysis_at(),
        };
        self.status
            .pause_conditions
            .iter()
            .filter(|p| p.reason == reason::PAUSE_STEP)
            .filter_map(|p| p.until.as_ref().map(|t| t.0))
            .fold(analysis, Timestamp::min)
            .min(self.next_measurement_at().unwrap_or(Timestamp::MAX))
    }
}
