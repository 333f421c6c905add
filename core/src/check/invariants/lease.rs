//! Lease safety (Raft thesis §6.4.1): a leader serves a read from its lease
//! only while no other leader can exist, that is, before any follower that
//! acknowledged the heartbeat round the lease rests on could vote again.
//! Broken by a lease longer than the drift bound allows
//! (`RaftConfig::lease_ticks`), or by judging it on a count of ticks that
//! fell behind real time (a stalled event loop, a paused process).
//!
//! This is the one property judged on time, so it needs the harness's
//! global clock ([`super::Invariants::observe_at`]) and a bound: how soon
//! after receiving a round a follower may vote again at the earliest, which
//! is `election_ticks - 1` of its ticks at the fastest a clock within the
//! drift bound runs (`(E - 1) * tick / (1 + max_drift)`). A follower
//! receives a round after it was sent, so a lease read served that long
//! after the round's [`Observed::RoundSent`] may already race a new leader.
//! Without a bound (or without times) nothing is judged.
//!
//! It also judges the other half of the argument directly: when a leader of
//! term `t` serves a lease read, no leader of a later term of that
//! partition may have been elected yet. This catches a follower that
//! votes too soon for any reason other than the leader's arithmetic: one
//! that restarted and forgot whom it acknowledged, or that honoured a
//! transfer the lease did not expect. That half assumes every clock stays
//! within the drift bound; a harness whose clocks jump turns it off
//! ([`LeaseSafety::clocks_may_jump`]): a follower whose clock jumped ahead
//! votes early, which no leader can help.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::node::{Observation, Observed};
use crate::types::{NodeId, PartitionId};

#[derive(Debug, Default)]
pub struct LeaseSafety {
    /// How long after a round's sending a lease read on it may be served.
    bound: Option<Duration>,
    /// When each (leader, partition, term, round) went out.
    sent: BTreeMap<(NodeId, PartitionId, u64, u64), Duration>,
    /// When each partition's leader of each term was first elected, and who.
    elected: BTreeMap<(PartitionId, u64), (Duration, NodeId)>,
    /// Judge that no later leader exists at a lease read (clocks stay
    /// within the drift bound).
    exclusive: bool,
}

impl LeaseSafety {
    pub fn new(bound: Option<Duration>) -> Self {
        LeaseSafety {
            bound,
            sent: BTreeMap::new(),
            elected: BTreeMap::new(),
            exclusive: true,
        }
    }

    /// Clocks may jump (beyond any drift bound): judge only the leader's own
    /// arithmetic, not whether a later leader was elected before a read.
    pub fn clocks_may_jump(&mut self) {
        self.exclusive = false;
    }

