//! Ticket redemption at the gateway: signature and expiry, issue time
//! (maximum lifetime, and the restart rule: [`vmgate_ticket::IssuePolicy`]),
//! scope, single use.

use std::sync::{Mutex, RwLock};

use vmgate_ticket::{verify_any, Claims, IssuePolicy, ReplayGuard, TicketError, VerifyingKey};

/// Tickets remembered as used at once; a ticket lives seconds, so this is
/// far above any real rate and only bounds memory against abuse.
const REPLAY_CAPACITY: usize = 1_000_000;

/// Checks tickets with verifying keys only: the gateway cannot mint.
pub struct TicketCheck {
    /// The keys tickets are accepted from (the current one first); replaced
    /// on SIGHUP ([`TicketCheck::set_keys`]).
    keys: RwLock<Vec<VerifyingKey>>,
    /// The maximum lifetime, the clock-skew margin, and this process's
    /// start: no ticket issued before it is accepted.
    policy: IssuePolicy,
    replay: Mutex<ReplayGuard>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TicketCheck {
    /// A check with `keys`, accepting tickets that live at most `max_ttl`
    /// seconds and were issued more than `skew` seconds after now (this
    /// process's start).
    pub fn new(keys: Vec<VerifyingKey>, max_ttl: u64, skew: u64) -> TicketCheck {
        TicketCheck {
            keys: RwLock::new(keys),
            policy: IssuePolicy {
                max_ttl,
                skew,
                started: unix_now(),
            },
            replay: Mutex::new(ReplayGuard::new(REPLAY_CAPACITY)),
        }
    }

    /// Unix seconds after which tickets may have been issued: a ticket
    /// minted at or before it is refused as issued before the restart.
    pub fn accepts_issued_after(&self) -> u64 {
        self.policy.accepts_after()
    }

    /// Replaces the accepted keys (key rotation); sessions already open are
    /// not affected, used tickets stay used.
    pub fn set_keys(&self, keys: Vec<VerifyingKey>) {
        *self.keys.write().expect("ticket keys lock") = keys;
    }

    /// Signature, expiry and issue time.
    fn verified(&self, ticket: &str) -> Result<Claims, TicketError> {
        let now = unix_now();
        // A copy of a few 32-byte keys: no lock is held while verifying.
        let keys = self.keys.read().expect("ticket keys lock").clone();
        let claims = verify_any(&keys, ticket, now)?;
        self.policy.check(&claims, now)?;
        Ok(claims)
    }

    /// Checks `ticket` for one session on `guest`/`channel`: signature,
    /// expiry, issue time and scope. It is not used up yet: see
    /// [`TicketCheck::redeem`].
    pub fn check(&self, ticket: &str, guest: &str, channel: &str) -> Result<Claims, TicketError> {
        let claims = self.verified(ticket)?;
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
        let claims = self.verified(ticket)?;
        self.redeem(&claims)?;
        Ok(claims)
    }
}
