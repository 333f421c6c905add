//! Keyspace notifications: Redis's `SUBSCRIBE` / `PSUBSCRIBE` to the
//! `__keyspace@0__:KEY` and `__keyevent@0__:EVENT` channels, served by
//! ringkv's watches, so a Redis client learns of changes as it would from
//! Redis (`notify-keyspace-events`).
//!
//! Each subscription is a [`Watcher`] of the keys its channel or pattern
//! can name (a key, the literal prefix of a pattern, or every key) and a
//! task that turns each change into the messages Redis would publish:
//! `__keyspace@0__:KEY` with the event's name, `__keyevent@0__:EVENT` with
//! the key. Events are named `set` (any write: SET, INCR, APPEND, EXPIRE,
//! ...: ringkv's changes say that a key was written, not by which command),
//! `del` and `expired`.
//!
//! What ringkv promises beyond Redis: notifications are cluster-wide from
//! any node (Redis Cluster publishes a key's events only on the node that
//! holds it), and a subscriber misses nothing while it stays connected:
//! each change of a watched key arrives once, in its partition's revision
//! order, across leader changes. A subscriber too slow for the watch
//! history a node keeps (10,000 changes or 4 MiB per partition) is told so
//! with an error and disconnected, as Redis disconnects a subscriber over
//! its output-buffer limit. Events of a key arrive in order; events of keys
//! in different partitions may interleave in any order.
//!
//! Channels that are not keyspace channels of database 0 may be subscribed
//! to but never carry a message: ringkv has no `PUBLISH`.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use ringkv_core::watch::{Change, ChangeKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::commands::Session;
use super::keyspace::{glob_match, literal_prefix};
use super::reply::{Protocol, Reply};
use crate::handle::NodeHandle;
use crate::watch::{Start, Target, WatchError, Watcher};

const KEYSPACE: &[u8] = b"__keyspace@0__:";
const KEYEVENT: &[u8] = b"__keyevent@0__:";

/// Channels and patterns one connection may follow at once: each is a
/// watch on the node (and a relay per partition it holds no replica of).
pub const MAX_SUBSCRIPTIONS: usize = 1_000;

/// Messages waiting to be written to one connection, at most. A subscriber
/// that reads slower than changes arrive backs up its watches, and then
/// falls behind their history.
const QUEUE: usize = 4_096;

/// How many times a subscription re-attaches its watch (from where it
/// was) after the watch failed, before it gives up.
const REATTACH_ATTEMPTS: u32 = 10;

/// What the subscription tasks hand the connection.
#[derive(Debug)]
pub enum Delivery {
    /// A message (a push reply) to write, of the subscription to `source`.
    Message {
        kind: Kind,
        source: Bytes,
        reply: Reply,
    },
    /// A subscription cannot go on without a gap: say why, then close.
    Lost(String),
}

/// Whether a subscription names one channel or a glob pattern of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Channel,
    Pattern,
}

/// The subscriptions of one connection.
pub struct Subscriptions {
    channels: BTreeMap<Bytes, JoinHandle<()>>,
    patterns: BTreeMap<Bytes, JoinHandle<()>>,
    tx: mpsc::Sender<Delivery>,
    rx: mpsc::Receiver<Delivery>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Subscriptions {
            channels: BTreeMap::new(),
            patterns: BTreeMap::new(),
            tx,
            rx,
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for task in self.channels.values().chain(self.patterns.values()) {
            task.abort();
        }
    }
}

impl Subscriptions {
    /// Channels and patterns followed.
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// The next message for the client (pending while there is none).
    pub async fn next(&mut self) -> Delivery {
        loop {
            // `self.tx` keeps the channel open: `None` cannot come.
            let Some(d) = self.rx.recv().await else {
                return Delivery::Lost("the subscriptions ended".into());
            };
            if self.current(&d) {
                return d;
            }
        }
    }

    /// A message already waiting, if any.
    pub fn try_next(&mut self) -> Option<Delivery> {
        while let Ok(d) = self.rx.try_recv() {
            if self.current(&d) {
                return Some(d);
            }
        }
        None
    }

    /// Whether `d` is of a subscription still held (one left since it was
    /// queued says nothing more).
    fn current(&mut self, d: &Delivery) -> bool {
        match d {
            Delivery::Message { kind, source, .. } => self.of(*kind).contains_key(source),
            Delivery::Lost(_) => true,
        }
    }

