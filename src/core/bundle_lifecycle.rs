//! A Bundle's lifecycle as pure decisions: whether to sync it now, what its status says after a
//! sync, and what deleting it may remove from storage.
//!
//! No I/O and no clock: the caller passes `now` (milliseconds since the Unix epoch), the objects
//! it observed and what it read from storage, and gets data back. Conditions are returned as
//! [`DesiredCondition`]s, merged into the stored ones by [`crate::core::conditions`].
//!
//! Retries of transient failures follow an exponential backoff ([`RETRY_BASE_MS`] doubling up to
//! [`RETRY_CAP_MS`]) with a jitter of ±[`RETRY_JITTER_PERCENT`]% drawn from the Bundle's uid and
//! the attempt number, so the same bundle always gets the same schedule (and tests can check it)
//! while many bundles failing together spread their retries.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::{
    api::{
        Bundle, Channel, Rollout,
        bundle::{BundleStatus, BundleStorageLocation},
        constants::{condition, reason},
    },
    core::conditions::{
        ConditionStatus, DesiredCondition, merge_conditions, ready_set, stalled_set, status_of,
    },
    sync::{
        SyncError, SyncedBundle, file_key_is_content_addressed, manifest_key, variant_manifest_key, zip_key,
    },
    telemetry::error_chain,
};

/// The delay before the first retry of a transient failure.
pub const RETRY_BASE_MS: u64 = 5_000;
/// The longest delay between two retries.
pub const RETRY_CAP_MS: u64 = 5 * 60_000;
/// How far a delay may move from its nominal value, in percent either way.
pub const RETRY_JITTER_PERCENT: u64 = 20;

/// What the controller remembers about a Bundle's transient failures (in memory, keyed by uid;
/// losing it on a restart only means one earlier retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    /// The generation that failed; a new generation starts over.
    pub generation: Option<i64>,
    /// Failed attempts in a row (1 after the first failure).
    pub attempts: u32,
    /// When the next attempt is due (ms since the Unix epoch).
    pub retry_at_ms: i64,
}

/// Why a sync is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncCause {
    /// The Bundle has no status yet.
    NeverSynced,
    /// The spec changed since the status was written, and the stored sync does not match it.
    NewGeneration,
    /// The status says Synced, but for other content or without its storage keys.
    StatusMismatch,
    /// An earlier attempt failed transiently and its retry time has come (or was forgotten).
    RetryDue,
    /// An earlier attempt found the App missing, or its storage unusable (a missing Secret, a
    /// storage spec that cannot be opened): they live outside the Bundle and may have been
    /// mended since, so each look checks them again (the App is in the cache; a Secret costs
    /// one read).
    ReferenceRecheck,
}

/// What to do about a Bundle's sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncDecision {
    /// Sync now.
    Sync(SyncCause),
    /// The stored sync matches the spec and the status describes this generation: nothing to do.
    UpToDate,
    /// The bundle is synced (and served with raw files), but the Brotli variants of its files
    /// are not recorded as done: make them ([`crate::sync::compress_variants`]), then record them
    /// with [`status_with_variants`].
    CompressVariants,
    /// The stored sync matches the spec (same sha256, same encryption mode), but the spec changed
    /// elsewhere (a link, a comment, a new URL of the same bytes): write the status again for
    /// this generation with [`SyncOutcome::AlreadyStored`], without fetching anything.
    RecordGeneration,
    /// A transient failure: wait until `retry_at_ms`, then sync.
    RetryAt {
        /// When the next attempt is due (ms since the Unix epoch).
        retry_at_ms: i64,
    },
    /// A terminal failure for this generation: nothing happens until the spec changes.
    AwaitChange {
        /// The reason the status reports.
        reason: String,
    },
}

/// Whether `bundle` needs a sync now. `retry` is what the controller remembers of earlier
/// transient failures (`None`: nothing, e.g. after a restart).
pub fn sync_decision(bundle: &Bundle, retry: Option<&RetryState>, now_ms: i64) -> SyncDecision {
    let Some(status) = &bundle.status else {
        return SyncDecision::Sync(SyncCause::NeverSynced);
    };
    let stored_matches = stored_sync_matches(bundle, status);
    if status.observed_generation != bundle.metadata.generation {
        return match stored_matches {
            true => SyncDecision::RecordGeneration,
            false => SyncDecision::Sync(SyncCause::NewGeneration),
        };
    }
    if status_of(&status.conditions, condition::SYNCED) == Some("True") {
        return match stored_matches {
            true if variants_pending(bundle, status) => SyncDecision::CompressVariants,
            true => SyncDecision::UpToDate,
            false => SyncDecision::Sync(SyncCause::StatusMismatch),
        };
    }
    if status_of(&status.conditions, condition::STALLED) == Some("True") {
        let reason = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::STALLED)
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        if reason == reason::REFERENCE_NOT_FOUND || reason == reason::REFERENCE_NOT_READY {
            return SyncDecision::Sync(SyncCause::ReferenceRecheck);
        }
        return SyncDecision::AwaitChange { reason };
    }
    match retry {
        Some(retry) if retry.generation == bundle.metadata.generation && retry.retry_at_ms > now_ms => {
            SyncDecision::RetryAt {
                retry_at_ms: retry.retry_at_ms,
            }
        }
        _ => SyncDecision::Sync(SyncCause::RetryDue),
    }
}

/// Whether a synced plain bundle's status does not record its Brotli variants as done (an
/// encrypted bundle has none: who encrypted it compressed its delta files).
fn variants_pending(bundle: &Bundle, status: &BundleStatus) -> bool {
    bundle.spec.encryption.is_none()
        && status
            .storage
            .as_ref()
            .is_some_and(|storage| storage.manifest_key.is_some() && !storage.compressed_variants)
}

/// The status once the Brotli variants of a synced bundle are stored: the same, with the manifest
/// that names them (`manifest_key`, from [`crate::sync::CompressedVariants`]) and
/// `compressedVariants` set. Its conditions do not change: the bundle was served already.
pub fn status_with_variants(status: &BundleStatus, manifest_key: &str) -> BundleStatus {
    let mut status = status.clone();
    if let Some(storage) = status.storage.as_mut() {
        storage.manifest_key = Some(manifest_key.to_owned());
        storage.compressed_variants = true;
    }
    status
}

