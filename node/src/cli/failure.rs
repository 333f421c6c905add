//! Why one request failed, as a stable [`ErrorCode`] plus the process exit
//! code it implies.
//!
//! The server's codes arrive as gRPC metadata `ringkv-code` or as the `code`
//! member of a REST `application/problem+json` body (the same strings, see
//! `api.proto`). The client adds its own codes for failures no server
//! reported: no endpoint reachable, connection lost, no answer in time, a
//! reply it cannot interpret. Whether a failure leaves a write's outcome
//! unknown depends on the operation, so classification takes an [`Op`].
//! This module only classifies; printing belongs to the commands.

use super::exit;

/// gRPC metadata key carrying the stable error code.
pub const CODE_METADATA: &str = "ringkv-code";
/// gRPC metadata key carrying the key's current mod_revision on a failed
/// precondition (present only when the key exists).
pub const CURRENT_MOD_REVISION_METADATA: &str = "ringkv-current-mod-revision";

/// The kind of request that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Get, status, locate: repeating them is harmless.
    Read,
    /// Put or delete: once sent, it may have been applied.
    Write,
}

/// A stable failure code: the server's seventeen, then the client's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    KeyTooLarge,
    ValueTooLarge,
    InvalidKey,
    NotFound,
    PreconditionFailed,
    NoLeader,
    Busy,
    NotApplied,
    NotInCluster,
    NodeStopping,
    TimeoutOutcomeUnknown,
    ReadTimeout,
    /// A watch's changes to resume from are no longer held.
    Compacted,
    /// No access token, and the cluster requires one.
    Unauthenticated,
    /// The token is malformed, unknown or revoked.
    InvalidToken,
    /// The token's role or key prefix does not allow the request.
    PermissionDenied,
    Internal,
    /// Client: no endpoint accepted a connection; nothing was sent.
    Unreachable,
    /// Client: the transport failed after the request may have been sent.
    ConnectionLost,
    /// Client: no answer within the client's timeout.
    ClientTimeout,
    /// Client: an answer it cannot interpret (missing field, non-problem
    /// error body, unknown status).
    BadReply,
    /// Client: local input (stdin) could not be read.
    BadInput,
    /// The server sent a `ringkv-code` this client does not know.
    Unrecognized,
}

impl ErrorCode {
    /// Every code, in declaration order (`ALL[c.index()] == c`).
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::KeyTooLarge,
        ErrorCode::ValueTooLarge,
        ErrorCode::InvalidKey,
        ErrorCode::NotFound,
        ErrorCode::PreconditionFailed,
        ErrorCode::NoLeader,
        ErrorCode::Busy,
        ErrorCode::NotApplied,
        ErrorCode::NotInCluster,
        ErrorCode::NodeStopping,
        ErrorCode::TimeoutOutcomeUnknown,
        ErrorCode::ReadTimeout,
        ErrorCode::Compacted,
        ErrorCode::Unauthenticated,
        ErrorCode::InvalidToken,
        ErrorCode::PermissionDenied,
        ErrorCode::Internal,
        ErrorCode::Unreachable,
        ErrorCode::ConnectionLost,
        ErrorCode::ClientTimeout,
        ErrorCode::BadReply,
        ErrorCode::BadInput,
        ErrorCode::Unrecognized,
    ];

    /// A dense index, for counting codes in a plain array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The code as printed and as sent by the server.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::KeyTooLarge => "key_too_large",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Busy => "busy",
            ErrorCode::NotApplied => "not_applied",
            ErrorCode::NotInCluster => "not_in_cluster",
            ErrorCode::NodeStopping => "node_stopping",
            ErrorCode::TimeoutOutcomeUnknown => "timeout_outcome_unknown",
            ErrorCode::ReadTimeout => "read_timeout",
            ErrorCode::Compacted => "compacted",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Internal => "internal",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::ConnectionLost => "connection_lost",
            ErrorCode::ClientTimeout => "client_timeout",
            ErrorCode::BadReply => "bad_reply",
            ErrorCode::BadInput => "bad_input",
            ErrorCode::Unrecognized => "unrecognized",
        }
    }

    /// One of the server's codes, or `None` for anything else (including
    /// the client-side names, which a server never sends).
    pub fn from_server(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL[..=ErrorCode::Internal.index()]
            .iter()
            .copied()
            .find(|c| c.as_str() == code)
    }

    /// Whether the server guarantees nothing was applied, so the same
    /// request may be sent again (api.proto: "all safe to retry").
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NoLeader
                | ErrorCode::Busy
                | ErrorCode::NotApplied
                | ErrorCode::NotInCluster
                | ErrorCode::NodeStopping
        )
    }

    /// Whether a failed `op` may nevertheless have taken effect.
    pub fn leaves_outcome_unknown(self, op: Op) -> bool {
        op == Op::Write
            && matches!(
                self,
                ErrorCode::TimeoutOutcomeUnknown
                    | ErrorCode::ConnectionLost
                    | ErrorCode::ClientTimeout
            )
    }

    /// The process exit code for this failure of `op` (see [`exit`]).
    pub fn exit_code(self, op: Op) -> u8 {
        if self.leaves_outcome_unknown(op) {
            return exit::OUTCOME_UNKNOWN;
        }
        match self {
            ErrorCode::KeyTooLarge
            | ErrorCode::ValueTooLarge
            | ErrorCode::InvalidKey
            | ErrorCode::BadInput => exit::INVALID_INPUT,
            ErrorCode::NotFound => exit::NOT_FOUND,
            ErrorCode::PreconditionFailed => exit::PRECONDITION_FAILED,
            ErrorCode::NoLeader
            | ErrorCode::Busy
            | ErrorCode::NotApplied
            | ErrorCode::NotInCluster
            | ErrorCode::NodeStopping
            | ErrorCode::ReadTimeout
            | ErrorCode::Compacted
            | ErrorCode::Unreachable
            | ErrorCode::ConnectionLost
            | ErrorCode::ClientTimeout => exit::UNAVAILABLE,
            // A read cannot leave an outcome unknown; a server that says so
            // about one still failed to answer it.
            ErrorCode::TimeoutOutcomeUnknown => exit::UNAVAILABLE,
            ErrorCode::Unauthenticated | ErrorCode::InvalidToken | ErrorCode::PermissionDenied => {
                exit::NOT_ALLOWED
            }
            ErrorCode::Internal | ErrorCode::BadReply | ErrorCode::Unrecognized => exit::OTHER,
        }
    }
}

