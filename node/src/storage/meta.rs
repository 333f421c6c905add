//! `node.toml`: who this data directory belongs to. Written once, atomically,
//! on first start; on every later start compared with the configuration so a
//! node never runs on another node's, or another cluster's, data. Owns that
//! file only.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Dirs, NodeMeta, StorageError, io_err};
use crate::disk::Disk;

/// The on-disk format this build reads and writes.
pub(super) const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct NodeToml {
    format_version: u32,
    node_id: u64,
    cluster_id: String,
    partition_count: u32,
    replication_factor: u32,
}

/// Writes `node.toml` if absent, or checks it against `meta` if present.
/// A missing `node.toml` beside existing WAL segments is an error: the
/// directory's owner can no longer be checked.
pub(super) fn ensure(
    disk: &dyn Disk,
    dirs: &Dirs,
    meta: &NodeMeta,
    wal_present: bool,
) -> Result<(), StorageError> {
    let file = &dirs.node_toml;
    match disk.read(file) {
        Ok(bytes) => check(file, &bytes, meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if wal_present {
                return Err(StorageError::BadMeta {
                    file: file.clone(),
                    reason: "missing, but the WAL directory holds segments".to_owned(),
                });
            }
            write(disk, dirs, meta)
        }
        Err(e) => Err(io_err(file)(e)),
    }
}

fn check(file: &Path, bytes: &[u8], meta: &NodeMeta) -> Result<(), StorageError> {
    let bad = |reason: String| StorageError::BadMeta {
        file: file.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let on_disk: NodeToml = toml::from_str(text).map_err(|e| bad(e.message().to_owned()))?;
    if on_disk.format_version != FORMAT_VERSION {
        return Err(StorageError::UnsupportedFormat {
            file: file.to_path_buf(),
            found: on_disk.format_version,
            supported: FORMAT_VERSION,
        });
    }
    let mismatch = |field: &'static str, on_disk: String, configured: String| {
        Err(StorageError::MetaMismatch {
            file: file.to_path_buf(),
            field,
            on_disk,
            configured,
        })
    };
    if on_disk.node_id != meta.node_id {
        return mismatch(
            "node_id",
            on_disk.node_id.to_string(),
            meta.node_id.to_string(),
        );
    }
    if on_disk.cluster_id != meta.cluster_id {
        return mismatch(
            "cluster_id",
            format!("{:?}", on_disk.cluster_id),
            format!("{:?}", meta.cluster_id),
        );
    }
    if on_disk.partition_count != meta.partition_count {
        return mismatch(
            "partition_count",
            on_disk.partition_count.to_string(),
            meta.partition_count.to_string(),
        );
    }
    if on_disk.replication_factor != meta.replication_factor {
        return mismatch(
            "replication_factor",
            on_disk.replication_factor.to_string(),
            meta.replication_factor.to_string(),
        );
    }
    Ok(())
}

/// Temporary file, sync, rename, sync the directory: `node.toml` is either
/// absent or complete.
fn write(disk: &dyn Disk, dirs: &Dirs, meta: &NodeMeta) -> Result<(), StorageError> {
    let body = NodeToml {
        format_version: FORMAT_VERSION,
        node_id: meta.node_id,
        cluster_id: meta.cluster_id.clone(),
        partition_count: meta.partition_count,
        replication_factor: meta.replication_factor,
    };
    let text = toml::to_string(&body).map_err(|e| StorageError::BadMeta {
        file: dirs.node_toml.clone(),
        reason: format!("cannot encode: {e}"),
    })?;
    let tmp = dirs.root.join("node.toml.tmp");
    disk.write_file(&tmp, text.as_bytes())
        .map_err(io_err(&tmp))?;
    disk.sync_file(&tmp).map_err(io_err(&tmp))?;
    disk.rename(&tmp, &dirs.node_toml)
        .map_err(io_err(&dirs.node_toml))?;
    disk.sync_dir(&dirs.root).map_err(io_err(&dirs.root))
}
