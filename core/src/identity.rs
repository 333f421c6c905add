//! Who a peer is, and whether to listen to it: the identity every peer
//! connection presents, the record of a formed cluster, the admission rule
//! applied to every connection, and the decision a node that is not yet in a
//! cluster takes from what its peers answer (form one, join one, wait, or
//! refuse). Pure: the driver carries the hellos and persists the record.
//!
//! Raft assumes that a node never forgets what it persisted (its term, its
//! vote, its log). A data directory that is wiped or replaced breaks that
//! assumption silently: the node comes back under the same id with nothing
//! on disk, may grant a second vote in a term it already voted in, and may
//! help elect a leader that lacks committed entries. So every data directory
//! gets an **incarnation** (a random 128-bit id made when it is created), and
//! the cluster remembers each member's incarnation from the moment it was
//! formed. A peer that presents its id with another incarnation is a node
//! that forgot its state; it is refused, so it never votes and never counts
//! toward any quorum. (Once learners exist it can rejoin as one and be
//! caught up by snapshot before it votes; until then an operator replaces
//! it as `docs/operations.md` says.)
//!
//! **Formation.** A cluster is formed once, by its *founder* (the member with
//! the lowest id), and only when every configured member answers and none of
//! them is in a cluster yet: the founder draws the cluster's uid and records
//! every member's incarnation ([`ClusterRecord`]). The others join by
//! adopting that record, and only if it lists their own incarnation. Because
//! the record is complete when it is made, every member knows every other
//! member's incarnation before any Raft message is exchanged; there is no
//! window in which two incarnations of one node could each be accepted by a
//! different peer. The cost: the first start needs every member up.
//!
//! A node with data from another cluster (another uid, name, partition
//! count, replication factor or on-disk format) is refused on every
//! connection, in both directions, with a message naming the mismatch.
//!
//! Not covered here: membership changes (the record is fixed at formation
//! until they land), and authentication (a hello is not a credential; TLS
//! and auth are a later issue).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::NodeId;

pub mod wire;

/// The unique id of a formed cluster, drawn by its founder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterUid(pub u128);

/// The unique id of one data directory, drawn when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u128);

macro_rules! hex_id {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }

        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{s:?} is not 32 hexadecimal digits"));
                }
                u128::from_str_radix(s, 16)
                    .map($t)
                    .map_err(|e| format!("{s:?}: {e}"))
            }
        }

        impl $t {
            /// Big-endian bytes, as they travel in peer messages.
            pub fn to_bytes(self) -> [u8; 16] {
                self.0.to_be_bytes()
            }
        }
    };
}

hex_id!(ClusterUid);
hex_id!(Incarnation);

/// What a node's data directory says about itself; fixed once the directory
/// exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node: NodeId,
    pub incarnation: Incarnation,
    /// The operator's name for the cluster (`--cluster-id`).
    pub cluster_name: String,
    pub partition_count: u32,
    pub replication_factor: u32,
    /// The on-disk format version of the node's data directory.
    pub format_version: u32,
}

/// A formed cluster: its uid, and the incarnation of every member when it
/// was formed. Every member holds the same record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRecord {
    pub uid: ClusterUid,
    pub members: BTreeMap<NodeId, Incarnation>,
}

/// What a node says when it opens a connection to a peer: who it is, which
/// cluster it is in (none while it forms), and whom it means to reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub from: Identity,
    pub cluster: Option<ClusterUid>,
    pub to: NodeId,
    /// The incarnation the sender's cluster record has for `to`, if any.
    pub to_incarnation: Option<Incarnation>,
}

