//! The config phase through the real binary against the config API stand-in (a
//! real HTTP server): create, identical target, each onConflict policy, Move's
//! removal, token handling, retries and failures.

mod common;

use common::{bin, text};
use serde_json::json;
use tenant_migrator_testkit::ConfigApi;
use tenant_migrator_testkit::config_api::{renamed_config, sample_config};

const TOKEN: &str = "api-t0ken";

async fn api() -> ConfigApi {
    let api = ConfigApi::start(0, Some(TOKEN)).await.expect("config API");
    api.insert("siraya", sample_config("siraya"));
    api.insert("siraya2", sample_config("siraya2"));
    api
}

async fn migrate(api_url: &str, token: Option<&str>, extra: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args([
        "migrate",
        "siraya",
        "tenant_b",
        "--skip-redis",
        "--skip-qdrant",
        "--skip-memgraph",
    ])
    .args(["--api-url", api_url])
    .arg("--state-dir")
    .arg(common::state_dir(&format!("config-{}", rand_suffix())))
    .args(extra)
    .env_remove("TENANT_API_TOKEN");
    if let Some(t) = token {
        cmd.env("TENANT_API_TOKEN", t);
    }
    cmd.output().await.expect("run tenant-migrator")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[tokio::test]
async fn move_creates_the_target_config_and_removes_the_source() {
    let api = api().await;
    let out = migrate(&api.url(), Some(TOKEN), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.get("tenant_b"), Some(renamed_config("siraya", "tenant_b")));
    assert_eq!(api.get("siraya"), None);
    assert_eq!(
        api.get("siraya2"),
        Some(sample_config("siraya2")),
        "a look-alike tenant changed"
    );
    assert!(
        text(&out).contains("1 of 1 configs moved and verified"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(TOKEN), "the token leaked");
}

#[tokio::test]
async fn copy_keeps_the_source_config() {
    let api = api().await;
    let out = migrate(&api.url(), Some(TOKEN), &["--mode", "copy"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.get("tenant_b"), Some(renamed_config("siraya", "tenant_b")));
    assert_eq!(api.get("siraya"), Some(sample_config("siraya")));
}

#[tokio::test]
async fn an_identical_target_counts_as_done_without_a_write() {
    let api = api().await;
    api.insert("tenant_b", renamed_config("siraya", "tenant_b"));
    let out = migrate(&api.url(), Some(TOKEN), &["--mode", "copy"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.writes(), 0, "an identical target must not be written again");
}

#[tokio::test]
async fn a_different_target_follows_on_conflict() {
    let other = json!({"workspace": "tenant_b", "llm": {"model": "other"}});
    // Fail: refused in preflight, nothing written.
    let api = api().await;
    api.insert("tenant_b", other.clone());
    let out = migrate(&api.url(), Some(TOKEN), &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("target tenant already has a different config"),
        "{}",
        text(&out)
    );
    assert_eq!(api.writes(), 0);
    // Skip: the target keeps its config and, in Move, the source keeps its own.
    let out = migrate(&api.url(), Some(TOKEN), &["--on-conflict", "skip"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.get("tenant_b"), Some(other.clone()));
    assert_eq!(api.get("siraya"), Some(sample_config("siraya")));
    assert_eq!(api.writes(), 0);
    // Overwrite: replaced, then the source is removed.
    let api = self::api().await;
    api.insert("tenant_b", other);
    let out = migrate(&api.url(), Some(TOKEN), &["--on-conflict", "overwrite"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.get("tenant_b"), Some(renamed_config("siraya", "tenant_b")));
    assert_eq!(api.get("siraya"), None);
}

#[tokio::test]
async fn bad_input_and_failing_apis_are_refused_without_a_write() {
    let api = api().await;
    let closed = format!(
        "http://127.0.0.1:{}",
        tenant_migrator_testkit::free_port().expect("port")
    );
    let cases: Vec<(String, Option<&str>, Vec<&str>, &str)> = vec![
        (
            api.url(),
            None,
            vec![],
            "refused with 401 Unauthorized: check the API token",
        ),
        (api.url(), Some("wrong"), vec![], "refused with 401 Unauthorized"),
        (closed.clone(), Some(TOKEN), vec![], "GET http://127.0.0.1:"),
        (
            format!("{}/nope", api.url()),
            Some(TOKEN),
            vec![],
            "source tenant has no config",
        ),
        (
            "not a url".into(),
            Some(TOKEN),
            vec![],
            "invalid migration: config: invalid config API settings",
        ),
    ];
    for (url, token, extra, want) in cases {
        let out = migrate(&url, token, &extra).await;
        assert_eq!(out.status.code(), Some(2), "{url}: {}", text(&out));
        assert!(text(&out).contains(want), "{url}: expected {want:?} in {}", text(&out));
        assert!(!text(&out).contains(TOKEN), "the token leaked");
    }
    // A server error in preflight is a failing API: nothing is written either.
    api.fail_next(1);
    let out = migrate(&api.url(), Some(TOKEN), &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("503 Service Unavailable"), "{}", text(&out));
    assert_eq!(api.writes(), 0);
    assert_eq!(api.get("siraya"), Some(sample_config("siraya")));
}

#[tokio::test]
async fn a_server_error_during_the_run_is_retried() {
    let api = api().await;
    // The two preflight GETs pass; the copy's first two requests fail with 503.
    api.fail_after(2, 2);
    let out = migrate(&api.url(), Some(TOKEN), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("config: batch 1 failed (attempt 1)"),
        "{}",
        text(&out)
    );
    assert_eq!(api.get("tenant_b"), Some(renamed_config("siraya", "tenant_b")));
    assert_eq!(api.get("siraya"), None);
}

/// A store failing for longer than a handful of attempts (a restart, a failover) is
/// ridden out by the default policy (backoff for up to 120 s from the first failure);
/// `--retry-for` bounds it, and the failure then names the attempts made.
#[tokio::test]
async fn an_outage_longer_than_a_few_attempts_is_ridden_out_and_the_deadline_bounds_it() {
    let down = api().await;
    let api = api().await;
    // Five failures in a row: the old budget of five attempts gave up here.
    api.fail_after(2, 5);
    let out = migrate(&api.url(), Some(TOKEN), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("config: batch 1 failed (attempt 5)"),
        "{}",
        text(&out)
    );
    assert_eq!(api.get("tenant_b"), Some(renamed_config("siraya", "tenant_b")));

    down.fail_after(2, 1000);
    let out = migrate(&down.url(), Some(TOKEN), &["--retry-for", "2"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    let attempts: u32 = said
        .split(" attempt(s)")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no attempt count: {said}"));
    assert!((2..10).contains(&attempts), "{attempts} attempts in 2 s: {said}");
    assert_eq!(
        down.get("siraya"),
        Some(sample_config("siraya")),
        "the source was touched"
    );
}

/// Move removes no source until every store is copied and verified: when the Redis
/// phase fails, the source tenant's config is still there (the platform keeps serving
/// the tenant as it was), and the next run finishes the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_source_is_removed_until_every_store_is_verified() {
    let api = api().await;
    let (redis, _) = common::loaded_redis(0.02);
    let before = common::snapshot(&redis);
    let state = common::state_dir("config-then-redis");
    let run = || {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(["migrate", "siraya", "tenant_b", "--skip-qdrant", "--skip-memgraph"])
            .args(["--api-url", &api.url(), "--redis-url", &redis.url()])
            .args(["--max-attempts", "2"])
            .arg("--state-dir")
            .arg(&state)
            .env("TENANT_API_TOKEN", TOKEN);
        cmd
    };
    // Every Redis write is refused (NOPERM): the config phase has copied and verified by then.
    common::allow_restore(&redis, false);
    let out = run().output().await.expect("run");
    common::allow_restore(&redis, true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("copied and verified; the source is kept because redis failed"),
        "{}",
        text(&out)
    );
    assert_eq!(
        api.get("siraya"),
        Some(sample_config("siraya")),
        "the source config went first"
    );
    assert_eq!(api.get("tenant_b"), Some(renamed_config("siraya", "tenant_b")));

    let out = run().output().await.expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(api.get("siraya"), None);
    assert_eq!(api.get("tenant_b"), Some(renamed_config("siraya", "tenant_b")));
    common::assert_migrated(&before, &common::snapshot(&redis), true);
}

/// The target's config names the target, not the workspace a Move just emptied; the
/// plan says which fields change, a JSON pointer list replaces the default keys, and a
/// listed field that does not hold the source id is refused before any write.
#[tokio::test]
async fn the_target_config_names_the_target_tenant() {
    let api = api().await;
    let plan = migrate(&api.url(), Some(TOKEN), &["--dry-run"]).await;
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(
        text(&plan).contains("fields set to the target tenant id: /workspace"),
        "{}",
        text(&plan)
    );
    let refused = migrate(
        &api.url(),
        Some(TOKEN),
        &["--config-tenant-fields", "/workspace,/display_name"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("config field /display_name holds \"Tenant siraya\", not the source tenant id"),
        "{}",
        text(&refused)
    );
    assert_eq!(api.writes(), 0);

    // A layout of its own: the id sits in a nested field the default keys do not name.
    let mut body = sample_config("siraya");
    body["storage"] = json!({"namespace": "siraya"});
    api.insert("siraya", body.clone());
    let out = migrate(
        &api.url(),
        Some(TOKEN),
        &["--config-tenant-fields", "/storage/namespace"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    body["storage"]["namespace"] = json!("tenant_b");
    assert_eq!(api.get("tenant_b"), Some(body), "only the listed field changes");
    assert_eq!(api.get("siraya"), None);
}

/// A client rewrites the source config after the removal pass compared it and before
/// its DELETE arrives (landed by the API itself, just before it handles that DELETE:
/// deterministic). The DELETE names the compared body's ETag in `If-Match`, the API
/// refuses it with 412, and the run copies the new body and removes the source only
/// once that is compared equal: the client's write ends at the target. An API without
/// ETags cannot refuse: the plan says so, and the write in that window is lost — the
/// limit the README states.
#[tokio::test]
async fn a_config_rewritten_between_its_comparison_and_its_delete_is_copied_again() {
    let mut rewritten = sample_config("siraya");
    rewritten["llm"]["model"] = json!("written during the move");
    let mut expected = rewritten.clone();
    expected["workspace"] = json!("tenant_b");

    let tagged = api().await;
    tagged.write_before_next_delete("siraya", rewritten.clone());
    let out = migrate(&tagged.url(), Some(TOKEN), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        tagged.get("tenant_b"),
        Some(expected),
        "the client's write is not at the target"
    );
    assert_eq!(tagged.get("siraya"), None);
    let deletes: Vec<_> = tagged.received().into_iter().filter(|r| r.method == "DELETE").collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert!(deletes.iter().all(|d| d.if_match.is_some()), "{deletes:?}");
    assert_ne!(deletes[0].if_match, deletes[1].if_match, "{deletes:?}");
    assert!(!text(&out).contains("no strong ETag"), "{}", text(&out));

    let plain = api().await;
    plain.without_etags();
    plain.write_before_next_delete("siraya", rewritten);
    let out = migrate(&plain.url(), Some(TOKEN), &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("config: the config API sends no strong ETag"),
        "{}",
        text(&out)
    );
    assert_eq!(plain.get("tenant_b"), Some(renamed_config("siraya", "tenant_b")));
    assert_eq!(plain.get("siraya"), None);
}

/// A target config that differs from its source after every copy — here an API that
/// stamps each stored config with a field of its own; another writer of the target
/// tenant looks the same — is copied again once, then, differing again from unchanged
/// source content, fails the run naming it, and the source config is never deleted.
#[tokio::test]
async fn a_target_that_keeps_changing_behind_the_runs_back_fails_the_run_by_name() {
    let api = api().await;
    api.stamp_writes_of("tenant_b", "updated_by", json!("the API"));
    let out = migrate(&api.url(), Some(TOKEN), &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("1 target configs changed behind the run's back")
            && text(&out).contains("/tenants/tenant_b/config"),
        "{}",
        text(&out)
    );
    assert_eq!(
        api.get("siraya"),
        Some(sample_config("siraya")),
        "the source config was touched"
    );
    assert!(
        api.received().iter().all(|r| r.method != "DELETE"),
        "{:?}",
        api.received()
    );
}
