//! `kubectl apply -k deploy/` against a real API server, then the controller run with
//! the deployed ServiceAccount's own token: the RBAC must allow everything the code
//! calls (a missing verb fails the migration or the election), and no more is granted.

mod common;

use common::*;
use tenant_migrator_testkit::config_api::sample_config;
use tenant_migrator_testkit::{ConfigApi, KubeApiServer};

const NS: &str = "rag";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_rbac_is_enough_for_everything_the_controller_does() {
    let kube = tokio::task::block_in_place(KubeApiServer::start).expect("kube-apiserver (run tools/setup.sh)");
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    ok(kube.kubectl(&["apply", "-k", deploy]));
    ok(kube.kubectl(&["apply", "-k", &format!("{deploy}/quiesce")]));
    ok(kube.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "crd/tenantmigrations.tenancy.dev",
        "crd/ragstacks.tenancy.dev",
        "--timeout=60s",
    ]));
    for (kind, name) in [
        ("deployment", "tenant-migrator"),
        ("serviceaccount", "tenant-migrator"),
        ("service", "tenant-migrator-metrics"),
    ] {
        ok(kube.kubectl(&["get", kind, name, "-n", "tenant-migrator"]));
    }
    let token = ok(kube.kubectl(&["create", "token", "tenant-migrator", "-n", "tenant-migrator"]));

    ok(kube.kubectl(&["create", "namespace", NS]));
    ok(kube.kubectl(&[
        "create",
        "deployment",
        "rag-api",
        "-n",
        NS,
        "--image=rag-api:1",
        "--replicas=2",
    ]));
    // The stack's Secret lives in the operator's namespace, the only one it may read.
    stack_secret(&kube, "rag-api", &[("token", "t0ken")]);
    let (redis, loaded) = loaded_redis(0.02);
    let before = snapshot(&redis);
    let api = ConfigApi::start(0, Some("t0ken")).await.expect("config API");
    api.insert(SOURCE, sample_config(SOURCE));

    let (dir, kubeconfig) = controller_dir(&kube, "deploy-rbac", NS, Some(token.trim()));
    let log = std::fs::File::create(dir.join("controller.log")).expect("log");
    let port = tenant_migrator_testkit::free_port().expect("port");
    let mut controller = std::process::Command::new(bin())
        .args([
            "controller",
            "--lease-namespace",
            "tenant-migrator",
            "--lease-seconds",
            "5",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "deployed")
        .env("POD_NAMESPACE", "tenant-migrator")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("controller");

    apply_ok(
        &kube,
        &via_stack(&format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: rbac, namespace: {NS}}}\n\
             spec:\n  source: {SOURCE}\n  target: {TARGET}\n  \
             config: {{url: '{}', tokenSecretRef: {{name: rag-api, key: token}}}}\n  \
             redis: {{url: '{}'}}\n  qdrant: {{enabled: false}}\n  memgraph: {{enabled: false}}\n  \
             quiesce: [{{kind: Deployment, name: rag-api}}]\n",
            api.url(),
            redis.url()
        )),
    );
    let tm = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "rbac", finished));
    let _ = controller.kill();
    let _ = controller.wait();
    let logs = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}\n{logs}");
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the role lacks a permission:\n{logs}"
    );
    let holder = ok(kube.kubectl(&[
        "get",
        "lease",
        "tenant-migrator",
        "-n",
        "tenant-migrator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    assert_eq!(holder, "deployed");
    let events = ok(kube.kubectl(&["get", "events", "-n", NS, "-o", "json"]));
    assert!(
        events.contains("MigrationSucceeded"),
        "no Event was published: {events}"
    );
    assert_eq!(tm["status"]["phases"]["redis"]["done"], loaded.tenant_keys);
    assert_migrated(&before, &snapshot(&redis), true);
    let replicas = ok(kube.kubectl(&[
        "get",
        "deployment",
        "rag-api",
        "-n",
        NS,
        "-o",
        "jsonpath={.spec.replicas} {.metadata.generation}",
    ]));
    assert_eq!(replicas, "2 3", "scaled to zero and back through the quiesce role");

    // Least privilege: the ServiceAccount cannot touch what the controller never needs.
    let sa = "system:serviceaccount:tenant-migrator:tenant-migrator";
    for (verb, resource, ns, want) in [
        ("delete", "tenantmigrations.tenancy.dev", NS, "no"),
        // Secrets: read one by name in its own namespace, nothing anywhere else.
        ("get", "secrets", NS, "no"),
        ("get", "secrets", "kube-system", "no"),
        ("get", "secrets", "tenant-migrator", "yes"),
        ("list", "secrets", "tenant-migrator", "no"),
        ("update", "secrets", "tenant-migrator", "no"),
        ("create", "deployments.apps", NS, "no"),
        ("patch", "deployments.apps", NS, "no"),
        // Stacks are the admins': read, never written.
        ("watch", "ragstacks.tenancy.dev", "", "yes"),
        ("create", "ragstacks.tenancy.dev", "", "no"),
        ("patch", "ragstacks.tenancy.dev", "", "no"),
        // Ledgers of deleted migrations: ConfigMaps in its own namespace only.
        ("patch", "configmaps", "tenant-migrator", "yes"),
        ("delete", "configmaps", "tenant-migrator", "yes"),
        ("list", "configmaps", "tenant-migrator", "no"),
        ("get", "configmaps", NS, "no"),
    ] {
        assert_eq!(
            can_i(&kube, sa, verb, resource, ns),
            want,
            "{sa} may {verb} {resource} in {ns:?}: expected {want}"
        );
    }
    // The quiesce role: the scale subresource, read and patched, nothing else.
    for (verb, want) in [("get", "yes"), ("patch", "yes"), ("update", "no"), ("delete", "no")] {
        let out = kube
            .kubectl(&[
                "auth",
                "can-i",
                verb,
                "statefulsets.apps",
                "--subresource=scale",
                "-n",
                NS,
                "--as",
                sa,
            ])
            .expect("kubectl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "{verb} statefulsets/scale"
        );
    }
}

#[test]
fn the_image_and_the_deployment_run_as_non_root() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).expect("Dockerfile");
    let user = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the final stage sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric USER");
    assert!(uid != 0, "the image runs as root");
    assert!(
        dockerfile.contains("FROM scratch"),
        "the final image should carry nothing but the binary and the CA bundle"
    );
    assert!(
        dockerfile.contains("/etc/ssl/certs/ca-certificates.crt"),
        "without a CA bundle no TLS server can be verified"
    );

    let deployment: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/deployment.yaml")).expect("read"),
    )
    .expect("YAML");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], serde_yaml::Value::Bool(true));
    let container = &pod["containers"][0]["securityContext"];
    assert_eq!(container["allowPrivilegeEscalation"], serde_yaml::Value::Bool(false));
    assert_eq!(container["readOnlyRootFilesystem"], serde_yaml::Value::Bool(true));
    assert_eq!(container["capabilities"]["drop"][0], serde_yaml::Value::from("ALL"));
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_controller_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/tenant-migrator-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("the dashboard is JSON");
    // A family is exported once it has a sample: give each one.
    let metrics = tenant_migrator::telemetry::Metrics::default();
    let label = tenant_migrator::telemetry::StoreLabel::of(tenant_migrator::api::Store::Redis);
    for family in [&metrics.items, &metrics.batches, &metrics.retries, &metrics.failures] {
        family.get_or_create(&label).inc();
    }
    metrics.phase_seconds.get_or_create(&label).observe(1.0);
    let exported = metrics.encode();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(panel["title"].is_string() && panel["gridPos"].is_object(), "{panel}");
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    let mut checked = 0;
    for expr in &exprs {
        for (i, _) in expr.match_indices("tenant_migrator_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Samples carry suffixes that the family's TYPE line does not.
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                exported.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which the controller does not export:\n{exported}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} metric references in {exprs:?}");
}
