//! The placement controller's decisions: given what the cluster looks like
//! now, what to do next. [`plan`] is a pure function of a [`Cluster`] (the
//! member list with each member's state, every group's configuration and
//! leader as its leader reports them, and which nodes the failure detector
//! holds down); it returns the next steps, and the driver carries them out,
//! waits, observes again and asks again.
//!
//! **Desired placement.** The consistent-hash [`Ring`] over the members in
//! state [`MemberState::Up`]. Joining, draining, dead and removed members
//! hold no replica of the desired ring; their replicas move to the ring's
//! choice, which moves only the partitions whose ring placement changed
//! (see [`crate::ring`]: a join moves about `rf/(n+1)` of the replica
//! slots, a leave exactly the leaver's). The planner adds nothing to that:
//! every replica it creates is one the desired ring has and the group lacks.
//!
//! **The metadata group** ([`METADATA_GROUP`], reported by the controller
//! itself) is planned like a partition, toward
//! [`Cluster::desired_metadata`]: 1, 3 or 5 `up` members
//! ([`metadata_group_size`]), its current voters kept while they are up.
//! Its leadership (the controller) moves off a member that is not up, and
//! never for balance.
//!
//! **Member states** change only through the plan ([`Action::SetState`]),
//! committed by the driver to the member list, and never go back:
//! - `joining` -> `up` once the node is not held down (it has been heard from);
//! - `up` -> `dead` once the detector has held it down for
//!   [`PlannerConfig::dead_after`]: a node back before then finds nothing
//!   moved, and a flicker of suspicion moves nothing;
//! - `draining` (set by an operator, after [`check_drain`]) or `dead` ->
//!   `removed` once no group of any partition has it as a member.
//!
//! **Moves.** One [`ReplicaMove`] per group at a time (Raft allows one
//! configuration change in flight), make before break: a voter is removed
//! only in the joint change that promotes its caught-up replacement, or when
//! the group has more voters than the desired ring gives it. A group with
//! a voter set to remove but no live replacement waits. A move's state is
//! the group's configuration (a learner: catching up; joint: finishing), so
//! a plan made by a new controller after a crash or leader change resumes
//! the moves under way and starts none twice.
//!
//! **Priority and throttle.** Moves start in order of [`Reason`]: groups
//! with fewer healthy voters than the desired ring gives them, then groups
//! whose voter leaves (draining, dead or gone), then balance moves; by partition within a
//! reason. At most [`PlannerConfig::max_moves_per_node`] moves under way
//! touch any one live node (as the node receiving the new replica or the
//! one losing it); moves under way always continue, new ones wait their
//! turn. A dead node's replicas do not count against it (it does no work).
//!
//! **Leaders.** Before a step that would remove a group's leader, the plan
//! hands leadership to a voter that stays (the group then never waits out
//! an election). Leadership held by a member that is not `up` moves to one
//! that is; then leaders are spread: while a group's leader leads at least
//! two groups more than another live voter of that group, leadership moves
//! to that voter (at most [`PlannerConfig::max_leader_transfers`] per plan).
//! When every group has every node as a voter (e.g. 3 nodes, rf 3) this
//! ends with every node within one of the mean.
//!
//! **Limits.** The plan trusts its inputs: a configuration reported by a
//! stale leader yields a step that the group's real leader refuses, and
//! the next plan corrects it. Snapshot bandwidth is the node's to limit,
//! not the planner's. Groups whose leader is unknown are left alone (they
//! still count toward the throttle when their configuration is known).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::moves::{MoveStep, ReplicaMove};
use crate::io::CatchUp;
use crate::metadata::METADATA_GROUP;
pub use crate::metadata::MemberState;
use crate::raft::{ConfChange, Membership};
use crate::ring::{Ring, RingConfig, RingError};
use crate::types::{NodeId, PartitionId};

