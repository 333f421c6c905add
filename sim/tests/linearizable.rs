//! Linearizability under faults: 3 or 5 nodes (a third of the seeds get 5),
//! 4–6 concurrent clients, 30 s of simulated time with a seeded swarm
//! nemesis, then heal, check that every partition takes writes again, read
//! every key linearizably, run every history checker and compare the
//! replicas of each partition by content digest. In a quarter of the seeds
//! a tenth of the puts carry values of half the node's limit up to the limit
//! itself (1 MiB), so that appends and snapshots far larger than a message
//! cross the transport, which enforces its frame limit here as in production.
//!
//! Every seed that passes prints one line starting `seed <n>:` and ending in
//! `passed`; `scripts/test.sh` counts them.
//!
//! Run (and replay a failing seed):
//! `MADSIM_TEST_SEED=<seed> RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim"
//! CARGO_TARGET_DIR=target/sim cargo test -p ringkv-sim --test linearizable -- --nocapture`
//! (`MADSIM_TEST_NUM=<n>` runs n seeds from there; `RINGKV_SIM_DUMP_HISTORY=<file>`
//! writes the history in trace form, which `History::from_trace` reads back;
//! `RUST_LOG=info` prints the nodes' logs with simulated times;
//! `RINGKV_SIM_PRINT_TRACE=1` prints the nemesis trace of a passing seed).
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::NodeId;
use ringkv_core::check::history::{Consistency, Expiry, Outcome, Precondition, Recorder, Request};
use ringkv_core::check::{self as checker, KeyVerdict, LinearizabilityConfig, no_lost_writes};
use ringkv_node::view::{ClusterView, PartitionView};
use ringkv_sim::cluster::{ClusterOptions, SimCluster};
use ringkv_sim::nemesis::{Churn, Nemesis, NemesisConfig};
use ringkv_sim::settle::placement_settled;
use ringkv_sim::workload::{
    self, ClientConfig, ClientStats, LargeValues, SharedRecorder, elapsed_ms,
};
use tokio::time::Instant;

const KEYS: usize = 8;
const RUN: Duration = Duration::from_secs(30);
/// After the heal, every partition must take a write within this long.
const RECOVERY: Duration = Duration::from_secs(20);
/// After the final reads, every replica of a partition must match within this.
/// A replica that knows its leader catches up once a peer stream reaches it
/// again: at most the transport's re-dial backoff (2 s) after the heal, plus a
/// heartbeat round, an append and a refresh of the published view (200 ms).
/// Seed 149 once took 10 s here, while peer streams stalled by a partition
/// stayed open (see `ringkv_node::transport`). 5 s is twice the worst case.
const CONVERGENCE: Duration = Duration::from_secs(5);
/// Churn: how long a member must be held down before it is marked dead.
/// Well beyond any one node or network fault the nemesis injects (at most
/// 6 s), so that only the node lost for good is declared dead: at 10 s,
/// seed 31 saw a live node cut off from the controller by a pause and two
/// partitions in a row for 10.2 s (which a production `--dead-after` of 30 s
/// leaves a margin for too).
const CHURN_DEAD_AFTER: Duration = Duration::from_secs(20);
/// Churn: after the heal, membership and placement must settle within this
/// long (see `ringkv_sim::settle`): a node lost just before the heal is
/// marked dead [`CHURN_DEAD_AFTER`] later, then its replicas are re-created
/// (seeds 1..200 took at most 26.7 s, 20 s of it the grace period).
const SETTLE: Duration = Duration::from_secs(CHURN_DEAD_AFTER.as_secs() + 25);
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Linearizability search steps per key (override: `RINGKV_SIM_STEP_BUDGET`).
/// Above the checker's default: writes of unknown outcome, which faults make
/// common, multiply the orders to try (about 3 s per 10,000,000 steps).
/// Churn seed 2190 needs 23,600,000 on a read-modify-write key with many
/// unknown writes; seeds 1..200 at most 85,000.
const STEP_BUDGET: u64 = 40_000_000;

/// Fails the seed if the nodes' observations broke a Raft safety property.
fn assert_invariants(cluster: &SimCluster, seed: u64, nemesis: &Nemesis, replay: &str) {
    let broken = cluster.invariant_violations();
    assert!(
        broken.is_empty(),
        "seed {seed}: Raft invariants broken ({} observations judged):\n{}\nnemesis:\n{}\nreplay: {}",
        cluster.observations_judged(),
        broken
            .iter()
            .map(|v| format!("  {v}\n"))
            .collect::<String>(),
        nemesis.trace(),
        replay
    );
}

