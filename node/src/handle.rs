//! How the rest of the node reaches the core's event loop: the [`Input`]s the
//! loop takes, the [`NodeHandle`] the APIs and the peer service hold, and
//! (simulation only) the [`Observer`] that hears the core's observations.
//!
//! This module owns no task and makes no decision; the driver
//! (`crate::driver`) runs the loop these feed, and the core decides what
//! every input means. Both the driver and the transport depend on this
//! module, never on each other's internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ringkv_core::identity::Incarnation;
use ringkv_core::io::{IoId, PeerBatch};
use ringkv_core::node::{
    ClientError, ClientRequest, ClientResponse, ConfChangeRefused, Drain, DrainError,
    RegisterError, Registration, TokenChange, TokenChangeError, TokenEdit,
};
use ringkv_core::raft::ConfChange;
use ringkv_core::ring::Ring;
use ringkv_core::routing::Hops;
use ringkv_core::{NodeId, PartitionId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::requests::{RequestStats, operation_of};
use crate::storage::StorageStats;
use crate::view::ClusterView;
use crate::watch::WatchHub;

/// What a client call gets back.
pub type ClientResult = Result<ClientResponse, ClientError>;

/// An input for the core.
pub enum Input {
    Peer(PeerBatch),
    Request {
        req: ClientRequest,
        hops: Hops,
        reply: oneshot::Sender<ClientResult>,
    },
    /// Every IO up to this one is durable.
    Persisted(IoId),
    /// Storage wants these partitions snapshotted so old WAL segments can go.
    Compact(Vec<PartitionId>),
    /// Storage failed; the node must stop (it can no longer make promises).
    StorageFailed(String),
    /// Wants a digest of every partition this node replicates.
    Digests(oneshot::Sender<Vec<PartitionDigest>>),
    /// The node is about to stop: hand its leaderships over; the answer is
    /// how many groups it still leads (see `Node::handle_leaving`).
    Leave(oneshot::Sender<usize>),
    /// An operator's configuration change of one partition's group.
    ConfChange {
        partition: PartitionId,
        change: ConfChange,
        reply: oneshot::Sender<Result<u64, ConfChangeRefused>>,
    },
    /// An operator's request to drain a node.
    TokenChange {
        edit: TokenEdit,
        reply: oneshot::Sender<Result<TokenChange, TokenChangeError>>,
    },
    Drain {
        node: NodeId,
        reply: oneshot::Sender<Result<Drain, DrainError>>,
    },
    /// A node asks to join the cluster (`Peer.Join`).
    Register {
        node: NodeId,
        address: String,
        incarnation: Incarnation,
        reply: oneshot::Sender<JoinAnswer>,
    },
}

/// The core's answer to [`Input::Register`], with the controller's address
/// when the answer is "ask the controller".
#[derive(Debug)]
pub struct JoinAnswer {
    pub result: Result<Registration, RegisterError>,
    pub controller_address: Option<String>,
}

/// A replica's state machine in one number, to compare replicas: equal
/// states give equal digests (`KvStore::digest`, xxh3 of the snapshot bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionDigest {
    pub partition: PartitionId,
    pub applied_index: u64,
    pub digest: u64,
}

/// The handle the APIs use to reach the core.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) tx: mpsc::Sender<Input>,
    /// This node's replicas' recent changes, for watches.
    pub(crate) watches: Arc<WatchHub>,
    pub(crate) view: watch::Receiver<Arc<ClusterView>>,
    pub(crate) storage_stats: watch::Receiver<StorageStats>,
    pub(crate) ring: Arc<Ring>,
    /// Set when the event loop starts: after formation gave the node a
    /// cluster (see `Server::start`).
    pub(crate) started: Arc<AtomicBool>,
    pub(crate) stopped: Arc<AtomicBool>,
    /// What this node's own clients asked (forwarded-in requests are
    /// counted where they came in).
    pub(crate) requests: Arc<RequestStats>,
    /// A planned stop: new requests are refused, those inside are awaited.
    pub(crate) closing: Arc<Closing>,
    /// How this node dials other members (watch relays).
    pub(crate) dialer: crate::transport::Dialer,
    /// This node's hello for its calls to other members' client services,
    /// and the check of theirs.
    pub(crate) handshake: Arc<crate::transport::Handshake>,
    /// Who may do what (see [`crate::auth`]).
    pub(crate) access: Arc<crate::auth::Access>,
}

/// How a planned stop lets the requests inside finish: once `closed`, a
/// new request is refused (`node_stopping`: nothing applied, retry
/// elsewhere) and the stop waits for `in_flight` to reach zero, so that
/// no client, and no node that forwarded to this one, is left with an
/// unknown outcome by the stop itself.
#[derive(Default)]
pub struct Closing {
    closed: AtomicBool,
    in_flight: AtomicUsize,
}

/// One request inside the node, counted in [`Closing::in_flight`].
struct InFlight<'a>(&'a Closing);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Closing {
    fn enter(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self);
        // Counted before the check: a stop that sees zero after closing
        // has no request slipping in behind it.
        (!self.closed.load(Ordering::Acquire)).then_some(guard)
    }
}

