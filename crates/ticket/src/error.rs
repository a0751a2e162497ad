//! Errors of this crate: why a ticket was refused ([`TicketError`]) and why a
//! key could not be loaded or saved ([`KeyError`]).

use std::path::PathBuf;

use ed25519_dalek::pkcs8;

/// Why a ticket was refused.
///
/// The `Display` texts reach end users as WebSocket close reasons, which are
/// limited to 123 bytes, so each stays under 100 bytes and says what to do
/// next. They never echo ticket contents: the input may be attacker-chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The ticket is not a well-formed `vt1.<claims>.<key id>.<signature>` string of at
    /// most [`MAX_TICKET_LEN`](crate::MAX_TICKET_LEN) bytes, or its signed
    /// claims are not valid version-1 JSON. The reason is a short fixed text.
    #[error("malformed ticket: {0}")]
    Malformed(&'static str),
    /// The signature does not match the claims under the gateway's key: the
    /// ticket was altered, or minted with another key.
    #[error("ticket signature invalid: mint a new one with `vmgate ticket`")]
    BadSignature,
    /// The ticket names a signing key this gateway does not accept: minted
    /// with a new key before the gateway was given it, or with a retired or
    /// foreign key. The id is checked to be 11 base64url characters.
    #[error("ticket signed with key {kid}, which this gateway does not accept: mint a new one")]
    UnknownKey {
        /// The key id the ticket names.
        kid: String,
    },
    /// The ticket's `not_after` has passed.
    #[error("ticket expired {expired_secs_ago}s ago: mint a new one with `vmgate ticket`")]
    Expired {
        /// How long ago it expired, in seconds (0 at the deadline itself).
        expired_secs_ago: u64,
    },
    /// The ticket was already redeemed once.
    #[error("ticket already used: tickets are single-use, mint a new one")]
    Replayed,
    /// The ticket names a different guest than the one asked for.
    #[error("ticket is for another guest")]
    WrongGuest,
    /// The ticket does not list the channel asked for.
    #[error("ticket does not allow this channel")]
    WrongChannel,
    /// The ticket is signed correctly but uses a claims format version this
    /// build does not understand.
    #[error("ticket format v{version} is not supported here: mint a new one with `vmgate ticket`")]
    UnsupportedVersion {
        /// The version the ticket declares.
        version: u64,
    },
    /// The replay guard is full of unexpired tickets and cannot remember
    /// another one, so it refuses rather than forget a live ticket.
    #[error("too many tickets in flight: try again shortly")]
    ReplayCacheFull,
    /// The ticket was minted before the gateway's record of used tickets
    /// began (its store's epoch, within the clock-skew margin): a record
    /// that was lost may have held it.
    #[error("ticket issued before the gateway's ticket store began: mint a new one")]
    IssuedBeforeRestart,
    /// The ticket's issue time is further ahead of the gateway's clock than
    /// the skew margin allows.
    #[error("ticket issued in the future: the minter's clock is ahead, fix it and mint a new one")]
    IssuedInFuture,
    /// The ticket would live (`not_after - iat`) longer than the gateway
    /// accepts.
    #[error("ticket lives longer than this gateway allows ({max_secs}s): mint a shorter one")]
    LifetimeTooLong {
        /// The gateway's maximum, in seconds.
        max_secs: u64,
    },
}

impl TicketError {
    /// A stable short machine name for this kind of refusal, for metrics
    /// labels and structured logs (unlike `Display`, it never changes).
    pub fn code(&self) -> &'static str {
        match self {
            TicketError::Malformed(_) => "malformed",
            TicketError::BadSignature => "bad_signature",
            TicketError::UnknownKey { .. } => "unknown_key",
            TicketError::Expired { .. } => "expired",
            TicketError::Replayed => "replayed",
            TicketError::WrongGuest => "wrong_guest",
            TicketError::WrongChannel => "wrong_channel",
            TicketError::UnsupportedVersion { .. } => "unsupported_version",
            TicketError::ReplayCacheFull => "replay_cache_full",
            TicketError::IssuedBeforeRestart => "issued_before_restart",
            TicketError::IssuedInFuture => "issued_in_future",
            TicketError::LifetimeTooLong { .. } => "lifetime_too_long",
        }
    }
}

/// Why a key could not be encoded, decoded, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {}", path.display())]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file could not be created or written.
    #[error("cannot write key file {}", path.display())]
    Write {
        /// The file asked for.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Saving would overwrite an existing file, which could destroy the only
    /// copy of a key.
    #[error("key file {} already exists: remove it or choose another path", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The text is not an Ed25519 private key in PKCS#8 PEM form.
    #[error("not an Ed25519 private key (expected PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----`)")]
    InvalidPrivateKey(#[source] pkcs8::Error),
    /// The text is not an Ed25519 public key in SPKI PEM form.
    #[error("not an Ed25519 public key (expected SPKI PEM, `-----BEGIN PUBLIC KEY-----`)")]
    InvalidPublicKey(#[source] pkcs8::spki::Error),
    /// Encoding the key as PEM failed (not expected for a valid key).
    #[error("cannot encode key as PEM")]
    Encode(#[source] pkcs8::Error),
    /// Encoding the public key as PEM failed (not expected for a valid key).
    #[error("cannot encode public key as PEM")]
    EncodePublic(#[source] pkcs8::spki::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<TicketError> {
        vec![
            TicketError::Malformed("expected vt1.<claims>.<key id>.<signature>"),
            TicketError::BadSignature,
            TicketError::UnknownKey {
                kid: "A".repeat(crate::KEY_ID_LEN),
            },
            TicketError::Expired {
                expired_secs_ago: u64::MAX,
            },
            TicketError::Replayed,
            TicketError::WrongGuest,
            TicketError::WrongChannel,
            TicketError::UnsupportedVersion { version: u64::MAX },
            TicketError::ReplayCacheFull,
            TicketError::IssuedBeforeRestart,
            TicketError::IssuedInFuture,
            TicketError::LifetimeTooLong { max_secs: u64::MAX },
        ]
    }

    #[test]
    fn messages_fit_a_websocket_close_reason() {
        // 123 bytes is the close-frame limit; 100 leaves room for a prefix.
        for e in every_variant() {
            let text = e.to_string();
            assert!(text.len() < 100, "{} bytes: {text}", text.len());
        }
    }

    #[test]
    fn codes_are_distinct_snake_case() {
        let codes: Vec<&str> = every_variant().iter().map(TicketError::code).collect();
        let mut unique = codes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        for c in codes {
            assert!(
                c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c}"
            );
        }
    }
}
