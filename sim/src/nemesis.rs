//! A seeded fault schedule applied to a [`SimCluster`] while clients run.
//!
//! Swarm style: each seed first decides which fault kinds are on and how often
//! faults come ([`NemesisConfig::swarm`]), so that different seeds stress
//! different mixes instead of every seed averaging over all of them. At most
//! one network fault (symmetric or one-way partition, an isolated leader, lossy
//! links that drop, duplicate and delay peer batches) and one node fault
//! (crash or power loss then restart, pause then resume) are active at a
//! time, so a majority is up most of the time; clock drift is changed now
//! and then and stays in force, within the core's bound. Forward clock jumps
//! are on in a quarter of the seeds: a jump on a follower shortens its
//! election timeout and so can break the lease bound, so a run with jumps
//! must not hold lease reads to linearizability
//! ([`NemesisConfig::lease_reads_safe`]). Three seeds in four run on disks
//! that take time ([`DISKS`]: a fast SSD, a slow disk, one that stalls), so
//! writes are in flight while messages move.
//!
//! Every fault appends one trace line (`t=1234ms partition 1|2,3`,
//! `t=1234ms lossy 1->2 drop=10% dup=5% delay=1..40ms`).

use std::fmt::{self, Write as _};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::metadata::MemberState;
use ringkv_core::node::{Drain, DrainError};
use ringkv_core::{NodeId, PartitionId};
use tokio::time::Instant;

use crate::cluster::{ClusterOptions, NodeState, SimCluster};
use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError};

use ringkv_core::raft::RaftConfig;
use tokio::sync::Notify;

use crate::message_faults::{MessageFaults, TrapSpec};
use crate::mover::run_mover;
use crate::sim_disk::DiskLatency;
use crate::workload::{ProbeTarget, elapsed_ms};

/// Which faults a run injects, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NemesisConfig {
    pub partitions: bool,
    pub one_way: bool,
    pub isolate: bool,
    pub crashes: bool,
    /// Crashes are power losses (unsynced writes lost or torn) with this
    /// probability, in percent.
    pub power_loss_percent: u32,
    pub pauses: bool,
    pub drift: bool,
    /// Drift is drawn from `-max_drift_ppm..=max_drift_ppm`.
    pub max_drift_ppm: i64,
    /// Lossy links: peer batches dropped, duplicated and delayed (the node's
    /// fault hook), on one link, one node's links or all of them.
    pub lossy: bool,
    /// A lossy link's rates are drawn from `0..=max_*_percent`.
    pub max_drop_percent: u32,
    pub max_duplicate_percent: u32,
    /// A lossy link delays batches (half the time) by up to this much.
    pub max_delay: Duration,
    /// Forward clock steps of up to `max_jump`: unsafe for leases.
    pub jumps: bool,
    pub max_jump: Duration,
    /// Mean time between two fault decisions.
    pub mean_gap: Duration,
    /// A fault lasts up to this long.
    pub max_duration: Duration,
    /// Disk time on every node for the whole run (`None`: instant disks).
    pub disk: Option<DiskLatency>,
    /// Targeted: a leader's next entries reach at most one follower, and
    /// the leader crashes right after sending them ([`LinkFaults`]'s append
    /// trap), so a new leader must settle what a minority (or a bare
    /// majority the old leader never heard from) holds.
    ///
    /// [`LinkFaults`]: crate::message_faults::LinkFaults
    pub crash_after_append: bool,
    /// Targeted: one node's outgoing batches are held 200 ms to 1.5 s (none
    /// lost), so they arrive after elections and term changes.
    pub stale_messages: bool,
    /// Targeted: the leader of a random partition is cut off from its peers
    /// with every clock at the drift bound against it (its own slow, the
    /// others fast), while a prober (`workload::run_lease_prober`) sends it
    /// lease reads back to back: a deposed leader at the edge of its lease.
    /// Half the time (when no node fault is in force) the edge comes from a
    /// restart instead (`Nemesis::lease_restart`): the follower the lease
    /// rests on crashes and comes straight back, forgetting its leader.
    pub lease_edge: bool,
    /// Targeted: the Figure 8 history of the Raft paper, played on one
    /// partition's replicas with append traps and crashes (see
    /// `Nemesis::figure8`). Implies tiny appends.
    pub figure8: bool,
    /// Targeted (a node setting, fixed for the run): one entry per append
    /// and a window of two, so an old leader's entries and a new leader's
    /// own travel in separate messages (the Figure 8 precondition).
    pub tiny_appends: bool,
    /// Targeted (a node setting): the shortest election timeouts the lease
    /// allows, 4 ticks plus at most one (`election_jitter_ticks = 2`), so
    /// elections start at or next to the earliest moment and split votes are
    /// common. With no random part at all two followers whose ticks fell in
    /// step split every vote forever (seed 5602: terms 6 to 119 in 20 s,
    /// the third replica, whose log was ahead, always 8 ms late); Raft's
    /// liveness rests on that randomness.
    pub fast_elections: bool,
    /// Targeted (a node setting, unless `fast_elections`): 10 ms ticks and
    /// 30-tick election timeouts (the same 300-600 ms), so the tick a lease
    /// gives up for rounding is small beside its drift margin: a lease that
    /// ignores the drift bound outlasts a follower's vote refusal (with 10
    /// ticks per timeout the rounding tick happens to cover it).
    pub fine_ticks: bool,
    /// Replica moves while the other faults run ([`crate::mover`]): a
    /// random replica of a random partition moves to another node (or is
    /// removed, where every node holds one), and later back.
    pub moves: bool,
    /// Membership changes while the other faults run (see [`Churn`]).
    /// Needs a cluster whose controller rebalances and no `moves` (the
    /// controller would undo the mover's moves, and the mover the
    /// controller's).
    pub churn: Option<Churn>,
}

/// The membership changes a run makes, each once, at a time the nemesis
/// draws like any other fault's: nodes join (`--join`, a new empty node
/// each), a member is drained (`ringkv node drain` through the controller),
/// a member is lost for good (killed, its disk gone: the cluster must mark
/// it dead after `--dead-after` and re-create its replicas). A drain or a
/// loss happens only while it leaves at least `replication_factor` members
/// in play, so every partition can have its full set of replicas again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Churn {
    pub joins: u32,
    pub drain: bool,
    pub loss: bool,
}

