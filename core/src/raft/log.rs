//! The in-memory Raft log of one group: the last snapshot's position, the
//! entries after it, and the commit, apply and persistence cursors.
//!
//! Owns: which entries exist, which are committed (Raft §5.3, §5.4), which
//! have been handed to the driver to persist and which are known durable.
//! Does not own: the durable copy (the driver's WAL), the state machine, or
//! the snapshot's image: only its position is kept. The image is as large as
//! the partition's state, so holding it for a follower that might fall
//! behind would double a replica's memory; a leader that needs one asks the
//! driver for a fresh one instead (see `Raft::wants_snapshot`).
//!
//! Invariants (asserted):
//! - `entries[i].index == snapshot.index + 1 + i` (contiguous, no gaps);
//! - `snapshot.index <= applied <= committed <= last_index()`;
//! - terms are non-decreasing along the log;
//! - `committed` never decreases.

use bytes::Bytes;

use super::message::{Entry, Snapshot, SnapshotMeta};

/// An entry index below the log's first index was asked for: it was compacted
/// into a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted;

#[derive(Debug, Clone)]
pub struct RaftLog {
    /// Position of the last entry folded into the snapshot (0/0: none).
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
    /// Payload bytes of `entries` (what compaction by size looks at).
    entries_bytes: usize,
    committed: u64,
    applied: u64,
    /// Entries at or after this index have not yet been handed out to persist.
    unsaved_from: u64,
    /// A snapshot received from the leader, still to be persisted and applied.
    unsaved_snapshot: Option<Snapshot>,
    snapshot_to_apply: Option<Snapshot>,
    /// Highest index known durable on this node's disk.
    persisted: u64,
    /// The lowest index from which entries were cut (a conflict with the
    /// leader's log) since [`RaftLog::take_truncated_from`] last asked.
    truncated_from: Option<u64>,
}

