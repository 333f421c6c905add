//! The values a Raft group exchanges with its peers and hands to its driver:
//! log entries, snapshots, peer messages and persistence records.
//!
//! These are plain validated Rust values. Their wire and disk encodings live in
//! [`crate::wire`]; nothing here knows about bytes on a socket.

use std::fmt;

use bytes::Bytes;

use super::membership::Membership;
use crate::types::NodeId;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A state machine command (opaque to Raft).
    Normal,
    /// The empty entry a new leader appends to commit its term (Raft §8).
    Noop,
    /// A change of the group's configuration: `data` is a
    /// [`ConfChange`](super::ConfChange), encoded by [`crate::wire`]. Raft
    /// reads it; the state machine only counts its index as applied.
    ConfChange,
}

/// One entry of the replicated log.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EntryKind::Noop => write!(f, "{}/{} noop", self.term, self.index),
            EntryKind::Normal => write!(f, "{}/{} {}B", self.term, self.index, self.data.len()),
            EntryKind::ConfChange => match crate::wire::decode_conf_change(&self.data) {
                Ok(change) => write!(f, "{}/{} conf {change}", self.term, self.index),
                Err(_) => write!(f, "{}/{} conf <undecodable>", self.term, self.index),
            },
        }
    }
}

/// Where a snapshot sits in the log, and the membership as of that point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub membership: Membership,
}

/// A state machine image as of `meta.index`.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "snapshot {}/{} {}B",
            self.meta.term,
            self.meta.index,
            self.data.len()
        )
    }
}

/// The part of a group's state that must survive a crash before anything that
/// depends on it is said to a peer (Raft Figure 2: currentTerm, votedFor), plus
/// the commit index, which is persisted lazily to speed up recovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: Option<NodeId>,
    pub commit: u64,
}

/// One thing a group asks its driver to make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistRecord {
    HardState(HardState),
    /// Entries to append. The first entry's index says where: every entry at
    /// or after it that is already stored is replaced (a follower's log is
    /// truncated when it conflicts with the leader's, Raft §5.3).
    Entries(Vec<Entry>),
    /// A snapshot that replaces every entry up to and including its index.
    Snapshot(Snapshot),
    /// The configuration a group was created with on this node (written by
    /// the node once, at the group's first boot; a group with no snapshot
    /// starts from it ever after).
    Genesis(Membership),
    /// This node's replica was removed from the group and destroyed (written
    /// by the node): everything of the group before it is void.
    Tombstone(Tombstone),
}

/// What a node remembers of a replica it destroyed after its removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The replica's commit index when it was destroyed (its removal was
    /// committed at or before it). Only a snapshot at a higher index that
    /// names the node proves it was added again.
    pub removed_at: u64,
    /// The group's voters as the replica last saw them: where the node hands
    /// the partition's requests from then on.
    pub voters: Vec<NodeId>,
}

impl PersistRecord {
    /// Whether losing this record in a crash could break a promise already
    /// made. Only a commit-index-only hard state can be lost safely.
    pub fn must_sync(&self, previous: &HardState) -> bool {
        match self {
            PersistRecord::HardState(hs) => hs.term != previous.term || hs.vote != previous.vote,
            _ => true,
        }
    }
}

