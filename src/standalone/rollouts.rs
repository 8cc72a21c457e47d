//! Rollouts in standalone mode, driven by the same pure core as the controller
//! ([`crate::core::rollout`]), with their state kept in the device store instead of a status
//! subresource.
//!
//! On every load of the folder and whenever the core asks to look again (`requeue_at`), each
//! Rollout is decided with its last status by [`crate::core::rollout::decide`]: validation, then
//! progress from the channel's stable bundle (a recorded promotion, else `spec.bundleRef`), the
//! candidate's sync state, the failure figures the device store counted since
//! [`figures_since`] and the measurements of the analysis metrics (through the source the
//! driver was given, [`RolloutDriver::open`]). A status that changed is
//! saved (and durable) before it is served or its events are logged, so a killed process resumes
//! at the same step with the same cohort. Standalone mode has no Kubernetes Events: each event
//! of a plan is logged (info, or warn for a failure or an abort).
//!
//! Commands are the cluster's annotations (`ota.dev/promote`, `ota.dev/pause`, ...) written on the
//! Rollout's YAML: the core reads them from the object and acts once per value.
//!
//! A completed Rollout's candidate is recorded as its channel's promoted stable bundle (over the
//! channel's `spec.bundleRef` of that moment, as the controller records `status.promoted`), saved
//! before the status that says Completed, so a crash between the two loses nothing.
//!
//! Rows of the store's `rollout_states` table: a Rollout's status under its own name, a channel's
//! promotion under `Channel/<name>` (a `/` is never in an object name, so the two cannot meet).
//! State of a Rollout or Channel that left the folder is forgotten, but only after a load in which
//! every document was read, so a half-saved edit does not reset a rollout.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{
    api::{
        Channel, Rollout, RolloutStatus,
        channel::{ChannelStatus, PromotedBundle},
    },
    clock::Clock,
    core::rollout::{EventKind, FailureCounts, RolloutEvent, promotion_released},
    devices::{DeviceStore, StoreError},
    rollout_driver::{self, FiguresSource, SharedMetricSource, StatusSink, Write},
};

pub use crate::{core::rollout::FiguresQuery, rollout_driver::Objects};

/// Why a state could not be saved.
#[derive(Debug, thiserror::Error)]
enum SaveError {
    /// It could not be encoded.
    #[error("encoding the state: {0}")]
    Encode(#[from] serde_json::Error),
    /// The device store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How soon a decision whose state could not be saved is tried again.
const SAVE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The prefix of the store key of a channel's promotion.
const CHANNEL_KEY_PREFIX: &str = "Channel/";

/// `(namespace, name)` of an object.
pub type ObjectKey = (String, String);

fn key_of(meta: &kube::api::ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// One row of the store's `rollout_states`, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StoredState {
    /// A Rollout's last status.
    Rollout {
        /// The status.
        status: Box<RolloutStatus>,
    },
    /// The candidate a completed Rollout made a channel's stable bundle.
    Channel {
        /// The promotion.
        promoted: PromotedBundle,
    },
}

/// The states read back from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct States {
    /// Rollout statuses.
    pub rollouts: BTreeMap<ObjectKey, RolloutStatus>,
    /// Channel promotions.
    pub promotions: BTreeMap<ObjectKey, PromotedBundle>,
    /// Rows that could not be read, and why (they are ignored).
    pub unreadable: Vec<String>,
}

impl States {
    /// Sorts the rows of the store into statuses and promotions.
    pub fn from_rows(rows: &[crate::devices::RolloutStateRow]) -> States {
        let mut states = States::default();
        for row in rows {
            let what = format!("{}/{}", row.namespace, row.name);
            match serde_json::from_str::<StoredState>(&row.json) {
                Ok(StoredState::Rollout { status }) if !row.name.contains('/') => {
                    states
                        .rollouts
                        .insert((row.namespace.clone(), row.name.clone()), *status);
                }
                Ok(StoredState::Channel { promoted }) => match row.name.strip_prefix(CHANNEL_KEY_PREFIX) {
                    Some(channel) => {
                        states
                            .promotions
                            .insert((row.namespace.clone(), channel.to_owned()), promoted);
                    }
                    None => states
                        .unreadable
                        .push(format!("{what}: a channel promotion under a Rollout's name")),
                },
                Ok(StoredState::Rollout { .. }) => states
                    .unreadable
                    .push(format!("{what}: a Rollout status under a channel's name")),
                Err(error) => states
                    .unreadable
                    .push(format!("{what}: not a saved rollout state: {error}")),
            }
        }
        states
    }
}

/// Reads every saved state (for people and tests: what `kubectl get rollout` shows in a cluster).
pub async fn read_states(store: &DeviceStore) -> Result<States, StoreError> {
    Ok(States::from_rows(&store.rollout_states().await?))
}

/// `channels` with the recorded promotions in their status.
pub fn with_promotions(
    channels: &[Channel],
    promotions: &BTreeMap<ObjectKey, PromotedBundle>,
) -> Vec<Channel> {
    channels
        .iter()
        .map(|channel| {
            let mut channel = channel.clone();
            if let Some(promoted) = promotions.get(&key_of(&channel.metadata)) {
                let status = channel.status.get_or_insert_with(ChannelStatus::default);
                status.promoted = Some(promoted.clone());
            }
            channel
        })
        .collect()
}

/// `rollouts` with their last statuses.
pub fn with_statuses(rollouts: &[Rollout], statuses: &BTreeMap<ObjectKey, RolloutStatus>) -> Vec<Rollout> {
    rollouts
        .iter()
        .map(|rollout| {
            let mut rollout = rollout.clone();
            rollout.status = statuses.get(&key_of(&rollout.metadata)).cloned();
            rollout
        })
        .collect()
}

/// Logs an event of a plan (standalone mode's Kubernetes Events).
fn log_event(rollout: &ObjectKey, event: &RolloutEvent) {
    let (namespace, name) = rollout;
    match event.kind {
        EventKind::Normal => {
            tracing::info!(kind = "Rollout", %namespace, %name, reason = event.reason, "{}", event.note)
        }
        EventKind::Warning => {
            tracing::warn!(kind = "Rollout", %namespace, %name, reason = event.reason, "{}", event.note)
        }
    }
}

/// The folder's objects as one load gave them.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    /// Apps, Channels (as written) and Bundles (with their sync status).
    pub objects: Objects<'a>,
    /// The Rollouts, as written (no status).
    pub rollouts: &'a [Rollout],
    /// Every document of the folder was read: state of objects that are gone may be forgotten.
    pub complete: bool,
}

