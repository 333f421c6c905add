//! The replicated key-value state machine of one partition.
//!
//! Owns the ordered map `key -> {value, version, create_revision, mod_revision,
//! deadline}` of one partition, the partition's clock, and the meaning of
//! the commands that change them (put,
//! delete, each with an optional precondition: create-only, must-exist or
//! compare-and-set on `mod_revision`; and the read-modify-writes increment
//! and append, which Redis's INCRBY and APPEND need to be atomic; and the
//! put-all of several keys at one revision, Redis's MSET within a slot; the
//! expire of one key and the sweep of expired ones). Every
//! replica of the partition applies
//! the same committed log entries in the same order through [`KvStore::apply`]
//! and so holds the same map, byte for byte.
//!
//! It does not replicate, route, persist or check limits: Raft decides what is
//! committed, the node decides which partition a key belongs to and rejects
//! oversized or invalid keys and values *before proposing*. Whatever bytes do
//! reach a log entry, `apply` never panics on them: an entry that does not
//! decode is applied as a no-op ([`ApplyOutcome::Invalid`]) on every replica.
//!
//! Invariants (asserted in code and checked by the tests below):
//! - `apply` is a pure function of (state, entry index, entry bytes): no clock
//!   (time comes only in the entry's stamp), no randomness, no `HashMap` order.
//! - Entries are applied in log order, each once: the index passed to `apply`
//!   is strictly greater than [`KvStore::applied_index`]. This is the caller's
//!   contract, not outside input, so a violation is a bug and panics (`assert!`).
//! - Every entry advances `applied_index`, whatever its outcome (applied,
//!   precondition failed, not found, invalid, empty).
//! - `create_revision` and `mod_revision` are the Raft log index of the entry
//!   that created / last wrote the key. Indices strictly increase, so a
//!   `mod_revision` is never reused, even across delete and re-create, which
//!   is what makes it safe for compare-and-set (and as an ETag).
//! - `version` is 1 on create and +1 per update; a delete followed by a put
//!   starts again at 1 with a new `create_revision`.
//! - [`KvStore::snapshot`] is deterministic (same state, same bytes) and
//!   [`KvStore::restore`] inverts it; `restore` validates the image and
//!   returns an error, never panics, on corrupt input.
//!
//! Memory: each live key is one heap allocation, a `Record` holding its
//! metadata, key and value back to back (28 bytes of header, no `Bytes`
//! handles or reference counts), kept in a `BTreeSet` ordered by key. Reads
//! copy the key and value out; a record that leaves the map (overwritten or
//! deleted) is handed out without a copy. This brought a replica's memory
//! per key from about 3.2x Redis's to about 2.5x (`scripts/redis_bench.sh
//! 20000 950000`, 614k live keys, 100-byte values); with the Raft log's
//! changes of the same day (no snapshot image kept, compaction at half the
//! state) a replica holds 311-320 bytes per key, 1.35-1.39x Redis's 231.
//!
//! Expiry: every entry carries its leader's wall clock; the partition's
//! clock is the largest applied, so it is part of the replicated state and
//! never goes back. A key whose deadline it has reached is gone for every
//! read and command from then on (see [`KvStore`] and
//! `docs/architecture.md`, "Expiry", for why reads on the leader may first
//! need a sweep entry). Keys with a deadline cost two side-map entries
//! each; keys without one nothing.
//!
//! Not implemented yet: multi-key transactions beyond put-all (no
//! conditions across keys); keeping history of old revisions.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::watch::{Change, ChangeKind};
use bytes::Bytes;
use prost::Message;
use ringkv_proto::v1 as proto;
use xxhash_rust::xxh3::Xxh3;

/// One live key and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    /// 1 on create, +1 per update.
    pub version: u64,
    /// Log index of the entry that (last) created the key.
    pub create_revision: u64,
    /// Log index of the entry that last wrote the key.
    pub mod_revision: u64,
    /// When the key expires, Unix milliseconds (`None`: never).
    pub expires_at: Option<u64>,
}

impl KeyValue {
    /// The wire form, shared by snapshots and the client API.
    pub fn to_proto(&self) -> proto::KeyValue {
        proto::KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            version: self.version,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            expires_at_unix_ms: self.expires_at.unwrap_or(0),
        }
    }

    /// From the wire form, as is (checks belong to the caller, as in
    /// [`KvStore::restore`]).
    pub fn from_proto(kv: proto::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: kv.value,
            version: kv.version,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            expires_at: (kv.expires_at_unix_ms != 0).then_some(kv.expires_at_unix_ms),
        }
    }
}

/// A condition on the key's current state, checked when the command is
/// applied (on every replica alike). If it does not hold, nothing changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precondition {
    /// Unconditional.
    #[default]
    None,
    /// Create-only: the key must not exist.
    MustNotExist,
    /// The key must exist, at any revision.
    MustExist,
    /// Compare-and-set: the key must exist with exactly this `mod_revision`.
    /// Revisions start at 1, so `ModRevision(0)` never holds.
    ModRevision(u64),
}

impl Precondition {
    /// Whether the key's current state satisfies this condition, given its
    /// `mod_revision` (`None`: absent).
    fn holds(self, current_mod_revision: Option<u64>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::MustNotExist => current_mod_revision.is_none(),
            Precondition::MustExist => current_mod_revision.is_some(),
            Precondition::ModRevision(revision) => current_mod_revision == Some(revision),
        }
    }

    fn to_proto(self) -> Option<proto::Precondition> {
        use proto::precondition::Kind;
        let kind = match self {
            Precondition::None => return None,
            Precondition::MustNotExist => Kind::MustNotExist(true),
            Precondition::MustExist => Kind::MustExist(true),
            Precondition::ModRevision(revision) => Kind::ModRevision(revision),
        };
        Some(proto::Precondition { kind: Some(kind) })
    }

    fn from_proto(precondition: Option<proto::Precondition>) -> Result<Self, DecodeError> {
        use proto::precondition::Kind;
        let kind = precondition.and_then(|p| p.kind);
        Ok(match kind {
            None => Precondition::None,
            Some(Kind::MustNotExist(true)) => Precondition::MustNotExist,
            Some(Kind::MustExist(true)) => Precondition::MustExist,
            Some(Kind::ModRevision(revision)) => Precondition::ModRevision(revision),
            // A flag that is present but false states no condition; rather than
            // guess whether the writer meant "none", refuse the command.
            Some(Kind::MustNotExist(false)) => {
                return Err(DecodeError::FalsePreconditionFlag("must_not_exist"));
            }
            Some(Kind::MustExist(false)) => {
                return Err(DecodeError::FalsePreconditionFlag("must_exist"));
            }
        })
    }
}

/// What a put does to the key's expiry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Ttl {
    /// The key does not expire (any expiry it had is cleared), as after
    /// Redis's plain SET.
    #[default]
    Clear,
    /// The key keeps the expiry it has (Redis's SET ... KEEPTTL).
    Keep,
    /// The key expires at this Unix time in milliseconds: a deadline the
    /// leader stamped, never a duration (replicas must agree on it).
    At(u64),
}

/// The payload of one log entry of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Bytes,
        value: Bytes,
        precondition: Precondition,
        ttl: Ttl,
    },
    Delete {
        key: Bytes,
        precondition: Precondition,
    },
    /// Adds `delta` to the value read as a decimal `i64` (absent: 0); see
    /// [`parse_integer`] for what counts as one. Keeps the key's expiry.
    Increment { key: Bytes, delta: i64 },
    /// Appends `suffix` to the value (absent: empty), unless the result would
    /// be longer than `max_value_bytes`. The proposer's limit travels in the
    /// entry, so that every replica decides alike whatever its own settings.
    /// Keeps the key's expiry.
    Append {
        key: Bytes,
        suffix: Bytes,
        max_value_bytes: u64,
    },
    /// Writes every pair unconditionally, all in this one entry (Redis's
    /// MSET within a slot): every key gets the entry's index as its
    /// `mod_revision`, and no expiry. The node proposes it only for keys of
    /// one partition. A key given more than once is written once, with its
    /// last value.
    PutAll { pairs: Vec<(Bytes, Bytes)> },
    /// Sets (`Some`: a Unix time in milliseconds) or clears (`None`) the
    /// expiry of a live key (Redis's EXPIRE family and PERSIST). A deadline
    /// the partition's clock has already reached deletes the key.
    Expire { key: Bytes, at: Option<u64> },
    /// The expiry sweep: advances the partition's clock like any entry,
    /// then removes up to `max_keys` of the keys whose deadline it has
    /// reached, earliest deadline first (they are gone for reads already;
    /// this reclaims their memory).
    Sweep { max_keys: u32 },
}

/// Longest decimal `i64` in bytes (`-9223372036854775808`).
pub const MAX_INTEGER_BYTES: usize = 20;

