//! The placement controller as a node runs it: every node reports the
//! groups it leads to the metadata group's leader; that leader plans
//! ([`crate::placement::planner`]) from the member list, the reports and
//! its own failure detector, commits member state changes to the metadata
//! document, and sends each step to the leader of the group it concerns.
//!
//! **Reports.** Every [`NodeConfig::report_interval`](super::NodeConfig)
//! each node sends the controller `(partition, term, configuration)` of
//! every group it leads. The controller keeps the report of the highest
//! term per partition and forgets reports older than three intervals (a
//! leader that stopped reporting is no leader it can count on).
//!
//! **Plans.** Every [`NodeConfig::placement_interval`](super::NodeConfig),
//! on the metadata group's leader only, with a document. Member state
//! changes of one plan go into one compare-and-set of the document, at most
//! one in flight. Each step goes to the group's leader as reported, which
//! proposes it if it still leads (a refusal, e.g. a learner not caught up
//! yet, is only logged: the next plan asks again, from the configuration
//! it then sees). A node down for less than
//! [`PlannerConfig::dead_after`](crate::placement::planner::PlannerConfig)
//! in the controller's detector moves nothing; a new controller counts a
//! peer's silence from when its own detector started watching.
//!
//! Limits: a plan trusts reports up to an interval old, so right after a
//! step it may ask for the same step again (refused, harmless) or start one
//! move more than the throttle allows on a node until the reports catch up.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::Node;
use crate::identity::Incarnation;
use crate::io::PlacementMessage;
use crate::kv::{Command, Precondition};
use crate::metadata::MemberState;
use crate::metadata::{ClusterMetadata, DOCUMENT_KEY, METADATA_GROUP, MetaChange, MetaError};
use crate::placement::planner::{
    self, Action, Cluster, DrainRefused, GroupReport, Plan, check_drain,
};
use crate::raft::Membership;
use crate::types::{NodeId, PartitionId, Time};
use crate::wire;

/// Why [`Node::handle_drain`] did nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error("node {this} does not run the placement controller; {}", match controller {
        Some(c) => format!("node {c} does (it leads the metadata group): ask it"),
        None => "no node is known to (the metadata group has no leader yet): retry shortly".to_owned(),
    })]
    NotController {
        this: NodeId,
        controller: Option<NodeId>,
    },
    #[error("{0}")]
    Refused(#[from] DrainRefused),
    #[error("another change of the member list is being committed; retry shortly")]
    Busy,
}

/// What [`Node::handle_register`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The node is a member, as the committed document says: here it is.
    Member(ClusterMetadata),
    /// Its registration was proposed (or one is being committed): ask again
    /// shortly.
    Proposed,
}

/// Why [`Node::handle_register`] did not register a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Only the controller registers; the caller asks the node named.
    #[error("node {this} does not run the placement controller; {}", match controller {
        Some(c) => format!("node {c} does: ask it"),
        None => "no node is known to (the metadata group has no leader yet): retry shortly".to_owned(),
    })]
    NotController {
        this: NodeId,
        controller: Option<NodeId>,
    },
    /// The member list does not admit it (an id in use by another data
    /// directory, or one that was removed).
    #[error("{0}")]
    Refused(#[from] MetaError),
    #[error("another change of the member list is being committed; retry shortly")]
    Busy,
}

/// Reports older than this many report intervals are ignored.
const REPORT_LIFETIME_INTERVALS: u32 = 3;

struct Report {
    term: u64,
    leader: NodeId,
    membership: Membership,
    at: Time,
}

/// The controller's state on one node (used only while it leads the
/// metadata group, but kept by every node: leadership moves).
#[derive(Default)]
pub(super) struct ControllerState {
    reports: BTreeMap<PartitionId, Report>,
    next_report: Time,
    next_plan: Time,
    /// `(term, index)` of the metadata change proposed and not yet applied.
    meta_change: Option<(u64, u64)>,
    /// Messages for peers, sent with the next flush.
    outbox: BTreeMap<NodeId, Vec<PlacementMessage>>,
    /// The latest plan this node made (for operators).
    last_plan: Option<Plan>,
}

impl Node {
    /// The latest plan this node made as controller, if it is or was one.
    pub fn last_plan(&self) -> Option<&Plan> {
        self.controller.last_plan.as_ref()
    }

    /// Ticks: report the groups this node leads, and plan if it leads the
    /// metadata group.
    pub(super) fn run_placement(&mut self) {
        if self.now >= self.controller.next_report {
            self.controller.next_report = self.now + self.cfg.report_interval;
            self.send_reports();
        }
        if self.now >= self.controller.next_plan {
            self.controller.next_plan = self.now + self.cfg.placement_interval;
            self.plan_and_act();
        }
    }

