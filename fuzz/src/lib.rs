//! What the fuzz targets share: the input formats of the targets that take
//! more than one blob (a data directory, an HTTP request), the single-node
//! server the REST target sends its requests to, and the checks every
//! response must pass. `examples/seeds.rs` writes the seed corpora
//! (`fuzz/seeds/`) in these formats from a real node's files and requests.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use ringkv_core::identity::Incarnation;
use ringkv_node::storage::NodeMeta;

/// The root of the fuzzed data directory (on a `MemDisk`).
pub const DATA_DIR: &str = "/data";

/// The node a fuzzed data directory belongs to (its `node.toml` must say
/// so, or storage refuses it, as it should).
pub fn node_meta() -> NodeMeta {
    NodeMeta {
        node_id: 1,
        cluster_id: "ringkv".to_owned(),
        partition_count: 4,
        replication_factor: 1,
        incarnation_if_new: Incarnation(7),
    }
}

/// A data directory as one input: for each file, a byte with its path's
/// length, the path (relative to [`DATA_DIR`]), four bytes (little endian)
/// with its length, and its bytes. `None` for input that is not in this
/// form (the fuzzer learns the form from the seeds).
pub fn decode_image(mut input: &[u8]) -> Option<BTreeMap<PathBuf, Vec<u8>>> {
    let mut image = BTreeMap::new();
    while let Some((&path_len, rest)) = input.split_first() {
        let path = rest.get(..usize::from(path_len))?;
        let rest = &rest[path.len()..];
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let data = rest.get(4..4 + len.min(rest.len().saturating_sub(4)))?;
        input = &rest[4 + data.len()..];
        let relative = Path::new(std::str::from_utf8(path).ok()?);
        // Files inside the directory only: no root, no `..`.
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
            || relative.as_os_str().is_empty()
        {
            return None;
        }
        image.insert(Path::new(DATA_DIR).join(relative), data.to_vec());
    }
    Some(image)
}

/// The inverse of [`decode_image`] (for the seeds).
pub fn encode_image(image: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, data) in image {
        let Ok(relative) = path.strip_prefix(DATA_DIR) else {
            continue;
        };
        let relative = relative.to_string_lossy();
        out.push(u8::try_from(relative.len()).expect("short paths"));
        out.extend_from_slice(relative.as_bytes());
        out.extend_from_slice(
            &u32::try_from(data.len())
                .expect("small files")
                .to_le_bytes(),
        );
        out.extend_from_slice(data);
    }
    out
}

pub mod rest;
