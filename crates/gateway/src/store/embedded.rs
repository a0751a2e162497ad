//! The embedded store: one gateway's used tickets and throttling windows in
//! a `redb` database file, so a restart keeps them; session counts and page
//! sessions in memory (they end with the process).
//!
//! Each write is one redb transaction, committed durably before the answer
//! (a ticket is never reported unused after a crash that followed its use).
//! The calls run on tokio's blocking pool. Memory and disk are bounded:
//! used tickets are forgotten once expired (at most [`USED_CAPACITY`] live
//! ones), throttling windows once passed (at most [`THROTTLE_CAPACITY`]
//! sources, the oldest window forgotten first), each in O(log n) through a
//! second table ordered by deadline, never a scan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use vmgate_ticket::{Claims, IssuePolicy};

use super::pages::Pages;
use super::{unix_ms, Admit, Lease, StoreError, Use};

/// Live used tickets remembered at once; a ticket lives minutes at most,
/// so this only bounds the file against abuse.
pub const USED_CAPACITY: u64 = 1_000_000;
/// Source addresses whose throttling windows are remembered at once.
pub const THROTTLE_CAPACITY: u64 = 65_536;

/// Ticket id -> its `not_after` (unix seconds).
const USED: TableDefinition<u128, u64> = TableDefinition::new("used_tickets");
/// (`not_after`, id): the same, oldest deadline first.
const USED_BY_EXPIRY: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("used_tickets_by_expiry");
/// Source ([`super::source_key`]) -> (failures, window start in unix ms).
const THROTTLE: TableDefinition<u128, (u32, u64)> = TableDefinition::new("throttle");
/// (window start, source): the same, oldest first.
const THROTTLE_BY_START: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("throttle_by_start");
/// `epoch` -> unix seconds when this database began.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Embedded(e.to_string())
}

/// Live sessions counted against the limits, by guest.
#[derive(Default)]
struct Counts {
    total: usize,
    by_guest: HashMap<String, usize>,
}

pub struct Embedded {
    db: Arc<Database>,
    path: PathBuf,
    epoch: u64,
    counts: Mutex<Counts>,
    /// Web page sessions: they live a minute ([`super::pages::JOIN_WINDOW`]).
    pub pages: Pages,
}

impl Embedded {
    /// Opens (or creates) the database at `path`. Blocking.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Embedded(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let db = Database::create(path).map_err(|e| {
            let hint = match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    " (another gateway uses this file: give each its own [store] path, or share a Redis with [store] url)"
                }
                _ => "",
            };
            StoreError::Embedded(format!("cannot open {}: {e}{hint}", path.display()))
        })?;
        let tx = db.begin_write().map_err(err)?;
        let epoch = {
            let mut meta = tx.open_table(META).map_err(err)?;
            let found = meta.get("epoch").map_err(err)?.map(|v| v.value());
            match found {
                Some(e) => e,
                None => {
                    let now = unix_ms() / 1000;
                    meta.insert("epoch", now).map_err(err)?;
                    now
                }
            }
        };
        // Every table exists from the start, so readers never miss one.
        tx.open_table(USED).map_err(err)?;
        tx.open_table(USED_BY_EXPIRY).map_err(err)?;
        tx.open_table(THROTTLE).map_err(err)?;
        tx.open_table(THROTTLE_BY_START).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Embedded {
            db: Arc::new(db),
            path: path.to_path_buf(),
            epoch,
            counts: Mutex::default(),
            pages: Pages::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(err)?
    }

    pub async fn use_ticket(&self, claims: &Claims, skew: u64) -> Result<Use, StoreError> {
        let policy = IssuePolicy {
            max_ttl: u64::MAX,
            skew,
            started: self.epoch,
        };
        if claims.iat <= policy.accepts_after() {
            return Ok(Use::BeforeEpoch);
        }
        let id = u128::from_str_radix(&claims.id, 16)
            .map_err(|_| StoreError::Answer("a ticket id that is not hex".into()))?;
        let not_after = claims.not_after;
        self.blocking(move |db| use_ticket(db, id, not_after, unix_ms() / 1000))
            .await
    }

    pub async fn throttled(
        &self,
        src: u128,
        max: u32,
        window: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let window_ms = window.as_millis() as u64;
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(err)?;
            let t = tx.open_table(THROTTLE).map_err(err)?;
            let Some((n, start)) = t.get(src).map_err(err)?.map(|v| v.value()) else {
                return Ok(None);
            };
            let age = unix_ms().saturating_sub(start);
            Ok((n >= max && age < window_ms).then(|| Duration::from_millis(window_ms - age)))
        })
        .await
    }

    pub async fn ticket_failed(&self, src: u128, window: Duration) -> Result<(), StoreError> {
        let window_ms = window.as_millis() as u64;
        self.blocking(move |db| ticket_failed(db, src, window_ms, unix_ms(), THROTTLE_CAPACITY))
            .await
    }

    pub fn admit(&self, lease: &Lease, max: usize, per_guest: usize) -> Admit {
        let mut c = self.counts.lock().expect("counts lock");
        if max > 0 && c.total >= max {
            return Admit::AtMax;
        }
        let on_guest = c.by_guest.get(&lease.guest).copied().unwrap_or(0);
        if per_guest > 0 && on_guest >= per_guest {
            return Admit::GuestAtMax;
        }
        c.total += 1;
        *c.by_guest.entry(lease.guest.clone()).or_default() += 1;
        Admit::Yes
    }

    pub fn release(&self, lease: &Lease) {
        let mut c = self.counts.lock().expect("counts lock");
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_guest.get_mut(&lease.guest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_guest.remove(&lease.guest);
            }
        }
    }
}

