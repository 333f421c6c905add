//! Linearizability of each key's history against a register-with-revisions
//! model: a Wing–Gong search with Lowe's memoization, in the style of Porcupine.
//!
//! Owns the model, the search and the explanation of a failure. Keys are
//! independent objects (a command touches one key), so each key is searched
//! alone: linearizability is compositional (Herlihy & Wing, locality).
//!
//! **Model.** The state of a key is `None` or `(value, version, mod_revision)`,
//! plus a lower bound on the revision of the key's last write. Value and
//! version are modelled exactly. Revisions are partition log indices shared
//! with other keys, so their exact values cannot be predicted; what is checked
//! is what one key can see: every write's revision is greater than the
//! previous write's (puts and deletes alike), a value has one revision
//! wherever it is observed, and a compare-and-set on revision `r` succeeds only
//! on a value whose revision is (or, when nothing has revealed it yet, can
//! consistently be) `r`. Every key starts absent.
//!
//! **Read-modify-writes.** An increment and an append compute their value
//! from the current one, exactly (the model reads the interned value back as
//! bytes; new values are interned as the search makes them). A put or delete
//! that answered the key's previous state reads it, as a get would, in the
//! same step. An increment refused as `NotAnInteger` or `Overflow` reads that
//! the current value is no integer, or one whose sum is out of range.
//!
//! **Which operations.** Writes that succeeded, writes with unknown outcome
//! (completion taken as infinity, and they may also never be linearized:
//! Porcupine's treatment), and successful `Linearizable` and `Lease` reads
//! (lease reads can be left out, for runs that drift clocks past the bound).
//! Failures that say something about the state are kept as reads of it:
//! `PreconditionFailed { current_mod_revision }` (the key was absent, or held
//! that revision, and the condition was false) and a delete's `NotFound` (the
//! key was absent). `NotApplied` failures are dropped: they had no effect, so a
//! later read of their value fails the search. `Stale` reads and failed or
//! unknown reads are not checked here (see `stale_reads`).
//!
//! **Search.** Call and return events sorted by time (calls first on ties:
//! equal timestamps count as concurrent), in a list that operations are lifted
//! out of as they are linearized; backtracking restores them. A set of
//! (linearized-operations bitset, model state) pairs already explored prunes
//! repeats. Each key has a step budget; running out gives `Inconclusive`,
//! which is reported and is not a pass.
//!
//! **Interchangeable unknown writes.** Writes with unknown outcome whose value
//! no operation observed are the search's worst case: each may or may not
//! have taken effect, anywhere after its invoke, so `n` of them give `2^n`
//! subsets. But two unknown puts of unobserved values with the same
//! precondition (or two unknown deletes with the same precondition) act alike
//! on every state, and neither constrains when it ends. They form a class:
//! their values become one shared "unread" value, and the search linearizes
//! a class member only after every earlier-invoked member. That loses no
//! linearization: a linearization that uses a later member `y` at a point
//! where an earlier member `x` is unused stays valid with `x` and `y`
//! swapped, because `x` was invoked first and so may take effect wherever `y`
//! may. `n` members then give `n + 1` choices instead of `2^n`. Unknown
//! writes with the same arguments form a class too (puts of one value,
//! increments by one delta, appends of one suffix: no output, same
//! effect). On a key with increments or appends, unread put values are not
//! shared: what later writes compute depends on the value an unknown put
//! left, which the shared value would hide. On failure the report shows the
//! longest linearizable prefix found, the state after it, and why each
//! operation that could come next does not fit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use bytes::Bytes;

use crate::check::Violation;
use crate::check::history::{
    Consistency, FailReason, History, Operation, Outcome, Precondition, Request, Response, Time,
};
use crate::kv::parse_integer;

const CHECKER: &str = "linearizability";

/// Search steps per key before giving up as `Inconclusive`. A step tries one
/// operation at one point of the search; histories of a few hundred
/// operations per key with a handful of clients need thousands.
pub const DEFAULT_STEP_BUDGET: u64 = 2_000_000;

/// How many operations of the longest linearizable prefix a failure report
/// prints (the most recent ones).
const PREFIX_SHOWN: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearizabilityConfig {
    pub step_budget: u64,
    /// Whether `Lease` reads are held to linearizability (the default). A lease
    /// is only safe while clock drift stays within the configured bound, so a
    /// run whose nemesis pushes clocks beyond it should turn this off.
    pub include_lease_reads: bool,
}

impl Default for LinearizabilityConfig {
    fn default() -> Self {
        Self {
            step_budget: DEFAULT_STEP_BUDGET,
            include_lease_reads: true,
        }
    }
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    Linearizable {
        ops: usize,
        steps: u64,
    },
    NotLinearizable(Violation),
    /// The step budget ran out before the search decided.
    Inconclusive {
        ops: usize,
        steps: u64,
    },
}

/// Verdicts for every key of the history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinearizabilityReport {
    pub keys: BTreeMap<Bytes, KeyVerdict>,
}

impl LinearizabilityReport {
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.keys.values().filter_map(|verdict| match verdict {
            KeyVerdict::NotLinearizable(violation) => Some(violation),
            _ => None,
        })
    }

    pub fn inconclusive_keys(&self) -> impl Iterator<Item = &Bytes> {
        self.keys
            .iter()
            .filter(|(_, verdict)| matches!(verdict, KeyVerdict::Inconclusive { .. }))
            .map(|(key, _)| key)
    }

    /// True only if every key was shown linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .values()
            .all(|verdict| matches!(verdict, KeyVerdict::Linearizable { .. }))
    }
}

/// Checks every key of `history`.
pub fn check(history: &History, config: &LinearizabilityConfig) -> LinearizabilityReport {
    let keys = history
        .keys()
        .into_iter()
        .map(|key| {
            let ops: Vec<&Operation> = history.ops_on(&key).collect();
            let verdict = check_key(&key, &ops, config);
            (key, verdict)
        })
        .collect();
    LinearizabilityReport { keys }
}

