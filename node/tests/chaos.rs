//! Real-process chaos: three `ringkv server` processes, each in a network
//! namespace of its own, every peer link through a fault-injecting TCP
//! proxy this test controls (as Toxiproxy does), clients on all three APIs
//! (REST, gRPC, the Redis protocol), and a nemesis that kills nodes with
//! SIGKILL, stops them with SIGSTOP, partitions them (both ways, one way),
//! slows, stalls and degrades their links, and fills or fails their disks
//! (each node's data directory is ext4 on a loop device over a tmpfs of
//! its own). The clients' history is then
//! judged by the simulation's checkers (linearizability per key, no
//! acknowledged write lost).
//!
//! **Links.** Peers dial each other at proxy addresses (`--peers` names
//! `SUBNET.10N:9091` for node N) that this process holds in the root
//! namespace, on the bridge; a node listens on `SUBNET.N:9091` in its own
//! namespace. Connections come from the nodes' own addresses, so the proxy
//! knows each connection's link: `(A, B)` is every connection node A
//! dials to node B. The nemesis sets a link's state: up; down (its
//! connections cut, new ones closed at once); stalled (connections stay
//! open, no byte moves); slow (each chunk held a while); lossy (some
//! chunks held 0.2-0.8 s, as a TCP retransmission would, and now and then
//! a connection reset). A one-way partition downs `(A, B)` and keeps
//! `(B, A)`. Clients reach the nodes directly, not through the proxy.
//!
//! **Clients.** Two per API, each one operation at a time on eight keys
//! through a random node: writes of unique values and linearizable reads
//! (and deletes over REST and gRPC). A write whose answer does not arrive
//! (8 s), or arrives as `timeout_outcome_unknown` / `-UNKNOWN`, is recorded
//! as of unknown outcome; one refused before it was sent (no connection)
//! or refused as not applied is recorded as failed. The Redis protocol
//! reports no versions: its reads and writes are judged by value alone.
//!
//! `RINGKV_CHAOS_SECONDS` (default 90) is how long the faults go on;
//! `RINGKV_CHAOS_SEED` picks the nemesis's schedule (printed; default from
//! the clock). `scripts/chaos.sh [MINUTES]` runs it longer. Needs root,
//! iproute2 (namespaces), loop devices and e2fsprogs; elsewhere it prints
//! SKIPPED with the reason, a failure under `RINGKV_REQUIRE_NETNS=1`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::disks::{self, LoopExt4, Tmpfs};
use common::netns::{Net, skip_unless_netns};
use common::{Cluster, Placement, Response as HttpResponse, read_response};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::check::history::{
    ClientId, Consistency, Expiry, FailReason, Outcome, Precondition, Recorder, Request, Response,
    Time, ValueVersion,
};
use ringkv_core::check::{self as checker, LinearizabilityConfig, no_lost_writes};
use ringkv_proto::v1 as pb;

const NODES: u64 = 3;
const KEYS: usize = 8;
const GRPC_PORT: u16 = 9091;
const REST_PORT: u16 = 8081;
const RESP_PORT: u16 = 6379;
/// How long a client waits for an answer (the node's own request timeout
/// is 5 s, a forwarded one 6 s: its answer comes first when it can).
const OP_TIMEOUT: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Codes that say a request had no effect (safe to retry).
const NOT_APPLIED: &[&str] = &[
    "no_leader",
    "not_applied",
    "node_stopping",
    "busy",
    "too_many_connections",
    "invalid_key",
    "key_too_large",
    "value_too_large",
];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The proxy on every peer link
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum LinkState {
    Up,
    Down,
    Stalled,
    Slow(Duration),
    Lossy(f64),
}

/// A directed link: connections node `.0` dials to node `.1`.
type Link = (u64, u64);

#[derive(Default)]
struct Links {
    state: HashMap<Link, LinkState>,
    /// Open connections by id: their link and both ends.
    open: HashMap<u64, (Link, TcpStream, TcpStream)>,
}

struct Proxy {
    links: Mutex<Links>,
    next_conn: AtomicU64,
    stop: AtomicBool,
    connections: AtomicU64,
    bytes: AtomicU64,
}

impl Proxy {
    fn state(&self, link: Link) -> LinkState {
        lock(&self.links)
            .state
            .get(&link)
            .copied()
            .unwrap_or(LinkState::Up)
    }

