//! The `migrate` shell: flags (compatible with the reference `migrate_tenant.py`),
//! manifests, credentials from the environment, the state file that makes a run
//! resumable, progress bars or plain lines, and the summary.
//!
//! It turns input into a spec and hands it to the engine; it never talks to a store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::api::{
    Mode, OnConflict, PhaseState, PhaseStatuses, PointIdScheme, Stage, Store, TenantId, TenantMigrationSpec,
};
use crate::engine::{self, Credentials, EngineError, Progress, Report, RunOptions, StageProgress};
use crate::stores::PhasePlan;

/// Environment variables the CLI reads credentials from (a Secret's place in a cluster).
pub const ENV_API_TOKEN: &str = "TENANT_API_TOKEN";
pub const ENV_REDIS_PASSWORD: &str = "REDIS_PASSWORD";
pub const ENV_QDRANT_API_KEY: &str = "QDRANT_API_KEY";
pub const ENV_MEMGRAPH_USER: &str = "MEMGRAPH_USER";
pub const ENV_MEMGRAPH_PASSWORD: &str = "MEMGRAPH_PASSWORD";

/// Exit codes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_INVALID: i32 = 2;
pub const EXIT_STOPPED: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Move,
    Copy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PointIdsArg {
    /// Re-key each point to the id LightRAG computes for the target.
    Lightrag,
    /// Keep ids; rewrite the tenant field in place.
    Keep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConflictArg {
    Fail,
    Skip,
    Overwrite,
}

/// `tenant-migrator migrate`: the reference script's flags, plus the engine's.
#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Source tenant id (omit with -f).
    pub source: Option<String>,
    /// Target tenant id (omit with -f).
    pub target: Option<String>,
    /// Plan only: count what would move, report conflicts, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub skip_config: bool,
    #[arg(long)]
    pub skip_redis: bool,
    #[arg(long)]
    pub skip_qdrant: bool,
    #[arg(long)]
    pub skip_memgraph: bool,
    /// Redis host [default: localhost]
    #[arg(long)]
    pub redis_host: Option<String>,
    /// Redis port [default: 6379]
    #[arg(long)]
    pub redis_port: Option<u16>,
    /// Redis URL (redis://host:port/db); overrides --redis-host/--redis-port. Password: REDIS_PASSWORD.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Qdrant URL [default: http://localhost:6333]
    #[arg(long)]
    pub qdrant_url: Option<String>,
    /// Qdrant collections to migrate, comma-separated [default: every collection named
    /// --qdrant-collection-prefix… holding points of the source, or the manifest's list]
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub qdrant_collections: Vec<String>,
    /// Name prefix of the Qdrant collections searched when none are listed
    /// [default: lightrag_vdb_, or the manifest's]
    #[arg(long, value_name = "PREFIX")]
    pub qdrant_collection_prefix: Option<String>,
    /// Memgraph host [default: localhost]
    #[arg(long)]
    pub memgraph_host: Option<String>,
    /// Memgraph port [default: 7687]
    #[arg(long)]
    pub memgraph_port: Option<u16>,
    /// Memgraph Bolt URI (bolt://host:port, bolt+s:// for TLS); overrides
    /// --memgraph-host/--memgraph-port. Credentials: MEMGRAPH_USER, MEMGRAPH_PASSWORD.
    #[arg(long, conflicts_with_all = ["memgraph_host", "memgraph_port"])]
    pub memgraph_uri: Option<String>,
    /// Database named in every Bolt request [default: memgraph, or the manifest's]
    #[arg(long)]
    pub memgraph_database: Option<String>,
    /// Tenant-config API base URL [default: http://localhost:8000]. Token: TENANT_API_TOKEN.
    #[arg(long)]
    pub api_url: Option<String>,
    /// JSON pointers of the config fields that hold the tenant id, comma-separated
    /// [default: workspace, workspace_id, tenant, tenant_id, tenantId keys holding the
    /// source id, or the manifest's list]
    #[arg(long, value_delimiter = ',', value_name = "POINTER,...")]
    pub config_tenant_fields: Vec<String>,
    /// Run a TenantMigration manifest (YAML) instead of SOURCE TARGET.
    #[arg(short = 'f', long = "file", value_name = "MANIFEST", conflicts_with_all = ["source", "target"])]
    pub manifest: Option<PathBuf>,
    /// Move renames the tenant; Copy clones it [default: move, or the manifest's]
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// When a target item exists with a different value [default: fail, or the manifest's]
    #[arg(long, value_enum)]
    pub on_conflict: Option<ConflictArg>,
    /// Qdrant point ids [default: lightrag, or the manifest's]
    #[arg(long, value_enum)]
    pub point_ids: Option<PointIdsArg>,
    /// Items per batch: Redis keys [default 1000], Qdrant points [default 256], Memgraph nodes [default 5000]
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Attempts per failing batch before the run fails, whatever --retry-for says
    /// [default: 100, or the manifest's spec.retry]
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Seconds a failing batch is retried for, from its first failure (rides out a
    /// store's restart or failover) [default: 120, or the manifest's spec.retry]
    #[arg(long)]
    pub retry_for: Option<u64>,
    /// Verification (and removal) passes while the source keeps changing, before the
    /// run stops saying so.
    #[arg(long, default_value_t = 5)]
    pub max_passes: u32,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Directory of the state files that let an interrupted run resume
    /// [default: $XDG_STATE_HOME/tenant-migrator or ~/.local/state/tenant-migrator]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Ignore (and replace) a state file left by an earlier run.
    #[arg(long)]
    pub fresh: bool,
}

/// Input the user must fix; nothing has been connected to.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("give SOURCE and TARGET, or -f MANIFEST")]
    MissingIds,
    #[error("{which} tenant id: {source}")]
    BadId {
        which: &'static str,
        source: crate::api::InvalidTenantId,
    },
    #[error("cannot read manifest {path}: {source}")]
    ReadManifest { path: PathBuf, source: std::io::Error },
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error(
        "{field} names Secret {name:?} key {key:?}; the CLI reads this credential from the environment variable {env}, which is not set"
    )]
    MissingSecret {
        field: &'static str,
        name: String,
        key: String,
        env: &'static str,
    },
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// A TenantMigration manifest as the CLI accepts it: unknown fields are errors.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Manifest {
    api_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted so that a manifest applied to a cluster runs unchanged
    metadata: serde_yaml::Value,
    spec: TenantMigrationSpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: serde_yaml::Value,
}

