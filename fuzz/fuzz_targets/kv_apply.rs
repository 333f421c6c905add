//! Arbitrary log entries applied to a partition's key-value store (each
//! entry two bytes of length, little endian, then its bytes; the seeds are
//! every kind of command): applying never panics; two replicas fed the
//! same entries end in the same state; and the store's snapshot restores
//! to a store with the same snapshot (nothing a snapshot drops).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::kv::KvStore;

fuzz_target!(|data: &[u8]| {
    let mut a = KvStore::new();
    let mut b = KvStore::new();
    let mut rest = data;
    let mut index = 0;
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (entry, after) = tail.split_at(len);
        index += 1;
        a.apply(index, entry);
        b.apply(index, entry);
        rest = after;
    }
    let image = a.snapshot();
    assert_eq!(image, b.snapshot(), "two replicas differ");
    let restored = KvStore::restore(&image).expect("a store's own snapshot restores");
    assert_eq!(restored.snapshot(), image, "a restored store differs");
});
