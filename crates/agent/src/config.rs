//! The agent's configuration file (TOML), validated once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use vmgate_config::ConfigError;

/// The node agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The node's name, reported to gateways with the inventory.
    pub node: String,
    /// UDP address of the QUIC listener that gateways connect to.
    pub listen: SocketAddr,
    /// Also listen on TCP at `listen`'s address and port number, for
    /// gateways whose sessions each come over a TCP + TLS connection of
    /// their own (`[agents] session_transport = "tcp"`); the same
    /// certificate checks as QUIC. Off by default: no TCP port is open.
    #[serde(default)]
    pub tcp_sessions: bool,
    /// Where each serial console's append-only log is written
    /// (`<guest>.<console>.log`).
    pub log_dir: PathBuf,
    /// Bytes of scrollback kept per serial console (default 1 MiB).
    #[serde(default = "default_scrollback")]
    pub scrollback_bytes: usize,
    /// How large the console logs in `log_dir` may grow (`[console_log]`).
    #[serde(default)]
    pub console_log: ConsoleLogConfig,
    /// On SIGTERM, how long sessions (told 1001 "the agent is shutting
    /// down") get to finish before the agent closes its connections
    /// anyway (default 5 s).
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
    /// Where guests come from: `qemu` (the `[[guest]]` entries below, the
    /// default) or `libvirt` (every running domain of `[libvirt] uri`).
    #[serde(default)]
    pub backend: BackendKind,
    pub tls: AgentTls,
    /// The guests of the `qemu` backend.
    #[serde(default, rename = "guest")]
    pub guests: Vec<GuestConfig>,
    /// Settings of the `libvirt` backend.
    #[serde(default)]
    pub libvirt: LibvirtConfig,
    /// Where a media session makes its private directory (0700) for the
    /// unix socket QEMU's NBD client connects to (default: the system's
    /// temporary directory). QEMU must be able to reach it: not a private
    /// `/tmp` of the agent's service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_dir: Option<PathBuf>,
    /// A group whose members may enter each medium's directory and connect
    /// to its socket (0750 and 0660 instead of 0700 and 0600): the group
    /// QEMU runs as when that is not the agent's user (libvirt's
    /// `qemu.conf` `group`, e.g. `libvirt-qemu`). Unset: the agent's user
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_group: Option<String>,
}

/// The serial console logs' disk cap. A console's log is rotated before
/// it would pass `max_bytes` (`<guest>.<console>.log` → `.log.1` → … →
/// `.log.<keep>`), so a console uses at most `max_bytes × (keep + 1)` of
/// disk, whatever its guest prints: 16 MiB by default, so that a small
/// node with a few dozen guests keeps its console logs under a gigabyte.
/// For rotation by an external logrotate instead, set a cap above its
/// `size` and send the agent SIGHUP after it moved the files: the agent
/// reopens them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLogConfig {
    /// Largest size of one log file, in bytes (default 8 MiB; at least
    /// 4096).
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept besides the current one (default 1; 0: the file
    /// starts over when full; at most 100).
    #[serde(default = "default_log_keep")]
    pub keep: u32,
}

/// The smallest `[console_log] max_bytes`: one serial read.
pub const MIN_LOG_BYTES: u64 = 4096;
/// The most `[console_log] keep`.
pub const MAX_LOG_KEEP: u32 = 100;

impl Default for ConsoleLogConfig {
    fn default() -> Self {
        ConsoleLogConfig {
            max_bytes: default_log_max_bytes(),
            keep: default_log_keep(),
        }
    }
}

fn default_log_max_bytes() -> u64 {
    8 << 20
}

fn default_log_keep() -> u32 {
    1
}

/// Which backend finds the guests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Guests declared in the configuration by their QEMU sockets.
    #[default]
    Qemu,
    /// The running domains of a libvirt daemon, followed by its events.
    Libvirt,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(BackendKind::Qemu),
            "libvirt" => Ok(BackendKind::Libvirt),
            other => Err(format!(
                "unknown backend {other:?}: use \"qemu\" or \"libvirt\""
            )),
        }
    }
}

