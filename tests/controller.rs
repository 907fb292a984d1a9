//! The operator against a real kube-apiserver (built from Go modules), a real Redis
//! and the config API: a TenantMigration applied with kubectl is migrated by
//! `tenant-migrator controller`, and the result is written to its status.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tenant_migrator_testkit::config_api::{renamed_config, sample_config};
use tenant_migrator_testkit::{ConfigApi, KubeApiServer};

const NS: &str = "rag";

fn status_of(kube: &KubeApiServer, name: &str) -> serde_json::Value {
    get_tm(kube, NS, name)
}

fn wait_for(kube: &KubeApiServer, name: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_for_tm(kube, NS, name, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_migration_is_run_by_the_controller_and_reported_in_status() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    stack_secret(&kube, "rag-api", &[("token", "t0ken")]);

    let (redis, loaded) = loaded_redis(0.02);
    let before = snapshot(&redis);
    let api = ConfigApi::start(0, Some("t0ken")).await.expect("config API");
    api.insert(SOURCE, sample_config(SOURCE));

    let (dir, kubeconfig) = controller_dir(&kube, "controller", NS, None);
    let metrics_port = tenant_migrator_testkit::free_port().expect("port");
    let _controller = start_controller_at(&kubeconfig, &dir.join("controller.log"), metrics_port);

    apply_ok(
        &kube,
        &via_stack(&format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: move-it, namespace: {NS}}}\n\
             spec:\n  source: {SOURCE}\n  target: {TARGET}\n  \
             config: {{url: '{}', tokenSecretRef: {{name: rag-api, key: token}}}}\n  \
             redis: {{url: '{}'}}\n  qdrant: {{enabled: false}}\n  memgraph: {{enabled: false}}\n",
            api.url(),
            redis.url()
        )),
    );
    // A second one whose Secret does not exist waits with a clear condition.
    apply_ok(
        &kube,
        &via_stack(&format!(
            "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: no-secret, namespace: {NS}}}\n\
             spec:\n  source: other\n  target: other_b\n  \
             config: {{url: '{}', tokenSecretRef: {{name: missing, key: token}}}}\n  \
             redis: {{enabled: false}}\n  qdrant: {{enabled: false}}\n  memgraph: {{enabled: false}}\n",
            api.url()
        )),
    );

    let tm = tokio::task::block_in_place(|| wait_for(&kube, "move-it", finished));
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    // Run once: the status patches it triggers must not start it again.
    std::thread::sleep(Duration::from_secs(2));
    let log_later = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    let runs = log_later
        .lines()
        .filter(|l| l.contains("migration finished") && l.contains("rag/move-it"))
        .count();
    assert_eq!(runs, 1, "the migration ran {runs} times:\n{log_later}");
    let status = &tm["status"];
    assert_eq!(status["phase"], "Succeeded", "{tm:#}\n{log}");
    assert_eq!(status["observedGeneration"], tm["metadata"]["generation"], "{tm:#}");
    let n = loaded.tenant_keys;
    assert_eq!(status["phases"]["redis"]["done"], n, "{tm:#}");
    assert_eq!(status["phases"]["redis"]["state"], "Succeeded", "{tm:#}");
    assert_eq!(status["phases"]["qdrant"]["state"], "Skipped", "{tm:#}");
    assert_eq!(status["progress"], format!("{}/{}", n + 1, n + 1), "{tm:#}");
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("Ready condition");
    assert_eq!(ready["status"], "True", "{tm:#}");
    assert!(
        !log.contains("t0ken") && !tm.to_string().contains("t0ken"),
        "the token leaked"
    );
    // Status is written by server-side apply, one field manager per writer.
    let managed: serde_json::Value = serde_json::from_str(&ok(kube.kubectl(&[
        "get",
        "tm",
        "move-it",
        "-n",
        NS,
        "-o",
        "json",
        "--show-managed-fields",
    ])))
    .expect("JSON");
    let appliers: Vec<(&str, &str)> = managed["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["subresource"] == "status")
        .filter_map(|f| Some((f["manager"].as_str()?, f["operation"].as_str()?)))
        .collect();
    for manager in ["tenant-migrator", "tenant-migrator-progress", "tenant-migrator-access"] {
        assert!(appliers.contains(&(manager, "Apply")), "{appliers:?}");
    }

    // Events on phase start and end, and on the migration's end.
    let events: serde_json::Value =
        serde_json::from_str(&ok(kube.kubectl(&["get", "events", "-n", NS, "-o", "json"]))).expect("JSON");
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|e| e["involvedObject"]["name"] == "move-it")
                .filter_map(|e| e["reason"].as_str())
                .collect()
        })
        .unwrap_or_default();
    for want in [
        "MigrationStarted",
        "PhaseStarted",
        "PhaseSucceeded",
        "MigrationSucceeded",
    ] {
        assert!(reasons.contains(&want), "no {want} Event: {reasons:?}");
    }
    assert!(!events.to_string().contains("t0ken"), "the token leaked into an Event");

    // The controller's own endpoints.
    let base = format!("http://127.0.0.1:{metrics_port}");
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let status = http.get(format!("{base}{path}")).send().await.expect(path).status();
        assert!(status.is_success(), "{path}: {status}");
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(&format!("tenant_migrator_items_total{{store=\"redis\"}} {n}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenant_migrator_phase_duration_seconds_count{store=\"redis\"} 1"),
        "{metrics}"
    );

    assert_migrated(&before, &snapshot(&redis), true);
    assert_eq!(api.get(TARGET), Some(renamed_config(SOURCE, TARGET)));
    assert_eq!(api.get(SOURCE), None);

    // What a user scripts against: Ready.
    ok(kube.kubectl(&["wait", "--for=condition=Ready", "tm/move-it", "-n", NS, "--timeout=30s"]));

    // An unreachable store fails the migration in preflight, with the store named.
    let closed = tenant_migrator_testkit::free_port().expect("port");
    apply_ok(
        &kube,
        &redis_only_tm(
            "unreachable",
            NS,
            "xsiraya",
            "tenant_y",
            &format!("{{url: 'redis://127.0.0.1:{closed}/'}}"),
            // Transient: without this it would be run again with backoff (tested below).
            "  backoffLimit: 0\n",
        ),
    );
    let failed = tokio::task::block_in_place(|| wait_for(&kube, "unreachable", finished));
    assert_eq!(failed["status"]["phase"], "Failed", "{failed:#}");
    let degraded = failed["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
        .cloned()
        .expect("Degraded condition");
    assert_eq!(degraded["status"], "True", "{failed:#}");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("redis: cannot connect to Redis at redis://127.0.0.1:")),
        "{failed:#}"
    );

    // A dry run leaves the plan in status and writes nothing.
    apply_ok(
        &kube,
        &redis_only_tm(
            "plan-only",
            NS,
            "siraya2",
            "tenant_x",
            &format!("{{url: '{}'}}", redis.url()),
            "  dryRun: true\n",
        ),
    );
    let planned = tokio::task::block_in_place(|| wait_for(&kube, "plan-only", finished));
    let lookalike_keys = before.keys().filter(|k| is_tenant_key(k, "siraya2")).count() as u64;
    assert_eq!(
        planned["status"]["phases"]["redis"]["total"], lookalike_keys,
        "{planned:#}"
    );
    assert!(
        planned["status"]["conditions"].to_string().contains("Planned"),
        "{planned:#}"
    );
    assert!(
        !snapshot(&redis).keys().any(|k| k.starts_with(b"tenant_x_")),
        "a dry run wrote"
    );

    let waiting =
        tokio::task::block_in_place(|| wait_for(&kube, "no-secret", |tm| tm["status"]["conditions"].is_array()));
    let text = waiting["status"]["conditions"].to_string();
    assert_eq!(waiting["status"]["phase"], "Pending", "{waiting:#}");
    assert!(
        text.contains("MissingSecret") && text.contains("Secret tenant-migrator/missing not found"),
        "{waiting:#}"
    );
}

