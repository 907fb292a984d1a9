//! LightRAG-shaped Redis data at any scale, and snapshots to compare databases.
//!
//! Scale 1 is the reference's tenant: 38,491 keys. A tenant has JSON string
//! records in LightRAG's 8 namespaces, doc-status index sorted sets and sets
//! (`{ws}_doc_status__sched:`), a transient `{ws}_doc_status__sched_rebuild:` key
//! (not part of the tenant), TTLs on some keys, and hashes, lists, a large set and
//! streams. Record ids contain the tenant id, and some contain another tenant's
//! whole key prefix, so that only an exact-prefix match is right. Look-alike
//! tenants (`siraya2`, `xsiraya`, `siraya_old` for `siraya`) and keys of no
//! tenant sit beside it.

use std::collections::BTreeMap;

use redis::{Connection, RedisResult};
use sha2::{Digest, Sha256};

/// LightRAG's namespaces, written out here independently of the product's list,
/// so that a wrong prefix in the product cannot also hide in the tests.
const NAMESPACES: [&str; 9] = [
    "full_docs",
    "text_chunks",
    "llm_response_cache",
    "full_entities",
    "full_relations",
    "entity_chunks",
    "relation_chunks",
    "doc_status",
    "doc_status__sched",
];

/// The tenant-local rest of `key` (`{ns}:{id}`) if it belongs to `tenant`.
pub fn tenant_rest<'a>(key: &'a [u8], tenant: &str) -> Option<&'a [u8]> {
    let rest = key.strip_prefix(format!("{tenant}_").as_bytes())?;
    NAMESPACES
        .iter()
        .any(|ns| rest.starts_with(format!("{ns}:").as_bytes()))
        .then_some(rest)
}

pub fn is_tenant_key(key: &[u8], tenant: &str) -> bool {
    tenant_rest(key, tenant).is_some()
}

/// Keys of the source tenant at scale 1 (the reference's published figure).
pub const SCALE1_KEYS: u64 = 38_491;

/// Look-alike tenant ids for `source`: a substring match of `source` catches them all.
pub fn lookalikes(source: &str) -> [String; 3] {
    [format!("{source}2"), format!("x{source}"), format!("{source}_old")]
}

/// Keys of no tenant that a substring match of `source` would still catch.
pub fn unrelated_keys(source: &str) -> Vec<String> {
    vec![
        format!("cache:{source}:lookup"),
        source.to_owned(),
        format!("{source}_unknown_ns:x"),
        "lightrag:meta".to_owned(),
        "global:settings".to_owned(),
    ]
}

/// How many keys of each kind a tenant gets at a scale.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub docs: u64,
    pub text_chunks: u64,
    pub entity_chunks: u64,
    pub relation_chunks: u64,
    pub llm_cache: u64,
}

/// Keys of fixed count per tenant: 4 status zsets, 11 hashes, 10 lists, 1 big set, 5 streams.
const FIXED_KEYS: u64 = 31;

impl Shape {
    /// Scale 1 gives exactly [`SCALE1_KEYS`] tenant keys.
    pub fn at_scale(scale: f64) -> Self {
        let n = |base: f64| ((base * scale).round() as u64).max(1);
        Self {
            docs: n(600.0),
            text_chunks: n(7_200.0),
            entity_chunks: n(9_000.0),
            relation_chunks: n(11_000.0),
            llm_cache: n(8_260.0),
        }
    }

    /// Tenant keys this shape writes (the transient key is not one of them).
    pub fn tenant_keys(&self) -> u64 {
        // full_docs, doc_status, full_entities, full_relations and a basename set per doc.
        self.docs * 5 + self.text_chunks + self.entity_chunks + self.relation_chunks + self.llm_cache + FIXED_KEYS
    }
}

