//! The node's part in the cluster metadata ([`crate::metadata`]): hosting
//! the metadata group where the node is one of its replicas, writing the
//! first document, and spreading the latest document to every node.
//!
//! **Hosting.** The metadata group is a Raft group like a partition's
//! ([`METADATA_GROUP`]), created at a node's first boot on the founders
//! [`metadata_voters`] picks, and recovered from the WAL like any group.
//! Its leader writes the genesis document (the founders, all `up`, with
//! the addresses in [`NodeConfig::addresses`](super::NodeConfig::addresses))
//! as a create-only put, once per term, while none exists: the first
//! leader's write lands, any other finds the key and does nothing.
//!
//! **Gossip.** Every batch a node sends carries the version of its document
//! and the `(term, leader)` of the metadata group it knows of
//! ([`Gossip`]). A node that sees a peer announce an older version sends it
//! its document, in a batch of its own, at most once per heartbeat
//! interval while the peer stays behind. A node adopts a document only if
//! its version is newer than the one it has; versions are the metadata
//! group's log indexes, so a newer version is a later committed document
//! and the adopted document never goes back. The group's replicas adopt
//! each document as they apply it. So every node that exchanges batches
//! with a node that has the latest document gets it within about a
//! heartbeat interval.
//!
//! **Peers follow the document.** Every member it lists (but a removed
//! one) becomes a peer of every node that adopts it: that is how nodes
//! learn of a member that joined (see [`Node::handle_register`]); a
//! member that is removed stops being one.
//!
//! Not here: the changes made to the document after genesis (the
//! controller's and the operator's).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::{Event, Group, Halt, Node};
use crate::io::{Gossip, Lane, PeerBatch, PlacementMessage, Transmit};
use crate::kv::{Command, Precondition, Ttl};
use crate::metadata::{
    ClusterMetadata, DOCUMENT_KEY, METADATA_GROUP, MemberState, metadata_voters,
};
use crate::types::{NodeId, Time};
use crate::wire;

/// What a node knows of the cluster metadata.
#[derive(Default)]
pub(super) struct MetadataView {
    doc: Option<ClusterMetadata>,
    /// `doc` as stored (what a push sends).
    encoded: Bytes,
    /// The metadata group's `(term, leader)`, from gossip (a replica of
    /// the group asks its own Raft instead).
    leader: Option<(u64, NodeId)>,
    /// Peers whose latest batch announced an older version than ours.
    behind: BTreeSet<NodeId>,
    /// When each peer was last sent our document.
    pushed_at: BTreeMap<NodeId, Time>,
    /// The term in which this node, as the group's leader, proposed the
    /// genesis document.
    genesis_proposed_in: Option<u64>,
}

impl MetadataView {
    pub(super) fn document(&self) -> Option<&ClusterMetadata> {
        self.doc.as_ref()
    }
}

impl Node {
    /// The cluster metadata document as this node knows it (`None` until
    /// the metadata group has written one and it reached this node).
    pub fn metadata(&self) -> Option<&ClusterMetadata> {
        self.meta.doc.as_ref()
    }

    /// The metadata group's leader as this node knows it: its own
    /// replica's knowledge if it hosts the group, else the latest heard.
    pub fn metadata_leader(&self) -> Option<NodeId> {
        self.metadata_leader_term().map(|(_, l)| l)
    }

    fn metadata_leader_term(&self) -> Option<(u64, NodeId)> {
        match self.groups.get(&METADATA_GROUP) {
            Some(g) => g.raft.leader().map(|l| (g.raft.term(), l)),
            None => self.meta.leader,
        }
    }

    /// The founders the metadata group starts on, and whether this node
    /// is one of them.
    pub(super) fn hosts_metadata_at_genesis(id: NodeId, members: &[NodeId]) -> Option<Vec<NodeId>> {
        let voters = metadata_voters(&members.iter().copied().collect());
        voters.contains(&id).then_some(voters)
    }

