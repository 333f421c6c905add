//! Node-level scenarios: many partitions on a few nodes. A deterministic
//! harness (1 ms links, disks that complete every write at once) drives real
//! `Node`s; each scenario's narrated transcript is an `insta` snapshot, and
//! the properties it demonstrates are asserted as well.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::io::{Lane, PeerBatch, Transmit, WalRecord};
use ringkv_core::kv::Precondition;
use ringkv_core::node::{
    ClientRequest, Consistency, Event, Node, NodeConfig, Recovered, Reply, RequestId,
};
use ringkv_core::raft::{PersistRecord, RaftEvent, Role};
use ringkv_core::ring::RingConfig;
use ringkv_core::routing::Hops;
use ringkv_core::{NodeId, PartitionId, Time};

struct Cluster {
    nodes: Vec<Node>,
    disks: Vec<Vec<WalRecord>>,
    down: BTreeSet<usize>,
    /// Links cut one way: (from, to) node indexes.
    cut: BTreeSet<(usize, usize)>,
    now: Time,
    net: Vec<(Time, usize, PeerBatch)>,
    out: String,
    /// Per (from, to): batches and messages sent since the last `reset_counts`.
    batches: BTreeMap<(u64, u64), (u64, u64)>,
    /// Largest number of batches of one lane one flush of one node sent to
    /// one peer.
    max_batches_per_peer_per_flush: usize,
    quiet_events: bool,
    /// Batches that carried a metadata document, since the last reset.
    documents_pushed: u64,
    /// `Event::MetadataChanged` per node index, and the versions seen.
    metadata_events: BTreeMap<usize, Vec<u64>>,
    /// Every reply, by request id (the latest, if an id is reused).
    replies: BTreeMap<u64, Reply>,
    /// Per node: how far its wall clock is ahead of true time, ms
    /// (negative: behind). True time starts at `WALL_EPOCH_MS`.
    wall_offsets_ms: Vec<i64>,
}

/// True wall-clock time at `Time::ZERO` in the scenarios: 2027-01-15.
const WALL_EPOCH_MS: u64 = 1_800_000_000_000;

impl Cluster {
    fn new(n: u64, partitions: u32) -> Self {
        Self::with_config(n, partitions, |_| {})
    }

    fn with_config(n: u64, partitions: u32, tweak: impl Fn(&mut NodeConfig)) -> Self {
        let nodes = (1..=n)
            .map(|id| {
                let mut cfg = NodeConfig::new(NodeId(id), (1..=n).map(NodeId).collect());
                cfg.ring = RingConfig {
                    partition_count: partitions,
                    replication_factor: 3,
                    tokens_per_node: 64,
                };
                tweak(&mut cfg);
                Node::new(cfg, id, Recovered::default()).expect("start")
            })
            .collect();
        Cluster {
            nodes,
            disks: vec![Vec::new(); n as usize],
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            now: Time::ZERO,
            net: Vec::new(),
            out: String::new(),
            batches: BTreeMap::new(),
            max_batches_per_peer_per_flush: 0,
            quiet_events: false,
            documents_pushed: 0,
            metadata_events: BTreeMap::new(),
            replies: BTreeMap::new(),
            wall_offsets_ms: vec![0; n as usize],
        }
    }

    /// True wall-clock time now, Unix ms.
    fn true_wall_ms(&self) -> u64 {
        WALL_EPOCH_MS + self.now.as_millis()
    }

    /// Node `i` reads its (skewed) wall clock.
    fn tell_wall_clock(&mut self, i: usize) {
        // Nodes added by a scenario keep true time.
        let offset = self.wall_offsets_ms.get(i).copied().unwrap_or(0);
        let wall = self.true_wall_ms() as i64 + offset;
        self.nodes[i].handle_wall_clock(wall as u64);
    }

    /// Node `i` crashes and starts again from what it persisted (every IO
    /// here is durable at once).
    fn restart(&mut self, i: usize) {
        let cfg = self.nodes[i].config().clone();
        let recovered = Recovered::replay(self.disks[i].clone());
        self.nodes[i] = Node::new(cfg, 1000 + i as u64, recovered).expect("restart");
    }

    fn say(&mut self, s: &str) {
        self.out.push_str(s);
        self.out.push('\n');
    }

    /// Drains node `i`: persists its IO at once, queues its batches.
    fn drain(&mut self, i: usize) {
        loop {
            let mut progressed = false;
            let mut sent_to = BTreeMap::new();
            while let Some(Transmit {
                to,
                lane,
                bytes,
                batch: b,
            }) = self.nodes[i].poll_transmit()
            {
                // What a transport relies on: the size bound holds, and
                // the lane is bulk exactly when a message carries entries
                // or snapshot bytes.
                let encoded = ringkv_core::wire::encode_peer_batch(&b).len();
                assert!(
                    encoded <= bytes,
                    "batch of {encoded} bytes exceeds its bound {bytes}"
                );
                let bulk = b.messages.iter().any(|gm| gm.message.body.is_bulk());
                self.documents_pushed += u64::from(b.gossip.metadata.is_some());
                assert_eq!(lane == Lane::Bulk, bulk, "lane {lane:?} of {b:?}");
                *sent_to.entry((to, lane)).or_insert(0usize) += 1;
                let e = self.batches.entry((b.from.0, to.0)).or_default();
                e.0 += 1;
                e.1 += b.messages.len() as u64;
                self.net
                    .push((self.now + Duration::from_millis(1), (to.0 - 1) as usize, b));
                progressed = true;
            }
            let worst = sent_to.values().copied().max().unwrap_or(0);
            self.max_batches_per_peer_per_flush = self.max_batches_per_peer_per_flush.max(worst);
            while let Some(io) = self.nodes[i].poll_io() {
                self.disks[i].extend(io.records);
                let now = self.now;
                self.nodes[i].handle_persisted(now, io.id);
                progressed = true;
            }
            while let Some(ev) = self.nodes[i].poll_event() {
                let line = match ev {
                    Event::Raft {
                        partition,
                        event:
                            RaftEvent::RoleChanged {
                                role: Role::Leader,
                                term,
                                ..
                            },
                    } => Some(format!(
                        "{} n{}: leads {partition} (term {term})",
                        self.now,
                        i + 1
                    )),
                    Event::Raft {
                        partition,
                        event: RaftEvent::Woke,
                    } => Some(format!("{} n{}: {partition} woke", self.now, i + 1)),
                    Event::PeerDown { peer } => Some(format!(
                        "{} n{}: detector says {peer} is down",
                        self.now,
                        i + 1
                    )),
                    Event::PeerUp { peer } => Some(format!(
                        "{} n{}: detector says {peer} is up",
                        self.now,
                        i + 1
                    )),
                    Event::MetadataChanged { version } => {
                        self.metadata_events.entry(i).or_default().push(version);
                        None
                    }
                    _ => None,
                };
                if let Some(l) = line
                    && !self.quiet_events
                {
                    self.say(&l);
                }
            }
            while let Some((id, reply)) = self.nodes[i].poll_reply() {
                self.replies.insert(id.0, reply.clone());
                let l = format!(
                    "{} n{}: reply to request {}: {reply:?}",
                    self.now,
                    i + 1,
                    id.0
                );
                self.say(&l);
            }
            if !progressed {
                break;
            }
        }
    }

    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now = self.now + Duration::from_millis(1);
            for i in 0..self.nodes.len() {
                if self.down.contains(&i) {
                    continue;
                }
                let now = self.now;
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= now) {
                    self.tell_wall_clock(i);
                    self.nodes[i].handle_timeout(now);
                    self.drain(i);
                }
            }
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.net)
                .into_iter()
                .partition(|(at, _, _)| *at <= now);
            self.net = later;
            for (_, j, b) in due {
                let from = (b.from.0 - 1) as usize;
                if self.down.contains(&j)
                    || self.down.contains(&from)
                    || self.cut.contains(&(from, j))
                {
                    continue;
                }
                self.tell_wall_clock(j);
                self.nodes[j].handle_message(now, b);
                self.drain(j);
            }
        }
    }

    fn request(&mut self, i: usize, id: u64, req: ClientRequest) {
        let now = self.now;
        self.tell_wall_clock(i);
        self.nodes[i].handle_request(now, RequestId(id), req, Hops(0));
        self.drain(i);
    }

    /// The index of the node that leads the metadata group (the
    /// placement controller), if one does.
    fn controller(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            !self.down.contains(&i)
                && self.nodes[i]
                    .raft(ringkv_core::metadata::METADATA_GROUP)
                    .is_some_and(|r| r.is_leader())
        })
    }

    fn leaders(&self) -> BTreeMap<PartitionId, NodeId> {
        let mut m = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if self.down.contains(&i) {
                continue;
            }
            for p in n.partitions() {
                if n.raft(p).is_some_and(|r| r.is_leader()) {
                    m.insert(p, n.id());
                }
            }
        }
        m
    }

    fn report_traffic(&mut self) {
        let lines: Vec<String> = self
            .batches
            .iter()
            .map(|((f, t), (b, m))| format!("  n{f}->n{t}: {b} batches, {m} group messages"))
            .collect();
        for l in lines {
            self.say(&l);
        }
        self.batches.clear();
    }
}

fn put(key: &str, value: &str) -> ClientRequest {
    ClientRequest::put(key.to_string(), value.to_string())
}

#[test]
fn many_partitions_one_batch_per_peer_per_flush() {
    let mut c = Cluster::new(3, 32);
    c.say("# 3 nodes, 32 partitions, replication factor 3: every node hosts all 32");
    c.say("# groups. Each node's first tick starts elections for the partitions whose");
    c.say("# first ring replica it is, so leadership is spread out from the start.");
    c.quiet_events = true;
    c.run_for(300);
    let leaders = c.leaders();
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for n in leaders.values() {
        *per_node.entry(*n).or_default() += 1;
    }
    let line = format!("{} leaders per node: {per_node:?}", c.now);
    c.say(&line);
    assert_eq!(leaders.len(), 32, "every partition elected a leader");
    c.report_traffic();

    c.say("");
    c.say("# 64 writes arrive at n1 at once, spread over every partition. n1 proposes");
    c.say("# those it leads and forwards the rest; the appends for all its groups to");
    c.say("# one peer leave in one bulk batch per flush, and everything else (answers,");
    c.say("# heartbeats) in one control batch.");
    c.quiet_events = false;
    let mut forwards = 0;
    for k in 0..64 {
        let now = c.now;
        c.nodes[0].handle_request(now, RequestId(k), put(&format!("key{k}"), "v"), Hops(0));
        while let Some((_, r)) = c.nodes[0].poll_reply() {
            if matches!(r, Reply::Forward { .. }) {
                forwards += 1;
            }
        }
    }
    c.drain(0);
    let line = format!(
        "{} n1 forwarded {forwards} of 64 writes to their leaders",
        c.now
    );
    c.say(&line);
    c.report_traffic();
    c.run_for(20);
    c.report_traffic();
    assert_eq!(
        c.max_batches_per_peer_per_flush, 1,
        "a flush sends at most one batch per lane per peer while they fit in max_batch_bytes"
    );
    insta::assert_snapshot!(c.out);
}

