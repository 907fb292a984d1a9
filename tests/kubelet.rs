//! The operator the way users run it: its image, built from what the Dockerfile's final
//! stage holds, on a real one-node cluster (containerd, runc, kubelet, controller-manager,
//! scheduler; `testkit::KubeNode`), installed with `helm install` of the chart. The pod
//! must turn Ready through its probes, run as the non-root user on a read-only root
//! filesystem, serve metrics, and migrate a tenant applied with kubectl, exactly.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tenant_migrator_testkit::oci::{self, ImageFile};
use tenant_migrator_testkit::{KubeApiServer, KubeNode, cached_tool};

const IMAGE: &str = "localhost/tenant-migrator:test";

/// The operator image: the final stage of the Dockerfile, its build-stage files taken
/// from this machine — the binary under test for the one cargo builds, the CA bundle
/// from the host — plus the shared libraries the binary links (the Dockerfile's is
/// static musl; this machine has no musl target). Refuses a COPY it cannot map.
fn operator_image(dir: &Path) -> PathBuf {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).expect("Dockerfile");
    let stage = oci::final_stage(&dockerfile).expect("the Dockerfile's final stage");
    assert_eq!(
        stage.base, "scratch",
        "the final stage has no base image: nothing else is in it"
    );
    let mut files = Vec::new();
    for (from, to) in &stage.copies {
        let source = if from.ends_with("/target/release/tenant-migrator") {
            PathBuf::from(bin())
        } else if from == "/etc/ssl/certs/ca-certificates.crt" {
            PathBuf::from(from)
        } else {
            panic!("the Dockerfile copies {from}, which this test does not know how to provide");
        };
        let mode = if to.ends_with(".crt") { 0o644 } else { 0o755 };
        files.push(ImageFile {
            source,
            dest: to.clone(),
            mode,
        });
    }
    files.extend(oci::shared_libraries(Path::new(bin())).expect("ldd"));
    let archive = dir.join("operator.tar");
    oci::build(&archive, IMAGE, &files, &stage.config).expect("OCI archive");
    archive
}

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/tenant-migrator");