/// One failed request, ready to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    /// The process exit code (usually `code.exit_code(op)`; for an
    /// unrecognized server code, derived from the gRPC or HTTP status).
    pub exit: u8,
    pub message: String,
    /// On `precondition_failed`, the key's current mod_revision if it exists.
    pub current_mod_revision: Option<u64>,
}

impl Failure {
    /// A failure with the exit code `code` implies for `op`.
    pub fn new(code: ErrorCode, op: Op, message: impl Into<String>) -> Failure {
        Failure {
            code,
            exit: code.exit_code(op),
            message: message.into(),
            current_mod_revision: None,
        }
    }

    /// The stderr line: `error: <code>: <message>`.
    pub fn line(&self) -> String {
        let mut line = format!("error: {}: {}", self.code.as_str(), self.message);
        if let Some(rev) = self.current_mod_revision
            && !self.message.contains("mod_revision")
        {
            line.push_str(&format!(" (current mod_revision {rev})"));
        }
        line
    }

    /// Classifies a gRPC status. The `ringkv-code` metadata decides when
    /// present; a status without it came from the transport (tonic, h2),
    /// not from a ringkv server.
    pub fn from_status(status: &tonic::Status, op: Op) -> Failure {
        let metadata = status.metadata();
        let server_code = metadata.get(CODE_METADATA).and_then(|v| v.to_str().ok());
        let current_mod_revision = metadata
            .get(CURRENT_MOD_REVISION_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let message = status.message().to_owned();
        if let Some(raw) = server_code {
            return match ErrorCode::from_server(raw) {
                Some(code) => Failure {
                    current_mod_revision,
                    ..Failure::new(code, op, message)
                },
                None => Failure {
                    code: ErrorCode::Unrecognized,
                    exit: exit_for_grpc_code(status.code(), op),
                    message: format!("{raw}: {message}"),
                    current_mod_revision,
                },
            };
        }
        let code = match status.code() {
            tonic::Code::Unavailable if is_connect_error(status) => ErrorCode::Unreachable,
            tonic::Code::Unavailable | tonic::Code::Unknown => ErrorCode::ConnectionLost,
            // The client never cancels a request itself; tonic reports the
            // request's own deadline (`grpc-timeout`) passing as CANCELLED,
            // on either side.
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ErrorCode::ClientTimeout,
            _ => ErrorCode::BadReply,
        };
        let mut message = format!("{:?}: {message}", status.code());
        if code == ErrorCode::BadReply
            && let Some(hint) = wrong_port_hint(&message)
        {
            message = format!("{hint} ({message})");
        }
        Failure::new(code, op, message)
    }

    /// Classifies a non-2xx REST answer from its HTTP status and body (a
    /// `application/problem+json` document when it came from ringkv).
    pub fn from_problem(http_status: u16, body: &[u8], op: Op) -> Failure {
        let problem: Option<Problem> = serde_json::from_slice(body).ok();
        let (raw_code, message) = match &problem {
            Some(p) => (
                p.code.as_deref(),
                p.detail
                    .clone()
                    .or_else(|| p.title.clone())
                    .unwrap_or_default(),
            ),
            None => (None, String::from_utf8_lossy(body).trim().to_owned()),
        };
        if let Some(code) = raw_code.and_then(ErrorCode::from_server) {
            return Failure::new(code, op, message);
        }
        let exit = exit_for_http_status(http_status, op);
        let (code, message) = match raw_code {
            Some(raw) => (
                ErrorCode::Unrecognized,
                format!("{raw}: HTTP {http_status}: {message}"),
            ),
            None => (
                ErrorCode::BadReply,
                format!("HTTP {http_status}: {message}"),
            ),
        };
        Failure {
            code,
            exit,
            message,
            current_mod_revision: None,
        }
    }
}

/// The members of an RFC 9457 problem document that ringkv fills in.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(default)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub title: Option<String>,
    pub status: Option<u16>,
    pub detail: Option<String>,
    pub code: Option<String>,
}

