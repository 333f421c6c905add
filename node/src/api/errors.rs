//! The client-facing meaning of every [`ClientError`]: one stable code, an
//! HTTP status and a gRPC code. REST, gRPC and the internal forward RPC all
//! use this table, so the same failure reads the same everywhere.

use ringkv_core::PartitionId;
use ringkv_core::node::{ClientError, UnknownCause};

/// How one error presents itself to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind {
    /// Stable, documented code (`problem+json` `code`, gRPC `ringkv-code`).
    pub code: &'static str,
    pub http_status: u16,
    pub grpc_code: tonic::Code,
    /// The RESP error code (the reply's first word, which Redis clients
    /// match on): `TRYAGAIN` for what a retry may cure, `UNKNOWN` for a
    /// write that may have been applied, `CLUSTERDOWN` for a node outside
    /// any cluster, else `ERR`.
    pub resp_code: &'static str,
}

/// gRPC metadata key carrying the stable code.
pub const CODE_METADATA: &str = "ringkv-code";
/// gRPC metadata key carrying the current mod_revision on a failed precondition.
pub const CURRENT_REVISION_METADATA: &str = "ringkv-current-mod-revision";
/// Seconds a client should wait before retrying a `no_leader` (REST `Retry-After`).
pub const RETRY_AFTER_SECS: u32 = 1;

pub fn kind(e: &ClientError) -> ErrorKind {
    use tonic::Code;
    let (code, http_status, grpc_code, resp_code) = match e {
        ClientError::EmptyKey => ("invalid_key", 400, Code::InvalidArgument, "ERR"),
        ClientError::KeyTooLarge { .. } => ("key_too_large", 400, Code::InvalidArgument, "ERR"),
        ClientError::ValueTooLarge { .. } => ("value_too_large", 413, Code::InvalidArgument, "ERR"),
        ClientError::WriteTooLarge { .. } => ("write_too_large", 413, Code::InvalidArgument, "ERR"),
        // The keys of one atomic write in several partitions: Redis's word
        // for keys in several slots, which is what a client did to get it.
        ClientError::CrossPartition => ("cross_partition", 400, Code::InvalidArgument, "CROSSSLOT"),
        ClientError::InvalidScanLimit { .. } => {
            ("invalid_limit", 400, Code::InvalidArgument, "ERR")
        }
        ClientError::InvalidExpiry(_) => ("invalid_expiry", 400, Code::InvalidArgument, "ERR"),
        ClientError::NoWallClock => ("no_wall_clock", 503, Code::Unavailable, "TRYAGAIN"),
        ClientError::NotFound => ("not_found", 404, Code::NotFound, "ERR"),
        ClientError::PreconditionFailed { .. } => {
            ("precondition_failed", 412, Code::FailedPrecondition, "ERR")
        }
        ClientError::NotAnInteger => ("not_an_integer", 409, Code::FailedPrecondition, "ERR"),
        ClientError::IncrementOverflow => {
            ("increment_overflow", 409, Code::FailedPrecondition, "ERR")
        }
        ClientError::NoLeader { .. } => ("no_leader", 503, Code::Unavailable, "TRYAGAIN"),
        ClientError::Dropped => ("not_applied", 503, Code::Unavailable, "TRYAGAIN"),
        ClientError::Busy => ("busy", 503, Code::Unavailable, "TRYAGAIN"),
        ClientError::NotInCluster => ("not_in_cluster", 503, Code::Unavailable, "CLUSTERDOWN"),
        ClientError::Stopping => ("node_stopping", 503, Code::Unavailable, "TRYAGAIN"),
        ClientError::OutcomeUnknown { .. } => (
            "timeout_outcome_unknown",
            504,
            Code::DeadlineExceeded,
            "UNKNOWN",
        ),
        ClientError::Timeout => ("read_timeout", 504, Code::DeadlineExceeded, "TRYAGAIN"),
        ClientError::Internal(_) => ("internal", 500, Code::Internal, "ERR"),
    };
    ErrorKind {
        code,
        http_status,
        grpc_code,
        resp_code,
    }
}

/// The details an error carries besides its code (the forward RPC's fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    pub current_mod_revision: Option<u64>,
    pub partition: u32,
    pub len: u64,
    pub max: u64,
}

impl ErrorDetails {
    pub fn of(e: &ClientError) -> Self {
        let mut d = ErrorDetails::default();
        match e {
            ClientError::PreconditionFailed {
                current_mod_revision,
            } => d.current_mod_revision = *current_mod_revision,
            ClientError::NoLeader { partition } => d.partition = partition.0,
            ClientError::KeyTooLarge { len, max }
            | ClientError::ValueTooLarge { len, max }
            | ClientError::WriteTooLarge { len, max } => {
                d.len = *len as u64;
                d.max = *max as u64;
            }
            ClientError::InvalidScanLimit { limit, max } => {
                d.len = u64::from(*limit);
                d.max = u64::from(*max);
            }
            _ => {}
        }
        d
    }
}

