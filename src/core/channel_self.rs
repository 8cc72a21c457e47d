//! `/channel_self`: a device asks which channel it is on, lists the channels it may pick, or
//! moves itself to one. Pure decisions over the snapshot and what the store knows.

use sha2::{Digest, Sha256};

use super::{
    snapshot::{AppView, ChannelView, Snapshot},
    version::plugin_features,
};
use crate::api::app::Platform;

/// A `/channel_self` request, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelQuery {
    /// `app_id`.
    pub app_id: String,
    /// `device_id`, lower-cased.
    pub device_id: String,
    /// `platform`.
    pub platform: Platform,
    /// `channel` (set requests), when not empty.
    pub channel: Option<String>,
    /// `defaultChannel`, when not empty.
    pub default_channel: Option<String>,
    /// `plugin_version`.
    pub plugin_version: semver::Version,
    /// `is_emulator`.
    pub is_emulator: bool,
    /// `is_prod`.
    pub is_prod: bool,
}

/// A channel a device may pick (the list answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChannel {
    /// A stable numeric id (the plugin needs a number), the same on every replica.
    pub id: u32,
    /// The channel's name.
    pub name: String,
    /// `public`.
    pub public: bool,
    /// `allowDeviceSelfSet`.
    pub allow_self_set: bool,
}

/// A change to the server-side channel override of a device (plugins before local channel
/// storage keep their choice on the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideChange {
    /// Pin the device to this channel.
    Set(String),
    /// Remove the device's override.
    Clear,
}

/// The outcome of a `/channel_self` request.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelOutcome {
    /// The device may use the channel.
    SetOk,
    /// The channel the device is on.
    Current {
        /// Its name.
        channel: String,
        /// Whether the device was moved there (pinned, or by its own choice) rather than by default.
        overridden: bool,
        /// Whether devices may move themselves to it.
        allow_set: bool,
    },
    /// The channels the device may pick.
    List(Vec<ListedChannel>),
    /// The override was removed.
    UnsetOk,
    /// Refused, with the wire error code.
    Refused {
        /// The error code.
        code: &'static str,
        /// A sentence for people.
        message: String,
        /// The channel concerned.
        channel: Option<String>,
    },
}

/// The outcome plus what the store must change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelDecision {
    /// What the device is told.
    pub outcome: ChannelOutcome,
    /// A server-side override change to record.
    pub change: Option<OverrideChange>,
}

fn refused(code: &'static str, message: impl Into<String>, channel: Option<&str>) -> ChannelDecision {
    ChannelDecision {
        outcome: ChannelOutcome::Refused {
            code,
            message: message.into(),
            channel: channel.map(str::to_owned),
        },
        change: None,
    }
}

/// A stable positive id for a channel name.
pub fn channel_id(name: &str) -> u32 {
    let digest = Sha256::digest(name.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) & 0x7fff_ffff
}

fn admits_device(channel: &ChannelView, query: &ChannelQuery) -> bool {
    let spec = &channel.spec;
    channel.serves_platform(query.platform)
        && if query.is_emulator {
            spec.allow_emulator
        } else {
            spec.allow_physical_device
        }
        && if query.is_prod {
            spec.allow_prod
        } else {
            spec.allow_dev
        }
}

fn app<'a>(snapshot: &'a Snapshot, query: &ChannelQuery) -> Result<&'a AppView, ChannelDecision> {
    snapshot
        .app(&query.app_id)
        .map(|app| app.as_ref())
        .ok_or_else(|| {
            refused(
                "unknown_app",
                format!("No app with app_id {} is served here", query.app_id),
                None,
            )
        })
}

