//! Client authentication on real `ringkv server` processes: `ringkv auth`
//! adds tokens through the controller; then every API refuses a request
//! without a token (REST 401 problem+json, gRPC UNAUTHENTICATED through the
//! CLI, RESP `-NOAUTH`), refuses a wrong role or key prefix (403, exit 9,
//! `-NOPERM`), and takes a valid token (curl-style raw HTTP, the `ringkv`
//! CLI, the `redis` crate with a password, `HELLO 3 AUTH`). The tokens are
//! the same on every node, on a node that joins later, and after restarts;
//! a revoked token is refused everywhere, on open RESP connections too.

#![cfg(not(madsim))]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Cluster, poll, request};

const BIN: &str = env!("CARGO_BIN_EXE_ringkv");
const READY: Duration = Duration::from_secs(60);

/// `ringkv ARGS --endpoints GRPC` with `token`, if any, in `RINGKV_TOKEN`.
fn cli(grpc: SocketAddr, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--endpoints", &grpc.to_string()])
        .env_remove("RINGKV_TOKEN");
    if let Some(t) = token {
        cmd.env("RINGKV_TOKEN", t);
    }
    cmd.output().expect("run ringkv")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ringkv auth add ... -o json` as `admin` (None: no token): the token.
fn add_token(grpc: SocketAddr, admin: Option<&str>, args: &[&str]) -> String {
    let mut all = vec!["auth", "add", "-o", "json"];
    all.extend_from_slice(args);
    let out = cli(grpc, admin, &all);
    assert!(out.status.success(), "auth add {args:?}: {}", stderr(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    j["token"].as_str().expect("a token").to_owned()
}

/// A token's id (`rkv_<id>_<secret>`).
fn id_of(token: &str) -> &str {
    token.split('_').nth(1).expect("an id")
}

/// A REST request with `token` (if any) as a bearer token.
fn rest(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> common::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(addr, method, path, &headers, body).expect("REST exchange")
}

/// Sends one RESP command (raw bytes) and reads one reply line.
fn resp_line(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(out.as_bytes()).expect("send");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.ends_with(b"\r\n") && Instant::now() < deadline {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => got.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).trim_end().to_owned()
}

fn resp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect RESP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn tokens_gate_every_api_on_every_node_and_survive_restarts() {
    let (mut c, resp) = Cluster::start_with_resp(3, READY);
    let grpc = |c: &Cluster, id: u64| c.node(id).grpc;

    // Authentication is off: anyone may write, and the first token must be
    // an admin token.
    let r = rest(c.node(1).rest(), "PUT", "/v1/kv/open", None, b"1");
    assert!(r.is_success(), "{r:?}");
    let out = cli(grpc(&c, 1), None, &["auth", "add", "--role", "read"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("first token must be an admin token"),
        "{}",
        stderr(&out)
    );
    let started = Instant::now();
    let admin = add_token(grpc(&c, 2), None, &["--role", "admin", "--name", "ops"]);
    eprintln!("admin token added in {:?}", started.elapsed());
    assert!(admin.starts_with("rkv_") && admin.len() > 40, "{admin}");

    // From now on: without a token, every API refuses, on every node (as
    // soon as its copy of the document has the token).
    for id in 1..=3 {
        let node = c.node(id).rest();
        let r = poll(
            Duration::from_secs(10),
            "every node to require a token",
            || {
                let r = rest(node, "GET", "/v1/kv/open", None, b"");
                (r.status == 401).then_some(r)
            },
        );
        assert_eq!(r.problem_code(), "unauthenticated");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"ringkv\"")
        );
        for path in [
            "/v1/kv?prefix=o",
            "/v1/cluster/status",
            "/v1/watch?key=open",
        ] {
            let r = rest(node, "GET", path, None, b"");
            assert_eq!(r.status, 401, "{path} on node {id}: {r:?}");
        }
        let r = rest(node, "PUT", "/v1/kv/open", None, b"2");
        assert_eq!(r.status, 401, "{r:?}");
        // The probes and the metrics stay open.
        for path in ["/readyz", "/livez", "/metrics"] {
            assert_eq!(rest(node, "GET", path, None, b"").status, 200, "{path}");
        }
        let out = cli(grpc(&c, id), None, &["get", "open"]);
        assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
        assert!(stderr(&out).contains("unauthenticated"), "{}", stderr(&out));
        let mut s = resp_connect(resp[(id - 1) as usize]);
        assert_eq!(
            resp_line(&mut s, &["GET", "open"]),
            "-NOAUTH Authentication required."
        );
        assert!(resp_line(&mut s, &["HELLO", "3"]).starts_with("-NOAUTH HELLO must be called"));
        assert!(resp_line(&mut s, &["AUTH", "rkv_nope_xyz"]).starts_with("-WRONGPASS"));
    }
    // A malformed or wrong token: 401 invalid_token.
    let node1 = c.node(1).rest();
    let wrong = format!("{}x", &admin[..admin.len() - 1]);
    for bad in [wrong.as_str(), "rkv_zz_abc", "not-a-token"] {
        let r = rest(node1, "GET", "/v1/kv/open", Some(bad), b"");
        assert_eq!(r.status, 401, "{bad}: {r:?}");
        assert_eq!(r.problem_code(), "invalid_token");
    }
    let out = cli(grpc(&c, 1), Some(&wrong), &["get", "open"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid_token"), "{}", stderr(&out));

    // The admin adds a writer confined to app/ and a reader.
    let writer = add_token(
        grpc(&c, 3),
        Some(&admin),
        &["--role", "write", "--prefix", "app/", "--name", "app"],
    );
    let reader = add_token(grpc(&c, 1), Some(&admin), &["--role", "read"]);

    // The writer: its prefix only, over every API.
    for id in 1..=3 {
        let node = c.node(id).rest();
        let key = format!("/v1/kv/app/{id}");
        let r = poll(
            Duration::from_secs(10),
            "the writer's token everywhere",
            || {
                let r = rest(node, "PUT", &key, Some(&writer), b"w");
                (r.status != 401).then_some(r)
            },
        );
        assert!(r.is_success(), "node {id}: {r:?}");
        let r = rest(node, "PUT", "/v1/kv/other", Some(&writer), b"w");
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.problem_code(), "permission_denied");
        assert!(
            r.json()["detail"].as_str().unwrap().contains("\"app/\""),
            "{r:?}"
        );
        let r = rest(node, "GET", "/v1/kv?prefix=app/", Some(&writer), b"");
        assert_eq!(r.status, 200, "{r:?}");
        let r = rest(node, "GET", "/v1/kv", Some(&writer), b"");
        assert_eq!(r.status, 403, "a scan of every key: {r:?}");
        assert_eq!(
            rest(node, "GET", "/v1/cluster/status", Some(&writer), b"").status,
            200
        );
    }
    let out = cli(grpc(&c, 2), Some(&writer), &["put", "app/cli", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(grpc(&c, 2), Some(&writer), &["put", "other", "v"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission_denied"),
        "{}",
        stderr(&out)
    );
    let out = cli(grpc(&c, 2), Some(&writer), &["ls"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let out = cli(grpc(&c, 2), Some(&writer), &["ls", "app/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("app/cli"));

    // The redis crate with the token as its password (AUTH), and HELLO 3 AUTH.
    let url = format!("redis://default:{writer}@{}/", resp[1]);
    let mut con = redis::Client::open(url)
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("connect with AUTH");
    let () = redis::cmd("SET")
        .arg("app/redis")
        .arg("r")
        .query(&mut con)
        .expect("SET app/");
    let got: String = redis::cmd("GET")
        .arg("app/redis")
        .query(&mut con)
        .expect("GET app/");
    assert_eq!(got, "r");
    let e = redis::cmd("SET")
        .arg("other")
        .arg("x")
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e:?}");
    let e = redis::cmd("KEYS")
        .arg("*")
        .query::<Vec<String>>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e:?}");
    let mut s = resp_connect(resp[2]);
    let hello = resp_line(&mut s, &["HELLO", "3", "AUTH", "default", &reader]);
    assert!(hello.starts_with('%'), "HELLO 3 AUTH: {hello}");

    // The dashboard: its page is open, its data needs the token, which a
    // browser sends as the page's cookie (an EventSource sends no header).
    assert_eq!(rest(node1, "GET", "/ui/", None, b"").status, 200);
    assert_eq!(
        rest(node1, "GET", "/v1/dashboard/cluster", None, b"").status,
        401
    );
    let cookie = format!("theme=dark; ringkv_token={reader}");
    let r = request(
        node1,
        "GET",
        "/v1/dashboard/cluster",
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json()["nodes"].as_array().map(Vec::len),
        Some(3),
        "every node answered"
    );
    // The cookie is taken on the dashboard's reads only.
    let r = request(node1, "GET", "/v1/kv/app/1", &[("Cookie", &cookie)], b"").unwrap();
    assert_eq!(r.status, 401, "a cookie on a key read: {r:?}");

    // The reader reads, never writes; it cannot manage tokens or drain.
    let r = rest(node1, "GET", "/v1/kv/app/1", Some(&reader), b"");
    assert_eq!(r.status, 200, "{r:?}");
    let r = rest(node1, "DELETE", "/v1/kv/app/1", Some(&reader), b"");
    assert_eq!(r.status, 403, "{r:?}");
    let out = cli(grpc(&c, 1), Some(&reader), &["put", "app/x", "v"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    for args in [
        &["auth", "ls"][..],
        &["auth", "rm", id_of(&writer)],
        &["node", "drain", "3"],
    ] {
        let out = cli(grpc(&c, 1), Some(&reader), args);
        assert_eq!(out.status.code(), Some(9), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("permission_denied"),
            "{}",
            stderr(&out)
        );
    }

    // Every node lists the same tokens (never a secret).
    for id in 1..=3 {
        let out = cli(grpc(&c, id), Some(&admin), &["auth", "ls", "-o", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut ids: Vec<&str> = j["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        ids.sort();
        let mut want = vec![id_of(&admin), id_of(&writer), id_of(&reader)];
        want.sort();
        assert_eq!(ids, want, "node {id}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains(admin.split('_').nth(2).unwrap()),
            "a secret was listed"
        );
    }

    // A node that joins checks tokens from its first answer.
    let joined = c.join(1);
    let node4 = c.node(joined).rest();
    let first = poll(Duration::from_secs(30), "the joined node to answer", || {
        request(node4, "GET", "/v1/kv/open", &[], b"").ok()
    });
    assert_eq!(
        first.status, 401,
        "the joined node's first answer: {first:?}"
    );
    // A watch of every partition through it: the partitions it holds no
    // replica of are relayed from the other nodes, a member's calls that
    // need no token.
    c.wait_node_ready(joined, READY);
    let mut watch = Command::new(BIN)
        .args(["watch", "--prefix", "app/", "-o", "json", "--endpoints"])
        .arg(c.node(joined).grpc.to_string())
        .env("RINGKV_TOKEN", &reader)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ringkv watch");
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Established once a write it follows comes through.
    poll(
        Duration::from_secs(20),
        "the watch through node 4 to start",
        || {
            let out = cli(grpc(&c, 1), Some(&writer), &["put", "app/watch-ready", "v"]);
            assert!(out.status.success(), "{}", stderr(&out));
            let line = rx.recv_timeout(Duration::from_millis(500)).ok()?;
            line.contains("\"app/watch-ready\"").then_some(())
        },
    );
    let keys: Vec<String> = (0..16).map(|i| format!("app/watched-{i}")).collect();
    for key in &keys {
        let out = cli(grpc(&c, 1), Some(&writer), &["put", key, "v"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < keys.len() {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("the watch through node {joined} saw only {seen:?}"));
        if let Some(k) = keys.iter().find(|k| line.contains(&format!("\"{k}\""))) {
            seen.insert(k.clone());
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // Every node restarted: the tokens are still required and still valid
    // from each node's first answer on. The joined node (no replica of the
    // metadata group: its copy of the document comes from the others)
    // starts alone first: what it knows then is what it saved.
    for id in 1..=4 {
        c.kill(id);
    }
    c.start_again(4);
    let first = poll(
        Duration::from_secs(30),
        "the restarted node 4 to answer",
        || request(node4, "GET", "/v1/kv/open", &[], b"").ok(),
    );
    assert_eq!(first.status, 401, "node 4 alone, after restart: {first:?}");
    let r = rest(node4, "GET", "/v1/kv/open", Some("rkv_zz_abc"), b"");
    assert_eq!(r.problem_code(), "invalid_token");
    for id in 1..=3 {
        c.start_again(id);
    }
    for id in 1..=3 {
        let node = c.node(id).rest();
        let first = poll(
            Duration::from_secs(30),
            "a restarted node to answer",
            || request(node, "GET", "/v1/kv/open", &[], b"").ok(),
        );
        assert_eq!(
            first.status, 401,
            "node {id}'s first answer after restart: {first:?}"
        );
    }
    c.wait_ready(READY);
    for id in 1..=3 {
        let r = common::retry_read(Duration::from_secs(20), || {
            request(
                c.node(id).rest(),
                "GET",
                "/v1/kv/app/1",
                &[("Authorization", &format!("Bearer {reader}"))],
                b"",
            )
        });
        assert_eq!(r.text(), "w", "node {id}: {r:?}");
    }

    // The writer's token is revoked: refused everywhere, on a connection
    // that authenticated with it too.
    let mut con = redis::Client::open(format!("redis://:{writer}@{}/", resp[0]))
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("connect with AUTH");
    let () = redis::cmd("SET")
        .arg("app/before")
        .arg("1")
        .query(&mut con)
        .expect("SET");
    // Streams opened with it: a keyspace subscription and a gRPC watch.
    let mut sub = resp_connect(resp[1]);
    assert_eq!(resp_line(&mut sub, &["AUTH", &writer]), "+OK");
    assert_eq!(
        resp_line(&mut sub, &["SUBSCRIBE", "__keyspace@0__:app/sub"]),
        "*3"
    );
    let mut watch = Command::new(BIN)
        .args(["watch", "--prefix", "app/", "--endpoints"])
        .arg(grpc(&c, 3).to_string())
        .env("RINGKV_TOKEN", &writer)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ringkv watch");
    std::thread::sleep(Duration::from_secs(1));
    let out = cli(grpc(&c, 1), Some(&admin), &["auth", "rm", id_of(&writer)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let revoked = Instant::now();
    for id in 1..=4 {
        let node = c.node(id).rest();
        poll(Duration::from_secs(10), "the revoked token refused", || {
            let r = rest(node, "PUT", "/v1/kv/app/after", Some(&writer), b"x");
            (r.status == 401).then_some(())
        });
    }
    eprintln!(
        "revocation reached every node within {:?}",
        revoked.elapsed()
    );
    let e = redis::cmd("SET")
        .arg("app/after")
        .arg("1")
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOAUTH"), "{e:?}");
    // The streams end at their next change.
    let out = cli(grpc(&c, 1), Some(&admin), &["put", "app/sub", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut rest_of_sub = Vec::new();
    let _ = sub.read_to_end(&mut rest_of_sub);
    let rest_of_sub = String::from_utf8_lossy(&rest_of_sub);
    assert!(
        rest_of_sub.contains("-NOAUTH") && !rest_of_sub.contains("set"),
        "the subscription after revocation: {rest_of_sub:?}"
    );
    let ended = poll(Duration::from_secs(20), "the watch to end", || {
        watch.try_wait().unwrap()
    });
    let mut err = String::new();
    watch
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(ended.code(), Some(9), "{err}");
    assert!(
        err.contains("not valid any more") || err.contains("invalid_token"),
        "{err}"
    );
    // The last admin token cannot go while others remain.
    let out = cli(grpc(&c, 1), Some(&admin), &["auth", "rm", id_of(&admin)]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("last admin token"),
        "{}",
        stderr(&out)
    );
    c.assert_alive();
}
