//! One Raft group: leader election, log replication, commit, reads, leadership
//! transfer and snapshots, as a pure state machine.
//!
//! Inputs are method calls ([`Raft::step`] for a peer message, [`Raft::tick`]
//! for one logical clock tick, [`Raft::propose`], [`Raft::read`], ...); outputs
//! are collected by [`Raft::take_ready`]. Time exists only as ticks: the node
//! turns its clock into ticks. The design follows etcd-raft and the Raft
//! thesis (Ongaro 2014); section numbers below refer to the paper/thesis.
//!
//! What is here:
//! - elections with **PreVote** (§9.6) and **CheckQuorum** (§6.2): a node that
//!   cannot win does not bump terms, and a leader that lost its quorum steps down;
//! - replication with probe/replicate flow control and an in-flight window;
//!   commit by counting only current-term entries (§5.4.2, Figure 8);
//! - **ReadIndex** reads (§6.4) confirmed by a round of heartbeats, and **lease**
//!   reads, valid for `lease_ticks()` after a quorum acknowledged a heartbeat,
//!   safe while every node's clock runs within `max_clock_drift_ppm` of real
//!   time;
//! - leadership transfer (§3.10), snapshots and log compaction (§7), with
//!   snapshots sent in chunks under flow control ([`snapshot_transfer`]), so
//!   no message grows with the size of a partition;
//! - flow control per follower by message count and by bytes in flight, and
//!   [`Raft::report_unreachable`] for a transport that had to drop messages.
//! - quiescence: an idle leader tells followers to stop their election timers;
//!   a quiesced group sends nothing until a proposal, read or message wakes it.
//!
//! - **membership change** ([`membership`]): learners, and voter changes by
//!   joint consensus (C_old -> C_old,new -> C_new), one change at a time
//!   ([`Raft::propose_conf_change`]); a learner is promoted only when caught
//!   up; a leader that removes itself steps down once its removal commits;
//!   a new replica starts knowing no configuration and learns the group from
//!   the leader's snapshot.
//!
//! **When a configuration takes effect: on append.** Every replica uses the
//! latest configuration in its log, committed or not (the dissertation's
//! rule, §4.1), and goes back to the previous one if the entry is cut. The
//! configuration is therefore a function of the log: recovered from the
//! snapshot's metadata plus the change entries after it, never from outside.
//! Why not on apply, as etcd-raft does: a replica's commit index may trail
//! what its log holds, so a candidate that has the entries of two changes
//! but applied neither could be elected by a majority of a configuration
//! two steps old (etcd-io/etcd#7625 lists the three extra invariants that
//! make apply-time safe, one of which needs a commit index durably known
//! before each change is appended). On append, one rule is enough: a leader
//! proposes a change only once the previous one is committed, so any two
//! configurations a replica may use are one joint step apart, and every
//! quorum of one overlaps every quorum of the next (Raft §4.3). The edge
//! cases this brings are tested in `raft_scripts`: a change entry cut by a
//! new leader (`conf_change_truncated`), a partition while joint
//! (`joint_partition`), a restart mid-change (`conf_change_restart`), the
//! leader removing itself (`remove_leader`).
//!
//! What is not (yet): follower reads.
//!
//! A removed replica learns of its removal from the leader, which keeps
//! sending it the log while its log still names it, and afterwards answers
//! its campaign with the log or snapshot that leaves it out (a follower
//! that does not count a campaigner in its configuration names its leader
//! in a `LeaderHint`, so the campaign reaches a leader the removed replica
//! never knew); once the removal is committed
//! ([`Raft::removal_settled`]) the node destroys it.
//!
//! **Persist before you speak.** Records that must be durable come out in
//! [`Ready::persist`]. Messages that claim something durable (votes, append
//! acknowledgements) come out in [`Ready::messages_after_persist`] and must be
//! sent only after every record this group handed out so far is durable. A
//! leader's own appends count toward commit only once
//! [`Raft::on_persisted`] reports them durable.

mod log;
mod membership;
mod message;
mod progress;
pub mod snapshot_transfer;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use log::RaftLog;
pub use membership::{ConfChange, ConfChangeError, Membership, VoteResult};
pub use message::{
    Entry, EntryKind, HardState, Message, MessageBody, PersistRecord, Snapshot, SnapshotMeta,
    Tombstone,
};
pub use progress::{Progress, ProgressState};
use snapshot_transfer::{ChunkOutcome, IncomingSnapshot, OutgoingSnapshot};

use crate::types::NodeId;

/// Tunables of one group. Every limit is named here rather than buried.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftConfig {
    /// A follower that hears nothing from a leader for `election_ticks` (plus a
    /// random 0..election_ticks) starts an election.
    pub election_ticks: u32,
    /// The random part of the election timeout is drawn from
    /// `0..election_jitter_ticks` (`None`: `0..election_ticks`, the Raft
    /// paper's `[E, 2E)`; `Some(0)`: none, every follower times out after
    /// exactly `election_ticks`, which the simulation uses to provoke split
    /// votes and elections at the earliest moment a lease allows).
    pub election_jitter_ticks: Option<u32>,
    /// A leader sends heartbeats every `heartbeat_ticks`.
    pub heartbeat_ticks: u32,
    /// Unacknowledged append messages per follower in `Replicate` state.
    pub max_inflight_msgs: usize,
    /// Entry payload bytes of unacknowledged appends per follower: with large
    /// entries this, not the message count, bounds what a leader queues for
    /// one follower (the window is full once it is reached or exceeded).
    pub max_inflight_bytes: usize,
    /// Entries per append message.
    pub max_entries_per_msg: usize,
    /// Payload bytes per append message (at least one entry is always sent,
    /// so a single larger entry goes out alone).
    pub max_bytes_per_msg: usize,
    /// Snapshot bytes per `SnapshotChunk` message.
    pub snapshot_chunk_bytes: usize,
    /// Unacknowledged snapshot chunks per follower.
    pub max_snapshot_chunks_inflight: usize,
    /// Proposals beyond this many uncommitted entries are refused (`Busy`).
    pub max_uncommitted_entries: u64,
    /// Bound on how far any node's clock rate may stray from real time, in
    /// parts per million (either way). Lease reads are safe while every clock
    /// stays within it (see [`RaftConfig::lease_ticks`]); the simulation's
    /// `lease_skew` test runs clocks exactly at it, and far beyond it.
    pub max_clock_drift_ppm: u32,
    /// An idle leader quiesces the group after this many ticks without work.
    pub quiesce_after_ticks: u32,
    /// Committed entries handed out per `take_ready`.
    pub max_apply_batch: usize,
    /// A learner is promoted to voter only when it holds all but at most
    /// this many of the leader's entries: a voter far behind would make the
    /// group wait for it (or, with a second one, stall) the moment it counts.
    pub max_promotion_lag_entries: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            election_ticks: 10,
            election_jitter_ticks: None,
            heartbeat_ticks: 2,
            max_inflight_msgs: 64,
            max_inflight_bytes: 4 << 20,
            max_entries_per_msg: 256,
            max_bytes_per_msg: 1 << 20,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_chunks_inflight: 4,
            max_uncommitted_entries: 10_000,
            max_clock_drift_ppm: 50_000,
            quiesce_after_ticks: 6,
            max_apply_batch: 1024,
            max_promotion_lag_entries: 1000,
        }
    }
}

impl RaftConfig {
    /// How many ticks after sending a heartbeat round the leader may still
    /// serve lease reads once a quorum acknowledged that round.
    ///
    /// A follower that acknowledged the round reset its election timer when it
    /// received it, and refuses to vote for anyone else until `election_ticks`
    /// of *its* ticks pass: at least `(election_ticks - 1)` tick intervals of
    /// its clock (the reset can fall just before a tick). Measured by the
    /// leader's clock, that span is at least `(E - 1) * (1 - ρ) / (1 + ρ)`
    /// intervals when each clock may run up to ρ fast or slow. The leader's own
    /// count is off by up to one tick (the round went out mid-interval), so we
    /// subtract one more. Zero disables lease reads (they fall back to ReadIndex).
    pub fn lease_ticks(&self) -> u64 {
        let rho = f64::from(self.max_clock_drift_ppm) / 1e6;
        let e = f64::from(self.election_ticks.saturating_sub(1));
        let span = (e * (1.0 - rho) / (1.0 + rho)).floor() as u64;
        span.saturating_sub(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a proposal, read or configuration change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership transfer in progress")]
    TransferInProgress,
    #[error("too many uncommitted entries")]
    Busy,
    #[error(
        "the configuration change at index {index} is not committed yet (one change at a time)"
    )]
    ConfChangeInProgress { index: u64 },
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(ConfChangeError),
    #[error(
        "learner {learner} is not caught up: it holds {matched} of {last_index} entries, and \
         promotion needs it within {max_lag}"
    )]
    LearnerBehind {
        learner: NodeId,
        matched: u64,
        last_index: u64,
        max_lag: u64,
    },
    #[error(
        "learner {learner} does not hold the configuration that names it yet (it acknowledged \
         {matched}; the configuration is entry {conf_index})"
    )]
    LearnerUnconfirmed {
        learner: NodeId,
        matched: u64,
        conf_index: u64,
    },
}

/// A read that may now be served from the state machine once it has applied
/// `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: u64,
}

