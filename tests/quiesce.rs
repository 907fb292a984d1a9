//! `spec.quiesce` against a real kube-apiserver: the named Deployments/StatefulSets are
//! at zero replicas whenever the migration writes, and get their former counts back
//! after success, after a failure, after a controller restart mid-run, and after the
//! migration is deleted. A failed preflight scales nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tenant_migrator_testkit::KubeApiServer;

const NS: &str = "rag";

/// A Deployment or StatefulSet with `replicas` (no kubelet here: no pod ever runs).
fn workload(kind: &str, name: &str, replicas: u32) -> String {
    let service = if kind == "StatefulSet" {
        format!("  serviceName: {name}\n")
    } else {
        String::new()
    };
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  \
         replicas: {replicas}\n{service}  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
         metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: app, image: rag-api:1}}]\n"
    )
}

/// `(spec.replicas, metadata.generation)`: each scale is a new generation, so the
/// generation tells how many times the replica count was changed.
fn replicas(kube: &KubeApiServer, kind: &str, name: &str) -> (u64, u64) {
    let out = ok(kube.kubectl(&[
        "get",
        kind,
        name,
        "-n",
        NS,
        "-o",
        "jsonpath={.spec.replicas} {.metadata.generation}",
    ]));
    let mut it = out.split_whitespace().map(|v| v.parse::<u64>().expect("number"));
    (it.next().expect("replicas"), it.next().expect("generation"))
}

fn with_quiesce(
    name: &str,
    (source, target): (&str, &str),
    redis: &str,
    extra: &str,
    workloads: &[(&str, &str)],
) -> String {
    let list: Vec<String> = workloads
        .iter()
        .map(|(k, n)| format!("{{kind: {k}, name: {n}}}"))
        .collect();
    redis_only_tm(
        name,
        NS,
        source,
        target,
        redis,
        &format!("{extra}  quiesce: [{}]\n", list.join(", ")),
    )
}