    fn send_reports(&mut self) {
        let Some(controller) = self.metadata_leader() else {
            return;
        };
        let reports: Vec<PlacementMessage> = self
            .groups
            .iter()
            .filter(|(p, g)| **p != METADATA_GROUP && g.raft.is_leader())
            .map(|(&partition, g)| PlacementMessage::Report {
                partition,
                term: g.raft.term(),
                membership: g.raft.membership().clone(),
            })
            .collect();
        if controller == self.id {
            for r in reports {
                self.handle_placement(self.id, r);
            }
        } else if !reports.is_empty() {
            self.controller
                .outbox
                .entry(controller)
                .or_default()
                .extend(reports);
        }
    }

    /// A placement message from `from` (or from this node itself). Orders
    /// are taken only from the controller this node knows of: one deposed
    /// (and unaware of it) plans from a document that may be stale.
    pub(super) fn handle_placement(&mut self, from: NodeId, m: PlacementMessage) {
        let from_controller = from == self.id || self.metadata_leader() == Some(from);
        if !from_controller && !matches!(m, PlacementMessage::Report { .. }) {
            tracing::debug!(%from, "placement: an order from a node not known to lead the metadata group");
            return;
        }
        match m {
            PlacementMessage::Report {
                partition,
                term,
                membership,
            } => {
                let newer = self
                    .controller
                    .reports
                    .get(&partition)
                    .is_none_or(|r| term >= r.term);
                if newer {
                    let at = self.now;
                    self.controller.reports.insert(
                        partition,
                        Report {
                            term,
                            leader: from,
                            membership,
                            at,
                        },
                    );
                }
            }
            PlacementMessage::ConfChange { partition, change } => {
                let Some(g) = self.groups.get_mut(&partition) else {
                    return;
                };
                match g.raft.propose_conf_change(change.clone()) {
                    Ok(_) => {
                        tracing::info!(%partition, %change, controller = %from, "placement: proposed");
                        self.dirty.insert(partition);
                    }
                    Err(e) => {
                        tracing::debug!(%partition, %change, "placement: step refused: {e}");
                    }
                }
            }
            PlacementMessage::TransferLeader { partition, to } => {
                let Some(g) = self.groups.get_mut(&partition) else {
                    return;
                };
                if g.raft.transfer_leadership(to).is_ok() {
                    tracing::debug!(%partition, %to, "placement: handing leadership over");
                    self.dirty.insert(partition);
                }
            }
        }
    }

    /// What the controller sees now, if this node is the controller (it
    /// leads the metadata group and has a document).
    fn observed_cluster(&mut self) -> Option<Cluster> {
        let leads_metadata = self
            .groups
            .get(&METADATA_GROUP)
            .is_some_and(|g| g.raft.is_leader());
        let doc = self.metadata().filter(|_| leads_metadata)?.clone();
        let metadata_group = GroupReport {
            membership: self.groups[&METADATA_GROUP].raft.membership().clone(),
            leader: Some(self.id),
        };
        let now = self.now;
        let lifetime = self.cfg.report_interval * REPORT_LIFETIME_INTERVALS;
        self.controller
            .reports
            .retain(|_, r| now.saturating_since(r.at) <= lifetime);
        let cluster = Cluster {
            ring: doc.ring,
            members: doc.members.iter().map(|(&id, m)| (id, m.state)).collect(),
            groups: self
                .controller
                .reports
                .iter()
                .map(|(&p, r)| {
                    let report = GroupReport {
                        membership: r.membership.clone(),
                        leader: Some(r.leader),
                    };
                    (p, report)
                })
                .chain([(METADATA_GROUP, metadata_group)])
                .collect(),
            down_for: doc
                .members
                .keys()
                .filter(|&&m| m != self.id)
                .filter_map(|&m| Some((m, self.detector.down_for(m, now)?)))
                .collect(),
        };
        Some(cluster)
    }