/// The planner's knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Moves under way that may touch one live node.
    pub max_moves_per_node: usize,
    /// How long the detector must hold a node down before it is `dead`.
    pub dead_after: Duration,
    /// Leader transfers one plan asks for.
    pub max_leader_transfers: usize,
    /// Whether to move replicas of healthy groups toward the desired ring
    /// ([`Reason::Rebalance`]), and to remove learners on `up` members the
    /// ring does not want (without it, those are taken for an operator's
    /// moves under way). Re-replication and drains happen either way.
    pub rebalance: bool,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            max_moves_per_node: 2,
            dead_after: Duration::from_secs(30),
            max_leader_transfers: 8,
            rebalance: true,
        }
    }
}

/// A group as its leader reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupReport {
    pub membership: Membership,
    /// `None`: the configuration is known (e.g. from a follower) but no
    /// leader is: nothing can be proposed to the group.
    pub leader: Option<NodeId>,
    /// How far each learner has caught up, as the leader sees it.
    pub learners: Vec<CatchUp>,
}

/// What the planner sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub ring: RingConfig,
    pub members: BTreeMap<NodeId, MemberState>,
    /// Partitions with a known configuration; a partition missing here is
    /// left alone.
    pub groups: BTreeMap<PartitionId, GroupReport>,
    /// Members silent to every node the controller hears, and for how
    /// long (see `node::controller`'s node reports).
    pub down_for: BTreeMap<NodeId, Duration>,
    /// Members about to stop (their node reports say so): they are given
    /// no leadership and no new replica, and leaderships they still hold
    /// move off them, as off a member that is not `up`.
    pub leaving: BTreeSet<NodeId>,
}

impl Cluster {
    fn state(&self, node: NodeId) -> Option<MemberState> {
        self.members.get(&node).copied()
    }

    /// A member that is `up` and not held down: it can take a replica or
    /// leadership now.
    fn is_available(&self, node: NodeId) -> bool {
        self.state(node) == Some(MemberState::Up)
            && !self.down_for.contains_key(&node)
            && !self.leaving.contains(&node)
    }

    /// A voter that counts toward a group's replication: not dead, not
    /// removed, not held down.
    fn is_healthy(&self, node: NodeId) -> bool {
        self.state(node).is_some_and(MemberState::is_live) && !self.down_for.contains_key(&node)
    }

    /// The metadata group's desired voters: as many `up` members as
    /// [`metadata_group_size`] allows, keeping its current `up` voters
    /// (lowest ids first if there are too many), then adding available
    /// `up` members by lowest id, then `up` members held down (so the list
    /// has the full size while enough members are `up`, and a voter that
    /// must leave waits for its replacement). Moving the group is costly
    /// (it holds the controller), so a voter stays while it is `up`.
    pub fn desired_metadata(&self, current: &Membership) -> Vec<NodeId> {
        let up: Vec<NodeId> = self.in_state(MemberState::Up).collect();
        let size = metadata_group_size(up.len());
        let mut desired: Vec<NodeId> = current
            .voters
            .iter()
            .copied()
            .filter(|v| up.contains(v))
            .collect();
        desired.sort_unstable();
        desired.truncate(size);
        // Available members first; then, to keep the size, members held
        // down: a replacement that is down is waited for, and the voter it
        // replaces stays. (Filling with available ones only made a short
        // list, which let a draining voter go before its replacement came:
        // madsim churn seed 53 left the group at two voters, then lost one
        // of them for good, and the member list could never change again.)
        for available in [true, false] {
            for &n in &up {
                if desired.len() >= size {
                    break;
                }
                if !desired.contains(&n) && self.is_available(n) == available {
                    desired.push(n);
                }
            }
        }
        desired
    }

    fn in_state(&self, state: MemberState) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(move |(_, s)| **s == state)
            .map(|(&n, _)| n)
    }

    /// The desired ring: the consistent-hash ring over the `up` members.
    pub fn desired_ring(&self) -> Result<Ring, RingError> {
        Ring::new(
            self.ring,
            self.members
                .iter()
                .filter(|(_, s)| s.is_placed())
                .map(|(&n, _)| n),
        )
    }
}

