//! How much data a membership change moves, against the least any
//! placement could move: the consistent-hash ring's movement benchmark.
//!
//! For each partition count and cluster size n, a node joins (n -> n+1) and
//! a node leaves (n+1 -> n, the highest id): the replica slots added are
//! counted ([`Ring::diff`]) and divided by the theoretical minimum. A join
//! that gives the new node its fair share moves rf x partitions / (n+1)
//! slots, and no placement that does can move less; a departure must
//! re-place the leaving node's slots. The goal (issue 13) is a ratio of at
//! most 1.2 for a join.
//!
//! On this ring every slot a join moves lands on the new node (no replica
//! moves between old nodes), so a join's ratio is also the new node's load
//! against its fair share: below 1 it took less than its share (the token
//! positions' variance, which more partitions and tokens even out), above
//! 1 more.
//!
//! ```text
//! cargo run --release -p ringkv-core --example ring_movement
//! ```
//!
//! The process test `a_node_joins_a_running_cluster_and_takes_its_share`
//! measures the same on a real cluster (the controller moves what the ring
//! says, so it moves this much).

use ringkv_core::NodeId;
use ringkv_core::ring::{Ring, RingConfig};

fn main() {
    let tokens_per_node = 64;
    let replication_factor = 3;
    println!(
        "ring movement: replication factor {replication_factor}, {tokens_per_node} tokens per node\n"
    );
    println!(
        "{:>10} {:>9} {:>11} {:>9} {:>7} {:>13} {:>9} {:>7}",
        "partitions", "n -> n+1", "join moved", "fair", "ratio", "leave moved", "minimum", "ratio"
    );
    let mut worst_join: f64 = 0.0;
    let mut join_ratios = Vec::new();
    for partition_count in [64, 256, 1024, 4096] {
        let config = RingConfig {
            partition_count,
            replication_factor,
            tokens_per_node,
        };
        for n in 3..=12u64 {
            let ring = |members: u64| Ring::new(config, (1..=members).map(NodeId)).expect("ring");
            let (small, large) = (ring(n), ring(n + 1));
            let join = small.diff(&large).slots_added;
            let join_min = (replication_factor * partition_count as usize) as f64 / (n + 1) as f64;
            // Leaving: the slots the departing node held are the least to re-place.
            let leave = large.diff(&small).slots_added;
            let leave_min = large.partitions_of(NodeId(n + 1)).len() as f64;
            let join_ratio = join as f64 / join_min;
            worst_join = worst_join.max(join_ratio);
            join_ratios.push(join_ratio);
            println!(
                "{partition_count:>10} {:>9} {join:>11} {join_min:>9.1} {join_ratio:>7.2} {leave:>13} {leave_min:>9.0} {:>7.2}",
                format!("{n} -> {}", n + 1),
                leave as f64 / leave_min
            );
        }
    }
    let mean = join_ratios.iter().sum::<f64>() / join_ratios.len() as f64;
    println!(
        "\njoins: mean ratio {mean:.2}, worst {worst_join:.2} (goal <= 1.2 of the minimum); \
         a leave always moves exactly the leaving node's slots (ratio 1.00)"
    );
}
