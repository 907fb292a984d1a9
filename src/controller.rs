//! The Kubernetes shell: watches TenantMigrations, resolves their Secrets, runs the
//! engine, and writes progress back through the status subresource.
//!
//! It never speaks a store protocol: it turns a resource into an engine call and
//! the engine's progress into status patches. A restarted controller resumes from
//! the checkpoints in status; a finished migration is not run again unless its spec
//! changes (a new generation).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::Secret;
use crate::api::{
    MigrationPhase, PhaseState, PhaseStatuses, QuiescedWorkload, RagStack, SecretKeyRef, Store, TenantMigration,
    TenantMigrationSpec, WorkloadRef,
};
use crate::engine::{self, Credentials, EngineError, Progress, RunOptions, StageProgress};
use crate::quiesce::{self, QuiesceError, Quiescer};
use crate::redact;
use crate::stack::{self, Refusal};
use crate::telemetry::{Metrics, StoreLabel};

/// Errors of the controller itself (the engine's end up in status, not here).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    MissingSecret(String),
    #[error("the engine task ended abnormally: {0}")]
    Engine(String),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("spec.quiesce: {0}")]
    Quiesce(#[from] QuiesceError),
}

struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    /// The namespaces watched; empty for all.
    namespaces: Vec<String>,
    /// Whether a migration without `spec.stackRef` may name endpoints and Secrets itself.
    allow_inline_endpoints: bool,
    /// The operator's own namespace, where the Secrets of RagStacks live.
    secrets_namespace: Option<String>,
    /// Set on SIGTERM/SIGINT: every running migration stops at its next batch
    /// boundary, writes its progress, and stays Running for the next leader.
    shutdown: Arc<AtomicBool>,
    /// One permit per migration this controller may run at once.
    slots: Arc<tokio::sync::Semaphore>,
    max_running: usize,
    /// Workloads (namespace, kind, name) a running migration of this process is about
    /// to quiesce or holds at zero, and that migration's uid: two migrations checking
    /// `status.quiesced` at the same moment would otherwise both pass.
    reserved: Reservations,
}

/// (namespace, kind, name) of a workload → uid of the migration reserving it.
type Reservations = Arc<std::sync::Mutex<std::collections::HashMap<(String, String, String), String>>>;

/// Releases a migration's workload reservations when its run ends.
struct Reservation {
    map: Reservations,
    uid: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.retain(|_, holder| *holder != self.uid);
        }
    }
}

