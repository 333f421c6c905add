//! The Redis protocol (RESP2 and RESP3) on a node's `--resp-listen`
//! address: `redis-cli`, `redis-benchmark` and Redis client libraries talk
//! to ringkv as to a Redis server, and every acknowledged write is
//! replicated to a majority and fsync'ed.
//!
//! - [`parser`]: bytes to commands (pure, bounded, fuzzed);
//! - [`reply`]: replies to bytes, RESP2 or RESP3 (pure);
//! - [`commands`]: what each command does, through the node's client API;
//! - this module: the listener and one task per connection.
//!
//! A connection reads what the client sent, runs every whole command in it
//! in order (pipelining: a client may send many before reading), and writes
//! their replies together. A command runs to its reply before the next one
//! starts, so replies come back in order and a pipeline's writes apply in
//! the order sent. A framing error gets `-ERR Protocol error: ...` and the
//! connection is closed (the stream cannot be resynchronised); any other
//! error is a reply, and the connection goes on.
//!
//! Not under madsim (the simulation drives gRPC).

pub mod cluster;
pub mod commands;
pub mod parser;
pub mod reply;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use self::commands::{After, Session};
use self::parser::{Limits, Parsed, parse_command};
use self::reply::Reply;
use crate::config::RespRedirects;
use crate::handle::NodeHandle;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 << 10;

/// How a node serves RESP.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub limits: Limits,
    pub redirects: RespRedirects,
    /// The cluster's partition count (slot ranges).
    pub partition_count: u32,
}

/// Serves RESP on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let next_id = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            // (The guard `wait_for` returns is not `Send`: drop it inside.)
            _ = async { drop(shutdown.wait_for(|s| *s).await) } => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: the listener
                    // itself is fine; try again shortly.
                    tracing::warn!("RESP: cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let node = node.clone();
        let mut rx = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = async { drop(rx.wait_for(|s| *s).await) } => {}
                r = connection(stream, node, settings, id) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "RESP connection ended: {e}");
                    }
                }
            }
        });
    }
}

/// One client connection, until it closes, says `QUIT` or breaks framing.
async fn connection(
    mut stream: TcpStream,
    node: NodeHandle,
    settings: Settings,
    id: u64,
) -> std::io::Result<()> {
    let limits = settings.limits;
    let mut session = Session::new(id, settings.partition_count);
    session.cluster_aware = settings.redirects == RespRedirects::Always;
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::new();
    loop {
        // Every whole command buffered, in order.
        loop {
            match parse_command(&input, &limits) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Command { args, consumed }) => {
                    let frame = input.split_to(consumed).freeze();
                    if args.is_empty() {
                        continue;
                    }
                    let args = args.into_iter().map(|r| frame.slice(r)).collect();
                    let (reply, after) = commands::execute(&node, &mut session, args).await;
                    reply.encode(session.proto, &mut output);
                    if after == After::Close {
                        stream.write_all(&output).await?;
                        return Ok(());
                    }
                }
                Err(e) => {
                    Reply::err(&e).encode(session.proto, &mut output);
                    stream.write_all(&output).await?;
                    return Ok(());
                }
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        input.reserve(READ_CHUNK);
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
    }
}
