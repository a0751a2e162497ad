//! The public listener: HTTPS (HTTP/1.1 and HTTP/2) with the console
//! WebSockets and the web console page. Nothing else answers here.
//!
//! Each connection runs in its own task: the TLS handshake and the HTTP
//! request that upgrades to a WebSocket happen under deadlines; the ticket
//! is checked as soon as the WebSocket is up, so its refusal reaches even a
//! browser as a close reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{middleware, Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vmgate_ticket::TicketError;
use vmgate_wire::{Close, CloseCode};

use crate::conns::{Admission, Closed, Conn, ConnService};
use crate::limits::{self, ConnLimits};
use crate::session::{self, Grant};
use crate::store::pages::JoinError;
use crate::tickets::RedeemError;
use crate::untrusted::Escaped;
use crate::{assets, ws, Shared};

/// The largest WebSocket message accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// The largest `POST /api/session` body (a ticket is well under 2 kB).
const MAX_PAGE_REQUEST: usize = 16 * 1024;

/// The client's address, attached to each request of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Whether the client presented a certificate the listener's verifier
/// accepted (only the admin listener asks for one).
#[derive(Clone, Copy, Debug)]
pub struct ClientCert(pub bool);

pub fn router(shared: Arc<Shared>) -> Router {
    let lim = shared.request_limits();
    let csp: Arc<str> = shared.embed.content_security_policy().into();
    let page = |body: &'static [u8]| {
        let csp = csp.clone();
        get(move || async move { html(body, &csp) })
    };
    let embed = Arc::new(serde_json::json!({
        "frame_ancestors": shared.embed.frame_ancestors,
    }));
    Router::new()
        .route("/", page(assets::INDEX_HTML))
        .route("/console", page(assets::CONSOLE_HTML))
        .route("/screen", page(assets::SCREEN_HTML))
        // The pages ask which parents they may talk to (web/embed.js).
        .route(
            "/embed.json",
            get(move || async move { axum::Json((*embed).clone()) }),
        )
        .route("/assets/{name}", get(asset))
        .route("/novnc/{*path}", get(novnc_asset))
        .route("/api/session", post(page_session))
        .route("/healthz", get(|| async { "ok\n" }))
        // `any`: over HTTP/2 a WebSocket opens with CONNECT, not GET.
        .route(
            "/ws/{guest}/{channel}",
            any(console_ws).layer(middleware::from_fn_with_state(
                lim.clone(),
                limits::check_origin,
            )),
        )
        .with_state(shared)
        .layer(middleware::from_fn_with_state(lim, limits::bounded_url))
}

