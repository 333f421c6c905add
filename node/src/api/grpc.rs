//! gRPC services `ringkv.v1.Kv` and `ringkv.v1.Cluster`. Every call is
//! from a [`Principal`] (`principal`: a member's hello, a bearer token,
//! or anyone while the cluster has no token), checked against what it does
//! before the node is asked ([`crate::auth`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ringkv_core::kv::KeyValue;
use ringkv_core::node::{
    ClientError, ClientResponse, Drain, DrainError, TokenChange, TokenChangeError, TokenEdit,
};
use ringkv_core::placement::ReplicaMove;
use ringkv_core::placement::planner::{MoveProgress, Phase, Reason};
use ringkv_core::watch::{Change, ChangeKind};
use ringkv_core::{NodeId, PartitionId};
use ringkv_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::errors::to_status;
use super::{convert, scan};
use crate::address::PeerAddr;
use crate::auth::{self, AccessError, Principal, Unauthenticated};
use crate::handle::NodeHandle;
use crate::transport::Handshake;
use crate::view::ClusterView;
use crate::watch::{Cursor, Start, Target, WatchError, Watcher};
use ringkv_core::access::{Action, AuthError};

pub struct KvService {
    node: NodeHandle,
    partition_count: u32,
}

impl KvService {
    pub fn new(node: NodeHandle, partition_count: u32) -> Self {
        KvService {
            node,
            partition_count,
        }
    }
}

/// Who a call is from: a member (it carries a hello, checked as on the
/// peer service), a token's holder (`authorization: Bearer ...`), or
/// anyone while authentication is off; else the refusal (`UNAUTHENTICATED`).
pub(crate) fn principal<T>(node: &NodeHandle, request: &Request<T>) -> Result<Principal, Status> {
    if Handshake::claims_member(request) {
        return node
            .handshake()
            .admit_member_call(request)
            .map(Principal::Peer);
    }
    let refuse = |e: Unauthenticated| AccessError::from(e).to_status();
    let token = request
        .metadata()
        .get("authorization")
        .map(|v| {
            v.to_str()
                .map_err(|_| Unauthenticated::Token(AuthError::Malformed))
                .and_then(auth::bearer)
        })
        .transpose()
        .map_err(refuse)?;
    node.access().principal(token).map_err(refuse)
}

/// `PERMISSION_DENIED` unless `principal` may do `action`.
pub(crate) fn allow(principal: &Principal, action: Action<'_>) -> Result<(), Status> {
    principal
        .check(action)
        .map_err(|e| AccessError::from(e).to_status())
}

/// `PERMISSION_DENIED` unless `principal` may make `req`.
fn allow_request(
    principal: &Principal,
    req: &ringkv_core::node::ClientRequest,
) -> Result<(), Status> {
    auth::check_request(principal, req).map_err(|e| AccessError::from(e).to_status())
}

fn unexpected(r: ClientResponse) -> Status {
    Status::internal(format!("unexpected response from the node: {r:?}"))
}

/// Watch responses queued for one gRPC watcher before it waits.
const WATCH_RESPONSES_QUEUED: usize = 16;

/// A watch that cannot go on, as a gRPC status with its `ringkv-code`.
fn watch_status(e: &WatchError) -> Status {
    let (mut status, code) = match e {
        WatchError::Compacted { .. } => (Status::failed_precondition(e.to_string()), "compacted"),
        WatchError::NotHere { .. } => (Status::unavailable(e.to_string()), "not_a_replica"),
        WatchError::BadCursor(_) => (Status::invalid_argument(e.to_string()), "invalid_cursor"),
        WatchError::StartNeedsOnePartition => {
            (Status::invalid_argument(e.to_string()), "invalid_argument")
        }
        WatchError::Stopping => (Status::unavailable(e.to_string()), "not_a_replica"),
    };
    status.metadata_mut().insert(
        super::errors::CODE_METADATA,
        tonic::metadata::MetadataValue::from_static(code),
    );
    if let WatchError::Compacted { compacted, .. } = e
        && let Ok(floor) = compacted.floor.to_string().parse()
    {
        status
            .metadata_mut()
            .insert(crate::watch::FLOOR_METADATA, floor);
    }
    status
}

