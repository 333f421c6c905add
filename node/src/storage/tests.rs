//! Behaviour of [`Storage`] as the driver and an operator see it: what comes
//! back after a restart or a power loss, how many syncs a write costs, what
//! happens to damaged files. Mostly on [`MemDisk`]; a few on the real file
//! system through [`FsDisk`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use ringkv_core::io::{IoId, IoRequest, WalRecord};
use ringkv_core::node::Recovered;
use ringkv_core::raft::{
    Entry, EntryKind, HardState, Membership, PersistRecord, Snapshot, SnapshotMeta, Tombstone,
};
use ringkv_core::{NodeId, PartitionId};

use super::*;
use crate::disk::{Disk, FsDisk, MemDisk};

const P0: PartitionId = PartitionId(0);
const P1: PartitionId = PartitionId(1);
const P2: PartitionId = PartitionId(2);

fn node_meta() -> NodeMeta {
    NodeMeta {
        node_id: 1,
        cluster_id: "test-cluster".to_owned(),
        partition_count: 8,
        replication_factor: 3,
        incarnation_if_new: Incarnation(0x1234),
    }
}

fn data_dir() -> PathBuf {
    PathBuf::from("/data")
}

fn open_with(
    disk: &Arc<MemDisk>,
    opts: StorageOptions,
) -> Result<(Storage, Recovered), StorageError> {
    Storage::open(
        Arc::clone(disk) as Arc<dyn Disk>,
        data_dir(),
        node_meta(),
        opts,
    )
}

/// Opens `dir` on the real file system with the test node's meta.
fn open_on_fs(dir: &Path) -> Result<(Storage, Recovered), StorageError> {
    Storage::open(
        Arc::new(FsDisk::new()),
        dir.to_path_buf(),
        node_meta(),
        StorageOptions::default(),
    )
}

fn open(disk: &Arc<MemDisk>) -> (Storage, Recovered) {
    open_with(disk, StorageOptions::default()).expect("open")
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("v{index}.{term}")),
    }
}

fn entries(p: PartitionId, first: u64, last: u64, term: u64) -> WalRecord {
    WalRecord {
        partition: p,
        record: PersistRecord::Entries((first..=last).map(|i| entry(i, term)).collect()),
    }
}

fn hard_state(p: PartitionId, term: u64, commit: u64) -> WalRecord {
    WalRecord {
        partition: p,
        record: PersistRecord::HardState(HardState {
            term,
            vote: Some(NodeId(1)),
            commit,
        }),
    }
}

fn snapshot(p: PartitionId, index: u64, term: u64) -> WalRecord {
    WalRecord {
        partition: p,
        record: PersistRecord::Snapshot(Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
            },
            data: Bytes::from(format!("image of {p} at {index}")),
        }),
    }
}

fn request(id: u64, records: Vec<WalRecord>) -> IoRequest {
    IoRequest {
        id: IoId(id),
        records,
        must_sync: true,
    }
}

fn all_records(requests: &[IoRequest]) -> Vec<WalRecord> {
    requests.iter().flat_map(|r| r.records.clone()).collect()
}

fn wal_dir() -> PathBuf {
    data_dir().join("wal")
}

fn segment_files(disk: &dyn Disk) -> Vec<PathBuf> {
    let dir = wal_dir();
    disk.list_dir(&dir)
        .expect("wal dir")
        .into_iter()
        .map(|n| dir.join(n))
        .collect()
}

/// (offset, total length) of each framed record.
fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        spans.push((at, 8 + len));
        at += 8 + len;
    }
    spans
}

/// A history with hard states, an overwritten suffix, a compaction and an
/// install over a conflicting log.
fn mixed_history() -> Vec<IoRequest> {
    vec![
        request(1, vec![hard_state(P0, 1, 0), entries(P0, 1, 5, 1)]),
        request(2, vec![entries(P1, 1, 3, 1), hard_state(P1, 1, 2)]),
        // A new leader overwrites P0's suffix from 4.
        request(3, vec![hard_state(P0, 2, 3), entries(P0, 4, 6, 2)]),
        // Compaction at 5 keeps entry 6.
        request(4, vec![snapshot(P0, 5, 2), entries(P2, 1, 4, 1)]),
        // P2 installs a leader's snapshot that conflicts with its log.
        request(5, vec![snapshot(P2, 3, 4), hard_state(P2, 4, 3)]),
        request(6, vec![entries(P2, 4, 5, 4), entries(P0, 7, 8, 2)]),
    ]
}

#[test]
fn round_trip_recovers_what_replay_of_the_records_gives() {
    let disk = Arc::new(MemDisk::new());
    let history = mixed_history();
    let (mut storage, recovered) = open(&disk);
    assert_eq!(recovered, Recovered::default(), "a new directory is empty");
    storage.write(&history).expect("write");
    drop(storage);

    let want = Recovered::replay(all_records(&history));
    assert_eq!(
        want.groups[&P0].entries.len(),
        3,
        "6, 7, 8 after the snapshot"
    );
    assert!(want.groups[&P2].snapshot.is_some());
    let (_, recovered) = open(&disk);
    assert_eq!(recovered, want);
    // A second restart reads the checkpoint the first one wrote: same state.
    let (storage, recovered) = open(&disk);
    assert_eq!(recovered, want);
    assert_eq!(storage.stats().segments, 3);
}

