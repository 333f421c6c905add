//! Durable storage of one node: the WAL shared by all its partitions, their
//! snapshot files and `node.toml`. It turns the core's [`IoRequest`]s into
//! synced bytes and, at start-up, bytes back into [`Recovered`]. It makes no
//! protocol decision (what to persist, when to compact: the core and the
//! driver) and touches files only through [`Disk`].
//!
//! # On disk
//!
//! ```text
//! <dir>/node.toml                      format_version = 2, node_id, cluster_id,
//!                                      partition_count, replication_factor,
//!                                      incarnation (TOML)
//! <dir>/cluster.toml                   uid and members' incarnations of the cluster
//!                                      this directory joined (absent until then)
//! <dir>/wal/<seq>.log                  a WAL segment; seq: u64, 20 digits zero-padded,
//!                                      consecutive, the highest one is being appended to
//! <dir>/snap/<partition>/<index>.snap  a snapshot; partition: decimal u32, index: u64,
//!                                      20 digits zero-padded
//! ```
//!
//! - A WAL segment is a sequence of records `[len: u32 LE][crc: u32 LE][payload]`:
//!   `len` is the payload's length (1..=64 MiB, `wal::MAX_RECORD_BYTES`), `crc`
//!   its CRC-32C (Castagnoli), the payload a `ringkv_core::wire` WAL payload:
//!   a hard state, an entries record, a group's genesis configuration, a
//!   tombstone, or a snapshot reference (`wire::encode_snapshot_ref`). Entry
//!   batches too big for one record are split into several entries records
//!   (replaying them in order is the same).
//! - Every segment opens with a **checkpoint**: for every partition known, its
//!   tombstone or genesis record, latest hard state and latest snapshot
//!   reference, so no older segment is needed for those.
//! - A **tombstone** (the node destroyed its replica of a group) voids what
//!   came before it: once it is synced the group's snapshot files are
//!   deleted, and its entries no longer keep segments alive. A later
//!   snapshot of the group (the replica added again) clears it.
//! - A snapshot file is one record in the same framing whose payload is
//!   `wire::encode_snapshot`; written as `<index>.snap.tmp`, synced, renamed,
//!   and its directory synced. `node.toml` is written the same way (tmp, sync,
//!   rename, sync the directory), once, on first start.
//!
//! # Writing ([`Storage::write`])
//!
//! Records are appended in request order, all of one call with a single
//! append and **at most one sync of the WAL file** (group commit). The sync
//! happens if any request has `must_sync`, carries a snapshot, or the call
//! started a new segment; a call of only `must_sync == false` requests (the
//! core's commit-index updates) is written but not synced, which its
//! contract allows. Starting a new segment also syncs the WAL directory, and
//! the previous segment first if it holds unsynced bytes.
//!
//! - A new segment is started when a call begins and the active one holds
//!   `segment_bytes` or more (so a segment may overshoot by one call).
//! - A snapshot record: the snapshot file is written durably first, then a
//!   reference takes its place in the WAL. Older snapshot files of that
//!   partition are deleted only after that reference is synced.
//! - After a sync, the oldest segments (never the active one) are deleted
//!   while every partition's entries in them are covered by its latest
//!   snapshot: highest entry index held there <= snapshot index. A snapshot
//!   that replaces a conflicting log tail (an install) also counts the
//!   segment holding the conflicting entry as holding that whole tail (see
//!   `log_shape`), so replay from a later segment cannot resurrect it.
//! - [`Storage::partitions_pinning_old_segments`] names the partitions whose
//!   uncovered entries keep old segments alive once the WAL outgrows its
//!   allowance: `max_segments` segments, or as many bytes as the current
//!   snapshots hold, whichever is more; the driver asks the core to compact
//!   them. The allowance grows with the data because a snapshot rewrites a
//!   partition's whole state: forcing snapshots every fixed number of WAL
//!   bytes would rewrite gigabytes of state per few hundred megabytes of
//!   writes once the data outgrows the WAL (with 900 KB values, 14 bytes of
//!   snapshot per byte written). With the allowance, snapshots at most about
//!   double the bytes written.
//! - After any error the `Storage` refuses further writes
//!   ([`StorageError::Failed`]): what reached the disk is unknown (a failed
//!   fsync may have dropped dirty pages), so the node must restart and
//!   recover.
//!
//! # Recovery ([`Storage::open`])
//!
//! 1. `node.toml` is created, or checked against the configuration.
//! 2. Segments are read in order, and each is synced (a process crash can
//!    leave unsynced bytes readable; once replayed they must not vanish in a
//!    later power loss). A bad record at the end of the last segment with no
//!    valid record anywhere after it is a torn write: the file is cut there
//!    (logged). Any other bad record, and any record whose payload does not
//!    decode, is [`StorageError::Corrupt`] naming file and offset. A gap in
//!    the segment numbers can only be an interrupted deletion of old segments
//!    (deletion goes oldest first); the segments before the gap are deleted
//!    (logged).
//! 3. Records replay into each partition's `RaftStorage` as
//!    `RaftStorage::apply` does, except for snapshots (see `log_shape`). Each
//!    partition's snapshot is the one named by its **last** reference; earlier
//!    references only cut the log (their files are usually gone). The named
//!    file missing or corrupt is an error naming it. Every other snapshot
//!    file (older, or newer: written before a crash beat its reference) is
//!    deleted.
//! 4. Appends then go to a **new** segment opened with a checkpoint; a cut
//!    file is never appended to again.
//!
//! Durability model: that of [`Disk`] (POSIX); `<dir>` itself, once created,
//! is assumed durable (its parent directory is not synced).
//!
//! Limits and what is not here: every call blocks on the disk (the driver
//! runs it off the event loop); a segment and a snapshot are read whole into
//! memory; a snapshot file holds at most 4 GiB; records are not validated on
//! write beyond their size (the core's are valid by construction; a log gap
//! is caught at recovery as [`StorageError::InconsistentLog`]); no segment
//! preallocation, no direct I/O.