    fn of(&mut self, kind: Kind) -> &mut BTreeMap<Bytes, JoinHandle<()>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
        }
    }
}

/// Whether `name` (any case) is a command of this module.
pub fn is_pubsub(name: &[u8]) -> bool {
    [
        "subscribe",
        "psubscribe",
        "unsubscribe",
        "punsubscribe",
        "publish",
        "pubsub",
    ]
    .iter()
    .any(|c| name.eq_ignore_ascii_case(c.as_bytes()))
}

/// Whether a RESP2 connection with subscriptions may run `name`: Redis
/// lets it run only these (its replies share the stream with messages).
pub fn allowed_while_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "ping" | "quit" | "reset"
    )
}

/// Runs a command of this module: its replies (one per channel or pattern
/// for the subscribe commands, as in Redis).
pub async fn execute(
    node: &NodeHandle,
    session: &Session,
    subs: &mut Subscriptions,
    name: &str,
    args: &[Bytes],
) -> Vec<Reply> {
    match name {
        "subscribe" | "psubscribe" if args.len() >= 2 => {
            let kind = if name == "subscribe" {
                Kind::Channel
            } else {
                Kind::Pattern
            };
            let mut replies = Vec::with_capacity(args.len() - 1);
            for source in &args[1..] {
                replies.push(subscribe(node, session, subs, kind, source.clone()).await);
            }
            replies
        }
        "unsubscribe" | "punsubscribe" => {
            let kind = if name == "unsubscribe" {
                Kind::Channel
            } else {
                Kind::Pattern
            };
            let names: Vec<Bytes> = if args.len() > 1 {
                args[1..].to_vec()
            } else {
                subs.of(kind).keys().cloned().collect()
            };
            if names.is_empty() {
                // Nothing to leave: Redis still answers once, with a nil.
                return vec![confirmation(name, Reply::Null, subs.count())];
            }
            names
                .into_iter()
                .map(|n| {
                    if let Some(task) = subs.of(kind).remove(&n) {
                        task.abort();
                    }
                    confirmation(name, Reply::Bulk(n), subs.count())
                })
                .collect()
        }
        "publish" => vec![Reply::err(
            "PUBLISH is not supported: ringkv's channels carry keyspace notifications \
             (__keyspace@0__:KEY, __keyevent@0__:EVENT) only",
        )],
        "pubsub" => vec![Reply::err(
            "PUBSUB is not supported: a node's subscriptions are its own connections' \
             keyspace watches",
        )],
        _ => vec![Reply::err(format!(
            "wrong number of arguments for '{name}' command"
        ))],
    }
}

/// The reply to PING on a RESP2 connection with subscriptions: a message-
/// shaped array, as Redis sends there.
pub fn subscribed_ping(args: &[Bytes]) -> Reply {
    let payload = args.get(1).cloned().unwrap_or_default();
    Reply::Push(vec![Reply::bulk("pong"), Reply::Bulk(payload)])
}

/// `[subscribe|psubscribe|..., name, count]`.
fn confirmation(command: &str, name: Reply, count: usize) -> Reply {
    Reply::Push(vec![
        Reply::Bulk(Bytes::copy_from_slice(command.as_bytes())),
        name,
        Reply::Integer(i64::try_from(count).unwrap_or(i64::MAX)),
    ])
}

async fn subscribe(
    node: &NodeHandle,
    session: &Session,
    subs: &mut Subscriptions,
    kind: Kind,
    source: Bytes,
) -> Reply {
    let command = match kind {
        Kind::Channel => "subscribe",
        Kind::Pattern => "psubscribe",
    };
    if subs.of(kind).contains_key(&source) {
        return confirmation(command, Reply::Bulk(source), subs.count());
    }
    if subs.count() >= MAX_SUBSCRIPTIONS {
        return Reply::err(format!(
            "a connection follows at most {MAX_SUBSCRIPTIONS} channels and patterns"
        ));
    }
    let task = match watched(kind, &source) {
        // Not a keyspace channel: followed, never published to.
        None => tokio::spawn(std::future::pending::<()>()),
        Some(target) => {
            if let Some(reply) = super::access::refuse_target(node, session, &target) {
                return reply;
            }
            let watcher =
                match Watcher::attach(node, session.partition_count, target.clone(), Start::Now)
                    .await
                {
                    Ok(w) => w,
                    Err(e) => {
                        return Reply::err(format!(
                            "cannot follow {}: {e}",
                            String::from_utf8_lossy(&source[..source.len().min(64)])
                        ));
                    }
                };
            tokio::spawn(follow(
                node.clone(),
                session.partition_count,
                Subscription {
                    kind,
                    source: source.clone(),
                    target,
                },
                watcher,
                subs.tx.clone(),
            ))
        }
    };
    subs.of(kind).insert(source.clone(), task);
    confirmation(command, Reply::Bulk(source), subs.count())
}

