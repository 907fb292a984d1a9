//! The Redis phase through the real `tenant-migrator migrate` binary against a real
//! `redis-server`: exactness, isolation, idempotence, resume after SIGKILL,
//! conflicts, retries and bad input.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use tenant_migrator_testkit::RedisServer;

const SCALE: f64 = 0.05;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn copy_makes_an_exact_target_and_leaves_everything_else_identical() {
    let (redis, loaded) = loaded_redis(SCALE);
    let before = snapshot(&redis);
    let out = run(migrate_cmd(redis.port(), &state_dir("copy"), &["--mode", "copy"]));
    assert!(out.status.success(), "{}", text(&out));
    let after = snapshot(&redis);
    assert_migrated(&before, &after, false);
    assert_eq!(
        digest_outside(&before),
        digest_outside(&after),
        "keys outside the tenant changed"
    );
    let n = loaded.tenant_keys;
    assert!(
        stdout(&out).contains(&format!("{n} of {n} keys copied and verified")),
        "{}",
        text(&out)
    );
}

#[test]
fn move_makes_an_exact_target_and_leaves_no_source_key() {
    let (redis, loaded) = loaded_redis(SCALE);
    let before = snapshot(&redis);
    let out = run(migrate_cmd(redis.port(), &state_dir("move"), &[]));
    assert!(out.status.success(), "{}", text(&out));
    let after = snapshot(&redis);
    assert_migrated(&before, &after, true);
    assert!(!after.keys().any(|k| is_tenant_key(k, SOURCE)), "a source key is left");
    assert_eq!(
        digest_outside(&before),
        digest_outside(&after),
        "keys outside the tenant changed"
    );
    // The transient rebuild key and the look-alikes stay where they were.
    assert!(after.contains_key(b"siraya_doc_status__sched_rebuild:lock".as_slice()));
    assert!(after.keys().any(|k| k.starts_with(b"siraya_old_full_docs:")));
    let n = loaded.tenant_keys;
    assert!(
        stdout(&out).contains(&format!("{n} of {n} keys moved and verified")),
        "{}",
        text(&out)
    );
}

#[test]
fn a_second_run_changes_nothing() {
    for mode in ["move", "copy"] {
        let (redis, _) = loaded_redis(SCALE);
        let state = state_dir(&format!("again-{mode}"));
        let first = run(migrate_cmd(redis.port(), &state, &["--mode", mode]));
        assert!(first.status.success(), "{}", text(&first));
        let after_first = snapshot(&redis);
        let second = run(migrate_cmd(redis.port(), &state, &["--mode", mode]));
        assert!(second.status.success(), "{}", text(&second));
        assert_eq!(
            digest(&after_first),
            digest(&snapshot(&redis)),
            "{mode}: the second run changed the database"
        );
        if mode == "copy" {
            // Without the state file, the run re-plans: every target key is identical.
            let third = run(migrate_cmd(redis.port(), &state, &["--mode", mode, "--fresh"]));
            assert!(third.status.success(), "{}", text(&third));
            assert!(stdout(&third).contains("copied and verified"), "{}", text(&third));
            assert_eq!(digest(&after_first), digest(&snapshot(&redis)));
        }
    }
}

fn killed_and_resumed(mode: &str, points: &[(&str, u64)]) {
    let (redis, loaded) = loaded_redis(SCALE);
    let before = snapshot(&redis);
    let state = state_dir(&format!("kill-{mode}"));
    // A 2 ms one-way delay and small batches make each stage last long enough to be hit.
    let proxy = slow_redis(&redis);
    for (stage, batch) in points {
        let cmd = migrate_cmd(proxy.port(), &state, &["--mode", mode, "--batch-size", "20"]);
        assert!(
            kill_at(cmd, &state, (SOURCE, TARGET), "redis", stage, *batch),
            "{mode}: finished before {stage} batch {batch}"
        );
    }
    // The state file belongs to the address it was made for: finish through the proxy too.
    let out = run(migrate_cmd(proxy.port(), &state, &["--mode", mode]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("{0} of {0} keys", loaded.tenant_keys)),
        "{}",
        text(&out)
    );
    let after = snapshot(&redis);
    assert_migrated(&before, &after, mode == "move");
    assert_eq!(digest_outside(&before), digest_outside(&after));
}

