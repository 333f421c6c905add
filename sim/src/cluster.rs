//! A simulated ringkv cluster: N real nodes on madsim's network, and the
//! levers a nemesis pulls (kill, power loss, restart, pause, partition,
//! lossy links, clocks).
//!
//! Node `i` (its `NodeId` is `i`, from 1) runs `ringkv_node::server::Server`
//! on a madsim node at `10.0.0.i`, gRPC on port [`GRPC_PORT`], no REST. Its
//! [`SimDisk`] and [`SkewedClock`] belong to the harness and outlive restarts,
//! as does the cluster's [`LinkFaults`] table, which every node's peer client
//! consults before each batch it sends (drop, duplicate, delay); each
//! incarnation gets a fresh core seed derived from the cluster seed.
//! Clients run on separate madsim nodes at `10.0.1.k` ([`SimCluster::client`]),
//! because the test's supervisor task has no IP.
//!
//! Not here: the fault schedule (nemesis), the workload and the checkers.
//! Every node's core reports what it applies, commits and wins
//! ([`Observation`]s) to one shared [`Invariants`] checker as it happens
//! ([`SimCluster::invariant_violations`]); a test of one cluster's history
//! asserts it found nothing.
//!
//! Must be used inside a madsim runtime (a `#[madsim::test]` or `Runtime::block_on`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle as SimNodeHandle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringkv_core::NodeId;
use ringkv_core::check::invariants::{InvariantViolation, Invariants};
use ringkv_core::node::Observation;
use ringkv_node::clock::Clock;
use ringkv_node::config::ServerConfig;
use ringkv_node::disk::Disk;
use ringkv_node::handle::{NodeHandle, Observer};
use ringkv_node::server::Server;
use ringkv_node::transport::{Handshake, TransportStats};
use ringkv_proto::v1::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

use crate::message_faults::{LinkFaults, MessageFaults, SprungTrap, TrapSpec};
use crate::sim_clock::SkewedClock;
use crate::sim_disk::{CrashReport, DiskLatency, SimDisk};

/// Every node serves gRPC (client API and peer transport) on this port.
pub const GRPC_PORT: u16 = 9090;
/// Where a node keeps its data, on its own [`SimDisk`].
pub const DATA_DIR: &str = "/data";
/// Client nodes an individual cluster may create (`10.0.1.1` ..).
pub const MAX_CLIENTS: u8 = 250;

/// How the simulated nodes are configured. The defaults keep a run small and
/// fast: few partitions, few tokens, short timeouts.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub partition_count: u32,
    pub replication_factor: u32,
    pub tokens_per_node: u32,
    pub tick_interval: Duration,
    pub request_timeout: Duration,
    /// Raft tunables in place of the defaults (`None`: the defaults).
    pub raft: Option<ringkv_core::raft::RaftConfig>,
    /// Each node's initial clock offset and drift (ppm), by node index from
    /// 0; nodes past the end get an exact clock.
    pub clocks: Vec<(Duration, i64)>,
    /// Clocks may jump forward (a nemesis setting): the lease invariant then
    /// judges only each leader's own arithmetic, not that no later leader
    /// exists at a lease read (a follower whose clock jumped votes early).
    pub clocks_jump: bool,
    /// Whether the placement controller moves healthy groups toward the
    /// ring over the `up` members (off by default: the mover nemesis moves
    /// replicas off the ring, and the controller would move them back).
    /// Re-replication of dead members and drains happen either way.
    pub rebalance: bool,
    /// How long the failure detector must hold a member down before the
    /// controller marks it dead (`--dead-after`).
    pub dead_after: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            partition_count: 8,
            replication_factor: 3,
            tokens_per_node: 8,
            tick_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(2),
            raft: None,
            clocks: Vec::new(),
            clocks_jump: false,
            rebalance: false,
            dead_after: Duration::from_secs(ringkv_node::config::defaults::DEAD_AFTER_SECS),
        }
    }
}

/// Whether the harness last left a node running, paused or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Paused,
    Down,
    /// Gone for good ([`SimCluster::lose`]): never restarted, left out of
    /// [`SimCluster::node_ids`].
    Lost,
}

