//! The `qemu` backend: guests declared in the agent's configuration, reached
//! through the unix sockets QEMU was started with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vmgate_wire::{
    ChannelInfo, ChannelKind, Close, CloseCode, GuestInfo, GuestState, Inventory, OpenRequest,
};

use super::{Backend, Opened, Slot};
use crate::config::{AgentConfig, GuestConfig};
use crate::console::{unix_connector, ConsoleHub, ConsoleSpec};

struct Guest {
    config: GuestConfig,
    consoles: HashMap<String, ConsoleHub>,
    /// Exclusive virtio-serial ports, by name.
    channels: HashMap<String, (PathBuf, Arc<Slot>)>,
}

/// Guests from the configuration file.
pub struct QemuBackend {
    node: String,
    guests: Arc<HashMap<String, Guest>>,
    inventory: watch::Sender<Inventory>,
}

impl QemuBackend {
    /// Connects every serial console and starts tracking guest state.
    pub fn start(cfg: &AgentConfig, shutdown: CancellationToken) -> QemuBackend {
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
                        log: cfg.log_dir.join(format!("{}.{}.log", g.name, s.name)),
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
            guests.insert(
                g.name.clone(),
                Guest {
                    config: g.clone(),
                    consoles,
                    channels,
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
                    while rx.changed().await.is_ok() {
                        inv.send_replace(snapshot(&node, &guests));
                    }
                });
            }
        }
        backend
    }

    fn refresh(&self) {
        self.inventory
            .send_replace(snapshot(&self.node, &self.guests));
    }
}

fn state(g: &Guest) -> GuestState {
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
                .map(|s| ChannelInfo {
                    name: s.name.clone(),
                    kind: ChannelKind::Serial,
                })
                .collect();
            if g.config.vnc.is_some() {
                channels.push(ChannelInfo {
                    name: "vnc".into(),
                    kind: ChannelKind::Vnc,
                });
            }
            channels.extend(g.config.channel.iter().map(|c| ChannelInfo {
                name: c.name.clone(),
                kind: ChannelKind::Channel,
            }));
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

impl Backend for QemuBackend {
    fn inventory(&self) -> watch::Receiver<Inventory> {
        self.inventory.subscribe()
    }

    async fn open(&self, req: &OpenRequest) -> Result<Opened, Close> {
        let guest = self.guests.get(&req.guest).ok_or_else(|| {
            Close::new(
                CloseCode::UnknownGuest,
                format!("no guest named {} on node {}", req.guest, self.node),
            )
        })?;
        if let Some(hub) = guest.consoles.get(&req.channel) {
            if !hub.connected() {
                return Err(Close::new(
                    CloseCode::GuestDown,
                    format!(
                        "guest {} is not running (its serial console {} is not connected)",
                        req.guest, req.channel
                    ),
                ));
            }
            let (rx, tx) = hub.attach(req.session, req.mode, req.force);
            return Ok(Opened::Console(rx, tx));
        }
        if req.channel == "vnc" {
            if let Some(path) = &guest.config.vnc {
                let s = connect(path, &req.guest, "VNC socket").await?;
                return Ok(Opened::Stream {
                    stream: Box::new(s),
                    what: format!("VNC of {}", req.guest),
                    stop: None,
                });
            }
        }
        if let Some((path, slot)) = guest.channels.get(&req.channel) {
            let what = format!("channel {} of {}", req.channel, req.guest);
            let held = slot.take(req.session, req.force, &what)?;
            let s = connect(path, &req.guest, &what).await?;
            return Ok(Opened::Stream {
                stream: Box::new(s),
                what,
                stop: Some(held),
            });
        }
        Err(Close::new(
            CloseCode::UnknownChannel,
            format!("guest {} has no channel {}", req.guest, req.channel),
        ))
    }
}
