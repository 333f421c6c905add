//! ringkv's protobuf schemas and the prost types generated from them.
//!
//! This crate owns the *shape* of every byte ringkv writes to a disk or a
//! socket; it holds no logic. `ringkv-core` converts between these types and
//! its own validated Rust types at its edge (see `ringkv_core::wire`).

#![allow(clippy::all, missing_docs)]

/// Version 1 of the schemas (`package ringkv.v1`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ringkv.v1.rs"));
}

pub use prost::Message;
