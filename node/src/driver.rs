//! The event loop that owns one `ringkv_core::node::Node` and feeds it.
//!
//! One task runs the core: it takes inputs from a channel (peer batches,
//! client requests, durable-IO notices), drains a burst of them, then drains
//! the core's outputs: WAL batches go to the storage task, peer batches to the
//! per-peer senders, replies to the waiting callers, forwards to the
//! forwarder's stream to the target node. The loop makes no protocol decisions; the core does.
//!
//! The storage task writes whatever WAL batches have queued up while the
//! previous write was in flight, with one sync for all of them (group commit),
//! then reports the newest one durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringkv_core::io::{IoId, IoRequest};
use ringkv_core::node::{
    ClientRequest, Drain, Event, Node, NodeStats, RegisterError, Registration, Reply, RequestId,
    TokenChange,
};
use ringkv_core::watch::HistoryLimits;
use ringkv_core::{PartitionId, Time};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::disk::run_blocking;
#[cfg(madsim)]
use crate::handle::Observer;
use crate::handle::{ClientResult, Input, JoinAnswer, NodeHandle, PartitionDigest};
use crate::members::MemberSync;
use crate::storage::{Storage, StorageStats};
use crate::transport::{Forwarder, PeerSenders};
use crate::view::{ClusterView, build_view};
use crate::watch::WatchHub;

/// Inputs drained per loop turn before outputs are flushed: large enough to
/// coalesce a burst into one WAL batch and one message per peer, small enough
/// to keep timers and replies moving.
const MAX_INPUTS_PER_TURN: usize = 512;
/// Capacity of the input queue; senders wait when it is full.
pub const INPUT_QUEUE: usize = 16 * 1024;
/// How often the published cluster view is refreshed.
const VIEW_INTERVAL: Duration = Duration::from_millis(200);

/// Where the driver sends its outputs.
pub struct DriverIo {
    pub peers: PeerSenders,
    pub forwarder: Forwarder,
    /// Carries the member list into the transport and `cluster.toml`.
    pub members: MemberSync,
    /// How other members are dialled (handed to the API's watch relays).
    pub dialer: crate::transport::Dialer,
    /// This node's identity and admission checks (handed to the APIs: a
    /// member's calls to the client services carry its hello).
    pub handshake: Arc<crate::transport::Handshake>,
    /// The clients' access tokens, kept up with each adopted document.
    pub access: Arc<crate::auth::Access>,
    /// Simulation only: where the core's observations go (see
    /// `ServerConfig::observer`).
    #[cfg(madsim)]
    pub observer: Option<Observer>,
}

/// The event loop. Built by [`Driver::new`], run by [`Driver::run`].
pub struct Driver {
    node: Node,
    clock: Arc<dyn Clock>,
    rx: mpsc::Receiver<Input>,
    tx: mpsc::Sender<Input>,
    io_tx: mpsc::UnboundedSender<IoRequest>,
    io: DriverIo,
    pending: HashMap<RequestId, Pending>,
    next_request: u64,
    view_tx: watch::Sender<Arc<ClusterView>>,
    next_view: Time,
    started: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    watches: Arc<WatchHub>,
}

struct Pending {
    req: ClientRequest,
    reply: oneshot::Sender<ClientResult>,
}

