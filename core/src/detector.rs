//! Phi-accrual failure detection over node-to-node heartbeats.
//!
//! Owns, for every watched peer, the history of heartbeat inter-arrival times
//! and the suspicion level `phi` derived from it (Hayashibara et al., "The phi
//! accrual failure detector", 2004, in the form Akka and Cassandra use), plus
//! an up/down verdict per peer that changes with hysteresis and is reported as
//! [`DetectorEvent`]s. It does not send heartbeats (the node coalesces those
//! into its `PeerBatch`es and calls [`FailureDetector::heartbeat`] on arrival),
//! and it does not decide what to do about a dead peer (re-replication and
//! leader moves belong to placement).
//!
//! # The model
//!
//! The gaps between a peer's heartbeats are taken to be normally distributed,
//! with the mean and standard deviation of the last [`DetectorConfig::window`]
//! gaps. After `t` ms of silence,
//! `phi = -log10(P(a gap is longer than t))`: at phi 1 a live peer would have
//! been this late one time in 10, at phi 8 one time in 10^8. Two knobs widen the
//! distribution so that a perfectly regular history does not make the detector
//! trigger-happy: the standard deviation is floored at
//! [`DetectorConfig::min_std_dev`], and [`DetectorConfig::acceptable_pause`] is
//! added to the mean (room for a GC pause or a fsync stall). The tail
//! probability uses Akka's logistic approximation of the normal CDF, evaluated
//! in a form that cannot overflow (see `phi_of`).
//!
//! Before any gap has been measured the history is seeded, at the first
//! heartbeat, with two samples `expected_interval ± expected_interval / 4`
//! (Akka's bootstrap), so phi is meaningful from the first heartbeat on.
//!
//! # Verdicts and hysteresis
//!
//! A peer is [`PeerStatus::Unknown`] from [`FailureDetector::watch`] until its
//! first heartbeat or until [`DetectorConfig::initial_grace`] passes, whichever
//! comes first. The two directions of a verdict need different evidence:
//! - **Up -> Down** only in [`FailureDetector::evaluate`], when phi has reached
//!   [`DetectorConfig::phi_threshold`].
//! - **Down -> Up** (and Unknown -> Up) only on an actual heartbeat; phi falling
//!   is not enough (and cannot happen without a heartbeat anyway).
//!
//! The gap that ends an outage (a heartbeat arriving while phi is already at or
//! over the threshold) is not added to the history, as in Akka: one long pause
//! would otherwise inflate mean and variance and make the detector slow to
//! notice the next real failure.
//!
//! # Invariants
//! - phi is finite, `>= 0`, never NaN, and non-decreasing in `now` while no
//!   heartbeat arrives (it is capped at [`PHI_MAX`]).
//! - A peer never heard from is `Unknown`, not `Down`, until `initial_grace`
//!   has passed since `watch()`; until then its phi is 0 and it is available.
//! - Every verdict change is queued exactly once as an event, in `NodeId`
//!   order within one call; a call that changes nothing queues nothing. One
//!   input queues at most one event per watched peer, so the queue stays small
//!   as long as the driver drains [`FailureDetector::poll_event`] after every
//!   input, as it must for every `poll_*` of the core.
//!
//! # Time going backwards
//!
//! `Time` is a node's monotonic clock, so `now` should never decrease. If it
//! does anyway (a driver bug, reordered inputs), nothing panics: a heartbeat
//! stamped earlier than the latest recorded arrival carries no news and is
//! ignored entirely, and a `phi`/`evaluate` at a time before the last arrival
//! sees zero silence. A heartbeat stamped exactly at the last arrival (a
//! duplicate delivery in the same millisecond) counts as a sign of life but
//! adds no zero-length gap to the history.
//!
//! # Limits
//! - The history holds at most `window` gaps (clamped to
//!   `1..=`[`MAX_WINDOW`]); one gap counts for at most [`MAX_INTERVAL_MS`].
//!   Both bounds keep the running sums exact in integers, so mean and variance
//!   carry no accumulated rounding error and are the same on every machine.
//! - Heartbeats from peers that are not watched are ignored: membership is the
//!   node's decision, and a removed member must not come back by chatting.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Time};

/// The largest phi ever reported: "as dead as we can tell". Also the phi of a
/// peer never heard from once its initial grace period is over.
pub const PHI_MAX: f64 = 1.0e6;

/// Upper bound on [`DetectorConfig::window`]; larger values are clamped.
pub const MAX_WINDOW: usize = 10_000;

