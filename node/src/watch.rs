//! Watches on this node: the [`WatchHub`] holds each local replica's recent
//! changes (a [`History`] per partition, fed by the driver from the core's
//! [`Feed`]), and a [`Watcher`] follows a key or a prefix through it for
//! one client stream (REST server-sent events, gRPC `Watch`).
//!
//! A watch is served from this node's replicas: every replica applies the
//! same committed entries, so a follower's changes are the partition's
//! changes, and a watch goes on unchanged when leadership moves. A watcher
//! keeps, per partition it watches, the revision it has seen everything up
//! to; together they are its [`Cursor`], which a client hands back (to any
//! node) to resume without loss. A cursor older than what a replica holds
//! is refused as compacted, never answered with a gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use bytes::Bytes;
use ringkv_core::PartitionId;
use ringkv_core::ring::partition_of;
use ringkv_core::watch::{Change, Compacted, Feed, History, HistoryLimits};
use tokio::sync::watch;

use crate::api::scan::KeyRange;

/// Changes a watcher takes from one partition per wake-up (whole
/// revisions: a little more when the last one changed many keys).
const MAX_CHANGES_PER_READ: usize = 1_000;

/// Every local replica's recent changes.
pub struct WatchHub {
    histories: Mutex<HashMap<PartitionId, History>>,
    limits: HistoryLimits,
    /// Bumped after each batch of changes lands: watchers wait on it.
    bumps: watch::Sender<u64>,
}

impl WatchHub {
    pub fn new(limits: HistoryLimits) -> Self {
        WatchHub {
            histories: Mutex::new(HashMap::new()),
            limits,
            bumps: watch::channel(0).0,
        }
    }

    /// Takes what the core fed (in its order) and wakes the watchers.
    pub fn feed(&self, items: Vec<(PartitionId, Feed)>) {
        if items.is_empty() {
            return;
        }
        {
            let mut histories = self
                .histories
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (p, item) in items {
                match item {
                    Feed::Reset { floor } => {
                        histories.insert(p, History::new(floor, self.limits));
                    }
                    Feed::Changes(changes) => match histories.get_mut(&p) {
                        Some(h) => h.push(changes),
                        None => panic!(
                            "watch hub: changes of partition {p} before its replica started; the core feeds a reset first"
                        ),
                    },
                    Feed::Gone => {
                        histories.remove(&p);
                    }
                }
            }
        }
        self.bumps.send_modify(|n| *n += 1);
    }

    fn read(
        &self,
        p: PartitionId,
        after: u64,
        wanted: impl FnMut(&Change) -> bool,
    ) -> Result<(Vec<Change>, u64), WatchError> {
        let histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let h = histories
            .get(&p)
            .ok_or(WatchError::NotHere { partition: p })?;
        h.read(after, MAX_CHANGES_PER_READ, wanted)
            .map_err(|c| WatchError::Compacted {
                partition: p,
                compacted: c,
            })
    }

    /// Whether the changes after `after` can be served from here.
    fn check(&self, p: PartitionId, after: u64) -> Result<(), WatchError> {
        self.read(p, after, |_| false).map(|_| ())
    }

    fn head(&self, p: PartitionId) -> Result<u64, WatchError> {
        let histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        histories
            .get(&p)
            .map(History::head)
            .ok_or(WatchError::NotHere { partition: p })
    }
}

/// What a watch follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Key(Bytes),
    Prefix(Bytes),
}

impl Target {
    /// The partitions whose changes it needs: the key's, the one slot of a
    /// prefix that holds a hash tag, or every partition.
    fn partitions(&self, partition_count: u32) -> Vec<PartitionId> {
        match self {
            Target::Key(key) => vec![partition_of(key, partition_count)],
            Target::Prefix(prefix) => match KeyRange::prefix(prefix.clone()).slot {
                Some(_) => vec![partition_of(prefix, partition_count)],
                None => (0..partition_count).map(PartitionId).collect(),
            },
        }
    }

    fn wants(&self, key: &[u8]) -> bool {
        match self {
            Target::Key(k) => key == &k[..],
            Target::Prefix(p) => key.starts_with(p),
        }
    }
}

/// Where a watch resumes: per partition, the revision it has seen every
/// change up to. Opaque to clients (URL-safe base64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(BTreeMap<PartitionId, u64>);

/// The first byte of an encoded cursor.
const CURSOR_VERSION: u8 = 1;

