//! The QUIC listener gateways connect to: one connection per gateway, one
//! stream per console session, and one inventory stream per connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use vmgate_relay::bytes_io::{ByteRx, ByteTx};
use vmgate_relay::quic::{QuicRx, QuicTx};
use vmgate_relay::{relay, FrameTx};
use vmgate_wire::{
    ChannelKind, Close, CloseCode, Frame, Mode, OpenRequest, StreamKind, MAX_HEADER_LEN,
};

use crate::backend::{Backend, Opened};

/// Deadline for a gateway's QUIC handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline for a stream's header to arrive after the stream opened.
const HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// Accepts gateway connections until `shutdown` fires.
pub async fn serve<B: Backend>(
    endpoint: quinn::Endpoint,
    backend: Arc<B>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let backend = backend.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let conn = match tokio::time::timeout(HANDSHAKE_DEADLINE, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "gateway handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "gateway handshake timed out");
                    return;
                }
            };
            tracing::info!(%peer, "gateway connected");
            serve_connection(conn.clone(), backend, shutdown).await;
            let path = conn.stats().path;
            tracing::info!(%peer, rtt = ?path.rtt, mtu = path.current_mtu,
                mtu_probes = path.sent_plpmtud_probes, mtu_probes_lost = path.lost_plpmtud_probes,
                "gateway disconnected");
        });
    }
    endpoint.close(0u32.into(), b"agent shutting down");
}

async fn serve_connection<B: Backend>(
    conn: quinn::Connection,
    backend: Arc<B>,
    shutdown: CancellationToken,
) {
    loop {
        let (tx, rx) = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "gateway connection ended");
                    return;
                }
            },
        };
        let backend = backend.clone();
        tokio::spawn(serve_stream(tx, rx, backend));
    }
}

/// Reads the stream's header under a deadline, then serves it.
async fn serve_stream<B: Backend>(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    backend: Arc<B>,
) {
    let mut tx = QuicTx::new(send, "gateway");
    let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN);
    let header = tokio::time::timeout(HEADER_DEADLINE, async {
        loop {
            if let Some((req, used)) = OpenRequest::decode(&buf)? {
                let _ = buf.split_to(used);
                return Ok(Some(req));
            }
            if recv.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return Ok(None);
            }
        }
    })
    .await;
    let req = match header {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let e: vmgate_wire::HeaderError = e;
            tracing::warn!(error = %e, "refused a stream with a bad header");
            let _ = tx
                .send(Frame::Close(Close::new(
                    CloseCode::ProtocolError,
                    e.to_string(),
                )))
                .await;
            return;
        }
        Err(_) => {
            tracing::warn!("stream header did not arrive in time");
            return;
        }
    };
    match req.kind {
        StreamKind::Inventory => serve_inventory(tx, backend).await,
        StreamKind::Console => {
            serve_console(req, tx, QuicRx::new(recv, buf, "gateway"), backend).await
        }
    }
}

/// Pushes the inventory now and on every change, until the stream ends.
async fn serve_inventory<B: Backend>(mut tx: QuicTx, backend: Arc<B>) {
    let mut inv = backend.inventory();
    loop {
        let snapshot = inv.borrow_and_update().to_json();
        if tx.send(Frame::Inventory(snapshot)).await.is_err() {
            return;
        }
        if inv.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_console<B: Backend>(
    req: OpenRequest,
    mut tx: QuicTx,
    mut rx: QuicRx,
    backend: Arc<B>,
) {
    let opened = match backend.open(&req).await {
        Ok(o) => o,
        Err(close) => {
            tracing::info!(session = req.session, guest = %req.guest, channel = %req.channel, reason = %close, "refused a session");
            let _ = tx.send(Frame::Close(close)).await;
            tx.finish().await;
            return;
        }
    };
    let guest_gone = backend.session_end(&req);
    if tx.send(Frame::Opened).await.is_err() {
        return;
    }
    tracing::info!(session = req.session, guest = %req.guest, channel = %req.channel, mode = ?req.mode, "session opened");
    let outcome = match opened {
        Opened::Console(crx, ctx) => relay(&mut rx, tx, crx, ctx, guest_gone).await,
        Opened::Stream {
            stream,
            kind,
            what,
            stop,
        } => {
            let (r, w) = tokio::io::split(stream);
            let (token, _guard) = match stop {
                Some((t, g)) => (t, Some(g)),
                None => (CancellationToken::new(), None),
            };
            let taken = async move {
                tokio::select! {
                    _ = token.cancelled() => Close::new(
                        CloseCode::TakenOver,
                        "another session took this channel over (--force)",
                    ),
                    close = guest_gone => close,
                }
            };
            // Whatever the backend: a read-only session's input never
            // reaches a channel. VNC is the exception: its viewer must
            // still speak RFB, and the gateway drops its input messages.
            let rx = ReadOnly {
                inner: &mut rx,
                drop_input: req.mode == Mode::ReadOnly && kind == ChannelKind::Channel,
                dropped: 0,
            };
            relay(
                rx,
                tx,
                ByteRx::new(r, what.clone()),
                ByteTx::new(w, what),
                taken,
            )
            .await
        }
    };
    tracing::info!(session = req.session, guest = %req.guest, channel = %req.channel,
        reason = %outcome.close, to_guest = outcome.a_to_b, from_guest = outcome.b_to_a, "session ended");
    // The gateway may still be sending (a client that floods while the
    // guest's output waits in front of our Close). Dropping the stream now
    // would stop it (STOP_SENDING), which the gateway takes for a lost
    // agent before it reaches the Close; so read and drop until the gateway
    // ends its side, for a while.
    let drain = async { while let Ok(Some(_)) = vmgate_relay::FrameRx::recv(&mut rx).await {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long an ended session reads what the gateway still sends.
const LINGER: Duration = Duration::from_secs(5);

/// The gateway's side of a byte-stream session, with the client's input
/// (Data and Eof) dropped when the session is read-only.
struct ReadOnly<'a> {
    inner: &'a mut QuicRx,
    drop_input: bool,
    /// Input bytes dropped, logged when the session ends.
    dropped: u64,
}

impl vmgate_relay::FrameRx for ReadOnly<'_> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            match self.inner.recv().await? {
                Some(Frame::Data(d)) if self.drop_input => self.dropped += d.len() as u64,
                Some(Frame::Eof) if self.drop_input => {}
                other => return Ok(other),
            }
        }
    }
}

impl Drop for ReadOnly<'_> {
    fn drop(&mut self) {
        if self.dropped > 0 {
            tracing::info!(bytes = self.dropped, "read-only session: input dropped");
        }
    }
}
