//! What deleting a Bundle may remove from storage: nothing while a Channel or Rollout uses it,
//! and never a file another bundle of the same storage still lists.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    api::{
        Bundle, Channel, Rollout,
        constants::{condition, reason},
    },
    core::conditions::{ConditionStatus, DesiredCondition, status_of},
    layout::{file_key_is_content_addressed, manifest_key, variant_manifest_key, zip_key},
};

/// A Bundle of the same storage location (store and prefix) as the one deleted, with what its
/// stored manifest lists.
#[derive(Debug, Clone, Copy)]
pub struct StoredBundle<'a> {
    /// The Bundle as observed.
    pub bundle: &'a Bundle,
    /// The file keys of the manifest stored for its sha256 (`manifests/<sha256>.json`), or
    /// `None` when storage holds no manifest for it (never synced, encrypted, or mid-sync).
    pub file_keys: Option<&'a [String]>,
}

/// What deleting a Bundle may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletionDecision {
    /// A Channel or Rollout still uses the bundle: nothing is removed and the finalizer stays.
    Hold {
        /// `Channel/name` and `Rollout/name` of every user, sorted.
        users: Vec<String>,
        /// What to do, for the status.
        message: String,
    },
    /// Another bundle of the same storage may be in the middle of a sync, and storage has no
    /// manifest of it yet, so the files it will list are unknown: removing shared files now could
    /// take one from under it. Try again later.
    WaitForSync {
        /// Names of the bundles waited for, sorted.
        bundles: Vec<String>,
        /// Why, for the status.
        message: String,
    },
    /// Remove these keys (relative to the App's prefix, sorted), then the finalizer.
    Remove {
        /// The keys only this bundle references.
        keys: Vec<String>,
    },
}

impl DeletionDecision {
    /// The conditions to report while the deletion waits (`None` for [`DeletionDecision::Remove`]):
    /// Reconciling=True with the reason [`reason::IN_USE`] or [`reason::WAITING_FOR_SYNC`].
    pub fn conditions(&self) -> Option<Vec<DesiredCondition>> {
        let (reason, message) = match self {
            DeletionDecision::Hold { message, .. } => (reason::IN_USE, message),
            DeletionDecision::WaitForSync { message, .. } => (reason::WAITING_FOR_SYNC, message),
            DeletionDecision::Remove { .. } => return None,
        };
        Some(vec![DesiredCondition::new(
            condition::RECONCILING,
            ConditionStatus::True,
            reason,
            message.clone(),
        )])
    }
}

