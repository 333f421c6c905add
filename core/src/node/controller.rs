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
//! it then sees).
//!
//! **Node reports.** Each report round every node also sends the
//! controller a [`PlacementMessage::NodeReport`]: what its failure detector
//! says of each peer (down and for how long, or alive), and where it serves
//! REST and RESP (recorded in the member list when it changes). A member is silent for the controller's plan only if it is
//! silent to the controller's own detector *and* no fresh node report of
//! another live member says it was heard; its silence is then the shortest
//! any of them saw. A node silent for less than
//! [`PlannerConfig::dead_after`](crate::placement::planner::PlannerConfig)
//! that way moves nothing; a new controller counts a peer's silence from
//! when its own detector started watching.
//!
//! **Leader hints.** Every fourth round the reports go to every peer as
//! well: a node keeps the latest per partition like the controller does,
//! and sends a request for a partition it does not replicate straight to
//! the reported leader (one hop) while the report is fresh.
//!
//! Limits: a plan trusts reports up to an interval old, so right after a
//! step it may ask for the same step again (refused, harmless) or start one
//! move more than the throttle allows on a node until the reports catch up.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::Node;
use crate::access::TokenRecord;
use crate::identity::Incarnation;
use crate::io::{CatchUp, PeerHealth, PlacementMessage};
use crate::kv::{Command, Precondition, Ttl};
use crate::metadata::MemberState;
use crate::metadata::{
    ClientAddresses, ClusterMetadata, DOCUMENT_KEY, METADATA_GROUP, MetaChange, MetaError,
};
use crate::placement::planner::{
    self, Action, Cluster, DrainRefused, GroupReport, Plan, check_drain,
};
use crate::raft::{Membership, Raft};
use crate::types::{NodeId, PartitionId, Time};
use crate::wire;

/// Where a request the controller alone takes should go instead.
fn ask_controller(controller: Option<NodeId>) -> String {
    match controller {
        Some(c) => format!("node {c} does (it leads the metadata group): ask it"),
        None => {
            "no node is known to (the metadata group has no leader yet): retry shortly".to_owned()
        }
    }
}

/// Why [`Node::handle_drain`] did nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error("node {this} does not run the placement controller; {}", ask_controller(*controller))]
    NotController {
        this: NodeId,
        controller: Option<NodeId>,
    },
    #[error("{0}")]
    Refused(#[from] DrainRefused),
    #[error("another change of the member list is being committed; retry shortly")]
    Busy,
}

/// What [`Node::handle_drain`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// The committed member list has the node draining: its replicas are
    /// moving away, and it will be removed.
    Draining,
    /// Its drain was proposed: ask again shortly to learn whether it was
    /// committed (a proposal can be lost when the controller changes).
    Proposed,
}

/// A change of the access tokens a client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenEdit {
    Add { id: String, record: TokenRecord },
    Remove { id: String },
}

impl TokenEdit {
    fn to_change(&self) -> MetaChange {
        match self {
            TokenEdit::Add { id, record } => MetaChange::AddToken {
                id: id.clone(),
                record: record.clone(),
            },
            TokenEdit::Remove { id } => MetaChange::RemoveToken { id: id.clone() },
        }
    }
}

/// What [`Node::handle_token_change`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenChange {
    /// The committed document has the change in it.
    Committed,
    /// It was proposed: ask again shortly to learn whether it was
    /// committed (a proposal can be lost when the controller changes).
    Proposed,
}

/// Why [`Node::handle_token_change`] did nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenChangeError {
    #[error("node {this} does not run the placement controller; {}", ask_controller(*controller))]
    NotController {
        this: NodeId,
        controller: Option<NodeId>,
    },
    #[error("{0}")]
    Refused(MetaError),
    #[error("another change of the cluster's metadata is being committed; retry shortly")]
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
    #[error("node {this} does not run the placement controller; {}", ask_controller(*controller))]
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

/// How far each learner of the group `raft` leads has caught up.
fn learners_progress(raft: &Raft) -> Vec<CatchUp> {
    let last_index = raft.log().last_index();
    raft.membership()
        .learners
        .iter()
        .filter_map(|&node| {
            let matched = raft.progress(node)?.matched;
            Some(CatchUp {
                node,
                matched,
                last_index,
                snapshot: raft.outgoing_snapshot_progress(node),
            })
        })
        .collect()
}

