//! The Qdrant test server: `tools/qdrant/server.py` (Qdrant's storage engine from
//! `qdrant-edge-py` behind Qdrant's own gRPC service definitions) in the virtualenv
//! that `tools/setup.sh` makes, on a free loopback port. Stopped when dropped, or
//! when the test process dies (its stdin closes).

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::redis_server::ServerError;

/// The virtualenv's Python (`$TM_PYTHON` overrides).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TM_PYTHON") {
        return p.into();
    }
    crate::bolt_server::tooling_dir()
        .parent()
        .map(|d| d.join("venv/bin/python"))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// How the server encodes the vectors it returns: as Qdrant 1.17 and later do (the
/// `vector` oneof of `VectorOutput`), or as Qdrant up to 1.16 does (only the
/// deprecated `data` / `indices` / `vectors_count` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Current,
    Legacy,
}

impl Wire {
    fn arg(self) -> &'static str {
        match self {
            Wire::Current => "current",
            Wire::Legacy => "legacy",
        }
    }
}

/// A running Qdrant test server.
pub struct QdrantServer {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    dir: PathBuf,
    /// With [`QdrantServer::start_tls`]: the TLS port and the CA that signed its certificate.
    tls: Option<(u16, crate::test_ca::TestCa)>,
    api_key: Option<String>,
    wire: Wire,
}

impl QdrantServer {
    /// Starts a server; with `api_key`, every call must carry it.
    pub fn start(api_key: Option<&str>) -> Result<Self, ServerError> {
        Self::spawn(api_key, Wire::Current, None)
    }

    /// Starts a server that speaks `wire`'s vector encoding.
    pub fn start_wire(api_key: Option<&str>, wire: Wire) -> Result<Self, ServerError> {
        Self::spawn(api_key, wire, None)
    }

    /// Starts one that also serves TLS on a second port (certificate for 127.0.0.1 from
    /// a CA made for it); the plain port stays for set-up.
    pub fn start_tls(api_key: Option<&str>) -> Result<Self, ServerError> {
        let tls_port = crate::free_port()?;
        let ca = crate::test_ca::TestCa::create(&format!("qdrant-{tls_port}"))?;
        Self::spawn(api_key, Wire::Current, Some((tls_port, ca)))
    }

    fn spawn(
        api_key: Option<&str>,
        wire: Wire,
        tls: Option<(u16, crate::test_ca::TestCa)>,
    ) -> Result<Self, ServerError> {
        let port = crate::free_port()?;
        let dir = std::env::temp_dir().join(format!("tm-qdrant-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (child, stdin) = Self::launch(port, &dir, api_key, wire, tls.as_ref())?;
        Ok(Self {
            child,
            _stdin: stdin,
            port,
            dir,
            tls,
            api_key: api_key.map(str::to_owned),
            wire,
        })
    }

    /// A fault: SIGKILL, and a start on the same port from the same storage (Qdrant's
    /// segments and WAL), as after a crash and a pod restart.
    pub fn crash_restart(&mut self) -> Result<(), ServerError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, stdin) = Self::launch(
            self.port,
            &self.dir,
            self.api_key.as_deref(),
            self.wire,
            self.tls.as_ref(),
        )?;
        self.child = child;
        self._stdin = stdin;
        Ok(())
    }

    fn launch(
        port: u16,
        dir: &std::path::Path,
        api_key: Option<&str>,
        wire: Wire,
        tls: Option<&(u16, crate::test_ca::TestCa)>,
    ) -> Result<(Child, ChildStdin), ServerError> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/qdrant/server.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .args(["--port", &port.to_string()])
            .arg("--data")
            .arg(dir.join("data"))
            .args(["--wire", wire.arg()])
            .arg("--hang-file")
            .arg(dir.join("hang"))
            .arg("--pause-file")
            .arg(dir.join("pause"))
            .stderr(Stdio::null());
        if let Some(k) = api_key {
            cmd.args(["--api-key", k]);
        }
        if let Some((tls_port, ca)) = tls {
            let (cert, key) = ca.server();
            cmd.args(["--tls-port", &tls_port.to_string()])
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        let program = format!("{} tools/qdrant/server.py (run tools/setup.sh)", python().display());
        crate::spawn_until_ready(&mut cmd, &program, port, 60)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Fault injection: the `n`-th point write from now on (upsert, delete, payload
    /// change) is applied and then never answered, as by a server that died between
    /// its write and its reply. [`Self::hung`] tells when that write happened.
    pub fn hang_after_writes(&self, n: u32) -> std::io::Result<()> {
        std::fs::write(self.dir.join("hang"), n.to_string())
    }

    /// Whether the write chosen by [`Self::hang_after_writes`] has been applied (and
    /// its reply withheld).
    pub fn hung(&self) -> bool {
        !self.dir.join("hang").exists()
    }

    /// Fault injection: the next call of `method` (`"Points.Delete"`) waits before it
    /// touches any collection until [`Self::resume`]; [`Self::paused`] tells when it
    /// is waiting. A client's write can then land between what a migration read and
    /// its own write.
    pub fn pause_next(&self, method: &str) -> std::io::Result<()> {
        std::fs::write(self.dir.join("pause"), method)
    }

    /// Whether the call chosen by [`Self::pause_next`] is waiting.
    pub fn paused(&self) -> bool {
        self.dir.join("pause.paused").exists()
    }

    /// Lets the paused call go on.
    pub fn resume(&self) -> std::io::Result<()> {
        std::fs::remove_file(self.dir.join("pause.paused"))
    }

    /// `http://127.0.0.1:PORT` (gRPC).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:TLS_PORT` and the CA file to trust, for a [`QdrantServer::start_tls`] server.
    pub fn tls(&self) -> Option<(String, PathBuf)> {
        self.tls
            .as_ref()
            .map(|(port, ca)| (format!("https://127.0.0.1:{port}"), ca.ca()))
    }

    /// A client for set-up and assertions.
    pub fn client(&self, api_key: Option<&str>) -> Result<qdrant_client::Qdrant, qdrant_client::QdrantError> {
        let mut b = qdrant_client::Qdrant::from_url(&self.url()).skip_compatibility_check();
        if let Some(k) = api_key {
            b = b.api_key(k.to_owned());
        }
        b.build()
    }
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
