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
