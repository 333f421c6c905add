//! One-shot client commands over gRPC: `put`, `get`, `del`, `ls`,
//! `status`, `locate`.
//!
//! Each command connects to the first endpoint that accepts a connection,
//! sends one request and prints the answer (see the parent module for the
//! output and exit-code conventions). Failures are retried only when that
//! cannot apply a write twice:
//! - `no_leader`, `busy`, `not_applied` (the server promises nothing was
//!   applied): a few times on the same node, with a short backoff;
//! - a refused connection (nothing was sent): on the next endpoint;
//! - a connection lost mid-request: on the next endpoint for reads only.
//!
//! A write that times out or loses its connection is reported as outcome
//! unknown (exit 6) and never resent.
//!
//! Output of `get`: `-o table` prints the value followed by a newline;
//! `--raw` prints exactly the value's bytes; `-o json` prints
//! `{"key","value","value_encoding","version","create_revision","mod_revision"}`
//! where `value_encoding` is `"utf8"` when the value is valid UTF-8 (and
//! `value` is that text) and `"base64"` otherwise (standard alphabet,
//! padded).
//!
//! Output of `ls`: the keys in order, one per line (`-o table`), or one
//! JSON object per key and line (`-o json`; with `--values` the object of
//! `get -o json`, else without `value`), written as the pages arrive.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use ringkv_proto::v1::{
    DeleteRequest, DeleteResponse, Expiry, GetRequest, KeyValue, LocateRequest, LocateResponse,
    MoveStatus, Precondition, PutRequest, PutResponse, ScanRequest, StatusRequest, StatusResponse,
    expiry, precondition,
};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::failure::{ErrorCode, Failure, Op};
use super::table::{Align, Table, fields};
use super::{Consistency, OutputFormat, parse_duration, parse_endpoint, write_stdout};
use crate::error_chain;

/// How long to wait for one endpoint to accept a connection before trying
/// the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an open call pings the server, and how long it waits for the
/// answer.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Pauses before re-sending a request the server marked safe to retry; one
/// retry per entry.
const RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
];

/// Where and how the client commands talk to the cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// gRPC endpoints of any nodes, comma separated; tried in order until one answers.
    #[arg(
        long,
        env = "RINGKV_ENDPOINTS",
        value_delimiter = ',',
        value_parser = parse_endpoint,
        default_value = "127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093"
    )]
    pub endpoints: Vec<String>,
    /// Output: table (for people: aligned fields) or json (for programs: one JSON object).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Deadline of each request (e.g. 500ms, 10s); sent to the server too.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `ringkv put`: write a key.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("precondition").args(["if_match", "create", "if_exists"])))]
pub struct PutArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The key.
    pub key: String,
    /// The value; read from stdin when absent.
    pub value: Option<String>,
    /// Write only if the key exists with exactly this mod_revision (compare-and-set).
    #[arg(long, value_name = "REV")]
    pub if_match: Option<u64>,
    /// Write only if the key does not exist yet.
    #[arg(long, visible_alias = "if-none-match-star")]
    pub create: bool,
    /// Write only if the key exists (any revision).
    #[arg(long)]
    pub if_exists: bool,
    /// The key expires this long after the partition's leader takes the
    /// write (e.g. `30s`, `1500ms`, `2h`); without it the key does not
    /// expire (any expiry it had is cleared).
    #[arg(long, value_parser = parse_duration, conflicts_with = "keep_ttl")]
    pub ttl: Option<Duration>,
    /// Keep the expiry the key has (Redis's SET ... KEEPTTL).
    #[arg(long)]
    pub keep_ttl: bool,
}

/// `ringkv get`: read a key.
#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The key.
    pub key: String,
    /// The read guarantee.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: Consistency,
    /// Print exactly the value's bytes, with no newline added.
    #[arg(long, conflicts_with = "output")]
    pub raw: bool,
}

/// `ringkv ls`: list keys in order.
#[derive(clap::Args, Debug, Clone)]
pub struct LsArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// List the keys that start with this (all keys when absent). A prefix
    /// that holds a hash tag (`{user42}.`) reads one partition; any other
    /// reads every partition.
    pub prefix: Option<String>,
    /// List at most this many keys.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Fetch the values too (`-o json` prints them).
    #[arg(long)]
    pub values: bool,
    /// The read guarantee (each page is one cut of each partition).
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: Consistency,
}

