//! The placement ring: which partition a key belongs to, and which nodes
//! should replicate each partition.
//!
//! **Owns.** The key-to-slot mapping ([`key_slot`], Redis Cluster's), the
//! slot-to-partition mapping ([`partition_of`], [`slot_range`]), and the
//! *desired* placement of every partition on a
//! given member set: a consistent-hash ring with virtual nodes ([`Ring`]).
//! It also measures how much placement moves between two rings
//! ([`Ring::diff`], [`Ring::moved_partitions`]), which is what a join or a
//! leave costs in data transfer.
//!
//! **Does not own.** Who is alive (the failure detector), moving data or
//! changing a partition's Raft membership (the placement controller and the
//! Raft groups), and where leaders actually are. A `Ring` is a pure function
//! of `(RingConfig, member set)`: the controller computes the ring it wants
//! and then walks the Raft groups towards it one membership change at a time.
//!
//! **Design.** A key belongs to one of [`SLOT_COUNT`] (16,384) hash slots,
//! exactly as in Redis Cluster: `CRC16/XMODEM(k) mod 16384`, where `k` is
//! the key's hash tag (the bytes between its first `{` and the next `}`,
//! when there are any) or else the whole key, so `{user42}.name` and
//! `{user42}.email` share a slot, and a Redis client computes the slot
//! ringkv does. Each partition owns one contiguous range of slots: the
//! partition count is a power of two dividing 16,384, and partition `p`
//! owns slots `[p * 16384 / count, (p + 1) * 16384 / count)`.
//! Each member owns [`RingConfig::tokens_per_node`] tokens on the
//! `u64` circle (see [`Ring::new`] for the exact token hash). Partition `p`
//! sits at point `p * 2^64 / count` of the circle (partitions in slot order,
//! evenly spaced); its replicas are the first `replication_factor`
//! distinct nodes met walking clockwise from that point. Placement is computed once at construction and
//! stored per partition, so [`Ring::replicas`] is O(1).
//!
//! **Invariants.**
//! - Every replica list holds exactly `min(replication_factor, members)`
//!   distinct members; the first is the partition's preferred leader.
//! - Same member set + same config => same placement, byte for byte,
//!   whatever order the members were given in (members are a `BTreeSet`,
//!   tokens a sorted `Vec`; token collisions are broken by node id).
//! - Minimal movement: adding a node only changes partitions that gain it
//!   (each loses at most one old replica); removing a node only changes
//!   partitions that held it (it is dropped and the next distinct node
//!   clockwise is appended). Every other partition keeps its replica list,
//!   order included, so its preferred leader does not move.
//! - [`key_slot`] and [`partition_of`] are part of the on-disk format: a
//!   node's WAL and snapshots are laid out per partition, so changing either
//!   is a data-format break (format 2 of the data directory; format 1
//!   hashed keys with xxh3 and is refused).
//!
//! **Limits, honestly.** Virtual nodes alone balance only roughly: with the
//! default config (256 partitions, rf 3, 64 tokens) on 5 nodes the busiest
//! node carries ~1.08x the mean replica count (median over 500 seeded member
//! sets; p99 1.19, worst 1.22; see `balance_is_within_measured_bound`).
//! 256 tokens per node give a median of 1.05 (p99 1.11); beyond that the
//! 256 partition points themselves dominate the noise. A bounded-load
//! refinement (skip nodes already at `(1 + eps) * mean` while walking) caps
//! the spread (eps 0.05: 1.055) but couples partitions to each other: removing
//! one node then also moved partitions that never held it (eps 0.05: up to
//! 18, median 1; eps 0.1: up to 7, for a spread of 1.10), breaking the
//! minimal-movement invariant above. We
//! keep the pure ring; raise `tokens_per_node` for a tighter spread, and let
//! the placement controller balance *leaders*.

use std::collections::BTreeSet;

use std::ops::Range;

use crc::{CRC_16_XMODEM, Crc};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::types::{NodeId, PartitionId};

/// Seed of the token hash ([`Ring::new`]). Every node must compute the same
/// ring: never change it.
pub const TOKEN_HASH_SEED: u64 = 0;

/// Redis Cluster's number of hash slots.
pub const SLOT_COUNT: u32 = 16_384;

