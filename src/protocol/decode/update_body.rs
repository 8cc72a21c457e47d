//! The update check's body read straight into its fields (see [`super::decode_update`]).

use std::{borrow::Cow, fmt};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::fields::{FieldRef, Fields};

/// The fields of an update check, as the body holds them: strings borrowed from the body when
/// they have no escapes. Fields the update check does not read are skipped (but still parsed,
/// so a body is valid JSON exactly when `serde_json::Value` would take it).
#[derive(Debug, Default)]
pub struct UpdateFields<'a> {
    slots: [Slot<'a>; UPDATE_FIELDS.len()],
}

/// The fields [`decode_update_object`](super::decode_update_object) reads, in the order of [`UpdateFields`]'s slots.
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
pub(super) struct UpdateBody<'a>(pub(super) Option<UpdateFields<'a>>);

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{
        super::{
            DecodeError, UpdateRequest, decode_update, decode_update_object, parse_object,
            test_support::{arbitrary_json, body, valid},
        },
        *,
    };

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
    }
}
