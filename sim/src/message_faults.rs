//! Per-link message faults: the harness's side of the node's peer-client
//! fault hook (`ringkv_node::transport::faults`).
//!
//! [`LinkFaults`] holds, for each directed link `from -> to`, a
//! [`MessageFaults`] setting and a ChaCha8 RNG seeded from the cluster seed
//! and the link, and answers the hook's question for every batch: deliver,
//! drop, duplicate or delay. One RNG per link keeps a link's decisions
//! independent of how the scheduler interleaves the other links. A link
//! without faults answers Deliver without drawing a number, so a run that
//! never sets faults is unaffected by this module. The harness creates one
//! table per cluster, outside the nodes' `init`, so it outlives restarts.
//!
//! Not here: when faults are switched on (the nemesis, or a test), and how
//! the node applies a decision (its transport).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::NodeId;
use ringkv_node::transport::faults::{FaultDecision, PeerFaults};

/// What one directed link does to the peer batches sent over it.
///
/// Per batch, in this order: dropped with `drop_percent`; otherwise
/// duplicated with `duplicate_percent` (the copy follows after a delay drawn
/// from `delay`, or at once); otherwise held for a delay drawn uniformly from
/// `delay` if set, else delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageFaults {
    /// 0..=100.
    pub drop_percent: u32,
    /// 0..=100, of the batches not dropped.
    pub duplicate_percent: u32,
    /// Inclusive bounds of the delay of every batch that is not dropped.
    pub delay: Option<(Duration, Duration)>,
}

impl MessageFaults {
    /// Whether this setting changes anything.
    pub fn is_none(&self) -> bool {
        self.drop_percent == 0 && self.duplicate_percent == 0 && self.delay.is_none()
    }

    /// Draws one decision from `rng`.
    pub fn decide(&self, rng: &mut ChaCha8Rng) -> FaultDecision {
        if self.is_none() {
            return FaultDecision::Deliver;
        }
        if rng.random_range(0..100) < self.drop_percent {
            return FaultDecision::Drop;
        }
        let delay = self.delay.map(|(min, max)| {
            let (min, max) = (min.as_micros() as u64, max.as_micros() as u64);
            Duration::from_micros(rng.random_range(min..=max.max(min)))
        });
        if rng.random_range(0..100) < self.duplicate_percent {
            return FaultDecision::Duplicate(delay.unwrap_or(Duration::ZERO));
        }
        match delay {
            Some(d) => FaultDecision::Delay(d),
            None => FaultDecision::Deliver,
        }
    }
}

/// `drop=10% dup=5% delay=1..40ms` (the parts that are set; `none` if none).
impl fmt::Display for MessageFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.drop_percent > 0 {
            parts.push(format!("drop={}%", self.drop_percent));
        }
        if self.duplicate_percent > 0 {
            parts.push(format!("dup={}%", self.duplicate_percent));
        }
        if let Some((min, max)) = self.delay {
            parts.push(format!("delay={}..{}ms", min.as_millis(), max.as_millis()));
        }
        if parts.is_empty() {
            parts.push("none".to_owned());
        }
        f.write_str(&parts.join(" "))
    }
}

struct Link {
    faults: MessageFaults,
    rng: ChaCha8Rng,
}

/// Every directed link's [`MessageFaults`] and RNG. See the module docs.
pub struct LinkFaults {
    seed: u64,
    links: Mutex<BTreeMap<(NodeId, NodeId), Link>>,
}

impl fmt::Debug for LinkFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let links: BTreeMap<String, String> = self
            .lock()
            .iter()
            .filter(|(_, l)| !l.faults.is_none())
            .map(|((a, b), l)| (format!("{a}->{b}"), l.faults.to_string()))
            .collect();
        f.debug_struct("LinkFaults").field("links", &links).finish()
    }
}

