//! `vmgate channel`: a guest's virtio-serial port as a byte stream, joined
//! to stdin/stdout or served on a local socket (`--listen`), where every
//! accepted connection is its own ticketed session.
//!
//! The WebSocket protocol (docs/channels.md): binary messages carry the
//! port's bytes unchanged; the text message `{"type":"eof"}` is a
//! half-close, sent when our input ends and received when the guest's
//! output has ended; the close frame's code says how the session ended and
//! becomes the exit status ([`vmgate_wire::EXIT_STATUS`]).
//!
//! The two directions run concurrently: a sender blocked by backpressure
//! never stops us reading (an echoing guest would otherwise deadlock us).
//!
//! When our input ends we *linger*: the EOF is sent once the guest's output
//! has been quiet for `--linger`. On a virtio-serial port an EOF is a
//! disconnect that also ends the guest's output, so sent at once it would
//! cut off the answer to what we just sent (`echo request | vmgate channel
//! …` would print nothing); see docs/channels.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vmgate_client::ws::{self, WsRx, WsTx};
use vmgate_client::{url, Ws};
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_ticket::Mode;
use vmgate_wire::{Close, CloseCode, Frame};

use crate::local::bind_unix;
use crate::state::{self, State};
use crate::terminal::printable;
use crate::tickets::{self, TicketRequest};

/// Bytes read from the local side in one go, and so the largest message we
/// send (the gateway accepts up to 1 MiB).
const CHUNK: usize = 64 * 1024;
/// Local connections served at once with `--listen`; more wait in the
/// listen backlog. A channel has one session at a time anyway: the rest are
/// refused "in use" by the agent.
const MAX_LOCAL_CONNECTIONS: usize = 64;
/// How long sessions get to send their close frames when we are stopped.
const DRAIN: Duration = Duration::from_secs(2);
/// How long a ticket minted for one connection may be redeemed.
const TICKET_TTL: Duration = Duration::from_secs(60);

/// What `--help` adds to the exit status table ([`vmgate_wire::EXIT_STATUS`]).
const LISTEN_STATUS: &str = "\
With --listen, the command runs until stopped by a signal (exit 0); each
connection's end is reported on stderr.";

/// `vmgate channel GUEST NAME`.
#[derive(clap::Args, Debug)]
#[command(after_help = format!("{}\n{LISTEN_STATUS}", vmgate_wire::EXIT_STATUS))]
pub struct ChannelArgs {
    /// The guest.
    pub guest: String,
    /// The virtio-serial port's name, e.g. org.qemu.guest_agent.0.
    pub name: String,
    /// Serve a local socket instead of stdin/stdout: unix:PATH or
    /// tcp:ADDR:PORT. Every accepted connection gets its own session, with a
    /// ticket minted for it.
    #[arg(long, value_parser = parse_listen)]
    pub listen: Option<Listen>,
    /// When our input ends, wait until the guest's output has been quiet
    /// this long before sending EOF (which disconnects the guest's port and
    /// so ends its output too); 0s sends it at once.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Take the channel over from the session holding it (that session is
    /// closed with 4411).
    #[arg(long)]
    pub force: bool,
    /// Receive only: nothing is sent to the guest (the agent drops input).
    #[arg(long)]
    pub read_only: bool,
    /// A ticket URL to use instead of minting one (not with --listen: each
    /// connection needs its own ticket).
    #[arg(long, conflicts_with = "listen")]
    pub url: Option<String>,
    /// CA certificate to trust for the gateway (default: the state dir's).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Where the signing key, CA and gateway address are.
    #[arg(long, env = "VMGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Where `--listen` serves.
#[derive(Debug, Clone)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("unix: needs a path".into());
        }
        return Ok(Listen::Unix(p.into()));
    }
    if let Some(a) = s.strip_prefix("tcp:") {
        return a
            .parse()
            .map(Listen::Tcp)
            .map_err(|e| format!("tcp:{a}: {e} (expected e.g. tcp:127.0.0.1:4000)"));
    }
    Err(format!("{s}: expected unix:PATH or tcp:ADDR:PORT"))
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// How a channel session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The gateway closed the session: code and reason.
    Closed(u16, String),
    /// Our output (stdout, the local client) stopped taking bytes.
    LocalClosed,
    /// A signal stopped us; the exit status is 128 + its number.
    Signal(i32),
    /// The connection broke without a close frame.
    Lost(String),
}

