//! The ticket wire format and its checks: [`mint`] and [`verify`].
//!
//! A ticket is `vt1.<claims>.<key id>.<signature>` where `<claims>` is the
//! claims JSON and `<signature>` the Ed25519 signature, both base64url without
//! padding, so a ticket can go in a URL or query string unescaped, and
//! `<key id>` is [`VerifyingKey::id`] of the key that signed it: a gateway
//! that accepts several keys while they rotate checks only that key's
//! signature, and says so when it does not know the key.
//!
//! The signature covers the exact text `vt1.<claims>.<key id>`, not the
//! decoded JSON:
//! - including the `vt1.` prefix separates this use of the key from any other
//!   thing it might ever sign (a signature made for another format or version
//!   cannot be replayed as a ticket);
//! - signing the encoded text means there is nothing to canonicalise: any
//!   change to the ticket's characters breaks the signature.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ed25519_dalek::Signature;
#[cfg(any(test, feature = "mint"))]
use ed25519_dalek::Signer as _;
use serde_json::{Map, Value};

use crate::claims::{parse_id, VERSION};
use crate::key::KEY_ID_LEN;
#[cfg(any(test, feature = "mint"))]
use crate::SigningKey;
use crate::{Claims, TicketError, VerifyingKey};

/// The text every version-1 ticket starts with.
pub const PREFIX: &str = "vt1.";

/// The longest ticket [`verify`] will look at, in bytes.
///
/// Tickets arrive before any authentication, so the work spent on one must be
/// bounded; this also leaves room for the claims of any sensible ticket
/// (about 3 KB of JSON).
pub const MAX_TICKET_LEN: usize = 4096;

/// The refusal for an over-long ticket; a test keeps it in step with
/// [`MAX_TICKET_LEN`], as a `&'static str` cannot be built from the constant.
const TOO_LONG: TicketError = TicketError::Malformed("longer than 4096 bytes");

/// Base64url without padding, decoding only the canonical spelling: padding
/// and non-zero unused trailing bits are refused, so each byte string has
/// exactly one encoding and no character of a ticket can change unnoticed.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

const SIGNATURE_LEN: usize = Signature::BYTE_SIZE;

/// Signs `claims` into a ticket string (feature `mint`: only the minter
/// enables it).
///
/// Claims whose ticket would exceed [`MAX_TICKET_LEN`] (thousands of
/// channels, say) mint fine but will be refused by [`verify`].
#[cfg(any(test, feature = "mint"))]
pub fn mint(key: &SigningKey, claims: &Claims) -> String {
    // Serialising a struct of strings, integers and unit enums cannot fail.
    let json = serde_json::to_vec(claims).expect("claims serialise to JSON");
    sign_payload(key, &json)
}

/// Builds a ticket around arbitrary payload bytes; [`mint`] without the JSON
/// step, also used by tests to reach the checks that follow the signature.
#[cfg(any(test, feature = "mint"))]
fn sign_payload(key: &SigningKey, payload: &[u8]) -> String {
    let kid = key.verifying_key().id();
    let mut ticket = String::with_capacity(
        PREFIX.len()
            + payload.len().div_ceil(3) * 4
            + 1
            + kid.len()
            + 1
            + SIGNATURE_LEN.div_ceil(3) * 4,
    );
    ticket.push_str(PREFIX);
    B64.encode_string(payload, &mut ticket);
    ticket.push('.');
    ticket.push_str(&kid);
    let signature = key.0.sign(ticket.as_bytes());
    ticket.push('.');
    B64.encode_string(signature.to_bytes(), &mut ticket);
    ticket
}

/// A ticket's parts, split and decoded but not yet trusted.
struct Parts<'a> {
    /// `vt1.<claims>.<key id>`: the text the signature covers.
    signed: &'a [u8],
    /// The signing key's id: [`KEY_ID_LEN`] base64url characters (checked,
    /// so it may be logged).
    kid: &'a str,
    /// The decoded claims JSON.
    payload: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