impl Churn {
    /// One or two joins; a drain and a loss each with probability 1/2.
    pub fn draw(rng: &mut ChaCha8Rng) -> Self {
        Churn {
            joins: rng.random_range(1..=2),
            drain: rng.random_bool(0.5),
            loss: rng.random_bool(0.5),
        }
    }

    fn is_done(&self) -> bool {
        self.joins == 0 && !self.drain && !self.loss
    }
}

impl fmt::Display for Churn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "churn(joins={}", self.joins)?;
        if self.drain {
            f.write_str(",drain")?;
        }
        if self.loss {
            f.write_str(",loss")?;
        }
        f.write_str(")")
    }
}

/// Bounds for lossy links that keep a run mostly live: Raft retransmits
/// what is lost, and the failure detector still hears most heartbeats.
pub const LOSSY_MAX_DROP_PERCENT: u32 = 20;
pub const LOSSY_MAX_DUPLICATE_PERCENT: u32 = 20;
pub const LOSSY_MAX_DELAY: Duration = Duration::from_millis(40);

/// The RNG stream [`NemesisConfig::swarm`] and the mover draw from.
const MOVES_STREAM: u64 = 0x6d6f_7665;

/// The tick of [`NemesisConfig::fine_ticks`].
const FINE_TICK: Duration = Duration::from_millis(10);

/// How long each step of the Figure 8 script waits for its trap.
const FIGURE8_PATIENCE: Duration = Duration::from_secs(3);
/// After a trap springs: time for the node's own write to reach its disk.
const FIGURE8_SETTLE: Duration = Duration::from_millis(50);
/// After the old entry reached the third replica: time for its answer.
const FIGURE8_ACK: Duration = Duration::from_millis(100);
/// Time for the returning leader to win and overwrite.
const FIGURE8_OVERWRITE: Duration = Duration::from_secs(2);

/// Which of `notifies` is told first within `patience`, by position.
async fn sprung_within(notifies: &[&Arc<Notify>], patience: Duration) -> Option<usize> {
    let deadline = Instant::now() + patience;
    match notifies {
        [one] => tokio::select! {
            biased;
            _ = one.notified() => Some(0),
            _ = tokio::time::sleep_until(deadline) => None,
        },
        [first, second] => tokio::select! {
            biased;
            _ = first.notified() => Some(0),
            _ = second.notified() => Some(1),
            _ = tokio::time::sleep_until(deadline) => None,
        },
        _ => unreachable!("one or two traps at a time"),
    }
}

/// How long the nemesis waits for the controller to answer a drain.
const DRAIN_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long it asks again for a proposed drain to be committed.
const DRAIN_COMMIT_PATIENCE: Duration = Duration::from_secs(3);
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// How long an append trap waits for its leader to send entries.
const APPEND_TRAP_PATIENCE: Duration = Duration::from_secs(2);

/// How long stale messages are held: long enough to arrive after an
/// election (a few hundred ms at the simulation's ticks).
const STALE_DELAY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_millis(1500));

/// The disks a seed may run on: instant, a fast SSD, a slow disk, a disk
/// that stalls now and then (a long tail on one write in twenty).
pub const DISKS: [Option<DiskLatency>; 4] = [
    None,
    Some(DiskLatency {
        per_kib: Duration::from_micros(2),
        sync_min: Duration::from_micros(50),
        sync_max: Duration::from_micros(500),
        tail_percent: 1,
        tail_max: Duration::from_millis(10),
    }),
    Some(DiskLatency {
        per_kib: Duration::from_micros(10),
        sync_min: Duration::from_millis(2),
        sync_max: Duration::from_millis(10),
        tail_percent: 2,
        tail_max: Duration::from_millis(100),
    }),
    Some(DiskLatency {
        per_kib: Duration::from_micros(5),
        sync_min: Duration::from_micros(500),
        sync_max: Duration::from_millis(3),
        tail_percent: 5,
        tail_max: Duration::from_millis(400),
    }),
];

/// The drift the core tolerates: every clock within this many ppm of real
/// time (`RaftConfig::max_clock_drift_ppm`, whose default this is); the
/// `lease_skew` test shows lease reads hold with clocks exactly at it.
pub const SAFE_DRIFT_PPM: i64 = 50_000;

impl NemesisConfig {
    /// Every fault kind off.
    pub fn none() -> Self {
        NemesisConfig {
            partitions: false,
            one_way: false,
            isolate: false,
            crashes: false,
            power_loss_percent: 0,
            pauses: false,
            drift: false,
            max_drift_ppm: 0,
            lossy: false,
            max_drop_percent: 0,
            max_duplicate_percent: 0,
            max_delay: Duration::ZERO,
            jumps: false,
            max_jump: Duration::ZERO,
            mean_gap: Duration::from_secs(1),
            max_duration: Duration::from_secs(1),
            disk: None,
            crash_after_append: false,
            stale_messages: false,
            lease_edge: false,
            figure8: false,
            tiny_appends: false,
            fast_elections: false,
            fine_ticks: false,
            moves: false,
            churn: None,
        }
    }

    /// The nodes' tick interval for this schedule (`None`: the default).
    pub fn tick_interval(&self) -> Option<Duration> {
        (self.fine_ticks && !self.fast_elections).then_some(FINE_TICK)
    }

    /// The Raft settings the nodes need for this schedule (`None`: the
    /// defaults).
    pub fn raft_config(&self) -> Option<RaftConfig> {
        if !self.tiny_appends && !self.fast_elections && !self.figure8 && !self.fine_ticks {
            return None;
        }
        let mut raft = RaftConfig::default();
        if self.tiny_appends || self.figure8 {
            raft.max_entries_per_msg = 1;
            raft.max_inflight_msgs = 2;
        }
        if self.fast_elections {
            raft.election_ticks = 4;
            raft.heartbeat_ticks = 1;
            raft.election_jitter_ticks = Some(2);
        } else if self.fine_ticks {
            raft.election_ticks = 30;
            raft.heartbeat_ticks = 6;
            raft.quiesce_after_ticks = 18;
        }
        Some(raft)
    }