impl Ended {
    /// The exit status, as [`vmgate_wire::EXIT_STATUS`] documents it.
    pub fn exit_code(&self) -> i32 {
        match self {
            Ended::LocalClosed => 0,
            Ended::Signal(n) => 128 + n,
            Ended::Lost(_) => 6,
            Ended::Closed(code, _) => CloseCode::from_websocket(*code).exit_status(),
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed(1000, reason) => write!(f, "session ended: {}", printable(reason)),
            Ended::Closed(code, reason) => {
                write!(f, "session closed: {} ({code})", printable(reason))
            }
            Ended::LocalClosed => write!(f, "the local side closed"),
            Ended::Signal(n) => write!(f, "stopped by signal {n}"),
            Ended::Lost(e) => write!(f, "connection lost: {}", printable(e)),
        }
    }
}

/// Runs `vmgate channel`; returns the exit status.
pub async fn run(a: ChannelArgs) -> Result<i32> {
    let state = State::new(state::resolve(a.state_dir.clone()));
    let ca = a.ca.clone().unwrap_or_else(|| state.public_ca());
    let mode = if a.read_only {
        Mode::ReadOnly
    } else {
        Mode::Interactive
    };
    let target = Target {
        state,
        guest: a.guest.clone(),
        name: a.name.clone(),
        mode,
        force: a.force,
        linger: a.linger,
        ca,
    };
    match a.listen {
        Some(listen) => serve(target, listen).await,
        None => {
            let url = match &a.url {
                Some(u) => url::ws_url_from(u, Some(&a.name))?,
                None => target.mint()?,
            };
            let ws = crate::client::connect(&target.with_force(url), &target.ca).await?;
            if a.read_only {
                eprintln!("[vmgate] read-only: stdin is not sent to the guest");
            }
            let stop = CancellationToken::new();
            tokio::spawn(stop_on_signal(stop.clone()));
            let input = (!a.read_only).then(tokio::io::stdin);
            let ended = bridge(ws, input, tokio::io::stdout(), target.linger, "", stop).await;
            if ended.exit_code() != 0 {
                eprintln!("[vmgate] {ended}");
            }
            Ok(ended.exit_code())
        }
    }
}

/// What every session of this command opens.
struct Target {
    state: State,
    guest: String,
    name: String,
    mode: Mode,
    force: bool,
    linger: Duration,
    ca: PathBuf,
}

impl Target {
    /// A fresh single-use ticket for this channel only; its WebSocket URL.
    fn mint(&self) -> Result<String> {
        Ok(tickets::mint(
            &self.state,
            &TicketRequest {
                guest: self.guest.clone(),
                channels: vec![self.name.clone()],
                mode: self.mode,
                ttl: TICKET_TTL,
                max_session: None,
            },
        )?
        .ws_url)
    }

    fn with_force(&self, ws_url: String) -> String {
        if self.force {
            url::with_force(&ws_url)
        } else {
            ws_url
        }
    }
}

/// The signal that stopped us (SIGINT, SIGTERM, SIGHUP) goes into `stop`'s
/// reason through [`LAST_SIGNAL`].
static LAST_SIGNAL: AtomicU64 = AtomicU64::new(0);

async fn stop_on_signal(stop: CancellationToken) {
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("[vmgate] cannot install signal handlers");
        return;
    };
    let n = tokio::select! {
        _ = term.recv() => 15,
        _ = hup.recv() => 1,
        _ = int.recv() => 2,
    };
    LAST_SIGNAL.store(n, Ordering::Relaxed);
    stop.cancel();
}

