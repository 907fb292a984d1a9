//! A recording Bolt proxy: forwards every byte between a client and a Bolt server
//! unchanged, and decodes what the client sends (the handshake, then chunked
//! PackStream messages) into a log per connection, so that a test can assert what
//! reached the server — for example that no schema statement ran inside an explicit
//! transaction, which Memgraph refuses and Neo4j accepts.
//!
//! Bolt framing (https://neo4j.com/docs/bolt/current/bolt/): a 20-byte handshake
//! (magic 0x6060B017 and four versions), then messages cut into chunks of a 2-byte
//! big-endian length and that many bytes, each message ended by a zero-length chunk.
//! A message is a PackStream structure whose tag byte names it (RUN 0x10, BEGIN 0x11,
//! COMMIT 0x12, ROLLBACK 0x13, RESET 0x0F, ...).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// What a client asked of the server, message by message.
#[derive(Clone, Debug, PartialEq)]
pub enum BoltRequest {
    Hello,
    /// BEGIN of an explicit transaction, with the database it names (if any).
    Begin {
        db: Option<String>,
    },
    /// RUN of a query: inside an explicit transaction after a BEGIN, else auto-commit.
    Run {
        query: String,
        db: Option<String>,
    },
    Pull,
    Discard,
    Commit,
    Rollback,
    Reset,
    Goodbye,
    Other(u8),
}

/// A decoded PackStream value (what the messages above need of it).
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Text(String),
    List(Vec<Value>),
    Map(Vec<(String, Value)>),
    Struct(u8, Vec<Value>),
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }

    fn uint(&mut self, n: usize) -> Option<usize> {
        Some(self.take(n)?.iter().fold(0usize, |a, b| (a << 8) | *b as usize))
    }

    fn value(&mut self) -> Option<Value> {
        let m = *self.take(1)?.first()?;
        let text = |r: &mut Self, n| Some(Value::Text(String::from_utf8_lossy(r.take(n)?).into_owned()));
        Some(match m {
            0x00..=0x7f => Value::Int(i64::from(m)),
            0xf0..=0xff => Value::Int(i64::from(m as i8)),
            0x80..=0x8f => text(self, usize::from(m & 0x0f))?,
            0x90..=0x9f => self.list(usize::from(m & 0x0f))?,
            0xa0..=0xaf => self.map(usize::from(m & 0x0f))?,
            0xb0..=0xbf => {
                let tag = *self.take(1)?.first()?;
                let fields = (0..m & 0x0f).map(|_| self.value()).collect::<Option<_>>()?;
                Value::Struct(tag, fields)
            }
            0xc0 => Value::Null,
            0xc1 => Value::Float(f64::from_be_bytes(self.take(8)?.try_into().ok()?)),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc8 => Value::Int(i64::from(self.take(1)?[0] as i8)),
            0xc9 => Value::Int(i64::from(i16::from_be_bytes(self.take(2)?.try_into().ok()?))),
            0xca => Value::Int(i64::from(i32::from_be_bytes(self.take(4)?.try_into().ok()?))),
            0xcb => Value::Int(i64::from_be_bytes(self.take(8)?.try_into().ok()?)),
            0xcc..=0xce => {
                let n = self.uint(1 << (m - 0xcc))?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            0xd0..=0xd2 => {
                let n = self.uint(1 << (m - 0xd0))?;
                text(self, n)?
            }
            0xd4..=0xd6 => {
                let n = self.uint(1 << (m - 0xd4))?;
                self.list(n)?
            }
            0xd8..=0xda => {
                let n = self.uint(1 << (m - 0xd8))?;
                self.map(n)?
            }
            _ => return None,
        })
    }

    fn list(&mut self, n: usize) -> Option<Value> {
        Some(Value::List((0..n).map(|_| self.value()).collect::<Option<_>>()?))
    }

    fn map(&mut self, n: usize) -> Option<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let Value::Text(k) = self.value()? else { return None };
            out.push((k, self.value()?));
        }
        Some(Value::Map(out))
    }
}

fn db_of(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::Map(entries)) => entries.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("db", Value::Text(db)) => Some(db.clone()),
            _ => None,
        }),
        _ => None,
    }
}

/// Decodes one whole message.
fn request(message: &[u8]) -> BoltRequest {
    let mut r = Reader { buf: message, at: 0 };
    let Some(Value::Struct(tag, fields)) = r.value() else {
        return BoltRequest::Other(0xff);
    };
    match tag {
        0x01 => BoltRequest::Hello,
        0x02 => BoltRequest::Goodbye,
        0x0f => BoltRequest::Reset,
        0x10 => match fields.first() {
            Some(Value::Text(q)) => BoltRequest::Run {
                query: q.clone(),
                db: db_of(fields.get(2)),
            },
            _ => BoltRequest::Other(tag),
        },
        0x11 => BoltRequest::Begin {
            db: db_of(fields.first()),
        },
        0x12 => BoltRequest::Commit,
        0x13 => BoltRequest::Rollback,
        0x2f => BoltRequest::Discard,
        0x3f => BoltRequest::Pull,
        other => BoltRequest::Other(other),
    }
}

/// The log of one connection: its requests in order.
pub type Connection = Vec<BoltRequest>;

/// When the proxy stops answering: after the `after`-th RUN containing `needle`, or,
/// with `at_commit`, at the COMMIT that follows it (the server commits; the client never
/// hears so).
#[derive(Clone, Debug)]
struct FreezeRule {
    needle: String,
    after: usize,
    at_commit: bool,
}

type Freeze = Arc<Mutex<Option<FreezeRule>>>;

