//! The `tenant-migrator` command line: manifests, JSON output, credentials from the
//! environment, and the CRD it prints.

mod common;

use common::*;
use tenant_migrator_testkit::ConfigApi;
use tenant_migrator_testkit::config_api::{renamed_config, sample_config};

fn manifest(dir: &std::path::Path, api: &str, redis: &str, mode: &str) -> std::path::PathBuf {
    let p = dir.join("m.yaml");
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(
        &p,
        format!(
            "apiVersion: tenancy.dev/v1alpha1
kind: TenantMigration
metadata: {{name: m, namespace: rag}}
spec:
  source: {SOURCE}
  target: {TARGET}
  mode: {mode}
  config: {{url: '{api}', tokenSecretRef: {{name: rag-api, key: token}}}}
  redis: {{url: '{redis}', batchSize: 500}}
  qdrant: {{enabled: false}}
  memgraph: {{enabled: false}}
"
        ),
    )
    .expect("write manifest");
    p
}

#[tokio::test]
async fn a_manifest_runs_config_and_redis_and_reports_json() {
    let (redis, loaded) = loaded_redis(0.02);
    let api = ConfigApi::start(0, Some("tok")).await.expect("api");
    api.insert(SOURCE, sample_config(SOURCE));
    let before = snapshot(&redis);
    let dir = state_dir("manifest");
    let m = manifest(&dir, &api.url(), &redis.url(), "Copy");
    let out = tokio::process::Command::new(bin())
        .args(["migrate", "-f"])
        .arg(&m)
        .args(["--output", "json", "--state-dir"])
        .arg(&dir)
        .env("TENANT_API_TOKEN", "tok")
        .env_remove("REDIS_PASSWORD")
        .output()
        .await
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report on stdout");
    assert_eq!(report["mode"], "Copy");
    assert!(report.get("error").is_none(), "{report}");
    let phases = report["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["store"].as_str()).collect();
    assert_eq!(names, ["config", "redis", "qdrant", "memgraph"]);
    assert_eq!(phases[1]["status"]["done"], loaded.tenant_keys);
    assert_eq!(phases[1]["verified"]["target"], loaded.tenant_keys);
    assert_eq!(phases[2]["state"], "Skipped");
    assert_migrated(&before, &snapshot(&redis), false);
    assert_eq!(api.get(TARGET), Some(renamed_config(SOURCE, TARGET)));
}

#[tokio::test]
async fn a_manifest_secret_without_its_environment_variable_is_an_error() {
    let (redis, _) = loaded_redis(0.01);
    let dir = state_dir("manifest-secret");
    let m = manifest(&dir, "http://127.0.0.1:1", &redis.url(), "Move");
    let out = tokio::process::Command::new(bin())
        .args(["migrate", "-f"])
        .arg(&m)
        .env_remove("TENANT_API_TOKEN")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("spec.config.tokenSecretRef names Secret \"rag-api\" key \"token\"; the CLI reads this credential from the environment variable TENANT_API_TOKEN"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_example_manifest_parses() {
    let dir = state_dir("example");
    let out = std::process::Command::new(bin())
        .args([
            "migrate",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tenantmigration-inline.yaml"),
        ])
        .args(["--dry-run", "--state-dir"])
        .arg(&dir)
        .env("TENANT_API_TOKEN", "x")
        .env("REDIS_PASSWORD", "x")
        .env("QDRANT_API_KEY", "x")
        .env("MEMGRAPH_PASSWORD", "x")
        .output()
        .expect("run");
    assert!(
        text(&out).contains("spec.quiesce is applied by the controller only"),
        "{}",
        text(&out)
    );
    // The example's hosts do not resolve here: the run must get as far as the preflight.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("preflight failed, nothing was written"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("rag-api"), "{}", text(&out));
}

#[test]
fn a_manifest_naming_a_stack_is_the_controllers() {
    let dir = state_dir("example-stack");
    let out = std::process::Command::new(bin())
        .args([
            "migrate",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tenantmigration.yaml"),
        ])
        .args(["--dry-run", "--state-dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("spec.stackRef names RagStack \"rag-prod\", which only the controller resolves"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_checked_in_crds_match_the_code() {
    let printed = |kind: &str| {
        let out = std::process::Command::new(bin())
            .args(["crd", kind])
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let both = std::process::Command::new(bin()).arg("crd").output().expect("run");
    let (tm, stack) = (printed("tenantmigration"), printed("ragstack"));
    assert_eq!(String::from_utf8_lossy(&both.stdout), format!("{tm}---\n{stack}"));
    for (file, want) in [("tenantmigrations.yaml", &tm), ("ragstacks.yaml", &stack)] {
        for dir in ["crds", "deploy/crds", "charts/tenant-migrator/crds"] {
            let path = format!("{}/{dir}/{file}", env!("CARGO_MANIFEST_DIR"));
            let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
            // No diff dump: a CRD is long, and the fix is one command.
            assert!(&checked_in == want, "{dir}/{file} is stale: run `make crd`");
        }
    }
}
