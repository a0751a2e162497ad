//! Ticket redemption at the gateway: signature and expiry, issue time
//! (maximum lifetime, and the epoch rule: [`vmgate_ticket::IssuePolicy`],
//! whose start is the store's epoch), scope, single use in the store
//! ([`crate::store`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use vmgate_ticket::{verify_any, Claims, IssuePolicy, TicketError, VerifyingKey};

use crate::store::{Store, StoreError, Use};

/// Why a ticket could not be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// The ticket was refused for itself (its own reason).
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The store could not say whether the ticket was used: refused, since
    /// single use cannot be checked (fail closed).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks tickets with verifying keys only: the gateway cannot mint.
pub struct TicketCheck {
    /// The keys tickets are accepted from (the current one first); replaced
    /// on SIGHUP ([`TicketCheck::set_keys`]).
    keys: RwLock<Vec<VerifyingKey>>,
    /// The maximum lifetime, in seconds (replaced on SIGHUP).
    max_ttl: AtomicU64,
    /// The clock-skew margin, in seconds (replaced on SIGHUP).
    skew: AtomicU64,
    /// Where single use is recorded, and the epoch before which no ticket
    /// is accepted.
    store: Arc<Store>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TicketCheck {
    /// A check with `keys`, accepting tickets that live at most `max_ttl`
    /// seconds and were issued more than `skew` seconds after the store's
    /// epoch.
    pub fn new(keys: Vec<VerifyingKey>, max_ttl: u64, skew: u64, store: Arc<Store>) -> TicketCheck {
        TicketCheck {
            keys: RwLock::new(keys),
            max_ttl: AtomicU64::new(max_ttl),
            skew: AtomicU64::new(skew),
            store,
        }
    }

    fn policy(&self) -> IssuePolicy {
        IssuePolicy {
            max_ttl: self.max_ttl.load(Ordering::Relaxed),
            skew: self.skew.load(Ordering::Relaxed),
            started: self.store.epoch(),
        }
    }

    /// Unix seconds after which tickets may have been issued: a ticket
    /// minted at or before it is refused as issued before the store began.
    pub fn accepts_issued_after(&self) -> u64 {
        self.policy().accepts_after()
    }

    /// Replaces the maximum lifetime and the clock-skew margin (SIGHUP).
    pub fn set_issue_limits(&self, max_ttl: u64, skew: u64) {
        self.max_ttl.store(max_ttl, Ordering::Relaxed);
        self.skew.store(skew, Ordering::Relaxed);
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
        self.policy().check(&claims, now)?;
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

    /// Uses a checked ticket up, once in the whole store. Called last,
    /// once the session can open, so a ticket sent to the wrong channel or
    /// to a guest that is not up yet still works afterwards.
    pub async fn redeem(&self, claims: &Claims) -> Result<(), RedeemError> {
        match self
            .store
            .use_ticket(claims, self.skew.load(Ordering::Relaxed))
            .await?
        {
            Use::First => Ok(()),
            Use::Replayed => Err(TicketError::Replayed.into()),
            Use::BeforeEpoch => Err(TicketError::IssuedBeforeRestart.into()),
            Use::Full => Err(TicketError::ReplayCacheFull.into()),
        }
    }

    /// Redeems `ticket` for a web console page, whatever its channels: the
    /// page's streams then join the page session ([`crate::pages`]).
    pub async fn redeem_page(&self, ticket: &str) -> Result<Claims, RedeemError> {
        let claims = self.verified(ticket)?;
        self.redeem(&claims).await?;
        Ok(claims)
    }
}
