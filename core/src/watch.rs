//! Watches: the changes a partition's state machine made, in log order,
//! and a bounded history of them to serve watchers from.
//!
//! Every replica applies the same committed entries in the same order, so
//! the changes one replica's [`crate::kv::KvStore`] records are the
//! partition's changes, whoever leads: a watch served from any replica
//! sees every committed change of its keys, in revision order, with no
//! gaps or duplicates, across leader changes. A change's revision is the
//! index of the log entry that made it (the key's `mod_revision` for a
//! put); one entry may change several keys (a put-all, or keys whose
//! deadline the entry's clock stamp passed), so several changes share a
//! revision, and revisions skip the entries that changed nothing.
//!
//! [`History`] keeps the latest changes of one partition on one node,
//! bounded in count and bytes. It knows every change after its `floor`
//! revision: a watcher asks for the changes after the revision it has
//! seen, and one that asks for changes the history no longer holds (or
//! never held: before this replica's snapshot) is told so
//! ([`Compacted`]), never handed a gap.

use std::collections::VecDeque;

use bytes::Bytes;

/// What a change did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// Written (created, overwritten, incremented, appended, or its expiry
    /// changed: any write that set its `mod_revision`).
    Put,
    /// Deleted by a client.
    Delete,
    /// Gone because the partition's clock reached its deadline (or a
    /// client set a deadline already passed).
    Expire,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Delete => "delete",
            ChangeKind::Expire => "expire",
        }
    }
}

/// One key's change, made by the log entry `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub kind: ChangeKind,
    pub key: Bytes,
    /// The value written ([`ChangeKind::Put`]); empty otherwise.
    pub value: Bytes,
    /// The key's version after a put (1 when created); 0 otherwise.
    pub version: u64,
}

impl Change {
    /// Bytes this change holds in a [`History`] (key, value and a fixed
    /// overhead).
    pub fn cost(&self) -> usize {
        self.key.len() + self.value.len() + 48
    }
}

/// What a replica's state machine tells watchers, in order
/// ([`crate::node::Node::poll_feed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feed {
    /// The replica's state machine now holds the effects of the entries up
    /// to `floor` and nothing is known of the changes before it: the
    /// replica started, was created, or took a leader's snapshot. Changes
    /// after `floor` follow.
    Reset { floor: u64 },
    /// Changes made by one applied entry, in the order it made them.
    Changes(Vec<Change>),
    /// The replica was destroyed (moved to another node): its changes are
    /// no longer seen here.
    Gone,
}

/// A watcher asked for changes before the first one the history holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the changes after revision {after} are no longer held here (history starts after revision {floor})"
)]
pub struct Compacted {
    pub after: u64,
    pub floor: u64,
}

/// Bounds of one partition's [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_changes: usize,
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    /// 10,000 changes or 4 MiB, whichever is reached first.
    fn default() -> Self {
        HistoryLimits {
            max_changes: 10_000,
            max_bytes: 4 << 20,
        }
    }
}

/// The latest changes of one partition, as one replica applied them.
#[derive(Clone, Debug)]
pub struct History {
    changes: VecDeque<Change>,
    /// Every change with a revision above `floor` is held.
    floor: u64,
    /// The revision of the last entry whose changes were pushed, or `floor`.
    head: u64,
    bytes: usize,
    limits: HistoryLimits,
}

impl History {
    /// A history that knows nothing before `floor`.
    pub fn new(floor: u64, limits: HistoryLimits) -> Self {
        History {
            changes: VecDeque::new(),
            floor,
            head: floor,
            bytes: 0,
            limits,
        }
    }

    /// Every change after this revision is held.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The revision of the latest change held (or the floor): a watch from
    /// "now" starts after it.
    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Forgets everything: the replica now holds the entries up to `floor`
    /// (a snapshot), and the changes before it are unknown here.
    pub fn reset(&mut self, floor: u64) {
        *self = History::new(floor, self.limits);
    }

    /// Appends the changes of one entry, all with the same revision, above
    /// every revision held; drops the oldest entries' changes beyond the
    /// limits (raising the floor past them).
    ///
    /// # Panics
    /// If the changes do not share one revision above the head: entries
    /// are applied in log order, each once.
    pub fn push(&mut self, changes: Vec<Change>) {
        let Some(revision) = changes.first().map(|c| c.revision) else {
            return;
        };
        assert!(
            revision > self.head && changes.iter().all(|c| c.revision == revision),
            "watch history: changes of revision {revision} after revision {}; entries apply in log order, each once",
            self.head
        );
        self.head = revision;
        for change in changes {
            self.bytes += change.cost();
            self.changes.push_back(change);
        }
        while self.changes.len() > self.limits.max_changes || self.bytes > self.limits.max_bytes {
            // Drop a whole revision: a watcher is never handed half an
            // entry's changes.
            let Some(oldest) = self.changes.front().map(|c| c.revision) else {
                break;
            };
            while self.changes.front().is_some_and(|c| c.revision == oldest) {
                let c = self.changes.pop_front().expect("a front change");
                self.bytes -= c.cost();
            }
            self.floor = oldest;
        }
    }

