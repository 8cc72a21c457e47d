//! The one Bundle sync executor of both shells: it asks the core whether a Bundle needs a sync
//! ([`sync_decision`]), runs the sync (the one implementation in [`crate::sync`]), and returns the
//! status plan of the core ([`bundle_status_after_sync`]) with when to look again. The controller
//! writes that status to Kubernetes; standalone mode keeps it in its state and serves it.
//!
//! Where the App's storage comes from differs (the controller reads the App's Secrets, standalone
//! mode uses the environment's credentials): the shells give it through [`StoragePort`].

use std::{collections::HashMap, future::Future, path::Path, sync::Mutex, time::Duration};

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{Bundle, BundleStatus, constants::reason},
    core::bundle_lifecycle::{
        self, RetryState, SyncCause, SyncDecision, SyncFacts, SyncFailure, SyncOutcome, WarningEvent,
        bundle_status_after_sync, sync_decision,
    },
    storage::OpenedStorage,
    sync::{self, BundleSourceRef, SyncError, SyncLimits, SyncRequest},
    telemetry::error_chain,
};

/// Why a Bundle's App or its storage cannot be used: the Bundle is Stalled until they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageProblem {
    /// The condition reason (a constant of [`reason`]).
    pub reason: &'static str,
    /// What is wrong (credentials redacted).
    pub message: String,
    /// When to look again although nothing watched changed (e.g. a Secret, which is not watched).
    pub recheck: Option<Duration>,
}

/// Why the storage of a Bundle's App was not opened.
#[derive(Debug)]
pub enum OpenFailure<E> {
    /// The App, what it references or its storage cannot be used: the Bundle is Stalled until
    /// they change.
    Unusable(StorageProblem),
    /// The shell itself failed (e.g. the API server): retried by the shell.
    Shell(E),
}

impl<E> From<StorageProblem> for OpenFailure<E> {
    fn from(problem: StorageProblem) -> Self {
        OpenFailure::Unusable(problem)
    }
}

/// How a shell opens the storage of a Bundle's App.
pub trait StoragePort {
    /// A failure of the shell itself (e.g. the API server), retried by the shell.
    type Error;

    /// The storage of `bundle`'s App, or why it cannot be used.
    fn open(
        &self,
        bundle: &Bundle,
    ) -> impl Future<Output = Result<OpenedStorage, OpenFailure<Self::Error>>> + Send;
}

/// When to look at a Bundle again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextLook {
    /// When the Bundle (or what it references) changes.
    AwaitChange,
    /// After this long (a retry, or a recheck of a reference).
    After(Duration),
    /// At the shell's periodic resync: the Bundle is up to date.
    Resync,
}

/// What one look at a Bundle gave.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncStep {
    /// Record this status (when it differs from the stored one).
    Record {
        /// The Bundle's new status (boxed: it is much larger than the other steps).
        status: Box<BundleStatus>,
        /// After a terminal sync failure: the Warning event to publish.
        warning: Option<WarningEvent>,
        /// What went wrong, for the log (None after a successful sync).
        problem: Option<String>,
        /// When to look again.
        next: NextLook,
    },
    /// Nothing to record.
    Wait(NextLook),
    /// The bundle is synced and served with raw files; its Brotli variants are due: run
    /// [`compress_variants`] and record the status it returns.
    CompressVariants,
}

/// What one sync attempt gave.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// The sync ran: synced, or failed (its failures are outcomes).
    Outcome(SyncOutcome),
    /// The App, the source or the storage cannot be used: the Bundle is Stalled.
    Unusable(StorageProblem),
}

/// Runs Bundle syncs, remembering transient failures for the core's retry schedule.
pub struct BundleSyncer {
    /// The HTTP client for URL sources.
    pub http: reqwest::Client,
    /// Limits on the zips.
    pub limits: SyncLimits,
    /// Transient failures per Bundle (its uid, else namespace/name). Losing them (a restart)
    /// only means one earlier retry.
    retries: Mutex<HashMap<String, RetryState>>,
}

impl BundleSyncer {
    /// An executor with no failures remembered.
    pub fn new(http: reqwest::Client, limits: SyncLimits) -> BundleSyncer {
        BundleSyncer {
            http,
            limits,
            retries: Mutex::new(HashMap::new()),
        }
    }

    /// One look at `bundle` at `now`: decides with the core, syncs when it says so, and returns
    /// the status plan. `source_dir` is the folder relative file sources are read from
    /// (standalone mode; None in a cluster).
    #[tracing::instrument(skip_all)]
    pub async fn step<P: StoragePort>(
        &self,
        bundle: &Bundle,
        storage: &P,
        source_dir: Option<&Path>,
        now: Timestamp,
    ) -> Result<SyncStep, P::Error> {
        if let Some(step) = self.look(bundle, now) {
            return Ok(step);
        }
        let attempt = self.attempt(bundle, storage, source_dir).await?;
        Ok(self.plan(bundle, attempt, now))
    }

