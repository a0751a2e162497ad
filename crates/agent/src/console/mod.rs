//! Serial consoles: one persistent connection per console, shared by any
//! number of sessions.
//!
//! A [`ConsoleHub`] owns the connection to one serial console and keeps it
//! open whether or not anybody is attached, reconnecting when it drops. How
//! it connects is the backend's [`Connector`]: a unix socket to a QEMU
//! chardev (`qemu`), or `virDomainOpenConsole` (`libvirt`); everything after
//! the connection is the same code for both. Everything the guest prints goes, in this order and under
//! one lock, into the [`Scrollback`], the queue of the console's log file
//! ([`log`]: size-capped, written by its own thread, never waited for), and
//! the broadcast to attached sessions, so a session attaching sees the
//! scrollback followed by live output with no gap and no repeat.
//!
//! Exactly one session holds the keyboard. An interactive session takes it
//! when it is free (at attach, or on its first keystroke after the holder
//! left); `force` takes it from the holder, who is told. Read-only
//! sessions never write.

pub mod log;
mod scrollback;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use vmgate_relay::backoff::Backoff;
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_wire::{Close, CloseCode, Frame, Mode};

pub use log::{ConsoleLog, ConsoleLogs};
pub use scrollback::Scrollback;

use crate::duplex::Duplex;

/// What a [`Connector`] returns: a fresh byte stream to the console.
pub type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Duplex>>> + Send>>;

/// Opens a new connection to a console each time the hub (re)connects. The
/// argument is `force`: take the console over from another client that
/// holds it (libvirt's `VIR_DOMAIN_CONSOLE_FORCE`); backends without such a
/// notion ignore it.
pub type Connector = Arc<dyn Fn(bool) -> ConnectFuture + Send + Sync>;

/// A connector to a QEMU chardev's unix socket (`-chardev socket,server=on`).
pub fn unix_connector(path: PathBuf) -> Connector {
    Arc::new(move |_force| {
        let path = path.clone();
        Box::pin(async move {
            let s = UnixStream::connect(&path).await?;
            Ok(Box::new(s) as Box<dyn Duplex>)
        })
    })
}

/// Bytes read from the chardev at once. Serial output is slow; small reads
/// keep the broadcast queue's memory bound small.
const SERIAL_CHUNK: usize = 4096;
/// Chunks queued per session before a slow session skips output (the
/// scrollback and the log still have it).
const BROADCAST_DEPTH: usize = 256;
/// Notices queued per session; more are dropped (they are advisory).
const NOTICE_DEPTH: usize = 16;
/// Keystroke chunks queued towards the chardev.
const INPUT_DEPTH: usize = 64;
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Where a console lives and how much of it to remember.
#[derive(Clone)]
pub struct ConsoleSpec {
    pub guest: String,
    pub name: String,
    /// How to reach the console (see [`unix_connector`]).
    pub connector: Connector,
    /// Where the log of everything the console printed goes
    /// (`<guest>.<name>.log` there).
    pub logs: ConsoleLogs,
    pub scrollback_bytes: usize,
}

struct HubState {
    scrollback: Scrollback,
    /// The log file's queue (never blocks).
    log: ConsoleLog,
    /// The session holding the keyboard.
    writer: Option<u64>,
    /// Attached sessions and where to send their notices.
    sessions: HashMap<u64, mpsc::Sender<String>>,
}

struct HubInner {
    spec: ConsoleSpec,
    state: Mutex<HubState>,
    output: broadcast::Sender<Bytes>,
    input: mpsc::Sender<Bytes>,
    connected: watch::Sender<bool>,
    /// Set by [`ConsoleHub::reconnect_forced`]: the next attempt forces.
    force_next: AtomicBool,
    /// Wakes the connection loop out of its back-off.
    retry_now: Notify,
    /// Why the last connection attempt failed, for refusals.
    last_error: Mutex<Option<String>>,
}

/// One serial console, connected for as long as the agent runs.
#[derive(Clone)]
pub struct ConsoleHub {
    inner: Arc<HubInner>,
}

impl ConsoleHub {
    /// Starts the hub's connection task; it stops when `shutdown` fires.
    pub fn start(spec: ConsoleSpec, shutdown: CancellationToken) -> ConsoleHub {
        let log = spec.logs.open(&spec.guest, &spec.name);
        let (input_tx, input_rx) = mpsc::channel(INPUT_DEPTH);
        let inner = Arc::new(HubInner {
            state: Mutex::new(HubState {
                scrollback: Scrollback::new(spec.scrollback_bytes),
                log,
                writer: None,
                sessions: HashMap::new(),
            }),
            spec,
            output: broadcast::channel(BROADCAST_DEPTH).0,
            input: input_tx,
            connected: watch::channel(false).0,
            force_next: AtomicBool::new(false),
            retry_now: Notify::new(),
            last_error: Mutex::new(None),
        });
        tokio::spawn(connection_loop(inner.clone(), input_rx, shutdown));
        ConsoleHub { inner }
    }

