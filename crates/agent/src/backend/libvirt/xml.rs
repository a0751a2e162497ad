//! A domain's endpoints, read from its live XML (sans-IO): the pty
//! consoles `virDomainOpenConsole` can open, the unix virtio-serial channels
//! (and their sockets), which `<graphics>` is VNC, and whether it carries
//! audio.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

/// The channel libvirt itself talks to the QEMU guest agent on: libvirtd
/// holds it, so it is never offered to users.
const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// A domain's endpoints, from its live XML.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Devices {
    /// Aliases of pty serial ports and consoles (`serial0`, `console1`).
    pub consoles: Vec<String>,
    /// Target names of unix virtio-serial channels.
    pub channels: Vec<String>,
    /// Their unix sockets (libvirt's `<source path>`), by target name.
    pub sockets: BTreeMap<String, PathBuf>,
    /// Index of the first VNC display among the domain's graphics.
    pub vnc: Option<u32>,
    /// Why that VNC display carries no audio, if it does not: the `audio`
    /// channel is then listed as unavailable with this reason.
    pub audio_missing: Option<String>,
    /// CD-ROM drives (`<disk device='cdrom'>`), exposed as `media` channels:
    /// the first as `media`, the others as `media.<target dev>`.
    pub cdroms: Vec<Cdrom>,
}

/// A domain's CD-ROM drive, as its `<target>` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdrom {
    /// The channel's name.
    pub name: String,
    /// `<target dev>` (`hdc`, `sdb`): what a device update names.
    pub dev: String,
    /// `<target bus>` (`ide`, `scsi`, `sata`).
    pub bus: String,
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

/// Reads the endpoints the agent can open from a domain's live XML.
pub fn parse_devices(xml: &str) -> Result<Devices, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut out = Devices::default();
    let Some(devices) = doc.descendants().find(|n| n.has_tag_name("devices")) else {
        return Ok(out);
    };
    let mut graphics = 0u32;
    let audio_ids: HashSet<&str> = devices
        .children()
        .filter(|n| n.has_tag_name("audio"))
        .filter_map(|n| n.attribute("id"))
        .collect();
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
            "disk" if n.attribute("device") == Some("cdrom") => {
                let target = child(n, "target");
                let dev = target.and_then(|t| t.attribute("dev"));
                let bus = target.and_then(|t| t.attribute("bus"));
                if let (Some(dev), Some(bus)) = (dev, bus) {
                    let name = if out.cdroms.is_empty() {
                        "media".to_string()
                    } else {
                        format!("media.{dev}")
                    };
                    out.cdroms.push(Cdrom {
                        name,
                        dev: dev.into(),
                        bus: bus.into(),
                    });
                }
            }
            "graphics" => {
                if ty == Some("vnc") && out.vnc.is_none() {
                    out.vnc = Some(graphics);
                    // Short: it ends up in a WebSocket close reason (123 bytes).
                    out.audio_missing = match child(n, "audio").and_then(|a| a.attribute("id")) {
                        Some(id) if audio_ids.contains(id) => None,
                        Some(id) => Some(format!(
                            "its VNC <graphics> names <audio id='{id}'/>, which the domain lacks"
                        )),
                        None => Some(
                            "no audio on its VNC display: add <audio id='1' type='none'/> and <audio id='1'/> in <graphics>".into(),
                        ),
                    };
                }
                graphics += 1;
            }
            _ => {}
        }
    }
    // Names travel in the wire header and must not collide with each other
    // or with `vnc` and `audio`.
    let mut seen = HashSet::from(["vnc".to_string(), "audio".to_string()]);
    out.consoles
        .retain(|c| vmgate_wire::valid_name(c) && seen.insert(c.clone()));
    out.channels
        .retain(|c| vmgate_wire::valid_name(c) && seen.insert(c.clone()));
    // A target that would not make a name (or a safe XML attribute) is
    // not offered.
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    out.cdroms.retain(|c| {
        plain(&c.dev)
            && plain(&c.bus)
            && vmgate_wire::valid_name(&c.name)
            && seen.insert(c.name.clone())
    });
    out.sockets.retain(|c, _| out.channels.contains(c));
    Ok(out)
}

