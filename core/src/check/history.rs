//! The operation log that simulated clients record and the checkers judge.
//!
//! Owns the history's vocabulary (requests, outcomes, invoke and completion
//! times), its validation ([`History::new`]), a [`Recorder`] for clients, and the
//! one-line trace form of an operation, which parses back ([`History::from_trace`])
//! so a failing history can be replayed into the checkers as a regression test.
//! It decides nothing about correctness: that is `checker/`.
//!
//! Time is a `u64` in whatever unit the recorder uses (the harness uses
//! simulated milliseconds). Intervals are closed: operation A precedes B in real
//! time only if A completed strictly before B was invoked; equal times count as
//! concurrent, because a clock tick is coarser than the events it stamps.
//!
//! Requests are `ringkv-core`'s (`ClientRequest`, `Precondition`,
//! `Consistency`); outcomes are this module's, since a history also records
//! what only a client sees (a timeout of unknown outcome, a failed connect).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// Simulated client (one session, one operation in flight at a time).
pub type ClientId = u32;
/// Identifies an operation within a history, together with its client.
pub type OpId = u64;
/// Simulated time, in the recorder's unit.
pub type Time = u64;

/// What a client asked for, in `ringkv-core`'s own terms (the workload
/// turns it into a gRPC request).
pub use crate::kv::Precondition;
pub use crate::node::{ClientRequest as Request, Consistency, Expiry};

/// A live key's value and metadata, as a read returns it.
///
/// `version` and `mod_revision` both 0 (neither ever is, in ringkv): the
/// protocol did not report them (a Redis `GET`); so too a `Put` answered
/// with both 0 (a Redis `SET`). Checkers then judge the value alone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueVersion {
    pub value: Bytes,
    /// 1 on create, +1 per update.
    pub version: u64,
    /// Revision (partition log index) of the write that produced this value.
    pub mod_revision: u64,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Answer to a get: the key's state, `None` if absent.
    Value(Option<ValueVersion>),
    /// Answer to a put: the version and revision the write produced, and,
    /// if the request asked (`return_previous`), the key just before it
    /// (`None`: absent; always `None` when not asked).
    Put {
        version: u64,
        mod_revision: u64,
        previous: Option<ValueVersion>,
    },
    /// Answer to a delete: the revision (log index) of the delete itself,
    /// and, if the request asked, the key as it was deleted.
    Deleted {
        revision: u64,
        previous: Option<ValueVersion>,
    },
    /// Answer to an increment: the value it wrote.
    Incremented {
        value: i64,
        version: u64,
        mod_revision: u64,
    },
    /// Answer to an append: the value's length after it.
    Appended {
        len: u64,
        version: u64,
        mod_revision: u64,
    },
}

/// Why a request definitely had no effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// Delete of an absent key (the entry was applied, as a no-op).
    NotFound,
    /// The precondition did not hold when the entry was applied.
    /// `current_mod_revision`: the key's revision then, `None` if absent.
    PreconditionFailed { current_mod_revision: Option<u64> },
    /// An increment found a value that is not a decimal `i64`.
    NotAnInteger,
    /// An increment's sum was out of range.
    Overflow,
    /// Never applied and never will be: no leader, dropped on leader change,
    /// busy, invalid input, ... The string is for the trace only.
    NotApplied(String),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Response),
    /// Definitely not applied.
    Fail(FailReason),
    /// Timeout, lost connection, still pending at the end: the write may take
    /// effect at any time after its invoke, or never.
    Unknown,
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: ClientId,
    pub id: OpId,
    pub invoke: Time,
    /// `None`: still pending when the history ended (outcome `Unknown`).
    pub complete: Option<Time>,
    pub request: Request,
    pub outcome: Outcome,
}

impl Operation {
    pub fn key(&self) -> &Bytes {
        self.request.key()
    }

    /// `(client, id)`, how checkers name the operation.
    pub fn op_ref(&self) -> OpRef {
        OpRef {
            client: self.client,
            id: self.id,
        }
    }