/// The `libvirt` backend: which daemon, and which of its domains.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtConfig {
    /// Connection URI (default `qemu:///system`).
    #[serde(default = "default_libvirt_uri")]
    pub uri: String,
    /// Only domains whose name matches one of these patterns (`*`: any run
    /// of characters, `?`: one character) are exposed. Empty: all.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Only domains carrying a `<metadata>` element in this XML namespace
    /// are exposed (`virsh metadata DOM --uri URI --key vmgate --set
    /// '<vmgate/>'`). Unset: no such requirement.
    #[serde(default)]
    pub metadata_uri: Option<String>,
    /// Open serial consoles with `VIR_DOMAIN_CONSOLE_FORCE` on every
    /// (re)connect, taking them from any other client (an administrator's
    /// `virsh console`). Default `false`: the agent waits until the console
    /// is free, and only a session attached with `--force` takes it over.
    #[serde(default)]
    pub console_force: bool,
    /// How a channel (virtio-serial port) session reaches the guest; see
    /// [`ChannelVia`]. Default `socket`.
    #[serde(default)]
    pub channel_via: ChannelVia,
}

/// How the libvirt backend opens a guest channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelVia {
    /// Connect to the channel's unix socket, whose path the domain's live
    /// XML gives: what libvirt's `virDomainOpenChannel` does inside
    /// libvirtd, done by the agent, so the kernel's socket buffers carry
    /// flow control end to end (a client that does not read slows the
    /// guest down). Needs a local URI; with a remote one, `stream` is used.
    #[default]
    Socket,
    /// `virDomainOpenChannel`: a libvirt stream, which works through a
    /// remote URI but has no flow control toward its reader, so the agent
    /// ends a session whose client falls too far behind (docs/libvirt.md).
    Stream,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        LibvirtConfig {
            uri: default_libvirt_uri(),
            domains: Vec::new(),
            metadata_uri: None,
            console_force: false,
            channel_via: ChannelVia::default(),
        }
    }
}

impl LibvirtConfig {
    /// Whether a domain called `name` passes the name patterns.
    pub fn selects_name(&self, name: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|p| glob_match(p, name))
    }

    /// Whether the URI names a daemon on this host (no host part:
    /// `qemu:///system`, `qemu+unix:///session`), whose sockets the agent
    /// can reach itself.
    pub fn is_local(&self) -> bool {
        self.uri
            .split_once("://")
            .is_some_and(|(_, rest)| rest.starts_with('/'))
    }

    /// Whether channel sessions connect to the channel's socket directly.
    pub fn channels_by_socket(&self) -> bool {
        self.channel_via == ChannelVia::Socket && self.is_local()
    }
}

/// `*` matches any run of characters, `?` exactly one; the rest literally.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn default_libvirt_uri() -> String {
    "qemu:///system".into()
}

/// The agent's QUIC identity and whom it trusts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTls {
    /// The agent's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The gateway-client CA (PEM): gateways' client certificates must
    /// chain to it and carry clientAuth. Never the CA that signed `cert`:
    /// the agent refuses to start if its own certificate chains to it.
    pub gateway_ca: PathBuf,
    /// If set, only gateways whose certificate names one of these (a DNS
    /// name or IP address in its subjectAltName) are accepted. Empty: any
    /// gateway certificate from `gateway_ca`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_gateways: Vec<String>,
}

/// One guest of the `qemu` backend, declared by its QEMU sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    pub name: String,
    /// QMP socket (`-qmp unix:PATH,server=on`).
    #[serde(default)]
    pub qmp: Option<PathBuf>,
    /// VNC unix socket (`-vnc unix:PATH`), exposed as channel `vnc`.
    #[serde(default)]
    pub vnc: Option<PathBuf>,
    /// How a `vnc` session reaches QEMU's VNC server: `qmp` hands QEMU one
    /// end of a fresh socketpair per session (QMP `getfd` + `add_client`,
    /// as libvirt's `virDomainOpenGraphicsFD` does), so QEMU needs a VNC
    /// display (`-vnc none` will do) but no listener; `socket` connects to
    /// `vnc`. Default: `socket` when `vnc` is set, else none (no `vnc`
    /// channel). `qmp` needs `qmp`.
    #[serde(default)]
    pub vnc_via: Option<VncVia>,
    /// QEMU's VNC display carries audio (`-audiodev none,id=snd0 -vnc
    /// …,audiodev=snd0`, and a sound source such as `-machine
    /// pcspk-audiodev=snd0`): the guest gets a channel `audio`, served from
    /// a VNC connection of the agent's own (docs/audio.md). Needs `vnc` or
    /// `vnc_via`. Default false: QEMU acknowledges the audio extension even
    /// without an audiodev and then stays silent, so the agent cannot tell.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audio: bool,
    /// Serial consoles (`-chardev socket,server=on` behind `-serial`).
    #[serde(default)]
    pub serial: Vec<Endpoint>,
    /// virtio-serial ports (`-chardev socket,server=on` behind a
    /// `virtserialport`). Only ports listed here are exposed.
    #[serde(default)]
    pub channel: Vec<Endpoint>,
    /// Removable-media drives (CD-ROMs) a client may fill (docs/media.md).
    /// Needs `qmp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<MediaDrive>,
}