/// Longest gap recorded, in ms (~49.7 days); longer gaps count as this long.
/// With [`MAX_WINDOW`] it keeps `window * sum_of_squares` within `u128`.
pub const MAX_INTERVAL_MS: u64 = u32::MAX as u64;

/// Smallest standard deviation used, in ms, whatever `min_std_dev` says:
/// `Time` has millisecond resolution, and a zero would divide by zero.
const STD_DEV_RESOLUTION_MS: f64 = 1.0;

/// Tuning of the [`FailureDetector`]; the defaults suit heartbeats every ~100 ms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// phi at or above which an `Up` peer is declared `Down`. Default 8.0
    /// (Akka's default; Cassandra uses 8 as well).
    pub phi_threshold: f64,
    /// How many of the latest inter-arrival gaps are kept per peer. Default
    /// 100; clamped to `1..=MAX_WINDOW`.
    pub window: usize,
    /// Floor of the standard deviation of the gaps. Default 50 ms.
    pub min_std_dev: Duration,
    /// Added to the mean gap: a pause this long costs no suspicion. Default 0.
    pub acceptable_pause: Duration,
    /// The gap assumed before any is measured (bootstrap). Default 100 ms.
    pub expected_interval: Duration,
    /// A watched peer never heard from is declared `Down` this long after
    /// `watch()`. Default 3 s.
    pub initial_grace: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            phi_threshold: 8.0,
            window: 100,
            min_std_dev: Duration::from_millis(50),
            acceptable_pause: Duration::ZERO,
            expected_interval: Duration::from_millis(100),
            initial_grace: Duration::from_secs(3),
        }
    }
}

/// The verdict on one peer, as of the last input that changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerStatus {
    /// Watched, never heard from, initial grace not yet over (or not watched).
    Unknown,
    /// Heard from, and phi was under the threshold at the last evaluation.
    Up,
    /// phi reached the threshold (or the initial grace passed in silence), and
    /// no heartbeat has arrived since.
    Down,
}

/// A verdict change, queued once per change and drained by
/// [`FailureDetector::poll_event`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DetectorEvent {
    /// The peer is now considered dead; `phi` is its suspicion at that moment.
    Down { peer: NodeId, phi: f64 },
    /// The peer was heard from while `Unknown` or `Down`.
    Up { peer: NodeId },
}

/// The last `limit` inter-arrival gaps of one peer, with exact running sums.
#[derive(Clone, Debug)]
struct IntervalWindow {
    limit: usize,
    gaps_ms: VecDeque<u64>,
    sum: u128,
    sum_of_squares: u128,
}

impl IntervalWindow {
    fn new(limit: usize) -> Self {
        debug_assert!((1..=MAX_WINDOW).contains(&limit));
        IntervalWindow {
            limit,
            gaps_ms: VecDeque::with_capacity(limit),
            sum: 0,
            sum_of_squares: 0,
        }
    }

    fn push(&mut self, gap_ms: u64) {
        let evicted = if self.gaps_ms.len() == self.limit {
            self.gaps_ms.pop_front()
        } else {
            None
        };
        if let Some(old) = evicted {
            self.sum -= u128::from(old);
            self.sum_of_squares -= u128::from(old) * u128::from(old);
        }
        let gap = gap_ms.min(MAX_INTERVAL_MS);
        self.gaps_ms.push_back(gap);
        self.sum += u128::from(gap);
        self.sum_of_squares += u128::from(gap) * u128::from(gap);
        debug_assert!(self.gaps_ms.len() <= self.limit);
    }

    /// Mean and population standard deviation in ms, or `None` when empty.
    fn mean_and_std_dev(&self) -> Option<(f64, f64)> {
        let n = self.gaps_ms.len() as u128;
        if n == 0 {
            return None;
        }
        // n² · variance = n · Σx² − (Σx)², exact in integers (and >= 0 by
        // Cauchy–Schwarz), so the only rounding is the final division.
        let scaled_variance = n * self.sum_of_squares - self.sum * self.sum;
        let n = n as f64;
        let mean = self.sum as f64 / n;
        let std_dev = (scaled_variance as f64).sqrt() / n;
        Some((mean, std_dev))
    }
}

/// What the detector knows about one watched peer.
#[derive(Clone, Debug)]
struct PeerState {
    status: PeerStatus,
    watched_at: Time,
    last_heard: Option<Time>,
    gaps: IntervalWindow,
}

/// Phi-accrual failure detector for the peers of one node. See the module doc.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    config: DetectorConfig,
    peers: BTreeMap<NodeId, PeerState>,
    events: VecDeque<DetectorEvent>,
}

