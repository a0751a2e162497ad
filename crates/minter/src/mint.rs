//! The minting core: checks a ticket request against the minter's caps and
//! signs it. No sockets; the caller passes `now` (unix seconds).

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vmgate_client::url;
use vmgate_ticket::{Claims, Mode, SigningKey, MAX_TICKET_LEN};

/// Most channels one ticket may name.
pub const MAX_CHANNELS: usize = 32;

/// What a ticket may ask for at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Longest time to redeem a ticket, in seconds.
    pub max_ttl_secs: u64,
    /// Longest `max_session` a ticket may carry, in seconds. A ticket may
    /// also carry none (no session length limit).
    pub max_session_secs: u64,
}

impl Default for Caps {
    /// `vmgate admin`'s defaults: 5 minutes to redeem, sessions of up to a
    /// day.
    fn default() -> Caps {
        Caps {
            max_ttl_secs: 300,
            max_session_secs: 24 * 3600,
        }
    }
}

/// The caps of `vmgate ticket` minting from a state directory's key (the
/// demo): an hour to redeem, which is also the longest ticket lifetime a
/// gateway accepts by default.
pub const LOCAL_CAPS: Caps = Caps {
    max_ttl_secs: 3600,
    max_session_secs: 24 * 3600,
};

/// The largest cap a configuration may set for either value: a year. Far
/// beyond any use, and far from where adding it to a clock could overflow.
pub const CAP_LIMIT_SECS: u64 = 366 * 24 * 3600;

/// What a ticket is asked for (`POST /v1/tickets`' body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    pub guest: String,
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Seconds to redeem it.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// Longest session it opens, in seconds; none: no limit.
    #[serde(default)]
    pub max_session_secs: Option<u64>,
}

fn default_channels() -> Vec<String> {
    vec!["serial0".into()]
}
fn default_mode() -> Mode {
    Mode::Interactive
}
fn default_ttl() -> u64 {
    60
}

/// A minted ticket and where to use it (`POST /v1/tickets`' answer, and
/// `vmgate ticket --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedTicket {
    /// Opens the web console.
    pub url: String,
    /// The WebSocket of the first channel.
    pub ws_url: String,
    pub ticket: String,
    /// The ticket's id, as the gateway's audit log and sessions show it.
    #[serde(default)]
    pub id: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Unix seconds.
    pub expires_at_unix: u64,
}

/// Why a ticket was not minted. Each text says what to ask for instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// No channel, or more than [`MAX_CHANNELS`].
    #[error("name 1 to {MAX_CHANNELS} channels")]
    ChannelCount,
    /// A guest or channel name outside `[A-Za-z0-9._:-]{1,128}`.
    #[error("invalid name {0:?}: use letters, digits and . _ : - (at most 128)")]
    Name(String),
    /// A time to redeem of 0 or above the cap.
    #[error("ttl must be 1 to {max} seconds")]
    Ttl { max: u64 },
    /// A session length of 0 or above the cap.
    #[error("max_session must be 1 to {max} seconds (or none, for no limit)")]
    MaxSession { max: u64 },
    /// The names are valid but the ticket would exceed what a gateway
    /// reads.
    #[error("the ticket would be {len} bytes, over the {MAX_TICKET_LEN} a gateway reads: name fewer or shorter channels")]
    TooLong { len: usize },
    /// The base URL the minter hands out is not `https://host[:port]`.
    #[error("public URL: {0}")]
    PublicUrl(String),
}

/// Signs tickets for one gateway address, within [`Caps`].
pub struct Minter {
    key: SigningKey,
    /// The gateway's public base URL, for the URLs handed out.
    public_url: String,
    caps: Caps,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("key", &self.key)
            .field("public_url", &self.public_url)
            .field("caps", &self.caps)
            .finish()
    }
}

