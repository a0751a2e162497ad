//! Connections before and between sessions, on each HTTPS listener: caps
//! on the connections that carry no session, per source address and in
//! all, a cap on all connections that keeps the process within its
//! open-files limit, and the idle deadline that closes a connection that
//! has nothing to do.
//!
//! A connection is *unauthenticated* from accept until a session on it is
//! granted (a ticket, a page token, admin credentials: [`crate::session`]),
//! and again after its last session ends. Only those count against the
//! per-address and unauthenticated caps: a console user behind a shared
//! NAT holds a session, not a pending connection, and connections with
//! sessions are bounded by the session limits and the all-connections cap.
//! A refusal happens at accept, before any TLS work: the socket is closed
//! at once, logged (at a bounded rate) and counted by reason.
//!
//! Each listener has its own [`Admission`], so a flood of the public
//! listener never uses up the admin listener's share; and the public
//! listener's all-connections cap is what is left of the open-files limit
//! after the admin listener's share and a reserve ([`fit_to_open_files`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::limits::{source, RateLog, Source};
use crate::metrics::Metrics;

/// Descriptors kept for everything but client connections: the QUIC
/// socket, the audit log, the runtime's own, a restarting listener.
pub const RESERVED_FILES: u64 = 256;

/// The caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Unauthenticated connections from one source (an IPv4 address, an
    /// IPv6 /64).
    pub per_address: u32,
    /// Unauthenticated connections in all.
    pub unauthenticated: u32,
    /// All connections, with sessions or not.
    pub total: u32,
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source has [`Caps::per_address`] unauthenticated connections.
    PerAddress,
    /// The listener has [`Caps::unauthenticated`] unauthenticated ones.
    Unauthenticated,
    /// The listener has [`Caps::total`] connections.
    Total,
}

impl Refusal {
    /// The metric label, prefixed with the listener's name.
    fn reason(self, listener: Listener) -> &'static str {
        match (listener, self) {
            (Listener::Public, Refusal::PerAddress) => "connections_per_address",
            (Listener::Public, Refusal::Unauthenticated) => "connections_unauthenticated",
            (Listener::Public, Refusal::Total) => "connections_total",
            (Listener::Admin, Refusal::PerAddress) => "admin_connections_per_address",
            (Listener::Admin, Refusal::Unauthenticated) => "admin_connections_unauthenticated",
            (Listener::Admin, Refusal::Total) => "admin_connections_total",
            (Listener::Minter, Refusal::PerAddress) => "minter_connections_per_address",
            (Listener::Minter, Refusal::Unauthenticated) => "minter_connections_unauthenticated",
            (Listener::Minter, Refusal::Total) => "minter_connections_total",
        }
    }
}

/// Which listener an [`Admission`] guards, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
    /// `vmgate admin`'s (crate `vmgate-minter`).
    Minter,
}

/// The counts, sans-IO: what is open now against [`Caps`].
#[derive(Debug, Default)]
struct Counts {
    /// Unauthenticated connections per source (entries at zero removed,
    /// so memory follows what is open, which the caps bound).
    per_source: HashMap<Source, u32>,
    unauthenticated: u32,
    total: u32,
}

impl Counts {
    /// A new connection from `src`: admitted as unauthenticated, or refused.
    fn admit(&mut self, src: Source, caps: &Caps) -> Result<(), Refusal> {
        if self.total >= caps.total {
            return Err(Refusal::Total);
        }
        if self.unauthenticated >= caps.unauthenticated {
            return Err(Refusal::Unauthenticated);
        }
        let n = self.per_source.entry(src).or_default();
        if *n >= caps.per_address {
            return Err(Refusal::PerAddress);
        }
        *n += 1;
        self.unauthenticated += 1;
        self.total += 1;
        Ok(())
    }