/// One node at a time on this machine: two kubelets would share its cgroups and kernel
/// settings.
static ONE_NODE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A one-node cluster with the operator image imported, and what the tests need to
/// install and watch the operator on it.
struct Cluster {
    // Fields drop in order: the node before its API server.
    node: KubeNode,
    api: KubeApiServer,
    dir: PathBuf,
    kubeconfig: PathBuf,
    /// The operator's metrics port (on the host network).
    metrics: u16,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    fn start(name: &str) -> Self {
        let one = ONE_NODE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let api = KubeApiServer::start_for_node().expect("kube-apiserver (run tools/setup.sh)");
        let started = Instant::now();
        let node = KubeNode::start(&api).expect("the test node (run tools/setup.sh)");
        eprintln!("node Ready in {:.1} s", started.elapsed().as_secs_f64());
        let dir = state_dir(name);
        std::fs::create_dir_all(&dir).expect("dir");
        node.import(&operator_image(&dir)).expect("import the operator image");
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, OPERATOR_NS).expect("kubeconfig");
        let metrics = tenant_migrator_testkit::free_port().expect("port");
        Self {
            node,
            api,
            dir,
            kubeconfig,
            metrics,
            _one: one,
        }
    }

    /// `helm` against the test API server.
    fn helm(&self, args: &[&str]) -> String {
        let home = |d: &str| self.dir.join(d);
        let out = Command::new(cached_tool("helm"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home("helm-cache"))
            .env("HELM_CONFIG_HOME", home("helm-config"))
            .env("HELM_DATA_HOME", home("helm-data"))
            .args(args)
            .output()
            .expect("helm (run tools/setup.sh)");
        assert!(out.status.success(), "helm {args:?}: {}", text(&out));
        text(&out)
    }

    /// `helm install` of the chart with the test's values (local image, host network,
    /// one replica, a free metrics port) and `sets`.
    fn install_chart(&self, sets: &str) {
        // No kube-proxy on the node: the in-cluster client is pointed at the API server itself.
        let env = format!(
            "extraEnv=[{{\"name\":\"KUBERNETES_SERVICE_HOST\",\"value\":\"127.0.0.1\"}},\
             {{\"name\":\"KUBERNETES_SERVICE_PORT\",\"value\":\"{}\"}}]",
            self.api.port()
        );
        let mut args = vec![
            "install",
            "tenant-migrator",
            CHART,
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--set",
            "image.repository=localhost/tenant-migrator,image.tag=test,image.pullPolicy=Never",
            "--set",
            "replicas=1,hostNetwork=true",
            "--set-json",
            &env,
        ];
        let port = format!("metrics.port={}", self.metrics);
        args.extend(["--set", &port]);
        if !sets.is_empty() {
            args.extend(["--set", sets]);
        }
        self.helm(&args);
    }

    /// The operator pods that are not being deleted.
    fn operator_pods(&self) -> Vec<String> {
        let names = ok(self.api.kubectl(&[
            "get",
            "pods",
            "-n",
            OPERATOR_NS,
            "-l",
            "app.kubernetes.io/name=tenant-migrator",
            "-o",
            "go-template={{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}} {{end}}{{end}}",
        ]));
        names.split_whitespace().map(str::to_owned).collect()
    }

    /// Waits until exactly one operator pod, not `except`, is Ready; returns its name.
    fn wait_operator_ready(&self, except: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let pods: Vec<String> = self
                .operator_pods()
                .into_iter()
                .filter(|p| Some(p.as_str()) != except)
                .collect();
            if let [pod] = pods.as_slice() {
                let ready = self.pod_field(pod, "{.status.conditions[?(@.type==\"Ready\")].status}");
                if ready.trim() == "True" {
                    return pod.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no operator pod turned Ready: {}\n{}\n--- kubelet:\n{}",
                ok(self
                    .api
                    .kubectl(&["get", "deployment,replicaset,pods,events", "-n", OPERATOR_NS])),
                ok(self.api.kubectl(&["describe", "pod", "-n", OPERATOR_NS])),
                self.node.logs("kubelet")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until `pod` has held the Lease for `secs` without taking it again (its
    /// `renewTime` that long after its `acquireTime`): a leader that gives the Lease up
    /// and takes it back — a restart keeps the pod's name — starts over.
    fn wait_leading_for(&self, pod: &str, secs: i64) {
        let deadline = Instant::now() + Duration::from_secs(3 * secs.unsigned_abs() + 30);
        loop {
            let lease = self.lease();
            let spec = &lease["spec"];
            let time = |field: &str| spec[field].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
            if spec["holderIdentity"] == pod
                && let (Some(acquired), Some(renewed)) = (time("acquireTime"), time("renewTime"))
                && renewed.duration_since(acquired).as_secs() >= secs
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pod} did not hold the Lease for {secs} s in a row: {lease:#}\n{}",
                self.node.pod_log(OPERATOR_NS, pod, "controller")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Field `field` of every Event in `namespace` with reason `reason`.
    fn events(&self, namespace: &str, reason: &str, field: &str) -> String {
        let selector = format!("reason={reason}");
        let jsonpath = format!("jsonpath={{.items[*].{field}}}");
        ok(self.api.kubectl(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &selector,
            "-o",
            &jsonpath,
        ]))
    }

    /// The operator's Lease as the API server has it.
    fn lease(&self) -> serde_json::Value {
        let json = ok(self
            .api
            .kubectl(&["get", "lease", "tenant-migrator", "-n", OPERATOR_NS, "-o", "json"]));
        serde_json::from_str(&json).expect("Lease JSON")
    }

    /// How often the container of operator pod `pod` has restarted.
    fn restarts(&self, pod: &str) -> String {
        self.pod_field(pod, "{.status.containerStatuses[0].restartCount}")
    }

    /// A field of operator pod `pod`, by JSONPath.
    fn pod_field(&self, pod: &str, path: &str) -> String {
        let jsonpath = format!("jsonpath={path}");
        ok(self
            .api
            .kubectl(&["get", "pod", pod, "-n", OPERATOR_NS, "-o", &jsonpath]))
    }

    /// The operator's host process, by its command line.
    fn operator_processes(&self) -> Vec<u32> {
        let addr = format!("0.0.0.0:{}", self.metrics);
        processes_starting_with(&["/tenant-migrator", "controller", "--metrics-addr", &addr])
    }
}

/// The host processes whose command line starts with `args` (a container's among them).
fn processes_starting_with(args: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            std::fs::read(e.path().join("cmdline"))
                .ok()?
                .starts_with(&want)
                .then_some(pid)
        })
        .collect()
}

#[test]
fn the_chart_on_a_real_node_runs_a_ready_non_root_operator_that_migrates_exactly() {
    let c = Cluster::start("kubelet-chart");
    let (api, node, dir, metrics) = (&c.api, &c.node, c.dir.as_path(), c.metrics);
    c.install_chart("quiesce.enabled=true");
    let pod = c.wait_operator_ready(None);

    // The container as the kernel sees it: the chart's user, and / mounted read-only.
    let [pid] = c.operator_processes()[..] else {
        panic!("not one operator process on the node: {:?}", c.operator_processes());
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65532"; 4],
        "the operator runs as {uid}"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("the container's root mount");
    let options = root.split_whitespace().nth(5).unwrap_or_default();
    assert!(
        options.split(',').any(|o| o == "ro"),
        "root filesystem mounted {options}"
    );
    // A migration applied with kubectl, run by the pod.
    let (redis, _) = loaded_redis(0.02);
    let before = snapshot(&redis);
    ok(api.kubectl(&["create", "namespace", "rag"]));
    apply_ok(
        api,
        &redis_only_tm(
            "on-node",
            "rag",
            SOURCE,
            TARGET,
            &format!("{{url: 'redis://127.0.0.1:{}/'}}", redis.port()),
            "",
        ),
    );
    let tm = wait_for_tm(api, "rag", "on-node", finished);
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_migrated(&before, &snapshot(&redis), true);
    // Prometheus scrapes the pod: the items it migrated are counted.
    let (status, scraped) = http_get(metrics, "/metrics").expect("the pod's metrics port");
    assert_eq!(status, 200, "metrics: {scraped}");
    let items = scraped
        .lines()
        .find(|l| l.starts_with("tenant_migrator_items_total") && l.contains("redis"))
        .unwrap_or_else(|| panic!("no Redis items counted: {scraped}"));
    let counted: f64 = items
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(counted > 0.0, "{items}");

    // spec.quiesce on a Deployment whose pods take 3 s to stop after SIGTERM and, as
    // their last act, RPUSH to Redis: in the server's own order of commands (MONITOR),
    // both pushes come before the migration's first write.
    let (redis, _) = loaded_redis(0.02);
    let before = snapshot(&redis);
    node.import(&slow_stopping_image(dir))
        .expect("import the rag-api image");
    apply_ok(api, &rag_api(redis.port()));
    ok(api.kubectl(&["rollout", "status", "deployment/rag-api", "-n", "rag", "--timeout=120s"]));
    let monitor = Monitor::start(redis.port());
    apply_ok(
        api,
        &redis_only_tm(
            "quiesced",
            "rag",
            SOURCE,
            TARGET,
            &format!("{{url: 'redis://127.0.0.1:{}/'}}", redis.port()),
            "  quiesce: [{kind: Deployment, name: rag-api}]\n",
        ),
    );
    let tm = wait_for_tm(api, "rag", "quiesced", finished);
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    let commands = monitor.stop();
    let stops: Vec<usize> = positions(&commands, "\"RPUSH\" \"rag-api:stopped\"");
    let writes = positions(&commands, &format!("\"RESTORE\" \"{TARGET}_"));
    assert_eq!(stops.len(), 2, "both rag-api pods record their stop");
    assert!(!writes.is_empty(), "the migration wrote nothing");
    assert!(
        stops.iter().all(|s| *s < writes[0]),
        "the first write (command {}) came before a pod had stopped (commands {stops:?})",
        writes[0]
    );
    let mut after = snapshot(&redis);
    after.keys.remove(b"rag-api:stopped".as_slice());
    assert_migrated(&before, &after, true);
    ok(api.kubectl(&["rollout", "status", "deployment/rag-api", "-n", "rag", "--timeout=120s"]));
    let replicas = ok(api.kubectl(&[
        "get",
        "deployment",
        "rag-api",
        "-n",
        "rag",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]));
    assert_eq!(replicas.trim(), "2", "rag-api got its replicas back");
    // Leading for longer than the Lease's duration (15 s) without a restart.
    c.wait_leading_for(&pod, 20);
    assert_eq!(c.operator_processes(), [pid], "the operator process was replaced");
    assert_eq!(
        c.restarts(&pod),
        "0",
        "the operator restarted:\n{}",
        node.pod_log(OPERATOR_NS, &pod, "controller")
    );
}

/// The RAG API stand-in: `slowstop.c`, static, as an image.
fn slow_stopping_image(dir: &Path) -> PathBuf {
    let binary = dir.join("slowstop");
    let out = Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&binary)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/slowstop.c"))
        .output()
        .expect("gcc");
    assert!(out.status.success(), "gcc slowstop.c: {}", text(&out));
    let archive = dir.join("slowstop.tar");
    let files = [ImageFile {
        source: binary,
        dest: "/slowstop".into(),
        mode: 0o755,
    }];
    let config = oci::ImageConfig {
        entrypoint: vec!["/slowstop".into()],
        ..oci::ImageConfig::default()
    };
    oci::build(&archive, "localhost/tm-slowstop:1", &files, &config).expect("OCI archive");
    archive
}

fn rag_api(redis_port: u16) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: rag-api, namespace: rag}}\nspec:\n  replicas: 2\n  \
         selector: {{matchLabels: {{app: rag-api}}}}\n  template:\n    metadata: {{labels: {{app: rag-api}}}}\n    \
         spec:\n      hostNetwork: true\n      terminationGracePeriodSeconds: 30\n      containers:\n        \
         - {{name: api, image: 'localhost/tm-slowstop:1', imagePullPolicy: Never, args: ['{redis_port}']}}\n"
    )
}

