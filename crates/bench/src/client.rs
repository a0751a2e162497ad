//! The one client every system is measured with: `vmgate-client`'s
//! connector (tokio-tungstenite over tokio-rustls, as `vmgate console`
//! connects), asking for the `binary` subprotocol so vmgate and websockify
//! both send raw bytes only.

use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use vmgate_client::{Connector, Deadlines};

pub use vmgate_client::Ws;

/// How long each step of one connection attempt (TCP, TLS, WebSocket) may
/// take before it counts as failed.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// Connects TLS WebSockets to 127.0.0.1, trusting one CA.
#[derive(Clone)]
pub struct Client {
    /// Default buffers, for the throughput and latency runs.
    normal: Connector,
    /// Small buffers, for the thousands of idle sessions.
    small: Connector,
}

impl Client {
    pub fn new(ca: &std::path::Path) -> Result<Client> {
        let d = Deadlines {
            connect: CONNECT_DEADLINE,
            tls: CONNECT_DEADLINE,
            websocket: CONNECT_DEADLINE,
        };
        let normal = Connector::new(ca)?.deadlines(d).binary_only();
        let small = normal.clone().websocket_config(
            WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0),
        );
        Ok(Client { normal, small })
    }

    /// Opens `wss://127.0.0.1:{port}{path}`. `small` keeps the client's own
    /// read buffer small, for the thousands of idle sessions.
    pub async fn connect(&self, port: u16, path: &str, small: bool) -> Result<Ws> {
        let c = if small { &self.small } else { &self.normal };
        Ok(c.connect(&format!("wss://127.0.0.1:{port}{path}")).await?)
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
