//! `Peer.Forward`: a client request this node cannot answer, sent to the
//! node the core named, and the rule that turns a failed forward into an
//! outcome the client can act on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::node::{ClientError, ClientRequest};
use ringkv_proto::v1::peer_client::PeerClient;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::{Handshake, TransportLimits, TransportStats, endpoint};
use crate::api::convert;

/// Sends client requests on to other nodes.
#[derive(Clone)]
pub struct Forwarder {
    clients: Arc<BTreeMap<NodeId, PeerClient<Channel>>>,
    handshake: Arc<Handshake>,
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
        let me = handshake.identity().node;
        let limit = limits.grpc_message_limit();
        let clients = peers
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(&id, &addr)| {
                let client = PeerClient::new(endpoint(addr).connect_lazy())
                    .max_encoding_message_size(limit)
                    .max_decoding_message_size(limit);
                (id, client)
            })
            .collect();
        Forwarder {
            clients: Arc::new(clients),
            handshake,
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
        self.handshake.attach(&mut request, to);
        match tokio::time::timeout(self.timeout, client.forward(request)).await {
            Ok(Ok(resp)) => convert::forwarded_response(resp.into_inner()),
            // Refused by the handshake: the request never reached its core,
            // and this node's idea of the leader is stale (a refused node
            // leads nothing); retrying finds the real one.
            Ok(Err(status)) if self.handshake.note_refused_by(to, &status).is_some() => {
                tracing::warn!(to = %to, "forward refused: {}", status.message());
                Err(ClientError::NoLeader { partition })
            }
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
