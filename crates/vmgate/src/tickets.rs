//! Minting tickets: from a local signing key, or through `vmgate admin`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use vmgate_minter::{Minter, SigningKey, LOCAL_CAPS};
use vmgate_ticket::Mode;

use crate::state::State;

/// A minted ticket and where to use it (what `vmgate admin` answers, and
/// `vmgate ticket --json` prints).
pub type Minted = vmgate_minter::MintedTicket;

/// What to mint.
#[derive(Debug, Clone)]
pub struct TicketRequest {
    pub guest: String,
    pub channels: Vec<String>,
    pub mode: Mode,
    pub ttl: Duration,
    pub max_session: Option<Duration>,
}

impl TicketRequest {
    fn to_minter(&self) -> vmgate_minter::TicketRequest {
        vmgate_minter::TicketRequest {
            guest: self.guest.clone(),
            channels: self.channels.clone(),
            mode: self.mode,
            ttl_secs: self.ttl.as_secs(),
            max_session_secs: self.max_session.map(|d| d.as_secs()),
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints with the state directory's signing key, for its gateway, within
/// [`LOCAL_CAPS`] (the same checks `vmgate admin` makes).
pub fn mint(state: &State, req: &TicketRequest) -> Result<Minted> {
    let key = SigningKey::load(state.signing_key()).with_context(|| {
        format!(
            "no ticket signing key in {} (start `vmgate demo` there, or mint through the admin API)",
            state.dir.display()
        )
    })?;
    let base = state.gateway_info()?.url;
    let minter = Minter::new(key, &base, LOCAL_CAPS)?;
    Ok(minter.mint(&req.to_minter(), now())?.0)
}

/// Mints through an admin API (`vmgate admin` at `admin_url`) instead of a
/// local signing key.
pub async fn mint_via_admin(
    admin_url: &str,
    creds: &crate::admin_client::AdminCreds,
    req: &TicketRequest,
) -> Result<Minted> {
    let body = serde_json::to_value(req.to_minter())?;
    let url = format!("{}/v1/tickets", admin_url.trim_end_matches('/'));
    crate::admin_client::request(http::Method::POST, &url, Some(&body), creds)
        .await?
        .json()
}
