//! Watches on this node: the [`WatchHub`] holds each local replica's recent
//! changes (a [`History`] per partition, fed by the driver from the core's
//! [`Feed`]), and a [`Watcher`] follows a key or a prefix through it for
//! one client stream (REST server-sent events, gRPC `Watch`).
//!
//! A watch is served from this node's replicas: every replica applies the
//! same committed entries, so a follower's changes are the partition's
//! changes, and a watch goes on unchanged when leadership moves. A watcher
//! keeps, per partition it watches, the revision it has seen everything up
//! to; together they are its [`Cursor`], which a client hands back (to any
//! node) to resume without loss. A cursor older than what a replica holds
//! is refused as compacted, never answered with a gap.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use ringkv_core::ring::partition_of;
use ringkv_core::watch::{Change, ChangeKind, Compacted, Feed, History, HistoryLimits};
use ringkv_core::{NodeId, PartitionId};
use ringkv_proto::v1 as pb;
use ringkv_proto::v1::kv_client::KvClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::address::PeerAddr;
use crate::api::errors::CODE_METADATA;
use crate::api::scan::KeyRange;
use crate::handle::NodeHandle;
use crate::transport::Dialer;

/// Changes a watcher takes from one partition per wake-up (whole
/// revisions: a little more when the last one changed many keys).
const MAX_CHANGES_PER_READ: usize = 1_000;

/// Every local replica's recent changes.
pub struct WatchHub {
    histories: Mutex<HashMap<PartitionId, History>>,
    limits: HistoryLimits,
    /// Bumped after each batch of changes lands: watchers wait on it.
    bumps: watch::Sender<u64>,
}

impl WatchHub {
    pub fn new(limits: HistoryLimits) -> Self {
        WatchHub {
            histories: Mutex::new(HashMap::new()),
            limits,
            bumps: watch::channel(0).0,
        }
    }

    /// Takes what the core fed (in its order) and wakes the watchers.
    pub fn feed(&self, items: Vec<(PartitionId, Feed)>) {
        if items.is_empty() {
            return;
        }
        {
            let mut histories = self
                .histories
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (p, item) in items {
                match item {
                    Feed::Reset { floor } => {
                        histories.insert(p, History::new(floor, self.limits));
                    }
                    Feed::Changes(changes) => match histories.get_mut(&p) {
                        Some(h) => h.push(changes),
                        None => panic!(
                            "watch hub: changes of partition {p} before its replica started; the core feeds a reset first"
                        ),
                    },
                    Feed::Gone => {
                        histories.remove(&p);
                    }
                }
            }
        }
        self.bumps.send_modify(|n| *n += 1);
    }

    fn read(
        &self,
        p: PartitionId,
        after: u64,
        wanted: impl FnMut(&Change) -> bool,
    ) -> Result<(Vec<Change>, u64), WatchError> {
        let histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let h = histories
            .get(&p)
            .ok_or(WatchError::NotHere { partition: p })?;
        h.read(after, MAX_CHANGES_PER_READ, wanted)
            .map_err(|c| WatchError::Compacted {
                partition: p,
                compacted: c,
            })
    }

    /// Whether the changes after `after` can be served from here.
    fn check(&self, p: PartitionId, after: u64) -> Result<(), WatchError> {
        self.read(p, after, |_| false).map(|_| ())
    }

    fn head(&self, p: PartitionId) -> Result<u64, WatchError> {
        let histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        histories
            .get(&p)
            .map(History::head)
            .ok_or(WatchError::NotHere { partition: p })
    }
}

/// What a watch follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Key(Bytes),
    Prefix(Bytes),
}

impl Target {
    fn to_proto(&self) -> pb::watch_request::Target {
        match self {
            Target::Key(k) => pb::watch_request::Target::Key(k.clone()),
            Target::Prefix(p) => pb::watch_request::Target::Prefix(p.clone()),
        }
    }

    /// The partitions whose changes it needs: the key's, the one slot of a
    /// prefix that holds a hash tag, or every partition.
    fn partitions(&self, partition_count: u32) -> Vec<PartitionId> {
        match self {
            Target::Key(key) => vec![partition_of(key, partition_count)],
            Target::Prefix(prefix) => match KeyRange::prefix(prefix.clone()).slot {
                Some(_) => vec![partition_of(prefix, partition_count)],
                None => (0..partition_count).map(PartitionId).collect(),
            },
        }
    }