/// Whether the status was made from a failure to connect (tonic keeps the
/// original error as the status's source), i.e. nothing was sent.
fn is_connect_error(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The exit code for a gRPC code whose `ringkv-code` this client does not
/// know, following the table in api.proto's header.
fn exit_for_grpc_code(code: tonic::Code, op: Op) -> u8 {
    match code {
        tonic::Code::InvalidArgument => exit::INVALID_INPUT,
        tonic::Code::NotFound => exit::NOT_FOUND,
        tonic::Code::FailedPrecondition => exit::PRECONDITION_FAILED,
        tonic::Code::Unavailable => exit::UNAVAILABLE,
        tonic::Code::DeadlineExceeded if op == Op::Write => exit::OUTCOME_UNKNOWN,
        tonic::Code::DeadlineExceeded => exit::UNAVAILABLE,
        _ => exit::OTHER,
    }
}

/// The exit code for an HTTP error status without a known problem code.
fn exit_for_http_status(status: u16, op: Op) -> u8 {
    match status {
        400 | 413 | 414 | 431 => exit::INVALID_INPUT,
        404 => exit::NOT_FOUND,
        412 => exit::PRECONDITION_FAILED,
        429 | 502 | 503 => exit::UNAVAILABLE,
        504 if op == Op::Write => exit::OUTCOME_UNKNOWN,
        504 => exit::UNAVAILABLE,
        _ => exit::OTHER,
    }
}

/// What to say when an endpoint answered, but not as a ringkv gRPC port:
/// an HTTP server's 404 (the REST port: it takes the gRPC call for an
/// unknown path), or no HTTP/2 at all (the Redis protocol port).
fn wrong_port_hint(message: &str) -> Option<&'static str> {
    if message.contains("status: 404") || message.contains("grpc-status header missing") {
        Some(
            "this looks like the REST port, not gRPC; use a node's gRPC port in --endpoints (e.g. 127.0.0.1:9091)",
        )
    } else if message.contains("h2 protocol error") {
        Some(
            "this does not speak gRPC (the Redis protocol port?); use a node's gRPC port in --endpoints (e.g. 127.0.0.1:9091)",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn status_with_code(code: tonic::Code, ringkv_code: &str) -> tonic::Status {
        let mut status = tonic::Status::new(code, "msg");
        status
            .metadata_mut()
            .insert(CODE_METADATA, MetadataValue::try_from(ringkv_code).unwrap());
        status
    }

    #[test]
    fn code_names_round_trip_and_index_is_dense() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
        }
        for code in &ErrorCode::ALL[..=ErrorCode::Internal.index()] {
            assert_eq!(ErrorCode::from_server(code.as_str()), Some(*code));
        }
        // Client-side names are never taken from a server.
        assert_eq!(ErrorCode::from_server("unreachable"), None);
        assert_eq!(ErrorCode::from_server("bogus"), None);
    }

    #[test]
    fn every_server_code_maps_to_its_documented_exit() {
        let table = [
            ("key_too_large", tonic::Code::InvalidArgument, 7, 7),
            ("value_too_large", tonic::Code::InvalidArgument, 7, 7),
            ("invalid_key", tonic::Code::InvalidArgument, 7, 7),
            ("not_found", tonic::Code::NotFound, 3, 3),
            ("precondition_failed", tonic::Code::FailedPrecondition, 4, 4),
            ("no_leader", tonic::Code::Unavailable, 5, 5),
            ("busy", tonic::Code::Unavailable, 5, 5),
            ("not_applied", tonic::Code::Unavailable, 5, 5),
            (
                "timeout_outcome_unknown",
                tonic::Code::DeadlineExceeded,
                5,
                6,
            ),
            ("read_timeout", tonic::Code::DeadlineExceeded, 5, 5),
            ("internal", tonic::Code::Internal, 1, 1),
        ];
        for (name, grpc, read_exit, write_exit) in table {
            let status = status_with_code(grpc, name);
            let read = Failure::from_status(&status, Op::Read);
            let write = Failure::from_status(&status, Op::Write);
            assert_eq!(read.code.as_str(), name);
            assert_eq!((read.exit, write.exit), (read_exit, write_exit), "{name}");
            assert_eq!(read.line(), format!("error: {name}: msg"));
        }
    }

    #[test]
    fn precondition_failure_carries_the_current_revision() {
        let mut status = status_with_code(tonic::Code::FailedPrecondition, "precondition_failed");
        status.metadata_mut().insert(
            CURRENT_MOD_REVISION_METADATA,
            MetadataValue::try_from("42").unwrap(),
        );
        let failure = Failure::from_status(&status, Op::Write);
        assert_eq!(failure.current_mod_revision, Some(42));
        assert_eq!(
            failure.line(),
            "error: precondition_failed: msg (current mod_revision 42)"
        );
    }

    #[test]
    fn unknown_server_code_falls_back_on_the_grpc_code() {
        let status = status_with_code(tonic::Code::Unavailable, "rate_limited");
        let failure = Failure::from_status(&status, Op::Write);
        assert_eq!(failure.code, ErrorCode::Unrecognized);
        assert_eq!(failure.exit, exit::UNAVAILABLE);
        assert_eq!(failure.message, "rate_limited: msg");
    }

    #[test]
    fn transport_failures_without_a_server_code() {
        // A write whose connection broke may have been applied.
        let lost = tonic::Status::unavailable("connection reset");
        assert_eq!(
            Failure::from_status(&lost, Op::Write).exit,
            exit::OUTCOME_UNKNOWN
        );
        assert_eq!(
            Failure::from_status(&lost, Op::Read).exit,
            exit::UNAVAILABLE
        );
        // A refused connection sent nothing, write or not.
        let mut refused = tonic::Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(tonic::ConnectError(
            "connection refused".into(),
        )));
        let failure = Failure::from_status(&refused, Op::Write);
        assert_eq!(failure.code, ErrorCode::Unreachable);
        assert_eq!(failure.exit, exit::UNAVAILABLE);
        // The request's deadline passing, as tonic reports it.
        let expired = tonic::Status::cancelled("Timeout expired");
        let failure = Failure::from_status(&expired, Op::Write);
        assert_eq!(failure.code, ErrorCode::ClientTimeout);
        assert_eq!(failure.exit, exit::OUTCOME_UNKNOWN);
        // Anything else without a code is a reply we cannot interpret.
        let odd = tonic::Status::internal("h2 protocol error");
        assert_eq!(
            Failure::from_status(&odd, Op::Read).code,
            ErrorCode::BadReply
        );
    }

    #[test]
    fn rest_problem_documents_are_classified_by_code() {
        let body = br#"{"type":"https://ringkv.dev/problems/no-leader","title":"No leader",
            "status":503,"detail":"partition 7 has no leader","code":"no_leader"}"#;
        let failure = Failure::from_problem(503, body, Op::Write);
        assert_eq!(failure.code, ErrorCode::NoLeader);
        assert_eq!(failure.exit, exit::UNAVAILABLE);
        assert_eq!(failure.message, "partition 7 has no leader");

        let body = br#"{"title":"Gateway Timeout","status":504,"code":"timeout_outcome_unknown"}"#;
        let failure = Failure::from_problem(504, body, Op::Write);
        assert_eq!(failure.code, ErrorCode::TimeoutOutcomeUnknown);
        assert_eq!(failure.exit, exit::OUTCOME_UNKNOWN);
        assert_eq!(failure.message, "Gateway Timeout");

        let failure = Failure::from_problem(413, br#"{"code":"value_too_large"}"#, Op::Write);
        assert_eq!(failure.exit, exit::INVALID_INPUT);
    }

    #[test]
    fn rest_errors_without_a_known_code_fall_back_on_the_http_status() {
        let failure = Failure::from_problem(502, b"Bad Gateway\n", Op::Read);
        assert_eq!(failure.code, ErrorCode::BadReply);
        assert_eq!(failure.exit, exit::UNAVAILABLE);
        assert_eq!(failure.message, "HTTP 502: Bad Gateway");

        let failure = Failure::from_problem(404, br#"{"detail":"nope","code":"gone"}"#, Op::Read);
        assert_eq!(failure.code, ErrorCode::Unrecognized);
        assert_eq!(failure.exit, exit::NOT_FOUND);
        assert_eq!(failure.message, "gone: HTTP 404: nope");

        let failure = Failure::from_problem(504, b"", Op::Write);
        assert_eq!(failure.exit, exit::OUTCOME_UNKNOWN);
    }
}
