//! Ticket minting, and the only crate that links the ticket signing key.
//!
//! - [`Minter`]: the sans-IO core. A request and `now` go in; a signed
//!   ticket, or a named refusal ([`MintError`]), comes out. It caps what a
//!   ticket may ask for ([`Caps`]: time to redeem, session length, number
//!   and length of channels), so no caller can mint a ticket the gateway
//!   would choke on or one wider than policy allows.
//! - [`MinterServer`]: `vmgate admin`, the minter as a process of its own on
//!   the management LAN (`POST /v1/tickets`), configured by [`MinterConfig`].
//! - `vmgate ticket` mints locally from a state directory's key through the
//!   same [`Minter`].
//!
//! Signing is `vmgate-ticket`'s `mint` feature, and this crate is the only
//! one that enables it: the internet-facing gateway crate cannot name a
//! signing key or call `mint`, by construction (see
//! `tests/the_gateway_cannot_mint.rs`).
#![forbid(unsafe_code)]

pub mod check;
mod config;
mod mint;
mod server;

pub use config::{MinterConfig, MinterError};
pub use mint::{Caps, MintError, MintedTicket, Minter, TicketRequest, LOCAL_CAPS, MAX_CHANNELS};
pub use server::MinterServer;
/// Raw signing, outside any cap: for tests and tools that need a ticket a
/// minter would never issue (expired, forged with a foreign key).
/// Services mint through [`Minter`].
pub use vmgate_ticket::{mint as sign, SigningKey};

/// Makes a new signing key at `signing` (mode 0600) and its verifying key at
/// `verifying`, for a demo or a new deployment; neither file may exist.
pub fn generate_key_pair(
    signing: &std::path::Path,
    verifying: &std::path::Path,
) -> Result<(), vmgate_ticket::KeyError> {
    let key = SigningKey::generate();
    key.save(signing)?;
    key.verifying_key().save(verifying)
}