/// `POST`: the device wants to move to `query.channel`. `current_override` is the channel the
/// store holds for it.
pub fn set_channel(snapshot: &Snapshot, query: &ChannelQuery) -> ChannelDecision {
    let app = match app(snapshot, query) {
        Ok(app) => app,
        Err(decision) => return decision,
    };
    let Some(requested) = query.channel.as_deref() else {
        return refused("missing_channel", "channel is missing", None);
    };
    let Some(channel) = app.channels.get(requested) else {
        return refused(
            "channel_not_found",
            format!("Channel {requested} does not exist"),
            Some(requested),
        );
    };
    if !admits_device(channel, query) {
        return refused(
            "channel_self_set_not_allowed",
            format!("Channel {requested} does not serve this device"),
            Some(requested),
        );
    }
    let server_side = !plugin_features(&query.plugin_version).local_channel_storage;
    if channel.spec.allow_device_self_set {
        let change = server_side.then(|| OverrideChange::Set(requested.to_owned()));
        return ChannelDecision {
            outcome: ChannelOutcome::SetOk,
            change,
        };
    }
    if channel.spec.public {
        // Moving to the public channel is moving back to the default: drop any override.
        let change = server_side.then_some(OverrideChange::Clear);
        return ChannelDecision {
            outcome: ChannelOutcome::SetOk,
            change,
        };
    }
    refused(
        "channel_self_set_not_allowed",
        format!("Devices may not move themselves to channel {requested}"),
        Some(requested),
    )
}

/// `PUT`: the channel the update check would use for this device.
pub fn current_channel(
    snapshot: &Snapshot,
    query: &ChannelQuery,
    current_override: Option<&str>,
) -> ChannelDecision {
    let app = match app(snapshot, query) {
        Ok(app) => app,
        Err(decision) => return decision,
    };
    let pinned = app.device_overrides.get(&query.device_id).map(String::as_str);
    let chosen = pinned
        .or(current_override)
        .or(query.channel.as_deref())
        .or(query.default_channel.as_deref());
    let resolved = match chosen.and_then(|name| app.channels.get(name)) {
        Some(channel) => Some((channel, true)),
        None => app
            .channels
            .values()
            .find(|c| c.spec.public && c.serves_platform(query.platform))
            .or_else(|| {
                app.default_channel
                    .as_ref()
                    .and_then(|name| app.channels.get(name))
            })
            .map(|c| (c, false)),
    };
    match resolved {
        Some((channel, overridden)) => ChannelDecision {
            outcome: ChannelOutcome::Current {
                channel: channel.name.clone(),
                overridden,
                allow_set: channel.spec.allow_device_self_set,
            },
            change: None,
        },
        None => refused("channel_not_found", "No channel serves this device", None),
    }
}

/// `GET`: the channels this device may pick: public or self-assignable, and admitting its
/// platform and kind of build and device.
pub fn list_channels(snapshot: &Snapshot, query: &ChannelQuery) -> ChannelDecision {
    let app = match app(snapshot, query) {
        Ok(app) => app,
        Err(decision) => return decision,
    };
    let list = app
        .channels
        .values()
        .filter(|c| (c.spec.public || c.spec.allow_device_self_set) && admits_device(c, query))
        .map(|c| ListedChannel {
            id: channel_id(&c.name),
            name: c.name.clone(),
            public: c.spec.public,
            allow_self_set: c.spec.allow_device_self_set,
        })
        .collect();
    ChannelDecision {
        outcome: ChannelOutcome::List(list),
        change: None,
    }
}

