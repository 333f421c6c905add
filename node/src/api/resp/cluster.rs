//! The cluster's layout in Redis Cluster's terms: which node serves each
//! slot range, for `CLUSTER SLOTS`, `SHARDS`, `NODES` and `INFO`, and where
//! a cluster-aware connection is sent (`-MOVED slot host:port`).
//!
//! Each partition is one slot range (`ring::slot_range`). Its *master* is
//! the partition's Raft leader as this node knows it (it knows the leader
//! of every partition it replicates, and of the others from the leaders'
//! periodic reports), so a client that follows this map sends each command
//! straight to the node that can commit it. Its *replicas* are the group's
//! other voters. Only members with a RESP address in the member list can
//! be named: a leader without one is replaced by the first replica that
//! has one (which serves the slot by forwarding), and a partition whose
//! leader is unknown (an election) is named after its first replica too;
//! where no replica has one (the first second of a new cluster, before the
//! member list holds the RESP addresses) this node stands in, as it serves
//! every slot by forwarding. So every slot is always covered and a client
//! retries there.
//!
//! Where ringkv differs from Redis Cluster: a node leads some partitions
//! and follows others, so it is a master of several slot ranges and a
//! replica in others at once. `CLUSTER SLOTS` and `SHARDS` say exactly
//! that (one entry per partition); `CLUSTER NODES`, whose format gives each
//! node one role, lists every node as a master of the ranges it leads, with
//! no replicas. Node ids are the node's number as 40 hex digits, the same
//! in every command (`CLUSTER MYID` included).
//!
//! Pure: everything here is a function of one [`ClusterView`].

use std::fmt::Write as _;
use std::ops::Range;

use ringkv_core::metadata::MemberState;
use ringkv_core::ring::{SLOT_COUNT, partition_of_slot, slot_range};
use ringkv_core::{NodeId, PartitionId};

use super::reply::Reply;
use crate::view::{ClusterView, Health};

/// A node clients can reach over RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespNode {
    pub id: NodeId,
    pub host: String,
    pub port: u16,
    /// This node's failure detector hears it (or it is this node).
    pub up: bool,
    pub myself: bool,
}

impl RespNode {
    /// The Redis node id: 40 hex digits.
    pub fn redis_id(&self) -> String {
        redis_id(self.id)
    }

    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The Redis node id of ringkv node `id`: its number as 40 hex digits.
pub fn redis_id(id: NodeId) -> String {
    format!("{:040x}", id.0)
}

/// One partition's slot range and who serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub partition: PartitionId,
    /// Slots `start..end` (end exclusive).
    pub slots: Range<u16>,
    /// Index into [`Topology::nodes`]; `None` if no replica serves RESP.
    pub master: Option<usize>,
    pub replicas: Vec<usize>,
}

/// Every slot range and the nodes serving it, as this node sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub nodes: Vec<RespNode>,
    pub shards: Vec<Shard>,
    /// The metadata document's version (Redis's "current epoch").
    pub epoch: u64,
}