    /// When the operation's effect is known to be over: its completion time,
    /// or `None` (infinity) if it is pending or its outcome is unknown, since
    /// such a write may still take effect at any later time.
    pub fn effect_deadline(&self) -> Option<Time> {
        match self.outcome {
            Outcome::Unknown => None,
            _ => self.complete,
        }
    }

    /// Whether `self` took effect (if at all) strictly before `other` was
    /// invoked, i.e. it must come first in any linearization.
    pub fn precedes(&self, other: &Operation) -> bool {
        self.effect_deadline()
            .is_some_and(|done| done < other.invoke)
    }
}

/// Names an operation in a report: `c3 #17`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpRef {
    pub client: ClientId,
    pub id: OpId,
}

impl fmt::Display for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{} #{}", self.client, self.id)
    }
}

/// Why a list of operations is not a well-formed history. These are
/// recorder bugs, not bugs of the system under test.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("{op}: operation recorded twice")]
    DuplicateOp { op: OpRef },
    #[error("{op}: completed at {complete}, before its invoke at {invoke}")]
    CompletedBeforeInvoke {
        op: OpRef,
        invoke: Time,
        complete: Time,
    },
    #[error("{op}: pending at the end, so its outcome must be unknown")]
    PendingWithOutcome { op: OpRef },
    #[error("{op}: response does not answer the request ({detail})")]
    MismatchedResponse { op: OpRef, detail: &'static str },
    #[error("trace line {line}: {message}")]
    Trace { line: usize, message: String },
}

/// A validated operation log, in recording order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// Checks that the log is well formed: `(client, id)` unique, completion
    /// not before invoke, pending operations `Unknown`, each `Ok` response of
    /// the request's kind, failure reasons possible for the request.
    pub fn new(ops: Vec<Operation>) -> Result<Self, HistoryError> {
        let mut seen = HashSet::new();
        for op in &ops {
            let r = op.op_ref();
            if !seen.insert(r) {
                return Err(HistoryError::DuplicateOp { op: r });
            }
            match op.complete {
                Some(complete) if complete < op.invoke => {
                    return Err(HistoryError::CompletedBeforeInvoke {
                        op: r,
                        invoke: op.invoke,
                        complete,
                    });
                }
                None if op.outcome != Outcome::Unknown => {
                    return Err(HistoryError::PendingWithOutcome { op: r });
                }
                _ => {}
            }
            let mismatch = |detail| Err(HistoryError::MismatchedResponse { op: r, detail });
            match (&op.request, &op.outcome) {
                (
                    Request::Put {
                        return_previous: false,
                        ..
                    },
                    Outcome::Ok(Response::Put {
                        previous: Some(_), ..
                    }),
                )
                | (
                    Request::Delete {
                        return_previous: false,
                        ..
                    },
                    Outcome::Ok(Response::Deleted {
                        previous: Some(_), ..
                    }),
                ) => return mismatch("a previous value the request did not ask for"),
                (
                    Request::Delete {
                        return_previous: true,
                        ..
                    },
                    Outcome::Ok(Response::Deleted { previous: None, .. }),
                ) => return mismatch("a delete that asked for the key's value got none"),
                (Request::Get { .. }, Outcome::Ok(Response::Value(_)))
                | (Request::Put { .. }, Outcome::Ok(Response::Put { .. }))
                | (Request::Delete { .. }, Outcome::Ok(Response::Deleted { .. }))
                | (Request::Increment { .. }, Outcome::Ok(Response::Incremented { .. }))
                | (Request::Append { .. }, Outcome::Ok(Response::Appended { .. })) => {}
                (Request::CountKeys { .. }, _) => {
                    return mismatch("a partition's key count is not a history operation");
                }
                (Request::Scan { .. }, _) => {
                    return mismatch("a partition's scan is not a history operation");
                }
                // The checkers model one key per operation.
                (Request::PutAll { .. }, _) => {
                    return mismatch("a put-all of several keys is not a history operation");
                }
                // The checkers do not model time, so neither expiry.
                (Request::Expire { .. }, _) => {
                    return mismatch("an expire is not a history operation");
                }
                (Request::Put { expiry, .. }, _) if *expiry != Expiry::Clear => {
                    return mismatch("a put with an expiry is not a history operation");
                }
                (_, Outcome::Ok(_)) => return mismatch("ok response of another request kind"),
                (
                    Request::Increment { .. },
                    Outcome::Fail(FailReason::NotAnInteger | FailReason::Overflow),
                ) => {}
                (_, Outcome::Fail(FailReason::NotAnInteger | FailReason::Overflow)) => {
                    return mismatch("only an increment fails on the value's number");
                }
                (
                    Request::Increment { .. } | Request::Append { .. },
                    Outcome::Fail(FailReason::NotFound | FailReason::PreconditionFailed { .. }),
                ) => {
                    return mismatch("increments and appends have no precondition");
                }
                (Request::Get { .. }, Outcome::Fail(FailReason::NotApplied(_))) => {}
                (Request::Get { .. }, Outcome::Fail(_)) => {
                    return mismatch("a get fails only as not-applied");
                }
                (Request::Put { .. }, Outcome::Fail(FailReason::NotFound)) => {
                    return mismatch("a put never fails with not-found");
                }
                _ => {}
            }
        }
        Ok(Self { ops })
    }

    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The distinct keys touched, in ascending order.
    pub fn keys(&self) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = self.ops.iter().map(|op| op.key().clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The operations on `key`, in recording order.
    pub fn ops_on<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = &'a Operation> + 'a {
        self.ops.iter().filter(move |op| op.key().as_ref() == key)
    }

    /// Parses one [`Operation`] per non-empty line (the `Display` form);
    /// `//` starts a comment. Keys and values must be printable ASCII
    /// without spaces or `=`.
    pub fn from_trace(text: &str) -> Result<Self, HistoryError> {
        let mut ops = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split("//").next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            ops.push(line.parse().map_err(|message| HistoryError::Trace {
                line: number + 1,
                message,
            })?);
        }
        Self::new(ops)
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        Ok(())
    }
}

