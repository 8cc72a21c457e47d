//! Every contract string of the operator, in one place.
//!
//! These names are a compatibility surface: field managers decide who owns which fields under
//! server-side apply, finalizers block deletion, and condition types, reasons, labels and
//! annotations are read by people, dashboards and GitOps health checks. Renaming one is a
//! breaking change.

/// The API group of every custom resource.
pub const GROUP: &str = "ota.dev";
/// The one served and stored API version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every custom resource.
pub const API_VERSION: &str = "ota.dev/v1alpha1";
/// The `kubectl get` category that lists all four kinds at once (`kubectl get ota`).
pub const CATEGORY: &str = "ota";

/// The path of a Rollout's failure figures on the update server's internal listener.
pub const ROLLOUT_FIGURES_PATH: &str = "/internal/v1/rollout-figures";
/// The update server's internal path for an App's monthly active devices
/// (`?app_id=A` → `{"devices":n}`), which the controller records in the App's status.
pub const MONTHLY_ACTIVE_DEVICES_PATH: &str = "/internal/v1/monthly-active-devices";

/// Field managers used with server-side apply.
pub mod field_manager {
    /// Owns the children the controller renders (Deployments, Services, ...).
    pub const CONTROLLER: &str = "ota-operator";
    /// Owns `.status` and finalizers of the custom resources.
    pub const STATUS: &str = "ota-operator-status";
    /// Owns `.status.promoted` of Channels: the Rollout reconciler records a completed
    /// candidate there, apart from the rest of the status that the Channel reconciler owns.
    pub const PROMOTION: &str = "ota-operator-promotion";
    /// Owns what `ota bundle push` writes.
    pub const CLI: &str = "ota-cli";
    /// Owns what the kubectl plugin writes (promote, pause, abort, retry annotations).
    pub const KUBECTL_PLUGIN: &str = "kubectl-ota";
}

/// Finalizers.
pub mod finalizer {
    /// Held by a Bundle until the objects that only it references are removed from storage.
    pub const BUNDLE_STORAGE: &str = "bundles.ota.dev/storage-cleanup";
}

/// Condition types (`status.conditions[].type`).
pub mod condition {
    /// kstatus: the object is fully reconciled and serving.
    pub const READY: &str = "Ready";
    /// kstatus (abnormal-true): the controller is still working on the latest change.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus (abnormal-true): the controller hit an error it cannot retry its way out of.
    pub const STALLED: &str = "Stalled";
    /// A Bundle's zip and files are in the App's storage and verified.
    pub const SYNCED: &str = "Synced";
    /// A Rollout waits for time to pass or for a person to promote it.
    pub const PAUSED: &str = "Paused";
    /// A Rollout's candidate became the channel's stable bundle.
    pub const COMPLETED: &str = "Completed";
    /// An App's update server is available to devices.
    pub const AVAILABLE: &str = "Available";
}

