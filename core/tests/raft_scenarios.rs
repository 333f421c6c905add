//! Scripted interaction tests for one Raft group, in the style of etcd-raft's
//! `testdata/*.txt`: each file under `tests/raft_scripts/` is a narrated
//! sequence of commands; the harness runs it and the whole transcript
//! (commands, messages delivered, records persisted, entries applied, role
//! changes) is an `insta` snapshot, reviewed like code.
//!
//! Commands (one per line; `#` lines are narration, copied to the output):
//! - `add-nodes N [election=E] [heartbeat=H] [drift_ppm=P] [quiesce=Q] [max_entries=M]
//!   [snapshot_chunk=BYTES] [snapshot_window=CHUNKS] [promotion_lag=ENTRIES]`
//! - `campaign I` — node I starts an election now
//! - `tick I[,J..] [COUNT]` — COUNT logical ticks on each node listed (no processing)
//! - `tick-election I` — tick node I until it has output, i.e. campaigns (at most 3 timeouts)
//! - `process-ready I` — drain node I's outputs: persist, apply, queue messages
//! - `deliver-msgs [I]` — deliver queued messages (to node I only, if given)
//! - `drop-msg I K` — lose the K-th (from 1) queued message to node I
//! - `hold-msgs I` — the messages queued for node I now are delayed in the
//!   network until `release-msgs I` puts them back at the head of the queue
//! - `stabilize` — process and deliver until nothing moves
//! - `partition A,B C` — only nodes in the same group can talk; `heal`
//! - `propose I DATA`, `read I CTX [lease]`, `transfer I J`, `compact I INDEX`
//! - `restart I` — rebuild node I from what it persisted
//! - `add-joiner J` — a new node J that knows no configuration yet (a replica
//!   being added to the group; it learns the group from the leader's snapshot)
//! - `conf I CHANGE` — node I proposes a configuration change: `add-learner J`,
//!   `remove-learner J`, `promote J`, `remove J`, `replace ADD REMOVE`
//! - `status I`, `log I`, `config I`

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use ringkv_core::NodeId;
use ringkv_core::raft::{
    ConfChange, EntryKind, Membership, Message, PersistRecord, Raft, RaftConfig, RaftEvent,
    RaftStorage, Ready,
};

struct Peer {
    raft: Raft,
    /// The configuration it was created with (empty for a joiner).
    initial: Membership,
    disk: RaftStorage,
    /// (index, payload) of every normal entry applied, in order: the "state machine".
    applied: Vec<(u64, String)>,
}

impl Peer {
    /// The state machine's image as of entry `index`: the applied entries
    /// up to it.
    fn image(&self, index: u64) -> Bytes {
        let upto: Vec<String> = self
            .applied
            .iter()
            .filter(|(i, _)| *i <= index)
            .map(|(i, v)| format!("{i}:{v}"))
            .collect();
        Bytes::from(upto.join(","))
    }
}

struct Harness {
    cfg: RaftConfig,
    membership: Membership,
    peers: BTreeMap<u64, Peer>,
    queue: VecDeque<Message>,
    /// Messages delayed by `hold-msgs`, per destination.
    held: BTreeMap<u64, Vec<Message>>,
    /// Partition groups: node -> group id; messages across groups are dropped.
    groups: BTreeMap<u64, usize>,
    out: String,
}

fn entry_str(e: &ringkv_core::raft::Entry) -> String {
    match e.kind {
        EntryKind::Noop => format!("{}/{} noop", e.term, e.index),
        EntryKind::Normal => format!(
            "{}/{} {}",
            e.term,
            e.index,
            String::from_utf8_lossy(&e.data)
        ),
        EntryKind::ConfChange => format!("{e:?}"),
    }
}

impl Harness {
    fn new() -> Self {
        Harness {
            cfg: RaftConfig::default(),
            membership: Membership::default(),
            peers: BTreeMap::new(),
            queue: VecDeque::new(),
            held: BTreeMap::new(),
            groups: BTreeMap::new(),
            out: String::new(),
        }
    }