    /// Sets `link`'s state; down cuts its open connections.
    fn set(&self, link: Link, state: LinkState) {
        let mut links = lock(&self.links);
        links.state.insert(link, state);
        if state == LinkState::Down {
            for (l, a, b) in links.open.values() {
                if *l == link {
                    let _ = a.shutdown(Shutdown::Both);
                    let _ = b.shutdown(Shutdown::Both);
                }
            }
        }
    }

    fn heal_all(&self) {
        lock(&self.links).state.clear();
    }

    /// Serves node `to`'s proxy address: each connection from node A is
    /// spliced to `upstream` as link `(A, to)`.
    fn listen(self: &Arc<Self>, listener: TcpListener, to: u64, upstream: SocketAddr) {
        let proxy = self.clone();
        listener.set_nonblocking(true).expect("nonblocking");
        thread::spawn(move || {
            while !proxy.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, from)) => {
                        let _ = client.set_nonblocking(false);
                        proxy.splice(client, from, to, upstream);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
    }

    fn splice(
        self: &Arc<Self>,
        client: TcpStream,
        from: SocketAddr,
        to: u64,
        upstream: SocketAddr,
    ) {
        let IpAddr::V4(ip) = from.ip() else { return };
        let link = (u64::from(ip.octets()[3]), to);
        if self.state(link) == LinkState::Down {
            return; // dropped: closed at once
        }
        let Ok(server) = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        lock(&self.links).open.insert(id, (link, c3, s3));
        for (src, dst, salt) in [(client, server, 0u64), (s2, c2, 1)] {
            let proxy = self.clone();
            thread::spawn(move || proxy.pump(id, link, src, dst, id * 2 + salt));
        }
    }

    /// Moves bytes one way on connection `id` as the link's state allows.
    fn pump(&self, id: u64, link: Link, mut src: TcpStream, mut dst: TcpStream, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut buf = vec![0u8; 64 << 10];
        'conn: loop {
            let n = match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            loop {
                match self.state(link) {
                    LinkState::Up => break,
                    LinkState::Down => break 'conn,
                    LinkState::Stalled => thread::sleep(Duration::from_millis(20)),
                    LinkState::Slow(d) => {
                        thread::sleep(d);
                        break;
                    }
                    LinkState::Lossy(p) => {
                        if rng.random_bool(p / 20.0) {
                            break 'conn; // the connection dies
                        }
                        if rng.random_bool(p) {
                            thread::sleep(Duration::from_millis(rng.random_range(200..800)));
                        }
                        break;
                    }
                }
            }
            if dst.write_all(&buf[..n]).is_err() {
                break;
            }
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = src.shutdown(Shutdown::Both);
        let _ = dst.shutdown(Shutdown::Both);
        lock(&self.links).open.remove(&id);
    }
}

// ---------------------------------------------------------------------------
// The nemesis
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(u64),
    Pause(u64),
    Isolate(u64),
    OneWay(u64, u64),
    Slow(u64, Duration),
    Stall(u64),
    Lossy(f64),
    /// The node's file system is full: its next write fails (ENOSPC).
    DiskFull(u64),
    /// The node's disk fails writes: the loop device under its ext4 has no
    /// room left, so writeback and the next fsync fail (EIO).
    DiskError(u64),
}

/// The running cluster and what the nemesis works with.
struct Rig {
    cluster: Cluster,
    proxy: Arc<Proxy>,
    /// Per node (id - 1): the tmpfs holding its ext4 image, and the ext4
    /// mounted as its data directory.
    disks: Vec<(Tmpfs, LoopExt4)>,
    /// Disk faults that stopped their node, with the error it logged.
    disk_stops: Vec<String>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Before the file systems unmount (the fields drop after this).
        self.cluster.kill_all();
    }
}