/// Condition reasons (PascalCase, stable).
pub mod reason {
    /// Everything the spec asks for is in place.
    pub const RECONCILED: &str = "Reconciled";
    /// The controller has started work on a new generation.
    pub const PROGRESSING: &str = "Progressing";
    /// A transient failure; the controller retries with backoff.
    pub const PROGRESSING_WITH_RETRY: &str = "ProgressingWithRetry";
    /// The spec is invalid in a way the API server's schema could not catch.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced App, Channel or Bundle does not exist.
    pub const REFERENCE_NOT_FOUND: &str = "ReferenceNotFound";
    /// A referenced object exists but is not ready yet.
    pub const REFERENCE_NOT_READY: &str = "ReferenceNotReady";
    /// The bundle bytes did not match the declared sha256.
    pub const CHECKSUM_MISMATCH: &str = "ChecksumMismatch";
    /// The bundle zip is malformed or hostile (path traversal, symlinks, zip bomb, ...).
    pub const INVALID_ARCHIVE: &str = "InvalidArchive";
    /// The bundle source could not be fetched.
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    /// Object storage could not be reached or refused the request.
    pub const STORAGE_UNAVAILABLE: &str = "StorageUnavailable";
    /// A protected channel refused a bundle without a valid signature.
    pub const SIGNATURE_REQUIRED: &str = "SignatureRequired";
    /// A protected channel refused a bundle whose signature (its session key and encrypted
    /// checksum) does not open with the App's public key.
    pub const INVALID_SIGNATURE: &str = "InvalidSignature";
    /// A Bundle's deletion waits because a Channel or Rollout still uses it.
    pub const IN_USE: &str = "InUse";
    /// A Bundle's deletion waits for another bundle of the same storage to finish its sync, so
    /// that no file the two share is removed under it.
    pub const WAITING_FOR_SYNC: &str = "WaitingForSync";
    /// A Rollout pause step is waiting for its duration.
    pub const PAUSE_STEP: &str = "PauseStep";
    /// A Rollout pause step is waiting for `kubectl ota promote`.
    pub const WAITING_FOR_PROMOTION: &str = "WaitingForPromotion";
    /// A person paused the Rollout.
    pub const PAUSED_BY_USER: &str = "PausedByUser";
    /// The analysis found the failure rate above the policy and paused the Rollout.
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    /// A metric of the analysis was inconclusive more often than its `inconclusiveLimit` and
    /// paused the Rollout for a person.
    pub const ANALYSIS_INCONCLUSIVE: &str = "AnalysisInconclusive";
    /// A metric's provider failed more often in a row than its `consecutiveErrorLimit`: the
    /// Rollout pauses until the metric can be measured again (it never aborts for that).
    pub const METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
    /// The metrics that paused a Rollout could be measured again; the pause lifted (Event).
    pub const METRICS_RECOVERED: &str = "MetricsRecovered";
    /// A `dryRun` metric crossed one of its limits; it does not act (Event).
    pub const DRY_RUN_METRIC_FAILED: &str = "DryRunMetricFailed";
    /// The Rollout was aborted (by the analysis or by a person); stable is served to everyone.
    pub const ABORTED: &str = "Aborted";
    /// The Rollout reached its last step; the candidate is the channel's stable bundle.
    pub const ROLLOUT_COMPLETED: &str = "RolloutCompleted";
    /// A Rollout began moving its Channel to a new candidate (Event).
    pub const ROLLOUT_STARTED: &str = "RolloutStarted";
    /// A Rollout step offered the candidate to a larger share of devices (Event).
    pub const PERCENT_INCREASED: &str = "PercentIncreased";
    /// A timed pause step ran its course (Event).
    pub const PAUSE_ENDED: &str = "PauseEnded";
    /// A person promoted the Rollout past its current pause or analysis step (Event).
    pub const PROMOTED: &str = "Promoted";
    /// A person promoted the Rollout past every remaining step (Event).
    pub const PROMOTED_FULL: &str = "PromotedFull";
    /// A person started an aborted Rollout again from its first step (Event).
    pub const RETRIED: &str = "Retried";
    /// A command annotation that does not apply in the Rollout's phase (Event).
    pub const COMMAND_IGNORED: &str = "CommandIgnored";
    /// An analysis step found the failure rate within the policy (Event).
    pub const ANALYSIS_PASSED: &str = "AnalysisPassed";
    /// An analysis step waits until at least `minAttempts` devices have tried the candidate.
    pub const WAITING_FOR_ANALYSIS: &str = "WaitingForAnalysis";
    /// The analysis figures could not be read (or were inconsistent); the analysis waits.
    pub const ANALYSIS_UNAVAILABLE: &str = "AnalysisUnavailable";
    /// A completed Rollout's candidate was recorded as its Channel's stable bundle.
    pub const STABLE_RECORDED: &str = "StableRecorded";
    /// A Channel's `spec.bundleRef` changed after a promotion: git's choice replaces it.
    pub const PROMOTION_CLEARED: &str = "PromotionCleared";
}

/// Labels the operator sets on what it creates.
pub mod label {
    /// The standard name label.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// The standard instance label (the App's name).
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// The standard component label.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// The standard managed-by label.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The App a child object belongs to.
    pub const APP: &str = "ota.dev/app";
}

/// Annotations users and tools write on the custom resources.
pub mod annotation {
    /// On a Rollout: promote past the current pause (value: any timestamp; change it to act again).
    pub const PROMOTE: &str = "ota.dev/promote";
    /// On a Rollout: skip every remaining step and complete.
    pub const PROMOTE_FULL: &str = "ota.dev/promote-full";
    /// On a Rollout: pause where it stands.
    pub const PAUSE: &str = "ota.dev/pause";
    /// On a Rollout: abort and serve the stable bundle to every device.
    pub const ABORT: &str = "ota.dev/abort";
    /// On a Rollout: start an aborted rollout again from its first step, without a new version.
    pub const RETRY: &str = "ota.dev/retry";
    /// On an update server's pod template: the sha256 of its ConfigMap's data, so a change of
    /// configuration rolls the pods.
    pub const CONFIG_HASH: &str = "ota.dev/config-hash";
}

/// The `app.kubernetes.io/managed-by` value of everything the operator creates.
pub const MANAGED_BY_VALUE: &str = "ota-operator";
