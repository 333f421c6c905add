//! The shape of each partition's durable log (hard state, snapshot position,
//! entry index/term runs and the WAL segment each run was written to), and
//! the one rule for replaying a snapshot over a log. Owns no bytes and no
//! files: storage feeds it every record it writes or replays, and asks it
//! which segments a partition still needs.
//!
//! Why a rule of our own instead of [`RaftStorage::apply`]: once old WAL
//! segments are deleted, a replay starts mid-history and may lack the entry
//! at a snapshot's index even though the log did hold it (a compaction).
//! [`apply_snapshot`] therefore keeps the entries after the snapshot when that
//! entry is *absent*, and drops them all only when a *different* entry sits
//! there (an install over a conflicting log, Raft §7). On a complete history
//! both rules agree: an absent entry there means no entry after it either.
//! The one case where absence would mislead, a conflicting entry that sits in
//! a deleted segment while the conflicting tail after it survives, is
//! prevented by [`PartitionShape::record_snapshot`] reporting a pin: the
//! segment holding that entry is kept until a snapshot covers the tail.

use ringkv_core::raft::{
    Entry, HardState, Membership, RaftStorage, Snapshot, SnapshotMeta, Tombstone,
};

/// Replays a snapshot over a recovered log (see the module doc for the rule).
pub(super) fn apply_snapshot(storage: &mut RaftStorage, snapshot: Snapshot) {
    let (index, term) = (snapshot.meta.index, snapshot.meta.term);
    match storage.entries.iter().find(|e| e.index == index) {
        Some(e) if e.term != term => storage.entries.clear(),
        _ => storage.entries.retain(|e| e.index > index),
    }
    storage.snapshot = Some(snapshot);
}

/// Consecutive entries of one term written to one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first: u64,
    last: u64,
    term: u64,
    segment: u64,
}

/// A conflicting log tail dropped by a snapshot install: the segment holding
/// the conflicting entry at the snapshot's index must be treated as holding
/// entries up to `up_to`, so it outlives the tail it would otherwise orphan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pin {
    pub segment: u64,
    pub up_to: u64,
}

/// What storage knows about one partition's log without keeping its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PartitionShape {
    /// The latest hard state written (repeated in every segment checkpoint).
    pub hard_state: Option<HardState>,
    /// The latest snapshot written (its reference is repeated likewise).
    pub snapshot: Option<SnapshotMeta>,
    /// The configuration the group was created with (repeated likewise).
    pub genesis: Option<Membership>,
    /// Set while the replica is destroyed (repeated likewise).
    pub tombstone: Option<Tombstone>,
    /// Entries after the snapshot, as runs in index order.
    runs: Vec<Run>,
}

