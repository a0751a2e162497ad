//! Minting tickets from a local signing key, and reading ticket URLs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Serialize;
use vmgate_ticket::{Claims, Mode, SigningKey};

use crate::state::State;

/// A minted ticket and where to use it.
#[derive(Debug, Clone, Serialize)]
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
        url: format!("{base}/console#ticket={ticket}"),
        ws_url: ws_url(&base, &req.guest, &req.channels[0], &ticket),
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
    let t: vmgate_gateway::minter::MintedTicket =
        crate::admin_client::request(http::Method::POST, &url, Some(&body), creds)
            .await?
            .json()?;
    Ok(Minted {
        url: t.url,
        ws_url: t.ws_url,
        ticket: t.ticket,
        expires_at: t.expires_at,
        expires_at_unix: t.expires_at_unix,
    })
}

/// The console WebSocket URL on gateway `base` (`https://host:port`).
pub fn ws_url(base: &str, guest: &str, channel: &str, ticket: &str) -> String {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}/ws/{guest}/{channel}?ticket={ticket}")
}

/// The claims of a ticket, unverified: only to know what a URL is for.
/// The gateway is what verifies.
pub fn peek(ticket: &str) -> Result<Claims> {
    let part = ticket.split('.').nth(1).context("malformed ticket")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .context("malformed ticket")?;
    serde_json::from_slice(&json).context("malformed ticket")
}

/// Turns a ticket URL (the web console's `…/console#ticket=…`, or a
/// `wss://…/ws/GUEST/CHANNEL?ticket=…`) into the WebSocket URL for
/// `channel` (or the ticket's first channel).
pub fn ws_url_from(url: &str, channel: Option<&str>) -> Result<String> {
    if url.starts_with("wss://") || url.starts_with("ws://") {
        return Ok(url.to_string());
    }
    let (base, frag) = url
        .split_once("/console#")
        .context("not a ticket URL: expected …/console#ticket=… or wss://…/ws/…")?;
    let ticket = frag
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
        .context("the URL has no ticket=")?;
    let claims = peek(ticket)?;
    let channel = match channel {
        Some(c) => c.to_string(),
        None => claims
            .channels
            .first()
            .cloned()
            .context("ticket has no channel")?,
    };
    Ok(ws_url(base, &claims.guest, &channel, ticket))
}