impl Rig {
    /// After a disk fault on node `n`: if it stopped, it must have stopped
    /// as fail-stop says (non-zero, the error named); recorded.
    fn judge_disk_stop(&mut self, n: u64, expected: &[&str]) -> bool {
        let Some(status) = self.cluster.exited(n) else {
            return false;
        };
        let log = self.cluster.log(n);
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("storage failed; stopping this node"))
            .unwrap_or_default()
            .to_owned();
        assert!(
            !status.success() && expected.iter().any(|e| line.contains(e)),
            "n{n} stopped ({status}) during a disk fault, not as expected ({expected:?}): {line:?}"
        );
        self.disk_stops.push(format!("n{n}: {line}"));
        true
    }
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill -9",
            Fault::Pause(_) => "SIGSTOP",
            Fault::Isolate(_) => "partition (isolate a node)",
            Fault::OneWay(..) => "one-way partition",
            Fault::Slow(..) => "slow links",
            Fault::Stall(_) => "stalled links",
            Fault::Lossy(_) => "lossy links",
            Fault::DiskFull(_) => "disk full",
            Fault::DiskError(_) => "disk write errors (fsync EIO)",
        }
    }

    fn draw(rng: &mut ChaCha8Rng) -> Fault {
        let node = rng.random_range(1..=NODES);
        let other = (node + rng.random_range(0..NODES - 1)) % NODES + 1;
        match rng.random_range(0..9) {
            0 => Fault::Kill(node),
            1 => Fault::Pause(node),
            2 => Fault::Isolate(node),
            3 => Fault::OneWay(node, other),
            4 => Fault::Slow(node, Duration::from_millis(rng.random_range(50..300))),
            5 => Fault::Stall(node),
            6 => Fault::DiskFull(node),
            7 => Fault::DiskError(node),
            _ => Fault::Lossy(rng.random_range(0.1..0.3)),
        }
    }

    /// Every link to or from `node`.
    fn links_of(node: u64) -> Vec<Link> {
        (1..=NODES)
            .filter(|&o| o != node)
            .flat_map(|o| [(node, o), (o, node)])
            .collect()
    }

    fn apply(&self, rig: &mut Rig) {
        let (cluster, proxy) = (&mut rig.cluster, &*rig.proxy);
        match *self {
            Fault::Kill(n) => cluster.kill(n),
            Fault::Pause(n) => cluster.pause(n, true),
            Fault::Isolate(n) => Self::set_all(proxy, &Self::links_of(n), LinkState::Down),
            Fault::OneWay(a, b) => proxy.set((a, b), LinkState::Down),
            Fault::Slow(n, d) => Self::set_all(proxy, &Self::links_of(n), LinkState::Slow(d)),
            Fault::Stall(n) => Self::set_all(proxy, &Self::links_of(n), LinkState::Stalled),
            Fault::Lossy(p) => {
                let all: Vec<Link> = (1..=NODES).flat_map(Self::links_of).collect();
                Self::set_all(proxy, &all, LinkState::Lossy(p));
            }
            // 64 KiB left: the next WAL append or snapshot does not fit.
            Fault::DiskFull(n) => disks::fill(&rig.disks[n as usize - 1].1.at, 64 << 10),
            Fault::DiskError(n) => disks::fill(&rig.disks[n as usize - 1].0.0, 0),
        }
    }

    fn heal(&self, rig: &mut Rig) {
        match *self {
            Fault::Kill(n) => rig.cluster.start_again(n),
            Fault::Pause(n) => rig.cluster.pause(n, false),
            Fault::DiskFull(n) => {
                disks::remove_ballast(&rig.disks[n as usize - 1].1.at);
                if rig.judge_disk_stop(n, &["No space left on device"]) {
                    rig.cluster.start_again(n);
                }
            }
            Fault::DiskError(n) => {
                // What an operator does after disk errors: stop the node
                // (if the error has not), give the disk back, check the
                // file system, start the node on what it kept.
                // An fsync that failed (EIO, or ENOSPC: the loop device
                // passes its full backing store's error up, as thin
                // provisioned storage does), or ext4, having given up,
                // refusing a write.
                let stopped = rig.judge_disk_stop(
                    n,
                    &[
                        "fsync failed: ",
                        "Input/output error",
                        "Read-only file system",
                    ],
                );
                if !stopped {
                    rig.cluster.kill(n);
                }
                let (backing, ext4) = &mut rig.disks[n as usize - 1];
                disks::remove_ballast(&backing.0);
                let checked = ext4.check_and_remount();
                println!("chaos:   n{n}'s file system: {checked}");
                rig.cluster.start_again(n);
            }
            _ => rig.proxy.heal_all(),
        }
    }

    fn set_all(proxy: &Proxy, links: &[Link], state: LinkState) {
        for &link in links {
            proxy.set(link, state);
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(n)
            | Fault::Pause(n)
            | Fault::Isolate(n)
            | Fault::Stall(n)
            | Fault::DiskFull(n)
            | Fault::DiskError(n) => {
                write!(f, "{} n{n}", self.kind())
            }
            Fault::OneWay(a, b) => write!(f, "{} n{a} -/-> n{b}", self.kind()),
            Fault::Slow(n, d) => write!(f, "{} of n{n} ({d:?} a chunk)", self.kind()),
            Fault::Lossy(p) => write!(f, "{} ({:.0}% of chunks)", self.kind(), p * 100.0),
        }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Api {
    Rest,
    Grpc,
    Resp,
}

/// The three addresses of a node, as clients reach it.
#[derive(Clone, Copy)]
struct Addrs {
    rest: SocketAddr,
    grpc: SocketAddr,
    resp: SocketAddr,
}

struct History {
    recorder: Mutex<Recorder>,
    start: Instant,
}

impl History {
    fn now(&self) -> Time {
        self.start.elapsed().as_millis() as Time
    }

    /// Records `request`, sent by `send`, with its invoke and completion.
    fn record(
        &self,
        client: ClientId,
        request: Request,
        send: impl FnOnce() -> Outcome,
    ) -> Outcome {
        let id = lock(&self.recorder).invoke(client, self.now(), request);
        let outcome = send();
        lock(&self.recorder).complete(id, self.now(), outcome.clone());
        outcome
    }
}

fn not_applied(why: impl Into<String>) -> Outcome {
    Outcome::Fail(FailReason::NotApplied(why.into()))
}

/// What an error with `code` (none: transport) means for `request`.
fn outcome_of_code(request: &Request, code: Option<&str>) -> Outcome {
    match (request, code) {
        (Request::Get { .. }, Some("not_found")) => Outcome::Ok(Response::Value(None)),
        (Request::Get { .. }, code) => not_applied(code.unwrap_or("transport")),
        (Request::Delete { .. }, Some("not_found")) => Outcome::Fail(FailReason::NotFound),
        (_, Some(c)) if NOT_APPLIED.contains(&c) => not_applied(c),
        // timeout_outcome_unknown, a broken exchange, anything unexpected.
        _ => Outcome::Unknown,
    }
}

fn rest_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<HttpResponse, bool> {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
        return Err(false); // nothing sent
    };
    let _ = stream.set_read_timeout(Some(OP_TIMEOUT));
    let _ = stream.set_write_timeout(Some(OP_TIMEOUT));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).map_err(|_| true)?;
    read_response(BufReader::new(stream)).map_err(|_| true)
}

