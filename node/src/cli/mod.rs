//! The `ringkv` command-line client and load generator.
//!
//! [`client`] holds one-shot commands over gRPC (`put`, `get`, `del`,
//! `status`, `locate`); [`bench`] is a closed-loop load generator over REST
//! or gRPC; [`failure`] turns the server's stable error codes (and the
//! client's own failures) into a code and an exit status. This module owns
//! the vocabulary they share: exit codes, output format, read consistency
//! and durations on the command line. `main.rs` owns the top-level parser.
//!
//! Conventions every command follows:
//! - results go to stdout, as a human table (`-o table`, the default) or one
//!   JSON object per run (`-o json`);
//! - an error is one line on stderr, `error: <code>: <message>`, where
//!   `<code>` is the server's `ringkv-code` or a client-side code from
//!   [`failure::ErrorCode`];
//! - the process exits with one of the [`exit`] codes below.
//!
//! | exit | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | any other error (`internal`, a reply the client cannot interpret) |
//! | 2 | usage error (reported by clap) |
//! | 3 | key not found |
//! | 4 | precondition failed (`--if-match`, `--create`, `--if-exists`) |
//! | 5 | unavailable: no endpoint reachable, no leader, busy, read timed out |
//! | 6 | outcome unknown: a write timed out or lost its connection and may have been applied |
//! | 7 | invalid input: key or value too large, invalid key |
//! | 8 | `status`: the cluster is degraded |
//! | 9 | not allowed: no valid access token (`--token`), or the token's role or key prefix does not allow it |

use std::time::Duration;

pub mod admin;
pub mod auth;
pub mod bench;
pub mod client;
#[cfg(not(madsim))]
pub mod demo;
pub mod failure;
#[cfg(test)]
mod fake_grpc;
pub mod health;
mod table;
pub mod tls;
pub mod tokens;
pub mod watch;
pub mod watch_bench;

/// The process exit codes of the client commands (see the module table).
pub mod exit {
    /// The command did what was asked.
    pub const SUCCESS: u8 = 0;
    /// An error none of the other codes describes.
    pub const OTHER: u8 = 1;
    /// The command line did not parse (clap exits with this itself).
    pub const USAGE: u8 = 2;
    /// The key does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// A `--if-match` / `--create` / `--if-exists` condition did not hold.
    pub const PRECONDITION_FAILED: u8 = 4;
    /// No endpoint answered, or the cluster could not serve the request now.
    pub const UNAVAILABLE: u8 = 5;
    /// A write may or may not have been applied; read the key to find out.
    pub const OUTCOME_UNKNOWN: u8 = 6;
    /// The server rejected the key or value itself; retrying cannot help.
    pub const INVALID_INPUT: u8 = 7;
    /// `status`: the cluster is degraded (a member down, dead, joining or
    /// draining; partitions without a leader, under-replicated, or moving).
    pub const DEGRADED: u8 = 8;
    /// No valid access token was presented, or the token may not do this.
    pub const NOT_ALLOWED: u8 = 9;
}

/// How a command prints its result on stdout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// For people: aligned fields (each command's --help says what it prints).
    Table,
    /// For programs: JSON (each command's --help says whether one object or one per line).
    Json,
}

/// The guarantee a read asks for (`ringkv.v1.ReadConsistency`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed by a quorum round (ReadIndex); never stale.
    Linearizable,
    /// Served by the leader under its lease, without a round trip.
    Lease,
    /// Any replica's current state; may lag, never invents.
    Stale,
}

impl Consistency {
    /// The wire value of `ringkv.v1.ReadConsistency`.
    pub fn to_proto(self) -> ringkv_proto::v1::ReadConsistency {
        use ringkv_proto::v1::ReadConsistency as P;
        match self {
            Consistency::Linearizable => P::Linearizable,
            Consistency::Lease => P::Lease,
            Consistency::Stale => P::Stale,
        }
    }

    /// The lower-case name used on the command line and in the REST query.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

/// Parses a duration written as one or more `<number><unit>` terms, e.g.
/// `10s`, `500ms`, `1.5s`, `1m30s`. Units: `ns`, `us` (or `µs`), `ms`, `s`,
/// `m`, `h`. A bare `0` is accepted; any other number needs a unit, so that
/// `--timeout 10` is not silently read as 10 ns or 10 hours.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(format!(
                "invalid duration {text:?}: expected a number at {rest:?}"
            ));
        }
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: bad number {number:?}"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let seconds_per_unit = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (ns, us, ms, s, m, h)"
                ));
            }
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
        };
        total += value * seconds_per_unit;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Validates one `--endpoints` entry and returns it as an `http://` URI:
/// `host:port` gets the scheme prepended; an explicit `http://` is kept.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let uri = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let parsed: tonic::transport::Uri = uri
        .parse()
        .map_err(|e| format!("invalid endpoint {text:?}: {e}"))?;
    if parsed.scheme_str() != Some("http") {
        return Err(format!(
            "invalid endpoint {text:?}: only http:// is supported"
        ));
    }
    match parsed.authority() {
        Some(a) if !a.host().is_empty() && a.port().is_some() => {}
        _ => return Err(format!("invalid endpoint {text:?}: expected host:port")),
    }
    if !matches!(parsed.path(), "" | "/") {
        return Err(format!("invalid endpoint {text:?}: unexpected path"));
    }
    Ok(format!(
        "http://{}",
        parsed.authority().map(|a| a.as_str()).unwrap_or("")
    ))
}

/// Writes `bytes` to stdout. A closed pipe (`ringkv get k | head -c1`) is
/// not an error worth reporting.
fn write_stdout(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration(" 0 "), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn endpoints_are_normalized_to_http_uris() {
        assert_eq!(
            parse_endpoint("127.0.0.1:9091").as_deref(),
            Ok("http://127.0.0.1:9091")
        );
        assert_eq!(
            parse_endpoint(" localhost:80 ").as_deref(),
            Ok("http://localhost:80")
        );
        assert_eq!(
            parse_endpoint("http://[::1]:8081/").as_deref(),
            Ok("http://[::1]:8081")
        );
        for bad in ["", "localhost", "https://a:1", "a:1/x", "a b:1"] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations_without_unit_or_with_junk_are_rejected() {
        for bad in ["", "10", "s", "10x", "1..5s", "-1s", "10 s", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
