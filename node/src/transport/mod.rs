//! Node-to-node transport over gRPC (`ringkv.v1.Peer`).
//!
//! **Two lanes per peer.** The core marks every batch it emits as
//! [`Lane::Control`] (votes, heartbeats, answers: small, and what keeps a
//! group alive) or [`Lane::Bulk`] (log entries and snapshot chunks). Each
//! lane to each peer has its own queue, its own stream task and its own
//! connection ([`senders`]), as etcd's rafthttp keeps appends and other
//! messages on separate streams: a heartbeat never waits behind megabytes of
//! entries, so a follower catching up on a large backlog does not make its
//! leader look dead.
//!
//! **Bounded in bytes, everywhere.** Every batch the core emits fits in
//! [`TransportLimits::max_frame_bytes`] (derived from the core's
//! `NodeConfig::max_peer_frame_bytes`), and gRPC's message limits are set to
//! it explicitly on both ends, sending and receiving. A frame over the limit
//! is never sent; one that arrives over it closes its stream with a reason
//! ("peer frame of 5.2 MiB exceeds the 4.0 MiB limit") and is counted, so a
//! bad frame cannot wedge a stream by being resent forever.
//!
//! **Backpressure, then loss.** Each lane's queue is bounded in bytes. When a
//! peer's bulk queue passes a quarter of its bound the link is *congested*:
//! the driver tells the core, whose groups stop sending that peer entries
//! and snapshot chunks (heartbeats and answers still flow) until the stream
//! task has drained the queue below an eighth and wakes the driver to say
//! so. Only a queue that fills anyway drops batches; they are counted, and
//! the driver tells the core the peer was unreachable, so its groups probe
//! instead of streaming (etcd's `ReportUnreachable`).
//!
//! **Failures say why.** A stream that fails or cannot connect is logged at
//! warn level with its error (once per distinct error and peer, then again
//! after [`FAILURE_LOG_INTERVAL`]), re-dialled with exponential backoff, and
//! the batches queued meanwhile are dropped (Raft retransmits) and reported.
//!
//! **Stalls become breaks.** A partition does not break a stream, it stalls
//! it: the connection stays open and the transport below retransmits with
//! exponential backoff (TCP's RTO; madsim's ordered channel, capped at 10 s),
//! so after the heal every batch waits behind the stalled one. The receiver
//! closes a stream that carried nothing for [`PeerService`]'s idle timeout,
//! and the sender's HTTP/2 keepalive closes a connection whose pings go
//! unanswered; either way the sender re-dials. A sender whose lane has had
//! nothing to send for half that timeout sends an empty keepalive frame, so
//! a quiet lane is never mistaken for a stalled one (and never re-dialled
//! while idle).
//!
//! The same service carries `Forwards`: client requests this node cannot
//! answer, sent to the node the core named over one more long-lived stream
//! per peer, answered by id in any order ([`forward`]).
//!
//! **Every call says who it is from.** Each `Batches` and `Forwards` stream
//! carries the caller's hello (cluster uid, settings, node id, data
//! directory incarnation, and whom it means to reach); the receiver admits
//! it or refuses it, naming the mismatch, before reading any frame
//! ([`handshake`]). A node not yet in a cluster sends nothing until
//! formation gives it one.
//!
//! Under `cfg(madsim)` only, the stream tasks ask the simulation harness's
//! fault hook ([`faults`]) about every outgoing batch: deliver, drop,
//! duplicate or delay it. Production builds have no hook. madsim's gRPC
//! passes messages without encoding them, so the size checks here, not
//! tonic's, are what enforce the frame limit in the simulation.

mod dialer;
#[cfg(madsim)]
pub mod faults;
mod forward;
pub mod handshake;
pub mod join;
mod senders;
mod service;

use crate::address::PeerAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ringkv_core::io::Lane;
use ringkv_core::node::NodeConfig;
use tonic::transport::Endpoint;

