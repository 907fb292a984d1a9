//! The CustomResourceDefinition against a real kube-apiserver (built from Go modules
//! by tools/envtest): accepted, established, printer columns served, field
//! descriptions in `kubectl explain`, and bad ids, source == target and changes to
//! source, target or mode rejected by the schema itself (patterns and CEL rules).

mod common;

use std::io::Write;
use std::process::Stdio;

use tenant_migrator_testkit::KubeApiServer;

fn ok(o: std::io::Result<std::process::Output>) -> String {
    let o = o.expect("run kubectl (the image's client)");
    let all = common::text(&o);
    assert!(o.status.success(), "{all}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn apply(kube: &KubeApiServer, yaml: &str) -> std::process::Output {
    let mut child = kube
        .kubectl_cmd()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    child.wait_with_output().expect("kubectl")
}

#[test]
fn the_crd_is_served_by_a_real_api_server_and_validates_ids() {
    let kube = KubeApiServer::start().expect("kube-apiserver (run tools/setup.sh)");
    let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/tenantmigrations.yaml");
    ok(kube.kubectl(&["apply", "--server-side", "-f", crd]));
    ok(kube.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "crd/tenantmigrations.tenancy.dev",
        "--timeout=60s",
    ]));
    ok(kube.kubectl(&["create", "namespace", "rag"]));
    ok(kube.kubectl(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tenantmigration.yaml"),
    ]));

    let table = ok(kube.kubectl(&["get", "tm", "-n", "rag"]));
    for column in ["SOURCE", "TARGET", "PHASE", "PROGRESS", "AGE"] {
        assert!(table.contains(column), "printer column {column} missing:\n{table}");
    }
    assert!(table.contains("siraya") && table.contains("tenant_76920508"), "{table}");

    let explain = ok(kube.kubectl(&["explain", "tm.spec.redis"]));
    for text in [
        "Redis / DragonflyDB phase",
        "What to do when a target key already exists",
        "Key prefix templates",
    ] {
        assert!(
            explain.contains(text),
            "kubectl explain tm.spec.redis lacks {text:?}:\n{explain}"
        );
    }

    // CEL rules: source and target differ; source, target and mode cannot change.
    let manifest = |name: &str, source: &str, target: &str, mode: &str| {
        format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: {name}, namespace: rag}}\n\
             spec: {{source: {source}, target: {target}, mode: {mode}}}\n"
        )
    };
    let same = apply(&kube, &manifest("same", "siraya", "siraya", "Move"));
    assert!(
        !same.status.success() && common::text(&same).contains("source and target must be different tenants"),
        "{}",
        common::text(&same)
    );
    assert!(
        apply(&kube, &manifest("edit", "siraya", "tenant_b", "Move"))
            .status
            .success()
    );
    for (changed, want) in [
        (manifest("edit", "other", "tenant_b", "Move"), "source is immutable"),
        (manifest("edit", "siraya", "tenant_c", "Move"), "target is immutable"),
        (manifest("edit", "siraya", "tenant_b", "Copy"), "mode is immutable"),
    ] {
        let out = apply(&kube, &changed);
        assert!(
            !out.status.success() && common::text(&out).contains(want),
            "{want}: {}",
            common::text(&out)
        );
    }
    // Everything else may change, e.g. suspending.
    let suspended = manifest("edit", "siraya", "tenant_b", "Move").replace("mode: Move}", "mode: Move, suspend: true}");
    assert!(apply(&kube, &suspended).status.success());

    for (id, field) in [
        ("sir*ya", "spec.source"),
        (&"x".repeat(65) as &str, "spec.source"),
        ("", "spec.source"),
    ] {
        let yaml = format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: bad, namespace: rag}}\n\
             spec: {{source: '{id}', target: tenant_b}}\n"
        );
        let out = apply(&kube, &yaml);
        let all = common::text(&out);
        assert!(!out.status.success(), "{id:?} was accepted: {all}");
        assert!(all.contains(field) && all.contains("should match"), "{id:?}: {all}");
    }
}
