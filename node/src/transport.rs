//! Node-to-node transport over gRPC (`ringkv.v1.Peer`).
//!
//! Each node keeps one long-lived client stream to every peer and pushes
//! every `PeerBatch` for that peer down it, encoded by the core's wire codec;
//! a broken stream is re-dialled with exponential backoff, and batches queued
//! meanwhile are dropped (Raft retransmits; the failure detector notices the
//! silence). The receiving side decodes each frame; one that fails to decode
//! is dropped and counted, never trusted and never a panic.
//!
//! A partition does not *break* a stream, it *stalls* it: the connection
//! stays open and the transport below retransmits with exponential backoff
//! (TCP's RTO; madsim's ordered channel, capped at 10 s), so after the heal
//! every batch waits behind the stalled one for up to that backoff, and the
//! sender, whose writes only fill a buffer, never sees an error. Two checks
//! turn a stall into a break, after which the sender re-dials a fresh
//! connection: the receiver closes a stream that carried nothing for
//! [`PeerService`]'s idle timeout (the core sends every peer a batch at
//! least every heartbeat interval, so silence means a dead or stalled
//! stream; etcd's rafthttp does the same with its read timeout), and the
//! sender's HTTP/2 keepalive closes a connection whose pings go unanswered.
//!
//! The same service carries `Forward`: a client request this node cannot
//! answer, sent to the node the core named.
//!
//! Under `cfg(madsim)` only, the stream task asks the simulation harness's
//! fault hook ([`faults`]) about every outgoing batch: deliver, drop,
//! duplicate or delay it. Production builds have no hook.

#[cfg(madsim)]
pub mod faults;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::io::PeerBatch;
use ringkv_core::node::{ClientError, ClientRequest};
use ringkv_core::wire;
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::peer_client::PeerClient;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::api::convert;
use crate::clock::Clock;
use crate::driver::{Input, NodeHandle};

/// Batches queued for one peer beyond this are dropped (the peer is slow or
/// unreachable; Raft copes with loss).
const PEER_QUEUE: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on every peer connection, and how long one may go
/// unanswered before the connection is closed as stalled: after a partition,
/// TCP's retransmission backoff can keep an open connection silent for
/// minutes. (Ignored under madsim, whose streams carry no pings; there the
/// receiver's idle timeout does the job alone.)
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer stream silent for this many of the core's heartbeat intervals is
/// closed as stalled (see [`PeerService::new`]). Large enough that a busy but
/// live sender, or one whose clock drifts, is never cut off.
pub const STREAM_IDLE_HEARTBEATS: u32 = 10;

/// Counters of the transport, for metrics and status.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub batches_sent: AtomicU64,
    pub batches_dropped_queue_full: AtomicU64,
    pub batches_received: AtomicU64,
    pub decode_failures: AtomicU64,
    /// Incoming peer streams closed because they stayed silent too long.
    pub idle_streams_closed: AtomicU64,
    pub reconnects: AtomicU64,
    pub forwards: AtomicU64,
    /// Batches the simulation's fault hook dropped.
    #[cfg(madsim)]
    pub faults_dropped: AtomicU64,
    /// Batches the fault hook sent twice (the copy is counted here when it
    /// is scheduled, and in `batches_sent` when it goes out).
    #[cfg(madsim)]
    pub faults_duplicated: AtomicU64,
    /// Batches the fault hook held back before sending.
    #[cfg(madsim)]
    pub faults_delayed: AtomicU64,
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI authority")
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// The senders of this node's streams to its peers.
pub struct PeerSenders {
    queues: BTreeMap<NodeId, mpsc::Sender<PeerBatch>>,
    stats: Arc<TransportStats>,
}

impl PeerSenders {
    /// Starts one stream task per peer (every member but `me`).
    pub fn start(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        clock: Arc<dyn Clock>,
        stats: Arc<TransportStats>,
    ) -> Self {
        Self::spawn(me, peers, clock, stats, StreamHook::default())
    }

    /// [`PeerSenders::start`], with every outgoing batch put to the
    /// simulation harness's fault `hook` first.
    #[cfg(madsim)]
    pub fn start_with_faults(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        clock: Arc<dyn Clock>,
        stats: Arc<TransportStats>,
        hook: Arc<dyn faults::PeerFaults>,
    ) -> Self {
        let hook = StreamHook {
            faults: Some(faults::StreamFaults::new(hook, me)),
        };
        Self::spawn(me, peers, clock, stats, hook)
    }

