//! What a client that misbehaves gets, on a real node (one process):
//! requests that stall mid-way are cut after `--client-timeout`; past
//! `--max-connections` a connection is refused in words; oversized or
//! malformed requests get bounded problem documents, never an echo of
//! what they sent.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const CLIENT_TIMEOUT_SECS: u64 = 2;
const MAX_CONNECTIONS: usize = 6;

/// One node serving REST and RESP with a short client timeout and a
/// small connection cap; its RESP address.
fn node() -> (Cluster, SocketAddr) {
    let resp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let timeout = CLIENT_TIMEOUT_SECS.to_string();
    let max = MAX_CONNECTIONS.to_string();
    let mut c = Cluster::start_each(
        1,
        &[
            "--replication-factor",
            "1",
            "--client-timeout",
            &timeout,
            "--max-connections",
            &max,
        ],
        move |_| vec!["--resp-listen".to_owned(), resp.to_string()],
    );
    c.wait_ready(Duration::from_secs(30));
    (c, resp)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s
}

/// Everything the server sends until it closes the connection, and when
/// it closed it.
fn read_until_closed(mut s: TcpStream) -> (String, Instant) {
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (String::from_utf8_lossy(&got).into_owned(), Instant::now())
}

#[test]
fn stalled_requests_are_cut_and_a_crowd_is_refused_in_words() {
    let (c, resp) = node();
    let rest = c.node(1).rest();

    // The cap: MAX_CONNECTIONS open connections, then one more on each
    // listener is refused and closed.
    let crowd: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(rest)).collect();
    let extra = connect(rest);
    let refused = read_response(BufReader::new(extra)).expect("a refusal, not silence");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.problem_code(), "too_many_connections");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    drop(crowd);
    let crowd: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(resp)).collect();
    let (said, _) = read_until_closed(connect(resp));
    assert_eq!(said, "-ERR max number of clients reached\r\n");
    drop(crowd);
    // Once the crowd leaves, connections are served again.
    let status = poll(Duration::from_secs(5), "REST serves again", || {
        get(rest, "/v1/cluster/status")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(status.status, 200);

    // Stalls, all begun at once: REST headers never finished; a REST body
    // that stops after 10 of its 100 bytes; a REST connection that sends
    // nothing at all; a RESP command cut in its value.
    // And an idle RESP connection, which must outlive them.
    let begun = Instant::now();
    let mut headers = poll(Duration::from_secs(5), "a REST connection", || {
        TcpStream::connect(rest).ok()
    });
    headers
        .write_all(b"GET /v1/cluster/status HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let silent = connect(rest);
    let mut body = connect(rest);
    body.write_all(
        b"PUT /v1/kv/stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .expect("write");
    let mut command = poll(Duration::from_secs(5), "a RESP connection", || {
        TcpStream::connect(resp).ok()
    });
    command
        .write_all(b"*3\r\n$3\r\nSET\r\n$7\r\nstalled\r\n$5\r\nab")
        .expect("write");
    let mut idle = connect(resp);
    headers
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    command
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");

    let timeout = Duration::from_secs(CLIENT_TIMEOUT_SECS);
    let within = |at: Instant, what: &str| {
        let took = at - begun;
        assert!(
            took >= timeout - Duration::from_millis(200) && took < timeout * 4,
            "{what} cut after {took:?}; the client timeout is {timeout:?}"
        );
    };
    let (_, closed) = read_until_closed(headers);
    within(closed, "half-sent headers");
    let (_, closed) = read_until_closed(silent);
    within(closed, "a REST connection that sends nothing");
    let stalled = read_response(BufReader::new(body)).expect("an answer to a stalled body");
    within(Instant::now(), "a stalled body");
    assert_eq!(stalled.status, 408, "{stalled:?}");
    assert_eq!(stalled.problem_code(), "body_timeout");
    let (said, closed) = read_until_closed(command);
    within(closed, "a half-sent RESP command");
    assert!(
        said.starts_with("-ERR timed out waiting for the rest of a command"),
        "{said:?}"
    );
    // Nothing of the stalled writes was applied; the idle connection
    // (nothing pending) is still served.
    idle.write_all(b"*2\r\n$3\r\nGET\r\n$7\r\nstalled\r\n")
        .expect("write");
    let mut reply = [0u8; 5];
    idle.read_exact(&mut reply).expect("an answer");
    assert_eq!(&reply, b"$-1\r\n", "the idle connection's GET");
    let missing = get(rest, &kv_path("stalled", None)).expect("get");
    assert_eq!(missing.status, 404, "{missing:?}");
}

#[test]
fn malformed_and_oversized_requests_get_bounded_problems() {
    let (c, _) = node();
    let rest = c.node(1).rest();

    // 431 with a problem document, not hyper's empty body.
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let r = request(rest, "GET", "/v1/cluster/status", &many, b"").expect("request");
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.problem_code(), "headers_too_large");
    let big = "v".repeat(40 << 10);
    let r = request(rest, "GET", "/v1/cluster/status", &[("x-big", &big)], b"").expect("request");
    assert_eq!(r.status, 431, "{r:?}");
    assert!(
        r.body.len() < 1024,
        "the 431 echoes: {} bytes",
        r.body.len()
    );

    // 413 states the size sent (Content-Length), not the limit plus one.
    let value = vec![b'v'; (1 << 20) + 4321];
    let r = request(rest, "PUT", &kv_path("big", None), &[], &value).expect("put");
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.problem_code(), "value_too_large");
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains(&value.len().to_string()), "{detail}");

    // A long parameter value comes back cut, not whole.
    let long = "x".repeat(30 << 10);
    let r = get(rest, &format!("/v1/kv/k?consistency={long}")).expect("get");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.problem_code(), "invalid_consistency");
    assert!(
        r.body.len() < 1024,
        "the error echoes: {} bytes",
        r.body.len()
    );

    // Not UTF-8 in a path is a problem document everywhere.
    for path in ["/v1/kv/%FF%FE", "/ui/%FF", "/v1/cluster/locate/%C3"] {
        let r = get(rest, path).expect("get");
        assert!(r.status == 400 || r.status == 404, "{path}: {r:?}");
        r.problem_code();
    }
}

