//! A ringkv node: the Raft groups of every partition this node replicates,
//! their state machines, the failure detector, and client request routing.
//!
//! Inputs are `handle_*` calls with the current time; outputs are drained with
//! the `poll_*` calls after every input (the quinn-proto / etcd `RawNode`
//! shape). The driver owns all I/O: it appends each [`IoRequest`] to the WAL
//! (one fsync for the whole batch — group commit across every partition) and
//! reports it with [`Node::handle_persisted`]; it sends each [`PeerBatch`]; it
//! forwards a request when told to.
//!
//! What the node adds over single groups:
//! - **routing**: `partition_of(key)`; a write or linearizable read on a
//!   group this node leads is served here; otherwise the reply is
//!   [`Reply::Forward`] to the leader (or to a replica, if this node does not
//!   host the partition); stale reads are served by any replica;
//! - **batching**: everything produced between two rounds of `poll_transmit`
//!   for one peer goes out together, and everything to persist between two
//!   `poll_io` calls as one [`IoRequest`] (group commit). A round's messages
//!   to one peer form one [`Lane::Control`] batch (votes, heartbeats,
//!   answers) and as many [`Lane::Bulk`] batches (entries, snapshot chunks)
//!   as [`NodeConfig::max_batch_bytes`] requires, the groups' bulk messages
//!   taken in turn so that one busy group cannot crowd out the others;
//! - **bounded messages**: every batch fits in `max_batch_bytes`, except one
//!   holding a single message that is larger on its own (an entry with a
//!   value near the limit); [`NodeConfig::max_peer_frame_bytes`] bounds
//!   both, for the transport's message limit;
//! - **paced compaction**: groups due for a snapshot (by entry count, by log
//!   size, or at the driver's request) queue up, and ticks work through the
//!   queue at `max_snapshot_bytes_per_tick` of state per tick on average (a
//!   larger snapshot is paid off over later ticks; a small one costs at
//!   least `snapshot_cost_floor_bytes`, since its file and fsyncs cost the
//!   disk the same whatever its size), so a node never snapshots all its
//!   partitions at once; a leader also holds off briefly
//!   while a follower it is streaming to lacks the entries to be folded;
//! - **persist before speak** across groups: a group's gated messages wait for
//!   the WAL batch holding that group's latest records;
//! - **node heartbeats**: every batch counts as a heartbeat; a peer that got
//!   nothing for a heartbeat interval gets an empty batch. They feed the phi
//!   accrual detector, which wakes quiesced groups whose leader went down;
//! - **request lifetimes**: every request gets exactly one reply: a result, a
//!   forward, an error, or after `request_timeout` "outcome unknown" (writes)
//!   or "timeout" (reads);
//! - **cluster metadata** (`node/cluster.rs`): the metadata group on the nodes
//!   that host it, the genesis document, and gossip that brings every node
//!   the latest document and the metadata group's leader;
//! - **placement** (`node/controller.rs`): every node reports the groups it leads
//!   to the metadata group's leader, which plans and sends each step to the
//!   group's leader.
//!
//! Not here (yet): TTLs.

mod cluster;
mod controller;

pub use controller::{
    Drain, DrainError, RegisterError, Registration, TokenChange, TokenChangeError, TokenEdit,
};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::detector::{DetectorConfig, DetectorEvent, FailureDetector, PeerStatus};
use crate::io::{GroupMessage, IoId, IoRequest, Lane, PeerBatch, Transmit, WalRecord};
use crate::kv::{ApplyOutcome, Command, KeyValue, KvStore, Precondition, Refusal, Ttl};
use crate::metadata::{ClientAddresses, METADATA_GROUP};
use crate::placement::planner::PlannerConfig;
use crate::raft::{
    ConfChange, EntryKind, HardState, Membership, Message, MessageBody, PersistRecord,
    ProposeError, Raft, RaftConfig, RaftEvent, RaftStorage, Role, Tombstone,
};
use crate::ring::{Ring, RingConfig, RingError};
use crate::routing::Hops;
use crate::types::{NodeId, PartitionId, Time};
use crate::watch::Feed;
use crate::wire;

/// Static configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The members this node started the cluster with, this node included
    /// (`--peers`), or, for a node that joined a formed cluster, the
    /// members it was told of when it joined. Before any document arrives
    /// they are the node's peers and the ring it routes by.
    pub members: Vec<NodeId>,
    /// Whether this node founded the cluster: its first boot creates the
    /// groups the ring over `members` gives it (and the metadata group's,
    /// on the lowest ids). A node that joined a formed cluster starts with
    /// no group and is given replicas by the controller.
    pub founding: bool,
    /// Other members this node already knows of at boot (its cluster
    /// record lists them: they joined later): peers from the start, before
    /// the metadata document reaches this node.
    pub known_members: Vec<NodeId>,
    /// The members' gRPC addresses as this node was told them (`--peers`):
    /// what the genesis metadata document records. May be empty.
    pub addresses: BTreeMap<NodeId, String>,
    /// Where this node serves REST and the Redis protocol: what it tells
    /// the controller, which records it in the member list.
    pub client_addresses: ClientAddresses,
    pub ring: RingConfig,
    pub raft: RaftConfig,
    pub detector: DetectorConfig,
    /// One Raft tick per interval of the node's clock.
    pub tick_interval: Duration,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// After this long a pending request is answered "outcome unknown"
    /// (writes) or "timeout" (reads).
    pub request_timeout: Duration,
    /// How long a request waits on a replica whose group has no leader (an
    /// election or a leadership transfer under way) before the client hears
    /// `no_leader`; never past the request's own deadline. Zero: at once.
    pub leader_wait: Duration,
    /// Compact a group's log once this many applied entries follow its snapshot.
    pub snapshot_threshold: u64,
    /// ... or once the log's memory (payload plus
    /// [`LOG_ENTRY_OVERHEAD_BYTES`] per entry) reaches half the group's
    /// state, but at least [`NodeConfig::snapshot_log_floor_bytes`] and at
    /// most this. The log then costs at most half again the state's
    /// memory (a quarter on average), and a snapshot, which costs the
    /// state's size to write, is taken at most once per half the state's
    /// size of logged data (write amplification at most 2).
    pub snapshot_threshold_bytes: u64,
    /// The least log memory that makes a group due for a snapshot by size
    /// (so a group of a few keys is not snapshotted at every write).
    pub snapshot_log_floor_bytes: u64,
    /// Compaction's pace: snapshots of this many bytes of state per tick on
    /// average. A larger snapshot is taken whole and then paid off over the
    /// following ticks (a snapshot debt), so compaction never bursts.
    pub max_snapshot_bytes_per_tick: u64,
    /// The least a snapshot costs against that pace, however small the
    /// state: writing one is a file, two fsyncs and a rename whatever its
    /// size, so a thousand partitions of a few KB each must not all go in
    /// one tick (with the defaults: at most 4 snapshots per tick).
    pub snapshot_cost_floor_bytes: u64,
    /// Encoded bytes per peer batch (see [`NodeConfig::max_peer_frame_bytes`]).
    pub max_batch_bytes: usize,
    /// Requests in flight on this node beyond this are refused with `Busy`.
    pub max_pending_requests: usize,
    /// Command bytes of writes this node proposed and has not answered yet;
    /// a proposal beyond this is refused with `Busy` (at once, safe to
    /// retry) rather than queued behind them until it times out. It also
    /// bounds what the transport must queue for each follower (see
    /// [`NodeConfig::max_peer_frame_bytes`]). A single write is always
    /// admitted when none is pending.
    pub max_pending_write_bytes: usize,
    /// The placement controller's rules (used while this node leads the
    /// metadata group).
    pub placement: PlannerConfig,
    /// How often the metadata group's leader plans.
    pub placement_interval: Duration,
    /// How often a node reports the groups it leads to the controller.
    pub report_interval: Duration,
    /// Emit [`Event::Observed`]: what every group did, as Raft's safety
    /// properties speak of it, for the simulators' invariant checker
    /// ([`crate::check::invariants`]). Off in production: it costs an event
    /// and a hash of the command per applied entry.
    pub observe: bool,
    /// Record every data partition's changes for watchers
    /// ([`Node::poll_feed`]). Off unless the driver drains them (the
    /// server does): undrained, they would pile up.
    pub watch: bool,
}

impl NodeConfig {
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        NodeConfig {
            id,
            members,
            founding: true,
            known_members: Vec::new(),
            addresses: BTreeMap::new(),
            client_addresses: ClientAddresses::default(),
            ring: RingConfig::default(),
            raft: RaftConfig::default(),
            detector: DetectorConfig::default(),
            tick_interval: Duration::from_millis(50),
            max_key_bytes: 4 << 10,
            max_value_bytes: 1 << 20,
            request_timeout: Duration::from_secs(5),
            leader_wait: Duration::from_secs(1),
            snapshot_threshold: 10_000,
            snapshot_threshold_bytes: 64 << 20,
            snapshot_log_floor_bytes: 256 << 10,
            max_snapshot_bytes_per_tick: 4 << 20,
            snapshot_cost_floor_bytes: 1 << 20,
            max_batch_bytes: 4 << 20,
            max_pending_requests: 100_000,
            max_pending_write_bytes: 64 << 20,
            placement: PlannerConfig {
                // Off unless the driver turns it on (the server does, by
                // default): with it, the controller moves healthy groups
                // toward the ring over the `up` members, which gives a
                // joined node its share and also undoes an operator's
                // `move-replica`.
                rebalance: false,
                ..PlannerConfig::default()
            },
            placement_interval: Duration::from_secs(1),
            report_interval: Duration::from_millis(500),
            observe: false,
            watch: false,
        }
    }
}

impl NodeConfig {
    /// The longest a running peer goes without a batch from this node: a
    /// peer that got nothing for this long gets an empty one (a node
    /// heartbeat). Transports may rely on it to tell a silent link from a
    /// quiet one.
    pub fn peer_heartbeat_interval(&self) -> Duration {
        self.tick_interval * self.raft.heartbeat_ticks
    }

    /// The largest encoded [`PeerBatch`] this node ever emits: a full batch,
    /// or a batch of one append carrying one entry of the largest key and
    /// value. A transport sets its message limit (sending and receiving) to
    /// at least this; every node of a cluster must agree on the limits it
    /// derives from.
    pub fn max_peer_frame_bytes(&self) -> usize {
        let largest_entry = self.max_key_bytes + self.max_value_bytes + Command::MAX_OVERHEAD_BYTES;
        let single = wire::MESSAGE_OVERHEAD_BYTES + wire::ENTRY_OVERHEAD_BYTES + largest_entry;
        self.max_batch_bytes.max(single) + wire::PEER_BATCH_OVERHEAD_BYTES
    }

    /// Checks that every message the groups produce fits in a batch.
    fn validate(&self) -> Result<(), StartError> {
        let append = wire::MESSAGE_OVERHEAD_BYTES
            + self.raft.max_bytes_per_msg
            + self.raft.max_entries_per_msg * wire::ENTRY_OVERHEAD_BYTES;
        let chunk = wire::MESSAGE_OVERHEAD_BYTES
            // A joint configuration lists up to twice the voters, plus
            // the learners being caught up.
            + wire::snapshot_meta_len_bound(3 * self.ring.replication_factor)
            + self.raft.snapshot_chunk_bytes;
        let need = append.max(chunk) + wire::PEER_BATCH_OVERHEAD_BYTES;
        if self.max_batch_bytes < need {
            return Err(StartError::Config(format!(
                "max_batch_bytes {} is too small for an append of {} payload bytes ({} entries) \
                 or a snapshot chunk of {} bytes: it must be at least {need}",
                self.max_batch_bytes,
                self.raft.max_bytes_per_msg,
                self.raft.max_entries_per_msg,
                self.raft.snapshot_chunk_bytes
            )));
        }
        Ok(())
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// (Its message starts "ring config:".)
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("node {0} is not in the member list")]
    NotAMember(NodeId),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("recovered snapshot of partition {partition} is corrupt: {reason}")]
    CorruptSnapshot {
        partition: PartitionId,
        reason: String,
    },
}

/// Why a node stopped itself: it met a state it cannot go on from without
/// diverging from its group. A halted node takes no more input and emits
/// no more IO or messages; the driver stops the process (fail-stop, as
/// etcd-raft and TigerBeetle do) rather than let a replica serve state its
/// group never had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    #[error(
        "partition {partition}: the snapshot at index {index} (term {term}) its leader sent \
         does not decode ({reason}); this replica cannot apply it, so the node stops rather \
         than serve stale state (nothing of the snapshot was written)"
    )]
    UndecodableSnapshot {
        partition: PartitionId,
        index: u64,
        term: u64,
        reason: String,
    },
    #[error(
        "the cluster metadata document at version {version}, committed by its group, does not \
         decode ({reason}); this replica's state is not its group's, so the node stops"
    )]
    UndecodableMetadata { version: u64, reason: String },
}

