//! Opening a console WebSocket: TCP, TLS, then the WebSocket handshake,
//! each under its own deadline, so a gateway that accepts and then says
//! nothing costs a client seconds, not forever.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use vmgate_tls::rustls::pki_types::ServerName;
use vmgate_tls::Identity;

use crate::ClientError;

/// A console WebSocket to a gateway.
pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// How long each step of a connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Resolving the host and the TCP handshake.
    pub connect: Duration,
    /// The TLS handshake.
    pub tls: Duration,
    /// The HTTP upgrade (or an admin request's answer head).
    pub websocket: Duration,
}

impl Default for Deadlines {
    /// 10 s each: far beyond a healthy gateway, short enough that a stuck
    /// one is reported while the user still waits.
    fn default() -> Self {
        let ten = Duration::from_secs(10);
        Deadlines {
            connect: ten,
            tls: ten,
            websocket: ten,
        }
    }
}

/// Opens TLS connections and console WebSockets to a gateway (or an admin
/// listener), trusting one CA bundle.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    deadlines: Deadlines,
    /// Sent with every WebSocket handshake (a bearer token, a subprotocol).
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    ws_config: Option<WebSocketConfig>,
    /// The local address to connect from (tests of per-address limits).
    bind: Option<IpAddr>,
}

/// ALPN of every client connection: WebSocket upgrades and the admin API
/// are HTTP/1.1.
const ALPN: &[&[u8]] = &[b"http/1.1"];

impl Connector {
    /// Trusts the CA certificates in the PEM file `ca`.
    pub fn new(ca: &Path) -> Result<Connector, ClientError> {
        let roots = vmgate_tls::load_roots(ca)?;
        Ok(Connector::from_config(vmgate_tls::client_config(
            roots, ALPN,
        )?))
    }

    /// Trusts `ca` and presents the client certificate `id` (an
    /// administrator's, to an admin listener).
    pub fn with_identity(ca: &Path, id: &Identity) -> Result<Connector, ClientError> {
        Ok(Connector::from_config(vmgate_tls::mtls_client_config(
            id, ca, ALPN,
        )?))
    }

    /// A connector with a TLS configuration made elsewhere.
    pub fn from_config(cfg: vmgate_tls::rustls::ClientConfig) -> Connector {
        Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            deadlines: Deadlines::default(),
            headers: Vec::new(),
            ws_config: None,
            bind: None,
        }
    }

    pub fn deadlines(mut self, d: Deadlines) -> Connector {
        self.deadlines = d;
        self
    }

    /// Adds a header to every WebSocket handshake.
    pub fn header(mut self, name: &str, value: &str) -> Result<Connector, ClientError> {
        let bad = || ClientError::Header(name.to_string());
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(value).map_err(|_| bad())?;
        self.headers.push((name, value));
        Ok(self)
    }

    /// `Authorization: Bearer TOKEN` on every WebSocket handshake.
    pub fn bearer(self, token: &str) -> Result<Connector, ClientError> {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Asks for the `binary` subprotocol: only binary messages, no control
    /// messages (what noVNC asks for; the benchmark client too).
    pub fn binary_only(self) -> Connector {
        self.header("sec-websocket-protocol", "binary")
            .expect("a valid literal header")
    }

    /// tungstenite's buffer sizes (small ones for thousands of idle
    /// sessions).
    pub fn websocket_config(mut self, cfg: WebSocketConfig) -> Connector {
        self.ws_config = Some(cfg);
        self
    }

    /// Connects from `ip` instead of the address the system picks.
    pub fn bind(mut self, ip: IpAddr) -> Connector {
        self.bind = Some(ip);
        self
    }

    /// Opens the console WebSocket at `url` (`wss://…`).
    pub async fn connect(&self, url: &str) -> Result<Ws, ClientError> {
        let mut req = url
            .into_client_request()
            .map_err(|e| ClientError::Url(format!("{url}: {e}")))?;
        if req.uri().scheme_str() != Some("wss") {
            return Err(ClientError::Scheme(scheme_of(url)));
        }
        for (k, v) in &self.headers {
            req.headers_mut().append(k.clone(), v.clone());
        }
        let uri = req.uri().clone();
        let (tls, addr) = self.tls(&uri).await?;
        let handshake = tokio_tungstenite::client_async_with_config(req, tls, self.ws_config);
        match tokio::time::timeout(self.deadlines.websocket, handshake).await {
            Err(_) => Err(ClientError::Timeout {
                step: "the WebSocket handshake",
                addr,
                limit: self.deadlines.websocket,
            }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                Err(ClientError::Refused {
                    addr,
                    status: resp.status(),
                })
            }
            Ok(Err(e)) => Err(ClientError::Handshake {
                addr,
                source: Box::new(e),
            }),
            Ok(Ok((ws, _))) => Ok(ws),
        }
    }

    /// A TLS connection to `uri`'s host and port (443 by default), and the
    /// `host:port` it reached, for messages.
    pub async fn tls(
        &self,
        uri: &http::Uri,
    ) -> Result<(TlsStream<TcpStream>, String), ClientError> {
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Url(format!("{uri}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|_| ClientError::Url(format!("{uri}: invalid host name")))?;
        let d = self.deadlines;
        let tcp = tokio::time::timeout(d.connect, self.tcp(&host, port))
            .await
            .map_err(|_| ClientError::Timeout {
                step: "connecting",
                addr: addr.clone(),
                limit: d.connect,
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(d.tls, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout {
                step: "the TLS handshake",
                addr: addr.clone(),
                limit: d.tls,
            })?
            .map_err(|source| ClientError::TlsHandshake {
                addr: addr.clone(),
                source,
            })?;
        Ok((tls, addr))
    }

    async fn tcp(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        let Some(ip) = self.bind else {
            return TcpStream::connect((host, port)).await;
        };
        let mut last = None;
        for peer in tokio::net::lookup_host((host, port)).await? {
            if peer.is_ipv4() != ip.is_ipv4() {
                continue;
            }
            let sock = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            match sock.connect(peer).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address of {ip}'s family"),
            )
        }))
    }
}

fn scheme_of(url: &str) -> String {
    url.split_once("://")
        .map_or("no scheme", |(s, _)| s)
        .chars()
        .take(16)
        .collect()
}