#[test]
fn round_trip_on_the_real_file_system() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node-1");
    let history = mixed_history();
    let open_fs = || open_on_fs(&dir).expect("open");
    let (mut storage, _) = open_fs();
    storage.write(&history[..3]).expect("write");
    storage.write(&history[3..]).expect("write");
    drop(storage);
    let (_, recovered) = open_fs();
    assert_eq!(recovered, Recovered::replay(all_records(&history)));
    let toml = std::fs::read_to_string(dir.join("node.toml")).expect("node.toml");
    assert!(toml.contains("format_version = 2"), "{toml}");
    assert!(toml.contains("cluster_id = \"test-cluster\""), "{toml}");
}

/// One process per data directory: a second open of a directory in use
/// (a second `ringkv server` on the same `--data-dir`) fails with a clear
/// error before it reads or writes anything; once the first lets go, the
/// directory opens again. On the real file system the error names the
/// holder's pid.
#[test]
fn a_directory_in_use_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node-1");
    let open_fs = || open_on_fs(&dir);
    let (mut storage, _) = open_fs().expect("first open");
    storage
        .write(&[request(1, vec![entries(P0, 1, 3, 1)])])
        .expect("write");
    let listing = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = walk(d)
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap_or_default();
                (p.display().to_string(), bytes)
            })
            .collect();
        files.sort();
        files
    };
    let before = listing(&dir);

    let err = open_fs().expect_err("the directory is in use");
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    let msg = err.to_string();
    let pid = format!("process {}", std::process::id());
    assert!(
        msg.contains("is in use") && msg.contains(&pid) && msg.contains("nothing was written"),
        "{msg}"
    );
    assert_eq!(
        listing(&dir),
        before,
        "the refused open changed the directory"
    );

    drop(storage);
    let (_, recovered) = open_fs().expect("free again once the first node is gone");
    assert_eq!(recovered.groups[&P0].entries.len(), 3);
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The in-memory disks lock like the real one; a process's death (and a
/// power loss) releases its locks, as a kernel does.
#[test]
fn a_memdisk_lock_is_released_by_drop_or_by_the_holders_death() {
    let disk = Arc::new(MemDisk::new());
    let (first, _) = open(&disk);
    let err = open_with(&disk, StorageOptions::default()).expect_err("in use");
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    drop(first);
    let (second, _) = open(&disk);
    disk.release_locks();
    let (_third, _) = open(&disk);
    // The dead holder's late drop must not free the new holder's lock.
    drop(second);
    let err = open_with(&disk, StorageOptions::default()).expect_err("still in use");
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
}

#[test]
fn a_write_of_many_requests_syncs_the_wal_once() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    let before = (disk.file_syncs(), storage.stats().syncs);
    let requests: Vec<IoRequest> = (0..5)
        .map(|i| request(i, vec![entries(PartitionId(i as u32), 1, 3, 1)]))
        .collect();
    storage.write(&requests).expect("write");
    assert_eq!(disk.file_syncs() - before.0, 1);
    assert_eq!(storage.stats().syncs - before.1, 1);
    assert_eq!(storage.stats().records_written, 5);

    // Commit-index updates alone are written, not synced.
    let commit_only = IoRequest {
        id: IoId(9),
        records: vec![hard_state(P0, 1, 2)],
        must_sync: false,
    };
    storage.write(&[commit_only]).expect("write");
    assert_eq!(disk.file_syncs() - before.0, 1);
}

#[test]
fn mem_disk_crash_drops_unsynced_appends_only() {
    let disk = MemDisk::new();
    let dir = Path::new("/d");
    let file = dir.join("f");
    disk.create_dir_all(dir).expect("mkdir");
    disk.append(&file, b"synced").expect("append");
    disk.sync_file(&file).expect("sync");
    disk.append(&file, b" lost").expect("append");
    assert_eq!(disk.read(&file).expect("read"), b"synced lost");
    disk.crash();
    assert_eq!(disk.read(&file).expect("read"), b"synced");
    // A torn crash keeps part of the unsynced append.
    disk.append(&file, b"12345").expect("append");
    disk.crash_keeping(|_, unsynced| unsynced - 2);
    assert_eq!(disk.read(&file).expect("read"), b"synced123");
}

#[test]
fn what_write_returned_survives_a_crash() {
    let disk = Arc::new(MemDisk::new());
    let history = mixed_history();
    let (mut storage, _) = open(&disk);
    storage.write(&history).expect("write");
    let commit_only = IoRequest {
        id: IoId(7),
        records: vec![hard_state(P0, 2, 8)],
        must_sync: false,
    };
    storage.write(&[commit_only]).expect("write");
    drop(storage);
    disk.crash();
    let (_, recovered) = open(&disk);
    assert_eq!(recovered, Recovered::replay(all_records(&history)));
    assert_eq!(
        recovered.groups[&P0].hard_state.commit, 3,
        "the unsynced commit update is lost, the synced one is not"
    );
}

