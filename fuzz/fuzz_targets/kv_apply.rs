//! Arbitrary log entry payloads: applying them never panics, and two replicas
//! fed the same bytes end in the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::kv::KvStore;

fuzz_target!(|data: &[u8]| {
    let mut a = KvStore::new();
    let mut b = KvStore::new();
    for (i, chunk) in data.split(|&b| b == 0xff).enumerate() {
        a.apply(i as u64 + 1, chunk);
        b.apply(i as u64 + 1, chunk);
    }
    assert_eq!(a.snapshot(), b.snapshot());
});