/// Rebuilds an error from its code and details (the forward RPC's answer).
/// An unknown code is reported as internal, with the code in the message.
pub fn from_code(code: &str, message: &str, d: ErrorDetails) -> ClientError {
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    match code {
        "invalid_key" => ClientError::EmptyKey,
        "key_too_large" => ClientError::KeyTooLarge {
            len: size(d.len),
            max: size(d.max),
        },
        "value_too_large" => ClientError::ValueTooLarge {
            len: size(d.len),
            max: size(d.max),
        },
        "write_too_large" => ClientError::WriteTooLarge {
            len: size(d.len),
            max: size(d.max),
        },
        "cross_partition" => ClientError::CrossPartition,
        "invalid_limit" => ClientError::InvalidScanLimit {
            limit: u32::try_from(d.len).unwrap_or(u32::MAX),
            max: u32::try_from(d.max).unwrap_or(u32::MAX),
        },
        "not_found" => ClientError::NotFound,
        "precondition_failed" => ClientError::PreconditionFailed {
            current_mod_revision: d.current_mod_revision,
        },
        "not_an_integer" => ClientError::NotAnInteger,
        "increment_overflow" => ClientError::IncrementOverflow,
        "no_leader" => ClientError::NoLeader {
            partition: PartitionId(d.partition),
        },
        "not_applied" => ClientError::Dropped,
        "busy" => ClientError::Busy,
        "not_in_cluster" => ClientError::NotInCluster,
        "node_stopping" => ClientError::Stopping,
        "timeout_outcome_unknown" => ClientError::OutcomeUnknown {
            cause: UnknownCause::from_message(message),
        },
        "read_timeout" => ClientError::Timeout,
        "invalid_expiry" => ClientError::InvalidExpiry(
            message
                .strip_prefix("invalid expiry: ")
                .unwrap_or(message)
                .to_owned(),
        ),
        "no_wall_clock" => ClientError::NoWallClock,
        "internal" => ClientError::Internal(
            message
                .strip_prefix("internal error: ")
                .unwrap_or(message)
                .to_owned(),
        ),
        other => ClientError::Internal(format!("unknown error code {other:?}: {message}")),
    }
}

/// The gRPC status for an error, with the stable code in its metadata.
pub fn to_status(e: &ClientError) -> tonic::Status {
    let k = kind(e);
    let mut status = tonic::Status::new(k.grpc_code, e.to_string());
    let md = status.metadata_mut();
    md.insert(
        CODE_METADATA,
        tonic::metadata::MetadataValue::from_static(k.code),
    );
    if let ClientError::PreconditionFailed {
        current_mod_revision: Some(rev),
    } = e
        && let Ok(v) = rev.to_string().parse()
    {
        md.insert(CURRENT_REVISION_METADATA, v);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ClientError> {
        vec![
            ClientError::EmptyKey,
            ClientError::KeyTooLarge {
                len: 5000,
                max: 4096,
            },
            ClientError::ValueTooLarge { len: 2, max: 1 },
            ClientError::WriteTooLarge { len: 9, max: 8 },
            ClientError::CrossPartition,
            ClientError::NotFound,
            ClientError::PreconditionFailed {
                current_mod_revision: Some(7),
            },
            ClientError::NotAnInteger,
            ClientError::IncrementOverflow,
            ClientError::NoLeader {
                partition: PartitionId(3),
            },
            ClientError::Dropped,
            ClientError::Busy,
            ClientError::NotInCluster,
            ClientError::Stopping,
            ClientError::OutcomeUnknown {
                cause: UnknownCause::TimedOut,
            },
            ClientError::Timeout,
            ClientError::Internal("x".into()),
        ]
    }

    #[test]
    fn codes_are_unique_and_round_trip_through_the_forward_rpc() {
        let errors = all();
        let mut codes: Vec<_> = errors.iter().map(|e| kind(e).code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
        for e in errors {
            let back = from_code(kind(&e).code, &e.to_string(), ErrorDetails::of(&e));
            assert_eq!(back, e);
        }
    }

    #[test]
    fn an_unknown_outcome_keeps_its_cause_across_the_forward_rpc() {
        for cause in [
            UnknownCause::TimedOut,
            UnknownCause::ConnectionLost,
            UnknownCause::NodeStopped,
        ] {
            let e = ClientError::OutcomeUnknown { cause };
            let back = from_code(kind(&e).code, &e.to_string(), ErrorDetails::of(&e));
            assert_eq!(back, e);
        }
        let lost = ClientError::OutcomeUnknown {
            cause: UnknownCause::ConnectionLost,
        };
        assert!(!lost.to_string().contains("timed out"), "{lost}");
        assert_eq!(kind(&lost).http_status, 504);
        assert_eq!(kind(&lost).code, "timeout_outcome_unknown");
    }

    #[test]
    fn timed_out_writes_say_outcome_unknown_and_never_look_failed() {
        let k = kind(&ClientError::OutcomeUnknown {
            cause: UnknownCause::TimedOut,
        });
        assert_eq!(k.code, "timeout_outcome_unknown");
        assert_eq!(k.http_status, 504);
        assert_eq!(k.grpc_code, tonic::Code::DeadlineExceeded);
        assert!(
            ClientError::OutcomeUnknown {
                cause: UnknownCause::TimedOut
            }
            .to_string()
            .contains("timed out; the write may or may not have been applied (outcome unknown)")
        );
    }

    #[test]
    fn grpc_status_carries_code_and_current_revision() {
        let s = to_status(&ClientError::PreconditionFailed {
            current_mod_revision: Some(42),
        });
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            s.metadata().get(CODE_METADATA).unwrap(),
            "precondition_failed"
        );
        assert_eq!(s.metadata().get(CURRENT_REVISION_METADATA).unwrap(), "42");
    }
}
