//! The web dashboard's data: the whole cluster as one view, gathered by the
//! node a browser talks to, and the page itself (`/ui`, compiled into the
//! binary from `node/ui/`).
//!
//! A node knows the leaders and progress only of the partitions it
//! replicates, and the moves only where it is the placement controller.
//! So the node serving the page asks every member for its status
//! (`Cluster.Status`, concurrently, each bounded by [`ASK_TIMEOUT`]) and
//! merges the answers ([`merge`]): a partition's leader, term, replicas and
//! followers' progress come from the answer of its replica with the newest
//! term; each replica's applied index from that replica itself; members
//! and their states from the answer with the newest metadata; moves from
//! the controller. A member that does not answer is shown as such, and the
//! partitions no answering member replicates are marked unknown rather
//! than guessed.
//!
//! Gathering runs once a second while a browser follows the stream
//! (`GET /v1/dashboard/stream`, server-sent events: one `snapshot` per
//! gathering) or asked recently (`GET /v1/dashboard/cluster`), and not at
//! all otherwise. Successive views are compared to make the event feed
//! (elections, node status changes, moves started and finished), the last
//! [`EVENTS_KEPT`] of which travel with each view.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringkv_core::NodeId;
use ringkv_core::PartitionId;
use ringkv_core::ring::{Ring, RingConfig, slot_range};
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::cluster_client::ClusterClient;
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::grpc::status_response;
use crate::address::PeerAddr;
use crate::handle::NodeHandle;
use crate::requests::BUCKETS;
use crate::transport::Handshake;

/// How long a member has to answer one gathering.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(900);

/// Events kept, and sent with each view.
pub const EVENTS_KEPT: usize = 200;

/// How often the view is gathered while someone looks.
const GATHER_EVERY: Duration = Duration::from_secs(1);

/// A member not heard from for longer than this (by the node serving the
/// page) is shown as suspect before its failure detector calls it down.
const SUSPECT_AFTER_SECS: f64 = 1.5;

