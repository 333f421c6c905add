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
//! It also sets traps on particular messages (BUGGIFY-style, aimed at the
//! moments that matter): [`LinkFaults::arm_append_trap`] lets a node's next
//! log entries reach only the peers chosen and cuts the node off right
//! after, telling the nemesis, which crashes it then: a leader dies having
//! sent an entry to a minority.
//!
//! Not here: when faults are switched on (the nemesis, or a test), and how
//! the node applies a decision (its transport).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::io::PeerBatch;
use ringkv_core::raft::MessageBody;
use ringkv_core::{NodeId, PartitionId};
use ringkv_node::transport::faults::{FaultDecision, PeerFaults};
use tokio::sync::Notify;

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
    /// The armed append traps, per node (see [`LinkFaults::arm_append_trap`]).
    traps: Mutex<BTreeMap<NodeId, AppendTrap>>,
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
            traps: Mutex::new(BTreeMap::new()),
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

/// Which of a node's appends a trap waits for, and where it lets it go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrapSpec {
    pub node: NodeId,
    /// The peers the caught append may reach (empty: nobody).
    pub reach: BTreeSet<NodeId>,
    /// Only appends of this partition (`None`: any).
    pub partition: Option<PartitionId>,
    /// Only appends whose first entry is of an earlier term than the
    /// sender's: a new leader re-sending its predecessors' entries (the
    /// Figure 8 moment).
    pub old_entries_only: bool,
}

impl TrapSpec {
    /// The node's next entries, of any partition.
    pub fn next_entries(node: NodeId, reach: BTreeSet<NodeId>) -> Self {
        TrapSpec {
            node,
            reach,
            partition: None,
            old_entries_only: false,
        }
    }
}

/// A trap on one node's next log entries; see [`LinkFaults::arm_append_trap`].
#[derive(Debug)]
struct AppendTrap {
    spec: TrapSpec,
    sprung: Option<SprungTrap>,
    notify: Arc<Notify>,
}

/// What an append trap caught: the first batch of entries it let through
/// (or, with nobody to reach, dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SprungTrap {
    /// The peer that got the entries; `None` if the trap reached nobody.
    pub reached: Option<NodeId>,
    pub partition: PartitionId,
    /// `(term, index)` of the first and last entry of that append.
    pub first: (u64, u64),
    pub last: (u64, u64),
}

impl fmt::Display for SprungTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ((t0, i0), (t1, i1)) = (self.first, self.last);
        write!(
            f,
            "{} entries {t0}/{i0}..{t1}/{i1} reached ",
            self.partition
        )?;
        match self.reached {
            Some(n) => write!(f, "{n} only"),
            None => write!(f, "nobody"),
        }
    }
}

/// The first append in `batch` that `spec` waits for, as a trap would
/// report it (reaching nobody yet).
fn first_append(batch: &PeerBatch, spec: &TrapSpec) -> Option<SprungTrap> {
    batch.messages.iter().find_map(|gm| match &gm.message.body {
        MessageBody::Append { entries, .. }
            if !entries.is_empty()
                && spec.partition.is_none_or(|p| p == gm.partition)
                && (!spec.old_entries_only || entries[0].term < gm.message.term) =>
        {
            let (a, b) = (entries.first()?, entries.last()?);
            Some(SprungTrap {
                reached: None,
                partition: gm.partition,
                first: (a.term, a.index),
                last: (b.term, b.index),
            })
        }
        _ => None,
    })
}

