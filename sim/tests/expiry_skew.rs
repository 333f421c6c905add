//! Expiring keys under clock skew and leader changes: a key written with a
//! deadline is gone within the drift bound of it, by true time, and never
//! comes back when leadership moves to a node whose clock is behind.
//!
//! Three nodes whose wall clocks disagree: one exact but running 2% slow,
//! one 300 ms ahead, one 1.5 s ahead and running 2% fast, so the clocks
//! drift further apart as the run goes. A writer puts keys spread over the
//! partitions, each once, with a deadline the client chose (`PXAT`-style,
//! 1 to 4 s ahead of true time). Three readers read them over and over
//! (linearizable and lease reads, through any node) while a nemesis cuts
//! off the node whose clock is furthest ahead, again and again, so leaders
//! change between nodes whose clocks say different things about the
//! deadlines. The [`expiry`] checker then
//! judges every read against true time (the simulation's global clock)
//! with the largest clock error the run reached as the bound.
//!
//! A second run power-fails each node in turn instead, so that leaders
//! change to nodes replaying the log from their disks.
//!
//! Run: `RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim"
//! CARGO_TARGET_DIR=target/sim cargo test -p ringkv-sim --test expiry_skew -- --nocapture`
#![cfg(madsim)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use madsim::runtime::Handle;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::NodeId;
use ringkv_core::check::expiry::{self, ExpiringWrite, ExpiryRead};
use ringkv_node::clock::Clock;
use ringkv_proto::v1 as pb;
use ringkv_sim::cluster::{ClusterOptions, SimCluster, connect_kv};
use ringkv_sim::sim_clock::SkewedClock;
use tokio::time::Instant;
use tonic::Code;

const KEYS: usize = 24;
/// How long the readers and the nemesis run after the last write.
const READ_WINDOW: Duration = Duration::from_secs(7);
const OP_TIMEOUT: Duration = Duration::from_millis(800);

/// Each node's clock: offset from true time and drift (ppm), within the
/// configured drift bound of 5%.
fn clocks() -> Vec<(Duration, i64)> {
    vec![
        (Duration::ZERO, -20_000),
        (Duration::from_millis(300), 0),
        (Duration::from_millis(1_500), 20_000),
    ]
}

/// Puts `key = value` expiring at `deadline` through `via`. `Some(true)`:
/// acknowledged; `Some(false)`: not applied; `None`: outcome unknown.
async fn put_expiring(via: NodeId, key: Bytes, value: Bytes, deadline: u64) -> Option<bool> {
    let Ok(mut kv) = connect_kv(via).await else {
        return Some(false);
    };
    let req = pb::PutRequest {
        key,
        value,
        precondition: None,
        return_previous: false,
        expiry: Some(pb::Expiry {
            kind: Some(pb::expiry::Kind::AtUnixMs(deadline)),
        }),
    };
    match tokio::time::timeout(OP_TIMEOUT, kv.put(req)).await {
        Ok(Ok(_)) => Some(true),
        Ok(Err(s)) if s.code() == Code::Unavailable || s.code() == Code::InvalidArgument => {
            Some(false)
        }
        _ => None,
    }
}

/// A read of `key` through `via`: `Some(saw)` if it succeeded.
async fn read(via: NodeId, key: Bytes, lease: bool) -> Option<Option<Bytes>> {
    let mut kv = connect_kv(via).await.ok()?;
    let consistency = if lease {
        pb::ReadConsistency::Lease
    } else {
        pb::ReadConsistency::Linearizable
    };
    let req = pb::GetRequest {
        key,
        consistency: consistency as i32,
    };
    match tokio::time::timeout(OP_TIMEOUT, kv.get(req)).await {
        Ok(Ok(r)) => Some(r.into_inner().kv.map(|kv| kv.value)),
        Ok(Err(s)) if s.code() == Code::NotFound => Some(None),
        _ => None,
    }
}

#[madsim::test]
async fn expiring_keys_are_gone_within_the_drift_bound_and_never_come_back() {
    expiry_under(Nemesis::CutOffFastest).await;
}

/// The same under power losses: each node in turn loses its unsynced
/// writes and restarts from its disk, so leaders change to nodes that
/// replay the log (the sweeps' deletions among it) with their own clocks.
#[madsim::test]
async fn expiring_keys_stay_gone_across_power_losses_and_restarts() {
    expiry_under(Nemesis::PowerLossEach).await;
}

/// What the nemesis does while the readers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nemesis {
    /// Cuts off the node whose clock is furthest ahead, again and again.
    CutOffFastest,
    /// Power-fails each node in turn and restarts it.
    PowerLossEach,
}