fn start_controller(kubeconfig: &std::path::Path, log: &std::path::Path) -> ControllerProcess {
    start_controller_at(kubeconfig, log, tenant_migrator_testkit::free_port().expect("port"))
}

fn start_controller_at(kubeconfig: &std::path::Path, log: &std::path::Path, metrics_port: u16) -> ControllerProcess {
    start_controller_in(NS, kubeconfig, log, metrics_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_phase_resumes_from_the_checkpoint_in_status() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, loaded) = loaded_redis(0.05);
    let before = snapshot(&redis);
    // Through a delay proxy, with small batches, the Redis phase lasts seconds.
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-restart", NS, None);
    let log = dir.join("controller.log");
    let first = start_controller(&kubeconfig, &log);
    apply_ok(
        &kube,
        &redis_only_tm(
            "resume-me",
            NS,
            SOURCE,
            TARGET,
            &format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port()),
            "",
        ),
    );
    let midway = tokio::task::block_in_place(|| wait_for(&kube, "resume-me", redis_past_batch(5)));
    drop(first); // SIGKILL, mid-phase
    let checkpoint = midway["status"]["phases"]["redis"]["checkpoint"].clone();
    assert_ne!(
        midway["status"]["phase"], "Succeeded",
        "finished before the kill: {midway:#}"
    );

    let _second = start_controller(&kubeconfig, &log);
    let tm = tokio::task::block_in_place(|| wait_for(&kube, "resume-me", finished));
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}\n{logs}");
    // The phase kept its start: it was resumed, not started over.
    assert_eq!(
        tm["status"]["phases"]["redis"]["startTime"],
        midway["status"]["phases"]["redis"]["startTime"]
    );
    assert_eq!(tm["status"]["phases"]["redis"]["done"], loaded.tenant_keys, "{tm:#}");
    assert!(checkpoint.is_object(), "{midway:#}");
    assert_migrated(&before, &snapshot(&redis), true);
}

