//! The graphical console end to end: a real guest's VGA screen through QMP
//! `add_client` (or QEMU's VNC socket) under the qemu backend, or
//! `virDomainOpenGraphicsFD` under the libvirt backend → agent → QUIC →
//! gateway → WebSocket, to `vmgate vnc` and third-party viewers
//! (vncdotool, a raw RFB client) and to the web page in headless Chromium.
//! Each scenario runs against both backends ([`for_each_backend!`]).
//!
//! The guest's VGA console shows a static banner and a shell prompt with
//! the cursor hidden, so a capture equals the hypervisor's own screendump
//! (QMP `screendump`, or `virsh screenshot` under libvirt) pixel for pixel
//! as long as nobody typed on it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{for_each_backend, Backend, Session, Stack, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An RGB image.
#[derive(PartialEq, Eq)]
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image {}x{}", self.width, self.height)
    }
}

impl Image {
    /// Reads a binary PPM (P6, maxval 255), as QMP `screendump` and PIL write.
    fn ppm(path: &Path) -> Image {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while data[at].is_ascii_whitespace() {
                at += 1;
            }
            if data[at] == b'#' {
                while data[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            let start = at;
            while !data[at].is_ascii_whitespace() {
                at += 1;
            }
            fields.push(String::from_utf8_lossy(&data[start..at]).into_owned());
        }
        assert_eq!((fields[0].as_str(), fields[3].as_str()), ("P6", "255"));
        let (width, height) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        let rgb = data[at + 1..].to_vec();
        assert_eq!(rgb.len(), width * height * 3, "{}", path.display());
        Image { width, height, rgb }
    }

    fn from_rgba(width: usize, height: usize, rgba: &[u8]) -> Image {
        assert_eq!(rgba.len(), width * height * 4);
        let rgb = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        Image { width, height, rgb }
    }

    fn write_ppm(&self, path: &Path) {
        let mut data = format!("P6\n{} {}\n255\n", self.width, self.height).into_bytes();
        data.extend_from_slice(&self.rgb);
        std::fs::write(path, data).unwrap();
    }

    /// Panics unless `self` equals `want`, leaving both images in
    /// target/vnc-test-artifacts/ to look at.
    fn assert_same(&self, want: &Image, what: &str) {
        if self == want {
            return;
        }
        let dir = workspace().join("target/vnc-test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let name: String = what
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { '-' })
            .collect();
        self.write_ppm(&dir.join(format!("{name}.got.ppm")));
        want.write_ppm(&dir.join(format!("{name}.want.ppm")));
        let diff = if (self.width, self.height) == (want.width, want.height) {
            format!("{} pixels differ", self.differing(want))
        } else {
            format!("{self:?} vs {want:?}")
        };
        panic!("{what}: {diff}; images in {}", dir.display());
    }

    /// Pixels that differ, for a readable failure.
    fn differing(&self, other: &Image) -> usize {
        self.rgb
            .chunks(3)
            .zip(other.rgb.chunks(3))
            .filter(|(a, b)| a != b)
            .count()
    }
}

/// The guest's screen as the hypervisor sees it: QMP `screendump` under
/// the qemu backend, `virsh screenshot` (libvirt's own screendump) under
/// libvirt.
async fn screendump(stack: &Stack) -> Image {
    let path = stack.dir.path().join(format!(
        "screendump-{}.ppm",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    match stack.backend {
        Backend::Qemu => {
            let mut qmp = tokio::time::timeout(
                WAIT,
                vmgate_agent::qmp::Qmp::connect(&stack.qemu().qmp_socket),
            )
            .await
            .expect("QMP answers")
            .expect("QMP connects");
            qmp.execute(
                "screendump",
                serde_json::json!({ "filename": path.to_str().unwrap() }),
            )
            .await
            .expect("screendump");
        }
        Backend::Libvirt => {
            // libvirt asks QEMU for a PNG when QEMU can write one.
            let (name, ppm) = (stack.name.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                let shot = ppm.with_extension("shot");
                let out = common::libvirt::virsh(&["screenshot", &name, shot.to_str().unwrap()]);
                assert!(
                    out.status.success(),
                    "virsh screenshot failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                png_to_ppm(&shot, &ppm);
            })
            .await
            .unwrap();
        }
    }
    Image::ppm(&path)
}

/// The guest's screen once it stopped changing: the VGA console's shell
/// may still be starting when the serial console's prompt is there.
async fn settled_screen(stack: &Stack) -> Image {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = screendump(stack).await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = screendump(stack).await;
        if now == last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the guest's screen never settled"
        );
        last = now;
    }
}

/// `vmgate vnc GUEST` for the stack's guest, listening on a free local port.
struct VncCli {
    child: Child,
    addr: String,
}

impl VncCli {
    async fn start(stack: &Stack, read_only: bool) -> VncCli {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmgate"));
        // vncdotool speaks TCP only: the loopback port is asked for
        // explicitly (the default is a unix socket, cli.rs tests it).
        cmd.args([
            "vnc",
            &stack.name,
            "--listen",
            "tcp:127.0.0.1:0",
            "--insecure-tcp",
        ])
        .arg("--state-dir")
        .arg(&stack.state.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if read_only {
            cmd.arg("--read-only");
        }
        let mut child = cmd.spawn().expect("spawning vmgate vnc");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        });
        let addr = tokio::time::timeout(WAIT, line)
            .await
            .expect("vmgate vnc prints its address")
            .unwrap()
            .unwrap()
            .trim()
            .to_string();
        assert!(!addr.is_empty(), "vmgate vnc printed no address");
        VncCli { child, addr }
    }

