//! The HTTP handlers: decode, decide (pure core), encode, and queue the device-store writes.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{FromRequest, Path, RawQuery, State},
    http::{HeaderValue, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    ServerState, SourceHealth, files,
    metrics::{AnswerLabels, CommitLabels},
};
use crate::{
    api::app::Platform,
    core::{
        channel_self::{self, OverrideChange},
        snapshot::AppView,
        stats::classify,
        update::{DeviceChannelInputs, UpdateAnswer, decide_update, device_channel},
    },
    devices::{CommitError, DeviceSeen, OutcomeReport, Write},
    protocol::{
        ChannelOperation,
        decode::{self, DecodeError},
        encode, stats_reply,
    },
};

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// A 200 answer of JSON already serialized.
fn json_bytes(body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn push(state: &ServerState, write: Write) {
    if !state.queue.push(write) {
        state.metrics.writes_dropped.set(state.queue.dropped() as i64);
    }
}

/// How long a request waits for its writes' commit before it is answered 503.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// What a 503 for an uncommitted write asks the client to wait, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";

/// Commits what a request acknowledges; None when committed, else the 503 to answer (with
/// `Retry-After`: the plugin keeps the events it could not send and sends them again).
async fn commit(state: &ServerState, writes: Vec<Write>) -> Option<Response> {
    let error = state.queue.commit(writes, COMMIT_TIMEOUT).await.err()?;
    // The store's own error says what is wrong (a full disk, a database that is down).
    let message = match state.queue.store_failure() {
        Some(failure) => format!("{error} ({failure}); send it again later"),
        None => format!("{error}; send it again later"),
    };
    state
        .metrics
        .commits_failed
        .get_or_create(&CommitLabels {
            reason: commit_reason(error),
        })
        .inc();
    let mut response = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        encode::plain_error("store_unavailable", &message),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    Some(response)
}

fn commit_reason(error: CommitError) -> &'static str {
    match error {
        CommitError::Unavailable => "unavailable",
        CommitError::Refused => "refused",
        CommitError::TimedOut => "timed_out",
    }
}

/// `POST /updates`: 200 (the plugin reads the body), with an offer or `{error, message, kind}`;
/// 429 over a rate limit.
pub async fn updates(State(state): State<Arc<ServerState>>, WholeBody(body): WholeBody) -> Response {
    let request = match decode::decode_update(&body) {
        Ok(request) => request,
        Err(error) => {
            count_answer(&state, error.code);
            return json_bytes(encode::update_decode_error(&error));
        }
    };
    let check = &request.check;
    if let Err(over) = state.rate_limits.check_app(&check.app_id) {
        return over.response(&state);
    }
    let served = state.served();
    let facts = state.memory.facts(&check.app_id, &check.device_id);
    let answer = decide_update(&served.snapshot, check, &facts);
    let Some(app) = served.snapshot.app(&check.app_id) else {
        let body = encode::update_answer_without_app(&answer);
        count_answer(&state, answer_label(&answer));
        return json_bytes(body);
    };
    let now = state.clock.now_ms();
    push(
        &state,
        Write::SeenDevice(DeviceSeen {
            app_id: check.app_id.clone(),
            device_id: check.device_id.clone(),
            platform: check.platform.name().to_owned(),
            plugin_version: check.plugin_version.to_string(),
            native_version: check.version_build.clone(),
            version_name: check.version_name.clone(),
            custom_id: request.details.custom_id.clone(),
            default_channel: check.default_channel.clone(),
            is_prod: check.is_prod,
            is_emulator: check.is_emulator,
            seen_at_ms: now,
            creates_row: true,
        }),
    );
    count_answer(&state, answer_label(&answer));
    let manifest = match &answer {
        UpdateAnswer::Offer(offer) => served
            .manifests
            .get(&check.app_id)
            .and_then(|by_bundle| by_bundle.get(&offer.bundle.name)),
        _ => None,
    };
    let urls = served.urls(&check.app_id, state.server_urls());
    json_bytes(encode::update_answer(&answer, app, urls, manifest.map(|m| &**m)))
}

fn answer_label(answer: &UpdateAnswer) -> &'static str {
    match answer {
        UpdateAnswer::Offer(_) => "offer",
        UpdateAnswer::RevertToBuiltin { .. } => "builtin",
        UpdateAnswer::NoUpdate(no) => no.refusal.code(),
    }
}

fn count_answer(state: &ServerState, answer: &'static str) {
    state
        .metrics
        .update_checks
        .get_or_create(&AnswerLabels { answer })
        .inc();
}

/// A request body read whole. When it cannot be (too large: 413, or cut off), the rejection is
/// answered with `Connection: close`: the rest of the body is still on the connection, so the
/// server closes it after the answer, and a client that pooled it must not send its next
/// request there.
pub struct WholeBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for WholeBody {
    type Rejection = Response;

    async fn from_request(request: Request<Body>, state: &S) -> Result<Self, Response> {
        Bytes::from_request(request, state)
            .await
            .map(WholeBody)
            .map_err(|rejection| {
                let mut response = rejection.into_response();
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            })
    }
}

