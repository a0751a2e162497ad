//! A plain byte stream (a unix socket to QEMU) as a side of the relay.
//!
//! A byte stream has no frames: reads become Data, end of stream becomes
//! Eof; Eof sent to it shuts its write half; notices have nowhere to go.
//! A stream that knows better than "end of stream" why it ended (a guest
//! channel whose QEMU went away) fails its read with a [`CloseError`],
//! which is passed on as that Close.

use bytes::{Bytes, BytesMut};
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

/// Bytes read at once while a stream is quiet. Kept inside the session's
/// task, so an idle stream costs this much and no heap buffer.
const PROBE: usize = 1024;

/// Reads a byte stream as Data frames.
///
/// A quiet stream is read [`PROBE`] bytes at a time into the task's own
/// memory and each read is copied into a frame of its exact size
/// (keystrokes, prompts). A read that fills the probe means data flows:
/// from then on it reads up to [`READ_CHUNK`] straight into frames, until a
/// read comes back short again and the big buffer is let go.
pub struct ByteRx<R> {
    reader: R,
    /// Allocated only while data flows.
    buf: BytesMut,
    flowing: bool,
    ended: bool,
    /// What the stream is ("guest channel test.echo"), for close reasons.
    what: String,
}

impl<R> ByteRx<R> {
    pub fn new(reader: R, what: impl Into<String>) -> Self {
        ByteRx {
            reader,
            buf: BytesMut::new(),
            flowing: false,
            ended: false,
            what: what.into(),
        }
    }

    fn failed(&self, e: std::io::Error) -> Close {
        match e.get_ref().and_then(|i| i.downcast_ref::<CloseError>()) {
            Some(CloseError(close)) => close.clone(),
            None => Close::new(
                CloseCode::BackendError,
                format!("reading {}: {e}", self.what),
            ),
        }
    }

    fn eof(&mut self) -> Result<Option<Frame>, Close> {
        self.ended = true;
        self.buf = BytesMut::new();
        Ok(Some(Frame::Eof))
    }
}

impl<R: AsyncRead + Unpin + Send> FrameRx for ByteRx<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        if self.ended {
            return Ok(None);
        }
        if self.flowing {
            // Reuses the allocation when the previous frame is gone.
            self.buf.reserve(READ_CHUNK);
            let n = match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => return self.eof(),
                Ok(n) => n,
                Err(e) => return Err(self.failed(e)),
            };
            let data = self.buf.split().freeze();
            if n < READ_CHUNK / 8 {
                self.flowing = false;
                self.buf = BytesMut::new();
            }
            return Ok(Some(Frame::Data(data)));
        }
        let mut probe = [0u8; PROBE];
        match self.reader.read(&mut probe).await {
            Ok(0) => self.eof(),
            Ok(n) => {
                self.flowing = n == PROBE;
                Ok(Some(Frame::Data(Bytes::copy_from_slice(&probe[..n]))))
            }
            Err(e) => Err(self.failed(e)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Everything a ByteRx yields until Eof, concatenated, and the sizes.
    async fn drain(rx: &mut ByteRx<tokio::io::DuplexStream>) -> (Vec<u8>, Vec<usize>) {
        let (mut all, mut sizes) = (Vec::new(), Vec::new());
        loop {
            match rx.recv().await.unwrap() {
                Some(Frame::Data(d)) => {
                    sizes.push(d.len());
                    all.extend_from_slice(&d);
                }
                Some(Frame::Eof) => return (all, sizes),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn quiet_then_bulk_then_quiet_arrives_whole_and_in_order() {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let mut rx = ByteRx::new(r, "test stream");
        let bulk: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(b"login: ").await.unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(first, Some(Frame::Data(Bytes::from_static(b"login: "))));
        w.write_all(&bulk).await.unwrap();
        w.write_all(b"$ ").await.unwrap();
        drop(w);
        let (all, sizes) = drain(&mut rx).await;
        let mut want = bulk.clone();
        want.extend_from_slice(b"$ ");
        assert_eq!(all, want);
        // The first read probes with a small buffer; once data flows it
        // reads in large chunks.
        assert_eq!(sizes[0], PROBE);
        assert!(sizes.iter().any(|&n| n > PROBE), "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= READ_CHUNK));
        assert_eq!(rx.recv().await.unwrap(), None);
    }
}