/// Why [`Node::handle_conf_change`] proposed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeRefused {
    #[error("this node does not host partition {0}")]
    NotHosted(PartitionId),
    #[error("{0}")]
    Refused(ProposeError),
    #[error("this node has stopped: {0}")]
    Halted(String),
}

/// Each group's durable state, rebuilt by replaying the WAL in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub groups: BTreeMap<PartitionId, RaftStorage>,
}

impl Recovered {
    pub fn replay(records: impl IntoIterator<Item = WalRecord>) -> Self {
        let mut r = Recovered::default();
        for rec in records {
            r.groups.entry(rec.partition).or_default().apply(rec.record);
        }
        r
    }

    /// Whether the node has never acted: nothing durable but the genesis
    /// configurations of its first boot (perhaps not all of them: a crash
    /// may cut that first write short). Only such a node creates the groups
    /// the ring gives it; every later boot hosts exactly what its WAL holds.
    pub fn is_fresh(&self) -> bool {
        self.groups.values().all(|g| {
            g.hard_state == HardState::default()
                && g.snapshot.is_none()
                && g.entries.is_empty()
                && g.tombstone.is_none()
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// ReadIndex: confirmed by a quorum round; never stale.
    #[default]
    Linearizable,
    /// Leader lease: no round trip; safe while clock drift stays in bounds.
    Lease,
    /// Any replica's current state: may lag, never invents.
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    Get {
        key: Bytes,
        consistency: Consistency,
    },
    /// With `return_previous`, the answer carries the key as it was just
    /// before the put (GETSET, SET…GET).
    Put {
        key: Bytes,
        value: Bytes,
        precondition: Precondition,
        return_previous: bool,
        expiry: Expiry,
    },
    /// Sets or clears (`Expiry::Clear`, Redis's PERSIST) a live key's
    /// expiry; `Expiry::Keep` is refused.
    Expire { key: Bytes, expiry: Expiry },
    /// With `return_previous`, the answer carries the deleted key (GETDEL).
    Delete {
        key: Bytes,
        precondition: Precondition,
        return_previous: bool,
    },
    /// Adds `delta` to the key's integer value (INCRBY), atomically.
    Increment { key: Bytes, delta: i64 },
    /// Appends to the key's value (APPEND), atomically.
    Append { key: Bytes, suffix: Bytes },
    /// Writes every pair atomically, at one revision (MSET within a slot).
    /// The keys must be in one partition ([`ClientError::CrossPartition`]);
    /// together they must fit one entry ([`ClientError::WriteTooLarge`]).
    PutAll { pairs: Vec<(Bytes, Bytes)> },
    /// How many keys the partition holding `key` has, read as a get of it
    /// would be (Redis's DBSIZE asks each partition once).
    CountKeys {
        key: Bytes,
        consistency: Consistency,
    },
    /// The keys in `[start, end)` (`end: None`: no bound) of the partition
    /// holding `key`, ascending, at most `limit` of them and about
    /// [`MAX_SCAN_REPLY_BYTES`] of keys and values (at least one key), read
    /// as a get of `key` would be: one consistent cut of the partition. A
    /// scan of the whole key space asks every partition (the node's API
    /// does, and merges).
    Scan {
        key: Bytes,
        start: Bytes,
        end: Option<Bytes>,
        limit: u32,
        keys_only: bool,
        consistency: Consistency,
    },
}

/// What a write does to its key's expiry, as a client asks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// No expiry (any the key had is cleared), as after Redis's SET.
    #[default]
    Clear,
    /// Keep the key's expiry (Redis's SET ... KEEPTTL).
    Keep,
    /// Expire this many milliseconds after the leader receives the write:
    /// the leader turns it into a deadline with its own clock.
    AfterMs(u64),
    /// Expire at this Unix time, milliseconds (a time already passed
    /// deletes the key, as Redis's EXPIREAT does).
    AtUnixMs(u64),
}

/// The longest time to live a write may ask for (about 100 years), so that
/// a deadline never overflows.
pub const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Expired keys one sweep entry removes, at most; a leader proposes at
/// most one sweep per group at a time (see `Node::sweep_expired`).
pub const SWEEP_MAX_KEYS: u32 = 1_000;

/// Keys one scan of a partition answers, at most.
pub const MAX_SCAN_LIMIT: u32 = 10_000;

/// Bytes of keys and values one scan of a partition answers, about: it stops
/// at the first key that reaches this (one key alone may pass it), so an
/// answer always fits a peer frame.
pub const MAX_SCAN_REPLY_BYTES: usize = 1 << 20;

impl ClientRequest {
    /// Requests that change state, so a lost answer means the outcome is
    /// unknown.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            ClientRequest::Get { .. }
                | ClientRequest::CountKeys { .. }
                | ClientRequest::Scan { .. }
        )
    }

    /// The key that places the request (for a put-all, its first key; an
    /// empty put-all has the empty key, which no partition serves).
    pub fn key(&self) -> &Bytes {
        static NO_KEY: Bytes = Bytes::new();
        match self {
            ClientRequest::Get { key, .. }
            | ClientRequest::CountKeys { key, .. }
            | ClientRequest::Scan { key, .. }
            | ClientRequest::Put { key, .. }
            | ClientRequest::Delete { key, .. }
            | ClientRequest::Increment { key, .. }
            | ClientRequest::Append { key, .. }
            | ClientRequest::Expire { key, .. } => key,
            ClientRequest::PutAll { pairs } => pairs.first().map_or(&NO_KEY, |(key, _)| key),
        }
    }

    /// A put without precondition that answers no previous value.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        ClientRequest::Put {
            key: key.into(),
            value: value.into(),
            precondition: Precondition::None,
            return_previous: false,
            expiry: Expiry::Clear,
        }
    }

    /// A delete without precondition that answers no previous value.
    pub fn delete(key: impl Into<Bytes>) -> Self {
        ClientRequest::Delete {
            key: key.into(),
            precondition: Precondition::None,
            return_previous: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientResponse {
    Value(Option<KeyValue>),
    /// `previous`: only when the request asked for it, and the key existed.
    Put {
        version: u64,
        mod_revision: u64,
        created: bool,
        previous: Option<KeyValue>,
    },
    /// `revision`: the log index of the delete itself. `previous`: only when
    /// the request asked for it.
    Deleted {
        revision: u64,
        previous: Option<KeyValue>,
    },
    /// The value after an increment.
    Incremented {
        value: i64,
        version: u64,
        mod_revision: u64,
    },
    /// The value's length after an append.
    Appended {
        len: u64,
        version: u64,
        mod_revision: u64,
    },
    /// The keys of a partition.
    Count(u64),
    /// A scan's keys, ascending; `more`: the partition may hold further
    /// keys in the range, after the last one here.
    Scanned {
        kvs: Vec<KeyValue>,
        more: bool,
    },
    /// Every key of a put-all was written at `mod_revision`; `created` of
    /// them did not exist before.
    PutAll {
        mod_revision: u64,
        created: u64,
    },
    /// An expire changed the key's expiry (`changed`; the key was written
    /// at `mod_revision`), or found no expiry to clear.
    ExpirySet {
        changed: bool,
        mod_revision: u64,
    },
}

/// Why a write's outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnknownCause {
    /// The request's deadline passed before the write was applied.
    #[error("timed out")]
    TimedOut,
    /// The connection to the node the write was forwarded to (its
    /// partition's leader) broke after the write may have reached it.
    #[error("the connection to the partition's leader broke with the write in flight")]
    ConnectionLost,
    /// This node stopped with the write inside it.
    #[error("this node stopped with the write in flight")]
    NodeStopped,
}

impl UnknownCause {
    /// The cause a [`ClientError::OutcomeUnknown`] message names (for a
    /// message that crossed the wire); `TimedOut` for any other text.
    pub fn from_message(message: &str) -> UnknownCause {
        [UnknownCause::ConnectionLost, UnknownCause::NodeStopped]
            .into_iter()
            .find(|c| message.starts_with(&c.to_string()))
            .unwrap_or(UnknownCause::TimedOut)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes; the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error(
        "the keys and values of one write are {len} bytes with their framing; the limit is {max} \
         (one key's limit plus one value's)"
    )]
    WriteTooLarge { len: usize, max: usize },
    #[error(
        "the keys of one atomic write must be in one partition (keys that share a hash tag \
         `{{...}}` are in one slot, so in one partition)"
    )]
    CrossPartition,
    #[error("a scan's limit is {limit}; it must be 1 to {max}")]
    InvalidScanLimit { limit: u32, max: u32 },
    #[error("invalid expiry: {0}")]
    InvalidExpiry(String),
    #[error(
        "this node has no wall clock yet, so it cannot turn a time to live into a deadline; retry"
    )]
    NoWallClock,
    #[error("key not found")]
    NotFound,
    #[error("precondition failed ({})", match current_mod_revision {
        Some(rev) => format!("current mod_revision: {rev}"),
        None => "the key does not exist".to_owned(),
    })]
    PreconditionFailed { current_mod_revision: Option<u64> },
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment or decrement would overflow")]
    IncrementOverflow,
    #[error("partition {partition} has no leader right now; retry shortly")]
    NoLeader { partition: PartitionId },
    #[error("the write was not applied (leadership changed); it is safe to retry")]
    Dropped,
    /// A write whose fate this node cannot know; `cause` says why (the
    /// stable code is `timeout_outcome_unknown` whatever the cause).
    #[error("{cause}; the write may or may not have been applied (outcome unknown)")]
    OutcomeUnknown { cause: UnknownCause },
    #[error("read timed out")]
    Timeout,
    #[error("too many requests in flight")]
    Busy,
    #[error(
        "this node has not joined its cluster yet (it is forming, or its peers refuse it; \
         `ringkv status` says which); nothing was applied"
    )]
    NotInCluster,
    /// The node asked is stopping and took nothing in (its event loop has
    /// ended); another node can serve the request.
    #[error("the node asked is stopping; nothing was applied: retry through another node")]
    Stopping,
    #[error("internal error: {0}")]
    Internal(String),
}

/// The one answer every request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Done(Result<ClientResponse, ClientError>),
    /// Send the request to node `to` instead (the partition's leader, or a
    /// replica of it when this node does not host the partition), carrying
    /// `hops`. If the forward fails,
    /// [`ForwardFailure::outcome`](crate::routing::ForwardFailure::outcome) says what
    /// the client is told.
    Forward {
        to: NodeId,
        partition: PartitionId,
        hops: Hops,
    },
}

/// Something an observer may want to know (metrics, dashboard, traces).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Raft {
        partition: PartitionId,
        event: RaftEvent,
    },
    PeerDown {
        peer: NodeId,
    },
    PeerUp {
        peer: NodeId,
    },
    /// A peer batch was refused (not addressed to us, or from a stranger).
    DroppedBatch {
        from: NodeId,
        reason: &'static str,
    },
    /// This node adopted a newer cluster metadata document
    /// ([`Node::metadata`]).
    MetadataChanged {
        version: u64,
    },
    /// Only with [`NodeConfig::observe`].
    Observed(Observation),
}

/// What one replica of a group did, in the terms of Raft's safety
/// properties, for [`crate::check::invariants`]: emitted as
/// [`Event::Observed`] when [`NodeConfig::observe`] is set, in the order the
/// node did it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub node: NodeId,
    pub partition: PartitionId,
    pub what: Observed,
}

/// See [`Observation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The node (re)started: the state machine holds the effects of the
    /// entries up to `applied` (its snapshot's index, or 0), and the log is
    /// known committed up to `commit`. What the previous run held in memory
    /// (commit, role) is gone.
    Started { applied: u64, commit: u64 },
    /// It won the election of `term`. `last_index`/`last_term`: its log as
    /// it was when it won, before the entry it appends to open its term.
    BecameLeader {
        term: u64,
        last_index: u64,
        last_term: u64,
    },
    /// It learned that its log is committed up to `commit`, while in `term`
    /// (so those entries were committed in `term` or before: a leader
    /// commits in its own term, a follower learns the commit of its term's
    /// leader).
    Committed { commit: u64, term: u64 },
    /// It applied the entry at `index` of `term` to its state machine.
    /// `command`: a fingerprint of the entry's kind and bytes
    /// ([`command_fingerprint`]).
    Applied { index: u64, term: u64, command: u64 },
    /// It replaced its state machine with a leader's snapshot of the
    /// entries up to `index` (of `term`).
    SnapshotRestored { index: u64, term: u64 },
    /// As leader of `term` it sent heartbeat round `round` (a lease rests
    /// on a round a quorum acknowledged).
    RoundSent { term: u64, round: u64 },
    /// As leader of `term` it served a read from its lease, resting on the
    /// acknowledgements of round `round`.
    LeaseRead { term: u64, round: u64 },
    /// Its removal from the group settled and it destroyed the replica: it
    /// holds nothing of the group any more (a later [`Observed::Started`]
    /// is a new replica, added again).
    Destroyed,
}

