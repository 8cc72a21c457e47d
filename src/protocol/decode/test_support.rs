//! Request bodies the decoders' tests share.

use proptest::prelude::*;
use serde_json::{Value, json};

pub(super) fn body(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

pub(super) fn valid() -> Value {
    json!({
        "platform": "android", "device_id": "6F0E2F2A-3B1C-4C55-9A7E-2D7F0C9B1A11", "app_id": "com.example.shop",
        "custom_id": "", "version_build": "1.4", "version_code": "140", "version_os": "14",
        "version_name": "builtin", "plugin_version": "8.51.14", "is_emulator": false, "is_prod": true,
        "defaultChannel": "", "key_id": "MIIBCgKCAQEAq1b2c3d4", "unknown_future_field": {"a": 1}
    })
}

pub(super) fn arbitrary_json() -> impl Strategy<Value = Value> {
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
