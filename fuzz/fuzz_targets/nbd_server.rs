//! Feeds arbitrary client bytes to the NBD server, once from the start of
//! the handshake and once straight into the transmission phase, split at a
//! fuzzer-chosen point; and arbitrary server bytes to the client handshake.
//! No panic; every read handed out is inside the export and at most
//! MAX_REQUEST long; a handshake-only server never uses more than it got.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_nbd::proto::{go_payload, option, OPT_GO};
use vmgate_nbd::{Event, Export, Handshake, Server, MAX_REQUEST};

const SIZE: u64 = 1 << 20;

fn run(mut s: Server, prefix: &[u8], data: &[u8], cut: usize) {
    let _ = s.receive(prefix);
    for part in [&data[..cut], &data[cut..]] {
        match s.receive(part) {
            Ok(used) => assert!(used <= part.len()),
            Err(_) => {
                assert!(s.is_done());
                break;
            }
        }
    }
    while let Some(e) = s.next_event() {
        if let Event::Read { offset, length, .. } = e {
            assert!(length > 0 && length <= MAX_REQUEST);
            assert!(offset.checked_add(u64::from(length)).unwrap() <= SIZE);
        }
    }
    let _ = s.take_output();
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(data.len());
    let export = || Export {
        name: "m".into(),
        size: SIZE,
    };
    run(Server::new(export()), &[], data, cut);
    run(Server::handshake_only(export()), &[], data, cut);
    let mut go = 3u32.to_be_bytes().to_vec();
    go.extend(option(OPT_GO, &go_payload("", &[])));
    run(Server::new(export()), &go, data, cut);

    let mut c = Handshake::new("");
    for part in [&data[..cut], &data[cut..]] {
        match c.receive(part) {
            Ok(Some((_, used))) => {
                assert!(used <= part.len());
                break;
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
});