fn events(kube: &KubeApiServer) -> String {
    ok(kube.kubectl(&["get", "events", "-n", NS, "-o", "json"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_at_zero_while_the_migration_writes_and_restored_after_success_or_failure() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    apply_ok(&kube, &workload("Deployment", "rag-api", 3));
    apply_ok(&kube, &workload("StatefulSet", "rag-worker", 2));
    let (redis, loaded) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "quiesce-success", NS, None);
    let log = dir.join("controller.log");
    let _controller = start_controller_in(
        NS,
        &kubeconfig,
        &log,
        tenant_migrator_testkit::free_port().expect("port"),
    );

    let both = [("Deployment", "rag-api"), ("StatefulSet", "rag-worker")];
    let url = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port());
    apply_ok(&kube, &with_quiesce("quiet", (SOURCE, TARGET), &url, "", &both));
    // Whenever the migration has written, both workloads are at zero.
    let mut seen_writing = 0;
    let tm = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let tm = get_tm(&kube, NS, "quiet");
            if finished(&tm) {
                return tm;
            }
            // Written before the replicas were read (so scaled down before), and still
            // running after (restoring comes after the final status): they must be zero.
            let done = tm["status"]["phases"]["redis"]["done"].as_u64().unwrap_or(0);
            let counts = (
                replicas(&kube, "deployment", "rag-api").0,
                replicas(&kube, "statefulset", "rag-worker").0,
            );
            let still_running = get_tm(&kube, NS, "quiet")["status"]["phase"] == "Running";
            if done > 0 && still_running {
                assert_eq!(counts, (0, 0), "written at {done} items");
                seen_writing += 1;
            }
            assert!(Instant::now() < deadline, "never finished: {tm:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}\n{logs}");
    assert!(seen_writing > 0, "the run was never observed mid-write");
    assert_migrated(&before, &snapshot(&redis), true);
    assert_eq!(tm["status"]["phases"]["redis"]["done"], loaded.tenant_keys);
    // Scaled down once and up once: generations 1 → 2 → 3.
    assert_eq!(replicas(&kube, "deployment", "rag-api"), (3, 3));
    assert_eq!(replicas(&kube, "statefulset", "rag-worker"), (2, 3));
    let recorded = &tm["status"]["quiesced"];
    assert_eq!(recorded[0]["replicas"], 3, "{tm:#}");
    assert_eq!(recorded[1]["replicas"], 2, "{tm:#}");
    assert!(
        recorded
            .as_array()
            .is_some_and(|r| r.iter().all(|w| w["restored"] == true)),
        "{tm:#}"
    );
    let ev = events(&kube);
    assert!(
        ev.contains("WorkloadsQuiesced") && ev.contains("WorkloadsRestored"),
        "{ev}"
    );

    // A failure after the scale-down (every write refused, NOPERM) gives the replicas back.
    // The tenant now lives under TARGET: copy it from there.
    allow_restore(&redis, false);
    let back = format!("{{url: '{}', onConflict: Overwrite}}", redis.url());
    apply_ok(
        &kube,
        &with_quiesce(
            "fails",
            (TARGET, "tenant_c"),
            &back,
            "  mode: Copy\n  backoffLimit: 0\n  retry: {deadlineSeconds: 1}\n",
            &both,
        ),
    );
    let tm = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "fails", finished));
    assert_eq!(tm["status"]["phase"], "Failed", "{tm:#}");
    assert!(
        tm["status"]["phases"]["redis"]["message"]
            .to_string()
            .contains("no permissions to run the 'restore' command"),
        "{tm:#}"
    );
    assert_eq!(replicas(&kube, "deployment", "rag-api"), (3, 5), "down and up again");
    assert_eq!(replicas(&kube, "statefulset", "rag-worker"), (2, 5));

    // A failed preflight (unreachable Redis) or a workload that does not exist: nothing scaled.
    let closed = tenant_migrator_testkit::free_port().expect("port");
    let nowhere = format!("{{url: 'redis://127.0.0.1:{closed}/'}}");
    apply_ok(
        &kube,
        &with_quiesce(
            "unreachable",
            (SOURCE, "tenant_d"),
            &nowhere,
            "  backoffLimit: 0\n",
            &both,
        ),
    );
    let missing = [("Deployment", "rag-api"), ("Deployment", "no-such-api")];
    apply_ok(
        &kube,
        &with_quiesce("missing", (TARGET, "tenant_e"), &back, "  mode: Copy\n", &missing),
    );
    for (name, says) in [
        ("unreachable", "preflight failed"),
        ("missing", "Deployment rag/no-such-api (spec.quiesce) not found"),
    ] {
        let tm = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, name, finished));
        assert_eq!(tm["status"]["phase"], "Failed", "{tm:#}");
        let text = tm["status"]["conditions"].to_string();
        assert!(text.contains(says), "{name}: {tm:#}");
    }
    assert_eq!(
        replicas(&kube, "deployment", "rag-api"),
        (3, 5),
        "scaled for a failed preflight"
    );
    assert_eq!(replicas(&kube, "statefulset", "rag-worker"), (2, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_come_back_after_a_controller_restart_mid_run_and_after_deletion() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    apply_ok(&kube, &workload("Deployment", "rag-api", 3));
    let (redis, loaded) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "quiesce-restart", NS, None);
    let log = dir.join("controller.log");
    let port = || tenant_migrator_testkit::free_port().expect("port");
    let first = start_controller_in(NS, &kubeconfig, &log, port());

    let api = [("Deployment", "rag-api")];
    let url = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port());
    apply_ok(&kube, &with_quiesce("restart", (SOURCE, TARGET), &url, "", &api));
    let midway = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "restart", redis_past_batch(3)));
    drop(first); // SIGKILL while the Deployment is at zero
    assert_ne!(midway["status"]["phase"], "Succeeded", "finished before the kill");
    assert_eq!(replicas(&kube, "deployment", "rag-api"), (0, 2));
    let recorded = get_tm(&kube, NS, "restart")["status"]["quiesced"].clone();
    assert_eq!(recorded[0]["replicas"], 3, "{recorded:#}");
    assert_eq!(recorded[0]["restored"], false, "{recorded:#}");

    let second = start_controller_in(NS, &kubeconfig, &log, port());
    let tm = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "restart", finished));
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}\n{logs}");
    assert_eq!(tm["status"]["phases"]["redis"]["done"], loaded.tenant_keys);
    assert_migrated(&before, &snapshot(&redis), true);
    // The restarted controller kept the recorded 3 (not the 0 it found) and gave it back.
    assert_eq!(replicas(&kube, "deployment", "rag-api"), (3, 3));

    // Deleted mid-run: stopped at a batch boundary, replicas back before the object goes.
    let slow = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 5}}", proxy.port());
    apply_ok(
        &kube,
        &with_quiesce(
            "deleted",
            (TARGET, "tenant_c"),
            &slow,
            "  mode: Copy\n",
            &[("Deployment", "rag-api")],
        ),
    );
    let _ = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "deleted", redis_past_batch(3)));
    assert_eq!(replicas(&kube, "deployment", "rag-api").0, 0);
    ok(kube.kubectl(&["delete", "tm", "deleted", "-n", NS, "--timeout=60s"]));
    assert_eq!(replicas(&kube, "deployment", "rag-api"), (3, 5));
    let ev = events(&kube);
    assert!(ev.contains("MigrationDeleted"), "{ev}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_migration_keeps_its_workloads_stopped_until_it_ends() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    apply_ok(&kube, &workload("Deployment", "rag-api", 3));
    let (redis, _) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "quiesce-suspend", NS, None);
    let port = tenant_migrator_testkit::free_port().expect("port");
    let _controller = start_controller_in(NS, &kubeconfig, &dir.join("controller.log"), port);
    let url = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port());
    apply_ok(
        &kube,
        &with_quiesce("pause", (SOURCE, TARGET), &url, "", &[("Deployment", "rag-api")]),
    );
    tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "pause", redis_past_batch(3)));
    let suspend = |on: bool| {
        ok(kube.kubectl(&[
            "patch",
            "tm",
            "pause",
            "-n",
            NS,
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"suspend":{on}}}}}"#),
        ]))
    };
    suspend(true);
    let paused =
        tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "pause", |tm| tm["status"]["phase"] == "Suspended"));
    // A half-moved tenant: the workloads stay stopped while the migration is paused.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(replicas(&kube, "deployment", "rag-api"), (0, 2), "{paused:#}");

    suspend(false);
    let tm = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "pause", finished));
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_migrated(&before, &snapshot(&redis), true);
    // Scaled down once (the resumed run found it at zero already) and up once.
    assert_eq!(replicas(&kube, "deployment", "rag-api"), (3, 3));
}

