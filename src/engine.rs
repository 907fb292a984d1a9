//! Runs the phases of one migration: preflight of every enabled store, then
//! config → redis → qdrant → memgraph, each through Copy → Verify, and for Move
//! RemoveSource → VerifyRemoved. Batches are retried with backoff; every batch
//! ends in a checkpoint handed to [`Progress`], which the shells persist (the
//! controller in status, the CLI in a state file).
//!
//! The engine knows nothing of Kubernetes or terminals, and nothing of store
//! protocols: it talks to stores only through [`Phase`].

use std::collections::HashMap;
use std::error::Error as StdError;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Secret;
use crate::api::{
    Checkpoint, CollectionStatus, Mode, OnConflict, PhaseState, PhaseStatus, PhaseStatuses, Stage, Store,
    TenantMigrationSpec,
};
use crate::stores::config::{ConfigPhase, ConfigSettings};
use crate::stores::memgraph::{MemgraphPhase, MemgraphSettings};
use crate::stores::qdrant::{QdrantPhase, QdrantSettings};
use crate::stores::redis::{RedisPhase, RedisSettings};
use crate::stores::{Phase, PhasePlan, Recopied, StoreFailure, Verified};

/// Credentials resolved by a shell (from Secrets or the environment).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub config_token: Option<Secret>,
    pub redis_password: Option<Secret>,
    pub qdrant_api_key: Option<Secret>,
    pub memgraph_user: Option<String>,
    pub memgraph_password: Option<Secret>,
}

/// Knobs of a run that are not part of the resource.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// How long a failing batch is retried, from its first failure.
    pub retry_for: Duration,
    /// Attempts per batch before the phase fails, whatever `retry_for` says.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Redis keys per batch when the spec does not say.
    pub redis_batch_size: usize,
    /// Memgraph nodes per transaction when the spec does not say.
    pub memgraph_batch_size: usize,
    /// Qdrant points per page when the spec does not say.
    pub qdrant_batch_size: usize,
    /// Passes of Verify (and of RemoveSource) while the source keeps changing, before
    /// the run stops saying so.
    pub max_passes: u32,
}

impl RunOptions {
    /// The defaults, with what `policy` sets.
    pub fn with_retry(policy: &crate::api::RetryPolicy) -> Self {
        let mut o = RunOptions::default();
        if let Some(s) = policy.deadline_seconds {
            o.retry_for = Duration::from_secs(s);
        }
        if let Some(n) = policy.max_attempts {
            o.max_attempts = n.max(1);
        }
        if let Some(ms) = policy.initial_backoff_millis {
            o.initial_backoff = Duration::from_millis(ms);
        }
        if let Some(s) = policy.max_backoff_seconds {
            o.max_backoff = Duration::from_secs(s);
        }
        o
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            // A store's restart or failover takes tens of seconds; a long migration
            // should not fail for one.
            retry_for: Duration::from_secs(120),
            max_attempts: 100,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            redis_batch_size: 1000,
            memgraph_batch_size: 5000,
            qdrant_batch_size: 256,
            max_passes: 5,
        }
    }
}

/// Where a running stage is, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageProgress {
    pub stage: Stage,
    /// Items handled in this stage so far.
    pub processed: u64,
    /// Items the stage will handle.
    pub total: u64,
}

/// What the shells implement to follow a run. Called at every batch boundary.
pub trait Progress: Send {
    /// Preflight of one store finished with this plan.
    fn planned(&mut self, _store: Store, _plan: &PhasePlan) {}

    /// A phase changed (started, finished a batch or a stage, ended). `phases`
    /// holds the checkpoints to persist.
    fn update(&mut self, store: Store, stage: StageProgress, phases: &PhaseStatuses);

    /// A batch failed and will be tried again after `wait`.
    fn retrying(&mut self, _store: Store, _batch: u64, _attempt: u32, _error: &str, _wait: Duration) {}

