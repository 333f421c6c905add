//! Tests of `ringkv bench`: argument parsing, seeded generation, report
//! math and shape, and whole runs against an in-process fake REST server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::serve::ListenerExt as _;
use clap::Parser;

use super::*;

#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
}

#[test]
fn defaults_and_endpoint_choice_per_protocol() {
    let a = parse(&[]).unwrap();
    assert_eq!(a.protocol, Protocol::Rest);
    assert_eq!((a.clients, a.keys, a.value_size), (50, 10_000, 100));
    assert_eq!(a.duration, Duration::from_secs(10));
    assert_eq!((a.ops, a.read_ratio, a.seed), (None, 0.0, 1));
    assert_eq!(a.effective_endpoints(), DEFAULT_REST_ENDPOINTS);
    let a = parse(&["--protocol", "grpc"]).unwrap();
    assert_eq!(a.effective_endpoints(), DEFAULT_GRPC_ENDPOINTS);
    let a = parse(&["--protocol", "grpc", "--endpoints", "h:1"]).unwrap();
    assert_eq!(a.effective_endpoints(), ["http://h:1"]);
    let a = parse(&["--read-ratio", "0.25", "--ops", "1000", "-o", "json"]).unwrap();
    assert_eq!(
        (a.read_ratio, a.ops, a.output),
        (0.25, Some(1000), OutputFormat::Json)
    );
}

#[test]
fn out_of_range_options_are_usage_errors() {
    for bad in [
        &["--read-ratio", "1.5"][..],
        &["--read-ratio", "-0.1"],
        &["--clients", "0"],
        &["--keys", "0"],
        &["--ops", "0"],
        &["--duration", "10"],
    ] {
        let err = parse(bad).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE), "{bad:?}");
    }
}

#[test]
fn generation_is_deterministic_per_seed_and_client() {
    let draw = |seed, client| {
        let mut rng = Rng::for_client(seed, client);
        (0..8).map(|_| rng.below(10_000)).collect::<Vec<_>>()
    };
    assert_eq!(draw(1, 0), draw(1, 0));
    assert_ne!(draw(1, 0), draw(1, 1));
    assert_ne!(draw(1, 0), draw(2, 0));

    let pool = ValuePool::new(7, 100);
    let again = ValuePool::new(7, 100);
    let (mut r1, mut r2) = (Rng::new(3), Rng::new(3));
    for _ in 0..100 {
        let value = pool.pick(&mut r1);
        assert_eq!(value, again.pick(&mut r2));
        assert_eq!(value.len(), 100);
        assert!(value.iter().all(u8::is_ascii_alphanumeric));
    }
    assert_ne!(ValuePool::new(8, 100).bytes, pool.bytes);
    assert!(ValuePool::new(7, 0).pick(&mut r1).is_empty());
    assert_eq!(key_name(42), "bench-00000042");
}

#[test]
fn rng_ranges_and_probabilities_hold() {
    let mut rng = Rng::new(99);
    let mut seen = [0u32; 10];
    for _ in 0..10_000 {
        seen[rng.below(10) as usize] += 1;
    }
    // Uniform: each bucket near 1000.
    assert!(seen.iter().all(|&n| (850..1150).contains(&n)), "{seen:?}");
    assert!((0..1000).all(|_| !rng.chance(0.0)));
    assert!((0..1000).all(|_| rng.chance(1.0)));
    let hits = (0..10_000).filter(|_| rng.chance(0.3)).count();
    assert!((2700..3300).contains(&hits), "{hits}");
}

/// Stats with known latencies: writes 1..=1000 µs, two write errors, and
/// reads of 5 ms of which one missed, one read timeout.
fn sample_stats() -> Stats {
    let mut stats = Stats::new();
    for us in 1..=1000 {
        stats.record(false, Outcome::Ok, Duration::from_micros(us));
    }
    stats.record(false, Outcome::Failed(ErrorCode::NoLeader), Duration::ZERO);
    stats.record(
        false,
        Outcome::Failed(ErrorCode::TimeoutOutcomeUnknown),
        Duration::ZERO,
    );
    stats.record(true, Outcome::Ok, Duration::from_millis(5));
    stats.record(true, Outcome::Miss, Duration::from_millis(5));
    stats.record(
        true,
        Outcome::Failed(ErrorCode::ReadTimeout),
        Duration::ZERO,
    );
    stats
}

