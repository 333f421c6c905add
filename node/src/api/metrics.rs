//! Prometheus text exposition of a node's counters and gauges
//! (`GET /metrics`). Names follow Prometheus conventions: `_total` for
//! counters, base units, one `ringkv_` prefix.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::handle::NodeHandle;
use crate::transport::{Handshake, TransportStats};

struct Out(String);

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.0, "{name} {v}");
            } else {
                let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
            }
        }
    }
    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.metric(name, "counter", help, &[("", v as f64)]);
    }
    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.metric(name, "gauge", help, &[("", v)]);
    }
}

/// Renders every metric of this node.
pub fn render(node: &NodeHandle, transport: &TransportStats, handshake: &Handshake) -> String {
    let view = node.view();
    let storage = node.storage_stats();
    let mut o = Out(String::new());
    let me = view.node_id;
    o.metric(
        "ringkv_node_info",
        "gauge",
        "This node's id.",
        &[(&format!("node_id=\"{}\"", me.0), 1.0)],
    );
    let ups: Vec<(String, f64)> = view
        .members
        .iter()
        .filter(|m| m.id != me)
        .map(|m| {
            (
                format!("peer=\"{}\"", m.id.0),
                if m.health == crate::view::Health::Up {
                    1.0
                } else {
                    0.0
                },
            )
        })
        .collect();
    let ups: Vec<(&str, f64)> = ups.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    o.metric(
        "ringkv_peer_up",
        "gauge",
        "1 while the failure detector considers the peer up.",
        &ups,
    );
    let led = view
        .partitions
        .iter()
        .filter(|p| p.leader == Some(me))
        .count();
    let leaderless = view.leaderless().count();
    o.gauge(
        "ringkv_partitions_led",
        "Partitions this node leads.",
        led as f64,
    );
    o.gauge(
        "ringkv_partitions_leaderless",
        "Partitions this node replicates that have no known leader.",
        leaderless as f64,
    );
    o.gauge(
        "ringkv_partitions_under_replicated",
        "Partitions this node leads with a replica that lags (over 1,000 entries behind, being sent a snapshot, or down).",
        view.under_replicated().count() as f64,
    );
    o.gauge(
        "ringkv_partitions_catching_up",
        "Partitions whose replica on this node is over 1,000 entries behind its leader or receiving a snapshot.",
        view.catching_up().count() as f64,
    );
    o.gauge(
        "ringkv_replica_lag_entries_max",
        "The most committed entries any replica on this node has left to apply (as far as its leader told it).",
        view.partitions.iter().map(|p| p.lag).max().unwrap_or(0) as f64,
    );
    // Per follower node, over the partitions this node leads.
    let mut per_peer: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for m in view.members.iter().filter(|m| m.id != me) {
        per_peer.insert(m.id.0, (0, 0, 0));
    }
    for f in view.partitions.iter().flat_map(|p| &p.followers) {
        let e = per_peer.entry(f.node.0).or_default();
        e.0 = e.0.max(f.lag);
        e.1 += u64::from(f.lagging);
        e.2 += u64::from(f.snapshot_progress.is_some());
    }
    let samples = |pick: fn(&(u64, u64, u64)) -> u64| -> Vec<(String, f64)> {
        per_peer
            .iter()
            .map(|(peer, v)| (format!("peer=\"{peer}\""), pick(v) as f64))
            .collect()
    };
    for (name, help, pick) in [
        (
            "ringkv_follower_lag_entries_max",
            "The most entries the peer lacks in any partition this node leads.",
            (|v: &(u64, u64, u64)| v.0) as fn(&(u64, u64, u64)) -> u64,
        ),
        (
            "ringkv_follower_partitions_lagging",
            "Partitions this node leads in which the peer's replica lags.",
            |v| v.1,
        ),
        (
            "ringkv_snapshots_sending",
            "Snapshot transfers from this node to the peer in progress.",
            |v| v.2,
        ),
    ] {
        let s = samples(pick);
        let s: Vec<(&str, f64)> = s.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        o.metric(name, "gauge", help, &s);
    }
    o.gauge(
        "ringkv_requests_pending",
        "Client requests inside the core.",
        view.pending_requests as f64,
    );
    o.gauge(
        "ringkv_compactions_queued",
        "Partitions waiting for a compaction snapshot (compaction is paced).",
        view.compactions_queued as f64,
    );
    let s = &view.stats;
    o.counter(
        "ringkv_raft_proposals_total",
        "Entries proposed by groups this node leads.",
        s.proposals,
    );
    o.counter(
        "ringkv_raft_applied_entries_total",
        "Log entries applied to the state machine.",
        s.applied_entries,
    );
    o.counter(
        "ringkv_io_requests_total",
        "WAL batches the core asked for.",
        s.io_requests,
    );
    o.counter(
        "ringkv_core_batches_sent_total",
        "Peer batches the core produced.",
        s.batches_sent,
    );
    o.counter(
        "ringkv_core_batches_received_total",
        "Peer batches the core accepted.",
        s.batches_received,
    );
    o.counter(
        "ringkv_core_batches_refused_total",
        "Peer batches the core refused (wrong address or sender).",
        s.batches_dropped,
    );
    o.counter(
        "ringkv_core_bulk_batches_sent_total",
        "Peer batches of log entries or snapshot chunks the core produced (among ringkv_core_batches_sent_total).",
        s.bulk_batches_sent,
    );
    o.counter(
        "ringkv_snapshot_bytes_sent_total",
        "Bytes of snapshot data this node streamed to other replicas (moving and re-creating replicas).",
        s.snapshot_bytes_sent,
    );
    o.counter(
        "ringkv_core_unreachable_reports_total",
        "Times the transport told the core that batches to a peer were dropped.",
        s.unreachable_reports,
    );
    o.counter(
        "ringkv_compactions_total",
        "Snapshots taken to compact a partition's log.",
        s.compactions,
    );
    o.counter(
        "ringkv_snapshot_images_supplied_total",
        "Images of a partition's last snapshot encoded again for a follower that needed it (logs keep a snapshot's position, not its image).",
        s.snapshot_images_supplied,
    );
    o.counter(
        "ringkv_expiry_sweeps_total",
        "Sweep entries this node proposed as leader to reclaim keys past their deadline.",
        s.sweeps,
    );
    let t = transport;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    o.counter(
        "ringkv_peer_batches_sent_total",
        "Peer batches written to a peer stream.",
        load(&t.batches_sent),
    );
    o.metric(
        "ringkv_peer_batches_dropped_total",
        "counter",
        "Peer batches dropped: the peer's lane queue was full, or they were queued when its stream broke. Each drop makes the core probe that peer instead of streaming.",
        &[
            ("reason=\"queue_full\"", load(&t.batches_dropped_queue_full) as f64),
            ("reason=\"stream_broke\"", load(&t.batches_discarded_on_reconnect) as f64),
        ],
    );
    o.counter(
        "ringkv_peer_keepalives_sent_total",
        "Empty frames sent on peer streams that had nothing else to send.",
        load(&t.keepalives_sent),
    );
    o.counter(
        "ringkv_peer_frames_received_total",
        "Peer frames received (keepalives included).",
        load(&t.batches_received),
    );
    o.metric(
        "ringkv_peer_frames_rejected_total",
        "counter",
        "Peer frames refused: larger than the frame limit (not sent, or closing the incoming stream), or not decodable (dropped).",
        &[
            (
                "direction=\"out\",reason=\"too_large\"",
                load(&t.frames_too_large_out) as f64,
            ),
            (
                "direction=\"in\",reason=\"too_large\"",
                load(&t.frames_too_large_in) as f64,
            ),
            (
                "direction=\"in\",reason=\"undecodable\"",
                load(&t.decode_failures) as f64,
            ),
        ],
    );
    o.counter(
        "ringkv_peer_stream_failures_total",
        "Outgoing peer streams that failed or could not connect (each is then re-dialled).",
        load(&t.stream_failures),
    );
    o.counter(
        "ringkv_peer_idle_streams_closed_total",
        "Incoming peer streams closed because they carried nothing for too long (stalled).",
        load(&t.idle_streams_closed),
    );
    o.counter(
        "ringkv_peer_reconnects_total",
        "Peer stream re-dials.",
        load(&t.reconnects),
    );
    o.gauge(
        "ringkv_cluster_formed",
        "1 once this node is in a cluster (formed or joined); 0 while it forms or is refused.",
        if handshake.record().is_some() {
            1.0
        } else {
            0.0
        },
    );
    let refusals: Vec<(String, f64)> = handshake
        .refusal_counts()
        .into_iter()
        .map(|(peer, direction, reason, n)| {
            (
                format!(
                    "peer=\"{}\",direction=\"{}\",reason=\"{reason}\"",
                    peer.0,
                    direction.as_str()
                ),
                n as f64,
            )
        })
        .collect();
    let refusals: Vec<(&str, f64)> = refusals.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    o.metric(
        "ringkv_peer_refusals_total",
        "counter",
        "Peer handshakes refused: incoming (this node refused the peer) or outgoing (the peer refused this node, or this node will not join because of it), by reason.",
        &refusals,
    );
    o.counter(
        "ringkv_forwards_total",
        "Client requests forwarded to another node.",
        load(&t.forwards),
    );
    o.counter(
        "ringkv_forward_streams_opened_total",
        "Forward streams opened to other nodes (one per peer while it works).",
        load(&t.forward_streams_opened),
    );
    o.counter(
        "ringkv_forward_streams_broken_total",
        "Forward streams given up as broken, silent or stalled; their requests in flight were answered as lost.",
        load(&t.forward_streams_broken),
    );
    o.counter(
        "ringkv_forwards_refused_total",
        "Forwards refused at once because their peer's queue was full.",
        load(&t.forwards_refused_queue_full),
    );
    o.counter(
        "ringkv_forward_answers_late_total",
        "Forward answers that came after their request's deadline (the client was told outcome unknown or timeout).",
        load(&t.forward_answers_late),
    );
    o.counter(
        "ringkv_wal_syncs_total",
        "WAL syncs (each covers every batch written since the previous one).",
        storage.syncs,
    );
    o.counter(
        "ringkv_wal_records_total",
        "WAL records written.",
        storage.records_written,
    );
    o.gauge(
        "ringkv_wal_bytes",
        "Bytes in live WAL segments.",
        storage.wal_bytes as f64,
    );
    o.gauge(
        "ringkv_wal_segments",
        "Live WAL segments.",
        storage.segments as f64,
    );
    o.counter(
        "ringkv_wal_segments_deleted_total",
        "WAL segments deleted after snapshots.",
        storage.segments_deleted,
    );
    o.counter(
        "ringkv_snapshots_written_total",
        "Snapshot files written.",
        storage.snapshots_written,
    );
    placement(&mut o, &view);
    requests(&mut o, node);
    o.0
}