/// Why a move is wanted, in the order moves are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The group has fewer healthy voters than the desired ring gives it.
    UnderReplicated,
    /// A voter of the group is leaving the cluster: its member is
    /// draining, dead or gone. (Without it, a group larger than the ring
    /// wants because a member died would keep the dead voter whenever
    /// rebalancing is off.)
    Leaving,
    /// The ring places the group elsewhere (a join, mostly).
    Rebalance,
    /// A learner the desired ring does not want (a move abandoned when its
    /// target left): removed at once, whatever the throttle.
    Cleanup,
}

/// Where a move is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Wanted, not started: it waits for the throttle (or for its group
    /// to have a leader).
    Waiting,
    /// Its first step is among this plan's actions.
    Starting,
    /// Its new replica is a learner, catching up.
    CatchingUp,
    /// The joint change is under way; the leader finishes it by itself.
    Joint,
}

/// One move the plan wants, started or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveProgress {
    pub partition: PartitionId,
    pub mv: ReplicaMove,
    pub reason: Reason,
    pub phase: Phase,
    /// While catching up: how far the new replica is, as the group's
    /// leader reported it.
    pub catch_up: Option<CatchUp>,
    /// While catching up: when it should be done at the pace seen so far
    /// (the controller fills it in; the planner has no clock).
    pub eta: Option<Duration>,
}

/// Why leadership moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferReason {
    /// The next step of a move removes the leader.
    LeaderRemoved,
    /// The leader is not `up` (draining, joining, dead).
    NotUp,
    /// It leads at least two groups more than the new leader.
    Balance,
}

/// One thing for the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Commit this state change of `node` to the member list.
    SetState {
        node: NodeId,
        from: MemberState,
        to: MemberState,
    },
    /// Propose `change` to the group's leader (a step of `mv`).
    Propose {
        partition: PartitionId,
        leader: NodeId,
        change: ConfChange,
        mv: ReplicaMove,
        reason: Reason,
    },
    /// Ask the group's leader `from` to hand leadership to `to`.
    TransferLeader {
        partition: PartitionId,
        from: NodeId,
        to: NodeId,
        reason: TransferReason,
    },
}

/// What [`plan`] decided, and what it saw on the way (for operators).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In order: member state changes, moves (by priority), leader transfers.
    pub actions: Vec<Action>,
    /// Every move wanted, started or waiting.
    pub moves: Vec<MoveProgress>,
    /// Partitions with fewer healthy voters than the desired ring gives them.
    pub under_replicated: Vec<PartitionId>,
    /// Partitions with no report, or a report without a leader.
    pub unreported: Vec<PartitionId>,
    /// Replica slots still to fill: over every reported group, the
    /// desired ring's replicas that are not voters yet. After a join it
    /// starts at the ring's movement (about rf/(n+1) of all slots) and
    /// falls to 0 as moves complete.
    pub misplaced: usize,
}

impl Plan {
    /// Moves wanted but held back by the throttle.
    pub fn waiting(&self) -> usize {
        self.moves
            .iter()
            .filter(|m| m.phase == Phase::Waiting)
            .count()
    }
}

