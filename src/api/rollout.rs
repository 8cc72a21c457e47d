//! The Rollout: a staged move of a Channel from its stable Bundle to a candidate.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DURATION_RULE, IMMUTABLE_RULE, OBJECT_NAME_RULE, SecretReference, conditions_schema};

/// A Rollout moves a Channel from its stable Bundle to a candidate Bundle through steps: a
/// growing percentage of devices (chosen by a salted hash of their device id, so the cohort is
/// stable and only grows), pauses, and analysis gates that pause or roll back by themselves
/// when devices report failures.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ota.dev",
    version = "v1alpha1",
    kind = "Rollout",
    plural = "rollouts",
    namespaced,
    status = "RolloutStatus",
    derive = "PartialEq",
    shortname = "otaro",
    category = "ota",
    doc = "A Rollout moves a Channel from its stable Bundle to a candidate through staged percentages.",
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channelRef"),
    printcolumn(
        name = "Bundle",
        type_ = "string",
        json_path = ".spec.bundleRef",
        description = "The candidate Bundle"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Step", type_ = "integer", json_path = ".status.currentStepIndex"),
    printcolumn(name = "Percent", type_ = "integer", json_path = ".status.currentPercent"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The Channel whose devices move (its name in this namespace). Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new(OBJECT_NAME_RULE).message("channelRef must be the name of a Channel"),
        validation = Rule::new(IMMUTABLE_RULE).message("channelRef is immutable")
    )]
    pub channel_ref: String,

    /// The candidate Bundle. Changing it starts a new rollout from the channel's current stable
    /// bundle.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(OBJECT_NAME_RULE).message("bundleRef must be the name of a Bundle"))]
    pub bundle_ref: String,

    /// The steps, in order. When the last one is done the candidate becomes the channel's stable
    /// bundle.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new(
        "self.filter(s, has(s.setPercent)).map(s, s.setPercent).isSorted()"
    ).message("setPercent must not decrease from one step to the next"))]
    pub steps: Vec<RolloutStep>,

    /// How device failures are judged, in the background for the whole rollout and at each
    /// analysis step.
    #[serde(default)]
    pub analysis: AnalysisPolicy,

    /// Salt of the device hash that picks the cohort. Defaults to the Rollout's uid, so every
    /// Rollout draws a fresh cohort; set it to reuse a cohort across Rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub salt: Option<String>,

    /// Where every transition of this Rollout is announced, besides its Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Notifications>,
}

/// Where a Rollout's transitions are announced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// A webhook that receives each transition as a signed JSON POST.
    pub webhook: WebhookNotification,
}

/// A webhook for a Rollout's transitions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookNotification {
    /// A Secret in the Rollout's namespace with the keys `url` (where to POST) and `signingKey`
    /// (the HMAC-SHA256 key of the `X-Ota-Signature-256` header). A Secret, because the URL
    /// of a chat or incident webhook is itself a credential.
    pub secret_ref: SecretReference,
}

/// One step: exactly one of `setPercent`, `pause` or `analysis`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.setPercent), has(self.pause), has(self.analysis)].filter(x, x).size() == 1")
    .message("each step needs exactly one of setPercent, pause or analysis"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Offer the candidate to this percent of the channel's devices (0 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub set_percent: Option<i32>,
    /// Wait: for `duration`, or without one until promoted (`kubectl ota promote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    /// Evaluate the analysis policy now: go on when it passes, apply its action when it fails,
    /// and wait while fewer than `minAttempts` devices have tried the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStep>,
}

/// A pause step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long to wait (`30m`, `1h`, `24h`); absent: wait until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("pause.duration must be a duration such as 30s, 15m, 1h or 1h30m"))]
    pub duration: Option<String>,
}

/// An analysis step (it uses the Rollout's analysis policy).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStep {}