/// Drives the folder's Rollouts and keeps their state in the device store.
pub struct RolloutDriver {
    store: DeviceStore,
    states: States,
    metrics: Arc<dyn SharedMetricSource>,
}

impl RolloutDriver {
    /// Reads the saved states (rows that cannot be read are reported and ignored); `metrics`
    /// measures the Rollouts' analysis metrics.
    pub async fn open(
        store: DeviceStore,
        metrics: Arc<dyn SharedMetricSource>,
    ) -> Result<RolloutDriver, StoreError> {
        let states = read_states(&store).await?;
        for problem in &states.unreadable {
            tracing::warn!(%problem, "a saved rollout state is ignored");
        }
        tracing::info!(
            rollouts = states.rollouts.len(),
            promotions = states.promotions.len(),
            "rollout states loaded"
        );
        Ok(RolloutDriver {
            store,
            states,
            metrics,
        })
    }

    /// The states as they are now.
    pub fn states(&self) -> &States {
        &self.states
    }

    /// The Rollouts with their statuses and the Channels with their promotions, to serve.
    pub fn served(&self, load: &Load<'_>) -> (Vec<Rollout>, Vec<Channel>) {
        (
            with_statuses(load.rollouts, &self.states.rollouts),
            with_promotions(load.objects.channels, &self.states.promotions),
        )
    }

    /// Decides every Rollout of `load` at `now` ([`rollout_driver::drive`] through the device
    /// store's ports), saving each state that changed before keeping it, and logging the events
    /// of each saved decision. Returns when to decide again (`None`: only a change of the folder
    /// matters).
    pub async fn drive(&mut self, load: &Load<'_>, now: Timestamp) -> Option<Timestamp> {
        if load.complete {
            self.forget_missing(load).await;
        }
        let mut channels = with_promotions(load.objects.channels, &self.states.promotions);
        let mut rollouts: Vec<&Rollout> = load.rollouts.iter().collect();
        rollouts.sort_by_key(|r| key_of(&r.metadata));
        let mut next: Option<Timestamp> = None;
        let mut wake_at = |at: Timestamp| next = Some(next.map_or(at, |n: Timestamp| n.min(at)));
        for written in rollouts {
            let key = key_of(&written.metadata);
            let mut rollout = written.clone();
            rollout.status = self.states.rollouts.get(&key).cloned();
            let objects = Objects {
                channels: &channels,
                ..load.objects
            };
            let mut figures = StoreFigures { store: &self.store };
            let mut sink = StoreStatus {
                store: &self.store,
                states: &mut self.states,
                now,
                promoted: false,
            };
            let mut metrics = Arc::clone(&self.metrics);
            match rollout_driver::drive(&rollout, objects, &mut figures, &mut metrics, &mut sink, now).await {
                Ok(driven) => driven.requeue_at.into_iter().for_each(&mut wake_at),
                Err(failed) => {
                    let error = failed.source;
                    match failed.write {
                        Write::Promotion => {
                            tracing::warn!(kind = "Rollout", namespace = %key.0, name = %key.1, %error, "cannot record the completed rollout's candidate as the channel's stable bundle; trying again")
                        }
                        Write::Status => {
                            tracing::warn!(kind = "Rollout", namespace = %key.0, name = %key.1, %error, "cannot save the rollout's state; it is not served and will be decided again")
                        }
                    }
                    failed.requeue_at.into_iter().for_each(&mut wake_at);
                    wake_at(retry_at(now));
                }
            }
            if sink.promoted {
                channels = with_promotions(load.objects.channels, &self.states.promotions);
            }
        }
        next
    }