impl Cursor {
    pub fn encode(&self) -> String {
        let mut buf = vec![CURSOR_VERSION];
        let mut last = 0u32;
        for (p, revision) in &self.0 {
            // Partitions ascend: each as the gap from the previous one.
            prost::encoding::encode_varint(u64::from(p.0 - last), &mut buf);
            prost::encoding::encode_varint(*revision, &mut buf);
            last = p.0;
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    }

    pub fn decode(text: &str) -> Result<Cursor, WatchError> {
        let bad = |why: &str| WatchError::BadCursor(why.to_owned());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad("not a cursor this server gave (not base64url)"))?;
        let (&version, mut rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
        if version != CURSOR_VERSION {
            return Err(bad("not a cursor this server gave (unknown version)"));
        }
        let mut map = BTreeMap::new();
        let mut last = 0u64;
        while !rest.is_empty() {
            let gap = prost::encoding::decode_varint(&mut rest).map_err(|_| bad("truncated"))?;
            let revision =
                prost::encoding::decode_varint(&mut rest).map_err(|_| bad("truncated"))?;
            let p = last
                .checked_add(gap)
                .filter(|&p| p <= u64::from(u32::MAX) && (map.is_empty() || gap > 0))
                .ok_or_else(|| bad("partitions out of order"))?;
            map.insert(PartitionId(p as u32), revision);
            last = p;
        }
        Ok(Cursor(map))
    }

    /// Records that every change of `p` up to `revision` was seen.
    pub fn set(&mut self, p: PartitionId, revision: u64) {
        self.0.insert(p, revision);
    }

    /// The revision of `p` this cursor has seen up to, if it covers `p`.
    pub fn revision(&self, p: PartitionId) -> Option<u64> {
        self.0.get(&p).copied()
    }
}

/// Why a watch cannot start or go on here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The changes the watcher needs next are no longer held: it must read
    /// the current state again and watch from there.
    #[error("partition {partition}: {compacted}; read the current state and watch again from now")]
    Compacted {
        partition: PartitionId,
        compacted: Compacted,
    },
    /// This node holds no replica of a partition the watch needs (or no
    /// longer does: it moved): watch through a node that replicates it,
    /// with the cursor so far.
    #[error(
        "this node holds no replica of partition {partition}; watch through one of its replicas (resume with the cursor)"
    )]
    NotHere { partition: PartitionId },
    #[error("invalid watch cursor: {0}")]
    BadCursor(String),
    /// `start_revision` names one partition's revision: it needs a key, or a
    /// prefix within one hash tag.
    #[error(
        "start_revision needs a watch of one partition (a key, or a prefix that holds a hash tag such as {{user42}}); resume a prefix watch with its cursor"
    )]
    StartNeedsOnePartition,
}

/// Changes for a client, all in revision order per partition, and the
/// cursor after them.
#[derive(Debug)]
pub struct Batch {
    pub changes: Vec<(PartitionId, Change)>,
    pub cursor: Cursor,
}

/// One client's watch.
pub struct Watcher {
    hub: Arc<WatchHub>,
    target: Target,
    seen: Cursor,
    bumps: watch::Receiver<u64>,
}

/// Where a watch starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// With the next change this replica applies.
    #[default]
    Now,
    /// With the changes at this revision and after (one partition only).
    Revision(u64),
    /// Right after what this cursor has seen.
    Cursor(Cursor),
}

impl Watcher {
    /// Attaches a watch of `target` to this node's replicas.
    pub fn start(
        hub: Arc<WatchHub>,
        partition_count: u32,
        target: Target,
        start: Start,
    ) -> Result<Watcher, WatchError> {
        let partitions = target.partitions(partition_count);
        let bumps = hub.bumps.subscribe();
        let mut seen = BTreeMap::new();
        for &p in &partitions {
            let after = match &start {
                Start::Now => hub.head(p)?,
                Start::Revision(_) if partitions.len() > 1 => {
                    return Err(WatchError::StartNeedsOnePartition);
                }
                Start::Revision(r) => r.saturating_sub(1),
                Start::Cursor(c) => c.revision(p).ok_or_else(|| {
                    WatchError::BadCursor(format!(
                        "it does not cover partition {p}: it is from a watch of other keys"
                    ))
                })?,
            };
            seen.insert(p, after);
        }
        if let Start::Cursor(c) = &start
            && c.0.len() != seen.len()
        {
            return Err(WatchError::BadCursor(
                "it covers other partitions: it is from a watch of other keys".into(),
            ));
        }
        // Refuse at once what cannot be served (compacted, not here).
        for (&p, &after) in &seen {
            hub.check(p, after)?;
        }
        Ok(Watcher {
            hub,
            target,
            seen: Cursor(seen),
            bumps,
        })
    }

    /// What the watcher has seen so far.
    pub fn cursor(&self) -> &Cursor {
        &self.seen
    }

