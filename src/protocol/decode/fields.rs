//! The field checks every endpoint shares: typed reads of one field, the identity of the device,
//! its platform and plugin version, and the recorded-only details.

use serde_json::{Map, Value};

use super::DecodeError;
use crate::api::app::Platform;

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
/// `/channel_self`, query strings) or the update check's own [`UpdateFields`](super::UpdateFields).
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
pub(super) fn optional_string<'a>(
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
pub(super) fn optional_bool(
    object: &(impl Fields + ?Sized),
    field: &str,
) -> Result<Option<bool>, DecodeError> {
    match object.field(field) {
        FieldRef::Missing => Ok(None),
        FieldRef::Bool(b) => Ok(Some(b)),
        FieldRef::Str("true") => Ok(Some(true)),
        FieldRef::Str("false") => Ok(Some(false)),
        FieldRef::Str(_) | FieldRef::Other => Err(DecodeError::body(format!("{field} must be a boolean"))),
    }
}

pub(super) fn non_empty(value: Option<&str>) -> Option<String> {
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

pub(super) fn platform(object: &(impl Fields + ?Sized)) -> Result<Platform, DecodeError> {
    match optional_string(object, "platform", 16)? {
        Some(name) => Platform::from_name(name)
            .ok_or_else(|| DecodeError::body(format!("platform {name:?} is not ios, android or electron"))),
        None => Err(DecodeError::body("platform is missing")),
    }
}

/// `plugin_version`: semver, 2.3.3 when absent (as Capgo assumes for very old plugins).
pub(super) fn plugin_version(object: &(impl Fields + ?Sized)) -> Result<semver::Version, DecodeError> {
    match optional_string(object, "plugin_version", 64)? {
        None | Some("") => Ok(semver::Version::new(2, 3, 3)),
        Some(raw) => semver::Version::parse(raw).map_err(|_| {
            DecodeError::new("semver_error", format!("plugin_version {raw:?} is not a version"))
        }),
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

pub(super) fn details(object: &(impl Fields + ?Sized)) -> Result<DeviceDetails, DecodeError> {
    Ok(DeviceDetails {
        custom_id: non_empty(optional_string(object, "custom_id", 36)?),
        version_code: non_empty(optional_string(object, "version_code", 64)?),
        version_os: non_empty(optional_string(object, "version_os", 64)?),
        install_source: non_empty(optional_string(object, "install_source", 64)?),
    })
}