    fn spawn(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        clock: Arc<dyn Clock>,
        stats: Arc<TransportStats>,
        hook: StreamHook,
    ) -> Self {
        let mut queues = BTreeMap::new();
        for (&id, &addr) in peers {
            if id == me {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            queues.insert(id, tx);
            let task = stream_task(id, addr, rx, clock.clone(), stats.clone(), hook.clone());
            tokio::spawn(task);
        }
        PeerSenders { queues, stats }
    }

    /// Queues a batch for its peer; drops it if the peer's queue is full.
    pub fn send(&self, to: NodeId, batch: PeerBatch) {
        let Some(q) = self.queues.get(&to) else {
            tracing::warn!(peer = %to, "batch for a node that is not a peer");
            return;
        };
        if q.try_send(batch).is_err() {
            self.stats
                .batches_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a stream task knows of the fault hook: the harness's hook, if it set
/// one, under `cfg(madsim)`; nothing at all (a zero-sized value) otherwise.
#[derive(Clone, Default)]
struct StreamHook {
    #[cfg(madsim)]
    faults: Option<faults::StreamFaults>,
}

/// Keeps one stream to `peer` open and feeds it.
async fn stream_task(
    peer: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<PeerBatch>,
    clock: Arc<dyn Clock>,
    stats: Arc<TransportStats>,
    #[cfg_attr(not(madsim), expect(unused_variables))] hook: StreamHook,
) {
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    loop {
        if !first {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
            clock.sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // What queued while the peer was unreachable is stale by now.
            while rx.try_recv().is_ok() {}
        }
        first = false;
        let channel = match endpoint(addr).connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = %peer, %addr, error = %e, "cannot reach peer");
                continue;
            }
        };
        let (frames_tx, frames_rx) = mpsc::channel::<pb::PeerFrame>(PEER_QUEUE);
        let mut client = PeerClient::new(channel);
        let call = client.batches(tokio_stream::wrappers::ReceiverStream::new(frames_rx));
        tokio::pin!(call);
        tracing::debug!(peer = %peer, %addr, "peer stream open");
        loop {
            // `biased`: unbiased select! is not replayable under madsim
            // (see the driver's event loop).
            tokio::select! {
                biased;
                result = &mut call => {
                    match result {
                        Ok(_) => tracing::debug!(peer = %peer, "peer closed the stream"),
                        Err(e) => tracing::debug!(peer = %peer, error = %e, "peer stream failed"),
                    }
                    break;
                }
                batch = rx.recv() => {
                    let Some(batch) = batch else { return };
                    let frame = pb::PeerFrame { batch: wire::encode_peer_batch(&batch) };
                    #[cfg(madsim)]
                    let frame = match &hook.faults {
                        Some(h) => match h.apply(peer, frame, &frames_tx, &stats) {
                            Some(f) => f,
                            None => continue,
                        },
                        None => frame,
                    };
                    if frames_tx.send(frame).await.is_err() {
                        break;
                    }
                    stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                    backoff = BACKOFF_MIN;
                }
            }
        }
    }
}

/// Sends client requests on to other nodes.
#[derive(Clone)]
pub struct Forwarder {
    clients: Arc<BTreeMap<NodeId, PeerClient<Channel>>>,
    timeout: Duration,
    stats: Arc<TransportStats>,
}

impl Forwarder {
    /// `timeout` bounds a forwarded call; it should exceed the core's request
    /// timeout so the remote node's own answer (e.g. outcome unknown) wins.
    pub fn new(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        timeout: Duration,
        stats: Arc<TransportStats>,
    ) -> Self {
        let clients = peers
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(&id, &addr)| (id, PeerClient::new(endpoint(addr).connect_lazy())))
            .collect();
        Forwarder {
            clients: Arc::new(clients),
            timeout,
            stats,
        }
    }

    pub async fn forward(
        &self,
        from: NodeId,
        to: NodeId,
        req: &ClientRequest,
        partition: ringkv_core::PartitionId,
        hops: u32,
    ) -> Result<ringkv_core::node::ClientResponse, ClientError> {
        let is_write = req.is_write();
        let Some(client) = self.clients.get(&to) else {
            return Err(ClientError::Internal(format!(
                "asked to forward to {to}, which is not a member"
            )));
        };
        self.stats.forwards.fetch_add(1, Ordering::Relaxed);
        let mut client = client.clone();
        let mut request = Request::new(convert::forward_request(req, from.0, hops));
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, client.forward(request)).await {
            Ok(Ok(resp)) => convert::forwarded_response(resp.into_inner()),
            // The connection was refused: the request never left this node.
            Ok(Err(status)) if connection_refused(&status) => {
                tracing::debug!(to = %to, %status, "forward target refused the connection");
                Err(if is_write {
                    ClientError::Dropped
                } else {
                    ClientError::NoLeader { partition }
                })
            }
            // The request may have reached the leader before the call failed.
            Ok(Err(status)) if is_write => {
                tracing::debug!(to = %to, %status, "forwarded write failed in transit");
                Err(ClientError::OutcomeUnknown)
            }
            Ok(Err(status)) => {
                tracing::debug!(to = %to, %status, "forwarded read failed in transit");
                // Nothing was changed by a read: the client may retry.
                Err(ClientError::NoLeader { partition })
            }
            Err(_) if is_write => Err(ClientError::OutcomeUnknown),
            Err(_) => Err(ClientError::Timeout),
        }
    }
}

