//! Test tooling for tenant-migrator: real servers started on free loopback ports
//! (Debian's `redis-server`, the tenant-config API stand-in, Neo4j 4.4 as the Bolt server), a LightRAG-shaped
//! fixture generator, database digests, and a delay proxy for round-trip tests.
//!
//! Used by the integration tests, the benchmark and the demo. Never by the product.

pub mod bolt_recorder;
pub mod bolt_server;
pub mod chaos;
pub mod config_api;
pub mod fixture;
pub mod graph_fixture;
pub mod kube_node;
pub mod kube_schemas;
pub mod kube_server;
pub mod memgraph_rules;
pub mod oci;
pub mod proxy;
pub mod qdrant_fixture;
pub mod qdrant_server;
pub mod redis_server;
pub mod test_ca;
pub mod writer;

pub use bolt_recorder::{BoltRecorder, BoltRequest};
pub use bolt_server::BoltServer;
pub use config_api::ConfigApi;
pub use kube_node::KubeNode;
pub use kube_server::KubeApiServer;
pub use proxy::DelayProxy;
pub use qdrant_server::{QdrantServer, Wire};
pub use redis_server::{RedisCluster, RedisServer};

/// A command-line tool that `tools/setup.sh` built into `$TM_CACHE/<name>/bin` (helm,
/// kubeconform).
pub fn cached_tool(name: &str) -> std::path::PathBuf {
    bolt_server::tooling_dir()
        .parent()
        .map(|d| d.join(name).join("bin").join(name))
        .unwrap_or_else(|| name.into())
}

/// A free TCP port on 127.0.0.1 (the OS picks it; the listener is closed before use).
pub fn free_port() -> std::io::Result<u16> {
    let [port] = free_ports()?;
    Ok(port)
}

/// `N` free ports, all different: each is held until every one is chosen (ports picked
/// one after the other may come back the same once the first is released).
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let held = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&held) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// Spawns `cmd` (stdin and stdout piped) and waits until it prints a line starting
/// with `READY`. The returned stdin must be kept: the servers exit when it closes, so
/// they die with the test process even when no destructor runs.
pub(crate) fn spawn_until_ready(
    cmd: &mut std::process::Command,
    program: &str,
    port: u16,
    secs: u64,
) -> Result<(std::process::Child, std::process::ChildStdin), redis_server::ServerError> {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| redis_server::ServerError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("READY") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(std::time::Duration::from_secs(secs)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(redis_server::ServerError::NotReady {
            program: program.to_owned(),
            port,
            secs,
        });
    }
    Ok((child, stdin))
}

/// Runs `cmd` to its end with stdout and stderr in a file under `dir`; returns the
/// exit status, what it printed, and its peak resident set size in KiB: the high-water
/// mark `VmHWM` of its own address space, read every 2 ms until it exits (monotonic,
/// so a spike at any time is kept; only the last 2 ms go unseen). Not `ru_maxrss`:
/// that counts the address space a spawned child had before its `exec`, which is
/// this (test) process's.
pub fn run_measured(
    cmd: &mut std::process::Command,
    dir: &std::path::Path,
) -> std::io::Result<(std::process::ExitStatus, String, u64)> {
    std::fs::create_dir_all(dir)?;
    let log = dir.join("measured.log");
    let out = std::fs::File::create(&log)?;
    let mut child = cmd.stdout(out.try_clone()?).stderr(out).spawn()?;
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    Ok((status, printed, peak))
}

/// `VmHWM` of a running process, KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
