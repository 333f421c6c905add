//! `Peer.Join`: how a node with an empty data directory becomes a member of
//! a formed cluster (`ringkv server --join HOST:PORT[,...]`), both sides.
//!
//! **The joiner** ([`join_cluster`]) asks any member it was given. A member
//! that checks the joiner's settings (cluster name, partition count,
//! replication factor, on-disk format: [`identity::check_settings`]) hands
//! the request to its core, which registers the node only if it runs the
//! placement controller (`Node::handle_register`); otherwise the answer
//! names the controller and its address, and the joiner asks it. The
//! controller's first answer is "pending" (the registration is being
//! committed to the metadata group); the joiner asks again until the
//! answer is the cluster: its record (every member's incarnation, its own
//! included) and every member's address. It then records the cluster in
//! its data directory (`cluster.toml`, marked as joined) before it sends a
//! single Raft message, exactly as a founder does after formation.
//!
//! **Members** admit the joiner's peer calls once their cluster record has
//! its incarnation, which they take from the member list when the document
//! that registers it reaches them (`crate::members`); until then its calls
//! are refused as `not_a_member`, for about a heartbeat interval.
//!
//! A refusal (other settings, an id in use by another data directory, a
//! removed id) ends the joiner with the member's words: an operator must
//! act. Anything else (no member reachable, no controller yet, a change
//! being committed) is retried for as long as it takes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::identity::wire::{identity_from_proto, identity_to_proto, record_from_proto};
use ringkv_core::identity::{self, ClusterRecord, Identity};
use ringkv_core::metadata::ClusterMetadata;
use ringkv_core::node::{RegisterError, Registration};
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::peer_client::PeerClient;
use tonic::{Request, Status};

use super::{Handshake, endpoint};
use crate::address::PeerAddr;
use crate::clock::Clock;
use crate::handle::NodeHandle;

/// How long one `Join` call may take.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Between asks while the registration commits.
const PENDING_RETRY: Duration = Duration::from_millis(200);
const UNREACHABLE_RETRY_MIN: Duration = Duration::from_millis(250);
const UNREACHABLE_RETRY_MAX: Duration = Duration::from_secs(2);
/// Redirects followed in a row before starting over from the given list
/// (two controllers that each name the other, during an election).
const MAX_REDIRECTS: usize = 3;

/// The cluster a node joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub record: ClusterRecord,
    /// Every member's gRPC address, as the member list gave it.
    pub addresses: BTreeMap<NodeId, String>,
    /// The client access tokens of the document the member sent.
    pub tokens: crate::auth::Tokens,
}

/// Asks the members at `targets` (`host:port`, any of them) until this node
/// is a member; `address` is the gRPC address the others will dial.
/// Returns the cluster, or the refusal an operator must act on.
pub async fn join_cluster(
    me: &Identity,
    address: &str,
    targets: &[String],
    clock: Arc<dyn Clock>,
    dialer: &super::Dialer,
) -> anyhow::Result<Joined> {
    anyhow::ensure!(
        !targets.is_empty(),
        "--join needs at least one member address"
    );
    let request = pb::JoinRequest {
        identity: Some(identity_to_proto(me)),
        address: address.to_owned(),
    };
    let mut backoff = UNREACHABLE_RETRY_MIN;
    let mut last_logged = String::new();
    // The given members in turn, the first one first.
    let mut next = targets.len() - 1;
    let mut redirect: Option<(String, usize)> = None;
    loop {
        let (target, hops) = match redirect.take() {
            Some((to, hops)) if hops <= MAX_REDIRECTS => (to, hops),
            _ => {
                next = (next + 1) % targets.len();
                (targets[next].clone(), 0)
            }
        };
        let outcome = ask(&target, request.clone(), dialer).await;
        let wait = match outcome {
            Ok(pb::join_reply::Outcome::Joined(joined)) => {
                return joined_cluster(me, &target, joined);
            }
            Ok(pb::join_reply::Outcome::Redirect(r)) => {
                tracing::info!(%target, controller = r.controller, address = %r.address, "joining: asking the controller");
                redirect = Some((r.address, hops + 1));
                backoff = UNREACHABLE_RETRY_MIN;
                Duration::ZERO
            }
            Ok(pb::join_reply::Outcome::Pending(why)) => {
                tracing::debug!(%target, "joining: {why}");
                // Keep asking the node that answered.
                redirect = Some((target.clone(), hops));
                PENDING_RETRY
            }
            Err(JoinFailure::Refused(why)) => anyhow::bail!("cannot join through {target}: {why}"),
            Err(JoinFailure::Retry(why)) => {
                let line = format!("joining through {target}: {why}; retrying");
                if line != last_logged {
                    tracing::warn!("{line}");
                    last_logged = line;
                }
                let wait = backoff;
                backoff = (backoff * 2).min(UNREACHABLE_RETRY_MAX);
                wait
            }
        };
        if !wait.is_zero() {
            clock.sleep(wait).await;
        }
    }
}

