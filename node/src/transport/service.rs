//! The receiving side of `ringkv.v1.Peer`: incoming peer streams, whose
//! frames are checked (size, then decoding) and fed to the core, and
//! forwarded client requests.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt as _;
use futures::stream::FuturesUnordered;
use ringkv_core::node::ClientError;
use ringkv_core::routing::Hops;
use ringkv_core::wire;
use ringkv_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Handshake, MAX_CALLS_PER_FRAME, MAX_FORWARDS_IN_FLIGHT, TransportStats, human_bytes};
use crate::api::convert;
use crate::clock::Clock;
use crate::handle::{Input, NodeHandle};

/// Answer frames handed to gRPC but not yet sent; the stream's task waits
/// when there are this many (the caller is not reading).
const ANSWER_FRAMES_QUEUED: usize = 64;

/// Answers in one frame, at most.
const MAX_ANSWERS_PER_FRAME: usize = 256;

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

/// One incoming `Forwards` stream: runs the calls of every frame at once
/// (at most [`MAX_FORWARDS_IN_FLIGHT`]; it reads no further frame while it
/// runs that many) and answers each as it completes, gathering the answers
/// ready together into one frame.
struct ForwardStream {
    handshake: Arc<Handshake>,
    input: mpsc::Sender<Input>,
    node: NodeHandle,
    stats: Arc<TransportStats>,
    clock: Arc<dyn Clock>,
    idle_timeout: Duration,
    peer: ringkv_core::NodeId,
}

