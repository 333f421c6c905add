//! Wire and disk encodings of the core's boundary types: the mapping between
//! [`PeerBatch`] / [`WalRecord`] and the protobuf messages of
//! `proto/ringkv/v1/peer.proto` (generated as [`ringkv_proto::v1`]), and so
//! between those values and bytes.
//!
//! It does not own the framing of WAL files (`[len][crc32c][payload]`, torn
//! tails, file rotation) nor the transport: the node does. A payload that
//! fails its CRC never gets here; a payload that passes it but is not a valid
//! record (a bug, or a different version) is rejected here.
//!
//! Invariants:
//! - `decode(encode(x)) == x` for every value the core produces (checked by
//!   property tests below).
//! - Decoding never panics, whatever the bytes, and rejects with a
//!   [`WireError`] anything the core could not have produced: a zero node id,
//!   a batch to oneself, a message whose `from`/`to` is not its batch's,
//!   entries that are not contiguous or whose terms go back, an `Append` whose
//!   entries do not follow `prev_index`, a snapshot without voters, an unknown
//!   entry kind, a missing required field. The Raft code can therefore assume
//!   these shapes of anything a peer or the disk hands it.
//!
//! Encoding choices (see the schema's comments):
//! - Node id 0 is reserved: it is proto3's "unset". `HardState.vote == 0`
//!   decodes as `None`, so a (never produced) `Some(NodeId(0))` vote would
//!   not survive a round trip.
//! - Inside a [`PeerBatch`], each message's `from`/`to` are omitted when they
//!   equal the batch's (always, for a batch the node builds) and filled in
//!   from the batch on decode; this saves ~2-20 bytes per message. A message
//!   whose `from`/`to` differ is still encoded faithfully, and then rejected
//!   by the receiver's decode.
//! - Membership voters are sorted and deduplicated on decode
//!   ([`Membership::new`]) rather than rejected.
//!
//! The WAL bytes are the on-disk format: `pinned_wal_bytes` in the tests
//! fails on any change to them. Change the schema only by adding fields.

use bytes::Bytes;
use prost::Message as _;
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::raft_message::Body as PbBody;
use ringkv_proto::v1::wal_record::Record as PbRecord;

use std::time::Duration;

use crate::io::{
    CatchUp, Gossip, GroupMessage, PeerBatch, PeerHealth, PlacementMessage, WalRecord,
};
use crate::metadata::{ClientAddresses, MAX_DOCUMENT_BYTES};
use crate::raft::{
    ConfChange, Entry, EntryKind, HardState, Membership, Message, MessageBody, PersistRecord,
    Snapshot, SnapshotMeta, Tombstone,
};
use crate::types::{NodeId, PartitionId};

/// Why bytes (or a protobuf value) could not be turned into a core value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a well-formed protobuf message of the expected type.
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A required field (a message field or a oneof) is absent. Names the
    /// field as `Message.field`.
    #[error("missing required field {0}")]
    Missing(&'static str),
    /// A field holds a value the core never produces. Says which field and why.
    #[error("invalid {0}")]
    Invalid(String),
}

type Result<T, E = WireError> = std::result::Result<T, E>;

// ----------------------------------------------------------- size bounds
//
// Upper bounds on encoded sizes, computed without encoding, so the node can
// keep every batch under its byte limit cheaply. Each is at least the real
// size (property-tested below) and at most a few dozen bytes above it. A
// protobuf field costs its tag (1 byte for numbers below 16), a varint of up
// to 10 bytes for a u64, and for a length-delimited field a length varint
// (up to 5 bytes below 4 GiB) before its bytes.

/// A batch's own fields and framing: `from`, `to`, the metadata gossip
/// (version, leader and its term; a pushed document is counted apart, by
/// [`metadata_push_len_bound`]), and slack.
pub const PEER_BATCH_OVERHEAD_BYTES: usize = 64;

/// The most peers one node report may name: more than any cluster has
/// (a member costs its document tens of bytes, and the document is at most
/// [`MAX_DOCUMENT_BYTES`]); a bound on what a malformed report allocates.
const MAX_HEALTH_PEERS: usize = 1 << 16;
/// A `GroupMessage` around a `RaftMessage` with a body of fixed-size fields:
/// the group message (tag, length, partition), the Raft message (tag, length,
/// from, to, term), the body (tag, length, up to three u64 fields and a bool).
pub const MESSAGE_OVERHEAD_BYTES: usize = 96;
/// One entry in an append, beyond its data: tag, length, index, term, kind,
/// and the data's tag and length.
pub const ENTRY_OVERHEAD_BYTES: usize = 40;

/// A `SnapshotMeta` whose membership lists `members` node ids in all:
/// tag, length, index, term, the membership's tag and length, and up to
/// three packed runs of ids (a tag and length each).
pub fn snapshot_meta_len_bound(members: usize) -> usize {
    52 + 11 * members
}

/// How many node ids `membership` lists (a node may be in two lists).
pub fn membership_ids(membership: &Membership) -> usize {
    membership.voters.len() + membership.outgoing.len() + membership.learners.len()
}

/// An upper bound on the bytes a pushed metadata document adds to an
/// encoded [`PeerBatch`] (its tag and length, and its bytes).
pub fn metadata_push_len_bound(gossip: &Gossip) -> usize {
    gossip.metadata.as_ref().map_or(0, |m| 8 + m.len())
}

/// An upper bound on the bytes `gm` adds to an encoded [`PeerBatch`].
pub fn group_message_len_bound(gm: &GroupMessage) -> usize {
    MESSAGE_OVERHEAD_BYTES
        + match &gm.message.body {
            MessageBody::Append { entries, .. } => entries
                .iter()
                .map(|e| ENTRY_OVERHEAD_BYTES + e.data.len())
                .sum(),
            MessageBody::SnapshotChunk { meta, data, .. } => {
                snapshot_meta_len_bound(membership_ids(&meta.membership)) + 32 + data.len()
            }
            _ => 0,
        }
}

/// Encodes a batch for the peer transport.
pub fn encode_peer_batch(b: &PeerBatch) -> Bytes {
    Bytes::from(peer_batch_to_proto(b).encode_to_vec())
}

/// Decodes and validates a batch received from a peer.
pub fn decode_peer_batch(buf: &[u8]) -> Result<PeerBatch> {
    peer_batch_from_proto(pb::PeerBatch::decode(buf)?)
}

/// [`decode_peer_batch`] from a shared buffer: the entries' data and
/// snapshot chunks point into `buf` rather than being copied out of it.
pub fn decode_peer_batch_bytes(buf: Bytes) -> Result<PeerBatch> {
    peer_batch_from_proto(pb::PeerBatch::decode(buf)?)
}

/// Encodes one WAL record's payload (without the file's length/CRC framing).
pub fn encode_wal_record(r: &WalRecord) -> Bytes {
    Bytes::from(wal_record_to_proto(r).encode_to_vec())
}

/// Decodes and validates one WAL record's payload.
pub fn decode_wal_record(buf: &[u8]) -> Result<WalRecord> {
    wal_record_from_proto(pb::WalRecord::decode(buf)?)
}

/// One WAL payload as a node's storage layer writes it: a Raft record, or a
/// reference to a snapshot the storage layer keeps in its own file (so a
/// partition's whole state is not copied into the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalPayload {
    Record(WalRecord),
    SnapshotRef {
        partition: PartitionId,
        meta: SnapshotMeta,
    },
}

/// Encodes a snapshot reference payload (see [`WalPayload::SnapshotRef`]).
pub fn encode_snapshot_ref(partition: PartitionId, meta: &SnapshotMeta) -> Bytes {
    let p = pb::WalRecord {
        partition: partition.0,
        record: Some(PbRecord::SnapshotRef(snapshot_meta_to_proto(meta))),
    };
    Bytes::from(p.encode_to_vec())
}

/// Decodes and validates a WAL payload of either kind.
pub fn decode_wal_payload(buf: &[u8]) -> Result<WalPayload> {
    let p = pb::WalRecord::decode(buf)?;
    if let Some(PbRecord::SnapshotRef(meta)) = p.record {
        return Ok(WalPayload::SnapshotRef {
            partition: PartitionId(p.partition),
            meta: snapshot_meta_from_proto(meta)?,
        });
    }
    wal_record_from_proto(p).map(WalPayload::Record)
}

