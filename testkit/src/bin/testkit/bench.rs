//! `testkit bench`: the Redis phase of the reference script and of tenant-migrator
//! (Copy and Move) on identical fresh data, at loopback and through a delay proxy,
//! plus `redis-benchmark -P 64 -t set` on the same server as a ceiling.
//!
//! Every run starts from a flushed database loaded with the same fixture. Times are
//! wall-clock times of the whole command (preflight, copy, verify, removal).

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use tenant_migrator_testkit::{DelayProxy, RedisServer, fixture};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Fixture scale (1 = 38,491 keys, the reference's tenant).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// One-way delay of the proxy in ms (round trip = twice this).
    #[arg(long, default_value_t = 1.0)]
    delay_ms: f64,
    /// Scale of the extra peak-memory run of tenant-migrator (0 = skip).
    #[arg(long, default_value_t = 10.0)]
    memory_scale: f64,
    /// Python with the `redis` package, for the reference script.
    #[arg(long, env = "TM_PYTHON", default_value = "python3")]
    python: String,
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
    keys: u64,
    seconds: f64,
    peak_rss_kib: i64,
    ok: bool,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.keys as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `cmd`, returning (success, seconds, peak RSS in KiB, stdout).
fn run_measured(mut cmd: Command) -> std::io::Result<(bool, f64, i64, String)> {
    let out_path = std::env::temp_dir().join(format!("tm-bench-out-{}", std::process::id()));
    let out = std::fs::File::create(&out_path)?;
    cmd.stdout(out).stderr(Stdio::null()).stdin(Stdio::null());
    let start = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // wait4 gives the child's own peak RSS, which Child::wait does not.
    // SAFETY: pid is our child; status and usage point to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::mem::forget(child); // already reaped by wait4
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    Ok((ok, seconds, usage.ru_maxrss, stdout))
}

fn reload(redis: &RedisServer, scale: f64) -> Result<u64, String> {
    let mut c = redis.conn().map_err(|e| e.to_string())?;
    redis::cmd("FLUSHALL").query::<()>(&mut c).map_err(|e| e.to_string())?;
    let loaded = fixture::load_standard(&mut c, "siraya", scale).map_err(|e| e.to_string())?;
    Ok(loaded.tenant_keys)
}

fn ours(port: u16, mode: &str) -> Command {
    // A state directory of its own per run: each run is a fresh migration.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let state = std::env::temp_dir().join(format!("tm-bench-state-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut c = Command::new(crate::migrator_binary());
    c.args([
        "migrate",
        "siraya",
        "tenant_b",
        "--skip-config",
        "--skip-qdrant",
        "--skip-memgraph",
    ])
    .args([
        "--redis-host",
        "127.0.0.1",
        "--redis-port",
        &port.to_string(),
        "--mode",
        mode,
    ])
    .arg("--state-dir")
    .arg(state)
    .args(["--output", "json"]);
    c
}

fn reference(args: &BenchArgs, port: u16) -> Command {
    let mut c = Command::new(&args.python);
    c.arg(&args.reference)
        .args([
            "siraya",
            "tenant_b",
            "--skip-config",
            "--skip-qdrant",
            "--skip-memgraph",
        ])
        .args(["--redis-host", "127.0.0.1", "--redis-port", &port.to_string()]);
    c
}

/// Keys the reference says it found ("Found N keys to migrate").
fn reference_keys(stdout: &str) -> Option<u64> {
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

pub async fn run(args: BenchArgs) -> ExitCode {
    let redis = match RedisServer::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], redis.port()));
    let proxy = match DelayProxy::start(upstream, Duration::from_secs_f64(args.delay_ms / 1000.0)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: delay proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rtt = format!("{:.0} ms RTT", args.delay_ms * 2.0);
    let mut rows: Vec<Measured> = Vec::new();
    for (scenario, port) in [("loopback", redis.port()), (rtt.as_str(), proxy.port())] {
        let mut tools: Vec<(&str, Command)> = Vec::new();
        if !args.skip_reference {
            tools.push(("reference (python)", reference(&args, port)));
        }
        tools.push(("tenant-migrator Copy", ours(port, "copy")));
        tools.push(("tenant-migrator Move", ours(port, "move")));
        for (tool, cmd) in tools {
            let keys = match reload(&redis, args.scale) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("error: loading the fixture: {e}");
                    return ExitCode::FAILURE;
                }
            };
            eprintln!("running {tool} ({scenario}) on {keys} keys…");
            let measured = tokio::task::spawn_blocking(move || run_measured(cmd)).await;
            let Ok(Ok((ok, seconds, rss, stdout))) = measured else {
                eprintln!("error: cannot run {tool}");
                return ExitCode::FAILURE;
            };
            let keys = if tool.starts_with("reference") {
                reference_keys(&stdout).unwrap_or(keys)
            } else {
                keys
            };
            rows.push(Measured {
                scenario: scenario.to_owned(),
                tool: tool.to_owned(),
                keys,
                seconds,
                peak_rss_kib: rss,
                ok,
            });
        }
    }
    let ceiling = redis_benchmark(redis.port());
    let mut memory = None;
    if args.memory_scale > 0.0 {
        match reload(&redis, args.memory_scale) {
            Ok(keys) => {
                eprintln!(
                    "running tenant-migrator Copy at scale {} ({keys} keys) for peak memory…",
                    args.memory_scale
                );
                let cmd = ours(redis.port(), "copy");
                if let Ok(Ok((ok, seconds, rss, _))) = tokio::task::spawn_blocking(move || run_measured(cmd)).await {
                    memory = Some((keys, seconds, rss, ok));
                }
            }
            Err(e) => eprintln!("error: loading scale {}: {e}", args.memory_scale),
        }
    }

    println!(
        "\nRedis phase, fixture scale {} ({} tenant keys), one redis-server {}",
        args.scale,
        fixture::Shape::at_scale(args.scale).tenant_keys(),
        redis_version(&redis)
    );
    println!(
        "{:<10} {:<22} {:>8} {:>9} {:>10} {:>12} {:>10}  ok",
        "scenario", "tool", "keys", "seconds", "keys/s", "vs reference", "peak RSS"
    );
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.scenario == r.scenario && b.tool.starts_with("reference"))
            .map(Measured::rate);
        println!(
            "{:<10} {:<22} {:>8} {:>9.3} {:>10.0} {:>12} {:>7} MiB  {}",
            r.scenario,
            r.tool,
            r.keys,
            r.seconds,
            r.rate(),
            base.map_or("-".into(), |b| format!("{:.1}x", r.rate() / b)),
            r.peak_rss_kib / 1024,
            if r.ok { "yes" } else { "FAILED" }
        );
    }
    if let Some(c) = ceiling {
        println!("redis-benchmark -P 64 -t set (loopback): {c:.0} SET/s");
        for r in rows
            .iter()
            .filter(|r| r.scenario == "loopback" && !r.tool.starts_with("reference"))
        {
            println!("  {}: {:.1}% of that rate", r.tool, 100.0 * r.rate() / c);
        }
    }
    if let Some((keys, seconds, rss, ok)) = memory {
        println!(
            "scale {}: tenant-migrator Copy of {keys} keys in {seconds:.2}s ({:.0} keys/s), peak RSS {} MiB{}",
            args.memory_scale,
            keys as f64 / seconds,
            rss / 1024,
            if ok { "" } else { " (FAILED)" }
        );
    }
    if rows.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn redis_version(redis: &RedisServer) -> String {
    redis
        .conn()
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(|v| format!("v{}", v.trim())))
        })
        .unwrap_or_default()
}
