//! Raft's safety properties, judged on the stream of [`Observation`]s the
//! nodes emit (with [`NodeConfig::observe`](crate::node::NodeConfig::observe)):
//! what each replica applied, committed and won, in the order it did it.
//! Both simulators feed every observation of every node to one
//! [`Invariants`] as it happens; a violation names the observation that
//! broke the property and what it contradicts.
//!
//! One file per property (the `openraft` habit), each a small state machine
//! tested on hand-made bad streams:
//! - [`election_safety`]: at most one leader per partition and term;
//! - [`leader_completeness`]: a new leader's log reaches every entry
//!   committed in an earlier term (the term a replica reported the commit
//!   in, not the entry's own);
//! - [`log_matching`]: two replicas that applied an entry of the same index
//!   and term applied identical logs up to it;
//! - [`state_machine_safety`]: every replica applies the same command at
//!   the same index;
//! - [`monotonic`]: while a node runs, its commit index and leader terms
//!   only grow, and it applies each index once, in order, never beyond what
//!   it knows committed;
//! - [`lease`]: a leader serves lease reads only until a follower that
//!   acknowledged the round they rest on could vote again, and never after
//!   a leader of a later term was elected (judged on the harness's global
//!   time, so only through [`Invariants::observe_at`]).
//!
//! What the stream cannot show is not judged: an entry counts as committed
//! here once some replica applied it, so a committed entry nobody applied
//! yet escapes leader completeness until someone does.

pub mod election_safety;
pub mod leader_completeness;
pub mod lease;
pub mod log_matching;
pub mod monotonic;
pub mod state_machine_safety;

use std::fmt;
use std::time::Duration;

use crate::node::Observation;

/// A broken safety property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvariantViolation {
    /// The property: `"election_safety"`, `"log_matching"`, ...
    pub invariant: &'static str,
    /// The observation that broke it.
    pub observation: Observation,
    /// What it contradicts, for a human.
    pub explanation: String,
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}: {}",
            self.invariant, self.observation, self.explanation
        )
    }
}

/// Every property, fed one observation at a time.
#[derive(Debug, Default)]
pub struct Invariants {
    election_safety: election_safety::ElectionSafety,
    leader_completeness: leader_completeness::LeaderCompleteness,
    log_matching: log_matching::LogMatching,
    state_machine_safety: state_machine_safety::StateMachineSafety,
    monotonic: monotonic::Monotonic,
    lease: lease::LeaseSafety,
    observed: u64,
    violations: Vec<InvariantViolation>,
}

impl Invariants {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also judges lease reads: `bound` is how soon after receiving a
    /// heartbeat round a follower may vote again at the earliest (see
    /// [`lease`]); observations must then come through
    /// [`Invariants::observe_at`].
    pub fn with_lease_bound(bound: Duration) -> Self {
        Invariants {
            lease: lease::LeaseSafety::new(Some(bound)),
            ..Self::default()
        }
    }

    /// For a harness whose clocks may jump beyond the drift bound: leases
    /// are judged on the leader's own arithmetic only (see [`lease`]).
    pub fn clocks_may_jump(mut self) -> Self {
        self.lease.clocks_may_jump();
        self
    }

    /// [`Invariants::observe`], for a harness with a global clock: `at` is
    /// the observation's time on any fixed origin, which lease safety needs.
    pub fn observe_at(&mut self, o: &Observation, at: Duration) -> Vec<InvariantViolation> {
        let mut found = self.observe(o);
        if let Some(explanation) = self.lease.observe_at(o, at) {
            let v = InvariantViolation {
                invariant: "lease",
                observation: *o,
                explanation,
            };
            self.violations.push(v.clone());
            found.push(v);
        }
        found
    }

