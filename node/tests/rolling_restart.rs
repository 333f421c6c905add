//! A rolling restart on real `ringkv server` processes: each node in turn
//! gets SIGTERM under write load (as `docker stop`, Kubernetes and systemd
//! stop a process), hands its leaderships over before it exits, and
//! starts again from its data directory.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Cluster, get, kv_path, request, retry_read};

const READY: Duration = Duration::from_secs(60);

/// What the writers saw.
#[derive(Default)]
struct Seen {
    /// Key -> the value acknowledged.
    acked: BTreeMap<String, String>,
    /// 503 answers (no leader for the moment), each retried.
    no_leader: u64,
    /// Any other failure, with what it said.
    other: Vec<String>,
    /// The longest a write took, retries included.
    slowest: Duration,
}

/// SIGTERM each node in turn while four writers write through the others
/// (the node being stopped is taken out of their rotation first, as a load
/// balancer does): every node exits 0 having handed every leadership over,
/// the writers see nothing but retried `no_leader` (no timeout, no
/// unknown outcome), and every acknowledged write is there at the end.
#[test]
fn a_rolling_restart_under_writes_loses_nothing() {
    // (The binary's own lines at info: what it does on SIGTERM.)
    let mut c = Cluster::start_with(3, &["--log", "warn,ringkv=info"]);
    c.wait_ready(READY);
    let rest: Vec<_> = (1..=3).map(|id| c.node(id).rest()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // The node taken out of rotation (0: none).
    let avoid = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, avoid, seen, rest) =
                (stop.clone(), avoid.clone(), seen.clone(), rest.clone());
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("roll-{w}-{i}");
                    let started = Instant::now();
                    loop {
                        let skip = avoid.load(Ordering::Relaxed);
                        let via = (1..=3u64)
                            .cycle()
                            .skip((i as usize + w) % 3)
                            .find(|&n| n != skip)
                            .expect("a node");
                        let r = request(
                            rest[(via - 1) as usize],
                            "PUT",
                            &kv_path(&key, None),
                            &[],
                            i.to_string().as_bytes(),
                        );
                        let mut s = seen.lock().unwrap();
                        match r {
                            Ok(r) if r.is_success() => {
                                s.acked.insert(key.clone(), i.to_string());
                                s.slowest = s.slowest.max(started.elapsed());
                                break;
                            }
                            Ok(r) if r.status == 503 => {
                                s.no_leader += 1;
                                drop(s);
                                thread::sleep(Duration::from_millis(50));
                            }
                            Ok(r) => {
                                s.other
                                    .push(format!("{key} via {via}: {} {}", r.status, r.text()));
                                break;
                            }
                            Err(e) => {
                                s.other.push(format!("{key} via {via}: in transit: {e}"));
                                break;
                            }
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_secs(1));
    for id in 1..=3u64 {
        avoid.store(id, Ordering::Relaxed);
        // Requests already sent to it finish first.
        thread::sleep(Duration::from_millis(300));
        let status = c.terminate(id, Duration::from_secs(15));
        let log = c.log(id);
        assert!(
            status.is_some_and(|s| s.success()),
            "node {id} did not exit 0 after SIGTERM ({status:?}):\n{log}"
        );
        assert!(
            log.contains("SIGTERM: handing leaderships over"),
            "node {id}'s log:\n{log}"
        );
        assert!(
            log.contains("leads no partition; stopping"),
            "node {id} stopped while leading:\n{log}"
        );
        c.start_again(id);
        c.wait_node_ready(id, READY);
        avoid.store(0, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(700));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }

    let seen = seen.lock().unwrap();
    println!(
        "rolling restart: {} writes acknowledged, {} no_leader answers retried, slowest write {:?}",
        seen.acked.len(),
        seen.no_leader,
        seen.slowest
    );
    assert!(seen.other.is_empty(), "writers saw: {:#?}", seen.other);
    assert!(
        seen.acked.len() > 100,
        "too few writes: {}",
        seen.acked.len()
    );
    for (key, value) in &seen.acked {
        let r = retry_read(Duration::from_secs(10), || {
            get(rest[0], &kv_path(key, None))
        });
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        assert_eq!(&r.text(), value, "{key}");
    }
}
