//! `vmgate vnc GUEST`: a local socket that any VNC viewer opens as if the
//! guest were local.
//!
//! Each accepted connection is its own session: a fresh ticket (minted from
//! the state directory's signing key), its own WebSocket to the gateway,
//! relayed byte for byte with the one relay ([`vmgate_relay::relay`])
//! through the client crate's WebSocket adapter ([`vmgate_client::ws`]).
//! The gateway enforces read-only; `--read-only` only asks for such a
//! ticket.
//!
//! Who may connect: by default a unix socket created 0600 (the umask is
//! narrowed around `bind(2)`), so only this user. A TCP port cannot tell
//! local users apart (any of them reaches 127.0.0.1), so `--listen tcp:…`
//! is refused unless `--insecure-tcp` says that is meant.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use vmgate_client::ws;
use vmgate_relay::bytes_io::{ByteRx, ByteTx};
use vmgate_relay::relay;
use vmgate_wire::Close;

use crate::local::bind_unix;
use crate::state::State;
use crate::tickets::{mint, TicketRequest};

/// Where `vmgate vnc` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// `unix:PATH`, `tcp:ADDR:PORT`, or a bare `ADDR:PORT` (TCP).
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("unix: needs a path".into());
        }
        return Ok(Listen::Unix(p.into()));
    }
    let a = s.strip_prefix("tcp:").unwrap_or(s);
    a.parse()
        .map(Listen::Tcp)
        .map_err(|e| format!("{s}: {e} (expected unix:PATH or tcp:127.0.0.1:5900)"))
}

/// How a viewer takes the socket on its command line.
type TargetArg = fn(&Listen) -> Option<String>;

/// Viewers tried by `--viewer`, in order, and how each takes a socket.
const VIEWERS: &[(&str, TargetArg)] = &[
    ("vncviewer", tiger),
    ("xtigervncviewer", tiger),
    ("remote-viewer", |l| {
        Some(match l {
            Listen::Unix(p) => format!("vnc+unix://{}", p.display()),
            Listen::Tcp(a) => format!("vnc://{}:{}", a.ip(), a.port()),
        })
    }),
    ("gvncviewer", |l| match l {
        Listen::Unix(_) => None,
        Listen::Tcp(a) => Some(format!("{}::{}", a.ip(), a.port())),
    }),
];

/// TigerVNC takes `host::port`, or a socket's path.
fn tiger(l: &Listen) -> Option<String> {
    Some(match l {
        Listen::Unix(p) => p.display().to_string(),
        Listen::Tcp(a) => format!("{}::{}", a.ip(), a.port()),
    })
}

pub struct VncOptions {
    pub state: State,
    pub guest: String,
    pub listen: Listen,
    /// A TCP listener was asked for knowing any local user can connect.
    pub insecure_tcp: bool,
    pub read_only: bool,
    /// Tickets name `audio` too: viewers may negotiate QEMU audio in-band.
    pub audio: bool,
    pub viewer: bool,
    /// CA certificate to trust for the gateway.
    pub ca: PathBuf,
}

/// The default socket: in `$XDG_RUNTIME_DIR` (the user's own 0700
/// directory) if set, else in the state directory.
pub fn default_socket(state: &State, guest: &str) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| state.dir.clone());
    dir.join(format!("vmgate-vnc-{guest}.sock"))
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

type Halves = (
    Box<dyn AsyncRead + Unpin + Send>,
    Box<dyn AsyncWrite + Unpin + Send>,
);

impl Listener {
    async fn accept(&self) -> std::io::Result<(Halves, String)> {
        match self {
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok(((Box::new(r), Box::new(w)), "local viewer".into()))
            }
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                Ok(((Box::new(r), Box::new(w)), peer.to_string()))
            }
        }
    }
}

