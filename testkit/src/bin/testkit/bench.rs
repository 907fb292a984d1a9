//! `testkit bench`: the reference script and tenant-migrator (Copy and Move) on
//! identical fresh data, at loopback and through a delay proxy, store by store:
//! - Redis: the scale-1 tenant (38,491 keys), plus `redis-benchmark -P 64 -t set`
//!   on the same server as a ceiling, and Copies at larger scales (10, and 100 on
//!   request) for time and peak memory as the tenant grows;
//! - Memgraph: the scale-1 graph (13,613 nodes) on the Bolt test server (Neo4j 4.4,
//!   without authentication, as the reference connects without credentials).
//!
//! Every run starts from a flushed store loaded with the same fixture. Times are
//! wall-clock times of the whole command (preflight, copy, verify, removal).

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use tenant_migrator_testkit::{
    BoltServer, DelayProxy, QdrantServer, RedisServer, fixture, graph_fixture, qdrant_fixture,
};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Fixture scale (1 = the reference's tenant: 38,491 keys, 13,613 nodes).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// One-way delay of the proxy in ms (round trip = twice this).
    #[arg(long, default_value_t = 1.0)]
    delay_ms: f64,
    /// Scales of the extra runs of a tenant-migrator Copy on Redis for time and peak
    /// memory as the tenant grows (`10,100` adds the scale-100 row: 3.85 M keys, several
    /// minutes and about 4 GiB of Redis); empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    memory_scales: Vec<f64>,
    /// Stores to benchmark.
    #[arg(long, value_delimiter = ',', default_value = "redis,qdrant,memgraph")]
    stores: Vec<String>,
    /// Vector size of the Qdrant fixture.
    #[arg(long, default_value_t = 1024)]
    qdrant_dim: u64,
    /// Python with the reference script's packages [default: $TM_PYTHON, or the
    /// virtualenv tools/setup.sh made]
    #[arg(long)]
    python: Option<PathBuf>,
    /// The reference script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/reference/migrate_tenant.py"))]
    reference: PathBuf,
    /// Leave the reference out (e.g. when its Python packages are missing).
    #[arg(long)]
    skip_reference: bool,
}

