//! Where the Redis phase's commands go: one server (Redis, DragonflyDB) or the primaries
//! of a Redis Cluster, chosen by key slot.
//!
//! The phase speaks in keyed commands and scan cursors; this module routes them. In a
//! cluster every primary is scanned in turn (a cursor names the primary), and a batch of
//! keyed commands is split into one pipeline per primary owning the keys' slots — a
//! target key may live on another primary than its source. Replies come back in the
//! order the commands were given. A MOVED or ASK reply (slots migrating while we run)
//! marks the slot map stale: the engine retries the batch, and the phase reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ConnectionInfo, RedisError, RedisResult, Value};

/// Slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// The CRC16 (XMODEM) of Redis Cluster's key hashing.
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: of its hash tag (`{…}`, if non-empty) or of the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

/// A position in a scan of every primary: which primary, its SCAN cursor, and which
/// server process handed the cursor out.
///
/// A SCAN cursor means something only to the process that returned it: Redis and
/// DragonflyDB seed their hash functions at random per process, and a replica promoted
/// by a failover has tables of its own. A cursor from another process (the server
/// restarted, failed over, or a resumed run meets a new one) is not trusted: that
/// server is scanned again from the start, which every stage tolerates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanCursor {
    pub node: usize,
    pub cursor: u64,
    /// Digest of the server's `run_id` (0: unknown; only cursor 0 is then trusted).
    pub server: u64,
}

impl ScanCursor {
    /// `"{cursor}@{server}"` on the first primary (and on a single server),
    /// `"{node}:{cursor}@{server}"` after; without `@…` (older checkpoints) the
    /// server is unknown.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() {
            return Some(Self::default());
        }
        let (position, server) = match s.split_once('@') {
            Some((p, id)) => (p, u64::from_str_radix(id, 16).ok()?),
            None => (s, 0),
        };
        let (node, cursor) = match position.split_once(':') {
            Some((node, cursor)) => (node.parse().ok()?, cursor.parse().ok()?),
            None => (0, position.parse().ok()?),
        };
        Some(Self { node, cursor, server })
    }
}

impl std::fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.node != 0 {
            write!(f, "{}:", self.node)?;
        }
        write!(f, "{}", self.cursor)?;
        if self.cursor != 0 {
            write!(f, "@{:016x}", self.server)?;
        }
        Ok(())
    }
}

/// Which server process answered: a digest of `run_id` from `INFO server` (a new one
/// per process in Redis), or, where a server reports none, of this client process —
/// so that its cursors are trusted within this run only.
fn server_identity(info: &str) -> u64 {
    static CLIENT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
        .filter(|id| !id.is_empty());
    let id = match run_id {
        Some(id) => crate::stores::digest(&[b"run_id", id.as_bytes()]),
        None => *CLIENT.get_or_init(|| {
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            crate::stores::digest(&[b"client", &std::process::id().to_le_bytes(), &started.to_le_bytes()])
        }),
    };
    id.max(1)
}

/// A Redis Cluster's primaries and which of them owns each slot.
pub struct Cluster {
    /// Address, shared connection, and how to open an exclusive one.
    nodes: Vec<(String, ConnectionManager, ConnectionInfo)>,
    owner: Vec<u16>,
    stale: AtomicBool,
}

/// One server, or a cluster's primaries.
#[derive(Clone)]
pub enum Topology {
    Single(ConnectionManager, Arc<ConnectionInfo>),
    Cluster(Arc<Cluster>),
}

/// A connection to `info` that gives up quickly at connect time (the engine retries
/// batches with backoff) and waits long enough for a large pipeline.
pub async fn connect(info: ConnectionInfo) -> RedisResult<ConnectionManager> {
    let client = redis::Client::open(info)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(60)));
    let mut conn = ConnectionManager::new_with_config(client, config).await?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(conn)
}

/// The primaries of `CLUSTER SLOTS`: `(first slot, last slot, host, port)`.
fn primaries(reply: &Value) -> Vec<(u16, u16, String, u16)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let Value::Array(primary) = r.get(2)? else {
                return None;
            };
            Some((
                int(r.first()?)?,
                int(r.get(1)?)?,
                text(primary.first()?)?,
                int(primary.get(1)?)?,
            ))
        })
        .collect()
}