#[test]
fn idle_groups_quiesce_and_wake() {
    let mut c = Cluster::new(3, 8);
    c.say("# 3 nodes, 8 partitions. After elections, the controller's leader");
    c.say("# balancing and a little idle time, every group quiesces: the only traffic");
    c.say("# left is one empty node-level heartbeat batch per peer per heartbeat");
    c.say("# interval (100 ms), and each node's report to the controller (n1).");
    c.quiet_events = true;
    c.run_for(3000);
    c.quiet_events = false;
    let quiesced = c.nodes.iter().all(|n| {
        n.partitions()
            .all(|p| n.raft(p).is_some_and(|r| r.is_quiesced()))
    });
    let line = format!("{} all groups quiesced: {quiesced}", c.now);
    c.say(&line);
    assert!(quiesced);
    c.batches.clear();
    c.run_for(1000);
    c.say("traffic over the next second:");
    let msgs: u64 = c.batches.values().map(|(_, m)| m).sum();
    c.report_traffic();
    assert_eq!(msgs, 0, "quiesced groups send nothing");

    c.say("");
    c.say("# A write wakes only its own group; the others stay quiet.");
    let p = c.nodes[0].ring().partition_of(b"hello");
    let leader = c.leaders()[&p];
    let line = format!("key 'hello' is in {p}, led by {leader}");
    c.say(&line);
    c.request((leader.0 - 1) as usize, 1, put("hello", "world"));
    c.run_for(50);
    let awake: Vec<PartitionId> = c.nodes[0]
        .partitions()
        .filter(|&q| !c.nodes[0].raft(q).unwrap().is_quiesced())
        .collect();
    let line = format!("{} awake on n1: {awake:?}", c.now);
    c.say(&line);
    assert_eq!(awake, vec![p]);
    c.run_for(1000);
    let again = c.nodes.iter().all(|n| {
        n.partitions()
            .all(|q| n.raft(q).is_some_and(|r| r.is_quiesced()))
    });
    let line = format!("{} all groups quiesced again: {again}", c.now);
    c.say(&line);
    assert!(again);

    c.say("");
    c.say("# n1 stops. Its peers' phi-accrual detectors notice the silence; the");
    c.say("# quiesced groups it led wake up and elect new leaders among n2 and n3.");
    let led_by_1: Vec<PartitionId> = c
        .leaders()
        .iter()
        .filter(|(_, l)| l.0 == 1)
        .map(|(p, _)| *p)
        .collect();
    c.down.insert(0);
    c.quiet_events = false;
    c.run_for(3000);
    let leaders = c.leaders();
    for p in &led_by_1 {
        assert!(leaders.get(p).is_some_and(|l| l.0 != 1), "{p} re-elected");
    }
    let line = format!("{} leaders: {leaders:?}", c.now);
    c.say(&line);
    insta::assert_snapshot!(c.out);
}

/// Issue 9: a WAL past its allowance asks for every partition at once. With
/// a thousand small partitions the byte pace alone let a thousand snapshot
/// files (two fsyncs each) into one storage batch, and commits queued behind
/// them stalled for seconds. A snapshot costs at least
/// `snapshot_cost_floor_bytes` of the pace, so ticks take a few at a time.
#[test]
fn compaction_of_many_small_partitions_is_paced_by_count() {
    let mut c = Cluster::new(3, 16);
    c.quiet_events = true;
    c.run_for(300);
    assert_eq!(c.leaders().len(), 16, "every partition elected a leader");
    let cfg = NodeConfig::new(NodeId(1), vec![NodeId(1)]);
    let per_tick = cfg.max_snapshot_bytes_per_tick / cfg.snapshot_cost_floor_bytes;
    assert!(
        (1..16).contains(&per_tick),
        "the defaults pace 16 partitions over several ticks"
    );
    let all: Vec<PartitionId> = (0..16).map(PartitionId).collect();
    let before = c.nodes[0].stats().compactions;
    let now = c.now;
    c.nodes[0].handle_compaction_request(now, &all);
    assert_eq!(c.nodes[0].compactions_queued(), 16);
    c.run_for(50);
    assert_eq!(
        c.nodes[0].stats().compactions - before,
        per_tick,
        "one tick takes as many tiny snapshots as the floor allows, no more"
    );
    c.run_for(50 * 16);
    assert_eq!(
        c.nodes[0].stats().compactions - before,
        16,
        "later ticks take the rest"
    );
    assert_eq!(c.nodes[0].compactions_queued(), 0);
}

/// A group's log is folded into a snapshot once it holds half the group's
/// state in memory (here: 10 keys of 1 KiB, so about 5 KiB of log), not
/// after a count of entries: so the log never costs much more than half the
/// state again, however the entries are sized. Below the floor nothing is
/// snapshotted.
#[test]
fn a_log_is_compacted_once_it_holds_half_the_state() {
    let mut c = Cluster::with_config(3, 4, |cfg| {
        cfg.snapshot_threshold = u64::MAX;
        cfg.snapshot_log_floor_bytes = 4096;
        cfg.placement.max_leader_transfers = 0;
    });
    c.quiet_events = true;
    c.run_for(300);
    let p = PartitionId(0);
    let leader = (c.leaders()[&p].0 - 1) as usize;
    let keys: Vec<String> = (0..500)
        .map(|k| format!("key{k}"))
        .filter(|k| c.nodes[leader].ring().partition_of(k.as_bytes()) == p)
        .take(10)
        .collect();
    let value = "v".repeat(1024);
    // Three small writes: far below the floor.
    for (n, k) in keys.iter().take(3).enumerate() {
        c.request(leader, n as u64, put(k, "small"));
    }
    c.run_for(200);
    assert_eq!(c.nodes[leader].stats().compactions, 0, "below the floor");
    let mut most = 0;
    for round in 0..5u64 {
        for (n, k) in keys.iter().enumerate() {
            c.request(leader, 100 + round * 10 + n as u64, put(k, &value));
            c.run_for(20);
            let log = c.nodes[leader].raft(p).unwrap().log();
            most = most.max(log.entries_bytes());
        }
    }
    c.run_for(500);
    let compactions = c.nodes[leader].stats().compactions;
    // 50 KiB logged over a state of 10 KiB: a snapshot about every 5 KiB.
    assert!(
        (5..=12).contains(&compactions),
        "{compactions} compactions for 50 writes of 1 KiB over 10 KiB of state"
    );
    assert!(
        most <= 8 * 1024,
        "the log held {most} bytes at most; half the state is about 5 KiB"
    );
}

/// The driver asks for a snapshot when old entries pin a WAL segment: the
/// node folds the applied log into a snapshot record (so the segment can go)
/// and keeps serving the same data.
#[test]
fn driver_requested_compaction_snapshots_applied_entries() {
    let mut c = Cluster::new(3, 4);
    c.quiet_events = true;
    c.run_for(300);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 4, "every partition elected a leader");
    for k in 0..20 {
        c.request(0, k, put(&format!("key{k}"), "v"));
    }
    c.run_for(50);
    let p = PartitionId(0);
    let leader = leaders[&p];
    let i = (leader.0 - 1) as usize;
    let applied = c.nodes[i].raft(p).unwrap().log().applied();
    assert!(applied > 0);
    let before = c.disks[i].len();
    let now = c.now;
    c.nodes[i].handle_compaction_request(now, &[p, PartitionId(99)]);
    assert_eq!(
        c.nodes[i].compactions_queued(),
        1,
        "queued for the next tick; an unknown partition is ignored, not a panic"
    );
    let compactions = c.nodes[i].stats().compactions;
    c.run_for(50);
    assert_eq!(c.nodes[i].stats().compactions, compactions + 1);
    let snap = c.disks[i][before..].iter().find_map(|r| match &r.record {
        PersistRecord::Snapshot(s) if r.partition == p => Some(s.meta.index),
        _ => None,
    });
    assert_eq!(
        snap,
        Some(applied),
        "a snapshot record at the applied index was persisted"
    );
    assert_eq!(
        c.nodes[i].raft(p).unwrap().log().snapshot_meta().index,
        applied
    );
    let now = c.now;
    c.nodes[i].handle_compaction_request(now, &[p]);
    c.run_for(50);
    assert_eq!(
        c.nodes[i].stats().compactions,
        compactions + 1,
        "nothing new applied: no second snapshot"
    );
}

/// A log keeps its snapshot's position, not its image (the image is as
/// large as the partition). A follower that was down while its leader
/// compacted comes back needing that snapshot; with nothing applied since,
/// the leader's node encodes the state again and sends it, without taking
/// (and writing) a second snapshot, and the follower ends up with every key.
#[test]
fn a_follower_behind_a_compacted_log_gets_the_snapshot_encoded_again() {
    // Leaders stay put (the controller would otherwise spread them, and a
    // new leader's first entry is something applied after the snapshot).
    let mut c = Cluster::with_config(3, 4, |cfg| cfg.placement.max_leader_transfers = 0);
    c.quiet_events = true;
    c.run_for(300);
    let p = PartitionId(0);
    let leader = (c.leaders()[&p].0 - 1) as usize;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    c.down.insert(follower);
    let keys: Vec<String> = (0..200)
        .map(|k| format!("key{k}"))
        .filter(|k| c.nodes[leader].ring().partition_of(k.as_bytes()) == p)
        .take(10)
        .collect();
    assert_eq!(keys.len(), 10, "enough keys of {p}");
    for (n, k) in keys.iter().enumerate() {
        c.request(leader, n as u64, put(k, "v"));
    }
    c.run_for(50);
    let applied = c.nodes[leader].raft(p).unwrap().log().applied();
    assert!(c.nodes[follower].raft(p).unwrap().log().applied() < applied);
    let now = c.now;
    c.nodes[leader].handle_compaction_request(now, &[p]);
    // (The leader holds off a while for the follower it was streaming to.)
    c.run_for(3000);
    let stats = c.nodes[leader].stats();
    let (compactions, supplied) = (stats.compactions, stats.snapshot_images_supplied);
    let applied = c.nodes[leader].raft(p).unwrap().log().applied();
    assert_eq!(
        c.nodes[leader].raft(p).unwrap().log().snapshot_meta().index,
        applied,
        "the leader folded its log into a snapshot"
    );

    c.down.remove(&follower);
    c.run_for(1000);
    let stats = c.nodes[leader].stats();
    assert_eq!(
        stats.snapshot_images_supplied,
        supplied + 1,
        "the snapshot's image was encoded again for the follower"
    );
    assert_eq!(
        stats.compactions, compactions,
        "no second snapshot was taken"
    );
    let kv = c.nodes[follower].kv(p).unwrap();
    assert_eq!(kv.applied_index(), applied);
    for k in &keys {
        assert_eq!(
            kv.get(k.as_bytes()).map(|kv| kv.value),
            Some(Bytes::from_static(b"v")),
            "{k} reached the follower"
        );
    }
    assert_eq!(kv.digest(), c.nodes[leader].kv(p).unwrap().digest());
}

/// The feed watchers are served from. Every replica feeds the same
/// changes of its partition (they apply the same log), whoever leads; a
/// replica that took a leader's snapshot feeds a reset to the snapshot's
/// index instead of the changes it skipped (a watcher behind it is then
/// told its history is compacted, never handed a gap), and feeds the
/// changes after it like the others.
#[test]
fn every_replica_feeds_the_same_changes_and_a_snapshot_resets_the_feed() {
    use ringkv_core::watch::{Change, ChangeKind, Feed};
    let mut c = Cluster::with_config(3, 4, |cfg| {
        cfg.placement.max_leader_transfers = 0;
        cfg.watch = true;
    });
    c.quiet_events = true;
    c.run_for(300);
    let p = PartitionId(0);
    let feed_of = |c: &mut Cluster, i: usize| -> Vec<Feed> {
        std::iter::from_fn(|| c.nodes[i].poll_feed())
            .filter(|(q, _)| *q == p)
            .map(|(_, f)| f)
            .collect()
    };
    for i in 0..3 {
        assert_eq!(
            feed_of(&mut c, i),
            [Feed::Reset { floor: 0 }],
            "node {i}'s replica started empty"
        );
    }
    let leader = (c.leaders()[&p].0 - 1) as usize;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let keys: Vec<String> = (0..200)
        .map(|k| format!("key{k}"))
        .filter(|k| c.nodes[leader].ring().partition_of(k.as_bytes()) == p)
        .take(6)
        .collect();
    c.request(leader, 1, put(&keys[0], "a"));
    c.run_for(50);
    c.down.insert(follower);
    for (n, k) in keys.iter().enumerate().skip(1) {
        c.request(leader, 10 + n as u64, put(k, "b"));
    }
    c.request(leader, 20, ClientRequest::delete(keys[0].clone()));
    c.run_for(50);
    let now = c.now;
    c.nodes[leader].handle_compaction_request(now, &[p]);
    c.run_for(3000);
    let snapshot = c.nodes[leader].raft(p).unwrap().log().snapshot_meta().index;
    c.down.remove(&follower);
    c.run_for(1000);
    c.request(leader, 30, put(&keys[1], "c"));
    c.run_for(50);

    let changes = |feed: &[Feed]| -> Vec<Change> {
        feed.iter()
            .flat_map(|f| match f {
                Feed::Changes(cs) => cs.clone(),
                _ => Vec::new(),
            })
            .collect()
    };
    let (led, followed, caught_up) = (
        feed_of(&mut c, leader),
        feed_of(&mut c, other),
        feed_of(&mut c, follower),
    );
    assert_eq!(led, followed, "leader and follower fed the same");
    let all = changes(&led);
    let kinds: Vec<(ChangeKind, &[u8], &[u8])> = all
        .iter()
        .map(|c| (c.kind, &c.key[..], &c.value[..]))
        .collect();
    let mut want = vec![(ChangeKind::Put, keys[0].as_bytes(), &b"a"[..])];
    want.extend(
        keys[1..]
            .iter()
            .map(|k| (ChangeKind::Put, k.as_bytes(), &b"b"[..])),
    );
    want.push((ChangeKind::Delete, keys[0].as_bytes(), &b""[..]));
    want.push((ChangeKind::Put, keys[1].as_bytes(), &b"c"[..]));
    assert_eq!(kinds, want, "every change, in order");
    assert!(
        all.windows(2).all(|w| w[0].revision < w[1].revision),
        "one change per entry here, revisions ascending"
    );

    // The follower that missed the writes: its first change, a reset to the
    // snapshot, then only what came after it.
    assert_eq!(changes(&caught_up[..1]), changes(&led[..1]));
    let reset = caught_up
        .iter()
        .position(|f| *f == Feed::Reset { floor: snapshot })
        .expect("a reset to the snapshot's index");
    assert_eq!(
        changes(&caught_up[reset..]),
        all.iter()
            .filter(|c| c.revision > snapshot)
            .cloned()
            .collect::<Vec<_>>(),
        "after the reset, the same changes as the others"
    );
}