    /// Every preflight passed and the first write is next (never called for a dry run
    /// or when nothing is left to do). An error ends the run with nothing written; the
    /// controller stops the workloads of `spec.quiesce` here.
    fn before_writes(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// A phase's first write is next: return only once `phases` (whose checkpoint now
    /// says the phase writes) is durable — the state file, the status. A run killed
    /// during that write then resumes knowing the target may hold its own items,
    /// instead of refusing them as another tenant's. An error stops the run there.
    fn persist(&mut self, _phases: &PhaseStatuses) -> Result<(), String> {
        Ok(())
    }

    /// Asked at every batch boundary: `true` stops the run there (suspend, SIGINT).
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// Why a run did not succeed. Each variant names the store, and the batch where one applies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum EngineError {
    #[error("invalid migration: {0}")]
    InvalidSpec(String),
    #[error("preflight failed, nothing was written: {}", join_failures(.failures))]
    Preflight { failures: Vec<StoreMessage> },
    #[error("{store}: {stage:?} batch {batch} failed after {attempts} attempt(s): {message}")]
    Batch {
        store: Store,
        stage: Stage,
        batch: u64,
        attempts: u32,
        message: String,
        /// The last error was transient (the store was down past the retry deadline).
        transient: bool,
    },
    #[error("{store}: {message}")]
    Verify {
        store: Store,
        message: String,
        /// A later run may succeed as it is (the source was still being written).
        transient: bool,
    },
    #[error("not started, nothing was written: {0}")]
    NotStarted(String),
    #[error("{store}: not started, nothing was written to it: cannot record that it starts: {message}")]
    Unrecorded { store: Store, message: String },
    #[error("stopped at a batch boundary before {store} finished; run again to resume from the checkpoint")]
    Stopped { store: Store },
}

/// A message about one store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoreMessage {
    pub store: Store,
    pub message: String,
    /// A store that could not be reached (or answered with a transient error), as
    /// opposed to bad input or a conflict.
    pub transient: bool,
}

impl EngineError {
    /// Whether running the migration again later, unchanged, may succeed: a store
    /// that was down, a source still being written. Bad input, conflicts and content
    /// that cannot be reconciled are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Preflight { failures } => failures.iter().all(|f| f.transient),
            EngineError::Batch { transient, .. } | EngineError::Verify { transient, .. } => *transient,
            EngineError::Unrecorded { .. } => true,
            EngineError::InvalidSpec(_) | EngineError::NotStarted(_) | EngineError::Stopped { .. } => false,
        }
    }
}

