//! `vmgate media GUEST insert|eject|status`: a local image as a guest's
//! CD-ROM, read on demand through the gateway (docs/media.md). The session
//! logic is `vmgate_client::media`; this is the command line around it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vmgate_client::media::{self, MediaEvent};
use vmgate_client::url;
use vmgate_ticket::Mode;
use vmgate_wire::{Close, CloseCode};

use crate::state::{self, State};
use crate::terminal::printable;
use crate::tickets::{self, TicketRequest};

/// How long a ticket minted for one command may be redeemed.
const TICKET_TTL: Duration = Duration::from_secs(60);

/// What `--help` adds to the exit status table.
const MEDIA_STATUS: &str = "\
insert runs until the medium is ejected: Ctrl+C (or SIGTERM) ejects it
cleanly and exits 0, as does `vmgate media GUEST eject` from anywhere; a
second Ctrl+C leaves at once (the agent still ejects).";

/// `vmgate media GUEST …`.
#[derive(clap::Args, Debug)]
#[command(after_help = format!("{}\n{MEDIA_STATUS}", vmgate_wire::EXIT_STATUS))]
pub struct MediaArgs {
    /// The guest.
    pub guest: String,
    #[command(subcommand)]
    pub op: MediaOp,
    /// The drive: a channel of kind media (default: `media`, the guest's
    /// first drive by convention).
    #[arg(long, global = true, default_value = "media")]
    pub drive: String,
    /// A ticket URL to use instead of minting one.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// CA certificate to trust for the gateway (default: the state dir's).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Where the signing key, CA and gateway address are.
    #[arg(long, global = true, env = "VMGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum MediaOp {
    /// Serve PATH (an ISO or any raw image) as the drive's medium. Prints
    /// `inserted` on stdout once the guest's drive holds it, then serves
    /// the guest's reads until the medium is ejected.
    Insert {
        path: PathBuf,
        /// Eject whatever is in the drive first (its session ends 4411).
        #[arg(long)]
        force: bool,
        /// The medium's name in status and logs (default: the file's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Eject the drive's medium, whoever inserted it.
    Eject,
    /// Show the drive, its medium and the bytes the guest read.
    Status {
        /// Print the agent's answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `vmgate media`; returns the exit status.
pub async fn run(a: MediaArgs) -> Result<i32> {
    let state = State::new(state::resolve(a.state_dir.clone()));
    let ca = a.ca.clone().unwrap_or_else(|| state.public_ca());
    // Status needs no more than a read-only ticket.
    let mode = match a.op {
        MediaOp::Status { .. } => Mode::ReadOnly,
        _ => Mode::Interactive,
    };
    let mut ws_url = match &a.url {
        Some(u) => url::ws_url_from(u, Some(&a.drive))?,
        None => {
            tickets::mint(
                &state,
                &TicketRequest {
                    guest: a.guest.clone(),
                    channels: vec![a.drive.clone()],
                    mode,
                    ttl: TICKET_TTL,
                    max_session: None,
                },
            )?
            .ws_url
        }
    };
    if let MediaOp::Insert { force: true, .. } = a.op {
        ws_url = url::with_force(&ws_url);
    }
    let what = format!("drive {} of {}", a.drive, a.guest);
    match a.op {
        MediaOp::Insert { path, name, .. } => insert(&ws_url, &ca, &path, name, &what).await,
        MediaOp::Eject => {
            let ws = crate::client::connect(&ws_url, &ca).await?;
            let close = media::eject(ws).await;
            report(&close);
            if close.code == CloseCode::Normal {
                println!("{}", printable(&close.reason));
            }
            Ok(close.code.exit_status())
        }
        MediaOp::Status { json } => {
            let ws = crate::client::connect(&ws_url, &ca).await?;
            match media::status(ws).await {
                Ok(s) if json => {
                    println!("{}", serde_json::to_string(&s)?);
                    Ok(0)
                }
                Ok(s) => {
                    match &s.medium {
                        None => println!("drive {} of {}: empty", s.drive, s.guest),
                        Some(m) => println!(
                            "drive {} of {}: {} ({} bytes), {} bytes read in {} reads ({} waiting), inserted {} s ago by session {}",
                            s.drive,
                            s.guest,
                            printable(&m.name),
                            m.size,
                            m.bytes_read,
                            m.reads,
                            m.in_flight,
                            m.inserted_secs,
                            m.session
                        ),
                    }
                    Ok(0)
                }
                Err(close) => {
                    report(&close);
                    Ok(close.code.exit_status().max(1))
                }
            }
        }
    }
}

/// Prints a close that is not a plain success on stderr.
fn report(close: &Close) {
    if close.code != CloseCode::Normal {
        eprintln!(
            "[vmgate] session closed: {} ({})",
            printable(&close.reason),
            close.code as u16
        );
    }
}

async fn insert(
    ws_url: &str,
    ca: &std::path::Path,
    path: &std::path::Path,
    name: Option<String>,
    what: &str,
) -> Result<i32> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    anyhow::ensure!(size > 0, "{} is empty", path.display());
    let name = name.unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "medium".into())
    });
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(media::MAX_NAME / 4)
        .collect();
    anyhow::ensure!(media::valid_name(&name), "give the medium a --name");
    let ws = crate::client::connect(ws_url, ca).await?;
    let stop = CancellationToken::new();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let serving = tokio::spawn(media::serve(
        ws,
        Arc::new(file),
        name.clone(),
        stop.clone(),
        events_tx,
    ));
    eprintln!(
        "[vmgate] serving {} ({size} bytes) as {what}: Ctrl+C ejects it",
        printable(&name)
    );
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        anyhow::bail!("cannot install signal handlers");
    };
    let mut signals = 0;
    let abort = serving.abort_handle();
    let mut serving = serving;
    let served = loop {
        tokio::select! {
            r = &mut serving => break r.context("the media session's task")?,
            Some(ev) = events.recv() => match ev {
                MediaEvent::Inserted { .. } => println!("inserted"),
                MediaEvent::Ejecting => eprintln!("[vmgate] ejecting…"),
                MediaEvent::Ejected(e) => {
                    eprintln!("[vmgate] ejected: the guest read {} bytes in {} reads", e.bytes_read, e.reads);
                }
            },
            _ = async { tokio::select! { _ = int.recv() => {}, _ = term.recv() => {}, _ = hup.recv() => {} } } => {
                signals += 1;
                if signals == 1 {
                    stop.cancel();
                } else {
                    abort.abort();
                    eprintln!("[vmgate] stopped before the eject finished (the agent ejects anyway)");
                    return Ok(130);
                }
            }
        }
    };
    while let Ok(ev) = events.try_recv() {
        if let MediaEvent::Ejected(e) = ev {
            eprintln!(
                "[vmgate] ejected: the guest read {} bytes in {} reads",
                e.bytes_read, e.reads
            );
        }
    }
    report(&served.close);
    if !served.closed {
        return Ok(6);
    }
    Ok(served.close.code.exit_status())
}