/// The value as a signed 64-bit decimal integer, as Redis reads one for
/// INCR: an optional `-`, then digits without a leading zero (`0` itself
/// aside), nothing else (no `+`, spaces or `-0`), in range.
pub fn parse_integer(value: &[u8]) -> Option<i64> {
    // Longer cannot be in range: stop before scanning a large value.
    // (Empty falls to the match below.)
    if value.len() > MAX_INTEGER_BYTES {
        return None;
    }
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    let canonical = match digits {
        [b'0'] => value.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl Command {
    /// The key a single-key command touches (`None` for [`Command::PutAll`]
    /// and [`Command::Sweep`]).
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Command::Put { key, .. }
            | Command::Delete { key, .. }
            | Command::Increment { key, .. }
            | Command::Append { key, .. }
            | Command::Expire { key, .. } => Some(key),
            Command::PutAll { .. } | Command::Sweep { .. } => None,
        }
    }

    /// Bytes an encoded command adds beyond its key and value: the tags
    /// and lengths of the command, its put or delete, key, value and
    /// precondition, expiry and clock stamp (at most 54 bytes; with room
    /// to spare).
    pub const MAX_OVERHEAD_BYTES: usize = 64;

    /// Bytes each pair of a [`Command::PutAll`] adds beyond its key and
    /// value: the pair's tag and length, the key's and the value's (at
    /// most 1 + 5 + 1 + 5 + 1 + 5 for a pair under 4 GiB). The node counts
    /// them against the limit of one entry, so that a put-all entry is
    /// never larger than the largest single put.
    pub const PAIR_OVERHEAD_BYTES: usize = 18;

    /// The log entry bytes (protobuf `ringkv.v1.Command`), stamped with the
    /// proposing leader's wall clock `now_ms` (Unix milliseconds).
    pub fn encode(&self, now_ms: u64) -> Bytes {
        use proto::command::Op;
        let op = match self {
            Command::Put {
                key,
                value,
                precondition,
                ttl,
            } => Op::Put(proto::PutCommand {
                key: key.clone(),
                value: value.clone(),
                precondition: precondition.to_proto(),
                expires_at_unix_ms: match ttl {
                    Ttl::At(at) => *at,
                    Ttl::Clear | Ttl::Keep => 0,
                },
                keep_ttl: *ttl == Ttl::Keep,
            }),
            Command::Delete { key, precondition } => Op::Delete(proto::DeleteCommand {
                key: key.clone(),
                precondition: precondition.to_proto(),
            }),
            Command::Increment { key, delta } => Op::Increment(proto::IncrementCommand {
                key: key.clone(),
                delta: *delta,
            }),
            Command::Append {
                key,
                suffix,
                max_value_bytes,
            } => Op::Append(proto::AppendCommand {
                key: key.clone(),
                suffix: suffix.clone(),
                max_value_bytes: *max_value_bytes,
            }),
            Command::PutAll { pairs } => Op::PutAll(proto::PutAllCommand {
                pairs: pairs
                    .iter()
                    .map(|(key, value)| proto::KeyValuePair {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            }),
            Command::Expire { key, at } => Op::Expire(proto::ExpireCommand {
                key: key.clone(),
                expires_at_unix_ms: at.unwrap_or(0),
            }),
            Command::Sweep { max_keys } => Op::Sweep(proto::SweepCommand {
                max_keys: *max_keys,
            }),
        };
        proto::Command {
            op: Some(op),
            now_unix_ms: now_ms,
        }
        .encode_to_vec()
        .into()
    }

    /// Parses log entry bytes into the command and the clock it was stamped
    /// with. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<(Command, u64), DecodeError> {
        use proto::command::Op;
        let command = proto::Command::decode(bytes)?;
        let decoded = match command.op {
            Some(Op::Put(put)) => Command::Put {
                key: put.key,
                value: put.value,
                precondition: Precondition::from_proto(put.precondition)?,
                ttl: match (put.expires_at_unix_ms, put.keep_ttl) {
                    (0, false) => Ttl::Clear,
                    (0, true) => Ttl::Keep,
                    (at, false) => Ttl::At(at),
                    (_, true) => return Err(DecodeError::DeadlineAndKeepTtl),
                },
            },
            Some(Op::Delete(delete)) => Command::Delete {
                key: delete.key,
                precondition: Precondition::from_proto(delete.precondition)?,
            },
            Some(Op::Increment(increment)) => Command::Increment {
                key: increment.key,
                delta: increment.delta,
            },
            Some(Op::Append(append)) => Command::Append {
                key: append.key,
                suffix: append.suffix,
                max_value_bytes: append.max_value_bytes,
            },
            Some(Op::PutAll(put_all)) if put_all.pairs.is_empty() => {
                return Err(DecodeError::NoPairs);
            }
            Some(Op::PutAll(put_all)) => Command::PutAll {
                pairs: put_all
                    .pairs
                    .into_iter()
                    .map(|pair| (pair.key, pair.value))
                    .collect(),
            },
            Some(Op::Expire(expire)) => Command::Expire {
                key: expire.key,
                at: (expire.expires_at_unix_ms != 0).then_some(expire.expires_at_unix_ms),
            },
            Some(Op::Sweep(sweep)) => Command::Sweep {
                max_keys: sweep.max_keys,
            },
            None => return Err(DecodeError::MissingOp),
        };
        Ok((decoded, command.now_unix_ms))
    }
}

/// What applying one log entry did; the leader's node turns it into the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The key was written; `mod_revision` is the entry's index. `previous`:
    /// the key just before (`None`: it was absent), for GETSET and SET…GET.
    Put {
        version: u64,
        mod_revision: u64,
        created: bool,
        previous: Option<KeyValue>,
    },
    /// Every key of a put-all was written, at `mod_revision` (the entry's
    /// index); `created` of them did not exist before.
    PutAll { mod_revision: u64, created: u64 },
    /// An expire set or cleared the key's expiry (`changed`; then the key
    /// was written at `mod_revision`, the entry's index, or deleted if the
    /// deadline had passed), or found nothing to clear.
    ExpirySet { changed: bool, mod_revision: u64 },
    /// A sweep removed `removed` expired keys.
    Swept { removed: u64 },
    /// The key was removed; `previous` is what it held (for GETDEL).
    Deleted { previous: KeyValue },
    /// An increment wrote `value` (in decimal) to the key.
    Incremented {
        value: i64,
        version: u64,
        mod_revision: u64,
    },
    /// An append left the key's value `len` bytes long.
    Appended {
        len: u64,
        version: u64,
        mod_revision: u64,
    },
    /// A read-modify-write could not be done on the key's current value:
    /// nothing changed.
    Refused(Refusal),
    /// Unconditional delete (or delete with `MustNotExist`) of an absent key:
    /// nothing changed.
    NotFound,
    /// The precondition did not hold: nothing changed. `None`: the key is absent.
    PreconditionFailed { current_mod_revision: Option<u64> },
    /// The entry did not decode as a command. Applied as a no-op on every
    /// replica alike; the string says why.
    Invalid(String),
    /// An empty entry (a new leader's no-op entry).
    Noop,
}

/// Why an increment or append left the key unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
    #[error("the appended value would be {len} bytes; the limit is {max}")]
    TooLarge { len: u64, max: u64 },
}

/// Why command or snapshot bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error(
        "command has no operation (none of put, delete, increment, append, put-all, expire, sweep)"
    )]
    MissingOp,
    #[error("put command has both a deadline and keep_ttl; it may have one or the other")]
    DeadlineAndKeepTtl,
    #[error("put-all command has no pairs")]
    NoPairs,
    #[error("precondition flag {0} is present but false; set it to true or leave it out")]
    FalsePreconditionFlag(&'static str),
    #[error(
        "snapshot entry {entry}: key is not greater than the previous key (unsorted or duplicate)"
    )]
    KeyOutOfOrder { entry: usize },
    #[error("snapshot entry {entry}: create_revision is 0, but log indices start at 1")]
    ZeroCreateRevision { entry: usize },
    #[error(
        "snapshot entry {entry}: mod_revision {mod_revision} is before create_revision {create_revision}"
    )]
    ModBeforeCreate {
        entry: usize,
        create_revision: u64,
        mod_revision: u64,
    },
    #[error(
        "snapshot entry {entry}: mod_revision {mod_revision} is after the snapshot's applied_index {applied_index}"
    )]
    RevisionAfterApplied {
        entry: usize,
        mod_revision: u64,
        applied_index: u64,
    },
    #[error(
        "snapshot entry {entry}: version {version} is impossible for a key created at {create_revision} \
         and last written at {mod_revision} (must be 1 if they are equal, else 2..=mod-create+1)"
    )]
    ImpossibleVersion {
        entry: usize,
        version: u64,
        create_revision: u64,
        mod_revision: u64,
    },
}

/// One live key as the store holds it: its metadata, key and value in one
/// allocation (`version`, `create_revision`, `mod_revision` as 8 bytes
/// each, the key's length as 4, then the key, then the value), ordered and
/// compared by key alone, so that the map can be searched by key.
///
/// One allocation per key, rather than a map from a `Bytes` key to a
/// [`KeyValue`] (which held two allocations, a shared-buffer header for
/// the key it kept twice, and 120 bytes of map slot per key), is what
/// keeps a replica's memory per key near Redis's: about 28 bytes of
/// header and 16 of map slot (x the tree's fill) over the key and value.
#[derive(Clone)]
struct Record(Box<[u8]>);

/// Bytes of a [`Record`] before its key.
const RECORD_HEADER_BYTES: usize = 28;

impl Record {
    fn new(
        key: &[u8],
        value: &[u8],
        version: u64,
        create_revision: u64,
        mod_revision: u64,
    ) -> Self {
        // Keys come from log entries and snapshots, which transports and
        // the WAL bound far below 4 GiB.
        let key_len = u32::try_from(key.len()).expect("a key shorter than 4 GiB");
        let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES + key.len() + value.len());
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&create_revision.to_le_bytes());
        bytes.extend_from_slice(&mod_revision.to_le_bytes());
        bytes.extend_from_slice(&key_len.to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        Record(bytes.into_boxed_slice())
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut word = [0; 8];
        word.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(word)
    }

    fn version(&self) -> u64 {
        self.u64_at(0)
    }

    fn create_revision(&self) -> u64 {
        self.u64_at(8)
    }

    fn mod_revision(&self) -> u64 {
        self.u64_at(16)
    }

    fn key_len(&self) -> usize {
        let mut word = [0; 4];
        word.copy_from_slice(&self.0[24..RECORD_HEADER_BYTES]);
        u32::from_le_bytes(word) as usize
    }

    fn key(&self) -> &[u8] {
        &self.0[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + self.key_len()]
    }

    fn value(&self) -> &[u8] {
        &self.0[RECORD_HEADER_BYTES + self.key_len()..]
    }

    /// Key and value bytes (what `data_bytes` counts).
    fn data_len(&self) -> usize {
        self.0.len() - RECORD_HEADER_BYTES
    }

    /// The key as the API hands it out, taking over this record's
    /// allocation (key and value are slices of it, no copy): for a record
    /// that leaves the map (overwritten or deleted).
    fn into_key_value(self, expires_at: Option<u64>) -> KeyValue {
        let (version, create_revision, mod_revision) =
            (self.version(), self.create_revision(), self.mod_revision());
        let key_end = RECORD_HEADER_BYTES + self.key_len();
        let bytes = Bytes::from(self.0);
        KeyValue {
            key: bytes.slice(RECORD_HEADER_BYTES..key_end),
            value: bytes.slice(key_end..),
            version,
            create_revision,
            mod_revision,
            expires_at,
        }
    }

    /// A copy, as the API hands it out.
    fn to_key_value(&self, expires_at: Option<u64>) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(self.key()),
            value: Bytes::copy_from_slice(self.value()),
            version: self.version(),
            create_revision: self.create_revision(),
            mod_revision: self.mod_revision(),
            expires_at,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Record {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Record {}

impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Record {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(other.key())
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_key_value(None).fmt(f)
    }
}