/// Keys one `ls` request asks for, at most.
const LS_PAGE: u32 = 1000;

/// `ringkv del`: delete a key.
#[derive(clap::Args, Debug, Clone)]
pub struct DelArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The key.
    pub key: String,
    /// Delete only if the key exists with exactly this mod_revision.
    #[arg(long, value_name = "REV")]
    pub if_match: Option<u64>,
}

/// `ringkv status`: one node's view of the cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// Also list every partition (table output; JSON always has them).
    #[arg(long)]
    pub partitions: bool,
}

/// `ringkv locate`: which partition and nodes hold a key.
#[derive(clap::Args, Debug, Clone)]
pub struct LocateArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The key.
    pub key: String,
}

/// Runs `ringkv put`.
pub async fn put(a: PutArgs) -> ExitCode {
    let result = execute_put(&a).await;
    finish(result.map(|r| render_put(a.opts.output, &a.key, &r).into_bytes()))
}

/// Runs `ringkv get`.
pub async fn get(a: GetArgs) -> ExitCode {
    let result = execute_get(&a).await;
    finish(result.map(|kv| render_get(a.opts.output, a.raw, &kv)))
}

/// Runs `ringkv ls`: pages through the keys, printing each page as it
/// arrives.
pub async fn ls(a: LsArgs) -> ExitCode {
    let (output, values) = (a.opts.output, a.values);
    let listed = execute_ls(&a, |kvs| write_stdout(&render_ls(output, values, kvs))).await;
    finish(listed.map(|_| Vec::new()))
}

/// Asks for the pages of `ls` one after another, handing each to `page`,
/// until no key follows or `--limit` keys were listed; the count listed.
async fn execute_ls(a: &LsArgs, mut page: impl FnMut(&[KeyValue])) -> Result<u64, Failure> {
    let mut cursor = Bytes::new();
    let mut listed: u64 = 0;
    loop {
        let want = a.limit.map_or(u64::from(LS_PAGE), |l| {
            l.saturating_sub(listed).min(u64::from(LS_PAGE))
        });
        if want == 0 {
            return Ok(listed);
        }
        let request = ScanRequest {
            prefix: a.prefix.clone().map(|p| Bytes::from(p.into_bytes())),
            start: Bytes::new(),
            end: None,
            limit: want as u32,
            cursor: cursor.clone(),
            keys_only: !a.values,
            consistency: a.consistency.to_proto() as i32,
        };
        let timeout = a.opts.timeout;
        let response = call(&a.opts, Op::Read, |channel| {
            let request = deadline(request.clone(), timeout);
            async move { super::auth::kv(channel).scan(request).await }
        })
        .await?;
        listed += response.kvs.len() as u64;
        page(&response.kvs);
        if response.cursor.is_empty() {
            return Ok(listed);
        }
        cursor = response.cursor;
    }
}

fn render_ls(format: OutputFormat, values: bool, kvs: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::new();
    for kv in kvs {
        match format {
            OutputFormat::Table => {
                out.extend_from_slice(&kv.key);
                out.push(b'\n');
            }
            OutputFormat::Json if values => out.extend(render_get(format, false, kv)),
            OutputFormat::Json => {
                #[derive(Serialize)]
                struct Key {
                    key: String,
                    version: u64,
                    create_revision: u64,
                    mod_revision: u64,
                }
                out.extend(
                    to_json_line(&Key {
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        version: kv.version,
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                    })
                    .into_bytes(),
                );
            }
        }
    }
    out
}

/// Runs `ringkv del`.
pub async fn del(a: DelArgs) -> ExitCode {
    let result = execute_del(&a).await;
    finish(result.map(|r| render_del(a.opts.output, &a.key, &r).into_bytes()))
}

/// Runs `ringkv status`: exit code 0 when the answer shows a healthy
/// cluster, [`exit::DEGRADED`] when it shows it degraded (see
/// [`degraded`]; the report is printed either way).
pub async fn status(a: StatusArgs) -> ExitCode {
    let result = execute_status(&a).await;
    let verdict = result.as_ref().map(degraded).unwrap_or_default();
    let code = finish(result.map(|s| render_status(a.opts.output, a.partitions, &s).into_bytes()));
    if code == ExitCode::SUCCESS && !verdict.is_empty() {
        return ExitCode::from(super::exit::DEGRADED);
    }
    code
}