/// What this node's clients asked: requests by operation and outcome, and
/// a latency histogram per operation (etcd's buckets).
fn requests(o: &mut Out, node: &NodeHandle) {
    use crate::requests::{BUCKETS, OUTCOMES, STATUSES};
    let ops = node.request_stats().read();
    let totals = per_operation(&ops, "outcome", |op| OUTCOMES.iter().zip(op.outcomes), true);
    let totals: Vec<(&str, f64)> = totals.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    o.metric(
        "ringkv_requests_total",
        "counter",
        "Client requests this node answered (forwarded ones counted where they came in), by operation and outcome: ok (answered; a missing key or a failed precondition is an answer), refused (bad input), unavailable (no leader, busy, stopping), unknown (a write of unknown outcome).",
        &totals,
    );
    let by_status = per_operation(&ops, "status", |op| STATUSES.iter().zip(op.statuses), false);
    let by_status: Vec<(&str, f64)> = by_status.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    o.metric(
        "ringkv_requests_by_status_total",
        "counter",
        "Client requests this node answered, by operation and the HTTP status of the answer (gRPC and Redis requests under the status REST would have sent: one error table); only statuses seen.",
        &by_status,
    );
    let name = "ringkv_request_duration_seconds";
    let _ = writeln!(
        o.0,
        "# HELP {name} How long client requests took at this node, by operation."
    );
    let _ = writeln!(o.0, "# TYPE {name} histogram");
    for op in &ops {
        let op_name = op.name;
        for (i, n) in op.cumulative.iter().enumerate() {
            let le = BUCKETS
                .get(i)
                .map_or("+Inf".to_owned(), ToString::to_string);
            let _ = writeln!(
                o.0,
                "{name}_bucket{{operation=\"{op_name}\",le=\"{le}\"}} {n}"
            );
        }
        let count = op.cumulative.last().copied().unwrap_or(0);
        let sum = op.total_micros as f64 / 1e6;
        let _ = writeln!(o.0, "{name}_sum{{operation=\"{op_name}\"}} {sum}");
        let _ = writeln!(o.0, "{name}_count{{operation=\"{op_name}\"}} {count}");
    }
}

