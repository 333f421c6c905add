//! The leader's view of one follower's log: how far it matches, what to send
//! next, and how much may be in flight.
//!
//! Owns the probe / replicate / snapshot flow control of etcd-raft's
//! `tracker.Progress`: in `Probe` the leader sends one append and waits for its
//! answer (it does not yet know where the follower's log ends); in `Replicate`
//! it streams optimistically, up to `max_inflight` unacknowledged messages
//! holding at most `max_inflight_bytes` of entries (etcd's `MaxInflightBytes`:
//! a count alone lets a window of large entries grow to hundreds of MiB); in
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
    /// Last index and payload bytes of each unacknowledged append in
    /// `Replicate` (bounded by count and by bytes).
    inflight: VecDeque<(u64, usize)>,
    inflight_bytes: usize,
    max_inflight: usize,
    max_inflight_bytes: usize,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Highest heartbeat round the follower acknowledged (ReadIndex, lease).
    pub acked_round: u64,
    /// Ticks spent waiting in `Snapshot` state; a snapshot message can be
    /// lost, so after a while the leader probes (and resends) again.
    pub snapshot_ticks: u32,
    /// Ticks the `Replicate` window has been full without an acknowledgement.
    pub window_full_ticks: u32,
}

impl Progress {
    pub fn new(next: u64, max_inflight: usize, max_inflight_bytes: usize) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            max_inflight,
            max_inflight_bytes,
            recent_active: false,
            acked_round: 0,
            snapshot_ticks: 0,
            window_full_ticks: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.window_full_ticks = 0;
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
            ProgressState::Replicate => {
                self.inflight.len() >= self.max_inflight
                    || self.inflight_bytes >= self.max_inflight_bytes
            }
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// An append covering up to `last`, with `entries` entries of `bytes`
    /// payload bytes in all, was sent.
    pub fn on_sent(&mut self, last: u64, entries: usize, bytes: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    self.next = last + 1;
                    self.inflight.push_back((last, bytes));
                    self.inflight_bytes += bytes;
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
            self.window_full_ticks = 0;
        }
        self.next = self.next.max(index + 1);
        while self
            .inflight
            .front()
            .is_some_and(|&(last, _)| last <= index)
        {
            self.pop_inflight();
        }
        updated
    }

    fn pop_inflight(&mut self) {
        if let Some((_, bytes)) = self.inflight.pop_front() {
            self.inflight_bytes -= bytes;
        }
    }

    /// One leader tick passed.
    pub fn tick(&mut self) {
        if self.state == ProgressState::Replicate && self.is_paused() {
            self.window_full_ticks = self.window_full_ticks.saturating_add(1);
        } else {
            self.window_full_ticks = 0;
        }
    }

    /// A heartbeat answer proves the follower is reachable. If the window
    /// has also been full for `stall_ticks` without any acknowledgement, the
    /// appends in it were probably lost: free one slot so that a full window
    /// cannot stall forever. A window that is merely full (the appends are
    /// queued behind others on a busy link; heartbeats travel apart from
    /// them) is left alone: freeing a slot per heartbeat would pile ever
    /// more appends onto the congested link.
    pub fn free_first_inflight_if_stalled(&mut self, stall_ticks: u32) {
        if self.state == ProgressState::Replicate
            && self.is_paused()
            && self.window_full_ticks >= stall_ticks
        {
            self.pop_inflight();
            self.window_full_ticks = 0;
        }
    }

    /// Payload bytes of unacknowledged appends.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes
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
