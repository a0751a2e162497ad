//! libvirt streams bridged to tokio: the one place that moves bytes between
//! a `virStream` (a console, or a channel through `virDomainOpenChannel`)
//! and the agent's async side, with a bound on what libvirt may queue for a
//! slow reader, and a signal when a stream ends that lets the session say
//! why.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use virt::connect::Connect;
use virt::stream::Stream;
use vmgate_wire::{Close, CloseCode};

use super::ffi;
use crate::duplex::Duplex;

/// Bytes in the pipe between tokio and a libvirt stream, per direction (from
/// the guest, [`STREAM_BACKLOG`] more may wait before it), and the size of
/// one read from either.
pub const BRIDGE_BUF: usize = 64 * 1024;
/// Guest output a libvirt stream may hold for a reader that is behind.
/// libvirt's client library queues whatever libvirtd sends, without limit,
/// so the agent reads every stream at once into a backlog of its own,
/// bounded by this; a session whose client falls further behind ends.
/// (Console hubs always read, and channels on their socket have the
/// kernel's flow control.)
pub const STREAM_BACKLOG: usize = 8 << 20;

pub fn io_err(e: virt::error::Error) -> io::Error {
    io::Error::other(e.message().to_string())
}

/// A connection of its own for one stream (blocking), so a busy stream
/// never delays the agent's main connection (events, lookups, VNC) or
/// another stream.
pub fn stream_connection(uri: &str) -> io::Result<Connect> {
    Connect::open(Some(uri)).map_err(io_err)
}

/// What the tokio side sees when libvirt ends a bridged stream.
pub enum StreamEnd {
    /// End-of-stream (a console hub reconnects on it).
    Eof,
    /// Nothing on the pipe; [`Ended`] says so instead, so the session can
    /// close with a reason. A libvirt stream does not half-close: its end
    /// means QEMU or libvirtd went away, which a bare end-of-stream would
    /// not tell the user.
    Signal(Ended),
}

/// The end of a channel or VNC session's stream, seen by
/// [`crate::backend::Backend::session_end`]: `token` is cancelled when the stream ends,
/// with `why` set first when the agent itself knows the reason.
#[derive(Clone, Default)]
pub struct Ended {
    pub token: CancellationToken,
    pub why: Arc<OnceLock<Close>>,
}

/// Guest output read from a libvirt stream and not yet taken by the
/// session: at most [`STREAM_BACKLOG`] bytes.
#[derive(Default)]
struct Backlog {
    state: Mutex<BacklogState>,
    ready: Notify,
    /// Cancelled when the bound was hit: the session ends now, whatever
    /// is still queued or being written.
    overflowed: CancellationToken,
}

#[derive(Default)]
struct BacklogState {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Set by the reading thread when the stream ended (`true`: because
    /// the backlog was full).
    end: Option<bool>,
    /// The session's side is gone: stop keeping bytes.
    gone: bool,
}

impl Backlog {
    /// Keeps `data`; false when that would exceed the bound (or nobody
    /// reads any more).
    fn push(&self, data: &[u8]) -> bool {
        let mut st = self.state.lock().expect("backlog lock");
        if st.gone || st.bytes + data.len() > STREAM_BACKLOG {
            return false;
        }
        st.bytes += data.len();
        st.chunks.push_back(data.to_vec());
        drop(st);
        self.ready.notify_one();
        true
    }

    fn finish(&self, overflowed: bool) {
        self.state.lock().expect("backlog lock").end = Some(overflowed);
        if overflowed {
            self.overflowed.cancel();
        }
        self.ready.notify_one();
    }

    /// The next chunk, or how the stream ended once all are taken.
    async fn next(&self) -> Result<Vec<u8>, bool> {
        loop {
            {
                let mut st = self.state.lock().expect("backlog lock");
                if let Some(chunk) = st.chunks.pop_front() {
                    st.bytes -= chunk.len();
                    return Ok(chunk);
                }
                if let Some(overflowed) = st.end {
                    return Err(overflowed);
                }
            }
            self.ready.notified().await;
        }
    }

