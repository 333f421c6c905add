//! `ringkv bench`: a closed-loop load generator over REST or gRPC.
//!
//! `--clients` tasks each send one request at a time; client `i` talks to
//! endpoint `i mod n`. Every operation picks a key `bench-{:08}` uniformly
//! from `--keys` and is a read with probability `--read-ratio`, else a write
//! of a `--value-size` value of alphanumerics. Keys, values and the
//! read/write choice all come from `--seed`, so two runs send the same
//! sequence per client. REST goes through one shared HTTP/1.1 keep-alive
//! pool; gRPC through one HTTP/2 channel per endpoint.
//!
//! Phases: optional `--prefill` (write every key once), `--warmup` (load,
//! not recorded), then the measured phase, which ends after `--duration`
//! or, with `--ops N`, after N operations. A progress line goes to stderr
//! once a second, with that second's p99 and slowest successful operation
//! (so a stall, such as a burst of compaction, shows in the second it
//! happens rather than vanishing into the run's percentiles). Latencies are recorded in microseconds, for successful
//! operations only (a fast-failing error would flatter the percentiles);
//! failures are counted by code (see [`failure::ErrorCode`]). A read of a
//! key never written succeeds as a *miss*. REST reads other than
//! linearizable add `?consistency=lease|stale` to the URL.
//!
//! The `-o json` report is one object with these fields (times in seconds,
//! latencies in milliseconds with microsecond precision):
//! `protocol`, `route` (`any` or `leader`), `endpoints`, `clients`, `keys`, `value_size`, `read_ratio`,
//! `consistency`, `seed`, `warmup_s`, `duration_s` (measured phase, until
//! the last client stopped), `total_ops` (completed in the measured phase,
//! failed included), `ok_ops`, `error_ops`, `throughput_ops_s` (`ok_ops` per
//! second), and `writes` / `reads`, each `{ops, ok, misses, ops_s (ok per
//! second), latency_ms: null | {p50, p90, p99, p999, max, mean}, errors:
//! {code: count}, outcome_unknown}`; `outcome_unknown` counts the errors
//! (also in `errors`) after which a write may have been applied.
//!
//! Exit status: 0 when the run completed, even with errors; 1 when no
//! endpoint was reachable or no operation succeeded.
//!
//! [`failure::ErrorCode`]: super::failure::ErrorCode

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::{GetRequest, PutRequest};
use serde::Serialize;
use tonic::transport::Endpoint;

use super::failure::{ErrorCode, Failure, Op};
use super::table::{Align, Table};
use super::{Consistency, OutputFormat, exit, parse_duration, parse_endpoint};

/// Default REST endpoints: the 3-node demo.
const DEFAULT_REST_ENDPOINTS: [&str; 3] = [
    "http://127.0.0.1:8081",
    "http://127.0.0.1:8082",
    "http://127.0.0.1:8083",
];
/// Default gRPC endpoints: the 3-node demo.
const DEFAULT_GRPC_ENDPOINTS: [&str; 3] = [
    "http://127.0.0.1:9091",
    "http://127.0.0.1:9092",
    "http://127.0.0.1:9093",
];
/// How long the reachability check waits for each endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Extra alphanumerics generated beyond one value, so that values start
/// at different offsets of one shared buffer.
const VALUE_POOL_SLACK: usize = 4096;
/// Significant figures kept by the latency histograms (0.1% resolution).
const HISTOGRAM_SIGFIGS: u8 = 3;

/// A latency histogram in microseconds. Auto-resizing: memory grows only
/// with the slowest latency seen.
fn new_histogram() -> Histogram<u64> {
    Histogram::new(HISTOGRAM_SIGFIGS).expect("3 significant figures are valid")
}

