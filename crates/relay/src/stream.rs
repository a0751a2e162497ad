//! Frames of [`vmgate_wire`] over any byte stream (`AsyncRead` /
//! `AsyncWrite`): the gateway–agent link when a session has a TCP + TLS
//! connection of its own instead of a QUIC stream. The frames, their
//! checks and the cancel-safety promises are those of [`crate::quic`]
//! (sending is the same [`FrameWriter`]); only the way bytes are read and
//! written differs.
//!
//! Per-session flow control is the connection's own: one TCP connection
//! per session, so a reader that stops fills that connection's windows and
//! holds back only its writer.

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vmgate_wire::{Close, Frame};

use crate::writer::{FrameWriter, Sink};
use crate::{bad_frame, decode_whole, ended_mid_frame, lost, still_needed, FrameRx};

/// Receives frames from a byte stream.
///
/// Each read asks for exactly what the frame in progress still needs (its
/// header, then its payload), into a buffer sized once for that frame: a
/// Data frame's payload is handed on as that buffer, never gathered or
/// copied again, and an idle stream holds only the few bytes of a header.
/// Cancel-safe: what was read stays in `buf`.
pub struct StreamRx<R> {
    reader: R,
    /// The frame being read (or, at first, bytes read past the stream's
    /// header). Bounded by one frame ([`vmgate_wire::MAX_FRAME_PAYLOAD`]).
    buf: BytesMut,
    /// Who is on the other end ("agent", "gateway"), for close reasons.
    peer: &'static str,
}

impl<R: AsyncRead + Unpin + Send> StreamRx<R> {
    /// `leftover` holds bytes already read past the stream's header.
    pub fn new(reader: R, leftover: BytesMut, peer: &'static str) -> StreamRx<R> {
        StreamRx {
            reader,
            buf: leftover,
            peer,
        }
    }
}

impl<R: AsyncRead + Unpin + Send> FrameRx for StreamRx<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            match decode_whole(&mut self.buf) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(bad_frame(self.peer, e)),
            }
            // `decode` reserved room for a whole frame once its header was
            // in; before that, room for the header.
            let need = still_needed(&self.buf);
            self.buf.reserve(need);
            let read = (&mut self.reader)
                .take(need as u64)
                .read_buf(&mut self.buf)
                .await;
            match read {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(ended_mid_frame(self.peer)),
                Ok(_) => {}
                Err(e) => return Err(lost(self.peer, &e)),
            }
        }
    }
}

/// Sends frames on a byte stream ([`FrameWriter`] over [`Io`]). A frame's
/// header and payload go out in one vectored write (for TLS, one run of
/// records, not a record for the header alone), then the stream is
/// flushed, so nothing waits in a TLS buffer for the next frame.
pub type StreamTx<W> = FrameWriter<Io<W>>;

/// A byte stream as a [`Sink`].
pub struct Io<W>(pub W);

