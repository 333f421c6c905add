//! The sending side: per peer and lane, a queue bounded in bytes and a task
//! that keeps one stream open and feeds it (see the module doc of
//! [`super`] for the design).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ringkv_core::io::{Lane, PeerBatch, Transmit};
use ringkv_core::{NodeId, Time, wire};
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::peer_client::PeerClient;
use tokio::sync::{Notify, mpsc};

use super::{
    BACKOFF_MAX, BACKOFF_MIN, FAILURE_LOG_INTERVAL, Handshake, TransportLimits, TransportStats,
    endpoint, human_bytes,
};
use crate::address::PeerAddr;
use crate::clock::Clock;
use crate::error_chain;

/// Frames handed to gRPC but not yet taken by it. Small, so that what waits
/// for a slow peer waits in the lane's queue, where it is bounded in bytes
/// and counted.
const FRAMES_IN_FLIGHT: usize = 2;

/// How soon a stream task asks again a peer that is still forming.
const PEER_FORMING_RETRY: Duration = Duration::from_millis(10);

/// A batch in a lane's queue, with the bytes it is accounted at.
struct Queued {
    batch: PeerBatch,
    bytes: usize,
}

/// One lane to one peer: the queue's sending end and its byte count.
struct LaneQueue {
    tx: mpsc::UnboundedSender<Queued>,
    queued_bytes: Arc<AtomicUsize>,
    limit: usize,
}

/// Both lanes to one peer, whether anything for it was lost since the
/// driver last asked, and whether its bulk lane is congested.
struct PeerLanes {
    control: LaneQueue,
    bulk: LaneQueue,
    lost: Arc<AtomicBool>,
    congested: Arc<AtomicBool>,
    /// What the driver was last told about `congested`.
    reported_congested: bool,
}

/// The senders of this node's streams to its peers.
pub struct PeerSenders {
    peers: BTreeMap<NodeId, PeerLanes>,
    stats: Arc<TransportStats>,
    limits: TransportLimits,
    /// Woken when a congested link clears (the driver waits on it).
    wake: Arc<Notify>,
    /// What a stream task to a peer added later needs.
    handshake: Arc<Handshake>,
    clock: Arc<dyn Clock>,
    hook: StreamHook,
}

impl PeerSenders {
    /// Starts two stream tasks per peer (every member but `me`), one per lane.
    /// No stream is opened before `handshake` has a cluster record; every
    /// stream carries its hello.
    pub fn start(
        handshake: Arc<Handshake>,
        peers: &BTreeMap<NodeId, PeerAddr>,
        clock: Arc<dyn Clock>,
        stats: Arc<TransportStats>,
        limits: TransportLimits,
    ) -> Self {
        Self::spawn(
            handshake,
            peers,
            clock,
            stats,
            limits,
            StreamHook::default(),
        )
    }

    /// [`PeerSenders::start`], with every outgoing batch put to the
    /// simulation harness's fault `hook` first.
    #[cfg(madsim)]
    pub fn start_with_faults(
        handshake: Arc<Handshake>,
        peers: &BTreeMap<NodeId, PeerAddr>,
        clock: Arc<dyn Clock>,
        stats: Arc<TransportStats>,
        limits: TransportLimits,
        hook: Arc<dyn super::faults::PeerFaults>,
    ) -> Self {
        let me = handshake.identity().node;
        let hook = StreamHook {
            faults: Some(super::faults::StreamFaults::new(hook, me)),
        };
        Self::spawn(handshake, peers, clock, stats, limits, hook)
    }

    fn spawn(
        handshake: Arc<Handshake>,
        peers: &BTreeMap<NodeId, PeerAddr>,
        clock: Arc<dyn Clock>,
        stats: Arc<TransportStats>,
        limits: TransportLimits,
        hook: StreamHook,
    ) -> Self {
        let mut senders = PeerSenders {
            peers: BTreeMap::new(),
            stats,
            limits,
            wake: Arc::new(Notify::new()),
            handshake,
            clock,
            hook,
        };
        for (&peer, addr) in peers {
            senders.add_peer(peer, addr.clone());
        }
        senders
    }

