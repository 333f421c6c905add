//! The client APIs every node serves: gRPC (`ringkv.v1.Kv`, `ringkv.v1.Cluster`),
//! REST and the Redis protocol (these two not under madsim). Both are thin: they turn a request into a
//! core `ClientRequest`, hand it to the node, and present the answer; error
//! codes come from one table ([`errors`]).

pub mod convert;
#[cfg(not(madsim))]
pub mod dashboard;
pub mod errors;
pub mod grpc;
#[cfg(not(madsim))]
pub mod http;
pub mod metrics;
#[cfg(not(madsim))]
pub mod resp;
#[cfg(not(madsim))]
pub mod rest;
pub mod scan;