/// The state machine of one partition: its keys in order, and the index of
/// the last log entry applied.
///
/// Expiry: the store keeps a clock, the largest wall-clock stamp of the
/// entries applied (each leader stamps what it proposes), so time moves
/// only through the log and every replica sees it alike. A key whose
/// deadline the clock has reached is gone: reads skip it, every command
/// treats it as absent, and it never comes back even if a later leader's
/// clock is behind (the clock never goes back). Its record stays until a
/// [`Command::Sweep`] (or a command on that key) removes it.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    entries: BTreeSet<Record>,
    applied_index: u64,
    /// Key and value bytes of every key held (expired ones until swept):
    /// about the size of a snapshot.
    data_bytes: u64,
    /// The partition's clock, Unix milliseconds: the largest stamp applied.
    clock_ms: u64,
    /// The deadline of every key that has one, and the same by deadline.
    deadlines: BTreeMap<Bytes, u64>,
    expiring: BTreeSet<(u64, Bytes)>,
    /// Whether applying records [`Change`]s for watchers
    /// ([`KvStore::record_changes`]); not part of the state.
    recording: bool,
    changes: Vec<Change>,
}

/// Equal stores hold the same keys with the same values, metadata and
/// deadlines, have the same clock, and have applied the same entries.
impl PartialEq for KvStore {
    fn eq(&self, other: &Self) -> bool {
        self.applied_index == other.applied_index
            && self.data_bytes == other.data_bytes
            && self.clock_ms == other.clock_ms
            && self.deadlines == other.deadlines
            && self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.0 == b.0)
    }
}

impl Eq for KvStore {}

impl KvStore {
    /// An empty partition, nothing applied.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the committed log entry `index` with payload `data`.
    ///
    /// Empty `data` is a no-op entry; bytes that do not decode give
    /// [`ApplyOutcome::Invalid`] and change nothing. Either way the applied
    /// index advances to `index`.
    ///
    /// # Panics
    /// If `index <= self.applied_index()`: the caller applies entries in log
    /// order, each once.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> ApplyOutcome {
        if data.is_empty() {
            self.advance(index);
            return ApplyOutcome::Noop;
        }
        match Command::decode(data) {
            Ok((command, now_ms)) => self.apply_command(index, &command, now_ms),
            Err(error) => {
                self.advance(index);
                ApplyOutcome::Invalid(error.to_string())
            }
        }
    }

    /// From now on, record what each applied entry changes, key by key, in
    /// order, for [`KvStore::take_changes`] (the node does, for watchers).
    pub fn record_changes(&mut self) {
        self.recording = true;
    }

    /// The changes recorded since the last call (all made by entries
    /// applied since, in order; see [`crate::watch`]).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn record(&mut self, revision: u64, kind: ChangeKind, key: &[u8], value: Bytes, version: u64) {
        if self.recording {
            self.changes.push(Change {
                revision,
                kind,
                key: Bytes::copy_from_slice(key),
                value,
                version,
            });
        }
    }

    /// Applies an already decoded command as log entry `index`, stamped
    /// with the proposer's clock `now_ms`.
    ///
    /// # Panics
    /// If `index <= self.applied_index()`, as [`KvStore::apply`].
    pub fn apply_command(&mut self, index: u64, command: &Command, now_ms: u64) -> ApplyOutcome {
        self.advance(index);
        if now_ms > self.clock_ms {
            if self.recording {
                // The keys this entry's stamp expires, at its revision.
                let due: Vec<Bytes> = self
                    .expiring
                    .range((self.clock_ms.saturating_add(1), Bytes::new())..)
                    .take_while(|(deadline, _)| *deadline <= now_ms)
                    .map(|(_, key)| key.clone())
                    .collect();
                for key in due {
                    self.record(index, ChangeKind::Expire, &key, Bytes::new(), 0);
                }
            }
            self.clock_ms = now_ms;
        }
        let Some(key) = command.key() else {
            return match command {
                Command::PutAll { pairs } => self.put_all(index, pairs),
                Command::Sweep { max_keys } => self.sweep(*max_keys),
                _ => unreachable!("every command but put-all and sweep has a key"),
            };
        };
        // An expired key is absent for every command: take it out first.
        if self.deadline(key).is_some_and(|d| d <= self.clock_ms) {
            self.remove(key);
        }
        let current = self.entries.get(key.as_ref());
        let current_mod_revision = current.map(Record::mod_revision);
        if let Command::Put { precondition, .. } | Command::Delete { precondition, .. } = command
            && !precondition.holds(current_mod_revision)
        {
            return ApplyOutcome::PreconditionFailed {
                current_mod_revision,
            };
        }
        match command {
            Command::Put {
                key, value, ttl, ..
            } => {
                let previous = self.write(index, key, value);
                match ttl {
                    Ttl::Keep => {}
                    Ttl::Clear => self.set_deadline(key, None),
                    Ttl::At(at) => {
                        self.set_deadline(key, Some(*at));
                        if *at <= self.clock_ms {
                            self.record(index, ChangeKind::Expire, key, Bytes::new(), 0);
                        }
                    }
                }
                let (version, created) = (
                    previous.as_ref().map_or(1, |kv| kv.version + 1),
                    previous.is_none(),
                );
                ApplyOutcome::Put {
                    version,
                    mod_revision: index,
                    created,
                    previous,
                }
            }
            Command::Delete { key, .. } => match self.remove(key) {
                Some(previous) => {
                    self.record(index, ChangeKind::Delete, key, Bytes::new(), 0);
                    ApplyOutcome::Deleted { previous }
                }
                None => ApplyOutcome::NotFound,
            },
            Command::Increment { key, delta } => {
                let old = match current {
                    None => 0,
                    Some(record) => match parse_integer(record.value()) {
                        Some(old) => old,
                        None => return ApplyOutcome::Refused(Refusal::NotAnInteger),
                    },
                };
                let Some(value) = old.checked_add(*delta) else {
                    return ApplyOutcome::Refused(Refusal::Overflow);
                };
                let previous = self.write(index, key, value.to_string().as_bytes());
                ApplyOutcome::Incremented {
                    value,
                    version: previous.map_or(1, |kv| kv.version + 1),
                    mod_revision: index,
                }
            }
            Command::Append {
                key,
                suffix,
                max_value_bytes,
            } => {
                let old = current.map_or(&[][..], Record::value);
                let len = (old.len() + suffix.len()) as u64;
                if len > *max_value_bytes {
                    return ApplyOutcome::Refused(Refusal::TooLarge {
                        len,
                        max: *max_value_bytes,
                    });
                }
                let mut value = Vec::with_capacity(old.len() + suffix.len());
                value.extend_from_slice(old);
                value.extend_from_slice(suffix);
                let previous = self.write(index, key, &value);
                ApplyOutcome::Appended {
                    len,
                    version: previous.map_or(1, |kv| kv.version + 1),
                    mod_revision: index,
                }
            }
            Command::Expire { key, at } => {
                let Some(record) = current else {
                    return ApplyOutcome::NotFound;
                };
                if at.is_none() && self.deadline(key).is_none() {
                    return ApplyOutcome::ExpirySet {
                        changed: false,
                        mod_revision: record.mod_revision(),
                    };
                }
                if at.is_some_and(|at| at <= self.clock_ms) {
                    // A deadline already passed: the key goes now (Redis's
                    // EXPIRE with a time in the past deletes).
                    self.remove(key);
                    self.record(index, ChangeKind::Expire, key, Bytes::new(), 0);
                } else {
                    // A change of expiry is a write of the key: a
                    // compare-and-set on its old revision must fail.
                    let value = record.value().to_vec();
                    self.write(index, key, &value);
                    self.set_deadline(key, *at);
                }
                ApplyOutcome::ExpirySet {
                    changed: true,
                    mod_revision: index,
                }
            }
            Command::PutAll { .. } | Command::Sweep { .. } => {
                unreachable!("put-all and sweep returned above")
            }
        }
    }

    /// Writes every pair as entry `index`. A key given twice is written once,
    /// with its last value: a second write at the same index would make its
    /// version disagree with its revisions (see [`KvStore::restore`]).
    fn put_all(&mut self, index: u64, pairs: &[(Bytes, Bytes)]) -> ApplyOutcome {
        let mut last: BTreeMap<&Bytes, &Bytes> = BTreeMap::new();
        for (key, value) in pairs {
            last.insert(key, value);
        }
        let mut created = 0;
        for (key, value) in last {
            if self.deadline(key).is_some_and(|d| d <= self.clock_ms) {
                self.remove(key);
            }
            if self.write(index, key, value).is_none() {
                created += 1;
            }
            self.set_deadline(key, None);
        }
        ApplyOutcome::PutAll {
            mod_revision: index,
            created,
        }
    }

    /// Removes up to `max_keys` expired keys, earliest deadline first.
    fn sweep(&mut self, max_keys: u32) -> ApplyOutcome {
        let due: Vec<Bytes> = self
            .expiring
            .iter()
            .take_while(|(deadline, _)| *deadline <= self.clock_ms)
            .take(max_keys as usize)
            .map(|(_, key)| key.clone())
            .collect();
        for key in &due {
            self.remove(key);
        }
        ApplyOutcome::Swept {
            removed: due.len() as u64,
        }
    }

    /// Writes `value` to `key` as entry `index` (version +1, or 1 and created
    /// at `index` if absent); returns the key as it was. Leaves its deadline
    /// as it is.
    fn write(&mut self, index: u64, key: &[u8], value: &[u8]) -> Option<KeyValue> {
        let (version, create_revision, old_bytes) = match self.entries.get(key) {
            // Cannot overflow: version <= mod_revision - create_revision + 1
            // (checked by `restore`, kept by `apply`) and mod_revision < index.
            Some(record) => (
                record.version() + 1,
                record.create_revision(),
                record.data_len(),
            ),
            None => (1, index, 0),
        };
        self.data_bytes = self.data_bytes - old_bytes as u64 + (key.len() + value.len()) as u64;
        let record = Record::new(key, value, version, create_revision, index);
        if self.recording {
            let value = Bytes::copy_from_slice(value);
            self.record(index, ChangeKind::Put, key, value, version);
        }
        let deadline = self.deadline(key);
        self.entries
            .replace(record)
            .map(|old| old.into_key_value(deadline))
    }

    /// Takes `key` out (with its deadline); returns it as it was.
    fn remove(&mut self, key: &[u8]) -> Option<KeyValue> {
        let record = self.entries.take(key)?;
        self.data_bytes -= record.data_len() as u64;
        let deadline = self.deadline(key);
        self.set_deadline(key, None);
        Some(record.into_key_value(deadline))
    }

    fn deadline(&self, key: &[u8]) -> Option<u64> {
        if self.deadlines.is_empty() {
            return None;
        }
        self.deadlines.get(key).copied()
    }

    fn set_deadline(&mut self, key: &[u8], at: Option<u64>) {
        if let Some((key, old)) = self.deadlines.remove_entry(key) {
            self.expiring.remove(&(old, key));
        }
        if let Some(at) = at {
            let key = Bytes::copy_from_slice(key);
            self.deadlines.insert(key.clone(), at);
            self.expiring.insert((at, key));
        }
    }

    fn advance(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "kv: log entry {index} applied after entry {}; entries must be applied in log order, each once",
            self.applied_index
        );
        self.applied_index = index;
    }

    /// Whether a key with this deadline is gone at wall-clock time `now_ms`
    /// (or by the partition's clock, whichever is later).
    fn gone(&self, deadline: Option<u64>, now_ms: u64) -> bool {
        deadline.is_some_and(|d| d <= self.clock_ms.max(now_ms))
    }

    /// The key's value and metadata, if it exists and has not expired by
    /// the partition's clock (a copy).
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.get_at(key, 0)
    }

    /// As [`KvStore::get`], also treating as expired a key whose deadline
    /// the wall-clock time `now_ms` has reached (a replica's stale read
    /// with its own clock).
    pub fn get_at(&self, key: &[u8], now_ms: u64) -> Option<KeyValue> {
        let deadline = self.deadline(key);
        if self.gone(deadline, now_ms) {
            return None;
        }
        self.entries.get(key).map(|r| r.to_key_value(deadline))
    }

    /// The key's `mod_revision`, if it exists (without copying it out).
    pub fn mod_revision(&self, key: &[u8]) -> Option<u64> {
        if self.gone(self.deadline(key), 0) {
            return None;
        }
        self.entries.get(key).map(Record::mod_revision)
    }

    /// The partition's clock: the largest wall-clock stamp applied, Unix
    /// milliseconds (0: none yet).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Whether some key expires by wall-clock time `now_ms` but not yet by
    /// the partition's clock (only `key`, if given): a read at `now_ms`
    /// must first have an entry stamped `now_ms` applied, or it could see a
    /// key that a later read, under a leader whose clock is behind, would
    /// see again.
    pub fn expiry_pending(&self, key: Option<&[u8]>, now_ms: u64) -> bool {
        match key {
            Some(key) => self
                .deadline(key)
                .is_some_and(|d| self.clock_ms < d && d <= now_ms),
            None => self
                .expiring
                .range((self.clock_ms.saturating_add(1), Bytes::new())..)
                .next()
                .is_some_and(|(d, _)| *d <= now_ms),
        }
    }

    /// The earliest deadline of a key not yet swept, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.expiring.first().map(|(d, _)| *d)
    }

    /// Index of the last log entry applied (0: none).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Key and value bytes of every key held (expired ones until swept):
    /// about what a snapshot costs to build, write and send.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Number of live keys (not expired by the partition's clock).
    pub fn len(&self) -> usize {
        self.len_at(0)
    }

    /// Number of keys live at wall-clock time `now_ms` (or by the
    /// partition's clock, whichever is later).
    pub fn len_at(&self, now_ms: u64) -> usize {
        let now = self.clock_ms.max(now_ms);
        let expired = self.expiring.iter().take_while(|(d, _)| *d <= now).count();
        self.entries.len() - expired
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All live keys, in ascending byte order (copies).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = KeyValue> + '_ {
        self.range(&[], None)
    }

    /// Live keys in `[start, end)` in ascending order; `end: None` means no
    /// upper bound. An empty or inverted range yields nothing.
    pub fn range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl DoubleEndedIterator<Item = KeyValue> + use<'a> {
        self.range_at(start, end, 0)
    }

    /// As [`KvStore::range`], without the keys expired at wall-clock time
    /// `now_ms` (see [`KvStore::get_at`]).
    pub fn range_at<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
        now_ms: u64,
    ) -> impl DoubleEndedIterator<Item = KeyValue> + use<'a> {
        // `BTreeMap::range` panics on an inverted range; keys come from clients.
        let range = match end {
            Some(end) if end <= start => None,
            Some(end) => Some(
                self.entries
                    .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))),
            ),
            None => Some(
                self.entries
                    .range::<[u8], _>((Bound::Included(start), Bound::Unbounded)),
            ),
        };
        range.into_iter().flatten().filter_map(move |record| {
            let deadline = self.deadline(record.key());
            (!self.gone(deadline, now_ms)).then(|| record.to_key_value(deadline))
        })
    }

    /// At most `limit` live keys of `[start, end)`, in ascending order.
    pub fn scan<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> impl Iterator<Item = KeyValue> + use<'a> {
        self.range(start, end).take(limit)
    }

    /// Every key held, expired or not, with its deadline (for tests that
    /// compare with the snapshot image).
    #[cfg(test)]
    fn held(&self) -> impl Iterator<Item = KeyValue> + '_ {
        self.entries
            .iter()
            .map(|r| r.to_key_value(self.deadline(r.key())))
    }

    /// The whole state as protobuf `ringkv.v1.KvSnapshot`, keys ascending.
    /// Deterministic: equal stores give equal bytes.
    pub fn snapshot(&self) -> Bytes {
        let records: usize = self.entries.iter().map(|r| r.0.len()).sum();
        let mut bytes = Vec::with_capacity(records + 32);
        encode_snapshot_header(self.applied_index, &mut bytes);
        for record in &self.entries {
            encode_snapshot_entry(record, self.deadline(record.key()), &mut bytes);
        }
        encode_snapshot_trailer(self.clock_ms, &mut bytes);
        bytes.into()
    }

    /// Rebuilds a store from [`KvStore::snapshot`] bytes, checking that the
    /// image could have been produced by `apply`. Never panics.
    pub fn restore(bytes: &[u8]) -> Result<KvStore, DecodeError> {
        let image = proto::KvSnapshot::decode(bytes)?;
        let applied_index = image.applied_index;
        let mut records = Vec::with_capacity(image.entries.len());
        let mut deadlines = BTreeMap::new();
        let mut expiring = BTreeSet::new();
        let mut data_bytes = 0u64;
        let mut previous_key: Option<Bytes> = None;
        for (entry, kv) in image.entries.into_iter().enumerate() {
            if previous_key
                .as_ref()
                .is_some_and(|previous| kv.key <= previous)
            {
                return Err(DecodeError::KeyOutOfOrder { entry });
            }
            check_revisions(entry, &kv, applied_index)?;
            data_bytes += (kv.key.len() + kv.value.len()) as u64;
            records.push(Record::new(
                &kv.key,
                &kv.value,
                kv.version,
                kv.create_revision,
                kv.mod_revision,
            ));
            if kv.expires_at_unix_ms != 0 {
                deadlines.insert(kv.key.clone(), kv.expires_at_unix_ms);
                expiring.insert((kv.expires_at_unix_ms, kv.key.clone()));
            }
            previous_key = Some(kv.key);
        }
        Ok(KvStore {
            // Built from sorted keys in bulk: full tree nodes.
            entries: records.into_iter().collect(),
            applied_index,
            data_bytes,
            clock_ms: image.clock_unix_ms,
            deadlines,
            expiring,
            recording: false,
            changes: Vec::new(),
        })
    }

    /// xxh3-64 of the [`KvStore::snapshot`] bytes, computed without building
    /// them, so replicas (in the simulator, in anti-entropy checks) can be
    /// compared cheaply. Equal states have equal digests.
    pub fn digest(&self) -> u64 {
        let mut hasher = Xxh3::new();
        let mut buffer = Vec::new();
        encode_snapshot_header(self.applied_index, &mut buffer);
        hasher.update(&buffer);
        for record in &self.entries {
            buffer.clear();
            encode_snapshot_entry(record, self.deadline(record.key()), &mut buffer);
            hasher.update(&buffer);
        }
        buffer.clear();
        encode_snapshot_trailer(self.clock_ms, &mut buffer);
        hasher.update(&buffer);
        hasher.digest()
    }
}

