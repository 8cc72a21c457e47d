//! The metrics of a Rollout's analysis (`spec.analysis.metrics`): parsed and checked (durations,
//! templates, CEL conditions), the requests due at a given time, and the judgement of each
//! measurement the shell brings back. Pure: the shell measures ([`super::measurement`]).
//!
//! Semantics (the rollout's side is in [`super::Run`]):
//! - Each metric is measured every `interval` (from the rollout's start, then from its last
//!   measurement) while the rollout is Progressing or Paused, whatever paused it: a metric
//!   that paused the rollout must be measured to lift its pause. Nothing is measured once the
//!   rollout completed or aborted, nor in the decision that starts (or retries) it.
//! - A measurement is Failed when the `failureCondition` holds, Successful when the
//!   `successCondition` holds, Failed when the success condition alone is given and does not
//!   hold, Inconclusive when both are given and neither holds, and an Error when the provider
//!   failed or a condition could not be evaluated (or gave no bool).
//! - A metric's phase follows its counts: Failed past `failureLimit`, else Inconclusive past
//!   `inconclusiveLimit`, else Error past `consecutiveErrorLimit`, else Running (Successful once
//!   the rollout completed). Failed and Inconclusive stay until the rollout restarts or is
//!   retried (the counts reset then); Error lasts until a measurement is not an error.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    sync::{Arc, LazyLock},
    time::Duration,
};

use cel::{
    Context, Env, Program, Value as CelValue,
    common::ast::{EntryExpr, Expr, IdedExpr},
};
use k8s_openapi::jiff::Timestamp;

use super::{
    Invalid,
    measurement::{HeaderRequest, HeaderValue, MeasurementRequest, MetricValue, ProviderRequest, WebMethod},
    settings::parse_bounded,
};
use crate::api::rollout::{
    AnalysisMetric, MeasurementPhase, MetricHeader, MetricPhase, MetricStatus, WebMethodName,
};

/// The most measurements a metric's status keeps.
pub const KEPT_MEASUREMENTS: usize = 10;
/// The shortest timeout of a metric's provider.
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest timeout of a metric's provider.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// The most values of a list shown in a measurement's value.
const SHOWN_VALUES: usize = 10;

/// The placeholders of a metric's query, URL, body and header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Candidate,
    Stable,
    Channel,
    App,
    Namespace,
    Percent,
    StartedAt,
}

const PLACEHOLDERS: [(&str, Placeholder); 7] = [
    ("candidate", Placeholder::Candidate),
    ("stable", Placeholder::Stable),
    ("channel", Placeholder::Channel),
    ("app", Placeholder::App),
    ("namespace", Placeholder::Namespace),
    ("percent", Placeholder::Percent),
    ("startedAt", Placeholder::StartedAt),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Placeholder),
}

/// A text with `{{placeholders}}`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template(Vec<Piece>);

impl Template {
    /// Parses `text`; `field` names it in the error (`metric error-rate: prometheus.query`).
    fn parse(field: &str, text: &str) -> Result<Template, Invalid> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after_open = &rest[open + 2..];
            let Some(close) = after_open.find("}}") else {
                return Err(Invalid::spec(format!(
                    "{field}: a {{{{ is not closed by }}}} (placeholders are {})",
                    known_placeholders()
                )));
            };
            let name = after_open[..close].trim();
            let Some((_, placeholder)) = PLACEHOLDERS.iter().find(|(known, _)| *known == name) else {
                return Err(Invalid::spec(format!(
                    "{field}: {{{{{name}}}}} is not a placeholder (they are {})",
                    known_placeholders()
                )));
            };
            pieces.push(Piece::Value(*placeholder));
            rest = &after_open[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    fn fill(&self, values: &TemplateValues) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(placeholder) => out.push_str(values.of(*placeholder)),
            }
        }
        out
    }
}

