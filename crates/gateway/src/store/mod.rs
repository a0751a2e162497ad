//! The gateway's state that must outlive one process or be shared by a
//! fleet: which tickets were used, failed-ticket throttling per source
//! address, the session counts the limits check, and web page sessions.
//!
//! Two implementations behind one [`Store`]:
//!
//! * [`embedded`] (the default): a `redb` database in the gateway's state
//!   directory. Used tickets and throttling windows survive a restart of
//!   that one gateway; session counts and page sessions live in memory,
//!   since they end with the process anyway.
//! * [`redis`] (`[store] url = "redis://…"`): a Redis (or Valkey) shared by
//!   every gateway of a fleet. Single use is one atomic set-if-absent with
//!   an expiry (`SET NX PX` inside a script that also checks the store's
//!   epoch), never read-then-write.
//!
//! **The epoch.** A store that lost its record of used tickets (a new
//! database file, a Redis restarted without persistence or from an older
//! snapshot, a `FLUSHALL`) starts a new epoch, and tickets issued at or
//! before the epoch (plus the clock-skew margin) are refused: the old
//! record might have held them ([`vmgate_ticket::IssuePolicy`], whose
//! `started` is the epoch). So a restarted gateway keeps the tickets that
//! are still good, and a store that forgets loses nothing security-relevant.
//!
//! **Faults.** Every call to Redis has a deadline; when the store cannot
//! answer, new sessions are refused with [`unavailable`]'s reason (fail
//! closed: single use cannot be checked), counted and logged; sessions
//! already open keep running; the next call reconnects, so the gateway
//! recovers without a restart.

pub mod embedded;
pub mod pages;
pub mod redis;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use vmgate_ticket::Claims;
use vmgate_wire::{Close, CloseCode};

use crate::config::StoreConfig;
use crate::metrics::Metrics;
use pages::{JoinError, PageGrant};

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed (disk, corruption).
    #[error("embedded store: {0}")]
    Embedded(String),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(String),
    /// Redis did not answer within the deadline.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The store answered something this gateway cannot read.
    #[error("unexpected answer from the store: {0}")]
    Answer(String),
}

/// What the client of a refused session is told when the store cannot
/// answer (`vmgate_refusals_total{reason="store_unavailable"}`).
pub fn unavailable() -> Close {
    Close::new(
        CloseCode::Internal,
        "the gateway's session store is unreachable: try again shortly",
    )
}

/// The outcome of using a ticket up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// First use: the session may open.
    First,
    /// Used before (anywhere in the fleet).
    Replayed,
    /// Issued at or before the store's epoch plus the margin.
    BeforeEpoch,
    /// The embedded record is full of live tickets.
    Full,
}

/// Whether a session may be admitted under the session limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The gateway (or fleet) holds `max_sessions`.
    AtMax,
    /// The guest holds `max_sessions_per_guest`.
    GuestAtMax,
}

/// One session in the store: its id (unique in a fleet) and its guest.
#[derive(Debug, Clone)]
pub struct Lease {
    pub session: u64,
    pub guest: String,
}

/// Source addresses as the throttle counts them: an IPv4 address, or an
/// IPv6 /64 (which one host usually holds whole); an IPv4-mapped IPv6
/// address is its IPv4 address.
pub fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => (4u128 << 120) | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (4u128 << 120) | u128::from(u32::from(v4)),
            None => (6u128 << 120) | (u128::from(v6) >> 64),
        },
    }
}

/// Unix milliseconds, the clock the embedded store's windows are kept in.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The store, embedded or shared.
pub enum Store {
    Embedded(embedded::Embedded),
    Redis(redis::RedisStore),
}

impl Store {
    /// Opens the store `cfg` names; `name` is this gateway's name in the fleet.
    pub async fn open(
        cfg: &StoreConfig,
        name: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        match &cfg.url {
            None => {
                let path = cfg.embedded_path();
                let e = tokio::task::spawn_blocking(move || embedded::Embedded::open(&path))
                    .await
                    .map_err(|e| StoreError::Embedded(e.to_string()))??;
                Ok(Store::Embedded(e))
            }
            Some(url) => Ok(Store::Redis(
                redis::RedisStore::open(url, cfg, name, metrics).await?,
            )),
        }
    }

    /// What kind of store this is, for logs.
    pub fn describe(&self) -> String {
        match self {
            Store::Embedded(e) => format!("embedded {}", e.path().display()),
            Store::Redis(r) => format!("redis {}", r.describe()),
        }
    }

    /// Unix seconds when the store's record of used tickets began, as last
    /// known: tickets issued at or before it (plus the margin) are refused.
    pub fn epoch(&self) -> u64 {
        match self {
            Store::Embedded(e) => e.epoch(),
            Store::Redis(r) => r.epoch(),
        }
    }

