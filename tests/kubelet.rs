//! The operator the way users run it: its image, built from what the Dockerfile's final
//! stage holds, on a real one-node cluster (containerd, runc, kubelet, controller-manager,
//! scheduler; `testkit::KubeNode`), installed with `helm install` of the chart. The pod
//! must turn Ready through its probes, run as the non-root user on a read-only root
//! filesystem, serve metrics, and migrate a tenant applied with kubectl, exactly.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// `helm` against the test API server.
fn helm(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(cached_tool("helm"))
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", kubeconfig.with_file_name("helm-cache"))
        .env("HELM_CONFIG_HOME", kubeconfig.with_file_name("helm-config"))
        .env("HELM_DATA_HOME", kubeconfig.with_file_name("helm-data"))
        .args(args)
        .output()
        .expect("helm (run tools/setup.sh)");
    assert!(out.status.success(), "helm {args:?}: {}", text(&out));
    text(&out)
}

/// The host process of a container: the one whose command line starts with `args`.
fn process_starting_with(args: &[&str]) -> Option<u32> {
    let want: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        std::fs::read(e.path().join("cmdline"))
            .ok()?
            .starts_with(&want)
            .then_some(pid)
    })
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the pod's port");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_on_a_real_node_runs_a_ready_non_root_operator_that_migrates_exactly() {
    let api = tokio::task::block_in_place(KubeApiServer::start_for_node).expect("kube-apiserver (run tools/setup.sh)");
    let started = std::time::Instant::now();
    let node = tokio::task::block_in_place(|| KubeNode::start(&api)).expect("the test node (run tools/setup.sh)");
    eprintln!("node Ready in {:.1} s", started.elapsed().as_secs_f64());
    let dir = state_dir("kubelet-chart");
    std::fs::create_dir_all(&dir).expect("dir");
    node.import(&operator_image(&dir)).expect("import the operator image");

    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, OPERATOR_NS).expect("kubeconfig");
    let metrics = tenant_migrator_testkit::free_port().expect("port");
    // No kube-proxy on the node: the in-cluster client is pointed at the API server itself.
    let env = format!(
        "extraEnv=[{{\"name\":\"KUBERNETES_SERVICE_HOST\",\"value\":\"127.0.0.1\"}},\
         {{\"name\":\"KUBERNETES_SERVICE_PORT\",\"value\":\"{}\"}}]",
        api.port()
    );
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/tenant-migrator");
    helm(
        &kubeconfig,
        &[
            "install",
            "tenant-migrator",
            chart,
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--set",
            "image.repository=localhost/tenant-migrator,image.tag=test,image.pullPolicy=Never",
            "--set",
            "replicas=1,hostNetwork=true,quiesce.enabled=true",
            "--set",
            &format!("metrics.port={metrics}"),
            "--set-json",
            &env,
        ],
    );
    // `kubectl wait -l` fails at once while no pod matches: first the ReplicaSet's pod.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while ok(api.kubectl(&["get", "pods", "-n", OPERATOR_NS, "-o", "name"]))
        .trim()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no operator pod was made: {}",
            ok(api.kubectl(&["get", "deployment,replicaset,events", "-n", OPERATOR_NS]))
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let ready = api.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app.kubernetes.io/name=tenant-migrator",
        "-n",
        OPERATOR_NS,
        "--timeout=180s",
    ]);
    let ready = ready.expect("kubectl");
    assert!(
        ready.status.success(),
        "the operator pod never turned Ready: {}\n{}\n--- kubelet:\n{}",
        text(&ready),
        ok(api.kubectl(&["describe", "pod", "-n", OPERATOR_NS])),
        node.logs("kubelet")
    );

    // The container as the kernel sees it: the chart's user, and / mounted read-only.
    let addr = format!("0.0.0.0:{metrics}");
    let pid = process_starting_with(&["/tenant-migrator", "controller", "--metrics-addr", &addr])
        .expect("the operator's process on the node");
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
        &api,
        &redis_only_tm(
            "on-node",
            "rag",
            SOURCE,
            TARGET,
            &format!("{{url: 'redis://127.0.0.1:{}/'}}", redis.port()),
            "",
        ),
    );
    let tm = wait_for_tm(&api, "rag", "on-node", finished);
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_migrated(&before, &snapshot(&redis), true);
    // Prometheus scrapes the pod: the items it migrated are counted.
    let scraped = http_get(metrics, "/metrics");
    assert!(
        scraped.starts_with("HTTP/1.0 200") || scraped.starts_with("HTTP/1.1 200"),
        "metrics: {scraped}"
    );
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
    node.import(&slow_stopping_image(&dir))
        .expect("import the rag-api image");
    apply_ok(&api, &rag_api(redis.port()));
    ok(api.kubectl(&["rollout", "status", "deployment/rag-api", "-n", "rag", "--timeout=120s"]));
    let monitor = Monitor::start(redis.port());
    apply_ok(
        &api,
        &redis_only_tm(
            "quiesced",
            "rag",
            SOURCE,
            TARGET,
            &format!("{{url: 'redis://127.0.0.1:{}/'}}", redis.port()),
            "  quiesce: [{kind: Deployment, name: rag-api}]\n",
        ),
    );
    let tm = wait_for_tm(&api, "rag", "quiesced", finished);
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
    drop(node);
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
