//! Minting tickets: from a local signing key, or through `vmgate admin`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vmgate_client::url;
use vmgate_ticket::{Claims, Mode, SigningKey};

use crate::state::State;

/// A minted ticket and where to use it (as `vmgate admin` answers it, too).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Minted {
    /// Opens the web console.
    pub url: String,
    /// The WebSocket of the first channel, for any WebSocket client.
    pub ws_url: String,
    pub ticket: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Unix seconds.
    pub expires_at_unix: u64,
}

/// What to mint.
#[derive(Debug, Clone)]
pub struct TicketRequest {
    pub guest: String,
    pub channels: Vec<String>,
    pub mode: Mode,
    pub ttl: Duration,
    pub max_session: Option<Duration>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints with the state directory's signing key, for its gateway.
pub fn mint(state: &State, req: &TicketRequest) -> Result<Minted> {
    if req.channels.is_empty() {
        bail!("a ticket needs at least one --channel");
    }
    for name in std::iter::once(&req.guest).chain(&req.channels) {
        if !vmgate_wire::valid_name(name) {
            bail!("invalid name {name:?}: use letters, digits and . _ : -");
        }
    }
    let key = SigningKey::load(state.signing_key()).with_context(|| {
        format!(
            "no ticket signing key in {} (start `vmgate demo` there, or mint through the admin API)",
            state.dir.display()
        )
    })?;
    let base = state.gateway_info()?.url;
    let claims = Claims::new(
        req.guest.clone(),
        req.channels.clone(),
        req.mode,
        now(),
        req.ttl.as_secs(),
        req.max_session.map(|d| d.as_secs()),
    );
    let ticket = vmgate_ticket::mint(&key, &claims);
    Ok(Minted {
        url: url::web_url(&base, &ticket)?,
        ws_url: url::ws_url(&base, &req.guest, &req.channels[0], &ticket)?,
        expires_at: humantime::format_rfc3339_seconds(
            UNIX_EPOCH + Duration::from_secs(claims.not_after),
        )
        .to_string(),
        expires_at_unix: claims.not_after,
        ticket,
    })
}

/// Mints through an admin API (`vmgate admin` at `admin_url`) instead of a
/// local signing key.
pub async fn mint_via_admin(
    admin_url: &str,
    creds: &crate::admin_client::AdminCreds,
    req: &TicketRequest,
) -> Result<Minted> {
    let body = serde_json::json!({
        "guest": req.guest,
        "channels": req.channels,
        "mode": req.mode,
        "ttl_secs": req.ttl.as_secs(),
        "max_session_secs": req.max_session.map(|d| d.as_secs()),
    });
    let url = format!("{}/v1/tickets", admin_url.trim_end_matches('/'));
    crate::admin_client::request(http::Method::POST, &url, Some(&body), creds)
        .await?
        .json()
}
