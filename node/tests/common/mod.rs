//! Helpers for the process-level tests: a cluster of real `ringkv server`
//! processes on loopback ports, and a small blocking HTTP/1.1 client.
//!
//! Every child process is killed (SIGKILL) when its [`Cluster`] is dropped,
//! also when a test panics; the panic case prints the tail of each node's log.

#![allow(dead_code)]

pub mod disks;
pub mod netns;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single HTTP exchange may take. Longer than the server's
/// request timeout (5 s by default; forwarded calls 6 s) so its answer wins.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// One HTTP response: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `code` of a problem+json body, checking the content type and that
    /// the body's `status` matches the response's.
    pub fn problem_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "an error must be problem+json: {self:?}"
        );
        let j = self.json();
        assert_eq!(j["status"], self.status, "problem status: {j}");
        j["code"]
            .as_str()
            .unwrap_or_else(|| panic!("problem without a code: {j}"))
            .to_owned()
    }

    /// The `ETag` as a number (`"42"` → 42).
    pub fn etag(&self) -> Option<u64> {
        self.header("etag")?.trim_matches('"').parse().ok()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads
/// the whole response. An `Err` means the exchange failed in transit.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    read_response(BufReader::new(stream))
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub fn read_response(mut r: impl BufRead) -> io::Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header {l:?}")))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}

/// The path of a key, with the optional query.
pub fn kv_path(key: &str, consistency: Option<&str>) -> String {
    match consistency {
        Some(c) => format!("/v1/kv/{key}?consistency={c}"),
        None => format!("/v1/kv/{key}"),
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a write, again while it is refused with a retryable 503 (nothing
/// was applied), up to `timeout`; returns any other answer. A write that
/// fails in transit may have been applied, so that panics instead.
pub fn retry_write(timeout: Duration, mut send: impl FnMut() -> io::Result<Response>) -> Response {
    let deadline = Instant::now() + timeout;
    loop {
        let r = send().unwrap_or_else(|e| panic!("write failed in transit: {e}"));
        if r.status != 503 || Instant::now() >= deadline {
            return r;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sends a read, again while it fails with 503, 504 or in transit (a read
/// changes nothing), up to `timeout`; returns any other answer.
pub fn retry_read(timeout: Duration, mut send: impl FnMut() -> io::Result<Response>) -> Response {
    let deadline = Instant::now() + timeout;
    loop {
        let last = send();
        let retry = match &last {
            Ok(r) => r.status == 503 || r.status == 504,
            Err(_) => true,
        };
        if !retry || Instant::now() >= deadline {
            return last.unwrap_or_else(|e| panic!("read failed in transit: {e}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// Ports are taken below the kernel's ephemeral range (32768+), so outgoing
/// connections never occupy them between a node's kill and its restart. Each
/// test process starts at its own offset so that concurrent runs rarely meet,
/// and every port is checked free before use.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 1000) * 12;
    for _ in 0..2000 {
        let off = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (start + off) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// The first of `n` consecutive free ports (for `ringkv demo`, whose nodes
/// listen on a base port plus their index).
pub fn free_port_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base.checked_add(n).is_some()
            && (1..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no run of {n} free ports found");
}

/// One `ringkv server` process of a [`Cluster`].
pub struct NodeProc {
    pub id: u64,
    pub grpc: SocketAddr,
    pub rest: SocketAddr,
    pub data_dir: PathBuf,
    log: PathBuf,
    /// Flags for this node only, after the cluster's (see [`Cluster::set_node_args`]).
    args: Vec<String>,
    /// The member it joins through (`--join`), for a node added later;
    /// `None` for a founder (`--peers`).
    join: Option<SocketAddr>,
    /// A command the binary runs under (`ip netns exec NS`), if any.
    wrapper: Vec<String>,
    child: Option<Child>,
}

/// Where a node of [`Cluster::start_placed`] runs.
pub struct Placement {
    /// The address its peers dial (its entry in `--peers`).
    pub grpc: SocketAddr,
    /// Its REST address (`--rest-listen`).
    pub rest: SocketAddr,
    /// A command the binary runs under (`ip netns exec NS`; empty: none).
    /// It must exec the binary, so that signals reach the node.
    pub wrapper: Vec<String>,
}

impl NodeProc {
    pub fn rest(&self) -> SocketAddr {
        self.rest
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of `ringkv server` processes, each with its own data directory
/// inside one temporary directory.
pub struct Cluster {
    dir: tempfile::TempDir,
    peers: String,
    extra_args: Vec<String>,
    nodes: Vec<NodeProc>,
}

impl Cluster {
    /// Starts `n` nodes with default settings.
    pub fn start(n: u64) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Starts `n` nodes, passing `extra_args` to every `ringkv server`.
    pub fn start_with(n: u64, extra_args: &[&str]) -> Cluster {
        Cluster::start_each(n, extra_args, |_| Vec::new())
    }

    /// Starts `n` nodes, passing `extra_args` to every `ringkv server` and
    /// `node_args(id)` to node `id` after them.
    pub fn start_each(
        n: u64,
        extra_args: &[&str],
        node_args: impl Fn(u64) -> Vec<String>,
    ) -> Cluster {
        let placements = (1..=n)
            .map(|_| Placement {
                grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
                rest: SocketAddr::from(([127, 0, 0, 1], free_port())),
                wrapper: Vec::new(),
            })
            .collect();
        Cluster::start_placed(placements, extra_args, node_args)
    }

    /// Starts a node per placement (ids from 1), passing `extra_args` to
    /// every `ringkv server` and `node_args(id)` to node `id` after them.
    pub fn start_placed(
        placements: Vec<Placement>,
        extra_args: &[&str],
        node_args: impl Fn(u64) -> Vec<String>,
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ringkv-cluster-test")
            .tempdir()
            .expect("tempdir");
        let nodes: Vec<NodeProc> = placements
            .into_iter()
            .zip(1..)
            .map(|(p, id)| NodeProc {
                id,
                grpc: p.grpc,
                rest: p.rest,
                data_dir: dir.path().join(format!("node-{id}")),
                log: dir.path().join(format!("node-{id}.log")),
                args: Vec::new(),
                join: None,
                wrapper: p.wrapper,
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|p| format!("{}={}", p.id, p.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            dir,
            peers,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            nodes,
        };
        for id in c.ids().collect::<Vec<_>>() {
            c.node_mut(id).args = node_args(id);
            c.spawn(id);
        }
        c
    }

    /// Starts `n` nodes, each also serving the Redis protocol, and waits
    /// until they are ready; the RESP addresses by node id - 1.
    pub fn start_with_resp(n: u64, ready: Duration) -> (Cluster, Vec<SocketAddr>) {
        let resp: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let addrs = resp.clone();
        let mut c = Cluster::start_each(n, &[], move |id| {
            vec![
                "--resp-listen".to_owned(),
                addrs[(id - 1) as usize].to_string(),
            ]
        });
        c.wait_ready(ready);
        (c, resp)
    }

    /// Starts one more node, on an empty data directory, that joins the
    /// cluster through node `through` (`--join`); returns its id.
    pub fn join(&mut self, through: u64) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let join = Some(self.node(through).grpc);
        self.nodes.push(NodeProc {
            id,
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            rest: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data_dir: self.dir.path().join(format!("node-{id}")),
            log: self.dir.path().join(format!("node-{id}.log")),
            args: Vec::new(),
            join,
            wrapper: Vec::new(),
            child: None,
        });
        self.spawn(id);
        id
    }

    /// Flags node `id` gets from its next (re)start on, after the cluster's.
    pub fn set_node_args(&mut self, id: u64, args: &[&str]) {
        self.node_mut(id).args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Kills node `id` and deletes its data directory, as if its disk
    /// were replaced; [`Cluster::restart`] then starts it on an empty one.
    pub fn wipe(&mut self, id: u64) {
        self.kill(id);
        let dir = self.node(id).data_dir.clone();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot wipe {}: {e}", dir.display()),
        }
    }

    /// Everything node `id` has logged so far (all its starts).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// Node `id`'s `/v1/cluster/status` (waiting a little for a node that
    /// is still starting to listen).
    pub fn status(&self, id: u64) -> serde_json::Value {
        let r = poll(
            Duration::from_secs(10),
            &format!("node {id} to answer status"),
            || get(self.node(id).rest(), "/v1/cluster/status").ok(),
        );
        assert_eq!(r.status, 200, "status of node {id}: {r:?}");
        r.json()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `id` (1-based, as in `--id`).
    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.iter().map(|n| n.id)
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64) {
        let bin = env!("CARGO_BIN_EXE_ringkv");
        let peers = self.peers.clone();
        let mut extra = self.extra_args.clone();
        extra.extend(self.node(id).args.iter().cloned());
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let mut command = match node.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command.arg("server").args(["--id", &id.to_string()]);
        match node.join {
            Some(through) => command
                .args(["--join", &through.to_string()])
                .args(["--grpc-listen", &node.grpc.to_string()]),
            None => command.args(["--peers", &peers]),
        };
        // Warnings only, unless the test asks for its own `--log`.
        if !extra.iter().any(|a| a == "--log") {
            command.args(["--log", "warn"]);
        }
        let child = command
            .args(["--rest-listen", &node.rest.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        node.child = Some(child);
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends node `id` SIGSTOP (`pause: true`) or SIGCONT: a node that
    /// stops answering without its connections closing.
    pub fn pause(&mut self, id: u64, pause: bool) {
        let pid = self.node(id).child.as_ref().expect("node is running").id();
        let signal = if pause { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    pub fn kill_all(&mut self) {
        let ids: Vec<u64> = self.ids().collect();
        for id in ids {
            self.kill(id);
        }
    }

    /// Starts node `id` again with the same flags, ports and data directory.
    /// Sends node `id` SIGTERM (a planned stop) and waits up to `within`
    /// for it to exit; its exit status, or `None` if it did not exit (it is
    /// then killed).
    pub fn terminate(&mut self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.node_mut(id).child.take()?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Node `id`'s exit status if it has exited by itself (it is then no
    /// longer running), `None` while it runs.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = self.node_mut(id);
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        Some(status)
    }

    /// Starts node `id` again (after [`Self::terminate`] or [`Self::kill`]).
    pub fn start_again(&mut self, id: u64) {
        self.spawn(id);
    }

    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        self.spawn(id);
    }

    /// Panics (with the node's log) if a started node has exited.
    pub fn assert_alive(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "node {} exited with {status}; its log:\n{}",
                    node.id,
                    tail(&node.log, 40)
                );
            }
        }
    }

    /// Waits until every running node answers `/readyz` with 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let running: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect();
        for id in running {
            self.wait_node_ready(id, deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Waits until node `id` answers `/readyz` with 200.
    pub fn wait_node_ready(&mut self, id: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let addr = self.node(id).rest();
        loop {
            self.assert_alive();
            let last = get(addr, "/readyz");
            if matches!(&last, Ok(r) if r.status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} not ready after {timeout:?}; last /readyz: {last:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The leader of `key`'s partition as seen by node `via`, and the partition,
    /// waiting until one is known.
    pub fn wait_leader_of(&self, via: u64, key: &str, timeout: Duration) -> (u64, u64) {
        let addr = self.node(via).rest();
        poll(timeout, &format!("a leader for {key:?}"), || {
            let j = get(addr, &format!("/v1/cluster/locate/{key}")).ok()?.json();
            Some((j["leader"].as_u64()?, j["partition"].as_u64()?))
        })
    }

    /// The partition of `key`, as node `via` computes it.
    pub fn partition_of(&self, via: u64, key: &str) -> u64 {
        let r = get(self.node(via).rest(), &format!("/v1/cluster/locate/{key}")).expect("locate");
        assert_eq!(r.status, 200, "locate {key}: {r:?}");
        r.json()["partition"].as_u64().expect("partition")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "---- node {} log (last lines) ----\n{}",
                    node.id,
                    tail(&node.log, 30)
                );
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(f) = File::open(path) else {
        return String::from("(no log)");
    };
    let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
