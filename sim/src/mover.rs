//! A nemesis of its own kind: replica moves while the other faults run.
//!
//! Every 1–4 s (simulated) the mover picks a partition and changes where it
//! lives, the way an operator's `ringkv admin move-replica` does: it asks the
//! group's leader (the node whose own view says it leads) for the group's
//! configuration, proposes the step the core's [`ReplicaMove::next_step`]
//! gives, and looks again, until the move is done or its patience runs out
//! (the steps taken stay; a later move starts from wherever the group is).
//! Where some node holds no replica of the partition, a random voter's
//! replica moves there; where every node holds one (3 nodes, 3 replicas), a
//! random voter is removed instead. Half the time it undoes an earlier move
//! instead: the replica moves back (or is added back), so a node receives a
//! replica of a group it was removed from, through the tombstone, by a
//! snapshot of the later configuration.
//!
//! It talks to the nodes in-process through their [`NodeHandle`]s (as the
//! gRPC admin service does), with its own seeded RNG, so a run stays a pure
//! function of its seed. Every move leaves trace lines
//! (`t=1234ms move p3 n2->n4: done (voters=(n1,n3,n4))`).

use std::fmt::Write as _;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_core::placement::{MoveStep, ReplicaMove};
use ringkv_core::raft::Membership;
use ringkv_core::{NodeId, PartitionId};
use ringkv_node::handle::NodeHandle;
use tokio::time::Instant;

use crate::cluster::NodeHandles;
use crate::workload::elapsed_ms;

/// How long one move may take before the mover gives up on it.
const MOVE_PATIENCE: Duration = Duration::from_secs(10);
/// How often a move looks at its group again.
const POLL: Duration = Duration::from_millis(100);
/// How long a call to a node may take (a paused node answers nothing).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// The fewest voters a removal leaves.
const MIN_VOTERS: usize = 2;

/// What the mover did in a run.
#[derive(Debug, Default)]
pub struct MoverReport {
    /// One line per move (time since the run's start).
    pub trace: String,
    pub done: usize,
    pub abandoned: usize,
}

/// Moves replicas of random partitions until `end`.
pub async fn run_mover(
    handles: NodeHandles,
    seed: u64,
    start: Instant,
    end: Instant,
) -> MoverReport {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut report = MoverReport::default();
    // Moves done and not undone yet: the undo of each.
    let mut undo: Vec<(PartitionId, ReplicaMove)> = Vec::new();
    loop {
        let gap = Duration::from_millis(rng.random_range(1_000..=4_000));
        if Instant::now() + gap >= end {
            return report;
        }
        tokio::time::sleep(gap).await;
        let planned = if !undo.is_empty() && rng.random_bool(0.5) {
            Some(undo.swap_remove(rng.random_range(0..undo.len())))
        } else {
            plan(&handles, &mut rng)
        };
        let Some((p, mv)) = planned else {
            continue;
        };
        let deadline = (Instant::now() + MOVE_PATIENCE).min(end);
        let outcome = drive(&handles, p, mv, deadline).await;
        let line = match &outcome {
            Ok(m) => {
                report.done += 1;
                undo.push((p, reverse(mv)));
                format!("done ({m})")
            }
            Err(why) => {
                report.abandoned += 1;
                format!("abandoned: {why}")
            }
        };
        let _ = writeln!(
            report.trace,
            "t={}ms move {p} {}: {line}",
            elapsed_ms(start),
            describe(mv)
        );
        tracing::info!("mover: {p} {}: {line}", describe(mv));
    }
}

/// A new move of a random partition, from what its leader reports.
fn plan(handles: &NodeHandles, rng: &mut ChaCha8Rng) -> Option<(PartitionId, ReplicaMove)> {
    let ids = handles.node_ids();
    let any = ids.iter().find_map(|&id| handles.get(id))?;
    let count = any.view().partitions.len();
    let p = PartitionId(rng.random_range(0..count) as u32);
    let (_, m) = leader_of(handles, p)?;
    if m.is_joint() {
        return None;
    }
    let holders = m.replicas();
    let outside: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|id| !holders.contains(id))
        .collect();
    let from = m.voters[rng.random_range(0..m.voters.len())];
    if !outside.is_empty() {
        let to = outside[rng.random_range(0..outside.len())];
        return Some((p, ReplicaMove::Replace { from, to }));
    }
    (m.voters.len() > MIN_VOTERS).then_some((p, ReplicaMove::Remove { from }))
}

/// Drives `mv` on partition `p` until done (the configuration then) or
/// `deadline` (why not).
async fn drive(
    handles: &NodeHandles,
    p: PartitionId,
    mv: ReplicaMove,
    deadline: Instant,
) -> Result<Membership, String> {
    let mut last = "no leader".to_owned();
    while Instant::now() < deadline {
        if let Some((leader, m)) = leader_of(handles, p) {
            match mv.next_step(&m) {
                Ok(MoveStep::Done) => return Ok(m),
                Ok(MoveStep::WaitJoint) => last = format!("joint ({m})"),
                Ok(MoveStep::Propose(change)) => {
                    last = format!("{change} at {} ({m})", leader.0);
                    let asked =
                        tokio::time::timeout(CALL_TIMEOUT, leader.1.change_config(p, change));
                    if let Ok(Err(refused)) = asked.await {
                        last = format!("{last}: {refused}");
                    }
                }
                // The group changed under the move (another move, undone
                // by half): nothing to do.
                Err(e) => return Err(e.to_string()),
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Err(format!("not done in time; last step: {last}"))
}

/// The running node that leads `p` by its own view, and the group's
/// configuration as it has it.
fn leader_of(handles: &NodeHandles, p: PartitionId) -> Option<((NodeId, NodeHandle), Membership)> {
    handles.node_ids().into_iter().find_map(|id| {
        let handle = handles.get(id)?;
        let view = handle.view();
        let pv = view.partitions.get(p.0 as usize)?;
        (pv.leader == Some(id)).then(|| {
            let (v, o, l) = (&pv.replicas, &pv.outgoing, &pv.learners);
            let m = Membership::from_parts(v.clone(), o.clone(), l.clone());
            ((id, handle.clone()), m)
        })
    })
}

fn reverse(mv: ReplicaMove) -> ReplicaMove {
    match mv {
        ReplicaMove::Replace { from, to } => ReplicaMove::Replace { from: to, to: from },
        ReplicaMove::Add { to } => ReplicaMove::Remove { from: to },
        ReplicaMove::Remove { from } => ReplicaMove::Add { to: from },
    }
}

fn describe(mv: ReplicaMove) -> String {
    match mv {
        ReplicaMove::Replace { from, to } => format!("{from}->{to}"),
        ReplicaMove::Add { to } => format!("add {to}"),
        ReplicaMove::Remove { from } => format!("remove {from}"),
    }
}
