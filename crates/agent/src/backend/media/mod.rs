//! Removable-media drives: a session on a `media` channel inserts a medium
//! its client serves over NBD, ejects one, or asks what is in the drive
//! (docs/media.md; the stream's messages are `vmgate_nbd::media`).
//!
//! An insert, in order: the drive is taken (one medium per drive; `force`
//! ejects the one in it first); the agent runs the NBD handshake with the
//! client's server itself, under a deadline; it makes a private socket
//! ([`socket`]) and has QEMU add and insert the medium over QMP ([`tray`]),
//! answering QEMU's own handshake locally, so QEMU, whose main loop waits
//! while its NBD client negotiates, never waits on the network; then it
//! relays the transmission phase unchanged both ways, following it with
//! [`vmgate_nbd::Monitor`] (reads only from QEMU, replies only to requests
//! in flight from the client, bytes read counted).
//!
//! The medium is ejected when the client asks (EJECT, which Ctrl+C sends),
//! another session ejects it or forces an insert, the client goes away, a
//! read waits longer than [`STALL`], either side breaks the protocol, the
//! agent stops, or QEMU drops the connection. A clean eject keeps relaying
//! while QEMU removes the medium, so reads in flight finish; otherwise, or
//! after [`EJECT_GRACE`], the agent first cuts QEMU's NBD connection:
//! QEMU drains a medium before it removes it, and that drain must never
//! wait on the network. The guest then gets EIO for what was in flight,
//! never a hang.

pub mod socket;
pub mod tray;

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vmgate_nbd::media::{self, Decoder, Direction, Item};
use vmgate_nbd::{Handshake, Monitor};
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_wire::{Close, CloseCode, Frame, Mode, OpenRequest};

use crate::gateway_stream::{GatewayRx, GatewayTx};

pub use socket::{Endpoint, MediaDir};
pub use tray::Tray;

/// How long the client's NBD server has for its handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// A read unanswered this long ends the session: the guest gets EIO
/// rather than a drive that hangs (Linux gives a CD-ROM command 30 s).
pub const STALL: Duration = Duration::from_secs(20);
/// How long a clean eject relays reads in flight before it cuts QEMU's
/// connection.
pub const EJECT_GRACE: Duration = Duration::from_secs(2);
/// How long an eject or a forced insert waits for the drive to be empty.
const EMPTY_WAIT: Duration = Duration::from_secs(30);
/// Bytes read from QEMU's socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// What a read-only session is told when it asks to change the drive.
pub const READ_ONLY_REFUSAL: &str =
    "a read-only ticket cannot insert or eject media: ask for an interactive ticket";

/// One removable-media drive of a guest.
pub struct Drive {
    pub guest: String,
    pub name: String,
    pub tray: Tray,
    /// Where each medium's private socket directory is made.
    media: MediaDir,
    held: Mutex<Option<Holder>>,
    released: Notify,
}

/// The session that holds a drive, and its medium.
struct Holder {
    session: u64,
    medium: String,
    /// 0 until the client's server said.
    size: u64,
    since: Instant,
    counts: Arc<Counts>,
    /// Fired, with `why` set, to eject from outside the session.
    eject: CancellationToken,
    why: Arc<Mutex<Option<Close>>>,
}

#[derive(Default)]
struct Counts {
    bytes_read: AtomicU64,
    reads: AtomicU64,
    in_flight: AtomicU64,
}

impl Counts {
    fn update(&self, m: &Monitor) {
        self.bytes_read.store(m.bytes_read, Ordering::Relaxed);
        self.reads.store(m.reads, Ordering::Relaxed);
        self.in_flight
            .store(m.in_flight() as u64, Ordering::Relaxed);
    }
}

/// Frees the drive when its session ends.
struct Held {
    drive: Arc<Drive>,
    session: u64,
    eject: CancellationToken,
    why: Arc<Mutex<Option<Close>>>,
    counts: Arc<Counts>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut h = self.drive.held.lock().expect("drive lock");
        if h.as_ref().is_some_and(|h| h.session == self.session) {
            *h = None;
            self.drive.released.notify_waiters();
        }
    }
}