mod log_shape;
mod meta;
mod snapshots;
mod wal;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ringkv_core::PartitionId;
use ringkv_core::identity::{ClusterRecord, Incarnation};
use ringkv_core::io::{IoRequest, WalRecord};
use ringkv_core::node::Recovered;
use ringkv_core::raft::{Entry, PersistRecord, RaftStorage, Snapshot, SnapshotMeta, Tombstone};
use ringkv_core::wire::{self, WalPayload};

use crate::disk::{Disk, DiskLock};
use log_shape::{PartitionShape, Pin};
pub use meta::{ClusterFile, FORMAT_VERSION, cluster_record_path};

/// Who a data directory belongs to; recorded in `node.toml` on first start
/// and checked on every later one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMeta {
    pub node_id: u64,
    pub cluster_id: String,
    pub partition_count: u32,
    pub replication_factor: u32,
    /// Recorded as the directory's incarnation if it has none yet (a new
    /// directory); an existing one keeps its own.
    pub incarnation_if_new: Incarnation,
}

/// Tuning of the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    /// A new segment is started once the active one holds this many bytes.
    pub segment_bytes: u64,
    /// Above this many segments (and above the bytes of the current
    /// snapshots), [`Storage::partitions_pinning_old_segments`] names the
    /// partitions to compact.
    pub max_segments: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            segment_bytes: 64 << 20,
            max_segments: 4,
        }
    }
}

/// What recovery tidies among the snapshots once the directory has read:
/// snapshots the WAL held inline (written to files of their own), stray
/// files, and snapshot files no longer current.
struct SnapshotTidy {
    inline: Vec<(PartitionId, Snapshot)>,
    strays: Vec<(PartitionId, PathBuf)>,
    orphans: Vec<(PartitionId, u64)>,
}

/// Why storage could not open or write. Every message names the file (and
/// the offset, for a corrupt record).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A WAL record that is damaged and is not a torn tail, or whose payload
    /// does not decode.
    #[error("corrupt WAL record in {file} at offset {offset}: {reason}", file = .file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The snapshot file the WAL's last reference names is damaged.
    #[error("corrupt snapshot file {file}: {reason}", file = .file.display())]
    CorruptSnapshot { file: PathBuf, reason: String },
    /// The snapshot file the WAL's last reference names does not exist.
    #[error("snapshot file {file} is missing, but the WAL references it", file = .file.display())]
    MissingSnapshot { file: PathBuf },
    /// Replay produced a log the core could not start from (a gap after the
    /// snapshot): records are missing although each one is intact.
    #[error("WAL in {dir}: partition {partition} recovers an inconsistent log: {reason}", dir = .dir.display())]
    InconsistentLog {
        dir: PathBuf,
        partition: PartitionId,
        reason: String,
    },
    /// Another process holds the data directory's lock.
    #[error(
        "the data directory {dir} is in use ({reason}): is another ringkv node running on it? \
         nothing was written", dir = .dir.display()
    )]
    Locked { dir: PathBuf, reason: String },
    /// `node.toml` is unreadable, or absent where it must exist.
    #[error("{file}: {reason}", file = .file.display())]
    BadMeta { file: PathBuf, reason: String },
    #[error(
        "{file}: format version {found} is not supported (this build reads {supported}){hint}",
        file = .file.display(),
        hint = meta::format_hint(*.found),
    )]
    UnsupportedFormat {
        file: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The data directory belongs to another node, cluster or layout.
    #[error("{file}: {field} is {on_disk} on disk but {configured} in the configuration", file = .file.display())]
    MetaMismatch {
        file: PathBuf,
        field: &'static str,
        on_disk: String,
        configured: String,
    },
    /// A single record that cannot fit the format's length limit.
    #[error("record of {size} bytes for {file} exceeds the limit of {limit} bytes", file = .file.display())]
    RecordTooLarge {
        file: PathBuf,
        size: usize,
        limit: usize,
    },
    /// An earlier write failed; the node must restart and recover.
    #[error("storage in {dir} failed earlier ({cause}); restart to recover", dir = .dir.display())]
    Failed { dir: PathBuf, cause: String },
}