/// Checks the operations of one key (all of `ops` must be on `key`).
pub fn check_key(key: &Bytes, ops: &[&Operation], config: &LinearizabilityConfig) -> KeyVerdict {
    let mut values = ValueTable::default();
    let mut model_ops = Vec::new();
    for op in ops {
        let lease_read = matches!(
            op.request,
            Request::Get {
                consistency: Consistency::Lease,
                ..
            }
        );
        if lease_read && !config.include_lease_reads {
            continue;
        }
        if let Some(effect) = Effect::of(op, &mut values) {
            model_ops.push(ModelOp { op, effect });
        }
    }
    let read_modify_writes = model_ops.iter().any(|m| m.effect.computes_value());
    if read_modify_writes {
        // Values are not unique per put: an increment may make any number.
    } else if let Some(violation) = read_of_unwritten_value(key, ops, &model_ops, &values) {
        return KeyVerdict::NotLinearizable(violation);
    }
    let classes = interchangeable_unknown_writes(&mut model_ops, &mut values, read_modify_writes);
    let mut search = Search::new(&model_ops, classes);
    match search.run(&model_ops, config.step_budget, &mut values) {
        SearchResult::Linearizable => KeyVerdict::Linearizable {
            ops: model_ops.len(),
            steps: search.steps,
        },
        SearchResult::OutOfBudget => KeyVerdict::Inconclusive {
            ops: model_ops.len(),
            steps: search.steps,
        },
        SearchResult::NotLinearizable => {
            KeyVerdict::NotLinearizable(search.explain(key, &model_ops, &mut values))
        }
    }
}

// ---- Model ------------------------------------------------------------------

/// Values are interned per key so that model states are small and cheap to hash.
#[derive(Default)]
struct ValueTable {
    ids: HashMap<Bytes, u32>,
    names: Vec<Bytes>,
}

/// Stands for the value of any unknown put in a class of interchangeable
/// writes (see the module doc); only failure reports print it.
const UNREAD_VALUE: &[u8] = b"<unread value of an unknown put>";

impl ValueTable {
    /// The id shared by the values no operation observed.
    fn unread(&mut self) -> u32 {
        let id = self.names.len() as u32;
        self.names.push(Bytes::from_static(UNREAD_VALUE));
        id
    }

