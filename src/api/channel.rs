//! The Channel: a named stream of bundles that devices follow, with the guards that decide who
//! may receive them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{IMMUTABLE_RULE, OBJECT_NAME_RULE, SEMVER_RULE, conditions_schema, default_true};

/// A Channel serves one stable Bundle of an App (and, during a Rollout, a candidate to a
/// percentage of devices). Its flags decide which devices may use it and which updates they may
/// take automatically; the defaults follow Capgo's.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ota.dev",
    version = "v1alpha1",
    kind = "Channel",
    plural = "channels",
    namespaced,
    status = "ChannelStatus",
    derive = "PartialEq",
    shortname = "otach",
    category = "ota",
    doc = "A Channel serves one stable Bundle of an App to the devices it admits.",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.appRef"),
    printcolumn(
        name = "Stable",
        type_ = "string",
        json_path = ".status.stable.version",
        description = "Version served to every device outside a rollout's cohort"
    ),
    printcolumn(name = "Candidate", type_ = "string", json_path = ".status.candidate.version"),
    printcolumn(
        name = "Percent",
        type_ = "integer",
        json_path = ".status.candidate.percent",
        description = "Share of devices offered the candidate"
    ),
    printcolumn(name = "Public", type_ = "boolean", json_path = ".spec.public"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.disableAutoUpdate != 'metadata' || has(self.minUpdateVersion)")
    .message("disableAutoUpdate: metadata needs minUpdateVersion"))]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// The App this channel belongs to (its name in this namespace). Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new(OBJECT_NAME_RULE).message("appRef must be the name of an App"),
        validation = Rule::new(IMMUTABLE_RULE).message("appRef is immutable")
    )]
    pub app_ref: String,

    /// The stable Bundle (its name in this namespace). Absent: devices are sent back to the web
    /// assets built into the app binary ("builtin").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(OBJECT_NAME_RULE).message("bundleRef must be the name of a Bundle"))]
    pub bundle_ref: Option<String>,

    /// The default channel of its platforms: devices that name no channel get this one.
    #[serde(default)]
    pub public: bool,

    /// Devices may move themselves to this channel with `setChannel()`.
    #[serde(default)]
    pub allow_device_self_set: bool,

    /// Serve iOS devices.
    #[serde(default = "default_true")]
    pub ios: bool,
    /// Serve Android devices.
    #[serde(default = "default_true")]
    pub android: bool,
    /// Serve Electron apps.
    #[serde(default = "default_true")]
    pub electron: bool,

    /// Serve development builds (`is_prod: false`, which includes TestFlight).
    #[serde(default = "default_true")]
    pub allow_dev: bool,
    /// Serve production builds.
    #[serde(default = "default_true")]
    pub allow_prod: bool,
    /// Serve emulators and simulators.
    #[serde(default = "default_true")]
    pub allow_emulator: bool,
    /// Serve physical devices.
    #[serde(default = "default_true")]
    pub allow_physical_device: bool,

    /// Refuse automatic updates that cross this boundary of the device's native version:
    /// `major` (a bundle with a higher major), `minor`, `patch`, `metadata` (bundles need
    /// `minUpdateVersion` ≤ native), or `none`.
    #[serde(default)]
    pub disable_auto_update: AutoUpdateLimit,

    /// Refuse bundles whose version is lower than the device's native version.
    #[serde(default = "default_true")]
    pub disable_auto_update_under_native: bool,

    /// With `disableAutoUpdate: metadata`: the lowest native version that may take this
    /// channel's bundles (semver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 128))]
    #[x_kube(validation = Rule::new(SEMVER_RULE).message("minUpdateVersion must be a semantic version such as 1.4.0"))]
    pub min_update_version: Option<String>,

    /// A protected channel: it serves only bundles that carry a valid signature (the plugin's
    /// RSA-encrypted checksum) for the App's public key.
    #[serde(default)]
    pub require_signed: bool,

    /// Devices pinned to this channel whatever they ask for (QA and support devices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["deviceId".into()]))]
    pub device_overrides: Vec<DeviceOverride>,

    /// Which bundle a device behind the channel is offered: `latest` (the channel's bundle, or
    /// the rollout candidate for the device's cohort) or `stepwise` (the lowest release above
    /// the device's version in `status.history`, so a device walks through every release).
    #[serde(default)]
    pub update_path: UpdatePath,
}

