//! The test guest as a transient libvirt domain, and the daemons under it.
//!
//! The domain boots the test kit's kernel and initramfs directly, with a pty
//! serial port (`serial0`), a unix virtio channel (`test.echo`), VNC on a
//! unix socket carrying QEMU audio from the PC speaker (`tone` in the guest),
//! and an empty IDE CD-ROM drive ([`CDROM_ALIAS`]), under TCG. Domain names
//! are host-wide, so each test gets its own (`vmgate-t<pid>-<n>`, or that
//! followed by `.something`); a domain left by a killed test run is destroyed
//! and undefined the next time the harness starts.
//!
//! libvirtd and virtlogd are started by `scripts/libvirt-up` (installed by
//! `scripts/deps.d/libvirt.sh`) if they are not running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use vmgate_testkit::{kernel_cmdline, GuestImage, ECHO_CHANNEL};

pub const URI: &str = "qemu:///system";

/// The XML namespace of the `<metadata>` element the test domains carry
/// (for the agent's `metadata_uri` filter), unless made untagged.
pub const METADATA_NS: &str = "https://vmgate.test/selected";

/// The qdev id libvirt gives the domain's CD-ROM drive (`hdc`: IDE bus 1,
/// unit 0), for QMP's tray and medium commands.
pub const CDROM_ALIAS: &str = "ide0-1-0";

/// Serialises tests that restart libvirtd against tests that need it up:
/// those take it shared, a restart takes it exclusively.
pub static DAEMON: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output()
        .expect("running virsh (install it with scripts/deps.d/libvirt.sh)")
}

fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(
        out.status.success(),
        "virsh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts virtlogd and libvirtd if needed (once per test process), and
/// removes the domains that earlier, killed test processes left behind
/// (running or only defined).
pub fn ensure_daemons() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap();
    if *done {
        return;
    }
    daemons_up();
    for name in virsh_ok(&["list", "--all", "--name"]).lines() {
        let Some(pid) = name
            .strip_prefix("vmgate-t")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = virsh(&["destroy", name]);
            let _ = virsh(&["undefine", name]);
        }
    }
    *done = true;
}

