//! Scans of the key space, shared by the client APIs: keys are hashed to
//! partitions, so a range or prefix scan asks every partition for its first
//! keys in the range (`ClientRequest::Scan`, all at once) and merges them.
//!
//! **A page** is the first `limit` keys of the range at or after its start,
//! ascending. Each partition answers its first `limit` keys there as one
//! consistent cut (a linearizable read of it by default); the union holds
//! the page, except past a partition that stopped early because its answer
//! reached its byte bound: the page then ends at the smallest such
//! partition's last key, and says more follow. The next page starts just
//! after the page's last key. Pages are separate reads: a key written
//! between two pages is seen if it sorts after the first page's end.
//!
//! **Cost.** A page asks every partition for up to `limit` keys (one
//! partition when a prefix holds a whole hash tag, e.g. `{user42}.`: every
//! key under it is in one slot), so a page of 100 over 64 partitions reads
//! up to 6,400 keys. Each partition's answer is bounded by
//! [`ringkv_core::node::MAX_SCAN_REPLY_BYTES`] (about 1 MiB), so a page
//! holds at most that much per partition in memory.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use ringkv_core::PartitionId;
use ringkv_core::kv::KeyValue;
use ringkv_core::node::{ClientError, ClientRequest, ClientResponse, Consistency, MAX_SCAN_LIMIT};
use ringkv_core::ring::{hash_tag, key_slot, partition_of_slot};

use crate::handle::NodeHandle;

/// The keys a scan covers: `[start, end)`, `end: None` for no bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bytes,
    pub end: Option<Bytes>,
    /// The one slot that holds every key of the range, when one does (a
    /// prefix that holds a whole hash tag).
    pub slot: Option<u16>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange {
            start: Bytes::new(),
            end: None,
            slot: None,
        }
    }

    /// The keys that start with `prefix`.
    pub fn prefix(prefix: Bytes) -> Self {
        let end = prefix_end(&prefix);
        let slot = prefix_holds_a_hash_tag(&prefix).then(|| key_slot(&prefix));
        KeyRange {
            start: prefix,
            end,
            slot,
        }
    }

    /// The keys in `[start, end)`.
    pub fn between(start: Bytes, end: Option<Bytes>) -> Self {
        KeyRange {
            start,
            end,
            slot: None,
        }
    }
}

/// Keys in a page when the request names no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 100;

/// The range a request names: a prefix, or a start and an end (an empty
/// start is the first key), not both.
pub fn requested_range(
    prefix: Option<Bytes>,
    start: Option<Bytes>,
    end: Option<Bytes>,
) -> Result<KeyRange, &'static str> {
    let start = start.filter(|s| !s.is_empty());
    match (prefix, start, end) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err("give a prefix, or a start and an end, not both")
        }
        (Some(prefix), None, None) => Ok(KeyRange::prefix(prefix)),
        (None, start, end) => Ok(KeyRange::between(start.unwrap_or_default(), end)),
    }
}

/// A requested page size: `None` is the default; the core's bounds hold.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ClientError> {
    let limit = limit.unwrap_or(DEFAULT_SCAN_LIMIT);
    if (1..=MAX_SCAN_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ClientError::InvalidScanLimit {
            limit,
            max: MAX_SCAN_LIMIT,
        })
    }
}

/// The smallest key after every key that starts with `prefix`: the prefix
/// with its last byte below 0xff incremented (and what follows dropped);
/// `None` when there is none (an empty prefix, or only 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let last = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(Bytes::from(end))
}

/// Whether every key that starts with `prefix` has the same hash tag: the
/// prefix holds the first `{` and the next `}` with something between them
/// (Redis Cluster's rule), so all such keys are in one slot.
fn prefix_holds_a_hash_tag(prefix: &[u8]) -> bool {
    let Some(open) = prefix.iter().position(|&b| b == b'{') else {
        return false;
    };
    let Some(close) = prefix[open + 1..].iter().position(|&b| b == b'}') else {
        return false;
    };
    close > 0 && hash_tag(prefix) == &prefix[open + 1..open + 1 + close]
}

/// The key just after `key` in byte order: where the page after one that
/// ended at `key` starts.
pub fn key_after(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    Bytes::from(next)
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub kvs: Vec<KeyValue>,
    /// Where the next page starts, when keys may follow this page.
    pub next: Option<Bytes>,
}

/// What one page asks for.
#[derive(Debug, Clone)]
pub struct PageQuery<'a> {
    pub range: &'a KeyRange,
    /// Where the page starts (at or after the range's start): empty for
    /// the first page, else the previous page's [`ScanPage::next`].
    pub from: Bytes,
    pub limit: u32,
    pub keys_only: bool,
    pub consistency: Consistency,
    /// Only these partitions (a cluster-aware RESP connection scans the
    /// slots the node serves); `None`: every partition the range touches.
    pub only: Option<&'a [PartitionId]>,
}

/// Reads one page: at most `limit` keys. Fails as the first partition that
/// fails (e.g. `no_leader`: retry).
pub async fn scan_page(
    node: &NodeHandle,
    partition_count: u32,
    q: &PageQuery<'_>,
) -> Result<ScanPage, ClientError> {
    let range = q.range;
    let start = if q.from > range.start {
        q.from.clone()
    } else {
        range.start.clone()
    };
    if range.end.as_ref().is_some_and(|end| *end <= start) {
        return Ok(ScanPage {
            kvs: Vec::new(),
            next: None,
        });
    }
    let keys = partition_keys(partition_count);
    let pinned = range
        .slot
        .map(|slot| partition_of_slot(slot, partition_count));
    let partitions = (0..partition_count)
        .map(PartitionId)
        .filter(|p| pinned.is_none_or(|pinned| pinned == *p))
        .filter(|p| q.only.is_none_or(|only| only.contains(p)));
    let answers = futures::future::join_all(partitions.map(|p| {
        node.request(ClientRequest::Scan {
            key: keys[p.0 as usize].clone(),
            start: start.clone(),
            end: range.end.clone(),
            limit: q.limit,
            keys_only: q.keys_only,
            consistency: q.consistency,
        })
    }))
    .await;
    let mut parts = Vec::with_capacity(answers.len());
    for answer in answers {
        match answer? {
            ClientResponse::Scanned { kvs, more } => parts.push((kvs, more)),
            other => {
                return Err(ClientError::Internal(format!(
                    "a partition answered a scan with {other:?}"
                )));
            }
        }
    }
    Ok(merge(parts, q.limit as usize))
}