    /// Forgets the state of Rollouts that left the folder, and the promotions of Channels that
    /// left it or whose `spec.bundleRef` changed since (git's choice then stands, also when it
    /// later returns to the bundleRef the promotion was made over).
    async fn forget_missing(&mut self, load: &Load<'_>) {
        let rollouts: BTreeSet<ObjectKey> = load.rollouts.iter().map(|r| key_of(&r.metadata)).collect();
        let channels: BTreeMap<ObjectKey, &Channel> = load
            .objects
            .channels
            .iter()
            .map(|c| (key_of(&c.metadata), c))
            .collect();
        let gone_rollouts: Vec<ObjectKey> = self
            .states
            .rollouts
            .keys()
            .filter(|k| !rollouts.contains(*k))
            .cloned()
            .collect();
        let released_channels: Vec<ObjectKey> = self
            .states
            .promotions
            .iter()
            .filter(|(key, promoted)| promotion_released(promoted, channels.get(*key).copied()))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone_rollouts {
            if self.forget(&key.0, &key.1, "Rollout", &key).await {
                self.states.rollouts.remove(&key);
            }
        }
        for key in released_channels {
            let name = format!("{CHANNEL_KEY_PREFIX}{}", key.1);
            if self.forget(&key.0, &name, "Channel promotion", &key).await {
                self.states.promotions.remove(&key);
            }
        }
    }

    /// Deletes one saved state; whether it is gone.
    async fn forget(&self, namespace: &str, name: &str, what: &str, object: &ObjectKey) -> bool {
        let (object_namespace, object_name) = object;
        match self.store.delete_rollout_state(namespace, name).await {
            Ok(_) => {
                tracing::info!(namespace = %object_namespace, name = %object_name, "{what} state forgotten: its object left the folder or changed");
                true
            }
            Err(error) => {
                tracing::warn!(namespace = %object_namespace, name = %object_name, %error, "cannot forget the {what} state");
                false
            }
        }
    }
}

/// Sleeps until `clock` reaches `at`, or forever for `None`.
pub async fn sleep_until(clock: &dyn Clock, at: Option<Timestamp>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The failure figures port in standalone mode: what the device store counted.
struct StoreFigures<'a> {
    store: &'a DeviceStore,
}

impl FiguresSource for StoreFigures<'_> {
    async fn figures(
        &mut self,
        rollout: &Rollout,
        _channel: &Channel,
        query: &FiguresQuery,
    ) -> Option<FailureCounts> {
        match self
            .store
            .outcome_figures(&query.app_id, &query.channel, &query.version, query.since_ms)
            .await
        {
            Ok(figures) => Some(FailureCounts {
                attempts: i64::try_from(figures.attempts).unwrap_or(i64::MAX),
                failures: i64::try_from(figures.failures).unwrap_or(i64::MAX),
            }),
            Err(error) => {
                let (namespace, name) = key_of(&rollout.metadata);
                tracing::warn!(kind = "Rollout", %namespace, %name, %error, "cannot read the failure figures; the analysis waits");
                None
            }
        }
    }
}

/// The status port in standalone mode: rows of the device store (kept in `states` once saved)
/// and logs for events.
struct StoreStatus<'a> {
    store: &'a DeviceStore,
    states: &'a mut States,
    now: Timestamp,
    /// A promotion was recorded (the channels a later decision reads changed).
    promoted: bool,
}

impl StoreStatus<'_> {
    async fn save(&self, namespace: &str, name: &str, state: &StoredState) -> Result<(), SaveError> {
        let json = serde_json::to_string(state)?;
        Ok(self
            .store
            .save_rollout_state(namespace, name, &json, self.now.as_millisecond())
            .await?)
    }
}

impl StatusSink for StoreStatus<'_> {
    type Error = SaveError;

    async fn record_promotion(
        &mut self,
        _rollout: &Rollout,
        channel: &Channel,
        promoted: PromotedBundle,
    ) -> Result<(), SaveError> {
        let channel_key = key_of(&channel.metadata);
        let state = StoredState::Channel {
            promoted: promoted.clone(),
        };
        let name = format!("{CHANNEL_KEY_PREFIX}{}", channel_key.1);
        self.save(&channel_key.0, &name, &state).await?;
        tracing::info!(kind = "Channel", namespace = %channel_key.0, name = %channel_key.1, bundle = %promoted.bundle, "recorded as the channel's stable bundle");
        self.states.promotions.insert(channel_key, promoted);
        self.promoted = true;
        Ok(())
    }

    async fn write_status(&mut self, rollout: &Rollout, status: &RolloutStatus) -> Result<bool, SaveError> {
        let key = key_of(&rollout.metadata);
        let state = StoredState::Rollout {
            status: Box::new(status.clone()),
        };
        self.save(&key.0, &key.1, &state).await?;
        self.states.rollouts.insert(key, status.clone());
        Ok(true)
    }

    async fn publish(&mut self, rollout: &Rollout, event: &RolloutEvent, _sequence: usize, _now: Timestamp) {
        log_event(&key_of(&rollout.metadata), event);
    }
}

fn retry_at(now: Timestamp) -> Timestamp {
    now.saturating_add(SAVE_RETRY).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests;
