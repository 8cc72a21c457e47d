//! Decoding the plugin's requests. Every failure is a [`DecodeError`] with the error code the
//! plugin and Capgo use, never a panic; unknown fields are ignored, as Capgo does.

use std::{borrow::Cow, fmt};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
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
        Ok(_) => Err(not_an_object()),
        Err(e) => Err(not_json(&e)),
    }
}

fn not_an_object() -> DecodeError {
    DecodeError::body("The body must be a JSON object")
}

fn not_json(error: &serde_json::Error) -> DecodeError {
    DecodeError::new(
        "invalid_json_parse_body",
        format!("The body is not JSON: {error}"),
    )
}

/// One field of a request object as the checks below see it, whatever the body was decoded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRef<'s> {
    /// Absent, or `null`.
    Missing,
    /// A string.
    Str(&'s str),
    /// A boolean.
    Bool(bool),
    /// A number, an array or an object.
    Other,
}

/// A decoded JSON object whose fields the checks read by name: a `serde_json` map (stats,
/// `/channel_self`, query strings) or the update check's own [`UpdateFields`].
pub trait Fields {
    /// The field called `name`.
    fn field(&self, name: &str) -> FieldRef<'_>;
}

impl Fields for Map<String, Value> {
    fn field(&self, name: &str) -> FieldRef<'_> {
        match self.get(name) {
            None | Some(Value::Null) => FieldRef::Missing,
            Some(Value::String(s)) => FieldRef::Str(s),
            Some(Value::Bool(b)) => FieldRef::Bool(*b),
            Some(_) => FieldRef::Other,
        }
    }
}

/// An optional string field; any other JSON type is an error (`null` counts as absent).
fn optional_string<'a>(
    object: &'a (impl Fields + ?Sized),
    field: &str,
    max: usize,
) -> Result<Option<&'a str>, DecodeError> {
    match object.field(field) {
        FieldRef::Missing => Ok(None),
        // A string of at most `max` bytes has at most `max` characters: count only longer ones.
        FieldRef::Str(s) if s.len() <= max || s.chars().count() <= max => Ok(Some(s)),
        FieldRef::Str(_) => Err(DecodeError::body(format!(
            "{field} is longer than {max} characters"
        ))),
        FieldRef::Bool(_) | FieldRef::Other => Err(DecodeError::body(format!("{field} must be a string"))),
    }
}

/// An optional boolean field. Booleans sent as the strings "true"/"false" (query strings) are
/// accepted.
fn optional_bool(object: &(impl Fields + ?Sized), field: &str) -> Result<Option<bool>, DecodeError> {
    match object.field(field) {
        FieldRef::Missing => Ok(None),
        FieldRef::Bool(b) => Ok(Some(b)),
        FieldRef::Str("true") => Ok(Some(true)),
        FieldRef::Str("false") => Ok(Some(false)),
        FieldRef::Str(_) | FieldRef::Other => Err(DecodeError::body(format!("{field} must be a boolean"))),
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
pub fn identity(object: &(impl Fields + ?Sized)) -> Result<(String, String), DecodeError> {
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

fn platform(object: &(impl Fields + ?Sized)) -> Result<Platform, DecodeError> {
    match optional_string(object, "platform", 16)? {
        Some(name) => Platform::from_name(name)
            .ok_or_else(|| DecodeError::body(format!("platform {name:?} is not ios, android or electron"))),
        None => Err(DecodeError::body("platform is missing")),
    }
}

/// `plugin_version`: semver, 2.3.3 when absent (as Capgo assumes for very old plugins).
fn plugin_version(object: &(impl Fields + ?Sized)) -> Result<semver::Version, DecodeError> {
    match optional_string(object, "plugin_version", 64)? {
        None | Some("") => Ok(semver::Version::new(2, 3, 3)),
        Some(raw) => semver::Version::parse(raw).map_err(|_| {
            DecodeError::new("semver_error", format!("plugin_version {raw:?} is not a version"))
        }),
    }
}

/// Decodes the body of `POST /updates`.
///
/// The body is read straight into [`UpdateFields`] (borrowed strings, unknown fields skipped),
/// not into a `serde_json::Value`; the answers are those of [`decode_update_object`] on the
/// same body parsed as a map, error for error (a property test holds the two together).
pub fn decode_update(body: &[u8]) -> Result<UpdateRequest, DecodeError> {
    match serde_json::from_slice::<UpdateBody<'_>>(body) {
        Ok(UpdateBody(Some(fields))) => decode_update_object(&fields),
        Ok(UpdateBody(None)) => Err(not_an_object()),
        Err(e) => Err(not_json(&e)),
    }
}

/// Decodes an update check from its fields (see [`decode_update`]).
pub fn decode_update_object(object: &(impl Fields + ?Sized)) -> Result<UpdateRequest, DecodeError> {
    let (app_id, device_id) = identity(object)?;
    let platform = platform(object)?;
    let version_build = optional_string(object, "version_build", 128)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DecodeError::new("missing_info", "version_build is missing"))?
        .to_owned();
    let version_name = optional_string(object, "version_name", 128)?
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
        plugin_version: plugin_version(object)?,
        is_emulator: optional_bool(object, "is_emulator")?.unwrap_or(false),
        is_prod: optional_bool(object, "is_prod")?.unwrap_or(true),
        default_channel: non_empty(optional_string(object, "defaultChannel", 253)?),
        key_id: non_empty(optional_string(object, "key_id", 64)?),
    };
    Ok(UpdateRequest {
        check,
        details: details(object)?,
    })
}

