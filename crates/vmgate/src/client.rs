//! Connecting to a gateway's console WebSocket over TLS, and reading how a
//! session ended.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use vmgate_tls::rustls::pki_types::ServerName;

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Opens the WebSocket at `ws_url` (`wss://…`), trusting the CAs in `ca`.
pub async fn connect(ws_url: &str, ca: &Path) -> Result<Ws> {
    let uri: http::Uri = ws_url.parse().context("invalid WebSocket URL")?;
    if uri.scheme_str() != Some("wss") {
        bail!("only wss:// URLs are supported: the gateway always speaks TLS");
    }
    let host = uri.host().context("URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let roots = vmgate_tls::load_roots(ca)
        .with_context(|| format!("loading the gateway's CA from {}", ca.display()))?;
    let tls = vmgate_tls::client_config(roots, &[b"http/1.1"])?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("cannot reach the gateway at {host}:{port}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.clone()).context("invalid host name")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with the gateway at {host}:{port} failed"))?;
    let (ws, _) = tokio_tungstenite::client_async(ws_url, tls)
        .await
        .context("WebSocket handshake with the gateway failed")?;
    Ok(ws)
}