/// A tiny deterministic generator (xorshift), so fixtures are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn text(&mut self, len: usize) -> String {
        const WORDS: [&str; 12] = [
            "tenant",
            "graph",
            "vector",
            "retrieval",
            "chunk",
            "entity",
            "relation",
            "document",
            "summary",
            "keyword",
            "context",
            "answer",
        ];
        let mut s = String::with_capacity(len + 12);
        while s.len() < len {
            s.push_str(WORDS[(self.next() % 12) as usize]);
            s.push(' ');
        }
        s
    }
}

/// Pipelines writes in batches.
struct Writer<'a> {
    conn: &'a mut Connection,
    pipe: redis::Pipeline,
    queued: usize,
}

impl<'a> Writer<'a> {
    fn new(conn: &'a mut Connection) -> Self {
        Self {
            conn,
            pipe: redis::pipe(),
            queued: 0,
        }
    }

    fn cmd(&mut self, name: &str) -> &mut redis::Pipeline {
        self.queued += 1;
        self.pipe.cmd(name)
    }

    fn maybe_flush(&mut self) -> RedisResult<()> {
        if self.queued >= 2000 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> RedisResult<()> {
        if self.queued > 0 {
            self.pipe.query::<()>(self.conn)?;
            self.pipe = redis::pipe();
            self.queued = 0;
        }
        Ok(())
    }
}

fn json(v: serde_json::Value) -> String {
    v.to_string()
}

/// Writes one LightRAG-shaped tenant `ws` at `scale`; returns its tenant key count.
pub fn load_tenant(conn: &mut Connection, ws: &str, scale: f64) -> RedisResult<u64> {
    let shape = Shape::at_scale(scale);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ws.len() as u64 ^ (scale * 1000.0) as u64);
    let mut w = Writer::new(conn);
    let file = |d: u64| format!("report-{d}-{ws}.pdf");
    let statuses = ["pending", "processing", "processed", "failed"];
    for d in 0..shape.docs {
        let doc = format!("doc-{ws}-{d:06}");
        let content = rng.text(600);
        w.cmd("SET")
            .arg(format!("{ws}_full_docs:{doc}"))
            .arg(json(serde_json::json!({
            "content": content, "file_path": file(d), "workspace": ws})));
        let status = statuses[if d % 10 == 0 { (d / 10 % 4) as usize } else { 2 }];
        w.cmd("SET")
            .arg(format!("{ws}_doc_status:{doc}"))
            .arg(json(serde_json::json!({
            "status": status, "chunks_count": 12, "file_path": file(d), "content_summary": &content[..80]})));
        w.cmd("SET")
            .arg(format!("{ws}_full_entities:{doc}"))
            .arg(json(serde_json::json!({
            "entity_names": [format!("{ws} Corp {d}"), format!("ENTITY_{d}")], "count": 2})));
        w.cmd("SET")
            .arg(format!("{ws}_full_relations:{doc}"))
            .arg(json(serde_json::json!({
            "relation_pairs": [[format!("{ws} Corp {d}"), format!("ENTITY_{d}")]], "count": 1})));
        w.cmd("ZADD")
            .arg(format!("{ws}_doc_status__sched:status:{status}"))
            .arg(d as f64 + 0.5)
            .arg(&doc);
        w.cmd("SADD")
            .arg(format!("{ws}_doc_status__sched:basename:{}", file(d)))
            .arg(&doc);
        w.maybe_flush()?;
    }
    // Status zsets exist even when a status has no document.
    for s in statuses {
        w.cmd("ZADD")
            .arg(format!("{ws}_doc_status__sched:status:{s}"))
            .arg(-1.0)
            .arg("__sentinel__");
    }
    for c in 0..shape.text_chunks {
        w.cmd("SET")
            .arg(format!("{ws}_text_chunks:chunk-{ws}-{c:07}"))
            .arg(json(serde_json::json!({
            "content": rng.text(400), "tokens": 300, "full_doc_id": format!("doc-{ws}-{:06}", c % shape.docs),
            "chunk_order_index": c % 12, "file_path": file(c % shape.docs)})));
        w.maybe_flush()?;
    }
    for e in 0..shape.entity_chunks {
        // Every 100th entity id carries another tenant's whole key prefix.
        let name = if e % 100 == 0 {
            format!("{ws}_old_full_docs:{e}")
        } else {
            format!("{ws} entity {e}")
        };
        w.cmd("SET")
            .arg(format!("{ws}_entity_chunks:{name}"))
            .arg(json(serde_json::json!({
            "chunk_ids": [format!("chunk-{ws}-{:07}", e % shape.text_chunks)], "count": 1})));
        w.maybe_flush()?;
    }
    for r in 0..shape.relation_chunks {
        w.cmd("SET")
            .arg(format!("{ws}_relation_chunks:{ws} entity {r}<SEP>ENTITY_{}", r % 97))
            .arg(json(
                serde_json::json!({"chunk_ids": [format!("chunk-{ws}-{:07}", r % shape.text_chunks)], "count": 1}),
            ));
        w.maybe_flush()?;
    }
    for l in 0..shape.llm_cache {
        let key = format!("{ws}_llm_response_cache:default:extract:{:016x}", rng.next());
        w.cmd("SET").arg(&key).arg(json(serde_json::json!({
            "return": rng.text(200), "cache_type": "extract", "original_prompt": format!("{ws} prompt {l}")})));
        if l % 10 == 0 {
            w.cmd("EXPIRE").arg(&key).arg(86_400 + l);
        }
        w.maybe_flush()?;
    }
    // One of every other type; the big hash and set exceed the compact encodings.
    for i in 0..10 {
        let key = format!("{ws}_llm_response_cache:stats:{i}");
        w.cmd("HSET")
            .arg(&key)
            .arg("hits")
            .arg(i)
            .arg("misses")
            .arg(i * 2)
            .arg("tenant")
            .arg(ws);
        if i < 3 {
            w.cmd("EXPIRE").arg(&key).arg(7_200);
        }
        w.cmd("RPUSH")
            .arg(format!("{ws}_llm_response_cache:queue:{i}"))
            .arg(format!("job-{ws}-{i}-a"))
            .arg(format!("job-{ws}-{i}-b"))
            .arg("job-c");
    }
    let big_hash = format!("{ws}_llm_response_cache:index");
    let big_set = format!("{ws}_doc_status__sched:all_docs");
    for i in 0..300 {
        w.cmd("HSET")
            .arg(&big_hash)
            .arg(format!("field-{i}"))
            .arg(format!("{ws}-{i}"));
        w.cmd("SADD").arg(&big_set).arg(format!("doc-{ws}-{i:06}"));
    }
    for s in 0..5 {
        for e in 0..20 {
            w.cmd("XADD")
                .arg(format!("{ws}_llm_response_cache:events:{s}"))
                .arg(format!("{}-{}", 1_700_000_000_000u64 + e, s))
                .arg("tenant")
                .arg(ws)
                .arg("n")
                .arg(e);
        }
    }
    // Transient: LightRAG rebuilds it; a migration must not copy it.
    w.cmd("SET")
        .arg(format!("{ws}_doc_status__sched_rebuild:lock"))
        .arg("1");
    w.flush()?;
    Ok(shape.tenant_keys())
}

