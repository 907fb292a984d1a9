//! Fault injection against the real test servers (`testkit chaos`, and a smaller
//! sample in `tests/chaos.rs`).
//!
//! Each trial migrates a fresh LightRAG-shaped tenant (with its look-alike tenants
//! beside it) across all four stores — the config API stand-in, a Redis with the
//! append-only file fsynced on every write, the Qdrant test server and the Bolt server
//! — with `tenant-migrator migrate`, and injects faults at points drawn at random from
//! every stage of every store (first batch, mid-copy, verify, removal,
//! verify-removal):
//!
//! - **kill**: the CLI is SIGKILLed there and run again on its state file;
//! - **restart**: the store is SIGKILLed there and started again from its disk (Redis
//!   from its AOF, Qdrant from its segments and WAL, Neo4j from its transaction log),
//!   while the CLI keeps running and must ride it out.
//!
//! A point is "reached" once the state file shows the run at or past it (the position
//! of a run is its furthest store checkpoint in the engine's order: every store's copy
//! and verify, then every store's removal). Afterwards the trial is judged by content:
//! the target holds exactly what the source held (Redis types, values and TTLs; Qdrant
//! payloads and every vector under the ids LightRAG computes; graph nodes and
//! relationships with all their properties; the config document), a Move left nothing
//! of the source, there are no duplicates, and everything outside the two tenants —
//! look-alikes included — is as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config_api::{renamed_config, sample_config};
use crate::fixture::{self, KeyState};
use crate::qdrant_fixture::{self, StoredPoint};
use crate::{BoltServer, ConfigApi, DelayProxy, QdrantServer, RedisServer, graph_fixture};

/// The stores in the engine's order.
pub const STORES: [&str; 4] = ["config", "redis", "qdrant", "memgraph"];
/// The stages of a phase, in order, as the state file names them.
const STAGES: [&str; 5] = ["Copy", "Verify", "RemoveSource", "VerifyRemoved", "Done"];
/// Items per batch in every run: many batches, so points spread over each stage.
const BATCH: u32 = 20;
/// Vector size of the Qdrant fixture.
const DIM: u64 = 8;
const BOLT_PASSWORD: &str = "chaos-s3cret";

/// What to inject.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    /// Trials with CLI kills, and kills per trial.
    pub kill_trials: usize,
    pub kills_per_trial: usize,
    /// Trials with one store restart each (they take Redis, Qdrant and the graph
    /// server in turn).
    pub restart_trials: usize,
    /// Trials where every connection to one store is cut mid-phase (Redis, Qdrant and
    /// the graph server in turn).
    pub cut_trials: usize,
    /// Fixture scale per trial (1 = the reference tenant).
    pub scale: f64,
    /// The `tenant-migrator` binary.
    pub migrator: PathBuf,
    /// Where state files and logs go.
    pub work: PathBuf,
}

/// A point of a run: `(pass, store, stage, batch)`, ordered as the engine goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    pass: u8,
    store: usize,
    stage: usize,
    batch: u64,
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}#{}", STORES[self.store], STAGES[self.stage], self.batch)
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(Point),
    Restart(Point),
    Cut(Point),
}

impl Fault {
    fn at(self) -> Point {
        match self {
            Fault::Kill(p) | Fault::Restart(p) | Fault::Cut(p) => p,
        }
    }
}

/// One trial's line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub trial: usize,
    pub mode: &'static str,
    /// Each fault as planned, and where it landed (or that the run ended first).
    pub faults: Vec<String>,
    pub runs: u32,
    pub exact: bool,
    pub seconds: f64,
}

/// The suite's figures.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub kills_tried: u32,
    pub kills_survived: u32,
    pub restarts_tried: u32,
    pub restarts_survived: u32,
    pub cuts_tried: u32,
    pub cuts_survived: u32,
    /// Faults whose point the run finished before reaching (not counted as tried).
    pub unreached: u32,
    /// Items outside the migrated tenants that differ afterwards (must be 0).
    pub foreign_touched: u64,
    /// Highest peak RSS of any CLI run (VmHWM), KiB.
    pub peak_rss_kib: u64,
    pub rows: Vec<Row>,
    /// What went wrong, per trial.
    pub failures: Vec<String>,
}

