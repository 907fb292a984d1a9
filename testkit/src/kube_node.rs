//! A one-node Kubernetes cluster for tests: containerd and runc (Debian's packages), and
//! a kubelet, kube-controller-manager and kube-scheduler built from the same Kubernetes
//! module as the test API server (`tools/envtest/build.sh`), against a
//! [`KubeApiServer::start_for_node`]. Pods run for real — probes, security contexts,
//! grace periods, Deployments' rollouts — with the host network (node `127.0.0.1`), so
//! they reach the test servers on loopback and nothing else. Images come from
//! [`crate::oci`] archives imported into containerd; the sandbox image is a static
//! `pause` compiled here.
//!
//! What this machine needs (found on these Firecracker VMs, cgroup v1, no systemd):
//! - containerd's `restrict_oom_score_adj`: the sandbox lacks CAP_SYS_RESOURCE, so runc
//!   cannot lower a pod's oom_score_adj (and the kubelet's own `oomScoreAdj` is 0);
//! - a loopback-only CNI config, so that the runtime reports NetworkReady and the node
//!   turns Ready (host-network pods need no more);
//! - the node named by IP (`--hostname-override=127.0.0.1`: `--node-ip` refuses loopback);
//! - a cgroup root of its own below this process's memory cgroup, in every hierarchy.
//!
//! Dropping it kills every container it started and removes its cgroups and mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kube_server::{KubeApiServer, bin_dir};
use crate::oci::{ImageConfig, ImageFile};
use crate::redis_server::ServerError;

/// The sandbox image every pod starts with.
pub const PAUSE_IMAGE: &str = "localhost/tm-pause:1";

fn other(msg: impl Into<String>) -> ServerError {
    ServerError::Io(std::io::Error::other(msg.into()))
}

/// A running node and the control-plane controllers that make pods of Deployments.
pub struct KubeNode {
    containerd: Child,
    /// The kubelet, controller-manager and scheduler, once started.
    components: Vec<Child>,
    dir: PathBuf,
    socket: PathBuf,
    cgroup_root: String,
    /// Kernel settings the kubelet rewrites at start (`setupKernelTunables`), as they
    /// were: written back when the node is dropped.
    sysctls: Vec<(PathBuf, String)>,
}

/// What the kubelet sets unless `protectKernelDefaults` (which refuses to start instead).
const KUBELET_SYSCTLS: [&str; 4] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// v1 hierarchies the kubelet's cgroup root must exist in (and those runc uses).
const HIERARCHIES: [&str; 9] = [
    "cpu", "cpuacct", "cpuset", "memory", "pids", "systemd", "devices", "freezer", "blkio",
];

impl KubeNode {
    /// Starts the node against `api` and waits until it is Ready and schedulable, with
    /// the `default` ServiceAccount of namespace `default` made (pods are admitted then).
    pub fn start(api: &KubeApiServer) -> Result<Self, ServerError> {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return Err(other(
                "the test node supports cgroup v1 hosts only (this one is cgroup v2)",
            ));
        }
        let dir = api.dir().join("node");
        let socket = dir.join("containerd/containerd.sock");
        std::fs::create_dir_all(dir.join("cni/net.d"))?;
        let cgroup_root = format!("{}/tm-node-{}-{}", own_memory_cgroup()?, std::process::id(), api.port());
        make_cgroup_root(&cgroup_root)?;
        write_containerd_config(&dir)?;
        let log = |name: &str| -> Result<Stdio, ServerError> {
            Ok(Stdio::from(std::fs::File::create(dir.join(format!("{name}.log")))?))
        };
        let spawn = |program: &Path, cmd: &mut Command, name: &str| -> Result<Child, ServerError> {
            cmd.stdout(log(name)?)
                .stderr(log(&format!("{name}.err"))?)
                .spawn()
                .map_err(|source| ServerError::Spawn {
                    program: format!("{} (run tools/setup.sh)", program.display()),
                    source,
                })
        };
        let containerd = spawn(
            Path::new("containerd"),
            Command::new("containerd")
                .arg("--config")
                .arg(dir.join("containerd/config.toml")),
            "containerd",
        )?;
        // The node is built up from here: dropped on any error below, it cleans up.
        let mut node = Self {
            containerd,
            components: Vec::new(),
            dir: dir.clone(),
            socket: socket.clone(),
            cgroup_root: cgroup_root.clone(),
            sysctls: KUBELET_SYSCTLS
                .iter()
                .filter_map(|k| {
                    let path = Path::new("/proc/sys").join(k);
                    Some((path.clone(), std::fs::read_to_string(path).ok()?))
                })
                .collect(),
        };
        node.wait_for("containerd", 60, || node.ctr(&["version"]).is_ok())?;
        node.import(&node.pause_image()?)?;