/// What [`load_standard`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub tenant_keys: u64,
    pub lookalike_keys: u64,
}

/// The standard fixture: `source` at `scale`, its three look-alikes at a fiftieth
/// of it, and keys of no tenant.
pub fn load_standard(conn: &mut Connection, source: &str, scale: f64) -> RedisResult<Loaded> {
    let tenant_keys = load_tenant(conn, source, scale)?;
    let mut lookalike_keys = 0;
    for l in lookalikes(source) {
        lookalike_keys += load_tenant(conn, &l, (scale / 50.0).max(0.01))?;
    }
    let mut p = redis::pipe();
    for k in unrelated_keys(source) {
        p.cmd("SET").arg(&k).arg(format!("not a tenant key: {k}"));
    }
    p.query::<()>(conn)?;
    Ok(Loaded {
        tenant_keys,
        lookalike_keys,
    })
}

/// A key's type, value (canonical: unordered types sorted) and remaining TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyState {
    pub kind: String,
    pub value: Vec<Vec<u8>>,
    /// Milliseconds to live; -1 without TTL.
    pub pttl: i64,
}

/// Type, canonical value and TTL of every key for which `keep` holds.
pub fn snapshot(conn: &mut Connection, keep: impl Fn(&[u8]) -> bool) -> RedisResult<BTreeMap<Vec<u8>, KeyState>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query(conn)?;
        keys.extend(page.into_iter().filter(|k| keep(k)));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(500) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("TYPE").arg(k).cmd("PTTL").arg(k);
        }
        let meta: Vec<(String, i64)> = p
            .query::<Vec<redis::Value>>(conn)?
            .chunks(2)
            .map(|v| {
                let kind = match &v[0] {
                    redis::Value::SimpleString(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                let ttl = match v[1] {
                    redis::Value::Int(i) => i,
                    _ => -2,
                };
                (kind, ttl)
            })
            .collect();
        let mut p = redis::pipe();
        for (k, (kind, _)) in chunk.iter().zip(&meta) {
            match kind.as_str() {
                "string" => p.cmd("GET").arg(k),
                "hash" => p.cmd("HGETALL").arg(k),
                "list" => p.cmd("LRANGE").arg(k).arg(0).arg(-1),
                "set" => p.cmd("SMEMBERS").arg(k),
                "zset" => p.cmd("ZRANGE").arg(k).arg(0).arg(-1).arg("WITHSCORES"),
                "stream" => p.cmd("XRANGE").arg(k).arg("-").arg("+"),
                _ => p.cmd("DUMP").arg(k),
            };
        }
        let values: Vec<redis::Value> = p.query(conn)?;
        for ((k, (kind, pttl)), v) in chunk.iter().zip(meta).zip(values) {
            let mut value = flatten(&v);
            if kind == "hash" {
                let mut pairs: Vec<Vec<Vec<u8>>> = value.chunks(2).map(<[Vec<u8>]>::to_vec).collect();
                pairs.sort();
                value = pairs.concat();
            } else if kind == "set" {
                value.sort();
            }
            out.insert(k.clone(), KeyState { kind, value, pttl });
        }
    }
    Ok(out)
}

