//! Scans of the key space, shared by the client APIs: keys are hashed to
//! partitions, so a range or prefix scan asks every partition for its first
//! keys in the range (`ClientRequest::Scan`, all at once) and merges them.
//!
//! **A page** is the first keys of the range at or after its start,
//! ascending, at most `limit` of them. Each partition answers its first
//! keys there (a share of `limit`, see below) as one consistent cut (a
//! linearizable read of it by default). A partition that may hold more
//! keys than it answered bounds the page: the page ends at the smallest
//! last key among such partitions (past it, their next keys are unknown),
//! so every key up to the page's end is in it, and none is skipped. The
//! next page starts just after the page's last key. Pages are separate
//! reads: a key written between two pages is seen if it sorts after the
//! first page's end.
//!
//! **Cost.** Keys are spread evenly over partitions by their hash, so a
//! page asks each of `P` partitions for `1.5 · limit / P + 8` keys
//! ([`per_partition_limit`]), not `limit`: a full scan reads each key about
//! twice, and a page holds close to `limit` keys (fewer when the keys are
//! unevenly spread; never none while keys follow). A prefix that holds a
//! whole hash tag (`{user42}.`) is in one slot: its scan asks one
//! partition, for `limit` keys. Each partition's answer is also bounded by
//! [`ringkv_core::node::MAX_SCAN_REPLY_BYTES`] (about 1 MiB).

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
    ringkv_core::access::prefix_end(prefix).map(Bytes::from)
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
    // (An empty tag, `{}`, is no tag: the whole key is hashed, and
    // `hash_tag` answers the whole prefix, never the empty slice.)
    hash_tag(prefix) == &prefix[open + 1..open + 1 + close]
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
    let partitions: Vec<PartitionId> = partitions.collect();
    let each = per_partition_limit(q.limit, partitions.len());
    let answers = futures::future::join_all(partitions.iter().map(|p| {
        node.request(ClientRequest::Scan {
            key: keys[p.0 as usize].clone(),
            start: start.clone(),
            end: range.end.clone(),
            limit: each,
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

/// Keys one page asks each of `partitions` partitions for: a share of
/// `limit` with room for an uneven spread (see the module doc).
pub fn per_partition_limit(limit: u32, partitions: usize) -> u32 {
    let partitions = partitions.max(1) as u64;
    let share = u64::from(limit) * 3 / (2 * partitions) + 8;
    share.min(u64::from(limit)) as u32
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
            expires_at: None,
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
    fn a_request_names_a_prefix_or_a_range_not_both() {
        let b = |s: &'static str| Some(Bytes::from_static(s.as_bytes()));
        let range = requested_range(None, b("a"), b("c")).unwrap();
        assert_eq!((range.start, range.end), (Bytes::from_static(b"a"), b("c")));
        let range = requested_range(None, Some(Bytes::new()), None).unwrap();
        assert_eq!(range, KeyRange::all(), "an empty start is the first key");
        let range = requested_range(b("p/"), Some(Bytes::new()), None).unwrap();
        assert_eq!(range, KeyRange::prefix(Bytes::from_static(b"p/")));
        assert!(requested_range(b("p/"), b("a"), None).is_err());
        assert!(requested_range(b("p/"), None, b("z")).is_err());
        assert_eq!(page_limit(None), Ok(DEFAULT_SCAN_LIMIT));
        assert_eq!(page_limit(Some(MAX_SCAN_LIMIT)), Ok(MAX_SCAN_LIMIT));
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(MAX_SCAN_LIMIT + 1)).is_err());
    }

    #[test]
    fn each_partition_is_asked_for_a_share_of_the_page() {
        assert_eq!(per_partition_limit(1000, 64), 31);
        assert_eq!(per_partition_limit(100, 64), 10);
        assert_eq!(per_partition_limit(10, 64), 8);
        assert_eq!(per_partition_limit(5, 64), 5, "never more than the page");
        assert_eq!(per_partition_limit(100, 1), 100);
        assert_eq!(per_partition_limit(10_000, 4), 3758);
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

    proptest::proptest! {
        /// Paging by `next` over partitions that each answer their share
        /// lists every key once, in order, in pages of at most `limit`,
        /// never an empty page while keys follow, and a page says more
        /// follow only when they do.
        #[test]
        fn pages_list_every_key_once_in_order(
            keys in proptest::collection::btree_set(
                proptest::collection::vec(0u8..4, 1..6), 0..300),
            partitions in 1usize..20,
            limit in 1u32..60,
            seed in 0u64..1000,
        ) {
            // Spread the keys over the partitions by a hash of key and seed.
            let mut held: Vec<Vec<Bytes>> = vec![Vec::new(); partitions];
            for k in &keys {
                let h = k.iter().fold(seed, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
                held[(h % partitions as u64) as usize].push(Bytes::from(k.clone()));
            }
            let each = per_partition_limit(limit, partitions);
            let mut from = Bytes::new();
            let mut listed: Vec<Bytes> = Vec::new();
            loop {
                let parts = held
                    .iter()
                    .map(|p| {
                        let after: Vec<&Bytes> = p.iter().filter(|k| **k >= from).collect();
                        let more = after.len() > each as usize;
                        let kvs = after.into_iter().take(each as usize).map(|k| KeyValue {
                            key: k.clone(),
                            value: Bytes::new(),
                            version: 1,
                            create_revision: 1,
                            mod_revision: 1,
                            expires_at: None,
                        });
                        (kvs.collect(), more)
                    })
                    .collect();
                let page = merge(parts, limit as usize);
                proptest::prop_assert!(page.kvs.len() <= limit as usize);
                proptest::prop_assert!(!page.kvs.is_empty() || page.next.is_none());
                listed.extend(page.kvs.into_iter().map(|kv| kv.key));
                // A page says more follow only when keys do.
                if let Some(next) = &page.next {
                    proptest::prop_assert!(keys.iter().any(|k| k.as_slice() >= &next[..]));
                }
                match page.next {
                    Some(next) => from = next,
                    None => break,
                }
            }
            let expected: Vec<Bytes> = keys.into_iter().map(Bytes::from).collect();
            proptest::prop_assert_eq!(listed, expected);
        }
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
