//! What a gateway requires of a ticket's issue time ([`Claims::iat`]),
//! beyond the signature and the deadline [`verify`](crate::verify) checks.
//!
//! **The epoch rule.** A record of used tickets can be lost (a new
//! database file, a shared store restarted without its data). So the
//! record has a start, its epoch, and a gateway refuses every ticket issued
//! at or before it (plus the clock-skew margin): the lost record may have
//! held it. It is sound because a gateway also refuses tickets issued more
//! than the margin in its future: every ticket a gateway ever accepted had
//! `iat <= its now + skew <= the next epoch + skew`, as long as clocks do
//! not step back across the loss (and a fleet's gateways agree on the time).
//!
//! Its cost is bounded: a ticket minted before a new epoch lives at most
//! the gateway's maximum lifetime (`not_after - iat <= max_ttl`, also
//! checked here), so refusals for that reason stop `max_ttl` after the
//! epoch; and a ticket minted in the first `skew` seconds after it is
//! refused too (the user mints another one).
//!
//! Sans-IO: the caller passes `now` and the start, as unix seconds.

use crate::{Claims, TicketError};

/// A gateway's rules for issue times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuePolicy {
    /// Longest lifetime (`not_after - iat`) accepted, in seconds.
    pub max_ttl: u64,
    /// How far the minter's clock may be ahead of the gateway's, seconds.
    pub skew: u64,
    /// Unix seconds when the record of used tickets began (the gateway's
    /// store's epoch).
    pub started: u64,
}

impl IssuePolicy {
    /// Checks the issue time of claims already verified, at `now`.
    pub fn check(&self, claims: &Claims, now: u64) -> Result<(), TicketError> {
        if claims.iat > now.saturating_add(self.skew) {
            return Err(TicketError::IssuedInFuture);
        }
        if claims.not_after.saturating_sub(claims.iat) > self.max_ttl {
            return Err(TicketError::LifetimeTooLong {
                max_secs: self.max_ttl,
            });
        }
        if claims.iat <= self.accepts_after() {
            return Err(TicketError::IssuedBeforeRestart);
        }
        Ok(())
    }

    /// Tickets issued at or before this instant (unix seconds) are refused
    /// as possibly redeemed by a previous process.
    pub fn accepts_after(&self) -> u64 {
        self.started.saturating_add(self.skew)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;

    const START: u64 = 1_700_000_000;

    fn policy() -> IssuePolicy {
        IssuePolicy {
            max_ttl: 300,
            skew: 2,
            started: START,
        }
    }

    fn claims(iat: u64, ttl: u64) -> Claims {
        Claims::new("g", ["serial0"], Mode::Interactive, iat, ttl, None)
    }

    #[test]
    fn a_ticket_from_before_the_start_or_within_the_margin_is_refused() {
        let p = policy();
        let now = START + 100;
        for iat in [START - 250, START - 1, START, START + 1, START + 2] {
            assert_eq!(
                p.check(&claims(iat, 300), now),
                Err(TicketError::IssuedBeforeRestart),
                "iat {iat}"
            );
        }
        assert_eq!(p.check(&claims(START + 3, 60), now), Ok(()));
        assert_eq!(p.accepts_after(), START + 2);
    }

    #[test]
    fn the_lifetime_is_bounded() {
        let p = policy();
        let now = START + 100;
        assert_eq!(p.check(&claims(START + 50, 300), now), Ok(()));
        assert_eq!(
            p.check(&claims(START + 50, 301), now),
            Err(TicketError::LifetimeTooLong { max_secs: 300 })
        );
        assert_eq!(
            p.check(&claims(START + 50, u64::MAX), now),
            Err(TicketError::LifetimeTooLong { max_secs: 300 })
        );
    }

    #[test]
    fn a_ticket_from_the_future_beyond_the_margin_is_refused() {
        let p = policy();
        let now = START + 100;
        assert_eq!(p.check(&claims(now + 2, 60), now), Ok(()));
        assert_eq!(
            p.check(&claims(now + 3, 60), now),
            Err(TicketError::IssuedInFuture)
        );
        assert_eq!(
            p.check(&claims(u64::MAX, 0), u64::MAX - 1),
            Ok(()),
            "no overflow at the end of time"
        );
    }

    proptest::proptest! {
        /// Whatever a previous process accepted (it refused the future),
        /// the next one, started later, refuses.
        #[test]
        fn what_a_previous_process_accepted_the_next_refuses(
            start1 in 0u64..1 << 40,
            accepted_at in 0u64..1 << 20,
            iat_back in 0u64..1 << 20,
            restart_after in 0u64..1 << 20,
            skew in 0u64..10,
        ) {
            let p1 = IssuePolicy { max_ttl: u64::MAX, skew, started: start1 };
            let now1 = start1 + accepted_at;
            let iat = (now1 + skew).saturating_sub(iat_back);
            let c = claims(iat, 60);
            if p1.check(&c, now1).is_ok() {
                let p2 = IssuePolicy { started: now1 + restart_after, ..p1 };
                proptest::prop_assert_eq!(
                    p2.check(&c, p2.started),
                    Err(TicketError::IssuedBeforeRestart)
                );
            }
        }
    }
}
