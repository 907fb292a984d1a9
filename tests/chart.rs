//! The Helm chart: `helm lint`, `helm template` for the documented value combinations
//! (helm built from its Go module by tools/helm/build.sh), and every rendered object
//! accepted by the real API server (server-side dry run).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn helm() -> Command {
    let bin = tenant_migrator_testkit::bolt_server::tooling_dir()
        .parent()
        .map(|d| d.join("helm/bin/helm"))
        .unwrap_or_else(|| PathBuf::from("helm"));
    Command::new(bin)
}

fn chart() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/charts/tenant-migrator")
}

fn render(sets: &[&str]) -> String {
    let mut c = helm();
    c.args(["template", "tm", chart(), "-n", "tenant-migrator", "--include-crds"]);
    for s in sets {
        c.args(["--set", s]);
    }
    ok(c.output())
}

fn kinds(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_chart_lints_renders_and_is_accepted_by_the_api_server() {
    let lint = helm()
        .args(["lint", chart()])
        .output()
        .expect("helm (run tools/setup.sh)");
    assert!(lint.status.success(), "{}", text(&lint));

    let cluster_wide = render(&[]);
    let k = kinds(&cluster_wide);
    for want in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(k.iter().any(|x| x == want), "default render lacks {want}: {k:?}");
    }
    assert!(
        cluster_wide.contains("name: POD_NAMESPACE"),
        "leader election off with 2 replicas"
    );

    let namespaced = render(&["watchNamespace=rag", "replicas=1"]);
    let k = kinds(&namespaced);
    assert!(
        !k.iter().any(|x| x == "ClusterRole"),
        "a namespaced install must not get a ClusterRole: {k:?}"
    );
    assert!(
        namespaced.contains("- --namespace") && !namespaced.contains("POD_NAMESPACE"),
        "{namespaced}"
    );
    assert!(!namespaced.contains("leases"), "no Lease rights with one replica");

    let extras = render(&["serviceMonitor.enabled=true", "podDisruptionBudget.enabled=true"]);
    let k = kinds(&extras);
    assert!(
        k.iter().any(|x| x == "ServiceMonitor") && k.iter().any(|x| x == "PodDisruptionBudget"),
        "{k:?}"
    );

    // Everything but the ServiceMonitor (whose CRD belongs to the Prometheus operator)
    // must be accepted by a real API server.
    let kube = tenant_migrator_testkit::KubeApiServer::start().expect("kube-apiserver (run tools/setup.sh)");
    ok(kube.kubectl(&["create", "namespace", "tenant-migrator"]));
    ok(kube.kubectl(&["create", "namespace", "rag"]));
    for rendered in [cluster_wide, namespaced, extras] {
        let docs: Vec<&str> = rendered
            .split("\n---")
            .filter(|d| !d.contains("kind: ServiceMonitor") && d.contains("kind:"))
            .collect();
        let out = kube
            .apply_with(&["--dry-run=server"], &docs.join("\n---"))
            .expect("kubectl");
        assert!(out.status.success(), "{}", text(&out));
    }
}