impl Figures {
    /// The table `testkit chaos` prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<6} {:<5} {:>4} {:<6} {:>7}  faults\n",
            "trial", "mode", "runs", "exact", "seconds"
        );
        for r in &self.rows {
            out += &format!(
                "{:<6} {:<5} {:>4} {:<6} {:>7.1}  {}\n",
                r.trial,
                r.mode,
                r.runs,
                if r.exact { "yes" } else { "NO" },
                r.seconds,
                r.faults.join("; ")
            );
        }
        out += &format!(
            "kills survived {}/{}, store restarts survived {}/{}, connection cuts survived {}/{}, faults not reached \
             {}, foreign items touched {}, peak RSS {} MiB\n",
            self.kills_survived,
            self.kills_tried,
            self.restarts_survived,
            self.restarts_tried,
            self.cuts_survived,
            self.cuts_tried,
            self.unreached,
            self.foreign_touched,
            self.peak_rss_kib.div_ceil(1024)
        );
        for f in &self.failures {
            out += &format!("FAILED: {f}\n");
        }
        out
    }
}

/// A small deterministic generator (xorshift64*): the same seed, the same points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A random point of a run in `mode` in `store` (index into [`STORES`]).
fn point(rng: &mut Rng, store: usize, moved: bool) -> Point {
    let stage = rng.below(if moved { 4 } else { 2 }) as usize;
    // Batches in the fixture at these sizes: about 40 Redis pages and Qdrant batches,
    // 15 graph batches; the config phase has one item, VerifyRemoved no batches.
    let batches = match (STORES[store], stage) {
        ("config", _) | (_, 3) => 0,
        ("memgraph", _) => 12,
        _ => 30,
    };
    Point {
        pass: u8::from(stage >= 2),
        store,
        stage,
        batch: rng.below(batches + 1),
    }
}

/// The servers of the suite, shared by its trials (each trial has tenants of its own).
struct Servers {
    config: ConfigApi,
    redis: RedisServer,
    qdrant: QdrantServer,
    graph: BoltServer,
    /// What the CLI connects to: a proxy in front of Redis, Qdrant and the graph server.
    proxies: [DelayProxy; 3],
}

/// Everything a trial compares: the stores' whole contents.
struct Contents {
    config: BTreeMap<String, serde_json::Value>,
    redis: BTreeMap<Vec<u8>, KeyState>,
    qdrant: BTreeMap<String, BTreeMap<String, StoredPoint>>,
    graph: (Vec<String>, Vec<String>),
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl Servers {
    async fn start() -> Result<Self, Failure> {
        let config = ConfigApi::start(crate::free_port()?, None).await?;
        let (redis, qdrant, graph) = tokio::task::block_in_place(|| {
            Ok::<_, Failure>((
                RedisServer::start_durable()?,
                QdrantServer::start(None)?,
                BoltServer::start(BOLT_PASSWORD)?,
            ))
        })?;
        let proxy = |port: u16| DelayProxy::start(([127, 0, 0, 1], port).into(), Duration::ZERO);
        let proxies = [proxy(redis.port())?, proxy(qdrant.port())?, proxy(graph.port())?];
        Ok(Self {
            config,
            redis,
            qdrant,
            graph,
            proxies,
        })
    }

    async fn load(&self, source: &str, scale: f64) -> Result<(), Failure> {
        self.config.insert(source, sample_config(source));
        fixture::load_standard(&mut self.redis.conn()?, source, scale)?;
        qdrant_fixture::load_standard(&self.qdrant.client(None)?, source, scale, DIM, false).await?;
        graph_fixture::load_standard(&self.graph.graph().await?, source, scale).await?;
        Ok(())
    }

    async fn contents(&self, labels: &[String]) -> Result<Contents, Failure> {
        let redis = fixture::snapshot(&mut self.redis.conn()?, |_| true)?;
        let q = self.qdrant.client(None)?;
        let mut qdrant = BTreeMap::new();
        for c in q.list_collections().await?.collections {
            qdrant.insert(c.name.clone(), qdrant_fixture::snapshot(&q, &c.name).await?);
        }
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let graph = graph_fixture::snapshot(&self.graph.graph().await?, &refs).await?;
        Ok(Contents {
            config: self.config.all(),
            redis,
            qdrant,
            graph,
        })
    }

    fn migrate(&self, plan: &Plan, (source, target): (&str, &str), moved: bool, log: &Path) -> std::io::Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        Command::new(&plan.migrator)
            .args(["migrate", source, target, "--mode", if moved { "move" } else { "copy" }])
            .args(["--batch-size", &BATCH.to_string()])
            .args(["--api-url", &self.config.url()])
            .args(["--redis-url", &format!("redis://127.0.0.1:{}/", self.proxies[0].port())])
            .args(["--qdrant-url", &format!("http://127.0.0.1:{}", self.proxies[1].port())])
            .args([
                "--memgraph-uri",
                &format!("bolt://127.0.0.1:{}", self.proxies[2].port()),
            ])
            .arg("--state-dir")
            .arg(&plan.work)
            .env_remove("TENANT_API_TOKEN")
            .env_remove("REDIS_PASSWORD")
            .env_remove("QDRANT_API_KEY")
            .env("MEMGRAPH_USER", crate::bolt_server::USER)
            .env("MEMGRAPH_PASSWORD", BOLT_PASSWORD)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
    }

