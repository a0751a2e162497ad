//! The CLI's door to `vmgate-client`: a console WebSocket opened with a CA
//! file, its error in the words of the command line.

use std::path::Path;

use anyhow::{Context, Result};
pub use vmgate_client::Ws;

/// Opens the console WebSocket at `ws_url` (`wss://…`), trusting the CAs in
/// `ca`; TCP, TLS and the WebSocket handshake each have a deadline.
pub async fn connect(ws_url: &str, ca: &Path) -> Result<Ws> {
    let connector = vmgate_client::Connector::new(ca)
        .with_context(|| format!("loading the gateway's CA from {}", ca.display()))?;
    Ok(connector.connect(ws_url).await?)
}
