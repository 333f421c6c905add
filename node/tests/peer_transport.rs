//! The peer transport refuses what it cannot decode or what is too large: a
//! garbage frame on a peer stream is dropped and counted, the stream and the
//! node keep working, and a batch that claims another sender than the
//! stream's is dropped too; a frame over the frame limit closes its stream
//! with a reason. Streams that go silent are closed; keepalives keep quiet
//! ones open. A call without a valid hello, or from a node of another
//! cluster or with other settings, is refused with the mismatch named.

#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::NodeId;
use ringkv_core::io::PeerBatch;
use ringkv_core::node::{ClientRequest, ClientResponse, Consistency};
use ringkv_core::wire;
use ringkv_node::clock::MonotonicClock;
use ringkv_node::config::ServerConfig;
use ringkv_node::disk::MemDisk;
use ringkv_node::server::Server;
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::peer_client::PeerClient;
use tonic::Request;

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn single_node() -> Server {
    let addr = free_addr();
    let peers: BTreeMap<NodeId, SocketAddr> = [(NodeId(1), addr)].into();
    let mut config = ServerConfig::new(NodeId(1), peers, addr, "/data".into());
    config.replication_factor = 1;
    config.partition_count = 4;
    Server::start(
        config,
        Arc::new(MonotonicClock::new()),
        Arc::new(MemDisk::new()),
        7,
    )
    .await
    .expect("server starts")
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request carrying the hello of a member of `server`'s cluster. (The
/// cluster has one member, the node itself: the test speaks as it.)
fn as_member<T>(server: &Server, body: T) -> Request<T> {
    let mut request = Request::new(body);
    server.handshake.attach(&mut request, NodeId(1));
    request
}

/// A single node that leads every partition, and a peer client to it.
async fn ready_node_and_peer_client() -> (Server, PeerClient<tonic::transport::Channel>) {
    let server = single_node().await;
    let node = server.node.clone();
    wait_until("a leader for every partition", || node.view().ready).await;
    let client = PeerClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_peer_frames_are_dropped_and_counted() {
    let (server, mut client) = ready_node_and_peer_client().await;
    let (node, stats) = (server.node.clone(), server.stats.clone());
    // Well-formed, but claiming another sender than the stream's hello.
    let impostor = PeerBatch {
        from: NodeId(9),
        to: NodeId(1),
        messages: vec![],
        gossip: Default::default(),
        placement: Vec::new(),
    };
    let frames = vec![
        pb::PeerFrame {
            batch: Bytes::from_static(b"\xff\xff\xff\xff not protobuf"),
        },
        pb::PeerFrame {
            batch: Bytes::new(),
        },
        pb::PeerFrame {
            batch: wire::encode_peer_batch(&impostor),
        },
    ];
    client
        .batches(as_member(&server, tokio_stream::iter(frames)))
        .await
        .expect("the stream is accepted and closed cleanly");

    assert_eq!(stats.batches_received.load(Ordering::Relaxed), 3);
    // The garbage frame fails to decode, the impostor's is dropped before
    // the core; the empty one is a keepalive.
    assert_eq!(stats.decode_failures.load(Ordering::Relaxed), 2);
    assert_eq!(stats.keepalives_received.load(Ordering::Relaxed), 1);
    assert_eq!(node.view().stats.batches_received, 0);

    // The node still serves.
    let put = node
        .request(ClientRequest::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            precondition: Default::default(),
            return_previous: false,
            expiry: Default::default(),
        })
        .await;
    assert!(
        matches!(put, Ok(ClientResponse::Put { version: 1, .. })),
        "{put:?}"
    );
    let get = node
        .request(ClientRequest::Get {
            key: Bytes::from_static(b"k"),
            consistency: Consistency::Linearizable,
        })
        .await;
    assert!(
        matches!(&get, Ok(ClientResponse::Value(Some(kv))) if kv.value == "v"),
        "{get:?}"
    );
    server.stop().await;
}

/// A peer stream that goes silent (a partition stalls it rather than breaking
/// it) is closed by the receiver after its idle timeout, ten heartbeat
/// intervals (1 s at the default 50 ms tick), so that the sender notices and
/// re-dials instead of queueing batches behind the stall for as long as the
/// network's retransmission backoff lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_stream_is_closed_so_its_sender_redials() {
    let (server, mut client) = ready_node_and_peer_client().await;
    let stats = server.stats.clone();
    // One frame, then silence with the stream still open.
    let hello = pb::PeerFrame {
        batch: wire::encode_peer_batch(&PeerBatch {
            from: NodeId(9),
            to: NodeId(1),
            messages: vec![],
            gossip: Default::default(),
            placement: Vec::new(),
        }),
    };
    let frames =
        tokio_stream::StreamExt::chain(tokio_stream::iter([hello]), tokio_stream::pending());
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        client.batches(as_member(&server, frames)),
    )
    .await
    .expect("the receiver closes a silent stream instead of waiting forever");
    let status = result.expect_err("an idle close is reported as an error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
    assert_eq!(stats.batches_received.load(Ordering::Relaxed), 1);
    assert_eq!(stats.idle_streams_closed.load(Ordering::Relaxed), 1);
    server.stop().await;
}