/// Records operations as concurrent clients invoke and complete them.
/// Operations still pending at [`Recorder::finish`] end as `Unknown`.
#[derive(Debug, Default)]
pub struct Recorder {
    ops: Vec<Operation>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an invoke; the returned id is unique in this history.
    pub fn invoke(&mut self, client: ClientId, at: Time, request: Request) -> OpId {
        let id = self.ops.len() as OpId;
        self.ops.push(Operation {
            client,
            id,
            invoke: at,
            complete: None,
            request,
            outcome: Outcome::Unknown,
        });
        id
    }

    /// Records how operation `id` ended. An `Unknown` outcome still records the
    /// time the client gave up (the write may land later; the checkers know).
    ///
    /// # Panics
    /// If `id` was not returned by [`Recorder::invoke`] or is completed twice:
    /// both are bugs of the workload, not of the system under test.
    pub fn complete(&mut self, id: OpId, at: Time, outcome: Outcome) {
        let op = usize::try_from(id)
            .ok()
            .and_then(|index| self.ops.get_mut(index))
            .unwrap_or_else(|| panic!("history: completing #{id}, which was never invoked"));
        assert!(op.complete.is_none(), "history: #{id} completed twice");
        op.complete = Some(at);
        op.outcome = outcome;
    }

    pub fn finish(self) -> Result<History, HistoryError> {
        History::new(self.ops)
    }
}

// ---- Trace form -------------------------------------------------------------
//
//   c3 #17 put k2=v17 if-absent -> ok v1@r12 [1203..1250]
//   c1 #4 get k2 lease -> ok v17 v1@r12 [1300..1310]
//   c2 #9 del k2 if-rev=12 -> fail precondition-failed(r13) [1400..1420]
//   c4 #11 put k1=v20 -> unknown [1500..]
//   c5 #3 put k2=v9 prev -> ok v2@r15 prev v17 v1@r12 [1600..1610]
//   c5 #4 del k2 prev -> ok @r16 prev v9 v2@r15 [1611..1620]
//   c5 #5 incr k3 by=-2 -> ok int=-2 v1@r17 [1621..1630]
//   c5 #6 append k3 +=x -> ok len=3 v2@r18 [1631..1640]

struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

/// The trace form of a request: `get k lease`, `put k=v if-rev=3`, `del k`.
struct RequestText<'a>(&'a Request);

/// The trace form of a precondition, with its leading space (empty for none).
struct PreconditionText(Precondition);

impl fmt::Display for PreconditionText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Precondition::None => Ok(()),
            Precondition::MustNotExist => f.write_str(" if-absent"),
            Precondition::MustExist => f.write_str(" if-exists"),
            Precondition::ModRevision(r) => write!(f, " if-rev={r}"),
        }
    }
}

impl fmt::Display for RequestText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Request::Get { key, consistency } => {
                write!(f, "get {}", Escaped(key))?;
                match consistency {
                    Consistency::Linearizable => Ok(()),
                    Consistency::Lease => f.write_str(" lease"),
                    Consistency::Stale => f.write_str(" stale"),
                }
            }
            Request::Put {
                key,
                value,
                precondition,
                return_previous,
                ..
            } => write!(
                f,
                "put {}={}{}{}",
                Escaped(key),
                Escaped(value),
                PreconditionText(*precondition),
                if *return_previous { " prev" } else { "" }
            ),
            Request::Delete {
                key,
                precondition,
                return_previous,
            } => write!(
                f,
                "del {}{}{}",
                Escaped(key),
                PreconditionText(*precondition),
                if *return_previous { " prev" } else { "" }
            ),
            Request::Increment { key, delta } => write!(f, "incr {} by={delta}", Escaped(key)),
            // Not a history operation (`History::new` refuses it); printed
            // for reports only.
            Request::CountKeys { key, .. } => write!(f, "count {}", Escaped(key)),
            Request::Scan {
                key,
                start,
                end,
                limit,
                ..
            } => {
                write!(f, "scan {} from {}", Escaped(key), Escaped(start))?;
                if let Some(end) = end {
                    write!(f, " to {}", Escaped(end))?;
                }
                write!(f, " limit {limit}")
            }
            Request::Append { key, suffix } => {
                write!(f, "append {} +={}", Escaped(key), Escaped(suffix))
            }
            Request::Expire { key, expiry } => write!(f, "expire {} {expiry:?}", Escaped(key)),
            // Not a history operation either; for reports only.
            Request::PutAll { pairs } => {
                f.write_str("put-all")?;
                for (key, value) in pairs {
                    write!(f, " {}={}", Escaped(key), Escaped(value))?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for ValueVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{}@r{}",
            Escaped(&self.value),
            self.version,
            self.mod_revision
        )
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::NotFound => f.write_str("not-found"),
            FailReason::PreconditionFailed {
                current_mod_revision: None,
            } => f.write_str("precondition-failed(absent)"),
            FailReason::PreconditionFailed {
                current_mod_revision: Some(r),
            } => write!(f, "precondition-failed(r{r})"),
            FailReason::NotAnInteger => f.write_str("not-an-integer"),
            FailReason::Overflow => f.write_str("overflow"),
            FailReason::NotApplied(reason) => write!(f, "not-applied({reason})"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(Response::Value(None)) => f.write_str("ok none"),
            Outcome::Ok(Response::Value(Some(vv))) => write!(f, "ok {vv}"),
            Outcome::Ok(Response::Put {
                version,
                mod_revision,
                previous,
            }) => {
                write!(f, "ok v{version}@r{mod_revision}")?;
                PreviousText(previous.as_ref()).fmt(f)
            }
            Outcome::Ok(Response::Deleted { revision, previous }) => {
                write!(f, "ok @r{revision}")?;
                PreviousText(previous.as_ref()).fmt(f)
            }
            Outcome::Ok(Response::Incremented {
                value,
                version,
                mod_revision,
            }) => write!(f, "ok int={value} v{version}@r{mod_revision}"),
            Outcome::Ok(Response::Appended {
                len,
                version,
                mod_revision,
            }) => write!(f, "ok len={len} v{version}@r{mod_revision}"),
            Outcome::Fail(reason) => write!(f, "fail {reason}"),
            Outcome::Unknown => f.write_str("unknown"),
        }
    }
}

