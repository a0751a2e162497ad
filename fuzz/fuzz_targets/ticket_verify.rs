//! Fuzzes `vmgate_ticket::verify`, the first code that touches a ticket
//! received from an unauthenticated client: it must refuse any input without
//! panicking, and never accept one, since nobody here holds the signing key
//! for random bytes to match.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmgate_ticket::{verify, SigningKey, VerifyingKey};

/// A fixed instant, so a run is reproducible from its corpus alone.
const NOW: u64 = 1_700_000_000;

fn key() -> &'static VerifyingKey {
    // Derived once: deriving a public key costs a scalar multiplication,
    // which would otherwise dominate each iteration.
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_seed([0x5a; 32]).verifying_key())
}

fuzz_target!(|data: &[u8]| {
    // Tickets arrive as text (URL, query string, WebSocket message); lossy
    // conversion still lets every byte pattern reach the parser.
    let text = String::from_utf8_lossy(data);
    if let Ok(claims) = verify(key(), &text, NOW) {
        panic!("accepted a ticket nobody signed: {claims:?}");
    }
});