fn header_u64(r: &HttpResponse, name: &str) -> u64 {
    r.header(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn rest(addr: SocketAddr, request: &Request) -> Outcome {
    let (method, path, body) = match request {
        Request::Get { key, .. } => (
            "GET",
            format!("/v1/kv/{}?consistency=linearizable", key.escape_ascii()),
            &[][..],
        ),
        Request::Put { key, value, .. } => {
            ("PUT", format!("/v1/kv/{}", key.escape_ascii()), &value[..])
        }
        Request::Delete { key, .. } => {
            ("DELETE", format!("/v1/kv/{}", key.escape_ascii()), &[][..])
        }
        other => unreachable!("the chaos clients send no {other:?}"),
    };
    let r = match rest_call(addr, method, &path, body) {
        Ok(r) => r,
        Err(false) => return not_applied("connect"),
        Err(true) => return outcome_of_code(request, None),
    };
    if !r.is_success() {
        // Not r.problem_code(): that asserts, and a client thread must not
        // panic; an error that is no problem document counts as no code.
        let code = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned));
        return outcome_of_code(request, code.as_deref());
    }
    let json = || r.json();
    Outcome::Ok(match request {
        Request::Get { .. } => Response::Value(Some(ValueVersion {
            value: Bytes::from(r.body.clone()),
            version: header_u64(&r, "x-ringkv-version"),
            mod_revision: header_u64(&r, "x-ringkv-mod-revision"),
        })),
        Request::Put { .. } => Response::Put {
            version: json()["version"].as_u64().expect("version"),
            mod_revision: json()["mod_revision"].as_u64().expect("mod_revision"),
            previous: None,
        },
        _ => Response::Deleted {
            revision: json()["revision"].as_u64().expect("revision"),
            previous: None,
        },
    })
}

