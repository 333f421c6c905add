//! What this node's clients asked of it: per operation, how many requests
//! ended how ([`OUTCOMES`]), with which status ([`STATUSES`]), and how long
//! they took, in a histogram with etcd's buckets (`/metrics`, the
//! dashboard's traffic charts).
//!
//! Counted where every API meets the core ([`crate::handle::NodeHandle`]):
//! a REST, gRPC or Redis request is counted once, at the node the client
//! talked to, however many nodes it was forwarded through (forwarded-in
//! requests are not counted again). A scan or `DBSIZE` counts one request
//! per partition it asks. Lock-free: a few relaxed atomic adds per
//! request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringkv_core::node::ClientRequest;

use crate::api::errors;
use crate::handle::ClientResult;

/// The operations counted, in the order they are reported.
pub const OPERATIONS: [&str; 9] = [
    "get",
    "put",
    "delete",
    "expire",
    "increment",
    "append",
    "put_all",
    "count",
    "scan",
];

/// How requests end: answered (a missing key and a failed precondition
/// are answers), refused for what was asked (too large, not an integer,
/// ...), not served now (no leader, busy, stopping), or of unknown outcome
/// (a write that timed out or whose connection broke).
pub const OUTCOMES: [&str; 4] = ["ok", "refused", "unavailable", "unknown"];

/// The outcome of `result`, as an index into [`OUTCOMES`], read from the
/// one error table ([`errors::kind`]): a missing key (404) and a failed
/// precondition (412) are answers, any other 4xx a refusal, a write of
/// unknown outcome its own, anything else (5xx) unavailable.
pub fn outcome_of(result: &ClientResult) -> usize {
    let Err(e) = result else { return 0 };
    let kind = errors::kind(e);
    match kind.http_status {
        404 | 412 => 0,
        400..=499 => 1,
        _ if kind.code == "timeout_outcome_unknown" => 3,
        _ => 2,
    }
}

/// The HTTP statuses answers map to, through the one error table
/// ([`errors::kind`]): REST sends them, and a gRPC or Redis request's
/// answer is counted under the status REST would have sent for it.
pub const STATUSES: [u16; 9] = [200, 400, 404, 409, 412, 413, 500, 503, 504];

/// The status of `result`, as an index into [`STATUSES`].
pub fn status_of(result: &ClientResult) -> usize {
    let status = match result {
        Ok(_) => 200,
        Err(e) => errors::kind(e).http_status,
    };
    let index = STATUSES.iter().position(|&s| s == status);
    debug_assert!(index.is_some(), "status {status} missing from STATUSES");
    index.unwrap_or(6) // 500: a status this table forgot is a bug of ours
}

/// Upper bounds of the latency buckets, in seconds: etcd's
/// (`0.0001 · 2^n`, n = 0..13), so dashboards built for etcd read ours.
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192,
];

/// The operation a request is, as named in [`OPERATIONS`].
pub fn operation_of(req: &ClientRequest) -> usize {
    match req {
        ClientRequest::Get { .. } => 0,
        ClientRequest::Put { .. } => 1,
        ClientRequest::Delete { .. } => 2,
        ClientRequest::Expire { .. } => 3,
        ClientRequest::Increment { .. } => 4,
        ClientRequest::Append { .. } => 5,
        ClientRequest::PutAll { .. } => 6,
        ClientRequest::CountKeys { .. } => 7,
        ClientRequest::Scan { .. } => 8,
    }
}

#[derive(Default)]
struct Operation {
    outcomes: [AtomicU64; OUTCOMES.len()],
    statuses: [AtomicU64; STATUSES.len()],
    /// Requests at most each bucket's bound (not cumulative; the last one
    /// counts those above every bound).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Microseconds, all requests.
    total_micros: AtomicU64,
}

/// Counters of every operation.
#[derive(Default)]
pub struct RequestStats {
    operations: [Operation; OPERATIONS.len()],
}

/// One operation's counters, read at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperationCounts {
    pub name: &'static str,
    /// Requests by outcome, as [`OUTCOMES`] names them.
    pub outcomes: [u64; OUTCOMES.len()],
    /// Requests by status, as [`STATUSES`] lists them.
    pub statuses: [u64; STATUSES.len()],
    /// Cumulative: requests that took at most `BUCKETS[i]`; the last entry
    /// is every request (Prometheus's `+Inf`).
    pub cumulative: Vec<u64>,
    pub total_micros: u64,
}