        let kubeconfig = dir.join("admin.kubeconfig");
        api.write_kubeconfig(&kubeconfig, "default")?;
        let [kubelet_port, healthz_port] = crate::free_ports()?;
        std::fs::write(
            dir.join("kubelet.yaml"),
            kubelet_config(&socket, &cgroup_root, kubelet_port, healthz_port, &dir),
        )?;
        let bin = bin_dir();
        let kubelet = spawn(
            &bin.join("kubelet"),
            Command::new(bin.join("kubelet"))
                .arg(format!("--config={}", dir.join("kubelet.yaml").display()))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!("--root-dir={}", dir.join("kubelet").display()))
                .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
                .args(["--hostname-override=127.0.0.1", "--v=1"]),
            "kubelet",
        )?;
        node.components.push(kubelet);
        let certs = api.dir().join("certs/apiserver.crt");
        let controller_manager = spawn(
            &bin.join("kube-controller-manager"),
            Command::new(bin.join("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!("--root-ca-file={}", certs.display()))
                .arg(format!(
                    "--service-account-private-key-file={}",
                    api.dir().join("sa.key").display()
                ))
                .args(["--leader-elect=false", "--secure-port=0", "--v=1"]),
            "kube-controller-manager",
        )?;
        node.components.push(controller_manager);
        let scheduler = spawn(
            &bin.join("kube-scheduler"),
            Command::new(bin.join("kube-scheduler"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["--leader-elect=false", "--secure-port=0", "--v=1"]),
            "kube-scheduler",
        )?;
        node.components.push(scheduler);
        node.wait_for("node 127.0.0.1 Ready and untainted", 180, || {
            let ready = api.kubectl(&[
                "get",
                "node",
                "127.0.0.1",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints}",
            ]);
            ready.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "True")
        })?;
        node.wait_for("ServiceAccount default/default", 60, || {
            api.kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .is_ok_and(|o| o.status.success())
        })?;
        Ok(node)
    }

    /// `ctr` on this node's containerd, in the CRI's namespace.
    fn ctr(&self, args: &[&str]) -> Result<String, ServerError> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(other(format!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports an OCI archive ([`crate::oci::build`]) so that pods can use its image
    /// with `imagePullPolicy: Never`.
    pub fn import(&self, archive: &Path) -> Result<(), ServerError> {
        let path = archive.to_string_lossy();
        self.ctr(&["images", "import", "--snapshotter", "overlayfs", &path])
            .map(|_| ())
    }

    /// The pause image, compiled static from `pause.c`.
    fn pause_image(&self) -> Result<PathBuf, ServerError> {
        let src = self.dir.join("pause.c");
        std::fs::write(&src, include_str!("pause.c"))?;
        let binary = self.dir.join("pause");
        let out = Command::new("gcc")
            .args(["-static", "-Os", "-o"])
            .arg(&binary)
            .arg(&src)
            .output()?;
        if !out.status.success() {
            return Err(other(format!("gcc pause.c: {}", String::from_utf8_lossy(&out.stderr))));
        }
        let archive = self.dir.join("pause.tar");
        crate::oci::build(
            &archive,
            PAUSE_IMAGE,
            &[ImageFile {
                source: binary,
                dest: "/pause".into(),
                mode: 0o755,
            }],
            &ImageConfig {
                entrypoint: vec!["/pause".into()],
                ..ImageConfig::default()
            },
        )?;
        Ok(archive)
    }

    /// Logs of the node's processes, for a failing test's message.
    pub fn logs(&self, name: &str) -> String {
        let tail = |f: &str| {
            let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!("{}\n{}", tail(&format!("{name}.log")), tail(&format!("{name}.err.log")))
    }

    /// What a container of a pod has written so far (every restart's log, in order), as
    /// the kubelet keeps it: `podLogsDir/<namespace>_<pod>_<uid>/<container>/<n>.log`,
    /// one CRI line per write (`<time> stdout|stderr F <text>`).
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        let prefix = format!("{namespace}_{pod}_");
        let mut text = String::new();
        let Ok(pods) = std::fs::read_dir(self.dir.join("pod-logs")) else {
            return text;
        };
        for entry in pods.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(entry.path().join(container))
                .map(|d| d.flatten().map(|f| f.path()).collect())
                .unwrap_or_default();
            files.sort();
            for f in files {
                text.push_str(&std::fs::read_to_string(f).unwrap_or_default());
            }
        }
        text
    }

    fn wait_for(&self, what: &str, secs: u64, mut ready: impl FnMut() -> bool) -> Result<(), ServerError> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !ready() {
            if Instant::now() > deadline {
                return Err(other(format!(
                    "{what}: not after {secs} s\n--- kubelet:\n{}\n--- containerd:\n{}",
                    self.logs("kubelet"),
                    self.logs("containerd")
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }
}

/// This process's v1 memory cgroup (the sandbox puts each session in one).
fn own_memory_cgroup() -> Result<String, ServerError> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    Ok(text
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.to_owned())
        })
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned())
}

