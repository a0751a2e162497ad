//! What a gateway splicing a screen parses (docs/migration.md): arbitrary
//! server bytes after QEMU's handshake, in a fuzzer-chosen pixel size,
//! through the screen parser; and arbitrary viewer bytes through a
//! spliceable filter, cut over to a new server at a fuzzer-chosen point.
//! No panic; a broken server stream is never between messages (so it is
//! never spliced), and read only to the next boundary after a cut it
//! stops where a whole read is between messages; what the filter passes is
//! RFB, whole messages from the
//! cut on, with no encoding the splice cannot follow; releasing the keys
//! held, then what the viewer sends after the cut, gives whole messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_rfb::server::spliceable;
use vmgate_rfb::{ClientFilter, ClientParser, Kind, Policy, ServerParser};

/// QEMU's handshake: 3.8, None, 720x400 at 32 bits per pixel, no name.
const HANDSHAKE: &[u8] = b"RFB 003.008\n\x01\x01\0\0\0\0\x02\xd0\x01\x90\x20\x18\0\x01\0\xff\0\xff\0\xff\x10\x08\0\0\0\0\0\0\0\0";

fuzz_target!(|data: &[u8]| {
    let Some((&[cut, bits], data)) = data.split_first_chunk::<2>() else {
        return;
    };
    let cut = (cut as usize).min(data.len());
    let mut p = ServerParser::new();
    p.feed(HANDSHAKE, |_| {}).expect("QEMU's handshake");
    assert!(p.at_message_boundary());
    // 8, 16 or 32 bits per pixel, or 32-bit true colour of depth 24 (3-byte
    // Tight pixels); bit 2: a Tight viewer; bit 3: a splice just happened.
    let mut pf = [0; 16];
    pf[0] = [8, 16, 32, bits][usize::from(bits % 4)];
    if bits % 4 == 3 {
        pf = [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
    }
    p.set_pixel_format(&pf);
    let tight = bits & 4 != 0;
    if bits & 8 != 0 {
        p.reset_tight_streams();
    }
    let mut resets = 0;
    // The same stream cut where the guest departed: read to the next
    // boundary only, which is where a whole feed is between messages.
    let mut q = p.clone();
    for part in [&data[..cut], &data[cut..]] {
        let fed = p.feed(part, |e| {
            if let vmgate_rfb::ServerEvent::TightControl(at) = e {
                assert!(at < part.len());
                resets += 1;
            }
        });
        if fed.is_err() {
            assert!(!p.at_message_boundary());
            break;
        }
    }
    assert!(resets <= 1, "one reset per splice");
    if q.feed(&data[..cut], |_| {}).is_ok() {
        if let Ok(Some(n)) = q.feed_to_boundary(&data[cut..], |_| {}) {
            assert!(q.at_message_boundary());
            let mut whole = ServerParser::new();
            whole.feed(HANDSHAKE, |_| {}).expect("QEMU's handshake");
            whole.set_pixel_format(&pf);
            whole.feed(&data[..cut + n], |_| {}).expect("read before");
            assert!(whole.at_message_boundary());
        }
    }

    let mut f = ClientFilter::new(Policy::default()).spliceable(tight);
    let mut old = b"RFB 003.008\n\x01\x01".to_vec();
    let _ = f.filter(bytes::Bytes::from_static(b"RFB 003.008\n\x01\x00"));
    let mut new = Vec::new();
    if let Ok(out) = f.filter(bytes::Bytes::copy_from_slice(&data[..cut])) {
        old.extend_from_slice(&out);
        f.cut();
        // What the gateway sends the new server first: the keys held.
        new.extend(f.viewer.as_mut().expect("spliceable").release());
        if let Ok(out) = f.filter(bytes::Bytes::copy_from_slice(&data[cut..])) {
            new.extend_from_slice(&out);
        }
    }
    // The new server gets whole messages (after its own handshake).
    let mut again = ClientParser::new();
    again
        .feed(b"RFB 003.008\n\x01\x01", |_| {})
        .expect("handshake");
    let mut spans = Vec::new();
    again
        .feed(&new, |s| spans.push(s))
        .expect("what the filter passes is RFB");
    let (mut at, mut start) = (0, 0);
    for s in &spans {
        at += s.len;
        if !s.end {
            continue;
        }
        if s.kind == Kind::SetEncodings {
            assert!(new[start + 4..at]
                .chunks(4)
                .all(|e| spliceable(i32::from_be_bytes([e[0], e[1], e[2], e[3]]), tight)));
        }
        start = at;
    }
    // Fed at once, each message is one span: only the last, which the
    // viewer was still sending, may be unfinished.
    if let Some((_, whole)) = spans.split_last() {
        assert!(whole.iter().all(|s| s.end), "a message cut in two");
    }
});
