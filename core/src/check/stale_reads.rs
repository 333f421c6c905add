//! Stale reads never invent: every value a read returns was produced by a
//! write that may have been applied, with the version that write produced.
//!
//! Owns the check of single reads against the writes of their key. It applies
//! to every successful read whatever its consistency, since what it checks
//! holds at every level; for `Stale` reads it is the only check (the
//! linearizability checker leaves them out).
//!
//! For a read of `key` returning `value vN@rM` (values are unique per write,
//! so the value names its write W):
//! 1. W is a put of `value` on `key` (not on another key, not never written);
//! 2. W did not definitely fail (a failure means it was never applied);
//! 3. W was invoked no later than the read completed;
//! 4. if W was acknowledged, `(N, M)` is the `(version, mod_revision)` it
//!    returned;
//! 5. `(N, M)` is one W's precondition allows: version 1 for create-only, at
//!    least 2 for must-exist or compare-and-set on `r`, and then `M > r`;
//!    versions and revisions start at 1;
//! 6. all reads of the same value agree on `(N, M)` (a write happens once).
//!
//! A read or an acknowledged put that did not report `(N, M)` (both 0: a
//! Redis `GET` or `SET`) is held to 1-3 only, and to nothing about versions.
//!
//! Keys with increments or appends are left out: their values are computed
//! from earlier ones, not unique per put, so a value does not name its write
//! (the linearizability checker judges their non-stale reads exactly).
//!
//! Not checked, because the design does not promise it for stale reads: that
//! a read is recent (a replica may lag arbitrarily, so reading absent is always
//! possible, every key having started absent), and that a session's reads are
//! monotonic (successive stale reads may go to different replicas).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use bytes::Bytes;

use crate::check::Violation;
use crate::check::history::{
    History, Operation, Outcome, Precondition, Request, Response, ValueVersion,
};

const CHECKER: &str = "stale_reads";

/// Checks every successful read of `history`.
pub fn check(history: &History) -> Vec<Violation> {
    // value -> its puts, on any key (to say "written to another key")
    let mut writers: HashMap<&Bytes, Vec<&Operation>> = HashMap::new();
    let mut computed_keys: HashSet<&Bytes> = HashSet::new();
    for op in history.ops() {
        match &op.request {
            Request::Put { value, .. } => writers.entry(value).or_default().push(op),
            Request::Increment { key, .. } | Request::Append { key, .. } => {
                computed_keys.insert(key);
            }
            _ => {}
        }
    }
    let mut first_read_of: HashMap<(&Bytes, &Bytes), (&Operation, &ValueVersion)> = HashMap::new();
    let mut violations = Vec::new();
    for read in history.ops() {
        let Outcome::Ok(Response::Value(Some(seen))) = &read.outcome else {
            continue;
        };
        let key = read.key();
        if computed_keys.contains(key) {
            continue;
        }
        let candidates: Vec<&Operation> = writers
            .get(&seen.value)
            .into_iter()
            .flatten()
            .copied()
            .filter(|w| w.key() == key)
            .collect();
        if let Err((why, blamed)) = judge(read, seen, &candidates) {
            let elsewhere = writers.get(&seen.value).into_iter().flatten().copied();
            let others: Vec<&Operation> = elsewhere.filter(|w| w.key() != key).collect();
            violations.push(violation(key, read, why, blamed, &others));
            continue;
        }
        if unreported(seen.version, seen.mod_revision) {
            continue;
        }
        match first_read_of.get(&(key, &seen.value)) {
            None => {
                first_read_of.insert((key, &seen.value), (read, seen));
            }
            Some((earlier, earlier_seen)) if *earlier_seen != seen => {
                violations.push(violation(
                    key,
                    read,
                    "it read the same write as an earlier read, at another version or revision",
                    Some(earlier),
                    &[],
                ));
            }
            Some(_) => {}
        }
    }
    violations
}

type Verdict<'a> = Result<(), (&'static str, Option<&'a Operation>)>;

/// Whether some candidate write explains the read; if none does, the reason
/// against the last candidate (there is one, values being unique).
fn judge<'a>(read: &Operation, seen: &ValueVersion, candidates: &[&'a Operation]) -> Verdict<'a> {
    if (seen.version == 0 || seen.mod_revision == 0) && !unreported(seen.version, seen.mod_revision)
    {
        return Err(("versions and revisions start at 1", None));
    }
    let mut verdict = Err(("it read a value never written to this key", None));
    for &write in candidates {
        verdict = explains(write, read, seen).map_err(|why| (why, Some(write)));
        if verdict.is_ok() {
            break;
        }
    }
    verdict
}

fn explains(write: &Operation, read: &Operation, seen: &ValueVersion) -> Result<(), &'static str> {
    let Request::Put { precondition, .. } = write.request else {
        unreachable!("candidates are puts")
    };
    match &write.outcome {
        Outcome::Fail(_) => return Err("its write failed, so it was never applied"),
        Outcome::Ok(Response::Put {
            version,
            mod_revision,
            ..
        }) if (*version, *mod_revision) != (seen.version, seen.mod_revision)
            && !unreported(*version, *mod_revision)
            && !unreported(seen.version, seen.mod_revision) =>
        {
            return Err("its write produced another version or revision");
        }
        _ => {}
    }
    if read.complete.is_some_and(|done| done < write.invoke) {
        return Err("it completed before its write was invoked");
    }
    if unreported(seen.version, seen.mod_revision) {
        return Ok(());
    }
    match precondition {
        Precondition::MustNotExist if seen.version != 1 => {
            Err("its write was create-only, so it produced version 1")
        }
        Precondition::MustExist if seen.version < 2 => {
            Err("its write required the key to exist, so it produced version 2 or more")
        }
        Precondition::ModRevision(r) if seen.version < 2 || seen.mod_revision <= r => Err(
            "its write was a compare-and-set, so it updated the key (version 2 or more) at a later revision",
        ),
        _ => Ok(()),
    }
}