fn known_placeholders() -> String {
    PLACEHOLDERS
        .iter()
        .map(|(name, _)| format!("{{{{{name}}}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the placeholders stand for in one rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TemplateValues {
    pub(super) candidate: String,
    pub(super) stable: String,
    pub(super) channel: String,
    pub(super) app: String,
    pub(super) namespace: String,
    pub(super) percent: String,
    pub(super) started_at: String,
}

impl TemplateValues {
    fn of(&self, placeholder: Placeholder) -> &str {
        match placeholder {
            Placeholder::Candidate => &self.candidate,
            Placeholder::Stable => &self.stable,
            Placeholder::Channel => &self.channel,
            Placeholder::App => &self.app,
            Placeholder::Namespace => &self.namespace,
            Placeholder::Percent => &self.percent,
            Placeholder::StartedAt => &self.started_at,
        }
    }
}

/// A header of a provider, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Header {
    Literal {
        name: String,
        value: Template,
    },
    Secret {
        name: String,
        secret: String,
        key: String,
    },
}

/// A metric's provider, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Provider {
    Prometheus {
        address: String,
        query: Template,
        headers: Vec<Header>,
        timeout: Duration,
    },
    Web {
        url: Template,
        method: WebMethod,
        headers: Vec<Header>,
        body: Option<Template>,
        json_path: String,
        timeout: Duration,
    },
}

/// The CEL environment of the conditions: the standard library and macros (`all`, `exists`,
/// `filter`, `map`, ...), as Kubernetes' CEL has them.
static CEL_ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// Identifiers a condition may name besides `result` and the variables of its macros: CEL's
/// type names (`type(result) == list`).
const CEL_TYPE_NAMES: [&str; 10] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// A CEL condition, compiled.
#[derive(Debug, Clone)]
pub(super) struct Condition {
    /// `successCondition` or `failureCondition`.
    field: &'static str,
    source: String,
    program: Arc<Program>,
}

impl PartialEq for Condition {
    fn eq(&self, other: &Condition) -> bool {
        self.field == other.field && self.source == other.source
    }
}

impl Condition {
    fn compile(metric: &str, field: &'static str, source: &str) -> Result<Condition, Invalid> {
        let program = CEL_ENV.compile(source).map_err(|error| {
            Invalid::spec(format!(
                "metric {metric}: {field} {source:?} is not a CEL expression: {error}"
            ))
        })?;
        let mut bound = BTreeSet::new();
        bound_variables(program.expression(), &mut bound);
        let references = program.references();
        let mut unknown: Vec<&str> = references
            .variables()
            .into_iter()
            .filter(|name| *name != "result" && !bound.contains(*name) && !CEL_TYPE_NAMES.contains(name))
            .collect();
        unknown.sort_unstable();
        if let Some(name) = unknown.first() {
            return Err(Invalid::spec(format!(
                "metric {metric}: {field} {source:?} names {name}, but only result is defined"
            )));
        }
        Ok(Condition {
            field,
            source: source.to_owned(),
            program: Arc::new(program),
        })
    }

    /// Whether the condition holds for `value`; why not when it cannot say.
    fn holds(&self, value: &MetricValue) -> Result<bool, String> {
        let mut context = Context::with_env(Arc::clone(&CEL_ENV));
        context.add_variable_from_value("result", cel_value(value));
        match self.program.execute(&context) {
            Ok(CelValue::Bool(holds)) => Ok(holds),
            Ok(other) => Err(format!(
                "{} {:?} gave {other:?}, not true or false",
                self.field, self.source
            )),
            Err(error) => Err(format!(
                "{} {:?} could not be evaluated: {error}",
                self.field, self.source
            )),
        }
    }
}

