//! `ringkv watch KEY` / `ringkv watch --prefix P`: prints each change of
//! the watched keys as it is applied, and follows the cluster when the
//! node it watches through goes away.
//!
//! The watch runs over gRPC `Kv.Watch` through the first endpoint that
//! answers. Each response carries the cursor after its events; when the
//! stream breaks (the node stopped, lost its replica, or the connection
//! dropped), the client connects to the next endpoint and resumes from
//! that cursor: no change is lost or printed twice. It stops only when
//! asked (`--count`, Ctrl-C) or when the changes to resume from are no
//! longer held anywhere it asked (`compacted`, exit 5): read the current
//! state and watch again.
//!
//! Output: one line per change, `put KEY VALUE (revision R)`,
//! `delete KEY (revision R)` or `expire KEY (revision R)` (`-o table`), or
//! one JSON object per line (`-o json`):
//! `{"kind","key","value","value_encoding","partition","revision","version","cursor"}`
//! (`value` and `version` for puts only; `cursor` on the last change of
//! each batch the server sent: pass it to `--cursor` to resume after it).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use ringkv_proto::v1::{WatchEvent, WatchRequest, watch_event, watch_request};
use serde::Serialize;
use tonic::Code;

use super::client::{ClientOpts, connect_first, encode_bytes, to_json_line};
use super::failure::{ErrorCode, Failure, Op};
use super::{OutputFormat, write_stdout};

/// Pause before reconnecting after a stream broke, growing to the last.
const RECONNECT_BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

/// `ringkv watch`: follow a key's (or a prefix's) changes.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The key to watch.
    #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
    pub key: Option<String>,
    /// Watch every key that starts with this instead ("" for every key). A
    /// prefix that holds a hash tag (`{user42}.`) watches one partition.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Start with the changes at this revision (a key's watch, or a
    /// hash-tag prefix's); default: from now.
    #[arg(long, value_name = "REV", conflicts_with = "cursor")]
    pub from_revision: Option<u64>,
    /// Resume after a cursor an earlier watch of the same keys printed (`-o json` prints it with each event).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Stop after this many changes.
    #[arg(long)]
    pub count: Option<u64>,
    /// Leave values out.
    #[arg(long)]
    pub no_values: bool,
}

/// Runs `ringkv watch` until `--count` changes were printed, or a failure
/// that reconnecting cannot cure.
pub async fn watch(a: WatchArgs) -> ExitCode {
    match execute_watch(&a, |events, cursor| {
        write_stdout(&render(a.opts.output, events, cursor))
    })
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.line());
            ExitCode::from(failure.exit)
        }
    }
}

/// Follows the watch, handing each response's events and cursor to
/// `print`, reconnecting with the cursor when a stream breaks.
async fn execute_watch(
    a: &WatchArgs,
    mut print: impl FnMut(&[WatchEvent], &str),
) -> Result<(), Failure> {
    let target = match (&a.key, &a.prefix) {
        (Some(key), _) => watch_request::Target::Key(Bytes::from(key.clone().into_bytes())),
        (None, prefix) => watch_request::Target::Prefix(Bytes::from(
            prefix.clone().unwrap_or_default().into_bytes(),
        )),
    };
    let mut cursor = a.cursor.clone().unwrap_or_default();
    let mut left = a.count;
    let mut first = 0usize;
    let mut failures = 0usize;
    loop {
        // Each attempt starts with the endpoint after the one that failed.
        let mut order = a.opts.endpoints.clone();
        let shift = first % order.len().max(1);
        order.rotate_left(shift);
        let (channel, index) = match connect_first(&order, Op::Read).await {
            Ok(c) => c,
            Err(f) if failures < 10 => {
                failures += 1;
                eprintln!("watch: {}; retrying", f.message);
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(f) => return Err(f),
        };
        let request = WatchRequest {
            target: Some(target.clone()),
            start_revision: if cursor.is_empty() {
                a.from_revision.unwrap_or(0)
            } else {
                0
            },
            cursor: cursor.clone(),
            no_values: a.no_values,
            partitions: Vec::new(),
        };
        let broke = match super::auth::kv(channel).watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(r)) => {
                            failures = 0;
                            let take =
                                left.map_or(r.events.len(), |l| (l as usize).min(r.events.len()));
                            cursor = r.cursor;
                            // A cursor only where everything before it was
                            // printed.
                            let whole = take == r.events.len();
                            print(&r.events[..take], if whole { &cursor } else { "" });
                            if let Some(l) = left.as_mut() {
                                *l -= take as u64;
                                if *l == 0 {
                                    return Ok(());
                                }
                            }
                        }
                        Ok(None) => break "the node ended the watch".to_owned(),
                        Err(status) => match fatal(&status) {
                            Some(failure) => return Err(failure),
                            None => break status.message().to_owned(),
                        },
                    }
                }
            }
            Err(status) => match fatal(&status) {
                Some(failure) => return Err(failure),
                None => status.message().to_owned(),
            },
        };
        failures += 1;
        first += index + 1;
        eprintln!("watch: {broke}; resuming through the next endpoint");
        tokio::time::sleep(backoff(failures)).await;
    }
}

/// A failure reconnecting cannot cure: compacted history, a bad request,
/// no valid access token (or a revoked one).
fn fatal(status: &tonic::Status) -> Option<Failure> {
    let code = match status.code() {
        Code::FailedPrecondition => ErrorCode::Compacted,
        Code::InvalidArgument | Code::Unimplemented => ErrorCode::BadInput,
        Code::Unauthenticated | Code::PermissionDenied => {
            return Some(Failure::from_status(status, Op::Read));
        }
        _ => return None,
    };
    Some(Failure::new(code, Op::Read, status.message()))
}

fn backoff(failures: usize) -> Duration {
    RECONNECT_BACKOFF[failures.min(RECONNECT_BACKOFF.len()) - 1]
}

fn render(format: OutputFormat, events: &[WatchEvent], cursor: &str) -> Vec<u8> {
    let mut out = String::new();
    for (i, e) in events.iter().enumerate() {
        let kind = match watch_event::Kind::try_from(e.kind) {
            Ok(watch_event::Kind::Put) => "put",
            Ok(watch_event::Kind::Delete) => "delete",
            Ok(watch_event::Kind::Expire) => "expire",
            Err(_) => "unknown",
        };
        let key = String::from_utf8_lossy(&e.key);
        let put = kind == "put";
        match format {
            OutputFormat::Table if put => out.push_str(&format!(
                "put {key} {} (revision {})\n",
                String::from_utf8_lossy(&e.value),
                e.revision
            )),
            OutputFormat::Table => {
                out.push_str(&format!("{kind} {key} (revision {})\n", e.revision))
            }
            OutputFormat::Json => {
                #[derive(Serialize)]
                struct Line<'a> {
                    kind: &'a str,
                    key: &'a str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    value: Option<String>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    value_encoding: Option<&'static str>,
                    partition: u32,
                    revision: u64,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    version: Option<u64>,
                    /// On a response's last event: where a watch of the
                    /// same keys resumes after it.
                    #[serde(skip_serializing_if = "Option::is_none")]
                    cursor: Option<&'a str>,
                }
                let value = put.then(|| encode_bytes(&e.value));
                out.push_str(&to_json_line(&Line {
                    kind,
                    key: &key,
                    value_encoding: value.as_ref().map(|v| v.encoding),
                    value: value.map(|v| v.text),
                    partition: e.partition,
                    revision: e.revision,
                    version: put.then_some(e.version),
                    cursor: (i + 1 == events.len() && !cursor.is_empty()).then_some(cursor),
                }));
            }
        }
    }
    out.into_bytes()
}