/// The next steps from `cluster`. See the module documentation.
pub fn plan(cluster: &Cluster, cfg: &PlannerConfig) -> Result<Plan, RingError> {
    let ring = cluster.desired_ring()?;
    let mut out = Plan::default();
    member_transitions(cluster, cfg, &mut out);

    // Moves under way, and moves wanted (to start if the throttle allows).
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut wanted: Vec<(MoveProgress, Option<(&GroupReport, NodeId)>)> = Vec::new();
    let mut busy: BTreeSet<PartitionId> = BTreeSet::new();
    let desired_metadata = cluster
        .groups
        .get(&METADATA_GROUP)
        .map(|r| cluster.desired_metadata(&r.membership))
        .unwrap_or_default();
    for p in ring.partitions().chain([METADATA_GROUP]) {
        let Some(report) = cluster.groups.get(&p) else {
            if p != METADATA_GROUP {
                out.unreported.push(p);
            }
            continue;
        };
        let m = &report.membership;
        let desired = if p == METADATA_GROUP {
            &desired_metadata[..]
        } else {
            ring.replicas(p)
        };
        out.misplaced += desired.iter().filter(|d| !m.voters.contains(d)).count();
        let healthy = m.voters.iter().filter(|&&v| cluster.is_healthy(v)).count();
        if healthy < desired.len() {
            out.under_replicated.push(p);
        }
        if report.leader.is_none() {
            out.unreported.push(p);
        }
        let Some((mv, phase)) = wanted_move(cluster, m, desired, cfg.rebalance) else {
            continue;
        };
        let reason = match mv {
            ReplicaMove::Remove { from } if m.is_learner(from) => Reason::Cleanup,
            _ => reason_of(cluster, mv, healthy < desired.len()),
        };
        if reason == Reason::Rebalance && !cfg.rebalance && phase == Phase::Waiting {
            continue;
        }
        busy.insert(p);
        if phase != Phase::Waiting {
            for n in touched(cluster, mv) {
                *load.entry(n).or_default() += 1;
            }
        }
        let catch_up = match (phase, mv) {
            (Phase::CatchingUp, ReplicaMove::Add { to } | ReplicaMove::Replace { to, .. }) => {
                report.learners.iter().find(|l| l.node == to).cloned()
            }
            _ => None,
        };
        let progress = MoveProgress {
            partition: p,
            mv,
            reason,
            phase,
            catch_up,
            eta: None,
        };
        wanted.push((progress, report.leader.map(|leader| (report, leader))));
    }

    // Moves under way continue (their room was counted above); new ones
    // start by priority while every node they touch has room.
    wanted.sort_by_key(|(m, _)| (m.reason, m.partition));
    let mut transfers_left = cfg.max_leader_transfers;
    let mut leaders: BTreeMap<PartitionId, NodeId> = cluster
        .groups
        .iter()
        .filter_map(|(&p, r)| Some((p, r.leader?)))
        .collect();
    for (progress, report) in &mut wanted {
        // A group without a leader can take no step (and holds no room).
        let Some((report, leader)) = *report else {
            continue;
        };
        if progress.phase == Phase::Waiting {
            let nodes = touched(cluster, progress.mv);
            let room = progress.reason == Reason::Cleanup
                || nodes
                    .iter()
                    .all(|n| load.get(n).copied().unwrap_or(0) < cfg.max_moves_per_node);
            if !room {
                continue;
            }
            if progress.reason != Reason::Cleanup {
                for n in nodes {
                    *load.entry(n).or_default() += 1;
                }
            }
            progress.phase = Phase::Starting;
        }
        match progress.mv.next_step(&report.membership) {
            Ok(MoveStep::Propose(change)) => {
                let removes_leader = matches!(&change, ConfChange::EnterJoint { remove, .. } if remove.contains(&leader));
                let successor = removes_leader
                    .then(|| successor(cluster, &report.membership, leader, &change))
                    .flatten();
                match successor {
                    Some(to) if transfers_left > 0 => {
                        transfers_left -= 1;
                        leaders.insert(progress.partition, to);
                        out.actions.push(Action::TransferLeader {
                            partition: progress.partition,
                            from: leader,
                            to,
                            reason: TransferReason::LeaderRemoved,
                        });
                    }
                    Some(_) => {}
                    None => out.actions.push(Action::Propose {
                        partition: progress.partition,
                        leader,
                        change,
                        mv: progress.mv,
                        reason: progress.reason,
                    }),
                }
            }
            Ok(MoveStep::WaitJoint | MoveStep::Done) => {}
            // `wanted_move` only builds moves possible from this
            // configuration; one that is not is a planner bug.
            Err(e) => debug_assert!(false, "impossible move {:?}: {e}", progress.mv),
        }
    }
    out.moves = wanted.into_iter().map(|(m, _)| m).collect();
    out.moves.sort_by_key(|m| m.partition);

    balance_leaders(cluster, &busy, &mut leaders, transfers_left, &mut out);
    Ok(out)
}

