//! `node.toml`: who this data directory belongs to, and its incarnation
//! (drawn when the directory is created). Written once, atomically, on
//! first start; on every later start compared with the configuration so a
//! node never runs on another node's, or another cluster's, data.
//! `cluster.toml`: the record of the cluster this directory joined (its uid
//! and every member's incarnation), written when the node forms or joins
//! the cluster and again when members join, with whether the node joined
//! (rather than founded), the members' addresses and the clients' access
//! tokens (hashed, as the document holds them; see [`crate::auth`]). Owns
//! those two files only.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ringkv_core::NodeId;
use ringkv_core::access::{Role, TokenRecord};
use ringkv_core::identity::{ClusterRecord, ClusterUid, Incarnation};
use serde::{Deserialize, Serialize};

use super::{Dirs, NodeMeta, StorageError, io_err};
use crate::disk::Disk;

/// The on-disk format this build reads and writes. 2: keys belong to
/// partitions by Redis hash slot (`ring::key_slot`); 1 placed them by an
/// xxh3 hash, so a format-1 directory's partitions hold other keys.
pub const FORMAT_VERSION: u32 = 2;

/// What an operator does about a data directory of format `found`.
pub(super) fn format_hint(found: u32) -> &'static str {
    match found {
        1 => {
            ": it was written by an older ringkv that placed keys in partitions by another hash \
             (format 2 uses Redis hash slots), so its data cannot be read in place. Read what \
             you need with the older build, then start this node on an empty data directory \
             (with --join to rejoin its cluster)"
        }
        f if f > FORMAT_VERSION => ": it was written by a newer ringkv; run that version",
        _ => "",
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeToml {
    format_version: u32,
    node_id: u64,
    cluster_id: String,
    partition_count: u32,
    replication_factor: u32,
    /// Absent in directories made before incarnations existed; one is drawn
    /// and written on their next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incarnation: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClusterToml {
    uid: String,
    /// Member id (decimal) -> incarnation.
    members: BTreeMap<String, String>,
    /// Absent (false) for a founder.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    joined: bool,
    /// Member id (decimal) -> gRPC address, as the member list last said.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    addresses: BTreeMap<String, String>,
    /// The version of the document the tokens are from.
    #[serde(default, skip_serializing_if = "is_zero")]
    tokens_version: u64,
    /// Token id -> the token as the document holds it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tokens: BTreeMap<String, TokenToml>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenToml {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    role: String,
    /// Hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    scope: String,
    /// Hex: SHA-256 of the secret.
    secret_hash: String,
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What `cluster.toml` holds: the cluster record, whether this directory
/// joined a formed cluster (`--join`) rather than founding it, and the
/// members' addresses as the member list last gave them (so that a node
/// restarted knows where every member is before any document reaches it;
/// a founder's `--peers` are not repeated here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFile {
    pub record: ClusterRecord,
    pub joined: bool,
    pub addresses: BTreeMap<NodeId, String>,
    /// The access tokens, as the latest document this node saw holds them.
    pub tokens: crate::auth::Tokens,
}

impl ClusterFile {
    /// A founder's file, as formation writes it.
    pub fn founded(record: ClusterRecord) -> Self {
        ClusterFile {
            record,
            joined: false,
            addresses: BTreeMap::new(),
            tokens: crate::auth::Tokens::default(),
        }
    }
}

/// What the identity files say.
pub(super) struct Loaded {
    pub incarnation: Incarnation,
    pub record: Option<ClusterFile>,
    /// `node.toml` was made by an earlier build (no incarnation): the
    /// caller gives it `incarnation` with [`upgrade`] once the whole
    /// directory has read, so a directory that does not open stays as
    /// it was.
    pub upgrade: bool,
}

/// Writes `node.toml` again, with the incarnation [`ensure`] assigned.
pub(super) fn upgrade(disk: &dyn Disk, dirs: &Dirs, meta: &NodeMeta) -> Result<(), StorageError> {
    write(disk, dirs, meta)?;
    tracing::info!(
        incarnation = %meta.incarnation_if_new,
        "the data directory had no incarnation; assigned one"
    );
    Ok(())
}

/// Writes `node.toml` if absent, or checks it against `meta` if present;
/// reads `cluster.toml` if present. A missing `node.toml` beside existing
/// WAL segments or a `cluster.toml` is an error: the directory's owner can
/// no longer be checked.
pub(super) fn ensure(
    disk: &dyn Disk,
    dirs: &Dirs,
    meta: &NodeMeta,
    wal_present: bool,
) -> Result<Loaded, StorageError> {
    let file = &dirs.node_toml;
    let cluster_file = cluster_record_path(&dirs.root);
    let record = match disk.read(&cluster_file) {
        Ok(bytes) => Some(parse_cluster(&cluster_file, &bytes)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&cluster_file)(e)),
    };
    let mut upgrade = false;
    let incarnation = match disk.read(file) {
        Ok(bytes) => match check(file, &bytes, meta)? {
            Some(incarnation) => incarnation,
            None => {
                // Made by an earlier build: it gets its incarnation (see
                // `Loaded::upgrade`).
                upgrade = true;
                meta.incarnation_if_new
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if wal_present || record.is_some() {
                return Err(StorageError::BadMeta {
                    file: file.clone(),
                    reason: "missing, but the directory holds WAL segments or cluster.toml"
                        .to_owned(),
                });
            }
            write(disk, dirs, meta)?;
            meta.incarnation_if_new
        }
        Err(e) => return Err(io_err(file)(e)),
    };
    Ok(Loaded {
        incarnation,
        record,
        upgrade,
    })
}

const CLUSTER_TOML: &str = "cluster.toml";

/// Where a data directory keeps its cluster record (present once the
/// directory founded or joined a cluster).
pub fn cluster_record_path(dir: &Path) -> PathBuf {
    dir.join(CLUSTER_TOML)
}

fn parse_cluster(file: &Path, bytes: &[u8]) -> Result<ClusterFile, StorageError> {
    let bad = |reason: String| StorageError::BadMeta {
        file: file.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let on_disk: ClusterToml = toml::from_str(text).map_err(|e| bad(e.message().to_owned()))?;
    let uid: ClusterUid = on_disk.uid.parse().map_err(|e| bad(format!("uid: {e}")))?;
    let mut members = BTreeMap::new();
    for (id, inc) in on_disk.members {
        let id: u64 = id
            .parse()
            .map_err(|_| bad(format!("member {id:?} is not a node id")))?;
        let inc: Incarnation = inc.parse().map_err(|e| bad(format!("member {id}: {e}")))?;
        members.insert(NodeId(id), inc);
    }
    if members.is_empty() {
        return Err(bad("no members".to_owned()));
    }
    let mut addresses = BTreeMap::new();
    for (id, address) in on_disk.addresses {
        let id: u64 = id
            .parse()
            .map_err(|_| bad(format!("address of {id:?}: not a node id")))?;
        addresses.insert(NodeId(id), address);
    }
    let mut tokens = BTreeMap::new();
    for (id, t) in on_disk.tokens {
        let role =
            Role::parse(&t.role).ok_or_else(|| bad(format!("token {id}: no role {:?}", t.role)))?;
        let scope =
            from_hex(&t.scope).ok_or_else(|| bad(format!("token {id}: scope is not hex")))?;
        let secret_hash = from_hex(&t.secret_hash)
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or_else(|| bad(format!("token {id}: secret_hash is not 32 bytes of hex")))?;
        let record = TokenRecord {
            name: t.name,
            role,
            scope: Bytes::from(scope),
            secret_hash,
        };
        record
            .validate(&id)
            .map_err(|e| bad(format!("token {id}: {e}")))?;
        tokens.insert(id, record);
    }
    Ok(ClusterFile {
        record: ClusterRecord { uid, members },
        joined: on_disk.joined,
        addresses,
        tokens: crate::auth::Tokens {
            version: on_disk.tokens_version,
            by_id: tokens,
        },
    })
}

/// Writes `cluster.toml` durably (tmp, sync, rename, sync the directory).
pub(super) fn write_cluster(
    disk: &dyn Disk,
    root: &Path,
    cluster: &ClusterFile,
) -> Result<(), StorageError> {
    let record = &cluster.record;
    let body = ClusterToml {
        uid: record.uid.to_string(),
        members: record
            .members
            .iter()
            .map(|(id, inc)| (id.0.to_string(), inc.to_string()))
            .collect(),
        joined: cluster.joined,
        addresses: cluster
            .addresses
            .iter()
            .map(|(id, a)| (id.0.to_string(), a.clone()))
            .collect(),
        tokens_version: cluster.tokens.version,
        tokens: cluster
            .tokens
            .by_id
            .iter()
            .map(|(id, t)| {
                let token = TokenToml {
                    name: t.name.clone(),
                    role: t.role.as_str().to_owned(),
                    scope: to_hex(&t.scope),
                    secret_hash: to_hex(&t.secret_hash),
                };
                (id.clone(), token)
            })
            .collect(),
    };
    let file = cluster_record_path(root);
    let text = toml::to_string(&body).map_err(|e| StorageError::BadMeta {
        file: file.clone(),
        reason: format!("cannot encode: {e}"),
    })?;
    write_atomically(disk, root, &file, text.as_bytes())
}

/// Checks `node.toml` against `meta`; returns its incarnation (`None` if it
/// predates incarnations).
fn check(file: &Path, bytes: &[u8], meta: &NodeMeta) -> Result<Option<Incarnation>, StorageError> {
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
    on_disk
        .incarnation
        .map(|text| {
            text.parse()
                .map_err(|e: String| bad(format!("incarnation: {e}")))
        })
        .transpose()
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
        incarnation: Some(meta.incarnation_if_new.to_string()),
    };
    let text = toml::to_string(&body).map_err(|e| StorageError::BadMeta {
        file: dirs.node_toml.clone(),
        reason: format!("cannot encode: {e}"),
    })?;
    write_atomically(disk, &dirs.root, &dirs.node_toml, text.as_bytes())
}

fn write_atomically(
    disk: &dyn Disk,
    root: &Path,
    file: &Path,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    disk.write_file(&tmp, bytes).map_err(io_err(&tmp))?;
    disk.sync_file(&tmp).map_err(io_err(&tmp))?;
    disk.rename(&tmp, file).map_err(io_err(file))?;
    disk.sync_dir(root).map_err(io_err(root))
}