    fn wants(&self, key: &[u8]) -> bool {
        match self {
            Target::Key(k) => key == &k[..],
            Target::Prefix(p) => key.starts_with(p),
        }
    }
}

/// Where a watch resumes: per partition, the revision it has seen every
/// change up to. Opaque to clients (URL-safe base64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(BTreeMap<PartitionId, u64>);

/// The first byte of an encoded cursor.
const CURSOR_VERSION: u8 = 1;

impl Cursor {
    pub fn encode(&self) -> String {
        let mut buf = vec![CURSOR_VERSION];
        let mut last = 0u32;
        for (p, revision) in &self.0 {
            // Partitions ascend: each as the gap from the previous one.
            prost::encoding::encode_varint(u64::from(p.0 - last), &mut buf);
            prost::encoding::encode_varint(*revision, &mut buf);
            last = p.0;
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    }

    pub fn decode(text: &str) -> Result<Cursor, WatchError> {
        let bad = |why: &str| WatchError::BadCursor(why.to_owned());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad("not a cursor this server gave (not base64url)"))?;
        let (&version, mut rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
        if version != CURSOR_VERSION {
            return Err(bad("not a cursor this server gave (unknown version)"));
        }
        let mut map = BTreeMap::new();
        let mut last = 0u64;
        while !rest.is_empty() {
            let gap = prost::encoding::decode_varint(&mut rest).map_err(|_| bad("truncated"))?;
            let revision =
                prost::encoding::decode_varint(&mut rest).map_err(|_| bad("truncated"))?;
            let p = last
                .checked_add(gap)
                .filter(|&p| p <= u64::from(u32::MAX) && (map.is_empty() || gap > 0))
                .ok_or_else(|| bad("partitions out of order"))?;
            map.insert(PartitionId(p as u32), revision);
            last = p;
        }
        Ok(Cursor(map))
    }

    /// Records that every change of `p` up to `revision` was seen.
    pub fn set(&mut self, p: PartitionId, revision: u64) {
        self.0.insert(p, revision);
    }

    /// The revision of `p` this cursor has seen up to, if it covers `p`.
    pub fn revision(&self, p: PartitionId) -> Option<u64> {
        self.0.get(&p).copied()
    }
}

/// Why a watch cannot start or go on here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The changes the watcher needs next are no longer held: it must read
    /// the current state again and watch from there.
    #[error("partition {partition}: {compacted}; read the current state and watch again from now")]
    Compacted {
        partition: PartitionId,
        compacted: Compacted,
    },
    /// This node holds no replica of a partition the watch needs (or no
    /// longer does: it moved): watch through a node that replicates it,
    /// with the cursor so far.
    #[error(
        "this node holds no replica of partition {partition}; watch through one of its replicas (resume with the cursor)"
    )]
    NotHere { partition: PartitionId },
    #[error("invalid watch cursor: {0}")]
    BadCursor(String),
    /// This node is shutting down.
    #[error("this node is shutting down; resume the watch through another node")]
    Stopping,
    /// `start_revision` names one partition's revision: it needs a key, or a
    /// prefix within one hash tag.
    #[error(
        "start_revision needs a watch of one partition (a key, or a prefix that holds a hash tag such as {{user42}}); resume a prefix watch with its cursor"
    )]
    StartNeedsOnePartition,
}

/// Changes for a client, all in revision order per partition, and the
/// cursor after them.
#[derive(Debug)]
pub struct Batch {
    pub changes: Vec<(PartitionId, Change)>,
    pub cursor: Cursor,
}

/// One client's watch.
pub struct Watcher {
    hub: Arc<WatchHub>,
    target: Target,
    seen: Cursor,
    bumps: watch::Receiver<u64>,
    /// Partitions this node holds no replica of: their changes come from
    /// a replica elsewhere, one relay task each, through `relayed`.
    relayed: Option<mpsc::Receiver<(PartitionId, Relayed)>>,
    relays: Vec<tokio::task::JoinHandle<()>>,
    relayed_partitions: BTreeSet<PartitionId>,
    /// Relayed changes received, not yet handed out.
    pending: Vec<(PartitionId, Change)>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for r in &self.relays {
            r.abort();
        }
    }
}

