//! The seam between the rollout decision and the metric providers: what the core asks the shell
//! to measure (a request with its templates already filled in) and what the shell brings back.
//! Plain data; the providers themselves (HTTP to Prometheus or a web service) live in the shell.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// One measurement of one metric that is due now.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementRequest {
    /// The metric's name (unique within its Rollout).
    pub metric: String,
    /// What to ask, and where.
    pub provider: ProviderRequest,
}

/// A provider's request, templates (`{{candidate}}`, `{{stable}}`, ...) filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderRequest {
    /// An instant query of the Prometheus HTTP API (`GET {address}/api/v1/query`).
    Prometheus {
        /// The server's base URL.
        address: String,
        /// The PromQL query.
        query: String,
        /// Headers to send (e.g. `Authorization`), values read from Secrets by the shell.
        headers: Vec<HeaderRequest>,
        /// How long to wait for the answer.
        timeout: Duration,
    },
    /// A JSON web service.
    Web {
        /// The URL.
        url: String,
        /// `GET` or `POST`.
        method: WebMethod,
        /// Headers to send.
        headers: Vec<HeaderRequest>,
        /// The body of a POST.
        body: Option<String>,
        /// Where the value is in the JSON answer (a JSONPath such as `$.data.errorRate`).
        json_path: String,
        /// How long to wait for the answer.
        timeout: Duration,
    },
}

/// The HTTP method of a web metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebMethod {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// A header of a provider request: a literal value, or a key of a Secret in the Rollout's
/// namespace (in standalone mode: a Secret document of the folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRequest {
    /// The header's name.
    pub name: String,
    /// Where its value comes from.
    pub value: HeaderValue,
}

/// Where a header's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Written in the spec.
    Literal(String),
    /// A key of a Secret.
    Secret {
        /// The Secret's name.
        name: String,
        /// The key.
        key: String,
    },
}

/// A value a provider returned: CEL conditions see it as `result`.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// One number (a Prometheus scalar, a one-sample vector, a JSON number).
    Number(f64),
    /// Several numbers (a Prometheus vector of several series, a JSON array of numbers).
    List(Vec<f64>),
}

/// What the shell brings back for a [`MeasurementRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The metric's name.
    pub metric: String,
    /// When it was measured (the shell's injected clock).
    pub at: Timestamp,
    /// The value, or why there is none (the provider's error, for people).
    pub value: Result<MetricValue, String>,
}