/// The fingerprint [`Observed::Applied`] carries: xxh3-64 of the entry's
/// bytes, seeded with its kind.
pub fn command_fingerprint(kind: EntryKind, data: &[u8]) -> u64 {
    let seed = match kind {
        EntryKind::Noop => 0,
        EntryKind::Normal => 1,
        EntryKind::ConfChange => 2,
    };
    xxhash_rust::xxh3::xxh3_64_with_seed(data, seed)
}

impl std::fmt::Display for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: ", self.node, self.partition)?;
        match self.what {
            Observed::Started { applied, commit } => {
                write!(f, "started (applied {applied}, commit {commit})")
            }
            Observed::BecameLeader {
                term,
                last_index,
                last_term,
            } => write!(
                f,
                "leader of term {term} (log ends at {last_term}/{last_index})"
            ),
            Observed::Committed { commit, term } => write!(f, "commit {commit} in term {term}"),
            Observed::Applied {
                index,
                term,
                command,
            } => write!(f, "applied {term}/{index} (command {command:016x})"),
            Observed::SnapshotRestored { index, term } => {
                write!(f, "restored a snapshot at {term}/{index}")
            }
            Observed::RoundSent { term, round } => write!(f, "sent round {round} of term {term}"),
            Observed::Destroyed => write!(f, "destroyed its replica (removed from the group)"),
            Observed::LeaseRead { term, round } => {
                write!(f, "served a lease read on round {round} of term {term}")
            }
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub batches_received: u64,
    pub batches_dropped: u64,
    pub messages_for_unknown_partitions: u64,
    pub batches_sent: u64,
    /// Bulk-lane batches among `batches_sent`.
    pub bulk_batches_sent: u64,
    /// Bytes of snapshot data sent (what re-creating and moving replicas
    /// streams; the log entries that follow are not counted).
    pub snapshot_bytes_sent: u64,
    /// Times the driver reported a peer unreachable (messages to it dropped).
    pub unreachable_reports: u64,
    /// Times the driver reported the link to a peer congested.
    pub congestion_reports: u64,
    /// Snapshots taken to compact a log.
    pub compactions: u64,
    /// Images of an existing snapshot encoded again for a follower that
    /// needed it (logs keep a snapshot's position, not its image).
    pub snapshot_images_supplied: u64,
    pub io_requests: u64,
    pub proposals: u64,
    pub applied_entries: u64,
    /// Sweep entries proposed to reclaim expired keys (reads that waited
    /// for one are not counted).
    pub sweeps: u64,
}

struct Group {
    raft: Raft,
    kv: KvStore,
    /// The latest IO holding records of this group.
    last_io: Option<IoId>,
    saved_hard_state: HardState,
    /// The IO holding this group's latest change of term or vote: until it
    /// is durable, none of the group's messages leave.
    term_io: Option<IoId>,
    /// The commit index last reported as [`Observed::Committed`].
    observed_commit: u64,
    /// The heartbeat round last reported as [`Observed::RoundSent`].
    observed_round: u64,
    /// Reads confirmed at an index this replica has not applied yet.
    reads_waiting_apply: Vec<(u64, u64)>, // (index, ctx)
    /// The index of this leader's sweep entry not yet applied (0: none):
    /// one at a time per group.
    sweep_in_flight: u64,
    /// For a replica created again after a tombstone, until it knows its
    /// configuration: the removal index its snapshot must be past (a late
    /// chunk of an older snapshot naming this node must not install).
    removed_at: u64,
}

/// A replica this node destroyed after its removal from the group.
struct Retired {
    tombstone: Tombstone,
    /// Its last term and vote: a replica added again starts from them, so
    /// that this node never votes twice in one term of the group.
    hard_state: HardState,
}

struct PendingWrite {
    id: RequestId,
    term: u64,
    /// The client asked for the key as it was before the write.
    return_previous: bool,
    deadline: Time,
    /// Bytes of its command (counted in `Node::pending_write_bytes`).
    bytes: usize,
}

/// A request for a partition whose group has no leader right now, waiting
/// on this replica for one (see [`NodeConfig::leader_wait`]). An election
/// or a transfer usually ends within a second; a client told `no_leader`
/// at once would retry into the same gap, and one that does not retry
/// (redis-benchmark, a shell script) would fail for nothing.
struct Parked {
    id: RequestId,
    req: ClientRequest,
    hops: Hops,
    /// The request's deadline, set on arrival.
    deadline: Time,
    /// When it stops waiting and the client hears `no_leader`.
    until: Time,
}

struct PendingRead {
    id: RequestId,
    hops: Hops,
    partition: PartitionId,
    read: Read,
    deadline: Time,
    /// Set once the read waited for a sweep stamped with this wall-clock
    /// time (see `Node::answer_read`).
    swept_at: Option<u64>,
}

/// What becomes of a confirmed read (see `Node::answer_read`).
enum ReadStep {
    Answer(ClientResponse),
    /// Wait until this index (a sweep's) is applied, then try again.
    WaitFor(u64),
    /// Answer the client to ask again (the leader).
    Retry,
}

/// What a read answers once the state machine has caught up with it.
#[derive(Debug)]
enum Read {
    Get(Bytes),
    /// The partition's key count.
    Count,
    Scan {
        start: Bytes,
        end: Option<Bytes>,
        limit: u32,
        keys_only: bool,
    },
}

impl Read {
    /// The key whose expiry the read depends on (`None`: any of the
    /// partition's).
    fn key(&self) -> Option<&[u8]> {
        match self {
            Read::Get(key) => Some(key),
            Read::Count | Read::Scan { .. } => None,
        }
    }

    /// The answer from `kv`, without the keys expired by wall-clock time
    /// `now_ms` or the partition's clock (`now_ms` 0: by the partition's
    /// clock alone).
    fn answer(&self, kv: &KvStore, now_ms: u64) -> ClientResponse {
        match self {
            Read::Get(key) => ClientResponse::Value(kv.get_at(key, now_ms)),
            Read::Count => ClientResponse::Count(kv.len_at(now_ms) as u64),
            Read::Scan {
                start,
                end,
                limit,
                keys_only,
            } => {
                let mut kvs = Vec::new();
                let mut bytes = 0;
                let mut more = false;
                for mut found in kv.range_at(start, end.as_deref(), now_ms) {
                    if kvs.len() == *limit as usize || bytes >= MAX_SCAN_REPLY_BYTES {
                        more = true;
                        break;
                    }
                    if *keys_only {
                        found.value = Bytes::new();
                    }
                    bytes += found.key.len() + found.value.len();
                    kvs.push(found);
                }
                ClientResponse::Scanned { kvs, more }
            }
        }
    }
}

/// Limits on internal queues (explicit, never unbounded in practice).
const MAX_GROUP_PASSES: usize = 16;
/// Ticks a leader's compaction waits for a follower it is streaming to (see
/// `Node::run_compactions`): 1 s at the default tick, ample for a live
/// follower; a slower one gets a snapshot.
const MAX_COMPACTION_WAIT_TICKS: u32 = 20;

/// What a log entry costs in memory beyond its payload: the `Entry` (index,
/// term, kind, a `Bytes` handle) in the log's vector and the payload
/// allocation's header. Counted so that a log of small entries is judged
/// by what it really holds.
pub const LOG_ENTRY_OVERHEAD_BYTES: u64 = 64;

pub struct Node {
    cfg: NodeConfig,
    /// Seeds each group's election jitter (see [`group_seed`]).
    rng_seed: u64,
    id: NodeId,
    ring: Ring,
    peers: Vec<NodeId>,
    groups: BTreeMap<PartitionId, Group>,
    /// Groups this node was removed from, with their tombstones.
    tombstones: BTreeMap<PartitionId, Retired>,
    detector: FailureDetector,
    started: bool,
    now: Time,
    /// The wall clock, Unix milliseconds, as the driver last reported it
    /// (0: not yet): stamps proposals and judges expiry.
    wall_ms: u64,
    next_tick: Time,
    ticks: u64,
    dirty: BTreeSet<PartitionId>,

    writes: BTreeMap<(PartitionId, u64), PendingWrite>,
    pending_write_bytes: usize,
    reads: BTreeMap<u64, PendingRead>,
    next_read_ctx: u64,
    /// Requests waiting for their group to have a leader, by partition.
    parked: BTreeMap<PartitionId, Vec<Parked>>,
    parked_count: usize,

    next_io: u64,
    persisted_io: u64,
    pending_records: Vec<WalRecord>,
    pending_must_sync: bool,
    io_out: VecDeque<IoRequest>,
    /// Per IO: the (partition, index, term) of durable log positions it holds.
    io_positions: BTreeMap<IoId, Vec<(PartitionId, u64, u64)>>,
    held: BTreeMap<IoId, Vec<(NodeId, GroupMessage)>>,
    /// Observations that wait, like `held` messages, for an IO to be durable.
    held_observations: BTreeMap<IoId, Vec<Observation>>,
    outbox: BTreeMap<NodeId, Vec<GroupMessage>>,
    last_sent: BTreeMap<NodeId, Time>,
    /// Groups due for a snapshot, in the order they became due (each once).
    compaction_queue: VecDeque<PartitionId>,
    /// Set once the node stopped itself (see [`Halt`]).
    halted: Option<Halt>,
    /// Set by [`Node::handle_leaving`]: this node is about to stop; its
    /// node reports say so, so that the controller gives it no leadership.
    leaving: bool,
    compaction_queued: BTreeSet<PartitionId>,
    /// Ticks each queued compaction has waited for a follower.
    compaction_waits: BTreeMap<PartitionId, u32>,
    /// Snapshot bytes compaction may still take; negative after a snapshot
    /// larger than a tick's budget (a debt that later ticks pay off).
    snapshot_allowance: i64,
    transmits: VecDeque<Transmit>,
    replies: VecDeque<(RequestId, Reply)>,
    events: VecDeque<Event>,
    /// What data partitions' state machines changed, for watchers (only
    /// with [`NodeConfig::watch`]).
    feed: VecDeque<(PartitionId, Feed)>,
    stats: NodeStats,
    meta: cluster::MetadataView,
    controller: controller::ControllerState,
}