async fn expiry_under(nemesis: Nemesis) {
    let seed = Handle::current().seed();
    let options = ClusterOptions {
        clocks: clocks(),
        ..ClusterOptions::default()
    };
    let partition_count = options.partition_count;
    let mut cluster = SimCluster::new(3, seed, options);
    // True time, with the same origin as the nodes' clocks (nothing awaited
    // since they were made).
    let truth = SkewedClock::exact();
    assert!(
        cluster.wait_ready(Duration::from_secs(20)).await,
        "seed {seed}: never ready"
    );
    let nodes = cluster.node_ids();

    // The writes, each key once.
    let keys = ringkv_sim::workload::spread_keys(KEYS, partition_count);
    let writer = cluster.client(1);
    let written: Vec<ExpiringWrite> = {
        let (keys, nodes, truth) = (keys.clone(), nodes.clone(), truth.clone());
        writer
            .run(async move {
                let mut written = Vec::new();
                for (i, key) in keys.into_iter().enumerate() {
                    let deadline = truth.unix_ms() + 1_000 + (i as u64 % 8) * 400;
                    let value = Bytes::from(format!("v{i}"));
                    let via = nodes[i % nodes.len()];
                    let acked =
                        put_expiring(via, key.clone(), value.clone(), deadline).await == Some(true);
                    if acked {
                        written.push(ExpiringWrite {
                            key,
                            value,
                            deadline,
                            acknowledged_at: truth.unix_ms(),
                        });
                    }
                }
                written
            })
            .await
    };
    assert!(
        written.len() >= KEYS / 2,
        "seed {seed}: only {} of {KEYS} writes acknowledged",
        written.len()
    );

    // Readers, and a nemesis that cuts one node off at a time.
    let stop = Instant::now() + READ_WINDOW;
    let reads: Arc<Mutex<Vec<ExpiryRead>>> = Arc::default();
    let mut readers = Vec::new();
    for client in 0..3u8 {
        let (reads, nodes, truth) = (reads.clone(), nodes.clone(), truth.clone());
        let keys: Vec<Bytes> = written.iter().map(|w| w.key.clone()).collect();
        let node = cluster.client(2 + client);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ u64::from(client));
        readers.push(tokio::spawn(async move {
            node.run(async move {
                while Instant::now() < stop {
                    let key = keys[rng.random_range(0..keys.len())].clone();
                    let via = nodes[rng.random_range(0..nodes.len())];
                    let lease = rng.random_bool(0.3);
                    let invoked_at = truth.unix_ms();
                    if let Some(saw) = read(via, key.clone(), lease).await {
                        reads.lock().unwrap().push(ExpiryRead {
                            key,
                            invoked_at,
                            completed_at: truth.unix_ms(),
                            saw,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
                }
            })
            .await
        }));
    }
    // The node whose clock is furthest ahead leads some partitions; cut
    // off, it hands them to nodes whose clocks are behind, which must not
    // serve again what it let expire.
    let fastest = *nodes.last().expect("nodes");
    let mut cut = 0;
    while Instant::now() + Duration::from_millis(1_500) < stop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cut += 1;
        match nemesis {
            Nemesis::CutOffFastest => {
                cluster.isolate(fastest);
                tokio::time::sleep(Duration::from_millis(900)).await;
                cluster.heal();
            }
            Nemesis::PowerLossEach => {
                let id = nodes[cut % nodes.len()];
                cluster.power_loss(id);
                tokio::time::sleep(Duration::from_millis(900)).await;
                cluster.restart(id);
            }
        }
    }
    for r in readers {
        r.await.expect("a reader");
    }

    // The bound: the largest error any node's clock reached (the drift is
    // constant, so the end of the run is the worst).
    let now = truth.now_nanos();
    let epsilon = nodes
        .iter()
        .map(|&id| cluster.clock(id).now_nanos().abs_diff(now))
        .max()
        .expect("nodes")
        .div_ceil(1_000_000) as u64;
    let reads = reads.lock().unwrap().clone();
    let present = reads.iter().filter(|r| r.saw.is_some()).count();
    let absent = reads.iter().filter(|r| r.saw.is_none()).count();
    println!(
        "seed {seed}: {} keys, {} reads ({present} saw a value, {absent} saw none), \
         {cut} faults ({nemesis:?}), drift bound {epsilon} ms",
        written.len(),
        reads.len()
    );
    // Not vacuous: keys were read alive and read gone.
    assert!(
        present > 0 && absent > 0,
        "seed {seed}: {present} / {absent}"
    );
    let violations = expiry::check(&written, &reads, epsilon);
    let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "seed {seed}: expiry violations:\n{}",
        text.join("\n")
    );
    assert_eq!(cluster.invariant_violations(), vec![], "seed {seed}");
}
