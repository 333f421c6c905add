//! Leader completeness (Raft §5.4, Figure 3): if an entry is committed in a
//! term, it is in the log of every leader of a later term. Broken by
//! granting votes to a candidate whose log is behind (the election
//! restriction of §5.4.1), or by a leader that counts an entry of an
//! earlier term as committed by replicas (§5.4.2, the Figure 8 history),
//! after which a new leader may lack it.
//!
//! From the stream, an entry counts as committed once some replica applied
//! it (or restored a snapshot covering it). A new leader's log as it won
//! ([`Observed::BecameLeader`]) must then end at least at the last such
//! entry of an earlier term: at or past its index, with at least its term
//! (a log's terms never decrease, so holding the entry implies both).

use std::collections::BTreeMap;

use crate::node::{Observation, Observed};
use crate::types::PartitionId;

/// Per partition, per term: the highest index known committed in it.
#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    committed: BTreeMap<PartitionId, BTreeMap<u64, u64>>,
}

impl LeaderCompleteness {
    pub fn observe(&mut self, o: &Observation) -> Option<String> {
        match o.what {
            Observed::Applied { index, term, .. } | Observed::SnapshotRestored { index, term } => {
                let top = self
                    .committed
                    .entry(o.partition)
                    .or_default()
                    .entry(term)
                    .or_default();
                *top = (*top).max(index);
                None
            }
            Observed::BecameLeader {
                term,
                last_index,
                last_term,
            } => {
                let (&t, &i) = self
                    .committed
                    .get(&o.partition)?
                    .range(..term)
                    .next_back()?;
                (last_index < i || last_term < t)
                    .then(|| format!("it lacks entry {t}/{i}, committed before its term"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::invariants::testkit::*;

    #[test]
    fn a_leader_holding_every_committed_entry_passes() {
        let mut c = LeaderCompleteness::default();
        c.observe(&applied(1, 1, 1, 7));
        c.observe(&applied(1, 1, 2, 8));
        assert_eq!(c.observe(&leader(2, 2, 1, 2)), None);
        // A longer log of a later term holds them too.
        assert_eq!(c.observe(&leader(3, 3, 2, 5)), None);
    }

    #[test]
    fn a_leader_missing_a_committed_entry_is_caught() {
        let mut c = LeaderCompleteness::default();
        c.observe(&applied(1, 1, 1, 7));
        c.observe(&applied(1, 2, 2, 8));
        let v = c.observe(&leader(3, 3, 1, 1)).expect("violation");
        assert_eq!(v, "it lacks entry 2/2, committed before its term");
        // As long as the other: an entry of an earlier term at that index
        // cannot be the committed one.
        assert!(c.observe(&leader(3, 4, 1, 2)).is_some());
    }

    #[test]
    fn entries_of_its_own_or_later_terms_do_not_count() {
        // A leader of term 3 may win after a leader of term 4 committed
        // (its votes were delayed): only earlier terms bind it.
        let mut c = LeaderCompleteness::default();
        c.observe(&applied(1, 1, 1, 7));
        c.observe(&applied(2, 4, 5, 8));
        assert_eq!(c.observe(&leader(3, 3, 1, 1)), None);
    }

    #[test]
    fn a_snapshot_marks_its_entries_committed() {
        let mut c = LeaderCompleteness::default();
        c.observe(&restored(2, 2, 9));
        assert!(c.observe(&leader(1, 3, 2, 8)).is_some());
    }
}