/// Encodes a configuration change for the data of an entry of kind
/// [`EntryKind::ConfChange`].
pub fn encode_conf_change(change: &ConfChange) -> Bytes {
    Bytes::from(conf_change_to_proto(change).encode_to_vec())
}

/// Decodes and validates the data of a configuration change entry.
pub fn decode_conf_change(buf: &[u8]) -> Result<ConfChange> {
    conf_change_from_proto(pb::ConfChange::decode(buf)?)
}

/// The protobuf value of a configuration change (also the admin API's).
pub fn conf_change_to_proto(change: &ConfChange) -> pb::ConfChange {
    use pb::conf_change::Change;
    let ids = |list: &[NodeId]| list.iter().map(|id| id.0).collect();
    let change = match change {
        ConfChange::AddLearner(id) => Change::AddLearner(id.0),
        ConfChange::RemoveLearner(id) => Change::RemoveLearner(id.0),
        ConfChange::EnterJoint { promote, remove } => Change::EnterJoint(pb::EnterJoint {
            promote: ids(promote),
            remove: ids(remove),
        }),
        ConfChange::LeaveJoint => Change::LeaveJoint(pb::LeaveJoint {}),
    };
    pb::ConfChange {
        change: Some(change),
    }
}

/// Validates a configuration change from its protobuf value.
pub fn conf_change_from_proto(change: pb::ConfChange) -> Result<ConfChange> {
    use pb::conf_change::Change;
    let change = change
        .change
        .ok_or(WireError::Missing("ConfChange.change"))?;
    Ok(match change {
        Change::AddLearner(id) => ConfChange::AddLearner(node_id(id, "ConfChange.add_learner")?),
        Change::RemoveLearner(id) => {
            ConfChange::RemoveLearner(node_id(id, "ConfChange.remove_learner")?)
        }
        Change::EnterJoint(j) => ConfChange::EnterJoint {
            promote: sorted_ids(j.promote, "EnterJoint.promote")?,
            remove: sorted_ids(j.remove, "EnterJoint.remove")?,
        },
        Change::LeaveJoint(pb::LeaveJoint {}) => ConfChange::LeaveJoint,
    })
}

/// Encodes a snapshot for a snapshot file.
pub fn encode_snapshot(s: &Snapshot) -> Bytes {
    Bytes::from(snapshot_to_proto(s).encode_to_vec())
}

/// Decodes and validates a snapshot file's contents.
pub fn decode_snapshot(buf: &[u8]) -> Result<Snapshot> {
    snapshot_from_proto(pb::Snapshot::decode(buf)?)
}

/// The protobuf value of a batch, for transports that carry protobuf values
/// rather than bytes (gRPC, also under madsim). Same encoding choices as
/// [`encode_peer_batch`].
pub fn peer_batch_to_proto(b: &PeerBatch) -> pb::PeerBatch {
    pb::PeerBatch {
        from: b.from.0,
        to: b.to.0,
        messages: b
            .messages
            .iter()
            .map(|gm| pb::GroupMessage {
                partition: gm.partition.0,
                message: Some(message_to_proto(&gm.message, b.from, b.to)),
            })
            .collect(),
        metadata_version: b.gossip.metadata_version,
        metadata_leader: b.gossip.metadata_leader.map_or(0, |(_, l)| l.0),
        metadata_leader_term: b.gossip.metadata_leader.map_or(0, |(t, _)| t),
        metadata: b.gossip.metadata.clone().unwrap_or_default(),
        placement: b.placement.iter().map(placement_to_proto).collect(),
    }
}

fn placement_to_proto(m: &PlacementMessage) -> pb::PlacementMessage {
    use pb::placement_message::Kind;
    let (partition, kind) = match m {
        PlacementMessage::Report {
            partition,
            term,
            membership,
            learners,
        } => (
            partition,
            Kind::Report(pb::GroupReport {
                term: *term,
                membership: Some(membership_to_proto(membership)),
                learners: learners
                    .iter()
                    .map(|l| pb::LearnerProgress {
                        node: l.node.0,
                        matched: l.matched,
                        last_index: l.last_index,
                        snapshot_bytes_acked: l.snapshot.map_or(0, |(a, _)| a),
                        snapshot_bytes_total: l.snapshot.map_or(0, |(_, t)| t),
                    })
                    .collect(),
            }),
        ),
        PlacementMessage::ConfChange { partition, change } => {
            (partition, Kind::ConfChange(conf_change_to_proto(change)))
        }
        PlacementMessage::TransferLeader { partition, to } => {
            (partition, Kind::TransferLeader(to.0))
        }
        PlacementMessage::NodeReport {
            peers,
            addresses,
            leaving,
        } => (
            &PartitionId(0),
            Kind::NodeReport(pb::NodeReport {
                leaving: *leaving,
                rest_address: addresses.rest.clone(),
                resp_address: addresses.resp.clone(),
                peers: peers
                    .iter()
                    .map(|h| pb::PeerHealth {
                        node: h.node.0,
                        down: h.down_for.is_some(),
                        down_for_ms: h
                            .down_for
                            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    })
                    .collect(),
            }),
        ),
    };
    pb::PlacementMessage {
        partition: partition.0,
        kind: Some(kind),
    }
}

fn placement_from_proto(m: pb::PlacementMessage) -> Result<PlacementMessage> {
    use pb::placement_message::Kind;
    let partition = PartitionId(m.partition);
    Ok(
        match m.kind.ok_or(WireError::Missing("PlacementMessage.kind"))? {
            Kind::Report(r) => PlacementMessage::Report {
                partition,
                term: r.term,
                membership: membership_from_proto(
                    r.membership
                        .ok_or(WireError::Missing("GroupReport.membership"))?,
                )?,
                learners: r
                    .learners
                    .into_iter()
                    .map(|l| {
                        Ok(CatchUp {
                            node: node_id(l.node, "LearnerProgress.node")?,
                            matched: l.matched,
                            last_index: l.last_index,
                            snapshot: (l.snapshot_bytes_total > 0)
                                .then_some((l.snapshot_bytes_acked, l.snapshot_bytes_total)),
                        })
                    })
                    .collect::<Result<_>>()?,
            },
            Kind::ConfChange(c) => PlacementMessage::ConfChange {
                partition,
                change: conf_change_from_proto(c)?,
            },
            Kind::TransferLeader(to) => PlacementMessage::TransferLeader {
                partition,
                to: node_id(to, "PlacementMessage.transfer_leader")?,
            },
            Kind::NodeReport(h) => {
                if h.peers.len() > MAX_HEALTH_PEERS {
                    return Err(invalid(format!(
                        "NodeReport: {} peers, more than the {MAX_HEALTH_PEERS} a cluster has",
                        h.peers.len()
                    )));
                }
                PlacementMessage::NodeReport {
                    leaving: h.leaving,
                    addresses: ClientAddresses {
                        rest: h.rest_address,
                        resp: h.resp_address,
                    },
                    peers: h
                        .peers
                        .into_iter()
                        .map(|p| {
                            Ok(PeerHealth {
                                node: node_id(p.node, "PeerHealth.node")?,
                                down_for: p.down.then(|| Duration::from_millis(p.down_for_ms)),
                            })
                        })
                        .collect::<Result<_>>()?,
                }
            }
        },
    )
}

/// An upper bound on the bytes one placement message adds to an encoded
/// [`PeerBatch`].
pub fn placement_len_bound(m: &PlacementMessage) -> usize {
    32 + match m {
        PlacementMessage::Report {
            membership,
            learners,
            ..
        } => snapshot_meta_len_bound(membership_ids(membership)) + 60 * learners.len(),
        PlacementMessage::ConfChange { change, .. } => match change {
            ConfChange::EnterJoint { promote, remove } => 16 + 11 * (promote.len() + remove.len()),
            _ => 16,
        },
        PlacementMessage::TransferLeader { .. } => 11,
        PlacementMessage::NodeReport {
            peers, addresses, ..
        } => 18 + 16 * peers.len() + addresses.rest.len() + addresses.resp.len(),
    }
}