fn details(object: &(impl Fields + ?Sized)) -> Result<DeviceDetails, DecodeError> {
    Ok(DeviceDetails {
        custom_id: non_empty(optional_string(object, "custom_id", 36)?),
        version_code: non_empty(optional_string(object, "version_code", 64)?),
        version_os: non_empty(optional_string(object, "version_os", 64)?),
        install_source: non_empty(optional_string(object, "install_source", 64)?),
    })
}

/// The fields of an update check, as the body holds them: strings borrowed from the body when
/// they have no escapes. Fields the update check does not read are skipped (but still parsed,
/// so a body is valid JSON exactly when `serde_json::Value` would take it).
#[derive(Debug, Default)]
pub struct UpdateFields<'a> {
    slots: [Slot<'a>; UPDATE_FIELDS.len()],
}

/// The fields [`decode_update_object`] reads, in the order of [`UpdateFields`]'s slots.
const UPDATE_FIELDS: [&str; 14] = [
    "app_id",
    "device_id",
    "platform",
    "version_build",
    "version_name",
    "plugin_version",
    "is_emulator",
    "is_prod",
    "defaultChannel",
    "key_id",
    "custom_id",
    "version_code",
    "version_os",
    "install_source",
];

impl Fields for UpdateFields<'_> {
    fn field(&self, name: &str) -> FieldRef<'_> {
        match UPDATE_FIELDS.iter().position(|known| *known == name) {
            Some(index) => self.slots[index].as_ref(),
            None => FieldRef::Missing,
        }
    }
}

/// One field's value; the last of duplicate keys wins, as in a `serde_json::Map`.
#[derive(Debug, Default)]
enum Slot<'a> {
    #[default]
    Missing,
    Str(Cow<'a, str>),
    Bool(bool),
    Other,
}

impl Slot<'_> {
    fn as_ref(&self) -> FieldRef<'_> {
        match self {
            Slot::Missing => FieldRef::Missing,
            Slot::Str(s) => FieldRef::Str(s),
            Slot::Bool(b) => FieldRef::Bool(*b),
            Slot::Other => FieldRef::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Slot<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SlotVisitor;
        impl<'de> Visitor<'de> for SlotVisitor {
            type Value = Slot<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Slot::Missing)
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(Slot::Bool(value))
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Slot::Str(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Slot::Str(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(Slot::Str(Cow::Owned(value)))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Slot::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Slot::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Slot::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Slot::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| Slot::Other)
            }
        }
        deserializer.deserialize_any(SlotVisitor)
    }
}