/// Member state changes due now.
///
/// A member is marked dead only while the controller hears from a majority
/// of the members that are not dead or removed (itself included; a member
/// heard by a node whose report it has counts as heard). Silence
/// is evidence only from an observer that hears the rest: a controller cut
/// off with a minority, or one that was itself stopped (a long GC or VM
/// pause, a clock that jumped) and has heard nothing since it went on,
/// would otherwise take everyone it cannot hear for dead at once.
fn member_transitions(cluster: &Cluster, cfg: &PlannerConfig, out: &mut Plan) {
    // Every partition, by id: the metadata group's report is no
    // partition's (counting reports let it stand in for a partition whose
    // leader had not reported, and a draining member was removed while that
    // partition still counted on it: madsim churn seed 60).
    let all_reported =
        (0..cluster.ring.partition_count).all(|p| cluster.groups.contains_key(&PartitionId(p)));
    let counted: Vec<NodeId> = cluster
        .members
        .iter()
        .filter(|(_, s)| s.is_live())
        .map(|(&id, _)| id)
        .collect();
    let heard = counted
        .iter()
        .filter(|id| !cluster.down_for.contains_key(id))
        .count();
    let hears_a_majority = heard * 2 > counted.len();
    for (&node, &state) in &cluster.members {
        let down = cluster.down_for.get(&node);
        let to = match state {
            MemberState::Joining if down.is_none() => MemberState::Up,
            // A member that registered and was never heard from again (or
            // died before it came up) dies like one that was up: otherwise
            // it stays `joining` for ever (madsim churn seed 721).
            MemberState::Joining | MemberState::Up
                if hears_a_majority && down.is_some_and(|d| *d >= cfg.dead_after) =>
            {
                MemberState::Dead
            }
            MemberState::Draining | MemberState::Dead
                if all_reported
                    && cluster
                        .groups
                        .values()
                        .all(|g| !g.membership.contains(node)) =>
            {
                MemberState::Removed
            }
            _ => continue,
        };
        out.actions.push(Action::SetState {
            node,
            from: state,
            to,
        });
    }
}

/// The move a group needs, if any, and where it is.
fn wanted_move(
    cluster: &Cluster,
    m: &Membership,
    desired: &[NodeId],
    rebalance: bool,
) -> Option<(ReplicaMove, Phase)> {
    let wants = |n: &NodeId| desired.contains(n);
    if m.is_joint() {
        let to = m.voters.iter().find(|v| !m.outgoing.contains(v)).copied();
        let from = m.outgoing.iter().find(|v| !m.voters.contains(v)).copied();
        let mv = match (to, from) {
            (Some(to), Some(from)) => ReplicaMove::Replace { from, to },
            (Some(to), None) => ReplicaMove::Add { to },
            (None, Some(from)) => ReplicaMove::Remove { from },
            (None, None) => return None,
        };
        return Some((mv, Phase::Joint));
    }
    let extra = removal_order(cluster, m.voters.iter().copied().filter(|v| !wants(v)));
    if let Some(&learner) = m.learners.first() {
        if !wants(&learner) {
            // Without rebalancing, a learner on an `up` member the ring does
            // not want is someone else's move (an operator's): left alone.
            let ours = rebalance || cluster.state(learner) != Some(MemberState::Up);
            return ours.then_some((ReplicaMove::Remove { from: learner }, Phase::Waiting));
        }
        let mv = match extra.first() {
            Some(&from) => ReplicaMove::Replace { from, to: learner },
            None => ReplicaMove::Add { to: learner },
        };
        return Some((mv, Phase::CatchingUp));
    }
    let to = desired
        .iter()
        .copied()
        .find(|&n| !m.is_voter(n) && cluster.is_available(n));
    let mv = match (to, extra.first().copied()) {
        (Some(to), Some(from)) => ReplicaMove::Replace { from, to },
        (Some(to), None) => ReplicaMove::Add { to },
        // Shrink only a group larger than the ring wants: otherwise the
        // voter waits for a live replacement (make before break).
        (None, Some(from)) if m.voters.len() > desired.len() => ReplicaMove::Remove { from },
        _ => return None,
    };
    Some((mv, Phase::Waiting))
}

