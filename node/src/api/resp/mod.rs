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
//! (pipelining: a client may send many before reading), and writes their
//! replies together, in the order of the commands. Consecutive single-key
//! commands (`GET`, `SET`, `INCR`, ... see [`commands::is_single_key`]) run
//! at once, up to [`PIPELINE_WINDOW`] of them, so that a pipeline's writes
//! share the leaders' group commits instead of waiting for one commit each:
//! commands on the same key still run one after another in the order sent,
//! commands on different keys may take effect in any order (they are
//! concurrent operations: the client sent each before it had the answer to
//! the one before). Any other command (connection state, multi-key, topology)
//! waits for the commands before it and runs alone. A framing error gets
//! `-ERR Protocol error: ...` and the connection is closed (the stream cannot
//! be resynchronised); any other error is a reply, and the connection goes
//! on.
//!
//! Not under madsim (the simulation drives gRPC).

pub mod access;
pub mod cluster;
pub mod commands;
pub mod expiry;
pub mod keyspace;
pub mod parser;
pub mod pubsub;
pub mod reply;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use self::commands::{After, Session};
use self::keyspace::Cursors;
use self::parser::{Limits, Parsed, parse_command};
use self::pubsub::{Delivery, Subscriptions};
use self::reply::{Protocol, Reply};
use crate::config::RespRedirects;
use crate::handle::NodeHandle;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 << 10;

/// Commands of one pipeline in flight at once, at most: enough to fill a
/// group commit, few enough to stay far below the core's admission limits.
pub const PIPELINE_WINDOW: usize = 256;

/// How a node serves RESP.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub limits: Limits,
    /// Connections served at once; one more gets Redis's
    /// `-ERR max number of clients reached` and is closed.
    pub max_connections: usize,
    /// How long the rest of a command may take to arrive once part of it
    /// has (counted from the last whole command): a client that stalls
    /// mid-command is told so and closed. An idle connection (nothing
    /// pending) stays open, as in Redis.
    pub command_timeout: std::time::Duration,
    pub redirects: RespRedirects,
    /// The cluster's partition count (slot ranges).
    pub partition_count: u32,
}

/// Where a node's RESP connections come from: a plain listener, or (not
/// under madsim) connections whose TLS handshake finished
/// ([`crate::tls::Tls::accept`]).
pub enum Incoming {
    Plain(TcpListener),
    #[cfg(not(madsim))]
    Tls(tokio::sync::mpsc::Receiver<crate::tls::TlsConn>),
}

/// Serves RESP on `incoming` until `shutdown` turns true.
pub async fn serve(
    mut incoming: Incoming,
    node: NodeHandle,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let next_id = Arc::new(AtomicU64::new(1));
    let cursors = Arc::new(Cursors::default());
    let open = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let accepted = tokio::select! {
            biased;
            // (The guard `wait_for` returns is not `Send`: drop it inside.)
            _ = async { drop(shutdown.wait_for(|s| *s).await) } => return Ok(()),
            accepted = accept(&mut incoming) => accepted,
        };
        let permit = Arc::clone(&open).try_acquire_owned().ok();
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let (node, cursors, rx) = (node.clone(), cursors.clone(), shutdown.clone());
        match (accepted, permit) {
            (Accepted::Plain(stream, _), None) => {
                tokio::spawn(refuse(stream));
            }
            #[cfg(not(madsim))]
            (Accepted::Tls(conn), None) => {
                tokio::spawn(refuse(*conn));
            }
            (Accepted::Plain(stream, peer), Some(permit)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, peer, node, settings, id, cursors, rx, permit);
            }
            #[cfg(not(madsim))]
            (Accepted::Tls(conn), Some(permit)) => {
                let peer = conn.remote;
                spawn_connection(*conn, peer, node, settings, id, cursors, rx, permit);
            }
        }
    }
}

enum Accepted {
    Plain(TcpStream, std::net::SocketAddr),
    #[cfg(not(madsim))]
    Tls(Box<crate::tls::TlsConn>),
}