impl Minter {
    /// A minter for the gateway at `public_url` (`https://host[:port]`).
    pub fn new(key: SigningKey, public_url: &str, caps: Caps) -> Result<Minter, MintError> {
        url::web_url(public_url, "t").map_err(|e| MintError::PublicUrl(e.to_string()))?;
        Ok(Minter {
            key,
            public_url: public_url.trim_end_matches('/').to_string(),
            caps,
        })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Checks `req` against the caps and signs it, valid from `now`.
    pub fn mint(&self, req: &TicketRequest, now: u64) -> Result<(MintedTicket, Claims), MintError> {
        if req.channels.is_empty() || req.channels.len() > MAX_CHANNELS {
            return Err(MintError::ChannelCount);
        }
        for name in std::iter::once(&req.guest).chain(&req.channels) {
            if !vmgate_wire::valid_name(name) {
                return Err(MintError::Name(name.chars().take(40).collect()));
            }
        }
        if req.ttl_secs == 0 || req.ttl_secs > self.caps.max_ttl_secs {
            return Err(MintError::Ttl {
                max: self.caps.max_ttl_secs,
            });
        }
        if let Some(s) = req.max_session_secs {
            if s == 0 || s > self.caps.max_session_secs {
                return Err(MintError::MaxSession {
                    max: self.caps.max_session_secs,
                });
            }
        }
        let claims = Claims::new(
            req.guest.clone(),
            req.channels.clone(),
            req.mode,
            now,
            req.ttl_secs,
            req.max_session_secs,
        );
        let ticket = vmgate_ticket::mint(&self.key, &claims);
        if ticket.len() > MAX_TICKET_LEN {
            return Err(MintError::TooLong { len: ticket.len() });
        }
        let expires = UNIX_EPOCH + Duration::from_secs(claims.not_after);
        let bad_url = |e: vmgate_client::ClientError| MintError::PublicUrl(e.to_string());
        let minted = MintedTicket {
            url: url::web_url(&self.public_url, &ticket).map_err(bad_url)?,
            ws_url: url::ws_url(
                &self.public_url,
                &claims.guest,
                &claims.channels[0],
                &ticket,
            )
            .map_err(bad_url)?,
            id: claims.id.clone(),
            expires_at: humantime::format_rfc3339_seconds(expires).to_string(),
            expires_at_unix: claims.not_after,
            ticket,
        };
        Ok((minted, claims))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn minter() -> Minter {
        Minter::new(
            SigningKey::from_seed([3; 32]),
            "https://gw.example:8443",
            Caps {
                max_ttl_secs: 300,
                max_session_secs: 3600,
            },
        )
        .unwrap()
    }

    fn req() -> TicketRequest {
        TicketRequest {
            guest: "web1".into(),
            channels: vec!["serial0".into(), "vnc".into()],
            mode: Mode::ReadOnly,
            ttl_secs: 60,
            max_session_secs: Some(600),
        }
    }

    #[test]
    fn a_minted_ticket_verifies_and_says_where_to_use_it() {
        let m = minter();
        let (t, claims) = m.mint(&req(), NOW).unwrap();
        let vk = SigningKey::from_seed([3; 32]).verifying_key();
        assert_eq!(
            vmgate_ticket::verify(&vk, &t.ticket, NOW),
            Ok(claims.clone())
        );
        assert_eq!(claims.not_after, NOW + 60);
        assert_eq!(claims.max_session, Some(600));
        assert_eq!(t.id, claims.id);
        assert_eq!(
            t.ws_url,
            format!("wss://gw.example:8443/ws/web1/serial0?ticket={}", t.ticket)
        );
        assert_eq!(
            t.url,
            format!("https://gw.example:8443/console#ticket={}", t.ticket)
        );
        assert_eq!(t.expires_at, "2023-11-14T22:14:20Z");
    }

    #[test]
    fn the_ttl_is_capped() {
        let m = minter();
        for ttl in [0, 301, u64::MAX] {
            let r = TicketRequest {
                ttl_secs: ttl,
                ..req()
            };
            assert_eq!(
                m.mint(&r, NOW).unwrap_err(),
                MintError::Ttl { max: 300 },
                "{ttl}"
            );
        }
        let r = TicketRequest {
            ttl_secs: 300,
            ..req()
        };
        assert_eq!(m.mint(&r, NOW).unwrap().1.not_after, NOW + 300);
    }

    #[test]
    fn the_session_length_is_capped_and_none_means_no_limit() {
        let m = minter();
        for s in [0, 3601, u64::MAX] {
            let r = TicketRequest {
                max_session_secs: Some(s),
                ..req()
            };
            assert_eq!(
                m.mint(&r, NOW).unwrap_err(),
                MintError::MaxSession { max: 3600 },
                "{s}"
            );
        }
        let r = TicketRequest {
            max_session_secs: None,
            ..req()
        };
        assert_eq!(m.mint(&r, NOW).unwrap().1.max_session, None);
    }

    #[test]
    fn channels_are_bounded_in_number_and_length() {
        let m = minter();
        let with = |channels: Vec<String>| TicketRequest { channels, ..req() };
        assert_eq!(
            m.mint(&with(vec![]), NOW).unwrap_err(),
            MintError::ChannelCount
        );
        let many: Vec<String> = (0..=MAX_CHANNELS).map(|i| format!("c{i}")).collect();
        assert_eq!(
            m.mint(&with(many.clone()), NOW).unwrap_err(),
            MintError::ChannelCount
        );
        assert!(m.mint(&with(many[..MAX_CHANNELS].to_vec()), NOW).is_ok());
        assert!(matches!(
            m.mint(&with(vec!["x".repeat(129)]), NOW),
            Err(MintError::Name(_))
        ));
        assert!(matches!(
            m.mint(&with(vec!["a/b".into()]), NOW),
            Err(MintError::Name(_))
        ));
        // Each name valid, together too long for a gateway to read.
        let long: Vec<String> = (0..MAX_CHANNELS).map(|i| format!("{i:0>128}")).collect();
        assert!(matches!(
            m.mint(&with(long), NOW),
            Err(MintError::TooLong { .. })
        ));
    }

    #[test]
    fn a_bad_public_url_is_refused_at_start() {
        for url in ["http://gw", "gw:8443", "https://gw/console"] {
            assert!(matches!(
                Minter::new(SigningKey::from_seed([3; 32]), url, Caps::default()),
                Err(MintError::PublicUrl(_))
            ));
        }
    }

    proptest! {
        #[test]
        fn whatever_is_asked_a_minted_ticket_is_within_the_caps_and_readable(
            ttl in any::<u64>(),
            session in proptest::option::of(any::<u64>()),
            n in 0usize..40,
            len in 1usize..140,
        ) {
            let m = minter();
            let r = TicketRequest {
                guest: "g".into(),
                channels: (0..n).map(|i| format!("{i:0>len$}")).collect(),
                mode: Mode::Interactive,
                ttl_secs: ttl,
                max_session_secs: session,
            };
            if let Ok((t, c)) = m.mint(&r, NOW) {
                prop_assert!(c.not_after - NOW <= 300 && c.not_after > NOW);
                prop_assert!(c.max_session.is_none_or(|s| (1..=3600).contains(&s)));
                prop_assert!(t.ticket.len() <= MAX_TICKET_LEN);
                prop_assert!((1..=MAX_CHANNELS).contains(&c.channels.len()));
                let vk = SigningKey::from_seed([3; 32]).verifying_key();
                prop_assert_eq!(vmgate_ticket::verify(&vk, &t.ticket, NOW), Ok(c));
            }
        }
    }
}
