//! Fuzzes `vmgate_wire::Frame::decode` over a byte stream, as the relay's
//! QUIC adapter feeds it: frames are taken off the buffer until it needs
//! more or refuses; each decoded frame must re-encode to the bytes it used.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vmgate_wire::Frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match Frame::decode(&mut buf) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                assert!(used > 0, "a frame used no bytes");
                let mut again = BytesMut::new();
                frame.encode(&mut again);
                // Close reasons are cut to 123 bytes and text is checked as
                // UTF-8, so only the frame, not the bytes, must round-trip.
                let mut b = again.clone();
                assert_eq!(Frame::decode(&mut b).unwrap(), Some(frame));
            }
            Ok(None) | Err(_) => break,
        }
    }
});