/// Largest accepted [`RingConfig::partition_count`]: one slot per
/// partition. (Each partition is a Raft group, and placement is stored per
/// partition.)
pub const MAX_PARTITION_COUNT: u32 = SLOT_COUNT;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// Largest accepted [`RingConfig::tokens_per_node`], for the same reason:
/// the ring stores `members * tokens_per_node` tokens.
pub const MAX_TOKENS_PER_NODE: u32 = 1 << 12;

/// The part of `key` that decides its slot: Redis Cluster's hash tag, the
/// bytes between the first `{` and the first `}` after it, if there are
/// any; otherwise (no `{`, no `}` after it, or `{}`) the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

/// The hash slot of `key`, as Redis Cluster computes it:
/// `CRC16/XMODEM(hash_tag(key)) mod 16384`. Part of the on-disk format.
pub fn key_slot(key: &[u8]) -> u16 {
    // `% SLOT_COUNT` keeps it below 16384: the cast never truncates.
    (u32::from(CRC16.checksum(hash_tag(key))) % SLOT_COUNT) as u16
}

/// The partition that owns `key`, for a cluster of `partition_count`
/// partitions: the one whose slot range holds [`key_slot`]`(key)`. Part of
/// the on-disk format.
///
/// `partition_count` is a power of two dividing 16,384
/// ([`RingConfig::validate`]). For any other count (0 included), rather
/// than panic, this still returns a partition below `partition_count.max(1)`.
pub fn partition_of(key: &[u8], partition_count: u32) -> PartitionId {
    partition_of_slot(key_slot(key), partition_count)
}

/// The partition whose slot range holds `slot`.
pub fn partition_of_slot(slot: u16, partition_count: u32) -> PartitionId {
    let count = partition_count.clamp(1, SLOT_COUNT);
    // `slot < 16384` and `count <= 16384`: the product fits a u32 and the
    // quotient is below `count`.
    PartitionId(u32::from(slot) * count / SLOT_COUNT)
}

/// The slots partition `p` owns: `[p * 16384 / count, (p + 1) * 16384 / count)`,
/// empty for a partition outside the cluster.
pub fn slot_range(partition: PartitionId, partition_count: u32) -> Range<u16> {
    let count = partition_count.clamp(1, SLOT_COUNT);
    let p = partition.0.min(count);
    let bound = |p: u32| (p * (SLOT_COUNT / count)) as u16;
    // 16384 itself does not fit the range's end as a slot, but it does as
    // a u16 bound: 16384 < 65536.
    bound(p)..bound((p + 1).min(count))
}

/// The point of partition `p` on the ring, `ceil(p * 2^64 / count)`:
/// partitions are spaced evenly around the circle, in slot order.
fn partition_point(partition: u32, partition_count: u32) -> u64 {
    let count = u128::from(partition_count.max(1));
    let start = (u128::from(partition) << 64).div_ceil(count);
    // `partition < count`, so `start < 2^64`; saturate rather than wrap if a
    // caller ever breaks that.
    u64::try_from(start).unwrap_or(u64::MAX)
}

/// Token `index` of `node` on the ring: xxh3-64 (seed 0) of the node id as
/// 8 little-endian bytes followed by the index as 4 little-endian bytes.
///
/// Only placement depends on it (not stored data), but every node must
/// compute the same ring, so it is fixed.
fn token_of(node: NodeId, index: u32) -> u64 {
    let mut input = [0u8; 12];
    input[..8].copy_from_slice(&node.0.to_le_bytes());
    input[8..].copy_from_slice(&index.to_le_bytes());
    xxh3_64_with_seed(&input, TOKEN_HASH_SEED)
}

/// A rejected [`RingConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingError {
    /// Keys must map to at least one partition.
    #[error("ring config: partition_count must be at least 1")]
    ZeroPartitions,
    /// More partitions than [`MAX_PARTITION_COUNT`].
    #[error(
        "ring config: partition_count {0} exceeds the maximum {MAX_PARTITION_COUNT} (one hash slot per partition)"
    )]
    TooManyPartitions(u32),
    /// Each partition owns an equal, contiguous range of the 16,384 slots.
    #[error(
        "ring config: partition_count {0} is not a power of two (each partition owns an equal range of the 16384 hash slots: use 1, 2, 4, ... 16384)"
    )]
    PartitionsNotPowerOfTwo(u32),
    /// A partition with no replica would hold no data.
    #[error("ring config: replication_factor must be at least 1")]
    ZeroReplicationFactor,
    /// A node without tokens would never be placed on the ring.
    #[error("ring config: tokens_per_node must be at least 1")]
    ZeroTokensPerNode,
    /// More tokens per node than [`MAX_TOKENS_PER_NODE`].
    #[error("ring config: tokens_per_node {0} exceeds the maximum {MAX_TOKENS_PER_NODE}")]
    TooManyTokensPerNode(u32),
}