/// A running recording proxy; stops accepting when dropped.
pub struct BoltRecorder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>>,
    /// When set: the first connection to send this many RUNs containing the text stops
    /// forwarding the server's answers (a hung server, to the client); the rule is then spent.
    freeze: Freeze,
    frozen_once: Arc<AtomicBool>,
}

impl BoltRecorder {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>> = Arc::default();
        let freeze: Freeze = Arc::default();
        let frozen_once = Arc::new(AtomicBool::new(false));
        let (s, l, f, once) = (stop.clone(), log.clone(), freeze.clone(), frozen_once.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let conn: Arc<Mutex<Connection>> = Arc::default();
                        if let Ok(mut all) = l.lock() {
                            all.push(conn.clone());
                        }
                        let _ = relay(client, upstream, conn, f.clone(), once.clone());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(std::time::Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            log,
            freeze,
            frozen_once,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The first connection that sends its `after`-th RUN whose query contains `needle`
    /// hangs from then on (stops answering the client), once; `None` lifts the rule.
    pub fn freeze_after(&self, rule: Option<(&str, usize)>) {
        if let Ok(mut g) = self.freeze.lock() {
            *g = rule.map(|(n, a)| FreezeRule {
                needle: n.to_owned(),
                after: a,
                at_commit: false,
            });
        }
    }

    /// The first connection that sends a RUN containing `needle` and then COMMITs hangs
    /// from that COMMIT on: the server receives and commits it, the client is never
    /// answered (a connection lost between a write and its acknowledgement), once.
    pub fn freeze_at_commit_after(&self, needle: &str) {
        if let Ok(mut g) = self.freeze.lock() {
            *g = Some(FreezeRule {
                needle: needle.to_owned(),
                after: 1,
                at_commit: true,
            });
        }
    }

    /// Whether a freeze rule was set and has been spent (a connection froze).
    pub fn froze(&self) -> bool {
        self.frozen_once.load(Ordering::SeqCst)
    }

    /// Every connection's requests so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.log
            .lock()
            .map(|all| all.iter().filter_map(|c| c.lock().ok().map(|c| c.clone())).collect())
            .unwrap_or_default()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        if let Ok(mut all) = self.log.lock() {
            all.clear();
        }
    }
}

impl Drop for BoltRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    log: Arc<Mutex<Connection>>,
    freeze: Freeze,
    once: Arc<AtomicBool>,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let frozen = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let f2 = frozen.clone();
    thread::spawn(move || record(client, server, log, freeze, &frozen, &once));
    thread::spawn(move || answer(s2, c2, &f2));
    Ok(())
}

/// Server to client, unless frozen (then the bytes are swallowed: the client waits).
fn answer(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if !frozen.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Ok(_) => {}
        }
    }
    if !frozen.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// Client to server, decoding as it goes.
fn record(
    mut from: TcpStream,
    mut to: TcpStream,
    log: Arc<Mutex<Connection>>,
    freeze: Freeze,
    frozen: &AtomicBool,
    once: &AtomicBool,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut message: Vec<u8> = Vec::new();
    let mut handshake_left = 20usize;
    let runs = AtomicUsize::new(0);
    let mut armed = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Decoded (and a freeze decided) before the bytes go on, so that no answer to
        // them can slip through first.
        pending.extend_from_slice(&buf[..n]);
        let skip = handshake_left.min(pending.len());
        pending.drain(..skip);
        handshake_left -= skip;
        // Whole chunks: length, then bytes; a zero length ends the message.
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            if len == 0 {
                let req = request(&message);
                if let Ok(mut rule) = freeze.lock()
                    && let Some(r) = rule.as_ref()
                {
                    let freeze_now = match &req {
                        BoltRequest::Run { query, .. }
                            if query.contains(r.needle.as_str())
                                && runs.fetch_add(1, Ordering::SeqCst) + 1 >= r.after =>
                        {
                            armed = r.at_commit;
                            !r.at_commit
                        }
                        BoltRequest::Commit => armed,
                        _ => false,
                    };
                    if freeze_now {
                        frozen.store(true, Ordering::SeqCst);
                        once.store(true, Ordering::SeqCst);
                        *rule = None;
                    }
                }
                if let Ok(mut l) = log.lock() {
                    l.push(req);
                }
                message.clear();
            } else {
                message.extend_from_slice(&pending[2..2 + len]);
            }
            pending.drain(..2 + len);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // The client is gone. A frozen connection closes too (as the client's socket would
    // have): else the server keeps the transaction of the unanswered statement open,
    // with its locks (a hung DROP INDEX holds the schema lock every later MERGE needs).
    let how = if frozen.load(Ordering::SeqCst) {
        Shutdown::Both
    } else {
        Shutdown::Write
    };
    let _ = to.shutdown(how);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_and_begin_messages_decode() {
        // RUN "RETURN 1" {} {db: "memgraph"}
        let mut run = vec![0xb3, 0x10, 0x88];
        run.extend_from_slice(b"RETURN 1");
        run.extend_from_slice(&[0xa0, 0xa1, 0x82]);
        run.extend_from_slice(b"db");
        run.push(0x88);
        run.extend_from_slice(b"memgraph");
        assert_eq!(
            request(&run),
            BoltRequest::Run {
                query: "RETURN 1".into(),
                db: Some("memgraph".into())
            }
        );
        assert_eq!(request(&[0xb1, 0x11, 0xa0]), BoltRequest::Begin { db: None });
        assert_eq!(request(&[0xb0, 0x12]), BoltRequest::Commit);
    }
}