    /// The next changes, once there are some.
    pub async fn next(&mut self) -> Result<Batch, WatchError> {
        loop {
            self.bumps.borrow_and_update();
            let changes = self.poll()?;
            if !changes.is_empty() {
                return Ok(Batch {
                    changes,
                    cursor: self.seen.clone(),
                });
            }
            if self.bumps.changed().await.is_err() {
                // The hub is gone: the node is stopping.
                return Err(WatchError::NotHere {
                    partition: *self.seen.0.keys().next().expect("a partition"),
                });
            }
        }
    }

    /// The changes held past the cursor, moving it past them (one lock
    /// of the hub for all partitions; a partition with nothing new costs a
    /// comparison).
    fn poll(&mut self) -> Result<Vec<(PartitionId, Change)>, WatchError> {
        let mut out = Vec::new();
        let histories = self
            .hub
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (&p, after) in self.seen.0.iter_mut() {
            let h = histories
                .get(&p)
                .ok_or(WatchError::NotHere { partition: p })?;
            if h.head() <= *after && h.floor() <= *after {
                continue;
            }
            let (changes, seen) = h
                .read(*after, MAX_CHANGES_PER_READ, |c| self.target.wants(&c.key))
                .map_err(|c| WatchError::Compacted {
                    partition: p,
                    compacted: c,
                })?;
            *after = seen;
            out.extend(changes.into_iter().map(|c| (p, c)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use ringkv_core::watch::ChangeKind;

    use super::*;

    fn change(revision: u64, key: &str) -> Change {
        Change {
            revision,
            kind: ChangeKind::Put,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            version: 1,
        }
    }

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = Cursor(BTreeMap::from([
            (PartitionId(0), 7),
            (PartitionId(3), 0),
            (PartitionId(63), 1 << 40),
        ]));
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in ["", "!!", "AA", "AgE"] {
            assert!(
                matches!(Cursor::decode(bad), Err(WatchError::BadCursor(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_watcher_sees_its_keys_changes_and_resumes_from_its_cursor() {
        let hub = Arc::new(WatchHub::new(HistoryLimits::default()));
        let pc = 4;
        let key = Bytes::from_static(b"k");
        let p = partition_of(&key, pc);
        hub.feed(vec![(p, Feed::Reset { floor: 10 })]);
        let mut w = Watcher::start(hub.clone(), pc, Target::Key(key.clone()), Start::Now).unwrap();
        hub.feed(vec![(p, Feed::Changes(vec![change(11, "other")]))]);
        hub.feed(vec![(p, Feed::Changes(vec![change(12, "k")]))]);
        let batch = w.next().await.unwrap();
        assert_eq!(batch.changes, vec![(p, change(12, "k"))]);
        assert_eq!(batch.cursor.revision(p), Some(12));

        // Another watcher resumes from the first one's cursor: only what
        // came after.
        hub.feed(vec![(p, Feed::Changes(vec![change(13, "k")]))]);
        let mut resumed = Watcher::start(
            hub.clone(),
            pc,
            Target::Key(key.clone()),
            Start::Cursor(batch.cursor),
        )
        .unwrap();
        assert_eq!(
            resumed.next().await.unwrap().changes,
            vec![(p, change(13, "k"))]
        );

        // From a revision: everything from it on.
        let mut from = Watcher::start(
            hub.clone(),
            pc,
            Target::Key(key.clone()),
            Start::Revision(12),
        )
        .unwrap();
        let got = from.next().await.unwrap().changes;
        assert_eq!(got, vec![(p, change(12, "k")), (p, change(13, "k"))]);

        // A snapshot wipes the history: a watcher behind it is told.
        hub.feed(vec![(p, Feed::Reset { floor: 50 })]);
        assert!(matches!(
            w.next().await,
            Err(WatchError::Compacted { partition, .. }) if partition == p
        ));
        // The replica moves away: watchers are sent elsewhere.
        hub.feed(vec![(p, Feed::Gone)]);
        assert_eq!(
            Watcher::start(hub.clone(), pc, Target::Key(key), Start::Now).err(),
            Some(WatchError::NotHere { partition: p })
        );
    }

    #[test]
    fn a_prefix_watch_needs_every_partition_unless_it_holds_a_hash_tag() {
        let hub = Arc::new(WatchHub::new(HistoryLimits::default()));
        let pc = 4;
        hub.feed(vec![(PartitionId(0), Feed::Reset { floor: 0 })]);
        let every = Target::Prefix(Bytes::from_static(b"user/"));
        assert!(matches!(
            Watcher::start(hub.clone(), pc, every.clone(), Start::Now),
            Err(WatchError::NotHere { .. })
        ));
        assert_eq!(
            Watcher::start(hub.clone(), pc, every, Start::Revision(3)).err(),
            Some(WatchError::StartNeedsOnePartition)
        );
        let tagged = Target::Prefix(Bytes::from_static(b"{u1}."));
        assert_eq!(tagged.partitions(pc), vec![partition_of(b"{u1}.", pc)]);
    }
}
