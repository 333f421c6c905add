//! Prometheus text exposition of a node's counters and gauges
//! (`GET /metrics`). Names follow Prometheus conventions: `_total` for
//! counters, base units, one `ringkv_` prefix.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::driver::NodeHandle;
use crate::transport::TransportStats;

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
pub fn render(node: &NodeHandle, transport: &TransportStats) -> String {
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
                if m.health == "up" { 1.0 } else { 0.0 },
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
    let leaderless = view
        .partitions
        .iter()
        .filter(|p| p.leader.is_none() && p.replicas.contains(&me))
        .count();
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
        "ringkv_requests_pending",
        "Client requests inside the core.",
        view.pending_requests as f64,
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
    let t = transport;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    o.counter(
        "ringkv_peer_batches_sent_total",
        "Peer batches written to a peer stream.",
        load(&t.batches_sent),
    );
    o.counter(
        "ringkv_peer_batches_dropped_total",
        "Peer batches dropped because the peer's queue was full.",
        load(&t.batches_dropped_queue_full),
    );
    o.counter(
        "ringkv_peer_frames_received_total",
        "Peer frames received.",
        load(&t.batches_received),
    );
    o.counter(
        "ringkv_peer_decode_failures_total",
        "Peer frames dropped because they did not decode.",
        load(&t.decode_failures),
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
    o.counter(
        "ringkv_forwards_total",
        "Client requests forwarded to another node.",
        load(&t.forwards),
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
    o.0
}