/// Validates a protobuf batch and turns it into the core's value; the
/// counterpart of [`peer_batch_to_proto`], with [`decode_peer_batch`]'s rules.
pub fn peer_batch_from_proto(p: pb::PeerBatch) -> Result<PeerBatch> {
    let from = node_id(p.from, "PeerBatch.from")?;
    let to = node_id(p.to, "PeerBatch.to")?;
    if from == to {
        return Err(invalid(format!(
            "PeerBatch: from and to are the same node {from}"
        )));
    }
    let messages = p
        .messages
        .into_iter()
        .map(|gm| {
            let partition = PartitionId(gm.partition);
            let message = gm
                .message
                .ok_or(WireError::Missing("GroupMessage.message"))?;
            let message = message_from_proto(message, from, to).map_err(|e| match e {
                WireError::Invalid(why) => invalid(format!("{why} (partition {partition})")),
                other => other,
            })?;
            Ok(GroupMessage { partition, message })
        })
        .collect::<Result<Vec<_>>>()?;
    if p.metadata.len() > MAX_DOCUMENT_BYTES {
        return Err(invalid(format!(
            "PeerBatch.metadata: {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
            p.metadata.len()
        )));
    }
    if !p.metadata.is_empty() && p.metadata_version == 0 {
        return Err(invalid("PeerBatch.metadata without a version".to_owned()));
    }
    let gossip = Gossip {
        metadata_version: p.metadata_version,
        metadata_leader: (p.metadata_leader != 0)
            .then_some((p.metadata_leader_term, NodeId(p.metadata_leader))),
        metadata: (!p.metadata.is_empty()).then_some(p.metadata),
    };
    let placement = p
        .placement
        .into_iter()
        .map(placement_from_proto)
        .collect::<Result<Vec<_>>>()?;
    Ok(PeerBatch {
        from,
        to,
        messages,
        gossip,
        placement,
    })
}

// ------------------------------------------------------------- to proto

fn wal_record_to_proto(r: &WalRecord) -> pb::WalRecord {
    let record = match &r.record {
        PersistRecord::HardState(hs) => PbRecord::HardState(hard_state_to_proto(hs)),
        PersistRecord::Entries(entries) => PbRecord::Entries(pb::wal_record::Entries {
            entries: entries.iter().map(entry_to_proto).collect(),
        }),
        PersistRecord::Snapshot(s) => PbRecord::Snapshot(snapshot_to_proto(s)),
        PersistRecord::Genesis(m) => PbRecord::Genesis(membership_to_proto(m)),
        PersistRecord::Tombstone(t) => PbRecord::Tombstone(pb::wal_record::Tombstone {
            removed_at: t.removed_at,
            voters: t.voters.iter().map(|v| v.0).collect(),
        }),
    };
    pb::WalRecord {
        partition: r.partition.0,
        record: Some(record),
    }
}

/// `from`/`to` are left unset when they equal the batch's (see module doc).
fn message_to_proto(m: &Message, batch_from: NodeId, batch_to: NodeId) -> pb::RaftMessage {
    use pb::raft_message as rm;
    let body = match &m.body {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => PbBody::PreVote(rm::PreVote {
            last_index: *last_index,
            last_term: *last_term,
        }),
        MessageBody::PreVoteResponse { granted } => {
            PbBody::PreVoteResponse(rm::PreVoteResponse { granted: *granted })
        }
        MessageBody::Vote {
            last_index,
            last_term,
            transfer,
        } => PbBody::Vote(rm::Vote {
            last_index: *last_index,
            last_term: *last_term,
            transfer: *transfer,
        }),
        MessageBody::VoteResponse { granted } => {
            PbBody::VoteResponse(rm::VoteResponse { granted: *granted })
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => PbBody::Append(rm::Append {
            prev_index: *prev_index,
            prev_term: *prev_term,
            entries: entries.iter().map(entry_to_proto).collect(),
            commit: *commit,
        }),
        MessageBody::AppendResponse {
            success,
            index,
            hint,
        } => PbBody::AppendResponse(rm::AppendResponse {
            success: *success,
            index: *index,
            hint: *hint,
        }),
        MessageBody::Heartbeat {
            commit,
            round,
            quiesce,
        } => PbBody::Heartbeat(rm::Heartbeat {
            commit: *commit,
            round: *round,
            quiesce: *quiesce,
        }),
        MessageBody::HeartbeatResponse { round } => {
            PbBody::HeartbeatResponse(rm::HeartbeatResponse { round: *round })
        }
        MessageBody::SnapshotChunk {
            meta,
            total_len,
            offset,
            data,
        } => PbBody::SnapshotChunk(rm::SnapshotChunk {
            meta: Some(snapshot_meta_to_proto(meta)),
            total_len: *total_len,
            offset: *offset,
            data: data.clone(),
        }),
        MessageBody::SnapshotAck { index, received } => PbBody::SnapshotAck(rm::SnapshotAck {
            index: *index,
            received: *received,
        }),
        MessageBody::TimeoutNow => PbBody::TimeoutNow(rm::TimeoutNow {}),
        MessageBody::LeaderHint { leader } => {
            PbBody::LeaderHint(rm::LeaderHint { leader: leader.0 })
        }
        MessageBody::LeaderQuery => PbBody::LeaderQuery(rm::LeaderQuery {}),
    };
    pb::RaftMessage {
        from: if m.from == batch_from { 0 } else { m.from.0 },
        to: if m.to == batch_to { 0 } else { m.to.0 },
        term: m.term,
        body: Some(body),
    }
}

fn entry_to_proto(e: &Entry) -> pb::Entry {
    pb::Entry {
        index: e.index,
        term: e.term,
        kind: match e.kind {
            EntryKind::Normal => pb::EntryKind::Normal,
            EntryKind::Noop => pb::EntryKind::Noop,
            EntryKind::ConfChange => pb::EntryKind::ConfChange,
        } as i32,
        data: e.data.clone(),
    }
}

fn snapshot_to_proto(s: &Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        meta: Some(snapshot_meta_to_proto(&s.meta)),
        data: s.data.clone(),
    }
}

fn snapshot_meta_to_proto(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        index: meta.index,
        term: meta.term,
        membership: Some(membership_to_proto(&meta.membership)),
    }
}

fn membership_to_proto(m: &Membership) -> pb::Membership {
    let ids = |list: &[NodeId]| list.iter().map(|id| id.0).collect();
    pb::Membership {
        voters: ids(&m.voters),
        outgoing: ids(&m.outgoing),
        learners: ids(&m.learners),
    }
}

fn hard_state_to_proto(hs: &HardState) -> pb::HardState {
    pb::HardState {
        term: hs.term,
        vote: hs.vote.map_or(0, |v| v.0),
        commit: hs.commit,
    }
}

// ----------------------------------------------------------- from proto

fn invalid(why: String) -> WireError {
    WireError::Invalid(why)
}

/// A node id that must be present: 0 is reserved (proto3's "unset").
fn node_id(raw: u64, field: &str) -> Result<NodeId> {
    if raw == 0 {
        Err(invalid(format!("{field}: node id 0 is reserved")))
    } else {
        Ok(NodeId(raw))
    }
}

