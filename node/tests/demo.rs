//! `ringkv demo`, the README's first command, as a user runs it: it forms
//! its cluster and serves; Ctrl-C (SIGINT) stops it promptly with status 0;
//! running it again brings the data back.
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

use common::{free_port_run, get, kv_path, request, retry_read};

fn start(dir: &std::path::Path, rest: u16, grpc: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("demo")
        .arg("--data-dir")
        .arg(dir)
        .args(["--rest-port", &rest.to_string()])
        .args(["--grpc-port", &grpc.to_string()])
        .stdin(Stdio::null())
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
    let dir = tempfile::tempdir().expect("tempdir");
    // One run of six ports: REST on the first three, gRPC on the rest.
    let rest = free_port_run(6);
    let grpc = rest + 3;
    let node = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], rest + i));

    let data = dir.path().join("data");
    let log = data.with_extension("log");
    let mut demo = start(&data, rest, grpc);
    wait_ready(&mut demo, rest, &log);
    let r = request(node(0), "PUT", &kv_path("greeting", None), &[], b"hello").expect("put");
    assert!(r.is_success(), "{r:?}");
    let out = interrupt(demo);
    assert!(out.contains("stopped; data kept in"), "{out}");

    let mut demo = start(&data, rest, grpc);
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