/// Why a peer is refused. Its `Display` says what is wrong and what to do;
/// [`Refusal::kind`] is a stable label for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The two data directories have different on-disk formats.
    FormatVersion {
        peer: NodeId,
        ours: u32,
        theirs: u32,
    },
    /// Different `--cluster-id` names.
    ClusterName {
        peer: NodeId,
        ours: String,
        theirs: String,
    },
    PartitionCount {
        peer: NodeId,
        ours: u32,
        theirs: u32,
    },
    ReplicationFactor {
        peer: NodeId,
        ours: u32,
        theirs: u32,
    },
    /// The peer meant to reach another node id at this address.
    WrongNode { me: NodeId, addressed: NodeId },
    /// The peer's id is not a member of this node's cluster.
    NotAMember { peer: NodeId },
    /// This node is not in a cluster yet, so it takes no Raft traffic.
    NotFormed { me: NodeId },
    /// The peer has not joined this cluster yet (it is still forming).
    PeerNotFormed { peer: NodeId },
    /// The peer belongs to another formed cluster.
    OtherCluster {
        peer: NodeId,
        ours: ClusterUid,
        theirs: ClusterUid,
    },
    /// The peer's data directory is not the one the cluster knows: it was
    /// wiped or replaced, and the node forgot what it had persisted.
    PeerReplaced {
        peer: NodeId,
        known: Incarnation,
        presented: Incarnation,
    },
    /// The peer was removed from the cluster's member list: its replicas
    /// live elsewhere, and its id is never used again.
    Removed { peer: NodeId },
    /// The peer's cluster knows this node by another data directory: this
    /// node's was wiped or replaced.
    SelfReplaced {
        me: NodeId,
        peer: NodeId,
        cluster: ClusterUid,
        known: Incarnation,
        mine: Incarnation,
    },
}

impl Refusal {
    /// A stable, short label (for metrics and JSON).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::FormatVersion { .. } => "format_version",
            Refusal::ClusterName { .. } => "cluster_name",
            Refusal::PartitionCount { .. } => "partition_count",
            Refusal::ReplicationFactor { .. } => "replication_factor",
            Refusal::WrongNode { .. } => "wrong_node",
            Refusal::NotAMember { .. } => "not_a_member",
            Refusal::NotFormed { .. } => "not_formed",
            Refusal::PeerNotFormed { .. } => "peer_not_formed",
            Refusal::OtherCluster { .. } => "other_cluster",
            Refusal::PeerReplaced { .. } => "peer_replaced",
            Refusal::SelfReplaced { .. } => "self_replaced",
            Refusal::Removed { .. } => "removed",
        }
    }

    /// Whether the refusal ends by itself once formation completes (as
    /// opposed to one an operator must act on).
    pub fn is_transient(&self) -> bool {
        Self::kind_is_transient(self.kind())
    }

    /// [`Refusal::is_transient`] from the [`Refusal::kind`] alone (what a
    /// refused caller reads back from the callee's status).
    pub fn kind_is_transient(kind: &str) -> bool {
        matches!(kind, "not_formed" | "peer_not_formed")
    }

    /// The other node the refusal is about (`None`: only this one).
    pub fn peer(&self) -> Option<NodeId> {
        match self {
            Refusal::FormatVersion { peer, .. }
            | Refusal::ClusterName { peer, .. }
            | Refusal::PartitionCount { peer, .. }
            | Refusal::ReplicationFactor { peer, .. }
            | Refusal::NotAMember { peer }
            | Refusal::Removed { peer }
            | Refusal::PeerNotFormed { peer }
            | Refusal::OtherCluster { peer, .. }
            | Refusal::PeerReplaced { peer, .. }
            | Refusal::SelfReplaced { peer, .. } => Some(*peer),
            Refusal::WrongNode { addressed, .. } => Some(*addressed),
            Refusal::NotFormed { .. } => None,
        }
    }
}