/// The parameters of placement. Every node of a cluster must use the same
/// config, or they will disagree on where partitions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingConfig {
    /// Number of partitions the key space is cut into; fixed at cluster
    /// creation (changing it moves almost every key).
    pub partition_count: u32,
    /// Desired replicas per partition. A cluster with fewer members places
    /// each partition on all of them.
    pub replication_factor: usize,
    /// Virtual nodes per member. More tokens give a more even spread at the
    /// cost of a larger ring (`members * tokens_per_node` entries).
    pub tokens_per_node: u32,
}

impl Default for RingConfig {
    /// 256 partitions, 3 replicas, 64 tokens per node: enough partitions to
    /// spread over tens of nodes, few enough Raft groups per node to stay
    /// cheap; on 5 nodes the busiest typically holds ~8% more replicas than
    /// the mean (see the module doc).
    fn default() -> Self {
        RingConfig {
            partition_count: 256,
            replication_factor: 3,
            tokens_per_node: 64,
        }
    }
}

impl RingConfig {
    /// Checks the config, which may come from a file or a peer.
    pub fn validate(&self) -> Result<(), RingError> {
        if self.partition_count == 0 {
            return Err(RingError::ZeroPartitions);
        }
        if self.partition_count > MAX_PARTITION_COUNT {
            return Err(RingError::TooManyPartitions(self.partition_count));
        }
        if !self.partition_count.is_power_of_two() {
            return Err(RingError::PartitionsNotPowerOfTwo(self.partition_count));
        }
        if self.replication_factor == 0 {
            return Err(RingError::ZeroReplicationFactor);
        }
        if self.tokens_per_node == 0 {
            return Err(RingError::ZeroTokensPerNode);
        }
        if self.tokens_per_node > MAX_TOKENS_PER_NODE {
            return Err(RingError::TooManyTokensPerNode(self.tokens_per_node));
        }
        Ok(())
    }
}

/// How much placement differs between two rings, counted in replica slots:
/// a slot is one `(partition, node)` pair of a replica set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MovementStats {
    /// Partitions whose replica *set* differs (see [`Ring::moved_partitions`]).
    pub partitions_changed: usize,
    /// `(partition, node)` pairs present in the new ring only: replicas that
    /// must be created, i.e. partition copies to transfer.
    pub slots_added: usize,
    /// `(partition, node)` pairs present in the old ring only: replicas to
    /// drop. Equals `slots_added` while both rings have at least
    /// `replication_factor` members.
    pub slots_removed: usize,
    /// Partitions whose preferred leader (first replica) differs.
    pub preferred_leaders_changed: usize,
}

/// The desired placement of every partition on a member set.
///
/// Immutable: membership changes produce a new ring ([`Ring::with_member`],
/// [`Ring::without_member`]) so the old one can be diffed against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    config: RingConfig,
    members: BTreeSet<NodeId>,
    /// `(token, node)` sorted ascending; equal tokens are ordered by node id,
    /// which is the deterministic collision tie-break.
    tokens: Vec<(u64, NodeId)>,
    /// Replicas per partition: `min(replication_factor, members.len())`.
    replicas_per_partition: usize,
    /// Replica lists of all partitions back to back, `replicas_per_partition`
    /// entries each, indexed by partition id.
    placement: Vec<NodeId>,
}

impl Ring {
    /// Builds the ring of `members` under `config`. Duplicate members count
    /// once; an empty member set is allowed and places nothing.
    ///
    /// Token `i` (for `i` in `0..tokens_per_node`) of node `n` is
    /// `xxh3_64(n.0.to_le_bytes() ++ (i as u32).to_le_bytes())` with seed 0.
    /// Partition `p`'s point is `ceil(p * 2^64 / partition_count)`, the first
    /// key hash it owns. Its replicas are the distinct owners of the tokens
    /// at or after that point, walking clockwise (wrapping past `u64::MAX`).
    pub fn new(
        config: RingConfig,
        members: impl IntoIterator<Item = NodeId>,
    ) -> Result<Ring, RingError> {
        config.validate()?;
        Ok(Ring::build(config, members.into_iter().collect()))
    }