    /// The part of [`BundleSyncer::step`] that needs no I/O: the step when the core's decision
    /// at `now` is not a sync, None when a sync is due (then run [`BundleSyncer::attempt`] and
    /// give its result to [`BundleSyncer::plan`]; standalone mode does so in the background).
    pub fn look(&self, bundle: &Bundle, now: Timestamp) -> Option<SyncStep> {
        let retry = self.retry_of(&retry_key(bundle));
        let now_ms = now.as_millisecond();
        match sync_decision(bundle, retry.as_ref(), now_ms) {
            SyncDecision::UpToDate => Some(SyncStep::Wait(NextLook::Resync)),
            SyncDecision::CompressVariants => Some(SyncStep::CompressVariants),
            SyncDecision::AwaitChange { .. } => Some(SyncStep::Wait(NextLook::AwaitChange)),
            SyncDecision::RetryAt { retry_at_ms } => {
                Some(SyncStep::Wait(NextLook::After(until(retry_at_ms, now_ms))))
            }
            SyncDecision::RecordGeneration => {
                Some(self.plan(bundle, Attempt::Outcome(SyncOutcome::AlreadyStored), now))
            }
            SyncDecision::Sync(cause) => {
                tracing::info!(?cause, "syncing");
                None
            }
        }
    }

    /// Why a sync of `bundle` is due at `now`, if it is (what [`BundleSyncer::look`] answers
    /// None for), without recording anything.
    pub fn sync_due(&self, bundle: &Bundle, now: Timestamp) -> Option<SyncCause> {
        let retry = self.retry_of(&retry_key(bundle));
        match sync_decision(bundle, retry.as_ref(), now.as_millisecond()) {
            SyncDecision::Sync(cause) => Some(cause),
            _ => None,
        }
    }

    /// Runs the sync of `bundle` (the I/O of a look; it remembers nothing): what it gave, or the
    /// shell's own failure.
    pub async fn attempt<P: StoragePort>(
        &self,
        bundle: &Bundle,
        storage: &P,
        source_dir: Option<&Path>,
    ) -> Result<Attempt, P::Error> {
        match self.sync_now(bundle, storage, source_dir).await {
            Ok(outcome) => Ok(Attempt::Outcome(outcome)),
            Err(OpenFailure::Unusable(problem)) => Ok(Attempt::Unusable(problem)),
            Err(OpenFailure::Shell(error)) => Err(error),
        }
    }

    /// The status plan after `attempt`, made at `now` (when the attempt ended, so a retry is
    /// counted from its failure): remembers a transient failure for the core's retry schedule.
    pub fn plan(&self, bundle: &Bundle, attempt: Attempt, now: Timestamp) -> SyncStep {
        let outcome = match attempt {
            Attempt::Outcome(outcome) => outcome,
            Attempt::Unusable(problem) => return stalled(bundle, problem, now),
        };
        let key = retry_key(bundle);
        let retry = self.retry_of(&key);
        let now_ms = now.as_millisecond();
        let plan = bundle_status_after_sync(bundle, &outcome, retry.as_ref(), now_ms);
        self.remember(&key, plan.retry.clone());
        let next = match &plan.retry {
            Some(retry) => NextLook::After(until(retry.retry_at_ms, now_ms)),
            None if plan.warning.is_some() => NextLook::AwaitChange,
            None => NextLook::Resync,
        };
        let problem = match &outcome {
            SyncOutcome::Failed(failure) => Some(match &plan.retry {
                Some(_) => format!("{}: {} (retrying)", failure.reason, failure.message),
                None => format!("{}: {}", failure.reason, failure.message),
            }),
            SyncOutcome::Synced(_) | SyncOutcome::AlreadyStored => None,
        };
        let warning = plan.warning.clone();
        SyncStep::Record {
            status: Box::new(plan.into_status(now)),
            warning,
            problem,
            next,
        }
    }

