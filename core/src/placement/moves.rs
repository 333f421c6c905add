//! The steps of **one replica move**, make before break, as a pure function
//! of the group's configuration ([`ReplicaMove::next_step`]).
//!
//! Whoever drives a move (the operator's `ringkv admin move-replica`, the
//! simulation's nemesis, the [planner](super::planner)'s driver) asks its
//! leader for the group's configuration, proposes the step this returns, and
//! asks again, until it says [`MoveStep::Done`]. Because the step follows
//! from the configuration alone, a driver that stops half-way (a crash, a
//! timeout, a new leader that refused a step) resumes by asking again:
//! steps already taken are skipped.
//!
//! - Replace `from` by `to`: add `to` as a learner, then, once it has caught
//!   up (its leader refuses the promotion before), promote it and remove
//!   `from` in one joint change; the leader leaves the joint configuration
//!   by itself.
//! - Add `to`: as a learner, then promoted alone.
//! - Remove `from`: one joint change that drops it (a learner is simply
//!   removed).

use crate::raft::{ConfChange, Membership};
use crate::types::NodeId;

/// One replica move of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaMove {
    /// `from`'s replica moves to `to` (the group keeps its size).
    Replace { from: NodeId, to: NodeId },
    /// A replica is added on `to` (the group grows by one voter).
    Add { to: NodeId },
    /// `from`'s replica goes (the group shrinks by one).
    Remove { from: NodeId },
}

/// What a move's driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// Propose this change to the group's leader.
    Propose(ConfChange),
    /// A joint change is under way; its leader leaves it by itself. Ask
    /// again later.
    WaitJoint,
    /// The configuration is the move's goal.
    Done,
}

/// A move that cannot be made from the group's configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("the replica would move from {0} to itself")]
    SameNode(NodeId),
    #[error("{node} is not a voter of the group (voters: {voters})")]
    NotAVoter { node: NodeId, voters: String },
    #[error("{0} is already a voter of the group")]
    AlreadyAVoter(NodeId),
    #[error("the group's only voter, {0}, cannot be removed")]
    LastVoter(NodeId),
}