#[test]
fn move_killed_at_several_points_resumes_and_ends_exact() {
    killed_and_resumed(
        "move",
        &[
            ("Copy", 3),
            ("Copy", 12),
            ("Verify", 0),
            ("RemoveSource", 2),
            ("RemoveSource", 9),
        ],
    );
}

#[test]
fn copy_killed_at_several_points_resumes_and_ends_exact() {
    killed_and_resumed("copy", &[("Copy", 2), ("Copy", 15), ("Verify", 0)]);
}

fn set(redis: &RedisServer, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut redis.conn().expect("connect"))
        .expect("SET");
}

const CONFLICT_SOURCE: &str = "siraya_full_docs:doc-siraya-000001";
const CONFLICT_TARGET: &str = "tenant_b_full_docs:doc-siraya-000001";
/// A key of the target tenant's own, with no source counterpart.
const OWN_TARGET: &str = "tenant_b_full_docs:doc-of-its-own";

#[test]
fn on_conflict_fail_refuses_in_preflight_and_writes_nothing() {
    let (redis, _) = loaded_redis(SCALE);
    set(&redis, CONFLICT_TARGET, "someone else's value");
    let before = digest(&snapshot(&redis));
    let out = run(migrate_cmd(redis.port(), &state_dir("fail"), &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("preflight failed, nothing was written"), "{all}");
    assert!(
        all.contains(CONFLICT_TARGET) && all.contains("onConflict is Fail"),
        "{all}"
    );
    assert_eq!(before, digest(&snapshot(&redis)));
}

/// The target tenant holds a conflicting key and one of its own: both keep their values,
/// and the one of its own does not fail the verification (the counts once took it for a
/// copy of a deleted source key).
#[test]
fn on_conflict_skip_keeps_the_target_value_and_never_drops_the_source() {
    let (redis, _) = loaded_redis(SCALE);
    set(&redis, CONFLICT_TARGET, "someone else's value");
    set(&redis, OWN_TARGET, "the target's own");
    let mut before = snapshot(&redis);
    let out = run(migrate_cmd(
        redis.port(),
        &state_dir("skip"),
        &["--on-conflict", "skip"],
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("1 skipped"), "{}", text(&out));
    let mut after = snapshot(&redis);
    let foreign = after.remove(CONFLICT_TARGET.as_bytes()).expect("target kept");
    assert_eq!(foreign.value, vec![b"someone else's value".to_vec()]);
    assert_eq!(
        after.remove(OWN_TARGET.as_bytes()),
        before.remove(OWN_TARGET.as_bytes())
    );
    // Move kept the skipped key's source: its value exists nowhere else.
    let kept = after
        .remove(CONFLICT_SOURCE.as_bytes())
        .expect("source of the skipped key kept");
    assert_eq!(Some(&kept), before.get(CONFLICT_SOURCE.as_bytes()));
    before.remove(CONFLICT_TARGET.as_bytes());
    before.remove(CONFLICT_SOURCE.as_bytes());
    assert_migrated(&before, &after, true);
}

#[test]
fn on_conflict_overwrite_replaces_the_target_value() {
    let (redis, _) = loaded_redis(SCALE);
    set(&redis, CONFLICT_TARGET, "someone else's value");
    set(&redis, OWN_TARGET, "the target's own");
    let mut before = snapshot(&redis);
    for mode in ["copy", "move"] {
        let out = run(migrate_cmd(
            redis.port(),
            &state_dir(&format!("overwrite-{mode}")),
            &["--on-conflict", "overwrite", "--mode", mode],
        ));
        assert!(out.status.success(), "{mode}: {}", text(&out));
    }
    before.remove(CONFLICT_TARGET.as_bytes());
    let mut after = snapshot(&redis);
    assert_eq!(
        after.remove(OWN_TARGET.as_bytes()),
        before.remove(OWN_TARGET.as_bytes())
    );
    assert_migrated(&before, &after, true);
}

fn set_maxmemory(redis: &RedisServer, bytes: u64) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query::<()>(&mut redis.conn().expect("connect"))
        .expect("CONFIG SET");
}

/// A text to wait for on stderr, and what to do when it shows.
type Step<'a> = (&'a str, Box<dyn FnMut() + 'a>);

/// Runs `cmd` with its stderr read line by line; each time a line contains the next
/// of `steps`' texts, its action runs (while the run goes on). Returns the exit status
/// and stderr followed by stdout.
fn run_and_act_on(mut cmd: Command, steps: Vec<Step<'_>>) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut stdout = child.stdout.take().expect("stdout");
    let summary = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let mut steps = steps.into_iter().peekable();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read");
        seen.push_str(&line);
        seen.push('\n');
        if let Some((when, _)) = steps.peek()
            && line.contains(*when)
            && let Some((_, mut then)) = steps.next()
        {
            then();
        }
    }
    assert!(
        steps.peek().is_none(),
        "the run ended before every step was reached:\n{seen}"
    );
    seen.push_str(&summary.join().unwrap_or_default());
    (child.wait().expect("wait"), seen)
}

