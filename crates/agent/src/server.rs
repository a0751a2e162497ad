//! The listeners gateways connect to: QUIC (one connection per gateway,
//! one stream per console session, and one inventory stream per
//! connection) and, with `tcp_sessions`, on the same port number TCP + TLS
//! (one connection per console session, for gateways with
//! `[agents] session_transport = "tcp"`; [`tcp`]). Both run the same TLS checks and the same per-stream path from
//! the header on ([`serve_stream`]).
//!
//! Shutdown: when `shutdown` fires the agent stops accepting, ends every
//! session with 1001 "the agent is shutting down" (a `Close` frame, which
//! the gateway passes on to the client), waits at most [`DRAIN`] for the
//! sessions to finish, and only then closes its QUIC endpoint, so a client
//! learns why instead of seeing "agent unreachable" (4502).
//!
//! Read-only sessions: whatever the gateway sent, their input never reaches
//! a guest from here either (defence in depth behind the gateway's own
//! filter): a serial console's hub drops it, a channel's input is dropped
//! whole, and a VNC viewer's input messages are dropped by the RFB parser
//! the gateway uses (`vmgate_rfb`), so the viewer still sees the screen; a
//! media session may only ask what is in the drive.

mod tcp;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use vmgate_relay::bytes_io::{ByteRx, ByteTx};
use vmgate_relay::quic::{QuicRx, QuicTx};
use vmgate_relay::{relay, Either, FrameRx, FrameTx};
use vmgate_rfb::{ClientFilter, Policy};
use vmgate_wire::{
    ChannelKind, Close, CloseCode, Frame, Mode, OpenRequest, StreamKind, MAX_HEADER_LEN,
};

use crate::backend::{media, Backend, Opened};
use crate::gateway_stream::{GatewayRx, GatewayTx};

pub use tcp::TcpLink;

/// Deadline for a gateway's QUIC or TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline for a stream's header to arrive after the stream opened.
const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// How long the endpoint's own close may take to reach the gateways.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// What every session is told when the agent stops.
const GOING_AWAY: &str = "the agent is shutting down";

/// Accepts gateway connections until `shutdown` fires.
pub async fn serve<B: Backend>(
    link: vmgate_tls::LinkServer,
    tcp: Option<TcpLink>,
    backend: Arc<B>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    // Console and inventory streams; the drain waits for them: `drain`
    // (the configuration's `drain_secs`) is how long a shutting-down agent
    // waits for its sessions to end (their Close delivered, the gateway's
    // side finished) before it closes the connections anyway.
    let streams = TaskTracker::new();
    let link = Arc::new(link);
    let endpoint = link.endpoint.clone();
    if let Some(tcp) = tcp {
        tokio::spawn(tcp.serve(backend.clone(), shutdown.clone(), streams.clone()));
    }
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let backend = backend.clone();
        let shutdown = shutdown.clone();
        let streams = streams.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let connecting = match link.accept(incoming) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "gateway handshake failed");
                    return;
                }
            };
            let conn = match tokio::time::timeout(HANDSHAKE_DEADLINE, connecting).await {
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
            serve_connection(conn.clone(), backend, shutdown, streams).await;
            let path = conn.stats().path;
            tracing::info!(%peer, rtt = ?path.rtt, mtu = path.current_mtu,
                mtu_probes = path.sent_plpmtud_probes, mtu_probes_lost = path.lost_plpmtud_probes,
                "gateway disconnected");
        });
    }
    // Every session's relay saw `shutdown` too and is telling its gateway.
    streams.close();
    match tokio::time::timeout(drain, streams.wait()).await {
        Ok(()) => tracing::info!("agent drained"),
        Err(_) => tracing::warn!(
            streams = streams.len(),
            "sessions still ending after the drain period; closing the connections"
        ),
    }
    endpoint.close(0u32.into(), b"agent shutting down");
    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
}

async fn serve_connection<B: Backend>(
    conn: quinn::Connection,
    backend: Arc<B>,
    shutdown: CancellationToken,
    streams: TaskTracker,
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
        streams.spawn(serve_stream(
            Either::A(QuicTx::new(tx, "gateway")),
            rx,
            |rx, buf| Either::A(QuicRx::new(rx, buf, "gateway")),
            "quic",
            backend,
            shutdown.clone(),
        ));
    }
}

