//! Watches against real `ringkv server` processes: server-sent events over
//! REST, the gRPC stream through `ringkv watch`, across a leader kill, and
//! resumption from a cursor.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Cluster, Response};

/// One server-sent event: its type, id and data.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: Option<String>,
    data: serde_json::Value,
}

/// Opens `GET path` as an event stream and hands each event to the
/// returned channel, from a thread, until the stream ends.
fn subscribe(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> mpsc::Receiver<Sse> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    if let Some(id) = last_event_id {
        head.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stream).lines();
        // The response head.
        let status = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(status.contains(" 200 "), "watch refused: {status}");
        for line in lines.by_ref() {
            if line.unwrap_or_default().is_empty() {
                break;
            }
        }
        let (mut event, mut id, mut data) = (String::new(), None, String::new());
        for line in lines {
            let Ok(line) = line else { return };
            // Chunked transfer encoding: skip the chunk-size lines.
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            } else if line.is_empty() && !event.is_empty() {
                let parsed = serde_json::from_str(&data).expect("event data is JSON");
                let e = Sse {
                    event: std::mem::take(&mut event),
                    id: id.take(),
                    data: parsed,
                };
                data.clear();
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn next_event(rx: &mpsc::Receiver<Sse>, what: &str) -> Sse {
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no event: {what}"))
}

/// Puts `key = value` through `via`, once: a put whose outcome is unknown
/// (504: a leader died under it) is sent again only if a linearizable read
/// shows it was not applied (with two of three nodes left, the survivor
/// that leads holds every entry that can still commit).
fn put(c: &Cluster, via: u64, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = common::retry_write(Duration::from_secs(30), || {
            common::request(
                c.node(via).rest(),
                "PUT",
                &common::kv_path(key, None),
                &[],
                value.as_bytes(),
            )
        });
        if r.is_success() {
            return;
        }
        assert!(
            r.status == 504 && Instant::now() < deadline,
            "put {key}: {r:?}"
        );
        let read = common::retry_read(Duration::from_secs(30), || {
            common::get(c.node(via).rest(), &common::kv_path(key, None))
        });
        if read.status == 200 && read.text() == value {
            return;
        }
    }
}

fn delete(c: &Cluster, via: u64, key: &str) {
    let r = common::retry_write(Duration::from_secs(30), || {
        common::request(
            c.node(via).rest(),
            "DELETE",
            &common::kv_path(key, None),
            &[],
            b"",
        )
    });
    assert!(r.is_success(), "delete {key}: {r:?}");
}

/// (kind, value) of a put/delete event, and its revision.
fn change(e: &Sse) -> ((String, Option<String>), u64) {
    (
        (e.event.clone(), e.data["value"].as_str().map(str::to_owned)),
        e.data["revision"].as_u64().expect("revision"),
    )
}

/// A watch through a follower over server-sent events, and `ringkv watch`
/// connected to the leader, both see every put and delete of the key, in
/// revision order, once, while the leader is killed between two writes:
/// the follower's stream goes on (it applies the same log), the CLI
/// resumes through another node from its cursor.
#[test]
fn a_watch_sees_puts_and_deletes_across_a_leader_kill() {
    let mut c = Cluster::start(3);
    c.wait_ready(Duration::from_secs(30));
    let key = "watched/1";
    let (leader, _) = c.wait_leader_of(1, key, Duration::from_secs(20));
    let follower = c.ids().find(|&id| id != leader).expect("a follower");
    let other = c.ids().find(|&id| id != leader && id != follower).unwrap();

    let sse = subscribe(
        c.node(follower).rest(),
        &format!("/v1/watch?key={key}"),
        None,
    );
    let start = next_event(&sse, "start");
    assert_eq!(start.event, "start");
    assert!(start.id.is_some(), "the start event carries the cursor");

    let endpoints = [leader, follower, other]
        .iter()
        .map(|&id| c.node(id).grpc.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // The CLI starts where the follower's stream started (its cursor), so
    // both see the same changes whenever the CLI's stream attaches.
    let mut cli = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["watch", key, "-o", "json", "--count", "4", "--endpoints"])
        .arg(&endpoints)
        .args(["--cursor", start.id.as_deref().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringkv watch");
    // Let it attach to the leader before the leader dies (if it attaches
    // later, it reads the same changes through another node).
    thread::sleep(Duration::from_secs(1));

    put(&c, other, key, "v1");
    put(&c, follower, key, "v2");
    delete(&c, leader, key);
    c.kill(leader);
    common::poll(Duration::from_secs(30), "a new leader", || {
        let (l, _) = c.wait_leader_of(other, key, Duration::from_secs(30));
        (l != leader).then_some(())
    });
    put(&c, other, key, "v3");

    let want = [
        ("put".to_owned(), Some("v1".to_owned())),
        ("put".to_owned(), Some("v2".to_owned())),
        ("delete".to_owned(), None),
        ("put".to_owned(), Some("v3".to_owned())),
    ];
    let mut seen = Vec::new();
    let mut last_revision = 0;
    for w in &want {
        let e = next_event(&sse, &format!("{w:?}"));
        let (got, revision) = change(&e);
        assert_eq!(&got, w, "SSE events in order: {e:?}");
        assert!(revision > last_revision, "revisions ascend: {e:?}");
        assert!(e.id.is_some(), "each change closes its revision: {e:?}");
        last_revision = revision;
        seen.push(e);
    }
    assert!(
        sse.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing more"
    );

    // `ringkv watch` printed the same four changes, once each.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = cli.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "ringkv watch did not finish");
        thread::sleep(Duration::from_millis(100));
    };
    let out = cli.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "ringkv watch: {stderr}");
    assert!(
        stderr.contains("resuming through the next endpoint"),
        "it was attached to the killed leader and moved on: {stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let printed: Vec<(String, Option<String>, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_owned(),
                l["value"].as_str().map(str::to_owned),
                l["revision"].as_u64().unwrap(),
            )
        })
        .collect();
    let from_sse: Vec<(String, Option<String>, u64)> = seen
        .iter()
        .map(|e| {
            let ((kind, value), revision) = change(e);
            (kind, value, revision)
        })
        .collect();
    assert_eq!(
        printed, from_sse,
        "the CLI saw what the follower's stream saw"
    );

    // Resuming from the second change's id (Last-Event-ID) replays exactly
    // the changes after it, from any node.
    let resumed = subscribe(
        c.node(other).rest(),
        &format!("/v1/watch?key={key}"),
        seen[1].id.as_deref(),
    );
    assert_eq!(next_event(&resumed, "start").event, "start");
    for e in &seen[2..] {
        let got = next_event(&resumed, "a replayed change");
        assert_eq!(change(&got), change(e));
    }
}