/// `GET /updates`: Capgo's health answer.
pub async fn updates_health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `POST /stats`: one event or a batch; each event is recorded on its own, and only a body that
/// is not an event at all is refused (400, which the plugin drops rather than retries). The
/// answer comes once what the events record is committed (the device sightings they carry
/// excepted: those are written in the background, as an update check's), or is a 503 that
/// makes the plugin send them again.
pub async fn stats(State(state): State<Arc<ServerState>>, WholeBody(body): WholeBody) -> Response {
    let decoded = match decode::decode_stats(&body) {
        Ok(decoded) => decoded,
        Err(error) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                encode::plain_error(error.code, &error.message),
            );
        }
    };
    // A batch counts once against the limit of each App it names (one, from a plugin).
    let mut app_ids: Vec<&str> = decoded
        .events
        .iter()
        .filter_map(|event| event.as_ref().ok().map(|event| event.event.app_id.as_str()))
        .collect();
    app_ids.sort_unstable();
    app_ids.dedup();
    for app_id in app_ids {
        if let Err(over) = state.rate_limits.check_app(app_id) {
            return over.response(&state);
        }
    }
    let now = state.clock.now_ms();
    let served = state.served();
    let mut answers = Vec::with_capacity(decoded.events.len());
    let mut writes = Vec::new();
    for event in &decoded.events {
        state.metrics.stats_events.inc();
        match event {
            Ok(event) => {
                // Stats are unauthenticated: only Apps served here get rows in the store, so
                // arbitrary app ids cannot grow it. The answer is "ok" either way, as the plugin
                // must not retry or drop its queue over it.
                if let Some(app) = served.snapshot.app(&event.event.app_id) {
                    writes.extend(stat_writes(&state, app, event, now));
                }
                answers.push(Ok(()));
            }
            Err(error) => {
                state.metrics.stats_rejected.inc();
                answers.push(Err(error));
            }
        }
    }
    let (sightings, acknowledged): (Vec<Write>, Vec<Write>) = writes
        .into_iter()
        .partition(|write| matches!(write, Write::SeenDevice(_)));
    if let Some(unavailable) = commit(&state, acknowledged).await {
        return unavailable;
    }
    for sighting in sightings {
        push(&state, sighting);
    }
    let (status, body) = stats_reply::stats_answer(decoded.batch, &answers);
    json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body)
}

/// What one stats event records.
fn stat_writes(state: &ServerState, app: &AppView, stat: &decode::StatsEvent, now: i64) -> Vec<Write> {
    let mut writes = Vec::new();
    let event = &stat.event;
    let (effect, left_out) =
        classify(event).for_known_bundles(|version| app.bundle_versions.contains(version));
    if left_out {
        state.metrics.stats_unknown_versions.inc();
    }
    let at = stats_reply::counted_at(stat.timestamp_ms, now);
    if let Some(outcome) = &effect.outcome {
        // The channel the device's update check would resolve now (before this event's own
        // effects, which never change it).
        let facts = state.memory.facts(&event.app_id, &event.device_id);
        let device = DeviceChannelInputs {
            device_id: &event.device_id,
            platform: Platform::from_name(&stat.platform),
            default_channel: stat.default_channel.as_deref(),
        };
        match device_channel(app, &device, &facts) {
            Some(channel) => writes.push(Write::Outcome(OutcomeReport {
                app_id: event.app_id.clone(),
                version: outcome.version().to_owned(),
                device_id: event.device_id.clone(),
                channel: channel.name.clone(),
                failed: outcome.is_failure(),
                // When the server heard of it: rollout windows are on the server's clock,
                // and a device's clock can be far off.
                at_ms: now,
            })),
            None => {
                state.metrics.outcomes_without_channel.inc();
            }
        }
    }
    if let Some((version, action)) = effect.count {
        writes.push(Write::Count {
            app_id: event.app_id.clone(),
            version,
            action,
            day: stats_reply::day_of(at),
            n: 1,
        });
    }
    if let Some(version) = effect.failed_version {
        writes.push(Write::FailedMark {
            app_id: event.app_id.clone(),
            device_id: event.device_id.clone(),
            version,
            at_ms: at,
        });
    }
    if let Some(version) = effect.current_bundle {
        // A Bundle of the App installed: a device of the fleet, as an update check shows one.
        let creates_row = app.bundle_versions.contains(&version);
        writes.push(Write::CurrentBundle {
            app_id: event.app_id.clone(),
            device_id: event.device_id.clone(),
            version,
            creates_row,
        });
    }
    if effect.touch_device {
        writes.push(Write::SeenDevice(DeviceSeen {
            app_id: event.app_id.clone(),
            device_id: event.device_id.clone(),
            platform: stat.platform.clone(),
            plugin_version: event
                .plugin_version
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            native_version: stat.version_build.clone().unwrap_or_default(),
            version_name: event.version_name.clone(),
            custom_id: stat.details.custom_id.clone(),
            default_channel: stat.default_channel.clone(),
            is_prod: event.is_prod,
            is_emulator: event.is_emulator,
            seen_at_ms: at,
            // A stats event never creates a device's row: made-up ids would grow the store.
            creates_row: false,
        }));
    }
    writes
}