fn read_manifest(path: &Path) -> Result<TenantMigrationSpec, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::ReadManifest {
        path: path.to_owned(),
        source,
    })?;
    let bad = |message: String| InputError::Manifest {
        path: path.to_owned(),
        message,
    };
    let m: Manifest = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if m.api_version != "tenancy.dev/v1alpha1" || m.kind != "TenantMigration" {
        return Err(bad(format!(
            "expected apiVersion tenancy.dev/v1alpha1 and kind TenantMigration, found {} {}",
            m.api_version, m.kind
        )));
    }
    Ok(m.spec)
}

fn tenant(which: &'static str, id: &str) -> Result<TenantId, InputError> {
    TenantId::new(id).map_err(|source| InputError::BadId { which, source })
}

/// Builds the spec from a manifest or SOURCE TARGET, then applies the flags given.
pub fn spec_from_args(a: &MigrateArgs) -> Result<TenantMigrationSpec, InputError> {
    let mut spec = match &a.manifest {
        Some(path) => read_manifest(path)?,
        None => {
            let (Some(s), Some(t)) = (&a.source, &a.target) else {
                return Err(InputError::MissingIds);
            };
            TenantMigrationSpec {
                source: tenant("source", s)?,
                target: tenant("target", t)?,
                mode: Mode::Move,
                dry_run: false,
                suspend: false,
                config: Default::default(),
                redis: Default::default(),
                qdrant: Default::default(),
                memgraph: Default::default(),
                quiesce: Vec::new(),
                retry: Default::default(),
                backoff_limit: None,
                stack_ref: None,
            }
        }
    };
    if let Some(r) = &spec.stack_ref {
        // A RagStack and its Secrets are the cluster's; the CLI has neither.
        return Err(InputError::Manifest {
            path: a.manifest.clone().unwrap_or_default(),
            message: format!(
                "spec.stackRef names RagStack {:?}, which only the controller resolves; give the endpoints \
                 inline or by flag",
                r.name
            ),
        });
    }
    if !spec.quiesce.is_empty() {
        // Scaling needs a cluster; the CLI has none. Say so rather than pretend.
        eprintln!(
            "warning: spec.quiesce is applied by the controller only; stop the workloads that write to the stores yourself"
        );
    }
    spec.dry_run |= a.dry_run;
    spec.config.enabled &= !a.skip_config;
    spec.redis.enabled &= !a.skip_redis;
    spec.qdrant.enabled &= !a.skip_qdrant;
    spec.memgraph.enabled &= !a.skip_memgraph;
    if let Some(m) = a.mode {
        spec.mode = match m {
            ModeArg::Move => Mode::Move,
            ModeArg::Copy => Mode::Copy,
        };
    }
    if let Some(c) = a.on_conflict {
        let c = match c {
            ConflictArg::Fail => OnConflict::Fail,
            ConflictArg::Skip => OnConflict::Skip,
            ConflictArg::Overwrite => OnConflict::Overwrite,
        };
        spec.redis.on_conflict = c;
        spec.config.on_conflict = c;
    }
    if let Some(p) = a.point_ids {
        spec.qdrant.point_ids = match p {
            PointIdsArg::Lightrag => PointIdScheme::LightRAG,
            PointIdsArg::Keep => PointIdScheme::Keep,
        };
    }
    if !a.qdrant_collections.is_empty() {
        spec.qdrant.collections = a.qdrant_collections.clone();
    }
    if !a.config_tenant_fields.is_empty() {
        spec.config.tenant_fields = a.config_tenant_fields.clone();
    }
    if let Some(p) = &a.qdrant_collection_prefix {
        spec.qdrant.collection_prefix = p.clone();
    }
    if a.batch_size.is_some() {
        spec.redis.batch_size = a.batch_size;
        spec.memgraph.batch_size = a.batch_size;
        spec.qdrant.batch_size = a.batch_size;
    }
    // Flags override the manifest; the manifest overrides the reference's defaults.
    if let Some(u) = &a.api_url {
        spec.config.url = Some(u.clone());
    }
    spec.config.url.get_or_insert_with(|| "http://localhost:8000".into());
    let redis_flag = match (&a.redis_url, &a.redis_host, a.redis_port) {
        (Some(u), ..) => Some(u.clone()),
        (None, None, None) => None,
        (None, h, p) => Some(format!(
            "redis://{}:{}/",
            h.as_deref().unwrap_or("localhost"),
            p.unwrap_or(6379)
        )),
    };
    if let Some(u) = redis_flag {
        spec.redis.url = Some(u);
    }
    spec.redis.url.get_or_insert_with(|| "redis://localhost:6379/".into());
    if let Some(u) = &a.qdrant_url {
        spec.qdrant.url = Some(u.clone());
    }
    spec.qdrant.url.get_or_insert_with(|| "http://localhost:6333".into());
    if let Some(d) = &a.memgraph_database {
        spec.memgraph.database = d.clone();
    }
    if let Some(u) = &a.memgraph_uri {
        spec.memgraph.uri = Some(u.clone());
    } else if a.memgraph_host.is_some() || a.memgraph_port.is_some() || spec.memgraph.uri.is_none() {
        spec.memgraph.uri = Some(format!(
            "bolt://{}:{}",
            a.memgraph_host.as_deref().unwrap_or("localhost"),
            a.memgraph_port.unwrap_or(7687)
        ));
    }
    Ok(spec)
}

