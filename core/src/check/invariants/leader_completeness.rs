//! Leader completeness (Raft §5.4, Figure 3): if an entry is committed in a
//! term, it is in the log of every leader of a later term. Broken by
//! granting votes to a candidate whose log is behind (the election
//! restriction of §5.4.1), or by a leader that counts an entry of an
//! earlier term as committed by replicas (§5.4.2, the Figure 8 history),
//! after which a new leader may lack it.
//!
//! From the stream: a replica that reports [`Observed::Committed`] up to
//! index `c` while in term `x` shows that everything up to `c` was
//! committed in term `x` or before (a leader commits in its own term; a
//! follower learns its leader's commit). A new leader of term `t`
//! ([`Observed::BecameLeader`], its log as it won) must then hold the
//! highest index known committed in a term before `t`: its log reaches that
//! index, and ends in a term at least that entry's (a log's terms never
//! decrease), when some replica applied the entry or restored a snapshot
//! ending there, which tells its term.
//!
//! An entry's own term is no bound on when it was committed: an entry of
//! term 2 may be committed in term 4 (through an entry of term 4 after it),
//! and a leader of term 3 elected in between rightly lacks it. (Until the
//! soak's seed 4692 showed it, this checker took the entry's term for the
//! commit's and reported such a leader.)

use std::collections::BTreeMap;

use crate::node::{Observation, Observed};
use crate::types::PartitionId;

#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    /// Per partition, per term `x`: the highest index known committed in
    /// term `x` or before.
    committed: BTreeMap<PartitionId, BTreeMap<u64, u64>>,
    /// Per partition, the term of each entry some replica applied (or a
    /// restored snapshot ended at), by index.
    terms: BTreeMap<PartitionId, BTreeMap<u64, u64>>,
}

impl LeaderCompleteness {
    pub fn observe(&mut self, o: &Observation) -> Option<String> {
        match o.what {
            Observed::Committed { commit, term } => {
                let top = self
                    .committed
                    .entry(o.partition)
                    .or_default()
                    .entry(term)
                    .or_default();
                *top = (*top).max(commit);
                None
            }
            Observed::Applied { index, term, .. } | Observed::SnapshotRestored { index, term } => {
                self.terms
                    .entry(o.partition)
                    .or_default()
                    .insert(index, term);
                None
            }
            Observed::BecameLeader {
                term,
                last_index,
                last_term,
            } => {
                let (by, index) = self
                    .committed
                    .get(&o.partition)?
                    .range(..term)
                    .max_by_key(|&(_, &index)| index)
                    .map(|(&by, &index)| (by, index))?;
                let entry_term = self
                    .terms
                    .get(&o.partition)
                    .and_then(|t| t.get(&index))
                    .copied();
                let lacks = last_index < index || entry_term.is_some_and(|t| last_term < t);
                lacks.then(|| {
                    let entry = match entry_term {
                        Some(t) => format!("{t}/{index}"),
                        None => format!("at index {index}"),
                    };
                    format!("it lacks entry {entry}, committed in term {by} or before")
                })
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
        c.observe(&committed(1, 2, 1));
        c.observe(&applied(1, 1, 1, 7));
        c.observe(&applied(1, 1, 2, 8));
        assert_eq!(c.observe(&leader(2, 2, 1, 2)), None);
        // A longer log of a later term holds them too.
        assert_eq!(c.observe(&leader(3, 3, 2, 5)), None);
    }

    #[test]
    fn a_leader_missing_a_committed_entry_is_caught() {
        let mut c = LeaderCompleteness::default();
        c.observe(&committed(1, 2, 2));
        c.observe(&applied(1, 1, 1, 7));
        c.observe(&applied(1, 2, 2, 8));
        let v = c.observe(&leader(3, 3, 1, 1)).expect("violation");
        assert_eq!(v, "it lacks entry 2/2, committed in term 2 or before");
        // As long as the other: an entry of an earlier term at that index
        // cannot be the committed one.
        assert!(c.observe(&leader(3, 4, 1, 2)).is_some());
        // A follower's report counts as its leader's would.
        let mut f = LeaderCompleteness::default();
        f.observe(&committed(2, 2, 2));
        assert_eq!(
            f.observe(&leader(3, 3, 1, 1)).as_deref(),
            Some("it lacks entry at index 2, committed in term 2 or before")
        );
    }

    #[test]
    fn commits_of_its_own_or_later_terms_do_not_count() {
        // A leader of term 3 may win after a leader of term 4 committed
        // (its votes were delayed, or its report was): only commits of
        // earlier terms bind it.
        let mut c = LeaderCompleteness::default();
        c.observe(&committed(1, 1, 1));
        c.observe(&applied(1, 1, 1, 7));
        c.observe(&committed(2, 5, 4));
        c.observe(&applied(2, 4, 5, 8));
        assert_eq!(c.observe(&leader(3, 3, 1, 1)), None);
    }

    #[test]
    fn an_old_entry_committed_in_a_later_term_binds_only_later_leaders() {
        // Seed 4692: entry 2/27 was committed in term 4, through 4/28. The
        // leader of term 3, elected before, lacks it rightly; a leader of
        // term 5 may not.
        let mut c = LeaderCompleteness::default();
        c.observe(&committed(1, 26, 2));
        c.observe(&applied(1, 2, 26, 1));
        c.observe(&committed(1, 28, 4));
        c.observe(&applied(1, 2, 27, 2));
        c.observe(&applied(1, 4, 28, 3));
        assert_eq!(c.observe(&leader(2, 3, 2, 26)), None);
        let v = c.observe(&leader(3, 5, 2, 27)).expect("violation");
        assert_eq!(v, "it lacks entry 4/28, committed in term 4 or before");
    }

    #[test]
    fn a_snapshot_tells_the_term_of_its_last_entry() {
        let mut c = LeaderCompleteness::default();
        c.observe(&committed(2, 9, 2));
        c.observe(&restored(2, 2, 9));
        assert!(c.observe(&leader(1, 3, 1, 9)).is_some());
        assert_eq!(c.observe(&leader(1, 3, 2, 9)), None);
    }
}
