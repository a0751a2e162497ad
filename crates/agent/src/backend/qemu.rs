//! The `qemu` backend: guests declared in the agent's configuration, reached
//! through the unix sockets QEMU was started with. A VNC session is either
//! a fresh socketpair handed to QEMU over QMP (`vnc_via = "qmp"`) or a
//! connection to QEMU's VNC unix socket.
//!
//! A guest with a QMP socket is also watched for live migration: its run
//! state is polled (`query-status`, every [`POLL`]) and
//! * a QEMU waiting for an incoming migration (`inmigrate`) is reported
//!   down, so the gateway keeps routing to the node the guest runs on;
//! * a QEMU paused for the last phase of a migration away
//!   (`finish-migrate`) is reported migrating out: the gateway moves the
//!   sessions once the new node runs the guest;
//! * a QEMU the guest migrated away from (`postmigrate`) is reported down
//!   and its sessions end with [`CloseCode::GuestMoved`], the same close
//!   the `libvirt` backend gives, which the gateway follows to the node
//!   that now reports the guest running (docs/migration.md);
//! * while a QEMU waits for the guest (`inmigrate`), the agent connects its
//!   virtio-serial ports ahead of time and holds those connections
//!   ([`Parked`]) for the sessions that follow the guest here: QEMU drops
//!   what the guest writes to a port nobody is connected to, so without
//!   them the guest's first writes after it resumed would be lost.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vmgate_wire::{
    ChannelInfo, ChannelKind, Close, CloseCode, GuestInfo, GuestState, Inventory, Mode, OpenRequest,
};

use super::media::{Drive, MediaDir, Tray};
use super::{Backend, ChardevStream, Endpoint, Slot};
use crate::config::{AgentConfig, GuestConfig, VncVia};
use crate::console::{unix_connector, ConsoleHub, ConsoleLogs, ConsoleRx, ConsoleSpec, ConsoleTx};
use crate::duplex::Duplex;
use crate::qmp::Qmp;

struct Guest {
    config: GuestConfig,
    consoles: HashMap<String, ConsoleHub>,
    /// Exclusive virtio-serial ports, by name.
    channels: HashMap<String, (PathBuf, Arc<Slot>)>,
    /// Removable-media drives, by name.
    drives: HashMap<String, Arc<Drive>>,
    /// What QMP last said of the guest's run state.
    run: watch::Sender<RunState>,
    /// Each channel's connection made ahead of a migration in, by name.
    parked: HashMap<String, Parked>,
}

/// A channel's connection made while the node's QEMU waited for the guest
/// to migrate in, held for the next session on that channel (the one the
/// gateway follows here). Nothing is read from it until a session takes
/// it, so what the guest writes waits in the socket (QEMU throttles the
/// port when it is full) instead of being dropped by QEMU. Released
/// [`PARK_GRACE`] after the guest resumed here if no session took it.
#[derive(Default)]
struct Parked(std::sync::Mutex<Option<UnixStream>>);

impl Parked {
    /// The held connection, if its QEMU has not closed it.
    fn take(&self) -> Option<UnixStream> {
        let s = self.0.lock().expect("parked lock").take()?;
        open(&s).then_some(s)
    }

    /// True if a connection is held and its QEMU has not closed it
    /// (a closed one is let go).
    fn holds(&self) -> bool {
        let mut held = self.0.lock().expect("parked lock");
        match held.as_ref() {
            Some(s) if open(s) => true,
            _ => {
                *held = None;
                false
            }
        }
    }

    fn put(&self, s: UnixStream) {
        *self.0.lock().expect("parked lock") = Some(s);
    }

    fn release(&self) -> bool {
        self.0.lock().expect("parked lock").take().is_some()
    }
}

/// True unless the peer closed `s` (and nothing is left to read): a
/// non-blocking peek, which reads nothing.
fn open(s: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    !matches!(
        recv(
            s.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Ok(0)
    )
}

/// How long a parked channel connection waits for its session after the
/// guest resumed here: the gateway follows a moved session within its own
/// 30 s bound.
const PARK_GRACE: Duration = Duration::from_secs(40);

/// A guest's run state as far as migration goes, from QMP `query-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Not asked yet, or no QMP socket: the serial consoles decide.
    Unknown,
    /// Running here, or paused (the guest is this node's).
    Here,
    /// Paused for the last phase of a migration away (`finish-migrate`):
    /// reported as migrating out, so the gateway may move the sessions as
    /// soon as the new node runs the guest; they stay open here.
    Leaving,
    /// A QEMU started with `-incoming`, waiting for the guest.
    Incoming,
    /// The guest migrated away: this QEMU only holds its old state.
    Migrated,
}

