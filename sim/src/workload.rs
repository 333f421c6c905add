//! Simulated clients that fill a [`History`](ringkv_core::check::history::History).
//!
//! Each client loops until its stop time: it picks a key from a small set, an
//! operation from its own seeded RNG (gets of every consistency, unique puts,
//! create-only puts, compare-and-set on the revision it last saw, deletes), a
//! random node to send it to, and records invoke and completion in a shared
//! [`Recorder`] in simulated milliseconds since the run's start. After a
//! write of unknown outcome the client reads that key linearizably next.
//!
//! How a gRPC answer maps to an [`Outcome`] ([`outcome_of`]): a `ringkv-code`
//! that promises no effect (`not_found`, `precondition_failed`, `no_leader`,
//! `not_applied`, `busy`, invalid input) is `Fail`; anything else a write can
//! meet (`timeout_outcome_unknown`, a deadline or cancel without code, a
//! transport error, `internal`, the client-side deadline) is `Unknown`. A read
//! that fails had no effect either way, so it is always `Fail`. A request that
//! never left the client (the connection could not be opened) is `Fail`.
//!
//! **Large values** ([`LargeValues`]): some runs make a fraction of the puts
//! carry values up to the node's limit. The history holds them in a compact
//! form, `<unique prefix>~<length>` ([`expand`] is the bytes on the wire:
//! the prefix, `|`, then the prefix repeated to the length), and a value read
//! back is put in compact form only if every one of its bytes is what
//! `expand` makes of that form; otherwise it is recorded as `corrupt-…`.
//! Either way a damaged value (a flipped byte, a cut tail) reads back as a
//! value nobody wrote, which the checkers reject. So histories stay small and readable,
//! and a byte lost or misplaced anywhere in a megabyte is still caught.
//!
//! **Read-modify-writes** ([`ClientConfig::read_modify_writes`]): the first
//! [`READ_MODIFY_WRITE_KEYS`] keys take reads, increments, appends, puts of
//! small integers (so that increments find numbers), and puts and deletes
//! that answer the key's previous value (GETSET, GETDEL); the other keys
//! take the usual mix. Values there are not unique: the linearizability
//! checker cannot merge unknown puts of different values on a key whose
//! values later writes read, but it merges unknown writes with the same
//! arguments, so puts write `0` or `x`, increments add 1 or -1 and appends
//! append `+a`; and half the operations there are reads. (With unique
//! values, one key with 16 unknown writes ran out of a 10,000,000-step
//! budget; with four values and three deltas, one with 20 ran out of
//! 40,000,000.) Not with large values: an appended large value
//! is no longer in compact form.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::NodeId;
use ringkv_node::api::convert::{consistency_to_proto, expiry_to_proto, precondition_to_proto};
use ringkv_proto::v1 as pb;
use tokio::time::Instant;

use crate::cluster::{SimClient, SimCluster, connect_kv};
use ringkv_core::check::history::{
    ClientId, Consistency, Expiry, FailReason, History, HistoryError, Outcome, Precondition,
    Recorder, Request, Response, Time, ValueVersion,
};

/// How many keys (the first of the list) take read-modify-writes when a
/// run has them.
pub const READ_MODIFY_WRITE_KEYS: usize = 2;

/// The recorder all clients of a run share.
pub type SharedRecorder = Arc<Mutex<Recorder>>;

/// How one client behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub client: ClientId,
    pub seed: u64,
    /// The nodes requests may go to.
    pub nodes: Vec<NodeId>,
    pub keys: Vec<Bytes>,
    /// The run's time origin (history times are ms since then).
    pub start: Instant,
    /// No new operation is invoked at or after this instant.
    pub stop: Instant,
    /// Client-side deadline of one call (connect plus request).
    pub op_timeout: Duration,
    /// Pause between operations, drawn uniformly from `0..=max_think`.
    pub max_think: Duration,
    /// Whether some puts carry large values, and how large.
    pub large_values: Option<LargeValues>,
    /// Whether the first [`READ_MODIFY_WRITE_KEYS`] keys take increments,
    /// appends and writes that answer the previous value (see the module
    /// doc).
    pub read_modify_writes: bool,
}