    /// Crashes and restarts `store`'s server.
    fn restart(&mut self, store: &str) -> Result<(), Failure> {
        tokio::task::block_in_place(|| match store {
            "redis" => self.redis.crash_restart(),
            "qdrant" => self.qdrant.crash_restart(),
            _ => self.graph.crash_restart(),
        })?;
        Ok(())
    }
}

/// Where the run in `state` is. The engine copies and verifies the stores one after
/// the other, then (Move) removes in the same order; a verified store waits at
/// RemoveSource #0 until every store is verified. So the run is at the first store
/// not through the current pass.
fn position(state: &Path, moved: bool) -> Option<Point> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(state).ok()?).ok()?;
    let at: Vec<(usize, u64)> = STORES
        .iter()
        .map(|s| {
            let cp = &v["phases"][s]["checkpoint"];
            let stage = STAGES
                .iter()
                .position(|n| cp["stage"].as_str() == Some(*n))
                .unwrap_or(0);
            (stage, cp["batch"].as_u64().unwrap_or(0))
        })
        .collect();
    if let Some(store) = at.iter().position(|(stage, _)| *stage < 2) {
        let (stage, batch) = at[store];
        return Some(Point {
            pass: 0,
            store,
            stage,
            batch,
        });
    }
    if !moved {
        return Some(Point {
            pass: 0,
            store: STORES.len() - 1,
            stage: 4,
            batch: 0,
        });
    }
    let store = at.iter().position(|(stage, _)| *stage < 4).unwrap_or(STORES.len() - 1);
    let (stage, batch) = at[store];
    Some(Point {
        pass: 1,
        store,
        stage,
        batch,
    })
}

/// How a run ended.
enum Ended {
    /// Exited by itself: success or not.
    Exited(bool),
    /// SIGKILLed at this position.
    Killed(Point),
}