/// Length, shape and base64 checks, cheapest first.
fn split(ticket: &str) -> Result<Parts<'_>, TicketError> {
    if ticket.len() > MAX_TICKET_LEN {
        return Err(TOO_LONG);
    }
    if ticket.is_empty() {
        return Err(TicketError::Malformed("empty"));
    }
    let rest = ticket
        .strip_prefix(PREFIX)
        .ok_or(TicketError::Malformed("does not start with `vt1.`"))?;
    const SHAPE: TicketError = TicketError::Malformed("expected vt1.<claims>.<key id>.<signature>");
    let (payload_b64, rest) = rest.split_once('.').ok_or(SHAPE)?;
    let (kid, signature_b64) = rest.split_once('.').ok_or(SHAPE)?;
    if signature_b64.contains('.') {
        return Err(SHAPE);
    }
    if kid.len() != KEY_ID_LEN
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(TicketError::Malformed(
            "key id is not 11 base64url characters",
        ));
    }

    let payload = B64
        .decode(payload_b64)
        .map_err(|_| TicketError::Malformed("claims are not base64url"))?;
    let signature = B64
        .decode(signature_b64)
        .map_err(|_| TicketError::Malformed("signature is not base64url"))?;
    let signature: [u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| TicketError::Malformed("signature is not 64 bytes"))?;
    Ok(Parts {
        signed: &ticket.as_bytes()[..PREFIX.len() + payload_b64.len() + 1 + kid.len()],
        kid,
        payload,
        signature,
    })
}

/// The claims JSON, version first.
///
/// Parsed as a generic object first: the version is read before the fields
/// it governs, so a ticket from a newer minter is reported as such rather
/// than as malformed; and serde would otherwise also accept a struct spelled
/// as a JSON array.
fn parse_claims(payload: &[u8]) -> Result<Claims, TicketError> {
    let object: Map<String, Value> = serde_json::from_slice(payload)
        .map_err(|_| TicketError::Malformed("claims are not a JSON object"))?;
    let version = object
        .get("v")
        .and_then(Value::as_u64)
        .ok_or(TicketError::Malformed("claims have no numeric version"))?;
    if version != u64::from(VERSION) {
        return Err(TicketError::UnsupportedVersion { version });
    }
    let claims: Claims = serde_json::from_value(Value::Object(object))
        .map_err(|_| TicketError::Malformed("claims do not match format v2"))?;
    parse_id(&claims.id)?;
    Ok(claims)
}

/// Checks a ticket and returns its claims if it was minted with the key
/// paired with `key` and has not expired at `now` (unix seconds).
///
/// The checks run cheapest and least trusting first: length, shape, base64,
/// signature, and only then JSON, so input nobody signed never reaches the
/// JSON parser. The caller still has to check scope ([`Claims::allows`]) and
/// single use ([`ReplayGuard`](crate::ReplayGuard)).
pub fn verify(key: &VerifyingKey, ticket: &str, now: u64) -> Result<Claims, TicketError> {
    verify_any(std::slice::from_ref(key), ticket, now)
}

/// The most keys [`verify_any`] tries: a gateway accepts its current key
/// and a few more while keys rotate, and a forged ticket costs at most this
/// many signature checks.
pub const MAX_VERIFYING_KEYS: usize = 4;

/// [`verify`] against several keys (key rotation): the ticket is good if
/// the one of the first [`MAX_VERIFYING_KEYS`] keys whose id it names
/// verifies its signature. A ticket naming none of them is
/// [`TicketError::UnknownKey`]: one signature check at most per ticket.
pub fn verify_any(keys: &[VerifyingKey], ticket: &str, now: u64) -> Result<Claims, TicketError> {
    let parts = split(ticket)?;
    let key = keys
        .iter()
        .take(MAX_VERIFYING_KEYS)
        .find(|k| k.id() == parts.kid)
        .ok_or_else(|| TicketError::UnknownKey {
            kid: parts.kid.to_owned(),
        })?;
    let signature = Signature::from_bytes(&parts.signature);
    // `verify_strict` also refuses weak public keys and the malleable
    // signature forms plain Ed25519 verification lets through.
    if key.0.verify_strict(parts.signed, &signature).is_err() {
        return Err(TicketError::BadSignature);
    }

    // From here on the payload was written by a holder of the signing key.
    let claims = parse_claims(&parts.payload)?;

    // "Before not_after": at the deadline itself the ticket is already dead.
    if now >= claims.not_after {
        return Err(TicketError::Expired {
            expired_secs_ago: now - claims.not_after,
        });
    }
    Ok(claims)
}

