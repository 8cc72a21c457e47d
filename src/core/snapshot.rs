//! An immutable view of everything the update server needs to answer devices, built from the
//! four kinds (with their status) in one pure step. Requests read it without locks; a new
//! snapshot replaces the old one whole.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use semver::Version;

use super::version::coerce_native_version;
use crate::api::{
    App, Bundle, Channel, Rollout,
    app::Platform,
    bundle::BundleEncryption,
    channel::{ChannelSpec, UpdatePath},
    constants::{condition, reason},
    rollout::RolloutPhase,
};

pub use crate::layout::ManifestFile;

/// A bundle that can be served: synced, with its checksum and storage keys.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleView {
    /// The Bundle's name.
    pub name: String,
    /// Its version (what devices receive as the bundle name).
    pub version: String,
    /// The version parsed.
    pub semver: Version,
    /// Lower-case hex SHA-256 of the zip as stored.
    pub sha256: String,
    /// Storage key of the zip.
    pub zip_key: String,
    /// The delta manifest, when the sync produced one (never empty).
    pub manifest: Option<Arc<[ManifestFile]>>,
    /// Encryption data of a bundle encrypted with the plugin's v2 scheme.
    pub encryption: Option<BundleEncryption>,
    /// The lowest native version that can run it.
    pub min_native_version: Option<Version>,
    /// Release-notes link.
    pub link: Option<String>,
    /// Comment.
    pub comment: Option<String>,
}

/// What a channel serves to devices outside a rollout's cohort.
#[derive(Debug, Clone, PartialEq)]
pub enum StableTarget {
    /// The web assets built into the app binary.
    Builtin,
    /// A synced bundle.
    Bundle(Arc<BundleView>),
    /// The named bundle cannot be served (missing, not synced, or of another app).
    Unavailable {
        /// The Bundle named in `bundleRef`.
        bundle: String,
        /// Why.
        reason: String,
    },
}

/// A rollout in progress on a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    /// The Rollout's name.
    pub name: String,
    /// The candidate bundle.
    pub candidate: Arc<BundleView>,
    /// Percent of devices (0 to 100) offered the candidate.
    pub percent: u32,
    /// Salt of the cohort hash.
    pub salt: String,
}

/// A channel as served.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelView {
    /// The Channel's name.
    pub name: String,
    /// Its spec (flags and guards).
    pub spec: ChannelSpec,
    /// What it serves outside a rollout's cohort.
    pub stable: StableTarget,
    /// A rollout in progress, if any.
    pub rollout: Option<RolloutView>,
    /// With `updatePath: stepwise`: the releases of the channel's history (`status.history`)
    /// that can be served, by semver, lowest first (empty with `latest`).
    pub history: Vec<Arc<BundleView>>,
}

impl ChannelView {
    /// Whether the channel serves a platform.
    pub fn serves_platform(&self, platform: Platform) -> bool {
        match platform {
            Platform::Ios => self.spec.ios,
            Platform::Android => self.spec.android,
            Platform::Electron => self.spec.electron,
        }
    }
}

/// An App as served.
#[derive(Debug, Clone, PartialEq)]
pub struct AppView {
    /// Namespace of the App.
    pub namespace: String,
    /// The App's name.
    pub name: String,
    /// The Capacitor app id.
    pub app_id: String,
    /// Platforms the app is built for.
    pub platforms: Vec<Platform>,
    /// The channel for devices that match no other.
    pub default_channel: Option<String>,
    /// Send `link` and `comment`.
    pub expose_metadata: bool,
    /// Key id of the App's public key (first 20 characters of the PEM body), as devices send it.
    pub key_id: Option<String>,
    /// Channels by name (sorted: the first public channel by name wins, as in Capgo).
    pub channels: BTreeMap<String, ChannelView>,
    /// Devices pinned to a channel: device id → channel name.
    pub device_overrides: HashMap<String, String>,
    /// The versions of the App's Bundles, synced or not: what a device's stats may name (a
    /// failure of anything else is not remembered).
    pub bundle_versions: HashSet<String>,
    /// How long devices' outcomes must be kept for the analysis of the Rollouts on its channels,
    /// in any phase ([`crate::core::rollout::outcome_retention`]; the margin alone when none).
    pub outcome_retention: std::time::Duration,
    /// The request-rate limits of the App's clients (`spec.server.rateLimits`).
    pub rate_limits: crate::core::rate_limits::AppRateLimits,
}