impl FailureDetector {
    pub fn new(config: DetectorConfig) -> Self {
        FailureDetector {
            config,
            peers: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Starts tracking `peer` as `Unknown`; its initial grace runs from `now`.
    /// Watching a peer already watched changes nothing.
    pub fn watch(&mut self, peer: NodeId, now: Time) {
        let limit = self.config.window.clamp(1, MAX_WINDOW);
        self.peers.entry(peer).or_insert_with(|| PeerState {
            status: PeerStatus::Unknown,
            watched_at: now,
            last_heard: None,
            gaps: IntervalWindow::new(limit),
        });
    }

    /// Stops tracking `peer` and forgets its history. Events already queued
    /// for it stay queued.
    pub fn unwatch(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// Records a heartbeat from `peer` arriving at `now`. A peer that was
    /// `Unknown` or `Down` becomes `Up` and an `Up` event is queued.
    /// Ignored for peers not watched, and when stamped before the latest
    /// recorded arrival (see the module doc).
    pub fn heartbeat(&mut self, peer: NodeId, now: Time) {
        let config = &self.config;
        let Some(state) = self.peers.get_mut(&peer) else {
            tracing::trace!(%peer, %now, "heartbeat from unwatched peer ignored");
            return;
        };
        match state.last_heard {
            None => {
                // Akka's bootstrap: two samples around the expected interval,
                // so mean and deviation are sensible from the first heartbeat.
                let expected_ms = duration_ms(config.expected_interval);
                let spread = expected_ms / 4;
                state.gaps.push(expected_ms - spread);
                state.gaps.push(expected_ms.saturating_add(spread));
            }
            Some(last) if now < last => {
                tracing::debug!(%peer, %now, %last, "heartbeat older than the last one ignored");
                return;
            }
            Some(last) if now == last => {
                // Same millisecond: a duplicate delivery, not a zero-length gap.
            }
            Some(last) => {
                // Judged before this arrival counts: the gap that ends an
                // outage is not history (Akka does the same).
                let was_available = phi_at(config, state, now) < config.phi_threshold;
                if was_available {
                    state.gaps.push(now.as_millis() - last.as_millis());
                }
            }
        }
        state.last_heard = Some(now);
        if state.status != PeerStatus::Up {
            tracing::debug!(%peer, %now, from = ?state.status, "peer up");
            state.status = PeerStatus::Up;
            self.events.push_back(DetectorEvent::Up { peer });
        }
    }

    /// The suspicion level of `peer` at `now`: 0 right after a heartbeat,
    /// growing with silence, capped at [`PHI_MAX`]. A watched peer never heard
    /// from has phi 0 during its initial grace and `PHI_MAX` after it; a peer
    /// not watched has phi 0 (no evidence either way).
    pub fn phi(&self, peer: NodeId, now: Time) -> f64 {
        self.peers
            .get(&peer)
            .map_or(0.0, |state| phi_at(&self.config, state, now))
    }

    /// Whether `peer` looks alive at `now`: watched, and phi under the
    /// threshold. Unlike [`FailureDetector::status`] this needs no `evaluate`.
    pub fn is_available(&self, peer: NodeId, now: Time) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|state| phi_at(&self.config, state, now) < self.config.phi_threshold)
    }

    /// How long `peer` has been silent, if it does not look alive at `now`
    /// ([`FailureDetector::is_available`]): since its last heartbeat, or,
    /// never heard from, since it was watched (what this detector cannot
    /// vouch for, it counts from when it started looking). `None` while it
    /// looks alive, and for a peer not watched.
    pub fn down_for(&self, peer: NodeId, now: Time) -> Option<Duration> {
        let state = self.peers.get(&peer)?;
        if phi_at(&self.config, state, now) < self.config.phi_threshold {
            return None;
        }
        Some(now.saturating_since(state.last_heard.unwrap_or(state.watched_at)))
    }

    /// The verdict on `peer` as of the last `heartbeat`/`evaluate`;
    /// `Unknown` for a peer not watched.
    pub fn status(&self, peer: NodeId) -> PeerStatus {
        self.peers
            .get(&peer)
            .map_or(PeerStatus::Unknown, |state| state.status)
    }

    /// Recomputes every verdict at `now`, queueing a `Down` event for each
    /// peer that is newly suspected: an `Up` peer whose phi reached the
    /// threshold, or an `Unknown` peer whose initial grace is over. Only a
    /// heartbeat brings a peer back up.
    pub fn evaluate(&mut self, now: Time) {
        for (&peer, state) in &mut self.peers {
            let phi = phi_at(&self.config, state, now);
            let goes_down = match state.status {
                PeerStatus::Down => false,
                PeerStatus::Up => phi >= self.config.phi_threshold,
                PeerStatus::Unknown => {
                    debug_assert!(state.last_heard.is_none(), "a heard peer is never Unknown");
                    now.saturating_since(state.watched_at) >= self.config.initial_grace
                }
            };
            if goes_down {
                tracing::debug!(%peer, %now, phi, from = ?state.status, "peer down");
                state.status = PeerStatus::Down;
                self.events.push_back(DetectorEvent::Down { peer, phi });
            }
        }
    }

    /// The next queued verdict change, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<DetectorEvent> {
        self.events.pop_front()
    }