/// `DELETE` (plugins before local channel storage): remove the device's server-side override.
pub fn unset_channel(
    snapshot: &Snapshot,
    query: &ChannelQuery,
    current_override: Option<&str>,
) -> ChannelDecision {
    if let Err(decision) = app(snapshot, query) {
        return decision;
    }
    match current_override {
        Some(_) => ChannelDecision {
            outcome: ChannelOutcome::UnsetOk,
            change: Some(OverrideChange::Clear),
        },
        None => refused(
            "cannot_override",
            "This device has no channel of its own to remove",
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::fixtures::*;

    fn query(plugin: &str, channel: Option<&str>) -> ChannelQuery {
        ChannelQuery {
            app_id: APP_ID.into(),
            device_id: DEVICE.into(),
            platform: Platform::Android,
            channel: channel.map(str::to_owned),
            default_channel: None,
            plugin_version: semver::Version::parse(plugin).unwrap(),
            is_emulator: false,
            is_prod: true,
        }
    }

    fn world() -> Snapshot {
        let mut inputs = inputs();
        inputs
            .channels
            .push(channel("internal", Some("shop-1.4.2"), json!({})));
        inputs.channels.push(channel(
            "ios-beta",
            Some("shop-1.4.2"),
            json!({"allowDeviceSelfSet": true, "android": false}),
        ));
        snapshot(&inputs)
    }

    fn code(decision: &ChannelDecision) -> &'static str {
        match &decision.outcome {
            ChannelOutcome::Refused { code, .. } => code,
            _ => "ok",
        }
    }

    #[test]
    fn new_plugins_only_validate_and_old_plugins_store_the_choice() {
        let snap = world();
        let new = set_channel(&snap, &query("8.51.14", Some("beta")));
        assert_eq!((new.outcome, new.change), (ChannelOutcome::SetOk, None));
        let old = set_channel(&snap, &query("7.33.0", Some("beta")));
        assert_eq!(old.change, Some(OverrideChange::Set("beta".into())));
        // Moving an old plugin to the public channel removes its override.
        assert_eq!(
            set_channel(&snap, &query("5.9.0", Some("production"))).change,
            Some(OverrideChange::Clear)
        );
    }

    #[test]
    fn set_refusals() {
        let snap = world();
        assert_eq!(
            code(&set_channel(&snap, &query("8.51.14", None))),
            "missing_channel"
        );
        assert_eq!(
            code(&set_channel(&snap, &query("8.51.14", Some("nope")))),
            "channel_not_found"
        );
        assert_eq!(
            code(&set_channel(&snap, &query("8.51.14", Some("internal")))),
            "channel_self_set_not_allowed"
        );
        assert_eq!(
            code(&set_channel(&snap, &query("8.51.14", Some("ios-beta")))),
            "channel_self_set_not_allowed"
        );
        let mut other = query("8.51.14", Some("beta"));
        other.app_id = "com.example.other".into();
        assert_eq!(code(&set_channel(&snap, &other)), "unknown_app");
    }

    #[test]
    fn get_answers_the_channel_the_update_check_would_use() {
        let snap = world();
        let current = |q: &ChannelQuery, o: Option<&str>| current_channel(&snap, q, o).outcome;
        assert_eq!(
            current(&query("8.51.14", None), None),
            ChannelOutcome::Current {
                channel: "production".into(),
                overridden: false,
                allow_set: false
            }
        );
        assert_eq!(
            current(&query("7.33.0", None), Some("beta")),
            ChannelOutcome::Current {
                channel: "beta".into(),
                overridden: true,
                allow_set: true
            }
        );
        let mut q = query("8.51.14", None);
        q.default_channel = Some("beta".into());
        assert!(
            matches!(current(&q, None), ChannelOutcome::Current { channel, overridden: true, .. } if channel == "beta")
        );
        q.platform = Platform::Electron;
        q.default_channel = None;
        let mut inputs = inputs();
        inputs.channels = vec![channel(
            "production",
            Some("shop-1.4.2"),
            json!({"public": true, "electron": false}),
        )];
        assert_eq!(
            code(&current_channel(&snapshot(&inputs), &q, None)),
            "channel_not_found"
        );
    }

    #[test]
    fn the_list_holds_what_the_device_may_pick_with_stable_numeric_ids() {
        let snap = world();
        let ChannelOutcome::List(list) = list_channels(&snap, &query("8.51.14", None)).outcome else {
            panic!()
        };
        let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["beta", "production"]);
        assert_eq!(list[0].id, channel_id("beta"));
        assert!(list.iter().all(|c| c.id > 0 && c.id <= i32::MAX as u32));
        let mut ios = query("8.51.14", None);
        ios.platform = Platform::Ios;
        let ChannelOutcome::List(list) = list_channels(&snap, &ios).outcome else {
            panic!()
        };
        assert_eq!(list.len(), 3);
    }

    #[test]
    fn unset_removes_a_server_side_override() {
        let snap = world();
        let q = query("7.33.0", None);
        assert_eq!(
            unset_channel(&snap, &q, Some("beta")).change,
            Some(OverrideChange::Clear)
        );
        assert_eq!(code(&unset_channel(&snap, &q, None)), "cannot_override");
    }
}
