//! Arbitrary bytes as the cluster's metadata document (as a peer gossips
//! it, and as the metadata group stores it): decoding never panics; what
//! decodes encodes back to the same document; and every change a node
//! may propose is judged (applied or refused) without panicking, an
//! applied change leaving a document that encodes and decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::NodeId;
use ringkv_core::identity::Incarnation;
use ringkv_core::metadata::{ClusterMetadata, MemberState, MetaChange};

fuzz_target!(|data: &[u8]| {
    let Some((&version, data)) = data.split_first() else {
        return;
    };
    let Ok(doc) = ClusterMetadata::decode(data, u64::from(version)) else {
        return;
    };
    let again = ClusterMetadata::decode(&doc.encode(), doc.version)
        .expect("a document's own encoding decodes");
    assert_eq!(again, doc);
    let mut changes = vec![
        MetaChange::Register {
            node: NodeId(9),
            address: "127.0.0.1:9".into(),
            incarnation: Incarnation(3),
        },
        MetaChange::RemoveToken { id: "a1".into() },
    ];
    for (&node, member) in &doc.members {
        changes.push(MetaChange::Register {
            node,
            address: "127.0.0.1:10".into(),
            incarnation: Incarnation(4),
        });
        for to in [
            MemberState::Joining,
            MemberState::Up,
            MemberState::Draining,
            MemberState::Dead,
            MemberState::Removed,
        ] {
            changes.push(MetaChange::SetState {
                node,
                from: member.state,
                to,
            });
        }
    }
    for change in &changes {
        if let Ok(next) = doc.apply(change) {
            let decoded = ClusterMetadata::decode(&next.encode(), next.version)
                .expect("an applied change's document decodes");
            assert_eq!(decoded, next, "after {change}");
        }
    }
});
