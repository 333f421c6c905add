//! An in-process fake ringkv node serving `ringkv.v1.Kv` and
//! `ringkv.v1.Cluster` over real gRPC, for the client and bench tests: an
//! in-memory map with preconditions, a script of failures to play first,
//! and a request counter.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringkv_proto::v1::cluster_server::{Cluster, ClusterServer};
use ringkv_proto::v1::kv_server::{Kv, KvServer};
use ringkv_proto::v1::{
    ChangeConfigRequest, ChangeConfigResponse, DeleteRequest, DeleteResponse, ExpireRequest,
    ExpireResponse, GetRequest, GetResponse, KeyValue, LocateRequest, LocateResponse, NodeStatus,
    PartitionStatus, PutRequest, PutResponse, ReplicaProgress, ScanRequest, ScanResponse,
    StatusRequest, StatusResponse, precondition,
};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::failure::{CODE_METADATA, CURRENT_MOD_REVISION_METADATA};

pub(crate) fn sample_status() -> StatusResponse {
    let node = |id: u64, health: &str, phi: f64, heard: Option<f64>| NodeStatus {
        id,
        grpc_addr: format!("127.0.0.1:909{id}"),
        health: health.into(),
        phi,
        state: "up".into(),
        last_heard_seconds_ago: heard,
        rest_addr: format!("127.0.0.1:808{id}"),
        resp_addr: String::new(),
    };
    let part = |partition: u32, leader: u64| PartitionStatus {
        partition,
        leader,
        replicas: vec![1, 2, 3],
        term: 3,
        commit_index: 120 + u64::from(partition),
        applied_index: 120 + u64::from(partition),
        keys: 10 * u64::from(partition),
        ..Default::default()
    };
    // Node 1 leads partition 0, whose replica on node 3 is being sent a
    // snapshot; its own replica of partition 1 is catching up.
    let mut p0 = part(0, 1);
    p0.followers = vec![
        ReplicaProgress {
            node: 2,
            match_index: 120,
            lag: 0,
            state: "replicate".into(),
            ..Default::default()
        },
        ReplicaProgress {
            node: 3,
            match_index: 20,
            lag: 100_020,
            state: "snapshot".into(),
            snapshot_bytes_acked: 3 << 20,
            snapshot_bytes_total: 12 << 20,
            lagging: true,
        },
    ];
    p0.under_replicated = true;
    let mut p1 = part(1, 2);
    p1.lag = 4_500;
    p1.catching_up = true;
    StatusResponse {
        node_id: 1,
        partition_count: 4,
        replication_factor: 3,
        nodes: vec![
            node(1, "self", 0.0, None),
            node(2, "up", 0.41, Some(0.05)),
            node(3, "down", 12.5, Some(7.25)),
        ],
        partitions: vec![p0, p1, part(2, 1), part(3, 0)],
        incarnation: "0000000000000000000000000000a11c".to_owned(),
        cluster_uid: "000000000000000000000000000c1a55".to_owned(),
        formation: String::new(),
        refusals: vec![ringkv_proto::v1::PeerRefusal {
            peer: 3,
            direction: "incoming".to_owned(),
            reason: "peer_replaced".to_owned(),
            message: "n3's data directory was replaced or wiped".to_owned(),
            count: 7,
            seconds_ago: 2.0,
        }],
        metadata_version: 9,
        metadata_leader: 1,
        // Node 1 is the controller: node 3's replica of partition 0 is
        // being replaced (node 3 has not been declared dead; an operator's
        // drain, say), and one more move waits for the throttle.
        controller: true,
        moves: vec![
            ringkv_proto::v1::MoveStatus {
                partition: 0,
                kind: "replace".into(),
                from: 3,
                to: 4,
                reason: "leaving".into(),
                phase: "catching-up".into(),
                snapshot_bytes_acked: 3 << 20,
                snapshot_bytes_total: 12 << 20,
                entries_behind: 100_020,
                eta_seconds: Some(9.0),
            },
            ringkv_proto::v1::MoveStatus {
                partition: 2,
                kind: "replace".into(),
                from: 3,
                to: 4,
                reason: "leaving".into(),
                phase: "waiting".into(),
                ..Default::default()
            },
        ],
        under_replicated: vec![],
        usage: None,
    }
}