impl RequestStats {
    /// Counts one request of operation `op` that ended with `result` and
    /// took `took`.
    pub fn record(&self, op: usize, result: &ClientResult, took: Duration) {
        let o = &self.operations[op];
        o.outcomes[outcome_of(result)].fetch_add(1, Ordering::Relaxed);
        o.statuses[status_of(result)].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        o.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        o.total_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Every operation's counters.
    pub fn read(&self) -> Vec<OperationCounts> {
        OPERATIONS
            .iter()
            .zip(&self.operations)
            .map(|(&name, o)| {
                let mut sum = 0;
                let cumulative = o
                    .buckets
                    .iter()
                    .map(|b| {
                        sum += b.load(Ordering::Relaxed);
                        sum
                    })
                    .collect();
                OperationCounts {
                    name,
                    outcomes: std::array::from_fn(|i| o.outcomes[i].load(Ordering::Relaxed)),
                    statuses: std::array::from_fn(|i| o.statuses[i].load(Ordering::Relaxed)),
                    cumulative,
                    total_micros: o.total_micros.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_operation_outcome_status_and_bucket() {
        use ringkv_core::node::{ClientError, ClientResponse, UnknownCause};
        let stats = RequestStats::default();
        let ok: ClientResult = Ok(ClientResponse::Value(None));
        let unknown: ClientResult = Err(ClientError::OutcomeUnknown {
            cause: UnknownCause::TimedOut,
        });
        stats.record(0, &ok, Duration::from_micros(150));
        stats.record(0, &unknown, Duration::from_secs(2));
        stats.record(0, &Err(ClientError::NotFound), Duration::from_micros(90));
        stats.record(1, &ok, Duration::from_micros(100));
        let read = stats.read();
        let get = &read[0];
        assert_eq!((get.name, get.outcomes), ("get", [2, 0, 0, 1]));
        // 200, 404 and 504, once each.
        assert_eq!(get.statuses, [1, 0, 1, 0, 0, 0, 0, 0, 1]);
        // 90 and 150 µs are in the 100 and 200 µs buckets; 2 s above all.
        assert_eq!(get.cumulative[0], 1);
        assert_eq!(get.cumulative[1], 2);
        assert_eq!(get.cumulative[BUCKETS.len() - 1], 2);
        assert_eq!(get.cumulative[BUCKETS.len()], 3);
        assert_eq!(get.total_micros, 2_000_240);
        // A bound is inclusive.
        assert_eq!(read[1].cumulative[0], 1);
        assert_eq!(read[1].statuses[0], 1);
        assert!(read[2..].iter().all(|o| o.outcomes == [0; 4]));
    }

    #[test]
    fn every_error_has_its_status_in_the_table() {
        use ringkv_core::node::ClientError;
        let errors = [
            ClientError::EmptyKey,
            ClientError::ValueTooLarge { len: 2, max: 1 },
            ClientError::NotFound,
            ClientError::NotAnInteger,
            ClientError::PreconditionFailed {
                current_mod_revision: None,
            },
            ClientError::Busy,
            ClientError::Timeout,
            ClientError::Internal("x".into()),
        ];
        let statuses: Vec<u16> = errors
            .into_iter()
            .map(|e| STATUSES[status_of(&Err(e))])
            .collect();
        assert_eq!(statuses, [400, 413, 404, 409, 412, 503, 504, 500]);
    }

    #[test]
    fn answers_are_ok_and_unknown_outcomes_are_their_own() {
        use ringkv_core::node::ClientError;
        assert_eq!(outcome_of(&Err(ClientError::NotFound)), 0);
        assert_eq!(outcome_of(&Err(ClientError::NotAnInteger)), 1);
        let no_leader = ClientError::NoLeader {
            partition: ringkv_core::PartitionId(3),
        };
        assert_eq!(outcome_of(&Err(no_leader)), 2);
        assert_eq!(
            outcome_of(&Err(ClientError::OutcomeUnknown {
                cause: ringkv_core::node::UnknownCause::TimedOut
            })),
            3
        );
    }
}
