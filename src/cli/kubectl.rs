//! `kubectl ota`: read and steer Rollouts from a terminal or a CI job.
//!
//! Commands write annotations (`ota.dev/promote`, `ota.dev/promote-full`, `ota.dev/pause`,
//! `ota.dev/abort`, `ota.dev/retry`) whose value is the current time: the controller acts once
//! per value, so running a command again acts again. `status` waits until the Rollout completes
//! or aborts, and its exit code says which.

use std::{fmt::Write as _, time::Duration};

use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::api::{
    Rollout,
    constants::{annotation, field_manager},
    rollout::RolloutPhase,
};

/// Exit codes of `kubectl ota`, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success (status: the rollout completed)
  1  failure (the API server refused or could not be reached, no such rollout)
  2  command-line usage error
  3  status: the rollout was aborted
  4  status: still in progress when --timeout ran out";

/// `kubectl ota`.
#[derive(Debug, Parser)]
#[command(name = "kubectl-ota", version, about = "Read and steer ota-operator Rollouts", after_help = EXIT_CODES_HELP)]
pub struct KubectlOta {
    /// The namespace [default: the kubeconfig context's].
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: KubectlCommand,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum KubectlCommand {
    /// Show a Rollout: its steps, where it stands, its percent and analysis figures.
    Get {
        /// Only `rollout` is known.
        #[arg(value_parser = ["rollout", "rollouts", "ro"])]
        kind: String,
        /// The Rollout's name.
        name: String,
        /// Show it again at every change.
        #[arg(short, long)]
        watch: bool,
    },
    /// Move past the current pause or analysis step (`--full`: skip every remaining step).
    Promote {
        /// The Rollout's name.
        name: String,
        /// Complete the rollout now.
        #[arg(long)]
        full: bool,
    },
    /// Pause the Rollout where it stands.
    Pause {
        /// The Rollout's name.
        name: String,
    },
    /// Abort: the stable bundle is served to every device again.
    Abort {
        /// The Rollout's name.
        name: String,
    },
    /// Start an aborted Rollout again from its first step.
    Retry {
        /// The Rollout's name.
        name: String,
    },
    /// Wait until the Rollout completes (exit 0) or aborts (exit 3), printing each change.
    Status {
        /// The Rollout's name.
        name: String,
        /// Give up after this many seconds (exit 4); 0 waits for ever.
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
}

/// Why `kubectl ota` failed.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    /// The API server refused or could not be reached.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The rollout was aborted (`status`).
    #[error("rollout {0} was aborted")]
    Aborted(String),
    /// The wait ran out (`status`).
    #[error("rollout {0} is still in progress after {1} s")]
    TimedOut(String, u64),
}

impl KubectlError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            KubectlError::Api { .. } => 1,
            KubectlError::Aborted(_) => 3,
            KubectlError::TimedOut(..) => 4,
        }
    }
}

/// Runs one command.
pub async fn run(options: KubectlOta) -> Result<(), KubectlError> {
    let client = Client::try_default().await.map_err(|source| KubectlError::Api {
        action: "reading the kubeconfig".to_owned(),
        source,
    })?;
    let rollouts: Api<Rollout> = match &options.namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::default_namespaced(client),
    };
    match options.command {
        KubectlCommand::Get { name, watch, .. } => get(&rollouts, &name, watch).await,
        KubectlCommand::Promote { name, full } => {
            let key = if full {
                annotation::PROMOTE_FULL
            } else {
                annotation::PROMOTE
            };
            command(&rollouts, &name, key).await
        }
        KubectlCommand::Pause { name } => command(&rollouts, &name, annotation::PAUSE).await,
        KubectlCommand::Abort { name } => command(&rollouts, &name, annotation::ABORT).await,
        KubectlCommand::Retry { name } => command(&rollouts, &name, annotation::RETRY).await,
        KubectlCommand::Status { name, timeout } => status(&rollouts, &name, timeout).await,
    }
}

async fn read(rollouts: &Api<Rollout>, name: &str) -> Result<Rollout, KubectlError> {
    rollouts.get(name).await.map_err(|source| KubectlError::Api {
        action: format!("reading rollout {name}"),
        source,
    })
}