    fn line(&mut self, s: impl AsRef<str>) {
        self.out.push_str(s.as_ref());
        self.out.push('\n');
    }

    fn peer(&mut self, id: u64) -> &mut Peer {
        self.peers
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn run(&mut self, script: &str) -> String {
        for raw in script.lines() {
            let line = raw.trim();
            if line.is_empty() {
                self.line("");
                continue;
            }
            if line.starts_with('#') {
                self.line(line);
                continue;
            }
            self.line(format!("> {line}"));
            let args: Vec<&str> = line.split_whitespace().collect();
            self.command(&args);
        }
        std::mem::take(&mut self.out)
    }

    fn num(s: &str) -> u64 {
        s.parse().unwrap_or_else(|_| panic!("not a number: {s}"))
    }

    fn command(&mut self, args: &[&str]) {
        match args[0] {
            "add-nodes" => {
                let n = Self::num(args[1]);
                for kv in &args[2..] {
                    let (k, v) = kv.split_once('=').expect("key=value");
                    let v = Self::num(v);
                    match k {
                        "election" => self.cfg.election_ticks = v as u32,
                        "heartbeat" => self.cfg.heartbeat_ticks = v as u32,
                        "drift_ppm" => self.cfg.max_clock_drift_ppm = v as u32,
                        "quiesce" => self.cfg.quiesce_after_ticks = v as u32,
                        "max_entries" => self.cfg.max_entries_per_msg = v as usize,
                        "snapshot_chunk" => self.cfg.snapshot_chunk_bytes = v as usize,
                        "snapshot_window" => self.cfg.max_snapshot_chunks_inflight = v as usize,
                        "promotion_lag" => self.cfg.max_promotion_lag_entries = v,
                        _ => panic!("unknown option {k}"),
                    }
                }
                self.membership = Membership::new((1..=n).map(NodeId));
                for id in 1..=n {
                    let raft = Raft::new(
                        NodeId(id),
                        self.cfg.clone(),
                        self.membership.clone(),
                        RaftStorage::default(),
                        id,
                    );
                    self.peers.insert(
                        id,
                        Peer {
                            raft,
                            initial: self.membership.clone(),
                            disk: RaftStorage::default(),
                            applied: Vec::new(),
                        },
                    );
                }
                let lease = self.cfg.lease_ticks();
                self.line(format!(
                    "  {n} nodes, election={} heartbeat={} lease={lease} ticks",
                    self.cfg.election_ticks, self.cfg.heartbeat_ticks
                ));
            }
            "add-joiner" => {
                let id = Self::num(args[1]);
                let raft = Raft::new(
                    NodeId(id),
                    self.cfg.clone(),
                    Membership::default(),
                    RaftStorage::default(),
                    id,
                );
                let peer = Peer {
                    raft,
                    initial: Membership::default(),
                    disk: RaftStorage::default(),
                    applied: Vec::new(),
                };
                self.peers.insert(id, peer);
                self.line(format!("  n{id} joins, knowing no configuration"));
            }
            "conf" => {
                let id = Self::num(args[1]);
                let node = |i: usize| NodeId(Self::num(args[i]));
                let change = match args[2] {
                    "add-learner" => ConfChange::AddLearner(node(3)),
                    "remove-learner" => ConfChange::RemoveLearner(node(3)),
                    "promote" => ConfChange::EnterJoint {
                        promote: vec![node(3)],
                        remove: vec![],
                    },
                    "remove" => ConfChange::EnterJoint {
                        promote: vec![],
                        remove: vec![node(3)],
                    },
                    "replace" => ConfChange::EnterJoint {
                        promote: vec![node(3)],
                        remove: vec![node(4)],
                    },
                    other => panic!("unknown configuration change {other}"),
                };
                let r = self.peer(id).raft.propose_conf_change(change);
                match r {
                    Ok(index) => self.line(format!("  Ok({index})")),
                    Err(e) => self.line(format!("  refused: {e}")),
                }
            }
            "config" => {
                let id = Self::num(args[1]);
                let m = self.peer(id).raft.membership().clone();
                self.line(format!("  n{id}: {m}"));
            }
            "campaign" => self.peer(Self::num(args[1])).raft.start_election(),
            "tick" => {
                let count = args.get(2).map_or(1, |c| Self::num(c));
                for id in args[1].split(',').map(Self::num) {
                    for _ in 0..count {
                        self.peer(id).raft.tick();
                    }
                }
            }
            "tick-election" => {
                let id = Self::num(args[1]);
                let p = self.peer(id);
                // Tick until the node has something to say (it campaigned).
                let max = 3 * p.raft.config().election_ticks;
                let mut n = 0;
                while !p.raft.has_ready() && n < max {
                    p.raft.tick();
                    n += 1;
                }
                self.line(format!("  n{id}: {n} ticks"));
            }
            "process-ready" => {
                let id = Self::num(args[1]);
                self.process(id);
            }
            "deliver-msgs" => {
                let to = args.get(1).map(|s| Self::num(s));
                self.deliver(to);
            }
            "drop-msg" => {
                let (to, k) = (Self::num(args[1]), Self::num(args[2]) as usize);
                let pos = self
                    .queue
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.to.0 == to)
                    .nth(k - 1)
                    .map(|(i, _)| i)
                    .unwrap_or_else(|| panic!("no message {k} queued for n{to}"));
                let m = self.queue.remove(pos).expect("found above");
                self.line(format!("  lost {m:?}"));
            }
            "hold-msgs" => {
                let to = Self::num(args[1]);
                let (held, rest): (Vec<Message>, Vec<Message>) =
                    self.queue.drain(..).partition(|m| m.to.0 == to);
                self.queue = rest.into();
                self.line(format!("  {} messages to n{to} delayed", held.len()));
                self.held.entry(to).or_default().extend(held);
            }
            "release-msgs" => {
                let to = Self::num(args[1]);
                let held = self.held.remove(&to).unwrap_or_default();
                self.line(format!("  {} delayed messages to n{to} back", held.len()));
                for m in held.into_iter().rev() {
                    self.queue.push_front(m);
                }
            }
            "stabilize" => self.stabilize(),
            "partition" => {
                self.groups.clear();
                for (g, part) in args[1..].iter().enumerate() {
                    for id in part.split(',') {
                        self.groups.insert(Self::num(id), g);
                    }
                }
            }
            "heal" => self.groups.clear(),
            "propose" => {
                let id = Self::num(args[1]);
                let data = Bytes::from(args[2].to_string());
                let r = self.peer(id).raft.propose(data);
                self.line(format!("  {r:?}"));
            }
            "read" => {
                let id = Self::num(args[1]);
                let ctx = Self::num(args[2]);
                let lease = args.get(3) == Some(&"lease");
                let p = self.peer(id);
                let valid = p.raft.lease_valid();
                let r = p.raft.read(ctx, lease);
                self.line(format!("  {r:?} (lease valid: {valid})"));
            }
            "transfer" => {
                let (id, to) = (Self::num(args[1]), Self::num(args[2]));
                let r = self.peer(id).raft.transfer_leadership(NodeId(to));
                self.line(format!("  {r:?}"));
            }
            "compact" => {
                let (id, index) = (Self::num(args[1]), Self::num(args[2]));
                let p = self.peer(id);
                let data = p.image(index);
                let ok = p.raft.compact(index, data);
                let first = p.raft.log().first_index();
                self.line(format!("  compacted: {ok}, first index now {first}"));
            }
            "restart" => {
                let id = Self::num(args[1]);
                let cfg = self.cfg.clone();
                let p = self.peer(id);
                let membership = p.initial.clone();
                p.raft = Raft::new(NodeId(id), cfg, membership, p.disk.clone(), id + 100);
                p.applied = match &p.disk.snapshot {
                    Some(s) => split_snapshot(&s.data),
                    None => Vec::new(),
                };
                let hs = p.raft.hard_state();
                let last = p.raft.log().last_index();
                let vote = hs.vote.map_or("none".into(), |v| v.to_string());
                self.line(format!(
                    "  n{id} restarted: term={} vote={vote} commit={} last={last}",
                    hs.term, hs.commit
                ));
            }
            "status" => {
                let id = Self::num(args[1]);
                let s = self.status(id);
                self.line(s);
            }
            "log" => {
                let id = Self::num(args[1]);
                let p = self.peer(id);
                let log = p.raft.log();
                let entries: Vec<String> = log.entries().iter().map(entry_str).collect();
                let snap = log.snapshot_meta().clone();
                let applied: Vec<&str> = p.applied.iter().map(|(_, v)| v.as_str()).collect();
                let applied = applied.join(",");
                let line = format!(
                    "  n{id} log: snapshot={}/{} [{}] committed={} applied={} state=[{applied}]",
                    snap.term,
                    snap.index,
                    entries.join(", "),
                    log.committed(),
                    log.applied()
                );
                self.line(line);
            }
            other => panic!("unknown command {other}"),
        }
    }