/// The variables the macros of `expression` bind (`x` in `result.all(x, x < 0.01)`).
fn bound_variables(expression: &IdedExpr, out: &mut BTreeSet<String>) {
    match &expression.expr {
        Expr::Comprehension(comprehension) => {
            out.insert(comprehension.iter_var.clone());
            if let Some(second) = &comprehension.iter_var2 {
                out.insert(second.clone());
            }
            out.insert(comprehension.accu_var.clone());
            for inner in [
                &comprehension.iter_range,
                &comprehension.accu_init,
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ] {
                bound_variables(inner, out);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                bound_variables(target, out);
            }
            call.args.iter().for_each(|arg| bound_variables(arg, out));
        }
        Expr::List(list) => list.elements.iter().for_each(|e| bound_variables(e, out)),
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::StructField(field) => bound_variables(&field.value, out),
                    EntryExpr::MapEntry(entry) => {
                        bound_variables(&entry.key, out);
                        bound_variables(&entry.value, out);
                    }
                }
            }
        }
        Expr::Select(select) => bound_variables(&select.operand, out),
        Expr::Struct(structure) => {
            for entry in &structure.entries {
                if let EntryExpr::StructField(field) = &entry.expr {
                    bound_variables(&field.value, out);
                }
            }
        }
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
    }
}

fn cel_value(value: &MetricValue) -> CelValue {
    match value {
        MetricValue::Number(number) => CelValue::Float(*number),
        MetricValue::List(numbers) => {
            CelValue::List(Arc::new(numbers.iter().map(|n| CelValue::Float(*n)).collect()))
        }
    }
}

/// A value for people: `0.012`, `[0.01, 0.2]` (at most [`SHOWN_VALUES`] values of a list).
pub(super) fn value_text(value: &MetricValue) -> String {
    match value {
        MetricValue::Number(number) => number.to_string(),
        MetricValue::List(numbers) => {
            let mut text = String::from("[");
            for (index, number) in numbers.iter().take(SHOWN_VALUES).enumerate() {
                if index > 0 {
                    text.push_str(", ");
                }
                let _ = write!(text, "{number}");
            }
            if numbers.len() > SHOWN_VALUES {
                let _ = write!(text, ", ... ({} values)", numbers.len());
            }
            text.push(']');
            text
        }
    }
}

/// A metric, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Metric {
    pub(super) name: String,
    provider: Provider,
    success: Option<Condition>,
    failure: Option<Condition>,
    pub(super) interval: Duration,
    pub(super) count: i32,
    pub(super) failure_limit: i32,
    pub(super) inconclusive_limit: i32,
    pub(super) consecutive_error_limit: i32,
    pub(super) dry_run: bool,
}

fn parse_headers(metric: &str, provider: &str, headers: &[MetricHeader]) -> Result<Vec<Header>, Invalid> {
    headers
        .iter()
        .map(|header| {
            let field = format!("metric {metric}: {provider}.headers {}", header.name);
            match (&header.value, &header.value_from) {
                (Some(value), None) => Ok(Header::Literal {
                    name: header.name.clone(),
                    value: Template::parse(&field, value)?,
                }),
                (None, Some(from)) => Ok(Header::Secret {
                    name: header.name.clone(),
                    secret: from.secret_key_ref.name.clone(),
                    key: from.secret_key_ref.key.clone(),
                }),
                _ => Err(Invalid::spec(format!(
                    "{field} needs exactly one of value or valueFrom"
                ))),
            }
        })
        .collect()
}

