//! Feeds arbitrary viewer bytes to the RFB client parser and the read-only
//! filter, split at a fuzzer-chosen point: no panic, spans cover the input,
//! and the filter never passes more than it got.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_rfb::{ClientFilter, ClientParser};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(data.len());
    let mut p = ClientParser::new();
    for part in [&data[..cut], &data[cut..]] {
        let mut fed = 0;
        match p.feed(part, |s| fed += s.len) {
            Ok(()) => assert_eq!(fed, part.len()),
            Err(_) => break,
        }
    }
    for read_only in [false, true] {
        let mut f = ClientFilter::new(read_only);
        let mut passed = 0;
        for part in [&data[..cut], &data[cut..]] {
            match f.filter(bytes::Bytes::copy_from_slice(part)) {
                Ok(out) => passed += out.len(),
                Err(_) => break,
            }
        }
        assert!(passed <= data.len());
    }
});
