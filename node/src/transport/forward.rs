//! `Peer.Forwards`, the sending side: client requests this node cannot
//! answer, sent to the node the core named over one long-lived stream per
//! peer. A forward costs a few bytes in a frame, not a gRPC call: a unary
//! call per request (a new HTTP/2 stream, its headers and a task on each
//! side) cost 12-17% of a node's CPU under an unpipelined Redis GET
//! benchmark, where an event-loop turn rarely holds more than one forward
//! per peer, so batching per turn did not help.
//!
//! **One task per peer** ([`run_link`]) owns the stream. It is opened when
//! the first request needs it; every request that queued up meanwhile goes
//! in the next frame, with an id unique on the stream; answers come back in
//! any order (a read does not wait behind a write's fsync) and are matched
//! by id. The task, not a task per request, answers each caller and times
//! it out.
//!
//! **What a failure tells the client** is the core's rule
//! ([`ForwardFailure::outcome`]); this module only says how far a request
//! got. A request still in the queue when the stream cannot be opened, or
//! breaks, never left this node ([`ForwardFailure::NotSent`], or `Refused`
//! when the peer's handshake refused this node). A request in a frame handed
//! to a stream that then broke, or whose deadline passed, may have reached
//! the peer's core (`Lost`, `TimedOut`): a write is then "outcome unknown".
//!
//! **Stalls become breaks**, as on the peer-batch streams: the receiver sends
//! an empty answer frame when it has had nothing to say for
//! [`TransportLimits::keepalive_interval`], and this side sends an empty
//! frame likewise; a stream that brings nothing back for
//! [`TransportLimits::idle_timeout`] is given up (its requests `Lost`) and
//! the next request opens a fresh one.
//!
//! **Bounded**: at most [`MAX_FORWARDS_QUEUED`] requests wait per peer (more
//! are refused at once, `NotSent`) and [`MAX_FORWARDS_IN_FLIGHT`] are
//! outstanding on a stream (the receiver enforces the same bound by not
//! reading further).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message as _;
use ringkv_core::node::ClientRequest;
use ringkv_core::routing::{ForwardFailure, Hops};
use ringkv_core::{NodeId, PartitionId, Time};
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::peer_client::PeerClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

use super::{CONNECT_TIMEOUT, Handshake, TransportLimits, TransportStats, endpoint};
use crate::address::PeerAddr;
use crate::api::convert;
use crate::clock::Clock;
use crate::handle::ClientResult;

/// Requests outstanding on one stream, at most. The receiver stops reading
/// frames while it runs this many.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 4096;

/// Requests waiting per peer for the stream, at most; a request beyond is
/// refused at once (it never left the node).
pub const MAX_FORWARDS_QUEUED: usize = 4096;

/// Calls in one frame, at most (the receiver refuses a frame with more).
pub const MAX_CALLS_PER_FRAME: usize = 256;

/// A frame takes no further call once its calls' encoded size reaches this
/// (a single larger call goes alone): far below the frame limit.
const FRAME_TARGET_BYTES: usize = 256 << 10;

/// Frames handed to gRPC but not yet taken by it. A stream that leaves this
/// many untaken is not draining: it is given up as stalled.
const FRAMES_QUEUED: usize = 256;

/// A request on its way to another node, and who waits for its answer.
struct Call {
    request: pb::ForwardRequest,
    encoded_len: usize,
    waiter: Waiter,
}

/// Everything needed to answer a forwarded request's caller, however the
/// forward ends.
struct Waiter {
    reply: oneshot::Sender<ClientResult>,
    is_write: bool,
    partition: PartitionId,
    deadline: Time,
}

impl Waiter {
    fn answer(self, response: pb::ForwardResponse) {
        let _ = self.reply.send(convert::forwarded_response(response));
    }

    fn fail(self, failure: ForwardFailure) {
        let outcome = failure.outcome(self.is_write, self.partition);
        let _ = self.reply.send(Err(outcome));
    }

