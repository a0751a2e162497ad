//! Backends: where an agent finds its guests and how it opens their
//! endpoints. The server, relay, scrollback and session logic are the same
//! for every backend.

pub mod libvirt;
pub mod qemu;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vmgate_relay::bytes_io::CloseError;
use vmgate_wire::{Close, CloseCode, Inventory, OpenRequest};

use crate::console::{ConsoleRx, ConsoleTx};

/// A byte stream to a guest endpoint (VNC, a virtio-serial port).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

/// What opening a channel gives.
pub enum Opened {
    /// A byte stream relayed as is; `stop` fires when another session takes
    /// the channel over.
    Stream {
        stream: Box<dyn Duplex>,
        what: String,
        stop: Option<(CancellationToken, SlotGuard)>,
    },
    /// An attachment to a serial console hub.
    Console(ConsoleRx, ConsoleTx),
}

/// A source of guests and their endpoints.
pub trait Backend: Send + Sync + 'static {
    /// The inventory now and every later change.
    fn inventory(&self) -> watch::Receiver<Inventory>;
    /// Opens the channel a gateway asked for, or says why not.
    fn open(&self, req: &OpenRequest) -> impl Future<Output = Result<Opened, Close>> + Send;
    /// Resolves, with the reason to give, when a session that `req` opened
    /// must end because its guest went away (a libvirt domain stopped).
    /// Called right after a successful [`Backend::open`]. Backends that keep
    /// sessions across guest restarts (`qemu`) never resolve it.
    fn session_end(&self, req: &OpenRequest) -> impl Future<Output = Close> + Send + 'static {
        let _ = req;
        std::future::pending()
    }
}

/// How long a session asking for a channel that is held waits for it to be
/// released before it is refused "in use": the session before it may be in
/// its last moments (its client already saw the close and came back).
const IN_USE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Holds an exclusive channel (a guest agent serves one client at a time).
#[derive(Default)]
pub struct Slot {
    holder: Mutex<Option<(u64, CancellationToken)>>,
    released: tokio::sync::Notify,
}

/// Frees the slot when the session ends, unless it was taken over.
pub struct SlotGuard {
    slot: Arc<Slot>,
    session: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut h = self.slot.holder.lock().expect("slot lock");
        if h.as_ref().is_some_and(|(s, _)| *s == self.session) {
            *h = None;
            self.slot.released.notify_waiters();
        }
    }
}

impl Slot {
    /// Takes the slot for `session`; with `force`, ends the current holder.
    /// Without, waits up to [`IN_USE_GRACE`] for the holder to let go.
    pub async fn take(
        self: &Arc<Self>,
        session: u64,
        force: bool,
        what: &str,
    ) -> Result<(CancellationToken, SlotGuard), Close> {
        if !force {
            let _ = tokio::time::timeout(IN_USE_GRACE, async {
                loop {
                    let released = self.released.notified();
                    tokio::pin!(released);
                    // Registered before the check, so a release between
                    // the check and the wait is not missed.
                    released.as_mut().enable();
                    if self.holder.lock().expect("slot lock").is_none() {
                        return;
                    }
                    released.await;
                }
            })
            .await;
        }
        self.take_now(session, force, what)
    }

    fn take_now(
        self: &Arc<Self>,
        session: u64,
        force: bool,
        what: &str,
    ) -> Result<(CancellationToken, SlotGuard), Close> {
        let mut h = self.holder.lock().expect("slot lock");
        if let Some((_, token)) = h.as_ref() {
            if !force {
                return Err(Close::new(
                    CloseCode::ChannelInUse,
                    format!("{what} is in use by another session (use --force to take it over)"),
                ));
            }
            token.cancel();
        }
        let token = CancellationToken::new();
        *h = Some((session, token.clone()));
        Ok((
            token,
            SlotGuard {
                slot: self.clone(),
                session,
            },
        ))
    }
}

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

    #[tokio::test(start_paused = true)]
    async fn a_slot_released_in_its_last_moments_is_taken_and_a_held_one_is_in_use() {
        let slot = Arc::new(Slot::default());
        let (_t1, g1) = slot.take(1, false, "ch").await.unwrap();
        // Released half a second later: the next session gets it.
        let release = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            drop(g1);
        });
        let (t2, _g2) = slot.take(2, false, "ch").await.unwrap();
        release.await.unwrap();
        // Held for good: refused after the grace, with the reason.
        let refused = slot.take(3, false, "channel x of y").await.err().unwrap();
        assert_eq!(refused.code, CloseCode::ChannelInUse);
        assert!(
            refused.reason.contains("channel x of y is in use"),
            "{refused}"
        );
        // --force takes it at once and tells the holder.
        let started = tokio::time::Instant::now();
        let (_t4, _g4) = slot.take(4, true, "ch").await.unwrap();
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
        assert!(t2.is_cancelled());
    }
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