    /// One unauthenticated connection of `src` got a session.
    fn authenticated(&mut self, src: Source) {
        if let Some(n) = self.per_source.get_mut(&src) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&src);
            }
        }
        self.unauthenticated = self.unauthenticated.saturating_sub(1);
    }

    /// A connection of `src` lost its last session: unauthenticated again
    /// (over the caps, possibly: it is not refused, the idle deadline
    /// closes it if nothing follows).
    fn unauthenticated(&mut self, src: Source) {
        *self.per_source.entry(src).or_default() += 1;
        self.unauthenticated += 1;
    }

    /// An unauthenticated connection of `src` closed.
    fn closed(&mut self, src: Source) {
        self.authenticated(src);
        self.total = self.total.saturating_sub(1);
    }
}

/// Admission to one listener: its caps and counts, and where refusals go.
pub struct Admission {
    listener: Listener,
    caps: Caps,
    counts: Mutex<Counts>,
    metrics: Arc<Metrics>,
    log: Mutex<RateLog>,
}

impl Admission {
    pub fn new(listener: Listener, caps: Caps, metrics: Arc<Metrics>) -> Arc<Admission> {
        Arc::new(Admission {
            listener,
            caps,
            counts: Mutex::new(Counts::default()),
            metrics,
            log: Mutex::new(RateLog::new(10, std::time::Duration::from_secs(10))),
        })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// A connection from `peer` was accepted: admitted (the [`Conn`] holds
    /// its place until its last clone drops), or refused, logged at a
    /// bounded rate and counted.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Conn, Refusal> {
        let src = source(peer.ip());
        let admitted = self.counts().admit(src, &self.caps);
        if let Err(r) = admitted {
            let reason = r.reason(self.listener);
            self.metrics.refused(reason);
            let now = std::time::Instant::now();
            if let Some(suppressed) = self.log.lock().expect("log budget lock").allow(now) {
                tracing::warn!(%peer, reason, suppressed, caps = ?self.caps,
                    "connection refused at accept: too many connections without a session");
            }
            return Err(r);
        }
        Ok(Conn(Arc::new(ConnInner {
            admission: self.clone(),
            src,
            state: Mutex::new(State {
                sessions: 0,
                in_flight: 0,
                requested: false,
                last_active: Instant::now(),
            }),
            changed: Notify::new(),
        })))
    }

    /// An error from `accept(2)` (out of descriptors, most likely): logged
    /// at a bounded rate, counted.
    pub fn accept_failed(&self, e: &std::io::Error) {
        self.metrics.refused(match self.listener {
            Listener::Public => "accept_failed",
            Listener::Admin => "admin_accept_failed",
            Listener::Minter => "minter_accept_failed",
        });
        if let Some(suppressed) = self
            .log
            .lock()
            .expect("log budget lock")
            .allow(std::time::Instant::now())
        {
            tracing::warn!(error = %e, suppressed, listener = ?self.listener, "accept failed");
        }
    }

    /// A connection's task closed it for `why`: counted.
    pub fn closed(&self, why: Closed) {
        self.metrics.connection_closed(why.as_str());
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().expect("connection counts lock")
    }

    /// (unauthenticated, total) open now.
    pub fn open(&self) -> (u32, u32) {
        let c = self.counts();
        (c.unauthenticated, c.total)
    }
}

/// Why a connection's task closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// No request within the first-request deadline.
    NoRequest,
    /// No session and no request in progress for the idle deadline.
    Idle,
    /// An HTTP/2 PING went unanswered for the keepalive time: the peer is
    /// gone, whatever the connection carried (sessions included).
    Keepalive,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::NoRequest => "no_request",
            Closed::Idle => "idle",
            Closed::Keepalive => "keepalive",
        }
    }
}

#[derive(Debug)]
struct State {
    /// Sessions granted on this connection and still running.
    sessions: u32,
    /// HTTP requests whose response is not finished.
    in_flight: u32,
    /// Whether any request arrived.
    requested: bool,
    /// When the last request or session ended (or the connection began).
    last_active: Instant,
}

struct ConnInner {
    admission: Arc<Admission>,
    src: Source,
    state: Mutex<State>,
    /// Woken on every change of `state`.
    changed: Notify,
}

impl Drop for ConnInner {
    fn drop(&mut self) {
        // A session holds a clone, so none runs now: this connection is
        // counted as unauthenticated.
        self.admission.counts().closed(self.src);
    }
}