impl NodeHandle {
    /// Runs a client request to completion (forwarding inside the cluster as
    /// needed). Never fails silently: a write whose fate is unknown says so.
    pub async fn request(&self, req: ClientRequest) -> ClientResult {
        let op = operation_of(&req);
        let started = tokio::time::Instant::now();
        let result = self.request_with_hops(req, Hops(0)).await;
        self.requests.record(op, &result, started.elapsed());
        result
    }

    /// What this node's clients asked so far, per operation.
    pub fn request_stats(&self) -> &RequestStats {
        &self.requests
    }

    /// A request another node forwarded to us, `hops` forwards so far.
    pub async fn request_with_hops(&self, req: ClientRequest, hops: Hops) -> ClientResult {
        if !self.started.load(Ordering::Relaxed) {
            // Nothing would answer before formation ends; say so at once.
            return Err(ClientError::NotInCluster);
        }
        let Some(_inside) = self.closing.enter() else {
            return Err(ClientError::Stopping);
        };
        let is_write = req.is_write();
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Input::Request { req, hops, reply })
            .await
            .is_err()
        {
            // The event loop has ended: the request never entered it.
            return Err(ClientError::Stopping);
        }
        match rx.await {
            Ok(r) => r,
            // The event loop stopped (or was dropped) with the request inside
            // it: a write may have been proposed already.
            Err(_) if is_write => Err(ClientError::OutcomeUnknown {
                cause: ringkv_core::node::UnknownCause::NodeStopped,
            }),
            Err(_) => Err(ClientError::Stopping),
        }
    }

    /// A digest of every partition this node replicates, computed now by the
    /// event loop (it hashes every key, so it is for checks, not for every
    /// request). `None` if the node is stopping.
    pub async fn partition_digests(&self) -> Option<Vec<PartitionDigest>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Digests(reply)).await.ok()?;
        rx.await.ok()
    }

    /// A planned stop's last step before the event loop ends: refuses new
    /// requests (`node_stopping`) and waits, up to `within`, for those
    /// inside to be answered; how many were still inside at the end.
    pub async fn close(&self, within: Duration) -> usize {
        self.closing.closed.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let inside = self.closing.in_flight.load(Ordering::Acquire);
            if inside == 0 || tokio::time::Instant::now() >= deadline {
                return inside;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// This node is about to stop: hands each group it leads to another
    /// voter; how many it still leads (`None`: the node is stopping).
    pub async fn leave(&self) -> Option<usize> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Leave(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Proposes one step of a configuration change of `partition`'s group,
    /// which this node must lead; the index of its entry (done once that
    /// commits), or why nothing was proposed.
    pub async fn change_config(
        &self,
        partition: PartitionId,
        change: ConfChange,
    ) -> Result<u64, ConfChangeRefused> {
        let stopping = || ConfChangeRefused::Halted("this node is shutting down".into());
        let (reply, rx) = oneshot::channel();
        let input = Input::ConfChange {
            partition,
            change,
            reply,
        };
        self.tx.send(input).await.map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }

    /// Asks this node, which must run the placement controller, to drain
    /// `node` (see [`ringkv_core::node::Node::handle_drain`]): ask again
    /// while the answer is [`Drain::Proposed`].
    pub async fn drain(&self, node: NodeId) -> Result<Drain, DrainError> {
        let this = self.view.borrow().node_id;
        let stopping = || DrainError::NotController {
            this,
            controller: None,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Drain { node, reply })
            .await
            .map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }

    /// Asks this node, which must run the placement controller, to add or
    /// remove an access token (see `Node::handle_token_change`): ask again
    /// while the answer is [`TokenChange::Proposed`].
    pub async fn token_change(&self, edit: TokenEdit) -> Result<TokenChange, TokenChangeError> {
        let this = self.view.borrow().node_id;
        let stopping = || TokenChangeError::NotController {
            this,
            controller: None,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::TokenChange { edit, reply })
            .await
            .map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }

    /// Asks the core to register `node` as a member (see
    /// `Node::handle_register`).
    pub async fn register(
        &self,
        node: NodeId,
        address: String,
        incarnation: Incarnation,
    ) -> JoinAnswer {
        let this = self.view.borrow().node_id;
        let stopping = || JoinAnswer {
            result: Err(RegisterError::NotController {
                this,
                controller: None,
            }),
            controller_address: None,
        };
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Input::Register {
                node,
                address,
                incarnation,
                reply,
            })
            .await
            .is_err()
        {
            return stopping();
        }
        rx.await.unwrap_or_else(|_| stopping())
    }

    /// This node's replicas' recent changes ([`crate::watch`]).
    pub fn watches(&self) -> Arc<WatchHub> {
        self.watches.clone()
    }

    /// Who may do what: the clients' access tokens as this node knows them.
    pub fn access(&self) -> &crate::auth::Access {
        &self.access
    }

    /// This node's peer handshake (its hello on calls to other members).
    pub fn handshake(&self) -> &Arc<crate::transport::Handshake> {
        &self.handshake
    }

    /// The latest published view of the cluster.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Storage counters as of the latest WAL write.
    pub fn storage_stats(&self) -> StorageStats {
        *self.storage_stats.borrow()
    }

    /// Whether the event loop has started (the node is in a cluster).
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether the event loop has stopped (storage failure or shutdown).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// Simulation only: a receiver of the core's observations, called on the
/// driver's task in the order the core made them.
#[cfg(madsim)]
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(&ringkv_core::node::Observation) + Send + Sync>);

#[cfg(madsim)]
impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}
