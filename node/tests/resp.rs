//! The Redis protocol on real `ringkv server` processes: the `redis` crate
//! (a real client library) and raw RESP bytes over TCP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Cluster;

const READY: Duration = Duration::from_secs(60);

/// Three nodes, each serving RESP; the RESP addresses by node id - 1.
fn cluster() -> (Cluster, Vec<SocketAddr>) {
    Cluster::start_with_resp(3, READY)
}

fn connect(addr: SocketAddr) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("connect")
}

/// Runs `cmd` until it is not refused with TRYAGAIN (leaders settling).
fn retrying<T: redis::FromRedisValue>(
    con: &mut redis::Connection,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cmd.query(con) {
            Err(e) if e.code() == Some("TRYAGAIN") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// Sends `send` and expects exactly `want` back (within 10 s).
fn exchange(stream: &mut TcpStream, send: &[u8], want: &[u8]) {
    stream.write_all(send).expect("send");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while got.len() < want.len() && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "reply to {:?}",
        String::from_utf8_lossy(send)
    );
}

fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s
}

/// Keys with an expiry, as Redis's commands set, read and clear it; a key
/// past its deadline is gone on every node.
#[test]
fn keys_expire_as_redis_says() {
    let (_c, resp) = cluster();
    let mut a = connect(resp[0]);
    let mut b = connect(resp[2]);
    let int = |con: &mut redis::Connection, cmd: &redis::Cmd| -> i64 {
        retrying(con, cmd).expect("an integer reply")
    };
    let () = retrying(
        &mut a,
        redis::cmd("SET").arg("session").arg("s").arg("EX").arg(100),
    )
    .expect("set ex");
    let ttl = int(&mut b, redis::cmd("TTL").arg("session"));
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    let pttl = int(&mut b, redis::cmd("PTTL").arg("session"));
    assert!((98_000..=100_000).contains(&pttl), "PTTL {pttl}");
    let at = int(&mut b, redis::cmd("PEXPIRETIME").arg("session"));
    let secs = int(&mut b, redis::cmd("EXPIRETIME").arg("session"));
    assert_eq!(secs, at / 1000);
    // No key: -2; a key without expiry: -1.
    assert_eq!(int(&mut a, redis::cmd("TTL").arg("nothing")), -2);
    let () = retrying(&mut a, redis::cmd("SET").arg("plain").arg("p")).expect("set");
    assert_eq!(int(&mut a, redis::cmd("TTL").arg("plain")), -1);
    // KEEPTTL keeps it; INCR and APPEND keep it; a plain SET clears it.
    let () = retrying(
        &mut a,
        redis::cmd("SET").arg("session").arg("s2").arg("KEEPTTL"),
    )
    .expect("keepttl");
    assert!(int(&mut b, redis::cmd("TTL").arg("session")) > 90);
    let () = retrying(
        &mut a,
        redis::cmd("SET").arg("n").arg(1).arg("PX").arg(100_000),
    )
    .expect("set px");
    assert_eq!(int(&mut a, redis::cmd("INCR").arg("n")), 2);
    assert!(int(&mut b, redis::cmd("PTTL").arg("n")) > 90_000);
    let () = retrying(&mut a, redis::cmd("SET").arg("session").arg("s3")).expect("set");
    assert_eq!(int(&mut b, redis::cmd("TTL").arg("session")), -1);
    // EXPIRE family and PERSIST.
    assert_eq!(int(&mut a, redis::cmd("EXPIRE").arg("plain").arg(50)), 1);
    assert!(int(&mut b, redis::cmd("TTL").arg("plain")) > 45);
    assert_eq!(int(&mut a, redis::cmd("EXPIRE").arg("nothing").arg(50)), 0);
    assert_eq!(int(&mut a, redis::cmd("PERSIST").arg("plain")), 1);
    assert_eq!(int(&mut a, redis::cmd("PERSIST").arg("plain")), 0);
    assert_eq!(int(&mut a, redis::cmd("TTL").arg("plain")), -1);
    assert_eq!(
        int(&mut a, redis::cmd("PEXPIRE").arg("plain").arg(60_000)),
        1
    );
    let future = at / 1000 + 500;
    assert_eq!(
        int(&mut a, redis::cmd("EXPIREAT").arg("plain").arg(future)),
        1
    );
    assert_eq!(int(&mut b, redis::cmd("EXPIRETIME").arg("plain")), future);
    // A time already passed deletes the key.
    assert_eq!(int(&mut a, redis::cmd("EXPIRE").arg("plain").arg(-1)), 1);
    assert_eq!(int(&mut b, redis::cmd("EXISTS").arg("plain")), 0);
    let () = retrying(&mut a, redis::cmd("SET").arg("old").arg("o")).expect("set");
    assert_eq!(
        int(&mut a, redis::cmd("PEXPIREAT").arg("old").arg(1_000)),
        1
    );
    assert_eq!(int(&mut b, redis::cmd("TTL").arg("old")), -2);
    // SETEX, PSETEX, and keys that run out while we wait.
    let () = retrying(&mut a, redis::cmd("SETEX").arg("brief").arg(1).arg("x")).expect("setex");
    let () = retrying(
        &mut a,
        redis::cmd("PSETEX").arg("briefer").arg(300).arg("y"),
    )
    .expect("psetex");
    let () = retrying(
        &mut a,
        redis::cmd("SET").arg("blink").arg("z").arg("PX").arg(300),
    )
    .expect("set px");
    let got: Option<String> = retrying(&mut b, redis::cmd("GET").arg("brief")).expect("get");
    assert_eq!(got.as_deref(), Some("x"));
    std::thread::sleep(Duration::from_millis(1_300));
    for key in ["brief", "briefer", "blink"] {
        for con in [&mut a, &mut b] {
            let got: Option<String> = retrying(con, redis::cmd("GET").arg(key)).expect("get");
            assert_eq!(got, None, "{key} outlived its deadline");
        }
    }
    // Redis's errors for bad expiries; the connection stays usable.
    for (cmd, want) in [
        (
            redis::cmd("SET").arg("k").arg("v").arg("EX").arg(0).clone(),
            "invalid expire time in 'set' command",
        ),
        (
            redis::cmd("SET")
                .arg("k")
                .arg("v")
                .arg("EX")
                .arg(1)
                .arg("PX")
                .arg(1)
                .clone(),
            "syntax error",
        ),
        (
            redis::cmd("SET")
                .arg("k")
                .arg("v")
                .arg("EX")
                .arg("soon")
                .clone(),
            "not an integer",
        ),
        (
            redis::cmd("SETEX").arg("k").arg(-5).arg("v").clone(),
            "invalid expire time in 'setex' command",
        ),
        (
            redis::cmd("EXPIRE").arg("n").arg(5).arg("NX").clone(),
            "not supported yet",
        ),
    ] {
        let e = cmd.query::<redis::Value>(&mut a).expect_err(want);
        assert!(e.to_string().contains(want), "{e}, want {want}");
    }
    let pong: String = retrying(&mut a, &redis::cmd("PING")).expect("still usable");
    assert_eq!(pong, "PONG");
}