/// What a relay task hands its watcher: the changes of one response from
/// the replica it follows and the revision seen up to after them (the
/// first response has no changes: where the relay starts), or why it
/// cannot go on.
enum Relayed {
    Changes(Vec<Change>, u64),
    Failed(WatchError),
}

/// How long a watch waits for the relays of partitions it holds no replica
/// of to find one.
const RELAY_ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a watch starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// With the next change this replica applies.
    #[default]
    Now,
    /// With the changes at this revision and after (one partition only).
    Revision(u64),
    /// Right after what this cursor has seen.
    Cursor(Cursor),
}

impl Watcher {
    /// Attaches a watch of `target`: this node's replicas serve the
    /// partitions it holds; for each other one, a relay follows a replica
    /// elsewhere (found among the members; the same watch, by gRPC).
    pub async fn attach(
        node: &NodeHandle,
        partition_count: u32,
        target: Target,
        start: Start,
    ) -> Result<Watcher, WatchError> {
        let hub = node.watches();
        let partitions = target.partitions(partition_count);
        let remote: Vec<PartitionId> = partitions
            .iter()
            .copied()
            .filter(|&p| hub.head(p).is_err())
            .collect();
        let local: Vec<PartitionId> = partitions
            .iter()
            .copied()
            .filter(|p| !remote.contains(p))
            .collect();
        if let Start::Revision(_) = start
            && partitions.len() > 1
        {
            return Err(WatchError::StartNeedsOnePartition);
        }
        let mut watcher = Watcher::start_among(hub, &partitions, &local, target, &start)?;
        if remote.is_empty() {
            return Ok(watcher);
        }
        watcher.relayed_partitions = remote.iter().copied().collect();
        let (tx, mut rx) = mpsc::channel(16 * remote.len());
        for &p in &remote {
            let (after, start_revision) = match &start {
                Start::Now => (None, None),
                Start::Revision(r) => (None, Some(*r)),
                Start::Cursor(c) => (c.revision(p), None),
            };
            let relay = relay(
                node.clone(),
                p,
                watcher.target.clone(),
                after,
                start_revision,
                tx.clone(),
            );
            watcher.relays.push(tokio::spawn(relay));
        }
        // Each relay's first answer says where it starts.
        let mut started = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + RELAY_ATTACH_TIMEOUT;
        while started.len() < remote.len() {
            // (madsim's `time` has no `timeout_at`.)
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let item = tokio::time::timeout(left, rx.recv()).await;
            let Ok(Some((p, item))) = item else {
                let p = remote
                    .iter()
                    .find(|p| !started.contains_key(*p))
                    .expect("one");
                return Err(WatchError::NotHere { partition: *p });
            };
            match item {
                Relayed::Failed(e) => return Err(e),
                Relayed::Changes(changes, seen) => {
                    started.entry(p).or_insert(seen);
                    watcher.seen.set(p, seen);
                    watcher.pending.extend(changes.into_iter().map(|c| (p, c)));
                }
            }
        }
        watcher.relayed = Some(rx);
        Ok(watcher)
    }

    /// Attaches a watch of `target` to this node's replicas only.
    pub fn start(
        hub: Arc<WatchHub>,
        partition_count: u32,
        target: Target,
        start: Start,
    ) -> Result<Watcher, WatchError> {
        let partitions = target.partitions(partition_count);
        Self::start_among(hub, &partitions, &partitions, target, &start)
    }

    /// A watcher of `partitions` (all the target needs, or a relay's
    /// share) serving `local` from this node's replicas; the rest is
    /// relayed.
    fn start_among(
        hub: Arc<WatchHub>,
        partitions: &[PartitionId],
        local: &[PartitionId],
        target: Target,
        start: &Start,
    ) -> Result<Watcher, WatchError> {
        let bumps = hub.bumps.subscribe();
        let mut seen = BTreeMap::new();
        for &p in local {
            let after = match start {
                Start::Now => hub.head(p)?,
                Start::Revision(_) if partitions.len() > 1 => {
                    return Err(WatchError::StartNeedsOnePartition);
                }
                Start::Revision(r) => r.saturating_sub(1),
                Start::Cursor(c) => c.revision(p).ok_or_else(|| {
                    WatchError::BadCursor(format!(
                        "it does not cover partition {p}: it is from a watch of other keys"
                    ))
                })?,
            };
            seen.insert(p, after);
        }
        if let Start::Cursor(c) = start
            && (c.0.len() != partitions.len()
                || partitions.iter().any(|&p| c.revision(p).is_none()))
        {
            return Err(WatchError::BadCursor(
                "it covers other partitions: it is from a watch of other keys".into(),
            ));
        }
        // Refuse at once what cannot be served (compacted, not here).
        for (&p, &after) in &seen {
            hub.check(p, after)?;
        }
        Ok(Watcher {
            hub,
            target,
            seen: Cursor(seen),
            bumps,
            relayed: None,
            relays: Vec::new(),
            relayed_partitions: BTreeSet::new(),
            pending: Vec::new(),
        })
    }