/// What a node's `init` shares with the harness; lives across restarts.
#[derive(Default)]
struct NodeShared {
    incarnations: AtomicU64,
    /// The running incarnation, once it has started.
    running: Mutex<Option<Running>>,
    /// Why incarnations failed to start or stopped on their own.
    failures: Mutex<Vec<String>>,
}

/// What the harness can see of a running incarnation.
#[derive(Clone)]
struct Running {
    node: NodeHandle,
    transport: Arc<TransportStats>,
    handshake: Arc<Handshake>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value here stays consistent if a holder panics.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct SimNode {
    sim_id: madsim::task::NodeId,
    disk: Arc<SimDisk>,
    clock: SkewedClock,
    shared: Arc<NodeShared>,
    state: NodeState,
}

/// A cluster of simulated ringkv nodes. See the module docs.
pub struct SimCluster {
    handle: Handle,
    seed: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: BTreeMap<u8, SimClient>,
    /// Fault decisions (which unsynced writes survive a power loss).
    rng: ChaCha8Rng,
    /// Per-link drop / duplicate / delay of peer batches, shared with every
    /// node's peer client.
    message_faults: Arc<LinkFaults>,
    /// Raft's safety properties, judged on every node's observations.
    invariants: Arc<Mutex<Invariants>>,
    /// Feeds `invariants`; every node's incarnations share it.
    observer: Observer,
    options: ClusterOptions,
    /// The disks' latency, for nodes that join later.
    disk_latency: Option<DiskLatency>,
}

/// madsim 0.2 never drops a task still waiting when a run ends: a node's
/// tasks, with everything they hold (stores, WAL images, values of up to
/// 1 MiB), would stay in memory for the rest of the test process, tens of
/// MB per seed. Killing every simulated host drops them.
impl Drop for SimCluster {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            self.handle.kill(node.sim_id);
        }
        for client in self.clients.values() {
            self.handle.kill(client.node.id());
        }
    }
}

/// How soon after receiving a heartbeat round a follower may vote again at
/// the earliest: `election_ticks - 1` of its ticks at the fastest the drift
/// bound lets its clock run. A lease read served later than that after its
/// round went out breaks lease safety (`check::invariants::lease`).
pub fn lease_bound(options: &ClusterOptions) -> Duration {
    let raft = options.raft.clone().unwrap_or_default();
    let ticks = f64::from(raft.election_ticks.saturating_sub(1));
    let rho = f64::from(raft.max_clock_drift_ppm) / 1e6;
    options.tick_interval.mul_f64(ticks / (1.0 + rho))
}

/// The address node `id` listens on.
pub fn grpc_addr(id: NodeId) -> SocketAddr {
    SocketAddr::new(node_ip(id), GRPC_PORT)
}

