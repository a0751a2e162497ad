//! Booting the test guest under QEMU with every endpoint (QMP, serial, VNC, virtio-serial
//! channels) on a unix socket in one run directory, and tearing it down again.
//!
//! QEMU stays a child of the calling process. It is killed when the [`Guest`] is dropped,
//! including while a panicking test unwinds; a test process killed outright leaves it running.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::KitError;
use crate::host::{self, find_tool};
use crate::image::GuestImage;
use crate::stream::read_until;

/// The QEMU program the kit runs.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The guest kernel's command line. `console=ttyS0` sends kernel messages to the serial
/// port (the VGA screen stays static), `panic=-1` reboots at once instead of hanging on a
/// panic, and `consoleblank=0` keeps the VGA console from blanking after ten idle minutes.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 consoleblank=0";

/// The kernel command line for a guest with `ports` virtio-serial ports. The guest's init
/// waits for that many named ports before it starts the echo loop and says it is ready:
/// the kernel adds ports one control message at a time, after the driver has loaded, so a
/// port can turn up after init first looks (seen under load as an echo port that never
/// answered).
pub fn kernel_cmdline(ports: usize) -> String {
    format!("{KERNEL_CMDLINE} vmgate.ports={ports}")
}

/// The line the guest's init prints on the serial port when it has finished booting.
pub const READY_MARKER: &str = "vmgate-guest-ready";

/// The prompt of the guest's shells on the serial port and the VGA console.
pub const PROMPT: &str = "guest# ";

/// The virtio-serial port the guest echoes back, byte for byte.
pub const ECHO_CHANNEL: &str = "test.echo";

/// The QEMU audiodev (`-audiodev none`) that both the PC speaker and the VNC display use, so
/// a VNC client that negotiates QEMU's audio extension hears the guest's `tone` command.
/// `none` is enough: VNC audio taps QEMU's mixer, not a host sound card.
pub const AUDIODEV_ID: &str = "snd0";

/// The qdev id of the guest's empty CD-ROM drive (an `ide-cd` on the i440fx's second IDE
/// channel, `/dev/sr0` in the guest), for QMP's tray and medium commands.
pub const CDROM_ID: &str = "cd0";

/// How long [`Guest::boot`] waits for QEMU to create its sockets.
pub const SOCKET_DEADLINE: Duration = Duration::from_secs(10);

/// The longest path a unix socket address holds on Linux (108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What to boot: a name, a directory for the sockets and log, and the guest's hardware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    /// Shown by QEMU (`-name`) and in `ps`; letters, digits, `.`, `_` and `-` only.
    pub name: String,
    /// Where the sockets and `qemu.log` go; created if missing.
    pub run_dir: PathBuf,
    /// virtio-serial port names, each exposed as `ch-<name>.sock`.
    pub channels: Vec<String>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

impl BootOptions {
    /// Options with one echo channel ([`ECHO_CHANNEL`]) and 128 MiB of memory.
    pub fn new(name: impl Into<String>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            run_dir: run_dir.into(),
            channels: vec![ECHO_CHANNEL.to_owned()],
            memory_mib: 128,
        }
    }
}

/// Where a guest's endpoints live, derived from its [`BootOptions`].
#[derive(Debug, Clone)]
struct Layout {
    qmp: PathBuf,
    serial: PathBuf,
    vnc: PathBuf,
    channels: Vec<(String, PathBuf)>,
    log: PathBuf,
}

impl Layout {
    fn new(opts: &BootOptions) -> Self {
        let dir = &opts.run_dir;
        Self {
            qmp: dir.join("qmp.sock"),
            serial: dir.join("serial0.sock"),
            vnc: dir.join("vnc.sock"),
            channels: opts
                .channels
                .iter()
                .map(|name| (name.clone(), dir.join(format!("ch-{name}.sock"))))
                .collect(),
            log: dir.join("qemu.log"),
        }
    }

    fn sockets(&self) -> impl Iterator<Item = &Path> {
        [&self.qmp, &self.serial, &self.vnc]
            .into_iter()
            .map(PathBuf::as_path)
            .chain(self.channels.iter().map(|(_, p)| p.as_path()))
    }
}

/// A running test guest: a QEMU child process and the sockets it serves.
#[derive(Debug)]
pub struct Guest {
    /// The name it was booted with.
    pub name: String,
    /// The directory holding its sockets and `qemu.log`.
    pub run_dir: PathBuf,
    /// QEMU's QMP monitor (JSON lines).
    pub qmp_socket: PathBuf,
    /// The first serial port, where a root shell runs.
    pub serial_socket: PathBuf,
    /// The VNC server showing the VGA console.
    pub vnc_socket: PathBuf,
    /// Each virtio-serial port's name and socket.
    pub channel_sockets: Vec<(String, PathBuf)>,
    /// QEMU's standard output and error.
    pub log_path: PathBuf,
    image: GuestImage,
    opts: BootOptions,
    child: Option<Child>,
    pid: u32,
}