fn join_failures(f: &[StoreMessage]) -> String {
    f.iter()
        .map(|m| format!("{}: {}", m.store, m.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error and its causes in one line, for people who act on it.
pub fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Result of one store's phase.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    pub store: Store,
    pub state: PhaseState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PhasePlan>,
    pub status: PhaseStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    pub seconds: f64,
}

/// What a run did, store by store; `error` is set when it did not succeed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub source: String,
    pub target: String,
    pub mode: Mode,
    pub dry_run: bool,
    pub phases: Vec<PhaseReport>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EngineError>,
}

impl Report {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The stores' phases of one migration, built from a spec.
struct Phases {
    config: Option<ConfigPhase>,
    redis: Option<RedisPhase>,
    qdrant: Option<QdrantPhase>,
    memgraph: Option<MemgraphPhase>,
}

fn build(spec: &TenantMigrationSpec, creds: &Credentials, opts: &RunOptions) -> Result<Phases, EngineError> {
    if spec.source == spec.target {
        return Err(EngineError::InvalidSpec(format!(
            "source and target are the same tenant ({})",
            spec.source
        )));
    }
    let required = |store: Store, url: &Option<String>| {
        url.clone()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| EngineError::InvalidSpec(format!("{store}: no URL given")))
    };
    let invalid = |store: Store| move |e: &dyn StdError| EngineError::InvalidSpec(format!("{store}: {e}"));
    let config = if spec.config.enabled {
        let settings = ConfigSettings {
            url: required(Store::Config, &spec.config.url)?,
            token: creds.config_token.clone(),
            source: spec.source.clone(),
            target: spec.target.clone(),
            method: spec.config.method,
            on_conflict: spec.config.on_conflict,
            mode: spec.mode,
            tenant_fields: spec.config.tenant_fields.clone(),
        };
        Some(ConfigPhase::new(settings).map_err(|e| invalid(Store::Config)(&e))?)
    } else {
        None
    };
    let redis = if spec.redis.enabled {
        let settings = RedisSettings {
            url: required(Store::Redis, &spec.redis.url)?,
            password: creds.redis_password.clone(),
            source: spec.source.clone(),
            target: spec.target.clone(),
            on_conflict: spec.redis.on_conflict,
            key_prefixes: spec.redis.key_prefixes.clone(),
            batch_size: spec.redis.batch_size.map_or(opts.redis_batch_size, |b| b as usize),
        };
        Some(RedisPhase::new(settings).map_err(|e| invalid(Store::Redis)(&e))?)
    } else {
        None
    };
    let memgraph = if spec.memgraph.enabled {
        let settings = MemgraphSettings {
            uri: required(Store::Memgraph, &spec.memgraph.uri)?,
            user: creds.memgraph_user.clone(),
            password: creds.memgraph_password.clone(),
            source: spec.source.clone(),
            target: spec.target.clone(),
            mode: spec.mode,
            database: spec.memgraph.database.clone(),
            batch_size: spec
                .memgraph
                .batch_size
                .map_or(opts.memgraph_batch_size, |b| b as usize),
            query_timeout: Duration::from_secs(spec.memgraph.query_timeout_seconds.map_or(60, u64::from)),
            foreign_nodes: spec.memgraph.foreign_labelled_nodes,
        };
        Some(MemgraphPhase::new(settings).map_err(|e| invalid(Store::Memgraph)(&e))?)
    } else {
        None
    };
    let qdrant = if spec.qdrant.enabled {
        let settings = QdrantSettings {
            url: required(Store::Qdrant, &spec.qdrant.url)?,
            api_key: creds.qdrant_api_key.clone(),
            source: spec.source.clone(),
            target: spec.target.clone(),
            mode: spec.mode,
            collections: spec.qdrant.collections.clone(),
            collection_prefix: spec.qdrant.collection_prefix.clone(),
            tenant_field: spec.qdrant.tenant_field.clone(),
            point_ids: spec.qdrant.point_ids,
            batch_size: spec.qdrant.batch_size.map_or(opts.qdrant_batch_size, |b| b as usize),
        };
        Some(QdrantPhase::new(settings).map_err(|e| invalid(Store::Qdrant)(&e))?)
    } else {
        None
    };
    Ok(Phases {
        config,
        redis,
        qdrant,
        memgraph,
    })
}

fn enabled(spec: &TenantMigrationSpec, store: Store) -> bool {
    match store {
        Store::Config => spec.config.enabled,
        Store::Redis => spec.redis.enabled,
        Store::Qdrant => spec.qdrant.enabled,
        Store::Memgraph => spec.memgraph.enabled,
    }
}

fn on_conflict(spec: &TenantMigrationSpec, store: Store) -> OnConflict {
    match store {
        Store::Config => spec.config.on_conflict,
        Store::Redis => spec.redis.on_conflict,
        Store::Qdrant | Store::Memgraph => OnConflict::Fail,
    }
}

/// Runs one migration. `resume` holds the phase statuses of an earlier run of the
/// same migration (from status or the CLI's state file), or defaults for a new one.
pub async fn run(
    spec: &TenantMigrationSpec,
    creds: &Credentials,
    resume: &PhaseStatuses,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Report {
    let started = Instant::now();
    let mut run = Run {
        spec,
        opts,
        progress,
        phases: resume.clone(),
        reports: Vec::new(),
        sole_removal: false,
    };
    let error = match build(spec, creds, opts) {
        Ok(mut phases) => run.execute(&mut phases).await.err(),
        Err(e) => Some(e),
    };
    Report {
        source: spec.source.to_string(),
        target: spec.target.to_string(),
        mode: spec.mode,
        dry_run: spec.dry_run,
        phases: run.reports,
        seconds: started.elapsed().as_secs_f64(),
        error,
    }
}

/// An instant `spent` ago: a store's report counts the time of both passes, not the
/// other stores' work in between.
fn started_before(spent: Duration) -> Instant {
    Instant::now().checked_sub(spent).unwrap_or_else(Instant::now)
}

/// The two passes of a Move: every store copied and verified, then every source removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    CopyAndVerify,
    RemoveSource,
}

struct Run<'a> {
    spec: &'a TenantMigrationSpec,
    opts: &'a RunOptions,
    progress: &'a mut dyn Progress,
    phases: PhaseStatuses,
    reports: Vec<PhaseReport>,
    /// A Move of a single store: its removal need verify no other store's first.
    sole_removal: bool,
}

/// Whether a phase's earlier run wrote, so the target may hold this migration's
/// own items and, for Move, the source may be partly removed.
/// Whether a phase has written (or may have: its first-write marker is set).
pub fn has_started(status: &PhaseStatus) -> bool {
    status
        .checkpoint
        .as_ref()
        .is_some_and(|c| c.wrote || c.stage != Stage::Copy || c.batch > 0)
}