/// A rollout sends SIGTERM: the controller stops the running migration at its next
/// batch boundary, writes its progress, leaves it Running (not Suspended, not Failed)
/// and exits by itself well inside a pod's grace period; the next controller resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_at_a_batch_boundary_and_the_next_controller_resumes() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, loaded) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-sigterm", NS, None);
    let log = dir.join("controller.log");
    let mut first = start_controller(&kubeconfig, &log);
    apply_ok(
        &kube,
        &redis_only_tm(
            "rollout",
            NS,
            SOURCE,
            TARGET,
            &format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port()),
            "",
        ),
    );
    let midway = tokio::task::block_in_place(|| wait_for(&kube, "rollout", redis_past_batch(3)));
    assert_eq!(midway["status"]["phase"], "Running", "{midway:#}");
    let pid = first.0.id().to_string();
    ok(Command::new("kill").args(["-TERM", &pid]).output());
    let deadline = Instant::now() + Duration::from_secs(25);
    let code = loop {
        if let Some(status) = first.0.try_wait().expect("wait") {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not exit within 25 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("stopped at a batch boundary"), "{logs}");
    let stopped = status_of(&kube, "rollout");
    assert_eq!(stopped["status"]["phase"], "Running", "{stopped:#}");
    let batch = |tm: &serde_json::Value| tm["status"]["phases"]["redis"]["checkpoint"]["batch"].as_u64();
    assert!(batch(&stopped) >= batch(&midway), "{stopped:#}");
    let events = ok(kube.kubectl(&["get", "events", "-n", NS, "-o", "json"]));
    assert!(events.contains("MigrationInterrupted"), "{events}");

    let _second = start_controller(&kubeconfig, &log);
    let tm = tokio::task::block_in_place(|| wait_for(&kube, "rollout", finished));
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_eq!(
        tm["status"]["phases"]["redis"]["startTime"], midway["status"]["phases"]["redis"]["startTime"],
        "resumed, not started over"
    );
    assert_eq!(tm["status"]["phases"]["redis"]["done"], loaded.tenant_keys, "{tm:#}");
    assert_migrated(&before, &snapshot(&redis), true);
}

/// A store that is down longer than a batch's retries fails the run for a transient
/// reason: the controller runs it again with backoff (`backoffLimit`), and it succeeds
/// once the store is back; one that stays down ends Failed after the limit; a permanent
/// failure (bad settings) is Failed at once, never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_run_again_with_backoff_and_a_permanent_one_is_not() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, loaded) = loaded_redis(0.02);
    let before = snapshot(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-backoff", NS, None);
    let _controller = start_controller(&kubeconfig, &dir.join("controller.log"));
    let later = tenant_migrator_testkit::free_port().expect("port");
    let never = tenant_migrator_testkit::free_port().expect("port");
    let quick = "  retry: {deadlineSeconds: 1}\n";
    apply_ok(
        &kube,
        &redis_only_tm(
            "comes-back",
            NS,
            SOURCE,
            TARGET,
            &format!("{{url: 'redis://127.0.0.1:{later}/'}}"),
            &format!("{quick}  backoffLimit: 2\n"),
        ),
    );
    apply_ok(
        &kube,
        &redis_only_tm(
            "stays-down",
            NS,
            "down_a",
            "down_b",
            &format!("{{url: 'redis://127.0.0.1:{never}/'}}"),
            &format!("{quick}  backoffLimit: 1\n"),
        ),
    );
    apply_ok(
        &kube,
        &redis_only_tm(
            "bad-settings",
            NS,
            "bad_a",
            "bad_b",
            &format!("{{url: 'redis://:pw@127.0.0.1:{}/'}}", redis.port()),
            quick,
        ),
    );
    let retrying = tokio::task::block_in_place(|| {
        wait_for(&kube, "comes-back", |tm| {
            tm["status"]["conditions"].to_string().contains("RetryingAfterFailure")
        })
    });
    assert_eq!(retrying["status"]["phase"], "Pending", "{retrying:#}");
    assert_eq!(retrying["status"]["failedRuns"], 1, "{retrying:#}");
    assert!(
        retrying["status"]["conditions"].to_string().contains("retry 1 of 2"),
        "{retrying:#}"
    );
    // The store comes up at the address the migration names.
    let _up =
        tenant_migrator_testkit::DelayProxy::start_on(later, ([127, 0, 0, 1], redis.port()).into(), Duration::ZERO)
            .expect("proxy");
    let done = tokio::task::block_in_place(|| wait_for(&kube, "comes-back", finished));
    assert_eq!(done["status"]["phase"], "Succeeded", "{done:#}");
    assert_eq!(
        done["status"]["phases"]["redis"]["done"], loaded.tenant_keys,
        "{done:#}"
    );
    assert_migrated(&before, &snapshot(&redis), true);

    let failed = tokio::task::block_in_place(|| wait_for(&kube, "stays-down", finished));
    assert_eq!(failed["status"]["phase"], "Failed", "{failed:#}");
    assert!(
        failed["status"]["conditions"]
            .to_string()
            .contains("failed 2 times for a transient reason (backoffLimit 1)"),
        "{failed:#}"
    );
    let bad = tokio::task::block_in_place(|| wait_for(&kube, "bad-settings", finished));
    assert_eq!(bad["status"]["phase"], "Failed", "{bad:#}");
    assert!(
        bad["status"]["failedRuns"].is_null(),
        "a permanent failure was retried: {bad:#}"
    );
    assert!(
        bad["status"]["conditions"].to_string().contains("contains a password"),
        "{bad:#}"
    );
    let events = ok(kube.kubectl(&["get", "events", "-n", NS, "-o", "json"]));
    assert!(events.contains("MigrationRetrying"), "{events}");
}