/// The string commands through the `redis` crate, each node answering any
/// key; what ringkv does not do yet is refused with an error that says so,
/// and the connection goes on.
#[test]
fn a_redis_client_reads_and_writes_through_any_node() {
    let (c, resp) = cluster();
    let mut a = connect(resp[0]);
    let mut b = connect(resp[1]);
    let pong: String = redis::cmd("PING").query(&mut a).expect("ping");
    assert_eq!(pong, "PONG");

    let () = retrying(&mut a, redis::cmd("SET").arg("greeting").arg("hello")).expect("set");
    let v: Option<String> =
        retrying(&mut b, redis::cmd("GET").arg("greeting")).expect("get elsewhere");
    assert_eq!(v.as_deref(), Some("hello"));
    let missing: Option<String> = retrying(&mut b, redis::cmd("GET").arg("nope")).expect("get");
    assert_eq!(missing, None);

    // NX and XX: nil when the condition does not hold, as in Redis.
    let nx: Option<String> =
        retrying(&mut a, redis::cmd("SET").arg("greeting").arg("x").arg("NX")).expect("nx");
    assert_eq!(nx, None);
    let xx: Option<String> =
        retrying(&mut a, redis::cmd("SET").arg("fresh").arg("x").arg("XX")).expect("xx");
    assert_eq!(xx, None);
    let created: i64 = retrying(&mut a, redis::cmd("SETNX").arg("fresh").arg("1")).expect("setnx");
    let again: i64 = retrying(&mut a, redis::cmd("SETNX").arg("fresh").arg("2")).expect("setnx");
    assert_eq!((created, again), (1, 0));

    let () = retrying(
        &mut a,
        redis::cmd("MSET")
            .arg("{u1}.name")
            .arg("ada")
            .arg("{u1}.lang")
            .arg("rust"),
    )
    .expect("mset");
    let got: Vec<Option<String>> = retrying(
        &mut b,
        redis::cmd("MGET")
            .arg("{u1}.name")
            .arg("nope")
            .arg("{u1}.lang"),
    )
    .expect("mget");
    assert_eq!(
        got,
        vec![Some("ada".to_owned()), None, Some("rust".to_owned())]
    );
    // MSET in one slot is one write, all or nothing: two values that fit
    // one by one but not together write neither.
    let big = vec![b'x'; 600_000];
    let refused = retrying::<()>(
        &mut a,
        redis::cmd("MSET")
            .arg("{u2}.a")
            .arg(&big[..])
            .arg("{u2}.b")
            .arg(&big[..]),
    )
    .expect_err("two 600 kB values in one write");
    assert!(
        refused.to_string().contains("the limit is 1052672"),
        "{refused}"
    );
    let written: i64 =
        retrying(&mut b, redis::cmd("EXISTS").arg("{u2}.a").arg("{u2}.b")).expect("exists");
    assert_eq!(written, 0, "a refused MSET wrote nothing");
    // Over many partitions (a plain connection), every key is written,
    // a key given twice with its last value.
    let mut mset = redis::cmd("MSET");
    for i in 0..20 {
        mset.arg(format!("spread{i}")).arg(format!("v{i}"));
    }
    mset.arg("spread3").arg("last");
    let () = retrying(&mut a, &mset).expect("mset over partitions");
    let mut mget = redis::cmd("MGET");
    for i in 0..20 {
        mget.arg(format!("spread{i}"));
    }
    let got: Vec<String> = retrying(&mut b, &mget).expect("mget over partitions");
    let want: Vec<String> = (0..20)
        .map(|i| match i {
            3 => "last".to_owned(),
            i => format!("v{i}"),
        })
        .collect();
    assert_eq!(got, want);
    let exists: i64 = retrying(
        &mut b,
        redis::cmd("EXISTS")
            .arg("{u1}.name")
            .arg("nope")
            .arg("fresh"),
    )
    .expect("exists");
    assert_eq!(exists, 2);
    let len: i64 = retrying(&mut b, redis::cmd("STRLEN").arg("greeting")).expect("strlen");
    assert_eq!(len, 5);
    let kind: String = retrying(&mut b, redis::cmd("TYPE").arg("greeting")).expect("type");
    assert_eq!(kind, "string");
    // greeting, fresh, {u1}.name, {u1}.lang and spread0..19: counted over
    // every partition.
    let size: i64 = retrying(&mut b, &redis::cmd("DBSIZE")).expect("dbsize");
    assert_eq!(size, 24);
    let deleted: i64 = retrying(
        &mut a,
        redis::cmd("DEL").arg("greeting").arg("nope").arg("fresh"),
    )
    .expect("del");
    assert_eq!(deleted, 2);
    let gone: Option<String> = retrying(&mut b, redis::cmd("GET").arg("greeting")).expect("get");
    assert_eq!(gone, None);
    let size: i64 = retrying(&mut a, &redis::cmd("DBSIZE")).expect("dbsize");
    assert_eq!(size, 22);

    // Hash tags: one slot, as Redis computes it.
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("foo")
        .query(&mut a)
        .expect("keyslot");
    assert_eq!(slot, 12182);
    let s1: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("{u1}.name")
        .query(&mut a)
        .expect("keyslot");
    let s2: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("u1")
        .query(&mut a)
        .expect("keyslot");
    assert_eq!(s1, s2);

    // Refusals, each with its reason; the connection stays usable.
    let e = redis::cmd("EXPIRE")
        .arg("n")
        .arg(10)
        .arg("GT")
        .query::<i64>(&mut a)
        .expect_err("not yet");
    assert!(e.to_string().contains("not supported yet"), "{e}");
    let e = redis::cmd("SELECT")
        .arg(1)
        .query::<()>(&mut a)
        .expect_err("one db");
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = redis::cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("")
        .query::<()>(&mut a)
        .expect_err("read-only settings");
    assert!(e.to_string().contains("CONFIG SET is not supported"), "{e}");
    let e = redis::cmd("NOSUCH")
        .arg("x")
        .query::<()>(&mut a)
        .expect_err("unknown");
    assert!(e.to_string().contains("unknown command 'NOSUCH'"), "{e}");
    let big = vec![b'v'; 2 << 20];
    let e = retrying::<()>(&mut a, redis::cmd("SET").arg("big").arg(&big)).expect_err("too large");
    assert!(
        e.to_string()
            .contains("value is 2097152 bytes; the limit is 1048576"),
        "{e}"
    );
    let pong: String = redis::cmd("PING").query(&mut a).expect("still usable");
    assert_eq!(pong, "PONG");

    // The member list records where each node serves RESP (and REST).
    let rest = c.node(2).rest();
    common::poll(
        Duration::from_secs(20),
        "RESP addresses in the member list",
        || {
            let members = common::get(rest, "/v1/cluster/members").ok()?.json();
            let listed: Vec<String> = members["members"]
                .as_array()?
                .iter()
                .map(|m| m["resp_addr"].as_str().unwrap_or_default().to_owned())
                .collect();
            let want: Vec<String> = resp.iter().map(ToString::to_string).collect();
            (listed == want).then_some(())
        },
    );
}