/// Whether the status records a successful sync of exactly what the spec asks for: Synced, the
/// spec's sha256, its zip key, and a manifest key exactly when the bundle is not encrypted (the
/// first step's, or the one that names the Brotli variants once they are done).
fn stored_sync_matches(bundle: &Bundle, status: &BundleStatus) -> bool {
    let sha256 = &bundle.spec.source.sha256;
    let encrypted = bundle.spec.encryption.is_some();
    status_of(&status.conditions, condition::SYNCED) == Some("True")
        && status.checksum.as_deref() == Some(sha256.as_str())
        && status.storage.as_ref().is_some_and(|storage| {
            storage.zip_key == zip_key(sha256)
                // An encrypted bundle has a manifest only when its delta files were stored; its
                // uncompressed size is unknown, so a status with one describes a plain sync.
                && match (&storage.manifest_key, encrypted) {
                    (Some(key), _) => {
                        let expected = match storage.compressed_variants {
                            true => variant_manifest_key(sha256),
                            false => manifest_key(sha256),
                        };
                        *key == expected && status.uncompressed_size.is_some() != encrypted
                    }
                    (None, encrypted) => encrypted,
                }
        })
}

/// The nominal delay before retry number `attempt` (1 for the first retry): [`RETRY_BASE_MS`]
/// doubled for each earlier failure, at most [`RETRY_CAP_MS`].
pub fn nominal_retry_delay_ms(attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(32);
    RETRY_BASE_MS.saturating_mul(1u64 << doublings).min(RETRY_CAP_MS)
}

/// The delay before retry number `attempt` of the bundle with this uid: the nominal delay moved
/// by up to ±[`RETRY_JITTER_PERCENT`]%, by an amount drawn from a hash of the uid and the attempt.
pub fn retry_delay_ms(uid: &str, attempt: u32) -> u64 {
    let nominal = nominal_retry_delay_ms(attempt);
    let digest = Sha256::new()
        .chain_update(uid.as_bytes())
        .chain_update(b"\0")
        .chain_update(attempt.to_be_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // A value in 0..=2·J, so the factor is (100 - J .. 100 + J) percent.
    let spread = u64::from_be_bytes(first) % (2 * RETRY_JITTER_PERCENT + 1);
    nominal * (100 - RETRY_JITTER_PERCENT + spread) / 100
}

/// What a sync stored, as the status records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFacts {
    /// Lower-case hex SHA-256 of the zip.
    pub sha256: String,
    /// Bytes of the zip.
    pub zip_size: u64,
    /// Bytes of the files once decompressed (`None` for an encrypted bundle).
    pub uncompressed_size: Option<u64>,
    /// Files in the bundle (`None` for an encrypted bundle).
    pub file_count: Option<u64>,
    /// Key of the zip.
    pub zip_key: String,
    /// Key of the manifest (`None` for an encrypted bundle).
    pub manifest_key: Option<String>,
    /// The manifest names the Brotli variants ([`crate::sync::compress_variants`] is done).
    pub compressed_variants: bool,
}

impl From<&SyncedBundle> for SyncFacts {
    fn from(synced: &SyncedBundle) -> Self {
        SyncFacts {
            sha256: synced.sha256.clone(),
            zip_size: synced.zip_size,
            uncompressed_size: (!synced.encrypted).then_some(synced.uncompressed_size),
            file_count: (!synced.encrypted || synced.file_count > 0).then_some(synced.file_count),
            zip_key: synced.zip_key.clone(),
            manifest_key: synced.stored_manifest_key().map(str::to_owned),
            compressed_variants: synced.compressed_variants,
        }
    }
}

/// Why a sync failed, as the status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    /// Retrying cannot help: the Bundle must change.
    pub terminal: bool,
    /// The condition reason (a constant of [`reason`]).
    pub reason: &'static str,
    /// The error, with its causes.
    pub message: String,
}

impl From<&SyncError> for SyncFailure {
    fn from(error: &SyncError) -> Self {
        SyncFailure {
            terminal: error.is_terminal(),
            reason: error.reason(),
            message: error_chain(error),
        }
    }
}

/// How a sync attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Stored and verified.
    Synced(SyncFacts),
    /// Nothing was fetched: the status already records a sync that matches the spec
    /// ([`SyncDecision::RecordGeneration`]).
    AlreadyStored,
    /// Failed.
    Failed(SyncFailure),
}

/// A Warning event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarningEvent {
    /// PascalCase reason.
    pub reason: &'static str,
    /// What happened (at most 1 kB once published; the recorder's caller truncates).
    pub note: String,
}

/// The status a Bundle should have after a sync attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleStatusPlan {
    /// Every field but the conditions, which are the previous ones (merge `conditions` into them
    /// with [`BundleStatusPlan::into_status`]).
    pub status: BundleStatus,
    /// Ready, Reconciling, Stalled and Synced.
    pub conditions: Vec<DesiredCondition>,
    /// After a transient failure: when to try again (remember it for [`sync_decision`]).
    pub retry: Option<RetryState>,
    /// After a terminal failure: the Warning event to publish.
    pub warning: Option<WarningEvent>,
}

impl BundleStatusPlan {
    /// The complete status: the conditions merged with `now` as the time of any flip.
    pub fn into_status(self, now: Timestamp) -> BundleStatus {
        let mut status = self.status;
        status.conditions = merge_conditions(
            &status.conditions,
            &self.conditions,
            status.observed_generation,
            now,
        );
        status
    }
}

