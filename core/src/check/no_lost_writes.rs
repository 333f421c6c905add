//! No acknowledged write is lost: the state read after healing keeps every
//! acknowledged write, unless another write may have superseded it.
//!
//! Owns the comparison of the final reads (one linearizable read per key,
//! taken after the faults healed) with the writes of the history. It is
//! implied by linearizability when the final reads are in the history, but it
//! is cheap, readable, and still decides when the linearizability search is
//! inconclusive.
//!
//! Real-time order only (A precedes B if A completed before B was invoked;
//! writes with unknown outcome never complete). For the final read F of a key:
//! - F returns value `v`: `v` was written to this key by a put P that did not
//!   fail and was invoked no later than F completed, and no acknowledged write
//!   A (put or delete) sits between them for sure, i.e. P precedes A and A
//!   precedes F. Otherwise A was lost (or P's value was resurrected).
//! - F returns absent: every acknowledged put A that precedes F has some
//!   delete D (acknowledged or unknown) that could come after it: D does not
//!   precede A and was invoked no later than F completed.
//!
//! These are pairwise conditions, necessary but not sufficient for a legal
//! order; the full judgement is the linearizability checker's. Increments and
//! appends count as writes that create the key; a final value that no put
//! wrote is accepted when an increment or append that did not fail could
//! have computed it (which one, only the linearizability search can tell).

use std::fmt::Write as _;

use bytes::Bytes;

use crate::check::Violation;
use crate::check::history::{Consistency, History, Operation, Outcome, Request, Response, Time};

const CHECKER: &str = "no_lost_writes";

/// A key's state as read after healing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalRead {
    pub key: Bytes,
    /// `None`: the key is absent.
    pub value: Option<Bytes>,
    pub invoke: Time,
    pub complete: Time,
}

impl FinalRead {
    /// The final read recorded as `op`, if it is a successful linearizable get.
    pub fn from_op(op: &Operation) -> Option<FinalRead> {
        match (&op.request, &op.outcome, op.complete) {
            (
                Request::Get {
                    key,
                    consistency: Consistency::Linearizable,
                },
                Outcome::Ok(Response::Value(value)),
                Some(complete),
            ) => Some(FinalRead {
                key: key.clone(),
                value: value.as_ref().map(|vv| vv.value.clone()),
                invoke: op.invoke,
                complete,
            }),
            _ => None,
        }
    }

    fn as_operation_text(&self) -> String {
        let value = match &self.value {
            Some(v) => format!("{}", v.escape_ascii()),
            None => "none".to_owned(),
        };
        format!(
            "final get {} -> {value} [{}..{}]",
            self.key.escape_ascii(),
            self.invoke,
            self.complete
        )
    }
}

/// The last successful linearizable read of each key invoked at or after
/// `healed_at`: how the harness records the final state in the history.
pub fn final_reads(history: &History, healed_at: Time) -> Vec<FinalRead> {
    let mut reads: Vec<FinalRead> = Vec::new();
    for op in history.ops().iter().filter(|op| op.invoke >= healed_at) {
        let Some(read) = FinalRead::from_op(op) else {
            continue;
        };
        match reads.iter_mut().find(|r| r.key == read.key) {
            Some(known) if known.invoke <= read.invoke => *known = read,
            Some(_) => {}
            None => reads.push(read),
        }
    }
    reads
}

/// Checks each final read against the writes on its key.
pub fn check(history: &History, final_reads: &[FinalRead]) -> Vec<Violation> {
    final_reads
        .iter()
        .filter_map(|read| {
            let writes: Vec<&Operation> = history
                .ops_on(&read.key)
                .filter(|op| op.request.is_write())
                .collect();
            check_key(read, &writes).err()
        })
        .collect()
}

fn acknowledged(op: &Operation) -> bool {
    matches!(
        op.outcome,
        Outcome::Ok(
            Response::Put { .. }
                | Response::Deleted { .. }
                | Response::Incremented { .. }
                | Response::Appended { .. }
        )
    )
}

/// Whether `op` certainly took effect before the final read began.
fn precedes_read(op: &Operation, read: &FinalRead) -> bool {
    op.effect_deadline().is_some_and(|done| done < read.invoke)
}

/// Why `put` cannot have written the final value: the reason, and the
/// operations to name.
type NotExplained<'a> = (&'static str, Vec<&'a Operation>);

/// Whether `put` may have written the value `read` found: it did not fail,
/// was invoked in time, and no acknowledged write surely came between.
fn explains_final_value<'a>(
    put: &'a Operation,
    read: &FinalRead,
    writes: &[&'a Operation],
) -> Result<(), NotExplained<'a>> {
    if matches!(put.outcome, Outcome::Fail(_)) {
        return Err((
            "the final value's put failed: it was never applied",
            vec![put],
        ));
    }
    if put.invoke > read.complete {
        return Err((
            "the final value's put was invoked after the final read completed",
            vec![put],
        ));
    }
    let overwritten = writes.iter().find(|a| {
        !std::ptr::eq(**a, put) && acknowledged(a) && put.precedes(a) && precedes_read(a, read)
    });
    match overwritten {
        Some(lost) => Err((
            "an acknowledged write was lost: it came after the final value's put \
             and before the final read",
            vec![lost, put],
        )),
        None => Ok(()),
    }
}