/// How a media session ended, for the agent's log line.
pub struct Ended {
    pub close: Close,
    /// `insert`, `eject`, `status`, or `none` (refused before asking).
    pub op: &'static str,
    pub bytes_read: u64,
    pub reads: u64,
}

impl Ended {
    fn op(op: &'static str, close: Close) -> Ended {
        Ended {
            close,
            op,
            bytes_read: 0,
            reads: 0,
        }
    }
}

fn node_name() -> String {
    let mut b = [0u8; 8];
    // A clash only costs a refused insert (QEMU's node names are unique).
    let _ = getrandom::fill(&mut b);
    format!("vmgate-{:016x}", u64::from_be_bytes(b))
}

impl Drive {
    /// A drive `name` of `guest`; media sockets go in `media`.
    pub fn new(guest: &str, name: &str, tray: Tray, media: MediaDir) -> Arc<Drive> {
        Arc::new(Drive {
            guest: guest.into(),
            name: name.into(),
            tray,
            media,
            held: Mutex::new(None),
            released: Notify::new(),
        })
    }

    fn what(&self) -> String {
        format!("drive {} of {}", self.name, self.guest)
    }

    /// The drive and its medium, as STATUS answers.
    pub fn status(&self) -> media::Status {
        let held = self.held.lock().expect("drive lock");
        media::Status {
            guest: self.guest.clone(),
            drive: self.name.clone(),
            medium: held.as_ref().map(|h| media::Medium {
                name: h.medium.clone(),
                size: h.size,
                bytes_read: h.counts.bytes_read.load(Ordering::Relaxed),
                reads: h.counts.reads.load(Ordering::Relaxed),
                in_flight: h.counts.in_flight.load(Ordering::Relaxed),
                inserted_secs: h.since.elapsed().as_secs(),
                session: h.session,
            }),
        }
    }

    /// Asks the holder, if any, to eject with `why`; its session.
    fn eject_holder(&self, why: Close) -> Option<u64> {
        let held = self.held.lock().expect("drive lock");
        let h = held.as_ref()?;
        *h.why.lock().expect("why lock") = Some(why);
        h.eject.cancel();
        Some(h.session)
    }

    /// Waits until no session holds the drive, at most `limit`.
    async fn wait_empty(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let released = self.released.notified();
                tokio::pin!(released);
                // Registered before the check, so a release in between is
                // not missed.
                released.as_mut().enable();
                if self.held.lock().expect("drive lock").is_none() {
                    return;
                }
                released.await;
            }
        })
        .await
        .is_ok()
    }

    /// Takes the drive for `session`'s medium `medium`. Without `force`, a
    /// drive that holds a medium is refused; with it, that medium is
    /// ejected first.
    async fn take(
        self: &Arc<Self>,
        session: u64,
        medium: &str,
        force: bool,
    ) -> Result<Held, Close> {
        for _ in 0..3 {
            {
                let mut held = self.held.lock().expect("drive lock");
                match held.as_ref() {
                    None => {
                        let h = Holder {
                            session,
                            medium: medium.into(),
                            size: 0,
                            since: Instant::now(),
                            counts: Arc::default(),
                            eject: CancellationToken::new(),
                            why: Arc::default(),
                        };
                        let guard = Held {
                            drive: self.clone(),
                            session,
                            eject: h.eject.clone(),
                            why: h.why.clone(),
                            counts: h.counts.clone(),
                        };
                        *held = Some(h);
                        return Ok(guard);
                    }
                    Some(h) if !force => {
                        return Err(Close::new(
                            CloseCode::ChannelInUse,
                            format!(
                                "{} holds {} (session {}): eject it first or use --force",
                                self.what(),
                                h.medium,
                                h.session
                            ),
                        ))
                    }
                    Some(h) => {
                        *h.why.lock().expect("why lock") = Some(Close::new(
                            CloseCode::TakenOver,
                            format!("session {session} inserted another medium with --force"),
                        ));
                        h.eject.cancel();
                    }
                }
            }
            if !self.wait_empty(EMPTY_WAIT).await {
                break;
            }
        }
        Err(Close::new(
            CloseCode::BackendError,
            format!(
                "the medium in {} did not eject within {EMPTY_WAIT:?}",
                self.what()
            ),
        ))
    }
}