impl<W: AsyncWrite + Unpin + Send> Sink for Io<W> {
    async fn write_some(&mut self, pending: &mut [Bytes; 2]) -> std::io::Result<()> {
        let [a, b] = &*pending;
        let mut n = self
            .0
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        for p in pending {
            let k = n.min(p.len());
            p.advance(k);
            n -= k;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().await
    }

    /// TLS close_notify, then the TCP half-close: a QUIC stream's finish.
    async fn end(&mut self) {
        let _ = self.0.shutdown().await;
    }

    /// A byte stream has no reset of its own: the connection's end (its
    /// other half dropped too) cuts the frame, and the reader reports a
    /// stream that ended inside a frame.
    fn abandon(&mut self) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vmgate_wire::{CloseCode, MAX_FRAME_PAYLOAD};

    use super::*;
    use crate::testing::{collect, sample_frames};
    use crate::FrameTx;

    /// Frames sent are the frames received, through a pipe that moves a
    /// few bytes at a time, and a clean end is `None`.
    #[tokio::test]
    async fn frames_cross_a_narrow_pipe_whole() {
        let (a, b) = tokio::io::duplex(7);
        let (r, _) = tokio::io::split(b);
        let (_, w) = tokio::io::split(a);
        let sender = tokio::spawn(async move {
            let mut tx = StreamTx::new(Io(w), "test");
            for f in sample_frames() {
                tx.send(f).await.unwrap();
            }
            tx.finish().await;
        });
        let got = collect(StreamRx::new(r, BytesMut::new(), "test")).await;
        assert_eq!(got, sample_frames());
        sender.await.unwrap();
    }

    /// Bytes read past the stream's header (handed over as `leftover`) are
    /// the first frames; the rest follow from the stream.
    #[tokio::test]
    async fn leftover_bytes_come_first() {
        let mut wire = BytesMut::new();
        for f in sample_frames() {
            f.encode(&mut wire);
        }
        // Two whole frames and the start of the third's header.
        let split = 5 + 5 + 6 + 3;
        let leftover = BytesMut::from(&wire[..split]);
        let rest = wire[split..].to_vec();
        let got = collect(StreamRx::new(&rest[..], leftover, "test")).await;
        assert_eq!(got, sample_frames());
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_or_a_bad_frame_is_refused() {
        let mut wire = BytesMut::new();
        Frame::Data(Bytes::from_static(b"0123456789")).encode(&mut wire);
        let cut = &wire[..8];
        let mut rx = StreamRx::new(cut, BytesMut::new(), "agent");
        let e = rx.recv().await.unwrap_err();
        assert_eq!(e.code, CloseCode::ProtocolError);
        assert_eq!(e.reason, "stream from agent ended inside a frame");
        // A declared length over the limit is refused before any of it is
        // read or buffered.
        let big = (MAX_FRAME_PAYLOAD as u32 + 1).to_be_bytes();
        let head = [0, big[0], big[1], big[2], big[3]];
        let mut rx = StreamRx::new(&head[..], BytesMut::new(), "agent");
        let e = rx.recv().await.unwrap_err();
        assert!(e.reason.starts_with("bad frame from agent"), "{e}");
        assert!(rx.buf.capacity() < 64, "buffered {}", rx.buf.capacity());
    }

    /// A Data frame's payload is the buffer it was read into: it owns it
    /// alone, sized to the frame (no gathering, no copy after the read).
    #[tokio::test]
    async fn a_data_frame_is_read_into_a_buffer_of_its_own_size() {
        let mut wire = BytesMut::new();
        Frame::Data(Bytes::from(vec![1u8; 40_000])).encode(&mut wire);
        Frame::Eof.encode(&mut wire);
        let mut rx = StreamRx::new(&wire[..], BytesMut::new(), "test");
        let Some(Frame::Data(d)) = rx.recv().await.unwrap() else {
            panic!("expected data")
        };
        assert_eq!(d.len(), 40_000);
        assert_eq!(BytesMut::from(d).capacity(), 40_000);
        assert_eq!(rx.recv().await.unwrap(), Some(Frame::Eof));
    }

    /// The relay drops a pump mid-send when a session ends; its Close must
    /// still come out as a whole frame after the whole Data frame.
    #[tokio::test]
    async fn a_send_cancelled_mid_frame_is_completed_before_the_next_frame() {
        let (a, b) = tokio::io::duplex(4096);
        let (_, w) = tokio::io::split(a);
        let (r, _keep) = tokio::io::split(b);
        let mut tx = StreamTx::new(Io(w), "test");
        let data = Frame::Data(Bytes::from(vec![9u8; 10_000]));
        // Nobody reads: the pipe takes 4 KiB, then the send waits.
        let send = tx.send(data.clone());
        assert!(tokio::time::timeout(Duration::from_millis(100), send)
            .await
            .is_err());
        assert!(tx.pending.iter().any(|b| !b.is_empty()), "a frame was cut");
        let close = Close::new(CloseCode::BackendError, "ended while busy");
        let reader = tokio::spawn(collect(StreamRx::new(r, BytesMut::new(), "test")));
        tx.send(Frame::Close(close.clone())).await.unwrap();
        tx.finish().await;
        assert_eq!(reader.await.unwrap(), vec![data, Frame::Close(close)]);
    }
}
