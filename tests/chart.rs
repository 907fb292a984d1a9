//! The Helm chart and the plain manifests: `helm lint`, `helm template` for the documented
//! value combinations, kubeconform (strict, with schemas taken from the real API server,
//! our CRD included) over every rendered manifest, `deploy/` and `examples/`, and every
//! rendered object accepted by the real API server (server-side dry run). helm and
//! kubeconform are built from their Go modules by tools/gotools/build.sh.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;
use tenant_migrator_testkit::{cached_tool, kube_schemas};

fn chart() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/charts/tenant-migrator")
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn render(sets: &[&str]) -> String {
    let mut c = Command::new(cached_tool("helm"));
    c.args(["template", "tm", chart(), "-n", "tenant-migrator", "--include-crds"]);
    for s in sets {
        c.args(["--set", s]);
    }
    ok(c.output())
}

fn docs(rendered: &str) -> Vec<serde_yaml::Value> {
    rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|d| d.get("kind").is_some())
        .collect()
}

fn kinds(rendered: &str) -> Vec<String> {
    docs(rendered)
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect()
}

/// The rules of every (Cluster)Role in `rendered`, as `(group, resource, verb)` triples.
fn rules(rendered: &str) -> BTreeSet<(String, String, String)> {
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for d in docs(rendered) {
        let kind = d["kind"].as_str().unwrap_or_default();
        if !kind.ends_with("Role") {
            continue;
        }
        for r in d["rules"].as_sequence().into_iter().flatten() {
            for g in strings(&r["apiGroups"]) {
                for res in strings(&r["resources"]) {
                    for v in strings(&r["verbs"]) {
                        out.insert((g.clone(), res.clone(), v));
                    }
                }
            }
        }
    }
    out
}