impl Node {
    /// A node starting from what it recovered from disk. `rng_seed` drives
    /// every group's election jitter.
    pub fn new(cfg: NodeConfig, rng_seed: u64, recovered: Recovered) -> Result<Self, StartError> {
        let id = cfg.id;
        if !cfg.members.contains(&id) {
            return Err(StartError::NotAMember(id));
        }
        cfg.validate()?;
        let ring = Ring::new(cfg.ring, cfg.members.iter().copied())?;
        let mut recovered = recovered;
        let mut groups = BTreeMap::new();
        let mut events = VecDeque::new();
        let mut feed = VecDeque::new();
        let mut tombstones = BTreeMap::new();
        let mut genesis_records = Vec::new();
        // A node's first boot creates the groups the ring gives it; from
        // then on it hosts the groups its WAL holds, and only those (a group
        // it was added to later is not the ring's; one it was removed from
        // has a tombstone).
        let mut ring_groups: BTreeSet<PartitionId> = ring.partitions_of(id).into_iter().collect();
        // The metadata group starts on some founders; a directory from
        // before it existed gets it too, at its first boot since.
        let metadata_voters =
            Self::hosts_metadata_at_genesis(id, &cfg.members).filter(|_| cfg.founding);
        if !cfg.founding {
            ring_groups.clear();
        }
        if metadata_voters.is_some() {
            ring_groups.insert(METADATA_GROUP);
        }
        let mut hosted = BTreeSet::new();
        if recovered.is_fresh() {
            hosted.extend(ring_groups.iter().copied());
        } else if metadata_voters.is_some() {
            hosted.insert(METADATA_GROUP);
        }
        hosted.extend(recovered.groups.keys().copied());
        for p in hosted {
            let mut storage = recovered.groups.remove(&p).unwrap_or_default();
            if let Some(t) = storage.tombstone.take() {
                tombstones.insert(
                    p,
                    Retired {
                        tombstone: t,
                        hard_state: storage.hard_state,
                    },
                );
                continue;
            }
            // The configuration a group with no snapshot starts from: the
            // one recorded at its first boot. A group without one is new
            // (first boot: the ring's, recorded now), or was written before
            // genesis records existed (the ring's then too, as it was at
            // every boot), or is a replica added later that has not
            // received its snapshot yet (none: it learns the group from it).
            let membership = match storage.genesis.take() {
                Some(m) => m,
                None if storage.snapshot.is_none() && ring_groups.contains(&p) => {
                    let m = match (&metadata_voters, p == METADATA_GROUP) {
                        (Some(voters), true) => Membership::new(voters.iter().copied()),
                        _ => Membership::new(ring.replicas(p).iter().copied()),
                    };
                    genesis_records.push(WalRecord {
                        partition: p,
                        record: PersistRecord::Genesis(m.clone()),
                    });
                    m
                }
                None => Membership::default(),
            };
            let mut kv = match &storage.snapshot {
                Some(s) => KvStore::restore(&s.data).map_err(|e| StartError::CorruptSnapshot {
                    partition: p,
                    reason: e.to_string(),
                })?,
                None => KvStore::new(),
            };
            Self::start_feed(&cfg, &mut feed, p, &mut kv);
            let saved_hard_state = storage.hard_state;
            let seed = group_seed(rng_seed, p);
            let raft = Raft::new(id, cfg.raft.clone(), membership, storage, seed);
            let observed_commit = raft.log().committed();
            if cfg.observe {
                events.push_back(Event::Observed(Observation {
                    node: id,
                    partition: p,
                    what: Observed::Started {
                        applied: kv.applied_index(),
                        commit: observed_commit,
                    },
                }));
            }
            groups.insert(
                p,
                Group {
                    raft,
                    kv,
                    last_io: None,
                    saved_hard_state,
                    term_io: None,
                    observed_commit,
                    observed_round: 0,
                    reads_waiting_apply: Vec::new(),
                    sweep_in_flight: 0,
                    removed_at: 0,
                },
            );
        }
        let peers: Vec<NodeId> = ring
            .members()
            .iter()
            .chain(&cfg.known_members)
            .copied()
            .filter(|&m| m != id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let dirty = groups.keys().copied().collect();
        Ok(Node {
            rng_seed,
            detector: FailureDetector::new(cfg.detector.clone()),
            id,
            ring,
            peers,
            groups,
            tombstones,
            started: false,
            wall_ms: 0,
            now: Time::ZERO,
            next_tick: Time::ZERO,
            ticks: 0,
            dirty,
            writes: BTreeMap::new(),
            pending_write_bytes: 0,
            reads: BTreeMap::new(),
            next_read_ctx: 1,
            parked: BTreeMap::new(),
            parked_count: 0,
            next_io: 1,
            persisted_io: 0,
            pending_must_sync: !genesis_records.is_empty(),
            pending_records: genesis_records,
            io_out: VecDeque::new(),
            io_positions: BTreeMap::new(),
            held: BTreeMap::new(),
            held_observations: BTreeMap::new(),
            outbox: BTreeMap::new(),
            last_sent: BTreeMap::new(),
            compaction_queue: VecDeque::new(),
            halted: None,
            leaving: false,
            compaction_queued: BTreeSet::new(),
            compaction_waits: BTreeMap::new(),
            snapshot_allowance: 0,
            transmits: VecDeque::new(),
            replies: VecDeque::new(),
            events,
            feed,
            stats: NodeStats::default(),
            meta: cluster::MetadataView::default(),
            controller: controller::ControllerState::default(),
            cfg,
        })
    }

    // ---------------------------------------------------------------- getters

    /// Why this node stopped itself, if it did: the driver must then stop
    /// the process (the node takes no more input and emits no more IO or
    /// messages; replies already made are still delivered).
    pub fn halted(&self) -> Option<&Halt> {
        self.halted.as_ref()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }
    pub fn detector(&self) -> &FailureDetector {
        &self.detector
    }
    /// Partitions this node replicates.
    /// The partitions this node hosts a replica of (the metadata group is
    /// not one: see [`Node::metadata`]).
    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.groups.keys().copied().filter(|&p| p != METADATA_GROUP)
    }
    /// The voters of a group this node was removed from, as its replica
    /// last saw them (kept in its tombstone): where the node sends the
    /// partition's requests.
    pub fn retired_voters(&self, p: PartitionId) -> Option<&[NodeId]> {
        self.tombstones
            .get(&p)
            .map(|r| r.tombstone.voters.as_slice())
    }
    pub fn raft(&self, p: PartitionId) -> Option<&Raft> {
        self.groups.get(&p).map(|g| &g.raft)
    }
    pub fn kv(&self, p: PartitionId) -> Option<&KvStore> {
        self.groups.get(&p).map(|g| &g.kv)
    }
    pub fn pending_requests(&self) -> usize {
        self.writes.len() + self.reads.len() + self.parked_count
    }
    /// Command bytes of the writes counted in `pending_requests`.
    pub fn pending_write_bytes(&self) -> usize {
        self.pending_write_bytes
    }

    // ----------------------------------------------------------------- inputs

    fn start(&mut self, now: Time) {
        if !self.started {
            self.started = true;
            self.next_tick = now + self.cfg.tick_interval;
            for &p in &self.peers {
                self.detector.watch(p, now);
            }
        }
        self.now = self.now.max(now);
    }

    /// A batch from a peer arrived.
    pub fn handle_message(&mut self, now: Time, batch: PeerBatch) {
        if self.halted.is_some() {
            return;
        }
        self.start(now);
        let from = batch.from;
        if batch.to != self.id {
            self.stats.batches_dropped += 1;
            self.events.push_back(Event::DroppedBatch {
                from,
                reason: "addressed to another node",
            });
            return;
        }
        if !self.peers.contains(&from) {
            self.stats.batches_dropped += 1;
            self.events.push_back(Event::DroppedBatch {
                from,
                reason: "sender is not a member",
            });
            return;
        }
        self.stats.batches_received += 1;
        self.detector.heartbeat(from, self.now);
        self.observe_gossip(from, batch.gossip);
        for m in batch.placement {
            self.handle_placement(from, m);
        }
        for gm in batch.messages {
            if gm.message.from != from || gm.message.to != self.id {
                self.stats.messages_for_unknown_partitions += 1;
                continue;
            }
            match self.groups.get_mut(&gm.partition) {
                Some(g) => {
                    let stale_snapshot = matches!(&gm.message.body,
                        MessageBody::SnapshotChunk { meta, .. } if meta.index <= g.removed_at)
                        && !g.raft.knows_configuration();
                    if stale_snapshot {
                        self.stats.messages_for_unknown_partitions += 1;
                        continue;
                    }
                    g.raft.step(gm.message);
                    self.dirty.insert(gm.partition);
                }
                None => self.message_for_unhosted_group(gm),
            }
        }
        self.process();
        self.resume_parked();
    }

