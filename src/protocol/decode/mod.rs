//! Decoding the plugin's requests. Every failure is a [`DecodeError`] with the error code the
//! plugin and Capgo use, never a panic; unknown fields are ignored, as Capgo does.
//!
//! One file per endpoint (`updates`, `stats`, `channel_self`), the field checks they share in
//! `fields`, and the update check's borrowing body reader in `update_body`.

use serde_json::{Map, Value};

mod channel_self;
mod fields;
mod stats;
mod update_body;
mod updates;

#[cfg(test)]
mod test_support;

pub use channel_self::{decode_channel, query_object};
pub use fields::{DeviceDetails, FieldRef, Fields, identity, is_app_id, is_device_id};
pub use stats::{StatsBody, StatsEvent, decode_stats};
pub use update_body::UpdateFields;
pub use updates::{UpdateRequest, decode_update, decode_update_object};

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{test_support::arbitrary_json, *};

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
    }
}
