//! Feeds arbitrary server bytes to the audio client's server parser (what
//! the agent reads from QEMU on its dedicated audio connection), split at a
//! fuzzer-chosen point: no panic, and the PCM handed out is never more than
//! was fed and always a part of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_rfb::{ServerEvent, ServerParser};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(data.len());
    let mut p = ServerParser::new();
    let mut pcm = 0;
    for part in [&data[..cut], &data[cut..]] {
        let fed = part.as_ptr_range();
        let ok = p.feed(part, |e| {
            if let ServerEvent::AudioData(d) = e {
                let r = d.as_ptr_range();
                assert!(fed.start <= r.start && r.end <= fed.end, "PCM outside the input");
                pcm += d.len();
            }
        });
        if ok.is_err() {
            break;
        }
    }
    assert!(pcm <= data.len());
});
