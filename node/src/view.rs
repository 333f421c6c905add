//! This node's published view of the cluster: members and their health,
//! every partition with its leader (where known) and, for the partitions
//! this node replicates, how far each replica has got. Built by the driver
//! from the core a few times per second ([`build_view`]) and read by the
//! APIs (status, metrics, readiness) without reaching into the event loop.
//!
//! What "lagging" means is decided here, once, for every API: a replica is
//! **lagging** when its leader knows it lacks more than [`LAGGING_ENTRIES`]
//! entries, when it is being sent a snapshot, or when its node is down; a
//! partition this node leads is **under-replicated** while any of its
//! replicas lags; this node's own replica is **catching up** while it has
//! more than [`LAGGING_ENTRIES`] committed entries left to apply, as far as
//! its leader told it, or is receiving a snapshot. A node knows the
//! followers' progress only of the partitions it leads, and its own
//! replica's lag only as well as its leader's last message tells it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ringkv_core::detector::PeerStatus;
use ringkv_core::metadata::{ClientAddresses, METADATA_GROUP, MemberState};
use ringkv_core::node::{Node, NodeStats};
use ringkv_core::placement::planner::Plan;
use ringkv_core::raft::ProgressState;
use ringkv_core::{NodeId, PartitionId, Time};
use serde::Serialize;

/// The group's voters, in the ring's order where they are the ring's
/// replicas (the usual case), else as the configuration lists them.
fn voters_in_ring_order(voters: &[NodeId], ring: Vec<NodeId>) -> Vec<NodeId> {
    let mut sorted = ring.clone();
    sorted.sort();
    if sorted == voters {
        ring
    } else {
        voters.to_vec()
    }
}

/// Entries a replica may trail its leader by before it counts as lagging:
/// a healthy follower trails by what is in flight (a few RTTs of writes).
pub const LAGGING_ENTRIES: u64 = 1_000;

/// This node's view of the cluster, refreshed a few times per second.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub node_id: NodeId,
    pub members: Vec<MemberView>,
    pub partitions: Vec<PartitionView>,
    /// The metadata group, where this node replicates it (its
    /// `partition` is [`METADATA_GROUP`]).
    pub metadata_group: Option<PartitionView>,
    /// Set once every partition this node replicates knows its leader.
    pub ready: bool,
    /// The core's counters.
    pub stats: NodeStats,
    /// Client requests inside the core right now.
    pub pending_requests: usize,
    /// Partitions waiting for a compaction snapshot.
    pub compactions_queued: usize,
    /// The version of this node's cluster metadata document (0: none).
    pub metadata_version: u64,
    /// The metadata group's leader as this node knows it: the controller.
    pub metadata_leader: Option<NodeId>,
    /// Whether this node runs the placement controller (it leads the
    /// metadata group).
    pub controller: bool,
    /// Where this node is the controller: its latest plan (none before its
    /// first).
    pub plan: Option<Plan>,
}

/// A member's health as this node's failure detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// This node.
    #[serde(rename = "self")]
    Local,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Local => "self",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MemberView {
    pub id: NodeId,
    pub health: Health,
    pub phi: f64,
    /// Its state in the metadata document, once this node has one.
    pub state: Option<MemberState>,
    /// Since this node last heard from it (`None`: self, or never heard).
    pub last_heard: Option<Duration>,
    /// Its gRPC address in the metadata document, once this node has one.
    pub address: Option<String>,
    /// Where it serves REST and RESP, as the metadata document says (empty
    /// strings: not known, or not served).
    pub client: ClientAddresses,
}

/// One replica of a partition this node leads, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowerView {
    pub node: NodeId,
    /// Highest index known to be durable on the replica.
    pub match_index: u64,
    /// Entries the replica lacks: the leader's last index minus `match_index`.
    pub lag: u64,
    /// "replicate", "probe" or "snapshot".
    pub state: &'static str,
    /// While a snapshot is being sent: bytes acknowledged and its size.
    pub snapshot_progress: Option<(u64, u64)>,
    pub lagging: bool,
}