pub use dialer::Dialer;
pub use forward::{Forwarder, MAX_CALLS_PER_FRAME, MAX_FORWARDS_IN_FLIGHT, MAX_FORWARDS_QUEUED};
pub use handshake::Handshake;
pub use senders::PeerSenders;
pub use service::PeerService;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on every peer connection, and how long one may go
/// unanswered before the connection is closed as stalled: after a partition,
/// TCP's retransmission backoff can keep an open connection silent for
/// minutes. (Ignored under madsim, whose streams carry no pings; there the
/// receiver's idle timeout does the job alone.)
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 flow-control windows: the defaults (64 KiB) hold a bulk stream
/// to a fraction of what loopback or a LAN carries when entries are large.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;
/// A peer stream silent for this many of the core's heartbeat intervals is
/// closed as stalled (see [`PeerService::new`]). Large enough that a busy but
/// live sender, or one whose clock drifts, is never cut off.
pub const STREAM_IDLE_HEARTBEATS: u32 = 10;
/// A stream failure already logged at warn level for a peer is logged again
/// at warn level only after this long (meanwhile at debug).
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The byte limits and timings of one node's transport. Every node of a
/// cluster must use the same `max_frame_bytes` (it follows from the
/// cluster-wide key and value limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// The largest encoded batch sent or accepted.
    pub max_frame_bytes: usize,
    /// Bytes (by the core's size bound) queued per peer for the control lane.
    pub control_queue_bytes: usize,
    /// Bytes queued per peer for the bulk lane: room for every write the
    /// node admits (`max_pending_write_bytes`) plus a few full batches, so
    /// that a node at its admission limit does not drop its own appends. A
    /// full queue (a slow peer, or a catch-up burst) drops batches and
    /// reports the peer unreachable; the core then slows down to probing.
    pub bulk_queue_bytes: usize,
    /// A stream silent this long is closed by the receiver as stalled.
    pub idle_timeout: Duration,
}

impl TransportLimits {
    /// The limits for a node with this core configuration.
    pub fn for_node(cfg: &NodeConfig) -> Self {
        let max_frame_bytes = cfg.max_peer_frame_bytes();
        TransportLimits {
            max_frame_bytes,
            control_queue_bytes: 4 * max_frame_bytes,
            bulk_queue_bytes: (cfg.max_pending_write_bytes
                + (8 * cfg.max_batch_bytes).max(2 * max_frame_bytes))
            .max(64 << 20),
            idle_timeout: cfg.peer_heartbeat_interval() * STREAM_IDLE_HEARTBEATS,
        }
    }

    /// What gRPC may decode: a little above `max_frame_bytes`, so that this
    /// transport's own check, with its clearer message, is the one that
    /// refuses an oversized frame.
    pub fn grpc_message_limit(&self) -> usize {
        self.max_frame_bytes + (64 << 10)
    }

    /// How long a lane with nothing to send waits before sending an empty
    /// keepalive frame: half the receiver's idle timeout, so one lost or
    /// late keepalive never closes a quiet stream.
    pub fn keepalive_interval(&self) -> Duration {
        self.idle_timeout / 2
    }

    /// Bulk bytes queued for a peer above which its link is congested.
    pub fn congested_above(&self) -> usize {
        self.bulk_queue_bytes / 4
    }

    /// Bulk bytes queued below which a congested link is clear again.
    pub fn clear_below(&self) -> usize {
        self.bulk_queue_bytes / 8
    }

    fn queue_bytes(&self, lane: Lane) -> usize {
        match lane {
            Lane::Control => self.control_queue_bytes,
            Lane::Bulk => self.bulk_queue_bytes,
        }
    }
}

