//! The `libvirt` backend: every running domain of a libvirt daemon (or
//! those the config selects), reached through libvirt's own APIs, with the
//! inventory kept current by libvirt's lifecycle events.
//!
//! * serial consoles: `virDomainOpenConsole` (with `VIR_DOMAIN_CONSOLE_SAFE`,
//!   and `..._FORCE` when configured or when a session attaches with
//!   `--force`), fed into the same [`ConsoleHub`] as the `qemu` backend;
//! * channels (unix virtio-serial channels): the channel's own unix socket,
//!   from the live XML, when the daemon is local (`channel_via = "socket"`,
//!   the default: flow control end to end); else `virDomainOpenChannel`,
//!   whose libvirt stream has none, so a session whose client falls more
//!   than [`stream::STREAM_BACKLOG`] behind ends with a reason;
//! * VNC: `virDomainOpenGraphicsFD`, so no VNC listener is needed;
//! * media: each `<disk device='cdrom'>` is a `media` channel; a medium
//!   goes in and out with `virDomainUpdateDeviceFlags` (an NBD network
//!   source on the agent's socket, or none), so libvirt's live XML always
//!   says what is in the drive ([`CdromChanger`]).
//!
//! When a domain stops (shut down, destroyed, crashed) its sessions are
//! closed with [`CloseCode::GuestDown`] "guest stopped" (migrated away:
//! [`CloseCode::GuestMoved`]). While a live migration pauses it here it is
//! listed as migrating out, and a domain migrating in is listed as down
//! until it resumes here ([`domains::Phase`]). A
//! selected persistent domain that is defined but not running is listed as
//! [`vmgate_wire::GuestState::Down`] (no channels: its endpoints are known
//! once it runs), so a session to it is refused as "not running" rather
//! than "unknown".
//!
//! The parts:
//! * this file: opening a served domain's endpoints, and what serving a
//!   domain holds (its console hubs and channel slots);
//! * [`supervise`]: the connection to libvirtd, its events, reconnects;
//! * [`domains`]: the domain table (sans-IO): what was seen of each domain
//!   in, the inventory and the starts and stops of serving out;
//! * [`xml`]: a domain's endpoints from its live XML (sans-IO);
//! * [`stream`]: libvirt streams bridged to tokio;
//! * [`ffi`]: the only `unsafe` in the agent.

mod domains;
mod ffi;

/// Shared with the `qemu` backend: a guest that migrated away closes its
/// sessions the same way under both.
pub(crate) use domains::{stopped_close, MIGRATED_AWAY};
mod stream;
mod supervise;
mod xml;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use virt::connect::Connect;
use virt::error::{ErrorNumber, ErrorNumberEnum};
use virt::stream::Stream;
use virt::sys;
use vmgate_wire::{Close, CloseCode, Inventory, OpenRequest};

use super::media::tray::{Changer, TrayError};
use super::media::{Drive, MediaDir, Tray};
use super::{Backend, Endpoint, Slot};
use crate::config::{AgentConfig, LibvirtConfig};
use crate::console::{Connector, ConsoleHub, ConsoleLogs, ConsoleRx, ConsoleSpec, ConsoleTx};
use crate::duplex::Duplex;
use domains::{Serving, Table};
use stream::{bridge, io_err, stream_connection, Ended, SignalOnEof, StreamEnd};
use supervise::current_conn;
use xml::Cdrom;
use xml::Devices;

/// After a channel or VNC stream ends on libvirt's side, how long the
/// session waits for the domain's stop event to say why before it closes as
/// a backend failure (libvirtd went away, say).
const STREAM_END_GRACE: Duration = Duration::from_secs(10);
/// How long an attach waits for a console that is not connected (being
/// taken over with `--force`, or reconnecting after libvirtd came back).
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// What serving one run of a domain holds.
struct Running {
    consoles: HashMap<String, ConsoleHub>,
    /// Exclusive channels, by name.
    channels: HashMap<String, Arc<Slot>>,
    /// CD-ROM drives, by channel name.
    drives: HashMap<String, Arc<Drive>>,
    /// Cancelled when the domain stops: its hubs stop and its sessions end.
    alive: CancellationToken,
    /// Why it stopped, set before `alive` is cancelled.
    stop_reason: Arc<OnceLock<String>>,
}

