//! Feeds arbitrary viewer bytes to the RFB client parser and the filter
//! under every policy, split at a fuzzer-chosen point: no panic, spans cover
//! the input, the filter never passes more than it got, and what it passes
//! is RFB that keeps the policy (no audio and no −259 without the audio
//! scope, no input from a read-only viewer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_rfb::{ClientFilter, ClientParser, Kind, Policy, AUDIO_ENCODING};

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
    for (read_only, audio) in [(false, false), (false, true), (true, false), (true, true)] {
        let policy = Policy { read_only, audio };
        let mut f = ClientFilter::new(policy);
        let mut passed = Vec::new();
        for part in [&data[..cut], &data[cut..]] {
            match f.filter(bytes::Bytes::copy_from_slice(part)) {
                Ok(out) => passed.extend_from_slice(&out),
                Err(_) => break,
            }
        }
        assert!(passed.len() <= data.len());
        // What passed parses as RFB and keeps the policy.
        let mut again = ClientParser::new();
        let mut spans = Vec::new();
        again
            .feed(&passed, |s| spans.push(s))
            .expect("what the filter passes is RFB");
        let (mut at, mut start) = (0, 0);
        for s in spans {
            at += s.len;
            if !s.end {
                continue;
            }
            assert!(!(read_only && s.kind.is_input()), "input passed");
            assert!(audio || s.kind != Kind::QemuAudio, "audio passed");
            if s.kind == Kind::SetEncodings && !audio {
                assert!(passed[start + 4..at]
                    .chunks(4)
                    .all(|e| e != AUDIO_ENCODING.to_be_bytes()));
            }
            start = at;
        }
    }
});
