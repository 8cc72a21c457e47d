//! Channels' histories in standalone mode: what the controller keeps in a Channel's
//! `status.history` in a cluster ([`crate::core::channel_history`]), kept in the device store's
//! `channel_histories` table, so a restart keeps the steps of `updatePath: stepwise`.
//!
//! After each build of what is served, each channel's stable bundle as the snapshot serves it
//! (a recorded promotion, else `spec.bundleRef`; only a bundle that can be served) is recorded
//! with [`channel_history::record`]; a history that changed is saved (and durable) before it is
//! served. The history of a Channel that left the folder is forgotten, but only after a load in
//! which every document was read, as the rollout states are.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;

use super::rollouts::{Load, ObjectKey};
use crate::{
    api::{
        Channel,
        channel::{ChannelStatus, HistoryEntry, ServedBundle},
    },
    core::{
        channel_history,
        snapshot::{Snapshot, StableTarget},
    },
    devices::{DeviceStore, StoreError},
};

/// Why a history could not be saved.
#[derive(Debug, thiserror::Error)]
enum SaveError {
    /// It could not be encoded.
    #[error("encoding the history: {0}")]
    Encode(#[from] serde_json::Error),
    /// The device store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn key_of(meta: &kube::api::ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The histories read back from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histories {
    /// Each Channel's history.
    pub channels: BTreeMap<ObjectKey, Vec<HistoryEntry>>,
    /// Rows that could not be read, and why (they are ignored).
    pub unreadable: Vec<String>,
}

impl Histories {
    /// Sorts the rows of the store into histories.
    pub fn from_rows(rows: &[crate::devices::ChannelHistoryRow]) -> Histories {
        let mut histories = Histories::default();
        for row in rows {
            match serde_json::from_str::<Vec<HistoryEntry>>(&row.json) {
                Ok(history) => {
                    histories
                        .channels
                        .insert((row.namespace.clone(), row.name.clone()), history);
                }
                Err(error) => histories.unreadable.push(format!(
                    "{}/{}: not a saved channel history: {error}",
                    row.namespace, row.name
                )),
            }
        }
        histories
    }
}

/// Reads every saved history (for people and tests: what `kubectl get channel -o yaml` shows in
/// a cluster).
pub async fn read_histories(store: &DeviceStore) -> Result<Histories, StoreError> {
    Ok(Histories::from_rows(&store.channel_histories().await?))
}

/// What recording the served stable bundles did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// A history changed: what is served must be built again with it.
    pub changed: bool,
    /// A history could not be saved: record again soon.
    pub retry: bool,
}

/// Keeps the Channels' histories, in memory and in the device store.
pub struct HistoryKeeper {
    store: DeviceStore,
    histories: Histories,
}

impl HistoryKeeper {
    /// Reads the saved histories (rows that cannot be read are reported and ignored).
    pub async fn open(store: DeviceStore) -> Result<HistoryKeeper, StoreError> {
        let histories = read_histories(&store).await?;
        for problem in &histories.unreadable {
            tracing::warn!(%problem, "a saved channel history is ignored");
        }
        tracing::info!(channels = histories.channels.len(), "channel histories loaded");
        Ok(HistoryKeeper { store, histories })
    }

    /// `channels` with their histories in their status.
    pub fn with_histories(&self, channels: Vec<Channel>) -> Vec<Channel> {
        channels
            .into_iter()
            .map(|mut channel| {
                if let Some(history) = self.histories.channels.get(&key_of(&channel.metadata)) {
                    let status = channel.status.get_or_insert_with(ChannelStatus::default);
                    status.history = history.clone();
                }
                channel
            })
            .collect()
    }

    /// Records the stable bundle each channel of `snapshot` serves, saving each history that
    /// changed before keeping it.
    pub async fn record(&mut self, snapshot: &Snapshot, now: Timestamp) -> Recorded {
        let mut recorded = Recorded::default();
        for app in snapshot.apps() {
            for channel in app.channels.values() {
                let StableTarget::Bundle(stable) = &channel.stable else {
                    continue;
                };
                let key = (app.namespace.clone(), channel.name.clone());
                let before = self.histories.channels.get(&key).map_or(&[][..], Vec::as_slice);
                let served = ServedBundle {
                    bundle: Some(stable.name.clone()),
                    version: stable.version.clone(),
                };
                let after = channel_history::record(before, &served);
                if after == before {
                    continue;
                }
                match self.save(&key, &after, now).await {
                    Ok(()) => {
                        tracing::info!(kind = "Channel", namespace = %key.0, name = %key.1, bundle = %stable.name, version = %stable.version, "recorded in the channel's history");
                        self.histories.channels.insert(key, after);
                        recorded.changed = true;
                    }
                    Err(error) => {
                        tracing::warn!(kind = "Channel", namespace = %key.0, name = %key.1, %error, "cannot save the channel's history; trying again");
                        recorded.retry = true;
                    }
                }
            }
        }
        recorded
    }

    async fn save(&self, key: &ObjectKey, history: &[HistoryEntry], now: Timestamp) -> Result<(), SaveError> {
        let json = serde_json::to_string(history)?;
        Ok(self
            .store
            .save_channel_history(&key.0, &key.1, &json, now.as_millisecond())
            .await?)
    }