/// The client's messages, decoded as they arrive.
struct ClientItems<'a> {
    rx: &'a mut GatewayRx,
    decoder: Decoder,
    items: VecDeque<Item>,
    ended: bool,
}

impl ClientItems<'_> {
    /// The next message (or NBD piece); `Ok(None)` when the client ended
    /// its side; an error when it closed or broke the stream.
    async fn next(&mut self) -> Result<Option<Item>, Close> {
        loop {
            if let Some(i) = self.items.pop_front() {
                return Ok(Some(i));
            }
            if self.ended {
                return Ok(None);
            }
            match self.rx.recv().await? {
                Some(Frame::Data(b)) => {
                    let mut out = Vec::new();
                    self.decoder.feed(b, &mut out).map_err(|e| {
                        Close::new(
                            CloseCode::ProtocolError,
                            format!("malformed media stream from the client: {e}"),
                        )
                    })?;
                    self.items.extend(out);
                }
                Some(Frame::Eof) | None => self.ended = true,
                Some(Frame::Close(c)) => return Err(c),
                Some(_) => {}
            }
        }
    }
}

async fn send_item(tx: &mut GatewayTx, item: &Item) -> Result<(), Close> {
    tx.send(Frame::Data(media::encode(item))).await
}

async fn send_nbd(tx: &mut GatewayTx, bytes: &[u8]) -> Result<(), Close> {
    for m in media::nbd_messages(bytes) {
        tx.send(Frame::Data(m)).await?;
    }
    Ok(())
}

/// Serves one session on `drive`: each request is a message. STATUS and
/// EJECT are answered and end the session; an INSERT serves a medium until
/// it is ejected, and when the client itself asked for that eject the
/// session waits for its next request (the browser's page keeps one session
/// for every medium it inserts). Waiting costs a stream, like an idle
/// console: the gateway's idle timeout applies. Returns the Close to end it
/// with; the caller sends it.
pub async fn serve(
    req: &OpenRequest,
    drive: Arc<Drive>,
    rx: &mut GatewayRx,
    tx: &mut GatewayTx,
    stop: impl Future<Output = Close> + Send,
) -> Ended {
    let mut client = ClientItems {
        rx,
        decoder: Decoder::new(Direction::ClientToAgent),
        items: VecDeque::new(),
        ended: false,
    };
    tokio::pin!(stop);
    let read_only = req.mode == Mode::ReadOnly;
    let (mut bytes_read, mut reads) = (0u64, 0u64);
    let mut op = "none";
    loop {
        let item = tokio::select! {
            close = &mut stop => return Ended { close, op, bytes_read, reads },
            item = client.next() => item,
        };
        let (b, r) = (bytes_read, reads);
        let ended = move |op, close| Ended {
            close,
            op,
            bytes_read: b,
            reads: r,
        };
        let first = match item {
            Ok(Some(item)) => item,
            Ok(None) => return ended(op, Close::normal()),
            Err(close) => return ended(op, close),
        };
        match first {
            Item::Status => {
                let status = drive.status();
                let close = match send_item(tx, &Item::Report(status)).await {
                    Ok(()) => Close::new(CloseCode::Normal, "status sent"),
                    Err(c) => c,
                };
                return ended("status", close);
            }
            Item::Eject | Item::Insert { .. } if read_only => {
                let op = if first == Item::Eject {
                    "eject"
                } else {
                    "insert"
                };
                tracing::warn!(session = req.session, guest = %req.guest, drive = %req.channel, op,
                    "refused: a read-only session asked to change the drive");
                return ended(op, Close::new(CloseCode::TicketScope, READ_ONLY_REFUSAL));
            }
            Item::Eject => return ended("eject", eject_other(req, &drive).await),
            Item::Insert { name } => {
                let (done, again) = insert(req, &drive, &name, &mut client, tx, &mut stop).await;
                bytes_read = bytes_read.saturating_add(done.bytes_read);
                reads = reads.saturating_add(done.reads);
                op = "insert";
                if !again {
                    return ended("insert", done.close);
                }
            }
            // Replies a cut connection left behind, after an insert.
            Item::Nbd(_) if op == "insert" => {}
            _ => {
                return ended(
                    op,
                    Close::new(
                        CloseCode::ProtocolError,
                        "a media request is insert, eject or status",
                    ),
                )
            }
        }
    }
}

