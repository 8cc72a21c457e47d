//! Keeps the device store's outcomes bounded: for each App served, the outcomes that no Rollout's
//! analysis window reaches any more ([`crate::core::rollout::outcome_retention`], computed into
//! [`crate::core::snapshot::AppView::outcome_retention`]) are deleted every hour.

use std::{sync::Arc, time::Duration};

use super::{ServerState, now_ms};

/// The first prune waits this long after start (the snapshot is loaded by then, and a start is
/// not slowed down by it); later prunes come every [`PRUNE_EVERY`].
const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(5 * 60);
/// How often old outcomes are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Rows per delete: the device store's writer waits for one such transaction at most.
const PRUNE_CHUNK: u32 = 5_000;

/// Deletes, for every App served now, its outcomes last reported more than its retention before
/// `now_ms`. An App whose prune fails is logged, counted and tried again at the next round; the
/// others are pruned anyway. Returns how many outcomes were deleted.
///
/// Only Apps in the snapshot are pruned, each with the windows of its own Rollouts, so servers of
/// different Apps may share one database. Before the first snapshot nothing is.
pub async fn prune_outcomes_once(state: &ServerState, now_ms: i64) -> u64 {
    let served = state.served();
    let mut deleted = 0;
    for app in served.snapshot.apps() {
        let retention_ms = i64::try_from(app.outcome_retention.as_millis()).unwrap_or(i64::MAX);
        let before_ms = now_ms.saturating_sub(retention_ms);
        match state
            .store
            .prune_outcomes(&app.app_id, before_ms, PRUNE_CHUNK)
            .await
        {
            Ok(count) => {
                if count > 0 {
                    tracing::info!(app_id = %app.app_id, deleted = count, ?app.outcome_retention,
                        "pruned outcomes older than every Rollout's analysis window");
                }
                state.metrics.outcomes_pruned.inc_by(count);
                deleted += count;
            }
            Err(error) => {
                state.metrics.outcome_prunes_failed.inc();
                tracing::warn!(app_id = %app.app_id, %error, "cannot prune old outcomes; trying again in an hour");
            }
        }
    }
    deleted
}

/// Prunes old outcomes [`FIRST_PRUNE_AFTER`] the start, then every [`PRUNE_EVERY`], until the
/// task is dropped.
pub async fn prune_outcomes_periodically(state: Arc<ServerState>) {
    tokio::time::sleep(FIRST_PRUNE_AFTER).await;
    loop {
        prune_outcomes_once(&state, now_ms()).await;
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}