const REPLACED_HELP: &str = "a node that lost its data must not vote with forgotten state; \
     see \"Replacing a node's disk\" in docs/operations.md";

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::FormatVersion { peer, ours, theirs } => write!(
                f,
                "on-disk format mismatch: {peer} runs format {theirs}, this node format {ours}; \
                 run one ringkv version across the cluster"
            ),
            Refusal::ClusterName { peer, ours, theirs } => write!(
                f,
                "cluster name mismatch: {peer} belongs to cluster {theirs:?}, this node to \
                 {ours:?}; check --cluster-id and --peers"
            ),
            Refusal::PartitionCount { peer, ours, theirs } => write!(
                f,
                "partition count mismatch: {peer} has {theirs} partitions, this node {ours}; \
                 every node of a cluster needs the same --partitions"
            ),
            Refusal::ReplicationFactor { peer, ours, theirs } => write!(
                f,
                "replication factor mismatch: {peer} has {theirs}, this node {ours}; every node \
                 of a cluster needs the same --replication-factor"
            ),
            // Said the same on either side: the caller or the callee may be
            // the one whose --peers is wrong.
            Refusal::WrongNode { me, addressed } => write!(
                f,
                "a call meant for {addressed} reached {me}: a --peers list maps {addressed} to \
                 {me}'s address"
            ),
            Refusal::NotAMember { peer } => {
                write!(f, "{peer} is not a member of this node's cluster")
            }
            Refusal::Removed { peer } => write!(
                f,
                "{peer} was removed from the cluster (its replicas now live on other nodes); \
                 stop it, wipe its data directory, and join it again (--join; its old id is \
                 free again)"
            ),
            Refusal::NotFormed { me } => write!(
                f,
                "{me} is not in a cluster yet (it is still forming); it takes no peer traffic"
            ),
            Refusal::PeerNotFormed { peer } => {
                write!(
                    f,
                    "{peer} has not joined the cluster yet (it is still forming)"
                )
            }
            Refusal::OtherCluster { peer, ours, theirs } => write!(
                f,
                "cluster mismatch: {peer} belongs to cluster {theirs}, this node to {ours}; \
                 it holds another cluster's data (wipe its data directory to reuse the machine)"
            ),
            Refusal::PeerReplaced {
                peer,
                known,
                presented,
            } => write!(
                f,
                "{peer}'s data directory was replaced or wiped: the cluster knows {peer} as \
                 incarnation {known}, it presents {presented}; {REPLACED_HELP}"
            ),
            Refusal::SelfReplaced {
                me,
                peer,
                cluster,
                known,
                mine,
            } => write!(
                f,
                "this node's data directory was replaced or wiped: {peer} says cluster {cluster} \
                 knows {me} as incarnation {known}, this directory is {mine}; {REPLACED_HELP}. \
                 If instead {peer} belongs to a cluster you no longer want, stop it and wipe its \
                 data directory"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The checks that need no cluster record: the settings that must agree
/// (also what a member checks of a node that asks to join).
pub fn check_settings(me: &Identity, peer: &Identity) -> Result<(), Refusal> {
    let id = peer.node;
    if peer.format_version != me.format_version {
        return Err(Refusal::FormatVersion {
            peer: id,
            ours: me.format_version,
            theirs: peer.format_version,
        });
    }
    if peer.cluster_name != me.cluster_name {
        return Err(Refusal::ClusterName {
            peer: id,
            ours: me.cluster_name.clone(),
            theirs: peer.cluster_name.clone(),
        });
    }
    if peer.partition_count != me.partition_count {
        return Err(Refusal::PartitionCount {
            peer: id,
            ours: me.partition_count,
            theirs: peer.partition_count,
        });
    }
    if peer.replication_factor != me.replication_factor {
        return Err(Refusal::ReplicationFactor {
            peer: id,
            ours: me.replication_factor,
            theirs: peer.replication_factor,
        });
    }
    Ok(())
}

/// The rule for every incoming peer connection (stream or forwarded
/// request): admitted only if the settings agree, it was meant for this
/// node, both nodes are in the same formed cluster, and each is the
/// incarnation the cluster record names. `record` is this node's own
/// record (`None` while it forms).
pub fn admit(me: &Identity, record: Option<&ClusterRecord>, hello: &Hello) -> Result<(), Refusal> {
    check_settings(me, &hello.from)?;
    if hello.to != me.node {
        return Err(Refusal::WrongNode {
            me: me.node,
            addressed: hello.to,
        });
    }
    let Some(record) = record else {
        return Err(Refusal::NotFormed { me: me.node });
    };
    let peer = hello.from.node;
    if let Some(theirs) = hello.cluster
        && theirs != record.uid
    {
        return Err(Refusal::OtherCluster {
            peer,
            ours: record.uid,
            theirs,
        });
    }
    let Some(&known) = record.members.get(&peer) else {
        return Err(Refusal::NotAMember { peer });
    };
    if known != hello.from.incarnation {
        return Err(Refusal::PeerReplaced {
            peer,
            known,
            presented: hello.from.incarnation,
        });
    }
    if hello.cluster.is_none() {
        return Err(Refusal::PeerNotFormed { peer });
    }
    if let Some(expected) = hello.to_incarnation
        && expected != me.incarnation
    {
        return Err(Refusal::SelfReplaced {
            me: me.node,
            peer,
            cluster: record.uid,
            known: expected,
            mine: me.incarnation,
        });
    }
    Ok(())
}

/// What a peer answered during formation: its identity and, if it is in a
/// cluster, that cluster's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub identity: Identity,
    pub record: Option<ClusterRecord>,
}