impl LinkFaults {
    fn traps(&self) -> MutexGuard<'_, BTreeMap<NodeId, AppendTrap>> {
        self.traps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms a trap on `spec.node`'s next log entries (those `spec` waits
    /// for): the first batch it sends carrying them to a peer in
    /// `spec.reach` is delivered (with `reach` empty: the first such batch
    /// to anyone is dropped), such batches to other peers before it are
    /// dropped, and from then on everything the node sends is dropped until
    /// [`Self::disarm`]. The returned `Notify` is told when the trap
    /// springs, so that the nemesis can crash the node at that moment.
    /// Replaces a trap armed on the same node.
    pub fn arm_append_trap(&self, spec: TrapSpec) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let trap = AppendTrap {
            spec,
            sprung: None,
            notify: notify.clone(),
        };
        self.traps().insert(trap.spec.node, trap);
        notify
    }

    /// What the trap on `node` caught, once it has sprung.
    pub fn sprung(&self, node: NodeId) -> Option<SprungTrap> {
        self.traps().get(&node).and_then(|t| t.sprung.clone())
    }

    /// Removes the trap on `node`: its batches flow again.
    pub fn disarm(&self, node: NodeId) {
        self.traps().remove(&node);
    }

    /// Removes every trap.
    pub fn disarm_all(&self) {
        self.traps().clear();
    }

    /// The trap's verdict on a batch, if one is armed on its sender.
    fn trap_decision(&self, from: NodeId, to: NodeId, batch: &PeerBatch) -> Option<FaultDecision> {
        let mut traps = self.traps();
        let trap = traps.get_mut(&from)?;
        if trap.sprung.is_some() {
            return Some(FaultDecision::Drop);
        }
        let append = first_append(batch, &trap.spec)?;
        let reached = trap.spec.reach.contains(&to);
        if !reached && !trap.spec.reach.is_empty() {
            return Some(FaultDecision::Drop);
        }
        trap.sprung = Some(SprungTrap {
            reached: reached.then_some(to),
            ..append
        });
        trap.notify.notify_one();
        Some(match reached {
            true => FaultDecision::Deliver,
            false => FaultDecision::Drop,
        })
    }
}