/// Reads the stream's header under a deadline, then serves it. `recv` is
/// the stream as bytes until the header is in; `into_rx` makes it the
/// session's frames, with what was read past the header.
async fn serve_stream<B: Backend, R: AsyncRead + Unpin + Send>(
    mut tx: GatewayTx,
    mut recv: R,
    into_rx: impl FnOnce(R, BytesMut) -> GatewayRx + Send,
    transport: &'static str,
    backend: Arc<B>,
    shutdown: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN);
    let header = tokio::time::timeout(HEADER_DEADLINE, async {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
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
            tracing::warn!(transport, error = %e, "refused a stream with a bad header");
            let _ = tx
                .send(Frame::Close(Close::new(
                    CloseCode::ProtocolError,
                    e.to_string(),
                )))
                .await;
            return;
        }
        Err(_) => {
            tracing::warn!(transport, "stream header did not arrive in time");
            return;
        }
    };
    match req.kind {
        StreamKind::Inventory => serve_inventory(tx, backend, shutdown).await,
        StreamKind::Console => {
            let rx = into_rx(recv, buf);
            // Every line of one session carries its id, guest and channel,
            // as the gateway's lines for it do, and how it reached us.
            let span = tracing::info_span!("session", id = req.session, guest = %req.guest, channel = %req.channel, transport);
            serve_console(req, tx, rx, backend, shutdown)
                .instrument(span)
                .await
        }
    }
}

/// Pushes the inventory now and on every change, until the stream ends or
/// the agent shuts down.
async fn serve_inventory<B: Backend>(
    mut tx: GatewayTx,
    backend: Arc<B>,
    shutdown: CancellationToken,
) {
    let mut inv = backend.inventory();
    loop {
        let snapshot = inv.borrow_and_update().to_json();
        if tx.send(Frame::Inventory(snapshot)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return tx.finish().await,
            changed = inv.changed() => if changed.is_err() { return },
        }
    }
}

/// Resolves with the Close every session gets when the agent stops.
async fn going_away(shutdown: CancellationToken) -> Close {
    shutdown.cancelled().await;
    Close::new(CloseCode::GoingAway, GOING_AWAY)
}

async fn serve_console<B: Backend>(
    req: OpenRequest,
    mut tx: GatewayTx,
    mut rx: GatewayRx,
    backend: Arc<B>,
    shutdown: CancellationToken,
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
    let read_only = req.mode == Mode::ReadOnly;
    let (outcome, input_dropped) = match opened {
        Opened::Console(crx, ctx) => {
            // The hub drops a read-only session's input itself.
            let stop = async {
                tokio::select! {
                    biased;
                    close = going_away(shutdown.clone()) => close,
                    close = guest_gone => close,
                }
            };
            (relay(&mut rx, tx, crx, ctx, stop).await, None)
        }
        Opened::Audio(arx, atx) => {
            // Listening is not input: the client's bytes are only its
            // format request, which never reaches the guest.
            let stop = async {
                tokio::select! {
                    biased;
                    close = going_away(shutdown.clone()) => close,
                    close = guest_gone => close,
                }
            };
            (relay(&mut rx, tx, arx, atx, stop).await, None)
        }
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
            let (bad_rfb_tx, bad_rfb) = oneshot::channel();
            let input = match (read_only, kind) {
                (false, _) => Input::Pass,
                (true, ChannelKind::Vnc) => Input::Rfb {
                    // Only input: what a viewer may hear is the gateway's
                    // to decide (the ticket's audio scope).
                    filter: ClientFilter::new(Policy {
                        read_only: true,
                        audio: true,
                    }),
                    failed: Some(bad_rfb_tx),
                },
                (true, _) => Input::Drop { bytes: 0 },
            };
            let stop = async move {
                tokio::select! {
                    biased;
                    close = going_away(shutdown.clone()) => close,
                    _ = token.cancelled() => Close::new(
                        CloseCode::TakenOver,
                        "another session took this channel over (--force)",
                    ),
                    close = guest_gone => close,
                    Ok(close) = bad_rfb => close,
                }
            };
            let mut guarded = Guarded {
                inner: &mut rx,
                input,
                session: req.session,
            };
            let outcome = relay(
                &mut guarded,
                tx,
                ByteRx::new(r, what.clone()),
                ByteTx::new(w, what),
                stop,
            )
            .await;
            (outcome, guarded.dropped())
        }
        Opened::Media(drive) => {
            let stop = async {
                tokio::select! {
                    biased;
                    close = going_away(shutdown.clone()) => close,
                    close = guest_gone => close,
                }
            };
            let ended = media::serve(&req, drive, &mut rx, &mut tx, stop).await;
            tracing::info!(session = req.session, guest = %req.guest, channel = %req.channel,
                op = ended.op, reason = %ended.close, bytes_read = ended.bytes_read,
                reads = ended.reads, "session ended");
            let _ = tokio::time::timeout(CLOSE_DEADLINE, tx.send(Frame::Close(ended.close))).await;
            tx.finish().await;
            linger(&mut rx).await;
            return;
        }
    };
    match input_dropped {
        Some(dropped) => {
            tracing::info!(session = req.session, guest = %req.guest, channel = %req.channel,
                reason = %outcome.close, to_guest = outcome.a_to_b, from_guest = outcome.b_to_a,
                input_dropped = dropped, "session ended");
            if dropped > 0 {
                // Bytes of a channel, messages of a VNC viewer.
                tracing::info!(session = req.session, channel = %req.channel, dropped,
                    "read-only session: input dropped");
            }
        }
        None => tracing::info!(session = req.session, guest = %req.guest, channel = %req.channel,
            reason = %outcome.close, to_guest = outcome.a_to_b, from_guest = outcome.b_to_a, "session ended"),
    }
    // The gateway may still be sending (a client that floods while the
    // guest's output waits in front of our Close). Dropping the stream now
    // would stop it (STOP_SENDING), which the gateway takes for a lost
    // agent before it reaches the Close; so read and drop until the gateway
    // ends its side, for a while. That end is also how a shutting-down
    // agent knows its Close arrived.
    linger(&mut rx).await;
}

