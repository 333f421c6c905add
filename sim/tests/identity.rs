//! The peer handshake under simulation: a node that carries another
//! cluster's data directory is refused by its peers, refuses them, and none
//! of its data reaches the cluster it was dropped into (issue 10).
//!
//! Run: `RUSTFLAGS="--cfg madsim" RUSTDOCFLAGS="--cfg madsim"
//! CARGO_TARGET_DIR=target/sim cargo test -p ringkv-sim --test identity`.
#![cfg(madsim)]

use std::time::Duration;

use bytes::Bytes;
use madsim::runtime::Handle;
use ringkv_core::NodeId;
use ringkv_node::transport::handshake::Direction;
use ringkv_proto::v1 as pb;
use ringkv_sim::cluster::{ClusterOptions, SimCluster, connect_kv};
use tonic::Code;

const READY: Duration = Duration::from_secs(20);

/// Puts `key` through node `via`, retrying while there is no leader.
async fn put(via: NodeId, key: &str) {
    for _ in 0..200 {
        if let Ok(mut kv) = connect_kv(via).await {
            let req = pb::PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from_static(b"v"),
                precondition: None,
                return_previous: false,
                expiry: None,
            };
            match kv.put(req).await {
                Ok(_) => return,
                Err(s) if s.code() == Code::Unavailable => {}
                Err(s) => panic!("put {key} via {via}: {s:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("put {key} via {via}: no leader for 20 s");
}

/// Whether `key` exists, read linearizably through node `via`.
async fn exists(via: NodeId, key: &str) -> bool {
    let mut kv = connect_kv(via).await.expect("connect");
    let req = pb::GetRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        consistency: pb::ReadConsistency::Linearizable as i32,
    };
    match kv.get(req).await {
        Ok(r) => r.into_inner().kv.is_some(),
        Err(s) if s.code() == Code::NotFound => false,
        Err(s) => panic!("get {key} via {via}: {s:?}"),
    }
}

/// Whether node `via`'s own replica holds `key` (a stale read).
async fn stale_get(via: NodeId, key: &str) -> bool {
    let Ok(mut kv) = connect_kv(via).await else {
        return false;
    };
    let req = pb::GetRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        consistency: pb::ReadConsistency::Stale as i32,
    };
    kv.get(req).await.is_ok_and(|r| r.into_inner().kv.is_some())
}

/// Whether node `id` has seen `peer` refused for `reason` in `direction`.
fn refused(cluster: &SimCluster, id: u64, peer: u64, direction: Direction, reason: &str) -> bool {
    cluster.handshake(NodeId(id)).is_some_and(|h| {
        h.recent_refusals()
            .iter()
            .any(|(r, _)| r.peer == NodeId(peer) && r.direction == direction && r.reason == reason)
    })
}

#[madsim::test]
async fn a_node_with_another_clusters_disk_is_refused_and_its_data_stays_out() {
    let seed = Handle::current().seed();
    let mut cluster = SimCluster::new(3, seed, ClusterOptions::default());
    assert!(cluster.wait_ready(READY).await, "cluster A never got ready");
    let client = cluster.client(1);
    client.run(async { put(NodeId(1), "from-a").await }).await;
    // Node 3 has it too (read from its own replica) before its disk is taken.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client
        .run(async { stale_get(NodeId(3), "from-a").await })
        .await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 never got the key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let uid_a = cluster
        .handshake(NodeId(3))
        .and_then(|h| h.record())
        .expect("formed")
        .uid;

    // Keep node 3's disk of cluster A; then form cluster B on empty disks.
    cluster.kill(NodeId(3));
    let stale = cluster.disk(NodeId(3)).image();
    for id in [1, 2] {
        cluster.kill(NodeId(id));
    }
    for id in 1..=3 {
        cluster.disk(NodeId(id)).wipe();
        cluster.restart(NodeId(id));
    }
    assert!(cluster.wait_ready(READY).await, "cluster B never got ready");
    let uid_b = cluster
        .handshake(NodeId(1))
        .and_then(|h| h.record())
        .expect("formed")
        .uid;
    assert_ne!(uid_a, uid_b, "a new cluster gets a new uid");
    client.run(async { put(NodeId(1), "from-b").await }).await;

    // Node 3 comes back with cluster A's disk.
    cluster.kill(NodeId(3));
    cluster.disk(NodeId(3)).swap_in(&stale);
    cluster.restart(NodeId(3));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let both_ways = [1, 2].iter().all(|&id| {
            refused(&cluster, id, 3, Direction::Incoming, "other_cluster")
                && refused(&cluster, 3, id, Direction::Incoming, "other_cluster")
        });
        if both_ways {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale node and cluster B did not refuse each other"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster
            .handshake(NodeId(3))
            .and_then(|h| h.record())
            .map(|r| r.uid),
        Some(uid_a)
    );
    // Let the stale node try for a while, then look at both clusters' data.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (a_in_b, b_in_b) = client
        .run(async {
            (
                exists(NodeId(1), "from-a").await,
                exists(NodeId(2), "from-b").await,
            )
        })
        .await;
    assert!(!a_in_b, "cluster A's key reached cluster B");
    assert!(b_in_b, "cluster B lost its own key");
    // (Its own replica may not even show cluster A's key: what it learns
    // of commits it learns from peers, and it has none left.)
    let stale_has_b = client
        .run(async { stale_get(NodeId(3), "from-b").await })
        .await;
    assert!(!stale_has_b, "cluster B's key reached the stale node");
    // The refusals are counted (what metrics export), and kept coming: the
    // stale node re-dials and is refused every time.
    for id in [1, 2] {
        let h = cluster.handshake(NodeId(id)).expect("running");
        let n: u64 = h
            .refusal_counts()
            .into_iter()
            .filter(|(p, _, reason, _)| *p == NodeId(3) && reason == "other_cluster")
            .map(|(_, _, _, n)| n)
            .sum();
        assert!(n >= 2, "node {id} counted {n} refusals of node 3");
    }
    assert!(cluster.failures().is_empty(), "{:#?}", cluster.failures());
}