/// Any JSON value, parsed and dropped. Unlike [`serde::de::IgnoredAny`] it goes through
/// `deserialize_any`, so numbers out of range and invalid UTF-8 are refused as a
/// `serde_json::Value` would refuse them.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkipVisitor;
        impl<'de> Visitor<'de> for SkipVisitor {
            type Value = Skip;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Skip, A::Error> {
                skip_seq(seq).map(|()| Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Skip, A::Error> {
                skip_map(map).map(|()| Skip)
            }
        }
        deserializer.deserialize_any(SkipVisitor)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_key::<Skip>()?.is_some() {
        map.next_value::<Skip>()?;
    }
    Ok(())
}

/// A key of the update check's object: the index of a field it reads, or None.
struct FieldKey(Option<usize>);

impl<'de> Deserialize<'de> for FieldKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = FieldKey;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<FieldKey, E> {
                Ok(FieldKey(UPDATE_FIELDS.iter().position(|known| *known == key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// An update-check body: its fields, or None when it is JSON but not an object.
struct UpdateBody<'a>(Option<UpdateFields<'a>>);

impl<'de> Deserialize<'de> for UpdateBody<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = UpdateBody<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = UpdateFields::default();
                while let Some(FieldKey(index)) = map.next_key()? {
                    match index {
                        Some(index) => fields.slots[index] = map.next_value()?,
                        None => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(UpdateBody(Some(fields)))
            }
            // Valid JSON that is not an object is read to its end (it must still be JSON).
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| UpdateBody(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(UpdateBody(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(UpdateBody(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(UpdateBody(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(UpdateBody(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(UpdateBody(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(UpdateBody(None))
            }
        }
        deserializer.deserialize_any(BodyVisitor)
    }
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

    /// The update check decoded through a `serde_json::Map`: what [`decode_update`] must answer.
    fn decode_update_via_map(body: &[u8]) -> Result<UpdateRequest, DecodeError> {
        parse_object(body).and_then(|object| decode_update_object(&object))
    }

    #[test]
    fn the_typed_decoder_answers_as_the_map_decoder_on_tricky_bodies() {
        let valid = String::from_utf8(body(valid())).unwrap();
        let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let cases: Vec<Vec<u8>> = vec![
            // The last of duplicate keys wins.
            valid
                .replacen('{', r#"{"app_id":"com.other.app","#, 1)
                .into_bytes(),
            valid.replacen('{', r#"{"platform":"windows","#, 1).into_bytes(),
            format!(r#"{},"platform":7}}"#, valid.trim_end_matches('}')).into_bytes(),
            // Escapes in keys and values.
            valid.replace(r#""app_id""#, r#""app\u005fid""#).into_bytes(),
            valid
                .replace("com.example.shop", r#"com.example.sh\u006fp"#)
                .into_bytes(),
            // Unknown fields must still be valid JSON, numbers in range, strings UTF-8.
            valid.replacen('{', r#"{"x":1e400,"#, 1).into_bytes(),
            valid
                .replacen('{', &format!(r#"{{"x":{nested},"#), 1)
                .into_bytes(),
            [&b"{\"x\":\""[..], b"\xff\xfe", b"\",", &valid.as_bytes()[1..]].concat(),
            valid
                .replacen('{', r#"{"x":[1,{"y":[true,null,"\ud800"]}],"#, 1)
                .into_bytes(),
            // Not objects, trailing data, nothing.
            b"[1, 2, {\"a\": [null]}]".to_vec(),
            b"\"text\"".to_vec(),
            b"null".to_vec(),
            b"12".to_vec(),
            b"[1, 2".to_vec(),
            format!("{valid} {{}}").into_bytes(),
            format!("  {valid}\n").into_bytes(),
            b"".to_vec(),
            b"{}".to_vec(),
            // A field of every type.
            valid
                .replace(r#""is_prod":true"#, r#""is_prod":{"a":1}"#)
                .into_bytes(),
            valid
                .replace(r#""is_prod":true"#, r#""is_prod":"false""#)
                .into_bytes(),
            valid
                .replace(r#""is_prod":true"#, r#""is_prod":null"#)
                .into_bytes(),
            valid
                .replace(r#""key_id":"MIIBCgKCAQEAq1b2c3d4""#, r#""key_id":[]"#)
                .into_bytes(),
        ];
        for case in cases {
            let typed = decode_update(&case);
            assert_eq!(
                typed,
                decode_update_via_map(&case),
                "{}",
                String::from_utf8_lossy(&case)
            );
        }
        let last_wins = valid.replacen('{', r#"{"app_id":"com.other.app","#, 1);
        assert_eq!(
            decode_update(last_wins.as_bytes()).unwrap().check.app_id,
            "com.example.shop"
        );
        assert_eq!(
            decode_update(valid.replacen('{', r#"{"x":1e400,"#, 1).as_bytes())
                .unwrap_err()
                .code,
            "invalid_json_parse_body"
        );
    }

    /// JSON text of an object from (key, value) pairs, keys possibly repeated or escaped.
    fn object_text(pairs: &[(String, Value)]) -> String {
        let members: Vec<String> = pairs
            .iter()
            .map(|(key, value)| format!("{}:{}", serde_json::to_string(key).unwrap(), value))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(UPDATE_FIELDS.to_vec()).prop_map(str::to_owned),
            Just("unknown".to_owned()),
            ".{0,8}",
        ]
    }

    fn field_value() -> impl Strategy<Value = Value> {
        let base = valid();
        let samples: Vec<Value> = base.as_object().unwrap().values().cloned().collect();
        prop_oneof![
            prop::sample::select(samples),
            arbitrary_json(),
            Just(json!("true")),
            Just(json!("x".repeat(300))),
            Just(json!("é".repeat(40))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn the_typed_decoder_answers_as_the_map_decoder(value in arbitrary_json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            prop_assert_eq!(decode_update(&bytes), decode_update_via_map(&bytes));
        }

        #[test]
        fn the_typed_decoder_answers_as_the_map_decoder_on_near_valid_objects(
            overrides in prop::collection::vec((field_name(), field_value()), 0..6),
            drop_mask in any::<u16>(),
        ) {
            let mut pairs: Vec<(String, Value)> = valid()
                .as_object()
                .unwrap()
                .iter()
                .enumerate()
                .filter(|(i, _)| drop_mask & (1 << i) == 0 || drop_mask % 3 == 0)
                .map(|(_, (k, v))| (k.clone(), v.clone()))
                .collect();
            pairs.extend(overrides);
            let text = object_text(&pairs);
            prop_assert_eq!(decode_update(text.as_bytes()), decode_update_via_map(text.as_bytes()), "{}", text);
        }

        #[test]
        fn the_typed_decoder_answers_as_the_map_decoder_on_damaged_bytes(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..4),
        ) {
            let mut bytes = body(valid());
            for (at, op, byte) in edits {
                let at = at.index(bytes.len() + 1);
                match op {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => bytes.push(byte),
                }
            }
            prop_assert_eq!(decode_update(&bytes), decode_update_via_map(&bytes));
        }

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