/// A prefix watch sees every key under it, across partitions, and keys
/// outside it never; bad watch requests get clear errors.
#[test]
fn a_prefix_watch_sees_its_keys_and_bad_requests_are_refused() {
    let mut c = Cluster::start(3);
    c.wait_ready(Duration::from_secs(30));
    let rest = c.node(2).rest();
    let sse = subscribe(rest, "/v1/watch?prefix=app/&values=false", None);
    assert_eq!(next_event(&sse, "start").event, "start");
    for i in 0..20 {
        put(&c, 1 + i % 3, &format!("app/{i}"), "x");
        put(&c, 1 + i % 3, &format!("other/{i}"), "x");
    }
    let mut keys: Vec<String> = (0..20)
        .map(|_| {
            let e = next_event(&sse, "a put under app/");
            assert_eq!(e.event, "put");
            assert!(e.data.get("value").is_none(), "values=false: {e:?}");
            e.data["key"].as_str().unwrap().to_owned()
        })
        .collect();
    keys.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("app/{i}")).collect();
    want.sort();
    assert_eq!(keys, want, "every key under the prefix, once");
    assert!(sse.recv_timeout(Duration::from_millis(500)).is_err());

    for (path, status, code) in [
        ("/v1/watch", 400, "invalid_parameter"),
        ("/v1/watch?key=a&prefix=b", 400, "invalid_parameter"),
        ("/v1/watch?key=a&cursor=zzz", 400, "invalid_cursor"),
        (
            "/v1/watch?prefix=a/&start_revision=3",
            400,
            "invalid_parameter",
        ),
        ("/v1/watch?key=a&start_revision=0", 400, "invalid_parameter"),
        ("/v1/watch?key=a&values=maybe", 400, "invalid_parameter"),
        ("/v1/watch?key=a&since=3", 400, "unknown_parameter"),
    ] {
        let r: Response = common::get(rest, path).expect("request");
        assert_eq!(
            (r.status, r.problem_code()),
            (status, code.to_owned()),
            "{path}: {r:?}"
        );
    }
}