/// Text for an XML attribute in single quotes.
fn attr(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The `<disk>` a live device update (`virDomainUpdateDeviceFlags`) takes
/// to put a read-only NBD medium on `socket` in the CD-ROM `cd`, or, with
/// no socket, to empty it.
pub fn cdrom_update(cd: &Cdrom, socket: Option<&std::path::Path>) -> String {
    let target = format!("<target dev='{}' bus='{}'/>", attr(&cd.dev), attr(&cd.bus));
    match socket {
        Some(path) => format!(
            "<disk type='network' device='cdrom'><driver name='qemu' type='raw'/>\
             <source protocol='nbd'><host transport='unix' socket='{}'/></source>\
             {target}<readonly/></disk>",
            attr(&path.to_string_lossy())
        ),
        None => format!("<disk type='file' device='cdrom'>{target}<readonly/></disk>"),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A live domain XML with one endpoint of every kind, and some the
    /// agent must skip.
    pub const LIVE: &str = r#"<domain type='qemu' id='3'>
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
        <disk type='file' device='disk'><target dev='vda' bus='virtio'/></disk>
        <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
        <disk type='network' device='cdrom'><source protocol='nbd'/><target dev='sdb' bus='scsi'/></disk>
        <disk type='file' device='cdrom'><target dev='bad"dev' bus='ide'/></disk>
        <audio id='1' type='none'/>
        <graphics type='spice' autoport='yes'/>
        <graphics type='vnc' socket='/run/vnc.sock'><audio id='1'/></graphics>
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
        assert_eq!(
            d.cdroms,
            vec![
                Cdrom {
                    name: "media".into(),
                    dev: "hdc".into(),
                    bus: "ide".into()
                },
                Cdrom {
                    name: "media.sdb".into(),
                    dev: "sdb".into(),
                    bus: "scsi".into()
                },
            ],
            "CD-ROMs only, the first as media; a target that is no name is skipped"
        );
        assert_eq!(
            d.audio_missing, None,
            "<audio id='1'/> is wired to the VNC display"
        );
    }

    #[test]
    fn a_vnc_display_without_audio_says_what_the_domain_needs() {
        let unwired = LIVE.replace("<audio id='1'/></graphics>", "</graphics>");
        let why = parse_devices(&unwired).unwrap().audio_missing.unwrap();
        assert!(why.contains("no audio on its VNC display"), "{why}");
        assert!(why.contains("<audio id='1' type='none'/>"), "{why}");
        let dangling = LIVE.replace("<audio id='1' type='none'/>", "");
        let why = parse_devices(&dangling).unwrap().audio_missing.unwrap();
        assert!(
            why.contains("names <audio id='1'/>, which the domain lacks"),
            "{why}"
        );
    }

    #[test]
    fn a_cdrom_update_names_the_target_and_escapes_the_socket_path() {
        let cd = Cdrom {
            name: "media".into(),
            dev: "hdc".into(),
            bus: "ide".into(),
        };
        let insert = cdrom_update(&cd, Some(std::path::Path::new("/run/a'b&c/nbd.sock")));
        let doc = roxmltree::Document::parse(&insert).unwrap();
        let host = doc.descendants().find(|n| n.has_tag_name("host")).unwrap();
        assert_eq!(host.attribute("socket"), Some("/run/a'b&c/nbd.sock"));
        assert_eq!(host.attribute("transport"), Some("unix"));
        assert!(doc.descendants().any(|n| n.has_tag_name("readonly")));
        let eject = cdrom_update(&cd, None);
        assert_eq!(
            eject,
            "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"
        );
    }

    #[test]
    fn a_domain_without_devices_has_no_endpoints_and_bad_xml_is_an_error() {
        assert_eq!(
            parse_devices("<domain><name>x</name></domain>").unwrap(),
            Devices::default()
        );
        assert!(parse_devices("<domain>").is_err());
    }
}
