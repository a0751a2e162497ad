//! The one relay every console uses, and the adapters that put each kind of
//! stream into its terms.
//!
//! A session is two sides, each a receiver and a sender of [`Frame`]s. The
//! relay runs one pump per direction:
//! * **backpressure**: a pump sends a frame before it reads the next, so at
//!   most one read buffer per direction is in flight; a slow reader slows
//!   its writer down, never grows a queue;
//! * **half-close**: `Eof` in one direction ends that direction only; the
//!   other goes on until it too ends. The side that sent `Eof` is still
//!   listened to, for a `Close` or a failure (a client that half-closed may
//!   still hang up, and that must end the session); data after its `Eof` is
//!   dropped;
//! * **close**: a `Close` frame, a failure on either side, or the `stop`
//!   future ends both pumps, and the side that did not cause it is told why.
//!
//! Adapters: [`quic`] (framed, gateway ↔ agent over a QUIC stream),
//! [`stream`] (the same frames over any byte stream: gateway ↔ agent over
//! TCP + TLS), [`bytes_io`] (unix sockets to QEMU, unframed). The WebSocket
//! adapters live with their WebSocket libraries in the gateway and the CLI.
//! [`Either`] is a side that is one adapter or another (the gateway's link
//! to an agent, QUIC or TCP by configuration).
//!
//! [`backoff`]: how long every reconnect loop (agent to QEMU or libvirtd,
//! gateway to agent) waits between attempts. [`ratelog`]: how many refusal
//! lines a listener logs per window.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod bytes_io;
pub mod quic;
pub mod ratelog;
pub mod stream;
pub mod writer;

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use vmgate_wire::{Close, CloseCode, Frame, FrameError, FRAME_HEADER_LEN};

/// Bytes read from a socket in one go, and so the largest Data frame the
/// adapters make: big enough for bulk transfer, small enough that many idle
/// sessions cost little (buffers are only this large while data flows).
pub const READ_CHUNK: usize = 64 * 1024;
/// How long the relay waits to deliver a final Close to a side.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// The receiving half of a side. An error is the [`Close`] to give the
/// *other* side: it says what broke, e.g. "connection to agent lost".
pub trait FrameRx: Send {
    /// The next frame; `Ok(None)` when the side ended without a Close.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Frame>, Close>> + Send;
}

/// A side lent to the relay, to be used again after it (the agent reads
/// what a gateway still sends after the session's Close).
impl<T: FrameRx> FrameRx for &mut T {
    fn recv(&mut self) -> impl Future<Output = Result<Option<Frame>, Close>> + Send {
        (**self).recv()
    }
}

/// The sending half of a side.
pub trait FrameTx: Send {
    /// Sends one frame; an error is the [`Close`] for the other side.
    fn send(&mut self, frame: Frame) -> impl Future<Output = Result<(), Close>> + Send;
    /// Flushes and closes the sending half after the last frame.
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A side lent to the relay (the gateway relays a client again after its
/// guest moved to another node).
impl<T: FrameTx> FrameTx for &mut T {
    fn send(&mut self, frame: Frame) -> impl Future<Output = Result<(), Close>> + Send {
        (**self).send(frame)
    }
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        (**self).finish()
    }
}

/// A side that is one of two adapters, chosen at run time (the gateway's
/// link to an agent: a QUIC stream or a TCP + TLS connection).
pub enum Either<A, B> {
    A(A),
    B(B),
}

impl<A: FrameRx, B: FrameRx> FrameRx for Either<A, B> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        match self {
            Either::A(a) => a.recv().await,
            Either::B(b) => b.recv().await,
        }
    }
}

impl<A: FrameTx, B: FrameTx> FrameTx for Either<A, B> {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        match self {
            Either::A(a) => a.send(frame).await,
            Either::B(b) => b.send(frame).await,
        }
    }
    async fn finish(&mut self) {
        match self {
            Either::A(a) => a.finish().await,
            Either::B(b) => b.finish().await,
        }
    }
}

