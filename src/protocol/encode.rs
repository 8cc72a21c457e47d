//! Encoding answers the way every plugin version reads them.

use serde::Serialize;
use serde_json::{Value, json, value::RawValue};

use super::decode::DecodeError;
use crate::core::{
    channel_self::ChannelOutcome,
    snapshot::{AppView, BundleView, ManifestFile},
    update::{AnswerKind, NoUpdate, UpdateAnswer},
};

/// Where devices download a bundle's zip and its files (the storage layer decides: server
/// URLs, presigned URLs or a CDN).
pub trait BundleUrls {
    /// URL of the full zip.
    fn zip_url(&self, app: &AppView, bundle: &BundleView) -> String;
    /// URL of one content-addressed file.
    fn file_url(&self, app: &AppView, file: &ManifestFile) -> String;
}

/// The delta manifest of a bundle as the JSON array the plugin reads. The update server renders
/// it once per snapshot (it is the bulk of an offer) and splices it into each answer.
pub fn manifest_json(app: &AppView, files: &[ManifestFile], urls: &dyn BundleUrls) -> Option<Box<RawValue>> {
    #[derive(Serialize)]
    struct Entry<'a> {
        file_name: &'a str,
        file_hash: &'a str,
        download_url: String,
    }
    let entries: Vec<Entry<'_>> = files
        .iter()
        .map(|file| Entry {
            file_name: &file.file_name,
            file_hash: &file.file_hash,
            download_url: urls.file_url(app, file),
        })
        .collect();
    // Serializing plain strings cannot fail; if it ever did, the offer goes without a manifest
    // (the full zip still works), never with a broken one.
    serde_json::value::to_raw_value(&entries).ok()
}

/// An offer as the plugin reads it: never `error`, `kind` or `message` (clients read any of them
/// as "no update").
#[derive(Serialize)]
struct OfferBody<'a> {
    version: &'a str,
    url: String,
    session_key: &'a str,
    checksum: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
}

/// A no-update answer as every plugin generation reads it (see [`error_body`]); keys in the
/// order a `serde_json::Value` writes them.
#[derive(Serialize)]
struct RefusalBody<'a> {
    error: &'a str,
    kind: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    major: bool,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
}

impl<'a> RefusalBody<'a> {
    fn new(code: &'a str, message: &'a str, kind: AnswerKind) -> Self {
        RefusalBody {
            error: code,
            kind: kind.as_str(),
            major: false,
            message,
            old: None,
            version: None,
        }
    }
}

/// Serializes an answer into a buffer of `capacity` bytes to start with.
fn to_bytes(body: &impl Serialize, capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(capacity);
    // Serializing strings, booleans and raw JSON into a Vec cannot fail; if it ever did, the
    // answer would be empty (the plugin reads that as "no update"), never a panic.
    if serde_json::to_writer(&mut bytes, body).is_err() {
        bytes.clear();
    }
    bytes
}

/// The JSON answer to an update check, serialized. An offer never carries `error`, `kind` or
/// `message`; a refusal always carries all three. `manifest` is the bundle's pre-rendered
/// manifest (rendered here when absent).
pub fn update_answer(
    answer: &UpdateAnswer,
    app: &AppView,
    urls: &dyn BundleUrls,
    manifest: Option<&RawValue>,
) -> Vec<u8> {
    match answer {
        UpdateAnswer::Offer(offer) => {
            let bundle = &offer.bundle;
            let rendered;
            let manifest = match (offer.with_manifest, &bundle.manifest, manifest) {
                (true, _, Some(manifest)) => Some(manifest),
                (true, Some(files), None) => {
                    rendered = manifest_json(app, files, urls);
                    rendered.as_deref()
                }
                _ => None,
            };
            let body = OfferBody {
                version: &bundle.version,
                url: urls.zip_url(app, bundle),
                session_key: &offer.session_key,
                checksum: &offer.checksum,
                manifest,
                link: bundle.link.as_deref().filter(|_| offer.with_metadata),
                comment: bundle.comment.as_deref().filter(|_| offer.with_metadata),
            };
            // The fixed part of an offer is well under 512 bytes; the manifest is most of the rest.
            to_bytes(&body, 512 + manifest.map_or(0, |m| m.get().len()))
        }
        UpdateAnswer::RevertToBuiltin { .. } => br#"{"version":"builtin"}"#.to_vec(),
        UpdateAnswer::NoUpdate(no) => refusal_bytes(no),
    }
}

fn refusal_bytes(no: &NoUpdate) -> Vec<u8> {
    let body = RefusalBody {
        major: no.major,
        old: no.old.as_deref(),
        version: no.version.as_deref(),
        ..RefusalBody::new(no.refusal.code(), &no.message, no.refusal.kind())
    };
    to_bytes(&body, 128 + no.message.len())
}

/// `{error, message, kind}`: what every plugin generation reads as "no update" (≤ 7.0 on
/// `message`, later ones on `error`, 8.45.11+ on `kind`).
pub fn error_body(code: &str, message: &str, kind: AnswerKind) -> Value {
    json!({"error": code, "message": message, "kind": kind.as_str()})
}

/// The update-check answer for a request that could not be decoded, serialized.
pub fn update_decode_error(error: &DecodeError) -> Vec<u8> {
    to_bytes(
        &RefusalBody::new(error.code, &error.message, AnswerKind::Failed),
        128 + error.message.len(),
    )
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

/// The answer when the app is unknown (no App to build URLs from: it is always a refusal),
/// serialized.
pub fn update_answer_without_app(answer: &UpdateAnswer) -> Vec<u8> {
    match answer {
        UpdateAnswer::NoUpdate(no) => refusal_bytes(no),
        _ => to_bytes(
            &RefusalBody::new("unknown_app", "No such app is served here", AnswerKind::Failed),
            128,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::update::Refusal;

    fn no_update(major: bool, old: Option<&str>, version: Option<&str>) -> NoUpdate {
        NoUpdate {
            refusal: Refusal::DisableAutoUpdateToMajor,
            message: "Cannot upgrade major version \"2.0.0\" \u{e9}".into(),
            version: version.map(str::to_owned),
            old: old.map(str::to_owned),
            major,
            channel: Some("production".into()),
        }
    }

    #[test]
    fn refusals_are_written_as_a_json_value_writes_them() {
        for (major, old, version) in [
            (false, None, None),
            (true, Some("1.0.0"), Some("2.0.0")),
            (false, Some("1.0.0"), None),
            (true, None, Some("2.0.0")),
        ] {
            let no = no_update(major, old, version);
            let mut expected = error_body(no.refusal.code(), &no.message, no.refusal.kind());
            if let Some(version) = version {
                expected["version"] = json!(version);
            }
            if let Some(old) = old {
                expected["old"] = json!(old);
            }
            if major {
                expected["major"] = json!(true);
            }
            let expected = serde_json::to_vec(&expected).unwrap();
            assert_eq!(
                String::from_utf8(refusal_bytes(&no)).unwrap(),
                String::from_utf8(expected.clone()).unwrap()
            );
            assert_eq!(update_answer_without_app(&UpdateAnswer::NoUpdate(no)), expected);
        }
        let error = DecodeError {
            code: "missing_app_id",
            message: "app_id is missing".into(),
        };
        assert_eq!(
            update_decode_error(&error),
            serde_json::to_vec(&error_body(error.code, &error.message, AnswerKind::Failed)).unwrap()
        );
    }
}