/// What a node not yet in a cluster does next (see [`formation_step`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Formation {
    /// This node is the founder and every member is present and fresh:
    /// draw a uid and form the cluster with these incarnations.
    Form {
        members: BTreeMap<NodeId, Incarnation>,
    },
    /// A peer is in a cluster that lists this node's incarnation: join it.
    Adopt(ClusterRecord),
    /// Ask again later: these members have not answered, or the founder has
    /// not formed the cluster yet.
    Wait { waiting_for: Vec<NodeId> },
    /// This node cannot join: a peer's answer shows a mismatch or that this
    /// node's data directory was replaced. Ask again later (an operator may
    /// fix the peer), but never join while it holds.
    Refused(Refusal),
}

/// The founder of a cluster: its lowest member id.
pub fn founder(members: &BTreeSet<NodeId>) -> Option<NodeId> {
    members.first().copied()
}

/// Decides formation from the answers of the peers that answered so far
/// (`answers`, keyed by the member they were asked as). `members` is the
/// configured member set, this node included.
pub fn formation_step(
    me: &Identity,
    members: &BTreeSet<NodeId>,
    answers: &BTreeMap<NodeId, PeerState>,
) -> Formation {
    let mut formed: Option<(NodeId, &ClusterRecord)> = None;
    for (&asked, answer) in answers {
        if answer.identity.node != asked {
            // The address of `asked` answers as another node.
            return Formation::Refused(Refusal::WrongNode {
                me: answer.identity.node,
                addressed: asked,
            });
        }
        if let Err(refusal) = check_settings(me, &answer.identity) {
            return Formation::Refused(refusal);
        }
        if let Some(record) = &answer.record {
            match formed {
                Some((_, first)) if first.uid != record.uid => {
                    return Formation::Refused(Refusal::OtherCluster {
                        peer: asked,
                        ours: first.uid,
                        theirs: record.uid,
                    });
                }
                Some(_) => {}
                None => formed = Some((asked, record)),
            }
        }
    }
    if let Some((peer, record)) = formed {
        return match record.members.get(&me.node) {
            Some(&known) if known == me.incarnation => Formation::Adopt(record.clone()),
            Some(&known) => Formation::Refused(Refusal::SelfReplaced {
                me: me.node,
                peer,
                cluster: record.uid,
                known,
                mine: me.incarnation,
            }),
            None => Formation::Refused(Refusal::NotAMember { peer: me.node }),
        };
    }
    let founder = founder(members).unwrap_or(me.node);
    if founder != me.node {
        return Formation::Wait {
            waiting_for: vec![founder],
        };
    }
    let waiting_for: Vec<NodeId> = members
        .iter()
        .filter(|&&m| m != me.node && !answers.contains_key(&m))
        .copied()
        .collect();
    if !waiting_for.is_empty() {
        return Formation::Wait { waiting_for };
    }
    let mut incarnations: BTreeMap<NodeId, Incarnation> = answers
        .iter()
        .filter(|(id, _)| members.contains(id))
        .map(|(&id, a)| (id, a.identity.incarnation))
        .collect();
    incarnations.insert(me.node, me.incarnation);
    Formation::Form {
        members: incarnations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(node: u64, inc: u128) -> Identity {
        Identity {
            node: NodeId(node),
            incarnation: Incarnation(inc),
            cluster_name: "c".into(),
            partition_count: 64,
            replication_factor: 3,
            format_version: 1,
        }
    }

    fn record() -> ClusterRecord {
        ClusterRecord {
            uid: ClusterUid(0xc1),
            members: (1..=3)
                .map(|i| (NodeId(i), Incarnation(i as u128)))
                .collect(),
        }
    }

    fn hello(from: Identity, cluster: Option<u128>, to: u64, to_inc: Option<u128>) -> Hello {
        Hello {
            from,
            cluster: cluster.map(ClusterUid),
            to: NodeId(to),
            to_incarnation: to_inc.map(Incarnation),
        }
    }

    #[test]
    fn ids_print_and_parse_as_32_hex_digits() {
        let u = ClusterUid(0xdead_beef);
        let text = u.to_string();
        assert_eq!(text, "000000000000000000000000deadbeef");
        assert_eq!(text.parse::<ClusterUid>(), Ok(u));
        assert!("xyz".parse::<Incarnation>().is_err());
        assert!(
            "+0000000000000000000000000000001"
                .parse::<Incarnation>()
                .is_err()
        );
    }

    #[test]
    fn a_member_of_the_same_cluster_is_admitted() {
        let me = ident(1, 1);
        let h = hello(ident(2, 2), Some(0xc1), 1, Some(1));
        assert_eq!(admit(&me, Some(&record()), &h), Ok(()));
        // A peer that does not know this node's incarnation yet is fine too.
        let h = hello(ident(2, 2), Some(0xc1), 1, None);
        assert_eq!(admit(&me, Some(&record()), &h), Ok(()));
    }

    #[test]
    fn mismatched_settings_are_refused_and_named() {
        let me = ident(1, 1);
        let mut other = ident(3, 3);
        other.partition_count = 128;
        let r = admit(&me, Some(&record()), &hello(other, Some(0xc1), 1, None)).unwrap_err();
        assert_eq!(r.kind(), "partition_count");
        assert!(
            r.to_string()
                .contains("n3 has 128 partitions, this node 64"),
            "{r}"
        );

        let mut other = ident(3, 3);
        other.cluster_name = "old".into();
        let r = admit(&me, Some(&record()), &hello(other, Some(0xc1), 1, None)).unwrap_err();
        assert_eq!(r.kind(), "cluster_name");

        let mut other = ident(3, 3);
        other.format_version = 2;
        let r = admit(&me, Some(&record()), &hello(other, Some(0xc1), 1, None)).unwrap_err();
        assert_eq!(r.kind(), "format_version");

        let mut other = ident(3, 3);
        other.replication_factor = 5;
        let r = admit(&me, Some(&record()), &hello(other, Some(0xc1), 1, None)).unwrap_err();
        assert_eq!(r.kind(), "replication_factor");
    }

    #[test]
    fn another_clusters_node_is_refused() {
        let r = admit(
            &ident(1, 1),
            Some(&record()),
            &hello(ident(3, 3), Some(0x01d), 1, Some(1)),
        )
        .unwrap_err();
        assert_eq!(r.kind(), "other_cluster");
        assert!(
            r.to_string().contains("holds another cluster's data"),
            "{r}"
        );
    }

    #[test]
    fn a_wiped_node_is_refused_by_its_peers_and_refuses_them() {
        // n3 lost its disk: new incarnation 33, not in a cluster.
        let wiped = ident(3, 33);
        let r = admit(
            &ident(1, 1),
            Some(&record()),
            &hello(wiped.clone(), None, 1, None),
        )
        .unwrap_err();
        assert_eq!(
            r,
            Refusal::PeerReplaced {
                peer: NodeId(3),
                known: Incarnation(3),
                presented: Incarnation(33)
            }
        );
        assert!(r.to_string().contains("docs/operations.md"), "{r}");
        // Even if it claimed the cluster's uid, its incarnation gives it away.
        let r = admit(
            &ident(1, 1),
            Some(&record()),
            &hello(wiped.clone(), Some(0xc1), 1, None),
        )
        .unwrap_err();
        assert_eq!(r.kind(), "peer_replaced");
        // A peer's stream to the wiped node names the old incarnation: the
        // wiped node, not in a cluster, takes nothing.
        let to_wiped = hello(ident(1, 1), Some(0xc1), 3, Some(3));
        assert_eq!(
            admit(&wiped, None, &to_wiped),
            Err(Refusal::NotFormed { me: NodeId(3) })
        );
        // Had it kept a copy of the record, the expected incarnation still
        // gives it away.
        let r = admit(&wiped, Some(&record()), &to_wiped).unwrap_err();
        assert_eq!(r.kind(), "self_replaced");
    }

    #[test]
    fn misaddressed_and_unknown_peers_are_refused() {
        let r = admit(
            &ident(1, 1),
            Some(&record()),
            &hello(ident(2, 2), Some(0xc1), 2, None),
        )
        .unwrap_err();
        assert_eq!(r.kind(), "wrong_node");
        let r = admit(
            &ident(1, 1),
            Some(&record()),
            &hello(ident(9, 9), Some(0xc1), 1, None),
        )
        .unwrap_err();
        assert_eq!(r.kind(), "not_a_member");
    }

    fn members(n: u64) -> BTreeSet<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    fn fresh(node: u64, inc: u128) -> PeerState {
        PeerState {
            identity: ident(node, inc),
            record: None,
        }
    }

    /// A peer in the cluster of [`record`].
    fn formed(node: u64) -> PeerState {
        PeerState {
            identity: ident(node, node.into()),
            record: Some(record()),
        }
    }

    fn refusal(me: &Identity, answers: &BTreeMap<NodeId, PeerState>) -> Refusal {
        match formation_step(me, &members(3), answers) {
            Formation::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_founder_forms_only_when_every_member_is_fresh_and_present() {
        let me = ident(1, 11);
        let mut answers = BTreeMap::new();
        answers.insert(NodeId(2), fresh(2, 22));
        assert_eq!(
            formation_step(&me, &members(3), &answers),
            Formation::Wait {
                waiting_for: vec![NodeId(3)]
            }
        );
        answers.insert(NodeId(3), fresh(3, 33));
        let Formation::Form { members: m } = formation_step(&me, &members(3), &answers) else {
            panic!("expected to form");
        };
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec![
                (NodeId(1), Incarnation(11)),
                (NodeId(2), Incarnation(22)),
                (NodeId(3), Incarnation(33))
            ]
        );
    }

    #[test]
    fn other_members_wait_for_the_founder_then_adopt_its_record() {
        let me = ident(2, 2);
        let mut answers = BTreeMap::new();
        answers.insert(NodeId(1), fresh(1, 1));
        answers.insert(NodeId(3), fresh(3, 3));
        assert_eq!(
            formation_step(&me, &members(3), &answers),
            Formation::Wait {
                waiting_for: vec![NodeId(1)]
            }
        );
        answers.insert(NodeId(1), formed(1));
        assert_eq!(
            formation_step(&me, &members(3), &answers),
            Formation::Adopt(record())
        );
    }

    #[test]
    fn a_fresh_node_facing_a_cluster_that_knew_it_is_refused_not_joined() {
        // n3's disk was replaced (incarnation 33); n1 and n2 know it as 3.
        let me = ident(3, 33);
        let answers = BTreeMap::from([(NodeId(1), formed(1))]);
        assert_eq!(refusal(&me, &answers).kind(), "self_replaced");
        // The founder itself, wiped, meets the same fate instead of forming
        // a second cluster beside the live one.
        let me = ident(1, 11);
        let answers = BTreeMap::from([(NodeId(2), fresh(2, 22)), (NodeId(3), formed(3))]);
        let r = refusal(&me, &answers);
        assert_eq!(r.kind(), "self_replaced");
        assert!(r.to_string().contains("wipe its data directory"), "{r}");
    }

    #[test]
    fn formation_refuses_mismatched_settings_and_misrouted_addresses() {
        let me = ident(1, 1);
        let mut odd = fresh(3, 3);
        odd.identity.partition_count = 128;
        let answers = BTreeMap::from([(NodeId(2), fresh(2, 2)), (NodeId(3), odd)]);
        assert_eq!(refusal(&me, &answers).kind(), "partition_count");
        let answers = BTreeMap::from([(NodeId(2), fresh(3, 3))]);
        assert_eq!(refusal(&me, &answers).kind(), "wrong_node");
    }

    #[test]
    fn two_different_clusters_among_the_peers_are_refused() {
        let me = ident(3, 3);
        let mut other = record();
        other.uid = ClusterUid(0xbad);
        let mut in_other = formed(2);
        in_other.record = Some(other);
        let answers = BTreeMap::from([(NodeId(1), formed(1)), (NodeId(2), in_other)]);
        assert_eq!(refusal(&me, &answers).kind(), "other_cluster");
    }
}