    fn intern(&mut self, value: &Bytes) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(value.clone(), id);
        self.names.push(value.clone());
        id
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Current {
    value: u32,
    version: u64,
    /// `None` until a response or a read reveals it (after an unknown write).
    mod_revision: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct State {
    current: Option<Current>,
    /// The last write on this key (put or delete) had a revision at least this.
    min_last_revision: u64,
}

/// What an operation requires of, and does to, the key's state.
#[derive(Clone, Debug)]
enum Effect {
    /// A read (or an informative failure, below) that observed this.
    Read(Option<Observed>),
    Put {
        value: u32,
        precondition: Precondition,
        /// `(version, mod_revision)` if acknowledged; `None`: outcome unknown.
        produced: Option<(u64, u64)>,
        /// The state it answered as previous (`Some(None)`: absent), if it
        /// asked and was acknowledged.
        saw: Option<Option<Observed>>,
    },
    Delete {
        precondition: Precondition,
        /// The delete's revision if acknowledged; `None`: outcome unknown.
        revision: Option<u64>,
        /// The state it answered as deleted, if it asked and was acknowledged.
        saw: Option<Observed>,
    },
    Increment {
        delta: i64,
        /// `(value, version, mod_revision)` if acknowledged.
        produced: Option<(i64, u64, u64)>,
    },
    Append {
        suffix: Bytes,
        /// `(len, version, mod_revision)` if acknowledged.
        produced: Option<(u64, u64, u64)>,
    },
    /// An increment found a value that is not an integer.
    NotAnInteger,
    /// An increment by `delta` would have overflowed.
    Overflow { delta: i64 },
    /// Failed precondition: it did not hold on the state, which was absent
    /// (`None`) or at that revision.
    Refused {
        precondition: Precondition,
        current_mod_revision: Option<u64>,
    },
    /// A delete found the key absent.
    NotFound { precondition: Precondition },
}

#[derive(Clone, Copy, Debug)]
struct Observed {
    value: u32,
    version: u64,
    mod_revision: u64,
}

impl Effect {
    /// Whether the value it writes depends on the current one.
    fn computes_value(&self) -> bool {
        matches!(self, Effect::Increment { .. } | Effect::Append { .. })
    }

    /// `None`: the operation says nothing this checker judges.
    fn of(op: &Operation, values: &mut ValueTable) -> Option<Effect> {
        let mut observed = |vv: &crate::check::history::ValueVersion| Observed {
            value: values.intern(&vv.value),
            version: vv.version,
            mod_revision: vv.mod_revision,
        };
        match (&op.request, &op.outcome) {
            (Request::Get { consistency, .. }, Outcome::Ok(Response::Value(read))) => {
                if *consistency == Consistency::Stale {
                    return None;
                }
                Some(Effect::Read(read.as_ref().map(observed)))
            }
            // Refused by `History::new`: no history holds them.
            (
                Request::Get { .. }
                | Request::CountKeys { .. }
                | Request::Scan { .. }
                | Request::PutAll { .. }
                | Request::Expire { .. },
                _,
            ) => None,
            (
                Request::Put {
                    value,
                    precondition,
                    return_previous,
                    ..
                },
                outcome,
            ) => {
                let (produced, saw) = match outcome {
                    Outcome::Ok(Response::Put {
                        version,
                        mod_revision,
                        previous,
                    }) => (
                        Some((*version, *mod_revision)),
                        return_previous.then(|| previous.as_ref().map(&mut observed)),
                    ),
                    Outcome::Unknown => (None, None),
                    Outcome::Fail(reason) => return Effect::of_failure(*precondition, reason),
                    Outcome::Ok(_) => return None, // refused by `History::new`
                };
                Some(Effect::Put {
                    value: values.intern(value),
                    precondition: *precondition,
                    produced,
                    saw,
                })
            }
            (Request::Delete { precondition, .. }, outcome) => {
                let (revision, saw) = match outcome {
                    Outcome::Ok(Response::Deleted { revision, previous }) => {
                        (Some(*revision), previous.as_ref().map(observed))
                    }
                    Outcome::Unknown => (None, None),
                    Outcome::Fail(reason) => return Effect::of_failure(*precondition, reason),
                    Outcome::Ok(_) => return None,
                };
                Some(Effect::Delete {
                    precondition: *precondition,
                    revision,
                    saw,
                })
            }
            (Request::Increment { delta, .. }, outcome) => match outcome {
                Outcome::Ok(Response::Incremented {
                    value,
                    version,
                    mod_revision,
                }) => Some(Effect::Increment {
                    delta: *delta,
                    produced: Some((*value, *version, *mod_revision)),
                }),
                Outcome::Unknown => Some(Effect::Increment {
                    delta: *delta,
                    produced: None,
                }),
                Outcome::Fail(FailReason::NotAnInteger) => Some(Effect::NotAnInteger),
                Outcome::Fail(FailReason::Overflow) => Some(Effect::Overflow { delta: *delta }),
                Outcome::Fail(_) | Outcome::Ok(_) => None,
            },
            (Request::Append { suffix, .. }, outcome) => match outcome {
                Outcome::Ok(Response::Appended {
                    len,
                    version,
                    mod_revision,
                }) => Some(Effect::Append {
                    suffix: suffix.clone(),
                    produced: Some((*len, *version, *mod_revision)),
                }),
                Outcome::Unknown => Some(Effect::Append {
                    suffix: suffix.clone(),
                    produced: None,
                }),
                Outcome::Fail(_) | Outcome::Ok(_) => None,
            },
        }
    }

    fn of_failure(precondition: Precondition, reason: &FailReason) -> Option<Effect> {
        match reason {
            FailReason::NotFound => Some(Effect::NotFound { precondition }),
            FailReason::PreconditionFailed {
                current_mod_revision,
            } => Some(Effect::Refused {
                precondition,
                current_mod_revision: *current_mod_revision,
            }),
            FailReason::NotApplied(_) | FailReason::NotAnInteger | FailReason::Overflow => None,
        }
    }
}

/// Why an operation cannot be linearized on a state.
type Misfit = &'static str;

impl State {
    /// The current value's revision is `revision`: checks it, or learns it if
    /// no response has revealed it yet.
    fn observe_revision(&mut self, revision: u64) -> Result<(), Misfit> {
        let min_last_revision = self.min_last_revision;
        let current = self.current.as_mut().ok_or("the key is absent")?;
        match current.mod_revision {
            Some(known) if known == revision => Ok(()),
            Some(_) => Err("its revision is not the current value's revision"),
            None if revision >= min_last_revision => {
                current.mod_revision = Some(revision);
                self.min_last_revision = revision;
                Ok(())
            }
            None => Err("its revision is below the revision of an earlier write"),
        }
    }

    /// Requires `precondition` to hold (learning the revision a CAS names).
    fn require(&mut self, precondition: Precondition) -> Result<(), Misfit> {
        match precondition {
            Precondition::None => Ok(()),
            Precondition::MustNotExist if self.current.is_some() => {
                Err("it is create-only, but the key exists")
            }
            Precondition::MustNotExist => Ok(()),
            Precondition::MustExist if self.current.is_none() => {
                Err("it requires the key to exist, but the key is absent")
            }
            Precondition::MustExist => Ok(()),
            Precondition::ModRevision(_) if self.current.is_none() => {
                Err("it is a compare-and-set, but the key is absent")
            }
            Precondition::ModRevision(revision) => self.observe_revision(revision).map_err(
                |_| "it is a compare-and-set on a revision the current value does not have",
            ),
        }
    }

    /// A new write with `revision` (`None`: unknown) becomes the last write.
    fn advance_revision(&mut self, revision: Option<u64>) -> Result<Option<u64>, Misfit> {
        match revision {
            Some(r) if r > self.min_last_revision => {
                self.min_last_revision = r;
                Ok(Some(r))
            }
            Some(_) => Err("its revision is not above the revision of the previous write"),
            None => {
                self.min_last_revision += 1;
                Ok(None)
            }
        }
    }

    /// Requires the key to be as a read saw it (`None`: absent).
    fn read(&mut self, seen: Option<Observed>) -> Result<(), Misfit> {
        let Some(seen) = seen else {
            return match self.current {
                Some(_) => Err("it read absent, but the key exists"),
                None => Ok(()),
            };
        };
        let current = self
            .current
            .ok_or("it read a value, but the key is absent")?;
        if current.value != seen.value {
            return Err("it read a different value than the key holds");
        }
        if (seen.version, seen.mod_revision) == (0, 0) {
            // Not reported (a Redis GET): the value is all it saw.
            return Ok(());
        }
        if current.version != seen.version {
            return Err("it read the key's value at a different version");
        }
        self.observe_revision(seen.mod_revision)
    }

    /// The current value read as an increment reads it (absent: 0).
    fn integer(&self, values: &ValueTable) -> Result<i64, Misfit> {
        match self.current {
            None => Ok(0),
            Some(current) => parse_integer(&values.names[current.value as usize])
                .ok_or("it needs an integer, but the key holds a value that is not one"),
        }
    }

    /// Writes `value` as a write that produced `produced` (`(version,
    /// revision)` if acknowledged): the next version, a later revision.
    fn write(&mut self, value: u32, produced: Option<(u64, u64)>) -> Result<(), Misfit> {
        let version = self.current.map_or(1, |c| c.version + 1);
        // (0, 0): acknowledged without them (a Redis SET).
        let produced = produced.filter(|&p| p != (0, 0));
        if let Some((acked_version, _)) = produced
            && acked_version != version
        {
            return Err("its version does not follow the key's version");
        }
        let mod_revision = self.advance_revision(produced.map(|(_, r)| r))?;
        self.current = Some(Current {
            value,
            version,
            mod_revision,
        });
        Ok(())
    }

    /// The state after `effect`, or why `effect` cannot happen now. New
    /// values (an increment's, an append's) are interned in `values`.
    fn apply(mut self, effect: &Effect, values: &mut ValueTable) -> Result<State, Misfit> {
        match *effect {
            Effect::Read(seen) => {
                self.read(seen)?;
                Ok(self)
            }
            Effect::Put {
                value,
                precondition,
                produced,
                saw,
            } => {
                if let Some(seen) = saw {
                    self.read(seen)?;
                }
                self.require(precondition)?;
                self.write(value, produced)?;
                Ok(self)
            }
            Effect::Delete {
                precondition,
                revision,
                saw,
            } => {
                if let Some(seen) = saw {
                    self.read(Some(seen))?;
                }
                self.require(precondition)?;
                if self.current.is_none() {
                    return Err("it deleted the key, but the key is absent");
                }
                self.advance_revision(revision)?;
                self.current = None;
                Ok(self)
            }
            Effect::Refused {
                precondition,
                current_mod_revision,
            } => {
                match current_mod_revision {
                    None if self.current.is_some() => {
                        return Err(
                            "it was refused because the key was absent, but the key exists",
                        );
                    }
                    None => {}
                    Some(revision) => self.observe_revision(revision)?,
                }
                let mut probe = self;
                if probe.require(precondition).is_ok() {
                    return Err("it was refused, but its precondition holds");
                }
                Ok(self)
            }
            Effect::NotFound { precondition } => {
                if self.current.is_some() {
                    return Err("it found the key absent, but the key exists");
                }
                let mut probe = self;
                if probe.require(precondition).is_err() {
                    return Err("it found the key absent, but then its precondition fails");
                }
                Ok(self)
            }
            Effect::Increment { delta, produced } => {
                let sum = self
                    .integer(values)?
                    .checked_add(delta)
                    .ok_or("its sum overflows on the key's value")?;
                if let Some((acked, _, _)) = produced
                    && acked != sum
                {
                    return Err("it answered a sum other than the key's value plus its delta");
                }
                let value = values.intern(&Bytes::from(sum.to_string()));
                self.write(value, produced.map(|(_, v, r)| (v, r)))?;
                Ok(self)
            }
            Effect::Append {
                ref suffix,
                produced,
            } => {
                let old = match self.current {
                    Some(current) => values.names[current.value as usize].clone(),
                    None => Bytes::new(),
                };
                let len = (old.len() + suffix.len()) as u64;
                if let Some((acked, _, _)) = produced
                    && acked != len
                {
                    return Err(
                        "it answered a length other than the key's value's plus its suffix",
                    );
                }
                let mut appended = Vec::with_capacity(old.len() + suffix.len());
                appended.extend_from_slice(&old);
                appended.extend_from_slice(suffix);
                let value = values.intern(&Bytes::from(appended));
                self.write(value, produced.map(|(_, v, r)| (v, r)))?;
                Ok(self)
            }
            Effect::NotAnInteger => match self.integer(values) {
                Ok(_) => Err("it found no integer, but the key holds one (or is absent)"),
                Err(_) => Ok(self),
            },
            Effect::Overflow { delta } => match self.integer(values)?.checked_add(delta) {
                Some(_) => Err("it overflowed, but the key's value plus its delta is in range"),
                None => Ok(self),
            },
        }
    }
}

struct ModelOp<'a> {
    op: &'a Operation,
    effect: Effect,
}

impl ModelOp<'_> {
    /// Completion as the search sees it: `None` (infinity) for unknown outcomes.
    fn deadline(&self) -> Option<Time> {
        self.op.effect_deadline()
    }
}