    /// A seed's choice of faults: each kind on with probability 1/2 (at
    /// least one on; clock jumps 1/4, of up to 3 s), a rate and a duration
    /// bound.
    pub fn swarm(rng: &mut ChaCha8Rng) -> Self {
        // Replica moves are drawn from a stream of their own, so that every
        // other draw (and the schedules of seeds from before moves existed)
        // stays as it was.
        let mut own = rng.clone();
        own.set_stream(MOVES_STREAM);
        let moves = own.random_bool(0.5);
        loop {
            let c = NemesisConfig {
                moves,
                partitions: rng.random_bool(0.5),
                one_way: rng.random_bool(0.5),
                isolate: rng.random_bool(0.5),
                crashes: rng.random_bool(0.5),
                power_loss_percent: rng.random_range(0..=100),
                pauses: rng.random_bool(0.5),
                drift: rng.random_bool(0.5),
                max_drift_ppm: SAFE_DRIFT_PPM,
                lossy: rng.random_bool(0.5),
                max_drop_percent: LOSSY_MAX_DROP_PERCENT,
                max_duplicate_percent: LOSSY_MAX_DUPLICATE_PERCENT,
                max_delay: LOSSY_MAX_DELAY,
                jumps: rng.random_ratio(1, 4),
                max_jump: Duration::from_millis(rng.random_range(100..=3_000)),
                mean_gap: Duration::from_millis(rng.random_range(300..=3_000)),
                max_duration: Duration::from_millis(rng.random_range(500..=6_000)),
                disk: DISKS[rng.random_range(0..DISKS.len())],
                crash_after_append: rng.random_bool(0.5),
                stale_messages: rng.random_ratio(1, 4),
                lease_edge: rng.random_ratio(1, 3),
                figure8: rng.random_ratio(1, 3),
                tiny_appends: rng.random_ratio(1, 4),
                fast_elections: rng.random_ratio(1, 4),
                fine_ticks: rng.random_ratio(1, 4),
                churn: None,
            };
            if c.partitions
                || c.one_way
                || c.isolate
                || c.lossy
                || c.crashes
                || c.pauses
                || c.drift
                || c.crash_after_append
                || c.stale_messages
                || c.lease_edge
                || c.figure8
            {
                return c;
            }
        }
    }

    /// Whether lease reads are promised to be linearizable under this
    /// schedule: not if clocks jump (drift stays within the bound).
    pub fn lease_reads_safe(&self) -> bool {
        !self.jumps
    }

    /// The compact form for a run's summary line:
    /// `part,1way,iso,lossy(drop<=20%,dup<=20%,delay<=40ms),crash(40%pl),pause,drift gap=800ms dur<=3000ms`.
    pub fn describe(&self) -> String {
        let mut kinds = Vec::new();
        if self.partitions {
            kinds.push("part".to_owned());
        }
        if self.one_way {
            kinds.push("1way".to_owned());
        }
        if self.isolate {
            kinds.push("iso".to_owned());
        }
        if self.lossy {
            kinds.push(format!(
                "lossy(drop<={}%,dup<={}%,delay<={}ms)",
                self.max_drop_percent,
                self.max_duplicate_percent,
                self.max_delay.as_millis()
            ));
        }
        if self.crashes {
            kinds.push(format!("crash({}%pl)", self.power_loss_percent));
        }
        if self.pauses {
            kinds.push("pause".to_owned());
        }
        if self.drift {
            kinds.push(format!("drift(±{}ppm)", self.max_drift_ppm));
        }
        if self.jumps {
            kinds.push(format!("jump(<={:?})", self.max_jump));
        }
        if self.crash_after_append {
            kinds.push("crash-after-append".to_owned());
        }
        if self.stale_messages {
            kinds.push("stale-msgs".to_owned());
        }
        if self.lease_edge {
            kinds.push("lease-edge".to_owned());
        }
        if self.figure8 {
            kinds.push("figure8".to_owned());
        }
        if self.tiny_appends {
            kinds.push("tiny-appends".to_owned());
        }
        if self.fast_elections {
            kinds.push("fast-elections".to_owned());
        } else if self.fine_ticks {
            kinds.push("fine-ticks".to_owned());
        }
        if self.moves {
            kinds.push("moves".to_owned());
        }
        if let Some(churn) = &self.churn {
            kinds.push(churn.to_string());
        }
        if let Some(disk) = &self.disk {
            kinds.push(format!(
                "disk({:?}..{:?},{}%<={:?})",
                disk.sync_min, disk.sync_max, disk.tail_percent, disk.tail_max
            ));
        }
        format!(
            "{} gap={}ms dur<={}ms",
            kinds.join(","),
            self.mean_gap.as_millis(),
            self.max_duration.as_millis()
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeFault {
    Down(NodeId),
    Paused(NodeId),
}

/// Applies a [`NemesisConfig`] to a cluster; keeps the trace.
pub struct Nemesis {
    config: NemesisConfig,
    rng: ChaCha8Rng,
    start: Instant,
    trace: String,
    faults: usize,
    /// The network fault in force and when it ends.
    network: Option<Instant>,
    /// Whether the disks' latency is set yet (on the first run).
    disks_set: bool,
    /// An armed append trap: its node, its notification, and when to give
    /// up on it.
    trap: Option<(NodeId, Arc<Notify>, Instant)>,
    /// Where the lease prober aims (see [`Nemesis::lease_probe`]).
    probe: ProbeTarget,
    /// The Figure 8 script was picked; it runs once `inject` returns.
    figure8_due: bool,
    /// The lease-restart script was picked; it runs once `inject` returns.
    lease_restart_due: bool,
    node: Option<(NodeFault, Instant)>,
    /// The seed the nemesis was made with (the mover's RNG derives from it).
    seed: u64,
    /// Replica moves done and abandoned (with [`NemesisConfig::moves`]).
    moves: (usize, usize),
    /// The membership changes still to make.
    churn_left: Option<Churn>,
    /// The membership changes made.
    churned: ChurnReport,
    /// The drain was picked; it runs once `inject` returns.
    drain_due: bool,
}

/// The membership changes a [`Nemesis`] made (see [`Churn`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChurnReport {
    pub joined: Vec<NodeId>,
    /// Drained through the controller (the controller accepted it).
    pub drained: Option<NodeId>,
    /// A drain proposed whose outcome the nemesis never learned (the
    /// controller changed meanwhile): the member list tells.
    pub drain_unknown: Option<NodeId>,
    pub lost: Option<NodeId>,
}

impl ChurnReport {
    /// Whether `id` left the cluster (drained or lost).
    pub fn left(&self, id: NodeId) -> bool {
        self.drained == Some(id) || self.lost == Some(id)
    }
}

impl fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "joined [{}]", join(&self.joined))?;
        if let Some(id) = self.drained {
            write!(f, ", drained {id}")?;
        }
        if let Some(id) = self.drain_unknown {
            write!(f, ", drain of {id} unknown")?;
        }
        if let Some(id) = self.lost {
            write!(f, ", lost {id}")?;
        }
        Ok(())
    }
}

