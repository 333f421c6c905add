//! What the cluster did, as its nodes' own views show it: elections and
//! commit progress, as timeline lines for traces.
//!
//! Owns the polling of the nodes' published views and the lines it writes;
//! it does not inject anything (that is the nemesis) or judge anything (the
//! checkers). A view is refreshed every 200 ms, so an election shows up
//! within that of happening, and a leader that lasted less may not show up
//! at all. Lines:
//!
//! - `t=1712ms n2 leads p3 (term 4)`: a node's view names itself leader of a
//!   partition at a term no earlier line named for it;
//! - `t=2000ms committed p0=12 p3=9`: once a second, each partition whose
//!   highest commit index over all nodes moved since the last such line
//!   (`committed nothing new` if none did).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::NodeHandles;
use crate::workload::elapsed_ms;

/// How often the views are read.
const POLL: Duration = Duration::from_millis(100);
/// How often a `committed` line is written.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Polls the nodes until `until` and returns the timeline lines, times from
/// `start`.
pub async fn watch(handles: NodeHandles, start: Instant, until: Instant) -> String {
    let mut lines = String::new();
    let mut leader_terms: BTreeMap<u32, u64> = BTreeMap::new();
    let mut commits: BTreeMap<u32, u64> = BTreeMap::new();
    let mut reported_commits = commits.clone();
    let mut next_commit_line = Instant::now() + COMMIT_EVERY;
    while Instant::now() < until {
        for id in handles.node_ids() {
            let Some(handle) = handles.get(id) else {
                continue;
            };
            for p in &handle.view().partitions {
                let partition = p.partition.0;
                if p.leader == Some(id) && leader_terms.get(&partition) < Some(&p.term) {
                    leader_terms.insert(partition, p.term);
                    let _ = writeln!(
                        lines,
                        "t={}ms {id} leads p{partition} (term {})",
                        elapsed_ms(start),
                        p.term
                    );
                }
                let commit = commits.entry(partition).or_default();
                *commit = (*commit).max(p.commit_index);
            }
        }
        if Instant::now() >= next_commit_line {
            next_commit_line += COMMIT_EVERY;
            let moved: Vec<String> = commits
                .iter()
                .filter(|&(p, c)| reported_commits.get(p) != Some(c))
                .map(|(p, c)| format!("p{p}={c}"))
                .collect();
            let moved = if moved.is_empty() {
                "nothing new".to_owned()
            } else {
                moved.join(" ")
            };
            let _ = writeln!(lines, "t={}ms committed {moved}", elapsed_ms(start));
            reported_commits = commits.clone();
        }
        tokio::time::sleep(POLL).await;
    }
    lines
}

/// Merges timelines whose lines start `t=<ms>ms`, in time order; lines at
/// the same time keep the order of `timelines`, then their own order.
pub fn merge(timelines: &[&str]) -> String {
    let mut lines: Vec<(u64, usize, &str)> = Vec::new();
    for (source, timeline) in timelines.iter().enumerate() {
        for line in timeline.lines() {
            lines.push((time_of(line), source, line));
        }
    }
    lines.sort_by_key(|&(t, source, _)| (t, source));
    let mut merged = String::new();
    for (_, _, line) in lines {
        merged.push_str(line);
        merged.push('\n');
    }
    merged
}

/// The `1234` of `t=1234ms ...`; lines without one sort first.
fn time_of(line: &str) -> u64 {
    line.strip_prefix("t=")
        .and_then(|rest| rest.split_once("ms"))
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_orders_by_time_and_keeps_sources_stable() {
        let faults = "t=100ms partition 1|2,3\nt=900ms heal\n";
        let observed = "t=100ms n2 leads p0 (term 3)\nt=500ms committed p0=4\n";
        assert_eq!(
            merge(&[faults, observed]),
            "t=100ms partition 1|2,3\n\
             t=100ms n2 leads p0 (term 3)\n\
             t=500ms committed p0=4\n\
             t=900ms heal\n"
        );
    }
}
