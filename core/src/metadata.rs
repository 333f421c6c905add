//! The cluster's metadata: its member list (each member's id, address,
//! data-directory incarnation and state) and its ring settings, as one
//! versioned document ([`ClusterMetadata`]) with the changes it admits
//! ([`MetaChange`]).
//!
//! **Where it lives.** The document is the value of the one key
//! [`DOCUMENT_KEY`] of the metadata Raft group ([`METADATA_GROUP`]), whose
//! state machine is the same ordered map every partition has; its version
//! is that key's `mod_revision` (a log index of the metadata group: never
//! reused, so a higher version is a later committed document). A change is
//! a compare-and-set of the whole document against the version it was made
//! from, so two changes made from one version cannot both land. The group
//! starts on the lowest-id founding members ([`metadata_voters`]: 1, 3 or
//! 5 of them, an odd number so that every voter adds fault tolerance).
//!
//! **Rules of a change** (checked by [`ClusterMetadata::apply`], so every
//! writer obeys them): a live id has one incarnation (a wiped data
//! directory is a new node: under a new id, or under a removed one, which
//! then starts over as `joining`); a member's state only moves forward
//! (joining -> up -> draining -> dead -> removed, some steps skipped, see
//! [`MemberState::may_become`]), and never from `up` straight to
//! `removed`: its replicas must move first (drain, or death).
//!
//! The document also holds the clients' access tokens (hashed; see
//! [`crate::access`]): adding and removing them are changes like the
//! others, so every node checks tokens against the same committed list.
//!
//! Not here: who proposes changes and when (the node, and the placement
//! controller), nor how the document reaches nodes outside the group.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use prost::Message as _;
use ringkv_proto::v1 as pb;

use crate::access::{self, MAX_TOKENS, RecordError, Role, TokenRecord};
use crate::identity::Incarnation;
use crate::ring::{RingConfig, RingError};
use crate::types::{NodeId, PartitionId};

/// The metadata group's id: beyond every partition id (a partition count
/// is at most [`crate::ring::MAX_PARTITION_COUNT`]), so no key maps to it.
pub const METADATA_GROUP: PartitionId = PartitionId(u32::MAX);

/// The metadata group's one key.
pub const DOCUMENT_KEY: &[u8] = b"cluster";

/// The metadata group never has more voters than this.
pub const MAX_METADATA_VOTERS: usize = 5;

/// Largest encoded document accepted (about 20,000 members).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Where a member is in its life in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Registered, not heard from yet: holds nothing.
    Joining,
    /// Holds its share of the ring.
    Up,
    /// Its replicas are moving away (an operator's request); then removed.
    Draining,
    /// Held down past the grace period: its replicas are re-created
    /// elsewhere; it is removed once none is left.
    Dead,
    /// Gone for good; its id is never placed again.
    Removed,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Up => "up",
            MemberState::Draining => "draining",
            MemberState::Dead => "dead",
            MemberState::Removed => "removed",
        }
    }

    /// Whether the desired ring places replicas on a member in this state.
    pub fn is_placed(self) -> bool {
        self == MemberState::Up
    }

    /// Whether a member in this state may still do work.
    pub fn is_live(self) -> bool {
        !matches!(self, MemberState::Dead | MemberState::Removed)
    }

    /// Whether a member may go from `self` to `to`: only forward, and
    /// never from `up` to `removed` (its replicas must move first).
    pub fn may_become(self, to: MemberState) -> bool {
        to > self && !(self == MemberState::Up && to == MemberState::Removed)
    }

    fn to_proto(self) -> pb::MemberState {
        match self {
            MemberState::Joining => pb::MemberState::Joining,
            MemberState::Up => pb::MemberState::Up,
            MemberState::Draining => pb::MemberState::Draining,
            MemberState::Dead => pb::MemberState::Dead,
            MemberState::Removed => pb::MemberState::Removed,
        }
    }

    fn from_proto(v: i32) -> Option<MemberState> {
        Some(match pb::MemberState::try_from(v).ok()? {
            pb::MemberState::Unspecified => return None,
            pb::MemberState::Joining => MemberState::Joining,
            pb::MemberState::Up => MemberState::Up,
            pb::MemberState::Draining => MemberState::Draining,
            pb::MemberState::Dead => MemberState::Dead,
            pb::MemberState::Removed => MemberState::Removed,
        })
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub state: MemberState,
    /// Its gRPC address (client API and peer traffic), `host:port`.
    pub address: String,
    /// Its data directory's incarnation, once known.
    pub incarnation: Option<Incarnation>,
    /// Where it serves REST and the Redis protocol, as it last told the
    /// controller (empty until then, or where it serves none).
    pub client: ClientAddresses,
}