fn flatten(v: &redis::Value) -> Vec<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => vec![b.clone()],
        redis::Value::SimpleString(s) => vec![s.clone().into_bytes()],
        redis::Value::Int(i) => vec![i.to_string().into_bytes()],
        redis::Value::Double(d) => vec![d.to_string().into_bytes()],
        redis::Value::Nil => vec![b"(nil)".to_vec()],
        redis::Value::Array(items) | redis::Value::Set(items) => items.iter().flat_map(flatten).collect(),
        redis::Value::Map(items) => items
            .iter()
            .flat_map(|(k, v)| [flatten(k), flatten(v)].concat())
            .collect(),
        other => vec![format!("{other:?}").into_bytes()],
    }
}

/// A digest of a snapshot: keys, types, values and whether a TTL is set (not its
/// remaining time, which moves on its own).
pub fn digest(snap: &BTreeMap<Vec<u8>, KeyState>) -> String {
    let mut h = Sha256::new();
    for (k, s) in snap {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(s.kind.as_bytes());
        h.update([u8::from(s.pttl >= 0)]);
        for v in &s.value {
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_one_is_the_reference_tenant() {
        assert_eq!(Shape::at_scale(1.0).tenant_keys(), SCALE1_KEYS);
        assert!(Shape::at_scale(10.0).tenant_keys() > 10 * SCALE1_KEYS - 1000);
    }
}