/// `map_err` adapter: an `io::Error` on `path`.
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + use<> {
    let path = path.to_path_buf();
    move |source| StorageError::Io { path, source }
}

/// Counters since [`Storage::open`] (the first two: current state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// WAL segments on disk, the active one included.
    pub segments: usize,
    /// Bytes in those segments.
    pub wal_bytes: u64,
    /// Bytes of every partition's current snapshot.
    pub snapshot_bytes: u64,
    /// WAL records appended, checkpoints included.
    pub records_written: u64,
    /// Syncs of WAL segment files.
    pub syncs: u64,
    pub snapshots_written: u64,
    pub segments_deleted: u64,
}

/// The paths of a data directory.
#[derive(Clone, Debug)]
struct Dirs {
    root: PathBuf,
    /// Held by the process using the directory (`Disk::lock_exclusive`).
    lock: PathBuf,
    node_toml: PathBuf,
    wal: PathBuf,
    snap: PathBuf,
}

impl Dirs {
    fn new(root: PathBuf) -> Self {
        Dirs {
            lock: root.join("LOCK"),
            node_toml: root.join("node.toml"),
            wal: root.join("wal"),
            snap: root.join("snap"),
            root,
        }
    }
}

/// One WAL segment, as far as the writer needs to know it.
#[derive(Clone, Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Per partition, the highest entry index written here (raised by pins).
    max_index: BTreeMap<PartitionId, u64>,
}

/// Where a partition's latest snapshot came from, during replay.
enum SnapshotSource {
    /// A reference: the data is in its snapshot file.
    Reference(SnapshotMeta),
    /// A whole snapshot inside the WAL (never written by this module, but a
    /// valid payload); it gets a file so checkpoints can reference it.
    Inline(Snapshot),
}