    /// Every watched peer with its verdict and last heartbeat, in `NodeId`
    /// order (for dashboards and metrics).
    pub fn peers(&self) -> impl Iterator<Item = (NodeId, PeerStatus, Option<Time>)> + '_ {
        self.peers
            .iter()
            .map(|(&peer, state)| (peer, state.status, state.last_heard))
    }
}

/// phi of one peer at `now`, per the rules in [`FailureDetector::phi`].
fn phi_at(config: &DetectorConfig, state: &PeerState, now: Time) -> f64 {
    let Some(last) = state.last_heard else {
        let grace_over = now.saturating_since(state.watched_at) >= config.initial_grace;
        return if grace_over { PHI_MAX } else { 0.0 };
    };
    let Some((mean, std_dev)) = state.gaps.mean_and_std_dev() else {
        // Unreachable: the first heartbeat seeds the window with two samples
        // (window >= 1 keeps at least one of them).
        debug_assert!(false, "heard peer with empty history");
        return 0.0;
    };
    let silence_ms = now.saturating_since(last).as_secs_f64() * 1000.0;
    let mean = mean + duration_ms_f64(config.acceptable_pause);
    let std_dev = std_dev
        .max(duration_ms_f64(config.min_std_dev))
        .max(STD_DEV_RESOLUTION_MS);
    phi_of(silence_ms, mean, std_dev)
}