/// Why the cluster is degraded, as far as one node's answer shows (empty:
/// healthy): the node is not in a cluster; a member is joining, draining,
/// dead or down; partitions this node replicates have no leader, or, led
/// by it, lag; and, answered by the controller, under-replicated
/// partitions or replica moves under way.
pub fn degraded(s: &StatusResponse) -> Vec<String> {
    let mut why = Vec::new();
    if s.cluster_uid.is_empty() {
        why.push(format!("node {} is not in a cluster yet", s.node_id));
    }
    for n in &s.nodes {
        match n.state.as_str() {
            "joining" | "draining" | "dead" => why.push(format!("node {} is {}", n.id, n.state)),
            "removed" => continue,
            _ => {}
        }
        if n.health == "down" && n.state != "dead" {
            why.push(format!("node {} is down", n.id));
        }
    }
    // Partitions this node replicates have a term; the others' rows are
    // its routing guess, without a leader or a term.
    let leaderless = s
        .partitions
        .iter()
        .filter(|p| p.leader == 0 && p.term > 0)
        .count();
    if leaderless > 0 {
        why.push(format!(
            "{leaderless} partition(s) node {} replicates have no leader",
            s.node_id
        ));
    }
    let lagging = s.partitions.iter().filter(|p| p.under_replicated).count();
    if lagging > 0 {
        why.push(format!(
            "{lagging} partition(s) led by node {} have lagging replicas",
            s.node_id
        ));
    }
    if s.controller {
        if !s.under_replicated.is_empty() {
            why.push(format!(
                "{} under-replicated partition(s)",
                s.under_replicated.len()
            ));
        }
        if !s.moves.is_empty() {
            why.push(format!("{} replica move(s) to make", s.moves.len()));
        }
    }
    why
}

/// Runs `ringkv locate`.
pub async fn locate(a: LocateArgs) -> ExitCode {
    let result = execute_locate(&a).await;
    finish(result.map(|l| render_locate(a.opts.output, &a.key, &l).into_bytes()))
}

/// Prints the result or the error line and picks the exit code.
fn finish(result: Result<Vec<u8>, Failure>) -> ExitCode {
    match result {
        Ok(out) => {
            write_stdout(&out);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{}", failure.line());
            ExitCode::from(failure.exit)
        }
    }
}

/// The precondition `put` flags ask for (clap lets at most one through).
fn put_precondition(a: &PutArgs) -> Option<Precondition> {
    let kind = if let Some(rev) = a.if_match {
        precondition::Kind::ModRevision(rev)
    } else if a.create {
        precondition::Kind::MustNotExist(true)
    } else if a.if_exists {
        precondition::Kind::MustExist(true)
    } else {
        return None;
    };
    Some(Precondition { kind: Some(kind) })
}

async fn execute_put(a: &PutArgs) -> Result<PutResponse, Failure> {
    let value = match &a.value {
        Some(v) => Bytes::from(v.clone().into_bytes()),
        None => read_stdin().await?,
    };
    let expiry = match (a.ttl, a.keep_ttl) {
        (Some(ttl), _) => Some(expiry::Kind::TtlMs(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        )),
        (None, true) => Some(expiry::Kind::Keep(true)),
        (None, false) => None,
    };
    let request = PutRequest {
        key: Bytes::from(a.key.clone().into_bytes()),
        value,
        precondition: put_precondition(a),
        return_previous: false,
        expiry: expiry.map(|kind| Expiry { kind: Some(kind) }),
    };
    let timeout = a.opts.timeout;
    call(&a.opts, Op::Write, |channel| {
        let request = deadline(request.clone(), timeout);
        async move { super::auth::kv(channel).put(request).await }
    })
    .await
}

async fn execute_get(a: &GetArgs) -> Result<KeyValue, Failure> {
    let request = GetRequest {
        key: Bytes::from(a.key.clone().into_bytes()),
        consistency: a.consistency.to_proto() as i32,
    };
    let timeout = a.opts.timeout;
    let response = call(&a.opts, Op::Read, |channel| {
        let request = deadline(request.clone(), timeout);
        async move { super::auth::kv(channel).get(request).await }
    })
    .await?;
    response
        .kv
        .ok_or_else(|| Failure::new(ErrorCode::BadReply, Op::Read, "GetResponse without kv"))
}

