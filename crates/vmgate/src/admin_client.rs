//! Calling the admin APIs (the gateway's admin listener, `vmgate admin`)
//! over TLS with an administrator's credentials: a client certificate from
//! the admin CA, or a bearer token read from a file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use vmgate_client::{Connector, Ws};
use vmgate_tls::Identity;

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

impl AdminCreds {
    /// A connector presenting these credentials: the client certificate in
    /// the TLS handshake, the token in each WebSocket handshake.
    fn connector(&self) -> Result<Connector> {
        let c = match &self.cert {
            Some(id) => Connector::with_identity(&self.ca, id)?,
            None => Connector::new(&self.ca)?,
        };
        Ok(match &self.token {
            Some(t) => c.bearer(t).context("the admin token is not header-safe")?,
            None => c,
        })
    }
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
    let (tls, _) = creds
        .connector()?
        .tls(&uri)
        .await
        .context("the admin API")?;
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

/// Opens an administrator's console WebSocket (`wss://…/v1/console/…`,
/// [`vmgate_client::url::admin_console_url`]).
pub async fn console(ws_url: &str, creds: &AdminCreds) -> Result<Ws> {
    creds
        .connector()?
        .connect(ws_url)
        .await
        .context("the gateway's admin listener")
}
