//! Keys too large to hold in memory: copied, compared and removed in pieces.
//!
//! `DUMP` returns a key whole, and a batch holds each payload about twice (the reply
//! and the `RESTORE` it becomes). A hash of 200 MB would need 400 MB in a pod of 256
//! MiB. So every batch is sized first (`MEMORY USAGE`, answered from the key's
//! encoding without reading its values) and split: keys up to [`LARGE_BYTES`] go
//! through `DUMP`/`RESTORE` in sub-batches of at most [`BATCH_BYTES`]; a larger key is
//! streamed here, a page of elements at a time, by its type's own commands (`HSCAN` →
//! `HSET`, `SSCAN` → `SADD`, `ZSCAN` → `ZADD`, `LRANGE` → `RPUSH`, `GETRANGE` →
//! `APPEND`), and compared the same way (`HMGET`, `SMISMEMBER`, `ZMSCORE`, `LRANGE`,
//! `GETRANGE` of the copy, after equal lengths). All of them are in DragonflyDB too.
//!
//! A streamed copy is not one atomic write: a run killed half-way leaves part of the
//! key at the target, which the resumed run replaces (the comparison finds it
//! differs); removal stays the compare-and-delete of the batch path — `WATCH` on the
//! source before the comparison, `UNLINK` in `MULTI`/`EXEC` — so a source changed
//! while it was being compared is never removed.

use redis::{Cmd, ToRedisArgs, Value};

use super::topology::Topology;
use super::{RedisStoreError, all, keyed, show};

/// A key whose `MEMORY USAGE` is above this is streamed in pieces.
pub const LARGE_BYTES: u64 = 32 << 20;
/// The `DUMP` payloads of one sub-batch add up to about this at most (a single key
/// larger than this and up to [`LARGE_BYTES`] goes alone).
pub const BATCH_BYTES: u64 = 16 << 20;
/// Elements per page of a streamed key (`COUNT` of the scans, the span of `LRANGE`).
const PAGE: usize = 1_000;
/// Bytes per page of a streamed string.
const STRING_PAGE: usize = 1 << 20;

/// Sizes (`MEMORY USAGE`, 0 for a key gone since SCAN) of `keys`, in order.
pub async fn sizes(conn: &Topology, keys: &[&[u8]]) -> Result<Vec<u64>, RedisStoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let commands = keys
        .iter()
        .map(|k| {
            let mut c = redis::cmd("MEMORY");
            c.arg("USAGE").arg(*k);
            (*k, c)
        })
        .collect();
    let sizes: Vec<Option<u64>> = all(conn, commands, format!("MEMORY USAGE batch from {}", show(keys[0]))).await?;
    Ok(sizes.into_iter().map(Option::unwrap_or_default).collect())
}

/// A page of keys split by their sizes.
pub struct Split<T> {
    /// Sub-batches of at most the budget's bytes (and of any count).
    pub batches: Vec<Vec<T>>,
    /// Keys above the budget and up to [`LARGE_BYTES`]: a batch each, one at a time.
    pub solo: Vec<T>,
    /// Keys above [`LARGE_BYTES`]: streamed.
    pub streamed: Vec<T>,
}

