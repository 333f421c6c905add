//! A group's configuration (who votes, who only learns) and the quorums it
//! defines; the changes a leader may make to it.
//!
//! **Voters and learners.** Voters elect leaders and count toward commit;
//! learners receive the log and snapshots like any follower but never count
//! toward a quorum and never campaign. A new replica joins as a learner, is
//! caught up, and only then becomes a voter (make before break).
//!
//! **Joint consensus** (Raft dissertation §4.3, etcd-io/raft `confchange/`).
//! A change of the voter set goes through two configuration entries: the
//! first moves the group from C_old to C_old,new, the joint configuration,
//! in which every decision (commit, election, CheckQuorum, read and lease
//! confirmation) needs a majority of C_old *and* a majority of C_new; the
//! second ([`ConfChange::LeaveJoint`]) moves it to C_new. No decision can
//! be taken by C_old alone while C_new acts alone, whatever the change: one
//! voter added or removed, or one replaced by another in a single step.
//! Learner changes alter no quorum and take effect in one step.
//!
//! This module is pure: values, their validation, and quorum arithmetic.
//! When a configuration takes effect and who proposes what is `Raft`'s
//! business (see the module doc of [`crate::raft`]).

use std::fmt;

use crate::types::NodeId;

/// A group's configuration. Each list is sorted and distinct; no node is in
/// both `learners` and a voter list; `voters` is never empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The voters: C_new while joint, else the only voter set.
    pub voters: Vec<NodeId>,
    /// C_old while a joint change is under way; empty otherwise.
    pub outgoing: Vec<NodeId>,
    /// Non-voting replicas.
    pub learners: Vec<NodeId>,
}

/// One step of a configuration change, as a leader proposes it (an entry of
/// kind [`EntryKind::ConfChange`](super::EntryKind::ConfChange)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// A new replica that receives the log but does not vote.
    AddLearner(NodeId),
    /// A learner leaves the group.
    RemoveLearner(NodeId),
    /// Enter the joint configuration C_old,new, where C_new is C_old with
    /// `promote` (learners now) added and `remove` (voters now) taken out.
    /// Promoting a learner, removing a voter and replacing one voter by
    /// another are all this change. A removed voter leaves the group.
    EnterJoint {
        promote: Vec<NodeId>,
        remove: Vec<NodeId>,
    },
    /// Leave the joint configuration for C_new.
    LeaveJoint,
}

/// Why a change cannot be made to a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("{0} is already a member of the group")]
    AlreadyMember(NodeId),
    #[error("{0} is not a learner of the group")]
    NotALearner(NodeId),
    #[error("{0} is not a voter of the group")]
    NotAVoter(NodeId),
    #[error("the change promotes and removes no voter")]
    Empty,
    #[error("the change would leave the group without voters")]
    NoVotersLeft,
    #[error("the group is in a joint configuration; it must leave it first")]
    Joint,
    #[error("the group is not in a joint configuration")]
    NotJoint,
}