/// Reports older than this many report intervals are ignored.
const REPORT_LIFETIME_INTERVALS: u32 = 3;

struct Report {
    term: u64,
    leader: NodeId,
    membership: Membership,
    learners: Vec<CatchUp>,
    at: Time,
}

/// What one node last said of itself and its peers, and when it arrived.
struct NodeReport {
    peers: Vec<PeerHealth>,
    addresses: ClientAddresses,
    /// It is about to stop: no leadership for it.
    leaving: bool,
    at: Time,
}

/// The controller's state on one node (used only while it leads the
/// metadata group, but kept by every node: leadership moves).
#[derive(Default)]
pub(super) struct ControllerState {
    reports: BTreeMap<PartitionId, Report>,
    /// The latest report of each other node about itself.
    node_reports: BTreeMap<NodeId, NodeReport>,
    next_report: Time,
    /// Report rounds so far: every [`ROUTE_HINT_EVERY`]th also goes to
    /// every peer.
    report_rounds: u64,
    next_plan: Time,
    /// `(term, index)` of the metadata change proposed and not yet applied.
    meta_change: Option<(u64, u64)>,
    /// Messages for peers, sent with the next flush.
    outbox: BTreeMap<NodeId, Vec<PlacementMessage>>,
    /// The latest plan this node made (for operators).
    last_plan: Option<Plan>,
    /// Per move catching up (partition, new replica): when it was first
    /// seen, and what it had left then, to estimate when it is done.
    pace: BTreeMap<(PartitionId, NodeId), Pace>,
}

/// Every this many report rounds a node sends its reports to every peer,
/// not only the controller: leader hints for routing. A hint is used for
/// three such rounds; a stale one costs a hop (its node forwards again).
const ROUTE_HINT_EVERY: u64 = 4;

/// An estimate beyond this (about three years) is no estimate.
const MAX_ETA_SECS: f64 = 1e8;

/// What a catching-up replica had left when the controller first saw it.
struct Pace {
    since: Time,
    /// Bytes of snapshot, or log entries, left then.
    left: u64,
    snapshot: bool,
}

/// When a replica that had `pace.left` to do then and has `left` now is
/// done, at the same pace (none before any progress). The numbers come
/// from peers' reports: nothing here may overflow or panic.
fn eta(pace: &Pace, now: Time, left: u64) -> Option<Duration> {
    let done = pace.left.checked_sub(left).filter(|&d| d > 0)?;
    let elapsed = now.saturating_since(pace.since);
    let secs = elapsed.as_secs_f64() * left as f64 / done as f64;
    (secs.is_finite() && secs < MAX_ETA_SECS && !elapsed.is_zero())
        .then(|| Duration::from_secs_f64(secs))
}