/// `ringkv watch` attached to a node that stops answering (SIGSTOP: its
/// connections stay open, nothing resets them) notices by its keepalive
/// pings and resumes through the next endpoint: a change written while
/// that node is frozen is still printed.
#[test]
fn ringkv_watch_moves_on_from_a_frozen_node() {
    let mut c = Cluster::start(3);
    c.wait_ready(Duration::from_secs(30));
    let key = "frozen/1";
    let frozen = 1;
    let endpoints = [1u64, 2, 3]
        .iter()
        .map(|&id| c.node(id).grpc.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sse = subscribe(c.node(2).rest(), &format!("/v1/watch?key={key}"), None);
    let start = next_event(&sse, "start");
    let mut cli = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["watch", key, "-o", "json", "--count", "1", "--endpoints"])
        .arg(&endpoints)
        .args(["--cursor", start.id.as_deref().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringkv watch");
    thread::sleep(Duration::from_secs(1));
    c.pause(frozen, true);
    put(&c, 2, key, "while frozen");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cli.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = cli.kill();
            panic!("ringkv watch never printed the change written while node {frozen} was frozen");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let out = cli.wait_with_output().expect("ringkv watch ends");
    c.pause(frozen, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ringkv watch: {stderr}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON line");
    assert_eq!(line["value"], "while frozen", "{line}");
    assert!(
        stderr.contains("resuming through the next endpoint"),
        "{stderr}"
    );
}

/// In a cluster of four, no node holds a replica of every partition: a
/// prefix watch through any node relays the partitions it lacks from
/// replicas elsewhere, and still sees every key under the prefix once;
/// its cursor resumes the watch on another node.
#[test]
fn a_prefix_watch_relays_the_partitions_its_node_does_not_hold() {
    let mut c = Cluster::start(4);
    c.wait_ready(Duration::from_secs(60));
    let status = c.status(4);
    let held = status["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter(|p| {
            p["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().any(|id| id == 4))
        })
        .count();
    assert!(
        held < 64,
        "node 4 holds {held} of 64 partitions: some must be relayed"
    );
    let sse = subscribe(c.node(4).rest(), "/v1/watch?prefix=r/", None);
    let start = next_event(&sse, "start");
    for i in 0..40 {
        put(&c, 1 + i % 4, &format!("r/{i}"), "x");
    }
    let mut keys: Vec<String> = Vec::new();
    let mut last_id = None;
    for _ in 0..40 {
        let e = next_event(&sse, "a put under r/");
        keys.push(e.data["key"].as_str().unwrap().to_owned());
        if e.id.is_some() {
            last_id = e.id.clone();
        }
    }
    keys.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("r/{i}")).collect();
    want.sort();
    assert_eq!(keys, want, "every key under the prefix, once");
    assert!(sse.recv_timeout(Duration::from_millis(500)).is_err());

    // The cursor after the 40th change resumes on node 1: only what came
    // after it.
    put(&c, 2, "r/after", "y");
    let resumed = subscribe(c.node(1).rest(), "/v1/watch?prefix=r/", last_id.as_deref());
    assert_eq!(next_event(&resumed, "start").event, "start");
    let e = next_event(&resumed, "the change after the cursor");
    assert_eq!(e.data["key"], "r/after");
    assert!(resumed.recv_timeout(Duration::from_millis(500)).is_err());
    drop(start);
}
