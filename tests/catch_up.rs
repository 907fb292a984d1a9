//! Move never loses a write (Redis): a source key changed, created or deleted after
//! it was copied is copied again (or deleted at the target), never removed unseen;
//! a client writing the tenant during the whole run loses no acknowledged write.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tenant_migrator_testkit::writer::{RedisWriter, Write};
use tenant_migrator_testkit::{DelayProxy, RedisServer};

const SCALE: f64 = 0.05;

fn get(redis: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut redis.conn().expect("connect"))
        .expect("GET")
}

fn set(redis: &RedisServer, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .exec(&mut redis.conn().expect("connect"))
        .expect("SET");
}

fn del(redis: &RedisServer, key: &str) {
    redis::cmd("DEL")
        .arg(key)
        .exec(&mut redis.conn().expect("connect"))
        .expect("DEL");
}

/// Source `full_docs` keys (their rest after `{SOURCE}_`), as the store holds them now.
fn source_docs(redis: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{SOURCE}_full_docs:*"))
        .query(&mut redis.conn().expect("connect"))
        .expect("KEYS");
    keys.sort();
    keys.iter()
        .filter_map(|k| k.strip_prefix(&format!("{SOURCE}_")).map(str::to_owned))
        .collect()
}

fn slow(redis: &RedisServer) -> DelayProxy {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], redis.port()));
    DelayProxy::start(addr, Duration::from_millis(1)).expect("proxy")
}

/// The Redis phase's stage in the state file of a run in `state` (what a writer sees).
/// Before the run has a state file, "Copy": a delete then counts as one made before
/// any copy (no copy of it may be left).
fn stage_in(state: &Path) -> String {
    let stage = common::stage_of(state, (SOURCE, TARGET), "redis");
    if stage.is_empty() { "Copy".into() } else { stage }
}

/// A Move of the fixture through a slow link, killed in the second batch (of 20 keys) of
/// its removal: the server, the link, the state and the source full_docs keys left.
fn killed_in_removal(name: &str) -> (RedisServer, DelayProxy, PathBuf, Vec<String>) {
    let (redis, _) = loaded_redis(SCALE);
    let proxy = slow(&redis);
    let state = state_dir(name);
    let cmd = migrate_cmd(proxy.port(), &state, &["--batch-size", "20"]);
    assert!(kill_at(cmd, &state, (SOURCE, TARGET), "redis", "RemoveSource", 2));
    let left = source_docs(&redis);
    assert!(left.len() >= 3, "too few source keys left to change: {left:?}");
    (redis, proxy, state, left)
}

