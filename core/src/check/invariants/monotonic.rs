//! What only grows (Raft §5.3, §5.5; the `tocommit out of range` and
//! `applied out of order` panics of etcd-io/raft): while a node runs, its
//! commit index never decreases, it applies each index exactly once, in
//! order, never beyond the commit index it reported, with terms that never
//! decrease; a snapshot never takes its state machine back; and the terms
//! it wins only grow, across restarts too (a term is made durable before
//! the votes that win it are asked for).
//!
//! A restart ([`Observed::Started`]) resets what lived in memory: commit and
//! applied start again from what the node recovered.

use std::collections::BTreeMap;

use crate::node::{Observation, Observed};
use crate::types::{NodeId, PartitionId};

#[derive(Clone, Copy, Debug, Default)]
struct Replica {
    commit: u64,
    applied: u64,
    applied_term: u64,
    /// The last term it won; survives restarts.
    won: u64,
}

#[derive(Debug, Default)]
pub struct Monotonic {
    replicas: BTreeMap<(NodeId, PartitionId), Replica>,
}

impl Monotonic {
    pub fn observe(&mut self, o: &Observation) -> Option<String> {
        let r = self.replicas.entry((o.node, o.partition)).or_default();
        match o.what {
            Observed::Started { applied, commit } => {
                *r = Replica {
                    commit,
                    applied,
                    applied_term: 0,
                    won: r.won,
                };
                None
            }
            // Nothing of the replica is left; a replica added again starts
            // with `Started`.
            Observed::Destroyed => None,
            Observed::Committed { commit, .. } => {
                let was = std::mem::replace(&mut r.commit, commit);
                (commit < was).then(|| format!("commit went back from {was}"))
            }
            Observed::Applied { index, term, .. } => {
                let r0 = std::mem::replace(
                    r,
                    Replica {
                        applied: index,
                        applied_term: term,
                        ..*r
                    },
                );
                if index != r0.applied + 1 {
                    Some(format!("the last entry it applied was {}", r0.applied))
                } else if index > r0.commit {
                    Some(format!("beyond its commit index {}", r0.commit))
                } else if term < r0.applied_term {
                    Some(format!("after an entry of term {}", r0.applied_term))
                } else {
                    None
                }
            }
            Observed::SnapshotRestored { index, term } => {
                let r0 = std::mem::replace(
                    r,
                    Replica {
                        applied: index,
                        applied_term: term,
                        commit: r.commit.max(index),
                        ..*r
                    },
                );
                (index < r0.applied)
                    .then(|| format!("it had applied up to {}: state went back", r0.applied))
            }
            Observed::BecameLeader { term, .. } => {
                let was = std::mem::replace(&mut r.won, term);
                (term <= was).then(|| format!("it had won term {was} already"))
            }
            Observed::RoundSent { .. } | Observed::LeaseRead { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::invariants::testkit::*;

    #[test]
    fn a_growing_node_passes() {
        let mut c = Monotonic::default();
        let ok = [
            started(1, 0, 0),
            leader(1, 1, 0, 0),
            committed(1, 2, 1),
            applied(1, 1, 1, 0),
            applied(1, 1, 2, 0),
            // Restart: memory starts again from the snapshot at 1.
            started(1, 1, 1),
            committed(1, 2, 1),
            applied(1, 1, 2, 0),
            restored(1, 2, 9),
            committed(1, 10, 1),
            applied(1, 2, 10, 0),
            leader(1, 3, 2, 10),
        ];
        for o in ok {
            assert_eq!(c.observe(&o), None, "{o}");
        }
    }

    fn after_start(bad: Observation) -> Option<String> {
        let mut c = Monotonic::default();
        for o in [started(1, 0, 0), leader(1, 2, 0, 0), committed(1, 3, 1)] {
            assert_eq!(c.observe(&o), None);
        }
        c.observe(&applied(1, 2, 1, 0));
        c.observe(&bad)
    }

    #[test]
    fn every_backward_step_is_caught() {
        let cases = [
            (committed(1, 2, 1), "commit went back from 3"),
            (applied(1, 2, 1, 0), "the last entry it applied was 1"),
            (applied(1, 2, 3, 0), "the last entry it applied was 1"),
            (applied(1, 1, 2, 0), "after an entry of term 2"),
            (restored(1, 1, 0), "it had applied up to 1: state went back"),
            (leader(1, 2, 0, 0), "it had won term 2 already"),
            (leader(1, 1, 0, 0), "it had won term 2 already"),
        ];
        for (bad, want) in cases {
            assert_eq!(after_start(bad).as_deref(), Some(want), "{bad}");
        }
    }

    #[test]
    fn applying_beyond_commit_is_caught() {
        let mut c = Monotonic::default();
        c.observe(&started(1, 0, 0));
        c.observe(&committed(1, 1, 1));
        assert_eq!(c.observe(&applied(1, 1, 1, 0)), None);
        assert_eq!(
            c.observe(&applied(1, 1, 2, 0)).as_deref(),
            Some("beyond its commit index 1")
        );
    }

    #[test]
    fn won_terms_grow_across_restarts() {
        let mut c = Monotonic::default();
        c.observe(&started(1, 0, 0));
        c.observe(&leader(1, 5, 0, 0));
        c.observe(&started(1, 0, 0));
        assert!(c.observe(&leader(1, 5, 0, 0)).is_some());
    }
}
