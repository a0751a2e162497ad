//! `vmgate admin`: the ticket minter, a process of its own on the
//! management LAN, and the only component that holds the ticket signing key.
//!
//! `POST /v1/tickets` with `{"guest", "channels", "mode", "ttl_secs",
//! "max_session_secs"}` answers `{url, ws_url, ticket, id, expires_at,
//! expires_at_unix}`. Callers authenticate as on the gateway's admin
//! listener (admin CA client certificate or bearer token).
//!
//! Why a separate process: the gateway faces the internet; if it held the
//! signing key, one memory-disclosure or code-execution bug there would let
//! an attacker mint tickets for every guest. The gateway has no credential
//! for this process either, so it cannot ask it for tickets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vmgate_ticket::{Claims, Mode, SigningKey};

use crate::admin::{json_error, require_admin, Auth, Who};
use crate::config::{AdminAuth, ConfigError, Limits};
use crate::limits::ConnLimits;
use crate::public::Peer;
use crate::GatewayError;

/// Largest ticket request body.
const MAX_BODY: usize = 16 * 1024;
/// Most channels one ticket may name.
const MAX_CHANNELS: usize = 32;

/// `vmgate admin`'s configuration file (TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinterConfig {
    /// TCP address, on the management network.
    pub listen: SocketAddr,
    /// This listener's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA of administrators' client certificates (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// File holding the administrators' bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The ticket signing key (PKCS#8 PEM, mode 0600).
    pub ticket_signing_key: PathBuf,
    /// The gateway's public base URL, for the URLs handed out
    /// (`https://console.example.com`).
    pub public_url: String,
    /// Longest time to redeem a ticket that may be asked for (default 300).
    #[serde(default = "default_max_ttl")]
    pub max_ttl_secs: u64,
}

fn default_max_ttl() -> u64 {
    300
}

impl MinterConfig {
    pub fn load(path: &Path) -> Result<MinterConfig, ConfigError> {
        let cfg: MinterConfig = crate::config::read_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.auth().validate("vmgate admin")?;
        if !self.public_url.starts_with("https://") || self.public_url.ends_with('/') {
            return Err(ConfigError::Invalid(format!(
                "public_url {:?}: expected https://host[:port] without a trailing slash",
                self.public_url
            )));
        }
        if self.max_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "max_ttl_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn auth(&self) -> AdminAuth {
        AdminAuth {
            client_ca: self.client_ca.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

/// What `POST /v1/tickets` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    pub guest: String,
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    #[serde(default)]
    pub max_session_secs: Option<u64>,
}

fn default_channels() -> Vec<String> {
    vec!["serial0".into()]
}
fn default_mode() -> Mode {
    Mode::Interactive
}
fn default_ttl() -> u64 {
    60
}

/// What `POST /v1/tickets` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedTicket {
    /// Opens the web console.
    pub url: String,
    /// The WebSocket of the first channel.
    pub ws_url: String,
    pub ticket: String,
    /// The ticket's id, as the gateway's audit log and sessions show it.
    pub id: String,
    /// RFC 3339.
    pub expires_at: String,
    pub expires_at_unix: u64,
}

struct Minter {
    key: SigningKey,
    public_url: String,
    max_ttl: u64,
}

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
    ) -> Result<MinterServer, GatewayError> {
        let (tls, auth) = Auth::build(&cfg.cert, &cfg.key, &cfg.auth())?;
        let key = SigningKey::load(&cfg.ticket_signing_key)?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| GatewayError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        Ok(MinterServer {
            listener,
            tls: Arc::new(tls),
            auth: Arc::new(auth),
            minter: Arc::new(Minter {
                key,
                public_url: cfg.public_url,
                max_ttl: cfg.max_ttl_secs,
            }),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub async fn run(self) {
        tracing::info!(addr = %self.local_addr(), "ticket minter listening (HTTPS)");
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
        crate::public::serve(self.listener, self.tls, app, self.shutdown, conn).await;
    }
}

fn unix_now() -> u64 {
    crate::tickets::unix_now()
}

/// The console WebSocket URL for `channel` on the gateway at `base`.
pub fn ws_url(base: &str, guest: &str, channel: &str, ticket: &str) -> String {
    let rest = base.strip_prefix("https://").unwrap_or(base);
    format!("wss://{rest}/ws/{guest}/{channel}?ticket={ticket}")
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
    if req.channels.is_empty() || req.channels.len() > MAX_CHANNELS {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("name 1 to {MAX_CHANNELS} channels"),
        );
    }
    for name in std::iter::once(&req.guest).chain(&req.channels) {
        if !vmgate_wire::valid_name(name) {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("invalid name {name:?}: use letters, digits and . _ : -"),
            );
        }
    }
    if req.ttl_secs == 0 || req.ttl_secs > m.max_ttl {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("ttl_secs must be 1 to {}", m.max_ttl),
        );
    }
    let claims = Claims::new(
        req.guest.clone(),
        req.channels.clone(),
        req.mode,
        unix_now(),
        req.ttl_secs,
        req.max_session_secs,
    );
    let ticket = vmgate_ticket::mint(&m.key, &claims);
    tracing::info!(%peer, by = who, id = %claims.id, guest = %claims.guest,
        channels = ?claims.channels, mode = %claims.mode, "ticket minted");
    let expires = UNIX_EPOCH + Duration::from_secs(claims.not_after);
    Json(MintedTicket {
        url: format!("{}/console#ticket={ticket}", m.public_url),
        ws_url: ws_url(&m.public_url, &claims.guest, &claims.channels[0], &ticket),
        id: claims.id,
        expires_at: humantime::format_rfc3339_seconds(expires).to_string(),
        expires_at_unix: claims.not_after,
        ticket,
    })
    .into_response()
}
