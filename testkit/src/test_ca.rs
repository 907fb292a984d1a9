//! A certificate authority made for one test (openssl), and a server certificate for
//! 127.0.0.1 signed by it: TLS servers in tests present it, and the product trusts the
//! CA through `SSL_CERT_FILE`, as a user with a private CA would.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::redis_server::ServerError;

/// The files of a test CA, removed on drop.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// Creates `ca.crt`, `server.crt` and `server.key` (for 127.0.0.1 and localhost).
    pub fn create(name: &str) -> Result<Self, ServerError> {
        let dir = std::env::temp_dir().join(format!("tm-ca-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let openssl = |args: &[&str]| -> Result<(), ServerError> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .map_err(|source| ServerError::Spawn {
                    program: "openssl".into(),
                    source,
                })?;
            if out.status.success() {
                Ok(())
            } else {
                Err(ServerError::Io(std::io::Error::other(format!(
                    "openssl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))))
            }
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tenant-migrator test CA",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ])?;
        Ok(Self { dir })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA certificate to trust.
    pub fn ca(&self) -> PathBuf {
        self.file("ca.crt")
    }

    /// The server's certificate and key (PEM).
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.file("server.crt"), self.file("server.key"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