async fn execute_del(a: &DelArgs) -> Result<DeleteResponse, Failure> {
    let request = DeleteRequest {
        key: Bytes::from(a.key.clone().into_bytes()),
        precondition: a.if_match.map(|rev| Precondition {
            kind: Some(precondition::Kind::ModRevision(rev)),
        }),
        return_previous: false,
    };
    let timeout = a.opts.timeout;
    call(&a.opts, Op::Write, |channel| {
        let request = deadline(request.clone(), timeout);
        async move { super::auth::kv(channel).delete(request).await }
    })
    .await
}

async fn execute_status(a: &StatusArgs) -> Result<StatusResponse, Failure> {
    let timeout = a.opts.timeout;
    call(&a.opts, Op::Read, |channel| {
        let request = deadline(StatusRequest {}, timeout);
        async move { super::auth::cluster(channel).status(request).await }
    })
    .await
}

async fn execute_locate(a: &LocateArgs) -> Result<LocateResponse, Failure> {
    let request = LocateRequest {
        key: Bytes::from(a.key.clone().into_bytes()),
    };
    let timeout = a.opts.timeout;
    call(&a.opts, Op::Read, |channel| {
        let request = deadline(request.clone(), timeout);
        async move { super::auth::cluster(channel).locate(request).await }
    })
    .await
}

/// Wraps a message with its deadline, which tonic sends as `grpc-timeout`.
fn deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Reads the whole of stdin (the value of `put` without a value argument).
async fn read_stdin() -> Result<Bytes, Failure> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!(
            "reading the value from standard input; end it with Ctrl-D (or give it after the key: ringkv put KEY VALUE)"
        );
    }
    let read = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map(|_| buf)
    })
    .await;
    match read {
        Ok(Ok(buf)) => Ok(Bytes::from(buf)),
        Ok(Err(e)) => Err(Failure::new(
            ErrorCode::BadInput,
            Op::Write,
            format!("reading the value from stdin: {e}"),
        )),
        Err(e) => Err(Failure::new(
            ErrorCode::BadInput,
            Op::Write,
            format!("reading the value from stdin: {e}"),
        )),
    }
}

/// Sends one request built by `send` with the retry and failover policy of
/// the module doc.
async fn call<T, F, Fut>(opts: &ClientOpts, op: Op, mut send: F) -> Result<T, Failure>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut next_endpoint = 0;
    let mut connected: Option<Channel> = None;
    let mut retries = RETRY_BACKOFF.iter();
    loop {
        let channel = match &connected {
            Some(channel) => channel.clone(),
            None => {
                let (channel, index) = connect_first(&opts.endpoints[next_endpoint..], op).await?;
                next_endpoint += index + 1;
                connected = Some(channel.clone());
                channel
            }
        };
        let status = match tokio::time::timeout(opts.timeout, send(channel)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_elapsed) => {
                let message = match op {
                    Op::Write => format!(
                        "no answer within {:?}; the write may have been applied",
                        opts.timeout
                    ),
                    Op::Read => format!("no answer within {:?}", opts.timeout),
                };
                return Err(Failure::new(ErrorCode::ClientTimeout, op, message));
            }
        };
        let failure = Failure::from_status(&status, op);
        if failure.code.is_retryable()
            && let Some(pause) = retries.next()
        {
            tokio::time::sleep(*pause).await;
            continue;
        }
        let failover = match failure.code {
            ErrorCode::Unreachable => true,
            ErrorCode::ConnectionLost => op == Op::Read,
            _ => false,
        };
        if failover && next_endpoint < opts.endpoints.len() {
            connected = None;
            continue;
        }
        return Err(failure);
    }
}

/// Connects to the first of `endpoints` that accepts, returning the channel
/// and its index in `endpoints`.
pub(super) async fn connect_first(
    endpoints: &[String],
    op: Op,
) -> Result<(Channel, usize), Failure> {
    let mut errors = Vec::new();
    for (index, uri) in endpoints.iter().enumerate() {
        let endpoint = match Endpoint::from_shared(uri.clone()) {
            // Pings while a call is open (a watch may be quiet for long):
            // a node that stops answering them fails the call, and
            // `ringkv watch` moves on.
            Ok(e) => e
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEP_ALIVE)
                .keep_alive_timeout(KEEP_ALIVE),
            Err(e) => {
                errors.push(format!("{uri}: {e}"));
                continue;
            }
        };
        // The connect timeout bounds TCP; this also bounds the HTTP/2 handshake.
        match tokio::time::timeout(2 * CONNECT_TIMEOUT, super::tls::connect(endpoint)).await {
            Ok(Ok(channel)) => return Ok((channel, index)),
            Ok(Err(e)) => errors.push(format!("{uri}: {}", error_chain(&e))),
            Err(_) => errors.push(format!("{uri}: connect timed out")),
        }
    }
    let message = if errors.is_empty() {
        "no endpoint left to try".to_owned()
    } else {
        format!("no endpoint reachable ({})", errors.join("; "))
    };
    Err(Failure::new(ErrorCode::Unreachable, op, message))
}

