//! The live sessions of this gateway: admission under the session-count
//! limits, the idle timeout, ending a session from the admin API, byte
//! counts, and the audit lines and metrics each session leaves.
//!
//! A session handler calls [`Registry::admit`] once its ticket passed, wraps
//! both receiving halves with [`Live::count_to_guest`] and
//! [`Live::count_from_guest`], adds [`Live::stop`] to the relay's stop
//! future, and hands the relay's outcome to [`Live::finish`]. Dropping the
//! [`Live`] removes the session from the registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vmgate_relay::{FrameRx, Outcome};
use vmgate_wire::{Close, CloseCode, Frame};

use crate::audit::{Audit, SessionEnd, SessionRecord};
use crate::config::LiveLimits;
use crate::metrics::Metrics;
use crate::store::{Admit, Lease, Store};

/// The reason a session ended from the admin API shows to its user.
pub const ENDED_BY_ADMIN: &str = "ended by administrator";

struct Entry {
    record: SessionRecord,
    start: SystemTime,
    /// The tokio clock, so the idle timeout is testable with paused time.
    born: Instant,
    /// Administrators' consoles are not counted against the limits: the
    /// recovery path must work when users have filled them.
    by_admin: bool,
    to_guest: AtomicU64,
    from_guest: AtomicU64,
    /// Milliseconds after `born` of the last data byte either way.
    last_activity_ms: AtomicU64,
    kill: CancellationToken,
    kill_reason: Mutex<Option<String>>,
    /// A media session's bytes read by the guest, once known.
    bytes_read: Mutex<Option<u64>>,
}

impl Entry {
    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }
}

/// A session as `GET /v1/sessions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: u64,
    /// The gateway it runs on (its name in the fleet).
    pub gateway: String,
    /// The ticket's id (never its text), or `admin:<who>`.
    pub ticket: String,
    pub guest: String,
    pub channel: String,
    pub mode: &'static str,
    pub peer: SocketAddr,
    /// RFC 3339.
    pub start: String,
    pub by_admin: bool,
    pub bytes_to_guest: u64,
    pub bytes_from_guest: u64,
    pub idle_secs: u64,
}

/// Every live session.
pub struct Registry {
    limits: Arc<LiveLimits>,
    metrics: Arc<Metrics>,
    audit: Option<Audit>,
    /// Where the sessions counted against the limits are counted, and
    /// (with Redis) the fleet's sessions listed.
    store: Arc<Store>,
    /// This gateway's name in the fleet.
    name: String,
    live: Mutex<HashMap<u64, Arc<Entry>>>,
}

