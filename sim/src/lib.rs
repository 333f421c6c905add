//! Deterministic simulation of ringkv nodes under madsim (issue 4).
//!
//! A run is a pure function of its seed: real nodes on simulated IPs, disks and
//! clocks, a seeded schedule of faults, concurrent clients whose every operation
//! is recorded, and checkers that judge the record. This crate so far holds the
//! record and the judges:
//! - [`history`]: the operation log (invoke, completion, request, outcome) and
//!   its one-line trace form;
//! - [`checker`]: linearizability per key, stale reads that never invent, no
//!   acknowledged write lost, each in its own file.
//!
//! Still to come: `cluster` (nodes under madsim), `nemesis` (the fault
//! schedule) and `workload` (the clients that fill the history).

pub mod checker;
pub mod history;
