//! Single use: remembering which tickets were already redeemed.
//!
//! [`ReplayGuard`] does it in memory for one process. The gateway records
//! single use in its store instead (`crates/gateway/src/store/`: an embedded
//! database, or a fleet's Redis with `SET NX PX`); [`replay_key`] and
//! [`replay_ttl`] give the key and lifetime such a set-if-absent entry needs.
//!
//! An id only has to be remembered until its ticket's `not_after`: from then
//! on [`verify`](crate::verify) refuses the ticket as expired whatever the
//! guard says, so forgetting it cannot let it be used twice. That keeps the
//! memory bounded by the tickets alive at once rather than all ever used.
//! This holds only if the guard and `verify` are given the same clock.

use std::collections::{BTreeSet, HashMap};

use crate::claims::parse_id;
use crate::{Claims, TicketError};

/// The set of redeemed, unexpired ticket ids, with a hard capacity.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    /// id -> not_after, for the membership check.
    by_id: HashMap<u128, u64>,
    /// (not_after, id), oldest deadline first, so purging touches only the
    /// entries that expired: amortised O(log n) per redeem.
    by_expiry: BTreeSet<(u64, u128)>,
}

impl ReplayGuard {
    /// A guard that remembers at most `capacity` live tickets. Each takes
    /// roughly 100 bytes, so even a million is about 100 MB.
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            capacity,
            by_id: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// Marks the ticket with these (already verified) claims as used.
    ///
    /// Fails with `Replayed` if it was used before and has not expired,
    /// `Expired` if it has, and `ReplayCacheFull` if the guard is full of
    /// live tickets: refusing a new ticket is safe, forgetting a live one is not.
    pub fn redeem(&mut self, claims: &Claims, now: u64) -> Result<(), TicketError> {
        let id = parse_id(&claims.id)?;
        self.purge(now);
        // Checked here too so a caller that skipped `verify` cannot plant an
        // entry that the next purge would drop anyway.
        if now >= claims.not_after {
            return Err(TicketError::Expired {
                expired_secs_ago: now - claims.not_after,
            });
        }
        if self.by_id.contains_key(&id) {
            return Err(TicketError::Replayed);
        }
        if self.by_id.len() >= self.capacity {
            return Err(TicketError::ReplayCacheFull);
        }
        self.by_id.insert(id, claims.not_after);
        self.by_expiry.insert((claims.not_after, id));
        Ok(())
    }

    /// How many ids are remembered, including any expired ones not yet purged.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The most ids it will remember at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every id whose ticket expired at or before `now`.
    pub fn purge(&mut self, now: u64) {
        while let Some(&(not_after, id)) = self.by_expiry.first() {
            if not_after > now {
                break;
            }
            self.by_expiry.pop_first();
            self.by_id.remove(&id);
        }
    }
}

/// The key under which a shared store should record that this ticket was used.
pub fn replay_key(claims: &Claims) -> String {
    format!("vmgate:ticket-used:{}", claims.id)
}

/// How many seconds a shared store must keep [`replay_key`]: until the
/// ticket's `not_after`, after which `verify` refuses it anyway. Always at
/// least 1, as stores reject a zero lifetime; `Expired` if already past.
pub fn replay_ttl(claims: &Claims, now: u64) -> Result<u64, TicketError> {
    match claims.not_after.checked_sub(now) {
        Some(ttl) if ttl > 0 => Ok(ttl),
        _ => Err(TicketError::Expired {
            expired_secs_ago: now - claims.not_after,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;

    fn claims(now: u64, ttl: u64) -> Claims {
        Claims::new("web1", ["vnc"], Mode::Interactive, now, ttl, None)
    }

    #[test]
    fn second_redeem_is_replayed() {
        let mut guard = ReplayGuard::new(10);
        let c = claims(100, 60);
        assert_eq!(guard.redeem(&c, 100), Ok(()));
        assert_eq!(guard.redeem(&c, 101), Err(TicketError::Replayed));
        assert_eq!(guard.redeem(&c, 159), Err(TicketError::Replayed));
        assert_eq!(guard.redeem(&claims(100, 60), 101), Ok(()));
        assert_eq!(guard.len(), 2);
    }

    #[test]
    fn forgets_ids_once_expired() {
        let mut guard = ReplayGuard::new(10);
        let short = claims(100, 10);
        let long = claims(100, 1000);
        guard.redeem(&short, 100).unwrap();
        guard.redeem(&long, 100).unwrap();
        guard.purge(109);
        assert_eq!(guard.len(), 2);
        guard.purge(110);
        assert_eq!(guard.len(), 1);
        // The forgotten ticket is still refused: it has expired.
        assert_eq!(
            guard.redeem(&short, 110),
            Err(TicketError::Expired {
                expired_secs_ago: 0
            })
        );
        assert_eq!(guard.redeem(&long, 110), Err(TicketError::Replayed));
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn capacity_is_enforced_until_ids_expire() {
        let mut guard = ReplayGuard::new(3);
        for ttl in [10, 20, 30] {
            guard.redeem(&claims(0, ttl), 0).unwrap();
        }
        assert_eq!(guard.len(), 3);
        assert_eq!(
            guard.redeem(&claims(0, 100), 5),
            Err(TicketError::ReplayCacheFull)
        );
        assert_eq!(guard.len(), 3);
        // Redeeming purges first, so space frees up as tickets expire.
        assert_eq!(guard.redeem(&claims(0, 100), 10), Ok(()));
        assert_eq!(guard.len(), 3);
        assert_eq!(
            guard.redeem(&claims(0, 100), 19),
            Err(TicketError::ReplayCacheFull)
        );
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let mut guard = ReplayGuard::new(0);
        assert_eq!(
            guard.redeem(&claims(0, 10), 0),
            Err(TicketError::ReplayCacheFull)
        );
        assert!(guard.is_empty());
    }

    #[test]
    fn hand_made_bad_id_is_refused() {
        let mut guard = ReplayGuard::new(10);
        let mut c = claims(0, 10);
        c.id = String::new();
        assert!(matches!(
            guard.redeem(&c, 0),
            Err(TicketError::Malformed(_))
        ));
    }

    #[test]
    fn many_tickets_over_time_stay_bounded() {
        let mut guard = ReplayGuard::new(100);
        for now in 0..10_000u64 {
            guard.redeem(&claims(now, 50), now).unwrap();
            assert!(guard.len() <= 50);
        }
    }

    #[test]
    fn shared_store_key_and_ttl() {
        let c = claims(100, 60);
        assert_eq!(replay_key(&c), format!("vmgate:ticket-used:{}", c.id));
        assert_ne!(replay_key(&c), replay_key(&claims(100, 60)));
        assert_eq!(replay_ttl(&c, 100), Ok(60));
        assert_eq!(replay_ttl(&c, 159), Ok(1));
        assert_eq!(
            replay_ttl(&c, 160),
            Err(TicketError::Expired {
                expired_secs_ago: 0
            })
        );
        assert_eq!(
            replay_ttl(&c, 170),
            Err(TicketError::Expired {
                expired_secs_ago: 10
            })
        );
    }
}
