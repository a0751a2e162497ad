//! TCP + TLS for the gateway–agent link: a session's own connection, the
//! alternative to a stream on the pair's QUIC connection
//! (`[agents] session_transport = "tcp"` on the gateway).
//!
//! The TLS configurations are the link's own ([`crate::agent_server_config`],
//! [`crate::gateway_client_config`]): the same certificates, the same
//! client-certificate verifier (chain to the gateway-client CA, clientAuth
//! present, `allowed_gateways`), TLS 1.3 only, with a distinct ALPN
//! ([`vmgate_wire::TCP_ALPN`]) that must be negotiated. TLS 1.3 resumption
//! keeps session open fast: rustls's in-memory stores on both ends (256
//! sessions at the agent, tickets for 256 agents at the gateway), no early
//! data. A resumed session was authenticated by the full handshake it
//! resumes, with the checks above.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// The gateway's end of a session's TCP + TLS connection.
pub type TcpLinkStream = client::TlsStream<ReadAhead<TcpStream>>;
/// The agent's end of a session's TCP + TLS connection.
pub type TcpLinkAccepted = server::TlsStream<ReadAhead<TcpStream>>;

/// Bytes read from the socket in one system call under TLS. rustls reads
/// 4 KiB at a time; over TCP each such read is a system call, and a window
/// update the sender's kernel then processes. Reading up to this much at
/// once and handing it to rustls from memory makes that 16 times fewer
/// while data flows (BENCHMARKS.md, issue 17).
pub const READ_AHEAD: usize = 64 * 1024;

/// A byte stream read ahead in [`READ_AHEAD`] chunks, for rustls's small
/// reads. The buffer exists only while it holds unread bytes: an idle
/// connection holds none. Writes pass straight through.
pub struct ReadAhead<T> {
    io: T,
    /// Read from `io`, not yet taken; unallocated when empty.
    buf: BytesMut,
}