/// Watches a running CLI; at `fault`'s point kills it or restarts the store, then
/// (after a restart) waits for its exit.
async fn watch(
    servers: &mut Servers,
    mut child: Child,
    state: &Path,
    moved: bool,
    fault: Option<Fault>,
    peak: &mut u64,
) -> Result<(Ended, Option<Point>), Failure> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pending = fault;
    let mut restarted_at = None;
    loop {
        if let Some(rss) = crate::peak_rss_kib(child.id()) {
            *peak = (*peak).max(rss);
        }
        if let Some(status) = child.try_wait()? {
            return Ok((Ended::Exited(status.success()), restarted_at));
        }
        if let Some(f) = pending
            && let Some(now) = position(state, moved).filter(|now| *now >= f.at())
        {
            match f {
                Fault::Kill(_) => {
                    child.kill()?;
                    child.wait()?;
                    return Ok((Ended::Killed(now), None));
                }
                Fault::Restart(p) => {
                    servers.restart(STORES[p.store])?;
                    restarted_at = Some(now);
                    pending = None;
                }
                Fault::Cut(p) => {
                    servers.proxies[p.store - 1].cut();
                    restarted_at = Some(now);
                    pending = None;
                }
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("a run took more than 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs the suite.
pub async fn run(plan: &Plan) -> Result<Figures, Failure> {
    let _ = std::fs::remove_dir_all(&plan.work);
    std::fs::create_dir_all(&plan.work)?;
    let mut servers = Servers::start().await?;
    let mut rng = Rng(plan.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut figures = Figures::default();
    // Every tenant of the suite, for the graph snapshots (labels are tenants).
    let mut labels: Vec<String> = Vec::new();
    let trials = plan.kill_trials + plan.restart_trials + plan.cut_trials;
    for trial in 0..trials {
        let started = Instant::now();
        let restart = (plan.kill_trials..plan.kill_trials + plan.restart_trials).contains(&trial);
        let cut = trial >= plan.kill_trials + plan.restart_trials;
        // Two Moves for each Copy: Move has every stage.
        let moved = trial % 3 != 2;
        let (source, target) = (format!("chaos{trial:02}"), format!("moved{trial:02}"));
        let mut faults: Vec<Fault> = if restart {
            // Redis, Qdrant and the graph server in turn.
            let store = 1 + (trial - plan.kill_trials) % 3;
            vec![Fault::Restart(point(&mut rng, store, moved))]
        } else if cut {
            let store = 1 + (trial - plan.kill_trials - plan.restart_trials) % 3;
            vec![Fault::Cut(point(&mut rng, store, moved))]
        } else {
            (0..plan.kills_per_trial)
                .map(|_| {
                    let store = rng.below(4) as usize;
                    Fault::Kill(point(&mut rng, store, moved))
                })
                .collect()
        };
        faults.sort_by_key(|f| f.at());
        servers.load(&source, plan.scale).await?;
        labels.extend([source.clone(), target.clone()]);
        labels.extend(fixture::lookalikes(&source));
        let before = servers.contents(&labels).await?;

        let state = plan.work.join(format!("{source}--{target}.json"));
        let log = plan.work.join(format!("{source}.log"));
        let mut row = Row {
            trial,
            mode: if moved { "move" } else { "copy" },
            faults: Vec::new(),
            runs: 0,
            exact: false,
            seconds: 0.0,
        };
        let mut problems = Vec::new();
        let mut finished = false;
        let (mut kills, mut restarts, mut cuts) = (0, 0, 0);
        for fault in faults.iter().copied().map(Some).chain(std::iter::once(None)) {
            if finished {
                if let Some(f) = fault {
                    row.faults
                        .push(format!("{} not reached (the run had ended)", describe(f)));
                    figures.unreached += 1;
                }
                continue;
            }
            let child = servers.migrate(plan, (&source, &target), moved, &log)?;
            row.runs += 1;
            let (ended, restarted) =
                watch(&mut servers, child, &state, moved, fault, &mut figures.peak_rss_kib).await?;
            match (fault, ended, restarted) {
                (Some(f), Ended::Killed(at), _) => {
                    kills += 1;
                    row.faults.push(format!("{} → killed at {at}", describe(f)));
                }
                (Some(f @ (Fault::Restart(_) | Fault::Cut(_))), Ended::Exited(ok), Some(at)) => {
                    let what = if matches!(f, Fault::Cut(_)) {
                        cuts += 1;
                        "cut"
                    } else {
                        restarts += 1;
                        "restarted"
                    };
                    finished = true;
                    row.faults.push(format!("{} → {what} at {at}", describe(f)));
                    if !ok {
                        problems.push(format!("the run failed after the fault: {}", tail(&log)));
                    }
                }
                (f, Ended::Exited(ok), _) => {
                    finished = true;
                    if let Some(f) = f {
                        row.faults
                            .push(format!("{} not reached (the run ended first)", describe(f)));
                        figures.unreached += 1;
                    }
                    if !ok {
                        problems.push(format!("the run failed: {}", tail(&log)));
                    }
                }
                (None, Ended::Killed(_), _) => unreachable!("no fault, no kill"),
            }
        }
        let after = servers.contents(&labels).await?;
        let (differences, foreign) = judge(&before, &after, (&source, &target), moved);
        figures.foreign_touched += foreign;
        problems.extend(differences);
        row.exact = problems.is_empty();
        row.seconds = started.elapsed().as_secs_f64();
        figures.kills_tried += kills;
        figures.restarts_tried += restarts;
        figures.cuts_tried += cuts;
        if row.exact {
            figures.kills_survived += kills;
            figures.restarts_survived += restarts;
            figures.cuts_survived += cuts;
        } else {
            figures.failures.push(format!(
                "trial {trial} ({source} → {target}, {}; {}): {}",
                row.mode,
                row.faults.join("; "),
                problems.iter().take(5).cloned().collect::<Vec<_>>().join(" | ")
            ));
        }
        figures.rows.push(row);
    }
    Ok(figures)
}

fn describe(f: Fault) -> String {
    match f {
        Fault::Kill(p) => format!("kill at {p}"),
        Fault::Restart(p) => format!("restart {} at {p}", STORES[p.store]),
        Fault::Cut(p) => format!("cut the connections to {} at {p}", STORES[p.store]),
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" / ")
}

/// Compares the stores after a trial with what they must hold; returns the
/// differences and how many of them are outside the two tenants.
fn judge(before: &Contents, after: &Contents, (source, target): (&str, &str), moved: bool) -> (Vec<String>, u64) {
    let mut problems = Vec::new();
    let mut foreign = 0u64;
    let mut note = |problem: String, outside: bool| {
        if outside {
            foreign += 1;
        }
        if problems.len() < 20 {
            problems.push(problem);
        }
    };

    // Config: the target's document is the source's with the tenant fields renamed.
    for (tenant, doc) in &before.config {
        if tenant != source && after.config.get(tenant) != Some(doc) {
            note(format!("config of {tenant} changed"), true);
        }
    }
    if after.config.get(target) != Some(&renamed_config(source, target)) {
        note(format!("config of {target} is not the source's renamed"), false);
    }
    if moved == after.config.contains_key(source) {
        note(
            format!("config of {source} {}", if moved { "left behind" } else { "gone" }),
            false,
        );
    }

    // Redis: every key of the source under the target's prefix, same type, value, TTL.
    let mut want: BTreeMap<Vec<u8>, &KeyState> = BTreeMap::new();
    for (k, v) in &before.redis {
        if let Some(rest) = fixture::tenant_rest(k, source) {
            let mut t = format!("{target}_").into_bytes();
            t.extend_from_slice(rest);
            want.insert(t, v);
            if !moved {
                want.insert(k.clone(), v);
            }
        } else {
            want.insert(k.clone(), v);
        }
    }
    let ours = |k: &[u8]| fixture::is_tenant_key(k, source) || fixture::is_tenant_key(k, target);
    for (k, w) in &want {
        let show = String::from_utf8_lossy(k);
        match after.redis.get(k) {
            None => note(format!("redis: {show} missing"), !ours(k)),
            Some(g) if g.kind != w.kind || g.value != w.value => note(format!("redis: {show} differs"), !ours(k)),
            // A TTL only runs down: the copy's is at most the source's (+1 s of rounding).
            Some(g) if (g.pttl < 0) != (w.pttl < 0) || g.pttl > w.pttl + 1_000 => {
                note(format!("redis: TTL of {show} is {} for {}", g.pttl, w.pttl), !ours(k))
            }
            Some(_) => {}
        }
    }
    for k in after.redis.keys().filter(|k| !want.contains_key(*k)) {
        note(format!("redis: unexpected {}", String::from_utf8_lossy(k)), !ours(k));
    }

    // Qdrant: the tenant's points under LightRAG's ids for the target, tenant field renamed.
    let field = |t: &str| format!("{:?}", qdrant_client::qdrant::Value::from(t.to_owned()));
    let (src_ws, dst_ws) = (field(source), field(target));
    for (name, points) in &before.qdrant {
        let mut want: BTreeMap<String, StoredPoint> = BTreeMap::new();
        for (id, p) in points {
            if p.payload.get("workspace_id") != Some(&src_ws) {
                want.insert(id.clone(), p.clone());
                continue;
            }
            let raw = p
                .payload
                .get("id")
                .and_then(|v| v.split('"').nth(1))
                .unwrap_or_default()
                .to_owned();
            let mut q = p.clone();
            q.payload.insert("workspace_id".into(), dst_ws.clone());
            want.insert(qdrant_fixture::lightrag_id(target, &raw), q);
            if !moved {
                want.insert(id.clone(), p.clone());
            }
        }
        let empty = BTreeMap::new();
        let got = after.qdrant.get(name).unwrap_or(&empty);
        let tenant_of = |p: &StoredPoint| {
            p.payload
                .get("workspace_id")
                .is_some_and(|w| *w == src_ws || *w == dst_ws)
        };
        for (id, w) in &want {
            match got.get(id) {
                None => note(format!("qdrant: {name}/{id} missing"), !tenant_of(w)),
                Some(g)
                    if g.payload != w.payload
                        || g.vectors.len() != w.vectors.len()
                        || w.vectors
                            .iter()
                            .any(|(n, v)| !g.vectors.get(n).is_some_and(|x| x.close_to(v))) =>
                {
                    note(format!("qdrant: {name}/{id} differs"), !tenant_of(w))
                }
                Some(_) => {}
            }
        }
        for (id, g) in got.iter().filter(|(id, _)| !want.contains_key(*id)) {
            note(format!("qdrant: unexpected {name}/{id}"), !tenant_of(g));
        }
    }

    // Graph: the source's nodes and relationships relabelled, every property kept.
    let (nodes, rels) = graph_fixture::expected(&before.graph, source, target, moved);
    for (what, want, got) in [
        ("node", &nodes, &after.graph.0),
        ("relationship", &rels, &after.graph.1),
    ] {
        let tenant = |l: &str| l.contains(&format!("({source}")) || l.contains(&format!("({target}"));
        for l in multiset_difference(want, got) {
            note(format!("graph: {what} missing or changed: {l}"), !tenant(l));
        }
        for l in multiset_difference(got, want) {
            note(format!("graph: unexpected {what} (a duplicate?): {l}"), !tenant(l));
        }
    }
    (problems, foreign)
}

/// Lines of sorted `a` not matched one-for-one in sorted `b`.
fn multiset_difference<'a>(a: &'a [String], b: &[String]) -> Vec<&'a str> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() {
        if j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && b[j] < a[i] {
            j += 1;
        } else {
            out.push(a[i].as_str());
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_follow_the_engine_order() {
        let p = |pass, store, stage, batch| Point {
            pass,
            store,
            stage,
            batch,
        };
        // Every store's copy and verify come before any removal.
        assert!(p(0, 3, 1, 9) < p(1, 0, 2, 0));
        assert!(p(0, 1, 0, 30) < p(0, 1, 1, 0));
        assert!(p(0, 1, 1, 0) < p(0, 2, 0, 0));
    }

    fn key(kind: &str, value: &str, pttl: i64) -> KeyState {
        KeyState {
            kind: kind.into(),
            value: vec![value.as_bytes().to_vec()],
            pttl,
        }
    }

    /// The judge sees a lost key, a changed value, a duplicate node and a touched
    /// look-alike — and passes the exact outcome.
    #[test]
    fn the_judge_finds_what_a_migration_got_wrong() {
        let contents = |redis: &[(&str, KeyState)], nodes: &[&str]| Contents {
            config: BTreeMap::from([
                ("t1".to_owned(), sample_config("t1")),
                ("t1_old".to_owned(), sample_config("t1_old")),
            ]),
            redis: redis.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect(),
            qdrant: BTreeMap::new(),
            graph: (nodes.iter().map(|n| (*n).to_owned()).collect(), Vec::new()),
        };
        let before = contents(
            &[
                ("t1_full_docs:a", key("string", "x", -1)),
                ("t1_old_full_docs:a", key("string", "y", -1)),
            ],
            &["(t1 entity_id=a)", "(t1_old entity_id=b)"],
        );
        let mut exact = contents(
            &[
                ("t2_full_docs:a", key("string", "x", -1)),
                ("t1_old_full_docs:a", key("string", "y", -1)),
            ],
            &["(t1_old entity_id=b)", "(t2 entity_id=a)"],
        );
        exact.config.remove("t1");
        exact.config.insert("t2".into(), renamed_config("t1", "t2"));
        let (problems, foreign) = judge(&before, &exact, ("t1", "t2"), true);
        assert!(problems.is_empty() && foreign == 0, "{problems:?}");

        let mut wrong = contents(
            &[
                ("t2_full_docs:a", key("string", "changed", -1)),
                ("t1_old_full_docs:a", key("string", "z", -1)),
            ],
            &["(t1_old entity_id=b)", "(t2 entity_id=a)", "(t2 entity_id=a)"],
        );
        wrong.config.remove("t1");
        wrong.config.insert("t2".into(), renamed_config("t1", "t2"));
        let (problems, foreign) = judge(&before, &wrong, ("t1", "t2"), true);
        let text = problems.join("\n");
        assert!(text.contains("redis: t2_full_docs:a differs"), "{text}");
        assert!(text.contains("redis: t1_old_full_docs:a differs"), "{text}");
        assert!(
            text.contains("unexpected node (a duplicate?): (t2 entity_id=a)"),
            "{text}"
        );
        assert_eq!(foreign, 1, "{text}");
    }

    #[test]
    fn multiset_difference_counts_duplicates() {
        let a: Vec<String> = ["x", "x", "y"].map(String::from).to_vec();
        let b: Vec<String> = ["x", "y"].map(String::from).to_vec();
        assert_eq!(multiset_difference(&a, &b), vec!["x"]);
        assert!(multiset_difference(&b, &a).is_empty());
    }
}