    fn plan_and_act(&mut self) {
        let Some(cluster) = self.observed_cluster() else {
            return;
        };
        let plan = match planner::plan(&cluster, &self.cfg.placement) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("placement: the document's ring settings are invalid: {e}");
                return;
            }
        };
        let mut changes = Vec::new();
        for action in &plan.actions {
            match action {
                Action::SetState { node, from, to } => changes.push(MetaChange::SetState {
                    node: *node,
                    from: *from,
                    to: *to,
                }),
                Action::Propose {
                    partition,
                    leader,
                    change,
                    ..
                } => self.send_order(
                    *leader,
                    PlacementMessage::ConfChange {
                        partition: *partition,
                        change: change.clone(),
                    },
                ),
                Action::TransferLeader {
                    partition,
                    from,
                    to,
                    ..
                } => self.send_order(
                    *from,
                    PlacementMessage::TransferLeader {
                        partition: *partition,
                        to: *to,
                    },
                ),
            }
        }
        if !changes.is_empty() {
            self.propose_metadata_changes(&changes);
        }
        self.controller.last_plan = Some(plan);
    }

    fn send_order(&mut self, to: NodeId, m: PlacementMessage) {
        if to == self.id {
            self.handle_placement(self.id, m);
        } else {
            self.controller.outbox.entry(to).or_default().push(m);
        }
    }

    /// An operator asks to drain `node`: its replicas move away, then it
    /// is removed. Only the controller takes it, and only if
    /// [`check_drain`] allows it; draining a draining node is a no-op.
    /// Returns once the change is proposed; the member list says when it
    /// is committed.
    pub fn handle_drain(&mut self, now: Time, node: NodeId) -> Result<(), DrainError> {
        let not_controller = DrainError::NotController {
            this: self.id,
            controller: self.metadata_leader().filter(|&l| l != self.id),
        };
        if self.halted.is_some() {
            return Err(not_controller);
        }
        self.start(now);
        let cluster = self.observed_cluster().ok_or(not_controller)?;
        check_drain(&cluster, node)?;
        let from = cluster.members[&node];
        if from == MemberState::Draining {
            return Ok(());
        }
        let change = MetaChange::SetState {
            node,
            from,
            to: MemberState::Draining,
        };
        let proposed = self.propose_metadata_changes(&[change]);
        self.process();
        if proposed {
            Ok(())
        } else {
            Err(DrainError::Busy)
        }
    }

    /// A node asks to become a member (`ringkv server --join`): the
    /// controller registers it as `joining` (the planner marks it `up`
    /// once it is heard from, and gives it its share of the ring). Asking
    /// again is how the caller learns the outcome: once the committed
    /// document lists it with this incarnation, the answer is the
    /// document. A registration whose address changed is written again.
    pub fn handle_register(
        &mut self,
        now: Time,
        node: NodeId,
        address: String,
        incarnation: Incarnation,
    ) -> Result<Registration, RegisterError> {
        let not_controller = RegisterError::NotController {
            this: self.id,
            controller: self.metadata_leader().filter(|&l| l != self.id),
        };
        if self.halted.is_some() {
            return Err(not_controller);
        }
        self.start(now);
        if self.observed_cluster().is_none() {
            return Err(not_controller);
        }
        let doc = self
            .meta
            .document()
            .expect("observed_cluster needs a document");
        let change = MetaChange::Register {
            node,
            address: address.clone(),
            incarnation,
        };
        // Refusals first: they hold whatever is in flight.
        doc.apply(&change)?;
        let member = doc.members.get(&node);
        if let Some(m) = member
            && m.incarnation == Some(incarnation)
            && m.address == address
        {
            return Ok(Registration::Member(doc.clone()));
        }
        let proposed = self.propose_metadata_changes(&[change]);
        self.process();
        if proposed {
            Ok(Registration::Proposed)
        } else {
            Err(RegisterError::Busy)
        }
    }

    /// One compare-and-set of the document with every change applied, if
    /// no earlier one is still in flight. Whether it was proposed.
    fn propose_metadata_changes(&mut self, changes: &[MetaChange]) -> bool {
        let Some(g) = self.groups.get_mut(&METADATA_GROUP) else {
            return false;
        };
        let (term, applied) = (g.raft.term(), g.kv.applied_index());
        if let Some((t, index)) = self.controller.meta_change
            && t == term
            && applied < index
        {
            return false;
        }
        let Some(doc) = self.meta.document() else {
            return false;
        };
        let mut next = doc.clone();
        for c in changes {
            match next.apply(c) {
                Ok(d) => next = d,
                Err(e) => {
                    tracing::warn!(change = %c, "placement: metadata change refused: {e}");
                    return false;
                }
            }
        }
        let put = Command::Put {
            key: Bytes::from_static(DOCUMENT_KEY),
            value: next.encode(),
            precondition: Precondition::ModRevision(doc.version),
        };
        if let Ok(index) = g.raft.propose(put.encode()) {
            for c in changes {
                tracing::info!(change = %c, "placement: member state");
            }
            self.controller.meta_change = Some((term, index));
            self.dirty.insert(METADATA_GROUP);
            return true;
        }
        false
    }

    /// Batches of the placement messages queued for each peer.
    pub(super) fn flush_placement(&mut self) {
        let budget = self
            .cfg
            .max_batch_bytes
            .saturating_sub(wire::PEER_BATCH_OVERHEAD_BYTES);
        for (to, messages) in std::mem::take(&mut self.controller.outbox) {
            if !self.peers.contains(&to) {
                continue;
            }
            let mut batch: Vec<PlacementMessage> = Vec::new();
            let mut bytes = 0;
            for m in messages {
                let len = wire::placement_len_bound(&m);
                if !batch.is_empty() && bytes + len > budget {
                    let gossip = self.gossip();
                    self.send_node_batch(to, gossip, std::mem::take(&mut batch), bytes);
                    bytes = 0;
                }
                bytes += len;
                batch.push(m);
            }
            if !batch.is_empty() {
                let gossip = self.gossip();
                self.send_node_batch(to, gossip, batch, bytes);
            }
        }
    }
}