fn watch_event(p: PartitionId, c: Change, values: bool) -> pb::WatchEvent {
    let kind = match c.kind {
        ChangeKind::Put => pb::watch_event::Kind::Put,
        ChangeKind::Delete => pb::watch_event::Kind::Delete,
        ChangeKind::Expire => pb::watch_event::Kind::Expire,
    };
    pb::WatchEvent {
        kind: kind as i32,
        key: c.key,
        value: if values { c.value } else { Default::default() },
        partition: p.0,
        revision: c.revision,
        version: c.version,
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let principal = principal(&self.node, &request)?;
        let r = request.into_inner();
        let target = match r.target {
            Some(pb::watch_request::Target::Key(key)) if !key.is_empty() => Target::Key(key),
            Some(pb::watch_request::Target::Prefix(prefix)) => Target::Prefix(prefix),
            _ => {
                return Err(Status::invalid_argument(
                    "a watch needs a non-empty key or a prefix",
                ));
            }
        };
        principal
            .check_target(&target)
            .map_err(|e| AccessError::from(e).to_status())?;
        let start = match (r.cursor.is_empty(), r.start_revision) {
            (true, 0) => Start::Now,
            (true, rev) => Start::Revision(rev),
            (false, 0) => Start::Cursor(Cursor::decode(&r.cursor).map_err(|e| watch_status(&e))?),
            (false, _) => {
                return Err(Status::invalid_argument(
                    "give start_revision or a cursor, not both",
                ));
            }
        };
        let watcher = if r.partitions.is_empty() {
            Watcher::attach(&self.node, self.partition_count, target, start).await
        } else {
            // A node relaying this watch: only these partitions, from here.
            let only: Vec<PartitionId> = r.partitions.iter().map(|&p| PartitionId(p)).collect();
            Watcher::start_only(
                self.node.watches(),
                self.partition_count,
                target,
                start,
                &only,
            )
        };
        let mut watcher = watcher.map_err(|e| watch_status(&e))?;
        let values = !r.no_values;
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_RESPONSES_QUEUED);
        let first = pb::WatchResponse {
            events: Vec::new(),
            cursor: watcher.cursor().encode(),
        };
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    next = watcher.next() => next,
                    // The client went away.
                    () = tx.closed() => return,
                };
                // A token revoked meanwhile ends the stream.
                if !node.access().still_allows(&principal) {
                    let revoked = AccessError::from(Unauthenticated::Revoked).to_status();
                    let _ = tx.send(Err(revoked)).await;
                    return;
                }
                let response = next
                    .map(|batch| pb::WatchResponse {
                        events: batch
                            .changes
                            .into_iter()
                            .map(|(p, c)| watch_event(p, c, values))
                            .collect(),
                        cursor: batch.cursor.encode(),
                    })
                    .map_err(|e| watch_status(&e));
                let end = response.is_err();
                if tx.send(response).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let principal = principal(&self.node, &request)?;
        let r = request.into_inner();
        let range = scan::requested_range(r.prefix, Some(r.start), r.end)
            .map_err(Status::invalid_argument)?;
        allow(
            &principal,
            Action::ReadRange {
                start: &range.start,
                end: range.end.as_deref(),
            },
        )?;
        let limit =
            scan::page_limit((r.limit != 0).then_some(r.limit)).map_err(|e| to_status(&e))?;
        let consistency =
            convert::consistency_from_proto(r.consistency).map_err(Status::invalid_argument)?;
        let query = scan::PageQuery {
            range: &range,
            from: r.cursor,
            limit,
            keys_only: r.keys_only,
            consistency,
            only: None,
        };
        let page = scan::scan_page(&self.node, self.partition_count, &query)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ScanResponse {
            kvs: page.kvs.iter().map(KeyValue::to_proto).collect(),
            cursor: page.next.unwrap_or_default(),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let principal = principal(&self.node, &request)?;
        let req = convert::get_request(request.into_inner()).map_err(Status::invalid_argument)?;
        allow_request(&principal, &req)?;
        match self.node.request(req).await {
            Ok(ClientResponse::Value(Some(kv))) => Ok(Response::new(pb::GetResponse {
                kv: Some(kv.to_proto()),
            })),
            Ok(ClientResponse::Value(None)) => Err(to_status(&ClientError::NotFound)),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(to_status(&e)),
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let principal = principal(&self.node, &request)?;
        let req = convert::put_request(request.into_inner());
        allow_request(&principal, &req)?;
        match self.node.request(req).await {
            Ok(ClientResponse::Put {
                version,
                mod_revision,
                created,
                previous,
            }) => Ok(Response::new(convert::put_response(
                version,
                mod_revision,
                created,
                &previous,
            ))),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(to_status(&e)),
        }
    }

    async fn expire(
        &self,
        request: Request<pb::ExpireRequest>,
    ) -> Result<Response<pb::ExpireResponse>, Status> {
        let principal = principal(&self.node, &request)?;
        let req = convert::expire_request(request.into_inner());
        allow_request(&principal, &req)?;
        match self.node.request(req).await {
            Ok(ClientResponse::ExpirySet {
                changed,
                mod_revision,
            }) => Ok(Response::new(pb::ExpireResponse {
                changed,
                mod_revision,
            })),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(to_status(&e)),
        }
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let principal = principal(&self.node, &request)?;
        let req = convert::delete_request(request.into_inner());
        allow_request(&principal, &req)?;
        match self.node.request(req).await {
            Ok(ClientResponse::Deleted { revision, previous }) => {
                Ok(Response::new(convert::delete_response(revision, &previous)))
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(to_status(&e)),
        }
    }

    async fn increment(
        &self,
        request: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::IncrementResponse>, Status> {
        let principal = principal(&self.node, &request)?;
        let req = convert::increment_request(request.into_inner());
        allow_request(&principal, &req)?;
        match self.node.request(req).await {
            Ok(ClientResponse::Incremented {
                value,
                version,
                mod_revision,
            }) => Ok(Response::new(pb::IncrementResponse {
                value,
                version,
                mod_revision,
            })),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(to_status(&e)),
        }
    }

    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let principal = principal(&self.node, &request)?;
        let req = convert::append_request(request.into_inner());
        allow_request(&principal, &req)?;
        match self.node.request(req).await {
            Ok(ClientResponse::Appended {
                len,
                version,
                mod_revision,
            }) => Ok(Response::new(pb::AppendResponse {
                len,
                version,
                mod_revision,
            })),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(to_status(&e)),
        }
    }

    async fn put_all(
        &self,
        request: Request<pb::PutAllRequest>,
    ) -> Result<Response<pb::PutAllResponse>, Status> {
        let principal = principal(&self.node, &request)?;
        let req = convert::put_all_request(request.into_inner());
        allow_request(&principal, &req)?;
        match self.node.request(req).await {
            Ok(ClientResponse::PutAll {
                mod_revision,
                created,
            }) => Ok(Response::new(pb::PutAllResponse {
                mod_revision,
                created,
            })),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(to_status(&e)),
        }
    }
}

/// How long `DrainNode`, `AddToken` and `RemoveToken` wait for their
/// change of the metadata to be committed.
const COMMIT_PATIENCE: Duration = Duration::from_secs(5);
/// How often it asks the core again meanwhile.
const COMMIT_POLL: Duration = Duration::from_millis(50);

pub struct ClusterService {
    node: NodeHandle,
    handshake: Arc<Handshake>,
    addrs: Arc<BTreeMap<NodeId, PeerAddr>>,
}

impl ClusterService {
    pub fn new(
        node: NodeHandle,
        handshake: Arc<Handshake>,
        addrs: Arc<BTreeMap<NodeId, PeerAddr>>,
    ) -> Self {
        ClusterService {
            node,
            handshake,
            addrs,
        }
    }
}

fn move_status(m: &MoveProgress) -> pb::MoveStatus {
    let (kind, from, to) = match m.mv {
        ReplicaMove::Replace { from, to } => ("replace", from.0, to.0),
        ReplicaMove::Add { to } => ("add", 0, to.0),
        ReplicaMove::Remove { from } => ("remove", from.0, 0),
    };
    let catch_up = m.catch_up.as_ref();
    pb::MoveStatus {
        partition: m.partition.0,
        kind: kind.to_owned(),
        from,
        to,
        reason: match m.reason {
            Reason::UnderReplicated => "under-replicated",
            Reason::Leaving => "leaving",
            Reason::Rebalance => "rebalance",
            Reason::Cleanup => "cleanup",
        }
        .to_owned(),
        phase: match m.phase {
            Phase::Waiting => "waiting",
            Phase::Starting => "starting",
            Phase::CatchingUp => "catching-up",
            Phase::Joint => "joint",
        }
        .to_owned(),
        snapshot_bytes_acked: catch_up.and_then(|c| c.snapshot).map_or(0, |(a, _)| a),
        snapshot_bytes_total: catch_up.and_then(|c| c.snapshot).map_or(0, |(_, t)| t),
        entries_behind: catch_up.map_or(0, |c| c.last_index.saturating_sub(c.matched)),
        eta_seconds: m.eta.map(|d| d.as_secs_f64()),
    }
}

/// The status message for a view (shared with REST).
/// This node's disk and its clients' requests.
fn usage(node: &NodeHandle) -> pb::NodeUsage {
    let storage = node.storage_stats();
    pb::NodeUsage {
        wal_bytes: storage.wal_bytes,
        wal_segments: storage.segments as u64,
        snapshot_bytes: storage.snapshot_bytes,
        operations: node
            .request_stats()
            .read()
            .into_iter()
            .map(|o| pb::OperationStats {
                name: o.name.to_owned(),
                ok: o.outcomes[0],
                refused: o.outcomes[1],
                unavailable: o.outcomes[2],
                unknown: o.outcomes[3],
                cumulative: o.cumulative,
                total_micros: o.total_micros,
            })
            .collect(),
    }
}

pub fn status_response(
    view: &ClusterView,
    node: &NodeHandle,
    handshake: &Handshake,
    addrs: &BTreeMap<NodeId, PeerAddr>,
) -> pb::StatusResponse {
    let cfg = node.ring().config();
    pb::StatusResponse {
        incarnation: handshake.identity().incarnation.to_string(),
        cluster_uid: handshake
            .record()
            .map(|r| r.uid.to_string())
            .unwrap_or_default(),
        formation: handshake.formation_status(),
        refusals: handshake
            .recent_refusals()
            .into_iter()
            .map(|(r, age)| pb::PeerRefusal {
                peer: r.peer.0,
                direction: r.direction.as_str().to_owned(),
                reason: r.reason,
                message: r.message,
                count: r.count,
                seconds_ago: age.as_secs_f64(),
            })
            .collect(),
        node_id: view.node_id.0,
        partition_count: cfg.partition_count,
        replication_factor: cfg.replication_factor as u32,
        nodes: view
            .members
            .iter()
            .map(|m| pb::NodeStatus {
                id: m.id.0,
                grpc_addr: m
                    .address
                    .clone()
                    .or_else(|| addrs.get(&m.id).map(ToString::to_string))
                    .unwrap_or_default(),
                health: m.health.as_str().to_owned(),
                phi: if m.phi.is_finite() { m.phi } else { f64::MAX },
                state: m.state.map(|s| s.as_str().to_owned()).unwrap_or_default(),
                last_heard_seconds_ago: m.last_heard.map(|d| d.as_secs_f64()),
                rest_addr: m.client.rest.clone(),
                resp_addr: m.client.resp.clone(),
            })
            .collect(),
        metadata_version: view.metadata_version,
        metadata_leader: view.metadata_leader.map_or(0, |l| l.0),
        controller: view.controller,
        moves: view
            .plan
            .iter()
            .flat_map(|plan| &plan.moves)
            .map(move_status)
            .collect(),
        under_replicated: view
            .plan
            .iter()
            .flat_map(|plan| &plan.under_replicated)
            .map(|p| p.0)
            .collect(),
        usage: Some(usage(node)),
        partitions: view
            .partitions
            .iter()
            .map(|p| pb::PartitionStatus {
                partition: p.partition.0,
                leader: p.leader.map_or(0, |l| l.0),
                replicas: p.replicas.iter().map(|r| r.0).collect(),
                term: p.term,
                commit_index: p.commit_index,
                applied_index: p.applied_index,
                keys: p.keys,
                followers: p
                    .followers
                    .iter()
                    .map(|f| {
                        let (acked, total) = f.snapshot_progress.unwrap_or((0, 0));
                        pb::ReplicaProgress {
                            node: f.node.0,
                            match_index: f.match_index,
                            lag: f.lag,
                            state: f.state.to_owned(),
                            snapshot_bytes_acked: acked,
                            snapshot_bytes_total: total,
                            lagging: f.lagging,
                        }
                    })
                    .collect(),
                lag: p.lag,
                under_replicated: p.under_replicated,
                catching_up: p.catching_up,
                learners: p.learners.iter().map(|r| r.0).collect(),
                outgoing: p.outgoing.iter().map(|r| r.0).collect(),
            })
            .collect(),
    }
}

/// Where a key lives (shared with REST).
pub fn locate_response(node: &NodeHandle, key: &[u8]) -> pb::LocateResponse {
    let p = node.ring().partition_of(key);
    let view = node.view();
    // The group's voters where this node replicates it, else the ring's.
    let replicas = match view.partitions.get(p.0 as usize) {
        Some(v) => v.replicas.iter().map(|r| r.0).collect(),
        None => node.ring().replicas(p).iter().map(|r| r.0).collect(),
    };
    pb::LocateResponse {
        partition: p.0,
        leader: view.leader_of(p).map_or(0, |l| l.0),
        replicas,
        slot: u32::from(ringkv_core::ring::key_slot(key)),
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        allow(&principal(&self.node, &request)?, Action::Status)?;
        let view = self.node.view();
        Ok(Response::new(status_response(
            &view,
            &self.node,
            &self.handshake,
            &self.addrs,
        )))
    }

    async fn locate(
        &self,
        request: Request<pb::LocateRequest>,
    ) -> Result<Response<pb::LocateResponse>, Status> {
        allow(&principal(&self.node, &request)?, Action::Status)?;
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(to_status(&ClientError::EmptyKey));
        }
        Ok(Response::new(locate_response(&self.node, &key)))
    }

    async fn change_config(
        &self,
        request: Request<pb::ChangeConfigRequest>,
    ) -> Result<Response<pb::ChangeConfigResponse>, Status> {
        allow(&principal(&self.node, &request)?, Action::Admin)?;
        let r = request.into_inner();
        let partitions = self.node.ring().config().partition_count;
        if r.partition >= partitions {
            return Err(Status::invalid_argument(format!(
                "partition {} does not exist (the cluster has {partitions})",
                r.partition
            )));
        }
        let change = r
            .change
            .ok_or_else(|| Status::invalid_argument("change is required"))
            .and_then(|c| {
                ringkv_core::wire::conf_change_from_proto(c)
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            })?;
        let partition = ringkv_core::PartitionId(r.partition);
        match self.node.change_config(partition, change).await {
            Ok(index) => Ok(Response::new(pb::ChangeConfigResponse { index })),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        allow(&principal(&self.node, &request)?, Action::Admin)?;
        let node = request.into_inner().node;
        if node == 0 {
            return Err(Status::invalid_argument(
                "node is required (ids start at 1)",
            ));
        }
        // Answered once the committed member list has it draining: a
        // proposal can be lost with the controller's term, so it is asked
        // again (which proposes again if it was) until then.
        let deadline = tokio::time::Instant::now() + COMMIT_PATIENCE;
        loop {
            match self.node.drain(NodeId(node)).await {
                Ok(Drain::Draining) => return Ok(Response::new(pb::DrainNodeResponse {})),
                // Ours, or another change of the member list, in flight.
                Ok(Drain::Proposed) | Err(DrainError::Busy) => {}
                Err(e) => return Err(Status::failed_precondition(e.to_string())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::failed_precondition(format!(
                    "the drain of n{node} is not committed yet (the metadata group may be \
                     changing leaders); retry shortly"
                )));
            }
            tokio::time::sleep(COMMIT_POLL).await;
        }
    }

    async fn add_token(
        &self,
        request: Request<pb::AddTokenRequest>,
    ) -> Result<Response<pb::AddTokenResponse>, Status> {
        allow(&principal(&self.node, &request)?, Action::Admin)?;
        let token = request
            .into_inner()
            .token
            .ok_or_else(|| Status::invalid_argument("token is required"))?;
        let (id, record) = ringkv_core::metadata::token_from_proto(token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.commit_token_change(TokenEdit::Add { id, record })
            .await?;
        Ok(Response::new(pb::AddTokenResponse {}))
    }

    async fn remove_token(
        &self,
        request: Request<pb::RemoveTokenRequest>,
    ) -> Result<Response<pb::RemoveTokenResponse>, Status> {
        allow(&principal(&self.node, &request)?, Action::Admin)?;
        let id = request.into_inner().id;
        if !ringkv_core::access::valid_id(&id) {
            return Err(Status::invalid_argument(
                "not a token id (1 to 32 lower-case letters and digits)",
            ));
        }
        // Asked about a token this node has never heard of: say so (once
        // proposed, its absence is what says the removal is committed).
        if !self.node.access().tokens().by_id.contains_key(&id) {
            return Err(Status::not_found(format!("no token has id {id}")));
        }
        self.commit_token_change(TokenEdit::Remove { id }).await?;
        Ok(Response::new(pb::RemoveTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        allow(&principal(&self.node, &request)?, Action::Admin)?;
        let tokens = self.node.access().tokens();
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens
                .by_id
                .iter()
                .map(|(id, t)| pb::AccessToken {
                    secret_hash: Default::default(),
                    ..ringkv_core::metadata::token_to_proto(id, t)
                })
                .collect(),
            version: tokens.version,
        }))
    }
}

impl ClusterService {
    /// Asks the core for a token change until it is committed (a proposal
    /// can be lost with the controller's term: asking again proposes again).
    async fn commit_token_change(&self, edit: TokenEdit) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + COMMIT_PATIENCE;
        loop {
            match self.node.token_change(edit.clone()).await {
                Ok(TokenChange::Committed) => return Ok(()),
                Ok(TokenChange::Proposed) | Err(TokenChangeError::Busy) => {}
                Err(e) => return Err(Status::failed_precondition(e.to_string())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(
                    "the token change is not committed yet (the metadata group may be changing \
                     leaders); ask again: a change already made is not made twice",
                ));
            }
            tokio::time::sleep(COMMIT_POLL).await;
        }
    }
}