    fn status(&self, id: u64) -> String {
        let r = &self.peers[&id].raft;
        let mut s = format!(
            "  n{id}: {:?} term={} leader={} commit={} applied={} last={}",
            r.role(),
            r.term(),
            r.leader().map_or("none".into(), |l| l.to_string()),
            r.log().committed(),
            r.log().applied(),
            r.log().last_index()
        );
        if r.is_quiesced() {
            s.push_str(" quiesced");
        }
        if r.wants_snapshot() {
            s.push_str(" wants a snapshot");
        }
        if let Some((index, held, total)) = r.incoming_snapshot_progress() {
            s.push_str(&format!(
                " receiving snapshot {index} ({held} of {total} bytes)"
            ));
        }
        if r.is_leader() {
            for &v in r.membership().replicas().iter().filter(|&&v| v != r.id()) {
                if let Some(pr) = r.progress(v) {
                    s.push_str(&format!(
                        "\n    {v}: match={} next={} {:?}",
                        pr.matched, pr.next, pr.state
                    ));
                    if let Some((acked, total)) = r.outgoing_snapshot_progress(v) {
                        s.push_str(&format!(" (acknowledged {acked} of {total} bytes)"));
                    }
                }
            }
        }
        s
    }

    /// A leader that wants a snapshot (its log keeps only the position of
    /// the last one) is handed that snapshot's image again, built from the
    /// entries it had applied up to the snapshot's index: as if the log
    /// had kept it. Compacting anew is left to the scripts (`compact`), as
    /// the node's compaction queue does it. Whether it did anything.
    fn serve_snapshot_wanted(&mut self, id: u64) -> bool {
        let p = self.peer(id);
        if !p.raft.wants_snapshot() || !p.raft.snapshot_image_would_serve() {
            return false;
        }
        let index = p.raft.log().snapshot_meta().index;
        let data = p.image(index);
        assert!(p.raft.supply_snapshot_image(data));
        self.line(format!(
            "  n{id}: wants a snapshot: the image of its snapshot at {index} is supplied"
        ));
        true
    }