#[test]
fn report_math_counts_and_percentiles() {
    let mut args = parse(&["--read-ratio", "0.5"]).unwrap();
    args.warmup = Duration::from_millis(500);
    let mut stats = Stats::new();
    // Merging per-client stats is what a run does.
    stats.merge(&sample_stats());
    let report = Report::new(
        &args,
        args.effective_endpoints(),
        &stats,
        Duration::from_secs(2),
    );
    assert_eq!(
        (report.total_ops, report.ok_ops, report.error_ops),
        (1005, 1002, 3)
    );
    assert_eq!(report.throughput_ops_s, 501.0);
    let w = &report.writes;
    assert_eq!(
        (w.ops, w.ok, w.misses, w.outcome_unknown),
        (1002, 1000, 0, 1)
    );
    let l = w.latency_ms.as_ref().unwrap();
    assert_eq!(
        (l.p50, l.p90, l.p99, l.p999, l.max),
        (0.5, 0.9, 0.99, 0.999, 1.0)
    );
    assert!((l.mean - 0.5005).abs() < 0.001, "{}", l.mean);
    let r = &report.reads;
    assert_eq!((r.ops, r.ok, r.misses, r.outcome_unknown), (3, 2, 1, 0));
    assert_eq!(r.errors.get("read_timeout"), Some(&1));
    insta::assert_snapshot!("report_table", report.to_table());
    insta::assert_snapshot!(
        "report_json",
        serde_json::to_string_pretty(&report).unwrap()
    );
}

#[test]
fn an_empty_class_reports_no_latency() {
    let args = parse(&[]).unwrap();
    let report = Report::new(&args, vec![], &Stats::new(), Duration::ZERO);
    assert!(report.reads.latency_ms.is_none());
    assert_eq!(report.throughput_ops_s, 0.0);
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["reads"]["latency_ms"], serde_json::Value::Null);
    assert!(
        report
            .to_table()
            .contains("reads     0   0   0.0       -       -       -         -       -\n")
    );
}

/// A fake REST node: an in-memory map, keys ending in `7` answer
/// `no_leader`, and it counts requests and accepted connections.
#[derive(Clone, Default)]
struct FakeRest {
    keys: Arc<Mutex<HashMap<String, Bytes>>>,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    consistency_queries: Arc<Mutex<Vec<String>>>,
}