/// A Redis that cannot hold the copy is refused in preflight, with the numbers, and so
/// is one whose eviction policy would evict other tenants' keys once it is full;
/// nothing is written.
#[test]
fn a_copy_that_would_not_fit_or_could_evict_is_refused_in_preflight() {
    let (redis, _) = loaded_redis(SCALE);
    let before = digest(&snapshot(&redis));
    let config = |name: &str, value: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query::<()>(&mut redis.conn().expect("connect"))
            .expect("CONFIG SET");
    };
    let used: u64 = {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut redis.conn().expect("connect"))
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    };
    // Room for 64 kB more: the tenant needs megabytes.
    config("maxmemory", &(used + 64 * 1024).to_string());
    let out = run(migrate_cmd(redis.port(), &state_dir("full"), &[]));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("preflight failed, nothing was written"), "{said}");
    assert!(said.contains("bytes short") && said.contains("of maxmemory"), "{said}");
    // Plenty of room, but a policy that evicts any key when full.
    config("maxmemory", "1gb");
    config("maxmemory-policy", "allkeys-lru");
    let out = run(migrate_cmd(redis.port(), &state_dir("evicting"), &[]));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("maxmemory-policy allkeys-lru evicts any key"), "{said}");
    // noeviction and room: it runs.
    config("maxmemory-policy", "noeviction");
    assert_eq!(before, digest(&snapshot(&redis)));
    let out = run(migrate_cmd(redis.port(), &state_dir("fits"), &["--mode", "copy"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("memory: the copy needs about"), "{}", text(&out));
}

#[test]
fn a_batch_that_keeps_failing_fails_the_run_with_store_batch_and_error() {
    let (redis, _) = loaded_redis(SCALE);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    // Every write is refused with OOM once the preflight has passed (a full maxmemory
    // before it is refused there): Redis filling up during the run.
    let cmd = migrate_cmd(proxy.port(), &state_dir("oom"), &["--max-attempts", "3"]);
    let full: Box<dyn FnMut()> = Box::new(|| set_maxmemory(&redis, 1));
    let (status, all) = run_and_act_on(cmd, vec![("redis: preflight ok", full)]);
    set_maxmemory(&redis, 0);
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(
        all.contains("redis: Copy batch") && all.contains("failed after 3 attempt(s)"),
        "{all}"
    );
    assert!(all.contains("OOM"), "{all}");
    assert!(all.contains("Result: FAILED") && !all.contains("succeeded"), "{all}");
    // A Move removes nothing before every key is verified: the source is whole.
    let source = |s: &Snapshot| {
        s.iter()
            .filter(|(k, _)| is_tenant_key(k, SOURCE))
            .map(|(k, v)| (k.clone(), v.kind.clone(), v.value.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(source(&before), source(&snapshot(&redis)));
}

#[test]
fn a_failing_batch_is_retried_and_the_run_then_succeeds() {
    let (redis, _) = loaded_redis(SCALE);
    let before = snapshot(&redis);
    let proxy = slow_redis(&redis);
    let cmd = migrate_cmd(proxy.port(), &state_dir("retry"), &["--max-attempts", "10"]);
    let full: Box<dyn FnMut()> = Box::new(|| set_maxmemory(&redis, 1));
    let room: Box<dyn FnMut()> = Box::new(|| set_maxmemory(&redis, 0));
    let (status, seen) = run_and_act_on(cmd, vec![("redis: preflight ok", full), ("failed (attempt 2)", room)]);
    assert!(status.success(), "{seen}");
    assert!(seen.contains("failed (attempt 1)"), "{seen}");
    assert_migrated(&before, &snapshot(&redis), true);
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let (redis, loaded) = loaded_redis(SCALE);
    set(&redis, CONFLICT_TARGET, "someone else's value");
    let before = digest(&snapshot(&redis));
    let state = state_dir("dry");
    let out = run(migrate_cmd(
        redis.port(),
        &state,
        &["--dry-run", "--on-conflict", "skip"],
    ));
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    assert!(s.contains("Plan (dry run, nothing written)"), "{s}");
    assert!(s.contains(&loaded.tenant_keys.to_string()), "{s}");
    assert!(s.contains(&format!("conflict: {CONFLICT_TARGET}")), "{s}");
    assert_eq!(before, digest(&snapshot(&redis)));
    assert!(!state.exists(), "a dry run must not leave a state file");
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_no_write() {
    let (redis, _) = loaded_redis(0.01);
    let locked = RedisServer::start_with(Some("s3cret")).expect("redis with password");
    let closed = tenant_migrator_testkit::free_port().expect("port").to_string();
    let port = redis.port().to_string();
    let long = "x".repeat(65);
    let dir = state_dir("bad");
    std::fs::create_dir_all(&dir).expect("dir");
    let manifest = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write manifest");
        p.to_string_lossy().into_owned()
    };
    let unknown = manifest(
        "unknown.yaml",
        "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {name: x}\nspec: {source: siraya, target: tenant_b, modee: Copy}\n",
    );
    let missing = manifest(
        "missing.yaml",
        "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nspec: {source: siraya}\n",
    );
    let wrong_kind = manifest(
        "kind.yaml",
        "apiVersion: v1\nkind: ConfigMap\nspec: {source: siraya, target: tenant_b}\n",
    );
    let locked_port = locked.port().to_string();
    // (arguments after `migrate`, REDIS_PASSWORD, expected text)
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (vec!["", "tenant_b"], None, "source tenant id: tenant id is empty"),
        (vec!["siraya", &long], None, "longer than 64 characters"),
        (vec!["sir*ya", "tenant_b"], None, "contains '*'"),
        (vec!["siraya", "tenant[b]"], None, "contains '['"),
        (vec!["siraya", "siraya"], None, "source and target are the same tenant"),
        (
            vec!["siraya", "tenant_b", "--redis-port", &closed],
            None,
            "cannot connect to Redis at redis://127.0.0.1:",
        ),
        (
            vec!["siraya", "tenant_b", "--redis-port", &locked_port],
            Some("wrong"),
            "rejected the credentials",
        ),
        (
            vec!["siraya", "tenant_b", "--redis-port", &locked_port],
            None,
            "rejected the credentials",
        ),
        (vec!["-f", &unknown], None, "unknown field `modee`"),
        (vec!["-f", &missing], None, "missing field `target`"),
        (
            vec!["-f", &wrong_kind],
            None,
            "expected apiVersion tenancy.dev/v1alpha1",
        ),
        (
            vec!["siraya", "tenant_b", "--skip-memgraph"],
            None,
            "qdrant: health check of Qdrant at http://localhost:6334",
        ),
    ];
    let before = digest(&snapshot(&redis));
    let locked_before = digest(&snapshot(&locked));
    for (args, password, want) in cases {
        let mut cmd = Command::new(bin());
        cmd.arg("migrate")
            .args(&args)
            .args(["--skip-config", "--redis-host", "127.0.0.1"])
            .arg("--state-dir")
            .arg(&dir)
            .env_remove("REDIS_PASSWORD");
        if !args.contains(&"--redis-port") {
            cmd.args(["--redis-port", &port]);
        }
        if !args.contains(&"--skip-memgraph") {
            cmd.args(["--skip-qdrant", "--skip-memgraph"]);
        }
        if let Some(p) = password {
            cmd.env("REDIS_PASSWORD", p);
        }
        let out = run(cmd);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains(want), "{args:?}: expected {want:?} in\n{all}");
        assert!(!all.contains("s3cret"), "a secret leaked: {all}");
    }
    assert_eq!(before, digest(&snapshot(&redis)));
    assert_eq!(locked_before, digest(&snapshot(&locked)));
}

#[test]
fn the_right_password_is_taken_from_the_environment() {
    let locked = RedisServer::start_with(Some("s3cret")).expect("redis with password");
    tenant_migrator_testkit::fixture::load_standard(&mut locked.conn().expect("connect"), SOURCE, 0.01).expect("load");
    let before = snapshot(&locked);
    let mut cmd = migrate_cmd(locked.port(), &state_dir("auth"), &[]);
    cmd.env("REDIS_PASSWORD", "s3cret");
    let out = run(cmd);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("s3cret"), "the password leaked into the output");
    assert_migrated(&before, &snapshot(&locked), true);
}

/// `rediss://` verifies the server against the system's roots, or the bundle
/// `SSL_CERT_FILE` names: an unknown CA is refused before any write; a trusted one
/// migrates exactly as in plain text.
#[test]
fn rediss_urls_verify_the_server_and_migrate_over_tls() {
    let redis = RedisServer::start_tls().expect("redis-server with TLS and openssl");
    tenant_migrator_testkit::fixture::load_standard(&mut redis.conn().expect("connect"), SOURCE, SCALE)
        .expect("load fixture");
    let before = snapshot(&redis);
    let (url, ca) = redis.tls().expect("a TLS port");
    let state = state_dir("tls");
    let tls_cmd = |trusted: bool| {
        let mut c = migrate_cmd(redis.port(), &state, &["--redis-url", &url]);
        // The system's roots do not know the test CA; SSL_CERT_FILE adds it.
        if trusted {
            c.env("SSL_CERT_FILE", &ca);
        } else {
            c.env_remove("SSL_CERT_FILE");
        }
        c
    };
    let out = run(tls_cmd(false));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).to_lowercase().contains("certificate"), "{}", text(&out));
    assert_eq!(
        digest(&before),
        digest(&snapshot(&redis)),
        "written without a trusted server"
    );

    let out = run(tls_cmd(true));
    assert!(out.status.success(), "{}", text(&out));
    assert_migrated(&before, &snapshot(&redis), true);
}

