//! Every request in tests/fixtures/plugin (shaped exactly as plugin versions 5.x to 8.x send
//! them) decodes, with the normalisations the protocol note prescribes.

use std::path::PathBuf;

use ota_operator::protocol::decode::{
    decode_channel, decode_stats, decode_update, parse_object, query_object,
};
use serde_json::Value;

fn fixtures(prefix: &str) -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plugin");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("the fixtures folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&text).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_update_check_decodes_and_normalises() {
    let all = fixtures("updates-");
    assert!(all.len() >= 15, "{} update fixtures", all.len());
    for (name, fixture) in all {
        let body = serde_json::to_vec(&fixture["body"]).unwrap();
        let request = decode_update(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let check = &request.check;
        assert_eq!(check.device_id, check.device_id.to_ascii_lowercase(), "{name}");
        assert_eq!(
            check.plugin_version.to_string(),
            fixture["body"]["plugin_version"].as_str().unwrap(),
            "{name}"
        );
        assert!(
            check.native_version.is_some(),
            "{name}: version_build should read as semver"
        );
        let sent_name = fixture["body"]["version_name"].as_str().unwrap();
        if sent_name == "builtin" {
            assert!(check.on_builtin, "{name}");
            assert_eq!(
                check.version_name, check.version_build,
                "{name}: builtin becomes the native version"
            );
        } else {
            assert_eq!(check.version_name, sent_name, "{name}");
        }
        let sent_channel = fixture["body"]["defaultChannel"].as_str().unwrap_or("");
        assert_eq!(
            check.default_channel.as_deref(),
            (!sent_channel.is_empty()).then_some(sent_channel),
            "{name}"
        );
    }
}

#[test]
fn every_stats_body_decodes_event_by_event() {
    let all = fixtures("stats-");
    assert!(all.len() >= 10, "{} stats fixtures", all.len());
    let mut batches = 0;
    for (name, fixture) in all {
        let body = serde_json::to_vec(&fixture["body"]).unwrap();
        let stats = decode_stats(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stats.batch, fixture["body"].is_array(), "{name}");
        batches += usize::from(stats.batch);
        for (i, event) in stats.events.iter().enumerate() {
            let event = event.as_ref().unwrap_or_else(|e| panic!("{name}[{i}]: {e}"));
            assert!(
                !event.event.version_name.contains(':'),
                "{name}: per-file suffix kept"
            );
        }
    }
    assert!(batches >= 3, "batched fixtures: {batches}");
}

#[test]
fn every_channel_request_with_identity_decodes() {
    let all = fixtures("channel-");
    assert!(all.len() >= 20, "{} channel fixtures", all.len());
    for (name, fixture) in all {
        let object = match (&fixture["body"], fixture["query"].as_str().unwrap_or("")) {
            (Value::Object(_), _) => parse_object(&serde_json::to_vec(&fixture["body"]).unwrap()).unwrap(),
            (_, query) if !query.is_empty() => query_object(query),
            // Android 5.9.0 / 6.2.0 send DELETE without a body (Volley drops it): nothing to decode.
            _ => {
                assert_eq!(
                    fixture["method"], "DELETE",
                    "{name}: only the old bodyless DELETE has no input"
                );
                continue;
            }
        };
        let request = decode_channel(&object).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            request.device_id,
            request.device_id.to_ascii_lowercase(),
            "{name}"
        );
        if fixture["method"] == "POST" {
            assert!(request.channel.is_some(), "{name}: a set names its channel");
        }
    }
}
