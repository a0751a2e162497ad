//! Ticket redemption at the gateway: signature and expiry, scope, single use.

use std::sync::Mutex;

use vmgate_ticket::{verify, Claims, ReplayGuard, TicketError, VerifyingKey};

/// Tickets remembered as used at once; a ticket lives seconds, so this is
/// far above any real rate and only bounds memory against abuse.
const REPLAY_CAPACITY: usize = 1_000_000;

/// Checks tickets with the verifying key only: the gateway cannot mint.
pub struct TicketCheck {
    key: VerifyingKey,
    replay: Mutex<ReplayGuard>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TicketCheck {
    pub fn new(key: VerifyingKey) -> TicketCheck {
        TicketCheck {
            key,
            replay: Mutex::new(ReplayGuard::new(REPLAY_CAPACITY)),
        }
    }

    /// Checks `ticket` for one session on `guest`/`channel`: signature,
    /// expiry and scope. It is not used up yet: see [`TicketCheck::redeem`].
    pub fn check(&self, ticket: &str, guest: &str, channel: &str) -> Result<Claims, TicketError> {
        let claims = verify(&self.key, ticket, unix_now())?;
        claims.allows(guest, channel)?;
        Ok(claims)
    }

    /// Uses a checked ticket up. Called last, once the session can open, so
    /// a ticket sent to the wrong channel or to a guest that is not up yet
    /// still works afterwards.
    pub fn redeem(&self, claims: &Claims) -> Result<(), TicketError> {
        self.replay
            .lock()
            .expect("replay lock")
            .redeem(claims, unix_now())
    }

    /// Redeems `ticket` for a web console page, whatever its channels: the
    /// page's streams then join the page session ([`crate::pages`]).
    pub fn redeem_page(&self, ticket: &str) -> Result<Claims, TicketError> {
        let claims = verify(&self.key, ticket, unix_now())?;
        self.redeem(&claims)?;
        Ok(claims)
    }
}