/// Joins one session's WebSocket to a local reader and writer until the
/// session ends. `input: None` sends nothing (read-only). After the input
/// ends, EOF goes out once the output has been quiet for `linger`. `tag`
/// prefixes stderr lines ("[conn 3] ").
pub async fn bridge<R, W>(
    ws: Ws,
    input: Option<R>,
    mut output: W,
    linger: Duration,
    tag: &str,
    stop: CancellationToken,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut rx, mut tx) = ws::split(ws);
    let ended = {
        let received = AtomicU64::new(0);
        let up = send_input(input, &mut tx, linger, &received);
        let down = receive_output(&mut rx, &mut output, tag, &received);
        tokio::pin!(up, down);
        let mut up_done = false;
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    if let Err(e) = r {
                        break Ended::Lost(e);
                    }
                }
                end = &mut down => break end,
                _ = stop.cancelled() => {
                    break Ended::Signal(LAST_SIGNAL.load(Ordering::Relaxed) as i32);
                }
            }
        }
    };
    if matches!(ended, Ended::Signal(_) | Ended::LocalClosed) {
        let reason = match ended {
            Ended::Signal(_) => "stopped by a signal",
            _ => "the local side closed",
        };
        tx.close(Close::new(CloseCode::Normal, reason)).await;
    }
    let _ = output.flush().await;
    ended
}

/// Sends the input as binary messages; when it ends, waits until no output
/// arrived for `linger` (`received` counts output messages, [`EOF_SEEN`]
/// once the guest's side ended) and sends the EOF control message. Returns
/// once the EOF is sent; without input, never returns.
async fn send_input<R: AsyncRead + Unpin>(
    input: Option<R>,
    tx: &mut WsTx,
    linger: Duration,
    received: &AtomicU64,
) -> Result<(), String> {
    let Some(mut input) = input else {
        return std::future::pending().await;
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        // An unreadable input ends like a closed one.
        let n: usize = input.read(&mut buf).await.unwrap_or_default();
        if n == 0 {
            break;
        }
        if let Err(e) = tx.data(Bytes::copy_from_slice(&buf[..n])).await {
            return Err(format!("sending to the gateway: {}", e.reason));
        }
    }
    if !linger.is_zero() {
        loop {
            let seen = received.load(Ordering::Relaxed);
            if seen == EOF_SEEN {
                break;
            }
            tokio::time::sleep(linger).await;
            if received.load(Ordering::Relaxed) == seen {
                break;
            }
        }
    }
    tx.send(Frame::Eof)
        .await
        .map_err(|e| format!("sending to the gateway: {}", e.reason))
}

/// `received`'s value once the guest's side sent its EOF: nothing more will
/// come, so lingering is pointless.
const EOF_SEEN: u64 = u64::MAX;

/// Writes the guest's bytes to `output` until the session closes. The EOF
/// control message half-closes `output` (a local socket's client reads end
/// of stream); notices go to stderr.
async fn receive_output<W: AsyncWrite + Unpin>(
    rx: &mut WsRx,
    output: &mut W,
    tag: &str,
    received: &AtomicU64,
) -> Ended {
    let mut output_open = true;
    loop {
        match rx.recv().await {
            Ok(Some(Frame::Data(b))) => {
                if !output_open {
                    continue;
                }
                received.fetch_add(1, Ordering::Relaxed);
                if output.write_all(&b).await.is_err() || output.flush().await.is_err() {
                    return Ended::LocalClosed;
                }
            }
            Ok(Some(Frame::Eof)) => {
                output_open = false;
                received.store(EOF_SEEN, Ordering::Relaxed);
                let _ = output.shutdown().await;
            }
            Ok(Some(Frame::Notice(text))) => eprintln!("[vmgate] {tag}{}", printable(&text)),
            Ok(Some(Frame::Close(c))) => return Ended::Closed(c.code as u16, c.reason),
            Ok(_) => {}
            Err(lost) => return Ended::Lost(lost.reason),
        }
    }
}

