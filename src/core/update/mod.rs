//! The update check: which answer a device gets. A pure function of the snapshot, the request
//! and what is known of the device.

use std::sync::Arc;

use semver::Version;

use super::{
    cohort,
    snapshot::{AppView, BundleView, ChannelView, Snapshot, StableTarget},
    version::{PluginFeatures, plugin_features},
};
use crate::api::{
    app::Platform,
    channel::{AutoUpdateLimit, UpdatePath},
};

/// An update check, decoded and normalised from the plugin's info object.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateCheck {
    /// `app_id`.
    pub app_id: String,
    /// `device_id`, lower-cased.
    pub device_id: String,
    /// `platform`.
    pub platform: Platform,
    /// The bundle the device runs (`version_name`; `builtin` already replaced by the native
    /// version).
    pub version_name: String,
    /// Whether the device said it runs the builtin assets.
    pub on_builtin: bool,
    /// `version_build` as sent.
    pub version_build: String,
    /// `version_build` read as semver (None: `unknown` or unreadable).
    pub native_version: Option<Version>,
    /// `plugin_version` (2.3.3 when absent, as Capgo assumes).
    pub plugin_version: Version,
    /// `is_emulator`.
    pub is_emulator: bool,
    /// `is_prod`.
    pub is_prod: bool,
    /// `defaultChannel`, when not empty.
    pub default_channel: Option<String>,
    /// `key_id`, when sent.
    pub key_id: Option<String>,
}

/// What is known of the device, from the device store (kept in memory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceFacts {
    /// A channel the device set for itself through `/channel_self` (plugins that keep it on the
    /// server).
    pub self_set_channel: Option<String>,
    /// Versions this device reported as failed.
    pub failed_versions: Vec<String>,
}

/// How the plugin classifies a no-update answer (plugin 8.45.11 and later read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// Nothing to do.
    UpToDate,
    /// A policy refuses the update.
    Blocked,
    /// Something is wrong (the client reports `download_fail`).
    Failed,
}

impl AnswerKind {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerKind::UpToDate => "up_to_date",
            AnswerKind::Blocked => "blocked",
            AnswerKind::Failed => "failed",
        }
    }
}

/// Why there is no update, with Capgo's error code where Capgo has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The device runs the target already.
    NoNewVersionAvailable,
    /// The channel serves builtin and the device runs builtin.
    AlreadyOnBuiltin,
    /// No App has this app id.
    UnknownApp,
    /// The App is not built for this platform, or the channel does not serve it.
    DisabledPlatform(Platform),
    /// `version_build` is `unknown`.
    UnknownVersionBuild,
    /// `version_build` is not a version.
    SemverError,
    /// Plugin 4 and older.
    UnsupportedPluginVersion,
    /// No channel matches the device.
    NoChannel,
    /// The channel's bundle cannot be served.
    NoBundle,
    /// The device's key and the App's key differ.
    KeyIdMismatch,
    /// `disableAutoUpdate: major`.
    DisableAutoUpdateToMajor,
    /// `disableAutoUpdate: minor`.
    DisableAutoUpdateToMinor,
    /// `disableAutoUpdate: patch`.
    DisableAutoUpdateToPatch,
    /// `disableAutoUpdate: metadata`.
    DisableAutoUpdateToMetadata,
    /// `disableAutoUpdate: metadata` without a usable `minUpdateVersion` to compare with.
    MisconfiguredChannel,
    /// The bundle is older than the native build.
    DisableAutoUpdateUnderNative,
    /// The channel is private and the device was not pinned to it.
    CannotUpdateViaPrivateChannel,
    /// `allowProd: false`.
    DisableProdBuild,
    /// `allowDev: false`.
    DisableDevBuild,
    /// `allowPhysicalDevice: false`.
    DisableDevice,
    /// `allowEmulator: false`.
    DisableEmulator,
    /// The bundle needs a newer native build (`native.minVersion`).
    NativeVersionTooOld,
    /// This device reported the target as failed; it is not offered again.
    BundleFailedOnDevice,
    /// A protected channel and a bundle without a signature.
    UnsignedBundle,
    /// An encrypted bundle for a device without a key, or a plain one for a device with a key.
    EncryptionMismatch,
    /// Revert to builtin needs plugin 6.2.0.
    RevertToBuiltinPluginVersionTooOld,
}

