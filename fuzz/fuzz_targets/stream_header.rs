//! Fuzzes `vmgate_wire::OpenRequest::decode`, the first thing the agent
//! reads from a gateway's stream: any bytes must decode, ask for more, or be
//! refused without panicking; a decoded header must re-encode to the bytes
//! it came from, and never use more bytes than it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_wire::{OpenRequest, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, used))) = OpenRequest::decode(data) {
        assert!(used <= data.len() && used <= MAX_HEADER_LEN);
        assert_eq!(req.encode(), &data[..used], "decode/encode disagree");
    }
});