#[test]
fn torn_tail_is_cut_and_everything_before_it_recovers() {
    let disk = Arc::new(MemDisk::new());
    let history = mixed_history();
    let (mut storage, _) = open(&disk);
    storage.write(&history).expect("write");
    drop(storage);
    let last = segment_files(disk.as_ref()).pop().expect("a segment");
    let bytes = disk.read(&last).expect("read");
    let spans = record_spans(&bytes);
    // The last write's final record is P0's entries 7..8; cut it mid-payload.
    let (start, len) = *spans.last().expect("records");
    disk.set_durable(&last, bytes[..start + len - 3].to_vec());

    let (_, recovered) = open(&disk);
    let mut records = all_records(&history);
    records.pop();
    assert_eq!(recovered, Recovered::replay(records));
    assert_eq!(
        disk.read(&last).expect("read").len(),
        start,
        "the file is cut on disk"
    );
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let history = mixed_history();
    let open_fs = || open_on_fs(&dir);
    let (mut storage, _) = open_fs().expect("open");
    storage.write(&history).expect("write");
    drop(storage);
    let wal = dir.join("wal");
    let mut names: Vec<_> = std::fs::read_dir(&wal)
        .expect("wal")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    let last = names.pop().expect("a segment");
    let good_len = std::fs::metadata(&last).expect("metadata").len();
    let mut bytes = std::fs::read(&last).expect("read");
    bytes.extend_from_slice(&[0x17, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5]);
    std::fs::write(&last, &bytes).expect("write garbage");

    let (_, recovered) = open_fs().expect("a torn tail is not an error");
    assert_eq!(recovered, Recovered::replay(all_records(&history)));
    assert_eq!(std::fs::metadata(&last).expect("metadata").len(), good_len);
}

#[test]
fn a_flipped_byte_in_a_middle_record_is_an_error_naming_file_and_offset() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    storage.write(&mixed_history()).expect("write");
    drop(storage);
    let last = segment_files(disk.as_ref()).pop().expect("a segment");
    let mut bytes = disk.read(&last).expect("read");
    let spans = record_spans(&bytes);
    let (start, len) = spans[spans.len() / 2];
    bytes[start + len - 1] ^= 0x40;
    disk.set_durable(&last, bytes);

    let err = open_with(&disk, StorageOptions::default()).expect_err("corrupt");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&last.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {start}")), "{msg}");
}