impl Refusal {
    /// The wire `error` code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NoNewVersionAvailable => "no_new_version_available",
            Refusal::AlreadyOnBuiltin => "already_on_builtin",
            Refusal::UnknownApp => "unknown_app",
            Refusal::DisabledPlatform(Platform::Ios) => "disabled_platform_ios",
            Refusal::DisabledPlatform(Platform::Android) => "disabled_platform_android",
            Refusal::DisabledPlatform(Platform::Electron) => "disabled_platform_electron",
            Refusal::UnknownVersionBuild => "unknown_version_build",
            Refusal::SemverError => "semver_error",
            Refusal::UnsupportedPluginVersion => "unsupported_plugin_version",
            Refusal::NoChannel => "no_channel",
            Refusal::NoBundle => "no_bundle",
            Refusal::KeyIdMismatch => "key_id_mismatch",
            Refusal::DisableAutoUpdateToMajor => "disable_auto_update_to_major",
            Refusal::DisableAutoUpdateToMinor => "disable_auto_update_to_minor",
            Refusal::DisableAutoUpdateToPatch => "disable_auto_update_to_patch",
            Refusal::DisableAutoUpdateToMetadata => "disable_auto_update_to_metadata",
            Refusal::MisconfiguredChannel => "misconfigured_channel",
            Refusal::DisableAutoUpdateUnderNative => "disable_auto_update_under_native",
            Refusal::CannotUpdateViaPrivateChannel => "cannot_update_via_private_channel",
            Refusal::DisableProdBuild => "disable_prod_build",
            Refusal::DisableDevBuild => "disable_dev_build",
            Refusal::DisableDevice => "disable_device",
            Refusal::DisableEmulator => "disable_emulator",
            Refusal::NativeVersionTooOld => "native_version_too_old",
            Refusal::BundleFailedOnDevice => "bundle_failed_on_device",
            Refusal::UnsignedBundle => "unsigned_bundle",
            Refusal::EncryptionMismatch => "encryption_mismatch",
            Refusal::RevertToBuiltinPluginVersionTooOld => "revert_to_builtin_plugin_version_too_old",
        }
    }

    /// How the plugin should classify it.
    pub fn kind(self) -> AnswerKind {
        match self {
            Refusal::NoNewVersionAvailable | Refusal::AlreadyOnBuiltin => AnswerKind::UpToDate,
            Refusal::UnknownApp
            | Refusal::UnknownVersionBuild
            | Refusal::SemverError
            | Refusal::UnsupportedPluginVersion
            | Refusal::NoChannel
            | Refusal::NoBundle
            | Refusal::UnsignedBundle
            | Refusal::RevertToBuiltinPluginVersionTooOld
            | Refusal::MisconfiguredChannel => AnswerKind::Failed,
            _ => AnswerKind::Blocked,
        }
    }
}

/// A refusal with the details the wire answer carries.
#[derive(Debug, Clone, PartialEq)]
pub struct NoUpdate {
    /// Why.
    pub refusal: Refusal,
    /// A sentence for people.
    pub message: String,
    /// The target version, where Capgo sends it.
    pub version: Option<String>,
    /// The device's version the target was compared with, where Capgo sends it.
    pub old: Option<String>,
    /// `major: true` on semver blocks (old clients emit `majorAvailable` from it).
    pub major: bool,
    /// The channel that was resolved, if any.
    pub channel: Option<String>,
}