/// Voters to remove, the most urgent first: gone or dead members, then
/// draining ones, then members held down, then the rest; by id within each.
fn removal_order(cluster: &Cluster, voters: impl Iterator<Item = NodeId>) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = voters.collect();
    v.sort_by_key(|&n| {
        let rank = match cluster.state(n) {
            None | Some(MemberState::Removed | MemberState::Dead) => 0,
            Some(MemberState::Draining) => 1,
            Some(_) if cluster.down_for.contains_key(&n) => 2,
            Some(_) => 3,
        };
        (rank, n)
    });
    v
}

fn reason_of(cluster: &Cluster, mv: ReplicaMove, under_replicated: bool) -> Reason {
    match mv {
        _ if under_replicated => Reason::UnderReplicated,
        ReplicaMove::Replace { from, .. } | ReplicaMove::Remove { from }
            if !cluster.state(from).is_some_and(MemberState::is_placed) =>
        {
            Reason::Leaving
        }
        _ => Reason::Rebalance,
    }
}

/// The live nodes a move touches (for the throttle).
fn touched(cluster: &Cluster, mv: ReplicaMove) -> Vec<NodeId> {
    let nodes: &[NodeId] = match &mv {
        ReplicaMove::Replace { from, to } => &[*from, *to],
        ReplicaMove::Add { to } => &[*to],
        ReplicaMove::Remove { from } => &[*from],
    };
    nodes
        .iter()
        .copied()
        .filter(|&n| cluster.state(n).is_some_and(MemberState::is_live))
        .collect()
}

/// The voter to hand leadership to before `change` removes `leader`: an
/// available voter of the new configuration, the lowest id.
fn successor(
    cluster: &Cluster,
    m: &Membership,
    leader: NodeId,
    change: &ConfChange,
) -> Option<NodeId> {
    let ConfChange::EnterJoint { remove, .. } = change else {
        return None;
    };
    m.voters
        .iter()
        .copied()
        .find(|&v| v != leader && !remove.contains(&v) && cluster.is_available(v))
}

