//! `ringkv demo`, the README's first command, as a user runs it: it forms
//! its cluster and serves; Ctrl-C (SIGINT) stops it promptly with status 0;
//! running it again brings the data back; its console adds a node, and a
//! node stopped there is marked dead and replaced.
//!
//! Regression: the demo used to hang after "stopping...": it stopped its
//! nodes one after another, and the first one's graceful shutdown waited
//! for its peers' bulk-lane streams, which carried only keepalives and so
//! never noticed that the node's event loop was gone.

#![cfg(not(madsim))]

mod common;

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port_run, get, kv_path, poll, request, retry_read};

/// The tests of this file pick free ports, then start a demo that binds
/// them: run side by side, one could pick what the other is about to bind.
static ONE_DEMO_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_DEMO_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The demo's first ports: REST, gRPC and RESP of node 1.
#[derive(Clone, Copy)]
struct Ports {
    rest: u16,
    grpc: u16,
    resp: u16,
}

impl Ports {
    /// `nodes` nodes' ports, from one run of free ones.
    fn free(nodes: u16) -> Ports {
        let rest = free_port_run(3 * nodes);
        Ports {
            rest,
            grpc: rest + nodes,
            resp: rest + 2 * nodes,
        }
    }
}

fn start(dir: &std::path::Path, ports: Ports) -> Child {
    start_with(dir, ports, &[], Stdio::null())
}

fn start_with(dir: &std::path::Path, ports: Ports, args: &[&str], stdin: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("demo")
        .arg("--data-dir")
        .arg(dir)
        .args(["--rest-port", &ports.rest.to_string()])
        .args(["--grpc-port", &ports.grpc.to_string()])
        .args(["--resp-port", &ports.resp.to_string()])
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.with_extension("log")).expect("log file"))
        .spawn()
        .expect("start ringkv demo")
}

fn wait_ready(demo: &mut Child, rest: u16, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..3 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], rest + i));
        while !get(addr, "/readyz").is_ok_and(|r| r.status == 200) {
            let log = || std::fs::read_to_string(log).unwrap_or_default();
            if let Some(exit) = demo.try_wait().expect("wait") {
                panic!("ringkv demo exited with {exit}; its log:\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "demo node {} not ready after 60 s; its log:\n{}",
                i + 1,
                log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends SIGINT and waits (at most 20 s) for a clean exit; returns stdout.
fn interrupt(mut demo: Child) -> String {
    let status = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = demo.try_wait().expect("wait") {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = demo.kill();
            panic!("ringkv demo did not stop within 20 s of SIGINT");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    if let Some(mut stdout) = demo.stdout.take() {
        use std::io::Read as _;
        let _ = stdout.read_to_string(&mut out);
    }
    assert!(exit.success(), "ringkv demo exited with {exit}:\n{out}");
    out
}

#[test]
fn the_demo_serves_stops_on_ctrl_c_and_keeps_its_data() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::free(3);
    let rest = ports.rest;
    let node = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], rest + i));

    let data = dir.path().join("data");
    let log = data.with_extension("log");
    let mut demo = start(&data, ports);
    wait_ready(&mut demo, rest, &log);
    let r = request(node(0), "PUT", &kv_path("greeting", None), &[], b"hello").expect("put");
    assert!(r.is_success(), "{r:?}");
    // The Redis protocol on node 3 reads what REST wrote on node 1.
    assert_eq!(resp_get(ports.resp + 2, "greeting"), b"$5\r\nhello\r\n");
    let out = interrupt(demo);
    assert!(out.contains("stopped; data kept in"), "{out}");
    // The dashboard's address, and the page there.
    assert!(
        out.contains(&format!("dashboard: http://{}/ui", node(0))),
        "the demo prints the dashboard's URL: {out}"
    );
    for port in ports.resp..ports.resp + 3 {
        assert!(
            out.contains(&format!("RESP 127.0.0.1:{port}")),
            "the demo prints its RESP ports: {out}"
        );
    }

    let mut demo = start(&data, ports);
    wait_ready(&mut demo, rest, &log);
    // Retried like any client does on 503 + Retry-After: right after a
    // start the controller hands some leaderships over (balance), and a
    // partition refuses requests for the moment of a transfer.
    let r = retry_read(Duration::from_secs(10), || {
        get(node(1), &kv_path("greeting", None))
    });
    assert_eq!((r.status, r.text()), (200, "hello".to_owned()), "{r:?}");
    interrupt(demo);
}

/// `GET key` over RESP on `port`: the reply's bytes, retried while the
/// answer is `-TRYAGAIN` (a leadership moving right after a start).
fn resp_get(port: u16, key: &str) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to RESP");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        s.write_all(format!("GET {key}\r\n").as_bytes())
            .expect("send");
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
        }
        if !reply.starts_with(b"-TRYAGAIN") || Instant::now() > deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node 1's view of member `id`'s state (`up`, `dead`, ...), if it has one.
fn member_state(addr: std::net::SocketAddr, id: u64) -> Option<String> {
    let r = get(addr, "/v1/cluster/members").ok()?;
    let members = r.json()["members"].as_array()?.clone();
    members
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["state"].as_str())
        .map(str::to_owned)
}

#[test]
fn the_demo_console_adds_a_node_and_a_stopped_node_is_replaced() {
    use std::io::Write as _;
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    // Ports for four nodes: the three founders and the one added.
    let ports = Ports::free(4);
    let rest = ports.rest;
    let node = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], rest + i));
    let data = dir.path().join("data");
    let log = data.with_extension("log");
    let mut demo = start_with(
        &data,
        ports,
        &["--partitions", "8", "--dead-after", "3"],
        Stdio::piped(),
    );
    let mut console = demo.stdin.take().expect("piped stdin");
    wait_ready(&mut demo, rest, &log);
    let r = request(node(0), "PUT", &kv_path("greeting", None), &[], b"hello").expect("put");
    assert!(r.is_success(), "{r:?}");

    writeln!(console, "add").expect("type add");
    poll(Duration::from_secs(60), "node 4 up", || {
        (member_state(node(0), 4).as_deref() == Some("up")).then_some(())
    });
    // Node 2 stopped for good: after --dead-after it is dead, and once no
    // partition lists it (its replicas re-created on 1, 3 and 4) removed.
    writeln!(console, "stop 2").expect("type stop");
    poll(Duration::from_secs(90), "node 2 removed", || {
        (member_state(node(0), 2).as_deref() == Some("removed")).then_some(())
    });
    // The added node answers, from the replicas that moved to it.
    let r = retry_read(Duration::from_secs(10), || {
        get(node(3), &kv_path("greeting", None))
    });
    assert_eq!((r.status, r.text()), (200, "hello".to_owned()), "{r:?}");
    writeln!(console, "status").expect("type status");
    writeln!(console, "bogus").expect("type bogus");
    // The console answers each line in turn: wait for the last one.
    thread::sleep(Duration::from_millis(500));
    let out = interrupt(demo);
    assert!(out.contains("node n4 joined"), "{out}");
    assert!(out.contains("node n2 stopped"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("n2 ") && l.contains("removed")),
        "status lists n2 as removed:\n{out}"
    );
    assert!(out.contains("unknown command \"bogus\""), "{out}");
}
