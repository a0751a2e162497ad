//! Web console sessions: how one redeemed ticket becomes the streams of one
//! page (screen, serial console) and nothing else.
//!
//! The page sends its ticket once, over HTTPS (`POST /api/session`); the
//! gateway redeems it (single use, as for any session) and answers with a
//! random session token bound to that ticket's guest, channels and mode.
//! The page's WebSockets present the token (`?session=`); each channel of
//! the ticket may be opened once with it, within [`JOIN_WINDOW`] of the
//! redemption, and the ticket's maximum session length counts from the
//! redemption for all of them. A token is useless for another guest or
//! channel, and for a second stream on the same channel.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmgate_ticket::{Claims, Mode};

/// How long after redemption the page may open its streams.
pub const JOIN_WINDOW: Duration = Duration::from_secs(60);
/// Page sessions waiting for their streams at once: bounds memory.
const CAPACITY: usize = 10_000;

/// What a stream of a page session may open (the session pipeline makes
/// its [`crate::session::Grant`] from it).
#[derive(Debug, Clone)]
pub struct PageGrant {
    /// The redeemed ticket's id, for logs.
    pub ticket: String,
    pub mode: Mode,
    /// When every stream of the page must end, if the ticket limits it.
    pub until: Option<Instant>,
    /// Whether the ticket names `audio` (whether or not that channel was
    /// opened yet): [`crate::session::Grant::audio`].
    pub audio: bool,
}

impl PageGrant {
    /// What a stream of the page session of `claims`, redeemed at
    /// `redeemed`, may open.
    pub fn of(claims: &Claims, redeemed: Instant) -> PageGrant {
        PageGrant {
            ticket: claims.id.clone(),
            mode: claims.mode,
            // Checked: a minter may sign any length; one too large for the
            // clock is no limit, and never a panic with a lock held.
            until: claims
                .max_session
                .and_then(|s| redeemed.checked_add(Duration::from_secs(s))),
            audio: claims.names_audio(),
        }
    }
}

struct Page {
    claims: Claims,
    redeemed: Instant,
    /// Channels not opened yet.
    unopened: Vec<String>,
}

/// Why a stream could not join a page session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Unknown token, or its join window passed, or all its channels are open.
    #[error("unknown or expired page session: reload the page with a new ticket")]
    Unknown,
    /// The token is for another guest.
    #[error("this page session is for another guest")]
    WrongGuest,
    /// The channel is not in the ticket, or already open.
    #[error("channel {0} is not in this page session, or is already open")]
    Channel(String),
    /// Too many page sessions are waiting.
    #[error("too many page sessions are being opened: try again shortly")]
    Full,
}

/// The page sessions of one gateway, in memory (the embedded store's; a
/// fleet keeps them in Redis: [`crate::store::redis`]).
#[derive(Default)]
pub struct Pages {
    pages: Mutex<HashMap<String, Page>>,
}

impl Pages {
    /// Starts a page session for claims just redeemed; returns its token.
    pub fn start(&self, claims: Claims, now: Instant) -> Result<String, JoinError> {
        let mut pages = self.pages.lock().expect("pages lock");
        pages.retain(|_, p| now.duration_since(p.redeemed) < JOIN_WINDOW);
        if pages.len() >= CAPACITY {
            return Err(JoinError::Full);
        }
        let token = super::page_token();
        pages.insert(
            token.clone(),
            Page {
                unopened: claims.channels.clone(),
                claims,
                redeemed: now,
            },
        );
        Ok(token)
    }

    /// Opens `channel` of `guest` with `token`, once.
    pub fn join(
        &self,
        token: &str,
        guest: &str,
        channel: &str,
        now: Instant,
    ) -> Result<PageGrant, JoinError> {
        let mut pages = self.pages.lock().expect("pages lock");
        let page = pages.get_mut(token).ok_or(JoinError::Unknown)?;
        if now.duration_since(page.redeemed) >= JOIN_WINDOW {
            pages.remove(token);
            return Err(JoinError::Unknown);
        }
        if page.claims.guest != guest {
            return Err(JoinError::WrongGuest);
        }
        let i = page
            .unopened
            .iter()
            .position(|c| c == channel)
            .ok_or_else(|| JoinError::Channel(channel.into()))?;
        page.unopened.swap_remove(i);
        let grant = PageGrant::of(&page.claims, page.redeemed);
        if page.unopened.is_empty() {
            pages.remove(token);
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims::new("demo", ["vnc", "serial0"], Mode::ReadOnly, 0, 60, Some(30))
    }

    #[test]
    fn each_channel_joins_once_and_only_for_its_guest() {
        let pages = Pages::default();
        let now = Instant::now();
        let t = pages.start(claims(), now).unwrap();
        assert_eq!(
            pages.join(&t, "other", "vnc", now).unwrap_err(),
            JoinError::WrongGuest
        );
        assert!(matches!(
            pages.join(&t, "demo", "test.echo", now),
            Err(JoinError::Channel(_))
        ));
        let g = pages.join(&t, "demo", "vnc", now).unwrap();
        assert_eq!(g.mode, Mode::ReadOnly);
        assert!(!g.audio, "the ticket does not name audio");
        assert_eq!(g.until, Some(now + Duration::from_secs(30)));
        assert!(matches!(
            pages.join(&t, "demo", "vnc", now),
            Err(JoinError::Channel(_))
        ));
        pages.join(&t, "demo", "serial0", now).unwrap();
        // All channels open: the token is gone.
        assert_eq!(
            pages.join(&t, "demo", "serial0", now).unwrap_err(),
            JoinError::Unknown
        );
        assert_eq!(
            pages.join("nope", "demo", "vnc", now).unwrap_err(),
            JoinError::Unknown
        );
    }

    #[test]
    fn every_stream_of_a_page_whose_ticket_names_audio_may_carry_it() {
        let pages = Pages::default();
        let now = Instant::now();
        let claims = Claims::new("demo", ["audio", "vnc"], Mode::ReadOnly, 0, 60, None);
        let t = pages.start(claims, now).unwrap();
        // Opened first, `audio` still counts for the screen after it.
        assert!(pages.join(&t, "demo", "audio", now).unwrap().audio);
        assert!(pages.join(&t, "demo", "vnc", now).unwrap().audio);
    }

    #[test]
    fn a_token_expires_after_the_join_window() {
        let pages = Pages::default();
        let now = Instant::now();
        let t = pages.start(claims(), now).unwrap();
        let later = now + JOIN_WINDOW;
        assert_eq!(
            pages.join(&t, "demo", "vnc", later).unwrap_err(),
            JoinError::Unknown
        );
    }
}