/// Version and revision not reported (a Redis reply), not wrong.
fn unreported(version: u64, mod_revision: u64) -> bool {
    (version, mod_revision) == (0, 0)
}

fn violation(
    key: &Bytes,
    read: &Operation,
    why: &str,
    blamed: Option<&Operation>,
    written_elsewhere: &[&Operation],
) -> Violation {
    let mut explanation = format!("impossible read: {why}\n  {read}\n");
    let mut ops = vec![read.op_ref()];
    if let Some(op) = blamed {
        let _ = writeln!(explanation, "  {op}");
        ops.push(op.op_ref());
    }
    for op in written_elsewhere {
        let _ = writeln!(explanation, "  (written to another key: {op})");
        ops.push(op.op_ref());
    }
    Violation {
        checker: CHECKER,
        key: key.clone(),
        ops,
        explanation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testkit::{assert_no_violation, assert_one_violation_naming};

    fn violations(trace: &str) -> Vec<Violation> {
        check(&History::from_trace(trace).unwrap())
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
    fn lagging_reads_of_written_values_are_accepted() {
        accepts(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c1 #2 put k=b -> ok v2@r4 [11..20]
             c1 #3 del k -> ok @r5 [21..30]
             c2 #4 get k stale -> ok b v2@r4 [40..50]
             c2 #5 get k stale -> ok a v1@r1 [51..60]
             c2 #6 get k stale -> ok none [61..70]
             c3 #7 put k=c -> unknown [65..]
             c2 #8 get k stale -> ok c v1@r9 [71..80]
             c2 #9 get k stale -> ok c v1@r9 [81..90]
             c4 #10 get k stale -> ok a v1@r1 [0..10]",
        );
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 get k stale -> ok zz v1@r1 [20..30]",
            &["never written", "c2 #2"],
        );
        rejects(
            "c1 #1 put j=a -> ok v1@r1 [0..10]
             c2 #2 get k stale -> ok a v1@r1 [20..30]",
            &["never written", "c2 #2", "written to another key: c1 #1"],
        );
    }

    #[test]
    fn read_of_a_failed_write_is_rejected() {
        rejects(
            "c1 #1 put k=a -> fail not-applied(no leader) [0..10]
             c2 #2 get k stale -> ok a v1@r1 [20..30]",
            &["never applied", "c2 #2", "c1 #1"],
        );
        rejects(
            "c1 #1 put k=a if-exists -> fail precondition-failed(absent) [0..10]
             c2 #2 get k stale -> ok a v1@r1 [20..30]",
            &["never applied", "c2 #2", "c1 #1"],
        );
    }

    #[test]
    fn read_before_the_write_was_invoked_is_rejected() {
        rejects(
            "c2 #1 get k stale -> ok a v1@r1 [0..10]
             c1 #2 put k=a -> unknown [20..]",
            &["before its write was invoked", "c2 #1", "c1 #2"],
        );
    }

    #[test]
    fn unreported_versions_are_held_to_value_and_time_only() {
        // A Redis SET and GET (v0@r0) beside clients that report versions.
        accepts(
            "c1 #1 put k=a -> ok v0@r0 [0..10]
             c2 #2 get k -> ok a v1@r4 [20..30]
             c3 #3 get k -> ok a v0@r0 [20..30]
             c2 #4 put k=b -> ok v2@r6 [31..40]
             c3 #5 get k -> ok b v0@r0 [41..50]",
        );
        rejects(
            "c1 #1 put k=a -> ok v0@r0 [20..30]
             c3 #2 get k -> ok a v0@r0 [0..10]",
            &["before its write was invoked", "c3 #2"],
        );
        rejects(
            "c1 #1 put k=a -> fail not-applied(no leader) [0..10]
             c3 #2 get k -> ok a v0@r0 [20..30]",
            &["never applied", "c3 #2"],
        );
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c3 #2 get k -> ok a v0@r3 [20..30]",
            &["start at 1", "c3 #2"],
        );
    }

    #[test]
    fn read_at_a_version_its_write_did_not_produce_is_rejected() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 get k stale -> ok a v2@r1 [20..30]",
            &["another version or revision", "c2 #2", "c1 #1"],
        );
        rejects(
            "c1 #1 put k=a if-absent -> unknown [0..10]
             c2 #2 get k stale -> ok a v2@r3 [20..30]",
            &["create-only", "c2 #2"],
        );
        rejects(
            "c1 #1 put k=a if-rev=5 -> unknown [0..10]
             c2 #2 get k stale -> ok a v2@r4 [20..30]",
            &["compare-and-set", "c2 #2"],
        );
        rejects(
            "c1 #1 put k=a -> unknown [0..10]
             c2 #2 get k stale -> ok a v0@r4 [20..30]",
            &["start at 1", "c2 #2"],
        );
    }

    #[test]
    fn reads_disagreeing_about_one_write_are_rejected() {
        rejects(
            "c1 #1 put k=a -> unknown [0..10]
             c2 #2 get k stale -> ok a v2@r4 [20..30]
             c3 #3 get k -> ok a v3@r4 [20..30]",
            &["same write", "c3 #3", "c2 #2"],
        );
    }
}
