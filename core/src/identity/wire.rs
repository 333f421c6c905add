//! The wire form of the handshake: the mapping between [`Hello`],
//! [`Identity`] and [`ClusterRecord`] and the messages of
//! `proto/ringkv/v1/transport.proto`. Decoding never panics and rejects
//! what no node produces (node id 0, an id or uid that is not 16 bytes, a
//! record without members or with one twice), naming the field, as
//! [`crate::wire`] does for peer batches.

use std::collections::BTreeMap;

use prost::Message as _;
use ringkv_proto::v1 as pb;

use super::{ClusterRecord, ClusterUid, Hello, Identity, Incarnation};
use crate::NodeId;
use crate::wire::WireError;

type Result<T> = std::result::Result<T, WireError>;

fn node_id(id: u64, field: &str) -> Result<NodeId> {
    if id == 0 {
        return Err(WireError::Invalid(format!("{field}: node id 0")));
    }
    Ok(NodeId(id))
}

fn id128(bytes: &[u8], field: &str) -> Result<u128> {
    <[u8; 16]>::try_from(bytes)
        .map(u128::from_be_bytes)
        .map_err(|_| WireError::Invalid(format!("{field}: {} bytes, not 16", bytes.len())))
}

/// Empty bytes are "none"; anything else must be a 16-byte id.
fn optional_id128(bytes: &[u8], field: &str) -> Result<Option<u128>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    id128(bytes, field).map(Some)
}

pub fn identity_to_proto(i: &Identity) -> pb::PeerIdentity {
    pb::PeerIdentity {
        node: i.node.0,
        incarnation: i.incarnation.to_bytes().to_vec().into(),
        cluster_name: i.cluster_name.clone(),
        partition_count: i.partition_count,
        replication_factor: i.replication_factor,
        format_version: i.format_version,
    }
}

pub fn identity_from_proto(p: &pb::PeerIdentity) -> Result<Identity> {
    Ok(Identity {
        node: node_id(p.node, "PeerIdentity.node")?,
        incarnation: Incarnation(id128(&p.incarnation, "PeerIdentity.incarnation")?),
        cluster_name: p.cluster_name.clone(),
        partition_count: p.partition_count,
        replication_factor: p.replication_factor,
        format_version: p.format_version,
    })
}

pub fn hello_to_proto(h: &Hello) -> pb::PeerHello {
    pb::PeerHello {
        from: Some(identity_to_proto(&h.from)),
        cluster_uid: h
            .cluster
            .map(|u| u.to_bytes().to_vec().into())
            .unwrap_or_default(),
        to: h.to.0,
        to_incarnation: h
            .to_incarnation
            .map(|i| i.to_bytes().to_vec().into())
            .unwrap_or_default(),
    }
}

pub fn hello_from_proto(p: &pb::PeerHello) -> Result<Hello> {
    let from = p
        .from
        .as_ref()
        .ok_or(WireError::Missing("PeerHello.from"))?;
    Ok(Hello {
        from: identity_from_proto(from)?,
        cluster: optional_id128(&p.cluster_uid, "PeerHello.cluster_uid")?.map(ClusterUid),
        to: node_id(p.to, "PeerHello.to")?,
        to_incarnation: optional_id128(&p.to_incarnation, "PeerHello.to_incarnation")?
            .map(Incarnation),
    })
}

/// A hello as bytes (the `ringkv-hello-bin` metadata entry).
pub fn encode_hello(h: &Hello) -> Vec<u8> {
    hello_to_proto(h).encode_to_vec()
}

pub fn decode_hello(buf: &[u8]) -> Result<Hello> {
    hello_from_proto(&pb::PeerHello::decode(buf)?)
}

pub fn record_to_proto(r: &ClusterRecord) -> pb::ClusterRecord {
    pb::ClusterRecord {
        uid: r.uid.to_bytes().to_vec().into(),
        members: r
            .members
            .iter()
            .map(|(id, inc)| pb::ClusterMember {
                node: id.0,
                incarnation: inc.to_bytes().to_vec().into(),
            })
            .collect(),
    }
}

pub fn record_from_proto(p: &pb::ClusterRecord) -> Result<ClusterRecord> {
    let uid = ClusterUid(id128(&p.uid, "ClusterRecord.uid")?);
    let mut members = BTreeMap::new();
    for m in &p.members {
        let id = node_id(m.node, "ClusterMember.node")?;
        let inc = Incarnation(id128(&m.incarnation, "ClusterMember.incarnation")?);
        if members.insert(id, inc).is_some() {
            return Err(WireError::Invalid(format!(
                "ClusterRecord: {id} listed twice"
            )));
        }
    }
    if members.is_empty() {
        return Err(WireError::Missing("ClusterRecord.members"));
    }
    Ok(ClusterRecord { uid, members })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            from: Identity {
                node: NodeId(3),
                incarnation: Incarnation(u128::MAX - 1),
                cluster_name: "c".into(),
                partition_count: 64,
                replication_factor: 3,
                format_version: 1,
            },
            cluster: Some(ClusterUid(42)),
            to: NodeId(1),
            to_incarnation: None,
        }
    }

    #[test]
    fn a_hello_and_a_record_survive_their_wire_form() {
        assert_eq!(decode_hello(&encode_hello(&hello())), Ok(hello()));
        let mut unformed = hello();
        unformed.cluster = None;
        unformed.to_incarnation = Some(Incarnation(7));
        assert_eq!(decode_hello(&encode_hello(&unformed)), Ok(unformed));
        let record = ClusterRecord {
            uid: ClusterUid(9),
            members: [(NodeId(1), Incarnation(1)), (NodeId(2), Incarnation(2))].into(),
        };
        assert_eq!(record_from_proto(&record_to_proto(&record)), Ok(record));
    }

    #[test]
    fn malformed_hellos_and_records_are_refused_naming_the_field() {
        let mut bad = hello_to_proto(&hello());
        bad.cluster_uid = vec![1, 2, 3].into();
        let err = hello_from_proto(&bad).unwrap_err().to_string();
        assert!(
            err.contains("PeerHello.cluster_uid: 3 bytes, not 16"),
            "{err}"
        );
        let mut bad = hello_to_proto(&hello());
        bad.from = None;
        assert_eq!(
            hello_from_proto(&bad),
            Err(WireError::Missing("PeerHello.from"))
        );
        let mut bad = hello_to_proto(&hello());
        bad.to = 0;
        assert!(hello_from_proto(&bad).is_err());
        assert!(decode_hello(b"\xff\xff not protobuf").is_err());
        let twice = pb::ClusterRecord {
            uid: vec![0; 16].into(),
            members: vec![
                pb::ClusterMember {
                    node: 1,
                    incarnation: vec![1; 16].into(),
                };
                2
            ],
        };
        let err = record_from_proto(&twice).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
        let empty = pb::ClusterRecord {
            uid: vec![0; 16].into(),
            members: vec![],
        };
        assert!(record_from_proto(&empty).is_err());
    }
}
