//! What crosses the core's boundary: the batches nodes send each other and the
//! records a node asks its driver to make durable.
//!
//! These are validated Rust values; [`crate::wire`] turns them into bytes and
//! back. Owns no logic beyond small constructors.

use bytes::Bytes;

use crate::metadata::ClientAddresses;
use crate::raft::{ConfChange, Membership, Message, PersistRecord};
use crate::types::{NodeId, PartitionId};

/// One Raft message of one partition's group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMessage {
    pub partition: PartitionId,
    pub message: Message,
}

/// Messages one node sends another, coalesced over the groups they share.
/// Its arrival alone is the node-level heartbeat that feeds the failure
/// detector, so an empty batch is meaningful.
///
/// A node never mixes lanes in one batch: a batch holds either only small
/// messages that keep groups alive (votes, heartbeats, answers) or only bulk
/// ones (entries, snapshot chunks); see [`Transmit::lane`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBatch {
    pub from: NodeId,
    pub to: NodeId,
    pub messages: Vec<GroupMessage>,
    /// What the sender knows of the cluster metadata.
    pub gossip: Gossip,
    /// Reports to the placement controller, or its orders.
    pub placement: Vec<PlacementMessage>,
}

/// What the placement controller (on the metadata group's leader) and the
/// groups' leaders tell each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementMessage {
    /// To the controller: the sender leads `partition`'s group in `term`,
    /// with this configuration, and its learners are this far.
    Report {
        partition: PartitionId,
        term: u64,
        membership: Membership,
        learners: Vec<CatchUp>,
    },
    /// To a group's leader: propose this configuration change.
    ConfChange {
        partition: PartitionId,
        change: ConfChange,
    },
    /// To a group's leader: hand leadership to `to`.
    TransferLeader { partition: PartitionId, to: NodeId },
    /// To the controller, from every node each report round: what the
    /// sender's failure detector says of each peer it watches (the
    /// controller takes a member for dead only when no node it hears has
    /// heard that member for the grace period), and where the sender
    /// serves clients (which the controller records in the member list).
    NodeReport {
        peers: Vec<PeerHealth>,
        addresses: ClientAddresses,
        /// The sender is about to stop: it hands its leaderships away and
        /// must be given none (see `Node::handle_leaving`).
        leaving: bool,
    },
}

/// One peer as a node's failure detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerHealth {
    pub node: NodeId,
    /// How long it has been silent, while the detector holds it down;
    /// `None` while it looks alive.
    pub down_for: Option<std::time::Duration>,
}

/// How far a learner has caught up, as its group's leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatchUp {
    pub node: NodeId,
    /// The highest index the leader knows it holds.
    pub matched: u64,
    /// The leader's last index.
    pub last_index: u64,
    /// While the leader streams it a snapshot: bytes acknowledged, and the
    /// snapshot's size.
    pub snapshot: Option<(u64, u64)>,
}

/// The cluster metadata a batch carries: the version the sender has and
/// the metadata group's leader it knows of, on every batch; the document
/// itself when the sender saw that the receiver's is older (see
/// [`crate::metadata`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gossip {
    /// The version of the sender's document (0: it has none).
    pub metadata_version: u64,
    /// `(term, leader)` of the metadata group as the sender knows it.
    pub metadata_leader: Option<(u64, NodeId)>,
    /// The sender's document, at `metadata_version`.
    pub metadata: Option<Bytes>,
}

/// Which of a peer connection's two queues a batch belongs in. A transport
/// should carry them independently (etcd's rafthttp keeps separate streams
/// for appends and for other messages), so that heartbeats and votes never
/// wait behind megabytes of entries, and may drop bulk batches when a
/// peer's bulk queue is full (then calling `Node::handle_unreachable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    Control,
    Bulk,
}

/// A batch as [`crate::node::Node::poll_transmit`] hands it out, with what
/// the core knew when it cut it: its lane (`Bulk` if any message carries
/// entries or snapshot bytes) and an upper bound of its encoded size (by
/// [`crate::wire::group_message_len_bound`]), which a transport accounts its
/// queues by.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub to: NodeId,
    pub lane: Lane,
    pub bytes: usize,
    pub batch: PeerBatch,
}

/// One durable record of one partition's group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    pub partition: PartitionId,
    pub record: PersistRecord,
}

/// Identifies one [`IoRequest`]. Issued in increasing order; the driver
/// reports them durable in that same order (a WAL is a sequence), so
/// reporting `n` durable also reports every earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoId(pub u64);

/// A batch of records for the driver to append to the WAL. `must_sync`: the
/// batch must be on stable storage (fdatasync) before the driver reports it
/// with `handle_persisted`; when false (only commit-index updates), the
/// driver may report it once written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoRequest {
    pub id: IoId,
    pub records: Vec<WalRecord>,
    pub must_sync: bool,
}