    fn process(&mut self, id: u64) -> bool {
        let served = self.serve_snapshot_wanted(id);
        self.process_ready(id) || served
    }

    fn process_ready(&mut self, id: u64) -> bool {
        let p = self.peer(id);
        let ready: Ready = p.raft.take_ready();
        if ready.is_empty() {
            return false;
        }
        let mut lines = Vec::new();
        for e in &ready.events {
            if let RaftEvent::ConfigChanged { .. } = e {
                lines.push(format!("  n{id}: {e}: {}", p.raft.membership()));
            } else {
                lines.push(format!("  n{id}: {e}"));
            }
        }
        // Persist synchronously, then report it durable.
        let mut persisted = Vec::new();
        for rec in &ready.persist {
            match rec {
                PersistRecord::HardState(hs) => lines.push(format!(
                    "  n{id}: persist HardState term={} vote={} commit={}",
                    hs.term,
                    hs.vote.map_or("none".into(), |v| v.to_string()),
                    hs.commit
                )),
                PersistRecord::Entries(es) => {
                    let s: Vec<String> = es.iter().map(entry_str).collect();
                    lines.push(format!("  n{id}: persist Entries [{}]", s.join(", ")));
                    if let Some(last) = es.last() {
                        persisted.push((last.index, last.term));
                    }
                }
                PersistRecord::Snapshot(snap) => {
                    lines.push(format!("  n{id}: persist {snap:?}"));
                    persisted.push((snap.meta.index, snap.meta.term));
                }
                PersistRecord::Genesis(_) | PersistRecord::Tombstone(_) => {
                    panic!("n{id}: Raft itself wrote a record only a node writes: {rec:?}")
                }
            }
            p.disk.apply(rec.clone());
        }
        for (index, term) in persisted {
            p.raft.on_persisted(index, term);
        }
        if let Some(snap) = &ready.snapshot_to_apply {
            p.applied = split_snapshot(&snap.data);
            lines.push(format!("  n{id}: restore state machine from {snap:?}"));
        }
        if !ready.committed.is_empty() {
            let s: Vec<String> = ready.committed.iter().map(entry_str).collect();
            lines.push(format!("  n{id}: apply [{}]", s.join(", ")));
            for e in &ready.committed {
                if e.kind == EntryKind::Normal {
                    p.applied
                        .push((e.index, String::from_utf8_lossy(&e.data).into_owned()));
                }
            }
        }
        for r in &ready.reads {
            lines.push(format!(
                "  n{id}: read ready ctx={} index={}",
                r.ctx, r.index
            ));
        }
        for ctx in &ready.failed_reads {
            lines.push(format!("  n{id}: read failed ctx={ctx}"));
        }
        for m in ready
            .messages
            .into_iter()
            .chain(ready.messages_after_persist)
        {
            self.queue.push_back(m);
        }
        for l in lines {
            self.line(l);
        }
        true
    }

