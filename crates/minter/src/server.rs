//! `vmgate admin`: the minter as a process of its own on the management
//! LAN, and the only component that holds the ticket signing key.
//!
//! `POST /v1/tickets` with a [`TicketRequest`] answers a [`MintedTicket`].
//! Callers authenticate as on the gateway's admin listener (admin CA client
//! certificate or bearer token; that check is the gateway crate's, shared).
//!
//! Why a separate process: the gateway faces the internet; if it held the
//! signing key, one memory-disclosure or code-execution bug there would let
//! an attacker mint tickets for every guest. The gateway has no credential
//! for this process either, so it cannot ask it for tickets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vmgate_gateway::admin::{require_admin, Auth, Who};
use vmgate_gateway::config::Limits;
use vmgate_gateway::conns::{Admission, Caps, Listener};
use vmgate_gateway::limits::ConnLimits;
use vmgate_gateway::metrics::Metrics;
use vmgate_gateway::public::Peer;
use vmgate_ticket::SigningKey;

#[cfg(doc)]
use crate::MintedTicket;
use crate::{Minter, MinterConfig, MinterError, TicketRequest};

/// Largest ticket request body.
const MAX_BODY: usize = 16 * 1024;

/// `vmgate admin`, bound.
pub struct MinterServer {
    listener: TcpListener,
    tls: Arc<vmgate_tls::rustls::ServerConfig>,
    auth: Arc<Auth>,
    minter: Arc<Minter>,
    shutdown: CancellationToken,
}

impl MinterServer {
    pub async fn bind(
        cfg: MinterConfig,
        shutdown: CancellationToken,
    ) -> Result<MinterServer, MinterError> {
        let (tls, auth) = Auth::build(&cfg.cert, &cfg.key, &cfg.auth())?;
        let key = SigningKey::load(&cfg.ticket_signing_key)?;
        // Tickets name this id; a gateway without the key names it back.
        tracing::info!(key_id = %key.verifying_key().id(), "ticket signing key loaded");
        let minter = Minter::new(key, &cfg.public_url, cfg.caps())
            .map_err(|e| vmgate_config::ConfigError::Invalid(e.to_string()))?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| MinterError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        Ok(MinterServer {
            listener,
            tls: Arc::new(tls),
            auth: Arc::new(auth),
            minter: Arc::new(minter),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub async fn run(self) {
        tracing::info!(addr = %self.local_addr(), caps = ?self.minter.caps(),
            "ticket minter listening (HTTPS)");
        let app = Router::new()
            .route("/v1/tickets", post(mint))
            .route("/healthz", get(|| async { "ok\n" }))
            .fallback(|| async {
                json_error(
                    StatusCode::NOT_FOUND,
                    "no such route here: sessions, guests, metrics and consoles are on the gateway's admin listener",
                )
            })
            .with_state(self.minter)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(middleware::from_fn_with_state(self.auth, require_admin));
        let conn = ConnLimits::from(&Limits::default());
        // Few operators and scripts call this: small caps of its own.
        let caps = Caps {
            per_address: 16,
            unauthenticated: 64,
            total: 64,
        };
        let admission = Admission::new(Listener::Minter, caps, Arc::new(Metrics::default()));
        vmgate_gateway::public::serve(self.listener, self.tls, app, self.shutdown, conn, admission)
            .await;
    }
}

fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn mint(
    State(m): State<Arc<Minter>>,
    Extension(Who(who)): Extension<Who>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Result<Json<TicketRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match m.mint(&req, unix_now()) {
        Ok((minted, claims)) => {
            tracing::info!(%peer, by = who, id = %claims.id, guest = %claims.guest,
                channels = ?claims.channels, mode = %claims.mode, "ticket minted");
            Json(minted).into_response()
        }
        Err(e) => {
            tracing::info!(%peer, by = who, reason = %e, "ticket request refused");
            json_error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}
