//! `ringkv-node`: the driver that runs `ringkv-core` over real I/O.
//!
//! The core makes every protocol decision; this crate owns the sockets, files,
//! clocks and tasks. It builds twice: for production on tokio/tonic, and
//! under `cfg(madsim)` for the deterministic simulation, where tokio and tonic
//! are madsim's, REST and the CLI are compiled out, and time and files come
//! only through [`clock::Clock`] and [`disk::Disk`].
//!
//! - [`address`]: a member's gRPC address (an IP or a DNS name).
//! - [`server`]: starts a node (storage, core, transport, APIs).
//! - [`driver`]: the event loop around the core.
//! - [`handle`]: how the APIs and the peer service reach that loop.
//! - [`view`]: the cluster as this node sees it (status, metrics, readiness).
//! - [`requests`]: what this node's clients asked, per operation.
//! - [`transport`]: peer streams and request forwarding over gRPC.
//! - [`storage`]: WAL segments, snapshots, recovery.
//! - `tls`: TLS on the listeners and between nodes (not under madsim).
//! - [`api`]: gRPC and REST client APIs.
//! - `cli`: the client commands and the benchmark (not under madsim).

pub mod address;
pub mod api;
pub mod auth;
#[cfg(not(madsim))]
pub mod cli;
pub mod clock;
pub mod config;
pub mod disk;
pub mod driver;
pub mod handle;
pub mod members;
pub mod requests;
pub mod server;
pub mod storage;
#[cfg(not(madsim))]
pub mod tls;
pub mod transport;
pub mod view;
pub mod watch;

/// An error and its sources on one line, "a: b: c", skipping a source whose
/// text the line already holds (tonic's transport errors say only
/// "transport error" at the top; the cause is below).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}
