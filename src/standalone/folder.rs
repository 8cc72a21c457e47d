//! The folder as standalone mode serves it: each load reads the YAML, opens the Apps' storages,
//! looks at each Bundle (syncing those the core says to) and assembles the snapshot inputs the
//! same way as the Kubernetes source ([`crate::server::assembly`]).

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use k8s_openapi::jiff::Timestamp;

use super::{bundles::Bundles, history::HistoryKeeper, load, rollouts};
use crate::{
    analysis::FolderSecrets,
    core::snapshot::SnapshotInputs,
    server::{
        Served, ServerState,
        assembly::{self, ManifestCache, Objects},
        storage::AppStorage,
    },
};

pub(super) struct Folder {
    dir: PathBuf,
    /// Reads the folder, remembering what it accepted, so an edit is checked as an update.
    loader: load::Loader,
    bundles: Bundles,
    manifests: ManifestCache,
    last_problems: Vec<String>,
    /// The last load, kept so rollout decisions can serve new statuses without reading again.
    world: Option<World>,
    /// The folder's Secrets, replaced at each read, shared with the metric providers.
    secrets: FolderSecrets,
}

/// What a load of the folder gave: the objects (Bundles with their sync status), the storages
/// and the problems found on the way.
pub(super) struct World {
    inputs: SnapshotInputs,
    storage: HashMap<String, Arc<AppStorage>>,
    problems: Vec<String>,
    /// Every document was read (nothing skipped as unreadable).
    complete: bool,
}

impl World {
    pub(super) fn load(&self) -> rollouts::Load<'_> {
        rollouts::Load {
            objects: rollouts::Objects {
                apps: &self.inputs.apps,
                channels: &self.inputs.channels,
                bundles: &self.inputs.bundles,
            },
            rollouts: &self.inputs.rollouts,
            complete: self.complete,
        }
    }
}

impl Folder {
    /// A folder whose reads put its Secrets into `secrets` (read by the metric providers).
    pub(super) fn new(dir: PathBuf, http: reqwest::Client, secrets: FolderSecrets) -> Folder {
        Folder {
            secrets,
            dir,
            loader: load::Loader::default(),
            bundles: Bundles::new(http),
            manifests: ManifestCache::default(),
            last_problems: Vec::new(),
            world: None,
        }
    }

    /// The last load, if any.
    pub(super) fn world(&self) -> Option<&World> {
        self.world.as_ref()
    }

    /// Whether a Bundle asked to be looked at again by `now` (a retry, the variants step).
    pub(super) fn look_due(&self, now: Timestamp) -> bool {
        self.bundles.look_due(now)
    }

    /// Reads the folder and syncs what changed, at `now`.
    pub(super) async fn refresh(
        &mut self,
        state: &ServerState,
        now: Timestamp,
    ) -> Result<(), load::LoadError> {
        let loaded = self.loader.load(&self.dir)?;
        let complete = loaded.problems.is_empty();
        self.secrets.replace(loaded.secrets);
        let apps = assembly::open_storages(state, loaded.apps);
        let (bundles, bundle_problems) = self.bundles.look(loaded.bundles, &apps, now).await;
        let objects = Objects {
            apps,
            channels: loaded.channels,
            bundles,
            rollouts: loaded.rollouts,
        };
        let assembled = assembly::assemble(objects, &mut self.manifests).await;
        let mut problems = loaded.problems;
        problems.extend(assembled.problems);
        problems.extend(bundle_problems);
        self.world = Some(World {
            inputs: assembled.inputs,
            storage: assembled.storage,
            problems,
            complete,
        });
        Ok(())
    }

    /// What to serve: the last load with the Rollouts' statuses and the Channels' promotions
    /// and histories.
    pub(super) fn served(&mut self, driver: &rollouts::RolloutDriver, histories: &HistoryKeeper) -> Served {
        let Some(world) = &self.world else {
            return Served::default();
        };
        let (rollouts, channels) = driver.served(&world.load());
        let inputs = SnapshotInputs {
            channels: histories.with_histories(channels),
            rollouts,
            ..world.inputs.clone()
        };
        let (served, snapshot_problems) = assembly::served(&inputs, world.storage.clone());
        let mut problems = world.problems.clone();
        problems.extend(snapshot_problems);
        if problems != self.last_problems {
            for problem in &problems {
                tracing::warn!(%problem, "skipped");
            }
            self.last_problems = problems;
        }
        served
    }
}