    /// What this node's batches say of the metadata.
    pub(super) fn gossip(&self) -> Gossip {
        Gossip {
            metadata_version: self.meta.doc.as_ref().map_or(0, |d| d.version),
            metadata_leader: self.metadata_leader_term(),
            metadata: None,
        }
    }

    /// A peer's batch arrived with this gossip.
    pub(super) fn observe_gossip(&mut self, from: NodeId, gossip: Gossip) {
        let ours = self.meta.doc.as_ref().map_or(0, |d| d.version);
        if gossip.metadata_version < ours {
            self.meta.behind.insert(from);
        } else {
            self.meta.behind.remove(&from);
        }
        if let Some((term, leader)) = gossip.metadata_leader
            && self.meta.leader.is_none_or(|(t, _)| term > t)
        {
            self.meta.leader = Some((term, leader));
        }
        if let Some(bytes) = gossip.metadata
            && gossip.metadata_version > ours
        {
            match ClusterMetadata::decode(&bytes, gossip.metadata_version) {
                Ok(doc) => self.adopt_metadata(doc, bytes),
                Err(e) => {
                    self.stats.batches_dropped += 1;
                    tracing::warn!(peer = %from, "a pushed metadata document does not decode: {e}");
                }
            }
        }
    }

    fn adopt_metadata(&mut self, doc: ClusterMetadata, encoded: Bytes) {
        let version = doc.version;
        tracing::info!(version, members = doc.members.len(), "cluster metadata");
        if let Some(me) = doc.members.get(&self.id)
            && !me.state.is_live()
        {
            // Its replicas were (or are being) re-created elsewhere; the
            // groups ignore it. Say so where an operator looks.
            tracing::error!(
                version,
                "this node is {} in the cluster's member list: the cluster no longer counts its \
                 replicas; stop it (its data directory cannot rejoin)",
                me.state
            );
        }
        self.meta.doc = Some(doc);
        self.meta.encoded = encoded;
        self.meta.behind.clear();
        self.follow_members();
        self.events.push_back(Event::MetadataChanged { version });
    }

    /// Every member the document lists, but removed ones, becomes a peer:
    /// heartbeats go to it, the failure detector watches it, its batches
    /// are taken. A member that is `removed` stops being one: no group
    /// lists it any more (that is when the controller removes it), so
    /// nothing is owed to it, and what it sends is dropped (its peers'
    /// transports refuse it too, and say why). The driver, told by
    /// [`Event::MetadataChanged`], connects to the new ones and lets the
    /// removed ones go.
    fn follow_members(&mut self) {
        let Some(doc) = &self.meta.doc else {
            return;
        };
        let mut added = false;
        for (&id, m) in &doc.members {
            if id == self.id {
                continue;
            }
            let known = self.peers.contains(&id);
            match (m.state == MemberState::Removed, known) {
                (false, false) => {
                    tracing::info!(peer = %id, address = %m.address, state = %m.state, "a new member: now a peer");
                    self.peers.push(id);
                    if self.started {
                        self.detector.watch(id, self.now);
                    }
                    added = true;
                }
                (true, true) => {
                    tracing::info!(peer = %id, "a member was removed: no longer a peer");
                    self.peers.retain(|&p| p != id);
                    self.detector.unwatch(id);
                    self.last_sent.remove(&id);
                    self.meta.behind.remove(&id);
                    self.meta.pushed_at.remove(&id);
                }
                _ => {}
            }
        }
        if added {
            self.peers.sort_unstable();
        }
    }