/// Node ids, each != 0, sorted and deduplicated.
fn sorted_ids(list: Vec<u64>, field: &str) -> Result<Vec<NodeId>> {
    let mut ids = list
        .into_iter()
        .map(|v| node_id(v, field))
        .collect::<Result<Vec<_>>>()?;
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// A message's `from`/`to`: absent means the batch's; present must equal it.
fn batch_member(raw: u64, batch: NodeId, field: &str) -> Result<NodeId> {
    if raw == 0 || raw == batch.0 {
        Ok(batch)
    } else {
        Err(invalid(format!(
            "{field}: {} differs from its batch's {batch}",
            NodeId(raw)
        )))
    }
}

fn wal_record_from_proto(p: pb::WalRecord) -> Result<WalRecord> {
    let record = match p.record.ok_or(WireError::Missing("WalRecord.record"))? {
        PbRecord::HardState(hs) => PersistRecord::HardState(hard_state_from_proto(hs)),
        PbRecord::Entries(list) => {
            // An empty record would carry no position: the core never writes one.
            if list.entries.is_empty() {
                return Err(invalid("WalRecord.entries: empty".to_owned()));
            }
            PersistRecord::Entries(entries_from_proto(list.entries, "WalRecord.entries")?)
        }
        PbRecord::Snapshot(s) => PersistRecord::Snapshot(snapshot_from_proto(s)?),
        PbRecord::Genesis(m) => PersistRecord::Genesis(membership_from_proto(m)?),
        PbRecord::Tombstone(t) => PersistRecord::Tombstone(Tombstone {
            removed_at: t.removed_at,
            voters: sorted_ids(t.voters, "WalRecord.tombstone.voters")?,
        }),
        PbRecord::SnapshotRef(_) => {
            return Err(invalid(
                "WalRecord.snapshot_ref: a storage-layer record, not a Raft record".to_owned(),
            ));
        }
    };
    Ok(WalRecord {
        partition: PartitionId(p.partition),
        record,
    })
}

fn message_from_proto(m: pb::RaftMessage, batch_from: NodeId, batch_to: NodeId) -> Result<Message> {
    use MessageBody as B;
    let from = batch_member(m.from, batch_from, "RaftMessage.from")?;
    let to = batch_member(m.to, batch_to, "RaftMessage.to")?;
    let term = m.term;
    let body = match m.body.ok_or(WireError::Missing("RaftMessage.body"))? {
        PbBody::PreVote(b) => B::PreVote {
            last_index: b.last_index,
            last_term: b.last_term,
        },
        PbBody::PreVoteResponse(b) => B::PreVoteResponse { granted: b.granted },
        PbBody::Vote(b) => B::Vote {
            last_index: b.last_index,
            last_term: b.last_term,
            transfer: b.transfer,
        },
        PbBody::VoteResponse(b) => B::VoteResponse { granted: b.granted },
        PbBody::Append(b) => append_from_proto(b, term)?,
        PbBody::AppendResponse(b) => B::AppendResponse {
            success: b.success,
            index: b.index,
            hint: b.hint,
        },
        PbBody::Heartbeat(b) => B::Heartbeat {
            commit: b.commit,
            round: b.round,
            quiesce: b.quiesce,
        },
        PbBody::HeartbeatResponse(b) => B::HeartbeatResponse { round: b.round },
        PbBody::InstallSnapshot(_) => {
            return Err(invalid(
                "RaftMessage.install_snapshot: retired; snapshots travel as snapshot_chunk"
                    .to_owned(),
            ));
        }
        PbBody::SnapshotChunk(b) => snapshot_chunk_from_proto(b)?,
        PbBody::SnapshotAck(b) => B::SnapshotAck {
            index: b.index,
            received: b.received,
        },
        PbBody::TimeoutNow(pb::raft_message::TimeoutNow {}) => B::TimeoutNow,
        PbBody::LeaderHint(b) => B::LeaderHint {
            leader: node_id(b.leader, "LeaderHint.leader")?,
        },
        PbBody::LeaderQuery(pb::raft_message::LeaderQuery {}) => B::LeaderQuery,
    };
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

/// A chunk lies inside its image, and only an empty image has an empty chunk.
fn snapshot_chunk_from_proto(c: pb::raft_message::SnapshotChunk) -> Result<MessageBody> {
    let meta = snapshot_meta_from_proto(c.meta.ok_or(WireError::Missing("SnapshotChunk.meta"))?)?;
    let len = c.data.len() as u64;
    if c.offset
        .checked_add(len)
        .is_none_or(|end| end > c.total_len)
    {
        return Err(invalid(format!(
            "SnapshotChunk: bytes {}..+{len} lie beyond the image's {} bytes",
            c.offset, c.total_len
        )));
    }
    if len == 0 && c.total_len != 0 {
        return Err(invalid(format!(
            "SnapshotChunk: empty chunk at offset {} of a {}-byte image",
            c.offset, c.total_len
        )));
    }
    Ok(MessageBody::SnapshotChunk {
        meta,
        total_len: c.total_len,
        offset: c.offset,
        data: c.data,
    })
}

/// Raft §5.3: the entries follow `prev_index` directly; a leader of term
/// `term` holds only entries of `term` or older, and its log's terms never
/// decrease, so none is older than `prev_term`.
fn append_from_proto(a: pb::raft_message::Append, term: u64) -> Result<MessageBody> {
    if a.prev_index == 0 && a.prev_term != 0 {
        return Err(invalid(format!(
            "Append.prev_term: {} at prev_index 0 (the empty log has term 0)",
            a.prev_term
        )));
    }
    if a.prev_term > term {
        return Err(invalid(format!(
            "Append.prev_term: {} exceeds the message's term {term}",
            a.prev_term
        )));
    }
    let mut entries = entries_from_proto(a.entries, "Append.entries")?;
    // An entry outlives the frame it arrived in (it stays in the follower's
    // log until a snapshot folds it in), so it gets its own allocation: a
    // slice of the frame would keep the whole received buffer, with every
    // other group's entries and messages in it, alive as long as the
    // longest-lived entry among them.
    for e in &mut entries {
        e.data = Bytes::copy_from_slice(&e.data);
    }
    if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
        if a.prev_index.checked_add(1) != Some(first.index) {
            return Err(invalid(format!(
                "Append.entries: first index {} does not follow prev_index {}",
                first.index, a.prev_index
            )));
        }
        if first.term < a.prev_term {
            return Err(invalid(format!(
                "Append.entries: first term {} is below prev_term {}",
                first.term, a.prev_term
            )));
        }
        if last.term > term {
            return Err(invalid(format!(
                "Append.entries: term {} exceeds the message's term {term}",
                last.term
            )));
        }
    }
    Ok(MessageBody::Append {
        prev_index: a.prev_index,
        prev_term: a.prev_term,
        entries,
        commit: a.commit,
    })
}

/// A run of entries as the core writes and sends them: each index the
/// previous + 1, terms never decreasing (Raft's Log Matching property makes a
/// log's terms monotonic).
fn entries_from_proto(list: Vec<pb::Entry>, field: &str) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::with_capacity(list.len());
    for (i, e) in list.into_iter().enumerate() {
        let e = entry_from_proto(e, field, i)?;
        if let Some(prev) = entries.last() {
            if prev.index.checked_add(1) != Some(e.index) {
                return Err(invalid(format!(
                    "{field}[{i}]: index {} after index {} (entries must be contiguous)",
                    e.index, prev.index
                )));
            }
            if e.term < prev.term {
                return Err(invalid(format!(
                    "{field}[{i}]: term {} after term {} (terms must not decrease)",
                    e.term, prev.term
                )));
            }
        }
        entries.push(e);
    }
    Ok(entries)
}

fn entry_from_proto(e: pb::Entry, field: &str, i: usize) -> Result<Entry> {
    if e.index == 0 {
        return Err(invalid(format!(
            "{field}[{i}]: index 0 (the first entry has index 1)"
        )));
    }
    if e.term == 0 {
        return Err(invalid(format!(
            "{field}[{i}]: term 0 (entries are created by leaders of term >= 1)"
        )));
    }
    let kind = match pb::EntryKind::try_from(e.kind) {
        Ok(pb::EntryKind::Normal) => EntryKind::Normal,
        Ok(pb::EntryKind::Noop) => EntryKind::Noop,
        Ok(pb::EntryKind::ConfChange) => EntryKind::ConfChange,
        Ok(pb::EntryKind::Unspecified) | Err(_) => {
            return Err(invalid(format!(
                "{field}[{i}]: unknown entry kind {}",
                e.kind
            )));
        }
    };
    if kind == EntryKind::Noop && !e.data.is_empty() {
        return Err(invalid(format!(
            "{field}[{i}]: noop entry carries {} bytes of data",
            e.data.len()
        )));
    }
    if kind == EntryKind::ConfChange
        && let Err(err) = decode_conf_change(&e.data)
    {
        return Err(invalid(format!(
            "{field}[{i}]: configuration change does not decode: {err}"
        )));
    }
    Ok(Entry {
        index: e.index,
        term: e.term,
        kind,
        data: e.data,
    })
}

fn snapshot_from_proto(s: pb::Snapshot) -> Result<Snapshot> {
    let meta = snapshot_meta_from_proto(s.meta.ok_or(WireError::Missing("Snapshot.meta"))?)?;
    Ok(Snapshot { meta, data: s.data })
}

