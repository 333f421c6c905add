//! A data directory of arbitrary files (WAL segments, snapshot files,
//! `node.toml`, `cluster.toml`; the seeds are a real node's): opening it
//! never panics, and never destroys what it cannot read. A directory that
//! opens opens again, from what the first open left on disk, to the same
//! recovered state (cutting a torn tail is done once, not differently
//! each time).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ringkv_fuzz::{DATA_DIR, decode_image, node_meta};
use ringkv_node::disk::MemDisk;
use ringkv_node::storage::{Storage, StorageOptions};

fuzz_target!(|data: &[u8]| {
    let Some(image) = decode_image(data) else {
        return;
    };
    let disk = Arc::new(MemDisk::new());
    disk.replace_with_image(image.clone());
    let opened = Storage::open(
        disk.clone(),
        DATA_DIR.into(),
        node_meta(),
        StorageOptions::default(),
    );
    let first = match opened {
        Ok((storage, recovered)) => {
            drop(storage);
            recovered
        }
        Err(e) => {
            let _ = e.to_string();
            // A directory that does not open is left as it was: the
            // operator (or a newer version) may still read it.
            let after = disk.durable_image();
            for (path, bytes) in &image {
                let now = after.get(path).map(Vec::len);
                assert!(
                    after.get(path) == Some(bytes),
                    "{} ({} bytes) changed by a failed open (now {now:?} bytes): {e}",
                    path.display(),
                    bytes.len()
                );
            }
            return;
        }
    };
    let again = Arc::new(MemDisk::new());
    again.replace_with_image(disk.durable_image());
    let (_, second) = Storage::open(
        again,
        DATA_DIR.into(),
        node_meta(),
        StorageOptions::default(),
    )
    .expect("a directory that opened opens again");
    assert_eq!(first, second, "a second recovery recovered something else");
});
