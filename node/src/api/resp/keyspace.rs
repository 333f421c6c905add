//! `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]` and `KEYS pattern`
//! over the shared scan ([`crate::api::scan`]).
//!
//! **Cursors.** Redis clients treat a cursor as a 64-bit number (go-redis
//! parses it as `uint64`, redis-py as `int`), but where a ringkv scan
//! continues is a key. So a node keeps the keys its RESP connections' scans
//! stopped at in one table shared by its connections (a client library may
//! continue a scan on another pooled connection), numbered from 1 and
//! bounded ([`MAX_OPEN_CURSORS`], oldest forgotten first); a cursor may be
//! sent again (a retry after a lost answer). A cursor from another node,
//! or one forgotten, is answered `-ERR invalid cursor`.
//!
//! **Which keys.** On a plain connection the whole key space, in key order,
//! as Redis's one database. A page reads [`MIN_PAGE`] keys, or `COUNT`
//! when larger (at most 10,000): Redis defines `COUNT` as a hint of the
//! work per call (it answers small collections whole), and every ringkv
//! page costs a read of every partition, so pages of Redis's default 10
//! would multiply the work by about 50. `MATCH` filters each page, so a
//! page may hold fewer keys, even none, before the cursor says `0`. A pattern with a
//! literal prefix (`user:*`) scans only that prefix's range (one partition
//! when it holds a whole hash tag, `{user42}*`). On a cluster-aware
//! connection, as on a Redis Cluster node, only the slots this node serves
//! as master (the partitions `CLUSTER SLOTS` names it for when the scan
//! starts), so a cluster client that scans every master sees each key once.
//! Every key is a string: `TYPE string` changes nothing, any other type
//! matches no key. `KEYS` runs a scan to the end (expensive: it reads every
//! partition's keys) and refuses to answer more than [`MAX_KEYS_REPLY`].

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use ringkv_core::PartitionId;
use ringkv_core::node::{Consistency, MAX_SCAN_LIMIT};

use super::cluster::Topology;
use super::commands::{Session, error_reply};
use super::reply::Reply;
use crate::api::scan::{KeyRange, PageQuery, scan_page};
use crate::handle::NodeHandle;

/// Cursors a node remembers, at most.
pub const MAX_OPEN_CURSORS: usize = 4096;

/// Keys `KEYS` answers, at most (beyond: an error that says to use SCAN).
pub const MAX_KEYS_REPLY: usize = 1_000_000;

/// Keys a `SCAN` page reads at least, whatever its `COUNT` (a hint).
pub const MIN_PAGE: u32 = 1000;

/// Where each open scan goes on: shared by a node's RESP connections.
#[derive(Debug, Default)]
pub struct Cursors {
    table: Mutex<CursorTable>,
}

#[derive(Debug, Default)]
struct CursorTable {
    last_id: u64,
    open: VecDeque<(u64, OpenScan)>,
}

/// A scan a cursor continues: the next key, and the pattern's range and
/// partitions fixed when it started.
#[derive(Debug, Clone)]
struct OpenScan {
    from: Bytes,
    range: KeyRange,
    only: Option<Vec<PartitionId>>,
}

impl Cursors {
    fn open(&self, scan: OpenScan) -> u64 {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.last_id += 1;
        let id = t.last_id;
        if t.open.len() == MAX_OPEN_CURSORS {
            t.open.pop_front();
        }
        t.open.push_back((id, scan));
        id
    }