impl Topology {
    /// Connects to `info`; when it is a Redis Cluster node, to every primary too.
    /// Returns the address of whatever could not be reached with the error.
    pub async fn discover(info: ConnectionInfo) -> Result<Self, (String, RedisError)> {
        let seed_addr = info.addr().to_string();
        let mut seed = connect(info.clone()).await.map_err(|e| (seed_addr.clone(), e))?;
        let cluster_info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut seed)
            .await
            .unwrap_or_default();
        if !cluster_info.contains("cluster_enabled:1") {
            return Ok(Self::Single(seed, Arc::new(info)));
        }
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut seed)
            .await
            .map_err(|e| (seed_addr.clone(), e))?;
        let seed_host = match info.addr() {
            redis::ConnectionAddr::Tcp(h, _) | redis::ConnectionAddr::TcpTls { host: h, .. } => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let mut nodes: Vec<(String, ConnectionManager, ConnectionInfo)> = Vec::new();
        let mut owner = vec![u16::MAX; SLOTS];
        for (first, last, host, port) in primaries(&reply) {
            // An empty host means "the address you reached me at".
            let host = if host.is_empty() || host == "?" {
                seed_host.clone()
            } else {
                host
            };
            let addr = format!("{host}:{port}");
            let index = match nodes.iter().position(|(a, ..)| *a == addr) {
                Some(i) => i,
                None => {
                    let node_info = info.clone().set_addr(match info.addr() {
                        redis::ConnectionAddr::TcpTls {
                            insecure, tls_params, ..
                        } => redis::ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port,
                            insecure: *insecure,
                            tls_params: tls_params.clone(),
                        },
                        _ => redis::ConnectionAddr::Tcp(host.clone(), port),
                    });
                    let conn = connect(node_info.clone()).await.map_err(|e| (addr.clone(), e))?;
                    nodes.push((addr, conn, node_info));
                    nodes.len() - 1
                }
            };
            for slot in first..=last.min(SLOTS as u16 - 1) {
                owner[slot as usize] = index as u16;
            }
        }
        if nodes.is_empty() || owner.contains(&u16::MAX) {
            let covered = owner.iter().filter(|o| **o != u16::MAX).count();
            return Err((
                seed_addr,
                RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                    "the cluster does not cover every slot",
                    format!("{covered} of {SLOTS} slots have a primary"),
                )),
            ));
        }
        Ok(Self::Cluster(Arc::new(Cluster {
            nodes,
            owner,
            stale: AtomicBool::new(false),
        })))
    }

    /// Whether a redirection showed that slots moved: reconnect before the next batch.
    pub fn is_stale(&self) -> bool {
        match self {
            Self::Single(..) => false,
            Self::Cluster(c) => c.stale.load(Ordering::SeqCst),
        }
    }

    /// `INFO {section}` of every server (each primary of a cluster), in order.
    pub async fn info_of_each(&self, section: &str) -> RedisResult<Vec<String>> {
        let conns: Vec<ConnectionManager> = match self {
            Self::Single(c, _) => vec![c.clone()],
            Self::Cluster(c) => c.nodes.iter().map(|(_, conn, _)| conn.clone()).collect(),
        };
        let mut out = Vec::with_capacity(conns.len());
        for mut conn in conns {
            out.push(redis::cmd("INFO").arg(section).query_async(&mut conn).await?);
        }
        Ok(out)
    }

    /// How many servers hold keys (primaries of a cluster).
    pub fn servers(&self) -> usize {
        match self {
            Self::Single(..) => 1,
            Self::Cluster(c) => c.nodes.len(),
        }
    }

    /// One SCAN page from `at`; `None` for the next position once every server is done.
    /// The server's identity comes in the same round trip: a cursor another process
    /// handed out restarts that server's scan from 0.
    pub async fn scan(
        &self,
        at: ScanCursor,
        pattern: &str,
        count: usize,
    ) -> RedisResult<(Option<ScanCursor>, Vec<Vec<u8>>)> {
        let mut conn = match self {
            Self::Single(c, _) => c.clone(),
            Self::Cluster(c) => match c.nodes.get(at.node) {
                Some((_, conn, _)) => conn.clone(),
                None => return Ok((None, Vec::new())),
            },
        };
        let mut at = at;
        loop {
            let (info, (next, keys)): (String, (u64, Vec<Vec<u8>>)) = redis::pipe()
                .cmd("INFO")
                .arg("server")
                .cmd("SCAN")
                .arg(at.cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await?;
            let server = server_identity(&info);
            if at.cursor != 0 && at.server != server {
                tracing::warn!(
                    node = at.node,
                    cursor = at.cursor,
                    "the SCAN cursor was handed out by another server process (restarted or failed over); \
                     scanning this server again from the start"
                );
                at = ScanCursor {
                    cursor: 0,
                    server,
                    ..at
                };
                continue;
            }
            let after = if next != 0 {
                Some(ScanCursor {
                    node: at.node,
                    cursor: next,
                    server,
                })
            } else if at.node + 1 < self.servers() {
                Some(ScanCursor {
                    node: at.node + 1,
                    cursor: 0,
                    server: 0,
                })
            } else {
                None
            };
            return Ok((after, keys));
        }
    }

    /// Groups of `keys` (by index) that one transaction may hold: all of them on one
    /// server; those of one slot on a cluster, whose transactions must not cross slots.
    pub fn transaction_groups(&self, keys: &[&[u8]]) -> Vec<Vec<usize>> {
        match self {
            Self::Single(..) => vec![(0..keys.len()).collect()],
            Self::Cluster(_) => {
                let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
                for (i, k) in keys.iter().enumerate() {
                    by_slot.entry(key_slot(k)).or_default().push(i);
                }
                by_slot.into_values().collect()
            }
        }
    }

    /// The index of the server that holds `key` (0 on a single server).
    pub fn server_of(&self, key: &[u8]) -> usize {
        match self {
            Self::Single(..) => 0,
            Self::Cluster(c) => c.owner[key_slot(key) as usize] as usize,
        }
    }

    /// A connection of its own to the server of `key`, for WATCH … MULTI/EXEC: it
    /// never reconnects by itself (a reconnect would silently drop the WATCH), so a
    /// lost connection fails the transaction instead of running it unguarded.
    pub async fn exclusive(&self, key: &[u8]) -> RedisResult<redis::aio::MultiplexedConnection> {
        let info = match self {
            Self::Single(_, info) => info.as_ref().clone(),
            Self::Cluster(c) => c.nodes[c.owner[key_slot(key) as usize] as usize].2.clone(),
        };
        redis::Client::open(info)?.get_multiplexed_async_connection().await
    }

    /// Runs `commands`, each routed by its key, pipelined per server; one reply per
    /// command, in order. Errors of single commands are replies, not a failed call.
    pub async fn keyed(&self, commands: Vec<(&[u8], Cmd)>) -> RedisResult<Vec<RedisResult<Value>>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Single(conn, _) => {
                let mut p = redis::pipe();
                p.ignore_errors();
                for (_, c) in commands {
                    p.add_command(c);
                }
                p.query_async(&mut conn.clone()).await
            }
            Self::Cluster(cluster) => {
                let mut per_node: Vec<(redis::Pipeline, Vec<usize>)> =
                    (0..cluster.nodes.len()).map(|_| (redis::pipe(), Vec::new())).collect();
                let n = commands.len();
                for (i, (key, c)) in commands.into_iter().enumerate() {
                    let node = cluster.owner[key_slot(key) as usize] as usize;
                    let (p, order) = &mut per_node[node];
                    p.add_command(c);
                    order.push(i);
                }
                let calls = per_node
                    .into_iter()
                    .enumerate()
                    .filter(|(_, (_, order))| !order.is_empty())
                    .map(|(node, (mut p, order))| {
                        let mut conn = cluster.nodes[node].1.clone();
                        async move {
                            p.ignore_errors();
                            let replies: Vec<RedisResult<Value>> = p.query_async(&mut conn).await?;
                            Ok::<_, RedisError>((order, replies))
                        }
                    });
                let mut out: Vec<Option<RedisResult<Value>>> = (0..n).map(|_| None).collect();
                for result in futures::future::join_all(calls).await {
                    let (order, replies) = result?;
                    for (i, r) in order.into_iter().zip(replies) {
                        if let Err(e) = &r
                            && matches!(e.code(), Some("MOVED" | "ASK"))
                        {
                            cluster.stale.store(true, Ordering::SeqCst);
                        }
                        out[i] = Some(r);
                    }
                }
                Ok(out
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(RedisError::from((redis::ErrorKind::Io, "no reply")))))
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster_hashing() {
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag `{}` hashes the whole key.
        assert_eq!(key_slot(b"foo{}bar"), crc16(b"foo{}bar") % 16384);
    }

    #[test]
    fn cursors_name_the_node_and_the_server_process() {
        let c = ScanCursor {
            node: 2,
            cursor: 17,
            server: 0xabc,
        };
        assert_eq!(c.to_string(), "2:17@0000000000000abc");
        assert_eq!(ScanCursor::parse(&c.to_string()), Some(c));
        // Older checkpoints: the server is unknown, so the cursor will not be trusted.
        let old = ScanCursor::parse("42").expect("parse");
        assert_eq!((old.node, old.cursor, old.server), (0, 42, 0));
        assert_eq!(ScanCursor::parse(""), Some(ScanCursor::default()));
        assert_eq!(ScanCursor::parse("3:0").map(|c| c.to_string()), Some("3:0".to_owned()));
        assert_eq!(ScanCursor::parse("x"), None);
        assert_eq!(ScanCursor::parse("5@zz"), None);
        let a = server_identity("# Server\r\nredis_version:7.0.15\r\nrun_id:27d6fd8965e06e5d\r\n");
        let b = server_identity("# Server\r\nrun_id:0000000000000001\r\n");
        let none = server_identity("# Server\r\nredis_version:7\r\n");
        assert!(a != b && a != none && none == server_identity(""));
    }
}