/// Fast, clear failure for the commonest bug: a read of a value that no
/// write on this key which may have been applied ever wrote.
fn read_of_unwritten_value(
    key: &Bytes,
    ops: &[&Operation],
    model_ops: &[ModelOp<'_>],
    values: &ValueTable,
) -> Option<Violation> {
    let written: HashSet<u32> = model_ops
        .iter()
        .filter_map(|m| match m.effect {
            Effect::Put { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    let read = model_ops.iter().find(|m| match m.effect {
        Effect::Read(Some(seen)) => !written.contains(&seen.value),
        _ => false,
    })?;
    let Effect::Read(Some(seen)) = read.effect else {
        unreachable!("found above")
    };
    let value = &values.names[seen.value as usize];
    let failed_writer = ops.iter().find(|op| {
        matches!(&op.request, Request::Put { value: v, .. } if v == value)
            && matches!(op.outcome, Outcome::Fail(_))
    });
    let mut explanation = format!(
        "read of a value no write on this key that may have taken effect wrote:\n  {}\n",
        read.op
    );
    let mut named = vec![read.op.op_ref()];
    if let Some(writer) = failed_writer {
        let _ = writeln!(
            explanation,
            "  the only put of it failed, so it was never applied:\n  {writer}"
        );
        named.push(writer.op_ref());
    }
    Some(Violation {
        checker: CHECKER,
        key: key.clone(),
        ops: named,
        explanation,
    })
}

/// A class of interchangeable unknown writes: same kind, same arguments.
#[derive(Clone, PartialEq, Eq, Hash)]
enum WriteClass {
    /// The value (interned), after unread values were made one.
    Put(u32, Precondition),
    Delete(Precondition),
    Increment(i64),
    Append(Bytes),
}

/// Groups the unknown writes that act alike on every state (see the module
/// doc): same kind and arguments, where puts of values no operation
/// observed first get one shared value. When increments or appends read
/// values (`values_are_read_by_writes`), values are not shared (the value
/// a put left matters even if no read saw it), so only puts of equal
/// values are classed. Returns, for each
/// operation, the previous member of its class in invoke order (`NONE` for
/// the first member and for operations in no class).
fn interchangeable_unknown_writes(
    ops: &mut [ModelOp<'_>],
    values: &mut ValueTable,
    values_are_read_by_writes: bool,
) -> Vec<usize> {
    let observed: HashSet<u32> = ops
        .iter()
        .filter_map(|m| match m.effect {
            Effect::Read(Some(seen))
            | Effect::Put {
                saw: Some(Some(seen)),
                ..
            }
            | Effect::Delete {
                saw: Some(seen), ..
            } => Some(seen.value),
            _ => None,
        })
        .collect();
    let unread = values.unread();
    let mut last_member: HashMap<WriteClass, usize> = HashMap::new();
    let mut previous = vec![NONE; ops.len()];
    let mut by_invoke: Vec<usize> = (0..ops.len()).collect();
    by_invoke.sort_by_key(|&i| (ops[i].op.invoke, i));
    for i in by_invoke {
        let class = match &mut ops[i].effect {
            Effect::Put {
                value,
                precondition,
                produced: None,
                ..
            } => {
                if !observed.contains(value) && !values_are_read_by_writes {
                    *value = unread;
                }
                WriteClass::Put(*value, *precondition)
            }
            Effect::Delete {
                precondition,
                revision: None,
                ..
            } => WriteClass::Delete(*precondition),
            Effect::Increment {
                delta,
                produced: None,
            } => WriteClass::Increment(*delta),
            Effect::Append {
                suffix,
                produced: None,
            } => WriteClass::Append(suffix.clone()),
            _ => continue,
        };
        if let Some(before) = last_member.insert(class, i) {
            previous[i] = before;
        }
    }
    previous
}

// ---- Search -----------------------------------------------------------------

const NONE: usize = usize::MAX;
const HEAD: usize = 0;

#[derive(Clone, Copy)]
struct Event {
    /// Index into the model operations.
    op: usize,
    is_call: bool,
    /// For a call: its return event, or `NONE` if the operation never
    /// returns (unknown outcome).
    ret: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Self(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }
    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
    fn get(&self, bit: usize) -> bool {
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

enum SearchResult {
    Linearizable,
    NotLinearizable,
    OutOfBudget,
}

/// Porcupine-style search state over a doubly linked list of events, with
/// `HEAD` a sentinel. Linearizing an operation lifts its call and return out
/// of the list; backtracking puts them back (in reverse order, so the saved
/// links are still right).
struct Search {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Operations whose completion is known and must therefore be linearized.
    must_linearize: usize,
    /// Per operation, the earlier member of its class of interchangeable
    /// unknown writes that must be linearized first (`NONE`: no such rule).
    previous_in_class: Vec<usize>,
    steps: u64,
    /// The longest prefix reached: operations in order, and the state after.
    best: (Vec<usize>, State),
}

impl Search {
    fn new(ops: &[ModelOp<'_>], previous_in_class: Vec<usize>) -> Self {
        // (time, returns after calls at equal times, op) -> event
        let mut order: Vec<(Time, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            order.push((op.op.invoke, false, index));
            if let Some(done) = op.deadline() {
                order.push((done, true, index));
            }
        }
        order.sort_unstable();
        let mut events = vec![Event {
            op: NONE,
            is_call: false,
            ret: NONE,
        }];
        let mut call_of = vec![NONE; ops.len()];
        for &(_, is_return, op) in &order {
            let here = events.len();
            if is_return {
                events[call_of[op]].ret = here;
            } else {
                call_of[op] = here;
            }
            events.push(Event {
                op,
                is_call: !is_return,
                ret: NONE,
            });
        }
        let len = events.len();
        let next = (0..len)
            .map(|i| if i + 1 < len { i + 1 } else { NONE })
            .collect();
        let prev = (0..len).map(|i| i.wrapping_sub(1)).collect(); // HEAD's prev is NONE
        Search {
            events,
            next,
            prev,
            must_linearize: ops.iter().filter(|op| op.deadline().is_some()).count(),
            previous_in_class,
            steps: 0,
            best: (Vec::new(), State::default()),
        }
    }

    fn unlink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = next;
        if next != NONE {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = event;
        if next != NONE {
            self.prev[next] = event;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.events[call].ret;
        if ret != NONE {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.events[call].ret;
        if ret != NONE {
            self.relink(ret);
        }
        self.relink(call);
    }

    fn run(&mut self, ops: &[ModelOp<'_>], budget: u64, values: &mut ValueTable) -> SearchResult {
        let mut state = State::default();
        let mut linearized = Bitset::new(ops.len());
        let mut explored: HashSet<(Bitset, State)> = HashSet::new();
        // (call event, state before it)
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut remaining = self.must_linearize;
        let mut event = self.next[HEAD];
        while remaining > 0 {
            self.steps += 1;
            if self.steps > budget {
                return SearchResult::OutOfBudget;
            }
            // While operations with a known completion remain, their return
            // events are in the list, so the walk meets one before the end.
            debug_assert!(event != NONE, "linearizability: ran off the event list");
            let Event { op, is_call, ret } = self.events[event];
            let class_turn = match self.previous_in_class[op] {
                NONE => true,
                earlier => linearized.get(earlier),
            };
            if is_call && class_turn {
                if let Ok(after) = state.apply(&ops[op].effect, values) {
                    linearized.set(op);
                    if explored.insert((linearized.clone(), after)) {
                        stack.push((event, state));
                        state = after;
                        self.lift(event);
                        if ret != NONE {
                            remaining -= 1;
                        }
                        if stack.len() > self.best.0.len() {
                            self.best = (
                                stack.iter().map(|&(e, _)| self.events[e].op).collect(),
                                state,
                            );
                        }
                        event = self.next[HEAD];
                        continue;
                    }
                    linearized.clear(op);
                }
                event = self.next[event];
            } else if is_call {
                event = self.next[event];
            } else {
                // An operation returned before anything could linearize it:
                // undo the most recent choice and try the next event after it.
                let Some((call, before)) = stack.pop() else {
                    return SearchResult::NotLinearizable;
                };
                let undone = self.events[call].op;
                linearized.clear(undone);
                state = before;
                self.unlift(call);
                if self.events[call].ret != NONE {
                    remaining += 1;
                }
                event = self.next[call];
            }
        }
        SearchResult::Linearizable
    }

    fn explain(&self, key: &Bytes, ops: &[ModelOp<'_>], values: &mut ValueTable) -> Violation {
        let (prefix, state) = &self.best;
        let mut done = vec![false; ops.len()];
        for &op in prefix {
            done[op] = true;
        }
        // The operations that could come next: not linearized, and invoked no
        // later than the earliest completion among those that must be.
        let horizon = (0..ops.len())
            .filter(|&i| !done[i])
            .filter_map(|i| ops[i].deadline())
            .min()
            .unwrap_or(Time::MAX);
        let mut next: Vec<usize> = (0..ops.len())
            .filter(|&i| !done[i] && ops[i].op.invoke <= horizon)
            .collect();
        next.sort_by_key(|&i| {
            (
                ops[i].deadline().is_none(),
                ops[i].deadline(),
                ops[i].op.invoke,
            )
        });

        let mut text = format!(
            "no linearization exists. Longest linearizable prefix: {} of {} operations",
            prefix.len(),
            ops.len()
        );
        let shown = &prefix[prefix.len().saturating_sub(PREFIX_SHOWN)..];
        if shown.len() < prefix.len() {
            let _ = write!(text, "; its last {}", shown.len());
        }
        text.push_str(":\n");
        for &op in shown {
            let _ = writeln!(text, "  {}", ops[op].op);
        }
        let _ = writeln!(text, "after which the key {}.", describe(state, values));
        text.push_str("None of the operations that may come next fits:\n");
        for &op in &next {
            let why = match state.apply(&ops[op].effect, values) {
                Err(misfit) => misfit,
                Ok(_) => "it fits here, but no continuation from it does",
            };
            let _ = writeln!(text, "  {}\n    {why}", ops[op].op);
        }
        let mut named: Vec<_> = next.iter().map(|&i| ops[i].op.op_ref()).collect();
        named.extend(shown.iter().rev().map(|&i| ops[i].op.op_ref()));
        Violation {
            checker: CHECKER,
            key: key.clone(),
            ops: named,
            explanation: text,
        }
    }
}

fn describe(state: &State, values: &ValueTable) -> String {
    match state.current {
        None if state.min_last_revision == 0 => "is absent (never written)".to_owned(),
        None => format!(
            "is absent (deleted at r{} or later)",
            state.min_last_revision
        ),
        Some(current) => {
            let value = values.names[current.value as usize].escape_ascii();
            match current.mod_revision {
                Some(r) => format!("holds {value} v{}@r{r}", current.version),
                None => format!(
                    "holds {value} v{}@r? (revision {} or later)",
                    current.version, state.min_last_revision
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(trace: &str) -> LinearizabilityReport {
        check(
            &History::from_trace(trace).unwrap(),
            &LinearizabilityConfig::default(),
        )
    }

    #[track_caller]
    fn accepts(trace: &str) {
        let report = verdict(trace);
        assert!(
            report.is_linearizable(),
            "expected linearizable: {report:#?}"
        );
    }

    /// Rejects, naming every op in `named`; returns the explanation.
    #[track_caller]
    fn rejects(trace: &str, named: &[&str]) -> String {
        let report = verdict(trace);
        let violation = report
            .violations()
            .next()
            .unwrap_or_else(|| panic!("expected a violation: {report:#?}"));
        let text = violation.to_string();
        for op in named {
            assert!(text.contains(op), "`{op}` not named in:\n{text}");
        }
        text
    }

    #[test]
    fn increments_appends_and_previous_values_are_modelled_exactly() {
        accepts(
            "c1 #1 incr n by=1 -> ok int=1 v1@r1 [0..10]
             c2 #2 incr n by=5 -> ok int=6 v2@r2 [5..15]
             c3 #3 get n -> ok 6 v2@r2 [16..20]
             c3 #4 append n +=x -> ok len=2 v3@r3 [21..30]
             c3 #5 incr n by=1 -> fail not-an-integer [31..40]
             c3 #6 put n=7 prev -> ok v4@r4 prev 6x v3@r3 [41..50]
             c1 #7 del n prev -> ok @r5 prev 7 v4@r4 [51..60]
             c1 #8 incr n by=-1 -> ok int=-1 v1@r6 [61..70]
             c2 #9 incr n by=1 -> unknown [62..]
             c2 #10 get n -> ok 0 v2@r7 [80..90]",
        );
        // A lost update: two increments that do not overlap both answered 1.
        rejects(
            "c1 #1 incr n by=1 -> ok int=1 v1@r1 [0..10]
             c2 #2 incr n by=1 -> ok int=1 v2@r2 [11..15]",
            &["c2 #2"],
        );
        // GETSET answering a value the key no longer held.
        rejects(
            "c1 #1 put n=a -> ok v1@r1 [0..10]
             c1 #2 put n=b -> ok v2@r2 [11..20]
             c2 #3 put n=c prev -> ok v3@r3 prev a v1@r1 [21..30]",
            &["c2 #3"],
        );
        // An append that answered a length the value cannot have.
        rejects(
            "c1 #1 put s=abc -> ok v1@r1 [0..10]
             c2 #2 append s +=de -> ok len=4 v2@r2 [11..20]",
            &["c2 #2"],
        );
        // "Not an integer" on a key that holds one.
        rejects(
            "c1 #1 put n=12 -> ok v1@r1 [0..10]
             c2 #2 incr n by=1 -> fail not-an-integer [11..20]",
            &["c2 #2"],
        );
    }

    #[test]
    fn concurrent_writes_and_reads_are_accepted() {
        // The read of `a` overlaps the put of `b`, so it can come first.
        accepts(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=b -> ok v2@r3 [2..12]
             c4 #5 get k -> ok a v1@r1 [3..8]
             c3 #3 get k -> ok b v2@r3 [5..15]
             c3 #4 get k lease -> ok b v2@r3 [16..20]
             c1 #6 del k if-rev=3 -> ok @r9 [21..30]
             c2 #7 get k -> ok none [25..26]
             c2 #8 put k=c if-absent -> ok v1@r10 [27..40]
             c4 #9 put k=d if-absent -> fail precondition-failed(r10) [31..45]
             c3 #10 del j -> fail not-found [0..1]",
        );
    }

    #[test]
    fn stale_read_under_linearizable_consistency_is_rejected() {
        let stale = "c1 #1 put k=a -> ok v1@r1 [0..10]
                     c1 #2 put k=b -> ok v2@r2 [11..20]
                     c2 #3 get k -> ok a v1@r1 [21..30]";
        rejects(stale, &["c2 #3 get k -> ok a v1@r1", "holds b v2@r2"]);
        let lease = stale.replace("get k ", "get k lease ");
        rejects(&lease, &["c2 #3"]);
        // ... unless the run's clocks drift beyond what leases tolerate.
        let without_leases = LinearizabilityConfig {
            include_lease_reads: false,
            ..LinearizabilityConfig::default()
        };
        let history = History::from_trace(&lease).unwrap();
        assert!(check(&history, &without_leases).is_linearizable());
        // A stale read may lag: this checker leaves it to `stale_reads`.
        accepts(&stale.replace("get k ", "get k stale "));
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 get k -> ok zz v1@r1 [20..30]",
            &["no write on this key", "c2 #2"],
        );
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 get k -> ok none [20..30]",
            &["c2 #2", "holds a v1@r1"],
        );
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        let base = "c1 #1 put k=a -> ok v1@r1 [0..10]
                    c2 #2 put k=b -> unknown [5..15]
                    c1 #3 get k -> ok a v1@r1 [20..25]";
        // Takes effect long after the client gave up on it ...
        accepts(&format!("{base}\n c1 #4 get k -> ok b v2@r9 [100..110]"));
        // ... or never.
        accepts(&format!("{base}\n c1 #4 get k -> ok a v1@r1 [100..110]"));
        // Still pending at the end of the history.
        accepts(
            "c2 #2 put k=b -> unknown [5..]
             c1 #4 get k -> ok b v1@r9 [100..110]",
        );
        // Once seen, it cannot be un-seen.
        rejects(
            &format!(
                "{base}\n c1 #4 get k -> ok b v2@r9 [100..110]
                  c1 #5 get k -> ok a v1@r1 [120..130]"
            ),
            &["c1 #5"],
        );
    }

    #[test]
    fn unknown_write_seen_before_its_invoke_is_rejected() {
        rejects(
            "c1 #1 get k -> ok b v1@r2 [0..10]
             c2 #2 put k=b -> unknown [20..30]",
            &["c1 #1", "is absent"],
        );
    }

    #[test]
    fn compare_and_set_on_the_wrong_revision_is_rejected() {
        rejects(
            "c1 #1 put k=a -> ok v1@r5 [0..10]
             c1 #2 put k=b if-rev=4 -> ok v2@r7 [11..20]",
            &["c1 #2", "compare-and-set on a revision"],
        );
        // An unknown write's revision is learnt from the CAS that names it ...
        let learnt = "c1 #1 put k=a -> unknown [0..10]
                      c1 #2 put k=b if-rev=5 -> ok v2@r7 [20..30]
                      c2 #3 get k -> ok b v2@r7 [40..50]";
        accepts(learnt);
        // ... and must agree with what a read saw of it.
        rejects(
            &format!("{learnt}\n c3 #4 get k -> ok a v1@r6 [12..18]"),
            &["c1 #2"],
        );
    }

    #[test]
    fn skipped_versions_and_falling_revisions_are_rejected() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c1 #2 put k=b -> ok v3@r2 [11..20]",
            &["c1 #2", "version does not follow"],
        );
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 get k -> ok a v2@r1 [11..20]",
            &["c2 #2", "different version"],
        );
        rejects(
            "c1 #1 put k=a -> ok v1@r5 [0..10]
             c1 #2 put k=b -> ok v2@r3 [11..20]",
            &["c1 #2", "not above"],
        );
        rejects(
            "c1 #1 put k=a -> ok v1@r5 [0..10]
             c1 #2 del k -> ok @r6 [11..20]
             c1 #3 put k=b -> ok v1@r6 [21..30]",
            &["c1 #3", "not above"],
        );
    }

    #[test]
    fn unreported_versions_are_not_checked_but_values_are() {
        // A Redis client: SET answers OK, GET the value alone (v0@r0).
        accepts(
            "c1 #1 put k=a -> ok v0@r0 [0..10]
             c2 #2 get k -> ok a v0@r0 [11..20]
             c3 #3 put k=b -> ok v2@r7 [21..30]
             c2 #4 get k -> ok b v0@r0 [31..40]
             c3 #5 get k -> ok b v2@r7 [41..50]",
        );
        rejects(
            "c1 #1 put k=a -> ok v0@r0 [0..10]
             c3 #2 put k=b -> ok v0@r0 [11..20]
             c2 #3 get k -> ok a v0@r0 [21..30]",
            &["c2 #3", "different value"],
        );
        // The versions it did not report still count.
        rejects(
            "c1 #1 put k=a -> ok v0@r0 [0..10]
             c3 #2 put k=b -> ok v1@r5 [11..20]",
            &["c3 #2", "version does not follow"],
        );
    }

    #[test]
    fn read_of_a_deleted_value_is_rejected() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c1 #2 del k -> ok @r2 [11..20]
             c2 #3 get k -> ok a v1@r1 [21..30]",
            &["c2 #3", "is absent"],
        );
    }

    #[test]
    fn read_of_a_write_that_was_not_applied_is_rejected() {
        rejects(
            "c1 #1 put k=a -> fail not-applied(dropped) [0..10]
             c2 #2 get k -> ok a v1@r1 [20..30]",
            &[
                "c2 #2",
                "c1 #1 put k=a -> fail not-applied(dropped)",
                "never applied",
            ],
        );
    }

    #[test]
    fn informative_failures_are_checked_as_reads() {
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=b if-absent -> fail precondition-failed(absent) [20..30]",
            &["c2 #2", "the key exists"],
        );
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=b if-rev=1 -> fail precondition-failed(r1) [20..30]",
            &["c2 #2", "precondition holds"],
        );
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 del k -> fail not-found [20..30]",
            &["c2 #2", "found the key absent"],
        );
        // Concurrent with the put, the refusal may come first.
        accepts(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=b if-exists -> fail precondition-failed(absent) [5..30]
             c3 #3 del k -> fail not-found [5..30]",
        );
    }

    #[test]
    fn running_out_of_budget_is_inconclusive_not_a_pass() {
        let history = History::from_trace(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=b -> ok v2@r2 [0..10]
             c3 #3 get k -> ok b v2@r2 [0..10]",
        )
        .unwrap();
        let config = LinearizabilityConfig {
            step_budget: 2,
            ..LinearizabilityConfig::default()
        };
        let report = check(&history, &config);
        assert!(!report.is_linearizable());
        assert_eq!(report.violations().count(), 0);
        assert_eq!(
            report.inconclusive_keys().collect::<Vec<_>>(),
            [&Bytes::from("k")]
        );
    }

    /// Seed 98 of the simulation ran out of a 10M-step budget on a key with 15
    /// unknown puts whose values nobody read: every subset of them was a
    /// different state. As one class of interchangeable writes they cost a
    /// few steps each.
    #[test]
    fn many_unread_unknown_writes_are_decided_quickly() {
        let mut trace = String::from("c0 #0 put k=start -> ok v1@r1 [0..5]\n");
        for i in 1..=40 {
            let _ = writeln!(trace, "c{i} #{i} put k=u{i} -> unknown [{i}0..{i}5]");
        }
        // Seven of the unknown puts took effect before this acknowledged one.
        let _ = writeln!(trace, "c99 #99 put k=end -> ok v9@r100 [1000..1010]");
        let _ = writeln!(trace, "c99 #100 get k -> ok end v9@r100 [1020..1030]");
        let history = History::from_trace(&trace).unwrap();
        let config = LinearizabilityConfig {
            step_budget: 100_000,
            ..LinearizabilityConfig::default()
        };
        let report = check(&history, &config);
        assert!(report.is_linearizable(), "{report:#?}");

        // Interchangeable does not mean anything goes: 40 unknown puts
        // cannot explain version 43 (1 + 40 + 1 at most).
        let too_many = trace.replace("v9@r100", "v43@r100");
        let report = check(&History::from_trace(&too_many).unwrap(), &config);
        assert_eq!(report.violations().count(), 1, "{report:#?}");
    }

    #[test]
    fn interchangeable_writes_keep_their_own_invoke_times() {
        // Only the put invoked before the read may explain its version; the
        // other unread unknown put comes too late.
        accepts(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=x -> unknown [11..12]
             c3 #3 put k=b -> ok v3@r5 [20..30]
             c4 #4 put k=y -> unknown [40..50]",
        );
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c3 #3 put k=b -> ok v3@r5 [20..30]
             c2 #2 put k=x -> unknown [40..41]
             c4 #4 put k=y -> unknown [40..50]",
            &["c3 #3", "version does not follow"],
        );
        // Different preconditions are different classes: the create-only put
        // cannot stand in for the plain one once the key exists.
        rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=x if-absent -> unknown [11..12]
             c3 #3 put k=b -> ok v3@r5 [20..30]",
            &["c3 #3"],
        );
        // Deletes of unknown outcome form a class too.
        accepts(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 del k -> unknown [11..12]
             c5 #5 del k -> unknown [11..13]
             c3 #3 put k=b -> ok v1@r5 [20..30]
             c4 #4 get k -> ok b v1@r5 [31..32]",
        );
    }

    #[test]
    fn failure_report_shows_the_longest_prefix_and_what_cannot_follow() {
        let text = rejects(
            "c1 #1 put k=a -> ok v1@r1 [0..10]
             c2 #2 put k=b -> ok v2@r2 [11..20]
             c3 #3 get k -> ok b v2@r2 [21..30]
             c1 #4 get k -> ok a v1@r1 [31..40]
             c2 #5 put k=c -> ok v3@r4 [35..50]",
            &[],
        );
        assert_eq!(
            text,
            "[linearizability] key k: no linearization exists. \
             Longest linearizable prefix: 4 of 5 operations:
  c1 #1 put k=a -> ok v1@r1 [0..10]
  c2 #2 put k=b -> ok v2@r2 [11..20]
  c3 #3 get k -> ok b v2@r2 [21..30]
  c2 #5 put k=c -> ok v3@r4 [35..50]
after which the key holds c v3@r4.
None of the operations that may come next fits:
  c1 #4 get k -> ok a v1@r1 [31..40]
    it read a different value than the key holds
"
        );
    }
}