/// Where a node serves clients besides gRPC: `host:port`, empty for a
/// protocol it does not serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAddresses {
    pub rest: String,
    pub resp: String,
}

/// The metadata document at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// The `mod_revision` of the document in the metadata group; 0 for a
    /// document not written yet.
    pub version: u64,
    pub ring: RingConfig,
    pub members: BTreeMap<NodeId, Member>,
    /// The clients' access tokens by id; empty: authentication is off.
    pub tokens: BTreeMap<String, TokenRecord>,
}

/// A change of the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaChange {
    /// A node asks to be a member (`joining`), or tells its new address.
    Register {
        node: NodeId,
        address: String,
        incarnation: Incarnation,
    },
    /// A member moves from state `from` to `to`.
    SetState {
        node: NodeId,
        from: MemberState,
        to: MemberState,
    },
    /// A live member serves clients at these addresses now.
    SetClientAddresses {
        node: NodeId,
        addresses: ClientAddresses,
    },
    /// A client access token is added (adding the same one again is no
    /// change: a retried request).
    AddToken { id: String, record: TokenRecord },
    /// A client access token is revoked.
    RemoveToken { id: String },
}

impl fmt::Display for MetaChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaChange::Register { node, address, .. } => write!(f, "register {node} at {address}"),
            MetaChange::SetState { node, from, to } => write!(f, "{node}: {from} -> {to}"),
            MetaChange::SetClientAddresses { node, addresses } => write!(
                f,
                "{node} serves REST at {:?} and RESP at {:?}",
                addresses.rest, addresses.resp
            ),
            MetaChange::AddToken { id, record } => write!(
                f,
                "add token {id} (role {}, keys {})",
                record.role,
                if record.scope.is_empty() {
                    "all".to_owned()
                } else {
                    format!("under {}", access::show_scope(&record.scope))
                }
            ),
            MetaChange::RemoveToken { id } => write!(f, "remove token {id}"),
        }
    }
}

/// Why a change is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("{0} is not a member of the cluster")]
    NotAMember(NodeId),
    #[error("{node} is {actual}, not {expected} (the member list changed meanwhile)")]
    StateChanged {
        node: NodeId,
        expected: MemberState,
        actual: MemberState,
    },
    #[error("{node} cannot go from {from} to {to}")]
    Backward {
        node: NodeId,
        from: MemberState,
        to: MemberState,
    },
    #[error(
        "{node} was a member with another data directory (incarnation {known}, this one is \
         {offered}); a wiped or replaced node joins under a new id, or under this one once \
         it is removed"
    )]
    OtherIncarnation {
        node: NodeId,
        known: Incarnation,
        offered: Incarnation,
    },
    #[error("{node} is {state}; {}", gone_hint(*state))]
    Gone { node: NodeId, state: MemberState },
    #[error("node id 0 is not a valid id")]
    ZeroId,
    #[error("an address must not be empty")]
    NoAddress,
    #[error("{0}")]
    BadToken(#[from] RecordError),
    #[error("a token with id {0} exists already")]
    TokenExists(String),
    #[error("no token has id {0}")]
    NoSuchToken(String),
    #[error(
        "the first token must be an admin token: once a token exists every client needs one, \
         and only an admin token adds the next"
    )]
    FirstTokenNotAdmin,
    #[error(
        "{0} is the last admin token: without it no token could be added or removed again \
         (add another admin token first, or remove every other token to turn authentication off)"
    )]
    LastAdminToken(String),
    #[error("the cluster holds {MAX_TOKENS} tokens, the most it may")]
    TooManyTokens,
}

/// What an operator can do about [`MetaError::Gone`].
fn gone_hint(state: MemberState) -> &'static str {
    match state {
        MemberState::Removed => {
            "this data directory cannot come back (wipe it, and the node joins again as a new member)"
        }
        _ => "its id can join again, from an empty data directory, once it is removed",
    }
}