/// A JSON string for bytes: the text if valid UTF-8, else base64.
#[derive(Serialize)]
pub(super) struct EncodedBytes {
    pub(super) text: String,
    pub(super) encoding: &'static str,
}

pub(super) fn encode_bytes(bytes: &[u8]) -> EncodedBytes {
    match std::str::from_utf8(bytes) {
        Ok(text) => EncodedBytes {
            text: text.to_owned(),
            encoding: "utf8",
        },
        Err(_) => EncodedBytes {
            text: base64::engine::general_purpose::STANDARD.encode(bytes),
            encoding: "base64",
        },
    }
}

pub(super) fn to_json_line<T: Serialize>(value: &T) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
    let mut line = serde_json::to_string(value).unwrap_or_default();
    line.push('\n');
    line
}

fn render_put(format: OutputFormat, key: &str, r: &PutResponse) -> String {
    match format {
        OutputFormat::Table => fields(&[
            ("created", r.created.to_string()),
            ("version", r.version.to_string()),
            ("mod_revision", r.mod_revision.to_string()),
        ]),
        OutputFormat::Json => {
            #[derive(Serialize)]
            struct Put<'a> {
                key: &'a str,
                created: bool,
                version: u64,
                mod_revision: u64,
            }
            to_json_line(&Put {
                key,
                created: r.created,
                version: r.version,
                mod_revision: r.mod_revision,
            })
        }
    }
}

fn render_get(format: OutputFormat, raw: bool, kv: &KeyValue) -> Vec<u8> {
    if raw {
        return kv.value.to_vec();
    }
    match format {
        OutputFormat::Table => {
            let mut out = Vec::with_capacity(kv.value.len() + 1);
            out.extend_from_slice(&kv.value);
            out.push(b'\n');
            out
        }
        OutputFormat::Json => {
            #[derive(Serialize)]
            struct Get {
                key: String,
                value: String,
                value_encoding: &'static str,
                version: u64,
                create_revision: u64,
                mod_revision: u64,
                #[serde(skip_serializing_if = "Option::is_none")]
                expires_at_unix_ms: Option<u64>,
            }
            let value = encode_bytes(&kv.value);
            to_json_line(&Get {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: value.text,
                value_encoding: value.encoding,
                version: kv.version,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                expires_at_unix_ms: (kv.expires_at_unix_ms != 0).then_some(kv.expires_at_unix_ms),
            })
            .into_bytes()
        }
    }
}

fn render_del(format: OutputFormat, key: &str, r: &DeleteResponse) -> String {
    match format {
        OutputFormat::Table => fields(&[("revision", r.revision.to_string())]),
        OutputFormat::Json => {
            #[derive(Serialize)]
            struct Del<'a> {
                key: &'a str,
                revision: u64,
            }
            to_json_line(&Del {
                key,
                revision: r.revision,
            })
        }
    }
}

fn render_locate(format: OutputFormat, key: &str, r: &LocateResponse) -> String {
    match format {
        OutputFormat::Table => fields(&[
            ("slot", r.slot.to_string()),
            ("partition", r.partition.to_string()),
            ("leader", leader_cell(r.leader)),
            ("replicas", join_ids(&r.replicas)),
        ]),
        OutputFormat::Json => {
            #[derive(Serialize)]
            struct Locate<'a> {
                key: &'a str,
                slot: u32,
                partition: u32,
                /// `null` when the answering node knows no leader.
                leader: Option<u64>,
                replicas: &'a [u64],
            }
            to_json_line(&Locate {
                key,
                slot: r.slot,
                partition: r.partition,
                leader: (r.leader != 0).then_some(r.leader),
                replicas: &r.replicas,
            })
        }
    }
}

