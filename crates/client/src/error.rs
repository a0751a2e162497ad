//! Why a client could not reach a console.

use std::time::Duration;

/// Why connecting failed, or a URL or ticket could not be read. Each
/// message says where it failed: the URL, the TCP connection, TLS, or the
/// WebSocket handshake.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not a URL, or one without a host.
    #[error("invalid URL: {0}")]
    Url(String),
    /// A scheme this client does not speak (the gateway always speaks TLS).
    #[error("{0}: only wss:// (and https:// for admin calls) are supported: the gateway always speaks TLS")]
    Scheme(String),
    /// A guest or channel name outside `[A-Za-z0-9._:-]{1,128}`.
    #[error("invalid name {0:?}: use letters, digits and . _ : -")]
    Name(String),
    /// A ticket URL that does not hold a ticket.
    #[error("not a ticket URL: {0}")]
    NotATicketUrl(&'static str),
    /// The ticket itself could not be read.
    #[error(transparent)]
    Ticket(vmgate_ticket::TicketError),
    /// The CA file, or the client certificate, could not be loaded.
    #[error("TLS setup: {0}")]
    Tls(#[from] vmgate_tls::TlsError),
    /// A request header that is not a valid HTTP header.
    #[error("invalid header {0}")]
    Header(String),
    /// The TCP connection failed.
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong name, refused client
    /// certificate).
    #[error("TLS handshake with {addr} failed: {source}")]
    TlsHandshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The server answered the WebSocket upgrade with an HTTP error.
    #[error("WebSocket handshake with {addr} refused: HTTP {status}")]
    Refused {
        addr: String,
        status: http::StatusCode,
    },
    /// The WebSocket handshake failed otherwise.
    #[error("WebSocket handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// A step took longer than its deadline.
    #[error("{step} with {addr} took longer than {limit:?}")]
    Timeout {
        step: &'static str,
        addr: String,
        limit: Duration,
    },
}