impl Nemesis {
    /// `start` is the run's time origin (trace times are ms since then).
    pub fn new(config: NemesisConfig, seed: u64, start: Instant) -> Self {
        assert!(
            !(config.moves && config.churn.is_some()),
            "replica moves and membership churn fight each other"
        );
        Nemesis {
            churn_left: config.churn,
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            start,
            trace: String::new(),
            faults: 0,
            network: None,
            disks_set: false,
            trap: None,
            probe: ProbeTarget::default(),
            figure8_due: false,
            lease_restart_due: false,
            node: None,
            seed,
            moves: (0, 0),
            churned: ChurnReport::default(),
            drain_due: false,
        }
    }

    /// The membership changes made so far (with [`NemesisConfig::churn`]).
    pub fn churned(&self) -> &ChurnReport {
        &self.churned
    }

    /// The nodes in play that have not left the cluster: the members a
    /// settled cluster has. A drain of unknown outcome counts as done if
    /// the newest member list a running node has says the node is leaving
    /// or gone.
    pub fn members(&self, cluster: &SimCluster) -> Vec<NodeId> {
        let unknown_left = self.churned.drain_unknown.is_some_and(|id| {
            let newest = cluster
                .node_ids()
                .into_iter()
                .filter_map(|n| cluster.node_handle(n))
                .map(|h| h.view())
                .max_by_key(|v| v.metadata_version);
            newest.is_some_and(|v| {
                v.members.iter().any(|m| {
                    m.id == id
                        && matches!(m.state, Some(MemberState::Draining | MemberState::Removed))
                })
            })
        });
        let left = |id: NodeId| {
            self.churned.left(id) || (unknown_left && self.churned.drain_unknown == Some(id))
        };
        cluster
            .node_ids()
            .into_iter()
            .filter(|&id| !left(id))
            .collect()
    }

    /// Replica moves done and abandoned so far.
    pub fn moves(&self) -> (usize, usize) {
        self.moves
    }

    pub fn config(&self) -> &NemesisConfig {
        &self.config
    }

    /// The target a lease prober should follow (with
    /// [`NemesisConfig::lease_edge`]): the deposed leader while a lease-edge
    /// fault lasts, `None` otherwise.
    pub fn lease_probe(&self) -> ProbeTarget {
        self.probe.clone()
    }

