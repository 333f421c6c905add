//! Process-level tests: real `ringkv server` processes on loopback, driven
//! over REST the way a user would, including `kill -9` of nodes.

#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Cluster, Response, get, kv_path, poll, request, retry_read, retry_write};

const READY: Duration = Duration::from_secs(20);
const RETRY: Duration = Duration::from_secs(10);

/// PUT, retrying only while the answer is a retryable 503 (nothing applied).
fn put(c: &Cluster, via: u64, key: &str, value: &[u8], headers: &[(&str, &str)]) -> Response {
    let addr = c.node(via).rest();
    retry_write(RETRY, || {
        request(addr, "PUT", &kv_path(key, None), headers, value)
    })
}

/// GET, retrying while the answer is 503/504 or the exchange failed.
fn read(c: &Cluster, via: u64, key: &str, consistency: Option<&str>) -> Response {
    let addr = c.node(via).rest();
    retry_read(RETRY, || get(addr, &kv_path(key, consistency)))
}

/// A partition node 4 does not hold, and a node holding a replica of it.
fn a_partition_not_on_node_4(c: &Cluster) -> (u64, u64) {
    c.status(1)["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find_map(|p| {
            let replicas: Vec<u64> = serde_json::from_value(p["replicas"].clone()).ok()?;
            (!replicas.contains(&4)).then(|| (p["partition"].as_u64().expect("id"), replicas[0]))
        })
        .expect("with 4 nodes and 3 replicas, some partition is not on node 4")
}