    /// A message for a group this node does not host. A leader's snapshot
    /// whose configuration lists this node proves it was added to the
    /// group: the node creates an empty replica, which learns the group
    /// from it. To an append or a heartbeat it answers on the missing
    /// replica's behalf that it holds nothing (a refusal at index 0), which
    /// makes the leader send its snapshot (a heartbeat counts: a leader
    /// whose one probe was lost sends nothing else until it hears back). Anything else is counted and dropped: no other
    /// message proves this node belongs to the group.
    fn message_for_unhosted_group(&mut self, gm: GroupMessage) {
        let p = gm.partition;
        let m = gm.message;
        // A destroyed replica comes back only through a snapshot of a
        // configuration later than its removal: a late message from before
        // the removal names it too.
        let retired = self.tombstones.get(&p);
        let removed_at = retired.map_or(0, |r| r.tombstone.removed_at);
        match &m.body {
            MessageBody::SnapshotChunk { meta, .. }
                if meta.membership.contains(self.id) && meta.index > removed_at =>
            {
                tracing::info!(partition = %p, leader = %m.from, "added to the group: creating its replica");
                let hard_state = retired.map_or_else(HardState::default, |r| HardState {
                    commit: 0,
                    ..r.hard_state
                });
                self.tombstones.remove(&p);
                let storage = RaftStorage {
                    hard_state,
                    ..RaftStorage::default()
                };
                let raft = Raft::new(
                    self.id,
                    self.cfg.raft.clone(),
                    Membership::default(),
                    storage,
                    group_seed(self.rng_seed, p),
                );
                let mut group = Group {
                    raft,
                    kv: KvStore::new(),
                    last_io: None,
                    saved_hard_state: hard_state,
                    term_io: None,
                    observed_commit: 0,
                    observed_round: 0,
                    reads_waiting_apply: Vec::new(),
                    sweep_in_flight: 0,
                    removed_at,
                };
                Self::start_feed(&self.cfg, &mut self.feed, p, &mut group.kv);
                group.raft.step(m);
                self.groups.insert(p, group);
                self.dirty.insert(p);
                if self.cfg.observe {
                    // A new life of this replica on this node (an earlier one
                    // may have died before anything of it was durable).
                    let what = Observed::Started {
                        applied: 0,
                        commit: 0,
                    };
                    self.events.push_back(Event::Observed(Observation {
                        node: self.id,
                        partition: p,
                        what,
                    }));
                }
            }
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                let answer = Message {
                    from: self.id,
                    to: m.from,
                    term: m.term,
                    body: MessageBody::AppendResponse {
                        success: false,
                        index: 0,
                        hint: 0,
                    },
                };
                self.outbox.entry(m.from).or_default().push(GroupMessage {
                    partition: p,
                    message: answer,
                });
            }
            _ => self.stats.messages_for_unknown_partitions += 1,
        }
    }

    /// An operator (or the placement controller) asks to change the
    /// configuration of `partition`'s group, which this node must lead.
    /// Returns the index of the change's entry; the change is in force on
    /// each replica once that entry reaches its log, and done once it
    /// commits (see [`Raft::propose_conf_change`]).
    pub fn handle_conf_change(
        &mut self,
        now: Time,
        partition: PartitionId,
        change: ConfChange,
    ) -> Result<u64, ConfChangeRefused> {
        if let Some(halt) = &self.halted {
            return Err(ConfChangeRefused::Halted(halt.to_string()));
        }
        self.start(now);
        let g = self
            .groups
            .get_mut(&partition)
            .ok_or(ConfChangeRefused::NotHosted(partition))?;
        let index = g
            .raft
            .propose_conf_change(change)
            .map_err(ConfChangeRefused::Refused)?;
        self.dirty.insert(partition);
        self.process();
        Ok(index)
    }

    /// This node is about to stop (an operator's SIGTERM, a rolling
    /// restart): hands the leadership of every group it leads to the voter
    /// with the most of the log among those the failure detector holds up
    /// (Raft §3.10), so that clients wait for a transfer, a round trip,
    /// instead of an election timeout. Returns how many groups it still
    /// leads; the driver asks again (a transfer is abandoned after an
    /// election timeout, or a new leader may hand a group back) until none,
    /// or until its deadline. A group whose other voters are all down stays
    /// led: there is no one to hand it to.
    pub fn handle_leaving(&mut self, now: Time) -> usize {
        if self.halted.is_some() {
            return 0;
        }
        self.start(now);
        if !self.leaving {
            self.leaving = true;
            // Tell every peer at once, not at the next report round.
            self.report_to_all();
        }
        let mut led = 0;
        let partitions: Vec<PartitionId> = self.groups.keys().copied().collect();
        for p in partitions {
            let g = &self.groups[&p];
            if !g.raft.is_leader() {
                continue;
            }
            led += 1;
            if g.raft.transferee().is_some() {
                continue;
            }
            let membership = g.raft.membership();
            let target = g
                .raft
                .followers()
                .filter(|&(id, _)| {
                    membership.is_voter(id) && self.detector.status(id) == PeerStatus::Up
                })
                .max_by_key(|&(id, pr)| (pr.matched, std::cmp::Reverse(id)))
                .map(|(id, _)| id);
            if let Some(to) = target {
                let g = self.groups.get_mut(&p).expect("listed above");
                if g.raft.transfer_leadership(to).is_ok() {
                    tracing::debug!(partition = %p, %to, "leaving: handing leadership over");
                    self.dirty.insert(p);
                }
            }
        }
        self.process();
        led
    }

    /// A client request arrived: from a client (`Hops(0)`) or forwarded by a
    /// peer (the hops it carried).
    /// The wall clock reads `unix_ms` (Unix milliseconds). The driver
    /// reports it before handing over inputs, at least once per tick; the
    /// core never reads a clock. It stamps the entries this node proposes
    /// as leader and judges when keys expire, so its error against true
    /// time is what bounds how late an expired key can still be read (see
    /// docs/architecture.md, "Expiry"). It may jump either way: a
    /// partition's clock only moves forward (see [`KvStore`]).
    pub fn handle_wall_clock(&mut self, unix_ms: u64) {
        self.wall_ms = unix_ms;
    }

    pub fn handle_request(&mut self, now: Time, id: RequestId, req: ClientRequest, hops: Hops) {
        if let Some(halt) = &self.halted {
            let e = ClientError::Internal(format!("this node has stopped: {halt}"));
            self.reply(id, Reply::Done(Err(e)));
            return;
        }
        // A lease is judged on ticks, so count the ones due by now first.
        // After a stall (a paused process, a stopped VM, a stalled event
        // loop) a driver may hand over a queued request before the overdue
        // timer, and a lease that ran out in real time would still look
        // valid (`node_scenarios`: a lease read after a stalled timer).
        let lease_read = matches!(
            req,
            ClientRequest::Get {
                consistency: Consistency::Lease,
                ..
            } | ClientRequest::CountKeys {
                consistency: Consistency::Lease,
                ..
            } | ClientRequest::Scan {
                consistency: Consistency::Lease,
                ..
            }
        );
        if lease_read && self.started && now >= self.next_tick {
            self.handle_timeout(now);
        }
        self.start(now);
        if let Err(e) = self.validate(&req) {
            self.reply(id, Reply::Done(Err(e)));
            return;
        }
        if self.pending_requests() >= self.cfg.max_pending_requests {
            self.reply(id, Reply::Done(Err(ClientError::Busy)));
            return;
        }
        let deadline = self.now + self.cfg.request_timeout;
        let until = deadline.min(self.now + self.cfg.leader_wait);
        self.route(id, req, hops, deadline, until);
        self.process();
    }

    /// Serves, forwards or parks a request (one that arrived, or a parked
    /// one whose group has a leader again). `until`: how long it may wait
    /// for a leader. The caller runs `process`.
    fn route(
        &mut self,
        id: RequestId,
        req: ClientRequest,
        hops: Hops,
        deadline: Time,
        until: Time,
    ) {
        let p = self.ring.partition_of(req.key());
        // A replica removed from its group (it stays, passive, until a
        // tombstone retires it) serves nothing: like a node that never held
        // the partition, it hands the request on, to the leader it knows or
        // to a member of the group as it last saw it.
        let removed = self.groups.get(&p).and_then(|g| {
            let m = g.raft.membership();
            (g.raft.knows_configuration() && !m.contains(self.id)).then(|| {
                g.raft
                    .leader()
                    .into_iter()
                    .chain(m.voters.iter().copied())
                    .collect()
            })
        });
        if removed.is_some() || !self.groups.contains_key(&p) {
            // Not a replica: hand it to the leader its latest report names
            // (one hop), else to a replica that looks alive (of the group
            // as this node last saw it, if it was in it).
            let replicas: Vec<NodeId> = removed.unwrap_or_else(|| match self.tombstones.get(&p) {
                Some(r) => r.tombstone.voters.clone(),
                None => self.ring.replicas(p).to_vec(),
            });
            let candidates: Vec<NodeId> = self.route_hint(p).into_iter().chain(replicas).collect();
            let (detector, now) = (&self.detector, self.now);
            let to = forward_target(&candidates, self.id, |r| detector.is_available(r, now));
            self.reply(id, forward_or_give_up(to, p, hops));
            return;
        }
        let g = self.groups.get_mut(&p).expect("checked above");
        self.dirty.insert(p);
        let (read, consistency) = match &req {
            ClientRequest::Get { key, consistency } => (Read::Get(key.clone()), *consistency),
            ClientRequest::CountKeys { consistency, .. } => (Read::Count, *consistency),
            ClientRequest::Scan {
                start,
                end,
                limit,
                keys_only,
                consistency,
                ..
            } => (
                Read::Scan {
                    start: start.clone(),
                    end: end.clone(),
                    limit: *limit,
                    keys_only: *keys_only,
                },
                *consistency,
            ),
            _ => (Read::Count, Consistency::Stale),
        };
        match req {
            ClientRequest::Get { .. }
            | ClientRequest::CountKeys { .. }
            | ClientRequest::Scan { .. }
                if consistency == Consistency::Stale =>
            {
                // A stale read judges expiry by this node's own clock.
                let answer = read.answer(&g.kv, self.wall_ms);
                self.reply(id, Reply::Done(Ok(answer)));
            }
            ClientRequest::Get { .. }
            | ClientRequest::CountKeys { .. }
            | ClientRequest::Scan { .. } => {
                let ctx = self.next_read_ctx;
                let lease = consistency == Consistency::Lease;
                // Only a checker asks which reads the lease served.
                let by_lease = self.cfg.observe && lease && g.raft.lease_valid();
                match g.raft.read(ctx, lease) {
                    Ok(()) => {
                        if by_lease {
                            let (term, round) = (g.raft.term(), g.raft.lease_round());
                            self.events.push_back(Event::Observed(Observation {
                                node: self.id,
                                partition: p,
                                what: Observed::LeaseRead { term, round },
                            }));
                        }
                        self.next_read_ctx += 1;
                        self.reads.insert(
                            ctx,
                            PendingRead {
                                id,
                                hops,
                                partition: p,
                                read,
                                deadline,
                                swept_at: None,
                            },
                        );
                    }
                    Err(e) => {
                        let (detector, now) = (&self.detector, self.now);
                        let alive = |v| detector.is_available(v, now);
                        match Self::refusal(&mut g.raft, p, e, hops, alive) {
                            Some(r) => self.reply(id, r),
                            None => self.park(
                                p,
                                Parked {
                                    id,
                                    req,
                                    hops,
                                    deadline,
                                    until,
                                },
                            ),
                        }
                    }
                }
            }
            ClientRequest::Put {
                key,
                value,
                precondition,
                return_previous,
                expiry,
            } => {
                let ttl = match expiry {
                    Expiry::Clear => Ttl::Clear,
                    Expiry::Keep => Ttl::Keep,
                    Expiry::AfterMs(ms) => Ttl::At(self.wall_ms + ms),
                    Expiry::AtUnixMs(at) => Ttl::At(at),
                };
                let cmd = Command::Put {
                    key,
                    value,
                    precondition,
                    ttl,
                };
                self.propose(p, cmd, (id, hops, deadline, until), return_previous);
            }
            ClientRequest::Expire { key, expiry } => {
                let at = match expiry {
                    Expiry::Clear => None,
                    Expiry::AfterMs(ms) => Some(self.wall_ms + ms),
                    Expiry::AtUnixMs(at) => Some(at),
                    Expiry::Keep => unreachable!("refused by validate"),
                };
                let cmd = Command::Expire { key, at };
                self.propose(p, cmd, (id, hops, deadline, until), false);
            }
            ClientRequest::Delete {
                key,
                precondition,
                return_previous,
            } => {
                let cmd = Command::Delete { key, precondition };
                self.propose(p, cmd, (id, hops, deadline, until), return_previous);
            }
            ClientRequest::Increment { key, delta } => {
                let cmd = Command::Increment { key, delta };
                self.propose(p, cmd, (id, hops, deadline, until), false);
            }
            ClientRequest::Append { key, suffix } => {
                let cmd = Command::Append {
                    key,
                    suffix,
                    max_value_bytes: self.cfg.max_value_bytes as u64,
                };
                self.propose(p, cmd, (id, hops, deadline, until), false);
            }
            ClientRequest::PutAll { pairs } => {
                let cmd = Command::PutAll { pairs };
                self.propose(p, cmd, (id, hops, deadline, until), false);
            }
        }
    }

    fn validate(&self, req: &ClientRequest) -> Result<(), ClientError> {
        if let ClientRequest::PutAll { pairs } = req {
            return self.validate_put_all(pairs);
        }
        self.validate_key(req.key())?;
        if let ClientRequest::Scan { limit, .. } = req
            && !(1..=MAX_SCAN_LIMIT).contains(limit)
        {
            return Err(ClientError::InvalidScanLimit {
                limit: *limit,
                max: MAX_SCAN_LIMIT,
            });
        }
        if let ClientRequest::Put { value, .. } | ClientRequest::Append { suffix: value, .. } = req
        {
            self.validate_value(value)?;
        }
        if let ClientRequest::Put { expiry, .. } | ClientRequest::Expire { expiry, .. } = req {
            self.validate_expiry(req, *expiry)?;
        }
        Ok(())
    }

    fn validate_expiry(&self, req: &ClientRequest, expiry: Expiry) -> Result<(), ClientError> {
        match expiry {
            Expiry::Keep if matches!(req, ClientRequest::Expire { .. }) => Err(
                ClientError::InvalidExpiry("an expire cannot keep the expiry it changes".into()),
            ),
            Expiry::AfterMs(0) => Err(ClientError::InvalidExpiry(
                "a time to live must be at least 1 ms".into(),
            )),
            Expiry::AfterMs(ms) if ms > MAX_TTL_MS => Err(ClientError::InvalidExpiry(
                "a time to live must be at most 100 years".into(),
            )),
            Expiry::AtUnixMs(0) => Err(ClientError::InvalidExpiry(
                "an expiry time must be after 1970-01-01T00:00:00Z".into(),
            )),
            // Only the leader turns a duration into a deadline, but a node
            // without a clock must not pass one on as if it could.
            Expiry::AfterMs(_) if self.wall_ms == 0 => Err(ClientError::NoWallClock),
            _ => Ok(()),
        }
    }

    /// Each pair as a put's, in one partition, and all of them in one
    /// entry no larger than the largest put's (which bounds peer frames:
    /// [`NodeConfig::max_peer_frame_bytes`]).
    fn validate_put_all(&self, pairs: &[(Bytes, Bytes)]) -> Result<(), ClientError> {
        let Some((first, _)) = pairs.first() else {
            return Err(ClientError::EmptyKey);
        };
        let partition = self.ring.partition_of(first);
        let mut len = 0;
        for (key, value) in pairs {
            self.validate_key(key)?;
            self.validate_value(value)?;
            if self.ring.partition_of(key) != partition {
                return Err(ClientError::CrossPartition);
            }
            len += key.len() + value.len() + Command::PAIR_OVERHEAD_BYTES;
        }
        let max = self.cfg.max_key_bytes + self.cfg.max_value_bytes;
        if len > max {
            return Err(ClientError::WriteTooLarge { len, max });
        }
        Ok(())
    }

    fn validate_key(&self, key: &Bytes) -> Result<(), ClientError> {
        if key.is_empty() {
            return Err(ClientError::EmptyKey);
        }
        if key.len() > self.cfg.max_key_bytes {
            return Err(ClientError::KeyTooLarge {
                len: key.len(),
                max: self.cfg.max_key_bytes,
            });
        }
        Ok(())
    }

    fn validate_value(&self, value: &Bytes) -> Result<(), ClientError> {
        if value.len() > self.cfg.max_value_bytes {
            return Err(ClientError::ValueTooLarge {
                len: value.len(),
                max: self.cfg.max_value_bytes,
            });
        }
        Ok(())
    }

    /// What a request refused by its group's Raft gets: `None` if it
    /// should wait for the group's leader (see [`Node::park`]).
    fn refusal(
        raft: &mut Raft,
        p: PartitionId,
        e: ProposeError,
        hops: Hops,
        alive: impl Fn(NodeId) -> bool,
    ) -> Option<Reply> {
        Some(match e {
            ProposeError::NotLeader { leader: Some(l) } => forward_or_give_up(Some(l), p, hops),
            ProposeError::NotLeader { leader: None } if !raft.membership().is_voter(raft.id()) => {
                // A learner (or a replica removed while it could not hear
                // of it) that knows no leader: no election here will find
                // one, so hand the request to a voter that looks alive,
                // which may know.
                let voter = forward_target(&raft.membership().voters, raft.id(), alive);
                forward_or_give_up(voter, p, hops)
            }
            ProposeError::NotLeader { leader: None } | ProposeError::TransferInProgress => {
                // Make sure an idle group notices it needs a leader.
                raft.wake();
                return None;
            }
            ProposeError::Busy => Reply::Done(Err(ClientError::Busy)),
            ProposeError::ConfChangeInProgress { .. }
            | ProposeError::InvalidConfChange(_)
            | ProposeError::LearnerBehind { .. }
            | ProposeError::LearnerUnconfirmed { .. } => {
                unreachable!("a client request refused as a configuration change: {e}")
            }
        })
    }

    /// Proposes a client's write (`request`: its id, hops, deadline and how
    /// long it may wait for a leader). Refused for want of a leader, the
    /// write is parked as the request it came from, rebuilt from `cmd`
    /// (rather than a copy of every write kept in case).
    fn propose(
        &mut self,
        p: PartitionId,
        cmd: Command,
        request: (RequestId, Hops, Time, Time),
        return_previous: bool,
    ) {
        let (id, hops, deadline, until) = request;
        let Some(g) = self.groups.get_mut(&p) else {
            return;
        };
        let data = cmd.encode(self.wall_ms);
        let bytes = data.len();
        if !self.writes.is_empty()
            && self.pending_write_bytes + bytes > self.cfg.max_pending_write_bytes
        {
            self.reply(id, Reply::Done(Err(ClientError::Busy)));
            return;
        }
        match g.raft.propose(data) {
            Ok(index) => {
                self.stats.proposals += 1;
                let term = g.raft.term();
                self.pending_write_bytes += bytes;
                self.writes.insert(
                    (p, index),
                    PendingWrite {
                        id,
                        term,
                        return_previous,
                        deadline,
                        bytes,
                    },
                );
            }
            Err(e) => {
                let (detector, now) = (&self.detector, self.now);
                let alive = |v| detector.is_available(v, now);
                match Self::refusal(&mut g.raft, p, e, hops, alive) {
                    Some(r) => self.reply(id, r),
                    None => {
                        let req = request_of(cmd, return_previous);
                        self.park(
                            p,
                            Parked {
                                id,
                                req,
                                hops,
                                deadline,
                                until,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Holds a request until its group has a leader (see [`Parked`]), or
    /// answers `no_leader` if it may not wait any longer.
    fn park(&mut self, p: PartitionId, request: Parked) {
        if request.until <= self.now {
            self.reply(
                request.id,
                Reply::Done(Err(ClientError::NoLeader { partition: p })),
            );
            return;
        }
        self.parked_count += 1;
        self.parked.entry(p).or_default().push(request);
    }

    /// Routes again the parked requests of every group that has a leader
    /// now (or that this node no longer hosts), in the order they came;
    /// answers `no_leader` to those that waited long enough.
    fn resume_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let now = self.now;
        let ready: Vec<PartitionId> = self
            .parked
            .keys()
            .copied()
            .filter(|p| match self.groups.get(p) {
                None => true,
                Some(g) => g.raft.leader().is_some() && g.raft.transferee().is_none(),
            })
            .collect();
        let resumed = !ready.is_empty();
        for p in ready {
            for w in self.parked.remove(&p).unwrap_or_default() {
                self.parked_count -= 1;
                self.route(w.id, w.req, w.hops, w.deadline, w.until);
            }
        }
        let mut expired = Vec::new();
        self.parked.retain(|&p, waiting| {
            waiting.retain(|w| {
                let keep = w.until > now;
                if !keep {
                    expired.push((w.id, p));
                }
                keep
            });
            !waiting.is_empty()
        });
        for (id, p) in expired {
            self.parked_count -= 1;
            self.reply(id, Reply::Done(Err(ClientError::NoLeader { partition: p })));
        }
        if resumed {
            self.process();
        }
    }

    /// Time passed: run due ticks, heartbeats, failure detection, deadlines.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.halted.is_some() {
            return;
        }
        self.start(now);
        let mut ticked = false;
        while self.now >= self.next_tick {
            self.next_tick = self.next_tick + self.cfg.tick_interval;
            self.ticks += 1;
            ticked = true;
            let first = self.ticks == 1;
            for (&p, g) in self.groups.iter_mut() {
                // The ring's first replica campaigns at once on a fresh start,
                // which spreads initial leadership evenly over the nodes.
                let preferred = match p {
                    METADATA_GROUP => g.raft.membership().voters.first(),
                    _ => self.ring.replicas(p).first(),
                };
                if first && g.raft.leader().is_none() && preferred == Some(&self.id) {
                    g.raft.start_election();
                }
                g.raft.tick();
                self.dirty.insert(p);
            }
        }
        if ticked {
            self.heartbeat_idle_peers();
            self.detect_failures();
            self.run_placement();
            self.expire_requests();
            self.sweep_expired();
            self.run_compactions();
        }
        self.process();
        if ticked {
            self.resume_parked();
        }
    }

    /// The transport's queue of bulk messages (entries, snapshot chunks) to
    /// `peer` is filling (`congested`) or has drained. While congested, no
    /// group sends `peer` entries or snapshot chunks; on clearing, leaders
    /// resume at once. The driver reports changes only.
    pub fn handle_peer_congestion(&mut self, now: Time, peer: NodeId, congested: bool) {
        if self.halted.is_some() {
            return;
        }
        self.start(now);
        if congested {
            self.stats.congestion_reports += 1;
        }
        for (&p, g) in self.groups.iter_mut() {
            g.raft.set_peer_congested(peer, congested);
            self.dirty.insert(p);
        }
        self.process();
    }

    /// The transport dropped messages to `peer` (its queue was full or its
    /// connection broke). Groups this node leads stop streaming to it and
    /// probe until it answers, instead of learning of the loss only when the
    /// peer rejects a later append.
    pub fn handle_unreachable(&mut self, now: Time, peer: NodeId) {
        if self.halted.is_some() {
            return;
        }
        self.start(now);
        self.stats.unreachable_reports += 1;
        for (&p, g) in self.groups.iter_mut() {
            if g.raft.is_leader() {
                g.raft.report_unreachable(peer);
                self.dirty.insert(p);
            }
        }
        self.process();
    }

    /// The driver made every IO up to and including `io` durable.
    pub fn handle_persisted(&mut self, now: Time, io: IoId) {
        if self.halted.is_some() {
            return;
        }
        self.start(now);
        if io.0 <= self.persisted_io {
            return;
        }
        self.persisted_io = io.0;
        let done: Vec<IoId> = self.io_positions.range(..=io).map(|(&k, _)| k).collect();
        for k in done {
            for (p, index, term) in self.io_positions.remove(&k).unwrap_or_default() {
                if let Some(g) = self.groups.get_mut(&p) {
                    g.raft.on_persisted(index, term);
                    self.dirty.insert(p);
                }
            }
        }
        let released: Vec<IoId> = self.held.range(..=io).map(|(&k, _)| k).collect();
        for k in released {
            for (to, gm) in self.held.remove(&k).unwrap_or_default() {
                self.outbox.entry(to).or_default().push(gm);
            }
        }
        let released: Vec<IoId> = self
            .held_observations
            .range(..=io)
            .map(|(&k, _)| k)
            .collect();
        for k in released {
            for o in self.held_observations.remove(&k).unwrap_or_default() {
                self.events.push_back(Event::Observed(o));
            }
        }
        self.process();
    }

    /// The driver wants these partitions' applied logs folded into
    /// snapshots (their old entries pin WAL segments it wants to delete).
    /// They join the compaction queue, which ticks work through at the pace
    /// `max_snapshot_bytes_per_tick` allows; partitions this node does not
    /// host are ignored.
    pub fn handle_compaction_request(&mut self, now: Time, partitions: &[PartitionId]) {
        if self.halted.is_some() {
            return;
        }
        self.start(now);
        for &p in partitions {
            if self.groups.contains_key(&p) {
                self.queue_compaction(p);
            }
        }
    }

    fn queue_compaction(&mut self, p: PartitionId) {
        if self.compaction_queued.insert(p) {
            self.compaction_queue.push_back(p);
        }
    }

    /// Takes queued snapshots until this tick's byte budget is spent.
    ///
    /// A leader holds off (for at most [`MAX_COMPACTION_WAIT_TICKS`]) while
    /// a follower it is streaming to still lacks applied entries: folding
    /// them away would turn that follower's next append into a transfer of
    /// the partition's whole state.
    fn run_compactions(&mut self) {
        // Each tick adds a tick's budget, up to one tick's worth: unused
        // budget does not pile up into a burst later.
        let per_tick = i64::try_from(self.cfg.max_snapshot_bytes_per_tick).unwrap_or(i64::MAX);
        self.snapshot_allowance = self
            .snapshot_allowance
            .saturating_add(per_tick)
            .min(per_tick);
        let mut deferred = Vec::new();
        while self.snapshot_allowance > 0
            && let Some(p) = self.compaction_queue.pop_front()
        {
            self.compaction_queued.remove(&p);
            let Some(g) = self.groups.get_mut(&p) else {
                continue;
            };
            let applied = g.raft.log().applied();
            if g.kv.applied_index() == applied
                && applied == g.raft.log().snapshot_meta().index
                && g.raft.snapshot_image_would_serve()
            {
                // A follower needs the snapshot this group already took, and
                // nothing was applied since: the state is its image.
                // Encoding it costs what a compaction does, without the
                // write.
                self.compaction_waits.remove(&p);
                let supplied = g.raft.supply_snapshot_image(g.kv.snapshot());
                assert!(
                    supplied,
                    "partition {p}: snapshot image refused after would_serve"
                );
                self.stats.snapshot_images_supplied += 1;
                let state_bytes = g.kv.data_bytes();
                self.charge_snapshot(p, state_bytes);
                continue;
            }
            if g.kv.applied_index() != applied || !g.raft.can_compact(applied) {
                // Nothing new is applied and durable: nothing to fold.
                self.compaction_waits.remove(&p);
                continue;
            }
            let waited = self.compaction_waits.entry(p).or_insert(0);
            if g.raft.is_leader()
                && g.raft.streaming_follower_lacks(applied)
                && *waited < MAX_COMPACTION_WAIT_TICKS
            {
                *waited += 1;
                deferred.push(p);
                continue;
            }
            self.compaction_waits.remove(&p);
            let taken = g.raft.compact(applied, g.kv.snapshot());
            assert!(
                taken,
                "partition {p}: compaction at {applied} refused after can_compact"
            );
            self.stats.compactions += 1;
            let state_bytes = g.kv.data_bytes();
            self.charge_snapshot(p, state_bytes);
        }
        for p in deferred {
            self.queue_compaction(p);
        }
    }

    /// A snapshot of `state_bytes` was encoded for partition `p`: its
    /// output is to be flushed, and it is paid for against the pace.
    fn charge_snapshot(&mut self, p: PartitionId, state_bytes: u64) {
        self.dirty.insert(p);
        let cost = state_bytes.max(self.cfg.snapshot_cost_floor_bytes.max(1));
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        self.snapshot_allowance = self.snapshot_allowance.saturating_sub(cost);
    }

    /// Partitions waiting for a snapshot.
    pub fn compactions_queued(&self) -> usize {
        self.compaction_queue.len()
    }

    // ---------------------------------------------------------------- outputs

    /// The next WAL batch to append. Everything produced since the previous
    /// call goes into one batch: that is the group commit.
    #[must_use]
    pub fn poll_io(&mut self) -> Option<IoRequest> {
        if self.halted.is_some() {
            return None;
        }
        if self.io_out.is_empty() && !self.pending_records.is_empty() {
            let id = IoId(self.next_io);
            self.next_io += 1;
            self.stats.io_requests += 1;
            let records = std::mem::take(&mut self.pending_records);
            let must_sync = std::mem::take(&mut self.pending_must_sync);
            self.io_out.push_back(IoRequest {
                id,
                records,
                must_sync,
            });
        }
        self.io_out.pop_front()
    }

    /// The next batch to send. Everything queued for a peer since the previous
    /// round of calls goes into one batch.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.halted.is_some() {
            return None;
        }
        if self.transmits.is_empty() {
            self.flush();
        }
        self.transmits.pop_front()
    }
    #[must_use]
    pub fn poll_reply(&mut self) -> Option<(RequestId, Reply)> {
        self.replies.pop_front()
    }
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// What a data partition's replica here changed, in apply order (only
    /// with [`NodeConfig::watch`]): a [`Feed::Reset`] when the replica
    /// starts, is created or takes a snapshot, then each applied entry's
    /// [`Feed::Changes`], and [`Feed::Gone`] when it is destroyed.
    pub fn poll_feed(&mut self) -> Option<(PartitionId, Feed)> {
        self.feed.pop_front()
    }

    /// Starts recording `p`'s changes into the feed from its state
    /// machine's applied index (with [`NodeConfig::watch`], for data
    /// partitions).
    fn start_feed(
        cfg: &NodeConfig,
        feed: &mut VecDeque<(PartitionId, Feed)>,
        p: PartitionId,
        kv: &mut KvStore,
    ) {
        if cfg.watch && p != METADATA_GROUP {
            kv.record_changes();
            feed.push_back((
                p,
                Feed::Reset {
                    floor: kv.applied_index(),
                },
            ));
        }
    }
    /// When `handle_timeout` should be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        Some(self.next_tick)
    }

    // --------------------------------------------------------------- helpers

    fn reply(&mut self, id: RequestId, r: Reply) {
        self.replies.push_back((id, r));
    }

    fn heartbeat_idle_peers(&mut self) {
        let interval = self.cfg.peer_heartbeat_interval();
        for &p in &self.peers {
            let due = self
                .last_sent
                .get(&p)
                .is_none_or(|&t| self.now.saturating_since(t) >= interval);
            if due {
                self.outbox.entry(p).or_default();
            }
        }
    }

    fn detect_failures(&mut self) {
        self.detector.evaluate(self.now);
        while let Some(ev) = self.detector.poll_event() {
            match ev {
                DetectorEvent::Down { peer, .. } => {
                    for (&p, g) in self.groups.iter_mut() {
                        g.raft.on_node_down(peer);
                        self.dirty.insert(p);
                    }
                    self.events.push_back(Event::PeerDown { peer });
                }
                DetectorEvent::Up { peer } => self.events.push_back(Event::PeerUp { peer }),
            }
        }
    }

    fn expire_requests(&mut self) {
        let now = self.now;
        let expired: Vec<(PartitionId, u64)> = self
            .writes
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(&k, _)| k)
            .collect();
        for k in expired {
            if let Some(w) = self.writes.remove(&k) {
                self.pending_write_bytes -= w.bytes;
                self.reply(
                    w.id,
                    Reply::Done(Err(ClientError::OutcomeUnknown {
                        cause: UnknownCause::TimedOut,
                    })),
                );
            }
        }
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&k, _)| k)
            .collect();
        for ctx in expired {
            if let Some(r) = self.reads.remove(&ctx) {
                self.reply(r.id, Reply::Done(Err(ClientError::Timeout)));
            }
        }
    }

    /// Drains every dirty group into the open IO batch and the outbox.
    fn process(&mut self) {
        let mut passes = 0;
        while !self.dirty.is_empty() && passes < MAX_GROUP_PASSES {
            passes += 1;
            let dirty = std::mem::take(&mut self.dirty);
            for p in dirty {
                self.process_group(p);
                if p == METADATA_GROUP {
                    self.after_metadata_group();
                }
                if self.halted.is_some() {
                    return;
                }
            }
        }
    }

    fn process_group(&mut self, p: PartitionId) {
        let io = IoId(self.next_io);
        let Some(g) = self.groups.get_mut(&p) else {
            return;
        };
        if !g.raft.has_ready() {
            return;
        }
        let ready = g.raft.take_ready();
        // Decode a snapshot from the leader before anything of it is
        // persisted or acknowledged. One that does not decode cannot be
        // applied, and Raft has already replaced this replica's log with
        // it: going on would serve the old state as if it were the new.
        // Stop instead, with nothing of it written (fail-stop).
        let restored = match &ready.snapshot_to_apply {
            None => None,
            Some(snap) => match KvStore::restore(&snap.data) {
                Ok(kv) => Some(kv),
                Err(e) => {
                    let halt = Halt::UndecodableSnapshot {
                        partition: p,
                        index: snap.meta.index,
                        term: snap.meta.term,
                        reason: e.to_string(),
                    };
                    tracing::error!("{halt}");
                    self.halted = Some(halt);
                    return;
                }
            },
        };
        let observe = |events: &mut VecDeque<Event>, what| {
            events.push_back(Event::Observed(Observation {
                node: self.id,
                partition: p,
                what,
            }))
        };
        for event in ready.events {
            if self.cfg.observe
                && let RaftEvent::RoleChanged {
                    role: Role::Leader,
                    term,
                    ..
                } = event
            {
                // The log as it was when the election was won: everything
                // before the first entry of the new term (that entry, the
                // opening no-op, is the leader's own).
                let log = g.raft.log();
                let mut last_index = log.last_index();
                while last_index > 0 && log.term(last_index) == Some(term) {
                    last_index -= 1;
                }
                let last_term = log.term(last_index).unwrap_or(0);
                let won = Observation {
                    node: self.id,
                    partition: p,
                    what: Observed::BecameLeader {
                        term,
                        last_index,
                        last_term,
                    },
                };
                // Reported once the term is durable, as anything the leader
                // says is: a win a crash forgets was never observable (a
                // sole voter wins without asking anyone, and may win the
                // same term again after such a crash).
                let term_changes = ready.persist.iter().any(|r| {
                    matches!(r, PersistRecord::HardState(hs)
                        if hs.term != g.saved_hard_state.term || hs.vote != g.saved_hard_state.vote)
                });
                let gate = if term_changes {
                    Some(io)
                } else {
                    g.term_io.filter(|io| io.0 > self.persisted_io)
                };
                match gate {
                    Some(io) => self.held_observations.entry(io).or_default().push(won),
                    None => self.events.push_back(Event::Observed(won)),
                }
            }
            self.events.push_back(Event::Raft {
                partition: p,
                event,
            });
        }
        // Persist.
        if !ready.persist.is_empty() {
            let mut positions = Vec::new();
            for rec in ready.persist {
                match &rec {
                    PersistRecord::HardState(hs) => {
                        if hs.term != g.saved_hard_state.term || hs.vote != g.saved_hard_state.vote
                        {
                            self.pending_must_sync = true;
                            g.term_io = Some(io);
                        }
                        g.saved_hard_state = *hs;
                    }
                    PersistRecord::Entries(es) => {
                        self.pending_must_sync = true;
                        if let Some(last) = es.last() {
                            positions.push((p, last.index, last.term));
                        }
                    }
                    PersistRecord::Snapshot(s) => {
                        self.pending_must_sync = true;
                        positions.push((p, s.meta.index, s.meta.term));
                    }
                    PersistRecord::Genesis(_) | PersistRecord::Tombstone(_) => {
                        unreachable!("partition {p}: Raft wrote a record only the node writes")
                    }
                }
                self.pending_records.push(WalRecord {
                    partition: p,
                    record: rec,
                });
            }
            if !positions.is_empty() {
                self.io_positions.entry(io).or_default().extend(positions);
            }
            g.last_io = Some(io);
        }
        // Messages: the leader's traffic now; acknowledgements after persist.
        // Nothing leaves in a term, or after a vote, before that term and
        // vote are durable: a group whose only voter is this node wins its
        // election without asking anyone, and its first appends would
        // otherwise speak for a term a crash can forget and win again
        // (core simulation, seed 56: the same node led term 4 twice).
        let term_gate = g.term_io.filter(|io| io.0 > self.persisted_io);
        for m in ready.messages {
            let to = m.to;
            let gm = GroupMessage {
                partition: p,
                message: m,
            };
            match term_gate {
                Some(io) => self.held.entry(io).or_default().push((to, gm)),
                None => self.outbox.entry(to).or_default().push(gm),
            }
        }
        let gate = g.last_io.filter(|io| io.0 > self.persisted_io);
        for m in ready.messages_after_persist {
            let to = m.to;
            let gm = GroupMessage {
                partition: p,
                message: m,
            };
            match gate {
                Some(io) => self.held.entry(io).or_default().push((to, gm)),
                None => self.outbox.entry(to).or_default().push(gm),
            }
        }
        if self.cfg.observe && g.raft.is_leader() && g.raft.round() > g.observed_round {
            g.observed_round = g.raft.round();
            let (term, round) = (g.raft.term(), g.observed_round);
            observe(&mut self.events, Observed::RoundSent { term, round });
        }
        // State machine.
        if self.cfg.observe && g.raft.log().committed() > g.observed_commit {
            g.observed_commit = g.raft.log().committed();
            let (commit, term) = (g.observed_commit, g.raft.term());
            observe(&mut self.events, Observed::Committed { commit, term });
        }
        if let (Some(snap), Some(kv)) = (ready.snapshot_to_apply, restored) {
            g.kv = kv;
            Self::start_feed(&self.cfg, &mut self.feed, p, &mut g.kv);
            if self.cfg.observe {
                let (index, term) = (snap.meta.index, snap.meta.term);
                observe(&mut self.events, Observed::SnapshotRestored { index, term });
            }
        }
        for entry in ready.committed {
            self.stats.applied_entries += 1;
            if self.cfg.observe {
                let (index, term) = (entry.index, entry.term);
                let command = command_fingerprint(entry.kind, &entry.data);
                observe(
                    &mut self.events,
                    Observed::Applied {
                        index,
                        term,
                        command,
                    },
                );
            }
            let outcome = match entry.kind {
                // Raft acted on a configuration change when it reached the
                // log; the state machine only counts its index.
                EntryKind::Noop | EntryKind::ConfChange => g.kv.apply(entry.index, &[]),
                EntryKind::Normal => g.kv.apply(entry.index, &entry.data),
            };
            let changes = g.kv.take_changes();
            if !changes.is_empty() {
                self.feed.push_back((p, Feed::Changes(changes)));
            }
            if let Some(w) = self.writes.remove(&(p, entry.index)) {
                self.pending_write_bytes -= w.bytes;
                let result = if w.term != entry.term {
                    // Another entry won this index: ours can never commit.
                    Err(ClientError::Dropped)
                } else {
                    write_result(outcome, entry.index, w.return_previous)
                };
                self.replies.push_back((w.id, Reply::Done(result)));
            }
        }
        // The state machine holds exactly what Raft handed it: never an
        // entry the group has not committed.
        assert!(
            g.kv.applied_index() <= g.raft.log().committed(),
            "partition {p}: applied {} beyond commit {}",
            g.kv.applied_index(),
            g.raft.log().committed()
        );
        // Reads.
        for r in ready.reads {
            g.reads_waiting_apply.push((r.index, r.ctx));
        }
        if !g.reads_waiting_apply.is_empty() {
            let applied = g.kv.applied_index();
            let (ready_now, waiting): (Vec<_>, Vec<_>) = g
                .reads_waiting_apply
                .drain(..)
                .partition(|&(i, _)| i <= applied);
            g.reads_waiting_apply = waiting;
            for (_, ctx) in ready_now {
                if let Some(mut r) = self.reads.remove(&ctx) {
                    match Self::answer_read(g, &mut r, self.wall_ms) {
                        ReadStep::Answer(answer) => {
                            self.replies.push_back((r.id, Reply::Done(Ok(answer))));
                        }
                        ReadStep::WaitFor(index) => {
                            g.reads_waiting_apply.push((index, ctx));
                            self.reads.insert(ctx, r);
                        }
                        ReadStep::Retry => {
                            let leader = g.raft.leader().filter(|&l| l != self.id);
                            let reply = forward_or_give_up(leader, r.partition, r.hops);
                            self.replies.push_back((r.id, reply));
                        }
                    }
                }
            }
        }
        for ctx in ready.failed_reads {
            if let Some(r) = self.reads.remove(&ctx) {
                let leader = g.raft.leader().filter(|&l| l != self.id);
                let reply = forward_or_give_up(leader, r.partition, r.hops);
                self.replies.push_back((r.id, reply));
            }
        }
        if g.raft.removal_settled() {
            self.destroy_group(p);
            return;
        }
        // Compaction: fold applied entries into a snapshot now and then (by
        // entry count, or by memory once the log holds half the state's
        // size), at the pace the tick budget allows.
        let log = g.raft.log();
        let by_count =
            log.applied().saturating_sub(log.snapshot_meta().index) >= self.cfg.snapshot_threshold;
        let log_bytes =
            log.entries_bytes() as u64 + log.entries().len() as u64 * LOG_ENTRY_OVERHEAD_BYTES;
        let by_bytes = log_bytes
            >= (g.kv.data_bytes() / 2)
                .max(self.cfg.snapshot_log_floor_bytes)
                .min(self.cfg.snapshot_threshold_bytes);
        // A new replica waits for a snapshot this leader never took.
        let wanted = g.raft.wants_snapshot();
        let has_ready = g.raft.has_ready();
        if by_count || by_bytes || wanted {
            self.queue_compaction(p);
        }
        if has_ready {
            self.dirty.insert(p);
        }
    }

    /// A confirmed read's next step. Expiry is judged by the partition's
    /// clock, which moves only through the log: if this leader's wall
    /// clock says a key the read depends on has expired but the
    /// partition's clock does not yet, answering either way is wrong (the
    /// key is past its deadline now, yet a later leader whose clock is
    /// behind would still serve it). So the read waits for a sweep entry
    /// stamped with this wall-clock time and is answered once it applies:
    /// the key is then gone for good, at a point inside the read.
    fn answer_read(g: &mut Group, r: &mut PendingRead, wall_ms: u64) -> ReadStep {
        let key = r.read.key();
        match r.swept_at {
            None if g.kv.expiry_pending(key, wall_ms) => {
                let sweep = Command::Sweep {
                    max_keys: SWEEP_MAX_KEYS,
                };
                match g.raft.propose(sweep.encode(wall_ms)) {
                    Ok(index) => {
                        g.sweep_in_flight = g.sweep_in_flight.max(index);
                        r.swept_at = Some(wall_ms);
                        ReadStep::WaitFor(index)
                    }
                    Err(_) => ReadStep::Retry,
                }
            }
            // The sweep's index holds another leader's entry: the clock
            // may not have moved. The client asks again.
            Some(at) if g.kv.expiry_pending(key, at) => ReadStep::Retry,
            _ => ReadStep::Answer(r.read.answer(&g.kv, 0)),
        }
    }

    /// As leader, proposes a sweep for each group that holds a key past
    /// its deadline by this node's wall clock, one sweep in flight per
    /// group: expired keys are reclaimed at up to [`SWEEP_MAX_KEYS`] per
    /// group per tick, and the partition's clock keeps up with the wall
    /// clock while keys are expiring (so reads rarely wait for a sweep).
    fn sweep_expired(&mut self) {
        let wall_ms = self.wall_ms;
        if wall_ms == 0 {
            return;
        }
        for (&p, g) in self.groups.iter_mut() {
            if p == METADATA_GROUP
                || !g.raft.is_leader()
                || g.sweep_in_flight > g.kv.applied_index()
                || g.kv.next_deadline().is_none_or(|d| d > wall_ms)
            {
                continue;
            }
            let sweep = Command::Sweep {
                max_keys: SWEEP_MAX_KEYS,
            };
            if let Ok(index) = g.raft.propose(sweep.encode(wall_ms)) {
                self.stats.sweeps += 1;
                g.sweep_in_flight = index;
                self.dirty.insert(p);
            }
        }
    }

    /// Destroys the replica of `p` once its removal is settled
    /// ([`Raft::removal_settled`]): a tombstone goes into the open IO (the
    /// storage deletes the group's data once it is durable), and from then
    /// on the node treats the partition as one it never held, except that
    /// it forwards to the group's last known voters and takes back a
    /// replica only from a snapshot of a later configuration. Messages the
    /// replica queued still leave (a leader that removed itself hands over
    /// with them). Its pending reads go to a voter; writes it proposed as
    /// leader may still commit, so they end as `outcome unknown` at their
    /// deadline.
    fn destroy_group(&mut self, p: PartitionId) {
        let g = self
            .groups
            .remove(&p)
            .expect("destroy_group: a hosted group");
        if self.cfg.watch && p != METADATA_GROUP {
            self.feed.push_back((p, Feed::Gone));
        }
        let voters = g.raft.membership().voters.clone();
        let tombstone = Tombstone {
            removed_at: g.raft.log().committed(),
            voters,
        };
        tracing::info!(
            partition = %p,
            removed_at = tombstone.removed_at,
            "removed from the group: destroying its replica"
        );
        self.pending_records.push(WalRecord {
            partition: p,
            record: PersistRecord::Tombstone(tombstone.clone()),
        });
        self.pending_must_sync = true;
        let hard_state = g.raft.hard_state();
        let leader = g.raft.leader().filter(|&l| l != self.id);
        let candidates: Vec<NodeId> = leader
            .into_iter()
            .chain(tombstone.voters.iter().copied())
            .collect();
        self.tombstones.insert(
            p,
            Retired {
                tombstone,
                hard_state,
            },
        );
        self.dirty.remove(&p);
        let waiting: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.partition == p)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in waiting {
            if let Some(r) = self.reads.remove(&ctx) {
                let (detector, now) = (&self.detector, self.now);
                let to = forward_target(&candidates, self.id, |c| detector.is_available(c, now));
                let reply = forward_or_give_up(to, p, r.hops);
                self.replies.push_back((r.id, reply));
            }
        }
        if self.cfg.observe {
            self.events.push_back(Event::Observed(Observation {
                node: self.id,
                partition: p,
                what: Observed::Destroyed,
            }));
        }
    }

    /// Everything queued for each peer: the control batch, then the bulk
    /// batches. A peer with nothing queued gets an empty control batch (the
    /// node heartbeat).
    fn flush(&mut self) {
        self.push_metadata();
        self.flush_placement();
        let gossip = self.gossip();
        let budget = self
            .cfg
            .max_batch_bytes
            .saturating_sub(wire::PEER_BATCH_OVERHEAD_BYTES);
        for (to, messages) in std::mem::take(&mut self.outbox) {
            if !self.peers.contains(&to) {
                // A member removed meanwhile (or one this node has not
                // heard of yet: the member list reaches it shortly, and
                // Raft resends): the transport has no link to it.
                tracing::debug!(peer = %to, dropped = messages.len(), "messages for a node that is not a peer");
                continue;
            }
            self.last_sent.insert(to, self.now);
            // One pass for sizes; most flushes fit one batch per lane and
            // keep their order and their vector.
            let (mut control_bytes, mut bulk_bytes, mut bulk_count) = (0usize, 0usize, 0usize);
            for gm in &messages {
                let len = wire::group_message_len_bound(gm);
                if let MessageBody::SnapshotChunk { data, .. } = &gm.message.body {
                    self.stats.snapshot_bytes_sent += data.len() as u64;
                }
                if gm.message.body.is_bulk() {
                    bulk_bytes += len;
                    bulk_count += 1;
                } else {
                    control_bytes += len;
                }
            }
            let (control, bulk) = if bulk_count == 0 && control_bytes <= budget {
                (vec![(messages, control_bytes)], Vec::new())
            } else if bulk_count == messages.len() && bulk_bytes <= budget {
                (Vec::new(), vec![(messages, bulk_bytes)])
            } else {
                let (bulk, control): (Vec<GroupMessage>, Vec<GroupMessage>) = messages
                    .into_iter()
                    .partition(|gm| gm.message.body.is_bulk());
                let control = match control.is_empty() {
                    true => Vec::new(),
                    false if control_bytes <= budget => vec![(control, control_bytes)],
                    false => pack(control, self.cfg.max_batch_bytes),
                };
                let bulk = match bulk.is_empty() {
                    true => Vec::new(),
                    false if bulk_bytes <= budget => vec![(bulk, bulk_bytes)],
                    false => pack(take_in_turn(bulk), self.cfg.max_batch_bytes),
                };
                (control, bulk)
            };
            self.stats.bulk_batches_sent += bulk.len() as u64;
            let control = control.into_iter().map(|b| (Lane::Control, b));
            let bulk = bulk.into_iter().map(|b| (Lane::Bulk, b));
            for (lane, (messages, bytes)) in control.chain(bulk) {
                self.stats.batches_sent += 1;
                self.transmits.push_back(Transmit {
                    to,
                    lane,
                    bytes: wire::PEER_BATCH_OVERHEAD_BYTES + bytes,
                    batch: PeerBatch {
                        from: self.id,
                        to,
                        messages,
                        gossip: gossip.clone(),
                        placement: Vec::new(),
                    },
                });
            }
        }
    }
}