struct Shared {
    node: String,
    cfg: LibvirtConfig,
    logs: ConsoleLogs,
    scrollback_bytes: usize,
    /// The current connection; `None` while libvirtd is unreachable.
    conn: Mutex<Option<Connect>>,
    domains: Mutex<Table<Running>>,
    inventory: watch::Sender<Inventory>,
    /// Channel and VNC sessions whose libvirt stream may end, by session
    /// id: picked up by [`Backend::session_end`] right after the open.
    stream_ends: Mutex<HashMap<u64, Ended>>,
    /// Where media sockets go (`media_dir`, `media_group`).
    media_dir: MediaDir,
    shutdown: CancellationToken,
}

/// The domains of one libvirt daemon.
pub struct LibvirtBackend {
    shared: Arc<Shared>,
}

impl LibvirtBackend {
    /// Starts following libvirt; the inventory fills once connected.
    /// Domains' consoles log to `logs`.
    pub fn start(
        cfg: &AgentConfig,
        logs: &ConsoleLogs,
        shutdown: CancellationToken,
    ) -> LibvirtBackend {
        let shared = Arc::new(Shared {
            node: cfg.node.clone(),
            cfg: cfg.libvirt.clone(),
            logs: logs.clone(),
            scrollback_bytes: cfg.scrollback_bytes,
            conn: Mutex::new(None),
            domains: Mutex::new(Table::default()),
            inventory: watch::channel(Inventory {
                node: cfg.node.clone(),
                guests: Vec::new(),
            })
            .0,
            stream_ends: Mutex::new(HashMap::new()),
            // Checked when the agent bound (Agent::bind).
            media_dir: MediaDir::from_config(cfg)
                .unwrap_or_else(|_| MediaDir::private(std::env::temp_dir())),
            shutdown,
        });
        tokio::spawn(supervise::supervise(shared.clone()));
        LibvirtBackend { shared }
    }

    fn conn(&self, guest: &str) -> Result<Connect, Close> {
        current_conn(&self.shared).ok_or_else(|| {
            Close::new(
                CloseCode::BackendError,
                format!("guest {guest}: libvirtd is not reachable right now; try again shortly"),
            )
        })
    }

    /// A socket for `session` whose end [`Backend::session_end`] explains.
    fn signal_on_eof(&self, session: u64, inner: tokio::net::UnixStream) -> Box<dyn Duplex> {
        let ended = Ended::default();
        self.shared
            .stream_ends
            .lock()
            .expect("stream_ends lock")
            .insert(session, ended.clone());
        Box::new(SignalOnEof::new(inner, ended.token))
    }
}

/// Serving a domain: its console hubs run (and log) while it runs.
struct Hubs<'a>(&'a Arc<Shared>);

impl Serving for Hubs<'_> {
    type Run = Running;

    fn start(&mut self, name: &str, id: u32, devices: &Devices) -> Running {
        let shared = self.0;
        let alive = shared.shutdown.child_token();
        let consoles = devices
            .consoles
            .iter()
            .map(|alias| {
                let spec = ConsoleSpec {
                    guest: name.into(),
                    name: alias.clone(),
                    connector: console_connector(
                        Arc::downgrade(shared),
                        name.into(),
                        alias.clone(),
                    ),
                    logs: shared.logs.clone(),
                    scrollback_bytes: shared.scrollback_bytes,
                };
                (alias.clone(), ConsoleHub::start(spec, alive.clone()))
            })
            .collect();
        let channels = devices
            .channels
            .iter()
            .map(|c| (c.clone(), Arc::new(Slot::default())))
            .collect();
        let drives = devices
            .cdroms
            .iter()
            .map(|cd| {
                let tray = Tray::Managed(Arc::new(CdromChanger {
                    uri: shared.cfg.uri.clone(),
                    domain: name.into(),
                    cd: cd.clone(),
                }));
                let drive = Drive::new(name, &cd.name, tray, shared.media_dir.clone());
                (cd.name.clone(), drive)
            })
            .collect();
        tracing::info!(domain = %name, id, consoles = ?devices.consoles, channels = ?devices.channels, vnc = devices.vnc.is_some(), cdroms = devices.cdroms.len(), "serving domain");
        Running {
            consoles,
            channels,
            drives,
            alive,
            stop_reason: Arc::new(OnceLock::new()),
        }
    }

    fn stop(&mut self, name: &str, run: Running, reason: &str) {
        tracing::info!(domain = %name, reason, "domain stopped; closing its sessions");
        let _ = run.stop_reason.set(reason.to_string());
        run.alive.cancel();
    }
}