/// Partition `partition` as node `id`'s status reports it.
fn partition_status(c: &Cluster, id: u64, partition: u64) -> Option<serde_json::Value> {
    c.status(id)["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["partition"] == partition)
        .cloned()
}

/// `ringkv admin move-replica PARTITION FROM TO` against every node, with
/// JSON output and the given `--wait`.
fn move_replica_command(
    c: &Cluster,
    partition: u64,
    from: u64,
    to: u64,
    wait: &str,
) -> std::process::Command {
    let endpoints = c
        .ids()
        .map(|id| c.node(id).grpc.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"));
    command
        .args(["admin", "move-replica"])
        .args([partition.to_string(), from.to_string(), to.to_string()])
        .args(["--endpoints", &endpoints, "--wait", wait, "-o", "json"]);
    command
}

/// Prints how long a test took when dropped (also when it fails).
struct Timer(&'static str, Instant);

impl Timer {
    fn start(name: &'static str) -> Timer {
        Timer(name, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!("{}: {:.1}s", self.0, self.1.elapsed().as_secs_f64());
    }
}

#[test]
fn writes_through_one_node_are_read_through_the_others() {
    let _timer = Timer::start("writes_through_one_node_are_read_through_the_others");
    let mut c = Cluster::start(3);
    c.wait_ready(READY);

    let keys: Vec<(String, String)> = (0..50)
        .map(|i| (format!("user/{i:03}"), format!("value of {i} ✓")))
        .collect();
    for (k, v) in &keys {
        let r = put(&c, 1, k, v.as_bytes(), &[]);
        assert_eq!(r.status, 201, "PUT {k}: {r:?}");
        let j = r.json();
        assert_eq!(j["created"], true, "{j}");
        assert_eq!(j["version"], 1, "{j}");
        assert_eq!(r.etag(), j["mod_revision"].as_u64(), "ETag of PUT {k}");
    }
    for (k, v) in &keys {
        for via in [2, 3] {
            let r = read(&c, via, k, Some("linearizable"));
            assert_eq!(r.status, 200, "GET {k} via node {via}: {r:?}");
            assert_eq!(r.text(), *v, "GET {k} via node {via}");
        }
    }
    // A stale read on a follower catches up without any further writes.
    for (k, v) in &keys {
        poll(RETRY, &format!("a stale read of {k} on node 3"), || {
            let r = get(c.node(3).rest(), &kv_path(k, Some("stale"))).ok()?;
            (r.status == 200 && r.text() == *v).then_some(())
        });
    }

    // The JSON envelope.
    let (k, v) = &keys[0];
    let r = request(
        c.node(2).rest(),
        "GET",
        &kv_path(k, None),
        &[("Accept", "application/json")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["key"], k.as_str(), "{j}");
    assert_eq!(j["value"], v.as_str(), "{j}");
    assert_eq!(j["value_encoding"], "utf8", "{j}");
    assert_eq!(j["version"], 1, "{j}");
    let rev1 = j["mod_revision"].as_u64().expect("mod_revision");
    assert_eq!(r.etag(), Some(rev1), "ETag is the mod_revision: {r:?}");
    assert_eq!(j["create_revision"], rev1, "{j}");
    assert!(j.get("ttl_ms").is_none(), "a key without expiry: {j}");

    // A key with a time to live: its deadline and time left in the
    // envelope and headers, then gone on every node.
    let addr = c.node(1).rest();
    let r = retry_write(RETRY, || {
        request(addr, "PUT", "/v1/kv/brief?ttl=1500ms", &[], b"soon gone")
    });
    assert_eq!(r.status, 201, "{r:?}");
    let r = request(
        c.node(2).rest(),
        "GET",
        "/v1/kv/brief",
        &[("Accept", "application/json")],
        b"",
    )
    .unwrap();
    let j = r.json();
    let left = j["ttl_ms"].as_u64().expect("ttl_ms");
    assert!(left > 0 && left <= 1_500, "{j}");
    assert!(j["expires_at_unix_ms"].as_u64().is_some(), "{j}");
    let raw = read(&c, 3, "brief", None);
    assert_eq!(raw.text(), "soon gone");
    assert!(raw.header("x-ringkv-ttl-ms").is_some(), "{raw:?}");
    std::thread::sleep(Duration::from_millis(1_600));
    for via in [1, 2, 3] {
        let r = read(&c, via, "brief", None);
        assert_eq!(
            r.status, 404,
            "GET brief via node {via} after its deadline: {r:?}"
        );
    }

    // Conditional writes.
    let r = put(&c, 1, k, b"again", &[("If-None-Match", "*")]);
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(r.problem_code(), "precondition_failed");
    assert_eq!(r.json()["current_mod_revision"], rev1);

    let if_match = format!("\"{rev1}\"");
    let r = put(&c, 3, k, b"second", &[("If-Match", &if_match)]);
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(j["created"], false, "{j}");
    let rev2 = j["mod_revision"].as_u64().expect("mod_revision");
    assert!(rev2 > rev1, "{rev2} > {rev1}");

    let r = put(&c, 2, k, b"third", &[("If-Match", &if_match)]);
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(r.problem_code(), "precondition_failed");
    assert_eq!(r.json()["current_mod_revision"], rev2, "{}", r.text());
    assert_eq!(r.etag(), Some(rev2), "{r:?}");
    let r = read(&c, 1, k, None);
    assert_eq!(r.text(), "second", "a failed precondition changed nothing");
    assert_eq!(r.header("x-ringkv-version"), Some("2"));

    // Limits.
    let long_key = "k".repeat(5000);
    let r = put(&c, 1, &long_key, b"v", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.problem_code(), "key_too_large");
    let big = vec![b'x'; (1 << 20) + 1];
    let r = put(&c, 2, "big", &big, &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.problem_code(), "value_too_large");
    let max = vec![b'y'; 1 << 20];
    let r = put(&c, 2, "big", &max, &[]);
    assert_eq!(
        r.status,
        201,
        "a value of exactly the limit is accepted: {}",
        r.text()
    );
    let r = read(&c, 3, "big", None);
    assert_eq!(r.status, 200);
    assert!(r.body == max, "the 1 MiB value reads back intact");

    // Delete.
    let r = retry_write(RETRY, || {
        request(c.node(3).rest(), "DELETE", &kv_path(k, None), &[], b"")
    });
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["revision"].as_u64().unwrap() > rev2);
    for via in [1, 2, 3] {
        let r = read(&c, via, k, None);
        assert_eq!(r.status, 404, "GET after DELETE via {via}: {r:?}");
        assert_eq!(r.problem_code(), "not_found");
    }
    let r = read(&c, 1, "never-written", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.problem_code(), "not_found");
    c.assert_alive();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 2xx: the write happened.
    Acked,
    /// 503: refused, nothing applied.
    Failed,
    /// 504 or a broken connection: it may or may not have happened.
    Unknown,
}

#[derive(Debug, Clone)]
struct Attempt {
    key: String,
    value: String,
    sent: Instant,
    via: u64,
    outcome: Outcome,
    detail: String,
}

/// Stops the writer threads when dropped, also when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn leader_killed_while_writing() {
    let _timer = Timer::start("leader_killed_while_writing");
    let mut c = Cluster::start_with(3, &["--request-timeout-ms", "2000"]);
    c.wait_ready(READY);

    let (victim, partition) = c.wait_leader_of(1, "anchor", READY);
    let survivors: Vec<u64> = c.ids().filter(|&id| id != victim).collect();
    let asker = survivors[0];
    // 8 keys in the victim's partition, 12 elsewhere.
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for i in 0.. {
        if inside.len() == 8 && outside.len() == 12 {
            break;
        }
        assert!(i < 20_000, "could not find keys in partition {partition}");
        let key = format!("w{i}");
        if c.partition_of(asker, &key) == partition {
            if inside.len() < 8 {
                inside.push(key);
            }
        } else if outside.len() < 12 {
            outside.push(key);
        }
    }
    eprintln!("victim: node {victim}, leader of partition {partition}; keys there: {inside:?}");

    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let addrs: BTreeMap<u64, _> = survivors
        .iter()
        .map(|&id| (id, c.node(id).rest()))
        .collect();
    // Three writers, each owning a share of both kinds of keys, so that a
    // write waiting for its outcome holds up only its own keys.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let keys: Vec<String> = inside
                .iter()
                .chain(&outside)
                .enumerate()
                .filter(|(i, _)| i % 3 == w)
                .map(|(_, k)| k.clone())
                .collect();
            let (log, stop, addrs, survivors) =
                (log.clone(), stop.clone(), addrs.clone(), survivors.clone());
            thread::spawn(move || {
                let hard_stop = Instant::now() + Duration::from_secs(90);
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                    for key in &keys {
                        seq += 1;
                        let via = survivors[(seq as usize) % survivors.len()];
                        let value = format!("{key}@{w}.{seq}");
                        let sent = Instant::now();
                        let r = request(
                            addrs[&via],
                            "PUT",
                            &kv_path(key, None),
                            &[],
                            value.as_bytes(),
                        );
                        let (outcome, detail) = match &r {
                            Ok(r) if r.is_success() => (Outcome::Acked, String::new()),
                            Ok(r) if r.status == 503 => (Outcome::Failed, r.text()),
                            Ok(r) if r.status == 504 => (Outcome::Unknown, r.text()),
                            // Anything else is a server bug; still, it may
                            // have been applied.
                            Ok(r) => (
                                Outcome::Unknown,
                                format!("UNEXPECTED {} {}", r.status, r.text()),
                            ),
                            Err(e) => (Outcome::Unknown, format!("transport: {e}")),
                        };
                        log.lock().unwrap().push(Attempt {
                            key: key.clone(),
                            value,
                            sent,
                            via,
                            outcome,
                            detail,
                        });
                    }
                }
            })
        })
        .collect();

    let acked_since = |t: Instant, keys: &[String]| -> Vec<String> {
        let log = log.lock().unwrap();
        keys.iter()
            .filter(|k| {
                !log.iter()
                    .any(|a| &a.key == *k && a.outcome == Outcome::Acked && a.sent >= t)
            })
            .cloned()
            .collect()
    };
    let all_keys: Vec<String> = inside.iter().chain(&outside).cloned().collect();
    let start = Instant::now();
    poll(
        Duration::from_secs(10),
        "every key to take a write before the kill",
        || acked_since(start, &all_keys).is_empty().then_some(()),
    );

    let (leader_now, _) = c.wait_leader_of(asker, "anchor", READY);
    if leader_now != victim {
        eprintln!("note: partition {partition} moved to node {leader_now} before the kill");
    }
    c.kill(victim);
    let killed_at = Instant::now();
    poll(
        Duration::from_secs(15),
        "writes to every key to be acked again after the kill",
        || acked_since(killed_at, &all_keys).is_empty().then_some(()),
    );
    eprintln!(
        "every key acked a write again {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    // A little more traffic on the new leaders.
    let resumed = Instant::now();
    poll(Duration::from_secs(10), "a second round of acks", || {
        acked_since(resumed, &all_keys).is_empty().then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer thread");
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    let count = |o: Outcome| log.iter().filter(|a| a.outcome == o).count();
    eprintln!(
        "{} writes: {} acked, {} refused (503), {} unknown",
        log.len(),
        count(Outcome::Acked),
        count(Outcome::Failed),
        count(Outcome::Unknown)
    );
    let mut unknown_kinds: BTreeMap<String, usize> = BTreeMap::new();
    for a in log.iter().filter(|a| a.outcome != Outcome::Acked) {
        let code = serde_json::from_str::<serde_json::Value>(&a.detail)
            .ok()
            .and_then(|j| j["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| a.detail.chars().take(60).collect());
        *unknown_kinds.entry(code).or_default() += 1;
    }
    eprintln!("not acked, by reason: {unknown_kinds:?}");
    let unexpected: Vec<&Attempt> = log
        .iter()
        .filter(|a| a.detail.starts_with("UNEXPECTED"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers outside the contract: {unexpected:#?}"
    );

    // No acked write is lost: each key holds its last acked value, or the
    // value of a later write whose outcome is unknown.
    let mut finals = BTreeMap::new();
    for key in &all_keys {
        let attempts: Vec<&Attempt> = log.iter().filter(|a| &a.key == key).collect();
        let last_ack = attempts.iter().rposition(|a| a.outcome == Outcome::Acked);
        let mut allowed: Vec<Option<&str>> = Vec::new();
        match last_ack {
            Some(i) => allowed.push(Some(attempts[i].value.as_str())),
            None => allowed.push(None),
        }
        let after = last_ack.map_or(0, |i| i + 1);
        allowed.extend(
            attempts[after..]
                .iter()
                .filter(|a| a.outcome == Outcome::Unknown)
                .map(|a| Some(a.value.as_str())),
        );
        let r = retry_read(RETRY, || {
            get(addrs[&survivors[1]], &kv_path(key, Some("linearizable")))
        });
        let got = match r.status {
            200 => Some(r.text()),
            404 => None,
            _ => panic!("final read of {key}: {r:?}"),
        };
        assert!(
            allowed.contains(&got.as_deref()),
            "{key} reads {got:?}; allowed: {allowed:?}; its writes: {:#?}",
            attempts
                .iter()
                .map(|a| (
                    &a.value,
                    a.outcome,
                    a.via,
                    a.sent.saturating_duration_since(killed_at).as_millis(),
                    &a.detail
                ))
                .collect::<Vec<_>>()
        );
        finals.insert(key.clone(), got);
    }

    // The killed node comes back with its data directory and catches up.
    c.restart(victim);
    let back = c.node(victim).rest();
    let restarted = Instant::now();
    for (key, want) in &finals {
        poll(
            Duration::from_secs(20),
            &format!("restarted node {victim} to serve {key} = {want:?}"),
            || {
                let r = get(back, &kv_path(key, Some("stale"))).ok()?;
                let got = match r.status {
                    200 => Some(r.text()),
                    404 => None,
                    _ => return None,
                };
                (got == *want).then_some(())
            },
        );
    }
    c.wait_node_ready(victim, READY);
    eprintln!(
        "restarted node {victim} caught up in {:.1}s",
        restarted.elapsed().as_secs_f64()
    );
    c.assert_alive();
}

#[test]
fn kill_all_and_restart_keeps_acked_writes() {
    let _timer = Timer::start("kill_all_and_restart_keeps_acked_writes");
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    let mut acked = BTreeMap::new();
    for i in 0..200u64 {
        let (key, value) = (format!("durable/{i}"), format!("v{i}"));
        let via = 1 + i % 3;
        let r = put(&c, via, &key, value.as_bytes(), &[]);
        if r.is_success() {
            acked.insert(key, value);
        }
    }
    assert!(
        acked.len() >= 190,
        "only {} of 200 writes acked",
        acked.len()
    );

    c.kill_all();
    for id in [1, 2, 3] {
        c.restart(id);
    }
    c.wait_ready(READY);
    let mut lost = Vec::new();
    for (i, (key, value)) in acked.iter().enumerate() {
        let r = read(&c, 1 + i as u64 % 3, key, Some("linearizable"));
        if r.status != 200 || r.text() != *value {
            lost.push((key, r.status, r.text()));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acked writes lost after a full restart, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    c.assert_alive();
}

/// `GET /v1/kv?prefix=` visits every partition and returns the keys under
/// the prefix in order, a page at a time, each key exactly once across the
/// pages; `keys_only` leaves values out; a prefix holding a hash tag reads
/// one partition; a bad limit or cursor is refused.
#[test]
fn a_scan_pages_through_every_partition_in_key_order() {
    let _timer = Timer::start("a_scan_pages_through_every_partition_in_key_order");
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    let mut expected = Vec::new();
    for i in 0..120 {
        let key = format!("s/{:03}", (i * 37) % 120); // written out of order
        let r = put(&c, 1 + i % 3, &key, format!("v{i}").as_bytes(), &[]);
        assert_eq!(r.status, 201, "PUT {key}: {r:?}");
        expected.push(key);
    }
    expected.sort();
    for key in ["s", "t/1", "r/9", "{tag}.a", "{tag}.b", "{tag}x"] {
        assert_eq!(put(&c, 2, key, b"other", &[]).status, 201);
    }

    let addr = c.node(3).rest();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/kv?prefix=s/&limit=37".to_owned(),
            Some(c) => format!("/v1/kv?prefix=s/&limit=37&cursor={c}"),
        };
        let r = retry_read(RETRY, || get(addr, &path));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let j = r.json();
        let kvs = j["kvs"].as_array().expect("kvs");
        assert!(kvs.len() <= 37, "{j}");
        for kv in kvs {
            seen.push(kv["key"].as_str().unwrap().to_owned());
            assert!(kv["value"].as_str().unwrap().starts_with('v'), "{kv}");
            assert!(kv["mod_revision"].as_u64().unwrap() > 0, "{kv}");
        }
        pages += 1;
        assert_eq!(j["more"], j["cursor"].is_string(), "{j}");
        match j["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "more pages than keys allow");
    }
    assert_eq!(seen, expected, "every key under the prefix once, in order");
    // Pages of at most 37 (shorter where keys spread unevenly).
    assert!(
        (4..=8).contains(&pages),
        "120 keys in {pages} pages of at most 37"
    );

    let r = retry_read(RETRY, || {
        get(addr, "/v1/kv?prefix=%7Btag%7D.&keys_only=true")
    });
    let j = r.json();
    let keys: Vec<&str> = j["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["{tag}.a", "{tag}.b"], "{j}");
    assert!(j["kvs"][0].get("value").is_none(), "keys only: {j}");
    assert_eq!(j["more"], false);

    // A range, and every key (stale, from node 1's replicas and others).
    let r = retry_read(RETRY, || get(addr, "/v1/kv?start=r&end=s/001&limit=10"));
    let keys: Vec<String> = r.json()["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["r/9", "s", "s/000"]);
    let r = retry_read(RETRY, || get(addr, "/v1/kv?limit=1000&consistency=stale"));
    assert_eq!(r.json()["kvs"].as_array().unwrap().len(), 126, "{r:?}");

    // `ringkv ls` (gRPC Scan, pages of up to 1,000) lists the same keys.
    let endpoints = c
        .ids()
        .map(|id| c.node(id).grpc.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["ls", "s/", "--endpoints", &endpoints])
        .output()
        .expect("run ringkv ls");
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, expected, "ringkv ls s/");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["ls", "--limit", "3", "--endpoints", &endpoints])
        .output()
        .expect("run ringkv ls --limit");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "r/9\ns\ns/000\n",
        "{out:?}"
    );

    for (path, code) in [
        ("/v1/kv?limit=0", "invalid_limit"),
        ("/v1/kv?limit=10001", "invalid_limit"),
        ("/v1/kv?cursor=%21%21", "invalid_cursor"),
        ("/v1/kv?prefix=a&start=b", "invalid_parameter"),
        ("/v1/kv?keys_only=maybe", "invalid_parameter"),
        ("/v1/kv?watch=1", "unknown_parameter"),
    ] {
        let r = get(addr, path).unwrap();
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(r.problem_code(), code, "{path}");
    }
    c.assert_alive();
}

#[test]
fn bad_requests_get_clear_errors_and_the_node_keeps_serving() {
    let _timer = Timer::start("bad_requests_get_clear_errors_and_the_node_keeps_serving");
    let mut c = Cluster::start_with(1, &["--replication-factor", "1", "--partitions", "8"]);
    c.wait_ready(READY);
    let addr = c.node(1).rest();
    let r = put(&c, 1, "k", b"v", &[]);
    assert_eq!(r.status, 201, "{r:?}");

    let expect_problem =
        |method: &str, path: &str, headers: &[(&str, &str)], status: u16, code: &str| {
            let r = request(addr, method, path, headers, b"x").unwrap();
            assert_eq!(r.status, status, "{method} {path} {headers:?}: {r:?}");
            assert_eq!(r.problem_code(), code, "{method} {path} {headers:?}");
        };
    let bad_pre = "invalid_precondition";
    expect_problem(
        "GET",
        "/v1/kv/k?consistency=eventual",
        &[],
        400,
        "invalid_consistency",
    );
    expect_problem("PUT", "/v1/kv/k", &[("If-Match", "abc")], 400, bad_pre);
    // A weak entity tag never matches (If-Match compares strongly), even
    // the key's current revision; nothing is written.
    let current = read(&c, 1, "k", None).etag().expect("an ETag");
    let weak = format!("W/\"{current}\"");
    let r = request(
        addr,
        "PUT",
        "/v1/kv/k",
        &[("If-Match", weak.as_str())],
        b"weak",
    )
    .unwrap();
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(r.problem_code(), "precondition_failed");
    assert_eq!(read(&c, 1, "k", None).text(), "v", "a weak If-Match wrote");
    // An error quotes at most 64 characters of a header, not all of it;
    // headers past 32 KiB in all are refused before any handler (431).
    for (len, status) in [(20_000, 400), (100_000, 431)] {
        let long = "x".repeat(len);
        let r = request(
            addr,
            "PUT",
            "/v1/kv/k",
            &[("If-Match", long.as_str())],
            b"x",
        )
        .unwrap();
        assert_eq!(r.status, status, "{r:?}");
        r.problem_code();
        assert!(r.text().len() < 1_000, "{} bytes of error", r.text().len());
    }
    expect_problem(
        "PUT",
        "/v1/kv/k",
        &[("If-None-Match", "\"3\"")],
        400,
        bad_pre,
    );
    let both = [("If-Match", "*"), ("If-None-Match", "*")];
    expect_problem("PUT", "/v1/kv/k", &both, 400, bad_pre);
    expect_problem(
        "DELETE",
        "/v1/kv/k",
        &[("If-None-Match", "*")],
        400,
        bad_pre,
    );
    // A parameter the endpoint does not take is refused, never ignored: a
    // write with a lease ringkv does not know must not be stored as a key
    // that never expires.
    let unknown = "unknown_parameter";
    expect_problem("PUT", "/v1/kv/k?lease=30", &[], 400, unknown);
    // A ttl without its unit is refused rather than guessed.
    expect_problem("PUT", "/v1/kv/k?ttl=30", &[], 400, "invalid_expiry");
    expect_problem("PUT", "/v1/kv/k?ttl=0s", &[], 400, "invalid_expiry");
    expect_problem(
        "PUT",
        "/v1/kv/k?ttl=1s&keep_ttl=true",
        &[],
        400,
        "invalid_parameter",
    );
    expect_problem("DELETE", "/v1/kv/k?prefix=a", &[], 400, unknown);
    expect_problem(
        "GET",
        "/v1/kv/k?consistency=stale&watch=1",
        &[],
        400,
        unknown,
    );
    expect_problem("GET", "/v1/cluster/status?verbose", &[], 400, unknown);
    // Bytes that are not UTF-8 once percent-decoded: problem+json, not
    // axum's plain text.
    expect_problem("GET", "/v1/kv/%FF%FE", &[], 400, "invalid_key");
    expect_problem("PUT", "/v1/kv/a%C3", &[], 400, "invalid_key");
    expect_problem("GET", "/v1/cluster/locate/%FF", &[], 400, "invalid_key");
    expect_problem("GET", "/v1/kv?prefix=%FF", &[], 400, "invalid_parameter");
    let r = request(addr, "GET", "/v1/kv/%FF", &[], b"").unwrap();
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{r:?}"
    );
    let twice = "/v1/kv/k?consistency=stale&consistency=lease";
    expect_problem("GET", twice, &[], 400, "invalid_parameter");
    let r = request(addr, "PUT", "/v1/kv/k?lease=30", &[], b"never stored").unwrap();
    let detail = serde_json::from_str::<serde_json::Value>(&r.text()).unwrap()["detail"].clone();
    assert_eq!(
        detail,
        "unknown query parameter \"lease\"; this endpoint takes: ttl, keep_ttl"
    );
    let r = request(addr, "PUT", "/v1/kv/k?ttl=30", &[], b"never stored").unwrap();
    let detail = serde_json::from_str::<serde_json::Value>(&r.text()).unwrap()["detail"].clone();
    assert!(
        detail
            .as_str()
            .unwrap()
            .contains("with a unit, e.g. ttl=30s"),
        "{detail}"
    );
    let r = request(addr, "GET", "/v1/kv/k", &[], b"").unwrap();
    assert_eq!(r.text(), "v", "the refused write was not applied");
    let r = request(addr, "GET", "/v1/kv/k?consistency=stale", &[], b"").unwrap();
    assert_eq!(r.status, 200, "a known parameter is still taken: {r:?}");
    expect_problem("GET", "/v2/nothing/here", &[], 404, "no_such_route");
    expect_problem("POST", "/v1/cluster", &[], 404, "no_such_route");

    // An empty key is a bad key, not a missing route.
    expect_problem("PUT", "/v1/kv/", &[], 400, "invalid_key");
    expect_problem("GET", "/v1/kv/", &[], 400, "invalid_key");

    // A method the route does not have: problem+json like every other
    // error, and the allowed methods in `Allow`.
    expect_problem("POST", "/v1/kv/k", &[], 405, "method_not_allowed");
    let r = request(addr, "POST", "/v1/kv/k", &[], b"x").unwrap();
    assert!(
        r.header("allow").is_some_and(|a| a.contains("PUT")),
        "{r:?}"
    );

    // Nothing above changed the key, and the node still serves.
    let r = read(&c, 1, "k", None);
    assert_eq!((r.status, r.text().as_str()), (200, "v"));
    assert_eq!(r.header("x-ringkv-version"), Some("1"));
    let r = put(&c, 1, "k", b"w", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(read(&c, 1, "k", Some("lease")).text(), "w");
    assert_eq!(get(addr, "/healthz").unwrap().status, 200);
    c.assert_alive();
}

/// `ringkv admin move-replica` moves one replica of a partition to a node
/// that did not hold it, on four real processes, while a client keeps
/// writing to that partition: every acknowledged write is then readable
/// from the new replica (stale reads there are served by it) and through
/// the cluster.
#[test]
fn a_replica_moves_to_another_node_under_write_load() {
    let _timer = Timer::start("a_replica_moves_to_another_node_under_write_load");
    // Snapshots every 50 entries, so that `from` holds a snapshot file of
    // the partition to delete.
    // Rebalancing off: the controller would move the replica back to where
    // the ring over the four members places it.
    let mut c = Cluster::start_with(4, &["--snapshot-entries", "50", "--rebalance", "false"]);
    c.wait_ready(READY);
    let (partition, from) = a_partition_not_on_node_4(&c);
    let keys: Vec<String> = (0..2000)
        .map(|i| format!("move/{i}"))
        .filter(|k| {
            let r = get(c.node(1).rest(), &format!("/v1/cluster/locate/{k}")).expect("locate");
            r.json()["partition"].as_u64() == Some(partition)
        })
        .take(20)
        .collect();
    assert!(
        !keys.is_empty(),
        "no key of partition {partition} among 2000"
    );

    // Writes to the partition until the move is done.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, keys) = (acked.clone(), stop.clone(), keys.clone());
        let addr = c.node(2).rest();
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[n % keys.len()];
                let value = format!("v{n}");
                let r = retry_write(RETRY, || {
                    request(addr, "PUT", &kv_path(key, None), &[], value.as_bytes())
                });
                if r.is_success() {
                    acked.lock().unwrap().insert(key.clone(), value);
                }
                n += 1;
            }
            n
        })
    };
    thread::sleep(Duration::from_millis(300));
    let snap_dir = c
        .node(from)
        .data_dir
        .join("snap")
        .join(partition.to_string());
    let snapshot_files = || std::fs::read_dir(&snap_dir).map_or(0, |d| d.count());
    poll(
        READY,
        &format!("node {from} to snapshot the partition"),
        || (snapshot_files() > 0).then_some(()),
    );
    let out = move_replica_command(&c, partition, from, 4, "60s")
        .output()
        .expect("run ringkv admin");
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "move failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(done["partition"], partition, "{stdout}");
    let moved: Vec<u64> = serde_json::from_value(done["voters"].clone()).expect("voters");
    assert!(moved.contains(&4) && !moved.contains(&from), "{stdout}");
    let steps = String::from_utf8_lossy(&out.stderr);
    assert!(
        steps.contains("adding n4 to partition"),
        "progress on stderr: {steps}"
    );
    assert!(writes > 0, "the writer wrote nothing");

    // Node 4 now holds the partition, as a voter, and `from` does not.
    let voters = poll(READY, "node 4 to report the partition's new voters", || {
        let p = partition_status(&c, 4, partition)?;
        let voters: Vec<u64> = serde_json::from_value(p["replicas"].clone()).ok()?;
        (voters.contains(&4) && !voters.contains(&from)).then_some(voters)
    });
    assert_eq!(voters.len(), 3, "{voters:?}");
    // `from` destroyed its replica: the partition's snapshot files are
    // gone from its data directory, and its status names the new voters.
    poll(
        READY,
        &format!("node {from} to delete the partition's snapshots"),
        || (snapshot_files() == 0).then_some(()),
    );
    poll(
        READY,
        &format!("node {from} to name the new voters"),
        || {
            let p = partition_status(&c, from, partition)?;
            let seen: Vec<u64> = serde_json::from_value(p["replicas"].clone()).ok()?;
            let mut seen_sorted = seen.clone();
            seen_sorted.sort();
            let mut want = voters.clone();
            want.sort();
            (seen_sorted == want && p["term"] == 0).then_some(())
        },
    );
    // Every acknowledged write is on the new replica, and in the cluster.
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for (key, value) in &acked {
        poll(READY, &format!("{key} on node 4"), || {
            let r = get(c.node(4).rest(), &kv_path(key, Some("stale"))).ok()?;
            (r.status == 200 && r.text() == *value).then_some(())
        });
        let r = read(&c, 1, key, None);
        assert_eq!(
            (r.status, r.text()),
            (200, value.clone()),
            "{key} through node 1"
        );
    }
}

/// Snapshot transfer over real tonic: a partition of many megabytes (64 MiB
/// here; `RINGKV_LARGE_SNAPSHOT_MIB=256` for the measurement) moves
/// to a node that never held it, which can only catch up from the leader's
/// snapshot. The snapshot streams in chunks, each far below the gRPC
/// message limits, so no size error can occur however large the partition.
/// The receiving node is killed (-9) as soon as it shows the new replica
/// (during the transfer, or just after it) and restarted: the move
/// completes; every value arrives whole. Prints the time the move took.
#[test]
fn a_large_partition_reaches_a_new_replica_by_a_chunked_snapshot() {
    let _timer = Timer::start("a_large_partition_reaches_a_new_replica_by_a_chunked_snapshot");
    let mib: usize = std::env::var("RINGKV_LARGE_SNAPSHOT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    // Four partitions, so that many keys share one.
    let mut c = Cluster::start_with(4, &["--partitions", "4", "--rebalance", "false"]);
    c.wait_ready(READY);
    let (partition, from) = a_partition_not_on_node_4(&c);
    let keys: Vec<String> = (0..)
        .map(|i| format!("big/{i}"))
        .filter(|k| ringkv_core::ring::partition_of(k.as_bytes(), 4).0 == partition as u32)
        .take(mib)
        .collect();
    // One MiB of distinct bytes per key (the value limit is 1 MiB).
    let value_of = |i: usize| -> Vec<u8> {
        let mut v = vec![0u8; (1 << 20) - 64];
        for (j, b) in v.iter_mut().enumerate() {
            *b = (j.wrapping_mul(31) ^ i.wrapping_mul(131)) as u8;
        }
        v
    };
    let filled = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let r = put(&c, 2, key, &value_of(i), &[]);
        assert!(r.is_success(), "PUT {key}: {} {}", r.status, r.text());
    }
    let fill = filled.elapsed();

    let moved = Instant::now();
    let admin = {
        let mut command = move_replica_command(&c, partition, from, 4, "5m");
        thread::spawn(move || command.output().expect("run ringkv admin"))
    };
    // Kill the receiver as soon as it shows the replica (created by the
    // snapshot's first chunk; the view it reports refreshes every 200 ms,
    // so the transfer may have ended by then: the line below says which).
    let applied_at_kill = poll(
        Duration::from_secs(60),
        "node 4 to create the replica",
        || {
            let p = partition_status(&c, 4, partition)?;
            (p["term"].as_u64()? > 0).then(|| p["applied_index"].as_u64().unwrap_or(0))
        },
    );
    let received = if applied_at_kill == 0 {
        "mid-transfer (nothing installed yet)".to_owned()
    } else {
        format!("after the install (applied {applied_at_kill})")
    };
    c.restart(4); // kill -9, then start again on the same directory
    let out = admin.join().expect("admin thread");
    let took = moved.elapsed();
    assert!(
        out.status.success(),
        "move failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "large snapshot: {mib} MiB partition written in {:.1}s, moved to node 4 in {:.1}s ({:.0} MiB/s), \
         its receiver killed {received}",
        fill.as_secs_f64(),
        took.as_secs_f64(),
        mib as f64 / took.as_secs_f64()
    );

    // Node 4 serves every value, whole, from its own replica.
    for (i, key) in keys.iter().enumerate() {
        let want = value_of(i);
        poll(READY, &format!("{key} on node 4"), || {
            let r = get(c.node(4).rest(), &kv_path(key, Some("stale"))).ok()?;
            (r.status == 200 && r.body == want).then_some(())
        });
    }
    let p4 = partition_status(&c, 4, partition).expect("the partition");
    assert_eq!(p4["keys"], keys.len(), "{p4}");
}

/// A client writing `PREFIX/0..200` in turn through one node until
/// stopped, remembering the value of every acknowledged write.
struct Writer {
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<u64>,
}

impl Writer {
    fn start(addr: std::net::SocketAddr, prefix: &'static str) -> Writer {
        let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (acked, stop) = (acked.clone(), stop.clone());
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{prefix}/{}", n % 200);
                    let value = format!("v{n}");
                    let r = retry_write(RETRY, || {
                        request(addr, "PUT", &kv_path(&key, None), &[], value.as_bytes())
                    });
                    if r.is_success() {
                        acked.lock().unwrap().insert(key, value);
                    }
                    n += 1;
                }
                n
            })
        };
        Writer {
            acked,
            stop,
            thread,
        }
    }

    /// Stops writing; every acknowledged write must read back through `addr`.
    fn stop_and_check(self, addr: std::net::SocketAddr) {
        check_acked(&self.stop(), addr);
    }

    /// Stops writing; returns every acknowledged write (key -> value).
    fn stop(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        let writes = self.thread.join().expect("writer");
        assert!(writes > 0, "the writer wrote nothing");
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Every acknowledged write reads back through `addr`.
fn check_acked(acked: &BTreeMap<String, String>, addr: std::net::SocketAddr) {
    for (key, value) in acked {
        let r = retry_read(RETRY, || get(addr, &kv_path(key, None)));
        assert_eq!(r.text(), *value, "{key}");
    }
}

/// How many partitions node `id` holds a voting replica of, as it says
/// (a partition it does not replicate has no known leader in its status;
/// its `replicas` there are only the ring's guess).
fn voter_of(c: &Cluster, id: u64) -> usize {
    c.status(id)["partitions"].as_array().map_or(0, |ps| {
        ps.iter()
            .filter(|p| {
                p["leader"].is_u64()
                    && p["replicas"]
                        .as_array()
                        .is_some_and(|r| r.contains(&id.into()))
            })
            .count()
    })
}

/// Whether every partition is led by one of `nodes` with exactly `nodes`
/// as its voters and no change under way; then the leaders per node.
fn settled_on(c: &Cluster, nodes: &[u64], partitions: u64) -> Option<BTreeMap<u64, usize>> {
    settled_as(c, nodes, |_| nodes.to_vec(), partitions)
}

/// `kill -9` of one of four nodes, for good, under write load: after
/// `--dead-after` it is marked dead and every partition it held gets a
/// replica on the other three again (make before break); every
/// acknowledged write is readable, and leadership ends up even.
#[test]
fn a_dead_nodes_replicas_are_re_created_under_write_load() {
    let _timer = Timer::start("a_dead_nodes_replicas_are_re_created_under_write_load");
    let mut c = Cluster::start_with(4, &["--dead-after", "3"]);
    c.wait_ready(READY);
    let held = voter_of(&c, 4);
    assert!(held > 0, "node 4 holds no partition");

    let writer = Writer::start(c.node(1).rest(), "death");
    thread::sleep(Duration::from_millis(500));
    c.kill(4);
    let killed = Instant::now();
    let leaders = poll(
        Duration::from_secs(120),
        "every partition back on nodes 1-3 with even leadership",
        || {
            let leaders = settled_on(&c, &[1, 2, 3], 64)?;
            leaders
                .values()
                .all(|&k| (21..=22).contains(&k))
                .then_some(leaders)
        },
    );
    println!(
        "{held} partitions of node 4 re-created on nodes 1-3 and leaders spread \
         ({leaders:?}) {:.1} s after kill -9 (--dead-after 3)",
        killed.elapsed().as_secs_f64()
    );
    writer.stop_and_check(c.node(2).rest());

    // Operators see it: every node's status says node 4 was removed, and
    // the controller (the metadata group's leader) exports its plan.
    let controller = poll(READY, "node 4 to be removed from the member list", || {
        let s = c.status(1);
        let node4 = s["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == 4)?
            .clone();
        (node4["state"] == "removed").then(|| s["metadata_leader"].as_u64())?
    });
    let s = c.status(controller);
    assert_eq!(s["controller"]["moves"], serde_json::json!([]), "{s}");
    let other = if controller == 1 { 2 } else { 1 };
    // Another node has the same member list once the change reaches it.
    let asked = Instant::now();
    let members = poll(READY, "another node to list node 4 as removed", || {
        let members = get(c.node(other).rest(), "/v1/cluster/members")
            .ok()?
            .json();
        let node4 = &members["members"].as_array()?[3];
        (node4["id"] == 4 && node4["state"] == "removed").then_some(members)
    });
    println!(
        "node {other} listed node 4 as removed {:.2} s after node {controller} did",
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(members["controller"], controller, "{members}");
    let moves = |id| {
        get(c.node(id).rest(), "/v1/cluster/moves")
            .expect("moves")
            .json()
    };
    assert_eq!(moves(controller)["moves"], serde_json::json!([]));
    let elsewhere = moves(other);
    assert!(elsewhere["moves"].is_null(), "{elsewhere}");
    assert_eq!(elsewhere["controller"], controller, "{elsewhere}");
    let metrics = get(c.node(controller).rest(), "/metrics")
        .expect("metrics")
        .text();
    for line in [
        "ringkv_member_state{node=\"4\",state=\"removed\"} 1",
        "ringkv_placement_controller 1",
        "ringkv_placement_under_replicated_partitions 0",
        "ringkv_placement_moves{phase=\"under_way\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

/// `ringkv node drain` under write load: refused, with the reason, for a
/// node that is not a member; for the node that runs the controller (a
/// replica and the leader of the metadata group), its replicas (the
/// metadata group's too) move to the other three, make before break, a new
/// controller finishes the drain, and it is removed; every acknowledged
/// write is readable; restarted, it is refused and told why.
#[test]
fn a_drained_node_leaves_after_its_replicas_moved() {
    let _timer = Timer::start("a_drained_node_leaves_after_its_replicas_moved");
    let mut c = Cluster::start(4);
    c.wait_ready(READY);
    let endpoints = c
        .ids()
        .map(|id| c.node(id).grpc.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let drain = |node: u64| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["node", "drain", &node.to_string()])
            .args(["--endpoints", &endpoints, "--wait", "120s"])
            .output()
            .expect("run ringkv node drain")
    };

    let out = drain(9);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("n9 is not a member"), "{stderr}");

    // The node to drain runs the controller: it leads the metadata group,
    // whose replica moves off it like any partition's.
    let gone = c.status(1)["metadata_leader"]
        .as_u64()
        .expect("a controller");
    let rest: Vec<u64> = (1..=4).filter(|&n| n != gone).collect();
    let writer = Writer::start(c.node(rest[0]).rest(), "drain");
    let started = Instant::now();
    let out = drain(gone);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("drain accepted by the controller"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with(&format!("n{gone}: removed")),
        "{stdout}"
    );
    println!(
        "node {gone} (the controller) drained and removed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let leaders = poll(READY, "every partition on the other three", || {
        settled_on(&c, &rest, 64)
    });
    assert_eq!(leaders.values().sum::<usize>(), 64);
    writer.stop_and_check(c.node(rest[1]).rest());
    let controller = poll(READY, "a new controller", || {
        c.status(rest[0])["metadata_leader"].as_u64()
    });
    assert!(rest.contains(&controller), "controller {controller}");

    // Removed, it is no peer of the others any more: restarted, its calls
    // are refused, and it is told why.
    c.restart(gone);
    poll(READY, "the removed node to be told it was removed", || {
        let refused = c.status(gone)["refusals"]
            .as_array()?
            .iter()
            .any(|r| r["direction"] == "outgoing" && r["reason"] == "removed");
        refused.then_some(())
    });
    let log = c.log(gone);
    assert!(
        log.contains(&format!("n{gone} was removed from the cluster")),
        "{log}"
    );
}

/// The ring a cluster of nodes 1..=n started with the default settings
/// places partitions by.
fn default_ring(n: u64) -> ringkv_core::ring::Ring {
    use ringkv_core::ring::{Ring, RingConfig};
    let config = RingConfig {
        partition_count: 64,
        replication_factor: 3,
        tokens_per_node: 64,
    };
    Ring::new(config, (1..=n).map(ringkv_core::NodeId)).expect("ring")
}

/// Partition `p`'s replicas on `ring`, by id.
fn sorted_replicas(ring: &ringkv_core::ring::Ring, p: u64) -> Vec<u64> {
    let mut r: Vec<u64> = ring
        .replicas(ringkv_core::PartitionId(p as u32))
        .iter()
        .map(|n| n.0)
        .collect();
    r.sort_unstable();
    r
}

/// Waits until every partition is on the ring over nodes 1..=n (the one
/// the n-th node joined) with each node leading `leaders` partitions; prints
/// how long it took since `started` and the replica slots the join moved
/// against the minimum rf/n x partitions; returns the slots moved.
fn wait_join_settled(
    c: &Cluster,
    n: u64,
    leaders: std::ops::RangeInclusive<usize>,
    started: Instant,
) -> usize {
    let (before, after) = (default_ring(n - 1), default_ring(n));
    let nodes: Vec<u64> = (1..=n).collect();
    let split = poll(
        Duration::from_secs(180),
        &format!("every partition on the ring over {n} nodes, leaders spread"),
        || {
            let split = settled_as(c, &nodes, |p| sorted_replicas(&after, p), 64)?;
            split.values().all(|k| leaders.contains(k)).then_some(split)
        },
    );
    let moved = (0..64u32)
        .map(ringkv_core::PartitionId)
        .filter(|&p| after.replicas(p) != before.replicas(p))
        .count();
    let minimum = 3.0 * 64.0 / n as f64;
    println!(
        "node {n} joined and took its share in {:.1} s: {moved} replica slots moved \
         (minimum rf/n x partitions = {minimum}, ratio {:.2}); leaders {split:?}",
        started.elapsed().as_secs_f64(),
        moved as f64 / minimum
    );
    moved
}

/// Whether every partition is led by one of `nodes` with voters exactly
/// those `desired` gives it and no change under way; then the leaders per
/// node.
fn settled_as(
    c: &Cluster,
    nodes: &[u64],
    desired: impl Fn(u64) -> Vec<u64>,
    partitions: u64,
) -> Option<BTreeMap<u64, usize>> {
    let mut leaders = BTreeMap::new();
    let statuses: Vec<serde_json::Value> = nodes.iter().map(|&id| c.status(id)).collect();
    for partition in 0..partitions {
        let (leader, view) = nodes.iter().zip(&statuses).find_map(|(&id, s)| {
            let p = s["partitions"]
                .as_array()?
                .iter()
                .find(|p| p["partition"] == partition)?;
            (p["leader"] == id).then(|| (id, p.clone()))
        })?;
        let mut voters: Vec<u64> = serde_json::from_value(view["replicas"].clone()).ok()?;
        voters.sort_unstable();
        let quiet = view["learners"].as_array().is_none_or(Vec::is_empty)
            && view["outgoing"].as_array().is_none_or(Vec::is_empty);
        if voters != desired(partition) || !quiet {
            return None;
        }
        *leaders.entry(leader).or_default() += 1;
    }
    Some(leaders)
}

/// `ringkv server --join` under write load, 3 -> 4 -> 5 nodes: a fourth
/// node joins a running three-node cluster through one member, is
/// registered (`joining`, then `up`), and receives exactly the replicas the
/// ring over four members places on it (make before break), with its share
/// of leaders. Prints the
/// replica slots moved against the theoretical minimum rf/(n+1). Every
/// acknowledged write reads back, through the new node too; the node
/// restarts with the same command line and serves again; another data
/// directory under its id is refused with the reason. Then a fifth joins
/// through the fourth, with the same checks of placement and writes.
#[test]
fn a_node_joins_a_running_cluster_and_takes_its_share() {
    let _timer = Timer::start("a_node_joins_a_running_cluster_and_takes_its_share");
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    let writer = Writer::start(c.node(1).rest(), "join");
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let id = c.join(2);
    assert_eq!(id, 4);
    let moved = wait_join_settled(&c, 4, 14..=18, started);
    // `ringkv status`, asked of the controller, says healthy (exit 0) once
    // the moves are done.
    let controller = c.status(1)["metadata_leader"]
        .as_u64()
        .expect("a controller");
    poll(READY, "`ringkv status` to exit 0 on the controller", || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args([
                "status",
                "--endpoints",
                &c.node(controller).grpc.to_string(),
            ])
            .output()
            .expect("run ringkv status");
        out.status.success().then_some(())
    });
    // As node 4 itself sees it (its replicas learn each leader within a
    // heartbeat, after a transfer too).
    poll(
        READY,
        "node 4 to hold a replica of each partition moved to it",
        || (voter_of(&c, 4) == moved).then_some(()),
    );
    writer.stop_and_check(c.node(4).rest());

    let members = get(c.node(3).rest(), "/v1/cluster/members")
        .expect("members")
        .json();
    let node4 = &members["members"].as_array().expect("members")[3];
    assert_eq!(
        (&node4["id"], &node4["state"]),
        (&4.into(), &"up".into()),
        "{members}"
    );
    let record = std::fs::read_to_string(c.node(4).data_dir.join("cluster.toml")).expect("record");
    assert!(record.contains("joined = true"), "{record}");

    // The same command line again: the directory is in the cluster, so it
    // starts as a member (no second registration) and serves.
    c.restart(4);
    c.wait_node_ready(4, READY);
    let r = retry_write(RETRY, || {
        request(
            c.node(4).rest(),
            "PUT",
            &kv_path("join/after", None),
            &[],
            b"x",
        )
    });
    assert!(r.is_success(), "{r:?}");
    let r = retry_read(RETRY, || {
        get(c.node(1).rest(), &kv_path("join/after", None))
    });
    assert_eq!(r.text(), "x");

    // Another data directory under id 4 is a different node: refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["server", "--id", "4", "--no-rest", "--log", "warn"])
        .args(["--join", &c.node(1).grpc.to_string()])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .args(["--advertise", "127.0.0.1:1"])
        .arg("--data-dir")
        .arg(c.dir().join("impostor"))
        .output()
        .expect("run ringkv server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("was a member with another data directory"),
        "{stderr}"
    );

    // And a fifth, through the node that joined: 4 -> 5.
    let writer = Writer::start(c.node(2).rest(), "join5");
    let started = Instant::now();
    assert_eq!(c.join(4), 5);
    wait_join_settled(&c, 5, 11..=15, started);
    writer.stop_and_check(c.node(5).rest());
}

/// Resumable after a whole-cluster restart: a fourth node joins, and while
/// its replicas are still moving every node is killed (-9) and restarted.
/// A move's state is its group's configuration, so the controller elected
/// after the restart finishes what the last one started: every partition
/// ends on the ring over four nodes, no change left under way, and every
/// acknowledged write reads back.
#[test]
fn a_rebalance_resumes_after_the_whole_cluster_restarts() {
    let _timer = Timer::start("a_rebalance_resumes_after_the_whole_cluster_restarts");
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    let ring = default_ring(4);
    let desired = |p: u64| sorted_replicas(&ring, p);
    let writer = Writer::start(c.node(1).rest(), "restart");
    thread::sleep(Duration::from_millis(300));
    c.join(1);
    // Some replicas have moved, most have not.
    poll(
        Duration::from_secs(60),
        "node 4 to hold a few partitions",
        || (voter_of(&c, 4) >= 4).then_some(()),
    );
    let moved_before = voter_of(&c, 4);
    let acked = writer.stop();
    c.kill_all();
    for id in 1..=4 {
        c.restart(id);
    }
    c.wait_ready(READY);
    let writer = Writer::start(c.node(3).rest(), "restarted");
    let leaders = poll(
        Duration::from_secs(180),
        "every partition on the ring over four nodes after the restart",
        || settled_as(&c, &[1, 2, 3, 4], desired, 64),
    );
    println!(
        "restarted with {moved_before} partitions on node 4; the rebalance then completed \
         (leaders {leaders:?})"
    );
    writer.stop_and_check(c.node(4).rest());
    check_acked(&acked, c.node(2).rest());
}