/// Merges partitions' answers (each ascending, with whether more follow)
/// into one page of at most `limit` keys.
fn merge(parts: Vec<(Vec<KeyValue>, bool)>, limit: usize) -> ScanPage {
    // Past the last key of a partition that has more, its next keys are
    // unknown: the page may not pass the smallest such key.
    let cut: Option<Bytes> = parts
        .iter()
        .filter(|(_, more)| *more)
        .filter_map(|(kvs, _)| kvs.last().map(|kv| kv.key.clone()))
        .min();
    let mut kvs: Vec<KeyValue> = parts.into_iter().flat_map(|(kvs, _)| kvs).collect();
    kvs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    if let Some(cut) = &cut {
        kvs.retain(|kv| kv.key <= *cut);
    }
    let mut more = cut.is_some();
    if kvs.len() > limit {
        kvs.truncate(limit);
        more = true;
    }
    let next = more
        .then(|| kvs.last().map(|kv| key_after(&kv.key)))
        .flatten();
    ScanPage { kvs, next }
}

/// One key per partition, `{n}` for the smallest `n` whose slot falls in
/// it: how a request that concerns a whole partition (a scan, DBSIZE's
/// count) is addressed through the key-routed client API. Computed once
/// per partition count.
pub fn partition_keys(partition_count: u32) -> Vec<Bytes> {
    static KEYS: Mutex<Option<(u32, Vec<Bytes>)>> = Mutex::new(None);
    let mut cached = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((count, keys)) = cached.as_ref()
        && *count == partition_count
    {
        return keys.clone();
    }
    let mut keys: Vec<Option<Bytes>> = vec![None; partition_count as usize];
    let mut missing = keys.len();
    let mut n = 0u64;
    while missing > 0 {
        let key = format!("{{{n}}}");
        let p = partition_of_slot(key_slot(key.as_bytes()), partition_count);
        if let Some(slot @ None) = keys.get_mut(p.0 as usize) {
            *slot = Some(Bytes::from(key));
            missing -= 1;
        }
        n += 1;
    }
    let keys: Vec<Bytes> = keys.into_iter().flatten().collect();
    *cached = Some((partition_count, keys.clone()));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: Bytes::from(key.to_owned()),
            value: Bytes::new(),
            version: 1,
            create_revision: 1,
            mod_revision: 1,
        }
    }

    fn keys(page: &ScanPage) -> Vec<&str> {
        page.kvs
            .iter()
            .map(|kv| std::str::from_utf8(&kv.key).unwrap())
            .collect()
    }

    #[test]
    fn a_prefix_ends_at_its_last_byte_below_0xff_incremented() {
        assert_eq!(prefix_end(b"a/"), Some(Bytes::from_static(b"a0")));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(Bytes::from_static(b"b")));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
        assert_eq!(&key_after(b"k")[..], b"k\0");
    }

    #[test]
    fn only_a_prefix_that_holds_a_whole_hash_tag_is_in_one_partition() {
        assert!(prefix_holds_a_hash_tag(b"{user42}."));
        assert!(prefix_holds_a_hash_tag(b"{user42}"));
        assert!(prefix_holds_a_hash_tag(b"x{a}{b"));
        // The tag is not closed yet: "{user4" may go on "2}" or "3}".
        assert!(!prefix_holds_a_hash_tag(b"{user4"));
        // An empty tag: the whole key is hashed.
        assert!(!prefix_holds_a_hash_tag(b"{}x"));
        assert!(!prefix_holds_a_hash_tag(b"user42"));
        let range = KeyRange::prefix(Bytes::from_static(b"{u}."));
        assert_eq!(range.slot, Some(key_slot(b"u")));
        assert_eq!(range.end.as_deref(), Some(&b"{u}/"[..]));
    }

    #[test]
    fn a_merged_page_is_ordered_and_holds_the_first_keys() {
        let page = merge(
            vec![
                (vec![kv("b"), kv("e")], false),
                (vec![kv("a"), kv("c"), kv("f")], false),
                (vec![kv("d")], false),
            ],
            4,
        );
        assert_eq!(keys(&page), ["a", "b", "c", "d"]);
        assert_eq!(page.next.as_deref(), Some(&b"d\0"[..]));
        let last = merge(vec![(vec![kv("b")], false), (vec![kv("a")], false)], 4);
        assert_eq!(keys(&last), ["a", "b"]);
        assert_eq!(last.next, None, "nothing follows");
    }

    #[test]
    fn a_page_stops_where_a_partition_that_has_more_stopped() {
        // The second partition stopped at "c" (its byte bound): its next
        // key may sort before "e", so the page ends at "c".
        let page = merge(
            vec![
                (vec![kv("a"), kv("d"), kv("e")], false),
                (vec![kv("b"), kv("c")], true),
            ],
            10,
        );
        assert_eq!(keys(&page), ["a", "b", "c"]);
        assert_eq!(page.next.as_deref(), Some(&b"c\0"[..]));
    }
}