impl Membership {
    /// A configuration of voters only.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: sorted(voters),
            outgoing: Vec::new(),
            learners: Vec::new(),
        }
    }

    /// Whether a joint change is under way.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` votes: in C_new or, while joint, in C_old.
    /// A configuration from lists in any order (a report's, e.g. a node's
    /// view lists voters in ring order); the lookups need them sorted.
    pub fn from_parts(
        voters: impl IntoIterator<Item = NodeId>,
        outgoing: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        Membership {
            voters: sorted(voters),
            outgoing: sorted(outgoing),
            learners: sorted(learners),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok() || self.outgoing.binary_search(&id).is_ok()
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    /// Whether `id` is in the group at all (a voter of either half, or a learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters of both halves and learners, sorted and distinct.
    pub fn replicas(&self) -> Vec<NodeId> {
        sorted(
            self.voters
                .iter()
                .chain(&self.outgoing)
                .chain(&self.learners)
                .copied(),
        )
    }

    /// Whether `id` is the only voter (it decides everything alone).
    pub fn is_sole_voter(&self, id: NodeId) -> bool {
        !self.is_joint() && self.voters == [id]
    }

    /// The highest value a quorum has reached, given each voter's value: the
    /// commit index (values: match indexes) or the confirmed heartbeat round
    /// (values: acknowledged rounds). While joint, the lower of the two
    /// halves' answers: both majorities hold it.
    pub fn quorum_value(&self, value: impl Fn(NodeId) -> u64) -> u64 {
        let new = majority_value(&self.voters, &value);
        if self.is_joint() {
            new.min(majority_value(&self.outgoing, &value))
        } else {
            new
        }
    }

    /// An election's result so far, given each voter's answer (`None`: none
    /// yet). Won needs a majority of each half; lost, a half that can no
    /// longer reach one.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let new = majority_vote(&self.voters, &vote);
        let old = if self.is_joint() {
            majority_vote(&self.outgoing, &vote)
        } else {
            VoteResult::Won
        };
        match (new, old) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Whether the voters for which `yes` holds form a quorum.
    pub fn has_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        self.vote_result(|id| Some(yes(id))) == VoteResult::Won
    }

    /// The configuration after `change`, or why it cannot be made here.
    pub fn apply(&self, change: &ConfChange) -> Result<Membership, ConfChangeError> {
        let mut next = self.clone();
        match change {
            ConfChange::AddLearner(id) => {
                if self.contains(*id) {
                    return Err(ConfChangeError::AlreadyMember(*id));
                }
                next.learners = sorted(self.learners.iter().copied().chain([*id]));
            }
            ConfChange::RemoveLearner(id) => {
                if !self.is_learner(*id) {
                    return Err(ConfChangeError::NotALearner(*id));
                }
                next.learners.retain(|l| l != id);
            }
            ConfChange::EnterJoint { promote, remove } => {
                if self.is_joint() {
                    return Err(ConfChangeError::Joint);
                }
                if promote.is_empty() && remove.is_empty() {
                    return Err(ConfChangeError::Empty);
                }
                if let Some(&id) = promote.iter().find(|&&id| !self.is_learner(id)) {
                    return Err(if self.is_voter(id) {
                        ConfChangeError::AlreadyMember(id)
                    } else {
                        ConfChangeError::NotALearner(id)
                    });
                }
                if let Some(&id) = remove.iter().find(|&&id| !self.is_voter(id)) {
                    return Err(ConfChangeError::NotAVoter(id));
                }
                next.outgoing = self.voters.clone();
                next.voters = sorted(
                    self.voters
                        .iter()
                        .chain(promote)
                        .copied()
                        .filter(|id| !remove.contains(id)),
                );
                next.learners.retain(|id| !promote.contains(id));
                if next.voters.is_empty() {
                    return Err(ConfChangeError::NoVotersLeft);
                }
            }
            ConfChange::LeaveJoint => {
                if !self.is_joint() {
                    return Err(ConfChangeError::NotJoint);
                }
                next.outgoing.clear();
            }
        }
        Ok(next)
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters=({})", id_list(&self.voters))?;
        if self.is_joint() {
            write!(f, "&&({})", id_list(&self.outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners=({})", id_list(&self.learners))?;
        }
        Ok(())
    }
}

impl fmt::Display for ConfChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfChange::AddLearner(id) => write!(f, "add-learner {id}"),
            ConfChange::RemoveLearner(id) => write!(f, "remove-learner {id}"),
            ConfChange::EnterJoint { promote, remove } => {
                write!(
                    f,
                    "enter-joint promote=({}) remove=({})",
                    id_list(promote),
                    id_list(remove)
                )
            }
            ConfChange::LeaveJoint => write!(f, "leave-joint"),
        }
    }
}

