//! `/channel_self`: a device sets, reads, lists or forgets its channel.

use serde_json::{Map, Value};

use super::{
    DecodeError,
    fields::{identity, non_empty, optional_bool, optional_string, platform, plugin_version},
};
use crate::core::channel_self::ChannelQuery;

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
    use super::{super::fields::optional_bool, *};

    #[test]
    fn query_strings_decode_with_escapes() {
        let object = query_object("app_id=com.example.shop&channel=beta%20one&is_prod=true&x=a+b");
        assert_eq!(object["channel"], "beta one");
        assert_eq!(object["x"], "a b");
        assert_eq!(optional_bool(&object, "is_prod").unwrap(), Some(true));
    }
}