/// Something an observer (metrics, dashboard, trace) may want to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftEvent {
    RoleChanged {
        role: Role,
        term: u64,
        leader: Option<NodeId>,
    },
    Quiesced,
    Woke,
    TransferAborted {
        to: NodeId,
    },
    /// The group's configuration changed: a change entry at `index` was
    /// appended (or cut, or a snapshot at `index` installed). See
    /// [`Raft::membership`].
    ConfigChanged {
        index: u64,
    },
}

impl std::fmt::Display for RaftEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftEvent::RoleChanged {
                role,
                term,
                leader: Some(l),
            } => write!(f, "became {role:?} term={term} leader={l}"),
            RaftEvent::RoleChanged {
                role,
                term,
                leader: None,
            } => write!(f, "became {role:?} term={term}"),
            RaftEvent::Quiesced => write!(f, "quiesced"),
            RaftEvent::Woke => write!(f, "woke"),
            RaftEvent::TransferAborted { to } => write!(f, "transfer to {to} aborted"),
            RaftEvent::ConfigChanged { index } => write!(f, "configuration changed at {index}"),
        }
    }
}

/// Everything the group wants done after an input. Drained by `take_ready`.
#[derive(Debug, Default)]
pub struct Ready {
    /// Records to make durable, in order.
    pub persist: Vec<PersistRecord>,
    /// Messages that may leave now.
    pub messages: Vec<Message>,
    /// Messages that may leave only once every record handed out so far by
    /// this group is durable.
    pub messages_after_persist: Vec<Message>,
    /// A snapshot from the leader: restore the state machine from it first.
    pub snapshot_to_apply: Option<Snapshot>,
    /// Committed entries to apply, in log order.
    pub committed: Vec<Entry>,
    pub reads: Vec<ReadState>,
    /// Reads that cannot complete here (leadership lost); retry elsewhere.
    pub failed_reads: Vec<u64>,
    pub events: Vec<RaftEvent>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.messages_after_persist.is_empty()
            && self.snapshot_to_apply.is_none()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.events.is_empty()
    }
}

/// What a group recovers from its durable records at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStorage {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// The configuration the group was created with on this node.
    pub genesis: Option<Membership>,
    /// Set while the replica is destroyed (removed from the group, and not
    /// added again since: a later snapshot clears it).
    pub tombstone: Option<Tombstone>,
}

impl RaftStorage {
    /// Replays one durable record on top of this state (WAL recovery).
    pub fn apply(&mut self, record: PersistRecord) {
        match record {
            PersistRecord::HardState(hs) => self.hard_state = hs,
            PersistRecord::Entries(entries) => {
                let Some(first) = entries.first() else { return };
                // Entries are kept in index order (each record's run is
                // ascending, and a later run cuts everything from its first
                // index on), so the cut is a binary search, not a scan: a
                // scan per record made replaying a long WAL quadratic.
                let keep = self.entries.partition_point(|e| e.index < first.index);
                self.entries.truncate(keep);
                self.entries.extend(entries);
                debug_assert!(self.entries.is_sorted_by_key(|e| e.index));
            }
            PersistRecord::Genesis(membership) => self.genesis = Some(membership),
            PersistRecord::Tombstone(t) => {
                // The hard state stays: a replica added again must not vote
                // twice in a term its earlier life voted in.
                self.snapshot = None;
                self.entries.clear();
                self.genesis = None;
                self.tombstone = Some(t);
            }
            PersistRecord::Snapshot(snap) => {
                self.tombstone = None;
                let idx = snap.meta.index;
                let term = snap.meta.term;
                // Keep later entries only if they continue the snapshot's log.
                let keep = self
                    .entries
                    .iter()
                    .any(|e| e.index == idx && e.term == term);
                if keep {
                    self.entries.retain(|e| e.index > idx);
                } else {
                    self.entries.clear();
                }
                self.snapshot = Some(snap);
            }
        }
    }
}

/// A ReadIndex request waiting for its heartbeat round.
#[derive(Debug, Clone, Copy)]
struct PendingRead {
    ctx: u64,
    /// Commit index when the read arrived (assigned once this term committed).
    index: u64,
    /// The round whose quorum acknowledgement confirms our leadership.
    round: u64,
}

/// A configuration change entry in the log and the configuration it made.
#[derive(Debug, Clone)]
struct ConfEntry {
    index: u64,
    membership: Membership,
}

/// One Raft group. See the module documentation.
#[derive(Debug)]
pub struct Raft {
    id: NodeId,
    cfg: RaftConfig,
    /// The configuration in force: the latest one in the log (see
    /// [`Raft::refresh_conf`]).
    membership: Membership,
    /// The configuration as of the log's snapshot.
    conf_base: Membership,
    /// Every configuration change entry in the log after the snapshot, with
    /// the configuration it produced, in log order.
    conf_changes: Vec<ConfEntry>,
    /// Log entries up to here have been read for configuration changes.
    conf_scanned: u64,
    term: u64,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    rng: ChaCha8Rng,

    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    /// Ticks since creation: the leader's clock for leases.
    ticks: u64,
    votes: BTreeMap<NodeId, bool>,

    /// Follower: the highest commit index a leader of this term told us of
    /// (how far behind this replica is).
    leader_commit: u64,
    /// Follower: the snapshot being received in chunks, if any.
    incoming_snapshot: Option<IncomingSnapshot>,

    // Leader state.
    progress: BTreeMap<NodeId, Progress>,
    /// Snapshots being sent, one per follower in `Snapshot` state.
    outgoing_snapshots: BTreeMap<NodeId, OutgoingSnapshot>,
    /// Peers whose link the driver reports congested: no entries or
    /// snapshot chunks go to them until it clears (kept across terms and
    /// roles; it is a fact about the link, not the group).
    congested_peers: BTreeSet<NodeId>,
    /// New replicas (they refused entries for want of a configuration) that
    /// need a snapshot before anything else.
    snapshot_wanted_by: BTreeSet<NodeId>,
    /// A follower needs entries this log folded into its snapshot, and the
    /// log keeps no image to send (see `log.rs`): the driver is asked for
    /// one through [`Raft::wants_snapshot`].
    image_wanted: bool,
    /// The snapshot being handed to followers right now: set only for the
    /// length of [`Raft::compact`] or [`Raft::supply_snapshot_image`] (each
    /// transfer keeps its own reference to the bytes), so no image outlives
    /// the transfers that need it.
    image_on_hand: Option<Snapshot>,
    /// Replicas outside the configuration that campaigned: sent the log
    /// until they hold the latest configuration, which tells them they are
    /// out.
    strays: BTreeSet<NodeId>,
    /// Leaders that followers named (`LeaderHint`) when this replica
    /// campaigned outside their configuration or asked who leads: asked
    /// too at the next campaign or query, until a leader is heard.
    campaign_hints: BTreeSet<NodeId>,
    transferee: Option<NodeId>,
    /// Heartbeat round counter, and when each recent round was sent (ticks).
    round: u64,
    round_sent_at: VecDeque<(u64, u64)>,
    want_round: bool,
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before this leader committed an entry of its term.
    reads_before_commit: Vec<u64>,
    /// Set when this member starts with a term of its own: just before it
    /// stopped it may have acknowledged a heartbeat round that a leader now
    /// serves lease reads on, and it no longer knows which leader. It
    /// honours that unknown lease (refuses votes, and does not campaign)
    /// until a full election timeout of its own has passed or it hears from
    /// a leader. (With lease reads disabled there is no such lease.)
    honours_unknown_lease: bool,
    /// This leader sent `TimeoutNow` in its term. The target campaigns with
    /// votes that voters grant despite their lease, whenever the message
    /// arrives (it may be delayed past an aborted transfer), so the lease
    /// means nothing for the rest of the term: reads go through ReadIndex.
    sent_timeout_now: bool,
    idle_ticks: u32,
    quiesced: bool,

    // Output.
    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    saved_hard_state: HardState,
    ready_reads: Vec<ReadState>,
    failed_reads: Vec<u64>,
    events: Vec<RaftEvent>,
}

/// Leaders named by `LeaderHint` hints remembered for the next campaign.
const MAX_CAMPAIGN_HINTS: usize = 8;

/// Rounds remembered for lease bookkeeping (bounded).
const MAX_ROUNDS_REMEMBERED: usize = 64;

impl Raft {
    /// A group member starting from its durable state. `seed` drives the
    /// election jitter; give each group on each node a different one.
    pub fn new(
        id: NodeId,
        cfg: RaftConfig,
        membership: Membership,
        storage: RaftStorage,
        seed: u64,
    ) -> Self {
        assert!(cfg.election_ticks > cfg.heartbeat_ticks && cfg.heartbeat_ticks > 0);
        // The configuration is the snapshot's (or, for a group with no
        // snapshot yet, the one it was created with), then every change
        // entry in the recovered log (`refresh_conf` below).
        let membership = storage
            .snapshot
            .as_ref()
            .map_or(membership, |s| s.meta.membership.clone());
        let hs = storage.hard_state;
        let log = RaftLog::restore(storage.snapshot, storage.entries, hs.commit);
        let mut raft = Raft {
            id,
            conf_base: membership.clone(),
            conf_changes: Vec::new(),
            conf_scanned: log.snapshot_meta().index,
            membership,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: None,
            log,
            rng: ChaCha8Rng::seed_from_u64(seed),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_ticks,
            ticks: 0,
            votes: BTreeMap::new(),
            leader_commit: 0,
            incoming_snapshot: None,
            progress: BTreeMap::new(),
            outgoing_snapshots: BTreeMap::new(),
            congested_peers: BTreeSet::new(),
            snapshot_wanted_by: BTreeSet::new(),
            image_wanted: false,
            image_on_hand: None,
            strays: BTreeSet::new(),
            campaign_hints: BTreeSet::new(),
            transferee: None,
            round: 0,
            round_sent_at: VecDeque::new(),
            want_round: false,
            pending_reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            honours_unknown_lease: hs.term > 0 && cfg.lease_ticks() > 0,
            sent_timeout_now: false,
            idle_ticks: 0,
            quiesced: false,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            saved_hard_state: hs,
            ready_reads: Vec::new(),
            failed_reads: Vec::new(),
            events: Vec::new(),
            cfg,
        };
        raft.saved_hard_state.commit = raft.log.committed();
        raft.reset_randomized_election_timeout();
        raft.refresh_conf();
        // Recovery is not news.
        raft.events.clear();
        raft
    }