    /// Computes placement; `config` must already be valid.
    fn build(config: RingConfig, members: BTreeSet<NodeId>) -> Ring {
        let mut tokens: Vec<(u64, NodeId)> = members
            .iter()
            .flat_map(|&node| {
                (0..config.tokens_per_node).map(move |index| (token_of(node, index), node))
            })
            .collect();
        // Sorting the pairs orders equal tokens by node id: the collision
        // tie-break, independent of the order members were inserted in.
        tokens.sort_unstable();

        let replicas_per_partition = config.replication_factor.min(members.len());
        let mut placement =
            Vec::with_capacity(replicas_per_partition * config.partition_count as usize);
        if replicas_per_partition > 0 {
            for partition in 0..config.partition_count {
                let point = partition_point(partition, config.partition_count);
                let replicas_start = placement.len();
                push_clockwise_replicas(&tokens, point, replicas_per_partition, &mut placement);
                // Every member has at least one token, so a full lap meets
                // `members.len() >= replicas_per_partition` distinct nodes.
                debug_assert_eq!(placement.len() - replicas_start, replicas_per_partition);
            }
        }

        Ring {
            config,
            members,
            tokens,
            replicas_per_partition,
            placement,
        }
    }

    /// The config this ring was built with.
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Every member's tokens, `(token, node)` in ring order.
    pub fn tokens(&self) -> &[(u64, NodeId)] {
        &self.tokens
    }

    /// The members, in node id order.
    pub fn members(&self) -> &BTreeSet<NodeId> {
        &self.members
    }

    /// All partitions, `0..partition_count`.
    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + use<> {
        (0..self.config.partition_count).map(PartitionId)
    }

    /// The partition that owns `key` under this ring's partition count; see
    /// the free function [`partition_of`].
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of(key, self.config.partition_count)
    }

    /// The desired replicas of `partition`, preferred leader first:
    /// `min(replication_factor, members)` distinct nodes. An unknown
    /// partition (it may come from a peer) has no replicas: empty slice.
    pub fn replicas(&self, partition: PartitionId) -> &[NodeId] {
        // Checked so that no partition id, however large, can panic here.
        (partition.0 as usize)
            .checked_mul(self.replicas_per_partition)
            .and_then(|start| {
                self.placement
                    .get(start..start.checked_add(self.replicas_per_partition)?)
            })
            .unwrap_or(&[])
    }

    /// The partitions `node` should replicate, in partition order. O(partitions).
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        self.partitions()
            .filter(|&partition| self.replicas(partition).contains(&node))
            .collect()
    }

    /// This ring with `node` added (unchanged if it is already a member).
    pub fn with_member(&self, node: NodeId) -> Ring {
        let mut members = self.members.clone();
        members.insert(node);
        Ring::build(self.config, members)
    }

    /// This ring with `node` removed (unchanged if it is not a member).
    pub fn without_member(&self, node: NodeId) -> Ring {
        let mut members = self.members.clone();
        members.remove(&node);
        Ring::build(self.config, members)
    }

    /// Partitions whose replica *set* differs between `self` and `other`
    /// (a mere reordering, i.e. a new preferred leader, moves no data and is
    /// not counted). Partitions that exist in only one ring count as moved.
    pub fn moved_partitions(&self, other: &Ring) -> Vec<PartitionId> {
        self.partitions_of_either(other)
            .filter(|&partition| !same_set(self.replicas(partition), other.replicas(partition)))
            .collect()
    }

    /// Counts what changes going from `self` to `other`; see [`MovementStats`].
    pub fn diff(&self, other: &Ring) -> MovementStats {
        let mut stats = MovementStats::default();
        for partition in self.partitions_of_either(other) {
            let before = self.replicas(partition);
            let after = other.replicas(partition);
            let added = after.iter().filter(|node| !before.contains(node)).count();
            let removed = before.iter().filter(|node| !after.contains(node)).count();
            stats.slots_added += added;
            stats.slots_removed += removed;
            if added + removed > 0 {
                stats.partitions_changed += 1;
            }
            if before.first() != after.first() {
                stats.preferred_leaders_changed += 1;
            }
        }
        stats
    }

    /// Partitions of the larger of the two rings, so comparing rings of
    /// different partition counts still covers every partition.
    fn partitions_of_either(&self, other: &Ring) -> impl Iterator<Item = PartitionId> + use<> {
        let count = self
            .config
            .partition_count
            .max(other.config.partition_count);
        (0..count).map(PartitionId)
    }
}