/// `--max-concurrent-migrations` bounds what one controller runs at once: the others
/// wait as Pending, saying why, and run when a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_beyond_the_controllers_limit_wait_saying_why() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, loaded) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-capacity", NS, None);
    let port = tenant_migrator_testkit::free_port().expect("port");
    let _controller = start_controller_with(
        NS,
        &kubeconfig,
        &dir.join("controller.log"),
        port,
        &["--max-concurrent-migrations", "1"],
    );
    let slow = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port());
    apply_ok(&kube, &redis_only_tm("first", NS, SOURCE, TARGET, &slow, ""));
    tokio::task::block_in_place(|| wait_for(&kube, "first", redis_past_batch(2)));
    apply_ok(&kube, &redis_only_tm("second", NS, "other", "other_b", &slow, ""));
    let waiting = tokio::task::block_in_place(|| {
        wait_for(&kube, "second", |tm| {
            tm["status"]["conditions"].to_string().contains("WaitingForCapacity")
        })
    });
    assert_eq!(waiting["status"]["phase"], "Pending", "{waiting:#}");
    assert!(
        waiting["status"]["conditions"]
            .to_string()
            .contains("--max-concurrent-migrations 1"),
        "{waiting:#}"
    );
    let first = status_of(&kube, "first");
    assert_eq!(
        first["status"]["phase"], "Running",
        "the first ended before the second waited: {first:#}"
    );
    for name in ["first", "second"] {
        let tm = tokio::task::block_in_place(|| wait_for(&kube, name, finished));
        assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    }
    assert_eq!(
        status_of(&kube, "first")["status"]["phases"]["redis"]["done"],
        loaded.tenant_keys
    );
    assert_migrated(&before, &snapshot(&redis), true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_pauses_at_a_batch_boundary_and_clearing_it_resumes() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, loaded) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-suspend", NS, None);
    let _controller = start_controller(&kubeconfig, &dir.join("controller.log"));
    apply_ok(
        &kube,
        &redis_only_tm(
            "pause-me",
            NS,
            SOURCE,
            TARGET,
            &format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 5}}", proxy.port()),
            "",
        ),
    );
    tokio::task::block_in_place(|| wait_for(&kube, "pause-me", redis_past_batch(3)));
    ok(kube.kubectl(&[
        "patch",
        "tm",
        "pause-me",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]));
    let paused = tokio::task::block_in_place(|| wait_for(&kube, "pause-me", |tm| tm["status"]["phase"] == "Suspended"));
    // Nothing moves while suspended.
    std::thread::sleep(Duration::from_secs(2));
    let still = status_of(&kube, "pause-me");
    assert_eq!(
        still["status"]["phases"]["redis"]["checkpoint"], paused["status"]["phases"]["redis"]["checkpoint"],
        "progress while suspended"
    );
    assert_eq!(still["status"]["phase"], "Suspended", "{still:#}");
    ok(kube.kubectl(&[
        "patch",
        "tm",
        "pause-me",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]));
    let tm = tokio::task::block_in_place(|| wait_for(&kube, "pause-me", finished));
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_eq!(tm["status"]["phases"]["redis"]["done"], loaded.tenant_keys, "{tm:#}");
    assert_migrated(&before, &snapshot(&redis), true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_migration_of_the_same_tenant_waits_for_the_first_across_watched_namespaces() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    for ns in ["search", "elsewhere"] {
        ok(kube.kubectl(&["create", "namespace", ns]));
    }
    let (redis, _) = loaded_redis(0.02);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-conflict", NS, None);
    // Two watched namespaces; "elsewhere" is not one of them.
    let port = tenant_migrator_testkit::free_port().expect("port");
    let _controller = start_controller_in("rag,search", &kubeconfig, &dir.join("controller.log"), port);
    let redis_spec = format!("{{url: '{}'}}", redis.url());
    let manifest = |name: &str, ns: &str, target: &str, suspend: bool| {
        redis_only_tm(
            name,
            ns,
            SOURCE,
            target,
            &redis_spec,
            &format!("  suspend: {suspend}\n"),
        )
    };
    // The first is held (suspended); the second, in the other namespace, moves the same
    // source elsewhere.
    apply_ok(&kube, &manifest("first", NS, "tenant_one", true));
    apply_ok(&kube, &manifest("second", "search", "tenant_two", false));
    apply_ok(&kube, &manifest("unwatched", "elsewhere", "tenant_three", false));
    let waiting = tokio::task::block_in_place(|| {
        wait_for_tm(&kube, "search", "second", |tm| {
            tm["status"]["conditions"]
                .to_string()
                .contains("WaitingForOtherMigration")
        })
    });
    assert_eq!(waiting["status"]["phase"], "Pending", "{waiting:#}");
    assert!(
        waiting["status"]["conditions"].to_string().contains("rag/first"),
        "{waiting:#}"
    );
    assert!(
        !snapshot(&redis).keys().any(|k| k.starts_with(b"tenant_two_")),
        "the waiting migration wrote"
    );
    // Once the first is gone, the second runs.
    ok(kube.kubectl(&["delete", "tm", "first", "-n", NS]));
    let done = tokio::task::block_in_place(|| wait_for_tm(&kube, "search", "second", finished));
    assert_eq!(done["status"]["phase"], "Succeeded", "{done:#}");
    // A namespace not watched is not touched.
    let unwatched = get_tm(&kube, "elsewhere", "unwatched");
    assert!(unwatched["status"].is_null(), "{unwatched:#}");
    assert!(!snapshot(&redis).keys().any(|k| k.starts_with(b"tenant_three_")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_the_other_takes_over() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, loaded) = loaded_redis(0.02);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-election", NS, None);
    let ports: std::collections::HashMap<&str, u16> = ["c1", "c2"]
        .into_iter()
        .map(|n| (n, tenant_migrator_testkit::free_port().expect("port")))
        .collect();
    let replica = |name: &str| {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let port = ports[name];
        ControllerProcess(
            Command::new(bin())
                .args([
                    "controller",
                    "--namespace",
                    NS,
                    "--lease-namespace",
                    NS,
                    "--lease-seconds",
                    "6",
                ])
                .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
                .env("KUBECONFIG", &kubeconfig)
                .env("POD_NAME", name)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("controller"),
        )
    };
    let mut replicas = vec![("c1", Some(replica("c1"))), ("c2", Some(replica("c2")))];
    let holder = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = kube.kubectl(&[
                "get",
                "lease",
                "tenant-migrator",
                "-n",
                NS,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ]);
            if let Ok(o) = out
                && o.status.success()
                && !o.stdout.is_empty()
            {
                return String::from_utf8_lossy(&o.stdout).into_owned();
            }
            assert!(Instant::now() < deadline, "no leader elected");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // Both replicas answer their probes, the standby too (else its liveness probe would
    // restart it forever, and a rollout would wait for a new pod that never turns Ready);
    // only the leader says it leads.
    let other = if holder == "c1" { "c2" } else { "c1" };
    tokio::task::block_in_place(|| {
        for (name, leading) in [(holder.as_str(), 1), (other, 0)] {
            let port = ports[name];
            let deadline = Instant::now() + Duration::from_secs(30);
            while http_get(port, "/readyz").map(|r| r.0) != Some(200) {
                assert!(Instant::now() < deadline, "{name} never turned ready");
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200), "{name} /healthz");
            // The gauge follows the Lease once the replica has seen it.
            let want = format!("tenant_migrator_leader {leading}");
            loop {
                let metrics = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
                if metrics.contains(&want) {
                    break;
                }
                assert!(Instant::now() < deadline, "{name}: {metrics}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let redis_spec = format!("{{url: '{}'}}", redis.url());
    let manifest = |name: &str, source: &str, target: &str| redis_only_tm(name, NS, source, target, &redis_spec, "");
    apply_ok(&kube, &manifest("one", SOURCE, TARGET));
    let tm = tokio::task::block_in_place(|| wait_for(&kube, "one", finished));
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    let ran = |name: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .matches("migration finished")
            .count()
    };
    assert_eq!(
        (ran(&holder), ran(other)),
        (1, 0),
        "only the leader {holder} runs migrations"
    );
    // Never two leaders, not even for a moment at start-up.
    let led = |name: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .contains("leading identity")
    };
    assert!(!led(other), "{other} believed it led while {holder} held the Lease");

    // The leader dies; the other replica takes the Lease and runs the next migration.
    for (name, process) in &mut replicas {
        if *name == holder {
            process.take();
        }
    }
    apply_ok(&kube, &manifest("two", TARGET, "tenant_c"));
    let tm = tokio::task::block_in_place(|| wait_for(&kube, "two", finished));
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_eq!(ran(other), 1, "the new leader {other} ran the second migration");
    let keys = snapshot(&redis).keys().filter(|k| is_tenant_key(k, "tenant_c")).count() as u64;
    assert_eq!(keys, loaded.tenant_keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_migration_stops_it_at_a_batch_boundary_and_says_what_was_done() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, _) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-delete", NS, None);
    let _controller = start_controller(&kubeconfig, &dir.join("controller.log"));
    apply_ok(
        &kube,
        &redis_only_tm(
            "delete-me",
            NS,
            SOURCE,
            TARGET,
            // Batches of 5 keep the copy stage running for seconds, so the deletion
            // lands mid-copy.
            &format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 5}}", proxy.port()),
            "  mode: Copy\n",
        ),
    );
    let running = tokio::task::block_in_place(|| wait_for(&kube, "delete-me", redis_past_batch(3)));
    assert!(
        running["metadata"]["finalizers"]
            .to_string()
            .contains("tenancy.dev/stop-at-batch-boundary"),
        "{running:#}"
    );
    ok(kube.kubectl(&["delete", "tm", "delete-me", "-n", NS, "--wait=false"]));
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = kube.kubectl(&["get", "tm", "delete-me", "-n", NS]).expect("kubectl");
            if !out.status.success() && text(&out).contains("NotFound") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the migration was never let go: {}",
                text(&out)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let events = ok(kube.kubectl(&["get", "events", "-n", NS, "-o", "json"]));
    assert!(
        events.contains("MigrationDeleted") && events.contains("stopped at a batch boundary"),
        "{events}"
    );
    // Stopped, not finished: the source is untouched (Copy) and no more keys appear.
    let after = snapshot(&redis);
    std::thread::sleep(Duration::from_secs(2));
    let later = snapshot(&redis);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        later.keys().collect::<Vec<_>>(),
        "writes went on after deletion"
    );
    let copied = later.keys().filter(|k| is_tenant_key(k, TARGET)).count();
    let total = before.keys().filter(|k| is_tenant_key(k, SOURCE)).count();
    assert!(
        copied > 0 && copied < total,
        "expected a partial copy, got {copied} of {total}"
    );
    for (k, v) in before.iter().filter(|(k, _)| is_tenant_key(k, SOURCE)) {
        assert_eq!(
            later.get(k).map(|s| (&s.kind, &s.value)),
            Some((&v.kind, &v.value)),
            "source key changed"
        );
    }
}

