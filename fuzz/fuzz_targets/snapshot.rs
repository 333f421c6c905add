//! Arbitrary bytes as a snapshot (a snapshot file, or the image a leader
//! sends): decoding never panics; what decodes encodes back to the same
//! snapshot; a key-value image that restores is canonical (restoring its
//! re-encoding gives the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::kv::KvStore;
use ringkv_core::wire::{decode_snapshot, encode_snapshot};

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = decode_snapshot(data) {
        let again = decode_snapshot(&encode_snapshot(&snapshot))
            .expect("a snapshot's own encoding decodes");
        assert_eq!(again, snapshot);
    }
    if let Ok(store) = KvStore::restore(data) {
        let image = store.snapshot();
        let restored = KvStore::restore(&image).expect("a store's own image restores");
        assert_eq!(restored.snapshot(), image);
    }
});