    /// Whether nobody waits for the answer any more (the caller went away).
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// What every link task needs.
struct Shared {
    handshake: Arc<Handshake>,
    limits: TransportLimits,
    timeout: Duration,
    stats: Arc<TransportStats>,
    clock: Arc<dyn Clock>,
}

/// A peer requests can be forwarded to: its address, and the queue of its
/// link task once a request has started it.
struct Peer {
    addr: PeerAddr,
    link: Option<mpsc::Sender<Call>>,
}

/// Sends client requests on to other nodes.
#[derive(Clone)]
pub struct Forwarder {
    peers: Arc<Mutex<BTreeMap<NodeId, Peer>>>,
    shared: Arc<Shared>,
}

impl Forwarder {
    /// `timeout` bounds a forwarded request; it should exceed the core's
    /// request timeout so that the remote node's own answer (e.g. outcome
    /// unknown) wins.
    pub fn new(
        handshake: Arc<Handshake>,
        peers: &BTreeMap<NodeId, PeerAddr>,
        timeout: Duration,
        stats: Arc<TransportStats>,
        limits: TransportLimits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let forwarder = Forwarder {
            peers: Arc::new(Mutex::new(BTreeMap::new())),
            shared: Arc::new(Shared {
                handshake,
                limits,
                timeout,
                stats,
                clock,
            }),
        };
        for (&id, addr) in peers {
            forwarder.add_peer(id, addr.clone());
        }
        forwarder
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Peer>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `peer` at `addr` (a member that joined), unless it is known
    /// or is this node. Its stream opens when a request needs it.
    pub fn add_peer(&self, peer: NodeId, addr: PeerAddr) {
        if peer == self.shared.handshake.identity().node {
            return;
        }
        self.lock().entry(peer).or_insert(Peer { addr, link: None });
    }

    /// Forgets `peer` (a removed member). Its link task ends, failing the
    /// requests it holds (`Lost` for those it sent).
    pub fn remove_peer(&self, peer: NodeId) {
        self.lock().remove(&peer);
    }

    /// Sends `req` (for `partition`, with `hops` forwards so far) to `to`;
    /// `reply` gets `to`'s answer, or what the client is told when none
    /// comes. Never waits.
    pub fn forward(
        &self,
        to: NodeId,
        partition: PartitionId,
        hops: Hops,
        req: &ClientRequest,
        reply: oneshot::Sender<ClientResult>,
    ) {
        let request =
            convert::forward_request(req, self.shared.handshake.identity().node.0, hops.0);
        let call = Call {
            encoded_len: request.encoded_len(),
            request,
            waiter: Waiter {
                reply,
                is_write: req.is_write(),
                partition,
                deadline: self.shared.clock.now() + self.shared.timeout,
            },
        };
        self.shared.stats.forwards.fetch_add(1, Ordering::Relaxed);
        let Some(link) = self.link(to) else {
            tracing::error!(to = %to, "asked to forward to a node that is not a peer");
            call.waiter.fail(ForwardFailure::UnknownTarget);
            return;
        };
        match link.try_send(call) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(call)) => {
                let n = self
                    .shared
                    .stats
                    .forwards_refused_queue_full
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                tracing::warn!(to = %to, total = n,
                    "{MAX_FORWARDS_QUEUED} requests already wait to be forwarded to {to}; refusing one");
                call.waiter.fail(ForwardFailure::NotSent);
            }
            // The peer was removed meanwhile.
            Err(mpsc::error::TrySendError::Closed(call)) => {
                call.waiter.fail(ForwardFailure::NotSent)
            }
        }
    }

    /// The queue of `to`'s link task, started on first use.
    fn link(&self, to: NodeId) -> Option<mpsc::Sender<Call>> {
        let mut peers = self.lock();
        let peer = peers.get_mut(&to)?;
        if let Some(link) = &peer.link
            && !link.is_closed()
        {
            return Some(link.clone());
        }
        let (tx, rx) = mpsc::channel(MAX_FORWARDS_QUEUED);
        tokio::spawn(run_link(self.shared.clone(), to, peer.addr.clone(), rx));
        peer.link = Some(tx.clone());
        Some(tx)
    }
}

/// Why a stream to a peer ended.
enum Ended {
    /// The forwarder dropped the peer (or stopped): the task ends.
    PeerRemoved,
    /// The peer closed the stream (it is stopping).
    ClosedByPeer,
    Broke(Status),
    /// The peer ended it in order (it is stopping, say), having answered
    /// every call it took in: the calls still waiting were never run.
    AnsweredAll(Status),
    /// Nothing came back for the idle timeout.
    Silent,
    /// gRPC stopped taking frames.
    Stalled,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::PeerRemoved => f.write_str("the peer was removed"),
            Ended::ClosedByPeer => f.write_str("the peer closed it"),
            Ended::Broke(status) => write!(f, "it broke: {}", status.message()),
            Ended::AnsweredAll(status) => write!(f, "the peer ended it: {}", status.message()),
            Ended::Silent => f.write_str("nothing came back for the idle timeout"),
            Ended::Stalled => f.write_str("gRPC stopped taking its frames"),
        }
    }
}