/// The RESP address of member `id`, if the member list has one.
fn resp_address(view: &ClusterView, id: NodeId) -> Option<(String, u16)> {
    let member = view.members.iter().find(|m| m.id == id)?;
    if member.state == Some(MemberState::Removed) {
        return None;
    }
    let (host, port) = member.client.resp.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

impl Topology {
    pub fn of(view: &ClusterView, partition_count: u32) -> Topology {
        let mut nodes: Vec<RespNode> = view
            .members
            .iter()
            .filter_map(|m| {
                let (host, port) = resp_address(view, m.id)?;
                Some(RespNode {
                    id: m.id,
                    host,
                    port,
                    up: m.health != Health::Down,
                    myself: m.id == view.node_id,
                })
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        let index = |id: NodeId| nodes.iter().position(|n| n.id == id);
        let shards = (0..partition_count)
            .map(PartitionId)
            .map(|p| {
                let group = view.partitions.get(p.0 as usize);
                let leader = group.and_then(|g| g.leader);
                let voters = group.map(|g| g.replicas.clone()).unwrap_or_default();
                let master = leader
                    .and_then(index)
                    .or_else(|| voters.iter().copied().find_map(index))
                    .or_else(|| index(view.node_id));
                let replicas = voters
                    .iter()
                    .copied()
                    .filter_map(index)
                    .filter(|&i| Some(i) != master)
                    .collect();
                Shard {
                    partition: p,
                    slots: slot_range(p, partition_count),
                    master,
                    replicas,
                }
            })
            .collect();
        Topology {
            nodes,
            shards,
            epoch: view.metadata_version,
        }
    }

    /// Slots with a node to serve them.
    pub fn slots_served(&self) -> u32 {
        self.shards
            .iter()
            .filter(|s| s.master.is_some())
            .map(|s| u32::from(s.slots.end - s.slots.start))
            .sum()
    }

    fn node_entry(&self, index: usize) -> Reply {
        let n = &self.nodes[index];
        Reply::Array(vec![
            Reply::bulk(n.host.clone()),
            Reply::Integer(i64::from(n.port)),
            Reply::bulk(n.redis_id()),
        ])
    }

    /// `CLUSTER SLOTS`: `[start, end, master, replica...]` per range.
    pub fn slots_reply(&self) -> Reply {
        Reply::Array(
            self.shards
                .iter()
                .filter_map(|s| {
                    let master = s.master?;
                    let mut entry = vec![
                        Reply::Integer(i64::from(s.slots.start)),
                        Reply::Integer(i64::from(s.slots.end) - 1),
                        self.node_entry(master),
                    ];
                    entry.extend(s.replicas.iter().map(|&r| self.node_entry(r)));
                    Some(Reply::Array(entry))
                })
                .collect(),
        )
    }

    /// `CLUSTER SHARDS`: one shard per partition, its slots and nodes.
    pub fn shards_reply(&self) -> Reply {
        let node = |index: usize, role: &'static str| {
            let n = &self.nodes[index];
            Reply::Map(vec![
                (Reply::bulk("id"), Reply::bulk(n.redis_id())),
                (Reply::bulk("port"), Reply::Integer(i64::from(n.port))),
                (Reply::bulk("ip"), Reply::bulk(n.host.clone())),
                (Reply::bulk("endpoint"), Reply::bulk(n.host.clone())),
                (Reply::bulk("role"), Reply::bulk(role)),
                (Reply::bulk("replication-offset"), Reply::Integer(0)),
                (
                    Reply::bulk("health"),
                    Reply::bulk(if n.up { "online" } else { "failed" }),
                ),
            ])
        };
        Reply::Array(
            self.shards
                .iter()
                .map(|s| {
                    let nodes = s
                        .master
                        .map(|m| node(m, "master"))
                        .into_iter()
                        .chain(s.replicas.iter().map(|&r| node(r, "replica")))
                        .collect();
                    Reply::Map(vec![
                        (
                            Reply::bulk("slots"),
                            Reply::Array(vec![
                                Reply::Integer(i64::from(s.slots.start)),
                                Reply::Integer(i64::from(s.slots.end) - 1),
                            ]),
                        ),
                        (Reply::bulk("nodes"), Reply::Array(nodes)),
                    ])
                })
                .collect(),
        )
    }

    /// `CLUSTER NODES`: one line per node, every node a master of the
    /// ranges it serves (adjacent ranges merged).
    pub fn nodes_text(&self) -> String {
        let mut text = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let flags = match (n.myself, n.up) {
                (true, _) => "myself,master",
                (false, true) => "master",
                (false, false) => "master,fail",
            };
            let link = if n.up { "connected" } else { "disconnected" };
            let _ = write!(
                text,
                "{} {}:{}@0 {flags} - 0 0 {} {link}",
                n.redis_id(),
                n.host,
                n.port,
                self.epoch
            );
            let mut ranges: Vec<Range<u16>> = Vec::new();
            for s in self.shards.iter().filter(|s| s.master == Some(i)) {
                match ranges.last_mut() {
                    Some(last) if last.end == s.slots.start => last.end = s.slots.end,
                    _ => ranges.push(s.slots.clone()),
                }
            }
            for r in ranges {
                match r.end - r.start {
                    1 => {
                        let _ = write!(text, " {}", r.start);
                    }
                    _ => {
                        let _ = write!(text, " {}-{}", r.start, r.end - 1);
                    }
                }
            }
            text.push('\n');
        }
        text
    }

    /// `CLUSTER INFO`.
    pub fn info_text(&self) -> String {
        let served = self.slots_served();
        let masters = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| self.shards.iter().any(|s| s.master == Some(*i)))
            .count();
        let state = if served == SLOT_COUNT { "ok" } else { "fail" };
        format!(
            "cluster_state:{state}\r\ncluster_slots_assigned:{served}\r\ncluster_slots_ok:{served}\r\n\
             cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\n\
             cluster_size:{masters}\r\ncluster_current_epoch:{}\r\ncluster_my_epoch:{}\r\n",
            self.nodes.len(),
            self.epoch,
            self.epoch
        )
    }
}

/// Where a cluster-aware client should send a command on `slot`: the
/// partition's leader's RESP address, if another node leads it and serves
/// RESP. `None`: serve it here (this node leads, or the leader is unknown
/// or cannot be named, and the core forwards).
pub fn redirect(view: &ClusterView, slot: u16, partition_count: u32) -> Option<String> {
    let p = partition_of_slot(slot, partition_count);
    let leader = view.partitions.get(p.0 as usize)?.leader?;
    if leader == view.node_id {
        return None;
    }
    let (host, port) = resp_address(view, leader)?;
    Some(format!("{host}:{port}"))
}

