//! State machine safety (Raft §5.4.3, Figure 3): if a replica has applied
//! an entry at an index, no replica ever applies a different entry at that
//! index. This is what clients ultimately rely on; the other properties
//! are how Raft gets it.
//!
//! Every [`Observed::Applied`] is compared with the first one observed at
//! its partition and index (term and command fingerprint); a restored
//! snapshot must agree with the term of its last entry.

use std::collections::BTreeMap;

use crate::node::{Observation, Observed};
use crate::types::{NodeId, PartitionId};

/// The first entry applied at each index: (term, command, who).
#[derive(Debug, Default)]
pub struct StateMachineSafety {
    applied: BTreeMap<PartitionId, BTreeMap<u64, (u64, u64, NodeId)>>,
}

impl StateMachineSafety {
    pub fn observe(&mut self, o: &Observation) -> Option<String> {
        match o.what {
            Observed::Applied {
                index,
                term,
                command,
            } => {
                let log = self.applied.entry(o.partition).or_default();
                let (t, c, first) = *log.entry(index).or_insert((term, command, o.node));
                (t != term || c != command).then(|| {
                    format!("{first} applied {t}/{index} (command {c:016x}) at this index")
                })
            }
            Observed::SnapshotRestored { index, term } => {
                let &(t, _, first) = self.applied.get(&o.partition)?.get(&index)?;
                (t != term).then(|| format!("{first} applied {t}/{index} at this index"))
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
    fn the_same_entry_everywhere_passes() {
        let mut c = StateMachineSafety::default();
        for n in 1..=3 {
            assert_eq!(c.observe(&applied(n, 1, 1, 0xa)), None);
            assert_eq!(c.observe(&applied(n, 2, 2, 0xb)), None);
        }
        assert_eq!(c.observe(&restored(3, 2, 2)), None);
    }

    #[test]
    fn another_command_at_an_index_is_caught() {
        let mut c = StateMachineSafety::default();
        c.observe(&applied(1, 1, 5, 0xa));
        let v = c.observe(&applied(2, 1, 5, 0xb)).expect("violation");
        assert_eq!(v, "n1 applied 1/5 (command 000000000000000a) at this index");
    }

    #[test]
    fn the_same_command_from_another_term_is_caught() {
        // Two proposals of the same bytes by two leaders are two entries.
        let mut c = StateMachineSafety::default();
        c.observe(&applied(1, 2, 5, 0xa));
        assert!(c.observe(&applied(3, 3, 5, 0xa)).is_some());
    }

    #[test]
    fn fingerprints_tell_commands_and_kinds_apart() {
        use crate::node::command_fingerprint;
        use crate::raft::EntryKind;
        let put_a = command_fingerprint(EntryKind::Normal, b"put a");
        assert_eq!(put_a, command_fingerprint(EntryKind::Normal, b"put a"));
        assert_ne!(put_a, command_fingerprint(EntryKind::Normal, b"put b"));
        assert_ne!(
            command_fingerprint(EntryKind::Noop, b""),
            command_fingerprint(EntryKind::Normal, b"")
        );
    }

    #[test]
    fn a_snapshot_of_another_history_is_caught() {
        let mut c = StateMachineSafety::default();
        c.observe(&applied(1, 2, 5, 0xa));
        let v = c.observe(&restored(2, 3, 5)).expect("violation");
        assert_eq!(v, "n1 applied 2/5 at this index");
    }
}