fn daemons_up() {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/libvirt-up"))
        .output()
        .expect("running scripts/libvirt-up");
    assert!(
        out.status.success(),
        "scripts/libvirt-up failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops libvirtd (SIGTERM, as a service manager would) and starts it again;
/// running domains survive and libvirtd takes them back.
pub fn restart_libvirtd() {
    let pid = std::fs::read_to_string("/var/run/libvirtd.pid").expect("libvirtd pid file");
    let pid = pid.trim();
    let status = Command::new("kill").args(["-TERM", pid]).status().unwrap();
    assert!(status.success(), "kill libvirtd {pid}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Gone, or a zombie its parent has yet to reap.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    while alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "libvirtd did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemons_up();
}

/// A second libvirt "host" on this machine, for live migration: libvirtd
/// and virtlogd in mount and UTS namespaces of their own, with their own
/// state directories, host name and host UUID (libvirt refuses to migrate
/// to a host it takes for itself). They share the network namespace, so
/// migration runs over loopback, and their RPC socket is reachable from
/// here at [`SecondNode::uri`]. Stopped (its domains destroyed) on drop.
pub struct SecondNode {
    pub uri: String,
    dir: PathBuf,
}

impl SecondNode {
    /// Starts the daemons (blocking) and waits until libvirtd answers.
    pub fn start() -> SecondNode {
        // Daemons of an earlier test process that was killed.
        for entry in std::fs::read_dir("/tmp").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("vmgate-node-b-") else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                stop_node(&entry.path());
            }
        }
        let dir = PathBuf::from(format!("/tmp/vmgate-node-b-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["run", "lib/qemu", "log", "cache", "etc"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let copied = Command::new("cp")
            .args(["-a", "/etc/libvirt/."])
            .arg(dir.join("etc"))
            .status()
            .unwrap();
        assert!(copied.success(), "copying /etc/libvirt");
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
        let conf = dir.join("etc/libvirtd.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        text.push_str(&format!("\nhost_uuid = \"{}\"\n", uuid.trim()));
        std::fs::write(&conf, text).unwrap();
        let d = dir.display();
        let script = format!(
            "set -e
             hostname vmgate-node-b
             mount --bind {d}/run /run/libvirt
             mount --bind {d}/lib /var/lib/libvirt
             mount --bind {d}/log /var/log/libvirt
             mkdir -p /var/cache/libvirt
             mount --bind {d}/cache /var/cache/libvirt
             mount --bind {d}/etc /etc/libvirt
             virtlogd -d -p {d}/virtlogd.pid
             libvirtd -d -p {d}/libvirtd.pid"
        );
        let out = Command::new("unshare")
            .args(["--mount", "--uts", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .output()
            .expect("running unshare");
        assert!(
            out.status.success(),
            "starting the second libvirtd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let node = SecondNode {
            uri: format!("qemu+unix:///system?socket={d}/run/libvirt-sock"),
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !node.virsh(&["version"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "the second libvirtd never answered"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()
            .expect("running virsh")
    }
}

impl Drop for SecondNode {
    fn drop(&mut self) {
        stop_node(&self.dir);
    }
}

/// Destroys a second node's domains and stops its daemons; its mount
/// namespace goes with its last process.
fn stop_node(dir: &Path) {
    let uri = format!(
        "qemu+unix:///system?socket={}/run/libvirt-sock",
        dir.display()
    );
    let list = Command::new("virsh")
        .args(["-q", "-c", &uri, "list", "--name"])
        .output();
    if let Ok(list) = list {
        for name in String::from_utf8_lossy(&list.stdout).lines() {
            let _ = Command::new("virsh")
                .args(["-q", "-c", &uri, "destroy", name.trim()])
                .output();
        }
    }
    for daemon in ["libvirtd", "virtlogd"] {
        if let Ok(pid) = std::fs::read_to_string(dir.join(format!("{daemon}.pid"))) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A unique domain name for this test.
pub fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vmgate-t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A test guest domain; destroyed (and undefined, if persistent) when
/// dropped.
pub struct Domain {
    pub name: String,
    pub vnc_socket: PathBuf,
    persistent: bool,
}

impl Domain {
    /// Defines and starts the test guest as transient domain `name`.
    pub fn create(name: &str, image: &GuestImage, run_dir: &Path) -> Domain {
        let d = Domain::write_xml(name, image, run_dir, false, true);
        virsh_ok(&["create", d.xml(run_dir).to_str().unwrap()]);
        d
    }

    /// [`Domain::create`] without the [`METADATA_NS`] element, and paused:
    /// the guest runs from its first `virsh resume`, so an agent that
    /// starts serving it then sees its whole boot.
    pub fn create_untagged_paused(name: &str, image: &GuestImage, run_dir: &Path) -> Domain {
        let d = Domain::write_xml(name, image, run_dir, false, false);
        virsh_ok(&["create", "--paused", d.xml(run_dir).to_str().unwrap()]);
        d
    }

    /// Defines the test guest as persistent domain `name`, not started.
    pub fn define(name: &str, image: &GuestImage, run_dir: &Path) -> Domain {
        let d = Domain::write_xml(name, image, run_dir, true, true);
        virsh_ok(&["define", d.xml(run_dir).to_str().unwrap()]);
        d
    }

    fn xml(&self, run_dir: &Path) -> PathBuf {
        run_dir.join(format!("{}.xml", self.name))
    }

    /// Writes the test guest's domain XML to `run_dir/NAME.xml`.
    fn write_xml(
        name: &str,
        image: &GuestImage,
        run_dir: &Path,
        persistent: bool,
        tagged: bool,
    ) -> Domain {
        std::fs::create_dir_all(run_dir).unwrap();
        let vnc_socket = run_dir.join(format!("{name}.vnc.sock"));
        let metadata = if tagged {
            format!("<metadata><t:selected xmlns:t='{METADATA_NS}'/></metadata>")
        } else {
            String::new()
        };
        let xml = format!(
            r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  {metadata}
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_reboot>restart</on_reboot>
  <devices>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='{ECHO_CHANNEL}'/>
    </channel>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <audio id='1' type='none'/>
    <graphics type='vnc' socket='{vnc}'>
      <audio id='1'/>
    </graphics>
    <video><model type='vga'/></video>
    <memballoon model='none'/>
  </devices>
  <!-- The PC speaker plays into the same audiodev (libvirt names it
       audio1). Not <sound model='pcspk'>: libvirt 9.0 turns that into
       -soundhw, which QEMU 7.1 removed. -->
  <qemu:commandline>
    <qemu:arg value='-machine'/>
    <qemu:arg value='pcspk-audiodev=audio1'/>
  </qemu:commandline>
</domain>
"#,
            kernel = image.kernel.display(),
            initrd = image.initrd.display(),
            // One port: the echo channel.
            cmdline = kernel_cmdline(1),
            vnc = vnc_socket.display(),
        );
        let d = Domain {
            name: name.into(),
            vnc_socket,
            persistent,
        };
        std::fs::write(d.xml(run_dir), xml).unwrap();
        d
    }

    /// Starts a defined domain (`virsh start`).
    pub fn start(&self) {
        virsh_ok(&["start", &self.name]);
    }

    /// Pulls the plug (`virsh destroy`).
    pub fn destroy(&self) {
        virsh_ok(&["destroy", &self.name]);
    }

    /// Removes a defined domain's definition (`virsh undefine`).
    pub fn undefine(&self) {
        virsh_ok(&["undefine", &self.name]);
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        if self.persistent {
            let _ = virsh(&["undefine", &self.name]);
        }
    }
}
