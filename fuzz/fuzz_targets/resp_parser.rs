//! Arbitrary bytes from a RESP client: the parser never panics, never
//! claims bytes it was not given or arguments outside the command, and
//! holds to its limits; a pipeline of commands parses one after another
//! until the bytes run out or framing breaks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_node::api::resp::parser::{Limits, Parsed, parse_command};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bulk_bytes: 64,
        max_args: 8,
        max_inline_bytes: 128,
        max_command_bytes: 512,
    };
    let mut rest = data;
    while let Ok(Parsed::Command { args, consumed }) = parse_command(rest, &limits) {
        assert!(consumed > 0 && consumed <= rest.len());
        assert!(args.len() <= limits.max_args);
        for r in &args {
            assert!(r.start <= r.end && r.end <= consumed);
            assert!(r.len() <= limits.max_bulk_bytes.max(limits.max_inline_bytes));
        }
        rest = &rest[consumed..];
    }
});
