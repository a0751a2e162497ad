//! Feeds arbitrary bytes to the media stream's decoder, both directions,
//! split at a fuzzer-chosen point, and to the transmission monitor both
//! ways. No panic; NBD pieces never add up to more than was fed; every
//! INSERT name is a valid one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_nbd::media::{valid_name, Decoder, Direction, Item};
use vmgate_nbd::Monitor;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(data.len());
    for dir in [Direction::ClientToAgent, Direction::AgentToClient] {
        let mut d = Decoder::new(dir);
        let mut out = Vec::new();
        for part in [&data[..cut], &data[cut..]] {
            if d.feed(bytes::Bytes::copy_from_slice(part), &mut out).is_err() {
                break;
            }
        }
        let nbd: usize = out
            .iter()
            .map(|i| match i {
                Item::Nbd(b) => b.len(),
                _ => 0,
            })
            .sum();
        assert!(nbd <= data.len());
        for i in &out {
            if let Item::Insert { name } = i {
                assert!(valid_name(name));
            }
        }
    }
    let mut m = Monitor::new();
    let now = std::time::Instant::now();
    let _ = m.from_client(&data[..cut], now);
    let _ = m.from_server(&data[cut..]);
});