    /// Whether the chardev is connected now.
    pub fn connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Why the last connection attempt failed (`None` once connected).
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().expect("hub lock").clone()
    }

    /// Makes the next connection attempt now instead of after the back-off;
    /// with `force`, one that takes the console over from whoever holds it
    /// (`--force`). Does nothing while connected.
    pub fn retry_now(&self, force: bool) {
        if !self.connected() {
            if force {
                self.inner.force_next.store(true, Ordering::SeqCst);
            }
            self.inner.retry_now.notify_one();
        }
    }

    /// Changes of the connection state.
    pub fn watch_connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    /// The scrollback as it is now.
    pub fn scrollback(&self) -> Vec<u8> {
        self.inner
            .state
            .lock()
            .expect("hub lock")
            .scrollback
            .snapshot()
    }

    /// Attaches a session: it first receives the scrollback, then live output.
    pub fn attach(&self, session: u64, mode: Mode, force: bool) -> (ConsoleRx, ConsoleTx) {
        let (notice_tx, notice_rx) = mpsc::channel(NOTICE_DEPTH);
        let mut st = self.inner.state.lock().expect("hub lock");
        let output = self.inner.output.subscribe();
        let backlog = Bytes::from(st.scrollback.snapshot());
        let greeting = if mode == Mode::ReadOnly {
            "read-only session: your input is not sent to the guest".to_string()
        } else if st.writer.is_none() {
            st.writer = Some(session);
            "you hold the keyboard".to_string()
        } else if force {
            let old = st.writer.replace(session).expect("checked above");
            if let Some(tx) = st.sessions.get(&old) {
                let _ = tx.try_send(
                    "keyboard taken over by another session (--force); you are now read-only"
                        .into(),
                );
            }
            "you took the keyboard over (--force)".to_string()
        } else {
            "another session holds the keyboard: you are read-only until it leaves (or attach with --force)".to_string()
        };
        st.sessions.insert(session, notice_tx);
        drop(st);
        let reg = Arc::new(Registration {
            hub: self.inner.clone(),
            session,
        });
        (
            ConsoleRx {
                backlog: Some(backlog),
                greeting: Some(greeting),
                output,
                notices: notice_rx,
                _reg: reg.clone(),
            },
            ConsoleTx {
                mode,
                told_read_only: false,
                reg,
            },
        )
    }
}

/// Removes a session from its hub when both its halves are gone.
struct Registration {
    hub: Arc<HubInner>,
    session: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut st = self.hub.state.lock().expect("hub lock");
        st.sessions.remove(&self.session);
        if st.writer == Some(self.session) {
            st.writer = None;
        }
    }
}

/// The console's output for one session, as frames.
pub struct ConsoleRx {
    backlog: Option<Bytes>,
    greeting: Option<String>,
    output: broadcast::Receiver<Bytes>,
    notices: mpsc::Receiver<String>,
    _reg: Arc<Registration>,
}

impl FrameRx for ConsoleRx {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        if let Some(b) = self.backlog.take().filter(|b| !b.is_empty()) {
            return Ok(Some(Frame::Data(b)));
        }
        if let Some(g) = self.greeting.take() {
            return Ok(Some(Frame::Notice(g)));
        }
        tokio::select! {
            biased;
            Some(n) = self.notices.recv() => Ok(Some(Frame::Notice(n))),
            out = self.output.recv() => match out {
                Ok(b) => Ok(Some(Frame::Data(b))),
                Err(broadcast::error::RecvError::Lagged(n)) => Ok(Some(Frame::Notice(format!(
                    "this session fell behind and skipped {n} chunks of output; the console log has them"
                )))),
                Err(broadcast::error::RecvError::Closed) => Err(Close::new(
                    CloseCode::GoingAway,
                    "the agent is shutting down",
                )),
            },
        }
    }
}

/// One session's keyboard: input reaches the guest only from the holder.
pub struct ConsoleTx {
    mode: Mode,
    /// Whether this session was already told its input is dropped.
    told_read_only: bool,
    reg: Arc<Registration>,
}

impl ConsoleTx {
    fn notice(&self, st: &HubState, text: &str) {
        if let Some(tx) = st.sessions.get(&self.reg.session) {
            let _ = tx.try_send(text.into());
        }
    }
}

