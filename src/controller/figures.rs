//! Failure figures for rollout analysis, and an App's monthly active devices. The devices'
//! reports live in each App's device store, behind its update server; the controller asks the
//! server's internal listener (on the App's Service, never behind its Ingress) how many devices
//! tried the candidate in the channel and how many of them failed, and how many devices checked
//! in the last 30 days.

use std::time::Duration;

use serde::Deserialize;

use crate::{
    api::constants::{MONTHLY_ACTIVE_DEVICES_PATH, ROLLOUT_FIGURES_PATH},
    core::{
        active_devices::{ActiveDevicesAnswer, ActiveDevicesQuery},
        app_children::{INTERNAL_PORT, internal_service_name},
        rollout::{FailureCounts, FiguresQuery},
    },
    telemetry::error_chain,
};

/// The default template of the internal listener's base URL, inside the cluster.
pub fn default_url_template() -> String {
    format!("http://{{service}}.{{namespace}}.svc:{INTERNAL_PORT}")
}
/// How long one request for figures may take: the reconcile waits for it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why figures could not be read (the analysis then waits and says so in status). Each message
/// already carries its cause's text, so the causes are not chained as sources (a chain would
/// repeat them in status).
#[derive(Debug, thiserror::Error)]
pub enum FiguresError {
    /// The App's base URL (from the template) is not a URL.
    #[error("asking {url} for failure figures: not a URL: {error}")]
    BadUrl {
        /// The URL asked (without its query).
        url: String,
        /// The URL parser's error.
        error: url::ParseError,
    },
    /// The server is unreachable or slow.
    #[error("asking {url} for failure figures: {}", error_chain(error))]
    Unreachable {
        /// The URL asked (without its query).
        url: String,
        /// The HTTP client's error.
        error: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("asking {url} for failure figures: HTTP {status}: {body}")]
    Status {
        /// The URL asked (without its query).
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of the answer's body.
        body: String,
    },
    /// The answer is not the JSON expected.
    #[error("asking {url} for failure figures: unreadable answer: {error}")]
    Unreadable {
        /// The URL asked (without its query).
        url: String,
        /// The HTTP client's decoding error.
        error: reqwest::Error,
    },
    /// The answer reads but makes no sense.
    #[error("asking {url} for failure figures: inconsistent answer: {inconsistency}")]
    Inconsistent {
        /// The URL asked (without its query).
        url: String,
        /// What makes no sense.
        inconsistency: Inconsistency,
    },
}

/// What makes an answer of an update server impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    /// Negative counts, or more failures than attempts.
    #[error("{failures} failures in {attempts} attempts")]
    Counts {
        /// The failures reported.
        failures: i64,
        /// The attempts reported.
        attempts: i64,
    },
    /// A negative number of devices.
    #[error("{devices} devices")]
    Devices {
        /// The devices reported.
        devices: i64,
    },
}

/// Asks update servers for failure figures.
#[derive(Debug, Clone)]
pub struct FiguresClient {
    http: reqwest::Client,
    /// The base URL with `{namespace}`, `{app}` and `{service}` placeholders.
    template: String,
}

#[derive(Deserialize)]
struct Answer {
    attempts: i64,
    failures: i64,
}

impl FiguresClient {
    /// A client that expands `template` (`{namespace}`, `{app}`: the App's name, `{service}`:
    /// the ClusterIP Service of its update server's internal port) into each App's base URL.
    pub fn new(http: reqwest::Client, template: String) -> Self {
        FiguresClient { http, template }
    }

    /// The internal listener's base URL of an App's update server (pure).
    pub fn base_url(&self, namespace: &str, app_name: &str) -> String {
        self.template
            .replace("{namespace}", namespace)
            .replace("{app}", app_name)
            .replace("{service}", &internal_service_name(app_name))
            .trim_end_matches('/')
            .to_owned()
    }

