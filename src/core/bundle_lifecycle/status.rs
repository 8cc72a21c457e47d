//! The status a Bundle gets after a sync attempt: the facts a sync stored or why it failed, as
//! conditions, a retry and a Warning event.

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{
        Bundle,
        bundle::{BundleStatus, BundleStorageLocation},
        constants::{condition, reason},
    },
    core::conditions::{
        ConditionStatus, DesiredCondition, merge_conditions, ready_set, stalled_set, status_of,
    },
};

use super::sync_decision::{RetryState, retry_delay_ms};

/// What a sync stored, as the status records it (bundle sync builds it from what it stored).
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
    /// The manifest names the Brotli variants (the sync's second step is done).
    pub compressed_variants: bool,
}

/// Why a sync failed, as the status reports it (bundle sync builds it from its error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    /// Retrying cannot help: the Bundle must change.
    pub terminal: bool,
    /// The condition reason (a constant of [`reason`]).
    pub reason: &'static str,
    /// The error, with its causes.
    pub message: String,
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

pub(super) fn synced_plan(base: BundleStatus, facts: &SyncFacts) -> BundleStatusPlan {
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