fn snapshot_meta_from_proto(meta: pb::SnapshotMeta) -> Result<SnapshotMeta> {
    if meta.index == 0 && meta.term != 0 {
        return Err(invalid(format!(
            "SnapshotMeta.term: {} at index 0 (the empty log has term 0)",
            meta.term
        )));
    }
    let membership = membership_from_proto(
        meta.membership
            .ok_or(WireError::Missing("SnapshotMeta.membership"))?,
    )?;
    Ok(SnapshotMeta {
        index: meta.index,
        term: meta.term,
        membership,
    })
}

fn membership_from_proto(m: pb::Membership) -> Result<Membership> {
    if m.voters.is_empty() {
        return Err(invalid(
            "SnapshotMeta.membership: no voters (a group always has one)".to_owned(),
        ));
    }
    let membership = Membership {
        voters: sorted_ids(m.voters, "Membership.voters")?,
        outgoing: sorted_ids(m.outgoing, "Membership.outgoing")?,
        learners: sorted_ids(m.learners, "Membership.learners")?,
    };
    if let Some(id) = membership
        .learners
        .iter()
        .find(|&&id| membership.is_voter(id))
    {
        return Err(invalid(format!(
            "SnapshotMeta.membership: {id} is both a learner and a voter"
        )));
    }
    Ok(membership)
}

