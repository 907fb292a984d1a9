//! How a batch reads its keys, and what it read.
//!
//! Most of a LightRAG tenant is small strings (JSON documents, chunks, cache entries).
//! For those a batch reads the value itself, `GETRANGE key 0 limit`, and writes it with
//! `SET … [PX ttl] [NX]`: Redis serves both without the LZF compression and CRC64 that
//! `DUMP` and `RESTORE` cost, and without sizing each key first (`MEMORY USAGE`), since
//! no reply can exceed `limit` + 1 bytes. A key that is not a string (`WRONGTYPE`), is
//! longer than `limit`, or reads empty (an empty string and a key deleted between its
//! `PTTL` and its `GETRANGE` read the same) is handed back to the `DUMP` path, which
//! sizes it and keeps its type and encoding. Both commands exist on Redis ≥ 2.6.12 and
//! DragonflyDB.

use redis::{Cmd, Value};

use super::keyed;

/// How a batch reads its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    /// `PTTL` and `GETRANGE key 0 limit`: strings of at most `limit` bytes.
    Strings { limit: usize },
    /// `PTTL` and `DUMP`: any key.
    Dumps,
}

impl Reading {
    /// The small-string reading of a chunk of `keys` keys whose replies (both sides of
    /// every key) may hold `budget` bytes.
    pub(super) fn strings(budget: u64, keys: usize) -> Self {
        let per_key = budget / (2 * keys.max(1)) as u64;
        Self::Strings {
            limit: usize::try_from(per_key).unwrap_or(usize::MAX).max(1),
        }
    }

    /// The two commands that read `key`, in the order [`Reading::found`] takes their
    /// replies.
    pub(super) fn commands(self, key: &[u8]) -> [Cmd; 2] {
        let value = match self {
            Self::Strings { limit } => {
                let mut c = keyed("GETRANGE", key);
                // Inclusive end: a string longer than `limit` replies `limit` + 1 bytes.
                c.arg(0).arg(limit);
                c
            }
            Self::Dumps => keyed("DUMP", key),
        };
        [keyed("PTTL", key), value]
    }

    /// The reads of each key, in order: two commands per key.
    pub(super) fn reads<'a>(self, keys: impl Iterator<Item = &'a [u8]>) -> Vec<(&'a [u8], Cmd)> {
        keys.flat_map(|k| self.commands(k).map(|c| (k, c))).collect()
    }

    /// What the replies to [`Reading::commands`] say about the key.
    pub(super) fn found<'v>(self, pttl: &Value, value: &'v Value) -> Found<'v> {
        let Value::Int(pttl) = *pttl else {
            return Found::Other;
        };
        match (self, value) {
            (Self::Dumps, Value::BulkString(dump)) => Found::Value(Snapshot {
                pttl,
                value: Payload::Dump(dump),
            }),
            (Self::Dumps, _) => Found::Gone,
            (Self::Strings { .. }, Value::BulkString(s)) if s.is_empty() && pttl == -2 => Found::Gone,
            (Self::Strings { limit }, Value::BulkString(s)) if !s.is_empty() && s.len() <= limit && pttl != -2 => {
                Found::Value(Snapshot {
                    pttl,
                    value: Payload::String(s),
                })
            }
            // WRONGTYPE, a longer string, an empty one, or a key that appeared between
            // the two reads.
            _ => Found::Other,
        }
    }
}

/// What a key's reads found.
pub(super) enum Found<'v> {
    /// The key does not exist.
    Gone,
    /// The key, as read.
    Value(Snapshot<'v>),
    /// The key exists but this reading cannot carry it (see [`Reading::Strings`]).
    Other,
}

/// A key as read: its PTTL and its value or DUMP payload (borrowed from the reply: a
/// payload is never copied to be compared).
pub(super) struct Snapshot<'v> {
    pub pttl: i64,
    pub value: Payload<'v>,
}

#[derive(Clone, Copy)]
pub(super) enum Payload<'v> {
    /// A `DUMP` payload.
    Dump(&'v [u8]),
    /// A string's value.
    String(&'v [u8]),
}

impl<'v> Payload<'v> {
    pub(super) fn bytes(self) -> &'v [u8] {
        match self {
            Self::Dump(b) | Self::String(b) => b,
        }
    }
}

impl Snapshot<'_> {
    /// The command that writes this snapshot to `target`: `RESTORE` of a payload, or
    /// `SET` of a string, with the source's TTL; `replace: false` leaves an existing
    /// target alone (`RESTORE` replies `BUSYKEY`, `SET … NX` nil).
    pub(super) fn write(&self, target: &[u8], replace: bool) -> Cmd {
        match self.value {
            Payload::Dump(dump) => {
                let mut c = keyed("RESTORE", target);
                c.arg(self.pttl.max(0)).arg(dump);
                if replace {
                    c.arg("REPLACE");
                }
                c
            }
            Payload::String(s) => {
                let mut c = keyed("SET", target);
                c.arg(s);
                if self.pttl > 0 {
                    c.arg("PX").arg(self.pttl);
                }
                if !replace {
                    c.arg("NX");
                }
                c
            }
        }
    }
}

/// Whether the reply to a [`Snapshot::write`] without `replace` says that the target
/// existed (and was left alone).
pub(super) fn target_existed(reply: &redis::RedisResult<Value>) -> bool {
    match reply {
        Ok(Value::Nil) => true,
        Err(e) => e.code() == Some("BUSYKEY"),
        Ok(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_small_string_is_carried_by_its_value_and_anything_else_is_handed_back() {
        let r = Reading::Strings { limit: 4 };
        assert!(matches!(r.found(&Value::Int(-1), &bulk("abcd")), Found::Value(_)));
        // One byte over the limit: the reply of `GETRANGE 0 4` to a longer string.
        assert!(matches!(r.found(&Value::Int(-1), &bulk("abcde")), Found::Other));
        // Empty: an empty string, or a key deleted between PTTL and GETRANGE.
        assert!(matches!(r.found(&Value::Int(-1), &bulk("")), Found::Other));
        assert!(matches!(r.found(&Value::Int(-2), &bulk("")), Found::Gone));
        // Created between PTTL and GETRANGE.
        assert!(matches!(r.found(&Value::Int(-2), &bulk("ab")), Found::Other));
        // Not a string reply (the WRONGTYPE of a hash is tested on a real server).
        assert!(matches!(r.found(&Value::Int(-1), &Value::Nil), Found::Other));
        assert!(matches!(
            Reading::Dumps.found(&Value::Int(-2), &Value::Nil),
            Found::Gone
        ));
    }

    #[test]
    fn the_limit_shares_the_budget_between_both_sides_of_every_key() {
        assert_eq!(Reading::strings(4 << 20, 256), Reading::Strings { limit: 8 << 10 });
        assert_eq!(Reading::strings(10, 1_000), Reading::Strings { limit: 1 });
    }
}
