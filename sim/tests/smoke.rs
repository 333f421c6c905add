//! Smoke tests of the simulated cluster: it comes up and serves, survives a
//! power loss of one node, a partition and links that drop, duplicate and
//! delay peer batches, and replays a seed exactly.
//!
//! Run: `RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim"
//! CARGO_TARGET_DIR=target/sim MADSIM_TEST_SEED=1 cargo test -p ringkv-sim`.
#![cfg(madsim)]

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use madsim::runtime::{Handle, Runtime};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringkv_core::NodeId;
use ringkv_core::check::history::{Consistency, Outcome, Recorder, Request, Response};
use ringkv_core::check::{self as checker, LinearizabilityConfig, no_lost_writes};
use ringkv_core::ring::partition_of;
use ringkv_proto::v1 as pb;
use ringkv_sim::cluster::{ClusterOptions, SimCluster, connect_kv};
use ringkv_sim::message_faults::MessageFaults;
use ringkv_sim::sim_disk::DiskLatency;
use ringkv_sim::workload::{self, ClientConfig, SharedRecorder, elapsed_ms};
use tokio::time::Instant;
use tonic::Code;

/// Simulated time a client keeps retrying an operation that finds no leader.
const OP_DEADLINE: Duration = Duration::from_secs(20);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How one client call ended, in a form that is stable across runs.
fn outcome<T>(r: &Result<T, tonic::Status>, ok: impl Fn(&T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(s) => {
            let code = s
                .metadata()
                .get("ringkv-code")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            format!("err {:?}/{code}", s.code())
        }
    }
}

/// Worth retrying: nothing happened (no leader, refused) or, for these
/// idempotent smoke-test writes, the outcome is unknown.
fn retryable(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded)
}

/// Puts `key = value` through node `via`, retrying until [`OP_DEADLINE`].
async fn put(via: NodeId, key: &[u8], value: &[u8]) -> Result<pb::PutResponse, tonic::Status> {
    let deadline = Instant::now() + OP_DEADLINE;
    loop {
        let result = match connect_kv(via).await {
            Ok(mut kv) => {
                let req = pb::PutRequest {
                    key: Bytes::copy_from_slice(key),
                    value: Bytes::copy_from_slice(value),
                    precondition: None,
                    return_previous: false,
                    expiry: None,
                };
                kv.put(req).await.map(tonic::Response::into_inner)
            }
            Err(e) => Err(tonic::Status::unavailable(format!("connect: {e}"))),
        };
        match result {
            Err(s) if retryable(&s) && Instant::now() < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            r => return r,
        }
    }
}

/// Gets `key` through node `via`; `Ok(None)` if it does not exist.
async fn get(
    via: NodeId,
    key: &[u8],
    consistency: pb::ReadConsistency,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let deadline = Instant::now() + OP_DEADLINE;
    loop {
        let result = match connect_kv(via).await {
            Ok(mut kv) => {
                let req = pb::GetRequest {
                    key: Bytes::copy_from_slice(key),
                    consistency: consistency as i32,
                };
                match kv.get(req).await {
                    Ok(r) => Ok(r.into_inner().kv.map(|kv| kv.value.to_vec())),
                    Err(s) if s.code() == Code::NotFound => Ok(None),
                    Err(s) => Err(s),
                }
            }
            Err(e) => Err(tonic::Status::unavailable(format!("connect: {e}"))),
        };
        match result {
            Err(s) if retryable(&s) && Instant::now() < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            r => return r,
        }
    }
}

fn assert_no_failures(cluster: &SimCluster) {
    let failures = cluster.failures();
    assert!(failures.is_empty(), "nodes failed: {failures:#?}");
    let broken = cluster.invariant_violations();
    assert!(broken.is_empty(), "Raft invariants broken: {broken:#?}");
    assert!(cluster.observations_judged() > 0, "no observation judged");
}

#[madsim::test]
async fn a_put_through_one_node_is_read_linearizably_through_the_others() {
    let seed = Handle::current().seed();
    let mut cluster = SimCluster::new(3, seed, ClusterOptions::default());
    let client = cluster.client(1);
    let (put_result, via2, via3) = client
        .run(async {
            let put_result = put(NodeId(1), b"greeting", b"hello").await;
            let lin = pb::ReadConsistency::Linearizable;
            let via2 = get(NodeId(2), b"greeting", lin).await;
            let via3 = get(NodeId(3), b"greeting", lin).await;
            (put_result, via2, via3)
        })
        .await;
    put_result.expect("put through node 1");
    assert_eq!(via2.expect("get via node 2"), Some(b"hello".to_vec()));
    assert_eq!(via3.expect("get via node 3"), Some(b"hello".to_vec()));
    assert!(cluster.wait_ready(Duration::from_secs(10)).await);
    assert_no_failures(&cluster);
}