/// CD-ROM `cd` of `domain`, whose medium libvirt changes.
#[derive(Debug)]
struct CdromChanger {
    uri: String,
    domain: String,
    cd: Cdrom,
}

impl Changer for CdromChanger {
    /// Puts a read-only NBD medium served on `socket` into the drive, or
    /// empties it (`None`): `virDomainUpdateDeviceFlags` on the live
    /// domain, forced, so a guest's locked tray does not stop it. libvirt
    /// then runs QEMU's tray commands itself.
    fn change(&self, socket: Option<&Path>) -> Result<(), TrayError> {
        let changed = Connect::open(Some(&self.uri))
            .and_then(|conn| conn.lookup_domain_by_name(&self.domain))
            .and_then(|dom| {
                dom.update_device_flags(
                    &xml::cdrom_update(&self.cd, socket),
                    sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_DEVICE_MODIFY_FORCE,
                )
            });
        changed.map(drop).map_err(|e| {
            let gone = [
                virt::error::ErrorNumber::NoDomain,
                virt::error::ErrorNumber::OperationInvalid,
                virt::error::ErrorNumber::SystemError,
            ]
            .into_iter()
            .any(|n| e.code() == n.into());
            let why = e.message().to_string();
            if gone {
                TrayError::LibvirtUnreachable(why)
            } else {
                TrayError::Libvirt(why)
            }
        })
    }
}

fn not_connected() -> io::Error {
    io::Error::other("libvirtd is not reachable (the agent reconnects)")
}

/// Opens a domain's console through `virDomainOpenConsole` on each
/// (re)connect of its hub.
fn console_connector(shared: Weak<Shared>, domain: String, alias: String) -> Connector {
    Arc::new(move |force| {
        let (shared, domain, alias) = (shared.clone(), domain.clone(), alias.clone());
        Box::pin(async move {
            let shared = shared
                .upgrade()
                .ok_or_else(|| io::Error::other("agent shutting down"))?;
            current_conn(&shared).ok_or_else(not_connected)?;
            let force = force || shared.cfg.console_force;
            let handle = Handle::current();
            let what = format!("console {alias} of {domain}");
            let uri = shared.cfg.uri.clone();
            tokio::task::spawn_blocking(move || {
                let conn = stream_connection(&uri)?;
                let dom = conn.lookup_domain_by_name(&domain).map_err(io_err)?;
                let stream = Stream::new(&conn, sys::VIR_STREAM_NONBLOCK).map_err(io_err)?;
                let mut flags = sys::VIR_DOMAIN_CONSOLE_SAFE;
                if force {
                    flags |= sys::VIR_DOMAIN_CONSOLE_FORCE;
                }
                dom.open_console(Some(&alias), &stream, flags)
                    .map_err(io_err)?;
                bridge(&conn, stream, handle, what, StreamEnd::Eof)
            })
            .await
            .map_err(io::Error::other)?
        })
    })
}

/// How a served domain's channel is reached: its socket when the daemon is
/// local (and configured so), else through `virDomainOpenChannel`.
pub enum LibvirtChannel {
    Socket(PathBuf),
    Stream,
}

impl Backend for LibvirtBackend {
    /// The index of the domain's VNC display among its graphics.
    type Vnc = u32;
    type Channel = LibvirtChannel;