impl Driver {
    /// Wires a driver around a started core and its storage. Returns the
    /// driver, the handle for the APIs, and the storage task, which ends
    /// (and lets go of the data directory) once the driver is gone.
    pub fn new(
        node: Node,
        storage: Storage,
        clock: Arc<dyn Clock>,
        io: DriverIo,
    ) -> (Driver, NodeHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let (io_tx, io_rx) = mpsc::unbounded_channel();
        let ring = Arc::new(node.ring().clone());
        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView {
            node_id: node.id(),
            members: Vec::new(),
            partitions: Vec::new(),
            metadata_group: None,
            ready: false,
            stats: NodeStats::default(),
            pending_requests: 0,
            compactions_queued: 0,
            metadata_version: 0,
            metadata_leader: None,
            controller: false,
            plan: None,
        }));
        let stopped = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let (storage_stats_tx, storage_stats) = watch::channel(storage.stats());
        let storage_task = tokio::spawn(storage_task(storage, io_rx, tx.clone(), storage_stats_tx));
        let watches = Arc::new(WatchHub::new(HistoryLimits::default()));
        let handle = NodeHandle {
            tx: tx.clone(),
            watches: watches.clone(),
            view: view_rx,
            storage_stats,
            ring,
            started: started.clone(),
            stopped: stopped.clone(),
            requests: Arc::default(),
            closing: Arc::default(),
            dialer: io.dialer.clone(),
            handshake: io.handshake.clone(),
            access: io.access.clone(),
        };
        if let Some(doc) = node.metadata() {
            io.access.update(doc);
        }
        let driver = Driver {
            node,
            clock,
            rx,
            tx,
            io_tx,
            io,
            pending: HashMap::new(),
            next_request: 1,
            view_tx,
            next_view: Time::from_millis(0),
            started,
            stopped,
            watches,
        };
        (driver, handle, storage_task)
    }

    /// The sender for inputs (the peer service feeds batches through it).
    pub fn input(&self) -> mpsc::Sender<Input> {
        self.tx.clone()
    }

    /// Runs until storage fails, the core halts, or every input sender is
    /// gone. Returns the error, if that is why it stopped.
    pub async fn run(mut self) -> Result<(), String> {
        self.started.store(true, Ordering::Relaxed);
        let result = self.event_loop().await;
        self.stopped.store(true, Ordering::Relaxed);
        // Requests still pending are answered when `self` drops their reply
        // channels (see `NodeHandle::request_with_hops`).
        result
    }

    async fn event_loop(&mut self) -> Result<(), String> {
        self.node.handle_wall_clock(self.clock.unix_ms());
        self.node.handle_timeout(self.clock.now());
        self.drain_outputs()?;
        loop {
            let deadline = self.node.poll_timeout();
            let sleep = deadline.map(|d| self.clock.sleep_until(d));
            let cleared = self.io.peers.cleared();
            // `biased` (inputs first; the deadline is re-checked below either
            // way): an unbiased select! draws from tokio's thread-local RNG,
            // seeded from a process-wide counter, so a seed would not replay
            // under madsim.
            tokio::select! {
                biased;
                input = self.rx.recv() => {
                    let Some(input) = input else { return Ok(()) };
                    self.handle(input)?;
                    for _ in 1..MAX_INPUTS_PER_TURN {
                        match self.rx.try_recv() {
                            Ok(input) => self.handle(input)?,
                            Err(_) => break,
                        }
                    }
                }
                // A congested link cleared: outputs are drained below.
                () = cleared => {}
                () = async { match sleep { Some(s) => s.await, None => std::future::pending().await } } => {}
            }
            let now = self.clock.now();
            if deadline.is_some_and(|d| now >= d) {
                self.node.handle_wall_clock(self.clock.unix_ms());
                self.node.handle_timeout(now);
            }
            self.drain_outputs()?;
        }
    }

    fn handle(&mut self, input: Input) -> Result<(), String> {
        let now = self.clock.now();
        self.node.handle_wall_clock(self.clock.unix_ms());
        match input {
            Input::Peer(batch) => self.node.handle_message(now, batch),
            Input::Request { req, hops, reply } => {
                let id = RequestId(self.next_request);
                self.next_request += 1;
                let pending = Pending {
                    req: req.clone(),
                    reply,
                };
                self.pending.insert(id, pending);
                self.node.handle_request(now, id, req, hops);
            }
            Input::Persisted(io) => self.node.handle_persisted(now, io),
            Input::Compact(partitions) => self.node.handle_compaction_request(now, &partitions),
            Input::StorageFailed(e) => {
                tracing::error!(error = %e, "storage failed; stopping this node");
                return Err(e);
            }
            Input::ConfChange {
                partition,
                change,
                reply,
            } => {
                let result = self.node.handle_conf_change(now, partition, change);
                let _ = reply.send(result);
            }
            Input::TokenChange { edit, reply } => {
                let result = self.node.handle_token_change(now, &edit);
                match &result {
                    Err(e) => tracing::warn!("access token change refused: {e}"),
                    Ok(TokenChange::Proposed) => tracing::info!("access token change proposed"),
                    Ok(TokenChange::Committed) => {}
                }
                let _ = reply.send(result);
            }
            Input::Drain { node, reply } => {
                let result = self.node.handle_drain(now, node);
                match &result {
                    Err(e) => tracing::warn!(%node, "drain refused: {e}"),
                    Ok(Drain::Proposed) => tracing::info!(%node, "drain proposed"),
                    Ok(Drain::Draining) => tracing::debug!(%node, "draining"),
                }
                let _ = reply.send(result);
            }
            Input::Register {
                node,
                address,
                incarnation,
                reply,
            } => {
                let result = self.node.handle_register(now, node, address, incarnation);
                match &result {
                    Err(e) => tracing::info!(%node, "join not taken: {e}"),
                    Ok(Registration::Proposed) => tracing::info!(%node, "registering a new member"),
                    Ok(Registration::Member(_)) => {}
                }
                let controller_address = match &result {
                    Err(RegisterError::NotController {
                        controller: Some(c),
                        ..
                    }) => self
                        .node
                        .metadata()
                        .and_then(|d| d.members.get(c))
                        .map(|m| m.address.clone()),
                    _ => None,
                };
                let _ = reply.send(JoinAnswer {
                    result,
                    controller_address,
                });
            }
            Input::Leave(reply) => {
                let _ = reply.send(self.node.handle_leaving(now));
            }
            Input::Digests(reply) => {
                let digests = self
                    .node
                    .ring()
                    .partitions()
                    .filter_map(|partition| {
                        let kv = self.node.kv(partition)?;
                        Some(PartitionDigest {
                            partition,
                            applied_index: kv.applied_index(),
                            digest: kv.digest(),
                        })
                    })
                    .collect();
                let _ = reply.send(digests);
            }
        }
        Ok(())
    }

    /// Hands every output of the core to its destination. `Err` once the
    /// core has halted (`Node::halted`): the node must stop.
    fn drain_outputs(&mut self) -> Result<(), String> {
        // Batches the transport had to drop since the last turn (a full
        // queue, a broken stream): the core stops streaming to those peers
        // until they answer again.
        let unreachable = self.io.peers.take_unreachable();
        let congestion = self.io.peers.congestion_changes();
        if !unreachable.is_empty() || !congestion.is_empty() {
            let now = self.clock.now();
            for peer in unreachable {
                self.node.handle_unreachable(now, peer);
            }
            for (peer, congested) in congestion {
                self.node.handle_peer_congestion(now, peer, congested);
            }
        }
        while let Some(io) = self.node.poll_io() {
            // The storage task lives as long as the driver; if it is gone the
            // node is stopping and the records need no home.
            let _ = self.io_tx.send(io);
        }
        while let Some(transmit) = self.node.poll_transmit() {
            self.io.peers.send(transmit);
        }
        while let Some((id, reply)) = self.node.poll_reply() {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            match reply {
                Reply::Done(result) => {
                    let _ = p.reply.send(result);
                }
                Reply::Forward {
                    to,
                    partition,
                    hops,
                } => self
                    .io
                    .forwarder
                    .forward(to, partition, hops, &p.req, p.reply),
            }
        }
        let mut feed = Vec::new();
        while let Some(item) = self.node.poll_feed() {
            feed.push(item);
        }
        self.watches.feed(feed);
        while let Some(event) = self.node.poll_event() {
            #[cfg(madsim)]
            if let (Event::Observed(o), Some(observer)) = (&event, &self.io.observer) {
                (observer.0)(o);
            }
            log_event(&event);
            if let Event::MetadataChanged { .. } = event {
                self.follow_members();
            }
        }
        if let Some(halt) = self.node.halted() {
            return Err(format!("the core stopped this node: {halt}"));
        }
        let now = self.clock.now();
        if now >= self.next_view {
            self.next_view = now + VIEW_INTERVAL;
            let view = build_view(&self.node, now);
            self.view_tx.send_replace(Arc::new(view));
        }
        Ok(())
    }

    /// New members in the adopted document: admitted, connected, recorded;
    /// removed ones: disconnected, refused.
    fn follow_members(&mut self) {
        let Some(doc) = self.node.metadata() else {
            return;
        };
        self.io.access.update(doc);
        let peers = &self.io.peers;
        let followed = self.io.members.follow(doc, |id| peers.has_peer(id));
        for (id, addr) in followed.added {
            tracing::info!(peer = %id, %addr, "connecting to a new member");
            self.io.peers.add_peer(id, addr.clone());
            self.io.forwarder.add_peer(id, addr);
        }
        for id in followed.removed {
            if self.io.peers.remove_peer(id) {
                tracing::info!(peer = %id, "disconnecting from a removed member");
            }
            self.io.forwarder.remove_peer(id);
        }
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Raft { partition, event } => {
            tracing::debug!(partition = %partition, event = ?event, "raft");
        }
        Event::PeerDown { peer } => tracing::warn!(peer = %peer, "peer is down"),
        Event::PeerUp { peer } => tracing::info!(peer = %peer, "peer is up"),
        Event::DroppedBatch { from, reason } => {
            tracing::warn!(from = %from, reason, "dropped a peer batch");
        }
        // Logged by the core, with the member count.
        Event::MetadataChanged { .. } => {}
        // For a simulator's checker (see `ServerConfig::observer`).
        Event::Observed(_) => {}
    }
}