/// One subscription: what it was asked for and the keys it watches.
struct Subscription {
    kind: Kind,
    source: Bytes,
    target: Target,
}

/// The keys whose changes `source` can name, or `None` when it names no
/// keyspace channel of database 0.
fn watched(kind: Kind, source: &[u8]) -> Option<Target> {
    match kind {
        Kind::Channel => {
            if let Some(key) = source.strip_prefix(KEYSPACE) {
                Some(Target::Key(Bytes::copy_from_slice(key)))
            } else if let Some(event) = source.strip_prefix(KEYEVENT) {
                [ChangeKind::Put, ChangeKind::Delete, ChangeKind::Expire]
                    .iter()
                    .any(|k| event_name(*k).as_bytes() == event)
                    .then(|| Target::Prefix(Bytes::new()))
            } else {
                None
            }
        }
        Kind::Pattern => {
            let literal = literal_prefix(source);
            if let Some(prefix) = literal.strip_prefix(KEYSPACE) {
                // Keyspace channels whose key starts with the rest.
                Some(Target::Prefix(Bytes::copy_from_slice(prefix)))
            } else if KEYSPACE.starts_with(&literal)
                || KEYEVENT.starts_with(&literal)
                || literal.starts_with(KEYEVENT)
            {
                // It may match channels of any key (`__key*`, `*`, or
                // event channels, which carry every key).
                Some(Target::Prefix(Bytes::new()))
            } else {
                None
            }
        }
    }
}

/// Redis's name of an event of kind `kind`.
fn event_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Put => "set",
        ChangeKind::Delete => "del",
        ChangeKind::Expire => "expired",
    }
}

/// The messages `change` makes for `sub`: of its two channels (the key's
/// keyspace channel, the event's keyevent channel) those the subscription
/// names.
fn messages(sub: &Subscription, change: &Change) -> Vec<Reply> {
    let event = event_name(change.kind);
    let mut keyspace = BytesMut::with_capacity(KEYSPACE.len() + change.key.len());
    keyspace.put_slice(KEYSPACE);
    keyspace.put_slice(&change.key);
    let mut keyevent = BytesMut::with_capacity(KEYEVENT.len() + event.len());
    keyevent.put_slice(KEYEVENT);
    keyevent.put_slice(event.as_bytes());
    let candidates = [
        (keyspace.freeze(), Bytes::from_static(event.as_bytes())),
        (keyevent.freeze(), change.key.clone()),
    ];
    candidates
        .into_iter()
        .filter_map(|(channel, payload)| match sub.kind {
            Kind::Channel => (channel == sub.source).then(|| {
                Reply::Push(vec![
                    Reply::bulk("message"),
                    Reply::Bulk(channel),
                    Reply::Bulk(payload),
                ])
            }),
            Kind::Pattern => glob_match(&sub.source, &channel).then(|| {
                Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    Reply::Bulk(sub.source.clone()),
                    Reply::Bulk(channel),
                    Reply::Bulk(payload),
                ])
            }),
        })
        .collect()
}

