//! One module per store, each behind the same [`Phase`] trait.
//!
//! A store module is the only place that speaks its store's protocol. It never
//! orders phases, never retries, never persists checkpoints: the engine does
//! that. Each operation is idempotent, so the engine may retry a batch from the
//! same cursor or resume a stage after a crash.

pub mod config;
pub mod memgraph;
pub mod qdrant;
pub mod redis;

use std::future::Future;

use serde::Serialize;

use crate::api::Stage;

/// What a preflight found: what would move, and what stands in the way.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PhasePlan {
    /// Source items to migrate.
    pub total: u64,
    /// Target items that already equal their source item (own earlier work).
    pub identical: u64,
    /// Target items that differ from their source item.
    pub conflicts: u64,
    /// Target items with no source counterpart.
    pub extra: u64,
    /// Per-group counts (Redis: per key prefix), for the plan output.
    pub groups: Vec<GroupCount>,
    /// A few names of conflicting items, to act on.
    pub conflict_examples: Vec<String>,
    /// Facts worth a line in the plan (excluded keys, server version).
    pub notes: Vec<String>,
}

/// Items of one group (a Redis key prefix, a Qdrant collection) in source and target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupCount {
    pub name: String,
    pub source: u64,
    pub target: u64,
    /// Target items with no source counterpart at plan time.
    pub extra: u64,
}

/// Result of one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Cursor to continue from; `None` when the stage has finished.
    pub next: Option<String>,
    /// Items written, removed, or (Verify) compared and found equal.
    pub done: u64,
    /// Items left alone under `onConflict: Skip`.
    pub skipped: u64,
    /// Index in the plan's groups of the collection this batch worked on (Qdrant).
    pub group: Option<usize>,
    /// Verify and RemoveSource: source items whose target was missing or differed,
    /// copied again from the source (not removed).
    pub recopied: Vec<Recopied>,
}

/// A source item copied again by a comparison (catch-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recopied {
    /// The item, as a person would name it (key, collection/point, entity_id).
    pub item: String,
    /// A digest of the source content that was copied: the same digest in two passes
    /// means the source did not change while its target did.
    pub digest: u64,
}

/// A digest of an item's content, for [`Recopied`].
pub fn digest(parts: &[&[u8]]) -> u64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Counts a verification established.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Source items still present.
    pub source_left: u64,
    /// Target items present.
    pub target: u64,
}

/// Errors of a store operation, as the engine needs to see them.
pub trait StoreFailure: std::error::Error + Send + Sync + 'static {
    /// Whether trying the same batch again may succeed (network, overload, OOM)
    /// as opposed to a fact that retrying cannot change (conflict, bad credentials).
    fn is_transient(&self) -> bool;

    /// Whether verification found source items without a target (a scan cut short
    /// by a restart of the store): the engine then runs the copy pass once more.
    fn is_incomplete(&self) -> bool {
        false
    }
}

/// One store's part of a migration.
///
/// The engine calls `plan` (the preflight, which writes nothing), then for each
/// stage calls `step` until it returns no cursor, then `verify`.
pub trait Phase: Send {
    type Error: StoreFailure;

    /// Connect, check credentials, count the source, look for conflicts. Writes nothing.
    /// `resuming` is true when a checkpoint shows this phase already wrote, so
    /// the target may hold this migration's own items and the source may be partly removed.
    fn plan(&mut self, resuming: bool) -> impl Future<Output = Result<PhasePlan, Self::Error>> + Send;

    /// Process one batch of `stage` from `cursor` ("" = start): Copy writes target
    /// items; Verify compares a page of source items with their targets by content and
    /// copies again those whose target is missing or differs; RemoveSource removes
    /// each source item whose target is equal at that moment (atomically where the
    /// store can) and copies again, without removing, those that differ.
    fn step(
        &mut self,
        stage: Stage,
        cursor: &str,
        plan: &PhasePlan,
    ) -> impl Future<Output = Result<StepOutcome, Self::Error>> + Send;

    /// Whether RemoveSource compares each source item with its target at the moment of
    /// its removal and copies again those that differ — all that a Verify pass does.
    /// When such a store is the only one a Move removes, no other store's removal
    /// waits on its verification, and the engine skips its first Verify pass: the
    /// removal is the comparison (see `engine::Run::phase`).
    fn removal_compares(&self) -> bool {
        false
    }

    /// Count the result of the stage just finished (Verify's comparison, or
    /// RemoveSource when `removed`) against the plan. A mismatch is an error carrying
    /// the numbers; source items without a target are [`StoreFailure::is_incomplete`].
    fn verify(&mut self, plan: &PhasePlan, removed: bool)
    -> impl Future<Output = Result<Verified, Self::Error>> + Send;
}