/// INCR and its kin, APPEND, GETSET, GETDEL and SET ... GET answer as Redis
/// does, with Redis's errors; and increments from many connections through
/// every node are atomic: none is lost.
#[test]
fn read_modify_writes_answer_as_redis_and_are_atomic() {
    let (_c, resp) = cluster();
    let mut a = connect(resp[0]);
    let mut b = connect(resp[1]);
    let int = |con: &mut redis::Connection, cmd: &redis::Cmd| -> i64 {
        retrying(con, cmd).expect("integer reply")
    };
    let text = |con: &mut redis::Connection, cmd: &redis::Cmd| -> Option<String> {
        retrying(con, cmd).expect("bulk reply")
    };
    assert_eq!(int(&mut a, redis::cmd("INCR").arg("n")), 1);
    assert_eq!(int(&mut b, redis::cmd("INCRBY").arg("n").arg(41)), 42);
    assert_eq!(int(&mut a, redis::cmd("DECR").arg("n")), 41);
    assert_eq!(int(&mut b, redis::cmd("DECRBY").arg("n").arg(-9)), 50);
    assert_eq!(
        text(&mut a, redis::cmd("GET").arg("n")).as_deref(),
        Some("50")
    );

    let () = retrying(&mut a, redis::cmd("SET").arg("s").arg("hello")).expect("set");
    let e = retrying::<i64>(&mut a, redis::cmd("INCR").arg("s")).expect_err("not a number");
    assert_eq!(e.code(), Some("ERR"));
    assert!(
        e.to_string()
            .contains("value is not an integer or out of range"),
        "{e}"
    );
    let e = retrying::<i64>(&mut a, redis::cmd("INCRBY").arg("n").arg("1.5")).expect_err("arg");
    assert!(
        e.to_string()
            .contains("value is not an integer or out of range"),
        "{e}"
    );
    let () = retrying(&mut a, redis::cmd("SET").arg("max").arg(i64::MAX)).expect("set");
    let e = retrying::<i64>(&mut b, redis::cmd("INCR").arg("max")).expect_err("overflow");
    assert!(
        e.to_string()
            .contains("increment or decrement would overflow"),
        "{e}"
    );
    let e = retrying::<i64>(&mut b, redis::cmd("DECRBY").arg("n").arg(i64::MIN))
        .expect_err("cannot negate");
    assert!(e.to_string().contains("decrement would overflow"), "{e}");

    assert_eq!(
        int(&mut a, redis::cmd("APPEND").arg("s").arg(", world")),
        12
    );
    assert_eq!(int(&mut b, redis::cmd("APPEND").arg("new").arg("abc")), 3);
    assert_eq!(
        text(&mut b, redis::cmd("GET").arg("s")).as_deref(),
        Some("hello, world")
    );

    assert_eq!(
        text(&mut a, redis::cmd("GETSET").arg("s").arg("bye")).as_deref(),
        Some("hello, world")
    );
    assert_eq!(text(&mut a, redis::cmd("GETSET").arg("g").arg("1")), None);
    assert_eq!(
        text(&mut b, redis::cmd("SET").arg("s").arg("again").arg("GET")).as_deref(),
        Some("bye")
    );
    assert_eq!(
        text(
            &mut b,
            redis::cmd("SET")
                .arg("absent")
                .arg("x")
                .arg("XX")
                .arg("GET")
        ),
        None
    );
    assert_eq!(text(&mut b, redis::cmd("GET").arg("absent")), None);
    let e = retrying::<Option<String>>(
        &mut b,
        redis::cmd("SET").arg("s").arg("x").arg("NX").arg("GET"),
    )
    .expect_err("NX GET");
    assert!(e.to_string().contains("NX and GET"), "{e}");
    assert_eq!(
        text(&mut a, redis::cmd("GETDEL").arg("s")).as_deref(),
        Some("again")
    );
    assert_eq!(text(&mut a, redis::cmd("GETDEL").arg("s")), None);
    assert_eq!(text(&mut b, redis::cmd("GET").arg("s")), None);

    // Six connections, two per node, 50 increments each, all at once.
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let addr = resp[i % 3];
            std::thread::spawn(move || {
                let mut con = connect(addr);
                for _ in 0..50 {
                    let _: i64 =
                        retrying(&mut con, redis::cmd("INCR").arg("{c}.hits")).expect("incr");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("incrementing thread");
    }
    assert_eq!(
        text(&mut a, redis::cmd("GET").arg("{c}.hits")).as_deref(),
        Some("300")
    );
}

/// A pipeline of writes then reads, sent before any reply is read: the
/// replies come back in order, and the reads see the writes; a key's
/// commands keep their order among other keys' (which run at once).
#[test]
fn a_pipeline_is_answered_in_order() {
    let (_c, resp) = cluster();
    let mut con = connect(resp[2]);
    let () = retrying(&mut con, redis::cmd("SET").arg("warm").arg("up")).expect("leaders");
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    for i in 0..200 {
        pipe.cmd("GET").arg(format!("k{i}"));
    }
    // Right after a start the controller moves leaderships (balance): a
    // command meeting one is answered TRYAGAIN, and the whole pipeline
    // (idempotent) is sent again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let values: Vec<i64> = loop {
        match pipe.query(&mut con) {
            Err(e) if e.code() == Some("TRYAGAIN") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            r => break r.expect("pipeline"),
        }
    };
    assert_eq!(values, (0..200).collect::<Vec<i64>>());

    // Commands on one key keep their order inside a pipeline (they run one
    // after another), interleaved with commands on other keys (at once).
    // (A leadership move may refuse one command: then the whole pipeline
    // runs again on a fresh counter.)
    let counts: Vec<i64> = (0..)
        .find_map(|attempt| {
            let mut pipe = redis::pipe();
            for i in 0..300 {
                pipe.cmd("INCR").arg(format!("{{p}}.counter{attempt}"));
                pipe.cmd("SET")
                    .arg(format!("{{p}}.other{i}"))
                    .arg(i)
                    .ignore();
            }
            match pipe.query(&mut con) {
                Err(e) if e.code() == Some("TRYAGAIN") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                    None
                }
                r => Some(r.expect("pipeline of increments")),
            }
        })
        .expect("an attempt");
    assert_eq!(counts, (1..=300).collect::<Vec<i64>>());
}

