//! Operator commands over the low-level admin call `Cluster.ChangeConfig`.
//!
//! `ringkv admin move-replica PARTITION FROM TO` moves one replica of one
//! partition between live nodes, make-before-break: it adds TO as a learner,
//! waits until TO has caught up (its leader refuses the promotion until then),
//! replaces FROM by TO in one joint change, and waits until the group has left
//! the joint configuration. Each step is sent to the node that leads the
//! partition now (found from the nodes' status, again after every refusal),
//! and is skipped when the group is already past it, so an interrupted move is
//! finished by running the command again (the step is the core's
//! [`ReplicaMove::next_step`] of the group's configuration). It prints one line per step and
//! exits 0 once the partition's voters include TO and not FROM; with
//! `-o json` the steps go to stderr and stdout gets `{"partition","voters"}`.
//!
//! `ringkv node drain ID` (or `remove`: the same) asks the placement
//! controller (the metadata group's leader, found from any node's status)
//! to drain a node over `Cluster.DrainNode`: its replicas move to the other
//! nodes, make before break, and then it is removed from the member list.
//! The command prints progress until the node is removed (or `--no-wait`).
//! A refusal (a partition would be left without a quorum of possible
//! replicas, the node holds a replica of the metadata group, ...) is
//! printed with its reason and exits 5.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ringkv_core::NodeId;
use ringkv_core::placement::{MoveStep, ReplicaMove};
use ringkv_core::raft::{ConfChange as CoreChange, Membership};
use ringkv_core::wire;
use ringkv_proto::v1::{ChangeConfigRequest, DrainNodeRequest, PartitionStatus, StatusRequest};
use tonic::transport::{Channel, Endpoint};

use super::client::ClientOpts;
use super::failure::{ErrorCode, Failure, Op};
use super::{OutputFormat, parse_duration};
use crate::error_chain;

/// How often the command looks at the group again while it waits.
const POLL: Duration = Duration::from_millis(200);

/// `ringkv admin`: operator commands.
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// Move one replica of a partition from one node to another (add the new
    /// one as a learner, wait until it caught up, replace the old one).
    MoveReplica(MoveReplicaArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct MoveReplicaArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The partition (see `ringkv locate KEY`).
    pub partition: u32,
    /// The node whose replica moves away.
    pub from: u64,
    /// The node that receives it.
    pub to: u64,
    /// Give up after this long (e.g. 2m); the steps already taken stay.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub wait: Duration,
}

/// `ringkv node`: a node's life in the cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

const DRAIN_OUTPUT: &str = "Output: table (progress and the result on stdout) or json (the result as one JSON object on stdout; progress lines on stderr)";

