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
//!   than [`STREAM_BACKLOG`] behind ends with a reason;
//! * VNC: `virDomainOpenGraphicsFD`, so no VNC listener is needed;
//! * inventory: a supervisor task holds one connection, re-reads a domain on
//!   each of its lifecycle events and every domain after a (re)connect, and
//!   reconnects with back-off when libvirtd goes away. Domains keep running
//!   meanwhile; their consoles reconnect once libvirtd is back.
//!
//! When a domain stops (shut down, destroyed, crashed, migrated away) its
//! sessions are closed with [`CloseCode::GuestDown`] "guest stopped". A
//! selected persistent domain that is defined but not running is listed as
//! [`GuestState::Down`] (no channels: its endpoints are known once it runs),
//! so a session to it is refused as "not running" rather than "unknown".
//!
//! libvirt calls block, so they run on tokio's blocking pool. Streams are
//! non-blocking, woken by libvirt's event loop, each on a connection of its
//! own, and bridged to tokio by [`bridge`]: one thread per direction,
//! through bounded buffers.

mod ffi;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::stream::Stream;
use virt::sys;
use vmgate_wire::{
    ChannelInfo, ChannelKind, Close, CloseCode, GuestInfo, GuestState, Inventory, OpenRequest,
};

use super::{Backend, Duplex, Opened, Slot};
use crate::config::{AgentConfig, LibvirtConfig};
use crate::console::{Connector, ConsoleHub, ConsoleSpec};

/// Lifecycle events queued between libvirt's event thread and the
/// supervisor; on overflow the supervisor re-reads every domain.
const EVENT_DEPTH: usize = 256;
/// Bytes in the pipe between tokio and a libvirt stream, per direction (from
/// the guest, [`STREAM_BACKLOG`] more may wait before it), and the size of
/// one read from either.
const BRIDGE_BUF: usize = 64 * 1024;
/// Guest output a libvirt stream may hold for a reader that is behind.
/// libvirt's client library queues whatever libvirtd sends, without limit,
/// so the agent reads every stream at once into a backlog of its own,
/// bounded by this; a session whose client falls further behind ends.
/// (Console hubs always read, and channels on their socket have the
/// kernel's flow control.)
const STREAM_BACKLOG: usize = 8 << 20;
/// The channel libvirt itself talks to the QEMU guest agent on: libvirtd
/// holds it, so it is never offered to users.
const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// libvirt keepalive: a probe every 5 s, the connection is dead after 3
/// unanswered (a hung libvirtd is noticed within ~20 s).
const KEEPALIVE_INTERVAL: i32 = 5;
const KEEPALIVE_COUNT: u32 = 3;
/// After a channel or VNC stream ends on libvirt's side, how long the
/// session waits for the domain's stop event to say why before it closes as
/// a backend failure (libvirtd went away, say).
const STREAM_END_GRACE: Duration = Duration::from_secs(10);
/// How long an attach waits for a console that is not connected (being
/// taken over with `--force`, or reconnecting after libvirtd came back).
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// A domain's endpoints, from its live XML.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Devices {
    /// Aliases of pty serial ports and consoles (`serial0`, `console1`).
    consoles: Vec<String>,
    /// Target names of unix virtio-serial channels.
    channels: Vec<String>,
    /// Their unix sockets (libvirt's `<source path>`), by target name.
    sockets: BTreeMap<String, PathBuf>,
    /// Index of the first VNC display among the domain's graphics.
    vnc: Option<u32>,
}

/// A running domain the agent serves.
struct Running {
    /// libvirt's id of this run: a domain started again gets a new one.
    id: u32,
    devices: Devices,
    consoles: HashMap<String, ConsoleHub>,
    /// Exclusive channels, by name.
    channels: HashMap<String, Arc<Slot>>,
    /// Cancelled when the domain stops: its hubs stop and its sessions end.
    alive: CancellationToken,
    /// Why it stopped, set before `alive` is cancelled.
    stop_reason: Arc<OnceLock<String>>,
}

