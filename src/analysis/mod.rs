//! The metric providers of rollout analysis, shared by the controller and standalone mode: they
//! take the measurements the core asks for ([`MeasurementRequest`]) over HTTP, from Prometheus
//! ([`prometheus`]) or a JSON web service ([`web`]), with header values read from Secrets
//! ([`secrets`]), and bring back one [`Measured`] per request ([`Providers`], the
//! [`SharedMetricSource`] of [`crate::rollout_driver`]).
//!
//! A provider's failure is a measurement's error, never a panic nor a missing measurement: the
//! core counts errors (`consecutiveErrorLimit`). Each request has its own timeout, covering the
//! Secret reads, the connection and the whole answer; answers are read up to
//! [`MAX_ANSWER_BYTES`] and redirects followed at most [`MAX_REDIRECTS`] times (reqwest drops
//! the `Authorization` header on a redirect to another host). A Secret's value is sent as a
//! header marked sensitive and is scrubbed from every error message (a server may echo a header
//! back in its error page).

pub mod prometheus;
pub mod secrets;
pub mod web;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

pub use self::secrets::{FolderSecrets, KubeSecrets, SecretData, SecretError, SecretMap, SecretSource};
use crate::{
    api::Rollout,
    clock::Clock,
    core::rollout::measurement::{
        HeaderRequest, HeaderValue as RequestedValue, Measured, MeasurementRequest, MetricValue,
        ProviderRequest, WebMethod,
    },
    error_chain::error_chain,
    rollout_driver::SharedMetricSource,
};

/// The largest answer read; a larger one is an error (a metric is one figure, not a dump).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Redirects followed before an answer is an error.
pub const MAX_REDIRECTS: usize = 5;
/// Measurements of one call taken at once.
pub const CONCURRENCY: usize = 8;
/// How much of an unexpected body an error quotes.
const EXCERPT_CHARS: usize = 200;

/// Why a measurement has no value. The messages are for people (they go into the Rollout's
/// status) and never hold a Secret's value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeasureError {
    /// A header from a Secret could not be read.
    #[error("header {header}: {source}")]
    Secret {
        /// The header's name.
        header: String,
        /// Why.
        source: SecretError,
    },
    /// A header's name is not a valid HTTP header name.
    #[error("{name:?} is not a valid HTTP header name")]
    HeaderName {
        /// The name as written.
        name: String,
    },
    /// A header's value is not a valid HTTP header value (the value is not quoted: it may be
    /// a Secret's).
    #[error("the value of header {name} is not a valid HTTP header value (control characters?)")]
    HeaderValue {
        /// The header's name.
        name: String,
    },
    /// The address or URL does not parse.
    #[error("{url} is not a valid http(s) URL: {reason}")]
    Url {
        /// As written.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer: the connection failed, or the answer broke off.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// Where the request went (the provider's address or URL).
        url: String,
        /// The client's error.
        reason: String,
    },
    /// No whole answer within the request's timeout.
    #[error("no answer within {timeout:?} from {url}")]
    Timeout {
        /// Where the request went.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The answer is larger than [`MAX_ANSWER_BYTES`].
    #[error("the answer is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A status other than 2xx.
    #[error("HTTP {code}: {excerpt}")]
    Status {
        /// The HTTP status.
        code: u16,
        /// The start of the body.
        excerpt: String,
    },
    /// Prometheus answered with an error (a bad query, an execution timeout).
    #[error("Prometheus refused the query ({error_type}): {message}")]
    Prometheus {
        /// Its `errorType`.
        error_type: String,
        /// Its `error`.
        message: String,
    },
    /// An empty instant vector ([`prometheus`] says why this is an error).
    #[error(
        "the query returned no data (an empty vector); if no series means zero, append `or vector(0)` to the query"
    )]
    NoData,
    /// A NaN value ([`prometheus`] says why this is an error).
    #[error("{what} is NaN (a ratio over no traffic, 0/0?); NaN satisfies no condition")]
    NotANumberValue {
        /// Which value.
        what: String,
    },
    /// A web answer that is not JSON.
    #[error("the answer is not JSON (content type {content_type}): {excerpt}")]
    NotJson {
        /// The answer's content type.
        content_type: String,
        /// The start of the body.
        excerpt: String,
    },
    /// The JSONPath does not parse.
    #[error("{path} is not a valid JSONPath: {reason}")]
    JsonPath {
        /// As written.
        path: String,
        /// Why.
        reason: String,
    },
    /// The JSONPath selects nothing.
    #[error("{path} matches nothing in the answer")]
    NothingAt {
        /// As written.
        path: String,
    },
    /// The JSONPath selects something that is not a number or a list of numbers.
    #[error("{path} is {found}, not a number or a list of numbers")]
    NotANumber {
        /// As written.
        path: String,
        /// What is there.
        found: String,
    },
    /// An answer of an unexpected shape.
    #[error("{0}")]
    Unexpected(String),
}