/// When a candidate is failing, and what to do about it.
///
/// Failure rate = failures ÷ attempts of the candidate in this channel over `window`. The policy
/// acts only with at least `minAttempts` attempts, and only when the Wilson lower bound of the
/// failure rate at `confidence` exceeds `maxFailureRate`, so a few unlucky devices do not stop a
/// good release.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisPolicy {
    /// The highest acceptable failure rate, between 0 and 1 (`0.05` = 5%).
    #[serde(default = "default_max_failure_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_failure_rate: f64,
    /// The fewest attempts before the policy may judge.
    #[serde(default = "default_min_attempts")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub min_attempts: i64,
    /// Confidence of the Wilson lower bound, between 0.5 and 0.9999.
    #[serde(default = "default_confidence")]
    #[schemars(range(min = 0.5, max = 0.9999))]
    pub confidence: f64,
    /// The stretch of recent device reports the rate is computed over.
    #[serde(default = "default_window")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("analysis.window must be a duration such as 30m or 1h"))]
    pub window: String,
    /// How often the background analysis runs.
    #[serde(default = "default_interval")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("analysis.interval must be a duration such as 30s or 1m"))]
    pub interval: String,
    /// What a failing analysis does: `pause` (wait for a person) or `rollback` (abort: serve the
    /// stable bundle to every device, including those that took the candidate). It applies to
    /// the device failure rate and to each metric that fails.
    #[serde(default)]
    pub action: AnalysisAction,
    /// Metrics measured besides the devices' own reports (Prometheus queries, web services),
    /// each judged by CEL conditions over its `result`. They run with the background analysis,
    /// paused or not, and an analysis step passes only when each of them (but the dry runs) has
    /// taken `count` measurements at that step and none failed past its limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(o, o.name == m.name))")
        .message("each metric needs a name of its own"))]
    pub metrics: Vec<AnalysisMetric>,
}

/// One metric of the analysis: exactly one provider, and a `successCondition` and/or a
/// `failureCondition` in CEL over `result` (a number, or a list of numbers for a Prometheus
/// vector of several series or a JSON array).
///
/// Each measurement is successful, failed (the failure condition holds, or the success
/// condition alone is given and does not hold), inconclusive (both are given and neither holds)
/// or an error (the provider failed, or a condition could not be evaluated). More failures than
/// `failureLimit` apply `analysis.action`; more inconclusive measurements than
/// `inconclusiveLimit` pause the rollout for a person; more consecutive errors than
/// `consecutiveErrorLimit` pause it until the provider answers again (an outage of the metrics
/// system never aborts a rollout). A `dryRun` metric is measured and reported but never acts.
///
/// Queries, URLs, bodies and header values may use `{{candidate}}` and `{{stable}}` (the
/// Bundles' versions; `builtin` for the assets built into the app), `{{channel}}`, `{{app}}`
/// (the App's name), `{{namespace}}`, `{{percent}}` and `{{startedAt}}` (RFC 3339).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("[has(self.prometheus), has(self.web)].filter(x, x).size() == 1")
        .message("each metric needs exactly one provider: prometheus or web"),
    validation = Rule::new("has(self.successCondition) || has(self.failureCondition)")
        .message("each metric needs a successCondition, a failureCondition or both")
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisMetric {
    /// The metric's name (a DNS label, unique within the Rollout).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(DNS_LABEL_RULE).message("a metric's name must be a DNS label such as error-rate"))]
    pub name: String,
    /// An instant query of a Prometheus server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// A JSON web service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
    /// A CEL expression over `result`: the measurement is successful when it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub success_condition: Option<String>,
    /// A CEL expression over `result`: the measurement failed when it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub failure_condition: Option<String>,
    /// How often to measure; default: `analysis.interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("a metric's interval must be a duration such as 30s or 1m"))]
    pub interval: Option<String>,
    /// How many measurements an analysis step waits for (taken since the step began).
    #[serde(default = "default_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: i32,
    /// How many failed measurements are tolerated; one more applies `analysis.action`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub failure_limit: i32,
    /// How many inconclusive measurements are tolerated; one more pauses the rollout.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub inconclusive_limit: i32,
    /// How many provider errors in a row are tolerated; one more pauses the rollout until a
    /// measurement succeeds again.
    #[serde(default = "default_consecutive_error_limit")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_error_limit: i32,
    /// Measure and report, but never act (to try a query before trusting it).
    #[serde(default)]
    pub dry_run: bool,
}

fn default_count() -> i32 {
    1
}
fn default_consecutive_error_limit() -> i32 {
    4
}
fn default_metric_timeout() -> String {
    "10s".to_owned()
}
fn default_json_path() -> String {
    "$".to_owned()
}