/// Splits items (with their sizes) into sub-batches of at most `budget` bytes, the items
/// above it, and those above [`LARGE_BYTES`], keeping their order.
pub fn split<T>(items: Vec<T>, sizes: &[u64], budget: u64) -> Split<T> {
    let mut out = Split {
        batches: vec![Vec::new()],
        solo: Vec::new(),
        streamed: Vec::new(),
    };
    let mut bytes = 0u64;
    for (item, size) in items.into_iter().zip(sizes.iter().copied().chain(std::iter::repeat(0))) {
        if size > LARGE_BYTES {
            out.streamed.push(item);
            continue;
        }
        if size > budget {
            out.solo.push(item);
            continue;
        }
        if bytes + size > budget && out.batches.last().is_some_and(|b| !b.is_empty()) {
            out.batches.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(b) = out.batches.last_mut() {
            b.push(item);
        }
    }
    out.batches.retain(|b| !b.is_empty());
    out
}

/// `name key args…`.
fn with(name: &str, key: &[u8], args: impl ToRedisArgs) -> Cmd {
    let mut c = keyed(name, key);
    c.arg(args);
    c
}

async fn one<T: redis::FromRedisValue>(conn: &Topology, key: &[u8], cmd: Cmd, op: &str) -> Result<T, RedisStoreError> {
    let mut replies: Vec<T> = all(conn, vec![(key, cmd)], format!("{op} {}", show(key))).await?;
    replies
        .pop()
        .ok_or_else(|| RedisStoreError::Settings(format!("{op} {}: no reply", show(key))))
}

/// A key's type and length in its type's unit (fields, members, elements, bytes).
async fn shape(conn: &Topology, key: &[u8]) -> Result<(String, u64), RedisStoreError> {
    let kind: String = one(conn, key, keyed("TYPE", key), "TYPE").await?;
    let len = match kind.as_str() {
        "hash" => "HLEN",
        "set" => "SCARD",
        "zset" => "ZCARD",
        "list" => "LLEN",
        "string" => "STRLEN",
        _ => return Ok((kind, 0)),
    };
    let n: u64 = one(conn, key, keyed(len, key), len).await?;
    Ok((kind, n))
}

/// One page of a streamed key: elements (field/value or member/score pairs flattened,
/// members, list elements, or one slice of a string) and where the next starts.
async fn page(
    conn: &Topology,
    kind: &str,
    key: &[u8],
    at: u64,
) -> Result<(Vec<Vec<u8>>, Option<u64>), RedisStoreError> {
    let scan = |name: &str| {
        let mut c = keyed(name, key);
        c.arg(at).arg("COUNT").arg(PAGE);
        c
    };
    match kind {
        "hash" | "set" | "zset" => {
            let name = match kind {
                "hash" => "HSCAN",
                "set" => "SSCAN",
                _ => "ZSCAN",
            };
            let (next, items): (u64, Vec<Vec<u8>>) = one(conn, key, scan(name), name).await?;
            Ok((items, (next != 0).then_some(next)))
        }
        "list" => {
            let mut c = keyed("LRANGE", key);
            c.arg(at).arg(at + PAGE as u64 - 1);
            let items: Vec<Vec<u8>> = one(conn, key, c, "LRANGE").await?;
            let next = (items.len() == PAGE).then_some(at + PAGE as u64);
            Ok((items, next))
        }
        "string" => {
            let mut c = keyed("GETRANGE", key);
            c.arg(at).arg(at + STRING_PAGE as u64 - 1);
            let bytes: Vec<u8> = one(conn, key, c, "GETRANGE").await?;
            let next = (bytes.len() == STRING_PAGE).then_some(at + STRING_PAGE as u64);
            Ok((vec![bytes], next))
        }
        other => Err(RedisStoreError::Settings(format!(
            "{}: a {other} larger than {} MiB cannot be copied in pieces; copy it by hand or raise the pod's memory",
            show(key),
            LARGE_BYTES >> 20
        ))),
    }
}

/// Copies `source` to `target` page by page (the target is replaced); `None` when
/// the source is gone. Returns a digest of what was copied.
pub async fn copy(conn: &Topology, source: &[u8], target: &[u8]) -> Result<Option<u64>, RedisStoreError> {
    let (kind, _) = shape(conn, source).await?;
    if kind == "none" {
        return Ok(None);
    }
    let _: i64 = one(conn, target, keyed("UNLINK", target), "UNLINK").await?;
    let mut digest = std::hash::DefaultHasher::new();
    let mut at = 0u64;
    let mut first = true;
    loop {
        let (items, next) = page(conn, &kind, source, at).await?;
        if !items.is_empty() {
            std::hash::Hash::hash(&items, &mut digest);
            let write = match kind.as_str() {
                "hash" => with("HSET", target, &items),
                "set" => with("SADD", target, &items),
                "zset" => {
                    let mut c = keyed("ZADD", target);
                    for pair in items.chunks(2) {
                        c.arg(pair.get(1).map(Vec::as_slice).unwrap_or_default()).arg(&pair[0]);
                    }
                    c
                }
                "list" => with("RPUSH", target, &items),
                _ => with(if first { "SET" } else { "APPEND" }, target, &items[0]),
            };
            let _: Value = one(conn, target, write, "streamed write of").await?;
            first = false;
        }
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    // The source's TTL as it is now, not as it was before the pages: streaming takes
    // seconds, and the target would otherwise outlive the source by that long (Verify
    // then saw the TTLs differ, copied again, and failed the run).
    let pttl: i64 = one(conn, source, keyed("PTTL", source), "PTTL").await?;
    if pttl == -2 {
        // Expired (or deleted) while it was copied: no copy either.
        let _: i64 = one(conn, target, keyed("UNLINK", target), "UNLINK").await?;
        return Ok(None);
    }
    if pttl > 0 {
        let mut c = keyed("PEXPIRE", target);
        c.arg(pttl);
        let _: i64 = one(conn, target, c, "PEXPIRE").await?;
    }
    Ok(Some(std::hash::Hasher::finish(&digest)))
}

/// Whether `target` holds what `source` holds, compared page by page: same type and
/// length, and every element of the source at the target with the same value.
pub async fn equal(conn: &Topology, source: &[u8], target: &[u8]) -> Result<bool, RedisStoreError> {
    let (s, t) = (shape(conn, source).await?, shape(conn, target).await?);
    if s != t || s.0 == "none" {
        return Ok(false);
    }
    let kind = s.0;
    let mut at = 0u64;
    loop {
        let (items, next) = page(conn, &kind, source, at).await?;
        let same = match kind.as_str() {
            "hash" => {
                let fields: Vec<&Vec<u8>> = items.iter().step_by(2).collect();
                let values: Vec<&Vec<u8>> = items.iter().skip(1).step_by(2).collect();
                let got: Vec<Option<Vec<u8>>> = one(conn, target, with("HMGET", target, &fields), "HMGET").await?;
                got.iter().zip(values).all(|(g, v)| g.as_ref() == Some(v))
            }
            "set" => {
                let got: Vec<i64> = one(conn, target, with("SMISMEMBER", target, &items), "SMISMEMBER").await?;
                got.iter().all(|m| *m == 1)
            }
            "zset" => {
                let members: Vec<&Vec<u8>> = items.iter().step_by(2).collect();
                let scores: Vec<&Vec<u8>> = items.iter().skip(1).step_by(2).collect();
                let got: Vec<Option<f64>> = one(conn, target, with("ZMSCORE", target, &members), "ZMSCORE").await?;
                got.iter().zip(scores).all(|(g, s)| {
                    let want = String::from_utf8_lossy(s).parse::<f64>().ok();
                    g.is_some() && *g == want
                })
            }
            "list" => {
                let mut c = keyed("LRANGE", target);
                c.arg(at).arg(at + PAGE as u64 - 1);
                let got: Vec<Vec<u8>> = one(conn, target, c, "LRANGE").await?;
                got == items
            }
            _ => {
                let mut c = keyed("GETRANGE", target);
                c.arg(at).arg(at + STRING_PAGE as u64 - 1);
                let got: Vec<u8> = one(conn, target, c, "GETRANGE").await?;
                items.first() == Some(&got)
            }
        };
        if !same {
            return Ok(false);
        }
        match next {
            Some(n) => at = n,
            None => return Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_bytes_and_large_keys_go_alone() {
        let mib = 1u64 << 20;
        let sizes = [mib, 10 * mib, 10 * mib, 20 * mib, 200 * mib, mib];
        let s = split((0..6).collect(), &sizes, BATCH_BYTES);
        assert_eq!(s.batches, vec![vec![0, 1], vec![2, 5]]);
        assert_eq!((s.solo, s.streamed), (vec![3], vec![4]));
        let s = split((0..6).collect(), &sizes, 4 * mib);
        assert_eq!(s.batches, vec![vec![0, 5]]);
        assert_eq!((s.solo, s.streamed), (vec![1, 2, 3], vec![4]));
        let s = split(vec![1, 2, 3], &[], BATCH_BYTES);
        assert_eq!((s.batches, s.solo, s.streamed), (vec![vec![1, 2, 3]], vec![], vec![]));
    }
}
