//! TLS on every listener and between nodes, with real processes and real
//! clients: curl over REST (`--cacert`), the `ringkv` CLI over gRPC
//! (`--tls-ca`), a raw RESP client over rustls and the `redis` crate with
//! TLS; a node whose certificate another authority signed cannot join; a
//! caller of the peer API without a peer certificate is refused; SIGHUP,
//! or a change of the files, serves a new certificate.

#![cfg(not(madsim))]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, poll};

const BIN: &str = env!("CARGO_BIN_EXE_ringkv");
const READY: Duration = Duration::from_secs(60);

fn certs(dir: &Path, name: &str) {
    let out = Command::new(BIN)
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--name", name, "--hosts", "localhost,127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Node {
    child: Child,
    grpc: u16,
    rest: u16,
    resp: u16,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- {} ---", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// `ringkv server` with TLS from `tls` (cert name, its dir, the peer CA).
fn start(dir: &Path, id: u64, membership: &[String], tls: (&str, &Path, &Path)) -> Node {
    let (grpc, rest, resp) = (free_port(), free_port(), free_port());
    start_on(dir, id, membership, tls, (grpc, rest, resp))
}

fn start_on(
    dir: &Path,
    id: u64,
    membership: &[String],
    (name, cert_dir, peer_ca): (&str, &Path, &Path),
    (grpc, rest, resp): (u16, u16, u16),
) -> Node {
    let log = dir.join(format!("log{id}"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(BIN)
        .args([
            "server",
            "--id",
            &id.to_string(),
            "--log",
            "warn,ringkv=info",
        ])
        .args(membership)
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--rest-listen", &format!("127.0.0.1:{rest}")])
        .args(["--resp-listen", &format!("127.0.0.1:{resp}")])
        .arg("--data-dir")
        .arg(dir.join(format!("d{id}")))
        .arg("--tls-cert")
        .arg(cert_dir.join(format!("{name}.pem")))
        .arg("--tls-key")
        .arg(cert_dir.join(format!("{name}.key")))
        .arg("--peer-ca")
        .arg(peer_ca)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Node {
        child,
        grpc,
        rest,
        resp,
        log,
    }
}

/// curl over HTTPS trusting `ca`: (status, body).
fn curl(ca: &Path, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-S",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ])
    .arg("--cacert")
    .arg(ca)
    .args(["-X", method, url]);
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn cli(ca: Option<&Path>, args: &[&str], grpc: u16) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--endpoints", &format!("127.0.0.1:{grpc}")]);
    if let Some(ca) = ca {
        cmd.arg("--tls-ca").arg(ca);
    }
    cmd.output().unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One RESP exchange over TLS (raw bytes; the reply up to its first CRLF).
fn resp(ca: &Path, port: u16, command: &[&str]) -> String {
    block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let config = ringkv_node::tls::client_config(ca).unwrap();
        let mut config = (*config).clone();
        config.alpn_protocols.clear();
        let mut stream = ringkv_node::tls::dial(config.into(), "127.0.0.1", port)
            .await
            .expect("a TLS connection to RESP");
        let mut frame = format!("*{}\r\n", command.len());
        for part in command {
            frame.push_str(&format!("${}\r\n{part}\r\n", part.len()));
        }
        stream.write_all(frame.as_bytes()).await.unwrap();
        let mut buf = vec![0; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a RESP reply")
            .unwrap();
        String::from_utf8_lossy(&buf[..n])
            .split("\r\n")
            .next()
            .unwrap_or_default()
            .to_owned()
    })
}

/// The certificate a listener serves now (DER), over a fresh connection.
fn served_certificate(ca: &Path, port: u16) -> Vec<u8> {
    block_on(async {
        let config = ringkv_node::tls::client_config(ca).unwrap();
        let stream = ringkv_node::tls::dial(config, "127.0.0.1", port)
            .await
            .unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn every_listener_speaks_tls_and_only_the_cluster_s_certificates_are_peers() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs(&certs_dir, "node");
    let ca = certs_dir.join("ca.pem");
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let peers = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0].0, ports[1].0, ports[2].0
    );
    let membership = ["--peers".to_owned(), peers];
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            start_on(
                dir.path(),
                i as u64 + 1,
                &membership,
                ("node", &certs_dir, &ca),
                ports[i],
            )
        })
        .collect();
    for n in &nodes {
        poll(READY, "a TLS node ready", || {
            let (code, _) = curl(
                &ca,
                "GET",
                &format!("https://127.0.0.1:{}/readyz", n.rest),
                None,
            );
            (code == 200).then_some(())
        });
    }

    // REST: curl, trusting the authority.
    let url = |n: &Node, path: &str| format!("https://127.0.0.1:{}{path}", n.rest);
    let (code, body) = curl(
        &ca,
        "PUT",
        &url(&nodes[0], "/v1/kv/tls-key"),
        Some("secret"),
    );
    assert!(code == 200 || code == 201, "{code} {body}");
    let (code, body) = curl(&ca, "GET", &url(&nodes[1], "/v1/kv/tls-key"), None);
    assert_eq!((code, body.as_str()), (200, "secret"));
    // Plain HTTP on the TLS port gets nothing.
    assert!(
        common::get(SocketAddr::from(([127, 0, 0, 1], nodes[0].rest)), "/readyz").is_err(),
        "plain HTTP was answered on a TLS port"
    );

    // gRPC: the CLI with --tls-ca; without it, a failure.
    let out = cli(Some(&ca), &["get", "tls-key"], nodes[2].grpc);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "secret");
    let out = cli(Some(&ca), &["put", "cli-key", "v"], nodes[1].grpc);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = cli(None, &["get", "tls-key"], nodes[2].grpc);
    assert!(!plain.status.success(), "a plain gRPC client was served");

    // The container health check, over HTTPS with the authority.
    let rest = format!("127.0.0.1:{}", nodes[0].rest);
    let health = |ca: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["health", "--rest", &rest]);
        if let Some(ca) = ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        cmd.output().unwrap()
    };
    let ok = health(Some(&ca));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !health(None).status.success(),
        "plain HTTP health on a TLS port"
    );

    // RESP over TLS.
    assert_eq!(resp(&ca, nodes[0].resp, &["SET", "r", "1"]), "+OK");
    assert_eq!(resp(&ca, nodes[2].resp, &["GET", "cli-key"]), "$1");
    // And with a Redis client library: the `redis` crate over rustls,
    // trusting the cluster's authority.
    let client = redis::Client::build_with_tls(
        format!("rediss://localhost:{}/", nodes[1].resp),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca).unwrap()),
        },
    )
    .expect("a TLS client");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("a TLS connection with the redis crate");
    let () = redis::cmd("SET")
        .arg("lib")
        .arg("tls")
        .query(&mut con)
        .expect("SET over TLS");
    let got: String = redis::cmd("GET").arg("r").query(&mut con).expect("GET");
    assert_eq!(got, "1");

    // A caller of the peer API without a certificate is refused, though
    // the connection itself is accepted (clients share the port).
    let refused = block_on(async {
        ringkv_node::cli::tls::trust(&ca).unwrap();
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", nodes[0].grpc))
                .unwrap();
        let channel = ringkv_node::cli::tls::connect(endpoint).await.unwrap();
        ringkv_proto::v1::peer_client::PeerClient::new(channel)
            .hello(ringkv_proto::v1::PeerHello::default())
            .await
            .expect_err("a peer call without a certificate was answered")
    });
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A node whose certificate another authority signed cannot join, even
    // one that trusts the cluster's authority.
    let other = dir.path().join("other");
    certs(&other, "node");
    let join = ["--join".to_owned(), format!("127.0.0.1:{}", nodes[0].grpc)];
    let stranger = start(dir.path(), 4, &join, ("node", &other, &ca));
    poll(READY, "node 1 to refuse the stranger's certificate", || {
        std::fs::read_to_string(&nodes[0].log)
            .unwrap()
            .contains("refused a TLS client certificate")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let (_, members) = curl(&ca, "GET", &url(&nodes[0], "/v1/cluster/members"), None);
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");
    drop(stranger);

    // SIGHUP: a new certificate (same authority) is served from then on.
    let before = served_certificate(&ca, nodes[0].rest);
    assert_eq!(before, pem_der(&certs_dir.join("node.pem")));
    certs(&certs_dir, "node");
    let renewed = pem_der(&certs_dir.join("node.pem"));
    assert_ne!(before, renewed);
    let ok = Command::new("kill")
        .args(["-HUP", &nodes[0].child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    poll(READY, "the renewed certificate served", || {
        (served_certificate(&ca, nodes[0].rest) == renewed).then_some(())
    });
    assert!(
        std::fs::read_to_string(&nodes[0].log)
            .unwrap()
            .contains("SIGHUP: certificates read again")
    );
    // No signal: a node sees the files change and serves the new
    // certificate (as a renewed Kubernetes Secret would be picked up).
    certs(&certs_dir, "node");
    let again = pem_der(&certs_dir.join("node.pem"));
    assert_ne!(again, renewed);
    poll(
        READY,
        "the certificate renewed on disk served without a signal",
        || (served_certificate(&ca, nodes[1].rest) == again).then_some(()),
    );
    assert!(
        std::fs::read_to_string(&nodes[1].log)
            .unwrap()
            .contains("TLS files changed: certificates read again")
    );
    // The node still talks to its peers (they trust the same authority).
    let (code, body) = curl(
        &ca,
        "PUT",
        &url(&nodes[0], "/v1/kv/after-reload"),
        Some("x"),
    );
    assert!(code == 200 || code == 201, "{code} {body}");
}