/// The fields of `ringkv.v1.KvSnapshot` before its entries, exactly as
/// prost encodes them (`applied_index`, left out when 0). With
/// [`encode_snapshot_entry`] per key, the store encodes its image straight
/// from its records, with no copy of every key and value into messages
/// first; the tests check the bytes against prost's encoding.
fn encode_snapshot_header(applied_index: u64, out: &mut Vec<u8>) {
    if applied_index != 0 {
        prost::encoding::uint64::encode(1, &applied_index, out);
    }
}

/// The field of `ringkv.v1.KvSnapshot` after its entries (`clock_unix_ms`,
/// left out when 0), as prost encodes it.
fn encode_snapshot_trailer(clock_ms: u64, out: &mut Vec<u8>) {
    if clock_ms != 0 {
        prost::encoding::uint64::encode(3, &clock_ms, out);
    }
}

/// One `entries` field (2) of `ringkv.v1.KvSnapshot`: a `KeyValue` message
/// whose fields are written in number order and left out when empty or 0,
/// as prost writes them.
fn encode_snapshot_entry(record: &Record, deadline: Option<u64>, out: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let bytes_len = |tag: u32, b: &[u8]| {
        if b.is_empty() {
            0
        } else {
            key_len(tag) + encoded_len_varint(b.len() as u64) + b.len()
        }
    };
    let u64_len = |tag: u32, v: u64| {
        if v == 0 {
            0
        } else {
            prost::encoding::uint64::encoded_len(tag, &v)
        }
    };
    let put_bytes = |tag: u32, b: &[u8], out: &mut Vec<u8>| {
        if !b.is_empty() {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(b.len() as u64, out);
            out.extend_from_slice(b);
        }
    };
    let put_u64 = |tag: u32, v: u64, out: &mut Vec<u8>| {
        if v != 0 {
            prost::encoding::uint64::encode(tag, &v, out);
        }
    };
    let (key, value) = (record.key(), record.value());
    let (version, create_revision, mod_revision) = (
        record.version(),
        record.create_revision(),
        record.mod_revision(),
    );
    let deadline = deadline.unwrap_or(0);
    let len = bytes_len(1, key)
        + bytes_len(2, value)
        + u64_len(3, version)
        + u64_len(4, create_revision)
        + u64_len(5, mod_revision)
        + u64_len(6, deadline);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    put_bytes(1, key, out);
    put_bytes(2, value, out);
    put_u64(3, version, out);
    put_u64(4, create_revision, out);
    put_u64(5, mod_revision, out);
    put_u64(6, deadline, out);
}

