//! Fuzzes `vmgate_wire::Control::parse`, which reads every text message a
//! client sends the gateway (after the ticket check) and every text message
//! a gateway sends a client: any text must parse or be refused without
//! panicking, and what parses must survive a round trip through its own
//! encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmgate_wire::{Control, MAX_CONTROL_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Control::parse(text) {
        Ok(Control::Unknown) | Err(_) => {}
        Ok(msg) => {
            assert!(text.len() <= MAX_CONTROL_LEN);
            assert_eq!(Control::parse(&msg.to_text()).as_ref(), Ok(&msg));
        }
    }
});