/// Why bytes are not a document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the document is {0} bytes; the limit is {MAX_DOCUMENT_BYTES}")]
    TooLarge(usize),
    #[error("not a metadata document: {0}")]
    Proto(String),
    #[error("the document has no ring settings")]
    NoRing,
    #[error("{0}")]
    Ring(#[from] RingError),
    #[error("member {0} is listed twice")]
    Duplicate(u64),
    #[error("a member has id 0")]
    ZeroId,
    #[error("member {0} has no valid state")]
    NoState(u64),
    #[error("member {0} has an incarnation of {1} bytes, not 16")]
    Incarnation(u64, usize),
    #[error("token {0:?}: {1}")]
    Token(String, String),
    #[error("token {0} is listed twice")]
    DuplicateToken(String),
}

impl ClusterMetadata {
    /// The document a formed cluster starts from: its founders, all `up`.
    pub fn genesis(ring: RingConfig, founders: impl IntoIterator<Item = (NodeId, String)>) -> Self {
        ClusterMetadata {
            version: 0,
            ring,
            members: founders
                .into_iter()
                .map(|(id, address)| {
                    (
                        id,
                        Member {
                            state: MemberState::Up,
                            address,
                            incarnation: None,
                            client: ClientAddresses::default(),
                        },
                    )
                })
                .collect(),
            tokens: BTreeMap::new(),
        }
    }