/// Runs the CLI; its exit code, stdout and stderr.
fn ringkv(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ringkv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_says_what_it_does_and_what_is_wrong() {
    let (c, resp) = node();
    let (rest, grpc) = (c.node(1).rest().to_string(), c.node(1).grpc.to_string());

    // Pointed at the wrong port, it says which port to use.
    let (code, _, err) = ringkv(&["get", "k", "--endpoints", &rest]);
    assert_ne!(code, 0);
    assert!(err.contains("this looks like the REST port"), "{err}");
    assert!(err.contains("gRPC port"), "{err}");
    let resp = resp.to_string();
    // (The Redis port's answer to a gRPC call varies with timing: a
    // protocol error, which gets a hint, or a cancelled call.)
    let (code, _, err) = ringkv(&["get", "k", "--endpoints", &resp, "--timeout", "3s"]);
    assert_ne!(code, 0, "{err}");

    // A cause is printed once, not once per layer of the error.
    let file = c.dir().join("a-file");
    std::fs::write(&file, b"").expect("write");
    let dir = file.join("data");
    let port = free_port().to_string();
    let (code, _, err) = ringkv(&[
        "server",
        "--id",
        "1",
        "--peers",
        &format!("1=127.0.0.1:{port}"),
        "--data-dir",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert_ne!(code, 0);
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");

    // Logs to a file or pipe carry no colour codes.
    let port = free_port().to_string();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["server", "--id", "1", "--log", "info", "--peers"])
        .arg(format!("1=127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(c.dir().join("logging-node"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start a node");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = server.kill();
    let mut log = String::new();
    server
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read the log");
    let _ = server.wait();
    assert!(log.contains("INFO"), "the node logged nothing: {log:?}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log: {log:?}"
    );

    // `put` without a value on a terminal says it reads stdin (where a
    // pseudo-terminal can be had: util-linux `script`).
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok()
    {
        let bin = env!("CARGO_BIN_EXE_ringkv");
        let out = std::process::Command::new("script")
            .args([
                "-qec",
                &format!("{bin} put from-tty --endpoints {grpc}"),
                "/dev/null",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("reading the value from standard input"),
            "{said}"
        );
    } else {
        eprintln!("SKIPPED the terminal part: no `script` (util-linux) here");
    }
    let (code, _, err) = ringkv(&["put", "from-pipe", "--endpoints", &grpc]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("standard input"),
        "not a terminal, nothing said: {err}"
    );

    // The bench's clock starts after its prefill.
    let (code, _, err) = ringkv(&[
        "bench",
        "--endpoints",
        &grpc,
        "--protocol",
        "grpc",
        "--keys",
        "20000",
        "--prefill",
        "--clients",
        "4",
        "--duration",
        "2s",
    ]);
    assert_eq!(code, 0, "{err}");
    let clock = |line: &str| -> Option<f64> {
        let inner = line.strip_prefix('[')?.split(']').next()?;
        inner
            .trim()
            .trim_end_matches(" prefill")
            .trim_end_matches('s')
            .parse()
            .ok()
    };
    let prefill: Vec<f64> = err
        .lines()
        .filter(|l| l.contains(" prefill]"))
        .filter_map(clock)
        .collect();
    let run: Vec<f64> = err
        .lines()
        .filter(|l| l.starts_with('[') && !l.contains("prefill"))
        .filter_map(clock)
        .collect();
    assert!(
        !prefill.is_empty(),
        "the prefill took under a second; no line to compare: {err}"
    );
    assert!(
        run.first().is_some_and(|&t| t < 1.5),
        "the run's first line comes {run:?} s after a prefill of {prefill:?} s: {err}"
    );
}