/// The controller's part of a status: the moves it wants, or where to ask.
fn placement_summary(s: &StatusResponse) -> String {
    if !s.controller {
        return match s.metadata_leader {
            0 => "\nplacement: no controller known (the metadata group has no leader)\n".to_owned(),
            l => format!("\nplacement: run by node {l} (ask it for moves)\n"),
        };
    }
    let waiting = s.moves.iter().filter(|m| m.phase == "waiting").count();
    let mut out = format!(
        "\nplacement (node {} is the controller): {} under-replicated partition(s), \
         {} move(s) under way, {waiting} waiting\n",
        s.node_id,
        s.under_replicated.len(),
        s.moves.len() - waiting,
    );
    for m in s.moves.iter().filter(|m| m.phase != "waiting") {
        let what = match m.kind.as_str() {
            "replace" => format!("n{} -> n{}", m.from, m.to),
            "add" => format!("+n{}", m.to),
            _ => format!("-n{}", m.from),
        };
        out.push_str(&format!(
            "  partition {}: {what} ({}, {}){}\n",
            m.partition,
            m.reason,
            m.phase,
            move_progress(m)
        ));
    }
    out
}

/// A catching-up move's progress: a bar over the snapshot bytes while one
/// streams, else the entries it lacks; and the estimate, once there is one.
fn move_progress(m: &MoveStatus) -> String {
    if m.phase != "catching-up" {
        return String::new();
    }
    const WIDTH: u64 = 20;
    let mut out = if m.snapshot_bytes_total > 0 {
        let acked = m.snapshot_bytes_acked.min(m.snapshot_bytes_total);
        let filled = (acked * WIDTH / m.snapshot_bytes_total) as usize;
        format!(
            " [{}{}] {:.1} of {:.1} MiB",
            "#".repeat(filled),
            ".".repeat(WIDTH as usize - filled),
            acked as f64 / (1024.0 * 1024.0),
            m.snapshot_bytes_total as f64 / (1024.0 * 1024.0)
        )
    } else {
        format!(" {} entries behind", m.entries_behind)
    };
    if let Some(eta) = m.eta_seconds {
        out.push_str(&format!(", ETA {eta:.0} s"));
    }
    out
}