/// Writes WAL batches. Everything that queued up while the previous write
/// was in flight goes into the next one, with one sync (group commit).
async fn storage_task(
    mut storage: Storage,
    mut rx: mpsc::UnboundedReceiver<IoRequest>,
    tx: mpsc::Sender<Input>,
    stats: watch::Sender<StorageStats>,
) {
    let mut last_pinned: Vec<PartitionId> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let last = batch.last().map(|r| r.id).unwrap_or(IoId(0));
        // A simulated disk's time: the write is in flight (not yet on the
        // disk, and lost if the node dies now) while everything else runs.
        // Requests arriving meanwhile wait for the next write, as they
        // would behind a real disk (group commit).
        #[cfg(madsim)]
        {
            let latency = storage.io_latency(&batch);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
        }
        let joined = run_blocking(move || {
            let result = storage.write(&batch);
            (storage, result)
        })
        .await;
        let (s, result) = match joined {
            Ok(v) => v,
            Err(e) => {
                let _ = tx
                    .send(Input::StorageFailed(format!("storage task panicked: {e}")))
                    .await;
                return;
            }
        };
        storage = s;
        if let Err(e) = result {
            let _ = tx.send(Input::StorageFailed(e.to_string())).await;
            return;
        }
        if tx.send(Input::Persisted(last)).await.is_err() {
            return;
        }
        stats.send_replace(storage.stats());
        let pinned = storage.partitions_pinning_old_segments();
        if !pinned.is_empty() && pinned != last_pinned {
            let _ = tx.send(Input::Compact(pinned.clone())).await;
        }
        last_pinned = pinned;
    }
}
