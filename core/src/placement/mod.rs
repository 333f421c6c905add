//! Placement: where partitions' replicas and leaders should be, and how they
//! get there. Pure: no clock, no I/O; the caller passes what it observed.
//!
//! - [`moves`]: the steps of one replica move, make before break, from a
//!   group's configuration alone.
//! - [`planner`]: the controller's decisions for the whole cluster: from the
//!   member list (with each member's state), every group's configuration and
//!   leader, and which nodes are down, the next throttled, prioritized steps
//!   toward the desired ring (re-replication first, then drains, then
//!   balance) and the leader transfers that spread leadership evenly.
//!
//! Not here: who runs the planner and carries its steps out (the
//! metadata group's leader, in the node), nor the member list itself.

pub mod moves;
pub mod planner;

pub use moves::{MoveError, MoveStep, ReplicaMove};
