//! A real Kubernetes API server for tests: `kube-apiserver` and `etcd` built from
//! their Go modules by `tools/envtest/build.sh` (the envtest approach), started on
//! free loopback ports with a static admin token, stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::ServerError;

/// The bearer token of the admin user (group system:masters).
pub const ADMIN_TOKEN: &str = "tenant-migrator-test-admin";

/// Where `tools/envtest/build.sh` puts the Kubernetes binaries.
pub(crate) fn bin_dir() -> PathBuf {
    crate::bolt_server::tooling_dir()
        .parent()
        .map(|d| d.join("envtest/bin"))
        .unwrap_or_default()
}

/// A running API server with its etcd.
pub struct KubeApiServer {
    etcd: Child,
    apiserver: Child,
    port: u16,
    dir: PathBuf,
}

impl KubeApiServer {
    /// A server for tests without a node: pods are never run, so the ServiceAccount
    /// admission plugin (which waits for each namespace's `default` account, made by a
    /// controller-manager) is off.
    pub fn start() -> Result<Self, ServerError> {
        Self::launch(false)
    }

    /// A server for the one-node cluster ([`crate::KubeNode`]): ServiceAccount admission
    /// on, so pods get their account's token as they would anywhere.
    pub fn start_for_node() -> Result<Self, ServerError> {
        Self::launch(true)
    }