    /// Forgets the histories of Channels that left the folder, after a load that read every
    /// document (a Channel deleted in a cluster takes its status with it).
    pub async fn forget_missing(&mut self, load: &Load<'_>) {
        if !load.complete {
            return;
        }
        let present: BTreeSet<ObjectKey> = load
            .objects
            .channels
            .iter()
            .map(|channel| key_of(&channel.metadata))
            .collect();
        let gone: Vec<ObjectKey> = self
            .histories
            .channels
            .keys()
            .filter(|key| !present.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            match self.store.delete_channel_history(&key.0, &key.1).await {
                Ok(_) => {
                    tracing::info!(kind = "Channel", namespace = %key.0, name = %key.1, "channel history forgotten: the Channel left the folder");
                    self.histories.channels.remove(&key);
                }
                Err(error) => {
                    tracing::warn!(kind = "Channel", namespace = %key.0, name = %key.1, %error, "cannot forget the channel's history")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures::{self, NS};

    async fn store() -> DeviceStore {
        DeviceStore::open("sqlite::memory:")
            .await
            .expect("an in-memory store")
    }

    fn versions(keeper: &HistoryKeeper, channel: &str) -> Vec<String> {
        keeper
            .histories
            .channels
            .get(&(NS.to_owned(), channel.to_owned()))
            .map(|h| h.iter().map(|e| e.version.clone()).collect())
            .unwrap_or_default()
    }

    fn load<'a>(inputs: &'a crate::core::snapshot::SnapshotInputs, complete: bool) -> Load<'a> {
        Load {
            objects: crate::standalone::rollouts::Objects {
                apps: &inputs.apps,
                channels: &inputs.channels,
                bundles: &inputs.bundles,
            },
            rollouts: &inputs.rollouts,
            complete,
        }
    }

    #[tokio::test]
    async fn each_served_stable_bundle_is_recorded_saved_and_read_back_after_a_restart() {
        let store = store().await;
        let mut keeper = HistoryKeeper::open(store.clone()).await.expect("opens");
        let mut inputs = fixtures::inputs();
        let now = Timestamp::UNIX_EPOCH;
        let recorded = keeper.record(&fixtures::snapshot(&inputs), now).await;
        assert_eq!(
            recorded,
            Recorded {
                changed: true,
                retry: false
            }
        );
        assert_eq!(versions(&keeper, "production"), ["1.4.2"]);
        assert_eq!(versions(&keeper, "beta"), ["1.5.0-beta.1"]);
        // Nothing new: nothing to save.
        let again = keeper.record(&fixtures::snapshot(&inputs), now).await;
        assert_eq!(again, Recorded::default());

        inputs.channels[0].spec.bundle_ref = Some("shop-1.5.0".into());
        keeper.record(&fixtures::snapshot(&inputs), now).await;
        // A channel serving the builtin assets, or a Bundle that cannot be served, adds nothing.
        inputs.channels[1].spec.bundle_ref = None;
        keeper.record(&fixtures::snapshot(&inputs), now).await;
        inputs.channels[1].spec.bundle_ref = Some("missing".into());
        keeper
            .record(&crate::core::snapshot::Snapshot::build(&inputs).0, now)
            .await;
        assert_eq!(versions(&keeper, "production"), ["1.4.2", "1.5.0"]);
        assert_eq!(versions(&keeper, "beta"), ["1.5.0-beta.1"]);

        let reopened = HistoryKeeper::open(store.clone()).await.expect("reopens");
        assert_eq!(
            reopened.histories, keeper.histories,
            "the store holds what memory holds"
        );
        let served = reopened.with_histories(inputs.channels.clone());
        let history = &served[0].status.as_ref().expect("a status").history;
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].bundle, "shop-1.5.0");
    }

    #[tokio::test]
    async fn the_history_of_a_channel_that_left_the_folder_is_forgotten_after_a_complete_load() {
        let store = store().await;
        let mut keeper = HistoryKeeper::open(store.clone()).await.expect("opens");
        let mut inputs = fixtures::inputs();
        keeper
            .record(&fixtures::snapshot(&inputs), Timestamp::UNIX_EPOCH)
            .await;
        inputs
            .channels
            .retain(|c| c.metadata.name.as_deref() == Some("production"));
        keeper.forget_missing(&load(&inputs, false)).await;
        assert_eq!(
            versions(&keeper, "beta"),
            ["1.5.0-beta.1"],
            "an incomplete load forgets nothing"
        );
        keeper.forget_missing(&load(&inputs, true)).await;
        assert_eq!(versions(&keeper, "beta"), Vec::<String>::new());
        assert_eq!(versions(&keeper, "production"), ["1.4.2"]);
        let saved = read_histories(&store).await.expect("reads");
        assert_eq!(saved.channels.len(), 1);
    }

    #[tokio::test]
    async fn an_unreadable_row_is_reported_and_ignored() {
        let store = store().await;
        store
            .save_channel_history(NS, "production", "not json", 0)
            .await
            .expect("saves");
        let histories = read_histories(&store).await.expect("reads");
        assert!(histories.channels.is_empty());
        assert_eq!(histories.unreadable.len(), 1, "{:?}", histories.unreadable);
    }
}
