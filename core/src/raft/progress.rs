//! The leader's view of one follower's log: how far it matches, what to send
//! next, and how much may be in flight.
//!
//! Owns the probe / replicate / snapshot flow control of etcd-raft's
//! `tracker.Progress`: in `Probe` the leader sends one append and waits for its
//! answer (it does not yet know where the follower's log ends); in `Replicate`
//! it streams optimistically, up to `max_inflight` unacknowledged messages; in
//! `Snapshot` it waits until the follower has installed a snapshot.
//!
//! Invariant: `matched < next`.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot { pending_index: u64 },
}

#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to be replicated (and durable) on the follower.
    pub matched: u64,
    /// Next index to send.
    pub next: u64,
    pub state: ProgressState,
    /// Probe: an append is outstanding; wait for its answer or a heartbeat.
    pub probe_sent: bool,
    /// Last index of each unacknowledged append in `Replicate` (bounded).
    inflight: VecDeque<u64>,
    max_inflight: usize,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Highest heartbeat round the follower acknowledged (ReadIndex, lease).
    pub acked_round: u64,
    /// Ticks spent waiting in `Snapshot` state; a snapshot message can be
    /// lost, so after a while the leader probes (and resends) again.
    pub snapshot_ticks: u32,
}

impl Progress {
    pub fn new(next: u64, max_inflight: usize) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            max_inflight,
            recent_active: false,
            acked_round: 0,
            snapshot_ticks: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_probe(&mut self) {
        // After a snapshot the follower has at least the snapshot's entries.
        if let ProgressState::Snapshot { pending_index } = self.state {
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending_index + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, pending_index: u64) {
        self.reset_state(ProgressState::Snapshot { pending_index });
        self.snapshot_ticks = 0;
    }

    /// Whether the leader must hold back appends to this follower.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= self.max_inflight,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// An append covering up to `last` was sent.
    pub fn on_sent(&mut self, last: u64, entries: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    self.next = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// The follower acknowledged up to `index`. Returns whether it was news.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// A heartbeat answer proves the follower is reachable even if all our
    /// appends were lost: free one slot so that a full window cannot stall.
    pub fn free_first_inflight_if_full(&mut self) {
        if self.inflight.len() >= self.max_inflight {
            self.inflight.pop_front();
        }
    }

    /// The follower rejected an append at `rejected`, its log ending at `hint`.
    /// Returns false if the rejection is stale (answers an older message).
    pub fn maybe_decr_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next.saturating_sub(1) != rejected {
            return false;
        }
        self.next = rejected.min(hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }
}