/// A kube client for the test server, from the kubeconfig the controller uses.
async fn kube_client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_created_through_the_api_moves_every_store() {
    use tenant_migrator_testkit::{BoltServer, QdrantServer, graph_fixture, qdrant_fixture};

    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    stack_secret(&kube, "rag-api", &[("token", "t0ken")]);
    stack_secret(&kube, "rag-qdrant", &[("key", "q-k3y")]);
    stack_secret(&kube, "rag-graph", &[("username", "neo4j"), ("password", "g-pw")]);
    // Every store, with the tenant in each.
    let (redis, loaded) = loaded_redis(0.02);
    let api = ConfigApi::start(0, Some("t0ken")).await.expect("config API");
    api.insert(SOURCE, sample_config(SOURCE));
    let qdrant = QdrantServer::start(Some("q-k3y")).expect("Qdrant test server");
    let points = qdrant_fixture::load_standard(&qdrant.client(Some("q-k3y")).expect("client"), SOURCE, 0.01, 8, false)
        .await
        .expect("load points");
    let bolt = tokio::task::block_in_place(|| BoltServer::start("g-pw")).expect("Bolt server");
    let graph = bolt.graph().await.expect("graph");
    let (nodes, _) = graph_fixture::load_standard(&graph, SOURCE, 0.01)
        .await
        .expect("load graph");

    let (dir, kubeconfig) = controller_dir(&kube, "controller-all", NS, None);
    let _controller = start_controller(&kubeconfig, &dir.join("controller.log"));

    // Created through the API, not kubectl.
    let inline = format!(
        "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: everything, namespace: {NS}}}\n\
         spec:\n  source: {SOURCE}\n  target: {TARGET}\n  \
         config: {{url: '{}', tokenSecretRef: {{name: rag-api, key: token}}}}\n  \
         redis: {{url: '{}'}}\n  \
         qdrant: {{url: '{}', apiKeySecretRef: {{name: rag-qdrant, key: key}}}}\n  \
         memgraph: {{uri: '{}', credentialsSecretRef: {{name: rag-graph}}}}\n",
        api.url(),
        redis.url(),
        qdrant.url(),
        bolt.uri()
    );
    // The admin's stack by kubectl; the user's migration through the API.
    let both = via_stack(&inline);
    let (stack, manifest) = both.split_once("---\n").expect("two documents");
    apply_ok(&kube, stack);
    let tm: tenant_migrator::api::TenantMigration = serde_yaml::from_str(manifest).expect("manifest");
    let tms: kube::Api<tenant_migrator::api::TenantMigration> =
        kube::Api::namespaced(kube_client(&kubeconfig).await, NS);
    tms.create(&Default::default(), &tm)
        .await
        .expect("create through the API");

    let tm = tokio::task::block_in_place(|| wait_for(&kube, "everything", finished));
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}\n{log}");
    let phases = &tm["status"]["phases"];
    assert_eq!(phases["config"]["done"], 1, "{tm:#}");
    assert_eq!(phases["redis"]["done"], loaded.tenant_keys, "{tm:#}");
    assert_eq!(phases["qdrant"]["done"], points, "{tm:#}");
    assert_eq!(phases["memgraph"]["done"], nodes, "{tm:#}");
    assert_eq!(
        phases["qdrant"]["collections"].as_array().map(Vec::len),
        Some(3),
        "{tm:#}"
    );
    for secret in ["t0ken", "q-k3y", "g-pw"] {
        assert!(
            !log.contains(secret) && !tm.to_string().contains(secret),
            "{secret} leaked"
        );
    }
}