/// Reads credentials from the environment. A manifest's Secret reference whose
/// variable is unset is an error, not a silent anonymous connection.
pub fn credentials_from_env(spec: &TenantMigrationSpec) -> Result<Credentials, InputError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).map(Secret::new);
    let config_token = var(ENV_API_TOKEN);
    let redis_password = var(ENV_REDIS_PASSWORD);
    if spec.config.enabled
        && let (Some(r), None) = (&spec.config.token_secret_ref, &config_token)
    {
        return Err(InputError::MissingSecret {
            field: "spec.config.tokenSecretRef",
            name: r.name.clone(),
            key: r.key.clone(),
            env: ENV_API_TOKEN,
        });
    }
    if spec.redis.enabled
        && let (Some(r), None) = (&spec.redis.password_secret_ref, &redis_password)
    {
        return Err(InputError::MissingSecret {
            field: "spec.redis.passwordSecretRef",
            name: r.name.clone(),
            key: r.key.clone(),
            env: ENV_REDIS_PASSWORD,
        });
    }
    let qdrant_api_key = var(ENV_QDRANT_API_KEY);
    if spec.qdrant.enabled
        && let (Some(r), None) = (&spec.qdrant.api_key_secret_ref, &qdrant_api_key)
    {
        return Err(InputError::MissingSecret {
            field: "spec.qdrant.apiKeySecretRef",
            name: r.name.clone(),
            key: r.key.clone(),
            env: ENV_QDRANT_API_KEY,
        });
    }
    let memgraph_user = std::env::var(ENV_MEMGRAPH_USER).ok().filter(|v| !v.is_empty());
    let memgraph_password = var(ENV_MEMGRAPH_PASSWORD);
    if spec.memgraph.enabled
        && let (Some(r), None) = (&spec.memgraph.credentials_secret_ref, &memgraph_password)
    {
        return Err(InputError::MissingSecret {
            field: "spec.memgraph.credentialsSecretRef",
            name: r.name.clone(),
            key: "password".into(),
            env: ENV_MEMGRAPH_PASSWORD,
        });
    }
    Ok(Credentials {
        config_token,
        redis_password,
        qdrant_api_key,
        memgraph_user,
        memgraph_password,
    })
}

