//! `POST /stats`: one event or a batch of them.

use serde_json::{Map, Value};

use super::{
    DecodeError,
    fields::{DeviceDetails, details, identity, non_empty, optional_bool, optional_string},
};
use crate::{
    core::stats::{StatEvent, bundle_version_of},
    protocol::MAX_STATS_EVENTS,
};

/// One decoded stats event with the device fields it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsEvent {
    /// The event.
    pub event: StatEvent,
    /// `platform` as sent (stats accept any string).
    pub platform: String,
    /// `version_build`, when sent.
    pub version_build: Option<String>,
    /// `defaultChannel`, when not empty.
    pub default_channel: Option<String>,
    /// `timestamp` (epoch ms) of batched events.
    pub timestamp_ms: Option<i64>,
    /// Recorded-only details.
    pub details: DeviceDetails,
}

/// A stats body: one event or a batch; each event decodes (or fails) on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsBody {
    /// Whether the body was an array (the answer then lists a result per event).
    pub batch: bool,
    /// The events, in order.
    pub events: Vec<Result<StatsEvent, DecodeError>>,
}

/// Decodes the body of `POST /stats`: a single object or an array of them.
pub fn decode_stats(body: &[u8]) -> Result<StatsBody, DecodeError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| DecodeError::new("invalid_json_parse_body", format!("The body is not JSON: {e}")))?;
    match value {
        Value::Object(object) => Ok(StatsBody {
            batch: false,
            events: vec![decode_stat(&object)],
        }),
        Value::Array(items) if items.len() <= MAX_STATS_EVENTS => Ok(StatsBody {
            batch: true,
            events: items
                .iter()
                .map(|item| match item {
                    Value::Object(object) => decode_stat(object),
                    _ => Err(DecodeError::body("Each event must be a JSON object")),
                })
                .collect(),
        }),
        Value::Array(items) => Err(DecodeError::body(format!(
            "A batch holds at most {} events, not {}",
            MAX_STATS_EVENTS,
            items.len()
        ))),
        _ => Err(DecodeError::body(
            "The body must be an event object or an array of them",
        )),
    }
}

fn decode_stat(object: &Map<String, Value>) -> Result<StatsEvent, DecodeError> {
    let (app_id, device_id) = identity(object)?;
    let action = optional_string(object, "action", 128)?
        .unwrap_or_default()
        .to_owned();
    let version_name = optional_string(object, "version_name", 512)?.unwrap_or_default();
    let timestamp_ms = match object.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(_) => return Err(DecodeError::body("timestamp must be a number")),
    };
    Ok(StatsEvent {
        event: StatEvent {
            app_id,
            device_id,
            action,
            version_name: bundle_version_of(version_name).to_owned(),
            old_version_name: non_empty(optional_string(object, "old_version_name", 512)?),
            plugin_version: optional_string(object, "plugin_version", 64)?
                .and_then(|v| semver::Version::parse(v).ok()),
            is_prod: optional_bool(object, "is_prod")?.unwrap_or(true),
            is_emulator: optional_bool(object, "is_emulator")?.unwrap_or(false),
        },
        platform: optional_string(object, "platform", 16)?
            .unwrap_or_default()
            .to_owned(),
        version_build: non_empty(optional_string(object, "version_build", 128)?),
        default_channel: non_empty(optional_string(object, "defaultChannel", 253)?),
        timestamp_ms,
        details: details(object)?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{super::test_support::body, *};

    #[test]
    fn stats_accept_single_objects_batches_and_bad_events_one_by_one() {
        let event = json!({"app_id": "com.example.shop", "device_id": "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11",
            "platform": "android", "action": "download_manifest_file_fail", "version_name": "1.5.0:assets/a.js",
            "version_os": "14", "is_emulator": false, "is_prod": true, "timestamp": 1767225600000u64});
        let single = decode_stats(&body(event.clone())).unwrap();
        assert!(!single.batch);
        let decoded = single.events[0].as_ref().unwrap();
        assert_eq!(decoded.event.version_name, "1.5.0");
        assert_eq!(decoded.timestamp_ms, Some(1_767_225_600_000));
        let batch = decode_stats(&body(json!([event, {"app_id": "com.example.shop"}, 7]))).unwrap();
        assert!(batch.batch);
        assert!(batch.events[0].is_ok());
        assert_eq!(batch.events[1].as_ref().unwrap_err().code, "missing_device_id");
        assert_eq!(batch.events[2].as_ref().unwrap_err().code, "invalid_json_body");
        assert!(decode_stats(b"\"text\"").is_err());
        let too_many = Value::Array(vec![json!({}); crate::protocol::MAX_STATS_EVENTS + 1]);
        assert_eq!(
            decode_stats(&body(too_many)).unwrap_err().code,
            "invalid_json_body"
        );
    }
}
