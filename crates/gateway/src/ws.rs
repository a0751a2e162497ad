//! A client WebSocket as a side of the relay.
//!
//! Binary messages carry the console's bytes, unchanged. With `controls`
//! (the vmgate console protocol) text messages carry control messages
//! ([`vmgate_wire::Control`]): EOF both ways for a half-close, notices from
//! the gateway. Without it (the `binary` subprotocol noVNC speaks) only
//! binary messages are sent. A session's end is a WebSocket close
//! frame whose code and reason say why (`vmgate_wire::CloseCode`); after
//! EOF both ways it is 1000 "session ended". After its close frame the
//! gateway reads (and drops) what the client still sends, until the
//! client's close frame or [`LINGER`]: closing a TCP connection with unread
//! input resets it, and a reset can destroy the close frame, and with it
//! the reason, before the client reads it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_wire::{Close, CloseCode, Control, Frame};

/// What each client WebSocket reads into at first (tungstenite grows it
/// for a larger message).
pub const READ_BUFFER: usize = 4 * 1024;

/// How long a closed session waits for the client's close frame.
pub const LINGER: Duration = Duration::from_secs(5);

pub struct WsRx {
    /// `None` once handed to [`linger`].
    stream: Option<SplitStream<WebSocket>>,
    /// The client closed (or broke) the connection: nothing to wait for.
    peer_done: bool,
    /// Shared with [`WsTx`]: our close frame went out.
    closed: Arc<AtomicBool>,
    /// Shared with [`WsTx`]: why this side stopped reading the client,
    /// when the client is still there to be told ([`read_error`]).
    refused: Arc<Mutex<Option<Close>>>,
}

pub struct WsTx {
    sink: SplitSink<WebSocket, Message>,
    controls: bool,
    /// A close frame went out; otherwise `finish` sends a normal one.
    closed: Arc<AtomicBool>,
    /// Set by [`WsRx`]: the close `finish` sends instead of the normal one.
    refused: Arc<Mutex<Option<Close>>>,
}

/// Splits a WebSocket into relay halves.
pub fn split(ws: WebSocket, controls: bool) -> (WsRx, WsTx) {
    let (sink, stream) = ws.split();
    let closed = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(Mutex::new(None));
    (
        WsRx {
            stream: Some(stream),
            peer_done: false,
            closed: closed.clone(),
            refused: refused.clone(),
        },
        WsTx {
            sink,
            controls,
            closed,
            refused,
        },
    )
}

impl Drop for WsRx {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if self.peer_done || !self.closed.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(stream));
        }
    }
}

/// Reads and drops the client's messages until its close frame, for at
/// most [`LINGER`]; the connection closes when this returns (and the
/// sending half is gone).
async fn linger(mut stream: SplitStream<WebSocket>) {
    let drain = async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Why a session ends on a read error, and whether the client is there to
/// be told: a message or frame over the listener's bound is refused with
/// its sizes (tungstenite stops at the frame header or once the message
/// passes it, so nothing of it reaches the guest); anything else is a
/// client gone.
fn read_error(e: axum::Error) -> (Close, bool) {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    let e = e.into_inner();
    if let Some(Error::Capacity(CapacityError::MessageTooLong { size, max_size })) =
        e.downcast_ref::<Error>()
    {
        let close = Close::new(
            CloseCode::ProtocolError,
            format!(
                "a WebSocket message of at least {size} bytes, over the {max_size}-byte limit: send less at once"
            ),
        );
        return (close, true);
    }
    tracing::debug!(error = %e, "client websocket error");
    (client_gone(), false)
}

fn client_gone() -> Close {
    Close::new(CloseCode::Normal, "client disconnected")
}

impl FrameRx for WsRx {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(client_gone());
        };
        loop {
            let next = stream.next().await;
            if matches!(next, Some(Ok(Message::Close(_))) | Some(Err(_)) | None) {
                self.peer_done = true;
            }
            match next {
                Some(Ok(Message::Binary(b))) => return Ok(Some(Frame::Data(b))),
                Some(Ok(Message::Text(t))) => match Control::parse(t.as_str()) {
                    Ok(Control::Eof) => return Ok(Some(Frame::Eof)),
                    // Notices are the gateway's to send, and kinds this
                    // build does not know are ignored, so newer clients
                    // can talk to it.
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "client sent a bad control message"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    return Ok(Some(Frame::Close(Close::new(
                        CloseCode::Normal,
                        "client closed the session",
                    ))))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Err(e)) => {
                    let (close, tell) = read_error(e);
                    if tell {
                        *self.refused.lock().expect("refusal lock") = Some(close.clone());
                    }
                    return Err(close);
                }
            }
        }
    }
}

impl FrameTx for WsTx {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        let msg = match frame {
            Frame::Data(b) => Message::Binary(b),
            Frame::Eof if self.controls => Message::Text(Control::Eof.to_text().into()),
            Frame::Notice(text) if self.controls => {
                Message::Text(Control::notice(text).to_text().into())
            }
            Frame::Close(c) => {
                self.closed.store(true, Ordering::SeqCst);
                Message::Close(Some(CloseFrame {
                    code: c.code as u16,
                    reason: c.reason.into(),
                }))
            }
            _ => return Ok(()),
        };
        self.sink.send(msg).await.map_err(|_| client_gone())
    }

    async fn finish(&mut self) {
        // Both directions ended with EOF: the session is over, normally.
        // Say so with a code, so clients need not guess from a bare close;
        // or this side stopped reading the client and says why.
        if !self.closed.swap(true, Ordering::SeqCst) {
            let refused = self.refused.lock().expect("refusal lock").take();
            let close = refused.unwrap_or_else(Close::normal);
            let _ = self
                .sink
                .send(Message::Close(Some(CloseFrame {
                    code: close.code as u16,
                    reason: close.reason.into(),
                })))
                .await;
        }
        let _ = self.sink.close().await;
    }
}
