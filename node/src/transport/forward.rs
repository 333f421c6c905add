//! `Peer.Forward`: a client request this node cannot answer, sent to the
//! node the core named; `Peer.ForwardBatch`: several of them to one node in
//! one call (a call per request cost about 40% of a node's CPU under a
//! read-heavy Redis benchmark). How a failed call failed is classified here
//! (a [`ForwardFailure`], the same for every request of a batch); what the
//! client is then told is the core's rule (`ringkv_core::routing`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::node::ClientRequest;
use ringkv_core::routing::{ForwardFailure, Hops};
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::peer_client::PeerClient;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::{Handshake, TransportLimits, TransportStats, endpoint};
use crate::api::convert;
use crate::handle::ClientResult;

/// Requests in one `ForwardBatch` call, at most (the receiver refuses more).
pub const MAX_FORWARD_BATCH: usize = 256;

/// A request whose encoded form is larger goes alone (`Forward`), so that a
/// batch stays far below the transport's message limit.
pub const MAX_BATCHED_REQUEST_BYTES: usize = 4 << 10;

/// Sends client requests on to other nodes.
#[derive(Clone)]
pub struct Forwarder {
    clients: Arc<Mutex<BTreeMap<NodeId, PeerClient<Channel>>>>,
    handshake: Arc<Handshake>,
    limits: TransportLimits,
    timeout: Duration,
    stats: Arc<TransportStats>,
}

impl Forwarder {
    /// `timeout` bounds a forwarded call; it should exceed the core's request
    /// timeout so the remote node's own answer (e.g. outcome unknown) wins.
    pub fn new(
        handshake: Arc<Handshake>,
        peers: &BTreeMap<NodeId, SocketAddr>,
        timeout: Duration,
        stats: Arc<TransportStats>,
        limits: TransportLimits,
    ) -> Self {
        let forwarder = Forwarder {
            clients: Arc::new(Mutex::new(BTreeMap::new())),
            handshake,
            limits,
            timeout,
            stats,
        };
        for (&id, &addr) in peers {
            forwarder.add_peer(id, addr);
        }
        forwarder
    }

    /// A client for `peer` at `addr` (a member that joined), unless it has
    /// one or is this node.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        if peer == self.handshake.identity().node {
            return;
        }
        let limit = self.limits.grpc_message_limit();
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.entry(peer).or_insert_with(|| {
            PeerClient::new(endpoint(addr).connect_lazy())
                .max_encoding_message_size(limit)
                .max_decoding_message_size(limit)
        });
    }

    /// Drops the client for `peer` (a removed member).
    pub fn remove_peer(&self, peer: NodeId) {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
    }

    fn client(&self, to: NodeId) -> Result<PeerClient<Channel>, ForwardFailure> {
        let client = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&to)
            .cloned();
        client.ok_or_else(|| {
            tracing::error!(to = %to, "asked to forward to a node that is not a peer");
            ForwardFailure::UnknownTarget
        })
    }

    /// Sends `req` to `to`, carrying `hops`. `Ok` holds the target's own
    /// answer; `Err` says how the call failed, for the core's rule
    /// ([`ForwardFailure::outcome`]) to turn into the client's answer.
    pub async fn forward(
        &self,
        from: NodeId,
        to: NodeId,
        req: &ClientRequest,
        hops: Hops,
    ) -> Result<ClientResult, ForwardFailure> {
        let mut client = self.client(to)?;
        self.stats.forwards.fetch_add(1, Ordering::Relaxed);
        let mut request = Request::new(convert::forward_request(req, from.0, hops.0));
        request.set_timeout(self.timeout);
        self.handshake.attach(&mut request, to);
        let answer = tokio::time::timeout(self.timeout, client.forward(request)).await;
        self.classify(to, answer)
            .map(|resp| convert::forwarded_response(resp.into_inner()))
    }

    /// Sends `requests` (at most [`MAX_FORWARD_BATCH`]) to `to` in one call;
    /// `Ok` holds the target's answers in order.
    pub async fn forward_batch(
        &self,
        from: NodeId,
        to: NodeId,
        requests: &[(ClientRequest, Hops)],
    ) -> Result<Vec<ClientResult>, ForwardFailure> {
        debug_assert!(requests.len() <= MAX_FORWARD_BATCH);
        let mut client = self.client(to)?;
        self.stats
            .forwards
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        let batch = pb::ForwardBatchRequest {
            requests: requests
                .iter()
                .map(|(req, hops)| convert::forward_request(req, from.0, hops.0))
                .collect(),
        };
        let mut request = Request::new(batch);
        request.set_timeout(self.timeout);
        self.handshake.attach(&mut request, to);
        let answer = tokio::time::timeout(self.timeout, client.forward_batch(request)).await;
        let responses = self.classify(to, answer)?.into_inner().responses;
        if responses.len() != requests.len() {
            // The target ran some of them, perhaps: as for a lost answer.
            tracing::warn!(to = %to, sent = requests.len(), answered = responses.len(),
                "a forwarded batch was answered with another number of results");
            return Err(ForwardFailure::Lost);
        }
        Ok(responses
            .into_iter()
            .map(convert::forwarded_response)
            .collect())
    }

    /// How a forward call ended.
    fn classify<T>(
        &self,
        to: NodeId,
        answer: Result<Result<T, Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, ForwardFailure> {
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(status)) if self.handshake.note_refused_by(to, &status).is_some() => {
                tracing::warn!(to = %to, "forward refused: {}", status.message());
                Err(ForwardFailure::Refused)
            }
            Ok(Err(status)) if connection_refused(&status) => {
                tracing::debug!(to = %to, %status, "forward target refused the connection");
                Err(ForwardFailure::NotSent)
            }
            Ok(Err(status)) => {
                tracing::debug!(to = %to, %status, "forward failed in transit");
                Err(ForwardFailure::Lost)
            }
            Err(_) => Err(ForwardFailure::TimedOut),
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