/// `--listen`: one session per accepted connection, until a signal.
async fn serve(target: Target, listen: Listen) -> Result<i32> {
    // Fail now, not at the first connection, if no ticket can be minted.
    target
        .mint()
        .context("minting a ticket for the first connection")?;
    let target = Arc::new(target);
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_LOCAL_CONNECTIONS));
    let mut next = 0u64;
    match &listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path)?;
            eprintln!(
                "[vmgate] {}/{} on {listen}: one session per connection",
                target.guest, target.name
            );
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => break,
                    p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                };
                let conn = tokio::select! {
                    _ = stop.cancelled() => break,
                    c = listener.accept() => c,
                };
                match conn {
                    Ok((s, _)) => {
                        next += 1;
                        let (r, w) = s.into_split();
                        let (t, stop) = (target.clone(), stop.clone());
                        tracker.spawn(async move {
                            forward(&t, next, "local client", r, w, stop).await;
                            drop(permit);
                        });
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
            let _ = std::fs::remove_file(path);
        }
        Listen::Tcp(addr) => {
            if !addr.ip().is_loopback() {
                eprintln!("[vmgate] warning: {addr} is not a loopback address: anyone who reaches it gets this channel");
            }
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            eprintln!(
                "[vmgate] {}/{} on tcp:{}: one session per connection",
                target.guest,
                target.name,
                listener.local_addr()?
            );
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => break,
                    p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                };
                let conn = tokio::select! {
                    _ = stop.cancelled() => break,
                    c = listener.accept() => c,
                };
                match conn {
                    Ok((s, peer)) => {
                        next += 1;
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        let (t, stop) = (target.clone(), stop.clone());
                        let who = peer.to_string();
                        tracker.spawn(async move {
                            forward(&t, next, &who, r, w, stop).await;
                            drop(permit);
                        });
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN, tracker.wait()).await;
    Ok(0)
}

async fn accept_failed(e: std::io::Error) {
    // Out of file descriptors and the like: back off, go on.
    eprintln!("[vmgate] accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// One accepted connection: a fresh ticket, a session, and a line on
/// stderr saying how it ended.
async fn forward<R, W>(t: &Target, id: u64, who: &str, r: R, w: W, stop: CancellationToken)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let tag = format!("[conn {id}] ");
    let ws = async {
        let url = t.mint()?;
        crate::client::connect(&t.with_force(url), &t.ca).await
    };
    let ws = match ws.await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("[vmgate] {tag}{who}: could not open a session: {e:#}");
            return;
        }
    };
    eprintln!("[vmgate] {tag}{who}: session opened");
    let input = (t.mode == Mode::Interactive).then_some(r);
    let ended = bridge(ws, input, w, t.linger, &tag, stop).await;
    eprintln!(
        "[vmgate] {tag}{who}: {ended} (status {})",
        ended.exit_code()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn listen_addresses_parse_or_say_what_is_expected() {
        assert!(
            matches!(parse_listen("unix:/tmp/x.sock"), Ok(Listen::Unix(p)) if p == Path::new("/tmp/x.sock"))
        );
        assert!(
            matches!(parse_listen("tcp:127.0.0.1:4000"), Ok(Listen::Tcp(a)) if a.port() == 4000)
        );
        assert!(parse_listen("tcp:localhost")
            .unwrap_err()
            .contains("tcp:127.0.0.1:4000"));
        assert!(parse_listen("/tmp/x").unwrap_err().contains("unix:PATH"));
        assert!(parse_listen("unix:").is_err());
    }

    #[test]
    fn exit_status_follows_the_close_code() {
        let closed = |c| Ended::Closed(c, String::new()).exit_code();
        assert_eq!(closed(1000), 0);
        for c in [4401, 4403, 4404, 4405, 4409, 4429] {
            assert_eq!(closed(c), 3, "{c}");
        }
        assert_eq!(closed(4410), 4);
        assert_eq!(closed(4413), 4);
        for c in [4411, 4412, 4408, 1001] {
            assert_eq!(closed(c), 5, "{c}");
        }
        for c in [4502, 4503, 4400, 4500, 1005] {
            assert_eq!(closed(c), 6, "{c}");
        }
        assert_eq!(Ended::Lost("x".into()).exit_code(), 6);
        assert_eq!(Ended::Signal(2).exit_code(), 130);
        assert_eq!(Ended::LocalClosed.exit_code(), 0);
    }
}
