//! What a ticket grants: the [`Claims`] a minter signs and the gateway reads
//! back, and the scope check [`Claims::allows`].

use serde::{Deserialize, Serialize};

use crate::TicketError;

/// The claims format version this crate mints and accepts. Version 2 added
/// [`Claims::iat`]; version-1 tickets are refused as unsupported.
pub const VERSION: u8 = 2;

/// Whether a session may send input to the guest or only watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Input from the user is relayed to the guest.
    Interactive,
    /// Output only: the gateway drops the user's input.
    ReadOnly,
}

impl Mode {
    /// The name used on the wire and in configuration: `interactive` or `read-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Interactive => "interactive",
            Mode::ReadOnly => "read-only",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The signed content of a ticket: one console session on one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// A signed field this build does not know could be a restriction added by a
// newer minter; ignoring it would grant more than was meant, so refuse.
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Format version, [`VERSION`].
    pub v: u8,
    /// Unique id: 128 random bits as 32 lowercase hex digits. It is the key
    /// under which single use is enforced.
    pub id: String,
    /// The guest this ticket opens a console on.
    pub guest: String,
    /// The channels this ticket may open, e.g. `serial0`, `vnc`, `test.echo`.
    pub channels: Vec<String>,
    /// Interactive or read-only.
    pub mode: Mode,
    /// Unix seconds: when the ticket was minted. A gateway refuses tickets
    /// issued before it started (the previous process may have redeemed
    /// them) and tickets that would live longer than it allows
    /// ([`IssuePolicy`](crate::IssuePolicy)).
    pub iat: u64,
    /// Unix seconds: the session must be opened before this instant.
    pub not_after: u64,
    /// How many seconds a session opened with this ticket may last, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session: Option<u64>,
}

/// The channel name that, in a ticket's scope, allows audio: its own
/// channel (the agent's audio stream) and QEMU's audio on a `vnc` session.
pub const AUDIO_SCOPE: &str = "audio";

impl Claims {
    /// Whether the scope names [`AUDIO_SCOPE`].
    pub fn names_audio(&self) -> bool {
        self.channels.iter().any(|c| c == AUDIO_SCOPE)
    }

    /// Claims with a fresh random id, valid from `now` for `ttl_secs`
    /// seconds (a `ttl_secs` of 0 makes a ticket that is already expired).
    pub fn new(
        guest: impl Into<String>,
        channels: impl IntoIterator<Item = impl Into<String>>,
        mode: Mode,
        now: u64,
        ttl_secs: u64,
        max_session: Option<u64>,
    ) -> Claims {
        Claims {
            v: VERSION,
            id: new_id(),
            guest: guest.into(),
            channels: channels.into_iter().map(Into::into).collect(),
            mode,
            iat: now,
            not_after: now.saturating_add(ttl_secs),
            max_session,
        }
    }

    /// Whether these claims cover opening `channel` on `guest`.
    pub fn allows(&self, guest: &str, channel: &str) -> Result<(), TicketError> {
        if self.guest != guest {
            return Err(TicketError::WrongGuest);
        }
        if !self.channels.iter().any(|c| c == channel) {
            return Err(TicketError::WrongChannel);
        }
        Ok(())
    }
}

/// 128 bits from the OS generator: enough that two tickets never share an id,
/// which single use relies on.
fn new_id() -> String {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).expect("the operating system's random generator");
    format!("{:032x}", u128::from_le_bytes(raw))
}

/// The id as a number, if it has exactly the form [`Claims::new`] produces.
///
/// The characters are checked by hand because `from_str_radix` also accepts a
/// leading `+`, which would give one id two spellings.
pub(crate) fn parse_id(id: &str) -> Result<u128, TicketError> {
    const BAD_ID: TicketError = TicketError::Malformed("ticket id is not 32 lowercase hex digits");
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(BAD_ID);
    }
    u128::from_str_radix(id, 16).map_err(|_| BAD_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims::new(
            "web1",
            ["serial0", "vnc"],
            Mode::Interactive,
            1_000,
            60,
            None,
        )
    }

    #[test]
    fn new_fills_version_id_and_deadline() {
        let c = claims();
        assert_eq!(c.v, VERSION);
        assert_eq!(c.iat, 1_000);
        assert_eq!(c.not_after, 1_060);
        assert!(parse_id(&c.id).is_ok(), "{}", c.id);
        assert_ne!(c.id, claims().id);
    }

    #[test]
    fn deadline_saturates() {
        let c = Claims::new("g", ["vnc"], Mode::ReadOnly, u64::MAX - 1, 10, Some(5));
        assert_eq!(c.not_after, u64::MAX);
    }

    #[test]
    fn allows_checks_guest_then_channel() {
        let c = claims();
        assert_eq!(c.allows("web1", "vnc"), Ok(()));
        assert_eq!(c.allows("web1", "serial0"), Ok(()));
        assert_eq!(c.allows("web2", "vnc"), Err(TicketError::WrongGuest));
        assert_eq!(c.allows("web1", "serial1"), Err(TicketError::WrongChannel));
        assert_eq!(c.allows("web1", ""), Err(TicketError::WrongChannel));
    }

    #[test]
    fn mode_names() {
        assert_eq!(
            serde_json::to_string(&Mode::ReadOnly).unwrap(),
            "\"read-only\""
        );
        assert_eq!(
            serde_json::to_string(&Mode::Interactive).unwrap(),
            "\"interactive\""
        );
        assert_eq!(Mode::ReadOnly.to_string(), "read-only");
    }

    #[test]
    fn json_omits_unlimited_session_and_refuses_unknown_fields() {
        let c = claims();
        let json = serde_json::to_value(&c).unwrap();
        assert!(json.get("max_session").is_none());
        let back: Claims = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, c);

        let mut extra = json;
        extra["source_ip"] = "10.0.0.1".into();
        assert!(serde_json::from_value::<Claims>(extra).is_err());
    }

    #[test]
    fn id_must_be_canonical_hex() {
        assert!(parse_id("0123456789abcdef0123456789abcdef").is_ok());
        for bad in [
            "",
            "0123456789abcdef",
            "0123456789ABCDEF0123456789abcdef",
            "+123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef0",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }
}
