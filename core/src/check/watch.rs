//! Watch streams against the writes that were made: a watcher sees every
//! committed change of its keys, in revision order, with no gaps or
//! duplicates, and nothing that was not written.
//!
//! Owns the judgement of what watchers (each following a set of keys from
//! the start of the writes, through whatever node, resuming by cursor when
//! a stream breaks) saw, given the clients' writes, each with a value of
//! its own, and the state read after the run. For every watcher:
//! 1. **in order, once**: within a partition, revisions never go back, and
//!    no (revision, key) change is seen twice;
//! 2. **no gaps**: every acknowledged write is seen, at its revision, as
//!    what it did (the value put, or a delete);
//! 3. **nothing invented**: every put seen is of a write that may have been
//!    applied (acknowledged, at the same revision, or with an unknown
//!    outcome; never one known not applied);
//! 4. **adds up**: replaying what it saw gives each key's final state (a
//!    write with an unknown outcome that did commit must be seen too).
//!
//! And across watchers: two that saw the same partition up to the same
//! last revision saw the same changes of it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::check::Violation;
use crate::types::PartitionId;
use crate::watch::ChangeKind;

const CHECKER: &str = "watch";

/// One change a watcher was told of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenChange {
    pub partition: PartitionId,
    pub revision: u64,
    pub kind: ChangeKind,
    pub key: Bytes,
    /// The value of a put.
    pub value: Bytes,
}

/// What became of a client's write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged, made by the log entry `revision`.
    Acknowledged { revision: u64 },
    /// Timed out or lost: may or may not have been applied.
    Unknown,
    /// Known not applied.
    Failed,
}

/// A client's write: a put of a value no other write used, or a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub key: Bytes,
    /// `None`: a delete.
    pub value: Option<Bytes>,
    pub outcome: Outcome,
}