/// Puts with large values: each put is large with probability `fraction`;
/// a large value has `max_bytes` bytes (a third of them) or a length drawn
/// from `max_bytes / 2..=max_bytes`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LargeValues {
    pub fraction: f64,
    pub max_bytes: usize,
}

impl ClientConfig {
    /// A client of `keys` from `start` until `stop`, sending to no node yet
    /// (see [`spawn_clients`]), with a 3 s deadline per call and up to 200 ms
    /// of thinking between calls.
    pub fn new(keys: Vec<Bytes>, start: Instant, stop: Instant) -> Self {
        ClientConfig {
            client: 0,
            seed: 0,
            nodes: Vec::new(),
            keys,
            start,
            stop,
            op_timeout: Duration::from_secs(3),
            max_think: Duration::from_millis(200),
            large_values: None,
            read_modify_writes: false,
        }
    }
}

/// Starts clients `1..=count`, each on its own client node of `cluster`
/// sending to every node of it, as `template` says but with its own client
/// id and a seed drawn from `rng` (in client order, so the run stays a
/// function of the seed). Each task yields the client's [`ClientStats`].
pub fn spawn_clients(
    cluster: &mut SimCluster,
    count: u32,
    rng: &mut impl Rng,
    template: &ClientConfig,
    recorder: &SharedRecorder,
) -> Vec<tokio::task::JoinHandle<ClientStats>> {
    (1..=count)
        .map(|client| {
            let (config, node) = client_setup(cluster, client, rng, template);
            let recorder = recorder.clone();
            tokio::spawn(async move { node.run(run_client(config, recorder)).await })
        })
        .collect()
}

/// Client `client`'s configuration (`template` with its id, a seed drawn
/// from `rng`, every node of `cluster`) and the client node it runs on.
fn client_setup(
    cluster: &mut SimCluster,
    client: ClientId,
    rng: &mut impl Rng,
    template: &ClientConfig,
) -> (ClientConfig, SimClient) {
    let config = ClientConfig {
        client,
        seed: rng.random(),
        nodes: cluster.node_ids(),
        ..template.clone()
    };
    let node = cluster.client(u8::try_from(client).expect("at most 250 clients"));
    (config, node)
}

/// The history of a run once every client is done (none may still hold
/// `recorder`).
pub fn finish(recorder: SharedRecorder) -> Result<History, HistoryError> {
    let Ok(recorder) = Arc::try_unwrap(recorder) else {
        panic!("a client still holds the recorder: wait for every client first");
    };
    recorder
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .finish()
}

/// `n` keys, each in a different partition when `partition_count >= n`
/// (`k<i>` names, scanning upwards), so that faults of one partition's
/// leader do not hit every key at once.
pub fn spread_keys(n: usize, partition_count: u32) -> Vec<Bytes> {
    let mut keys = Vec::new();
    let mut used = Vec::new();
    let mut i = 0u32;
    while keys.len() < n {
        let key = format!("k{i}");
        let p = ringkv_core::ring::partition_of(key.as_bytes(), partition_count);
        if !used.contains(&p) || used.len() >= partition_count as usize || i > 10_000 {
            used.push(p);
            keys.push(Bytes::from(key));
        }
        i += 1;
    }
    keys
}