async fn get(rollouts: &Api<Rollout>, name: &str, watch: bool) -> Result<(), KubectlError> {
    let mut last = String::new();
    loop {
        let view = render(&read(rollouts, name).await?);
        if view != last {
            println!("{view}");
            last = view;
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sets the command's annotation to the current time (a new value: the controller acts on it).
async fn command(rollouts: &Api<Rollout>, name: &str, key: &str) -> Result<(), KubectlError> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: Timestamp::now().to_string()}}});
    rollouts
        .patch(
            name,
            &PatchParams {
                field_manager: Some(field_manager::KUBECTL_PLUGIN.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| KubectlError::Api {
            action: format!("annotating rollout {name} with {key}"),
            source,
        })?;
    println!("rollout {name}: {key} requested");
    Ok(())
}

async fn status(rollouts: &Api<Rollout>, name: &str, timeout: u64) -> Result<(), KubectlError> {
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let rollout = read(rollouts, name).await?;
        let line = summary(&rollout);
        if line != last {
            println!("{line}");
            last = line;
        }
        let current = rollout
            .status
            .as_ref()
            .filter(|s| s.observed_generation == rollout.metadata.generation);
        match current.and_then(|s| s.phase) {
            Some(RolloutPhase::Completed) => return Ok(()),
            Some(RolloutPhase::Aborted) => return Err(KubectlError::Aborted(name.to_owned())),
            _ => {}
        }
        if timeout > 0 && started.elapsed() >= Duration::from_secs(timeout) {
            return Err(KubectlError::TimedOut(name.to_owned(), timeout));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One line: phase, step, percent and the status message.
pub fn summary(rollout: &Rollout) -> String {
    let name = rollout.metadata.name.as_deref().unwrap_or_default();
    let Some(status) = &rollout.status else {
        return format!("rollout {name}: no status yet (is the controller running?)");
    };
    let phase = status.phase.map_or("Pending".to_owned(), |p| format!("{p:?}"));
    let steps = rollout.spec.steps.len();
    // A status is data anyone with access may have written: a negative index reads as 0.
    let step = usize::try_from(status.current_step_index.unwrap_or(0)).unwrap_or(0);
    format!(
        "rollout {name}: {phase}, step {}/{steps}, {}% on {}{}",
        step.saturating_add(1).min(steps),
        status.current_percent.unwrap_or(0),
        rollout.spec.bundle_ref,
        status
            .message
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default()
    )
}

/// A readable view of a Rollout (pure): where it stands, each step with a marker at the current
/// one, pauses, and the latest analysis figures.
pub fn render(rollout: &Rollout) -> String {
    let mut out = String::new();
    let name = rollout.metadata.name.as_deref().unwrap_or_default();
    let status = rollout.status.clone().unwrap_or_default();
    let _ = writeln!(out, "Rollout:   {name}");
    let _ = writeln!(out, "Channel:   {}", rollout.spec.channel_ref);
    let _ = writeln!(
        out,
        "Bundles:   {} -> {}",
        status.stable_bundle.as_deref().unwrap_or("builtin"),
        rollout.spec.bundle_ref
    );
    let phase = status.phase.map_or("Pending".to_owned(), |p| format!("{p:?}"));
    let _ = writeln!(out, "Phase:     {phase}");
    let _ = writeln!(out, "Percent:   {}%", status.current_percent.unwrap_or(0));
    if let Some(message) = &status.message {
        let _ = writeln!(out, "Message:   {message}");
    }
    let current = status.current_step_index.unwrap_or(0);
    let _ = writeln!(out, "Steps:");
    for (index, step) in rollout.spec.steps.iter().enumerate() {
        let marker = match (index as i32).cmp(&current) {
            std::cmp::Ordering::Less => "done",
            std::cmp::Ordering::Equal if status.phase != Some(RolloutPhase::Completed) => "  ->",
            _ if status.phase == Some(RolloutPhase::Completed) => "done",
            _ => "    ",
        };
        let what = match (&step.set_percent, &step.pause, &step.analysis) {
            (Some(percent), _, _) => format!("setPercent {percent}"),
            (_, Some(pause), _) => match &pause.duration {
                Some(duration) => format!("pause {duration}"),
                None => "pause until promoted".to_owned(),
            },
            (_, _, Some(_)) => "analysis".to_owned(),
            _ => "(empty step)".to_owned(),
        };
        let _ = writeln!(out, "  {marker} {index:>2}. {what}");
    }
    for pause in &status.pause_conditions {
        let until = pause
            .until
            .as_ref()
            .map(|t| format!(" until {}", t.0))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Paused:    {} since {}{until}",
            pause.reason, pause.start_time.0
        );
    }
    // One list: the built-in device failure rate first, then each metric of the analysis.
    if status.analysis.is_some() || !status.metrics.is_empty() {
        let _ = writeln!(out, "Metrics:");
    }
    if let Some(figures) = &status.analysis {
        let _ = writeln!(
            out,
            "  device failure rate (built in): {} failures of {} attempts ({:.2}%, lower bound {:.2}%) at {}",
            figures.failures,
            figures.attempts,
            figures.failure_rate * 100.0,
            figures.lower_bound * 100.0,
            figures.evaluated_at.0
        );
    }
    for metric in &status.metrics {
        let dry_run = if metric.dry_run { " (dry run)" } else { "" };
        let last = match metric.last_measurements.last() {
            Some(last) => {
                let what = match (&last.value, &last.message) {
                    (Some(value), _) => format!("last value {value} ({:?})", last.phase),
                    (None, Some(message)) => format!("last error: {message}"),
                    (None, None) => format!("last {:?}", last.phase),
                };
                format!("{what} at {}", last.measured_at.0)
            }
            None => "not measured yet".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {}: {:?}{dry_run}, {last}; {} measurements: {} successful, {} failed, {} inconclusive, {} errors",
            metric.name,
            metric.phase,
            metric.measurements,
            metric.successful,
            metric.failed,
            metric.inconclusive,
            metric.errors
        );
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(status: serde_json::Value) -> Rollout {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "shop-1.5.0", "generation": 1},
            "spec": {"channelRef": "production", "bundleRef": "shop-1.5.0",
                     "steps": [{"setPercent": 5}, {"pause": {"duration": "1h"}}, {"analysis": {}}, {"pause": {}}, {"setPercent": 100}]},
            "status": status
        }))
        .expect("a Rollout")
    }

    #[test]
    fn the_view_marks_the_current_step_and_shows_the_figures() {
        let view = render(&rollout(serde_json::json!({
            "observedGeneration": 1, "phase": "Paused", "currentStepIndex": 1, "currentPercent": 5,
            "stableBundle": "shop-1.4.2", "message": "waiting 1h",
            "pauseConditions": [{"reason": "PauseStep", "startTime": "2026-11-27T10:00:00Z", "until": "2026-11-27T11:00:00Z"}],
            "analysis": {"attempts": 200, "failures": 3, "failureRate": 0.015, "lowerBound": 0.006, "evaluatedAt": "2026-11-27T10:30:00Z"}
        })));
        assert!(view.contains("Bundles:   shop-1.4.2 -> shop-1.5.0"), "{view}");
        assert!(view.contains("done  0. setPercent 5"), "{view}");
        assert!(view.contains("  ->  1. pause 1h"), "{view}");
        assert!(view.contains("       3. pause until promoted"), "{view}");
        assert!(
            view.contains("Paused:    PauseStep since 2026-11-27T10:00:00Z until 2026-11-27T11:00:00Z"),
            "{view}"
        );
        assert!(
            view.contains("3 failures of 200 attempts (1.50%, lower bound 0.60%)"),
            "{view}"
        );
    }

    #[test]
    fn the_view_lists_the_device_failure_rate_and_each_metric_with_its_phase_and_last_value() {
        let view = render(&rollout(serde_json::json!({
            "phase": "Paused", "currentStepIndex": 2, "currentPercent": 5,
            "analysis": {"attempts": 200, "failures": 3, "failureRate": 0.015, "lowerBound": 0.006, "evaluatedAt": "2026-11-27T10:30:00Z"},
            "metrics": [
                {"name": "error-rate", "phase": "Failed", "measurements": 3, "successful": 1, "failed": 2,
                 "inconclusive": 0, "errors": 0, "consecutiveErrors": 0, "stepMeasurements": 2,
                 "lastMeasurements": [{"phase": "Failed", "value": "0.2", "measuredAt": "2026-11-27T10:31:00Z"}]},
                {"name": "crash-free", "phase": "Error", "dryRun": true, "measurements": 5, "successful": 0, "failed": 0,
                 "inconclusive": 0, "errors": 5, "consecutiveErrors": 5, "stepMeasurements": 0,
                 "lastMeasurements": [{"phase": "Error", "measuredAt": "2026-11-27T10:32:00Z", "message": "connection refused"}]},
                {"name": "latency", "phase": "Running", "measurements": 0, "successful": 0, "failed": 0,
                 "inconclusive": 0, "errors": 0, "consecutiveErrors": 0, "stepMeasurements": 0}
            ]
        })));
        let lines: Vec<&str> = view.lines().skip_while(|l| *l != "Metrics:").collect();
        assert_eq!(lines.len(), 5, "{view}");
        assert!(
            lines[1].starts_with("  device failure rate (built in): 3 failures of 200 attempts"),
            "{view}"
        );
        assert_eq!(
            lines[2],
            "  error-rate: Failed, last value 0.2 (Failed) at 2026-11-27T10:31:00Z; 3 measurements: 1 successful, 2 failed, 0 inconclusive, 0 errors"
        );
        assert!(
            lines[3].starts_with(
                "  crash-free: Error (dry run), last error: connection refused at 2026-11-27T10:32:00Z;"
            ),
            "{view}"
        );
        assert!(
            lines[4].starts_with("  latency: Running, not measured yet;"),
            "{view}"
        );
    }

    #[test]
    fn a_completed_rollout_has_every_step_done() {
        let done = rollout(
            serde_json::json!({"observedGeneration": 1, "phase": "Completed", "currentStepIndex": 5, "currentPercent": 100}),
        );
        let view = render(&done);
        assert_eq!(view.matches("done").count(), 5, "{view}");
        assert_eq!(
            summary(&done),
            "rollout shop-1.5.0: Completed, step 5/5, 100% on shop-1.5.0"
        );
        assert!(summary(&rollout(serde_json::Value::Null)).contains("no status yet"));
        let odd = rollout(serde_json::json!({"phase": "Progressing", "currentStepIndex": -3}));
        assert!(summary(&odd).contains("step 1/5"), "{}", summary(&odd));
    }

    #[test]
    fn exit_codes_tell_completed_aborted_and_timed_out_apart() {
        assert_eq!(KubectlError::Aborted("r".into()).exit_code(), 3);
        assert_eq!(KubectlError::TimedOut("r".into(), 5).exit_code(), 4);
        assert!(EXIT_CODES_HELP.contains("3  status: the rollout was aborted"));
    }
}