impl Guest {
    /// Starts QEMU and returns once all of its sockets exist (within [`SOCKET_DEADLINE`]).
    ///
    /// The guest itself is still booting then; use [`Guest::serial_ready`] or wait for
    /// [`READY_MARKER`] on the serial socket before talking to it.
    pub fn boot(image: &GuestImage, opts: &BootOptions) -> Result<Guest, KitError> {
        validate(opts)?;
        let layout = Layout::new(opts);
        let (child, pid) = start(image, opts, &layout, &[])?;
        Ok(Guest {
            name: opts.name.clone(),
            run_dir: opts.run_dir.clone(),
            qmp_socket: layout.qmp,
            serial_socket: layout.serial,
            vnc_socket: layout.vnc,
            channel_sockets: layout.channels,
            log_path: layout.log,
            image: image.clone(),
            opts: opts.clone(),
            child: Some(child),
            pid,
        })
    }

    /// Starts a QEMU with the same hardware as `opts` that waits for the
    /// guest to live-migrate in over the unix socket `incoming` (QMP
    /// `migrate` to `unix:<incoming>` on the source); returns once its
    /// sockets exist, like [`Guest::boot`]. Its QMP says `inmigrate` until
    /// the migration completes.
    pub fn boot_incoming(
        image: &GuestImage,
        opts: &BootOptions,
        incoming: &Path,
    ) -> Result<Guest, KitError> {
        validate(opts)?;
        let layout = Layout::new(opts);
        host::remove_if_exists(incoming)?;
        let mut uri = OsString::from("unix:");
        uri.push(incoming.as_os_str());
        let (child, pid) = start(image, opts, &layout, &[OsString::from("-incoming"), uri])?;
        Ok(Guest {
            name: opts.name.clone(),
            run_dir: opts.run_dir.clone(),
            qmp_socket: layout.qmp,
            serial_socket: layout.serial,
            vnc_socket: layout.vnc,
            channel_sockets: layout.channels,
            log_path: layout.log,
            image: image.clone(),
            opts: opts.clone(),
            child: Some(child),
            pid,
        })
    }

    /// The arguments (without the program, [`QEMU_BINARY`]) that boot `image` with `opts`.
    ///
    /// Public so the demo and docs can show the exact command line. Names are not checked
    /// here; [`Guest::boot`] rejects ones that would garble an option.
    pub fn qemu_args(image: &GuestImage, opts: &BootOptions) -> Vec<OsString> {
        let layout = Layout::new(opts);
        fn s(value: impl AsRef<OsStr>) -> OsString {
            value.as_ref().to_owned()
        }
        let cat = |parts: &[&OsStr]| -> OsString { parts.iter().copied().collect() };
        let server = OsStr::new(",server=on,wait=off");
        let mut args = vec![
            s("-name"),
            s(&opts.name),
            s("-accel"),
            s("tcg"),
            // i440fx (`pc`): its PIIX IDE is what the guest kernel can drive (no AHCI).
            s("-machine"),
            s(format!("pc,pcspk-audiodev={AUDIODEV_ID}")),
            s("-audiodev"),
            s(format!("none,id={AUDIODEV_ID}")),
            s("-nodefaults"),
            s("-no-user-config"),
            s("-m"),
            s(opts.memory_mib.to_string()),
            s("-kernel"),
            s(&image.kernel),
            s("-initrd"),
            s(&image.initrd),
            s("-append"),
            s(kernel_cmdline(layout.channels.len())),
            s("-display"),
            s("none"),
            s("-vga"),
            s("std"),
            s("-vnc"),
            cat(&[
                OsStr::new("unix:"),
                &opt_value(&layout.vnc),
                OsStr::new(&format!(",audiodev={AUDIODEV_ID}")),
            ]),
            // An empty drive: no `drive=`, so QEMU gives it an anonymous backend that
            // `blockdev-insert-medium` fills later.
            s("-device"),
            s(format!("ide-cd,id={CDROM_ID},bus=ide.1,unit=0")),
            s("-qmp"),
            cat(&[OsStr::new("unix:"), &opt_value(&layout.qmp), server]),
            s("-chardev"),
            cat(&[
                OsStr::new("socket,id=serial0,path="),
                &opt_value(&layout.serial),
                server,
            ]),
            s("-serial"),
            s("chardev:serial0"),
        ];
        if !layout.channels.is_empty() {
            args.extend([s("-device"), s("virtio-serial-pci")]);
        }
        for (i, (name, path)) in layout.channels.iter().enumerate() {
            let chardev = format!("socket,id=ch{i},path=");
            args.extend([
                s("-chardev"),
                cat(&[OsStr::new(&chardev), &opt_value(path), server]),
                s("-device"),
                s(format!("virtserialport,chardev=ch{i},name={name}")),
            ]);
        }
        args
    }