    /// Whether `peer` has stream tasks.
    pub fn has_peer(&self, peer: NodeId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// Starts the two stream tasks to `peer` at `addr` (a member that
    /// joined, or one this node learned of). Nothing if it has them, or if
    /// it is this node.
    pub fn add_peer(&mut self, peer: NodeId, addr: PeerAddr) {
        if peer == self.handshake.identity().node || self.peers.contains_key(&peer) {
            return;
        }
        let lost = Arc::new(AtomicBool::new(false));
        let congested = Arc::new(AtomicBool::new(false));
        let lane_queue = |lane: Lane| {
            let (tx, rx) = mpsc::unbounded_channel();
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            let task = StreamTask {
                peer,
                lane,
                addr: addr.clone(),
                rx,
                queued_bytes: queued_bytes.clone(),
                lost: lost.clone(),
                congested: (lane == Lane::Bulk).then(|| (congested.clone(), self.wake.clone())),
                clock: self.clock.clone(),
                stats: self.stats.clone(),
                handshake: self.handshake.clone(),
                limits: self.limits,
                hook: self.hook.clone(),
                failure_log: None,
            };
            tokio::spawn(task.run());
            LaneQueue {
                tx,
                queued_bytes,
                limit: self.limits.queue_bytes(lane),
            }
        };
        let control = lane_queue(Lane::Control);
        let bulk = lane_queue(Lane::Bulk);
        self.peers.insert(
            peer,
            PeerLanes {
                control,
                bulk,
                lost,
                congested,
                reported_congested: false,
            },
        );
    }

    /// Stops the stream tasks to `peer` (a removed member): they end once
    /// they see their queues' senders gone. Whether it had them.
    pub fn remove_peer(&mut self, peer: NodeId) -> bool {
        self.peers.remove(&peer).is_some()
    }

    /// Queues a batch on its peer's lane; drops it (and remembers the peer
    /// as unreachable) if that queue is full. A batch is always accepted
    /// into an empty queue. The queue accounts the batch at the core's size
    /// bound (`Transmit::bytes`).
    pub fn send(&self, transmit: Transmit) {
        let Transmit {
            to,
            lane,
            bytes,
            batch,
        } = transmit;
        let Some(peer) = self.peers.get(&to) else {
            tracing::warn!(peer = %to, "batch for a node that is not a peer");
            return;
        };
        let queue = match lane {
            Lane::Control => &peer.control,
            Lane::Bulk => &peer.bulk,
        };
        let queued = queue.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if queued > 0 && queued + bytes > queue.limit {
            queue.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.stats
                .batches_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            peer.lost.store(true, Ordering::Relaxed);
            return;
        }
        if queue.tx.send(Queued { batch, bytes }).is_err() {
            // The stream task is gone: the node is shutting down.
            queue.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return;
        }
        if std::ptr::eq(queue, &peer.bulk) && queued + bytes > self.limits.congested_above() {
            peer.congested.store(true, Ordering::Relaxed);
        }
    }

    /// Links whose congestion changed since the last call: `(peer, true)`
    /// when its bulk queue passed [`TransportLimits::congested_above`],
    /// `(peer, false)` once it drained below
    /// [`TransportLimits::clear_below`]. For `Node::handle_peer_congestion`.
    pub fn congestion_changes(&mut self) -> Vec<(NodeId, bool)> {
        let mut changes = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            let now = p.congested.load(Ordering::Relaxed);
            if now != p.reported_congested {
                p.reported_congested = now;
                changes.push((id, now));
            }
        }
        changes
    }

    /// Completes when a congested link has cleared since it was last
    /// awaited (the driver then asks [`PeerSenders::congestion_changes`]).
    pub fn cleared(&self) -> impl std::future::Future<Output = ()> + use<> {
        let wake = self.wake.clone();
        async move { wake.notified().await }
    }