const MANAGER: &str = "tenant-migrator";

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch these namespaces; empty for all.
    pub namespaces: Vec<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`.
    pub endpoints: Option<std::net::SocketAddr>,
    /// Namespace of the Lease for leader election; `None` runs without election.
    pub lease_namespace: Option<String>,
    /// Seconds a leader holds the Lease without renewing it.
    pub lease_seconds: u64,
    /// Accept migrations without `spec.stackRef` whose endpoints and Secret references
    /// (in their own namespace) are inline: for clusters where everyone who may create
    /// a migration may also read those Secrets.
    pub allow_inline_endpoints: bool,
    /// The operator's namespace: the only one where RagStack Secrets are read.
    pub secrets_namespace: Option<String>,
    /// Migrations run at once; the others wait as Pending (`WaitingForCapacity`).
    pub max_running: usize,
}

/// Takes the Lease `tenant-migrator`, then runs the controller while holding it; a
/// replica that loses it exits, so that two replicas never run a migration at once.
///
/// The Lease is taken, renewed and checked — and the health endpoints served — on a
/// thread and runtime of their own ([`Leadership`]): migrations do CPU work on the
/// main runtime (with a one-CPU limit tokio runs a single worker), and a renewal or a
/// check that waits behind it would let the Lease lapse while this replica still writes.
pub async fn run_elected(client: Client, options: Options) -> Result<(), ControllerError> {
    let Some(namespace) = options.lease_namespace.clone() else {
        run(client, options).await;
        return Ok(());
    };
    let leadership = Leadership {
        namespace,
        identity: std::env::var("POD_NAME").unwrap_or_else(|_| format!("tenant-migrator-{}", std::process::id())),
        seconds: options.lease_seconds,
        endpoints: options.endpoints,
        metrics: Arc::new(Metrics::default()),
        shutdown: Arc::new(AtomicBool::new(false)),
    };
    let (metrics, shutdown) = (leadership.metrics.clone(), leadership.shutdown.clone());
    let (elected, on_elected) = tokio::sync::oneshot::channel();
    let (mut release, on_release) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("leadership".into())
        .spawn(
            move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(leadership.lead(elected, on_release)),
                Err(e) => {
                    let _ = elected.send(Err(ControllerError::Lease(format!("cannot start its runtime: {e}"))));
                }
            },
        )
        .map_err(|e| ControllerError::Lease(format!("cannot start its thread: {e}")))?;
    match on_elected.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ControllerError::Lease("the lease manager stopped".into())),
    }
    tokio::select! {
        () = run_with(client, options, shutdown, metrics, None) => {}
        // The leadership thread ended while leading (a panic): nothing renews or checks
        // the Lease any more, and another replica will take it.
        () = release.closed() => {
            tracing::error!("the Lease is no longer held or checked; exiting so that another replica takes over");
            std::process::exit(1);
        }
    }
    // Stopped (SIGTERM): give the Lease up, so that the next replica need not wait it out.
    let _ = release.send(());
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(())
}

/// Leader election of one replica, run on its own thread ([`run_elected`]).
struct Leadership {
    namespace: String,
    identity: String,
    seconds: u64,
    endpoints: Option<std::net::SocketAddr>,
    metrics: Arc<Metrics>,
    /// Set to stop every migration at its batch boundary.
    shutdown: Arc<AtomicBool>,
}

impl Leadership {
    /// Serves the endpoints, waits for the Lease, says so on `elected`, then holds it
    /// until `release` (or exits the process once it can no longer prove it holds it).
    async fn lead(
        self,
        elected: tokio::sync::oneshot::Sender<Result<(), ControllerError>>,
        mut release: tokio::sync::oneshot::Receiver<()>,
    ) {
        let Self {
            namespace,
            identity,
            seconds,
            endpoints,
            metrics,
            shutdown,
        } = self;
        // Served while standing by too: a standby that answered nothing would fail its
        // liveness probe and be restarted over and over, and a rollout would wait
        // forever for the new pod to turn Ready while the old one holds the Lease.
        let ready = serve_endpoints(endpoints, metrics.clone());
        // Renewed every third of the duration, and given up (`lease_deadline`) with a sixth
        // left: renewals may fail for half the duration before this replica stops. (It
        // used to renew only 2 s before expiry, inside the 2.5 s the check keeps of the
        // default 15 s: every leader gave up its Lease 12.5 s after each renewal.)
        // Below 5 s a single slow renewal would restart the leader.
        let seconds = seconds.max(5);
        let grace = seconds - seconds / 3;
        let started = async {
            let client = Client::try_default()
                .await
                .map_err(|e| ControllerError::Lease(e.to_string()))?;
            let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), MANAGER)
                .with_namespace(namespace.as_str())
                .with_identity(identity.as_str())
                .with_duration(seconds)
                .with_grace(grace)
                // One field manager per replica: the Lease is taken by server-side apply, and
                // only distinct managers make a second taker's apply conflict. A shared one let
                // two replicas both believe they lead until the next renewal.
                .with_field_manager(format!("{MANAGER}-{identity}"))
                .build()
                .await
                .map_err(|e| ControllerError::Lease(e.to_string()))?;
            Ok::<_, ControllerError>((client, manager.watch().await))
        };
        let (client, (mut leading, task)) = match started.await {
            Ok(s) => s,
            Err(e) => {
                let _ = elected.send(Err(e));
                return;
            }
        };
        // Ready to take over: the Lease is reachable.
        ready.store(true, Ordering::SeqCst);
        tracing::info!(%identity, lease = %format!("{namespace}/{MANAGER}"), "waiting for leadership");
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                let _ = elected.send(Err(ControllerError::Lease("the lease manager stopped".into())));
                return;
            }
        }
        tracing::info!(%identity, "leading");
        metrics.leader.set(1);
        if elected.send(Ok(())).is_err() {
            return;
        }
        let duration = Duration::from_secs(seconds);
        // Renewals that fail (the API server unreachable) do not end the lease manager's
        // leadership by themselves: this replica proves its own, and stops before the
        // Lease could pass to another.
        let margin = duration / 6;
        // `release` is polled by reference: were it moved into the select, the branch that
        // won would drop it first, and the main thread — seeing its sender closed — would
        // exit at once, before this thread said why and before migrations stopped.
        tokio::select! {
            _ = &mut release => {}
            () = async {
                while leading.changed().await.is_ok() {
                    if !*leading.borrow_and_update() {
                        return;
                    }
                }
            } => {
                tracing::error!(%identity, "lost the lease; exiting so that another replica takes over");
                std::process::exit(1);
            }
            why = lease_deadline(client, &namespace, &identity, duration, margin) => {
                tracing::error!(
                    %identity,
                    "{why}; stopping every migration at its batch boundary and exiting before the Lease can pass \
                     to another replica"
                );
                shutdown.store(true, Ordering::SeqCst);
                tokio::time::sleep(margin / 2).await;
                std::process::exit(1);
            }
        }
        metrics.leader.set(0);
        drop(leading);
        let _ = task.await;
    }
}

/// Returns once this replica can no longer prove it holds the Lease `MANAGER`: the
/// Lease names someone else, or its last confirmed expiry (`renewTime` +
/// `leaseDurationSeconds`, read from the Lease itself every quarter of the duration)
/// is less than `margin` away. Until then a replica cut off from the API server keeps
/// the Lease on paper; from then on another may take it.
async fn lease_deadline(client: Client, ns: &str, identity: &str, duration: Duration, margin: Duration) -> String {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, ns);
    // Just elected: the Lease was taken or renewed a moment ago.
    let mut valid_until = Instant::now() + duration;
    let every = (duration / 4).max(Duration::from_millis(250));
    loop {
        let asked = Instant::now();
        let Some(left) = valid_until.checked_duration_since(asked + margin) else {
            return format!(
                "could not confirm the Lease for {} s (the API server is unreachable or too slow)",
                duration.as_secs()
            );
        };
        if let Ok(Ok(lease)) = tokio::time::timeout(every.min(left), api.get(MANAGER)).await {
            let spec = lease.spec.unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(identity) {
                return format!(
                    "the Lease is held by {:?} now",
                    spec.holder_identity.unwrap_or_default()
                );
            }
            if let (Some(renewed), Some(secs)) = (spec.renew_time, spec.lease_duration_seconds) {
                let expires = renewed.0 + jiff::SignedDuration::from_secs(i64::from(secs));
                let remaining = expires.duration_since(jiff::Timestamp::now());
                if let Ok(remaining) = Duration::try_from(remaining) {
                    valid_until = asked + remaining.min(duration);
                }
            }
        }
        // Closer to the deadline, look more often: the renewal shows up in its last stretch.
        let deadline = valid_until.checked_sub(margin).unwrap_or(asked);
        let half = deadline.saturating_duration_since(Instant::now()) / 2;
        let next = Instant::now() + every.min(half).max(Duration::from_millis(50));
        tokio::time::sleep_until(next.min(deadline).into()).await;
    }
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run(client: Client, options: Options) {
    let metrics = Arc::new(Metrics::default());
    let ready = serve_endpoints(options.endpoints, metrics.clone());
    run_with(client, options, Arc::new(AtomicBool::new(false)), metrics, Some(ready)).await;
}

/// Serves `metrics` and the health endpoints at `endpoints` (on the current runtime)
/// from now on; `/readyz` answers 200 once the returned flag is set.
fn serve_endpoints(endpoints: Option<std::net::SocketAddr>, metrics: Arc<Metrics>) -> Arc<AtomicBool> {
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = endpoints {
        let (m, r) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::telemetry::serve(addr, m, r).await {
                tracing::error!(error = %e, %addr, "cannot serve /metrics and health endpoints");
            }
        });
    }
    ready
}

/// [`run`], stopping every migration at its next batch boundary once `shutdown` is set;
/// sets `ready` once the watches are built.
async fn run_with(
    client: Client,
    options: Options,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    ready: Option<Arc<AtomicBool>>,
) {
    let Options {
        namespaces,
        allow_inline_endpoints,
        secrets_namespace,
        max_running,
        ..
    } = options;
    let max_running = max_running.max(1);
    // One watch per namespace (or one over all): a controller watching a list of
    // namespaces needs rights in those namespaces only.
    let apis: Vec<Api<TenantMigration>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        namespaces,
        metrics,
        allow_inline_endpoints,
        secrets_namespace,
        shutdown,
        slots: Arc::new(tokio::sync::Semaphore::new(max_running)),
        max_running,
        reserved: Arc::default(),
    });
    // A rollout sends SIGTERM: running migrations stop at a batch boundary (the
    // Controllers below stop taking new work and wait for them), rather than being
    // killed mid-batch when the grace period ends.
    {
        let shutdown = ctx.shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: running migrations stop at their next batch boundary");
            shutdown.store(true, Ordering::SeqCst);
        });
    }
    let controllers = apis.into_iter().map(|api| {
        let controller = Controller::new(api, watcher::Config::default());
        // A changed RagStack re-admits the migrations that name it (a refused one may
        // now be allowed).
        let cache = controller.store();
        controller
            .watches(
                Api::<RagStack>::all(client.clone()),
                watcher::Config::default(),
                move |stack: RagStack| {
                    let name = stack.name_any();
                    cache
                        .state()
                        .into_iter()
                        .filter(|tm| tm.spec.stack_ref.as_ref().is_some_and(|r| r.name == name))
                        .map(|tm| ObjectRef::from_obj(&*tm))
                        .collect::<Vec<_>>()
                },
            )
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx.clone())
            .boxed()
    });
    if let Some(ready) = ready {
        ready.store(true, Ordering::SeqCst);
    }
    futures::stream::select_all(controllers)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The conditions of a migration, built in one place: Ready/Progressing/Degraded for
/// people and `kubectl wait`, Reconciling/Stalled for kstatus (Flux `wait`, kpt), which
/// would otherwise take a migration as finished as soon as observedGeneration matches.
fn conditions(phase: MigrationPhase, generation: Option<i64>, message: &str, reason: &str) -> Vec<Condition> {
    let message = redact::for_status(message);
    let cond = |type_: &str, status: bool, reason: &str| Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.clone(),
        observed_generation: generation,
        last_transition_time: now(),
    };
    vec![
        cond("Ready", phase == MigrationPhase::Succeeded, reason),
        cond("Progressing", phase == MigrationPhase::Running, reason),
        cond("Degraded", phase == MigrationPhase::Failed, reason),
        cond(
            "Reconciling",
            matches!(phase, MigrationPhase::Pending | MigrationPhase::Running),
            reason,
        ),
        cond("Stalled", phase == MigrationPhase::Failed, reason),
    ]
}

/// `done/total` across stores, for the Progress printer column.
fn progress_of(phases: &PhaseStatuses) -> String {
    let (done, total) = Store::ALL
        .iter()
        .map(|s| phases.get(*s))
        .fold((0, 0), |(d, t), p| (d + p.done, t + p.total));
    format!("{done}/{total}")
}

/// The status has one field manager per writer: server-side apply drops the fields a
/// manager stops sending, so each writer owns its own and always sends all of them.
/// `MANAGER` owns where the migration is as a whole ([`lifecycle`]); this one the
/// per-store progress; [`crate::quiesce`] has its own for `quiesced`.
const PROGRESS_MANAGER: &str = "tenant-migrator-progress";

/// Server-side apply of `status` (fields owned by `manager`) through the status subresource.
pub(crate) async fn apply_status(
    api: &Api<TenantMigration>,
    name: &str,
    manager: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": TenantMigration::api_version(&()),
        "kind": TenantMigration::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&body))
        .await
        .map(|_| ())
}

/// Every field `MANAGER` owns, for one apply: phase, conditions, generation and times.
fn lifecycle(
    generation: Option<i64>,
    phase: MigrationPhase,
    times: (Option<&str>, Option<&str>),
    message: &str,
    reason: &str,
) -> serde_json::Value {
    let mut status = json!({
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conditions(phase, generation, message, reason),
    });
    if let Some(t) = times.0 {
        status["startTime"] = json!(t);
    }
    if let Some(t) = times.1 {
        status["completionTime"] = json!(t);
    }
    status
}

/// Every field `PROGRESS_MANAGER` owns. Phase messages carry store errors: bounded
/// and without credentials here.
fn progress_status(phases: &PhaseStatuses) -> serde_json::Value {
    let mut phases = phases.clone();
    for store in Store::ALL {
        let p = phases.get_mut(store);
        p.message = p.message.as_deref().map(redact::for_status);
    }
    json!({ "phases": phases, "progress": progress_of(&phases) })
}

/// Owns `stack` and `tenants`: what the migration touches, written once admitted.
const ACCESS_MANAGER: &str = "tenant-migrator-access";

/// Owns `failedRuns` and `retryAfter`: the controller's retries of a migration that
/// failed for a transient reason.
const RETRY_MANAGER: &str = "tenant-migrator-retry";

/// Runs of one generation after a transient failure, by default.
const BACKOFF_LIMIT: u32 = 3;

/// The wait before the `n`-th run again (1-based): 10 s, 20 s, 40 s … at most 5 min.
fn backoff(n: u32) -> Duration {
    Duration::from_secs(10u64.saturating_mul(1 << n.saturating_sub(1).min(5))).min(Duration::from_secs(300))
}

async fn secret_value(
    client: &Client,
    ns: Option<&str>,
    r: &SecretKeyRef,
    field: &str,
) -> Result<Secret, ControllerError> {
    let missing = |what: String| ControllerError::MissingSecret(format!("{field}: {what}"));
    let ns = ns.ok_or_else(|| {
        missing(format!(
            "Secret {:?} lives in the controller's own namespace, which it does not know: set POD_NAMESPACE or \
             --secrets-namespace",
            r.name
        ))
    })?;
    let secrets: Api<KubeSecret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| missing(format!("Secret {ns}/{} not found", r.name)))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| missing(format!("Secret {ns}/{} has no key {:?}", r.name, r.key)))?;
    let value = String::from_utf8(bytes.0.clone())
        .map_err(|_| missing(format!("Secret {ns}/{} key {:?} is not UTF-8", r.name, r.key)))?;
    Ok(Secret::new(value.trim_end_matches('\n')))
}

/// The credentials `s` references, read in `ns`; `origin` says whose references they
/// are in messages (`spec` of the migration, or a RagStack's).
async fn credentials(
    client: &Client,
    s: &TenantMigrationSpec,
    ns: Option<&str>,
    origin: &str,
) -> Result<Credentials, ControllerError> {
    let field = |f: &str| format!("{origin}.{f}");
    let mut c = Credentials::default();
    if let (true, Some(r)) = (s.config.enabled, &s.config.token_secret_ref) {
        c.config_token = Some(secret_value(client, ns, r, &field("config.tokenSecretRef")).await?);
    }
    if let (true, Some(r)) = (s.redis.enabled, &s.redis.password_secret_ref) {
        c.redis_password = Some(secret_value(client, ns, r, &field("redis.passwordSecretRef")).await?);
    }
    if let (true, Some(r)) = (s.qdrant.enabled, &s.qdrant.api_key_secret_ref) {
        c.qdrant_api_key = Some(secret_value(client, ns, r, &field("qdrant.apiKeySecretRef")).await?);
    }
    if let (true, Some(r)) = (s.memgraph.enabled, &s.memgraph.credentials_secret_ref) {
        let user = SecretKeyRef {
            name: r.name.clone(),
            key: "username".into(),
        };
        let password = SecretKeyRef {
            name: r.name.clone(),
            key: "password".into(),
        };
        c.memgraph_user = Some(
            secret_value(client, ns, &user, &field("memgraph.credentialsSecretRef"))
                .await?
                .expose()
                .to_owned(),
        );
        c.memgraph_password = Some(secret_value(client, ns, &password, &field("memgraph.credentialsSecretRef")).await?);
    }
    Ok(c)
}

/// A migration cleared to run: the spec the engine gets (endpoints, Secret references
/// and retry policy from its stack, or inline when allowed) and the namespace its
/// Secrets are read in (`None`: unknown, which only a spec without Secrets survives).
struct Admission {
    spec: TenantMigrationSpec,
    secrets_namespace: Option<String>,
    stack: Option<String>,
}

/// Applies the rules of the migration's RagStack (or of inline endpoints) before any
/// Secret or store is read. `Ok(Err(_))` is a refusal, for the conditions.
async fn admission(
    ctx: &Context,
    tm: &TenantMigration,
    ns: &str,
) -> Result<Result<Admission, Refusal>, ControllerError> {
    let Some(r) = &tm.spec.stack_ref else {
        if !ctx.allow_inline_endpoints {
            return Ok(Err(Refusal::NoStack));
        }
        return Ok(Ok(Admission {
            spec: tm.spec.clone(),
            secrets_namespace: Some(ns.to_owned()),
            stack: None,
        }));
    };
    let stacks: Api<RagStack> = Api::all(ctx.client.clone());
    let Some(found) = stacks.get_opt(&r.name).await? else {
        return Ok(Err(Refusal::StackNotFound(r.name.clone())));
    };
    Ok(stack::admit(&r.name, &found.spec, ns, &tm.spec).map(|spec| Admission {
        spec,
        secrets_namespace: ctx.secrets_namespace.clone(),
        stack: Some(r.name.clone()),
    }))
}

/// What the engine reports, on its way to status patches and Events.
enum Update {
    Phases(Box<PhaseStatuses>),
    /// Like `Phases`, written in order with them, and answered once written.
    Persist(Box<PhaseStatuses>, std::sync::mpsc::Sender<Result<(), String>>),
    Retry {
        store: Store,
        batch: u64,
        attempt: u32,
        error: String,
    },
}

/// Hands the engine's progress to a task that patches status, at most about once a
/// second (and at every change of a phase's state), and tells the engine to stop at
/// the next batch boundary when asked.
struct StatusProgress {
    tx: mpsc::UnboundedSender<Update>,
    last: Option<Instant>,
    states: Vec<PhaseState>,
    stop: Arc<AtomicBool>,
    /// The controller's shutdown flag.
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// Per store: items done and batch reached as last seen, and when it started running here.
    seen: Vec<(u64, u64, Option<Instant>)>,
    /// Workloads to stop before the first write, if `spec.quiesce` names any.
    quiesce: Option<QuiesceStep>,
}

/// Stops the workloads of `spec.quiesce` from the engine's thread, on the runtime.
struct QuiesceStep {
    quiescer: Quiescer,
    wanted: Vec<WorkloadRef>,
    recorded: Vec<QuiescedWorkload>,
    ctx: Arc<Context>,
    object: ObjectReference,
    handle: tokio::runtime::Handle,
}

impl QuiesceStep {
    async fn run(self) -> Result<(), String> {
        match self.quiescer.stop(&self.wanted, &self.recorded).await {
            Ok(records) => {
                let note = format!(
                    "scaled to zero until the migration ends: {}",
                    quiesce::describe(&records)
                );
                publish(&self.ctx, &self.object, EventType::Normal, "WorkloadsQuiesced", note).await;
                Ok(())
            }
            Err(e) => {
                publish(
                    &self.ctx,
                    &self.object,
                    EventType::Warning,
                    "QuiesceFailed",
                    e.to_string(),
                )
                .await;
                Err(e.to_string())
            }
        }
    }
}

impl StatusProgress {
    /// Turns a store's status into metric increments.
    fn count(&mut self, store: Store, phases: &PhaseStatuses) {
        let i = Store::ALL.iter().position(|s| *s == store).unwrap_or(0);
        if self.seen.len() < Store::ALL.len() {
            self.seen = Store::ALL
                .iter()
                .map(|s| {
                    let p = phases.get(*s);
                    (p.done, p.checkpoint.as_ref().map_or(0, |c| c.batch), None)
                })
                .collect();
        }
        let label = StoreLabel::of(store);
        let p = phases.get(store);
        let (done, batch, started) = &mut self.seen[i];
        if p.done > *done {
            self.metrics.items.get_or_create(&label).inc_by(p.done - *done);
        }
        *done = p.done;
        let b = p.checkpoint.as_ref().map_or(0, |c| c.batch);
        if b > *batch {
            self.metrics.batches.get_or_create(&label).inc_by(b - *batch);
        }
        *batch = b;
        match p.state {
            PhaseState::Running => {
                started.get_or_insert_with(Instant::now);
            }
            PhaseState::Succeeded => {
                if let Some(t) = started.take() {
                    self.metrics
                        .phase_seconds
                        .get_or_create(&label)
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            PhaseState::Failed => {
                if started.take().is_some() {
                    self.metrics.failures.get_or_create(&label).inc();
                }
            }
            PhaseState::Pending | PhaseState::Skipped => {}
        }
    }
}

impl Progress for StatusProgress {
    fn update(&mut self, store: Store, _stage: StageProgress, phases: &PhaseStatuses) {
        self.count(store, phases);
        let states: Vec<PhaseState> = Store::ALL.iter().map(|s| phases.get(*s).state).collect();
        let due = self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due || states != self.states {
            self.last = Some(Instant::now());
            self.states = states;
            let _ = self.tx.send(Update::Phases(Box::new(phases.clone())));
        }
    }

    fn retrying(&mut self, store: Store, batch: u64, attempt: u32, error: &str, _wait: Duration) {
        self.metrics.retries.get_or_create(&StoreLabel::of(store)).inc();
        let _ = self.tx.send(Update::Retry {
            store,
            batch,
            attempt,
            error: error.to_owned(),
        });
    }

    fn persist(&mut self, phases: &PhaseStatuses) -> Result<(), String> {
        // Through the writer, so that no older update queued before it lands after it.
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx
            .send(Update::Persist(Box::new(phases.clone()), tx))
            .map_err(|_| "the status writer has stopped".to_owned())?;
        self.last = Some(Instant::now());
        rx.recv()
            .unwrap_or_else(|_| Err("the status writer has stopped".to_owned()))
    }

    fn before_writes(&mut self) -> Result<(), String> {
        let Some(step) = self.quiesce.take() else {
            return Ok(());
        };
        // This is the engine's blocking thread: hand the API calls to the runtime and wait.
        let (tx, rx) = std::sync::mpsc::channel();
        step.handle.clone().spawn(async move {
            let _ = tx.send(step.run().await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err("spec.quiesce: the task ended abnormally".to_owned()))
    }

    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.shutdown.load(Ordering::SeqCst)
    }
}

/// Gives back the replicas of every workload this migration scaled to zero (read from
/// its live status), and says so in an Event. Nothing to do without `status.quiesced`.
async fn restore_workloads(ctx: &Context, api: &Api<TenantMigration>, name: &str) -> Result<(), ControllerError> {
    let Some(tm) = api.get_opt(name).await? else {
        return Ok(());
    };
    let recorded = tm.status.as_ref().map(|s| s.quiesced.clone()).unwrap_or_default();
    if recorded.iter().all(|r| r.restored) {
        return Ok(());
    }
    let ns = tm.namespace().unwrap_or_default();
    let object = tm.object_ref(&());
    match Quiescer::new(ctx.client.clone(), &ns, name).restore(&recorded).await {
        Ok(restored) => {
            if !restored.is_empty() {
                let note = format!("replicas given back: {}", quiesce::describe(&restored));
                publish(ctx, &object, EventType::Normal, "WorkloadsRestored", note).await;
            }
            Ok(())
        }
        Err(e) => {
            publish(ctx, &object, EventType::Warning, "RestoreFailed", e.to_string()).await;
            Err(e.into())
        }
    }
}

/// Why a migration that has run to its end is not finished yet.
const RESTORE_FAILED: &str = "RestoreFailed";

/// Gives the quiesced workloads their replicas back before the run's final phase is
/// written, trying again while that fails (a webhook or quota refusing the scale, the
/// API server away): until then the migration stays Running with `Ready=False` and
/// `WorkloadsRestored=False`, reason `RestoreFailed`, naming the workload and the
/// error, so nothing waiting for Ready sees a finished migration while its RAG API is
/// still at zero. A deleted migration, or a controller shutting down, leaves the loop:
/// the finalizer or the next leader restores.
async fn restore_before_end(
    ctx: &Context,
    api: &Api<TenantMigration>,
    name: &str,
    (generation, start_time): (Option<i64>, &str),
    (outcome, outcome_message): (MigrationPhase, &str),
) -> Result<(), ControllerError> {
    let mut wait = Duration::from_secs(2);
    loop {
        let error = match restore_workloads(ctx, api, name).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let deleted = api
            .get_opt(name)
            .await?
            .is_none_or(|tm| tm.metadata.deletion_timestamp.is_some());
        if deleted || ctx.shutdown.load(Ordering::SeqCst) {
            return Err(error);
        }
        let message = format!(
            "the run ended ({outcome:?}: {outcome_message}), but the quiesced workloads could not get their \
             replicas back: {error}; trying again in {} s",
            wait.as_secs()
        );
        tracing::warn!(%message);
        let mut body = lifecycle(
            generation,
            MigrationPhase::Running,
            (Some(start_time), None),
            &message,
            RESTORE_FAILED,
        );
        push_condition(
            &mut body,
            generation,
            ("WorkloadsRestored", false, RESTORE_FAILED),
            &message,
        );
        apply_status(api, name, MANAGER, body).await?;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// Adds one condition to a [`lifecycle`] body.
fn push_condition(
    body: &mut serde_json::Value,
    generation: Option<i64>,
    (type_, status, reason): (&str, bool, &str),
    message: &str,
) {
    let condition = Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: redact::for_status(message),
        observed_generation: generation,
        last_transition_time: now(),
    };
    if let Some(list) = body["conditions"].as_array_mut() {
        list.push(json!(condition));
    }
}

/// Sets `stop` once the migration is suspended, deleted or gone, so the run pauses at
/// the next batch boundary. A watch on this one object: the change arrives as it happens,
/// with no polling of the API server.
fn watch_for_stop(api: Api<TenantMigration>, name: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let events = watcher(api, config).default_backoff();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let halt = match event {
                Ok(watcher::Event::Apply(tm) | watcher::Event::InitApply(tm)) => {
                    tm.spec.suspend || tm.metadata.deletion_timestamp.is_some()
                }
                Ok(watcher::Event::Delete(_)) => true,
                Ok(watcher::Event::Init | watcher::Event::InitDone) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the migration failed; retrying");
                    false
                }
            };
            if halt {
                stop.store(true, Ordering::SeqCst);
                return;
            }
        }
    })
}

/// The finalizer that lets a deleted migration stop at a batch boundary and say what it did.
pub const FINALIZER: &str = "tenancy.dev/stop-at-batch-boundary";

async fn reconcile(cached: Arc<TenantMigration>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let api: Api<TenantMigration> = Api::namespaced(ctx.client.clone(), &ns);
    // The cache can lag behind our own status patches (a reconcile queued during a long
    // run sees the object as it was then): decide on the object as it is now, or a
    // finished migration would be started again from an old checkpoint.
    let Some(live) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    // Every log line of this reconcile, the engine's included, names the migration.
    let span = tracing::info_span!("reconcile", migration = %format!("{ns}/{name}"));
    finalizer(&api, FINALIZER, Arc::new(live), |event| async {
        match event {
            FinalizerEvent::Apply(tm) => apply(tm, &ctx, &api).await,
            FinalizerEvent::Cleanup(tm) => cleanup(tm, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| ControllerError::Finalizer(e.to_string()))
}

/// A deleted migration's progress, kept so that the same migration applied again
/// recognises its own earlier work instead of refusing a target "already holding"
/// it — after a Move's removal began, the target holds the only copy of what was
/// removed. A ConfigMap in the operator's namespace (never where users write), named
/// by the migration's namespace, stack, source and target.
fn ledger_name(tm: &TenantMigration, stack: Option<&str>) -> String {
    let ns = tm.namespace().unwrap_or_default();
    let stack = stack.unwrap_or("inline");
    let key = format!(
        "{ns}\n{stack}\n{}\n{}",
        tm.spec.source.as_str(),
        tm.spec.target.as_str()
    );
    format!(
        "tenant-migrator-ledger-{:016x}",
        crate::stores::digest(&[key.as_bytes()])
    )
}

/// Writes the ledger of a migration being deleted that has written something.
async fn save_ledger(ctx: &Context, tm: &TenantMigration) -> Result<(), ControllerError> {
    let status = tm.status.clone().unwrap_or_default();
    let Some(ledger_ns) = ctx.secrets_namespace.as_deref() else {
        return Ok(());
    };
    if !Store::ALL.iter().any(|s| engine::has_started(status.phases.get(*s))) {
        return Ok(());
    }
    let stack = tm.spec.stack_ref.as_ref().map(|r| r.name.clone());
    let name = ledger_name(tm, stack.as_deref());
    let phases = serde_json::to_string(&status.phases).map_err(|e| ControllerError::Engine(e.to_string()))?;
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": MANAGER}},
        "data": {
            "migration": format!("{}/{}", tm.namespace().unwrap_or_default(), tm.name_any()),
            "mode": format!("{:?}", tm.spec.mode),
            "phases": phases,
        },
    });
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(ctx.client.clone(), ledger_ns);
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(body))
        .await?;
    tracing::info!(ledger = %format!("{ledger_ns}/{name}"), "progress kept for a migration applied again");
    Ok(())
}

/// The phases of an earlier migration of the same tenants through the same stack that
/// was deleted mid-run, written to this one's status (and the ledger removed); `None`
/// when there is none, or when it ran in another mode.
async fn adopt_ledger(
    ctx: &Context,
    api: &Api<TenantMigration>,
    tm: &TenantMigration,
    stack: Option<&str>,
) -> Result<Option<PhaseStatuses>, ControllerError> {
    let Some(ledger_ns) = ctx.secrets_namespace.as_deref() else {
        return Ok(None);
    };
    let ledgers: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(ctx.client.clone(), ledger_ns);
    let name = ledger_name(tm, stack);
    let Some(ledger) = ledgers.get_opt(&name).await? else {
        return Ok(None);
    };
    let data = ledger.data.unwrap_or_default();
    let earlier = data.get("migration").cloned().unwrap_or_default();
    let object = tm.object_ref(&());
    if data.get("mode").map(String::as_str) != Some(format!("{:?}", tm.spec.mode).as_str()) {
        let note = format!(
            "TenantMigration {earlier}, deleted mid-run, did a {} of these tenants: not resumed by a {:?}",
            data.get("mode").cloned().unwrap_or_default(),
            tm.spec.mode
        );
        publish(ctx, &object, EventType::Warning, "EarlierWorkNotAdopted", note).await;
        return Ok(None);
    }
    let Some(phases) = data
        .get("phases")
        .and_then(|p| serde_json::from_str::<PhaseStatuses>(p).ok())
    else {
        return Ok(None);
    };
    apply_status(api, &tm.name_any(), PROGRESS_MANAGER, progress_status(&phases)).await?;
    ledgers.delete(&name, &Default::default()).await?;
    let note = format!(
        "resuming the work of TenantMigration {earlier}, deleted mid-run, from its checkpoints (ledger \
         {ledger_ns}/{name})"
    );
    tracing::info!("{note}");
    publish(ctx, &object, EventType::Normal, "AdoptedEarlierWork", note).await;
    Ok(Some(phases))
}

/// The migration is being deleted. A run in progress has already stopped at a batch
/// boundary (it watches for the deletion); the stores hold a consistent, resumable
/// state. Say what was done, then let the object go.
async fn cleanup(tm: Arc<TenantMigration>, ctx: &Context) -> Result<Action, ControllerError> {
    // The finalizer stays until the workloads have their replicas back.
    let api: Api<TenantMigration> = Api::namespaced(ctx.client.clone(), &tm.namespace().unwrap_or_default());
    restore_workloads(ctx, &api, &tm.name_any()).await?;
    let status = tm.status.clone().unwrap_or_default();
    let done: Vec<String> = Store::ALL
        .iter()
        .map(|s| (s, status.phases.get(*s)))
        .filter(|(_, p)| p.state != PhaseState::Pending || p.done > 0)
        .map(|(s, p)| format!("{s}: {:?} {}/{}", p.state, p.done, p.total))
        .collect();
    save_ledger(ctx, &tm).await?;
    let note = format!(
        "deleted while {:?}; stopped at a batch boundary; {}",
        status.phase,
        if done.is_empty() {
            "nothing was written".to_owned()
        } else {
            done.join(", ")
        }
    );
    publish(ctx, &tm.object_ref(&()), EventType::Normal, "MigrationDeleted", note).await;
    Ok(Action::await_change())
}

async fn apply(
    tm: Arc<TenantMigration>,
    ctx: &Arc<Context>,
    api: &Api<TenantMigration>,
) -> Result<Action, ControllerError> {
    let (api, ctx) = (api.clone(), ctx.clone());
    let name = tm.name_any();
    let ns = tm.namespace().unwrap_or_default();
    let generation = tm.metadata.generation;
    let mut status = tm.status.clone().unwrap_or_default();
    let finished = matches!(status.phase, MigrationPhase::Succeeded | MigrationPhase::Failed);
    // A refused migration wrote nothing: it is admitted again (its stack may have changed).
    let refused = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && Refusal::REASONS.contains(&c.reason.as_str()));
    if finished && status.observed_generation == generation && !refused {
        // A controller that died between the final status and the restore finishes it here.
        restore_workloads(&ctx, &api, &name).await?;
        return Ok(Action::await_change());
    }
    // Failed runs of this generation (a new generation starts the count again).
    let failed_runs = if status.observed_generation == generation {
        status.failed_runs
    } else {
        0
    };
    if status.phase == MigrationPhase::Pending
        && failed_runs > 0
        && let Some(at) = status
            .retry_after
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    {
        let left = at.duration_since(jiff::Timestamp::now());
        if left.is_positive() {
            let wait = Duration::from_secs_f64(left.as_secs_f64()).max(Duration::from_millis(100));
            return Ok(Action::requeue(wait));
        }
    }
    if tm.spec.suspend {
        let message = "suspended by spec.suspend; clear it to resume from the checkpoint";
        set_state(&api, &tm, MigrationPhase::Suspended, "Suspended", message).await?;
        return Ok(Action::await_change());
    }

    // Where data and credentials go is decided first: a refused migration never waits
    // for another or reads a Secret.
    let run = match admission(&ctx, &tm, &ns).await {
        Ok(Ok(run)) => run,
        Ok(Err(refusal)) => {
            let message = refusal.to_string();
            if set_state(&api, &tm, MigrationPhase::Failed, refusal.reason(), &message).await? {
                publish(
                    &ctx,
                    &tm.object_ref(&()),
                    EventType::Warning,
                    "MigrationRefused",
                    message,
                )
                .await;
            }
            restore_workloads(&ctx, &api, &name).await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };

    // One migration per tenant at a time: an older unfinished migration touching the
    // same tenant (as source or target, in any namespace watched) goes first.
    // The other migrations, read once for the checks below.
    let others = watched_migrations(&ctx).await?;
    if let Some(other) = conflicting(&others, &tm) {
        let message = format!("waiting for TenantMigration {other}, which touches the same tenant");
        set_state(&api, &tm, MigrationPhase::Pending, "WaitingForOtherMigration", &message).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }

    let origin = match &run.stack {
        Some(s) => format!("RagStack {s} spec"),
        None => "spec".to_owned(),
    };
    let creds = match credentials(&ctx.client, &run.spec, run.secrets_namespace.as_deref(), &origin).await {
        Ok(c) => c,
        Err(ControllerError::MissingSecret(m)) => {
            // A clear condition, retried slowly: creating the Secret is enough to proceed.
            set_state(&api, &tm, MigrationPhase::Pending, "MissingSecret", &m).await?;
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
        Err(e) => return Err(e),
    };

    // A workload that another unfinished migration scaled to zero holds that
    // migration's record of its replicas: recording it again would record the zero.
    // The second one waits until the first has given the replicas back.
    let uid = tm.metadata.uid.clone().unwrap_or_default();
    let wait_for_workload =
        |workload: String, other: String| format!("waiting for {other}, which holds {workload} at zero (spec.quiesce)");
    if let Some((workload, other)) = quiesced_by_another(&others, &tm) {
        let message = wait_for_workload(workload, format!("TenantMigration {other}"));
        set_state(&api, &tm, MigrationPhase::Pending, "WaitingForWorkload", &message).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    // Checked and reserved at once: two migrations past the status check together
    // cannot both go on (this process runs every migration: it holds the Lease).
    let reservation = {
        let mut map = ctx.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let key = |w: &WorkloadRef| (ns.clone(), w.kind.to_string(), w.name.clone());
        let taken = tm
            .spec
            .quiesce
            .iter()
            .find(|w| map.get(&key(w)).is_some_and(|h| *h != uid));
        match taken {
            Some(w) => Err(format!("{} {}", w.kind, w.name)),
            None => {
                for w in &tm.spec.quiesce {
                    map.insert(key(w), uid.clone());
                }
                Ok(Reservation {
                    map: ctx.reserved.clone(),
                    uid: uid.clone(),
                })
            }
        }
    };
    let _reservation = match reservation {
        Ok(r) => r,
        Err(workload) => {
            let message = wait_for_workload(workload, "another running migration".to_owned());
            set_state(&api, &tm, MigrationPhase::Pending, "WaitingForWorkload", &message).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
    };
    // Held until the engine returns (dropped with this function).
    let Ok(_slot) = ctx.slots.clone().try_acquire_owned() else {
        let message = format!(
            "{n} migrations are running in this controller, its limit (--max-concurrent-migrations {n})",
            n = ctx.max_running
        );
        set_state(&api, &tm, MigrationPhase::Pending, "WaitingForCapacity", &message).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    };

    // A migration deleted mid-run and applied again resumes the work it had done.
    if !Store::ALL.iter().any(|s| engine::has_started(status.phases.get(*s)))
        && let Some(phases) = adopt_ledger(&ctx, &api, &tm, run.stack.as_deref()).await?
    {
        status.phases = phases;
    }
    let start_time = status
        .start_time
        .clone()
        .unwrap_or_else(|| jiff::Timestamp::now().to_string());
    // A run starts without a completion time (a rerun after a spec change drops the old one).
    let running = lifecycle(
        generation,
        MigrationPhase::Running,
        (Some(&start_time), None),
        "migration running",
        "Running",
    );
    apply_status(&api, &name, MANAGER, running).await?;
    let stack_name = run.stack.clone().unwrap_or_else(|| "inline".to_owned());
    let touched = json!({
        "stack": stack_name,
        "tenants": [tm.spec.source.as_str(), tm.spec.target.as_str()],
    });
    apply_status(&api, &name, ACCESS_MANAGER, touched).await?;
    let stores: Vec<&str> = Store::ALL
        .iter()
        .filter(|s| match s {
            Store::Config => run.spec.config.enabled,
            Store::Redis => run.spec.redis.enabled,
            Store::Qdrant => run.spec.qdrant.enabled,
            Store::Memgraph => run.spec.memgraph.enabled,
        })
        .map(|s| s.name())
        .collect();
    let on = match &run.stack {
        Some(s) => format!("RagStack {s}"),
        None => "inline endpoints".to_owned(),
    };
    let started = format!(
        "{:?} of tenant {} to {} started on {on} ({})",
        tm.spec.mode,
        tm.spec.source,
        tm.spec.target,
        stores.join(", ")
    );
    publish(
        &ctx,
        &tm.object_ref(&()),
        EventType::Normal,
        "MigrationStarted",
        started,
    )
    .await;

    // Status patches and Events happen beside the engine, so a slow API server never stalls a batch.
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let object = tm.object_ref(&());
    let writer = {
        let (api, name, ctx, object) = (api.clone(), name.clone(), ctx.clone(), object.clone());
        let mut previous = status.phases.clone();
        tokio::spawn(async move {
            while let Some(update) = rx.recv().await {
                match update {
                    Update::Retry {
                        store,
                        batch,
                        attempt,
                        error,
                    } => {
                        let note = format!("{store}: batch {batch} failed (attempt {attempt}), retrying: {error}");
                        publish(&ctx, &object, EventType::Warning, "BatchRetry", note).await;
                    }
                    Update::Phases(phases) => {
                        for store in Store::ALL {
                            let (was, now) = (previous.get(store).state, phases.get(store).state);
                            if was != now {
                                phase_event(&ctx, &object, store, now, phases.get(store).message.clone()).await;
                            }
                        }
                        let body = progress_status(&phases);
                        if let Err(e) = apply_status(&api, &name, PROGRESS_MANAGER, body).await {
                            tracing::warn!(error = %e, "status patch failed");
                        }
                        previous = *phases;
                    }
                    Update::Persist(phases, done) => {
                        let body = progress_status(&phases);
                        let written = apply_status(&api, &name, PROGRESS_MANAGER, body)
                            .await
                            .map_err(|e| format!("status patch failed: {e}"));
                        let _ = done.send(written);
                    }
                }
            }
        })
    };
    // The engine runs on a blocking thread of its own: its future borrows across
    // awaits in ways the controller's Send bound cannot express, and a long
    // migration must not occupy a reactor thread anyway.
    let options = RunOptions::with_retry(&run.spec.retry);
    let (spec, resume) = (run.spec, status.phases.clone());
    let handle = tokio::runtime::Handle::current();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_for_stop(api.clone(), name.clone(), stop.clone());
    let metrics = ctx.metrics.clone();
    let shutdown = ctx.shutdown.clone();
    let quiesce = (!tm.spec.quiesce.is_empty()).then(|| QuiesceStep {
        quiescer: Quiescer::new(ctx.client.clone(), &ns, &name),
        wanted: tm.spec.quiesce.clone(),
        recorded: status.quiesced.clone(),
        ctx: ctx.clone(),
        object: object.clone(),
        handle: handle.clone(),
    });
    let span = tracing::Span::current();
    let report = tokio::task::spawn_blocking(move || {
        let _in_span = span.enter();
        let mut progress = StatusProgress {
            tx,
            last: None,
            states: Vec::new(),
            stop,
            shutdown,
            metrics,
            seen: Vec::new(),
            quiesce,
        };
        handle.block_on(engine::run(&spec, &creds, &resume, &options, &mut progress))
    })
    .await;
    let _ = writer.await;
    watcher.abort();
    let report = match report {
        Ok(r) => r,
        Err(e) => return Err(ControllerError::Engine(e.to_string())),
    };

    let mut phases = status.phases.clone();
    for p in &report.phases {
        *phases.get_mut(p.store) = p.status.clone();
    }
    if matches!(report.error, Some(EngineError::Stopped { .. })) && ctx.shutdown.load(Ordering::SeqCst) {
        // Stopped by the controller's own shutdown, not by the user: the progress is
        // written, the migration stays Running (its workloads stay quiesced), and the
        // next leader resumes it from the checkpoint.
        apply_status(&api, &name, PROGRESS_MANAGER, progress_status(&phases)).await?;
        let note = "the controller is shutting down: stopped at a batch boundary; the next leader resumes \
                    from the checkpoint"
            .to_owned();
        tracing::info!("{note}");
        publish(&ctx, &object, EventType::Normal, "MigrationInterrupted", note).await;
        return Ok(Action::await_change());
    }
    let (phase, reason, message) = match &report.error {
        None if tm.spec.dry_run => (
            MigrationPhase::Succeeded,
            "Planned",
            "dry run: plan in status, nothing written".to_owned(),
        ),
        None => (
            MigrationPhase::Succeeded,
            "Succeeded",
            "every phase succeeded and was verified".to_owned(),
        ),
        Some(EngineError::Stopped { .. }) => (
            MigrationPhase::Suspended,
            "Suspended",
            report.error.as_ref().map(ToString::to_string).unwrap_or_default(),
        ),
        Some(e) => (MigrationPhase::Failed, "Failed", e.to_string()),
    };
    tracing::info!(?phase, %message, "migration finished");
    apply_status(&api, &name, PROGRESS_MANAGER, progress_status(&phases)).await?;
    let limit = tm.spec.backoff_limit.unwrap_or(BACKOFF_LIMIT);
    let (phase, message) = match &report.error {
        Some(e) if phase == MigrationPhase::Failed && e.is_transient() && failed_runs < limit => {
            // Run again later: the workloads stay quiesced, as for a suspended run.
            let n = failed_runs + 1;
            let wait = backoff(n);
            let at = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
                .unwrap_or_else(|_| jiff::Timestamp::now());
            apply_status(
                &api,
                &name,
                RETRY_MANAGER,
                json!({"failedRuns": n, "retryAfter": at.to_string()}),
            )
            .await?;
            let message = format!(
                "run failed for a transient reason; running again in {} s (retry {n} of {limit}): {message}",
                wait.as_secs()
            );
            let body = lifecycle(
                generation,
                MigrationPhase::Pending,
                (Some(&start_time), None),
                &message,
                "RetryingAfterFailure",
            );
            apply_status(&api, &name, MANAGER, body).await?;
            publish(&ctx, &object, EventType::Warning, "MigrationRetrying", message).await;
            return Ok(Action::requeue(wait));
        }
        Some(e) if phase == MigrationPhase::Failed && failed_runs > 0 => {
            apply_status(&api, &name, RETRY_MANAGER, json!({"failedRuns": failed_runs})).await?;
            let why = if e.is_transient() {
                format!(
                    "failed {} times for a transient reason (backoffLimit {limit})",
                    failed_runs + 1
                )
            } else {
                "failed".to_owned()
            };
            (phase, format!("{why}: {message}"))
        }
        _ => {
            if failed_runs > 0 {
                apply_status(&api, &name, RETRY_MANAGER, json!({"failedRuns": failed_runs})).await?;
            }
            (phase, message)
        }
    };
    // Workloads get their replicas back before the final phase is written: Ready (or
    // Failed) must not be visible while the RAG API is still at zero. A suspended
    // migration keeps them stopped: they would see a half-moved tenant.
    if phase != MigrationPhase::Suspended {
        restore_before_end(&ctx, &api, &name, (generation, &start_time), (phase, &message)).await?;
    }
    let completion = jiff::Timestamp::now().to_string();
    let mut end = lifecycle(
        generation,
        phase,
        (Some(&start_time), Some(&completion)),
        &message,
        reason,
    );
    if !tm.spec.quiesce.is_empty() && phase != MigrationPhase::Suspended {
        push_condition(
            &mut end,
            generation,
            ("WorkloadsRestored", true, "Restored"),
            "replicas given back",
        );
    }
    apply_status(&api, &name, MANAGER, end).await?;
    let kind = if phase == MigrationPhase::Failed {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(&ctx, &object, kind, &format!("Migration{phase:?}"), message).await;
    Ok(Action::await_change())
}

/// Puts a migration that is not running into `phase` with one reason and message.
/// Writes only when something changes: every status write is a watch event, and an
/// unconditional one would make each reconcile trigger the next.
async fn set_state(
    api: &Api<TenantMigration>,
    tm: &TenantMigration,
    phase: MigrationPhase,
    reason: &str,
    message: &str,
) -> Result<bool, kube::Error> {
    let generation = tm.metadata.generation;
    let status = tm.status.clone().unwrap_or_default();
    let same = status.phase == phase
        && status.observed_generation == generation
        && status
            .conditions
            .iter()
            .any(|c| c.reason == reason && c.message == message);
    if same {
        return Ok(false);
    }
    // The times stay as they were: this apply must carry every field the manager owns.
    let times = (status.start_time.as_deref(), status.completion_time.as_deref());
    let body = lifecycle(generation, phase, times, message, reason);
    apply_status(api, &tm.name_any(), MANAGER, body).await?;
    Ok(true)
}

/// Every TenantMigration the controller watches, for the checks against the others.
async fn watched_migrations(ctx: &Context) -> Result<Vec<TenantMigration>, ControllerError> {
    let apis: Vec<Api<TenantMigration>> = if ctx.namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        ctx.namespaces
            .iter()
            .map(|ns| Api::namespaced(ctx.client.clone(), ns))
            .collect()
    };
    let mut list = Vec::new();
    for api in apis {
        list.extend(api.list(&Default::default()).await?.items);
    }
    Ok(list)
}

/// A workload of `tm.spec.quiesce` that another migration of `all` in its namespace
/// has scaled to zero and not given back yet, and that migration.
fn quiesced_by_another(all: &[TenantMigration], tm: &TenantMigration) -> Option<(String, String)> {
    let others = all
        .iter()
        .filter(|o| o.metadata.uid != tm.metadata.uid && o.namespace() == tm.namespace());
    for other in others {
        let held = other.status.as_ref().map(|s| s.quiesced.as_slice()).unwrap_or_default();
        for w in &tm.spec.quiesce {
            if held.iter().any(|q| !q.restored && q.kind == w.kind && q.name == w.name) {
                return Some((format!("{} {}", w.kind, w.name), other.name_any()));
            }
        }
    }
    None
}

/// An older TenantMigration of `all`, not finished, whose source or target is one of `tm`'s.
fn conflicting(all: &[TenantMigration], tm: &TenantMigration) -> Option<String> {
    let mine = [tm.spec.source.as_str(), tm.spec.target.as_str()];
    let key = |t: &TenantMigration| (t.metadata.creation_timestamp.clone(), t.namespace(), t.name_any());
    let me = key(tm);
    let mut others: Vec<&TenantMigration> = all
        .iter()
        .filter(|o| o.metadata.uid != tm.metadata.uid)
        .filter(|o| {
            let theirs = [o.spec.source.as_str(), o.spec.target.as_str()];
            theirs.iter().any(|t| mine.contains(t))
        })
        .filter(|o| {
            let phase = o.status.as_ref().map(|s| s.phase).unwrap_or_default();
            !matches!(phase, MigrationPhase::Succeeded | MigrationPhase::Failed)
        })
        .filter(|o| key(o) < me)
        .collect();
    others.sort_by_key(|o| key(o));
    others
        .first()
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
}

/// Publishes an Event; a failure to do so is logged, never fatal.
async fn publish(ctx: &Context, object: &ObjectReference, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(redact::excerpt(&note, 990)),
        action: "Migrate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, object).await {
        tracing::warn!(error = %e, reason, "cannot publish an Event");
    }
}

async fn phase_event(
    ctx: &Context,
    object: &ObjectReference,
    store: Store,
    state: PhaseState,
    message: Option<String>,
) {
    let (type_, reason, note) = match state {
        PhaseState::Running => (EventType::Normal, "PhaseStarted", format!("{store} phase started")),
        PhaseState::Succeeded => (EventType::Normal, "PhaseSucceeded", message.unwrap_or_default()),
        PhaseState::Failed => (EventType::Warning, "PhaseFailed", message.unwrap_or_default()),
        PhaseState::Skipped | PhaseState::Pending => return,
    };
    publish(ctx, object, type_, reason, note).await;
}

fn error_policy(_tm: Arc<TenantMigration>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile error; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_the_phase() {
        let of = |phase| {
            conditions(phase, Some(3), "m", "R")
                .into_iter()
                .map(|c| {
                    assert_eq!(c.observed_generation, Some(3));
                    (c.type_, c.status)
                })
                .collect::<Vec<_>>()
        };
        let t = |[a, b, c, d, e]: [&str; 5]| {
            vec![
                ("Ready".into(), a.into()),
                ("Progressing".into(), b.into()),
                ("Degraded".into(), c.into()),
                ("Reconciling".into(), d.into()),
                ("Stalled".into(), e.into()),
            ]
        };
        let (y, n) = ("True", "False");
        assert_eq!(of(MigrationPhase::Succeeded), t([y, n, n, n, n]));
        assert_eq!(of(MigrationPhase::Running), t([n, y, n, y, n]));
        assert_eq!(of(MigrationPhase::Pending), t([n, n, n, y, n]));
        assert_eq!(of(MigrationPhase::Failed), t([n, n, y, n, y]));
        assert_eq!(of(MigrationPhase::Suspended), t([n, n, n, n, n]));
    }

    #[test]
    fn progress_adds_every_store() {
        let mut p = PhaseStatuses::default();
        p.redis.done = 10;
        p.redis.total = 40;
        p.qdrant.done = 5;
        p.qdrant.total = 60;
        assert_eq!(progress_of(&p), "15/100");
    }
}
