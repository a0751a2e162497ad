//! Console tickets: short-lived, scoped, single-use capabilities that
//! authorize one console session on one guest.
//!
//! This crate owns the ticket format and every check made on it:
//!
//! - [`Claims`]: what a ticket grants (guest, channels, mode, deadlines);
//! - `SigningKey` / [`VerifyingKey`]: the Ed25519 key pair and its PEM files.
//!   Only the management plane holds the signing key; the gateway holds the
//!   verifying key, so a compromised gateway can check tickets but never mint
//!   them. `SigningKey` and `mint` exist only with the `mint` feature, which
//!   only the minter crate enables;
//! - `mint` / [`verify`]: the wire format
//!   `vt1.<base64url(claims JSON)>.<key id>.<base64url(signature)>`; [`peek`] reads
//!   a ticket's claims unverified, for clients;
//! - [`ReplayGuard`]: the in-process single-use check, plus [`replay_key`] and
//!   [`replay_ttl`] for a shared store;
//! - [`IssuePolicy`]: a gateway's rules for the issue time: a maximum
//!   lifetime, and the restart rule (no ticket issued before the gateway
//!   started is accepted, so a restart never lets a used ticket work again).
//!
//! It is sans-IO apart from key-file helpers: verification never reads the
//! clock, the caller passes `now` as unix seconds, so behaviour at any instant
//! is reproducible in tests.

#![forbid(unsafe_code)]

mod claims;
mod error;
mod issued;
mod key;
mod replay;
mod token;

pub use claims::{Claims, Mode, AUDIO_SCOPE, VERSION};
pub use error::{KeyError, TicketError};
pub use issued::IssuePolicy;
#[cfg(any(test, feature = "mint"))]
pub use key::SigningKey;
pub use key::{VerifyingKey, Zeroizing, KEY_ID_LEN};
pub use replay::{replay_key, replay_ttl, ReplayGuard};
#[cfg(any(test, feature = "mint"))]
pub use token::mint;
pub use token::{peek, verify, verify_any, MAX_TICKET_LEN, MAX_VERIFYING_KEYS, PREFIX};
