//! Shared helpers of the integration tests: run the real `tenant-migrator` binary
//! against real servers, and state what the database must look like afterwards.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use tenant_migrator_testkit::RedisServer;
use tenant_migrator_testkit::fixture::{self, KeyState};

/// Every key of a database, and when it was read (TTLs run down in between): from `at`
/// to `end` — reading hundreds of megabytes takes a minute on a busy machine, and a key
/// is read anywhere in between.
pub struct Snapshot {
    pub keys: BTreeMap<Vec<u8>, KeyState>,
    pub at: Instant,
    pub end: Instant,
}

impl std::ops::Deref for Snapshot {
    type Target = BTreeMap<Vec<u8>, KeyState>;
    fn deref(&self) -> &Self::Target {
        &self.keys
    }
}

impl std::ops::DerefMut for Snapshot {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.keys
    }
}

pub const SOURCE: &str = "siraya";
pub const TARGET: &str = "tenant_b";

pub use fixture::{is_tenant_key, tenant_rest};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tenant-migrator")
}

/// A Redis loaded with the standard fixture at `scale`.
pub fn loaded_redis(scale: f64) -> (RedisServer, fixture::Loaded) {
    let redis = RedisServer::start().expect("redis-server must be installed (see .ci/run)");
    let loaded = fixture::load_standard(&mut redis.conn().expect("connect"), SOURCE, scale).expect("load fixture");
    (redis, loaded)
}

pub fn snapshot(redis: &RedisServer) -> Snapshot {
    let at = Instant::now();
    let keys = fixture::snapshot(&mut redis.conn().expect("connect"), |_| true).expect("snapshot");
    Snapshot {
        keys,
        at,
        end: Instant::now(),
    }
}

pub fn digest(s: &Snapshot) -> String {
    fixture::digest(&s.keys)
}

/// A fresh state directory for one test.
pub fn state_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `tenant-migrator migrate SOURCE TARGET` on Redis only, plus `extra` flags.
pub fn migrate_cmd(redis_port: u16, state: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.args([
        "migrate",
        SOURCE,
        TARGET,
        "--skip-config",
        "--skip-qdrant",
        "--skip-memgraph",
    ])
    .args(["--redis-host", "127.0.0.1", "--redis-port", &redis_port.to_string()])
    .arg("--state-dir")
    .arg(state)
    .args(extra)
    .env_remove("REDIS_PASSWORD")
    .env_remove("TENANT_API_TOKEN");
    c
}