/// Why the providers cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    /// The HTTP client cannot be built (no TLS roots, ...).
    #[error("cannot build the HTTP client of the metric providers: {0}")]
    Http(#[source] reqwest::Error),
}

/// The metric providers: one HTTP client, the Secrets headers are read from, and the clock that
/// dates each measurement.
#[derive(Clone)]
pub struct Providers<S> {
    http: reqwest::Client,
    secrets: S,
    clock: Arc<dyn Clock>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Providers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("secrets", &self.secrets)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// What one request brought back.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl<S: SecretSource> Providers<S> {
    /// Providers that read header Secrets from `secrets` and date measurements with `clock`.
    pub fn new(secrets: S, clock: Arc<dyn Clock>) -> Result<Providers<S>, ProvidersError> {
        crate::telemetry::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "ota-operator/",
                env!("CARGO_PKG_VERSION"),
                " (rollout analysis)"
            ))
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .build()
            .map_err(ProvidersError::Http)?;
        Ok(Providers { http, secrets, clock })
    }

    /// Takes one measurement for a Rollout of `namespace` (where its header Secrets are).
    pub async fn measure_one(&self, namespace: &str, request: &MeasurementRequest) -> Measured {
        let timeout = match &request.provider {
            ProviderRequest::Prometheus { timeout, .. } | ProviderRequest::Web { timeout, .. } => *timeout,
        };
        let mut secret_values = Vec::new();
        let value =
            match tokio::time::timeout(timeout, self.take(namespace, request, &mut secret_values)).await {
                Ok(value) => value,
                Err(_) => Err(MeasureError::Timeout {
                    url: shown_url(&request.provider),
                    timeout,
                }),
            };
        let value = value.map_err(|error| scrub(&error.to_string(), &secret_values));
        if let Err(error) = &value {
            tracing::debug!(metric = %request.metric, %namespace, %error, "a measurement failed");
        }
        Measured {
            metric: request.metric.clone(),
            at: self.clock.now(),
            value,
        }
    }

    /// Reads the headers, sends the request and reads its answer; the Secret values read are
    /// pushed to `secret_values` as they are read, so a timeout's error is scrubbed too.
    async fn take(
        &self,
        namespace: &str,
        request: &MeasurementRequest,
        secret_values: &mut Vec<Vec<u8>>,
    ) -> Result<MetricValue, MeasureError> {
        match &request.provider {
            ProviderRequest::Prometheus {
                address,
                query,
                headers,
                ..
            } => {
                let url = prometheus::query_url(address, query)?;
                let headers = self.headers(namespace, headers, secret_values).await?;
                let answer = self.send(self.http.get(url).headers(headers), address).await?;
                prometheus::read_answer(answer.status, &answer.body)
            }
            ProviderRequest::Web {
                url,
                method,
                headers,
                body,
                json_path,
                ..
            } => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|error| MeasureError::Url {
                        url: url.clone(),
                        reason: error.to_string(),
                    })
                    .and_then(|parsed| match parsed.scheme() {
                        "http" | "https" => Ok(parsed),
                        _ => Err(MeasureError::Url {
                            url: url.clone(),
                            reason: "the scheme is not http or https".to_owned(),
                        }),
                    })?;
                let mut headers = self.headers(namespace, headers, secret_values).await?;
                let builder = match method {
                    WebMethod::Get => self.http.get(parsed),
                    WebMethod::Post => {
                        if body.is_some() && !headers.contains_key(CONTENT_TYPE) {
                            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        }
                        self.http.post(parsed).body(body.clone().unwrap_or_default())
                    }
                };
                let answer = self.send(builder.headers(headers), url).await?;
                web::read_answer(
                    answer.status,
                    answer.content_type.as_deref(),
                    &answer.body,
                    json_path,
                )
            }
        }
    }

    /// The headers of a request, Secret values read (and trimmed of surrounding whitespace: a
    /// token file written with `echo` ends with a newline, which a header cannot hold).
    async fn headers(
        &self,
        namespace: &str,
        requested: &[HeaderRequest],
        secret_values: &mut Vec<Vec<u8>>,
    ) -> Result<HeaderMap, MeasureError> {
        let mut headers = HeaderMap::new();
        for header in requested {
            let name =
                HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| MeasureError::HeaderName {
                    name: header.name.clone(),
                })?;
            let value = match &header.value {
                RequestedValue::Literal(value) => {
                    HeaderValue::from_str(value).map_err(|_| MeasureError::HeaderValue {
                        name: header.name.clone(),
                    })?
                }
                RequestedValue::Secret { name: secret, key } => {
                    let read = self
                        .secrets
                        .secret_value(namespace, secret, key)
                        .await
                        .map_err(|source| MeasureError::Secret {
                            header: header.name.clone(),
                            source,
                        })?;
                    let trimmed = read.trim_ascii().to_vec();
                    secret_values.push(read);
                    secret_values.push(trimmed.clone());
                    let mut value =
                        HeaderValue::from_bytes(&trimmed).map_err(|_| MeasureError::HeaderValue {
                            name: header.name.clone(),
                        })?;
                    value.set_sensitive(true);
                    value
                }
            };
            headers.append(name, value);
        }
        Ok(headers)
    }

    /// Sends a request and reads its answer, up to [`MAX_ANSWER_BYTES`].
    async fn send(&self, request: reqwest::RequestBuilder, shown: &str) -> Result<Answer, MeasureError> {
        let unreachable = |error: reqwest::Error| MeasureError::Unreachable {
            url: shown.to_owned(),
            reason: error_chain(&error.without_url()),
        };
        let mut response = request.send().await.map_err(unreachable)?;
        if response
            .content_length()
            .is_some_and(|length| length > MAX_ANSWER_BYTES as u64)
        {
            return Err(MeasureError::TooLarge {
                limit: MAX_ANSWER_BYTES,
            });
        }
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(MeasureError::TooLarge {
                    limit: MAX_ANSWER_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }
}

impl<S: SecretSource> Providers<S> {
    /// Takes every measurement `requests` asks for `rollout`, at most [`CONCURRENCY`] at once.
    pub async fn measure_all(&self, rollout: &Rollout, requests: &[MeasurementRequest]) -> Vec<Measured> {
        let namespace = rollout.metadata.namespace.as_deref().unwrap_or_default();
        // Made before the stream, not in a closure of it: a future holding such a closure is not
        // provably Send (rust-lang/rust#102211).
        let pending: Vec<_> = requests
            .iter()
            .map(|request| self.measure_one(namespace, request))
            .collect();
        futures::stream::iter(pending)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }
}

/// The shells hold the providers behind an `Arc` shared by concurrent decisions.
impl<S: SecretSource + std::fmt::Debug + 'static> SharedMetricSource for Providers<S> {
    fn measure<'a>(
        &'a self,
        rollout: &'a Rollout,
        requests: &'a [MeasurementRequest],
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<Measured>> + Send + 'a>> {
        Box::pin(self.measure_all(rollout, requests))
    }
}

