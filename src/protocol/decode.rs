//! Decoding the plugin's requests. Every failure is a [`DecodeError`] with the error code the
//! plugin and Capgo use, never a panic; unknown fields are ignored, as Capgo does.

use serde_json::{Map, Value};

use crate::{
    api::app::Platform,
    core::{
        channel_self::ChannelQuery,
        stats::{StatEvent, bundle_version_of},
        update::UpdateCheck,
        version::coerce_native_version,
    },
};

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The wire error code (`invalid_json_body`, `missing_app_id`, ...).
    pub code: &'static str,
    /// A sentence naming the field.
    pub message: String,
}

impl DecodeError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn body(message: impl Into<String>) -> Self {
        Self::new("invalid_json_body", message)
    }
}

/// Device details that do not take part in the decision but are recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceDetails {
    /// `custom_id`, when not empty.
    pub custom_id: Option<String>,
    /// `version_code`.
    pub version_code: Option<String>,
    /// `version_os`.
    pub version_os: Option<String>,
    /// `install_source`, when not empty.
    pub install_source: Option<String>,
}

/// A decoded update check.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// What the decision needs.
    pub check: UpdateCheck,
    /// What is only recorded.
    pub details: DeviceDetails,
}

/// Parses a JSON object body.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(DecodeError::body("The body must be a JSON object")),
        Err(e) => Err(DecodeError::new(
            "invalid_json_parse_body",
            format!("The body is not JSON: {e}"),
        )),
    }
}

/// An optional string field; any other JSON type is an error (`null` counts as absent).
fn optional_string<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<&'a str>, DecodeError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.as_str())),
        Some(Value::String(_)) => Err(DecodeError::body(format!(
            "{field} is longer than {max} characters"
        ))),
        Some(_) => Err(DecodeError::body(format!("{field} must be a string"))),
    }
}

/// An optional boolean field. Booleans sent as the strings "true"/"false" (query strings) are
/// accepted.
fn optional_bool(object: &Map<String, Value>, field: &str) -> Result<Option<bool>, DecodeError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(_) => Err(DecodeError::body(format!("{field} must be a boolean"))),
    }
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Whether an app id has the reverse-DNS form Capgo requires.
pub fn is_app_id(value: &str) -> bool {
    let mut parts = value.split('.');
    let first_ok = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    let rest: Vec<&str> = parts.collect();
    first_ok
        && !rest.is_empty()
        && rest.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        && value.len() <= 253
}

/// Whether a (lower-cased) device id is a UUID.
pub fn is_device_id(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| {
            group.len() == len
                && group
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The app id and the lower-cased device id, which every endpoint needs.
pub fn identity(object: &Map<String, Value>) -> Result<(String, String), DecodeError> {
    let app_id = optional_string(object, "app_id", 253)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DecodeError::new("missing_app_id", "app_id is missing"))?;
    if !is_app_id(app_id) {
        return Err(DecodeError::new(
            "invalid_app_id",
            format!("app_id {app_id:?} is not a reverse-DNS app id"),
        ));
    }
    let device_id = optional_string(object, "device_id", 36)
        .map_err(|_| DecodeError::new("invalid_device_id", "device_id must be a UUID string"))?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DecodeError::new("missing_device_id", "device_id is missing"))?
        .to_ascii_lowercase();
    if !is_device_id(&device_id) {
        return Err(DecodeError::new(
            "invalid_device_id",
            format!("device_id {device_id:?} is not a UUID"),
        ));
    }
    Ok((app_id.to_owned(), device_id))
}

fn platform(object: &Map<String, Value>) -> Result<Platform, DecodeError> {
    match optional_string(object, "platform", 16)? {
        Some("ios") => Ok(Platform::Ios),
        Some("android") => Ok(Platform::Android),
        Some("electron") => Ok(Platform::Electron),
        Some(other) => Err(DecodeError::body(format!(
            "platform {other:?} is not ios, android or electron"
        ))),
        None => Err(DecodeError::body("platform is missing")),
    }
}

/// `plugin_version`: semver, 2.3.3 when absent (as Capgo assumes for very old plugins).
fn plugin_version(object: &Map<String, Value>) -> Result<semver::Version, DecodeError> {
    match optional_string(object, "plugin_version", 64)? {
        None | Some("") => Ok(semver::Version::new(2, 3, 3)),
        Some(raw) => semver::Version::parse(raw).map_err(|_| {
            DecodeError::new("semver_error", format!("plugin_version {raw:?} is not a version"))
        }),
    }
}

