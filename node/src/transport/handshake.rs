//! The peer handshake, as the transport carries it: this node's identity
//! and cluster record, the hello attached to every outgoing peer call, the
//! admission check on every incoming one, formation of the cluster on first
//! start, and the refusals seen (for the log, `status` and metrics). The
//! rules themselves are the core's ([`ringkv_core::identity`]).
//!
//! Every call of `ringkv.v1.Peer` (the `Batches` streams and `Forward`)
//! carries the caller's `PeerHello`, protobuf-encoded, in the binary
//! metadata entry [`HELLO_METADATA`]. The callee applies
//! [`identity::admit`] before it reads a single frame; a refused call ends
//! with `FAILED_PRECONDITION` and the message `refused by <node>
//! [<reason>]: <why and what to do>`, so the caller logs the callee's words.
//! Both sides log the refusal at warn level (once per peer and reason, then
//! again every [`FAILURE_LOG_INTERVAL`]) and count it.
//!
//! A node whose data directory has no cluster record yet forms one first
//! ([`Handshake::form`]): it asks every peer `Hello` until
//! [`identity::formation_step`] says to form (the founder), to adopt a
//! peer's record, or keeps refusing; the record is made durable before the
//! node takes or sends any Raft traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use ringkv_core::identity::wire::{
    decode_hello, encode_hello, hello_from_proto, hello_to_proto, identity_from_proto,
    identity_to_proto, record_from_proto, record_to_proto,
};
use ringkv_core::identity::{
    self, ClusterRecord, ClusterUid, Formation, Hello, Identity, PeerState, Refusal,
};
use ringkv_core::{NodeId, Time};
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::peer_client::PeerClient;
use tokio::sync::Notify;
use tonic::metadata::{Binary, MetadataValue};
use tonic::{Request, Status};

use super::{FAILURE_LOG_INTERVAL, endpoint};
use crate::address::PeerAddr;
use crate::clock::Clock;
use crate::disk::Disk;

/// The metadata entry that carries a call's `PeerHello`.
pub const HELLO_METADATA: &str = "ringkv-hello-bin";

/// Refusals older than this are left out of `status`.
pub const REFUSAL_SHOWN_FOR: Duration = Duration::from_secs(60);

/// How long one `Hello` may take (formation's, and each stream task's).
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
const FORMATION_RETRY_MIN: Duration = Duration::from_millis(25);
const FORMATION_RETRY_MAX: Duration = Duration::from_millis(250);

/// Which side refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// This node refused the peer.
    Incoming,
    /// The peer refused this node (or, while forming, this node refuses to
    /// join because of what the peer said).
    Outgoing,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }
}

/// The refusals of one peer in one direction.
#[derive(Clone, Debug)]
pub struct RefusalRecord {
    pub peer: NodeId,
    pub direction: Direction,
    /// [`Refusal::kind`].
    pub reason: String,
    pub message: String,
    pub count: u64,
    pub last: Time,
    /// When it was last logged at warn level, and with which reason.
    logged: Option<(String, Time)>,
}