    /// Runs the sync: an [`OpenFailure`] when the App, the source or the storage cannot be used
    /// or the shell failed; the outcome otherwise (the sync's own failures are outcomes).
    async fn sync_now<P: StoragePort>(
        &self,
        bundle: &Bundle,
        storage: &P,
        source_dir: Option<&Path>,
    ) -> Result<SyncOutcome, OpenFailure<P::Error>> {
        let source = match BundleSourceRef::of(&bundle.spec.source, source_dir) {
            Ok(source) => source,
            Err(error) => {
                return Err(OpenFailure::Unusable(StorageProblem {
                    reason: reason::INVALID_SPEC,
                    message: error.to_string(),
                    recheck: None,
                }));
            }
        };
        let opened = storage.open(bundle).await?;
        let request = SyncRequest {
            source: &source,
            expected_sha256: &bundle.spec.source.sha256,
            store: &opened.store,
            prefix: &opened.prefix,
            limits: &self.limits,
            http: &self.http,
        };
        let result = match bundle.spec.encryption {
            Some(_) => sync::sync_encrypted_bundle(request).await,
            None => sync::sync_bundle(request).await,
        };
        Ok(match result {
            Ok(synced) => {
                tracing::info!(
                    uploaded = synced.uploaded_files,
                    reused = synced.reused_files,
                    zip_size = synced.zip_size,
                    "synced"
                );
                SyncOutcome::Synced(SyncFacts::from(&synced))
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), terminal = error.is_terminal(), "sync failed");
                SyncOutcome::Failed(SyncFailure::from(&error))
            }
        })
    }

    fn retry_of(&self, key: &str) -> Option<RetryState> {
        self.retries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
            .cloned()
    }

    fn remember(&self, key: &str, retry: Option<RetryState>) {
        let mut retries = self
            .retries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match retry {
            Some(retry) => retries.insert(key.to_owned(), retry),
            None => retries.remove(key),
        };
    }
}

/// The core's Stalled plan for a Bundle whose App, source or storage cannot be used.
fn stalled(bundle: &Bundle, problem: StorageProblem, now: Timestamp) -> SyncStep {
    let next = match problem.recheck {
        Some(after) => NextLook::After(after),
        None => NextLook::AwaitChange,
    };
    let failure = SyncOutcome::Failed(SyncFailure {
        terminal: true,
        reason: problem.reason,
        message: problem.message.clone(),
    });
    let plan = bundle_status_after_sync(bundle, &failure, None, now.as_millisecond());
    SyncStep::Record {
        status: Box::new(plan.into_status(now)),
        // The Ready transition's own event says it; a storage problem is not the bundle's fault.
        warning: None,
        problem: Some(problem.message),
        next,
    }
}

/// The second step of a sync, once Synced is recorded: makes the Brotli variants of the bundle's
/// files and returns `status` naming their manifest.
pub async fn compress_variants(
    status: &BundleStatus,
    sha256: &str,
    opened: &OpenedStorage,
) -> Result<BundleStatus, SyncError> {
    let variants = sync::compress_variants(&opened.store, &opened.prefix, sha256).await?;
    Ok(bundle_lifecycle::status_with_variants(
        status,
        &variants.manifest_key,
    ))
}

/// What the retries of `bundle` are remembered by.
fn retry_key(bundle: &Bundle) -> String {
    match &bundle.metadata.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}",
            bundle.metadata.namespace.as_deref().unwrap_or_default(),
            bundle.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// The wait from `now_ms` until `at_ms` (at least 1 ms, so a due retry is not a busy loop).