/// Whether a failed call provably never reached the server: the TCP
/// connection itself was refused.
fn connection_refused(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The server side of `ringkv.v1.Peer`.
pub struct PeerService {
    input: mpsc::Sender<Input>,
    node: NodeHandle,
    stats: Arc<TransportStats>,
    clock: Arc<dyn Clock>,
    idle_timeout: Duration,
}

impl PeerService {
    /// `idle_timeout`: an incoming peer stream that carries no frame for this
    /// long (on `clock`) is closed, so that its sender re-dials. It must be
    /// several times the interval at which the core sends every peer at least
    /// an empty batch (its heartbeat interval); see [`STREAM_IDLE_HEARTBEATS`].
    pub fn new(
        input: mpsc::Sender<Input>,
        node: NodeHandle,
        stats: Arc<TransportStats>,
        clock: Arc<dyn Clock>,
        idle_timeout: Duration,
    ) -> Self {
        PeerService {
            input,
            node,
            stats,
            clock,
            idle_timeout,
        }
    }
}

/// Feeds the frames of one incoming peer stream to the node until the stream
/// ends, breaks, or stays silent for `idle_timeout`.
///
/// The idle close is what ends a stalled stream. After a partition heals, a
/// stream that was open across it delivers nothing until the transport's
/// next retransmission, seconds later, while the sender keeps queueing
/// batches behind the stalled one: a follower would hear nothing from its
/// leader's node, and neither side would notice. Since a live peer sends a
/// batch every heartbeat interval, silence this long means the stream is dead
/// or stalled; ending the call makes the sender's next write fail, and it
/// re-dials a fresh connection, which carries traffic as soon as the network
/// does.
async fn receive_frames<S>(
    stream: S,
    input: &mpsc::Sender<Input>,
    stats: &TransportStats,
    clock: &dyn Clock,
    idle_timeout: Duration,
) -> Result<(), Status>
where
    S: tokio_stream::Stream<Item = Result<pb::PeerFrame, Status>>,
{
    use tokio_stream::StreamExt as _;
    tokio::pin!(stream);
    // One timer per idle interval, not one per frame: when it fires, the
    // stream is idle only if no frame came since; otherwise it is re-armed
    // for an idle interval after the last frame.
    let mut last_frame = clock.now();
    let mut idle_check = clock.sleep(idle_timeout);
    loop {
        // `biased`: unbiased select! is not replayable under madsim.
        let next = tokio::select! {
            biased;
            next = stream.next() => next,
            () = &mut idle_check => {
                let idle_at = last_frame + idle_timeout;
                if clock.now() < idle_at {
                    idle_check = clock.sleep_until(idle_at);
                    continue;
                }
                let n = stats.idle_streams_closed.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(?idle_timeout, total = n, "peer stream idle; closing it so the peer re-dials");
                return Err(Status::unavailable("peer stream idle; re-dial"));
            }
        };
        last_frame = clock.now();
        let frame = match next {
            Some(Ok(f)) => f,
            None => return Ok(()),
            Some(Err(status)) => {
                tracing::debug!(%status, "peer stream broke");
                return Ok(());
            }
        };
        stats.batches_received.fetch_add(1, Ordering::Relaxed);
        match wire::decode_peer_batch(&frame.batch) {
            Ok(batch) => {
                if input.send(Input::Peer(batch)).await.is_err() {
                    return Err(Status::unavailable("node is shutting down"));
                }
            }
            Err(e) => {
                let n = stats.decode_failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(error = %e, total = n, "dropped a peer frame that does not decode");
            }
        }
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn batches(
        &self,
        request: Request<tonic::Streaming<pb::PeerFrame>>,
    ) -> Result<Response<pb::PeerStreamClosed>, Status> {
        receive_frames(
            request.into_inner(),
            &self.input,
            &self.stats,
            &*self.clock,
            self.idle_timeout,
        )
        .await?;
        Ok(Response::new(pb::PeerStreamClosed {}))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let r = request.into_inner();
        let hops = r.hops;
        let req = convert::forwarded_request(r).map_err(Status::invalid_argument)?;
        let result = self.node.request_with_hops(req, hops).await;
        Ok(Response::new(convert::forward_response(&result)))
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    /// A production build carries no fault hook: what each stream task
    /// holds of it is zero-sized, and there is nothing to set.
    #[test]
    fn production_streams_carry_no_fault_hook() {
        assert_eq!(std::mem::size_of::<super::StreamHook>(), 0);
    }
}