impl<T> ReadAhead<T> {
    pub fn new(io: T) -> ReadAhead<T> {
        ReadAhead {
            io,
            buf: BytesMut::new(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            this.buf.reserve(READ_AHEAD);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf);
            match read {
                Poll::Ready(Ok(n)) if n > 0 => {}
                other => {
                    // Nothing read (waiting, the end, an error): let the
                    // buffer go.
                    this.buf = BytesMut::new();
                    return other.map_ok(|_| ());
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        if this.buf.is_empty() {
            this.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Why a TCP link connection did not come up.
#[derive(Debug, thiserror::Error)]
pub enum TcpLinkError {
    /// TCP connect, or the TLS handshake (a refused certificate included).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The name to check in the agent's certificate is not a DNS name or
    /// an IP address.
    #[error("server name {0:?} is not a DNS name or an IP address")]
    Name(String),
    /// The peer did not agree on the link's ALPN (an old agent, or not an
    /// agent).
    #[error("the peer did not negotiate ALPN {want:?} (it answered {got:?})")]
    Alpn { want: String, got: Option<String> },
}

/// The gateway's side: connects one TLS connection per session.
#[derive(Clone)]
pub struct TcpLinkClient {
    connector: TlsConnector,
    alpn: Vec<u8>,
}

impl TcpLinkClient {
    /// `tls` from [`crate::gateway_client_config`] with the TCP ALPN.
    pub fn new(tls: ClientConfig) -> TcpLinkClient {
        let alpn = tls.alpn_protocols.first().cloned().unwrap_or_default();
        TcpLinkClient {
            connector: TlsConnector::from(Arc::new(tls)),
            alpn,
        }
    }

    /// A connection to the agent at `addr`, named `server_name` in its
    /// certificate, with Nagle off (keystrokes and echoes go out at once).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<TcpLinkStream, TcpLinkError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TcpLinkError::Name(server_name.into()))?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self.connector.connect(name, ReadAhead::new(tcp)).await?;
        check_alpn(&self.alpn, tls.get_ref().1.alpn_protocol())?;
        Ok(tls)
    }
}

/// The agent's side: the TLS handshake of an accepted connection.
#[derive(Clone)]
pub struct TcpLinkServer {
    acceptor: TlsAcceptor,
    alpn: Vec<u8>,
}

impl TcpLinkServer {
    /// `tls` from [`crate::agent_server_config`] with the TCP ALPN.
    pub fn new(tls: ServerConfig) -> TcpLinkServer {
        let alpn = tls.alpn_protocols.first().cloned().unwrap_or_default();
        TcpLinkServer {
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            alpn,
        }
    }

    /// Runs the handshake on `tcp` (the caller bounds it with a deadline):
    /// the gateway's certificate checked, the ALPN agreed, Nagle off.
    pub async fn accept(&self, tcp: TcpStream) -> Result<TcpLinkAccepted, TcpLinkError> {
        tcp.set_nodelay(true)?;
        let tls = self.acceptor.accept(ReadAhead::new(tcp)).await?;
        check_alpn(&self.alpn, tls.get_ref().1.alpn_protocol())?;
        Ok(tls)
    }
}

/// rustls refuses an ALPN it does not know but lets a peer that offers
/// none through: the link requires its own.
fn check_alpn(want: &[u8], got: Option<&[u8]>) -> Result<(), TcpLinkError> {
    if got == Some(want) {
        return Ok(());
    }
    Err(TcpLinkError::Alpn {
        want: String::from_utf8_lossy(want).into(),
        got: got.map(|g| String::from_utf8_lossy(g).into()),
    })
}

/// Raises this process's open-files soft limit to its hard limit and
/// answers the limit in force (`None` if it cannot be read): a TCP link
/// holds a descriptor per session on both ends.
pub fn raise_open_files() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
            return Some(soft);
        }
    }
    getrlimit(Resource::RLIMIT_NOFILE).ok().map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const ALPN: &[u8] = b"t-tcp";

    /// An agent-like TCP link server: each connection that passes the
    /// handshake echoes one message; each handshake's outcome (resumed or
    /// not, or the error) is reported.
    async fn serve(
        cfg: ServerConfig,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Result<bool, String>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = TcpLinkServer::new(cfg);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (server, tx) = (server.clone(), tx.clone());
                tokio::spawn(async move {
                    match server.accept(tcp).await {
                        Ok(mut tls) => {
                            let resumed = tls.get_ref().1.handshake_kind()
                                == Some(rustls::HandshakeKind::Resumed);
                            let _ = tx.send(Ok(resumed));
                            let mut buf = [0u8; 4];
                            if tls.read_exact(&mut buf).await.is_ok() {
                                let _ = tls.write_all(&buf).await;
                                let _ = tls.shutdown().await;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// A reader that counts its reads.
    struct Counting<'a>(&'a [u8], usize);

    impl AsyncRead for Counting<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.0.len().min(out.remaining());
            out.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            self.1 += 1;
            Poll::Ready(Ok(()))
        }
    }

    /// rustls's 4 KiB reads are served from one read of [`READ_AHEAD`],
    /// every byte in order, and a drained buffer is let go.
    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_the_buffer_is_let_go() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = ReadAhead::new(Counting(&data, 0));
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            if got.len() % READ_AHEAD == 0 || got.len() == data.len() {
                assert_eq!(r.buf.capacity(), 0, "a drained buffer is kept");
            }
        }
        assert_eq!(got, data);
        // 200,000 bytes in 64 KiB reads, and the read that found the end.
        assert_eq!(r.io.1, data.len().div_ceil(READ_AHEAD) + 1);
    }

    /// The server's word on the next handshake.
    async fn next(
        seen: &mut tokio::sync::mpsc::UnboundedReceiver<Result<bool, String>>,
    ) -> Result<bool, String> {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("no handshake seen")
            .unwrap()
    }

    /// The same link checks as QUIC (the gateway's certificate opens it,
    /// an agent's is refused in the handshake), and a second connection
    /// resumes the first one's TLS session.
    #[tokio::test]
    async fn the_gateways_certificate_connects_and_resumes_and_a_nodes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = crate::pki::write_link(dir.path(), &["localhost"], &["gateway"]).unwrap();
        let (addr, mut seen) =
            serve(crate::agent_server_config(&link.agent, &link.gateway_ca, &[], &[ALPN]).unwrap())
                .await;
        let client = TcpLinkClient::new(
            crate::gateway_client_config(&link.gateway, &link.agent_ca, &[ALPN]).unwrap(),
        );
        for resumed in [false, true] {
            let mut tls = client.connect(addr, "localhost").await.unwrap();
            tls.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            assert_eq!(next(&mut seen).await, Ok(resumed));
        }
        // The agent's own certificate, as a client: refused by the
        // agent's verifier (it is serverAuth only, from the agent CA).
        let node = crate::mtls_client_config(&link.agent, &link.agent_ca, &[ALPN]).unwrap();
        let mut tls = TcpLinkClient::new(node)
            .connect(addr, "localhost")
            .await
            .unwrap();
        // TLS 1.3: the client learns of the refusal on its first read.
        let mut buf = [0u8; 4];
        let _ = tls.write_all(b"ping").await;
        assert!(tls.read_exact(&mut buf).await.is_err());
        let e = next(&mut seen).await.unwrap_err();
        assert!(e.contains("invalid peer certificate"), "{e}");
        // A client offering another ALPN, or none, is refused.
        for alpn in [&b"vmgate/1"[..], b""] {
            let alpns: &[&[u8]] = if alpn.is_empty() { &[] } else { &[alpn] };
            let cfg = crate::gateway_client_config(&link.gateway, &link.agent_ca, alpns).unwrap();
            let e = TcpLinkClient::new(cfg).connect(addr, "localhost").await;
            assert!(e.is_err(), "ALPN {alpn:?} accepted");
            let e = next(&mut seen).await.unwrap_err();
            assert!(e.contains("ALPN") || e.contains("known protocol"), "{e}");
        }
    }
}