/// A link's RNG seed: splitmix64 over the cluster seed and the link.
fn link_seed(seed: u64, from: NodeId, to: NodeId) -> u64 {
    let mut z = seed
        ^ 0x4C49_4E4B_FA17_5EED
        ^ from.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ to.0.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl LinkFaults {
    /// No faults on any link; RNGs derived from `seed`.
    pub fn new(seed: u64) -> Self {
        LinkFaults {
            seed,
            links: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(NodeId, NodeId), Link>> {
        // A decision is one draw: the table stays consistent if a holder panics.
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets what `from -> to` does from now on. The link's RNG carries on
    /// where it was, so a replay makes the same decisions.
    pub fn set(&self, from: NodeId, to: NodeId, faults: MessageFaults) {
        assert!(
            faults.drop_percent <= 100 && faults.duplicate_percent <= 100,
            "percentages are 0..=100: {faults:?}"
        );
        let seed = self.seed;
        self.lock()
            .entry((from, to))
            .or_insert_with(|| Link {
                faults: MessageFaults::default(),
                rng: ChaCha8Rng::seed_from_u64(link_seed(seed, from, to)),
            })
            .faults = faults;
    }

    /// What `from -> to` does now.
    pub fn get(&self, from: NodeId, to: NodeId) -> MessageFaults {
        self.lock()
            .get(&(from, to))
            .map(|l| l.faults)
            .unwrap_or_default()
    }

    /// Every link delivers again.
    pub fn clear(&self) {
        for link in self.lock().values_mut() {
            link.faults = MessageFaults::default();
        }
    }
}

impl PeerFaults for LinkFaults {
    fn decide(&self, from: NodeId, to: NodeId) -> FaultDecision {
        match self.lock().get_mut(&(from, to)) {
            Some(link) => link.faults.decide(&mut link.rng),
            None => FaultDecision::Deliver,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_link_without_faults_delivers_everything() {
        let t = LinkFaults::new(1);
        for _ in 0..100 {
            assert_eq!(t.decide(NodeId(1), NodeId(2)), FaultDecision::Deliver);
        }
        t.set(NodeId(1), NodeId(2), MessageFaults::default());
        assert_eq!(t.decide(NodeId(1), NodeId(2)), FaultDecision::Deliver);
    }

    #[test]
    fn decisions_follow_the_rates_and_bounds_and_only_on_their_link() {
        let t = LinkFaults::new(7);
        let faults = MessageFaults {
            drop_percent: 20,
            duplicate_percent: 25,
            delay: Some((ms(1), ms(40))),
        };
        t.set(NodeId(1), NodeId(2), faults);
        let (mut drops, mut dups, mut delays) = (0, 0, 0);
        for _ in 0..10_000 {
            match t.decide(NodeId(1), NodeId(2)) {
                FaultDecision::Drop => drops += 1,
                FaultDecision::Duplicate(d) | FaultDecision::Delay(d)
                    if d < ms(1) || d > ms(40) =>
                {
                    panic!("delay {d:?} out of bounds")
                }
                FaultDecision::Duplicate(_) => dups += 1,
                FaultDecision::Delay(_) => delays += 1,
                FaultDecision::Deliver => panic!("every kept batch is delayed"),
            }
            assert_eq!(t.decide(NodeId(2), NodeId(1)), FaultDecision::Deliver);
        }
        // 20% dropped; of the rest, 25% duplicated.
        assert!((1_800..2_200).contains(&drops), "{drops} drops");
        assert!((1_800..2_200).contains(&dups), "{dups} duplicates");
        assert_eq!(drops + dups + delays, 10_000);
        t.clear();
        assert_eq!(t.decide(NodeId(1), NodeId(2)), FaultDecision::Deliver);
        assert!(t.get(NodeId(1), NodeId(2)).is_none());
    }

    #[test]
    fn the_same_seed_makes_the_same_decisions_per_link() {
        let faults = MessageFaults {
            drop_percent: 30,
            duplicate_percent: 30,
            delay: Some((ms(0), ms(10))),
        };
        let run = |seed, interleave: bool| {
            let t = LinkFaults::new(seed);
            t.set(NodeId(1), NodeId(2), faults);
            t.set(NodeId(3), NodeId(2), faults);
            (0..50)
                .map(|_| {
                    if interleave {
                        let _ = t.decide(NodeId(3), NodeId(2));
                    }
                    t.decide(NodeId(1), NodeId(2))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5, false), run(5, false));
        // Another link's traffic does not shift this link's decisions.
        assert_eq!(run(5, false), run(5, true));
        assert_ne!(run(5, false), run(6, false));
    }

    #[test]
    fn a_setting_prints_as_the_nemesis_traces_it() {
        let f = MessageFaults {
            drop_percent: 10,
            duplicate_percent: 5,
            delay: Some((ms(1), ms(40))),
        };
        assert_eq!(f.to_string(), "drop=10% dup=5% delay=1..40ms");
        assert_eq!(MessageFaults::default().to_string(), "none");
    }
}