    /// Members in `state`.
    pub fn in_state(&self, state: MemberState) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(move |(_, m)| m.state == state)
            .map(|(&id, _)| id)
    }

    /// The document after `change` (same version: the store gives the new
    /// one), or why the change is refused.
    pub fn apply(&self, change: &MetaChange) -> Result<ClusterMetadata, MetaError> {
        let mut next = self.clone();
        match change {
            MetaChange::Register {
                node,
                address,
                incarnation,
            } => {
                if node.0 == 0 {
                    return Err(MetaError::ZeroId);
                }
                if address.is_empty() {
                    return Err(MetaError::NoAddress);
                }
                // Removed (its replicas moved away, no group lists it) and
                // back with another data directory: a new member under the
                // old id, as a StatefulSet's pod is after a scale down and
                // up. The old directory stays refused: its incarnation is
                // not the member's any more.
                let returns = |m: &Member| {
                    m.state == MemberState::Removed
                        && m.incarnation.is_some_and(|known| known != *incarnation)
                };
                let joining = Member {
                    state: MemberState::Joining,
                    address: address.clone(),
                    incarnation: Some(*incarnation),
                    client: ClientAddresses::default(),
                };
                match next.members.get_mut(node) {
                    None => {
                        next.members.insert(*node, joining);
                    }
                    Some(m) if returns(m) => *m = joining,
                    Some(m) if !m.state.is_live() => {
                        return Err(MetaError::Gone {
                            node: *node,
                            state: m.state,
                        });
                    }
                    Some(m) => match m.incarnation {
                        Some(known) if known != *incarnation => {
                            return Err(MetaError::OtherIncarnation {
                                node: *node,
                                known,
                                offered: *incarnation,
                            });
                        }
                        _ => {
                            m.address = address.clone();
                            m.incarnation = Some(*incarnation);
                        }
                    },
                }
            }
            MetaChange::SetState { node, from, to } => {
                let m = next
                    .members
                    .get_mut(node)
                    .ok_or(MetaError::NotAMember(*node))?;
                if m.state != *from {
                    return Err(MetaError::StateChanged {
                        node: *node,
                        expected: *from,
                        actual: m.state,
                    });
                }
                if !from.may_become(*to) {
                    return Err(MetaError::Backward {
                        node: *node,
                        from: *from,
                        to: *to,
                    });
                }
                m.state = *to;
            }
            MetaChange::SetClientAddresses { node, addresses } => {
                let m = next
                    .members
                    .get_mut(node)
                    .ok_or(MetaError::NotAMember(*node))?;
                if !m.state.is_live() {
                    return Err(MetaError::Gone {
                        node: *node,
                        state: m.state,
                    });
                }
                m.client = addresses.clone();
            }
            MetaChange::AddToken { id, record } => {
                record.validate(id)?;
                match next.tokens.get(id) {
                    Some(known) if known == record => {}
                    Some(_) => return Err(MetaError::TokenExists(id.clone())),
                    None if next.tokens.len() >= MAX_TOKENS => {
                        return Err(MetaError::TooManyTokens);
                    }
                    None if next.tokens.is_empty() && record.role != Role::Admin => {
                        return Err(MetaError::FirstTokenNotAdmin);
                    }
                    None => {
                        next.tokens.insert(id.clone(), record.clone());
                    }
                }
            }
            MetaChange::RemoveToken { id } => {
                let removed = next
                    .tokens
                    .remove(id)
                    .ok_or_else(|| MetaError::NoSuchToken(id.clone()))?;
                let admins_left = next.tokens.values().any(|t| t.role == Role::Admin);
                if removed.role == Role::Admin && !admins_left && !next.tokens.is_empty() {
                    return Err(MetaError::LastAdminToken(id.clone()));
                }
            }
        }
        Ok(next)
    }

    /// The document's bytes (the version is not in them: it is where the
    /// bytes are stored).
    pub fn encode(&self) -> Bytes {
        let doc = pb::ClusterMetadata {
            ring: Some(pb::RingSettings {
                partition_count: self.ring.partition_count,
                replication_factor: u32::try_from(self.ring.replication_factor).unwrap_or(u32::MAX),
                tokens_per_node: self.ring.tokens_per_node,
            }),
            members: self
                .members
                .iter()
                .map(|(id, m)| pb::Member {
                    node: id.0,
                    state: m.state.to_proto() as i32,
                    address: m.address.clone(),
                    incarnation: m
                        .incarnation
                        .map_or_else(Bytes::new, |i| Bytes::copy_from_slice(&i.to_bytes())),
                    rest_address: m.client.rest.clone(),
                    resp_address: m.client.resp.clone(),
                })
                .collect(),
            tokens: self
                .tokens
                .iter()
                .map(|(id, t)| token_to_proto(id, t))
                .collect(),
        };
        Bytes::from(doc.encode_to_vec())
    }

    /// The document stored as `bytes` at `version`; anything malformed is
    /// an error, never a panic.
    pub fn decode(bytes: &[u8], version: u64) -> Result<ClusterMetadata, DecodeError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let doc =
            pb::ClusterMetadata::decode(bytes).map_err(|e| DecodeError::Proto(e.to_string()))?;
        let r = doc.ring.ok_or(DecodeError::NoRing)?;
        let ring = RingConfig {
            partition_count: r.partition_count,
            replication_factor: r.replication_factor as usize,
            tokens_per_node: r.tokens_per_node,
        };
        ring.validate()?;
        let mut members = BTreeMap::new();
        for m in doc.members {
            if m.node == 0 {
                return Err(DecodeError::ZeroId);
            }
            let state = MemberState::from_proto(m.state).ok_or(DecodeError::NoState(m.node))?;
            let incarnation = match m.incarnation.len() {
                0 => None,
                16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&m.incarnation);
                    Some(Incarnation(u128::from_be_bytes(b)))
                }
                n => return Err(DecodeError::Incarnation(m.node, n)),
            };
            let member = Member {
                state,
                address: m.address,
                incarnation,
                client: ClientAddresses {
                    rest: m.rest_address,
                    resp: m.resp_address,
                },
            };
            if members.insert(NodeId(m.node), member).is_some() {
                return Err(DecodeError::Duplicate(m.node));
            }
        }
        let mut tokens = BTreeMap::new();
        for t in doc.tokens {
            let (id, record) = token_from_proto(t)?;
            if tokens.contains_key(&id) {
                return Err(DecodeError::DuplicateToken(id));
            }
            tokens.insert(id, record);
        }
        Ok(ClusterMetadata {
            version,
            ring,
            members,
            tokens,
        })
    }
}

/// A token as the wire and the document carry it.
pub fn token_to_proto(id: &str, t: &TokenRecord) -> pb::AccessToken {
    pb::AccessToken {
        id: id.to_owned(),
        name: t.name.clone(),
        role: role_to_proto(t.role) as i32,
        scope: t.scope.clone(),
        secret_hash: Bytes::copy_from_slice(&t.secret_hash),
    }
}

