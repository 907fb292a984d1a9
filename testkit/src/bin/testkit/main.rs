//! `testkit`: the demo, the benchmark, and the test servers as commands.
//!
//! - `testkit demo`: starts Redis and the config API, loads a sample tenant and
//!   migrates it with `tenant-migrator migrate` (progress bars on a terminal).
//! - `testkit bench`: reference script vs tenant-migrator on identical data.
//! - `testkit chaos`: the fault-injection suite (kills, store restarts), as a table.
//! - `testkit fixture`: loads the LightRAG-shaped fixture into a Redis.
//! - `testkit config-api`: serves the tenant-config API stand-in.

mod bench;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use tenant_migrator_testkit::config_api::sample_config;
use tenant_migrator_testkit::{
    BoltServer, ConfigApi, QdrantServer, RedisServer, chaos, fixture, graph_fixture, qdrant_fixture,
};

#[derive(Parser)]
#[command(name = "testkit", about = "Demo, benchmark and test servers for tenant-migrator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start Redis and the config API, load a sample tenant, migrate it.
    Demo {
        /// Fixture scale (1 = 38,491 keys).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value = "siraya")]
        source: String,
        #[arg(long, default_value = "tenant_76920508")]
        target: String,
    },
    /// Benchmark: the reference script and tenant-migrator on identical fresh data.
    Bench(bench::BenchArgs),
    /// Load the LightRAG-shaped fixture (tenant, look-alikes, other keys) into a Redis,
    /// or with --qdrant-url its points into a Qdrant (gRPC URL).
    Fixture {
        #[arg(long, default_value = "redis://127.0.0.1:6379/")]
        redis_url: String,
        #[arg(long)]
        qdrant_url: Option<String>,
        /// Vector size of the Qdrant points.
        #[arg(long, default_value_t = 1024)]
        qdrant_dim: u64,
        #[arg(long, default_value = "siraya")]
        source: String,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Fault injection: CLI runs SIGKILLed at random points of every stage of every
    /// store and resumed, stores crashed and restarted mid-phase; each tenant is then
    /// checked by content. Prints a table and the figures; fails if any trial is not exact.
    Chaos {
        /// Seed of the fault points (the same seed, the same points).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Trials with CLI kills.
        #[arg(long, default_value_t = 12)]
        kill_trials: usize,
        /// Kills per trial.
        #[arg(long, default_value_t = 3)]
        kills: usize,
        /// Trials with one store restart each (Redis, Qdrant, graph server in turn).
        #[arg(long, default_value_t = 6)]
        restart_trials: usize,
        /// Trials where every connection to one store is cut mid-phase.
        #[arg(long, default_value_t = 6)]
        cut_trials: usize,
        /// Fixture scale of each trial's tenant.
        #[arg(long, default_value_t = 0.02)]
        scale: f64,
    },
    /// Forward a local port to `upstream` with an added one-way delay, until interrupted.
    Proxy {
        #[arg(long)]
        upstream: std::net::SocketAddr,
        #[arg(long, default_value_t = 1.0)]
        delay_ms: f64,
    },
    /// Serve the tenant-config API stand-in until interrupted.
    ConfigApi {
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Require this bearer token.
        #[arg(long, env = "TENANT_API_TOKEN")]
        token: Option<String>,
        /// Tenants to create with a sample config.
        #[arg(long, value_delimiter = ',')]
        seed: Vec<String>,
    },
}

