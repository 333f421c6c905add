//! The REST target's world: requests written as HTTP/1-like text, one
//! single-node server (replication 1, four partitions, in memory) that
//! answers them through the real router, and what every answer must be.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use ringkv_core::NodeId;
use ringkv_node::clock::MonotonicClock;
use ringkv_node::config::ServerConfig;
use ringkv_node::disk::MemDisk;
use ringkv_node::server::Server;

/// The longest error body a node may send: a problem+json document
/// names what was wrong, it never echoes a long input back.
pub const MAX_PROBLEM_BYTES: usize = 4 << 10;

/// A request as the fuzzer writes it: the method on the first line, the
/// path and query on the second, then `name: value` header lines, an
/// empty line and the body. `None` where the text cannot be a request
/// (an HTTP server would refuse it before any handler ran).
pub fn parse_request(input: &[u8]) -> Option<Request<Body>> {
    let (method, rest) = split_line(input)?;
    let (target, mut rest) = split_line(rest)?;
    let mut builder = Request::builder()
        .method(Method::from_bytes(method).ok()?)
        .uri(std::str::from_utf8(target).ok()?);
    loop {
        let (line, after) = split_line(rest).unwrap_or((rest, &[]));
        rest = after;
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        builder = builder.header(name, value);
    }
    builder.body(Body::from(rest.to_vec())).ok()
}

fn split_line(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = input.iter().position(|&b| b == b'\n')?;
    Some((&input[..end], &input[end + 1..]))
}

/// The server every request goes to, started once per fuzzing process,
/// and its router (the one `ringkv server` serves on `--rest-listen`).
pub struct Target {
    pub runtime: tokio::runtime::Runtime,
    pub router: Router,
    _server: Server,
}

/// The process's target, started on first use (it waits until its node
/// leads every partition, so no answer is a `no_leader` of the start).
pub fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let server = runtime.block_on(start());
        let addrs = BTreeMap::from([(NodeId(1), server.grpc_addr.into())]);
        let router = ringkv_node::api::rest::router(
            server.node.clone(),
            server.stats.clone(),
            server.handshake.clone(),
            Arc::new(addrs),
            MAX_VALUE_BYTES,
            PARTITIONS,
            Duration::from_secs(2),
        );
        Target {
            runtime,
            router,
            _server: server,
        }
    })
}

const PARTITIONS: u32 = 4;
/// Small, so the fuzzer reaches the size limits.
const MAX_VALUE_BYTES: usize = 1024;

async fn start() -> Server {
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("its address")
    };
    let peers = BTreeMap::from([(NodeId(1), addr)]);
    let mut config = ServerConfig::new(NodeId(1), peers, addr, "/data".into());
    config.replication_factor = 1;
    config.partition_count = PARTITIONS;
    config.max_key_bytes = 256;
    config.max_value_bytes = MAX_VALUE_BYTES;
    // Frequent snapshots: the fuzzer's writes do not pile up in memory.
    config.snapshot_entries = 1_000;
    config.request_timeout = Duration::from_secs(2);
    let server = Server::start(
        config,
        Arc::new(MonotonicClock::new()),
        Arc::new(MemDisk::new()),
        7,
    )
    .await
    .expect("the fuzzed node starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !server.node.view().ready {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fuzzed node has no leader for every partition after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server
}

/// Sends `request` and checks the answer: never a 500 (a handler that
/// failed in a way it did not expect); every error is a bounded
/// problem+json document whose `status` is the response's. A success
/// is not read: a watch or the dashboard's stream would not end.
pub async fn check(router: Router, request: Request<Body>) {
    use tower::ServiceExt;
    let what = format!("{} {}", request.method(), request.uri());
    let response: Response<Body> = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{what}: 500 Internal Server Error"
    );
    if status.is_success() || status.is_redirection() || status == StatusCode::NOT_MODIFIED {
        return;
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(
        content_type.as_deref(),
        Some(&b"application/problem+json"[..]),
        "{what}: a {status} that is not problem+json"
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("an error body is whole")
        .to_bytes();
    assert!(
        body.len() <= MAX_PROBLEM_BYTES,
        "{what}: a {status} of {} bytes",
        body.len()
    );
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{what}: a {status} whose body is not JSON: {e}"));
    assert_eq!(
        doc["status"].as_u64(),
        Some(u64::from(status.as_u16())),
        "{what}: problem status differs from the response's"
    );
    assert!(doc["code"].is_string(), "{what}: a problem without a code");
}
