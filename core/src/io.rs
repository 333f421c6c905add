//! What crosses the core's boundary: the batches nodes send each other and the
//! records a node asks its driver to make durable.
//!
//! These are validated Rust values; [`crate::wire`] turns them into bytes and
//! back. Owns no logic beyond small constructors.

use crate::raft::{Message, PersistRecord};
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