/// A lease is judged on the request's time, not on the ticks the driver has
/// run so far. After a stall (a paused process, a stopped VM, a stalled
/// event loop) a driver that takes inputs before timers hands the node a
/// queued lease read before the overdue tick: the leader must count the
/// time that passed first, find its lease over, and not answer from it (a
/// new leader may have taken writes meanwhile).
#[test]
fn a_lease_read_after_a_stalled_timer_is_not_served_from_the_lease() {
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let (_, &leader) = c.leaders().iter().next().expect("a leader");
    let i = (leader.0 - 1) as usize;
    let get = || ClientRequest::Get {
        key: Bytes::from_static(b"k"),
        consistency: Consistency::Lease,
    };
    c.request(i, 1, put("k", "v"));
    c.run_for(100);
    // A fresh lease serves at once.
    c.request(i, 2, get());
    assert!(
        c.out.contains("reply to request 2: Done(Ok(Value(Some("),
        "a fresh lease should serve at once:\n{}",
        c.out
    );
    // Ten seconds without a timer or a message, then a lease read.
    c.now = c.now + Duration::from_secs(10);
    c.request(i, 3, get());
    assert!(
        !c.out.contains("reply to request 3: Done(Ok("),
        "served from a lease that ran out 10 s ago:\n{}",
        c.out
    );
}

/// A group takes only messages addressed to this node from its members. A
/// vote request of a far higher term that a peer's batch carries for
/// another node, or on behalf of a stranger, must leave the group's term
/// alone (a forged or misrouted message must not depose a leader).
#[test]
fn misaddressed_and_stranger_messages_do_not_reach_the_group() {
    use ringkv_core::io::GroupMessage;
    use ringkv_core::raft::{Message, MessageBody};
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let p = c.nodes[0].partitions().next().expect("a partition");
    let term = c.nodes[0].raft(p).expect("hosted").term();
    let vote = |from: u64, to: u64| GroupMessage {
        partition: p,
        message: Message {
            from: NodeId(from),
            to: NodeId(to),
            term: term + 100,
            body: MessageBody::Vote {
                last_index: 1_000,
                last_term: term + 99,
                transfer: true,
            },
        },
    };
    for (what, gm) in [
        ("addressed to n3", vote(2, 3)),
        ("from a stranger, n9", vote(9, 1)),
    ] {
        let now = c.now;
        c.nodes[0].handle_message(
            now,
            PeerBatch {
                from: NodeId(2),
                to: NodeId(1),
                messages: vec![gm],
                gossip: Default::default(),
                placement: Vec::new(),
            },
        );
        c.drain(0);
        assert_eq!(
            c.nodes[0].raft(p).expect("hosted").term(),
            term,
            "a vote request {what} changed n1's term"
        );
    }
}

/// Persist before you speak: a changed term or vote is synced before the
/// answer that rests on it leaves: a term learned with no vote at all, and
/// a vote cast later in a term learned in an earlier write. A vote written
/// but not synced is lost with the power, and the node could vote again in
/// the same term; a term lost that way goes back.
#[test]
fn a_changed_term_or_vote_is_synced_before_the_answer_leaves() {
    use ringkv_core::io::GroupMessage;
    use ringkv_core::raft::{Message, MessageBody};
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let p = c.nodes[0].partitions().next().expect("a partition");
    let now_term = c.nodes[0].raft(p).expect("hosted").term();
    // Candidates ask n1 in turn (with the transfer flag, so that n1's
    // lease on the current leader does not silence them). n2's log is
    // behind: n1 learns its term and refuses, twice (the second time only
    // the term changes, no vote before or after). n3's log is ahead: n1
    // votes for it in the term it already knows.
    let ask = |from: u64, term: u64, last_index: u64| PeerBatch {
        from: NodeId(from),
        to: NodeId(1),
        messages: vec![GroupMessage {
            partition: p,
            message: Message {
                from: NodeId(from),
                to: NodeId(1),
                term,
                body: MessageBody::Vote {
                    last_index,
                    last_term: if last_index == 0 { 0 } else { term },
                    transfer: true,
                },
            },
        }],
        gossip: Default::default(),
        placement: Vec::new(),
    };
    for (what, from, term, last_index, vote) in [
        ("a new term, vote refused", 2, now_term + 1, 0, None),
        ("only the term changed", 2, now_term + 2, 0, None),
        (
            "a vote in a term already known",
            3,
            now_term + 2,
            1_000_000,
            Some(NodeId(3)),
        ),
    ] {
        let now = c.now;
        c.nodes[0].handle_message(now, ask(from, term, last_index));
        let mut ios = Vec::new();
        while let Some(io) = c.nodes[0].poll_io() {
            ios.push(io);
        }
        let written = ios.iter().find_map(|io| {
            io.records.iter().rev().find_map(|r| match &r.record {
                PersistRecord::HardState(hs) if r.partition == p => Some((*hs, io.must_sync)),
                _ => None,
            })
        });
        let Some((hs, synced)) = written else {
            panic!("{what}: no hard state written");
        };
        assert_eq!((hs.term, hs.vote), (term, vote), "{what}: hard state");
        assert!(
            synced,
            "{what}: the hard state {hs:?} was written without a sync"
        );
        // Nothing answers the candidate before the write completes.
        while let Some(t) = c.nodes[0].poll_transmit() {
            let answers = t.batch.messages.iter().any(|gm| {
                gm.message.to == NodeId(from)
                    && matches!(gm.message.body, MessageBody::VoteResponse { .. })
            });
            assert!(
                !answers,
                "{what}: the answer left before the write completed"
            );
        }
        for io in ios {
            c.nodes[0].handle_persisted(now, io.id);
        }
        c.drain(0);
    }
}

/// A node that does not lead a partition forwards a request to its leader
/// with one more hop, until the request has travelled `MAX_FORWARD_HOPS`:
/// then the client hears `no_leader` (and retries), so two nodes that
/// disagree about a leader cannot bounce a request between them forever.
#[test]
fn a_request_is_forwarded_until_its_hops_run_out() {
    use ringkv_core::node::ClientError;
    use ringkv_core::routing::MAX_FORWARD_HOPS;

    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let (&p, &leader) = c.leaders().iter().next().expect("a leader");
    let i = (leader.0 % 3) as usize; // a follower
    assert_ne!(c.nodes[i].id(), leader);
    let mut reply_to = |hops: u32| {
        let now = c.now;
        c.nodes[i].handle_request(
            now,
            RequestId(u64::from(hops) + 1),
            put("k", "v"),
            Hops(hops),
        );
        let mut replies = Vec::new();
        while let Some((_, r)) = c.nodes[i].poll_reply() {
            replies.push(r);
        }
        assert_eq!(replies.len(), 1, "one answer per request: {replies:?}");
        replies.pop().expect("one reply")
    };
    for hops in 0..MAX_FORWARD_HOPS {
        assert_eq!(
            reply_to(hops),
            Reply::Forward {
                to: leader,
                partition: p,
                hops: Hops(hops + 1),
            }
        );
    }
    assert_eq!(
        reply_to(MAX_FORWARD_HOPS),
        Reply::Done(Err(ClientError::NoLeader { partition: p }))
    );
}

/// Fail-stop: a follower sent a snapshot that does not decode cannot apply
/// it, and Raft has already replaced its log with it. It stops (the driver
/// ends the process) with the reason, writes nothing of the snapshot,
/// acknowledges nothing, and answers any further request with the reason,
/// rather than serve its old state as if it were the snapshot's.
#[test]
fn a_follower_that_cannot_decode_a_snapshot_stops() {
    use ringkv_core::io::GroupMessage;
    use ringkv_core::node::{ClientError, Halt};
    use ringkv_core::raft::{Message, MessageBody, SnapshotMeta};

    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let (&p, &leader) = c.leaders().iter().next().expect("a leader");
    let f = (leader.0 % 3) as usize; // a follower
    let raft = c.nodes[f].raft(p).expect("hosted");
    let (term, index) = (raft.term(), raft.log().committed() + 100);
    let membership = raft.membership().clone();
    let junk = Bytes::from_static(b"not a snapshot image");
    let wal_before = c.disks[f].len();
    let (now, me) = (c.now, c.nodes[f].id());
    c.nodes[f].handle_message(
        now,
        PeerBatch {
            from: leader,
            to: me,
            messages: vec![GroupMessage {
                partition: p,
                message: Message {
                    from: leader,
                    to: me,
                    term,
                    body: MessageBody::SnapshotChunk {
                        meta: SnapshotMeta {
                            index,
                            term,
                            membership,
                        },
                        total_len: junk.len() as u64,
                        offset: 0,
                        data: junk,
                    },
                },
            }],
            gossip: Default::default(),
            placement: Vec::new(),
        },
    );
    let halt = c.nodes[f].halted().cloned();
    assert!(
        matches!(halt, Some(Halt::UndecodableSnapshot { partition, index: i, .. }) if partition == p && i == index),
        "the follower should have stopped on the snapshot: {halt:?}"
    );
    assert!(
        c.nodes[f].poll_io().is_none(),
        "nothing is written after a halt"
    );
    assert!(
        c.nodes[f].poll_transmit().is_none(),
        "nothing is sent after a halt"
    );
    assert_eq!(c.disks[f].len(), wal_before);
    let now = c.now;
    c.nodes[f].handle_request(now, RequestId(1), put("k", "v"), Hops(0));
    match c.nodes[f].poll_reply() {
        Some((RequestId(1), Reply::Done(Err(ClientError::Internal(reason))))) => assert!(
            reason.contains("does not decode"),
            "the reason reaches the client: {reason}"
        ),
        other => panic!("a halted node answered {other:?}"),
    }
}