/// Marks ticket `id` used until `not_after`, forgetting expired ones first.
fn use_ticket(db: &Database, id: u128, not_after: u64, now: u64) -> Result<Use, StoreError> {
    let tx = db.begin_write().map_err(err)?;
    let outcome = {
        let mut used = tx.open_table(USED).map_err(err)?;
        let mut by_expiry = tx.open_table(USED_BY_EXPIRY).map_err(err)?;
        // Forget tickets that expired: `verify` refuses them anyway.
        loop {
            let first = by_expiry.first().map_err(err)?.map(|(k, _)| k.value());
            match first {
                Some((t, old)) if t <= now => {
                    by_expiry.remove((t, old)).map_err(err)?;
                    used.remove(old).map_err(err)?;
                }
                _ => break,
            }
        }
        if used.get(id).map_err(err)?.is_some() {
            Use::Replayed
        } else if used.len().map_err(err)? >= USED_CAPACITY {
            Use::Full
        } else {
            used.insert(id, not_after).map_err(err)?;
            by_expiry.insert((not_after, id), ()).map_err(err)?;
            Use::First
        }
    };
    // Committed whatever the outcome: the purge above is kept too.
    tx.commit().map_err(err)?;
    Ok(outcome)
}

/// Counts a failure from `src` at `now` (unix ms) in windows of `window_ms`.
fn ticket_failed(
    db: &Database,
    src: u128,
    window_ms: u64,
    now: u64,
    capacity: u64,
) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(err)?;
    {
        let mut t = tx.open_table(THROTTLE).map_err(err)?;
        let mut by_start = tx.open_table(THROTTLE_BY_START).map_err(err)?;
        // Forget windows that have passed, oldest first.
        loop {
            let first = by_start.first().map_err(err)?.map(|(k, _)| k.value());
            match first {
                Some((start, old)) if now.saturating_sub(start) >= window_ms => {
                    by_start.remove((start, old)).map_err(err)?;
                    t.remove(old).map_err(err)?;
                }
                _ => break,
            }
        }
        let found = t.get(src).map_err(err)?.map(|v| v.value());
        match found {
            Some((n, start)) => {
                t.insert(src, (n.saturating_add(1), start)).map_err(err)?;
            }
            None => {
                if t.len().map_err(err)? >= capacity {
                    let oldest = by_start.first().map_err(err)?.map(|(k, _)| k.value());
                    if let Some((start, old)) = oldest {
                        by_start.remove((start, old)).map_err(err)?;
                        t.remove(old).map_err(err)?;
                    }
                }
                t.insert(src, (1, now)).map_err(err)?;
                by_start.insert((now, src), ()).map_err(err)?;
            }
        }
    }
    tx.commit().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::source_key;
    use vmgate_ticket::Mode;

    fn claims(iat: u64, ttl: u64) -> Claims {
        Claims::new("web1", ["vnc"], Mode::Interactive, iat, ttl, None)
    }

    #[tokio::test]
    async fn a_used_ticket_and_a_throttled_source_stay_so_when_the_database_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.redb");
        let store = Embedded::open(&path).unwrap();
        let epoch = store.epoch();
        let now = unix_ms() / 1000;
        let used = claims(now + 2, 60);
        let unused = claims(now + 2, 60);
        assert_eq!(store.use_ticket(&used, 1).await.unwrap(), Use::First);
        assert_eq!(store.use_ticket(&used, 1).await.unwrap(), Use::Replayed);
        let a = source_key("192.0.2.1".parse().unwrap());
        let b = source_key("192.0.2.2".parse().unwrap());
        let w = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(store.throttled(a, 3, w).await.unwrap(), None);
            store.ticket_failed(a, w).await.unwrap();
        }
        let wait = store.throttled(a, 3, w).await.unwrap().unwrap();
        assert!(wait > Duration::from_secs(58) && wait <= w, "{wait:?}");
        drop(store);

        let store = Embedded::open(&path).unwrap();
        assert_eq!(store.epoch(), epoch, "the epoch is the database's");
        assert_eq!(store.use_ticket(&used, 1).await.unwrap(), Use::Replayed);
        assert_eq!(store.use_ticket(&unused, 1).await.unwrap(), Use::First);
        assert!(store.throttled(a, 3, w).await.unwrap().is_some());
        assert_eq!(store.throttled(b, 3, w).await.unwrap(), None);
        // A ticket from before the database began is refused unchecked.
        assert_eq!(
            store.use_ticket(&claims(epoch, 60), 1).await.unwrap(),
            Use::BeforeEpoch
        );
    }

    #[test]
    fn expired_tickets_are_forgotten_and_capacity_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("gw.redb")).unwrap();
        let db = &store.db;
        use_ticket(db, 1, 110, 100).unwrap();
        use_ticket(db, 2, 1000, 100).unwrap();
        assert_eq!(use_ticket(db, 1, 110, 109).unwrap(), Use::Replayed);
        // At 110 ticket 1 is forgotten (verify refuses it as expired).
        assert_eq!(use_ticket(db, 3, 1000, 110).unwrap(), Use::First);
        let tx = db.begin_read().unwrap();
        assert_eq!(tx.open_table(USED).unwrap().len().unwrap(), 2);
        assert_eq!(tx.open_table(USED_BY_EXPIRY).unwrap().len().unwrap(), 2);
    }

    #[test]
    fn throttle_memory_stays_bounded_and_the_oldest_window_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("gw.redb")).unwrap();
        let db = &store.db;
        for i in 0..20u128 {
            ticket_failed(db, i, 60_000, 1000 + i as u64, 16).unwrap();
        }
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(THROTTLE).unwrap();
        assert_eq!(t.len().unwrap(), 16);
        assert!(t.get(3).unwrap().is_none());
        assert!(t.get(4).unwrap().is_some());
        drop(t);
        drop(tx);
        // A passed window is forgotten and a new one starts.
        ticket_failed(db, 100, 60_000, 1_000_000, 16).unwrap();
        let tx = db.begin_read().unwrap();
        assert_eq!(tx.open_table(THROTTLE).unwrap().len().unwrap(), 1);
    }

    #[test]
    fn limits_count_per_gateway_and_per_guest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("gw.redb")).unwrap();
        let l = |g: &str| Lease {
            session: 0,
            guest: g.into(),
        };
        assert_eq!(store.admit(&l("g1"), 3, 2), Admit::Yes);
        assert_eq!(store.admit(&l("g1"), 3, 2), Admit::Yes);
        assert_eq!(store.admit(&l("g1"), 3, 2), Admit::GuestAtMax);
        assert_eq!(store.admit(&l("g2"), 3, 2), Admit::Yes);
        assert_eq!(store.admit(&l("g3"), 3, 2), Admit::AtMax);
        store.release(&l("g1"));
        assert_eq!(store.admit(&l("g3"), 3, 2), Admit::Yes);
    }
}
