//! `vmgate vnc GUEST`: a local TCP port that any VNC viewer opens as if the
//! guest were local.
//!
//! Each accepted connection is its own session: a fresh ticket (minted from
//! the state directory's signing key), its own WebSocket to the gateway,
//! relayed byte for byte with the one relay ([`vmgate_relay::relay`])
//! through the client crate's WebSocket adapter ([`vmgate_client::ws`]). The
//! gateway enforces read-only; `--read-only` only asks for such a ticket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use vmgate_client::ws;
use vmgate_relay::bytes_io::{ByteRx, ByteTx};
use vmgate_relay::relay;
use vmgate_wire::Close;

use crate::state::State;
use crate::tickets::{mint, TicketRequest};

/// How a viewer takes the address on its command line.
type AddrArg = fn(SocketAddr) -> String;

/// Viewers tried by `--viewer`, in order, and how each takes an address.
const VIEWERS: &[(&str, AddrArg)] = &[
    ("vncviewer", |a| format!("{}::{}", a.ip(), a.port())),
    ("xtigervncviewer", |a| format!("{}::{}", a.ip(), a.port())),
    ("remote-viewer", |a| {
        format!("vnc://{}:{}", a.ip(), a.port())
    }),
    ("gvncviewer", |a| format!("{}::{}", a.ip(), a.port())),
];

pub struct VncOptions {
    pub state: State,
    pub guest: String,
    pub listen: SocketAddr,
    pub read_only: bool,
    pub viewer: bool,
    /// CA certificate to trust for the gateway.
    pub ca: PathBuf,
}

/// Serves until Ctrl+C, or until the viewer started by `--viewer` exits.
pub async fn run(opts: VncOptions) -> Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    // First line of stdout: scripts read the address from it.
    println!("{addr}");
    eprintln!(
        "VNC of {} on {addr}{}: point a VNC viewer at it (e.g. `vncviewer {}::{}`); Ctrl+C stops",
        opts.guest,
        if opts.read_only { " (read-only)" } else { "" },
        addr.ip(),
        addr.port()
    );
    let viewer = async {
        if !opts.viewer {
            return std::future::pending().await;
        }
        match start_viewer(addr) {
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
    loop {
        let (tcp, peer) = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = &mut viewer => return Ok(()),
            r = listener.accept() => r?,
        };
        let _ = tcp.set_nodelay(true);
        let ticket = mint(
            &opts.state,
            &TicketRequest {
                guest: opts.guest.clone(),
                channels: vec!["vnc".into()],
                mode: if opts.read_only {
                    vmgate_ticket::Mode::ReadOnly
                } else {
                    vmgate_ticket::Mode::Interactive
                },
                ttl: Duration::from_secs(60),
                max_session: None,
            },
        )?;
        let ca = opts.ca.clone();
        tokio::spawn(async move {
            match serve(tcp, &ticket.ws_url, &ca).await {
                Ok(close) => eprintln!("viewer {peer}: session ended: {close}"),
                Err(e) => eprintln!("viewer {peer}: {e:#}"),
            }
        });
    }
}

/// Relays one viewer connection through its own gateway session.
async fn serve(tcp: TcpStream, ws_url: &str, ca: &std::path::Path) -> Result<Close> {
    let (rx, tx) = ws::split(crate::client::connect(ws_url, ca).await?);
    let (r, w) = tcp.into_split();
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

fn start_viewer(addr: SocketAddr) -> Result<tokio::process::Child> {
    for (name, arg) in VIEWERS {
        match tokio::process::Command::new(name)
            .arg(arg(addr))
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