impl FrameTx for ConsoleTx {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        // A console has no end of input: a client's stdin ending (a pipe)
        // must not end the session, so Eof is ignored here.
        let Frame::Data(bytes) = frame else {
            return Ok(());
        };
        let hub = &self.reg.hub;
        let may_write = {
            let mut st = hub.state.lock().expect("hub lock");
            match (self.mode, st.writer) {
                (Mode::ReadOnly, _) => false,
                (Mode::Interactive, Some(w)) => w == self.reg.session,
                (Mode::Interactive, None) => {
                    st.writer = Some(self.reg.session);
                    self.told_read_only = false;
                    self.notice(&st, "you hold the keyboard");
                    true
                }
            }
        };
        if !may_write {
            if !self.told_read_only {
                self.told_read_only = true;
                let st = hub.state.lock().expect("hub lock");
                self.notice(
                    &st,
                    "input dropped: this session does not hold the keyboard",
                );
            }
            return Ok(());
        }
        self.told_read_only = false;
        // Bounded: a guest that does not read its serial port slows the
        // typist down instead of queueing without end.
        hub.input
            .send(bytes)
            .await
            .map_err(|_| Close::new(CloseCode::GoingAway, "the agent is shutting down"))
    }
}

/// Keeps the console connected until shutdown, reconnecting when it drops
/// (QEMU restarted, libvirtd restarted, another client took it over).
async fn connection_loop(
    hub: Arc<HubInner>,
    mut input: mpsc::Receiver<Bytes>,
    shutdown: CancellationToken,
) {
    let spec = &hub.spec;
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    loop {
        let force = hub.force_next.swap(false, Ordering::SeqCst);
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = (spec.connector)(force) => s,
        };
        match stream {
            Ok(stream) => {
                tracing::info!(guest = %spec.guest, console = %spec.name, force, "serial console connected");
                backoff.reset();
                *hub.last_error.lock().expect("hub lock") = None;
                hub.connected.send_replace(true);
                let why = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    why = pump_chardev(&hub, stream, &mut input) => why,
                };
                hub.connected.send_replace(false);
                tracing::warn!(guest = %spec.guest, console = %spec.name, reason = %why, "serial console disconnected; reconnecting");
                let st = hub.state.lock().expect("hub lock");
                for tx in st.sessions.values() {
                    let _ = tx.try_send(format!(
                        "serial console of {} disconnected ({why}); reconnecting",
                        spec.guest
                    ));
                }
            }
            Err(e) => {
                tracing::debug!(guest = %spec.guest, console = %spec.name, error = %e, "serial console not reachable");
                *hub.last_error.lock().expect("hub lock") = Some(e.to_string());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_wait()) => {}
            _ = hub.retry_now.notified() => {}
        }
    }
}

/// Moves bytes between the console and the hub until the connection ends.
async fn pump_chardev(
    hub: &HubInner,
    stream: Box<dyn Duplex>,
    input: &mut mpsc::Receiver<Bytes>,
) -> String {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(SERIAL_CHUNK);
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => return "the console connection ended".into(),
                Ok(_) => hub.publish(buf.split().freeze()),
                Err(e) => return format!("read error: {e}"),
            },
            Some(keys) = input.recv() => {
                if let Err(e) = wr.write_all(&keys).await {
                    return format!("write error: {e}");
                }
            }
        }
    }
}

impl HubInner {
    fn publish(&self, chunk: Bytes) {
        let mut st = self.state.lock().expect("hub lock");
        st.scrollback.push(&chunk);
        // Queued for the log's own thread: no file I/O under this lock.
        st.log.write(chunk.clone());
        // No receiver is fine: nobody attached, the scrollback has it.
        let _ = self.output.send(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    /// A connector handing the test the guest's end of each connection; it
    /// refuses ("held by another client") unless forced, once `refuse` is set.
    fn test_connector(
        refuse: Arc<AtomicBool>,
    ) -> (Connector, mpsc::Receiver<(bool, DuplexStream)>) {
        let (tx, rx) = mpsc::channel(4);
        let connector: Connector = Arc::new(move |force| {
            let (tx, refuse) = (tx.clone(), refuse.clone());
            Box::pin(async move {
                if refuse.load(Ordering::SeqCst) && !force {
                    return Err(std::io::Error::other("held by another client"));
                }
                let (ours, guest) = tokio::io::duplex(1024);
                tx.send((force, guest)).await.expect("test alive");
                Ok(Box::new(ours) as Box<dyn Duplex>)
            })
        });
        (connector, rx)
    }

    /// The next connection the hub made (the deadline bounds a failing
    /// test only).
    async fn next(conns: &mut mpsc::Receiver<(bool, DuplexStream)>) -> (bool, DuplexStream) {
        tokio::time::timeout(Duration::from_secs(10), conns.recv())
            .await
            .expect("the hub never connected")
            .unwrap()
    }

    async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        for _ in 0..500 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} never happened");
    }