#[test]
fn damage_in_an_older_segment_is_an_error_even_at_its_end() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    storage.write(&mixed_history()).expect("write");
    drop(storage);
    let (_, _) = open(&disk); // recovery starts a new segment
    let first = segment_files(disk.as_ref()).remove(0);
    let bytes = disk.read(&first).expect("read");
    let (start, _) = *record_spans(&bytes).last().expect("records");
    disk.set_durable(&first, bytes[..bytes.len() - 1].to_vec());

    let err = open_with(&disk, StorageOptions::default()).expect_err("corrupt");
    let msg = err.to_string();
    assert!(msg.contains(&first.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {start}")), "{msg}");
}

#[test]
fn node_toml_guards_the_directory() {
    let disk = Arc::new(MemDisk::new());
    let dir = PathBuf::from("/not/yet/there");
    let open_as = |meta: NodeMeta| {
        Storage::open(
            Arc::clone(&disk) as Arc<dyn Disk>,
            dir.clone(),
            meta,
            StorageOptions::default(),
        )
    };
    let (storage, _) = open_as(node_meta()).expect("a missing directory is created");
    drop(storage);
    assert_eq!(
        disk.list_dir(&dir).expect("created"),
        ["LOCK", "node.toml", "snap", "wal"]
    );

    let other = NodeMeta {
        partition_count: 16,
        ..node_meta()
    };
    let msg = open_as(other).expect_err("mismatch").to_string();
    assert!(msg.contains("partition_count"), "{msg}");
    assert!(msg.contains("8") && msg.contains("16"), "{msg}");
    assert!(msg.contains("/not/yet/there/node.toml"), "{msg}");

    let other = NodeMeta {
        cluster_id: "elsewhere".to_owned(),
        ..node_meta()
    };
    let msg = open_as(other).expect_err("mismatch").to_string();
    assert!(
        msg.contains("cluster_id") && msg.contains("elsewhere"),
        "{msg}"
    );

    disk.set_durable(
        &dir.join("node.toml"),
        b"format_version = 3\nnode_id = 1\ncluster_id = \"test-cluster\"\npartition_count = 8\nreplication_factor = 3\n".to_vec(),
    );
    let err = open_as(node_meta()).expect_err("newer format");
    assert!(
        matches!(err, StorageError::UnsupportedFormat { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer ringkv"), "{err}");

    // Format 1 placed keys by another hash: refused, and told what to do.
    disk.set_durable(
        &dir.join("node.toml"),
        b"format_version = 1\nnode_id = 1\ncluster_id = \"test-cluster\"\npartition_count = 8\nreplication_factor = 3\n".to_vec(),
    );
    let err = open_as(node_meta()).expect_err("older format").to_string();
    assert!(
        err.contains("format version 1 is not supported (this build reads 2)")
            && err.contains("Redis hash slots")
            && err.contains("empty data directory"),
        "{err}"
    );
}

#[test]
fn a_wal_without_node_toml_is_refused() {
    let disk = Arc::new(MemDisk::new());
    let (storage, _) = open(&disk);
    drop(storage);
    disk.remove_file(&data_dir().join("node.toml")).expect("rm");
    let msg = open_with(&disk, StorageOptions::default())
        .expect_err("refused")
        .to_string();
    assert!(
        msg.contains("node.toml") && msg.contains("missing"),
        "{msg}"
    );
}

fn tiny_segments() -> StorageOptions {
    StorageOptions {
        segment_bytes: 200,
        max_segments: 2,
    }
}

/// The WAL may outgrow `max_segments` while it holds fewer bytes than the
/// snapshots that compacting would rewrite: a snapshot costs a partition's
/// whole state, so forcing one every few segments would rewrite far more
/// than is written. Past the snapshots' size, the old segments' partitions
/// are named as before; the allowance survives a restart.
#[test]
fn the_wal_may_grow_to_the_size_of_the_snapshots_before_forcing_compaction() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open_with(&disk, tiny_segments()).expect("open");
    let mut big = snapshot(P0, 1, 1);
    if let PersistRecord::Snapshot(s) = &mut big.record {
        s.data = Bytes::from(vec![b'x'; 4000]);
    }
    let mut n = 0;
    let mut write = |storage: &mut Storage, records| {
        n += 1;
        storage.write(&[request(n, records)]).expect("write");
    };
    write(
        &mut storage,
        vec![hard_state(P0, 1, 0), entries(P0, 1, 1, 1), big],
    );
    let mut i = 0;
    while storage.stats().wal_bytes < 3000 {
        i += 1;
        write(&mut storage, vec![entries(P1, i, i, 1)]);
    }
    let stats = storage.stats();
    assert!(
        stats.segments > 2 * tiny_segments().max_segments,
        "{stats:?}"
    );
    assert_eq!(stats.snapshot_bytes, 4000);
    assert_eq!(
        storage.partitions_pinning_old_segments(),
        [],
        "a WAL smaller than the snapshots is left alone: {stats:?}"
    );
    drop(storage);
    let (mut storage, _) = open_with(&disk, tiny_segments()).expect("reopen");
    assert_eq!(storage.stats().snapshot_bytes, 4000, "known after recovery");
    assert_eq!(storage.partitions_pinning_old_segments(), []);
    while storage.stats().wal_bytes < 5000 {
        i += 1;
        write(&mut storage, vec![entries(P1, i, i, 1)]);
    }
    assert_eq!(storage.partitions_pinning_old_segments(), [P1]);
}

#[test]
fn snapshots_let_old_segments_go_and_recovery_still_finds_everything() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open_with(&disk, tiny_segments()).expect("open");
    let mut history = vec![request(0, vec![hard_state(P0, 1, 0), hard_state(P1, 1, 0)])];
    for i in 1..=30 {
        history.push(request(i, vec![entries(P0, i, i, 1), entries(P1, i, i, 1)]));
    }
    for r in &history {
        storage.write(std::slice::from_ref(r)).expect("write");
    }
    let grown = storage.stats().segments;
    assert!(grown > 4, "tiny segments roll over: {grown}");
    assert_eq!(
        storage.stats().segments_deleted,
        0,
        "nothing is covered yet"
    );
    assert_eq!(storage.partitions_pinning_old_segments(), [P0, P1]);

    // P0 compacts everything: P1 alone still pins.
    let r = request(31, vec![snapshot(P0, 30, 1)]);
    storage.write(std::slice::from_ref(&r)).expect("write");
    history.push(r);
    assert_eq!(storage.partitions_pinning_old_segments(), [P1]);
    assert_eq!(storage.stats().segments_deleted, 0);

    // P1 compacts up to 28: entries 29, 30 stay needed.
    let r = request(32, vec![snapshot(P1, 28, 1), hard_state(P1, 1, 28)]);
    storage.write(std::slice::from_ref(&r)).expect("write");
    history.push(r);
    let stats = storage.stats();
    assert!(stats.segments_deleted > 0, "{stats:?}");
    assert!(stats.segments < grown, "{stats:?}");
    assert!(
        storage
            .partitions_pinning_old_segments()
            .iter()
            .all(|&p| p == P1),
        "P0 is fully compacted"
    );

    let r = request(33, vec![entries(P1, 31, 32, 1), snapshot(P0, 30, 1)]);
    storage.write(std::slice::from_ref(&r)).expect("write");
    history.push(r);
    drop(storage);

    let (storage, recovered) = open_with(&disk, tiny_segments()).expect("reopen");
    let want = Recovered::replay(all_records(&history));
    assert_eq!(recovered, want);
    let p1 = &recovered.groups[&P1];
    assert_eq!(p1.snapshot.as_ref().map(|s| s.meta.index), Some(28));
    assert_eq!(
        p1.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        [29, 30, 31, 32]
    );
    assert_eq!(p1.hard_state.commit, 28);
    assert!(storage.stats().segments < grown, "{:?}", storage.stats());
    // Only the current snapshot file of each partition is left.
    let snap = data_dir().join("snap");
    assert_eq!(
        disk.list_dir(&snap.join("1")).expect("p1 dir"),
        ["00000000000000000028.snap"]
    );
}

/// A destroyed replica: once its tombstone is durable its snapshot files
/// are deleted and its entries stop pinning old segments; the tombstone (and
/// the hard state) outlive the segments that held them, through the
/// checkpoints, so no restart brings the group back; a later snapshot (the
/// replica added again) starts it afresh.
#[test]
fn a_tombstone_deletes_the_group_and_outlives_old_segments() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open_with(&disk, tiny_segments()).expect("open");
    let genesis = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let mut history = vec![request(
        0,
        vec![
            WalRecord {
                partition: P0,
                record: PersistRecord::Genesis(genesis.clone()),
            },
            WalRecord {
                partition: P1,
                record: PersistRecord::Genesis(genesis.clone()),
            },
            hard_state(P0, 1, 0),
            hard_state(P1, 1, 0),
        ],
    )];
    for i in 1..=20 {
        history.push(request(i, vec![entries(P0, i, i, 1), entries(P1, i, i, 1)]));
    }
    history.push(request(21, vec![snapshot(P0, 10, 1)]));
    for r in &history {
        storage.write(std::slice::from_ref(r)).expect("write");
    }
    assert_eq!(storage.partitions_pinning_old_segments(), [P0, P1]);
    let p0_dir = data_dir().join("snap").join("0");
    assert_eq!(disk.list_dir(&p0_dir).expect("p0 dir").len(), 1);

    let tombstone = Tombstone {
        removed_at: 20,
        voters: vec![NodeId(2), NodeId(3), NodeId(4)],
    };
    let r = request(
        22,
        vec![WalRecord {
            partition: P0,
            record: PersistRecord::Tombstone(tombstone.clone()),
        }],
    );
    storage.write(std::slice::from_ref(&r)).expect("write");
    history.push(r);
    assert!(
        disk.list_dir(&p0_dir).expect("p0 dir").is_empty(),
        "the destroyed replica's snapshot is deleted"
    );
    assert_eq!(
        storage.partitions_pinning_old_segments(),
        [P1],
        "a destroyed replica pins nothing"
    );

    // P1 compacts: every old segment goes, the tombstone's too.
    let r = request(23, vec![snapshot(P1, 20, 1)]);
    storage.write(std::slice::from_ref(&r)).expect("write");
    history.push(r);
    assert!(storage.stats().segments_deleted > 0);
    drop(storage);
    let (_, recovered) = open_with(&disk, tiny_segments()).expect("reopen");
    assert_eq!(recovered, Recovered::replay(all_records(&history)));
    let p0 = &recovered.groups[&P0];
    assert_eq!(p0.tombstone.as_ref(), Some(&tombstone));
    assert!(p0.snapshot.is_none() && p0.entries.is_empty() && p0.genesis.is_none());
    assert_eq!(p0.hard_state.term, 1, "the hard state stays");
    assert_eq!(recovered.groups[&P1].genesis.as_ref(), Some(&genesis));

    // Added again: a snapshot past the removal starts a new replica.
    let (mut storage, _) = open_with(&disk, tiny_segments()).expect("reopen");
    let r = request(24, vec![snapshot(P0, 25, 2)]);
    storage.write(std::slice::from_ref(&r)).expect("write");
    history.push(r);
    drop(storage);
    let (_, recovered) = open_with(&disk, tiny_segments()).expect("reopen");
    assert_eq!(recovered, Recovered::replay(all_records(&history)));
    let p0 = &recovered.groups[&P0];
    assert!(p0.tombstone.is_none());
    assert_eq!(p0.snapshot.as_ref().map(|s| s.meta.index), Some(25));
}

#[test]
fn an_install_over_a_conflicting_tail_keeps_that_tail_dead_after_truncation() {
    let disk = Arc::new(MemDisk::new());
    let one_write_per_segment = StorageOptions {
        segment_bytes: 1,
        max_segments: 2,
    };
    let (mut storage, _) = open_with(&disk, one_write_per_segment.clone()).expect("open");
    let mut history = Vec::new();
    // Entries 1..=10 of term 1, each in its own segment.
    for i in 1..=10 {
        history.push(request(i, vec![entries(P0, i, i, 1)]));
    }
    // A leader of term 3 installs a snapshot at 5 whose entry 5 differs.
    history.push(request(11, vec![snapshot(P0, 5, 3), hard_state(P0, 3, 5)]));
    for r in &history {
        storage.write(std::slice::from_ref(r)).expect("write");
    }
    // The segments of entries 1..=4 are covered and go; the one holding the
    // conflicting entry 5 must stay while entries 6..=10 survive, or replay
    // would not know they conflict.
    assert_eq!(storage.stats().segments_deleted, 4);
    drop(storage);
    let (_, recovered) = open_with(&disk, one_write_per_segment).expect("reopen");
    assert_eq!(recovered, Recovered::replay(all_records(&history)));
    assert!(recovered.groups[&P0].entries.is_empty());
}

#[test]
fn a_corrupt_or_missing_referenced_snapshot_is_an_error_naming_it() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    storage.write(&mixed_history()).expect("write");
    drop(storage);
    let file = data_dir().join("snap/0/00000000000000000005.snap");
    let mut bytes = disk.read(&file).expect("snapshot file");
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    disk.set_durable(&file, bytes.clone());
    let err = open_with(&disk, StorageOptions::default()).expect_err("corrupt");
    assert!(matches!(err, StorageError::CorruptSnapshot { .. }), "{err}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );

    disk.set_durable(&file, bytes[..n / 2].to_vec());
    let err = open_with(&disk, StorageOptions::default()).expect_err("torn");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );

    disk.remove_file(&file).expect("rm");
    let err = open_with(&disk, StorageOptions::default()).expect_err("missing");
    assert!(matches!(err, StorageError::MissingSnapshot { .. }), "{err}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn snapshot_files_the_wal_does_not_reference_are_deleted() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    let history = mixed_history();
    storage.write(&history).expect("write");
    drop(storage);
    // A snapshot written just before a crash, its reference never made it;
    // and a leftover temporary.
    let dir = data_dir().join("snap/0");
    disk.set_durable(&dir.join("00000000000000000009.snap"), b"orphan".to_vec());
    disk.set_durable(&dir.join("00000000000000000009.snap.tmp"), b"tmp".to_vec());
    let (_, recovered) = open(&disk);
    assert_eq!(recovered, Recovered::replay(all_records(&history)));
    assert_eq!(
        disk.list_dir(&dir).expect("dir"),
        ["00000000000000000005.snap"]
    );
}

#[test]
fn older_snapshot_files_go_once_the_newer_reference_is_durable() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    storage
        .write(&[request(1, vec![entries(P0, 1, 9, 1), snapshot(P0, 4, 1)])])
        .expect("write");
    storage
        .write(&[request(2, vec![snapshot(P0, 8, 1)])])
        .expect("write");
    assert_eq!(storage.stats().snapshots_written, 2);
    assert_eq!(
        disk.list_dir(&data_dir().join("snap/0")).expect("dir"),
        ["00000000000000000008.snap"]
    );
}

