//! Calling the admin APIs (the gateway's admin listener, `vmgate admin`)
//! over TLS with an administrator's credentials: a client certificate from
//! the admin CA, or a bearer token read from a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vmgate_tls::rustls::pki_types::ServerName;
use vmgate_tls::Identity;

use crate::client::Ws;

/// Largest answer read from an admin API.
const MAX_ANSWER: usize = 4 << 20;

/// An administrator's credentials.
#[derive(Debug, Clone, Default)]
pub struct AdminCreds {
    /// CA that the admin listener's certificate chains to.
    pub ca: PathBuf,
    /// A client certificate from the admin CA.
    pub cert: Option<Identity>,
    /// A bearer token.
    pub token: Option<String>,
}

impl AdminCreds {
    /// Credentials with the token read from `path`.
    pub fn with_token_file(mut self, path: &Path) -> Result<AdminCreds> {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin token from {}", path.display()))?;
        self.token = Some(t.trim().to_string());
        Ok(self)
    }
}

/// An answer: status code and body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON, if the status is a success; the API's error
    /// message otherwise.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        if !(200..300).contains(&self.status) {
            let msg = serde_json::from_str::<serde_json::Value>(&self.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| self.body.clone());
            bail!("admin API answered {}: {msg}", self.status);
        }
        serde_json::from_str(&self.body).context("admin API answered malformed JSON")
    }
}

async fn tls_connect(uri: &http::Uri, creds: &AdminCreds) -> Result<TlsStream<TcpStream>> {
    let host = uri
        .host()
        .context("URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let cfg = match &creds.cert {
        Some(id) => vmgate_tls::mtls_client_config(id, &creds.ca, alpn)?,
        None => vmgate_tls::client_config(vmgate_tls::load_roots(&creds.ca)?, alpn)?,
    };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("cannot reach the admin API at {host}:{port}"))?;
    let name = ServerName::try_from(host.clone()).context("invalid host name")?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with the admin API at {host}:{port} failed"))
}

/// One request to an admin API at `url` (`https://host:port/path`).
pub async fn request(
    method: http::Method,
    url: &str,
    body: Option<&serde_json::Value>,
    creds: &AdminCreds,
) -> Result<Answer> {
    let uri: http::Uri = url.parse().context("invalid admin URL")?;
    if uri.scheme_str() != Some("https") {
        bail!("admin URLs are https://");
    }
    let tls = tls_connect(&uri, creds).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("HTTP handshake with the admin API")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        );
    if let Some(t) = &creds.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let payload = match body {
        Some(b) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(b)?)
        }
        None => Bytes::new(),
    };
    let resp = send
        .send_request(req.body(Full::new(payload))?)
        .await
        .context("admin API request failed (refused credentials end the TLS session)")?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the admin API's answer: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Opens an administrator's console WebSocket (`wss://…/v1/console/…`).
pub async fn console(ws_url: &str, creds: &AdminCreds) -> Result<Ws> {
    let mut req = ws_url
        .into_client_request()
        .context("invalid WebSocket URL")?;
    if let Some(t) = &creds.token {
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}")
                .parse()
                .context("token is not header-safe")?,
        );
    }
    let tls = tls_connect(req.uri(), creds).await?;
    let (ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .context("WebSocket handshake with the admin listener failed")?;
    Ok(ws)
}