/// The status after a sync attempt of `bundle` (its `status` is the previous one) that ended with
/// `outcome`. `retry` is the remembered state of earlier failures, used to count attempts.
pub fn bundle_status_after_sync(
    bundle: &Bundle,
    outcome: &SyncOutcome,
    retry: Option<&RetryState>,
    now_ms: i64,
) -> BundleStatusPlan {
    let previous = bundle.status.clone().unwrap_or_default();
    let generation = bundle.metadata.generation;
    let base = BundleStatus {
        conditions: previous.conditions.clone(),
        observed_generation: generation,
        ..BundleStatus::default()
    };
    match outcome {
        SyncOutcome::Synced(facts) => synced_plan(base, facts),
        SyncOutcome::AlreadyStored => match facts_from_status(&previous) {
            Some(facts) => synced_plan(base, &facts),
            None => failed_plan(
                bundle,
                base,
                &SyncFailure {
                    terminal: false,
                    reason: reason::STORAGE_UNAVAILABLE,
                    message: "the status records no complete sync; the bundle will be synced again"
                        .to_owned(),
                },
                retry,
                now_ms,
            ),
        },
        SyncOutcome::Failed(failure) => failed_plan(bundle, base, failure, retry, now_ms),
    }
}

/// The facts a status records of a successful sync, if it records one.
fn facts_from_status(status: &BundleStatus) -> Option<SyncFacts> {
    if status_of(&status.conditions, condition::SYNCED) != Some("True") {
        return None;
    }
    let storage = status.storage.as_ref()?;
    Some(SyncFacts {
        sha256: status.checksum.clone()?,
        zip_size: u64::try_from(status.zip_size?).ok()?,
        uncompressed_size: status.uncompressed_size.and_then(|v| u64::try_from(v).ok()),
        file_count: status.file_count.and_then(|v| u64::try_from(v).ok()),
        zip_key: storage.zip_key.clone(),
        manifest_key: storage.manifest_key.clone(),
        compressed_variants: storage.compressed_variants,
    })
}

fn synced_plan(base: BundleStatus, facts: &SyncFacts) -> BundleStatusPlan {
    let message = match (facts.file_count, facts.uncompressed_size) {
        (Some(files), Some(bytes)) => format!(
            "Synced into the App's storage: a {}-byte zip of {files} files ({bytes} bytes unzipped)",
            facts.zip_size
        ),
        (Some(files), None) => format!(
            "Synced into the App's storage: an encrypted {}-byte zip and its {files} encrypted delta files",
            facts.zip_size
        ),
        _ => format!(
            "Synced into the App's storage: an encrypted {}-byte zip, served whole",
            facts.zip_size
        ),
    };
    let mut conditions = ready_set(message.clone());
    conditions.push(DesiredCondition::new(
        condition::SYNCED,
        ConditionStatus::True,
        reason::RECONCILED,
        message,
    ));
    let as_i64 = |value: u64| i64::try_from(value).ok();
    BundleStatusPlan {
        status: BundleStatus {
            checksum: Some(facts.sha256.clone()),
            zip_size: as_i64(facts.zip_size),
            uncompressed_size: facts.uncompressed_size.and_then(as_i64),
            file_count: facts.file_count.and_then(as_i64),
            storage: Some(BundleStorageLocation {
                zip_key: facts.zip_key.clone(),
                manifest_key: facts.manifest_key.clone(),
                compressed_variants: facts.compressed_variants,
            }),
            ..base
        },
        conditions,
        retry: None,
        warning: None,
    }
}