/// Killed in the middle of removal; then a client updates a source key not removed
/// yet, creates one and deletes one: the resumed run copies the update and the new key
/// again before it removes them (it never trusts the earlier verification), and the
/// target ends with every last value.
#[test]
fn a_source_key_changed_between_copy_and_removal_is_copied_again() {
    let (redis, proxy, state, left) = killed_in_removal("catchup-removal");
    let (updated, deleted) = (&left[0], &left[1]);
    set(&redis, &format!("{SOURCE}_{updated}"), "changed after verification");
    set(&redis, &format!("{SOURCE}_full_docs:new-after-verification"), "new");
    del(&redis, &format!("{SOURCE}_{deleted}"));
    let out = run(migrate_cmd(proxy.port(), &state, &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        get(&redis, &format!("{TARGET}_{updated}")).as_deref(),
        Some("changed after verification"),
        "the update was lost: {}",
        text(&out)
    );
    assert_eq!(
        get(&redis, &format!("{TARGET}_full_docs:new-after-verification")).as_deref(),
        Some("new")
    );
    assert!(source_docs(&redis).is_empty(), "source keys left");
    assert!(
        text(&out).contains("copied again after they changed in the source"),
        "{}",
        text(&out)
    );
}

/// As above, but the changes move keys between the two ways a batch reads them: a
/// small string becomes a hash, another a string too long to read by value, another
/// empty (all three leave the by-value reading for DUMP), and a key that was dumped
/// becomes a small string. Each copy must end as its source's last value, type included.
#[test]
fn a_source_key_that_changed_type_or_size_before_its_removal_is_copied_again() {
    let (redis, proxy, state, left) = killed_in_removal("catchup-kinds");
    let mut c = redis.conn().expect("connect");
    let (hashed, long, emptied) = (&left[0], &left[1], &left[2]);
    let long_value = "x".repeat(3 << 20);
    redis::pipe()
        .cmd("DEL")
        .arg(format!("{SOURCE}_{hashed}"))
        .cmd("HSET")
        .arg(format!("{SOURCE}_{hashed}"))
        .arg("now")
        .arg("a hash")
        .cmd("SET")
        .arg(format!("{SOURCE}_{long}"))
        .arg(&long_value)
        .cmd("SET")
        .arg(format!("{SOURCE}_{emptied}"))
        .arg("")
        .exec(&mut c)
        .expect("change source keys");
    // The fixture's small hashes (read by DUMP; the run was killed in its second batch of 20) become strings.
    let hashes: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{SOURCE}_llm_response_cache:stats:*"))
        .query(&mut c)
        .expect("KEYS");
    assert!(!hashes.is_empty(), "no fixture hash left in the source to change");
    for h in &hashes {
        redis::pipe()
            .cmd("DEL")
            .arg(h)
            .cmd("SET")
            .arg(h)
            .arg("a string now")
            .exec(&mut c)
            .expect("change a hash");
    }
    let out = run(migrate_cmd(proxy.port(), &state, &[]));
    assert!(out.status.success(), "{}", text(&out));
    let target = |k: &str| format!("{TARGET}_{k}");
    let hash: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(target(hashed))
        .query(&mut c)
        .expect("HGETALL");
    assert_eq!(hash.get("now").map(String::as_str), Some("a hash"), "{}", text(&out));
    assert!(
        get(&redis, &target(long)) == Some(long_value),
        "the long string was lost"
    );
    assert_eq!(get(&redis, &target(emptied)).as_deref(), Some(""), "the emptied string");
    for h in &hashes {
        let t = h.replacen(SOURCE, TARGET, 1);
        assert_eq!(get(&redis, &t).as_deref(), Some("a string now"), "{t}");
    }
    assert!(source_docs(&redis).is_empty(), "source keys left");
}

/// Killed after copying, in the counts that follow the copy (a Redis-only Move has no
/// Verify pass of its own: its removal compares); then a client updates one source
/// key, deletes another and creates a third: the resumed run carries each to the
/// target — the delete too — though the counts balance (one key more, one less) and
/// no content pass ran since the copy: a copy whose source is gone is found by
/// looking at every target key, and removed.
#[test]
fn writes_between_a_failed_run_and_its_rerun_end_at_the_target() {
    let (redis, _) = loaded_redis(SCALE);
    let proxy = slow(&redis);
    let state = state_dir("catchup-rerun");
    let cmd = migrate_cmd(proxy.port(), &state, &["--batch-size", "20"]);
    let counting = |cp: &serde_json::Value| Some(cp["stage"].as_str()? == "Verify");
    assert!(kill_when(
        cmd,
        &state,
        (SOURCE, TARGET),
        "redis",
        "Verify (the counts)",
        counting
    ));
    let docs = source_docs(&redis);
    let (updated, deleted) = (&docs[0], &docs[1]);
    set(&redis, &format!("{SOURCE}_{updated}"), "changed after copy");
    set(&redis, &format!("{SOURCE}_full_docs:new-after-copy"), "new");
    del(&redis, &format!("{SOURCE}_{deleted}"));
    let out = run(migrate_cmd(proxy.port(), &state, &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        get(&redis, &format!("{TARGET}_{updated}")).as_deref(),
        Some("changed after copy")
    );
    assert_eq!(
        get(&redis, &format!("{TARGET}_full_docs:new-after-copy")).as_deref(),
        Some("new")
    );
    assert_eq!(
        get(&redis, &format!("{TARGET}_{deleted}")),
        None,
        "the delete did not reach the target"
    );
    assert!(source_docs(&redis).is_empty(), "source keys left");
}

/// What a writer's log says about the stores after a Move that `succeeded` or not.
fn lost_writes(redis: &RedisServer, log: &[Write], succeeded: bool) -> (Vec<String>, usize) {
    let mut last: BTreeMap<&str, &Write> = BTreeMap::new();
    for w in log {
        last.insert(&w.rest, w);
    }
    let (mut lost, mut late_deletes) = (Vec::new(), 0);
    for (rest, w) in last {
        let (src, tgt) = (
            get(redis, &format!("{SOURCE}_{rest}")),
            get(redis, &format!("{TARGET}_{rest}")),
        );
        let ok = match (&w.value, succeeded) {
            // Moved: at the target and nowhere else; written once the last removal pass
            // had ended: at the source, like any later write to the old tenant.
            (Some(v), true) => {
                (tgt.as_ref() == Some(v) && src.is_none())
                    || (matches!(w.seen.as_str(), "VerifyRemoved" | "Done") && src.as_ref() == Some(v))
            }
            // Not moved: still at the source, or at the target when its source was removed.
            (Some(v), false) => src.as_ref() == Some(v) || (src.is_none() && tgt.as_ref() == Some(v)),
            (None, true) if src.is_none() && tgt.is_none() => true,
            // A delete after the copy was verified (see the README): counted, not hidden.
            (None, true) if src.is_none() && w.seen != "Copy" => {
                late_deletes += 1;
                true
            }
            (None, true) => false,
            (None, false) => src.is_none(),
        };
        if !ok {
            lost.push(format!(
                "{rest}: wrote {:?} ({}), source {src:?}, target {tgt:?}",
                w.value, w.seen
            ));
        }
    }
    (lost, late_deletes)
}

/// A client keeps writing the source tenant — updates, creates, deletes at a steady
/// rate — while a Move runs without quiesce. With its log of acknowledged writes as
/// the oracle: every last value is at the target (or, when the run failed, still at
/// the source). Twice from the start of the run, because the interleaving differs
/// from run to run, and once from the start of the removal.
#[test]
fn a_client_writing_during_a_move_loses_no_acknowledged_write() {
    for (round, from) in ["Copy", "Copy", "RemoveSource"].into_iter().enumerate() {
        let (redis, _) = loaded_redis(SCALE);
        let proxy = slow(&redis);
        let state = state_dir(&format!("catchup-writer-{round}"));
        let existing = source_docs(&redis);
        let mut child = migrate_cmd(proxy.port(), &state, &["--batch-size", "20"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // Writing starts once the run is in stage `from` (or has ended).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while stage_in(&state) != from && child.try_wait().expect("wait").is_none() {
            assert!(std::time::Instant::now() < deadline, "the run never reached {from}");
            std::thread::sleep(Duration::from_millis(1));
        }
        let (ops, every) = if from == "Copy" { (1500, 2) } else { (300, 1) };
        let observed = state.clone();
        let writer = RedisWriter::start(
            redis.port(),
            SOURCE,
            existing,
            ops,
            Duration::from_millis(every),
            move || stage_in(&observed),
        );
        let log = writer.finish();
        let mut out = child.wait_with_output().expect("wait");
        let succeeded = out.status.success();
        let (lost, late) = lost_writes(&redis, &log, succeeded);
        assert!(
            lost.is_empty(),
            "round {round}: {} writes lost: {lost:#?}\n{}",
            lost.len(),
            text(&out)
        );
        if !succeeded {
            // The writer has stopped: a re-run finishes the move with every last value.
            assert!(
                text(&out).contains("source tenant still being written"),
                "{}",
                text(&out)
            );
            out = run(migrate_cmd(proxy.port(), &state, &[]));
            assert!(out.status.success(), "{}", text(&out));
            let (lost, _) = lost_writes(&redis, &log, true);
            assert!(lost.is_empty(), "round {round}, re-run: {lost:#?}");
        }
        let stages: std::collections::BTreeSet<&str> = log.iter().map(|w| w.seen.as_str()).collect();
        eprintln!(
            "round {round}: {} writes during {stages:?}, first run {}, {late} deletes after verification",
            log.len(),
            if succeeded {
                "succeeded"
            } else {
                "stopped: source still written"
            },
        );
    }
}