/// A leader cut off from the API server (its connection held by a proxy, as in a
/// network partition) cannot renew its Lease, but the lease manager still says it
/// leads. It must stop its migrations and exit before the Lease can pass on: at no
/// time does the replica taking over run while the old one still does. The migration
/// then ends exact under the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_exits_before_its_lease_can_pass_on() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, _) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let slow = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-partition", NS, None);
    let api_port: u16 = kube
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("API port");
    let partition =
        tenant_migrator_testkit::DelayProxy::start(([127, 0, 0, 1], api_port).into(), Duration::ZERO).expect("proxy");
    let cut_off = dir.join("kubeconfig-via-proxy");
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    std::fs::write(
        &cut_off,
        text.replace(&kube.url(), &format!("https://127.0.0.1:{}", partition.port())),
    )
    .expect("kubeconfig");
    let replica = |name: &str, kubeconfig: &std::path::Path| {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let port = tenant_migrator_testkit::free_port().expect("port");
        ControllerProcess(
            Command::new(bin())
                .args(["controller", "--namespace", NS, "--secrets-namespace", OPERATOR_NS])
                .args(["--lease-namespace", NS, "--lease-seconds", "6"])
                .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
                .env("KUBECONFIG", kubeconfig)
                .env("POD_NAME", name)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("controller"),
        )
    };
    let holder = || {
        kube.kubectl(&[
            "get",
            "lease",
            "tenant-migrator",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    };
    let mut old = replica("old", &cut_off);
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while holder() != "old" {
            assert!(Instant::now() < deadline, "the first replica never led");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let _new = replica("new", &kubeconfig);
    let url = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 5}}", slow.port());
    apply_ok(
        &kube,
        &redis_only_tm("partitioned", NS, SOURCE, TARGET, &url, "  mode: Copy\n"),
    );
    tokio::task::block_in_place(|| wait_for(&kube, "partitioned", redis_past_batch(3)));

    partition.hold(true);
    // Until the new replica holds the Lease, the old one must have exited.
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let exited = old.0.try_wait().expect("wait").is_some();
            let now = holder();
            if now == "new" {
                assert!(exited, "the new replica leads while the cut-off one still runs");
                break;
            }
            assert!(Instant::now() < deadline, "the Lease never passed on (holder {now:?})");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let tm = tokio::task::block_in_place(|| wait_for(&kube, "partitioned", finished));
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_migrated(&before, &snapshot(&redis), false);
    let log = std::fs::read_to_string(dir.join("old.log")).unwrap_or_default();
    assert!(log.contains("could not confirm the Lease"), "{log}");
}