    /// Attaches a relay's watch: only `only` of the target's partitions,
    /// from this node's replicas (never relayed again).
    pub fn start_only(
        hub: Arc<WatchHub>,
        partition_count: u32,
        target: Target,
        start: Start,
        only: &[PartitionId],
    ) -> Result<Watcher, WatchError> {
        let all = target.partitions(partition_count);
        if let Some(p) = only.iter().find(|p| !all.contains(p)) {
            return Err(WatchError::BadCursor(format!(
                "partition {p} holds none of the watched keys"
            )));
        }
        Self::start_among(hub, only, only, target, &start)
    }

    /// What the watcher has seen so far.
    pub fn cursor(&self) -> &Cursor {
        &self.seen
    }

    /// The next changes, once there are some.
    pub async fn next(&mut self) -> Result<Batch, WatchError> {
        loop {
            self.bumps.borrow_and_update();
            let mut changes = std::mem::take(&mut self.pending);
            changes.extend(self.poll()?);
            while let Some(item) = self.relayed.as_mut().and_then(|rx| rx.try_recv().ok()) {
                changes.extend(self.take_relayed(item)?);
            }
            if !changes.is_empty() {
                return Ok(Batch {
                    changes,
                    cursor: self.seen.clone(),
                });
            }
            let relayed = async {
                match self.relayed.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                bumped = self.bumps.changed() => {
                    if bumped.is_err() {
                        // The hub is gone: the node is stopping.
                        return Err(WatchError::Stopping);
                    }
                }
                item = relayed => match item {
                    Some(item) => {
                        let changes = self.take_relayed(item)?;
                        self.pending.extend(changes);
                    }
                    None => return Err(WatchError::Stopping),
                },
            }
        }
    }

    /// Takes in what a relay handed over, moving the cursor past it.
    fn take_relayed(
        &mut self,
        (p, item): (PartitionId, Relayed),
    ) -> Result<Vec<(PartitionId, Change)>, WatchError> {
        match item {
            Relayed::Failed(e) => Err(e),
            Relayed::Changes(changes, seen) => {
                self.seen.set(p, seen);
                Ok(changes
                    .into_iter()
                    .filter(|c| self.target.wants(&c.key))
                    .map(|c| (p, c))
                    .collect())
            }
        }
    }

    /// The changes the local replicas hold past the cursor, moving it past
    /// them (one lock of the hub for all partitions; a partition with
    /// nothing new costs a comparison).
    fn poll(&mut self) -> Result<Vec<(PartitionId, Change)>, WatchError> {
        let mut out = Vec::new();
        let histories = self
            .hub
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (&p, after) in self.seen.0.iter_mut() {
            let Some(h) = histories.get(&p) else {
                if self.relayed_partitions.contains(&p) {
                    continue;
                }
                return Err(WatchError::NotHere { partition: p });
            };
            if self.relayed_partitions.contains(&p) || (h.head() <= *after && h.floor() <= *after) {
                continue;
            }
            let (changes, seen) = h
                .read(*after, MAX_CHANGES_PER_READ, |c| self.target.wants(&c.key))
                .map_err(|c| WatchError::Compacted {
                    partition: p,
                    compacted: c,
                })?;
            *after = seen;
            out.extend(changes.into_iter().map(|c| (p, c)));
        }
        Ok(out)
    }
}

