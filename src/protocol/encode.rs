//! Encoding answers the way every plugin version reads them.

use serde_json::{Map, Value, json};

use super::decode::DecodeError;
use crate::core::{
    channel_self::ChannelOutcome,
    snapshot::{AppView, BundleView, ManifestFile},
    update::{AnswerKind, UpdateAnswer},
};

/// Where devices download a bundle's zip and its files (the storage layer decides: server
/// URLs, presigned URLs or a CDN).
pub trait BundleUrls {
    /// URL of the full zip.
    fn zip_url(&self, app: &AppView, bundle: &BundleView) -> String;
    /// URL of one content-addressed file.
    fn file_url(&self, app: &AppView, file: &ManifestFile) -> String;
}

/// The JSON answer to an update check. An offer never carries `error`, `kind` or `message`
/// (clients read any of them as "no update"); a refusal always carries all three.
pub fn update_answer(answer: &UpdateAnswer, app: &AppView, urls: &dyn BundleUrls) -> Value {
    match answer {
        UpdateAnswer::Offer(offer) => {
            let bundle = &offer.bundle;
            let mut body = Map::new();
            body.insert("version".into(), json!(bundle.version));
            body.insert("url".into(), json!(urls.zip_url(app, bundle)));
            body.insert("session_key".into(), json!(offer.session_key));
            body.insert("checksum".into(), json!(offer.checksum));
            if offer.with_manifest
                && let Some(files) = &bundle.manifest
            {
                let manifest: Vec<Value> = files
                    .iter()
                    .map(|file| {
                        json!({"file_name": file.file_name, "file_hash": file.file_hash, "download_url": urls.file_url(app, file)})
                    })
                    .collect();
                body.insert("manifest".into(), Value::Array(manifest));
            }
            if offer.with_metadata {
                if let Some(link) = &bundle.link {
                    body.insert("link".into(), json!(link));
                }
                if let Some(comment) = &bundle.comment {
                    body.insert("comment".into(), json!(comment));
                }
            }
            Value::Object(body)
        }
        UpdateAnswer::RevertToBuiltin { .. } => json!({"version": "builtin"}),
        UpdateAnswer::NoUpdate(no) => {
            let mut body = error_body(no.refusal.code(), &no.message, no.refusal.kind());
            if let Some(version) = &no.version {
                body["version"] = json!(version);
            }
            if let Some(old) = &no.old {
                body["old"] = json!(old);
            }
            if no.major {
                body["major"] = json!(true);
            }
            body
        }
    }
}

/// `{error, message, kind}`: what every plugin generation reads as "no update" (≤ 7.0 on
/// `message`, later ones on `error`, 8.45.11+ on `kind`).
pub fn error_body(code: &str, message: &str, kind: AnswerKind) -> Value {
    json!({"error": code, "message": message, "kind": kind.as_str()})
}

/// The update-check answer for a request that could not be decoded.
pub fn update_decode_error(error: &DecodeError) -> Value {
    error_body(error.code, &error.message, AnswerKind::Failed)
}

/// `{error, message}` for `/stats` and `/channel_self` errors.
pub fn plain_error(code: &str, message: &str) -> Value {
    json!({"error": code, "message": message})
}

/// The HTTP status and JSON answer of a `/channel_self` request.
pub fn channel_answer(outcome: &ChannelOutcome, app_id: &str, get_request: bool) -> (u16, Value) {
    match outcome {
        ChannelOutcome::SetOk => (200, json!({"status": "ok", "allowSet": true})),
        ChannelOutcome::UnsetOk => (200, json!({"status": "ok"})),
        ChannelOutcome::Current { channel, overridden, allow_set } => (
            200,
            json!({"channel": channel, "status": if *overridden { "override" } else { "default" }, "allowSet": allow_set}),
        ),
        ChannelOutcome::List(channels) => (
            200,
            Value::Array(
                channels
                    .iter()
                    .map(|c| json!({"id": c.id, "name": c.name, "public": c.public, "allow_self_set": c.allow_self_set}))
                    .collect(),
            ),
        ),
        ChannelOutcome::Refused { code, message, channel } => {
            let mut body = plain_error(code, message);
            if let Some(channel) = channel {
                body["channel"] = json!(channel);
                body["app_id"] = json!(app_id);
            }
            // A get that finds no channel answers 400: the plugin then falls back to the channel
            // it keeps locally.
            let status = if get_request && *code == "channel_not_found" { 400 } else { 200 };
            (status, body)
        }
    }
}

/// The answer when the app is unknown (no App to build URLs from: it is always a refusal).
pub fn update_answer_without_app(answer: &UpdateAnswer) -> Value {
    match answer {
        UpdateAnswer::NoUpdate(no) => error_body(no.refusal.code(), &no.message, no.refusal.kind()),
        _ => error_body("unknown_app", "No such app is served here", AnswerKind::Failed),
    }
}
