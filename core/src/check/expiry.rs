//! Expiry under clock skew: a key written with a deadline `D` disappears
//! within the drift bound `ε` of `D`, by true time, and never comes back.
//!
//! Owns the judgement of reads of keys that were written once, with a
//! deadline the client chose (`Expiry::AtUnixMs`), against true time (the
//! simulation's global clock, as Unix milliseconds). `ε` bounds how far any
//! node's wall clock was from true time during the run. For every such key
//! and every successful linearizable or lease read of it:
//! 1. **not served late**: a read that saw the value was invoked no later
//!    than `D + ε` (the node serving it read at least `D` on its clock, and
//!    a leader sweeps a key its clock has expired before answering);
//! 2. **not gone early**: a read that saw the key absent, invoked after the
//!    write was acknowledged, completed no earlier than `D - ε` (no clock,
//!    so no leader's stamp, reached `D` before then);
//! 3. **never back**: once a read saw it absent (after the write's
//!    acknowledgement), no read invoked after that read completed sees the
//!    value again, whatever the clocks of later leaders say.
//!
//! It judges keys written once (the value names the write); the
//! linearizability checker does not model time and leaves expiring keys
//! out. Stale reads are not judged (they may lag arbitrarily).

use std::fmt::Write as _;

use bytes::Bytes;

use crate::check::Violation;

const CHECKER: &str = "expiry";

/// A key written once, with the deadline the client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringWrite {
    pub key: Bytes,
    pub value: Bytes,
    /// Unix milliseconds.
    pub deadline: u64,
    /// True time at which the write's acknowledgement arrived (Unix ms).
    pub acknowledged_at: u64,
}

/// A successful linearizable or lease read of such a key, with its true
/// invoke and completion times (Unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryRead {
    pub key: Bytes,
    pub invoked_at: u64,
    pub completed_at: u64,
    /// The value read (`None`: absent).
    pub saw: Option<Bytes>,
}

/// Checks `reads` against `writes` with drift bound `epsilon_ms`.
pub fn check(writes: &[ExpiringWrite], reads: &[ExpiryRead], epsilon_ms: u64) -> Vec<Violation> {
    let mut violations = Vec::new();
    for w in writes {
        let mut reads_of: Vec<&ExpiryRead> = reads.iter().filter(|r| r.key == w.key).collect();
        reads_of.sort_by_key(|r| (r.invoked_at, r.completed_at));
        let mut violation = |explanation: String| {
            violations.push(Violation {
                checker: CHECKER,
                key: w.key.clone(),
                ops: Vec::new(),
                explanation,
            });
        };
        let deadline = format!("deadline {} ms, drift bound {epsilon_ms} ms", w.deadline);
        for r in &reads_of {
            match &r.saw {
                Some(v) if *v == w.value && r.invoked_at > w.deadline + epsilon_ms => {
                    violation(format!(
                        "a read invoked at {} saw {} after its {deadline}",
                        r.invoked_at,
                        v.escape_ascii()
                    ));
                }
                Some(v) if *v != w.value => violation(format!(
                    "a read saw {}, never written to the key",
                    v.escape_ascii()
                )),
                None if r.invoked_at > w.acknowledged_at
                    && r.completed_at + epsilon_ms < w.deadline =>
                {
                    violation(format!(
                        "a read completed at {} saw the key absent before its {deadline} \
                         (written and acknowledged at {})",
                        r.completed_at, w.acknowledged_at
                    ));
                }
                _ => {}
            }
        }
        // Never back: the first absent read after the acknowledgement, then
        // any read that began after it ended and saw the value.
        let gone = reads_of
            .iter()
            .filter(|r| r.saw.is_none() && r.invoked_at > w.acknowledged_at)
            .min_by_key(|r| r.completed_at);
        if let Some(gone) = gone {
            for r in &reads_of {
                if r.invoked_at > gone.completed_at && r.saw.is_some() {
                    let mut e = String::new();
                    let _ = write!(
                        e,
                        "a read completed at {} saw the key absent, then a read invoked at {} \
                         saw {} again ({deadline})",
                        gone.completed_at,
                        r.invoked_at,
                        w.value.escape_ascii()
                    );
                    violation(e);
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write() -> ExpiringWrite {
        ExpiringWrite {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            deadline: 10_000,
            acknowledged_at: 1_000,
        }
    }

    fn read(invoked_at: u64, completed_at: u64, saw: Option<&'static str>) -> ExpiryRead {
        ExpiryRead {
            key: Bytes::from_static(b"k"),
            invoked_at,
            completed_at,
            saw: saw.map(|s| Bytes::from_static(s.as_bytes())),
        }
    }

    fn found(reads: &[ExpiryRead]) -> Vec<String> {
        check(&[write()], reads, 500)
            .into_iter()
            .map(|v| v.explanation)
            .collect()
    }

    #[test]
    fn reads_within_the_drift_bound_of_the_deadline_are_fine() {
        let reads = [
            read(2_000, 2_010, Some("v")),
            // Served just inside D + ε.
            read(10_500, 10_510, Some("v")),
            read(12_000, 12_010, None),
            // Absent before the write was acknowledged: not judged.
            read(500, 900, None),
        ];
        assert_eq!(found(&reads), Vec::<String>::new());
        // Gone just inside D - ε.
        assert_eq!(found(&[read(9_400, 9_500, None)]), Vec::<String>::new());
    }

    #[test]
    fn a_value_served_after_the_deadline_and_the_bound_is_a_violation() {
        let v = found(&[read(10_501, 10_600, Some("v"))]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("after its deadline 10000 ms"), "{v:?}");
    }

    #[test]
    fn a_key_gone_before_the_deadline_less_the_bound_is_a_violation() {
        let v = found(&[read(2_000, 9_499, None)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("absent before its deadline"), "{v:?}");
    }

    #[test]
    fn a_key_that_comes_back_after_it_was_seen_gone_is_a_violation() {
        // Both reads are inside the bound on their own; together they say
        // the key came back.
        let v = found(&[read(9_600, 9_700, None), read(9_800, 9_900, Some("v"))]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("again"), "{v:?}");
        // Overlapping reads may see either.
        assert_eq!(
            found(&[read(9_600, 9_900, None), read(9_800, 9_950, Some("v"))]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_value_never_written_is_a_violation() {
        let v = found(&[read(2_000, 2_010, Some("other"))]);
        assert_eq!(v.len(), 1, "{v:?}");
    }
}