fn hard_state_from_proto(hs: pb::HardState) -> HardState {
    HardState {
        term: hs.term,
        // 0 is "no vote": node id 0 is reserved.
        vote: (hs.vote != 0).then_some(NodeId(hs.vote)),
        commit: hs.commit,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // ------------------------------------------------------- strategies

    fn arb_node_id() -> impl Strategy<Value = NodeId> {
        prop_oneof![4 => 1..=5u64, 1 => 1..=u64::MAX].prop_map(NodeId)
    }

    fn arb_data() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
    }

    /// `len` contiguous entries from `first_index`, terms non-decreasing
    /// within `min_term..=max_term` (which must be non-empty, min >= 1).
    fn arb_entries(
        first_index: u64,
        min_term: u64,
        max_term: u64,
        len: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Vec<Entry>> {
        prop::collection::vec(
            (
                min_term..=max_term,
                prop::option::of(arb_data()), // None: a noop
            ),
            len,
        )
        .prop_map(move |mut raw| {
            raw.sort_by_key(|(term, _)| *term);
            raw.into_iter()
                .zip(first_index..)
                .map(|((term, data), index)| Entry {
                    index,
                    term,
                    kind: if data.is_some() {
                        EntryKind::Normal
                    } else {
                        EntryKind::Noop
                    },
                    data: data.unwrap_or_default(),
                })
                .collect()
        })
    }

    /// Sorted, distinct node ids.
    fn arb_ids(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<NodeId>> {
        prop::collection::vec(arb_node_id(), len).prop_map(|mut ids| {
            ids.sort();
            ids.dedup();
            ids
        })
    }

    /// A configuration as the core makes them: voters, C_old while joint,
    /// and learners that vote in neither.
    fn arb_membership() -> impl Strategy<Value = Membership> {
        (arb_ids(1..6), arb_ids(0..6), arb_ids(0..4)).prop_map(|(voters, outgoing, learners)| {
            let mut m = Membership {
                voters,
                outgoing,
                learners,
            };
            let voting: Vec<NodeId> = m.voters.iter().chain(&m.outgoing).copied().collect();
            m.learners.retain(|id| !voting.contains(id));
            m
        })
    }

    fn arb_conf_change() -> impl Strategy<Value = ConfChange> {
        prop_oneof![
            arb_node_id().prop_map(ConfChange::AddLearner),
            arb_node_id().prop_map(ConfChange::RemoveLearner),
            (arb_ids(0..3), arb_ids(0..3))
                .prop_map(|(promote, remove)| ConfChange::EnterJoint { promote, remove }),
            Just(ConfChange::LeaveJoint),
        ]
    }

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        (
            prop_oneof![1 => Just(0u64), 4 => 1..10_000u64],
            1..1_000u64,
            arb_membership(),
            arb_data(),
        )
            .prop_map(|(index, term, membership, data)| Snapshot {
                meta: SnapshotMeta {
                    index,
                    term: if index == 0 { 0 } else { term },
                    membership,
                },
                data,
            })
    }

    fn arb_append(term: u64) -> impl Strategy<Value = MessageBody> {
        (0..10_000u64, 1..=term, any::<u64>()).prop_flat_map(move |(prev_index, pt, commit)| {
            let prev_term = if prev_index == 0 { 0 } else { pt };
            arb_entries(prev_index + 1, prev_term.max(1), term, 0..5).prop_map(move |entries| {
                MessageBody::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                }
            })
        })
    }

    fn arb_body(term: u64) -> impl Strategy<Value = MessageBody> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(last_index, last_term)| {
                MessageBody::PreVote {
                    last_index,
                    last_term,
                }
            }),
            any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(last_index, last_term, transfer)| MessageBody::Vote {
                    last_index,
                    last_term,
                    transfer,
                }
            ),
            any::<bool>().prop_map(|granted| MessageBody::VoteResponse { granted }),
            arb_append(term),
            (any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(success, index, hint)| {
                MessageBody::AppendResponse {
                    success,
                    index,
                    hint,
                }
            }),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(commit, round, quiesce)| {
                MessageBody::Heartbeat {
                    commit,
                    round,
                    quiesce,
                }
            }),
            any::<u64>().prop_map(|round| MessageBody::HeartbeatResponse { round }),
            (arb_snapshot(), 0..100u64, 0..100u64).prop_map(|(snapshot, before, after)| {
                // A chunk of some image: `data` somewhere inside it (an
                // empty chunk only as the whole of an empty image).
                let len = snapshot.data.len() as u64;
                let (offset, total_len) = if len == 0 {
                    (0, 0)
                } else {
                    (before, before + len + after)
                };
                MessageBody::SnapshotChunk {
                    meta: snapshot.meta,
                    total_len,
                    offset,
                    data: snapshot.data,
                }
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(index, received)| MessageBody::SnapshotAck { index, received }),
            Just(MessageBody::TimeoutNow),
            arb_node_id().prop_map(|leader| MessageBody::LeaderHint { leader }),
            Just(MessageBody::LeaderQuery),
        ]
    }

    fn arb_group_message(from: NodeId, to: NodeId) -> impl Strategy<Value = GroupMessage> {
        (any::<u32>(), prop_oneof![1..100u64, 1..=u64::MAX]).prop_flat_map(
            move |(partition, term)| {
                arb_body(term).prop_map(move |body| GroupMessage {
                    partition: PartitionId(partition),
                    message: Message {
                        from,
                        to,
                        term,
                        body,
                    },
                })
            },
        )
    }

    fn arb_peer_batch() -> impl Strategy<Value = PeerBatch> {
        (arb_node_id(), arb_node_id())
            .prop_filter("a node never sends to itself", |(from, to)| from != to)
            .prop_flat_map(|(from, to)| {
                (
                    prop::collection::vec(arb_group_message(from, to), 0..6),
                    arb_gossip(),
                    prop::collection::vec(arb_placement(), 0..4),
                )
                    .prop_map(move |(messages, gossip, placement)| PeerBatch {
                        from,
                        to,
                        messages,
                        gossip,
                        placement,
                    })
            })
    }

    fn arb_catch_up() -> impl Strategy<Value = CatchUp> {
        (
            arb_node_id(),
            any::<u64>(),
            any::<u64>(),
            prop::option::of((any::<u64>(), 1..u64::MAX)),
        )
            .prop_map(|(node, matched, last_index, snapshot)| CatchUp {
                node,
                matched,
                last_index,
                snapshot,
            })
    }

    fn arb_placement() -> impl Strategy<Value = PlacementMessage> {
        let partition = any::<u32>().prop_map(PartitionId);
        prop_oneof![
            (
                partition.clone(),
                any::<u64>(),
                arb_membership(),
                prop::collection::vec(arb_catch_up(), 0..3)
            )
                .prop_map(|(partition, term, membership, learners)| {
                    PlacementMessage::Report {
                        partition,
                        term,
                        membership,
                        learners,
                    }
                }),
            (partition.clone(), arb_conf_change())
                .prop_map(|(partition, change)| PlacementMessage::ConfChange { partition, change }),
            (partition, arb_node_id())
                .prop_map(|(partition, to)| PlacementMessage::TransferLeader { partition, to }),
            (
                prop::collection::vec((arb_node_id(), prop::option::of(0..u32::MAX as u64)), 0..6),
                any::<bool>()
            )
                .prop_map(|(peers, leaving)| PlacementMessage::NodeReport {
                    leaving,
                    addresses: ClientAddresses {
                        rest: "127.0.0.1:8081".into(),
                        resp: String::new(),
                    },
                    peers: peers
                        .into_iter()
                        .map(|(node, ms)| PeerHealth {
                            node,
                            down_for: ms.map(Duration::from_millis),
                        })
                        .collect(),
                }),
        ]
    }

    fn arb_gossip() -> impl Strategy<Value = Gossip> {
        let leader = prop::option::of((any::<u64>(), arb_node_id()));
        prop_oneof![
            Just(Gossip::default()),
            (
                1..u64::MAX,
                leader,
                prop::option::of(prop::collection::vec(any::<u8>(), 1..64))
            )
                .prop_map(|(metadata_version, metadata_leader, doc)| Gossip {
                    metadata_version,
                    metadata_leader,
                    metadata: doc.map(Bytes::from),
                }),
        ]
    }

    fn arb_wal_record() -> impl Strategy<Value = WalRecord> {
        let record = prop_oneof![
            (any::<u64>(), prop::option::of(arb_node_id()), any::<u64>()).prop_map(
                |(term, vote, commit)| PersistRecord::HardState(HardState { term, vote, commit })
            ),
            (1..10_000u64, 1..100u64)
                .prop_flat_map(|(first, min_term)| arb_entries(first, min_term, 100, 1..6))
                .prop_map(PersistRecord::Entries),
            arb_snapshot().prop_map(PersistRecord::Snapshot),
            arb_membership().prop_map(PersistRecord::Genesis),
            (any::<u64>(), arb_ids(0..6)).prop_map(|(removed_at, voters)| {
                PersistRecord::Tombstone(Tombstone { removed_at, voters })
            }),
        ];
        (any::<u32>(), record).prop_map(|(partition, record)| WalRecord {
            partition: PartitionId(partition),
            record,
        })
    }

    proptest! {
        #[test]
        fn peer_batch_roundtrips(batch in arb_peer_batch()) {
            let bytes = encode_peer_batch(&batch);
            prop_assert_eq!(decode_peer_batch(&bytes), Ok(batch.clone()));
            prop_assert_eq!(peer_batch_from_proto(peer_batch_to_proto(&batch)), Ok(batch));
        }

        /// The node packs batches by these bounds: they must never be below
        /// the real encoded size, or a "full" batch could exceed the
        /// transport's limit.
        #[test]
        fn size_bounds_are_upper_bounds(batch in arb_peer_batch()) {
            let header = Gossip { metadata: None, ..batch.gossip.clone() };
            let empty = PeerBatch { from: batch.from, to: batch.to, messages: Vec::new(), gossip: header, placement: Vec::new() };
            let bound = PEER_BATCH_OVERHEAD_BYTES
                + metadata_push_len_bound(&batch.gossip)
                + batch.placement.iter().map(placement_len_bound).sum::<usize>()
                + batch.messages.iter().map(group_message_len_bound).sum::<usize>();
            let real = encode_peer_batch(&batch).len();
            prop_assert!(real <= bound, "encoded {} bytes, bound {}", real, bound);
            prop_assert!(encode_peer_batch(&empty).len() <= PEER_BATCH_OVERHEAD_BYTES);
            for gm in &batch.messages {
                let one = PeerBatch { messages: vec![gm.clone()], ..empty.clone() };
                let added = encode_peer_batch(&one).len() - encode_peer_batch(&empty).len();
                prop_assert!(added <= group_message_len_bound(gm));
                // ...and not wildly loose: a few dozen bytes per entry at most.
                let entries = match &gm.message.body {
                    MessageBody::Append { entries, .. } => entries.len(),
                    _ => 0,
                };
                let slack = group_message_len_bound(gm) - added;
                prop_assert!(slack <= 256 + entries * ENTRY_OVERHEAD_BYTES, "{} bytes of slack", slack);
            }
        }

        #[test]
        fn wal_record_roundtrips(record in arb_wal_record()) {
            let bytes = encode_wal_record(&record);
            prop_assert_eq!(decode_wal_record(&bytes), Ok(record));
        }

        #[test]
        fn decode_arbitrary_bytes_never_panics(buf in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_peer_batch(&buf);
            let _ = decode_wal_record(&buf);
        }

        /// Bytes close to valid ones reach deeper into validation than random
        /// bytes. Whatever decodes must be a value that round-trips.
        #[test]
        fn decode_corrupted_encoding_never_panics(
            batch in arb_peer_batch(),
            record in arb_wal_record(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            for (bytes, is_batch) in [
                (encode_peer_batch(&batch).to_vec(), true),
                (encode_wal_record(&record).to_vec(), false),
            ] {
                let mut bytes = bytes;
                if bytes.is_empty() {
                    continue;
                }
                for (at, value) in &flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= value;
                }
                if is_batch {
                    if let Ok(b) = decode_peer_batch(&bytes) {
                        prop_assert_eq!(decode_peer_batch(&encode_peer_batch(&b)), Ok(b));
                    }
                } else if let Ok(r) = decode_wal_record(&bytes) {
                    prop_assert_eq!(decode_wal_record(&encode_wal_record(&r)), Ok(r));
                }
            }
        }
    }

    // ------------------------------------------------ validation rules

    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"x"),
        }
    }

    fn snapshot(index: u64, term: u64, voters: &[u64]) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership: Membership::new(voters.iter().copied().map(NodeId)),
            },
            data: Bytes::from_static(b"image"),
        }
    }

    #[test]
    fn snapshot_refs_and_snapshot_files_round_trip() {
        let s = snapshot(40, 3, &[1, 2, 3]);
        let payload = encode_snapshot_ref(PartitionId(9), &s.meta);
        assert_eq!(
            decode_wal_payload(&payload).unwrap(),
            WalPayload::SnapshotRef {
                partition: PartitionId(9),
                meta: s.meta.clone(),
            }
        );
        // The core's own record decoder refuses a storage-layer record.
        assert!(matches!(
            decode_wal_record(&payload),
            Err(WireError::Invalid(_))
        ));
        assert_eq!(decode_snapshot(&encode_snapshot(&s)).unwrap(), s);
        let r = WalRecord {
            partition: PartitionId(2),
            record: PersistRecord::Snapshot(s),
        };
        assert_eq!(
            decode_wal_payload(&encode_wal_record(&r)).unwrap(),
            WalPayload::Record(r)
        );
        assert!(decode_snapshot(b"\xff\xff\xff").is_err());
    }

    fn batch_of(term: u64, body: MessageBody) -> PeerBatch {
        PeerBatch {
            from: N1,
            to: N2,
            messages: vec![GroupMessage {
                partition: PartitionId(7),
                message: Message {
                    from: N1,
                    to: N2,
                    term,
                    body,
                },
            }],
            gossip: Default::default(),
            placement: Vec::new(),
        }
    }

    fn append(prev_index: u64, prev_term: u64, entries: Vec<Entry>) -> MessageBody {
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit: 0,
        }
    }

    /// Encodes `batch` faithfully (whatever its validity) and decodes it.
    fn reencode(batch: &PeerBatch) -> Result<PeerBatch> {
        decode_peer_batch(&encode_peer_batch(batch))
    }

    /// The `Invalid` message, or a panic naming what came back instead.
    fn invalid_reason<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(WireError::Invalid(why)) => why,
            other => panic!("expected WireError::Invalid, got {other:?}"),
        }
    }

    fn wal(record: PersistRecord) -> WalRecord {
        WalRecord {
            partition: PartitionId(3),
            record,
        }
    }

    #[test]
    fn rejects_node_id_zero_in_batch() {
        let mut b = batch_of(1, MessageBody::TimeoutNow);
        b.from = NodeId(0);
        b.messages.clear();
        let why = invalid_reason(reencode(&b));
        assert_eq!(why, "PeerBatch.from: node id 0 is reserved");
        let mut b = batch_of(1, MessageBody::TimeoutNow);
        b.to = NodeId(0);
        b.messages.clear();
        let why = invalid_reason(reencode(&b));
        assert_eq!(why, "PeerBatch.to: node id 0 is reserved");
    }

    #[test]
    fn rejects_node_id_zero_among_voters() {
        let mut s = snapshot(5, 2, &[1, 2]);
        s.meta.membership.voters.insert(0, NodeId(0));
        let why = invalid_reason(decode_wal_record(&encode_wal_record(&wal(
            PersistRecord::Snapshot(s),
        ))));
        assert_eq!(why, "Membership.voters: node id 0 is reserved");
    }

    #[test]
    fn rejects_batch_to_itself() {
        let b = PeerBatch {
            from: N2,
            to: N2,
            messages: vec![],
            gossip: Default::default(),
            placement: Vec::new(),
        };
        let why = invalid_reason(reencode(&b));
        assert_eq!(why, "PeerBatch: from and to are the same node n2");
    }

    #[test]
    fn rejects_message_from_or_to_other_than_batch() {
        let mut b = batch_of(1, MessageBody::TimeoutNow);
        b.messages[0].message.from = NodeId(3);
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "RaftMessage.from: n3 differs from its batch's n1 (partition p7)"
        );
        let mut b = batch_of(1, MessageBody::TimeoutNow);
        b.messages[0].message.to = NodeId(3);
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "RaftMessage.to: n3 differs from its batch's n2 (partition p7)"
        );
    }

    #[test]
    fn accepts_message_from_and_to_spelled_out() {
        let b = batch_of(1, MessageBody::TimeoutNow);
        let mut p = peer_batch_to_proto(&b);
        let m = p.messages[0]
            .message
            .as_mut()
            .expect("encoded with a message");
        assert_eq!((m.from, m.to), (0, 0), "omitted when equal to the batch's");
        (m.from, m.to) = (1, 2);
        assert_eq!(peer_batch_from_proto(p), Ok(b));
    }

    #[test]
    fn rejects_non_contiguous_entries() {
        let b = batch_of(3, append(4, 1, vec![entry(5, 1), entry(7, 1)]));
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "Append.entries[1]: index 7 after index 5 (entries must be contiguous) (partition p7)"
        );
        let r = wal(PersistRecord::Entries(vec![entry(5, 1), entry(5, 1)]));
        let why = invalid_reason(decode_wal_record(&encode_wal_record(&r)));
        assert_eq!(
            why,
            "WalRecord.entries[1]: index 5 after index 5 (entries must be contiguous)"
        );
    }

    #[test]
    fn rejects_decreasing_entry_terms() {
        let b = batch_of(3, append(4, 1, vec![entry(5, 2), entry(6, 1)]));
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "Append.entries[1]: term 1 after term 2 (terms must not decrease) (partition p7)"
        );
        let r = wal(PersistRecord::Entries(vec![entry(5, 3), entry(6, 2)]));
        let why = invalid_reason(decode_wal_record(&encode_wal_record(&r)));
        assert_eq!(
            why,
            "WalRecord.entries[1]: term 2 after term 3 (terms must not decrease)"
        );
    }

    #[test]
    fn rejects_entry_index_zero() {
        let r = wal(PersistRecord::Entries(vec![entry(0, 1), entry(1, 1)]));
        let why = invalid_reason(decode_wal_record(&encode_wal_record(&r)));
        assert_eq!(
            why,
            "WalRecord.entries[0]: index 0 (the first entry has index 1)"
        );
    }

    #[test]
    fn rejects_entry_term_zero() {
        let r = wal(PersistRecord::Entries(vec![entry(1, 0)]));
        let why = invalid_reason(decode_wal_record(&encode_wal_record(&r)));
        assert_eq!(
            why,
            "WalRecord.entries[0]: term 0 (entries are created by leaders of term >= 1)"
        );
    }

    #[test]
    fn rejects_empty_wal_entries_record() {
        let why = invalid_reason(decode_wal_record(&encode_wal_record(&wal(
            PersistRecord::Entries(vec![]),
        ))));
        assert_eq!(why, "WalRecord.entries: empty");
    }

    #[test]
    fn rejects_append_entries_not_following_prev_index() {
        let b = batch_of(3, append(4, 1, vec![entry(6, 1)]));
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "Append.entries: first index 6 does not follow prev_index 4 (partition p7)"
        );
        // prev_index + 1 overflows: no entry can follow.
        let b = batch_of(3, append(u64::MAX, 1, vec![entry(1, 1)]));
        let why = invalid_reason(reencode(&b));
        assert!(why.starts_with("Append.entries: first index 1 does not follow"));
    }

    #[test]
    fn rejects_append_terms_outside_prev_term_and_message_term() {
        let b = batch_of(3, append(4, 2, vec![entry(5, 1)]));
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "Append.entries: first term 1 is below prev_term 2 (partition p7)"
        );
        let b = batch_of(3, append(4, 2, vec![entry(5, 4)]));
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "Append.entries: term 4 exceeds the message's term 3 (partition p7)"
        );
        let b = batch_of(3, append(4, 5, vec![]));
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "Append.prev_term: 5 exceeds the message's term 3 (partition p7)"
        );
        let b = batch_of(3, append(0, 1, vec![]));
        let why = invalid_reason(reencode(&b));
        assert_eq!(
            why,
            "Append.prev_term: 1 at prev_index 0 (the empty log has term 0) (partition p7)"
        );
    }

    proptest! {
        #[test]
        fn conf_changes_round_trip(change in arb_conf_change(), index in 1..1000u64) {
            let bytes = encode_conf_change(&change);
            prop_assert_eq!(decode_conf_change(&bytes), Ok(change));
            // And as an entry of a WAL record.
            let record = WalRecord {
                partition: PartitionId(1),
                record: PersistRecord::Entries(vec![Entry {
                    index,
                    term: 1,
                    kind: EntryKind::ConfChange,
                    data: bytes,
                }]),
            };
            prop_assert_eq!(decode_wal_record(&encode_wal_record(&record)), Ok(record));
        }
    }

    /// A WAL record of partition 3 holding one entry 1/1 of raw `kind`.
    fn one_entry_record(kind: i32, data: Bytes) -> pb::WalRecord {
        pb::WalRecord {
            partition: 3,
            record: Some(PbRecord::Entries(pb::wal_record::Entries {
                entries: vec![pb::Entry {
                    index: 1,
                    term: 1,
                    kind,
                    data,
                }],
            })),
        }
    }

    #[test]
    fn rejects_a_conf_change_entry_that_does_not_decode() {
        for (data, why) in [
            (Bytes::new(), "missing required field ConfChange.change"),
            (
                Bytes::from_static(&[0x08, 0x00]),
                "invalid ConfChange.add_learner: node id 0 is reserved",
            ),
        ] {
            let p = one_entry_record(pb::EntryKind::ConfChange as i32, data);
            let got = invalid_reason(decode_wal_record(&p.encode_to_vec()));
            assert_eq!(
                got,
                format!("WalRecord.entries[0]: configuration change does not decode: {why}")
            );
        }
    }

    #[test]
    fn rejects_a_learner_that_also_votes() {
        let mut s = snapshot(4, 2, &[1, 2, 3]);
        s.meta.membership.learners = vec![NodeId(2)];
        let why = invalid_reason(decode_snapshot(&encode_snapshot(&s)));
        assert_eq!(
            why,
            "SnapshotMeta.membership: n2 is both a learner and a voter"
        );
    }

    #[test]
    fn rejects_unknown_entry_kind() {
        for kind in [pb::EntryKind::Unspecified as i32, 4, -1] {
            let p = one_entry_record(kind, Bytes::new());
            let why = invalid_reason(decode_wal_record(&p.encode_to_vec()));
            assert_eq!(
                why,
                format!("WalRecord.entries[0]: unknown entry kind {kind}")
            );
        }
    }

    #[test]
    fn rejects_noop_entry_with_data() {
        let mut e = entry(1, 1);
        e.kind = EntryKind::Noop;
        let why = invalid_reason(decode_wal_record(&encode_wal_record(&wal(
            PersistRecord::Entries(vec![e]),
        ))));
        assert_eq!(
            why,
            "WalRecord.entries[0]: noop entry carries 1 bytes of data"
        );
    }

    #[test]
    fn rejects_missing_oneofs_and_required_messages() {
        let p = pb::WalRecord {
            partition: 1,
            record: None,
        };
        assert_eq!(
            decode_wal_record(&p.encode_to_vec()),
            Err(WireError::Missing("WalRecord.record"))
        );

        let mut p = peer_batch_to_proto(&batch_of(1, MessageBody::TimeoutNow));
        p.messages[0].message.as_mut().expect("a message").body = None;
        assert_eq!(
            decode_peer_batch(&p.encode_to_vec()),
            Err(WireError::Missing("RaftMessage.body"))
        );

        let mut p = peer_batch_to_proto(&batch_of(1, MessageBody::TimeoutNow));
        p.messages[0].message = None;
        assert_eq!(
            decode_peer_batch(&p.encode_to_vec()),
            Err(WireError::Missing("GroupMessage.message"))
        );

        let with_body = |body| {
            peer_batch_from_proto(pb::PeerBatch {
                from: 1,
                to: 2,
                messages: vec![pb::GroupMessage {
                    partition: 0,
                    message: Some(pb::RaftMessage {
                        from: 0,
                        to: 0,
                        term: 1,
                        body: Some(body),
                    }),
                }],
                ..Default::default()
            })
        };
        let chunk = |meta| {
            with_body(PbBody::SnapshotChunk(pb::raft_message::SnapshotChunk {
                meta,
                total_len: 0,
                offset: 0,
                data: Bytes::new(),
            }))
        };
        assert_eq!(chunk(None), Err(WireError::Missing("SnapshotChunk.meta")));
        assert_eq!(
            chunk(Some(pb::SnapshotMeta {
                index: 1,
                term: 1,
                membership: None
            })),
            Err(WireError::Missing("SnapshotMeta.membership"))
        );
        // The retired whole-snapshot message is refused, not misread.
        let retired = with_body(PbBody::InstallSnapshot(pb::raft_message::InstallSnapshot {
            snapshot: None,
        }));
        assert!(
            matches!(&retired, Err(WireError::Invalid(why)) if why.contains("retired")),
            "{retired:?}"
        );
    }

    #[test]
    fn rejects_snapshot_chunks_outside_their_image() {
        let meta = snapshot(5, 2, &[1, 2]).meta;
        let chunk = |total_len, offset, len: usize| {
            invalid_reason(reencode(&batch_of(
                2,
                MessageBody::SnapshotChunk {
                    meta: meta.clone(),
                    total_len,
                    offset,
                    data: Bytes::from(vec![7u8; len]),
                },
            )))
        };
        assert_eq!(
            chunk(10, 8, 4),
            "SnapshotChunk: bytes 8..+4 lie beyond the image's 10 bytes (partition p7)"
        );
        assert_eq!(
            chunk(10, u64::MAX, 1),
            format!(
                "SnapshotChunk: bytes {}..+1 lie beyond the image's 10 bytes (partition p7)",
                u64::MAX
            )
        );
        assert_eq!(
            chunk(10, 3, 0),
            "SnapshotChunk: empty chunk at offset 3 of a 10-byte image (partition p7)"
        );
    }

    #[test]
    fn rejects_snapshot_without_voters() {
        let why = invalid_reason(reencode(&batch_of(
            2,
            MessageBody::SnapshotChunk {
                meta: snapshot(5, 2, &[]).meta,
                total_len: 0,
                offset: 0,
                data: Bytes::new(),
            },
        )));
        assert_eq!(
            why,
            "SnapshotMeta.membership: no voters (a group always has one) (partition p7)"
        );
    }

    #[test]
    fn rejects_snapshot_at_index_zero_with_a_term() {
        let r = wal(PersistRecord::Snapshot(snapshot(0, 1, &[1])));
        let why = invalid_reason(decode_wal_record(&encode_wal_record(&r)));
        assert_eq!(
            why,
            "SnapshotMeta.term: 1 at index 0 (the empty log has term 0)"
        );
    }

    #[test]
    fn sorts_and_dedups_voters() {
        let mut s = snapshot(5, 2, &[]);
        s.meta.membership.voters = vec![NodeId(3), NodeId(1), NodeId(3)];
        let r = decode_wal_record(&encode_wal_record(&wal(PersistRecord::Snapshot(s))));
        let Ok(WalRecord {
            record: PersistRecord::Snapshot(s),
            ..
        }) = r
        else {
            panic!("expected a snapshot record, got {r:?}");
        };
        assert_eq!(s.meta.membership, Membership::new([NodeId(1), NodeId(3)]));
    }

    #[test]
    fn hard_state_vote_zero_is_none() {
        let p = pb::WalRecord {
            partition: 0,
            record: Some(PbRecord::HardState(pb::HardState {
                term: 4,
                vote: 0,
                commit: 2,
            })),
        };
        assert_eq!(
            decode_wal_record(&p.encode_to_vec()),
            Ok(wal_at(
                0,
                PersistRecord::HardState(HardState {
                    term: 4,
                    vote: None,
                    commit: 2
                })
            ))
        );
    }

    #[test]
    fn rejects_malformed_protobuf() {
        // Field 1 (varint) with a truncated varint.
        assert!(matches!(
            decode_wal_record(&[0x08, 0xff]),
            Err(WireError::Protobuf(_))
        ));
        let err = decode_peer_batch(&[0x1a, 0x05, 0x00]).expect_err("truncated");
        assert!(err.to_string().starts_with("malformed protobuf"), "{err}");
    }

    // ----------------------------------------------- on-disk format pin

    fn wal_at(partition: u32, record: PersistRecord) -> WalRecord {
        WalRecord {
            partition: PartitionId(partition),
            record,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The WAL is an on-disk format: these bytes must never change. A
    /// failure here means the schema or the mapping changed incompatibly.
    #[test]
    fn pinned_wal_bytes() {
        let hard_state = wal_at(
            2,
            PersistRecord::HardState(HardState {
                term: 5,
                vote: Some(NodeId(3)),
                commit: 300,
            }),
        );
        let entries = wal_at(
            2,
            PersistRecord::Entries(vec![
                Entry {
                    index: 7,
                    term: 5,
                    kind: EntryKind::Noop,
                    data: Bytes::new(),
                },
                Entry {
                    index: 8,
                    term: 5,
                    kind: EntryKind::Normal,
                    data: Bytes::from_static(b"put"),
                },
            ]),
        );
        let snapshot = wal_at(2, PersistRecord::Snapshot(snapshot(6, 4, &[1, 2, 3])));
        let pinned = [
            (hard_state, "080212070805100318ac02"),
            (
                entries,
                "08021a150a060807100518020a0b0808100518012203707574",
            ),
            (snapshot, "080222140a0b080610041a050a030102031205696d616765"),
        ];
        for (record, want) in pinned {
            let bytes = encode_wal_record(&record);
            assert_eq!(hex(&bytes), want, "{record:?}");
            assert_eq!(decode_wal_record(&bytes), Ok(record));
        }
    }

    /// Peers of different versions talk during a rolling upgrade: pin one
    /// batch's bytes too.
    #[test]
    fn pinned_peer_batch_bytes() {
        let b = PeerBatch {
            from: N1,
            to: N2,
            messages: vec![
                GroupMessage {
                    partition: PartitionId(1),
                    message: Message {
                        from: N1,
                        to: N2,
                        term: 3,
                        body: MessageBody::Heartbeat {
                            commit: 9,
                            round: 1,
                            quiesce: false,
                        },
                    },
                },
                GroupMessage {
                    partition: PartitionId(2),
                    message: Message {
                        from: N1,
                        to: N2,
                        term: 3,
                        body: append(4, 3, vec![entry(5, 3)]),
                    },
                },
            ],
            gossip: Default::default(),
            placement: Vec::new(),
        };
        let bytes = encode_peer_batch(&b);
        assert_eq!(
            hex(&bytes),
            "080110021a0c0801120818035204080910011a17080212131803420f080410031a09080510031801220178"
        );
        assert_eq!(decode_peer_batch(&bytes), Ok(b));
    }
}
