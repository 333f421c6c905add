//! Arbitrary WAL record payloads: decoding never panics; records that decode
//! replay into a recovery state without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::node::Recovered;

fuzz_target!(|data: &[u8]| {
    let records: Vec<_> = data.chunks(64).filter_map(|c| ringkv_core::wire::decode_wal_record(c).ok()).collect();
    let _ = Recovered::replay(records);
});