/// An update to offer.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The bundle.
    pub bundle: Arc<BundleView>,
    /// The channel it comes from.
    pub channel: String,
    /// The Rollout whose cohort the device is in, when the bundle is a candidate.
    pub rollout: Option<String>,
    /// The `checksum` to send.
    pub checksum: String,
    /// The `session_key` to send (empty for plain bundles).
    pub session_key: String,
    /// Send the delta manifest.
    pub with_manifest: bool,
    /// Send `link` and `comment`.
    pub with_metadata: bool,
}

/// The answer to an update check.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateAnswer {
    /// Download this bundle.
    Offer(Offer),
    /// Go back to the assets in the binary (`{"version":"builtin"}`).
    RevertToBuiltin {
        /// The channel that was resolved.
        channel: String,
    },
    /// No update.
    NoUpdate(NoUpdate),
}

fn no_update(refusal: Refusal, message: impl Into<String>) -> UpdateAnswer {
    UpdateAnswer::NoUpdate(NoUpdate {
        refusal,
        message: message.into(),
        version: None,
        old: None,
        major: false,
        channel: None,
    })
}

/// How the channel was chosen; a pinned device skips the private-channel check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Pinned,
    SelfSet,
    Requested,
    Public,
    AppDefault,
}

/// Picks the channel: a device pinned by a Channel's `deviceOverrides` > the channel the device
/// set on the server > the requested `defaultChannel` (only if public or self-assignable and
/// serving the platform; no fallback when it matches nothing, as in Capgo) > the first public
/// channel serving the platform > the App's `defaultChannel`.
fn resolve_channel<'a>(
    app: &'a AppView,
    device: &DeviceChannelInputs<'_>,
    facts: &DeviceFacts,
) -> Option<(&'a ChannelView, Resolution)> {
    let serves = |channel: &ChannelView| device.platform.is_some_and(|p| channel.serves_platform(p));
    if let Some(channel) = app
        .device_overrides
        .get(device.device_id)
        .and_then(|name| app.channels.get(name))
    {
        return Some((channel, Resolution::Pinned));
    }
    if let Some(channel) = facts
        .self_set_channel
        .as_ref()
        .and_then(|name| app.channels.get(name))
    {
        return Some((channel, Resolution::SelfSet));
    }
    if let Some(requested) = device.default_channel {
        return app
            .channels
            .get(requested)
            .filter(|c| (c.spec.public || c.spec.allow_device_self_set) && serves(c))
            .map(|c| (c, Resolution::Requested));
    }
    if let Some(channel) = app.channels.values().find(|c| c.spec.public && serves(c)) {
        return Some((channel, Resolution::Public));
    }
    app.default_channel
        .as_ref()
        .and_then(|name| app.channels.get(name))
        .map(|c| (c, Resolution::AppDefault))
}

/// What channel resolution reads of a device (an update check, or a stats event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceChannelInputs<'a> {
    /// `device_id`, lower-cased.
    pub device_id: &'a str,
    /// The platform; None when the device sent one the server does not serve (then only a
    /// pinned or self-set channel can resolve).
    pub platform: Option<Platform>,
    /// `defaultChannel`, when not empty.
    pub default_channel: Option<&'a str>,
}

/// The channel an update check of this device would resolve now, by the same rules as
/// [`decide_update`]; None when no channel matches.
pub fn device_channel<'a>(
    app: &'a AppView,
    device: &DeviceChannelInputs<'_>,
    facts: &DeviceFacts,
) -> Option<&'a ChannelView> {
    resolve_channel(app, device, facts).map(|(channel, _)| channel)
}

/// The target of a device on a channel: the rollout's candidate when the device is in the cohort
/// and has not reported it failed, else the stable target.
fn target<'a>(
    channel: &'a ChannelView,
    check: &UpdateCheck,
    facts: &DeviceFacts,
) -> (Target<'a>, Option<&'a str>) {
    if let Some(rollout) = &channel.rollout {
        let failed = facts
            .failed_versions
            .iter()
            .any(|v| *v == rollout.candidate.version);
        if !failed && cohort::in_cohort(&rollout.salt, &check.device_id, rollout.percent) {
            return (Target::Bundle(&rollout.candidate), Some(rollout.name.as_str()));
        }
    }
    let stable = match &channel.stable {
        StableTarget::Builtin => Target::Builtin,
        StableTarget::Bundle(bundle) => Target::Bundle(bundle),
        StableTarget::Unavailable { bundle, reason } => Target::Unavailable(bundle, reason),
    };
    (stable, None)
}

