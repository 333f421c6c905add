//! Peers check who they talk to (issue 10), on real `ringkv server`
//! processes: the operator's three reproductions, each ending in a clear
//! refusal on both sides.
//!
//! 1. A node left over from an old cluster never leaks its data into a new
//!    cluster formed beside it, whatever `--cluster-id` says.
//! 2. A node started with other settings (`--partitions 128` among nodes
//!    with 64) is refused, and the message names the mismatch.
//! 3. A node whose data directory was wiped is refused: it never votes or
//!    counts toward a quorum with forgotten state, and no partition ever
//!    has two leaders in one term.

#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, get, kv_path, poll, request, retry_write};

const READY: Duration = Duration::from_secs(60);
const REFUSED: Duration = Duration::from_secs(30);

fn put(c: &Cluster, via: u64, key: &str, value: &str) {
    let r = retry_write(Duration::from_secs(30), || {
        request(
            c.node(via).rest(),
            "PUT",
            &kv_path(key, None),
            &[],
            value.as_bytes(),
        )
    });
    assert!(r.is_success(), "put {key} via node {via}: {r:?}");
}

/// The refusals node `id` reports, as (peer, direction, reason).
fn refusals(c: &Cluster, id: u64) -> Vec<(u64, String, String)> {
    c.status(id)["refusals"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    (
                        r["peer"].as_u64().unwrap_or(0),
                        r["direction"].as_str().unwrap_or_default().to_owned(),
                        r["reason"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn formation(c: &Cluster, id: u64) -> String {
    c.status(id)["formation"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until node `id`'s formation status contains `text`.
fn wait_formation(c: &Cluster, id: u64, text: &str) -> String {
    poll(
        REFUSED,
        &format!("node {id}'s formation to say {text:?}"),
        || {
            let f = formation(c, id);
            f.contains(text).then_some(f)
        },
    )
}

/// Waits until node `id` reports refusing (or being refused by) `peer` for `reason`.
fn wait_refusal(c: &Cluster, id: u64, peer: u64, direction: &str, reason: &str) {
    poll(
        REFUSED,
        &format!("node {id} to report {direction} refusal of node {peer} ({reason})"),
        || {
            refusals(c, id)
                .iter()
                .any(|(p, d, r)| *p == peer && d == direction && r == reason)
                .then_some(())
        },
    );
}

/// A node not in a cluster answers every key request, and `/readyz`, with
/// 503 `not_in_cluster`: it serves no data at all.
fn assert_serves_nothing(c: &Cluster, id: u64, key: &str) {
    // (It may still be starting.)
    let r = poll(REFUSED, &format!("node {id} to answer"), || {
        get(c.node(id).rest(), &kv_path(key, Some("stale"))).ok()
    });
    assert_eq!(r.status, 503, "node {id} must not serve {key}: {r:?}");
    assert_eq!(r.problem_code(), "not_in_cluster");
    let r = get(c.node(id).rest(), "/readyz").expect("readyz");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.problem_code(), "not_in_cluster");
    assert!(
        !c.node(id).data_dir.join("cluster.toml").exists(),
        "node {id} must not have joined any cluster"
    );
}

#[test]
fn a_stale_node_of_an_old_cluster_is_refused_and_its_data_stays_out() {
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    for i in 0..30 {
        put(&c, 1, &format!("old-{i}"), "from the old cluster");
    }
    let old_uid = c.status(3)["cluster_uid"].as_str().expect("uid").to_owned();
    // Nodes 1 and 2 are wiped and started as a new cluster; node 3 of the
    // old one stays up.
    c.wipe(1);
    c.wipe(2);
    c.restart(1);
    c.restart(2);
    // The founder sees that node 3's cluster knows node 1 by another data
    // directory, and says what to do either way.
    let why = wait_formation(&c, 1, "data directory was replaced or wiped");
    assert!(why.contains(&old_uid), "{why}");
    assert!(why.contains("stop it and wipe its data directory"), "{why}");
    // Node 3 refuses the newcomers' hellos: they are not the nodes it knew.
    wait_refusal(&c, 3, 1, "incoming", "peer_replaced");
    wait_refusal(&c, 3, 2, "incoming", "peer_replaced");
    for id in [1, 2] {
        assert_serves_nothing(&c, id, "old-0");
    }
    // Node 3 still holds the old data, untouched.
    let r = get(c.node(3).rest(), &kv_path("old-7", Some("stale"))).expect("get");
    assert_eq!(r.status, 200, "{r:?}");

    // With another --cluster-id the names differ, and that is what is said.
    for id in [1, 2] {
        c.set_node_args(id, &["--cluster-id", "brand-new"]);
        c.wipe(id);
        c.restart(id);
    }
    let why = wait_formation(&c, 1, "cluster name mismatch");
    assert!(why.contains("\"brand-new\""), "{why}");
    for id in [1, 2] {
        assert_serves_nothing(&c, id, "old-0");
    }
    c.assert_alive();
    let log1 = c.log(1);
    let log3 = c.log(3);
    assert!(log1.contains("cannot join"), "node 1 logs nothing:\n{log1}");
    assert!(log3.contains("refused n1"), "node 3 logs nothing:\n{log3}");

    // Once the operator wipes node 3 too, the new cluster forms and holds
    // none of the old keys.
    c.set_node_args(3, &["--cluster-id", "brand-new"]);
    c.wipe(3);
    c.restart(3);
    c.wait_ready(READY);
    let new_uid = c.status(1)["cluster_uid"].as_str().expect("uid").to_owned();
    assert_ne!(new_uid, old_uid);
    for id in [1, 2, 3] {
        assert_eq!(c.status(id)["cluster_uid"].as_str(), Some(new_uid.as_str()));
        let r = get(c.node(id).rest(), &kv_path("old-7", None)).expect("get");
        assert_eq!(r.status, 404, "old data in the new cluster via {id}: {r:?}");
    }
}

#[test]
fn a_node_with_another_partition_count_is_refused_naming_the_mismatch() {
    let mut c = Cluster::start_each(3, &[], |id| {
        if id == 3 {
            vec!["--partitions".into(), "128".into()]
        } else {
            Vec::new()
        }
    });
    let mismatch = "partition count mismatch: n3 has 128 partitions, this node 64";
    wait_formation(&c, 1, mismatch);
    wait_formation(
        &c,
        3,
        "partition count mismatch: n1 has 64 partitions, this node 128",
    );
    assert_eq!(
        refusals(&c, 1),
        [(3, "outgoing".to_owned(), "partition_count".to_owned())]
    );
    for id in 1..=3 {
        assert_serves_nothing(&c, id, "k");
    }
    c.assert_alive();
    assert!(
        c.log(1).contains(mismatch),
        "node 1 logs nothing:\n{}",
        c.log(1)
    );
    assert!(
        c.log(3).contains("partition count mismatch"),
        "node 3 logs nothing"
    );

    // Fixed by the operator: node 3 starts over with the cluster's count.
    c.set_node_args(3, &[]);
    c.wipe(3);
    c.restart(3);
    c.wait_ready(READY);
    put(&c, 3, "k", "v");
}

#[test]
fn a_wiped_node_is_refused_and_never_makes_a_second_leader_in_a_term() {
    let mut c = Cluster::start(3);
    c.wait_ready(READY);
    for i in 0..30 {
        put(&c, 1, &format!("k{i}"), "before the wipe");
    }
    // (partition, term) -> leader, as any node has reported it.
    let mut leaders: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut observe = |c: &Cluster, ids: &[u64]| {
        for &id in ids {
            let st = c.status(id);
            for p in st["partitions"].as_array().into_iter().flatten() {
                let (Some(part), Some(term), Some(leader)) = (
                    p["partition"].as_u64(),
                    p["term"].as_u64(),
                    p["leader"].as_u64(),
                ) else {
                    continue;
                };
                let prev = *leaders.entry((part, term)).or_insert(leader);
                assert_eq!(
                    prev, leader,
                    "partition {part} has two leaders in term {term}: {prev} and {leader}"
                );
            }
        }
    };
    observe(&c, &[1, 2, 3]);
    c.wipe(3);
    c.restart(3);
    let why = wait_formation(&c, 3, "this node's data directory was replaced or wiped");
    assert!(why.contains("docs/operations.md"), "{why}");
    wait_refusal(&c, 1, 3, "incoming", "peer_replaced");
    wait_refusal(&c, 2, 3, "incoming", "peer_replaced");
    assert_serves_nothing(&c, 3, "k1");
    // The other two keep the cluster going: writes commit, and the
    // partitions node 3 led elect new leaders without its vote. Restarting
    // node 1 forces more elections, again without node 3.
    for i in 0..10 {
        put(&c, 2, &format!("after-{i}"), "with node 3 refused");
        observe(&c, &[1, 2]);
    }
    c.restart(1);
    c.wait_node_ready(1, READY);
    for i in 0..10 {
        put(&c, 1, &format!("later-{i}"), "v");
        observe(&c, &[1, 2]);
    }
    let r = get(c.node(1).rest(), &kv_path("k7", None)).expect("get");
    assert_eq!(r.status, 200, "{r:?}");
    assert_serves_nothing(&c, 3, "k1");
    let metrics = get(c.node(1).rest(), "/metrics").expect("metrics").text();
    assert!(
        metrics.contains(
            "ringkv_peer_refusals_total{peer=\"3\",direction=\"incoming\",reason=\"peer_replaced\"}"
        ),
        "{metrics}"
    );
    c.assert_alive();
    assert!(c.log(1).contains("refused n3"), "node 1 logs nothing");
    assert!(
        c.log(3)
            .contains("this node's data directory was replaced or wiped"),
        "node 3 logs nothing"
    );
}