#[derive(Debug, Clone)]
pub struct PartitionView {
    pub partition: PartitionId,
    /// Where this node replicates: the voters of the group's configuration
    /// as its log has it (C_new while joint); where it was removed from the
    /// group, the voters its replica last saw; elsewhere the ring's replicas.
    pub replicas: Vec<NodeId>,
    /// Where this node replicates: the group's learners.
    pub learners: Vec<NodeId>,
    /// Where this node replicates and a joint change is under way: C_old.
    pub outgoing: Vec<NodeId>,
    /// Known only where this node replicates the partition.
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub keys: u64,
    /// Where this node leads: the other replicas.
    pub followers: Vec<FollowerView>,
    /// Where this node replicates: committed entries (as far as it knows)
    /// it has not applied yet.
    pub lag: u64,
    /// Where this node replicates: bytes received of a snapshot it is being
    /// sent, and its size.
    pub receiving_snapshot: Option<(u64, u64)>,
    /// This node leads the partition and some replica lags.
    pub under_replicated: bool,
    /// This node's replica lags its leader.
    pub catching_up: bool,
}

impl ClusterView {
    pub fn leader_of(&self, p: PartitionId) -> Option<NodeId> {
        self.partitions.get(p.0 as usize).and_then(|v| v.leader)
    }

    /// Partitions this node replicates without a known leader.
    pub fn leaderless(&self) -> impl Iterator<Item = &PartitionView> {
        let me = self.node_id;
        self.partitions
            .iter()
            .filter(move |p| p.leader.is_none() && p.replicas.contains(&me))
    }

    pub fn under_replicated(&self) -> impl Iterator<Item = &PartitionView> {
        self.partitions.iter().filter(|p| p.under_replicated)
    }

    pub fn catching_up(&self) -> impl Iterator<Item = &PartitionView> {
        self.partitions.iter().filter(|p| p.catching_up)
    }
}

/// Among several nodes' views, partition `p` as its leader sees it: the
/// view of the node that says it leads, in the highest term if two do (a
/// deposed leader that has not heard yet). `None` if none of them leads.
/// Each node knows the leaders of its own partitions only, so a
/// cluster-wide picture takes every node's view.
pub fn leader_view_of<'a>(
    views: impl IntoIterator<Item = &'a ClusterView>,
    p: PartitionId,
) -> Option<&'a PartitionView> {
    views
        .into_iter()
        .filter_map(|v| {
            let pv = if p == METADATA_GROUP {
                v.metadata_group.as_ref()
            } else {
                v.partitions.get(p.0 as usize)
            };
            pv.filter(|pv| pv.leader == Some(v.node_id))
        })
        .max_by_key(|pv| pv.term)
}

/// The view of `node` at `now`.
pub fn build_view(node: &Node, now: Time) -> ClusterView {
    let me = node.id();
    let detector = node.detector();
    let mut status: BTreeMap<NodeId, PeerStatus> = BTreeMap::new();
    let mut heard: BTreeMap<NodeId, Time> = BTreeMap::new();
    for (peer, s, last) in detector.peers() {
        status.insert(peer, s);
        if let Some(t) = last {
            heard.insert(peer, t);
        }
    }
    let is_up = |id: NodeId| id == me || matches!(status.get(&id), Some(PeerStatus::Up));
    let doc = node.metadata();
    let ids: BTreeSet<NodeId> = node
        .ring()
        .members()
        .iter()
        .copied()
        .chain(doc.iter().flat_map(|d| d.members.keys().copied()))
        .collect();
    let members = ids
        .into_iter()
        .map(|id| {
            let member = doc.and_then(|d| d.members.get(&id));
            let state = member.map(|m| m.state);
            let address = member.map(|m| m.address.clone()).filter(|a| !a.is_empty());
            let client = member.map(|m| m.client.clone()).unwrap_or_default();
            if id == me {
                // Its own addresses it knows from its configuration, before
                // the member list has them (the first second of a new
                // cluster) and after a restart that moved them.
                let client = node.config().client_addresses.clone();
                MemberView {
                    id,
                    health: Health::Local,
                    phi: 0.0,
                    state,
                    last_heard: None,
                    address,
                    client,
                }
            } else {
                MemberView {
                    id,
                    health: if is_up(id) { Health::Up } else { Health::Down },
                    phi: detector.phi(id, now),
                    state,
                    last_heard: heard.get(&id).map(|&t| now.saturating_since(t)),
                    address,
                    client,
                }
            }
        })
        .collect();
    let mut ready = true;
    let partitions = node
        .ring()
        .partitions()
        .map(|p| {
            let view = group_view(node, p, &is_up);
            if node.raft(p).is_some() && view.leader.is_none() {
                ready = false;
            }
            view
        })
        .collect();
    let metadata_group = node
        .raft(METADATA_GROUP)
        .is_some()
        .then(|| group_view(node, METADATA_GROUP, &is_up));
    ClusterView {
        node_id: me,
        members,
        partitions,
        metadata_group,
        ready,
        stats: node.stats().clone(),
        pending_requests: node.pending_requests(),
        compactions_queued: node.compactions_queued(),
        metadata_version: node.metadata().map_or(0, |d| d.version),
        metadata_leader: node.metadata_leader(),
        controller: node.metadata_leader() == Some(me),
        plan: (node.metadata_leader() == Some(me))
            .then(|| node.last_plan().cloned())
            .flatten(),
    }
}