    /// Peers some of whose batches were dropped since the last call (queue
    /// full, or discarded when a stream broke): the core should stop
    /// streaming to them optimistically (`Node::handle_unreachable`).
    pub fn take_unreachable(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.lost.swap(false, Ordering::Relaxed))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Bytes queued for `peer` on each lane (control, bulk).
    pub fn queued_bytes(&self, peer: NodeId) -> Option<(usize, usize)> {
        self.peers.get(&peer).map(|p| {
            (
                p.control.queued_bytes.load(Ordering::Relaxed),
                p.bulk.queued_bytes.load(Ordering::Relaxed),
            )
        })
    }
}

/// What a stream task knows of the fault hook: the harness's hook, if it set
/// one, under `cfg(madsim)`; nothing at all (a zero-sized value) otherwise.
#[derive(Clone, Default)]
pub(super) struct StreamHook {
    #[cfg(madsim)]
    faults: Option<super::faults::StreamFaults>,
}

/// Keeps one stream to one peer's lane open and feeds it.
struct StreamTask {
    peer: NodeId,
    lane: Lane,
    addr: PeerAddr,
    rx: mpsc::UnboundedReceiver<Queued>,
    queued_bytes: Arc<AtomicUsize>,
    lost: Arc<AtomicBool>,
    /// The bulk lane's congestion flag, and whom to wake when it clears.
    congested: Option<(Arc<AtomicBool>, Arc<Notify>)>,
    clock: Arc<dyn Clock>,
    stats: Arc<TransportStats>,
    handshake: Arc<Handshake>,
    limits: TransportLimits,
    #[cfg_attr(not(madsim), expect(dead_code))]
    hook: StreamHook,
    /// The last failure logged at warn level, and when.
    failure_log: Option<(String, Time)>,
}

/// What a stream task does before its next dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Dial at once (the first time).
    Now,
    /// The peer is still forming: ask again shortly, keeping the queue.
    PeerForming,
    /// The last attempt failed: wait out the backoff, drop the queue.
    Backoff,
}

/// Whether a lane's queue still has a sender (the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Open,
    Closed,
}

/// Why a stream ended.
enum Ended {
    /// The node is shutting down (the queue's sender is gone).
    Shutdown,
    /// The stream failed or was closed; re-dial.
    Broken,
}