    fn launch(service_accounts: bool) -> Result<Self, ServerError> {
        let bin = bin_dir();
        let [etcd_port, peer_port, port] = crate::free_ports()?;
        let dir = std::env::temp_dir().join(format!("tm-kube-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // Each server's output goes to `{program}.log` in `dir`, quoted when it does not start.
        let spawn = |program: &str, cmd: &mut Command| {
            let log = std::fs::File::create(dir.join(format!("{program}.log")))?;
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|source| ServerError::Spawn {
                    program: format!("{} (run tools/setup.sh)", bin.join(program).display()),
                    source,
                })
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = spawn(
            "etcd",
            Command::new(bin.join("etcd"))
                .arg("--data-dir")
                .arg(dir.join("etcd"))
                .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer_port}"),
                ])
                .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer_port}")]),
        )?;
        // A service-account signing key and the admin token, as envtest provides them.
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )?;
        let key = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(dir.join("sa.key"))
            .arg("2048")
            .stderr(Stdio::null())
            .status()?;
        if !key.success() {
            return Err(ServerError::Io(std::io::Error::other("openssl genrsa failed")));
        }
        let sa_key = dir.join("sa.key");
        let apiserver = spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver"))
                .args([
                    "--etcd-servers",
                    &etcd_url,
                    "--bind-address",
                    "127.0.0.1",
                    "--advertise-address",
                    "127.0.0.1",
                ])
                .args(["--secure-port", &port.to_string()])
                .arg("--cert-dir")
                .arg(dir.join("certs"))
                .args([
                    "--service-cluster-ip-range",
                    "10.0.0.0/24",
                    "--authorization-mode",
                    "RBAC",
                ])
                .arg("--token-auth-file")
                .arg(dir.join("tokens.csv"))
                .args(["--service-account-issuer", &format!("https://127.0.0.1:{port}")])
                .arg("--service-account-key-file")
                .arg(&sa_key)
                .arg("--service-account-signing-key-file")
                .arg(&sa_key)
                .args(if service_accounts {
                    vec![]
                } else {
                    vec!["--disable-admission-plugins", "ServiceAccount"]
                }),
        )?;
        let mut server = Self {
            etcd,
            apiserver,
            port,
            dir,
        };
        // A deadline for a server that never comes up; a loaded 2-core machine can take
        // minutes. One that exits is reported at once, with the end of its log.
        const READY_SECS: u64 = 300;
        let deadline = Instant::now() + Duration::from_secs(READY_SECS);
        loop {
            let ready = server
                .kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|o| o.status.success());
            if ready {
                return Ok(server);
            }
            for (program, child) in [("etcd", &mut server.etcd), ("kube-apiserver", &mut server.apiserver)] {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(server.dir.join(format!("{program}.log"))).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(8).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    return Err(ServerError::Io(std::io::Error::other(format!(
                        "{program} exited ({status}) before kube-apiserver was ready:\n{}",
                        tail.join("\n")
                    ))));
                }
            }
            if Instant::now() > deadline {
                return Err(ServerError::NotReady {
                    program: "kube-apiserver".into(),
                    port,
                    secs: READY_SECS,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder of this server's files: `sa.key` (service-account signing key) and
    /// `certs/apiserver.crt` (its self-signed certificate, the cluster's CA for pods).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig for this server (admin token, TLS not verified: the
    /// server's certificate is self-signed), with `namespace` as the default.
    pub fn write_kubeconfig(&self, path: &std::path::Path, namespace: &str) -> std::io::Result<()> {
        self.write_kubeconfig_for(path, namespace, ADMIN_TOKEN)
    }

    /// Like [`Self::write_kubeconfig`], for another identity's bearer token (a ServiceAccount's).
    pub fn write_kubeconfig_for(&self, path: &std::path::Path, namespace: &str, token: &str) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: test, cluster: {{server: '{}', insecure-skip-tls-verify: true}}}}]\n\
                 users: [{{name: admin, user: {{token: {token}}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: admin, namespace: {namespace}}}}}]\n\
                 current-context: test\n",
                self.url()
            ),
        )
    }

    /// Runs `kubectl` (the client on the machine) against this server as admin.
    pub fn kubectl(&self, args: &[&str]) -> std::io::Result<Output> {
        self.kubectl_cmd().args(args).output()
    }

    /// `kubectl apply -f -` with `yaml` on stdin.
    pub fn apply(&self, yaml: &str) -> std::io::Result<Output> {
        self.apply_with(&[], yaml)
    }

    /// `kubectl apply {args} -f -` with `yaml` on stdin (e.g. `--dry-run=server`).
    pub fn apply_with(&self, args: &[&str], yaml: &str) -> std::io::Result<Output> {
        Self::apply_by(self.kubectl_cmd(), args, yaml)
    }

    /// `kubectl apply -f -` as the identity whose bearer token is `token` (a
    /// ServiceAccount's, from `kubectl create token`): what that user may do, no more.
    pub fn apply_as(&self, token: &str, yaml: &str) -> std::io::Result<Output> {
        Self::apply_by(self.kubectl_as(token), &[], yaml)
    }

    fn apply_by(mut kubectl: Command, args: &[&str], yaml: &str) -> std::io::Result<Output> {
        use std::io::Write;
        let mut child = kubectl
            .arg("apply")
            .args(args)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?
            .write_all(yaml.as_bytes())?;
        child.wait_with_output()
    }

    /// Applies the CRDs at `crds` (a file or a directory), waits until ours are
    /// established, creates `namespace`.
    pub fn install_crd(&self, crds: &std::path::Path, namespace: &str) -> Result<(), String> {
        let crds = crds.to_string_lossy();
        let steps: [&[&str]; 3] = [
            &["apply", "--server-side", "-f", &crds],
            &[
                "wait",
                "--for",
                "condition=established",
                "crd/tenantmigrations.tenancy.dev",
                "crd/ragstacks.tenancy.dev",
                "--timeout=60s",
            ],
            &["create", "namespace", namespace],
        ];
        for args in steps {
            let out = self.kubectl(args).map_err(|e| format!("kubectl: {e}"))?;
            if !out.status.success() {
                return Err(format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        Ok(())
    }

    /// A `kubectl` command aimed at this server, for stdin or custom arguments.
    pub fn kubectl_cmd(&self) -> Command {
        self.kubectl_as(ADMIN_TOKEN)
    }

    /// A `kubectl` command aimed at this server as the identity of `token`.
    pub fn kubectl_as(&self, token: &str) -> Command {
        let mut c = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()));
        c.args(["--server", &self.url(), "--token", token, "--insecure-skip-tls-verify"])
            .env("KUBECONFIG", self.dir.join("no-kubeconfig"));
        c
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
