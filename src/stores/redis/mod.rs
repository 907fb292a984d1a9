//! The Redis / DragonflyDB phase.
//!
//! A key belongs to the tenant when it starts with one of the tenant's exact key
//! prefixes (LightRAG's `{tenant}_{namespace}:` by default); only that prefix is
//! rewritten. Keys are found with one SCAN per page (never all keys in memory) and
//! copied pipelined: small strings by value (PTTL + GETRANGE, SET; see [`snapshot`]),
//! every other key with PTTL + DUMP and RESTORE, which keeps type, value and TTL for
//! every type including streams. Commands used: PING, SCAN, PTTL, GETRANGE, SET, DUMP,
//! RESTORE, EXISTS, MEMORY USAGE, UNLINK, WATCH, MULTI, EXEC, TYPE and the type's read
//! command (only to compare two values whose DUMP payloads differ). All of them exist
//! on Redis ≥ 6 and DragonflyDB.
//! On a Redis Cluster, [`topology`] scans every primary and routes each keyed command
//! to the primary owning its slot.
//!
//! This module must not order phases, retry or persist checkpoints (the engine does).

use futures::StreamExt;
use redis::{Cmd, RedisError, RedisResult, Value};

mod large;
mod snapshot;
mod topology;

use self::snapshot::{Found, Payload, Reading, Snapshot};

use self::topology::{ScanCursor, Topology};
use super::{GroupCount, Phase, PhasePlan, Recopied, StepOutcome, StoreFailure, Verified, digest};
use crate::Secret;
use crate::api::{OnConflict, Stage, TenantId};

/// LightRAG's key-value namespaces (lightrag/kg/redis_impl.py, 1.4–1.5).
pub const LIGHTRAG_NAMESPACES: [&str; 8] = [
    "full_docs",
    "text_chunks",
    "llm_response_cache",
    "full_entities",
    "full_relations",
    "entity_chunks",
    "relation_chunks",
    "doc_status",
];

/// Key prefix templates of LightRAG's layout: one per namespace, plus the 1.5
/// doc-status index keys. `{tenant}_doc_status__sched_rebuild:` is transient and
/// deliberately absent.
pub fn lightrag_prefix_templates() -> Vec<String> {
    LIGHTRAG_NAMESPACES
        .iter()
        .map(|ns| format!("{{tenant}}_{ns}:"))
        .chain(std::iter::once("{tenant}_doc_status__sched:".to_owned()))
        .collect()
}

const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Everything the Redis phase needs, resolved by the engine.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: String,
    pub password: Option<Secret>,
    pub source: TenantId,
    pub target: TenantId,
    pub on_conflict: OnConflict,
    /// Templates containing `{tenant}`; empty means LightRAG's layout.
    pub key_prefixes: Vec<String>,
    /// Keys per SCAN page and pipeline.
    pub batch_size: usize,
}

/// Errors of the Redis phase; every one says which key or which operation.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("invalid Redis settings: {0}")]
    Settings(String),
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("Redis at {url} rejected the credentials: {source}")]
    Auth {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("{op} failed: {source}")]
    Command {
        op: String,
        #[source]
        source: RedisError,
    },
    #[error(
        "target key {target:?} already exists with a different value than source key {source_key:?} (onConflict: Fail)"
    )]
    Conflict { source_key: String, target: String },
    #[error(
        "{count} target keys already exist with different values (e.g. {examples}); onConflict is Fail — choose Skip or Overwrite, or clear the target"
    )]
    ConflictsFound { count: u64, examples: String },
    #[error("target tenant already holds {count} keys with no source counterpart (e.g. {example}); onConflict is Fail")]
    TargetNotEmpty { count: u64, example: String },
    /// The copy would not fit, or filling memory would evict other keys.
    #[error("Redis at {url}: {detail}")]
    Capacity { url: String, detail: String },
    #[error("{missing} source keys have no target key yet (e.g. {example:?})")]
    Incomplete { missing: u64, example: String },
    #[error("{count} target keys were copies of source keys deleted since (e.g. {example:?}); removed from the target")]
    Orphans { count: u64, example: String },
    #[error("source keys keep changing during their removal (e.g. {example:?})")]
    Busy { example: String },
    #[error("verification failed: {0}")]
    Mismatch(String),
}

impl RedisStoreError {
    fn command(op: impl Into<String>) -> impl FnOnce(RedisError) -> Self {
        let op = op.into();
        move |source| Self::Command { op, source }
    }
}

fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("OOM" | "LOADING" | "TRYAGAIN" | "BUSY" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY" | "MOVED" | "ASK")
        )
}

impl StoreFailure for RedisStoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Busy { .. } => true,
            Self::Command { source, .. } => is_transient(source),
            _ => false,
        }
    }

    fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete { .. } | Self::Orphans { .. })
    }
}

/// One key prefix of the tenant, rendered for source and target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPrefix {
    pub template: String,
    pub source: String,
    pub target: String,
}

