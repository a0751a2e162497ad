//! Abuse limits in front of the ticket check: which failed tickets count
//! towards a source's throttle (the counting is in [`crate::store`]), the
//! WebSocket `Origin` check, bounded request targets,
//! and the per-connection deadlines and sizes the HTTPS listeners apply.
//!
//! Session-count limits and the idle timeout live with the sessions they
//! count ([`crate::sessions`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::untrusted::Escaped;

/// What the connection caps count per source: the address, or an IPv6 /64, which
/// one host usually holds whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    V4(u32),
    V6(u64),
}

pub(crate) fn source(ip: IpAddr) -> Source {
    match ip {
        IpAddr::V4(v4) => Source::V4(v4.into()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Source::V4(v4.into()),
            None => Source::V6((u128::from(v6) >> 64) as u64),
        },
    }
}

/// Whether a refused ticket counts towards its sender's throttle: only if
/// it was checked (it parsed, and its signature was looked at), and was
/// refused for what the sender did. A ticket refused for the gateway's own
/// state (issued before it restarted, or "in the future" of its clock)
/// is a genuine ticket: every client reconnecting after a restart would
/// otherwise lock its NAT out.
pub fn counts_against_throttle(e: &vmgate_ticket::TicketError) -> bool {
    use vmgate_ticket::TicketError as E;
    !matches!(
        e,
        E::Malformed(_) | E::IssuedBeforeRestart | E::IssuedInFuture | E::ReplayCacheFull
    )
}

pub use vmgate_relay::ratelog::RateLog;

/// What each HTTPS connection is held to before, between and while it
/// sends requests.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Deadline for the TLS handshake, again for the request headers, and
    /// for the first request after the handshake.
    pub handshake: Duration,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// A connection with no session and no request in progress for this
    /// long is closed ([`crate::conns::Conn::until_idle`]).
    pub idle: Duration,
    /// HTTP/2 PING interval; a PING not answered within as long closes the
    /// connection (a peer gone without a word). `None`: no PINGs.
    pub h2_keepalive: Option<Duration>,
    /// Concurrent streams one HTTP/2 connection may open.
    pub h2_max_streams: u32,
    /// How long connections get to finish on shutdown.
    pub drain: Duration,
}

impl From<&Limits> for ConnLimits {
    fn from(l: &Limits) -> ConnLimits {
        ConnLimits {
            handshake: Duration::from_secs(l.handshake_deadline_secs),
            max_header_bytes: l.max_header_bytes,
            idle: Duration::from_secs(l.connection_idle_secs),
            h2_keepalive: (l.http2_keepalive_secs > 0)
                .then(|| Duration::from_secs(l.http2_keepalive_secs)),
            h2_max_streams: l.http2_max_streams,
            drain: Duration::from_secs(l.drain_secs),
        }
    }
}

/// What the HTTP layer needs to apply the limits to each request.
#[derive(Clone)]
pub struct RequestLimits {
    pub limits: Arc<crate::config::LiveLimits>,
    pub metrics: Arc<Metrics>,
}

/// Refuses a request target longer than `max_url_bytes` (414) before any
/// handler parses it.
pub async fn bounded_url(State(l): State<RequestLimits>, req: Request, next: Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let max_url_bytes = l.limits.get().max_url_bytes;
    if len > max_url_bytes {
        l.metrics.refused("url_too_long");
        tracing::warn!(len, "request target too long");
        return (
            StatusCode::URI_TOO_LONG,
            format!("request target longer than {max_url_bytes} bytes\n",),
        )
            .into_response();
    }
    next.run(req).await
}

/// Whether a request from a page at `origin` may open a console: the
/// gateway's own pages (`https://` + the request's host) and the configured
/// origins may; any other page is a cross-site WebSocket hijack attempt.
pub fn origin_allowed(limits: &Limits, origin: &str, host: Option<&str>) -> bool {
    if host.is_some_and(|h| origin.strip_prefix("https://") == Some(h)) {
        return true;
    }
    limits.allowed_origins.iter().any(|o| o == origin)
}

/// The `Origin` check for the browser routes (console WebSockets), answered
/// with 403 before the upgrade so a foreign page never gets a socket.
pub async fn check_origin(State(l): State<RequestLimits>, req: Request, next: Next) -> Response {
    let limits = l.limits.get();
    if !limits.check_origin {
        return next.run(req).await;
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        // Browsers always send Origin on a WebSocket: this is not one.
        return next.run(req).await;
    };
    // HTTP/2 carries the host in :authority, HTTP/1.1 in Host.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let ok = origin
        .to_str()
        .is_ok_and(|o| origin_allowed(&limits, o, host.as_deref()));
    if ok {
        return next.run(req).await;
    }
    l.metrics.refused("origin");
    let origin = String::from_utf8_lossy(origin.as_bytes());
    tracing::warn!(origin = %Escaped(&origin), host = %Escaped(host.as_deref().unwrap_or("")),
        "console WebSocket from a foreign origin refused");
    (
        StatusCode::FORBIDDEN,
        "origin not allowed: open the console from the gateway's own page, or add this origin to limits.allowed_origins\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checked_tickets_count() {
        use vmgate_ticket::TicketError;
        for e in [
            TicketError::Malformed("empty"),
            TicketError::IssuedBeforeRestart,
            TicketError::IssuedInFuture,
            TicketError::ReplayCacheFull,
        ] {
            assert!(!counts_against_throttle(&e), "{e:?}");
        }
        for e in [
            TicketError::BadSignature,
            TicketError::UnknownKey {
                kid: "AAAAAAAAAAA".into(),
            },
            TicketError::Expired {
                expired_secs_ago: 1,
            },
            TicketError::Replayed,
            TicketError::WrongGuest,
            TicketError::WrongChannel,
            TicketError::LifetimeTooLong { max_secs: 1 },
        ] {
            assert!(counts_against_throttle(&e), "{e:?}");
        }
    }

    #[test]
    fn origin_same_host_or_configured_only() {
        let mut l = Limits::default();
        assert!(origin_allowed(
            &l,
            "https://gw.example:8443",
            Some("gw.example:8443")
        ));
        assert!(!origin_allowed(
            &l,
            "https://evil.example",
            Some("gw.example:8443")
        ));
        assert!(!origin_allowed(
            &l,
            "http://gw.example:8443",
            Some("gw.example:8443")
        ));
        assert!(!origin_allowed(&l, "null", Some("gw.example:8443")));
        l.allowed_origins.push("https://portal.example".into());
        assert!(origin_allowed(&l, "https://portal.example", None));
    }
}