/// Milliseconds of simulated time since `start`.
pub fn elapsed_ms(start: Instant) -> Time {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn lock(r: &SharedRecorder) -> std::sync::MutexGuard<'_, Recorder> {
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends `request` to node `via`, recording it in `recorder` (invoke before
/// connecting, completion when the answer or the deadline arrives).
pub async fn execute(
    recorder: &SharedRecorder,
    client: ClientId,
    start: Instant,
    via: NodeId,
    request: Request,
    op_timeout: Duration,
) -> Outcome {
    let id = lock(recorder).invoke(client, elapsed_ms(start), request.clone());
    let outcome = call(via, &request, op_timeout).await;
    lock(recorder).complete(id, elapsed_ms(start), outcome.clone());
    outcome
}

/// One call, unrecorded.
async fn call(via: NodeId, request: &Request, op_timeout: Duration) -> Outcome {
    let deadline = Instant::now() + op_timeout;
    let mut kv = match timeout_at(deadline, connect_kv(via)).await {
        Ok(Ok(kv)) => kv,
        // Nothing was sent: no effect.
        Ok(Err(e)) => return not_applied(format!("connect: {e}")),
        Err(_) => return not_applied("connect timeout".to_owned()),
    };
    let is_write = request.is_write();
    let answer = match request.clone() {
        // Not a history operation (the client API has no count call).
        Request::CountKeys { .. } => {
            return not_applied("the workload sends no key counts".to_owned());
        }
        // Nor a multi-key write (the checkers model one key per operation).
        Request::PutAll { .. } => {
            return not_applied("the workload sends no put-alls".to_owned());
        }
        // Nor a scan (not yet in the workload or its checkers).
        Request::Scan { .. } => {
            return not_applied("the workload sends no scans".to_owned());
        }
        // Nor expiry (the checkers do not model time yet).
        Request::Expire { .. } => {
            return not_applied("the workload sends no expires".to_owned());
        }
        Request::Get { key, consistency } => {
            let req = pb::GetRequest {
                key,
                consistency: consistency_to_proto(consistency) as i32,
            };
            timeout_at(deadline, kv.get(req))
                .await
                .map(|r| r.map(|resp| Response::Value(resp.into_inner().kv.map(value_version))))
        }
        Request::Put {
            key,
            value,
            precondition,
            return_previous,
            expiry,
        } => {
            let req = pb::PutRequest {
                key,
                value: expand(&value),
                precondition: precondition_to_proto(&precondition),
                return_previous,
                expiry: expiry_to_proto(expiry),
            };
            timeout_at(deadline, kv.put(req)).await.map(|r| {
                r.map(|resp| {
                    let resp = resp.into_inner();
                    Response::Put {
                        version: resp.version,
                        mod_revision: resp.mod_revision,
                        previous: resp.previous.map(value_version),
                    }
                })
            })
        }
        Request::Delete {
            key,
            precondition,
            return_previous,
        } => {
            let req = pb::DeleteRequest {
                key,
                precondition: precondition_to_proto(&precondition),
                return_previous,
            };
            timeout_at(deadline, kv.delete(req)).await.map(|r| {
                r.map(|resp| {
                    let resp = resp.into_inner();
                    Response::Deleted {
                        revision: resp.revision,
                        previous: resp.previous.map(value_version),
                    }
                })
            })
        }
        Request::Increment { key, delta } => {
            let req = pb::IncrementRequest { key, delta };
            timeout_at(deadline, kv.increment(req)).await.map(|r| {
                r.map(|resp| {
                    let resp = resp.into_inner();
                    Response::Incremented {
                        value: resp.value,
                        version: resp.version,
                        mod_revision: resp.mod_revision,
                    }
                })
            })
        }
        Request::Append { key, suffix } => {
            let req = pb::AppendRequest { key, suffix };
            timeout_at(deadline, kv.append(req)).await.map(|r| {
                r.map(|resp| {
                    let resp = resp.into_inner();
                    Response::Appended {
                        len: resp.len,
                        version: resp.version,
                        mod_revision: resp.mod_revision,
                    }
                })
            })
        }
    };
    match answer {
        Ok(Ok(response)) => Outcome::Ok(response),
        Ok(Err(status)) => outcome_of(request, &status),
        // The client gave up; the request may still be in flight.
        Err(_) if is_write => Outcome::Unknown,
        Err(_) => not_applied("client deadline".to_owned()),
    }
}

/// A key's state as the history records it (values in compact form).
fn value_version(kv: pb::KeyValue) -> ValueVersion {
    ValueVersion {
        value: compact(kv.value),
        version: kv.version,
        mod_revision: kv.mod_revision,
    }
}

/// The bytes a value in the history stands for: a compact large value
/// `<prefix>~<length>` becomes `length` bytes (the prefix, `|`, then the
/// prefix repeated); any other value is itself.
pub fn expand(value: &Bytes) -> Bytes {
    let Some((prefix, len)) = parse_compact(value) else {
        return value.clone();
    };
    // The repeated part doubles at each step: a megabyte takes ~20 copies.
    let mut fill = Vec::with_capacity(len);
    fill.extend_from_slice(prefix);
    while fill.len() < len {
        fill.extend_from_within(..fill.len().min(len - fill.len()));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(prefix);
    out.push(b'|');
    out.extend_from_slice(&fill[..len - out.len()]);
    Bytes::from(out)
}

/// The history's form of a value read back: a large value becomes
/// `<prefix>~<length>` if all its bytes are what [`expand`] makes of that,
/// else `corrupt-<prefix>~<length>`; any other value is itself.
pub fn compact(value: Bytes) -> Bytes {
    let Some(bar) = value.iter().position(|&b| b == b'|') else {
        return value;
    };
    let form = Bytes::from(format!("{}~{}", value[..bar].escape_ascii(), value.len()));
    if parse_compact(&form).is_some() && expand(&form) == value {
        form
    } else {
        Bytes::from(format!("corrupt-{}", form.escape_ascii()))
    }
}

/// `<prefix>~<length>` with a non-empty prefix free of `|` and `~`, and a
/// length that fits the prefix and the bar.
fn parse_compact(value: &[u8]) -> Option<(&[u8], usize)> {
    let tilde = value.iter().rposition(|&b| b == b'~')?;
    let (prefix, len) = (&value[..tilde], &value[tilde + 1..]);
    let len: usize = std::str::from_utf8(len).ok()?.parse().ok()?;
    let valid = !prefix.is_empty()
        && !prefix.contains(&b'|')
        && !prefix.contains(&b'~')
        && len > prefix.len();
    valid.then_some((prefix, len))
}

/// `tokio::time::timeout_at`, which madsim's tokio lacks.
async fn timeout_at<F: std::future::Future>(
    deadline: Instant,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), f).await
}

fn not_applied(reason: String) -> Outcome {
    Outcome::Fail(FailReason::NotApplied(reason))
}

/// The outcome a gRPC error status means for `request` (see the module docs).
pub fn outcome_of(request: &Request, status: &tonic::Status) -> Outcome {
    let code = status
        .metadata()
        .get("ringkv-code")
        .and_then(|v| v.to_str().ok());
    if let Request::Get { .. } = request {
        // A get of an absent key answers NOT_FOUND: that is a value.
        if code == Some("not_found") {
            return Outcome::Ok(Response::Value(None));
        }
        return not_applied(code.unwrap_or("transport").to_owned());
    }
    match code {
        Some("not_found") if matches!(request, Request::Delete { .. }) => {
            Outcome::Fail(FailReason::NotFound)
        }
        Some("not_an_integer") => Outcome::Fail(FailReason::NotAnInteger),
        Some("increment_overflow") => Outcome::Fail(FailReason::Overflow),
        Some("precondition_failed") => Outcome::Fail(FailReason::PreconditionFailed {
            current_mod_revision: status
                .metadata()
                .get("ringkv-current-mod-revision")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }),
        Some(
            c @ ("no_leader" | "not_applied" | "node_stopping" | "busy" | "invalid_key"
            | "key_too_large" | "value_too_large"),
        ) => not_applied(c.to_owned()),
        // timeout_outcome_unknown, internal, read_timeout (never for a
        // write, but be safe), no code (transport, cancelled, deadline), ...
        _ => {
            tracing::debug!(?status, "sim client: write outcome unknown");
            Outcome::Unknown
        }
    }
}

/// Counts of a client's operations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
}