fn grpc(runtime: &tokio::runtime::Runtime, addr: SocketAddr, request: &Request) -> Outcome {
    use pb::kv_client::KvClient;
    runtime.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(OP_TIMEOUT);
        let Ok(channel) = endpoint.connect().await else {
            return not_applied("connect");
        };
        let mut kv = KvClient::new(channel);
        let answer = match request.clone() {
            Request::Get { key, .. } => kv
                .get(pb::GetRequest {
                    key,
                    consistency: pb::ReadConsistency::Linearizable as i32,
                })
                .await
                .map(|r| {
                    Response::Value(r.into_inner().kv.map(|kv| ValueVersion {
                        value: kv.value,
                        version: kv.version,
                        mod_revision: kv.mod_revision,
                    }))
                }),
            Request::Put { key, value, .. } => kv
                .put(pb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    Response::Put {
                        version: r.version,
                        mod_revision: r.mod_revision,
                        previous: None,
                    }
                }),
            Request::Delete { key, .. } => kv
                .delete(pb::DeleteRequest {
                    key,
                    ..Default::default()
                })
                .await
                .map(|r| Response::Deleted {
                    revision: r.into_inner().revision,
                    previous: None,
                }),
            other => unreachable!("the chaos clients send no {other:?}"),
        };
        match answer {
            Ok(response) => Outcome::Ok(response),
            Err(status) => {
                let code = status
                    .metadata()
                    .get("ringkv-code")
                    .and_then(|v| v.to_str().ok());
                outcome_of_code(request, code)
            }
        }
    })
}

fn resp(addr: SocketAddr, request: &Request) -> Outcome {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("redis url");
    let Ok(mut con) = client.get_connection_with_timeout(CONNECT_TIMEOUT) else {
        return not_applied("connect");
    };
    let _ = con.set_read_timeout(Some(OP_TIMEOUT));
    let _ = con.set_write_timeout(Some(OP_TIMEOUT));
    let code = |e: &redis::RedisError| -> Option<String> {
        if e.kind() == redis::ErrorKind::TryAgain {
            return Some("no_leader".into());
        }
        match e.code() {
            Some("UNKNOWN") | None => None,
            Some(other) => Some(other.to_owned()),
        }
    };
    match request {
        Request::Get { key, .. } => match redis::cmd("GET")
            .arg(&key[..])
            .query::<Option<Vec<u8>>>(&mut con)
        {
            Ok(value) => Outcome::Ok(Response::Value(value.map(|v| ValueVersion {
                value: Bytes::from(v),
                version: 0,
                mod_revision: 0,
            }))),
            Err(e) => not_applied(format!("GET: {e}")),
        },
        Request::Put { key, value, .. } => {
            match redis::cmd("SET")
                .arg(&key[..])
                .arg(&value[..])
                .query::<String>(&mut con)
            {
                Ok(_) => Outcome::Ok(Response::Put {
                    version: 0,
                    mod_revision: 0,
                    previous: None,
                }),
                // TRYAGAIN: not applied; UNKNOWN or a broken exchange: unknown.
                Err(e) => match code(&e).as_deref() {
                    Some("no_leader") => not_applied("TRYAGAIN"),
                    _ => Outcome::Unknown,
                },
            }
        }
        other => unreachable!("the chaos clients send no {other:?}"),
    }
}

fn put(key: &Bytes, value: String) -> Request {
    Request::Put {
        key: key.clone(),
        value: Bytes::from(value),
        precondition: Precondition::None,
        return_previous: false,
        expiry: Expiry::Clear,
    }
}

fn get(key: &Bytes) -> Request {
    Request::Get {
        key: key.clone(),
        consistency: Consistency::Linearizable,
    }
}