    /// After the metadata group ran: adopt a newer document it applied;
    /// as its leader, write the genesis document if there is none.
    pub(super) fn after_metadata_group(&mut self) {
        let Some(g) = self.groups.get_mut(&METADATA_GROUP) else {
            return;
        };
        let ours = self.meta.doc.as_ref().map_or(0, |d| d.version);
        // The revision first: the document is copied out only when newer.
        match g.kv.mod_revision(DOCUMENT_KEY) {
            Some(version) if version > ours => {
                let bytes = g.kv.get(DOCUMENT_KEY).expect("the key exists").value;
                match ClusterMetadata::decode(&bytes, version) {
                    Ok(doc) => self.adopt_metadata(doc, bytes),
                    Err(e) => {
                        // Only this code writes the document, and only
                        // valid ones: a committed one that does not decode
                        // means this replica's state is not its group's.
                        let halt = Halt::UndecodableMetadata {
                            version,
                            reason: e.to_string(),
                        };
                        tracing::error!("{halt}");
                        self.halted = Some(halt);
                    }
                }
            }
            Some(_) => {}
            None => {
                let proposed = Self::propose_genesis_document(
                    g,
                    &mut self.meta,
                    &self.cfg.members,
                    &self.cfg.addresses,
                    self.cfg.ring,
                );
                if proposed {
                    self.dirty.insert(METADATA_GROUP);
                }
            }
        }
    }

    fn propose_genesis_document(
        g: &mut Group,
        meta: &mut MetadataView,
        members: &[NodeId],
        addresses: &BTreeMap<NodeId, String>,
        ring: crate::ring::RingConfig,
    ) -> bool {
        let term = g.raft.term();
        if !g.raft.is_leader() || meta.genesis_proposed_in == Some(term) {
            return false;
        }
        let doc = ClusterMetadata::genesis(
            ring,
            members
                .iter()
                .map(|&m| (m, addresses.get(&m).cloned().unwrap_or_default())),
        );
        let put = Command::Put {
            key: Bytes::from_static(DOCUMENT_KEY),
            value: doc.encode(),
            precondition: Precondition::MustNotExist,
            ttl: Ttl::Clear,
        };
        // Metadata never expires: its entries carry no clock.
        let proposed = g.raft.propose(put.encode(0)).is_ok();
        if proposed {
            meta.genesis_proposed_in = Some(term);
        }
        proposed
    }

    /// Batches of their own that carry our document to peers behind it.
    pub(super) fn push_metadata(&mut self) {
        // Every flush passes here; most find no peer behind. (A peer is
        // behind only a node that has a document.)
        if self.meta.behind.is_empty() {
            return;
        }
        let interval = self.cfg.peer_heartbeat_interval();
        let now = self.now;
        // The group's replicas get each document from the group itself.
        let replicas = self
            .groups
            .get(&METADATA_GROUP)
            .map(|g| g.raft.membership().replicas())
            .unwrap_or_default();
        let due: Vec<NodeId> = self
            .meta
            .behind
            .iter()
            .copied()
            .filter(|p| {
                !replicas.contains(p)
                    && self
                        .meta
                        .pushed_at
                        .get(p)
                        .is_none_or(|&t| now.saturating_since(t) >= interval)
            })
            .collect();
        for to in due {
            self.meta.pushed_at.insert(to, now);
            let gossip = Gossip {
                metadata: Some(self.meta.encoded.clone()),
                ..self.gossip()
            };
            let bytes = wire::metadata_push_len_bound(&gossip);
            self.send_node_batch(to, gossip, Vec::new(), bytes);
        }
    }

    /// A control batch of node-level content only (a pushed document,
    /// placement messages): `bytes` bounds what it adds to an empty batch.
    pub(super) fn send_node_batch(
        &mut self,
        to: NodeId,
        gossip: Gossip,
        placement: Vec<PlacementMessage>,
        bytes: usize,
    ) {
        self.stats.batches_sent += 1;
        self.transmits.push_back(Transmit {
            to,
            lane: Lane::Control,
            bytes: wire::PEER_BATCH_OVERHEAD_BYTES + bytes,
            batch: PeerBatch {
                from: self.id,
                to,
                messages: Vec::new(),
                gossip,
                placement,
            },
        });
    }
}