/// A CEL expression that holds when `self` is a DNS label (RFC 1123).
const DNS_LABEL_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
/// A CEL expression that holds when `self` is an http(s) URL.
const HTTP_URL_RULE: &str = "self.startsWith('http://') || self.startsWith('https://')";

/// An instant query of the Prometheus HTTP API (`GET {address}/api/v1/query`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusMetric {
    /// The server's base URL (`http://prometheus.monitoring:9090`).
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new(HTTP_URL_RULE).message("prometheus.address must be an http:// or https:// URL"))]
    pub address: String,
    /// The PromQL query; its value (a scalar, or a vector of one or more series) is `result`.
    #[schemars(length(min = 1, max = 8192))]
    pub query: String,
    /// Headers to send, such as a bearer token read from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<MetricHeader>,
    /// How long to wait for the answer.
    #[serde(default = "default_metric_timeout")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("prometheus.timeout must be a duration such as 10s"))]
    pub timeout: String,
}

/// A JSON web service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebMetric {
    /// The URL.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new(HTTP_URL_RULE).message("web.url must be an http:// or https:// URL"))]
    pub url: String,
    /// `GET` (the default) or `POST`.
    #[serde(default)]
    pub method: WebMethodName,
    /// Headers to send, such as an API key read from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<MetricHeader>,
    /// The body of a POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// Where the value is in the JSON answer (`$.data.errorRate`); default: the whole answer.
    #[serde(default = "default_json_path")]
    #[schemars(length(min = 1, max = 1024))]
    pub json_path: String,
    /// How long to wait for the answer.
    #[serde(default = "default_metric_timeout")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("web.timeout must be a duration such as 10s"))]
    pub timeout: String,
}

/// The HTTP method of a web metric.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WebMethodName {
    /// GET.
    #[default]
    #[serde(rename = "GET")]
    Get,
    /// POST.
    #[serde(rename = "POST")]
    Post,
}

/// A header of a metric's request: a `value` written here, or one read from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.value), has(self.valueFrom)].filter(x, x).size() == 1")
    .message("each header needs exactly one of value or valueFrom"))]
#[serde(rename_all = "camelCase")]
pub struct MetricHeader {
    /// The header's name (`Authorization`).
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9-]+$')").message("a header name has letters, digits and dashes"))]
    pub name: String,
    /// The value, written here (templates allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub value: Option<String>,
    /// The value, read from a Secret in the Rollout's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<HeaderValueSource>,
}

/// Where a header's value is read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValueSource {
    /// A key of a Secret in the Rollout's namespace.
    pub secret_key_ref: SecretKeyReference,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

impl Default for AnalysisPolicy {
    fn default() -> Self {
        Self {
            max_failure_rate: default_max_failure_rate(),
            min_attempts: default_min_attempts(),
            confidence: default_confidence(),
            window: default_window(),
            interval: default_interval(),
            action: AnalysisAction::default(),
            metrics: Vec::new(),
        }
    }
}

fn default_max_failure_rate() -> f64 {
    0.05
}
fn default_min_attempts() -> i64 {
    50
}
fn default_confidence() -> f64 {
    0.95
}
fn default_window() -> String {
    "1h".to_owned()
}
fn default_interval() -> String {
    "1m".to_owned()
}

/// What a failing analysis does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnalysisAction {
    /// Pause the rollout where it stands and wait for a person.
    Pause,
    /// Abort: percent to 0, the stable bundle served to every device.
    #[default]
    Rollback,
}