impl StreamTask {
    async fn run(mut self) {
        // Nothing is queued before the node is in a cluster: the driver
        // starts after formation.
        self.handshake.formed().await;
        let mut backoff = BACKOFF_MIN;
        let mut retry = Retry::Now;
        loop {
            match retry {
                Retry::Now => {}
                Retry::PeerForming => {
                    // The peer joins within milliseconds; keep what is
                    // queued for it.
                    self.clock.sleep(PEER_FORMING_RETRY).await;
                    if self.rx.is_closed() {
                        return;
                    }
                }
                Retry::Backoff => {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.clock.sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    // What queued while the peer was unreachable is stale by now.
                    if self.discard_queued() == Queue::Closed {
                        return;
                    }
                }
            }
            retry = Retry::Backoff;
            let channel = match self
                .handshake
                .dialer()
                .connect(endpoint(&self.addr), &self.addr)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.failed(format!(
                        "cannot connect to {}: {}",
                        self.addr,
                        error_chain(&e)
                    ));
                    continue;
                }
            };
            let limit = self.limits.grpc_message_limit();
            let mut client = PeerClient::new(channel)
                .max_encoding_message_size(limit)
                .max_decoding_message_size(limit);
            match self.handshake.peer_is_forming(&mut client, self.peer).await {
                Ok(false) => {}
                Ok(true) => {
                    retry = Retry::PeerForming;
                    continue;
                }
                Err(why) => {
                    self.failed(why);
                    continue;
                }
            }
            match self.feed(client, &mut backoff).await {
                Ended::Shutdown => return,
                Ended::Broken => {}
            }
        }
    }

    /// Feeds one open stream until it breaks or the node shuts down.
    async fn feed(
        &mut self,
        mut client: PeerClient<tonic::transport::Channel>,
        backoff: &mut Duration,
    ) -> Ended {
        let (frames_tx, frames_rx) = mpsc::channel::<pb::PeerFrame>(FRAMES_IN_FLIGHT);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(frames_rx));
        self.handshake.attach(&mut request, self.peer);
        let call = client.batches(request);
        tokio::pin!(call);
        tracing::debug!(peer = %self.peer, lane = ?self.lane, addr = %self.addr, "peer stream open");
        let keepalive = self.limits.keepalive_interval();
        let mut last_sent = self.clock.now();
        let mut keepalive_due = self.clock.sleep(keepalive);
        loop {
            // A batch already queued goes out without arming any timer;
            // only an empty queue waits (and counts toward a keepalive).
            let queued = match self.rx.try_recv() {
                Ok(queued) => Some(queued),
                Err(mpsc::error::TryRecvError::Disconnected) => return Ended::Shutdown,
                Err(mpsc::error::TryRecvError::Empty) => None,
            };
            let frame = match queued {
                Some(queued) => self.encode(queued, &frames_tx),
                // `biased`: unbiased select! is not replayable under madsim
                // (see the driver's event loop).
                None => tokio::select! {
                    biased;
                    result = &mut call => {
                        self.call_ended(result);
                        return Ended::Broken;
                    }
                    queued = self.rx.recv() => {
                        let Some(queued) = queued else { return Ended::Shutdown };
                        self.encode(queued, &frames_tx)
                    }
                    () = &mut keepalive_due => {
                        let due = last_sent + keepalive;
                        if self.clock.now() < due {
                            keepalive_due = self.clock.sleep_until(due);
                            continue;
                        }
                        self.stats.keepalives_sent.fetch_add(1, Ordering::Relaxed);
                        Some(pb::PeerFrame { batch: Default::default() })
                    }
                },
            };
            let Some(frame) = frame else { continue };
            let keepalive_frame = frame.batch.is_empty();
            // Wait for room in gRPC's small send buffer, watching the call
            // (its end must be noticed at once) and the time: a stream that
            // takes no frame for the idle timeout is stalled. Its receiver,
            // which got nothing new for as long, closes it as idle, but that
            // answer is stalled too; so the sender gives up on its own.
            let permit = match frames_tx.try_reserve() {
                Ok(permit) => Ok(permit),
                Err(mpsc::error::TrySendError::Closed(())) => Err(()),
                Err(mpsc::error::TrySendError::Full(())) => {
                    // Armed only if room does not come at once.
                    let (clock, idle) = (self.clock.clone(), self.limits.idle_timeout);
                    let stalled = async move { clock.sleep(idle).await };
                    tokio::select! {
                        biased;
                        result = &mut call => {
                            self.call_ended(result);
                            return Ended::Broken;
                        }
                        permit = frames_tx.reserve() => permit.map_err(|_| ()),
                        () = stalled => {
                            self.failed(format!(
                                "stream stalled: no frame taken for {:?}",
                                self.limits.idle_timeout
                            ));
                            return Ended::Broken;
                        }
                    }
                }
            };
            let Ok(permit) = permit else {
                // The call dropped its end of the channel: the peer ended
                // the stream. Its answer, saying why, may be stalled behind
                // a partition: re-dial now rather than wait for it.
                self.failed("the peer ended the stream".to_owned());
                return Ended::Broken;
            };
            permit.send(frame);
            last_sent = self.clock.now();
            if keepalive_frame {
                keepalive_due = self.clock.sleep(keepalive);
            } else {
                self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                *backoff = BACKOFF_MIN;
            }
        }
    }

    /// Accounts for a batch leaving the queue; clears congestion (and wakes
    /// the driver) once the queue has drained far enough.
    fn dequeued(&self, bytes: usize) {
        let left = self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        if let Some((congested, wake)) = &self.congested
            && left < self.limits.clear_below()
            && congested.swap(false, Ordering::Relaxed)
        {
            wake.notify_one();
        }
    }

    /// Takes a batch off the queue and makes its frame: `None` if it
    /// exceeds the frame limit (a bug: the core bounds every batch by the
    /// same limit, and resending it would fail forever) or, in the
    /// simulation, the fault hook holds or drops it.
    #[cfg_attr(not(madsim), expect(unused_variables))]
    fn encode(
        &mut self,
        Queued { batch, bytes }: Queued,
        frames: &mpsc::Sender<pb::PeerFrame>,
    ) -> Option<pb::PeerFrame> {
        self.dequeued(bytes);
        let frame = pb::PeerFrame {
            batch: wire::encode_peer_batch(&batch),
        };
        if frame.batch.len() > self.limits.max_frame_bytes {
            self.stats
                .frames_too_large_out
                .fetch_add(1, Ordering::Relaxed);
            self.lost.store(true, Ordering::Relaxed);
            tracing::warn!(
                peer = %self.peer, lane = ?self.lane, messages = batch.messages.len(),
                "not sending a peer frame of {}: it exceeds the {} limit",
                human_bytes(frame.batch.len()), human_bytes(self.limits.max_frame_bytes)
            );
            return None;
        }
        #[cfg(madsim)]
        if let Some(h) = &self.hook.faults {
            return h.apply(self.peer, &batch, frame, frames, &self.stats);
        }
        Some(frame)
    }

    /// Drops everything queued; if anything was, the peer missed messages.
    /// Says whether the queue is closed (the node is shutting down: stop
    /// re-dialling).
    fn discard_queued(&mut self) -> Queue {
        let mut discarded = 0u64;
        let state = loop {
            match self.rx.try_recv() {
                Ok(q) => {
                    self.dequeued(q.bytes);
                    discarded += 1;
                }
                Err(mpsc::error::TryRecvError::Empty) => break Queue::Open,
                Err(mpsc::error::TryRecvError::Disconnected) => break Queue::Closed,
            }
        };
        if discarded > 0 {
            self.stats
                .batches_discarded_on_reconnect
                .fetch_add(discarded, Ordering::Relaxed);
            self.lost.store(true, Ordering::Relaxed);
        }
        state
    }

    /// The stream's call ended: logs why, and notes a refusal by the peer.
    fn call_ended<T>(&mut self, result: Result<T, tonic::Status>) {
        if let Err(status) = &result
            && let Some(refused) = self.handshake.note_refused_by(self.peer, status)
            && refused.is_transient()
        {
            self.stats.stream_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %self.peer, lane = ?self.lane, "peer stream: {}; re-dialling", status.message());
            return;
        }
        self.failed(why_ended(result));
    }

    /// Counts and logs a failed or refused stream: at warn level the first
    /// time a peer's stream fails with this error, and again after
    /// [`FAILURE_LOG_INTERVAL`]; at debug level in between.
    fn failed(&mut self, why: String) {
        self.stats.stream_failures.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let repeat = self.failure_log.as_ref().is_some_and(|(last, at)| {
            *last == why && now.saturating_since(*at) < FAILURE_LOG_INTERVAL
        });
        if repeat {
            tracing::debug!(peer = %self.peer, lane = ?self.lane, "peer stream: {why}; re-dialling");
        } else {
            tracing::warn!(peer = %self.peer, lane = ?self.lane, "peer stream: {why}; re-dialling with backoff");
            self.failure_log = Some((why, now));
        }
    }
}

/// Why a peer stream's call ended, for the log.
fn why_ended<T>(result: Result<T, tonic::Status>) -> String {
    match result {
        Ok(_) => "the peer closed the stream".to_owned(),
        Err(status) => {
            // The status's message, then its causes (a transport error's
            // message says only "transport error").
            let mut why = status.message().to_owned();
            if let Some(source) = std::error::Error::source(&status) {
                let causes = error_chain(source);
                if !why.contains(&causes) {
                    why = format!("{why}: {causes}");
                }
            }
            format!("stream failed: {why}")
        }
    }
}