/// What a catching-up replica has left: snapshot bytes while a snapshot
/// streams to it, else log entries.
fn left_to_do(c: &CatchUp) -> (u64, bool) {
    match c.snapshot {
        Some((acked, total)) => (total.saturating_sub(acked), true),
        None => (c.last_index.saturating_sub(c.matched), false),
    }
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
        let controller = self.metadata_leader();
        self.controller.report_rounds += 1;
        let hints = self
            .controller
            .report_rounds
            .is_multiple_of(ROUTE_HINT_EVERY);
        if controller.is_none() && !hints {
            return;
        }
        if let Some(c) = controller.filter(|&c| c != self.id) {
            let report = PlacementMessage::NodeReport {
                peers: self.peer_health(),
                addresses: self.cfg.client_addresses.clone(),
                leaving: self.leaving,
            };
            self.controller.outbox.entry(c).or_default().push(report);
        }
        let reports: Vec<PlacementMessage> = self
            .groups
            .iter()
            .filter(|(p, g)| **p != METADATA_GROUP && g.raft.is_leader())
            .map(|(&partition, g)| PlacementMessage::Report {
                partition,
                term: g.raft.term(),
                membership: g.raft.membership().clone(),
                learners: learners_progress(&g.raft),
            })
            .collect();
        if reports.is_empty() {
            return;
        }
        // Now and then every peer hears them too: they are the leader hints
        // a node routes by (see `route_hint`).
        if hints {
            for &peer in &self.peers {
                if Some(peer) != controller {
                    self.controller
                        .outbox
                        .entry(peer)
                        .or_default()
                        .extend(reports.iter().cloned());
                }
            }
        }
        match controller {
            Some(c) if c == self.id => {
                for r in reports {
                    self.handle_placement(self.id, r);
                }
            }
            Some(c) => self.controller.outbox.entry(c).or_default().extend(reports),
            None => {}
        }
    }

    /// Sends this node's report to every peer now: a node that starts
    /// leaving says so at once, and to all, since its leaving moves the
    /// controller too (it hands the metadata group over like any other), and
    /// the next controller must not hand leaderships back to it.
    pub(super) fn report_to_all(&mut self) {
        let report = PlacementMessage::NodeReport {
            peers: self.peer_health(),
            addresses: self.cfg.client_addresses.clone(),
            leaving: self.leaving,
        };
        for &peer in &self.peers {
            self.controller
                .outbox
                .entry(peer)
                .or_default()
                .push(report.clone());
        }
    }

    /// What this node's failure detector says of every peer it watches.
    fn peer_health(&self) -> Vec<PeerHealth> {
        self.detector
            .peers()
            .map(|(node, _, _)| PeerHealth {
                node,
                down_for: self.detector.down_for(node, self.now),
            })
            .collect()
    }

    /// How long `member` has been silent to every node the controller
    /// hears, or `None` if any of them (or the controller) hears it: its
    /// own detector's silence, unless a fresh node report from another
    /// live member says it heard `member`, and the shortest silence among
    /// those reports (each aged by the time since it arrived). One
    /// observer's silence is no proof of death: partitions, stalled
    /// streams and clock jumps make a member silent to one node while the
    /// rest hear it (madsim churn seed 4414: a member its controller could
    /// not hear for 20 s of the controller's jumpy clock, heard by the
    /// others throughout, was marked dead).
    fn cluster_down_for(
        &self,
        member: NodeId,
        live: &[NodeId],
        lifetime: Duration,
    ) -> Option<Duration> {
        let mut silent = self.detector.down_for(member, self.now)?;
        for (reporter, report) in &self.controller.node_reports {
            if *reporter == member
                || !live.contains(reporter)
                || self.now.saturating_since(report.at) > lifetime
            {
                continue;
            }
            match report.peers.iter().find(|h| h.node == member) {
                Some(PeerHealth { down_for: None, .. }) => return None,
                Some(PeerHealth {
                    down_for: Some(d), ..
                }) => silent = silent.min(*d + self.now.saturating_since(report.at)),
                None => {}
            }
        }
        Some(silent)
    }

    /// The latest report this node has of `p`'s group, if recent:
    /// `(leader, term, configuration)` as the leader reported them (see
    /// `route_hint`). How a node that does not replicate `p` knows its
    /// replicas after they moved off the ring it started with.
    pub fn reported_group(&self, p: PartitionId) -> Option<(NodeId, u64, &Membership)> {
        let lifetime = self.cfg.report_interval * (ROUTE_HINT_EVERY * 3) as u32;
        self.controller
            .reports
            .get(&p)
            .filter(|r| self.now.saturating_since(r.at) <= lifetime)
            .map(|r| (r.leader, r.term, &r.membership))
    }

    /// The leader of `p` as the latest report this node has of it says,
    /// if that report is recent and names another node: where a node that
    /// does not replicate `p` sends its requests, one hop from the leader.
    pub(super) fn route_hint(&self, p: PartitionId) -> Option<NodeId> {
        self.reported_group(p)
            .map(|(leader, _, _)| leader)
            .filter(|&l| l != self.id)
    }

    /// A placement message from `from` (or from this node itself). Orders
    /// are taken only from the controller this node knows of: one deposed
    /// (and unaware of it) plans from a document that may be stale.
    pub(super) fn handle_placement(&mut self, from: NodeId, m: PlacementMessage) {
        let from_controller = from == self.id || self.metadata_leader() == Some(from);
        if !from_controller
            && !matches!(
                m,
                PlacementMessage::Report { .. } | PlacementMessage::NodeReport { .. }
            )
        {
            tracing::debug!(%from, "placement: an order from a node not known to lead the metadata group");
            return;
        }
        match m {
            PlacementMessage::Report {
                partition,
                term,
                membership,
                learners,
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
                            learners,
                            at,
                        },
                    );
                }
            }
            PlacementMessage::NodeReport {
                peers,
                addresses,
                leaving,
            } => {
                let at = self.now;
                if leaving {
                    tracing::info!(node = %from, "placement: node {from} is leaving; no leadership for it");
                }
                self.controller.node_reports.insert(
                    from,
                    NodeReport {
                        peers,
                        addresses,
                        leaving,
                        at,
                    },
                );
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
        let metadata_raft = &self.groups[&METADATA_GROUP].raft;
        let metadata_group = GroupReport {
            membership: metadata_raft.membership().clone(),
            leader: Some(self.id),
            learners: learners_progress(metadata_raft),
        };
        let now = self.now;
        let lifetime = self.cfg.report_interval * REPORT_LIFETIME_INTERVALS;
        self.controller
            .reports
            .retain(|_, r| now.saturating_since(r.at) <= lifetime);
        self.controller
            .node_reports
            .retain(|_, r| now.saturating_since(r.at) <= lifetime);
        let live: Vec<NodeId> = doc
            .members
            .iter()
            .filter(|(_, m)| m.state.is_live())
            .map(|(&id, _)| id)
            .collect();
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
                        learners: r.learners.clone(),
                    };
                    (p, report)
                })
                .chain([(METADATA_GROUP, metadata_group)])
                .collect(),
            down_for: doc
                .members
                .keys()
                .filter(|&&m| m != self.id)
                .filter_map(|&m| Some((m, self.cluster_down_for(m, &live, lifetime)?)))
                .collect(),
            leaving: self
                .controller
                .node_reports
                .iter()
                .filter(|(_, r)| r.leaving)
                .map(|(&n, _)| n)
                .chain(self.leaving.then_some(self.id))
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
        changes.extend(self.client_address_changes());
        if !changes.is_empty() {
            self.propose_metadata_changes(&changes);
        }
        let mut plan = plan;
        self.estimate_catch_up(&mut plan);
        self.controller.last_plan = Some(plan);
    }

    /// Live members (this node included) whose client addresses, as they
    /// last reported them, differ from the member list's.
    fn client_address_changes(&self) -> Vec<MetaChange> {
        let Some(doc) = self.metadata() else {
            return Vec::new();
        };
        let reported = self
            .controller
            .node_reports
            .iter()
            .map(|(&node, r)| (node, &r.addresses))
            .chain([(self.id, &self.cfg.client_addresses)]);
        reported
            .filter(|(node, addresses)| {
                doc.members
                    .get(node)
                    .is_some_and(|m| m.state.is_live() && m.client != **addresses)
            })
            .map(|(node, addresses)| MetaChange::SetClientAddresses {
                node,
                addresses: addresses.clone(),
            })
            .collect()
    }

    /// Fills in each catching-up move's `eta`: what it has left at the
    /// pace it went since the controller first saw it (none before it has
    /// made progress).
    fn estimate_catch_up(&mut self, plan: &mut Plan) {
        let now = self.now;
        let mut seen = BTreeMap::new();
        for m in &mut plan.moves {
            let Some(c) = &m.catch_up else {
                continue;
            };
            let key = (m.partition, c.node);
            let (left, snapshot) = left_to_do(c);
            let pace = match self.controller.pace.remove(&key) {
                Some(p) if p.snapshot == snapshot && p.left >= left => p,
                _ => Pace {
                    since: now,
                    left,
                    snapshot,
                },
            };
            m.eta = eta(&pace, now, left);
            seen.insert(key, pace);
        }
        self.controller.pace = seen;
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
    /// [`check_drain`] allows it. Asking again is how the caller learns the
    /// outcome, as for a registration: a proposal can be lost with its
    /// term (madsim churn seeds 284 and 615 once took such a lost drain for
    /// done), so [`Drain::Proposed`] means "ask again", and only
    /// [`Drain::Draining`], from the committed member list, means done.
    pub fn handle_drain(&mut self, now: Time, node: NodeId) -> Result<Drain, DrainError> {
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
            return Ok(Drain::Draining);
        }
        let change = MetaChange::SetState {
            node,
            from,
            to: MemberState::Draining,
        };
        let proposed = self.propose_metadata_changes(&[change]);
        self.process();
        if proposed {
            Ok(Drain::Proposed)
        } else {
            Err(DrainError::Busy)
        }
    }

    /// A client asks to add or remove an access token: the controller
    /// proposes it. Asking again is how the caller learns
    /// the outcome: [`TokenChange::Committed`] once the committed document
    /// has the token (added) or lacks it (removed). Whether the caller may
    /// change tokens is the node's check, made before it asks.
    pub fn handle_token_change(
        &mut self,
        now: Time,
        edit: &TokenEdit,
    ) -> Result<TokenChange, TokenChangeError> {
        let not_controller = TokenChangeError::NotController {
            this: self.id,
            controller: self.metadata_leader().filter(|&l| l != self.id),
        };
        if self.halted.is_some() {
            return Err(not_controller);
        }
        self.start(now);
        let leads_metadata = self
            .groups
            .get(&METADATA_GROUP)
            .is_some_and(|g| g.raft.is_leader());
        let Some(doc) = self.meta.document().filter(|_| leads_metadata) else {
            return Err(not_controller);
        };
        let committed = match edit {
            TokenEdit::Add { id, record } => doc.tokens.get(id) == Some(record),
            TokenEdit::Remove { id } => !doc.tokens.contains_key(id),
        };
        if committed {
            return Ok(TokenChange::Committed);
        }
        let change = edit.to_change();
        doc.apply(&change).map_err(TokenChangeError::Refused)?;
        let proposed = self.propose_metadata_changes(&[change]);
        self.process();
        if proposed {
            Ok(TokenChange::Proposed)
        } else {
            Err(TokenChangeError::Busy)
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
        // A join call from a registered member is contact: a joiner that
        // restarted before it finished joining asks again, and until it is
        // answered (no controller, a partition) the groups do not hear it.
        // It must not be taken for dead meanwhile (madsim churn seed 4784:
        // it was, then removed, and its rejoin refused). Whoever the call
        // reaches vouches for it in its node reports.
        if let Some(m) = self.meta.document().and_then(|d| d.members.get(&node))
            && m.incarnation == Some(incarnation)
            && m.state.is_live()
        {
            self.detector.heartbeat(node, now);
        }
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
            ttl: Ttl::Clear,
        };
        if let Ok(index) = g.raft.propose(put.encode(0)) {
            for c in changes {
                tracing::info!(change = %c, "placement: metadata change");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_follows_the_pace_so_far_and_never_overflows() {
        let pace = Pace {
            since: Time::from_millis(1000),
            left: 100,
            snapshot: true,
        };
        // 25 done in 2 s: 75 left take 6 s.
        assert_eq!(
            eta(&pace, Time::from_millis(3000), 75),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            eta(&pace, Time::from_millis(3000), 100),
            None,
            "no progress yet"
        );
        assert_eq!(eta(&pace, Time::from_millis(1000), 50), None, "no time yet");
        assert_eq!(eta(&pace, Time::from_millis(3000), 0), Some(Duration::ZERO));
        assert_eq!(eta(&pace, Time::from_millis(3000), 200), None, "went back");
        let huge = Pace {
            since: Time::from_millis(0),
            left: u64::MAX,
            snapshot: false,
        };
        assert_eq!(
            eta(&huge, Time::from_millis(u64::MAX / 2), u64::MAX - 1),
            None
        );
    }

    #[test]
    fn what_is_left_is_snapshot_bytes_while_one_streams_else_entries() {
        let c = |snapshot| CatchUp {
            node: NodeId(4),
            matched: 10,
            last_index: 50,
            snapshot,
        };
        assert_eq!(left_to_do(&c(Some((3, 12)))), (9, true));
        assert_eq!(left_to_do(&c(None)), (40, false));
        assert_eq!(left_to_do(&c(Some((13, 12)))), (0, true));
    }
}
