//! Election safety (Raft §5.2, Figure 3): at most one leader is elected in
//! a given term, per partition. Broken by a node that votes twice in a term
//! (a vote not made durable before it was sent, a wiped disk voting again),
//! or by counting votes without a majority.

use std::collections::BTreeMap;

use crate::node::{Observation, Observed};
use crate::types::{NodeId, PartitionId};

/// Who won each term of each partition.
#[derive(Debug, Default)]
pub struct ElectionSafety {
    winners: BTreeMap<(PartitionId, u64), NodeId>,
}

impl ElectionSafety {
    /// A second, different winner of a term is a violation.
    pub fn observe(&mut self, o: &Observation) -> Option<String> {
        let Observed::BecameLeader { term, .. } = o.what else {
            return None;
        };
        let winner = *self.winners.entry((o.partition, term)).or_insert(o.node);
        (winner != o.node).then(|| format!("{winner} already won term {term}: two leaders"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::invariants::testkit::*;

    #[test]
    fn one_leader_per_term_passes() {
        let mut c = ElectionSafety::default();
        assert_eq!(c.observe(&leader(1, 1, 0, 0)), None);
        assert_eq!(c.observe(&leader(2, 2, 1, 1)), None);
        assert_eq!(c.observe(&leader(1, 3, 2, 2)), None);
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut c = ElectionSafety::default();
        assert_eq!(c.observe(&leader(1, 4, 0, 0)), None);
        let v = c.observe(&leader(3, 4, 0, 0)).expect("violation");
        assert_eq!(v, "n1 already won term 4: two leaders");
    }

    #[test]
    fn partitions_elect_independently() {
        let mut c = ElectionSafety::default();
        let mut other = leader(2, 4, 0, 0);
        other.partition = PartitionId(1);
        assert_eq!(c.observe(&leader(1, 4, 0, 0)), None);
        assert_eq!(c.observe(&other), None);
    }
}