/// Where the rendered roles let the operator read Secrets: namespaces, `*` for a ClusterRole.
fn secret_scopes(rendered: &str) -> BTreeSet<String> {
    docs(rendered)
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .filter(|d| {
            d["rules"].as_sequence().into_iter().flatten().any(|r| {
                r["resources"]
                    .as_sequence()
                    .is_some_and(|s| s.iter().any(|x| x == "secrets"))
            })
        })
        .map(|d| match d["kind"].as_str() {
            Some("ClusterRole") => "*".to_owned(),
            _ => d["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

fn kubeconform(schemas: &Path, files: &[&Path]) -> std::process::Output {
    Command::new(cached_tool("kubeconform"))
        .args(["-strict", "-summary", "-schema-location"])
        .arg(schemas.join(kube_schemas::LOCATION))
        // Kinds whose CRDs belong to other projects (Prometheus operator, Argo CD, Flux).
        .args(["-skip", "ServiceMonitor,Application,Kustomization"])
        .args(files)
        .output()
        .expect("kubeconform (run tools/setup.sh)")
}

/// The chart rendered (without the CRD, snapshotted on its own) for the default values
/// and for a namespaced install with quiesce: a template change shows up as a diff in
/// review. `make snapshots` rewrites them.
#[test]
fn the_rendered_chart_matches_its_snapshots() {
    for (name, sets) in [
        ("default", &[][..]),
        (
            "namespaced-quiesce",
            &["watchNamespaces={rag,search}", "quiesce.enabled=true", "replicas=1"][..],
        ),
    ] {
        let mut c = Command::new(cached_tool("helm"));
        c.args(["template", "tm", chart(), "-n", "tenant-migrator"]);
        for s in sets {
            c.args(["--set", s]);
        }
        let rendered = ok(c.output());
        let path = repo(&format!("tests/snapshots/chart-{name}.yaml"));
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, &rendered).expect("write the snapshot");
        }
        let snapshot = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            rendered == snapshot,
            "{path} is stale (run `make snapshots` and review the diff):\n{rendered}"
        );
    }
}

#[test]
fn the_chart_lints_renders_validates_and_is_accepted_by_the_api_server() {
    let lint = Command::new(cached_tool("helm"))
        .args([
            "lint",
            chart(),
            "--set",
            "watchNamespaces={rag}",
            "--set",
            "quiesce.enabled=true",
        ])
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
    // Secrets: read in the release namespace only (the RagStacks' own), never cluster-wide.
    let own = BTreeSet::from(["tenant-migrator".to_owned()]);
    assert_eq!(secret_scopes(&cluster_wide), own);
    assert!(!cluster_wide.contains("- --allow-inline-endpoints"));
    assert!(
        !kinds(&cluster_wide).iter().any(|k| k == "RagStack"),
        "a stack rendered without values asking for one"
    );
    assert!(!cluster_wide.contains("/scale"), "scale rights without quiesce.enabled");
    // The rendered pod runs as non-root, read-only, without privileges.
    let deployment = docs(&cluster_wide)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], serde_yaml::Value::Bool(true));
    assert!(pod["securityContext"]["runAsUser"].as_u64().is_some_and(|u| u != 0));
    let container = &pod["containers"][0]["securityContext"];
    assert_eq!(container["allowPrivilegeEscalation"], serde_yaml::Value::Bool(false));
    assert_eq!(container["readOnlyRootFilesystem"], serde_yaml::Value::Bool(true));
    assert_eq!(container["capabilities"]["drop"][0], serde_yaml::Value::from("ALL"));

    // A list of namespaces: a Role in each, no ClusterRole but the one that reads RagStacks.
    let namespaced = render(&["watchNamespaces={rag,search}", "replicas=1"]);
    let roles: Vec<(String, String)> = docs(&namespaced)
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "RoleBinding")
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for ns in ["rag", "search"] {
        for kind in ["Role", "RoleBinding"] {
            assert!(
                roles.contains(&(kind.into(), ns.into())),
                "no {kind} in {ns}: {roles:?}"
            );
        }
    }
    let cluster_roles: Vec<String> = docs(&namespaced)
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(cluster_roles, ["tm-stacks"], "a namespaced install's ClusterRoles");
    assert_eq!(secret_scopes(&namespaced), own);
    assert!(
        namespaced.contains("- --namespace\n            - \"rag,search\"") && namespaced.contains("POD_NAMESPACE"),
        "{namespaced}"
    );
    assert!(
        namespaced.contains("leases"),
        "leader election is on with one replica too (a rolling update runs two pods)"
    );
    // Inline endpoints: asked for by a value, Secrets then readable in the watched
    // namespaces too, and refused cluster-wide.
    let inline = render(&["watchNamespaces={rag,search}", "allowInlineEndpoints=true"]);
    assert!(inline.contains("- --allow-inline-endpoints"), "{inline}");
    let scopes: Vec<String> = secret_scopes(&inline).into_iter().collect();
    assert_eq!(scopes, ["rag", "search", "tenant-migrator"]);
    let mut refused = Command::new(cached_tool("helm"));
    refused.args(["template", "tm", chart(), "--set", "allowInlineEndpoints=true"]);
    let refused = refused.output().expect("helm");
    assert!(
        !refused.status.success() && text(&refused).contains("allowInlineEndpoints needs watchNamespaces"),
        "{}",
        text(&refused)
    );
    // An example stack, when the values ask for one.
    let stacked = render(&[
        "stacks[0].name=rag-prod",
        "stacks[0].spec.redis.url=redis://rag-redis:6379/0",
        "stacks[0].spec.access[0].namespaces={rag}",
        "stacks[0].spec.access[0].tenants={acme_*}",
    ]);
    let stack = docs(&stacked)
        .into_iter()
        .find(|d| d["kind"] == "RagStack")
        .expect("a RagStack");
    assert_eq!(stack["metadata"]["name"], serde_yaml::Value::from("rag-prod"));
    assert_eq!(
        stack["spec"]["access"][0]["tenants"][0],
        serde_yaml::Value::from("acme_*")
    );

    // The chart grants exactly what deploy/ grants (both what the controller calls).
    let with_quiesce = render(&["quiesce.enabled=true"]);
    let read = |p: &str| std::fs::read_to_string(repo(p)).expect("read");
    let deployed: BTreeSet<_> = rules(&read("deploy/rbac.yaml"))
        .union(&rules(&read("deploy/quiesce/rbac.yaml")))
        .cloned()
        .collect();
    assert_eq!(rules(&with_quiesce), deployed);
    assert!(deployed.contains(&("apps".into(), "deployments/scale".into(), "patch".into())));
    assert_eq!(
        secret_scopes(&read("deploy/rbac.yaml")),
        own,
        "deploy/ reads Secrets elsewhere"
    );

    let extras = render(&["serviceMonitor.enabled=true", "podDisruptionBudget.enabled=true"]);
    let k = kinds(&extras);
    assert!(
        k.iter().any(|x| x == "ServiceMonitor") && k.iter().any(|x| x == "PodDisruptionBudget"),
        "{k:?}"
    );

    // kubeconform, with schemas from the real API server that knows our CRD.
    let kube = kube_with_crd("rag");
    let dir = state_dir("chart-kubeconform");
    let schemas = dir.join("schemas");
    let openapi: serde_json::Value =
        serde_json::from_str(&ok(kube.kubectl(&["get", "--raw", "/openapi/v2"]))).expect("OpenAPI JSON");
    let n = kube_schemas::write(&openapi, &schemas).expect("schemas");
    assert!(n > 50, "only {n} schemas");
    let mut files = Vec::new();
    for (name, rendered) in [
        ("cluster-wide", &cluster_wide),
        ("namespaced", &namespaced),
        ("quiesce", &with_quiesce),
        ("extras", &extras),
        ("deploy", &ok(kube.kubectl(&["kustomize", &repo("deploy")]))),
        ("inline", &inline),
        ("stacked", &stacked),
        (
            "deploy-quiesce",
            &ok(kube.kubectl(&["kustomize", &repo("deploy/quiesce")])),
        ),
    ] {
        let f = dir.join(format!("{name}.yaml"));
        std::fs::write(&f, rendered).expect("write");
        files.push(f);
    }
    for example in std::fs::read_dir(repo("examples")).expect("examples") {
        files.push(example.expect("entry").path());
    }
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let out = kubeconform(&schemas, &refs);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Invalid: 0, Errors: 0"), "{}", text(&out));
    // The validation has teeth: a misspelt field and a bad migration are caught.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        cluster_wide.replacen("  replicas: 2", "  replica: 2", 1)
            + "\n---\napiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\n\
               metadata: {name: x, namespace: rag}\nspec: {source: 'a-b', target: b}\n",
    )
    .expect("write");
    let out = kubeconform(&schemas, &[&bad]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("replica") && said.contains("Invalid: 2"), "{said}");

    // Everything but the ServiceMonitor (whose CRD belongs to the Prometheus operator)
    // must be accepted by a real API server.
    ok(kube.kubectl(&["create", "namespace", "search"]));
    for rendered in [cluster_wide, namespaced, with_quiesce, extras, inline, stacked] {
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