/// Follows partition `p` of `target` on a replica elsewhere, handing each
/// response to `tx`, from `after` (or, with none, from `start_revision`,
/// or from now). Resumes on another member, from what it has seen, when a
/// stream breaks; a member that holds no replica of `p` says so, and the
/// next is asked. Ends when the watcher is gone.
async fn relay(
    node: NodeHandle,
    p: PartitionId,
    target: Target,
    mut after: Option<u64>,
    mut start_revision: Option<u64>,
    tx: mpsc::Sender<(PartitionId, Relayed)>,
) {
    let mut rounds = 0u32;
    loop {
        let view = node.view();
        let mut addrs: Vec<(NodeId, String)> = view
            .members
            .iter()
            .filter(|m| m.id != view.node_id)
            .filter_map(|m| Some((m.id, m.address.clone()?)))
            .collect();
        if !addrs.is_empty() {
            let k = p.0 as usize % addrs.len();
            addrs.rotate_left(k);
        }
        let mut none_holds_it = true;
        for (member, addr) in addrs {
            let request = pb::WatchRequest {
                target: Some(target.to_proto()),
                start_revision: if after.is_none() {
                    start_revision.unwrap_or(0)
                } else {
                    0
                },
                cursor: after
                    .map_or_else(String::new, |a| Cursor(BTreeMap::from([(p, a)])).encode()),
                no_values: false,
                partitions: vec![p.0],
            };
            let stream = match connect(&node.dialer, &addr).await {
                Ok(channel) => {
                    // A member's call: its hello says so (no token needed).
                    let mut request = tonic::Request::new(request);
                    node.handshake.attach(&mut request, member);
                    KvClient::new(channel).watch(request).await
                }
                Err(_) => {
                    none_holds_it = false;
                    continue;
                }
            };
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(status) => match relayed_failure(p, after, &status) {
                    Some(WatchError::NotHere { .. }) => continue,
                    Some(e) => {
                        let _ = tx.send((p, Relayed::Failed(e))).await;
                        return;
                    }
                    None => {
                        none_holds_it = false;
                        continue;
                    }
                },
            };
            none_holds_it = false;
            loop {
                match stream.message().await {
                    Ok(Some(r)) => {
                        let Some(seen) = Cursor::decode(&r.cursor).ok().and_then(|c| c.revision(p))
                        else {
                            break;
                        };
                        after = Some(seen);
                        start_revision = None;
                        rounds = 0;
                        let changes = r.events.into_iter().map(change_from_proto).collect();
                        if tx.send((p, Relayed::Changes(changes, seen))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => match relayed_failure(p, after, &status) {
                        Some(e @ WatchError::Compacted { .. }) => {
                            let _ = tx.send((p, Relayed::Failed(e))).await;
                            return;
                        }
                        _ => break,
                    },
                }
            }
        }
        rounds += 1;
        if none_holds_it && rounds >= RELAY_ROUNDS {
            let _ = tx
                .send((p, Relayed::Failed(WatchError::NotHere { partition: p })))
                .await;
            return;
        }
        tokio::time::sleep(RELAY_BACKOFF).await;
    }
}

/// Rounds over the members, none of which holds a replica, before a relay
/// gives up (a replica moving may be nowhere for a moment).
const RELAY_ROUNDS: u32 = 20;
const RELAY_BACKOFF: Duration = Duration::from_millis(250);

async fn connect(dialer: &Dialer, addr: &str) -> Result<Channel, String> {
    let addr = PeerAddr::parse(addr).map_err(|e| e.to_string())?;
    let endpoint = Endpoint::from_shared(addr.uri())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1));
    dialer
        .connect(endpoint, &addr)
        .await
        .map_err(|e| crate::error_chain(&e))
}