/// A message between two members of one group.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term, or for `PreVote` the term it would campaign in.
    pub term: u64,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// "Would you vote for me?" Sent before bumping the term (Raft thesis §9.6),
    /// so a node that cannot win never disturbs the cluster.
    PreVote {
        last_index: u64,
        last_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// `transfer`: campaign started by a leadership transfer; voters ignore
    /// their leader lease for it (thesis §3.10).
    Vote {
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    /// On success `index` is the follower's new match index. On rejection,
    /// `index` is the rejected `prev_index` and `hint` the follower's last index.
    AppendResponse {
        success: bool,
        index: u64,
        hint: u64,
    },
    /// `round` is nonzero for a ReadIndex round; `quiesce` tells followers
    /// the leader goes idle and they should stop their election timers.
    Heartbeat {
        commit: u64,
        round: u64,
        quiesce: bool,
    },
    HeartbeatResponse {
        round: u64,
    },
    /// One piece of the leader's latest snapshot, for a follower that needs
    /// entries the leader compacted away (Raft §7). A snapshot of any size
    /// travels as chunks of at most `RaftConfig::snapshot_chunk_bytes`, so no
    /// peer message grows with the partition. `data` holds bytes
    /// `[offset, offset + data.len())` of the `total_len`-byte image; every
    /// chunk carries the snapshot's `meta`, so a chunk names what it belongs to.
    SnapshotChunk {
        meta: SnapshotMeta,
        total_len: u64,
        offset: u64,
        data: Bytes,
    },
    /// The follower holds the first `received` bytes of the snapshot at
    /// `index` (0: none; the leader restarts the transfer from the start).
    /// Once it has them all it installs the snapshot and answers with an
    /// `AppendResponse` instead.
    SnapshotAck {
        index: u64,
        received: u64,
    },
    /// "Campaign now": the last step of a leadership transfer.
    TimeoutNow,
    /// "I follow `leader`": a follower's answer to a campaign from a
    /// replica outside its configuration, or to a `LeaderQuery`. A hint of
    /// whom to ask, no proof of anything (see `Raft::step`).
    LeaderHint {
        leader: NodeId,
    },
    /// "Who leads?", from a replica that cannot campaign and has known no
    /// leader for an election timeout (see `Raft::tick_election`).
    LeaderQuery,
}

impl MessageBody {
    /// Whether the message carries bulk data (log entries or snapshot
    /// bytes): a transport may queue and pace such messages apart from the
    /// small ones that keep the group alive (votes, heartbeats, answers).
    pub fn is_bulk(&self) -> bool {
        match self {
            MessageBody::Append { entries, .. } => !entries.is_empty(),
            MessageBody::SnapshotChunk { .. } => true,
            _ => false,
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{} term={} ", self.from, self.to, self.term)?;
        match &self.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => {
                write!(f, "PreVote log={last_term}/{last_index}")
            }
            MessageBody::PreVoteResponse { granted } => {
                write!(
                    f,
                    "PreVoteResponse {}",
                    if *granted { "granted" } else { "rejected" }
                )
            }
            MessageBody::Vote {
                last_index,
                last_term,
                transfer,
            } => {
                write!(f, "Vote log={last_term}/{last_index}")?;
                if *transfer {
                    write!(f, " transfer")?;
                }
                Ok(())
            }
            MessageBody::VoteResponse { granted } => {
                write!(
                    f,
                    "VoteResponse {}",
                    if *granted { "granted" } else { "rejected" }
                )
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                write!(
                    f,
                    "Append prev={prev_term}/{prev_index} commit={commit} entries={entries:?}"
                )
            }
            MessageBody::AppendResponse {
                success,
                index,
                hint,
            } => {
                if *success {
                    write!(f, "AppendResponse ok index={index}")
                } else {
                    write!(f, "AppendResponse reject index={index} hint={hint}")
                }
            }
            MessageBody::Heartbeat {
                commit,
                round,
                quiesce,
            } => {
                write!(f, "Heartbeat commit={commit}")?;
                if *round != 0 {
                    write!(f, " round={round}")?;
                }
                if *quiesce {
                    write!(f, " quiesce")?;
                }
                Ok(())
            }
            MessageBody::HeartbeatResponse { round } => {
                write!(f, "HeartbeatResponse")?;
                if *round != 0 {
                    write!(f, " round={round}")?;
                }
                Ok(())
            }
            MessageBody::SnapshotChunk {
                meta,
                total_len,
                offset,
                data,
            } => write!(
                f,
                "SnapshotChunk {}/{} bytes {offset}..{} of {total_len}",
                meta.term,
                meta.index,
                offset + data.len() as u64
            ),
            MessageBody::LeaderHint { leader } => write!(f, "LeaderHint leader={leader}"),
            MessageBody::LeaderQuery => write!(f, "LeaderQuery"),
            MessageBody::SnapshotAck { index, received } => {
                write!(f, "SnapshotAck index={index} received={received}")
            }
            MessageBody::TimeoutNow => write!(f, "TimeoutNow"),
        }
    }
}