fn failed_plan(
    bundle: &Bundle,
    base: BundleStatus,
    failure: &SyncFailure,
    retry: Option<&RetryState>,
    now_ms: i64,
) -> BundleStatusPlan {
    let synced = |message: String| {
        DesiredCondition::new(condition::SYNCED, ConditionStatus::False, failure.reason, message)
    };
    if failure.terminal {
        let message = format!(
            "{}; this bundle is never served, and is not synced again until its spec changes",
            failure.message
        );
        let mut conditions = stalled_set(failure.reason, message.clone());
        conditions.push(synced(message.clone()));
        return BundleStatusPlan {
            status: base,
            conditions,
            retry: None,
            warning: Some(WarningEvent {
                reason: failure.reason,
                note: message,
            }),
        };
    }
    let generation = bundle.metadata.generation;
    let attempts = match retry {
        Some(retry) if retry.generation == generation => retry.attempts.saturating_add(1),
        _ => 1,
    };
    let uid = bundle.metadata.uid.as_deref().unwrap_or_default();
    let delay = retry_delay_ms(uid, attempts);
    let message = format!(
        "{} (attempt {attempts} failed; retrying in {}s)",
        failure.message,
        delay.div_ceil(1000)
    );
    let conditions = vec![
        DesiredCondition::new(
            condition::READY,
            ConditionStatus::False,
            failure.reason,
            message.clone(),
        ),
        DesiredCondition::new(
            condition::RECONCILING,
            ConditionStatus::True,
            reason::PROGRESSING_WITH_RETRY,
            message.clone(),
        ),
        DesiredCondition::new(
            condition::STALLED,
            ConditionStatus::False,
            reason::PROGRESSING_WITH_RETRY,
            message.clone(),
        ),
        synced(message),
    ];
    BundleStatusPlan {
        status: base,
        conditions,
        retry: Some(RetryState {
            generation,
            attempts,
            retry_at_ms: now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)),
        }),
        warning: None,
    }
}

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::fixtures::{self, channel, merge, rollout, sha};

    /// A bundle as the controller stores it after a successful sync of generation 1.
    fn synced(name: &str, version: &str, patch: serde_json::Value) -> Bundle {
        let mut value = json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle",
            "metadata": {"name": name, "namespace": fixtures::NS, "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"appRef": "shop", "version": version,
                     "source": {"url": format!("https://ci.example.com/{version}.zip"), "sha256": sha(version)}},
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {"type": "Synced", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                ],
                "checksum": sha(version), "zipSize": 1000, "uncompressedSize": 3000, "fileCount": 3,
                "storage": {"zipKey": format!("zips/{}.zip", sha(version)), "manifestKey": format!("manifests/{}.br.json", sha(version)), "compressedVariants": true}
            }
        });
        merge(&mut value, patch);
        serde_json::from_value(value).expect("a Bundle")
    }

    fn unsynced(name: &str, version: &str) -> Bundle {
        let mut bundle = synced(name, version, json!({}));
        bundle.status = None;
        bundle
    }

    fn with_status(bundle: &Bundle, plan: BundleStatusPlan) -> Bundle {
        let mut bundle = bundle.clone();
        bundle.status = Some(plan.into_status(Timestamp::from_second(1_000).expect("a time")));
        bundle
    }

    fn transient() -> SyncOutcome {
        SyncOutcome::Failed(SyncFailure {
            terminal: false,
            reason: reason::SOURCE_UNAVAILABLE,
            message: "bundle source unavailable: HTTP 503".into(),
        })
    }

    fn terminal() -> SyncOutcome {
        SyncOutcome::Failed(SyncFailure::from(&SyncError::ChecksumMismatch {
            expected: sha("a"),
            actual: sha("b"),
        }))
    }

    fn facts(version: &str) -> SyncFacts {
        SyncFacts {
            sha256: sha(version),
            zip_size: 1000,
            uncompressed_size: Some(3000),
            file_count: Some(3),
            zip_key: zip_key(&sha(version)),
            manifest_key: Some(manifest_key(&sha(version))),
            compressed_variants: false,
        }
    }

    fn condition<'a>(
        status: &'a BundleStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status.conditions.iter().find(|c| c.type_ == type_).expect(type_)
    }

    // ---- sync_decision -------------------------------------------------------------------

    #[test]
    fn a_bundle_without_status_is_synced() {
        assert_eq!(
            sync_decision(&unsynced("b", "1.0.0"), None, 0),
            SyncDecision::Sync(SyncCause::NeverSynced)
        );
    }

    #[test]
    fn a_synced_bundle_of_this_generation_is_up_to_date() {
        assert_eq!(
            sync_decision(&synced("b", "1.0.0", json!({})), None, 0),
            SyncDecision::UpToDate
        );
    }

    #[test]
    fn a_new_generation_with_the_same_content_only_records_the_generation() {
        let bundle = synced(
            "b",
            "1.0.0",
            json!({"metadata": {"generation": 2}, "spec": {"comment": "new notes"}}),
        );
        assert_eq!(sync_decision(&bundle, None, 0), SyncDecision::RecordGeneration);
        let plan = bundle_status_after_sync(&bundle, &SyncOutcome::AlreadyStored, None, 0);
        let status = plan.into_status(Timestamp::from_second(5).expect("a time"));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.checksum, Some(sha("1.0.0")));
        assert_eq!(condition(&status, condition::SYNCED).status, "True");
        assert_eq!(condition(&status, condition::SYNCED).observed_generation, Some(2));
        assert_eq!(
            sync_decision(
                &with_status(
                    &bundle,
                    bundle_status_after_sync(&bundle, &SyncOutcome::AlreadyStored, None, 0)
                ),
                None,
                0
            ),
            SyncDecision::UpToDate
        );
    }

    #[test]
    fn a_new_generation_that_turns_on_encryption_syncs_again() {
        let bundle = synced(
            "b",
            "1.0.0",
            json!({"metadata": {"generation": 2},
                   "spec": {"encryption": {"sessionKey": "aXY=:a2V5", "encryptedChecksum": "00ff00ff00ff00ff"}}}),
        );
        assert_eq!(
            sync_decision(&bundle, None, 0),
            SyncDecision::Sync(SyncCause::NewGeneration)
        );
    }

    #[test]
    fn a_synced_status_for_other_content_syncs_again() {
        let mut bundle = synced("b", "1.0.0", json!({}));
        bundle.status.as_mut().expect("status").checksum = Some(sha("other"));
        assert_eq!(
            sync_decision(&bundle, None, 0),
            SyncDecision::Sync(SyncCause::StatusMismatch)
        );
        let mut no_keys = synced("b", "1.0.0", json!({}));
        no_keys.status.as_mut().expect("status").storage = None;
        assert_eq!(
            sync_decision(&no_keys, None, 0),
            SyncDecision::Sync(SyncCause::StatusMismatch)
        );
    }

    #[test]
    fn a_transient_failure_waits_for_its_retry_time_then_syncs() {
        let bundle = unsynced("b", "1.0.0");
        let plan = bundle_status_after_sync(&bundle, &transient(), None, 10_000);
        let retry = plan.retry.clone().expect("a retry");
        assert_eq!(retry.attempts, 1);
        assert_eq!(retry.retry_at_ms, 10_000 + retry_delay_ms("uid-b", 1) as i64);
        let failed = with_status(&bundle, plan);
        assert_eq!(
            sync_decision(&failed, Some(&retry), 10_001),
            SyncDecision::RetryAt {
                retry_at_ms: retry.retry_at_ms
            }
        );
        assert_eq!(
            sync_decision(&failed, Some(&retry), retry.retry_at_ms),
            SyncDecision::Sync(SyncCause::RetryDue)
        );
        // Forgotten (a restart): retry at once.
        assert_eq!(
            sync_decision(&failed, None, 10_001),
            SyncDecision::Sync(SyncCause::RetryDue)
        );
        // Remembered for an older generation: the new one syncs at once.
        let mut changed = failed.clone();
        changed.metadata.generation = Some(2);
        assert_eq!(
            sync_decision(&changed, Some(&retry), 10_001),
            SyncDecision::Sync(SyncCause::NewGeneration)
        );
        let stale = RetryState {
            generation: Some(0),
            ..retry
        };
        assert_eq!(
            sync_decision(&failed, Some(&stale), 10_001),
            SyncDecision::Sync(SyncCause::RetryDue)
        );
    }

    #[test]
    fn attempts_count_up_and_the_delay_grows() {
        let bundle = unsynced("b", "1.0.0");
        let mut retry = None;
        let mut delays = Vec::new();
        for attempt in 1..=10u32 {
            let plan = bundle_status_after_sync(&bundle, &transient(), retry.as_ref(), 0);
            let next = plan.retry.expect("a retry");
            assert_eq!(next.attempts, attempt);
            delays.push(next.retry_at_ms);
            retry = Some(next);
        }
        assert!(delays.windows(2).take(5).all(|w| w[0] < w[1]), "{delays:?}");
        let cap = (RETRY_CAP_MS * (100 + RETRY_JITTER_PERCENT) / 100) as i64;
        assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
        // A success forgets the failures.
        let plan = bundle_status_after_sync(&bundle, &SyncOutcome::Synced(facts("1.0.0")), retry.as_ref(), 0);
        assert_eq!(plan.retry, None);
    }

    #[test]
    fn the_backoff_doubles_to_its_cap_with_bounded_deterministic_jitter() {
        assert_eq!(nominal_retry_delay_ms(1), 5_000);
        assert_eq!(nominal_retry_delay_ms(2), 10_000);
        assert_eq!(nominal_retry_delay_ms(3), 20_000);
        assert_eq!(nominal_retry_delay_ms(7), RETRY_CAP_MS);
        assert_eq!(nominal_retry_delay_ms(u32::MAX), RETRY_CAP_MS);
        assert_eq!(nominal_retry_delay_ms(0), RETRY_BASE_MS);
        let mut distinct = BTreeSet::new();
        for uid in 0..200 {
            let uid = format!("uid-{uid}");
            for attempt in 1..=8 {
                let delay = retry_delay_ms(&uid, attempt);
                let nominal = nominal_retry_delay_ms(attempt);
                assert!(delay >= nominal * 80 / 100 && delay <= nominal * 120 / 100);
                assert_eq!(delay, retry_delay_ms(&uid, attempt), "deterministic");
            }
            distinct.insert(retry_delay_ms(&uid, 1));
        }
        // Bundles failing together spread out.
        assert!(distinct.len() > 20, "{distinct:?}");
    }

    #[test]
    fn a_missing_app_or_unusable_storage_is_checked_again_at_each_look() {
        let bundle = unsynced("b", "1.0.0");
        for (reason, recheck) in [
            (reason::REFERENCE_NOT_FOUND, true),
            (reason::REFERENCE_NOT_READY, true),
            (reason::INVALID_SPEC, false),
        ] {
            let failure = SyncOutcome::Failed(SyncFailure {
                terminal: true,
                reason,
                message: "the App's storage cannot be used".to_owned(),
            });
            let stalled = with_status(&bundle, bundle_status_after_sync(&bundle, &failure, None, 0));
            let expected = match recheck {
                true => SyncDecision::Sync(SyncCause::ReferenceRecheck),
                false => SyncDecision::AwaitChange {
                    reason: reason.to_owned(),
                },
            };
            assert_eq!(sync_decision(&stalled, None, 0), expected, "{reason}");
        }
    }

    #[test]
    fn a_terminal_failure_stalls_warns_and_waits_for_a_spec_change() {
        let bundle = unsynced("b", "1.0.0");
        let plan = bundle_status_after_sync(&bundle, &terminal(), None, 0);
        assert_eq!(plan.retry, None);
        let warning = plan.warning.clone().expect("a warning");
        assert_eq!(warning.reason, reason::CHECKSUM_MISMATCH);
        assert!(warning.note.contains("checksum mismatch"), "{}", warning.note);
        let failed = with_status(&bundle, plan);
        let status = failed.status.as_ref().expect("status");
        assert_eq!(condition(status, condition::STALLED).status, "True");
        assert_eq!(
            condition(status, condition::STALLED).reason,
            reason::CHECKSUM_MISMATCH
        );
        assert_eq!(condition(status, condition::READY).status, "False");
        assert_eq!(condition(status, condition::RECONCILING).status, "False");
        assert_eq!(condition(status, condition::SYNCED).status, "False");
        assert!(status.checksum.is_none() && status.storage.is_none());
        assert_eq!(
            sync_decision(&failed, None, i64::MAX),
            SyncDecision::AwaitChange {
                reason: reason::CHECKSUM_MISMATCH.into()
            }
        );
        let mut changed = failed;
        changed.metadata.generation = Some(2);
        assert_eq!(
            sync_decision(&changed, None, 0),
            SyncDecision::Sync(SyncCause::NewGeneration)
        );
    }

    #[test]
    fn a_hostile_zip_is_terminal_too() {
        let outcome = SyncOutcome::Failed(SyncFailure::from(&SyncError::InvalidArchive(
            "entry ../x escapes the bundle".into(),
        )));
        let plan = bundle_status_after_sync(&unsynced("b", "1.0.0"), &outcome, None, 0);
        assert_eq!(plan.warning.expect("a warning").reason, reason::INVALID_ARCHIVE);
        let status = plan.status.clone();
        assert!(status.checksum.is_none());
        assert!(plan.conditions.iter().any(|c| c.type_ == condition::STALLED
            && c.status == ConditionStatus::True
            && c.message.contains("../x")));
    }

    #[test]
    fn a_transient_failure_is_reconciling_not_stalled() {
        let plan = bundle_status_after_sync(&unsynced("b", "1.0.0"), &transient(), None, 0);
        assert_eq!(plan.warning, None);
        let status = plan.into_status(Timestamp::from_second(1).expect("a time"));
        assert_eq!(condition(&status, condition::RECONCILING).status, "True");
        assert_eq!(
            condition(&status, condition::RECONCILING).reason,
            reason::PROGRESSING_WITH_RETRY
        );
        assert_eq!(condition(&status, condition::STALLED).status, "False");
        assert_eq!(
            condition(&status, condition::READY).reason,
            reason::SOURCE_UNAVAILABLE
        );
        let synced = condition(&status, condition::SYNCED);
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", reason::SOURCE_UNAVAILABLE)
        );
        assert!(synced.message.contains("HTTP 503") && synced.message.contains("attempt 1"));
    }

    #[test]
    fn success_records_every_field_and_ready() {
        let bundle = unsynced("b", "1.0.0");
        let plan = bundle_status_after_sync(&bundle, &SyncOutcome::Synced(facts("1.0.0")), None, 0);
        let status = plan.into_status(Timestamp::from_second(1).expect("a time"));
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.checksum, Some(sha("1.0.0")));
        assert_eq!(
            (status.zip_size, status.uncompressed_size, status.file_count),
            (Some(1000), Some(3000), Some(3))
        );
        assert_eq!(
            status.storage,
            Some(BundleStorageLocation {
                zip_key: zip_key(&sha("1.0.0")),
                manifest_key: Some(manifest_key(&sha("1.0.0"))),
                compressed_variants: false,
            })
        );
        for (type_, want) in [
            (condition::READY, "True"),
            (condition::SYNCED, "True"),
            (condition::RECONCILING, "False"),
            (condition::STALLED, "False"),
        ] {
            assert_eq!(condition(&status, type_).status, want, "{type_}");
        }
        // Served now with raw files; the Brotli variants come next.
        let mut synced = bundle.clone();
        synced.status = Some(status.clone());
        assert_eq!(sync_decision(&synced, None, 0), SyncDecision::CompressVariants);
        let mut done = bundle.clone();
        done.status = Some(status_with_variants(
            &status,
            &variant_manifest_key(&sha("1.0.0")),
        ));
        let storage = done
            .status
            .as_ref()
            .and_then(|s| s.storage.as_ref())
            .expect("storage");
        assert!(storage.compressed_variants);
        assert_eq!(storage.manifest_key, Some(variant_manifest_key(&sha("1.0.0"))));
        assert_eq!(
            done.status.as_ref().map(|s| &s.conditions),
            synced.status.as_ref().map(|s| &s.conditions),
            "the conditions do not change"
        );
        assert_eq!(sync_decision(&done, None, 0), SyncDecision::UpToDate);
        // A status that claims the variants with the first step's manifest describes no sync.
        let mut confused = done.clone();
        if let Some(storage) = confused.status.as_mut().and_then(|s| s.storage.as_mut()) {
            storage.manifest_key = Some(manifest_key(&sha("1.0.0")));
        }
        assert_eq!(
            sync_decision(&confused, None, 0),
            SyncDecision::Sync(SyncCause::StatusMismatch)
        );
        // A new generation with the same bytes keeps the variants (nothing is fetched again).
        let mut relabeled = done.clone();
        relabeled.metadata.generation = Some(2);
        assert_eq!(sync_decision(&relabeled, None, 0), SyncDecision::RecordGeneration);
        let kept = with_status(
            &relabeled,
            bundle_status_after_sync(&relabeled, &SyncOutcome::AlreadyStored, None, 0),
        );
        assert_eq!(sync_decision(&kept, None, 0), SyncDecision::UpToDate);
    }

    #[test]
    fn an_encrypted_success_has_no_manifest_and_no_file_figures() {
        let bundle = unsynced("b", "1.0.0");
        let bundle = Bundle {
            spec: crate::api::BundleSpec {
                encryption: Some(crate::api::bundle::BundleEncryption {
                    session_key: "aXY=:a2V5".into(),
                    encrypted_checksum: "00ff00ff00ff00ff".into(),
                }),
                ..bundle.spec.clone()
            },
            ..bundle
        };
        let facts = SyncFacts {
            uncompressed_size: None,
            file_count: None,
            manifest_key: None,
            ..facts("1.0.0")
        };
        let plan = bundle_status_after_sync(&bundle, &SyncOutcome::Synced(facts), None, 0);
        assert!(plan.conditions.iter().any(|c| c.message.contains("encrypted")));
        let done = with_status(&bundle, plan);
        let status = done.status.as_ref().expect("status");
        assert_eq!((status.uncompressed_size, status.file_count), (None, None));
        assert_eq!(status.storage.as_ref().expect("storage").manifest_key, None);
        assert_eq!(sync_decision(&done, None, 0), SyncDecision::UpToDate);
    }

    #[test]
    fn sync_facts_come_from_a_synced_bundle() {
        let synced = SyncedBundle {
            sha256: sha("x"),
            zip_size: 10,
            uncompressed_size: 20,
            file_count: 2,
            zip_key: zip_key(&sha("x")),
            manifest_key: manifest_key(&sha("x")),
            manifest: Vec::new(),
            uploaded_files: 2,
            reused_files: 0,
            encrypted: false,
            compressed_variants: false,
        };
        let plain = SyncFacts::from(&synced);
        assert_eq!((plain.file_count, plain.manifest_key.is_some()), (Some(2), true));
        let encrypted = SyncFacts::from(&SyncedBundle {
            encrypted: true,
            manifest_key: String::new(),
            file_count: 0,
            ..synced.clone()
        });
        assert_eq!(
            (
                encrypted.file_count,
                encrypted.uncompressed_size,
                encrypted.manifest_key
            ),
            (None, None, None)
        );
        // Encrypted with its delta files stored: the manifest and the file count, no size.
        let with_delta = SyncFacts::from(&SyncedBundle {
            encrypted: true,
            ..synced
        });
        assert_eq!(
            (
                with_delta.file_count,
                with_delta.uncompressed_size,
                with_delta.manifest_key.clone()
            ),
            (Some(2), None, Some(manifest_key(&sha("x"))))
        );
        let plan = synced_plan(BundleStatus::default(), &with_delta);
        assert!(
            plan.conditions[0].message.contains("2 encrypted delta files"),
            "{}",
            plan.conditions[0].message
        );
    }

    #[test]
    fn already_stored_without_a_recorded_sync_is_a_transient_failure() {
        let plan = bundle_status_after_sync(&unsynced("b", "1.0.0"), &SyncOutcome::AlreadyStored, None, 0);
        assert!(plan.retry.is_some());
        assert!(plan.warning.is_none());
    }

    // ---- deletion_decision ---------------------------------------------------------------

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("files/{}", sha(n))).collect()
    }

    fn keys_of(decision: DeletionDecision) -> Vec<String> {
        match decision {
            DeletionDecision::Remove { keys } => keys,
            other => panic!("expected Remove, got {other:?}"),
        }
    }

    #[test]
    fn an_unused_bundle_removes_its_zip_manifest_and_only_its_own_files() {
        let old = synced("old", "1.0.0", json!({}));
        let new = synced("new", "1.1.0", json!({}));
        let old_files = files(&["index", "vendor", "old-app"]);
        let mut new_files = files(&["index", "vendor", "new-app"]);
        new_files.push(format!("files/{}.br", sha("old-app"))); // another form of the same content
        let decision = deletion_decision(
            StoredBundle {
                bundle: &old,
                file_keys: Some(&old_files),
            },
            &[StoredBundle {
                bundle: &new,
                file_keys: Some(&new_files),
            }],
            &[channel("production", Some("new"), json!({}))],
            &[],
        );
        assert_eq!(decision.conditions(), None);
        // The bundle's manifest goes with its variant manifest; old-app's raw form stays, since
        // the other bundle lists its Brotli form (the two forms go together).
        let mut want = vec![
            zip_key(&sha("1.0.0")),
            manifest_key(&sha("1.0.0")),
            variant_manifest_key(&sha("1.0.0")),
        ];
        want.sort();
        assert_eq!(keys_of(decision), want);
        // Without that sibling, both forms of its files go.
        let keys = keys_of(deletion_decision(
            StoredBundle {
                bundle: &old,
                file_keys: Some(&old_files),
            },
            &[],
            &[],
            &[],
        ));
        assert!(keys.contains(&format!("files/{}", sha("old-app"))));
        assert!(keys.contains(&format!("files/{}.br", sha("old-app"))));
    }

    #[test]
    fn a_file_a_sibling_lists_in_one_form_is_kept_in_both() {
        let old = synced("old", "1.0.0", json!({}));
        let new = synced("new", "2.0.0", json!({}));
        // The old bundle's variants are done (it lists the `.br` form); the new one's are not
        // yet (it lists the raw form, and its second step may be about to use the variant).
        let old_files = vec![format!("files/{}.br", sha("shared"))];
        let new_files = vec![format!("files/{}", sha("shared"))];
        let keys = keys_of(deletion_decision(
            StoredBundle {
                bundle: &old,
                file_keys: Some(&old_files),
            },
            &[StoredBundle {
                bundle: &new,
                file_keys: Some(&new_files),
            }],
            &[],
            &[],
        ));
        assert!(keys.iter().all(|key| !key.starts_with("files/")), "{keys:?}");
    }

    #[test]
    fn a_bundle_a_channel_uses_is_held() {
        let bundle = synced("b", "1.0.0", json!({}));
        let own = files(&["index"]);
        let decision = deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: Some(&own),
            },
            &[],
            &[
                channel("production", Some("b"), json!({})),
                channel("beta", Some("other"), json!({})),
            ],
            &[],
        );
        let DeletionDecision::Hold { users, message } = &decision else {
            panic!("expected Hold, got {decision:?}")
        };
        assert_eq!(users, &["Channel/production"]);
        assert!(message.contains("Channel/production"), "{message}");
        let conditions = decision.conditions().expect("conditions");
        assert_eq!(conditions[0].type_, condition::RECONCILING);
        assert_eq!(conditions[0].reason, reason::IN_USE);
    }

    #[test]
    fn a_channel_still_serving_it_by_status_holds_it() {
        let bundle = synced("b", "1.0.0", json!({}));
        let mut moved = channel("production", Some("next"), json!({}));
        moved.status = Some(crate::api::ChannelStatus {
            stable: Some(crate::api::channel::ServedBundle {
                bundle: Some("b".into()),
                version: "1.0.0".into(),
            }),
            ..Default::default()
        });
        let decision = deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: None,
            },
            &[],
            &[moved],
            &[],
        );
        assert!(matches!(decision, DeletionDecision::Hold { .. }), "{decision:?}");
    }

    #[test]
    fn a_bundle_recorded_as_a_channels_promoted_stable_is_held() {
        let bundle = synced("b", "1.0.0", json!({}));
        let mut promoted_on = channel("production", Some("old"), json!({}));
        promoted_on.status = Some(crate::api::ChannelStatus {
            promoted: Some(crate::api::channel::PromotedBundle {
                bundle: "b".into(),
                over_bundle_ref: Some("old".into()),
                rollout: "ro".into(),
            }),
            ..Default::default()
        });
        let stored = StoredBundle {
            bundle: &bundle,
            file_keys: None,
        };
        let DeletionDecision::Hold { users, .. } = deletion_decision(stored, &[], &[promoted_on], &[]) else {
            panic!("expected Hold")
        };
        assert_eq!(users, ["Channel/production"]);
    }

    #[test]
    fn a_bundle_a_rollout_uses_is_held_as_candidate_or_stable() {
        let bundle = synced("b", "1.0.0", json!({}));
        let stored = StoredBundle {
            bundle: &bundle,
            file_keys: None,
        };
        let candidate = rollout("ro", "production", "b", 10, "Progressing");
        let DeletionDecision::Hold { users, .. } = deletion_decision(stored, &[], &[], &[candidate]) else {
            panic!("expected Hold")
        };
        assert_eq!(users, ["Rollout/ro"]);
        let mut from = rollout("ro2", "production", "next", 10, "Aborted");
        from.status.as_mut().expect("status").stable_bundle = Some("b".into());
        let decision = deletion_decision(stored, &[], &[], &[from]);
        assert!(matches!(decision, DeletionDecision::Hold { .. }), "{decision:?}");
        // A rollout of another namespace does not count.
        let mut elsewhere = rollout("ro3", "production", "b", 10, "Progressing");
        elsewhere.metadata.namespace = Some("other-ns".into());
        assert!(matches!(
            deletion_decision(stored, &[], &[], &[elsewhere]),
            DeletionDecision::Remove { .. }
        ));
    }

    #[test]
    fn an_encrypted_bundle_removes_only_its_zip() {
        let bundle = synced(
            "enc",
            "2.0.0",
            json!({"spec": {"encryption": {"sessionKey": "aXY=:a2V5", "encryptedChecksum": "00ff00ff00ff00ff"}},
                   "status": {"storage": {"manifestKey": null}}}),
        );
        let other = synced("plain", "1.0.0", json!({}));
        let other_files = files(&["index"]);
        let decision = deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: None,
            },
            &[StoredBundle {
                bundle: &other,
                file_keys: Some(&other_files),
            }],
            &[],
            &[],
        );
        // The manifest key is listed too: removing a missing key is a no-op, and it clears one
        // left by an earlier unencrypted sync of the same zip.
        assert_eq!(
            keys_of(decision),
            [
                variant_manifest_key(&sha("2.0.0")),
                manifest_key(&sha("2.0.0")),
                zip_key(&sha("2.0.0"))
            ]
        );
    }

    #[test]
    fn two_bundles_of_the_same_zip_share_everything() {
        let first = synced("a", "1.0.0", json!({}));
        let mut twin = synced("twin", "1.0.0", json!({}));
        twin.spec.version = "1.0.1".into(); // same bytes, another version
        let own = files(&["index"]);
        let decision = deletion_decision(
            StoredBundle {
                bundle: &first,
                file_keys: Some(&own),
            },
            &[StoredBundle {
                bundle: &twin,
                file_keys: Some(&own),
            }],
            &[],
            &[],
        );
        assert_eq!(keys_of(decision), Vec::<String>::new());
    }

    #[test]
    fn a_source_manifest_key_of_another_bundle_is_kept() {
        let bundle = synced("a", "1.0.0", json!({}));
        let mut reader = unsynced("reader", "3.0.0");
        reader.spec.source.url = None;
        reader.spec.source.manifest_key = Some(manifest_key(&sha("1.0.0")));
        let keys = keys_of(deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: None,
            },
            &[StoredBundle {
                bundle: &reader,
                file_keys: None,
            }],
            &[],
            &[],
        ));
        assert_eq!(
            keys,
            [variant_manifest_key(&sha("1.0.0")), zip_key(&sha("1.0.0"))]
        );
    }

    #[test]
    fn a_source_storage_key_of_another_bundle_is_kept() {
        let bundle = synced("a", "1.0.0", json!({}));
        let reader = unsynced("reader", "3.0.0");
        let mut reader = reader;
        reader.spec.source.url = None;
        reader.spec.source.storage_key = Some(zip_key(&sha("1.0.0")));
        reader.spec.encryption = Some(crate::api::bundle::BundleEncryption {
            session_key: "aXY=:a2V5".into(),
            encrypted_checksum: "00ff00ff00ff00ff".into(),
        });
        let keys = keys_of(deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: None,
            },
            &[StoredBundle {
                bundle: &reader,
                file_keys: None,
            }],
            &[],
            &[],
        ));
        assert_eq!(
            keys,
            [variant_manifest_key(&sha("1.0.0")), manifest_key(&sha("1.0.0"))]
        );
    }

    #[test]
    fn a_sibling_mid_sync_without_a_manifest_makes_the_deletion_wait() {
        let bundle = synced("a", "1.0.0", json!({}));
        let syncing = unsynced("syncing", "1.1.0");
        let own = files(&["index", "a"]);
        let decision = deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: Some(&own),
            },
            &[StoredBundle {
                bundle: &syncing,
                file_keys: None,
            }],
            &[],
            &[],
        );
        let DeletionDecision::WaitForSync { bundles, message } = &decision else {
            panic!("expected WaitForSync, got {decision:?}")
        };
        assert_eq!(bundles, &["syncing"]);
        assert!(message.contains("Bundle/syncing"), "{message}");
        assert_eq!(
            decision.conditions().expect("conditions")[0].reason,
            reason::WAITING_FOR_SYNC
        );
        // Once it has a manifest, its files are known and the deletion proceeds.
        let theirs = files(&["index"]);
        let keys = keys_of(deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: Some(&own),
            },
            &[StoredBundle {
                bundle: &syncing,
                file_keys: Some(&theirs),
            }],
            &[],
            &[],
        ));
        assert!(keys.contains(&format!("files/{}", sha("a"))));
        assert!(!keys.contains(&format!("files/{}", sha("index"))));
    }

    #[test]
    fn settled_siblings_without_a_manifest_do_not_make_it_wait() {
        let bundle = synced("a", "1.0.0", json!({}));
        let own = files(&["index"]);
        let stalled = with_status(
            &unsynced("broken", "1.1.0"),
            bundle_status_after_sync(&unsynced("broken", "1.1.0"), &terminal(), None, 0),
        );
        let encrypted_syncing = {
            let mut b = unsynced("enc", "1.2.0");
            b.spec.encryption = Some(crate::api::bundle::BundleEncryption {
                session_key: "aXY=:a2V5".into(),
                encrypted_checksum: "00ff00ff00ff00ff".into(),
            });
            b
        };
        let keys = keys_of(deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: Some(&own),
            },
            &[
                StoredBundle {
                    bundle: &stalled,
                    file_keys: None,
                },
                StoredBundle {
                    bundle: &encrypted_syncing,
                    file_keys: None,
                },
            ],
            &[],
            &[],
        ));
        assert!(keys.contains(&format!("files/{}", sha("index"))));
        // A bundle with no files of its own never waits.
        let decision = deletion_decision(
            StoredBundle {
                bundle: &bundle,
                file_keys: None,
            },
            &[StoredBundle {
                bundle: &unsynced("syncing", "1.3.0"),
                file_keys: None,
            }],
            &[],
            &[],
        );
        assert!(
            matches!(decision, DeletionDecision::Remove { .. }),
            "{decision:?}"
        );
    }

    #[test]
    fn a_sibling_being_deleted_protects_its_files_only_while_it_is_used() {
        let bundle = synced("a", "1.0.0", json!({}));
        let going = synced(
            "going",
            "1.1.0",
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        let shared = files(&["index"]);
        let stored = [StoredBundle {
            bundle: &going,
            file_keys: Some(&shared),
        }];
        let me = StoredBundle {
            bundle: &bundle,
            file_keys: Some(&shared),
        };
        let keys = keys_of(deletion_decision(me, &stored, &[], &[]));
        assert!(keys.contains(&shared[0]), "both are going: the shared file goes");
        let keys = keys_of(deletion_decision(
            me,
            &stored,
            &[channel("production", Some("going"), json!({}))],
            &[],
        ));
        assert!(
            !keys.contains(&shared[0]),
            "the other is held: the shared file stays"
        );
    }

    #[test]
    fn the_deleted_bundle_itself_in_the_sibling_list_is_ignored_and_foreign_keys_are_never_removed() {
        let bundle = synced("a", "1.0.0", json!({}));
        let own = vec![
            format!("files/{}", sha("index")),
            "../escape".to_owned(),
            "zips/other.zip".to_owned(),
            "files/not-a-hash".to_owned(),
        ];
        let me = StoredBundle {
            bundle: &bundle,
            file_keys: Some(&own),
        };
        let keys = keys_of(deletion_decision(me, &[me], &[], &[]));
        let mut want = vec![
            zip_key(&sha("1.0.0")),
            manifest_key(&sha("1.0.0")),
            variant_manifest_key(&sha("1.0.0")),
            format!("files/{}", sha("index")),
            format!("files/{}.br", sha("index")),
        ];
        want.sort();
        assert_eq!(keys, want);
    }
}