/// A page, with its Content-Security-Policy ([`crate::config::Embed`]:
/// `frame-ancestors` names who may frame it).
fn html(body: &'static [u8], csp: &str) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    // The origins were checked at start; should one not make a header
    // value, nobody may frame the page (never no policy at all).
    let v = header::HeaderValue::from_str(csp).unwrap_or_else(|_| {
        header::HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'")
    });
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    r
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::find(&name) {
        Some((mime, body)) => ([(header::CONTENT_TYPE, mime)], body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

async fn novnc_asset(Path(path): Path<String>) -> Response {
    match assets::novnc(&path) {
        Some((mime, body)) => ([(header::CONTENT_TYPE, mime)], body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// Deadline for a page's session request body.
const PAGE_REQUEST_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct PageRequest {
    ticket: String,
}

/// `POST /api/session {"ticket": …}`: redeems a ticket for a web console
/// page and answers with the token its WebSockets present ([`crate::pages`]).
async fn page_session(
    State(shared): State<Arc<Shared>>,
    Extension(Peer(peer)): Extension<Peer>,
    body: axum::body::Body,
) -> Response {
    let refused = |status: StatusCode, code: CloseCode, reason: String| {
        (
            status,
            axum::Json(serde_json::json!({ "code": code as u16, "error": reason })),
        )
            .into_response()
    };
    if let Err(close) = shared.throttled(peer).await {
        let status = if close.code == CloseCode::TooMany {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return refused(status, close.code, close.reason);
    }
    // Pre-auth: the body is bounded in size and time.
    let body = tokio::time::timeout(
        PAGE_REQUEST_DEADLINE,
        axum::body::to_bytes(body, MAX_PAGE_REQUEST),
    )
    .await;
    let req: Option<PageRequest> = match body {
        Ok(Ok(b)) => serde_json::from_slice(&b).ok(),
        _ => None,
    };
    let Some(req) = req else {
        tracing::debug!(%peer, "bad page session request");
        return refused(
            StatusCode::BAD_REQUEST,
            CloseCode::TicketRefused,
            "expected {\"ticket\": …} within the size and time limits".into(),
        );
    };
    let claims = match shared.tickets.redeem_page(&req.ticket).await {
        Ok(c) => c,
        Err(RedeemError::Ticket(e)) => {
            tracing::warn!(%peer, reason = e.code(), "page ticket refused");
            shared.ticket_failed(peer, &e).await;
            let close = refusal(&e);
            return refused(StatusCode::FORBIDDEN, close.code, close.reason);
        }
        Err(RedeemError::Store(e)) => {
            let close = shared.store_failed(&e);
            return refused(StatusCode::SERVICE_UNAVAILABLE, close.code, close.reason);
        }
    };
    let body = serde_json::json!({
        "guest": claims.guest,
        "channels": claims.channels,
        "mode": claims.mode.as_str(),
    });
    let id = claims.id.clone();
    match shared.store.page_start(claims).await {
        Ok(Ok(token)) => {
            tracing::info!(%peer, ticket = %id, "page session started");
            let mut body = body;
            body["session"] = token.into();
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
        }
        Ok(Err(e)) => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            CloseCode::TooMany,
            e.to_string(),
        ),
        Err(e) => {
            let close = shared.store_failed(&e);
            refused(StatusCode::SERVICE_UNAVAILABLE, close.code, close.reason)
        }
    }
}

#[derive(Deserialize)]
struct WsQuery {
    ticket: Option<String>,
    /// A web console page's session token (`POST /api/session`), instead
    /// of a ticket.
    session: Option<String>,
    /// Take the keyboard (serial) or the channel over from its holder.
    #[serde(default)]
    force: bool,
    /// The client's Tight decoder resets its zlib streams when told: keep
    /// Tight on a screen ([`session::Grant::tight`]).
    #[serde(default)]
    tight: bool,
}

async fn console_ws(
    State(shared): State<Arc<Shared>>,
    Path((guest, channel)): Path<(String, String)>,
    Query(q): Query<WsQuery>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(conn): Extension<Conn>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade
        .protocols(["binary"])
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        // Client-to-guest traffic is keystrokes and pointer moves: a small
        // read buffer (grown only for a larger message) keeps an idle
        // session from pinning tungstenite's default 128 KiB.
        .read_buffer_size(ws::READ_BUFFER)
        .on_upgrade(move |socket| async move {
            // noVNC asks for `binary`: it gets raw bytes and nothing else.
            let controls = socket.protocol().is_none();
            let (rx, tx) = ws::split(socket, controls);
            // Before anything logs them: the names come percent-decoded
            // from the URL, so they could hold newlines or escapes.
            if let Err(close) = valid_names(&shared, &guest, &channel, peer) {
                return session::refuse(tx, close).await;
            }
            let req = session::Request {
                guest,
                channel,
                peer,
                conn,
            };
            session::serve(shared, req, rx, tx, move |shared, req| async move {
                authorize(&shared, &req, q).await
            })
            .await
        })
}

/// Refuses a guest or channel name that is not [`vmgate_wire::valid_name`],
/// logging it escaped ([`Escaped`]) and counting it.
pub fn valid_names(
    shared: &Shared,
    guest: &str,
    channel: &str,
    peer: SocketAddr,
) -> Result<(), Close> {
    if vmgate_wire::valid_name(guest) && vmgate_wire::valid_name(channel) {
        return Ok(());
    }
    shared.metrics.refused("invalid_name");
    tracing::warn!(%peer, guest = %Escaped(guest), channel = %Escaped(channel), "session refused: invalid guest or channel name");
    Err(Close::new(
        CloseCode::ProtocolError,
        format!(
            "invalid guest or channel name: use 1 to {} letters, digits and . _ : -",
            vmgate_wire::MAX_NAME_LEN
        ),
    ))
}

fn refusal(e: &TicketError) -> Close {
    let code = match e {
        TicketError::WrongGuest | TicketError::WrongChannel => CloseCode::TicketScope,
        TicketError::ReplayCacheFull => CloseCode::TooMany,
        _ => CloseCode::TicketRefused,
    };
    Close::new(code, e.to_string())
}

/// Checks a ticket for `guest`/`channel` and uses it up, but only once the
/// session could open (the guest is routed and has the channel), so a
/// ticket is never wasted on a guest that is not there yet.
async fn redeem(
    shared: &Shared,
    ticket: &str,
    req: &session::Request,
) -> Result<vmgate_ticket::Claims, Close> {
    let claims = match shared.tickets.check(ticket, &req.guest, &req.channel) {
        Ok(c) => c,
        Err(e) => return Err(ticket_refused(shared, req, e).await),
    };
    shared.pool.check(&req.guest, &req.channel)?;
    match shared.tickets.redeem(&claims).await {
        Ok(()) => Ok(claims),
        Err(RedeemError::Ticket(e)) => Err(ticket_refused(shared, req, e).await),
        Err(RedeemError::Store(e)) => Err(shared.store_failed(&e)),
    }
}

/// A ticket refused for `e`: logged, counted, throttled if it counts.
async fn ticket_refused(shared: &Shared, req: &session::Request, e: TicketError) -> Close {
    tracing::warn!(reason = e.code(), "ticket refused");
    shared.ticket_failed(req.peer, &e).await;
    refusal(&e)
}

/// A public console's credential (a ticket, or a web page's session token)
/// as a [`Grant`].
async fn authorize(shared: &Shared, req: &session::Request, q: WsQuery) -> Result<Grant, Close> {
    shared.throttled(req.peer).await?;
    let grant = match (q.ticket.as_deref(), q.session.as_deref()) {
        (None, None) => {
            // Nothing was checked: counted, not throttled.
            tracing::warn!(reason = "missing_ticket", "ticket refused");
            shared.metrics.refused("missing_ticket");
            return Err(Close::new(
                CloseCode::TicketRefused,
                "missing ticket: add ?ticket=… from `vmgate ticket`",
            ));
        }
        (Some(t), _) => {
            let c = redeem(shared, t, req).await?;
            Grant::new(&req.guest, &req.channel, session::wire_mode(c.mode), c.id)
                .for_at_most(std::time::Instant::now(), c.max_session)
                .with_audio_if_in(&c.channels)
        }
        (None, Some(token)) => {
            let joined = shared
                .store
                .page_join(token, &req.guest, &req.channel)
                .await
                .map_err(|e| shared.store_failed(&e))?;
            let p = joined.map_err(|e| {
                // A page token is 256 random bits, cheap to look up:
                // counted, not throttled.
                tracing::warn!(reason = %e, "page session refused");
                shared.metrics.refused("page_session");
                let code = match e {
                    JoinError::WrongGuest | JoinError::Channel(_) => CloseCode::TicketScope,
                    JoinError::Full => CloseCode::TooMany,
                    JoinError::Unknown => CloseCode::TicketRefused,
                };
                Close::new(code, e.to_string())
            })?;
            let mut g = Grant::new(
                &req.guest,
                &req.channel,
                session::wire_mode(p.mode),
                p.ticket,
            );
            g.until = p.until;
            g.audio = p.audio;
            g
        }
    };
    let mut grant = grant.with_force(q.force);
    grant.tight = q.tight;
    Ok(grant)
}

/// Serves HTTPS on `listener` until `shutdown`, then drains. Each
/// accepted connection is admitted by `admission` first (or closed at
/// once), then held to `conn_limits`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<vmgate_tls::rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
    conn_limits: ConnLimits,
    admission: Arc<Admission>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    admission.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Before any TLS work: a refused connection costs one accept.
        let Ok(conn_state) = admission.admit(addr) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        let admission = admission.clone();
        let drain = conn_limits.drain;
        conns.spawn(async move {
            let tls = match tokio::time::timeout(conn_limits.handshake, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let cert = ClientCert(tls.get_ref().1.peer_certificates().is_some());
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let app = app
                .layer(Extension(Peer(addr)))
                .layer(Extension(cert))
                .layer(Extension(conn_state.clone()));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(conn_limits.handshake)
                .max_buf_size(conn_limits.max_header_bytes);
            builder
                .http2()
                .timer(TokioTimer::new())
                .enable_connect_protocol()
                .max_header_list_size(conn_limits.max_header_bytes as u32)
                .max_concurrent_streams(conn_limits.h2_max_streams)
                .keep_alive_interval(conn_limits.h2_keepalive)
                .keep_alive_timeout(conn_limits.h2_keepalive.unwrap_or(Duration::from_secs(20)));
            let svc = ConnService::new(app, conn_state.clone());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                why = conn_state.until_idle(conn_limits.handshake, conn_limits.idle) => {
                    tracing::debug!(peer = %addr, why = why.as_str(), "closing an idle connection");
                    admission.closed(why);
                    // HTTP/2 says GOAWAY first; nothing is in progress.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
                r = conn.as_mut() => match r {
                    // Over HTTP/2 hyper's only timeout is the keepalive's.
                    Err(e) if h2 && is_timeout(&*e) => {
                        tracing::debug!(peer = %addr, "closed a connection whose peer did not answer a PING");
                        admission.closed(Closed::Keepalive);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                    }
                    Ok(()) => {}
                },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(drain, conn).await;
                }
            }
        });
    }
    // Each connection drains within `drain` of the signal (a connection
    // task never outlives that); this wait is its bound.
    conns.close();
    let _ = tokio::time::timeout(conn_limits.drain, conns.wait()).await;
}

/// Whether a connection's error is one of hyper's timeouts.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}