/// One client: operations until `stop`, each through a random node.
fn run_client(
    api: Api,
    client: ClientId,
    nodes: Vec<Addrs>,
    keys: Vec<Bytes>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> BTreeMap<&'static str, u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut counts = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let node = nodes[rng.random_range(0..nodes.len())];
        let key = &keys[rng.random_range(0..keys.len())];
        let roll = rng.random_range(0..100);
        let request = if roll < 45 {
            get(key)
        } else if roll < 90 || api == Api::Resp {
            n += 1;
            put(key, format!("{api:?}{client}-{n}"))
        } else {
            Request::Delete {
                key: key.clone(),
                precondition: Precondition::None,
                return_previous: false,
            }
        };
        let outcome = history.record(client, request.clone(), || match api {
            Api::Rest => rest(node.rest, &request),
            Api::Grpc => grpc(&runtime, node.grpc, &request),
            Api::Resp => resp(node.resp, &request),
        });
        let label = match (&request, &outcome) {
            (Request::Get { .. }, Outcome::Ok(_)) => "reads ok",
            (Request::Get { .. }, _) => "reads failed",
            (_, Outcome::Ok(_)) => "writes ok",
            (_, Outcome::Fail(FailReason::NotFound)) => "writes ok",
            (_, Outcome::Fail(_)) => "writes not applied",
            (_, Outcome::Unknown) => "writes unknown",
        };
        *counts.entry(label).or_default() += 1;
        thread::sleep(Duration::from_millis(rng.random_range(0..20)));
    }
    counts
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