impl Registry {
    pub fn new(
        limits: Arc<LiveLimits>,
        metrics: Arc<Metrics>,
        audit: Option<Audit>,
        store: Arc<Store>,
        name: String,
    ) -> Registry {
        Registry {
            limits,
            metrics,
            audit,
            store,
            name,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a session whose ticket (or administrator) was accepted, if the
    /// gateway (with a shared store: the fleet) and the guest are below
    /// their session limits, counted in the store.
    pub async fn admit(
        self: &Arc<Self>,
        record: SessionRecord,
        by_admin: bool,
    ) -> Result<Live, Close> {
        let lease = Lease {
            session: record.session,
            guest: record.guest.clone(),
        };
        let start = SystemTime::now();
        // What the fleet's `GET /v1/sessions` shows of it on other gateways.
        let listing = serde_json::json!({
            "id": record.session,
            "gateway": self.name,
            "ticket": record.ticket,
            "guest": record.guest,
            "channel": record.channel,
            "mode": record.mode,
            "peer": record.peer,
            "start": humantime::format_rfc3339_millis(start).to_string(),
            "by_admin": by_admin,
        })
        .to_string();
        if by_admin {
            // Listed, not counted; a store that does not answer must not
            // keep the recovery console from opening.
            if let Err(e) = self.store.register(&lease, &listing).await {
                tracing::warn!(error = %e, "the administrator's console is not listed in the store");
            }
        } else {
            let limits = self.limits.get();
            let (max, per_guest) = (limits.max_sessions, limits.max_sessions_per_guest);
            match self.store.admit(&lease, max, per_guest, &listing).await {
                Ok(Admit::Yes) => {}
                Ok(Admit::AtMax) => {
                    tracing::warn!(peer = %record.peer, guest = %record.guest, max,
                        "session refused: gateway at its session limit");
                    self.metrics.refused("max_sessions");
                    return Err(Close::new(
                        CloseCode::TooMany,
                        format!(
                            "the gateway has its maximum of {max} sessions open: try again later"
                        ),
                    ));
                }
                Ok(Admit::GuestAtMax) => {
                    tracing::warn!(peer = %record.peer, guest = %record.guest, max = per_guest,
                        "session refused: guest at its session limit");
                    self.metrics.refused("max_sessions_per_guest");
                    return Err(Close::new(
                        CloseCode::TooMany,
                        format!(
                            "guest {} has its maximum of {per_guest} sessions open: close one first",
                            record.guest
                        ),
                    ));
                }
                Err(e) => {
                    tracing::warn!(peer = %record.peer, guest = %record.guest, error = %e,
                        "session refused: the store does not answer");
                    self.metrics.refused("store_unavailable");
                    return Err(crate::store::unavailable());
                }
            }
        }
        let entry = Arc::new(Entry {
            start,
            born: Instant::now(),
            by_admin,
            to_guest: AtomicU64::new(0),
            from_guest: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            kill: CancellationToken::new(),
            kill_reason: Mutex::new(None),
            bytes_read: Mutex::new(None),
            record,
        });
        self.live
            .lock()
            .expect("sessions lock")
            .insert(entry.record.session, entry.clone());
        Ok(Live {
            registry: self.clone(),
            entry,
            opened: AtomicBool::new(false),
            lease,
        })
    }

    /// The live sessions, oldest first.
    pub fn list(&self) -> Vec<SessionView> {
        let live = self.live.lock().expect("sessions lock");
        let mut v: Vec<_> = live
            .values()
            .map(|e| {
                let idle_ms = (e.born.elapsed().as_millis() as u64)
                    .saturating_sub(e.last_activity_ms.load(Ordering::Relaxed));
                SessionView {
                    id: e.record.session,
                    gateway: self.name.clone(),
                    ticket: e.record.ticket.clone(),
                    guest: e.record.guest.clone(),
                    channel: e.record.channel.clone(),
                    mode: e.record.mode,
                    peer: e.record.peer,
                    start: humantime::format_rfc3339_millis(e.start).to_string(),
                    by_admin: e.by_admin,
                    bytes_to_guest: e.to_guest.load(Ordering::Relaxed),
                    bytes_from_guest: e.from_guest.load(Ordering::Relaxed),
                    idle_secs: idle_ms / 1000,
                }
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Every session of the fleet: this gateway's as [`Registry::list`]
    /// shows them, then the other gateways' from the store (without byte
    /// counts and idle time, which only their gateway knows). If the store
    /// does not answer, this gateway's alone (logged).
    pub async fn list_fleet(&self) -> Vec<serde_json::Value> {
        let mine = self.list();
        let mut all: Vec<serde_json::Value> = mine
            .iter()
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect();
        if self.store.shared() {
            match self.store.fleet_sessions().await {
                Ok(others) => {
                    let mut others: Vec<_> = others
                        .into_iter()
                        .filter(|v| v["gateway"].as_str() != Some(self.name.as_str()))
                        .collect();
                    others.sort_by_key(|v| v["id"].as_u64());
                    all.extend(others);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing only this gateway's sessions: the store does not answer");
                }
            }
        }
        all
    }

    /// Ends session `id` with `reason`; false if there is no such session.
    pub fn end(&self, id: u64, reason: &str) -> bool {
        let live = self.live.lock().expect("sessions lock");
        let Some(e) = live.get(&id) else {
            return false;
        };
        *e.kill_reason.lock().expect("kill lock") = Some(reason.to_string());
        e.kill.cancel();
        true
    }

    /// Reopens the audit log (after rotation).
    pub fn reopen_audit(&self) {
        if let Some(a) = &self.audit {
            if let Err(e) = a.reopen() {
                tracing::error!(error = %e, "cannot reopen the audit log");
            }
        }
    }
}

/// How often a gateway of a fleet looks for sessions an administrator
/// ended at another gateway: the bound on how long such a session runs on.
pub const END_POLL: Duration = Duration::from_millis(250);

/// Ends the sessions that administrators ended at other gateways of the
/// fleet (`DELETE /v1/sessions/{id}` anywhere), with the same reason, until
/// `shutdown`. A store that does not answer is logged and counted by the
/// store; the next tick asks again.
pub async fn end_when_asked(registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(END_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(ids) = registry.store.take_ends().await else {
            continue;
        };
        for id in ids {
            if registry.end(id, ENDED_BY_ADMIN) {
                tracing::info!(
                    session = id,
                    "session ended by administrator at another gateway"
                );
            } else {
                tracing::debug!(session = id, "asked to end a session that already ended");
            }
        }
    }
}

/// One admitted session.
pub struct Live {
    registry: Arc<Registry>,
    entry: Arc<Entry>,
    opened: AtomicBool,
    /// The session's place in the store (counts, unless an administrator's
    /// console; the fleet's list), released on drop.
    lease: Lease,
}

impl Live {
    /// The agent opened the stream, `latency` after the ticket check began:
    /// writes the audit start line and counts the session.
    pub fn opened(&self, latency: Duration) {
        self.opened.store(true, Ordering::Relaxed);
        self.entry.touch();
        self.registry
            .metrics
            .opened(&self.entry.record.channel, latency);
        if let Some(a) = &self.registry.audit {
            a.start(&self.entry.record, self.entry.start);
        }
    }

    /// Counts the client's data on its way to the guest.
    pub fn count_to_guest<R: FrameRx>(&self, rx: R) -> Counted<R> {
        Counted {
            inner: rx,
            entry: self.entry.clone(),
            metrics: self.registry.metrics.clone(),
            to_guest: true,
        }
    }

    /// Counts the guest's data on its way to the client.
    pub fn count_from_guest<R: FrameRx>(&self, rx: R) -> Counted<R> {
        Counted {
            inner: rx,
            entry: self.entry.clone(),
            metrics: self.registry.metrics.clone(),
            to_guest: false,
        }
    }

    /// Resolves when an administrator ends the session, or when it has been
    /// idle for the configured idle timeout.
    pub fn stop(&self) -> impl std::future::Future<Output = Close> + Send + 'static {
        let entry = self.entry.clone();
        let idle = Duration::from_secs(self.registry.limits.get().idle_timeout_secs);
        async move {
            let idle_out = async {
                if idle.is_zero() {
                    return std::future::pending().await;
                }
                loop {
                    let since = Duration::from_millis(
                        (entry.born.elapsed().as_millis() as u64)
                            .saturating_sub(entry.last_activity_ms.load(Ordering::Relaxed)),
                    );
                    if since >= idle {
                        return Close::new(
                            CloseCode::SessionExpired,
                            format!(
                                "idle for {}s: the session was closed, open it again",
                                idle.as_secs()
                            ),
                        );
                    }
                    tokio::time::sleep(idle - since).await;
                }
            };
            tokio::select! {
                _ = entry.kill.cancelled() => {
                    let reason = entry.kill_reason.lock().expect("kill lock").clone();
                    Close::new(CloseCode::EndedByAdmin, reason.unwrap_or_else(|| ENDED_BY_ADMIN.into()))
                }
                c = idle_out => c,
            }
        }
    }

    /// A media session's guest read `bytes` (for the audit end line).
    pub fn set_bytes_read(&self, bytes: u64) {
        *self.entry.bytes_read.lock().expect("bytes_read lock") = Some(bytes);
    }

    /// Writes the audit end line and the metrics of a finished session.
    pub fn finish(self, out: &Outcome) {
        let code = out.close.code;
        let failure = matches!(
            code,
            CloseCode::Internal
                | CloseCode::AgentUnreachable
                | CloseCode::BackendError
                | CloseCode::ProtocolError
        );
        if failure {
            self.registry
                .metrics
                .ended(&self.entry.record.channel, Some(code.as_str()));
            self.opened.store(false, Ordering::Relaxed);
        }
        if let Some(a) = &self.registry.audit {
            a.end(
                &self.entry.record,
                self.entry.start,
                &SessionEnd {
                    end: SystemTime::now(),
                    bytes_to_guest: out.a_to_b,
                    bytes_from_guest: out.b_to_a,
                    bytes_read: *self.entry.bytes_read.lock().expect("bytes_read lock"),
                    close: &out.close,
                },
            );
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.opened.load(Ordering::Relaxed) {
            self.registry
                .metrics
                .ended(&self.entry.record.channel, None);
        }
        self.registry
            .live
            .lock()
            .expect("sessions lock")
            .remove(&self.entry.record.session);
        self.registry
            .store
            .release(&self.lease, !self.entry.by_admin);
    }
}

/// A receiving half whose data bytes are counted for the session's
/// listing, the metrics and the idle timeout.
pub struct Counted<R> {
    inner: R,
    entry: Arc<Entry>,
    metrics: Arc<Metrics>,
    to_guest: bool,
}

impl<R: FrameRx> FrameRx for Counted<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        let r = self.inner.recv().await;
        if let Ok(Some(Frame::Data(d))) = &r {
            let n = d.len() as u64;
            let (mine, total) = if self.to_guest {
                (&self.entry.to_guest, &self.metrics.bytes_to_guest)
            } else {
                (&self.entry.from_guest, &self.metrics.bytes_from_guest)
            };
            mine.fetch_add(n, Ordering::Relaxed);
            total.fetch_add(n, Ordering::Relaxed);
            self.entry.touch();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, guest: &str) -> SessionRecord {
        SessionRecord {
            session: id,
            ticket: format!("t{id}"),
            guest: guest.into(),
            channel: "serial0".into(),
            mode: "interactive",
            peer: "192.0.2.1:1".parse().unwrap(),
        }
    }

    fn registry(max: usize, per_guest: usize, idle: u64) -> Arc<Registry> {
        let limits = crate::config::Limits {
            max_sessions: max,
            max_sessions_per_guest: per_guest,
            idle_timeout_secs: idle,
            ..crate::config::Limits::default()
        };
        // The directory stays for the test process's life: a few files.
        let dir = tempfile::tempdir().unwrap().keep();
        let store = crate::store::embedded::Embedded::open(&dir.join("gw.redb")).unwrap();
        Arc::new(Registry::new(
            Arc::new(LiveLimits::new(limits)),
            Arc::new(Metrics::default()),
            None,
            Arc::new(Store::Embedded(store)),
            "gw".into(),
        ))
    }

    #[tokio::test]
    async fn limits_per_gateway_and_per_guest_but_not_for_admins() {
        let r = registry(3, 2, 0);
        let a = r.admit(record(1, "g1"), false).await.unwrap();
        let _b = r.admit(record(2, "g1"), false).await.unwrap();
        let e = r.admit(record(3, "g1"), false).await.err().unwrap();
        assert_eq!(e.code, CloseCode::TooMany);
        assert!(e.reason.contains("guest g1"), "{}", e.reason);
        let _c = r.admit(record(4, "g2"), false).await.unwrap();
        let e = r.admit(record(5, "g3"), false).await.err().unwrap();
        assert!(e.reason.contains("maximum of 3"), "{}", e.reason);
        let _admin = r.admit(record(6, "g1"), true).await.unwrap();
        drop(a);
        assert!(r.admit(record(7, "g3"), false).await.is_ok());
    }

    #[tokio::test]
    async fn end_stops_with_the_admins_reason() {
        let r = registry(0, 0, 0);
        let live = r.admit(record(1, "g"), false).await.unwrap();
        let stop = live.stop();
        assert!(!r.end(2, ENDED_BY_ADMIN));
        assert!(r.end(1, ENDED_BY_ADMIN));
        let c = stop.await;
        assert_eq!(c.code, CloseCode::EndedByAdmin);
        assert_eq!(c.reason, ENDED_BY_ADMIN);
        assert_eq!(r.list().len(), 1);
        drop(live);
        assert!(r.list().is_empty());
    }

    /// One data frame each time the test sends on the channel.
    struct Poke(tokio::sync::mpsc::Receiver<()>);

    impl FrameRx for Poke {
        async fn recv(&mut self) -> Result<Option<Frame>, Close> {
            Ok(self
                .0
                .recv()
                .await
                .map(|()| Frame::Data(b"x".to_vec().into())))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_after_silence() {
        let r = registry(0, 0, 30);
        let live = r.admit(record(1, "g"), false).await.unwrap();
        let (poke, rx) = tokio::sync::mpsc::channel(1);
        let mut rx = live.count_from_guest(Poke(rx));
        let stop = live.stop();
        tokio::pin!(stop);
        // A byte every 20 s keeps the session for 100 s, over three
        // timeouts' length.
        let start = Instant::now();
        for _ in 0..5 {
            tokio::select! {
                _ = &mut stop => panic!("stopped after {:?} with traffic", start.elapsed()),
                _ = tokio::time::sleep(Duration::from_secs(20)) => {}
            }
            poke.send(()).await.unwrap();
            rx.recv().await.unwrap();
        }
        // Then silence: the close comes 30 s after the last byte.
        let last = Instant::now();
        let c = stop.await;
        let took = last.elapsed();
        assert!(
            took >= Duration::from_secs(30) && took <= Duration::from_secs(31),
            "closed {took:?} after the last byte"
        );
        assert_eq!(c.code, CloseCode::SessionExpired);
        assert!(c.reason.contains("idle for 30s"), "{}", c.reason);
    }
}