impl ReplicaMove {
    /// The next step toward this move's goal from configuration `m` (as
    /// the group's leader has it). See the module documentation.
    pub fn next_step(&self, m: &Membership) -> Result<MoveStep, MoveError> {
        if m.is_joint() {
            return Ok(MoveStep::WaitJoint);
        }
        let voters = || {
            m.voters
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match *self {
            ReplicaMove::Replace { from, to } => {
                if from == to {
                    return Err(MoveError::SameNode(from));
                }
                if m.is_voter(to) && !m.is_voter(from) {
                    return Ok(MoveStep::Done);
                }
                if m.is_voter(to) {
                    return Err(MoveError::AlreadyAVoter(to));
                }
                if !m.is_voter(from) {
                    return Err(MoveError::NotAVoter {
                        node: from,
                        voters: voters(),
                    });
                }
                Ok(MoveStep::Propose(if m.is_learner(to) {
                    ConfChange::EnterJoint {
                        promote: vec![to],
                        remove: vec![from],
                    }
                } else {
                    ConfChange::AddLearner(to)
                }))
            }
            ReplicaMove::Add { to } => Ok(if m.is_voter(to) {
                MoveStep::Done
            } else if m.is_learner(to) {
                MoveStep::Propose(ConfChange::EnterJoint {
                    promote: vec![to],
                    remove: Vec::new(),
                })
            } else {
                MoveStep::Propose(ConfChange::AddLearner(to))
            }),
            ReplicaMove::Remove { from } => {
                if m.is_learner(from) {
                    return Ok(MoveStep::Propose(ConfChange::RemoveLearner(from)));
                }
                if !m.is_voter(from) {
                    return Ok(MoveStep::Done);
                }
                if m.voters.len() == 1 {
                    return Err(MoveError::LastVoter(from));
                }
                Ok(MoveStep::Propose(ConfChange::EnterJoint {
                    promote: Vec::new(),
                    remove: vec![from],
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    fn conf(voters: &[u64], learners: &[u64], outgoing: &[u64]) -> Membership {
        Membership {
            voters: voters.iter().copied().map(NodeId).collect(),
            outgoing: outgoing.iter().copied().map(NodeId).collect(),
            learners: learners.iter().copied().map(NodeId).collect(),
        }
    }

    /// Walks a move to its end, applying each step as the group would.
    fn walk(mv: ReplicaMove, start: Membership) -> Vec<String> {
        let mut m = start;
        let mut steps = Vec::new();
        for _ in 0..5 {
            match mv.next_step(&m).expect("a possible move") {
                MoveStep::Done => return steps,
                MoveStep::WaitJoint => {
                    steps.push("wait".to_owned());
                    m = m.apply(&ConfChange::LeaveJoint).expect("leave");
                }
                MoveStep::Propose(c) => {
                    steps.push(c.to_string());
                    m = m.apply(&c).expect("the step applies");
                }
            }
        }
        panic!("the move did not end: {steps:?}");
    }

    #[test]
    fn a_replace_adds_a_learner_then_swaps_in_one_joint_change() {
        let steps = walk(
            ReplicaMove::Replace {
                from: n(3),
                to: n(4),
            },
            conf(&[1, 2, 3], &[], &[]),
        );
        assert_eq!(
            steps,
            [
                "add-learner n4",
                "enter-joint promote=(n4) remove=(n3)",
                "wait"
            ]
        );
    }

    #[test]
    fn an_interrupted_move_resumes_where_the_group_is() {
        let mv = ReplicaMove::Replace {
            from: n(3),
            to: n(4),
        };
        // The learner was added before the driver stopped.
        assert_eq!(
            mv.next_step(&conf(&[1, 2, 3], &[4], &[])),
            Ok(MoveStep::Propose(ConfChange::EnterJoint {
                promote: vec![n(4)],
                remove: vec![n(3)],
            }))
        );
        // The joint change is under way, or done.
        assert_eq!(
            mv.next_step(&conf(&[1, 2, 4], &[], &[1, 2, 3])),
            Ok(MoveStep::WaitJoint)
        );
        assert_eq!(
            mv.next_step(&conf(&[1, 2, 4], &[], &[])),
            Ok(MoveStep::Done)
        );
    }

    #[test]
    fn add_and_remove_change_the_group_size() {
        assert_eq!(
            walk(ReplicaMove::Add { to: n(3) }, conf(&[1, 2], &[], &[])),
            [
                "add-learner n3",
                "enter-joint promote=(n3) remove=()",
                "wait"
            ]
        );
        assert_eq!(
            walk(
                ReplicaMove::Remove { from: n(2) },
                conf(&[1, 2, 3], &[], &[])
            ),
            ["enter-joint promote=() remove=(n2)", "wait"]
        );
        assert_eq!(
            walk(
                ReplicaMove::Remove { from: n(4) },
                conf(&[1, 2, 3], &[4], &[])
            ),
            ["remove-learner n4"]
        );
    }

    #[test]
    fn impossible_moves_say_why() {
        let m = conf(&[1, 2, 3], &[], &[]);
        let replace = |from, to| ReplicaMove::Replace {
            from: n(from),
            to: n(to),
        };
        assert_eq!(replace(2, 2).next_step(&m), Err(MoveError::SameNode(n(2))));
        assert_eq!(
            replace(5, 4).next_step(&m),
            Err(MoveError::NotAVoter {
                node: n(5),
                voters: "n1,n2,n3".into()
            })
        );
        assert_eq!(
            replace(1, 2).next_step(&m),
            Err(MoveError::AlreadyAVoter(n(2)))
        );
        assert_eq!(
            ReplicaMove::Remove { from: n(1) }.next_step(&conf(&[1], &[], &[])),
            Err(MoveError::LastVoter(n(1)))
        );
    }
}