/// `/channel_self`: POST sets, PUT gets, GET lists, DELETE unsets (old plugins). Parameters come
/// from the JSON body, or from the query string (GET, and DELETE as the current Capgo reads it).
pub async fn channel_self(
    State(state): State<Arc<ServerState>>,
    method: Method,
    RawQuery(query): RawQuery,
    WholeBody(body): WholeBody,
) -> Response {
    state
        .metrics
        .channel_requests
        .get_or_create(&super::metrics::MethodLabels {
            method: method.as_str().to_owned(),
        })
        .inc();
    let object = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(decode::query_object(query.as_deref().unwrap_or("")))
    } else {
        decode::parse_object(&body)
    };
    let query = match object.and_then(|object| decode::decode_channel(&object)) {
        Ok(query) => query,
        Err(DecodeError { code, message }) => {
            return json_response(StatusCode::BAD_REQUEST, encode::plain_error(code, &message));
        }
    };
    if let Err(over) = state.rate_limits.check_app(&query.app_id) {
        return over.response(&state);
    }
    let served = state.served();
    let current_override = state
        .memory
        .facts(&query.app_id, &query.device_id)
        .self_set_channel;
    // The route takes these four methods only; anything else was answered 405 by the router.
    let operation = ChannelOperation::of_method(method.as_str()).unwrap_or(ChannelOperation::Unset);
    let current = current_override.as_deref();
    let decision = match operation {
        ChannelOperation::Set => channel_self::set_channel(&served.snapshot, &query),
        ChannelOperation::Get => channel_self::current_channel(&served.snapshot, &query, current),
        ChannelOperation::List => channel_self::list_channels(&served.snapshot, &query),
        ChannelOperation::Unset => channel_self::unset_channel(&served.snapshot, &query, current),
    };
    let change = decision.change.map(|change| match change {
        OverrideChange::Set(channel) => Write::SetChannelOverride {
            app_id: query.app_id.clone(),
            device_id: query.device_id.clone(),
            channel,
        },
        OverrideChange::Clear => Write::ClearChannelOverride {
            app_id: query.app_id.clone(),
            device_id: query.device_id.clone(),
        },
    });
    // A set or unset is answered once it is committed: another replica, or this one after a
    // crash, then serves the device the channel it was told it has.
    if let Some(unavailable) = commit(&state, change.into_iter().collect()).await {
        return unavailable;
    }
    let (status, body) = encode::channel_answer(
        &decision.outcome,
        &query.app_id,
        operation == ChannelOperation::Get,
    );
    json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body)
}

/// `GET /files/<app_id>/<key>`: bundle bytes from filesystem storage; for object storage, a
/// redirect to the key's public or presigned URL (the fallback of a URL not yet presigned).
pub async fn file(
    State(state): State<Arc<ServerState>>,
    Path((app_id, key)): Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    let served = state.served();
    let Some(storage) = served.storage.get(&app_id) else {
        return (StatusCode::NOT_FOUND, "no storage for this app\n").into_response();
    };
    if let Some(root) = &storage.local_root {
        return match files::resolve(root, &key) {
            Some(path) => files::serve(path, &key, request).await,
            None => (StatusCode::BAD_REQUEST, "invalid key\n").into_response(),
        };
    }
    match storage.redirect_url(&app_id, &key).await {
        Some(Ok(url)) => (
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, url),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response(),
        Some(Err(error)) => {
            tracing::warn!(%app_id, %error, "cannot presign a download URL");
            let status = if matches!(error, crate::storage::StorageError::InvalidKey(_)) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, format!("{error}\n")).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no storage for this app\n").into_response(),
    }
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 once a snapshot is served (also while degraded, saying so), else 503.
/// Degraded too while the device store cannot commit (update checks are still answered; `/stats`
/// and `/channel_self` get 503 until it can again), with the store's error as the reason.
pub async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    let store_failure = state.queue.store_failure();
    let device_store = json!({
        "status": if store_failure.is_some() { "failing" } else { "ok" },
        "reason": store_failure,
        "pending_writes": state.queue.pending(),
        "capacity": state.queue.capacity(),
        "writes_dropped": state.queue.dropped(),
        "writes_rejected": state.queue.rejected(),
    });
    match (state.health(), store_failure) {
        (SourceHealth::Starting, _) => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "starting"}))
        }
        (SourceHealth::Current, None) => json_response(
            StatusCode::OK,
            json!({"status": "ready", "device_store": device_store}),
        ),
        (SourceHealth::Current, Some(failure)) => json_response(
            StatusCode::OK,
            json!({"status": "degraded", "reason": format!("the device store cannot commit: {failure}"), "device_store": device_store}),
        ),
        (SourceHealth::Degraded(reason), _) => json_response(
            StatusCode::OK,
            json!({"status": "degraded", "serving": "last good snapshot", "reason": reason, "device_store": device_store}),
        ),
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    state.metrics.writes_dropped.set(state.queue.dropped() as i64);
    state.metrics.sightings_skipped.set(state.queue.skipped() as i64);
    state.metrics.writes_rejected.set(state.queue.rejected() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