/// Two runs of one migration would overwrite each other's checkpoints: the second is
/// refused while the first holds the state file's lock, naming the holder's pid, before
/// it connects to any store; once the first has ended, a run may take the lock again.
#[test]
fn a_second_run_of_the_same_migration_is_refused_while_the_first_holds_the_state_file() {
    let (redis, loaded) = loaded_redis(0.05);
    let proxy = slow_redis(&redis);
    let state = state_dir("locked");
    let mut first = migrate_cmd(proxy.port(), &state, &["--batch-size", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The state file is written after the lock is taken: once it exists, the lock is held.
    let file = state.join(format!("{SOURCE}--{TARGET}.json"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !file.exists() {
        assert!(
            first.try_wait().expect("wait").is_none(),
            "the first run ended before writing its state"
        );
        assert!(std::time::Instant::now() < deadline, "no state file");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let second = run(migrate_cmd(redis.port(), &state, &[]));
    let said = text(&second);
    assert_eq!(second.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("another run of this migration holds it (pid {})", first.id())),
        "{said}"
    );
    assert!(
        !said.contains("preflight"),
        "the refused run reached the stores: {said}"
    );
    let out = first.wait_with_output().expect("first run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = run(migrate_cmd(proxy.port(), &state, &[]));
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains(&loaded.tenant_keys.to_string()),
        "{}",
        text(&again)
    );
}

/// A SCAN cursor means something only to the server process that handed it out (Redis
/// seeds its hash function at random per process). A run killed mid-stage, then the
/// server restarted from its saved data — a new process, as after a pod restart or a
/// failover: the resumed run does not trust the old cursor, scans again from the start,
/// and the tenant ends exact. Killed in Copy, in the counts after it (a Redis-only
/// Move has no Verify pass: its removal compares) and in removal.
#[test]
fn a_scan_cursor_is_not_trusted_after_the_server_restarts() {
    let (mut redis, loaded) = loaded_redis(SCALE);
    let before = snapshot(&redis);
    let state = state_dir("restarted");
    let proxy = slow_redis(&redis);
    for (stage, batch) in [("Copy", 3), ("Verify", 0), ("RemoveSource", 3)] {
        let cmd = migrate_cmd(proxy.port(), &state, &["--batch-size", "20"]);
        assert!(
            kill_at(cmd, &state, (SOURCE, TARGET), "redis", stage, batch),
            "finished before {stage} batch {batch}"
        );
        redis.restart().expect("restart redis-server");
    }
    let out = run(migrate_cmd(proxy.port(), &state, &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("scanning this server again from the start"),
        "the stale cursor was trusted: {}",
        text(&out)
    );
    assert!(stdout(&out).contains("keys moved and verified"), "{}", text(&out));
    let after = snapshot(&redis);
    assert_migrated(&before, &after, true);
    assert_eq!(digest_outside(&before), digest_outside(&after));
    let moved = after.keys().filter(|k| k.starts_with(b"tenant_b_")).count() as u64;
    assert_eq!(moved, loaded.tenant_keys);
}

/// A key streamed page by page (above 32 MiB) with a TTL, over a slow link: its copy gets
/// the source's TTL as it is once the last page is written, not as it was before the
/// first — that copy outlived the source by the copy's duration, and Verify, seeing the
/// TTLs differ in two passes, failed the run ("changed behind the run's back"; found by
/// the operator pod on a loaded node).
#[test]
fn a_streamed_key_keeps_its_sources_expiry_however_long_the_copy_takes() {
    let (redis, _) = loaded_redis(0.01);
    let mut c = redis.conn().expect("connect");
    common::set_streamed(&mut c, 7);
    let before = snapshot(&redis);
    // 25 ms each way: the 40 pages of the string take seconds more than the TTL slack.
    let slow = tenant_migrator_testkit::DelayProxy::start(
        ([127, 0, 0, 1], redis.port()).into(),
        std::time::Duration::from_millis(25),
    )
    .expect("proxy");
    let state = state_dir("streamed-ttl");
    let out = run(migrate_cmd(slow.port(), &state, &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_migrated(&before, &snapshot(&redis), true);
}

/// Large values and keys: five 20 MB documents (each alone in a DUMP/RESTORE batch),
/// a 200 MB hash and 40 MB of each other type (streamed page by page). Killed after
/// its first batch and resumed over a partial copy of the hash, the Move ends exact,
/// and no run's peak RSS reaches the chart's 256 MiB memory limit.
#[test]
fn large_values_and_a_200_mb_hash_move_exactly_within_the_pods_memory_limit() {
    const LIMIT_KIB: u64 = 256 * 1024;
    let (redis, _) = loaded_redis(0.01);
    load_large_values(&redis);
    let mut c = redis.conn().expect("connect");
    let before = snapshot(&redis);
    let state = state_dir("large-values");
    let args = ["--batch-size", "50"];

    // Killed after its first batch; then a partial streamed copy of the hash at the
    // target, as a run killed half-way through it leaves.
    let cmd = migrate_cmd(redis.port(), &state, &args);
    assert!(
        kill_at(cmd, &state, (SOURCE, TARGET), "redis", "Copy", 1),
        "finished first"
    );
    let target_huge = format!("{TARGET}_llm_response_cache:huge");
    let _: () = redis::cmd("UNLINK").arg(&target_huge).query(&mut c).expect("UNLINK");
    fill_hash(&mut c, &target_huge, 1_500);

    let dir = state_dir("large-values-run");
    let (status, printed, peak_kib) =
        tenant_migrator_testkit::run_measured(&mut migrate_cmd(redis.port(), &state, &args), &dir).expect("run");
    assert!(status.success(), "{printed}");
    eprintln!("peak RSS of the resumed run: {} MiB", peak_kib / 1024);
    assert!(peak_kib < LIMIT_KIB, "peak RSS {peak_kib} KiB: {printed}");
    let after = snapshot(&redis);
    assert_migrated(&before, &after, true);
    assert_eq!(digest_outside(&before), digest_outside(&after));
}

/// Calls of each command since the server started (`INFO commandstats`).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn().expect("connect"))
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn strings_of_every_size_move_exactly_by_value_or_by_dump() {
    // Small strings are read by value (GETRANGE, SET); an empty one (which reads like
    // a missing key) and one longer than any chunk's read limit go by DUMP/RESTORE.
    let redis = RedisServer::start().expect("redis-server");
    let mut c = redis.conn().expect("connect");
    let values: Vec<(String, Vec<u8>, Option<u64>)> = vec![
        ("empty".into(), Vec::new(), None),
        ("one".into(), b"x".to_vec(), None),
        ("int".into(), b"12345".to_vec(), Some(3_600)),
        ("binary".into(), (0..=255u8).collect(), None),
        ("8k".into(), vec![b'a'; 8 << 10], Some(7_200)),
        ("8k+1".into(), vec![b'b'; (8 << 10) + 1], None),
        ("5m".into(), vec![b'c'; 5 << 20], Some(86_400)),
    ];
    for (name, value, ttl) in &values {
        let key = format!("{SOURCE}_full_docs:{name}");
        redis::cmd("SET")
            .arg(&key)
            .arg(value.as_slice())
            .query::<()>(&mut c)
            .expect("SET");
        if let Some(t) = ttl {
            redis::cmd("EXPIRE")
                .arg(&key)
                .arg(*t)
                .query::<()>(&mut c)
                .expect("EXPIRE");
        }
    }
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut c)
        .expect("CONFIG RESETSTAT");
    let out = run(migrate_cmd(redis.port(), &state_dir("strings"), &[]));
    assert!(out.status.success(), "{}", text(&out));
    for (name, value, ttl) in &values {
        let (source, target) = (
            format!("{SOURCE}_full_docs:{name}"),
            format!("{TARGET}_full_docs:{name}"),
        );
        let exists: bool = redis::cmd("EXISTS").arg(&source).query(&mut c).expect("EXISTS");
        assert!(!exists, "{source} left after the move");
        let (kind, got, pttl): (String, Vec<u8>, i64) = redis::pipe()
            .cmd("TYPE")
            .arg(&target)
            .cmd("GET")
            .arg(&target)
            .cmd("PTTL")
            .arg(&target)
            .query(&mut c)
            .expect("read target");
        assert_eq!(kind, "string", "{target}");
        assert!(got == *value, "{target}: {} bytes, expected {}", got.len(), value.len());
        match ttl {
            Some(t) => assert!(
                pttl > 0 && pttl <= (*t as i64) * 1000 && pttl > (*t as i64) * 1000 - 60_000,
                "{target}: PTTL {pttl}, source had {t} s"
            ),
            None => assert_eq!(pttl, -1, "{target} has a TTL its source did not have"),
        }
    }
    assert!(
        calls(&redis, "getrange") > 0 && calls(&redis, "set") > 0,
        "small strings were not read by value"
    );
    assert!(
        calls(&redis, "restore") >= 2,
        "the empty and the 5 MiB strings were not restored from DUMP"
    );
}