#[derive(clap::Subcommand, Debug, Clone)]
pub enum NodeCommand {
    /// Move every replica off a node, then remove it from the cluster.
    #[command(mut_arg("output", |a| a.help(DRAIN_OUTPUT)))]
    Drain(DrainArgs),
    /// The same as drain: a node leaves only once its replicas have moved.
    #[command(mut_arg("output", |a| a.help(DRAIN_OUTPUT)))]
    Remove(DrainArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct DrainArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The node to drain.
    pub node: u64,
    /// Return once the drain is accepted, without waiting for the removal.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this long (e.g. 30m); the drain goes on.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub wait: Duration,
}

/// Runs `ringkv node ...`.
pub async fn run_node(a: NodeArgs) -> ExitCode {
    let (NodeCommand::Drain(d) | NodeCommand::Remove(d)) = a.command;
    match drain(&d).await {
        Ok(state) => {
            match d.opts.output {
                OutputFormat::Table => println!("n{}: {state}", d.node),
                OutputFormat::Json => {
                    println!("{}", serde_json::json!({ "node": d.node, "state": state }))
                }
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{}", failure.line());
            ExitCode::from(failure.exit)
        }
    }
}

/// The controller's id and status, and a channel to it.
pub(super) async fn find_controller(
    opts: &ClientOpts,
) -> Result<(Channel, ringkv_proto::v1::StatusResponse), Failure> {
    let unreachable = |message: String| Failure::new(ErrorCode::Unreachable, Op::Read, message);
    let mut errors = Vec::new();
    for uri in &opts.endpoints {
        let s = match status_of(uri, opts.timeout).await {
            Ok((_, s)) => s,
            Err(e) => {
                if let Some(refused) = e.refusal() {
                    return Err(refused);
                }
                errors.push(e.message);
                continue;
            }
        };
        if s.metadata_leader == 0 {
            errors.push(format!(
                "{uri}: knows no controller (the metadata group has no leader)"
            ));
            continue;
        }
        let Some(addr) = s.nodes.iter().find(|n| n.id == s.metadata_leader) else {
            errors.push(format!(
                "{uri}: does not know node {}'s address",
                s.metadata_leader
            ));
            continue;
        };
        match status_of(&format!("http://{}", addr.grpc_addr), opts.timeout).await {
            Ok((channel, cs)) if cs.controller => return Ok((channel, cs)),
            Ok(_) => errors.push(format!(
                "node {} is no longer the controller",
                s.metadata_leader
            )),
            Err(e) => errors.push(e.message),
        }
    }
    Err(unreachable(format!(
        "no controller found ({}); retry shortly",
        errors.join("; ")
    )))
}

async fn drain(a: &DrainArgs) -> Result<String, Failure> {
    let say = |line: String| match a.opts.output {
        OutputFormat::Table => println!("{line}"),
        OutputFormat::Json => eprintln!("{line}"),
    };
    let deadline = Instant::now() + a.wait;
    // Ask the controller, again if it changed before taking it.
    loop {
        let (channel, s) = match find_controller(&a.opts).await {
            Ok(found) => found,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(f) => return Err(f),
        };
        let mut client = super::auth::cluster(channel);
        let request = DrainNodeRequest { node: a.node };
        match tokio::time::timeout(a.opts.timeout, client.drain_node(request)).await {
            Ok(Ok(_)) => {
                say(format!(
                    "n{}: drain accepted by the controller, n{}",
                    a.node, s.node_id
                ));
                break;
            }
            Ok(Err(status))
                if status.code() == tonic::Code::FailedPrecondition
                    && (status
                        .message()
                        .contains("does not run the placement controller")
                        || status.message().contains("retry shortly"))
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(POLL).await;
            }
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(Failure::new(
                    ErrorCode::PreconditionFailed,
                    Op::Write,
                    format!("n{} was not drained: {}", a.node, status.message()),
                ));
            }
            Ok(Err(status)) => return Err(Failure::from_status(&status, Op::Write)),
            Err(_) => {
                return Err(Failure::new(
                    ErrorCode::ClientTimeout,
                    Op::Write,
                    format!("the controller did not answer within {:?}", a.opts.timeout),
                ));
            }
        }
    }
    if a.no_wait {
        return Ok("draining".to_owned());
    }
    // Progress until the member list says removed.
    let mut said = String::new();
    loop {
        if let Ok((_, s)) = find_controller(&a.opts).await {
            let state = s
                .nodes
                .iter()
                .find(|n| n.id == a.node)
                .map(|n| n.state.clone())
                .unwrap_or_default();
            if state == "removed" {
                return Ok(state);
            }
            let off = |m: &&ringkv_proto::v1::MoveStatus| m.from == a.node;
            let under_way = s
                .moves
                .iter()
                .filter(off)
                .filter(|m| m.phase != "waiting")
                .count();
            let waiting = s
                .moves
                .iter()
                .filter(off)
                .filter(|m| m.phase == "waiting")
                .count();
            let line = format!(
                "n{}: {state}; {under_way} replica move(s) off it under way, {waiting} waiting",
                a.node
            );
            if line != said {
                say(line.clone());
                said = line;
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                ErrorCode::ClientTimeout,
                Op::Write,
                format!(
                    "n{} was not removed within {:?} (last: {said}); the drain goes on",
                    a.node, a.wait
                ),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs `ringkv admin ...`.
pub async fn run(a: AdminArgs) -> ExitCode {
    match a.command {
        AdminCommand::MoveReplica(m) => match move_replica(&m).await {
            Ok(voters) => {
                match m.opts.output {
                    OutputFormat::Table => {
                        println!("done: partition {} is on {}", m.partition, join(&voters));
                    }
                    OutputFormat::Json => println!(
                        "{}",
                        serde_json::json!({ "partition": m.partition, "voters": voters })
                    ),
                }
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{}", failure.line());
                ExitCode::from(failure.exit)
            }
        },
    }
}

/// The group's configuration as its leader reports it.
fn membership_of(p: &PartitionStatus) -> Membership {
    let ids = |v: &[u64]| v.iter().copied().map(NodeId).collect::<Vec<_>>();
    Membership::from_parts(ids(&p.replicas), ids(&p.outgoing), ids(&p.learners))
}

async fn move_replica(a: &MoveReplicaArgs) -> Result<Vec<u64>, Failure> {
    let fail = |message: String| Failure::new(ErrorCode::Internal, Op::Write, message);
    let mv = ReplicaMove::Replace {
        from: NodeId(a.from),
        to: NodeId(a.to),
    };
    let deadline = Instant::now() + a.wait;
    let mut said = None;
    loop {
        // No leader right now (an election, e.g. after the leader moved its
        // own replica away): wait for one, up to the deadline.
        let (leader, channel, p) = match find_leader(a).await {
            Ok(found) => found,
            Err(f) if f.code == ErrorCode::NoLeader && Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(f) => return Err(f),
        };
        let step = mv
            .next_step(&membership_of(&p))
            .map_err(|e| fail(format!("partition {}: {e}", a.partition)))?;
        if said.as_ref() != Some(&step) {
            // Progress: stdout for people, stderr when stdout is JSON.
            let say = |line: String| match a.opts.output {
                OutputFormat::Table => println!("{line}"),
                OutputFormat::Json => eprintln!("{line}"),
            };
            match &step {
                MoveStep::Propose(CoreChange::AddLearner(_)) => say(format!(
                    "adding n{} to partition {} as a learner (leader n{leader})",
                    a.to, a.partition
                )),
                MoveStep::Propose(_) => say(format!(
                    "n{} is a learner; replacing n{} by it once it has caught up (leader n{leader})",
                    a.to, a.from
                )),
                MoveStep::WaitJoint => say(format!(
                    "partition {} is changing its voters ({} && {}); waiting",
                    a.partition,
                    join(&p.replicas),
                    join(&p.outgoing)
                )),
                MoveStep::Done => {}
            }
            said = Some(step.clone());
        }
        match step {
            MoveStep::Done => return Ok(p.replicas),
            MoveStep::WaitJoint => {}
            MoveStep::Propose(change) => {
                let request = ChangeConfigRequest {
                    partition: a.partition,
                    change: Some(wire::conf_change_to_proto(&change)),
                };
                let mut client = super::auth::cluster(channel);
                match tokio::time::timeout(a.opts.timeout, client.change_config(request)).await {
                    Ok(Ok(_)) => {}
                    // Not the leader any more, the previous change not yet
                    // committed, the learner not caught up: look again.
                    Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {}
                    Ok(Err(status)) => return Err(Failure::from_status(&status, Op::Write)),
                    Err(_) => {}
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                ErrorCode::ClientTimeout,
                Op::Write,
                format!(
                    "the move of partition {} did not finish within {:?} (last seen: voters {}, learners {}); \
                     the steps taken stay, and running the command again goes on from there",
                    a.partition,
                    a.wait,
                    join(&p.replicas),
                    join(&p.learners)
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The node that leads the partition, a channel to it, and the partition as
/// it reports it. Any endpoint lists the members; the one whose own status
/// says it leads the partition is the one asked.
async fn find_leader(a: &MoveReplicaArgs) -> Result<(u64, Channel, PartitionStatus), Failure> {
    let unreachable = |message: String| Failure::new(ErrorCode::Unreachable, Op::Read, message);
    let mut errors = Vec::new();
    let mut members = Vec::new();
    for uri in &a.opts.endpoints {
        match status_of(uri, a.opts.timeout).await {
            Ok((_, s)) => {
                members = s.nodes.iter().map(|m| m.grpc_addr.clone()).collect();
                break;
            }
            Err(e) => {
                if let Some(refused) = e.refusal() {
                    return Err(refused);
                }
                errors.push(e.message);
            }
        }
    }
    if members.is_empty() {
        return Err(unreachable(format!(
            "no endpoint answered ({})",
            errors.join("; ")
        )));
    }
    for addr in members {
        let uri = format!("http://{addr}");
        let Ok((channel, s)) = status_of(&uri, a.opts.timeout).await else {
            continue;
        };
        let Some(p) = s.partitions.iter().find(|p| p.partition == a.partition) else {
            return Err(Failure::new(
                ErrorCode::Internal,
                Op::Read,
                format!("partition {} does not exist", a.partition),
            ));
        };
        if p.leader == s.node_id {
            return Ok((s.node_id, channel, p.clone()));
        }
    }
    Err(Failure::new(
        ErrorCode::NoLeader,
        Op::Read,
        format!(
            "no node reports leading partition {} right now; retry shortly",
            a.partition
        ),
    ))
}

/// Why a node's status was not had: `refused` when the node refused the
/// caller (no valid access token, or one without the right): no other
/// node will answer otherwise.
struct StatusFailure {
    message: String,
    refused: Option<tonic::Status>,
}

impl StatusFailure {
    fn other(message: String) -> Self {
        StatusFailure {
            message,
            refused: None,
        }
    }

    /// The failure to report now if it is a refusal.
    fn refusal(&self) -> Option<Failure> {
        self.refused
            .as_ref()
            .map(|s| Failure::from_status(s, Op::Read))
    }
}

async fn status_of(
    uri: &str,
    timeout: Duration,
) -> Result<(Channel, ringkv_proto::v1::StatusResponse), StatusFailure> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| StatusFailure::other(format!("{uri}: {e}")))?
        .connect_timeout(Duration::from_secs(1));
    let channel = tokio::time::timeout(2 * Duration::from_secs(1), super::tls::connect(endpoint))
        .await
        .map_err(|_| StatusFailure::other(format!("{uri}: connect timed out")))?
        .map_err(|e| StatusFailure::other(format!("{uri}: {}", error_chain(&e))))?;
    let mut client = super::auth::cluster(channel.clone());
    let status = tokio::time::timeout(timeout, client.status(StatusRequest {}))
        .await
        .map_err(|_| StatusFailure::other(format!("{uri}: no answer within {timeout:?}")))?
        .map_err(|e| StatusFailure {
            message: format!("{uri}: {}", e.message()),
            refused: matches!(
                e.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            )
            .then_some(e),
        })?;
    Ok((channel, status.into_inner()))
}

fn join(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "none".to_owned();
    }
    ids.iter()
        .map(|id| format!("n{id}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaders_report_becomes_the_groups_configuration() {
        let p = PartitionStatus {
            partition: 3,
            replicas: vec![4, 1, 2],
            learners: vec![5],
            outgoing: vec![1, 2, 3],
            ..PartitionStatus::default()
        };
        let m = membership_of(&p);
        assert_eq!(m.to_string(), "voters=(n1,n2,n4)&&(n1,n2,n3) learners=(n5)");
        let mv = ReplicaMove::Replace {
            from: NodeId(3),
            to: NodeId(4),
        };
        assert_eq!(mv.next_step(&m), Ok(MoveStep::WaitJoint));
    }
}