/// Ejects what another session holds in the drive.
async fn eject_other(req: &OpenRequest, drive: &Drive) -> Close {
    let why = Close::new(
        CloseCode::Normal,
        format!(
            "medium ejected by session {} (vmgate media eject)",
            req.session
        ),
    );
    match drive.eject_holder(why) {
        None => Close::new(CloseCode::Normal, format!("{} is empty", drive.what())),
        Some(holder) => {
            if drive.wait_empty(EMPTY_WAIT).await {
                tracing::info!(session = req.session, holder, drive = %drive.what(), "medium ejected on request");
                Close::new(
                    CloseCode::Normal,
                    format!("medium ejected from {}", drive.what()),
                )
            } else {
                Close::new(
                    CloseCode::BackendError,
                    format!(
                        "the medium in {} did not eject within {EMPTY_WAIT:?}",
                        drive.what()
                    ),
                )
            }
        }
    }
}

/// Negotiates with the client's NBD server: the export's size.
async fn client_handshake(client: &mut ClientItems<'_>, tx: &mut GatewayTx) -> Result<u64, Close> {
    let mut hs = Handshake::new("");
    let breach = |what: String| {
        Close::new(
            CloseCode::ProtocolError,
            format!("the client's NBD server: {what}"),
        )
    };
    loop {
        let piece = match client.next().await? {
            Some(Item::Nbd(b)) => b,
            Some(_) => {
                return Err(breach(
                    "a media message before its NBD handshake ended".into(),
                ))
            }
            None => return Err(breach("ended before its handshake".into())),
        };
        let done = hs.receive(&piece).map_err(|e| breach(e.to_string()))?;
        let out = hs.take_output();
        if !out.is_empty() {
            send_nbd(tx, &out).await?;
        }
        if let Some((n, used)) = done {
            // A server speaks in transmission only to answer requests.
            if used < piece.len() || !client.items.is_empty() {
                return Err(breach("sent bytes after its handshake".into()));
            }
            if n.size == 0 {
                return Err(breach("the medium is empty (0 bytes)".into()));
            }
            // QEMU takes sizes as signed 64-bit numbers.
            if n.size > i64::MAX as u64 {
                return Err(breach(format!("a medium of {} bytes is too large", n.size)));
            }
            return Ok(n.size);
        }
    }
}

