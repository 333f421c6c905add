//! What each Redis command does on ringkv: its arguments checked as Redis
//! checks them, turned into the core's requests, the answer (or the
//! error, from the one table in [`crate::api::errors`]) turned into a
//! reply.
//!
//! Built: connection commands (`PING ECHO HELLO SELECT QUIT CLIENT COMMAND
//! INFO CONFIG GET READONLY READWRITE`), strings (`GET SET` with `NX`/`XX`/
//! `GET`, `SETNX MGET MSET DEL UNLINK EXISTS STRLEN TYPE`), the
//! read-modify-writes (`INCR DECR INCRBY DECRBY APPEND GETSET GETDEL`), each
//! one atomic command of the replicated state machine, `DBSIZE` (a count
//! per partition), and `CLUSTER` (`SLOTS SHARDS NODES INFO KEYSLOT MYID`,
//! see [`super::cluster`]), and expiry (`SET ... EX`, `EXPIRE`, `TTL`...,
//! see [`super::expiry`]). Keyspace notifications (`SUBSCRIBE`,
//! `PSUBSCRIBE`) are [`super::pubsub`]'s.
//!
//! `MSET` writes the keys of each partition as one atomic entry, so keys
//! of one slot are written all or nothing, as in Redis; across partitions
//! (a plain connection only: a cluster-aware one gets `-CROSSSLOT`) one
//! partition after another, and a failure says how many were written.
//! The other multi-key commands run key by key, each key linearizable on
//! its own: `MGET` reads each key, `DEL` and `EXISTS` count key by key.

use std::sync::Arc;

use bytes::Bytes;
use ringkv_core::kv::{KeyValue, Precondition, parse_integer};
use ringkv_core::node::{ClientError, ClientRequest, ClientResponse, Consistency, Expiry};
use ringkv_core::ring::{key_slot, partition_of_slot};

use super::access;
use super::cluster::{self, Topology};
use super::expiry;
use super::keyspace::{self, Cursors};
use super::reply::{Protocol, Reply};
use crate::api::errors;
use crate::handle::NodeHandle;

/// What a connection carries from one command to the next.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: u64,
    pub proto: Protocol,
    pub name: Option<Bytes>,
    /// `READONLY`: reads go to the leader's lease (no quorum round).
    pub readonly: bool,
    /// Commands on a key another node leads are answered `-MOVED` (see
    /// [`crate::config::RespRedirects`]), and multi-key commands must
    /// stay in one slot (`-CROSSSLOT`).
    pub cluster_aware: bool,
    /// The cluster's partition count (slot ranges).
    pub partition_count: u32,
    /// Where `SCAN` cursors go on (shared by the node's connections).
    pub cursors: Arc<Cursors>,
    /// Who the token `AUTH` (or `HELLO ... AUTH`) presented is; every
    /// command asks whether it still may act (see [`super::access`]).
    pub principal: Option<crate::auth::Principal>,
}

impl Session {
    pub fn new(id: u64, partition_count: u32, cursors: Arc<Cursors>) -> Self {
        Session {
            id,
            proto: Protocol::Resp2,
            name: None,
            readonly: false,
            cluster_aware: false,
            partition_count,
            cursors,
            principal: None,
        }
    }
}

/// What the connection does after the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Continue,
    /// `QUIT`: close once the reply is sent.
    Close,
}