fn finished(status: &PhaseStatus) -> bool {
    status.state == PhaseState::Succeeded && status.checkpoint.as_ref().is_some_and(|c| c.stage == Stage::Done)
}

impl Run<'_> {
    async fn execute(&mut self, phases: &mut Phases) -> Result<(), EngineError> {
        // Preflight every enabled store before the first write.
        let mut plans: Vec<(Store, PhasePlan)> = Vec::new();
        let mut failures = Vec::new();
        for store in Store::ALL {
            let status = self.phases.get(store);
            if !enabled(self.spec, store) || finished(status) {
                continue;
            }
            let resuming = has_started(status);
            let started = Instant::now();
            let result = match store {
                Store::Config => preflight(phases.config.as_mut(), resuming).await,
                Store::Redis => preflight(phases.redis.as_mut(), resuming).await,
                Store::Memgraph => preflight(phases.memgraph.as_mut(), resuming).await,
                Store::Qdrant => preflight(phases.qdrant.as_mut(), resuming).await,
            };
            tracing::info!(%store, seconds = started.elapsed().as_secs_f64(), ok = result.is_ok(), "preflight finished");
            match result {
                Ok(plan) => {
                    self.progress.planned(store, &plan);
                    plans.push((store, plan));
                }
                Err((message, transient)) => failures.push(StoreMessage {
                    store,
                    message,
                    transient,
                }),
            }
        }
        if !failures.is_empty() {
            return Err(EngineError::Preflight { failures });
        }
        if !self.spec.dry_run && !plans.is_empty() {
            self.progress.before_writes().map_err(EngineError::NotStarted)?;
        }

        // Every store is copied and verified before any source is removed: a failure
        // anywhere (a store down, a batch out of retries) leaves every source whole.
        let removal = self.spec.mode == Mode::Move && !self.spec.dry_run;
        self.sole_removal = removal && plans.len() == 1;
        // With the time each spent in the first pass: a store's time is its own work.
        let mut verified_stores: Vec<(Store, PhasePlan, Duration)> = Vec::new();
        for store in Store::ALL {
            let started = Instant::now();
            let plan = plans.iter().find(|(s, _)| *s == store).map(|(_, p)| p.clone());
            let status = self.phases.get(store).clone();
            let Some(plan) = plan else {
                // Disabled, or verified by an earlier run.
                let state = if enabled(self.spec, store) {
                    status.state
                } else {
                    PhaseState::Skipped
                };
                if state == PhaseState::Skipped {
                    self.phases.get_mut(store).state = PhaseState::Skipped;
                }
                self.report(store, state, None, None, started);
                continue;
            };
            if self.spec.dry_run {
                let st = self.phases.get_mut(store);
                st.total = plan.total;
                st.message = Some(plan_summary(store, &plan));
                self.report(store, PhaseState::Pending, Some(plan), None, started);
                continue;
            }
            match self.run_phase(store, phases, &plan, Pass::CopyAndVerify).await {
                Ok(_) if removal => verified_stores.push((store, plan, started.elapsed())),
                Ok(verified) => self.report(store, PhaseState::Succeeded, Some(plan), verified, started),
                Err(e) => return Err(self.failed(store, plan, started, e, &verified_stores)),
            }
        }
        for (i, (store, plan, spent)) in verified_stores.iter().enumerate() {
            let started = started_before(*spent);
            match self.run_phase(*store, phases, plan, Pass::RemoveSource).await {
                Ok(verified) => self.report(*store, PhaseState::Succeeded, Some(plan.clone()), verified, started),
                // The stores after this one keep their sources.
                Err(e) => return Err(self.failed(*store, plan.clone(), started, e, &verified_stores[i + 1..])),
            }
        }
        self.reports.sort_by_key(|r| r.store);
        Ok(())
    }

    async fn run_phase(
        &mut self,
        store: Store,
        phases: &mut Phases,
        plan: &PhasePlan,
        pass: Pass,
    ) -> Result<Option<Verified>, EngineError> {
        match store {
            Store::Config => self.phase(store, phases.config.as_mut(), plan, pass).await,
            Store::Redis => self.phase(store, phases.redis.as_mut(), plan, pass).await,
            Store::Memgraph => self.phase(store, phases.memgraph.as_mut(), plan, pass).await,
            Store::Qdrant => self.phase(store, phases.qdrant.as_mut(), plan, pass).await,
        }
    }

    /// Records `store`'s failure (a stop is not one) and reports it, and the stores
    /// copied and verified whose sources are kept because of it; returns the error.
    fn failed(
        &mut self,
        store: Store,
        plan: PhasePlan,
        started: Instant,
        e: EngineError,
        kept: &[(Store, PhasePlan, Duration)],
    ) -> EngineError {
        let stopped = matches!(e, EngineError::Stopped { .. });
        let st = self.phases.get_mut(store);
        if !stopped {
            st.state = PhaseState::Failed;
            st.message = Some(e.to_string());
            st.completion_time = Some(now());
        }
        let state = st.state;
        self.progress.update(store, self.stage_of(store), &self.phases);
        self.report(store, state, Some(plan), None, started);
        for (other, plan, spent) in kept {
            let st = self.phases.get_mut(*other);
            st.message = Some(if stopped {
                "copied and verified; the source is removed when the run resumes".to_owned()
            } else {
                format!("copied and verified; the source is kept because {store} failed")
            });
            let state = st.state;
            self.progress.update(*other, self.stage_of(*other), &self.phases);
            self.report(*other, state, Some(plan.clone()), None, started_before(*spent));
        }
        self.reports.sort_by_key(|r| r.store);
        e
    }

    fn stage_of(&self, store: Store) -> StageProgress {
        let st = self.phases.get(store);
        StageProgress {
            stage: st.checkpoint.as_ref().map_or(Stage::Copy, |c| c.stage),
            processed: st.done + st.skipped,
            total: st.total,
        }
    }

    fn report(
        &mut self,
        store: Store,
        state: PhaseState,
        plan: Option<PhasePlan>,
        verified: Option<Verified>,
        started: Instant,
    ) {
        self.reports.push(PhaseReport {
            store,
            state,
            plan,
            status: self.phases.get(store).clone(),
            verified,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    /// Runs one store's phase from its checkpoint: to Done, or with
    /// [`Pass::CopyAndVerify`] up to the removal of its sources.
    ///
    /// Verify compares every source item with its target by content, page by page;
    /// the store copies again what changed in the source since it was copied, and the
    /// pass repeats while a pass copied anything (catch-up), up to `max_passes`. Only
    /// a pass that found everything equal leads to the counts, and only then to
    /// RemoveSource, whose passes repeat in the same way: the store removes a source
    /// item only when its target is equal at that moment, so a checkpoint past Verify
    /// never licenses removing what the source holds now.
    async fn phase<P: Phase>(
        &mut self,
        store: Store,
        phase: Option<&mut P>,
        plan: &PhasePlan,
        pass: Pass,
    ) -> Result<Option<Verified>, EngineError> {
        let Some(phase) = phase else { return Ok(None) };
        let skip_policy = on_conflict(self.spec, store) == OnConflict::Skip;
        let fresh = !has_started(self.phases.get(store));
        {
            let st = self.phases.get_mut(store);
            if fresh {
                *st = PhaseStatus::default();
                // Durable before the first write (below): whatever that write leaves
                // in the target is this migration's own on a resume.
                st.checkpoint = Some(Checkpoint {
                    wrote: true,
                    ..Checkpoint::default()
                });
            }
            st.state = PhaseState::Running;
            st.total = plan.total.max(st.total);
            if store == Store::Qdrant {
                st.collections = plan
                    .groups
                    .iter()
                    .map(|g| {
                        let earlier = st.collections.iter().find(|c| c.name == g.name);
                        CollectionStatus {
                            name: g.name.clone(),
                            total: g.source + g.extra,
                            done: earlier.map_or(0, |c| c.done),
                        }
                    })
                    .collect();
            }
            st.message = None;
            st.start_time.get_or_insert_with(now);
        }
        if fresh {
            self.progress
                .persist(&self.phases)
                .map_err(|message| EngineError::Unrecorded { store, message })?;
        }
        self.progress.update(store, self.stage_of(store), &self.phases);
        let mut verified = None;
        // What the previous pass of this stage copied again, by item: the same item
        // copied again from unchanged source content means its target changed behind
        // the run's back.
        let mut last_pass: HashMap<String, u64> = HashMap::new();
        // Passes of this run: a resumed run gets the whole budget again.
        let mut passes = 0u32;
        loop {
            let cp = self.phases.get(store).checkpoint.clone().unwrap_or_default();
            if pass == Pass::CopyAndVerify && matches!(cp.stage, Stage::RemoveSource | Stage::VerifyRemoved) {
                break;
            }
            let stage_started = Instant::now();
            let stage_now = cp.stage;
            let next = match cp.stage {
                Stage::Copy => {
                    self.batches(store, phase, plan, cp).await?;
                    Stage::Verify
                }
                Stage::Verify | Stage::RemoveSource => {
                    // The one store of a Move whose removal compares every item (see
                    // `Phase::removal_compares`): its first Verify pass would compare
                    // what the removal compares again, with no other store waiting on
                    // it. Straight to the counts: only when they fall short (the source
                    // was written since its copy) does a Verify pass run, as for any store.
                    let recopied = if cp.stage == Stage::Verify && cp.pass == 0 && self.folds(phase) {
                        Recopies::default()
                    } else {
                        self.batches(store, phase, plan, cp.clone()).await?
                    };
                    if !recopied.is_empty() {
                        self.another_pass(store, cp.stage, &mut passes, &recopied, &mut last_pass)?;
                        continue;
                    }
                    match cp.stage {
                        Stage::Verify => Stage::Verify, // settled: the counts come next
                        _ => Stage::VerifyRemoved,
                    }
                }
                Stage::VerifyRemoved => Stage::VerifyRemoved,
                Stage::Done => break,
            };
            // A Verify pass that copied nothing again, or a finished removal: count.
            let next = if next == stage_now && matches!(next, Stage::Verify | Stage::VerifyRemoved) {
                let removed = next == Stage::VerifyRemoved;
                match self.verify(store, phase, plan, removed).await {
                    Ok(v) => {
                        let st = self.phases.get_mut(store);
                        // Verification, not the batch counters, decides the final numbers.
                        // A resumed run plans only what is left, so keep the larger total.
                        st.skipped = if skip_policy { plan.conflicts } else { 0 };
                        st.total = st.total.max(st.compared + st.skipped);
                        st.done = st.total - st.skipped.min(st.total);
                        for c in &mut st.collections {
                            c.done = c.total;
                        }
                        verified = Some(v);
                        match (removed, self.spec.mode) {
                            (false, Mode::Move) => Stage::RemoveSource,
                            _ => Stage::Done,
                        }
                    }
                    Err(Incomplete(message)) => {
                        // Items appeared in the source after the pass saw it: another pass.
                        let stage = if removed { Stage::RemoveSource } else { Stage::Verify };
                        tracing::warn!(%store, %message, "the source changed after the last pass; another pass");
                        self.next_pass(store, stage, &mut passes, 0, &message)?;
                        continue;
                    }
                    Err(Failed(message)) => {
                        return Err(EngineError::Verify {
                            store,
                            message,
                            transient: false,
                        });
                    }
                    Err(Fatal(e)) => return Err(e),
                }
            } else {
                next
            };
            tracing::info!(%store, stage = ?stage_now, seconds = stage_started.elapsed().as_secs_f64(), "stage finished");
            // Counted afresh by the pass that compares: a Verify pass, or a removal that is one.
            let counts_afresh = next == Stage::Verify || (next == Stage::RemoveSource && self.folds(phase));
            let st = self.phases.get_mut(store);
            st.checkpoint = Some(Checkpoint {
                stage: next,
                ..Checkpoint::default()
            });
            if counts_afresh {
                st.compared = 0;
            }
            if next == Stage::Done {
                st.state = PhaseState::Succeeded;
                st.completion_time = Some(now());
                st.message = Some(done_summary(store, self.spec.mode, st));
            }
            self.progress.update(store, self.stage_of(store), &self.phases);
        }
        Ok(verified)
    }

    /// Whether `phase`'s removal is its comparison too: the one store of a Move, and
    /// one whose removal compares every item (the Verify arm of [`Run::phase`]).
    fn folds<P: Phase>(&self, phase: &P) -> bool {
        self.sole_removal && phase.removal_compares()
    }

    /// After a pass of `stage` that copied `recopied` again: fails when the same items
    /// were copied again from unchanged source content (their target changed behind the
    /// run's back), else starts the next pass (see [`Run::next_pass`]).
    fn another_pass(
        &mut self,
        store: Store,
        stage: Stage,
        passes: &mut u32,
        recopied: &Recopies,
        last_pass: &mut HashMap<String, u64>,
    ) -> Result<(), EngineError> {
        let behind: Vec<&str> = recopied
            .examples
            .iter()
            .filter(|r| last_pass.get(&r.item) == Some(&r.digest))
            .map(|r| r.item.as_str())
            .collect();
        if !behind.is_empty() {
            return Err(EngineError::Verify {
                store,
                transient: false,
                message: format!(
                    "{} target {} changed behind the run's back: they differed from their unchanged source in two \
                     passes (e.g. {}); is something else writing the target tenant?",
                    behind.len(),
                    store.unit(),
                    examples(behind.iter().copied())
                ),
            });
        }
        *last_pass = recopied.examples.iter().map(|r| (r.item.clone(), r.digest)).collect();
        let what = format!(
            "{} {} changed in the source since they were copied (e.g. {})",
            recopied.count,
            store.unit(),
            examples(recopied.examples.iter().map(|r| r.item.as_str()))
        );
        tracing::warn!(%store, stage = ?stage, passes = *passes, "{what}; copied again, another pass");
        self.next_pass(store, stage, passes, recopied.count, &what)
    }

    /// Starts another pass of `stage`, or fails when this run's passes are used up:
    /// the source does not settle.
    fn next_pass(
        &mut self,
        store: Store,
        stage: Stage,
        passes: &mut u32,
        recopied: u64,
        what: &str,
    ) -> Result<(), EngineError> {
        *passes += 1;
        if *passes >= self.opts.max_passes {
            return Err(EngineError::Verify {
                store,
                transient: true,
                message: format!(
                    "source tenant still being written: {what} during the last of {} passes; quiesce its writers \
                     (spec.quiesce) and run again — nothing that was not verified was removed",
                    self.opts.max_passes
                ),
            });
        }
        let st = self.phases.get_mut(store);
        st.recopied += recopied;
        if stage == Stage::Verify {
            st.compared = 0;
        }
        let pass = st.checkpoint.as_ref().map_or(0, |c| c.pass) + 1;
        st.checkpoint = Some(Checkpoint {
            stage,
            pass,
            ..Checkpoint::default()
        });
        self.progress.update(store, self.stage_of(store), &self.phases);
        Ok(())
    }

    /// Runs the batches of a Copy, Verify or RemoveSource stage from `cp`; returns
    /// what the comparisons copied again.
    async fn batches<P: Phase>(
        &mut self,
        store: Store,
        phase: &mut P,
        plan: &PhasePlan,
        mut cp: Checkpoint,
    ) -> Result<Recopies, EngineError> {
        let mut processed = 0u64;
        let mut recopied = Recopies::default();
        let total = self.phases.get(store).total;
        // A removal that is the comparison counts what it compared (and removed); capped,
        // since a run resumed in its removal may have had a Verify pass of its own.
        let removal_compares = cp.stage == Stage::RemoveSource && self.folds(phase);
        loop {
            if self.progress.should_stop() {
                return Err(EngineError::Stopped { store });
            }
            let batch = cp.batch + 1;
            let outcome = self
                .retrying(store, batch, cp.stage, async || {
                    phase.step(cp.stage, &cp.cursor, plan).await
                })
                .await?;
            processed += outcome.done + outcome.skipped;
            recopied.add(outcome.recopied);
            let st = self.phases.get_mut(store);
            match cp.stage {
                Stage::Copy => {
                    // SCAN may return a key twice and resumed batches recount: cap at the plan.
                    st.done = (st.done + outcome.done).min(total);
                    if let Some(c) = outcome.group.and_then(|g| st.collections.get_mut(g)) {
                        c.done = (c.done + outcome.done).min(c.total);
                    }
                    st.skipped = (st.skipped + outcome.skipped).min(total - st.done);
                }
                Stage::Verify => st.compared += outcome.done,
                Stage::RemoveSource if removal_compares => st.compared = (st.compared + outcome.done).min(total),
                _ => {}
            }
            cp = Checkpoint {
                stage: cp.stage,
                cursor: outcome.next.clone().unwrap_or_default(),
                batch,
                pass: cp.pass,
                wrote: cp.wrote,
            };
            st.checkpoint = Some(cp.clone());
            let stage = StageProgress {
                stage: cp.stage,
                processed: processed.min(total),
                total,
            };
            self.progress.update(store, stage, &self.phases);
            if outcome.next.is_none() {
                return Ok(recopied);
            }
        }
    }

    /// Calls `op` until it succeeds, fails with a permanent error, or runs out of attempts.
    async fn retrying<T, E: StoreFailure>(
        &mut self,
        store: Store,
        batch: u64,
        stage: Stage,
        mut op: impl AsyncFnMut() -> Result<T, E>,
    ) -> Result<T, EngineError> {
        let mut wait = self.opts.initial_backoff;
        let mut attempt = 1;
        let mut first_failure: Option<Instant> = None;
        loop {
            let result = op().await;
            let failing_for = first_failure.get_or_insert_with(Instant::now).elapsed();
            let in_time = failing_for + wait <= self.opts.retry_for;
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < self.opts.max_attempts && in_time => {
                    let message = describe(&e);
                    tracing::warn!(%store, batch, attempt, error = %message, "batch failed; retrying");
                    self.progress.retrying(store, batch, attempt, &message, wait);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(self.opts.max_backoff);
                    attempt += 1;
                }
                Err(e) => {
                    return Err(EngineError::Batch {
                        store,
                        stage,
                        batch,
                        attempts: attempt,
                        message: describe(&e),
                        transient: e.is_transient(),
                    });
                }
            }
        }
    }

    async fn verify<P: Phase>(
        &mut self,
        store: Store,
        phase: &mut P,
        plan: &PhasePlan,
        removed: bool,
    ) -> Result<Verified, VerifyFailure> {
        let stage = if removed { Stage::VerifyRemoved } else { Stage::Verify };
        let result = self
            .retrying(store, 1, stage, async || {
                match phase.verify(plan, removed).await {
                    Ok(v) => Ok(Ok(v)),
                    // Permanent outcomes are data, not errors to retry.
                    Err(e) if !e.is_transient() => Ok(Err((e.is_incomplete(), describe(&e)))),
                    Err(e) => Err(e),
                }
            })
            .await;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((true, m))) => Err(Incomplete(m)),
            Ok(Err((false, m))) => Err(Failed(m)),
            Err(e) => Err(Fatal(e)),
        }
    }
}