/// The node's WAL and snapshot files. See the module documentation.
pub struct Storage {
    /// The data directory's lock, held as long as this storage lives.
    _lock: DiskLock,
    disk: Arc<dyn Disk>,
    dirs: Dirs,
    opts: StorageOptions,
    /// Oldest first; the last one is appended to. Never empty once open.
    segments: VecDeque<Segment>,
    /// The active segment holds bytes not yet synced.
    active_unsynced: bool,
    shapes: BTreeMap<PartitionId, PartitionShape>,
    /// Snapshot indices on disk per partition (a key: its directory exists).
    snapshot_files: BTreeMap<PartitionId, BTreeSet<u64>>,
    /// Size of each partition's current snapshot (the newest written or
    /// loaded): what compacting it again would cost.
    snapshot_bytes: BTreeMap<PartitionId, u64>,
    stats: StorageStats,
    /// Set by the first failed write; see [`StorageError::Failed`].
    failed: Option<String>,
    /// The directory's incarnation (from `node.toml`).
    incarnation: Incarnation,
    /// The cluster it joined (from `cluster.toml`), if it has.
    cluster: Option<ClusterFile>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("dir", &self.dirs.root)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Records, durably, the cluster the data directory at `dir` has formed or
/// joined (`cluster.toml`): before the node takes any peer traffic, and
/// again when the member list grows.
pub fn save_cluster_record(
    disk: &dyn Disk,
    dir: &Path,
    cluster: &ClusterFile,
) -> Result<(), StorageError> {
    meta::write_cluster(disk, dir, cluster)
}

impl Storage {
    /// Opens or creates `<dir>`: writes `node.toml` on first start; on later
    /// starts checks it matches `meta` and the format version. Loads
    /// snapshots, replays the WAL, cuts a torn tail, and returns what the
    /// core needs to start.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: PathBuf,
        meta: NodeMeta,
        opts: StorageOptions,
    ) -> Result<(Storage, Recovered), StorageError> {
        let dirs = Dirs::new(dir);
        disk.create_dir_all(&dirs.root)
            .map_err(io_err(&dirs.root))?;
        // First, before reading or writing anything: one process per data
        // directory. A second node on a live node's directory would cut
        // its WAL's tail or start a segment of its own in it.
        let lock = match disk.lock_exclusive(&dirs.lock) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(StorageError::Locked {
                    dir: dirs.root.clone(),
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(io_err(&dirs.lock)(e)),
        };
        let wal_present = match disk.list_dir(&dirs.wal) {
            Ok(names) => names.iter().any(|n| wal::parse_segment_name(n).is_some()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(&dirs.wal)(e)),
        };
        let loaded = meta::ensure(disk.as_ref(), &dirs, &meta, wal_present)?;
        for sub in [&dirs.wal, &dirs.snap] {
            disk.create_dir_all(sub).map_err(io_err(sub))?;
        }
        disk.sync_dir(&dirs.root).map_err(io_err(&dirs.root))?;

        let mut storage = Storage {
            _lock: lock,
            disk,
            dirs,
            opts,
            segments: VecDeque::new(),
            active_unsynced: false,
            shapes: BTreeMap::new(),
            snapshot_files: BTreeMap::new(),
            snapshot_bytes: BTreeMap::new(),
            stats: StorageStats::default(),
            failed: None,
            incarnation: loaded.incarnation,
            cluster: loaded.record,
        };
        let recovered = storage.recover()?;
        if loaded.upgrade {
            meta::upgrade(storage.disk.as_ref(), &storage.dirs, &meta)?;
        }
        storage.start_segment_after_recovery()?;
        storage.delete_covered_segments()?;
        Ok((storage, recovered))
    }

    /// Makes every record of `requests` durable, in order, with at most one
    /// sync of the WAL file (see the module doc for when it syncs). Returns
    /// once they are durable (or, for a call of only `must_sync == false`
    /// requests, written).
    pub fn write(&mut self, requests: &[IoRequest]) -> Result<(), StorageError> {
        if let Some(cause) = &self.failed {
            return Err(StorageError::Failed {
                dir: self.dirs.root.clone(),
                cause: cause.clone(),
            });
        }
        let result = self.write_batch(requests);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    /// Simulation only: how long the disk is to take over `requests` (see
    /// `Disk::io_latency`), from their payload bytes and whether any must
    /// be synced.
    #[cfg(madsim)]
    pub fn io_latency(&self, requests: &[IoRequest]) -> std::time::Duration {
        use ringkv_core::raft::PersistRecord;
        let bytes: u64 = requests
            .iter()
            .flat_map(|r| &r.records)
            .map(|rec| match &rec.record {
                PersistRecord::Entries(es) => es.iter().map(|e| e.data.len() as u64 + 32).sum(),
                PersistRecord::Snapshot(s) => s.data.len() as u64,
                PersistRecord::HardState(_)
                | PersistRecord::Genesis(_)
                | PersistRecord::Tombstone(_) => 32,
            })
            .sum();
        let sync = requests.iter().any(|r| r.must_sync);
        self.disk.io_latency(bytes, sync)
    }

    /// Partitions whose entries keep the oldest segments alive beyond the
    /// WAL's allowance (see the module doc): compacting them lets those go.
    pub fn partitions_pinning_old_segments(&self) -> Vec<PartitionId> {
        let over_count = self
            .segments
            .len()
            .saturating_sub(self.opts.max_segments.max(1));
        // Old segments beyond the count are excess only while the WAL also
        // holds more bytes than the snapshots that would replace them.
        let snapshots: u64 = self.snapshot_bytes.values().sum();
        let mut wal: u64 = self.segments.iter().map(|s| s.bytes).sum();
        let mut excess = 0;
        for seg in self.segments.iter().take(over_count) {
            if wal <= snapshots {
                break;
            }
            wal -= seg.bytes;
            excess += 1;
        }
        let mut pinning = BTreeSet::new();
        for seg in self.segments.iter().take(excess) {
            for (&p, &max) in &seg.max_index {
                if max > self.snapshot_index(p) {
                    pinning.insert(p);
                }
            }
        }
        pinning.into_iter().collect()
    }

    /// The data directory's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The record of the cluster this directory joined, as read at open
    /// (see [`save_cluster_record`]).
    pub fn cluster_record(&self) -> Option<&ClusterRecord> {
        self.cluster.as_ref().map(|c| &c.record)
    }

    /// All of `cluster.toml`, as read at open.
    pub fn cluster_file(&self) -> Option<&ClusterFile> {
        self.cluster.as_ref()
    }

    pub fn stats(&self) -> StorageStats {
        StorageStats {
            segments: self.segments.len(),
            wal_bytes: self.segments.iter().map(|s| s.bytes).sum(),
            snapshot_bytes: self.snapshot_bytes.values().sum(),
            ..self.stats
        }
    }

    // ------------------------------------------------------------- writing

    fn write_batch(&mut self, requests: &[IoRequest]) -> Result<(), StorageError> {
        if requests.iter().all(|r| r.records.is_empty()) {
            return Ok(());
        }
        let mut buf = Vec::new();
        let mut records = 0;
        let rolled = self.active().bytes >= self.opts.segment_bytes;
        if rolled {
            self.sync_active_if_unsynced()?;
            self.push_segment(self.active().seq + 1);
            records += self.encode_checkpoint(&mut buf);
        }
        let mut must_sync = rolled || requests.iter().any(|r| r.must_sync);
        let mut snapshotted = BTreeSet::new();
        for rec in requests.iter().flat_map(|r| &r.records) {
            let p = rec.partition;
            match &rec.record {
                PersistRecord::HardState(hs) => {
                    wal::frame(&wire::encode_wal_record(rec), &mut buf);
                    records += 1;
                    self.shapes.entry(p).or_default().hard_state = Some(*hs);
                }
                PersistRecord::Entries(entries) if entries.is_empty() => {}
                PersistRecord::Entries(entries) => {
                    let payload = wire::encode_wal_record(rec);
                    if payload.len() <= wal::MAX_RECORD_BYTES {
                        wal::frame(&payload, &mut buf);
                        records += 1;
                    } else {
                        records += self.encode_split_entries(p, entries, &mut buf)?;
                    }
                    self.note_entries(p, entries);
                }
                PersistRecord::Snapshot(snapshot) => {
                    self.write_snapshot_file(p, snapshot)?;
                    let payload = wire::encode_snapshot_ref(p, &snapshot.meta);
                    wal::frame(&payload, &mut buf);
                    records += 1;
                    self.note_snapshot(p, snapshot.meta.clone());
                    snapshotted.insert(p);
                    must_sync = true;
                }
                PersistRecord::Genesis(membership) => {
                    wal::frame(&wire::encode_wal_record(rec), &mut buf);
                    records += 1;
                    self.shapes.entry(p).or_default().genesis = Some(membership.clone());
                    must_sync = true;
                }
                PersistRecord::Tombstone(tombstone) => {
                    wal::frame(&wire::encode_wal_record(rec), &mut buf);
                    records += 1;
                    self.note_tombstone(p, tombstone.clone());
                    // Its snapshot files go once the tombstone is durable.
                    snapshotted.insert(p);
                    must_sync = true;
                }
            }
        }

        let path = self.active().path.clone();
        self.disk.append(&path, &buf).map_err(io_err(&path))?;
        self.active_mut().bytes += buf.len() as u64;
        self.stats.records_written += records;
        if !must_sync {
            self.active_unsynced = true;
            return Ok(());
        }
        self.disk.sync_file(&path).map_err(io_err(&path))?;
        self.stats.syncs += 1;
        self.active_unsynced = false;
        if rolled {
            self.disk
                .sync_dir(&self.dirs.wal)
                .map_err(io_err(&self.dirs.wal))?;
        }
        // Only now are the new snapshot references durable.
        for p in snapshotted {
            self.delete_superseded_snapshots(p)?;
        }
        self.delete_covered_segments()
    }

    /// Entries too big for one record, as several records (halving).
    fn encode_split_entries(
        &self,
        partition: PartitionId,
        entries: &[Entry],
        buf: &mut Vec<u8>,
    ) -> Result<u64, StorageError> {
        let payload = wire::encode_wal_record(&WalRecord {
            partition,
            record: PersistRecord::Entries(entries.to_vec()),
        });
        if payload.len() <= wal::MAX_RECORD_BYTES {
            wal::frame(&payload, buf);
            return Ok(1);
        }
        if entries.len() < 2 {
            return Err(StorageError::RecordTooLarge {
                file: self.active().path.clone(),
                size: payload.len(),
                limit: wal::MAX_RECORD_BYTES,
            });
        }
        let (front, back) = entries.split_at(entries.len() / 2);
        Ok(self.encode_split_entries(partition, front, buf)?
            + self.encode_split_entries(partition, back, buf)?)
    }

    /// The checkpoint that opens a segment: each known partition's latest
    /// hard state and snapshot reference. Returns the number of records.
    fn encode_checkpoint(&self, buf: &mut Vec<u8>) -> u64 {
        let mut records = 0;
        for (&partition, shape) in &self.shapes {
            let node_records = shape
                .tombstone
                .clone()
                .map(PersistRecord::Tombstone)
                .into_iter()
                .chain(shape.genesis.clone().map(PersistRecord::Genesis));
            for record in node_records {
                let rec = WalRecord { partition, record };
                wal::frame(&wire::encode_wal_record(&rec), buf);
                records += 1;
            }
            if let Some(hs) = shape.hard_state {
                let rec = WalRecord {
                    partition,
                    record: PersistRecord::HardState(hs),
                };
                wal::frame(&wire::encode_wal_record(&rec), buf);
                records += 1;
            }
            if let Some(meta) = &shape.snapshot {
                wal::frame(&wire::encode_snapshot_ref(partition, meta), buf);
                records += 1;
            }
        }
        records
    }

    fn write_snapshot_file(
        &mut self,
        p: PartitionId,
        snapshot: &Snapshot,
    ) -> Result<(), StorageError> {
        let dir_exists = self.snapshot_files.contains_key(&p);
        snapshots::write(self.disk.as_ref(), &self.dirs, p, snapshot, dir_exists)?;
        self.snapshot_bytes.insert(p, snapshot.data.len() as u64);
        self.snapshot_files
            .entry(p)
            .or_default()
            .insert(snapshot.meta.index);
        self.stats.snapshots_written += 1;
        Ok(())
    }

    /// Deletes every snapshot file of `p` but its current one.
    fn delete_superseded_snapshots(&mut self, p: PartitionId) -> Result<(), StorageError> {
        let current = self.snapshot_index(p);
        let Some(files) = self.snapshot_files.get_mut(&p) else {
            return Ok(());
        };
        let old: Vec<u64> = files.iter().copied().filter(|&i| i != current).collect();
        if old.is_empty() {
            return Ok(());
        }
        for index in old {
            let path = snapshots::snapshot_path(&self.dirs.snap, p, index);
            self.disk.remove_file(&path).map_err(io_err(&path))?;
            files.remove(&index);
        }
        let dir = snapshots::partition_dir(&self.dirs.snap, p);
        self.disk.sync_dir(&dir).map_err(io_err(&dir))
    }

    /// Deletes the oldest segments while every partition's entries in them
    /// are covered by its snapshot. Call only when everything written is
    /// durable.
    fn delete_covered_segments(&mut self) -> Result<(), StorageError> {
        let mut deleted = false;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let covered = oldest
                .max_index
                .iter()
                .all(|(&p, &max)| max <= self.snapshot_index(p));
            if !covered {
                break;
            }
            self.disk
                .remove_file(&oldest.path)
                .map_err(io_err(&oldest.path))?;
            self.segments.pop_front();
            self.stats.segments_deleted += 1;
            deleted = true;
        }
        if deleted {
            self.disk
                .sync_dir(&self.dirs.wal)
                .map_err(io_err(&self.dirs.wal))?;
        }
        Ok(())
    }

    fn sync_active_if_unsynced(&mut self) -> Result<(), StorageError> {
        if self.active_unsynced {
            let path = &self.active().path;
            self.disk.sync_file(path).map_err(io_err(path))?;
            self.stats.syncs += 1;
            self.active_unsynced = false;
        }
        Ok(())
    }

    // ---------------------------------------------------- shared bookkeeping

    fn active(&self) -> &Segment {
        self.segments
            .back()
            .expect("an open Storage always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .back_mut()
            .expect("an open Storage always has an active segment")
    }

    fn push_segment(&mut self, seq: u64) {
        self.segments.push_back(Segment {
            seq,
            path: wal::segment_path(&self.dirs.wal, seq),
            bytes: 0,
            max_index: BTreeMap::new(),
        });
    }

    fn snapshot_index(&self, p: PartitionId) -> u64 {
        self.shapes
            .get(&p)
            .map_or(0, PartitionShape::snapshot_index)
    }

    /// Entries of `p` appended to the active segment.
    fn note_entries(&mut self, p: PartitionId, entries: &[Entry]) {
        let Some(last) = entries.last() else { return };
        let seq = self.active().seq;
        self.shapes
            .entry(p)
            .or_default()
            .record_entries(seq, entries);
        let max = self.active_mut().max_index.entry(p).or_default();
        *max = (*max).max(last.index);
    }

    /// The replica of `p` was destroyed: its entries pin no segment any
    /// more (a replay voids them at the tombstone).
    fn note_tombstone(&mut self, p: PartitionId, tombstone: Tombstone) {
        self.shapes
            .entry(p)
            .or_default()
            .record_tombstone(tombstone);
        for seg in &mut self.segments {
            seg.max_index.remove(&p);
        }
        self.snapshot_bytes.remove(&p);
    }

    /// A snapshot of `p` referenced from the active segment.
    fn note_snapshot(&mut self, p: PartitionId, meta: SnapshotMeta) {
        if let Some(Pin { segment, up_to }) =
            self.shapes.entry(p).or_default().record_snapshot(meta)
            && let Some(seg) = self.segments.iter_mut().find(|s| s.seq == segment)
        {
            let max = seg.max_index.entry(p).or_default();
            *max = (*max).max(up_to);
        }
    }

    // ------------------------------------------------------------ recovery

    /// Reads every segment and snapshot back; fills the bookkeeping.
    /// Reads and checks everything first (segments, snapshots, the log's
    /// continuity) and only then repairs what a crash leaves behind: a
    /// directory that does not open is left exactly as it was, for the
    /// operator (or a later version) to read.
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        let (seqs, leftovers) = self.list_segments()?;
        // Numbers ringkv could never reach (2^63 segments): a damaged or
        // foreign name, and no room for the segments that would follow.
        if let Some(&last) = seqs.last()
            && last > u64::MAX / 2
        {
            return Err(StorageError::BadMeta {
                file: wal::segment_path(&self.dirs.wal, last),
                reason: "a WAL segment number past 2^63, which ringkv never writes".to_owned(),
            });
        }
        let mut groups: BTreeMap<PartitionId, RaftStorage> = BTreeMap::new();
        let mut latest: BTreeMap<PartitionId, SnapshotSource> = BTreeMap::new();
        let mut torn = None;
        for (i, &seq) in seqs.iter().enumerate() {
            self.push_segment(seq);
            let path = self.active().path.clone();
            let bytes = self.disk.read(&path).map_err(io_err(&path))?;
            let read = wal::read_segment(&path, &bytes, i + 1 == seqs.len())?;
            let mut len = bytes.len() as u64;
            if let Some((at, reason)) = read.torn_at {
                torn = Some((path.clone(), at, len - at, reason));
                len = at;
            }
            self.active_mut().bytes = len;
            for payload in read.records {
                self.replay(payload, &mut groups, &mut latest);
            }
        }
        let tidy = self.load_snapshots(&mut groups, latest)?;
        for (&partition, storage) in &groups {
            self.check_contiguous(partition, storage)?;
        }

        // Everything reads: now the repairs.
        if !leftovers.is_empty() {
            for path in &leftovers {
                tracing::warn!(
                    file = %path.display(),
                    "deleting a WAL segment left over from an interrupted deletion"
                );
                self.disk.remove_file(path).map_err(io_err(path))?;
            }
            self.disk
                .sync_dir(&self.dirs.wal)
                .map_err(io_err(&self.dirs.wal))?;
        }
        if let Some((path, at, cut_bytes, reason)) = torn {
            tracing::warn!(
                file = %path.display(),
                offset = at,
                cut_bytes,
                %reason,
                "cutting a torn WAL tail (never acknowledged)"
            );
            self.disk.truncate(&path, at).map_err(io_err(&path))?;
        }
        // What is replayed must be durable before the node acts on it: a
        // process crash leaves unsynced bytes readable in the page cache,
        // and a later power loss would tear them out of a segment that is
        // no longer the last.
        for path in self
            .segments
            .iter()
            .map(|s| s.path.clone())
            .collect::<Vec<_>>()
        {
            self.disk.sync_file(&path).map_err(io_err(&path))?;
        }
        self.tidy_snapshots(tidy)?;
        Ok(Recovered { groups })
    }

    /// Segment numbers to replay, oldest first, and the segments before a
    /// gap: leftovers of an interrupted deletion, deleted once everything
    /// else reads.
    fn list_segments(&mut self) -> Result<(Vec<u64>, Vec<PathBuf>), StorageError> {
        let wal_dir = &self.dirs.wal;
        let mut seqs = Vec::new();
        for name in self.disk.list_dir(wal_dir).map_err(io_err(wal_dir))? {
            match wal::parse_segment_name(&name) {
                Some(seq) => seqs.push(seq),
                None => tracing::warn!(
                    file = %wal_dir.join(&name).display(),
                    "ignoring unknown file in the WAL directory"
                ),
            }
        }
        seqs.sort_unstable();
        let mut leftovers = Vec::new();
        if let Some(gap) = seqs.windows(2).rposition(|w| w[1] != w[0] + 1) {
            leftovers = seqs
                .drain(..=gap)
                .map(|seq| wal::segment_path(wal_dir, seq))
                .collect();
        }
        Ok((seqs, leftovers))
    }

    fn replay(
        &mut self,
        payload: WalPayload,
        groups: &mut BTreeMap<PartitionId, RaftStorage>,
        latest: &mut BTreeMap<PartitionId, SnapshotSource>,
    ) {
        match payload {
            WalPayload::Record(WalRecord { partition, record }) => {
                let storage = groups.entry(partition).or_default();
                match record {
                    PersistRecord::HardState(hs) => {
                        self.shapes.entry(partition).or_default().hard_state = Some(hs);
                        storage.apply(PersistRecord::HardState(hs));
                    }
                    PersistRecord::Entries(entries) => {
                        self.note_entries(partition, &entries);
                        storage.apply(PersistRecord::Entries(entries));
                    }
                    PersistRecord::Snapshot(snapshot) => {
                        self.note_snapshot(partition, snapshot.meta.clone());
                        log_shape::apply_snapshot(storage, snapshot.clone());
                        storage.tombstone = None;
                        latest.insert(partition, SnapshotSource::Inline(snapshot));
                    }
                    PersistRecord::Genesis(membership) => {
                        self.shapes.entry(partition).or_default().genesis =
                            Some(membership.clone());
                        storage.apply(PersistRecord::Genesis(membership));
                    }
                    PersistRecord::Tombstone(tombstone) => {
                        self.note_tombstone(partition, tombstone.clone());
                        storage.apply(PersistRecord::Tombstone(tombstone));
                        latest.remove(&partition);
                    }
                }
            }
            WalPayload::SnapshotRef { partition, meta } => {
                self.note_snapshot(partition, meta.clone());
                // The data is filled in from the file once the last reference is known.
                let placeholder = Snapshot {
                    meta: meta.clone(),
                    data: Bytes::new(),
                };
                let storage = groups.entry(partition).or_default();
                log_shape::apply_snapshot(storage, placeholder);
                storage.tombstone = None;
                latest.insert(partition, SnapshotSource::Reference(meta));
            }
        }
    }

    /// Loads each partition's current snapshot into `groups`, and says
    /// what to tidy once the whole directory has read (see
    /// [`Storage::tidy_snapshots`]).
    fn load_snapshots(
        &mut self,
        groups: &mut BTreeMap<PartitionId, RaftStorage>,
        latest: BTreeMap<PartitionId, SnapshotSource>,
    ) -> Result<SnapshotTidy, StorageError> {
        let listing = snapshots::list(self.disk.as_ref(), &self.dirs.snap)?;
        self.snapshot_files = listing.snapshots;
        let mut inline = Vec::new();
        for (p, source) in latest {
            let snapshot = match source {
                SnapshotSource::Reference(meta) => {
                    snapshots::load(self.disk.as_ref(), &self.dirs.snap, p, &meta)?
                }
                SnapshotSource::Inline(snapshot) => {
                    inline.push((p, snapshot.clone()));
                    snapshot
                }
            };
            self.snapshot_bytes.insert(p, snapshot.data.len() as u64);
            groups.entry(p).or_default().snapshot = Some(snapshot);
        }
        let mut orphans = Vec::new();
        for (&p, files) in &self.snapshot_files {
            let current = self
                .shapes
                .get(&p)
                .and_then(|s| s.snapshot.as_ref())
                .map(|m| m.index);
            orphans.extend(
                files
                    .iter()
                    .filter(|&&i| Some(i) != current)
                    .map(|&i| (p, i)),
            );
        }
        Ok(SnapshotTidy {
            inline,
            strays: listing.strays,
            orphans,
        })
    }

    /// Writes the snapshots the WAL held inline to files of their own, and
    /// deletes every other file among the snapshots.
    fn tidy_snapshots(&mut self, tidy: SnapshotTidy) -> Result<(), StorageError> {
        for (p, snapshot) in tidy.inline {
            self.write_snapshot_file(p, &snapshot)?;
        }
        let mut dirty: BTreeSet<PartitionId> = BTreeSet::new();
        // A stray that cannot be deleted (a directory, say) does no harm:
        // it is never read as a snapshot.
        for (p, path) in &tidy.strays {
            match self.disk.remove_file(path) {
                Ok(()) => {
                    tracing::warn!(file = %path.display(), "deleted a stray file among snapshots");
                    dirty.insert(*p);
                }
                Err(e) => tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "cannot delete a stray file among snapshots; leaving it"
                ),
            }
        }
        for (p, index) in tidy.orphans {
            let path = snapshots::snapshot_path(&self.dirs.snap, p, index);
            tracing::info!(file = %path.display(), "deleting a snapshot the WAL no longer references");
            self.disk.remove_file(&path).map_err(io_err(&path))?;
            if let Some(files) = self.snapshot_files.get_mut(&p) {
                files.remove(&index);
            }
            dirty.insert(p);
        }
        for p in dirty {
            let dir = snapshots::partition_dir(&self.dirs.snap, p);
            self.disk.sync_dir(&dir).map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// The core starts only from a log without gaps after its snapshot.
    fn check_contiguous(&self, p: PartitionId, storage: &RaftStorage) -> Result<(), StorageError> {
        let base = storage.snapshot.as_ref().map_or(0, |s| s.meta.index);
        let mut expect = base.checked_add(1);
        for e in storage.entries.iter().filter(|e| e.index > base) {
            if Some(e.index) != expect {
                return Err(StorageError::InconsistentLog {
                    dir: self.dirs.wal.clone(),
                    partition: p,
                    reason: format!(
                        "entry {} where {} was expected (snapshot at {base})",
                        e.index,
                        expect.map_or_else(|| "none".to_owned(), |i| i.to_string())
                    ),
                });
            }
            expect = e.index.checked_add(1);
        }
        Ok(())
    }

    /// Appends go to a fresh segment, opened with a checkpoint and synced
    /// with its directory entry.
    fn start_segment_after_recovery(&mut self) -> Result<(), StorageError> {
        let seq = self.segments.back().map_or(1, |s| s.seq + 1);
        self.push_segment(seq);
        let mut buf = Vec::new();
        let records = self.encode_checkpoint(&mut buf);
        let path = self.active().path.clone();
        self.disk.append(&path, &buf).map_err(io_err(&path))?;
        self.disk.sync_file(&path).map_err(io_err(&path))?;
        self.disk
            .sync_dir(&self.dirs.wal)
            .map_err(io_err(&self.dirs.wal))?;
        self.active_mut().bytes = buf.len() as u64;
        self.stats.records_written += records;
        self.stats.syncs += 1;
        Ok(())
    }
}