/// A ticket's claims, **unverified**: the signature and the deadline are
/// not checked. Only for a client to know what a ticket it was handed is
/// for (which guest and channels a URL opens); never for a decision to let
/// anyone in, which is [`verify`]'s. The same length and shape bounds apply.
pub fn peek(ticket: &str) -> Result<Claims, TicketError> {
    parse_claims(&split(ticket)?.payload)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Mode;

    const NOW: u64 = 1_700_000_000;

    fn key() -> SigningKey {
        SigningKey::from_seed([7; 32])
    }

    #[test]
    fn any_of_the_accepted_keys_verifies_and_a_retired_one_does_not() {
        let (old, new, other) = (
            SigningKey::from_seed([1; 32]),
            SigningKey::from_seed([2; 32]),
            SigningKey::from_seed([3; 32]),
        );
        let claims = Claims::new("g", ["serial0"], Mode::Interactive, NOW, 60, None);
        let both = [old.verifying_key(), new.verifying_key()];
        for k in [&old, &new] {
            assert_eq!(verify_any(&both, &mint(k, &claims), NOW).unwrap(), claims);
        }
        // The retired key's tickets name it, and are refused as such.
        let after = [new.verifying_key()];
        let old_kid = old.verifying_key().id();
        assert_eq!(
            verify_any(&after, &mint(&old, &claims), NOW),
            Err(TicketError::UnknownKey {
                kid: old_kid.clone()
            })
        );
        let reason = TicketError::UnknownKey {
            kid: old_kid.clone(),
        }
        .to_string();
        assert!(reason.contains(&old_kid) && reason.len() < 100, "{reason}");
        // Only the first MAX_VERIFYING_KEYS keys count.
        let mut many = vec![other.verifying_key(); MAX_VERIFYING_KEYS];
        many.push(new.verifying_key());
        assert!(matches!(
            verify_any(&many, &mint(&new, &claims), NOW),
            Err(TicketError::UnknownKey { .. })
        ));
        assert!(matches!(
            verify_any(&[], &mint(&new, &claims), NOW),
            Err(TicketError::UnknownKey { .. })
        ));
        // A ticket naming a known key but signed by another is forged.
        let forged =
            mint(&other, &claims).replace(&other.verifying_key().id(), &new.verifying_key().id());
        assert_eq!(
            verify_any(&both, &forged, NOW),
            Err(TicketError::BadSignature)
        );
        // Key ids are distinct per key and 11 characters.
        assert_ne!(old.verifying_key().id(), new.verifying_key().id());
        assert_eq!(new.verifying_key().id().len(), KEY_ID_LEN);
    }

    fn claims() -> Claims {
        Claims::new(
            "web1",
            ["serial0", "vnc"],
            Mode::ReadOnly,
            NOW,
            300,
            Some(3600),
        )
    }

    fn err(ticket: &str) -> TicketError {
        verify(&key().verifying_key(), ticket, NOW).unwrap_err()
    }

    #[test]
    fn round_trip() {
        let c = claims();
        let ticket = mint(&key(), &c);
        assert!(ticket.starts_with(PREFIX));
        assert!(
            ticket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "not URL-safe: {ticket}"
        );
        assert_eq!(verify(&key().verifying_key(), &ticket, NOW), Ok(c.clone()));
        assert_eq!(verify(&key().verifying_key(), &ticket, NOW + 299), Ok(c));
    }

    #[test]
    fn peek_reads_the_claims_without_the_key_or_the_clock() {
        let c = claims();
        let ticket = mint(&key(), &c);
        assert_eq!(peek(&ticket), Ok(c.clone()));
        // Expired, or signed by anyone: still readable, never trusted.
        let other = mint(&SigningKey::generate(), &c);
        assert_eq!(peek(&other), Ok(c));
        assert_eq!(
            peek("vt1.e30.AAAAAAAAAAA.AAAA"),
            Err(TicketError::Malformed("signature is not 64 bytes"))
        );
        assert_eq!(peek(&"x".repeat(MAX_TICKET_LEN + 1)), Err(TOO_LONG));
        assert_eq!(
            peek(&sign_payload(&key(), b"{}")),
            Err(TicketError::Malformed("claims have no numeric version"))
        );
    }

    #[test]
    fn expired_at_and_after_the_deadline() {
        let ticket = mint(&key(), &claims());
        let vk = key().verifying_key();
        assert_eq!(
            verify(&vk, &ticket, NOW + 300),
            Err(TicketError::Expired {
                expired_secs_ago: 0
            })
        );
        assert_eq!(
            verify(&vk, &ticket, NOW + 345),
            Err(TicketError::Expired {
                expired_secs_ago: 45
            })
        );
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let mut c = claims();
        let ticket = mint(&key(), &c);
        // Same signature, claims widened to another guest.
        c.guest = "db1".into();
        let forged = mint(&key(), &c);
        let (_, sig) = ticket.rsplit_once('.').unwrap();
        let (head, _) = forged.rsplit_once('.').unwrap();
        assert_eq!(err(&format!("{head}.{sig}")), TicketError::BadSignature);
    }

    #[test]
    fn tampered_signature_is_bad_signature() {
        let ticket = mint(&key(), &claims());
        let (head, sig) = ticket.rsplit_once('.').unwrap();
        let mut bytes = B64.decode(sig).unwrap();
        bytes[10] ^= 1;
        let forged = format!("{head}.{}", B64.encode(bytes));
        assert_eq!(err(&forged), TicketError::BadSignature);
    }

    #[test]
    fn another_key_is_an_unknown_key() {
        let other = SigningKey::generate();
        let ticket = mint(&other, &claims());
        assert_eq!(
            err(&ticket),
            TicketError::UnknownKey {
                kid: other.verifying_key().id()
            }
        );
    }

    #[test]
    fn the_key_id_is_signed() {
        // The same claims and signature under another key id: the signature
        // covers the id, so it no longer verifies (with a key of that id).
        let (a, b) = (
            SigningKey::from_seed([1; 32]),
            SigningKey::from_seed([2; 32]),
        );
        let ticket = mint(&a, &claims());
        let moved = ticket.replace(&a.verifying_key().id(), &b.verifying_key().id());
        assert_eq!(
            verify_any(&[a.verifying_key(), b.verifying_key()], &moved, NOW),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn signature_is_domain_separated_by_prefix() {
        // A signature over the bare payload (no `vt1.`) must not verify.
        let json = serde_json::to_vec(&claims()).unwrap();
        let kid = key().verifying_key().id();
        let payload = format!("{}.{kid}", B64.encode(&json));
        let sig = key().0.sign(payload.as_bytes());
        let ticket = format!("{PREFIX}{payload}.{}", B64.encode(sig.to_bytes()));
        assert_eq!(err(&ticket), TicketError::BadSignature);
    }

    #[test]
    fn malformed_inputs() {
        const SHAPE: &str = "expected vt1.<claims>.<key id>.<signature>";
        const KID: &str = "key id is not 11 base64url characters";
        let good = mint(&key(), &claims());
        let (head, sig) = good.rsplit_once('.').unwrap();
        let (signed_head, kid) = head.rsplit_once('.').unwrap();
        let payload = signed_head.strip_prefix(PREFIX).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("vt1".into(), "does not start with `vt1.`"),
            ("hello".into(), "does not start with `vt1.`"),
            (
                format!("vt2.{payload}.{kid}.{sig}"),
                "does not start with `vt1.`",
            ),
            (
                format!("VT1.{payload}.{kid}.{sig}"),
                "does not start with `vt1.`",
            ),
            (format!(" {good}"), "does not start with `vt1.`"),
            ("vt1.".into(), SHAPE),
            (format!("vt1.{payload}.{sig}"), SHAPE),
            (format!("vt1.{payload}.{kid}{sig}"), SHAPE),
            (format!("{good}.x"), SHAPE),
            (format!("vt1.{payload}.{}.{sig}", &kid[1..]), KID),
            (format!("vt1.{payload}.{kid}A.{sig}"), KID),
            (format!("vt1.{payload}.{}!.{sig}", &kid[1..]), KID),
            (
                format!("vt1.{payload}!.{kid}.{sig}"),
                "claims are not base64url",
            ),
            (
                format!("vt1.{payload}=.{kid}.{sig}"),
                "claims are not base64url",
            ),
            (format!("{good}\n"), "signature is not base64url"),
            (format!("{head}.{sig}=="), "signature is not base64url"),
            (
                format!("{head}.{}", &sig[..84]),
                "signature is not 64 bytes",
            ),
            (format!("{head}."), "signature is not 64 bytes"),
            (
                format!("vt1.{}.{kid}.{sig}", "A".repeat(MAX_TICKET_LEN)),
                "longer than 4096 bytes",
            ),
        ];
        for (ticket, reason) in cases {
            assert_eq!(err(&ticket), TicketError::Malformed(reason), "{ticket:?}");
        }
    }

    #[test]
    fn length_is_checked_before_anything_else() {
        let TicketError::Malformed(reason) = TOO_LONG else {
            unreachable!()
        };
        assert!(reason.contains(&MAX_TICKET_LEN.to_string()), "{reason}");
        let long = "x".repeat(MAX_TICKET_LEN + 1);
        assert_eq!(err(&long), TOO_LONG);
        // Exactly at the limit is looked at (and here refused for its shape).
        let at_limit = "x".repeat(MAX_TICKET_LEN);
        assert_eq!(
            err(&at_limit),
            TicketError::Malformed("does not start with `vt1.`")
        );
    }

    #[test]
    fn typical_tickets_are_far_below_the_limit() {
        let c = Claims::new(
            "a-rather-long-guest-name-for-a-production-vm-0001",
            ["serial0", "serial1", "vnc", "virtio.org.qemu.guest_agent.0"],
            Mode::Interactive,
            NOW,
            u64::MAX,
            Some(u64::MAX),
        );
        assert!(mint(&key(), &c).len() < MAX_TICKET_LEN / 4);
    }

    #[test]
    fn unsupported_version() {
        let mut c = claims();
        c.v = 3;
        assert_eq!(
            err(&mint(&key(), &c)),
            TicketError::UnsupportedVersion { version: 3 }
        );
        // A version-1 ticket (no issue time) is refused as such.
        let v1 = format!(
            r#"{{"v":1,"id":"{}","guest":"web1","channels":["vnc"],"mode":"interactive","not_after":{}}}"#,
            c.id,
            NOW + 60
        );
        let e = err(&sign_payload(&key(), v1.as_bytes()));
        assert_eq!(e, TicketError::UnsupportedVersion { version: 1 });
        assert_eq!(
            e.to_string(),
            "ticket format v1 is not supported here: mint a new one with `vmgate ticket`"
        );
        // A future format with fields v2 lacks is still reported by version.
        let future = br#"{"v":300,"audience":"x"}"#;
        assert_eq!(
            err(&sign_payload(&key(), future)),
            TicketError::UnsupportedVersion { version: 300 }
        );
    }

    #[test]
    fn signed_but_bad_claims_are_malformed() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "claims are not a JSON object"),
            (b"[1]", "claims are not a JSON object"),
            (b"{\"v\":2} x", "claims are not a JSON object"),
            (b"\xff", "claims are not a JSON object"),
            (b"{}", "claims have no numeric version"),
            (b"{\"v\":\"2\"}", "claims have no numeric version"),
            (b"{\"v\":2}", "claims do not match format v2"),
            (
                br#"{"v":2,"id":"0123456789abcdef0123456789abcdef","guest":"g","channels":[],"mode":"interactive","iat":0,"not_after":1,"extra":1}"#,
                "claims do not match format v2",
            ),
            (
                br#"{"v":2,"id":"x","guest":"g","channels":[],"mode":"interactive","iat":0,"not_after":1}"#,
                "ticket id is not 32 lowercase hex digits",
            ),
        ];
        for (payload, reason) in cases {
            assert_eq!(
                err(&sign_payload(&key(), payload)),
                TicketError::Malformed(reason),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    fn arb_claims() -> impl Strategy<Value = Claims> {
        (
            "[a-z0-9-]{0,40}",
            proptest::collection::vec("[a-z0-9._-]{0,20}", 0..5),
            any::<bool>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
        )
            .prop_map(|(guest, channels, ro, not_after, max_session, iat)| {
                let mode = if ro {
                    Mode::ReadOnly
                } else {
                    Mode::Interactive
                };
                let mut c = Claims::new(guest, channels, mode, 0, 0, max_session);
                c.not_after = not_after;
                c.iat = iat;
                c
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_any_string(s in any::<String>(), now in any::<u64>()) {
            let _ = verify(&key().verifying_key(), &s, now);
        }

        #[test]
        fn peek_never_panics_and_agrees_with_verify(s in any::<String>()) {
            if let Ok(c) = verify(&key().verifying_key(), &s, 0) {
                prop_assert_eq!(peek(&s), Ok(c));
            }
        }

        #[test]
        fn never_panics_on_any_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..5000),
            now in any::<u64>(),
        ) {
            let _ = verify(&key().verifying_key(), &String::from_utf8_lossy(&bytes), now);
        }

        #[test]
        fn never_panics_on_ticket_shaped_strings(
            payload in "[A-Za-z0-9_-]{0,200}",
            sig in "[A-Za-z0-9_-]{80,90}",
        ) {
            let ticket = format!("{PREFIX}{payload}.{sig}");
            prop_assert!(verify(&key().verifying_key(), &ticket, NOW).is_err());
        }

        #[test]
        fn never_panics_on_signed_garbage(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            now in any::<u64>(),
        ) {
            let ticket = sign_payload(&key(), &payload);
            let _ = verify(&key().verifying_key(), &ticket, now);
        }

        #[test]
        fn any_claims_round_trip(c in arb_claims()) {
            let ticket = mint(&key(), &c);
            let now = c.not_after.saturating_sub(1);
            if c.not_after > 0 {
                prop_assert_eq!(verify(&key().verifying_key(), &ticket, now), Ok(c));
            }
        }

        #[test]
        fn any_single_character_change_is_refused(
            c in arb_claims(),
            pos in any::<prop::sample::Index>(),
            replacement in any::<char>(),
        ) {
            let ticket = mint(&key(), &c);
            let chars: Vec<char> = ticket.chars().collect();
            let i = pos.index(chars.len());
            prop_assume!(chars[i] != replacement);
            let mut tampered = chars;
            tampered[i] = replacement;
            let tampered: String = tampered.into_iter().collect();
            let now = c.not_after.saturating_sub(1);
            prop_assert!(verify(&key().verifying_key(), &tampered, now).is_err());
        }

        #[test]
        fn any_url_safe_character_change_is_refused(
            c in arb_claims(),
            pos in any::<prop::sample::Index>(),
            replacement in "[A-Za-z0-9_.-]",
        ) {
            // The likeliest forgery attempt: stays inside the ticket alphabet,
            // so it must be the signature (or canonical base64) that catches it.
            let ticket = mint(&key(), &c);
            let i = pos.index(ticket.len());
            let replacement = replacement.as_bytes()[0];
            prop_assume!(ticket.as_bytes()[i] != replacement);
            let mut tampered = ticket.into_bytes();
            tampered[i] = replacement;
            let tampered = String::from_utf8(tampered).unwrap();
            let now = c.not_after.saturating_sub(1);
            prop_assert!(verify(&key().verifying_key(), &tampered, now).is_err());
        }
    }
}