/// Two migrations that quiesce the same Deployment: the second waits (Pending,
/// `WaitingForWorkload`, naming the first) until the first has given the replicas
/// back, then records the real count — never the first one's zero — and the
/// Deployment ends with its replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_quiesced_by_one_migration_is_not_recorded_at_zero_by_another() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    apply_ok(&kube, &workload("Deployment", "rag-api", 3));
    let (redis, _) = loaded_redis(0.05);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "quiesce-shared", NS, None);
    let port = tenant_migrator_testkit::free_port().expect("port");
    let _controller = start_controller_in(NS, &kubeconfig, &dir.join("controller.log"), port);
    let url = format!("{{url: 'redis://127.0.0.1:{}/', batchSize: 20}}", proxy.port());
    let api = [("Deployment", "rag-api")];
    apply_ok(&kube, &with_quiesce("first", (SOURCE, TARGET), &url, "", &api));
    tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "first", redis_past_batch(3)));
    assert_eq!(replicas(&kube, "deployment", "rag-api").0, 0);
    apply_ok(&kube, &with_quiesce("second", ("other", "other_b"), &url, "", &api));
    let waiting = tokio::task::block_in_place(|| {
        wait_for_tm(&kube, NS, "second", |tm| {
            tm["status"]["conditions"].to_string().contains("WaitingForWorkload")
        })
    });
    assert!(
        waiting["status"]["conditions"]
            .to_string()
            .contains("TenantMigration first"),
        "{waiting:#}"
    );
    assert_eq!(get_tm(&kube, NS, "first")["status"]["phase"], "Running");
    for name in ["first", "second"] {
        let tm = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, name, finished));
        assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
        assert_eq!(tm["status"]["quiesced"][0]["replicas"], 3, "{name} recorded: {tm:#}");
    }
    assert_eq!(replicas(&kube, "deployment", "rag-api").0, 3);
    assert_migrated(&before, &snapshot(&redis), true);
}