/// Reorders messages so that groups take turns: every group's first message,
/// then every group's second, and so on (each group's own order is kept).
fn take_in_turn(messages: Vec<GroupMessage>) -> Vec<GroupMessage> {
    let mut per_group: BTreeMap<PartitionId, VecDeque<GroupMessage>> = BTreeMap::new();
    let mut order = Vec::new();
    for gm in messages {
        let q = per_group.entry(gm.partition).or_default();
        if q.is_empty() {
            order.push(gm.partition);
        }
        q.push_back(gm);
    }
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for p in &order {
            if let Some(gm) = per_group.get_mut(p).and_then(VecDeque::pop_front) {
                out.push(gm);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Cuts messages, in order, into runs whose encoded batches stay within
/// `max_bytes`; a message too large for any batch gets one of its own. Each
/// run comes with the size bound of its messages.
fn pack(messages: Vec<GroupMessage>, max_bytes: usize) -> Vec<(Vec<GroupMessage>, usize)> {
    let budget = max_bytes.saturating_sub(wire::PEER_BATCH_OVERHEAD_BYTES);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for gm in messages {
        let len = wire::group_message_len_bound(&gm);
        if !current.is_empty() && bytes + len > budget {
            out.push((std::mem::take(&mut current), bytes));
            bytes = 0;
        }
        bytes += len;
        current.push(gm);
    }
    if !current.is_empty() {
        out.push((current, bytes));
    }
    out
}

/// The client request a write's command was made from (see
/// `Node::route`); an append's limit is the node's own again when it is
/// proposed anew.
fn request_of(cmd: Command, return_previous: bool) -> ClientRequest {
    match cmd {
        Command::Put {
            key,
            value,
            precondition,
            ttl,
        } => ClientRequest::Put {
            key,
            value,
            precondition,
            return_previous,
            expiry: match ttl {
                Ttl::Clear => Expiry::Clear,
                Ttl::Keep => Expiry::Keep,
                Ttl::At(at) => Expiry::AtUnixMs(at),
            },
        },
        Command::Delete { key, precondition } => ClientRequest::Delete {
            key,
            precondition,
            return_previous,
        },
        Command::Increment { key, delta } => ClientRequest::Increment { key, delta },
        Command::Append { key, suffix, .. } => ClientRequest::Append { key, suffix },
        Command::PutAll { pairs } => ClientRequest::PutAll { pairs },
        Command::Expire { key, at } => ClientRequest::Expire {
            key,
            expiry: at.map_or(Expiry::Clear, Expiry::AtUnixMs),
        },
        Command::Sweep { .. } => unreachable!("a sweep is the leader's, never a client's"),
    }
}

/// The seed of one group's election jitter on this node: distinct per
/// partition, so groups do not time out in step.
fn group_seed(rng_seed: u64, p: PartitionId) -> u64 {
    rng_seed ^ (u64::from(p.0) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Where to hand a request on among `candidates`: the first that looks
/// alive, else the first at all; never this node itself.
fn forward_target(
    candidates: &[NodeId],
    me: NodeId,
    alive: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    let others = || candidates.iter().copied().filter(move |&c| c != me);
    others().find(|&c| alive(c)).or_else(|| others().next())
}

/// Forward to `to` if there is somewhere to go and the request has hops
/// left ([`MAX_FORWARD_HOPS`](crate::routing::MAX_FORWARD_HOPS)); otherwise
/// the client hears `no_leader` and retries.
fn forward_or_give_up(to: Option<NodeId>, partition: PartitionId, hops: Hops) -> Reply {
    match (to, hops.next()) {
        (Some(to), Some(hops)) => Reply::Forward {
            to,
            partition,
            hops,
        },
        _ => Reply::Done(Err(ClientError::NoLeader { partition })),
    }
}

fn write_result(
    outcome: ApplyOutcome,
    index: u64,
    return_previous: bool,
) -> Result<ClientResponse, ClientError> {
    match outcome {
        ApplyOutcome::Put {
            version,
            mod_revision,
            created,
            previous,
        } => Ok(ClientResponse::Put {
            version,
            mod_revision,
            created,
            previous: previous.filter(|_| return_previous),
        }),
        ApplyOutcome::Deleted { previous } => Ok(ClientResponse::Deleted {
            revision: index,
            previous: Some(previous).filter(|_| return_previous),
        }),
        ApplyOutcome::Incremented {
            value,
            version,
            mod_revision,
        } => Ok(ClientResponse::Incremented {
            value,
            version,
            mod_revision,
        }),
        ApplyOutcome::Appended {
            len,
            version,
            mod_revision,
        } => Ok(ClientResponse::Appended {
            len,
            version,
            mod_revision,
        }),
        ApplyOutcome::PutAll {
            mod_revision,
            created,
        } => Ok(ClientResponse::PutAll {
            mod_revision,
            created,
        }),
        ApplyOutcome::Refused(Refusal::NotAnInteger) => Err(ClientError::NotAnInteger),
        ApplyOutcome::Refused(Refusal::Overflow) => Err(ClientError::IncrementOverflow),
        ApplyOutcome::Refused(Refusal::TooLarge { len, max }) => Err(ClientError::ValueTooLarge {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max: usize::try_from(max).unwrap_or(usize::MAX),
        }),
        ApplyOutcome::NotFound => Err(ClientError::NotFound),
        ApplyOutcome::PreconditionFailed {
            current_mod_revision,
        } => Err(ClientError::PreconditionFailed {
            current_mod_revision,
        }),
        ApplyOutcome::ExpirySet {
            changed,
            mod_revision,
        } => Ok(ClientResponse::ExpirySet {
            changed,
            mod_revision,
        }),
        ApplyOutcome::Swept { .. } => Err(ClientError::Internal(
            "a client's write applied as a sweep".into(),
        )),
        ApplyOutcome::Invalid(reason) => Err(ClientError::Internal(reason)),
        ApplyOutcome::Noop => Err(ClientError::Internal("write applied as a no-op".into())),
    }
}