/// The node a lease prober aims at (set while the nemesis holds a deposed
/// leader at the edge of its lease; `None` between such faults).
pub type ProbeTarget = Arc<Mutex<Option<NodeId>>>;

/// Pause between a prober's reads while it has a target.
const PROBE_GAP_MS: u64 = 2;
/// How often an idle prober looks for a target.
const PROBE_IDLE: Duration = Duration::from_millis(20);

/// Starts a lease prober as client `client` (see [`run_lease_prober`]).
pub fn spawn_lease_prober(
    cluster: &mut SimCluster,
    client: ClientId,
    rng: &mut impl Rng,
    template: &ClientConfig,
    recorder: &SharedRecorder,
    target: &ProbeTarget,
) -> tokio::task::JoinHandle<ClientStats> {
    let (config, node) = client_setup(cluster, client, rng, template);
    let (recorder, target) = (recorder.clone(), target.clone());
    tokio::spawn(async move { node.run(run_lease_prober(config, target, recorder)).await })
}

/// A client that, while `target` names a node, sends it lease reads of
/// random keys back to back (0-2 ms apart), each recorded like any other
/// operation, so that a read served after the node's lease should have
/// ended is in the history; otherwise it idles. Runs until `config.stop`.
pub async fn run_lease_prober(
    config: ClientConfig,
    target: ProbeTarget,
    recorder: SharedRecorder,
) -> ClientStats {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut stats = ClientStats::default();
    while Instant::now() < config.stop {
        let aim = *target.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(via) = aim else {
            tokio::time::sleep(PROBE_IDLE).await;
            continue;
        };
        let key = config.keys[rng.random_range(0..config.keys.len())].clone();
        let get = Request::Get {
            key,
            consistency: Consistency::Lease,
        };
        let outcome = execute(
            &recorder,
            config.client,
            config.start,
            via,
            get,
            config.op_timeout,
        )
        .await;
        match outcome {
            Outcome::Ok(_) => stats.ok += 1,
            Outcome::Fail(_) => stats.fail += 1,
            Outcome::Unknown => stats.unknown += 1,
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=PROBE_GAP_MS))).await;
    }
    stats
}

