//! A plain byte stream (a unix socket to QEMU) as a side of the relay.
//!
//! A byte stream has no frames: reads become Data, end of stream becomes
//! Eof; Eof sent to it shuts its write half; notices have nowhere to go.
//! A stream that knows better than "end of stream" why it ended (a guest
//! channel whose QEMU went away) fails its read with a [`CloseError`],
//! which is passed on as that Close.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vmgate_wire::{Close, CloseCode, Frame};

use crate::{FrameRx, FrameTx, READ_CHUNK};

/// An I/O error that carries the Close to give the other side, for streams
/// that know why they ended (see the module doc).
#[derive(Debug)]
pub struct CloseError(pub Close);

impl std::fmt::Display for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CloseError {}

impl CloseError {
    /// As an `io::Error`, to return from `poll_read`.
    pub fn io(close: Close) -> std::io::Error {
        std::io::Error::other(CloseError(close))
    }
}

/// Reads a byte stream as Data frames.
pub struct ByteRx<R> {
    reader: R,
    buf: BytesMut,
    ended: bool,
    /// What the stream is ("guest channel test.echo"), for close reasons.
    what: String,
}

impl<R> ByteRx<R> {
    pub fn new(reader: R, what: impl Into<String>) -> Self {
        ByteRx {
            reader,
            buf: BytesMut::new(),
            ended: false,
            what: what.into(),
        }
    }
}

impl<R: AsyncRead + Unpin + Send> FrameRx for ByteRx<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        if self.ended {
            return Ok(None);
        }
        // Reuses the same allocation once the previous chunk was sent on.
        self.buf.reserve(READ_CHUNK);
        match self.reader.read_buf(&mut self.buf).await {
            Ok(0) => {
                self.ended = true;
                Ok(Some(Frame::Eof))
            }
            Ok(_) => Ok(Some(Frame::Data(self.buf.split().freeze()))),
            Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<CloseError>()) {
                Some(CloseError(close)) => Err(close.clone()),
                None => Err(Close::new(
                    CloseCode::BackendError,
                    format!("reading {}: {e}", self.what),
                )),
            },
        }
    }
}

/// Writes Data frames to a byte stream.
pub struct ByteTx<W> {
    writer: W,
    what: String,
}

impl<W> ByteTx<W> {
    pub fn new(writer: W, what: impl Into<String>) -> Self {
        ByteTx {
            writer,
            what: what.into(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send> FrameTx for ByteTx<W> {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        let res = match frame {
            Frame::Data(d) => self.writer.write_all(&d).await,
            Frame::Eof | Frame::Close(_) => self.writer.shutdown().await,
            Frame::Notice(_) | Frame::Opened | Frame::Inventory(_) => Ok(()),
        };
        res.map_err(|e| {
            Close::new(
                CloseCode::BackendError,
                format!("writing {}: {e}", self.what),
            )
        })
    }

    async fn finish(&mut self) {
        let _ = self.writer.shutdown().await;
    }
}
