//! The web dashboard on real `ringkv server` processes: its JSON and
//! server-sent-event endpoints, and the page itself in a real Chromium
//! (driven through chromedriver by WebDriver).
//!
//! The browser test needs `chromium` and `chromedriver` (Debian:
//! `apt-get install chromium chromium-driver`; `.ci/run` installs them).
//! Without them it says so and stops, unless `RINGKV_REQUIRE_BROWSER=1`
//! (set by CI), where a missing browser fails it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, free_port, get, poll, request};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);

fn view(addr: SocketAddr) -> Value {
    let r = get(addr, "/v1/dashboard/cluster").expect("dashboard view");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn node_status(view: &Value, id: u64) -> String {
    view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["status"].as_str().expect("status").to_owned())
        .unwrap_or_else(|| panic!("node {id} not in {view}"))
}

/// The whole-cluster view: every member, every partition with a leader
/// among its replicas (as the members that replicate it say, not the asked
/// node's guess), the keys written, the requests this node's clients made;
/// and the page's files.
#[test]
fn the_dashboard_view_merges_every_members_answer() {
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    let addr = c.node(2).rest();
    for i in 0..40 {
        let r = common::retry_write(Duration::from_secs(20), || {
            request(addr, "PUT", &format!("/v1/kv/dash{i}"), &[], b"v")
        });
        assert!(r.is_success(), "put: {}", r.text());
    }
    let v = poll(Duration::from_secs(20), "a settled view", || {
        let v = view(addr);
        let partitions = v["partitions"].as_array().expect("partitions");
        let keys: u64 = partitions.iter().map(|p| p["keys"].as_u64().unwrap()).sum();
        (keys == 40 && partitions.iter().all(|p| !p["leader"].is_null())).then_some(v)
    });
    assert_eq!(v["answered_by"], 2);
    let partitions = v["partitions"].as_array().unwrap();
    assert_eq!(
        partitions.len() as u64,
        v["partition_count"].as_u64().unwrap()
    );
    for p in partitions {
        assert_eq!(p["known"], true, "{p}");
        let replicas = p["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 3, "{p}");
        assert!(
            replicas.contains(&p["leader"]),
            "leader outside replicas: {p}"
        );
        // Every replica reported its own applied index.
        assert!(
            p["progress"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["applied_index"].as_u64().is_some()),
            "{p}"
        );
    }
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let led: u64 = nodes
        .iter()
        .map(|n| n["partitions_led"].as_u64().unwrap())
        .sum();
    assert_eq!(led, partitions.len() as u64);
    for n in nodes {
        assert_eq!(n["status"], "up", "{n}");
        assert_eq!(n["answered"], true, "{n}");
        assert_eq!(n["partitions_held"], partitions.len(), "{n}");
        assert!(n["wal_bytes"].as_u64().unwrap() > 0, "{n}");
    }
    // The 40 puts were node 2's clients' (forwarded or not, counted there).
    let puts = |n: &Value| -> u64 {
        n["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "put")
            .map(|o| o["ok"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(puts(&nodes[1]), 40, "{}", nodes[1]);
    assert_eq!(puts(&nodes[0]) + puts(&nodes[2]), 0);
    // The same counts in /metrics.
    let metrics = get(addr, "/metrics").expect("metrics").text();
    assert!(
        metrics.contains("ringkv_requests_total{operation=\"put\",outcome=\"ok\"} 40"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringkv_requests_by_status_total{operation=\"put\",status=\"200\"} 40"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringkv_request_duration_seconds_count{operation=\"put\"} 40"),
        "{metrics}"
    );
    // A join would move about a quarter of the replicas, not all.
    let join = v["ring"]["join"]["replicas"].as_u64().unwrap();
    assert!(join > 0 && join < partitions.len() as u64 * 3 / 2, "{v}");

    let page = get(addr, "/ui").expect("page");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("<script src=\"/ui/app.js\">"));
    let script = get(addr, "/ui/app.js").expect("script");
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    let missing = get(addr, "/ui/nope.js").expect("missing");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.problem_code(), "no_such_route");
}

/// The stream: a snapshot at once, then one a second; a killed node turns
/// down in it, with an event saying so.
#[test]
fn the_dashboard_stream_reports_a_node_going_down() {
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    let addr = c.node(1).rest();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(
            b"GET /v1/dashboard/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        )
        .expect("send");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut lines = BufReader::new(stream).lines();
    let mut next_snapshot = || -> Value {
        // (Chunked framing lines are skipped: only `data:` lines count.)
        loop {
            let line = lines.next().expect("stream open").expect("read");
            if let Some(data) = line.strip_prefix("data:") {
                return serde_json::from_str(data.trim()).expect("snapshot JSON");
            }
        }
    };
    let first = next_snapshot();
    assert_eq!(node_status(&first, 3), "up", "{first}");
    let second = next_snapshot();
    assert!(second["at_unix_ms"].as_u64() > first["at_unix_ms"].as_u64());

    c.kill(3);
    let started = Instant::now();
    let down = loop {
        let s = next_snapshot();
        if node_status(&s, 3) == "down" {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node 3 never down: {s}"
        );
    };
    println!("node 3 shown down {:?} after the kill", started.elapsed());
    let events: Vec<&str> = down["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(
        events.iter().any(|e| e.starts_with("node 3: up → ")),
        "{events:?}"
    );
    let row = down["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 3)
        .unwrap();
    assert_eq!(row["answered"], false, "{row}");
    // Its partitions get leaders among the other two.
    let settled = poll(Duration::from_secs(20), "new leaders", || {
        let v = view(addr);
        v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["leader"] == 1 || p["leader"] == 2)
            .then_some(v)
    });
    assert!(
        settled["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "election"),
        "{settled}"
    );
}

/// chromedriver, running on a free port until dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver, or says why it cannot (`None`).
fn start_driver() -> Result<Driver, String> {
    let found = [
        "chromedriver",
        "/usr/bin/chromedriver",
        "/usr/lib/chromium/chromedriver",
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .ok_or("chromedriver was not found (Debian: apt-get install chromium chromium-driver)")?;
    let port = free_port();
    let child = Command::new(found)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {found}: {e}"))?;
    let driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{found} did not listen on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(driver)
}

/// Where the screenshot goes (CI keeps it as an artifact).
fn screenshot_path() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ci-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir.join("dashboard.png")
}

/// The page in Chromium: nodes, partitions and a key lookup render; a
/// killed node shows as down within seconds; a screenshot is saved.
#[test]
fn the_dashboard_renders_in_chromium_and_shows_a_node_down() {
    let driver = match start_driver() {
        Ok(d) => d,
        Err(why) if std::env::var("RINGKV_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("the browser test cannot run: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED the browser test: {why}; set RINGKV_REQUIRE_BROWSER=1 to fail instead"
            );
            return;
        }
    };
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    let addr = c.node(1).rest();
    let r = common::retry_write(Duration::from_secs(20), || {
        request(addr, "PUT", "/v1/kv/hello", &[], b"world")
    });
    assert!(r.is_success(), "{}", r.text());
    let partition_count = view(addr)["partition_count"].as_u64().unwrap() as usize;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use fantoccini::{ClientBuilder, Locator};
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,2200"]}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let browser = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a Chromium session");
        browser
            .goto(&format!("http://{addr}/ui"))
            .await
            .expect("open /ui");

        // Polls `check` (JavaScript returning a value) until `want` says yes.
        let wait_for = |what: &'static str, script: &'static str, want: fn(&Value) -> bool| {
            let browser = &browser;
            async move {
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let got = browser.execute(script, vec![]).await.expect("script");
                    if want(&got) {
                        return got;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the page never showed {what}: {got}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        wait_for(
            "three nodes up",
            "return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.status)",
            |v| v == &serde_json::json!(["up", "up", "up"]),
        )
        .await;
        let rows = wait_for(
            "every partition",
            "return document.querySelectorAll('#partitions tbody tr').length",
            |v| v.as_u64().unwrap_or(0) > 0,
        )
        .await;
        assert_eq!(rows.as_u64().unwrap() as usize, partition_count);
        assert_eq!(
            browser
                .find(Locator::Css("#connection"))
                .await
                .expect("connection")
                .text()
                .await
                .expect("text"),
            "live"
        );

        // Locate and read a key.
        browser
            .find(Locator::Css("#key"))
            .await
            .expect("key input")
            .send_keys("hello")
            .await
            .expect("type");
        browser
            .find(Locator::Css("button[value=locate]"))
            .await
            .expect("locate")
            .click()
            .await
            .expect("click");
        let slot = ringkv_core::ring::key_slot(b"hello");
        let located = wait_for(
            "the key located",
            "return document.querySelector('#key-result').textContent",
            |v| v.as_str().is_some_and(|t| t.contains("\"slot\"")),
        )
        .await;
        assert!(
            located
                .as_str()
                .unwrap()
                .contains(&format!("\"slot\": {slot}")),
            "{located}"
        );
        browser
            .find(Locator::Css("button[value=get]"))
            .await
            .expect("get")
            .click()
            .await
            .expect("click");
        wait_for(
            "the key's value",
            "return document.querySelector('#key-result').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|t| t.contains("\"value\": \"world\""))
            },
        )
        .await;

        // A node dies: the page shows it down within seconds.
        c.kill(3);
        let killed = Instant::now();
        wait_for(
            "node 3 down",
            "return document.querySelector('#nodes tr[data-node=\"3\"]').dataset.status",
            |v| v == "down",
        )
        .await;
        println!(
            "the page showed node 3 down {:?} after the kill",
            killed.elapsed()
        );
        browser
            .execute("window.scrollTo(0, 0)", vec![])
            .await
            .expect("scroll");
        let png = browser.screenshot().await.expect("screenshot");
        let path = screenshot_path();
        std::fs::write(&path, png).expect("save the screenshot");
        println!("screenshot: {}", path.display());
        browser.close().await.expect("close");
    });
}