/// Serves medium `name` until it is ejected. The flag says whether the
/// client asked for that eject and the session goes on.
async fn insert(
    req: &OpenRequest,
    drive: &Arc<Drive>,
    name: &str,
    client: &mut ClientItems<'_>,
    tx: &mut GatewayTx,
    stop: &mut (impl Future<Output = Close> + Send + Unpin),
) -> (Ended, bool) {
    let done = |close| (Ended::op("insert", close), false);
    let started = Instant::now();
    let held = match drive.take(req.session, name, req.force).await {
        Ok(h) => h,
        Err(close) => return done(close),
    };
    let size = match tokio::time::timeout(HANDSHAKE_DEADLINE, client_handshake(client, tx)).await
    {
        Ok(Ok(size)) => size,
        Ok(Err(close)) => return done(close),
        Err(_) => {
            return done(Close::new(
                    CloseCode::ProtocolError,
                    format!("the client's NBD server did not finish its handshake within {HANDSHAKE_DEADLINE:?}"),
                ),
            )
        }
    };
    if let Some(h) = drive.held.lock().expect("drive lock").as_mut() {
        if h.session == req.session {
            h.size = size;
        }
    }
    let node = node_name();
    let mut endpoint = match Endpoint::create(&drive.media, &node) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot make a medium's socket");
            return done(Close::new(CloseCode::BackendError, e.to_string()));
        }
    };
    let path = endpoint.path().to_owned();
    let (inserted, accepted) =
        tokio::join!(drive.tray.insert(&node, &path), endpoint.accept_qemu(size));
    drop(endpoint);
    let (qemu, leftover) = match (inserted, accepted) {
        (Ok(()), Ok(conn)) => conn,
        (inserted, accepted) => {
            let why = match (inserted, accepted) {
                (
                    Err(
                        e @ (tray::TrayError::Unreachable(_)
                        | tray::TrayError::LibvirtUnreachable(_)),
                    ),
                    _,
                ) => {
                    return done(Close::new(
                        CloseCode::GuestDown,
                        format!("guest {} is not running ({e})", req.guest),
                    ))
                }
                (Err(e), _) => e.to_string(),
                (Ok(()), Err(e)) => {
                    // Inserted without a connection: take it out again.
                    let _ = drive.tray.eject(&node).await;
                    e.to_string()
                }
                (Ok(()), Ok(_)) => unreachable!(),
            };
            tracing::warn!(session = req.session, drive = %drive.what(), reason = %why, "QEMU did not take the medium");
            return done(Close::new(
                CloseCode::BackendError,
                format!("QEMU did not take the medium: {why}"),
            ));
        }
    };
    tracing::info!(session = req.session, guest = %req.guest, drive = %req.channel, medium = ?name,
        size, node = %node, took_ms = started.elapsed().as_millis() as u64, "medium inserted");
    if let Err(close) = send_item(tx, &Item::Inserted(media::Inserted { size })).await {
        let _ = drive.tray.eject(&node).await;
        return done(close);
    }
    let monitor = Mutex::new(Monitor::new());
    let (close, asked) = bridge(
        client, tx, qemu, leftover, drive, &node, &held, &monitor, stop,
    )
    .await;
    let (bytes_read, reads) = {
        let m = monitor.lock().expect("monitor lock");
        (m.bytes_read, m.reads)
    };
    tracing::info!(session = req.session, guest = %req.guest, drive = %req.channel, medium = ?name,
        bytes_read, reads, reason = %close, "medium ejected");
    let sent = send_item(tx, &Item::Ejected(media::Ejected { bytes_read, reads })).await;
    // The drive is free for the next insert before the session goes on.
    drop(held);
    let again = asked && sent.is_ok() && close.code == CloseCode::Normal;
    (
        Ended {
            close,
            op: "insert",
            bytes_read,
            reads,
        },
        again,
    )
}

/// How one direction of the bridge ended.
enum End {
    /// The client left, closed, or broke the media stream: cut QEMU's
    /// connection before ejecting.
    Client(Close),
    /// QEMU closed its connection.
    Qemu(Close),
    /// One side broke NBD: cut, eject, report.
    Breach(Close),
}

