//! A QUIC stream as a side of the relay: frames of [`vmgate_wire`] over a
//! quinn send/receive pair.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use vmgate_wire::{Close, CloseCode, Frame};

use crate::{FrameRx, FrameTx, READ_CHUNK};

/// Receives frames from a QUIC stream.
pub struct QuicRx {
    stream: quinn::RecvStream,
    /// Bytes read but not yet decoded; bounded by one frame
    /// ([`vmgate_wire::MAX_FRAME_PAYLOAD`]) plus one read.
    buf: BytesMut,
    /// Who is on the other end ("agent", "gateway"), for close reasons.
    peer: &'static str,
}

impl QuicRx {
    /// `leftover` holds bytes already read past the stream's header.
    pub fn new(stream: quinn::RecvStream, leftover: BytesMut, peer: &'static str) -> QuicRx {
        QuicRx {
            stream,
            buf: leftover,
            peer,
        }
    }
}

/// The Close for the other side when the QUIC peer's connection broke.
fn lost(peer: &str, e: impl std::fmt::Display) -> Close {
    let code = if peer == "agent" {
        CloseCode::AgentUnreachable
    } else {
        CloseCode::GoingAway
    };
    Close::new(code, format!("connection to {peer} lost: {e}"))
}

impl FrameRx for QuicRx {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            match Frame::decode(&mut self.buf) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => {
                    return Err(Close::new(
                        CloseCode::ProtocolError,
                        format!("bad frame from {}: {e}", self.peer),
                    ))
                }
            }
            self.buf.reserve(READ_CHUNK);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(Close::new(
                        CloseCode::ProtocolError,
                        format!("stream from {} ended inside a frame", self.peer),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(lost(self.peer, e)),
            }
        }
    }
}

/// Sends frames on a QUIC stream.
pub struct QuicTx {
    stream: quinn::SendStream,
    peer: &'static str,
}

impl QuicTx {
    pub fn new(stream: quinn::SendStream, peer: &'static str) -> QuicTx {
        QuicTx { stream, peer }
    }
}

impl FrameTx for QuicTx {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        let mut chunks = frame.to_chunks();
        self.stream
            .write_all_chunks(&mut chunks)
            .await
            .map_err(|e| lost(self.peer, e))
    }

    async fn finish(&mut self) {
        let _ = self.stream.finish();
    }
}