/// `operation="..",LABEL=".."` samples of every operation's counts by
/// `LABEL` (zero counts too, or only those seen).
fn per_operation<'a, L: std::fmt::Display + 'a, I: Iterator<Item = (L, u64)>>(
    ops: &'a [crate::requests::OperationCounts],
    label: &str,
    counts: impl Fn(&'a crate::requests::OperationCounts) -> I,
    with_zeros: bool,
) -> Vec<(String, f64)> {
    ops.iter()
        .flat_map(|op| counts(op).map(move |(value, n)| (op.name, value, n)))
        .filter(|&(_, _, n)| with_zeros || n > 0)
        .map(|(name, value, n)| {
            (
                format!("operation=\"{name}\",{label}=\"{value}\""),
                n as f64,
            )
        })
        .collect()
}

/// The member states of the metadata document, and on the controller its
/// latest plan.
fn placement(o: &mut Out, view: &crate::view::ClusterView) {
    o.gauge(
        "ringkv_metadata_version",
        "Version of the cluster metadata document this node has (0: none yet).",
        view.metadata_version as f64,
    );
    let states: Vec<(String, f64)> = view
        .members
        .iter()
        .filter_map(|m| Some((format!("node=\"{}\",state=\"{}\"", m.id.0, m.state?), 1.0)))
        .collect();
    let states: Vec<(&str, f64)> = states.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    o.metric(
        "ringkv_member_state",
        "gauge",
        "1 for each member's state in the cluster metadata (joining, up, draining, dead, removed).",
        &states,
    );
    let controller = view.controller;
    o.gauge(
        "ringkv_placement_controller",
        "1 while this node runs the placement controller (leads the metadata group).",
        if controller { 1.0 } else { 0.0 },
    );
    let Some(plan) = &view.plan else {
        return;
    };
    o.gauge(
        "ringkv_placement_under_replicated_partitions",
        "Partitions with fewer healthy voters than the desired ring gives them (controller only).",
        plan.under_replicated.len() as f64,
    );
    o.gauge(
        "ringkv_placement_misplaced_replicas",
        "Replica slots the desired ring wants that are not voters yet: the movement still to do \
         (after a join, about rf/(n+1) of all slots; controller only).",
        plan.misplaced as f64,
    );
    let catching_up = plan.moves.iter().filter_map(|m| m.catch_up.as_ref());
    let (mut acked, mut total, mut behind) = (0u64, 0u64, 0u64);
    for c in catching_up {
        if let Some((a, t)) = c.snapshot {
            acked = acked.saturating_add(a);
            total = total.saturating_add(t);
        }
        behind = behind.saturating_add(c.last_index.saturating_sub(c.matched));
    }
    o.metric(
        "ringkv_placement_catch_up_snapshot_bytes",
        "gauge",
        "Snapshot bytes of the moves catching up: acknowledged by the new replicas, and in all \
         (controller only).",
        &[
            ("kind=\"acked\"", acked as f64),
            ("kind=\"total\"", total as f64),
        ],
    );
    o.gauge(
        "ringkv_placement_catch_up_entries_behind",
        "Log entries the new replicas of the moves catching up still lack (controller only).",
        behind as f64,
    );
    let waiting = plan.waiting();
    let samples = [
        ("phase=\"under_way\"", (plan.moves.len() - waiting) as f64),
        ("phase=\"waiting\"", waiting as f64),
    ];
    o.metric(
        "ringkv_placement_moves",
        "gauge",
        "Replica moves the controller wants, under way or waiting for the throttle (controller only).",
        &samples,
    );
}