/// The API the bench loads the cluster through.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 `/v1/kv/{key}`.
    Rest,
    /// `ringkv.v1.Kv`.
    Grpc,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Rest => "rest",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Options of `ringkv bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Protocol to send requests with.
    #[arg(long, value_enum, default_value = "rest")]
    pub protocol: Protocol,
    /// Endpoints, comma separated; client i uses endpoint i mod n.
    /// [default: 127.0.0.1:8081,8082,8083 for REST, :9091,9092,9093 for gRPC]
    #[arg(
        long,
        env = "RINGKV_BENCH_ENDPOINTS",
        value_delimiter = ',',
        value_parser = parse_endpoint
    )]
    pub endpoints: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Length of the measured phase (ignored with --ops).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many measured operations instead of after --duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Fraction of operations that are reads, 0.0 (all writes) to 1.0.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub read_ratio: f64,
    /// Consistency of the reads.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: Consistency,
    /// Load before measuring, not recorded.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Write every key once before the warmup, so that reads hit.
    #[arg(long)]
    pub prefill: bool,
    /// Deadline of each request.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The final report: table (for people) or json (one JSON object on stdout; the progress
    /// lines go to stderr either way).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Seed of keys, values and the read/write mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where each request goes: `any` (client i always uses endpoint i mod
    /// n; the cluster forwards to the leader) or `leader` (each key goes to
    /// the endpoint of its partition's leader, learned once at the start
    /// from the cluster status, like a partition-aware client library).
    #[arg(long, value_enum, default_value = "any")]
    pub route: Route,
}

/// How the bench picks an endpoint per request.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Any,
    Leader,
}

/// `--route leader`: for each partition, the index of its leader's target.
#[derive(Debug)]
struct LeaderMap {
    partition_count: u32,
    target_of: Vec<Option<usize>>,
}

impl LeaderMap {
    fn target_for(&self, key: u64) -> Option<usize> {
        let p = ringkv_core::ring::partition_of(key_name(key).as_bytes(), self.partition_count);
        self.target_of.get(p.0 as usize).copied().flatten()
    }
}

/// Asks every endpoint for its status: which node it is, and the leaders
/// of the partitions it replicates.
async fn learn_leaders(args: &BenchArgs, endpoints: &[String]) -> anyhow::Result<LeaderMap> {
    let mut target_of_node: BTreeMap<u64, usize> = BTreeMap::new();
    let mut leaders: BTreeMap<u32, u64> = BTreeMap::new();
    let mut partition_count = 0;
    for (i, e) in endpoints.iter().enumerate() {
        let status = match args.protocol {
            Protocol::Rest => rest_status(e).await,
            Protocol::Grpc => grpc_status(e).await,
        }
        .with_context(|| format!("asking {e} for the cluster status (--route leader)"))?;
        partition_count = status.partition_count;
        target_of_node.insert(status.node_id, i);
        for p in status.partitions {
            if p.leader != 0 {
                leaders.insert(p.partition, p.leader);
            }
        }
    }
    anyhow::ensure!(
        partition_count > 0,
        "no endpoint reported a partition count"
    );
    let target_of = (0..partition_count)
        .map(|p| leaders.get(&p).and_then(|l| target_of_node.get(l).copied()))
        .collect();
    Ok(LeaderMap {
        partition_count,
        target_of,
    })
}

async fn grpc_status(endpoint: &str) -> anyhow::Result<ringkv_proto::v1::StatusResponse> {
    let endpoint = Endpoint::from_shared(endpoint.to_owned())?.connect_timeout(CONNECT_TIMEOUT);
    let channel = super::tls::connect(endpoint).await?;
    let mut client = super::auth::cluster(channel);
    Ok(client
        .status(ringkv_proto::v1::StatusRequest {})
        .await?
        .into_inner())
}

async fn rest_status(endpoint: &str) -> anyhow::Result<ringkv_proto::v1::StatusResponse> {
    let client: RestClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request =
        super::auth::with_token(hyper::Request::get(format!("{endpoint}/v1/cluster/status")))
            .body(Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(CONNECT_TIMEOUT * 5, client.request(request)).await??;
    let body = response.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    Ok(ringkv_proto::v1::StatusResponse {
        node_id: num(&v, "node_id").context("status without node_id")?,
        partition_count: num(&v, "partition_count")
            .and_then(|n| u32::try_from(n).ok())
            .context("status without partition_count")?,
        partitions: v
            .get("partitions")
            .and_then(serde_json::Value::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| ringkv_proto::v1::PartitionStatus {
                        partition: num(p, "partition").unwrap_or(0) as u32,
                        leader: num(p, "leader").unwrap_or(0),
                        ..Default::default()
                    })
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    })
}

impl BenchArgs {
    /// The endpoints to use: the given ones, else the protocol's defaults.
    fn effective_endpoints(&self) -> Vec<String> {
        if !self.endpoints.is_empty() {
            return self.endpoints.clone();
        }
        let defaults = match self.protocol {
            Protocol::Rest => DEFAULT_REST_ENDPOINTS,
            Protocol::Grpc => DEFAULT_GRPC_ENDPOINTS,
        };
        defaults.iter().map(|e| (*e).to_owned()).collect()
    }
}

/// Parses a probability in `[0, 1]`.
fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid ratio {text:?}"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("ratio {text:?} is not between 0 and 1"))
    }
}

/// Runs the benchmark and prints its report on stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let Some(report) = measure(&args).await? else {
        return Ok(ExitCode::from(exit::OTHER));
    };
    let out = match args.output {
        OutputFormat::Table => report.to_table(),
        OutputFormat::Json => serde_json::to_string(&report)? + "\n",
    };
    super::write_stdout(out.as_bytes());
    if report.ok_ops == 0 {
        eprintln!("error: no operation succeeded");
        return Ok(ExitCode::from(exit::OTHER));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs all phases and returns the report, or `None` (after saying why on
/// stderr) when no endpoint is reachable.
async fn measure(args: &BenchArgs) -> anyhow::Result<Option<Report>> {
    let endpoints = args.effective_endpoints();
    let reachable = check_reachable(&endpoints).await;
    if reachable.iter().all(|r| r.is_err()) {
        let reasons: Vec<String> = reachable.into_iter().filter_map(Result::err).collect();
        eprintln!(
            "error: {}: no endpoint reachable ({})",
            ErrorCode::Unreachable.as_str(),
            reasons.join("; ")
        );
        return Ok(None);
    }
    for reason in reachable.into_iter().filter_map(Result::err) {
        eprintln!("warning: {reason}; its clients will fail");
    }
    let targets = build_targets(args, &endpoints)?;
    let leaders = match args.route {
        Route::Any => None,
        Route::Leader => Some(Arc::new(learn_leaders(args, &endpoints).await?)),
    };
    let values = ValuePool::new(args.seed, args.value_size);
    if args.prefill {
        prefill(args, &targets, &values, &Progress::new()).await?;
    }
    // The run's clock starts after the prefill: "[  1.0s]" is the run's
    // first second (the prefill has its own lines, with their own clock).
    let progress = Progress::new();

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        recording: AtomicBool::new(args.warmup.is_zero()),
        budget: args.ops,
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        window: std::sync::Mutex::new(new_histogram()),
    });
    let run_start = Instant::now();
    let mut measure_start = run_start;
    let mut handles = Vec::with_capacity(args.clients as usize);
    for client in 0..args.clients {
        let worker = Worker {
            target: targets[client as usize % targets.len()].clone(),
            routed: leaders.clone().map(|m| (m, targets.clone())),
            rng: Rng::for_client(args.seed, client),
            values: values.clone(),
            shared: Arc::clone(&shared),
            keys: args.keys,
            read_ratio: args.read_ratio,
            timeout: args.timeout,
        };
        handles.push(tokio::spawn(worker.run()));
    }

    // Phase boundaries: end of warmup, then (without --ops) end of the run.
    let mut boundary = if args.warmup.is_zero() {
        args.ops.is_none().then(|| run_start + args.duration)
    } else {
        Some(run_start + args.warmup)
    };
    let mut all_done = std::pin::pin!(futures::future::join_all(handles));
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let results = loop {
        let next_boundary = boundary.map(tokio::time::Instant::from_std);
        tokio::select! {
            results = &mut all_done => break results,
            _ = ticker.tick() => {
                let phase = if shared.recording.load(Ordering::Relaxed) { "" } else { " warmup" };
                progress.tick(&shared.completed, &shared.failed, phase, Some(&shared.window));
            }
            _ = sleep_until_or_never(next_boundary) => {
                if !shared.recording.load(Ordering::Relaxed) {
                    measure_start = Instant::now();
                    shared.recording.store(true, Ordering::Relaxed);
                    boundary = args.ops.is_none().then(|| measure_start + args.duration);
                } else {
                    shared.stop.store(true, Ordering::Relaxed);
                    boundary = None;
                }
            }
        }
    };
    let elapsed = measure_start.elapsed();
    progress.finish();

    let mut stats = Stats::new();
    for result in results {
        stats.merge(&result.context("a bench client panicked")?);
    }
    Ok(Some(Report::new(args, endpoints, &stats, elapsed)))
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Tries a TCP connection to every endpoint, in parallel.
async fn check_reachable(endpoints: &[String]) -> Vec<Result<(), String>> {
    let checks = endpoints.iter().map(|uri| async move {
        let authority = uri.strip_prefix("http://").unwrap_or(uri);
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("{uri}: {e}")),
            Err(_) => Err(format!("{uri}: connect timed out")),
        }
    });
    futures::future::join_all(checks).await
}

/// Writes every key once, the key space split among the clients. Failures
/// are counted on the progress line and otherwise ignored.
async fn prefill(
    args: &BenchArgs,
    targets: &[Target],
    values: &ValuePool,
    progress: &Progress,
) -> anyhow::Result<()> {
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for client in 0..args.clients {
        let mut target = targets[client as usize % targets.len()].clone();
        let mut rng = Rng::for_client(args.seed ^ 0x5052_4546_494c_4c00, client);
        let values = values.clone();
        let (completed, failed) = (Arc::clone(&completed), Arc::clone(&failed));
        let (keys, stride, timeout) = (args.keys, u64::from(args.clients), args.timeout);
        handles.push(tokio::spawn(async move {
            let mut key = u64::from(client);
            while key < keys {
                let outcome = target.write(key, values.pick(&mut rng), timeout).await;
                completed.fetch_add(1, Ordering::Relaxed);
                if matches!(outcome, Outcome::Failed(_)) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                key += stride;
            }
        }));
    }
    let mut all_done = std::pin::pin!(futures::future::join_all(handles));
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let results = loop {
        tokio::select! {
            results = &mut all_done => break results,
            _ = ticker.tick() => progress.tick(&completed, &failed, " prefill", None),
        }
    };
    for result in results {
        result.context("a prefill client panicked")?;
    }
    progress.finish();
    eprintln!(
        "prefill: wrote {} keys, {} failed",
        completed.load(Ordering::Relaxed) - failed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One connection handle per endpoint, shared by the clients on it.
fn build_targets(args: &BenchArgs, endpoints: &[String]) -> anyhow::Result<Vec<Target>> {
    match args.protocol {
        Protocol::Rest if super::tls::trusted().is_some() => anyhow::bail!(
            "the REST benchmark speaks plain HTTP only; with --tls-ca, use --protocol grpc"
        ),
        Protocol::Rest => {
            let mut connector = HttpConnector::new();
            // Small requests and answers: Nagle would add up to 40 ms each.
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
            let client: RestClient = Client::builder(TokioExecutor::new())
                // Each client holds at most one connection at a time; keep
                // them all idle between requests rather than reconnecting.
                .pool_max_idle_per_host(args.clients as usize)
                .build(connector);
            let query: &'static str = match args.consistency {
                Consistency::Linearizable => "",
                Consistency::Lease => "?consistency=lease",
                Consistency::Stale => "?consistency=stale",
            };
            Ok(endpoints
                .iter()
                .map(|e| Target::Rest {
                    client: client.clone(),
                    base: Arc::from(e.as_str()),
                    read_query: query,
                })
                .collect())
        }
        Protocol::Grpc => endpoints
            .iter()
            .map(|e| {
                let channel = super::tls::connect_lazy(
                    Endpoint::from_shared(e.clone())
                        .with_context(|| format!("endpoint {e}"))?
                        .connect_timeout(CONNECT_TIMEOUT)
                        .tcp_nodelay(true),
                );
                Ok(Target::Grpc {
                    client: super::auth::kv(channel),
                    consistency: args.consistency.to_proto() as i32,
                })
            })
            .collect(),
    }
}

type RestClient = Client<HttpConnector, Full<Bytes>>;

/// Where one client sends its requests.
#[derive(Clone)]
enum Target {
    Rest {
        client: RestClient,
        /// `http://host:port`
        base: Arc<str>,
        /// Appended to read URLs: empty, or `?consistency=...`.
        read_query: &'static str,
    },
    Grpc {
        client: KvClient<super::auth::Authed>,
        consistency: i32,
    },
}