    fn abandon(&self) {
        let mut st = self.state.lock().expect("backlog lock");
        st.gone = true;
        st.chunks.clear();
        st.bytes = 0;
    }
}

/// A socket whose end-of-stream cancels `ended` instead of being read (see
/// [`StreamEnd::Signal`]); the session then closes with a reason. After our
/// own shutdown (the client's end-of-input) the peer closing is an ordinary
/// end-of-stream.
pub struct SignalOnEof<S> {
    inner: S,
    ended: CancellationToken,
    /// Set once our side shut its write half (the client's end of input).
    shut: bool,
}

impl<S> SignalOnEof<S> {
    pub fn new(inner: S, ended: CancellationToken) -> Self {
        SignalOnEof {
            inner,
            ended,
            shut: false,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SignalOnEof<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.ended.is_cancelled() {
            return std::task::Poll::Pending;
        }
        let (before, room) = (buf.filled().len(), buf.remaining());
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, std::task::Poll::Ready(Ok(())))
            && room > 0
            && buf.filled().len() == before
            && !self.shut
        {
            // Nothing will wake this read again: the session's close does.
            self.ended.cancel();
            return std::task::Poll::Pending;
        }
        res
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SignalOnEof<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.shut = true;
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bridges a libvirt stream to tokio.
///
/// The stream is non-blocking and libvirt's event loop says when it has
/// data ([`ffi::stream_watch`]); a blocking `virStreamRecv` was seen to miss
/// wake-ups while libvirt's event loop runs (output stalled until the next
/// keepalive). Two threads move the bytes, one per direction. Toward libvirt
/// an in-memory pipe (`tokio::io::duplex`) holds at most [`BRIDGE_BUF`]
/// bytes, and a send returns once libvirt has written it, so a slow guest
/// slows the client down. From libvirt there is no such flow control:
/// libvirt's client library queues all libvirtd sends whether or not
/// anyone reads, so the receiving thread always reads, into a [`Backlog`]
/// of at most [`STREAM_BACKLOG`] bytes that a tokio task feeds to the pipe;
/// when it is full the stream is aborted and the session ends saying why.
/// When the tokio side ends its input, the sending thread aborts the stream
/// and wakes the receiving one; when libvirt ends the stream, the tokio side
/// sees `end` after the bytes before it.
pub fn bridge(
    conn: &Connect,
    stream: Stream,
    handle: Handle,
    what: String,
    end: StreamEnd,
) -> io::Result<Box<dyn Duplex>> {
    let (ours, theirs) = tokio::io::duplex(BRIDGE_BUF);
    let (mut from_tokio, mut to_tokio) = tokio::io::split(ours);
    // Set when the tokio side ended its input and we aborted the stream:
    // the stream's end is then an ordinary end-of-stream.
    let we_closed = Arc::new(AtomicBool::new(false));
    let we_closed_rx = we_closed.clone();
    let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
    ffi::stream_watch(&stream, wake_tx.clone()).map_err(io_err)?;
    ffi::wake_on_close(conn, wake_tx.clone()).map_err(io_err)?;
    let backlog = Arc::new(Backlog::default());
    let feeder = backlog.clone();
    let what_feed = what.clone();
    handle.spawn(async move {
        let overflowed = loop {
            let chunk = tokio::select! {
                _ = feeder.overflowed.cancelled() => break true,
                next = feeder.next() => match next {
                    Ok(chunk) => chunk,
                    Err(overflowed) => break overflowed,
                },
            };
            tokio::select! {
                _ = feeder.overflowed.cancelled() => break true,
                written = to_tokio.write_all(&chunk) => if written.is_err() {
                    feeder.abandon();
                    return;
                },
            }
        };
        match end {
            StreamEnd::Signal(ended) if overflowed || !we_closed_rx.load(Ordering::SeqCst) => {
                if overflowed {
                    let _ = ended.why.set(Close::new(
                        CloseCode::BackendError,
                        // Short: a WebSocket close reason holds 123 bytes.
                        format!(
                            "{what_feed}: client fell over {} MiB behind (libvirt streams have no flow control)",
                            STREAM_BACKLOG >> 20
                        ),
                    ));
                }
                ended.token.cancel();
            }
            // The pipe's other half is still held by the sending thread, so
            // dropping ours is not enough for end-of-stream.
            _ => {
                let _ = to_tokio.shutdown().await;
            }
        }
    });
    let receiver = stream.clone();
    let rx_conn = conn.clone();
    let what_rx = what.clone();
    std::thread::Builder::new()
        .name("virstream-recv".into())
        .spawn(move || {
            let mut buf = vec![0u8; BRIDGE_BUF];
            let mut overflowed = false;
            loop {
                match ffi::stream_recv(&receiver, &mut buf) {
                    Ok(Some(0)) => break,
                    Ok(Some(n)) => {
                        if !backlog.push(&buf[..n]) {
                            tracing::warn!(stream = %what_rx, limit = STREAM_BACKLOG, "the reader fell too far behind a libvirt stream; ending it (channel_via = \"socket\" has flow control)");
                            overflowed = true;
                            break;
                        }
                    }
                    Ok(None) => {
                        if wake_rx.recv().is_err() {
                            break;
                        }
                        // A dead connection leaves the stream "empty", not
                        // failed.
                        if !rx_conn.is_alive().unwrap_or(false) {
                            tracing::debug!(stream = %what_rx, "libvirt connection closed");
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(stream = %what_rx, error = %e.message(), "libvirt stream ended");
                        break;
                    }
                }
            }
            ffi::stream_unwatch(&receiver);
            if overflowed {
                let _ = receiver.abort();
            }
            backlog.finish(overflowed);
        })?;
    std::thread::Builder::new()
        .name("virstream-send".into())
        .spawn(move || {
            let mut buf = vec![0u8; BRIDGE_BUF];
            let failed = 'pipe: loop {
                let n = match handle.block_on(from_tokio.read(&mut buf)) {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => n,
                };
                let mut sent = 0;
                while sent < n {
                    match ffi::stream_send(&stream, &buf[sent..n]) {
                        Ok(Some(k)) if k > 0 => sent += k,
                        // libvirt's send queue is full (rare: the daemon is
                        // slow to take input); try again shortly.
                        Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                        Err(e) => {
                            tracing::debug!(stream = %what, error = %e.message(), "libvirt stream send failed");
                            break 'pipe true;
                        }
                    }
                }
            };
            if !failed {
                we_closed.store(true, Ordering::SeqCst);
            }
            let _ = stream.abort();
            // The receiving thread may be waiting for an event that an
            // aborted stream never sends.
            let _ = wake_tx.try_send(());
            if failed {
                // The stream is dead and the session ends saying why (the
                // receiving side signals it); until then the client's input
                // goes nowhere, rather than failing the session first with
                // a bare "broken pipe".
                while let Ok(1..) = handle.block_on(from_tokio.read(&mut buf)) {}
            }
        })?;
    Ok(Box::new(theirs))
}