/// Serves until Ctrl+C, or until the viewer started by `--viewer` exits.
pub async fn run(opts: VncOptions) -> Result<()> {
    let (listener, shown) = match &opts.listen {
        Listen::Tcp(addr) if !opts.insecure_tcp => bail!(
            "refusing to listen on tcp:{addr}: any local user could open the guest's screen there; \
             use the default unix socket, or add --insecure-tcp if that is meant"
        ),
        Listen::Tcp(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let a = l.local_addr()?;
            (Listener::Tcp(l), Listen::Tcp(a))
        }
        Listen::Unix(path) => (
            Listener::Unix(bind_unix(path)?, path.clone()),
            Listen::Unix(path.clone()),
        ),
    };
    // First line of stdout: scripts read the address from it.
    match &shown {
        Listen::Tcp(a) => println!("{a}"),
        Listen::Unix(p) => println!("unix:{}", p.display()),
    }
    eprintln!(
        "VNC of {} on {}{}: point a VNC viewer at it (e.g. `vncviewer {}`); Ctrl+C stops",
        opts.guest,
        match &shown {
            Listen::Tcp(a) => format!("tcp:{a} (any local user can connect)"),
            Listen::Unix(p) => format!("unix:{} (this user only)", p.display()),
        },
        match (opts.read_only, opts.audio) {
            (false, false) => "",
            (true, false) => " (read-only)",
            (false, true) => " (with audio)",
            (true, true) => " (read-only, with audio)",
        },
        tiger(&shown).unwrap_or_default(),
    );
    let viewer = async {
        if !opts.viewer {
            return std::future::pending().await;
        }
        match start_viewer(&shown) {
            Ok(mut child) => {
                let _ = child.wait().await;
                eprintln!("the viewer exited");
            }
            Err(e) => {
                eprintln!("error: {e:#}");
            }
        }
    };
    tokio::pin!(viewer);
    let served = loop {
        let ((r, w), peer) = tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = &mut viewer => break Ok(()),
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => break Err(e.into()),
            },
        };
        let ticket = match mint(
            &opts.state,
            &TicketRequest {
                guest: opts.guest.clone(),
                channels: if opts.audio {
                    vec!["vnc".into(), "audio".into()]
                } else {
                    vec!["vnc".into()]
                },
                mode: if opts.read_only {
                    vmgate_ticket::Mode::ReadOnly
                } else {
                    vmgate_ticket::Mode::Interactive
                },
                ttl: Duration::from_secs(60),
                max_session: None,
            },
        ) {
            Ok(t) => t,
            Err(e) => break Err(e),
        };
        let ca = opts.ca.clone();
        tokio::spawn(async move {
            match serve(r, w, &ticket.ws_url, &ca).await {
                Ok(close) => eprintln!("viewer {peer}: session ended: {close}"),
                Err(e) => eprintln!("viewer {peer}: {e:#}"),
            }
        });
    };
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    served
}

/// Relays one viewer connection through its own gateway session.
async fn serve(
    r: impl AsyncRead + Unpin + Send,
    w: impl AsyncWrite + Unpin + Send,
    ws_url: &str,
    ca: &Path,
) -> Result<Close> {
    // Native viewers' zlib resets Tight streams as told: keep Tight.
    let url = vmgate_client::url::with_tight(ws_url);
    let (rx, tx) = ws::split(crate::client::connect(&url, ca).await?);
    let out = relay(
        ByteRx::new(r, "the VNC viewer"),
        ByteTx::new(w, "the VNC viewer"),
        rx,
        tx,
        std::future::pending(),
    )
    .await;
    Ok(out.close)
}

fn start_viewer(target: &Listen) -> Result<tokio::process::Child> {
    for (name, arg) in VIEWERS {
        let Some(arg) = arg(target) else {
            continue;
        };
        match tokio::process::Command::new(name)
            .arg(arg)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => {
                eprintln!("started {name}");
                return Ok(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("starting {name}")),
        }
    }
    anyhow::bail!(
        "no VNC viewer found (tried {}): install one, e.g. `apt-get install tigervnc-viewer`",
        VIEWERS.iter().map(|v| v.0).collect::<Vec<_>>().join(", ")
    )
}