fn check_key(read: &FinalRead, writes: &[&Operation]) -> Result<(), Violation> {
    let fail = |why: String, ops: &[&Operation]| {
        let mut explanation = format!("{why}\n  {}\n", read.as_operation_text());
        for op in ops {
            let _ = writeln!(explanation, "  {op}");
        }
        Err(Violation {
            checker: CHECKER,
            key: read.key.clone(),
            ops: ops.iter().map(|op| op.op_ref()).collect(),
            explanation,
        })
    };
    match &read.value {
        Some(value) => {
            let computed = writes.iter().any(|w| {
                matches!(
                    w.request,
                    Request::Increment { .. } | Request::Append { .. }
                ) && !matches!(w.outcome, Outcome::Fail(_))
                    && w.invoke <= read.complete
            });
            if computed {
                return Ok(());
            }
            // Values are unique per put in the simulation's workload, but a
            // history may repeat one: any put of it may explain the read.
            let puts: Vec<&Operation> = writes
                .iter()
                .copied()
                .filter(|w| matches!(&w.request, Request::Put { value: v, .. } if v == value))
                .collect();
            let mut first_failure = None;
            for put in puts {
                let verdict = explains_final_value(put, read, writes);
                match verdict {
                    Ok(()) => return Ok(()),
                    Err(failure) => {
                        first_failure.get_or_insert(failure);
                    }
                }
            }
            match first_failure {
                Some((why, ops)) => fail(why.into(), &ops),
                None => fail("the final value was never written to this key".into(), &[]),
            }
        }
        None => {
            let deletes: Vec<&Operation> = writes
                .iter()
                .copied()
                .filter(|d| matches!(d.request, Request::Delete { .. }))
                .filter(|d| matches!(d.outcome, Outcome::Ok(_) | Outcome::Unknown))
                .filter(|d| d.invoke <= read.complete)
                .collect();
            let lost = writes.iter().find(|a| {
                matches!(
                    a.outcome,
                    Outcome::Ok(
                        Response::Put { .. }
                            | Response::Incremented { .. }
                            | Response::Appended { .. }
                    )
                ) && precedes_read(a, read)
                    && !deletes.iter().any(|d| !d.precedes(a))
            });
            match lost {
                Some(lost) => fail(
                    "an acknowledged put was lost: the key is absent, and no delete could have come after it"
                        .into(),
                    &[lost],
                ),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testkit::{assert_no_violation, assert_one_violation_naming};

    /// The trace's last operation is the final read.
    fn violations(trace: &str) -> Vec<Violation> {
        let history = History::from_trace(trace).unwrap();
        let last = history.ops().last().unwrap();
        let reads = final_reads(&history, last.invoke);
        assert_eq!(reads.len(), 1, "the last op must be a linearizable get");
        check(&history, &reads)
    }

    #[track_caller]
    fn accepts(trace: &str) {
        assert_no_violation(&violations(trace));
    }

    #[track_caller]
    fn rejects(trace: &str, named: &[&str]) {
        assert_one_violation_naming(&violations(trace), named);
    }

    #[test]
    fn final_value_of_the_last_or_a_concurrent_write_is_accepted() {
        let writes = "c1 #1 put k=a -> ok v1@r1 [0..10]
                      c2 #2 put k=b -> ok v2@r2 [5..20]
                      c3 #3 put k=c -> unknown [30..40]";
        // b and a are concurrent: either may be last.
        accepts(&format!("{writes}\n c0 #9 get k -> ok a v1@r1 [100..110]"));
        accepts(&format!("{writes}\n c0 #9 get k -> ok b v2@r2 [100..110]"));
        // An unknown write may land after every acknowledged one.
        accepts(&format!("{writes}\n c0 #9 get k -> ok c v3@r7 [100..110]"));
    }

    #[test]
    fn overwritten_acknowledged_write_is_rejected() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=b -> ok v2@r2 [11..20]
             c0 #9 get k -> ok a v1@r1 [100..110]",
            &[
                "acknowledged write was lost",
                "c2 #2",
                "c1 #1",
                "final get k -> a",
            ],
        );
        // Resurrected after an acknowledged delete.
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 del k -> ok @r2 [11..20]
             c0 #9 get k -> ok a v1@r1 [100..110]",
            &["acknowledged write was lost", "c2 #2"],
        );
    }

    #[test]
    fn absent_key_needs_a_delete_after_every_acknowledged_put() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c0 #9 get k -> ok none [100..110]",
            &["acknowledged put was lost", "c1 #1"],
        );
        rejects(
            "c2 #2 del k -> ok @r1 [0..5]
             c1 #1 put k=a -> ok v1@r2 [6..10]
             c0 #9 get k -> ok none [100..110]",
            &["acknowledged put was lost", "c1 #1"],
        );
        accepts(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 del k -> unknown [5..]
             c0 #9 get k -> ok none [100..110]",
        );
        accepts(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 del k -> ok @r2 [11..20]
             c0 #9 get k -> ok none [100..110]",
        );
        // Never written: absent is right.
        accepts("c0 #9 get k -> ok none [100..110]");
    }

    #[test]
    fn final_value_that_cannot_have_been_written_is_rejected() {
        rejects(
            "c1 #1 put k=a -> fail not-applied(dropped) [0..10]
             c0 #9 get k -> ok a v1@r1 [100..110]",
            &["never applied", "c1 #1"],
        );
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c0 #9 get k -> ok zz v1@r1 [100..110]",
            &["never written", "final get k -> zz"],
        );
    }

    #[test]
    fn final_reads_takes_the_last_linearizable_read_after_healing() {
        let history = History::from_trace(
            "c1 #1 get k -> ok none [0..10]
             c1 #2 get k stale -> ok none [50..60]
             c1 #3 get k -> ok none [61..70]
             c1 #4 get k -> ok none [71..80]
             c1 #5 get j -> unknown [81..]",
        )
        .unwrap();
        let reads = final_reads(&history, 50);
        assert_eq!(reads.len(), 1);
        assert_eq!((reads[0].invoke, reads[0].complete), (71, 80));
    }
}