    fn aim_probe(&self, at: Option<NodeId>) {
        *self.probe.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// One line per fault and repair.
    pub fn trace(&self) -> &str {
        &self.trace
    }

    /// Faults injected so far (repairs not counted).
    pub fn faults(&self) -> usize {
        self.faults
    }

    fn log(&mut self, what: String) {
        let _ = writeln!(self.trace, "t={}ms {what}", elapsed_ms(self.start));
        tracing::info!("nemesis: {what}");
    }

    fn duration(&mut self) -> Duration {
        let max = self.config.max_duration.as_millis().max(100) as u64;
        Duration::from_millis(self.rng.random_range(100..=max))
    }

    fn pick(&mut self, ids: &[NodeId]) -> NodeId {
        ids[self.rng.random_range(0..ids.len())]
    }

    /// The leader of a random partition as a random running node sees it,
    /// with the partition's number.
    fn leader_of_a_partition(
        &mut self,
        cluster: &SimCluster,
        ids: &[NodeId],
    ) -> Option<(NodeId, u32)> {
        let observer = self.pick(ids);
        let view = cluster.node_handle(observer)?.view();
        // Only leaders in play: a view may still name a node lost for good.
        let known: Vec<(NodeId, u32)> = view
            .partitions
            .iter()
            .filter_map(|p| Some((p.leader?, p.partition.0)))
            .filter(|(leader, _)| ids.contains(leader))
            .collect();
        (!known.is_empty()).then(|| known[self.rng.random_range(0..known.len())])
    }

    /// The leader of a random partition (as for
    /// [`Self::leader_of_a_partition`]), the partition, and its two other
    /// replicas (`None` unless it has exactly two).
    fn leader_and_followers(
        &mut self,
        cluster: &SimCluster,
        ids: &[NodeId],
    ) -> Option<(NodeId, u32, [NodeId; 2])> {
        let (leader, p) = self.leader_of_a_partition(cluster, ids)?;
        let view = cluster.node_handle(leader)?.view();
        let replicas = &view.partitions.get(p as usize)?.replicas;
        let others: Vec<NodeId> = replicas.iter().copied().filter(|&r| r != leader).collect();
        if !others.iter().all(|o| ids.contains(o)) {
            return None;
        }
        Some((leader, p, others.try_into().ok()?))
    }

    /// Injects faults for `duration`, then returns with faults possibly still
    /// in force (see [`Nemesis::heal_all`]).
    pub async fn run(&mut self, cluster: &mut SimCluster, duration: Duration) {
        if !self.disks_set {
            self.disks_set = true;
            if let Some(disk) = self.config.disk {
                cluster.set_disk_latency(Some(disk));
                self.log(format!("disks {disk}"));
            }
        }
        let end = Instant::now() + duration;
        let mover = self.config.moves.then(|| {
            let seed = self.seed ^ MOVES_STREAM;
            tokio::spawn(run_mover(cluster.handles(), seed, self.start, end))
        });
        self.inject_until(cluster, end).await;
        if let Some(mover) = mover {
            let report = mover.await.expect("the mover task is never killed");
            self.moves.0 += report.done;
            self.moves.1 += report.abandoned;
            self.trace = crate::observer::merge(&[&self.trace, &report.trace]);
        }
    }

    async fn inject_until(&mut self, cluster: &mut SimCluster, end: Instant) {
        let mut next = Instant::now() + self.gap();
        loop {
            let mut wake = next;
            if let Some(t) = self.network {
                wake = wake.min(t);
            }
            if let Some((_, t)) = self.node {
                wake = wake.min(t);
            }
            if let Some((_, _, t)) = &self.trap {
                wake = wake.min(*t);
            }
            let sprung = match self.trap.as_ref().map(|(_, n, _)| n.clone()) {
                Some(notify) => tokio::select! {
                    biased;
                    _ = notify.notified() => true,
                    _ = tokio::time::sleep_until(wake.min(end)) => false,
                },
                None => {
                    tokio::time::sleep_until(wake.min(end)).await;
                    false
                }
            };
            if let Some((id, notify, deadline)) = self.trap.take() {
                if sprung {
                    self.crash_sprung(cluster, id);
                } else if Instant::now() >= deadline {
                    cluster.disarm_append_trap(id);
                    self.log(format!("append trap on {id} not sprung"));
                } else {
                    self.trap = Some((id, notify, deadline));
                }
            }
            if Instant::now() >= end {
                return;
            }
            let now = Instant::now();
            if self.network.is_some_and(|t| t <= now) {
                self.network = None;
                self.aim_probe(None);
                cluster.heal();
                self.log("heal".to_owned());
            }
            if let Some((fault, t)) = self.node
                && t <= now
            {
                self.node = None;
                self.repair(cluster, fault);
            }
            if next <= now {
                self.inject(cluster);
                if std::mem::take(&mut self.figure8_due) {
                    self.figure8(cluster).await;
                }
                if std::mem::take(&mut self.lease_restart_due) {
                    self.lease_restart(cluster).await;
                }
                if std::mem::take(&mut self.drain_due) {
                    self.drain(cluster).await;
                }
                next = Instant::now() + self.gap();
            }
        }
    }

    fn spend_churn(&mut self, spend: impl FnOnce(&mut Churn)) {
        if let Some(churn) = &mut self.churn_left {
            spend(churn);
            if churn.is_done() {
                self.churn_left = None;
            }
        }
    }

    /// A drain of a random member, asked of the controller as a random
    /// running node knows it. Refused (no controller known, busy, a member
    /// down), it is tried again at a later turn of the kind.
    async fn drain(&mut self, cluster: &SimCluster) {
        let members = self.members(cluster);
        let target = self.pick(&members);
        let observer = self.pick(&members);
        // As `ringkv node drain` does: asked again, of the controller as
        // some member then knows it, until the committed member list has
        // it draining. Once proposed, a refusal or silence no longer means
        // "not drained": the proposal may commit (or may have) all the same.
        let deadline = Instant::now() + DRAIN_COMMIT_PATIENCE;
        let mut proposed = false;
        let mut last = String::new();
        while Instant::now() < deadline {
            let controller = cluster
                .node_handle(observer)
                .and_then(|h| h.view().metadata_leader)
                .and_then(|c| Some((c, cluster.node_handle(c)?)));
            let Some((controller, handle)) = controller else {
                last = format!("{observer} knows no running controller");
                if !proposed {
                    break;
                }
                tokio::time::sleep(DRAIN_POLL).await;
                continue;
            };
            match tokio::time::timeout(DRAIN_CALL_TIMEOUT, handle.drain(target)).await {
                Ok(Ok(Drain::Draining)) => {
                    self.churned.drained = Some(target);
                    self.spend_churn(|c| c.drain = false);
                    self.faults += 1;
                    self.log(format!("drain {target} (through {controller})"));
                    return;
                }
                Ok(Ok(Drain::Proposed)) => proposed = true,
                Ok(Err(DrainError::Busy)) => last = format!("{controller} is busy"),
                Ok(Err(why)) if !proposed => {
                    last = format!("refused by {controller}: {why}");
                    break;
                }
                Ok(Err(why)) => last = format!("{controller}: {why}"),
                // No answer is no refusal: the controller may have proposed
                // it (churn seed 2450: it did, and it committed).
                Err(_) => {
                    proposed = true;
                    last = format!("{controller} did not answer");
                }
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if proposed {
            // Its outcome is unknown: the test reads the member list.
            self.churned.drain_unknown = Some(target);
            self.spend_churn(|c| c.drain = false);
            self.faults += 1;
            self.log(format!(
                "drain {target}: proposed, outcome unknown ({last})"
            ));
        } else {
            self.log(format!("drain {target} not taken: {last}"));
        }
    }

    /// A lease that rests on a follower which restarts: the leader `l` of
    /// a partition is cut off from one replica `b`, with every clock at the
    /// drift bound against `l`, long enough for `b`'s election timer to run
    /// out (`b` keeps asking for votes; the other replica `a`, which still
    /// acknowledges `l`'s rounds, refuses). Then `a` crashes and comes
    /// straight back, and `l` is cut off from everyone while a prober sends
    /// it lease reads. `a` has forgotten that it acknowledged `l`: unless it
    /// honours an unknown lease for an election timeout after it starts, it
    /// votes `b` in while `l` still serves reads from its lease, which the
    /// lease invariant reports (a leader of a later term elected before a
    /// lease read).
    async fn lease_restart(&mut self, cluster: &mut SimCluster) {
        let ids = cluster.node_ids();
        let Some((l, p, others)) = self.leader_and_followers(cluster, &ids) else {
            return;
        };
        let k = self.rng.random_range(0..2);
        let (a, b) = (others[k], others[1 - k]);
        self.faults += 1;
        clocks_at_the_bound_against(cluster, l);
        cluster.partition(l, b);
        self.aim_probe(Some(l));
        self.log(format!(
            "lease-restart on p{p}: {l} leads, cut off from {b}; clocks at the bound against {l}"
        ));
        let raft = self.config.raft_config().unwrap_or_default();
        let tick = self
            .config
            .tick_interval()
            .unwrap_or_else(|| ClusterOptions::default().tick_interval);
        tokio::time::sleep(tick * raft.election_ticks * 2).await;
        cluster.kill(a);
        cluster.restart(a);
        cluster.isolate(l);
        self.network = Some(Instant::now() + self.duration());
        self.log(format!(
            "lease-restart: {a} crashed and restarted at once; {l} cut off from everyone, probed with lease reads"
        ));
    }

    /// The Figure 8 history of the Raft paper (§5.4.2), played on the
    /// replicas `a`, `b`, `c` of a partition `a` leads, with traps on their
    /// appends and one entry per append (the nodes run with tiny appends):
    /// 1. `a`'s next entry (of term t) reaches nobody; `a` crashes;
    /// 2. whichever of `b`, `c` wins the next term appends its first entry
    ///    (at the same index) and crashes before it reaches anyone (say `b`);
    /// 3. `a` returns and wins a later term with `c`'s vote; its re-sent
    ///    entry of term t reaches `c`, then `a` is cut off and crashes a
    ///    moment later, before an entry of its own term reaches `c`;
    /// 4. `b` returns: its entry of term t+1 is newer than `c`'s last, so it
    ///    wins and overwrites index i on `c`. Then `a` returns.
    ///
    /// Correct Raft never counted `a`'s re-sent entry as committed in step 3
    /// (not of its term), so the overwrite is legal. A leader that does
    /// (the rule broken) applies it, and the overwrite applies another
    /// entry at that index: state machine safety catches it. A step whose
    /// trap does not spring within its patience ends the script early (all
    /// nodes restarted); the trace says where.
    async fn figure8(&mut self, cluster: &mut SimCluster) {
        let ids = cluster.node_ids();
        let Some((a, p, others)) = self.leader_and_followers(cluster, &ids) else {
            return;
        };
        let partition = PartitionId(p);
        let trap = |node, reach: &[NodeId], old_entries_only| TrapSpec {
            node,
            reach: reach.iter().copied().collect(),
            partition: Some(partition),
            old_entries_only,
        };
        self.faults += 1;
        self.log(format!(
            "figure-8 on p{p}: {a} leads, {} and {} follow",
            others[0], others[1]
        ));

        // 1. a's next entry reaches nobody.
        let caught = cluster.arm_append_trap(trap(a, &[], false));
        let sprung = sprung_within(&[&caught], FIGURE8_PATIENCE).await;
        let what = cluster.sprung_append_trap(a);
        tokio::time::sleep(FIGURE8_SETTLE).await;
        cluster.kill(a);
        cluster.disarm_append_trap(a);
        let Some(what) = what.filter(|_| sprung.is_some()) else {
            cluster.restart(a);
            self.log(format!("figure-8 ends: {a} sent no entry of p{p}"));
            return;
        };
        self.log(format!("figure-8 1/4: crash {a} after {what}"));

        // 2. The next leader's first entry reaches nobody.
        let caught: Vec<_> = others
            .iter()
            .map(|&o| cluster.arm_append_trap(trap(o, &[], false)))
            .collect();
        let sprung = sprung_within(&[&caught[0], &caught[1]], FIGURE8_PATIENCE).await;
        tokio::time::sleep(FIGURE8_SETTLE).await;
        let Some(b) = sprung.map(|k| others[k]) else {
            cluster.disarm_append_traps();
            cluster.restart(a);
            self.log(format!(
                "figure-8 ends: no new leader of p{p} sent an entry"
            ));
            return;
        };
        let c = if others[0] == b { others[1] } else { others[0] };
        let what = cluster.sprung_append_trap(b).map(|s| s.to_string());
        cluster.kill(b);
        cluster.disarm_append_traps();
        self.log(format!(
            "figure-8 2/4: crash {b} after {}",
            what.unwrap_or_default()
        ));

        // 3. a returns, wins with c's vote, and its re-sent old entry
        // reaches c; a crashes once c could have answered.
        let caught = cluster.arm_append_trap(trap(a, &[c], true));
        cluster.restart(a);
        let sprung = sprung_within(&[&caught], FIGURE8_PATIENCE).await;
        let what = cluster.sprung_append_trap(a).map(|s| s.to_string());
        tokio::time::sleep(FIGURE8_ACK).await;
        cluster.kill(a);
        cluster.disarm_append_trap(a);
        match (sprung, what) {
            (Some(_), Some(what)) => self.log(format!("figure-8 3/4: crash {a} after {what}")),
            _ => self.log(format!("figure-8 3/4: {a} re-sent no old entry; crash it")),
        }

        // 4. b returns and overwrites c; then a returns.
        cluster.restart(b);
        tokio::time::sleep(FIGURE8_OVERWRITE).await;
        cluster.restart(a);
        self.log(format!("figure-8 4/4: restart {b}, then {a}"));
    }

    /// Time to the next fault decision: uniform on `[0, 2 * mean_gap]`.
    fn gap(&mut self) -> Duration {
        let mean = self.config.mean_gap.as_millis().max(1) as u64;
        Duration::from_millis(self.rng.random_range(0..=2 * mean))
    }

    /// The append trap on `id` caught its entries: crash it now (a power
    /// loss as often as crashes are), and let its links carry its next
    /// incarnation's traffic.
    fn crash_sprung(&mut self, cluster: &mut SimCluster, id: NodeId) {
        let what = cluster
            .sprung_append_trap(id)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let how = if self.rng.random_range(0..100) < self.config.power_loss_percent {
            format!(" power-loss {:?}", cluster.power_loss(id))
        } else {
            cluster.kill(id);
            String::new()
        };
        cluster.disarm_append_trap(id);
        self.node = Some((NodeFault::Down(id), Instant::now() + self.duration()));
        self.log(format!("crash-after-append {id}: {what}{how}"));
    }

    fn repair(&mut self, cluster: &mut SimCluster, fault: NodeFault) {
        match fault {
            NodeFault::Down(id) => {
                cluster.restart(id);
                self.log(format!("restart {id}"));
            }
            NodeFault::Paused(id) => {
                cluster.resume(id);
                self.log(format!("resume {id}"));
            }
        }
    }

    /// Picks one enabled fault kind whose slot is free and applies it.
    fn inject(&mut self, cluster: &mut SimCluster) {
        #[derive(Clone, Copy)]
        enum Kind {
            Partition,
            OneWay,
            Isolate,
            Lossy,
            Crash,
            Pause,
            Drift,
            Jump,
            CrashAfterAppend,
            StaleMessages,
            LeaseEdge,
            Figure8,
            Join,
            Drain,
            Lose,
        }
        let c = &self.config;
        let net_free = self.network.is_none();
        let node_free = self.node.is_none() && self.trap.is_none();
        let churn = self.churn_left.unwrap_or(Churn {
            joins: 0,
            drain: false,
            loss: false,
        });
        // A drain or a loss must leave a full set of replicas' worth of
        // members (one drain at a time: the controller takes one).
        let may_leave = self.members(cluster).len() > cluster.options().replication_factor as usize;
        let kinds: Vec<Kind> = [
            (c.partitions && net_free, Kind::Partition),
            (c.one_way && net_free, Kind::OneWay),
            (c.isolate && net_free, Kind::Isolate),
            (c.lossy && net_free, Kind::Lossy),
            (c.crashes && node_free, Kind::Crash),
            (c.pauses && node_free, Kind::Pause),
            (c.drift, Kind::Drift),
            (c.jumps, Kind::Jump),
            (c.crash_after_append && node_free, Kind::CrashAfterAppend),
            (c.stale_messages && net_free, Kind::StaleMessages),
            (c.lease_edge && net_free, Kind::LeaseEdge),
            (c.figure8 && net_free && node_free, Kind::Figure8),
            (churn.joins > 0, Kind::Join),
            (churn.drain && may_leave, Kind::Drain),
            (churn.loss && may_leave, Kind::Lose),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        if kinds.is_empty() {
            return;
        }
        // Membership changes come at one decision in three while any is
        // left, so that they all happen within a run, early and late.
        let is_churn = |k: &Kind| matches!(k, Kind::Join | Kind::Drain | Kind::Lose);
        let churn_kinds: Vec<Kind> = kinds.iter().copied().filter(is_churn).collect();
        let kind = if !churn_kinds.is_empty() && self.rng.random_ratio(1, 3) {
            churn_kinds[self.rng.random_range(0..churn_kinds.len())]
        } else {
            let others: Vec<Kind> = kinds.iter().copied().filter(|k| !is_churn(k)).collect();
            if others.is_empty() {
                return;
            }
            others[self.rng.random_range(0..others.len())]
        };
        let ids = cluster.node_ids();
        let now = Instant::now();
        match kind {
            Kind::Partition => {
                // A random non-empty proper subset against the rest.
                let mut side: Vec<NodeId> = Vec::new();
                while side.is_empty() || side.len() == ids.len() {
                    side = ids
                        .iter()
                        .copied()
                        .filter(|_| self.rng.random_bool(0.5))
                        .collect();
                }
                let other: Vec<NodeId> =
                    ids.iter().copied().filter(|i| !side.contains(i)).collect();
                for &a in &side {
                    for &b in &other {
                        cluster.partition(a, b);
                    }
                }
                self.network = Some(now + self.duration());
                self.log(format!("partition {}|{}", join(&side), join(&other)));
            }
            Kind::OneWay => {
                let from = self.pick(&ids);
                let to = loop {
                    let to = self.pick(&ids);
                    if to != from {
                        break to;
                    }
                };
                cluster.partition_one_way(from, to);
                self.network = Some(now + self.duration());
                self.log(format!("one-way {from}->{to}"));
            }
            Kind::Isolate => {
                // Usually the current leader of a random partition (cutting
                // off a leader is what tests CheckQuorum, leases and
                // re-election); a random node when no running node knows one.
                let (id, whose) = match self.leader_of_a_partition(cluster, &ids) {
                    Some((leader, p)) => (leader, format!(" (leader of p{p})")),
                    None => (self.pick(&ids), String::new()),
                };
                cluster.isolate(id);
                self.network = Some(now + self.duration());
                self.log(format!("isolate {id}{whose}"));
            }
            Kind::Lossy => {
                let faults = self.message_faults();
                // One link, one node's links both ways, or every link.
                let scope = match self.rng.random_range(0..3) {
                    0 => {
                        let from = self.pick(&ids);
                        let to = loop {
                            let to = self.pick(&ids);
                            if to != from {
                                break to;
                            }
                        };
                        cluster.set_message_faults(from, to, faults);
                        format!("{from}->{to}")
                    }
                    1 => {
                        let id = self.pick(&ids);
                        for &other in ids.iter().filter(|&&o| o != id) {
                            cluster.set_message_faults(id, other, faults);
                            cluster.set_message_faults(other, id, faults);
                        }
                        format!("{id}<->*")
                    }
                    _ => {
                        cluster.set_message_faults_everywhere(faults);
                        "*".to_owned()
                    }
                };
                self.network = Some(now + self.duration());
                self.log(format!("lossy {scope} {faults}"));
            }
            Kind::Crash => {
                let id = self.pick(&ids);
                debug_assert_eq!(cluster.state(id), NodeState::Up);
                if self.rng.random_range(0..100) < self.config.power_loss_percent {
                    let report = cluster.power_loss(id);
                    self.log(format!("power-loss {id} {report:?}"));
                } else {
                    cluster.kill(id);
                    self.log(format!("kill {id}"));
                }
                self.node = Some((NodeFault::Down(id), now + self.duration()));
            }
            Kind::Pause => {
                let id = self.pick(&ids);
                cluster.pause(id);
                self.node = Some((NodeFault::Paused(id), now + self.duration()));
                self.log(format!("pause {id}"));
            }
            Kind::Drift => {
                let id = self.pick(&ids);
                let max = self.config.max_drift_ppm;
                let ppm = self.rng.random_range(-max..=max);
                cluster.clock(id).set_drift_ppm(ppm);
                self.log(format!("drift {id} {ppm}ppm"));
            }
            Kind::Jump => {
                let id = self.pick(&ids);
                let max = self.config.max_jump.as_millis().max(1) as u64;
                let by = Duration::from_millis(self.rng.random_range(1..=max));
                cluster.clock(id).jump_forward(by);
                self.log(format!("jump {id} +{}ms", by.as_millis()));
            }
            Kind::CrashAfterAppend => {
                let Some((leader, p)) = self.leader_of_a_partition(cluster, &ids) else {
                    return;
                };
                // Nobody, or one other node (a bare majority of three
                // replicas, if it holds that partition).
                let others: Vec<NodeId> = ids.iter().copied().filter(|&i| i != leader).collect();
                let reach: BTreeSet<NodeId> = match self.rng.random_bool(0.5) {
                    true => BTreeSet::from([self.pick(&others)]),
                    false => BTreeSet::new(),
                };
                let notify = cluster.arm_append_trap(TrapSpec::next_entries(leader, reach.clone()));
                self.trap = Some((leader, notify, now + APPEND_TRAP_PATIENCE));
                self.log(format!(
                    "append trap on {leader} (leader of p{p}), reaching {}",
                    match reach.first() {
                        Some(n) => n.to_string(),
                        None => "nobody".to_owned(),
                    }
                ));
            }
            Kind::LeaseEdge if node_free && self.rng.random_bool(0.5) => {
                // Counted and traced by the script itself.
                self.lease_restart_due = true;
                return;
            }
            Kind::LeaseEdge => {
                let Some((leader, p)) = self.leader_of_a_partition(cluster, &ids) else {
                    return;
                };
                clocks_at_the_bound_against(cluster, leader);
                let bound = SAFE_DRIFT_PPM;
                cluster.isolate(leader);
                self.aim_probe(Some(leader));
                self.network = Some(now + self.duration());
                self.log(format!(
                    "lease-edge {leader} (leader of p{p}): isolated, its clock -{bound}ppm, \
                     the others +{bound}ppm, probed with lease reads"
                ));
            }
            Kind::Figure8 => {
                // Counted and traced by the script itself.
                self.figure8_due = true;
                return;
            }
            Kind::Join => {
                let id = cluster.join_node();
                self.churned.joined.push(id);
                self.spend_churn(|c| c.joins -= 1);
                self.log(format!("join {id}"));
            }
            Kind::Drain => {
                // Counted and traced by the script itself.
                self.drain_due = true;
                return;
            }
            Kind::Lose => {
                // Any member running untouched by another fault (the
                // nemesis repairs its node fault by a restart).
                let trapped = self.trap.as_ref().map(|(id, _, _)| *id);
                let candidates: Vec<NodeId> = self
                    .members(cluster)
                    .into_iter()
                    .filter(|&id| cluster.state(id) == NodeState::Up && Some(id) != trapped)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let id = self.pick(&candidates);
                cluster.lose(id);
                self.churned.lost = Some(id);
                self.spend_churn(|c| c.loss = false);
                self.log(format!("lose {id} for good"));
            }
            Kind::StaleMessages => {
                let id = self.pick(&ids);
                let faults = MessageFaults {
                    drop_percent: 0,
                    duplicate_percent: 0,
                    delay: Some(STALE_DELAY),
                };
                for &other in ids.iter().filter(|&&o| o != id) {
                    cluster.set_message_faults(id, other, faults);
                }
                self.network = Some(now + self.duration());
                self.log(format!("stale {id}->* {faults}"));
            }
        }
        self.faults += 1;
    }

    /// A lossy link's setting: each rate up to its bound, and half the time
    /// a delay range within `max_delay`. Never all off (half the draws
    /// set a delay range, so the loop ends).
    fn message_faults(&mut self) -> MessageFaults {
        let c = &self.config;
        let (max_drop, max_dup) = (c.max_drop_percent, c.max_duplicate_percent);
        let max_delay = c.max_delay.as_millis() as u64;
        loop {
            let delay = self.rng.random_bool(0.5).then(|| {
                let a = self.rng.random_range(0..=max_delay);
                let b = self.rng.random_range(0..=max_delay);
                (
                    Duration::from_millis(a.min(b)),
                    Duration::from_millis(a.max(b)),
                )
            });
            let faults = MessageFaults {
                drop_percent: self.rng.random_range(0..=max_drop),
                duplicate_percent: self.rng.random_range(0..=max_dup),
                delay,
            };
            if !faults.is_none() {
                return faults;
            }
        }
    }

    /// Ends every fault: heals the network (lossy links included), restarts
    /// the node that is down, resumes the one that is paused. Clock drift
    /// stays.
    pub fn heal_all(&mut self, cluster: &mut SimCluster) {
        cluster.heal();
        self.aim_probe(None);
        if let Some((id, _, _)) = self.trap.take() {
            cluster.disarm_append_trap(id);
            self.log(format!("append trap on {id} disarmed"));
        }
        self.network = None;
        if let Some((fault, _)) = self.node.take() {
            self.repair(cluster, fault);
        }
        for id in cluster.node_ids() {
            match cluster.state(id) {
                NodeState::Up | NodeState::Lost => {}
                NodeState::Paused => cluster.resume(id),
                NodeState::Down => cluster.restart(id),
            }
        }
        self.log("heal-all".to_owned());
    }
}

/// Every clock at the drift bound against `leader`: its own slow, the
/// others fast, so its lease runs as long as the bound allows while the
/// others' election timers run out as early as it allows.
fn clocks_at_the_bound_against(cluster: &SimCluster, leader: NodeId) {
    for id in cluster.node_ids() {
        let ppm = if id == leader {
            -SAFE_DRIFT_PPM
        } else {
            SAFE_DRIFT_PPM
        };
        cluster.clock(id).set_drift_ppm(ppm);
    }
}

fn join(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|i| i.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
