//! The Bolt test server: Neo4j 4.4 Community embedded by `tools/neo4j/BoltServer.java`
//! (built by `tools/neo4j/build.sh` into `$TM_CACHE/neo4j`), on a free loopback port
//! with authentication on. It stands in for Memgraph: a real Cypher engine speaking
//! Bolt 4.x. The JVM exits when this handle is dropped or the test process dies
//! (its stdin closes).

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::redis_server::ServerError;

/// The user of the test server.
pub const USER: &str = "neo4j";

/// Where `tools/neo4j/build.sh` puts the classpath and the compiled launcher.
pub fn tooling_dir() -> PathBuf {
    let cache = std::env::var_os("TM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache/tenant-migrator")
    });
    cache.join("neo4j")
}

/// Opens that Neo4j 4.4 needs on Java 17 (its own launcher passes the same).
const JAVA_OPENS: [&str; 9] = [
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
];

/// A running Bolt server.
pub struct BoltServer {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    password: Option<String>,
    dir: PathBuf,
    /// With [`BoltServer::start_tls`]: the CA that signed its certificate.
    tls: Option<crate::test_ca::TestCa>,
}

impl BoltServer {
    /// Starts a server that requires `neo4j` / `password`.
    pub fn start(password: &str) -> Result<Self, ServerError> {
        Self::launch(Some(password), None)
    }

    /// Starts a server without authentication, like a default Memgraph.
    pub fn start_without_auth() -> Result<Self, ServerError> {
        Self::launch(None, None)
    }

    /// Starts one whose Bolt port requires TLS, with a certificate for 127.0.0.1 from a
    /// CA made for it ([`BoltServer::ca`]).
    pub fn start_tls(password: &str) -> Result<Self, ServerError> {
        let ca = crate::test_ca::TestCa::create(&format!("bolt-{}", crate::free_port()?))?;
        Self::launch(Some(password), Some(ca))
    }

    fn launch(password: Option<&str>, tls: Option<crate::test_ca::TestCa>) -> Result<Self, ServerError> {
        let port = crate::free_port()?;
        let dir = std::env::temp_dir().join(format!("tm-bolt-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (child, stdin) = Self::spawn(port, &dir, password, tls.as_ref())?;
        Ok(Self {
            child,
            _stdin: stdin,
            port,
            password: password.map(str::to_owned),
            dir,
            tls,
        })
    }

    /// A fault: SIGKILL, and a start on the same port from the same store (Neo4j
    /// recovers from its transaction log), as after a crash and a pod restart.
    pub fn crash_restart(&mut self) -> Result<(), ServerError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, stdin) = Self::spawn(self.port, &self.dir, self.password.as_deref(), self.tls.as_ref())?;
        self.child = child;
        self._stdin = stdin;
        Ok(())
    }

    fn spawn(
        port: u16,
        dir: &std::path::Path,
        password: Option<&str>,
        tls: Option<&crate::test_ca::TestCa>,
    ) -> Result<(Child, ChildStdin), ServerError> {
        let tools = tooling_dir();
        let classpath = std::fs::read_to_string(tools.join("classpath.txt")).map_err(|e| ServerError::Spawn {
            program: format!("{} (run tools/setup.sh)", tools.join("classpath.txt").display()),
            source: e,
        })?;
        let mut cmd = Command::new(std::env::var("JAVA").unwrap_or_else(|_| "java".into()));
        cmd.args(["-Xmx1g", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .args(JAVA_OPENS)
            .arg("-cp")
            .arg(format!("{}:{}", classpath.trim(), tools.join("classes").display()))
            .arg("BoltServer")
            .arg(port.to_string())
            .arg(dir.join("data"))
            .arg(password.unwrap_or("-"))
            .stderr(Stdio::null());
        if let Some(ca) = tls {
            // Neo4j reads private.key and public.crt from the policy's folder.
            let certs = dir.join("tls");
            std::fs::create_dir_all(&certs)?;
            let (cert, key) = ca.server();
            std::fs::copy(cert, certs.join("public.crt"))?;
            std::fs::copy(key, certs.join("private.key"))?;
            cmd.arg(certs);
        }
        crate::spawn_until_ready(&mut cmd, "BoltServer (Neo4j 4.4, java)", port, 180)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `bolt://127.0.0.1:PORT`
    pub fn uri(&self) -> String {
        format!("bolt://127.0.0.1:{}", self.port)
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The CA file to trust, for a [`BoltServer::start_tls`] server.
    pub fn ca(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(crate::test_ca::TestCa::ca)
    }

    /// A neo4rs client for set-up and assertions (over TLS, trusting [`BoltServer::ca`],
    /// for a TLS server).
    pub async fn graph(&self) -> neo4rs::Result<neo4rs::Graph> {
        let user = if self.password.is_some() { USER } else { "" };
        let password = self.password.as_deref().unwrap_or_default();
        match self.ca() {
            None => connect(&self.uri(), user, password).await,
            Some(ca) => connect_to(format!("bolt+s://127.0.0.1:{}", self.port), Some(ca), user, password).await,
        }
    }
}

/// A neo4rs client for `uri` (`bolt://host:port`), for set-up and assertions.
pub async fn connect(uri: &str, user: &str, password: &str) -> neo4rs::Result<neo4rs::Graph> {
    let address = uri
        .split_once("://")
        .map_or(uri, |(_, rest)| rest)
        .trim_end_matches('/');
    connect_to(address.to_owned(), None, user, password).await
}

/// A client of the `memgraph` database at `uri`, trusting `ca` too when given.
async fn connect_to(uri: String, ca: Option<PathBuf>, user: &str, password: &str) -> neo4rs::Result<neo4rs::Graph> {
    let mut config = neo4rs::ConfigBuilder::default()
        .uri(uri)
        .user(user)
        .password(password)
        .db("memgraph")
        .max_connections(4);
    if let Some(ca) = ca {
        config = config.with_client_certificate(ca);
    }
    neo4rs::Graph::connect(config.build()?).await
}

impl Drop for BoltServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
