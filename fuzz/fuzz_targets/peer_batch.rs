//! Arbitrary bytes from a peer: decoding must never panic, and whatever
//! decodes must be safe to feed to a node.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::node::{Node, NodeConfig, Recovered};
use ringkv_core::{NodeId, Time};

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = ringkv_core::wire::decode_peer_batch(data) else {
        return;
    };
    let cfg = NodeConfig::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]);
    let Ok(mut node) = Node::new(cfg, 1, Recovered::default()) else {
        return;
    };
    node.handle_message(Time::from_millis(1), batch);
    while node.poll_transmit().is_some() {}
    while node.poll_io().is_some() {}
});