    /// The changes after revision `after` that `wanted` selects, at most
    /// about `max` of them (whole revisions: the last revision's changes
    /// are all returned even past `max`), and the revision the watcher has
    /// then seen everything up to (pass it as the next `after`).
    pub fn read(
        &self,
        after: u64,
        max: usize,
        mut wanted: impl FnMut(&Change) -> bool,
    ) -> Result<(Vec<Change>, u64), Compacted> {
        if after < self.floor {
            return Err(Compacted {
                after,
                floor: self.floor,
            });
        }
        let start = self.changes.partition_point(|c| c.revision <= after);
        let mut out = Vec::new();
        let mut seen = after.max(self.floor);
        for c in self.changes.range(start..) {
            if out.len() >= max && c.revision != seen {
                return Ok((out, seen));
            }
            seen = c.revision;
            if wanted(c) {
                out.push(c.clone());
            }
        }
        Ok((out, self.head.max(after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: u64, key: &str) -> Change {
        Change {
            revision,
            kind: ChangeKind::Put,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            version: 1,
        }
    }

    fn revisions(changes: &[Change]) -> Vec<(u64, &[u8])> {
        changes.iter().map(|c| (c.revision, &c.key[..])).collect()
    }

    #[test]
    fn a_watcher_reads_each_change_after_its_revision_once_in_order() {
        let mut h = History::new(4, HistoryLimits::default());
        h.push(vec![put(5, "a")]);
        h.push(vec![put(7, "b"), put(7, "c")]);
        h.push(vec![put(9, "a")]);
        let (all, seen) = h.read(4, 100, |_| true).unwrap();
        assert_eq!(
            revisions(&all),
            [(5, &b"a"[..]), (7, b"b"), (7, b"c"), (9, b"a")]
        );
        assert_eq!(seen, 9);
        let (only_a, seen) = h.read(5, 100, |c| &c.key[..] == b"a").unwrap();
        assert_eq!(revisions(&only_a), [(9, &b"a"[..])]);
        assert_eq!(seen, 9);
        // Nothing new: the watcher stays where it was.
        assert_eq!(h.read(9, 100, |_| true).unwrap(), (vec![], 9));
        // A watcher that saw past the head (another replica ran ahead)
        // keeps its place.
        assert_eq!(h.read(12, 100, |_| true).unwrap(), (vec![], 12));
    }

    #[test]
    fn a_page_ends_on_a_whole_revision() {
        let mut h = History::new(0, HistoryLimits::default());
        h.push(vec![put(1, "a")]);
        h.push(vec![put(2, "b"), put(2, "c"), put(2, "d")]);
        h.push(vec![put(3, "e")]);
        let (page, seen) = h.read(0, 2, |_| true).unwrap();
        assert_eq!(page.len(), 4, "revision 2 is not split: {page:?}");
        assert_eq!(seen, 2);
        let (rest, seen) = h.read(seen, 2, |_| true).unwrap();
        assert_eq!(revisions(&rest), [(3, &b"e"[..])]);
        assert_eq!(seen, 3);
        // A page of changes the filter drops still moves the watcher on.
        let (none, seen) = h.read(0, 1, |c| &c.key[..] == b"zz").unwrap();
        assert!(none.is_empty());
        assert_eq!(seen, 3);
    }

    #[test]
    fn a_watcher_behind_the_floor_is_told_so_never_handed_a_gap() {
        let limits = HistoryLimits {
            max_changes: 3,
            max_bytes: usize::MAX,
        };
        let mut h = History::new(0, limits);
        for r in 1..=5 {
            h.push(vec![put(r, "k")]);
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.floor(), 2, "revisions 1 and 2 dropped");
        assert_eq!(
            h.read(1, 10, |_| true),
            Err(Compacted { after: 1, floor: 2 })
        );
        let (kept, _) = h.read(2, 10, |_| true).unwrap();
        assert_eq!(revisions(&kept), [(3, &b"k"[..]), (4, b"k"), (5, b"k")]);

        // A snapshot: nothing before it is known.
        h.reset(40);
        assert!(h.is_empty());
        assert_eq!(h.head(), 40);
        assert_eq!(
            h.read(5, 10, |_| true),
            Err(Compacted {
                after: 5,
                floor: 40
            })
        );
        assert_eq!(h.read(40, 10, |_| true).unwrap(), (vec![], 40));
    }

    #[test]
    fn the_byte_bound_drops_whole_revisions() {
        let one = put(1, "k").cost();
        let limits = HistoryLimits {
            max_changes: usize::MAX,
            max_bytes: 3 * one,
        };
        let mut h = History::new(0, limits);
        h.push(vec![put(1, "a"), put(1, "b")]);
        h.push(vec![put(2, "c"), put(2, "d")]);
        assert_eq!(h.floor(), 1, "revision 1 went whole");
        assert_eq!(h.len(), 2);
    }

    #[test]
    #[should_panic(expected = "entries apply in log order")]
    fn changes_out_of_order_stop_the_node() {
        let mut h = History::new(0, HistoryLimits::default());
        h.push(vec![put(3, "a")]);
        h.push(vec![put(2, "b")]);
    }
}