/// Disk time: a leader's own WAL write is in flight while its followers
/// acknowledge, so a write can commit (on the followers' copies) before the
/// leader's copy is durable. With the leader's every write taking 300 ms
/// and the others' none, a put is acknowledged while the leader's disk
/// still lacks it, and a power loss of the leader then loses nothing
/// acknowledged.
#[madsim::test]
async fn a_write_commits_while_the_leaders_own_write_is_in_flight() {
    const SLOW_WRITE: Duration = Duration::from_millis(300);
    let seed = Handle::current().seed();
    let options = ClusterOptions::default();
    let partitions = options.partition_count;
    let mut cluster = SimCluster::new(3, seed, options);
    assert!(cluster.wait_ready(Duration::from_secs(10)).await);
    // The leader of the key's partition, once it is known.
    let key = "fast-key".to_owned();
    let p = partition_of(key.as_bytes(), partitions);
    let mut leader = None;
    for _ in 0..100 {
        leader = cluster
            .node_handle(NodeId(1))
            .and_then(|h| h.view().leader_of(p));
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leader.expect("the key's partition elects a leader");
    cluster.disk(leader).set_latency(
        Some(DiskLatency {
            per_kib: Duration::ZERO,
            sync_min: SLOW_WRITE,
            sync_max: SLOW_WRITE,
            tail_percent: 0,
            tail_max: SLOW_WRITE,
        }),
        seed,
    );
    let client = cluster.client(1);
    let before = cluster.disk(leader).image();
    let result = client
        .run({
            let key = key.clone();
            async move { put(leader, key.as_bytes(), b"fast").await }
        })
        .await;
    result.expect("put through the leader");
    assert!(
        cluster.disk(leader).image() == before,
        "the leader's disk took the write before it was acknowledged"
    );
    // The leader's copy is still in flight: lose it, and the write survives on
    // the followers, which elect a leader that has it.
    cluster.power_loss(leader);
    let other = NodeId(leader.0 % 3 + 1);
    let value = client
        .run(async move { get(other, key.as_bytes(), pb::ReadConsistency::Linearizable).await })
        .await;
    assert_eq!(
        value.expect("read via another node"),
        Some(b"fast".to_vec())
    );
    cluster.restart(leader);
    assert!(cluster.wait_ready(Duration::from_secs(10)).await);
    assert_no_failures(&cluster);
}

#[madsim::test]
async fn a_node_that_loses_power_recovers_and_catches_up() {
    let seed = Handle::current().seed();
    let mut cluster = SimCluster::new(3, seed, ClusterOptions::default());
    let client = cluster.client(1);
    client
        .run(async { put(NodeId(1), b"k", b"v0").await })
        .await
        .expect("first put");

    let report = cluster.power_loss(NodeId(1));
    tracing::info!(?report, "node 1 lost power");

    // The other two are a majority of every partition: writes go on.
    let last = client
        .run(async {
            let mut last = Vec::new();
            for i in 1..=5u32 {
                let via = NodeId(2 + u64::from(i % 2));
                last = format!("v{i}").into_bytes();
                put(via, b"k", &last)
                    .await
                    .expect("put while node 1 is down");
                put(via, format!("other-{i}").as_bytes(), b"x")
                    .await
                    .expect("put of another key");
            }
            last
        })
        .await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart(NodeId(1));

    // Node 1 replays its log and catches up: its own (stale) replica shows the
    // latest value, with no forwarding to a leader.
    let expected = last.clone();
    let caught_up_after = client
        .run(async move {
            let start = Instant::now();
            loop {
                let seen = get(NodeId(1), b"k", pb::ReadConsistency::Stale).await;
                if seen
                    .as_ref()
                    .is_ok_and(|v| v.as_deref() == Some(&expected[..]))
                {
                    return Some(start.elapsed());
                }
                if start.elapsed() > Duration::from_secs(30) {
                    tracing::error!(?seen, "node 1 never caught up");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    assert!(
        caught_up_after.is_some(),
        "node 1 did not catch up within 30 s"
    );

    let via1 = client
        .run(async { get(NodeId(1), b"k", pb::ReadConsistency::Linearizable).await })
        .await;
    assert_eq!(via1.expect("linearizable get via node 1"), Some(last));
    assert_no_failures(&cluster);
}

#[madsim::test]
async fn an_isolated_paused_and_skewed_node_catches_up_after_heal() {
    let seed = Handle::current().seed();
    // Node 3's clock goes far beyond the drift bound below.
    let options = ClusterOptions {
        clocks_jump: true,
        ..ClusterOptions::default()
    };
    let mut cluster = SimCluster::new(3, seed, options);
    let client = cluster.client(1);
    client
        .run(async { put(NodeId(2), b"k", b"before").await })
        .await
        .expect("put before the faults");

    // Node 1 is cut off from its peers (clients still reach it), node 3's
    // clock runs 20% fast and steps 3 s ahead, node 2 stalls for a second.
    cluster.isolate(NodeId(1));
    cluster.clock(NodeId(3)).set_drift_ppm(200_000);
    cluster
        .clock(NodeId(3))
        .jump_forward(Duration::from_secs(3));
    cluster.pause(NodeId(2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.resume(NodeId(2));
    client
        .run(async { put(NodeId(3), b"k", b"during").await })
        .await
        .expect("put while node 1 is isolated");

    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.heal();
    let caught_up = client
        .run(async {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                let seen = get(NodeId(1), b"k", pb::ReadConsistency::Stale).await;
                if seen.is_ok_and(|v| v.as_deref() == Some(&b"during"[..])) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        })
        .await;
    assert!(caught_up, "node 1 did not catch up within 30 s of the heal");
    assert_no_failures(&cluster);
}

/// Per partition, the applied index of each running replica.
fn applied_indexes(cluster: &SimCluster) -> Vec<Vec<u64>> {
    let mut by_partition: Vec<Vec<u64>> = Vec::new();
    for id in cluster.node_ids() {
        let Some(handle) = cluster.node_handle(id) else {
            continue;
        };
        for p in &handle.view().partitions {
            if p.replicas.contains(&id) {
                let i = p.partition.0 as usize;
                if by_partition.len() <= i {
                    by_partition.resize(i + 1, Vec::new());
                }
                by_partition[i].push(p.applied_index);
            }
        }
    }
    by_partition
}

/// Regression (seed 149 of `linearizable` took 10 s to converge): a
/// partition does not break the peer streams open across it, it stalls them,
/// and the network retransmits with a backoff that grows with the
/// partition's length (madsim's reliable channel up to 10 s, like TCP's
/// RTO). Unless the transport notices the stall and re-dials, a follower
/// hears nothing from its leader's node for seconds after the heal, although
/// the leader sends heartbeats and appends all along.
#[madsim::test]
async fn replicas_converge_promptly_after_a_long_partition_heals() {
    /// Long enough for the stalled streams' retransmission backoff to pass 8 s.
    const PARTITION: Duration = Duration::from_secs(9);
    /// Re-dial backoff (at most 2 s) plus a heartbeat round, an append and a
    /// refresh of the published view (200 ms), with some slack.
    const CATCH_UP: Duration = Duration::from_secs(3);
    let seed = Handle::current().seed();
    let options = ClusterOptions::default();
    let keys = ringkv_sim::workload::spread_keys(
        options.partition_count as usize,
        options.partition_count,
    );
    let mut cluster = SimCluster::new(3, seed, options);
    let client = cluster.client(1);
    assert!(cluster.wait_ready(Duration::from_secs(20)).await);

    // Node 3 is cut off while every partition takes writes through node 1:
    // node 3 lags on all of them, and every stream to and from it stalls.
    cluster.isolate(NodeId(3));
    let stop = Instant::now() + PARTITION;
    let writes = keys.clone();
    client
        .run(async move {
            let mut round = 0u32;
            while Instant::now() < stop {
                for key in &writes {
                    put(NodeId(1), key, format!("v{round}").as_bytes())
                        .await
                        .expect("put while node 3 is isolated");
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
    let remaining = stop.saturating_duration_since(Instant::now());
    tokio::time::sleep(remaining).await;

    cluster.heal();
    let healed = Instant::now();
    let converged = |a: &[Vec<u64>]| {
        a.len() == keys.len()
            && a.iter()
                .all(|r| r.len() == 3 && r.iter().all(|&i| i == r[0]))
    };
    let mut applied = applied_indexes(&cluster);
    while !converged(&applied) && healed.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        applied = applied_indexes(&cluster);
    }
    let took = healed.elapsed();
    println!("seed {seed}: replicas converged {took:?} after the heal: {applied:?}");
    assert!(
        converged(&applied) && took <= CATCH_UP,
        "seed {seed}: replicas took {took:?} to converge after the heal \
         (bound {CATCH_UP:?}); applied index per partition: {applied:?}"
    );
    assert_no_failures(&cluster);
}

/// Heavy message faults on every link between nodes: 30% of peer batches
/// dropped, 30% of the rest sent twice, and every one delayed 1..40 ms, so
/// that batches overtake each other and stale duplicates arrive late.
const LOSSY: MessageFaults = MessageFaults {
    drop_percent: 30,
    duplicate_percent: 30,
    delay: Some((Duration::from_millis(1), Duration::from_millis(40))),
};
const LOSSY_RUN: Duration = Duration::from_secs(10);

#[madsim::test]
async fn writes_complete_and_histories_check_out_over_lossy_duplicating_links() {
    let seed = Handle::current().seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1055_7D0B);
    let options = ClusterOptions::default();
    let keys = workload::spread_keys(4, options.partition_count);
    let mut cluster = SimCluster::new(3, seed, options);
    let start = Instant::now();
    assert!(cluster.wait_ready(Duration::from_secs(20)).await);

    cluster.set_message_faults_everywhere(LOSSY);
    let faults_from = elapsed_ms(start);
    let recorder: SharedRecorder = Arc::new(Mutex::new(Recorder::new()));
    let stop = Instant::now() + LOSSY_RUN;
    let template = ClientConfig {
        op_timeout: Duration::from_secs(3),
        max_think: Duration::from_millis(100),
        ..ClientConfig::new(keys.clone(), start, stop)
    };
    let tasks = workload::spawn_clients(&mut cluster, 3, &mut rng, &template, &recorder);
    for task in tasks {
        task.await.expect("client task");
    }
    let faults_until = elapsed_ms(start);

    // The faults really happened, in every form, before the heal.
    let (mut dropped, mut duplicated, mut delayed) = (0, 0, 0);
    for id in cluster.node_ids() {
        let stats = cluster.transport_stats(id).expect("no node was restarted");
        dropped += stats.faults_dropped.load(Ordering::Relaxed);
        duplicated += stats.faults_duplicated.load(Ordering::Relaxed);
        delayed += stats.faults_delayed.load(Ordering::Relaxed);
    }
    assert!(
        dropped > 0 && duplicated > 0 && delayed > 0,
        "seed {seed}: faults not injected: {dropped} dropped, {duplicated} duplicated, \
         {delayed} delayed"
    );
    cluster.heal();
    assert!(cluster.message_faults(NodeId(1), NodeId(2)).is_none());

    // A linearizable read of every key, retried through the nodes in turn.
    let healed = elapsed_ms(start);
    let reader = cluster.client(10);
    let all_read = {
        let (recorder, keys) = (recorder.clone(), keys.clone());
        reader
            .run(async move {
                let deadline = Instant::now() + OP_DEADLINE;
                let mut all = true;
                for key in keys {
                    let mut read = false;
                    for via in (1..=3u64).cycle().map(NodeId) {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let get = Request::Get {
                            key: key.clone(),
                            consistency: Consistency::Linearizable,
                        };
                        let timeout = Duration::from_secs(3);
                        let o = workload::execute(&recorder, 0, start, via, get, timeout).await;
                        if matches!(o, Outcome::Ok(_)) {
                            read = true;
                            break;
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    all &= read;
                }
                all
            })
            .await
    };
    assert!(all_read, "seed {seed}: final reads failed after the heal");
    assert_no_failures(&cluster);

    let history = workload::finish(recorder).expect("a well-formed history");
    // Writes went through while the links were lossy.
    let acked_writes = history
        .ops()
        .iter()
        .filter(|op| {
            op.request.is_write()
                && op.invoke >= faults_from
                && op.complete.is_some_and(|t| t <= faults_until)
                && matches!(
                    op.outcome,
                    Outcome::Ok(Response::Put { .. } | Response::Deleted { .. })
                )
        })
        .count();
    assert!(
        acked_writes >= 10,
        "seed {seed}: only {acked_writes} writes acknowledged over lossy links"
    );
    let finals = no_lost_writes::final_reads(&history, healed);
    assert_eq!(
        finals.len(),
        keys.len(),
        "seed {seed}: a final read per key"
    );
    let summary = checker::check_all(&history, &finals, &LinearizabilityConfig::default());
    println!(
        "seed {seed}: {} ops, {acked_writes} writes acknowledged over lossy links; \
         {dropped} batches dropped, {duplicated} duplicated, {delayed} delayed",
        history.len()
    );
    assert!(summary.passed(), "seed {seed}: checks failed:\n{summary}");
}

/// The harness owns the message faults: a node restarted while its links are
/// lossy comes back with the same faults on its outgoing batches.
#[madsim::test]
async fn message_faults_outlive_a_restart() {
    let seed = Handle::current().seed();
    let mut cluster = SimCluster::new(3, seed, ClusterOptions::default());
    assert!(cluster.wait_ready(Duration::from_secs(20)).await);
    let black_hole = MessageFaults {
        drop_percent: 100,
        ..MessageFaults::default()
    };
    cluster.set_message_faults(NodeId(1), NodeId(2), black_hole);
    cluster.restart(NodeId(1));
    let dropped = |cluster: &SimCluster| {
        cluster
            .transport_stats(NodeId(1))
            .map_or(0, |s| s.faults_dropped.load(Ordering::Relaxed))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped(&cluster) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dropped(&cluster) > 0,
        "seed {seed}: the restarted node 1 dropped nothing on its lossy link"
    );
    assert_eq!(cluster.message_faults(NodeId(1), NodeId(2)), black_hole);
    assert!(cluster.message_faults(NodeId(2), NodeId(1)).is_none());
    assert_no_failures(&cluster);
}

/// A fixed scenario whose client-side trace must be a function of the seed
/// alone: puts and gets through every node, a power loss and a restart.
async fn traced_scenario() -> String {
    let seed = Handle::current().seed();
    let mut cluster = SimCluster::new(3, seed, ClusterOptions::default());
    let client = cluster.client(1);
    let start = Instant::now();
    let mut trace = String::new();
    for round in 0..3u64 {
        let ops = client
            .run(async move {
                let mut lines = Vec::new();
                for i in 0..4u64 {
                    let via = NodeId(1 + (round + i) % 3);
                    let key = format!("key-{}", i % 2);
                    let value = format!("r{round}-{i}");
                    let p = put(via, key.as_bytes(), value.as_bytes()).await;
                    let p = outcome(&p, |r| format!("ok v{} rev{}", r.version, r.mod_revision));
                    lines.push((Instant::now(), format!("put {key}={value} via {via}: {p}")));
                    let g = get(via, key.as_bytes(), pb::ReadConsistency::Linearizable).await;
                    let g = outcome(&g, |v| {
                        format!("{:?}", v.as_deref().map(String::from_utf8_lossy))
                    });
                    lines.push((Instant::now(), format!("get {key} via {via}: {g}")));
                }
                lines
            })
            .await;
        for (at, line) in ops {
            let _ = writeln!(trace, "{:>8?} {line}", at - start);
        }
        let victim = NodeId(1 + round % 3);
        let report = cluster.power_loss(victim);
        let _ = writeln!(
            trace,
            "{:>8?} power loss {victim}: {report:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.restart(victim);
        let _ = writeln!(trace, "{:>8?} restart {victim}", start.elapsed());
    }
    let ready = cluster.wait_ready(Duration::from_secs(20)).await;
    let _ = writeln!(trace, "{:>8?} ready: {ready}", start.elapsed());
    for id in cluster.node_ids() {
        if let Some(h) = cluster.node_handle(id) {
            let view = h.view();
            let leaders: Vec<String> = view
                .partitions
                .iter()
                .map(|p| format!("{}:{:?}@{}", p.partition.0, p.leader.map(|l| l.0), p.term))
                .collect();
            let _ = writeln!(trace, "node {id} leaders {}", leaders.join(" "));
        }
    }
    assert_no_failures(&cluster);
    trace
}

/// Runs the scenario on a fresh runtime in a fresh thread: std's
/// `RandomState` keys are per thread, so a second run on the same thread
/// would hash (and iterate `HashMap`s) differently. madsim's own
/// determinism check does the same.
fn run_on_fresh_runtime(seed: u64) -> String {
    std::thread::spawn(move || {
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(traced_scenario())
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The same seed twice, each on a fresh runtime: the traces match byte for byte.
#[test]
fn the_same_seed_replays_the_same_trace() {
    let seed = std::env::var("MADSIM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let first = run_on_fresh_runtime(seed);
    let second = run_on_fresh_runtime(seed);
    println!("seed {seed} trace:\n{first}");
    assert!(first.lines().count() > 20, "trace too short:\n{first}");
    assert_eq!(first, second, "seed {seed} did not replay");
}