/// With `updatePath: stepwise`: the release of the channel's history the device takes next on
/// its way to `target`, the lowest above the device's version, up to the channel's stable bundle
/// and below `target` (so a rollout's candidate is the step after the stable bundle, for its
/// cohort only). None: `target` itself comes next (the device is one release behind it, runs
/// it, or runs something above it: a channel moved back is followed as with `latest`).
///
/// A device on the builtin assets counts as its native version; a version that is not semver
/// counts as below every release.
fn stepwise_step<'a>(
    channel: &'a ChannelView,
    target: &Arc<BundleView>,
    check: &UpdateCheck,
) -> Option<&'a Arc<BundleView>> {
    if channel.spec.update_path != UpdatePath::Stepwise {
        return None;
    }
    let StableTarget::Bundle(stable) = &channel.stable else {
        return None;
    };
    let device = super::version::coerce_native_version(&check.version_name);
    channel
        .history
        .iter()
        .filter(|step| step.semver <= stable.semver && step.semver < target.semver)
        .find(|step| device.as_ref().is_none_or(|device| step.semver > *device))
}

enum Target<'a> {
    Builtin,
    Bundle(&'a Arc<BundleView>),
    Unavailable(&'a str, &'a str),
}

/// Answers an update check.
pub fn decide_update(snapshot: &Snapshot, check: &UpdateCheck, facts: &DeviceFacts) -> UpdateAnswer {
    let Some(app) = snapshot.app(&check.app_id) else {
        return no_update(
            Refusal::UnknownApp,
            format!("No app with app_id {} is served here", check.app_id),
        );
    };
    if !app.platforms.contains(&check.platform) {
        return no_update(
            Refusal::DisabledPlatform(check.platform),
            format!("App {} is not built for this platform", check.app_id),
        );
    }
    let Some(native) = &check.native_version else {
        return if check.version_build.eq_ignore_ascii_case("unknown") {
            no_update(
                Refusal::UnknownVersionBuild,
                "The native version (version_build) is unknown",
            )
        } else {
            no_update(
                Refusal::SemverError,
                format!("The native version {} is not a version", check.version_build),
            )
        };
    };
    let features = plugin_features(&check.plugin_version);
    if features.unsupported {
        return no_update(
            Refusal::UnsupportedPluginVersion,
            format!(
                "Plugin {} is not supported; use 5.0.0 or later",
                check.plugin_version
            ),
        );
    }
    let device = DeviceChannelInputs {
        device_id: &check.device_id,
        platform: Some(check.platform),
        default_channel: check.default_channel.as_deref(),
    };
    let Some((channel, resolution)) = resolve_channel(app, &device, facts) else {
        return no_update(Refusal::NoChannel, "No channel matches this device");
    };
    let with_channel = |answer: UpdateAnswer| match answer {
        UpdateAnswer::NoUpdate(mut no) => {
            no.channel = Some(channel.name.clone());
            UpdateAnswer::NoUpdate(no)
        }
        other => other,
    };
    let (target, rollout) = target(channel, check, facts);
    let bundle = match target {
        Target::Unavailable(bundle, reason) => {
            return with_channel(no_update(
                Refusal::NoBundle,
                format!("Bundle {bundle} cannot be served: {reason}"),
            ));
        }
        Target::Builtin => return with_channel(builtin_answer(channel, check, features)),
        Target::Bundle(bundle) => bundle,
    };
    // Every guard below judges the step the device is offered, so a step a guard refuses stops
    // the walk with the answer that guard gives.
    let (bundle, rollout) = match stepwise_step(channel, bundle, check) {
        Some(step) => (step, None),
        None => (bundle, rollout),
    };
    if let (Some(device_key), Some(app_key)) = (&check.key_id, &app.key_id)
        && features.key_id_enforced
        && !app_key.starts_with(device_key.as_str())
        && !device_key.starts_with(app_key.as_str())
    {
        return with_channel(no_update(
            Refusal::KeyIdMismatch,
            "The device's public key is not the App's public key",
        ));
    }
    if check.version_name == bundle.version {
        return with_channel(no_update(
            Refusal::NoNewVersionAvailable,
            "No new version available",
        ));
    }
    if let Some(refusal) = policy_refusal(channel, resolution, check, native, bundle) {
        return with_channel(refusal);
    }
    if facts.failed_versions.iter().any(|v| *v == bundle.version) {
        return with_channel(blocked(
            Refusal::BundleFailedOnDevice,
            format!(
                "Version {} failed on this device and is not offered again",
                bundle.version
            ),
            bundle,
            &check.version_name,
            false,
        ));
    }
    if channel.spec.require_signed && bundle.encryption.is_none() {
        return with_channel(no_update(
            Refusal::UnsignedBundle,
            format!(
                "Channel {} only serves signed bundles and {} is not signed",
                channel.name, bundle.version
            ),
        ));
    }
    let device_has_key = check.key_id.is_some() || (app.key_id.is_some() && !features.sends_key_id);
    match (&bundle.encryption, device_has_key) {
        (Some(_), false) if features.sends_key_id => {
            return with_channel(no_update(
                Refusal::EncryptionMismatch,
                format!(
                    "Version {} is encrypted and this device has no public key",
                    bundle.version
                ),
            ));
        }
        (None, true) if check.key_id.is_some() => {
            return with_channel(no_update(
                Refusal::EncryptionMismatch,
                format!(
                    "Version {} is not encrypted and this device expects encrypted bundles",
                    bundle.version
                ),
            ));
        }
        _ => {}
    }
    let (checksum, session_key) = match &bundle.encryption {
        Some(encryption) => (
            encryption.encrypted_checksum.clone(),
            encryption.session_key.clone(),
        ),
        // Plugins before the SHA-256 switch computed CRC32; an empty checksum skips their check.
        None if features.sha256_checksum => (bundle.sha256.clone(), String::new()),
        None => (String::new(), String::new()),
    };
    UpdateAnswer::Offer(Offer {
        bundle: Arc::clone(bundle),
        channel: channel.name.clone(),
        rollout: rollout.map(str::to_owned),
        checksum,
        session_key,
        with_manifest: features.manifest && bundle.manifest.is_some(),
        with_metadata: features.metadata
            && app.expose_metadata
            && (bundle.link.is_some() || bundle.comment.is_some()),
    })
}