/// Indexes of the commands that contain `needle`.
fn positions(commands: &[String], needle: &str) -> Vec<usize> {
    commands
        .iter()
        .enumerate()
        .filter(|(_, c)| c.contains(needle))
        .map(|(i, _)| i)
        .collect()
}

/// `MONITOR` on a Redis: every command it runs, in the order it runs them.
struct Monitor {
    stream: std::net::TcpStream,
    reader: std::thread::JoinHandle<Vec<String>>,
}

impl Monitor {
    fn start(port: u16) -> Self {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.write_all(b"MONITOR\r\n").expect("MONITOR");
        let mut lines = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let mut ok = String::new();
        std::io::BufRead::read_line(&mut lines, &mut ok).expect("+OK");
        assert_eq!(ok.trim(), "+OK");
        let reader = std::thread::spawn(move || std::io::BufRead::lines(lines).map_while(Result::ok).collect());
        Self { stream, reader }
    }

    fn stop(self) -> Vec<String> {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.reader.join().expect("the MONITOR reader")
    }
}

/// The kernel's start time of a process (clock ticks after boot), to tell a process
/// from a later one that reuses its pid.
fn started_at(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, which may hold spaces): the
    // start time is field 22 of the whole line, the 20th after the name.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// `helm upgrade` with a changed value rolls the operator pod while a Move runs: the old