/// A [`MemDisk`] whose syncs fail on demand.
#[derive(Default)]
struct FlakyDisk {
    inner: MemDisk,
    fail_syncs: std::sync::atomic::AtomicBool,
}

impl Disk for FlakyDisk {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn append(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        self.inner.append(path, data)
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_file(path, data)
    }
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        if self.fail_syncs.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("injected EIO"));
        }
        self.inner.sync_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        self.inner.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn lock_exclusive(&self, path: &Path) -> std::io::Result<crate::disk::DiskLock> {
        self.inner.lock_exclusive(path)
    }
}

#[test]
fn a_failed_sync_fails_the_write_and_every_later_one() {
    let disk = Arc::new(FlakyDisk::default());
    let (mut storage, _) = Storage::open(
        Arc::clone(&disk) as Arc<dyn Disk>,
        data_dir(),
        node_meta(),
        StorageOptions::default(),
    )
    .expect("open");
    disk.fail_syncs
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let err = storage
        .write(&[request(1, vec![entries(P0, 1, 1, 1)])])
        .expect_err("sync fails");
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    assert!(err.to_string().contains("/data/wal/"), "{err}");
    disk.fail_syncs
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let err = storage
        .write(&[request(2, vec![hard_state(P0, 1, 0)])])
        .expect_err("refused after a failure");
    assert!(matches!(err, StorageError::Failed { .. }), "{err}");
}