/// What the CLI keeps between runs of one migration so that it resumes where it stopped.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    source: String,
    target: String,
    mode: Option<Mode>,
    /// Store URLs, so a state file is never applied to other servers.
    stores: Vec<String>,
    phases: PhaseStatuses,
}

fn state_dir(a: &MigrateArgs) -> PathBuf {
    if let Some(d) = &a.state_dir {
        return d.clone();
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tenant-migrator")
}

fn store_urls(spec: &TenantMigrationSpec) -> Vec<String> {
    let mut v = Vec::new();
    if spec.config.enabled {
        v.push(format!("config={}", spec.config.url.as_deref().unwrap_or_default()));
    }
    if spec.redis.enabled {
        v.push(format!("redis={}", spec.redis.url.as_deref().unwrap_or_default()));
    }
    if spec.qdrant.enabled {
        v.push(format!("qdrant={}", spec.qdrant.url.as_deref().unwrap_or_default()));
    }
    if spec.memgraph.enabled {
        v.push(format!("memgraph={}", spec.memgraph.uri.as_deref().unwrap_or_default()));
    }
    v
}

struct StateStore {
    path: PathBuf,
    file: StateFile,
    /// Held (an exclusive advisory lock) while this run lives: two runs of one
    /// migration would overwrite each other's checkpoints.
    _lock: std::fs::File,
}

/// Takes the exclusive lock of the state file at `path` (`….json.lock`, holding the
/// holder's pid), or says who holds it.
fn lock_state(path: &Path) -> Result<std::fs::File, InputError> {
    use std::io::{Read, Seek, Write};
    let lock_path = path.with_extension("json.lock");
    let err = |message: String| InputError::State {
        path: path.to_owned(),
        message,
    };
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| err(format!("cannot open its lock {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(err(format!(
                "another run of this migration holds it ({}); wait for it to end or stop it",
                if holder.is_empty() {
                    "pid unknown".to_owned()
                } else {
                    format!("pid {holder}")
                }
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(err(format!("cannot lock {}: {e}", lock_path.display())));
        }
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    written.map_err(|e| err(format!("cannot write its lock {}: {e}", lock_path.display())))?;
    Ok(file)
}

impl StateStore {
    fn open(a: &MigrateArgs, spec: &TenantMigrationSpec) -> Result<(Self, Vec<String>), InputError> {
        let path = state_dir(a).join(format!("{}--{}.json", spec.source, spec.target));
        let lock = lock_state(&path)?;
        let fresh = StateFile {
            source: spec.source.to_string(),
            target: spec.target.to_string(),
            mode: Some(spec.mode),
            stores: store_urls(spec),
            phases: PhaseStatuses::default(),
        };
        let mut notes = Vec::new();
        let file = match std::fs::read_to_string(&path) {
            Ok(_) if a.fresh => fresh,
            Ok(text) => {
                let old: StateFile = serde_json::from_str(&text).map_err(|e| InputError::State {
                    path: path.clone(),
                    message: format!("{e} (remove it, or pass --fresh)"),
                })?;
                if old.mode != fresh.mode || old.stores != fresh.stores {
                    return Err(InputError::State {
                        path: path.clone(),
                        message: format!(
                            "an earlier run of {} → {} used other settings (mode {:?}, stores {:?}); pass --fresh to start over",
                            spec.source, spec.target, old.mode, old.stores
                        ),
                    });
                }
                notes.push(format!("resuming from {}", path.display()));
                old
            }
            Err(_) => fresh,
        };
        Ok((
            Self {
                path,
                file,
                _lock: lock,
            },
            notes,
        ))
    }

    /// Writes atomically (temp file + rename), so a kill never leaves half a checkpoint.
    fn save(&mut self, phases: &PhaseStatuses) -> std::io::Result<()> {
        self.file.phases = phases.clone();
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&self.file).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// How progress is shown.
enum Display {
    Bars {
        multi: MultiProgress,
        bars: Vec<(Store, ProgressBar)>,
    },
    Lines {
        last: Option<Instant>,
        last_stage: Vec<(Store, Stage)>,
    },
    Quiet,
}

struct CliProgress {
    display: Display,
    state: Option<StateStore>,
    stop: Arc<AtomicBool>,
    save_error: Option<String>,
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Copy => "copying",
        Stage::Verify => "verifying",
        Stage::RemoveSource => "removing source",
        Stage::VerifyRemoved => "verifying removal",
        Stage::Done => "done",
    }
}

impl CliProgress {
    fn bar(&mut self, store: Store) -> Option<&ProgressBar> {
        let Display::Bars { multi, bars } = &mut self.display else {
            return None;
        };
        if !bars.iter().any(|(s, _)| *s == store) {
            let style =
                ProgressStyle::with_template("{prefix:>8} {bar:30.cyan/blue} {pos:>7}/{len:7} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = multi.add(ProgressBar::new(0).with_style(style).with_prefix(store.name()));
            bars.push((store, bar));
        }
        bars.iter().find(|(s, _)| *s == store).map(|(_, b)| b)
    }

    fn line(&self, text: &str) {
        match &self.display {
            Display::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Display::Lines { .. } => eprintln!("{text}"),
            Display::Quiet => {}
        }
    }
}

impl Progress for CliProgress {
    fn planned(&mut self, store: Store, plan: &PhasePlan) {
        self.line(&format!("{store}: preflight ok, {}", engine::plan_summary(store, plan)));
        for n in &plan.notes {
            self.line(&format!("{store}: {n}"));
        }
    }

    fn update(&mut self, store: Store, stage: StageProgress, phases: &PhaseStatuses) {
        if let Err(e) = self.persist(phases) {
            self.save_error = Some(e);
            self.stop.store(true, Ordering::SeqCst);
        }
        let status = phases.get(store);
        let unit = store.unit();
        match &mut self.display {
            Display::Bars { .. } => {
                if let Some(bar) = self.bar(store) {
                    bar.set_length(stage.total);
                    bar.set_position(stage.processed);
                    bar.set_message(format!("{unit} {}", stage_name(stage.stage)));
                    if matches!(status.state, PhaseState::Succeeded | PhaseState::Failed) {
                        bar.finish_with_message(status.message.clone().unwrap_or_default());
                    }
                }
            }
            Display::Lines { last, last_stage } => {
                let changed = !last_stage.contains(&(store, stage.stage));
                if changed {
                    last_stage.retain(|(s, _)| *s != store);
                    last_stage.push((store, stage.stage));
                }
                let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                let ended = matches!(status.state, PhaseState::Succeeded | PhaseState::Failed);
                if changed || due || ended {
                    *last = Some(Instant::now());
                    let pct = (stage.processed * 100).checked_div(stage.total).unwrap_or(100);
                    eprintln!(
                        "{store}: {} {}/{} {unit} ({pct}%)",
                        stage_name(stage.stage),
                        stage.processed,
                        stage.total
                    );
                }
            }
            Display::Quiet => {}
        }
    }

    fn persist(&mut self, phases: &PhaseStatuses) -> Result<(), String> {
        match &mut self.state {
            Some(state) => state
                .save(phases)
                .map_err(|e| format!("cannot write state file {}: {e}", state.path.display())),
            None => Ok(()),
        }
    }

    fn retrying(&mut self, store: Store, batch: u64, attempt: u32, error: &str, wait: Duration) {
        self.line(&format!(
            "{store}: batch {batch} failed (attempt {attempt}): {error}; retrying in {:.1}s",
            wait.as_secs_f64()
        ));
    }

    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Runs `migrate`; returns the process exit code.
pub async fn migrate(a: MigrateArgs) -> i32 {
    let spec = match spec_from_args(&a).and_then(|s| credentials_from_env(&s).map(|c| (s, c))) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let (spec, creds) = spec;
    let (state, notes) = if spec.dry_run {
        (None, Vec::new())
    } else {
        match StateStore::open(&a, &spec) {
            Ok((s, n)) => (Some(s), n),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_INVALID;
            }
        }
    };
    let resume = state.as_ref().map(|s| s.file.phases.clone()).unwrap_or_default();

    let display = if a.output == OutputFormat::Json {
        Display::Quiet
    } else if std::io::stderr().is_terminal() {
        Display::Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Vec::new(),
        }
    } else {
        Display::Lines {
            last: None,
            last_stage: Vec::new(),
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping at the next batch boundary");
                stop.store(true, Ordering::SeqCst);
            }
        });
    }
    let mut progress = CliProgress {
        display,
        state,
        stop,
        save_error: None,
    };
    if a.output == OutputFormat::Text {
        let mode = if spec.dry_run { "dry run" } else { mode_name(spec.mode) };
        progress.line(&format!("Tenant migration {} → {} ({mode})", spec.source, spec.target));
        for n in &notes {
            progress.line(n);
        }
    }
    let policy = crate::api::RetryPolicy {
        deadline_seconds: a.retry_for,
        max_attempts: a.max_attempts,
        ..Default::default()
    }
    .or(&spec.retry);
    let opts = RunOptions {
        max_passes: a.max_passes.max(1),
        ..RunOptions::with_retry(&policy)
    };
    let report = engine::run(&spec, &creds, &resume, &opts, &mut progress).await;
    if let Display::Bars { multi, .. } = &progress.display {
        let _ = multi.clear();
    }
    match a.output {
        OutputFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode the report: {e}"),
        },
        OutputFormat::Text => print!("{}", summary(&report)),
    }
    if let Some(e) = &progress.save_error {
        eprintln!("error: {e}");
    }
    exit_code(&report)
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Move => "Move",
        Mode::Copy => "Copy",
    }
}