/// One group as `node` sees it (see [`PartitionView`]).
fn group_view(node: &Node, p: PartitionId, is_up: &impl Fn(NodeId) -> bool) -> PartitionView {
    // Where it does not replicate: the voters it last saw if it was
    // removed from the group, else the ring's replicas.
    let replicas = node
        .retired_voters(p)
        .map_or_else(|| node.ring().replicas(p).to_vec(), <[NodeId]>::to_vec);
    let (Some(raft), Some(kv)) = (node.raft(p), node.kv(p)) else {
        // Not a replica: the group as its leader last reported it, while
        // that report is fresh (see `Node::reported_group`); term 0 says
        // this node holds nothing of it.
        let (leader, replicas, learners) = match node.reported_group(p) {
            Some((leader, _, m)) => (Some(leader), m.voters.clone(), m.learners.clone()),
            None => (None, replicas, Vec::new()),
        };
        return PartitionView {
            partition: p,
            replicas,
            learners,
            outgoing: Vec::new(),
            leader,
            term: 0,
            commit_index: 0,
            applied_index: 0,
            keys: 0,
            followers: Vec::new(),
            lag: 0,
            receiving_snapshot: None,
            under_replicated: false,
            catching_up: false,
        };
    };
    let last = raft.log().last_index();
    let membership = raft.membership();
    // Replicas of the configuration only: a removed one the leader
    // still sends the log to is no follower.
    let followers: Vec<FollowerView> = raft
        .followers()
        .filter(|(id, _)| membership.contains(*id))
        .map(|(id, pr)| {
            let snapshot_progress = raft.outgoing_snapshot_progress(id);
            let lag = last.saturating_sub(pr.matched);
            FollowerView {
                node: id,
                match_index: pr.matched,
                lag,
                state: match pr.state {
                    ProgressState::Replicate => "replicate",
                    ProgressState::Probe => "probe",
                    ProgressState::Snapshot { .. } => "snapshot",
                },
                snapshot_progress,
                lagging: lag > LAGGING_ENTRIES
                    || matches!(pr.state, ProgressState::Snapshot { .. })
                    || !is_up(id),
            }
        })
        .collect();
    let applied = kv.applied_index();
    let lag = raft.leader_commit().saturating_sub(applied);
    let receiving_snapshot = raft
        .incoming_snapshot_progress()
        .map(|(_, held, total)| (held, total));
    PartitionView {
        partition: p,
        replicas: voters_in_ring_order(&membership.voters, replicas),
        learners: membership.learners.clone(),
        outgoing: membership.outgoing.clone(),
        leader: raft.leader(),
        term: raft.term(),
        commit_index: raft.log().committed(),
        applied_index: applied,
        keys: kv.len() as u64,
        under_replicated: followers.iter().any(|f| f.lagging),
        followers,
        lag,
        catching_up: lag > LAGGING_ENTRIES || receiving_snapshot.is_some(),
        receiving_snapshot,
    }
}
