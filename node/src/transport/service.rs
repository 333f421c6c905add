//! The receiving side of `ringkv.v1.Peer`: incoming peer streams, whose
//! frames are checked (size, then decoding) and fed to the core, and
//! forwarded client requests.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringkv_core::node::ClientError;
use ringkv_core::routing::Hops;
use ringkv_core::wire;
use ringkv_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::forward::MAX_FORWARD_BATCH;
use super::{Handshake, TransportStats, human_bytes};
use crate::api::convert;
use crate::clock::Clock;
use crate::handle::{Input, NodeHandle};

/// The server side of `ringkv.v1.Peer`.
pub struct PeerService {
    handshake: Arc<Handshake>,
    input: mpsc::Sender<Input>,
    node: NodeHandle,
    stats: Arc<TransportStats>,
    clock: Arc<dyn Clock>,
    idle_timeout: Duration,
    max_frame_bytes: usize,
}

impl PeerService {
    /// `idle_timeout`: an incoming peer stream that carries no frame for this
    /// long (on `clock`) is closed, so that its sender re-dials. It must be
    /// several times the interval at which senders send at least a keepalive
    /// (see [`super::TransportLimits`]). `max_frame_bytes`: a larger frame
    /// closes its stream.
    pub fn new(
        handshake: Arc<Handshake>,
        input: mpsc::Sender<Input>,
        node: NodeHandle,
        stats: Arc<TransportStats>,
        clock: Arc<dyn Clock>,
        idle_timeout: Duration,
        max_frame_bytes: usize,
    ) -> Self {
        PeerService {
            handshake,
            input,
            node,
            stats,
            clock,
            idle_timeout,
            max_frame_bytes,
        }
    }
}

/// Feeds the frames of one incoming peer stream to the node until the stream
/// ends, breaks, stays silent for `idle_timeout`, or carries a frame over
/// `max_frame_bytes`. An empty frame is a keepalive.
///
/// The idle close is what ends a stalled stream. After a partition heals, a
/// stream that was open across it delivers nothing until the transport's
/// next retransmission, seconds later, while the sender keeps queueing
/// batches behind the stalled one: a follower would hear nothing from its
/// leader's node, and neither side would notice. Since a live sender sends a
/// frame (at worst a keepalive) several times per idle timeout, silence this
/// long means the stream is dead or stalled; ending the call makes the
/// sender's next write fail, and it re-dials a fresh connection, which
/// carries traffic as soon as the network does.
async fn receive_frames<S>(
    service: &PeerService,
    peer: ringkv_core::NodeId,
    stream: S,
) -> Result<(), Status>
where
    S: tokio_stream::Stream<Item = Result<pb::PeerFrame, Status>>,
{
    use tokio_stream::StreamExt as _;
    let (handshake, input, stats) = (&*service.handshake, &service.input, &*service.stats);
    let (clock, idle_timeout) = (&*service.clock, service.idle_timeout);
    let max_frame_bytes = service.max_frame_bytes;
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
                if status.code() == tonic::Code::OutOfRange {
                    // gRPC's own message limit (set just above ours).
                    stats.frames_too_large_in.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(%status, "incoming peer stream broke");
                return Ok(());
            }
        };
        stats.batches_received.fetch_add(1, Ordering::Relaxed);
        // A stream admitted before the member list removed its sender ends
        // here, with the reason, and its re-dial is refused.
        handshake.refuse_removed(peer)?;
        if frame.batch.is_empty() {
            stats.keepalives_received.fetch_add(1, Ordering::Relaxed);
            // A stream of keepalives alone would hold a stopping node's
            // graceful shutdown open forever: end it once the event loop is
            // gone, as a batch would.
            if input.is_closed() {
                return Err(Status::unavailable("node is shutting down"));
            }
            continue;
        }
        if frame.batch.len() > max_frame_bytes {
            stats.frames_too_large_in.fetch_add(1, Ordering::Relaxed);
            let why = format!(
                "peer frame of {} exceeds the {} limit",
                human_bytes(frame.batch.len()),
                human_bytes(max_frame_bytes)
            );
            tracing::warn!("{why}; closing the stream");
            return Err(Status::out_of_range(why));
        }
        // Decoding from `Bytes` lets entries and chunks share its buffer
        // instead of copying each value out of it.
        match wire::decode_peer_batch_bytes(frame.batch) {
            Ok(batch) if batch.from != peer => {
                // The hello admitted `peer`; a batch claiming another
                // sender would let one node speak for another.
                let n = stats.decode_failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    total = n,
                    "dropped a peer frame from {} on {peer}'s stream",
                    batch.from
                );
            }
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
    async fn hello(
        &self,
        request: Request<pb::PeerHello>,
    ) -> Result<Response<pb::PeerHelloReply>, Status> {
        self.handshake
            .answer_hello(request.get_ref())
            .map(Response::new)
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        super::join::answer_join(&self.handshake, &self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn batches(
        &self,
        request: Request<tonic::Streaming<pb::PeerFrame>>,
    ) -> Result<Response<pb::PeerStreamClosed>, Status> {
        let peer = self.handshake.admit_call(&request)?;
        receive_frames(self, peer, request.into_inner()).await?;
        Ok(Response::new(pb::PeerStreamClosed {}))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        self.handshake.admit_call(&request)?;
        let r = request.into_inner();
        let hops = Hops(r.hops);
        let req = convert::forwarded_request(r).map_err(Status::invalid_argument)?;
        let result = self.node.request_with_hops(req, hops).await;
        Ok(Response::new(convert::forward_response(&result)))
    }

    async fn forward_batch(
        &self,
        request: Request<pb::ForwardBatchRequest>,
    ) -> Result<Response<pb::ForwardBatchResponse>, Status> {
        self.handshake.admit_call(&request)?;
        let requests = request.into_inner().requests;
        if requests.len() > MAX_FORWARD_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} forwarded requests in one batch; the limit is {MAX_FORWARD_BATCH}",
                requests.len()
            )));
        }
        let node = &self.node;
        let answers = requests.into_iter().map(|r| async move {
            let hops = Hops(r.hops);
            let result = match convert::forwarded_request(r) {
                Ok(req) => node.request_with_hops(req, hops).await,
                Err(e) => Err(ClientError::Internal(format!(
                    "malformed forwarded request: {e}"
                ))),
            };
            convert::forward_response(&result)
        });
        let responses = futures::future::join_all(answers).await;
        Ok(Response::new(pb::ForwardBatchResponse { responses }))
    }
}