async fn accept(incoming: &mut Incoming) -> Accepted {
    match incoming {
        Incoming::Plain(listener) => loop {
            match listener.accept().await {
                Ok((stream, peer)) => return Accepted::Plain(stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: the listener
                    // itself is fine; try again shortly.
                    tracing::warn!("RESP: cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        },
        #[cfg(not(madsim))]
        Incoming::Tls(accepted) => match accepted.recv().await {
            Some(conn) => Accepted::Tls(Box::new(conn)),
            // The accept task lives as long as its queue.
            None => std::future::pending().await,
        },
    }
}

/// A connection over `Settings::max_connections`: Redis's words, then
/// closed.
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S) {
    let write = async {
        stream
            .write_all(b"-ERR max number of clients reached\r\n")
            .await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

#[allow(clippy::too_many_arguments)]
fn spawn_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    node: NodeHandle,
    settings: Settings,
    id: u64,
    cursors: Arc<Cursors>,
    mut shutdown: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _open = permit;
        tokio::select! {
            biased;
            _ = async { drop(shutdown.wait_for(|s| *s).await) } => {}
            r = connection(stream, node, settings, id, cursors) => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "RESP connection ended: {e}");
                }
            }
        }
    });
}

/// Runs `batch` (see the module doc for what runs at once) and encodes the
/// replies in order; stops at a `QUIT`.
async fn run_batch(
    node: &NodeHandle,
    session: &mut Session,
    subs: &mut Subscriptions,
    batch: Vec<Vec<Bytes>>,
    output: &mut BytesMut,
) -> After {
    let mut rest = batch.as_slice();
    while let Some(first) = rest.first() {
        // A RESP2 connection with subscriptions takes only a few commands
        // (their replies share the stream with the messages), as in Redis.
        // (The name is lowered only here: the usual command pays nothing.)
        let subscribed = subs.count() > 0 && session.proto == Protocol::Resp2;
        if subscribed || pubsub::is_pubsub(&first[0]) {
            let name = String::from_utf8_lossy(&first[0]).to_ascii_lowercase();
            if subscribed && !pubsub::allowed_while_subscribed(&name) {
                Reply::err(format!(
                    "Can't execute '{}': only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT \
                     are allowed in this context",
                    name.chars().take(64).collect::<String>()
                ))
                .encode(session.proto, output);
            } else if let Some(reply) = pubsub::is_pubsub(name.as_bytes())
                .then(|| access::refusal(node, session, &name, first))
                .flatten()
            {
                reply.encode(session.proto, output);
            } else if pubsub::is_pubsub(name.as_bytes()) {
                for reply in pubsub::execute(node, session, subs, &name, first).await {
                    reply.encode(session.proto, output);
                }
            } else if name == "ping" && first.len() <= 2 {
                pubsub::subscribed_ping(first).encode(session.proto, output);
            } else {
                let (reply, after) = commands::execute(node, session, first.clone()).await;
                reply.encode(session.proto, output);
                if after == After::Close {
                    return After::Close;
                }
            }
            rest = &rest[1..];
            continue;
        }
        let run = rest
            .iter()
            .take_while(|args| commands::is_single_key(args))
            .count();
        if run > 1 {
            for reply in run_concurrently(node, session, &rest[..run]).await {
                reply.encode(session.proto, output);
            }
            rest = &rest[run..];
            continue;
        }
        let (reply, after) = commands::execute(node, session, first.clone()).await;
        reply.encode(session.proto, output);
        if after == After::Close {
            return After::Close;
        }
        rest = &rest[1..];
    }
    After::Continue
}

/// Single-key commands at once, each key's in order; replies in the order
/// of `run`. They change no connection state, so each runs on a copy.
async fn run_concurrently(node: &NodeHandle, session: &Session, run: &[Vec<Bytes>]) -> Vec<Reply> {
    let mut by_key: Vec<(&Bytes, Vec<usize>)> = Vec::new();
    let mut key_index: HashMap<&Bytes, usize> = HashMap::new();
    for (i, args) in run.iter().enumerate() {
        let slot = *key_index.entry(&args[1]).or_insert_with(|| {
            by_key.push((&args[1], Vec::new()));
            by_key.len() - 1
        });
        by_key[slot].1.push(i);
    }
    let sequences = by_key.into_iter().map(|(_, indices)| {
        let mut session = session.clone();
        async move {
            let mut replies = Vec::with_capacity(indices.len());
            for i in indices {
                let (reply, _) = commands::execute(node, &mut session, run[i].clone()).await;
                replies.push((i, reply));
            }
            replies
        }
    });
    let mut replies: Vec<Option<Reply>> = (0..run.len()).map(|_| None).collect();
    for (i, reply) in futures::future::join_all(sequences)
        .await
        .into_iter()
        .flatten()
    {
        replies[i] = Some(reply);
    }
    replies
        .into_iter()
        .map(|r| r.expect("every command of the run was answered"))
        .collect()
}

