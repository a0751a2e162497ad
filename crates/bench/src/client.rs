//! The one client every system is measured with: tokio-tungstenite over
//! tokio-rustls (as `vmgate console` connects), asking for the `binary`
//! subprotocol so vmgate and websockify both send raw bytes only.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use vmgate_tls::rustls::pki_types::ServerName;

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// Connects TLS WebSockets to 127.0.0.1, trusting one CA.
#[derive(Clone)]
pub struct Client {
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    pub fn new(ca: &std::path::Path) -> Result<Client> {
        let roots = vmgate_tls::load_roots(ca)?;
        let tls = vmgate_tls::client_config(roots, &[b"http/1.1"])?;
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }

    /// Opens `wss://127.0.0.1:{port}{path}`. `small` keeps the client's own
    /// read buffer small, for the thousands of idle sessions.
    pub async fn connect(&self, port: u16, path: &str, small: bool) -> Result<Ws> {
        tokio::time::timeout(CONNECT_DEADLINE, self.connect_inner(port, path, small))
            .await
            .map_err(|_| anyhow!("connect to port {port} timed out"))?
    }

    async fn connect_inner(&self, port: u16, path: &str, small: bool) -> Result<Ws> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("127.0.0.1").expect("literal address");
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        let mut req = format!("wss://127.0.0.1:{port}{path}").into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static("binary"),
        );
        let mut cfg = WebSocketConfig::default();
        if small {
            cfg = cfg.read_buffer_size(4096).write_buffer_size(0);
        }
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, tls, Some(cfg))
            .await
            .context("WebSocket handshake")?;
        Ok(ws)
    }
}

/// The next binary payload, skipping control messages; an error when the
/// session closed (with the server's reason).
pub async fn next_binary(ws: &mut Ws) -> Result<Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Close(c))) => bail!(
                "closed by the server: {}",
                c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                    .unwrap_or_default()
            ),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Sends a close and drops the connection without waiting long.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
}

/// Sends `msg` as one binary message and reads until as many bytes came
/// back (the relay may split or merge messages).
pub async fn echo_once(ws: &mut Ws, msg: &Bytes) -> Result<()> {
    ws.send(Message::Binary(msg.clone())).await?;
    let mut got = 0;
    while got < msg.len() {
        got += next_binary(ws).await?.len();
    }
    Ok(())
}
