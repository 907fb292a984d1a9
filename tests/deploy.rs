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
    ok(kube.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "crd/tenantmigrations.tenancy.dev",
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
        "secret",
        "generic",
        "rag-api",
        "-n",
        NS,
        "--from-literal=token=t0ken",
    ]));
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
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("controller");

    apply_ok(
        &kube,
        &format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: rbac, namespace: {NS}}}\n\
             spec:\n  source: {SOURCE}\n  target: {TARGET}\n  \
             config: {{url: '{}', tokenSecretRef: {{name: rag-api, key: token}}}}\n  \
             redis: {{url: '{}'}}\n  qdrant: {{enabled: false}}\n  memgraph: {{enabled: false}}\n",
            api.url(),
            redis.url()
        ),
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

    // Least privilege: the ServiceAccount cannot touch what the controller never needs.
    let sa = "system:serviceaccount:tenant-migrator:tenant-migrator";
    for (verb, resource) in [
        ("delete", "tenantmigrations.tenancy.dev"),
        ("list", "secrets"),
        ("create", "deployments.apps"),
        ("update", "secrets"),
    ] {
        let out = kube
            .kubectl(&["auth", "can-i", verb, resource, "-n", NS, "--as", sa])
            .expect("kubectl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{sa} may {verb} {resource}"
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
        "the final image should carry nothing but the binary"
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
