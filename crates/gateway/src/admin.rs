//! The administrators' listener of the gateway: its own address (the
//! management LAN), its own certificate, its own credentials.
//!
//! * `GET /v1/guests`: inventory (guest, node, agent, channels, state);
//! * `GET /v1/sessions`: live sessions; `DELETE /v1/sessions/{id}` ends one
//!   with "ended by administrator" (close code 4412);
//! * `GET /metrics`: Prometheus text;
//! * `/v1/console/{guest}/{channel}[?force=true][&read_only=true]`: a
//!   console WebSocket without a ticket: the `virsh console` recovery path,
//!   including `--force` takeover. It never exists on the public listener.
//!
//! Minting is not here: the gateway never holds the ticket signing key, so
//! a compromised gateway cannot mint. `vmgate admin` (crate
//! `vmgate-minter`) does, in its own process; `POST /v1/tickets` here says
//! so.
//!
//! Callers authenticate with a client certificate chaining to the admin CA
//! (checked in the TLS handshake) or with `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, Request, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use vmgate_tls::rustls;
use vmgate_wire::Mode;

use crate::config::{AdminAuth, AdminListener};
use crate::conns::{Admission, Caps, Listener};
use crate::limits::{self, ConnLimits};
use crate::public::{ClientCert, Peer};
use crate::session::{self, Grant};
use crate::sessions::ENDED_BY_ADMIN;
use crate::untrusted::Escaped;
use crate::{ws, GatewayError, Shared};

/// The largest WebSocket message accepted on an administrator's console.
const MAX_MESSAGE: usize = 1 << 20;

/// A bearer token, compared in constant time.
pub struct Token(String);

impl Token {
    /// Reads the token file: one line of at least 16 characters.
    pub fn load(path: &Path) -> Result<Token, GatewayError> {
        let bad = |why: String| GatewayError::AdminAuth(format!("{}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let t = text.trim();
        if t.len() < 16 || t.contains(char::is_whitespace) {
            return Err(bad(
                "the token must be one word of at least 16 characters".into()
            ));
        }
        Ok(Token(t.to_string()))
    }

    fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        // Length is not secret; the bytes are, so no early exit on them.
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// How callers of an admin listener prove who they are.
pub struct Auth {
    token: Option<Token>,
}

/// Who an admin request came from, for logs and the audit line.
#[derive(Clone, Copy, Debug)]
pub struct Who(pub &'static str);

impl Auth {
    /// The TLS server config and the request check for `auth`: with a
    /// client CA, certificates are verified in the handshake (required,
    /// or optional when a token may be used instead).
    pub fn build(
        cert: &Path,
        key: &Path,
        auth: &AdminAuth,
    ) -> Result<(rustls::ServerConfig, Auth), GatewayError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(vmgate_tls::TlsError::from)?;
        let builder = match &auth.client_ca {
            Some(ca) => {
                let roots = Arc::new(vmgate_tls::load_roots(ca)?);
                let v =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider);
                let v = if auth.token_file.is_some() {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                builder.with_client_cert_verifier(v.build().map_err(vmgate_tls::TlsError::from)?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut tls = builder
            .with_single_cert(vmgate_tls::load_certs(cert)?, vmgate_tls::load_key(key)?)
            .map_err(vmgate_tls::TlsError::from)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let token = auth.token_file.as_deref().map(Token::load).transpose()?;
        Ok((tls, Auth { token }))
    }

    fn check(&self, cert: bool, req: &Request) -> Result<Who, &'static str> {
        if cert {
            // The verifier accepted it: it chains to the admin CA.
            return Ok(Who("client-certificate"));
        }
        let Some(token) = &self.token else {
            return Err("a client certificate from the admin CA is required");
        };
        let offered = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        match offered {
            None => Err(
                "missing credentials: send Authorization: Bearer <token> or a client certificate",
            ),
            Some(t) if token.matches(t.trim()) => Ok(Who("token")),
            Some(_) => Err("invalid token"),
        }
    }
}

/// Refuses any request without valid admin credentials (401), before
/// routing, so an unauthenticated caller learns nothing about the routes.
pub async fn require_admin(
    State(auth): State<Arc<Auth>>,
    Extension(ClientCert(cert)): Extension<ClientCert>,
    Extension(Peer(peer)): Extension<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    match auth.check(cert, &req) {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(why) => {
            tracing::warn!(%peer, path = %Escaped(req.uri().path()), reason = why, "admin request refused");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({ "error": why })),
            )
                .into_response()
        }
    }
}

/// Refuses (403) any request that carries an `Origin` not in `[admin]
/// allowed_origins`, before authentication: a browser holding an
/// operator's client certificate would otherwise present it for any page
/// that asks, e.g. a foreign page opening `wss://admin/v1/console/…?force=true`.
pub async fn refuse_foreign_origin(
    State(o): State<Arc<AdminOrigins>>,
    Extension(Peer(peer)): Extension<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return next.run(req).await;
    };
    let origin = String::from_utf8_lossy(origin.as_bytes());
    if o.allowed.iter().any(|a| *a == origin) {
        return next.run(req).await;
    }
    o.metrics.refused("admin_origin");
    tracing::warn!(%peer, origin = %Escaped(&origin), path = %Escaped(req.uri().path()),
        "admin request from a browser page refused (Origin not allowed)");
    json_error(
        StatusCode::FORBIDDEN,
        "origin not allowed on the admin listener: add it to [admin] allowed_origins if this page is yours",
    )
}

/// The origins allowed on the admin listener, and where refusals count.
pub struct AdminOrigins {
    allowed: Vec<String>,
    metrics: Arc<crate::metrics::Metrics>,
}

pub(crate) fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// The gateway's admin listener, bound.
pub struct AdminServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    auth: Arc<Auth>,
    allowed_origins: Vec<String>,
    /// Its own connection caps: a flood of the public listener never
    /// takes these places.
    caps: Caps,
}

impl AdminServer {
    pub async fn bind(cfg: &AdminListener) -> Result<AdminServer, GatewayError> {
        let (tls, auth) = Auth::build(&cfg.cert, &cfg.key, &cfg.auth())?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| GatewayError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        Ok(AdminServer {
            listener,
            tls: Arc::new(tls),
            auth: Arc::new(auth),
            allowed_origins: cfg.allowed_origins.clone(),
            caps: Caps {
                per_address: cfg.max_connections_per_address,
                unauthenticated: cfg.max_connections,
                total: cfg.max_connections,
            },
        })
    }

