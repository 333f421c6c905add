//! Whether a cluster has settled after membership changes: judged from the
//! nodes' own views, independently of the placement controller's plan
//! (which would grade its own homework).
//!
//! Settled means, for the set of members a test expects (the nodes in play
//! minus the ones it drained or lost):
//! - every member runs and holds the same metadata document version;
//! - the document lists each of them `up`, and every other node it names
//!   `removed` (no join, drain or death left half done);
//! - every partition has a leader among the members whose configuration is
//!   exactly `min(replication_factor, members)` voters, all members, with no
//!   learner and no joint phase, and whose followers are all caught up
//!   (none lagging, as `ringkv status` judges it);
//! - the metadata group likewise, with the size the planner wants for that
//!   many members (1, 3 or 5).
//!
//! It says nothing about leader balance (best effort) or about replicas'
//! contents (the tests compare digests separately).

use std::fmt::Write as _;

use ringkv_core::metadata::{METADATA_GROUP, MemberState};
use ringkv_core::placement::planner::metadata_group_size;
use ringkv_core::{NodeId, PartitionId};
use ringkv_node::view::{PartitionView, leader_view_of};

use crate::cluster::SimCluster;

/// `Ok` once the cluster has settled on `members` (see the module docs),
/// else the first reason it has not.
pub fn placement_settled(cluster: &SimCluster, members: &[NodeId]) -> Result<(), String> {
    let mut views = Vec::new();
    for &id in members {
        let handle = cluster
            .node_handle(id)
            .ok_or_else(|| format!("member {id} is not running"))?;
        views.push(handle.view());
    }
    let first = views.first().ok_or("no members")?;
    if let Some(other) = views
        .iter()
        .find(|v| v.metadata_version != first.metadata_version)
    {
        return Err(format!(
            "metadata differs: {} has version {}, {} has {}",
            first.node_id, first.metadata_version, other.node_id, other.metadata_version
        ));
    }
    for m in &first.members {
        let want = if members.contains(&m.id) {
            MemberState::Up
        } else {
            MemberState::Removed
        };
        if m.state != Some(want) {
            return Err(format!(
                "{} is {} in the metadata, not {want}",
                m.id,
                m.state.map_or("absent".to_owned(), |s| s.to_string())
            ));
        }
    }
    if let Some(missing) = members
        .iter()
        .find(|id| !first.members.iter().any(|m| m.id == **id))
    {
        return Err(format!("{missing} is not in the metadata"));
    }
    let rf = cluster.options().replication_factor as usize;
    let want = rf.min(members.len());
    for p in 0..cluster.options().partition_count {
        let led = leader_view_of(views.iter().map(|v| v.as_ref()), PartitionId(p))
            .ok_or_else(|| format!("p{p} has no leader among the members"))?;
        group_settled(led, members, want)?;
    }
    let meta = leader_view_of(views.iter().map(|v| v.as_ref()), METADATA_GROUP)
        .ok_or("the metadata group has no leader among the members")?;
    group_settled(meta, members, metadata_group_size(members.len()))
}

/// `group` (as its leader sees it) has exactly `want` voters, all of them
/// `members`, none lagging, no learner, no joint phase.
fn group_settled(group: &PartitionView, members: &[NodeId], want: usize) -> Result<(), String> {
    let name = if group.partition == METADATA_GROUP {
        "the metadata group".to_owned()
    } else {
        format!("p{}", group.partition.0)
    };
    let mut problems = String::new();
    if group.replicas.len() != want {
        let _ = write!(problems, " {} voters, not {want};", group.replicas.len());
    }
    if let Some(stranger) = group.replicas.iter().find(|r| !members.contains(r)) {
        let _ = write!(problems, " voter {stranger} is no member;");
    }
    if !group.learners.is_empty() {
        let _ = write!(problems, " learners {:?};", group.learners);
    }
    if !group.outgoing.is_empty() {
        let _ = write!(problems, " joint with {:?};", group.outgoing);
    }
    if let Some(f) = group.followers.iter().find(|f| f.lagging) {
        let _ = write!(
            problems,
            " follower {} lags ({} entries, {});",
            f.node, f.lag, f.state
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{name} (voters {:?}, leader {:?}):{}",
            group.replicas,
            group.leader,
            problems.trim_end_matches(';')
        ))
    }
}