/// The link to one peer: waits for requests, opens a stream when there are
/// some, serves it until it ends, and starts over.
async fn run_link(
    shared: Arc<Shared>,
    peer: NodeId,
    addr: PeerAddr,
    mut queue: mpsc::Receiver<Call>,
) {
    let limit = shared.limits.grpc_message_limit();
    let mut client = PeerClient::new(
        shared
            .handshake
            .dialer()
            .connect_lazy(endpoint(&addr), &addr),
    )
    .max_encoding_message_size(limit)
    .max_decoding_message_size(limit);
    while let Some(first) = queue.recv().await {
        let mut waiting = vec![first];
        while let Ok(call) = queue.try_recv() {
            waiting.push(call);
        }
        let now = shared.clock.now();
        waiting.retain(|c| !c.waiter.abandoned());
        expire_unsent(&mut waiting, now);
        if waiting.is_empty() {
            continue;
        }
        let (frames, answers) = match open(&shared, &mut client, peer).await {
            Ok(opened) => opened,
            Err(failure) => {
                // Nothing was sent: fail what waits, and what queued meanwhile.
                while let Ok(call) = queue.try_recv() {
                    waiting.push(call);
                }
                for call in waiting {
                    call.waiter.fail(failure);
                }
                continue;
            }
        };
        shared
            .stats
            .forward_streams_opened
            .fetch_add(1, Ordering::Relaxed);
        let mut stream = Stream {
            shared: &shared,
            frames,
            pending: HashMap::new(),
            next_id: 0,
            last_sent: shared.clock.now(),
        };
        let ended = stream.serve(waiting, &mut queue, answers).await;
        let lost = stream.pending.len();
        let failure = match ended {
            Ended::AnsweredAll(_) => ForwardFailure::Unread,
            _ => ForwardFailure::Lost,
        };
        for (_, waiter) in stream.pending.drain() {
            waiter.fail(failure);
        }
        match &ended {
            Ended::PeerRemoved => return,
            Ended::ClosedByPeer => {
                tracing::debug!(%peer, lost, "forward stream closed by the peer")
            }
            Ended::AnsweredAll(status) => {
                tracing::debug!(%peer, unread = lost, "forward stream ended by the peer: {}", status.message())
            }
            ended => {
                shared
                    .stats
                    .forward_streams_broken
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, lost, "forward stream ended ({ended}); the next request re-dials");
            }
        }
    }
}

/// Fails, as never sent, the calls whose deadline passed while they waited.
fn expire_unsent(calls: &mut Vec<Call>, now: Time) {
    let (late, on_time): (Vec<Call>, Vec<Call>) =
        calls.drain(..).partition(|c| c.waiter.deadline <= now);
    *calls = on_time;
    for call in late {
        call.waiter.fail(ForwardFailure::NotSent);
    }
}

/// Opens a stream to `peer`. Frames are queued only after it is open, so a
/// failure here means no request was sent.
async fn open(
    shared: &Shared,
    client: &mut PeerClient<Channel>,
    peer: NodeId,
) -> Result<
    (
        mpsc::Sender<pb::ForwardFrame>,
        Streaming<pb::ForwardAnswers>,
    ),
    ForwardFailure,
> {
    let (frames, frames_rx) = mpsc::channel(FRAMES_QUEUED);
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(frames_rx));
    shared.handshake.attach(&mut request, peer);
    // No gRPC deadline on the call: it would bound the stream's whole life.
    match tokio::time::timeout(2 * CONNECT_TIMEOUT, client.forwards(request)).await {
        Ok(Ok(response)) => Ok((frames, response.into_inner())),
        Ok(Err(status)) if shared.handshake.note_refused_by(peer, &status).is_some() => {
            tracing::warn!(%peer, "forward stream refused: {}", status.message());
            Err(ForwardFailure::Refused)
        }
        Ok(Err(status)) => {
            tracing::debug!(%peer, %status, "could not open a forward stream");
            Err(ForwardFailure::NotSent)
        }
        Err(_) => {
            tracing::debug!(%peer, "opening a forward stream timed out");
            Err(ForwardFailure::NotSent)
        }
    }
}

/// One open stream: the calls sent on it and not yet answered.
struct Stream<'a> {
    shared: &'a Shared,
    frames: mpsc::Sender<pb::ForwardFrame>,
    pending: HashMap<u64, Waiter>,
    next_id: u64,
    last_sent: Time,
}

