//! The one adapter from a client WebSocket to the relay's frames: what the
//! gateway's `ws.rs` is on the server side.
//!
//! | WebSocket                   | frame                              |
//! | --------------------------- | ---------------------------------- |
//! | binary message              | `Data`                             |
//! | text `{"type":"eof"}`       | `Eof`                              |
//! | text `{"type":"notice",…}`  | `Notice` (received only)           |
//! | other text                  | ignored (unknown kind, malformed)  |
//! | close frame                 | `Close` with its [`CloseCode`]     |
//! | broken / ended without one  | the error [`WsRx::recv`] returns   |
//!
//! A notice is never made from a binary message: the guest's bytes cannot
//! pass for vmgate speaking.

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_wire::{Close, CloseCode, Control, Frame};

use crate::Ws;

/// The receiving half of a console WebSocket.
pub struct WsRx(SplitStream<Ws>);

/// The sending half of a console WebSocket.
pub struct WsTx(SplitSink<Ws, Message>);

/// Splits a console WebSocket into relay halves.
pub fn split(ws: Ws) -> (WsRx, WsTx) {
    let (sink, stream) = ws.split();
    (WsRx(stream), WsTx(sink))
}

/// The connection broke, or ended without a close frame.
fn lost(e: impl std::fmt::Display) -> Close {
    Close::new(
        CloseCode::Internal,
        format!("connection to the gateway lost: {e}"),
    )
}

impl FrameRx for WsRx {
    /// The next frame from the gateway: `Data`, `Eof`, `Notice` or
    /// `Close`; an error (whose reason says what broke) if the connection
    /// ended without a close frame.
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            let msg = match self.0.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(lost(e)),
                None => return Err(lost("no close frame")),
            };
            match msg {
                Message::Binary(b) => return Ok(Some(Frame::Data(b))),
                Message::Text(t) => match Control::parse(t.as_str()) {
                    Ok(Control::Eof) => return Ok(Some(Frame::Eof)),
                    Ok(Control::Notice { text }) => return Ok(Some(Frame::Notice(text))),
                    // A kind this client does not know yet.
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "gateway sent a bad control message"),
                },
                Message::Close(f) => {
                    let close = match f {
                        Some(f) => {
                            Close::new(CloseCode::from_websocket(f.code.into()), f.reason.as_str())
                        }
                        None => Close::new(CloseCode::Internal, "closed without a reason"),
                    };
                    return Ok(Some(Frame::Close(close)));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

impl WsTx {
    /// Sends console bytes.
    pub async fn data(&mut self, bytes: impl Into<Bytes>) -> Result<(), Close> {
        self.send(Frame::Data(bytes.into())).await
    }

    /// Ends the session from this side: a close frame with `code` and
    /// `reason`, then the connection's sending half is closed.
    pub async fn close(&mut self, close: Close) {
        let _ = self.send(Frame::Close(close)).await;
        let _ = self.0.close().await;
    }
}

impl FrameTx for WsTx {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        let msg = match frame {
            Frame::Data(d) => Message::Binary(d),
            Frame::Eof => Message::text(Control::Eof.to_text()),
            Frame::Close(c) => Message::Close(Some(CloseFrame {
                code: WsCode::from(c.code as u16),
                reason: c.reason.into(),
            })),
            // Notices are the gateway's to send; the rest is between
            // gateway and agent.
            Frame::Notice(_) | Frame::Opened | Frame::Inventory(_) => return Ok(()),
        };
        self.0.send(msg).await.map_err(lost)
    }

    async fn finish(&mut self) {
        let _ = self.0.close().await;
    }
}