    /// Its connection caps (the public listener's fit around them).
    pub fn caps(&self) -> Caps {
        self.caps
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub async fn run(self, shared: Arc<Shared>) {
        tracing::info!(addr = %self.local_addr(), "admin listener (HTTPS)");
        let origins = Arc::new(AdminOrigins {
            allowed: self.allowed_origins,
            metrics: shared.metrics.clone(),
        });
        let app = router(shared.clone(), self.auth, origins);
        let conn = ConnLimits::from(&*shared.limits.get());
        let admission = Admission::new(Listener::Admin, self.caps, shared.metrics.clone());
        crate::public::serve(
            self.listener,
            self.tls,
            app,
            shared.shutdown.clone(),
            conn,
            admission,
        )
        .await;
    }
}

fn router(shared: Arc<Shared>, auth: Arc<Auth>, origins: Arc<AdminOrigins>) -> Router {
    let lim = shared.request_limits();
    Router::new()
        .route("/v1/guests", get(guests))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{id}", delete(end_session))
        .route("/metrics", get(metrics))
        .route("/v1/console/{guest}/{channel}", any(console_ws))
        .route(
            "/v1/tickets",
            post(|| async {
                json_error(
                    StatusCode::NOT_FOUND,
                    "the gateway cannot mint tickets (it never holds the signing key): POST to `vmgate admin`",
                )
            }),
        )
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such admin route") })
        .with_state(shared)
        .layer(middleware::from_fn_with_state(auth, require_admin))
        .layer(middleware::from_fn_with_state(origins, refuse_foreign_origin))
        .layer(middleware::from_fn_with_state(lim, limits::bounded_url))
}

async fn guests(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.pool.guests()).into_response()
}

async fn sessions(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.sessions.list_fleet().await).into_response()
}

async fn end_session(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    Extension(Who(who)): Extension<Who>,
    Extension(Peer(peer)): Extension<Peer>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return json_error(StatusCode::BAD_REQUEST, "a session id is a number");
    };
    if shared.sessions.end(id, ENDED_BY_ADMIN) {
        tracing::info!(session = id, %peer, by = who, "session ended by administrator");
        return Json(serde_json::json!({ "ended": id, "gateway": shared.name })).into_response();
    }
    // Another gateway of the fleet may run it: it is asked through the
    // store and ends it within `sessions::END_POLL`.
    match shared.store.end_elsewhere(id).await {
        Ok(Some(gateway)) => {
            tracing::info!(session = id, %peer, by = who, gateway = %gateway,
                "session ended by administrator, at its gateway");
            Json(serde_json::json!({ "ended": id, "gateway": gateway })).into_response()
        }
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("no live session {id}")),
        Err(e) => {
            tracing::warn!(session = id, error = %e, "cannot end a session at another gateway: the store does not answer");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the session is not on this gateway, and the store that knows the others does not answer: try again shortly",
            )
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ConsoleQuery {
    /// Take the keyboard or the channel over from its holder.
    #[serde(default)]
    force: bool,
    #[serde(default)]
    read_only: bool,
}

async fn console_ws(
    State(shared): State<Arc<Shared>>,
    UrlPath((guest, channel)): UrlPath<(String, String)>,
    Query(q): Query<ConsoleQuery>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(Who(who)): Extension<Who>,
    Extension(conn): Extension<crate::conns::Conn>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(close) = crate::public::valid_names(&shared, &guest, &channel, peer) {
        return json_error(StatusCode::BAD_REQUEST, close.reason);
    }
    upgrade
        .protocols(["binary"])
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            let controls = socket.protocol().is_none();
            let (rx, tx) = ws::split(socket, controls);
            let req = session::Request {
                guest,
                channel,
                peer,
                conn,
            };
            session::serve(shared, req, rx, tx, move |_, req| async move {
                Ok(admin_grant(&req, &q, who))
            })
        })
}

/// An administrator's console: no ticket, outside the session limits,
/// `force` allowed (unless read-only), audio allowed, audited as
/// `admin:<how>`. It goes through the same pipeline as every session, so a
/// read-only VNC console is filtered like a read-only ticket's.
fn admin_grant(req: &session::Request, q: &ConsoleQuery, who: &'static str) -> Grant {
    let mode = if q.read_only {
        Mode::ReadOnly
    } else {
        Mode::Interactive
    };
    tracing::info!(by = who, "administrator's console");
    let mut g =
        Grant::new(&req.guest, &req.channel, mode, format!("admin:{who}")).with_force(q.force);
    g.limited = false;
    // An administrator may open any channel, `audio` among them.
    g.audio = true;
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compares_whole_and_refuses_short_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        let t = Token::load(&p).unwrap();
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef012"));
        assert!(!t.matches("0123456789abcdef0124"));
        assert_eq!(format!("{t:?}"), "Token(…)");
        std::fs::write(&p, "short").unwrap();
        assert!(Token::load(&p).is_err());
    }
}