fn until(at_ms: i64, now_ms: i64) -> Duration {
    let wait = u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0);
    Duration::from_millis(wait.max(1))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use std::convert::Infallible;

    use super::*;
    use crate::{
        api::constants::condition,
        core::{conditions::status_of, fixtures},
        storage::Credentials,
    };

    /// A storage port that always gives the same answer.
    struct Fixed(Result<OpenedStorage, StorageProblem>);

    impl StoragePort for Fixed {
        type Error = Infallible;

        async fn open(&self, _: &Bundle) -> Result<OpenedStorage, OpenFailure<Infallible>> {
            self.0.clone().map_err(OpenFailure::Unusable)
        }
    }

    /// A Bundle never synced, whose source is a URL nobody answers (a transient failure).
    fn unsynced_bundle() -> Bundle {
        let mut bundle = fixtures::bundle(
            "shop-1-0-0",
            "1.0.0",
            json!({"source": {"url": "http://127.0.0.1:1/bundle.zip"}}),
        );
        bundle.status = None;
        bundle.metadata.generation = Some(1);
        bundle
    }

    fn syncer() -> BundleSyncer {
        let limits = SyncLimits {
            allow_http: true,
            ..SyncLimits::default()
        };
        BundleSyncer::new(reqwest::Client::new(), limits)
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[tokio::test]
    async fn a_storage_problem_is_the_same_stalled_status_in_both_shells() {
        let problem = StorageProblem {
            reason: reason::REFERENCE_NOT_FOUND,
            message: "App shop does not exist".into(),
            recheck: None,
        };
        let step = syncer()
            .step(&unsynced_bundle(), &Fixed(Err(problem)), None, at(0))
            .await
            .unwrap();
        let SyncStep::Record {
            status,
            warning,
            problem,
            next,
        } = step
        else {
            panic!("a status to record: {step:?}");
        };
        assert_eq!(status_of(&status.conditions, condition::STALLED), Some("True"));
        assert_eq!(status_of(&status.conditions, condition::READY), Some("False"));
        assert_eq!(warning, None);
        assert_eq!(problem.as_deref(), Some("App shop does not exist"));
        assert_eq!(next, NextLook::AwaitChange);
    }

    #[tokio::test]
    async fn a_transient_failure_waits_for_the_cores_retry_schedule() {
        let folder = tempfile::tempdir().unwrap();
        let app = fixtures::app("shop", "com.example.shop", json!({}));
        let opened = crate::storage::open(&app.spec.storage, folder.path(), &Credentials::default()).unwrap();
        let syncer = syncer();
        let mut bundle = unsynced_bundle();
        let storage = Fixed(Ok(opened));
        let step = syncer.step(&bundle, &storage, None, at(0)).await.unwrap();
        let SyncStep::Record {
            status,
            problem,
            next,
            ..
        } = step
        else {
            panic!("a status to record: {step:?}");
        };
        assert_eq!(status_of(&status.conditions, condition::SYNCED), Some("False"));
        assert_eq!(status_of(&status.conditions, condition::STALLED), Some("False"));
        assert!(problem.is_some_and(|p| p.ends_with("(retrying)")));
        // The first retry: 5 s, moved by at most 20 %.
        let NextLook::After(wait) = next else {
            panic!("a retry: {next:?}");
        };
        assert!(
            (Duration::from_secs(4)..=Duration::from_secs(6)).contains(&wait),
            "{wait:?}"
        );

        // A look before the retry is due syncs nothing and says when to come back.
        bundle.status = Some(*status);
        let again = syncer.step(&bundle, &storage, None, at(1)).await.unwrap();
        assert_eq!(
            again,
            SyncStep::Wait(NextLook::After(wait - Duration::from_secs(1)))
        );
    }

    #[tokio::test]
    async fn a_sync_run_apart_counts_its_retry_from_when_it_ended() {
        let folder = tempfile::tempdir().unwrap();
        let app = fixtures::app("shop", "com.example.shop", json!({}));
        let opened = crate::storage::open(&app.spec.storage, folder.path(), &Credentials::default()).unwrap();
        let storage = Fixed(Ok(opened));
        let syncer = syncer();
        let mut bundle = unsynced_bundle();
        // A sync is due: the look says so and records nothing.
        assert_eq!(syncer.look(&bundle, at(0)), None);
        assert!(syncer.sync_due(&bundle, at(0)).is_some());
        assert!(syncer.retry_of(&retry_key(&bundle)).is_none());

        // The attempt (no one answers the source) ends 40 s later, as a hung storage's would.
        let attempt = syncer.attempt(&bundle, &storage, None).await.unwrap();
        let step = syncer.plan(&bundle, attempt, at(40));
        let SyncStep::Record { status, next, .. } = step else {
            panic!("a status to record: {step:?}");
        };
        let NextLook::After(wait) = next else {
            panic!("a retry: {next:?}");
        };
        assert!(
            (Duration::from_secs(4)..=Duration::from_secs(6)).contains(&wait),
            "{wait:?}"
        );
        bundle.status = Some(*status);
        assert_eq!(
            syncer.look(&bundle, at(41)),
            Some(SyncStep::Wait(NextLook::After(wait - Duration::from_secs(1))))
        );
        assert!(syncer.sync_due(&bundle, at(41)).is_none());
        // Once due, the retry is a sync again.
        assert!(syncer.sync_due(&bundle, at(47)).is_some());
    }

    #[tokio::test]
    async fn an_unusable_storage_found_by_an_attempt_is_the_stalled_status() {
        let problem = StorageProblem {
            reason: reason::REFERENCE_NOT_READY,
            message: "the storage of App shop cannot be opened".into(),
            recheck: None,
        };
        let syncer = syncer();
        let bundle = unsynced_bundle();
        let attempt = syncer.attempt(&bundle, &Fixed(Err(problem)), None).await.unwrap();
        assert!(matches!(attempt, Attempt::Unusable(_)), "{attempt:?}");
        let step = syncer.plan(&bundle, attempt, at(0));
        let SyncStep::Record { status, next, .. } = step else {
            panic!("a status to record: {step:?}");
        };
        assert_eq!(status_of(&status.conditions, condition::STALLED), Some("True"));
        assert_eq!(next, NextLook::AwaitChange);
    }
}