    fn inventory(&self) -> watch::Receiver<Inventory> {
        self.shared.inventory.subscribe()
    }

    fn lookup(&self, req: &OpenRequest) -> Result<Endpoint<u32, LibvirtChannel>, Close> {
        let table = self.shared.domains.lock().expect("domains lock");
        let served = table
            .get(&req.guest)
            .ok_or_else(|| table.not_served(&self.shared.node, &req.guest))?;
        if let Some(refused) = table.migrating(&self.shared.node, &req.guest) {
            return Err(refused);
        }
        if let Some(hub) = served.run.consoles.get(&req.channel) {
            return Ok(Endpoint::Console(hub.clone()));
        }
        match (served.devices.vnc, req.channel.as_str()) {
            (Some(idx), "vnc") => return Ok(Endpoint::Vnc(idx)),
            (Some(idx), "audio") => {
                return match &served.devices.audio_missing {
                    None => Ok(Endpoint::Audio(idx)),
                    Some(why) => Err(Close::new(
                        CloseCode::UnknownChannel,
                        format!("audio unavailable: {why}"),
                    )),
                }
            }
            _ => {}
        }
        if let Some(slot) = served.run.channels.get(&req.channel) {
            let socket = served.devices.sockets.get(&req.channel);
            let how = match socket.filter(|_| self.shared.cfg.channels_by_socket()) {
                Some(path) => LibvirtChannel::Socket(path.clone()),
                None => LibvirtChannel::Stream,
            };
            return Ok(Endpoint::Channel(slot.clone(), how));
        }
        if let Some(drive) = served.run.drives.get(&req.channel) {
            return Ok(Endpoint::Media(drive.clone()));
        }
        Err(Close::new(
            CloseCode::UnknownChannel,
            format!("guest {} has no channel {}", req.guest, req.channel),
        ))
    }

    async fn attach(
        &self,
        hub: ConsoleHub,
        req: &OpenRequest,
    ) -> Result<(ConsoleRx, ConsoleTx), Close> {
        if !hub.connected() {
            // Just started, or libvirtd just came back: give the hub a
            // moment. With --force, take the console from whoever holds it
            // (an administrator's `virsh console`).
            let mut state = hub.watch_connected();
            hub.retry_now(req.force);
            let _ = tokio::time::timeout(CONNECT_WAIT, state.wait_for(|c| *c)).await;
        }
        if !hub.connected() {
            let why = hub.last_error().unwrap_or_else(|| "connecting".into());
            // libvirt reports a held console only in its message (the code
            // is the generic VIR_ERR_OPERATION_FAILED).
            return Err(if why.contains("Active console session") {
                Close::new(
                    CloseCode::ChannelInUse,
                    format!(
                        "{} of {} is held by another console client; use --force to take it over",
                        req.channel, req.guest
                    ),
                )
            } else {
                Close::new(
                    CloseCode::BackendError,
                    format!("{} of {} is not connected: {why}", req.channel, req.guest),
                )
            });
        }
        Ok(hub.attach(req.session, req.mode, req.force))
    }