/// Runs one client until `config.stop`; call it on a client node.
pub async fn run_client(config: ClientConfig, recorder: SharedRecorder) -> ClientStats {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut stats = ClientStats::default();
    // The mod_revision this client last saw per key, for compare-and-set.
    let mut seen: HashMap<Bytes, u64> = HashMap::new();
    let mut n = 0u64;
    // A key whose last write by this client has an unknown outcome: read it
    // next, which usually tells the checker whether the write took effect
    // (each unresolved unknown write doubles the orders it may have to try).
    let mut resolve: Option<Bytes> = None;
    while Instant::now() < config.stop {
        let via = config.nodes[rng.random_range(0..config.nodes.len())];
        let (key, request) = match resolve.take() {
            Some(key) => {
                let get = Request::Get {
                    key: key.clone(),
                    consistency: Consistency::Linearizable,
                };
                (key, get)
            }
            None => {
                let index = rng.random_range(0..config.keys.len());
                let key = config.keys[index].clone();
                let request = if config.read_modify_writes && index < READ_MODIFY_WRITE_KEYS {
                    pick_read_modify_write(&mut rng, key.clone())
                } else {
                    pick_request(
                        &mut rng,
                        config.client,
                        config.large_values,
                        &mut n,
                        key.clone(),
                        &seen,
                    )
                };
                (key, request)
            }
        };
        let is_write = request.is_write();
        let outcome = execute(
            &recorder,
            config.client,
            config.start,
            via,
            request,
            config.op_timeout,
        )
        .await;
        if is_write && outcome == Outcome::Unknown {
            resolve = Some(key.clone());
        }
        match &outcome {
            Outcome::Ok(Response::Value(Some(vv))) => {
                seen.insert(key, vv.mod_revision);
            }
            Outcome::Ok(
                Response::Put { mod_revision, .. }
                | Response::Incremented { mod_revision, .. }
                | Response::Appended { mod_revision, .. },
            )
            | Outcome::Fail(FailReason::PreconditionFailed {
                current_mod_revision: Some(mod_revision),
            }) => {
                seen.insert(key, *mod_revision);
            }
            Outcome::Ok(Response::Value(None) | Response::Deleted { .. })
            | Outcome::Fail(FailReason::NotFound)
            | Outcome::Fail(FailReason::PreconditionFailed {
                current_mod_revision: None,
            }) => {
                seen.remove(&key);
            }
            _ => {}
        }
        match outcome {
            Outcome::Ok(_) => stats.ok += 1,
            Outcome::Fail(_) => stats.fail += 1,
            Outcome::Unknown => stats.unknown += 1,
        }
        let think = config.max_think.as_millis() as u64;
        if think > 0 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=think))).await;
        }
    }
    stats
}

