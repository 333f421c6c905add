//! Snapshot-tested traces of four fixed seeds (one with replica moves forced on): a timeline of the faults the
//! nemesis injected, the elections and commit progress the nodes' views
//! showed (see `ringkv_sim::observer`), every client operation with its
//! result and sim time, and the leaders and terms each node sees at the end. A changed snapshot means
//! the run changed; review it like code (`cargo insta review`).
//!
//! Each seed runs on a fresh runtime in a fresh thread, as madsim's own
//! determinism check does (std's `RandomState` keys are per thread).
#![cfg(madsim)]

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Runtime;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::check::history::Recorder;
use ringkv_sim::cluster::{ClusterOptions, SimCluster};
use ringkv_sim::nemesis::{Nemesis, NemesisConfig};
use ringkv_sim::observer;
use ringkv_sim::workload::{self, ClientConfig, SharedRecorder};
use tokio::time::Instant;

const RUN: Duration = Duration::from_secs(5);

async fn scenario(seed: u64, moves: bool) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ACE);
    let options = ClusterOptions::default();
    let keys = workload::spread_keys(3, options.partition_count);
    let mut cluster = SimCluster::new(3, seed, options);
    let start = Instant::now();
    let ready = cluster.wait_ready(Duration::from_secs(20)).await;
    let mut trace = format!("seed {seed}: ready after {:?}: {ready}\n", start.elapsed());

    let recorder: SharedRecorder = Arc::new(Mutex::new(Recorder::new()));
    let stop = Instant::now() + RUN;
    let template = ClientConfig {
        op_timeout: Duration::from_secs(2),
        max_think: Duration::from_millis(300),
        ..ClientConfig::new(keys.clone(), start, stop)
    };
    let tasks = workload::spawn_clients(&mut cluster, 2, &mut rng, &template, &recorder);
    let config = NemesisConfig {
        moves: moves || NemesisConfig::swarm(&mut rng.clone()).moves,
        ..NemesisConfig::swarm(&mut rng)
    };
    let mut nemesis = Nemesis::new(config, rng.random(), start);
    let _ = writeln!(trace, "nemesis: {}", nemesis.config().describe());
    // Watch until the heal has had time to show.
    let watcher = tokio::spawn(observer::watch(
        cluster.handles(),
        start,
        stop + Duration::from_secs(2),
    ));
    nemesis.run(&mut cluster, RUN).await;
    nemesis.heal_all(&mut cluster);
    for task in tasks {
        task.await.expect("client task");
    }
    let ready = cluster.wait_ready(Duration::from_secs(20)).await;
    let observed = watcher.await.expect("the observer");

    trace.push_str("timeline:\n");
    for line in observer::merge(&[nemesis.trace(), &observed]).lines() {
        let _ = writeln!(trace, "  {line}");
    }
    trace.push_str("operations:\n");
    let history = workload::finish(recorder).expect("a well-formed history");
    for op in history.ops() {
        let _ = writeln!(trace, "  {op}");
    }
    let _ = writeln!(trace, "after heal: ready {ready}");
    for id in cluster.node_ids() {
        let Some(h) = cluster.node_handle(id) else {
            let _ = writeln!(trace, "  {id}: not running");
            continue;
        };
        let view = h.view();
        let leaders: Vec<String> = view
            .partitions
            .iter()
            .map(|p| match p.leader {
                Some(l) => format!("p{}:{}@t{}", p.partition.0, l.0, p.term),
                None => format!("p{}:-@t{}", p.partition.0, p.term),
            })
            .collect();
        let _ = writeln!(trace, "  {id} sees {}", leaders.join(" "));
    }
    trace
}

fn run(seed: u64, moves: bool) -> String {
    std::thread::spawn(move || {
        Runtime::with_seed_and_config(seed, madsim::Config::default())
            .block_on(scenario(seed, moves))
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

#[test]
fn trace_of_seed_7() {
    insta::assert_snapshot!(run(7, false));
}

#[test]
fn trace_of_seed_21() {
    insta::assert_snapshot!(run(21, false));
}

#[test]
fn trace_of_seed_1234() {
    insta::assert_snapshot!(run(1234, false));
}

/// With replica moves (and back) among the faults: the move lines and the
/// leaders of the moved partitions' new groups.
#[test]
fn trace_of_seed_5_with_moves() {
    insta::assert_snapshot!(run(5, true));
}