fn name_of(meta: &kube::api::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn same_namespace(a: &kube::api::ObjectMeta, b: &kube::api::ObjectMeta) -> bool {
    a.namespace == b.namespace
}

/// Who still uses the Bundle named `bundle` (in `bundle_meta`'s namespace): Channels whose
/// `bundleRef` names it or whose status says they serve it, and Rollouts whose `bundleRef`,
/// stable or candidate bundle names it. Sorted `Kind/name` strings.
pub fn bundle_users(
    bundle_meta: &kube::api::ObjectMeta,
    channels: &[Channel],
    rollouts: &[Rollout],
) -> Vec<String> {
    let name = name_of(bundle_meta);
    let mut users = BTreeSet::new();
    for channel in channels
        .iter()
        .filter(|c| same_namespace(&c.metadata, bundle_meta))
    {
        let status = channel.status.as_ref();
        let served = status.is_some_and(|s| {
            s.stable.as_ref().and_then(|b| b.bundle.as_deref()) == Some(name)
                || s.candidate.as_ref().is_some_and(|c| c.bundle == name)
        });
        let promoted = status
            .and_then(|s| s.promoted.as_ref())
            .is_some_and(|p| p.bundle == name);
        if channel.spec.bundle_ref.as_deref() == Some(name) || served || promoted {
            users.insert(format!("Channel/{}", name_of(&channel.metadata)));
        }
    }
    for rollout in rollouts
        .iter()
        .filter(|r| same_namespace(&r.metadata, bundle_meta))
    {
        let status = rollout.status.as_ref();
        let named = rollout.spec.bundle_ref == name
            || status.is_some_and(|s| {
                s.stable_bundle.as_deref() == Some(name) || s.candidate_bundle.as_deref() == Some(name)
            });
        if named {
            users.insert(format!("Rollout/{}", name_of(&rollout.metadata)));
        }
    }
    users.into_iter().collect()
}

/// What deleting `deleted` may remove. `siblings` are the other Bundles whose App uses the same
/// storage location (whatever their App), `channels` and `rollouts` those of the namespace.
///
/// A bundle in use is held. Otherwise its zip, its manifest and the files its manifest lists are
/// removed, except any key another live bundle references: by its own sha256 (a Bundle with the
/// same zip), by its status, by its `source.storageKey`, or in its stored manifest
/// (content-addressed files are shared). A sibling that is itself being deleted and used by no
/// one is not live. Keys that are not content-addressed sync keys are never removed.
pub fn deletion_decision(
    deleted: StoredBundle<'_>,
    siblings: &[StoredBundle<'_>],
    channels: &[Channel],
    rollouts: &[Rollout],
) -> DeletionDecision {
    let bundle = deleted.bundle;
    let users = bundle_users(&bundle.metadata, channels, rollouts);
    if !users.is_empty() {
        let message = format!(
            "Deletion waits: still used by {}; point them at another bundle (or delete them) to \
             free it",
            users.join(", ")
        );
        return DeletionDecision::Hold { users, message };
    }

    let name = name_of(&bundle.metadata);
    let live: Vec<&StoredBundle<'_>> = siblings
        .iter()
        .filter(|s| {
            name_of(&s.bundle.metadata) != name || !same_namespace(&s.bundle.metadata, &bundle.metadata)
        })
        .filter(|s| {
            s.bundle.metadata.deletion_timestamp.is_none()
                || !bundle_users(&s.bundle.metadata, channels, rollouts).is_empty()
        })
        .collect();

    let mut protected: BTreeSet<&str> = BTreeSet::new();
    let sibling_keys: Vec<[String; 3]> = live
        .iter()
        .map(|s| {
            let sha256 = &s.bundle.spec.source.sha256;
            [
                zip_key(sha256),
                manifest_key(sha256),
                variant_manifest_key(sha256),
            ]
        })
        .collect();
    protected.extend(sibling_keys.iter().flatten().map(String::as_str));
    // A file's raw form and its Brotli variant go together: a sibling listing one may be about
    // to make or use the other.
    let sibling_twins: Vec<String> = live
        .iter()
        .filter_map(|s| s.file_keys)
        .flatten()
        .filter_map(|key| file_twin(key))
        .collect();
    protected.extend(sibling_twins.iter().map(String::as_str));
    let mut waiting = BTreeMap::new();
    for sibling in &live {
        let other = sibling.bundle;
        if let Some(storage) = other.status.as_ref().and_then(|s| s.storage.as_ref()) {
            protected.insert(&storage.zip_key);
            if let Some(key) = &storage.manifest_key {
                protected.insert(key);
            }
        }
        if let Some(key) = &other.spec.source.storage_key {
            protected.insert(key);
        }
        if let Some(key) = &other.spec.source.manifest_key {
            protected.insert(key);
        }
        match sibling.file_keys {
            Some(keys) => protected.extend(keys.iter().map(String::as_str)),
            None if other.spec.encryption.is_none() && sync_may_be_running(other) => {
                waiting.insert(name_of(&other.metadata).to_owned(), ());
            }
            None => {}
        }
    }

    let own_files = deleted.file_keys.unwrap_or_default();
    if !waiting.is_empty() && !own_files.is_empty() {
        let bundles: Vec<String> = waiting.into_keys().collect();
        let message = format!(
            "Deletion waits for the sync of {} to finish, so that no file it shares with this \
             bundle is removed under it",
            bundles
                .iter()
                .map(|b| format!("Bundle/{b}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return DeletionDecision::WaitForSync { bundles, message };
    }

    let sha256 = &bundle.spec.source.sha256;
    let mut keys: BTreeSet<String> = BTreeSet::new();
    keys.insert(zip_key(sha256));
    keys.insert(manifest_key(sha256));
    keys.insert(variant_manifest_key(sha256));
    for key in own_files.iter().filter(|key| file_key_is_content_addressed(key)) {
        keys.insert(key.clone());
        keys.extend(file_twin(key));
    }
    keys.retain(|key| !protected.contains(key.as_str()));
    DeletionDecision::Remove {
        keys: keys.into_iter().collect(),
    }
}

/// The other form of a content-addressed file key: `files/<h>.br` for `files/<h>` and back.
fn file_twin(key: &str) -> Option<String> {
    if !file_key_is_content_addressed(key) {
        return None;
    }
    Some(match key.strip_suffix(".br") {
        Some(raw) => raw.to_owned(),
        None => format!("{key}.br"),
    })
}

/// Whether a sync of `bundle` may be running or about to run: its status does not describe a
/// settled outcome (Synced or Stalled) of its current generation.
fn sync_may_be_running(bundle: &Bundle) -> bool {
    let Some(status) = &bundle.status else {
        return true;
    };
    status.observed_generation != bundle.metadata.generation
        || (status_of(&status.conditions, condition::SYNCED) != Some("True")
            && status_of(&status.conditions, condition::STALLED) != Some("True"))
}