/// Leader transfers: off members that are not `up`, then for balance.
fn balance_leaders(
    cluster: &Cluster,
    busy: &BTreeSet<PartitionId>,
    leaders: &mut BTreeMap<PartitionId, NodeId>,
    mut transfers_left: usize,
    out: &mut Plan,
) {
    let candidates = |p: PartitionId, except: NodeId| -> Vec<NodeId> {
        cluster.groups.get(&p).map_or_else(Vec::new, |g| {
            if g.membership.is_joint() {
                return Vec::new();
            }
            g.membership
                .voters
                .iter()
                .copied()
                .filter(|&v| v != except && cluster.is_available(v))
                .collect()
        })
    };
    let mut count: BTreeMap<NodeId, usize> = cluster
        .members
        .keys()
        .copied()
        .filter(|&n| cluster.is_available(n))
        .map(|n| (n, 0))
        .collect();
    // Partitions' leaderships are what is balanced (the metadata group's
    // is the controller, and stays put while its member is up).
    for (_, l) in leaders.iter().filter(|(p, _)| **p != METADATA_GROUP) {
        if let Some(c) = count.get_mut(l) {
            *c += 1;
        }
    }
    let mut transfer = |p: PartitionId,
                        from: NodeId,
                        to: NodeId,
                        reason,
                        count: &mut BTreeMap<NodeId, usize>,
                        leaders: &mut BTreeMap<PartitionId, NodeId>| {
        if let Some(c) = count.get_mut(&from) {
            *c -= 1;
        }
        *count.entry(to).or_default() += 1;
        leaders.insert(p, to);
        out.actions.push(Action::TransferLeader {
            partition: p,
            from,
            to,
            reason,
        });
    };

    // Leaders on members that are not up (draining, mostly) go first, to
    // the least loaded available voter.
    let stranded: Vec<(PartitionId, NodeId)> = leaders
        .iter()
        .filter(|&(p, &l)| {
            !busy.contains(p)
                && (cluster.state(l) != Some(MemberState::Up) || cluster.leaving.contains(&l))
        })
        .map(|(&p, &l)| (p, l))
        .collect();
    for (p, from) in stranded {
        if transfers_left == 0 {
            return;
        }
        let to = candidates(p, from)
            .into_iter()
            .min_by_key(|n| (count.get(n).copied().unwrap_or(0), *n));
        if let Some(to) = to {
            transfers_left -= 1;
            transfer(p, from, to, TransferReason::NotUp, &mut count, leaders);
        }
    }

    // Then balance: the transfer with the largest gap, while one of at
    // least two remains.
    while transfers_left > 0 {
        let mut best: Option<(usize, PartitionId, NodeId, NodeId)> = None;
        for (&p, &from) in leaders.iter() {
            let Some(&have) = count.get(&from) else {
                continue;
            };
            // The metadata group's leader is the controller: it moves
            // only off a member that is not up (above), never for balance.
            if busy.contains(&p) || p == METADATA_GROUP {
                continue;
            }
            for to in candidates(p, from) {
                let gap = have.saturating_sub(count.get(&to).copied().unwrap_or(0));
                if gap >= 2 && best.is_none_or(|(g, ..)| gap > g) {
                    best = Some((gap, p, from, to));
                }
            }
        }
        let Some((_, p, from, to)) = best else {
            return;
        };
        transfers_left -= 1;
        transfer(p, from, to, TransferReason::Balance, &mut count, leaders);
    }
}

/// How many voters the metadata group wants among `members` members: 5,
/// 3 or 1, an odd number (an even one adds no fault tolerance), at most 5
/// (more would slow every member-list change for nothing).
pub fn metadata_group_size(members: usize) -> usize {
    match members {
        0..=2 => 1,
        3..=4 => 3,
        _ => 5,
    }
}

/// Why a drain is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainRefused {
    #[error("{0} is not a member of the cluster")]
    NotAMember(NodeId),
    #[error("{node} is {state}; only an up or joining member can be drained")]
    NotUp { node: NodeId, state: MemberState },
    #[error(
        "draining {node} would leave partition {partition} with at most {possible} possible \
         replica(s), fewer than a quorum ({quorum}) of its {voters} voters: bring another node \
         up (or replace a dead one) first"
    )]
    NoQuorum {
        node: NodeId,
        partition: PartitionId,
        possible: usize,
        voters: usize,
        quorum: usize,
    },
}

/// Whether `node` may be drained: refused when some partition could not
/// keep a quorum of its current voters on the members that would remain
/// available. Draining a member already draining is allowed (idempotent).
pub fn check_drain(cluster: &Cluster, node: NodeId) -> Result<(), DrainRefused> {
    match cluster.state(node) {
        None => return Err(DrainRefused::NotAMember(node)),
        Some(MemberState::Draining) => return Ok(()),
        Some(MemberState::Up | MemberState::Joining) => {}
        Some(state) => return Err(DrainRefused::NotUp { node, state }),
    }
    let remaining = cluster
        .members
        .keys()
        .filter(|&&n| n != node && cluster.is_available(n))
        .count();
    for (&partition, g) in &cluster.groups {
        let possible = match partition {
            METADATA_GROUP => metadata_group_size(remaining).min(remaining),
            _ => remaining.min(cluster.ring.replication_factor),
        };
        let voters = g.membership.voters.len();
        let quorum = voters / 2 + 1;
        if g.membership.contains(node) && possible < quorum {
            return Err(DrainRefused::NoQuorum {
                node,
                partition,
                possible,
                voters,
                quorum,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