/// One admitted connection; its clones (the connection's task, its
/// requests, an upgraded WebSocket) share it, and it leaves the counts
/// when the last one drops.
#[derive(Clone)]
pub struct Conn(Arc<ConnInner>);

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Conn").field(&self.0.src).finish()
    }
}

impl Conn {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().expect("connection state lock")
    }

    /// A session was granted on this connection: it is authenticated until
    /// the guard, and every other session's, drops.
    pub fn session(&self) -> SessionOnConn {
        let mut s = self.state();
        if s.sessions == 0 {
            self.0.admission.counts().authenticated(self.0.src);
        }
        s.sessions += 1;
        drop(s);
        self.0.changed.notify_one();
        SessionOnConn(self.clone())
    }

    /// A request arrived; it is in progress until the guard drops (with
    /// the end of its response body).
    pub fn request(&self) -> RequestOnConn {
        let mut s = self.state();
        s.in_flight += 1;
        s.requested = true;
        drop(s);
        self.0.changed.notify_one();
        RequestOnConn(self.clone())
    }

    /// Resolves when the connection should be closed: no request within
    /// `first_request` of now, or, later, nothing to do (no session, no
    /// request in progress) for `idle`.
    pub async fn until_idle(&self, first_request: Duration, idle: Duration) -> Closed {
        let start = Instant::now();
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let due = {
                let s = self.state();
                if !s.requested {
                    Some((start + first_request, Closed::NoRequest))
                } else if s.sessions == 0 && s.in_flight == 0 {
                    Some((s.last_active + idle, Closed::Idle))
                } else {
                    None
                }
            };
            match due {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// Held while a session runs on a connection ([`Conn::session`]).
pub struct SessionOnConn(Conn);

impl Drop for SessionOnConn {
    fn drop(&mut self) {
        let c = &self.0;
        let mut s = c.state();
        s.sessions = s.sessions.saturating_sub(1);
        if s.sessions == 0 {
            c.0.admission.counts().unauthenticated(c.0.src);
            s.last_active = Instant::now();
        }
        drop(s);
        c.0.changed.notify_one();
    }
}

/// Held while a request is in progress on a connection ([`Conn::request`]).
pub struct RequestOnConn(Conn);

impl Drop for RequestOnConn {
    fn drop(&mut self) {
        let c = &self.0;
        let mut s = c.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.last_active = Instant::now();
        drop(s);
        c.0.changed.notify_one();
    }
}

/// A connection's HTTP service: each request holds a [`RequestOnConn`]
/// until its response body has been sent, so a long download is not idle.
#[derive(Clone)]
pub struct ConnService {
    inner: hyper_util::service::TowerToHyperService<axum::Router>,
    conn: Conn,
}

impl ConnService {
    pub fn new(app: axum::Router, conn: Conn) -> ConnService {
        ConnService {
            inner: hyper_util::service::TowerToHyperService::new(app),
            conn,
        }
    }
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for ConnService {
    type Response = http::Response<GuardedBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let guard = self.conn.request();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|body| GuardedBody {
                body,
                guard: Some(guard),
            }))
        })
    }
}

/// A response body that ends its request's [`RequestOnConn`] with it.
pub struct GuardedBody {
    body: axum::body::Body,
    guard: Option<RequestOnConn>,
}