fn problem(status: StatusCode, code: &str) -> axum::response::Response {
    let body = serde_json::json!({
        "type": format!("https://ringkv.dev/problems/{code}"),
        "title": code,
        "status": status.as_u16(),
        "detail": format!("fake {code}"),
        "code": code,
    });
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn fake_get(
    State(fake): State<FakeRest>,
    Path(key): Path<String>,
    query: axum::extract::RawQuery,
) -> axum::response::Response {
    fake.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(q) = query.0 {
        fake.consistency_queries.lock().unwrap().push(q);
    }
    match fake.keys.lock().unwrap().get(&key) {
        Some(value) => (StatusCode::OK, [("etag", "\"1\"")], value.clone()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not_found"),
    }
}

async fn fake_put(
    State(fake): State<FakeRest>,
    Path(key): Path<String>,
    body: Bytes,
) -> axum::response::Response {
    fake.requests.fetch_add(1, Ordering::Relaxed);
    if key.ends_with('7') {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "no_leader");
    }
    let created = fake.keys.lock().unwrap().insert(key, body).is_none();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let reply = serde_json::json!({"version": 1, "mod_revision": 1, "created": created});
    (status, reply.to_string()).into_response()
}

async fn serve_rest(fake: FakeRest) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::clone(&fake.connections);
    let listener = listener.tap_io(move |_| {
        connections.fetch_add(1, Ordering::Relaxed);
    });
    let app = axum::Router::new()
        .route("/v1/kv/{key}", axum::routing::get(fake_get).put(fake_put))
        .with_state(fake);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn rest_args(addrs: &[SocketAddr], extra: &[&str]) -> BenchArgs {
    let endpoints = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["--endpoints", endpoints.as_str()];
    args.extend_from_slice(extra);
    parse(&args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_run_with_op_budget_reuses_connections() {
    let (a, b) = (FakeRest::default(), FakeRest::default());
    let addrs = [serve_rest(a.clone()).await, serve_rest(b.clone()).await];
    let args = rest_args(
        &addrs,
        &[
            "--clients",
            "4",
            "--ops",
            "400",
            "--keys",
            "100",
            "--read-ratio",
            "0.5",
        ],
    );
    let targets = build_targets(&args, &args.effective_endpoints()).unwrap();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        recording: AtomicBool::new(true),
        budget: args.ops,
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        window: std::sync::Mutex::new(new_histogram()),
    });
    let values = ValuePool::new(args.seed, args.value_size);
    let mut stats = Stats::new();
    let handles: Vec<_> = (0..args.clients)
        .map(|client| {
            tokio::spawn(
                Worker {
                    target: targets[client as usize % targets.len()].clone(),
                    routed: None,
                    rng: Rng::for_client(args.seed, client),
                    values: values.clone(),
                    shared: Arc::clone(&shared),
                    keys: args.keys,
                    read_ratio: args.read_ratio,
                    timeout: args.timeout,
                }
                .run(),
            )
        })
        .collect();
    for handle in handles {
        stats.merge(&handle.await.unwrap());
    }
    let report = Report::new(&args, vec![], &stats, Duration::from_secs(1));
    // Exactly the budget was sent, split over both endpoints.
    assert_eq!(report.total_ops, 400);
    let served = a.requests.load(Ordering::Relaxed) + b.requests.load(Ordering::Relaxed);
    assert_eq!(served, 400);
    assert!(a.requests.load(Ordering::Relaxed) > 0 && b.requests.load(Ordering::Relaxed) > 0);
    // Keep-alive: about one connection per client, not one per request.
    // (hyper's pool hands a connection back from a background task, so a
    // client that sends again at once may race it and open a spare one,
    // which then stays pooled.)
    let connections = a.connections.load(Ordering::Relaxed) + b.connections.load(Ordering::Relaxed);
    assert!(connections <= 8, "{connections} connections for 4 clients");
    // Writes to keys ending in 7 fail with no_leader, others succeed; reads
    // of keys not written yet are misses.
    assert!(report.writes.errors.get("no_leader").copied().unwrap_or(0) > 0);
    assert_eq!(report.writes.errors.len(), 1);
    assert!(report.reads.misses > 0 && report.reads.misses < report.reads.ok);
    assert!(report.reads.errors.is_empty());
    assert!(a.consistency_queries.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_run_end_to_end_with_prefill_and_stale_reads() {
    let fake = FakeRest::default();
    let addr = serve_rest(fake.clone()).await;
    let args = rest_args(
        &[addr],
        &[
            "--clients",
            "3",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--keys",
            "20",
            "--read-ratio",
            "1",
            "--consistency",
            "stale",
            "--prefill",
            "-o",
            "json",
        ],
    );
    let report = measure(&args).await.unwrap().expect("endpoint reachable");
    // Every key except those ending in 7 was prefilled, so only reads of
    // those two keys miss.
    assert_eq!(fake.keys.lock().unwrap().len(), 18);
    assert_eq!(report.writes.ops, 0);
    assert!(report.reads.ok > 0 && report.reads.misses < report.reads.ok / 2);
    assert!(report.duration_s >= 0.3 && report.warmup_s == 0.1);
    let queries = fake.consistency_queries.lock().unwrap();
    assert!(!queries.is_empty());
    assert!(queries.iter().all(|q| q == "consistency=stale"));
}

#[tokio::test]
async fn nothing_reachable_exits_1() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args = rest_args(&[dead], &["--duration", "100ms"]);
    assert_eq!(run(args).await.unwrap(), ExitCode::from(exit::OTHER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_run_with_op_budget_counts_failures_by_code() {
    use crate::cli::fake_grpc::{FakeNode, Scripted, serve};
    let node = FakeNode::default();
    node.state
        .lock()
        .unwrap()
        .script
        .extend([Scripted::Fail(tonic::Code::Unavailable, "no_leader"); 3]);
    let addr = serve(node.clone()).await;
    let args = parse(&[
        "--protocol",
        "grpc",
        "--endpoints",
        &addr.to_string(),
        "--clients",
        "4",
        "--ops",
        "200",
        "--keys",
        "50",
        "--read-ratio",
        "0.5",
    ])
    .unwrap();
    let report = measure(&args).await.unwrap().expect("endpoint reachable");
    // No retries in the bench: exactly the budget reached the server.
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::SeqCst), 200);
    assert_eq!(report.total_ops, 200);
    assert_eq!(report.error_ops, 3);
    let no_leader = report.writes.errors.get("no_leader").copied().unwrap_or(0)
        + report.reads.errors.get("no_leader").copied().unwrap_or(0);
    assert_eq!(no_leader, 3);
    assert!(report.reads.misses > 0);
    assert!(report.writes.latency_ms.is_some());
    assert!(!node.state.lock().unwrap().keys.is_empty());
}