/// A frame over the frame limit is refused before it is decoded: the
/// receiver closes the stream with a status that names both sizes (so the
/// sender's log says why), counts it, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_its_stream_with_the_reason() {
    let (server, client) = ready_node_and_peer_client().await;
    let stats = server.stats.clone();
    let limit = default_limits().max_frame_bytes;
    let mut client = client.max_encoding_message_size(usize::MAX);
    let frame = pb::PeerFrame {
        batch: Bytes::from(vec![0u8; limit + 1000]),
    };
    let status = client
        .batches(as_member(&server, tokio_stream::iter([frame])))
        .await
        .expect_err("the stream is refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("exceeds the") && status.message().contains("MiB limit"),
        "{status:?}"
    );
    assert_eq!(stats.frames_too_large_in.load(Ordering::Relaxed), 1);
    assert_eq!(stats.decode_failures.load(Ordering::Relaxed), 0);
    let put = server
        .node
        .request(ClientRequest::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            precondition: Default::default(),
            return_previous: false,
            expiry: Default::default(),
        })
        .await;
    assert!(put.is_ok(), "the node keeps serving: {put:?}");
    server.stop().await;
}

/// Keepalive frames (empty) keep a stream that has nothing else to carry
/// open well past the idle timeout, and never reach the core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_a_quiet_stream_open() {
    let (server, mut client) = ready_node_and_peer_client().await;
    let stats = server.stats.clone();
    let keepalives = tokio_stream::StreamExt::throttle(
        tokio_stream::iter((0..12).map(|_| pb::PeerFrame {
            batch: Bytes::new(),
        })),
        Duration::from_millis(200),
    );
    let started = tokio::time::Instant::now();
    client
        .batches(as_member(&server, keepalives))
        .await
        .expect("a stream of keepalives is never closed as idle");
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stats.keepalives_received.load(Ordering::Relaxed), 12);
    assert_eq!(stats.idle_streams_closed.load(Ordering::Relaxed), 0);
    assert_eq!(server.node.view().stats.batches_received, 0);
    server.stop().await;
}

/// Every peer call must say who it is from: without a hello it is refused as
/// malformed; with the hello of a node whose settings differ, or of another
/// cluster, it is refused with FAILED_PRECONDITION naming the mismatch, and
/// the refusal shows in the handshake's record (status, metrics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_strangers_are_refused_with_the_mismatch_named() {
    use prost::Message as _;
    let (server, mut client) = ready_node_and_peer_client().await;
    let status = client
        .batches(tokio_stream::iter(Vec::<pb::PeerFrame>::new()))
        .await
        .expect_err("no hello");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ringkv-hello-bin"), "{status:?}");

    let me = server.handshake.identity().clone();
    let hello = |partitions: u32, uid: u8| pb::PeerHello {
        from: Some(pb::PeerIdentity {
            node: 1,
            incarnation: me.incarnation.to_bytes().to_vec().into(),
            cluster_name: me.cluster_name.clone(),
            partition_count: partitions,
            replication_factor: me.replication_factor,
            format_version: me.format_version,
        }),
        cluster_uid: vec![uid; 16].into(),
        to: 1,
        to_incarnation: Default::default(),
    };
    let with = |h: pb::PeerHello| {
        let mut r = Request::new(tokio_stream::iter(Vec::<pb::PeerFrame>::new()));
        r.metadata_mut().insert_bin(
            "ringkv-hello-bin",
            tonic::metadata::MetadataValue::from_bytes(&h.encode_to_vec()),
        );
        r
    };
    let status = client
        .batches(with(hello(128, 0)))
        .await
        .expect_err("other settings");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("partition count mismatch: n1 has 128 partitions, this node 4"),
        "{status:?}"
    );
    let status = client
        .batches(with(hello(4, 0xee)))
        .await
        .expect_err("another cluster");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("[other_cluster]"), "{status:?}");
    let refusals = server.handshake.recent_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].0.reason, "other_cluster");
    assert_eq!(refusals[0].0.count, 2);
    assert_eq!(server.stats.batches_received.load(Ordering::Relaxed), 0);
    server.stop().await;
}