#[test]
fn histories_under_real_process_chaos_are_linearizable() {
    if skip_unless_netns("histories_under_real_process_chaos_are_linearizable") {
        return;
    }
    let seconds = env_u64("RINGKV_CHAOS_SECONDS").unwrap_or(90);
    let seed = env_u64("RINGKV_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    println!(
        "chaos: seed {seed} (RINGKV_CHAOS_SEED={seed} replays the schedule), {seconds} s of faults"
    );

    // Hosts n1..n3 at .1-.3; their proxy addresses .101-.103 are ours.
    let mut net = Net::new(2);
    for id in 1..=NODES {
        net.add_host(&format!("n{id}"), id as u8);
        net.add_local(100 + id as u8);
    }
    let proxy = Arc::new(Proxy {
        links: Mutex::new(Links::default()),
        next_conn: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        connections: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let at = |octet: u64, port: u16| SocketAddr::from((net.addr(octet as u8), port));
    let mut addrs = Vec::new();
    let mut placements = Vec::new();
    for id in 1..=NODES {
        let listener = TcpListener::bind(at(100 + id, GRPC_PORT)).expect("proxy listen");
        proxy.listen(listener, id, at(id, GRPC_PORT));
        addrs.push(Addrs {
            rest: at(id, REST_PORT),
            grpc: at(id, GRPC_PORT),
            resp: at(id, RESP_PORT),
        });
        placements.push(Placement {
            grpc: at(100 + id, GRPC_PORT),
            rest: at(id, REST_PORT),
            wrapper: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                net.ns(&format!("n{id}")).to_owned(),
            ],
        });
    }
    let resp_of: Vec<String> = addrs.iter().map(|a| a.resp.to_string()).collect();
    let mut cluster = Cluster::start_placed(
        placements,
        &[
            "--partitions",
            "16",
            "--grpc-listen",
            &format!("0.0.0.0:{GRPC_PORT}"),
            "--log",
            "info",
        ],
        |id| vec!["--resp-listen".into(), resp_of[(id - 1) as usize].clone()],
    );
    cluster.wait_ready(Duration::from_secs(60));
    // Each node's data directory onto ext4 on a loop device over a tmpfs
    // of its own (256 MiB image, 512 MiB tmpfs: full only when told).
    let mut disks = Vec::new();
    for id in 1..=NODES {
        let backing = cluster.dir().join(format!("backing-{id}"));
        let mut made = None;
        let moved = disks::move_node(&mut cluster, id, |dir| {
            let tmpfs = Tmpfs::mount(&backing, "512m")?;
            made = Some((tmpfs, LoopExt4::create(&backing, dir)?));
            Ok(())
        });
        if let Err(why) = moved {
            assert!(
                std::env::var("RINGKV_REQUIRE_NETNS").as_deref() != Ok("1"),
                "RINGKV_REQUIRE_NETNS=1 but n{id}'s disk cannot be made: {why}"
            );
            eprintln!("SKIPPED histories_under_real_process_chaos_are_linearizable: {why}");
            return;
        }
        disks.push(made.expect("made"));
    }
    cluster.wait_ready(Duration::from_secs(60));
    let mut rig = Rig {
        cluster,
        proxy: proxy.clone(),
        disks,
        disk_stops: Vec::new(),
    };

    let keys: Vec<Bytes> = (0..KEYS)
        .map(|i| Bytes::from(format!("chaos-k{i}")))
        .collect();
    let history = Arc::new(History {
        recorder: Mutex::new(Recorder::new()),
        start: Instant::now(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (i, api) in [
        Api::Rest,
        Api::Rest,
        Api::Grpc,
        Api::Grpc,
        Api::Resp,
        Api::Resp,
    ]
    .into_iter()
    .enumerate()
    {
        let (nodes, keys, history, stop) =
            (addrs.clone(), keys.clone(), history.clone(), stop.clone());
        let client = i as ClientId + 1;
        let seed = seed ^ ((client as u64) << 32);
        clients.push((
            api,
            thread::spawn(move || run_client(api, client, nodes, keys, history, stop, seed)),
        ));
    }

    // The nemesis: one fault at a time, held 2-8 s, then 1-3 s of calm.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let fault = Fault::draw(&mut rng);
        let hold = Duration::from_millis(rng.random_range(2_000..8_000));
        let calm = Duration::from_millis(rng.random_range(1_000..3_000));
        println!("chaos: {:>6} ms  {fault}, for {hold:?}", history.now());
        fault.apply(&mut rig);
        *faults.entry(fault.kind()).or_default() += 1;
        thread::sleep(hold);
        fault.heal(&mut rig);
        // A node that stopped on its own is a bug: this panics with its log.
        rig.cluster.assert_alive();
        thread::sleep(calm);
    }
    stop.store(true, Ordering::Relaxed);
    let mut by_api: BTreeMap<Api, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for (api, handle) in clients {
        let counts = handle.join().expect("client thread");
        let entry = by_api.entry(api).or_default();
        for (k, v) in counts {
            *entry.entry(k).or_default() += v;
        }
    }

    // Healed: every node ready, then a linearizable read of every key
    // through each node in turn (recorded, as the final reads).
    rig.cluster.wait_ready(Duration::from_secs(60));
    rig.cluster.assert_alive();
    let healed = history.now();
    for (i, key) in keys.iter().enumerate() {
        let node = addrs[i % addrs.len()];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = get(key);
            let outcome = history.record(100, request.clone(), || rest(node.rest, &request));
            if matches!(outcome, Outcome::Ok(_)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no final read of {key:?}: {outcome:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    proxy.stop.store(true, Ordering::Relaxed);

    let Ok(history) = Arc::try_unwrap(history) else {
        panic!("a client still holds the history");
    };
    let recorder = history
        .recorder
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let history = recorder.finish().expect("a well-formed history");
    let finals = no_lost_writes::final_reads(&history, healed);
    assert_eq!(finals.len(), keys.len(), "a final read per key");
    let summary = checker::check_all(&history, &finals, &LinearizabilityConfig::default());

    println!("chaos: results (seed {seed}, {seconds} s of faults)");
    for (kind, n) in &faults {
        println!("  fault {kind:<28} {n}");
    }
    for (api, counts) in &by_api {
        let line: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  {:<5} {}", format!("{api:?}"), line.join(", "));
    }
    println!(
        "  proxy: {} peer connections, {} MB moved",
        proxy.connections.load(Ordering::Relaxed),
        proxy.bytes.load(Ordering::Relaxed) >> 20
    );
    println!(
        "  disk faults that stopped their node (fail-stop): {}",
        rig.disk_stops.len()
    );
    for stop in &rig.disk_stops {
        println!("    {stop}");
    }
    println!(
        "  history: {} operations; violations: {}, inconclusive keys: {}",
        history.len(),
        summary.violations.len(),
        summary.inconclusive.len()
    );
    assert!(
        summary.passed(),
        "chaos seed {seed}: checks failed:\n{summary}\n{}",
        summary.named_operations(&history)
    );
    for (api, counts) in &by_api {
        assert!(
            counts.get("writes ok").copied().unwrap_or(0) > 0,
            "{api:?}: no write acknowledged in {seconds} s: {counts:?}"
        );
    }
}