struct Shared {
    node: String,
    cfg: LibvirtConfig,
    log_dir: PathBuf,
    scrollback_bytes: usize,
    /// The current connection; `None` while libvirtd is unreachable.
    conn: Mutex<Option<Connect>>,
    domains: Mutex<HashMap<String, Running>>,
    /// Selected persistent domains that are defined but not running, never
    /// also in `domains`. Locked after `domains` when both are held.
    down: Mutex<BTreeSet<String>>,
    inventory: watch::Sender<Inventory>,
    /// Channel and VNC sessions whose libvirt stream may end, by session
    /// id: picked up by [`Backend::session_end`] right after the open.
    stream_ends: Mutex<HashMap<u64, Ended>>,
    shutdown: CancellationToken,
}

/// The domains of one libvirt daemon.
pub struct LibvirtBackend {
    shared: Arc<Shared>,
}

impl LibvirtBackend {
    /// Starts following libvirt; the inventory fills once connected.
    pub fn start(cfg: &AgentConfig, shutdown: CancellationToken) -> LibvirtBackend {
        let shared = Arc::new(Shared {
            node: cfg.node.clone(),
            cfg: cfg.libvirt.clone(),
            log_dir: cfg.log_dir.clone(),
            scrollback_bytes: cfg.scrollback_bytes,
            conn: Mutex::new(None),
            domains: Mutex::new(HashMap::new()),
            down: Mutex::new(BTreeSet::new()),
            inventory: watch::channel(Inventory {
                node: cfg.node.clone(),
                guests: Vec::new(),
            })
            .0,
            stream_ends: Mutex::new(HashMap::new()),
            shutdown,
        });
        tokio::spawn(supervise(shared.clone()));
        LibvirtBackend { shared }
    }
}

/// Holds the connection: connects, follows events, reconnects.
async fn supervise(shared: Arc<Shared>) {
    if let Err(e) = ffi::init_event_loop() {
        tracing::error!(error = %e, "cannot start libvirt's event loop; the libvirt backend serves nothing");
        return;
    }
    let uri = shared.cfg.uri.clone();
    let mut backoff = RECONNECT_MIN;
    let mut failures = 0u32;
    loop {
        let (tx, mut events) = mpsc::channel(EVENT_DEPTH);
        let overflow = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(ffi::Closed {
            token: CancellationToken::new(),
            reason: Mutex::new("connection closed"),
        });
        let opened = {
            let (uri, overflow, closed) = (uri.clone(), overflow.clone(), closed.clone());
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                r = tokio::task::spawn_blocking(move || open(&uri, tx, overflow, closed)) => r,
            }
        };
        match opened {
            Ok(Ok((conn, registration))) => {
                tracing::info!(%uri, "connected to libvirt");
                failures = 0;
                backoff = RECONNECT_MIN;
                *shared.conn.lock().expect("conn lock") = Some(conn);
                resync(&shared).await;
                let why = loop {
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return,
                        _ = closed.token.cancelled() => {
                            break *closed.reason.lock().expect("reason lock");
                        }
                        ev = events.recv() => match ev {
                            None => break "event channel closed",
                            Some(ev) => {
                                if overflow.swap(false, Ordering::SeqCst) {
                                    tracing::warn!("libvirt events overflowed; re-reading every domain");
                                    resync(&shared).await;
                                } else {
                                    tracing::debug!(domain = %ev.domain, event = ev.event, detail = ev.detail, "libvirt lifecycle event");
                                    refresh(&shared, &ev.domain, stop_reason(ev.event, ev.detail)).await;
                                }
                            }
                        }
                    }
                };
                let conn = shared.conn.lock().expect("conn lock").take();
                tracing::warn!(%uri, reason = why, "lost the libvirt connection; reconnecting (domains keep running)");
                // Deregistering may talk to the (dead) daemon: not on a
                // runtime thread.
                tokio::task::spawn_blocking(move || drop((registration, conn)));
            }
            Ok(Err(e)) => {
                failures += 1;
                // The first failure says why; repeats while libvirtd is
                // away would only fill the log.
                if failures == 1 {
                    tracing::warn!(%uri, error = %e, "cannot connect to libvirt; retrying");
                } else {
                    tracing::debug!(%uri, error = %e, "cannot connect to libvirt; retrying");
                }
            }
            Err(e) => tracing::error!(error = %e, "libvirt connect task failed"),
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Opens the connection and registers for events (blocking).
fn open(
    uri: &str,
    events: mpsc::Sender<ffi::Lifecycle>,
    overflow: Arc<AtomicBool>,
    closed: Arc<ffi::Closed>,
) -> Result<(Connect, ffi::Registration), String> {
    let conn = Connect::open(Some(uri)).map_err(|e| e.message().to_string())?;
    // Local drivers (test:///) have no keepalive; that is fine.
    let _ = conn.set_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT);
    let reg = ffi::register(&conn, events, overflow, closed)
        .map_err(|e| format!("registering for domain events: {}", e.message()))?;
    Ok((conn, reg))
}