fn put_call(id: u64, key: &'static str, value: &'static str) -> pb::ForwardCall {
    pb::ForwardCall {
        id,
        request: Some(pb::ForwardRequest {
            from: 1,
            hops: 1,
            request: Some(pb::forward_request::Request::Put(pb::PutRequest {
                key: Bytes::from_static(key.as_bytes()),
                value: Bytes::from_static(value.as_bytes()),
                precondition: None,
                return_previous: false,
                expiry: None,
            })),
        }),
    }
}

fn get_call(id: u64, key: &'static str) -> pb::ForwardCall {
    pb::ForwardCall {
        id,
        request: Some(pb::ForwardRequest {
            from: 1,
            hops: 1,
            request: Some(pb::forward_request::Request::Get(pb::GetRequest {
                key: Bytes::from_static(key.as_bytes()),
                consistency: 0,
            })),
        }),
    }
}

/// A `Forwards` stream runs every call of a frame and answers each by its
/// id (a malformed one with an error, the others served); a frame over the
/// limit ends the stream with the limit named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_on_a_stream_are_answered_by_id_and_bounded() {
    let (server, mut client) = ready_node_and_peer_client().await;
    let (frames, frames_rx) = tokio::sync::mpsc::channel(4);
    let mut answers = client
        .forwards(as_member(
            &server,
            tokio_stream::wrappers::ReceiverStream::new(frames_rx),
        ))
        .await
        .expect("a member's stream is admitted")
        .into_inner();
    let malformed = pb::ForwardCall {
        id: 11,
        request: None,
    };
    let calls = vec![
        put_call(10, "a", "1"),
        malformed,
        put_call(12, "b", "2"),
        get_call(13, "zz"),
    ];
    frames.send(pb::ForwardFrame { calls }).await.unwrap();
    use pb::forward_response::Result as R;
    let mut kinds = BTreeMap::new();
    while kinds.len() < 4 {
        let frame = answers.message().await.unwrap().expect("answers come");
        for a in frame.answers {
            let kind = match a.response.and_then(|r| r.result) {
                Some(R::Put(_)) => "put",
                Some(R::Get(g)) if g.kv.is_none() => "absent",
                Some(R::Error(e)) if e.message.contains("malformed") => "malformed",
                other => panic!("unexpected answer {other:?}"),
            };
            assert!(
                kinds.insert(a.id, kind).is_none(),
                "{} answered twice",
                a.id
            );
        }
    }
    let expected = BTreeMap::from([(10, "put"), (11, "malformed"), (12, "put"), (13, "absent")]);
    assert_eq!(kinds, expected);

    // The stream still serves: a read of what the first frame wrote.
    frames
        .send(pb::ForwardFrame {
            calls: vec![get_call(14, "b")],
        })
        .await
        .unwrap();
    let frame = answers.message().await.unwrap().unwrap();
    let Some(R::Get(g)) = frame.answers[0].response.clone().and_then(|r| r.result) else {
        panic!("{frame:?}");
    };
    assert_eq!(frame.answers[0].id, 14);
    assert_eq!(g.kv.unwrap().value, Bytes::from_static(b"2"));

    let too_many = pb::ForwardFrame {
        calls: (0..257).map(|i| get_call(100 + i, "a")).collect(),
    };
    frames.send(too_many).await.unwrap();
    let refused = loop {
        match answers.message().await {
            Ok(Some(f)) if f.answers.is_empty() => continue, // a keepalive
            other => break other.expect_err("over the limit"),
        }
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("the limit is 256"), "{refused}");
    server.stop().await;
}

