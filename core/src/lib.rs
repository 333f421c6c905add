//! ringkv's sans-IO core.
//!
//! Every protocol decision of ringkv lives here, as pure state machines that
//! take inputs as method calls (with the current [`Time`] passed in) and queue
//! their outputs for a driver to drain. The core never touches a clock, socket,
//! file, thread, environment variable or global RNG: the `ringkv` node binary
//! drives it over real I/O in production, and the simulator drives the very same
//! code under madsim. Same inputs, same outputs, byte for byte.
//!
//! Modules:
//! - [`ring`]: consistent-hash ring, `partition_of(key)`, replica placement.
//! - [`routing`]: how far a request may be forwarded, and what a client is
//!   told when a forward fails.
//! - [`kv`]: the replicated key-value state machine of one partition.
//! - [`watch`]: the changes it makes, key by key, and the bounded history
//!   of them that watchers are served from.
//! - [`detector`]: phi-accrual failure detection over node heartbeats.
//! - [`placement`]: where replicas and leaders should be, and the steps to
//!   get them there (one replica move, make before break; the controller's
//!   plan for the whole cluster).
//! - [`metadata`]: the cluster's member list and ring settings, as the
//!   metadata group holds them.
//! - [`identity`]: who a peer is (cluster, settings, data-directory
//!   incarnation), whether to admit it, and how a cluster is formed.
//! - [`access`]: client access tokens, their roles and key scopes, and
//!   the check of a request against them.
//! - [`check`]: what the simulators judge (client histories, Raft
//!   invariants); pure, and shared by the core's and the madsim simulation.

pub mod access;
pub mod check;
pub mod detector;
pub mod identity;
pub mod io;
pub mod kv;
pub mod metadata;
pub mod node;
pub mod placement;
pub mod raft;
pub mod ring;
pub mod routing;
pub mod types;
pub mod watch;
pub mod wire;

pub use types::{NodeId, PartitionId, Time};