/// pod stops at a batch boundary on SIGTERM, the new one takes the Lease and resumes the
/// same run, which ends exact; no second operator process ever exists beside the one
/// running it. Then a migration deleted mid-run goes through the real finalizer: it
/// stops at a batch boundary, is let go, and leaves every key whole on one side.
#[test]
fn a_rollout_mid_migration_resumes_in_the_new_pod_and_a_deletion_stops_at_a_batch_boundary() {
    let c = Cluster::start("kubelet-rollout");
    c.install_chart("");
    let old_pod = c.wait_operator_ready(None);
    let [old_pid] = c.operator_processes()[..] else {
        panic!("not one operator process: {:?}", c.operator_processes());
    };
    let old_start = started_at(old_pid);
    let (redis, _) = loaded_redis(0.02);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    ok(c.api.kubectl(&["create", "namespace", "rag"]));
    let through_proxy = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port());
    apply_ok(
        &c.api,
        &redis_only_tm("rolled", "rag", SOURCE, TARGET, &through_proxy, ""),
    );
    let running = wait_for_tm(&c.api, "rag", "rolled", redis_past_batch(3));
    let started = running["status"]["phases"]["redis"]["startTime"].clone();
    assert!(started.is_string(), "{running:#}");

    // Traffic to Redis held, so that the run is still mid-batch when SIGTERM arrives
    // whatever this machine's speed; let go once the old pod has logged the signal.
    proxy.hold(true);
    c.helm(&[
        "upgrade",
        "tenant-migrator",
        CHART,
        "--namespace",
        OPERATOR_NS,
        "--reuse-values",
        "--set",
        "maxConcurrentMigrations=3",
    ]);
    let upgraded = Instant::now();
    let deadline = upgraded + Duration::from_secs(120);
    let mut released = false;
    // While the old process lives it is the only operator process on the node.
    while started_at(old_pid).is_some() && started_at(old_pid) == old_start {
        let others: Vec<u32> = c.operator_processes().into_iter().filter(|p| *p != old_pid).collect();
        assert!(
            others.is_empty(),
            "operator processes {others:?} run beside {old_pid}, which still runs the migration"
        );
        if !released
            && c.node
                .pod_log(OPERATOR_NS, &old_pod, "controller")
                .contains("running migrations stop at their next batch boundary")
        {
            proxy.hold(false);
            released = true;
        }
        assert!(
            Instant::now() < deadline,
            "the old operator pod never stopped:\n{}",
            c.node.pod_log(OPERATOR_NS, &old_pod, "controller")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.hold(false);
    assert!(
        released,
        "the old pod stopped before logging SIGTERM:\n{}",
        c.node.pod_log(OPERATOR_NS, &old_pod, "controller")
    );
    eprintln!(
        "old pod stopped {:.1} s after the upgrade",
        upgraded.elapsed().as_secs_f64()
    );
    let new_pod = c.wait_operator_ready(Some(&old_pod));
    eprintln!(
        "new pod Ready {:.1} s after the upgrade",
        upgraded.elapsed().as_secs_f64()
    );
    let tm = wait_for_tm(&c.api, "rag", "rolled", finished);
    eprintln!(
        "migration finished {:.1} s after the upgrade",
        upgraded.elapsed().as_secs_f64()
    );
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_eq!(
        tm["status"]["phases"]["redis"]["startTime"], started,
        "the new pod ran the phase again instead of resuming it: {tm:#}"
    );
    assert_migrated(&before, &snapshot(&redis), true);
    assert_eq!(
        c.lease()["spec"]["holderIdentity"],
        new_pod.as_str(),
        "the new pod holds the Lease"
    );
    let events = c.events("rag", "MigrationInterrupted", "reportingInstance");
    assert_eq!(events.trim(), old_pod, "the old pod said it stopped the run");
    // Deleted mid-run: the finalizer holds the object until the run has stopped at a
    // batch boundary.
    let (redis, _) = loaded_redis(0.02);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let through_proxy = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 5}}", proxy.port());
    apply_ok(
        &c.api,
        &redis_only_tm("deleted", "rag", SOURCE, TARGET, &through_proxy, ""),
    );
    wait_for_tm(&c.api, "rag", "deleted", redis_past_batch(3));
    // Redis traffic held from before the deletion until the API server has marked the
    // object deleted: the run is mid-copy when its finalizer acts, whatever the speed.
    proxy.hold(true);
    ok(c.api.kubectl(&["delete", "tm", "deleted", "-n", "rag", "--wait=false"]));
    wait_for_tm(&c.api, "rag", "deleted", |tm| {
        tm["metadata"]["deletionTimestamp"].is_string()
    });
    proxy.hold(false);
    ok(c.api
        .kubectl(&["wait", "--for=delete", "tm/deleted", "-n", "rag", "--timeout=90s"]));
    let events = c.events("rag", "MigrationDeleted", "message");
    assert!(events.contains("stopped at a batch boundary"), "{events}");
    // Stopped mid-copy: the source is whole (removal starts only after every copy is
    // verified), what was copied is exact, and nothing else changed.
    let after = snapshot(&redis);
    assert_eq!(digest_outside(&before), digest_outside(&after));
    let mut copied = 0;
    let mut total = 0;
    for (key, value) in before.iter().filter(|(k, _)| is_tenant_key(k, SOURCE)) {
        let want = Some((&value.kind, &value.value));
        let name = String::from_utf8_lossy(key);
        assert_eq!(
            after.get(key).map(|s| (&s.kind, &s.value)),
            want,
            "source {name} changed"
        );
        let target = [TARGET.as_bytes(), &key[SOURCE.len()..]].concat();
        if let Some(copy) = after.get(&target) {
            assert_eq!(Some((&copy.kind, &copy.value)), want, "the copy of {name} differs");
            copied += 1;
        }
        total += 1;
    }
    assert!(
        copied > 0 && copied < total,
        "expected a partial copy, got {copied} of {total}"
    );
    c.wait_leading_for(&new_pod, 20);
    assert_eq!(
        c.restarts(&new_pod),
        "0",
        "the new operator pod restarted:\n{}",
        c.node.pod_log(OPERATOR_NS, &new_pod, "controller")
    );
}

