//! A client that keeps writing a tenant while a migration runs — the RAG API that
//! was not quiesced — and logs every write the server acknowledged, in order, so
//! that a test can check where each last value ended up.
//!
//! Deterministic in what it writes (the i-th write is always the same), bounded in
//! count, and paced by a fixed interval between writes (a load generator's pacing,
//! not a synchronisation).

use std::thread::JoinHandle;
use std::time::Duration;

/// One acknowledged write of a key (`rest` is the key after the tenant's `{ws}_`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub rest: String,
    /// The value written (`SET`), or `None` for a `DEL`.
    pub value: Option<String>,
    /// What `observe` said right after the server acknowledged the write.
    pub seen: String,
}

/// A running writer.
pub struct RedisWriter {
    handle: JoinHandle<redis::RedisResult<Vec<Write>>>,
}

impl RedisWriter {
    /// Starts writing tenant `ws` on the Redis at `port`: `ops` writes, one every
    /// `every` — of ten, six update one of `existing` (key rests such as
    /// `full_docs:doc-1`), two create new keys, two delete an existing or a created
    /// key. `observe` is called after each acknowledged write (e.g. the stage a
    /// migration's state file shows) and its answer logged with it.
    pub fn start(
        port: u16,
        ws: &str,
        existing: Vec<String>,
        ops: usize,
        every: Duration,
        observe: impl Fn() -> String + Send + 'static,
    ) -> Self {
        let ws = ws.to_owned();
        let handle = std::thread::spawn(move || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
            let mut conn = client.get_connection()?;
            let mut log = Vec::with_capacity(ops);
            let mut created: Vec<String> = Vec::new();
            for i in 0..ops {
                let pick = |list: &[String], salt: usize| list[(i * salt) % list.len()].clone();
                let (rest, value) = match i % 10 {
                    0..=5 if !existing.is_empty() => (pick(&existing, 7), Some(format!("writer value {i}"))),
                    8 if !created.is_empty() => (pick(&created, 3), None),
                    9 if !existing.is_empty() => (pick(&existing, 13), None),
                    _ => {
                        let rest = format!("full_docs:writer-{i}");
                        created.push(rest.clone());
                        (rest, Some(format!("writer value {i}")))
                    }
                };
                let key = format!("{ws}_{rest}");
                match &value {
                    Some(v) => redis::cmd("SET").arg(&key).arg(v).exec(&mut conn)?,
                    None => redis::cmd("DEL").arg(&key).exec(&mut conn)?,
                }
                log.push(Write {
                    rest,
                    value,
                    seen: observe(),
                });
                std::thread::sleep(every);
            }
            Ok(log)
        });
        Self { handle }
    }

    /// Waits for the last write; returns the log.
    pub fn finish(self) -> Vec<Write> {
        match self.handle.join() {
            Ok(Ok(log)) => log,
            Ok(Err(e)) => panic!("the writer failed: {e}"),
            Err(_) => panic!("the writer panicked"),
        }
    }
}