/// Client → QEMU: the client server's replies, checked, written as they
/// are. An EJECT from the client fires `asked` and the relay goes on.
async fn to_qemu(
    client: &mut ClientItems<'_>,
    qw: &mut OwnedWriteHalf,
    monitor: &Mutex<Monitor>,
    counts: &Counts,
    asked: &CancellationToken,
) -> End {
    loop {
        match client.next().await {
            Ok(Some(Item::Nbd(b))) => {
                {
                    let mut m = monitor.lock().expect("monitor lock");
                    if let Err(e) = m.from_server(&b) {
                        return End::Breach(Close::new(CloseCode::ProtocolError, e.to_string()));
                    }
                    counts.update(&m);
                }
                if let Err(e) = qw.write_all(&b).await {
                    return End::Qemu(Close::new(
                        CloseCode::BackendError,
                        format!("QEMU's connection to the medium broke: {e}"),
                    ));
                }
            }
            Ok(Some(Item::Eject)) => asked.cancel(),
            Ok(Some(_)) => {
                return End::Breach(Close::new(
                    CloseCode::ProtocolError,
                    "only NBD and eject messages may follow an insert",
                ))
            }
            Ok(None) => {
                return End::Client(Close::new(
                    CloseCode::Normal,
                    "the client stopped serving the medium",
                ))
            }
            Err(close) => return End::Client(close),
        }
    }
}

/// QEMU → client: QEMU's requests, checked, sent as NBD messages.
async fn from_qemu(
    qr: &mut OwnedReadHalf,
    tx: &mut GatewayTx,
    monitor: &Mutex<Monitor>,
    counts: &Counts,
    leftover: Vec<u8>,
) -> End {
    let mut first = Some(leftover);
    let mut buf = BytesMut::new();
    loop {
        let chunk: Bytes = match first.take() {
            Some(l) if !l.is_empty() => l.into(),
            _ => {
                buf.reserve(READ_CHUNK);
                match qr.read_buf(&mut buf).await {
                    Ok(0) => {
                        return End::Qemu(Close::new(
                            CloseCode::BackendError,
                            "QEMU closed the medium's NBD connection",
                        ))
                    }
                    Ok(_) => buf.split().freeze(),
                    Err(e) => {
                        return End::Qemu(Close::new(
                            CloseCode::BackendError,
                            format!("QEMU's connection to the medium broke: {e}"),
                        ))
                    }
                }
            }
        };
        {
            let mut m = monitor.lock().expect("monitor lock");
            if let Err(e) = m.from_client(&chunk, Instant::now()) {
                return End::Breach(Close::new(CloseCode::ProtocolError, e.to_string()));
            }
            counts.update(&m);
        }
        if let Err(close) = send_nbd(tx, &chunk).await {
            return End::Client(close);
        }
    }
}