impl RunState {
    /// The state QMP's `query-status` `status` means.
    pub fn from_status(status: &str) -> RunState {
        match status {
            "inmigrate" => RunState::Incoming,
            "postmigrate" => RunState::Migrated,
            "finish-migrate" => RunState::Leaving,
            _ => RunState::Here,
        }
    }
}

/// How often a guest's QMP is asked for its run state: a migrated guest's
/// sessions end at most this long (plus one QMP exchange) after QEMU says
/// it moved.
pub const POLL: Duration = Duration::from_millis(200);
/// The bound on one `query-status` exchange (the QMP socket serves one
/// client at a time: another tool may hold it).
const POLL_DEADLINE: Duration = Duration::from_secs(2);

/// Guests from the configuration file.
pub struct QemuBackend {
    node: String,
    guests: Arc<HashMap<String, Guest>>,
    inventory: watch::Sender<Inventory>,
}

impl QemuBackend {
    /// Connects every serial console (logging to `logs`) and starts
    /// tracking guest state.
    pub fn start(
        cfg: &AgentConfig,
        logs: &ConsoleLogs,
        shutdown: CancellationToken,
    ) -> QemuBackend {
        let mut guests = HashMap::new();
        for g in &cfg.guests {
            let consoles = g
                .serial
                .iter()
                .map(|s| {
                    let spec = ConsoleSpec {
                        guest: g.name.clone(),
                        name: s.name.clone(),
                        connector: unix_connector(s.path.clone()),
                        logs: logs.clone(),
                        scrollback_bytes: cfg.scrollback_bytes,
                    };
                    (s.name.clone(), ConsoleHub::start(spec, shutdown.clone()))
                })
                .collect();
            let channels = g
                .channel
                .iter()
                .map(|c| (c.name.clone(), (c.path.clone(), Arc::new(Slot::default()))))
                .collect();
            let parked = g
                .channel
                .iter()
                .map(|c| (c.name.clone(), Parked::default()))
                .collect();
            // Checked when the agent bound (Agent::bind).
            let media_dir = MediaDir::from_config(cfg)
                .unwrap_or_else(|_| MediaDir::private(std::env::temp_dir()));
            // Validation made sure media drives come with a QMP socket.
            let drives = g
                .qmp
                .iter()
                .flat_map(|qmp| {
                    g.media.iter().map(|m| {
                        let tray = Tray::Qmp {
                            socket: qmp.clone(),
                            id: m.id.clone(),
                        };
                        let drive = Drive::new(&g.name, &m.name, tray, media_dir.clone());
                        (m.name.clone(), drive)
                    })
                })
                .collect();
            guests.insert(
                g.name.clone(),
                Guest {
                    config: g.clone(),
                    consoles,
                    channels,
                    drives,
                    run: watch::channel(RunState::Unknown).0,
                    parked,
                },
            );
        }
        let backend = QemuBackend {
            node: cfg.node.clone(),
            guests: Arc::new(guests),
            inventory: watch::channel(Inventory::default()).0,
        };
        backend.refresh();
        // A guest's state follows its serial consoles' connections.
        for g in backend.guests.values() {
            for hub in g.consoles.values() {
                let mut rx = hub.watch_connected();
                let guests = backend.guests.clone();
                let node = backend.node.clone();
                let inv = backend.inventory.clone();
                tokio::spawn(async move {
                    // A console that connected between the first snapshot
                    // and `watch_connected` above is no change to `rx`:
                    // take a snapshot now, then one per change.
                    loop {
                        inv.send_if_modified(|cur| {
                            let next = snapshot(&node, &guests);
                            let changed = *cur != next;
                            *cur = next;
                            changed
                        });
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        // And its run state follows QMP.
        for g in backend.guests.values() {
            if let Some(qmp) = g.config.qmp.clone() {
                tokio::spawn(watch_run(
                    qmp,
                    g.config.name.clone(),
                    backend.node.clone(),
                    backend.guests.clone(),
                    backend.inventory.clone(),
                    shutdown.clone(),
                ));
            }
        }
        backend
    }

    fn refresh(&self) {
        self.inventory
            .send_replace(snapshot(&self.node, &self.guests));
    }
}

/// Polls `guest`'s QMP for its run state until `shutdown`, and reports each
/// change in the inventory. A poll that fails (QEMU gone, the socket held
/// by another client past [`POLL_DEADLINE`]) keeps the last state: a QEMU
/// quit after its guest moved away stays "moved" until a new QEMU says
/// otherwise.
async fn watch_run(
    qmp: PathBuf,
    guest: String,
    node: String,
    guests: Arc<HashMap<String, Guest>>,
    inv: watch::Sender<Inventory>,
    shutdown: CancellationToken,
) {
    let Some(g) = guests.get(&guest) else {
        return;
    };
    let run = g.run.clone();
    // Since when the guest runs here (for PARK_GRACE).
    let mut here_since: Option<tokio::time::Instant> = None;
    loop {
        let asked = tokio::time::timeout(POLL_DEADLINE, async {
            let mut q = Qmp::connect(&qmp).await?;
            q.execute("query-status", serde_json::json!({})).await
        })
        .await;
        if let Ok(Ok(answer)) = asked {
            let next = answer
                .get("status")
                .and_then(serde_json::Value::as_str)
                .map(RunState::from_status)
                .unwrap_or(RunState::Here);
            let changed = run.send_if_modified(|cur| {
                let changed = *cur != next;
                *cur = next;
                changed
            });
            park(g, &guest, next, &mut here_since).await;
            if changed {
                tracing::info!(guest = %guest, state = ?next, "guest run state (QMP)");
                inv.send_if_modified(|cur| {
                    let snap = snapshot(&node, &guests);
                    let changed = *cur != snap;
                    *cur = snap;
                    changed
                });
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Keeps `g`'s channels connected ahead of time while its QEMU waits for
/// the guest (`next` is [`RunState::Incoming`]), and lets the connections
/// go once the guest left, or [`PARK_GRACE`] after it resumed here.
async fn park(
    g: &Guest,
    guest: &str,
    next: RunState,
    here_since: &mut Option<tokio::time::Instant>,
) {
    match next {
        RunState::Incoming => {
            *here_since = None;
            for c in &g.config.channel {
                let Some(p) = g.parked.get(&c.name) else {
                    continue;
                };
                if p.holds() {
                    continue;
                }
                match UnixStream::connect(&c.path).await {
                    Ok(s) => {
                        tracing::debug!(guest = %guest, channel = %c.name, "channel connected ahead of the guest's migration in");
                        p.put(s);
                    }
                    Err(e) => {
                        tracing::debug!(guest = %guest, channel = %c.name, error = %e, "cannot connect a channel ahead of a migration in")
                    }
                }
            }
        }
        // Paused to leave is still here until QEMU says it moved.
        RunState::Here | RunState::Leaving => {
            let since = *here_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= PARK_GRACE {
                for (name, p) in &g.parked {
                    if p.release() {
                        tracing::info!(guest = %guest, channel = %name, "no session took the channel connected ahead of the migration: released");
                    }
                }
            }
        }
        RunState::Migrated | RunState::Unknown => {
            *here_since = None;
            g.parked.values().for_each(|p| {
                p.release();
            });
        }
    }
}

fn state(g: &Guest) -> GuestState {
    match *g.run.borrow() {
        RunState::Incoming | RunState::Migrated => return GuestState::Down,
        RunState::Leaving => return GuestState::MigratingOut,
        RunState::Unknown | RunState::Here => {}
    }
    // Without a serial console there is nothing to watch: assume running.
    if g.consoles.is_empty() || g.consoles.values().any(|c| c.connected()) {
        GuestState::Running
    } else {
        GuestState::Down
    }
}

fn snapshot(node: &str, guests: &HashMap<String, Guest>) -> Inventory {
    let mut list: Vec<GuestInfo> = guests
        .values()
        .map(|g| {
            let mut channels: Vec<ChannelInfo> = g
                .config
                .serial
                .iter()
                .map(|s| ChannelInfo::new(s.name.clone(), ChannelKind::Serial))
                .collect();
            if g.config.vnc_via().is_some() {
                channels.push(ChannelInfo::new("vnc", ChannelKind::Vnc));
                if g.config.audio {
                    channels.push(ChannelInfo::new("audio", ChannelKind::Audio));
                }
            }
            channels.extend(
                g.config
                    .channel
                    .iter()
                    .map(|c| ChannelInfo::new(c.name.clone(), ChannelKind::Channel)),
            );
            channels.extend(
                g.config
                    .media
                    .iter()
                    .map(|m| ChannelInfo::new(m.name.clone(), ChannelKind::Media)),
            );
            GuestInfo {
                name: g.config.name.clone(),
                state: state(g),
                channels,
            }
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Inventory {
        node: node.into(),
        guests: list,
    }
}

async fn connect(path: &PathBuf, guest: &str, what: &str) -> Result<UnixStream, Close> {
    UnixStream::connect(path).await.map_err(|e| {
        Close::new(
            CloseCode::GuestDown,
            format!("guest {guest} is not running ({what}: {e})"),
        )
    })
}

/// How a `qemu` guest's VNC server is reached (its `vnc_via`).
pub enum QemuVnc {
    /// A socketpair handed to QEMU over this QMP socket.
    Qmp(PathBuf),
    /// QEMU's VNC unix socket.
    Socket(PathBuf),
}

impl Backend for QemuBackend {
    type Vnc = QemuVnc;
    /// The port's chardev socket.
    type Channel = PathBuf;

    fn inventory(&self) -> watch::Receiver<Inventory> {
        self.inventory.subscribe()
    }

    fn lookup(&self, req: &OpenRequest) -> Result<Endpoint<QemuVnc, PathBuf>, Close> {
        let guest = self.guests.get(&req.guest).ok_or_else(|| {
            Close::new(
                CloseCode::UnknownGuest,
                format!("no guest named {} on node {}", req.guest, self.node),
            )
        })?;
        match *guest.run.borrow() {
            RunState::Migrated => {
                return Err(super::libvirt::stopped_close(super::libvirt::MIGRATED_AWAY))
            }
            RunState::Incoming => {
                return Err(Close::new(
                    CloseCode::GuestDown,
                    format!(
                    "guest {} is not running on node {} (its QEMU waits for an incoming migration)",
                    req.guest, self.node
                ),
                ))
            }
            RunState::Leaving => {
                return Err(Close::new(
                    CloseCode::GuestMoved,
                    format!(
                        "guest {} is migrating away from node {}: reconnect in a moment",
                        req.guest, self.node
                    ),
                ))
            }
            RunState::Unknown | RunState::Here => {}
        }
        if let Some(hub) = guest.consoles.get(&req.channel) {
            return Ok(Endpoint::Console(hub.clone()));
        }
        let audio = req.channel == "audio" && guest.config.audio;
        if req.channel == "vnc" || audio {
            let vnc = match (guest.config.vnc_via(), &guest.config.vnc, &guest.config.qmp) {
                (Some(VncVia::Qmp), _, Some(qmp)) => Some(QemuVnc::Qmp(qmp.clone())),
                (Some(VncVia::Socket), Some(path), _) => Some(QemuVnc::Socket(path.clone())),
                _ => None,
            };
            match vnc {
                Some(v) if audio => return Ok(Endpoint::Audio(v)),
                Some(v) => return Ok(Endpoint::Vnc(v)),
                None => {}
            }
        }
        // Only configured ports: this map is the allowlist.
        if let Some((path, slot)) = guest.channels.get(&req.channel) {
            return Ok(Endpoint::Channel(slot.clone(), path.clone()));
        }
        if let Some(drive) = guest.drives.get(&req.channel) {
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
            return Err(Close::new(
                CloseCode::GuestDown,
                format!(
                    "guest {} is not running (its serial console {} is not connected)",
                    req.guest, req.channel
                ),
            ));
        }
        Ok(hub.attach(req.session, req.mode, req.force))
    }

    async fn open_vnc(&self, vnc: QemuVnc, req: &OpenRequest) -> Result<Box<dyn Duplex>, Close> {
        let s = match vnc {
            QemuVnc::Qmp(qmp) => vnc_by_qmp(&qmp, req).await?,
            QemuVnc::Socket(path) => connect(&path, &req.guest, "VNC socket").await?,
        };
        Ok(Box::new(s))
    }

    async fn open_channel(
        &self,
        path: PathBuf,
        req: &OpenRequest,
        what: &str,
    ) -> Result<Box<dyn Duplex>, Close> {
        // The connection made ahead of the guest's migration here, if any.
        let parked = self
            .guests
            .get(&req.guest)
            .and_then(|g| g.parked.get(&req.channel))
            .and_then(Parked::take);
        let s = match parked {
            Some(s) => s,
            None => connect(&path, &req.guest, what).await?,
        };
        Ok(Box::new(ChardevStream::new(
            s,
            what,
            req.mode == Mode::ReadOnly,
        )))
    }

    /// Ends the session with [`CloseCode::GuestMoved`] once QMP says the
    /// guest migrated away (never, for a guest without QMP).
    fn session_end(
        &self,
        req: &OpenRequest,
    ) -> impl std::future::Future<Output = Close> + Send + 'static {
        let run = self.guests.get(&req.guest).map(|g| g.run.subscribe());
        async move {
            let Some(mut run) = run else {
                return std::future::pending().await;
            };
            let moved = run.wait_for(|s| *s == RunState::Migrated).await.is_ok();
            if !moved {
                // The backend is gone (the agent stops): its own close wins.
                return std::future::pending().await;
            }
            super::libvirt::stopped_close(super::libvirt::MIGRATED_AWAY)
        }
    }
}

/// Deadline for the QMP exchange that opens a VNC session.
const QMP_DEADLINE: Duration = Duration::from_secs(10);

/// A new VNC client connection made by QEMU itself: one end of a socketpair
/// goes to QEMU (`getfd`), which serves it as a VNC client (`add_client`);
/// the agent keeps the other end. QEMU needs no VNC listener, and the
/// session skips VNC authentication because only the agent holds the fd.
async fn vnc_by_qmp(qmp: &Path, req: &OpenRequest) -> Result<UnixStream, Close> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| {
        Close::new(
            CloseCode::BackendError,
            format!("cannot create a socketpair: {e}"),
        )
    })?;
    let name = format!("vmgate-vnc-{}", req.session);
    let exchange = async {
        let mut q = Qmp::connect(qmp).await.map_err(|e| {
            Close::new(
                CloseCode::GuestDown,
                format!("guest {} is not running (QMP: {e})", req.guest),
            )
        })?;
        let failed = |e: crate::qmp::QmpError| {
            Close::new(
                CloseCode::BackendError,
                format!("QEMU refused a VNC client for {}: {e}", req.guest),
            )
        };
        q.getfd(&name, theirs.as_fd()).await.map_err(failed)?;
        let added = q
            .execute(
                "add_client",
                serde_json::json!({ "protocol": "vnc", "fdname": name, "skipauth": true }),
            )
            .await;
        if let Err(e) = added {
            // Do not leave the fd in QEMU's table.
            let _ = q
                .execute("closefd", serde_json::json!({ "fdname": name }))
                .await;
            return Err(failed(e));
        }
        Ok(())
    };
    match tokio::time::timeout(QMP_DEADLINE, exchange).await {
        Ok(Ok(())) => {
            tracing::debug!(session = req.session, guest = %req.guest, "VNC client handed to QEMU (QMP add_client)");
            Ok(ours)
        }
        Ok(Err(close)) => Err(close),
        Err(_) => Err(Close::new(
            CloseCode::BackendError,
            format!(
                "QMP of {} did not answer within {QMP_DEADLINE:?}",
                req.guest
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only QEMU's migration states take a guest from its node (or say it
    /// is leaving: `finish-migrate`); a paused guest is still here.
    #[test]
    fn qmp_status_maps_to_run_state() {
        assert_eq!(RunState::from_status("inmigrate"), RunState::Incoming);
        assert_eq!(RunState::from_status("postmigrate"), RunState::Migrated);
        assert_eq!(RunState::from_status("finish-migrate"), RunState::Leaving);
        for here in ["running", "paused", "prelaunch", "suspended"] {
            assert_eq!(RunState::from_status(here), RunState::Here, "{here}");
        }
    }
}