/// A token from the wire, checked against its limits.
pub fn token_from_proto(t: pb::AccessToken) -> Result<(String, TokenRecord), DecodeError> {
    let bad = |why: String| DecodeError::Token(t.id.chars().take(40).collect(), why);
    let role = role_from_proto(t.role).ok_or_else(|| bad("no valid role".into()))?;
    let secret_hash: [u8; 32] = t.secret_hash[..]
        .try_into()
        .map_err(|_| bad(format!("a hash of {} bytes, not 32", t.secret_hash.len())))?;
    let record = TokenRecord {
        name: t.name,
        role,
        scope: t.scope,
        secret_hash,
    };
    record.validate(&t.id).map_err(|e| bad(e.to_string()))?;
    Ok((t.id, record))
}

fn role_to_proto(role: Role) -> pb::AccessRole {
    match role {
        Role::Read => pb::AccessRole::Read,
        Role::Write => pb::AccessRole::Write,
        Role::Admin => pb::AccessRole::Admin,
    }
}

fn role_from_proto(v: i32) -> Option<Role> {
    Some(match pb::AccessRole::try_from(v).ok()? {
        pb::AccessRole::Unspecified => return None,
        pb::AccessRole::Read => Role::Read,
        pb::AccessRole::Write => Role::Write,
        pb::AccessRole::Admin => Role::Admin,
    })
}