/// Relays the transmission phase until the medium is ejected; returns the
/// session's Close.
#[allow(clippy::too_many_arguments)]
async fn bridge(
    client: &mut ClientItems<'_>,
    tx: &mut GatewayTx,
    qemu: UnixStream,
    leftover: Vec<u8>,
    drive: &Drive,
    node: &str,
    held: &Held,
    monitor: &Mutex<Monitor>,
    stop: impl Future<Output = Close> + Send,
) -> (Close, bool) {
    let fd = qemu.as_raw_fd();
    let (mut qr, mut qw) = qemu.into_split();
    // Ends QEMU's connection while the halves are still ours (so `fd` is
    // still this socket): QEMU fails what is in flight with EIO.
    let cut = |why: &str| {
        tracing::debug!(node, why, "cutting QEMU's NBD connection");
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    };
    let asked = CancellationToken::new();
    let up = to_qemu(client, &mut qw, monitor, &held.counts, &asked);
    let down = from_qemu(&mut qr, tx, monitor, &held.counts, leftover);
    tokio::pin!(up, down, stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut up_done, mut down_done) = (false, false);

    // Serving, until something asks for the eject: (reason, clean).
    let mut asked_by_client = false;
    let (mut close, clean) = loop {
        tokio::select! {
            end = &mut up => {
                up_done = true;
                match end {
                    End::Client(c) => break (c, false),
                    End::Breach(c) | End::Qemu(c) => break (c, false),
                }
            }
            end = &mut down => {
                down_done = true;
                match end {
                    End::Client(c) | End::Breach(c) => break (c, false),
                    // Nothing to cut: QEMU is gone or dropped it.
                    End::Qemu(c) => break (c, true),
                }
            }
            c = &mut stop => break (c, true),
            _ = asked.cancelled() => {
                asked_by_client = true;
                break (Close::new(CloseCode::Normal, "medium ejected"), true);
            }
            _ = held.eject.cancelled() => {
                let why = held.why.lock().expect("why lock").clone();
                break (why.unwrap_or_else(|| Close::new(CloseCode::Normal, "medium ejected")), true);
            }
            _ = tick.tick() => {
                let oldest = monitor.lock().expect("monitor lock").oldest();
                if oldest.is_some_and(|t| t.elapsed() >= STALL) {
                    break (Close::new(
                        CloseCode::BackendError,
                        format!("the client did not answer a read of the medium within {STALL:?}"),
                    ), false);
                }
            }
        }
    };
    if !clean {
        cut(&close.reason);
    }
    let eject = drive.tray.eject(node);
    tokio::pin!(eject);
    let grace = tokio::time::sleep(EJECT_GRACE);
    tokio::pin!(grace);
    let mut cut_done = !clean;
    let ejected = loop {
        tokio::select! {
            r = &mut eject => break r,
            end = &mut up, if !up_done => {
                up_done = true;
                if let End::Client(_) | End::Breach(_) = end {
                    if !cut_done { cut("the client left during the eject"); cut_done = true; }
                }
            }
            _ = &mut down, if !down_done => down_done = true,
            _ = &mut grace, if !cut_done => {
                cut("reads still in flight after the eject grace");
                cut_done = true;
            }
        }
    };
    if let Err(e) = ejected {
        tracing::warn!(node, error = %e, "ejecting the medium failed");
        if let tray::TrayError::Unreachable(_) | tray::TrayError::LibvirtUnreachable(_) = e {
            if close.code == CloseCode::BackendError {
                close = Close::new(
                    CloseCode::GuestDown,
                    "QEMU went away: the guest stopped, and its drive with it",
                );
            }
        }
    }
    (close, asked_by_client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive() -> Arc<Drive> {
        Drive::new(
            "demo",
            "media",
            Tray::Qmp {
                socket: "/nonexistent".into(),
                id: "cd0".into(),
            },
            MediaDir::private(std::env::temp_dir()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn one_medium_per_drive_force_ejects_the_holder_first() {
        let d = drive();
        let first = d.take(1, "a.iso", false).await.unwrap();
        assert_eq!(d.status().medium.unwrap().name, "a.iso");
        let refused = d.take(2, "b.iso", false).await.err().unwrap();
        assert_eq!(refused.code, CloseCode::ChannelInUse);
        assert!(
            refused
                .reason
                .contains("drive media of demo holds a.iso (session 1)"),
            "{refused}"
        );
        // --force: the holder is told why and, once it let go, 3 gets it.
        let eject = first.eject.clone();
        let why = first.why.clone();
        let holder = tokio::spawn(async move {
            eject.cancelled().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        });
        let _third = d.take(3, "c.iso", true).await.unwrap();
        holder.await.unwrap();
        let why = why.lock().unwrap().clone().unwrap();
        assert_eq!(why.code, CloseCode::TakenOver);
        assert_eq!(d.status().medium.unwrap().session, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_never_lets_go_fails_the_forced_insert_with_a_reason() {
        let d = drive();
        let _stuck = d.take(1, "a.iso", false).await.unwrap();
        let started = tokio::time::Instant::now();
        let refused = d.take(2, "b.iso", true).await.err().unwrap();
        assert_eq!(refused.code, CloseCode::BackendError);
        assert!(refused.reason.contains("did not eject"), "{refused}");
        assert_eq!(started.elapsed(), EMPTY_WAIT);
    }
}