/// A Move deleted during its removal pass — the target now holds the only copy of
/// what was removed — and applied again recognises its own earlier work (the
/// controller kept its checkpoints in a ledger in its own namespace) instead of
/// refusing a target that "already holds" keys, and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_deleted_mid_removal_and_applied_again_resumes_its_own_work() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, loaded) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-again", NS, None);
    let _controller = start_controller(&kubeconfig, &dir.join("controller.log"));
    let url = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port());
    let manifest = redis_only_tm("again", NS, SOURCE, TARGET, &url, "");
    apply_ok(&kube, &manifest);
    tokio::task::block_in_place(|| {
        wait_for(&kube, "again", |tm| {
            let cp = &tm["status"]["phases"]["redis"]["checkpoint"];
            cp["stage"] == "RemoveSource" && cp["batch"].as_u64().is_some_and(|b| b >= 2)
        })
    });
    ok(kube.kubectl(&["delete", "tm", "again", "-n", NS, "--timeout=60s"]));
    let left = snapshot(&redis).keys().filter(|k| is_tenant_key(k, SOURCE)).count() as u64;
    assert!(left < loaded.tenant_keys, "nothing was removed before the deletion");
    let ledgers = || {
        ok(kube.kubectl(&[
            "get",
            "configmaps",
            "-n",
            OPERATOR_NS,
            "-l",
            "app.kubernetes.io/managed-by=tenant-migrator",
            "-o",
            "name",
        ]))
    };
    assert_eq!(ledgers().lines().count(), 1, "{}", ledgers());

    apply_ok(&kube, &manifest);
    let tm = tokio::task::block_in_place(|| wait_for(&kube, "again", finished));
    let logs = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}\n{logs}");
    assert_migrated(&before, &snapshot(&redis), true);
    let events = ok(kube.kubectl(&["get", "events", "-n", NS, "-o", "json"]));
    assert!(events.contains("AdoptedEarlierWork"), "{events}");
    assert!(
        ledgers().trim().is_empty(),
        "the ledger outlived its adoption: {}",
        ledgers()
    );
}