    /// `host::port`, the VNC viewers' way to name a TCP port.
    fn vnc_target(&self) -> String {
        let (host, port) = self.addr.rsplit_once(':').unwrap();
        format!("{host}::{port}")
    }
}

impl Drop for VncCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// vncdotool from PyPI, in a venv under target/ (made on first use).
fn vncdo() -> PathBuf {
    static READY: Mutex<()> = Mutex::new(());
    let _once = READY.lock().unwrap_or_else(|e| e.into_inner());
    let venv = workspace().join("target/vnc-venv");
    let bin = venv.join("bin/vncdo");
    if !bin.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "vncdotool"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(
            ok,
            "cannot install vncdotool into {} (needs python3-venv and PyPI; see scripts/deps.d/vnc.sh)",
            venv.display()
        );
    }
    bin
}

/// Captures the screen with vncdotool through `vmgate vnc`.
async fn vncdo_capture(cli: &VncCli, out: &Path) -> Image {
    let png = out.with_extension("png");
    let status = tokio::process::Command::new(vncdo())
        .args(["-s", &cli.vnc_target(), "capture"])
        .arg(&png)
        .status();
    let status = tokio::time::timeout(WAIT, status)
        .await
        .expect("vncdotool finished")
        .unwrap();
    assert!(status.success(), "vncdotool capture failed: {status}");
    png_to_ppm(&png, out);
    Image::ppm(out)
}

/// Pillow (vncdotool's dependency, in the same venv) turns a PNG into PPM.
fn png_to_ppm(png: &Path, out: &Path) {
    let python = vncdo().with_file_name("python");
    let status = Command::new(python)
        .arg("-c")
        .arg("import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2])")
        .arg(png)
        .arg(out)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "converting {} to PPM failed",
        png.display()
    );
}

async fn assert_capture_equals_screendump(stack: &Stack) {
    let cli = VncCli::start(stack, false).await;
    let before = settled_screen(stack).await;
    let capture = vncdo_capture(&cli, &stack.dir.path().join("vncdo.ppm")).await;
    let after = screendump(stack).await;
    after.assert_same(&before, "screen during the capture");
    capture.assert_same(&before, "vncdotool capture vs screendump");
}

for_each_backend!(
    vncdotool_through_vmgate_vnc_sees_exactly_the_screendump,
    read_only_viewers_never_reach_the_guest_while_an_interactive_one_does,
    malformed_rfb_from_a_viewer_closes_only_its_session_with_a_logged_reason,
    the_web_page_shows_the_screen_over_one_http2_connection_and_types_into_the_guest,
    a_read_only_page_says_so_and_shows_why_the_screen_closed,
);