impl PeerFaults for LinkFaults {
    fn decide(&self, from: NodeId, to: NodeId, batch: &PeerBatch) -> FaultDecision {
        if let Some(decision) = self.trap_decision(from, to, batch) {
            return decision;
        }
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

    /// A batch of heartbeats, say: nothing a trap looks at.
    const NO_ENTRIES: PeerBatch = PeerBatch {
        from: NodeId(0),
        to: NodeId(0),
        messages: Vec::new(),
        gossip: ringkv_core::io::Gossip {
            metadata_version: 0,
            metadata_leader: None,
            metadata: None,
        },
        placement: Vec::new(),
    };

    /// A batch from `from` to `to` carrying entries 2/5..2/6 of p3.
    fn append(from: u64, to: u64) -> PeerBatch {
        use ringkv_core::io::GroupMessage;
        use ringkv_core::raft::{Entry, EntryKind, Message};
        let entry = |index| Entry {
            index,
            term: 2,
            kind: EntryKind::Normal,
            data: bytes::Bytes::from_static(b"x"),
        };
        PeerBatch {
            from: NodeId(from),
            to: NodeId(to),
            messages: vec![GroupMessage {
                partition: PartitionId(3),
                message: Message {
                    from: NodeId(from),
                    to: NodeId(to),
                    term: 2,
                    body: MessageBody::Append {
                        prev_index: 4,
                        prev_term: 1,
                        entries: vec![entry(5), entry(6)],
                        commit: 4,
                    },
                },
            }],
            gossip: Default::default(),
            placement: Vec::new(),
        }
    }

    #[madsim::test]
    async fn an_append_trap_lets_one_append_reach_its_peer_then_cuts_the_node_off() {
        let t = LinkFaults::new(1);
        let notify = t.arm_append_trap(TrapSpec::next_entries(
            NodeId(1),
            BTreeSet::from([NodeId(3)]),
        ));
        // Heartbeats pass; entries to a peer out of reach are dropped.
        assert_eq!(
            t.decide(NodeId(1), NodeId(2), &NO_ENTRIES),
            FaultDecision::Deliver
        );
        assert_eq!(
            t.decide(NodeId(1), NodeId(2), &append(1, 2)),
            FaultDecision::Drop
        );
        assert_eq!(t.sprung(NodeId(1)), None);
        // Other senders are untouched.
        assert_eq!(
            t.decide(NodeId(2), NodeId(3), &append(2, 3)),
            FaultDecision::Deliver
        );
        // The first append to n3 goes, and springs the trap.
        assert_eq!(
            t.decide(NodeId(1), NodeId(3), &append(1, 3)),
            FaultDecision::Deliver
        );
        let sprung = t.sprung(NodeId(1)).expect("sprung");
        assert_eq!(sprung.to_string(), "p3 entries 2/5..2/6 reached n3 only");
        // The notification waits for the nemesis even if nobody listened yet.
        notify.notified().await;
        // From then on the node is cut off, until disarmed.
        assert_eq!(
            t.decide(NodeId(1), NodeId(3), &NO_ENTRIES),
            FaultDecision::Drop
        );
        assert_eq!(
            t.decide(NodeId(1), NodeId(3), &append(1, 3)),
            FaultDecision::Drop
        );
        t.disarm(NodeId(1));
        assert_eq!(
            t.decide(NodeId(1), NodeId(3), &append(1, 3)),
            FaultDecision::Deliver
        );
    }

    #[test]
    fn an_append_trap_reaching_nobody_drops_the_first_append() {
        let t = LinkFaults::new(1);
        t.arm_append_trap(TrapSpec::next_entries(NodeId(1), BTreeSet::new()));
        assert_eq!(
            t.decide(NodeId(1), NodeId(2), &append(1, 2)),
            FaultDecision::Drop
        );
        assert_eq!(
            t.sprung(NodeId(1)).expect("sprung").to_string(),
            "p3 entries 2/5..2/6 reached nobody"
        );
    }

    #[test]
    fn a_trap_can_wait_for_one_partition_and_for_old_entries() {
        let t = LinkFaults::new(1);
        t.arm_append_trap(TrapSpec {
            node: NodeId(1),
            reach: BTreeSet::from([NodeId(2)]),
            partition: Some(PartitionId(3)),
            old_entries_only: true,
        });
        // append() sends entries of term 2 in a message of term 2: not old.
        assert_eq!(
            t.decide(NodeId(1), NodeId(2), &append(1, 2)),
            FaultDecision::Deliver
        );
        assert_eq!(t.sprung(NodeId(1)), None);
        let mut old = append(1, 2);
        old.messages[0].message.term = 4;
        let mut elsewhere = old.clone();
        elsewhere.messages[0].partition = PartitionId(5);
        assert_eq!(
            t.decide(NodeId(1), NodeId(2), &elsewhere),
            FaultDecision::Deliver
        );
        assert_eq!(t.decide(NodeId(1), NodeId(2), &old), FaultDecision::Deliver);
        assert!(t.sprung(NodeId(1)).is_some());
        assert_eq!(
            t.decide(NodeId(1), NodeId(2), &elsewhere),
            FaultDecision::Drop
        );
    }

    #[test]
    fn a_link_without_faults_delivers_everything() {
        let t = LinkFaults::new(1);
        for _ in 0..100 {
            assert_eq!(
                t.decide(NodeId(1), NodeId(2), &NO_ENTRIES),
                FaultDecision::Deliver
            );
        }
        t.set(NodeId(1), NodeId(2), MessageFaults::default());
        assert_eq!(
            t.decide(NodeId(1), NodeId(2), &NO_ENTRIES),
            FaultDecision::Deliver
        );
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
            match t.decide(NodeId(1), NodeId(2), &NO_ENTRIES) {
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
            assert_eq!(
                t.decide(NodeId(2), NodeId(1), &NO_ENTRIES),
                FaultDecision::Deliver
            );
        }
        // 20% dropped; of the rest, 25% duplicated.
        assert!((1_800..2_200).contains(&drops), "{drops} drops");
        assert!((1_800..2_200).contains(&dups), "{dups} duplicates");
        assert_eq!(drops + dups + delays, 10_000);
        t.clear();
        assert_eq!(
            t.decide(NodeId(1), NodeId(2), &NO_ENTRIES),
            FaultDecision::Deliver
        );
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
                        let _ = t.decide(NodeId(3), NodeId(2), &NO_ENTRIES);
                    }
                    t.decide(NodeId(1), NodeId(2), &NO_ENTRIES)
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