pub fn run(mut cmd: std::process::Command) -> Output {
    cmd.output().expect("run tenant-migrator")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A TTL read `elapsed_ms` after `want` was: it ran down by at most that, ± 1 s.
fn same_ttl(got: i64, want: i64, elapsed_ms: i64) -> bool {
    (got < 0 && want < 0 && got == want)
        || (got >= 0 && want >= 0 && got <= want + 1_000 && got >= want - elapsed_ms - 1_000)
}

/// Checks that `after` is exactly `before` with the source tenant's keys copied
/// (or moved) to the target prefix: same type, value and TTL (± 1 s), every other
/// key byte-identical. Panics with the first differences.
pub fn assert_migrated(before: &Snapshot, after: &Snapshot, moved: bool) {
    // A target key read as late as `after.end`, its source as early as `before.at`.
    let elapsed_ms = after.end.duration_since(before.at).as_millis() as i64;
    let mut expected: BTreeMap<Vec<u8>, KeyState> = BTreeMap::new();
    for (k, v) in before.iter() {
        match tenant_rest(k, SOURCE) {
            Some(rest) => {
                let mut t = format!("{TARGET}_").into_bytes();
                t.extend_from_slice(rest);
                expected.insert(t, v.clone());
                if !moved {
                    expected.insert(k.clone(), v.clone());
                }
            }
            None => {
                expected.insert(k.clone(), v.clone());
            }
        }
    }
    let mut problems = Vec::new();
    for (k, want) in &expected {
        match after.get(k) {
            None => problems.push(format!("missing {}", String::from_utf8_lossy(k))),
            Some(got) if got.kind != want.kind || got.value != want.value => {
                problems.push(format!("value differs: {}", String::from_utf8_lossy(k)))
            }
            Some(got) if !same_ttl(got.pttl, want.pttl, elapsed_ms) => problems.push(format!(
                "TTL differs: {} ({} vs {})",
                String::from_utf8_lossy(k),
                got.pttl,
                want.pttl
            )),
            Some(_) => {}
        }
    }
    for k in after.keys().filter(|k| !expected.contains_key(*k)) {
        problems.push(format!("unexpected {}", String::from_utf8_lossy(k)));
    }
    assert!(
        problems.is_empty(),
        "{} differences, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}

/// Digest of every key that belongs to neither the source nor the target tenant.
pub fn digest_outside(snap: &Snapshot) -> String {
    let outside: BTreeMap<Vec<u8>, KeyState> = snap
        .iter()
        .filter(|(k, _)| !is_tenant_key(k, SOURCE) && !is_tenant_key(k, TARGET))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    fixture::digest(&outside)
}

/// The stage `store`'s phase shows in the state file of a run of `pair` in `state`
/// ("" before it has one): what a writer running beside the run sees.
pub fn stage_of(state: &Path, pair: (&str, &str), store: &str) -> String {
    std::fs::read_to_string(state.join(format!("{}--{}.json", pair.0, pair.1)))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["phases"][store]["checkpoint"]["stage"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Spawns `cmd` with its output piped and returns it once the state file shows
/// `store`'s phase in `stage`, or the run has ended.
pub fn spawn_until_stage(
    mut cmd: std::process::Command,
    state: &Path,
    pair: (&str, &str),
    store: &str,
    stage: &str,
) -> std::process::Child {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while stage_of(state, pair, store) != stage && child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the run never reached {stage}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child
}

/// Runs `cmd` and SIGKILLs it once the state file `{state}/{source}--{target}.json`
/// shows `store`'s phase in `stage` with at least `min_batch` batches done. Returns
/// whether it was killed there (false: it finished first, and its output is printed).
pub fn kill_at(
    cmd: std::process::Command,
    state: &Path,
    pair: (&str, &str),
    store: &str,
    stage: &str,
    min_batch: u64,
) -> bool {
    kill_when(cmd, state, pair, store, &format!("{stage} batch {min_batch}"), |cp| {
        Some(cp["stage"].as_str()? == stage && cp["batch"].as_u64()? >= min_batch)
    })
}

/// Runs `cmd` and SIGKILLs it once `reached` holds for `store`'s checkpoint in the
/// state file (`what` names the point for messages). Returns whether it was killed.
pub fn kill_when(
    mut cmd: std::process::Command,
    state: &Path,
    pair: (&str, &str),
    store: &str,
    what: &str,
    reached: impl Fn(&serde_json::Value) -> Option<bool>,
) -> bool {
    use std::time::Duration;
    let file = state.join(format!("{}--{}.json", pair.0, pair.1));
    let _ = std::fs::create_dir_all(state);
    let log = state.join(format!("run-{store}.log"));
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let mut child = cmd.stdout(out).stderr(err).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            return false;
        }
        let now = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| reached(&v["phases"][store]["checkpoint"]))
            .unwrap_or(false);
        if now {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            return true;
        }
        assert!(Instant::now() < deadline, "the run never reached {store} {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stdout of a successful command; panics with its output otherwise.
pub fn ok(o: std::io::Result<Output>) -> String {
    let o = o.expect("run kubectl (the image's client)");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A real API server with the TenantMigration and RagStack CRDs installed and `namespace` created.
pub fn kube_with_crd(namespace: &str) -> tenant_migrator_testkit::KubeApiServer {
    let kube = tenant_migrator_testkit::KubeApiServer::start().expect("kube-apiserver (run tools/setup.sh)");
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    kube.install_crd(&crd, namespace).expect("install the CRD");
    ok(kube.kubectl(&["create", "namespace", OPERATOR_NS]));
    kube
}

/// `kubectl auth can-i VERB RESOURCE --as WHO [-n NS]` ("yes" or "no"); `ns` empty for
/// cluster-scoped resources.
pub fn can_i(kube: &tenant_migrator_testkit::KubeApiServer, who: &str, verb: &str, resource: &str, ns: &str) -> String {
    let mut args = vec!["auth", "can-i", verb, resource, "--as", who];
    if !ns.is_empty() {
        args.extend(["-n", ns]);
    }
    let out = kube.kubectl(&args).expect("kubectl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Lets the default user of `redis` run RESTORE, or not (`NOPERM`): a write failure in
/// the middle of a run that no preflight can foresee, unlike a full `maxmemory`,
/// which the preflight refuses.
pub fn allow_restore(redis: &RedisServer, allowed: bool) {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg(if allowed { "+restore" } else { "-restore" })
        .query::<()>(&mut redis.conn().expect("connect"))
        .expect("ACL SETUSER");
}

/// The controller's own namespace in the tests: where RagStack Secrets live.
pub const OPERATOR_NS: &str = "tenant-migrator";

/// `kubectl create secret generic NAME -n OPERATOR_NS --from-literal=K=V ...`.
pub fn stack_secret(kube: &tenant_migrator_testkit::KubeApiServer, name: &str, pairs: &[(&str, &str)]) {
    let literals: Vec<String> = pairs.iter().map(|(k, v)| format!("--from-literal={k}={v}")).collect();
    let mut args = vec!["create", "secret", "generic", name, "-n", OPERATOR_NS];
    args.extend(literals.iter().map(String::as_str));
    ok(kube.kubectl(&args));
}

/// A TenantMigration manifest written the inline way (URLs and Secret references in
/// its spec), turned into what a user of a stack applies: a RagStack `stack-{name}`
/// holding those endpoints and references, allowing the migration's namespace, its two
/// tenants and its quiesce workloads, and the migration naming it in `spec.stackRef`.
pub fn via_stack(manifest: &str) -> String {
    use serde_yaml::{Mapping, Value};
    let mut tm: Value = serde_yaml::from_str(manifest).expect("a TenantMigration manifest");
    let name = tm["metadata"]["name"].as_str().expect("metadata.name").to_owned();
    let ns = tm["metadata"]["namespace"]
        .as_str()
        .expect("metadata.namespace")
        .to_owned();
    let spec = tm["spec"].as_mapping_mut().expect("spec");
    let mut stack = Mapping::new();
    for store in ["config", "redis", "qdrant", "memgraph"] {
        let Some(Value::Mapping(phase)) = spec.get_mut(store) else {
            continue;
        };
        let mut endpoint = Mapping::new();
        for field in [
            "url",
            "uri",
            "tokenSecretRef",
            "passwordSecretRef",
            "apiKeySecretRef",
            "credentialsSecretRef",
        ] {
            if let Some(v) = phase.remove(field) {
                endpoint.insert(field.into(), v);
            }
        }
        if !endpoint.is_empty() {
            stack.insert(store.into(), Value::Mapping(endpoint));
        }
    }
    let tenants = vec![spec["source"].clone(), spec["target"].clone()];
    let quiesce = spec.get("quiesce").cloned().unwrap_or(Value::Sequence(Vec::new()));
    let stack_name = format!("stack-{name}");
    spec.insert(
        "stackRef".into(),
        serde_yaml::to_value(serde_json::json!({"name": stack_name})).expect("yaml"),
    );
    let access = serde_json::json!([{"namespaces": [ns], "tenants": tenants, "quiesce": quiesce}]);
    stack.insert("access".into(), serde_yaml::to_value(access).expect("yaml"));
    let stack = serde_json::json!({
        "apiVersion": "tenancy.dev/v1alpha1",
        "kind": "RagStack",
        "metadata": {"name": stack_name},
        "spec": stack,
    });
    format!(
        "{}---\n{}",
        serde_yaml::to_string(&stack).expect("yaml"),
        serde_yaml::to_string(&tm).expect("yaml")
    )
}

/// `kubectl apply` of `yaml`, which must succeed.
pub fn apply_ok(kube: &tenant_migrator_testkit::KubeApiServer, yaml: &str) {
    ok(kube.apply(yaml));
}

/// A TenantMigration as `kubectl get -o json` shows it.
pub fn get_tm(kube: &tenant_migrator_testkit::KubeApiServer, ns: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(kube.kubectl(&["get", "tm", name, "-n", ns, "-o", "json"]))).expect("JSON")
}

/// Polls a TenantMigration until `done` holds (90 s at most).
pub fn wait_for_tm(
    kube: &tenant_migrator_testkit::KubeApiServer,
    ns: &str,
    name: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_tm_within(kube, ns, name, 90, done)
}

/// [`wait_for_tm`] for at most `secs`.
pub fn wait_for_tm_within(
    kube: &tenant_migrator_testkit::KubeApiServer,
    ns: &str,
    name: &str,
    secs: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let tm = get_tm(kube, ns, name);
        if done(&tm) {
            return tm;
        }
        assert!(Instant::now() < deadline, "{name} never got there: {tm:#}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether a TenantMigration reached Succeeded or Failed.
pub fn finished(tm: &serde_json::Value) -> bool {
    matches!(tm["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// A fresh directory for a controller test and the kubeconfig (admin, or `token`) in it.
pub fn controller_dir(
    kube: &tenant_migrator_testkit::KubeApiServer,
    name: &str,
    ns: &str,
    token: Option<&str>,
) -> (PathBuf, PathBuf) {
    let dir = state_dir(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = dir.join("kubeconfig");
    match token {
        Some(t) => kube.write_kubeconfig_for(&kubeconfig, ns, t),
        None => kube.write_kubeconfig(&kubeconfig, ns),
    }
    .expect("kubeconfig");
    (dir, kubeconfig)
}

/// A TenantMigration of Redis only, through its own RagStack ([`via_stack`]);
/// `spec_extra` adds spec lines (each ending in a newline).
pub fn redis_only_tm(name: &str, ns: &str, source: &str, target: &str, redis: &str, spec_extra: &str) -> String {
    via_stack(&format!(
        "apiVersion: tenancy.dev/v1alpha1\nkind: TenantMigration\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  source: {source}\n  target: {target}\n{spec_extra}  config: {{enabled: false}}\n  \
         redis: {redis}\n  qdrant: {{enabled: false}}\n  memgraph: {{enabled: false}}\n"
    ))
}

/// A `tenant-migrator controller` process; killed (SIGKILL) when dropped.
pub struct ControllerProcess(pub std::process::Child);

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The controller watching `ns`, logging (appending) to `log`.
pub fn start_controller_in(ns: &str, kubeconfig: &Path, log: &Path, metrics_port: u16) -> ControllerProcess {
    start_controller_with(ns, kubeconfig, log, metrics_port, &[])
}

/// Like [`start_controller_in`], with more flags.
pub fn start_controller_with(
    ns: &str,
    kubeconfig: &Path,
    log: &Path,
    metrics_port: u16,
    extra: &[&str],
) -> ControllerProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    ControllerProcess(
        std::process::Command::new(bin())
            .args(["controller", "--namespace", ns, "--secrets-namespace", OPERATOR_NS])
            .args(extra)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .env("KUBECONFIG", kubeconfig)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("controller"),
    )
}

/// A proxy to `redis` adding 2 ms each way: with small batches a stage lasts seconds,
/// long enough for a test to stop, kill or watch it mid-way.
pub fn slow_redis(redis: &RedisServer) -> tenant_migrator_testkit::DelayProxy {
    tenant_migrator_testkit::DelayProxy::start(
        ([127, 0, 0, 1], redis.port()).into(),
        std::time::Duration::from_millis(2),
    )
    .expect("proxy")
}

/// Whether a TenantMigration's Redis phase has checkpointed at least `n` batches.
pub fn redis_past_batch(n: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |tm| {
        tm["status"]["phases"]["redis"]["checkpoint"]["batch"]
            .as_u64()
            .is_some_and(|b| b >= n)
    }
}

/// Bytes of `len` that differ with `seed`: values that compress poorly and compare exactly.
pub fn filler(seed: usize, len: usize) -> Vec<u8> {
    let unit = format!("{seed:012}-");
    unit.as_bytes().iter().copied().cycle().take(len).collect()
}

/// Fields `field-0` … `field-{fields - 1}` of hash `key`, each 1 kB of [`filler`],
/// pipelined a thousand at a time.
pub fn fill_hash(c: &mut redis::Connection, key: &str, fields: usize) {
    for chunk in (0..fields).step_by(1_000) {
        let mut p = redis::pipe();
        for n in chunk..(chunk + 1_000).min(fields) {
            p.cmd("HSET")
                .arg(key)
                .arg(format!("field-{n}"))
                .arg(filler(n, 1_000))
                .ignore();
        }
        p.query::<()>(c).expect("HSET");
    }
}

/// Large values and keys in `SOURCE`'s tenant: five 20 MB documents, a 200 MB hash
/// (200,000 fields of 1 kB), a 40 MB list, set and sorted set, and a 40 MB string with
/// a TTL.
pub fn load_large_values(redis: &RedisServer) {
    let mut c = redis.conn().expect("connect");
    for i in 0..5 {
        redis::cmd("SET")
            .arg(format!("{SOURCE}_full_docs:large-{i}"))
            .arg(filler(i, 20 << 20))
            .query::<()>(&mut c)
            .expect("SET");
    }
    fill_hash(&mut c, &format!("{SOURCE}_llm_response_cache:huge"), 200_000);
    for chunk in 0..40 {
        let mut p = redis::pipe();
        for e in 0..1_000 {
            let n = chunk * 1_000 + e;
            p.cmd("RPUSH")
                .arg(format!("{SOURCE}_text_chunks:list"))
                .arg(filler(n, 1_000))
                .ignore();
            p.cmd("SADD")
                .arg(format!("{SOURCE}_entity_chunks:set"))
                .arg(filler(n, 1_000))
                .ignore();
            p.cmd("ZADD")
                .arg(format!("{SOURCE}_relation_chunks:zset"))
                .arg(n as f64 / 7.0)
                .arg(filler(n, 1_000))
                .ignore();
        }
        p.query::<()>(&mut c).expect("list, set, zset");
    }
    set_streamed(&mut c, 99);
}

/// A 40 MB string with a two-hour TTL at `{SOURCE}_full_docs:streamed`: above the 32 MiB
/// that makes the Redis phase stream a key page by page.
pub fn set_streamed(c: &mut redis::Connection, seed: usize) {
    redis::cmd("SET")
        .arg(format!("{SOURCE}_full_docs:streamed"))
        .arg(filler(seed, 40 << 20))
        .arg("EX")
        .arg(7_200)
        .query::<()>(c)
        .expect("SET");
}

/// A plain HTTP/1.0 `GET` of `path` on a loopback port: the status code and the body,
/// or `None` while nothing answers there.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