/// The Close for the other side when the framed link to `peer` broke:
/// the innermost cause (quinn's "connection lost" wraps "timed out" or
/// the peer's reset), and what to do.
fn lost(peer: &str, e: &(dyn std::error::Error + 'static)) -> Close {
    let code = if peer == "agent" {
        CloseCode::AgentUnreachable
    } else {
        CloseCode::GoingAway
    };
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    Close::new(
        code,
        format!("connection to {peer} lost ({cause}): reconnect"),
    )
}

/// The Close for a frame from `peer` that does not decode.
fn bad_frame(peer: &str, e: FrameError) -> Close {
    Close::new(
        CloseCode::ProtocolError,
        format!("bad frame from {peer}: {e}"),
    )
}

/// The Close for a framed link from `peer` that ended inside a frame.
fn ended_mid_frame(peer: &str) -> Close {
    Close::new(
        CloseCode::ProtocolError,
        format!("stream from {peer} ended inside a frame"),
    )
}

/// [`Frame::decode`], and when that used `buf` up, a fresh empty buffer in
/// its place: the frame's payload then owns its allocation alone, and an
/// idle side holds none.
fn decode_whole(buf: &mut bytes::BytesMut) -> Result<Option<Frame>, FrameError> {
    let frame = Frame::decode(buf)?;
    if frame.is_some() && buf.is_empty() {
        *buf = bytes::BytesMut::new();
    }
    Ok(frame)
}

/// How many more bytes the frame begun in `partial` needs: the rest of its
/// header, then (its length known and checked by [`Frame::decode`], which
/// returned `None` for it) the rest of its payload.
fn still_needed(partial: &[u8]) -> usize {
    if partial.len() < FRAME_HEADER_LEN {
        return FRAME_HEADER_LEN - partial.len();
    }
    let len = u32::from_be_bytes([partial[1], partial[2], partial[3], partial[4]]);
    FRAME_HEADER_LEN + len as usize - partial.len()
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub close: Close,
    /// Data bytes carried from side A to side B.
    pub a_to_b: u64,
    /// Data bytes carried from side B to side A.
    pub b_to_a: u64,
}

enum PumpEnd {
    /// The receiving side sent a Close; it was passed on.
    Closed(Close),
    /// The receiving side broke.
    RxFailed(Close),
    /// The sending side broke.
    TxFailed(Close),
}

/// Carries one direction. When its side half-closes, the Eof is passed on
/// and reported through `eof`; the pump then only watches that side for a
/// Close or a failure, and returns only for those.
async fn pump(
    rx: &mut impl FrameRx,
    tx: &mut impl FrameTx,
    count: &mut u64,
    eof: oneshot::Sender<()>,
) -> PumpEnd {
    loop {
        let frame = match rx.recv().await {
            Ok(Some(f)) => f,
            Ok(None) => Frame::Eof,
            Err(c) => return PumpEnd::RxFailed(c),
        };
        let (half_closed, end) = match &frame {
            Frame::Data(d) => {
                *count += d.len() as u64;
                (false, None)
            }
            Frame::Eof => (true, None),
            Frame::Close(c) => (false, Some(PumpEnd::Closed(c.clone()))),
            // Session-opening frames mean nothing mid-session.
            Frame::Opened | Frame::Inventory(_) => continue,
            Frame::Notice(_) => (false, None),
        };
        if let Err(c) = tx.send(frame).await {
            return PumpEnd::TxFailed(c);
        }
        if let Some(end) = end {
            return end;
        }
        if half_closed {
            break;
        }
    }
    let _ = eof.send(());
    loop {
        match rx.recv().await {
            // Ended cleanly: nothing more can come from this side.
            Ok(None) => return std::future::pending().await,
            Ok(Some(Frame::Close(c))) => {
                if let Err(c) = tx.send(Frame::Close(c.clone())).await {
                    return PumpEnd::TxFailed(c);
                }
                return PumpEnd::Closed(c);
            }
            Ok(Some(_)) => {}
            Err(c) => return PumpEnd::RxFailed(c),
        }
    }
}

/// Relays between side A and side B until both directions have ended, one
/// side closes or fails, or `stop` resolves (its Close goes to both sides).
pub async fn relay(
    mut a_rx: impl FrameRx,
    mut a_tx: impl FrameTx,
    mut b_rx: impl FrameRx,
    mut b_tx: impl FrameTx,
    stop: impl Future<Output = Close>,
) -> Outcome {
    let (mut a_to_b, mut b_to_a) = (0, 0);
    // (close for A, close for B, the session's close)
    let (to_a, to_b, close) = {
        let (ab_eof_tx, mut ab_eof) = oneshot::channel();
        let (ba_eof_tx, mut ba_eof) = oneshot::channel();
        let ab = pump(&mut a_rx, &mut b_tx, &mut a_to_b, ab_eof_tx);
        let ba = pump(&mut b_rx, &mut a_tx, &mut b_to_a, ba_eof_tx);
        tokio::pin!(ab, ba, stop);
        let (mut ab_done, mut ba_done) = (false, false);
        loop {
            tokio::select! {
                Ok(()) = &mut ab_eof, if !ab_done => {
                    ab_done = true;
                    if ba_done { break (None, None, Close::normal()); }
                }
                Ok(()) = &mut ba_eof, if !ba_done => {
                    ba_done = true;
                    if ab_done { break (None, None, Close::normal()); }
                }
                end = &mut ab => match end {
                    PumpEnd::Closed(c) => break (None, None, c),
                    PumpEnd::RxFailed(c) => break (None, Some(c.clone()), c),
                    PumpEnd::TxFailed(c) => break (Some(c.clone()), None, c),
                },
                end = &mut ba => match end {
                    PumpEnd::Closed(c) => break (None, None, c),
                    PumpEnd::RxFailed(c) => break (Some(c.clone()), None, c),
                    PumpEnd::TxFailed(c) => break (None, Some(c.clone()), c),
                },
                c = &mut stop => break (Some(c.clone()), Some(c.clone()), c),
            }
        }
    };
    // Both pumps are dropped: tell each side that did not cause the end.
    let _ = tokio::time::timeout(CLOSE_DEADLINE, async {
        if let Some(c) = to_a {
            let _ = a_tx.send(Frame::Close(c)).await;
        }
        if let Some(c) = to_b {
            let _ = b_tx.send(Frame::Close(c)).await;
        }
        a_tx.finish().await;
        b_tx.finish().await;
    })
    .await;
    Outcome {
        close,
        a_to_b,
        b_to_a,
    }
}

/// What the adapters' tests share.
#[cfg(test)]
mod testing {
    use bytes::Bytes;
    use vmgate_wire::{Close, CloseCode, Frame};

    use crate::FrameRx;

    /// One frame of each kind, Data of several sizes among them.
    pub fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::Opened,
            Frame::Data(Bytes::from_static(b"ready\n")),
            Frame::Data(Bytes::from(vec![7u8; 70_000])),
            Frame::Notice("keyboard taken over".into()),
            Frame::Data(Bytes::new()),
            Frame::Eof,
            Frame::Close(Close::new(CloseCode::GuestDown, "guest stopped")),
        ]
    }

    /// Every frame `rx` gives until its clean end.
    pub async fn collect(mut rx: impl FrameRx) -> Vec<Frame> {
        let mut got = Vec::new();
        while let Some(f) = rx.recv().await.unwrap() {
            got.push(f);
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::sync::mpsc;
    use vmgate_wire::CloseCode;

    /// quinn's shape: "connection lost", caused by the idle timeout.
    #[derive(Debug)]
    struct ConnectionLost(std::io::Error);
    impl std::fmt::Display for ConnectionLost {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection lost")
        }
    }
    impl std::error::Error for ConnectionLost {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_lost_link_says_its_innermost_cause_and_what_to_do() {
        let e = ConnectionLost(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ));
        let c = lost("agent", &e);
        assert_eq!(c.code, CloseCode::AgentUnreachable);
        assert_eq!(c.reason, "connection to agent lost (timed out): reconnect");
        assert_eq!(lost("gateway", &e).code, CloseCode::GoingAway);
    }

    /// A side made of two channels: the test plays the peer.
    struct ChanRx(mpsc::Receiver<Result<Frame, Close>>);
    struct ChanTx(mpsc::Sender<Frame>);

    impl FrameRx for ChanRx {
        async fn recv(&mut self) -> Result<Option<Frame>, Close> {
            self.0.recv().await.transpose()
        }
    }
    impl FrameTx for ChanTx {
        async fn send(&mut self, f: Frame) -> Result<(), Close> {
            self.0
                .send(f)
                .await
                .map_err(|_| Close::new(CloseCode::Normal, "peer gone"))
        }
    }

    struct Peer {
        to_relay: mpsc::Sender<Result<Frame, Close>>,
        from_relay: mpsc::Receiver<Frame>,
    }

    fn side() -> (ChanRx, ChanTx, Peer) {
        let (a, b) = mpsc::channel(1);
        let (c, d) = mpsc::channel(1);
        (
            ChanRx(b),
            ChanTx(c),
            Peer {
                to_relay: a,
                from_relay: d,
            },
        )
    }

    fn data(s: &'static str) -> Frame {
        Frame::Data(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (arx, atx, mut a) = side();
        let (brx, btx, mut b) = side();
        let task = tokio::spawn(relay(arx, atx, brx, btx, std::future::pending()));
        a.to_relay.send(Ok(data("ping"))).await.unwrap();
        assert_eq!(b.from_relay.recv().await, Some(data("ping")));
        a.to_relay.send(Ok(Frame::Eof)).await.unwrap();
        assert_eq!(b.from_relay.recv().await, Some(Frame::Eof));
        // B still talks to A after A's half-close.
        b.to_relay.send(Ok(data("pong!"))).await.unwrap();
        assert_eq!(a.from_relay.recv().await, Some(data("pong!")));
        drop(b.to_relay);
        assert_eq!(a.from_relay.recv().await, Some(Frame::Eof));
        let out = task.await.unwrap();
        assert_eq!((out.a_to_b, out.b_to_a), (4, 5));
        assert_eq!(out.close.code, CloseCode::Normal);
    }

    #[tokio::test]
    async fn a_side_that_half_closed_can_still_close_the_session() {
        let (arx, atx, a) = side();
        let (brx, btx, mut b) = side();
        let task = tokio::spawn(relay(arx, atx, brx, btx, std::future::pending()));
        a.to_relay.send(Ok(Frame::Eof)).await.unwrap();
        assert_eq!(b.from_relay.recv().await, Some(Frame::Eof));
        // Data after Eof is dropped; the hang-up is passed on.
        a.to_relay.send(Ok(data("late"))).await.unwrap();
        let gone = Close::new(CloseCode::Normal, "client closed the session");
        a.to_relay
            .send(Ok(Frame::Close(gone.clone())))
            .await
            .unwrap();
        assert_eq!(b.from_relay.recv().await, Some(Frame::Close(gone.clone())));
        let out = task.await.unwrap();
        assert_eq!(out.close, gone);
        assert_eq!(out.a_to_b, 0);
        drop(b.to_relay);
    }

    #[tokio::test]
    async fn a_failure_is_reported_to_the_other_side() {
        let (arx, atx, a) = side();
        let (brx, btx, mut b) = side();
        let task = tokio::spawn(relay(arx, atx, brx, btx, std::future::pending()));
        let lost = Close::new(CloseCode::AgentUnreachable, "connection to agent lost");
        a.to_relay.send(Err(lost.clone())).await.unwrap();
        assert_eq!(b.from_relay.recv().await, Some(Frame::Close(lost.clone())));
        assert_eq!(task.await.unwrap().close, lost);
    }

    #[tokio::test]
    async fn stop_closes_both_sides_with_its_reason() {
        let (arx, atx, mut a) = side();
        let (brx, btx, mut b) = side();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Close>();
        let task = tokio::spawn(relay(
            arx,
            atx,
            brx,
            btx,
            async move { stop_rx.await.unwrap() },
        ));
        let admin = Close::new(CloseCode::EndedByAdmin, "ended by administrator");
        stop_tx.send(admin.clone()).unwrap();
        assert_eq!(a.from_relay.recv().await, Some(Frame::Close(admin.clone())));
        assert_eq!(b.from_relay.recv().await, Some(Frame::Close(admin.clone())));
        assert_eq!(task.await.unwrap().close, admin);
        drop((a.to_relay, b.to_relay));
    }

    #[tokio::test]
    async fn a_close_frame_is_passed_on_and_ends_both_directions() {
        let (arx, atx, a) = side();
        let (brx, btx, mut b) = side();
        let task = tokio::spawn(relay(arx, atx, brx, btx, std::future::pending()));
        let down = Close::new(CloseCode::GuestDown, "guest stopped");
        a.to_relay
            .send(Ok(Frame::Close(down.clone())))
            .await
            .unwrap();
        assert_eq!(b.from_relay.recv().await, Some(Frame::Close(down.clone())));
        assert_eq!(task.await.unwrap().close, down);
    }
}