fn replay(seed: u64, mode: Mode) -> String {
    format!(
        "MADSIM_TEST_SEED={seed} RUSTFLAGS=\"--cfg madsim\" RUSTDOCFLAGS=\"--cfg madsim\" \
         CARGO_TARGET_DIR=target/sim cargo test -p ringkv-sim --test linearizable -- --nocapture {}",
        mode.test_name()
    )
}

/// Retries `request` through the nodes in turn until it succeeds or
/// `deadline` passes; every attempt is recorded (a put's value gets the
/// attempt number appended).
async fn until_ok(
    recorder: &SharedRecorder,
    start: Instant,
    nodes: &[NodeId],
    request: Request,
    deadline: Instant,
) -> Option<Outcome> {
    let mut attempt = 0u64;
    while Instant::now() < deadline {
        let via = nodes[(attempt % nodes.len() as u64) as usize];
        attempt += 1;
        // Values stay unique across retries: the checkers tell writes apart
        // by value.
        let mut request = request.clone();
        if let Request::Put { value, .. } = &mut request {
            *value = format!("{}-{attempt}", value.escape_ascii()).into();
        }
        let outcome = workload::execute(recorder, 0, start, via, request, OP_TIMEOUT).await;
        if let Outcome::Ok(_) = outcome {
            return Some(outcome);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Per partition: the replicas it should have (every voter and learner of
/// its leader's configuration; empty while no node says it leads), and the
/// `(applied_index, digest)` of each running replica. Replica moves change
/// the set; a removed replica that still runs is not judged.
type ReplicaStates = BTreeMap<u32, (Vec<NodeId>, BTreeMap<NodeId, (u64, u64)>)>;

async fn replica_states(cluster: &SimCluster) -> ReplicaStates {
    let mut states = ReplicaStates::new();
    for id in cluster.node_ids() {
        let Some(handle) = cluster.node_handle(id) else {
            continue;
        };
        let view = handle.view();
        // A node that stops mid-request answers nothing: treat it as down.
        let digests = tokio::time::timeout(Duration::from_secs(1), handle.partition_digests());
        let Ok(Some(digests)) = digests.await else {
            continue;
        };
        for d in digests {
            let entry = states.entry(d.partition.0).or_default();
            entry.1.insert(id, (d.applied_index, d.digest));
            let p = &view.partitions[d.partition.0 as usize];
            if p.leader == Some(id) {
                let mut group: Vec<NodeId> =
                    p.replicas.iter().chain(&p.learners).copied().collect();
                group.extend(p.outgoing.iter().copied());
                group.sort();
                group.dedup();
                entry.0 = group;
            }
        }
    }
    states
}

/// Whether every `expected` replica of a partition runs, all with one state.
fn partition_converged(expected: &[NodeId], replicas: &BTreeMap<NodeId, (u64, u64)>) -> bool {
    let mut states = expected.iter().map(|id| replicas.get(id));
    let first = states.next().flatten();
    first.is_some() && states.all(|s| s == first)
}

fn converged(states: &ReplicaStates) -> bool {
    states
        .values()
        .all(|(expected, replicas)| partition_converged(expected, replicas))
}

/// Every running node's view of each group (the partitions and the
/// metadata group) that some node's view shows as `flagged`; with
/// `unhosted`, also the views of nodes that hold no replica of it (term 0:
/// their guess of its replicas and leader).
fn views_where(
    cluster: &SimCluster,
    flagged: impl Fn(&PartitionView) -> bool,
    unhosted: bool,
) -> String {
    let views: Vec<_> = cluster
        .node_ids()
        .into_iter()
        .filter_map(|id| Some((id, cluster.node_handle(id)?.view())))
        .collect();
    let groups = |v: &ClusterView| -> Vec<PartitionView> {
        v.partitions
            .iter()
            .chain(&v.metadata_group)
            .cloned()
            .collect()
    };
    let chosen: std::collections::BTreeSet<_> = views
        .iter()
        .flat_map(|(_, v)| groups(v))
        .filter(|p| flagged(p))
        .map(|p| p.partition)
        .collect();
    let mut out = String::new();
    for (id, view) in &views {
        for p in groups(view)
            .iter()
            .filter(|p| chosen.contains(&p.partition) && (unhosted || p.term > 0))
        {
            out.push_str(&format!("  {id}: {p:?}\n"));
        }
    }
    out
}

/// Every running node's view of each group some replica of which knows no
/// leader (what keeps a node from being ready) or is in a joint
/// configuration (which needs a majority of both halves to commit).
fn leaderless_views(cluster: &SimCluster) -> String {
    views_where(
        cluster,
        |p| (p.leader.is_none() && p.term > 0) || !p.outgoing.is_empty(),
        true,
    )
}

/// Every running node's view of each group that some node's view shows
/// lagging (a follower behind its leader, a replica catching up or
/// receiving a snapshot), from the nodes that replicate it.
fn lagging_views(cluster: &SimCluster) -> String {
    views_where(
        cluster,
        |p| p.under_replicated || p.catching_up || p.receiving_snapshot.is_some(),
        false,
    )
}

/// Every running node's metadata version and view of the metadata group.
fn metadata_views(cluster: &SimCluster) -> String {
    let mut out = String::new();
    for id in cluster.node_ids() {
        if let Some(handle) = cluster.node_handle(id) {
            let view = handle.view();
            out.push_str(&format!(
                "  {id}: version {} {:?}\n",
                view.metadata_version, view.metadata_group
            ));
        }
    }
    out
}

/// Every node's view of the partitions whose replicas differ.
fn diverging_views(cluster: &SimCluster, states: &ReplicaStates) -> String {
    let mut out = String::new();
    for id in cluster.node_ids() {
        let Some(handle) = cluster.node_handle(id) else {
            out.push_str(&format!("  {id}: not running\n"));
            continue;
        };
        for p in &handle.view().partitions {
            let differs = states
                .get(&p.partition.0)
                .is_some_and(|(expected, replicas)| !partition_converged(expected, replicas));
            if differs && p.replicas.contains(&id) {
                out.push_str(&format!("  {id}: {p:?}\n"));
            }
        }
    }
    out
}

#[madsim::test]
async fn histories_under_faults_are_linearizable() {
    run(Handle::current().seed(), Mode::Faults).await;
}

/// The same, with membership churn among the faults: one or two nodes join,
/// and maybe a member is drained and another lost for good, with the
/// controller rebalancing (and no replica mover). After the heal, the
/// membership and every group's placement must settle within [`SETTLE`]
/// (see `ringkv_sim::settle`), before the final reads and the convergence
/// check.
#[madsim::test]
async fn histories_under_membership_churn_are_linearizable() {
    run(Handle::current().seed(), Mode::Churn).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Faults,
    Churn,
}

impl Mode {
    /// How a seed's summary line starts.
    fn label(self) -> &'static str {
        match self {
            Mode::Faults => "seed",
            Mode::Churn => "churn seed",
        }
    }

    fn test_name(self) -> &'static str {
        match self {
            Mode::Faults => "histories_under_faults_are_linearizable",
            Mode::Churn => "histories_under_membership_churn_are_linearizable",
        }
    }
}

async fn run(seed: u64, mode: Mode) {
    if std::env::var_os("RUST_LOG").is_some() {
        madsim::runtime::init_logger();
    }
    let replay = |seed| replay(seed, mode);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0F11_4EA2);
    // The seed's faults first: some of them are node settings.
    let mut nemesis_config = NemesisConfig::swarm(&mut rng);
    let defaults = ClusterOptions::default();
    let mut options = ClusterOptions {
        raft: nemesis_config.raft_config(),
        tick_interval: nemesis_config
            .tick_interval()
            .unwrap_or(defaults.tick_interval),
        clocks_jump: !nemesis_config.lease_reads_safe(),
        ..defaults
    };
    if mode == Mode::Churn {
        // From an RNG of its own: the rest of the seed's draws stay as in
        // the run without churn.
        let mut own = ChaCha8Rng::seed_from_u64(seed ^ 0xC4_0A11_C4A7);
        nemesis_config.moves = false;
        nemesis_config.churn = Some(Churn::draw(&mut own));
        options.rebalance = true;
        options.dead_after = CHURN_DEAD_AFTER;
    }
    let keys = workload::spread_keys(KEYS, options.partition_count);
    let nodes: u64 = if rng.random_ratio(1, 3) { 5 } else { 3 };
    let mut cluster = SimCluster::new(nodes, seed, options);
    let start = Instant::now();
    assert!(
        cluster.wait_ready(Duration::from_secs(20)).await,
        "seed {seed}: the cluster never became ready"
    );

    let recorder: SharedRecorder = Arc::new(Mutex::new(Recorder::new()));
    let clients: u32 = rng.random_range(4..=6);
    let stop = Instant::now() + RUN;
    // From an RNG of its own, so that the rest of a seed's run (nodes,
    // clients, faults) is what it is without large values.
    let large_values = ChaCha8Rng::seed_from_u64(seed ^ 0x01A4_6E5A_10E5)
        .random_ratio(1, 4)
        .then_some(LargeValues {
            fraction: 0.1,
            max_bytes: ringkv_node::config::defaults::MAX_VALUE_BYTES,
        });
    // Half the runs without large values give two keys increments,
    // appends, GETSET and GETDEL (an RNG of its own again, for the same
    // reason).
    let read_modify_writes = large_values.is_none()
        && ChaCha8Rng::seed_from_u64(seed ^ 0x0124_C0DE_F00D).random_ratio(1, 2);
    let template = ClientConfig {
        op_timeout: OP_TIMEOUT,
        max_think: Duration::from_millis(200),
        large_values,
        read_modify_writes,
        ..ClientConfig::new(keys.clone(), start, stop)
    };
    let mut tasks = workload::spawn_clients(&mut cluster, clients, &mut rng, &template, &recorder);

    let mut nemesis = Nemesis::new(nemesis_config, rng.random(), start);
    if nemesis.config().lease_edge {
        let probe = nemesis.lease_probe();
        let prober = clients + 1;
        tasks.push(workload::spawn_lease_prober(
            &mut cluster,
            prober,
            &mut rng,
            &template,
            &recorder,
            &probe,
        ));
    }
    nemesis.run(&mut cluster, RUN).await;
    nemesis.heal_all(&mut cluster);
    let healed = Instant::now();
    // Where the final writes and reads go: the members the cluster should
    // settle on (with churn, not the drained or lost ones).
    let mut members = nemesis.members(&cluster);

    let mut stats = ClientStats::default();
    for task in tasks {
        let s = task.await.expect("client task");
        stats.ok += s.ok;
        stats.fail += s.fail;
        stats.unknown += s.unknown;
    }

    // Recovery: leaders everywhere, then a write to every key.
    let recovery_deadline = healed + RECOVERY;
    let ready = cluster.wait_ready_among(&members, RECOVERY).await;
    let writer = cluster.client(100);
    let (all_written, final_from) = {
        let (recorder, keys, members) = (recorder.clone(), keys.clone(), members.clone());
        writer
            .run(async move {
                let mut ok = true;
                for key in &keys {
                    let put = Request::Put {
                        key: key.clone(),
                        value: format!("final-{}", key.escape_ascii()).into(),
                        precondition: Precondition::None,
                        return_previous: false,
                        expiry: Expiry::Clear,
                    };
                    ok &= until_ok(&recorder, start, &members, put, recovery_deadline)
                        .await
                        .is_some();
                }
                (ok, elapsed_ms(start))
            })
            .await
    };
    // A node drained before it finished joining (killed and restarted
    // mid-join, say) is told, when it asks again, that it was removed, and
    // stops: what an operator's drain of it means (churn seeds 8541, 9962).
    let drained_joiner = |id: NodeId, why: &str| {
        (nemesis.churned().drained == Some(id) || nemesis.churned().drain_unknown == Some(id))
            && why.contains("[join_refused]")
            && why.contains(&format!("{id} is removed"))
    };
    let failures: Vec<_> = cluster
        .failures()
        .into_iter()
        .filter(|(id, why)| !drained_joiner(*id, why))
        .collect();
    assert!(
        failures.is_empty(),
        "seed {seed}: nodes failed: {failures:#?}\nreplay: {}",
        replay(seed)
    );
    // Raft's safety properties, judged as the nodes went; before liveness,
    // since a broken one often shows first as a partition that cannot
    // elect or converge.
    assert_invariants(&cluster, seed, &nemesis, &replay(seed));
    assert!(
        ready && all_written,
        "seed {seed}: not every partition accepts writes within {RECOVERY:?} after the heal \
         (ready={ready})\npartitions without a leader somewhere, or joint:\n{}nemesis:\n{}\nreplay: {}",
        leaderless_views(&cluster),
        nemesis.trace(),
        replay(seed)
    );

    // Churn: membership and placement settle (judged from the nodes' views).
    let settled_in = match mode {
        Mode::Faults => None,
        Mode::Churn => {
            let deadline = healed + SETTLE;
            let mut verdict = placement_settled(&cluster, &members);
            while verdict.is_err() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A drain whose outcome was unknown at the heal may commit
                // since: the member list tells (churn seed 8609).
                members = nemesis.members(&cluster);
                verdict = placement_settled(&cluster, &members);
            }
            if let Err(why) = verdict {
                panic!(
                    "seed {seed}: membership and placement did not settle on members {members:?} \
                     within {SETTLE:?} of the heal: {why}\nchurn: {}\nviews of the partitions \
                     some replica of which lags or catches up:\n{}metadata on each node:\n{}\
                     nemesis:\n{}\nreplay: {}",
                    nemesis.churned(),
                    lagging_views(&cluster),
                    metadata_views(&cluster),
                    nemesis.trace(),
                    replay(seed)
                );
            }
            Some(healed.elapsed())
        }
    };

    // Final state: a linearizable read of every key.
    let final_ok = {
        let (recorder, keys, members) = (recorder.clone(), keys.clone(), members.clone());
        writer
            .run(async move {
                let deadline = Instant::now() + RECOVERY;
                let mut ok = true;
                for key in &keys {
                    let get = Request::Get {
                        key: key.clone(),
                        consistency: Consistency::Linearizable,
                    };
                    ok &= until_ok(&recorder, start, &members, get, deadline)
                        .await
                        .is_some();
                }
                ok
            })
            .await
    };
    assert!(
        final_ok,
        "seed {seed}: final reads failed\nreplay: {}",
        replay(seed)
    );

    // Convergence: every replica of a partition at the same applied index
    // with the same content digest.
    let converge_from = Instant::now();
    let converge_deadline = converge_from + CONVERGENCE;
    let mut states = replica_states(&cluster).await;
    while !converged(&states) && Instant::now() < converge_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        states = replica_states(&cluster).await;
    }
    let converge_time = converge_from.elapsed();
    assert!(
        converged(&states),
        "seed {seed}: replicas did not converge: {states:?}\n{}nemesis:\n{}\nreplay: {}",
        diverging_views(&cluster, &states),
        nemesis.trace(),
        replay(seed)
    );

    assert_invariants(&cluster, seed, &nemesis, &replay(seed));
    let history = match workload::finish(recorder) {
        Ok(h) => h,
        Err(e) => panic!("seed {seed}: malformed history (workload bug): {e}"),
    };
    let finals = no_lost_writes::final_reads(&history, final_from);
    assert_eq!(finals.len(), KEYS, "seed {seed}: a final read per key");
    let config = LinearizabilityConfig {
        step_budget: std::env::var("RINGKV_SIM_STEP_BUDGET")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(STEP_BUDGET),
        // A clock jump on a follower can end its election timeout before
        // the leader's lease (see `lease_skew` for what holds then).
        include_lease_reads: nemesis.config().lease_reads_safe(),
    };
    if let Ok(path) = std::env::var("RINGKV_SIM_DUMP_HISTORY") {
        std::fs::write(&path, history.to_string()).expect("write the history dump");
    }
    let summary = checker::check_all(&history, &finals, &config);

    let max_steps = summary
        .linearizability
        .keys
        .values()
        .map(|v| match v {
            KeyVerdict::Linearizable { steps, .. } | KeyVerdict::Inconclusive { steps, .. } => {
                *steps
            }
            KeyVerdict::NotLinearizable(_) => 0,
        })
        .max()
        .unwrap_or(0);
    println!(
        "{} {seed}: {nodes} nodes, {} ops ({} ok / {} fail / {} unknown by clients), {} clients{}, {} faults [{}]{}{}, max {max_steps} steps/key, {} observations, converged in {}ms, {}",
        mode.label(),
        history.len(),
        stats.ok,
        stats.fail,
        stats.unknown,
        clients,
        if large_values.is_some() {
            " (large values)"
        } else if read_modify_writes {
            " (read-modify-writes)"
        } else {
            ""
        },
        nemesis.faults(),
        nemesis.config().describe(),
        match nemesis.moves() {
            (0, 0) => String::new(),
            (done, abandoned) => format!(", {done} moves done, {abandoned} abandoned"),
        },
        match settled_in {
            None => String::new(),
            Some(t) => format!(
                ", {}, settled {}ms after the heal",
                nemesis.churned(),
                t.as_millis()
            ),
        },
        cluster.observations_judged(),
        converge_time.as_millis(),
        if summary.passed() { "passed" } else { "FAILED" }
    );
    if std::env::var_os("RINGKV_SIM_PRINT_TRACE").is_some() {
        println!("nemesis:\n{}", nemesis.trace());
    }
    if !summary.passed() {
        panic!(
            "seed {seed}: checks failed:\n{summary}\noperations named:\n{}nemesis:\n{}\nreplay: {}",
            summary.named_operations(&history),
            nemesis.trace(),
            replay(seed)
        );
    }
}