/// The stop reason of a domain that migrated away: its sessions close with
/// [`CloseCode::GuestMoved`], which the gateway follows to the new node.
const MIGRATED_AWAY: &str = "migrated to another node";

/// Why a domain stopped, for events that mean it did; `None` for the others
/// (a domain seen inactive after, say, its `SHUTDOWN` event is left to the
/// `STOPPED` event that follows, which says how it stopped).
fn stop_reason(event: u32, detail: u32) -> Option<&'static str> {
    if event != sys::VIR_DOMAIN_EVENT_STOPPED && event != sys::VIR_DOMAIN_EVENT_CRASHED {
        return None;
    }
    Some(match (event, detail) {
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) => "shut down",
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED) => "destroyed",
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED)
        | (sys::VIR_DOMAIN_EVENT_CRASHED, _) => "crashed",
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED) => MIGRATED_AWAY,
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_SAVED) => "saved",
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_FAILED) => "failed",
        _ => "no longer running",
    })
}

/// What the agent learns about one domain (blocking).
enum Seen {
    /// Running and selected: serve it.
    Serve { id: u32, devices: Devices },
    /// Selected, persistent and not running: list it as down.
    Down,
    /// Gone, not selected, or stopped and transient.
    Ignore,
}

fn inspect(cfg: &LibvirtConfig, dom: &Domain) -> Seen {
    let Ok(name) = dom.name() else {
        return Seen::Ignore;
    };
    if !cfg.selects_name(&name) {
        return Seen::Ignore;
    }
    if !vmgate_wire::valid_name(&name) {
        tracing::warn!(domain = %name, "domain name is not a valid guest name; not exposed");
        return Seen::Ignore;
    }
    if let Some(uri) = &cfg.metadata_uri {
        if dom
            .metadata(sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(uri), 0)
            .is_err()
        {
            return Seen::Ignore;
        }
    }
    match (dom.is_active(), dom.is_persistent()) {
        (Ok(true), _) => {}
        (Ok(false), Ok(true)) => return Seen::Down,
        _ => return Seen::Ignore,
    }
    let Some(id) = dom.id() else {
        return Seen::Ignore;
    };
    match dom.xml_desc(0) {
        Ok(xml) => match parse_devices(&xml) {
            Ok(devices) => Seen::Serve { id, devices },
            Err(e) => {
                tracing::warn!(domain = %name, error = %e, "cannot read the domain's XML; not exposed");
                Seen::Ignore
            }
        },
        Err(e) => {
            tracing::debug!(domain = %name, error = %e.message(), "domain vanished while read");
            Seen::Ignore
        }
    }
}

fn current_conn(shared: &Shared) -> Option<Connect> {
    shared.conn.lock().expect("conn lock").clone()
}

/// Re-reads every domain and reconciles (after a (re)connect or overflow).
async fn resync(shared: &Arc<Shared>) {
    let Some(conn) = current_conn(shared) else {
        return;
    };
    let cfg = shared.cfg.clone();
    let seen = tokio::task::spawn_blocking(move || {
        // Active and inactive (defined) domains alike.
        let doms = conn
            .list_all_domains(0)
            .map_err(|e| e.message().to_string())?;
        Ok::<_, String>(
            doms.iter()
                .filter_map(|d| match (d.name(), inspect(&cfg, d)) {
                    (Ok(_), Seen::Ignore) | (Err(_), _) => None,
                    (Ok(name), seen) => Some((name, seen)),
                })
                .collect::<HashMap<_, _>>(),
        )
    })
    .await;
    let seen = match seen {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot list libvirt domains");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "libvirt list task failed");
            return;
        }
    };
    {
        let mut domains = shared.domains.lock().expect("domains lock");
        let mut down = shared.down.lock().expect("down lock");
        let gone: Vec<String> = domains
            .keys()
            .filter(|n| !matches!(seen.get(*n), Some(Seen::Serve { .. })))
            .cloned()
            .collect();
        for name in gone {
            stop(&mut domains, &name, "no longer running");
        }
        down.clear();
        for (name, seen) in seen {
            match seen {
                Seen::Serve { id, devices } => serve(shared, &mut domains, name, id, devices),
                Seen::Down => {
                    down.insert(name);
                }
                Seen::Ignore => {}
            }
        }
    }
    publish(shared);
}