/// How one operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// A read of a key that does not exist.
    Miss,
    Failed(ErrorCode),
}

/// The name of key number `index`.
fn key_name(index: u64) -> String {
    format!("bench-{index:08}")
}

impl Target {
    async fn write(&mut self, key: u64, value: Bytes, timeout: Duration) -> Outcome {
        let sent = async {
            match self {
                Target::Rest { client, base, .. } => {
                    let request = super::auth::with_token(hyper::Request::put(format!(
                        "{base}/v1/kv/{}",
                        key_name(key)
                    )))
                    .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                    .body(Full::new(value));
                    rest_outcome(client, request, Op::Write).await
                }
                Target::Grpc { client, .. } => {
                    let mut request = tonic::Request::new(PutRequest {
                        key: Bytes::from(key_name(key)),
                        value,
                        precondition: None,
                        return_previous: false,
                        expiry: None,
                    });
                    request.set_timeout(timeout);
                    grpc_outcome(client.put(request).await, Op::Write)
                }
            }
        };
        tokio::time::timeout(timeout, sent)
            .await
            .unwrap_or(Outcome::Failed(ErrorCode::ClientTimeout))
    }

    async fn read(&mut self, key: u64, timeout: Duration) -> Outcome {
        let sent = async {
            match self {
                Target::Rest {
                    client,
                    base,
                    read_query,
                } => {
                    let url = format!("{base}/v1/kv/{}{read_query}", key_name(key));
                    let request = super::auth::with_token(hyper::Request::get(url))
                        .body(Full::new(Bytes::new()));
                    rest_outcome(client, request, Op::Read).await
                }
                Target::Grpc {
                    client,
                    consistency,
                } => {
                    let mut request = tonic::Request::new(GetRequest {
                        key: Bytes::from(key_name(key)),
                        consistency: *consistency,
                    });
                    request.set_timeout(timeout);
                    grpc_outcome(client.get(request).await, Op::Read)
                }
            }
        };
        tokio::time::timeout(timeout, sent)
            .await
            .unwrap_or(Outcome::Failed(ErrorCode::ClientTimeout))
    }
}