/// Where a request goes, for messages: the Prometheus address (not the long query URL), the
/// web URL.
fn shown_url(provider: &ProviderRequest) -> String {
    match provider {
        ProviderRequest::Prometheus { address, .. } => address.clone(),
        ProviderRequest::Web { url, .. } => url.clone(),
    }
}

/// The start of a body, on one line, for an error message.
fn excerpt(body: &[u8]) -> String {
    // Whitespace is collapsed over a prefix only: a body may be up to a MiB.
    let prefix = &body[..body.len().min(EXCERPT_CHARS * 4)];
    let text = String::from_utf8_lossy(prefix);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        return "(an empty body)".to_owned();
    }
    let mut shown = cut(&collapsed, EXCERPT_CHARS);
    if prefix.len() < body.len() && !shown.ends_with('…') {
        shown.push('…');
    }
    shown
}

/// `text` cut to `max_chars` characters, with an ellipsis when cut.
fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `message` with every Secret value in it replaced by `***`.
fn scrub(message: &str, secret_values: &[Vec<u8>]) -> String {
    let mut scrubbed = message.to_owned();
    for value in secret_values {
        let value = String::from_utf8_lossy(value);
        if !value.is_empty() {
            scrubbed = scrubbed.replace(value.as_ref(), "***");
        }
    }
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt(b""), "(an empty body)");
        assert_eq!(excerpt(b"  line one\n\n  line two  "), "line one line two");
        let long = "x".repeat(5_000);
        let shown = excerpt(long.as_bytes());
        assert_eq!(shown.chars().count(), EXCERPT_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(cut("héllo", 5), "héllo");
    }

    #[test]
    fn secret_values_are_scrubbed_from_messages() {
        let values = vec![b"tok3n\n".to_vec(), b"tok3n".to_vec(), Vec::new()];
        assert_eq!(
            scrub("HTTP 401: bad token tok3n for you", &values),
            "HTTP 401: bad token *** for you"
        );
    }
}