/// The tenant's key prefixes and the SCAN patterns that find them.
#[derive(Clone, Debug)]
pub struct KeySpace {
    prefixes: Vec<KeyPrefix>,
    source_pattern: String,
    /// The literal start of every source key (`source_pattern` without its `*`).
    source_start: String,
    /// Finds the keys of both tenants in one SCAN: the iteration, not the matching, is
    /// what a SCAN costs the server (about a microsecond per key in the database).
    both_pattern: String,
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Escapes glob metacharacters so that SCAN MATCH takes the text literally.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn common_prefix<'a>(mut items: impl Iterator<Item = &'a str>) -> String {
    let Some(first) = items.next() else {
        return String::new();
    };
    let mut len = first.len();
    for s in items {
        len = first
            .bytes()
            .zip(s.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    while !first.is_char_boundary(len) {
        len -= 1;
    }
    first[..len].to_owned()
}

impl KeySpace {
    /// Renders the templates for both tenants. A template must contain `{tenant}`
    /// once, with no id character right before it and a non-id character somewhere
    /// after it: otherwise tenant `a` would also match tenant `a2`'s keys.
    pub fn new(templates: &[String], source: &TenantId, target: &TenantId) -> Result<Self, String> {
        let templates = if templates.is_empty() {
            lightrag_prefix_templates()
        } else {
            templates.to_vec()
        };
        let mut prefixes = Vec::with_capacity(templates.len());
        for t in &templates {
            let Some(at) = t.find(TENANT_PLACEHOLDER) else {
                return Err(format!("key prefix template {t:?} does not contain {{tenant}}"));
            };
            let (before, after) = (&t[..at], &t[at + TENANT_PLACEHOLDER.len()..]);
            if after.contains(TENANT_PLACEHOLDER) {
                return Err(format!("key prefix template {t:?} contains {{tenant}} more than once"));
            }
            if before.chars().next_back().is_some_and(is_id_char) {
                return Err(format!(
                    "key prefix template {t:?}: the character before {{tenant}} must not be a letter, digit or '_'"
                ));
            }
            if after.chars().all(is_id_char) {
                return Err(format!(
                    "key prefix template {t:?} must end the tenant part with a delimiter such as ':' \
                     (otherwise tenant ids that extend the source id would match)"
                ));
            }
            prefixes.push(KeyPrefix {
                template: t.clone(),
                source: t.replace(TENANT_PLACEHOLDER, source.as_str()),
                target: t.replace(TENANT_PLACEHOLDER, target.as_str()),
            });
        }
        // Longest first, so a key is attributed to the most specific prefix.
        prefixes.sort_by(|a, b| b.source.len().cmp(&a.source.len()).then(a.source.cmp(&b.source)));
        prefixes.dedup_by(|a, b| a.source == b.source);
        let source_start = common_prefix(prefixes.iter().map(|p| p.source.as_str()));
        let source_pattern = format!("{}*", glob_escape(&source_start));
        let both_pattern = format!(
            "{}*",
            glob_escape(&common_prefix(
                prefixes.iter().flat_map(|p| [p.source.as_str(), p.target.as_str()])
            ))
        );
        Ok(Self {
            prefixes,
            source_pattern,
            source_start,
            both_pattern,
        })
    }

    pub fn prefixes(&self) -> &[KeyPrefix] {
        &self.prefixes
    }

    /// The SCAN MATCH pattern that finds every source key (and possibly others,
    /// filtered by [`KeySpace::source_group`]).
    pub fn source_pattern(&self) -> &str {
        &self.source_pattern
    }

    /// Index of the prefix that `key` belongs to on the source side.
    pub fn source_group(&self, key: &[u8]) -> Option<usize> {
        self.prefixes.iter().position(|p| key.starts_with(p.source.as_bytes()))
    }

    fn target_group(&self, key: &[u8]) -> Option<usize> {
        self.prefixes.iter().position(|p| key.starts_with(p.target.as_bytes()))
    }

    /// The target key for a source key of group `g`: only the prefix changes.
    pub fn target_key(&self, g: usize, key: &[u8]) -> Vec<u8> {
        let p = &self.prefixes[g];
        let mut out = Vec::with_capacity(p.target.len() + key.len() - p.source.len());
        out.extend_from_slice(p.target.as_bytes());
        out.extend_from_slice(&key[p.source.len()..]);
        out
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

// SCAN may return a key twice (when the table shrinks mid-scan), and nothing here
// remembers the keys it has seen: memory stays bounded by a batch whatever the size
// of the tenant. A duplicate only ever inflates a count — a copy or comparison done
// twice is done once — and a count check it upsets fails towards safety: another
// pass, never a removal.

/// PTTL slack between a source key and its copy: RESTORE sets the TTL read a moment
/// before, so a copy may expire a little later than its source.
const TTL_SLACK_MS: i64 = 2_000;

/// Whether a copy's PTTL matches its source's: both without TTL, or within
/// [`TTL_SLACK_MS`].
fn same_ttl(source: i64, target: i64) -> bool {
    match (source > 0, target > 0) {
        (false, false) => true,
        (true, true) => (source - target).abs() <= TTL_SLACK_MS,
        _ => false,
    }
}

/// What a comparison or removal batch found.
#[derive(Default)]
struct Checked {
    /// Equal to their target (Verify), or removed (RemoveSource).
    equal: u64,
    /// Kept under `onConflict: Skip`.
    kept: u64,
    recopied: Vec<Recopied>,
}

impl Checked {
    fn add(&mut self, other: Checked) {
        self.equal += other.equal;
        self.kept += other.kept;
        self.recopied.extend(other.recopied);
    }
}

/// What a comparison of a source key with its target calls for.
enum Verdict {
    /// Equal: done (Verify), or to be removed (RemoveSource).
    Equal,
    /// Differs, and kept as it is under `onConflict: Skip` (the source too).
    Kept,
    /// Missing or differs: written again from the source.
    Again,
}

/// What a batch did, and the keys its [`Reading`] could not carry (handed back).
type Handled<'p> = (Checked, Vec<&'p Pair>);

/// A source key and where it goes.
struct Pair {
    group: usize,
    source: Vec<u8>,
    target: Vec<u8>,
}

/// One source key in this many is sized with MEMORY USAGE in the preflight.
const MEMORY_SAMPLE: u64 = 8;

/// The Redis phase of one migration.
pub struct RedisPhase {
    settings: RedisSettings,
    keys: KeySpace,
    conn: Option<Topology>,
    /// The next SCAN page, requested while the current one is processed.
    prefetch: Option<Prefetch>,
    /// Connections of their own per server for WATCH … EXEC, kept between batches.
    exclusive: Exclusive,
    /// The plan saw this migration's earlier work: under `onConflict: Fail` a target key
    /// that differs from its source is then this migration's copy of a source key
    /// changed since, not someone else's (the first run's preflight found none).
    resuming: bool,
    /// Digests of key names ([`KeySet`]), keyed at random per process.
    names: std::hash::RandomState,
    /// Per prefix, the [`KeySet`] of the target keys the plan found without a source
    /// key (the target's own, or a resumed Move's keys already moved).
    extras: Vec<KeySet>,
}

/// Transactions of different slots of a Redis Cluster in flight at once during
/// RemoveSource, each on a connection of its own (a slot's keys are one transaction).
const TRANSACTIONS_IN_FLIGHT: usize = 8;

/// Chunks of a page worked on at once (see [`RedisPhase::step`]).
const CHUNKS_IN_FLIGHT: usize = 4;

/// Connections of their own per server for WATCH … MULTI/EXEC (see
/// `Topology::exclusive`): taken for one transaction and given back only after a round
/// that ended cleanly (no WATCH left behind); one that failed is dropped.
#[derive(Default)]
struct Exclusive(std::sync::Mutex<std::collections::HashMap<usize, Vec<redis::aio::MultiplexedConnection>>>);

impl Exclusive {
    /// A connection to the server of `key`, and that server's index.
    async fn take(&self, conn: &Topology, key: &[u8]) -> RedisResult<(usize, redis::aio::MultiplexedConnection)> {
        let server = conn.server_of(key);
        let idle = self.pool().get_mut(&server).and_then(Vec::pop);
        match idle {
            Some(tx) => Ok((server, tx)),
            None => Ok((server, conn.exclusive(key).await?)),
        }
    }

    fn give_back(&self, server: usize, tx: redis::aio::MultiplexedConnection) {
        self.pool().entry(server).or_default().push(tx);
    }

    fn clear(&self) {
        self.pool().clear();
    }

    fn pool(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<usize, Vec<redis::aio::MultiplexedConnection>>> {
        // Held for a push or a pop only; a panic elsewhere cannot leave the map half-changed.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The names of a prefix's keys (after the prefix) in constant space: how many, and
/// the wrapping sum of their digests. A source prefix and its target prefix holding the
/// same names have equal sets; a name missing on one side and another one extra there
/// (a key created after its page was copied, and the copy of a key deleted since)
/// balance the count but not the sum — but for a chance in 2^64, the digests being
/// keyed at random per process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeySet {
    count: u64,
    sum: u64,
}

impl KeySet {
    fn add(&mut self, digest: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(digest);
    }

    fn with(self, other: Self) -> Self {
        Self {
            count: self.count + other.count,
            sum: self.sum.wrapping_add(other.sum),
        }
    }

    fn without(self, other: Self) -> Self {
        Self {
            count: self.count.saturating_sub(other.count),
            sum: self.sum.wrapping_sub(other.sum),
        }
    }
}

/// Keys per prefix of both tenants, as `RedisPhase::count_sides` found them.
struct Sides {
    source: Vec<KeySet>,
    target: Vec<KeySet>,
    /// Target keys whose source key is gone, when they were looked for.
    orphans: Option<Vec<u64>>,
}

impl Sides {
    fn counts(sets: &[KeySet]) -> Vec<u64> {
        sets.iter().map(|s| s.count).collect()
    }
}

/// A SCAN page and where the next one starts (`None`: every server scanned).
type Page = (Option<ScanCursor>, Vec<Vec<u8>>);

struct Prefetch {
    at: ScanCursor,
    pattern: String,
    count: usize,
    task: tokio::task::JoinHandle<Result<Page, RedisStoreError>>,
}

impl RedisPhase {
    /// Checks the settings; connects nothing yet.
    pub fn new(settings: RedisSettings) -> Result<Self, RedisStoreError> {
        let keys = KeySpace::new(&settings.key_prefixes, &settings.source, &settings.target)
            .map_err(RedisStoreError::Settings)?;
        if settings.batch_size == 0 {
            return Err(RedisStoreError::Settings("batch size must be at least 1".into()));
        }
        Ok(Self {
            settings,
            keys,
            conn: None,
            prefetch: None,
            exclusive: Default::default(),
            resuming: false,
            names: std::hash::RandomState::new(),
            extras: Vec::new(),
        })
    }

    pub fn key_space(&self) -> &KeySpace {
        &self.keys
    }

    /// Connects (again, when a cluster's slots moved under us): to the server, or to
    /// every primary of a Redis Cluster.
    async fn connect(&mut self) -> Result<Topology, RedisStoreError> {
        if let Some(c) = &self.conn
            && !c.is_stale()
        {
            return Ok(c.clone());
        }
        let url = self.settings.url.clone();
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|e| RedisStoreError::Settings(format!("Redis URL {url:?}: {e}")))?;
        if info.redis_settings().password().is_some() {
            return Err(RedisStoreError::Settings(format!(
                "Redis URL {url:?} contains a password; pass it through a Secret or REDIS_PASSWORD instead"
            )));
        }
        let info = match &self.settings.password {
            Some(p) => {
                let rs = info.redis_settings().clone().set_password(p.expose());
                info.set_redis_settings(rs)
            }
            None => info,
        };
        // Pipelines must not wait on Nagle's algorithm: every batch costs round trips.
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let seed = info.addr().to_string();
        let topology = Topology::discover(info).await.map_err(|(addr, source)| {
            let at = if addr == seed {
                url.clone()
            } else {
                format!("{addr} (a primary of the cluster at {url})")
            };
            classify_connect(&at, source)
        })?;
        self.prefetch = None;
        self.exclusive.clear();
        self.conn = Some(topology.clone());
        Ok(topology)
    }

    /// One SCAN page. While the caller works on it, the next page is already
    /// requested on the same multiplexed connection, which hides a round trip per page.
    async fn page(
        &mut self,
        conn: &Topology,
        at: ScanCursor,
        pattern: &str,
        count: usize,
    ) -> Result<Page, RedisStoreError> {
        let scan = |conn: Topology, at: ScanCursor, pattern: String| async move {
            conn.scan(at, &pattern, count)
                .await
                .map_err(RedisStoreError::command(format!("SCAN {at} MATCH {pattern}")))
        };
        let page = match self.prefetch.take() {
            Some(p) if p.at == at && p.pattern == pattern && p.count == count => match p.task.await {
                Ok(r) => r,
                Err(e) => Err(RedisStoreError::Settings(format!("prefetch of SCAN {at} ended: {e}"))),
            },
            other => {
                if let Some(p) = other {
                    p.task.abort();
                }
                scan(conn.clone(), at, pattern.to_owned()).await
            }
        }?;
        if let Some(next) = page.0 {
            self.prefetch = Some(Prefetch {
                at: next,
                pattern: pattern.to_owned(),
                count,
                task: tokio::spawn(scan(conn.clone(), next, pattern.to_owned())),
            });
        }
        Ok(page)
    }

    fn pairs(&self, keys: Vec<Vec<u8>>) -> Vec<Pair> {
        keys.into_iter()
            .filter_map(|k| {
                let g = self.keys.source_group(&k)?;
                Some(Pair {
                    group: g,
                    target: self.keys.target_key(g, &k),
                    source: k,
                })
            })
            .collect()
    }

    /// Whether two keys hold the same value. DUMP payloads decide it in the common
    /// case; when they differ, the values are compared by type, since a large set or
    /// hash may serialise its members in a different order after RESTORE.
    async fn same_value(conn: &Topology, p: &Pair, a: Payload<'_>, b: Payload<'_>) -> Result<bool, RedisStoreError> {
        match (a, b) {
            (Payload::String(a), Payload::String(b)) => Ok(a == b),
            (Payload::Dump(a_dump), Payload::Dump(b_dump)) => {
                Self::same_dumped(conn, &p.source, a_dump, &p.target, b_dump).await
            }
            _ => Ok(false),
        }
    }

    /// [`Self::same_value`] of two keys read by `DUMP`.
    async fn same_dumped(
        conn: &Topology,
        a: &[u8],
        a_dump: &[u8],
        b: &[u8],
        b_dump: &[u8],
    ) -> Result<bool, RedisStoreError> {
        if a_dump == b_dump {
            return Ok(true);
        }
        let types: Vec<String> = all(
            conn,
            vec![(a, keyed("TYPE", a)), (b, keyed("TYPE", b))],
            format!("TYPE {}", show(a)),
        )
        .await?;
        let (ta, tb) = (&types[0], &types[1]);
        if ta != tb {
            return Ok(false);
        }
        let read = |key: &[u8]| -> Option<redis::Cmd> {
            let mut c = match ta.as_str() {
                "string" => redis::cmd("GET"),
                "hash" => redis::cmd("HGETALL"),
                "set" => redis::cmd("SMEMBERS"),
                "list" => {
                    let mut c = redis::cmd("LRANGE");
                    c.arg(key).arg(0).arg(-1);
                    return Some(c);
                }
                "zset" => {
                    let mut c = redis::cmd("ZRANGE");
                    c.arg(key).arg(0).arg(-1).arg("WITHSCORES");
                    return Some(c);
                }
                "stream" => {
                    let mut c = redis::cmd("XRANGE");
                    c.arg(key).arg("-").arg("+");
                    return Some(c);
                }
                _ => return None,
            };
            c.arg(key);
            Some(c)
        };
        let (Some(ca), Some(cb)) = (read(a), read(b)) else {
            return Ok(false);
        };
        let mut values: Vec<Vec<Vec<u8>>> = all(conn, vec![(a, ca), (b, cb)], format!("read {}", show(a))).await?;
        let (mut vb, mut va) = (values.pop().unwrap_or_default(), values.pop().unwrap_or_default());
        if matches!(ta.as_str(), "hash" | "set") {
            // Unordered types: compare as sorted (field, value) pairs or members.
            if ta == "hash" {
                let pairs = |v: Vec<Vec<u8>>| {
                    let mut p: Vec<(Vec<u8>, Vec<u8>)> = v
                        .chunks(2)
                        .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
                        .collect();
                    p.sort();
                    p
                };
                return Ok(pairs(va) == pairs(vb));
            }
            va.sort();
            vb.sort();
        }
        Ok(va == vb)
    }

    /// DUMPs of `keys`, `None` for a key that does not exist.
    async fn dumps(conn: &Topology, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, RedisStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let commands = keys.iter().map(|k| (*k, keyed("DUMP", k))).collect();
        all(conn, commands, format!("DUMP batch from {}", show(keys[0]))).await
    }

    /// Whether every target key is this migration's own (earlier) copy.
    fn own_targets(&self) -> bool {
        self.resuming && self.settings.on_conflict == OnConflict::Fail
    }

    /// Copies `pairs` read as `reading`; returns (done, skipped) and the keys this reading
    /// cannot carry (see [`Reading::Strings`]).
    async fn copy_pairs<'p>(
        &self,
        conn: &Topology,
        reading: Reading,
        pairs: &[&'p Pair],
    ) -> Result<(u64, u64, Vec<&'p Pair>), RedisStoreError> {
        let mut other = Vec::new();
        if pairs.is_empty() {
            return Ok((0, 0, other));
        }
        let read = reading.reads(pairs.iter().map(|p| p.source.as_slice()));
        let values = replies(conn, read, format!("read batch from {}", show(&pairs[0].source))).await?;
        let replace = self.settings.on_conflict == OnConflict::Overwrite || self.own_targets();
        let mut write: Vec<(&[u8], Cmd)> = Vec::with_capacity(pairs.len());
        // Each value is held once as read and once in its write: not copied again.
        let mut written: Vec<(&Pair, Snapshot<'_>)> = Vec::with_capacity(pairs.len());
        for (&p, v) in pairs.iter().zip(values.chunks(2)) {
            match reading.found(&v[0], &v[1]) {
                Found::Value(s) => {
                    write.push((p.target.as_slice(), s.write(&p.target, replace)));
                    written.push((p, s));
                }
                Found::Other => other.push(p),
                Found::Gone => {} // expired or deleted since SCAN: nothing to copy
            }
        }
        if written.is_empty() {
            return Ok((0, 0, other));
        }
        let results = conn.keyed(write).await.map_err(RedisStoreError::command(format!(
            "write batch to {}",
            show(&written[0].0.target)
        )))?;
        let mut done = 0;
        let mut busy = Vec::new();
        for ((p, s), r) in written.into_iter().zip(results) {
            if snapshot::target_existed(&r) {
                busy.push((p, s));
            } else if let Err(source) = r {
                return Err(RedisStoreError::Command {
                    op: format!("write of {}", show(&p.target)),
                    source,
                });
            } else {
                done += 1;
            }
        }
        let mut skipped = 0;
        if !busy.is_empty() {
            let targets = reading.reads(busy.iter().map(|(p, _)| p.target.as_slice()));
            let existing = replies(conn, targets, "read of existing target keys".into()).await?;
            for ((p, s), t) in busy.into_iter().zip(existing.chunks(2)) {
                let same = match reading.found(&t[0], &t[1]) {
                    Found::Value(t) => Self::same_value(conn, p, s.value, t.value).await?,
                    Found::Gone | Found::Other => false,
                };
                if same {
                    done += 1; // this migration's own earlier work, or a duplicate from SCAN
                } else if self.settings.on_conflict == OnConflict::Skip {
                    skipped += 1;
                } else {
                    return Err(RedisStoreError::Conflict {
                        source_key: show(&p.source),
                        target: show(&p.target),
                    });
                }
            }
        }
        Ok((done, skipped, other))
    }

    /// Verify: compares each source key of `pairs` with its target by type, value and
    /// TTL. Equal ones count as done; a target that is missing or differs is written
    /// again from the source as it is now (catch-up) — except under `onConflict: Skip`,
    /// where a differing target keeps its own value (and the source is kept too). Source
    /// keys that `reading` cannot carry are handed back.
    async fn compare_pairs<'p>(
        &self,
        conn: &Topology,
        reading: Reading,
        pairs: &[&'p Pair],
    ) -> Result<Handled<'p>, RedisStoreError> {
        let mut checked = Checked::default();
        let mut other = Vec::new();
        if pairs.is_empty() {
            return Ok((checked, other));
        }
        let reads = reading.reads(pairs.iter().flat_map(|p| [p.source.as_slice(), p.target.as_slice()]));
        let values = replies(conn, reads, format!("comparison from {}", show(&pairs[0].source))).await?;
        let mut again = Vec::new();
        for (&p, v) in pairs.iter().zip(values.chunks(4)) {
            let s = match reading.found(&v[0], &v[1]) {
                Found::Value(s) => s,
                Found::Other => {
                    other.push(p);
                    continue;
                }
                Found::Gone => continue, // gone from the source since SCAN: nothing to compare
            };
            match self.judge(conn, p, &s, &reading.found(&v[2], &v[3])).await? {
                Verdict::Equal => checked.equal += 1,
                Verdict::Kept => checked.kept += 1,
                Verdict::Again => again.push((p, s)),
            }
        }
        checked.recopied = self.write_again(conn, again).await?;
        Ok((checked, other))
    }

    /// What a source key as read (`s`) and its target as found (`t`) call for: equal
    /// when the value is (by string, by DUMP payload, or by type when the payloads
    /// differ) and so is the TTL (both none, or within [`TTL_SLACK_MS`]).
    async fn judge(
        &self,
        conn: &Topology,
        p: &Pair,
        s: &Snapshot<'_>,
        t: &Found<'_>,
    ) -> Result<Verdict, RedisStoreError> {
        let equal = match t {
            Found::Value(t) => same_ttl(s.pttl, t.pttl) && Self::same_value(conn, p, s.value, t.value).await?,
            Found::Gone | Found::Other => false,
        };
        Ok(match t {
            _ if equal => Verdict::Equal,
            Found::Value(_) | Found::Other if self.settings.on_conflict == OnConflict::Skip => Verdict::Kept,
            _ => Verdict::Again,
        })
    }

    /// Copy of one key too large for a batch ([`large`]); (done, skipped) as for a batch.
    async fn copy_large(&self, conn: &Topology, p: &Pair) -> Result<Checked, RedisStoreError> {
        let replace = self.settings.on_conflict == OnConflict::Overwrite || self.own_targets();
        let exists: Vec<bool> = all(
            conn,
            vec![(p.target.as_slice(), keyed("EXISTS", &p.target))],
            "EXISTS".into(),
        )
        .await?;
        let mut c = Checked::default();
        if exists.first() == Some(&true) && !replace {
            if self.equal_large(conn, p).await? {
                c.equal = 1; // this migration's own earlier work
            } else if self.settings.on_conflict == OnConflict::Skip {
                c.kept = 1;
            } else {
                return Err(RedisStoreError::Conflict {
                    source_key: show(&p.source),
                    target: show(&p.target),
                });
            }
            return Ok(c);
        }
        if large::copy(conn, &p.source, &p.target).await?.is_some() {
            c.equal = 1;
        }
        Ok(c)
    }

    /// Whether a large key's target equals it, TTL included.
    async fn equal_large(&self, conn: &Topology, p: &Pair) -> Result<bool, RedisStoreError> {
        let ttls: Vec<i64> = all(
            conn,
            vec![
                (p.source.as_slice(), keyed("PTTL", &p.source)),
                (p.target.as_slice(), keyed("PTTL", &p.target)),
            ],
            format!("PTTL of {}", show(&p.source)),
        )
        .await?;
        Ok(same_ttl(ttls[0], ttls[1]) && large::equal(conn, &p.source, &p.target).await?)
    }

    /// Verify of one large key: as [`Self::compare_pairs`], page by page.
    async fn compare_large(&self, conn: &Topology, p: &Pair) -> Result<Checked, RedisStoreError> {
        let mut c = Checked::default();
        if self.equal_large(conn, p).await? {
            c.equal = 1;
            return Ok(c);
        }
        let exists: Vec<bool> = all(
            conn,
            vec![(p.target.as_slice(), keyed("EXISTS", &p.target))],
            "EXISTS".into(),
        )
        .await?;
        if exists.first() == Some(&true) && self.settings.on_conflict == OnConflict::Skip {
            c.kept = 1;
        } else if let Some(digest) = large::copy(conn, &p.source, &p.target).await? {
            c.recopied.push(Recopied {
                item: show(&p.source),
                digest,
            });
        }
        Ok(c)
    }

    /// RemoveSource of one large key: WATCH the source, compare page by page, UNLINK in
    /// MULTI/EXEC — aborted (and compared again) when the source changed meanwhile.
    async fn remove_large(&self, conn: &Topology, p: &Pair) -> Result<Checked, RedisStoreError> {
        let err = |what: &str| RedisStoreError::command(format!("{what} {}", show(&p.source)));
        for _ in 0..10 {
            let (server, mut tx) = self
                .exclusive
                .take(conn, &p.source)
                .await
                .map_err(err("connection for WATCH of"))?;
            let _: Value = redis::cmd("WATCH")
                .arg(&p.source)
                .query_async(&mut tx)
                .await
                .map_err(err("WATCH"))?;
            if !self.equal_large(conn, p).await? {
                let _: Value = redis::cmd("UNWATCH")
                    .query_async(&mut tx)
                    .await
                    .map_err(err("UNWATCH"))?;
                self.exclusive.give_back(server, tx);
                return self.compare_large(conn, p).await;
            }
            let mut unlink = redis::pipe();
            unlink.atomic().cmd("UNLINK").arg(&p.source);
            let done: Value = unlink.query_async(&mut tx).await.map_err(err("MULTI/UNLINK/EXEC of"))?;
            self.exclusive.give_back(server, tx);
            if !matches!(done, Value::Nil) {
                return Ok(Checked {
                    equal: 1,
                    ..Checked::default()
                });
            }
        }
        Err(RedisStoreError::Busy {
            example: show(&p.source),
        })
    }

    /// Writes targets again from these source snapshots (RESTORE … REPLACE, or SET).
    async fn write_again(
        &self,
        conn: &Topology,
        items: Vec<(&Pair, Snapshot<'_>)>,
    ) -> Result<Vec<Recopied>, RedisStoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let writes = items
            .iter()
            .map(|(p, s)| (p.target.as_slice(), s.write(&p.target, true)))
            .collect();
        let _: Vec<Value> = all(conn, writes, format!("write again of {}", show(&items[0].0.target))).await?;
        Ok(items
            .into_iter()
            .map(|(p, s)| Recopied {
                item: show(&p.source),
                digest: digest(&[s.value.bytes()]),
            })
            .collect())
    }

    /// RemoveSource: removes each source key of `pairs` whose target is equal at the
    /// moment of removal. Per transaction group (the whole batch, or one slot of a
    /// cluster): WATCH the source keys on a connection of their own, read them, compare
    /// with the targets, then MULTI / UNLINK the equal ones / EXEC — which Redis aborts
    /// when a watched key changed after the WATCH, so a write to the source between
    /// comparison and removal is never lost. Differing targets are written again from
    /// the source (removed in a later pass); under Skip they are kept, with the source.
    /// Only WATCH, MULTI, EXEC, UNWATCH, the reads and writes of [`Reading`] and UNLINK:
    /// no Lua, and nothing DragonflyDB lacks. A cluster's slots are independent
    /// transactions: [`TRANSACTIONS_IN_FLIGHT`] of them run at once. Source keys that
    /// `reading` cannot carry are left in place and handed back.
    async fn remove_pairs<'p>(
        &self,
        conn: &Topology,
        reading: Reading,
        pairs: &[&'p Pair],
    ) -> Result<Handled<'p>, RedisStoreError> {
        let sources: Vec<&[u8]> = pairs.iter().map(|p| p.source.as_slice()).collect();
        let work: Vec<_> = conn
            .transaction_groups(&sources)
            .into_iter()
            .map(|group| self.remove_group(conn, reading, group.iter().map(|i| pairs[*i]).collect()))
            .collect();
        let mut rounds = futures::stream::iter(work).buffer_unordered(TRANSACTIONS_IN_FLIGHT);
        let mut checked = Checked::default();
        let mut other = Vec::new();
        while let Some(c) = rounds.next().await {
            let (c, o) = c?;
            checked.add(c);
            other.extend(o);
        }
        Ok((checked, other))
    }

    /// One transaction group of [`Self::remove_pairs`], compared again while EXEC is
    /// aborted by a write to a watched key.
    async fn remove_group<'p>(
        &self,
        conn: &Topology,
        reading: Reading,
        members: Vec<&'p Pair>,
    ) -> Result<Handled<'p>, RedisStoreError> {
        let Some(first) = members.first() else {
            return Ok((Checked::default(), Vec::new()));
        };
        for _ in 0..=10 {
            let (server, tx) = self
                .exclusive
                .take(conn, &first.source)
                .await
                .map_err(RedisStoreError::command(format!(
                    "connection for WATCH of {}",
                    show(&first.source)
                )))?;
            let (tx, done) = self.remove_round(conn, tx, reading, &members).await?;
            self.exclusive.give_back(server, tx);
            if let Some(checked) = done {
                return Ok(checked);
            }
        }
        // A source key keeps changing under us: the batch is retried later.
        Err(RedisStoreError::Busy {
            example: show(&first.source),
        })
    }

    /// One WATCH … EXEC round of [`Self::remove_group`]; `None` when EXEC was aborted
    /// (nothing was removed: compare again).
    async fn remove_round<'p>(
        &self,
        conn: &Topology,
        mut tx: redis::aio::MultiplexedConnection,
        reading: Reading,
        pairs: &[&'p Pair],
    ) -> Result<(redis::aio::MultiplexedConnection, Option<(Checked, Vec<&'p Pair>)>), RedisStoreError> {
        let mut checked = Checked::default();
        let mut other = Vec::new();
        let Some(first) = pairs.first() else {
            return Ok((tx, Some((checked, other))));
        };
        let err = |what: &str| RedisStoreError::command(format!("{what} from {}", show(&first.source)));
        let mut read = redis::pipe();
        // Errors are replies (a WRONGTYPE says "not a string"), checked by `replies_of`.
        read.ignore_errors();
        // One WATCH of every key: a command per key cost Redis more than its DUMP.
        let watch = read.cmd("WATCH");
        for p in pairs {
            watch.arg(&p.source);
        }
        watch.ignore();
        for p in pairs {
            for c in reading.commands(&p.source) {
                read.add_command(c);
            }
        }
        // On one server the targets are read in the same round trip (they are not watched).
        let together = conn.servers() == 1;
        if together {
            for p in pairs {
                for c in reading.commands(&p.target) {
                    read.add_command(c);
                }
            }
        }
        let values: Vec<Value> = read.query_async(&mut tx).await.map_err(err("WATCH and read batch"))?;
        let mut sources = replies_of(values).map_err(err("WATCH and read batch"))?;
        let targets = if together {
            sources.split_off((2 * pairs.len()).min(sources.len()))
        } else {
            let reads = reading.reads(pairs.iter().map(|p| p.target.as_slice()));
            replies(conn, reads, format!("read of targets from {}", show(&first.target))).await?
        };
        let mut equal = Vec::new();
        let mut again = Vec::new();
        for ((&p, s), t) in pairs.iter().zip(sources.chunks(2)).zip(targets.chunks(2)) {
            let s = match reading.found(&s[0], &s[1]) {
                Found::Value(s) => s,
                Found::Other => {
                    other.push(p);
                    continue;
                }
                Found::Gone => continue, // already removed (a resumed or repeated batch)
            };
            match self.judge(conn, p, &s, &reading.found(&t[0], &t[1])).await? {
                Verdict::Equal => equal.push(p),
                Verdict::Kept => checked.kept += 1,
                Verdict::Again => again.push((p, s)),
            }
        }
        if equal.is_empty() {
            let _: Value = redis::cmd("UNWATCH")
                .query_async(&mut tx)
                .await
                .map_err(err("UNWATCH"))?;
        } else {
            let mut unlink = redis::pipe();
            // One UNLINK of every equal key (a transaction group is one slot of a cluster).
            let keys = unlink.atomic().cmd("UNLINK");
            for p in &equal {
                keys.arg(&p.source);
            }
            let done: Value = unlink.query_async(&mut tx).await.map_err(err("MULTI/UNLINK/EXEC"))?;
            if matches!(done, Value::Nil) {
                return Ok((tx, None)); // a watched source key changed: nothing was removed
            }
        }
        checked.equal += equal.len() as u64;
        checked.recopied.extend(self.write_again(conn, again).await?);
        Ok((tx, Some((checked, other))))
    }

    /// One chunk of a page: its small strings first, by value ([`Reading::Strings`]);
    /// then the other keys sized (`MEMORY USAGE`) and read by `DUMP`, in sub-batches of
    /// at most `BATCH_BYTES / CHUNKS_IN_FLIGHT` one after the other, so that the chunks
    /// in flight together hold no more than one batch did. Keys above that are handed
    /// back.
    async fn step_chunk<'p>(
        &self,
        conn: &Topology,
        stage: Stage,
        chunk: &'p [Pair],
    ) -> Result<(Checked, large::Split<&'p Pair>), RedisStoreError> {
        let budget = large::BATCH_BYTES / CHUNKS_IN_FLIGHT as u64;
        let pairs: Vec<&Pair> = chunk.iter().collect();
        let (mut total, rest) = self
            .step_batch(conn, stage, Reading::strings(budget, pairs.len()), &pairs)
            .await?;
        let sources: Vec<&[u8]> = rest.iter().map(|p| p.source.as_slice()).collect();
        let sizes = large::sizes(conn, &sources).await?;
        let mut split = large::split(rest, &sizes, budget);
        for batch in std::mem::take(&mut split.batches) {
            total.add(self.step_batch(conn, stage, Reading::Dumps, &batch).await?.0);
        }
        Ok((total, split))
    }

    /// Copy, Verify or RemoveSource of one sub-batch, read as `reading`; the keys that
    /// reading cannot carry are handed back untouched.
    async fn step_batch<'p>(
        &self,
        conn: &Topology,
        stage: Stage,
        reading: Reading,
        batch: &[&'p Pair],
    ) -> Result<Handled<'p>, RedisStoreError> {
        Ok(match stage {
            Stage::Copy => {
                let (equal, kept, other) = self.copy_pairs(conn, reading, batch).await?;
                let checked = Checked {
                    equal,
                    kept,
                    recopied: Vec::new(),
                };
                (checked, other)
            }
            Stage::Verify => self.compare_pairs(conn, reading, batch).await?,
            _ => self.remove_pairs(conn, reading, batch).await?,
        })
    }

    /// Refuses a copy of about `needed` bytes (`keys` keys) that would not fit under
    /// `maxmemory`, or that could make the server evict other keys (`allkeys-*`
    /// policies evict any key, another tenant's included, once memory is full).
    async fn check_capacity(
        &self,
        conn: &Topology,
        needed: u64,
        keys: u64,
        plan: &mut PhasePlan,
    ) -> Result<(), RedisStoreError> {
        if keys == 0 {
            return Ok(());
        }
        let infos = conn
            .info_of_each("memory")
            .await
            .map_err(RedisStoreError::command("INFO memory"))?;
        let field = |info: &str, name: &str| -> Option<String> {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let number = |info: &str, name: &str| field(info, name).and_then(|v| v.parse::<u64>().ok());
        let used: u64 = infos.iter().filter_map(|i| number(i, "used_memory")).sum();
        let limits: Vec<u64> = infos.iter().map(|i| number(i, "maxmemory").unwrap_or(0)).collect();
        if limits.contains(&0) {
            // No limit on some server: nothing is evicted and nothing refuses a write there.
            return Ok(());
        }
        let max: u64 = limits.iter().sum();
        let url = self.settings.url.clone();
        if let Some(policy) = infos.iter().find_map(|i| field(i, "maxmemory_policy")) {
            if policy.starts_with("allkeys-") {
                return Err(RedisStoreError::Capacity {
                    url,
                    detail: format!(
                        "maxmemory-policy {policy} evicts any key once memory is full (maxmemory {max} bytes, \
                         {used} used): a copy could evict other tenants' keys; set maxmemory-policy noeviction for \
                         the migration"
                    ),
                });
            }
            if policy.starts_with("volatile-") {
                plan.notes.push(format!(
                    "maxmemory-policy {policy}: keys with a TTL may be evicted if the copy fills memory"
                ));
            }
        }
        if used.saturating_add(needed) > max {
            return Err(RedisStoreError::Capacity {
                url,
                detail: format!(
                    "the copy of {keys} keys needs about {needed} bytes, and {used} of maxmemory {max} are used: \
                     {} bytes short (Move too keeps every source until every store is verified); raise maxmemory \
                     or free memory",
                    used.saturating_add(needed) - max
                ),
            });
        }
        plan.notes.push(format!(
            "memory: the copy needs about {needed} bytes; {used} of maxmemory {max} used"
        ));
        Ok(())
    }

    /// The digest of a key's name after the prefix of group `g` (its `target` prefix,
    /// or its source one): the same for a source key and its target ([`KeySet`]).
    fn name(&self, g: usize, key: &[u8], target: bool) -> u64 {
        let p = &self.keys.prefixes[g];
        let prefix = if target { p.target.len() } else { p.source.len() };
        use std::hash::BuildHasher as _;
        self.names.hash_one(&key[prefix.min(key.len())..])
    }

    /// Counts source and target keys per prefix in one SCAN of both tenants. With
    /// `orphans`, also the target keys among them whose source key is gone (an `EXISTS`
    /// of each target key's source, per page): under `onConflict: Fail` the target held
    /// nothing of its own at the start, so such a key is a copy of a source key deleted
    /// since it was copied — it is removed too (the delete is a write like any other)
    /// and the pass reported [`RedisStoreError::Orphans`].
    async fn count_sides(&mut self, conn: &Topology, orphans: bool) -> Result<Sides, RedisStoreError> {
        let pattern = self.keys.both_pattern.clone();
        // Counting needs no per-key round trip, so larger pages cost nothing extra.
        let count = if orphans {
            self.settings.batch_size
        } else {
            self.settings.batch_size.saturating_mul(5)
        };
        let groups = self.keys.prefixes.len();
        let mut sides = Sides {
            source: vec![KeySet::default(); groups],
            target: vec![KeySet::default(); groups],
            orphans: orphans.then(|| vec![0; groups]),
        };
        let (mut removed, mut example) = (0u64, String::new());
        let mut at = ScanCursor::default();
        loop {
            let (next, keys) = self.page(conn, at, &pattern, count).await?;
            let mut owned: Vec<(usize, &[u8], Vec<u8>)> = Vec::new();
            for k in &keys {
                if let Some(g) = self.keys.source_group(k) {
                    sides.source[g].add(self.name(g, k, false));
                }
                if let Some(g) = self.keys.target_group(k) {
                    sides.target[g].add(self.name(g, k, true));
                    if orphans {
                        let p = &self.keys.prefixes[g];
                        let mut source = p.source.as_bytes().to_vec();
                        source.extend_from_slice(&k[p.target.len()..]);
                        owned.push((g, k.as_slice(), source));
                    }
                }
            }
            if let (Some(counts), false) = (sides.orphans.as_mut(), owned.is_empty()) {
                let commands = owned
                    .iter()
                    .map(|(_, _, s)| (s.as_slice(), keyed("EXISTS", s)))
                    .collect();
                let found: Vec<bool> = all(conn, commands, "EXISTS batch of source keys".to_owned()).await?;
                let mut unlink = Vec::new();
                for ((g, t, _), f) in owned.iter().zip(found) {
                    if !f {
                        counts[*g] += 1;
                        if self.settings.on_conflict == OnConflict::Fail {
                            unlink.push((*t, keyed("UNLINK", t)));
                        }
                    }
                }
                if !unlink.is_empty() {
                    if example.is_empty() {
                        example = show(unlink[0].0);
                    }
                    let n: Vec<u64> = all(conn, unlink, "UNLINK of orphaned target keys".to_owned()).await?;
                    removed += n.iter().sum::<u64>();
                }
            }
            match next {
                Some(n) => at = n,
                None => break,
            }
        }
        if removed > 0 {
            return Err(RedisStoreError::Orphans {
                count: removed,
                example,
            });
        }
        Ok(sides)
    }
}

fn classify_connect(url: &str, source: RedisError) -> RedisStoreError {
    let auth = source.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(source.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"));
    if auth {
        RedisStoreError::Auth {
            url: url.to_owned(),
            source,
        }
    } else {
        RedisStoreError::Connect {
            url: url.to_owned(),
            source,
        }
    }
}

fn parse_cursor(cursor: &str) -> Result<ScanCursor, RedisStoreError> {
    ScanCursor::parse(cursor)
        .ok_or_else(|| RedisStoreError::Settings(format!("checkpoint cursor {cursor:?} is not a SCAN cursor")))
}

/// A command on one key (more arguments may follow).
fn keyed(name: &str, key: &[u8]) -> Cmd {
    let mut c = redis::cmd(name);
    c.arg(key);
    c
}

/// The replies to `commands` as they are, for [`Reading::found`]: a `WRONGTYPE` error
/// (a reading that does not fit the key's type) is a `Nil` reply; any other error fails
/// them all, named by `op`.
async fn replies(conn: &Topology, commands: Vec<(&[u8], Cmd)>, op: String) -> Result<Vec<Value>, RedisStoreError> {
    let replies = conn
        .keyed(commands)
        .await
        .map_err(RedisStoreError::command(op.clone()))?;
    replies
        .into_iter()
        .map(|r| match r {
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(Value::Nil),
            r => r,
        })
        .collect::<RedisResult<Vec<Value>>>()
        .map_err(RedisStoreError::command(op))
}

/// [`replies`] of a pipeline run with `ignore_errors`, whose errors are values.
fn replies_of(values: Vec<Value>) -> RedisResult<Vec<Value>> {
    values
        .into_iter()
        .map(|v| match v {
            Value::ServerError(e) if e.code() == "WRONGTYPE" => Ok(Value::Nil),
            Value::ServerError(e) => Err(e.into()),
            v => Ok(v),
        })
        .collect()
}

/// The replies to `commands` as `T`; the first error fails them all, named by `op`.
async fn all<T: redis::FromRedisValue>(
    conn: &Topology,
    commands: Vec<(&[u8], Cmd)>,
    op: String,
) -> Result<Vec<T>, RedisStoreError> {
    let replies = conn
        .keyed(commands)
        .await
        .map_err(RedisStoreError::command(op.clone()))?;
    replies
        .into_iter()
        .map(|r| r.and_then(|v| redis::from_redis_value(v).map_err(RedisError::from)))
        .collect::<RedisResult<Vec<T>>>()
        .map_err(RedisStoreError::command(op))
}

/// Whether each pair's target key exists.
async fn exists_all(conn: &Topology, pairs: impl IntoIterator<Item = &Pair>) -> Result<Vec<bool>, RedisStoreError> {
    let commands = pairs
        .into_iter()
        .map(|p| (p.target.as_slice(), keyed("EXISTS", &p.target)))
        .collect();
    all(conn, commands, "EXISTS batch of target keys".to_owned()).await
}

impl Phase for RedisPhase {
    type Error = RedisStoreError;

    /// Each removal round compares the source (watched) with its target, removes only
    /// the equal ones and copies the others again ([`Self::remove_pairs`]).
    fn removal_compares(&self) -> bool {
        true
    }

    async fn plan(&mut self, resuming: bool) -> Result<PhasePlan, RedisStoreError> {
        self.resuming = resuming;
        let conn = self.connect().await?;
        let mut plan = PhasePlan::default();
        let mut groups: Vec<GroupCount> = self
            .keys
            .prefixes
            .iter()
            .map(|p| GroupCount {
                name: p.template.clone(),
                ..GroupCount::default()
            })
            .collect();
        let mut paired = vec![0u64; groups.len()];
        let mut excluded = 0u64;
        let mut changed = 0u64;
        // Memory the copy will take: MEMORY USAGE of every SAMPLE-th source key without a
        // target yet, scaled up.
        let (mut to_copy, mut sampled, mut sampled_bytes) = (0u64, 0u64, 0u64);
        // One pass finds the source keys and counts the target's (see `both_pattern`).
        let pattern = self.keys.both_pattern.clone();
        // The names of the target's keys, and of those among them that have a source key:
        // the others are the extras that `verify` expects to find on the target side.
        let mut targets = vec![KeySet::default(); groups.len()];
        let mut with_source = vec![KeySet::default(); groups.len()];
        let mut at = ScanCursor::default();
        loop {
            let (next, keys) = self.page(&conn, at, &pattern, self.settings.batch_size).await?;
            let mut sources = Vec::with_capacity(keys.len());
            for k in keys {
                if let Some(g) = self.keys.target_group(&k) {
                    targets[g].add(self.name(g, &k, true));
                }
                if k.starts_with(self.keys.source_start.as_bytes()) {
                    sources.push(k);
                }
            }
            let before = sources.len();
            let pairs: Vec<Pair> = self.pairs(sources);
            excluded += (before - pairs.len()) as u64;
            for p in &pairs {
                groups[p.group].source += 1;
            }
            if !pairs.is_empty() {
                let found = exists_all(&conn, &pairs).await?;
                let missing: Vec<&Pair> = pairs.iter().zip(&found).filter(|(_, f)| !**f).map(|(p, _)| p).collect();
                let sample: Vec<(&[u8], redis::Cmd)> = missing
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| (to_copy + *i as u64).is_multiple_of(MEMORY_SAMPLE))
                    .map(|(_, p)| {
                        let mut usage = redis::cmd("MEMORY");
                        usage.arg("USAGE").arg(&p.source);
                        (p.source.as_slice(), usage)
                    })
                    .collect();
                to_copy += missing.len() as u64;
                if !sample.is_empty() {
                    let usage: Vec<Option<u64>> =
                        all(&conn, sample, "MEMORY USAGE of sampled source keys".into()).await?;
                    sampled += usage.len() as u64;
                    sampled_bytes += usage.into_iter().flatten().sum::<u64>();
                }
                let both: Vec<&Pair> = pairs.iter().zip(found).filter(|(_, f)| *f).map(|(p, _)| p).collect();
                let sources: Vec<&[u8]> = both.iter().map(|p| p.source.as_slice()).collect();
                let sizes = large::sizes(&conn, &sources).await?;
                let split = large::split(both, &sizes, large::BATCH_BYTES);
                let streamed = split.streamed;
                let mut outcomes: Vec<(&Pair, bool)> = Vec::new();
                for batch in split.batches.into_iter().chain(split.solo.into_iter().map(|p| vec![p])) {
                    let keys: Vec<&[u8]> = batch
                        .iter()
                        .flat_map(|p| [p.source.as_slice(), p.target.as_slice()])
                        .collect();
                    let dumps = Self::dumps(&conn, &keys).await?;
                    for (p, d) in batch.into_iter().zip(dumps.chunks(2)) {
                        let (Some(s), Some(t)) = (&d[0], &d[1]) else {
                            continue;
                        };
                        outcomes.push((p, Self::same_dumped(&conn, &p.source, s, &p.target, t).await?));
                    }
                }
                for p in streamed {
                    outcomes.push((p, large::equal(&conn, &p.source, &p.target).await?));
                }
                for (p, same) in outcomes {
                    paired[p.group] += 1;
                    with_source[p.group].add(self.name(p.group, &p.source, false));
                    if same {
                        plan.identical += 1;
                    } else if self.own_targets() {
                        changed += 1;
                    } else {
                        plan.conflicts += 1;
                        if plan.conflict_examples.len() < 5 {
                            plan.conflict_examples.push(show(&p.target));
                        }
                    }
                }
            }
            match next {
                Some(n) => at = n,
                None => break,
            }
        }
        let needed = sampled_bytes
            .checked_div(sampled)
            .map_or(0, |per_key| per_key.saturating_mul(to_copy));
        self.check_capacity(&conn, needed, to_copy, &mut plan).await?;
        self.extras = targets.iter().zip(&with_source).map(|(t, w)| t.without(*w)).collect();
        for ((g, t), paired) in groups.iter_mut().zip(targets).zip(paired) {
            g.target = t.count;
            g.extra = t.count.saturating_sub(paired);
        }
        plan.total = groups.iter().map(|g| g.source).sum();
        plan.extra = groups.iter().map(|g| g.extra).sum();
        plan.groups = groups;
        if changed > 0 {
            plan.notes.push(format!(
                "{changed} keys changed in the source since this migration copied them: they are copied again"
            ));
        }
        if excluded > 0 {
            plan.notes.push(format!(
                "{excluded} keys match {} but belong to no tenant prefix (other tenants, transient keys): left alone",
                self.keys.source_pattern
            ));
        }
        if self.settings.on_conflict == OnConflict::Fail {
            if plan.conflicts > 0 {
                return Err(RedisStoreError::ConflictsFound {
                    count: plan.conflicts,
                    examples: plan.conflict_examples.join(", "),
                });
            }
            if plan.extra > 0 && !resuming {
                let example = self
                    .keys
                    .prefixes
                    .iter()
                    .zip(&plan.groups)
                    .find(|(_, g)| g.extra > 0)
                    .map(|(p, _)| format!("{}…", p.target))
                    .unwrap_or_default();
                return Err(RedisStoreError::TargetNotEmpty {
                    count: plan.extra,
                    example,
                });
            }
        }
        Ok(plan)
    }

    async fn step(&mut self, stage: Stage, cursor: &str, _plan: &PhasePlan) -> Result<StepOutcome, RedisStoreError> {
        let conn = self.connect().await?;
        let at = parse_cursor(cursor)?;
        let pattern = self.keys.source_pattern.clone();
        let (next, keys) = self.page(&conn, at, &pattern, self.settings.batch_size).await?;
        if !matches!(stage, Stage::Copy | Stage::Verify | Stage::RemoveSource) {
            return Err(RedisStoreError::Settings(format!("stage {stage:?} has no batches")));
        }
        let pairs = self.pairs(keys);
        // The page in chunks whose round trips overlap: while Redis answers one, the
        // reply to another is read here (one at a time, client and server took turns).
        let per_chunk = pairs.len().div_ceil(CHUNKS_IN_FLIGHT).max(1);
        let this = &*self;
        // Collected first: futures are lazy, and a closure in the stream would need a
        // lifetime for every chunk that the compiler cannot prove `Send` for.
        let work: Vec<_> = pairs
            .chunks(per_chunk)
            .map(|chunk| this.step_chunk(&conn, stage, chunk))
            .collect();
        let mut chunks = futures::stream::iter(work).buffer_unordered(CHUNKS_IN_FLIGHT);
        let mut total = Checked::default();
        let (mut solo, mut streamed) = (Vec::new(), Vec::new());
        while let Some(done) = chunks.next().await {
            let (checked, split) = done?;
            total.add(checked);
            solo.extend(split.solo);
            streamed.extend(split.streamed);
        }
        drop(chunks);
        // Keys too large to share the memory budget: one at a time.
        for p in solo {
            total.add(self.step_batch(&conn, stage, Reading::Dumps, &[p]).await?.0);
        }
        for p in streamed {
            let c = match stage {
                Stage::Copy => self.copy_large(&conn, p).await?,
                Stage::Verify => self.compare_large(&conn, p).await?,
                _ => self.remove_large(&conn, p).await?,
            };
            total.add(c);
        }
        Ok(StepOutcome {
            next: next.map(|n| n.to_string()),
            done: total.equal,
            skipped: total.kept,
            group: None,
            recopied: total.recopied,
        })
    }

    async fn verify(&mut self, plan: &PhasePlan, removed: bool) -> Result<Verified, RedisStoreError> {
        let conn = self.connect().await?;
        // The stores as they are now (clients may have written since the plan); the
        // content of each key was compared by the last pass (Verify, or the removal).
        let sides = self.count_sides(&conn, false).await?;
        let source_left: u64 = sides.source.iter().map(|s| s.count).sum();
        let target_now: u64 = sides.target.iter().map(|s| s.count).sum();
        if removed {
            // Only keys kept under Skip may remain; others appeared since the last pass.
            if source_left > plan.conflicts {
                return Err(RedisStoreError::Incomplete {
                    missing: source_left - plan.conflicts,
                    example: format!("{} (written after its removal pass)", self.keys.source_pattern),
                });
            }
            return Ok(Verified {
                source_left,
                target: target_now,
            });
        }
        // The same names on both sides — each source key's target present, and no
        // target key beyond the plan's own extras — leave nothing missing and no copy of
        // a key deleted since, whether or not a content pass ran since the copy (a Move
        // of Redis alone has none: its removal compares). Otherwise every target key is
        // looked at, in a pass of its own.
        let settled = self.extras.len() == sides.source.len()
            && (sides.source.iter().zip(&sides.target).zip(&self.extras)).all(|((s, t), e)| s.with(*e) == *t);
        if settled {
            return Ok(Verified {
                source_left,
                target: target_now,
            });
        }
        let Sides {
            source,
            target,
            orphans,
        } = self.count_sides(&conn, true).await?;
        let (source, target) = (Sides::counts(&source), Sides::counts(&target));
        let orphans = orphans.unwrap_or_else(|| vec![0; target.len()]);
        let source_left: u64 = source.iter().sum();
        let mut problems = Vec::new();
        let (mut missing, mut example) = (0u64, String::new());
        for ((p, g), (s, (t, o))) in self
            .keys
            .prefixes
            .iter()
            .zip(&plan.groups)
            .zip(source.iter().zip(target.iter().zip(&orphans)))
        {
            // Target keys without a source: those the plan found (kept under Skip or
            // Overwrite), or copies of source keys deleted since. Fewer target keys with
            // a source than source keys: keys written since the content pass.
            if t - o < *s {
                missing += s - (t - o);
                if example.is_empty() {
                    example = format!("{}… (written after the last pass)", p.source);
                }
            } else if t - o != *s || *o > g.extra {
                problems.push(format!(
                    "{}: target has {t} keys for {s} source keys ({o} without a source, {} expected)",
                    p.target, g.extra
                ));
            }
        }
        if !problems.is_empty() {
            return Err(RedisStoreError::Mismatch(problems.join("; ")));
        }
        if missing > 0 {
            return Err(RedisStoreError::Incomplete { missing, example });
        }
        Ok(Verified {
            source_left,
            target: target.iter().sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn lightrag_prefixes_are_exact_and_exclude_lookalikes() {
        let ks = KeySpace::new(&[], &id("siraya"), &id("tenant_b")).unwrap();
        assert_eq!(ks.source_pattern(), "siraya_*");
        let belongs = |k: &str| ks.source_group(k.as_bytes()).is_some();
        assert!(belongs("siraya_full_docs:doc-siraya_1"));
        assert!(belongs("siraya_doc_status__sched:status:processed"));
        assert!(belongs("siraya_llm_response_cache:siraya_old_full_docs:x"));
        for other in [
            "siraya_old_full_docs:x",
            "siraya2_full_docs:x",
            "xsiraya_full_docs:x",
            "siraya_doc_status__sched_rebuild:lock",
            "siraya_unknown:x",
            "siraya_full_docs",
        ] {
            assert!(!belongs(other), "{other}");
        }
        let g = ks.source_group(b"siraya_text_chunks:chunk-siraya").unwrap();
        assert_eq!(
            ks.target_key(g, b"siraya_text_chunks:chunk-siraya"),
            b"tenant_b_text_chunks:chunk-siraya"
        );
    }

    #[test]
    fn templates_that_would_match_other_tenants_are_refused() {
        let cases = [
            ("{tenant}", "delimiter"),
            ("{tenant}_docs", "delimiter"),
            ("x{tenant}:", "before {tenant}"),
            ("docs:", "does not contain"),
            ("{tenant}:{tenant}:", "more than once"),
        ];
        for (t, want) in cases {
            let err = KeySpace::new(&[t.to_owned()], &id("a"), &id("b")).unwrap_err();
            assert!(err.contains(want), "{t}: {err}");
        }
        let ks = KeySpace::new(
            &["rag:{tenant}:".into(), "rag:{tenant}_idx:".into()],
            &id("a"),
            &id("b"),
        )
        .unwrap();
        assert_eq!(ks.source_pattern(), "rag:a*");
    }

    #[test]
    fn scan_patterns_escape_glob_characters() {
        assert_eq!(glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
        let ks = KeySpace::new(&["[x]:{tenant}:".into()], &id("a"), &id("b")).unwrap();
        assert_eq!(ks.source_pattern(), r"\[x\]:a:*");
    }

    #[test]
    fn common_prefix_of_prefixes() {
        assert_eq!(common_prefix(["ab:", "ac:"].into_iter()), "a");
        assert_eq!(common_prefix(["ab:"].into_iter()), "ab:");
        assert_eq!(common_prefix(["x", "y"].into_iter()), "");
    }
}