/// The `tenant-migrator` binary built beside this one.
pub fn migrator_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    dir.join("tenant-migrator")
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Demo { scale, source, target } => demo(scale, &source, &target).await,
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Fixture {
            qdrant_url: Some(url),
            qdrant_dim,
            source,
            scale,
            ..
        } => {
            let loaded = match qdrant_client::Qdrant::from_url(&url).skip_compatibility_check().build() {
                Ok(q) => {
                    tenant_migrator_testkit::qdrant_fixture::load_standard(&q, &source, scale, qdrant_dim, true).await
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(n) => {
                    println!("loaded {n} points of {source} and its look-alikes' into {url}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Fixture {
            redis_url,
            source,
            scale,
            ..
        } => {
            let loaded = redis::Client::open(redis_url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| fixture::load_standard(&mut c, &source, scale));
            match loaded {
                Ok(l) => {
                    println!(
                        "loaded {} keys of {source} and {} look-alike keys",
                        l.tenant_keys, l.lookalike_keys
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Chaos {
            seed,
            kill_trials,
            kills,
            restart_trials,
            cut_trials,
            scale,
        } => {
            let plan = chaos::Plan {
                seed,
                kill_trials,
                kills_per_trial: kills,
                restart_trials,
                cut_trials,
                scale,
                migrator: migrator_binary(),
                work: std::env::temp_dir().join(format!("tm-chaos-{}", std::process::id())),
            };
            println!(
                "chaos: seed {seed}, {kill_trials} trials with {kills} CLI kills each, {restart_trials} with a store \
                 restart, {cut_trials} with its connections cut; tenants at scale {scale}"
            );
            let result = chaos::run(&plan).await;
            let _ = std::fs::remove_dir_all(&plan.work);
            match result {
                Ok(f) => {
                    print!("{}", f.table());
                    if f.failures.is_empty() && f.foreign_touched == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => fail("chaos", e),
            }
        }
        Cmd::Proxy { upstream, delay_ms } => {
            match tenant_migrator_testkit::DelayProxy::start(
                upstream,
                std::time::Duration::from_secs_f64(delay_ms / 1000.0),
            ) {
                Ok(p) => {
                    println!("proxy on 127.0.0.1:{} -> {upstream}, {delay_ms} ms each way", p.port());
                    let _ = tokio::signal::ctrl_c().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::ConfigApi { port, token, seed } => match ConfigApi::start(port, token.as_deref()).await {
            Ok(mut api) => {
                for t in &seed {
                    api.insert(t, sample_config(t));
                }
                println!("config API listening on {}", api.url());
                api.wait().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot listen on port {port}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints `error: {what}: {e}` and fails, for the demo's set-up steps.
fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {what}: {e}");
    ExitCode::FAILURE
}

async fn demo(scale: f64, source: &str, target: &str) -> ExitCode {
    const TOKEN: &str = "demo-token";
    const GRAPH_PASSWORD: &str = "demo-graph-password";
    const QDRANT_KEY: &str = "demo-qdrant-key";
    let redis = match RedisServer::start() {
        Ok(r) => r,
        Err(e) => return fail("Redis", e),
    };
    let api = match ConfigApi::start(0, Some(TOKEN)).await {
        Ok(a) => a,
        Err(e) => return fail("config API", e),
    };
    println!("Starting the Bolt graph server (Neo4j 4.4, standing in for Memgraph)…");
    let bolt = match BoltServer::start(GRAPH_PASSWORD) {
        Ok(b) => b,
        Err(e) => return fail("Bolt server (run tools/setup.sh)", e),
    };
    println!("Starting the Qdrant test server (Qdrant's storage engine over gRPC)…");
    let qdrant = match QdrantServer::start(Some(QDRANT_KEY)) {
        Ok(q) => q,
        Err(e) => return fail("Qdrant server (run tools/setup.sh)", e),
    };
    api.insert(source, sample_config(source));
    println!(
        "Redis on {}, config API on {}, Qdrant on {}, graph on {}",
        redis.url(),
        api.url(),
        qdrant.url(),
        bolt.uri()
    );
    let loaded = match redis
        .conn()
        .and_then(|mut c| fixture::load_standard(&mut c, source, scale))
    {
        Ok(l) => l,
        Err(e) => return fail("loading the Redis fixture", e),
    };
    let graph = match bolt.graph().await {
        Ok(g) => g,
        Err(e) => return fail("graph", e),
    };
    let points = match qdrant.client(Some(QDRANT_KEY)) {
        Ok(c) => match qdrant_fixture::load_standard(&c, source, scale, 64, true).await {
            Ok(n) => n,
            Err(e) => return fail("loading the Qdrant fixture", e),
        },
        Err(e) => return fail("Qdrant client", e),
    };
    let (nodes, rels) = match graph_fixture::load_standard(&graph, source, scale).await {
        Ok(n) => n,
        Err(e) => return fail("loading the graph fixture", e),
    };
    println!(
        "Loaded tenant {source}: a config, {} Redis keys, {points} Qdrant points in 4 collections, \
         {nodes} graph nodes and {rels} relationships (plus look-alike tenants {:?})\n",
        loaded.tenant_keys,
        fixture::lookalikes(source)
    );
    let state = std::env::temp_dir().join(format!("tm-demo-{}", std::process::id()));
    let base = |extra: &[&str]| {
        let mut c = Command::new(migrator_binary());
        c.args(["migrate", source, target, "--qdrant-url", &qdrant.url()])
            .args(["--redis-url", &redis.url(), "--api-url", &api.url()])
            .args([
                "--memgraph-host",
                "127.0.0.1",
                "--memgraph-port",
                &bolt.port().to_string(),
            ])
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .env("TENANT_API_TOKEN", TOKEN)
            .env("QDRANT_API_KEY", QDRANT_KEY)
            .env("MEMGRAPH_USER", tenant_migrator_testkit::bolt_server::USER)
            .env("MEMGRAPH_PASSWORD", GRAPH_PASSWORD);
        c
    };
    println!("$ tenant-migrator migrate {source} {target} --dry-run ...");
    let plan = tokio::task::spawn_blocking({
        let mut c = base(&["--dry-run"]);
        move || c.status()
    })
    .await;
    if !matches!(plan, Ok(Ok(s)) if s.success()) {
        eprintln!("error: the dry run failed");
        return ExitCode::FAILURE;
    }
    println!("\n$ tenant-migrator migrate {source} {target} ...");
    let run = tokio::task::spawn_blocking({
        let mut c = base(&[]);
        move || c.status()
    })
    .await;
    let _ = std::fs::remove_dir_all(&state);
    if !matches!(run, Ok(Ok(s)) if s.success()) {
        return ExitCode::FAILURE;
    }
    if let Ok(all) = redis.conn().and_then(|mut c| fixture::snapshot(&mut c, |_| true)) {
        let count = |t: &str| all.keys().filter(|k| fixture::is_tenant_key(k, t)).count();
        println!(
            "\nRedis keys of {source}: {}; of {target}: {}; of look-alike tenants (untouched): {}",
            count(source),
            count(target),
            fixture::lookalikes(source).iter().map(|l| count(l)).sum::<usize>()
        );
    }
    if let Ok((nodes, _)) = graph_fixture::snapshot(&graph, &[source, target]).await {
        let count = |t: &str| nodes.iter().filter(|n| n.starts_with(&format!("({t} "))).count();
        println!(
            "Graph nodes of {source}: {}; of {target}: {}",
            count(source),
            count(target)
        );
    }
    println!(
        "Config of {target}: {}",
        api.get(target).map_or("missing".into(), |v| v.to_string())
    );
    ExitCode::SUCCESS
}