/// Counters of the transport, for metrics and status.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub batches_sent: AtomicU64,
    /// Batches dropped because their peer's lane queue was full, or
    /// discarded from it when its stream broke.
    pub batches_dropped_queue_full: AtomicU64,
    pub batches_discarded_on_reconnect: AtomicU64,
    pub keepalives_sent: AtomicU64,
    /// Frames received (keepalives included).
    pub batches_received: AtomicU64,
    pub keepalives_received: AtomicU64,
    pub decode_failures: AtomicU64,
    /// Outgoing frames not sent because they exceed the frame limit.
    pub frames_too_large_out: AtomicU64,
    /// Incoming frames refused because they exceed the frame limit.
    pub frames_too_large_in: AtomicU64,
    /// Incoming peer streams closed because they stayed silent too long.
    pub idle_streams_closed: AtomicU64,
    /// Outgoing streams that failed or could not connect.
    pub stream_failures: AtomicU64,
    pub reconnects: AtomicU64,
    /// Client requests handed to the forwarder.
    pub forwards: AtomicU64,
    /// Forward streams opened, and those that ended other than by the
    /// peer's closing them (broken, silent or stalled).
    pub forward_streams_opened: AtomicU64,
    pub forward_streams_broken: AtomicU64,
    /// Forwards refused because their peer's queue was full.
    pub forwards_refused_queue_full: AtomicU64,
    /// Forward answers that came after their request's deadline.
    pub forward_answers_late: AtomicU64,
    /// Forward answers naming no request sent on their stream.
    pub forward_answers_unmatched: AtomicU64,
    /// Batches the simulation's fault hook dropped.
    #[cfg(madsim)]
    pub faults_dropped: AtomicU64,
    /// Batches the fault hook sent twice (the copy is counted here when it
    /// is scheduled, and in `batches_sent` when it goes out).
    #[cfg(madsim)]
    pub faults_duplicated: AtomicU64,
    /// Batches the fault hook held back before sending.
    #[cfg(madsim)]
    pub faults_delayed: AtomicU64,
}

/// A connection to `addr`, resolved again by each connect (see
/// [`crate::address`]).
fn endpoint(addr: &PeerAddr) -> Endpoint {
    Endpoint::from_shared(addr.uri())
        .expect("a checked HOST:PORT is a valid URI authority")
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
}

/// The server side's HTTP/2 windows, to match [`endpoint`]'s.
pub fn tune_server(builder: tonic::transport::Server) -> tonic::transport::Server {
    builder
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
}

/// Bytes for a log line: "5.2 MiB", "900.0 KiB", "12 B".
pub fn human_bytes(n: usize) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f >= KIB * KIB {
        format!("{:.1} MiB", f / (KIB * KIB))
    } else if f >= KIB {
        format!("{:.1} KiB", f / KIB)
    } else {
        format!("{n} B")
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    /// A production build carries no fault hook: what each stream task
    /// holds of it is zero-sized, and there is nothing to set.
    #[test]
    fn production_streams_carry_no_fault_hook() {
        assert_eq!(std::mem::size_of::<senders::StreamHook>(), 0);
    }

    #[test]
    fn limits_follow_the_core_configuration() {
        let mut cfg = NodeConfig::new(ringkv_core::NodeId(1), vec![ringkv_core::NodeId(1)]);
        let l = TransportLimits::for_node(&cfg);
        assert_eq!(l.max_frame_bytes, cfg.max_peer_frame_bytes());
        assert!(l.max_frame_bytes >= cfg.max_batch_bytes);
        assert!(l.bulk_queue_bytes >= 2 * l.max_frame_bytes);
        assert!(l.grpc_message_limit() > l.max_frame_bytes);
        // A larger value limit raises the frame limit: one entry must fit.
        cfg.max_value_bytes = 16 << 20;
        let big = TransportLimits::for_node(&cfg);
        assert!(big.max_frame_bytes > 16 << 20);
        assert!(big.bulk_queue_bytes >= 2 * big.max_frame_bytes);
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(900 * 1024), "900.0 KiB");
        assert_eq!(human_bytes(5_452_595), "5.2 MiB");
    }
}