    /// `at`: the global time of the observation, on any fixed origin.
    pub fn observe_at(&mut self, o: &Observation, at: Duration) -> Option<String> {
        let bound = self.bound?;
        match o.what {
            Observed::RoundSent { term, round } => {
                // The first report of a round is when it went out.
                self.sent
                    .entry((o.node, o.partition, term, round))
                    .or_insert(at);
                None
            }
            Observed::BecameLeader { term, .. } => {
                self.elected
                    .entry((o.partition, term))
                    .or_insert((at, o.node));
                None
            }
            Observed::LeaseRead { term, round } => {
                let mut later = self
                    .elected
                    .range((o.partition, term + 1)..=(o.partition, u64::MAX))
                    .filter(|_| self.exclusive);
                if let Some((&(_, later_term), &(when, leader))) =
                    later.find(|&(_, &(when, _))| when < at)
                {
                    return Some(format!(
                        "served a lease read in term {term}, but {leader} was elected \
                         leader of term {later_term} {:?} before",
                        at - when
                    ));
                }
                let sent = *self.sent.get(&(o.node, o.partition, term, round))?;
                let age = at.saturating_sub(sent);
                (age >= bound).then(|| {
                    format!(
                        "round {round} went out {age:?} before, but a follower that \
                         acknowledged it may vote again {bound:?} after it"
                    )
                })
            }
            Observed::Started { .. } => {
                // Rounds of an earlier incarnation are over.
                self.sent
                    .retain(|&(n, p, _, _), _| (n, p) != (o.node, o.partition));
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::invariants::testkit::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn round(node: u64, term: u64, round: u64) -> Observation {
        at(node, Observed::RoundSent { term, round })
    }

    fn lease_read(node: u64, term: u64, round: u64) -> Observation {
        at(node, Observed::LeaseRead { term, round })
    }

    #[test]
    fn reads_within_the_bound_pass() {
        let mut c = LeaseSafety::new(Some(ms(400)));
        assert_eq!(c.observe_at(&round(1, 2, 7), ms(1000)), None);
        assert_eq!(c.observe_at(&lease_read(1, 2, 7), ms(1000)), None);
        assert_eq!(c.observe_at(&lease_read(1, 2, 7), ms(1399)), None);
    }

    #[test]
    fn a_read_at_or_past_the_bound_is_caught() {
        let mut c = LeaseSafety::new(Some(ms(400)));
        c.observe_at(&round(1, 2, 7), ms(1000));
        let v = c
            .observe_at(&lease_read(1, 2, 7), ms(1400))
            .expect("violation");
        assert_eq!(
            v,
            "round 7 went out 400ms before, but a follower that acknowledged it \
             may vote again 400ms after it"
        );
    }

    #[test]
    fn a_round_reported_again_keeps_its_first_time() {
        let mut c = LeaseSafety::new(Some(ms(400)));
        c.observe_at(&round(1, 2, 7), ms(1000));
        c.observe_at(&round(1, 2, 7), ms(1300));
        assert!(c.observe_at(&lease_read(1, 2, 7), ms(1450)).is_some());
    }

    #[test]
    fn rounds_are_told_apart_by_node_term_and_number() {
        let mut c = LeaseSafety::new(Some(ms(400)));
        c.observe_at(&round(1, 2, 7), ms(1000));
        c.observe_at(&round(1, 2, 8), ms(1300));
        assert_eq!(c.observe_at(&lease_read(1, 2, 8), ms(1500)), None);
        assert!(c.observe_at(&lease_read(1, 2, 7), ms(1500)).is_some());
        // Another node's or term's round 7 is not this one.
        assert_eq!(c.observe_at(&lease_read(2, 2, 7), ms(1500)), None);
        assert_eq!(c.observe_at(&lease_read(1, 3, 7), ms(1500)), None);
    }

    #[test]
    fn a_read_after_a_later_leader_was_elected_is_caught() {
        let mut c = LeaseSafety::new(Some(ms(400)));
        c.observe_at(&round(1, 2, 7), ms(1000));
        // A leader of the same term (itself), or of a later term elected
        // after the read, is no contradiction.
        c.observe_at(&leader(1, 2, 1, 5), ms(900));
        assert_eq!(c.observe_at(&lease_read(1, 2, 7), ms(1100)), None);
        c.observe_at(&leader(3, 3, 2, 6), ms(1100));
        assert_eq!(c.observe_at(&lease_read(1, 2, 7), ms(1100)), None);
        let v = c
            .observe_at(&lease_read(1, 2, 7), ms(1150))
            .expect("violation");
        assert_eq!(
            v,
            "served a lease read in term 2, but n3 was elected leader of term 3 50ms before"
        );
        // Another partition's elections are not this one's.
        let mut other = LeaseSafety::new(Some(ms(400)));
        other.observe_at(&round(1, 2, 7), ms(1000));
        let mut elsewhere = leader(3, 3, 2, 6);
        elsewhere.partition = PartitionId(1);
        other.observe_at(&elsewhere, ms(1050));
        assert_eq!(other.observe_at(&lease_read(1, 2, 7), ms(1100)), None);
        // With clocks that may jump, only the leader's arithmetic is judged.
        let mut jumping = LeaseSafety::new(Some(ms(400)));
        jumping.clocks_may_jump();
        jumping.observe_at(&round(1, 2, 7), ms(1000));
        jumping.observe_at(&leader(3, 3, 2, 6), ms(1100));
        assert_eq!(jumping.observe_at(&lease_read(1, 2, 7), ms(1150)), None);
        assert!(jumping.observe_at(&lease_read(1, 2, 7), ms(1400)).is_some());
    }

    #[test]
    fn a_restart_forgets_its_rounds_and_no_bound_judges_nothing() {
        let mut c = LeaseSafety::new(Some(ms(400)));
        c.observe_at(&round(1, 2, 7), ms(1000));
        c.observe_at(&started(1, 0, 0), ms(1100));
        assert_eq!(c.observe_at(&lease_read(1, 2, 7), ms(9000)), None);
        let mut off = LeaseSafety::new(None);
        off.observe_at(&round(1, 2, 7), ms(1000));
        assert_eq!(off.observe_at(&lease_read(1, 2, 7), ms(9000)), None);
    }
}