impl Stream<'_> {
    async fn serve(
        &mut self,
        first: Vec<Call>,
        queue: &mut mpsc::Receiver<Call>,
        mut answers: Streaming<pb::ForwardAnswers>,
    ) -> Ended {
        let clock = &*self.shared.clock;
        let idle_timeout = self.shared.limits.idle_timeout;
        let keepalive = self.shared.limits.keepalive_interval();
        if let Err(ended) = self.send(first) {
            return ended;
        }
        let mut last_heard = clock.now();
        let mut tick = clock.sleep(keepalive / 2);
        loop {
            // `biased`: unbiased select! is not replayable under madsim.
            tokio::select! {
                biased;
                answer = answers.next() => match answer {
                    Some(Ok(frame)) => {
                        last_heard = clock.now();
                        self.deliver(frame);
                    }
                    None => return Ended::ClosedByPeer,
                    Some(Err(status)) if status.metadata().contains_key(super::service::ANSWERED_ALL) => {
                        return Ended::AnsweredAll(status);
                    }
                    Some(Err(status)) => return Ended::Broke(status),
                },
                call = queue.recv(), if self.pending.len() < MAX_FORWARDS_IN_FLIGHT => {
                    let Some(call) = call else {
                        return Ended::PeerRemoved;
                    };
                    let mut calls = vec![call];
                    let room = MAX_FORWARDS_IN_FLIGHT - self.pending.len();
                    while calls.len() < room.min(MAX_CALLS_PER_FRAME) {
                        match queue.try_recv() {
                            Ok(call) => calls.push(call),
                            Err(_) => break,
                        }
                    }
                    if let Err(ended) = self.send(calls) {
                        return ended;
                    }
                }
                () = &mut tick => {
                    let now = clock.now();
                    if now >= last_heard + idle_timeout {
                        return Ended::Silent;
                    }
                    self.expire(now);
                    if now >= self.last_sent + keepalive {
                        if let Err(ended) = self.push(pb::ForwardFrame::default()) {
                            return ended;
                        }
                        self.shared.stats.keepalives_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    tick = clock.sleep(keepalive / 2);
                }
            }
        }
    }

    /// Sends `calls` in frames of at most [`MAX_CALLS_PER_FRAME`] calls and
    /// about [`FRAME_TARGET_BYTES`].
    fn send(&mut self, mut calls: Vec<Call>) -> Result<(), Ended> {
        let now = self.shared.clock.now();
        calls.retain(|c| !c.waiter.abandoned());
        expire_unsent(&mut calls, now);
        let mut frame = pb::ForwardFrame::default();
        let mut bytes = 0;
        for call in calls {
            if !frame.calls.is_empty()
                && (frame.calls.len() == MAX_CALLS_PER_FRAME
                    || bytes + call.encoded_len > FRAME_TARGET_BYTES)
            {
                self.push(std::mem::take(&mut frame))?;
                bytes = 0;
            }
            let id = self.next_id;
            self.next_id += 1;
            bytes += call.encoded_len;
            frame.calls.push(pb::ForwardCall {
                id,
                request: Some(call.request),
            });
            self.pending.insert(id, call.waiter);
        }
        if !frame.calls.is_empty() {
            self.push(frame)?;
        }
        Ok(())
    }

    fn push(&mut self, frame: pb::ForwardFrame) -> Result<(), Ended> {
        match self.frames.try_send(frame) {
            Ok(()) => {
                self.last_sent = self.shared.clock.now();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Ended::Stalled),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Ended::Broke(Status::unavailable(
                "the stream's sending side closed",
            ))),
        }
    }

    fn deliver(&mut self, frame: pb::ForwardAnswers) {
        for answer in frame.answers {
            match self.pending.remove(&answer.id) {
                Some(waiter) => waiter.answer(answer.response.unwrap_or_default()),
                // Answered after its deadline: its caller was told.
                None if answer.id < self.next_id => {
                    self.shared
                        .stats
                        .forward_answers_late
                        .fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let n = self
                        .shared
                        .stats
                        .forward_answers_unmatched
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    tracing::warn!(
                        id = answer.id,
                        total = n,
                        "a forward answer names a request never sent on its stream; dropped"
                    );
                }
            }
        }
    }

    /// Answers `TimedOut` for the calls whose deadline passed: the peer may
    /// still act on them. A late answer then matches nothing and is dropped.
    fn expire(&mut self, now: Time) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(waiter) = self.pending.remove(&id) {
                waiter.fail(ForwardFailure::TimedOut);
            }
        }
    }
}