    /// The scan `id` continues. It stays open (a client may send a cursor
    /// again, after a lost answer) until newer ones push it out.
    fn get(&self, id: u64) -> Option<OpenScan> {
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.open
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, scan)| scan.clone())
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`.
pub async fn scan(node: &NodeHandle, session: &Session, args: &[Bytes]) -> Reply {
    let Some(cursor) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Reply::err("invalid cursor");
    };
    let mut pattern: Option<Bytes> = None;
    let mut count = MIN_PAGE;
    let mut strings = true;
    let mut options = args[2..].chunks(2);
    for option in options.by_ref() {
        let [name, value] = option else {
            return Reply::err("syntax error");
        };
        match name.to_ascii_uppercase().as_slice() {
            b"MATCH" => pattern = Some(value.clone()),
            b"COUNT" => {
                match std::str::from_utf8(value)
                    .ok()
                    .and_then(|c| c.parse::<u64>().ok())
                {
                    Some(0) | None => return Reply::err("syntax error"),
                    Some(n) => {
                        count = n.clamp(u64::from(MIN_PAGE), u64::from(MAX_SCAN_LIMIT)) as u32;
                    }
                }
            }
            b"TYPE" => strings = value.eq_ignore_ascii_case(b"string"),
            _ => return Reply::err("syntax error"),
        }
    }
    let open = if cursor == 0 {
        OpenScan {
            from: Bytes::new(),
            range: range_of(pattern.as_deref()),
            only: served_partitions(node, session),
        }
    } else {
        match session.cursors.get(cursor) {
            Some(open) => open,
            None => return Reply::err("invalid cursor"),
        }
    };
    let query = PageQuery {
        range: &open.range,
        from: open.from.clone(),
        limit: count,
        keys_only: true,
        consistency: consistency(session),
        only: open.only.as_deref(),
    };
    let page = match scan_page(node, session.partition_count, &query).await {
        Ok(page) => page,
        Err(e) => return error_reply(&e),
    };
    let keys: Vec<Reply> = page
        .kvs
        .into_iter()
        .filter(|kv| strings && pattern.as_deref().is_none_or(|p| glob_match(p, &kv.key)))
        .map(|kv| Reply::Bulk(kv.key))
        .collect();
    let next = match page.next {
        Some(from) => session.cursors.open(OpenScan { from, ..open }),
        None => 0,
    };
    Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
}

/// `KEYS pattern`: a scan to the end.
pub async fn keys(node: &NodeHandle, session: &Session, pattern: &Bytes) -> Reply {
    let range = range_of(Some(pattern));
    let only = served_partitions(node, session);
    let mut from = Bytes::new();
    let mut found = Vec::new();
    loop {
        let query = PageQuery {
            range: &range,
            from,
            limit: MAX_SCAN_LIMIT,
            keys_only: true,
            consistency: consistency(session),
            only: only.as_deref(),
        };
        let page = match scan_page(node, session.partition_count, &query).await {
            Ok(page) => page,
            Err(e) => return error_reply(&e),
        };
        for kv in page.kvs {
            if glob_match(pattern, &kv.key) {
                if found.len() == MAX_KEYS_REPLY {
                    return Reply::err(format!(
                        "KEYS would answer more than {MAX_KEYS_REPLY} keys; use SCAN"
                    ));
                }
                found.push(Reply::Bulk(kv.key));
            }
        }
        match page.next {
            Some(next) => from = next,
            None => return Reply::Array(found),
        }
    }
}

/// Reads as DBSIZE's: linearizable, or under the lease on a `READONLY`
/// connection.
fn consistency(session: &Session) -> Consistency {
    if session.readonly {
        Consistency::Lease
    } else {
        Consistency::Linearizable
    }
}

/// On a cluster-aware connection, the partitions this node serves as
/// master in the map it gives clients; otherwise every partition.
pub(super) fn served_partitions(node: &NodeHandle, session: &Session) -> Option<Vec<PartitionId>> {
    if !session.cluster_aware {
        return None;
    }
    let topology = Topology::of(&node.view(), session.partition_count);
    let me = topology.nodes.iter().position(|n| n.myself);
    Some(
        topology
            .shards
            .iter()
            .filter(|s| s.master.is_some() && s.master == me)
            .map(|s| s.partition)
            .collect(),
    )
}

/// The keys a pattern can match: those under its literal prefix.
fn range_of(pattern: Option<&[u8]>) -> KeyRange {
    match pattern.map(literal_prefix) {
        Some(prefix) if !prefix.is_empty() => KeyRange::prefix(Bytes::from(prefix)),
        _ => KeyRange::all(),
    }
}

/// What every key a glob pattern matches starts with: its bytes up to the
/// first `*`, `?` or `[`, with `\` escapes resolved.
pub(super) fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' | b'?' | b'[' => break,
            b'\\' if i + 1 < pattern.len() => {
                prefix.push(pattern[i + 1]);
                i += 2;
            }
            // A trailing backslash matches itself.
            b => {
                prefix.push(b);
                i += 1;
            }
        }
    }
    prefix
}

/// Redis's glob: `*` any run, `?` any byte, `[abc]`, `[^a]`, `[a-z]`, `\x`
/// the byte x. Iterative, with one backtrack point per `*` (linear in the
/// key for most patterns, never exponential).
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the
    // key position it has absorbed up to.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, k));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    k += 1;
                    continue;
                }
                b'[' => match class_match(pattern, p, key[k]) {
                    Some((true, next)) => {
                        p = next;
                        k += 1;
                        continue;
                    }
                    Some((false, _)) => {}
                    // Not closed: a plain `[`.
                    None if key[k] == b'[' => {
                        p += 1;
                        k += 1;
                        continue;
                    }
                    None => {}
                },
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == key[k] {
                        p += 2;
                        k += 1;
                        continue;
                    }
                }
                b => {
                    if b == key[k] {
                        p += 1;
                        k += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((after, absorbed)) => {
                p = after;
                k = absorbed + 1;
                star = Some((after, absorbed + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Matches `byte` against the class opening at `pattern[open]` (`[`):
/// whether it matched, and where the pattern goes on after the class.
/// `None` when the class is not closed (then `[` is a plain byte).
fn class_match(pattern: &[u8], open: usize, byte: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &c = pattern.get(i)?;
        if c == b']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        let (low, width) = if c == b'\\' {
            (*pattern.get(i + 1)?, 2)
        } else {
            (c, 1)
        };
        if pattern.get(i + width) == Some(&b'-')
            && let Some(&high) = pattern.get(i + width + 1)
            && high != b']'
        {
            let (a, b) = if low <= high {
                (low, high)
            } else {
                (high, low)
            };
            matched |= (a..=b).contains(&byte);
            i += width + 2;
        } else {
            matched |= low == byte;
            i += width;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_matches_them() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("user:*", "user:42", true),
            ("user:*", "users:42", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxcxxb", false),
            ("a*", "b", false),
            ("[]", "[]", true), // an unclosed class is literal
        ];
        for &(pattern, key, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), key.as_bytes()),
                expected,
                "{pattern:?} against {key:?}"
            );
        }
        // Many stars against a long miss stay fast (no exponential search).
        let pattern = "*a".repeat(30) + "b";
        let key = "a".repeat(5000);
        assert!(!glob_match(pattern.as_bytes(), key.as_bytes()));
    }

    #[test]
    fn a_pattern_scans_only_its_literal_prefix() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"a\\*b*"), b"a*b");
        assert_eq!(literal_prefix(b"*x"), b"");
        assert_eq!(literal_prefix(b"k?"), b"k");
        assert_eq!(range_of(Some(b"*")), KeyRange::all());
        let tagged = range_of(Some(b"{user42}.*"));
        assert!(tagged.slot.is_some(), "one slot: {tagged:?}");
    }

    #[test]
    fn a_cursor_may_be_sent_again_until_newer_ones_push_it_out() {
        let cursors = Cursors::default();
        let scan = |from: &'static [u8]| OpenScan {
            from: Bytes::from_static(from),
            range: KeyRange::all(),
            only: None,
        };
        let first = cursors.open(scan(b"a"));
        assert_eq!(first, 1);
        assert_eq!(cursors.get(first).unwrap().from, Bytes::from_static(b"a"));
        assert!(cursors.get(first).is_some(), "a retry finds it again");
        let ids: Vec<u64> = (0..MAX_OPEN_CURSORS + 1)
            .map(|_| cursors.open(scan(b"b")))
            .collect();
        assert!(cursors.get(first).is_none(), "the oldest is forgotten");
        assert!(cursors.get(ids[1]).is_some());
        assert!(cursors.get(ids[MAX_OPEN_CURSORS]).is_some());
    }
}