/// Table: a summary line, the nodes (with how many partitions each leads,
/// as far as the answering node knows), a count of partitions without a
/// known leader, and with `partitions` one row per partition.
/// JSON: the whole `StatusResponse` with field names as in api.proto
/// (`leader` is `null` when unknown) plus `leaders` per node.
fn render_status(format: OutputFormat, partitions: bool, s: &StatusResponse) -> String {
    let leads = |id: u64| s.partitions.iter().filter(|p| p.leader == id).count();
    let leaderless = s.partitions.iter().filter(|p| p.leader == 0).count();
    match format {
        OutputFormat::Table => {
            let mut out = format!(
                "answered by node {}: {} nodes, {} partitions, replication factor {}\n\n",
                s.node_id,
                s.nodes.len(),
                s.partition_count,
                s.replication_factor
            );
            if s.cluster_uid.is_empty() {
                out.push_str(&format!(
                    "node {} is not in a cluster yet: {}\n\n",
                    s.node_id, s.formation
                ));
            } else {
                out.push_str(&format!(
                    "cluster {}, node {} incarnation {}\n\n",
                    s.cluster_uid, s.node_id, s.incarnation
                ));
            }
            let mut nodes = Table::new(&[
                ("NODE", Align::Right),
                ("ADDRESS", Align::Left),
                ("STATE", Align::Left),
                ("HEALTH", Align::Left),
                ("LAST SEEN", Align::Right),
                ("LEADS", Align::Right),
            ]);
            for n in &s.nodes {
                nodes.row(vec![
                    n.id.to_string(),
                    n.grpc_addr.clone(),
                    if n.state.is_empty() {
                        "-".to_owned()
                    } else {
                        n.state.clone()
                    },
                    n.health.clone(),
                    match (n.health.as_str(), n.last_heard_seconds_ago) {
                        ("self", _) => "-".to_owned(),
                        (_, Some(s)) => format!("{s:.1} s ago"),
                        (_, None) => "never".to_owned(),
                    },
                    leads(n.id).to_string(),
                ]);
            }
            out.push_str(&nodes.render());
            out.push_str(&placement_summary(s));
            match degraded(s).as_slice() {
                [] => out.push_str("\ncluster: healthy\n"),
                why => out.push_str(&format!("\ncluster: DEGRADED: {}\n", why.join("; "))),
            }
            if !s.refusals.is_empty() {
                out.push_str("\nrefused peers (last minute):\n");
                for r in &s.refusals {
                    let who = match r.direction.as_str() {
                        "incoming" => format!("node {} refused node {}", s.node_id, r.peer),
                        _ => format!("node {} refused node {}", r.peer, s.node_id),
                    };
                    out.push_str(&format!(
                        "  {who} [{}] {} time(s), last {:.0} s ago: {}\n",
                        r.reason, r.count, r.seconds_ago, r.message
                    ));
                }
            }
            out.push_str(&format!(
                "\npartitions without a known leader: {leaderless} \
                 (node {} knows the leaders of the partitions it replicates)\n",
                s.node_id
            ));
            out.push_str(&format!(
                "under-replicated partitions led by node {}: {}\n\
                 partitions catching up on node {}: {}\n",
                s.node_id,
                s.partitions.iter().filter(|p| p.under_replicated).count(),
                s.node_id,
                s.partitions.iter().filter(|p| p.catching_up).count(),
            ));
            for p in &s.partitions {
                for f in p.followers.iter().filter(|f| f.lagging) {
                    out.push_str(&format!(
                        "  partition {}: replica on node {} lags by {} entries ({}{})\n",
                        p.partition,
                        f.node,
                        f.lag,
                        f.state,
                        snapshot_note(f.snapshot_bytes_acked, f.snapshot_bytes_total),
                    ));
                }
                if p.catching_up {
                    out.push_str(&format!(
                        "  partition {}: this replica is {} entries behind its leader\n",
                        p.partition, p.lag
                    ));
                }
            }
            if partitions {
                let mut table = Table::new(&[
                    ("PARTITION", Align::Right),
                    ("LEADER", Align::Right),
                    ("REPLICAS", Align::Left),
                    ("TERM", Align::Right),
                    ("COMMIT", Align::Right),
                    ("APPLIED", Align::Right),
                    ("LAG", Align::Right),
                    ("KEYS", Align::Right),
                    ("LAGGING REPLICAS", Align::Left),
                ]);
                for p in &s.partitions {
                    let lagging: Vec<String> = p
                        .followers
                        .iter()
                        .filter(|f| f.lagging)
                        .map(|f| format!("{} (-{})", f.node, f.lag))
                        .collect();
                    table.row(vec![
                        p.partition.to_string(),
                        leader_cell(p.leader),
                        join_ids(&p.replicas),
                        p.term.to_string(),
                        p.commit_index.to_string(),
                        p.applied_index.to_string(),
                        p.lag.to_string(),
                        p.keys.to_string(),
                        if lagging.is_empty() {
                            "-".to_owned()
                        } else {
                            lagging.join(", ")
                        },
                    ]);
                }
                out.push('\n');
                out.push_str(&table.render());
            }
            out
        }
        OutputFormat::Json => {
            #[derive(Serialize)]
            struct Node<'a> {
                id: u64,
                grpc_addr: &'a str,
                state: Option<&'a str>,
                health: &'a str,
                phi: f64,
                last_heard_seconds_ago: Option<f64>,
                leaders: usize,
            }
            #[derive(Serialize)]
            struct Move<'a> {
                partition: u32,
                kind: &'a str,
                from: Option<u64>,
                to: Option<u64>,
                reason: &'a str,
                phase: &'a str,
                snapshot_bytes_acked: u64,
                snapshot_bytes_total: u64,
                entries_behind: u64,
                eta_seconds: Option<f64>,
            }
            #[derive(Serialize)]
            struct Controller<'a> {
                moves: Vec<Move<'a>>,
                under_replicated: &'a [u32],
            }
            #[derive(Serialize)]
            struct Follower<'a> {
                node: u64,
                match_index: u64,
                lag: u64,
                state: &'a str,
                lagging: bool,
                snapshot_bytes_acked: u64,
                snapshot_bytes_total: u64,
            }
            #[derive(Serialize)]
            struct Partition<'a> {
                partition: u32,
                leader: Option<u64>,
                replicas: &'a [u64],
                learners: &'a [u64],
                outgoing: &'a [u64],
                term: u64,
                commit_index: u64,
                applied_index: u64,
                lag: u64,
                keys: u64,
                under_replicated: bool,
                catching_up: bool,
                followers: Vec<Follower<'a>>,
            }
            #[derive(Serialize)]
            struct Refusal<'a> {
                peer: u64,
                direction: &'a str,
                reason: &'a str,
                message: &'a str,
                count: u64,
                seconds_ago: f64,
            }
            #[derive(Serialize)]
            struct Status<'a> {
                node_id: u64,
                partition_count: u32,
                replication_factor: u32,
                incarnation: &'a str,
                cluster_uid: Option<&'a str>,
                formation: Option<&'a str>,
                refusals: Vec<Refusal<'a>>,
                nodes: Vec<Node<'a>>,
                partitions: Vec<Partition<'a>>,
                metadata_version: u64,
                metadata_leader: Option<u64>,
                controller: Option<Controller<'a>>,
                /// Why the cluster is degraded (empty: healthy).
                degraded: Vec<String>,
            }
            fn some(t: &str) -> Option<&str> {
                (!t.is_empty()).then_some(t)
            }
            to_json_line(&Status {
                node_id: s.node_id,
                partition_count: s.partition_count,
                replication_factor: s.replication_factor,
                incarnation: &s.incarnation,
                cluster_uid: some(&s.cluster_uid),
                formation: some(&s.formation),
                refusals: s
                    .refusals
                    .iter()
                    .map(|r| Refusal {
                        peer: r.peer,
                        direction: &r.direction,
                        reason: &r.reason,
                        message: &r.message,
                        count: r.count,
                        seconds_ago: r.seconds_ago,
                    })
                    .collect(),
                nodes: s
                    .nodes
                    .iter()
                    .map(|n| Node {
                        id: n.id,
                        grpc_addr: &n.grpc_addr,
                        state: some(&n.state),
                        last_heard_seconds_ago: n.last_heard_seconds_ago,
                        health: &n.health,
                        // JSON has no NaN or infinity.
                        phi: if n.phi.is_finite() { n.phi } else { f64::MAX },
                        leaders: leads(n.id),
                    })
                    .collect(),
                metadata_version: s.metadata_version,
                metadata_leader: (s.metadata_leader != 0).then_some(s.metadata_leader),
                controller: s.controller.then(|| Controller {
                    moves: s
                        .moves
                        .iter()
                        .map(|m| Move {
                            partition: m.partition,
                            kind: &m.kind,
                            from: (m.from != 0).then_some(m.from),
                            to: (m.to != 0).then_some(m.to),
                            reason: &m.reason,
                            phase: &m.phase,
                            snapshot_bytes_acked: m.snapshot_bytes_acked,
                            snapshot_bytes_total: m.snapshot_bytes_total,
                            entries_behind: m.entries_behind,
                            eta_seconds: m.eta_seconds,
                        })
                        .collect(),
                    under_replicated: &s.under_replicated,
                }),
                degraded: degraded(s),
                partitions: s
                    .partitions
                    .iter()
                    .map(|p| Partition {
                        partition: p.partition,
                        leader: (p.leader != 0).then_some(p.leader),
                        replicas: &p.replicas,
                        learners: &p.learners,
                        outgoing: &p.outgoing,
                        term: p.term,
                        commit_index: p.commit_index,
                        applied_index: p.applied_index,
                        lag: p.lag,
                        keys: p.keys,
                        under_replicated: p.under_replicated,
                        catching_up: p.catching_up,
                        followers: p
                            .followers
                            .iter()
                            .map(|f| Follower {
                                node: f.node,
                                match_index: f.match_index,
                                lag: f.lag,
                                state: &f.state,
                                lagging: f.lagging,
                                snapshot_bytes_acked: f.snapshot_bytes_acked,
                                snapshot_bytes_total: f.snapshot_bytes_total,
                            })
                            .collect(),
                    })
                    .collect(),
            })
        }
    }
}

/// ": 40% of 12.0 MiB sent" while a snapshot is being sent.
fn snapshot_note(acked: u64, total: u64) -> String {
    if total == 0 {
        return String::new();
    }
    format!(
        ": {}% of {:.1} MiB sent",
        acked * 100 / total,
        total as f64 / (1024.0 * 1024.0)
    )
}

fn leader_cell(leader: u64) -> String {
    if leader == 0 {
        "-".to_owned()
    } else {
        leader.to_string()
    }
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests;