    /// QEMU's process id (the last one, once killed).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True while QEMU has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills QEMU with SIGKILL and reaps it. Does nothing if it is already gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it already exited; wait() still reaps it.
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(name = %self.name, pid = self.pid, "guest killed");
        }
    }

    /// Kills QEMU and boots the same image again on the same sockets.
    pub fn restart(&mut self) -> Result<(), KitError> {
        self.kill();
        let layout = Layout::new(&self.opts);
        let (child, pid) = start(&self.image, &self.opts, &layout, &[])?;
        self.child = Some(child);
        self.pid = pid;
        Ok(())
    }

    /// Host CPU time (user + system) QEMU has used so far, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Result<Duration, KitError> {
        process_cpu_time(self.pid)
    }

    /// Connects to the serial socket and returns once the guest's shell is there: the ready
    /// line or a prompt has arrived. A connection made after the ready line went by sees no
    /// output, so a newline is sent every two seconds to make the shell print a prompt.
    pub fn serial_ready(&self, timeout: Duration) -> Result<UnixStream, KitError> {
        let deadline = Instant::now() + timeout;
        let mut stream = UnixStream::connect(&self.serial_socket).map_err(KitError::io(
            format!("cannot connect to {}", self.serial_socket.display()),
        ))?;
        let ready =
            |buf: &[u8]| contains(buf, READY_MARKER.as_bytes()) || contains(buf, PROMPT.as_bytes());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match read_until(
                &mut stream,
                ready,
                left.min(Duration::from_secs(2)),
                READY_MARKER,
            ) {
                Ok(_) => return Ok(stream),
                Err(KitError::OutputTimeout { .. }) if Instant::now() < deadline => {
                    stream
                        .write_all(b"\n")
                        .map_err(KitError::io("cannot write to the serial socket"))?;
                }
                Err(KitError::OutputTimeout { tail, .. }) => {
                    return Err(KitError::OutputTimeout {
                        needle: READY_MARKER.to_owned(),
                        timeout,
                        tail,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The socket of the channel called `name`, if the guest has one.
    pub fn channel_socket(&self, name: &str) -> Option<&Path> {
        self.channel_sockets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        for socket in Layout::new(&self.opts).sockets() {
            let _ = fs::remove_file(socket);
        }
    }
}

/// Host CPU time (user + system) used so far by process `pid`.
///
/// `/proc/PID/stat` counts in clock ticks of `USER_HZ`, which Linux fixes at 100 on every
/// architecture's user ABI, so no `sysconf` call is needed.
pub fn process_cpu_time(pid: u32) -> Result<Duration, KitError> {
    const USER_HZ: u64 = 100;
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = fs::read_to_string(&path)
        .map_err(KitError::io(format!("cannot read {}", path.display())))?;
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')'
    // start at field 3, so utime (14) and stime (15) are the 12th and 13th from there.
    let rest = text.rsplit_once(')').map(|(_, rest)| rest);
    let mut fields = rest.into_iter().flat_map(str::split_whitespace).skip(11);
    let mut next = || fields.next().and_then(|f| f.parse::<u64>().ok());
    match (next(), next()) {
        (Some(utime), Some(stime)) => Ok(Duration::from_millis((utime + stime) * 1000 / USER_HZ)),
        _ => Err(KitError::ProcStat { path }),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Letters, digits, `.`, `_` and `-`: safe in file names and in QEMU's `key=value,...` options.
fn is_safe_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn validate(opts: &BootOptions) -> Result<(), KitError> {
    if !is_safe_name(&opts.name) {
        return Err(KitError::InvalidGuestName {
            name: opts.name.clone(),
        });
    }
    if let Some(bad) = opts.channels.iter().find(|c| !is_safe_name(c)) {
        return Err(KitError::InvalidChannelName { name: bad.clone() });
    }
    for socket in Layout::new(opts).sockets() {
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(KitError::SocketPathTooLong {
                path: socket.to_owned(),
                len,
            });
        }
    }
    Ok(())
}

/// A path as a QEMU option value: QEMU's option parser reads `,,` as a literal comma.
fn opt_value(path: &Path) -> OsString {
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut out = OsString::new();
    for (i, part) in bytes.split(|&b| b == b',').enumerate() {
        if i > 0 {
            out.push(",,");
        }
        out.push(OsStr::from_bytes(part));
    }
    out
}

/// Spawns QEMU with its output in the log and waits for its sockets.
fn start(
    image: &GuestImage,
    opts: &BootOptions,
    layout: &Layout,
    extra: &[OsString],
) -> Result<(Child, u32), KitError> {
    let qemu = find_tool(QEMU_BINARY, "qemu-system-x86")?;
    for file in [&image.kernel, &image.initrd] {
        fs::metadata(file).map_err(KitError::io(format!("guest image file {}", file.display())))?;
    }
    fs::create_dir_all(&opts.run_dir).map_err(KitError::io(format!(
        "cannot create {}",
        opts.run_dir.display()
    )))?;
    // A socket left by an earlier QEMU would make the wait below return at once.
    for socket in layout.sockets() {
        host::remove_if_exists(socket)?;
    }
    let log = fs::File::create(&layout.log).map_err(KitError::io(format!(
        "cannot create {}",
        layout.log.display()
    )))?;
    let log_err = log.try_clone().map_err(KitError::io(format!(
        "cannot reopen {}",
        layout.log.display()
    )))?;
    let mut cmd = Command::new(&qemu);
    cmd.args(Guest::qemu_args(image, opts))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let mut child = cmd
        .spawn()
        .map_err(KitError::io(format!("cannot start {}", qemu.display())))?;
    let pid = child.id();
    tracing::debug!(name = %opts.name, pid, "qemu started");

    match wait_for_sockets(&mut child, layout) {
        Ok(()) => Ok((child, pid)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn wait_for_sockets(child: &mut Child, layout: &Layout) -> Result<(), KitError> {
    let started = Instant::now();
    loop {
        let missing = layout.sockets().find(|p| !is_socket(p));
        let Some(missing) = missing else {
            return Ok(());
        };
        if let Some(status) = child
            .try_wait()
            .map_err(KitError::io("cannot check on QEMU"))?
        {
            return Err(KitError::QemuExited {
                status,
                log_tail: host::tail_file(&layout.log),
            });
        }
        if started.elapsed() >= SOCKET_DEADLINE {
            return Err(KitError::BootTimeout {
                waited: SOCKET_DEADLINE,
                missing: missing.to_owned(),
                log_tail: host::tail_file(&layout.log),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GuestImage {
        GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        }
    }

    #[test]
    fn argv_has_one_socket_per_endpoint() {
        let mut opts = BootOptions::new("g1", "/run/x");
        opts.channels.push("org.example.two".into());
        let args: Vec<String> = Guest::qemu_args(&image(), &opts)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("-vnc unix:/run/x/vnc.sock,audiodev=snd0"),
            "{joined}"
        );
        assert!(joined.contains("-machine pc,pcspk-audiodev=snd0"));
        assert!(joined.contains("-audiodev none,id=snd0"));
        assert!(joined.contains("-device ide-cd,id=cd0,bus=ide.1,unit=0"));
        assert!(joined.contains("-qmp unix:/run/x/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("path=/run/x/ch-test.echo.sock"));
        assert!(joined.contains("virtserialport,chardev=ch1,name=org.example.two"));
        assert!(joined.contains(&format!("-append {KERNEL_CMDLINE} vmgate.ports=2")));
        assert_eq!(args.iter().filter(|a| *a == "virtio-serial-pci").count(), 1);
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        assert_eq!(opt_value(Path::new("/a,b/c")), OsString::from("/a,,b/c"));
    }

    #[test]
    fn bad_names_and_long_paths_are_rejected() {
        let mut opts = BootOptions::new("ok", "/tmp/r");
        opts.channels = vec!["a,b".into()];
        assert!(matches!(
            validate(&opts),
            Err(KitError::InvalidChannelName { .. })
        ));
        let opts = BootOptions::new("", "/tmp/r");
        assert!(matches!(
            validate(&opts),
            Err(KitError::InvalidGuestName { .. })
        ));
        let opts = BootOptions::new("ok", format!("/tmp/{}", "d".repeat(100)));
        assert!(matches!(
            validate(&opts),
            Err(KitError::SocketPathTooLong { .. })
        ));
        assert!(validate(&BootOptions::new("ok", "/tmp/r")).is_ok());
    }

    #[test]
    fn reads_own_cpu_time() {
        assert!(process_cpu_time(std::process::id()).is_ok());
    }
}
