//! The CustomResourceDefinition against a real kube-apiserver (built from Go modules
//! by tools/envtest): accepted, established, printer columns served, field
//! descriptions in `kubectl explain`, and bad ids, source == target and changes to
//! source, target or mode rejected by the schema itself (patterns and CEL rules).

mod common;

#[test]
fn the_crd_is_served_by_a_real_api_server_and_validates_ids() {
    let kube = common::kube_with_crd("rag");
    common::ok(kube.kubectl(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tenantmigration.yaml"),
    ]));

    let table = common::ok(kube.kubectl(&["get", "tm", "-n", "rag"]));
    for column in ["SOURCE", "TARGET", "PHASE", "PROGRESS", "AGE"] {
        assert!(table.contains(column), "printer column {column} missing:\n{table}");
    }
    assert!(table.contains("siraya") && table.contains("tenant_76920508"), "{table}");

    let explain = common::ok(kube.kubectl(&["explain", "tm.spec.redis"]));
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
    let same = kube
        .apply(&manifest("same", "siraya", "siraya", "Move"))
        .expect("kubectl");
    assert!(
        !same.status.success() && common::text(&same).contains("source and target must be different tenants"),
        "{}",
        common::text(&same)
    );
    assert!(
        kube.apply(&manifest("edit", "siraya", "tenant_b", "Move"))
            .expect("kubectl")
            .status
            .success()
    );
    for (changed, want) in [
        (manifest("edit", "other", "tenant_b", "Move"), "source is immutable"),
        (manifest("edit", "siraya", "tenant_c", "Move"), "target is immutable"),
        (manifest("edit", "siraya", "tenant_b", "Copy"), "mode is immutable"),
    ] {
        let out = kube.apply(&changed).expect("kubectl");
        assert!(
            !out.status.success() && common::text(&out).contains(want),
            "{want}: {}",
            common::text(&out)
        );
    }
    // Everything else may change, e.g. suspending.
    let suspended = manifest("edit", "siraya", "tenant_b", "Move").replace("mode: Move}", "mode: Move, suspend: true}");
    assert!(kube.apply(&suspended).expect("kubectl").status.success());

    for (id, field) in [
        ("sir*ya", "spec.source"),
        (&"x".repeat(65) as &str, "spec.source"),
        ("", "spec.source"),
    ] {
        let yaml = format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: bad, namespace: rag}}\n\
             spec: {{source: '{id}', target: tenant_b}}\n"
        );
        let out = kube.apply(&yaml).expect("kubectl");
        let all = common::text(&out);
        assert!(!out.status.success(), "{id:?} was accepted: {all}");
        assert!(all.contains(field) && all.contains("should match"), "{id:?}: {all}");
    }
}

/// The RagStack CRD: cluster-scoped, the example accepted, columns and descriptions
/// served; a migration's stackRef can be neither changed nor dropped (a resumed run
/// would write to another platform's stores with this one's checkpoints).
#[test]
fn the_ragstack_crd_is_served_and_a_migrations_stack_cannot_change() {
    let kube = common::kube_with_crd("rag");
    common::ok(kube.kubectl(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ragstack.yaml"),
    ]));
    let table = common::ok(kube.kubectl(&["get", "stack"]));
    for column in [
        "CONFIG",
        "REDIS",
        "QDRANT",
        "MEMGRAPH",
        "rag-prod",
        "redis://rag-dragonflydb.rag:6379/0",
    ] {
        assert!(table.contains(column), "{column} missing:\n{table}");
    }
    let explain = common::ok(kube.kubectl(&["explain", "ragstack.spec.access"]));
    assert!(explain.contains("Tenant ids those migrations may touch"), "{explain}");
    let scope = common::ok(kube.kubectl(&["get", "crd", "ragstacks.tenancy.dev", "-o", "jsonpath={.spec.scope}"]));
    assert_eq!(scope, "Cluster");

    let manifest = |stack: &str| {
        format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: s, namespace: rag}}\n\
             spec: {{source: a, target: b{stack}}}\n"
        )
    };
    assert!(
        kube.apply(&manifest(", stackRef: {name: one}"))
            .expect("kubectl")
            .status
            .success()
    );
    for (changed, want) in [
        (manifest(", stackRef: {name: two}"), "stackRef is immutable"),
        (manifest(""), "stackRef cannot be added or removed"),
    ] {
        let out = kube.apply(&changed).expect("kubectl");
        assert!(
            !out.status.success() && common::text(&out).contains(want),
            "{want}: {}",
            common::text(&out)
        );
    }
}