/// Checks one snapshot entry's metadata against what `apply` can produce:
/// `1 <= create_revision <= mod_revision <= applied_index`, and a version
/// that fits the revisions (each update used its own log index).
fn check_revisions(
    entry: usize,
    kv: &proto::KeyValue,
    applied_index: u64,
) -> Result<(), DecodeError> {
    let (version, create_revision, mod_revision) =
        (kv.version, kv.create_revision, kv.mod_revision);
    if create_revision == 0 {
        return Err(DecodeError::ZeroCreateRevision { entry });
    }
    if mod_revision < create_revision {
        return Err(DecodeError::ModBeforeCreate {
            entry,
            create_revision,
            mod_revision,
        });
    }
    if mod_revision > applied_index {
        return Err(DecodeError::RevisionAfterApplied {
            entry,
            mod_revision,
            applied_index,
        });
    }
    let version_fits = if mod_revision == create_revision {
        version == 1
    } else {
        (2..=mod_revision - create_revision + 1).contains(&version)
    };
    if !version_fits {
        return Err(DecodeError::ImpossibleVersion {
            entry,
            version,
            create_revision,
            mod_revision,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn put(key: &str, value: &str) -> Command {
        put_if(key, value, Precondition::None)
    }

    fn put_if(key: &str, value: &str, precondition: Precondition) -> Command {
        Command::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            precondition,
            ttl: Ttl::Clear,
        }
    }

    fn delete_if(key: &str, precondition: Precondition) -> Command {
        Command::Delete {
            key: Bytes::copy_from_slice(key.as_bytes()),
            precondition,
        }
    }

    /// A store with `key` written at the given indices (first one creates it).
    fn key_value(key: &str, value: &str, version: u64, create: u64, modified: u64) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            version,
            create_revision: create,
            mod_revision: modified,
            expires_at: None,
        }
    }

    fn store_with(key: &str, indices: &[u64]) -> KvStore {
        let mut store = KvStore::new();
        for &index in indices {
            store.apply(index, &put(key, &format!("v{index}")).encode(0));
        }
        store
    }

    fn snapshot_image(applied_index: u64, entries: Vec<proto::KeyValue>) -> Vec<u8> {
        proto::KvSnapshot {
            applied_index,
            entries,
            clock_unix_ms: 0,
        }
        .encode_to_vec()
    }

    fn image_entry(
        key: &str,
        version: u64,
        create_revision: u64,
        mod_revision: u64,
    ) -> proto::KeyValue {
        proto::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            version,
            create_revision,
            mod_revision,
            expires_at_unix_ms: 0,
        }
    }

    /// Everything the module doc promises about a store's state.
    fn assert_invariants(store: &KvStore) {
        let mut data_bytes = 0;
        for kv in store.held() {
            assert!(
                check_revisions(0, &kv.to_proto(), store.applied_index).is_ok(),
                "{kv:?}"
            );
            data_bytes += (kv.key.len() + kv.value.len()) as u64;
        }
        assert_eq!(store.data_bytes(), data_bytes);
    }

    #[test]
    fn put_then_get_returns_value_and_metadata() {
        let mut store = KvStore::new();
        let outcome = store.apply(3, &put("k", "hello").encode(0));
        assert_eq!(
            outcome,
            ApplyOutcome::Put {
                version: 1,
                mod_revision: 3,
                created: true,
                previous: None,
            }
        );
        let kv = store.get(b"k").expect("key was put");
        assert_eq!(kv.value, Bytes::from_static(b"hello"));
        assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (1, 3, 3));
        assert_eq!(store.get(b"other"), None);
        assert_eq!((store.len(), store.applied_index()), (1, 3));
    }

    /// Replicas are compared with `==` (convergence checks, restore): two
    /// stores at the same index are equal only with the same keys, values
    /// and metadata.
    #[test]
    fn stores_at_one_index_are_equal_only_with_the_same_contents() {
        let same = |a: &str, b: &str| {
            let mut x = KvStore::new();
            x.apply(1, &put("k", a).encode(0));
            let mut y = KvStore::new();
            y.apply(1, &put("k", b).encode(0));
            x == y
        };
        assert!(same("v", "v"));
        assert!(!same("v", "w"), "same length, other value");
        assert!(!same("v", "vv"), "other length");
        let mut x = store_with("k", &[1, 2]);
        let mut y = store_with("k", &[1]);
        y.apply(2, &put("k", "v2").encode(0));
        assert_eq!(x, y);
        x.apply(3, &put("j", "a").encode(0));
        y.apply(3, &put("i", "a").encode(0));
        assert_ne!(x, y, "another key");
    }

    #[test]
    fn updates_increment_version_and_keep_create_revision() {
        let mut store = store_with("k", &[2, 5]);
        let outcome = store.apply(9, &put("k", "third").encode(0));
        assert_eq!(
            outcome,
            ApplyOutcome::Put {
                version: 3,
                mod_revision: 9,
                created: false,
                previous: Some(key_value("k", "v5", 2, 2, 5)),
            }
        );
        let kv = store.get(b"k").unwrap();
        assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (3, 2, 9));
        assert_eq!(kv.value, Bytes::from_static(b"third"));
    }

    #[test]
    fn delete_then_put_restarts_version_with_new_create_revision() {
        let mut store = store_with("k", &[1, 2]);
        assert_eq!(
            store.apply(3, &delete_if("k", Precondition::None).encode(0)),
            ApplyOutcome::Deleted {
                previous: key_value("k", "v2", 2, 1, 2)
            }
        );
        assert_eq!(store.get(b"k"), None);
        assert!(store.is_empty());
        store.apply(4, &put("k", "again").encode(0));
        let kv = store.get(b"k").unwrap();
        assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (1, 4, 4));
    }

    #[test]
    fn delete_of_missing_key_is_not_found_and_changes_nothing() {
        let mut store = store_with("a", &[1]);
        let before = store.clone();
        assert_eq!(
            store.apply(2, &delete_if("b", Precondition::None).encode(0)),
            ApplyOutcome::NotFound
        );
        assert!(store.iter().eq(before.iter()));
        assert_eq!(store.applied_index(), 2);
    }

    #[test]
    fn create_only_put_on_existing_key_fails_with_current_revision() {
        let mut store = store_with("k", &[1, 4]);
        let before = store.clone();
        assert_eq!(
            store.apply(5, &put_if("k", "new", Precondition::MustNotExist).encode(0)),
            ApplyOutcome::PreconditionFailed {
                current_mod_revision: Some(4)
            }
        );
        assert!(store.iter().eq(before.iter()));
        assert_eq!(store.applied_index(), 5);
    }

    #[test]
    fn create_only_put_on_missing_key_creates_it() {
        let mut store = KvStore::new();
        assert_eq!(
            store.apply(1, &put_if("k", "v", Precondition::MustNotExist).encode(0)),
            ApplyOutcome::Put {
                version: 1,
                mod_revision: 1,
                created: true,
                previous: None,
            }
        );
    }

    #[test]
    fn compare_and_set_put_succeeds_only_on_matching_revision() {
        let mut store = store_with("k", &[1, 3]);
        assert_eq!(
            store.apply(
                4,
                &put_if("k", "stale", Precondition::ModRevision(1)).encode(0)
            ),
            ApplyOutcome::PreconditionFailed {
                current_mod_revision: Some(3)
            }
        );
        assert_eq!(store.get(b"k").unwrap().value, Bytes::from_static(b"v3"));
        assert_eq!(
            store.apply(
                5,
                &put_if("k", "fresh", Precondition::ModRevision(3)).encode(0)
            ),
            ApplyOutcome::Put {
                version: 3,
                mod_revision: 5,
                created: false,
                previous: Some(key_value("k", "v3", 2, 1, 3)),
            }
        );
        assert_eq!(store.get(b"k").unwrap().value, Bytes::from_static(b"fresh"));
    }

    #[test]
    fn compare_and_set_on_missing_key_fails_without_revision() {
        let mut store = KvStore::new();
        for (index, revision) in [(1, 0), (2, 1)] {
            assert_eq!(
                store.apply(
                    index,
                    &put_if("k", "v", Precondition::ModRevision(revision)).encode(0)
                ),
                ApplyOutcome::PreconditionFailed {
                    current_mod_revision: None
                }
            );
        }
        assert!(store.is_empty());
    }

    #[test]
    fn revision_of_a_deleted_key_never_matches_its_successor() {
        // The ABA case CAS on mod_revision exists to catch: delete and re-create
        // between a read and a conditional write.
        let mut store = store_with("k", &[1]);
        store.apply(2, &delete_if("k", Precondition::None).encode(0));
        store.apply(3, &put("k", "reborn").encode(0));
        assert_eq!(
            store.apply(
                4,
                &put_if("k", "cas", Precondition::ModRevision(1)).encode(0)
            ),
            ApplyOutcome::PreconditionFailed {
                current_mod_revision: Some(3)
            }
        );
    }

    #[test]
    fn conditional_delete_removes_only_on_matching_revision() {
        let mut store = store_with("k", &[2]);
        assert_eq!(
            store.apply(3, &delete_if("k", Precondition::ModRevision(1)).encode(0)),
            ApplyOutcome::PreconditionFailed {
                current_mod_revision: Some(2)
            }
        );
        assert!(store.get(b"k").is_some());
        assert_eq!(
            store.apply(4, &delete_if("k", Precondition::ModRevision(2)).encode(0)),
            ApplyOutcome::Deleted {
                previous: key_value("k", "v2", 1, 2, 2)
            }
        );
        assert_eq!(
            store.apply(5, &delete_if("k", Precondition::ModRevision(2)).encode(0)),
            ApplyOutcome::PreconditionFailed {
                current_mod_revision: None
            }
        );
    }

    fn increment(key: &str, delta: i64) -> Command {
        Command::Increment {
            key: Bytes::copy_from_slice(key.as_bytes()),
            delta,
        }
    }

    fn append(key: &str, suffix: &str, max_value_bytes: u64) -> Command {
        Command::Append {
            key: Bytes::copy_from_slice(key.as_bytes()),
            suffix: Bytes::copy_from_slice(suffix.as_bytes()),
            max_value_bytes,
        }
    }

    #[test]
    fn integers_are_read_as_redis_reads_them() {
        for (text, expected) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("42", Some(42)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("", None),
            ("-", None),
            ("-0", None),
            ("007", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1.5", None),
            ("0x10", None),
            ("00000000000000000000001", None),
        ] {
            assert_eq!(parse_integer(text.as_bytes()), expected, "{text:?}");
        }
    }

    #[test]
    fn increment_counts_from_zero_and_writes_decimal() {
        let mut store = KvStore::new();
        assert_eq!(
            store.apply(1, &increment("n", 1).encode(0)),
            ApplyOutcome::Incremented {
                value: 1,
                version: 1,
                mod_revision: 1
            }
        );
        assert_eq!(
            store.apply(2, &increment("n", -11).encode(0)),
            ApplyOutcome::Incremented {
                value: -10,
                version: 2,
                mod_revision: 2
            }
        );
        assert_eq!(store.get(b"n"), Some(key_value("n", "-10", 2, 1, 2)));
    }

    #[test]
    fn increment_refuses_non_integers_and_overflow_and_changes_nothing() {
        let mut store = KvStore::new();
        store.apply(1, &put("s", "abc").encode(0));
        store.apply(2, &put("n", &i64::MAX.to_string()).encode(0));
        let before = store.clone();
        assert_eq!(
            store.apply(3, &increment("s", 1).encode(0)),
            ApplyOutcome::Refused(Refusal::NotAnInteger)
        );
        assert_eq!(
            store.apply(4, &increment("n", 1).encode(0)),
            ApplyOutcome::Refused(Refusal::Overflow)
        );
        assert!(store.iter().eq(before.iter()));
        assert_eq!(store.applied_index(), 4);
    }

    #[test]
    fn append_extends_the_value_up_to_the_limit_in_the_entry() {
        let mut store = KvStore::new();
        assert_eq!(
            store.apply(1, &append("k", "ab", 4).encode(0)),
            ApplyOutcome::Appended {
                len: 2,
                version: 1,
                mod_revision: 1
            }
        );
        assert_eq!(
            store.apply(2, &append("k", "cd", 4).encode(0)),
            ApplyOutcome::Appended {
                len: 4,
                version: 2,
                mod_revision: 2
            }
        );
        assert_eq!(
            store.apply(3, &append("k", "e", 4).encode(0)),
            ApplyOutcome::Refused(Refusal::TooLarge { len: 5, max: 4 })
        );
        assert_eq!(store.get(b"k"), Some(key_value("k", "abcd", 2, 1, 2)));
        assert_eq!(store.data_bytes(), 5);
    }

    #[test]
    fn must_exist_fails_on_missing_key_and_holds_on_present_one() {
        let mut store = KvStore::new();
        assert_eq!(
            store.apply(1, &put_if("k", "v", Precondition::MustExist).encode(0)),
            ApplyOutcome::PreconditionFailed {
                current_mod_revision: None
            }
        );
        assert_eq!(
            store.apply(2, &delete_if("k", Precondition::MustExist).encode(0)),
            ApplyOutcome::PreconditionFailed {
                current_mod_revision: None
            }
        );
        store.apply(3, &put("k", "v").encode(0));
        assert_eq!(
            store.apply(4, &put_if("k", "w", Precondition::MustExist).encode(0)),
            ApplyOutcome::Put {
                version: 2,
                mod_revision: 4,
                created: false,
                previous: Some(key_value("k", "v", 1, 3, 3)),
            }
        );
        assert_eq!(
            store.apply(5, &delete_if("k", Precondition::MustExist).encode(0)),
            ApplyOutcome::Deleted {
                previous: key_value("k", "w", 2, 3, 4)
            }
        );
    }

    #[test]
    fn empty_entries_are_noops_that_advance_applied_index() {
        let mut store = store_with("k", &[1]);
        let before = store.clone();
        assert_eq!(store.apply(2, &[]), ApplyOutcome::Noop);
        assert_eq!(store.apply(7, &[]), ApplyOutcome::Noop);
        assert_eq!(store.applied_index(), 7);
        assert!(store.iter().eq(before.iter()));
    }

    #[test]
    fn undecodable_entries_are_invalid_and_only_advance_applied_index() {
        let mut store = store_with("k", &[1]);
        let before = store.clone();
        let unknown_field_only = [0x18, 0x01]; // field 3 = 1: no op
        let false_flag = proto::Command {
            op: Some(proto::command::Op::Put(proto::PutCommand {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"x"),
                precondition: Some(proto::Precondition {
                    kind: Some(proto::precondition::Kind::MustNotExist(false)),
                }),
                ..Default::default()
            })),
            now_unix_ms: 0,
        }
        .encode_to_vec();
        let entries: [&[u8]; 4] = [
            &[0xff, 0xff, 0xff],
            &[0x0a, 0x05, 0x01],
            &unknown_field_only,
            &false_flag,
        ];
        for (index, data) in (2..).zip(entries) {
            let outcome = store.apply(index, data);
            assert!(matches!(outcome, ApplyOutcome::Invalid(_)), "{outcome:?}");
            assert_eq!(store.applied_index(), index);
        }
        assert!(store.iter().eq(before.iter()));
    }

    #[test]
    fn decode_errors_name_the_problem() {
        // Field 15 (unknown to this version), a varint: no operation set.
        let no_op = [0x78, 0x01];
        assert_eq!(Command::decode(&no_op), Err(DecodeError::MissingOp));
        let false_flag = proto::Command {
            op: Some(proto::command::Op::Delete(proto::DeleteCommand {
                key: Bytes::from_static(b"k"),
                precondition: Some(proto::Precondition {
                    kind: Some(proto::precondition::Kind::MustExist(false)),
                }),
            })),
            now_unix_ms: 0,
        }
        .encode_to_vec();
        assert_eq!(
            Command::decode(&false_flag),
            Err(DecodeError::FalsePreconditionFlag("must_exist"))
        );
        let no_pairs = proto::Command {
            op: Some(proto::command::Op::PutAll(proto::PutAllCommand {
                pairs: vec![],
            })),
            now_unix_ms: 0,
        }
        .encode_to_vec();
        assert_eq!(Command::decode(&no_pairs), Err(DecodeError::NoPairs));
        assert!(matches!(
            Command::decode(&[0x0a, 0x05]),
            Err(DecodeError::Protobuf(_))
        ));
    }

    #[test]
    #[should_panic(expected = "entries must be applied in log order")]
    fn applying_an_index_twice_panics() {
        let mut store = store_with("k", &[5]);
        store.apply(5, &[]);
    }

    fn keys(kvs: impl Iterator<Item = KeyValue>) -> Vec<Vec<u8>> {
        kvs.map(|kv| kv.key.to_vec()).collect()
    }

    #[test]
    fn range_and_scan_yield_keys_in_order_within_bounds() {
        let mut store = KvStore::new();
        for (index, key) in (1..).zip(["d", "a", "c", "b", "e"]) {
            store.apply(index, &put(key, key).encode(0));
        }
        assert_eq!(keys(store.iter()), [b"a", b"b", b"c", b"d", b"e"]);
        assert_eq!(keys(store.range(b"b", Some(b"d"))), [b"b", b"c"]);
        assert_eq!(keys(store.range(b"c", None)), [b"c", b"d", b"e"]);
        assert_eq!(keys(store.scan(b"", None, 2)), [b"a", b"b"]);
        // Inverted and empty ranges yield nothing rather than panicking.
        assert_eq!(store.range(b"d", Some(b"b")).count(), 0);
        assert_eq!(store.range(b"c", Some(b"c")).count(), 0);
    }

    /// Lengths and revisions of several varint bytes, an empty value.
    #[test]
    fn snapshot_bytes_match_prost_for_long_keys_and_values() {
        let mut store = KvStore::new();
        let key = "k".repeat(200);
        store.apply(1, &put(&key, &"v".repeat(70_000)).encode(0));
        store.apply(300_000, &put(&key, "").encode(0));
        store.apply(300_001, &put("short", &"w".repeat(128)).encode(0));
        let image = proto::KvSnapshot {
            applied_index: store.applied_index(),
            entries: store.iter().map(|kv| kv.to_proto()).collect(),
            clock_unix_ms: 0,
        };
        assert_eq!(store.snapshot(), Bytes::from(image.encode_to_vec()));
        let restored = KvStore::restore(&store.snapshot()).expect("restores");
        assert_eq!(restored, store);
        assert_eq!(restored.digest(), xxh3_64(&store.snapshot()));
    }

    /// The snapshot bytes are an on-disk format: this pins them. If this test
    /// fails, old snapshots may no longer restore; say why in the commit.
    #[test]
    fn snapshot_format_is_stable() {
        let mut store = store_with("a", &[1, 2]);
        store.apply(3, &put("b", "").encode(0));
        let hex: String = store
            .snapshot()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let expected = concat!(
            "0803",         // applied_index = 3
            "120d",         // entry, 13 bytes:
            "0a0161",       // key "a"
            "12027632",     // value "v2"
            "180220012802", // version 2, create 1, mod 2
            "1209",         // entry, 9 bytes:
            "0a0162",       // key "b"; the empty value is omitted
            "180120032803", // version 1, create 3, mod 3
        );
        assert_eq!(hex, expected);
        // A deadline (field 6 of the key) and the partition's clock (field 3
        // of the image, after the keys).
        let mut store = KvStore::new();
        store.apply(1, &put_ttl("k", "v", Ttl::At(300)).encode(7));
        let hex: String = store
            .snapshot()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "0801120f0a016b12017618012001280130ac021807");
    }

    /// Log entry bytes are an on-disk format too (the WAL): pinned likewise.
    #[test]
    fn command_format_is_stable() {
        let hex =
            |c: Command| -> String { c.encode(0).iter().map(|b| format!("{b:02x}")).collect() };
        assert_eq!(hex(put("k", "v")), "0a060a016b120176");
        assert_eq!(
            hex(put_if("k", "v", Precondition::MustNotExist)),
            "0a0a0a016b1201761a020801"
        );
        assert_eq!(
            hex(put_if("k", "v", Precondition::ModRevision(7))),
            "0a0a0a016b1201761a021007"
        );
        assert_eq!(
            hex(delete_if("k", Precondition::MustExist)),
            "12070a016b12021801"
        );
        let stamped = |c: Command, now: u64| -> String {
            c.encode(now).iter().map(|b| format!("{b:02x}")).collect()
        };
        let with_deadline = Command::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            precondition: Precondition::None,
            ttl: Ttl::At(1000),
        };
        // The put, its deadline (field 4), then the leader's clock (field 10).
        assert_eq!(stamped(with_deadline, 5), "0a090a016b12017620e8075005");
        let expire = Command::Expire {
            key: Bytes::from_static(b"k"),
            at: Some(9),
        };
        assert_eq!(stamped(expire, 0), "32050a016b1009");
        assert_eq!(stamped(Command::Sweep { max_keys: 3 }, 0), "3a020803");
    }

    fn put_ttl(key: &str, value: &str, ttl: Ttl) -> Command {
        Command::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            precondition: Precondition::None,
            ttl,
        }
    }

    #[test]
    fn a_key_past_its_deadline_is_gone_for_good_even_when_stamps_go_back() {
        let mut store = KvStore::new();
        store.apply(1, &put_ttl("k", "v", Ttl::At(100)).encode(50));
        assert_eq!(store.get(b"k").unwrap().expires_at, Some(100));
        // A stale read with a wall clock past the deadline does not see it;
        // the store itself still holds it (its clock is 50).
        assert_eq!(store.get_at(b"k", 100), None);
        assert!(store.expiry_pending(Some(b"k"), 100));
        assert!(store.expiry_pending(None, 100));
        assert!(!store.expiry_pending(Some(b"k"), 99));
        // An entry stamped 100, on another key, expires it for good.
        store.apply(2, &put("other", "x").encode(100));
        assert_eq!(store.clock_ms(), 100);
        assert_eq!(store.get(b"k"), None);
        assert_eq!(store.mod_revision(b"k"), None);
        assert_eq!(store.len(), 1);
        assert!(!store.expiry_pending(None, 1_000));
        // A later leader whose clock is behind cannot bring it back: its
        // increment counts from 0 and creates the key anew, without expiry.
        let outcome = store.apply(
            3,
            &Command::Increment {
                key: Bytes::from_static(b"k"),
                delta: 1,
            }
            .encode(20),
        );
        assert_eq!(
            outcome,
            ApplyOutcome::Incremented {
                value: 1,
                version: 1,
                mod_revision: 3
            }
        );
        let k = store.get(b"k").unwrap();
        assert_eq!((k.create_revision, k.expires_at), (3, None));
        assert_eq!(store.clock_ms(), 100, "the clock never goes back");
        // An expire of a live key is a write of it; one already passed
        // deletes it; clearing an expiry the key does not have changes nothing.
        let expire = |at| Command::Expire {
            key: Bytes::from_static(b"k"),
            at,
        };
        assert_eq!(
            store.apply(4, &expire(None).encode(0)),
            ApplyOutcome::ExpirySet {
                changed: false,
                mod_revision: 3
            }
        );
        assert_eq!(
            store.apply(5, &expire(Some(150)).encode(0)),
            ApplyOutcome::ExpirySet {
                changed: true,
                mod_revision: 5
            }
        );
        let k = store.get(b"k").unwrap();
        assert_eq!((k.version, k.mod_revision, k.expires_at), (2, 5, Some(150)));
        assert_eq!(
            store.apply(6, &expire(Some(90)).encode(0)),
            ApplyOutcome::ExpirySet {
                changed: true,
                mod_revision: 6
            }
        );
        assert_eq!(store.get(b"k"), None);
        assert_eq!(
            store.apply(7, &expire(None).encode(0)),
            ApplyOutcome::NotFound
        );
        assert_invariants(&store);
    }

    #[test]
    fn a_sweep_removes_expired_keys_earliest_deadline_first_up_to_its_limit() {
        let mut store = KvStore::new();
        for (index, (key, at)) in [("a", 30), ("b", 10), ("c", 20), ("d", 500)]
            .into_iter()
            .enumerate()
        {
            store.apply(index as u64 + 1, &put_ttl(key, "v", Ttl::At(at)).encode(0));
        }
        store.apply(5, &put("e", "v").encode(0));
        assert_eq!(store.next_deadline(), Some(10));
        let sweep = |max_keys| Command::Sweep { max_keys };
        assert_eq!(
            store.apply(6, &sweep(2).encode(40)),
            ApplyOutcome::Swept { removed: 2 }
        );
        // b and c are reclaimed; a is past its deadline too, so already gone.
        assert_eq!(store.held().count(), 3);
        assert_eq!(store.len(), 2);
        assert_eq!(store.next_deadline(), Some(30));
        assert_eq!(
            store.apply(7, &sweep(5).encode(0)),
            ApplyOutcome::Swept { removed: 1 }
        );
        let keys: Vec<Bytes> = store.iter().map(|kv| kv.key).collect();
        assert_eq!(keys, ["d", "e"]);
        assert_eq!(store.data_bytes(), 4);
        assert_invariants(&store);
    }

    #[test]
    fn restore_rejects_corrupt_images_with_a_named_error() {
        let cases = [
            (
                snapshot_image(
                    9,
                    vec![image_entry("b", 1, 1, 1), image_entry("a", 1, 2, 2)],
                ),
                DecodeError::KeyOutOfOrder { entry: 1 },
            ),
            (
                snapshot_image(
                    9,
                    vec![image_entry("a", 1, 1, 1), image_entry("a", 1, 2, 2)],
                ),
                DecodeError::KeyOutOfOrder { entry: 1 },
            ),
            (
                snapshot_image(9, vec![image_entry("a", 1, 0, 0)]),
                DecodeError::ZeroCreateRevision { entry: 0 },
            ),
            (
                snapshot_image(9, vec![image_entry("a", 0, 3, 3)]),
                DecodeError::ImpossibleVersion {
                    entry: 0,
                    version: 0,
                    create_revision: 3,
                    mod_revision: 3,
                },
            ),
            (
                snapshot_image(9, vec![image_entry("a", 5, 3, 5)]),
                DecodeError::ImpossibleVersion {
                    entry: 0,
                    version: 5,
                    create_revision: 3,
                    mod_revision: 5,
                },
            ),
            (
                snapshot_image(9, vec![image_entry("a", 1, 3, 5)]),
                DecodeError::ImpossibleVersion {
                    entry: 0,
                    version: 1,
                    create_revision: 3,
                    mod_revision: 5,
                },
            ),
            (
                snapshot_image(9, vec![image_entry("a", 2, 5, 4)]),
                DecodeError::ModBeforeCreate {
                    entry: 0,
                    create_revision: 5,
                    mod_revision: 4,
                },
            ),
            (
                snapshot_image(3, vec![image_entry("a", 1, 4, 4)]),
                DecodeError::RevisionAfterApplied {
                    entry: 0,
                    mod_revision: 4,
                    applied_index: 3,
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(KvStore::restore(&bytes), Err(expected));
        }
        assert!(matches!(
            KvStore::restore(&[0x12, 0x09, 0x0a]),
            Err(DecodeError::Protobuf(_))
        ));
        // The boundary cases that are fine.
        let ok = snapshot_image(
            5,
            vec![image_entry("a", 1, 5, 5), image_entry("b", 3, 2, 4)],
        );
        let store = KvStore::restore(&ok).expect("valid image");
        assert_eq!(store.snapshot(), ok);
    }

    #[derive(Clone, Debug)]
    enum Entry {
        /// A command and the leader's clock stamped on it.
        Command(Command, u64),
        Empty,
        Garbage(Vec<u8>),
    }

    impl Entry {
        fn bytes(&self) -> Vec<u8> {
            match self {
                Entry::Command(command, now_ms) => command.encode(*now_ms).to_vec(),
                Entry::Empty => Vec::new(),
                Entry::Garbage(bytes) => bytes.clone(),
            }
        }
    }

    fn precondition_strategy() -> impl Strategy<Value = Precondition> {
        prop_oneof![
            3 => Just(Precondition::None),
            1 => Just(Precondition::MustNotExist),
            1 => Just(Precondition::MustExist),
            // Small revisions, so that some CASes match in short histories.
            2 => (0u64..24).prop_map(Precondition::ModRevision),
        ]
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        // A few keys (including the empty one), so commands collide.
        let key = prop::sample::select(vec!["", "a", "b", "c", "ab"])
            .prop_map(|k| Bytes::from(k.as_bytes()));
        let value = prop::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from);
        // Integers and near-integers, so that increments mostly apply and
        // sometimes refuse (overflow, not an integer).
        let number = prop_oneof![
            (-100i64..100).prop_map(|n| n.to_string()),
            Just(i64::MAX.to_string()),
            Just(i64::MIN.to_string()),
            Just("-0".to_owned()),
            Just("007".to_owned()),
        ]
        .prop_map(Bytes::from);
        let delta = prop_oneof![-5i64..5, Just(i64::MAX), Just(i64::MIN)];
        let ttl = prop_oneof![
            3 => Just(Ttl::Clear),
            1 => Just(Ttl::Keep),
            2 => (1u64..40).prop_map(Ttl::At),
        ];
        prop_oneof![
            3 => (key.clone(), value.clone(), precondition_strategy(), ttl.clone())
                .prop_map(|(key, value, precondition, ttl)| Command::Put { key, value, precondition, ttl }),
            1 => (key.clone(), number, precondition_strategy(), ttl)
                .prop_map(|(key, value, precondition, ttl)| Command::Put { key, value, precondition, ttl }),
            1 => (key.clone(), prop::option::of(1u64..40)).prop_map(|(key, at)| Command::Expire { key, at }),
            1 => (0u32..3).prop_map(|max_keys| Command::Sweep { max_keys }),
            1 => (key.clone(), precondition_strategy()).prop_map(|(key, precondition)| Command::Delete { key, precondition }),
            2 => (key.clone(), delta).prop_map(|(key, delta)| Command::Increment { key, delta }),
            1 => (key.clone(), value.clone(), 0u64..12).prop_map(|(key, suffix, max_value_bytes)| Command::Append { key, suffix, max_value_bytes }),
            // Repeated keys included: the last value of a key is the one written.
            1 => prop::collection::vec((key, value), 1..4).prop_map(|pairs| Command::PutAll { pairs }),
        ]
    }

    fn entry_strategy() -> impl Strategy<Value = Entry> {
        prop_oneof![
            // Stamps and deadlines in one small range, so keys expire often
            // and stamps go back and forth (leaders' clocks disagree).
            8 => (command_strategy(), 0u64..30).prop_map(|(c, now)| Entry::Command(c, now)),
            1 => Just(Entry::Empty),
            1 => prop::collection::vec(any::<u8>(), 1..12).prop_map(Entry::Garbage),
        ]
    }

    /// A log: entries with strictly increasing indices (gaps allowed: entries
    /// of other kinds, e.g. membership changes, do not reach the store).
    fn log_strategy() -> impl Strategy<Value = Vec<(u64, Entry)>> {
        prop::collection::vec((1u64..3, entry_strategy()), 0..40).prop_map(|steps| {
            let mut index = 0;
            steps
                .into_iter()
                .map(|(gap, entry)| {
                    index += gap;
                    (index, entry)
                })
                .collect()
        })
    }

    fn replay(log: &[(u64, Entry)]) -> KvStore {
        let mut store = KvStore::new();
        for (index, entry) in log {
            store.apply(*index, &entry.bytes());
        }
        store
    }

    proptest! {
        #[test]
        fn command_encode_decode_roundtrip(command in command_strategy()) {
            prop_assert_eq!(Command::decode(&command.encode(17)), Ok((command, 17)));
        }

        /// A watcher that replays the recorded changes holds exactly the
        /// keys, values and versions a read sees, after every entry.
        #[test]
        fn recorded_changes_replay_to_what_reads_see(log in log_strategy()) {
            use crate::watch::ChangeKind;
            let mut store = KvStore::new();
            store.record_changes();
            let mut replayed: BTreeMap<Bytes, (Bytes, u64)> = BTreeMap::new();
            for (index, entry) in &log {
                store.apply(*index, &entry.bytes());
                for change in store.take_changes() {
                    prop_assert_eq!(change.revision, *index);
                    match change.kind {
                        ChangeKind::Put => {
                            replayed.insert(change.key, (change.value, change.version));
                        }
                        ChangeKind::Delete | ChangeKind::Expire => {
                            prop_assert!(
                                replayed.remove(&change.key).is_some(),
                                "{:?} of a key the watcher does not hold", change
                            );
                        }
                    }
                }
                let visible: BTreeMap<Bytes, (Bytes, u64)> =
                    store.iter().map(|kv| (kv.key, (kv.value, kv.version))).collect();
                prop_assert_eq!(&replayed, &visible, "after entry {}", index);
            }
        }

        #[test]
        fn apply_keeps_invariants_and_only_writes_change_state(log in log_strategy()) {
            let mut store = KvStore::new();
            for (index, entry) in &log {
                let before = store.clone();
                let outcome = store.apply(*index, &entry.bytes());
                prop_assert_eq!(store.applied_index(), *index);
                assert_invariants(&store);
                // What the entry saw: the store before it, by the clock it
                // brought (a key its stamp expires is absent to it).
                let now = match entry {
                    Entry::Command(_, now) => *now,
                    Entry::Empty | Entry::Garbage(_) => 0,
                };
                prop_assert_eq!(store.clock_ms(), before.clock_ms().max(now));
                let was = |key: &[u8]| before.get_at(key, now);
                let live_before: Vec<KeyValue> = before.range_at(&[], None, now).collect();
                let unchanged = |store: &KvStore| store.iter().eq(live_before.iter().cloned());
                // A key past its deadline never reads again, whatever comes.
                for kv in before.held() {
                    if kv.expires_at.is_some_and(|d| d <= store.clock_ms())
                        && let Some(now_kv) = store.get(&kv.key)
                    {
                        prop_assert_ne!(now_kv.mod_revision, kv.mod_revision, "expired key read again");
                    }
                }
                match outcome {
                    ApplyOutcome::Put { version, mod_revision, created, previous } => {
                        let Entry::Command(Command::Put { key, ttl, .. }, _) = entry else { panic!("put from {entry:?}") };
                        prop_assert_eq!(mod_revision, *index);
                        prop_assert_eq!(created, was(key).is_none());
                        prop_assert_eq!(&previous, &was(key));
                        let expires_at = match ttl {
                            Ttl::Clear => None,
                            Ttl::Keep => previous.as_ref().and_then(|kv| kv.expires_at),
                            Ttl::At(at) => Some(*at),
                        };
                        match store.get(key) {
                            Some(kv) => {
                                prop_assert_eq!((kv.version, kv.mod_revision), (version, mod_revision));
                                prop_assert_eq!(kv.expires_at, expires_at);
                            }
                            // A deadline the clock has passed: written and gone.
                            None => prop_assert!(expires_at.is_some_and(|d| d <= store.clock_ms())),
                        }
                    }
                    ApplyOutcome::Deleted { previous } => {
                        let Entry::Command(command, _) = entry else { panic!("delete from {entry:?}") };
                        let key = command.key().expect("a single-key command");
                        prop_assert_eq!(store.get(key), None);
                        prop_assert_eq!(was(key), Some(previous));
                        prop_assert_eq!(store.len() + 1, live_before.len());
                    }
                    ApplyOutcome::Incremented { value, version, mod_revision } => {
                        let Entry::Command(Command::Increment { key, delta }, _) = entry else { panic!("increment from {entry:?}") };
                        let old = was(key).map_or(Some(0), |kv| parse_integer(&kv.value));
                        prop_assert_eq!(old.and_then(|old| old.checked_add(*delta)), Some(value));
                        let kv = store.get(key).expect("incremented key exists");
                        prop_assert_eq!(parse_integer(&kv.value), Some(value));
                        prop_assert_eq!((kv.version, kv.mod_revision), (version, mod_revision));
                        prop_assert_eq!(mod_revision, *index);
                        prop_assert_eq!(kv.expires_at, was(key).and_then(|kv| kv.expires_at));
                    }
                    ApplyOutcome::Appended { len, version, mod_revision } => {
                        let Entry::Command(Command::Append { key, suffix, max_value_bytes }, _) = entry else { panic!("append from {entry:?}") };
                        let old = was(key).map_or(Bytes::new(), |kv| kv.value.clone());
                        let kv = store.get(key).expect("appended key exists");
                        prop_assert_eq!(&kv.value[..old.len()], &old[..]);
                        prop_assert_eq!(&kv.value[old.len()..], &suffix[..]);
                        prop_assert_eq!(kv.value.len() as u64, len);
                        prop_assert!(len <= *max_value_bytes);
                        prop_assert_eq!((kv.version, kv.mod_revision), (version, mod_revision));
                        prop_assert_eq!(kv.expires_at, was(key).and_then(|kv| kv.expires_at));
                    }
                    ApplyOutcome::Refused(refusal) => {
                        prop_assert!(unchanged(&store), "refused ({refusal}) yet changed");
                        let Entry::Command(command, _) = entry else { panic!("refusal from {entry:?}") };
                        let old = command.key().and_then(|key| was(key)).map(|kv| kv.value.clone());
                        match (command, refusal) {
                            (Command::Increment { .. }, Refusal::NotAnInteger) => {
                                prop_assert!(old.is_some_and(|v| parse_integer(&v).is_none()));
                            }
                            (Command::Increment { delta, .. }, Refusal::Overflow) => {
                                let old = old.map_or(Some(0), |v| parse_integer(&v));
                                prop_assert_eq!(old.map(|old| old.checked_add(*delta)), Some(None));
                            }
                            (Command::Append { suffix, max_value_bytes, .. }, Refusal::TooLarge { len, max }) => {
                                prop_assert_eq!(len, old.map_or(0, |v| v.len()) as u64 + suffix.len() as u64);
                                prop_assert_eq!(max, *max_value_bytes);
                                prop_assert!(len > max);
                            }
                            other => prop_assert!(false, "unexpected refusal {other:?}"),
                        }
                    }
                    ApplyOutcome::PutAll { mod_revision, created } => {
                        let Entry::Command(Command::PutAll { pairs }, _) = entry else { panic!("put-all from {entry:?}") };
                        prop_assert_eq!(mod_revision, *index);
                        let mut written = BTreeMap::new();
                        for (key, value) in pairs {
                            written.insert(key.clone(), value.clone());
                        }
                        let new = written.keys().filter(|k| was(k).is_none()).count();
                        prop_assert_eq!(created, new as u64);
                        prop_assert_eq!(store.len(), live_before.len() + new);
                        for kv in store.iter() {
                            match written.get(&kv.key) {
                                Some(value) => {
                                    prop_assert_eq!(&kv.value, value);
                                    prop_assert_eq!(kv.mod_revision, *index);
                                    prop_assert_eq!(kv.expires_at, None);
                                    let old = was(&kv.key);
                                    prop_assert_eq!(kv.version, old.map_or(1, |o| o.version + 1));
                                }
                                None => prop_assert_eq!(was(&kv.key), Some(kv)),
                            }
                        }
                    }
                    ApplyOutcome::ExpirySet { changed, mod_revision } => {
                        let Entry::Command(Command::Expire { key, at }, _) = entry else { panic!("expiry from {entry:?}") };
                        let old = was(key).expect("an expire of a live key");
                        if !changed {
                            prop_assert_eq!((at, old.expires_at), (&None, None));
                            prop_assert_eq!(mod_revision, old.mod_revision);
                            prop_assert!(unchanged(&store));
                        } else if at.is_some_and(|d| d <= store.clock_ms()) {
                            prop_assert_eq!(store.get(key), None);
                        } else {
                            let kv = store.get(key).expect("a key given a later deadline");
                            prop_assert_eq!(&kv.value, &old.value);
                            prop_assert_eq!(kv.expires_at, *at);
                            prop_assert_eq!((kv.version, kv.mod_revision), (old.version + 1, *index));
                            prop_assert_eq!(mod_revision, *index);
                        }
                    }
                    ApplyOutcome::Swept { removed } => {
                        let Entry::Command(Command::Sweep { max_keys }, _) = entry else { panic!("sweep from {entry:?}") };
                        prop_assert!(removed <= u64::from(*max_keys));
                        prop_assert_eq!(store.held().count() as u64 + removed, before.held().count() as u64);
                        prop_assert!(unchanged(&store), "a sweep changed what reads see");
                    }
                    ApplyOutcome::NotFound
                    | ApplyOutcome::PreconditionFailed { .. }
                    | ApplyOutcome::Invalid(_)
                    | ApplyOutcome::Noop => prop_assert!(unchanged(&store)),
                }
            }
        }

        #[test]
        fn snapshot_roundtrip_preserves_state_and_digest(log in log_strategy(), tail in log_strategy()) {
            let store = replay(&log);
            let bytes = store.snapshot();
            let restored = KvStore::restore(&bytes).expect("own snapshot restores");
            prop_assert_eq!(&restored, &store);
            prop_assert_eq!(restored.snapshot(), bytes.clone());
            prop_assert_eq!(restored.digest(), store.digest());
            prop_assert_eq!(store.digest(), xxh3_64(&bytes));
            // The restored store goes on exactly like the original.
            let (mut original, mut restored) = (store, restored);
            let offset = original.applied_index();
            for (index, entry) in &tail {
                let data = entry.bytes();
                prop_assert_eq!(original.apply(offset + index, &data), restored.apply(offset + index, &data));
            }
            prop_assert_eq!(original.snapshot(), restored.snapshot());
        }

        #[test]
        fn snapshot_bytes_are_prosts_encoding_of_the_image(log in log_strategy()) {
            // The store writes its image field by field from its records;
            // it must be byte for byte what prost makes of the message.
            let store = replay(&log);
            let image = proto::KvSnapshot {
                applied_index: store.applied_index(),
                entries: store.held().map(|kv| kv.to_proto()).collect(),
                clock_unix_ms: store.clock_ms(),
            };
            prop_assert_eq!(store.snapshot(), Bytes::from(image.encode_to_vec()));
        }

        #[test]
        fn replicas_fed_the_same_log_have_identical_snapshots(log in log_strategy()) {
            let (a, b) = (replay(&log), replay(&log));
            prop_assert_eq!(a.snapshot(), b.snapshot());
            prop_assert_eq!(a.digest(), b.digest());
        }

        #[test]
        fn restore_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(store) = KvStore::restore(&bytes) {
                assert_invariants(&store);
            }
        }

        #[test]
        fn apply_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut store = store_with("k", &[1]);
            store.apply(2, &bytes);
            prop_assert_eq!(store.applied_index(), 2);
            assert_invariants(&store);
        }
    }
}