impl PartitionShape {
    /// Index of the latest snapshot, 0 if none: entries up to it are no
    /// longer needed from the WAL.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |m| m.index)
    }

    /// Entries written to `segment`: every stored entry at or after the
    /// first one's index is replaced (Raft §5.3), as in `RaftStorage::apply`.
    pub fn record_entries(&mut self, segment: u64, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        self.truncate_from(first.index);
        for e in entries {
            match self.runs.last_mut() {
                Some(r) if r.term == e.term && r.segment == segment && r.last + 1 == e.index => {
                    r.last = e.index;
                }
                _ => self.runs.push(Run {
                    first: e.index,
                    last: e.index,
                    term: e.term,
                    segment,
                }),
            }
        }
    }

    /// The replica was destroyed: nothing of it but its hard state is
    /// needed any more, and no segment is needed for it.
    pub fn record_tombstone(&mut self, tombstone: Tombstone) {
        *self = PartitionShape {
            hard_state: self.hard_state,
            tombstone: Some(tombstone),
            ..PartitionShape::default()
        };
    }

    /// A snapshot made durable; the same rule as [`apply_snapshot`]. Returns
    /// a pin when it drops a conflicting tail (see the module doc).
    pub fn record_snapshot(&mut self, meta: SnapshotMeta) -> Option<Pin> {
        // A snapshot after a tombstone is the replica added again.
        self.tombstone = None;
        let at = self
            .runs
            .iter()
            .find(|r| r.first <= meta.index && meta.index <= r.last)
            .copied();
        let mut pin = None;
        match at {
            Some(run) if run.term != meta.term => {
                let last = self.runs.last().map_or(meta.index, |r| r.last);
                if last > meta.index {
                    pin = Some(Pin {
                        segment: run.segment,
                        up_to: last,
                    });
                }
                self.runs.clear();
            }
            _ => self.drop_through(meta.index),
        }
        self.snapshot = Some(meta);
        pin
    }

    /// Index of the last entry held, if any.
    #[cfg(test)]
    pub fn last_index(&self) -> Option<u64> {
        self.runs.last().map(|r| r.last)
    }

    fn truncate_from(&mut self, index: u64) {
        self.runs.retain(|r| r.first < index);
        if let Some(r) = self.runs.last_mut() {
            r.last = r.last.min(index.saturating_sub(1));
        }
    }

    fn drop_through(&mut self, index: u64) {
        self.runs.retain(|r| r.last > index);
        if let Some(r) = self.runs.first_mut() {
            r.first = r.first.max(index.saturating_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ringkv_core::NodeId;
    use ringkv_core::raft::{EntryKind, Membership};

    use super::*;

    fn entries(first: u64, last: u64, term: u64) -> Vec<Entry> {
        (first..=last)
            .map(|index| Entry {
                index,
                term,
                kind: EntryKind::Normal,
                data: Bytes::from_static(b"x"),
            })
            .collect()
    }

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term,
            membership: Membership::new([NodeId(1)]),
        }
    }

    #[test]
    fn compaction_keeps_the_tail_and_pins_nothing() {
        let mut s = PartitionShape::default();
        s.record_entries(1, &entries(1, 10, 1));
        s.record_entries(2, &entries(11, 20, 2));
        assert_eq!(s.record_snapshot(meta(15, 2)), None);
        assert_eq!(s.snapshot_index(), 15);
        assert_eq!(s.last_index(), Some(20));
    }

    #[test]
    fn install_over_a_conflicting_tail_pins_the_conflicting_entry() {
        let mut s = PartitionShape::default();
        s.record_entries(1, &entries(1, 10, 1));
        s.record_entries(2, &entries(11, 20, 1));
        let pin = s.record_snapshot(meta(10, 3));
        assert_eq!(
            pin,
            Some(Pin {
                segment: 1,
                up_to: 20
            })
        );
        assert_eq!(s.last_index(), None);
    }

    #[test]
    fn install_beyond_the_log_drops_it_without_a_pin() {
        let mut s = PartitionShape::default();
        s.record_entries(1, &entries(1, 5, 1));
        assert_eq!(s.record_snapshot(meta(9, 2)), None);
        assert_eq!(s.last_index(), None);
    }

    #[test]
    fn overwrite_replaces_the_suffix() {
        let mut s = PartitionShape::default();
        s.record_entries(1, &entries(1, 10, 1));
        s.record_entries(1, &entries(6, 7, 2));
        assert_eq!(s.last_index(), Some(7));
        // The entry at 7 is now of term 2: a snapshot at 7/2 continues the log.
        assert_eq!(s.record_snapshot(meta(7, 2)), None);
    }

    #[test]
    fn replay_rule_keeps_the_tail_when_the_snapshot_entry_is_absent() {
        let snap = |index, term| Snapshot {
            meta: meta(index, term),
            data: Bytes::new(),
        };
        let mut st = RaftStorage::default();
        st.apply(ringkv_core::raft::PersistRecord::Entries(entries(
            11, 20, 2,
        )));
        apply_snapshot(&mut st, snap(8, 2));
        assert_eq!(st.entries.len(), 10, "entry 8 is absent: keep what follows");
        apply_snapshot(&mut st, snap(15, 3));
        assert!(st.entries.is_empty(), "entry 15 conflicts: drop the tail");
    }
}
