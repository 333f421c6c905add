//! Simulation only: a fault hook in the peer client that drops, duplicates
//! or delays single outgoing `PeerBatch`es.
//!
//! madsim's partitions refuse connections and stall streams; they cannot lose
//! or repeat one message on an open stream. The simulation harness does that
//! here: it hands the node a [`PeerFaults`] through
//! `ServerConfig::peer_faults`, and the stream task to each peer asks it about
//! every batch it is about to send. This whole module, the config field and
//! the stream task's call into it exist only under `cfg(madsim)`: a
//! production build has no hook, no counter and no switch (flag, variable or
//! API) that could turn one on.
//!
//! Not here: the policy (rates, per-link settings, the seeded RNG), which
//! belongs to the harness (`ringkv-sim`'s `message_faults`). Forwarded client
//! requests (unary `Forward` calls) never pass through the hook.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::io::PeerBatch;
use ringkv_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc};

use super::TransportStats;

/// Batches one node holds back at once, over all its streams (delayed
/// batches and duplicate copies waiting their turn); past this, a batch the
/// hook wanted held is dropped and counted as a full queue, like any batch
/// the transport cannot hold.
pub const MAX_HELD_BATCHES: usize = 256;

/// What happens to one outgoing batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultDecision {
    /// Sent now, once.
    Deliver,
    /// Never sent.
    Drop,
    /// Sent now, and a second, identical copy follows after the delay
    /// (zero: as soon as the runtime schedules it).
    Duplicate(Duration),
    /// Held for the delay, then sent. Batches behind it are not held up, so
    /// delayed batches arrive out of order (legal for Raft, and a test of it).
    Delay(Duration),
}

/// Decides the fate of each batch `from` sends `to` (`batch`, as the core
/// made it: a harness may aim at particular messages). Implemented by the
/// simulation harness; must be deterministic given the harness's seed (a
/// seeded RNG, no global randomness, no hash-map iteration order).
pub trait PeerFaults: Debug + Send + Sync + 'static {
    fn decide(&self, from: NodeId, to: NodeId, batch: &PeerBatch) -> FaultDecision;
}

/// The stream tasks' view of the hook: who is sending, and what may be
/// held (clones share the bound).
#[derive(Clone, Debug)]
pub(super) struct StreamFaults {
    hook: Arc<dyn PeerFaults>,
    from: NodeId,
    held: Arc<Semaphore>,
}

impl StreamFaults {
    pub(super) fn new(hook: Arc<dyn PeerFaults>, from: NodeId) -> Self {
        StreamFaults {
            hook,
            from,
            held: Arc::new(Semaphore::new(MAX_HELD_BATCHES)),
        }
    }