fn builtin_answer(channel: &ChannelView, check: &UpdateCheck, features: PluginFeatures) -> UpdateAnswer {
    if check.on_builtin || check.version_name == check.version_build {
        return no_update(Refusal::AlreadyOnBuiltin, "Already on builtin");
    }
    if !features.revert_to_builtin {
        return no_update(
            Refusal::RevertToBuiltinPluginVersionTooOld,
            format!(
                "Reverting to builtin needs plugin 6.2.0 or later, not {}",
                check.plugin_version
            ),
        );
    }
    UpdateAnswer::RevertToBuiltin {
        channel: channel.name.clone(),
    }
}

fn blocked(refusal: Refusal, message: String, bundle: &BundleView, old: &str, major: bool) -> UpdateAnswer {
    UpdateAnswer::NoUpdate(NoUpdate {
        refusal,
        message,
        version: Some(bundle.version.clone()),
        old: Some(old.to_owned()),
        major,
        channel: None,
    })
}

/// The channel's policies, in Capgo's order (platform, major, private channel, minor, patch,
/// metadata, under native, prod, dev, device, emulator), then the bundle's native minimum.
fn policy_refusal(
    channel: &ChannelView,
    resolution: Resolution,
    check: &UpdateCheck,
    native: &Version,
    bundle: &BundleView,
) -> Option<UpdateAnswer> {
    let spec = &channel.spec;
    let target = &bundle.semver;
    let native_text = check.version_build.as_str();
    let semver_block = |refusal: Refusal, what: &str| {
        Some(blocked(
            refusal,
            format!(
                "Cannot update automatically to {} from native {native_text}: {what}",
                bundle.version
            ),
            bundle,
            native_text,
            true,
        ))
    };
    if !channel.serves_platform(check.platform) {
        return Some(blocked(
            Refusal::DisabledPlatform(check.platform),
            format!("Channel {} does not serve this platform", channel.name),
            bundle,
            &check.version_name,
            false,
        ));
    }
    if spec.disable_auto_update == AutoUpdateLimit::Major && target.major > native.major {
        return semver_block(
            Refusal::DisableAutoUpdateToMajor,
            "a new major version needs a store update",
        );
    }
    let private = !spec.public && !spec.allow_device_self_set;
    if private && resolution != Resolution::Pinned {
        return Some(no_update(
            Refusal::CannotUpdateViaPrivateChannel,
            format!("Channel {} is private", channel.name),
        ));
    }
    match spec.disable_auto_update {
        AutoUpdateLimit::Minor if target.major != native.major || target.minor != native.minor => {
            return semver_block(
                Refusal::DisableAutoUpdateToMinor,
                "the channel allows patch updates only",
            );
        }
        AutoUpdateLimit::Patch
            if (target.major, target.minor, target.patch) != (native.major, native.minor, native.patch) =>
        {
            return semver_block(
                Refusal::DisableAutoUpdateToPatch,
                "the channel allows no version change",
            );
        }
        AutoUpdateLimit::Metadata => {
            let Some(minimum) = spec
                .min_update_version
                .as_deref()
                .and_then(super::version::coerce_native_version)
            else {
                // Capgo's answer when the metadata rule has nothing to compare with (the API
                // server's validation prevents it; a standalone folder may not).
                return Some(blocked(
                    Refusal::MisconfiguredChannel,
                    format!(
                        "Channel {} limits updates by metadata but has no valid minUpdateVersion",
                        channel.name
                    ),
                    bundle,
                    native_text,
                    false,
                ));
            };
            if minimum > *native {
                return semver_block(
                    Refusal::DisableAutoUpdateToMetadata,
                    "the native build is older than the channel's minUpdateVersion",
                );
            }
        }
        _ => {}
    }
    if spec.disable_auto_update_under_native && target < native {
        return Some(blocked(
            Refusal::DisableAutoUpdateUnderNative,
            format!(
                "Version {} is older than the native build {native_text}",
                bundle.version
            ),
            bundle,
            native_text,
            false,
        ));
    }
    let device_rule = if check.is_prod && !spec.allow_prod {
        Some((Refusal::DisableProdBuild, "production builds"))
    } else if !check.is_prod && !spec.allow_dev {
        Some((Refusal::DisableDevBuild, "development builds"))
    } else if !check.is_emulator && !spec.allow_physical_device {
        Some((Refusal::DisableDevice, "physical devices"))
    } else if check.is_emulator && !spec.allow_emulator {
        Some((Refusal::DisableEmulator, "emulators"))
    } else {
        None
    };
    if let Some((refusal, what)) = device_rule {
        return Some(blocked(
            refusal,
            format!("Channel {} does not serve {what}", channel.name),
            bundle,
            &check.version_name,
            false,
        ));
    }
    if let Some(minimum) = &bundle.min_native_version
        && native < minimum
    {
        return Some(blocked(
            Refusal::NativeVersionTooOld,
            format!("Version {} needs native {minimum} or later", bundle.version),
            bundle,
            native_text,
            false,
        ));
    }
    None
}

#[cfg(test)]
mod stepwise_tests;
#[cfg(test)]
mod tests;