/// The whole cluster, as the dashboard draws it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterSnapshot {
    /// The node that gathered it.
    pub answered_by: u64,
    pub at_unix_ms: u64,
    pub partition_count: u32,
    pub replication_factor: u32,
    /// The placement controller (the metadata group's leader), if known.
    pub controller: Option<u64>,
    pub metadata_version: u64,
    pub nodes: Vec<NodeRow>,
    pub partitions: Vec<PartitionRow>,
    /// Replica moves under way (the controller's plan).
    pub moves: Vec<MoveRow>,
    /// Partitions the controller finds under-replicated.
    pub under_replicated: Vec<u32>,
    pub ring: RingRow,
    /// Upper bounds (seconds) of the latency buckets of `operations`.
    pub latency_buckets: Vec<f64>,
    /// The latest events, oldest first.
    pub events: Vec<EventRow>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeRow {
    pub id: u64,
    /// What to show: `up`, `suspect`, `down`, `joining`, `draining`,
    /// `dead`, `removed`.
    pub status: &'static str,
    /// Its state in the cluster metadata (empty: not known yet).
    pub state: String,
    /// Whether it answered this gathering.
    pub answered: bool,
    /// Since the gathering node last heard from it (none: itself, or never).
    pub last_heard_seconds_ago: Option<f64>,
    pub grpc_addr: String,
    pub rest_addr: String,
    pub resp_addr: String,
    pub partitions_held: usize,
    pub partitions_led: usize,
    pub keys: u64,
    pub wal_bytes: Option<u64>,
    pub snapshot_bytes: Option<u64>,
    /// Its clients' requests so far, per operation.
    pub operations: Vec<OperationRow>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OperationRow {
    pub name: String,
    pub ok: u64,
    pub refused: u64,
    pub unavailable: u64,
    pub unknown: u64,
    /// Requests at most each bucket's bound, cumulative; the last: all.
    pub cumulative: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PartitionRow {
    pub partition: u32,
    /// First and last slot.
    pub slots: [u16; 2],
    /// Whether a member that replicates it answered (else replicas are the
    /// ring's and nothing else is known).
    pub known: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub replicas: Vec<u64>,
    pub learners: Vec<u64>,
    /// The old voters while a joint configuration change is under way.
    pub outgoing: Vec<u64>,
    pub commit_index: u64,
    pub keys: u64,
    pub progress: Vec<ReplicaRow>,
    pub under_replicated: bool,
    /// A move of one of its replicas is under way.
    pub moving: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReplicaRow {
    pub node: u64,
    /// As the replica itself reported (none: it did not answer).
    pub applied_index: Option<u64>,
    /// As the leader sees it (none on the leader itself).
    pub lag: Option<u64>,
    /// The leader's replication state for it: replicate, probe, snapshot.
    pub state: String,
    /// While a snapshot is sent to it: bytes acknowledged, total.
    pub snapshot: Option<[u64; 2]>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MoveRow {
    pub partition: u32,
    pub kind: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub reason: String,
    pub phase: String,
    pub snapshot_bytes_acked: u64,
    pub snapshot_bytes_total: u64,
    pub entries_behind: u64,
    pub eta_seconds: Option<f64>,
}

/// The ring of the members that hold data, and what a change would move.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RingRow {
    pub members: Vec<u64>,
    pub tokens_per_node: u32,
    /// `(position in [0, 1), node)`, in ring order.
    pub tokens: Vec<(f64, u64)>,
    /// A new node joining.
    pub join: Movement,
    /// Each member draining.
    pub drains: Vec<(u64, Movement)>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Movement {
    /// Partitions whose replica set changes.
    pub partitions: usize,
    /// Replicas to create (each a copy of a partition).
    pub replicas: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EventRow {
    pub seq: u64,
    pub at_unix_ms: u64,
    /// `election`, `node` or `move`.
    pub kind: &'static str,
    pub text: String,
}

/// What each member answered to one gathering (`None`: nothing in time).
pub type Answers = BTreeMap<NodeId, Option<pb::StatusResponse>>;

/// The one view of the cluster the answers make; see the module doc.
pub fn merge(me: NodeId, answers: &Answers, at_unix_ms: u64) -> ClusterSnapshot {
    let mine = answers
        .get(&me)
        .and_then(Option::as_ref)
        .expect("the gathering node's own answer");
    let newest_metadata = answers
        .values()
        .flatten()
        .max_by_key(|a| (a.metadata_version, a.node_id == me.0))
        .expect("one answer");
    let controller = answers.values().flatten().find(|a| a.controller);
    let partition_count = mine.partition_count;

    // Partitions: the newest term's answer speaks for each.
    let mut partitions = Vec::with_capacity(partition_count as usize);
    for p in 0..partition_count {
        let rows: Vec<(&pb::StatusResponse, &pb::PartitionStatus)> = answers
            .values()
            .flatten()
            .filter_map(|a| {
                a.partitions
                    .iter()
                    .find(|s| s.partition == p && s.term > 0)
                    .map(|s| (a, s))
            })
            .collect();
        let guess = mine.partitions.iter().find(|s| s.partition == p);
        let range = slot_range(PartitionId(p), partition_count);
        let slots = [range.start, range.end.saturating_sub(1)];
        let Some(&(_, best)) = rows
            .iter()
            .max_by_key(|(a, s)| (s.term, s.leader == a.node_id, s.commit_index))
        else {
            partitions.push(PartitionRow {
                partition: p,
                slots,
                known: false,
                leader: None,
                term: 0,
                replicas: guess.map(|g| g.replicas.clone()).unwrap_or_default(),
                learners: Vec::new(),
                outgoing: Vec::new(),
                commit_index: 0,
                keys: 0,
                progress: Vec::new(),
                under_replicated: false,
                moving: false,
            });
            continue;
        };
        let leader = (best.leader != 0).then_some(best.leader);
        // The leader's own answer knows its followers.
        let leader_row = rows
            .iter()
            .find(|(a, s)| Some(a.node_id) == leader && s.leader == a.node_id)
            .map(|(_, s)| *s);
        let mut members: Vec<u64> = best.replicas.clone();
        for l in &best.learners {
            if !members.contains(l) {
                members.push(*l);
            }
        }
        let progress = members
            .iter()
            .map(|&n| {
                let own = rows.iter().find(|(a, _)| a.node_id == n).map(|(_, s)| *s);
                let follower = leader_row.and_then(|l| l.followers.iter().find(|f| f.node == n));
                ReplicaRow {
                    node: n,
                    applied_index: own.map(|s| s.applied_index),
                    lag: follower.map(|f| f.lag),
                    state: follower.map(|f| f.state.clone()).unwrap_or_default(),
                    snapshot: follower
                        .filter(|f| f.snapshot_bytes_total > 0)
                        .map(|f| [f.snapshot_bytes_acked, f.snapshot_bytes_total]),
                }
            })
            .collect();
        partitions.push(PartitionRow {
            partition: p,
            slots,
            known: true,
            leader,
            term: best.term,
            replicas: best.replicas.clone(),
            learners: best.learners.clone(),
            outgoing: best.outgoing.clone(),
            commit_index: best.commit_index,
            keys: leader_row.unwrap_or(best).keys,
            progress,
            under_replicated: leader_row.is_some_and(|l| l.under_replicated)
                || controller.is_some_and(|c| c.under_replicated.contains(&p)),
            moving: controller.is_some_and(|c| c.moves.iter().any(|m| m.partition == p)),
        });
    }

    // Members, as the newest metadata has them.
    let nodes = newest_metadata
        .nodes
        .iter()
        .map(|n| {
            let answer = answers.get(&NodeId(n.id)).and_then(Option::as_ref);
            // Health and last contact as the gathering node sees them.
            let seen = mine.nodes.iter().find(|m| m.id == n.id);
            let last_heard = seen.and_then(|m| m.last_heard_seconds_ago);
            let status = match n.state.as_str() {
                "joining" => "joining",
                "draining" => "draining",
                "dead" => "dead",
                "removed" => "removed",
                _ if n.id == me.0 => "up",
                _ if seen.is_some_and(|m| m.health == "down") => "down",
                _ if answer.is_none() || last_heard.is_some_and(|s| s > SUSPECT_AFTER_SECS) => {
                    "suspect"
                }
                _ => "up",
            };
            let usage = answer.and_then(|a| a.usage.as_ref());
            NodeRow {
                id: n.id,
                status,
                state: n.state.clone(),
                answered: answer.is_some(),
                last_heard_seconds_ago: last_heard,
                grpc_addr: n.grpc_addr.clone(),
                rest_addr: n.rest_addr.clone(),
                resp_addr: n.resp_addr.clone(),
                partitions_held: partitions
                    .iter()
                    .filter(|p| p.replicas.contains(&n.id) || p.learners.contains(&n.id))
                    .count(),
                partitions_led: partitions.iter().filter(|p| p.leader == Some(n.id)).count(),
                keys: partitions
                    .iter()
                    .filter(|p| p.leader == Some(n.id))
                    .map(|p| p.keys)
                    .sum(),
                wal_bytes: usage.map(|u| u.wal_bytes),
                snapshot_bytes: usage.map(|u| u.snapshot_bytes),
                operations: usage
                    .map(|u| {
                        u.operations
                            .iter()
                            .map(|o| OperationRow {
                                name: o.name.clone(),
                                ok: o.ok,
                                refused: o.refused,
                                unavailable: o.unavailable,
                                unknown: o.unknown,
                                cumulative: o.cumulative.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect::<Vec<_>>();

    let ring_members: Vec<NodeId> = nodes
        .iter()
        .filter(|n| matches!(n.state.as_str(), "up" | "joining" | ""))
        .map(|n| NodeId(n.id))
        .collect();
    ClusterSnapshot {
        answered_by: me.0,
        at_unix_ms,
        partition_count,
        replication_factor: mine.replication_factor,
        controller: (newest_metadata.metadata_leader != 0)
            .then_some(newest_metadata.metadata_leader),
        metadata_version: newest_metadata.metadata_version,
        nodes,
        partitions,
        moves: controller
            .map(|c| c.moves.iter().map(move_row).collect())
            .unwrap_or_default(),
        under_replicated: controller
            .map(|c| c.under_replicated.clone())
            .unwrap_or_default(),
        ring: ring_row(mine, &ring_members),
        latency_buckets: BUCKETS.to_vec(),
        events: Vec::new(),
    }
}

fn move_row(m: &pb::MoveStatus) -> MoveRow {
    MoveRow {
        partition: m.partition,
        kind: m.kind.clone(),
        from: (m.from != 0).then_some(m.from),
        to: (m.to != 0).then_some(m.to),
        reason: m.reason.clone(),
        phase: m.phase.clone(),
        snapshot_bytes_acked: m.snapshot_bytes_acked,
        snapshot_bytes_total: m.snapshot_bytes_total,
        entries_behind: m.entries_behind,
        eta_seconds: m.eta_seconds,
    }
}

/// The ring of `members` with the cluster's settings, and what a join or
/// each drain would move on it.
fn ring_row(mine: &pb::StatusResponse, members: &[NodeId]) -> RingRow {
    let config = RingConfig {
        partition_count: mine.partition_count,
        replication_factor: mine.replication_factor as usize,
        ..RingConfig::default()
    };
    let Ok(ring) = Ring::new(config, members.iter().copied()) else {
        return RingRow {
            members: Vec::new(),
            tokens_per_node: config.tokens_per_node,
            tokens: Vec::new(),
            join: Movement {
                partitions: 0,
                replicas: 0,
            },
            drains: Vec::new(),
        };
    };
    let movement = |other: &Ring| {
        let d = ring.diff(other);
        Movement {
            partitions: d.partitions_changed,
            replicas: d.slots_added,
        }
    };
    let next_id = members.iter().map(|n| n.0).max().unwrap_or(0) + 1;
    RingRow {
        members: members.iter().map(|n| n.0).collect(),
        tokens_per_node: config.tokens_per_node,
        tokens: ring
            .tokens()
            .iter()
            .map(|&(t, n)| (t as f64 / 18_446_744_073_709_551_616.0, n.0))
            .collect(),
        join: movement(&ring.with_member(NodeId(next_id))),
        drains: members
            .iter()
            .map(|&n| (n.0, movement(&ring.without_member(n))))
            .collect(),
    }
}

/// What changed from `before` to `after`, as events.
pub fn changes(before: &ClusterSnapshot, after: &ClusterSnapshot) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for n in &after.nodes {
        match before.nodes.iter().find(|b| b.id == n.id) {
            None => out.push(("node", format!("node {} appeared ({})", n.id, n.status))),
            Some(b) if b.status != n.status => out.push((
                "node",
                format!("node {}: {} → {}", n.id, b.status, n.status),
            )),
            _ => {}
        }
    }
    for p in &after.partitions {
        let Some(b) = before
            .partitions
            .iter()
            .find(|b| b.partition == p.partition)
        else {
            continue;
        };
        if p.leader != b.leader && p.known {
            let text = match (b.leader, p.leader) {
                (_, None) => format!("partition {}: no leader (term {})", p.partition, p.term),
                (None, Some(l)) => {
                    format!(
                        "partition {}: node {l} leads (term {})",
                        p.partition, p.term
                    )
                }
                (Some(old), Some(l)) => format!(
                    "partition {}: node {l} leads (term {}), was node {old}",
                    p.partition, p.term
                ),
            };
            out.push(("election", text));
        }
    }
    let key = |m: &MoveRow| (m.partition, m.kind.clone(), m.from, m.to);
    let describe = |m: &MoveRow| {
        let from = m.from.map_or("-".to_owned(), |n| n.to_string());
        let to = m.to.map_or("-".to_owned(), |n| n.to_string());
        format!(
            "partition {} {}: node {from} → node {to} ({})",
            m.partition, m.kind, m.reason
        )
    };
    for m in &after.moves {
        if !before.moves.iter().any(|b| key(b) == key(m)) {
            out.push(("move", format!("move started: {}", describe(m))));
        }
    }
    for m in &before.moves {
        if !after.moves.iter().any(|a| key(a) == key(m)) {
            out.push(("move", format!("move ended: {}", describe(m))));
        }
    }
    out
}

/// The dashboard of one node: gathers the cluster's view while someone
/// looks, and keeps the event feed.
pub struct Dashboard {
    node: NodeHandle,
    handshake: Arc<Handshake>,
    addrs: Arc<BTreeMap<NodeId, PeerAddr>>,
    clients: Mutex<HashMap<String, ClusterClient<Channel>>>,
    latest: watch::Sender<Option<Arc<ClusterSnapshot>>>,
    state: Mutex<Feed>,
}

#[derive(Default)]
struct Feed {
    events: VecDeque<EventRow>,
    next_seq: u64,
    /// Someone asked for the view by plain GET until then: keep gathering.
    wanted_until: Option<tokio::time::Instant>,
    running: bool,
}

impl Dashboard {
    pub fn new(
        node: NodeHandle,
        handshake: Arc<Handshake>,
        addrs: Arc<BTreeMap<NodeId, PeerAddr>>,
    ) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            node,
            handshake,
            addrs,
            clients: Mutex::new(HashMap::new()),
            latest: watch::channel(None).0,
            state: Mutex::new(Feed::default()),
        })
    }

    /// Follows the views as they are gathered (starting the gathering).
    pub fn subscribe(self: &Arc<Self>) -> watch::Receiver<Option<Arc<ClusterSnapshot>>> {
        let rx = self.latest.subscribe();
        self.ensure_running();
        rx
    }

    /// The latest view, gathered now if there is none.
    pub async fn current(self: &Arc<Self>) -> Arc<ClusterSnapshot> {
        self.lock().wanted_until = Some(tokio::time::Instant::now() + Duration::from_secs(10));
        let mut rx = self.subscribe();
        loop {
            // A view left from before gathering last stopped is too old.
            let latest = rx.borrow_and_update().clone();
            if let Some(s) = latest
                && unix_ms().saturating_sub(s.at_unix_ms) <= 2 * GATHER_EVERY.as_millis() as u64
            {
                return s;
            }
            if rx.changed().await.is_err() {
                return Arc::new(self.gather().await);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Feed> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ensure_running(self: &Arc<Self>) {
        let mut feed = self.lock();
        if feed.running {
            return;
        }
        feed.running = true;
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(d) = me.upgrade() else { return };
                let wanted = d.latest.receiver_count() > 0
                    || d.lock()
                        .wanted_until
                        .is_some_and(|t| tokio::time::Instant::now() < t);
                if !wanted {
                    d.lock().running = false;
                    return;
                }
                let mut snapshot = d.gather().await;
                d.record_events(&mut snapshot);
                d.latest.send_replace(Some(Arc::new(snapshot)));
                drop(d);
                tokio::time::sleep(GATHER_EVERY).await;
            }
        });
    }

    /// Adds the events since the previous view, and the feed, to `snapshot`.
    fn record_events(&self, snapshot: &mut ClusterSnapshot) {
        let previous = self.latest.borrow().clone();
        let mut feed = self.lock();
        if let Some(prev) = previous {
            for (kind, text) in changes(&prev, snapshot) {
                let seq = feed.next_seq;
                feed.next_seq += 1;
                feed.events.push_back(EventRow {
                    seq,
                    at_unix_ms: snapshot.at_unix_ms,
                    kind,
                    text,
                });
                if feed.events.len() > EVENTS_KEPT {
                    feed.events.pop_front();
                }
            }
        }
        snapshot.events = feed.events.iter().cloned().collect();
    }

    /// Asks every member and merges the answers.
    async fn gather(&self) -> ClusterSnapshot {
        let view = self.node.view();
        let me = view.node_id;
        let mine = status_response(&view, &self.node, &self.handshake, &self.addrs);
        let asks = mine
            .nodes
            .iter()
            .filter(|n| n.id != me.0 && n.state != "removed" && !n.grpc_addr.is_empty())
            .map(|n| {
                let client = self.client(&n.grpc_addr);
                let id = NodeId(n.id);
                let handshake = self.handshake.clone();
                async move {
                    let answer = match client {
                        Some(mut c) => {
                            // A member's call: its hello says so.
                            let mut request = tonic::Request::new(pb::StatusRequest {});
                            handshake.attach(&mut request, id);
                            tokio::time::timeout(ASK_TIMEOUT, c.status(request))
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .map(tonic::Response::into_inner)
                        }
                        None => None,
                    };
                    (id, answer)
                }
            });
        let mut answers: Answers = futures::future::join_all(asks).await.into_iter().collect();
        answers.insert(me, Some(mine));
        merge(me, &answers, unix_ms())
    }

    fn client(&self, addr: &str) -> Option<ClusterClient<Channel>> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let peer = PeerAddr::parse(addr).ok()?;
        let endpoint = Endpoint::from_shared(peer.uri())
            .ok()?
            .connect_timeout(ASK_TIMEOUT)
            .timeout(ASK_TIMEOUT);
        let client = ClusterClient::new(self.handshake.dialer().connect_lazy(endpoint, &peer));
        clients.insert(addr.to_owned(), client.clone());
        Some(client)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The page's files, compiled in: `(path under /ui, content type, body)`.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, health: &str, heard: Option<f64>) -> pb::NodeStatus {
        pb::NodeStatus {
            id,
            grpc_addr: format!("127.0.0.1:{}", 9090 + id),
            health: health.into(),
            state: "up".into(),
            last_heard_seconds_ago: heard,
            ..Default::default()
        }
    }

    fn partition(p: u32, leader: u64, term: u64, applied: u64) -> pb::PartitionStatus {
        pb::PartitionStatus {
            partition: p,
            leader,
            replicas: vec![1, 2, 3],
            term,
            commit_index: 10,
            applied_index: applied,
            keys: 5,
            ..Default::default()
        }
    }

    /// Node `id`'s answer: it replicates `partitions`.
    fn answer(id: u64, partitions: Vec<pb::PartitionStatus>) -> pb::StatusResponse {
        pb::StatusResponse {
            node_id: id,
            partition_count: 2,
            replication_factor: 3,
            nodes: vec![
                node(1, if id == 1 { "self" } else { "up" }, Some(0.1)),
                node(2, "up", Some(0.2)),
                node(3, "down", Some(9.0)),
            ],
            partitions,
            metadata_version: 4,
            metadata_leader: 2,
            ..Default::default()
        }
    }

    #[test]
    fn the_newest_term_speaks_for_a_partition_and_silence_is_shown_as_such() {
        let mut answers = Answers::new();
        // Node 1 still thinks node 3 leads partition 0 at term 1; node 2
        // leads it at term 2. Nobody that answered replicates partition 1
        // (node 1's row for it is a routing guess: term 0).
        answers.insert(
            NodeId(1),
            Some(answer(
                1,
                vec![partition(0, 3, 1, 8), partition(1, 0, 0, 0)],
            )),
        );
        let mut two = answer(2, vec![partition(0, 2, 2, 10)]);
        two.controller = true;
        two.moves = vec![pb::MoveStatus {
            partition: 0,
            kind: "replace".into(),
            from: 3,
            to: 1,
            ..Default::default()
        }];
        answers.insert(NodeId(2), Some(two));
        answers.insert(NodeId(3), None);
        let v = merge(NodeId(1), &answers, 1_000);
        let p0 = &v.partitions[0];
        assert_eq!(
            (p0.leader, p0.term, p0.known, p0.moving),
            (Some(2), 2, true, true)
        );
        assert_eq!(p0.slots, [0, 8191]);
        // Each replica's applied index is its own; node 3 said nothing.
        let applied: Vec<Option<u64>> = p0.progress.iter().map(|r| r.applied_index).collect();
        assert_eq!(applied, vec![Some(8), Some(10), None]);
        let p1 = &v.partitions[1];
        assert_eq!((p1.known, p1.leader), (false, None));
        let status: Vec<&str> = v.nodes.iter().map(|n| n.status).collect();
        assert_eq!(status, vec!["up", "up", "down"]);
        assert_eq!(v.controller, Some(2));
        assert_eq!(v.moves.len(), 1);
        assert_eq!(v.nodes[1].partitions_led, 1);
    }

    #[test]
    fn a_member_that_does_not_answer_is_suspect_until_its_detector_says_down() {
        let mut answers = Answers::new();
        let mut mine = answer(1, vec![]);
        mine.nodes[2].health = "up".into();
        mine.nodes[2].last_heard_seconds_ago = Some(0.3);
        answers.insert(NodeId(1), Some(mine));
        answers.insert(NodeId(2), Some(answer(2, vec![])));
        answers.insert(NodeId(3), None);
        let v = merge(NodeId(1), &answers, 0);
        assert_eq!(v.nodes[2].status, "suspect");
        assert!(!v.nodes[2].answered);
    }

    #[test]
    fn changes_between_views_are_events() {
        let mut answers = Answers::new();
        answers.insert(NodeId(1), Some(answer(1, vec![partition(0, 1, 1, 10)])));
        answers.insert(NodeId(2), Some(answer(2, vec![])));
        let before = merge(NodeId(1), &answers, 0);
        let mut mine = answer(1, vec![partition(0, 2, 2, 10)]);
        mine.nodes[1].health = "down".into();
        answers.insert(NodeId(1), Some(mine));
        answers.insert(NodeId(2), None);
        let after = merge(NodeId(1), &answers, 1);
        assert_eq!(
            changes(&before, &after),
            vec![
                ("node", "node 2: up → down".to_owned()),
                (
                    "election",
                    "partition 0: node 2 leads (term 2), was node 1".to_owned()
                ),
            ]
        );
    }
}