/// Raw bytes: inline commands, RESP3 after HELLO 3, an unknown protocol
/// version, garbage that is an unknown command (the connection goes on),
/// and a framing error (answered, then the connection is closed).
#[test]
fn raw_resp_inline_resp3_and_protocol_errors() {
    let (_c, resp) = cluster();
    let mut s = raw(resp[0]);
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n");
    exchange(&mut s, b"ECHO hi\r\n", b"$2\r\nhi\r\n");
    exchange(
        &mut s,
        b"hullo world\r\n",
        b"-ERR unknown command 'hullo', with args beginning with: 'world'\r\n",
    );
    exchange(
        &mut s,
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n4\r\n",
        b"-NOPROTO unsupported protocol version (ringkv speaks RESP2 and RESP3)\r\n",
    );
    // RESP2: a missing key is a null bulk string, a map a flat array.
    exchange(
        &mut s,
        b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$10\r\nappendonly\r\n",
        b"*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n",
    );
    s.write_all(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        .expect("hello 3");
    let mut head = [0u8; 4];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.read_exact(&mut head).expect("hello reply");
    assert_eq!(&head, b"%8\r\n", "HELLO 3 answers a RESP3 map");
    // Drain the rest of the map, then speak RESP3.
    let mut rest = vec![0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let _ = s.read(&mut rest);
    exchange(
        &mut s,
        b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$10\r\nappendonly\r\n",
        b"%1\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n",
    );
    exchange(&mut s, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n");

    // A framing error: answered, then the server closes the connection.
    exchange(
        &mut s,
        b"*1\r\n+PING\r\n",
        b"-ERR Protocol error: expected '$', got '+'\r\n",
    );
    let mut buf = [0u8; 16];
    let closed = (0..50).any(|_| matches!(s.read(&mut buf), Ok(0)));
    assert!(closed, "the server closed the connection");

    // QUIT: +OK, then closed.
    let mut q = raw(resp[1]);
    exchange(&mut q, b"QUIT\r\n", b"+OK\r\n");
    let closed = (0..50).any(|_| matches!(q.read(&mut buf), Ok(0)));
    assert!(closed, "QUIT closes the connection");
}

/// One `CLUSTER SLOTS` entry: first and last slot, the master's
/// `host:port` and id, and the replicas' `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotRange {
    first: i64,
    last: i64,
    master: String,
    master_id: String,
    replicas: Vec<String>,
}

fn slot_ranges(con: &mut redis::Connection) -> Vec<SlotRange> {
    use redis::Value;
    let node = |v: &Value| -> (String, String) {
        let Value::Array(fields) = v else {
            panic!("node entry {v:?}")
        };
        match &fields[..] {
            [
                Value::BulkString(host),
                Value::Int(port),
                Value::BulkString(id),
                ..,
            ] => (
                format!("{}:{port}", String::from_utf8_lossy(host)),
                String::from_utf8_lossy(id).into_owned(),
            ),
            other => panic!("node entry {other:?}"),
        }
    };
    let value: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(con)
        .expect("cluster slots");
    let Value::Array(entries) = value else {
        panic!("CLUSTER SLOTS answered {value:?}")
    };
    entries
        .iter()
        .map(|e| {
            let Value::Array(fields) = e else {
                panic!("slot entry {e:?}")
            };
            let (Value::Int(first), Value::Int(last)) = (&fields[0], &fields[1]) else {
                panic!("slot entry {e:?}")
            };
            let (master, master_id) = node(&fields[2]);
            SlotRange {
                first: *first,
                last: *last,
                master,
                master_id,
                replicas: fields[3..].iter().map(|r| node(r).0).collect(),
            }
        })
        .collect()
}

/// The range holding `slot`.
fn range_of(ranges: &[SlotRange], slot: i64) -> &SlotRange {
    ranges
        .iter()
        .find(|r| (r.first..=r.last).contains(&slot))
        .unwrap_or_else(|| panic!("slot {slot} in no range: {ranges:?}"))
}

/// Cluster-aware clients: `CLUSTER SLOTS`, `NODES`, `SHARDS` and `INFO`
/// describe every slot with the partition's leader as master; the `redis`
/// crate's cluster client routes by them; a connection that asked for the
/// topology is answered `-MOVED` for a key another node leads (a plain
/// one is served) and `-CROSSSLOT` for keys in two slots; and after the
/// leader of a key's partition is paused and another takes over, the old
/// leader redirects to the new one and the cluster client follows.
#[test]
fn cluster_aware_clients_are_routed_to_leaders() {
    let (mut c, resp) = cluster();
    let addrs: Vec<String> = resp.iter().map(ToString::to_string).collect();
    let mut plain = connect(resp[0]);
    let () = retrying(&mut plain, redis::cmd("SET").arg("warm").arg("up")).expect("leaders");

    // Every slot, once, in order; masters and replicas are the nodes.
    let mut aware = connect(resp[0]);
    // (Until the member list holds every node's RESP address, the node
    // asked names itself for the slots it cannot place.)
    let ranges = common::poll(Duration::from_secs(20), "every slot served", || {
        let ranges = slot_ranges(&mut aware);
        let contiguous = ranges.first().map(|r| r.first) == Some(0)
            && ranges.last().map(|r| r.last) == Some(16_383)
            && ranges.windows(2).all(|w| w[0].last + 1 == w[1].first);
        let every_node_named = ranges.iter().all(|r| r.replicas.len() == 2);
        (contiguous && every_node_named).then_some(ranges)
    });
    for r in &ranges {
        assert!(addrs.contains(&r.master), "{r:?}");
        assert_eq!(r.replicas.len(), 2, "{r:?}");
        assert!(
            r.replicas
                .iter()
                .all(|a| addrs.contains(a) && *a != r.master)
        );
    }
    // CLUSTER NODES names the same nodes with the same ids.
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut aware)
        .expect("cluster nodes");
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    for r in &ranges {
        assert!(
            nodes
                .lines()
                .any(|l| l.starts_with(&format!("{} {}@", r.master_id, r.master))),
            "{r:?} not in\n{nodes}"
        );
    }
    assert_eq!(nodes.lines().filter(|l| l.contains("myself")).count(), 1);
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query(&mut aware)
        .expect("cluster info");
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    let shards: redis::Value = redis::cmd("CLUSTER")
        .arg("SHARDS")
        .query(&mut aware)
        .expect("cluster shards");
    assert!(
        matches!(&shards, redis::Value::Array(s) if s.len() == ranges.len()),
        "{shards:?}"
    );

    // A real cluster client.
    let client = redis::cluster::ClusterClient::new(
        addrs
            .iter()
            .map(|a| format!("redis://{a}/"))
            .collect::<Vec<_>>(),
    )
    .expect("cluster client");
    let mut cluster_con = client.get_connection().expect("cluster connection");
    for i in 0..100 {
        let () = redis::cmd("SET")
            .arg(format!("key{i}"))
            .arg(i)
            .query(&mut cluster_con)
            .expect("cluster set");
    }
    for i in 0..100 {
        let v: i64 = redis::cmd("GET")
            .arg(format!("key{i}"))
            .query(&mut cluster_con)
            .expect("cluster get");
        assert_eq!(v, i);
    }
    let n: i64 = redis::cmd("INCR")
        .arg("key7")
        .query(&mut cluster_con)
        .expect("cluster incr");
    assert_eq!(n, 8);

    // MOVED for a key another node leads, to the master SLOTS names; a
    // plain connection to the same node is served.
    let moved = |con: &mut redis::Connection, key: &str| -> Option<(i64, String)> {
        match redis::cmd("GET").arg(key).query::<Option<String>>(con) {
            Err(e) if e.code() == Some("MOVED") => {
                let detail = e.detail().expect("MOVED detail").to_owned();
                let (slot, to) = detail.split_once(' ').expect("slot and address");
                Some((slot.parse().expect("slot"), to.to_owned()))
            }
            _ => None,
        }
    };
    let (key, slot, to) = common::poll(Duration::from_secs(20), "a MOVED reply", || {
        let ranges = slot_ranges(&mut aware);
        (0..100).find_map(|i| {
            let key = format!("key{i}");
            let (slot, to) = moved(&mut aware, &key)?;
            (range_of(&ranges, slot).master == to).then_some((key, slot, to))
        })
    });
    let own: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query(&mut plain)
        .expect("keyslot");
    assert_eq!(own, slot);
    assert_ne!(to, addrs[0]);
    let served: Option<String> =
        retrying(&mut plain, redis::cmd("GET").arg(&key)).expect("plain get");
    assert!(served.is_some());
    let e = redis::cmd("MGET")
        .arg("key1")
        .arg("key2")
        .query::<Vec<Option<String>>>(&mut aware)
        .expect_err("two slots");
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");

    // Pause the leader of `key`'s partition until another node leads it.
    let old = addrs.iter().position(|a| *a == to).expect("a node") as u64 + 1;
    let survivor = if old == 1 { 2 } else { 1 };
    let mut watcher = connect(resp[survivor as usize - 1]);
    let _ = slot_ranges(&mut watcher);
    c.pause(old, true);
    let new = common::poll(Duration::from_secs(30), "a new leader", || {
        let master = range_of(&slot_ranges(&mut watcher), slot).master.clone();
        (master != to).then_some(master)
    });
    c.pause(old, false);
    // The old leader hears of it and redirects there; the cluster client,
    // whose map still names the old leader, follows.
    let mut at_old = connect(resp[old as usize - 1]);
    let _ = slot_ranges(&mut at_old);
    common::poll(Duration::from_secs(30), "MOVED from the old leader", || {
        let (s, target) = moved(&mut at_old, &key)?;
        (s == slot && target == new).then_some(())
    });
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("after")
        .query(&mut cluster_con)
        .expect("cluster set after the leader change");
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query(&mut cluster_con)
        .expect("cluster get after the leader change");
    assert_eq!(v, "after");
}

/// `SCAN` pages through the key space by cursor (the `redis` crate's
/// iterator sees each key once), `MATCH`, `COUNT` and `TYPE` work as in
/// Redis, `KEYS` answers every match, and bad cursors and counts are
/// refused. On cluster-aware connections each node scans the slots it is
/// master of, so scanning every master sees each key exactly once.
#[test]
fn scan_and_keys_walk_the_key_space() {
    use std::collections::BTreeSet;

    use redis::Commands as _;
    let (_c, resp) = cluster();
    let mut con = connect(resp[1]);
    let mut all = BTreeSet::new();
    for i in 0..60 {
        let key = format!("user:{i}");
        let () = retrying(&mut con, redis::cmd("SET").arg(&key).arg(i)).expect("set");
        all.insert(key);
    }
    for key in ["other:1", "other:2", "{t}.a", "{t}.b"] {
        let () = retrying(&mut con, redis::cmd("SET").arg(key).arg("x")).expect("set");
        all.insert(key.to_owned());
    }

    let users: Vec<String> = con.scan_match("user:*").expect("scan").collect();
    let unique: BTreeSet<String> = users.iter().cloned().collect();
    assert_eq!(users.len(), 60, "each key once: {users:?}");
    assert_eq!(
        unique,
        all.iter()
            .filter(|k| k.starts_with("user:"))
            .cloned()
            .collect()
    );
    let every: Vec<String> = con.scan().expect("scan").collect();
    assert_eq!(every.len(), all.len());
    assert_eq!(every.into_iter().collect::<BTreeSet<_>>(), all);

    // One page of everything: cursor 0 back, the keys in order.
    // Each through `retrying`: a partition may be between leaders (the
    // controller spreads leaderships) when a page reads it.
    let (cursor, page): (String, Vec<String>) =
        retrying(&mut con, redis::cmd("SCAN").arg(0).arg("COUNT").arg(1000)).expect("scan count");
    assert_eq!(cursor, "0");
    assert_eq!(page, all.iter().cloned().collect::<Vec<_>>());
    let (_, tagged): (String, Vec<String>) = retrying(
        &mut con,
        redis::cmd("SCAN").arg(0).arg("MATCH").arg("{t}.*"),
    )
    .expect("scan tag");
    assert_eq!(tagged, ["{t}.a", "{t}.b"]);
    let (_, hashes): (String, Vec<String>) =
        retrying(&mut con, redis::cmd("SCAN").arg(0).arg("TYPE").arg("hash")).expect("scan type");
    assert!(hashes.is_empty(), "every key is a string: {hashes:?}");

    let mut keys: Vec<String> =
        retrying(&mut con, redis::cmd("KEYS").arg("user:1*")).expect("keys");
    keys.sort();
    let mut want: Vec<String> = all
        .iter()
        .filter(|k| k.starts_with("user:1"))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(keys, want);

    for (args, error) in [
        (vec!["SCAN", "123456789"], "invalid cursor"),
        (vec!["SCAN", "x"], "invalid cursor"),
        (vec!["SCAN", "0", "COUNT", "0"], "syntax error"),
        (vec!["SCAN", "0", "MATCH"], "syntax error"),
    ] {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let e = cmd.query::<redis::Value>(&mut con).expect_err("refused");
        assert!(e.to_string().contains(error), "{args:?}: {e}");
    }

    // Cluster-aware: every master's scan, together, is every key once
    // (retried if leadership moved while the three scans ran).
    let mut aware: Vec<redis::Connection> = resp.iter().map(|&a| connect(a)).collect();
    // (Until the member list holds every node's RESP address, a node names
    // itself master of the slots it cannot place.)
    for con in aware.iter_mut() {
        common::poll(Duration::from_secs(20), "every node named", || {
            slot_ranges(con)
                .iter()
                .all(|r| r.replicas.len() == 2)
                .then_some(())
        });
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = slot_ranges(&mut aware[0]);
        let mut seen: Vec<String> = Vec::new();
        for con in aware.iter_mut() {
            let _ = slot_ranges(con); // makes the connection cluster-aware
            let keys: Vec<String> = con.scan().expect("scan").collect();
            seen.extend(keys);
        }
        let after = slot_ranges(&mut aware[0]);
        let masters = |r: &[SlotRange]| r.iter().map(|s| s.master.clone()).collect::<Vec<_>>();
        if masters(&before) != masters(&after) && attempts < 10 {
            continue;
        }
        // DBSIZE on each master counts its own slots: together, every key.
        let sizes: i64 = aware
            .iter_mut()
            .map(|con| redis::cmd("DBSIZE").query::<i64>(con).expect("dbsize"))
            .sum();
        if masters(&after) != masters(&slot_ranges(&mut aware[0])) && attempts < 10 {
            continue;
        }
        assert_eq!(sizes, all.len() as i64, "DBSIZE summed over the masters");
        seen.sort();
        assert_eq!(
            seen,
            all.iter().cloned().collect::<Vec<_>>(),
            "each key once over the masters"
        );
        break;
    }
}

/// Issue 15's scale check: 100,000 keys written over the Redis protocol
/// (pipelined) into the 64 partitions of three real nodes; a REST scan in
/// pages of 10,000 and `ringkv ls` each return every key exactly once, in
/// order.
#[test]
fn a_scan_of_100000_keys_over_64_partitions_returns_each_once() {
    const KEYS: usize = 100_000;
    let (c, resp) = cluster();
    assert_eq!(
        c.status(1)["partition_count"],
        64,
        "the default partition count"
    );
    let mut con = connect(resp[0]);
    let () = retrying(&mut con, redis::cmd("SET").arg("warm").arg("up")).expect("leaders");
    let () = retrying(&mut con, redis::cmd("DEL").arg("warm"))
        .map(|_: i64| ())
        .expect("del");
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(2_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET").arg(format!("k/{i:06}")).arg(i).ignore();
        }
        // A leader may change under this load on a small machine: a client
        // re-sends the chunk on TRYAGAIN (not applied) and, since each SET
        // writes the same value again, on UNKNOWN (maybe applied) too.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match pipe.query::<()>(&mut con) {
                Ok(()) => break,
                Err(e)
                    if matches!(e.code(), Some("TRYAGAIN" | "UNKNOWN"))
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("a pipeline of sets: {e}"),
            }
        }
    }
    let expected: Vec<String> = (0..KEYS).map(|i| format!("k/{i:06}")).collect();

    let rest = c.node(2).rest();
    let mut listed: Vec<String> = Vec::with_capacity(KEYS);
    let mut path = "/v1/kv?prefix=k/&limit=10000&keys_only=true".to_owned();
    loop {
        let r = common::retry_read(Duration::from_secs(20), || common::get(rest, &path));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let j = r.json();
        let kvs = j["kvs"].as_array().expect("kvs");
        assert!(kvs.len() <= 10_000);
        listed.extend(kvs.iter().map(|kv| kv["key"].as_str().unwrap().to_owned()));
        match j["cursor"].as_str() {
            Some(cursor) => {
                path = format!("/v1/kv?prefix=k/&limit=10000&keys_only=true&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(listed.len(), KEYS, "REST scan: each key once");
    assert!(listed == expected, "REST scan: every key, in order");

    let endpoints = c
        .ids()
        .map(|id| c.node(id).grpc.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["ls", "k/", "--endpoints", &endpoints])
        .output()
        .expect("run ringkv ls");
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("keys are UTF-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), KEYS, "ringkv ls: each key once");
    assert!(lines == expected, "ringkv ls: every key, in order");
}

/// The messages received on `pubsub` until `want` of them arrived (or
/// `within` passed): `(channel, payload, pattern of a pmessage)`.
fn messages(
    pubsub: &mut redis::PubSub<'_>,
    want: usize,
    within: Duration,
) -> Vec<(String, String, Option<String>)> {
    pubsub
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match pubsub.get_message() {
            Ok(m) => got.push((
                m.get_channel_name().to_owned(),
                m.get_payload::<String>().expect("payload"),
                m.get_pattern::<Option<String>>().expect("pattern"),
            )),
            Err(e) if e.is_timeout() => {}
            Err(e) => panic!("pubsub: {e}"),
        }
    }
    got
}

/// Sends `send` and reads until every one of `parts` arrived, in any
/// order, and nothing else (within 10 s).
fn exchange_unordered(stream: &mut TcpStream, send: &[u8], parts: &[&[u8]]) {
    stream.write_all(send).expect("send");
    let want: usize = parts.iter().map(|p| p.len()).sum();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while got.len() < want && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    let orders = [[0, 1], [1, 0]];
    assert!(
        parts.len() == 2
            && orders
                .iter()
                .any(|o| got == [parts[o[0]], parts[o[1]]].concat()),
        "reply to {:?}: {text:?}",
        String::from_utf8_lossy(send)
    );
}

/// Keyspace notifications: a pattern subscription on one node hears the
/// `set`, `del` and `expired` events of its keys written through it, in
/// order, and goes on hearing them after the keys' partition leader (on
/// another node) is killed; an event channel carries the key; keys
/// outside the pattern stay silent. Over raw RESP: a RESP2 subscriber may
/// only (un)subscribe and PING, a RESP3 one gets push frames and may run
/// any command.
#[test]
fn keyspace_notifications_follow_keys_across_a_leader_loss() {
    let (mut c, resp) = cluster();
    let mut first = connect(resp[0]);
    let () = retrying(&mut first, redis::cmd("SET").arg("warm").arg("up")).expect("leaders");
    // Subscribe and write through a node that does not lead the keys.
    let ranges = common::poll(Duration::from_secs(20), "every slot served", || {
        let ranges = slot_ranges(&mut first);
        ranges
            .iter()
            .all(|r| resp.iter().any(|a| a.to_string() == r.master))
            .then_some(ranges)
    });
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("{user}:1")
        .query(&mut first)
        .expect("keyslot");
    let leader = &range_of(&ranges, slot).master;
    let leader_id = resp
        .iter()
        .position(|a| a.to_string() == *leader)
        .expect("a node") as u64
        + 1;
    let via = resp[if leader_id == 1 { 1 } else { 0 }];
    let mut writer = connect(via);
    let mut sub_con = connect(via);
    let mut pubsub = sub_con.as_pubsub();
    let pattern = "__keyspace@0__:{user}:*";
    pubsub.psubscribe(pattern).expect("psubscribe");
    pubsub
        .subscribe("__keyevent@0__:expired")
        .expect("subscribe");

    let set = |w: &mut redis::Connection, k: &str, v: &str| {
        let () = retrying(w, redis::cmd("SET").arg(k).arg(v)).expect("set");
    };
    set(&mut writer, "{user}:1", "a");
    let _: i64 = retrying(&mut writer, redis::cmd("INCR").arg("{user}:2")).expect("incr");
    set(&mut writer, "other", "x");
    let _: i64 = retrying(&mut writer, redis::cmd("DEL").arg("{user}:1")).expect("del");
    let () = retrying(
        &mut writer,
        redis::cmd("SET")
            .arg("{user}:3")
            .arg("v")
            .arg("PX")
            .arg(300),
    )
    .expect("set px");
    let ks = |k: &str, e: &str| {
        (
            format!("__keyspace@0__:{k}"),
            e.to_owned(),
            Some(pattern.to_owned()),
        )
    };
    let got = messages(&mut pubsub, 6, Duration::from_secs(20));
    // (`{user}` keys share a slot: one partition, one order. The expiry's
    // two messages are of two subscriptions: either may come first.)
    let (by_pattern, by_channel): (Vec<_>, Vec<_>) = got.into_iter().partition(|m| m.2.is_some());
    assert_eq!(
        by_pattern,
        vec![
            ks("{user}:1", "set"),
            ks("{user}:2", "set"),
            ks("{user}:1", "del"),
            ks("{user}:3", "set"),
            ks("{user}:3", "expired"),
        ]
    );
    assert_eq!(
        by_channel,
        vec![(
            "__keyevent@0__:expired".to_owned(),
            "{user}:3".to_owned(),
            None
        )]
    );

    // The partition's leader goes; writes go on under the next one, and
    // the subscription, on a replica that stayed, hears each of them.
    c.kill(leader_id);
    for i in 0..5 {
        set(&mut writer, "{user}:4", &i.to_string());
    }
    let got = messages(&mut pubsub, 5, Duration::from_secs(20));
    assert_eq!(got, vec![ks("{user}:4", "set"); 5]);
    // Nothing more: `other` was never named.
    assert_eq!(messages(&mut pubsub, 1, Duration::from_secs(1)), vec![]);
    drop(pubsub);

    // Raw RESP2: subscribed, only the pub/sub commands and PING.
    let mut s = raw(via);
    exchange(
        &mut s,
        b"SUBSCRIBE __keyspace@0__:k news\r\n",
        b"*3\r\n$9\r\nsubscribe\r\n$16\r\n__keyspace@0__:k\r\n:1\r\n\
          *3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:2\r\n",
    );
    let refused = |name: &str| {
        format!(
            "-ERR Can't execute '{name}': only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT are \
             allowed in this context\r\n"
        )
    };
    exchange(&mut s, b"GET k\r\n", refused("get").as_bytes());
    exchange(
        &mut s,
        b"PUBLISH news hi\r\n",
        refused("publish").as_bytes(),
    );
    exchange(&mut s, b"PING\r\n", b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    exchange(
        &mut s,
        b"UNSUBSCRIBE\r\n",
        b"*3\r\n$11\r\nunsubscribe\r\n$16\r\n__keyspace@0__:k\r\n:1\r\n\
          *3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n",
    );
    exchange(
        &mut s,
        b"UNSUBSCRIBE\r\n",
        b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n",
    );
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n");

    // RESP3: push frames, and other commands still run.
    exchange(&mut s, b"HELLO 3\r\nPING\r\n", b"");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.ends_with(b"+PONG\r\n") && Instant::now() < deadline {
        if let Ok(n) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    exchange(
        &mut s,
        b"SUBSCRIBE __keyspace@0__:k\r\n",
        b">3\r\n$9\r\nsubscribe\r\n$16\r\n__keyspace@0__:k\r\n:1\r\n",
    );
    set(&mut writer, "k", "1");
    exchange_unordered(
        &mut s,
        b"GET k\r\n",
        &[
            b">3\r\n$7\r\nmessage\r\n$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n",
            b"$1\r\n1\r\n",
        ],
    );
    exchange(
        &mut s,
        b"PUBLISH news hi\r\n",
        b"-ERR PUBLISH is not supported: ringkv's channels carry keyspace notifications \
          (__keyspace@0__:KEY, __keyevent@0__:EVENT) only\r\n",
    );
}