fn check_limit(metric: &str, field: &str, value: i32, min: i32) -> Result<i32, Invalid> {
    if !(min..=1000).contains(&value) {
        return Err(Invalid::spec(format!(
            "metric {metric}: {field} {value} is not between {min} and 1000"
        )));
    }
    Ok(value)
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn is_http_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

impl Metric {
    /// Parses `metric` (`index` is its place in the list, for messages); its interval defaults
    /// to `default_interval` (the analysis's).
    fn parse(index: usize, metric: &AnalysisMetric, default_interval: Duration) -> Result<Metric, Invalid> {
        let name = metric.name.as_str();
        if !is_dns_label(name) {
            return Err(Invalid::spec(format!(
                "analysis.metrics[{index}]: name {name:?} must be a DNS label such as error-rate"
            )));
        }
        let field = |what: &str| format!("metric {name}: {what}");
        let timeout = |provider: &str, text: &str| -> Result<Duration, Invalid> {
            let duration = parse_bounded(&field(&format!("{provider}.timeout")), text, MIN_TIMEOUT)?;
            if duration > MAX_TIMEOUT {
                return Err(Invalid::spec(format!(
                    "{} {text:?} must be at most 10m",
                    field(&format!("{provider}.timeout"))
                )));
            }
            Ok(duration)
        };
        let provider = match (&metric.prometheus, &metric.web) {
            (Some(prometheus), None) => {
                if !is_http_url(&prometheus.address) {
                    return Err(Invalid::spec(format!(
                        "{} {:?} must be an http:// or https:// URL",
                        field("prometheus.address"),
                        prometheus.address
                    )));
                }
                Provider::Prometheus {
                    address: prometheus.address.clone(),
                    query: Template::parse(&field("prometheus.query"), &prometheus.query)?,
                    headers: parse_headers(name, "prometheus", &prometheus.headers)?,
                    timeout: timeout("prometheus", &prometheus.timeout)?,
                }
            }
            (None, Some(web)) => {
                if !is_http_url(&web.url) {
                    return Err(Invalid::spec(format!(
                        "{} {:?} must be an http:// or https:// URL",
                        field("web.url"),
                        web.url
                    )));
                }
                if !web.json_path.starts_with('$') {
                    return Err(Invalid::spec(format!(
                        "{} {:?} must be a JSON path starting with $ (such as $.data.errorRate)",
                        field("web.jsonPath"),
                        web.json_path
                    )));
                }
                Provider::Web {
                    url: Template::parse(&field("web.url"), &web.url)?,
                    method: match web.method {
                        WebMethodName::Get => WebMethod::Get,
                        WebMethodName::Post => WebMethod::Post,
                    },
                    headers: parse_headers(name, "web", &web.headers)?,
                    body: web
                        .body
                        .as_deref()
                        .map(|body| Template::parse(&field("web.body"), body))
                        .transpose()?,
                    json_path: web.json_path.clone(),
                    timeout: timeout("web", &web.timeout)?,
                }
            }
            _ => {
                return Err(Invalid::spec(format!(
                    "metric {name}: each metric needs exactly one provider: prometheus or web"
                )));
            }
        };
        let success = metric
            .success_condition
            .as_deref()
            .map(|source| Condition::compile(name, "successCondition", source))
            .transpose()?;
        let failure = metric
            .failure_condition
            .as_deref()
            .map(|source| Condition::compile(name, "failureCondition", source))
            .transpose()?;
        if success.is_none() && failure.is_none() {
            return Err(Invalid::spec(format!(
                "metric {name}: each metric needs a successCondition, a failureCondition or both"
            )));
        }
        let interval = match &metric.interval {
            Some(text) => parse_bounded(&field("interval"), text, super::MIN_ANALYSIS_PERIOD)?,
            None => default_interval,
        };
        Ok(Metric {
            name: metric.name.clone(),
            provider,
            success,
            failure,
            interval,
            count: check_limit(name, "count", metric.count, 1)?,
            failure_limit: check_limit(name, "failureLimit", metric.failure_limit, 0)?,
            inconclusive_limit: check_limit(name, "inconclusiveLimit", metric.inconclusive_limit, 0)?,
            consecutive_error_limit: check_limit(
                name,
                "consecutiveErrorLimit",
                metric.consecutive_error_limit,
                0,
            )?,
            dry_run: metric.dry_run,
        })
    }

    /// The request of one measurement, its templates filled with `values`.
    pub(super) fn request(&self, values: &TemplateValues) -> MeasurementRequest {
        let headers = |headers: &[Header]| {
            headers
                .iter()
                .map(|header| match header {
                    Header::Literal { name, value } => HeaderRequest {
                        name: name.clone(),
                        value: HeaderValue::Literal(value.fill(values)),
                    },
                    Header::Secret { name, secret, key } => HeaderRequest {
                        name: name.clone(),
                        value: HeaderValue::Secret {
                            name: secret.clone(),
                            key: key.clone(),
                        },
                    },
                })
                .collect()
        };
        let provider = match &self.provider {
            Provider::Prometheus {
                address,
                query,
                headers: written,
                timeout,
            } => ProviderRequest::Prometheus {
                address: address.clone(),
                query: query.fill(values),
                headers: headers(written),
                timeout: *timeout,
            },
            Provider::Web {
                url,
                method,
                headers: written,
                body,
                json_path,
                timeout,
            } => ProviderRequest::Web {
                url: url.fill(values),
                method: *method,
                headers: headers(written),
                body: body.as_ref().map(|body| body.fill(values)),
                json_path: json_path.clone(),
                timeout: *timeout,
            },
        };
        MeasurementRequest {
            metric: self.name.clone(),
            provider,
        }
    }

    /// The verdict on a value the provider returned, and the message of an error.
    pub(super) fn judge(&self, value: &MetricValue) -> (MeasurementPhase, Option<String>) {
        if let Some(failure) = &self.failure {
            match failure.holds(value) {
                Ok(true) => return (MeasurementPhase::Failed, None),
                Ok(false) => {}
                Err(why) => return (MeasurementPhase::Error, Some(why)),
            }
        }
        match &self.success {
            Some(success) => match success.holds(value) {
                Ok(true) => (MeasurementPhase::Successful, None),
                Ok(false) if self.failure.is_some() => (MeasurementPhase::Inconclusive, None),
                Ok(false) => (MeasurementPhase::Failed, None),
                Err(why) => (MeasurementPhase::Error, Some(why)),
            },
            // The failure condition alone, and it does not hold.
            None => (MeasurementPhase::Successful, None),
        }
    }

    /// The condition that judged a failed or inconclusive measurement, for people.
    pub(super) fn conditions_text(&self) -> String {
        [&self.failure, &self.success]
            .into_iter()
            .flatten()
            .map(|c| format!("{} {}", c.field, c.source))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The phase its counts give while the rollout runs.
    pub(super) fn phase(&self, status: &MetricStatus) -> MetricPhase {
        if status.failed > self.failure_limit {
            MetricPhase::Failed
        } else if status.inconclusive > self.inconclusive_limit {
            MetricPhase::Inconclusive
        } else if status.consecutive_errors > self.consecutive_error_limit {
            MetricPhase::Error
        } else {
            MetricPhase::Running
        }
    }

    /// When the metric is due next, measured last at `last` (or, never measured, the rollout
    /// started then).
    pub(super) fn due_at(&self, last: Timestamp) -> Timestamp {
        super::after(last, self.interval)
    }
}

/// Parses every metric of the analysis; names must be unique.
pub(super) fn parse_metrics(
    metrics: &[AnalysisMetric],
    default_interval: Duration,
) -> Result<Vec<Metric>, Invalid> {
    if metrics.len() > super::MAX_METRICS {
        return Err(Invalid::spec(format!(
            "analysis.metrics has {} metrics; at most {} are allowed",
            metrics.len(),
            super::MAX_METRICS
        )));
    }
    let mut seen = BTreeSet::new();
    let mut parsed = Vec::with_capacity(metrics.len());
    for (index, metric) in metrics.iter().enumerate() {
        if !seen.insert(metric.name.as_str()) {
            return Err(Invalid::spec(format!(
                "analysis.metrics[{index}]: the name {} is already taken by another metric",
                metric.name
            )));
        }
        parsed.push(Metric::parse(index, metric, default_interval)?);
    }
    Ok(parsed)
}

/// A fresh status for `metric`.
pub(super) fn new_status(metric: &Metric) -> MetricStatus {
    MetricStatus {
        name: metric.name.clone(),
        phase: MetricPhase::Running,
        dry_run: metric.dry_run,
        measurements: 0,
        successful: 0,
        failed: 0,
        inconclusive: 0,
        errors: 0,
        consecutive_errors: 0,
        step_measurements: 0,
        last_measurements: Vec::new(),
    }
}