/// Each backend's way to QEMU's VNC server, as the agent logs it: QMP
/// `add_client` on a socketpair, or libvirt's `virDomainOpenGraphicsFD`.
async fn vncdotool_through_vmgate_vnc_sees_exactly_the_screendump(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    assert_capture_equals_screendump(&stack).await;
    let agent = plain(&stack.log("agent.log"));
    let via = match backend {
        Backend::Qemu => "QMP add_client",
        Backend::Libvirt => "virDomainOpenGraphicsFD",
    };
    assert!(agent.contains(via), "agent log:\n{agent}");
}

/// `[agents] session_transport = "tcp"`: every session has its own TCP +
/// TLS connection to the agent instead of a QUIC stream. A serial console
/// answers a command, and a VNC viewer's capture equals QEMU's own
/// screendump pixel for pixel, both over that transport (the agent logs
/// each session with the transport it came by, and none came by QUIC).
#[tokio::test]
async fn the_tcp_session_transport_carries_a_serial_console_and_the_exact_screen() {
    let stack = Stack::start_full(
        Backend::Qemu,
        true,
        |_| {},
        |agent| agent.tcp_sessions = true,
        |_, gateway| {
            gateway.agents.session_transport = vmgate_gateway::config::SessionTransport::Tcp
        },
    )
    .await;
    let mut serial = stack.serial().await;
    serial.send(b"echo over-tcp-$((6*7))\n").await;
    serial.expect("over-tcp-42").await;
    drop(serial);
    assert_capture_equals_screendump(&stack).await;
    let agent = plain(&stack.log("agent.log"));
    let opened: Vec<&str> = agent
        .lines()
        .filter(|l| l.contains("session opened"))
        .collect();
    for channel in ["serial0", "vnc"] {
        assert!(
            opened
                .iter()
                .any(|l| l.contains(&format!("channel={channel}"))
                    && l.contains("transport=\"tcp\"")),
            "no {channel} session over TCP in the agent log:\n{agent}"
        );
    }
    assert!(
        !opened.iter().any(|l| l.contains("transport=\"quic\"")),
        "a session came by QUIC:\n{agent}"
    );
}

#[tokio::test]
async fn the_vnc_unix_socket_fallback_shows_the_same_screen() {
    let stack = Stack::start_with(
        |_| {},
        |g| g.vnc_via = Some(vmgate_agent::config::VncVia::Socket),
    )
    .await;
    assert_capture_equals_screendump(&stack).await;
    let agent = plain(&stack.log("agent.log"));
    assert!(!agent.contains("QMP add_client"), "agent log:\n{agent}");
    assert!(agent.contains("channel=vnc"), "agent log:\n{agent}");
}

/// Just enough of an RFB client to type and click, counting nothing on
/// faith: what it sends is exactly known.
struct RawViewer {
    tcp: TcpStream,
    /// Bytes sent to the server, all of them.
    sent: usize,
}