    /// Judges one observation against everything observed before it. The
    /// violations it finds are kept (see [`Invariants::violations`]) and
    /// returned.
    pub fn observe(&mut self, o: &Observation) -> Vec<InvariantViolation> {
        self.observed += 1;
        let found: Vec<InvariantViolation> = [
            ("election_safety", self.election_safety.observe(o)),
            ("leader_completeness", self.leader_completeness.observe(o)),
            ("log_matching", self.log_matching.observe(o)),
            ("state_machine_safety", self.state_machine_safety.observe(o)),
            ("monotonic", self.monotonic.observe(o)),
        ]
        .into_iter()
        .filter_map(|(invariant, explanation)| {
            explanation.map(|explanation| InvariantViolation {
                invariant,
                observation: *o,
                explanation,
            })
        })
        .collect();
        self.violations.extend(found.iter().cloned());
        found
    }

    /// Every violation found so far, in the order found.
    pub fn violations(&self) -> &[InvariantViolation] {
        &self.violations
    }

    /// Observations judged so far (a run that judged none checked nothing).
    pub fn observed(&self) -> u64 {
        self.observed
    }
}

/// Builders for hand-made observation streams in the tests of each file.
#[cfg(test)]
pub(crate) mod testkit {
    use crate::node::{Observation, Observed};
    use crate::types::{NodeId, PartitionId};

    pub(crate) fn at(node: u64, what: Observed) -> Observation {
        Observation {
            node: NodeId(node),
            partition: PartitionId(0),
            what,
        }
    }
    pub(crate) fn started(node: u64, applied: u64, commit: u64) -> Observation {
        at(node, Observed::Started { applied, commit })
    }
    pub(crate) fn leader(node: u64, term: u64, last_term: u64, last_index: u64) -> Observation {
        at(
            node,
            Observed::BecameLeader {
                term,
                last_index,
                last_term,
            },
        )
    }
    pub(crate) fn committed(node: u64, commit: u64, term: u64) -> Observation {
        at(node, Observed::Committed { commit, term })
    }
    pub(crate) fn applied(node: u64, term: u64, index: u64, command: u64) -> Observation {
        at(
            node,
            Observed::Applied {
                index,
                term,
                command,
            },
        )
    }
    pub(crate) fn restored(node: u64, term: u64, index: u64) -> Observation {
        at(node, Observed::SnapshotRestored { index, term })
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    /// A healthy history: three replicas start empty, n1 wins term 1,
    /// commits and everyone applies; n2 takes over in term 2 and a restarted
    /// n3 catches up from a snapshot.
    fn healthy() -> Vec<Observation> {
        let mut h = vec![started(1, 0, 0), started(2, 0, 0), started(3, 0, 0)];
        h.push(leader(1, 1, 0, 0));
        for n in 1..=3 {
            h.push(committed(n, 2, 1));
            h.push(applied(n, 1, 1, 10));
            h.push(applied(n, 1, 2, 11));
        }
        h.push(leader(2, 2, 1, 2));
        h.push(committed(2, 3, 2));
        h.push(applied(2, 2, 3, 12));
        h.push(started(3, 0, 0));
        h.push(committed(3, 3, 2));
        h.push(restored(3, 2, 3));
        h.push(committed(1, 3, 2));
        h.push(applied(1, 2, 3, 12));
        h
    }

    #[test]
    fn a_healthy_history_passes_every_property() {
        let mut inv = Invariants::new();
        for o in healthy() {
            assert_eq!(inv.observe(&o), vec![], "{o}");
        }
        assert_eq!(inv.observed(), healthy().len() as u64);
    }

    #[test]
    fn a_violation_names_its_property_and_observation() {
        let mut inv = Invariants::new();
        for o in healthy() {
            inv.observe(&o);
        }
        let bad = applied(3, 3, 4, 99);
        assert_eq!(inv.observe(&committed(3, 4, 2)), vec![]);
        assert_eq!(inv.observe(&committed(1, 4, 2)), vec![]);
        assert_eq!(inv.observe(&bad), vec![]);
        inv.observe(&applied(1, 2, 4, 13));
        let v = &inv.violations()[0];
        assert_eq!(v.invariant, "state_machine_safety");
        assert_eq!(v.observation, applied(1, 2, 4, 13));
        assert!(
            v.to_string()
                .starts_with("[state_machine_safety] n1 p0: applied 2/4")
        );
    }
}