/// Sends a REST request and reads the whole answer, which returns the
/// connection to the pool.
async fn rest_outcome(
    client: &RestClient,
    request: Result<hyper::Request<Full<Bytes>>, hyper::http::Error>,
    op: Op,
) -> Outcome {
    let Ok(request) = request else {
        // Only a malformed URL gets here; endpoints were validated.
        return Outcome::Failed(ErrorCode::BadReply);
    };
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) if e.is_connect() => return Outcome::Failed(ErrorCode::Unreachable),
        Err(_) => return Outcome::Failed(ErrorCode::ConnectionLost),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Outcome::Failed(ErrorCode::ConnectionLost),
    };
    if status.is_success() {
        return Outcome::Ok;
    }
    match Failure::from_problem(status.as_u16(), &body, op).code {
        ErrorCode::NotFound if op == Op::Read => Outcome::Miss,
        code => Outcome::Failed(code),
    }
}

fn grpc_outcome<T>(result: Result<tonic::Response<T>, tonic::Status>, op: Op) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(status) => match Failure::from_status(&status, op).code {
            ErrorCode::NotFound if op == Op::Read => Outcome::Miss,
            code => Outcome::Failed(code),
        },
    }
}

/// State the clients and the coordinator share; all counters are relaxed
/// (they only feed the progress line and the stop decision).
struct Shared {
    stop: AtomicBool,
    /// False during warmup: operations are sent but not recorded.
    recording: AtomicBool,
    /// `--ops`: measured operations to issue in all.
    budget: Option<u64>,
    issued: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Latencies (µs) of successful operations since the last progress line.
    window: std::sync::Mutex<Histogram<u64>>,
}