/// Decodes the body of `POST /updates`.
pub fn decode_update(body: &[u8]) -> Result<UpdateRequest, DecodeError> {
    let object = parse_object(body)?;
    let (app_id, device_id) = identity(&object)?;
    let platform = platform(&object)?;
    let version_build = optional_string(&object, "version_build", 128)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DecodeError::new("missing_info", "version_build is missing"))?
        .to_owned();
    let version_name = optional_string(&object, "version_name", 128)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DecodeError::new("missing_info", "version_name is missing"))?;
    let on_builtin = version_name == "builtin";
    let version_name = if on_builtin {
        version_build.clone()
    } else {
        version_name.to_owned()
    };
    let check = UpdateCheck {
        app_id,
        device_id,
        platform,
        version_name,
        on_builtin,
        native_version: coerce_native_version(&version_build),
        version_build,
        plugin_version: plugin_version(&object)?,
        is_emulator: optional_bool(&object, "is_emulator")?.unwrap_or(false),
        is_prod: optional_bool(&object, "is_prod")?.unwrap_or(true),
        default_channel: non_empty(optional_string(&object, "defaultChannel", 253)?),
        key_id: non_empty(optional_string(&object, "key_id", 64)?),
    };
    Ok(UpdateRequest {
        check,
        details: details(&object)?,
    })
}