/// Moving one replica of a partition to a node that does not host it, with
/// the node-level calls an operator's "move replica" makes: add the new node
/// as a learner, then replace the old replica by it in one joint change.
/// The new node creates the replica when the leader's snapshot names it
/// (its appends are answered "nothing here" on the replica's behalf, and the
/// leader, which never compacted, takes a snapshot for it), catches up, and
/// votes once promoted; every write from before the move is in its state
/// machine, and the group commits with it afterwards.
#[test]
fn a_replica_moves_to_a_node_that_did_not_host_it() {
    use ringkv_core::raft::{ConfChange, Membership};

    let mut c = Cluster::new(4, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let (&p, &leader) = c.leaders().iter().next().expect("a leader");
    let hosts: Vec<usize> = (0..4).filter(|&i| c.nodes[i].raft(p).is_some()).collect();
    assert_eq!(hosts.len(), 3, "rf 3 of 4 nodes");
    let newcomer = (0..4)
        .find(|i| !hosts.contains(i))
        .expect("one node without it");
    let old = *hosts
        .iter()
        .find(|&&i| c.nodes[i].id() != leader)
        .expect("a follower to replace");
    let (new_id, old_id) = (c.nodes[newcomer].id(), c.nodes[old].id());
    let l = (leader.0 - 1) as usize;
    for k in 0..20 {
        c.request(l, k, put(&format!("before{k}"), "v"));
    }
    c.run_for(500);

    let now = c.now;
    let added = c.nodes[l].handle_conf_change(now, p, ConfChange::AddLearner(new_id));
    assert!(added.is_ok(), "{added:?}");
    c.drain(l);
    c.run_for(2_000);
    let learner = c.nodes[newcomer]
        .raft(p)
        .expect("created from the snapshot");
    assert!(learner.membership().is_learner(new_id));
    let before = c.nodes[newcomer]
        .kv(p)
        .and_then(|kv| kv.get(b"before19".as_slice()));
    assert_eq!(
        before.map(|kv| kv.value.clone()),
        Some(Bytes::from_static(b"v"))
    );

    let now = c.now;
    let replace = ConfChange::EnterJoint {
        promote: vec![new_id],
        remove: vec![old_id],
    };
    let replaced = c.nodes[l].handle_conf_change(now, p, replace);
    assert!(replaced.is_ok(), "{replaced:?}");
    c.drain(l);
    c.run_for(2_000);
    let mut voters: Vec<NodeId> = hosts.iter().map(|&i| c.nodes[i].id()).collect();
    voters.retain(|&v| v != old_id);
    voters.push(new_id);
    let expected = Membership::new(voters);
    for i in 0..4 {
        if let Some(r) = c.nodes[i].raft(p) {
            assert_eq!(r.membership(), &expected, "n{}'s configuration", i + 1);
        }
    }

    // The group commits with the new replica: a write now reaches it.
    c.request(l, 100, put("after", "w"));
    c.run_for(500);
    assert!(
        c.out.contains("reply to request 100: Done(Ok(Put"),
        "{}",
        c.out
    );
    let value_at = |c: &Cluster, i: usize, key: &str| {
        c.nodes[i]
            .kv(p)
            .and_then(|kv| kv.get(key.as_bytes()).map(|kv| kv.value.clone()))
    };
    assert_eq!(
        value_at(&c, newcomer, "after"),
        Some(Bytes::from_static(b"w"))
    );

    // The old replica learned its removal committed and destroyed itself:
    // a tombstone in its WAL, and nothing of the group left.
    assert!(c.nodes[old].raft(p).is_none(), "the old replica is gone");
    let tombstone = c.disks[old].iter().rev().find_map(|r| match &r.record {
        PersistRecord::Tombstone(t) if r.partition == p => Some(t.clone()),
        _ => None,
    });
    let tombstone = tombstone.expect("a tombstone in the old replica's WAL");
    assert_eq!(tombstone.voters, expected.voters);

    // Restarted, the new replica is still one (its WAL holds the group,
    // though the ring does not give it this partition), with the same
    // configuration and state; the old one stays destroyed although the
    // ring still gives it the partition, and hands the partition's
    // requests to a voter of the group as it last saw it.
    c.restart(newcomer);
    c.restart(old);
    c.run_for(200); // they apply their committed entries again
    let r = c.nodes[newcomer]
        .raft(p)
        .expect("still hosted after a restart");
    assert_eq!(r.membership(), &expected);
    assert_eq!(
        value_at(&c, newcomer, "after"),
        Some(Bytes::from_static(b"w"))
    );
    assert!(
        c.nodes[old].raft(p).is_none(),
        "no replica comes back from the ring or the WAL after a tombstone"
    );
    let key = (0..)
        .map(|k| format!("k{k}"))
        .find(|k| c.nodes[old].ring().partition_of(k.as_bytes()) == p)
        .expect("a key of the partition");
    let now = c.now;
    c.nodes[old].handle_request(now, RequestId(102), put(&key, "y"), Hops(0));
    match c.nodes[old].poll_reply() {
        Some((RequestId(102), Reply::Forward { to, partition, .. })) => {
            assert_eq!(partition, p);
            assert!(
                expected.voters.contains(&to),
                "forwarded to {to}, not a voter"
            );
        }
        other => panic!("the old node answered {other:?}"),
    }
    c.request(l, 101, put("later", "x"));
    c.run_for(1_000);
    assert!(
        c.out.contains("reply to request 101: Done(Ok(Put"),
        "{}",
        c.out
    );
    assert_eq!(
        value_at(&c, newcomer, "later"),
        Some(Bytes::from_static(b"x"))
    );
}

/// A tombstone keeps a destroyed replica dead: a late snapshot from before
/// the removal (it names the node, at an index up to the removal) creates
/// nothing, across a restart too; a snapshot of a later configuration does,
/// and the new replica starts from the old one's term and vote, so the node
/// never votes twice in one term of the group.
#[test]
fn a_tombstone_takes_back_only_a_snapshot_past_the_removal() {
    use ringkv_core::io::GroupMessage;
    use ringkv_core::kv::KvStore;
    use ringkv_core::raft::{HardState, Membership, Message, MessageBody, SnapshotMeta};
    use ringkv_core::raft::{PersistRecord, Tombstone};

    let p = PartitionId(1);
    let me = NodeId(3);
    let mut cfg = ringkv_core::node::NodeConfig::new(me, (1..=4).map(NodeId).collect());
    cfg.ring = RingConfig {
        partition_count: 4,
        replication_factor: 3,
        tokens_per_node: 64,
    };
    // The WAL of a node whose replica of p was removed at 20 and destroyed,
    // after voting for n1 in term 5.
    let wal = vec![
        WalRecord {
            partition: p,
            record: PersistRecord::Genesis(Membership::new((1..=3).map(NodeId))),
        },
        WalRecord {
            partition: p,
            record: PersistRecord::HardState(HardState {
                term: 5,
                vote: Some(NodeId(1)),
                commit: 20,
            }),
        },
        WalRecord {
            partition: p,
            record: PersistRecord::Tombstone(Tombstone {
                removed_at: 20,
                voters: vec![NodeId(1), NodeId(2), NodeId(4)],
            }),
        },
    ];
    let start = |wal: &[WalRecord]| {
        Node::new(cfg.clone(), 7, Recovered::replay(wal.iter().cloned())).expect("start")
    };
    let mut node = start(&wal);
    assert!(node.raft(p).is_none(), "the tombstone outlives the restart");
    assert_eq!(
        node.retired_voters(p),
        Some([NodeId(1), NodeId(2), NodeId(4)].as_slice())
    );

    let data = KvStore::new().snapshot();
    let chunk = |index: u64, term: u64, membership: Membership| PeerBatch {
        from: NodeId(1),
        to: me,
        messages: vec![GroupMessage {
            partition: p,
            message: Message {
                from: NodeId(1),
                to: me,
                term,
                body: MessageBody::SnapshotChunk {
                    meta: SnapshotMeta {
                        index,
                        term,
                        membership,
                    },
                    total_len: data.len() as u64,
                    offset: 0,
                    data: data.clone(),
                },
            },
        }],
        gossip: Default::default(),
        placement: Vec::new(),
    };
    // A late snapshot from before the removal names n3 as a voter.
    let old = Membership::new((1..=3).map(NodeId));
    node.handle_message(Time::ZERO, chunk(20, 5, old));
    assert!(
        node.raft(p).is_none(),
        "a snapshot up to the removal creates nothing"
    );

    // The first chunk of a later configuration's snapshot creates the
    // replica; while the rest is on its way, a late chunk of the old
    // snapshot must not install in it either.
    let mut partial = chunk(31, 6, Membership::new([1, 2, 4].map(NodeId)));
    if let MessageBody::SnapshotChunk {
        meta, total_len, ..
    } = &mut partial.messages[0].message.body
    {
        meta.membership.learners = vec![me];
        *total_len += 100;
    }
    node.handle_message(Time::ZERO, partial);
    assert!(node.raft(p).is_some(), "created by the first chunk");
    node.handle_message(
        Time::ZERO,
        chunk(20, 6, Membership::new((1..=3).map(NodeId))),
    );
    assert!(
        !node.raft(p).expect("still there").knows_configuration(),
        "an old snapshot does not install in the new replica"
    );

    // A later configuration adds n3 back as a learner (whole, again).
    let mut node = start(&wal);
    let mut again = Membership::new([1, 2, 4].map(NodeId));
    again.learners = vec![me];
    node.handle_message(Time::ZERO, chunk(31, 6, again.clone()));
    let raft = node
        .raft(p)
        .expect("added again by a snapshot past the removal");
    assert_eq!(raft.membership(), &again);
    assert_eq!(raft.term(), 6);
    assert!(node.retired_voters(p).is_none());
    let mut persisted = Vec::new();
    while let Some(io) = node.poll_io() {
        persisted.extend(io.records);
    }
    assert!(
        persisted
            .iter()
            .any(|r| matches!(&r.record, PersistRecord::Snapshot(s) if s.meta.index == 31)),
        "the new replica's snapshot is persisted: {persisted:?}"
    );

    // Had the same late snapshot come in term 5, the new replica would
    // still hold n3's vote for n1 in that term.
    let mut node = start(&wal);
    let mut again5 = Membership::new([1, 2, 4].map(NodeId));
    again5.learners = vec![me];
    node.handle_message(Time::ZERO, chunk(31, 5, again5));
    let raft = node.raft(p).expect("added again");
    assert_eq!((raft.term(), raft.vote()), (5, Some(NodeId(1))));
}

/// Only a WAL holding nothing but genesis records (the first boot's write,
/// perhaps cut short) is a fresh start; anything else of a group, a
/// tombstone included, means the node has acted and keeps its groups.
#[test]
fn only_genesis_records_count_as_a_fresh_start() {
    use ringkv_core::raft::{HardState, Membership, PersistRecord, Tombstone};
    let p = PartitionId(0);
    let record = |record| WalRecord {
        partition: p,
        record,
    };
    let genesis = record(PersistRecord::Genesis(Membership::new([NodeId(1)])));
    assert!(Recovered::replay([]).is_fresh());
    assert!(Recovered::replay([genesis.clone()]).is_fresh());
    let voted = record(PersistRecord::HardState(HardState {
        term: 1,
        vote: Some(NodeId(1)),
        commit: 0,
    }));
    assert!(!Recovered::replay([genesis.clone(), voted]).is_fresh());
    let tombstone = record(PersistRecord::Tombstone(Tombstone {
        removed_at: 0,
        voters: vec![NodeId(2)],
    }));
    assert!(!Recovered::replay([genesis.clone(), tombstone]).is_fresh());
    let snapshot = record(PersistRecord::Snapshot(ringkv_core::raft::Snapshot {
        meta: ringkv_core::raft::SnapshotMeta {
            index: 3,
            term: 1,
            membership: Membership::new([NodeId(1)]),
        },
        data: ringkv_core::kv::KvStore::new().snapshot(),
    }));
    assert!(!Recovered::replay([genesis, snapshot]).is_fresh());
}

/// The metadata group starts on the three lowest ids of four founders; its
/// leader writes the genesis document, and the fourth node, which hosts no
/// replica of it, gets the document and the group's leader by gossip.
#[test]
fn the_metadata_document_reaches_every_node() {
    use ringkv_core::metadata::{METADATA_GROUP, MemberState};
    let mut c = Cluster::new(4, 8);
    c.quiet_events = true;
    c.run_for(2000);
    assert!(
        c.nodes[3].raft(METADATA_GROUP).is_none(),
        "n4 is not a replica"
    );
    let leader = c
        .controller()
        .map(|i| c.nodes[i].id())
        .expect("the metadata group has a leader");
    let version = c.nodes[0].metadata().expect("a document").version;
    assert!(version > 0);
    for n in &c.nodes {
        let doc = n
            .metadata()
            .unwrap_or_else(|| panic!("{} has no document", n.id()));
        assert_eq!(doc.version, version, "{}", n.id());
        let up: Vec<NodeId> = doc.in_state(MemberState::Up).collect();
        assert_eq!(up, (1..=4).map(NodeId).collect::<Vec<_>>());
        assert_eq!(n.metadata_leader(), Some(leader), "{}", n.id());
        assert!(!n.partitions().any(|p| p == METADATA_GROUP));
    }
    // Each node adopted each version once, in increasing order.
    for (i, versions) in &c.metadata_events {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "n{}: {versions:?}",
            i + 1
        );
    }
    // Nodes that have the document are not sent it again.
    c.documents_pushed = 0;
    c.run_for(1000);
    assert_eq!(
        c.documents_pushed, 0,
        "a document pushed to a node that has it"
    );
    // A node restarted without it (n4 keeps no copy) gets it again: each
    // peer that sees it behind pushes it, again at most once per heartbeat
    // interval until n4's own batches announce the version.
    c.restart(3);
    assert!(c.nodes[3].metadata().is_none());
    c.run_for(500);
    assert_eq!(c.nodes[3].metadata().map(|d| d.version), Some(version));
    assert!(
        (1..=6).contains(&c.documents_pushed),
        "{}",
        c.documents_pushed
    );
    // The metadata group's leader stops: n4, which hosts no replica of it,
    // learns the new leader (a later term) from the others' batches.
    let old = (leader.0 - 1) as usize;
    c.down.insert(old);
    c.run_for(5000);
    let new = (0..3)
        .filter(|&i| i != old)
        .find(|&i| {
            c.nodes[i]
                .raft(METADATA_GROUP)
                .is_some_and(|r| r.is_leader())
        })
        .map(|i| c.nodes[i].id())
        .expect("a new leader of the metadata group");
    assert_eq!(c.nodes[3].metadata_leader(), Some(new));
}