impl RawViewer {
    async fn connect(cli: &VncCli) -> RawViewer {
        let mut tcp = TcpStream::connect(&cli.addr).await.unwrap();
        let mut version = [0u8; 12];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut version))
            .await
            .expect("server version in time")
            .unwrap();
        assert_eq!(&version, b"RFB 003.008\n");
        let mut v = RawViewer { tcp, sent: 0 };
        v.send(b"RFB 003.008\n").await;
        let n = v.tcp.read_u8().await.unwrap() as usize;
        let mut types = vec![0u8; n];
        v.tcp.read_exact(&mut types).await.unwrap();
        assert!(types.contains(&1), "security None offered: {types:?}");
        v.send(&[1]).await;
        assert_eq!(v.tcp.read_u32().await.unwrap(), 0, "security result OK");
        // Not shared: the gateway makes it shared, or the others would drop.
        v.send(&[0]).await;
        let mut init = [0u8; 24];
        v.tcp.read_exact(&mut init).await.unwrap();
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; name_len as usize];
        v.tcp.read_exact(&mut name).await.unwrap();
        // SetEncodings (raw) and a full update request: not input, they pass.
        v.send(&[2, 0, 0, 1, 0, 0, 0, 0]).await;
        v.send(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await;
        v
    }

    async fn send(&mut self, b: &[u8]) {
        self.tcp.write_all(b).await.unwrap();
        self.sent += b.len();
    }

    async fn key(&mut self, keysym: u32, down: bool) {
        let mut m = vec![4, down as u8, 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.send(&m).await;
    }

    /// Types `text` as a person on a US keyboard would (Shift held for
    /// shifted characters), Enter at the end: [`key_events`] messages.
    async fn type_line(&mut self, text: &str) {
        const SHIFT_L: u32 = 0xffe1;
        for ch in text.chars() {
            let shifted = shifted(ch);
            if shifted {
                self.key(SHIFT_L, true).await;
            }
            self.key(ch as u32, true).await;
            self.key(ch as u32, false).await;
            if shifted {
                self.key(SHIFT_L, false).await;
            }
        }
        self.key(0xff0d, true).await;
        self.key(0xff0d, false).await;
    }

    /// Clicks, pastes, and sends a QEMU extended key event (Ctrl+Alt+Del's kind).
    async fn click_paste_and_extended_key(&mut self) {
        self.send(&[5, 1, 0, 100, 0, 100]).await;
        self.send(&[5, 0, 0, 100, 0, 100]).await;
        let mut cut = vec![6, 0, 0, 0, 0, 0, 0, 4];
        cut.extend_from_slice(b"ls\r\n");
        self.send(&cut).await;
        self.send(&[255, 0, 0, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0x53])
            .await;
        self.send(&[255, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0x53])
            .await;
    }

    /// Sends a full update request and reads until a FramebufferUpdate
    /// header arrives: proof that the session still works.
    async fn still_updates(&mut self) {
        self.send(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await;
        let mut buf = vec![0u8; 1 << 16];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut buf))
            .await
            .expect("an update in time")
            .unwrap();
        assert!(n > 0, "the session ended");
    }
}

fn shifted(ch: char) -> bool {
    ch.is_ascii_uppercase() || "!@#$%^&*()_+{}|:\"<>?~".contains(ch)
}

/// KeyEvents [`RawViewer::type_line`] sends for `text`.
fn key_events(text: &str) -> usize {
    let presses = text.chars().count() + text.chars().filter(|&c| shifted(c)).count() + 1;
    2 * presses
}

