//! Watch streams under faults: watchers see every committed change of
//! their keys, in revision order, with no gaps or duplicates, while nodes
//! are cut off, killed and restarted, and leaders move.
//!
//! With three nodes every node holds every partition; with four, a
//! watcher's node relays the partitions it lacks from a replica elsewhere.
//!
//! Two watchers follow every key of the workload (a prefix of all
//! partitions) through gRPC `Kv.Watch`, each starting on its own node and,
//! when its stream breaks, resuming through the next node with the
//! cursor of the last response, as `ringkv watch` does. Two writers put
//! unique values and delete keys through random nodes while a nemesis
//! isolates one node or kills it and restarts it (its watch history is then
//! rebuilt from its WAL). After the faults, each key's state is read, then
//! one marker write per key shows when each watcher has caught up; the
//! [`watch`] checker then judges both streams against the writes and the
//! state read.
//!
//! Run: `RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim"
//! CARGO_TARGET_DIR=target/sim cargo test -p ringkv-sim --test watch_faults -- --nocapture`
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use madsim::runtime::Handle;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::check::watch::{self, Outcome, SeenChange, Write};
use ringkv_core::watch::ChangeKind;
use ringkv_core::{NodeId, PartitionId};
use ringkv_proto::v1 as pb;
use ringkv_sim::cluster::{ClusterOptions, SimCluster, connect_kv};
use tokio::time::Instant;
use tonic::Code;

const KEYS: usize = 8;
const WRITE_WINDOW: Duration = Duration::from_secs(6);
const OP_TIMEOUT: Duration = Duration::from_millis(1_000);
/// A watcher whose stream said nothing this long resumes elsewhere.
const QUIET_RESUME: Duration = Duration::from_secs(2);
/// The ringkv codes that promise a write was not applied.
const NOT_APPLIED: [&str; 5] = [
    "no_leader",
    "busy",
    "not_applied",
    "not_in_cluster",
    "node_stopping",
];

