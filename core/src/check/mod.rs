//! What the simulators judge, shared by both of them: the core's randomized
//! simulation (`core/tests/randomized.rs`) and the madsim harness (`sim/`).
//! Pure code over recorded histories and observed events; it runs nothing.
//!
//! Client histories ([`history`]), one file per checker, each testable on a
//! hand-made bad history (the `openraft` habit):
//! - [`linearizability`]: per key, some linearization of the writes and the
//!   linearizable / lease reads exists (Wing–Gong search, Lowe's memoization).
//! - [`stale_reads`]: every read, even a stale one, returns a value some
//!   possibly-applied write produced, with the version it produced.
//! - [`no_lost_writes`]: the state read after healing keeps every
//!   acknowledged write, unless a later write may have superseded it.
//! - [`expiry`]: a key written with a deadline is gone within the drift
//!   bound of it, by true time, and never comes back (its own records: the
//!   history does not carry true time).
//! - [`watch`]: watchers saw every committed change of their keys, in
//!   revision order, once, and nothing that was not written.
//!
//! Each returns [`Violation`]s naming the key and the operations involved;
//! [`check_all`] runs the three and gathers the results.
//!
//! Replica state: [`invariants`] judges the stream of
//! [`Observation`](crate::node::Observation)s the nodes emit (leaders
//! elected, commit indexes, entries applied) against Raft's safety
//! properties, one file per invariant.

pub mod expiry;
pub mod history;
pub mod invariants;
pub mod linearizability;
pub mod no_lost_writes;
pub mod stale_reads;
pub mod watch;

#[cfg(test)]
mod testkit;

use std::fmt;

use bytes::Bytes;

use crate::check::history::{History, OpRef};

pub use linearizability::{KeyVerdict, LinearizabilityConfig, LinearizabilityReport};
pub use no_lost_writes::FinalRead;

/// One broken invariant, explained for a human reading a failed run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker that found it: `"linearizability"`, `"stale_reads"`, ...
    pub checker: &'static str,
    pub key: Bytes,
    /// The operations the explanation names, most relevant first.
    pub ops: Vec<OpRef>,
    /// Multi-line text; every operation in it is printed in trace form.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] key {}: {}",
            self.checker,
            self.key.escape_ascii(),
            self.explanation
        )
    }
}

/// What [`check_all`] found. A run passes only if both lists are empty:
/// an inconclusive key is not a pass.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub violations: Vec<Violation>,
    /// Keys whose linearizability search ran out of budget.
    pub inconclusive: Vec<Bytes>,
    /// The full linearizability verdicts (steps per key, for tuning the budget).
    pub linearizability: LinearizabilityReport,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty()
    }

    /// Every operation a violation names, in history order, one per line in
    /// trace form: what a reader of a failed run looks at first.
    pub fn named_operations(&self, history: &History) -> String {
        let named: std::collections::BTreeSet<OpRef> = self
            .violations
            .iter()
            .flat_map(|v| v.ops.iter().copied())
            .collect();
        history
            .ops()
            .iter()
            .filter(|op| named.contains(&op.op_ref()))
            .map(|op| format!("  {op}\n"))
            .collect()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for violation in &self.violations {
            writeln!(f, "{violation}")?;
        }
        for key in &self.inconclusive {
            writeln!(
                f,
                "[linearizability] key {}: inconclusive (step budget exhausted)",
                key.escape_ascii()
            )?;
        }
        if self.passed() {
            writeln!(f, "all checks passed")?;
        }
        Ok(())
    }
}