/// ` prev <value> v<version>@r<revision>` for a previous value that was
/// answered, nothing otherwise. A put that asked and found the key absent
/// prints nothing either: its request says it asked.
struct PreviousText<'a>(Option<&'a ValueVersion>);

impl fmt::Display for PreviousText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(vv) => write!(f, " prev {vv}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} [{}..",
            self.op_ref(),
            RequestText(&self.request),
            self.outcome,
            self.invoke
        )?;
        match self.complete {
            Some(complete) => write!(f, "{complete}]"),
            None => f.write_str("]"),
        }
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let (head, rest) = line
            .split_once(" -> ")
            .ok_or("expected `<request> -> <outcome> [<invoke>..<complete>]`")?;
        let (outcome, times) = rest
            .rsplit_once(" [")
            .ok_or("expected ` [<invoke>..<complete>]` at the end")?;
        let mut words = head.split_whitespace();
        let client = number(
            words.next().and_then(|w| w.strip_prefix('c')),
            "client `c<n>`",
        )?;
        let id = number(
            words.next().and_then(|w| w.strip_prefix('#')),
            "op id `#<n>`",
        )?;
        let request = parse_request(&words.collect::<Vec<_>>())?;
        let outcome = parse_outcome(outcome.trim())?;
        let (invoke, complete) = times
            .strip_suffix(']')
            .and_then(|t| t.split_once(".."))
            .ok_or("expected `[<invoke>..<complete>]`")?;
        let complete = match complete {
            "" => None,
            t => Some(number(Some(t), "completion time")?),
        };
        Ok(Operation {
            client,
            id,
            invoke: number(Some(invoke), "invoke time")?,
            complete,
            request,
            outcome,
        })
    }
}

fn number<T: FromStr>(word: Option<&str>, what: &str) -> Result<T, String> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("expected {what}, got {word:?}"))
}

fn parse_request(words: &[&str]) -> Result<Request, String> {
    let bytes = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let precondition = |word: Option<&&str>| -> Result<Precondition, String> {
        Ok(match word.copied() {
            None => Precondition::None,
            Some("if-absent") => Precondition::MustNotExist,
            Some("if-exists") => Precondition::MustExist,
            Some(w) => match w.strip_prefix("if-rev=") {
                Some(r) => Precondition::ModRevision(number(Some(r), "revision")?),
                None => return Err(format!("unknown precondition `{w}`")),
            },
        })
    };
    let previous = |rest: &[&str]| -> Result<(Precondition, bool), String> {
        match rest {
            [] => Ok((Precondition::None, false)),
            ["prev"] => Ok((Precondition::None, true)),
            [p] => Ok((precondition(Some(p))?, false)),
            [p, "prev"] => Ok((precondition(Some(p))?, true)),
            _ => Err(format!("cannot parse `{}`", rest.join(" "))),
        }
    };
    match words {
        ["get", key, rest @ ..] => {
            let consistency = match rest {
                [] => Consistency::Linearizable,
                ["lease"] => Consistency::Lease,
                ["stale"] => Consistency::Stale,
                _ => return Err(format!("unknown consistency `{}`", rest.join(" "))),
            };
            Ok(Request::Get {
                key: bytes(key),
                consistency,
            })
        }
        ["put", assignment, rest @ ..] => {
            let (key, value) = assignment
                .split_once('=')
                .ok_or("expected `put <key>=<value>`")?;
            let (precondition, return_previous) = previous(rest)?;
            Ok(Request::Put {
                key: bytes(key),
                value: bytes(value),
                precondition,
                return_previous,
                expiry: Expiry::Clear,
            })
        }
        ["del", key, rest @ ..] => {
            let (precondition, return_previous) = previous(rest)?;
            Ok(Request::Delete {
                key: bytes(key),
                precondition,
                return_previous,
            })
        }
        ["incr", key, by] => Ok(Request::Increment {
            key: bytes(key),
            delta: number(by.strip_prefix("by="), "`by=<delta>`")?,
        }),
        ["append", key, suffix] => Ok(Request::Append {
            key: bytes(key),
            suffix: bytes(suffix.strip_prefix("+=").ok_or("expected `+=<suffix>`")?),
        }),
        _ => Err(format!("cannot parse request `{}`", words.join(" "))),
    }
}

