//! Builders for the core's unit tests: the four kinds as the API server would return them.

use std::{collections::HashMap, sync::Arc};

use serde_json::{Value, json};

use super::{
    snapshot::{ManifestFile, Snapshot, SnapshotInputs},
    update::UpdateCheck,
    version::coerce_native_version,
};
use crate::api::{App, Bundle, Channel, Rollout, app::Platform};

pub const NS: &str = "shop-ns";
pub const APP_ID: &str = "com.example.shop";
pub const DEVICE: &str = "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11";

/// Merges `patch` into `base` (objects recursively, anything else replaced).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, patch) => *base = patch,
    }
}

fn object<T: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: Value, status: Value) -> T {
    let mut value = json!({
        "apiVersion": "ota.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": spec,
    });
    if !status.is_null() {
        value["status"] = status;
    }
    serde_json::from_value(value).unwrap_or_else(|e| panic!("fixture {kind}/{name}: {e}"))
}

pub fn app(name: &str, app_id: &str, patch: Value) -> App {
    let mut spec = json!({"appId": app_id, "platforms": ["ios", "android"], "storage": {"filesystem": {"path": "./storage"}}});
    merge(&mut spec, patch);
    object("App", name, spec, Value::Null)
}

/// A channel with Capgo's defaults (what the API server fills in).
pub fn channel(name: &str, bundle: Option<&str>, patch: Value) -> Channel {
    let mut spec = json!({
        "appRef": "shop", "public": false, "allowDeviceSelfSet": false,
        "ios": true, "android": true, "electron": true,
        "allowDev": true, "allowProd": true, "allowEmulator": true, "allowPhysicalDevice": true,
        "disableAutoUpdate": "major", "disableAutoUpdateUnderNative": true, "requireSigned": false,
    });
    if let Some(bundle) = bundle {
        spec["bundleRef"] = json!(bundle);
    }
    merge(&mut spec, patch);
    object("Channel", name, spec, Value::Null)
}

pub fn sha(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(seed.as_bytes()))
}

/// A synced bundle of the `shop` app.
pub fn bundle(name: &str, version: &str, patch: Value) -> Bundle {
    let mut spec = json!({
        "appRef": "shop", "version": version,
        "source": {"url": format!("https://ci.example.com/{version}.zip"), "sha256": sha(version)},
    });
    merge(&mut spec, patch);
    let status = json!({
        "conditions": [{"type": "Synced", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "checksum": sha(version),
        "storage": {"zipKey": format!("zips/{version}.zip")},
    });
    object("Bundle", name, spec, status)
}

pub fn unsynced_bundle(name: &str, version: &str) -> Bundle {
    let mut b = bundle(name, version, json!({}));
    b.status = None;
    b
}

pub fn rollout(name: &str, channel: &str, candidate: &str, percent: i32, phase: &str) -> Rollout {
    object(
        "Rollout",
        name,
        json!({"channelRef": channel, "bundleRef": candidate, "steps": [{"setPercent": 100}]}),
        json!({"phase": phase, "currentPercent": percent, "candidateBundle": candidate}),
    )
}

pub fn manifest_for(version: &str) -> Arc<[ManifestFile]> {
    vec![
        ManifestFile {
            file_name: "index.html".into(),
            file_hash: sha("index"),
            key: format!("files/{}", sha("index")),
        },
        ManifestFile {
            file_name: "app.js.br".into(),
            file_hash: sha(version),
            key: format!("files/{}", sha(version)),
        },
    ]
    .into()
}

/// The usual world: App `shop` with a public `production` channel on 1.4.2 and a self-settable
/// `beta` channel on 1.5.0-beta.1.
pub fn inputs() -> SnapshotInputs {
    SnapshotInputs {
        apps: vec![app("shop", APP_ID, json!({}))],
        channels: vec![
            channel("production", Some("shop-1.4.2"), json!({"public": true})),
            channel(
                "beta",
                Some("shop-1.5.0-beta.1"),
                json!({"allowDeviceSelfSet": true}),
            ),
        ],
        bundles: vec![
            bundle("shop-1.4.2", "1.4.2", json!({})),
            bundle("shop-1.5.0-beta.1", "1.5.0-beta.1", json!({})),
            bundle("shop-1.5.0", "1.5.0", json!({})),
        ],
        rollouts: vec![],
        manifests: HashMap::new(),
    }
}

pub fn snapshot(inputs: &SnapshotInputs) -> Snapshot {
    let (snapshot, problems) = Snapshot::build(inputs);
    assert!(problems.is_empty(), "unexpected problems: {problems:?}");
    snapshot
}

/// An 8.51.14 Android device on native 1.4.0 running bundle 1.4.1.
pub fn check() -> UpdateCheck {
    UpdateCheck {
        app_id: APP_ID.into(),
        device_id: DEVICE.into(),
        platform: Platform::Android,
        version_name: "1.4.1".into(),
        on_builtin: false,
        version_build: "1.4.0".into(),
        native_version: coerce_native_version("1.4.0"),
        plugin_version: semver::Version::new(8, 51, 14),
        is_emulator: false,
        is_prod: true,
        default_channel: None,
        key_id: None,
    }
}