/// One client connection, until it closes, says `QUIT` or breaks framing.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    node: NodeHandle,
    settings: Settings,
    id: u64,
    cursors: Arc<Cursors>,
) -> std::io::Result<()> {
    let limits = settings.limits;
    let mut session = Session::new(id, settings.partition_count, cursors);
    session.cluster_aware = settings.redirects == RespRedirects::Always;
    let mut subs = Subscriptions::default();
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::new();
    // When the command now arriving must have arrived (see
    // `Settings::command_timeout`).
    let mut deadline = tokio::time::Instant::now() + settings.command_timeout;
    loop {
        // The whole commands buffered, in order, a window at a time.
        let mut batch: Vec<Vec<Bytes>> = Vec::new();
        let mut broken = None;
        while batch.len() < PIPELINE_WINDOW {
            match parse_command(&input, &limits) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Command { args, consumed }) => {
                    let frame = input.split_to(consumed).freeze();
                    if !args.is_empty() {
                        batch.push(args.into_iter().map(|r| frame.slice(r)).collect());
                    }
                }
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        if !batch.is_empty() {
            deadline = tokio::time::Instant::now() + settings.command_timeout;
        }
        let full = batch.len() == PIPELINE_WINDOW;
        let after = run_batch(&node, &mut session, &mut subs, batch, &mut output).await;
        if after == After::Close {
            stream.write_all(&output).await?;
            return Ok(());
        }
        if let Some(e) = broken {
            Reply::err(&e).encode(session.proto, &mut output);
            stream.write_all(&output).await?;
            return Ok(());
        }
        if full {
            // More may be buffered: answer this window first.
            stream.write_all(&output).await?;
            output.clear();
            continue;
        }
        // Messages already waiting go out with the replies (after them: a
        // subscription's confirmation comes before its messages).
        let mut goes_on = true;
        while goes_on && output.len() < MESSAGE_WRITE {
            match subs.try_next() {
                Some(d) => goes_on = pubsub::encode(&d, session.proto, &mut output),
                None => break,
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if !goes_on {
            return Ok(());
        }
        if input.is_empty() {
            deadline = tokio::time::Instant::now() + settings.command_timeout;
        }
        input.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            read = stream.read_buf(&mut input) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep_until(deadline), if !input.is_empty() => {
                Reply::err(format!(
                    "timed out waiting for the rest of a command ({} s); closing the connection",
                    settings.command_timeout.as_secs()
                ))
                .encode(session.proto, &mut output);
                stream.write_all(&output).await?;
                return Ok(());
            }
            delivery = subs.next(), if subs.count() > 0 => {
                // A token revoked meanwhile (or authentication turned on)
                // ends the subscriptions with the connection.
                if let Err(refused) = access::principal(&node, &session) {
                    refused.encode(session.proto, &mut output);
                    stream.write_all(&output).await?;
                    return Ok(());
                }
                let goes_on = write_deliveries(&mut stream, &mut subs, delivery, session.proto).await?;
                if !goes_on {
                    return Ok(());
                }
            }
        }
    }
}

/// Bytes of messages written at once, about.
const MESSAGE_WRITE: usize = 64 << 10;

/// Writes `first` and the messages queued behind it; whether the
/// connection goes on.
async fn write_deliveries<S: AsyncWrite + Unpin>(
    stream: &mut S,
    subs: &mut Subscriptions,
    first: Delivery,
    proto: Protocol,
) -> std::io::Result<bool> {
    let mut out = BytesMut::new();
    let mut goes_on = pubsub::encode(&first, proto, &mut out);
    while goes_on && out.len() < MESSAGE_WRITE {
        match subs.try_next() {
            Some(d) => goes_on = pubsub::encode(&d, proto, &mut out),
            None => break,
        }
    }
    stream.write_all(&out).await?;
    Ok(goes_on)
}
