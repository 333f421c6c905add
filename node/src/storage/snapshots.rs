//! Snapshot files: `<snap_dir>/<partition>/<index, 20 digits>.snap`, each one
//! framed record (`[len][crc32c][ringkv_core::wire::encode_snapshot]`),
//! written atomically. Owns naming, encoding, loading and listing; which
//! snapshot is current, and when an old one may go, is decided by `super`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use ringkv_core::PartitionId;
use ringkv_core::raft::{Snapshot, SnapshotMeta};
use ringkv_core::wire;

use super::{Dirs, StorageError, io_err};
use crate::disk::Disk;

const SNAP_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";
const INDEX_DIGITS: usize = 20;

pub(super) fn partition_dir(snap_dir: &Path, p: PartitionId) -> PathBuf {
    snap_dir.join(p.0.to_string())
}

pub(super) fn snapshot_path(snap_dir: &Path, p: PartitionId, index: u64) -> PathBuf {
    partition_dir(snap_dir, p).join(format!("{index:0INDEX_DIGITS$}{SNAP_SUFFIX}"))
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SNAP_SUFFIX)?;
    if digits.len() != INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The partition of a directory name, in the one form `partition_dir`
/// writes: `7`, never `07` (two names for one partition would have its
/// snapshots in two places, found by fuzzing).
fn parse_partition_name(name: &str) -> Option<PartitionId> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let p = name.parse().ok().map(PartitionId)?;
    (p.0.to_string() == name).then_some(p)
}

/// Writes `snapshot` durably under its final name: a temporary file, synced,
/// renamed into place, and the directory synced. `dir_exists`: whether the
/// partition's directory is known to exist already (else it is created and
/// its parent synced).
pub(super) fn write(
    disk: &dyn Disk,
    dirs: &Dirs,
    p: PartitionId,
    snapshot: &Snapshot,
    dir_exists: bool,
) -> Result<(), StorageError> {
    let dir = partition_dir(&dirs.snap, p);
    if !dir_exists {
        disk.create_dir_all(&dir).map_err(io_err(&dir))?;
        disk.sync_dir(&dirs.snap).map_err(io_err(&dirs.snap))?;
    }
    let path = snapshot_path(&dirs.snap, p, snapshot.meta.index);
    let mut tmp = path.clone().into_os_string();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let mut bytes = Vec::new();
    let payload = wire::encode_snapshot(snapshot);
    let len = u32::try_from(payload.len()).map_err(|_| StorageError::RecordTooLarge {
        file: path.clone(),
        size: payload.len(),
        limit: u32::MAX as usize,
    })?;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    disk.write_file(&tmp, &bytes).map_err(io_err(&tmp))?;
    disk.sync_file(&tmp).map_err(io_err(&tmp))?;
    disk.rename(&tmp, &path).map_err(io_err(&path))?;
    disk.sync_dir(&dir).map_err(io_err(&dir))
}

/// Loads the snapshot `meta` names, checking its framing and that it is the
/// snapshot the WAL's reference describes.
pub(super) fn load(
    disk: &dyn Disk,
    snap_dir: &Path,
    p: PartitionId,
    meta: &SnapshotMeta,
) -> Result<Snapshot, StorageError> {
    let file = snapshot_path(snap_dir, p, meta.index);
    let bytes = match disk.read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::MissingSnapshot { file });
        }
        Err(e) => return Err(io_err(&file)(e)),
    };
    let corrupt = |reason: String| StorageError::CorruptSnapshot {
        file: file.clone(),
        reason,
    };
    let (Some(len), Some(crc), Some(payload)) = (bytes.get(0..4), bytes.get(4..8), bytes.get(8..))
    else {
        return Err(corrupt(format!(
            "{} bytes: shorter than its header",
            bytes.len()
        )));
    };
    let le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let (len, stored) = (le(len) as usize, le(crc));
    if len != payload.len() {
        return Err(corrupt(format!(
            "header says {len} bytes of payload, the file holds {}",
            payload.len()
        )));
    }
    let computed = crc32c::crc32c(payload);
    if computed != stored {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let snapshot =
        wire::decode_snapshot(payload).map_err(|e| corrupt(format!("undecodable: {e}")))?;
    if &snapshot.meta != meta {
        return Err(corrupt(format!(
            "holds snapshot {}/{} but the WAL references {}/{}",
            snapshot.meta.term, snapshot.meta.index, meta.term, meta.index
        )));
    }
    Ok(snapshot)
}

/// What the snapshot directory holds.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Snapshot indices on disk, per partition directory.
    pub snapshots: BTreeMap<PartitionId, BTreeSet<u64>>,
    /// Files that are no snapshot of ours (leftover temporaries, strangers)
    /// inside partition directories.
    pub strays: Vec<(PartitionId, PathBuf)>,
}

pub(super) fn list(disk: &dyn Disk, snap_dir: &Path) -> Result<Listing, StorageError> {
    let mut listing = Listing::default();
    for name in disk.list_dir(snap_dir).map_err(io_err(snap_dir))? {
        let Some(p) = parse_partition_name(&name) else {
            tracing::warn!(file = %snap_dir.join(&name).display(), "ignoring unknown entry in snapshot directory");
            continue;
        };
        let dir = partition_dir(snap_dir, p);
        let indices = listing.snapshots.entry(p).or_default();
        for file in disk.list_dir(&dir).map_err(io_err(&dir))? {
            match parse_snapshot_name(&file) {
                Some(index) => {
                    indices.insert(index);
                }
                None => listing.strays.push((p, dir.join(file))),
            }
        }
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = snapshot_path(Path::new("/d/snap"), PartitionId(7), 300);
        assert_eq!(p, Path::new("/d/snap/7/00000000000000000300.snap"));
        assert_eq!(parse_snapshot_name("00000000000000000300.snap"), Some(300));
        assert_eq!(parse_snapshot_name("00000000000000000300.snap.tmp"), None);
        assert_eq!(parse_partition_name("7"), Some(PartitionId(7)));
        assert_eq!(parse_partition_name("7x"), None);
        assert_eq!(parse_partition_name("0"), Some(PartitionId(0)));
        assert_eq!(parse_partition_name("07"), None, "one name per partition");
        assert_eq!(parse_partition_name("00"), None, "one name per partition");
    }
}