/// A restore the API server refuses (here a ValidatingAdmissionPolicy denying any
/// scale-up of `rag-api`, as a policy engine or quota might) is a condition, not a
/// silent Ready: the migration stays Running with `Ready=False` and
/// `WorkloadsRestored=False` (reason `RestoreFailed`, naming the workload), and
/// becomes Succeeded only once the replicas are back, after the policy is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_restore_holds_ready_back_until_the_replicas_are_given_back() {
    let kube = tokio::task::block_in_place(|| kube_with_crd(NS));
    apply_ok(&kube, &workload("Deployment", "rag-api", 3));
    apply_ok(&kube, &workload("Deployment", "policy-probe", 0));
    let policy = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\n\
        metadata: {name: hold-rag-api}\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n    \
        - {apiGroups: [apps], apiVersions: [v1], operations: [UPDATE], resources: [deployments/scale]}\n  \
        validations:\n  - expression: \"!(object.metadata.name in ['rag-api', 'policy-probe']) || !has(object.spec.replicas) || object.spec.replicas == 0\"\n    \
        message: rag-api is on hold\n---\napiVersion: admissionregistration.k8s.io/v1\n\
        kind: ValidatingAdmissionPolicyBinding\nmetadata: {name: hold-rag-api}\n\
        spec: {policyName: hold-rag-api, validationActions: [Deny]}\n";
    apply_ok(&kube, policy);
    // Readiness check: the policy is in force once it denies the probe's scale-up.
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = kube
                .kubectl(&["scale", "deployment", "policy-probe", "-n", NS, "--replicas=1"])
                .expect("kubectl");
            if !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("on hold") {
                break;
            }
            assert!(o.status.success() || Instant::now() < deadline, "{}", text(&o));
            if o.status.success() {
                ok(kube.kubectl(&["scale", "deployment", "policy-probe", "-n", NS, "--replicas=0"]));
            }
            assert!(Instant::now() < deadline, "the admission policy never took effect");
            std::thread::sleep(Duration::from_millis(200));
        }
    });

    let (redis, _) = loaded_redis(0.02);
    let before = snapshot(&redis);
    let (dir, kubeconfig) = controller_dir(&kube, "quiesce-refused", NS, None);
    let port = tenant_migrator_testkit::free_port().expect("port");
    let _controller = start_controller_in(NS, &kubeconfig, &dir.join("controller.log"), port);
    let url = format!("{{url: '{}'}}", redis.url());
    apply_ok(
        &kube,
        &with_quiesce("held", (SOURCE, TARGET), &url, "", &[("Deployment", "rag-api")]),
    );
    let held = tokio::task::block_in_place(|| {
        wait_for_tm(&kube, NS, "held", |tm| {
            tm["status"]["conditions"].to_string().contains("RestoreFailed")
        })
    });
    let condition = |tm: &serde_json::Value, type_: &str| -> serde_json::Value {
        tm["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_default()
    };
    assert_eq!(held["status"]["phase"], "Running", "{held:#}");
    assert_eq!(condition(&held, "Ready")["status"], "False", "{held:#}");
    let restored = condition(&held, "WorkloadsRestored");
    assert_eq!(restored["status"], "False", "{held:#}");
    let says = restored["message"].as_str().unwrap_or_default();
    assert!(
        says.contains("Deployment rag/rag-api") && says.contains("on hold") && says.contains("Succeeded"),
        "{held:#}"
    );
    assert_eq!(replicas(&kube, "deployment", "rag-api").0, 0);
    // The data is already exact; only the workloads wait.
    assert_migrated(&before, &snapshot(&redis), true);

    ok(kube.kubectl(&["delete", "validatingadmissionpolicybinding", "hold-rag-api"]));
    let tm = tokio::task::block_in_place(|| wait_for_tm(&kube, NS, "held", finished));
    assert_eq!(tm["status"]["phase"], "Succeeded", "{tm:#}");
    assert_eq!(condition(&tm, "Ready")["status"], "True", "{tm:#}");
    assert_eq!(condition(&tm, "WorkloadsRestored")["status"], "True", "{tm:#}");
    assert_eq!(replicas(&kube, "deployment", "rag-api").0, 3);
    let ev = events(&kube);
    assert!(ev.contains("RestoreFailed") && ev.contains("WorkloadsRestored"), "{ev}");
}