/// Runs every history checker. `final_reads`: the per-key reads taken after
/// healing (see [`no_lost_writes::final_reads`]); they should also be in
/// `history`, so that linearizability covers them too.
pub fn check_all(
    history: &History,
    final_reads: &[FinalRead],
    config: &LinearizabilityConfig,
) -> Summary {
    let linearizability = linearizability::check(history, config);
    let mut violations: Vec<Violation> = linearizability.violations().cloned().collect();
    violations.extend(stale_reads::check(history));
    violations.extend(no_lost_writes::check(history, final_reads));
    Summary {
        violations,
        inconclusive: linearizability.inconclusive_keys().cloned().collect(),
        linearizability,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::testkit::{Workload, generate};
    use super::*;
    use crate::check::history::{Consistency, Operation, Outcome, Request, Response, ValueVersion};

    /// Runs all three checkers; the trace's last operation is the final read.
    fn checkers_rejecting(trace: &str) -> Vec<&'static str> {
        let history = History::from_trace(trace).unwrap();
        let last = history.ops().last().unwrap().invoke;
        let finals = no_lost_writes::final_reads(&history, last);
        let summary = check_all(&history, &finals, &LinearizabilityConfig::default());
        let mut names: Vec<_> = summary.violations.iter().map(|v| v.checker).collect();
        names.dedup();
        names
    }

    #[test]
    fn each_bug_is_caught_by_the_checkers_that_should_catch_it() {
        // A read of a value never written.
        assert_eq!(
            checkers_rejecting(
                "c1 #1 put k=a -> ok v1@r1 [0..10]
                 c0 #9 get k -> ok zz v1@r1 [100..110]"
            ),
            ["linearizability", "stale_reads", "no_lost_writes"]
        );
        // A lost acknowledged write.
        assert_eq!(
            checkers_rejecting(
                "c1 #1 put k=a -> ok v1@r1 [0..10]
                 c1 #2 put k=b -> ok v2@r2 [11..20]
                 c0 #9 get k -> ok a v1@r1 [100..110]"
            ),
            ["linearizability", "no_lost_writes"]
        );
        // A write that said "not applied" and was.
        assert_eq!(
            checkers_rejecting(
                "c1 #1 put k=a -> fail not-applied(dropped) [0..10]
                 c0 #9 get k -> ok a v1@r1 [100..110]"
            ),
            ["linearizability", "stale_reads", "no_lost_writes"]
        );
        // A correct history.
        assert!(
            checkers_rejecting(
                "c1 #1 put k=a -> ok v1@r1 [0..10]
                 c2 #2 put k=b -> unknown [5..]
                 c0 #9 get k -> ok b v2@r3 [100..110]"
            )
            .is_empty()
        );
    }

    fn sequential(ops: usize) -> Workload {
        Workload {
            clients: 1,
            ops_per_client: ops,
            keys: 2,
            unknown_percent: 10,
            not_applied_percent: 5,
            read_modify_writes: false,
        }
    }

    fn sequential_read_modify_writes(ops: usize) -> Workload {
        Workload {
            read_modify_writes: true,
            ..sequential(ops)
        }
    }

    /// Changes the result of one linearizable read whose state is fully
    /// determined (no write of unknown outcome on its key was invoked before
    /// it), so that no linearization can explain it. `None` if there is none.
    fn corrupt_one_read(history: &History, pick: usize, how: u8) -> Option<History> {
        let ops = history.ops();
        let determined = |read: &Operation| {
            !ops.iter().any(|w| {
                w.key() == read.key()
                    && w.request.is_write()
                    && w.outcome == Outcome::Unknown
                    && w.invoke <= read.invoke
            })
        };
        let candidates: Vec<usize> = (0..ops.len())
            .filter(|&i| {
                matches!(
                    ops[i].request,
                    Request::Get { consistency, .. } if consistency != Consistency::Stale
                ) && matches!(ops[i].outcome, Outcome::Ok(_))
                    && determined(&ops[i])
            })
            .collect();
        let victim = *candidates.get(pick % candidates.len().max(1))?;
        let mut ops = ops.to_vec();
        let Outcome::Ok(Response::Value(seen)) = &ops[victim].outcome else {
            unreachable!("picked a successful get")
        };
        let wrong = match (seen.clone(), how % 3) {
            (Some(_), 0) => None,
            (Some(vv), 1) => Some(ValueVersion {
                version: vv.version + 1,
                ..vv
            }),
            (Some(vv), _) => Some(ValueVersion {
                mod_revision: vv.mod_revision + 1,
                ..vv
            }),
            (None, _) => Some(ValueVersion {
                value: Bytes::from("never-written"),
                version: 1,
                mod_revision: 1,
            }),
        };
        ops[victim].outcome = Outcome::Ok(Response::Value(wrong));
        Some(History::new(ops).unwrap())
    }

    proptest! {
        #[test]
        fn sequential_histories_of_the_real_state_machine_pass(
            seed in any::<u64>(),
            len in 1usize..80,
        ) {
            let (history, finals) = generate(&sequential(len), seed);
            let summary = check_all(&history, &finals, &LinearizabilityConfig::default());
            prop_assert!(summary.passed(), "{summary}\n{history}");
        }

        #[test]
        fn sequential_read_modify_write_histories_pass(
            seed in any::<u64>(),
            len in 1usize..80,
        ) {
            let (history, finals) = generate(&sequential_read_modify_writes(len), seed);
            let summary = check_all(&history, &finals, &LinearizabilityConfig::default());
            prop_assert!(summary.passed(), "{summary}\n{history}");
        }

        #[test]
        fn one_corrupted_read_among_read_modify_writes_fails_linearizability(
            seed in any::<u64>(),
            len in 1usize..80,
            pick in any::<usize>(),
            how in any::<u8>(),
        ) {
            let (history, _) = generate(&sequential_read_modify_writes(len), seed);
            let Some(bad) = corrupt_one_read(&history, pick, how) else {
                return Ok(());
            };
            let report = linearizability::check(&bad, &LinearizabilityConfig::default());
            prop_assert_eq!(report.violations().count(), 1, "{:?}\n{}", report, bad);
        }

        #[test]
        fn one_corrupted_read_fails_linearizability(
            seed in any::<u64>(),
            len in 1usize..80,
            pick in any::<usize>(),
            how in any::<u8>(),
        ) {
            let (history, _) = generate(&sequential(len), seed);
            let Some(bad) = corrupt_one_read(&history, pick, how) else {
                return Ok(());
            };
            let report = linearizability::check(&bad, &LinearizabilityConfig::default());
            prop_assert_eq!(report.violations().count(), 1, "{:?}\n{}", report, bad);
        }
    }

    #[test]
    fn concurrent_histories_of_the_real_state_machine_pass() {
        let workload = Workload {
            clients: 4,
            ops_per_client: 60,
            keys: 2,
            unknown_percent: 10,
            not_applied_percent: 5,
            read_modify_writes: false,
        };
        for read_modify_writes in [false, true] {
            let workload = Workload {
                read_modify_writes,
                ..workload
            };
            for seed in 0..20 {
                let (history, finals) = generate(&workload, seed);
                let summary = check_all(&history, &finals, &LinearizabilityConfig::default());
                assert!(summary.passed(), "seed {seed}: {summary}");
            }
        }
    }

    /// 5 clients × 200 operations on 3 keys: decided within the step
    /// budget (no key inconclusive), accepted, and rejected once one read is
    /// corrupted. Prints the search steps per key (run with `--nocapture`);
    /// the core reads no clock, so no time is measured here.
    #[test]
    fn a_realistic_history_is_decided_within_the_step_budget() {
        let workload = Workload {
            clients: 5,
            ops_per_client: 200,
            keys: 3,
            unknown_percent: 3,
            not_applied_percent: 3,
            read_modify_writes: false,
        };
        let (history, finals) = generate(&workload, 42);
        let summary = check_all(&history, &finals, &LinearizabilityConfig::default());
        assert!(summary.passed(), "{summary}");
        let steps: Vec<String> = summary
            .linearizability
            .keys
            .iter()
            .map(|(key, verdict)| format!("{}: {verdict:?}", key.escape_ascii()))
            .collect();
        println!(
            "checked {} operations ({})",
            history.len(),
            steps.join(", ")
        );

        // Rejecting needs the search to exhaust the alternatives.
        // A version no write can have produced, on a read in the middle.
        let mut ops = history.ops().to_vec();
        let middle = (ops.len() / 2..ops.len())
            .find(|&i| {
                matches!(
                    (&ops[i].request, &ops[i].outcome),
                    (
                        Request::Get {
                            consistency: Consistency::Linearizable,
                            ..
                        },
                        Outcome::Ok(Response::Value(Some(_)))
                    )
                )
            })
            .expect("some read in the second half saw a value");
        if let Outcome::Ok(Response::Value(Some(seen))) = &mut ops[middle].outcome {
            seen.version += 1_000_000;
        }
        let bad = History::new(ops).unwrap();
        let report = linearizability::check(&bad, &LinearizabilityConfig::default());
        assert_eq!(report.violations().count(), 1, "{report:?}");
        assert_eq!(report.inconclusive_keys().count(), 0, "{report:?}");
        println!("rejected one corrupted read");
        println!("{}", report.violations().next().unwrap());
    }
}