/// One closed-loop client.
struct Worker {
    target: Target,
    /// With `--route leader`: the leader map and a target per endpoint.
    routed: Option<(Arc<LeaderMap>, Vec<Target>)>,
    rng: Rng,
    values: ValuePool,
    shared: Arc<Shared>,
    keys: u64,
    read_ratio: f64,
    timeout: Duration,
}

impl Worker {
    async fn run(mut self) -> Stats {
        let mut stats = Stats::new();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let recording = self.shared.recording.load(Ordering::Relaxed);
            if recording
                && let Some(budget) = self.shared.budget
                && self.shared.issued.fetch_add(1, Ordering::Relaxed) >= budget
            {
                self.shared.stop.store(true, Ordering::Relaxed);
                break;
            }
            let is_read = self.rng.chance(self.read_ratio);
            let key = self.rng.below(self.keys);
            let target = match &mut self.routed {
                Some((map, targets)) => match map.target_for(key) {
                    Some(i) => &mut targets[i],
                    None => &mut self.target,
                },
                None => &mut self.target,
            };
            let started = Instant::now();
            let outcome = if is_read {
                target.read(key, self.timeout).await
            } else {
                let value = self.values.pick(&mut self.rng);
                target.write(key, value, self.timeout).await
            };
            let latency = started.elapsed();
            if recording {
                stats.record(is_read, outcome, latency);
            }
            if matches!(outcome, Outcome::Ok | Outcome::Miss) {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                let mut window = self.shared.window.lock().unwrap_or_else(|e| e.into_inner());
                let _ = window.record(micros);
            }
            self.shared.completed.fetch_add(1, Ordering::Relaxed);
            if matches!(outcome, Outcome::Failed(_)) {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats
    }
}

/// The bench's seeded generator: ChaCha8, one stream per client, so keys,
/// values and the read/write mix are a function of `--seed`.
#[derive(Clone, Debug)]
struct Rng(ChaCha8Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// An independent stream per client, derived from the run's seed.
    fn for_client(seed: u64, client: u32) -> Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::from(client));
        Rng(rng)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }

    /// True with probability `p` (in `[0, 1]`, which `parse_ratio` ensures);
    /// exactly never for 0 and always for 1.
    fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }
}

