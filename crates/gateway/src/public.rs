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
use axum::routing::{any, get};
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vmgate_relay::{relay, FrameTx};
use vmgate_ticket::TicketError;
use vmgate_wire::{Close, CloseCode, Frame, Mode};

use crate::{assets, ws, Shared};

/// Deadline for a client's TLS handshake.
const TLS_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline for the HTTP request headers after the handshake.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// The largest WebSocket message accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// The client's address, attached to each request of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { html(assets::INDEX_HTML) }))
        .route("/console", get(|| async { html(assets::CONSOLE_HTML) }))
        .route("/assets/{name}", get(asset))
        .route("/healthz", get(|| async { "ok\n" }))
        // `any`: over HTTP/2 a WebSocket opens with CONNECT, not GET.
        .route("/ws/{guest}/{channel}", any(console_ws))
        .with_state(shared)
}

fn html(body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::find(&name) {
        Some((mime, body)) => ([(header::CONTENT_TYPE, mime)], body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

#[derive(Deserialize)]
struct WsQuery {
    ticket: Option<String>,
    /// Take the keyboard (serial) or the channel over from its holder.
    #[serde(default)]
    force: bool,
}

async fn console_ws(
    State(shared): State<Arc<Shared>>,
    Path((guest, channel)): Path<(String, String)>,
    Query(q): Query<WsQuery>,
    Extension(Peer(peer)): Extension<Peer>,
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
        .on_upgrade(move |socket| {
            // noVNC asks for `binary`: it gets raw bytes and nothing else.
            let controls = socket.protocol().is_none();
            let (rx, tx) = ws::split(socket, controls);
            session(shared, rx, tx, guest, channel, q, peer)
        })
}

fn refusal(e: &TicketError) -> Close {
    let code = match e {
        TicketError::WrongGuest | TicketError::WrongChannel => CloseCode::TicketScope,
        TicketError::ReplayCacheFull => CloseCode::TooMany,
        _ => CloseCode::TicketRefused,
    };
    Close::new(code, e.to_string())
}

async fn session(
    shared: Arc<Shared>,
    rx: ws::WsRx,
    tx: ws::WsTx,
    guest: String,
    channel: String,
    q: WsQuery,
    peer: SocketAddr,
) {
    let claims = match q.ticket.as_deref() {
        None => Err(Close::new(
            CloseCode::TicketRefused,
            "missing ticket: add ?ticket=… from `vmgate ticket`",
        )),
        Some(t) => shared.tickets.redeem(t, &guest, &channel).map_err(|e| {
            tracing::warn!(%peer, %guest, %channel, reason = e.code(), "ticket refused");
            refusal(&e)
        }),
    };
    let claims = match claims {
        Ok(c) => c,
        Err(close) => return refuse(tx, close).await,
    };
    let mode = match claims.mode {
        vmgate_ticket::Mode::Interactive => Mode::Interactive,
        vmgate_ticket::Mode::ReadOnly => Mode::ReadOnly,
    };
    let force = q.force && mode == Mode::Interactive;
    let sid = shared.pool.session_id();
    let (qrx, qtx) = match shared.pool.open(sid, &guest, &channel, mode, force).await {
        Ok(s) => s,
        Err(close) => {
            tracing::warn!(%peer, %guest, %channel, ticket = %claims.id, reason = %close, "session refused");
            return refuse(tx, close).await;
        }
    };
    tracing::info!(session = sid, %peer, %guest, %channel, ticket = %claims.id, ?mode, "session opened");
    let shutdown = shared.shutdown.clone();
    let max = claims.max_session;
    let stop = async move {
        let expire = async {
            match max {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => Close::new(CloseCode::GoingAway, "the gateway is shutting down"),
            _ = expire => Close::new(
                CloseCode::SessionExpired,
                format!("maximum session length of {}s reached: mint a new ticket", max.unwrap_or(0)),
            ),
        }
    };
    let out = relay(rx, tx, qrx, qtx, stop).await;
    tracing::info!(session = sid, %peer, %guest, %channel, reason = %out.close,
        bytes_to_guest = out.a_to_b, bytes_from_guest = out.b_to_a, "session ended");
}

async fn refuse(mut tx: ws::WsTx, close: Close) {
    let _ = tx.send(Frame::Close(close)).await;
    tx.finish().await;
}

/// Serves HTTPS on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<vmgate_tls::rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone().layer(Extension(Peer(addr)));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_DEADLINE, acceptor.accept(tcp)).await {
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
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE);
            builder.http2().enable_connect_protocol();
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
    }
}
