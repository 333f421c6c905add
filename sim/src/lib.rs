//! Deterministic simulation of ringkv nodes under madsim (issue 4).
//!
//! A run is a pure function of its seed: real nodes on simulated IPs, disks and
//! clocks, a seeded schedule of faults, concurrent clients whose every operation
//! is recorded, and checkers that judge the record. Build and run the madsim
//! parts with `RUSTFLAGS="--cfg madsim"` (see `docs/testing.md`); in a normal
//! build only the madsim-free parts compile.
//!
//! The history it records and the checkers that judge it live in
//! `ringkv_core::check`, shared with the core's randomized simulation.
//!
//! - [`sim_disk`]: per-node in-memory disks that lose, keep or tear unsynced
//!   writes on power loss;
//! - [`sim_clock`]: per-node skewed, drifting, jumping clocks over madsim's
//!   global time;
//! - `cluster` (madsim only): nodes running the real `ringkv-node` server on
//!   simulated IPs, clients, and the faults the harness injects;
//! - `message_faults` (madsim only): per-link drop / duplicate / delay of
//!   peer batches, decided by seeded RNGs, behind the node's fault hook;
//! - `workload` (madsim only): concurrent seeded clients that send gets,
//!   puts, conditional puts and deletes to random nodes and record them;
//! - `nemesis` (madsim only): a seeded, swarm-style fault schedule
//!   (partitions, lossy links, crashes and power losses, pauses, clock drift,
//!   and membership churn: joins, a drain, a node lost for good);
//! - `mover` (madsim only): replica moves, and moves back, while the
//!   nemesis runs;
//! - `observer` (madsim only): elections and commit progress as the nodes'
//!   views show them, as timeline lines for traces;
//! - `settle` (madsim only): whether membership and placement have settled
//!   after churn, judged from the nodes' views.

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod message_faults;
#[cfg(madsim)]
pub mod mover;
/// Seeded swarm-style fault schedule applied to a [`cluster::SimCluster`].
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod observer;
#[cfg(madsim)]
pub mod settle;
pub mod sim_clock;
pub mod sim_disk;
/// Concurrent seeded clients that fill a [`history::Recorder`].
#[cfg(madsim)]
pub mod workload;
