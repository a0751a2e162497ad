//! `vmgate console`: a guest's serial console in this terminal.
//!
//! With a terminal on stdin it switches it to raw mode (every key goes to the
//! guest, Ctrl+] detaches) and restores it on every way out: detach, the
//! session closing, an error, a signal, a panic (the guard's `Drop`).
//! The guest's output passes through [`Filter`]: sequences that would set
//! the terminal's title or clipboard, or move its window, are removed; on
//! exit the modes the guest left set are undone ([`Filter::reset`]).
//! Notices and the session's end go to stderr, never mixed into the
//! guest's bytes on stdout. With a
//! pipe on stdin it sends the input, then stays until the guest's output has
//! been quiet for [`LINGER`], so `echo cmd | vmgate console g` shows the
//! answer.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use vmgate_client::{ws, Ws};
use vmgate_relay::FrameRx;
use vmgate_wire::{Close, CloseCode, Frame};

use crate::terminal::{printable, Filter};

/// Ctrl+]: the escape key, as in telnet and `virsh console`.
pub const ESCAPE: u8 = 0x1d;
/// After stdin (a pipe) ends: how long output must be quiet before leaving.
pub const LINGER: Duration = Duration::from_secs(1);

/// How a console session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The user pressed Ctrl+], or piped input ended.
    Detached,
    /// A signal asked us to stop: its number.
    Signal(i32),
    /// The gateway closed the session: code and reason.
    Closed(u16, String),
    /// The connection broke without a close frame.
    Lost(String),
}

impl Ended {
    /// The exit status, the same table as every client command's
    /// ([`vmgate_wire::EXIT_STATUS`]): 0 when the user detached, the close
    /// code's status when the gateway ended the session, 6 when the
    /// connection broke, 128 + n after signal n.
    pub fn exit_code(&self) -> i32 {
        match self {
            Ended::Detached => 0,
            Ended::Signal(n) => 128 + n,
            Ended::Closed(code, _) => CloseCode::from_websocket(*code).exit_status(),
            Ended::Lost(_) => 6,
        }
    }
}

/// Restores the terminal when dropped.
struct RawMode;

impl RawMode {
    fn enable() -> Result<RawMode> {
        crossterm::terminal::enable_raw_mode()?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Runs the session until it ends; the terminal is restored on return.
pub async fn run(ws: Ws, what: &str) -> Result<Ended> {
    let tty = std::io::stdin().is_terminal();
    let raw = if tty { Some(RawMode::enable()?) } else { None };
    let nl = if tty { "\r\n" } else { "\n" };
    eprint!("[vmgate] connected to {what}; escape character is ^]{nl}");
    let mut filter = Filter::new();
    let ended = pump(ws, tty, nl, &mut filter).await;
    if std::io::stdout().is_terminal() {
        // Undo what the guest left set (alternate screen, mouse, colours).
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(&filter.reset()).and_then(|()| out.flush());
    }
    drop(raw);
    match &ended {
        Ended::Detached => eprintln!("\n[vmgate] detached"),
        Ended::Signal(n) => eprintln!("\n[vmgate] stopped by signal {n}"),
        Ended::Closed(code, reason) => {
            eprintln!("\n[vmgate] session closed: {} ({code})", printable(reason))
        }
        Ended::Lost(e) => eprintln!("\n[vmgate] connection lost: {}", printable(e)),
    }
    Ok(ended)
}

async fn pump(ws: Ws, tty: bool, nl: &str, filter: &mut Filter) -> Ended {
    let (mut rx, mut tx) = ws::split(ws);
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 4096];
    let mut shown = Vec::new();
    let mut stdin_open = true;
    let linger = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(linger);
    let mut lingering = false;
    let (mut term, mut hup, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => return Ended::Lost("cannot install signal handlers".into()),
    };
    let ended = loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    lingering = true;
                    linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                }
                Ok(n) => {
                    let input = &buf[..n];
                    let escape = if tty { input.iter().position(|&b| b == ESCAPE) } else { None };
                    let send = &input[..escape.unwrap_or(n)];
                    if !send.is_empty() && tx.data(send.to_vec()).await.is_err() {
                        break Ended::Lost("sending to the gateway failed".into());
                    }
                    if escape.is_some() {
                        break Ended::Detached;
                    }
                }
            },
            frame = rx.recv() => match frame {
                Ok(Some(Frame::Data(b))) => {
                    shown.clear();
                    filter.push(&b, &mut shown);
                    if stdout.write_all(&shown).await.is_err() || stdout.flush().await.is_err() {
                        break Ended::Lost("stdout closed".into());
                    }
                    if lingering {
                        linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                    }
                }
                Ok(Some(Frame::Notice(text))) => eprint!("{nl}[vmgate] {}{nl}", printable(&text)),
                Ok(Some(Frame::Close(c))) => break Ended::Closed(c.code as u16, c.reason),
                Ok(_) => {}
                Err(lost) => break Ended::Lost(lost.reason),
            },
            _ = &mut linger, if lingering => break Ended::Detached,
            _ = term.recv() => break Ended::Signal(nix::libc::SIGTERM),
            _ = hup.recv() => break Ended::Signal(nix::libc::SIGHUP),
            _ = int.recv() => break Ended::Signal(nix::libc::SIGINT),
        }
    };
    if matches!(ended, Ended::Detached | Ended::Signal(_)) {
        tx.close(Close::new(CloseCode::Normal, "detached")).await;
    }
    ended
}