struct Measured {
    scenario: String,
    tool: String,
    items: u64,
    seconds: f64,
    peak_rss_kib: i64,
    ok: bool,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `cmd`, returning (success, seconds, peak RSS in KiB, stdout). The peak is the
/// child's own `VmHWM`, read every 2 ms while it runs (`ru_maxrss` would count this
/// process's memory too: a spawned child reports the address space it had before
/// its `exec`).
fn run_measured(mut cmd: Command) -> std::io::Result<(bool, f64, i64, String)> {
    let out_path = std::env::temp_dir().join(format!("tm-bench-out-{}", std::process::id()));
    let out = std::fs::File::create(&out_path)?;
    let err_path = out_path.with_extension("err");
    let err = std::fs::File::create(&err_path)?;
    cmd.stdout(out).stderr(err).stdin(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let mut peak = 0u64;
    let status = loop {
        if let Some(kib) = tenant_migrator_testkit::peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let seconds = start.elapsed().as_secs_f64();
    let ok = status.success();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !ok {
        // Show why a run failed: a benchmark of a failed run means nothing.
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        eprintln!(
            "  run failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        );
    }
    if std::env::var_os("RUST_LOG").is_some() {
        // `RUST_LOG=info testkit bench`: where each run spent its time, stage by stage.
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        for line in stderr.lines().filter(|l| l.contains(" finished")) {
            eprintln!("  {}", line.trim());
        }
    }
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    Ok((ok, seconds, peak as i64, stdout))
}

/// `tenant-migrator migrate siraya tenant_b` on one store, with a fresh state directory.
fn ours(store_args: &[&str], mode: &str) -> Command {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let state = std::env::temp_dir().join(format!("tm-bench-state-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut c = Command::new(crate::migrator_binary());
    c.args(["migrate", "siraya", "tenant_b", "--skip-config"])
        .args(store_args)
        .args(["--mode", mode, "--output", "json"])
        .arg("--state-dir")
        .arg(state);
    c
}

fn reference(args: &BenchArgs, store_args: &[&str]) -> Command {
    let python = args
        .python
        .clone()
        .unwrap_or_else(tenant_migrator_testkit::qdrant_server::python);
    let mut c = Command::new(python);
    c.arg(&args.reference)
        .args(["siraya", "tenant_b", "--skip-config"])
        .args(store_args);
    c
}

/// Items the reference says it found ("Found N keys to migrate", "Found N nodes").
fn reference_items(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Found ")?.split_whitespace().next()?.parse().ok())
}

fn redis_benchmark(port: u16) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            "64",
            "-t",
            "set",
            "-n",
            "500000",
            "-q",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "SET: 1234567.00 requests per second, p50=..."; the last report line wins.
    text.split(['\r', '\n'])
        .filter_map(|l| l.trim().strip_prefix("SET: ")?.split_whitespace().next()?.parse().ok())
        .next_back()
}

/// Runs each tool once per scenario, reloading identical data before each run.
async fn measure(
    args: &BenchArgs,
    scenarios: &[(String, u16)],
    store_args: impl Fn(u16) -> Vec<String>,
    extra_tools: &[(&str, &[&str])],
    mut reload: impl AsyncFnMut() -> Result<u64, String>,
) -> Result<Vec<Measured>, String> {
    let mut rows = Vec::new();
    for (scenario, port) in scenarios {
        let sa = store_args(*port);
        let sa: Vec<&str> = sa.iter().map(String::as_str).collect();
        let mut tools: Vec<(&str, Command)> = Vec::new();
        if !args.skip_reference {
            tools.push(("reference (python)", reference(args, &sa)));
        }
        tools.push(("tenant-migrator Copy", ours(&sa, "copy")));
        tools.push(("tenant-migrator Move", ours(&sa, "move")));
        for (tool, flags) in extra_tools {
            let mut all = sa.clone();
            all.extend_from_slice(flags);
            tools.push((tool, ours(&all, "move")));
        }
        for (tool, cmd) in tools {
            let items = reload().await?;
            eprintln!("running {tool} ({scenario}) on {items} items…");
            let measured = tokio::task::spawn_blocking(move || run_measured(cmd)).await;
            let Ok(Ok((ok, seconds, rss, stdout))) = measured else {
                return Err(format!("cannot run {tool}"));
            };
            let items = if tool.starts_with("reference") {
                reference_items(&stdout).unwrap_or(items)
            } else {
                items
            };
            rows.push(Measured {
                scenario: scenario.clone(),
                tool: tool.to_owned(),
                items,
                seconds,
                peak_rss_kib: rss,
                ok,
            });
        }
    }
    Ok(rows)
}

fn print_table(title: &str, unit: &str, rows: &[Measured]) {
    println!("\n{title}");
    println!(
        "{:<10} {:<22} {:>8} {:>9} {:>10} {:>12} {:>10}  ok",
        "scenario",
        "tool",
        unit,
        "seconds",
        format!("{unit}/s"),
        "vs reference",
        "peak RSS"
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.scenario == r.scenario && b.tool.starts_with("reference"))
            .map(Measured::rate);
        println!(
            "{:<10} {:<22} {:>8} {:>9.3} {:>10.0} {:>12} {:>7} MiB  {}",
            r.scenario,
            r.tool,
            r.items,
            r.seconds,
            r.rate(),
            base.map_or("-".into(), |b| format!("{:.1}x", r.rate() / b)),
            r.peak_rss_kib / 1024,
            if r.ok { "yes" } else { "FAILED" }
        );
    }
}

fn scenarios(args: &BenchArgs, direct: u16, proxied: u16) -> Vec<(String, u16)> {
    vec![
        ("loopback".to_owned(), direct),
        (format!("{:.0} ms RTT", args.delay_ms * 2.0), proxied),
    ]
}

fn proxy_to(port: u16, args: &BenchArgs) -> Result<DelayProxy, String> {
    DelayProxy::start(
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs_f64(args.delay_ms / 1000.0),
    )
    .map_err(|e| format!("delay proxy: {e}"))
}

async fn bench_redis(args: &BenchArgs) -> Result<bool, String> {
    let redis = RedisServer::start().map_err(|e| e.to_string())?;
    let proxy = proxy_to(redis.port(), args)?;
    let reload_at = |scale: f64| {
        let mut c = redis.conn().map_err(|e| e.to_string())?;
        redis::cmd("FLUSHALL").query::<()>(&mut c).map_err(|e| e.to_string())?;
        let loaded = fixture::load_standard(&mut c, "siraya", scale).map_err(|e| e.to_string())?;
        Ok::<u64, String>(loaded.tenant_keys)
    };
    let store_args = |port: u16| -> Vec<String> {
        [
            "--skip-qdrant",
            "--skip-memgraph",
            "--redis-host",
            "127.0.0.1",
            "--redis-port",
            &port.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let rows = measure(
        args,
        &scenarios(args, redis.port(), proxy.port()),
        store_args,
        &[],
        async || reload_at(args.scale),
    )
    .await?;
    let ceiling = redis_benchmark(redis.port());
    // The scale-1 Copy on loopback, then each larger scale: time and memory as the tenant grows.
    let mut growth: Vec<(f64, u64, f64, i64, bool)> = rows
        .iter()
        .find(|r| r.scenario == "loopback" && r.tool == "tenant-migrator Copy")
        .map(|r| (args.scale, r.items, r.seconds, r.peak_rss_kib, r.ok))
        .into_iter()
        .collect();
    for scale in args.memory_scales.iter().copied().filter(|s| *s > 0.0) {
        let keys = reload_at(scale)?;
        eprintln!("running tenant-migrator Copy at scale {scale} ({keys} keys) for time and peak memory…");
        let cmd = ours(
            &store_args(redis.port()).iter().map(String::as_str).collect::<Vec<_>>(),
            "copy",
        );
        if let Ok(Ok((ok, seconds, rss, _))) = tokio::task::spawn_blocking(move || run_measured(cmd)).await {
            growth.push((scale, keys, seconds, rss, ok));
        }
    }
    // The same tenant on a three-primary Redis Cluster (the reference cannot run there).
    let mut on_cluster = Vec::new();
    if let Ok(cluster) = tenant_migrator_testkit::RedisCluster::start() {
        let keys = reload_at(args.scale)?;
        for mode in ["copy", "move"] {
            for node in cluster.nodes() {
                let mut c = node.conn().map_err(|e| e.to_string())?;
                redis::cmd("FLUSHALL").query::<()>(&mut c).map_err(|e| e.to_string())?;
            }
            cluster.load_from(&redis).map_err(|e| e.to_string())?;
            eprintln!("running tenant-migrator {mode} on a Redis Cluster ({keys} keys)…");
            let cmd = ours(
                &store_args(cluster.nodes()[0].port())
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                mode,
            );
            if let Ok(Ok((ok, seconds, rss, _))) = tokio::task::spawn_blocking(move || run_measured(cmd)).await {
                on_cluster.push((mode, keys, seconds, rss, ok));
            }
        }
    }
    let version = redis
        .conn()
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default();
    print_table(
        &format!(
            "Redis phase, fixture scale {} ({} tenant keys), redis-server {version}",
            args.scale,
            fixture::Shape::at_scale(args.scale).tenant_keys()
        ),
        "keys",
        &rows,
    );
    if let Some(c) = ceiling {
        println!("redis-benchmark -P 64 -t set (loopback): {c:.0} SET/s");
        for r in rows
            .iter()
            .filter(|r| r.scenario == "loopback" && !r.tool.starts_with("reference"))
        {
            println!("  {}: {:.1}% of that rate", r.tool, 100.0 * r.rate() / c);
        }
    }
    for (i, (scale, keys, seconds, rss, ok)) in growth.iter().enumerate().skip(1) {
        let (s0, _, t0, _, _) = growth[i - 1];
        println!(
            "scale {scale}: tenant-migrator Copy of {keys} keys in {seconds:.2}s ({:.0} keys/s; {:.1}x the time of \
             scale {s0} for {:.0}x the keys), peak RSS {} MiB{}",
            *keys as f64 / seconds,
            seconds / t0,
            scale / s0,
            rss / 1024,
            if *ok { "" } else { " (FAILED)" }
        );
    }
    for (mode, keys, seconds, rss, ok) in &on_cluster {
        println!(
            "Redis Cluster (3 primaries, loopback): tenant-migrator {mode} of {keys} keys in {seconds:.2}s ({:.0} keys/s), peak RSS {} MiB{}",
            *keys as f64 / seconds,
            rss / 1024,
            if *ok { "" } else { " (FAILED)" }
        );
    }
    Ok(rows.iter().all(|r| r.ok) && growth.iter().all(|g| g.4) && on_cluster.iter().all(|c| c.4))
}

async fn bench_memgraph(args: &BenchArgs) -> Result<bool, String> {
    eprintln!("starting the Bolt test server (Neo4j 4.4)…");
    let server = BoltServer::start_without_auth().map_err(|e| e.to_string())?;
    let proxy = proxy_to(server.port(), args)?;
    let graph = server.graph().await.map_err(|e| e.to_string())?;
    let store_args = |port: u16| -> Vec<String> {
        [
            "--skip-redis",
            "--skip-qdrant",
            "--memgraph-host",
            "127.0.0.1",
            "--memgraph-port",
            &port.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let rows = measure(
        args,
        &scenarios(args, server.port(), proxy.port()),
        store_args,
        &[],
        async || {
            graph
                .run(neo4rs::query("MATCH (n) DETACH DELETE n"))
                .await
                .map_err(|e| e.to_string())?;
            let (nodes, _) = graph_fixture::load_standard(&graph, "siraya", args.scale)
                .await
                .map_err(|e| e.to_string())?;
            Ok(nodes)
        },
    )
    .await?;
    let (nodes, rels) = graph_fixture::shape(args.scale);
    print_table(
        &format!(
            "Memgraph phase, fixture scale {} ({nodes} nodes, {rels} DIRECTED relationships), Bolt server Neo4j 4.4",
            args.scale
        ),
        "nodes",
        &rows,
    );
    Ok(rows.iter().all(|r| r.ok))
}

async fn bench_qdrant(args: &BenchArgs) -> Result<bool, String> {
    eprintln!("starting the Qdrant test server…");
    let server = QdrantServer::start(None).map_err(|e| e.to_string())?;
    let proxy = proxy_to(server.port(), args)?;
    let client = server.client(None).map_err(|e| e.to_string())?;
    let store_args = |port: u16| -> Vec<String> {
        let url = format!("http://127.0.0.1:{port}");
        ["--skip-redis", "--skip-memgraph", "--qdrant-url", &url]
            .map(str::to_owned)
            .to_vec()
    };
    let rows = measure(
        args,
        &scenarios(args, server.port(), proxy.port()),
        store_args,
        &[("tenant-migrator Move Keep", &["--point-ids", "keep"])],
        async || {
            for c in client.list_collections().await.map_err(|e| e.to_string())?.collections {
                client.delete_collection(c.name).await.map_err(|e| e.to_string())?;
            }
            qdrant_fixture::load_standard(&client, "siraya", args.scale, args.qdrant_dim, false)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await?;
    // The server's own bulk upsert rate for the same points: the limit for re-keying.
    for c in client.list_collections().await.map_err(|e| e.to_string())?.collections {
        client.delete_collection(c.name).await.map_err(|e| e.to_string())?;
    }
    qdrant_fixture::create_collections(&client, args.qdrant_dim, false)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let loaded = qdrant_fixture::load_tenant(&client, "siraya", args.scale, args.qdrant_dim, false)
        .await
        .map_err(|e| e.to_string())?;
    let bulk_seconds = start.elapsed().as_secs_f64();
    let bulk: u64 = loaded.iter().map(|(_, n)| n).sum();
    print_table(
        &format!(
            "Qdrant phase, fixture scale {} (3 collections, {}-dim vectors), Qdrant test server (qdrant-edge)",
            args.scale, args.qdrant_dim
        ),
        "points",
        &rows,
    );
    let bulk_rate = bulk as f64 / bulk_seconds;
    println!(
        "server bulk upsert (512 points per call, loopback): {bulk} points in {bulk_seconds:.2}s = {bulk_rate:.0} points/s"
    );
    for r in rows
        .iter()
        .filter(|r| r.scenario == "loopback" && r.tool.starts_with("tenant-migrator"))
    {
        println!("  {}: {:.0}% of that rate", r.tool, 100.0 * r.rate() / bulk_rate);
    }
    Ok(rows.iter().all(|r| r.ok))
}

pub async fn run(args: BenchArgs) -> ExitCode {
    let mut ok = true;
    for store in args.stores.clone() {
        let result = match store.as_str() {
            "redis" => bench_redis(&args).await,
            "qdrant" => bench_qdrant(&args).await,
            "memgraph" => bench_memgraph(&args).await,
            other => Err(format!("unknown store {other:?} (redis, qdrant, memgraph)")),
        };
        match result {
            Ok(all_ok) => ok &= all_ok,
            Err(e) => {
                eprintln!("error: {store}: {e}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