impl RaftLog {
    /// A log restored from what the driver had made durable.
    pub fn restore(snapshot: Option<Snapshot>, entries: Vec<Entry>, commit: u64) -> Self {
        let meta = snapshot.map(|s| s.meta).unwrap_or_default();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.index > meta.index)
            .collect();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                meta.index + 1 + i as u64,
                "recovered log has a gap"
            );
        }
        let last = entries.last().map_or(meta.index, |e| e.index);
        let committed = commit.clamp(meta.index, last);
        RaftLog {
            entries_bytes: payload_bytes(&entries),
            applied: meta.index,
            committed,
            unsaved_from: last + 1,
            unsaved_snapshot: None,
            snapshot_to_apply: None,
            persisted: last,
            truncated_from: None,
            snapshot: meta,
            entries,
        }
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// Payload bytes of the entries after the snapshot.
    pub fn entries_bytes(&self) -> usize {
        self.entries_bytes
    }

    /// Term of the entry at `index`; `None` if compacted away or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index < self.snapshot.index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.first_index()) as usize].term)
    }

    /// The entry at `index`, if the log holds it (not compacted, not beyond the end).
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        self.entries.get((index - self.first_index()) as usize)
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Raft §5.4.1, strictly: a log ending at `(last_index, last_term)` is
    /// more up to date than ours (it holds entries we have not seen).
    pub fn is_behind(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index > self.last_index())
    }

    /// Entries `[lo, last]`, at most `max_count` and about `max_bytes` (always
    /// at least one if any exist).
    pub fn entries_from(
        &self,
        lo: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, Compacted> {
        if lo < self.first_index() {
            return Err(Compacted);
        }
        if lo > self.last_index() {
            return Ok(Vec::new());
        }
        let start = (lo - self.first_index()) as usize;
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for e in self.entries[start..].iter().take(max_count.max(1)) {
            bytes += e.data.len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Leader: append new entries at the end.
    pub fn append(&mut self, entries: Vec<Entry>) {
        for e in entries {
            debug_assert_eq!(e.index, self.last_index() + 1);
            debug_assert!(e.term >= self.last_term());
            self.entries_bytes += e.data.len();
            self.entries.push(e);
        }
    }

    /// Follower: accept the leader's entries after `prev_index`/`prev_term`
    /// (Raft §5.3). Returns the index of the last entry the message covers, or
    /// `None` if our log does not contain `prev` (the leader must back up).
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
    ) -> Option<u64> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        // Skip entries we already have; truncate from the first conflict.
        let skip = entries
            .iter()
            .take_while(|e| self.match_term(e.index, e.term))
            .count();
        let new: Vec<Entry> = entries.into_iter().skip(skip).collect();
        if let Some(first) = new.first() {
            let at = first.index;
            assert!(
                at > self.committed,
                "a committed entry ({at}) would be overwritten (Raft §5.4)"
            );
            if at <= self.last_index() {
                let keep = (at - self.first_index()) as usize;
                self.entries_bytes -= payload_bytes(&self.entries[keep..]);
                self.entries.truncate(keep);
                self.persisted = self.persisted.min(at - 1);
                self.truncated_from = Some(self.truncated_from.map_or(at, |t| t.min(at)));
            }
            self.unsaved_from = self.unsaved_from.min(at);
            self.entries_bytes += payload_bytes(&new);
            self.entries.extend(new);
        }
        Some(last_new)
    }

    pub fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} beyond last index {}",
                self.last_index()
            );
            self.committed = index;
        }
    }

    /// Entries not yet handed to the driver to persist; marks them handed.
    pub fn take_unsaved(&mut self) -> (Option<Snapshot>, Vec<Entry>) {
        let snap = self.unsaved_snapshot.take();
        let from = self.unsaved_from.max(self.first_index());
        let entries = if from <= self.last_index() {
            self.entries[(from - self.first_index()) as usize..].to_vec()
        } else {
            Vec::new()
        };
        self.unsaved_from = self.last_index() + 1;
        (snap, entries)
    }

    /// Whether `take_unsaved` would return anything.
    pub fn has_unsaved(&self) -> bool {
        self.unsaved_snapshot.is_some()
            || self.unsaved_from.max(self.first_index()) <= self.last_index()
    }

    /// The driver made entries up to `index` (whose term was `term`) durable.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        // A later truncation may have replaced that entry; then it proves nothing.
        if self.match_term(index, term) && index < self.unsaved_from {
            self.persisted = self.persisted.max(index);
        }
    }

    /// The lowest index from which entries were cut since the last call
    /// (what was derived from the cut entries must be derived again).
    pub fn take_truncated_from(&mut self) -> Option<u64> {
        self.truncated_from.take()
    }

    /// A snapshot received from the leader, to be persisted and applied.
    pub fn take_snapshot_to_apply(&mut self) -> Option<Snapshot> {
        self.snapshot_to_apply.take()
    }

    /// Committed entries not yet applied; marks them applied (the caller
    /// applies them to the state machine before anything else happens).
    pub fn take_committed(&mut self, max_count: usize) -> Vec<Entry> {
        if self.committed <= self.applied {
            return Vec::new();
        }
        let lo = self.applied + 1;
        let hi = self.committed.min(lo + max_count as u64 - 1);
        let out = self.entries
            [(lo - self.first_index()) as usize..=(hi - self.first_index()) as usize]
            .to_vec();
        self.applied = hi;
        out
    }

    /// Follower: replace the whole log with a snapshot from the leader.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.meta.clone();
        assert!(meta.index > self.committed);
        self.entries.clear();
        self.entries_bytes = 0;
        self.committed = meta.index;
        self.applied = meta.index;
        self.unsaved_from = meta.index + 1;
        self.persisted = self.persisted.min(meta.index);
        self.snapshot = meta;
        self.unsaved_snapshot = Some(snapshot.clone());
        self.snapshot_to_apply = Some(snapshot);
    }

    /// The snapshot that was handed out to persist became durable.
    pub fn on_snapshot_persisted(&mut self, index: u64, term: u64) {
        if self.snapshot.index == index && self.snapshot.term == term {
            self.persisted = self.persisted.max(index);
        }
    }

    /// Fold every entry up to `meta.index` (already applied) into a snapshot.
    pub fn compact(&mut self, meta: SnapshotMeta, data: Bytes) -> Snapshot {
        assert!(
            meta.index <= self.applied,
            "cannot compact unapplied entries"
        );
        assert!(meta.index > self.snapshot.index);
        assert_eq!(self.term(meta.index), Some(meta.term));
        let drop = (meta.index - self.snapshot.index) as usize;
        self.entries_bytes -= payload_bytes(&self.entries[..drop]);
        self.entries.drain(..drop);
        self.snapshot = meta.clone();
        let snapshot = Snapshot { meta, data };
        // Persist it so the driver can truncate the WAL behind it.
        self.unsaved_snapshot = Some(snapshot.clone());
        snapshot
    }

    /// Every entry currently held, for tests and invariant checks.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

fn payload_bytes(entries: &[Entry]) -> usize {
    entries.iter().map(|e| e.data.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log ending at 3/5 (index 5, term 3).
    fn log() -> RaftLog {
        let entries = (1..=5)
            .map(|index| Entry {
                index,
                term: if index <= 2 { 1 } else { 3 },
                kind: crate::raft::EntryKind::Normal,
                data: Bytes::new(),
            })
            .collect();
        RaftLog::restore(None, entries, 0)
    }

    #[test]
    fn up_to_date_and_behind_compare_last_term_then_last_index() {
        let l = log();
        // (last_index, last_term): up to date?, strictly ahead of ours?
        for (index, term, up_to_date, behind) in [
            (5, 3, true, false),
            (6, 3, true, true),
            (4, 3, false, false),
            (1, 4, true, true),
            (9, 2, false, false),
        ] {
            assert_eq!(l.is_up_to_date(index, term), up_to_date, "{term}/{index}");
            assert_eq!(l.is_behind(index, term), behind, "{term}/{index}");
        }
    }
}
