//! A Rollout's spec, parsed and checked: everything the API server's schema checks (standalone
//! mode reads YAML no API server has seen) plus what CEL cannot (durations that parse and stay
//! within bounds, metric conditions that compile, templates that name known placeholders).

use std::time::Duration;

use super::{Invalid, inverse_normal_cdf, metrics::Metric};
use crate::{
    api::{RolloutSpec, rollout::AnalysisAction},
    duration::parse_duration,
};

/// The most steps a Rollout may have (the CRD's bound).
pub const MAX_STEPS: usize = 32;
/// The longest duration a Rollout may name (a pause, the window, the interval).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest analysis interval and window: anything shorter would keep the controller busy.
pub const MIN_ANALYSIS_PERIOD: Duration = Duration::from_secs(1);
/// The most metrics an analysis may have (the CRD's bound).
pub const MAX_METRICS: usize = 16;
/// The longest salt (the CRD's bound).
pub const MAX_SALT_CHARS: usize = 128;

/// A step, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Step {
    SetPercent(i32),
    /// `None`: until promoted.
    Pause(Option<Duration>),
    Analysis,
}

/// The analysis policy, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Policy {
    pub(super) max_failure_rate: f64,
    pub(super) min_attempts: i64,
    pub(super) confidence: f64,
    /// Φ⁻¹(confidence).
    pub(super) z: f64,
    pub(super) window: Duration,
    pub(super) interval: Duration,
    pub(super) action: AnalysisAction,
}

/// A spec, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Settings {
    pub(super) steps: Vec<Step>,
    pub(super) policy: Policy,
    /// The metrics of the analysis, in the spec's order.
    pub(super) metrics: Vec<Metric>,
}

pub(super) fn parse_bounded(field: &str, text: &str, min: Duration) -> Result<Duration, Invalid> {
    let duration = parse_duration(text).map_err(|why| {
        Invalid::spec(format!(
            "{field} {text:?} is not a duration such as 30s or 1h: {why}"
        ))
    })?;
    if duration < min {
        return Err(Invalid::spec(format!(
            "{field} {text:?} must be at least {min:?}"
        )));
    }
    if duration > MAX_DURATION {
        return Err(Invalid::spec(format!(
            "{field} {text:?} must be at most 366 days"
        )));
    }
    Ok(duration)
}

/// The analysis window alone, parsed as [`Settings::parse`] parses it (a spec invalid for
/// another reason may still name a valid window).
pub(super) fn analysis_window(spec: &RolloutSpec) -> Result<Duration, Invalid> {
    parse_bounded("analysis.window", &spec.analysis.window, MIN_ANALYSIS_PERIOD)
}

impl Settings {
    pub(super) fn parse(spec: &RolloutSpec) -> Result<Settings, Invalid> {
        if spec.steps.is_empty() || spec.steps.len() > MAX_STEPS {
            return Err(Invalid::spec(format!(
                "a Rollout needs 1 to {MAX_STEPS} steps, not {}",
                spec.steps.len()
            )));
        }
        let mut steps = Vec::with_capacity(spec.steps.len());
        let mut highest_percent: Option<(usize, i32)> = None;
        for (index, step) in spec.steps.iter().enumerate() {
            let number = index + 1;
            let parsed = match (&step.set_percent, &step.pause, &step.analysis) {
                (Some(percent), None, None) => {
                    if !(0..=100).contains(percent) {
                        return Err(Invalid::spec(format!(
                            "step {number}: setPercent {percent} is not between 0 and 100"
                        )));
                    }
                    if let Some((earlier, highest)) = highest_percent
                        && *percent < highest
                    {
                        return Err(Invalid::spec(format!(
                            "step {number}: setPercent {percent} is lower than step {earlier}'s {highest}; \
                             the percent must not decrease"
                        )));
                    }
                    highest_percent = Some((number, *percent));
                    Step::SetPercent(*percent)
                }
                (None, Some(pause), None) => Step::Pause(
                    pause
                        .duration
                        .as_deref()
                        .map(|text| {
                            parse_bounded(&format!("step {number}: pause.duration"), text, Duration::ZERO)
                        })
                        .transpose()?,
                ),
                (None, None, Some(_)) => Step::Analysis,
                _ => {
                    return Err(Invalid::spec(format!(
                        "step {number} needs exactly one of setPercent, pause or analysis"
                    )));
                }
            };
            steps.push(parsed);
        }
        let analysis = &spec.analysis;
        if !(0.0..=1.0).contains(&analysis.max_failure_rate) {
            return Err(Invalid::spec(format!(
                "analysis.maxFailureRate {} is not between 0 and 1",
                analysis.max_failure_rate
            )));
        }
        if analysis.min_attempts < 1 {
            return Err(Invalid::spec(format!(
                "analysis.minAttempts {} must be at least 1",
                analysis.min_attempts
            )));
        }
        if !(0.5..=0.9999).contains(&analysis.confidence) {
            return Err(Invalid::spec(format!(
                "analysis.confidence {} is not between 0.5 and 0.9999",
                analysis.confidence
            )));
        }
        let z = inverse_normal_cdf(analysis.confidence)
            .ok_or_else(|| {
                Invalid::spec(format!(
                    "analysis.confidence {} has no quantile",
                    analysis.confidence
                ))
            })?
            .max(0.0);
        let policy = Policy {
            max_failure_rate: analysis.max_failure_rate,
            min_attempts: analysis.min_attempts,
            confidence: analysis.confidence,
            z,
            window: analysis_window(spec)?,
            interval: parse_bounded("analysis.interval", &analysis.interval, MIN_ANALYSIS_PERIOD)?,
            action: analysis.action,
        };
        if let Some(salt) = &spec.salt
            && (salt.is_empty() || salt.chars().count() > MAX_SALT_CHARS)
        {
            return Err(Invalid::spec(format!(
                "salt must be 1 to {MAX_SALT_CHARS} characters, not {}",
                salt.chars().count()
            )));
        }
        let metrics = super::metrics::parse_metrics(&analysis.metrics, policy.interval)?;
        Ok(Settings {
            steps,
            policy,
            metrics,
        })
    }
}