enum JoinFailure {
    /// The member refused: settings differ, or the member list does not
    /// admit this node.
    Refused(String),
    /// Unreachable, no controller yet, a malformed answer: ask again.
    Retry(String),
}

async fn ask(
    target: &str,
    request: pb::JoinRequest,
    dialer: &super::Dialer,
) -> Result<pb::join_reply::Outcome, JoinFailure> {
    let addr = PeerAddr::parse(target).map_err(|e| JoinFailure::Retry(e.to_string()))?;
    let call = async {
        let channel = dialer
            .connect(endpoint(&addr), &addr)
            .await
            .map_err(|e| JoinFailure::Retry(crate::error_chain(&e)))?;
        PeerClient::new(channel)
            .join(Request::new(request))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| match s.code() {
                tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
                    JoinFailure::Refused(s.message().to_owned())
                }
                _ => JoinFailure::Retry(s.message().to_owned()),
            })
    };
    let reply = tokio::time::timeout(JOIN_CALL_TIMEOUT, call)
        .await
        .map_err(|_| JoinFailure::Retry("timed out".to_owned()))??;
    reply
        .outcome
        .ok_or_else(|| JoinFailure::Retry("an answer without an outcome".to_owned()))
}

/// Checks the cluster a member sent: a record that lists this node with its
/// own incarnation, and an address for every member.
fn joined_cluster(
    me: &Identity,
    target: &str,
    joined: pb::JoinedCluster,
) -> anyhow::Result<Joined> {
    let record = joined
        .cluster
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{target} answered a join without the cluster record"))
        .and_then(|r| record_from_proto(r).map_err(|e| anyhow::anyhow!("{target}: {e}")))?;
    anyhow::ensure!(
        record.members.get(&me.node) == Some(&me.incarnation),
        "{target} answered a join with a record that does not list this node's incarnation"
    );
    let addresses = joined
        .members
        .into_iter()
        .map(|m| (NodeId(m.node), m.address))
        .collect();
    let doc = ClusterMetadata::decode(&joined.document, joined.document_version)
        .map_err(|e| anyhow::anyhow!("{target} answered a join with a bad document: {e}"))?;
    let tokens = crate::auth::Tokens {
        version: doc.version,
        by_id: doc.tokens,
    };
    tracing::info!(cluster = %record.uid, members = record.members.len(), through = %target, "joined the cluster");
    Ok(Joined {
        record,
        addresses,
        tokens,
    })
}

/// A member's side of `Peer.Join`.
pub async fn answer_join(
    handshake: &Handshake,
    node: &NodeHandle,
    request: pb::JoinRequest,
) -> Result<pb::JoinReply, Status> {
    let me = handshake.identity().node;
    let joiner = request
        .identity
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("a join without the joiner's identity"))
        .and_then(|i| {
            identity_from_proto(i).map_err(|e| Status::invalid_argument(format!("{e}")))
        })?;
    if let Err(refusal) = identity::check_settings(handshake.identity(), &joiner) {
        return Err(Status::failed_precondition(format!(
            "refused by {me} [{}]: {refusal}",
            refusal.kind()
        )));
    }
    if let Err(why) = PeerAddr::parse(&request.address) {
        return Err(Status::invalid_argument(format!(
            "refused by {me} [bad_address]: {why}"
        )));
    }
    let Some(record) = handshake.record() else {
        return Err(Status::unavailable(format!(
            "{me} is not in a cluster yet (it is still forming)"
        )));
    };
    let answer = node
        .register(joiner.node, request.address, joiner.incarnation)
        .await;
    let outcome = match answer.result {
        Ok(Registration::Member(doc)) => {
            let mut record = (*record).clone();
            for (&id, m) in &doc.members {
                if let Some(inc) = m.incarnation {
                    record.members.insert(id, inc);
                }
            }
            pb::join_reply::Outcome::Joined(pb::JoinedCluster {
                cluster: Some(identity::wire::record_to_proto(&record)),
                members: doc
                    .members
                    .iter()
                    .map(|(&id, m)| pb::JoinedMember {
                        node: id.0,
                        address: m.address.clone(),
                    })
                    .collect(),
                document: doc.encode(),
                document_version: doc.version,
            })
        }
        Ok(Registration::Proposed) => pb::join_reply::Outcome::Pending(format!(
            "{me} is registering {} as a member",
            joiner.node
        )),
        Err(RegisterError::Busy) => {
            pb::join_reply::Outcome::Pending(RegisterError::Busy.to_string())
        }
        Err(RegisterError::NotController {
            controller: Some(c),
            ..
        }) if answer.controller_address.is_some() => {
            pb::join_reply::Outcome::Redirect(pb::JoinRedirect {
                controller: c.0,
                address: answer.controller_address.unwrap_or_default(),
            })
        }
        Err(e @ RegisterError::NotController { .. }) => {
            return Err(Status::unavailable(e.to_string()));
        }
        Err(RegisterError::Refused(e)) => {
            return Err(Status::failed_precondition(format!(
                "refused by {me} [join_refused]: {e}"
            )));
        }
    };
    Ok(pb::JoinReply {
        outcome: Some(outcome),
    })
}