/// The controller SIGKILLed at points drawn at random (seeded: `TM_CHAOS_SEED`) from
/// every stage of a Move's Redis phase, and a new controller taking over each time:
/// the migration ends Succeeded and exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_killed_at_random_points_hand_over_and_the_move_ends_exact() {
    const STAGES: [&str; 4] = ["Copy", "Verify", "RemoveSource", "VerifyRemoved"];
    let mut x: u64 = std::env::var("TM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        | 1;
    let mut below = |n: u64| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    let mut points: Vec<(usize, u64)> = (0..4).map(|_| (below(3) as usize, below(60))).collect();
    points.sort();

    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    let (redis, loaded) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "controller-chaos", NS, None);
    let log = dir.join("controller.log");
    let url = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port());
    apply_ok(&kube, &redis_only_tm("chaos", NS, SOURCE, TARGET, &url, ""));
    let mut kills = Vec::new();
    for (stage, batch) in &points {
        let controller = start_controller(&kubeconfig, &log);
        let tm = tokio::task::block_in_place(|| {
            wait_for(&kube, "chaos", |tm| {
                let cp = &tm["status"]["phases"]["redis"]["checkpoint"];
                let at = STAGES.iter().position(|s| cp["stage"] == *s).unwrap_or(0);
                let b = cp["batch"].as_u64().unwrap_or(0);
                finished(tm) || (at, b) >= (*stage, *batch)
            })
        });
        drop(controller); // SIGKILL
        if finished(&tm) {
            break;
        }
        let cp = &tm["status"]["phases"]["redis"]["checkpoint"];
        kills.push(format!("{} #{}", cp["stage"], cp["batch"]));
    }
    let _last = start_controller(&kubeconfig, &log);
    let tm = tokio::task::block_in_place(|| wait_for(&kube, "chaos", finished));
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        tm["status"]["phase"], "Succeeded",
        "killed at {kills:?}: {tm:#}\n{logs}"
    );
    assert_eq!(tm["status"]["phases"]["redis"]["done"], loaded.tenant_keys, "{tm:#}");
    assert_migrated(&before, &snapshot(&redis), true);
    assert!(
        kills.len() >= 3,
        "only {} kills landed before the end: {kills:?}",
        kills.len()
    );
    eprintln!("controller killed at {kills:?} (points {points:?})");
}