// ------------------------------------------------------ crash property test

/// One step of a random history: abstract numbers that [`Model`] turns into
/// records valid for the partition's current log.
#[derive(Clone, Debug)]
enum Step {
    Write {
        records: Vec<(u32, u8, u16, u16)>,
        sync: bool,
    },
    /// Power loss; `keep` picks how much of each unsynced append survives.
    Crash {
        keep: u16,
    },
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let record = (0u32..3, any::<u8>(), any::<u16>(), any::<u16>());
    prop_oneof![
        6 => (proptest::collection::vec(record, 1..5), any::<bool>())
            .prop_map(|(records, sync)| Step::Write { records, sync }),
        1 => any::<u16>().prop_map(|keep| Step::Crash { keep }),
        1 => Just(Step::Restart),
    ]
}

/// Generates records a Raft group could ask for, given what it holds.
#[derive(Default)]
struct Model {
    term: u64,
}

impl Model {
    fn record(
        &mut self,
        state: &ringkv_core::raft::RaftStorage,
        (p, kind, a, b): (u32, u8, u16, u16),
    ) -> WalRecord {
        let partition = PartitionId(p);
        let (a, b) = (u64::from(a), u64::from(b));
        let snap = state.snapshot.as_ref().map_or(0, |s| s.meta.index);
        let last = state.entries.last().map_or(snap, |e| e.index);
        self.term = self.term.max(state.hard_state.term).max(1);
        if let Some(t) = &state.tombstone {
            // A destroyed replica: only its hard state moves, until it is
            // added again by a leader's snapshot past its removal.
            let record = if kind % 2 == 0 {
                self.term += 1;
                PersistRecord::Snapshot(Snapshot {
                    meta: SnapshotMeta {
                        index: t.removed_at + 1 + a % 7,
                        term: self.term,
                        membership: Membership::new([NodeId(1), NodeId(3)]),
                    },
                    data: Bytes::from(format!("{p} again")),
                })
            } else {
                PersistRecord::HardState(HardState {
                    term: self.term,
                    vote: None,
                    commit: 0,
                })
            };
            return WalRecord { partition, record };
        }
        let record = match kind % 7 {
            5 if a % 2 == 0 => PersistRecord::Genesis(Membership::new([NodeId(1), NodeId(2)])),
            6 if a % 4 == 0 => PersistRecord::Tombstone(Tombstone {
                removed_at: state.hard_state.commit.max(snap),
                voters: vec![NodeId(2), NodeId(3)],
            }),
            1 | 2 => {
                if a % 5 == 0 {
                    self.term += 1;
                }
                let at = snap + 1 + a % (last - snap + 1);
                let data = Bytes::from(vec![kind; (b % 60) as usize]);
                PersistRecord::Entries(
                    (at..at + 1 + b % 4)
                        .map(|index| Entry {
                            index,
                            term: self.term,
                            kind: EntryKind::Normal,
                            data: data.clone(),
                        })
                        .collect(),
                )
            }
            3 if last > snap => {
                // Compaction at an entry we hold.
                let index = snap + 1 + a % (last - snap);
                let term = state
                    .entries
                    .iter()
                    .find(|e| e.index == index)
                    .map_or(0, |e| e.term);
                PersistRecord::Snapshot(Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term,
                        membership: Membership::new([NodeId(1)]),
                    },
                    data: Bytes::from(format!("{p}@{index}")),
                })
            }
            4 if a % 3 == 0 => {
                // A newer leader's snapshot, conflicting with all we hold.
                self.term += 1;
                let index = snap + 1 + a % (last - snap + 5);
                PersistRecord::Snapshot(Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term: self.term,
                        membership: Membership::new([NodeId(1), NodeId(2)]),
                    },
                    data: Bytes::from(format!("{p}@{index}/{}", self.term)),
                })
            }
            _ => PersistRecord::HardState(HardState {
                term: self.term,
                vote: Some(NodeId(1 + b % 3)),
                commit: snap.max(b % (last + 1)),
            }),
        };
        WalRecord { partition, record }
    }
}