/// Hands the connection the messages of each change `watcher` sees, until
/// the connection is gone. A watch that fails (its relay's replica went
/// away, the partition moved off this node) is attached again from its
/// cursor, so nothing is skipped; one that fell behind the history ends
/// the subscription, and the connection, with the reason.
async fn follow(
    node: NodeHandle,
    partition_count: u32,
    sub: Subscription,
    mut watcher: Watcher,
    tx: mpsc::Sender<Delivery>,
) {
    let mut failures = 0;
    loop {
        match watcher.next().await {
            Ok(batch) => {
                failures = 0;
                for (_, change) in &batch.changes {
                    for reply in messages(&sub, change) {
                        let message = Delivery::Message {
                            kind: sub.kind,
                            source: sub.source.clone(),
                            reply,
                        };
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e @ (WatchError::Compacted { .. } | WatchError::Stopping)) => {
                let _ = tx.send(Delivery::Lost(lost(&sub, &e))).await;
                return;
            }
            Err(e) => {
                failures += 1;
                let cursor = watcher.cursor().clone();
                let again = Watcher::attach(
                    &node,
                    partition_count,
                    sub.target.clone(),
                    Start::Cursor(cursor),
                )
                .await;
                match again {
                    Ok(w) => watcher = w,
                    Err(e2) if failures >= REATTACH_ATTEMPTS => {
                        let _ = tx.send(Delivery::Lost(lost(&sub, &e2))).await;
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("RESP subscription: watch failed ({e}); attaching again");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
}

fn lost(sub: &Subscription, e: &WatchError) -> String {
    format!(
        "notifications of {} stopped: {e}; the connection is closed",
        String::from_utf8_lossy(&sub.source[..sub.source.len().min(64)])
    )
}

/// Writes `delivery` for a client speaking `proto`; whether the
/// connection goes on.
pub fn encode(delivery: &Delivery, proto: Protocol, out: &mut BytesMut) -> bool {
    match delivery {
        Delivery::Message { reply, .. } => {
            reply.encode(proto, out);
            true
        }
        Delivery::Lost(why) => {
            Reply::err(why).encode(proto, out);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, key: &str) -> Change {
        Change {
            revision: 7,
            kind,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::new(),
            version: 0,
        }
    }

    fn sub(kind: Kind, source: &str) -> Subscription {
        let target = watched(kind, source.as_bytes()).expect("a keyspace subscription");
        Subscription {
            kind,
            source: Bytes::copy_from_slice(source.as_bytes()),
            target,
        }
    }

    fn push(items: &[&str]) -> Reply {
        Reply::Push(
            items
                .iter()
                .map(|s| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes())))
                .collect(),
        )
    }

    #[test]
    fn channels_and_patterns_watch_the_keys_they_can_name() {
        let key = |k: &str| Some(Target::Key(Bytes::copy_from_slice(k.as_bytes())));
        let prefix = |p: &str| Some(Target::Prefix(Bytes::copy_from_slice(p.as_bytes())));
        assert_eq!(
            watched(Kind::Channel, b"__keyspace@0__:user:1"),
            key("user:1")
        );
        assert_eq!(watched(Kind::Channel, b"__keyevent@0__:del"), prefix(""));
        assert_eq!(watched(Kind::Channel, b"__keyevent@0__:incrby"), None);
        assert_eq!(watched(Kind::Channel, b"__keyspace@1__:a"), None);
        assert_eq!(watched(Kind::Channel, b"news"), None);
        assert_eq!(
            watched(Kind::Pattern, b"__keyspace@0__:user:*"),
            prefix("user:")
        );
        assert_eq!(watched(Kind::Pattern, b"__keyspace@0__:*"), prefix(""));
        assert_eq!(watched(Kind::Pattern, b"__key*__:*"), prefix(""));
        assert_eq!(watched(Kind::Pattern, b"*"), prefix(""));
        assert_eq!(watched(Kind::Pattern, b"__keyevent@0__:*"), prefix(""));
        assert_eq!(watched(Kind::Pattern, b"news.*"), None);
    }

    #[test]
    fn a_change_is_published_on_the_channels_redis_names() {
        let put = change(ChangeKind::Put, "user:1");
        let keyspace = sub(Kind::Channel, "__keyspace@0__:user:1");
        assert_eq!(
            messages(&keyspace, &put),
            vec![push(&["message", "__keyspace@0__:user:1", "set"])]
        );
        let expired = sub(Kind::Channel, "__keyevent@0__:expired");
        assert_eq!(
            messages(&expired, &change(ChangeKind::Expire, "a")),
            vec![push(&["message", "__keyevent@0__:expired", "a"])]
        );
        // An event channel carries only its event.
        assert!(messages(&sub(Kind::Channel, "__keyevent@0__:del"), &put).is_empty());
        // A pattern that matches both channels of a change gets both.
        let both = messages(
            &sub(Kind::Pattern, "__key*@0__:*"),
            &change(ChangeKind::Delete, "k"),
        );
        assert_eq!(
            both,
            vec![
                push(&["pmessage", "__key*@0__:*", "__keyspace@0__:k", "del"]),
                push(&["pmessage", "__key*@0__:*", "__keyevent@0__:del", "k"]),
            ]
        );
        // The pattern's glob is applied, not only its literal prefix.
        assert!(
            messages(
                &sub(Kind::Pattern, "__keyspace@0__:user:?"),
                &change(ChangeKind::Put, "user:10")
            )
            .is_empty()
        );
    }
}