/// `kubectl apply -k` of an overlay of `deploy/` that changes only what this node needs
/// (the local image, one replica on the host network, a free metrics port, the API
/// server's address), then a Move of large values — five 20 MB documents, a 200 MB hash,
/// 40 MB of each other type — by the pod under the 256 MiB limit that the kubelet's
/// memory cgroup enforces: it ends exact, and the container was never OOM-killed.
#[test]
fn deploy_applied_with_kubectl_runs_a_large_values_move_within_its_enforced_memory_limit() {
    const LIMIT: u64 = 256 << 20;
    let c = Cluster::start("kubelet-deploy");
    let overlay = c.dir.join("overlay");
    std::fs::create_dir_all(&overlay).expect("overlay dir");
    // kustomize takes a base directory by a relative path only.
    let up = "../".repeat(overlay.components().count() - 1);
    let base = format!(
        "{up}{}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy").trim_start_matches('/')
    );
    let port = c.metrics;
    let api_port = c.api.port();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{base}]\n\
             images: [{{name: tenant-migrator, newName: localhost/tenant-migrator, newTag: test}}]\n\
             patches:\n  - target: {{kind: Deployment, name: tenant-migrator}}\n    patch: |\n      \
             - {{op: replace, path: /spec/replicas, value: 1}}\n      \
             - {{op: add, path: /spec/template/spec/hostNetwork, value: true}}\n      \
             - {{op: add, path: /spec/template/spec/dnsPolicy, value: ClusterFirstWithHostNet}}\n      \
             - {{op: add, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}}\n      \
             - {{op: replace, path: /spec/template/spec/containers/0/args, value: [controller, --metrics-addr, \"0.0.0.0:{port}\"]}}\n      \
             - {{op: replace, path: /spec/template/spec/containers/0/ports/0/containerPort, value: {port}}}\n      \
             - {{op: add, path: /spec/template/spec/containers/0/env/-, value: {{name: KUBERNETES_SERVICE_HOST, value: 127.0.0.1}}}}\n      \
             - {{op: add, path: /spec/template/spec/containers/0/env/-, value: {{name: KUBERNETES_SERVICE_PORT, value: \"{api_port}\"}}}}\n"
        ),
    )
    .expect("kustomization");
    let overlay_arg = overlay.to_string_lossy().into_owned();
    ok(c.api.kubectl(&["apply", "-k", &overlay_arg]));
    let pod = c.wait_operator_ready(None);
    let [pid] = c.operator_processes()[..] else {
        panic!("not one operator process: {:?}", c.operator_processes());
    };
    // The container's memory cgroup (v1) as the kubelet and runc made it.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let memory = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, path)| path.to_owned()))
        .expect("the operator's memory cgroup");
    let read = |file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{memory}/{file}"))
            .unwrap_or_else(|e| panic!("{memory}/{file}: {e}"))
    };
    let number = |file: &str| -> u64 { read(file).trim().parse().expect("a number") };
    assert_eq!(number("memory.limit_in_bytes"), LIMIT, "the container's memory limit");

    let (redis, _) = loaded_redis(0.01);
    load_large_values(&redis);
    let before = snapshot(&redis);
    ok(c.api.kubectl(&["create", "namespace", "rag"]));
    let url = format!("{{url: 'redis://127.0.0.1:{}/'}}", redis.port());
    apply_ok(&c.api, &redis_only_tm("large", "rag", SOURCE, TARGET, &url, ""));
    let started = Instant::now();
    let tm = wait_for_tm_within(&c.api, "rag", "large", 600, finished);
    c.wait_leading_for(&pod, 20);
    eprintln!("large-values Move in the pod: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    let peak = number("memory.max_usage_in_bytes");
    eprintln!(
        "the operator container's peak memory: {} MiB of {} MiB",
        peak >> 20,
        LIMIT >> 20
    );
    let oom_kills = read("memory.oom_control")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim().to_owned()))
        .unwrap_or_else(|| "0".into());
    assert_eq!(oom_kills, "0", "the operator was OOM-killed (peak {peak} bytes)");
    assert_eq!(
        c.restarts(&pod),
        "0",
        "the operator restarted:\n{}",
        c.node.pod_log(OPERATOR_NS, &pod, "controller")
    );
    assert_eq!(
        c.operator_processes(),
        [pid],
        "the same process ran the whole migration"
    );
    let after = snapshot(&redis);
    assert_migrated(&before, &after, true);
    assert_eq!(digest_outside(&before), digest_outside(&after));
}