fn check_history(segment_bytes: u64, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let disk = Arc::new(MemDisk::new());
    let opts = StorageOptions {
        segment_bytes,
        max_segments: 2,
    };
    let (mut storage, _) = open_with(&disk, opts.clone()).expect("open");
    let mut model = Model::default();
    // Records of every write that returned, and how many are surely durable.
    let mut written: Vec<WalRecord> = Vec::new();
    let mut durable = 0;
    let mut state = Recovered::default();
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Write { records, sync } => {
                let mut recs = Vec::new();
                let mut must_sync = sync;
                for r in records {
                    let group = state.groups.entry(PartitionId(r.0)).or_default();
                    let rec = model.record(group, r);
                    must_sync |= rec.record.must_sync(&group.hard_state);
                    group.apply(rec.record.clone());
                    recs.push(rec);
                }
                let req = IoRequest {
                    id: IoId(i as u64),
                    records: recs.clone(),
                    must_sync,
                };
                storage.write(&[req]).expect("write");
                written.extend(recs);
                if must_sync {
                    durable = written.len();
                }
            }
            Step::Crash { keep } => {
                drop(storage);
                disk.crash_keeping(|_, unsynced| usize::from(keep) % (unsynced + 1));
                let (s, recovered) = open_with(&disk, opts.clone()).expect("reopen after crash");
                // Some prefix of the written records, at least the durable ones.
                let Some(k) = (durable..=written.len())
                    .rev()
                    .find(|&k| Recovered::replay(written[..k].iter().cloned()) == recovered)
                else {
                    return Err(TestCaseError::fail(format!(
                        "recovered state is no prefix of {} written records ({durable} durable)",
                        written.len()
                    )));
                };
                written.truncate(k);
                durable = k;
                state = recovered;
                storage = s;
            }
            Step::Restart => {
                drop(storage);
                let (s, recovered) = open_with(&disk, opts.clone()).expect("reopen");
                prop_assert_eq!(&recovered, &Recovered::replay(written.iter().cloned()));
                state = recovered;
                storage = s;
            }
        }
    }
    drop(storage);
    let (_, recovered) = open_with(&disk, opts).expect("final reopen");
    prop_assert_eq!(recovered, Recovered::replay(written));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any history of writes, restarts and (torn) power losses recovers a
    /// prefix of what was written that holds every synced write.
    #[test]
    fn crashes_recover_a_prefix_holding_every_synced_write(
        // 1: every write starts a segment, so old ones go as soon as covered.
        segment_bytes in prop_oneof![Just(1u64), Just(300), Just(64 << 20)],
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        check_history(segment_bytes, steps)?;
    }
}