/// `v<version>@r<revision>`
fn parse_version_at(word: &str) -> Result<(u64, u64), String> {
    let (version, revision) = word
        .strip_prefix('v')
        .and_then(|w| w.split_once("@r"))
        .ok_or_else(|| format!("expected `v<version>@r<revision>`, got `{word}`"))?;
    Ok((
        number(Some(version), "version")?,
        number(Some(revision), "revision")?,
    ))
}

fn parse_outcome(text: &str) -> Result<Outcome, String> {
    if text == "unknown" {
        return Ok(Outcome::Unknown);
    }
    if let Some(reason) = text.strip_prefix("fail ") {
        let reason = match reason {
            "not-found" => FailReason::NotFound,
            "not-an-integer" => FailReason::NotAnInteger,
            "overflow" => FailReason::Overflow,
            "precondition-failed(absent)" => FailReason::PreconditionFailed {
                current_mod_revision: None,
            },
            r => {
                if let Some(rev) = r
                    .strip_prefix("precondition-failed(r")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    FailReason::PreconditionFailed {
                        current_mod_revision: Some(number(Some(rev), "revision")?),
                    }
                } else if let Some(why) = r
                    .strip_prefix("not-applied(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    FailReason::NotApplied(why.to_owned())
                } else {
                    return Err(format!("unknown failure `{r}`"));
                }
            }
        };
        return Ok(Outcome::Fail(reason));
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let value_at = |value: &str, at: &str| -> Result<ValueVersion, String> {
        let (version, mod_revision) = parse_version_at(at)?;
        Ok(ValueVersion {
            value: Bytes::copy_from_slice(value.as_bytes()),
            version,
            mod_revision,
        })
    };
    let previous = |rest: &[&str]| -> Result<Option<ValueVersion>, String> {
        match rest {
            [] => Ok(None),
            ["prev", value, at] => Ok(Some(value_at(value, at)?)),
            _ => Err(format!(
                "expected ` prev <value> <version>`, got `{}`",
                rest.join(" ")
            )),
        }
    };
    let response = match words.as_slice() {
        ["ok", "none"] => Response::Value(None),
        ["ok", deleted, rest @ ..] if deleted.starts_with("@r") => Response::Deleted {
            revision: number(deleted.strip_prefix("@r"), "revision")?,
            previous: previous(rest)?,
        },
        ["ok", int, at] if int.starts_with("int=") => {
            let (version, mod_revision) = parse_version_at(at)?;
            Response::Incremented {
                value: number(int.strip_prefix("int="), "integer")?,
                version,
                mod_revision,
            }
        }
        ["ok", len, at] if len.starts_with("len=") => {
            let (version, mod_revision) = parse_version_at(at)?;
            Response::Appended {
                len: number(len.strip_prefix("len="), "length")?,
                version,
                mod_revision,
            }
        }
        ["ok", put, rest @ ..]
            if put.starts_with('v') && (rest.is_empty() || rest[0] == "prev") =>
        {
            let (version, mod_revision) = parse_version_at(put)?;
            Response::Put {
                version,
                mod_revision,
                previous: previous(rest)?,
            }
        }
        ["ok", value, at] => {
            let (version, mod_revision) = parse_version_at(at)?;
            Response::Value(Some(ValueVersion {
                value: Bytes::copy_from_slice(value.as_bytes()),
                version,
                mod_revision,
            }))
        }
        _ => return Err(format!("cannot parse outcome `{text}`")),
    };
    Ok(Outcome::Ok(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
c3 #17 put k2=v17 if-absent -> ok v1@r12 [1203..1250]
c1 #4 get k2 lease -> ok v17 v1@r12 [1300..1310]
c1 #5 get k9 stale -> ok none [1311..1312]
c2 #9 del k2 if-rev=12 -> fail precondition-failed(r13) [1400..1420]
c2 #10 del k2 -> ok @r14 [1421..1430]
c2 #11 del k2 if-exists -> fail not-found [1431..1440]
c2 #12 put k2=v20 if-rev=3 -> fail precondition-failed(absent) [1441..1450]
c4 #11 put k1=v21 -> fail not-applied(no leader) [1451..1460]
c4 #12 put k1=v22 -> unknown [1500..]
c5 #3 put k2=v9 prev -> ok v2@r15 prev v17 v1@r12 [1600..1610]
c5 #4 put k3=v10 if-absent prev -> ok v1@r16 [1611..1615]
c5 #5 del k2 prev -> ok @r17 prev v9 v2@r15 [1616..1620]
c5 #6 incr k3 by=-2 -> fail not-an-integer [1621..1630]
c5 #7 incr k4 by=-2 -> ok int=-2 v1@r18 [1631..1640]
c5 #8 append k4 +=x -> ok len=3 v2@r19 [1641..1650]
";

    #[test]
    fn trace_form_round_trips() {
        let history = History::from_trace(TRACE).unwrap();
        assert_eq!(history.len(), 15);
        assert_eq!(history.to_string(), TRACE);
        assert_eq!(
            history.keys(),
            vec![
                Bytes::from("k1"),
                Bytes::from("k2"),
                Bytes::from("k3"),
                Bytes::from("k4"),
                Bytes::from("k9")
            ]
        );
    }

    #[test]
    fn malformed_histories_are_refused() {
        let err = |text| History::from_trace(text).unwrap_err();
        assert!(matches!(
            err("c1 #1 get k -> ok none [1..2]\nc1 #1 get k -> ok none [3..4]"),
            HistoryError::DuplicateOp { .. }
        ));
        assert!(matches!(
            err("c1 #1 get k -> ok none [5..2]"),
            HistoryError::CompletedBeforeInvoke { .. }
        ));
        assert!(matches!(
            err("c1 #1 get k -> ok none [5..]"),
            HistoryError::PendingWithOutcome { .. }
        ));
        assert!(matches!(
            err("c1 #1 get k -> ok v1@r1 [5..6]"),
            HistoryError::MismatchedResponse { .. }
        ));
        assert!(matches!(
            err("c1 #1 put k=a -> fail not-found [5..6]"),
            HistoryError::MismatchedResponse { .. }
        ));
        assert!(matches!(
            err("c1 #1 put k=a -> ok v1@r1 prev b v1@r1 [5..6]"),
            HistoryError::MismatchedResponse { .. }
        ));
        assert!(matches!(
            err("c1 #1 append k +=a -> fail not-an-integer [5..6]"),
            HistoryError::MismatchedResponse { .. }
        ));
        assert!(matches!(
            err("c1 #1 incr k by=1 -> ok len=1 v1@r1 [5..6]"),
            HistoryError::MismatchedResponse { .. }
        ));
        assert!(matches!(
            err("c1 #1 frobnicate k -> ok none [5..6]"),
            HistoryError::Trace { line: 1, .. }
        ));
    }

    #[test]
    fn recorder_marks_pending_ops_unknown() {
        let mut recorder = Recorder::new();
        let key = Bytes::from("k");
        let put = recorder.invoke(1, 10, Request::put(key.clone(), "a"));
        let get = recorder.invoke(
            2,
            11,
            Request::Get {
                key,
                consistency: Consistency::Linearizable,
            },
        );
        recorder.complete(get, 20, Outcome::Ok(Response::Value(None)));
        let history = recorder.finish().unwrap();
        assert_eq!(
            history.to_string(),
            "c1 #0 put k=a -> unknown [10..]\nc2 #1 get k -> ok none [11..20]\n"
        );
        assert_eq!(history.ops()[put as usize].complete, None);
    }
}
