//! Keeps the device store's outcomes bounded: for each App served, the outcomes that no Rollout's
//! analysis window reaches any more ([`crate::core::rollout::outcome_retention`], computed into
//! [`crate::core::snapshot::AppView::outcome_retention`]) are deleted every hour.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::ServerState;

/// The first prune waits this long after start (the snapshot is loaded by then, and a start is
/// not slowed down by it); later prunes come every [`PRUNE_EVERY`].
const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(5 * 60);
/// How often old outcomes are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Rows per delete: the device store's writer waits for one such transaction at most.
const PRUNE_CHUNK: u32 = 5_000;
/// The pause between two deletes, so the writer's batches get the database in between.
const PAUSE_BETWEEN_CHUNKS: Duration = Duration::from_millis(20);

/// Prunes old outcomes, remembering for each App the longest retention it has seen: a snapshot
/// that lacks a Rollout for a moment (a YAML file half saved in standalone mode, a Rollout
/// deleted and applied again) never shortens it. So deleting a Rollout with a long window frees
/// its outcomes at the next start, not at once.
#[derive(Debug, Default)]
pub struct OutcomePruner {
    longest: HashMap<String, Duration>,
}

impl OutcomePruner {
    /// Deletes, for every App served now, its outcomes last reported more than its retention
    /// before `now_ms`. An App whose prune fails is logged, counted and tried again at the next
    /// round; the others are pruned anyway. Returns how many outcomes were deleted.
    ///
    /// Only Apps in the snapshot are pruned, each with the windows of its own Rollouts, so
    /// servers of different Apps may share one database. Before the first snapshot nothing is.
    pub async fn prune(&mut self, state: &ServerState, now_ms: i64) -> u64 {
        let served = state.served();
        let mut deleted = 0;
        for app in served.snapshot.apps() {
            let retention = *self
                .longest
                .entry(app.app_id.clone())
                .and_modify(|longest| *longest = (*longest).max(app.outcome_retention))
                .or_insert(app.outcome_retention);
            let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let before_ms = now_ms.saturating_sub(retention_ms);
            let mut pruned = 0;
            loop {
                match state
                    .store
                    .prune_outcomes(&app.app_id, before_ms, PRUNE_CHUNK)
                    .await
                {
                    Ok(chunk) => {
                        pruned += chunk.deleted;
                        state.metrics.outcomes_pruned.inc_by(chunk.deleted);
                        if !chunk.more {
                            break;
                        }
                        tokio::time::sleep(PAUSE_BETWEEN_CHUNKS).await;
                    }
                    Err(error) => {
                        state.metrics.outcome_prunes_failed.inc();
                        tracing::warn!(app_id = %app.app_id, %error, "cannot prune old outcomes; trying again in an hour");
                        break;
                    }
                }
            }
            if pruned > 0 {
                tracing::info!(app_id = %app.app_id, deleted = pruned, ?retention,
                    "pruned outcomes older than every Rollout's analysis window");
            }
            deleted += pruned;
        }
        deleted
    }
}

/// Prunes old outcomes [`FIRST_PRUNE_AFTER`] the start, then every [`PRUNE_EVERY`], until the
/// task is dropped.
pub async fn prune_outcomes_periodically(state: Arc<ServerState>) {
    let mut pruner = OutcomePruner::default();
    state.clock.sleep(FIRST_PRUNE_AFTER).await;
    loop {
        pruner.prune(&state, state.clock.now_ms()).await;
        state.clock.sleep(PRUNE_EVERY).await;
    }
}