/// Checks each watcher's changes (`watchers`: a name and what it saw, in
/// the order it saw them) against the writes and each key's final state
/// (`None`: absent), for the keys in `final_state`.
pub fn check(
    writes: &[Write],
    watchers: &[(String, Vec<SeenChange>)],
    final_state: &BTreeMap<Bytes, Option<Bytes>>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut violation = |key: &Bytes, explanation: String| {
        violations.push(Violation {
            checker: CHECKER,
            key: key.clone(),
            ops: Vec::new(),
            explanation,
        })
    };
    let put_of: BTreeMap<(&Bytes, &Bytes), &Write> = writes
        .iter()
        .filter_map(|w| w.value.as_ref().map(|v| ((&w.key, v), w)))
        .collect();
    for (name, seen) in watchers {
        // 1. In order, once.
        let mut last: BTreeMap<PartitionId, u64> = BTreeMap::new();
        let mut once: BTreeSet<(PartitionId, u64, &Bytes)> = BTreeSet::new();
        for c in seen {
            let prev = last.entry(c.partition).or_insert(0);
            if c.revision < *prev {
                violation(
                    &c.key,
                    format!(
                        "{name} saw revision {} of partition {} after revision {prev}",
                        c.revision, c.partition
                    ),
                );
            }
            *prev = c.revision.max(*prev);
            if !once.insert((c.partition, c.revision, &c.key)) {
                violation(
                    &c.key,
                    format!("{name} saw the change at revision {} twice", c.revision),
                );
            }
        }
        // 2. No gaps.
        for w in writes {
            let Outcome::Acknowledged { revision } = w.outcome else {
                continue;
            };
            let found = seen.iter().any(|c| {
                c.key == w.key
                    && c.revision == revision
                    && match &w.value {
                        Some(v) => c.kind == ChangeKind::Put && c.value == v,
                        None => c.kind == ChangeKind::Delete,
                    }
            });
            if !found {
                let what = match &w.value {
                    Some(v) => format!("the put of {v:?}"),
                    None => "the delete".to_owned(),
                };
                violation(
                    &w.key,
                    format!("{name} never saw {what} acknowledged at revision {revision}"),
                );
            }
        }
        // 3. Nothing invented.
        for c in seen.iter().filter(|c| c.kind == ChangeKind::Put) {
            match put_of.get(&(&c.key, &c.value)).map(|w| w.outcome) {
                Some(Outcome::Acknowledged { revision }) if revision != c.revision => violation(
                    &c.key,
                    format!(
                        "{name} saw the put of {:?} at revision {}, acknowledged at {revision}",
                        c.value, c.revision
                    ),
                ),
                Some(Outcome::Acknowledged { .. } | Outcome::Unknown) => {}
                Some(Outcome::Failed) => violation(
                    &c.key,
                    format!(
                        "{name} saw the put of {:?} at revision {}, a write known not applied",
                        c.value, c.revision
                    ),
                ),
                None => violation(
                    &c.key,
                    format!(
                        "{name} saw a put of {:?} at revision {} that no client wrote",
                        c.value, c.revision
                    ),
                ),
            }
        }
        // 4. Adds up.
        let mut replayed: BTreeMap<&Bytes, Option<&Bytes>> = BTreeMap::new();
        for c in seen {
            let now = match c.kind {
                ChangeKind::Put => Some(&c.value),
                ChangeKind::Delete | ChangeKind::Expire => None,
            };
            replayed.insert(&c.key, now);
        }
        for (key, state) in final_state {
            let got = replayed.get(key).copied().flatten();
            if got != state.as_ref() {
                violation(
                    key,
                    format!(
                        "{name}'s changes end with {got:?}, but the key reads {:?}",
                        state.as_ref()
                    ),
                );
            }
        }
    }
    // Across watchers.
    let by_partition = |seen: &[SeenChange]| {
        let mut m: BTreeMap<PartitionId, Vec<(u64, Bytes, ChangeKind, Bytes)>> = BTreeMap::new();
        for c in seen {
            m.entry(c.partition).or_default().push((
                c.revision,
                c.key.clone(),
                c.kind,
                c.value.clone(),
            ));
        }
        m
    };
    for (i, (a_name, a)) in watchers.iter().enumerate() {
        for (b_name, b) in &watchers[i + 1..] {
            let (a, b) = (by_partition(a), by_partition(b));
            for (p, a_changes) in &a {
                let Some(b_changes) = b.get(p) else { continue };
                // Only what both saw up to the same point compares.
                let upto = a_changes
                    .last()
                    .map(|c| c.0)
                    .min(b_changes.last().map(|c| c.0));
                let cut = |cs: &[(u64, Bytes, ChangeKind, Bytes)]| {
                    cs.iter()
                        .filter(|c| Some(c.0) <= upto)
                        .cloned()
                        .collect::<BTreeSet<_>>()
                };
                let (sa, sb) = (cut(a_changes), cut(b_changes));
                if sa != sb {
                    let key = sa
                        .symmetric_difference(&sb)
                        .next()
                        .map(|c| c.1.clone())
                        .unwrap_or_default();
                    violation(
                        &key,
                        format!(
                            "{a_name} and {b_name} saw different changes of partition {p} up to revision {}",
                            upto.unwrap_or(0)
                        ),
                    );
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(revision: u64, key: &str, value: &str) -> SeenChange {
        SeenChange {
            partition: PartitionId(0),
            revision,
            kind: ChangeKind::Put,
            key: b(key),
            value: b(value),
        }
    }

    fn del(revision: u64, key: &str) -> SeenChange {
        SeenChange {
            kind: ChangeKind::Delete,
            value: Bytes::new(),
            ..put(revision, key, "")
        }
    }

    fn write(key: &str, value: Option<&str>, outcome: Outcome) -> Write {
        Write {
            key: b(key),
            value: value.map(b),
            outcome,
        }
    }

    fn acked(revision: u64) -> Outcome {
        Outcome::Acknowledged { revision }
    }

    fn judge(seen: Vec<SeenChange>, final_value: Option<&str>) -> Vec<String> {
        let writes = [
            write("k", Some("a"), acked(3)),
            write("k", Some("b"), Outcome::Unknown),
            write("k", None, acked(7)),
            write("k", Some("c"), Outcome::Failed),
        ];
        let final_state = BTreeMap::from([(b("k"), final_value.map(b))]);
        check(&writes, &[("w".into(), seen)], &final_state)
            .iter()
            .map(|v| v.explanation.clone())
            .collect()
    }

    #[test]
    fn a_complete_stream_passes_with_or_without_an_unknown_write() {
        assert_eq!(
            judge(vec![put(3, "k", "a"), del(7, "k")], None),
            Vec::<String>::new()
        );
        assert_eq!(
            judge(vec![put(3, "k", "a"), put(5, "k", "b"), del(7, "k")], None),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_broken_rule_is_named() {
        let missed = judge(vec![put(3, "k", "a")], None);
        assert!(
            missed.iter().any(|e| e.contains("never saw the delete")),
            "{missed:?}"
        );
        let twice = judge(vec![put(3, "k", "a"), put(3, "k", "a"), del(7, "k")], None);
        assert!(twice.iter().any(|e| e.contains("twice")), "{twice:?}");
        let back = judge(
            vec![put(3, "k", "a"), del(7, "k"), put(5, "k", "b")],
            Some("b"),
        );
        assert!(
            back.iter().any(|e| e.contains("after revision 7")),
            "{back:?}"
        );
        let failed = judge(
            vec![put(3, "k", "a"), del(7, "k"), put(9, "k", "c")],
            Some("c"),
        );
        assert!(
            failed.iter().any(|e| e.contains("known not applied")),
            "{failed:?}"
        );
        let invented = judge(
            vec![put(3, "k", "a"), del(7, "k"), put(9, "k", "zz")],
            Some("zz"),
        );
        assert!(
            invented.iter().any(|e| e.contains("no client wrote")),
            "{invented:?}"
        );
        // The unknown write committed (the key reads it) but was not seen.
        let gap = judge(vec![put(3, "k", "a"), del(7, "k")], Some("b"));
        assert!(
            gap.iter().any(|e| e.contains("but the key reads")),
            "{gap:?}"
        );
    }

    #[test]
    fn two_watchers_that_saw_a_partition_differently_disagree() {
        let writes = [
            write("k", Some("a"), Outcome::Unknown),
            write("j", Some("x"), Outcome::Unknown),
        ];
        let final_state = BTreeMap::new();
        let one = ("one".to_owned(), vec![put(3, "k", "a"), put(4, "j", "x")]);
        let two = ("two".to_owned(), vec![put(4, "j", "x")]);
        let v = check(&writes, &[one.clone(), two], &final_state);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].explanation
                .contains("saw different changes of partition")
        );
        // One that stopped earlier is compared up to where it stopped.
        let early = ("early".to_owned(), vec![put(3, "k", "a")]);
        assert_eq!(check(&writes, &[one, early], &final_state), vec![]);
    }
}