    async fn open_vnc(&self, idx: u32, req: &OpenRequest) -> Result<Box<dyn Duplex>, Close> {
        let guest = req.guest.clone();
        let conn = self.conn(&guest)?;
        let what = format!("VNC of {guest}");
        let fd = tokio::task::spawn_blocking(move || {
            let dom = conn.lookup_domain_by_name(&guest)?;
            dom.open_graphics_fd(idx, sys::VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
        })
        .await
        .map_err(|e| Close::new(CloseCode::Internal, e.to_string()))?
        .map_err(|e| {
            // Gone from this node between the routes and the open (it
            // migrated on, or stopped): the guest is down here, which the
            // gateway's following retries, not a backend fault.
            let gone = e.code() == ErrorNumberEnum::from(ErrorNumber::NoDomain);
            let code = if gone {
                CloseCode::GuestDown
            } else {
                CloseCode::BackendError
            };
            Close::new(code, format!("{what}: {}", e.message()))
        })?;
        tracing::debug!(session = req.session, guest = %req.guest, "VNC client handed to QEMU (virDomainOpenGraphicsFD)");
        let std_stream = std::os::unix::net::UnixStream::from(ffi::adopt_fd(fd));
        let stream = std_stream
            .set_nonblocking(true)
            .and_then(|_| tokio::net::UnixStream::from_std(std_stream))
            .map_err(|e| Close::new(CloseCode::BackendError, format!("{what}: {e}")))?;
        Ok(self.signal_on_eof(req.session, stream))
    }

    async fn open_channel(
        &self,
        how: LibvirtChannel,
        req: &OpenRequest,
        what: &str,
    ) -> Result<Box<dyn Duplex>, Close> {
        let guest = req.guest.clone();
        self.conn(&guest)?;
        if let LibvirtChannel::Socket(path) = how {
            let s = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                Close::new(
                    CloseCode::BackendError,
                    format!("{what}: connecting to {}: {e}", path.display()),
                )
            })?;
            tracing::debug!(session = req.session, channel = %what, path = %path.display(), "channel opened on its socket");
            return Ok(self.signal_on_eof(req.session, s));
        }
        let uri = self.shared.cfg.uri.clone();
        let (name, force) = (req.channel.clone(), req.force);
        let handle = Handle::current();
        let w = what.to_string();
        let ended = Ended::default();
        let end = StreamEnd::Signal(ended.clone());
        let stream = tokio::task::spawn_blocking(move || {
            let conn = stream_connection(&uri)?;
            let dom = conn.lookup_domain_by_name(&guest).map_err(io_err)?;
            let stream = Stream::new(&conn, sys::VIR_STREAM_NONBLOCK).map_err(io_err)?;
            // Our own slot already decided who may have the channel;
            // FORCE also ends a stream of the session just taken over.
            let flags = if force {
                sys::VIR_DOMAIN_CHANNEL_FORCE
            } else {
                0
            };
            dom.open_channel(Some(&name), &stream, flags)
                .map_err(io_err)?;
            bridge(&conn, stream, handle, w, end)
        })
        .await
        .map_err(|e| Close::new(CloseCode::Internal, e.to_string()))?
        .map_err(|e| Close::new(CloseCode::BackendError, format!("{what}: {e}")))?;
        tracing::debug!(session = req.session, channel = %what, "channel opened through virDomainOpenChannel");
        self.shared
            .stream_ends
            .lock()
            .expect("stream_ends lock")
            .insert(req.session, ended);
        Ok(stream)
    }

    fn session_end(
        &self,
        req: &OpenRequest,
    ) -> impl std::future::Future<Output = Close> + Send + 'static {
        let run = self
            .shared
            .domains
            .lock()
            .expect("domains lock")
            .get(&req.guest)
            .map(|r| (r.run.alive.clone(), r.run.stop_reason.clone()));
        let stream_end = self
            .shared
            .stream_ends
            .lock()
            .expect("stream_ends lock")
            .remove(&req.session);
        let what = format!("{} of {}", req.channel, req.guest);
        let shutdown = self.shared.shutdown.clone();
        async move {
            let Some((alive, why)) = run else {
                return Close::new(CloseCode::GuestDown, "guest stopped");
            };
            let ended = async {
                match stream_end {
                    Some(e) => {
                        e.token.cancelled().await;
                        e.why.get().cloned()
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = alive.cancelled() => {}
                why = ended => {
                    if let Some(close) = why {
                        return close;
                    }
                    // Usually the domain stopping; its event follows.
                    let stopped = tokio::time::timeout(STREAM_END_GRACE, alive.cancelled()).await;
                    if stopped.is_err() {
                        return Close::new(
                            CloseCode::BackendError,
                            format!("libvirt ended the stream to {what} (libvirtd restarted?); reconnect"),
                        );
                    }
                }
            }
            if shutdown.is_cancelled() {
                return Close::new(CloseCode::GoingAway, "the agent is shutting down");
            }
            domains::stopped_close(why.get().map(String::as_str).unwrap_or("no longer running"))
        }
    }
}
