//! Arbitrary HTTP requests (method, path and query, headers, body; see
//! `ringkv_fuzz::rest::parse_request`) to a live node's REST router: no
//! request gets a 500, and every error is a short problem+json document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_fuzz::rest::{check, parse_request, target};

fuzz_target!(|data: &[u8]| {
    let Some(request) = parse_request(data) else {
        return;
    };
    let target = target();
    target
        .runtime
        .block_on(check(target.router.clone(), request));
});