/// An election's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// "n1,n2,n3".
fn id_list(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn sorted(ids: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = ids.into_iter().collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The value a majority of `voters` have reached: the quorum-th largest.
fn majority_value(voters: &[NodeId], value: &impl Fn(NodeId) -> u64) -> u64 {
    let mut values: Vec<u64> = voters.iter().map(|&id| value(id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    // An empty voter set has no quorum (it never reaches anything).
    values.get(voters.len() / 2).copied().unwrap_or(0)
}

fn majority_vote(voters: &[NodeId], vote: &impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    let quorum = voters.len() / 2 + 1;
    let (mut yes, mut missing) = (0, 0);
    for &id in voters {
        match vote(id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    if yes >= quorum {
        VoteResult::Won
    } else if yes + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> Vec<NodeId> {
        list.iter().copied().map(NodeId).collect()
    }

    fn config(voters: &[u64], outgoing: &[u64], learners: &[u64]) -> Membership {
        Membership {
            voters: ids(voters),
            outgoing: ids(outgoing),
            learners: ids(learners),
        }
    }

    #[test]
    fn a_majority_value_is_the_quorum_th_largest() {
        let m = Membership::new(ids(&[1, 2, 3, 4, 5]));
        let matched = |id: NodeId| [0, 9, 7, 5, 3, 1][id.0 as usize];
        assert_eq!(m.quorum_value(matched), 5);
        let m = Membership::new(ids(&[1, 2, 3, 4]));
        assert_eq!(m.quorum_value(matched), 5, "3 of 4 hold 5");
        assert_eq!(Membership::new(ids(&[4])).quorum_value(matched), 3);
    }

    #[test]
    fn a_joint_quorum_needs_both_majorities() {
        // C_old = {1,2,3}, C_new = {1,2,4}: replacing 3 by 4.
        let m = config(&[1, 2, 4], &[1, 2, 3], &[]);
        // 1 and 3 hold 10: a majority of C_old, not of C_new.
        let matched = |id: NodeId| if id.0 == 1 || id.0 == 3 { 10 } else { 2 };
        assert_eq!(m.quorum_value(matched), 2);
        // 1 and 4 hold 10: a majority of C_new only.
        let matched = |id: NodeId| if id.0 == 1 || id.0 == 4 { 10 } else { 2 };
        assert_eq!(m.quorum_value(matched), 2);
        // 1 and 2 are in both.
        let matched = |id: NodeId| if id.0 <= 2 { 10 } else { 2 };
        assert_eq!(m.quorum_value(matched), 10);
    }

    #[test]
    fn a_joint_election_is_won_by_both_majorities_and_lost_by_either() {
        let m = config(&[1, 2, 4], &[1, 2, 3], &[]);
        let votes = |yes: &'static [u64], no: &'static [u64]| {
            move |id: NodeId| {
                if yes.contains(&id.0) {
                    Some(true)
                } else if no.contains(&id.0) {
                    Some(false)
                } else {
                    None
                }
            }
        };
        assert_eq!(m.vote_result(votes(&[1, 3], &[])), VoteResult::Pending);
        assert_eq!(m.vote_result(votes(&[1, 3], &[2, 4])), VoteResult::Lost);
        assert_eq!(m.vote_result(votes(&[1, 2], &[3, 4])), VoteResult::Won);
        assert_eq!(m.vote_result(votes(&[1, 4], &[2, 3])), VoteResult::Lost);
        // Learners' answers count for nothing.
        let m = config(&[1, 2, 3], &[], &[4, 5]);
        assert_eq!(m.vote_result(votes(&[1, 4, 5], &[])), VoteResult::Pending);
    }

    /// An election is lost only once a majority can no longer say yes: with
    /// one yes, one no and one voter yet to answer, it is still open (found
    /// by mutation testing: `yes + missing` as `yes * missing` gave up early).
    #[test]
    fn an_election_stays_open_while_a_majority_can_still_answer() {
        let m = Membership::new(ids(&[1, 2, 3]));
        let vote = |id: NodeId| match id.0 {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        };
        assert_eq!(m.vote_result(vote), VoteResult::Pending);
    }

    #[test]
    fn replacing_a_voter_goes_through_a_joint_configuration() {
        let m = Membership::new(ids(&[1, 2, 3]));
        let m = m
            .apply(&ConfChange::AddLearner(NodeId(4)))
            .expect("add learner");
        assert_eq!(m, config(&[1, 2, 3], &[], &[4]));
        assert!(m.contains(NodeId(4)) && !m.is_voter(NodeId(4)));
        let replace = ConfChange::EnterJoint {
            promote: ids(&[4]),
            remove: ids(&[3]),
        };
        let joint = m.apply(&replace).expect("enter joint");
        assert_eq!(joint, config(&[1, 2, 4], &[1, 2, 3], &[]));
        assert!(
            joint.is_voter(NodeId(3)),
            "3 votes in C_old until the group leaves"
        );
        assert_eq!(joint.to_string(), "voters=(n1,n2,n4)&&(n1,n2,n3)");
        let done = joint.apply(&ConfChange::LeaveJoint).expect("leave");
        assert_eq!(done, Membership::new(ids(&[1, 2, 4])));
        assert!(!done.contains(NodeId(3)));
    }

    #[test]
    fn invalid_changes_are_refused_with_a_reason() {
        let m = config(&[1, 2, 3], &[], &[4]);
        let cases = [
            (
                ConfChange::AddLearner(NodeId(2)),
                ConfChangeError::AlreadyMember(NodeId(2)),
            ),
            (
                ConfChange::AddLearner(NodeId(4)),
                ConfChangeError::AlreadyMember(NodeId(4)),
            ),
            (
                ConfChange::RemoveLearner(NodeId(1)),
                ConfChangeError::NotALearner(NodeId(1)),
            ),
            (
                ConfChange::EnterJoint {
                    promote: ids(&[5]),
                    remove: vec![],
                },
                ConfChangeError::NotALearner(NodeId(5)),
            ),
            (
                ConfChange::EnterJoint {
                    promote: ids(&[2]),
                    remove: vec![],
                },
                ConfChangeError::AlreadyMember(NodeId(2)),
            ),
            (
                ConfChange::EnterJoint {
                    promote: vec![],
                    remove: ids(&[4]),
                },
                ConfChangeError::NotAVoter(NodeId(4)),
            ),
            (
                ConfChange::EnterJoint {
                    promote: vec![],
                    remove: vec![],
                },
                ConfChangeError::Empty,
            ),
            (
                ConfChange::EnterJoint {
                    promote: vec![],
                    remove: ids(&[1, 2, 3]),
                },
                ConfChangeError::NoVotersLeft,
            ),
            (ConfChange::LeaveJoint, ConfChangeError::NotJoint),
        ];
        for (change, error) in cases {
            assert_eq!(m.apply(&change), Err(error), "{change}");
        }
        let joint = config(&[1, 2], &[1, 2, 3], &[4]);
        let promote = ConfChange::EnterJoint {
            promote: ids(&[4]),
            remove: vec![],
        };
        assert_eq!(joint.apply(&promote), Err(ConfChangeError::Joint));
    }
}