/// Every partition's group, as its leader has it, has exactly `voters`
/// and no change under way.
fn assert_every_group_on(c: &Cluster, partitions: u32, voters: &[u64]) {
    let voters: Vec<NodeId> = voters.iter().copied().map(NodeId).collect();
    for p in (0..partitions).map(PartitionId) {
        let leader = c.leaders()[&p];
        let raft = c.nodes[(leader.0 - 1) as usize].raft(p).unwrap();
        let m = raft.membership();
        assert_eq!(m.voters, voters, "{p}: {m:?}");
        assert!(m.learners.is_empty() && !m.is_joint(), "{p}: {m:?}");
    }
}

fn leaders_per_node(c: &Cluster) -> BTreeMap<NodeId, usize> {
    let mut count = BTreeMap::new();
    for l in c.leaders().values() {
        *count.entry(*l).or_default() += 1;
    }
    count
}

/// Elections leave leadership uneven (the first ticks favour some nodes);
/// the controller on the metadata group's leader hands leadership over
/// until every node leads within one of the mean.
#[test]
fn the_controller_spreads_leaders_evenly() {
    let mut c = Cluster::new(3, 64);
    c.quiet_events = true;
    c.run_for(300);
    let before = leaders_per_node(&c);
    assert!(
        before.values().max().unwrap() - before.values().min().unwrap() > 1,
        "the test needs uneven leadership to start from: {before:?}"
    );
    c.run_for(15_000);
    let after = leaders_per_node(&c);
    assert_eq!(after.values().sum::<usize>(), 64, "{after:?}");
    for (n, k) in &after {
        assert!((21..=22).contains(k), "{n} leads {k}: {after:?}");
    }
    // And it stays so: no transfer back and forth.
    c.run_for(5_000);
    assert_eq!(leaders_per_node(&c), after);
}

/// A node held down past `dead_after` is marked dead in the metadata; its
/// replicas are re-created on the others (make before break), and once
/// none is left it is removed. Writes work throughout.
#[test]
fn a_dead_nodes_replicas_are_re_created_on_the_others() {
    use ringkv_core::metadata::MemberState;
    let mut c = Cluster::with_config(4, 8, |cfg| {
        cfg.placement.dead_after = Duration::from_secs(3);
    });
    c.quiet_events = true;
    c.run_for(2000);
    let held: Vec<PartitionId> = c.nodes[3].partitions().collect();
    assert!(!held.is_empty());
    c.down.insert(3);
    c.run_for(2000);
    let doc = |c: &Cluster| c.nodes[0].metadata().cloned().expect("a document");
    assert_eq!(
        doc(&c).members[&NodeId(4)].state,
        MemberState::Up,
        "not yet: grace"
    );
    c.run_for(20_000);
    let d = doc(&c);
    assert_eq!(d.members[&NodeId(4)].state, MemberState::Removed, "{d:?}");
    assert_every_group_on(&c, 8, &[1, 2, 3]);
    let p = c.nodes[0].ring().partition_of(b"after");
    let leader = c.leaders()[&p];
    c.request((leader.0 - 1) as usize, 1, put("after", "death"));
    c.run_for(100);
    assert!(
        c.out.contains("reply to request 1: Done(Ok(Put"),
        "{}",
        c.out
    );
}

/// Every node tells the controller where it serves REST and RESP; the
/// member list records it, and every node's document has it. A node that
/// comes back serving elsewhere is recorded anew.
#[test]
fn each_members_client_addresses_reach_the_member_list() {
    use ringkv_core::metadata::ClientAddresses;
    let addresses = |id: u64, port: u16| ClientAddresses {
        rest: format!("n{id}:{port}"),
        resp: format!("n{id}:6379"),
    };
    let mut c = Cluster::with_config(4, 8, |cfg| {
        cfg.client_addresses = addresses(cfg.id.0, 8081);
    });
    c.quiet_events = true;
    c.run_for(4000);
    let recorded = |c: &Cluster, node: usize, id: u64| {
        c.nodes[node].metadata().expect("a document").members[&NodeId(id)]
            .client
            .clone()
    };
    for node in 0..4 {
        for id in 1..=4 {
            assert_eq!(
                recorded(&c, node, id),
                addresses(id, 8081),
                "n{id} as n{} sees it",
                node + 1
            );
        }
    }
    // n4 restarts serving REST on another port: the list follows.
    let mut cfg = c.nodes[3].config().clone();
    cfg.client_addresses = addresses(4, 8082);
    let recovered = Recovered::replay(c.disks[3].clone());
    c.nodes[3] = Node::new(cfg, 1004, recovered).expect("restart");
    c.run_for(4000);
    assert_eq!(recorded(&c, 0, 4), addresses(4, 8082));
}

/// The controller marks a member dead only if no node it hears has heard
/// that member for `dead_after`: n5, cut off from the controller alone
/// (both ways), stays `up` while the others hear it, however long; cut off
/// from everyone, it dies.
#[test]
fn a_member_only_the_controller_cannot_hear_is_not_dead() {
    use ringkv_core::metadata::MemberState;
    let mut c = Cluster::with_config(5, 8, |cfg| {
        cfg.placement.dead_after = Duration::from_secs(3);
    });
    c.quiet_events = true;
    c.run_for(2000);
    let controller = c.controller().expect("a controller");
    let lonely = if controller == 4 { 3 } else { 4 };
    c.cut.insert((controller, lonely));
    c.cut.insert((lonely, controller));
    c.run_for(10_000);
    assert_eq!(c.controller(), Some(controller), "the controller stayed");
    assert!(
        c.nodes[controller]
            .detector()
            .down_for(c.nodes[lonely].id(), c.now)
            .is_some_and(|d| d >= Duration::from_secs(3)),
        "the controller has not heard n{} for the grace period",
        lonely + 1
    );
    let state =
        |c: &Cluster| c.nodes[controller].metadata().unwrap().members[&c.nodes[lonely].id()].state;
    assert_eq!(state(&c), MemberState::Up, "the others hear it");
    c.down.insert(lonely);
    c.run_for(10_000);
    assert!(
        matches!(state(&c), MemberState::Dead | MemberState::Removed),
        "{:?}",
        state(&c)
    );
}

/// An operator drains n4 through the controller: refused elsewhere (naming
/// the controller) and for a replica of the metadata group; accepted, n4's
/// replicas move to the others, and it is removed.
#[test]
fn a_drained_node_is_removed_once_its_replicas_moved() {
    use ringkv_core::metadata::MemberState;
    use ringkv_core::node::{Drain, DrainError};
    use ringkv_core::placement::planner::DrainRefused;
    let mut c = Cluster::new(4, 8);
    c.quiet_events = true;
    c.run_for(2000);
    let controller = c.controller().expect("a controller");
    let other = (controller + 1) % 3;
    let now = c.now;
    assert_eq!(
        c.nodes[other].handle_drain(now, NodeId(4)),
        Err(DrainError::NotController {
            this: c.nodes[other].id(),
            controller: Some(c.nodes[controller].id()),
        })
    );
    assert_eq!(
        c.nodes[controller].handle_drain(now, NodeId(9)),
        Err(DrainError::Refused(DrainRefused::NotAMember(NodeId(9))))
    );
    assert_eq!(
        c.nodes[controller].handle_drain(now, NodeId(4)),
        Ok(Drain::Proposed)
    );
    // Asked again before that change committed: one change of the member
    // list at a time.
    assert_eq!(
        c.nodes[controller].handle_drain(now, NodeId(4)),
        Err(DrainError::Busy)
    );
    c.drain(controller);
    c.run_for(300);
    let state = |c: &Cluster| c.nodes[0].metadata().unwrap().members[&NodeId(4)].state;
    assert_eq!(state(&c), MemberState::Draining);
    // Once committed, asking again says so.
    let now = c.now;
    assert_eq!(
        c.nodes[controller].handle_drain(now, NodeId(4)),
        Ok(Drain::Draining)
    );
    c.run_for(30_000);
    assert_eq!(state(&c), MemberState::Removed);
    assert_every_group_on(&c, 8, &[1, 2, 3]);
    assert!(c.nodes[3].partitions().next().is_none(), "n4 holds nothing");
    // Removed, it is no peer any more: nobody sends it anything, nobody
    // watches it.
    c.batches.clear();
    c.run_for(3000);
    let to_n4: Vec<_> = c.batches.keys().filter(|(_, to)| *to == 4).collect();
    assert!(
        to_n4.is_empty(),
        "batches sent to the removed n4: {to_n4:?}"
    );
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].detector().status(NodeId(4)),
            ringkv_core::detector::PeerStatus::Unknown
        );
    }
}

/// An operator adds access tokens through the controller: refused
/// elsewhere (naming the controller); the first must be an admin token;
/// once committed, every node's copy of the document holds the same
/// tokens (hashed), and every node recognises them; removing one reaches
/// every node too.
#[test]
fn access_tokens_are_committed_by_the_controller_and_reach_every_node() {
    use bytes::Bytes;
    use ringkv_core::access::{self, AuthError, Role, TokenRecord};
    use ringkv_core::metadata::MetaError;
    use ringkv_core::node::{TokenChange, TokenChangeError, TokenEdit};
    let mut c = Cluster::new(5, 8);
    c.quiet_events = true;
    c.run_for(2000);
    let controller = c.controller().expect("a controller");
    let other = (controller + 1) % 5;
    let record = |role, secret: &str| TokenRecord {
        name: "ops".into(),
        role,
        scope: Bytes::new(),
        secret_hash: access::hash_secret(secret),
    };
    let add = |id: &str, r: TokenRecord| TokenEdit::Add {
        id: id.into(),
        record: r,
    };
    let now = c.now;
    assert_eq!(
        c.nodes[other].handle_token_change(now, &add("adm", record(Role::Admin, "s1"))),
        Err(TokenChangeError::NotController {
            this: c.nodes[other].id(),
            controller: Some(c.nodes[controller].id()),
        })
    );
    assert_eq!(
        c.nodes[controller].handle_token_change(now, &add("rd", record(Role::Read, "s2"))),
        Err(TokenChangeError::Refused(MetaError::FirstTokenNotAdmin))
    );
    assert_eq!(
        c.nodes[controller].handle_token_change(now, &add("adm", record(Role::Admin, "s1"))),
        Ok(TokenChange::Proposed)
    );
    c.drain(controller);
    c.run_for(1000);
    let now = c.now;
    assert_eq!(
        c.nodes[controller].handle_token_change(now, &add("adm", record(Role::Admin, "s1"))),
        Ok(TokenChange::Committed)
    );
    for (i, n) in c.nodes.iter().enumerate() {
        let tokens = &n.metadata().expect("a document").tokens;
        assert_eq!(tokens.len(), 1, "n{}", i + 1);
        let grant = access::authenticate(tokens, "rkv_adm_s1").expect("recognised");
        assert_eq!(grant.role, Role::Admin, "n{}", i + 1);
        assert_eq!(
            access::authenticate(tokens, "rkv_adm_s2"),
            Err(AuthError::Invalid)
        );
    }
    assert_eq!(
        c.nodes[controller].handle_token_change(now, &add("rd", record(Role::Read, "s2"))),
        Ok(TokenChange::Proposed)
    );
    c.drain(controller);
    c.run_for(1000);
    let now = c.now;
    let remove = |id: &str| TokenEdit::Remove { id: id.into() };
    assert_eq!(
        c.nodes[controller].handle_token_change(now, &remove("adm")),
        Err(TokenChangeError::Refused(MetaError::LastAdminToken(
            "adm".into()
        )))
    );
    assert_eq!(
        c.nodes[controller].handle_token_change(now, &remove("rd")),
        Ok(TokenChange::Proposed)
    );
    c.drain(controller);
    c.run_for(1000);
    let now = c.now;
    assert_eq!(
        c.nodes[controller].handle_token_change(now, &remove("rd")),
        Ok(TokenChange::Committed)
    );
    for n in &c.nodes {
        let tokens = &n.metadata().unwrap().tokens;
        assert_eq!(tokens.keys().collect::<Vec<_>>(), ["adm"]);
        assert_eq!(
            access::authenticate(tokens, "rkv_rd_s2"),
            Err(AuthError::Invalid)
        );
    }
}

