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
}

impl RedisServer {
    /// Starts `redis-server` (or `$REDIS_SERVER`) without persistence.
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with(None)
    }

    /// Starts one that requires `password` (AUTH).
    pub fn start_with(password: Option<&str>) -> Result<Self, ServerError> {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = crate::free_port()?;
        let dir = std::env::temp_dir().join(format!("tm-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
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
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().map_err(|source| ServerError::Spawn {
            program: program.clone(),
            source,
        })?;
        let server = Self {
            child,
            port,
            password: password.map(str::to_owned),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = server
                .client()
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ok.is_ok() {
                return Ok(server);
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

    pub fn port(&self) -> u16 {
        self.port
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
