//! The guest inventory an agent reports to every gateway.

use serde::{Deserialize, Serialize};

/// All guests one agent hosts, sent whole on every change: a snapshot is
/// small (names only) and can never drift the way deltas could.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    /// The node the agent runs on, for operators and logs.
    pub node: String,
    pub guests: Vec<GuestInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub name: String,
    pub state: GuestState,
    pub channels: Vec<ChannelInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestState {
    Running,
    /// Declared but its QEMU is not reachable (stopped, crashed, restarting),
    /// or waiting here for an incoming migration.
    Down,
    /// Paused here by an outgoing live migration's final phase: the guest
    /// is about to resume on another node (or here again, if the migration
    /// fails). Only in this state (or down) may another node's "running"
    /// take the guest's route (docs/migration.md).
    MigratingOut,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub name: String,
    pub kind: ChannelKind,
    /// Why the channel is listed but cannot be opened (a guest whose VNC
    /// display carries no audio), for operators and the user's refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

impl ChannelInfo {
    /// An available channel.
    pub fn new(name: impl Into<String>, kind: ChannelKind) -> ChannelInfo {
        ChannelInfo {
            name: name.into(),
            kind,
            unavailable: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    /// A serial console: scrollback, log, fan-out, one keyboard.
    Serial,
    /// The graphical console (RFB).
    Vnc,
    /// A virtio-serial port: a byte stream, one session at a time.
    Channel,
    /// The guest's sound: PCM framed as [`crate::audio`] says, from a VNC
    /// connection of the agent's own that carries only QEMU's audio.
    Audio,
    /// A removable-media drive (a CD-ROM): a session inserts a medium the
    /// client serves over NBD, ejects it, or asks what is in it
    /// (`vmgate_nbd::media`, docs/media.md).
    Media,
}

impl Inventory {
    pub fn to_json(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("inventory serializes")
            .into()
    }

    pub fn from_json(b: &[u8]) -> Result<Inventory, serde_json::Error> {
        serde_json::from_slice(b)
    }
}
