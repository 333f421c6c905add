//! ringkv's protobuf schemas and the Rust types generated from them.
//!
//! This crate owns the *shape* of every byte ringkv writes to a disk or a
//! socket; it holds no logic. `ringkv-core` converts between these types and
//! its own validated Rust types at its edge (see `ringkv_core::wire`).
//!
//! With the `services` feature it also holds the gRPC clients and servers of
//! `ringkv.v1.Kv`, `ringkv.v1.Cluster` and `ringkv.v1.Peer` (real tonic, or
//! madsim's under `cfg(madsim)`).

#![allow(clippy::all, missing_docs)]

/// Version 1 of the schemas (`package ringkv.v1`).
pub mod v1 {
    #[cfg(not(feature = "services"))]
    include!(concat!(env!("OUT_DIR"), "/ringkv.v1.rs"));
    #[cfg(feature = "services")]
    tonic::include_proto!("ringkv.v1");
}

pub use prost::Message;