/// What became of a failed write, from its status.
fn outcome_of(status: &tonic::Status) -> Outcome {
    let code = status
        .metadata()
        .get("ringkv-code")
        .and_then(|v| v.to_str().ok());
    match code {
        Some(c) if NOT_APPLIED.contains(&c) => Outcome::Failed,
        // A delete of an absent key changed nothing.
        Some("not_found") => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

async fn put(via: NodeId, key: Bytes, value: Bytes) -> Outcome {
    let Ok(mut kv) = connect_kv(via).await else {
        return Outcome::Failed;
    };
    let req = pb::PutRequest {
        key,
        value,
        ..Default::default()
    };
    match tokio::time::timeout(OP_TIMEOUT, kv.put(req)).await {
        Ok(Ok(r)) => Outcome::Acknowledged {
            revision: r.into_inner().mod_revision,
        },
        Ok(Err(s)) => outcome_of(&s),
        Err(_) => Outcome::Unknown,
    }
}

async fn delete(via: NodeId, key: Bytes) -> Outcome {
    let Ok(mut kv) = connect_kv(via).await else {
        return Outcome::Failed;
    };
    let req = pb::DeleteRequest {
        key,
        ..Default::default()
    };
    match tokio::time::timeout(OP_TIMEOUT, kv.delete(req)).await {
        Ok(Ok(r)) => Outcome::Acknowledged {
            revision: r.into_inner().revision,
        },
        Ok(Err(s)) => outcome_of(&s),
        Err(_) => Outcome::Unknown,
    }
}

/// Follows every key under `prefix` from `first` on, pushing what it sees
/// into `seen`, until `stop`; resumes through the next node with its cursor
/// when a stream breaks. Sets `started` once its first stream answered.
async fn follow(
    nodes: Vec<NodeId>,
    first: usize,
    prefix: Bytes,
    seen: Arc<Mutex<Vec<SeenChange>>>,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> (usize, Option<String>) {
    let mut cursor = String::new();
    let mut attempt = first;
    let mut resumes = 0;
    while !stop.load(Ordering::Relaxed) {
        let via = nodes[attempt % nodes.len()];
        attempt += 1;
        let request = pb::WatchRequest {
            target: Some(pb::watch_request::Target::Prefix(prefix.clone())),
            cursor: cursor.clone(),
            ..Default::default()
        };
        let stream = match connect_kv(via).await {
            Ok(mut kv) => tokio::time::timeout(OP_TIMEOUT, kv.watch(request)).await,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut stream = match stream {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(s)) if s.code() == Code::FailedPrecondition => {
                return (resumes, Some(s.message().to_owned()));
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut quiet = Duration::ZERO;
        loop {
            if stop.load(Ordering::Relaxed) {
                return (resumes, None);
            }
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                // A stream quiet for long may be to a node that is gone
                // (nothing tells a client of a killed host): resume
                // elsewhere, which loses nothing.
                Err(_) if quiet >= QUIET_RESUME => {
                    resumes += 1;
                    break;
                }
                Err(_) => quiet += Duration::from_millis(200),
                Ok(Ok(Some(r))) => {
                    quiet = Duration::ZERO;
                    started.store(true, Ordering::Relaxed);
                    cursor = r.cursor;
                    let mut seen = seen.lock().unwrap();
                    for e in r.events {
                        let kind = match pb::watch_event::Kind::try_from(e.kind) {
                            Ok(pb::watch_event::Kind::Put) => ChangeKind::Put,
                            Ok(pb::watch_event::Kind::Delete) => ChangeKind::Delete,
                            _ => ChangeKind::Expire,
                        };
                        seen.push(SeenChange {
                            partition: PartitionId(e.partition),
                            revision: e.revision,
                            kind,
                            key: e.key,
                            value: e.value,
                        });
                    }
                }
                Ok(Err(s)) if s.code() == Code::FailedPrecondition => {
                    return (resumes, Some(s.message().to_owned()));
                }
                Ok(_) => {
                    resumes += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
    (resumes, None)
}

#[madsim::test]
async fn watchers_see_every_committed_change_once_in_order_under_faults() {
    watch_under_faults(3).await;
}

/// With four nodes no node holds every partition: each watcher's node
/// relays the partitions it lacks from replicas elsewhere, through the
/// same faults.
#[madsim::test]
async fn relayed_watches_see_every_committed_change_once_in_order_under_faults() {
    watch_under_faults(4).await;
}

async fn watch_under_faults(n: u64) {
    let seed = Handle::current().seed();
    let options = ClusterOptions::default();
    let partition_count = options.partition_count;
    let mut cluster = SimCluster::new(n, seed, options);
    assert!(
        cluster.wait_ready(Duration::from_secs(20)).await,
        "seed {seed}: never ready"
    );
    let nodes = cluster.node_ids();
    let keys = ringkv_sim::workload::spread_keys(KEYS, partition_count);
    let prefix = Bytes::from_static(b"k");
    assert!(keys.iter().all(|k| k.starts_with(&prefix)));

    // Two watchers, on different nodes, attached before any write.
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for w in 0..2usize {
        let seen: Arc<Mutex<Vec<SeenChange>>> = Arc::default();
        let started = Arc::new(AtomicBool::new(false));
        let client = cluster.client(10 + w as u8);
        let task = {
            let (nodes, prefix, seen, started, stop) = (
                nodes.clone(),
                prefix.clone(),
                seen.clone(),
                started.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                client
                    .run(follow(nodes, w, prefix, seen, started, stop))
                    .await
            })
        };
        watchers.push((seen, started, task));
    }
    let attach_by = Instant::now() + Duration::from_secs(10);
    while !watchers.iter().all(|(_, s, _)| s.load(Ordering::Relaxed)) {
        assert!(
            Instant::now() < attach_by,
            "seed {seed}: watchers never attached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Writers, and faults.
    let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
    let stop_writes = Instant::now() + WRITE_WINDOW;
    let mut writers = Vec::new();
    for c in 0..2u8 {
        let (writes, nodes, keys) = (writes.clone(), nodes.clone(), keys.clone());
        let client = cluster.client(1 + c);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(c) << 32));
        writers.push(tokio::spawn(async move {
            client
                .run(async move {
                    let mut n = 0;
                    while Instant::now() < stop_writes {
                        let key = keys[rng.random_range(0..keys.len())].clone();
                        let via = nodes[rng.random_range(0..nodes.len())];
                        let write = if rng.random_bool(0.25) {
                            let outcome = delete(via, key.clone()).await;
                            Write {
                                key,
                                value: None,
                                outcome,
                            }
                        } else {
                            n += 1;
                            let value = Bytes::from(format!("c{c}-{n}"));
                            let outcome = put(via, key.clone(), value.clone()).await;
                            Write {
                                key,
                                value: Some(value),
                                outcome,
                            }
                        };
                        writes.lock().unwrap().push(write);
                        tokio::time::sleep(Duration::from_millis(rng.random_range(2..20))).await;
                    }
                })
                .await
        }));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed.rotate_left(17));
    let mut faults = Vec::new();
    while Instant::now() + Duration::from_millis(1_500) < stop_writes {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        let victim = nodes[rng.random_range(0..nodes.len())];
        if rng.random_bool(0.5) {
            faults.push(format!("isolate {victim}"));
            cluster.isolate(victim);
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_200))).await;
            cluster.heal();
        } else {
            faults.push(format!("restart {victim}"));
            cluster.kill(victim);
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
            cluster.restart(victim);
        }
    }
    for w in writers {
        w.await.expect("a writer");
    }
    cluster.heal();
    assert!(
        cluster.wait_ready(Duration::from_secs(30)).await,
        "seed {seed}: not ready after the faults"
    );

    // Each key's state now, then a marker write per key.
    let reader = cluster.client(5);
    let final_state: BTreeMap<Bytes, Option<Bytes>> = {
        let (keys, nodes) = (keys.clone(), nodes.clone());
        reader
            .run(async move {
                let mut state = BTreeMap::new();
                for key in keys {
                    let value = loop {
                        let Ok(mut kv) = connect_kv(nodes[0]).await else {
                            continue;
                        };
                        let req = pb::GetRequest {
                            key: key.clone(),
                            ..Default::default()
                        };
                        match tokio::time::timeout(OP_TIMEOUT, kv.get(req)).await {
                            Ok(Ok(r)) => break r.into_inner().kv.map(|kv| kv.value),
                            Ok(Err(s)) if s.code() == Code::NotFound => break None,
                            _ => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    };
                    state.insert(key, value);
                }
                for key in state.keys() {
                    let marker = Bytes::from(format!("marker-{}", String::from_utf8_lossy(key)));
                    while !matches!(
                        put(nodes[1], key.clone(), marker.clone()).await,
                        Outcome::Acknowledged { .. }
                    ) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                state
            })
            .await
    };
    let caught_up_by = Instant::now() + Duration::from_secs(30);
    for (i, (seen, _, _)) in watchers.iter().enumerate() {
        loop {
            let markers = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.value.starts_with(b"marker-"))
                .count();
            if markers == keys.len() {
                break;
            }
            assert!(
                Instant::now() < caught_up_by,
                "seed {seed}: watcher {i} saw {markers} of {} markers",
                keys.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut streams = Vec::new();
    let mut resumes = Vec::new();
    for (i, (seen, _, task)) in watchers.into_iter().enumerate() {
        let (resumed, compacted) = task.await.expect("a watcher");
        assert_eq!(compacted, None, "seed {seed}: watcher {i} was told");
        resumes.push(resumed);
        let seen: Vec<SeenChange> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.value.starts_with(b"marker-"))
            .cloned()
            .collect();
        streams.push((format!("watcher {i}"), seen));
    }
    let writes = writes.lock().unwrap().clone();
    let acked = writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Acknowledged { .. }))
        .count();
    println!(
        "seed {seed}, {n} nodes: {} writes ({acked} acknowledged), faults [{}], watchers saw {} and {} changes, resumed {resumes:?} times",
        writes.len(),
        faults.join(", "),
        streams[0].1.len(),
        streams[1].1.len(),
    );
    assert!(acked > 0, "seed {seed}: no write acknowledged");
    let violations = watch::check(&writes, &streams, &final_state);
    let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "seed {seed}: watch violations:\n{}",
        text.join("\n")
    );
    assert_eq!(cluster.invariant_violations(), vec![], "seed {seed}");
}