/// One buffer of seeded alphanumerics; each value is a cheap slice of it
/// at a random offset.
#[derive(Clone, Debug)]
struct ValuePool {
    bytes: Bytes,
    value_size: usize,
}

impl ValuePool {
    const ALPHABET: &'static [u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

    fn new(seed: u64, value_size: usize) -> ValuePool {
        let mut rng = Rng::new(seed ^ 0x5641_4c55_4553_0000);
        let bytes: Vec<u8> = (0..value_size + VALUE_POOL_SLACK)
            .map(|_| Self::ALPHABET[rng.below(Self::ALPHABET.len() as u64) as usize])
            .collect();
        ValuePool {
            bytes: Bytes::from(bytes),
            value_size,
        }
    }

    fn pick(&self, rng: &mut Rng) -> Bytes {
        let offset = rng.below(VALUE_POOL_SLACK as u64 + 1) as usize;
        self.bytes.slice(offset..offset + self.value_size)
    }
}

/// What one client (or, merged, the whole run) measured.
#[derive(Debug)]
struct Stats {
    writes: ClassStats,
    reads: ClassStats,
}

#[derive(Debug)]
struct ClassStats {
    /// Latency of successful operations, in microseconds.
    latency_us: Histogram<u64>,
    ok: u64,
    misses: u64,
    errors: [u64; ErrorCode::ALL.len()],
}

impl ClassStats {
    fn new() -> ClassStats {
        ClassStats {
            latency_us: new_histogram(),
            ok: 0,
            misses: 0,
            errors: [0; ErrorCode::ALL.len()],
        }
    }

    fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok | Outcome::Miss => {
                self.ok += 1;
                self.misses += u64::from(outcome == Outcome::Miss);
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                // `record` grows the histogram; `saturating_record` would
                // clamp to its current (initially tiny) range instead.
                if self.latency_us.record(micros).is_err() {
                    self.latency_us.saturating_record(micros);
                }
            }
            Outcome::Failed(code) => self.errors[code.index()] += 1,
        }
    }

    fn merge(&mut self, other: &ClassStats) {
        // Both histograms auto-resize, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.misses += other.misses;
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
    }
}

impl Stats {
    fn new() -> Stats {
        Stats {
            writes: ClassStats::new(),
            reads: ClassStats::new(),
        }
    }

    fn record(&mut self, is_read: bool, outcome: Outcome, latency: Duration) {
        let class = if is_read {
            &mut self.reads
        } else {
            &mut self.writes
        };
        class.record(outcome, latency);
    }

    fn merge(&mut self, other: &Stats) {
        self.writes.merge(&other.writes);
        self.reads.merge(&other.reads);
    }
}

/// The progress line on stderr: overwritten in place on a terminal, one
/// line per second otherwise (logs, CI).
struct Progress {
    started: Instant,
    terminal: bool,
    last: std::sync::Mutex<(Instant, u64)>,
}

impl Progress {
    fn new() -> Progress {
        let now = Instant::now();
        Progress {
            started: now,
            terminal: std::io::stderr().is_terminal(),
            last: std::sync::Mutex::new((now, 0)),
        }
    }

    fn tick(
        &self,
        completed: &AtomicU64,
        failed: &AtomicU64,
        phase: &str,
        window: Option<&std::sync::Mutex<Histogram<u64>>>,
    ) {
        let now = Instant::now();
        let total = completed.load(Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (then, before) = *last;
        *last = (now, total);
        let rate = total.saturating_sub(before) as f64 / now.duration_since(then).as_secs_f64();
        let mut line = format!(
            "[{:6.1}s{phase}] {rate:8.0} ops/s  total {total}  errors {}",
            now.duration_since(self.started).as_secs_f64(),
            failed.load(Ordering::Relaxed)
        );
        if let Some(window) = window {
            let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
            if !w.is_empty() {
                let ms = |us: u64| us as f64 / 1000.0;
                line.push_str(&format!(
                    "  p99 {:.1} ms  max {:.1} ms",
                    ms(w.value_at_quantile(0.99)),
                    ms(w.max())
                ));
            }
            w.reset();
        }
        if self.terminal {
            eprint!("\r{line:<72}");
        } else {
            eprintln!("{line}");
        }
    }

    /// Ends an overwritten line and restarts the rate for the next phase.
    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = (Instant::now(), 0);
    }
}

/// The final report; its JSON shape is documented in the module doc.
#[derive(Serialize, Debug)]
struct Report {
    protocol: &'static str,
    route: Route,
    endpoints: Vec<String>,
    clients: u32,
    keys: u64,
    value_size: usize,
    read_ratio: f64,
    consistency: &'static str,
    seed: u64,
    warmup_s: f64,
    duration_s: f64,
    total_ops: u64,
    ok_ops: u64,
    error_ops: u64,
    throughput_ops_s: f64,
    writes: ClassReport,
    reads: ClassReport,
}

#[derive(Serialize, Debug)]
struct ClassReport {
    ops: u64,
    ok: u64,
    misses: u64,
    ops_s: f64,
    latency_ms: Option<Latency>,
    errors: BTreeMap<&'static str, u64>,
    outcome_unknown: u64,
}

#[derive(Serialize, Debug)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