/// A removed id comes back with a new data directory, as a StatefulSet's
/// highest pod does when it is scaled down (drained, removed, its volume
/// deleted) and up again: it registers under its old id with a new
/// incarnation, becomes a member again and is given replicas; the old
/// data directory's incarnation stays refused.
#[test]
fn a_removed_id_joins_again_from_an_empty_data_directory() {
    use ringkv_core::identity::Incarnation;
    use ringkv_core::metadata::{MemberState, MetaError};
    use ringkv_core::node::{RegisterError, Registration};
    let mut c = Cluster::with_config(4, 8, |cfg| cfg.placement.rebalance = true);
    c.quiet_events = true;
    c.run_for(2000);
    // n4 tells its incarnation, as a founder's driver does once.
    let controller = c.controller().expect("a controller");
    let (now, old) = (c.now, Incarnation(0x40));
    assert_eq!(
        c.nodes[controller].handle_register(now, NodeId(4), "n4:9094".into(), old),
        Ok(Registration::Proposed)
    );
    c.drain(controller);
    c.run_for(300);
    let now = c.now;
    assert!(c.nodes[controller].handle_drain(now, NodeId(4)).is_ok());
    c.drain(controller);
    c.run_for(30_000);
    let state = |c: &Cluster| c.nodes[0].metadata().unwrap().members[&NodeId(4)].state;
    assert_eq!(state(&c), MemberState::Removed);
    assert_every_group_on(&c, 8, &[1, 2, 3]);

    // The old directory is refused.
    let controller = c.controller().expect("a controller");
    let now = c.now;
    assert!(matches!(
        c.nodes[controller].handle_register(now, NodeId(4), "n4:9094".into(), old),
        Err(RegisterError::Refused(MetaError::Gone { .. }))
    ));
    // An empty one starts as a joiner does and registers.
    let mut cfg = c.nodes[3].config().clone();
    cfg.founding = false;
    c.nodes[3] = Node::new(cfg, 44, Recovered::default()).expect("start");
    c.disks[3].clear();
    let new = Incarnation(old.0 ^ 0x5a5a);
    assert_eq!(
        c.nodes[controller].handle_register(now, NodeId(4), "n4:9094".into(), new),
        Ok(Registration::Proposed)
    );
    c.drain(controller);
    c.run_for(30_000);
    assert_eq!(state(&c), MemberState::Up);
    let n4 = c.nodes[3].partitions().count();
    assert!(n4 > 0, "n4 holds replicas again");
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].detector().status(NodeId(4)),
            ringkv_core::detector::PeerStatus::Up,
            "n{} watches n4 again",
            i + 1
        );
    }
    let now = c.now;
    let controller = c.controller().expect("a controller");
    assert!(matches!(
        c.nodes[controller].handle_register(now, NodeId(4), "n4:9094".into(), old),
        Err(RegisterError::Refused(MetaError::OtherIncarnation { .. }))
    ));
}

/// Bad input from a peer: a pushed document that does not decode is
/// dropped and counted, the node keeps its document; a placement order
/// from a node that does not lead the metadata group is ignored.
#[test]
fn a_bad_document_and_an_order_from_a_non_controller_change_nothing() {
    use ringkv_core::io::{Gossip, PlacementMessage};
    use ringkv_core::metadata::METADATA_GROUP;
    let mut c = Cluster::new(4, 4);
    c.quiet_events = true;
    c.run_for(3000);
    let doc = c.nodes[3].metadata().cloned().expect("n4 has the document");
    let dropped = c.nodes[3].stats().batches_dropped;
    let now = c.now;
    let garbage = PeerBatch {
        from: NodeId(1),
        to: NodeId(4),
        messages: Vec::new(),
        gossip: Gossip {
            metadata_version: doc.version + 10,
            metadata_leader: None,
            metadata: Some(Bytes::from_static(&[0xff, 0xff, 0xff])),
        },
        placement: Vec::new(),
    };
    c.nodes[3].handle_message(now, garbage);
    c.drain(3);
    assert_eq!(c.nodes[3].stats().batches_dropped, dropped + 1);
    assert_eq!(c.nodes[3].metadata(), Some(&doc));

    // An order to hand over a partition's leadership, from a node that is
    // not the controller: the leader keeps it.
    let controller = c.nodes[0].metadata_leader().expect("a controller");
    let (&p, &leader) = c.leaders().iter().next().expect("a leader");
    let li = (leader.0 - 1) as usize;
    let sender = (1..=4)
        .map(NodeId)
        .find(|&n| n != controller && n != leader)
        .expect("a third node");
    let to = c.nodes[li]
        .raft(p)
        .unwrap()
        .membership()
        .voters
        .iter()
        .copied()
        .find(|&v| v != leader)
        .expect("another voter");
    let order = PeerBatch {
        from: sender,
        to: leader,
        messages: Vec::new(),
        gossip: Gossip::default(),
        placement: vec![PlacementMessage::TransferLeader { partition: p, to }],
    };
    let now = c.now;
    c.nodes[li].handle_message(now, order);
    let raft = c.nodes[li].raft(p).unwrap();
    assert_eq!(
        (raft.is_leader(), raft.transferee()),
        (true, None),
        "an order from {sender} was obeyed"
    );
    c.drain(li);
    c.run_for(200);
    assert_eq!(c.leaders()[&p], leader);
    assert_ne!(p, METADATA_GROUP);
}

/// A node joins a formed cluster the way `ringkv server --join` makes it:
/// it starts with no group (it founded nothing) and registers with the
/// controller. The member list gets it (`joining`, then `up` once heard
/// from), every node takes it as a peer, and with rebalancing on it is
/// given the replicas the ring over four members places on it (make before
/// break: no group ever has fewer than three voters) and its share of
/// leaders. A second data directory under its id is refused.
#[test]
fn a_node_that_registers_joins_and_takes_its_share() {
    use ringkv_core::identity::Incarnation;
    use ringkv_core::metadata::{METADATA_GROUP, MemberState, MetaError};
    use ringkv_core::node::{RegisterError, Registration};
    use ringkv_core::ring::Ring;
    const PARTITIONS: u32 = 16;
    let ring = RingConfig {
        partition_count: PARTITIONS,
        replication_factor: 3,
        tokens_per_node: 64,
    };
    let mut c = Cluster::with_config(3, PARTITIONS, |cfg| cfg.placement.rebalance = true);
    c.quiet_events = true;
    c.run_for(3000);
    let controller = c.controller().expect("a controller");
    // Some data, so that the replicas n4 gets come as snapshots with bytes.
    for k in 0..32u64 {
        let key = format!("k{k}");
        let p = c.nodes[0].ring().partition_of(key.as_bytes());
        let leader = c.leaders()[&p];
        c.request((leader.0 - 1) as usize, 100 + k, put(&key, "0123456789"));
    }
    c.run_for(500);
    let streamed =
        |c: &Cluster| -> u64 { c.nodes.iter().map(|n| n.stats().snapshot_bytes_sent).sum() };
    let streamed_before = streamed(&c);

    let mut cfg = NodeConfig::new(NodeId(4), (1..=4).map(NodeId).collect());
    cfg.founding = false;
    cfg.ring = ring;
    cfg.placement.rebalance = true;
    c.nodes
        .push(Node::new(cfg, 4, Recovered::default()).expect("start"));
    c.disks.push(Vec::new());
    assert_eq!(
        c.nodes[3].partitions().count(),
        0,
        "a joining node founds no group"
    );
    assert!(c.nodes[3].raft(METADATA_GROUP).is_none());

    let (now, inc) = (c.now, Incarnation(0x44));
    let other = (controller + 1) % 3;
    assert_eq!(
        c.nodes[other].handle_register(now, NodeId(4), "n4:9094".into(), inc),
        Err(RegisterError::NotController {
            this: c.nodes[other].id(),
            controller: Some(c.nodes[controller].id()),
        })
    );
    assert_eq!(
        c.nodes[controller].handle_register(now, NodeId(4), "n4:9094".into(), inc),
        Ok(Registration::Proposed)
    );
    c.drain(controller);
    c.run_for(300);
    let now = c.now;
    let Ok(Registration::Member(doc)) =
        c.nodes[controller].handle_register(now, NodeId(4), "n4:9094".into(), inc)
    else {
        panic!("n4 is registered once its change committed");
    };
    let n4 = &doc.members[&NodeId(4)];
    assert_eq!(
        (n4.incarnation, n4.address.as_str()),
        (Some(inc), "n4:9094")
    );
    assert_eq!(
        c.nodes[controller].handle_register(now, NodeId(4), "n4:9094".into(), Incarnation(0x45)),
        Err(RegisterError::Refused(MetaError::OtherIncarnation {
            node: NodeId(4),
            known: inc,
            offered: Incarnation(0x45),
        }))
    );

    // Every 100 ms: no group below three voters while replicas move; the
    // controller sees how far the new replicas are.
    let mut saw_catch_up = false;
    for _ in 0..300 {
        c.run_for(100);
        let plan = c.controller().and_then(|i| c.nodes[i].last_plan());
        saw_catch_up |= plan.is_some_and(|p| {
            p.moves
                .iter()
                .any(|m| m.catch_up.as_ref().is_some_and(|u| u.node == NodeId(4)))
        });
        for (p, l) in c.leaders() {
            let m = c.nodes[(l.0 - 1) as usize]
                .raft(p)
                .unwrap()
                .membership()
                .clone();
            let outgoing_ok = m.voters.len() >= 3;
            assert!(outgoing_ok, "{p} has {m:?}");
        }
    }
    assert!(saw_catch_up, "a plan showed n4's catch-up progress");
    let state = |c: &Cluster, i: usize| c.nodes[i].metadata().unwrap().members[&NodeId(4)].state;
    for i in 0..4 {
        assert_eq!(state(&c, i), MemberState::Up, "as n{} sees it", i + 1);
    }
    let desired = Ring::new(ring, (1..=4).map(NodeId)).expect("ring");
    let before = Ring::new(ring, (1..=3).map(NodeId)).expect("ring");
    let mut moved = 0;
    for p in (0..PARTITIONS).map(PartitionId) {
        let leader = c.leaders()[&p];
        let m = c.nodes[(leader.0 - 1) as usize]
            .raft(p)
            .unwrap()
            .membership()
            .clone();
        let mut want = desired.replicas(p).to_vec();
        want.sort_unstable();
        assert_eq!(m.voters, want, "{p}");
        assert!(m.learners.is_empty() && !m.is_joint(), "{p}: {m:?}");
        moved += usize::from(!before.replicas(p).contains(&NodeId(4)) && want.contains(&NodeId(4)));
    }
    let held = c.nodes[3].partitions().count();
    assert_eq!(held, moved, "n4 holds what the ring gives it");
    assert!(held > 0);
    assert!(
        streamed(&c) > streamed_before,
        "n4's replicas came as snapshots, counted as bytes streamed"
    );
    let led = leaders_per_node(&c);
    assert!(
        led.get(&NodeId(4)).copied().unwrap_or(0) >= 2,
        "n4 leads its share: {led:?}"
    );
}