impl ForwardStream {
    /// Ends when the caller closes its side (after answering what runs),
    /// breaks it, stays silent for the idle timeout (the caller sends a
    /// keepalive when it has nothing else to send), stops reading answers,
    /// or when this node stops.
    async fn serve(
        self,
        mut frames: tonic::Streaming<pb::ForwardFrame>,
        answers: mpsc::Sender<Result<pb::ForwardAnswers, Status>>,
    ) {
        let clock = &*self.clock;
        let keepalive = self.idle_timeout / 2;
        let node = &self.node;
        let mut running = FuturesUnordered::new();
        let mut last_heard = clock.now();
        let mut last_sent = clock.now();
        let mut tick = clock.sleep(keepalive / 2);
        let mut caller_done = false;
        let ending: Result<(), Status> = loop {
            // `biased`: unbiased select! is not replayable under madsim.
            tokio::select! {
                biased;
                Some(answer) = running.next(), if !running.is_empty() => {
                    let mut frame = pb::ForwardAnswers { answers: vec![answer] };
                    while frame.answers.len() < MAX_ANSWERS_PER_FRAME {
                        match running.next().now_or_never() {
                            Some(Some(answer)) => frame.answers.push(answer),
                            _ => break,
                        }
                    }
                    if answers.send(Ok(frame)).await.is_err() {
                        return; // The caller is gone.
                    }
                    last_sent = clock.now();
                    if caller_done && running.is_empty() {
                        break Ok(());
                    }
                }
                frame = frames.next(), if !caller_done && running.len() < MAX_FORWARDS_IN_FLIGHT => {
                    last_heard = clock.now();
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        None => {
                            caller_done = true;
                            if running.is_empty() {
                                break Ok(());
                            }
                            continue;
                        }
                        Some(Err(status)) => {
                            tracing::debug!(peer = %self.peer, %status, "incoming forward stream broke");
                            return;
                        }
                    };
                    if let Err(status) = self.handshake.refuse_removed(self.peer) {
                        break Err(status);
                    }
                    if frame.calls.is_empty() {
                        self.stats.keepalives_received.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if frame.calls.len() > MAX_CALLS_PER_FRAME {
                        break Err(Status::invalid_argument(format!(
                            "{} forwarded requests in one frame; the limit is {MAX_CALLS_PER_FRAME}",
                            frame.calls.len()
                        )));
                    }
                    for call in frame.calls {
                        running.push(run_forwarded(node, call));
                    }
                }
                () = &mut tick => {
                    let now = clock.now();
                    if self.input.is_closed() {
                        break Err(Status::unavailable("node is shutting down"));
                    }
                    if !caller_done && now >= last_heard + self.idle_timeout {
                        let n = self.stats.idle_streams_closed.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::debug!(peer = %self.peer, total = n, "forward stream idle; closing it so the peer re-dials");
                        break Err(Status::unavailable("forward stream idle; re-dial"));
                    }
                    if now >= last_sent + keepalive {
                        // A full queue means answers are on their way anyway.
                        if answers.try_send(Ok(pb::ForwardAnswers::default())).is_ok() {
                            self.stats.keepalives_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        last_sent = now;
                    }
                    tick = clock.sleep(keepalive / 2);
                }
            }
        };
        if let Err(mut status) = ending {
            // Every call taken in is answered before the stream ends, and
            // the end says so: the caller then knows that the calls it has
            // no answer for were never run (`ForwardFailure::Unread`), not
            // lost with their outcome unknown.
            while let Some(answer) = running.next().await {
                let frame = pb::ForwardAnswers {
                    answers: vec![answer],
                };
                if answers.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
            status.metadata_mut().insert(
                ANSWERED_ALL,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            let _ = answers.send(Err(status)).await;
        }
    }
}

/// On the status that ends a forward stream: every call the node took in
/// was answered before it (see `PeerService::serve`).
pub const ANSWERED_ALL: &str = "ringkv-answered-all";

/// Runs one forwarded request on this node; a malformed one is answered
/// with an error (its caller's other requests are served).
async fn run_forwarded(node: &NodeHandle, call: pb::ForwardCall) -> pb::ForwardAnswer {
    let result = match call.request {
        Some(r) => {
            let hops = Hops(r.hops);
            match convert::forwarded_request(r) {
                Ok(req) => node.request_with_hops(req, hops).await,
                Err(e) => Err(ClientError::Internal(format!(
                    "malformed forwarded request: {e}"
                ))),
            }
        }
        None => Err(ClientError::Internal(
            "malformed forwarded request: no request in the call".to_owned(),
        )),
    };
    pb::ForwardAnswer {
        id: call.id,
        response: Some(convert::forward_response(&result)),
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn hello(
        &self,
        request: Request<pb::PeerHello>,
    ) -> Result<Response<pb::PeerHelloReply>, Status> {
        self.handshake.check_peer_certificate(&request)?;
        self.handshake
            .answer_hello(request.get_ref())
            .map(Response::new)
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        self.handshake.check_peer_certificate(&request)?;
        super::join::answer_join(&self.handshake, &self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn batches(
        &self,
        request: Request<tonic::Streaming<pb::PeerFrame>>,
    ) -> Result<Response<pb::PeerStreamClosed>, Status> {
        self.handshake.check_peer_certificate(&request)?;
        let peer = self.handshake.admit_call(&request)?;
        receive_frames(self, peer, request.into_inner()).await?;
        Ok(Response::new(pb::PeerStreamClosed {}))
    }

    type ForwardsStream = ReceiverStream<Result<pb::ForwardAnswers, Status>>;

    async fn forwards(
        &self,
        request: Request<tonic::Streaming<pb::ForwardFrame>>,
    ) -> Result<Response<Self::ForwardsStream>, Status> {
        self.handshake.check_peer_certificate(&request)?;
        let peer = self.handshake.admit_call(&request)?;
        let (answers, answers_rx) = mpsc::channel(ANSWER_FRAMES_QUEUED);
        let forwards = ForwardStream {
            handshake: self.handshake.clone(),
            input: self.input.clone(),
            node: self.node.clone(),
            stats: self.stats.clone(),
            clock: self.clock.clone(),
            idle_timeout: self.idle_timeout,
            peer,
        };
        tokio::spawn(forwards.serve(request.into_inner(), answers));
        Ok(Response::new(ReceiverStream::new(answers_rx)))
    }
}
