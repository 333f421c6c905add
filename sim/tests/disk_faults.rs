//! Disk faults under load, in the simulation: a node whose fsync fails,
//! and a node whose disk fills up. Each must stop (fail-stop: the storage
//! refuses every later write and the node exits with the disk's error; an
//! fsync is never retried), the other two must go on serving, and the node
//! restarted from what its disk kept (after a power loss, for the failed
//! fsync: what it should have made durable may be gone) must rejoin. The
//! clients' history, across it all, must be linearizable with no
//! acknowledged write lost.
//!
//! Run: `RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim"
//! CARGO_TARGET_DIR=target/sim cargo test -p ringkv-sim --test disk_faults`.
#![cfg(madsim)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringkv_core::NodeId;
use ringkv_core::check::history::{Consistency, Outcome, Recorder, Request};
use ringkv_core::check::{self as checker, LinearizabilityConfig, no_lost_writes};
use ringkv_sim::cluster::{ClusterOptions, SimCluster};
use ringkv_sim::workload::{self, ClientConfig, SharedRecorder, elapsed_ms};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The victim's next fsync fails (EIO).
    FailedSync,
    /// The victim's disk has 4 KiB left (the clients write about 2 KB/s
    /// to it).
    Full,
}

const VICTIM: NodeId = NodeId(2);

async fn run(fault: Fault) {
    let seed = Handle::current().seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd15c_fa17);
    let options = ClusterOptions::default();
    let keys = workload::spread_keys(6, options.partition_count);
    let mut cluster = SimCluster::new(3, seed, options);
    let start = Instant::now();
    assert!(cluster.wait_ready(Duration::from_secs(20)).await);

    let recorder: SharedRecorder = Arc::new(Mutex::new(Recorder::new()));
    let template = ClientConfig {
        op_timeout: Duration::from_secs(3),
        max_think: Duration::from_millis(50),
        ..ClientConfig::new(
            keys.clone(),
            start,
            Instant::now() + Duration::from_secs(25),
        )
    };
    let tasks = workload::spawn_clients(&mut cluster, 3, &mut rng, &template, &recorder);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let disk = cluster.disk(VICTIM).clone();
    match fault {
        Fault::FailedSync => disk.fail_next_sync(),
        Fault::Full => disk.set_space_left(Some(4 << 10)),
    }
    let injected = Instant::now();
    while cluster.failures().is_empty() {
        assert!(
            injected.elapsed() < Duration::from_secs(10),
            "seed {seed}: {fault:?}: the victim still runs 10 s after the fault ({:?} bytes left)",
            disk.space_left()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failures = cluster.failures();
    let expected = match fault {
        Fault::FailedSync => "simulated fsync failure",
        Fault::Full => "No space left on device",
    };
    assert!(
        failures.len() == 1 && failures[0].0 == VICTIM && failures[0].1.contains(expected),
        "seed {seed}: {fault:?}: {failures:#?}"
    );
    if fault == Fault::FailedSync {
        assert_eq!(
            disk.syncs_after_failed_sync(),
            0,
            "seed {seed}: the node synced again after a failed fsync"
        );
    }
    let stopped_after = injected.elapsed();

    // Down a while (the others serve), then back from what its disk kept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    match fault {
        Fault::FailedSync => {
            cluster.power_loss(VICTIM);
        }
        Fault::Full => cluster.kill(VICTIM),
    }
    disk.clear_faults();
    cluster.restart(VICTIM);
    for task in tasks {
        task.await.expect("client task");
    }
    assert!(
        cluster.wait_ready(Duration::from_secs(20)).await,
        "seed {seed}: {fault:?}: the victim did not rejoin"
    );
    assert_eq!(
        cluster.failures().len(),
        1,
        "seed {seed}: {fault:?}: another failure"
    );
    let broken = cluster.invariant_violations();
    assert!(broken.is_empty(), "seed {seed}: {fault:?}: {broken:#?}");

    // A linearizable read of every key through the victim, then the checks.
    let healed = elapsed_ms(start);
    let reader = cluster.client(10);
    let all_read = {
        let (recorder, keys) = (recorder.clone(), keys.clone());
        reader
            .run(async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut all = true;
                for key in keys {
                    let mut read = false;
                    while !read && Instant::now() < deadline {
                        let get = Request::Get {
                            key: key.clone(),
                            consistency: Consistency::Linearizable,
                        };
                        let timeout = Duration::from_secs(3);
                        let o = workload::execute(&recorder, 0, start, VICTIM, get, timeout).await;
                        read = matches!(o, Outcome::Ok(_));
                        if !read {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    all &= read;
                }
                all
            })
            .await
    };
    assert!(
        all_read,
        "seed {seed}: {fault:?}: final reads through the victim failed"
    );
    let history = workload::finish(recorder).expect("a well-formed history");
    let finals = no_lost_writes::final_reads(&history, healed);
    assert_eq!(
        finals.len(),
        keys.len(),
        "seed {seed}: a final read per key"
    );
    let summary = checker::check_all(&history, &finals, &LinearizabilityConfig::default());
    println!(
        "seed {seed}: {fault:?}: victim stopped {stopped_after:?} after the fault; {} ops",
        history.len()
    );
    assert!(
        summary.passed(),
        "seed {seed}: {fault:?}: checks failed:\n{summary}"
    );
}

#[madsim::test]
async fn a_failed_fsync_stops_the_node_and_it_recovers_from_what_was_durable() {
    run(Fault::FailedSync).await;
}

#[madsim::test]
async fn a_full_disk_stops_the_node_and_it_recovers_once_there_is_room() {
    run(Fault::Full).await;
}