/// Walks `tokens` (sorted) clockwise from `point`, wrapping past `u64::MAX`,
/// and appends to `out` the first `wanted` distinct owners met (fewer only if
/// the ring has fewer distinct nodes). A token equal to `point` is met first.
fn push_clockwise_replicas(
    tokens: &[(u64, NodeId)],
    point: u64,
    wanted: usize,
    out: &mut Vec<NodeId>,
) {
    let replicas_start = out.len();
    let start = tokens.partition_point(|&(token, _)| token < point);
    for &(_, node) in tokens[start..].iter().chain(&tokens[..start]) {
        if out.len() - replicas_start == wanted {
            break;
        }
        if !out[replicas_start..].contains(&node) {
            out.push(node);
        }
    }
}

/// Whether two replica lists (each free of duplicates) hold the same nodes.
fn same_set(left: &[NodeId], right: &[NodeId]) -> bool {
    left.len() == right.len() && left.iter().all(|node| right.contains(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(ids: impl IntoIterator<Item = u64>) -> Vec<NodeId> {
        ids.into_iter().map(NodeId).collect()
    }

    fn ring(config: RingConfig, ids: impl IntoIterator<Item = u64>) -> Ring {
        Ring::new(config, nodes(ids)).expect("test configs are valid")
    }

    /// splitmix64: a seeded generator for "random" node ids, so the test is
    /// reproducible without depending on an RNG crate's stream stability.
    fn seeded_ids(seed: u64, count: usize) -> Vec<u64> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            })
            .collect()
    }

    /// Replica count of every member: (min, max, mean).
    fn replica_spread(ring: &Ring) -> (usize, usize, f64) {
        let loads: Vec<usize> = ring
            .members()
            .iter()
            .map(|&node| ring.partitions_of(node).len())
            .collect();
        let min = loads.iter().copied().min().unwrap_or(0);
        let max = loads.iter().copied().max().unwrap_or(0);
        let mean = loads.iter().sum::<usize>() as f64 / loads.len().max(1) as f64;
        (min, max, mean)
    }

    #[test]
    fn key_slot_is_redis_clusters() {
        // CRC16/XMODEM's check value, and slots Redis's own CLUSTER KEYSLOT
        // gives (foo 12182, bar 5061, from the Redis Cluster specification).
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        for (key, slot) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"hello", 866),
            (b"", 0),
            (b"user:42", 15880),
        ] {
            assert_eq!(key_slot(key), slot, "key_slot({key:?})");
        }
    }

    #[test]
    fn hash_tags_follow_redis_rules() {
        // From the Redis Cluster specification's examples.
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"{user1000}.followers"), b"user1000");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        // No tag: `{}`, no `}` after the `{`, no `{`.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b"foo}bar{"), b"foo}bar{");
        assert_eq!(
            key_slot(b"{user42}.name"),
            key_slot(b"{user42}.email"),
            "co-located"
        );
        assert_eq!(key_slot(b"{user42}.name"), key_slot(b"user42"));
    }

    #[test]
    fn key_slot_and_partition_of_are_pinned() {
        // If this fails, the key -> slot -> partition mapping changed: that
        // is an on-disk format break, not a test to update.
        let pinned: [(&[u8], u16, u32); 4] = [
            (b"", 0, 0),
            (b"hello", 866, 13),
            (b"ringkv", 5006, 78),
            (b"user:42", 15880, 248),
        ];
        for (key, slot, partition) in pinned {
            assert_eq!(key_slot(key), slot, "key_slot({key:?})");
            assert_eq!(
                partition_of(key, 256),
                PartitionId(partition),
                "partition_of({key:?}, 256)"
            );
        }
    }

    #[test]
    fn partitions_own_contiguous_equal_slot_ranges() {
        assert_eq!(partition_of(b"any", 0), PartitionId(0));
        assert_eq!(partition_of_slot(16383, 1), PartitionId(0));
        for count in [1, 2, 8, 256, 16384] {
            let mut next = 0u32;
            for p in 0..count {
                let range = slot_range(PartitionId(p), count);
                assert_eq!(u32::from(range.start), next, "{count}: {p}");
                assert_eq!(range.len() as u32, SLOT_COUNT / count);
                for slot in [range.start, range.end - 1] {
                    assert_eq!(partition_of_slot(slot, count), PartitionId(p));
                }
                next = u32::from(range.end);
            }
            assert_eq!(next, SLOT_COUNT, "{count} partitions cover every slot");
            assert!(slot_range(PartitionId(count), count).is_empty());
        }
    }

    #[test]
    fn invalid_config_is_rejected() {
        let valid = RingConfig::default();
        assert_eq!(valid.validate(), Ok(()));
        let cases = [
            (
                RingConfig {
                    partition_count: 0,
                    ..valid
                },
                RingError::ZeroPartitions,
            ),
            (
                RingConfig {
                    partition_count: MAX_PARTITION_COUNT + 1,
                    ..valid
                },
                RingError::TooManyPartitions(MAX_PARTITION_COUNT + 1),
            ),
            (
                RingConfig {
                    partition_count: 100,
                    ..valid
                },
                RingError::PartitionsNotPowerOfTwo(100),
            ),
            (
                RingConfig {
                    replication_factor: 0,
                    ..valid
                },
                RingError::ZeroReplicationFactor,
            ),
            (
                RingConfig {
                    tokens_per_node: 0,
                    ..valid
                },
                RingError::ZeroTokensPerNode,
            ),
            (
                RingConfig {
                    tokens_per_node: MAX_TOKENS_PER_NODE + 1,
                    ..valid
                },
                RingError::TooManyTokensPerNode(MAX_TOKENS_PER_NODE + 1),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(Ring::new(config, nodes([1, 2, 3])), Err(expected));
        }
    }

    #[test]
    fn unknown_partition_and_empty_ring_have_no_replicas() {
        let three = ring(RingConfig::default(), [1, 2, 3]);
        assert_eq!(three.replicas(PartitionId(255)).len(), 3);
        assert!(three.replicas(PartitionId(256)).is_empty());
        assert!(three.replicas(PartitionId(u32::MAX)).is_empty());
        let empty = ring(RingConfig::default(), []);
        assert!(empty.replicas(PartitionId(0)).is_empty());
        assert!(empty.partitions_of(NodeId(1)).is_empty());
    }

    #[test]
    fn token_collisions_break_ties_by_node_id() {
        // Real xxh3 collisions are impractical to find, so walk a hand-made
        // token list: sorting `(token, node)` puts the lower id first.
        let mut tokens = vec![(10, NodeId(9)), (10, NodeId(2)), (20, NodeId(5))];
        tokens.sort_unstable();
        let mut replicas = Vec::new();
        push_clockwise_replicas(&tokens, 10, 3, &mut replicas);
        assert_eq!(replicas, nodes([2, 9, 5]));
        replicas.clear();
        push_clockwise_replicas(&tokens, 11, 2, &mut replicas);
        assert_eq!(replicas, nodes([5, 2]), "wraps past u64::MAX");
    }

    #[test]
    fn partitions_of_and_replicas_agree() {
        let five = ring(RingConfig::default(), 1..=5);
        let mut slots = 0;
        for &node in five.members() {
            for partition in five.partitions_of(node) {
                assert!(five.replicas(partition).contains(&node));
                slots += 1;
            }
        }
        assert_eq!(slots, 256 * 3);
    }

    #[test]
    fn balance_is_within_measured_bound() {
        // Measured (5 nodes, defaults), max/mean: 1..=5 1.061, 10..=14 1.113,
        // 0..5 1.074, seeded 1/2/3 1.113/1.068/1.146; worst min/mean 0.840
        // (seeded 3). Over 500 seeded 5-node sets: p50 1.081, p99 1.185,
        // max 1.217. The bound is the worst of the sets asserted here plus ~5%.
        const MAX_OVER_MEAN_BOUND: f64 = 1.20;
        const MIN_OVER_MEAN_BOUND: f64 = 0.80;
        let config = RingConfig::default(); // 256 partitions, rf 3, 64 tokens
        let member_sets: Vec<(&str, Vec<u64>)> = vec![
            ("1..=5", (1..=5).collect()),
            ("10..=14", (10..=14).collect()),
            ("0..5", (0..5).collect()),
            ("seeded 1", seeded_ids(1, 5)),
            ("seeded 2", seeded_ids(2, 5)),
            ("seeded 3", seeded_ids(3, 5)),
        ];
        for (name, ids) in member_sets {
            let (min, max, mean) = replica_spread(&ring(config, ids));
            let ratio = max as f64 / mean;
            println!(
                "balance {name:>9}: replicas per node min {min} max {max} mean {mean:.1} max/mean {ratio:.3} min/mean {:.3}",
                min as f64 / mean
            );
            assert!(ratio < MAX_OVER_MEAN_BOUND, "{name}: max/mean {ratio:.3}");
            assert!(
                min as f64 / mean > MIN_OVER_MEAN_BOUND,
                "{name}: min/mean {:.3}",
                min as f64 / mean
            );
        }
    }

    #[test]
    fn adding_a_node_moves_about_rf_over_n_plus_1() {
        // Ideal: the new node takes its fair share, 1/(n+1) of the replica
        // slots, one slot in each of rf/(n+1) of the partitions. Measured
        // partitions-changed / ideal for ids 1..=n+1, n = 3..=9:
        // 1.08, 1.02, 1.00, 1.01, 0.90, 1.03, 0.95 (slots moved 0.270 vs ideal
        // 0.250 at n=3 ... 0.095 vs 0.100 at n=9).
        // Over 300 seeded member sets per n in {3,4,6,8,10}: 0.77..1.22
        // (p99 <= 1.20). The bound is that range plus a small margin.
        const MIN_OVER_IDEAL: f64 = 0.70;
        const MAX_OVER_IDEAL: f64 = 1.30;
        let config = RingConfig::default();
        for n in 3..=9u64 {
            let before = ring(config, 1..=n);
            let after = before.with_member(NodeId(n + 1));
            let stats = before.diff(&after);
            let partitions = f64::from(config.partition_count);
            let partition_fraction = stats.partitions_changed as f64 / partitions;
            let slot_fraction = stats.slots_added as f64 / (partitions * 3.0);
            let ideal_partitions = 3.0 / (n + 1) as f64;
            println!(
                "add node to {n}: partitions changed {partition_fraction:.3} (ideal rf/(n+1) {ideal_partitions:.3}, ratio {:.2}), slots moved {slot_fraction:.3} (ideal 1/(n+1) {:.3}), preferred leaders changed {}",
                partition_fraction / ideal_partitions,
                1.0 / (n + 1) as f64,
                stats.preferred_leaders_changed
            );
            assert_eq!(stats.slots_added, stats.slots_removed);
            assert_eq!(
                stats.partitions_changed, stats.slots_added,
                "each changed partition swaps exactly one replica"
            );
            assert_eq!(stats.slots_added, after.partitions_of(NodeId(n + 1)).len());
            let over_ideal = partition_fraction / ideal_partitions;
            assert!(
                (MIN_OVER_IDEAL..MAX_OVER_IDEAL).contains(&over_ideal),
                "n={n}: moved {partition_fraction:.3} of partitions, {over_ideal:.2}x the ideal"
            );
        }
    }

    #[test]
    fn removing_a_node_moves_exactly_its_replicas() {
        for (config, ids) in [
            (RingConfig::default(), (1..=5).collect::<Vec<u64>>()),
            (RingConfig::default(), seeded_ids(9, 8)),
            // Fewer members than rf after removal: slots are only dropped.
            (RingConfig::default(), (1..=3).collect()),
        ] {
            let before = ring(config, ids.iter().copied());
            for &removed in &nodes(ids.iter().copied()) {
                let after = before.without_member(removed);
                let held = before.partitions_of(removed);
                let stats = before.diff(&after);
                assert_eq!(
                    before.moved_partitions(&after),
                    held,
                    "only partitions {removed} held move"
                );
                assert_eq!(stats.slots_removed, held.len());
                let refilled = if after.members().len() >= config.replication_factor {
                    held.len()
                } else {
                    0
                };
                assert_eq!(stats.slots_added, refilled);
                assert_removal_is_minimal(&before, &after, removed);
            }
        }
    }

    #[test]
    fn placement_is_pinned() {
        // Every node must compute the same ring, across versions too: pin the
        // token hash and a few replica lists. A failure means placement moved
        // for an unchanged member set; that needs a migration plan.
        assert_eq!(token_of(NodeId(1), 0), 0x1AE5_C641_2588_0F18);
        let five = ring(RingConfig::default(), 1..=5);
        for (partition, expected) in [
            (0, [2, 5, 1]),
            (1, [4, 3, 5]),
            (128, [3, 1, 5]),
            (255, [2, 5, 1]),
        ] {
            assert_eq!(
                five.replicas(PartitionId(partition)),
                nodes(expected),
                "p{partition}"
            );
        }
    }

    /// Removing `removed` leaves every partition that did not hold it exactly
    /// as it was (order included), and in the others drops it and at most
    /// appends the next distinct node clockwise.
    fn assert_removal_is_minimal(before: &Ring, after: &Ring, removed: NodeId) {
        for partition in before.partitions() {
            let old = before.replicas(partition);
            let new = after.replicas(partition);
            if !old.contains(&removed) {
                assert_eq!(old, new, "{partition} did not hold {removed}");
                continue;
            }
            let kept: Vec<NodeId> = old
                .iter()
                .copied()
                .filter(|&node| node != removed)
                .collect();
            assert_eq!(
                &new[..kept.len()],
                &kept[..],
                "{partition} keeps its other replicas in order"
            );
            assert!(new.len() <= old.len());
            assert!(!new.contains(&removed));
        }
    }

    /// Adding `added` changes only partitions that gain it; each keeps its
    /// other replicas in order, minus at most the last one.
    fn assert_addition_is_minimal(before: &Ring, after: &Ring, added: NodeId) {
        for partition in before.partitions() {
            let old = before.replicas(partition);
            let new = after.replicas(partition);
            if !new.contains(&added) {
                assert_eq!(old, new, "{partition} did not gain {added}");
                continue;
            }
            let kept: Vec<NodeId> = new.iter().copied().filter(|&node| node != added).collect();
            assert_eq!(
                &old[..kept.len()],
                &kept[..],
                "{partition} keeps its other replicas in order"
            );
            assert!(
                old.len() - kept.len() <= 1,
                "{partition} loses at most one replica"
            );
        }
    }

    fn config_strategy() -> impl Strategy<Value = RingConfig> {
        (0u32..7, 1usize..6, 1u32..16).prop_map(
            |(log2_partitions, replication_factor, tokens_per_node)| RingConfig {
                partition_count: 1 << log2_partitions,
                replication_factor,
                tokens_per_node,
            },
        )
    }

    /// Member ids: a small range so duplicates and neighbours happen, plus
    /// arbitrary ones.
    fn member_ids_strategy() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(prop_oneof![0u64..12, any::<u64>()], 0..9)
    }

    proptest! {
        #[test]
        fn replica_sets_have_min_rf_n_distinct_members(config in config_strategy(), ids in member_ids_strategy()) {
            let built = ring(config, ids);
            let expected = config.replication_factor.min(built.members().len());
            for partition in built.partitions() {
                let replicas = built.replicas(partition);
                prop_assert_eq!(replicas.len(), expected);
                let distinct: BTreeSet<NodeId> = replicas.iter().copied().collect();
                prop_assert_eq!(distinct.len(), expected);
                prop_assert!(distinct.is_subset(built.members()));
            }
        }

        #[test]
        fn placement_is_independent_of_member_insertion_order(
            config in config_strategy(),
            (ids, shuffled) in member_ids_strategy().prop_flat_map(|ids| (Just(ids.clone()), Just(ids).prop_shuffle())),
        ) {
            let original = ring(config, ids);
            let reordered = ring(config, shuffled);
            prop_assert_eq!(&original, &reordered);
            prop_assert_eq!(original.diff(&reordered), MovementStats::default());
        }

        #[test]
        fn removing_a_member_only_moves_partitions_it_replicated(
            config in config_strategy(),
            ids in member_ids_strategy(),
            pick in any::<prop::sample::Index>(),
        ) {
            let before = ring(config, ids);
            let members: Vec<NodeId> = before.members().iter().copied().collect();
            prop_assume!(!members.is_empty());
            let removed = members[pick.index(members.len())];
            let after = before.without_member(removed);
            prop_assert_eq!(before.moved_partitions(&after), before.partitions_of(removed));
            prop_assert_eq!(before.diff(&after).slots_removed, before.partitions_of(removed).len());
            assert_removal_is_minimal(&before, &after, removed);
        }

        #[test]
        fn adding_a_member_only_moves_partitions_that_gain_it(
            config in config_strategy(),
            ids in member_ids_strategy(),
            added in any::<u64>(),
        ) {
            let before = ring(config, ids);
            let added = NodeId(added);
            prop_assume!(!before.members().contains(&added));
            let after = before.with_member(added);
            prop_assert_eq!(before.moved_partitions(&after), after.partitions_of(added));
            prop_assert_eq!(before.diff(&after).slots_added, after.partitions_of(added).len());
            assert_addition_is_minimal(&before, &after, added);
            // Adding then removing the same node is a no-op.
            prop_assert_eq!(&after.without_member(added), &before);
        }
    }
}