fn node_ip(id: NodeId) -> IpAddr {
    let last = u8::try_from(id.0).expect("node ids fit in the last octet");
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// A core seed per node and incarnation, all derived from the cluster seed
/// (splitmix64 over the mixed inputs).
fn node_seed(cluster_seed: u64, id: NodeId, incarnation: u64) -> u64 {
    let mut z = cluster_seed
        ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ incarnation.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimCluster {
    /// Starts `n` nodes (ids 1..=n) and returns at once; they elect leaders
    /// on their own (see [`SimCluster::wait_ready`]).
    pub fn new(n: u64, seed: u64, options: ClusterOptions) -> SimCluster {
        assert!((1..=250).contains(&n), "1..=250 nodes, got {n}");
        let handle = Handle::current();
        let peers: BTreeMap<NodeId, SocketAddr> =
            (1..=n).map(NodeId).map(|id| (id, grpc_addr(id))).collect();
        let message_faults = Arc::new(LinkFaults::new(seed));
        let mut invariants = Invariants::with_lease_bound(lease_bound(&options));
        if options.clocks_jump {
            invariants = invariants.clocks_may_jump();
        }
        let invariants = Arc::new(Mutex::new(invariants));
        let observer = {
            let invariants = invariants.clone();
            let origin = tokio::time::Instant::now();
            Observer(Arc::new(move |o: &Observation| {
                for v in lock(&invariants).observe_at(o, origin.elapsed()) {
                    tracing::error!(violation = %v, "sim: Raft invariant broken");
                }
            }))
        };
        let mut cluster = SimCluster {
            handle,
            seed,
            nodes: BTreeMap::new(),
            clients: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            message_faults,
            invariants,
            observer,
            options,
            disk_latency: None,
        };
        for (index, &id) in peers.keys().enumerate() {
            let (offset, drift) = cluster
                .options
                .clocks
                .get(index)
                .copied()
                .unwrap_or_default();
            let config = server_config(id, &peers, &cluster.options);
            cluster.spawn_node(config, SkewedClock::new(offset, drift));
        }
        cluster
    }

    /// Creates the madsim node that runs `config`'s server, with a fresh
    /// disk, and starts it.
    fn spawn_node(&mut self, mut config: ServerConfig, clock: SkewedClock) {
        let id = config.node_id;
        config.peer_faults = Some(self.message_faults.clone());
        config.observer = Some(self.observer.clone());
        let disk = Arc::new(SimDisk::new());
        let shared = Arc::new(NodeShared::default());
        let seed = self.seed;
        let init = {
            let (disk, clock, shared) = (disk.clone(), clock.clone(), shared.clone());
            move || {
                run_node(
                    seed,
                    config.clone(),
                    disk.clone(),
                    clock.clone(),
                    shared.clone(),
                )
            }
        };
        let sim = self
            .handle
            .create_node()
            .name(format!("node-{}", id.0))
            .ip(node_ip(id))
            .init(init)
            .build();
        let node = SimNode {
            sim_id: sim.id(),
            disk,
            clock,
            shared,
            state: NodeState::Up,
        };
        self.nodes.insert(id, node);
    }

    /// Starts a new, empty node that joins the running cluster through
    /// every node in play (`--join`), with the next unused id, an exact
    /// clock and the disk latency of the others. Returns its id.
    pub fn join_node(&mut self) -> NodeId {
        let id = NodeId(self.nodes.keys().last().map_or(1, |last| last.0 + 1));
        let through: Vec<String> = self
            .node_ids()
            .into_iter()
            .map(|m| grpc_addr(m).to_string())
            .collect();
        let mut config = server_config(id, &BTreeMap::from([(id, grpc_addr(id))]), &self.options);
        config.join = through;
        self.spawn_node(config, SkewedClock::new(Duration::ZERO, 0));
        if let Some(latency) = self.disk_latency {
            let disk = &self.node(id).disk;
            disk.set_latency(Some(latency), node_seed(self.seed ^ 0xd15c, id, 0));
        }
        tracing::info!(node = %id, "sim: join");
        id
    }

    /// Kills the node for good: its disk is gone with it, and it is never
    /// restarted (the cluster must mark it dead and re-create its
    /// replicas elsewhere).
    pub fn lose(&mut self, id: NodeId) {
        if self.state(id) != NodeState::Down {
            self.kill(id);
        }
        self.node_mut(id).state = NodeState::Lost;
        tracing::info!(node = %id, "sim: lost for good");
    }

    /// Every node's disk takes time as `latency` says from now on (`None`:
    /// instant), each drawing from its own RNG seeded from the cluster seed
    /// and its id. Disks keep it across restarts.
    pub fn set_disk_latency(&mut self, latency: Option<DiskLatency>) {
        self.disk_latency = latency;
        for (&id, node) in &self.nodes {
            node.disk
                .set_latency(latency, node_seed(self.seed ^ 0xd15c, id, 0));
        }
        match latency {
            Some(l) => tracing::info!(%l, "sim: disk latency"),
            None => tracing::info!("sim: disks instant"),
        }
    }

    /// Every broken Raft safety property the nodes' observations showed so
    /// far (see `ringkv_core::check::invariants`). Judged across
    /// incarnations: a node restarted on another cluster's disk (or a wiped
    /// one) is the same replica to the checker, so only a test of one
    /// cluster's history should assert this is empty.
    pub fn invariant_violations(&self) -> Vec<InvariantViolation> {
        lock(&self.invariants).violations().to_vec()
    }

    /// Observations judged so far (zero means nothing was checked).
    pub fn observations_judged(&self) -> u64 {
        lock(&self.invariants).observed()
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How the nodes are configured.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The ids of the nodes in play (every node but the ones lost for
    /// good), ascending.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.state != NodeState::Lost)
            .map(|(&id, _)| id)
            .collect()
    }

    fn node(&self, id: NodeId) -> &SimNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    pub fn state(&self, id: NodeId) -> NodeState {
        self.node(id).state
    }

    /// The node's clock, shared with the running node: changes apply at once.
    pub fn clock(&self, id: NodeId) -> &SkewedClock {
        &self.node(id).clock
    }

    /// The node's disk (it survives restarts).
    pub fn disk(&self, id: NodeId) -> &Arc<SimDisk> {
        &self.node(id).disk
    }

    /// The running incarnation's handle to its core (for inspecting its
    /// view), or `None` while it is down or still recovering.
    pub fn node_handle(&self, id: NodeId) -> Option<NodeHandle> {
        lock(&self.node(id).shared.running)
            .as_ref()
            .map(|r| r.node.clone())
    }

    /// The running incarnation's transport counters (batches sent, faults
    /// injected into them, ...); `None` while it is down or recovering.
    /// They start from zero with each incarnation.
    /// The running incarnation's side of the peer handshake (its identity,
    /// cluster record and the refusals it has seen).
    pub fn handshake(&self, id: NodeId) -> Option<Arc<Handshake>> {
        lock(&self.node(id).shared.running)
            .as_ref()
            .map(|r| r.handshake.clone())
    }

    pub fn transport_stats(&self, id: NodeId) -> Option<Arc<TransportStats>> {
        lock(&self.node(id).shared.running)
            .as_ref()
            .map(|r| r.transport.clone())
    }

    /// Handles to the nodes' running incarnations that stay usable while the
    /// cluster itself is borrowed elsewhere (by the nemesis, say).
    pub fn handles(&self) -> NodeHandles {
        NodeHandles {
            nodes: self
                .nodes
                .iter()
                .filter(|(_, n)| n.state != NodeState::Lost)
                .map(|(&id, n)| (id, n.shared.clone()))
                .collect(),
        }
    }

    /// Every failure of any incarnation so far (a node that could not start
    /// or stopped on its own), as `(node, message)`. Empty in a healthy run.
    pub fn failures(&self) -> Vec<(NodeId, String)> {
        self.nodes
            .iter()
            .flat_map(|(&id, n)| {
                lock(&n.shared.failures)
                    .clone()
                    .into_iter()
                    .map(move |f| (id, f))
            })
            .collect()
    }

    /// Crash: every task of the node stops at once. Unsynced writes stay on
    /// its disk (a process crash, not a power loss; see [`Self::power_loss`]).
    pub fn kill(&mut self, id: NodeId) {
        assert_ne!(self.state(id), NodeState::Lost, "{id} was lost for good");
        let handle = self.handle.clone();
        let node = self.node_mut(id);
        handle.kill(node.sim_id);
        node.disk.release_locks();
        *lock(&node.shared.running) = None;
        node.state = NodeState::Down;
        tracing::info!(node = %id, "sim: kill");
    }

    /// Power loss: the disk settles its unsynced writes (kept, lost or torn,
    /// drawn from the cluster's seeded RNG), then the node is killed.
    pub fn power_loss(&mut self, id: NodeId) -> CrashReport {
        let disk = self.node(id).disk.clone();
        let report = disk.crash(&mut self.rng);
        self.kill(id);
        tracing::info!(node = %id, ?report, "sim: power loss");
        report
    }

    /// Starts the node again from its disk (killing it first if it is up or
    /// paused: madsim's restart of a live node fails with "address in use").
    pub fn restart(&mut self, id: NodeId) {
        assert_ne!(self.state(id), NodeState::Lost, "{id} was lost for good");
        if self.state(id) != NodeState::Down {
            self.kill(id);
        }
        let handle = self.handle.clone();
        let node = self.node_mut(id);
        handle.restart(node.sim_id);
        node.state = NodeState::Up;
        tracing::info!(node = %id, "sim: restart");
    }

    /// Freezes every task of the node (a GC pause, a stopped VM); its
    /// sockets stay open and its peers see silence.
    pub fn pause(&mut self, id: NodeId) {
        assert_eq!(
            self.state(id),
            NodeState::Up,
            "pause needs a running node {id}"
        );
        let handle = self.handle.clone();
        let node = self.node_mut(id);
        handle.pause(node.sim_id);
        node.state = NodeState::Paused;
        tracing::info!(node = %id, "sim: pause");
    }

    pub fn resume(&mut self, id: NodeId) {
        assert_eq!(
            self.state(id),
            NodeState::Paused,
            "resume needs a paused node {id}"
        );
        let handle = self.handle.clone();
        let node = self.node_mut(id);
        handle.resume(node.sim_id);
        node.state = NodeState::Up;
        tracing::info!(node = %id, "sim: resume");
    }

    /// Cuts the link between two nodes both ways.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    /// Drops everything `from` sends to `to`; the other direction still works.
    pub fn partition_one_way(&self, from: NodeId, to: NodeId) {
        NetSim::current().clog_link(self.node(from).sim_id, self.node(to).sim_id);
        tracing::info!(from = %from, to = %to, "sim: clog link");
    }

    /// Cuts `id` off from every other node (clients still reach it).
    pub fn isolate(&self, id: NodeId) {
        for other in self.node_ids() {
            if other != id {
                self.partition(id, other);
            }
        }
    }

    /// From now on, the peer batches `from` sends `to` are dropped,
    /// duplicated or delayed as `faults` says (decided by the link's seeded
    /// RNG). Survives restarts of either node; [`Self::heal`] clears it.
    pub fn set_message_faults(&self, from: NodeId, to: NodeId, faults: MessageFaults) {
        let _ = (self.node(from), self.node(to));
        assert_ne!(from, to, "a node sends nothing to itself");
        self.message_faults.set(from, to, faults);
        tracing::info!(from = %from, to = %to, %faults, "sim: message faults");
    }

    /// [`Self::set_message_faults`] on every link between two nodes, both ways.
    pub fn set_message_faults_everywhere(&self, faults: MessageFaults) {
        for from in self.node_ids() {
            for to in self.node_ids() {
                if from != to {
                    self.set_message_faults(from, to, faults);
                }
            }
        }
    }

    /// Arms the append trap on `node` (see
    /// [`LinkFaults::arm_append_trap`]): told through the returned `Notify`
    /// when it springs.
    pub fn arm_append_trap(&self, spec: TrapSpec) -> Arc<tokio::sync::Notify> {
        let _ = self.node(spec.node);
        self.message_faults.arm_append_trap(spec)
    }

    /// What the append trap on `node` caught, once sprung.
    pub fn sprung_append_trap(&self, node: NodeId) -> Option<SprungTrap> {
        self.message_faults.sprung(node)
    }

    /// Removes the append trap on `node`, if any.
    pub fn disarm_append_trap(&self, node: NodeId) {
        self.message_faults.disarm(node);
    }

    /// Removes every append trap.
    pub fn disarm_append_traps(&self) {
        self.message_faults.disarm_all();
    }

    /// What the link `from -> to` does to peer batches now.
    pub fn message_faults(&self, from: NodeId, to: NodeId) -> MessageFaults {
        self.message_faults.get(from, to)
    }

    /// Every link delivers peer batches untouched again (batches already
    /// held back still arrive late).
    pub fn clear_message_faults(&self) {
        self.message_faults.clear();
        tracing::info!("sim: message faults cleared");
    }

    /// Restores every link between nodes and to and from clients, and
    /// clears every message fault.
    pub fn heal(&self) {
        self.message_faults.clear();
        let net = NetSim::current();
        let ids: Vec<_> = self.nodes.values().map(|n| n.sim_id).collect();
        for &a in &ids {
            net.unclog_node(a);
            for &b in &ids {
                if a != b {
                    net.unclog_link(a, b);
                }
            }
        }
        tracing::info!("sim: heal");
    }

    /// Client node `k` (at `10.0.1.k`, `k` from 1), created on first use.
    pub fn client(&mut self, k: u8) -> SimClient {
        assert!(
            (1..=MAX_CLIENTS).contains(&k),
            "client numbers are 1..={MAX_CLIENTS}"
        );
        let handle = &self.handle;
        self.clients
            .entry(k)
            .or_insert_with(|| SimClient {
                node: handle
                    .create_node()
                    .name(format!("client-{k}"))
                    .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, k)))
                    .build(),
            })
            .clone()
    }

    /// Waits (in simulated time, at most `timeout`) until every running node
    /// knows a leader for every partition it replicates. Returns whether they do.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.wait_ready_among(&self.node_ids(), timeout).await
    }

    /// As [`Self::wait_ready`], for the running nodes among `ids` only (a
    /// drained node, removed from the cluster, may keep a replica that
    /// never heard it was removed from its group, and so knows no leader).
    pub async fn wait_ready_among(&self, ids: &[NodeId], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = ids
                .iter()
                .filter(|id| self.state(**id) == NodeState::Up)
                .all(|&id| self.node_handle(id).is_some_and(|h| h.view().ready));
            if ready {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn server_config(
    id: NodeId,
    peers: &BTreeMap<NodeId, SocketAddr>,
    options: &ClusterOptions,
) -> ServerConfig {
    let mut c = ServerConfig::new(id, peers.clone(), grpc_addr(id), PathBuf::from(DATA_DIR));
    c.cluster_id = "ringkv-sim".to_owned();
    c.partition_count = options.partition_count;
    c.replication_factor = options.replication_factor;
    c.tokens_per_node = options.tokens_per_node;
    c.tick_interval = options.tick_interval;
    c.request_timeout = options.request_timeout;
    c.raft = options.raft.clone();
    c.rebalance = options.rebalance;
    c.dead_after = options.dead_after;
    c
}

/// One incarnation of a node: the task madsim's `init` (re)starts. A node
/// that fails records why and exits, as its process would.
async fn run_node(
    cluster_seed: u64,
    config: ServerConfig,
    disk: Arc<SimDisk>,
    clock: SkewedClock,
    shared: Arc<NodeShared>,
) {
    let id = config.node_id;
    let incarnation = shared.incarnations.fetch_add(1, Ordering::Relaxed);
    let seed = node_seed(cluster_seed, id, incarnation);
    let disk: Arc<dyn Disk> = disk;
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let failure = match Server::start(config, clock, disk, seed).await {
        Ok(mut server) => {
            *lock(&shared.running) = Some(Running {
                node: server.node.clone(),
                transport: server.stats.clone(),
                handshake: server.handshake.clone(),
            });
            match server.wait().await {
                Ok(()) => format!("incarnation {incarnation} stopped by itself"),
                Err(e) => format!("incarnation {incarnation} failed: {e:#}"),
            }
        }
        Err(e) => format!("incarnation {incarnation} could not start: {e:#}"),
    };
    tracing::error!(node = %id, %failure, "sim: node exited");
    *lock(&shared.running) = None;
    lock(&shared.failures).push(failure);
}

/// See [`SimCluster::handles`].
#[derive(Clone)]
pub struct NodeHandles {
    nodes: BTreeMap<NodeId, Arc<NodeShared>>,
}

impl NodeHandles {
    /// The node ids, ascending.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// As [`SimCluster::node_handle`].
    pub fn get(&self, id: NodeId) -> Option<NodeHandle> {
        lock(&self.nodes.get(&id)?.running)
            .as_ref()
            .map(|r| r.node.clone())
    }
}

/// A madsim node with an IP from which a test talks to the cluster.
#[derive(Clone)]
pub struct SimClient {
    node: SimNodeHandle,
}

impl SimClient {
    /// Runs `f` on this client node and waits for its result.
    pub async fn run<F, T>(&self, f: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.node
            .spawn(f)
            .await
            .expect("client tasks are never killed")
    }
}

/// A `Kv` client for node `id`. Call it on a client node ([`SimClient::run`]).
pub async fn connect_kv(id: NodeId) -> Result<KvClient<Channel>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{}", grpc_addr(id)))
        .expect("a socket address is a valid URI authority")
        .connect_timeout(Duration::from_secs(1));
    Ok(KvClient::new(endpoint.connect().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_seeds_differ_by_node_and_incarnation() {
        let a = node_seed(1, NodeId(1), 0);
        assert_ne!(a, node_seed(1, NodeId(2), 0));
        assert_ne!(a, node_seed(1, NodeId(1), 1));
        assert_ne!(a, node_seed(2, NodeId(1), 0));
        assert_eq!(a, node_seed(1, NodeId(1), 0));
    }
}
