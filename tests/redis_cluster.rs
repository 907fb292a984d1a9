//! The Redis phase on a real Redis Cluster: three `redis-server` primaries joined by
//! `redis-cli --cluster create`. Every primary is scanned, each target key is written
//! to the primary owning its slot (often another than its source's), and the result is
//! exact, resumable and isolated, as on a single server.

mod common;

use common::*;
use tenant_migrator_testkit::RedisCluster;

/// Every key of the cluster: the union of the primaries' (each key lives on one).
fn cluster_snapshot(cluster: &RedisCluster) -> Snapshot {
    let at = std::time::Instant::now();
    let mut keys = std::collections::BTreeMap::new();
    for node in cluster.nodes() {
        keys.extend(snapshot(node).keys);
    }
    Snapshot {
        keys,
        at,
        end: std::time::Instant::now(),
    }
}

/// A cluster holding the standard fixture at `scale`, and its tenant key count.
fn loaded_cluster(scale: f64) -> (RedisCluster, u64) {
    let (standalone, loaded) = loaded_redis(scale);
    let cluster = RedisCluster::start().expect("a Redis Cluster (redis-server and redis-cli)");
    cluster
        .load_from(&standalone)
        .expect("load the fixture into the cluster");
    (cluster, loaded.tenant_keys)
}

#[test]
fn a_move_on_redis_cluster_is_exact_and_touches_no_other_tenant() {
    let (cluster, tenant_keys) = loaded_cluster(0.05);
    let before = cluster_snapshot(&cluster);
    // The fixture is spread over every primary.
    for node in cluster.nodes() {
        assert!(!snapshot(node).is_empty(), "a primary holds no key");
    }
    let seed = cluster.nodes()[0].port();
    let state = state_dir("cluster-move");
    let out = run(migrate_cmd(seed, &state, &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{tenant_keys} of {tenant_keys} keys moved and verified")),
        "{}",
        text(&out)
    );
    let after = cluster_snapshot(&cluster);
    assert_migrated(&before, &after, true);
    assert_eq!(digest_outside(&before), digest_outside(&after));

    // Run again: nothing left to do, nothing changes.
    let out = run(migrate_cmd(seed, &state, &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(digest(&cluster_snapshot(&cluster)), digest(&after));
}

#[test]
fn a_copy_on_redis_cluster_killed_mid_run_resumes_and_ends_exact() {
    let (cluster, _) = loaded_cluster(0.1);
    let before = cluster_snapshot(&cluster);
    let seed = cluster.nodes()[0].port();
    let state = state_dir("cluster-kill");
    // Small batches make the copy last long enough to be hit twice: on the first
    // primary and, later, on another one (cursors name the primary).
    for batch in [40, 400] {
        let cmd = migrate_cmd(seed, &state, &["--mode", "copy", "--batch-size", "5"]);
        assert!(
            kill_at(cmd, &state, (SOURCE, TARGET), "redis", "Copy", batch),
            "finished before Copy batch {batch}"
        );
    }
    let checkpoint: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.join(format!("{SOURCE}--{TARGET}.json"))).expect("state file"),
    )
    .expect("JSON");
    let cursor = checkpoint["phases"]["redis"]["checkpoint"]["cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out = run(migrate_cmd(seed, &state, &["--mode", "copy"]));
    assert!(out.status.success(), "{}", text(&out));
    let after = cluster_snapshot(&cluster);
    assert_migrated(&before, &after, false);
    assert_eq!(digest_outside(&before), digest_outside(&after));
    // The second kill landed past the first primary: the cursor names another one.
    assert!(cursor.contains(':'), "killed on the first primary only: {checkpoint:#}");
}

#[test]
fn a_cluster_with_unserved_slots_is_refused_before_any_write() {
    let (cluster, _) = loaded_cluster(0.02);
    let before = digest(&cluster_snapshot(&cluster));
    // Slot 100 (on the first primary) loses its owner; the cluster reports itself down.
    let mut seed = cluster.nodes()[0].conn().expect("connect");
    let slot = |op: &str, conn: &mut redis::Connection| {
        redis::cmd("CLUSTER")
            .arg(op)
            .arg(100)
            .query::<()>(conn)
            .expect("CLUSTER *SLOTS");
    };
    slot("DELSLOTS", &mut seed);
    let out = run(migrate_cmd(cluster.nodes()[0].port(), &state_dir("cluster-slots"), &[]));
    slot("ADDSLOTS", &mut seed);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("the cluster does not cover every slot") && text(&out).contains("16383 of 16384"),
        "{}",
        text(&out)
    );
    // Back to full coverage, the cluster answers reads again: nothing was written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !redis::cmd("CLUSTER")
        .arg("INFO")
        .query::<String>(&mut seed)
        .is_ok_and(|i| i.contains("cluster_state:ok"))
    {
        assert!(std::time::Instant::now() < deadline, "the cluster did not recover");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        digest(&cluster_snapshot(&cluster)),
        before,
        "written despite the refusal"
    );
}