/// For a read-modify-write key: a read, an increment, an append, or a
/// write that answers the previous value (from few values and suffixes:
/// see the module doc).
fn pick_read_modify_write(rng: &mut ChaCha8Rng, key: Bytes) -> Request {
    match rng.random_range(0..20u32) {
        0..8 => Request::Get {
            key,
            consistency: Consistency::Linearizable,
        },
        8 => Request::Get {
            key,
            consistency: Consistency::Lease,
        },
        9 => Request::Get {
            key,
            consistency: Consistency::Stale,
        },
        10..13 => Request::Increment { key, delta: 1 },
        13 => Request::Increment { key, delta: -1 },
        14 => Request::Append {
            key,
            suffix: Bytes::from_static(b"+a"),
        },
        15..17 => Request::Put {
            key,
            value: Bytes::from_static(b"0"),
            precondition: Precondition::None,
            return_previous: rng.random_bool(0.5),
            expiry: Expiry::Clear,
        },
        17 | 18 => Request::Put {
            key,
            value: Bytes::from_static(b"x"),
            precondition: Precondition::None,
            return_previous: true,
            expiry: Expiry::Clear,
        },
        _ => Request::Delete {
            key,
            precondition: Precondition::None,
            return_previous: true,
        },
    }
}

fn pick_request(
    rng: &mut ChaCha8Rng,
    client: ClientId,
    large: Option<LargeValues>,
    n: &mut u64,
    key: Bytes,
    seen: &HashMap<Bytes, u64>,
) -> Request {
    // Drawn only when large values are on, so that runs without them replay
    // exactly as before.
    let large_len = match large {
        Some(l) if rng.random_bool(l.fraction) => Some(if rng.random_ratio(1, 3) {
            l.max_bytes
        } else {
            rng.random_range(l.max_bytes / 2..=l.max_bytes)
        }),
        _ => None,
    };
    let mut value = || {
        *n += 1;
        match large_len {
            Some(len) => Bytes::from(format!("c{client}-{n}~{len}")),
            None => Bytes::from(format!("c{client}-{n}")),
        }
    };
    match rng.random_range(0..100u32) {
        0..20 => Request::Get {
            key,
            consistency: Consistency::Linearizable,
        },
        20..30 => Request::Get {
            key,
            consistency: Consistency::Lease,
        },
        30..40 => Request::Get {
            key,
            consistency: Consistency::Stale,
        },
        40..70 => Request::Put {
            key,
            value: value(),
            precondition: Precondition::None,
            return_previous: false,
            expiry: Expiry::Clear,
        },
        70..85 => {
            let precondition = match seen.get(&key) {
                Some(&r) if rng.random_bool(0.8) => Precondition::ModRevision(r),
                _ => Precondition::MustNotExist,
            };
            Request::Put {
                key,
                value: value(),
                precondition,
                return_previous: false,
                expiry: Expiry::Clear,
            }
        }
        85..93 => Request::Put {
            key,
            value: value(),
            precondition: Precondition::MustExist,
            return_previous: false,
            expiry: Expiry::Clear,
        },
        // Deletes are few: an unconditional one hides any number of earlier
        // writes of unknown outcome, which multiplies the checker's search.
        _ => {
            let precondition = match seen.get(&key) {
                Some(&r) if rng.random_bool(0.3) => Precondition::ModRevision(r),
                _ => Precondition::None,
            };
            Request::Delete {
                key,
                precondition,
                return_previous: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_expand_and_compact_back() {
        let compact_form = Bytes::from_static(b"c3-17~1000");
        let wire = expand(&compact_form);
        assert_eq!(wire.len(), 1000);
        assert!(wire.starts_with(b"c3-17|c3-17c3-17"));
        assert_eq!(compact(wire.clone()), compact_form);
        // Small values are themselves both ways.
        assert_eq!(expand(&Bytes::from_static(b"c1-2")), "c1-2");
        assert_eq!(compact(Bytes::from_static(b"c1-2")), "c1-2");
    }

    #[test]
    fn a_damaged_large_value_reads_back_as_a_value_nobody_wrote() {
        let wire = expand(&Bytes::from_static(b"c3-17~1000"));
        let mut flipped = wire.to_vec();
        flipped[700] ^= 1;
        assert_eq!(compact(Bytes::from(flipped)), "corrupt-c3-17~1000");
        // A cut value names a length nobody wrote: the checkers see a value
        // that was never put.
        assert_eq!(compact(wire.slice(..999)), "c3-17~999");
    }
}
