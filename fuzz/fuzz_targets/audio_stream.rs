//! Feeds arbitrary bytes to the `audio` channel's reader (what `vmgate
//! audio` reads from a gateway), split at a fuzzer-chosen point: no panic,
//! and the PCM handed out is never more than was fed and always a part of
//! it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_wire::audio::{AudioEvent, AudioReader};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(data.len());
    let mut r = AudioReader::new();
    let mut pcm = 0;
    for part in [&data[..cut], &data[cut..]] {
        let fed = part.as_ptr_range();
        let ok = r.feed(part, |e| {
            if let AudioEvent::Pcm(d) = e {
                let p = d.as_ptr_range();
                assert!(fed.start <= p.start && p.end <= fed.end, "PCM outside the input");
                pcm += d.len();
            }
        });
        if ok.is_err() {
            break;
        }
    }
    assert!(pcm <= data.len());
});