/// A registered joiner that keeps asking to join (it restarted before its
/// join finished, and cannot reach the controller's answer) is heard by
/// the member its calls reach: it is not marked dead while it asks, even
/// when the member is not the controller. Once it stops asking, it dies
/// after the grace period like any silent member.
#[test]
fn a_joiner_that_keeps_asking_is_not_dead() {
    use ringkv_core::identity::Incarnation;
    use ringkv_core::metadata::MemberState;
    use ringkv_core::node::Registration;
    let mut c = Cluster::with_config(3, 8, |cfg| {
        cfg.placement.dead_after = Duration::from_secs(3);
    });
    c.quiet_events = true;
    // n4 never runs: what is sent to it is lost.
    c.down.insert(3);
    c.run_for(3000);
    let controller = c.controller().expect("a controller");
    let inc = Incarnation(0x44);
    let now = c.now;
    assert_eq!(
        c.nodes[controller].handle_register(now, NodeId(4), "n4:9094".into(), inc),
        Ok(Registration::Proposed)
    );
    c.drain(controller);
    c.run_for(500);
    let state = |c: &Cluster| c.nodes[controller].metadata().unwrap().members[&NodeId(4)].state;
    assert!(state(&c).is_live(), "registered: {:?}", state(&c));
    // n4 never runs; its calls reach a member that is not the controller.
    let other = (controller + 1) % 3;
    for _ in 0..10 {
        let now = c.now;
        let _ = c.nodes[other].handle_register(now, NodeId(4), "n4:9094".into(), inc);
        c.drain(other);
        c.run_for(1000);
        assert!(
            state(&c).is_live(),
            "n4 is asking: {:?} after {:?}",
            state(&c),
            c.now
        );
    }
    c.run_for(10_000);
    assert!(
        matches!(state(&c), MemberState::Dead | MemberState::Removed),
        "silent for 10 s: {:?}",
        state(&c)
    );
}

/// The metadata group moves like any group: draining the node that runs
/// the controller (a metadata replica, and its leader) hands the group's
/// leadership to another replica, adds the fourth node as its replacement
/// (learner, then a joint change) and removes the drained node; the new
/// controller finishes the drain. Then two nodes join and the group grows
/// to five voters.
#[test]
fn the_metadata_group_moves_off_a_drained_controller_and_grows_with_joins() {
    use ringkv_core::identity::Incarnation;
    use ringkv_core::metadata::{METADATA_GROUP, MemberState};
    use ringkv_core::node::Registration;
    let mut c = Cluster::with_config(4, 8, |cfg| cfg.placement.rebalance = true);
    c.quiet_events = true;
    c.run_for(3000);
    let first = c.controller().expect("a controller");
    let drained = c.nodes[first].id();
    let now = c.now;
    assert_eq!(
        c.nodes[first].handle_drain(now, drained),
        Ok(ringkv_core::node::Drain::Proposed)
    );
    c.drain(first);
    c.run_for(40_000);
    // (As a node that stays sees it: the removed one is told no more.)
    let state = |c: &Cluster, n: u64| {
        let i = c.controller().expect("a controller");
        c.nodes[i].metadata().unwrap().members[&NodeId(n)].state
    };
    assert_eq!(state(&c, drained.0), MemberState::Removed);
    let controller = c.controller().expect("a new controller");
    assert_ne!(controller, first);
    let meta = |c: &Cluster| {
        let i = c.controller().expect("a controller");
        c.nodes[i]
            .raft(METADATA_GROUP)
            .unwrap()
            .membership()
            .clone()
    };
    let m = meta(&c);
    let others: Vec<NodeId> = (1..=4).map(NodeId).filter(|&n| n != drained).collect();
    assert_eq!(m.voters, others, "{m:?}");
    assert!(
        c.nodes[first].raft(METADATA_GROUP).is_none(),
        "the drained node's replica is gone"
    );

    // Two nodes join: five up members, five metadata voters.
    for id in [5u64, 6] {
        let mut cfg = NodeConfig::new(NodeId(id), (1..=id).map(NodeId).collect());
        cfg.founding = false;
        cfg.ring = c.nodes[0].config().ring;
        cfg.placement.rebalance = true;
        c.nodes
            .push(Node::new(cfg, id, Recovered::default()).expect("start"));
        c.disks.push(Vec::new());
        loop {
            let i = c.controller().expect("a controller");
            let now = c.now;
            let addr = format!("n{id}:9090");
            match c.nodes[i].handle_register(now, NodeId(id), addr, Incarnation(id.into())) {
                Ok(Registration::Member(_)) => break,
                _ => {
                    c.drain(i);
                    c.run_for(200);
                }
            }
        }
    }
    c.run_for(60_000);
    let m = meta(&c);
    let mut want = others.clone();
    want.extend([NodeId(5), NodeId(6)]);
    assert_eq!(m.voters, want, "{m:?}");
    assert!(m.learners.is_empty() && !m.is_joint(), "{m:?}");
    for n in [5u64, 6] {
        assert_eq!(state(&c, n), MemberState::Up);
    }
}

/// One hop: a node that does not replicate a partition sends its requests
/// straight to the partition's leader, as the leader's reports (which every
/// node hears now and then) name it, not to a replica that forwards again.
/// A replica that is not the leader forwards to the leader it follows.
#[test]
fn a_non_replica_forwards_to_the_partitions_leader_in_one_hop() {
    let mut c = Cluster::new(5, 16);
    c.quiet_events = true;
    c.run_for(5_000);
    let leaders = c.leaders();
    let mut checked = 0;
    for (&p, &leader) in &leaders {
        let Some(outsider) = (0..c.nodes.len()).find(|&i| c.nodes[i].raft(p).is_none()) else {
            continue;
        };
        let key = (0..)
            .map(|k| format!("k{k}"))
            .find(|k| c.nodes[outsider].ring().partition_of(k.as_bytes()) == p)
            .expect("a key of the partition");
        let now = c.now;
        c.nodes[outsider].handle_request(
            now,
            RequestId(500 + u64::from(p.0)),
            put(&key, "v"),
            Hops(0),
        );
        match c.nodes[outsider].poll_reply() {
            Some((
                _,
                Reply::Forward {
                    to,
                    partition,
                    hops,
                },
            )) => {
                assert_eq!(partition, p);
                assert_eq!(to, leader, "p{}: forwarded to {to}, not its leader", p.0);
                assert_eq!(hops, Hops(1));
            }
            other => panic!("p{}: the outsider answered {other:?}", p.0),
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} partitions had a node outside them"
    );
}

/// The replies node `i` gave request `id`, as the transcript recorded them.
fn replies_to(c: &Cluster, i: usize, id: u64) -> Vec<String> {
    let tag = format!(" n{}: reply to request {id}: ", i + 1);
    c.out
        .lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, r)| r.to_string()))
        .collect()
}

/// A request that reaches a replica while its group elects a leader waits
/// for the election (`NodeConfig::leader_wait`) instead of failing with
/// `no_leader`: the winner serves it, the others forward it to the winner.
#[test]
fn a_request_waits_out_an_election() {
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    for i in 0..3 {
        c.request(i, 10 + i as u64, put("k", "v"));
    }
    for i in 0..3 {
        assert_eq!(
            replies_to(&c, i, 10 + i as u64),
            Vec::<String>::new(),
            "n{}",
            i + 1
        );
    }
    c.run_for(3_000);
    let (&p, &leader) = c.leaders().iter().next().expect("a leader");
    for i in 0..3 {
        let replies = replies_to(&c, i, 10 + i as u64);
        assert_eq!(replies.len(), 1, "n{}: {replies:?}", i + 1);
        if c.nodes[i].id() == leader {
            assert!(
                replies[0].starts_with("Done(Ok(Put"),
                "n{}: {replies:?}",
                i + 1
            );
        } else {
            let forward = format!(
                "{:?}",
                Reply::Forward {
                    to: leader,
                    partition: p,
                    hops: Hops(1)
                }
            );
            assert_eq!(replies[0], forward, "n{}", i + 1);
        }
        // Nothing stays counted against admission once answered.
        assert_eq!(c.nodes[i].pending_requests(), 0, "n{}", i + 1);
    }
}

/// A replica that cannot reach a quorum has no leader to wait for: the
/// client hears `no_leader` once `leader_wait` has passed, not before, and
/// not at its request's deadline.
#[test]
fn without_a_leader_a_request_fails_after_the_wait() {
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.down.extend([1, 2]);
    let wait = c.nodes[0].config().leader_wait;
    assert!(Duration::from_millis(100) <= wait && wait < c.nodes[0].config().request_timeout);
    c.request(0, 7, put("k", "v"));
    c.run_for((wait.as_millis() as u64).saturating_sub(10));
    assert_eq!(replies_to(&c, 0, 7), Vec::<String>::new());
    c.run_for(100);
    let replies = replies_to(&c, 0, 7);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with("Done(Err(NoLeader"), "{replies:?}");
    assert_eq!(c.nodes[0].pending_requests(), 0);
}

/// MSET within a slot: a put-all writes every key in one entry, so all of
/// them carry one revision, a key given twice keeps its last value, and a
/// put-all that spans partitions or exceeds one entry is refused before
/// anything is proposed.
#[test]
fn a_put_all_writes_its_keys_at_one_revision() {
    use ringkv_core::ring::{key_slot, partition_of_slot};
    let mut c = Cluster::new(3, 4);
    c.quiet_events = true;
    c.run_for(3_000);
    let b = |s: &str| Bytes::from(s.to_owned());
    let p = partition_of_slot(key_slot(b"{u}a"), 4);
    let leader = c.leaders()[&p];
    let at = (leader.0 - 1) as usize;
    let pairs = vec![
        (b("{u}a"), b("1")),
        (b("{u}b"), b("2")),
        (b("{u}a"), b("3")),
    ];
    c.request(at, 1, ClientRequest::PutAll { pairs });
    c.run_for(100);
    let replies = replies_to(&c, at, 1);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let revision: u64 = replies[0]
        .strip_prefix("Done(Ok(PutAll { mod_revision: ")
        .and_then(|r| r.strip_suffix(", created: 2 }))"))
        .unwrap_or_else(|| panic!("{replies:?}"))
        .parse()
        .expect("a revision");
    // Both keys, at that revision, on another replica (its own state).
    let other = (at + 1) % 3;
    for (id, key, value) in [(2, "{u}a", "3"), (3, "{u}b", "2")] {
        let get = ClientRequest::Get {
            key: b(key),
            consistency: Consistency::Stale,
        };
        c.run_for(300);
        c.request(other, id, get);
        let want = format!(
            "Done(Ok(Value(Some(KeyValue {{ key: b\"{key}\", value: b\"{value}\", version: 1, \
             create_revision: {revision}, mod_revision: {revision}, expires_at: None }}))))"
        );
        let replies = replies_to(&c, other, id);
        assert!(replies.last() == Some(&want), "{replies:?}, want {want}");
    }

    // Refused at once, whichever node is asked: keys of two partitions,
    // keys and values larger than one entry, no keys at all.
    let elsewhere = (0..10)
        .map(|i| format!("{{t{i}}}"))
        .find(|k| partition_of_slot(key_slot(k.as_bytes()), 4) != p)
        .expect("a key of another partition");
    let big = Bytes::from(vec![b'x'; 600_000]);
    let refused = [
        (
            vec![(b("{u}a"), b("4")), (b(&elsewhere), b("4"))],
            "Done(Err(CrossPartition))".to_owned(),
        ),
        (
            vec![(b("{u}a"), big.clone()), (b("{u}b"), big)],
            format!(
                "Done(Err(WriteTooLarge {{ len: {}, max: {} }}))",
                2 * ("{u}a".len() + 600_000 + ringkv_core::kv::Command::PAIR_OVERHEAD_BYTES),
                (4 << 10) + (1 << 20)
            ),
        ),
        (vec![], "Done(Err(EmptyKey))".to_owned()),
    ];
    for (n, (pairs, want)) in refused.into_iter().enumerate() {
        let id = 10 + n as u64;
        c.request(other, id, ClientRequest::PutAll { pairs });
        assert_eq!(replies_to(&c, other, id), vec![want]);
    }
    c.run_for(300);
    // Nothing of the refused writes landed.
    c.request(
        other,
        20,
        ClientRequest::Get {
            key: b("{u}a"),
            consistency: Consistency::Stale,
        },
    );
    let replies = replies_to(&c, other, 20);
    assert!(
        replies.last().is_some_and(|r| r.contains("value: b\"3\"")),
        "{replies:?}"
    );
}

