//! A guest channel's chardev socket under the `qemu` backend, with the
//! end-of-stream and read-only rules a virtio-serial port has.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vmgate_relay::bytes_io::CloseError;
use vmgate_wire::{Close, CloseCode};

/// A guest channel's chardev socket (QEMU `-chardev socket,server=on`
/// behind a `virtserialport`), with the end-of-stream rules a
/// virtio-serial port actually has (docs/channels.md):
///
/// * QEMU's socket chardev has no half-close: when the host shuts its write
///   side, QEMU reads end of stream and drops the connection, and the
///   guest's port reads EOF once it has consumed what came before. So
///   [`poll_shutdown`](AsyncWrite::poll_shutdown) is the client's EOF, and
///   the end of stream that follows is the normal end of the guest's output.
/// * Without that shutdown, end of stream means QEMU closed the chardev on
///   its own (QEMU exited: the guest powered off or was killed). Reads
///   then fail with a [`CloseError`] saying the guest is down, rather than
///   a plain EOF the client might take for a finished reply.
/// * Read-only: writes are dropped (counted, logged once) and shutdown is
///   ignored, because even an EOF would reach the guest (as a disconnect).
///   The connection closes when the session ends.
pub struct ChardevStream<S> {
    inner: S,
    /// Set once the host side shut its write half (the client's EOF).
    shut: bool,
    read_only: bool,
    /// Bytes of a read-only session's input dropped so far.
    dropped: u64,
    /// "channel test.echo of demo", for messages.
    what: String,
}

impl<S> ChardevStream<S> {
    pub fn new(inner: S, what: impl Into<String>, read_only: bool) -> Self {
        ChardevStream {
            inner,
            shut: false,
            read_only,
            dropped: 0,
            what: what.into(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ChardevStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let eof = buf.filled().len() == before && buf.remaining() > 0;
        if eof && !self.shut {
            return Poll::Ready(Err(CloseError::io(Close::new(
                CloseCode::GuestDown,
                format!("QEMU closed {}: the guest stopped", self.what),
            ))));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ChardevStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.read_only {
            if self.dropped == 0 && !buf.is_empty() {
                tracing::info!(channel = %self.what, "read-only session: its input is dropped");
            }
            self.dropped += buf.len() as u64;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read_only {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read_only {
            return Poll::Ready(Ok(()));
        }
        // Set first: QEMU's end of stream may be read before this returns.
        self.shut = true;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Drop for ChardevStream<S> {
    fn drop(&mut self) {
        if self.dropped > 0 {
            tracing::info!(channel = %self.what, bytes = self.dropped, "read-only session ended: input dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn end_of_stream_after_our_shutdown_is_a_normal_eof() {
        let (a, mut peer) = tokio::io::duplex(64);
        let mut s = ChardevStream::new(a, "channel t of g", false);
        s.write_all(b"hi").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        peer.write_all(b"bye").await.unwrap();
        drop(peer);
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
    }

    #[tokio::test]
    async fn end_of_stream_qemu_chose_says_the_guest_is_down() {
        let (a, mut peer) = tokio::io::duplex(64);
        let mut s = ChardevStream::new(a, "channel t of g", false);
        peer.write_all(b"last words").await.unwrap();
        drop(peer);
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"last words");
        let e = s.read(&mut buf).await.unwrap_err();
        let close = &e.get_ref().unwrap().downcast_ref::<CloseError>().unwrap().0;
        assert_eq!(close.code, CloseCode::GuestDown);
        assert!(close.reason.contains("channel t of g"), "{}", close.reason);
    }

    #[tokio::test]
    async fn read_only_input_and_eof_never_reach_the_guest() {
        let (a, mut peer) = tokio::io::duplex(64);
        let mut s = ChardevStream::new(a, "channel t of g", true);
        s.write_all(&[7u8; 1000]).await.unwrap();
        s.shutdown().await.unwrap();
        peer.write_all(b"out").await.unwrap();
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"out");
        drop(s);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "read-only input reached the guest: {got:?}");
    }
}