fn details(object: &Map<String, Value>) -> Result<DeviceDetails, DecodeError> {
    Ok(DeviceDetails {
        custom_id: non_empty(optional_string(object, "custom_id", 36)?),
        version_code: non_empty(optional_string(object, "version_code", 64)?),
        version_os: non_empty(optional_string(object, "version_os", 64)?),
        install_source: non_empty(optional_string(object, "install_source", 64)?),
    })
}

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
        Value::Array(items) if items.len() <= super::MAX_STATS_EVENTS => Ok(StatsBody {
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
            super::MAX_STATS_EVENTS,
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

/// Decodes a `/channel_self` request from a JSON object (the body, or the query string turned
/// into an object of strings).
pub fn decode_channel(object: &Map<String, Value>) -> Result<ChannelQuery, DecodeError> {
    let (app_id, device_id) = identity(object)?;
    Ok(ChannelQuery {
        app_id,
        device_id,
        platform: platform(object)?,
        channel: non_empty(optional_string(object, "channel", 253)?),
        default_channel: non_empty(optional_string(object, "defaultChannel", 253)?),
        plugin_version: plugin_version(object)?,
        is_emulator: optional_bool(object, "is_emulator")?.unwrap_or(false),
        is_prod: optional_bool(object, "is_prod")?.unwrap_or(true),
    })
}

/// A query string as a JSON object of strings (for `GET` and `DELETE` on `/channel_self`).
pub fn query_object(query: &str) -> Map<String, Value> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| (key.into_owned(), Value::String(value.into_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    fn valid() -> Value {
        json!({
            "platform": "android", "device_id": "6F0E2F2A-3B1C-4C55-9A7E-2D7F0C9B1A11", "app_id": "com.example.shop",
            "custom_id": "", "version_build": "1.4", "version_code": "140", "version_os": "14",
            "version_name": "builtin", "plugin_version": "8.51.14", "is_emulator": false, "is_prod": true,
            "defaultChannel": "", "key_id": "MIIBCgKCAQEAq1b2c3d4", "unknown_future_field": {"a": 1}
        })
    }

    #[test]
    fn a_valid_check_is_normalised() {
        let request = decode_update(&body(valid())).unwrap();
        let check = request.check;
        assert_eq!(check.device_id, "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11");
        assert!(check.on_builtin);
        assert_eq!(check.version_name, "1.4");
        assert_eq!(check.native_version, Some(semver::Version::new(1, 4, 0)));
        assert_eq!(check.default_channel, None);
        assert_eq!(check.key_id.as_deref(), Some("MIIBCgKCAQEAq1b2c3d4"));
        assert_eq!(request.details.custom_id, None);
        assert_eq!(request.details.version_os.as_deref(), Some("14"));
    }

    #[test]
    fn old_plugins_without_optional_fields_get_capgo_defaults() {
        let request = decode_update(&body(json!({
            "platform": "ios", "device_id": "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11", "app_id": "com.example.shop",
            "version_build": "1.0.0", "version_name": "1.0.1"
        })))
        .unwrap();
        assert_eq!(request.check.plugin_version, semver::Version::new(2, 3, 3));
        assert!(request.check.is_prod);
        assert!(!request.check.is_emulator);
    }

    #[test]
    fn bad_input_gets_the_protocol_error_codes() {
        let with = |patch: Value| {
            let mut v = valid();
            for (key, value) in patch.as_object().unwrap() {
                if value.is_null() {
                    v.as_object_mut().unwrap().remove(key);
                } else {
                    v[key] = value.clone();
                }
            }
            decode_update(&body(v)).unwrap_err().code
        };
        assert_eq!(
            decode_update(b"{not json").unwrap_err().code,
            "invalid_json_parse_body"
        );
        assert_eq!(decode_update(b"[1,2]").unwrap_err().code, "invalid_json_body");
        assert_eq!(decode_update(b"").unwrap_err().code, "invalid_json_parse_body");
        assert_eq!(with(json!({"app_id": null})), "missing_app_id");
        assert_eq!(with(json!({"app_id": "shop"})), "invalid_app_id");
        assert_eq!(with(json!({"app_id": 12})), "invalid_json_body");
        assert_eq!(with(json!({"device_id": null})), "missing_device_id");
        assert_eq!(with(json!({"device_id": "not-a-uuid"})), "invalid_device_id");
        assert_eq!(
            with(json!({"device_id": "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11-extra"})),
            "invalid_device_id"
        );
        assert_eq!(with(json!({"device_id": ["x"]})), "invalid_device_id");
        assert_eq!(with(json!({"platform": "windows"})), "invalid_json_body");
        assert_eq!(with(json!({"platform": null})), "invalid_json_body");
        assert_eq!(with(json!({"version_build": null})), "missing_info");
        assert_eq!(with(json!({"version_name": ""})), "missing_info");
        assert_eq!(with(json!({"plugin_version": "eight"})), "semver_error");
        assert_eq!(with(json!({"is_prod": "yes"})), "invalid_json_body");
        assert_eq!(with(json!({"custom_id": "x".repeat(37)})), "invalid_json_body");
        assert_eq!(with(json!({"key_id": 5})), "invalid_json_body");
    }

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

    #[test]
    fn query_strings_decode_with_escapes() {
        let object = query_object("app_id=com.example.shop&channel=beta%20one&is_prod=true&x=a+b");
        assert_eq!(object["channel"], "beta one");
        assert_eq!(object["x"], "a b");
        assert_eq!(optional_bool(&object, "is_prod").unwrap(), Some(true));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::String),
            prop_oneof![
                Just("app_id"),
                Just("device_id"),
                Just("builtin"),
                Just("com.example.shop")
            ]
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(3, 32, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("app_id".to_owned()),
                        Just("device_id".to_owned()),
                        Just("platform".to_owned()),
                        Just("version_name".to_owned()),
                        Just("version_build".to_owned()),
                        Just("plugin_version".to_owned()),
                        Just("is_prod".to_owned()),
                        Just("action".to_owned()),
                        ".{0,12}"
                    ],
                    inner,
                    0..10
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_update(&bytes);
            let _ = decode_stats(&bytes);
            if let Ok(object) = parse_object(&bytes) {
                let _ = decode_channel(&object);
            }
        }

        #[test]
        fn decoding_arbitrary_json_never_panics(value in arbitrary_json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            let _ = decode_update(&bytes);
            let _ = decode_stats(&bytes);
            if let Value::Object(object) = &value {
                let _ = decode_channel(object);
            }
        }

        #[test]
        fn a_valid_check_with_any_device_id_casing_decodes(upper in any::<bool>(), n in any::<u64>()) {
            let id = format!("{:08x}-3b1c-4c55-9a7e-{:012x}", n as u32, n & 0xffff_ffff_ffff);
            let id = if upper { id.to_ascii_uppercase() } else { id };
            let mut v = valid();
            v["device_id"] = json!(id);
            let check = decode_update(&body(v)).unwrap().check;
            prop_assert_eq!(check.device_id, id.to_ascii_lowercase());
        }
    }
}
