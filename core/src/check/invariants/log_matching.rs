//! Log matching (Raft §5.3, Figure 3): if two logs hold an entry with the
//! same index and term, they are identical in every entry up to it. Broken
//! by a follower that appends without checking the entry before
//! (`prev_log_index`/`prev_log_term`), or truncates what it should keep.
//!
//! Judged on applied prefixes: each replica's applied entries are folded
//! into a chain hash (`chain(i) = h(chain(i-1), term, command)`), so two
//! replicas that applied the same index and term must have the same chain
//! there. A replica's chain is known from an empty start, or from a
//! snapshot at an index whose chain some replica established by applying
//! it; until then its entries are judged by state machine safety alone.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::node::{Observation, Observed};
use crate::types::{NodeId, PartitionId};

/// The chain of an empty log.
const EMPTY: u64 = 0;

#[derive(Debug, Default)]
pub struct LogMatching {
    /// The first (term, chain, who) established at each index.
    chains: BTreeMap<PartitionId, BTreeMap<u64, (u64, u64, NodeId)>>,
    /// Each replica's applied index and the chain of its prefix, if known.
    replicas: BTreeMap<(NodeId, PartitionId), (u64, Option<u64>)>,
}

impl LogMatching {
    fn known_chain(&self, p: PartitionId, index: u64) -> Option<u64> {
        if index == 0 {
            return Some(EMPTY);
        }
        self.chains.get(&p)?.get(&index).map(|&(_, chain, _)| chain)
    }

    pub fn observe(&mut self, o: &Observation) -> Option<String> {
        let key = (o.node, o.partition);
        match o.what {
            Observed::Started { applied: index, .. } | Observed::SnapshotRestored { index, .. } => {
                let chain = self.known_chain(o.partition, index);
                self.replicas.insert(key, (index, chain));
                None
            }
            Observed::Applied {
                index,
                term,
                command,
            } => {
                let (last, prev) = self.replicas.get(&key).copied().unwrap_or((0, None));
                // A gap is the monotonic checker's to report; the chain is
                // lost across it.
                let chain = prev.filter(|_| last + 1 == index).map(|prev| {
                    let mut bytes = [0u8; 24];
                    bytes[..8].copy_from_slice(&prev.to_le_bytes());
                    bytes[8..16].copy_from_slice(&term.to_le_bytes());
                    bytes[16..].copy_from_slice(&command.to_le_bytes());
                    xxh3_64(&bytes)
                });
                self.replicas.insert(key, (index, chain));
                let chain = chain?;
                let log = self.chains.entry(o.partition).or_default();
                let (t, c, first) = *log.entry(index).or_insert((term, chain, o.node));
                (t == term && c != chain).then(|| {
                    format!("{first} also applied {t}/{index}, but their logs before it differ")
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
    fn identical_prefixes_pass() {
        let mut c = LogMatching::default();
        for n in 1..=2 {
            c.observe(&started(n, 0, 0));
            assert_eq!(c.observe(&applied(n, 1, 1, 0xa)), None);
            assert_eq!(c.observe(&applied(n, 2, 2, 0xb)), None);
        }
        // A snapshot at an established index continues the chain.
        c.observe(&restored(3, 1, 1));
        assert_eq!(c.observe(&applied(3, 2, 2, 0xb)), None);
    }

    #[test]
    fn the_same_entry_after_different_prefixes_is_caught() {
        // n2 appended 2/2 without checking that its entry 1 matched.
        let mut c = LogMatching::default();
        c.observe(&started(1, 0, 0));
        c.observe(&started(2, 0, 0));
        c.observe(&applied(1, 1, 1, 0xa));
        c.observe(&applied(1, 2, 2, 0xb));
        c.observe(&applied(2, 1, 1, 0xf));
        let v = c.observe(&applied(2, 2, 2, 0xb)).expect("violation");
        assert_eq!(v, "n1 also applied 2/2, but their logs before it differ");
    }

    #[test]
    fn different_terms_at_an_index_are_not_its_concern() {
        // That is state machine safety's violation; this one compares
        // only entries of the same index and term.
        let mut c = LogMatching::default();
        c.observe(&started(1, 0, 0));
        c.observe(&started(2, 0, 0));
        c.observe(&applied(1, 1, 1, 0xa));
        assert_eq!(c.observe(&applied(2, 2, 1, 0xa)), None);
    }

    #[test]
    fn an_unknown_prefix_is_not_judged_until_known() {
        let mut c = LogMatching::default();
        c.observe(&started(1, 0, 0));
        c.observe(&applied(1, 1, 1, 0xa));
        c.observe(&applied(1, 1, 2, 0xb));
        // n2 restarts from a snapshot at 5, which nobody applied entry by
        // entry: its chain is unknown, so its entry 6 is not compared.
        c.observe(&started(2, 5, 5));
        assert_eq!(c.observe(&applied(2, 1, 6, 0xc)), None);
    }
}