    #[tokio::test]
    async fn the_hub_keeps_output_across_reconnects_and_forces_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let refuse = Arc::new(AtomicBool::new(false));
        let (connector, mut conns) = test_connector(refuse.clone());
        let logs = ConsoleLogs::new(dir.path(), Default::default()).unwrap();
        let spec = ConsoleSpec {
            guest: "g".into(),
            name: "serial0".into(),
            connector,
            logs,
            scrollback_bytes: 1024,
        };
        let shutdown = CancellationToken::new();
        let hub = ConsoleHub::start(spec, shutdown.clone());
        let (forced, mut guest) = next(&mut conns).await;
        assert!(!forced);
        guest.write_all(b"first boot\n").await.unwrap();
        wait_for("output in scrollback", || {
            String::from_utf8_lossy(&hub.scrollback()).contains("first boot")
        })
        .await;

        // The console is taken by somebody else: the hub retries without
        // force and says why it is not connected.
        refuse.store(true, Ordering::SeqCst);
        drop(guest);
        wait_for("a refused reconnect", || {
            !hub.connected() && hub.last_error().is_some_and(|e| e.contains("held"))
        })
        .await;
        assert!(conns.try_recv().is_err(), "connected without force");

        // A forced retry takes it back; old output is still there.
        hub.retry_now(true);
        let (forced, mut guest) = next(&mut conns).await;
        assert!(forced);
        guest.write_all(b"second\n").await.unwrap();
        wait_for("new output", || {
            String::from_utf8_lossy(&hub.scrollback()).contains("second")
        })
        .await;
        let text = String::from_utf8_lossy(&hub.scrollback()).into_owned();
        assert!(
            text.contains("first boot") && text.contains("second"),
            "{text}"
        );
        wait_for("both in the log", || {
            std::fs::read_to_string(dir.path().join("g.serial0.log")).unwrap_or_default()
                == "first boot\nsecond\n"
        })
        .await;
        shutdown.cancel();
    }

    /// A disk that does not answer holds up neither the console nor its
    /// sessions: the hub reads on, every session gets the output, the
    /// scrollback has it, and the log counts what it could not queue.
    // Two workers: a hub that blocked one would still let the deadline fire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The guard is the stuck disk: only the log's writer thread waits on it.
    #[allow(clippy::await_holding_lock)]
    async fn a_stuck_log_disk_holds_up_neither_the_console_nor_its_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (connector, mut conns) = test_connector(Arc::new(AtomicBool::new(false)));
        let logs = ConsoleLogs::new(dir.path(), Default::default()).unwrap();
        let stall = logs.stall();
        let spec = ConsoleSpec {
            guest: "g".into(),
            name: "serial0".into(),
            connector,
            logs: logs.clone(),
            scrollback_bytes: 1 << 20,
        };
        let shutdown = CancellationToken::new();
        let hub = ConsoleHub::start(spec, shutdown.clone());
        let (_, mut guest) = next(&mut conns).await;
        wait_for("connected", || hub.connected()).await;
        let (mut rx, _tx) = hub.attach(1, Mode::ReadOnly, false);
        // 2 MiB, far more than the log's queue holds, in 1 KiB writes, then
        // an end marker. The test connection's buffer is 1 KiB: a hub that
        // waited for the log would stop the writer at once.
        let total = 2 << 20;
        let writer = tokio::spawn(async move {
            for i in 0..(total / 1024) {
                guest
                    .write_all(&[b'a' + (i % 26) as u8; 1024])
                    .await
                    .unwrap();
            }
            guest.write_all(b"END").await.unwrap();
            guest
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        loop {
            let frame = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("the session stalled behind the log")
                .unwrap();
            // A session that fell behind is told and skips; it never waits.
            if let Some(Frame::Data(d)) = frame {
                got += d.len();
                if d.ends_with(b"END") {
                    break;
                }
            }
        }
        let _guest = tokio::time::timeout_at(deadline, writer)
            .await
            .expect("the console stalled behind the log")
            .unwrap();
        assert!(got > 0);
        let sb = hub.scrollback();
        assert_eq!(sb.len(), 1 << 20, "the scrollback is full");
        assert!(sb.ends_with(b"END"));
        let s = logs.stats();
        assert!(s.dropped_chunks > 0 && s.dropped_bytes > 0, "{s:?}");
        drop(stall);
        shutdown.cancel();
    }
}