    /// Uses the ticket of `claims` (verified) up, once in the whole store,
    /// remembered until its `not_after`. `skew` is the clock-skew margin
    /// the epoch is checked with, at the moment of use.
    pub async fn use_ticket(&self, claims: &Claims, skew: u64) -> Result<Use, StoreError> {
        match self {
            Store::Embedded(e) => e.use_ticket(claims, skew).await,
            Store::Redis(r) => r.use_ticket(claims, skew).await,
        }
    }

    /// How long `ip` must still wait, if it made `max` failed ticket
    /// checks in the current `window`.
    pub async fn throttled(
        &self,
        ip: IpAddr,
        max: u32,
        window: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        if max == 0 {
            return Ok(None);
        }
        match self {
            Store::Embedded(e) => e.throttled(source_key(ip), max, window).await,
            Store::Redis(r) => r.throttled(source_key(ip), max).await,
        }
    }

    /// Counts a failed ticket check from `ip` in its `window`.
    pub async fn ticket_failed(
        &self,
        ip: IpAddr,
        max: u32,
        window: Duration,
    ) -> Result<(), StoreError> {
        if max == 0 {
            return Ok(());
        }
        match self {
            Store::Embedded(e) => e.ticket_failed(source_key(ip), window).await,
            Store::Redis(r) => r.ticket_failed(source_key(ip), window).await,
        }
    }

    /// Counts `lease` against `max` sessions in all and `per_guest` on its
    /// guest (0: unlimited), if both leave room; with Redis it is listed
    /// for the fleet as `listing` too.
    pub async fn admit(
        &self,
        lease: &Lease,
        max: usize,
        per_guest: usize,
        listing: &str,
    ) -> Result<Admit, StoreError> {
        match self {
            Store::Embedded(e) => Ok(e.admit(lease, max, per_guest)),
            Store::Redis(r) => r.admit(lease, max, per_guest, listing).await,
        }
    }

    /// Lists a session that is not counted (an administrator's console)
    /// for the fleet.
    pub async fn register(&self, lease: &Lease, listing: &str) -> Result<(), StoreError> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Redis(r) => r.register(lease, listing).await,
        }
    }

    /// Stops counting and listing `lease` (the session ended). Never waits
    /// on Redis: a release that fails is logged, and the lease runs out by
    /// itself.
    pub fn release(&self, lease: &Lease, counted: bool) {
        match self {
            Store::Embedded(e) => {
                if counted {
                    e.release(lease)
                }
            }
            Store::Redis(r) => r.release(lease),
        }
    }

    /// The sessions of every gateway of the fleet (none with the embedded
    /// store: the gateway's own are all there is).
    pub async fn fleet_sessions(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        match self {
            Store::Embedded(_) => Ok(Vec::new()),
            Store::Redis(r) => r.fleet_sessions().await,
        }
    }

    /// Asks the gateway that runs session `id` to end it; its name, or
    /// `None` if no gateway of the fleet lists it.
    pub async fn end_elsewhere(&self, id: u64) -> Result<Option<String>, StoreError> {
        match self {
            Store::Embedded(_) => Ok(None),
            Store::Redis(r) => r.end_elsewhere(id).await,
        }
    }

    /// Sessions of this gateway an administrator ended at another one.
    pub async fn take_ends(&self) -> Result<Vec<u64>, StoreError> {
        match self {
            Store::Embedded(_) => Ok(Vec::new()),
            Store::Redis(r) => r.take_ends().await,
        }
    }

    /// Whether other gateways share this store.
    pub fn shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// Starts a web page session for `claims` just redeemed; its token.
    pub async fn page_start(
        &self,
        claims: Claims,
    ) -> Result<Result<String, JoinError>, StoreError> {
        match self {
            Store::Embedded(e) => Ok(e.pages.start(claims, std::time::Instant::now())),
            Store::Redis(r) => r.page_start(claims).await,
        }
    }

    /// Opens `channel` of `guest` with page token `token`, once.
    pub async fn page_join(
        &self,
        token: &str,
        guest: &str,
        channel: &str,
    ) -> Result<Result<PageGrant, JoinError>, StoreError> {
        match self {
            Store::Embedded(e) => {
                Ok(e.pages
                    .join(token, guest, channel, std::time::Instant::now()))
            }
            Store::Redis(r) => r.page_join(token, guest, channel).await,
        }
    }
}

/// A fresh page token: 256 random bits as hex.
pub fn page_token() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the operating system's random generator");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_v4_as_v4() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8::1"), k("2001:db8::ffff"));
        assert_ne!(k("2001:db8::1"), k("2001:db8:0:1::1"));
        assert_eq!(k("::ffff:192.0.2.9"), k("192.0.2.9"));
        assert_ne!(k("192.0.2.9"), k("192.0.2.10"));
        // An IPv4 address never collides with an IPv6 prefix.
        assert_ne!(k("0.0.0.1"), k("0:0:0:1::"));
    }
}