/// A guest's removable-media drive, exposed as a channel of kind `media`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaDrive {
    /// The channel's name; `media` is what clients use unless told
    /// otherwise.
    pub name: String,
    /// The drive's qdev id (`-device ide-cd,id=ID`; `query-block` lists it
    /// as `qdev`): what QMP's tray and medium commands name.
    pub id: String,
}

/// How the agent opens a guest's VNC server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VncVia {
    /// A socketpair per session, given to QEMU with QMP `add_client`.
    Qmp,
    /// A connection to the VNC unix socket.
    Socket,
}

impl GuestConfig {
    /// How this guest's `vnc` channel is opened, if it has one.
    pub fn vnc_via(&self) -> Option<VncVia> {
        match (self.vnc_via, &self.vnc) {
            (Some(v), _) => Some(v),
            (None, Some(_)) => Some(VncVia::Socket),
            (None, None) => None,
        }
    }
}

/// A named unix socket of a guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    pub path: PathBuf,
}

fn default_scrollback() -> usize {
    1 << 20
}

fn default_drain_secs() -> u64 {
    5
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = vmgate_config::read_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks names and uniqueness, so the rest of the agent can trust them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let log = &self.console_log;
        if log.max_bytes < MIN_LOG_BYTES {
            return Err(ConfigError::Invalid(format!(
                "[console_log] max_bytes = {} is too small: use at least {MIN_LOG_BYTES}",
                log.max_bytes
            )));
        }
        if log.keep > MAX_LOG_KEEP {
            return Err(ConfigError::Invalid(format!(
                "[console_log] keep = {} is too many files: use at most {MAX_LOG_KEEP}",
                log.keep
            )));
        }
        if self.backend == BackendKind::Libvirt && !self.guests.is_empty() {
            return Err(ConfigError::Invalid(
                "[[guest]] entries are for the qemu backend; the libvirt backend takes its guests from libvirt (select them with [libvirt] domains or metadata_uri)".into(),
            ));
        }
        if self.libvirt.uri.is_empty() || self.libvirt.domains.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Invalid(
                "[libvirt] uri and every domains pattern must be non-empty".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for g in &self.guests {
            if !vmgate_wire::valid_name(&g.name) {
                return Err(ConfigError::Invalid(format!("bad guest name {:?}", g.name)));
            }
            if !seen.insert(&g.name) {
                return Err(ConfigError::Invalid(format!(
                    "guest {} declared twice",
                    g.name
                )));
            }
            let mut chans = std::collections::HashSet::new();
            match g.vnc_via() {
                Some(VncVia::Qmp) if g.qmp.is_none() => {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: vnc_via = \"qmp\" needs the guest's qmp socket",
                        g.name
                    )))
                }
                Some(VncVia::Socket) if g.vnc.is_none() => {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: vnc_via = \"socket\" needs the guest's vnc socket",
                        g.name
                    )))
                }
                Some(_) => {
                    chans.insert("vnc");
                    if g.audio {
                        chans.insert("audio");
                    }
                }
                None if g.audio => {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: audio = true needs its VNC display (vnc or vnc_via)",
                        g.name
                    )))
                }
                None => {}
            }
            let names = g.serial.iter().chain(&g.channel).map(|e| &e.name);
            for name in names.chain(g.media.iter().map(|m| &m.name)) {
                if !vmgate_wire::valid_name(name) {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: bad channel name {:?}",
                        g.name, name
                    )));
                }
                if !chans.insert(name) {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: channel {} declared twice",
                        g.name, name
                    )));
                }
            }
            if !g.media.is_empty() && g.qmp.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "guest {}: media drives need the guest's qmp socket",
                    g.name
                )));
            }
            for m in &g.media {
                if !vmgate_wire::valid_name(&m.id) {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: media drive {}: bad qdev id {:?}",
                        g.name, m.name, m.id
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        node = "node-a"
        listen = "127.0.0.1:7443"
        log_dir = "/tmp"
        [tls]
        cert = "a.pem"
        key = "a.key"
        gateway_ca = "gateway-client-ca.pem"
        [[guest]]
        name = "demo"
        vnc = "/run/vnc.sock"
        serial = [{ name = "serial0", path = "/run/s0.sock" }]
        channel = [{ name = "test.echo", path = "/run/echo.sock" }]
    "#;

    #[test]
    fn parses_and_defaults_scrollback() {
        let cfg: AgentConfig = toml::from_str(GOOD).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.scrollback_bytes, 1 << 20);
        assert_eq!(cfg.guests[0].channel[0].name, "test.echo");
        assert_eq!(
            cfg.console_log,
            ConsoleLogConfig {
                max_bytes: 8 << 20,
                keep: 1
            }
        );
    }

    #[test]
    fn console_log_caps_are_bounded_and_named_when_refused() {
        let with = |extra: &str| -> Result<(), ConfigError> {
            let text = GOOD.replacen("[tls]", &format!("[console_log]\n{extra}\n[tls]"), 1);
            toml::from_str::<AgentConfig>(&text).unwrap().validate()
        };
        with("max_bytes = 65536\nkeep = 0").unwrap();
        with("keep = 100").unwrap();
        let e = with("max_bytes = 4095").unwrap_err().to_string();
        assert!(
            e.contains("[console_log] max_bytes") && e.contains("4096"),
            "{e}"
        );
        let e = with("keep = 101").unwrap_err().to_string();
        assert!(e.contains("[console_log] keep") && e.contains("100"), "{e}");
        assert!(toml::from_str::<AgentConfig>(&GOOD.replacen(
            "[tls]",
            "[console_log]\nmax_files = 3\n[tls]",
            1
        ))
        .is_err());
    }

    #[test]
    fn refuses_duplicates_bad_names_and_unknown_fields() {
        let dup = GOOD.replace("\"test.echo\"", "\"serial0\"");
        let cfg: AgentConfig = toml::from_str(&dup).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("twice"));
        let bad = GOOD.replace("\"demo\"", "\"de/mo\"");
        let cfg: AgentConfig = toml::from_str(&bad).unwrap();
        assert!(cfg.validate().is_err());
        assert!(toml::from_str::<AgentConfig>(&format!("{GOOD}\nbogus = 1")).is_err());
    }

    #[test]
    fn vnc_via_defaults_to_the_socket_and_qmp_needs_a_qmp_socket() {
        let cfg: AgentConfig = toml::from_str(GOOD).unwrap();
        assert_eq!(cfg.guests[0].vnc_via(), Some(VncVia::Socket));
        let qmp = GOOD.replace("vnc = \"/run/vnc.sock\"", "vnc_via = \"qmp\"");
        let cfg: AgentConfig = toml::from_str(&qmp).unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("qmp socket"));
        let qmp = qmp.replace("vnc_via", "qmp = \"/run/qmp.sock\"\n        vnc_via");
        let cfg: AgentConfig = toml::from_str(&qmp).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.guests[0].vnc_via(), Some(VncVia::Qmp));
    }

    #[test]
    fn audio_needs_the_vnc_display_and_takes_the_name_audio() {
        let cfg: AgentConfig = toml::from_str(GOOD).unwrap();
        assert!(!cfg.guests[0].audio, "off unless declared");
        let with = GOOD.replace(
            "vnc = \"/run/vnc.sock\"",
            "vnc = \"/run/vnc.sock\"\n        audio = true",
        );
        let cfg: AgentConfig = toml::from_str(&with).unwrap();
        cfg.validate().unwrap();
        assert!(cfg.guests[0].audio);
        let without_vnc = with.replace("vnc = \"/run/vnc.sock\"\n", "");
        let cfg: AgentConfig = toml::from_str(&without_vnc).unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("audio = true needs its VNC display"), "{e}");
        let clash = with.replace("name = \"serial0\"", "name = \"audio\"");
        let cfg: AgentConfig = toml::from_str(&clash).unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("channel audio declared twice"), "{e}");
    }

    #[test]
    fn media_drives_are_channels_and_need_qmp() {
        let with = |extra: &str| {
            let text = GOOD.replace(
                "channel = [{ name = \"test.echo\", path = \"/run/echo.sock\" }]",
                &format!(
                    "channel = [{{ name = \"test.echo\", path = \"/run/echo.sock\" }}]\n{extra}"
                ),
            );
            toml::from_str::<AgentConfig>(&text).unwrap().validate()
        };
        let no_qmp = with("media = [{ name = \"media\", id = \"cd0\" }]");
        assert!(no_qmp.unwrap_err().to_string().contains("qmp socket"));
        with("qmp = \"/run/q.sock\"\nmedia = [{ name = \"media\", id = \"cd0\" }]").unwrap();
        let dup = with("qmp = \"/run/q.sock\"\nmedia = [{ name = \"test.echo\", id = \"cd0\" }]");
        assert!(dup.unwrap_err().to_string().contains("twice"));
        let bad = with("qmp = \"/run/q.sock\"\nmedia = [{ name = \"media\", id = \"cd 0\" }]");
        assert!(bad.unwrap_err().to_string().contains("qdev id"));
    }

    #[test]
    fn a_config_without_backend_is_qemu_and_libvirt_has_defaults() {
        let cfg: AgentConfig = toml::from_str(GOOD).unwrap();
        assert_eq!(cfg.backend, BackendKind::Qemu);
        assert_eq!(cfg.libvirt.uri, "qemu:///system");
        assert!(cfg.libvirt.selects_name("anything"));
        assert_eq!(cfg.libvirt.channel_via, ChannelVia::Socket);
        assert!(cfg.libvirt.channels_by_socket());
    }

    #[test]
    fn libvirt_backend_parses_and_refuses_guest_entries() {
        let lv = r#"
            node = "node-a"
            listen = "127.0.0.1:7443"
            log_dir = "/tmp"
            backend = "libvirt"
            [tls]
            cert = "a.pem"
            key = "a.key"
            gateway_ca = "gateway-client-ca.pem"
            allowed_gateways = ["gw-1.example", "10.0.0.5"]
            [libvirt]
            uri = "qemu+ssh://root@host/system"
            domains = ["web-*", "db?"]
            metadata_uri = "https://example.org/vmgate"
        "#;
        let cfg: AgentConfig = toml::from_str(lv).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.backend, BackendKind::Libvirt);
        assert_eq!(cfg.tls.allowed_gateways, ["gw-1.example", "10.0.0.5"]);
        assert!(cfg.libvirt.selects_name("web-1"));
        assert!(cfg.libvirt.selects_name("db2"));
        assert!(!cfg.libvirt.selects_name("db12"));
        assert!(!cfg.libvirt.selects_name("mail"));
        // A remote daemon's channel sockets are not ours to connect to.
        assert!(!cfg.libvirt.is_local());
        assert!(!cfg.libvirt.channels_by_socket());
        for (uri, local) in [
            ("qemu:///session", true),
            ("qemu+unix:///system?socket=/run/x", true),
            ("qemu+tcp://10.0.0.1/system", false),
            ("test:///default", true),
        ] {
            let c = LibvirtConfig {
                uri: uri.into(),
                ..LibvirtConfig::default()
            };
            assert_eq!(c.is_local(), local, "{uri}");
        }
        let stream = format!("{lv}\nchannel_via = \"stream\"");
        let cfg: AgentConfig = toml::from_str(&stream).unwrap();
        assert_eq!(cfg.libvirt.channel_via, ChannelVia::Stream);
        let both = format!("{lv}\n[[guest]]\nname = \"x\"");
        let cfg: AgentConfig = toml::from_str(&both).unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("qemu backend"));
        assert_eq!("libvirt".parse::<BackendKind>(), Ok(BackendKind::Libvirt));
        assert!("xen".parse::<BackendKind>().is_err());
    }

    #[test]
    fn glob_patterns() {
        for (p, n, m) in [
            ("*", "", true),
            ("a*b", "ab", true),
            ("a*b", "axxb", true),
            ("a*b", "axxbc", false),
            ("*-test-*", "vmgate-test-12-3", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("**x", "yyx", true),
        ] {
            assert_eq!(glob_match(p, n), m, "{p} vs {n}");
        }
    }
}