/// A scan reads one partition's keys in a range, in order, as one cut: at
/// most `limit` of them, saying whether more follow, so a caller pages by
/// starting after the last key it got; `keys_only` leaves values out; a
/// stale scan is served by a follower from its own state; a limit of 0 or
/// over the maximum is refused.
#[test]
fn a_scan_pages_through_a_partitions_keys_in_order() {
    use ringkv_core::node::{ClientError, ClientResponse, MAX_SCAN_LIMIT};
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let (_, &leader) = c.leaders().iter().next().expect("a leader");
    let i = (leader.0 - 1) as usize;
    for (n, key) in ["a3", "b1", "a1", "a5", "a2", "a4", "a"].iter().enumerate() {
        c.request(i, 100 + n as u64, put(key, &format!("v-{key}")));
    }
    c.run_for(200);
    let scan = |start: &str, limit: u32, keys_only: bool, consistency| ClientRequest::Scan {
        key: Bytes::from_static(b"any"),
        start: Bytes::from(start.to_owned()),
        end: Some(Bytes::from_static(b"b")),
        limit,
        keys_only,
        consistency,
    };
    let page = |c: &Cluster, id: u64| -> (Vec<(String, String)>, bool) {
        match c.replies.get(&id) {
            Some(Reply::Done(Ok(ClientResponse::Scanned { kvs, more }))) => (
                kvs.iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            String::from_utf8_lossy(&kv.value).into_owned(),
                        )
                    })
                    .collect(),
                *more,
            ),
            other => panic!("request {id}: {other:?}\n{}", c.out),
        }
    };
    let keys = |kvs: &[(String, String)]| kvs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();

    c.request(i, 1, scan("a", 3, false, Consistency::Linearizable));
    c.run_for(50);
    let (first, more) = page(&c, 1);
    assert_eq!(keys(&first), ["a", "a1", "a2"]);
    assert_eq!(first[1].1, "v-a1");
    assert!(more, "two more keys in [a, b)");
    // The next page starts just after the last key: "a2" + NUL.
    c.request(i, 2, scan("a2\0", 3, true, Consistency::Linearizable));
    c.run_for(50);
    let (second, more) = page(&c, 2);
    assert_eq!(keys(&second), ["a3", "a4", "a5"]);
    assert!(
        second.iter().all(|(_, v)| v.is_empty()),
        "keys only: {second:?}"
    );
    assert!(!more, "b1 is outside the range");

    // A follower serves a stale scan from its own state, without the leader.
    let f = (0..3).find(|&j| j != i).unwrap();
    c.request(f, 3, scan("a", 100, false, Consistency::Stale));
    let (all, more) = page(&c, 3);
    assert_eq!(keys(&all), ["a", "a1", "a2", "a3", "a4", "a5"]);
    assert!(!more);

    for (id, limit) in [(4, 0), (5, MAX_SCAN_LIMIT + 1)] {
        c.request(i, id, scan("a", limit, false, Consistency::Linearizable));
        assert_eq!(
            c.replies.get(&id),
            Some(&Reply::Done(Err(ClientError::InvalidScanLimit {
                limit,
                max: MAX_SCAN_LIMIT
            })))
        );
    }
}

/// A linearizable get of `key` through node `i`; the reply's key, if any.
fn get_now(c: &mut Cluster, i: usize, id: u64, key: &str) -> Option<ringkv_core::kv::KeyValue> {
    use ringkv_core::node::ClientResponse;
    c.request(
        i,
        id,
        ClientRequest::Get {
            key: Bytes::from(key.to_owned()),
            consistency: Consistency::Linearizable,
        },
    );
    c.run_for(50);
    match c.replies.get(&id) {
        Some(Reply::Done(Ok(ClientResponse::Value(kv)))) => kv.clone(),
        other => panic!("get {key} (request {id}): {other:?}\n{}", c.out),
    }
}

fn put_with_ttl(key: &str, value: &str, ttl_ms: u64) -> ClientRequest {
    ClientRequest::Put {
        key: Bytes::from(key.to_owned()),
        value: Bytes::from(value.to_owned()),
        precondition: Precondition::None,
        return_previous: false,
        expiry: ringkv_core::node::Expiry::AfterMs(ttl_ms),
    }
}

#[test]
fn a_key_is_gone_at_its_deadline_and_its_space_is_swept_on_every_replica() {
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let (&p, &leader) = c.leaders().iter().next().expect("a leader");
    let i = (leader.0 - 1) as usize;
    let put_at = c.true_wall_ms();
    c.request(i, 1, put_with_ttl("session", "s1", 1_000));
    c.request(i, 2, put("kept", "k1"));
    c.run_for(100);
    let kv = get_now(&mut c, i, 3, "session").expect("alive before its deadline");
    // The leader turned the TTL into a deadline with its own clock.
    assert_eq!(kv.expires_at, Some(put_at + 1_000));
    assert_eq!(get_now(&mut c, i, 4, "kept").unwrap().expires_at, None);
    // Just before the deadline (the reads above took 100 ms).
    c.run_for(1_000 - 250 - 10);
    assert!(c.true_wall_ms() < put_at + 1_000);
    assert!(get_now(&mut c, i, 5, "session").is_some());
    c.run_for(20);
    assert!(c.true_wall_ms() > put_at + 1_000);
    assert_eq!(
        get_now(&mut c, i, 6, "session"),
        None,
        "read past the deadline"
    );
    assert!(get_now(&mut c, i, 7, "kept").is_some());
    // The leader's sweep removed the record on every replica.
    c.run_for(500);
    for n in &c.nodes {
        let kv = n.kv(p).expect("a replica");
        assert_eq!(kv.len(), 1);
        assert_eq!(kv.data_bytes(), ("kept".len() + "k1".len()) as u64);
        assert_eq!(kv.next_deadline(), None);
    }
    assert!(c.nodes[i].stats().sweeps >= 1);
}

#[test]
fn an_expired_key_stays_gone_under_a_new_leader_whose_clock_is_behind() {
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let (_, &leader) = c.leaders().iter().next().expect("a leader");
    let i = (leader.0 - 1) as usize;
    let deadline = c.true_wall_ms() + 10_000;
    c.request(i, 1, put_with_ttl("token", "t", 10_000));
    c.run_for(100);
    assert_eq!(
        get_now(&mut c, i, 2, "token").unwrap().expires_at,
        Some(deadline)
    );
    // Then the leader's clock runs 2 s ahead of true time, the others' 2 s
    // behind (within no sane drift bound, to make the point).
    for j in 0..3 {
        c.wall_offsets_ms[j] = if j == i { 2_000 } else { -2_000 };
    }
    // 8.5 s after the put by true time the leader's clock has passed the
    // deadline: the key is gone, and the partition's clock has moved past it.
    c.run_for(8_350);
    assert_eq!(get_now(&mut c, i, 3, "token"), None);
    // The leader dies. The new one's clock says the deadline is 3.5 s
    // away, yet the key stays gone: expiry lives in the log, not in a
    // clock.
    c.down.insert(i);
    c.run_for(2_500);
    let (_, &new_leader) = c.leaders().iter().next().expect("a new leader");
    let j = (new_leader.0 - 1) as usize;
    assert_ne!(j, i);
    let new_leaders_wall = (c.true_wall_ms() as i64 + c.wall_offsets_ms[j]) as u64;
    assert!(new_leaders_wall < deadline, "the test needs a clock behind");
    assert_eq!(get_now(&mut c, j, 4, "token"), None);
    for k in 0..3 {
        if k != i {
            assert_eq!(c.nodes[k].kv(PartitionId(0)).unwrap().get(b"token"), None);
        }
    }
}

#[test]
fn a_leader_whose_clock_passed_a_deadline_sweeps_before_it_answers_a_read() {
    use ringkv_core::node::ClientResponse;
    let mut c = Cluster::new(3, 1);
    c.quiet_events = true;
    c.run_for(3_000);
    let (&p, &leader) = c.leaders().iter().next().expect("a leader");
    let i = (leader.0 - 1) as usize;
    let deadline = c.true_wall_ms() + 10_000;
    c.request(i, 1, put_with_ttl("token", "t", 10_000));
    c.run_for(100);
    // The leader's clock jumps 20 s ahead: by it, the key has expired; by
    // the others' (true time), it has 10 s to go. No sweep has run yet.
    // Just after a tick (the next is 50 ms away), so that none falls
    // inside the read below.
    while c.nodes[i]
        .poll_timeout()
        .is_some_and(|t| t.saturating_since(c.now) < Duration::from_millis(45))
    {
        c.run_for(1);
    }
    c.wall_offsets_ms[i] = 20_000;
    let sweeps = c.nodes[i].stats().sweeps;
    c.request(
        i,
        2,
        ClientRequest::Get {
            key: Bytes::from_static(b"token"),
            consistency: Consistency::Linearizable,
        },
    );
    c.run_for(5);
    assert_eq!(
        c.replies.get(&2),
        Some(&Reply::Done(Ok(ClientResponse::Value(None)))),
        "{}",
        c.out
    );
    // The read did not answer "gone" on the leader's word alone: it put a
    // sweep stamped with that clock in the log first (no background sweep
    // ran meanwhile), so every replica's partition clock is past the
    // deadline before anyone is told.
    assert_eq!(c.nodes[i].stats().sweeps, sweeps, "a background sweep ran");
    assert!(c.nodes[i].kv(p).unwrap().clock_ms() >= deadline);
    // The leader dies at once. The next one's clock says the key has 10 s
    // left, yet it stays gone.
    c.down.insert(i);
    c.run_for(2_500);
    let (_, &new_leader) = c.leaders().iter().next().expect("a new leader");
    let j = (new_leader.0 - 1) as usize;
    assert!(c.true_wall_ms() < deadline);
    assert_eq!(get_now(&mut c, j, 3, "token"), None);
}

/// A node about to stop (SIGTERM) hands every group it leads to a caught-up
/// voter that is up: within a few round trips, not an election timeout,
/// the groups have new leaders; the controller, told by the node's report,
/// gives it none back while it stays.
#[test]
fn a_leaving_node_hands_its_leaderships_over_and_gets_none_back() {
    let mut c = Cluster::new(3, 8);
    c.quiet_events = true;
    c.run_for(3000);
    let leaders = c.leaders();
    let led_by_1: Vec<PartitionId> = leaders
        .iter()
        .filter(|(_, l)| l.0 == 1)
        .map(|(p, _)| *p)
        .collect();
    assert!(!led_by_1.is_empty(), "n1 leads something: {leaders:?}");
    let terms: BTreeMap<PartitionId, u64> = led_by_1
        .iter()
        .map(|&p| (p, c.nodes[0].raft(p).unwrap().term()))
        .collect();
    // (The metadata group, whose leader is the controller, counts too.)
    let controller = c.nodes[0]
        .raft(ringkv_core::metadata::METADATA_GROUP)
        .is_some_and(|r| r.is_leader());
    let now = c.now;
    assert_eq!(
        c.nodes[0].handle_leaving(now),
        led_by_1.len() + usize::from(controller)
    );
    // A handover is a round of appends and a TimeoutNow: tens of ms here,
    // where an election would first wait out a timeout.
    c.run_for(100);
    let after = c.leaders();
    for p in &led_by_1 {
        let l = after.get(p).copied();
        assert!(
            l.is_some_and(|l| l.0 != 1),
            "{p} led by {l:?} 100 ms after leaving"
        );
        assert!(
            c.nodes[0].raft(*p).unwrap().term() > terms[p],
            "{p}: n1 saw the new leader's term"
        );
    }
    // The controller balances leaders every few seconds: none goes back.
    c.run_for(5000);
    let later = c.leaders();
    assert!(
        later.values().all(|l| l.0 != 1),
        "n1 got leaderships back: {later:?}"
    );
    let now = c.now;
    assert_eq!(c.nodes[0].handle_leaving(now), 0, "n1 leads nothing");
}

/// A leaving node hands over only to a voter its detector holds up: with
/// n2 down (and n2 the lower id, which a tie in match index would favour),
/// every group n1 leads goes to n3.
#[test]
fn a_leaving_node_hands_over_only_to_a_voter_that_is_up() {
    let mut c = Cluster::new(3, 8);
    c.quiet_events = true;
    c.run_for(3000);
    c.down.insert(1);
    c.run_for(3000);
    let led_by_1: Vec<PartitionId> = c
        .leaders()
        .iter()
        .filter(|(_, l)| l.0 == 1)
        .map(|(p, _)| *p)
        .collect();
    assert!(
        !led_by_1.is_empty(),
        "n1 leads something: {:?}",
        c.leaders()
    );
    let now = c.now;
    c.nodes[0].handle_leaving(now);
    for p in &led_by_1 {
        assert_eq!(
            c.nodes[0].raft(*p).unwrap().transferee(),
            Some(NodeId(3)),
            "{p} handed to the voter that is up"
        );
    }
    c.run_for(100);
    let leaders = c.leaders();
    for p in &led_by_1 {
        assert_eq!(leaders.get(p), Some(&NodeId(3)), "{p}");
    }
}