/// What a replica's refusal means for a relay: compacted (carrying the
/// floor in `ringkv-compacted-floor`), no replica there, or (`None`) a
/// failure to try elsewhere.
fn relayed_failure(
    p: PartitionId,
    after: Option<u64>,
    status: &tonic::Status,
) -> Option<WatchError> {
    let code = status
        .metadata()
        .get(CODE_METADATA)
        .and_then(|v| v.to_str().ok())?;
    match code {
        "compacted" => {
            let floor = status
                .metadata()
                .get(FLOOR_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Some(WatchError::Compacted {
                partition: p,
                compacted: Compacted {
                    after: after.unwrap_or(0),
                    floor,
                },
            })
        }
        "not_a_replica" => Some(WatchError::NotHere { partition: p }),
        _ => Some(WatchError::BadCursor(status.message().to_owned())),
    }
}

/// The gRPC metadata that carries a compacted history's floor.
pub const FLOOR_METADATA: &str = "ringkv-compacted-floor";

fn change_from_proto(e: pb::WatchEvent) -> Change {
    let kind = match pb::watch_event::Kind::try_from(e.kind) {
        Ok(pb::watch_event::Kind::Put) => ChangeKind::Put,
        Ok(pb::watch_event::Kind::Delete) => ChangeKind::Delete,
        Ok(pb::watch_event::Kind::Expire) | Err(_) => ChangeKind::Expire,
    };
    Change {
        revision: e.revision,
        kind,
        key: e.key,
        value: e.value,
        version: e.version,
    }
}

#[cfg(test)]
mod tests {
    use ringkv_core::watch::ChangeKind;

    use super::*;

    fn change(revision: u64, key: &str) -> Change {
        Change {
            revision,
            kind: ChangeKind::Put,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            version: 1,
        }
    }

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = Cursor(BTreeMap::from([
            (PartitionId(0), 7),
            (PartitionId(3), 0),
            (PartitionId(63), 1 << 40),
        ]));
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in ["", "!!", "AA", "AgE"] {
            assert!(
                matches!(Cursor::decode(bad), Err(WatchError::BadCursor(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_watcher_sees_its_keys_changes_and_resumes_from_its_cursor() {
        let hub = Arc::new(WatchHub::new(HistoryLimits::default()));
        let pc = 4;
        let key = Bytes::from_static(b"k");
        let p = partition_of(&key, pc);
        hub.feed(vec![(p, Feed::Reset { floor: 10 })]);
        let mut w = Watcher::start(hub.clone(), pc, Target::Key(key.clone()), Start::Now).unwrap();
        hub.feed(vec![(p, Feed::Changes(vec![change(11, "other")]))]);
        hub.feed(vec![(p, Feed::Changes(vec![change(12, "k")]))]);
        let batch = w.next().await.unwrap();
        assert_eq!(batch.changes, vec![(p, change(12, "k"))]);
        assert_eq!(batch.cursor.revision(p), Some(12));

        // Another watcher resumes from the first one's cursor: only what
        // came after.
        hub.feed(vec![(p, Feed::Changes(vec![change(13, "k")]))]);
        let mut resumed = Watcher::start(
            hub.clone(),
            pc,
            Target::Key(key.clone()),
            Start::Cursor(batch.cursor),
        )
        .unwrap();
        assert_eq!(
            resumed.next().await.unwrap().changes,
            vec![(p, change(13, "k"))]
        );

        // From a revision: everything from it on.
        let mut from = Watcher::start(
            hub.clone(),
            pc,
            Target::Key(key.clone()),
            Start::Revision(12),
        )
        .unwrap();
        let got = from.next().await.unwrap().changes;
        assert_eq!(got, vec![(p, change(12, "k")), (p, change(13, "k"))]);

        // A snapshot wipes the history: a watcher behind it is told.
        hub.feed(vec![(p, Feed::Reset { floor: 50 })]);
        assert!(matches!(
            w.next().await,
            Err(WatchError::Compacted { partition, .. }) if partition == p
        ));
        // The replica moves away: watchers are sent elsewhere.
        hub.feed(vec![(p, Feed::Gone)]);
        assert_eq!(
            Watcher::start(hub.clone(), pc, Target::Key(key), Start::Now).err(),
            Some(WatchError::NotHere { partition: p })
        );
    }

    #[test]
    fn a_prefix_watch_needs_every_partition_unless_it_holds_a_hash_tag() {
        let hub = Arc::new(WatchHub::new(HistoryLimits::default()));
        let pc = 4;
        hub.feed(vec![(PartitionId(0), Feed::Reset { floor: 0 })]);
        let every = Target::Prefix(Bytes::from_static(b"user/"));
        assert!(matches!(
            Watcher::start(hub.clone(), pc, every.clone(), Start::Now),
            Err(WatchError::NotHere { .. })
        ));
        assert_eq!(
            Watcher::start(hub.clone(), pc, every, Start::Revision(3)).err(),
            Some(WatchError::StartNeedsOnePartition)
        );
        let tagged = Target::Prefix(Bytes::from_static(b"{u1}."));
        assert_eq!(tagged.partitions(pc), vec![partition_of(b"{u1}.", pc)]);
    }
}
