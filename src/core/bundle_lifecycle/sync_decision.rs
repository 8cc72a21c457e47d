//! Whether to sync a Bundle now, and the retry schedule of transient failures.

use sha2::{Digest, Sha256};

use crate::{
    api::{
        Bundle,
        bundle::BundleStatus,
        constants::{condition, reason},
    },
    core::conditions::status_of,
    layout::{manifest_key, variant_manifest_key, zip_key},
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
    let delay = crate::core::backoff::doubling_delay(
        std::time::Duration::from_millis(RETRY_BASE_MS),
        std::time::Duration::from_millis(RETRY_CAP_MS),
        attempt.saturating_sub(1),
    );
    u64::try_from(delay.as_millis()).unwrap_or(RETRY_CAP_MS)
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