/// A `Forwards` stream with nothing to answer sends keepalives (empty
/// frames), so its caller can tell a quiet stream from a stalled one; one
/// whose caller sends nothing, not even keepalives, is closed as idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_forward_stream_sends_keepalives_and_a_silent_caller_is_cut_off() {
    let (server, mut client) = ready_node_and_peer_client().await;
    let started = tokio::time::Instant::now();
    let mut answers = client
        .forwards(as_member(&server, tokio_stream::pending()))
        .await
        .expect("admitted")
        .into_inner();
    let mut keepalives = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("the receiver closes a silent stream instead of waiting forever")
        {
            Ok(Some(frame)) => {
                assert!(frame.answers.is_empty(), "{frame:?}");
                keepalives += 1;
            }
            Ok(None) => panic!("closed without saying why"),
            Err(status) => break status,
        }
    };
    assert!(keepalives >= 1, "no keepalive before the idle close");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("idle"), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
    assert_eq!(server.stats.idle_streams_closed.load(Ordering::Relaxed), 1);
    server.stop().await;
}

/// What a client is told when its forwarded request cannot reach the node
/// it was meant for: a node that is not running never got it (a read may be
/// retried, a write was not applied); a node that refuses this one's
/// handshake is not the leader this node thought (retry finds the real
/// one). Neither waits for the forward timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_that_cannot_reach_their_target_fail_at_once_with_what_is_known() {
    use ringkv_core::PartitionId;
    use ringkv_core::node::ClientError;
    use ringkv_core::routing::Hops;
    let (server, _client) = ready_node_and_peer_client().await;
    let nobody = free_addr(); // nothing listens there
    // Node 3's address is the server's own: it refuses a hello meant for 3.
    let peers = BTreeMap::from([
        (NodeId(2), nobody.into()),
        (NodeId(3), server.grpc_addr.into()),
    ]);
    let limits = default_limits();
    let forwarder = ringkv_node::transport::Forwarder::new(
        server.handshake.clone(),
        &peers,
        Duration::from_secs(30),
        server.stats.clone(),
        limits,
        Arc::new(MonotonicClock::new()),
    );
    let read = ClientRequest::Get {
        key: Bytes::from_static(b"k"),
        consistency: Consistency::Linearizable,
    };
    let write = ClientRequest::Put {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        precondition: Default::default(),
        return_previous: false,
        expiry: Default::default(),
    };
    let p = PartitionId(3);
    let started = tokio::time::Instant::now();
    let mut told = Vec::new();
    for (to, req) in [
        (NodeId(2), &read),
        (NodeId(2), &write),
        (NodeId(3), &read),
        (NodeId(3), &write),
        (NodeId(4), &read),
    ] {
        let (reply, answer) = tokio::sync::oneshot::channel();
        forwarder.forward(to, p, Hops(1), req, reply);
        told.push(answer.await.expect("always answered"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(told[0], Err(ClientError::NoLeader { partition: p }));
    assert_eq!(told[1], Err(ClientError::Dropped));
    assert_eq!(told[2], Err(ClientError::NoLeader { partition: p }));
    assert_eq!(told[3], Err(ClientError::NoLeader { partition: p }));
    assert!(
        matches!(&told[4], Err(ClientError::Internal(m)) if m.contains("not a known member")),
        "{:?}",
        told[4]
    );
    server.stop().await;
}

/// The transport limits of a node with every setting at its default.
fn default_limits() -> ringkv_node::transport::TransportLimits {
    let config = ServerConfig::new(
        NodeId(1),
        BTreeMap::<NodeId, SocketAddr>::new(),
        free_addr(),
        "/x".into(),
    );
    ringkv_node::transport::TransportLimits::for_node(&config.node_config())
}