/// Rounds to 3 decimals, so the JSON shows what the table shows.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Microseconds to milliseconds (exact to 3 decimals).
fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl ClassReport {
    fn new(stats: &ClassStats, op: Op, elapsed: Duration) -> ClassReport {
        let errors: BTreeMap<&'static str, u64> = ErrorCode::ALL
            .iter()
            .filter(|c| stats.errors[c.index()] > 0)
            .map(|c| (c.as_str(), stats.errors[c.index()]))
            .collect();
        let outcome_unknown = ErrorCode::ALL
            .iter()
            .filter(|c| c.leaves_outcome_unknown(op))
            .map(|c| stats.errors[c.index()])
            .sum();
        let h = &stats.latency_us;
        let latency_ms = (!h.is_empty()).then(|| Latency {
            p50: us_to_ms(h.value_at_quantile(0.50)),
            p90: us_to_ms(h.value_at_quantile(0.90)),
            p99: us_to_ms(h.value_at_quantile(0.99)),
            p999: us_to_ms(h.value_at_quantile(0.999)),
            max: us_to_ms(h.max()),
            mean: round3(h.mean() / 1000.0),
        });
        ClassReport {
            ops: stats.ok + stats.errors.iter().sum::<u64>(),
            ok: stats.ok,
            misses: stats.misses,
            ops_s: round3(per_second(stats.ok, elapsed)),
            latency_ms,
            errors,
            outcome_unknown,
        }
    }

    /// `code=count` pairs, or `none`.
    fn error_list(&self) -> String {
        if self.errors.is_empty() {
            return "none".to_owned();
        }
        let pairs: Vec<String> = self
            .errors
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        pairs.join(" ")
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

impl Report {
    fn new(args: &BenchArgs, endpoints: Vec<String>, stats: &Stats, elapsed: Duration) -> Report {
        let writes = ClassReport::new(&stats.writes, Op::Write, elapsed);
        let reads = ClassReport::new(&stats.reads, Op::Read, elapsed);
        let ok_ops = writes.ok + reads.ok;
        let total_ops = writes.ops + reads.ops;
        Report {
            protocol: args.protocol.as_str(),
            route: args.route,
            endpoints,
            clients: args.clients,
            keys: args.keys,
            value_size: args.value_size,
            read_ratio: args.read_ratio,
            consistency: args.consistency.as_str(),
            seed: args.seed,
            warmup_s: round3(args.warmup.as_secs_f64()),
            duration_s: round3(elapsed.as_secs_f64()),
            total_ops,
            ok_ops,
            error_ops: total_ops - ok_ops,
            throughput_ops_s: round3(per_second(ok_ops, elapsed)),
            writes,
            reads,
        }
    }

    fn to_table(&self) -> String {
        let mut out = format!(
            "ringkv bench: {}, {} endpoints (route: {}), {} clients, {} keys, {}-byte values, \
             read ratio {} ({}), seed {}\n",
            self.protocol,
            self.endpoints.len(),
            match self.route {
                Route::Any => "any",
                Route::Leader => "leader",
            },
            self.clients,
            self.keys,
            self.value_size,
            self.read_ratio,
            self.consistency,
            self.seed
        );
        out.push_str(&format!(
            "measured {:.3} s (after {:.3} s warmup): {} ops, {} errors, {:.1} ok ops/s\n\n",
            self.duration_s, self.warmup_s, self.total_ops, self.error_ops, self.throughput_ops_s
        ));
        let mut table = Table::new(&[
            ("", Align::Left),
            ("OPS", Align::Right),
            ("OK", Align::Right),
            ("OK/S", Align::Right),
            ("P50 ms", Align::Right),
            ("P90 ms", Align::Right),
            ("P99 ms", Align::Right),
            ("P99.9 ms", Align::Right),
            ("MAX ms", Align::Right),
        ]);
        for (name, class) in [("writes", &self.writes), ("reads", &self.reads)] {
            let mut row = vec![
                name.to_owned(),
                class.ops.to_string(),
                class.ok.to_string(),
                format!("{:.1}", class.ops_s),
            ];
            match &class.latency_ms {
                Some(l) => {
                    row.extend([l.p50, l.p90, l.p99, l.p999, l.max].map(|ms| format!("{ms:.3}")))
                }
                None => row.extend(std::iter::repeat_n("-".to_owned(), 5)),
            }
            table.row(row);
        }
        out.push_str(&table.render());
        out.push('\n');
        out.push_str(&format!(
            "read misses (key not written yet): {}\n",
            self.reads.misses
        ));
        out.push_str(&format!(
            "errors: writes {}; reads {}\n",
            self.writes.error_list(),
            self.reads.error_list()
        ));
        if self.writes.outcome_unknown > 0 {
            out.push_str(&format!(
                "writes with unknown outcome (may have been applied): {}\n",
                self.writes.outcome_unknown
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