/// How far one update moves a device behind a channel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpdatePath {
    /// Straight to the channel's bundle (or the rollout candidate for the device's cohort).
    #[default]
    Latest,
    /// One release at a time: the lowest bundle above the device's version among those the
    /// channel has served (`status.history`), up to the channel's bundle; for apps that migrate
    /// local data release by release and must not skip one.
    Stepwise,
}

/// The semver boundary past which automatic updates are refused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoUpdateLimit {
    /// Refuse bundles with a higher major version than the native build.
    #[default]
    Major,
    /// Refuse bundles whose major or minor differs from the native build.
    Minor,
    /// Refuse bundles whose major, minor or patch differs from the native build.
    Patch,
    /// Refuse updates to native builds below `minUpdateVersion`.
    Metadata,
    /// No semver limit.
    None,
}

/// One device pinned to the channel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceOverride {
    /// The device id the plugin reports (a UUID, lower case).
    #[schemars(length(min = 36, max = 36))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')")
        .message("deviceId must be a lower-case UUID, as the plugin reports it"))]
    pub device_id: String,
    /// Who or what the device is (for people reading the YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub description: Option<String>,
}

/// What a Channel serves.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// Ready, Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The bundle served to every device outside a rollout's cohort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<ServedBundle>,
    /// The candidate of a Rollout in progress and the share of devices offered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateBundle>,
    /// The candidate of the last completed Rollout, recorded by the controller as this
    /// channel's stable bundle while `spec.bundleRef` stays what it was when the rollout
    /// completed (the controller never rewrites a spec that git owns; changing
    /// `spec.bundleRef` hands the choice back to git).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<PromotedBundle>,
    /// The Bundles this channel has served as its stable bundle, by semver (lowest first), at
    /// most 100 (the highest kept): the steps of `updatePath: stepwise`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub history: Vec<HistoryEntry>,
}

/// A Bundle a channel served as its stable bundle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The Bundle's name.
    pub bundle: String,
    /// Its version.
    pub version: String,
}

/// A candidate a completed Rollout made the channel's stable bundle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotedBundle {
    /// The Bundle now served as stable.
    pub bundle: String,
    /// The channel's `spec.bundleRef` when the rollout completed (absent: none, the builtin
    /// assets). The promotion holds while `spec.bundleRef` is still this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_bundle_ref: Option<String>,
    /// The Rollout that completed.
    pub rollout: String,
}

impl PromotedBundle {
    /// Whether the promotion still holds for a Channel whose `spec.bundleRef` is `bundle_ref`:
    /// git has not moved it since the rollout completed.
    pub fn holds_over(&self, bundle_ref: Option<&str>) -> bool {
        self.over_bundle_ref.as_deref() == bundle_ref
    }
}

impl Channel {
    /// The Bundle this channel serves outside any rollout's cohort (`None`: the builtin
    /// assets): a recorded promotion while it holds, else `spec.bundleRef`.
    pub fn stable_bundle_ref(&self) -> Option<&str> {
        match self.promotion() {
            Some(promoted) if promoted.holds_over(self.spec.bundle_ref.as_deref()) => Some(&promoted.bundle),
            _ => self.spec.bundle_ref.as_deref(),
        }
    }

    /// The recorded promotion, if any (held or not).
    pub fn promotion(&self) -> Option<&PromotedBundle> {
        self.status.as_ref().and_then(|status| status.promoted.as_ref())
    }
}

/// A bundle a channel serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServedBundle {
    /// The Bundle's name (absent when the channel serves the builtin assets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// The version devices receive (`builtin` for the assets in the app binary).
    pub version: String,
}

/// The candidate of a Rollout in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateBundle {
    /// The Bundle's name.
    pub bundle: String,
    /// Its version.
    pub version: String,
    /// The Rollout that drives it.
    pub rollout: String,
    /// Percent of devices offered the candidate.
    pub percent: i32,
}
