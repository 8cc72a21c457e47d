//! The internal listener: what the controller (and people operating the cluster) read from an
//! update server, on an address of its own so that it is never reachable through the public
//! Ingress. `GET /internal/v1/rollout-figures` (a Rollout's failure figures from the device
//! store), `/metrics` and `/healthz`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::{ServerState, handlers};

/// The path of the rollout figures.
pub const ROLLOUT_FIGURES_PATH: &str = "/internal/v1/rollout-figures";

/// The router of the internal listener.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route(ROLLOUT_FIGURES_PATH, get(rollout_figures))
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .with_state(state)
}

/// The parameters of a figures request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiguresQuery {
    /// The App's `appId`.
    pub app_id: String,
    /// The Channel's name.
    pub channel: String,
    /// The candidate's version.
    pub version: String,
    /// The start of the window (milliseconds since the epoch).
    pub since_ms: i64,
}

/// Why a figures request's parameters are refused (a 400 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FiguresQueryError {
    /// A required parameter is absent or empty.
    #[error("the query parameter {0} is missing or empty")]
    Missing(&'static str),
    /// A parameter is given twice.
    #[error("the query parameter {0} is given more than once")]
    Repeated(String),
    /// A parameter this endpoint does not know (a typo would otherwise be silently ignored).
    #[error("unknown query parameter {0:?}; expected app_id, channel, version and since_ms")]
    Unknown(String),
    /// `since_ms` is not a non-negative integer.
    #[error("since_ms {0:?} is not a time in milliseconds since the epoch (a non-negative integer)")]
    BadSince(String),
}

impl FiguresQuery {
    /// Reads `app_id`, `channel`, `version` and `since_ms` from a query string.
    pub fn parse(query: &str) -> Result<Self, FiguresQueryError> {
        let (mut app_id, mut channel, mut version, mut since) = (None, None, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "app_id" => &mut app_id,
                "channel" => &mut channel,
                "version" => &mut version,
                "since_ms" => &mut since,
                other => return Err(FiguresQueryError::Unknown(other.to_owned())),
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(FiguresQueryError::Repeated(key.into_owned()));
            }
        }
        let required = |value: Option<String>, name: &'static str| {
            value
                .filter(|value| !value.is_empty())
                .ok_or(FiguresQueryError::Missing(name))
        };
        let app_id = required(app_id, "app_id")?;
        let channel = required(channel, "channel")?;
        let version = required(version, "version")?;
        let since = required(since, "since_ms")?;
        let since_ms = since
            .parse::<i64>()
            .ok()
            .filter(|since| *since >= 0)
            .ok_or(FiguresQueryError::BadSince(since))?;
        Ok(FiguresQuery {
            app_id,
            channel,
            version,
            since_ms,
        })
    }
}

/// `GET /internal/v1/rollout-figures?app_id=A&channel=C&version=V&since_ms=N`: 200
/// `{"attempts":n,"failures":m}`, 400 for bad parameters, 503 when the store cannot be read.
async fn rollout_figures(State(state): State<Arc<ServerState>>, RawQuery(query): RawQuery) -> Response {
    let query = match FiguresQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(query) => query,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "bad_request", "message": error.to_string()})),
            )
                .into_response();
        }
    };
    match state
        .store
        .outcome_figures(&query.app_id, &query.channel, &query.version, query.since_ms)
        .await
    {
        Ok(figures) => Json(figures).into_response(),
        Err(error) => {
            state.metrics.figures_unavailable.inc();
            tracing::warn!(%error, app_id = %query.app_id, channel = %query.channel, "cannot read rollout figures");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "store_unavailable", "message": error.to_string()})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_query_parses() {
        assert_eq!(
            FiguresQuery::parse(
                "app_id=com.example.shop&channel=production&version=1.5.0%2Bbuild.2&since_ms=17"
            ),
            Ok(FiguresQuery {
                app_id: "com.example.shop".into(),
                channel: "production".into(),
                version: "1.5.0+build.2".into(),
                since_ms: 17,
            })
        );
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let cases = [
            ("", FiguresQueryError::Missing("app_id")),
            (
                "app_id=a&channel=c&version=v",
                FiguresQueryError::Missing("since_ms"),
            ),
            (
                "app_id=a&channel=&version=v&since_ms=1",
                FiguresQueryError::Missing("channel"),
            ),
            (
                "app_id=a&channel=c&since_ms=1",
                FiguresQueryError::Missing("version"),
            ),
            (
                "app_id=a&app_id=b&channel=c&version=v&since_ms=1",
                FiguresQueryError::Repeated("app_id".into()),
            ),
            (
                "app_id=a&chanel=c&version=v&since_ms=1",
                FiguresQueryError::Unknown("chanel".into()),
            ),
            (
                "app_id=a&channel=c&version=v&since_ms=yesterday",
                FiguresQueryError::BadSince("yesterday".into()),
            ),
            (
                "app_id=a&channel=c&version=v&since_ms=-5",
                FiguresQueryError::BadSince("-5".into()),
            ),
            (
                "app_id=a&channel=c&version=v&since_ms=99999999999999999999",
                FiguresQueryError::BadSince("99999999999999999999".into()),
            ),
        ];
        for (query, expected) in cases {
            assert_eq!(FiguresQuery::parse(query), Err(expected), "{query}");
        }
        assert!(
            FiguresQueryError::Missing("since_ms")
                .to_string()
                .contains("since_ms")
        );
    }
}