/// Whether this node holds a replica of the slot's partition (a `READONLY`
/// connection reads from it without being redirected, as from a Redis
/// replica).
pub fn replicates(view: &ClusterView, slot: u16, partition_count: u32) -> bool {
    let p = partition_of_slot(slot, partition_count);
    view.partitions
        .get(p.0 as usize)
        .is_some_and(|g| g.replicas.contains(&view.node_id) && g.term > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{MemberView, PartitionView};
    use ringkv_core::metadata::ClientAddresses;
    use ringkv_core::node::NodeStats;

    fn member(id: u64, resp: &str, health: Health) -> MemberView {
        MemberView {
            id: NodeId(id),
            health,
            phi: 0.0,
            state: Some(MemberState::Up),
            last_heard: None,
            address: None,
            client: ClientAddresses {
                rest: String::new(),
                resp: resp.to_owned(),
            },
        }
    }

    fn group(p: u32, leader: Option<u64>, replicas: &[u64]) -> PartitionView {
        PartitionView {
            partition: PartitionId(p),
            replicas: replicas.iter().copied().map(NodeId).collect(),
            learners: Vec::new(),
            outgoing: Vec::new(),
            leader: leader.map(NodeId),
            term: 1,
            commit_index: 0,
            applied_index: 0,
            keys: 0,
            followers: Vec::new(),
            lag: 0,
            receiving_snapshot: None,
            under_replicated: false,
            catching_up: false,
        }
    }

    /// Node 1's view of 4 partitions on nodes 1-4: p0 and p1 led by n1,
    /// p2 by n2, p3 leaderless (an election); n4 serves no RESP and leads
    /// nothing here; n3 is down.
    fn view() -> ClusterView {
        ClusterView {
            node_id: NodeId(1),
            members: vec![
                member(1, "127.0.0.1:7001", Health::Local),
                member(2, "127.0.0.1:7002", Health::Up),
                member(3, "127.0.0.1:7003", Health::Down),
                member(4, "", Health::Up),
            ],
            partitions: vec![
                group(0, Some(1), &[1, 2, 3]),
                group(1, Some(1), &[1, 2, 4]),
                group(2, Some(2), &[2, 3, 4]),
                group(3, None, &[4, 3, 1]),
            ],
            metadata_group: None,
            ready: true,
            stats: NodeStats::default(),
            pending_requests: 0,
            compactions_queued: 0,
            metadata_version: 9,
            metadata_leader: Some(NodeId(1)),
            controller: true,
            plan: None,
        }
    }

    #[test]
    fn every_slot_has_a_master_and_leaders_come_first() {
        let t = Topology::of(&view(), 4);
        let ids: Vec<u64> = t.nodes.iter().map(|n| n.id.0).collect();
        assert_eq!(ids, vec![1, 2, 3], "n4 serves no RESP, so it is not named");
        let masters: Vec<Option<u64>> = t
            .shards
            .iter()
            .map(|s| s.master.map(|m| t.nodes[m].id.0))
            .collect();
        // p3 has no leader: its first replica that serves RESP stands in.
        assert_eq!(masters, vec![Some(1), Some(1), Some(2), Some(3)]);
        assert_eq!(t.shards[2].slots, 8192..12288);
        assert_eq!(t.slots_served(), 16_384);
        assert!(t.info_text().contains("cluster_state:ok"));
        assert!(t.info_text().contains("cluster_size:3"));
    }

    /// The first second of a new cluster: the member list names no RESP
    /// address yet but this node's own (from its configuration). Clients
    /// that ask then (redis-benchmark --cluster gave up on an empty map)
    /// are sent here for every slot, which forwards.
    #[test]
    fn before_the_member_list_names_any_resp_address_this_node_serves_every_slot() {
        let mut v = view();
        for m in &mut v.members {
            if m.id != v.node_id {
                m.client.resp.clear();
            }
        }
        let t = Topology::of(&v, 4);
        assert_eq!(t.nodes.len(), 1);
        assert!(t.shards.iter().all(|s| s.master == Some(0)));
        assert_eq!(t.slots_served(), 16_384);
        assert_eq!(
            t.nodes_text(),
            "0000000000000000000000000000000000000001 127.0.0.1:7001@0 myself,master - 0 0 9 connected 0-16383\n"
        );
    }

    #[test]
    fn nodes_lines_merge_adjacent_ranges_and_flag_myself_and_failures() {
        let text = Topology::of(&view(), 4).nodes_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "0000000000000000000000000000000000000001 127.0.0.1:7001@0 myself,master - 0 0 9 connected 0-8191",
                "0000000000000000000000000000000000000002 127.0.0.1:7002@0 master - 0 0 9 connected 8192-12287",
                "0000000000000000000000000000000000000003 127.0.0.1:7003@0 master,fail - 0 0 9 disconnected 12288-16383",
            ]
        );
    }

    #[test]
    fn redirects_go_to_a_leader_that_serves_resp_and_never_to_self() {
        let v = view();
        // Slot 0: p0, led here.
        assert_eq!(redirect(&v, 0, 4), None);
        // Slot 9000: p2, led by n2.
        assert_eq!(redirect(&v, 9000, 4).as_deref(), Some("127.0.0.1:7002"));
        // Slot 13000: p3, no leader: served here (the core forwards).
        assert_eq!(redirect(&v, 13_000, 4), None);
        let mut v = v;
        v.partitions[2].leader = Some(NodeId(4));
        // A leader without a RESP address cannot be named: served here.
        assert_eq!(redirect(&v, 9000, 4), None);
        assert!(replicates(&v, 0, 4));
        assert!(!replicates(&v, 9000, 4));
    }
}