/// The metadata group's first voters among a cluster's founders: the
/// lowest ids, as many as the largest odd number not above
/// [`MAX_METADATA_VOTERS`] and the founder count (an even count would add a
/// voter to every quorum and no fault tolerance).
pub fn metadata_voters(founders: &BTreeSet<NodeId>) -> Vec<NodeId> {
    let n = founders.len().min(MAX_METADATA_VOTERS);
    let odd = if n.is_multiple_of(2) {
        n.saturating_sub(1)
    } else {
        n
    };
    founders.iter().copied().take(odd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    fn doc() -> ClusterMetadata {
        ClusterMetadata::genesis(
            RingConfig::default(),
            [(n(1), "a:1".to_owned()), (n(2), "b:2".to_owned())],
        )
    }

    #[test]
    fn a_document_survives_its_encoding() {
        let mut d = doc()
            .apply(&MetaChange::Register {
                node: n(7),
                address: "c:3".into(),
                incarnation: Incarnation(0xabc),
            })
            .unwrap()
            .apply(&MetaChange::SetClientAddresses {
                node: n(7),
                addresses: ClientAddresses {
                    rest: "c:8081".into(),
                    resp: "c:6379".into(),
                },
            })
            .unwrap();
        d.version = 42;
        assert_eq!(d.members[&n(7)].client.resp, "c:6379");
        assert_eq!(ClusterMetadata::decode(&d.encode(), 42), Ok(d));
    }

    #[test]
    fn client_addresses_are_set_for_live_members_only() {
        let addresses = ClientAddresses {
            rest: "a:8081".into(),
            resp: String::new(),
        };
        let set = |node| MetaChange::SetClientAddresses {
            node,
            addresses: addresses.clone(),
        };
        assert_eq!(
            doc().apply(&set(n(1))).unwrap().members[&n(1)].client,
            addresses
        );
        assert_eq!(doc().apply(&set(n(9))), Err(MetaError::NotAMember(n(9))));
        let dead = doc()
            .apply(&MetaChange::SetState {
                node: n(1),
                from: MemberState::Up,
                to: MemberState::Dead,
            })
            .unwrap();
        assert_eq!(
            dead.apply(&set(n(1))),
            Err(MetaError::Gone {
                node: n(1),
                state: MemberState::Dead
            })
        );
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(matches!(
            ClusterMetadata::decode(&[0xff, 0xff], 1),
            Err(DecodeError::Proto(_))
        ));
        assert_eq!(ClusterMetadata::decode(&[], 1), Err(DecodeError::NoRing));
        let bad = |members: Vec<pb::Member>| {
            let d = pb::ClusterMetadata {
                ring: Some(pb::RingSettings {
                    partition_count: 8,
                    replication_factor: 3,
                    tokens_per_node: 4,
                }),
                members,
                tokens: Vec::new(),
            };
            ClusterMetadata::decode(&d.encode_to_vec(), 1)
        };
        let member = |node, state: i32, inc: &[u8]| pb::Member {
            node,
            state,
            address: "x:1".into(),
            incarnation: Bytes::copy_from_slice(inc),
            rest_address: String::new(),
            resp_address: String::new(),
        };
        assert_eq!(bad(vec![member(0, 2, &[])]), Err(DecodeError::ZeroId));
        assert_eq!(bad(vec![member(3, 0, &[])]), Err(DecodeError::NoState(3)));
        assert_eq!(bad(vec![member(3, 9, &[])]), Err(DecodeError::NoState(3)));
        assert_eq!(
            bad(vec![member(3, 2, &[1, 2])]),
            Err(DecodeError::Incarnation(3, 2))
        );
        assert_eq!(
            bad(vec![member(3, 2, &[]), member(3, 1, &[])]),
            Err(DecodeError::Duplicate(3))
        );
        assert!(bad(vec![member(3, 2, &[7; 16])]).is_ok());
        assert_eq!(
            ClusterMetadata::decode(&vec![0; MAX_DOCUMENT_BYTES + 1], 1),
            Err(DecodeError::TooLarge(MAX_DOCUMENT_BYTES + 1))
        );
        // At the limit: judged on its contents (zeros are no document).
        assert!(matches!(
            ClusterMetadata::decode(&vec![0; MAX_DOCUMENT_BYTES], 1),
            Err(DecodeError::Proto(_))
        ));
    }

    #[test]
    fn states_only_move_forward_and_replicas_go_before_removal() {
        use MemberState::*;
        let all = [Joining, Up, Draining, Dead, Removed];
        let allowed: Vec<(MemberState, MemberState)> = all
            .iter()
            .flat_map(|&a| all.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| a.may_become(b))
            .collect();
        assert_eq!(
            allowed,
            [
                (Joining, Up),
                (Joining, Draining),
                (Joining, Dead),
                (Joining, Removed),
                (Up, Draining),
                (Up, Dead),
                (Draining, Dead),
                (Draining, Removed),
                (Dead, Removed),
            ]
        );
        let d = doc();
        assert_eq!(
            d.apply(&MetaChange::SetState {
                node: n(1),
                from: Joining,
                to: Up
            }),
            Err(MetaError::StateChanged {
                node: n(1),
                expected: Joining,
                actual: Up
            })
        );
        let up_to_removed = MetaChange::SetState {
            node: n(1),
            from: Up,
            to: Removed,
        };
        assert_eq!(up_to_removed.to_string(), "n1: up -> removed");
        let err = d.apply(&up_to_removed).unwrap_err();
        assert_eq!(err.to_string(), "n1 cannot go from up to removed");
        assert_eq!(
            d.apply(&MetaChange::SetState {
                node: n(9),
                from: Up,
                to: Dead
            }),
            Err(MetaError::NotAMember(n(9)))
        );
    }

    #[test]
    fn an_id_is_registered_once_with_one_incarnation() {
        let reg = |node, inc| MetaChange::Register {
            node: n(node),
            address: "z:9".into(),
            incarnation: Incarnation(inc),
        };
        assert_eq!(reg(5, 1).to_string(), "register n5 at z:9");
        let d = doc().apply(&reg(5, 1)).unwrap();
        assert_eq!(d.members[&n(5)].state, MemberState::Joining);
        // Again, same directory: idempotent (a retried join).
        assert_eq!(d.apply(&reg(5, 1)), Ok(d.clone()));
        // A founder tells its incarnation once.
        let d = d.apply(&reg(1, 11)).unwrap();
        assert_eq!(d.members[&n(1)].state, MemberState::Up);
        assert!(matches!(
            d.apply(&reg(1, 12)),
            Err(MetaError::OtherIncarnation { .. })
        ));
        let gone = d
            .apply(&MetaChange::SetState {
                node: n(5),
                from: MemberState::Joining,
                to: MemberState::Removed,
            })
            .unwrap();
        // Its old data directory stays out.
        assert_eq!(
            gone.apply(&reg(5, 1)),
            Err(MetaError::Gone {
                node: n(5),
                state: MemberState::Removed
            })
        );
        // A new one (a StatefulSet pod scaled down, its volume deleted,
        // scaled up again) joins under the id, as a new member; the old
        // directory is then another incarnation.
        let back = gone.apply(&reg(5, 2)).unwrap();
        assert_eq!(back.members[&n(5)].state, MemberState::Joining);
        assert_eq!(back.members[&n(5)].incarnation, Some(Incarnation(2)));
        assert!(matches!(
            back.apply(&reg(5, 1)),
            Err(MetaError::OtherIncarnation { .. })
        ));
        // A dead member's id does not come back: its replicas are still
        // being re-created elsewhere.
        let dead = d
            .apply(&MetaChange::SetState {
                node: n(1),
                from: MemberState::Up,
                to: MemberState::Dead,
            })
            .unwrap();
        assert!(matches!(
            dead.apply(&reg(1, 99)),
            Err(MetaError::Gone {
                state: MemberState::Dead,
                ..
            })
        ));
        assert_eq!(doc().apply(&reg(0, 1)), Err(MetaError::ZeroId));
    }

    #[test]
    fn tokens_are_added_and_removed_without_locking_out_the_admins() {
        let token = |role, secret: &str| TokenRecord {
            name: "ci".into(),
            role,
            scope: Bytes::from_static(b"app/"),
            secret_hash: access::hash_secret(secret),
        };
        let add = |id: &str, record: TokenRecord| MetaChange::AddToken {
            id: id.into(),
            record,
        };
        let remove = |id: &str| MetaChange::RemoveToken { id: id.into() };
        // The first token is an admin token.
        assert_eq!(
            doc().apply(&add("r1", token(Role::Read, "a"))),
            Err(MetaError::FirstTokenNotAdmin)
        );
        let d = doc().apply(&add("a1", token(Role::Admin, "a"))).unwrap();
        assert_eq!(
            add("a1", token(Role::Admin, "a")).to_string(),
            "add token a1 (role admin, keys under \"app/\")"
        );
        // Again, the same: a retry. Another record under the id: refused.
        assert_eq!(d.apply(&add("a1", token(Role::Admin, "a"))), Ok(d.clone()));
        assert_eq!(
            d.apply(&add("a1", token(Role::Admin, "b"))),
            Err(MetaError::TokenExists("a1".into()))
        );
        assert!(matches!(
            d.apply(&add("A!", token(Role::Read, "b"))),
            Err(MetaError::BadToken(RecordError::Id(_)))
        ));
        let d = d.apply(&add("r1", token(Role::Read, "b"))).unwrap();
        // The last admin token goes only with every other token.
        assert_eq!(
            d.apply(&remove("a1")),
            Err(MetaError::LastAdminToken("a1".into()))
        );
        assert_eq!(
            d.apply(&remove("zz")),
            Err(MetaError::NoSuchToken("zz".into()))
        );
        let only_admin = d.apply(&remove("r1")).unwrap();
        assert!(only_admin.apply(&remove("a1")).unwrap().tokens.is_empty());
        // Tokens survive the encoding.
        let mut d = d;
        d.version = 9;
        assert_eq!(ClusterMetadata::decode(&d.encode(), 9), Ok(d.clone()));
        // A document with a bad token is refused whole.
        let mut pb_doc = pb::ClusterMetadata::decode(&d.encode()[..]).unwrap();
        pb_doc.tokens[0].secret_hash = Bytes::from_static(b"short");
        assert!(matches!(
            ClusterMetadata::decode(&pb_doc.encode_to_vec(), 9),
            Err(DecodeError::Token(..))
        ));
        pb_doc.tokens[0] = pb_doc.tokens[1].clone();
        assert_eq!(
            ClusterMetadata::decode(&pb_doc.encode_to_vec(), 9),
            Err(DecodeError::DuplicateToken("r1".into()))
        );
        pb_doc.tokens[0].role = 0;
        assert!(matches!(
            ClusterMetadata::decode(&pb_doc.encode_to_vec(), 9),
            Err(DecodeError::Token(..))
        ));
    }

    #[test]
    fn the_metadata_group_starts_on_an_odd_number_of_the_lowest_ids() {
        let set = |ids: &[u64]| ids.iter().copied().map(NodeId).collect::<BTreeSet<_>>();
        let ids = |v: Vec<NodeId>| v.into_iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(ids(metadata_voters(&set(&[1]))), [1]);
        assert_eq!(ids(metadata_voters(&set(&[4, 2]))), [2]);
        assert_eq!(ids(metadata_voters(&set(&[3, 1, 2]))), [1, 2, 3]);
        assert_eq!(ids(metadata_voters(&set(&[1, 2, 3, 4]))), [1, 2, 3]);
        assert_eq!(
            ids(metadata_voters(&set(&[9, 1, 2, 3, 4, 5, 6]))),
            [1, 2, 3, 4, 5]
        );
    }
}