    /// GETs `path` with `query` from the internal listener of the App `app_name` in `namespace`
    /// and decodes the JSON answer; `check` refuses an answer that makes no sense.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        namespace: &str,
        app_name: &str,
        path: &str,
        query: &str,
        check: impl FnOnce(&T) -> Result<(), Inconsistency>,
    ) -> Result<T, FiguresError> {
        let base = format!("{}{path}", self.base_url(namespace, app_name));
        let mut url = match url::Url::parse(&base) {
            Ok(url) => url,
            Err(error) => return Err(FiguresError::BadUrl { url: base, error }),
        };
        url.set_query(Some(query));
        let response = match self.http.get(url).timeout(REQUEST_TIMEOUT).send().await {
            Ok(response) => response,
            Err(error) => return Err(FiguresError::Unreachable { url: base, error }),
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            return Err(FiguresError::Status {
                url: base,
                status,
                body,
            });
        }
        let answer: T = match response.json().await {
            Ok(answer) => answer,
            Err(error) => return Err(FiguresError::Unreadable { url: base, error }),
        };
        match check(&answer) {
            Ok(()) => Ok(answer),
            Err(inconsistency) => Err(FiguresError::Inconsistent {
                url: base,
                inconsistency,
            }),
        }
    }

    /// The figures that the update server of the App `app_name` in `namespace` holds.
    pub async fn fetch(
        &self,
        namespace: &str,
        app_name: &str,
        query: &FiguresQuery,
    ) -> Result<FailureCounts, FiguresError> {
        let answer: Answer = self
            .get(
                namespace,
                app_name,
                ROLLOUT_FIGURES_PATH,
                &query.to_query(),
                |answer: &Answer| match answer.attempts < 0
                    || answer.failures < 0
                    || answer.failures > answer.attempts
                {
                    true => Err(Inconsistency::Counts {
                        failures: answer.failures,
                        attempts: answer.attempts,
                    }),
                    false => Ok(()),
                },
            )
            .await?;
        Ok(FailureCounts {
            attempts: answer.attempts,
            failures: answer.failures,
        })
    }

    /// The devices of `app_id` seen in the last 30 days, from the App's update server.
    pub async fn monthly_active_devices(
        &self,
        namespace: &str,
        app_name: &str,
        app_id: &str,
    ) -> Result<i64, FiguresError> {
        let query = ActiveDevicesQuery {
            app_id: app_id.to_owned(),
        };
        let answer: ActiveDevicesAnswer = self
            .get(
                namespace,
                app_name,
                MONTHLY_ACTIVE_DEVICES_PATH,
                &query.to_query(),
                |answer: &ActiveDevicesAnswer| match answer.devices < 0 {
                    true => Err(Inconsistency::Devices {
                        devices: answer.devices,
                    }),
                    false => Ok(()),
                },
            )
            .await?;
        Ok(answer.devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_names_the_apps_service_and_internal_port() {
        let client = FiguresClient::new(reqwest::Client::new(), default_url_template());
        assert_eq!(
            client.base_url("shop-ns", "shop"),
            format!(
                "http://{}.shop-ns.svc:{INTERNAL_PORT}",
                internal_service_name("shop")
            )
        );
    }

    /// A real HTTP server on 127.0.0.1 that answers the figures path with `status` and `body`,
    /// and remembers the query it was asked.
    async fn server(
        status: u16,
        body: &'static str,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Option<String>>>) {
        use axum::{extract::RawQuery, http::StatusCode, routing::get};
        let asked = std::sync::Arc::new(std::sync::Mutex::new(None));
        let remember = asked.clone();
        let router = axum::Router::new().route(
            ROLLOUT_FIGURES_PATH,
            get(move |RawQuery(query): RawQuery| async move {
                *remember.lock().unwrap() = query;
                (StatusCode::from_u16(status).unwrap(), body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (format!("http://{address}"), asked)
    }

    fn query(since_ms: i64) -> FiguresQuery {
        FiguresQuery {
            app_id: "com.example.shop".into(),
            channel: "production".into(),
            version: "1.2.0+build 7".into(),
            since_ms,
        }
    }

    #[tokio::test]
    async fn figures_are_read_from_the_internal_listener_with_the_query_encoded() {
        let (base, asked) = server(200, r#"{"attempts":120,"failures":7}"#).await;
        let client = FiguresClient::new(reqwest::Client::new(), base);
        let counts = client
            .fetch("ns", "shop", &query(1_700_000_000_123))
            .await
            .expect("figures");
        assert_eq!(
            counts,
            FailureCounts {
                attempts: 120,
                failures: 7
            }
        );
        let asked = asked.lock().unwrap().clone().expect("a query");
        assert_eq!(
            asked,
            "app_id=com.example.shop&channel=production&version=1.2.0%2Bbuild+7&since_ms=1700000000123"
        );
    }

    #[tokio::test]
    async fn an_error_status_an_unreadable_or_inconsistent_answer_and_no_server_are_errors() {
        for (status, body, expected) in [
            (503, "device store unavailable", "HTTP 503"),
            (200, "{\"attempts\":", "unreadable answer"),
            (
                200,
                r#"{"attempts":3,"failures":4}"#,
                "inconsistent answer: 4 failures in 3 attempts",
            ),
            (200, r#"{"attempts":-1,"failures":0}"#, "inconsistent answer"),
        ] {
            let (base, _) = server(status, body).await;
            let client = FiguresClient::new(reqwest::Client::new(), base);
            let error = client
                .fetch("ns", "shop", &query(0))
                .await
                .expect_err(body)
                .to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains(ROLLOUT_FIGURES_PATH), "{error}");
        }
        // A port nobody listens on: bind one, then free it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let client = FiguresClient::new(reqwest::Client::new(), format!("http://{address}"));
        let error = client
            .fetch("ns", "shop", &query(0))
            .await
            .expect_err("refused")
            .to_string();
        assert!(error.contains(&address.to_string()), "{error}");
    }

    #[test]
    fn a_template_for_runs_outside_the_cluster_may_use_every_placeholder() {
        let client = FiguresClient::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9999/{namespace}/{app}/{service}/".to_owned(),
        );
        assert_eq!(
            client.base_url("ns", "shop"),
            format!("http://127.0.0.1:9999/ns/shop/{}", internal_service_name("shop"))
        );
    }
}
