//! The byte source every system relays: a process of its own, so its work
//! and its file descriptors are not the client's.
//!
//! Three behaviours, each on a unix socket (what vmgate's agent and
//! websockify's `--unix-target` reach) and on loopback TCP (the raw
//! ceiling):
//! * `bulk`: writes a fixed pattern as fast as the reader takes it;
//! * `echo`: writes back what it reads;
//! * `hello`: writes `ready\n` (so a client knows the whole path is up),
//!   then holds the connection, idle, until the peer closes it.
//!
//! It also serves the same three over TLS WebSockets itself (`wss`), with
//! no relay between: what the harness's client can take at most.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_tungstenite::tungstenite::Message;

/// Bytes per write of the bulk source.
const BULK_WRITE: usize = 256 * 1024;
/// What `hello` sends first.
pub const HELLO: &[u8] = b"ready\n";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Mode {
    Bulk,
    Echo,
    Hello,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Bulk, Mode::Echo, Mode::Hello];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Bulk => "bulk",
            Mode::Echo => "echo",
            Mode::Hello => "hello",
        }
    }

    /// The unix socket of this behaviour in the source's directory.
    pub fn socket(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.sock", self.name()))
    }
}

/// Where the source listens (printed as one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ports {
    pub bulk: u16,
    pub echo: u16,
    pub hello: u16,
    /// TLS WebSockets served by the source itself, paths `/bulk` etc.
    pub wss: u16,
}

impl Ports {
    pub fn tcp(&self, mode: Mode) -> u16 {
        match mode {
            Mode::Bulk => self.bulk,
            Mode::Echo => self.echo,
            Mode::Hello => self.hello,
        }
    }
}

/// Runs the source until stdin closes (the harness ended or dropped it).
pub async fn run(dir: &Path, cert: &Path, key: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let pattern = Bytes::from((0..BULK_WRITE).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let mut tcp_ports = Vec::new();
    for mode in Mode::ALL {
        let path = mode.socket(dir);
        let _ = std::fs::remove_file(&path);
        let unix =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        tcp_ports.push(tcp.local_addr()?.port());
        let p = pattern.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = unix.accept().await {
                    tokio::spawn(serve(mode, s, p.clone()));
                }
            }
        });
        let p = pattern.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = tcp.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve(mode, s, p.clone()));
                }
            }
        });
    }
    let tls = vmgate_tls::server_config(
        &vmgate_tls::Identity {
            cert: cert.into(),
            key: key.into(),
        },
        &[b"http/1.1"],
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let wss = TcpListener::bind("127.0.0.1:0").await?;
    let ports = Ports {
        bulk: tcp_ports[0],
        echo: tcp_ports[1],
        hello: tcp_ports[2],
        wss: wss.local_addr()?.port(),
    };
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = wss.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_wss(acceptor.clone(), s, pattern.clone()));
            }
        }
    });
    println!("{}", serde_json::to_string(&ports)?);
    // The harness holds our stdin: its end is ours.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    Ok(())
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mode: Mode, mut s: S, pattern: Bytes) {
    match mode {
        Mode::Bulk => while s.write_all(&pattern).await.is_ok() {},
        Mode::Echo => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        Mode::Hello => {
            if s.write_all(HELLO).await.is_err() {
                return;
            }
            // Held until the peer closes; a small buffer, as 10,000 of
            // these wait at once.
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    }
}

// The handshake callback's error type is tungstenite's, large by its design.
#[allow(clippy::result_large_err)]
async fn serve_wss(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    pattern: Bytes,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let mut mode = None;
    let cb = |req: &http::Request<()>, mut resp: http::Response<()>| {
        mode = match req.uri().path() {
            "/bulk" => Some(Mode::Bulk),
            "/echo" => Some(Mode::Echo),
            "/hello" => Some(Mode::Hello),
            _ => None,
        };
        if req.headers().contains_key("sec-websocket-protocol") {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                http::HeaderValue::from_static("binary"),
            );
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, cb).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    match mode {
        Some(Mode::Bulk) => {
            // Messages of 64 KiB, the size vmgate's relay reads in.
            let chunk = pattern.slice(..64 * 1024);
            while tx.send(Message::Binary(chunk.clone())).await.is_ok() {}
        }
        Some(Mode::Echo) => {
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Binary(b) = m {
                    if tx.send(Message::Binary(b)).await.is_err() {
                        break;
                    }
                }
            }
        }
        Some(Mode::Hello) => {
            let sent = tx.send(Message::Binary(Bytes::from_static(HELLO))).await;
            while sent.is_ok() && matches!(rx.next().await, Some(Ok(_))) {}
        }
        None => {}
    }
}