/// `-log10(P(X > silence))` for `X ~ Normal(mean, std_dev)`, all in ms, with
/// the normal CDF replaced by Akka's logistic approximation
/// `CDF(y) ≈ 1 / (1 + exp(-a))`, `a = y·(1.5976 + 0.070566·y²)`,
/// `y = (silence - mean) / std_dev`.
///
/// Then `1 - CDF = 1 / (1 + exp(a))` and `phi = ln(1 + exp(a)) / ln 10`, a
/// softplus. Akka evaluates it in two branches to dodge cancellation; the
/// softplus form below never overflows or cancels: for `a > 0` it is
/// `a + ln(1 + exp(-a))`, otherwise `ln(1 + exp(a))`. `a` is non-decreasing in
/// `silence` (the cubic is increasing), so phi is too. `std_dev` must be
/// positive; the result is in `[0, PHI_MAX]`, never NaN.
fn phi_of(silence_ms: f64, mean_ms: f64, std_dev_ms: f64) -> f64 {
    debug_assert!(std_dev_ms > 0.0);
    let y = (silence_ms - mean_ms) / std_dev_ms;
    let a = y * (1.5976 + 0.070566 * y * y);
    let softplus = if a > 0.0 {
        a + (-a).exp().ln_1p()
    } else {
        a.exp().ln_1p()
    };
    let phi = softplus / std::f64::consts::LN_10;
    if phi.is_nan() {
        // Only reachable with NaN inputs, which the callers never pass; the
        // promise "never NaN" holds regardless.
        debug_assert!(
            false,
            "phi is NaN for silence={silence_ms} mean={mean_ms} std={std_dev_ms}"
        );
        return PHI_MAX;
    }
    phi.clamp(0.0, PHI_MAX)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn duration_ms_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PEER: NodeId = NodeId(2);
    const INTERVAL_MS: u64 = 100;

    fn ms(t: u64) -> Time {
        Time::from_millis(t)
    }

    fn drain(fd: &mut FailureDetector) -> Vec<DetectorEvent> {
        std::iter::from_fn(|| fd.poll_event()).collect()
    }

    /// Deterministic jitter source (Knuth's MMIX LCG); no global RNG in tests either.
    struct Lcg(u64);

    impl Lcg {
        /// Uniform-ish in `-max..=max`.
        fn jitter(&mut self, max: u64) -> i64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let span = 2 * max + 1;
            ((self.0 >> 33) % span) as i64 - max as i64
        }
    }

    /// Heartbeats `count` times, `INTERVAL_MS ± jitter_ms` apart, starting at
    /// `start`; returns the time of the last one.
    fn beat(
        fd: &mut FailureDetector,
        start: Time,
        count: usize,
        jitter_ms: u64,
        seed: u64,
    ) -> Time {
        let mut rng = Lcg(seed);
        let mut now = start;
        fd.heartbeat(PEER, now);
        for _ in 1..count {
            let gap = INTERVAL_MS as i64 + rng.jitter(jitter_ms);
            now = now + Duration::from_millis(gap.max(1) as u64);
            fd.heartbeat(PEER, now);
        }
        now
    }

    fn watched(config: DetectorConfig) -> FailureDetector {
        let mut fd = FailureDetector::new(config);
        fd.watch(PEER, Time::ZERO);
        fd
    }

    /// Mean and effective (floored) standard deviation the detector uses for PEER.
    fn effective_stats(fd: &FailureDetector) -> (f64, f64) {
        let (mean, std_dev) = fd.peers[&PEER].gaps.mean_and_std_dev().unwrap();
        let floor = duration_ms_f64(fd.config.min_std_dev).max(STD_DEV_RESOLUTION_MS);
        (
            mean + duration_ms_f64(fd.config.acceptable_pause),
            std_dev.max(floor),
        )
    }

    /// First silence (ms after `last`, 1 ms steps) at which phi reaches the threshold.
    fn time_to_suspicion(fd: &FailureDetector, last: Time) -> u64 {
        (0..100_000)
            .find(|&t| fd.phi(PEER, last + Duration::from_millis(t)) >= fd.config.phi_threshold)
            .expect("phi reaches the threshold within 100 s")
    }

    #[test]
    fn regular_heartbeats_keep_phi_low_and_peer_up() {
        let mut fd = watched(DetectorConfig::default());
        let mut now = Time::ZERO;
        for _ in 0..300 {
            now = now + Duration::from_millis(INTERVAL_MS);
            fd.heartbeat(PEER, now);
            // Just before the next heartbeat is due: the worst moment.
            let due = now + Duration::from_millis(INTERVAL_MS - 1);
            assert!(
                fd.phi(PEER, due) < 1.0,
                "phi {} at {due}",
                fd.phi(PEER, due)
            );
            assert!(fd.is_available(PEER, due));
            fd.evaluate(due);
            assert_eq!(fd.status(PEER), PeerStatus::Up);
        }
        assert_eq!(
            drain(&mut fd),
            vec![DetectorEvent::Up { peer: PEER }],
            "first contact only"
        );
        assert_eq!(
            fd.peers().collect::<Vec<_>>(),
            vec![(PEER, PeerStatus::Up, Some(now))]
        );
    }

    #[test]
    fn silence_raises_phi_monotonically_and_crosses_threshold_after_mean_plus_a_few_std_devs() {
        let mut fd = watched(DetectorConfig::default());
        let last = beat(&mut fd, ms(1_000), 200, 20, 7);
        drain(&mut fd);

        let mut previous = 0.0;
        for t in 0..2_000 {
            let phi = fd.phi(PEER, last + Duration::from_millis(t));
            assert!(
                phi >= previous,
                "phi fell from {previous} to {phi} at +{t}ms"
            );
            previous = phi;
        }
        assert!(previous > fd.config.phi_threshold);

        let crossing = time_to_suspicion(&fd, last);
        let (mean, std_dev) = effective_stats(&fd);
        let in_std_devs = (crossing as f64 - mean) / std_dev;
        println!(
            "100ms ± 20ms heartbeats: phi {} reached after {crossing}ms of silence \
             (mean {mean:.1}ms, std dev {std_dev:.1}ms: mean + {in_std_devs:.2} std devs)",
            fd.config.phi_threshold
        );
        // phi 8 is a tail probability of 1e-8: ~5.6 std devs for the exact
        // normal, ~5.2 for the logistic approximation.
        assert!((4.5..6.0).contains(&in_std_devs), "{in_std_devs} std devs");
        assert!(
            (150..2_000).contains(&crossing),
            "{crossing}ms: not 1.5x..20x the interval"
        );

        // evaluate() turns the crossing into exactly one Down event, on time.
        for t in 0..crossing {
            fd.evaluate(last + Duration::from_millis(t));
            assert_eq!(fd.status(PEER), PeerStatus::Up, "+{t}ms");
        }
        fd.evaluate(last + Duration::from_millis(crossing));
        assert_eq!(fd.status(PEER), PeerStatus::Down);
        assert!(!fd.is_available(PEER, last + Duration::from_millis(crossing)));
        let events = drain(&mut fd);
        assert!(
            matches!(events[..], [DetectorEvent::Down { peer: PEER, phi }] if phi >= 8.0),
            "{events:?}"
        );
        fd.evaluate(last + Duration::from_millis(crossing + 10_000));
        assert_eq!(drain(&mut fd), vec![], "a verdict change is reported once");
    }

    #[test]
    fn down_peer_that_heartbeats_again_is_up_with_exactly_one_up_event() {
        let mut fd = watched(DetectorConfig::default());
        let last = beat(&mut fd, ms(0), 50, 0, 1);
        fd.evaluate(last + Duration::from_secs(5));
        assert_eq!(fd.status(PEER), PeerStatus::Down);
        drain(&mut fd);

        let back = last + Duration::from_secs(6);
        fd.heartbeat(PEER, back);
        assert_eq!(fd.status(PEER), PeerStatus::Up);
        assert!(fd.is_available(PEER, back));
        fd.heartbeat(PEER, back + Duration::from_millis(100));
        fd.evaluate(back + Duration::from_millis(150));
        assert_eq!(drain(&mut fd), vec![DetectorEvent::Up { peer: PEER }]);
    }

    #[test]
    fn outage_gap_is_not_added_to_history() {
        let mut fd = watched(DetectorConfig::default());
        let last = beat(&mut fd, ms(0), 150, 0, 1);
        let before = fd.peers[&PEER].gaps.mean_and_std_dev();
        // Back after 60 s without an evaluate in between: still not history.
        fd.heartbeat(PEER, last + Duration::from_secs(60));
        assert_eq!(fd.peers[&PEER].gaps.mean_and_std_dev(), before);
        assert_eq!(before, Some((100.0, 0.0)));
    }

    #[test]
    fn never_heard_peer_is_unknown_until_initial_grace_then_down() {
        let config = DetectorConfig::default();
        let grace = config.initial_grace;
        let mut fd = FailureDetector::new(config);
        let watched_at = ms(10_000);
        fd.watch(PEER, watched_at);

        let almost = watched_at + (grace - Duration::from_millis(1));
        fd.evaluate(almost);
        assert_eq!(fd.status(PEER), PeerStatus::Unknown);
        assert_eq!(fd.phi(PEER, almost), 0.0);
        assert!(
            fd.is_available(PEER, almost),
            "benefit of the doubt during grace"
        );
        assert_eq!(drain(&mut fd), vec![]);

        let over = watched_at + grace;
        fd.evaluate(over);
        fd.evaluate(over + Duration::from_secs(1));
        assert_eq!(fd.status(PEER), PeerStatus::Down);
        assert!(!fd.is_available(PEER, over));
        assert_eq!(
            drain(&mut fd),
            vec![DetectorEvent::Down {
                peer: PEER,
                phi: PHI_MAX
            }]
        );
        assert_eq!(
            fd.peers().collect::<Vec<_>>(),
            vec![(PEER, PeerStatus::Down, None)]
        );

        fd.heartbeat(PEER, over + Duration::from_secs(2));
        assert_eq!(drain(&mut fd), vec![DetectorEvent::Up { peer: PEER }]);
    }

    #[test]
    fn first_heartbeat_during_grace_makes_peer_up() {
        let mut fd = watched(DetectorConfig::default());
        assert_eq!(fd.status(PEER), PeerStatus::Unknown);
        fd.heartbeat(PEER, ms(500));
        assert_eq!(fd.status(PEER), PeerStatus::Up);
        assert_eq!(drain(&mut fd), vec![DetectorEvent::Up { peer: PEER }]);
        // The bootstrap history (100ms ± 25ms) makes phi meaningful at once.
        assert!(fd.phi(PEER, ms(550)) < 1.0);
        assert!(fd.phi(PEER, ms(5_000)) > 8.0);
    }

    #[test]
    fn jittery_heartbeats_delay_suspicion_compared_to_regular_ones() {
        // A low floor so that the observed variance, not the floor, decides.
        let config = DetectorConfig {
            min_std_dev: Duration::from_millis(5),
            ..Default::default()
        };
        let mut regular = watched(config.clone());
        let mut jittery = watched(config);
        let last_regular = beat(&mut regular, ms(0), 300, 0, 1);
        let last_jittery = beat(&mut jittery, ms(0), 300, 50, 42);
        let (mean_r, std_r) = effective_stats(&regular);
        let (mean_j, std_j) = effective_stats(&jittery);
        assert!(
            (mean_r - mean_j).abs() < 10.0,
            "same mean: {mean_r} vs {mean_j}"
        );
        assert!(std_j > 4.0 * std_r, "{std_j} vs {std_r}");

        for silence in [150, 200, 300] {
            let d = Duration::from_millis(silence);
            let (phi_r, phi_j) = (
                regular.phi(PEER, last_regular + d),
                jittery.phi(PEER, last_jittery + d),
            );
            assert!(
                phi_j < phi_r,
                "after {silence}ms: jittery {phi_j} vs regular {phi_r}"
            );
        }
        let (suspect_r, suspect_j) = (
            time_to_suspicion(&regular, last_regular),
            time_to_suspicion(&jittery, last_jittery),
        );
        println!("suspicion after {suspect_r}ms (regular) vs {suspect_j}ms (± 50ms jitter)");
        assert!(suspect_j > suspect_r);
    }

    #[test]
    fn acceptable_pause_shifts_suspicion_later() {
        let pause = Duration::from_millis(500);
        let mut plain = watched(DetectorConfig::default());
        let mut patient = watched(DetectorConfig {
            acceptable_pause: pause,
            ..Default::default()
        });
        let last = beat(&mut plain, ms(0), 100, 0, 1);
        beat(&mut patient, ms(0), 100, 0, 1);
        let pause_ms = duration_ms(pause);
        assert_eq!(
            time_to_suspicion(&patient, last),
            time_to_suspicion(&plain, last) + pause_ms
        );
    }

    #[test]
    fn window_keeps_only_the_latest_gaps() {
        let mut fd = watched(DetectorConfig {
            window: 3,
            ..Default::default()
        });
        for t in [0, 100, 200, 300, 400, 430, 460] {
            fd.heartbeat(PEER, ms(t));
        }
        let gaps = &fd.peers[&PEER].gaps;
        assert_eq!(gaps.gaps_ms, [100, 30, 30]);
        assert_eq!(
            (gaps.sum, gaps.sum_of_squares),
            (160, 100 * 100 + 2 * 30 * 30)
        );

        // window 0 means 1, never an empty history.
        let mut fd = watched(DetectorConfig {
            window: 0,
            ..Default::default()
        });
        fd.heartbeat(PEER, ms(0));
        fd.heartbeat(PEER, ms(70));
        assert_eq!(fd.peers[&PEER].gaps.gaps_ms, [70]);
    }

    #[test]
    fn time_going_backwards_does_not_panic_and_is_ignored() {
        let mut fd = watched(DetectorConfig::default());
        fd.heartbeat(PEER, ms(1_000));
        fd.heartbeat(PEER, ms(1_100));
        let history = fd.peers[&PEER].gaps.gaps_ms.clone();

        fd.heartbeat(PEER, ms(500));
        fd.heartbeat(PEER, ms(1_100)); // same millisecond: no zero gap
        assert_eq!(fd.peers[&PEER].gaps.gaps_ms, history);
        assert_eq!(
            fd.peers().next(),
            Some((PEER, PeerStatus::Up, Some(ms(1_100))))
        );

        // Asking about the past sees no silence at all.
        assert_eq!(fd.phi(PEER, ms(0)), fd.phi(PEER, ms(1_100)));
        fd.evaluate(ms(0));
        fd.evaluate(ms(1_050));
        assert_eq!(fd.status(PEER), PeerStatus::Up);
        assert_eq!(drain(&mut fd), vec![DetectorEvent::Up { peer: PEER }]);
    }

    #[test]
    fn unwatched_peers_are_ignored() {
        let mut fd = FailureDetector::new(DetectorConfig::default());
        fd.heartbeat(PEER, ms(100));
        fd.evaluate(ms(10_000));
        assert_eq!(fd.status(PEER), PeerStatus::Unknown);
        assert_eq!(fd.phi(PEER, ms(10_000)), 0.0);
        assert!(
            !fd.is_available(PEER, ms(10_000)),
            "nobody vouches for a stranger"
        );
        assert_eq!(drain(&mut fd), vec![]);
        assert_eq!(fd.peers().count(), 0);

        fd.watch(PEER, ms(0));
        fd.heartbeat(PEER, ms(100));
        fd.unwatch(PEER);
        fd.heartbeat(PEER, ms(200));
        assert_eq!(fd.peers().count(), 0);
        assert_eq!(
            drain(&mut fd),
            vec![DetectorEvent::Up { peer: PEER }],
            "queued before unwatch"
        );
    }

    #[test]
    fn watch_is_idempotent() {
        let mut fd = watched(DetectorConfig::default());
        fd.heartbeat(PEER, ms(100));
        fd.watch(PEER, ms(200));
        assert_eq!(
            fd.peers().next(),
            Some((PEER, PeerStatus::Up, Some(ms(100))))
        );

        // The grace period runs from the first watch, not the latest.
        let other = NodeId(3);
        fd.watch(other, ms(0));
        fd.watch(other, ms(2_000));
        fd.evaluate(ms(3_000));
        assert_eq!(fd.status(other), PeerStatus::Down);
    }

    #[test]
    fn phi_of_extreme_inputs_is_finite_and_bounded() {
        for (silence, mean, std_dev) in [
            (0.0, 0.0, STD_DEV_RESOLUTION_MS),
            (f64::from(u32::MAX) * 1e9, 0.0, STD_DEV_RESOLUTION_MS),
            (0.0, 1e19, STD_DEV_RESOLUTION_MS),
            (1e19, 1e19, 1e19),
            (1.0, 0.0, 1e-300),
        ] {
            let phi = phi_of(silence, mean, std_dev);
            assert!(
                (0.0..=PHI_MAX).contains(&phi),
                "{phi} for {silence} {mean} {std_dev}"
            );
        }
        assert_eq!(phi_of(1e18, 0.0, 1.0), PHI_MAX);
        assert_eq!(phi_of(0.0, 1e18, 1.0), 0.0);
    }

    /// A short scripted life of three peers, as the node would see it.
    #[test]
    fn scenario_three_peers() {
        let (a, b, c) = (NodeId(1), NodeId(2), NodeId(3));
        let mut fd = FailureDetector::new(DetectorConfig::default());
        let mut log = String::new();
        let mut record = |fd: &mut FailureDetector, now: u64, what: &str| {
            log.push_str(&format!("{now:>5}ms {what}:"));
            while let Some(event) = fd.poll_event() {
                log.push_str(&match event {
                    DetectorEvent::Down { peer, phi } => format!(" {peer} down (phi {phi:.1})"),
                    DetectorEvent::Up { peer } => format!(" {peer} up"),
                });
            }
            log.push('\n');
        };
        for peer in [a, b, c] {
            fd.watch(peer, Time::ZERO);
        }
        for now in (100..=6_000).step_by(100) {
            // a beats throughout; b stops at 2s and comes back at 5s; c is never heard.
            if now <= 2_000 || now >= 5_000 {
                fd.heartbeat(b, ms(now));
            }
            fd.heartbeat(a, ms(now));
            record(&mut fd, now, "heartbeats");
            fd.evaluate(ms(now + 50));
            record(&mut fd, now + 50, "evaluate");
        }
        let changes: Vec<&str> = log.lines().filter(|line| !line.ends_with(':')).collect();
        insta::assert_snapshot!(changes.join("\n"), @r"
          100ms heartbeats: n2 up n1 up
         2450ms evaluate: n2 down (phi 15.4)
         3050ms evaluate: n3 down (phi 1000000.0)
         5000ms heartbeats: n2 up
        ");
    }

    proptest! {
        /// Whatever the arrivals (in order or not, bursty or sparse), phi
        /// afterwards is finite, >= 0, and never falls as silence grows.
        #[test]
        fn phi_is_finite_non_negative_and_non_decreasing_after_the_last_heartbeat(
            arrivals in prop::collection::vec(
                prop_oneof![0u64..10_000, 0u64..u64::MAX / 2],
                0..60,
            ),
            mut probes in prop::collection::vec(
                prop_oneof![0u64..20_000, 0u64..u64::MAX],
                1..40,
            ),
            window in 1usize..20,
            min_std_dev_ms in 0u64..200,
        ) {
            let config = DetectorConfig {
                window,
                min_std_dev: Duration::from_millis(min_std_dev_ms),
                ..Default::default()
            };
            let mut fd = watched(config);
            let mut arrivals = arrivals;
            arrivals.sort_unstable_by_key(|&t| t % 7); // mostly out of order
            for (i, &t) in arrivals.iter().enumerate() {
                fd.heartbeat(PEER, ms(t));
                if i % 3 == 0 {
                    fd.evaluate(ms(t.saturating_add(500)));
                }
            }
            let last = fd.peers().next().and_then(|(_, _, last)| last).unwrap_or(Time::ZERO);
            probes.sort_unstable();
            let mut previous = 0.0;
            for offset in probes {
                let now = ms(last.as_millis().saturating_add(offset));
                let phi = fd.phi(PEER, now);
                prop_assert!(phi.is_finite() && phi >= 0.0, "phi {} at {}", phi, now);
                prop_assert!(phi >= previous, "phi fell from {} to {} at {}", previous, phi, now);
                previous = phi;
                fd.evaluate(now);
            }
        }
    }
}