#[test]
fn a_log_with_a_gap_is_refused_rather_than_handed_to_the_core() {
    // Each record is intact, but together they leave entries 4 and 5 out:
    // the core would refuse to start from that (it asserts no gaps).
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    storage
        .write(&[
            request(1, vec![entries(P0, 1, 3, 1)]),
            request(2, vec![entries(P0, 6, 7, 1)]),
        ])
        .expect("write");
    drop(storage);
    let err = open_with(&disk, StorageOptions::default()).expect_err("gap");
    assert!(
        matches!(err, StorageError::InconsistentLog { partition: P0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/data/wal"), "{err}");
}

#[test]
fn a_directory_keeps_the_incarnation_it_was_created_with() {
    let disk = Arc::new(MemDisk::new());
    let (storage, _) = open(&disk);
    assert_eq!(storage.incarnation(), Incarnation(0x1234));
    assert_eq!(storage.cluster_record(), None);
    drop(storage);
    let reopened = Storage::open(
        Arc::clone(&disk) as Arc<dyn Disk>,
        data_dir(),
        NodeMeta {
            incarnation_if_new: Incarnation(0x9999),
            ..node_meta()
        },
        StorageOptions::default(),
    )
    .expect("reopen")
    .0;
    assert_eq!(reopened.incarnation(), Incarnation(0x1234));
}

#[test]
fn the_cluster_record_survives_a_restart_and_corruption_is_named() {
    use ringkv_core::identity::{ClusterRecord, ClusterUid};
    let disk = Arc::new(MemDisk::new());
    let (storage, _) = open(&disk);
    drop(storage);
    let record = ClusterRecord {
        uid: ClusterUid(0xabc),
        members: [
            (NodeId(1), Incarnation(0x1234)),
            (NodeId(2), Incarnation(7)),
        ]
        .into_iter()
        .collect(),
    };
    save_cluster_record(
        disk.as_ref(),
        &data_dir(),
        &ClusterFile::founded(record.clone()),
    )
    .expect("saved");
    let (storage, _) = open(&disk);
    assert_eq!(storage.cluster_record(), Some(&record));
    assert_eq!(storage.cluster_file().map(|c| c.joined), Some(false));
    drop(storage);
    // A node that joined keeps that, and the members' addresses.
    let joined = ClusterFile {
        record: record.clone(),
        joined: true,
        addresses: [(NodeId(2), "10.0.0.2:9091".to_owned())]
            .into_iter()
            .collect(),
        tokens: crate::auth::Tokens {
            version: 7,
            by_id: [(
                "ops".to_owned(),
                ringkv_core::access::TokenRecord {
                    name: "on call".into(),
                    role: ringkv_core::access::Role::Write,
                    scope: bytes::Bytes::from_static(b"app/\xff"),
                    secret_hash: ringkv_core::access::hash_secret("s"),
                },
            )]
            .into_iter()
            .collect(),
        },
    };
    save_cluster_record(disk.as_ref(), &data_dir(), &joined).expect("saved");
    let (storage, _) = open(&disk);
    assert_eq!(storage.cluster_file(), Some(&joined));
    drop(storage);
    disk.set_durable(
        &data_dir().join("cluster.toml"),
        b"uid = \"zz\"\n[members]\n".to_vec(),
    );
    let msg = open_with(&disk, StorageOptions::default())
        .expect_err("corrupt")
        .to_string();
    assert!(msg.contains("cluster.toml") && msg.contains("uid"), "{msg}");
}

#[test]
fn a_directory_from_before_incarnations_is_given_one() {
    let disk = Arc::new(MemDisk::new());
    let (storage, _) = open(&disk);
    drop(storage);
    disk.set_durable(
        &data_dir().join("node.toml"),
        b"format_version = 2\nnode_id = 1\ncluster_id = \"test-cluster\"\npartition_count = 8\nreplication_factor = 3\n".to_vec(),
    );
    let (storage, _) = open(&disk);
    assert_eq!(storage.incarnation(), Incarnation(0x1234));
    let text =
        String::from_utf8(disk.read(&data_dir().join("node.toml")).expect("read")).expect("utf-8");
    assert!(
        text.contains("incarnation = \"00000000000000000000000000001234\""),
        "{text}"
    );
}

// Found by fuzzing (fuzz/fuzz_targets/recovery.rs): what recovery may
// repair, it repairs only once the whole directory has read.

#[test]
fn a_directory_that_does_not_open_is_left_as_it_was() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    storage.write(&mixed_history()).expect("write");
    drop(storage);
    // A torn WAL tail (recovery would cut it), a node.toml from before
    // incarnations (recovery would rewrite it), an orphan snapshot
    // (recovery would delete it) ... and a corrupt referenced snapshot.
    let last = segment_files(disk.as_ref()).pop().expect("a segment");
    let bytes = disk.read(&last).expect("read");
    disk.set_durable(&last, bytes[..bytes.len() - 3].to_vec());
    disk.set_durable(
        &data_dir().join("node.toml"),
        b"format_version = 2\nnode_id = 1\ncluster_id = \"test-cluster\"\npartition_count = 8\nreplication_factor = 3\n".to_vec(),
    );
    disk.set_durable(
        &data_dir().join("snap/0/00000000000000000009.snap"),
        b"orphan".to_vec(),
    );
    let referenced = data_dir().join("snap/0/00000000000000000005.snap");
    let mut snapshot = disk.read(&referenced).expect("snapshot file");
    let n = snapshot.len();
    snapshot[n - 2] ^= 1;
    disk.set_durable(&referenced, snapshot);
    let before = disk.durable_image();

    let err = open_with(&disk, StorageOptions::default()).expect_err("corrupt snapshot");
    assert!(matches!(err, StorageError::CorruptSnapshot { .. }), "{err}");
    assert_eq!(
        disk.durable_image(),
        before,
        "a failed open changed the directory"
    );
}

#[test]
fn a_partition_directory_has_one_name_and_strangers_among_snapshots_stay_harmless() {
    let disk = Arc::new(MemDisk::new());
    let (mut storage, _) = open(&disk);
    let history = mixed_history();
    storage.write(&history).expect("write");
    drop(storage);
    // `snap/00` is not partition 0's directory (that is `snap/0`): its
    // file is no snapshot of partition 0. And a directory inside a
    // partition's directory cannot be deleted as a stray file: it stays.
    disk.set_durable(
        &data_dir().join("snap/00/00000000000000000009.snap"),
        b"stranger".to_vec(),
    );
    disk.create_dir_all(&data_dir().join("snap/0/subdir"))
        .expect("mkdir");
    let (_, recovered) = open(&disk);
    assert_eq!(recovered, Recovered::replay(all_records(&history)));
    let (_, again) = open(&disk);
    assert_eq!(again, recovered);
    assert_eq!(
        disk.read(&data_dir().join("snap/00/00000000000000000009.snap"))
            .expect("left alone"),
        b"stranger"
    );
}

#[test]
fn a_segment_number_ringkv_never_writes_is_refused_untouched() {
    let disk = Arc::new(MemDisk::new());
    let (storage, _) = open(&disk);
    drop(storage);
    // Found by fuzzing: u64::MAX left no number for the next segment.
    let name = wal_dir().join(format!("{}.log", u64::MAX));
    disk.set_durable(&name, Vec::new());
    let before = disk.durable_image();
    let err = open_with(&disk, StorageOptions::default()).expect_err("refused");
    assert!(err.to_string().contains("2^63"), "{err}");
    assert_eq!(disk.durable_image(), before);
}