/// Everything the update server serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    apps: HashMap<String, Arc<AppView>>,
}

impl Snapshot {
    /// The App with this app id.
    pub fn app(&self, app_id: &str) -> Option<&Arc<AppView>> {
        self.apps.get(app_id)
    }

    /// Every App, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<AppView>> {
        self.apps.values()
    }
}

/// Something in the objects that keeps part of them from being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Kind/namespace/name` of the object concerned.
    pub object: String,
    /// What is wrong.
    pub message: String,
}

/// The inputs of a snapshot: the four kinds as observed (with status) and the manifests read
/// from storage, keyed by (namespace, bundle name).
#[derive(Debug, Clone, Default)]
pub struct SnapshotInputs {
    /// Apps.
    pub apps: Vec<App>,
    /// Channels.
    pub channels: Vec<Channel>,
    /// Bundles.
    pub bundles: Vec<Bundle>,
    /// Rollouts.
    pub rollouts: Vec<Rollout>,
    /// Delta manifests of synced bundles.
    pub manifests: HashMap<(String, String), Arc<[ManifestFile]>>,
}

fn namespace_of(meta: &kube::api::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_default()
}

fn name_of(meta: &kube::api::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

// The key id is a property of the key; it lives with the rest of the crypto.
pub use crate::crypto::key_id;

impl Snapshot {
    /// Builds a snapshot. Objects that cannot be served are left out and reported; one bad object
    /// never keeps the others from being served.
    pub fn build(inputs: &SnapshotInputs) -> (Snapshot, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut apps_by_key: BTreeMap<(String, String), AppView> = BTreeMap::new();
        let mut seen_app_ids: HashMap<String, String> = HashMap::new();
        // The public key of each App, for protected channels.
        let mut public_keys: HashMap<(String, String), Option<&str>> = HashMap::new();
        for app in &inputs.apps {
            let (namespace, name) = (namespace_of(&app.metadata), name_of(&app.metadata));
            let object = format!("App/{namespace}/{name}");
            if let Some(first) = seen_app_ids.get(&app.spec.app_id) {
                problems.push(Problem {
                    object,
                    message: format!("appId {} is already served by {first}", app.spec.app_id),
                });
                continue;
            }
            seen_app_ids.insert(app.spec.app_id.clone(), object);
            public_keys.insert(
                (namespace.clone(), name.clone()),
                app.spec.signing.as_ref().map(|s| s.public_key.as_str()),
            );
            apps_by_key.insert(
                (namespace.clone(), name.clone()),
                AppView {
                    namespace,
                    name,
                    app_id: app.spec.app_id.clone(),
                    platforms: app.spec.platforms.clone(),
                    default_channel: app.spec.default_channel.clone(),
                    expose_metadata: app.spec.expose_metadata,
                    key_id: app.spec.signing.as_ref().and_then(|s| key_id(&s.public_key)),
                    channels: BTreeMap::new(),
                    device_overrides: HashMap::new(),
                    bundle_versions: HashSet::new(),
                    outcome_retention: crate::core::rollout::OUTCOME_RETENTION_MARGIN,
                    rate_limits: crate::core::rate_limits::AppRateLimits::of(
                        app.spec.server.as_ref().and_then(|s| s.rate_limits.as_ref()),
                    ),
                },
            );
        }

        for bundle in &inputs.bundles {
            let key = (namespace_of(&bundle.metadata), bundle.spec.app_ref.clone());
            if let Some(app) = apps_by_key.get_mut(&key) {
                app.bundle_versions.insert(bundle.spec.version.clone());
            }
        }
        let bundles = servable_bundles(inputs, &mut problems);
        let bundle_target = |namespace: &str, app: &str, bundle: &str| -> Result<Arc<BundleView>, String> {
            match bundles.get(&(namespace.to_owned(), bundle.to_owned())) {
                Some((owner, view)) if owner == app => {
                    view.as_ref().map(Arc::clone).map_err(ToString::to_string)
                }
                Some((owner, _)) => Err(format!("Bundle {bundle} belongs to App {owner}")),
                None => Err(format!("Bundle {bundle} does not exist")),
            }
        };

        for channel in &inputs.channels {
            let (namespace, name) = (namespace_of(&channel.metadata), name_of(&channel.metadata));
            let object = format!("Channel/{namespace}/{name}");
            let Some(app) = apps_by_key.get_mut(&(namespace.clone(), channel.spec.app_ref.clone())) else {
                problems.push(Problem {
                    object,
                    message: format!("App {} does not exist", channel.spec.app_ref),
                });
                continue;
            };
            let public_key = public_keys
                .get(&(namespace.clone(), app.name.clone()))
                .copied()
                .flatten();
            let stable = match channel.stable_bundle_ref() {
                None => StableTarget::Builtin,
                Some(bundle) => match bundle_target(&namespace, &app.name, bundle).and_then(|view| {
                    match channel.spec.require_signed {
                        true => signature_refusal(&name, &view, public_key).map_or(Ok(view), Err),
                        false => Ok(view),
                    }
                }) {
                    Ok(view) => StableTarget::Bundle(view),
                    Err(reason) => {
                        problems.push(Problem {
                            object: object.clone(),
                            message: reason.clone(),
                        });
                        StableTarget::Unavailable {
                            bundle: bundle.to_owned(),
                            reason,
                        }
                    }
                },
            };
            // A release of the history that was deleted, or can no longer be served (not synced,
            // of another App, refused by a protected channel, rebuilt under another version),
            // is left out: the walk goes on without it rather than stopping for good.
            let history = match channel.spec.update_path {
                UpdatePath::Latest => Vec::new(),
                UpdatePath::Stepwise => {
                    let mut history: Vec<Arc<BundleView>> = channel
                        .status
                        .iter()
                        .flat_map(|status| &status.history)
                        .filter_map(|entry| {
                            let view = bundle_target(&namespace, &app.name, &entry.bundle).ok()?;
                            let signed = !channel.spec.require_signed
                                || signature_refusal(&name, &view, public_key).is_none();
                            (view.version == entry.version && signed).then_some(view)
                        })
                        .collect();
                    history.sort_by(|a, b| a.semver.cmp(&b.semver));
                    history
                }
            };
            for device in &channel.spec.device_overrides {
                if let Some(other) = app.device_overrides.get(&device.device_id) {
                    problems.push(Problem {
                        object: object.clone(),
                        message: format!("device {} is also pinned to Channel {other}", device.device_id),
                    });
                    continue;
                }
                app.device_overrides
                    .insert(device.device_id.clone(), name.clone());
            }
            app.channels.insert(
                name.clone(),
                ChannelView {
                    name,
                    spec: channel.spec.clone(),
                    stable,
                    rollout: None,
                    history,
                },
            );
        }

        let mut rollouts: Vec<&Rollout> = inputs.rollouts.iter().collect();
        rollouts.sort_by_key(|r| (namespace_of(&r.metadata), name_of(&r.metadata)));
        // Every Rollout counts here, served or not: one waiting for its candidate or a person
        // still reads its window's outcomes later.
        for rollout in &rollouts {
            let namespace = namespace_of(&rollout.metadata);
            if let Some(app) = apps_by_key.values_mut().find(|app| {
                app.namespace == namespace && app.channels.contains_key(&rollout.spec.channel_ref)
            }) {
                app.outcome_retention = app
                    .outcome_retention
                    .max(crate::core::rollout::outcome_retention(rollout));
            }
        }
        for rollout in rollouts {
            let (namespace, name) = (namespace_of(&rollout.metadata), name_of(&rollout.metadata));
            let object = format!("Rollout/{namespace}/{name}");
            let Some(status) = &rollout.status else { continue };
            let percent = match status.phase {
                Some(RolloutPhase::Progressing | RolloutPhase::Paused) => status.current_percent.unwrap_or(0),
                // A completed candidate is served through its Channel's recorded promotion (made
                // before the Completed status), so git's later choice of bundleRef wins, and the
                // next Rollout on the channel may drive it.
                Some(RolloutPhase::Completed | RolloutPhase::Aborted) | None => continue,
            };
            if status.candidate_bundle.as_deref() != Some(rollout.spec.bundle_ref.as_str()) {
                // The status describes an earlier candidate; the controller has not caught up.
                continue;
            }
            let Some(app) = apps_by_key.values_mut().find(|app| {
                app.namespace == namespace && app.channels.contains_key(&rollout.spec.channel_ref)
            }) else {
                problems.push(Problem {
                    object,
                    message: format!("Channel {} does not exist", rollout.spec.channel_ref),
                });
                continue;
            };
            let require_signed = app
                .channels
                .get(&rollout.spec.channel_ref)
                .is_some_and(|channel| channel.spec.require_signed);
            let public_key = public_keys
                .get(&(namespace.clone(), app.name.clone()))
                .copied()
                .flatten();
            let candidate =
                match bundle_target(&namespace, &app.name, &rollout.spec.bundle_ref).and_then(|view| {
                    match require_signed {
                        true => signature_refusal(&rollout.spec.channel_ref, &view, public_key)
                            .map_or(Ok(view), Err),
                        false => Ok(view),
                    }
                }) {
                    Ok(view) => view,
                    Err(reason) => {
                        problems.push(Problem {
                            object,
                            message: reason,
                        });
                        continue;
                    }
                };
            let salt = rollout
                .spec
                .salt
                .clone()
                .or_else(|| status.salt.clone())
                .or_else(|| rollout.metadata.uid.clone())
                .unwrap_or_else(|| format!("{namespace}/{name}"));
            let channel = app
                .channels
                .get_mut(&rollout.spec.channel_ref)
                .expect("checked above");
            if let Some(existing) = &channel.rollout {
                problems.push(Problem {
                    object,
                    message: format!(
                        "Channel {} is already driven by Rollout {}",
                        channel.name, existing.name
                    ),
                });
                continue;
            }
            channel.rollout = Some(RolloutView {
                name,
                candidate,
                percent: u32::try_from(percent.clamp(0, 100)).unwrap_or(0),
                salt,
            });
        }

        let apps = apps_by_key
            .into_values()
            .map(|app| (app.app_id.clone(), Arc::new(app)))
            .collect();
        (Snapshot { apps }, problems)
    }
}

/// Why a protected channel (`requireSigned`) must not serve `bundle`, if it must not: the bundle
/// has no encryption fields, the App has no public key, or the bundle's session key and
/// encrypted checksum do not open with that key. The message starts with the reason
/// ([`reason::SIGNATURE_REQUIRED`] or [`reason::INVALID_SIGNATURE`]).
fn signature_refusal(channel: &str, bundle: &BundleView, public_key: Option<&str>) -> Option<String> {
    let refused = |reason: &str, why: String| {
        Some(format!(
            "{reason}: Channel {channel} requires signed bundles and Bundle {} {why}",
            bundle.name
        ))
    };
    let Some(encryption) = &bundle.encryption else {
        return refused(
            reason::SIGNATURE_REQUIRED,
            "is not signed (it has no spec.encryption)".to_owned(),
        );
    };
    let Some(public_key) = public_key else {
        return refused(
            reason::SIGNATURE_REQUIRED,
            "cannot be verified: the App has no signing.publicKey".to_owned(),
        );
    };
    match crate::crypto::verify_bundle_signature(public_key, encryption, None) {
        Ok(_) => None,
        Err(error) => refused(
            reason::INVALID_SIGNATURE,
            format!("has a signature that does not verify against the App's public key: {error}"),
        ),
    }
}

/// Bundles keyed by (namespace, name) with their App's name, and either a servable view or why
/// they cannot be served.
type BundleIndex = HashMap<(String, String), (String, Result<Arc<BundleView>, UnservableBundle>)>;

fn servable_bundles(inputs: &SnapshotInputs, problems: &mut Vec<Problem>) -> BundleIndex {
    let mut index = BundleIndex::new();
    for bundle in &inputs.bundles {
        let (namespace, name) = (namespace_of(&bundle.metadata), name_of(&bundle.metadata));
        let view = bundle_view(
            bundle,
            inputs.manifests.get(&(namespace.clone(), name.clone())).cloned(),
        );
        if let Err(reason) = &view {
            problems.push(Problem {
                object: format!("Bundle/{namespace}/{name}"),
                message: reason.to_string(),
            });
        }
        index.insert(
            (namespace, name),
            (bundle.spec.app_ref.clone(), view.map(Arc::new)),
        );
    }
    index
}

/// Why a Bundle cannot be served (its Channels and Rollouts report it as a problem).
#[derive(Debug, thiserror::Error)]
enum UnservableBundle {
    #[error("Bundle {name} is not synced yet")]
    NotSynced { name: String },
    #[error("Bundle {name} is synced but its status lacks the checksum or storage keys")]
    IncompleteStatus { name: String },
    #[error("Bundle {name}: version {version} is not semver: {source}")]
    Version {
        name: String,
        version: String,
        source: semver::Error,
    },
    #[error("Bundle {name}: native.minVersion {min_version} is not semver")]
    NativeMinVersion { name: String, min_version: String },
}

fn bundle_view(
    bundle: &Bundle,
    manifest: Option<Arc<[ManifestFile]>>,
) -> Result<BundleView, UnservableBundle> {
    let name = name_of(&bundle.metadata);
    let status = bundle.status.as_ref();
    let synced = status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::SYNCED && c.status == "True")
    });
    let (Some(status), true) = (status, synced) else {
        return Err(UnservableBundle::NotSynced { name });
    };
    let (Some(sha256), Some(storage)) = (&status.checksum, &status.storage) else {
        return Err(UnservableBundle::IncompleteStatus { name });
    };
    let semver = Version::parse(&bundle.spec.version).map_err(|source| UnservableBundle::Version {
        name: name.clone(),
        version: bundle.spec.version.clone(),
        source,
    })?;
    let min_native_version = match bundle.spec.native.as_ref().and_then(|n| n.min_version.as_deref()) {
        Some(raw) => Some(
            coerce_native_version(raw).ok_or_else(|| UnservableBundle::NativeMinVersion {
                name: name.clone(),
                min_version: raw.to_owned(),
            })?,
        ),
        None => None,
    };
    Ok(BundleView {
        name,
        version: bundle.spec.version.clone(),
        semver,
        sha256: sha256.clone(),
        zip_key: storage.zip_key.clone(),
        manifest: manifest.filter(|files| !files.is_empty()),
        encryption: bundle.spec.encryption.clone(),
        min_native_version,
        link: bundle.spec.link.clone(),
        comment: bundle.spec.comment.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::fixtures::*;

    fn problems(inputs: &SnapshotInputs) -> Vec<String> {
        Snapshot::build(inputs)
            .1
            .into_iter()
            .map(|p| format!("{}: {}", p.object, p.message))
            .collect()
    }

    #[test]
    fn the_key_id_is_the_first_20_characters_of_the_pem_body() {
        let pem = "-----BEGIN RSA PUBLIC KEY-----\nMIIBCgKCAQEApnI9VDgv\nMVyi/jKTHroKMuhf5y0D\n-----END RSA PUBLIC KEY-----\n";
        assert_eq!(key_id(pem).as_deref(), Some("MIIBCgKCAQEApnI9VDgv"));
        assert_eq!(
            key_id("-----BEGIN RSA PUBLIC KEY-----\n-----END RSA PUBLIC KEY-----"),
            None
        );
    }

    #[test]
    fn a_clean_world_has_no_problems_and_indexes_by_app_id() {
        let (snapshot, problems) = Snapshot::build(&inputs());
        assert!(problems.is_empty());
        let app = snapshot.app(APP_ID).expect("the app");
        assert_eq!(app.channels.keys().collect::<Vec<_>>(), ["beta", "production"]);
        assert!(
            matches!(&app.channels["production"].stable, StableTarget::Bundle(b) if b.version == "1.4.2")
        );
    }

    fn promoted(bundle: &str, over: Option<&str>) -> crate::api::ChannelStatus {
        crate::api::ChannelStatus {
            promoted: Some(crate::api::channel::PromotedBundle {
                bundle: bundle.into(),
                over_bundle_ref: over.map(str::to_owned),
                rollout: "shop".into(),
            }),
            ..Default::default()
        }
    }

    fn stable_version(inputs: &SnapshotInputs) -> String {
        let snapshot = super::super::fixtures::snapshot(inputs);
        match &snapshot.app(APP_ID).expect("the app").channels["production"].stable {
            StableTarget::Bundle(view) => view.version.clone(),
            other => panic!("not a bundle: {other:?}"),
        }
    }

    #[test]
    fn a_promoted_candidate_is_the_stable_bundle_while_the_channels_bundle_ref_is_unchanged() {
        let mut inputs = inputs();
        inputs.channels[0].status = Some(promoted("shop-1.5.0", Some("shop-1.4.2")));
        assert_eq!(stable_version(&inputs), "1.5.0");
        // Git moved spec.bundleRef since: its choice stands.
        inputs.channels[0].spec.bundle_ref = Some("shop-1.5.0-beta.1".into());
        assert_eq!(stable_version(&inputs), "1.5.0-beta.1");
        // A promotion over "no bundleRef" (the builtin assets) holds only while there is none.
        inputs.channels[0].status = Some(promoted("shop-1.5.0", None));
        assert_eq!(stable_version(&inputs), "1.5.0-beta.1");
        inputs.channels[0].spec.bundle_ref = None;
        assert_eq!(stable_version(&inputs), "1.5.0");
    }

    #[test]
    fn bad_objects_are_reported_and_skipped_without_hiding_the_rest() {
        let mut inputs = inputs();
        inputs.apps.push(app("shop-copy", APP_ID, json!({})));
        inputs
            .channels
            .push(channel("orphan", None, json!({"appRef": "nonexistent"})));
        inputs
            .channels
            .push(channel("broken", Some("missing-bundle"), json!({})));
        inputs.apps.push(app("other", "com.example.other", json!({})));
        let mut foreign = bundle("other-1.0.0", "1.0.0", json!({"appRef": "other"}));
        foreign.spec.app_ref = "other".into();
        inputs.bundles.push(foreign);
        inputs
            .channels
            .push(channel("cross", Some("other-1.0.0"), json!({})));
        inputs.channels.push(channel(
            "pin-a",
            None,
            json!({"deviceOverrides": [{"deviceId": DEVICE}]}),
        ));
        inputs.channels.push(channel(
            "pin-b",
            None,
            json!({"deviceOverrides": [{"deviceId": DEVICE}]}),
        ));
        inputs
            .rollouts
            .push(rollout("r1", "production", "shop-1.5.0", 10, "Progressing"));
        inputs
            .rollouts
            .push(rollout("r2", "production", "shop-1.5.0", 10, "Progressing"));
        inputs
            .rollouts
            .push(rollout("r3", "nowhere", "shop-1.5.0", 10, "Progressing"));
        let found = problems(&inputs);
        let expect = [
            "App/shop-ns/shop-copy: appId com.example.shop is already served by App/shop-ns/shop",
            "Channel/shop-ns/orphan: App nonexistent does not exist",
            "Channel/shop-ns/broken: Bundle missing-bundle does not exist",
            "Channel/shop-ns/cross: Bundle other-1.0.0 belongs to App other",
            "Channel/shop-ns/pin-b: device 6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11 is also pinned to Channel pin-a",
            "Rollout/shop-ns/r2: Channel production is already driven by Rollout r1",
            "Rollout/shop-ns/r3: Channel nowhere does not exist",
        ];
        for e in expect {
            assert!(
                found.iter().any(|f| f == e),
                "missing problem {e:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        let (snapshot, _) = Snapshot::build(&inputs);
        let app = snapshot.app(APP_ID).unwrap();
        assert_eq!(app.name, "shop");
        assert_eq!(app.channels["production"].rollout.as_ref().unwrap().name, "r1");
        assert!(matches!(
            app.channels["broken"].stable,
            StableTarget::Unavailable { .. }
        ));
    }

    const TEST_PRIVATE_KEY: &str = include_str!("../../tests/fixtures/keys/app.key");
    const TEST_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/keys/app.key.pub");
    const OTHER_PRIVATE_KEY: &str = include_str!("../../tests/fixtures/keys/other.key");

    /// `spec.encryption` as `ota bundle encrypt` writes it, signed with `private_key`.
    fn encryption_by(private_key: &str) -> serde_json::Value {
        use crate::crypto::{ChecksumFormat, SessionKey, SigningKey, encrypt_checksum};
        let key = SigningKey::from_pem(private_key).unwrap();
        json!({
            "sessionKey": SessionKey::generate().seal(&key).unwrap(),
            "encryptedChecksum": encrypt_checksum(&"ab".repeat(32), &key, ChecksumFormat::Hex).unwrap(),
        })
    }

    /// The shop with a public key, a protected `secure` channel on `bundle`, and bundles signed
    /// with the App's key, with another key, with garbage, and not at all.
    fn protected(stable: &str) -> SnapshotInputs {
        let mut inputs = inputs();
        inputs.apps[0] = app("shop", APP_ID, json!({"signing": {"publicKey": TEST_PUBLIC_KEY}}));
        inputs
            .channels
            .push(channel("secure", Some(stable), json!({"requireSigned": true})));
        let mut add = |name: &str, version: &str, encryption: serde_json::Value| {
            inputs
                .bundles
                .push(bundle(name, version, json!({"encryption": encryption})));
        };
        add("signed-2.0.0", "2.0.0", encryption_by(TEST_PRIVATE_KEY));
        add("foreign-2.0.1", "2.0.1", encryption_by(OTHER_PRIVATE_KEY));
        add(
            "garbage-2.0.2",
            "2.0.2",
            json!({"sessionKey": "aXY=:a2V5", "encryptedChecksum": "ab".repeat(256)}),
        );
        inputs
    }

    fn secure_stable(inputs: &SnapshotInputs) -> StableTarget {
        Snapshot::build(inputs).0.app(APP_ID).unwrap().channels["secure"]
            .stable
            .clone()
    }

    #[test]
    fn a_protected_channel_serves_a_bundle_signed_with_the_apps_key() {
        let inputs = protected("signed-2.0.0");
        assert!(problems(&inputs).is_empty(), "{:#?}", problems(&inputs));
        assert!(matches!(secure_stable(&inputs), StableTarget::Bundle(b) if b.version == "2.0.0"));
    }

    #[test]
    fn a_protected_channel_serves_nothing_rather_than_an_unsigned_or_badly_signed_bundle() {
        for (bundle, reason, needle) in [
            (
                "shop-1.4.2",
                reason::SIGNATURE_REQUIRED,
                "is not signed (it has no spec.encryption)",
            ),
            (
                "foreign-2.0.1",
                reason::INVALID_SIGNATURE,
                "not made with the private key",
            ),
            (
                "garbage-2.0.2",
                reason::INVALID_SIGNATURE,
                "malformed session key",
            ),
        ] {
            let inputs = protected(bundle);
            let found = problems(&inputs);
            assert_eq!(found.len(), 1, "{found:#?}");
            let expected = format!(
                "Channel/shop-ns/secure: {reason}: Channel secure requires signed bundles and Bundle {bundle}"
            );
            assert!(found[0].starts_with(&expected), "{found:#?}");
            assert!(found[0].contains(needle), "{found:#?}");
            assert!(
                matches!(secure_stable(&inputs), StableTarget::Unavailable { bundle: b, .. } if b == bundle)
            );
        }
        // The same bundles on an unprotected channel are served as before.
        let mut inputs = protected("shop-1.4.2");
        inputs.channels.last_mut().unwrap().spec.require_signed = false;
        assert!(problems(&inputs).is_empty());
    }

    #[test]
    fn a_protected_channel_of_an_app_without_a_public_key_serves_nothing() {
        let mut inputs = protected("signed-2.0.0");
        inputs.apps[0].spec.signing = None;
        let found = problems(&inputs);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].contains("SignatureRequired: Channel secure requires signed bundles and Bundle signed-2.0.0 cannot be verified: the App has no signing.publicKey"),
            "{found:#?}"
        );
    }

    #[test]
    fn an_app_keeps_outcomes_for_the_longest_window_of_its_rollouts_in_any_phase() {
        let day = std::time::Duration::from_secs(24 * 3600);
        let mut inputs = inputs();
        let (snapshot, _) = Snapshot::build(&inputs);
        assert_eq!(
            snapshot.app(APP_ID).unwrap().outcome_retention,
            day,
            "no Rollout: the margin"
        );
        let mut long = rollout("r-long", "beta", "shop-1.5.0", 0, "Aborted");
        long.spec.analysis.window = "72h".to_owned();
        let mut short = rollout("r-short", "production", "shop-1.5.0", 10, "Progressing");
        short.spec.analysis.window = "2h".to_owned();
        let mut elsewhere = rollout("r-elsewhere", "nowhere", "shop-1.5.0", 10, "Progressing");
        elsewhere.spec.analysis.window = "720h".to_owned();
        inputs.rollouts.extend([long, short, elsewhere]);
        let (snapshot, _) = Snapshot::build(&inputs);
        assert_eq!(
            snapshot.app(APP_ID).unwrap().outcome_retention,
            std::time::Duration::from_secs(72 * 3600) + day
        );
    }

    #[test]
    fn a_protected_channel_refuses_an_unsigned_rollout_candidate_and_keeps_its_stable() {
        let mut inputs = protected("signed-2.0.0");
        inputs
            .rollouts
            .push(rollout("r-unsigned", "secure", "shop-1.5.0", 50, "Progressing"));
        let found = problems(&inputs);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("Rollout/shop-ns/r-unsigned: SignatureRequired: Channel secure requires signed bundles and Bundle shop-1.5.0"),
            "{found:#?}"
        );
        let (snapshot, _) = Snapshot::build(&inputs);
        let secure = &snapshot.app(APP_ID).unwrap().channels["secure"];
        assert!(secure.rollout.is_none());
        assert!(matches!(&secure.stable, StableTarget::Bundle(b) if b.version == "2.0.0"));

        inputs.rollouts[0] = rollout("r-signed", "secure", "signed-2.0.0", 50, "Progressing");
        assert!(problems(&inputs).is_empty());
    }

    #[test]
    fn the_salt_is_the_spec_salt_then_the_status_salt_then_the_uid() {
        let mut inputs = inputs();
        inputs
            .rollouts
            .push(rollout("r1", "production", "shop-1.5.0", 10, "Progressing"));
        let salt = |inputs: &SnapshotInputs| {
            Snapshot::build(inputs).0.app(APP_ID).unwrap().channels["production"]
                .rollout
                .clone()
                .unwrap()
                .salt
        };
        assert_eq!(salt(&inputs), "uid-r1");
        inputs.rollouts[0].status.as_mut().unwrap().salt = Some("from-status".into());
        assert_eq!(salt(&inputs), "from-status");
        inputs.rollouts[0].spec.salt = Some("from-spec".into());
        assert_eq!(salt(&inputs), "from-spec");
    }
}