    fn deliver(&mut self, to: Option<u64>) -> bool {
        let mut moved = false;
        let queued: Vec<Message> = self.queue.drain(..).collect();
        for m in queued {
            if to.is_some_and(|t| t != m.to.0) {
                self.queue.push_back(m);
                continue;
            }
            moved = true;
            let cut = match (self.groups.get(&m.from.0), self.groups.get(&m.to.0)) {
                (Some(a), Some(b)) => a != b,
                _ => !self.groups.is_empty(),
            };
            if cut {
                self.line(format!("  dropped {m:?}"));
                continue;
            }
            self.line(format!("  {m:?}"));
            let to = m.to.0;
            self.peer(to).raft.step(m);
        }
        moved
    }

    fn stabilize(&mut self) {
        loop {
            let mut moved = false;
            let ids: Vec<u64> = self.peers.keys().copied().collect();
            for id in ids {
                moved |= self.process(id);
            }
            moved |= self.deliver(None);
            if !moved {
                break;
            }
        }
    }
}

fn split_snapshot(data: &[u8]) -> Vec<(u64, String)> {
    let s = String::from_utf8_lossy(data);
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (i, v) = p.split_once(':').expect("index:value");
            (Harness::num(i), v.to_string())
        })
        .collect()
}

fn run_script(name: &str) -> String {
    let path = format!(
        "{}/tests/raft_scripts/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Harness::new().run(&script)
}

macro_rules! scenario {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let out = run_script(stringify!($name));
            insta::assert_snapshot!(stringify!($name), out);
        }
    )*};
}