impl hyper::body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The public listener's all-connections cap: what `open_files` leaves
/// after [`RESERVED_FILES`] and the admin listener's `admin_total`, at
/// least 1; and whether the configured unauthenticated cap had to shrink
/// to fit under it.
pub fn fit_to_open_files(open_files: u64, admin_total: u32, unauthenticated: u32) -> (u32, u32) {
    let left = open_files
        .saturating_sub(RESERVED_FILES)
        .saturating_sub(admin_total.into())
        .max(1);
    let total = u32::try_from(left).unwrap_or(u32::MAX);
    (total, unauthenticated.min(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(per_address: u32, unauthenticated: u32, total: u32) -> Caps {
        Caps {
            per_address,
            unauthenticated,
            total,
        }
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 1000)
    }

    #[test]
    fn counts_refuse_per_address_then_unauthenticated_then_total() {
        let caps = caps(2, 3, 4);
        let mut c = Counts::default();
        let a = source("192.0.2.1".parse().unwrap());
        let b = source("192.0.2.2".parse().unwrap());
        let d = source("192.0.2.3".parse().unwrap());
        assert_eq!(c.admit(a, &caps), Ok(()));
        assert_eq!(c.admit(a, &caps), Ok(()));
        assert_eq!(c.admit(a, &caps), Err(Refusal::PerAddress));
        assert_eq!(c.admit(b, &caps), Ok(()));
        assert_eq!(c.admit(d, &caps), Err(Refusal::Unauthenticated));
        // A session frees its connection's unauthenticated place only.
        c.authenticated(a);
        assert_eq!(c.admit(d, &caps), Ok(()));
        assert_eq!(c.admit(b, &caps), Err(Refusal::Total));
        // The session ends: unauthenticated again, over the cap, not closed.
        c.unauthenticated(a);
        assert_eq!((c.unauthenticated, c.total), (4, 4));
        for s in [a, a, b, d] {
            c.closed(s);
        }
        assert_eq!((c.unauthenticated, c.total), (0, 0));
        assert!(c.per_source.is_empty(), "{:?}", c.per_source);
    }

    #[tokio::test]
    async fn a_connection_holds_its_place_until_its_last_clone_and_a_session_frees_it() {
        let m = Arc::new(Metrics::default());
        let adm = Admission::new(Listener::Public, caps(1, 10, 10), m.clone());
        let first = adm.admit(peer("192.0.2.1")).unwrap();
        assert_eq!(
            adm.admit(peer("192.0.2.1")).err(),
            Some(Refusal::PerAddress)
        );
        // IPv6 counts per /64.
        {
            let _v6 = adm.admit(peer("2001:db8::1")).unwrap();
            assert!(adm.admit(peer("2001:db8::2")).is_err());
            assert!(adm.admit(peer("2001:db8:0:1::2")).is_ok());
        }
        let clone = first.clone();
        let session = clone.session();
        let second = adm.admit(peer("192.0.2.1")).unwrap();
        drop(second);
        drop(first);
        assert_eq!(adm.open(), (0, 1), "the session's connection stays open");
        drop(session);
        assert_eq!(adm.open(), (1, 1), "unauthenticated again");
        drop(clone);
        assert_eq!(adm.open(), (0, 0));
        assert!(m
            .render()
            .contains("vmgate_refusals_total{reason=\"connections_per_address\"} 2"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_and_idle_deadlines() {
        let adm = Admission::new(
            Listener::Public,
            caps(8, 8, 8),
            Arc::new(Metrics::default()),
        );
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(30);
        // Nothing sent: closed at the first-request deadline.
        let c = adm.admit(peer("192.0.2.1")).unwrap();
        let t = Instant::now();
        assert_eq!(c.until_idle(first, idle).await, Closed::NoRequest);
        assert_eq!(t.elapsed(), first);

        // A request that takes 50 s, then nothing: closed 30 s after it.
        let c = adm.admit(peer("192.0.2.1")).unwrap();
        let t = Instant::now();
        let (c2, req) = (c.clone(), c.request());
        let h = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(50)).await;
            drop(req);
            // A session from 60 s to 200 s keeps it open, then 30 s more.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let s = c2.session();
            tokio::time::sleep(Duration::from_secs(140)).await;
            drop(s);
        });
        assert_eq!(c.until_idle(first, idle).await, Closed::Idle);
        assert_eq!(t.elapsed(), Duration::from_secs(230));
        h.await.unwrap();
    }

    #[test]
    fn the_public_cap_fits_in_the_open_files_limit() {
        assert_eq!(fit_to_open_files(1024, 64, 4096), (704, 704));
        assert_eq!(
            fit_to_open_files(1 << 20, 64, 4096),
            ((1 << 20) - 320, 4096)
        );
        assert_eq!(fit_to_open_files(100, 64, 4096), (1, 1));
        assert_eq!(fit_to_open_files(u64::MAX, 64, 10), (u32::MAX, 10));
    }
}