fn make_cgroup_root(root: &str) -> Result<(), ServerError> {
    for h in HIERARCHIES {
        let base = Path::new("/sys/fs/cgroup").join(h);
        if !base.exists() {
            continue;
        }
        std::fs::create_dir_all(base.join(root.trim_start_matches('/')))?;
    }
    // A new cpuset starts with no CPUs and no memory nodes: copy them down each level.
    let mut at = PathBuf::from("/sys/fs/cgroup/cpuset");
    for part in root.split('/').filter(|p| !p.is_empty()) {
        let child = at.join(part);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if std::fs::read_to_string(child.join(f)).is_ok_and(|v| v.trim().is_empty()) {
                std::fs::write(child.join(f), std::fs::read_to_string(at.join(f))?)?;
            }
        }
        at = child;
    }
    Ok(())
}

fn write_containerd_config(dir: &Path) -> Result<(), ServerError> {
    let d = dir.display();
    for sub in [
        "containerd/root",
        "containerd/state",
        "containerd/opt",
        "containerd/runc",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(
        dir.join("containerd/config.toml"),
        format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  tolerate_missing_hugetlb_controller = true
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
"#
        ),
    )?;
    std::fs::write(
        dir.join("cni/net.d/10-loopback.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "host-network-only", "plugins": [{"type": "loopback"}]}"#,
    )?;
    Ok(())
}

fn kubelet_config(socket: &Path, cgroup_root: &str, port: u16, healthz: u16, dir: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
makeIPTablesUtilChains: false
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization:
  mode: AlwaysAllow
localStorageCapacityIsolation: false
imageGCHighThresholdPercent: 100
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
  imagefs.inodesFree: "0%"
podLogsDir: {logs}
volumePluginDir: {plugins}
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
rotateCertificates: false
serverTLSBootstrap: false
"#,
        socket = socket.display(),
        logs = dir.join("pod-logs").display(),
        plugins = dir.join("volume-plugins").display(),
    )
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        for c in self.components.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Containers outlive containerd and the kubelet: kill and remove each.
        if let Ok(tasks) = self.ctr(&["tasks", "ls", "-q"]) {
            for id in tasks.split_whitespace() {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["tasks", "rm", "-f", id]);
            }
        }
        if let Ok(containers) = self.ctr(&["containers", "ls", "-q"]) {
            for id in containers.split_whitespace() {
                let _ = self.ctr(&["containers", "rm", id]);
            }
        }
        // Whatever is left in the node's cgroups (a shim, a process that escaped).
        let procs = Path::new("/sys/fs/cgroup/pids").join(self.cgroup_root.trim_start_matches('/'));
        for pid in pids_below(&procs) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let prefix = self.dir.to_string_lossy().into_owned();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for m in points {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
        // runc also makes the pods' cgroups in the cgroup2 mount that holds hugetlb.
        for h in HIERARCHIES.iter().chain(&["unified"]) {
            remove_cgroups(
                &Path::new("/sys/fs/cgroup")
                    .join(h)
                    .join(self.cgroup_root.trim_start_matches('/')),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        for (path, value) in &self.sysctls {
            let _ = std::fs::write(path, value);
        }
    }
}

fn pids_below(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(pids_below(&e.path()));
            }
        }
    }
    out
}

/// Removes a cgroup and its children, deepest first (a cgroup is removed with rmdir).
fn remove_cgroups(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroups(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