use VerifyFailure::{Failed, Fatal, Incomplete};

enum VerifyFailure {
    /// Source items without a target: worth one more copy pass.
    Incomplete(String),
    /// Counts disagree.
    Failed(String),
    /// The store could not be asked.
    Fatal(EngineError),
}

/// Items a pass copied again: how many, and the first of them by name.
#[derive(Default)]
struct Recopies {
    count: u64,
    examples: Vec<Recopied>,
}

/// Items remembered per pass to tell a changing target from a changing source.
const REMEMBERED: usize = 10_000;

impl Recopies {
    fn add(&mut self, items: Vec<Recopied>) {
        self.count += items.len() as u64;
        let room = REMEMBERED.saturating_sub(self.examples.len());
        self.examples.extend(items.into_iter().take(room));
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The first few of `items`, for a message.
fn examples<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.take(3).collect::<Vec<_>>().join(", ")
}

async fn preflight<P: Phase>(phase: Option<&mut P>, resuming: bool) -> Result<PhasePlan, (String, bool)> {
    match phase {
        Some(p) => p.plan(resuming).await.map_err(|e| (describe(&e), e.is_transient())),
        None => Err(("phase not configured".into(), false)),
    }
}

/// One line describing a plan.
pub fn plan_summary(store: Store, plan: &PhasePlan) -> String {
    let unit = store.unit();
    let mut s = format!("{} {unit} to migrate", plan.total);
    if plan.identical > 0 {
        s.push_str(&format!(", {} already in the target", plan.identical));
    }
    if plan.conflicts > 0 {
        s.push_str(&format!(
            ", {} conflicts (e.g. {})",
            plan.conflicts,
            plan.conflict_examples.join(", ")
        ));
    }
    if plan.extra > 0 {
        s.push_str(&format!(", {} target {unit} without a source counterpart", plan.extra));
    }
    s
}

fn done_summary(store: Store, mode: Mode, st: &PhaseStatus) -> String {
    let verb = match mode {
        Mode::Move => "moved",
        Mode::Copy => "copied",
    };
    let mut s = format!("{} of {} {} {verb} and verified", st.done, st.total, store.unit());
    s.push_str(&format!(" ({} compared by content", st.compared));
    if st.recopied > 0 {
        s.push_str(&format!(
            ", {} copied again after they changed in the source",
            st.recopied
        ));
    }
    s.push(')');
    if st.skipped > 0 {
        s.push_str(&format!(", {} skipped (onConflict: Skip)", st.skipped));
    }
    s
}
