//! The internal listener: what the controller (and people operating the cluster) read from an
//! update server, on an address of its own so that it is never reachable through the public
//! Ingress. `GET /internal/v1/rollout-figures` (a Rollout's failure figures from the device
//! store), `GET /internal/v1/monthly-active-devices` (an App's devices seen in 30 days),
//! `/metrics` and `/healthz`.

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
use crate::{
    api::constants::{MONTHLY_ACTIVE_DEVICES_PATH, ROLLOUT_FIGURES_PATH},
    core::{
        active_devices::{ActiveDevicesAnswer, ActiveDevicesQuery},
        rollout::FiguresQuery,
    },
};

/// The router of the internal listener.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route(ROLLOUT_FIGURES_PATH, get(rollout_figures))
        .route(MONTHLY_ACTIVE_DEVICES_PATH, get(monthly_active_devices))
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .layer(axum::middleware::from_fn(super::hygiene::close_unless_body_read))
        .with_state(state)
}

/// `GET /internal/v1/rollout-figures?app_id=A&channel=C&version=V&since_ms=N`: 200
/// `{"attempts":n,"failures":m}`, 400 for bad parameters, 503 when the store cannot be read.
async fn rollout_figures(State(state): State<Arc<ServerState>>, RawQuery(query): RawQuery) -> Response {
    let query = match FiguresQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(query) => query,
        Err(error) => return bad_request(error.to_string()),
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

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "message": message})),
    )
        .into_response()
}

/// `GET /internal/v1/monthly-active-devices?app_id=A`: 200 `{"devices":n}`, the App's devices
/// seen in the last 30 days; 400 unless the query is exactly one `app_id`; 503 when the store
/// cannot be read.
async fn monthly_active_devices(
    State(state): State<Arc<ServerState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let app_id = match ActiveDevicesQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(query) => query.app_id,
        Err(error) => return bad_request(error.to_string()),
    };
    match state
        .store
        .monthly_active_devices(&app_id, state.clock.now_ms())
        .await
    {
        Ok(devices) => Json(ActiveDevicesAnswer { devices }).into_response(),
        Err(error) => {
            tracing::warn!(%error, %app_id, "cannot count the monthly active devices");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "store_unavailable", "message": error.to_string()})),
            )
                .into_response()
        }
    }
}