/// Exit code for a finished run.
pub fn exit_code(r: &Report) -> i32 {
    match &r.error {
        None => EXIT_OK,
        Some(EngineError::InvalidSpec(_) | EngineError::Preflight { .. }) => EXIT_INVALID,
        Some(EngineError::Stopped { .. }) => EXIT_STOPPED,
        Some(_) => EXIT_FAILED,
    }
}

/// The table printed at the end of a run (or the plan of a dry run).
pub fn summary(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let title = if r.dry_run {
        "Plan (dry run, nothing written)"
    } else {
        "Summary"
    };
    let _ = writeln!(out, "\n{title}: {} → {} ({})", r.source, r.target, mode_name(r.mode));
    if r.dry_run {
        let _ = writeln!(
            out,
            "{:<9} {:>10} {:>10} {:>10} {:>10}  note",
            "store", "to move", "in target", "conflicts", "extra"
        );
        for p in &r.phases {
            match &p.plan {
                Some(plan) => {
                    let _ = writeln!(
                        out,
                        "{:<9} {:>10} {:>10} {:>10} {:>10}  {}",
                        p.store.name(),
                        plan.total,
                        plan.identical,
                        plan.conflicts,
                        plan.extra,
                        plan.conflict_examples
                            .first()
                            .map(|e| format!("conflict: {e}"))
                            .unwrap_or_default()
                    );
                    for g in plan
                        .groups
                        .iter()
                        .filter(|g| plan.groups.len() > 1 && (g.source > 0 || g.target > 0))
                    {
                        let _ = writeln!(out, "  {:<40} source {:>8}  target {:>8}", g.name, g.source, g.target);
                    }
                    for n in &plan.notes {
                        let _ = writeln!(out, "  note: {n}");
                    }
                }
                None => {
                    let _ = writeln!(out, "{:<9} {:>10}", p.store.name(), state_name(p.state));
                }
            }
        }
    } else {
        let _ = writeln!(
            out,
            "{:<9} {:<10} {:>9} {:>9} {:>8} {:>7} {:>8}  note",
            "store", "state", "total", "done", "skipped", "failed", "time"
        );
        for p in &r.phases {
            let s = &p.status;
            let rate = if p.seconds > 0.0 && s.done >= 100 && p.state == PhaseState::Succeeded {
                format!(" ({:.0} {}/s)", s.done as f64 / p.seconds, p.store.unit())
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:<9} {:<10} {:>9} {:>9} {:>8} {:>7} {:>7.2}s  {}{rate}",
                p.store.name(),
                state_name(p.state),
                s.total,
                s.done,
                s.skipped,
                s.failed,
                p.seconds,
                s.message.as_deref().unwrap_or("")
            );
        }
    }
    match &r.error {
        None if r.dry_run => {
            let _ = writeln!(out, "Result: plan complete in {:.2}s; nothing was written", r.seconds);
        }
        None => {
            let _ = writeln!(out, "Result: succeeded and verified in {:.2}s", r.seconds);
        }
        Some(e) => {
            let _ = writeln!(out, "Result: FAILED after {:.2}s: {e}", r.seconds);
        }
    }
    out
}

fn state_name(s: PhaseState) -> &'static str {
    match s {
        PhaseState::Pending => "Pending",
        PhaseState::Running => "Running",
        PhaseState::Succeeded => "Succeeded",
        PhaseState::Failed => "Failed",
        PhaseState::Skipped => "Skipped",
    }
}
