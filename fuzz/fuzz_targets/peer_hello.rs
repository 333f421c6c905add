//! Arbitrary bytes as a peer's hello (the `ringkv-hello-bin` metadata of
//! every peer call): decoding must never panic, and whatever decodes must be
//! safe to judge, both as a call to admit and as a formation answer.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use ringkv_core::NodeId;
use ringkv_core::identity::wire::decode_hello;
use ringkv_core::identity::{
    ClusterRecord, ClusterUid, Identity, Incarnation, PeerState, admit, formation_step,
};

fuzz_target!(|data: &[u8]| {
    let Ok(hello) = decode_hello(data) else {
        return;
    };
    let me = Identity {
        node: NodeId(1),
        incarnation: Incarnation(1),
        cluster_name: "ringkv".into(),
        partition_count: 64,
        replication_factor: 3,
        format_version: 1,
    };
    let record = ClusterRecord {
        uid: ClusterUid(7),
        members: (1..=3)
            .map(|i| (NodeId(i), Incarnation(i.into())))
            .collect(),
    };
    if let Err(refusal) = admit(&me, Some(&record), &hello) {
        let _ = (refusal.kind(), refusal.to_string());
    }
    let _ = admit(&me, None, &hello);
    let members: BTreeSet<NodeId> = (1..=3).map(NodeId).collect();
    let answers = BTreeMap::from([(
        hello.to,
        PeerState {
            identity: hello.from.clone(),
            record: hello.cluster.map(|uid| ClusterRecord {
                uid,
                members: record.members.clone(),
            }),
        },
    )]);
    let _ = formation_step(&me, &members, &answers);
});