/// Reads and drops what the gateway still sends after our Close, until it
/// ends its side or [`LINGER`] passes.
async fn linger(rx: &mut GatewayRx) {
    let drain = async { while let Ok(Some(_)) = FrameRx::recv(rx).await {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long a media session's Close may take to go out.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// How long an ended session reads what the gateway still sends.
const LINGER: Duration = Duration::from_secs(5);

/// What a byte-stream session's input goes through before the guest.
enum Input {
    /// Interactive: as it came.
    Pass,
    /// A read-only channel: all input (Data and Eof) is dropped; `bytes`
    /// counts it.
    Drop { bytes: u64 },
    /// A read-only VNC viewer: it must still speak RFB (the handshake,
    /// SetPixelFormat, SetEncodings, update requests) to see the screen,
    /// so only its input messages (keys, pointer, clipboard, QEMU key
    /// events, resize, power) are dropped, by the gateway's own parser.
    /// Bytes that are not RFB end the session through `failed`.
    Rfb {
        filter: ClientFilter,
        failed: Option<oneshot::Sender<Close>>,
    },
}

/// The gateway's side of a byte-stream session, with a read-only
/// session's input dropped.
struct Guarded<'a> {
    inner: &'a mut GatewayRx,
    input: Input,
    session: u64,
}

impl Guarded<'_> {
    /// What was dropped (bytes of a channel, messages of a VNC viewer),
    /// for the session's log line; `None` for an interactive session.
    fn dropped(&self) -> Option<u64> {
        match &self.input {
            Input::Pass => None,
            Input::Drop { bytes } => Some(*bytes),
            Input::Rfb { filter, .. } => Some(filter.dropped.input),
        }
    }
}

impl FrameRx for Guarded<'_> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            let frame = self.inner.recv().await?;
            match (&mut self.input, frame) {
                (Input::Pass, f) => return Ok(f),
                (Input::Drop { bytes }, Some(Frame::Data(d))) => {
                    *bytes = bytes.saturating_add(d.len() as u64)
                }
                (Input::Drop { .. }, Some(Frame::Eof)) => {}
                (Input::Rfb { filter, failed }, Some(Frame::Data(d))) => match filter.filter(d) {
                    // All of it was input.
                    Ok(out) if out.is_empty() => {}
                    Ok(out) => return Ok(Some(Frame::Data(out))),
                    Err(e) => {
                        let close = Close::new(
                            CloseCode::ProtocolError,
                            format!("malformed RFB from the viewer: {e}"),
                        );
                        tracing::warn!(session = self.session, reason = %close, "ending a read-only VNC session");
                        if let Some(tx) = failed.take() {
                            let _ = tx.send(close);
                        }
                        // The relay's stop ends the session with that reason.
                        return std::future::pending().await;
                    }
                },
                (_, f) => return Ok(f),
            }
        }
    }
}