/// This node's side of the handshake; shared by the peer service, the
/// stream tasks, the forwarder, formation and the status APIs.
pub struct Handshake {
    dialer: super::Dialer,
    me: Identity,
    members: BTreeSet<NodeId>,
    record: Mutex<Option<Arc<ClusterRecord>>>,
    /// Woken once, when the node joins a cluster. A `Notify` wakes its
    /// waiters in the order they came, which replays under madsim; a
    /// `watch` channel wakes them in an order drawn from tokio's own RNG.
    joined: Notify,
    /// What formation waits for, or why it is refused; empty once formed.
    formation: Mutex<String>,
    /// Once formed, the hello to each peer never changes: encoded once, per
    /// target, and attached to every call by a cheap clone (`Forward` is on
    /// the request path).
    hellos: Mutex<BTreeMap<NodeId, MetadataValue<Binary>>>,
    /// Hellos (as they arrive, encoded) already admitted, and whose they
    /// are. Once formed, admission depends only on those bytes, so a known
    /// one is admitted without decoding it again. At most two per member
    /// (with and without the target's incarnation).
    admitted: Mutex<Vec<(Vec<u8>, NodeId)>>,
    refusals: Mutex<BTreeMap<(NodeId, Direction), RefusalRecord>>,
    /// Members the member list says were removed: refused whatever their
    /// hello says (checked before the admitted-hello cache).
    removed: Mutex<BTreeSet<NodeId>>,
    /// Whether `removed` is not empty: every incoming frame asks, and
    /// almost always nobody was removed, so that answer takes no lock.
    any_removed: AtomicBool,
    clock: Arc<dyn Clock>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value here stays consistent if a holder panics.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Handshake {
    /// `members`: every configured node, this one included; `record`: the
    /// cluster record on disk, if the directory has joined a cluster.
    pub fn new(
        me: Identity,
        members: BTreeSet<NodeId>,
        record: Option<ClusterRecord>,
        clock: Arc<dyn Clock>,
        dialer: super::Dialer,
    ) -> Self {
        let formation = if record.is_some() {
            String::new()
        } else {
            "not started".to_owned()
        };
        Handshake {
            dialer,
            me,
            members,
            record: Mutex::new(record.map(Arc::new)),
            joined: Notify::new(),
            formation: Mutex::new(formation),
            hellos: Mutex::new(BTreeMap::new()),
            admitted: Mutex::new(Vec::new()),
            refusals: Mutex::new(BTreeMap::new()),
            removed: Mutex::new(BTreeSet::new()),
            any_removed: AtomicBool::new(false),
            clock,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// How this node dials its peers (plain or TLS).
    pub fn dialer(&self) -> &super::Dialer {
        &self.dialer
    }

    /// The cluster this node is in; `None` while it forms.
    pub fn record(&self) -> Option<Arc<ClusterRecord>> {
        lock(&self.record).clone()
    }

    /// Completes once this node is in a cluster.
    pub async fn formed(&self) {
        loop {
            let notified = self.joined.notified();
            tokio::pin!(notified);
            // Registered before the check, so a join in between wakes it.
            notified.as_mut().enable();
            if self.record().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// While forming: what formation waits for, or why it is refused.
    pub fn formation_status(&self) -> String {
        lock(&self.formation).clone()
    }

    /// The hello this node sends to `to`.
    pub fn hello_to(&self, to: NodeId) -> Hello {
        let record = self.record();
        Hello {
            from: self.me.clone(),
            cluster: record.as_ref().map(|r| r.uid),
            to,
            to_incarnation: record.and_then(|r| r.members.get(&to).copied()),
        }
    }

    /// Puts this node's hello to `to` on an outgoing call.
    pub fn attach<T>(&self, request: &mut Request<T>, to: NodeId) {
        // (The lookup's guard must drop before the insert below locks again.)
        let cached = lock(&self.hellos).get(&to).cloned();
        let value = match cached {
            Some(v) => v,
            None => {
                let hello = self.hello_to(to);
                let value = MetadataValue::from_bytes(&encode_hello(&hello));
                // Only a formed node's hello is final (see `hellos`).
                if hello.cluster.is_some() {
                    lock(&self.hellos).insert(to, value.clone());
                }
                value
            }
        };
        request.metadata_mut().insert_bin(HELLO_METADATA, value);
    }

    /// The admission check of an incoming `Batches` or `Forward` call:
    /// returns the admitted peer, or the status that refuses the call.
    pub fn admit_call<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        let value = request.metadata().get_bin(HELLO_METADATA);
        let peer = self.admit_hello(value)?;
        self.refuse_removed(peer)?;
        Ok(peer)
    }

    /// With TLS on, a peer call must come over a connection that presented
    /// a certificate of the peers' authority (`--peer-ca`); clients of the
    /// same port may present none, so this is checked per call. Then the
    /// hello is checked as without TLS ([`Handshake::admit_call`]).
    pub fn check_peer_certificate<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if !self.dialer().is_tls() {
            return Ok(());
        }
        #[cfg(not(madsim))]
        if request
            .extensions()
            .get::<crate::tls::ConnInfo>()
            .is_some_and(|c| c.peer)
        {
            return Ok(());
        }
        let _ = request;
        Err(Status::unauthenticated(
            "peer calls need a client certificate from the cluster's peer authority (--peer-ca)",
        ))
    }

    /// A member's call to a client service (a watch relay, the dashboard
    /// asking for status): its certificate (with TLS) and its hello, as
    /// on the peer service. Returns the member.
    pub fn admit_member_call<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        self.check_peer_certificate(request)?;
        self.admit_call(request)
    }

    /// Whether a call says it is from a member (it carries a hello).
    pub fn claims_member<T>(request: &Request<T>) -> bool {
        request.metadata().get_bin(HELLO_METADATA).is_some()
    }

    /// The refusal of `peer`'s calls if the member list removed it.
    pub fn refuse_removed(&self, peer: NodeId) -> Result<(), Status> {
        if !self.any_removed.load(Ordering::Relaxed) || !lock(&self.removed).contains(&peer) {
            return Ok(());
        }
        let refusal = Refusal::Removed { peer };
        self.note(peer, Direction::Incoming, &refusal);
        Err(Status::failed_precondition(format!(
            "refused by {} [{}]: {refusal}",
            self.me.node,
            refusal.kind()
        )))
    }

    /// Members the member list removed: their calls are refused from now on.
    pub fn set_removed(&self, removed: BTreeSet<NodeId>) {
        let any = !removed.is_empty();
        *lock(&self.removed) = removed;
        self.any_removed.store(any, Ordering::Relaxed);
    }

    fn admit_hello(&self, value: Option<&MetadataValue<Binary>>) -> Result<NodeId, Status> {
        if let Some(v) = value {
            let encoded = v.as_encoded_bytes();
            let known = lock(&self.admitted)
                .iter()
                .find(|(bytes, _)| bytes.as_slice() == encoded)
                .map(|&(_, peer)| peer);
            if let Some(peer) = known {
                return Ok(peer);
            }
        }
        let hello = value
            .ok_or_else(|| "no hello".to_owned())
            .and_then(|v| v.to_bytes().map_err(|e| e.to_string()))
            .and_then(|b| decode_hello(&b).map_err(|e| e.to_string()));
        let hello = match hello {
            Ok(h) => h,
            Err(why) => {
                tracing::warn!("refused a peer call without a valid {HELLO_METADATA}: {why}");
                return Err(Status::invalid_argument(format!(
                    "refused by {}: a peer call needs a valid {HELLO_METADATA} entry ({why})",
                    self.me.node
                )));
            }
        };
        let peer = hello.from.node;
        match identity::admit(&self.me, self.record().as_deref(), &hello) {
            Ok(()) => {
                // Admitted means formed, so the bytes will be again.
                let mut admitted = lock(&self.admitted);
                let members = self.record().map_or(0, |r| r.members.len());
                if admitted.len() < 2 * members.max(self.members.len())
                    && let Some(v) = value
                {
                    admitted.push((v.as_encoded_bytes().to_vec(), peer));
                }
                Ok(peer)
            }
            Err(refusal) => {
                self.note(peer, Direction::Incoming, &refusal);
                Err(Status::failed_precondition(format!(
                    "refused by {} [{}]: {refusal}",
                    self.me.node,
                    refusal.kind()
                )))
            }
        }
    }

    /// Notes that `peer` refused a call of this node (`status` from
    /// [`Handshake::admit_call`] on its side), unless the refusal ends by
    /// itself (one side still forming). Not logged here: the caller logs the
    /// failed call (see [`PeerRefused::is_transient`]).
    pub fn note_refused_by(&self, peer: NodeId, status: &Status) -> Option<PeerRefused> {
        if status.code() != tonic::Code::FailedPrecondition {
            return None;
        }
        let reason = refusal_reason(status.message())?;
        let refused = PeerRefused {
            transient: Refusal::kind_is_transient(reason),
        };
        if !refused.transient {
            self.record_refusal(peer, Direction::Outgoing, reason, status.message());
        }
        Some(refused)
    }

    /// Asks `peer` (over an open channel) whether it is still forming: a
    /// stream opened now would be refused, and the frames written into it
    /// (the first votes of a new cluster) lost. The stream tasks ask before
    /// every stream they open.
    ///
    /// Bounded by [`HELLO_TIMEOUT`], as formation's `Hello` is: a partition
    /// stalls a call rather than failing it, and its answer can then arrive
    /// only long after the heal (madsim retries a stalled message with a
    /// backoff of up to 10 s; TCP's retransmission backoff is longer), while
    /// the stream task waiting on it sends the peer nothing (madsim seed
    /// 3211: a node's answers to its leader stayed queued for 26 s, 5.7 s
    /// past the heal). A timeout is a failure like any other: re-dial.
    pub async fn peer_is_forming(
        &self,
        client: &mut PeerClient<tonic::transport::Channel>,
        peer: NodeId,
    ) -> Result<bool, String> {
        let reply = tokio::time::timeout(HELLO_TIMEOUT, self.hello(client, peer))
            .await
            .map_err(|_| format!("hello timed out after {HELLO_TIMEOUT:?}"))??;
        Ok(reply.cluster.is_none())
    }

    /// One `Hello` call to `peer`.
    async fn hello(
        &self,
        client: &mut PeerClient<tonic::transport::Channel>,
        peer: NodeId,
    ) -> Result<pb::PeerHelloReply, String> {
        let hello = hello_to_proto(&self.hello_to(peer));
        client
            .hello(Request::new(hello))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("hello failed: {}", s.message()))
    }

    /// Answers a peer's `Hello`: this node's identity and record. A peer
    /// this node would refuse is still answered (so it can tell why), and
    /// the refusal is noted here too.
    pub fn answer_hello(&self, hello: &pb::PeerHello) -> Result<pb::PeerHelloReply, Status> {
        let hello = hello_from_proto(hello)
            .map_err(|why| Status::invalid_argument(format!("malformed hello: {why}")))?;
        let record = self.record();
        if record.is_some()
            && let Err(refusal) = identity::admit(&self.me, record.as_deref(), &hello)
            && !refusal.is_transient()
        {
            self.note(hello.from.node, Direction::Incoming, &refusal);
        }
        Ok(pb::PeerHelloReply {
            identity: Some(identity_to_proto(&self.me)),
            cluster: record.as_deref().map(record_to_proto),
        })
    }

    fn note(&self, peer: NodeId, direction: Direction, refusal: &Refusal) {
        if refusal.is_transient() {
            tracing::debug!(peer = %peer, "peer call refused: {refusal}");
            return;
        }
        let message = refusal.to_string();
        if self.record_refusal(peer, direction, refusal.kind(), &message) {
            match direction {
                Direction::Incoming => {
                    tracing::warn!(peer = %peer, reason = refusal.kind(), "refused {peer}: {message}")
                }
                Direction::Outgoing => {
                    tracing::warn!(peer = %peer, reason = refusal.kind(), "cannot join: {message}")
                }
            }
        }
    }

    /// Counts a refusal; returns whether it is due to be logged at warn
    /// level (first of its reason for this peer, or the last log is old).
    fn record_refusal(
        &self,
        peer: NodeId,
        direction: Direction,
        reason: &str,
        message: &str,
    ) -> bool {
        let now = self.clock.now();
        let mut refusals = lock(&self.refusals);
        let r = refusals
            .entry((peer, direction))
            .or_insert_with(|| RefusalRecord {
                peer,
                direction,
                reason: String::new(),
                message: String::new(),
                count: 0,
                last: now,
                logged: None,
            });
        r.reason = reason.to_owned();
        r.message = message.to_owned();
        r.count += 1;
        r.last = now;
        let due = r.logged.as_ref().is_none_or(|(why, at)| {
            why != reason || now.saturating_since(*at) >= FAILURE_LOG_INTERVAL
        });
        if due {
            r.logged = Some((reason.to_owned(), now));
        }
        due
    }

    /// Refusals within [`REFUSAL_SHOWN_FOR`], with their age.
    pub fn recent_refusals(&self) -> Vec<(RefusalRecord, Duration)> {
        let now = self.clock.now();
        lock(&self.refusals)
            .values()
            .map(|r| (r.clone(), now.saturating_since(r.last)))
            .filter(|(_, age)| *age <= REFUSAL_SHOWN_FOR)
            .collect()
    }

    /// Every refusal so far, for metrics: (peer, direction, reason, count).
    pub fn refusal_counts(&self) -> Vec<(NodeId, Direction, String, u64)> {
        lock(&self.refusals)
            .values()
            .map(|r| (r.peer, r.direction, r.reason.clone(), r.count))
            .collect()
    }

    /// Forms or joins the cluster if this node has no record yet; returns
    /// once it has one, durable in `dir`. Retries for as long as it takes
    /// (peers may be starting, or an operator must fix one); `seed` draws
    /// the cluster uid if this node founds the cluster.
    pub async fn form(
        &self,
        peers: &BTreeMap<NodeId, PeerAddr>,
        disk: Arc<dyn Disk>,
        dir: PathBuf,
        seed: u64,
    ) -> anyhow::Result<()> {
        if self.record().is_some() {
            return Ok(());
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xc1a5_7e12_f0a1_5eed);
        let mut retry = FORMATION_RETRY_MIN;
        let mut last_status = String::new();
        loop {
            let answers = self.ask_peers(peers).await;
            let step = identity::formation_step(&self.me, &self.members, &answers);
            // What to show in status, and whether to log it at info level
            // (a refusal was logged at warn level, rate-limited, already).
            let (status, log) = match step {
                Formation::Form { members } => {
                    let record = ClusterRecord {
                        uid: ClusterUid(rng.random()),
                        members,
                    };
                    self.persist(&record, &disk, &dir).await?;
                    tracing::info!(cluster = %record.uid, members = record.members.len(), "formed a new cluster");
                    self.join(record);
                    return Ok(());
                }
                Formation::Adopt(record) => {
                    self.persist(&record, &disk, &dir).await?;
                    tracing::info!(cluster = %record.uid, "joined the cluster");
                    self.join(record);
                    return Ok(());
                }
                Formation::Wait { waiting_for } => {
                    let ids: Vec<String> = waiting_for.iter().map(ToString::to_string).collect();
                    let founder = identity::founder(&self.members);
                    let status = if founder == Some(self.me.node) {
                        format!(
                            "forming the cluster: waiting for {} to answer (the first start \
                             needs every member up)",
                            ids.join(", ")
                        )
                    } else {
                        format!(
                            "waiting for the founder {} to form the cluster",
                            ids.join(", ")
                        )
                    };
                    (status, true)
                }
                Formation::Refused(refusal) => {
                    let peer = refusal.peer().unwrap_or(self.me.node);
                    self.note(peer, Direction::Outgoing, &refusal);
                    (format!("refused: {refusal}"), false)
                }
            };
            if status != last_status {
                if log {
                    tracing::info!("{status}");
                }
                last_status.clone_from(&status);
            }
            *lock(&self.formation) = status;
            self.clock.sleep(retry).await;
            retry = (retry * 2).min(FORMATION_RETRY_MAX);
        }
    }

    /// The record grew (members joined, `crate::members`), or this node
    /// joined a formed cluster (`Peer.Join`): admit by the new one.
    pub fn set_record(&self, record: ClusterRecord) {
        if self.record().is_none() {
            self.join(record);
        } else {
            *lock(&self.record) = Some(Arc::new(record));
            // A hello names the incarnation it means to reach: a member
            // that came back with a new data directory (a removed id
            // joining again) must be greeted as the new one, and its old
            // directory's hello no longer admitted.
            lock(&self.hellos).clear();
            lock(&self.admitted).clear();
        }
    }

    fn join(&self, record: ClusterRecord) {
        lock(&self.formation).clear();
        *lock(&self.record) = Some(Arc::new(record));
        self.joined.notify_waiters();
    }

    async fn persist(
        &self,
        record: &ClusterRecord,
        disk: &Arc<dyn Disk>,
        dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        let (record, disk, dir) = (record.clone(), disk.clone(), dir.to_path_buf());
        crate::disk::run_blocking(move || {
            crate::storage::save_cluster_record(
                disk.as_ref(),
                &dir,
                &crate::storage::ClusterFile::founded(record),
            )
        })
        .await
        .map_err(|e| anyhow::anyhow!("cluster record task failed: {e}"))?
        .map_err(|e| anyhow::anyhow!("cannot record the cluster: {e}"))
    }

    /// Asks every peer `Hello`, one after another (the first start of a
    /// small cluster; no hurry); those that do not answer are left out.
    async fn ask_peers(&self, peers: &BTreeMap<NodeId, PeerAddr>) -> BTreeMap<NodeId, PeerState> {
        let mut answers = BTreeMap::new();
        for (&peer, addr) in peers {
            if peer == self.me.node {
                continue;
            }
            match self.ask(peer, addr).await {
                Ok(state) => {
                    answers.insert(peer, state);
                }
                Err(why) => tracing::debug!(peer = %peer, "no hello from {peer}: {why}"),
            }
        }
        answers
    }

    async fn ask(&self, peer: NodeId, addr: &PeerAddr) -> Result<PeerState, String> {
        let call = async {
            let channel = self
                .dialer
                .connect(endpoint(addr), addr)
                .await
                .map_err(|e| crate::error_chain(&e))?;
            self.hello(&mut PeerClient::new(channel), peer).await
        };
        let reply = tokio::time::timeout(HELLO_TIMEOUT, call)
            .await
            .map_err(|_| "timed out".to_owned())??;
        let identity = reply
            .identity
            .as_ref()
            .ok_or_else(|| "reply without an identity".to_owned())
            .and_then(|i| identity_from_proto(i).map_err(|e| e.to_string()))?;
        let record = reply
            .cluster
            .as_ref()
            .map(record_from_proto)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(PeerState { identity, record })
    }
}

/// A peer refused a call of this node (see [`Handshake::note_refused_by`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRefused {
    transient: bool,
}

impl PeerRefused {
    /// One side is still forming (the founder's streams can reach a peer
    /// before it has adopted the record): not worth a warning.
    pub fn is_transient(self) -> bool {
        self.transient
    }
}

/// The reason label in a refusal's status message (`refused by n2
/// [peer_replaced]: ...`).
fn refusal_reason(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("refused by ")?;
    let open = rest.find('[')?;
    let close = rest[open..].find(']')? + open;
    Some(&rest[open + 1..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_reason_is_read_back_from_the_status_message() {
        assert_eq!(
            refusal_reason("refused by n2 [peer_replaced]: n3's data directory was replaced"),
            Some("peer_replaced")
        );
        assert_eq!(refusal_reason("stream failed: connection reset"), None);
        assert_eq!(refusal_reason("refused by n2 no bracket"), None);
    }
}