/// Where a Rollout stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Ready, Reconciling, Stalled, Paused and Completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Progressing, Paused, Completed or Aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// Index of the step in progress (equal to the number of steps once completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    /// Percent of devices offered the candidate now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_percent: Option<i32>,
    /// The stable Bundle the rollout started from (what everyone else gets, and what an abort
    /// returns to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_bundle: Option<String>,
    /// The candidate Bundle this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_bundle: Option<String>,
    /// The salt in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Why the rollout is paused, one entry per reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_conditions: Vec<PauseCondition>,
    /// When the rollout started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the rollout was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_at: Option<Time>,
    /// When the rollout completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// The latest analysis figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisFigures>,
    /// Where each metric of `spec.analysis.metrics` stands, in the spec's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricStatus>,
    /// A sentence for people: what happens now and what they can do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The value of each command annotation (`ota.dev/promote`, `ota.dev/pause`, ...) already
    /// acted upon: a command acts once per new value, so setting the annotation again to another
    /// value (the kubectl plugin writes the time) acts again, and a restart replays nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handled_commands: BTreeMap<String, String>,
    /// The webhook notifications not delivered yet, oldest first: each is written here before
    /// its first attempt and removed once delivered or given up, so a controller that restarts
    /// (or a replica that takes over) resumes them with the same delivery id and body. Written
    /// by the controller under a field manager of its own (`ota-operator-notifications`), never
    /// with the rest of the status: serializing a status leaves it out, so a status write cannot
    /// bring back a delivery already removed.
    #[serde(default, skip_serializing)]
    pub pending_notifications: Vec<PendingNotification>,
}

/// A webhook notification not delivered yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingNotification {
    /// The delivery id (`X-Ota-Delivery`), the same on every attempt.
    pub id: String,
    /// The event's reason (`X-Ota-Event`).
    pub event: String,
    /// The JSON body, byte for byte as every attempt sends (and signs) it.
    pub body: String,
    /// How many attempts failed so far.
    pub attempts: i32,
    /// When the next attempt is due.
    pub next_attempt_at: Time,
}

/// The phase of a Rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Moving through its steps.
    Progressing,
    /// Waiting for time to pass, or for a person.
    Paused,
    /// The candidate is the channel's stable bundle.
    Completed,
    /// Stopped; the stable bundle is served to every device until the rollout is retried.
    Aborted,
}

/// One reason a Rollout is paused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseCondition {
    /// PauseStep, WaitingForPromotion, PausedByUser, AnalysisFailed, AnalysisInconclusive or
    /// MetricsUnavailable.
    pub reason: String,
    /// When the pause began.
    pub start_time: Time,
    /// When a timed pause ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
}

/// The figures of an analysis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisFigures {
    /// Devices that tried the candidate in the window.
    pub attempts: i64,
    /// Devices that reported a failure with it in the window.
    pub failures: i64,
    /// failures ÷ attempts.
    pub failure_rate: f64,
    /// Wilson lower bound of the failure rate at the policy's confidence.
    pub lower_bound: f64,
    /// When these figures were computed.
    pub evaluated_at: Time,
}

/// Where one metric of the analysis stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// The metric's name.
    pub name: String,
    /// Running, Successful, Failed, Inconclusive or Error.
    pub phase: MetricPhase,
    /// Measured and reported, never acting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Measurements taken since the rollout started (or was retried).
    pub measurements: i32,
    /// Of them, successful.
    pub successful: i32,
    /// Failed.
    pub failed: i32,
    /// Inconclusive.
    pub inconclusive: i32,
    /// Errors.
    pub errors: i32,
    /// Errors since the last measurement that was not one.
    pub consecutive_errors: i32,
    /// Measurements taken since the current step began, errors aside (an analysis step waits
    /// for `count` of them).
    pub step_measurements: i32,
    /// The latest measurements, oldest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_measurements: Vec<MetricMeasurement>,
}

/// The phase of a metric.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MetricPhase {
    /// Measuring; no limit crossed.
    Running,
    /// The rollout completed with the metric within its limits.
    Successful,
    /// More failures than `failureLimit`.
    Failed,
    /// More inconclusive measurements than `inconclusiveLimit`.
    Inconclusive,
    /// More consecutive errors than `consecutiveErrorLimit` (until a measurement succeeds).
    Error,
}

/// One measurement of a metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricMeasurement {
    /// Successful, Failed, Inconclusive or Error.
    pub phase: MeasurementPhase,
    /// The value (`0.012`, or `[0.01, 0.2]` for a list); absent for an error of the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When it was measured.
    pub measured_at: Time,
    /// Why it is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The verdict of one measurement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MeasurementPhase {
    /// The success condition holds (and the failure condition does not).
    Successful,
    /// The failure condition holds, or the success condition alone is given and does not.
    Failed,
    /// Both conditions are given and neither holds.
    Inconclusive,
    /// The provider failed, or a condition could not be evaluated.
    Error,
}