scenario!(
    first_election,
    readded_replica_wins_an_older_configurations_vote,
    late_refusal_from_a_caught_up_learner,
    prevote_rejoin,
    check_quorum_step_down,
    diverged_log_repair,
    figure8_commit_rule,
    stale_read_index,
    lease_read_drift,
    snapshot_install,
    snapshot_chunks,
    leadership_transfer,
    quiesce,
    read_before_first_commit,
    lease_after_restart,
    lease_after_transfer,
    learner_joins_by_snapshot,
    promotion_refused_while_lagging,
    replace_voter,
    remove_leader,
    joint_partition,
    conf_change_restart,
    conf_change_truncated,
    one_change_at_a_time,
    removed_node_cannot_disrupt,
    lagging_voter_follows_a_new_leader,
    joiner_waits_for_a_snapshot_naming_it,
    removed_voter_learns_after_a_lost_message,
    removed_replica_finds_a_leader_it_never_knew,
    promotion_waits_for_the_learners_own_addition,
    learner_restarted_in_a_quiet_group_asks_who_leads,
);

// Impossible states stop the replica (asserted in production code, as
// etcd-raft and TigerBeetle do): a replica that saw two leaders in one term,
// or a leader told of an acknowledgement beyond its own log, has proof that
// the protocol is broken somewhere, and going on would spread the damage.

/// n1 of a new group of three, with nothing on disk.
fn n1_of_three() -> Raft {
    let membership = Membership::new([1, 2, 3].map(NodeId));
    Raft::new(
        NodeId(1),
        RaftConfig::default(),
        membership,
        RaftStorage::default(),
        1,
    )
}

/// n1, a follower that hears n2 lead term 5, then a message of term 5 from
/// `other` that only a leader sends.
fn follower_hearing(other: u64, body: ringkv_core::raft::MessageBody) -> Raft {
    use ringkv_core::raft::MessageBody;
    let mut raft = n1_of_three();
    let heartbeat = MessageBody::Heartbeat {
        commit: 0,
        round: 1,
        quiesce: false,
    };
    for (from, body) in [(2, heartbeat), (other, body)] {
        raft.step(Message {
            from: NodeId(from),
            to: NodeId(1),
            term: 5,
            body,
        });
    }
    raft
}

#[test]
fn the_same_leader_twice_in_a_term_is_fine() {
    use ringkv_core::raft::MessageBody;
    let body = MessageBody::Heartbeat {
        commit: 0,
        round: 2,
        quiesce: false,
    };
    assert_eq!(follower_hearing(2, body).leader(), Some(NodeId(2)));
}

#[test]
#[should_panic(expected = "two leaders in term 5 (n2 and n3)")]
fn a_follower_that_hears_two_leaders_in_a_term_stops() {
    use ringkv_core::raft::MessageBody;
    follower_hearing(
        3,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: Vec::new(),
            commit: 0,
        },
    );
}

/// n1 wins term 1 on its own vote and n2's, then is told of an append it
/// never sent, or of another leader of its term.
fn leader_of_term_1() -> Raft {
    use ringkv_core::raft::MessageBody;
    let mut raft = n1_of_three();
    raft.start_election();
    let granted = MessageBody::PreVoteResponse { granted: true };
    raft.step(Message {
        from: NodeId(2),
        to: NodeId(1),
        term: 1,
        body: granted,
    });
    raft.step(Message {
        from: NodeId(2),
        to: NodeId(1),
        term: 1,
        body: MessageBody::VoteResponse { granted: true },
    });
    assert!(raft.is_leader(), "n1 should lead term 1");
    raft
}

#[test]
#[should_panic(expected = "acknowledged index 99 in term 1, beyond this leader's last index 1")]
fn a_leader_told_of_an_entry_it_never_had_stops() {
    use ringkv_core::raft::MessageBody;
    let mut raft = leader_of_term_1();
    raft.step(Message {
        from: NodeId(2),
        to: NodeId(1),
        term: 1,
        body: MessageBody::AppendResponse {
            success: true,
            index: 99,
            hint: 0,
        },
    });
}

#[test]
#[should_panic(expected = "two leaders in term 1 (n1 and n3)")]
fn a_leader_that_hears_another_leader_of_its_term_stops() {
    use ringkv_core::raft::MessageBody;
    let mut raft = leader_of_term_1();
    raft.step(Message {
        from: NodeId(3),
        to: NodeId(1),
        term: 1,
        body: MessageBody::Heartbeat {
            commit: 0,
            round: 1,
            quiesce: false,
        },
    });
}