/// What the fake server does with the next requests, in order; once the
/// script runs out it serves from its map.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scripted {
    Fail(tonic::Code, &'static str),
    Hang,
}

#[derive(Default)]
pub(crate) struct FakeState {
    pub(crate) script: VecDeque<Scripted>,
    /// key -> (value, version, mod_revision)
    pub(crate) keys: BTreeMap<Bytes, (Bytes, u64, u64)>,
    revision: u64,
}

#[derive(Clone, Default)]
pub(crate) struct FakeNode {
    pub(crate) state: Arc<Mutex<FakeState>>,
    pub(crate) requests: Arc<AtomicUsize>,
}

fn coded(code: tonic::Code, ringkv_code: &str) -> Status {
    let mut status = Status::new(code, format!("fake {ringkv_code}"));
    status
        .metadata_mut()
        .insert(CODE_METADATA, MetadataValue::try_from(ringkv_code).unwrap());
    status
}

impl FakeNode {
    /// Counts the request and plays the next scripted step, if any.
    async fn step(&self) -> Result<(), Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let next = self.state.lock().unwrap().script.pop_front();
        match next {
            Some(Scripted::Fail(code, name)) => Err(coded(code, name)),
            Some(Scripted::Hang) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Kv for FakeNode {
    /// Pages over the map: the keys under `prefix` from `cursor` (the next
    /// key to list), `limit` of them; the cursor of a page is its last key
    /// and a NUL.
    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        self.step().await?;
        let r = request.into_inner();
        let prefix = r.prefix.unwrap_or_default();
        let state = self.state.lock().unwrap();
        let mut kvs: Vec<KeyValue> = state
            .keys
            .range(r.cursor.max(prefix.clone())..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .take(r.limit as usize + 1)
            .map(|(k, (v, version, mod_revision))| KeyValue {
                key: k.clone(),
                value: if r.keys_only { Bytes::new() } else { v.clone() },
                version: *version,
                create_revision: *mod_revision,
                mod_revision: *mod_revision,
                expires_at_unix_ms: 0,
            })
            .collect();
        let cursor = if kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            let mut next = kvs.last().unwrap().key.to_vec();
            next.push(0);
            Bytes::from(next)
        } else {
            Bytes::new()
        };
        Ok(Response::new(ScanResponse { kvs, cursor }))
    }

    type WatchStream =
        tokio_stream::wrappers::ReceiverStream<Result<ringkv_proto::v1::WatchResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<ringkv_proto::v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("the fake node has no watches"))
    }

    async fn expire(
        &self,
        _request: Request<ExpireRequest>,
    ) -> Result<Response<ExpireResponse>, Status> {
        Err(Status::unimplemented("the fake node has no expiry"))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.step().await?;
        let key = request.into_inner().key;
        let state = self.state.lock().unwrap();
        let (value, version, mod_revision) = state
            .keys
            .get(&key)
            .cloned()
            .ok_or_else(|| coded(tonic::Code::NotFound, "not_found"))?;
        Ok(Response::new(GetResponse {
            kv: Some(KeyValue {
                key,
                value,
                version,
                create_revision: 1,
                mod_revision,
                expires_at_unix_ms: 0,
            }),
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.step().await?;
        let r = request.into_inner();
        let mut state = self.state.lock().unwrap();
        let current = state.keys.get(&r.key).cloned();
        let holds = match r.precondition.and_then(|p| p.kind) {
            None => true,
            Some(precondition::Kind::MustNotExist(_)) => current.is_none(),
            Some(precondition::Kind::MustExist(_)) => current.is_some(),
            Some(precondition::Kind::ModRevision(rev)) => {
                current.as_ref().map(|c| c.2) == Some(rev)
            }
        };
        if !holds {
            let mut status = coded(tonic::Code::FailedPrecondition, "precondition_failed");
            if let Some(c) = &current {
                status.metadata_mut().insert(
                    CURRENT_MOD_REVISION_METADATA,
                    MetadataValue::try_from(c.2.to_string()).unwrap(),
                );
            }
            return Err(status);
        }
        state.revision += 1;
        let version = current.as_ref().map_or(1, |c| c.1 + 1);
        let mod_revision = state.revision;
        state.keys.insert(r.key, (r.value, version, mod_revision));
        Ok(Response::new(PutResponse {
            version,
            mod_revision,
            created: current.is_none(),
            previous: None,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.step().await?;
        let key = request.into_inner().key;
        let mut state = self.state.lock().unwrap();
        state
            .keys
            .remove(&key)
            .ok_or_else(|| coded(tonic::Code::NotFound, "not_found"))?;
        state.revision += 1;
        Ok(Response::new(DeleteResponse {
            revision: state.revision,
            previous: None,
        }))
    }

    // The CLI has no increment, append or put-all command to test.
    async fn increment(
        &self,
        _request: Request<ringkv_proto::v1::IncrementRequest>,
    ) -> Result<Response<ringkv_proto::v1::IncrementResponse>, Status> {
        Err(Status::unimplemented(
            "the CLI's fake node does not increment",
        ))
    }

    async fn append(
        &self,
        _request: Request<ringkv_proto::v1::AppendRequest>,
    ) -> Result<Response<ringkv_proto::v1::AppendResponse>, Status> {
        Err(Status::unimplemented("the CLI's fake node does not append"))
    }

    async fn put_all(
        &self,
        _request: Request<ringkv_proto::v1::PutAllRequest>,
    ) -> Result<Response<ringkv_proto::v1::PutAllResponse>, Status> {
        Err(Status::unimplemented(
            "the CLI's fake node does not put-all",
        ))
    }
}

#[tonic::async_trait]
impl Cluster for FakeNode {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.step().await?;
        Ok(Response::new(sample_status()))
    }

    async fn locate(
        &self,
        _request: Request<LocateRequest>,
    ) -> Result<Response<LocateResponse>, Status> {
        self.step().await?;
        Ok(Response::new(LocateResponse {
            partition: 3,
            leader: 2,
            replicas: vec![1, 2, 3],
            slot: 12182,
        }))
    }

    /// The client and bench tests change no configuration: a call is a
    /// test's mistake, and says so.
    async fn change_config(
        &self,
        _request: Request<ChangeConfigRequest>,
    ) -> Result<Response<ChangeConfigResponse>, Status> {
        self.step().await?;
        Err(Status::unimplemented(
            "the fake node changes no configuration",
        ))
    }

    async fn drain_node(
        &self,
        _request: Request<ringkv_proto::v1::DrainNodeRequest>,
    ) -> Result<Response<ringkv_proto::v1::DrainNodeResponse>, Status> {
        self.step().await?;
        Err(Status::unimplemented("the fake node drains nothing"))
    }

    async fn add_token(
        &self,
        _request: Request<ringkv_proto::v1::AddTokenRequest>,
    ) -> Result<Response<ringkv_proto::v1::AddTokenResponse>, Status> {
        Err(Status::unimplemented("the fake node keeps no tokens"))
    }

    async fn remove_token(
        &self,
        _request: Request<ringkv_proto::v1::RemoveTokenRequest>,
    ) -> Result<Response<ringkv_proto::v1::RemoveTokenResponse>, Status> {
        Err(Status::unimplemented("the fake node keeps no tokens"))
    }

    async fn list_tokens(
        &self,
        _request: Request<ringkv_proto::v1::ListTokensRequest>,
    ) -> Result<Response<ringkv_proto::v1::ListTokensResponse>, Status> {
        Err(Status::unimplemented("the fake node keeps no tokens"))
    }
}

/// Serves `node` on a free local port until the test's runtime ends.
pub(crate) async fn serve(node: FakeNode) -> SocketAddr {
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .expect("bind a free port");
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(node.clone()))
            .add_service(ClusterServer::new(node))
            .serve_with_incoming(incoming),
    );
    addr
}

/// An address nothing listens on: connecting is refused.
pub(crate) fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