/// Re-reads one domain after an event about it; `stopped` says how, if the
/// event was its stop.
async fn refresh(shared: &Arc<Shared>, name: &str, stopped: Option<&'static str>) {
    let Some(conn) = current_conn(shared) else {
        return;
    };
    let cfg = shared.cfg.clone();
    let lookup = name.to_string();
    let seen = tokio::task::spawn_blocking(move || match conn.lookup_domain_by_name(&lookup) {
        Ok(dom) => inspect(&cfg, &dom),
        Err(_) => Seen::Ignore,
    })
    .await
    .unwrap_or(Seen::Ignore);
    {
        let mut domains = shared.domains.lock().expect("domains lock");
        let mut down = shared.down.lock().expect("down lock");
        if let (Some(reason), false) = (stopped, matches!(seen, Seen::Serve { .. })) {
            stop(&mut domains, name, reason);
        }
        match seen {
            Seen::Serve { id, devices } => {
                down.remove(name);
                serve(shared, &mut domains, name.into(), id, devices)
            }
            // Inactive but still served: its STOPPED event follows and
            // closes its sessions with the reason.
            Seen::Down if domains.contains_key(name) => {}
            Seen::Down => {
                if down.insert(name.into()) {
                    tracing::info!(domain = %name, "domain defined but not running; listed as down");
                }
            }
            Seen::Ignore => {
                down.remove(name);
            }
        }
    }
    publish(shared);
}