    /// Applies the hook's decision to `frame`, bound for `to` on the stream
    /// fed by `frames`. Returns the frame to send now, if any; a delayed
    /// frame or copy goes out from its own task later, on the same stream
    /// (if that stream has broken by then, it is lost like any other).
    pub(super) fn apply(
        &self,
        to: NodeId,
        batch: &PeerBatch,
        frame: pb::PeerFrame,
        frames: &mpsc::Sender<pb::PeerFrame>,
        stats: &Arc<TransportStats>,
    ) -> Option<pb::PeerFrame> {
        match self.hook.decide(self.from, to, batch) {
            FaultDecision::Deliver => Some(frame),
            FaultDecision::Drop => {
                stats.faults_dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
            FaultDecision::Duplicate(after) => {
                if self.hold(frame.clone(), after, frames, stats) {
                    stats.faults_duplicated.fetch_add(1, Ordering::Relaxed);
                }
                Some(frame)
            }
            FaultDecision::Delay(by) => {
                if self.hold(frame, by, frames, stats) {
                    stats.faults_delayed.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
        }
    }

    /// Sends `frame` after `delay` from a task of its own. Returns false
    /// (and drops the frame) when [`MAX_HELD_BATCHES`] are already held.
    fn hold(
        &self,
        frame: pb::PeerFrame,
        delay: Duration,
        frames: &mpsc::Sender<pb::PeerFrame>,
        stats: &Arc<TransportStats>,
    ) -> bool {
        let Ok(permit) = self.held.clone().try_acquire_owned() else {
            stats
                .batches_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let (frames, stats) = (frames.clone(), stats.clone());
        tokio::spawn(async move {
            // Network delay is global (madsim) time, not the sender's
            // possibly skewed clock.
            tokio::time::sleep(delay).await;
            if frames.send(frame).await.is_ok() {
                stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use bytes::Bytes;
    use tokio::time::Instant;

    use super::*;

    /// Hands out a fixed list of decisions, then Deliver.
    #[derive(Debug)]
    struct Scripted(Mutex<VecDeque<FaultDecision>>);

    impl PeerFaults for Scripted {
        fn decide(&self, from: NodeId, to: NodeId, _: &PeerBatch) -> FaultDecision {
            assert_eq!((from, to), (NodeId(1), NodeId(2)));
            let mut script = self.0.lock().unwrap();
            script.pop_front().unwrap_or(FaultDecision::Deliver)
        }
    }

    fn batch() -> PeerBatch {
        PeerBatch {
            from: NodeId(1),
            to: NodeId(2),
            messages: Vec::new(),
            gossip: Default::default(),
            placement: Vec::new(),
        }
    }

    fn frame(n: u8) -> pb::PeerFrame {
        pb::PeerFrame {
            batch: Bytes::from(vec![n]),
        }
    }

    /// Sends frames 1..=5 through the hook as the stream task does; returns
    /// what reached the stream, in order, with arrival times in ms.
    async fn run(script: Vec<FaultDecision>) -> (Vec<(u8, u64)>, Arc<TransportStats>) {
        let hook = Arc::new(Scripted(Mutex::new(script.into())));
        let faults = StreamFaults::new(hook, NodeId(1));
        let stats = Arc::new(TransportStats::default());
        let (tx, mut rx) = mpsc::channel(16);
        let start = Instant::now();
        for n in 1..=5 {
            if let Some(f) = faults.apply(NodeId(2), &batch(), frame(n), &tx, &stats) {
                tx.send(f).await.unwrap();
            }
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(f) = rx.recv().await {
            seen.push((f.batch[0], start.elapsed().as_millis() as u64));
        }
        (seen, stats)
    }

    #[madsim::test]
    async fn drops_duplicates_and_delays_with_reordering() {
        use FaultDecision::*;
        let ms = Duration::from_millis;
        let (seen, stats) = run(vec![Delay(ms(30)), Drop, Duplicate(ms(10)), Deliver]).await;
        // 1 is held 30 ms and overtaken; 2 never goes; 3 goes now and again
        // after 10 ms, behind 4 and 5.
        assert_eq!(seen, [(3, 0), (4, 0), (5, 0), (3, 10), (1, 30)]);
        assert_eq!(stats.faults_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.faults_duplicated.load(Ordering::Relaxed), 1);
        assert_eq!(stats.faults_delayed.load(Ordering::Relaxed), 1);
        // Held frames count as sent when they go; the rest the caller counts.
        assert_eq!(stats.batches_sent.load(Ordering::Relaxed), 2);
    }

    #[madsim::test]
    async fn a_full_hold_drops_what_it_cannot_hold() {
        let hook = Arc::new(Scripted(Mutex::new(
            vec![FaultDecision::Delay(Duration::from_secs(1)); MAX_HELD_BATCHES + 1].into(),
        )));
        let faults = StreamFaults::new(hook, NodeId(1));
        let stats = Arc::new(TransportStats::default());
        let (tx, mut rx) = mpsc::channel(MAX_HELD_BATCHES + 1);
        for _ in 0..=MAX_HELD_BATCHES {
            assert!(
                faults
                    .apply(NodeId(2), &batch(), frame(0), &tx, &stats)
                    .is_none()
            );
        }
        drop(tx);
        let mut arrived = 0;
        while rx.recv().await.is_some() {
            arrived += 1;
        }
        assert_eq!(arrived, MAX_HELD_BATCHES);
        assert_eq!(stats.batches_dropped_queue_full.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.faults_delayed.load(Ordering::Relaxed),
            MAX_HELD_BATCHES as u64
        );
    }
}