    // ---------------------------------------------------------------- getters

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    pub fn config(&self) -> &RaftConfig {
        &self.cfg
    }
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }
    pub fn transferee(&self) -> Option<NodeId> {
        self.transferee
    }
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.get(&peer)
    }
    /// Leader: each follower's progress (not this node's own).
    pub fn followers(&self) -> impl Iterator<Item = (NodeId, &Progress)> + '_ {
        let me = self.id;
        self.progress
            .iter()
            .filter(move |(id, _)| **id != me)
            .map(|(&id, pr)| (id, pr))
    }
    /// Leader: bytes of the snapshot `peer` has acknowledged, and its size,
    /// while a snapshot transfer to it is under way.
    pub fn outgoing_snapshot_progress(&self, peer: NodeId) -> Option<(u64, u64)> {
        self.outgoing_snapshots
            .get(&peer)
            .map(|o| (o.acked(), o.total_len()))
    }
    /// Follower: the snapshot index being received, bytes held, and its size.
    pub fn incoming_snapshot_progress(&self) -> Option<(u64, u64, u64)> {
        self.incoming_snapshot.as_ref().map(|s| {
            let (held, total) = s.progress();
            (s.index(), held, total)
        })
    }
    /// The highest commit index known here: ours, or (on a follower) the
    /// highest a leader of this term announced. `leader_commit() -
    /// log().applied()` is how far this replica trails.
    pub fn leader_commit(&self) -> u64 {
        self.leader_commit.max(self.log.committed())
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }
    /// Whether this leader has committed an entry of its own term, which it
    /// must before it knows the true commit index (§6.4, §8).
    pub fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }
    /// The latest heartbeat round this node sent as leader (0: none).
    pub fn round(&self) -> u64 {
        self.round
    }
    /// The heartbeat round a lease read rests on now: the latest one a
    /// quorum acknowledged.
    pub fn lease_round(&self) -> u64 {
        self.quorum_acked_round()
    }
    /// Leader: a follower waits for a snapshot, and the log keeps none to
    /// send (only the position of the last one): a new replica, which needs
    /// one that names it, or a follower behind the compacted log. The driver
    /// should compact ([`Raft::compact`]) soon, or, if nothing was applied
    /// since the last snapshot, hand over that snapshot's image again
    /// ([`Raft::supply_snapshot_image`]).
    pub fn wants_snapshot(&self) -> bool {
        self.role == Role::Leader && (self.image_wanted || !self.snapshot_wanted_by.is_empty())
    }

    /// Leader: whether the image of the state at the current snapshot's
    /// index would serve a waiting follower now (a new replica needs one
    /// that names it, which an older snapshot may not).
    pub fn snapshot_image_would_serve(&self) -> bool {
        let meta = self.log.snapshot_meta();
        self.role == Role::Leader
            && meta.index > 0
            && (self.image_wanted
                || self
                    .snapshot_wanted_by
                    .iter()
                    .any(|&p| self.snapshot_adds(meta, p)))
    }

    /// Leader: `data` is the state machine's image at the current
    /// snapshot's index (a node has it when nothing was applied since); it
    /// goes to the followers waiting for a snapshot, and is not kept.
    /// Returns false, and sends nothing, if it would serve none
    /// ([`Raft::snapshot_image_would_serve`]).
    pub fn supply_snapshot_image(&mut self, data: Bytes) -> bool {
        if !self.snapshot_image_would_serve() {
            return false;
        }
        let meta = self.log.snapshot_meta().clone();
        self.offer_snapshot(Snapshot { meta, data });
        true
    }

    /// Leader: sends `snapshot` to every follower that needs it (new
    /// replicas waiting for one, followers heard from lately whose next
    /// entry it folded in), then lets it go.
    fn offer_snapshot(&mut self, snapshot: Snapshot) {
        if self.role != Role::Leader {
            return;
        }
        let index = snapshot.meta.index;
        let behind: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|&(&peer, pr)| {
                peer != self.id
                    && !matches!(pr.state, ProgressState::Snapshot { .. })
                    && ((pr.next <= index && pr.recent_active)
                        || self.snapshot_wanted_by.contains(&peer))
            })
            .map(|(&peer, _)| peer)
            .collect();
        self.image_on_hand = Some(snapshot);
        self.image_wanted = false;
        for peer in behind {
            if let Some(pr) = self.progress.get_mut(&peer) {
                pr.become_probe();
            }
            self.maybe_send_append(peer, true);
        }
        self.image_on_hand = None;
    }

    /// Whether a snapshot proves to a new replica `peer` that it belongs to
    /// the group: it names the peer, and is no older than the latest
    /// committed configuration. An older one may name a replica that was
    /// removed since and is now added again (the node destroyed the earlier
    /// replica, and takes back only a snapshot past its removal). Not the
    /// configuration in force: one not yet committed may need this very
    /// replica's acknowledgement to commit (madsim seed 793: a leader
    /// leaving a joint configuration waited for a snapshot at or past the
    /// leave entry, which could not commit without the replica waiting for
    /// the snapshot).
    fn snapshot_adds(&self, snapshot: &SnapshotMeta, peer: NodeId) -> bool {
        let committed_conf = self
            .conf_changes
            .iter()
            .rev()
            .find(|c| c.index <= self.log.committed())
            .map_or(0, |c| c.index);
        snapshot.index > 0 && snapshot.index >= committed_conf && snapshot.membership.contains(peer)
    }

    /// Whether this replica knows the group's configuration. A replica
    /// created for a group it is joining knows none until the leader's
    /// snapshot arrives; meanwhile it takes a leader's messages from any
    /// member, refuses entries, and never votes or campaigns.
    pub fn knows_configuration(&self) -> bool {
        !self.membership.voters.is_empty()
    }

    /// Whether this replica's removal from the group is settled: it knows
    /// the configuration, the one in force leaves it out, and that one is
    /// committed, so no cut of this log can bring it back (only a new
    /// change by a later leader could add it again, and that replica would
    /// start from a snapshot). A leader that removed itself steps down
    /// first (`conf_duties`). The node then destroys the replica.
    pub fn removal_settled(&self) -> bool {
        self.knows_configuration()
            && !self.membership.contains(self.id)
            && self.latest_conf_index() <= self.log.committed()
            && self.role != Role::Leader
    }

    /// Whether a lease read would be served locally right now.
    pub fn lease_valid(&self) -> bool {
        self.role == Role::Leader
            && self.transferee.is_none()
            && !self.sent_timeout_now
            && self.committed_in_term()
            && self.lease_expires_at().is_some_and(|t| self.ticks < t)
    }

    /// Leader: every replica it tracks but itself (see
    /// [`Raft::track_progress`]): whom it sends entries and heartbeats.
    fn replication_targets(&self) -> Vec<NodeId> {
        self.progress
            .keys()
            .copied()
            .filter(|&p| p != self.id)
            .collect()
    }

    /// Every other voter, of both halves of a joint configuration: whom a
    /// candidate asks for votes.
    fn voting_peers(&self) -> Vec<NodeId> {
        let mut voters = self.membership.replicas();
        voters.retain(|&p| p != self.id && self.membership.is_voter(p));
        voters
    }

    /// Whom a campaign or a `LeaderQuery` goes to: every other voter, and
    /// the leaders followers named in `LeaderHint`s (their answer is what a
    /// removed replica, or a learner in a quiet group, needs).
    fn peers_to_ask(&self) -> Vec<NodeId> {
        let mut peers = self.voting_peers();
        peers.extend(self.campaign_hints.iter().copied());
        peers.sort();
        peers.dedup();
        peers
    }

    /// Whether this replica may campaign: it votes in the configuration in
    /// force, or its removal is not committed yet (as far as it knows). A
    /// learner never campaigns, nor does a replica whose removal committed.
    ///
    /// The second half matters when a leader that removed itself fails
    /// after appending C_new but before committing it: it may hold the only
    /// log with C_new, and the other voters of C_old,new need its vote to
    /// elect anyone, which they cannot get without giving it the lead
    /// (soak of the core simulation, seed 41: a group stuck forever). As a
    /// candidate it counts C_new's votes, not its own, and as leader it
    /// commits C_new and steps down (`conf_duties`).
    fn promotable(&self) -> bool {
        self.membership.is_voter(self.id) || self.conf_at(self.log.committed()).is_voter(self.id)
    }

    // ----------------------------------------------------------------- inputs

    /// One logical clock tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.quiesced {
            return;
        }
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.honours_unknown_lease = false;
        }
        if self.election_elapsed < self.randomized_election_timeout {
            return;
        }
        if self.promotable() {
            self.election_elapsed = 0;
            self.campaign_pre_vote();
        } else if self.knows_configuration() && self.leader.is_none() {
            // A learner (or a replica whose removal it has not seen
            // committed) that knows no leader cannot campaign, and a
            // quiesced group sends it nothing: ask (madsim seed 221: a
            // learner restarted while its group was quiesced never learned
            // its leader).
            self.election_elapsed = 0;
            for peer in self.peers_to_ask() {
                self.send(peer, MessageBody::LeaderQuery);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            // CheckQuorum (§6.2): a leader that has not heard from a quorum in
            // an election timeout steps down, so that clients stop waiting on it.
            if !self.quorum_recently_active() {
                self.become_follower(self.term, None);
                return;
            }
            if let Some(to) = self.transferee.take() {
                self.events.push(RaftEvent::TransferAborted { to });
            }
        }
        // Snapshot transfers: `snapshot_ticks` counts ticks since the
        // follower last acknowledged new bytes. After half an election
        // timeout without progress a chunk was probably lost: resend from the
        // last acknowledged byte (go-back-N). After a whole one the follower
        // is gone or the transfer is stuck: give up and probe again, which
        // starts a new transfer if one is still needed.
        let timeout = self.cfg.election_ticks;
        let resend_after = (timeout / 2).max(1);
        let mut resend = Vec::new();
        for (&peer, pr) in self.progress.iter_mut() {
            pr.tick();
            if let ProgressState::Snapshot { .. } = pr.state {
                if self.congested_peers.contains(&peer) {
                    continue; // nothing is being sent; nothing can be late
                }
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks >= timeout {
                    pr.become_probe();
                    self.outgoing_snapshots.remove(&peer);
                } else if pr.snapshot_ticks % resend_after == 0 {
                    resend.push(peer);
                }
            }
        }
        for peer in resend {
            if let Some(out) = self.outgoing_snapshots.get_mut(&peer) {
                out.rewind();
            }
            self.send_snapshot_chunks(peer);
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.idle_ticks += self.cfg.heartbeat_ticks;
            if self.can_quiesce() {
                self.quiesce();
            } else {
                self.broadcast_heartbeat(false);
            }
        }
    }

    fn quorum_recently_active(&mut self) -> bool {
        let me = self.id;
        let progress = &self.progress;
        let active = self
            .membership
            .has_quorum(|id| id == me || progress.get(&id).is_some_and(|pr| pr.recent_active));
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        active
    }

    /// Wakes a quiesced group (a proposal, read or peer event needs it).
    pub fn wake(&mut self) {
        if self.quiesced {
            self.quiesced = false;
            self.election_elapsed = 0;
            self.heartbeat_elapsed = 0;
            self.idle_ticks = 0;
            self.events.push(RaftEvent::Woke);
        }
    }

    /// The failure detector says `node` is down. A quiesced follower of that
    /// leader wakes, so that it can elect a new one. Its election timer starts
    /// from zero: it keeps honouring the old leader's lease for a full election
    /// timeout, which keeps lease reads safe.
    /// A quiesced leader with a voter down wakes too, so that CheckQuorum
    /// runs again and it steps down if it has lost its quorum.
    pub fn on_node_down(&mut self, node: NodeId) {
        let follower_of_it = self.role != Role::Leader && self.leader == Some(node);
        let leader_of_it = self.role == Role::Leader && self.membership.is_voter(node);
        if self.quiesced && (follower_of_it || leader_of_it) {
            self.wake();
        }
    }

    /// The transport had to drop messages to `peer` (its queue was full, or
    /// its connection broke): stop streaming to it optimistically and probe
    /// until it answers again (etcd's `ReportUnreachable`). Appends assumed
    /// delivered would otherwise be found missing only after a rejection.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&peer)
            && pr.state == ProgressState::Replicate
        {
            pr.become_probe();
        }
    }

    /// The link to `peer` is congested (its transport queue is filling) or
    /// clear again. While congested, this group sends it no entries and no
    /// snapshot chunks (empty appends, heartbeats and answers still go), so
    /// a slow link fills no queue beyond what the transport holds; when it
    /// clears, a leader resumes sending at once. This is backpressure,
    /// where [`Raft::report_unreachable`] is the remedy for loss.
    pub fn set_peer_congested(&mut self, peer: NodeId, congested: bool) {
        let changed = if congested {
            self.congested_peers.insert(peer)
        } else {
            self.congested_peers.remove(&peer)
        };
        if !changed || congested || self.role != Role::Leader {
            return;
        }
        match self.progress.get(&peer).map(|pr| pr.state) {
            Some(ProgressState::Snapshot { .. }) => self.send_snapshot_chunks(peer),
            Some(_) => while self.maybe_send_append(peer, false) {},
            None => {}
        }
    }

    /// Whether this node may append a proposal now: it leads, is not
    /// handing leadership over, and has room for more uncommitted entries.
    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.log.last_index() - self.log.committed() >= self.cfg.max_uncommitted_entries {
            return Err(ProposeError::Busy);
        }
        Ok(())
    }

    /// Proposes `data`; returns the index the entry will have if committed.
    pub fn propose(&mut self, data: Bytes) -> Result<u64, ProposeError> {
        self.check_can_propose()?;
        Ok(self.append_proposal(EntryKind::Normal, data))
    }

    /// Asks to serve a read identified by `ctx` (nonzero). When it is safe, a
    /// [`ReadState`] with that ctx comes out of `take_ready`; serve it once the
    /// state machine applied its index. With `lease`, a valid leader lease
    /// serves it without a heartbeat round.
    pub fn read(&mut self, ctx: u64, lease: bool) -> Result<(), ProposeError> {
        assert_ne!(ctx, 0, "read ctx 0 is reserved");
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        self.wake();
        self.idle_ticks = 0;
        if !self.committed_in_term() {
            self.reads_before_commit.push(ctx);
            return Ok(());
        }
        let index = self.log.committed();
        if self.membership.is_sole_voter(self.id) || (lease && self.lease_valid()) {
            self.ready_reads.push(ReadState { ctx, index });
            return Ok(());
        }
        self.pending_reads.push_back(PendingRead {
            ctx,
            index,
            round: self.round + 1,
        });
        self.want_round = true;
        Ok(())
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.sent_timeout_now = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    /// Starts handing leadership to `to` (§3.10): bring it up to date, then
    /// tell it to campaign. Proposals are refused meanwhile; the attempt is
    /// abandoned after an election timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id || !self.membership.is_voter(to) || self.transferee == Some(to) {
            return Ok(());
        }
        self.wake();
        self.transferee = Some(to);
        self.election_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.maybe_send_append(to, true);
        }
        Ok(())
    }

    /// The driver made this group's records durable up to entry `index` of
    /// `term` (or a snapshot at `index`/`term`).
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        self.log.on_persisted(index, term);
        self.log.on_snapshot_persisted(index, term);
        if self.role == Role::Leader && self.maybe_commit() {
            self.broadcast_append(true);
        }
    }

    /// Whether [`Raft::compact`] at `index` would be taken: the index is
    /// past the snapshot, applied and durable. Lets a caller skip building a
    /// state image that would be refused.
    pub fn can_compact(&self, index: u64) -> bool {
        index > self.log.snapshot_meta().index
            && index <= self.log.applied()
            && index <= self.log.persisted()
            && self.log.term(index).is_some()
    }

    /// Leader: whether a follower it is streaming entries to (in
    /// `Replicate`) still lacks entries up to `index`, so that compacting
    /// there would force a snapshot on it.
    pub fn streaming_follower_lacks(&self, index: u64) -> bool {
        self.role == Role::Leader
            && self
                .followers()
                .any(|(_, pr)| pr.state == ProgressState::Replicate && pr.matched < index)
    }

    /// Folds the log up to `index` (applied, durable) into a snapshot whose
    /// state machine image is `data`. Returns false if not allowed yet.
    pub fn compact(&mut self, index: u64, data: Bytes) -> bool {
        if !self.can_compact(index) {
            return false;
        }
        let Some(term) = self.log.term(index) else {
            return false;
        };
        // The configuration as of `index`, not the latest: change entries
        // after it stay in the log, and a follower that installs this
        // snapshot re-derives the latest from them.
        let membership = self.conf_at(index).clone();
        self.conf_changes.retain(|c| c.index > index);
        self.conf_base = membership.clone();
        let meta = SnapshotMeta {
            index,
            term,
            membership,
        };
        let snapshot = self.log.compact(meta, data);
        // New replicas and followers behind may have been waiting for it.
        self.offer_snapshot(snapshot);
        true
    }

    /// Proposes a change of this group's configuration; returns the index its
    /// entry will have. It takes effect at once, on every replica as the
    /// entry reaches its log (see the module doc). Refused unless this node
    /// leads, the previous change is committed, the change is valid for the
    /// configuration in force, and a learner to promote is caught up. A
    /// joint configuration is left automatically once its entry commits.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<u64, ProposeError> {
        self.check_can_propose()?;
        let pending = self.latest_conf_index();
        if pending > self.log.committed() {
            return Err(ProposeError::ConfChangeInProgress { index: pending });
        }
        self.membership
            .apply(&change)
            .map_err(ProposeError::InvalidConfChange)?;
        if let ConfChange::EnterJoint { promote, .. } = &change {
            let last_index = self.log.last_index();
            let max_lag = self.cfg.max_promotion_lag_entries;
            for &learner in promote {
                // It has acknowledged something (a learner that never
                // answered may not exist at all), and close enough to the
                // end of the log.
                let matched = self.progress.get(&learner).map_or(0, |pr| pr.matched);
                if matched == 0 || matched + max_lag < last_index {
                    return Err(ProposeError::LearnerBehind {
                        learner,
                        matched,
                        last_index,
                        max_lag,
                    });
                }
                // And it holds the configuration in force, which names it:
                // then no prefix of its log says it is out, and its node
                // will not destroy it. An acknowledgement from before may
                // come from an earlier life of the replica, removed and
                // destroyed since (madsim seed 65: a removed replica still
                // catching up acknowledged entries, was added back, then
                // reached its removal and destroyed itself; promoted on
                // those old acknowledgements it left a joint configuration
                // that no election could win).
                let conf_index = self.latest_conf_index().max(self.log.snapshot_meta().index);
                if matched < conf_index {
                    return Err(ProposeError::LearnerUnconfirmed {
                        learner,
                        matched,
                        conf_index,
                    });
                }
            }
        }
        Ok(self.append_conf_change(&change))
    }

    fn append_conf_change(&mut self, change: &ConfChange) -> u64 {
        let data = crate::wire::encode_conf_change(change);
        self.append_proposal(EntryKind::ConfChange, data)
    }

    /// Leader: appends one entry of its term; returns its index.
    fn append_proposal(&mut self, kind: EntryKind, data: Bytes) -> u64 {
        self.wake();
        self.idle_ticks = 0;
        let index = self.log.last_index() + 1;
        self.append_entries(vec![Entry {
            index,
            term: self.term,
            kind,
            data,
        }]);
        index
    }

    // ---------------------------------------------------------- configuration

    /// Whether `id` is in any configuration this replica's log still holds
    /// (the snapshot's, or one made by a change entry after it).
    fn remembers(&self, id: NodeId) -> bool {
        self.conf_base.contains(id) || self.conf_changes.iter().any(|c| c.membership.contains(id))
    }

    /// Whether a campaign's log is strictly more up to date than ours
    /// (§5.4.1): it holds entries, perhaps configurations, we have not seen.
    fn log_is_behind(&self, campaign: &MessageBody) -> bool {
        match *campaign {
            MessageBody::PreVote {
                last_index,
                last_term,
            }
            | MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => self.log.is_behind(last_index, last_term),
            _ => false,
        }
    }

    /// Every replica any configuration in the log names, sorted.
    fn remembered(&self) -> Vec<NodeId> {
        let mut ids = self.membership.replicas();
        ids.extend(self.conf_base.replicas());
        for c in &self.conf_changes {
            ids.extend(c.membership.replicas());
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Leader: starts (again) sending the log to `stray`, a replica outside
    /// the configuration that campaigned, until it holds what tells it it
    /// is out (see `step_leader`).
    fn bring_stray_up_to_date(&mut self, stray: NodeId) {
        self.wake();
        self.strays.insert(stray);
        let next = self.log.last_index() + 1;
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
        let pr = self
            .progress
            .entry(stray)
            .or_insert_with(|| Progress::new(next, max_msgs, max_bytes));
        pr.become_probe();
        // It just campaigned: it is up, and worth a snapshot if it needs one.
        pr.recent_active = true;
        self.maybe_send_append(stray, true);
    }

    /// The index of the latest configuration change entry in the log (0 if
    /// the configuration in force is the snapshot's, which is committed).
    fn latest_conf_index(&self) -> u64 {
        self.conf_changes.last().map_or(0, |c| c.index)
    }

    /// The configuration in force after the log's entry `index`.
    fn conf_at(&self, index: u64) -> &Membership {
        self.conf_changes
            .iter()
            .rev()
            .find(|c| c.index <= index)
            .map_or(&self.conf_base, |c| &c.membership)
    }

    /// Re-derives the configuration from the log: forgets what came from
    /// entries cut since the last call, then applies every change entry
    /// appended since. Called after every change to the log.
    fn refresh_conf(&mut self) {
        if let Some(at) = self.log.take_truncated_from() {
            self.conf_changes.retain(|c| c.index < at);
            self.conf_scanned = self.conf_scanned.min(at - 1);
        }
        let first = self.log.first_index();
        let last = self.log.last_index();
        let from = (self.conf_scanned + 1).max(first);
        let mut current = self.conf_at(u64::MAX).clone();
        for index in from..=last {
            let Some(e) = self.log.entry(index) else {
                break;
            };
            if e.kind != EntryKind::ConfChange {
                continue;
            }
            // Checked when the entry was decoded (`wire`), and by the leader
            // that proposed it against the configuration before it, which
            // every replica derives from the same log.
            let change = crate::wire::decode_conf_change(&e.data).unwrap_or_else(|err| {
                panic!("entry {index}: configuration change does not decode: {err}")
            });
            current = current.apply(&change).unwrap_or_else(|err| {
                panic!("entry {index}: {change} cannot apply to {current}: {err}")
            });
            self.conf_changes.push(ConfEntry {
                index,
                membership: current.clone(),
            });
        }
        self.conf_scanned = self.conf_scanned.max(last);
        if current != self.membership {
            self.membership = current;
            let index = self.latest_conf_index().max(self.log.snapshot_meta().index);
            self.events.push(RaftEvent::ConfigChanged { index });
            if self.role == Role::Leader {
                self.track_progress();
            } else if !self.promotable() && self.role != Role::Follower {
                self.become_follower(self.term, None);
            }
        }
    }

    /// Leader: a progress tracker for every replica any configuration in
    /// the log names, and none for anyone else. A removed replica keeps
    /// receiving the log (counting for nothing) until compaction forgets
    /// it, so that it learns of its removal however long it was cut off,
    /// never campaigns again, and knows the leader to send requests to.
    fn track_progress(&mut self) {
        let mut replicas = self.remembered();
        replicas.extend(self.strays.iter().copied());
        replicas.sort();
        replicas.dedup();
        self.progress.retain(|id, _| replicas.contains(id));
        self.outgoing_snapshots
            .retain(|id, _| replicas.contains(id));
        let next = self.log.last_index() + 1;
        for id in replicas {
            if self.progress.contains_key(&id) {
                continue;
            }
            let mut pr = Progress::new(
                next,
                self.cfg.max_inflight_msgs,
                self.cfg.max_inflight_bytes,
            );
            if id == self.id {
                pr.matched = self.log.persisted();
                pr.become_replicate();
            }
            self.progress.insert(id, pr);
        }
    }

    /// Leader, once the latest change is committed: leave a joint
    /// configuration (C_old,new committed, so C_new may act alone from the
    /// moment the leave entry is appended); or, if the configuration no
    /// longer counts this leader as a voter, hand over and step down (the
    /// dissertation's §4.2.2: a leader removed by C_new manages the group
    /// until C_new commits, without counting itself).
    fn conf_duties(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if self
            .progress
            .keys()
            .any(|&id| !self.remembers(id) && !self.strays.contains(&id))
        {
            self.track_progress(); // compaction forgot a removed replica
        }
        if self.latest_conf_index() > self.log.committed() {
            return;
        }
        if self.membership.is_joint() {
            self.append_conf_change(&ConfChange::LeaveJoint);
            return;
        }
        if self.promotable() {
            return;
        }
        // Tell everyone the commit index, and hand leadership to a voter
        // that has everything, so that the group need not wait out an
        // election timeout.
        self.broadcast_heartbeat(false);
        let last = self.log.last_index();
        let successor = self
            .membership
            .voters
            .iter()
            .copied()
            .find(|v| self.progress.get(v).is_some_and(|pr| pr.matched == last));
        if let Some(to) = successor {
            self.send_timeout_now(to);
        }
        self.become_follower(self.term, None);
    }

    /// Handles one message from a peer of this group.
    pub fn step(&mut self, m: Message) {
        // Drop a campaign by a replica this log knows was removed (a vote
        // request from a replica that remembers a configuration we no
        // longer have): that is what must not disrupt the group. Take
        // everything else, from anyone in the cluster: a leader or voter
        // this log has not heard of yet belongs to a configuration ahead of
        // ours (as in Raft, a replica does not consult its configuration to
        // answer), and a removed replica's answers let the leader bring it
        // the entries that tell it it was removed. A replica that knows no
        // configuration yet does not vote at all.
        //
        // A candidate whose log is strictly ahead of ours (§5.4.1) is not
        // a removed replica but one added back by entries we have not
        // received: a removed replica never gets entries past its removal,
        // which we hold. Its campaign counts, or a group whose other
        // voters are gone deadlocks: the re-added replica waits for our
        // vote, and we, in the older configuration, cannot win without
        // the gone voters (seed 4749 of the membership-churn simulation).
        let campaign = matches!(
            m.body,
            MessageBody::PreVote { .. } | MessageBody::Vote { .. }
        );
        let removed_campaigner = campaign
            && !self.membership.contains(m.from)
            && self.remembers(m.from)
            && !self.log_is_behind(&m.body);
        let known = !(removed_campaigner || (campaign && !self.knows_configuration()));
        if m.to != self.id {
            return; // not for us
        }
        if let MessageBody::LeaderQuery = m.body {
            // Whatever the asker's term: the answer is what it needs.
            match self.role {
                Role::Leader if self.membership.contains(m.from) => {
                    self.wake();
                    self.broadcast_heartbeat(false);
                }
                Role::Leader => self.bring_stray_up_to_date(m.from),
                _ => {
                    if let Some(leader) = self.leader.filter(|&l| l != m.from) {
                        self.send(m.from, MessageBody::LeaderHint { leader });
                    }
                }
            }
            return;
        }
        if let MessageBody::LeaderHint { leader } = m.body {
            // A follower we asked (for a vote from outside its
            // configuration, or who leads) follows `leader`: ask it too
            // next time. A hint, whatever its term: the leader's answer,
            // not this, tells a removed replica it is out.
            if leader != self.id
                && self.role != Role::Leader
                && self.campaign_hints.len() < MAX_CAMPAIGN_HINTS
            {
                self.campaign_hints.insert(leader);
            }
            return;
        }
        if campaign
            && self.role != Role::Leader
            && !self.membership.contains(m.from)
            && let Some(leader) = self.leader.filter(|&l| l != m.from)
        {
            // A campaign from outside our configuration: perhaps a replica
            // removed so long ago that neither our log nor the leader's
            // still names it, campaigning to voters of its old
            // configuration, which may no longer include the leader. Tell it
            // whom we follow (seed 31 of the madsim linearizability test: a
            // replica removed while paused campaigned forever to two
            // followers that dropped its campaigns, since they held a
            // lease, while the leader was a node it had never heard of).
            self.send(m.from, MessageBody::LeaderHint { leader });
        }
        if campaign && self.role == Role::Leader && !self.membership.contains(m.from) {
            // A replica outside this leader's configuration campaigns: it
            // was removed while it could not hear of it (perhaps so long
            // ago that this log no longer names it). Bring it the log, or
            // the snapshot, that says it is out; its campaign counts for
            // nothing here.
            self.bring_stray_up_to_date(m.from);
            return;
        }
        if !known {
            return; // a removed replica's campaign: drop
        }
        if !matches!(m.body, MessageBody::HeartbeatResponse { .. }) {
            // Anything but the answer to our own quiesce heartbeat needs us awake.
            if !matches!(m.body, MessageBody::Heartbeat { quiesce: true, .. }) {
                self.wake();
            }
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::PreVote { .. }
                | MessageBody::Vote {
                    transfer: false, ..
                } if self.in_lease() => {
                    // §4.2.3: ignore disruptive candidates while we believe a
                    // leader is alive. This is also what makes leases safe.
                    return;
                }
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. } => {
                    // A stale leader: tell it about our term so it steps down.
                    // Without this, PreVote + CheckQuorum can leave it stuck.
                    self.send(
                        m.from,
                        MessageBody::AppendResponse {
                            success: false,
                            index: 0,
                            hint: 0,
                        },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return;
        }

        match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(&m, last_index, last_term, true),
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(&m, last_index, last_term, false),
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::PreCandidate | Role::Candidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    /// Drains everything this group wants done. Call after every input.
    pub fn take_ready(&mut self) -> Ready {
        self.conf_duties();
        if self.want_round {
            self.want_round = false;
            self.broadcast_heartbeat(false);
        }
        let mut ready = Ready::default();
        // The hard state first: a torn write may keep a prefix of these
        // records, and entries of a term whose record was lost would come
        // back in a log whose term is lower (core simulation, seed 153: a
        // sole voter won the same term twice across a crash, and could have
        // written two different entries at one index of that term). A
        // commit index ahead of the entries that survive is clamped to them
        // on recovery.
        let hs = self.hard_state();
        if hs != self.saved_hard_state {
            ready.persist.push(PersistRecord::HardState(hs));
            self.saved_hard_state = hs;
        }
        let (snapshot, entries) = self.log.take_unsaved();
        if let Some(snap) = snapshot {
            ready.persist.push(PersistRecord::Snapshot(snap));
        }
        if !entries.is_empty() {
            ready.persist.push(PersistRecord::Entries(entries));
        }
        ready.snapshot_to_apply = self.log.take_snapshot_to_apply();
        ready.committed = self.log.take_committed(self.cfg.max_apply_batch);
        ready.messages = std::mem::take(&mut self.msgs);
        ready.messages_after_persist = std::mem::take(&mut self.msgs_after_persist);
        ready.reads = std::mem::take(&mut self.ready_reads);
        ready.failed_reads = std::mem::take(&mut self.failed_reads);
        ready.events = std::mem::take(&mut self.events);
        ready
    }

    /// Whether `take_ready` would return something.
    pub fn has_ready(&self) -> bool {
        self.want_round
            || !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.log.committed() > self.log.applied()
            || !self.ready_reads.is_empty()
            || !self.failed_reads.is_empty()
            || !self.events.is_empty()
            || self.hard_state() != self.saved_hard_state
            || self.log.has_unsaved()
    }

    // ----------------------------------------------------------- transitions

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = None;
            self.leader_commit = 0;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.votes.clear();
        self.progress.clear();
        self.outgoing_snapshots.clear();
        self.snapshot_wanted_by.clear();
        self.image_wanted = false;
        self.strays.clear();
        self.incoming_snapshot = None;
        if let Some(to) = self.transferee.take() {
            self.events.push(RaftEvent::TransferAborted { to });
        }
        // Reads waiting for our leadership can no longer be confirmed here.
        self.failed_reads
            .extend(self.pending_reads.drain(..).map(|r| r.ctx));
        self.failed_reads.append(&mut self.reads_before_commit);
        self.want_round = false;
        self.round_sent_at.clear();
        self.quiesced = false;
        self.idle_ticks = 0;
    }

    fn reset_randomized_election_timeout(&mut self) {
        let e = self.cfg.election_ticks;
        let jitter = match self.cfg.election_jitter_ticks.unwrap_or(e) {
            0 => 0,
            j => self.rng.random_range(0..j),
        };
        self.randomized_election_timeout = e + jitter;
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        let changed = self.role != Role::Follower || self.term != term || self.leader != leader;
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        if changed {
            self.events.push(RaftEvent::RoleChanged {
                role: Role::Follower,
                term,
                leader,
            });
        }
    }

    /// Starts an election now, as if the election timer fired (operators,
    /// tests, and a node that knows the leader is gone use this).
    pub fn start_election(&mut self) {
        if self.role != Role::Leader && self.promotable() && !self.honours_unknown_lease {
            self.wake();
            self.campaign_pre_vote();
        }
    }

    fn campaign_pre_vote(&mut self) {
        self.reset(self.term);
        self.role = Role::PreCandidate;
        self.events.push(RaftEvent::RoleChanged {
            role: Role::PreCandidate,
            term: self.term,
            leader: None,
        });
        self.votes.insert(self.id, true);
        if self.tally() == VoteResult::Won {
            self.campaign(false);
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let term = self.term + 1;
        for peer in self.peers_to_ask() {
            self.send_with_term(
                peer,
                term,
                MessageBody::PreVote {
                    last_index,
                    last_term,
                },
            );
        }
    }

    fn campaign(&mut self, transfer: bool) {
        self.reset(self.term + 1);
        self.role = Role::Candidate;
        self.vote = Some(self.id);
        self.events.push(RaftEvent::RoleChanged {
            role: Role::Candidate,
            term: self.term,
            leader: None,
        });
        self.votes.insert(self.id, true);
        if self.tally() == VoteResult::Won {
            self.become_leader();
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.voting_peers() {
            self.send(
                peer,
                MessageBody::Vote {
                    last_index,
                    last_term,
                    transfer,
                },
            );
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.sent_timeout_now = false;
        self.track_progress();
        self.events.push(RaftEvent::RoleChanged {
            role: Role::Leader,
            term: self.term,
            leader: Some(self.id),
        });
        // §8: commit an entry of our own term to learn the commit index.
        let index = self.log.last_index() + 1;
        self.append_entries(vec![Entry {
            index,
            term: self.term,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        }]);
    }

    // ------------------------------------------------------------- elections

    /// Does this member believe a leader may hold a lease on its
    /// acknowledgement? Then it ignores disruptive candidates.
    fn in_lease(&self) -> bool {
        (self.leader.is_some() || self.honours_unknown_lease)
            && (self.quiesced || self.election_elapsed < self.cfg.election_ticks)
    }

    fn handle_vote_request(&mut self, m: &Message, last_index: u64, last_term: u64, pre: bool) {
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && m.term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
        if pre {
            // A granted pre-vote answers in the term the candidate would use.
            let term = if granted { m.term } else { self.term };
            self.send_with_term(m.from, term, MessageBody::PreVoteResponse { granted });
        } else {
            if granted {
                self.election_elapsed = 0;
                self.vote = Some(m.from);
            }
            self.send(m.from, MessageBody::VoteResponse { granted });
        }
    }

    fn tally(&self) -> VoteResult {
        self.membership
            .vote_result(|id| self.votes.get(&id).copied())
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::SnapshotChunk { .. } => {
                // A leader exists in our term (§5.2).
                self.become_follower(m.term, Some(m.from));
                self.step_follower(m);
            }
            MessageBody::PreVoteResponse { granted } if self.role == Role::PreCandidate => {
                if granted && m.term != self.term + 1 {
                    return;
                }
                self.votes.insert(m.from, granted);
                match self.tally() {
                    VoteResult::Won => self.campaign(false),
                    VoteResult::Lost => self.become_follower(self.term, None),
                    VoteResult::Pending => {}
                }
            }
            MessageBody::VoteResponse { granted } if self.role == Role::Candidate => {
                self.votes.insert(m.from, granted);
                match self.tally() {
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => self.become_follower(self.term, None),
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
    }

    // -------------------------------------------------------------- follower

    /// A message of our term's leader arrived: it is alive, and whatever
    /// lease we honour is now its.
    fn heard_from_leader(&mut self, leader: NodeId) {
        if let Some(known) = self.leader {
            assert_eq!(
                known, leader,
                "two leaders in term {} ({known} and {leader}): Raft's election safety (§5.2) is broken",
                self.term
            );
        }
        self.election_elapsed = 0;
        self.leader = Some(leader);
        self.honours_unknown_lease = false;
        self.campaign_hints.clear();
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.heard_from_leader(m.from);
                self.leader_commit = self.leader_commit.max(commit);
                self.handle_append(m.from, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat {
                commit,
                round,
                quiesce,
            } => {
                self.heard_from_leader(m.from);
                self.leader_commit = self.leader_commit.max(commit);
                // The leader sends min(commit, our match), so this is safe.
                self.log.commit_to(commit.min(self.log.last_index()));
                if quiesce && !self.quiesced {
                    self.quiesced = true;
                    self.events.push(RaftEvent::Quiesced);
                }
                self.send(m.from, MessageBody::HeartbeatResponse { round });
            }
            MessageBody::SnapshotChunk {
                meta,
                total_len,
                offset,
                data,
            } => {
                self.heard_from_leader(m.from);
                self.leader_commit = self.leader_commit.max(meta.index);
                self.handle_snapshot_chunk(m.from, meta, total_len, offset, data);
            }
            MessageBody::TimeoutNow if self.promotable() => self.campaign(true),
            _ => {}
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) {
        if !self.knows_configuration() {
            // A new replica: entries mean nothing without the configuration
            // they change. Refusing at index 0 asks for a snapshot.
            self.send(
                from,
                MessageBody::AppendResponse {
                    success: false,
                    index: 0,
                    hint: 0,
                },
            );
            return;
        }
        if prev_index < self.log.committed() {
            let index = self.log.committed();
            self.send(
                from,
                MessageBody::AppendResponse {
                    success: true,
                    index,
                    hint: 0,
                },
            );
            return;
        }
        let appended = self.log.maybe_append(prev_index, prev_term, entries);
        self.refresh_conf();
        match appended {
            Some(last_new) => {
                self.log.commit_to(commit.min(last_new));
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        success: true,
                        index: last_new,
                        hint: 0,
                    },
                );
            }
            None => {
                let hint = self.log.last_index();
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        success: false,
                        index: prev_index,
                        hint,
                    },
                );
            }
        }
    }

    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        total_len: u64,
        offset: u64,
        data: Bytes,
    ) {
        let (index, term) = (meta.index, meta.term);
        // Nothing to receive if we already have what the snapshot covers
        // (answered as a whole snapshot would be, below).
        if index <= self.log.committed() || self.log.match_term(index, term) {
            self.incoming_snapshot = None;
            self.handle_snapshot(
                from,
                Snapshot {
                    meta,
                    data: Bytes::new(),
                },
            );
            return;
        }
        let outcome = IncomingSnapshot::accept(
            &mut self.incoming_snapshot,
            from,
            self.term,
            meta,
            total_len,
            offset,
            data,
        );
        match outcome {
            ChunkOutcome::Ack(received) => {
                self.send(from, MessageBody::SnapshotAck { index, received });
            }
            ChunkOutcome::Complete(snapshot) => self.handle_snapshot(from, snapshot),
        }
    }

    /// A whole snapshot from the leader (its last chunk just arrived). Also
    /// answers chunks of a snapshot whose entries we already have; `snapshot`
    /// then carries no data and is not installed.
    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index <= self.log.committed() {
            let committed = self.log.committed();
            self.send(
                from,
                MessageBody::AppendResponse {
                    success: true,
                    index: committed,
                    hint: 0,
                },
            );
            return;
        }
        if self.log.match_term(index, term) {
            // We already have the snapshot's entries: just learn the commit.
            self.log.commit_to(index);
        } else {
            self.conf_base = snapshot.meta.membership.clone();
            self.conf_changes.clear();
            self.conf_scanned = index;
            self.log.install_snapshot(snapshot);
            self.refresh_conf();
        }
        self.send(
            from,
            MessageBody::AppendResponse {
                success: true,
                index,
                hint: 0,
            },
        );
    }

    // ---------------------------------------------------------------- leader

    fn append_entries(&mut self, entries: Vec<Entry>) {
        self.log.append(entries);
        self.refresh_conf();
        // Our own entries count toward commit only once durable (on_persisted).
        self.broadcast_append(false);
        self.maybe_commit();
    }

    fn broadcast_append(&mut self, send_if_empty: bool) {
        for peer in self.replication_targets() {
            self.maybe_send_append(peer, send_if_empty);
        }
    }

    /// Sends `peer` the entries it lacks, or a snapshot if they were compacted.
    fn maybe_send_append(&mut self, peer: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&peer) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let entries = if self.congested_peers.contains(&peer) {
            // Only an empty append (a probe, or news of the commit index);
            // a compacted position waits as well.
            if !send_if_empty || self.log.term(prev_index).is_none() {
                return false;
            }
            Ok(Vec::new())
        } else {
            self.log.entries_from(
                next,
                self.cfg.max_entries_per_msg,
                self.cfg.max_bytes_per_msg,
            )
        };
        let wants_snapshot = self.snapshot_wanted_by.contains(&peer);
        match (self.log.term(prev_index), entries) {
            (Some(prev_term), Ok(entries)) if !wants_snapshot => {
                if entries.is_empty() && !send_if_empty {
                    return false;
                }
                let last = entries.last().map_or(prev_index, |e| e.index);
                let n = entries.len();
                let bytes = entries.iter().map(|e| e.data.len()).sum();
                let commit = self.log.committed();
                self.send(
                    peer,
                    MessageBody::Append {
                        prev_index,
                        prev_term,
                        entries,
                        commit,
                    },
                );
                if let Some(pr) = self.progress.get_mut(&peer) {
                    pr.on_sent(last, n, bytes);
                }
                true
            }
            _ => {
                // The entries were compacted away, or the follower is new:
                // send a snapshot (§7), in chunks. The log keeps none (only
                // its position), so ask the driver for one
                // (`wants_snapshot`) and send it when `compact` or
                // `supply_snapshot_image` hands it over.
                // A new replica needs one that names it: that is its proof it
                // was added, and how it learns the group.
                let Some(snapshot) = self.image_on_hand.clone().filter(|s| {
                    s.meta.index > 0 && (!wants_snapshot || self.snapshot_adds(&s.meta, peer))
                }) else {
                    // Only for a follower heard from lately: one that is
                    // down would cost a snapshot's encoding per probe.
                    if !wants_snapshot
                        && prev_index < self.log.snapshot_meta().index
                        && self.progress.get(&peer).is_some_and(|pr| pr.recent_active)
                    {
                        self.image_wanted = true;
                    }
                    return false;
                };
                self.snapshot_wanted_by.remove(&peer);
                let index = snapshot.meta.index;
                if let Some(pr) = self.progress.get_mut(&peer) {
                    pr.become_snapshot(index);
                }
                self.outgoing_snapshots
                    .insert(peer, OutgoingSnapshot::new(snapshot));
                self.send_snapshot_chunks(peer);
                true
            }
        }
    }

    /// Sends `peer` the chunks of its snapshot transfer the window allows.
    fn send_snapshot_chunks(&mut self, peer: NodeId) {
        if self.congested_peers.contains(&peer) {
            return;
        }
        let Some(out) = self.outgoing_snapshots.get_mut(&peer) else {
            return;
        };
        let (chunk_bytes, window) = (
            self.cfg.snapshot_chunk_bytes,
            self.cfg.max_snapshot_chunks_inflight,
        );
        let mut chunks = Vec::new();
        while let Some(c) = out.next_chunk(chunk_bytes, window) {
            chunks.push(c);
        }
        let (meta, total_len) = (out.meta().clone(), out.total_len());
        for c in chunks {
            self.send(
                peer,
                MessageBody::SnapshotChunk {
                    meta: meta.clone(),
                    total_len,
                    offset: c.offset,
                    data: c.data,
                },
            );
        }
    }

    /// Advances commit to the highest index durable on a quorum, if that entry
    /// is from the current term (§5.4.2: older entries are committed only
    /// indirectly — the Figure 8 rule).
    fn maybe_commit(&mut self) -> bool {
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.matched = self.log.persisted();
        }
        let progress = &self.progress;
        let quorum_index = self
            .membership
            .quorum_value(|id| progress.get(&id).map_or(0, |pr| pr.matched));
        if quorum_index <= self.log.committed() || self.log.term(quorum_index) != Some(self.term) {
            return false;
        }
        let first_commit_in_term = !self.committed_in_term();
        self.log.commit_to(quorum_index);
        if first_commit_in_term {
            // Reads that arrived before we knew the commit index can start now.
            let index = self.log.committed();
            let round = self.round + 1;
            for ctx in std::mem::take(&mut self.reads_before_commit) {
                if self.membership.is_sole_voter(self.id) {
                    self.ready_reads.push(ReadState { ctx, index });
                } else {
                    self.pending_reads
                        .push_back(PendingRead { ctx, index, round });
                    self.want_round = true;
                }
            }
        }
        true
    }

    fn broadcast_heartbeat(&mut self, quiesce: bool) {
        self.round += 1;
        self.round_sent_at.push_back((self.round, self.ticks));
        while self.round_sent_at.len() > MAX_ROUNDS_REMEMBERED {
            self.round_sent_at.pop_front();
        }
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.acked_round = self.round;
        }
        for peer in self.replication_targets() {
            let matched = self.progress.get(&peer).map_or(0, |p| p.matched);
            let commit = self.log.committed().min(matched);
            self.send(
                peer,
                MessageBody::Heartbeat {
                    commit,
                    round: self.round,
                    quiesce,
                },
            );
        }
        self.release_reads();
    }

    /// The highest heartbeat round acknowledged by a quorum (us included).
    fn quorum_acked_round(&self) -> u64 {
        let progress = &self.progress;
        self.membership
            .quorum_value(|id| progress.get(&id).map_or(0, |pr| pr.acked_round))
    }

    fn lease_expires_at(&self) -> Option<u64> {
        let round = self.quorum_acked_round();
        let sent = self
            .round_sent_at
            .iter()
            .find(|(r, _)| *r == round)
            .map(|&(_, t)| t)?;
        Some(sent + self.cfg.lease_ticks())
    }

    fn release_reads(&mut self) {
        let confirmed = self.quorum_acked_round();
        while self
            .pending_reads
            .front()
            .is_some_and(|r| r.round <= confirmed)
        {
            let Some(r) = self.pending_reads.pop_front() else {
                break;
            };
            self.ready_reads.push(ReadState {
                ctx: r.ctx,
                index: r.index,
            });
        }
    }

    fn can_quiesce(&self) -> bool {
        let last = self.log.last_index();
        self.idle_ticks >= self.cfg.quiesce_after_ticks
            && self.transferee.is_none()
            && self.pending_reads.is_empty()
            && self.reads_before_commit.is_empty()
            && self.log.committed() == last
            && self.log.applied() == last
            // Replicas still in the group (a removed one, perhaps gone
            // for good, must not keep the group awake).
            && self
                .progress
                .iter()
                .filter(|(id, _)| self.membership.contains(**id))
                .all(|(_, p)| p.matched == last && p.acked_round == self.round)
            // A snapshot transfer's resends and give-up run on ticks.
            && self.outgoing_snapshots.is_empty()
    }

    fn quiesce(&mut self) {
        self.broadcast_heartbeat(true);
        self.quiesced = true;
        self.events.push(RaftEvent::Quiesced);
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        if let Some(pr) = self.progress.get_mut(&from) {
            pr.recent_active = true;
        }
        match m.body {
            MessageBody::AppendResponse {
                success,
                index,
                hint,
            } => {
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                if !success && index == 0 {
                    // Only a replica that knows no configuration refuses
                    // entries at index 0 (every log holds the empty prefix):
                    // a new one. It must start from a snapshot, if it is
                    // still in the group (a removed one gets nothing more).
                    // (A refusal delayed or duplicated on the way can come
                    // from one that caught up since: madsim churn seed 971.
                    // Its snapshot transfer then ends at its first
                    // acknowledgement, below, or times out.)
                    if !self.membership.contains(from) {
                        return;
                    }
                    self.snapshot_wanted_by.insert(from);
                    pr.become_probe();
                    self.maybe_send_append(from, true);
                    return;
                }
                if !success {
                    if pr.maybe_decr_to(index, hint) {
                        if pr.state == ProgressState::Replicate {
                            pr.become_probe();
                        }
                        self.maybe_send_append(from, true);
                    }
                    return;
                }
                // A follower holds only what this term's leader sent it (or
                // what was committed before, which this leader holds too).
                assert!(
                    index <= self.log.last_index(),
                    "{from} acknowledged index {index} in term {}, beyond this leader's last index {}",
                    self.term,
                    self.log.last_index()
                );
                if self.strays.contains(&from)
                    && index >= self.latest_conf_index().max(self.log.snapshot_meta().index)
                {
                    // It holds the configuration that leaves it out.
                    self.strays.remove(&from);
                }
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                let was_paused = pr.is_paused();
                if !pr.maybe_update(index) {
                    // Nothing new; but a follower that holds what its
                    // snapshot would give it needs no snapshot.
                    if let ProgressState::Snapshot { pending_index } = pr.state
                        && pr.matched >= pending_index
                    {
                        pr.become_probe();
                        self.outgoing_snapshots.remove(&from);
                        self.maybe_send_append(from, false);
                    }
                    return;
                }
                self.idle_ticks = 0;
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot { pending_index } if pr.matched >= pending_index => {
                        pr.become_probe();
                        self.outgoing_snapshots.remove(&from);
                    }
                    _ => {}
                }
                if self.maybe_commit() {
                    self.broadcast_append(true);
                } else if was_paused {
                    self.maybe_send_append(from, false);
                }
                while self.maybe_send_append(from, false) {}
                if self.transferee == Some(from)
                    && self
                        .progress
                        .get(&from)
                        .is_some_and(|p| p.matched == self.log.last_index())
                {
                    self.send_timeout_now(from);
                }
            }
            MessageBody::HeartbeatResponse { round } => {
                let last = self.log.last_index();
                let stall_ticks = (self.cfg.election_ticks / 2).max(1);
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                pr.acked_round = pr.acked_round.max(round);
                pr.probe_sent = false;
                // Appends may have been lost: free a slot of a full window and
                // send even an empty append, whose rejection resets the probe.
                pr.free_first_inflight_if_stalled(stall_ticks);
                if pr.matched < last {
                    self.maybe_send_append(from, true);
                }
                self.release_reads();
            }
            MessageBody::SnapshotAck { index, received } => {
                let Some(out) = self.outgoing_snapshots.get_mut(&from) else {
                    return; // the transfer ended; a late answer
                };
                if out.meta().index != index {
                    return;
                }
                if out.on_ack(received)
                    && let Some(pr) = self.progress.get_mut(&from)
                {
                    pr.snapshot_ticks = 0;
                }
                self.send_snapshot_chunks(from);
            }
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::SnapshotChunk { .. } => panic!(
                "two leaders in term {} ({} and {from}): Raft's election safety (§5.2) is broken",
                self.term, self.id
            ),
            _ => {}
        }
    }

    // ------------------------------------------------------------------ send

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody) {
        // Votes and append acknowledgements claim durable state: they wait
        // for the persist of everything before them (thesis §3.8: a server
        // must not vote twice in a term, nor count toward an entry's commit
        // before it is durable). The leader's own traffic depends only on its
        // term, which was durable before it could win (§10.2.1 lets the
        // leader write its log in parallel with followers). A heartbeat
        // answer claims nothing durable: it says "I am in your term and
        // heard your round", true the moment it is sent, which is all
        // ReadIndex, leases and CheckQuorum need. It leaves at once, as in
        // etcd-raft, so a follower whose disk is slow (saturated by large
        // entries) does not look dead to its leader.
        let after_persist = matches!(
            body,
            MessageBody::Vote { .. }
                | MessageBody::VoteResponse { .. }
                | MessageBody::AppendResponse { .. }
        );
        let m = Message {
            from: self.id,
            to,
            term,
            body,
        };
        if after_persist {
            self.msgs_after_persist.push(m);
        } else {
            self.msgs.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first: u64, last: u64, term: u64) -> PersistRecord {
        PersistRecord::Entries(
            (first..=last)
                .map(|index| Entry {
                    index,
                    term,
                    kind: EntryKind::Normal,
                    data: Bytes::new(),
                })
                .collect(),
        )
    }

    /// WAL replay: a later run of entries replaces everything from its first
    /// index on (a leader overwrote a conflicting suffix), extends the log
    /// when it starts past the end, and leaves earlier entries alone.
    #[test]
    fn replayed_entries_cut_the_log_at_their_first_index() {
        let mut s = RaftStorage::default();
        s.apply(run(1, 5, 1));
        s.apply(run(3, 4, 2));
        s.apply(run(5, 6, 2));
        s.apply(run(6, 8, 3));
        let log: Vec<(u64, u64)> = s.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(
            log,
            [
                (1, 1),
                (2, 1),
                (3, 2),
                (4, 2),
                (5, 2),
                (6, 3),
                (7, 3),
                (8, 3)
            ]
        );
        s.apply(run(2, 2, 4));
        let log: Vec<(u64, u64)> = s.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(log, [(1, 1), (2, 4)]);
    }

    fn snapshot(index: u64, term: u64) -> PersistRecord {
        PersistRecord::Snapshot(Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                ..SnapshotMeta::default()
            },
            data: Bytes::new(),
        })
    }

    /// WAL replay of a snapshot record: entries after it survive only if the
    /// log holds the snapshot's own entry (same index and term); otherwise
    /// the snapshot replaced a log that diverged, and nothing of it stays.
    #[test]
    fn a_replayed_snapshot_keeps_only_a_log_that_continues_it() {
        let indexes = |s: &RaftStorage| s.entries.iter().map(|e| e.index).collect::<Vec<_>>();
        let mut s = RaftStorage::default();
        s.apply(run(1, 5, 1));
        s.apply(snapshot(3, 1));
        assert_eq!(indexes(&s), [4, 5]);
        s.apply(snapshot(4, 2));
        assert_eq!(indexes(&s), Vec::<u64>::new(), "entry 4 is of term 1");
        s.apply(run(5, 6, 2));
        s.apply(snapshot(9, 2));
        assert_eq!(indexes(&s), Vec::<u64>::new(), "no entry 9");
        // Entry 6 exists, and term 2 exists, but not entry 6 of term 2.
        s.apply(run(5, 5, 2));
        s.apply(run(6, 7, 3));
        s.apply(snapshot(6, 2));
        assert_eq!(indexes(&s), Vec::<u64>::new(), "entry 6 is of term 3");
        s.apply(run(7, 8, 3));
        s.apply(snapshot(7, 3));
        assert_eq!(indexes(&s), [8]);
    }
}