/// Starts serving a running domain, unless this run of it is served already.
fn serve(
    shared: &Arc<Shared>,
    domains: &mut HashMap<String, Running>,
    name: String,
    id: u32,
    devices: Devices,
) {
    if domains
        .get(&name)
        .is_some_and(|r| r.id == id && r.devices == devices)
    {
        return;
    }
    if domains.contains_key(&name) {
        // Restarted (new id) or its devices changed: start over.
        stop(domains, &name, "restarted");
    }
    let alive = shared.shutdown.child_token();
    let consoles = devices
        .consoles
        .iter()
        .map(|alias| {
            let spec = ConsoleSpec {
                guest: name.clone(),
                name: alias.clone(),
                connector: console_connector(Arc::downgrade(shared), name.clone(), alias.clone()),
                log: shared.log_dir.join(format!("{name}.{alias}.log")),
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
    tracing::info!(domain = %name, id, consoles = ?devices.consoles, channels = ?devices.channels, vnc = devices.vnc.is_some(), "serving domain");
    domains.insert(
        name,
        Running {
            id,
            devices,
            consoles,
            channels,
            alive,
            stop_reason: Arc::new(OnceLock::new()),
        },
    );
}

/// Stops serving a domain: its hubs stop, its sessions close.
fn stop(domains: &mut HashMap<String, Running>, name: &str, reason: &str) {
    if let Some(r) = domains.remove(name) {
        tracing::info!(domain = %name, reason, "domain stopped; closing its sessions");
        let _ = r.stop_reason.set(reason.to_string());
        r.alive.cancel();
    }
}

fn publish(shared: &Shared) {
    let domains = shared.domains.lock().expect("domains lock");
    let down = shared.down.lock().expect("down lock");
    let guests = listing(&domains, &down);
    drop((down, domains));
    shared.inventory.send_if_modified(|inv| {
        let changed = inv.guests != guests;
        inv.guests = guests;
        changed
    });
}

/// The inventory's guests: the running domains with their endpoints, and
/// the defined ones that are down, without channels.
fn listing(domains: &HashMap<String, Running>, down: &BTreeSet<String>) -> Vec<GuestInfo> {
    let mut guests: Vec<GuestInfo> = domains
        .iter()
        .map(|(name, r)| {
            let d = &r.devices;
            let mut channels: Vec<ChannelInfo> = d
                .consoles
                .iter()
                .map(|c| ChannelInfo {
                    name: c.clone(),
                    kind: ChannelKind::Serial,
                })
                .collect();
            if d.vnc.is_some() {
                channels.push(ChannelInfo {
                    name: "vnc".into(),
                    kind: ChannelKind::Vnc,
                });
            }
            channels.extend(d.channels.iter().map(|c| ChannelInfo {
                name: c.clone(),
                kind: ChannelKind::Channel,
            }));
            GuestInfo {
                name: name.clone(),
                state: GuestState::Running,
                channels,
            }
        })
        .chain(down.iter().map(|name| GuestInfo {
            name: name.clone(),
            state: GuestState::Down,
            channels: Vec::new(),
        }))
        .collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    guests
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

/// Reads the endpoints the agent can open from a domain's live XML.
fn parse_devices(xml: &str) -> Result<Devices, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut out = Devices::default();
    let Some(devices) = doc.descendants().find(|n| n.has_tag_name("devices")) else {
        return Ok(out);
    };
    let mut graphics = 0u32;
    for n in devices.children().filter(|n| n.is_element()) {
        let ty = n.attribute("type");
        match n.tag_name().name() {
            // virDomainOpenConsole opens pty consoles only. A <console>
            // whose target is the serial port is that serial port again.
            "serial" | "console" if ty == Some("pty") => {
                let target = child(n, "target").and_then(|t| t.attribute("type"));
                if n.has_tag_name("console") && target == Some("serial") {
                    continue;
                }
                if let Some(alias) = child(n, "alias").and_then(|a| a.attribute("name")) {
                    out.consoles.push(alias.to_string());
                }
            }
            // virDomainOpenChannel opens unix channels only.
            "channel" if ty == Some("unix") => {
                let target = child(n, "target");
                if target.and_then(|t| t.attribute("type")) == Some("virtio") {
                    let name = target.and_then(|t| t.attribute("name"));
                    if let Some(name) = name.filter(|n| *n != GUEST_AGENT_CHANNEL) {
                        out.channels.push(name.to_string());
                        let path = child(n, "source").and_then(|s| s.attribute("path"));
                        if let Some(path) = path {
                            out.sockets.insert(name.to_string(), path.into());
                        }
                    }
                }
            }
            "graphics" => {
                if ty == Some("vnc") && out.vnc.is_none() {
                    out.vnc = Some(graphics);
                }
                graphics += 1;
            }
            _ => {}
        }
    }
    // Names travel in the wire header and must not collide with each other
    // or with `vnc`.
    let mut seen = std::collections::HashSet::from(["vnc".to_string()]);
    out.consoles
        .retain(|c| vmgate_wire::valid_name(c) && seen.insert(c.clone()));
    out.channels
        .retain(|c| vmgate_wire::valid_name(c) && seen.insert(c.clone()));
    out.sockets.retain(|c, _| out.channels.contains(c));
    Ok(out)
}

fn io_err(e: virt::error::Error) -> io::Error {
    io::Error::other(e.message().to_string())
}

/// A connection of its own for one stream (blocking), so a busy stream
/// never delays the agent's main connection (events, lookups, VNC) or
/// another stream.
fn stream_connection(uri: &str) -> io::Result<Connect> {
    Connect::open(Some(uri)).map_err(io_err)
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

/// What the tokio side sees when libvirt ends a bridged stream.
enum StreamEnd {
    /// End-of-stream (a console hub reconnects on it).
    Eof,
    /// Nothing on the pipe; [`Ended`] says so instead, so the session can
    /// close with a reason. A libvirt stream does not half-close: its end
    /// means QEMU or libvirtd went away, which a bare end-of-stream would
    /// not tell the user.
    Signal(Ended),
}

/// The end of a channel or VNC session's stream, seen by
/// [`Backend::session_end`]: `token` is cancelled when the stream ends,
/// with `why` set first when the agent itself knows the reason.
#[derive(Clone, Default)]
struct Ended {
    token: CancellationToken,
    why: Arc<OnceLock<Close>>,
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
struct SignalOnEof<S> {
    inner: S,
    ended: CancellationToken,
    shut: bool,
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
fn bridge(
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

impl LibvirtBackend {
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
        Box::new(SignalOnEof {
            inner,
            ended: ended.token,
            shut: false,
        })
    }

    async fn open_console(&self, hub: ConsoleHub, req: &OpenRequest) -> Result<Opened, Close> {
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
        let (rx, tx) = hub.attach(req.session, req.mode, req.force);
        Ok(Opened::Console(rx, tx))
    }
}

/// Why a guest the agent does not serve is refused: down if it is a
/// defined domain that is not running (the gateway may not know yet).
fn not_served(shared: &Shared, guest: &str) -> Close {
    if shared.down.lock().expect("down lock").contains(guest) {
        return Close::new(
            CloseCode::GuestDown,
            format!(
                "guest {guest} is not running (its libvirt domain is shut off on node {}; start it first)",
                shared.node
            ),
        );
    }
    Close::new(
        CloseCode::UnknownGuest,
        format!("no domain {guest} is served on node {}", shared.node),
    )
}

impl Backend for LibvirtBackend {
    fn inventory(&self) -> watch::Receiver<Inventory> {
        self.shared.inventory.subscribe()
    }

    async fn open(&self, req: &OpenRequest) -> Result<Opened, Close> {
        let (hub, slot, vnc, socket) = {
            let domains = self.shared.domains.lock().expect("domains lock");
            let r = domains
                .get(&req.guest)
                .ok_or_else(|| not_served(&self.shared, &req.guest))?;
            (
                r.consoles.get(&req.channel).cloned(),
                r.channels.get(&req.channel).cloned(),
                r.devices.vnc,
                r.devices.sockets.get(&req.channel).cloned(),
            )
        };
        if let Some(hub) = hub {
            return self.open_console(hub, req).await;
        }
        let guest = req.guest.clone();
        if req.channel == "vnc" {
            if let Some(idx) = vnc {
                let conn = self.conn(&guest)?;
                let what = format!("VNC of {guest}");
                let fd = tokio::task::spawn_blocking(move || {
                    let dom = conn.lookup_domain_by_name(&guest)?;
                    dom.open_graphics_fd(idx, sys::VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
                })
                .await
                .map_err(|e| Close::new(CloseCode::Internal, e.to_string()))?
                .map_err(|e| {
                    Close::new(CloseCode::BackendError, format!("{what}: {}", e.message()))
                })?;
                tracing::debug!(session = req.session, guest = %req.guest, "VNC client handed to QEMU (virDomainOpenGraphicsFD)");
                let std_stream = std::os::unix::net::UnixStream::from(ffi::adopt_fd(fd));
                let stream = std_stream
                    .set_nonblocking(true)
                    .and_then(|_| tokio::net::UnixStream::from_std(std_stream))
                    .map_err(|e| Close::new(CloseCode::BackendError, format!("{what}: {e}")))?;
                return Ok(Opened::Stream {
                    stream: self.signal_on_eof(req.session, stream),
                    what,
                    stop: None,
                });
            }
        }
        if let Some(slot) = slot {
            let what = format!("channel {} of {}", req.channel, guest);
            let held = slot.take(req.session, req.force, &what).await?;
            self.conn(&guest)?;
            if let Some(path) = socket.filter(|_| self.shared.cfg.channels_by_socket()) {
                let s = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                    Close::new(
                        CloseCode::BackendError,
                        format!("{what}: connecting to {}: {e}", path.display()),
                    )
                })?;
                tracing::debug!(session = req.session, channel = %what, path = %path.display(), "channel opened on its socket");
                return Ok(Opened::Stream {
                    stream: self.signal_on_eof(req.session, s),
                    what,
                    stop: Some(held),
                });
            }
            let uri = self.shared.cfg.uri.clone();
            let (name, force) = (req.channel.clone(), req.force);
            let handle = Handle::current();
            let w = what.clone();
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
            return Ok(Opened::Stream {
                stream,
                what,
                stop: Some(held),
            });
        }
        Err(Close::new(
            CloseCode::UnknownChannel,
            format!("guest {} has no channel {}", req.guest, req.channel),
        ))
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
            .map(|r| (r.alive.clone(), r.stop_reason.clone()));
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
            let why = why.get().map(String::as_str).unwrap_or("no longer running");
            if why == MIGRATED_AWAY {
                return Close::new(
                    CloseCode::GuestMoved,
                    format!("guest {MIGRATED_AWAY}: reconnect"),
                );
            }
            Close::new(CloseCode::GuestDown, format!("guest stopped ({why})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = r#"<domain type='qemu' id='3'>
      <name>demo</name>
      <devices>
        <serial type='pty'>
          <source path='/dev/pts/3'/>
          <target type='isa-serial' port='0'><model name='isa-serial'/></target>
          <alias name='serial0'/>
        </serial>
        <console type='pty' tty='/dev/pts/3'>
          <target type='serial' port='0'/>
          <alias name='serial0'/>
        </console>
        <console type='pty'>
          <target type='virtio' port='1'/>
          <alias name='console1'/>
        </console>
        <serial type='file'><target port='1'/><alias name='serial1'/></serial>
        <channel type='unix'>
          <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-demo/test.echo'/>
          <target type='virtio' name='test.echo' state='disconnected'/>
          <alias name='channel0'/>
        </channel>
        <channel type='unix'>
          <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-demo/org.qemu.guest_agent.0'/>
          <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
        </channel>
        <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
        <channel type='unix'><target type='virtio' name='bad/name'/></channel>
        <graphics type='spice' autoport='yes'/>
        <graphics type='vnc' socket='/run/vnc.sock'/>
      </devices>
    </domain>"#;

    #[test]
    fn parses_pty_consoles_unix_channels_and_the_vnc_index() {
        let d = parse_devices(LIVE).unwrap();
        assert_eq!(d.consoles, vec!["serial0", "console1"]);
        // libvirt's own guest-agent channel is libvirtd's, never offered.
        assert_eq!(d.channels, vec!["test.echo"]);
        assert_eq!(
            d.sockets,
            BTreeMap::from([(
                "test.echo".to_string(),
                PathBuf::from("/var/lib/libvirt/qemu/channel/target/domain-3-demo/test.echo")
            )])
        );
        assert_eq!(d.vnc, Some(1));
    }

    #[test]
    fn a_domain_without_devices_has_no_endpoints_and_bad_xml_is_an_error() {
        assert_eq!(
            parse_devices("<domain><name>x</name></domain>").unwrap(),
            Devices::default()
        );
        assert!(parse_devices("<domain>").is_err());
    }

    #[test]
    fn running_domains_list_their_endpoints_and_defined_ones_are_down_without_any() {
        let running = Running {
            id: 3,
            devices: parse_devices(LIVE).unwrap(),
            consoles: HashMap::new(),
            channels: HashMap::new(),
            alive: CancellationToken::new(),
            stop_reason: Arc::default(),
        };
        let domains = HashMap::from([("demo".to_string(), running)]);
        let down = BTreeSet::from(["off".to_string(), "alpha".to_string()]);
        let guests = listing(&domains, &down);
        let seen: Vec<_> = guests
            .iter()
            .map(|g| (g.name.as_str(), g.state, g.channels.len()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("alpha", GuestState::Down, 0),
                ("demo", GuestState::Running, 4),
                ("off", GuestState::Down, 0),
            ]
        );
    }

    #[test]
    fn stop_reasons_name_the_cause() {
        assert_eq!(
            stop_reason(
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED
            ),
            Some("destroyed")
        );
        assert!(stop_reason(
            sys::VIR_DOMAIN_EVENT_STOPPED,
            sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED
        )
        .unwrap()
        .contains("migrated"));
        assert_eq!(
            stop_reason(sys::VIR_DOMAIN_EVENT_CRASHED, 0),
            Some("crashed")
        );
        assert_eq!(stop_reason(sys::VIR_DOMAIN_EVENT_SHUTDOWN, 0), None);
        assert_eq!(stop_reason(sys::VIR_DOMAIN_EVENT_STARTED, 0), None);
    }
}