/// Commands this server knows, for `COMMAND COUNT` and `COMMAND`: name,
/// arity (negative: at least), flags, first key, last key, key step.
type CommandSpec = (&'static str, i64, &'static [&'static str], i64, i64, i64);

pub const COMMANDS: &[CommandSpec] = &[
    ("ping", -1, &["fast"], 0, 0, 0),
    ("echo", 2, &["fast"], 0, 0, 0),
    ("hello", -1, &["fast", "no-auth"], 0, 0, 0),
    ("auth", -2, &["fast", "no-auth"], 0, 0, 0),
    ("select", 2, &["fast", "loading"], 0, 0, 0),
    ("quit", -1, &["fast", "no-auth"], 0, 0, 0),
    ("client", -2, &["admin"], 0, 0, 0),
    ("command", -1, &["loading"], 0, 0, 0),
    ("info", -1, &["loading"], 0, 0, 0),
    ("config", -2, &["admin"], 0, 0, 0),
    ("readonly", 1, &["fast"], 0, 0, 0),
    ("readwrite", 1, &["fast"], 0, 0, 0),
    ("cluster", -2, &[], 0, 0, 0),
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("setnx", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("mset", -3, &["write", "denyoom"], 1, -1, 2),
    ("del", -2, &["write"], 1, -1, 1),
    ("unlink", -2, &["write", "fast"], 1, -1, 1),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("strlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("type", 2, &["readonly", "fast"], 1, 1, 1),
    ("incr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("append", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getset", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getdel", 2, &["write", "fast"], 1, 1, 1),
    ("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    ("scan", -2, &["readonly"], 0, 0, 0),
    ("keys", 2, &["readonly"], 0, 0, 0),
    ("setex", 4, &["write", "denyoom"], 1, 1, 1),
    ("psetex", 4, &["write", "denyoom"], 1, 1, 1),
    ("expire", -3, &["write", "fast"], 1, 1, 1),
    ("pexpire", -3, &["write", "fast"], 1, 1, 1),
    ("expireat", -3, &["write", "fast"], 1, 1, 1),
    ("pexpireat", -3, &["write", "fast"], 1, 1, 1),
    ("persist", 2, &["write", "fast"], 1, 1, 1),
    ("ttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("pttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("expiretime", 2, &["readonly", "fast"], 1, 1, 1),
    ("pexpiretime", 2, &["readonly", "fast"], 1, 1, 1),
    ("subscribe", -2, &["pubsub", "loading", "stale"], 0, 0, 0),
    ("psubscribe", -2, &["pubsub", "loading", "stale"], 0, 0, 0),
    ("unsubscribe", -1, &["pubsub", "loading", "stale"], 0, 0, 0),
    ("punsubscribe", -1, &["pubsub", "loading", "stale"], 0, 0, 0),
];

/// Whether `args` is a command on one key that changes no connection
/// state, which a pipeline may run at once with others (see the `resp`
/// module doc).
pub fn is_single_key(args: &[Bytes]) -> bool {
    // The table's commands whose one key is their first argument.
    args.len() >= 2
        && COMMANDS
            .iter()
            .any(|c| c.3 == 1 && c.4 == 1 && args[0].eq_ignore_ascii_case(c.0.as_bytes()))
}

fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// The reply for an error of the core, by the shared error table.
pub fn error_reply(e: &ClientError) -> Reply {
    Reply::Error(format!("{} {e}", errors::kind(e).resp_code))
}

/// The slot of the command's keys, if it has keys; `Err(reply)` if they
/// are in different slots on a cluster-aware connection.
fn command_slot(name: &str, args: &[Bytes]) -> Result<Option<u16>, Reply> {
    let Some(&(_, _, _, first, last, step)) = COMMANDS.iter().find(|c| c.0 == name) else {
        return Ok(None);
    };
    if first <= 0 || args.len() <= first as usize {
        return Ok(None);
    }
    let last = if last < 0 {
        args.len() as i64 + last
    } else {
        last.min(args.len() as i64 - 1)
    };
    let mut slot = None;
    for i in (first..=last).step_by(step.max(1) as usize) {
        let s = key_slot(&args[i as usize]);
        match slot {
            Some(other) if other != s => {
                return Err(Reply::Error(
                    "CROSSSLOT Keys in request don't hash to the same slot".into(),
                ));
            }
            _ => slot = Some(s),
        }
    }
    Ok(slot)
}

/// On a cluster-aware connection, `-MOVED slot host:port` when another
/// node leads the slot's partition (a `READONLY` connection reads from any
/// replica, as from a Redis replica).
fn redirection(node: &NodeHandle, session: &Session, name: &str, args: &[Bytes]) -> Option<Reply> {
    if !session.cluster_aware {
        return None;
    }
    let slot = match command_slot(name, args) {
        Ok(Some(slot)) => slot,
        Ok(None) => return None,
        Err(reply) => return Some(reply),
    };
    let view = node.view();
    let read = COMMANDS
        .iter()
        .any(|c| c.0 == name && c.2.contains(&"readonly"));
    if session.readonly && read && cluster::replicates(&view, slot, session.partition_count) {
        return None;
    }
    cluster::redirect(&view, slot, session.partition_count)
        .map(|to| Reply::Error(format!("MOVED {slot} {to}")))
}

/// Runs one command. `args` is not empty.
pub async fn execute(node: &NodeHandle, session: &mut Session, args: Vec<Bytes>) -> (Reply, After) {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    match name.as_str() {
        "auth" => return (access::auth(node, session, &args), After::Continue),
        // HELLO checks its own AUTH option; QUIT needs nothing.
        "hello" | "quit" => {}
        _ => {
            if let Some(reply) = access::refusal(node, session, &name, &args) {
                return (reply, After::Continue);
            }
        }
    }
    if let Some(reply) = redirection(node, session, &name, &args) {
        return (reply, After::Continue);
    }
    let reply = match name.as_str() {
        "quit" => return (Reply::ok(), After::Close),
        "ping" => match args.len() {
            1 => Reply::Simple("PONG"),
            2 => Reply::Bulk(args[1].clone()),
            _ => wrong_arity(&name),
        },
        "echo" if args.len() == 2 => Reply::Bulk(args[1].clone()),
        "hello" => hello(node, session, &args),
        "select" if args.len() == 2 => match &args[1][..] {
            b"0" => Reply::ok(),
            _ => Reply::err("DB index is out of range (ringkv has one database, 0)"),
        },
        "client" if args.len() >= 2 => client(session, &args),
        "command" => command(&args),
        "info" => info(node),
        "config" if args.len() >= 3 && args[1].eq_ignore_ascii_case(b"get") => {
            config_get(&args[2..])
        }
        // Keyspace notifications are always published (they cost nothing
        // until a client subscribes): clients that turn them on first get
        // the OK they expect.
        "config"
            if args.len() == 4
                && args[1].eq_ignore_ascii_case(b"set")
                && args[2].eq_ignore_ascii_case(b"notify-keyspace-events") =>
        {
            Reply::ok()
        }
        "config" if args.len() >= 2 && !args[1].eq_ignore_ascii_case(b"get") => {
            let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
            Reply::err(format!(
                "CONFIG {} is not supported: ringkv's settings are its flags; CONFIG GET \
                 answers what clients ask",
                sub.chars().take(64).collect::<String>()
            ))
        }
        "readonly" if args.len() == 1 => {
            session.readonly = true;
            Reply::ok()
        }
        "readwrite" if args.len() == 1 => {
            session.readonly = false;
            Reply::ok()
        }
        "cluster" if args.len() >= 2 => cluster(node, session, &args),
        "get" if args.len() == 2 => match get(node, session, args[1].clone()).await {
            Ok(Some(v)) => Reply::Bulk(v),
            Ok(None) => Reply::Null,
            Err(e) => error_reply(&e),
        },
        "set" if args.len() >= 3 => set(node, &args).await,
        "setnx" if args.len() == 3 => {
            match put(
                node,
                args[1].clone(),
                args[2].clone(),
                Precondition::MustNotExist,
                Expiry::Clear,
            )
            .await
            {
                Ok(()) => Reply::Integer(1),
                Err(ClientError::PreconditionFailed { .. }) => Reply::Integer(0),
                Err(e) => error_reply(&e),
            }
        }
        "mget" if args.len() >= 2 => {
            let mut values = Vec::with_capacity(args.len() - 1);
            for key in &args[1..] {
                match get(node, session, key.clone()).await {
                    Ok(Some(v)) => values.push(Reply::Bulk(v)),
                    Ok(None) => values.push(Reply::Null),
                    Err(e) => return (error_reply(&e), After::Continue),
                }
            }
            Reply::Array(values)
        }
        "mset" if args.len() >= 3 && args.len() % 2 == 1 => {
            match mset(node, session.partition_count, &args[1..]).await {
                Ok(()) => Reply::ok(),
                Err(reply) => reply,
            }
        }
        "del" | "unlink" if args.len() >= 2 => {
            let mut deleted = 0;
            for key in &args[1..] {
                match node.request(ClientRequest::delete(key.clone())).await {
                    Ok(_) => deleted += 1,
                    Err(ClientError::NotFound) => {}
                    Err(e) => return (error_reply(&e), After::Continue),
                }
            }
            Reply::Integer(deleted)
        }
        "exists" if args.len() >= 2 => {
            let mut found = 0;
            for key in &args[1..] {
                match get(node, session, key.clone()).await {
                    Ok(Some(_)) => found += 1,
                    Ok(None) => {}
                    Err(e) => return (error_reply(&e), After::Continue),
                }
            }
            Reply::Integer(found)
        }
        "strlen" if args.len() == 2 => match get(node, session, args[1].clone()).await {
            Ok(v) => Reply::Integer(v.map_or(0, |v| v.len() as i64)),
            Err(e) => error_reply(&e),
        },
        "type" if args.len() == 2 => match get(node, session, args[1].clone()).await {
            Ok(Some(_)) => Reply::Simple("string"),
            Ok(None) => Reply::Simple("none"),
            Err(e) => error_reply(&e),
        },
        "incr" if args.len() == 2 => increment(node, args[1].clone(), 1).await,
        "decr" if args.len() == 2 => increment(node, args[1].clone(), -1).await,
        "incrby" | "decrby" if args.len() == 3 => {
            let delta = parse_integer(&args[2]).and_then(|d| match name.as_str() {
                "incrby" => Some(d),
                // DECRBY -9223372036854775808 cannot be negated.
                _ => d.checked_neg(),
            });
            match delta {
                Some(delta) => increment(node, args[1].clone(), delta).await,
                None if name == "decrby" && parse_integer(&args[2]).is_some() => {
                    Reply::err("decrement would overflow")
                }
                None => Reply::err("value is not an integer or out of range"),
            }
        }
        "append" if args.len() == 3 => {
            let req = ClientRequest::Append {
                key: args[1].clone(),
                suffix: args[2].clone(),
            };
            match node.request(req).await {
                Ok(ClientResponse::Appended { len, .. }) => {
                    Reply::Integer(i64::try_from(len).unwrap_or(i64::MAX))
                }
                Ok(other) => unexpected(other),
                Err(e) => error_reply(&e),
            }
        }
        "getset" if args.len() == 3 => {
            put_returning_previous(
                node,
                args[1].clone(),
                args[2].clone(),
                Precondition::None,
                Expiry::Clear,
            )
            .await
        }
        "getdel" if args.len() == 2 => {
            let req = ClientRequest::Delete {
                key: args[1].clone(),
                precondition: Precondition::None,
                return_previous: true,
            };
            match node.request(req).await {
                Ok(ClientResponse::Deleted { previous, .. }) => {
                    previous.map_or(Reply::Null, |kv| Reply::Bulk(kv.value))
                }
                Ok(other) => unexpected(other),
                Err(ClientError::NotFound) => Reply::Null,
                Err(e) => error_reply(&e),
            }
        }
        "dbsize" if args.len() == 1 => dbsize(node, session).await,
        "scan" if args.len() >= 2 => keyspace::scan(node, session, &args).await,
        "keys" if args.len() == 2 => keyspace::keys(node, session, &args[1]).await,
        "setex" | "psetex" if args.len() == 4 => expiry::setex(node, &name, &args).await,
        "expire" | "pexpire" | "expireat" | "pexpireat" if args.len() >= 3 => {
            expiry::expire(node, &name, &args).await
        }
        "persist" if args.len() == 2 => expiry::persist(node, args[1].clone()).await,
        "ttl" | "pttl" | "expiretime" | "pexpiretime" if args.len() == 2 => {
            expiry::ttl(node, session, &name, args[1].clone()).await
        }
        _ if COMMANDS.iter().any(|c| c.0 == name) => wrong_arity(&name),
        _ => unknown(&args),
    };
    (reply, After::Continue)
}

/// Redis's words for a command it does not know.
fn unknown(args: &[Bytes]) -> Reply {
    let shown = |b: &Bytes| {
        let s = String::from_utf8_lossy(b);
        // Errors never echo unbounded client input.
        s.chars().take(128).collect::<String>()
    };
    let rest: Vec<String> = args[1..]
        .iter()
        .take(8)
        .map(|a| format!("'{}'", shown(a)))
        .collect();
    Reply::err(format!(
        "unknown command '{}', with args beginning with: {}",
        shown(&args[0]),
        rest.join(" ")
    ))
}

async fn get(
    node: &NodeHandle,
    session: &Session,
    key: Bytes,
) -> Result<Option<Bytes>, ClientError> {
    Ok(get_kv(node, session, key).await?.map(|kv| kv.value))
}

/// A key with its metadata, read linearizably (under the lease on a
/// `READONLY` connection).
pub async fn get_kv(
    node: &NodeHandle,
    session: &Session,
    key: Bytes,
) -> Result<Option<KeyValue>, ClientError> {
    let consistency = if session.readonly {
        Consistency::Lease
    } else {
        Consistency::Linearizable
    };
    match node
        .request(ClientRequest::Get { key, consistency })
        .await?
    {
        ClientResponse::Value(v) => Ok(v),
        other => Err(ClientError::Internal(format!(
            "unexpected response {other:?}"
        ))),
    }
}

fn unexpected(r: ClientResponse) -> Reply {
    error_reply(&ClientError::Internal(format!("unexpected response {r:?}")))
}

/// MSET: one atomic put-all per partition the keys fall in, partitions in
/// the order of their first key. Keys of one slot (or one partition) are
/// written all or nothing, as Redis writes them; across partitions, a
/// failure leaves the partitions before it written and says so.
async fn mset(node: &NodeHandle, partition_count: u32, args: &[Bytes]) -> Result<(), Reply> {
    let mut parts: Vec<(u32, Vec<(Bytes, Bytes)>)> = Vec::new();
    for pair in args.chunks(2) {
        let p = partition_of_slot(key_slot(&pair[0]), partition_count).0;
        let entry = (pair[0].clone(), pair[1].clone());
        match parts.iter_mut().find(|(q, _)| *q == p) {
            Some((_, pairs)) => pairs.push(entry),
            None => parts.push((p, vec![entry])),
        }
    }
    let count = parts.len();
    for (done, (_, pairs)) in parts.into_iter().enumerate() {
        let first = String::from_utf8_lossy(&pairs[0].0).into_owned();
        if let Err(e) = node.request(ClientRequest::PutAll { pairs }).await {
            let mut reply = format!("{} {e}", errors::kind(&e).resp_code);
            if count > 1 {
                reply.push_str(&format!(
                    " (MSET over {count} partitions writes each partition's keys atomically, \
                     one partition after another: {done} were written before the one of {first:?})"
                ));
            }
            return Err(Reply::Error(reply));
        }
    }
    Ok(())
}

async fn put(
    node: &NodeHandle,
    key: Bytes,
    value: Bytes,
    precondition: Precondition,
    expiry: Expiry,
) -> Result<(), ClientError> {
    let req = ClientRequest::Put {
        key,
        value,
        precondition,
        return_previous: false,
        expiry,
    };
    node.request(req).await.map(|_| ())
}

/// DBSIZE: every partition's key count (on a cluster-aware connection,
/// of the partitions this node is master of), asked at once (each linearizable,
/// or under the lease on a `READONLY` connection), summed. Each count is
/// exact at its own instant; the sum is not one snapshot of the cluster.
async fn dbsize(node: &NodeHandle, session: &Session) -> Reply {
    let consistency = if session.readonly {
        Consistency::Lease
    } else {
        Consistency::Linearizable
    };
    // A cluster-aware connection counts the slots this node is master of,
    // as a Redis Cluster node does (a cluster client sums its masters).
    let only = keyspace::served_partitions(node, session);
    let counts = futures::future::join_all(
        crate::api::scan::partition_keys(session.partition_count)
            .into_iter()
            .enumerate()
            .filter(|(p, _)| {
                only.as_ref()
                    .is_none_or(|only| only.contains(&ringkv_core::PartitionId(*p as u32)))
            })
            .map(|(_, key)| node.request(ClientRequest::CountKeys { key, consistency })),
    )
    .await;
    let mut total: u64 = 0;
    for count in counts {
        match count {
            Ok(ClientResponse::Count(n)) => total += n,
            Ok(other) => return unexpected(other),
            Err(e) => return error_reply(&e),
        }
    }
    Reply::Integer(i64::try_from(total).unwrap_or(i64::MAX))
}

/// INCR and its kin: one increment in the state machine.
async fn increment(node: &NodeHandle, key: Bytes, delta: i64) -> Reply {
    match node.request(ClientRequest::Increment { key, delta }).await {
        Ok(ClientResponse::Incremented { value, .. }) => Reply::Integer(value),
        Ok(other) => unexpected(other),
        Err(e) => error_reply(&e),
    }
}

/// GETSET and SET ... GET: the put and the read of the value it replaced
/// are one step of the state machine.
async fn put_returning_previous(
    node: &NodeHandle,
    key: Bytes,
    value: Bytes,
    precondition: Precondition,
    expiry: Expiry,
) -> Reply {
    let req = ClientRequest::Put {
        key,
        value,
        precondition,
        return_previous: true,
        expiry,
    };
    match node.request(req).await {
        Ok(ClientResponse::Put { previous, .. }) => {
            previous.map_or(Reply::Null, |kv| Reply::Bulk(kv.value))
        }
        Ok(other) => unexpected(other),
        // XX on a missing key: not set, and the old value was nil.
        Err(ClientError::PreconditionFailed {
            current_mod_revision: None,
        }) => Reply::Null,
        Err(e) => error_reply(&e),
    }
}

async fn set(node: &NodeHandle, args: &[Bytes]) -> Reply {
    let mut precondition = Precondition::None;
    let mut return_previous = false;
    let mut expiry: Option<Expiry> = None;
    let mut options = args[3..].iter();
    while let Some(opt) = options.next() {
        let opt = String::from_utf8_lossy(opt).to_ascii_uppercase();
        match (opt.as_str(), precondition) {
            ("NX", Precondition::None | Precondition::MustNotExist) => {
                precondition = Precondition::MustNotExist;
            }
            ("XX", Precondition::None | Precondition::MustExist) => {
                precondition = Precondition::MustExist;
            }
            ("GET", _) => return_previous = true,
            ("EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL", _) if expiry.is_none() => {
                let arg = if opt == "KEEPTTL" {
                    None
                } else {
                    options.next()
                };
                match expiry::set_option(&opt, arg) {
                    Ok(e) => expiry = Some(e),
                    Err(reply) => return reply,
                }
            }
            _ => return Reply::err("syntax error"),
        }
    }
    let expiry = expiry.unwrap_or_default();
    if return_previous {
        if precondition == Precondition::MustNotExist {
            // Redis 7 answers the existing value when NX refuses; a failed
            // precondition here carries no value, and reading it after the
            // refusal would not be the value that refused.
            return Reply::err(
                "SET with both NX and GET is not supported: ringkv cannot answer the value \
                 that made NX refuse in the same step",
            );
        }
        return put_returning_previous(
            node,
            args[1].clone(),
            args[2].clone(),
            precondition,
            expiry,
        )
        .await;
    }
    match put(node, args[1].clone(), args[2].clone(), precondition, expiry).await {
        Ok(()) => Reply::ok(),
        // NX on an existing key, XX on a missing one: nil, as in Redis.
        Err(ClientError::PreconditionFailed { .. }) => Reply::Null,
        Err(e) => error_reply(&e),
    }
}

/// `HELLO [protover [AUTH username token] [SETNAME name]]`: nothing
/// changes unless all of it is valid (a wrong token leaves the protocol
/// as it was, as in Redis).
fn hello(node: &NodeHandle, session: &mut Session, args: &[Bytes]) -> Reply {
    let mut rest = args.iter().skip(1);
    let mut proto = session.proto;
    if let Some(version) = rest.next() {
        proto = match &version[..] {
            b"2" => Protocol::Resp2,
            b"3" => Protocol::Resp3,
            _ => {
                return Reply::Error(
                    "NOPROTO unsupported protocol version (ringkv speaks RESP2 and RESP3)".into(),
                );
            }
        };
    }
    let mut name = None;
    let mut token = None;
    while let Some(opt) = rest.next() {
        if opt.eq_ignore_ascii_case(b"SETNAME") {
            match rest.next() {
                Some(n) => name = Some(n.clone()),
                None => return Reply::err("syntax error in HELLO option 'SETNAME'"),
            }
        } else if opt.eq_ignore_ascii_case(b"AUTH") {
            let (Some(_user), Some(t)) = (rest.next(), rest.next()) else {
                return Reply::err("syntax error in HELLO option 'AUTH'");
            };
            token = Some(t);
        } else {
            return Reply::err(format!(
                "syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&opt[..opt.len().min(64)])
            ));
        }
    }
    // Every option read: now the token, then the rest.
    if let Some(t) = token
        && let Err(reply) = access::hello_auth(node, session, t)
    {
        return reply;
    }
    if let Err(reply) = access::hello_allowed(node, session) {
        return reply;
    }
    session.proto = proto;
    if name.is_some() {
        session.name = name;
    }
    let proto = match session.proto {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    };
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("ringkv")),
        (
            Reply::bulk("version"),
            Reply::bulk(env!("CARGO_PKG_VERSION")),
        ),
        (Reply::bulk("proto"), Reply::Integer(proto)),
        (Reply::bulk("id"), Reply::Integer(session.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("cluster")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (
            Reply::bulk("node"),
            Reply::Integer(node.view().node_id.0 as i64),
        ),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
}

fn client(session: &mut Session, args: &[Bytes]) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    match (sub.as_str(), args.len()) {
        ("SETNAME", 3) => {
            if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                return Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                );
            }
            session.name = (!args[2].is_empty()).then(|| args[2].clone());
            Reply::ok()
        }
        ("GETNAME", 2) => session.name.clone().map_or(Reply::Null, Reply::Bulk),
        ("ID", 2) => Reply::Integer(session.id as i64),
        ("INFO", 2) => {
            let name = session
                .name
                .as_ref()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            let resp = match session.proto {
                Protocol::Resp2 => 2,
                Protocol::Resp3 => 3,
            };
            Reply::bulk(format!(
                "id={} name={name} db=0 resp={resp} readonly={}\n",
                session.id,
                u8::from(session.readonly)
            ))
        }
        // Client libraries announce themselves (redis-py, go-redis): noted
        // nowhere, accepted.
        ("SETINFO", 4) => Reply::ok(),
        ("SETNAME" | "GETNAME" | "ID" | "INFO" | "SETINFO", _) => {
            wrong_arity(&format!("client|{}", sub.to_ascii_lowercase()))
        }
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CLIENT SETNAME, GETNAME, ID, INFO or SETINFO.",
            sub.chars().take(64).collect::<String>()
        )),
    }
}

fn command_info(c: &CommandSpec) -> Reply {
    let (name, arity, flags, first, last, step) = *c;
    Reply::Array(vec![
        Reply::bulk(name),
        Reply::Integer(arity),
        Reply::Array(flags.iter().map(|f| Reply::Simple(f)).collect()),
        Reply::Integer(first),
        Reply::Integer(last),
        Reply::Integer(step),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

fn command(args: &[Bytes]) -> Reply {
    let sub = args
        .get(1)
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
    match sub.as_deref() {
        None => Reply::Array(COMMANDS.iter().map(command_info).collect()),
        Some("COUNT") => Reply::Integer(COMMANDS.len() as i64),
        Some("INFO") => Reply::Array(
            args[2..]
                .iter()
                .map(|n| {
                    let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                    COMMANDS
                        .iter()
                        .find(|c| c.0 == n)
                        .map_or(Reply::Null, command_info)
                })
                .collect(),
        ),
        // No documentation to give: an empty answer is what clients accept.
        Some("DOCS") => Reply::Map(Vec::new()),
        Some(other) => Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND COUNT, INFO or DOCS.",
            other.chars().take(64).collect::<String>()
        )),
    }
}

fn info(node: &NodeHandle) -> Reply {
    let view = node.view();
    Reply::bulk(format!(
        "# Server\r\nredis_version:7.0.0\r\nringkv_version:{}\r\nredis_mode:cluster\r\n\
         ringkv_node:{}\r\n\r\n# Cluster\r\ncluster_enabled:1\r\n\r\n# Keyspace\r\n",
        env!("CARGO_PKG_VERSION"),
        view.node_id
    ))
}

/// `CONFIG GET` of what benchmarks and clients ask: every write is
/// fsync'ed before it is acknowledged (`appendonly yes`, `appendfsync
/// always`), and there are no RDB snapshots to configure (`save ""`).
fn config_get(patterns: &[Bytes]) -> Reply {
    const PARAMS: &[(&str, &str)] = &[
        ("save", ""),
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("databases", "1"),
        // Every class of event, on both kinds of channel (see `pubsub`).
        ("notify-keyspace-events", "AKE"),
    ];
    let mut pairs = Vec::new();
    for p in patterns {
        let p = String::from_utf8_lossy(p).to_ascii_lowercase();
        for (name, value) in PARAMS {
            if (p == "*" || p == *name) && !pairs.iter().any(|(n, _)| n == name) {
                pairs.push((*name, *value));
            }
        }
    }
    Reply::Map(
        pairs
            .into_iter()
            .map(|(n, v)| (Reply::bulk(n), Reply::bulk(v)))
            .collect(),
    )
}

fn cluster(node: &NodeHandle, session: &mut Session, args: &[Bytes]) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    let topology = || Topology::of(&node.view(), session.partition_count);
    match (sub.as_str(), args.len()) {
        ("KEYSLOT", 3) => Reply::Integer(i64::from(key_slot(&args[2]))),
        // Redis node ids are 40 hex characters; ringkv's is its number.
        ("MYID", 2) => Reply::bulk(cluster::redis_id(node.view().node_id)),
        // Asking for the topology is what a cluster-aware client does
        // first: from now on it is redirected to leaders.
        ("SLOTS", 2) => {
            session.cluster_aware = true;
            topology().slots_reply()
        }
        ("SHARDS", 2) => {
            session.cluster_aware = true;
            topology().shards_reply()
        }
        ("NODES", 2) => {
            session.cluster_aware = true;
            Reply::bulk(topology().nodes_text())
        }
        ("INFO", 2) => Reply::bulk(topology().info_text()),
        ("KEYSLOT" | "MYID" | "SLOTS" | "SHARDS" | "NODES" | "INFO", _) => {
            wrong_arity(&format!("cluster|{}", sub.to_ascii_lowercase()))
        }
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CLUSTER SLOTS, SHARDS, NODES, INFO, KEYSLOT or MYID.",
            sub.chars().take(64).collect::<String>()
        )),
    }
}