/// Strips the terminal colours tracing puts in the log files.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=` on the agent's "session ended" line of the only
/// read-only VNC session, once it is there.
async fn read_only_vnc_session_end(stack: &Stack) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = plain(&stack.log("agent.log"));
        let id = log
            .lines()
            .filter(|l| l.contains("session opened") && l.contains("channel=vnc"))
            .find(|l| l.contains("mode=ReadOnly"))
            .and_then(|l| l.split("session=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string);
        if let Some(id) = id {
            let ended = log
                .lines()
                .find(|l| l.contains("session ended") && l.contains(&format!("session={id} ")));
            if let Some(l) = ended {
                return l.to_string();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ended read-only VNC session in the agent log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const RO_LINE: &str = "echo ro-$((2+3)) > /dev/ttyS0";

async fn read_only_viewers_never_reach_the_guest_while_an_interactive_one_does(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let ro_ticket = stack.ticket(&stack.name, &["serial0"], true);
    let mut serial = Session::new(stack.connect(&ro_ticket.ws_url).await);
    serial.expect_notice("read-only").await;
    let ro_cli = VncCli::start(&stack, true).await;
    let rw_cli = VncCli::start(&stack, false).await;
    // Both at once, each asking for exclusive access: QEMU keeps both
    // because the gateway forces the shared flag.
    let mut ro = RawViewer::connect(&ro_cli).await;
    let mut rw = RawViewer::connect(&rw_cli).await;

    ro.type_line(RO_LINE).await;
    ro.click_paste_and_extended_key().await;
    ro.still_updates().await;
    rw.type_line("echo rw-$((3+4)) > /dev/ttyS0").await;
    serial.expect("rw-7").await;
    assert!(
        !serial.text().contains("ro-5"),
        "a read-only viewer's keys ran:\n{}",
        serial.text()
    );
    rw.still_updates().await;

    // What QEMU got from the read-only viewer: the handshake, SetEncodings
    // and the update requests, and not one byte of its input.
    let non_input = 12 + 1 + 1 + 8 + 10 + 10;
    assert!(ro.sent > non_input + 100, "the viewer did send input");
    drop(ro);
    let line = read_only_vnc_session_end(&stack).await;
    assert!(
        line.contains(&format!("to_guest={non_input} ")),
        "QEMU got more than the non-input bytes: {line}"
    );
    // The gateway counted what it dropped: the typed line's key events,
    // 2 pointer events, a paste, 2 QEMU key events.
    let dropped = key_events(RO_LINE) + 2 + 1 + 2;
    let gw = plain(&stack.log("gateway.log"));
    assert!(
        gw.lines()
            .any(|l| l.contains("session ended") && l.contains(&format!("input_dropped={dropped}"))),
        "no session with input_dropped={dropped} in the gateway log:\n{gw}"
    );
    drop((ro_cli, rw_cli));
}

async fn malformed_rfb_from_a_viewer_closes_only_its_session_with_a_logged_reason(
    backend: Backend,
) {
    let stack = Stack::start_backend(backend).await;
    let cli = VncCli::start(&stack, false).await;
    let mut good = RawViewer::connect(&cli).await;
    let mut serial = stack.serial().await;

    let t = stack.ticket(&stack.name, &["vnc"], false);
    let mut bad = Session::new(stack.connect(&t.ws_url).await);
    bad.send(b"RFB 003.008\n\x01\x01").await;
    bad.send(&[200, 1, 2, 3]).await;
    let (code, reason) = bad.closed().await;
    assert_eq!(code, 4400, "{reason}");
    assert!(
        reason.contains("malformed RFB from the viewer: unknown message type 200"),
        "{reason}"
    );
    let gw = plain(&stack.log("gateway.log"));
    assert!(
        gw.contains("malformed RFB from the viewer: unknown message type 200"),
        "gateway log:\n{gw}"
    );
    // The other viewer and the serial console go on.
    good.still_updates().await;
    serial.send(b"echo still-$((4*4))\n").await;
    serial.expect("still-16").await;
    drop(cli);
}

/// Runs the browser script (tests/browser/screen.mjs) and returns its report.
async fn browser(url: &str, out: &Path, typed: Option<&str>) -> serde_json::Value {
    browser_with(url, out, typed, false).await
}

async fn browser_with(
    url: &str,
    out: &Path,
    typed: Option<&str>,
    until_closed: bool,
) -> serde_json::Value {
    let dir = workspace().join("crates/vmgate/tests/browser");
    // One installer at a time: the browser tests run in parallel.
    static NPM: Mutex<()> = Mutex::new(());
    let installing = NPM.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "npm ci in {} failed (see scripts/deps.d/vnc.sh)",
            dir.display()
        );
    }
    drop(installing);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("screen.mjs"))
        .env("VMGATE_URL", url)
        .env("VMGATE_OUT", out)
        .stderr(Stdio::inherit());
    if let Some(t) = typed {
        cmd.env("VMGATE_TYPE", t);
        cmd.env("VMGATE_TYPE_BUTTON", t.replace("vnc-", "button-"));
    }
    if until_closed {
        cmd.env("VMGATE_UNTIL_CLOSED", "1");
    }
    let output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the browser script finished")
        .expect("running node");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "browser script output is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(report["ok"], true, "browser: {report:#}");
    report
}

async fn the_web_page_shows_the_screen_over_one_http2_connection_and_types_into_the_guest(
    backend: Backend,
) {
    let stack = Stack::start_backend(backend).await;
    let ro_ticket = stack.ticket(&stack.name, &["serial0"], true);
    let mut watcher = Session::new(stack.connect(&ro_ticket.ws_url).await);
    watcher.expect_notice("read-only").await;
    let before = settled_screen(&stack).await;

    // `vmgate ticket demo --channel vnc --channel serial0` mints this URL.
    let t = stack.ticket(&stack.name, &["vnc", "serial0"], false);
    assert!(t.url.contains("/console#ticket="), "{}", t.url);
    let out = stack.dir.path().join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let report = browser(&t.url, &out, Some("echo vnc-$((6*7)) > /dev/ttyS0")).await;

    // The canvas showed the guest's screen, pixel for pixel.
    let rgba = std::fs::read(out.join("canvas.rgba")).unwrap();
    let canvas = Image::from_rgba(
        report["width"].as_u64().unwrap() as usize,
        report["height"].as_u64().unwrap() as usize,
        &rgba,
    );
    canvas.assert_same(&before, "browser canvas vs screendump");
    assert_eq!(report["status"], "connected", "{report:#}");
    // The serial console's notice is in the status line, out of band; the
    // terminal, which the guest writes, never shows vmgate speaking.
    assert_eq!(
        report["notice"], "serial0: you hold the keyboard",
        "{report:#}"
    );
    let serial = report["serialText"].as_str().unwrap();
    assert!(!serial.contains("keyboard"), "{serial}");

    // Keys typed in the page ran on the guest's VGA console, and so did the
    // page's Type button.
    watcher.expect("vnc-42").await;
    watcher.expect("button-42").await;

    // Screen and serial on one HTTP/2 connection: the browser's own record
    // (an extended CONNECT is answered 200, an HTTP/1.1 upgrade 101) ...
    assert_eq!(report["documentProtocol"], "h2", "{report:#}");
    let ws = &report["websockets"];
    assert_eq!(
        ws[format!("/ws/{}/vnc", stack.name)]["status"],
        200,
        "{report:#}"
    );
    assert_eq!(
        ws[format!("/ws/{}/serial0", stack.name)]["status"],
        200,
        "{report:#}"
    );
    // ... and the gateway's: both sessions came from one client TCP port.
    let gw = plain(&stack.log("gateway.log"));
    let ticket_id = vmgate_client::peek(&t.ticket).unwrap().id;
    let peers: Vec<&str> = gw
        .lines()
        .filter(|l| l.contains("session opened") && l.contains(&format!("ticket={ticket_id}")))
        .filter_map(|l| l.split("peer=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(peers.len(), 2, "two sessions for the page's ticket:\n{gw}");
    assert_eq!(peers[0], peers[1], "screen and serial on one connection");

    // The ticket travels in the URL's fragment: the browser never sent it
    // to a server (in a request's URL, a header such as Referer, or a
    // WebSocket's handshake; only in the body of `POST /api/session`), and
    // the page took it out of the address bar and the tab's history.
    let sent: Vec<&str> = report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        sent.iter().any(|s| s.contains("/api/session")),
        "{report:#}"
    );
    assert!(
        !sent.iter().any(|s| s.contains(&t.ticket)),
        "the browser sent the ticket where a server could log it: {report:#}"
    );
    let location = report["location"].as_str().unwrap();
    assert!(
        location.ends_with("/screen") && !location.contains('#'),
        "{location}"
    );
    let history = report["history"].as_array().unwrap();
    assert!(!history.is_empty(), "{report:#}");
    assert!(
        history
            .iter()
            .all(|u| !u.as_str().unwrap().contains("ticket")),
        "the ticket is in the tab's history: {history:?}"
    );

    // The ticket was redeemed once: it opens nothing more.
    let mut again = Session::new(
        stack
            .connect(&format!(
                "wss://{}/ws/{}/vnc?ticket={}",
                stack.gw_addr, stack.name, t.ticket
            ))
            .await,
    );
    let (code, reason) = again.closed().await;
    assert_eq!(code, 4401);
    assert!(reason.contains("already used"), "{reason}");
}

async fn a_read_only_page_says_so_and_shows_why_the_screen_closed(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let t = stack.ticket_with(
        &stack.name,
        &["vnc"],
        true,
        Duration::from_secs(60),
        Some(Duration::from_secs(8)),
    );
    let out = stack.dir.path().join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let report = browser_with(&t.url, &out, None, true).await;
    let status = report["status"].as_str().unwrap();
    assert!(status.contains("read-only"), "{report:#}");
    assert_eq!(report["serial"], false, "no serial channel in the ticket");
    let closed = report["closedStatus"].as_str().unwrap();
    assert!(
        closed.contains("maximum session length") && closed.contains("(4408)"),
        "{report:#}"
    );
}
