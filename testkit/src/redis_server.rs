//! A `redis-server` process on a free loopback port, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a test server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start {program}: {source} (install it: apt-get install -y redis-server)")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} did not answer on port {port} within {secs}s")]
    NotReady { program: String, port: u16, secs: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A running Redis started for one test (or one benchmark).
pub struct RedisServer {
    child: Child,
    port: u16,
    password: Option<String>,
    dir: PathBuf,
    /// With [`RedisServer::start_tls`]: the TLS port and the CA that signed its certificate.
    tls: Option<(u16, crate::test_ca::TestCa)>,
    /// Arguments beyond the defaults, given again on a restart.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` (or `$REDIS_SERVER`) without persistence.
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with(None)
    }

    /// Starts one that requires `password` (AUTH).
    pub fn start_with(password: Option<&str>) -> Result<Self, ServerError> {
        Self::spawn(crate::free_port()?, password, &[])
    }

    fn spawn(port: u16, password: Option<&str>, extra: &[&str]) -> Result<Self, ServerError> {
        let dir = std::env::temp_dir().join(format!("tm-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Self::launch(port, password, extra, &dir)?;
        let server = Self {
            child,
            port,
            password: password.map(str::to_owned),
            dir,
            tls: None,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Starts one with the append-only file on and fsynced after every write, as a
    /// production Redis that must not lose acknowledged writes runs.
    pub fn start_durable() -> Result<Self, ServerError> {
        Self::spawn(
            crate::free_port()?,
            None,
            &["--appendonly", "yes", "--appendfsync", "always"],
        )
    }

    /// A fault: SIGKILL, no save, and a start on the same port from what is on disk (the
    /// append-only file of a [`RedisServer::start_durable`] server) — a crash and a pod
    /// restart, with a new `run_id` and hash seed.
    pub fn crash_restart(&mut self) -> Result<(), ServerError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = Self::launch(self.port, self.password.as_deref(), &extra, &self.dir)?;
        self.wait_ready()
    }

    /// A fault: the server saves its data (RDB), is killed and started again on the
    /// same port from that file — a new process, with a new `run_id` and hash seed, as
    /// after a pod restart or a failover. Not for TLS servers.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        redis::cmd("SAVE").query::<()>(&mut self.conn()?)?;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = Self::launch(self.port, self.password.as_deref(), &extra, &self.dir)?;
        self.wait_ready()
    }

    fn launch(port: u16, password: Option<&str>, extra: &[&str], dir: &std::path::Path) -> Result<Child, ServerError> {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&program);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        cmd.spawn().map_err(|source| ServerError::Spawn { program, source })
    }

    /// Waits until the server answers PING (10 s at most).
    fn wait_ready(&self) -> Result<(), ServerError> {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = self
                .client()
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ok.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ServerError::NotReady {
                    program,
                    port,
                    secs: 10,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts one that also serves TLS on a second port, with a certificate for
    /// 127.0.0.1 signed by a CA made for it; the plain port stays for set-up.
    pub fn start_tls() -> Result<Self, ServerError> {
        let port = crate::free_port()?;
        let tls_port = crate::free_port()?;
        let ca = crate::test_ca::TestCa::create(&format!("redis-{tls_port}"))?;
        let (cert, key) = ca.server();
        let (cert, key, ca_file) = (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
            ca.ca().to_string_lossy().into_owned(),
        );
        let tls_port_arg = tls_port.to_string();
        let mut server = Self::spawn(
            port,
            None,
            &[
                "--tls-port",
                &tls_port_arg,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca_file,
                "--tls-auth-clients",
                "no",
            ],
        )?;
        server.tls = Some((tls_port, ca));
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:TLS_PORT/` and the CA file to trust, for a [`RedisServer::start_tls`] server.
    pub fn tls(&self) -> Option<(String, PathBuf)> {
        self.tls
            .as_ref()
            .map(|(port, ca)| (format!("rediss://127.0.0.1:{port}/"), ca.ca()))
    }

    /// `redis://127.0.0.1:PORT/` — without the password, as the product expects.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client that authenticates when the server has a password.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.password {
            Some(p) => redis::Client::open(format!("redis://:{p}@127.0.0.1:{}/", self.port)),
            None => redis::Client::open(self.url()),
        }
    }

    /// A synchronous connection, for test set-up and assertions.
    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        self.client()?.get_connection()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three `redis-server` primaries joined into a Redis Cluster by `redis-cli --cluster
/// create`, each owning a third of the 16384 slots; stopped on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> Result<u16, ServerError> {
    for _ in 0..100 {
        let port = crate::free_port()?;
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(ServerError::Io(std::io::Error::other(
        "no free port pair for a cluster node",
    )))
}

impl RedisCluster {
    pub fn start() -> Result<Self, ServerError> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = cluster_port()?;
            nodes.push(RedisServer::spawn(
                port,
                None,
                &["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            )?);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|source| ServerError::Spawn {
                program: "redis-cli".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(ServerError::Io(std::io::Error::other(format!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            ))));
        }
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = cluster.nodes.iter().all(|n| {
                n.conn()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if ready {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                return Err(ServerError::NotReady {
                    program: "redis cluster".into(),
                    port: cluster.nodes[0].port(),
                    secs: 30,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The primaries.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A seed URL: any node leads a cluster client to the others.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The primary that owns `key`'s slot, as the server computes it.
    fn owner(
        &self,
        slots: &[(u16, u16, u16)],
        conn: &mut redis::Connection,
        keys: &[Vec<u8>],
    ) -> redis::RedisResult<Vec<usize>> {
        let mut p = redis::pipe();
        for k in keys {
            p.cmd("CLUSTER").arg("KEYSLOT").arg(k.as_slice());
        }
        let slot_of: Vec<u16> = p.query(conn)?;
        Ok(slot_of
            .into_iter()
            .map(|s| {
                slots
                    .iter()
                    .find(|(lo, hi, _)| (*lo..=*hi).contains(&s))
                    .and_then(|(_, _, port)| self.nodes.iter().position(|n| n.port() == *port))
                    .unwrap_or(0)
            })
            .collect())
    }

    /// Copies every key of `from` (a standalone server holding a fixture) into the
    /// cluster, each to the primary owning its slot; returns how many.
    pub fn load_from(&self, from: &RedisServer) -> Result<u64, ServerError> {
        let mut src = from.conn()?;
        let mut seed = self.nodes[0].conn()?;
        let raw: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut seed)?;
        let slots: Vec<(u16, u16, u16)> = raw
            .iter()
            .filter_map(|r| match r {
                redis::Value::Array(v) => {
                    let int = |x: &redis::Value| match x {
                        redis::Value::Int(i) => u16::try_from(*i).ok(),
                        _ => None,
                    };
                    let port = match v.get(2) {
                        Some(redis::Value::Array(n)) => n.get(1).and_then(int),
                        _ => None,
                    };
                    Some((int(v.first()?)?, int(v.get(1)?)?, port?))
                }
                _ => None,
            })
            .collect();
        let mut conns: Vec<redis::Connection> = self.nodes.iter().map(|n| n.conn()).collect::<Result<_, _>>()?;
        let mut loaded = 0;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query(&mut src)?;
            let mut read = redis::pipe();
            for k in &keys {
                read.cmd("PTTL").arg(k.as_slice()).cmd("DUMP").arg(k.as_slice());
            }
            let values: Vec<redis::Value> = if keys.is_empty() {
                Vec::new()
            } else {
                read.query(&mut src)?
            };
            let owners = self.owner(&slots, &mut seed, &keys)?;
            let mut writes: Vec<redis::Pipeline> = (0..conns.len()).map(|_| redis::pipe()).collect();
            for ((k, v), owner) in keys.iter().zip(values.chunks(2)).zip(owners) {
                if let (redis::Value::Int(ttl), redis::Value::BulkString(payload)) = (&v[0], &v[1]) {
                    writes[owner]
                        .cmd("RESTORE")
                        .arg(k.as_slice())
                        .arg((*ttl).max(0))
                        .arg(payload.as_slice())
                        .arg("REPLACE")
                        .ignore();
                    loaded += 1;
                }
            }
            for (p, c) in writes.iter().zip(conns.iter_mut()) {
                p.query::<()>(c)?;
            }
            if next == 0 {
                return Ok(loaded);
            }
            cursor = next;
        }
    }
}
