//! The one framed sender of the gateway–agent link, over either transport
//! ([`Sink`]: a QUIC stream, or a byte stream such as a TCP + TLS
//! connection).
//!
//! Cancel-safe: the relay drops a pump mid-send when the session ends
//! (stop, the other side's Close), and its Close must still follow whole
//! frames. So the frame being sent lives here, not in the send future;
//! the next send, or `finish`, writes what is left of it first. Dropped
//! with part of a frame unsent, the sink is told ([`Sink::abandon`]) so it
//! can end the stream with the frame's position lost rather than finish it
//! inside a frame.

use std::future::Future;

use bytes::Bytes;
use vmgate_wire::{Close, Frame};

use crate::{lost, FrameTx};

/// Where a [`FrameWriter`] writes.
pub trait Sink: Send {
    /// Writes some of `pending` (a frame's header and payload), dropping
    /// what it wrote from their fronts, or waits without writing: either
    /// way cancelling it loses nothing.
    fn write_some(
        &mut self,
        pending: &mut [Bytes; 2],
    ) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Pushes out what the sink buffered, after a whole frame.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Ends the sending direction after the last whole frame.
    fn end(&mut self) -> impl Future<Output = ()> + Send;
    /// The writer is dropped with part of a frame unsent.
    fn abandon(&mut self);
}

/// Sends frames on a [`Sink`].
pub struct FrameWriter<S: Sink> {
    sink: S,
    /// Who is on the other end ("agent", "gateway"), for close reasons.
    peer: &'static str,
    /// What is left of the frame being sent.
    pub(crate) pending: [Bytes; 2],
    /// Written to the sink since its last flush.
    unflushed: bool,
}

impl<S: Sink> FrameWriter<S> {
    pub fn new(sink: S, peer: &'static str) -> FrameWriter<S> {
        FrameWriter {
            sink,
            peer,
            pending: Default::default(),
            unflushed: false,
        }
    }

    /// Writes what is left of the pending frame, then flushes the sink
    /// (a flush interrupted by a cancel is done again next time).
    async fn flush(&mut self) -> Result<(), Close> {
        if self.pending.iter().all(|b| b.is_empty()) && !self.unflushed {
            return Ok(());
        }
        self.unflushed = true;
        while self.pending.iter().any(|b| !b.is_empty()) {
            self.sink
                .write_some(&mut self.pending)
                .await
                .map_err(|e| lost(self.peer, &e))?;
        }
        self.sink.flush().await.map_err(|e| lost(self.peer, &e))?;
        self.unflushed = false;
        Ok(())
    }
}

impl<S: Sink> FrameTx for FrameWriter<S> {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        self.flush().await?;
        self.pending = frame.to_chunks();
        self.flush().await
    }

    async fn finish(&mut self) {
        if self.flush().await.is_ok() {
            self.sink.end().await;
        }
    }
}

impl<S: Sink> Drop for FrameWriter<S> {
    fn drop(&mut self) {
        if self.pending.iter().any(|b| !b.is_empty()) {
            self.sink.abandon();
        }
    }
}
