//! `vmgate demo`: one command gives a working console URL, and SIGTERM stops
//! everything it started, QEMU included.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rfb::{Image, Page, Viewer};
use common::{Backend, Event, Session, Stack, WAIT};
use vmgate_agent::qmp::Qmp;
use vmgate_testkit::{BootOptions, Guest};

/// A virtio-serial port the two-node tests add to the guest: the guest
/// writes to it from its shell (the echo port's service holds that one).
const BULK: &str = "test.bulk";
/// What the guest writes to [`BULK`] first: `seq 1 BULK_LINES`, one
/// small write per line (busybox), about 3 s of them under TCG: the move
/// comes then, while the guest writes all the time.
const BULK_LINES: u32 = 100_000;
/// Then `block N` and `seq 1 11000` (53.6 KiB, in large writes) for N from
/// 1 to this: 16.02 MiB.
const BULK_BLOCKS: u32 = 306;

/// The demo process, stopped like a user would (SIGTERM) if the test fails
/// half-way, so it never leaves a QEMU behind.
struct Demo(std::process::Child);

impl Demo {
    /// Sends SIGTERM and asserts the demo exits successfully within
    /// [`WAIT`], as a user stopping it would expect.
    fn stop_on_sigterm(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + WAIT;
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn the_demo_serves_a_console_and_stops_qemu_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_vmgate"))
            .args(["demo", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // stderr names QEMU's pid; stdout the console URL.
    let stderr = BufReader::new(demo.0.stderr.take().unwrap());
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("QEMU pid ").nth(1) {
                let _ = pid_tx.send(rest.trim_end_matches(')').parse::<u32>().unwrap());
            }
        }
    });
    let stdout = BufReader::new(demo.0.stdout.take().unwrap());
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.trim_start().starts_with("https://") && line.contains("/console#ticket=") {
                let _ = url_tx.send(line.trim().to_string());
            }
        }
    });
    let qemu = pid_rx.recv_timeout(WAIT).expect("demo printed QEMU's pid");
    let url = url_rx
        .recv_timeout(WAIT)
        .expect("demo printed a console URL");

    // The printed URL opens the guest's serial console.
    let ws_url = vmgate_client::url::ws_url_from(&url, None).unwrap();
    let ws = vmgate::client::connect(&ws_url, &state.join("public-ca.pem"))
        .await
        .unwrap();
    let mut s = Session::new(ws);
    s.expect_booted(0).await;
    s.send(b"echo demo-$((2*21))\n").await;
    s.expect("demo-42").await;

    demo.stop_on_sigterm();
    assert!(
        !std::path::Path::new(&format!("/proc/{qemu}")).exists(),
        "QEMU {qemu} still running after the demo stopped"
    );
}

/// Every process whose command line names `dir` (the demo's QEMUs do, by
/// their sockets).
fn processes_under(dir: &std::path::Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

/// `vmgate demo --nodes 2`: on Enter the guest live-migrates from node-a's
/// QEMU to a fresh one on node-b (qemu backend, QMP `migrate`), the demo
/// prints the move with QEMU's downtime, and a serial session and a VNC
/// viewer opened before the move stay open: the serial session answers on
/// node-b, the viewer gets node-b's screen. SIGTERM then stops every QEMU.
#[tokio::test]
async fn the_two_node_demo_moves_the_guest_and_its_sessions_follow() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_vmgate"))
            .args([
                "demo",
                "--nodes",
                "2",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(&state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = BufReader::new(demo.0.stdout.take().unwrap());
    let (line_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let next_line = |what: &str, ok: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the demo printed no {what} within {WAIT:?}"));
            if ok(&line) {
                return line.trim().to_string();
            }
        }
    };
    let url = next_line("console URL", &|l| {
        l.trim_start().starts_with("https://") && l.contains("/console#ticket=")
    });
    next_line("migration hint", &|l| {
        l.contains("Press Enter to live-migrate")
    });

    let ws_url = vmgate_client::url::ws_url_from(&url, None).unwrap();
    let ws = vmgate::client::connect(&ws_url, &state.join("public-ca.pem"))
        .await
        .unwrap();
    let mut s = Session::new(ws);
    s.expect_booted(0).await;
    let viewer = common::rfb::Viewer::start_in(&state, "demo").await;
    let first = tokio::time::Instant::now() + WAIT;
    while viewer.updates() == 0 {
        viewer.assert_open();
        assert!(
            tokio::time::Instant::now() < first,
            "no screen update before the move"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A key held down on node-a across the move: the guest's keyboard
    // state migrates with it, so only the splice's release on node-b
    // keeps it from sticking.
    const SHIFT_L: u32 = 0xffe1;
    viewer.key(SHIFT_L, true).await;

    let asked = Instant::now();
    use std::io::Write;
    demo.0.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let moved = next_line("move line", &|l| l.starts_with("guest demo moved"));
    let took = asked.elapsed();
    let updates_at_move = viewer.updates();
    // `guest demo moved node-a -> node-b (downtime N ms)`
    let downtime = moved
        .strip_prefix("guest demo moved node-a -> node-b (downtime ")
        .and_then(|r| r.strip_suffix(" ms)"))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("not the move line's format: {moved:?}"));
    eprintln!("moved in {took:?} (QEMU downtime {downtime} ms)");
    assert!(took < Duration::from_secs(30), "the move took {took:?}");
    // node-a's QEMU quit: its sockets went with it.
    assert!(!state.join("node-a/qmp.sock").exists());

    // The serial session opened on node-a goes on against node-b.
    s.send(b"echo $((6*7))\n").await;
    s.expect("42").await;
    assert!(s.closed.is_none(), "{:?}", s.closed);
    assert!(
        s.notices
            .iter()
            .any(|n| n.contains("this session follows it")),
        "the session was told it follows the guest: {:?}",
        s.notices
    );
    // The viewer's connection stayed open and gets node-b's screen.
    let after = tokio::time::Instant::now() + Duration::from_secs(10);
    while viewer.updates() <= updates_at_move {
        viewer.assert_open();
        assert!(
            tokio::time::Instant::now() < after,
            "no screen update within 10 s of the move"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    viewer.assert_open();
    // Shift is up on node-b: what the viewer types there reaches the
    // guest's shell (on the VGA console) in lower case, and its output
    // the serial console (/dev/console is ttyS0). With Shift stuck, the
    // command would be `TEE ?DEV?CONSOLE` and the line `KEYS_OK`.
    viewer.type_unshifted("tee /dev/console\nkeys-ok\n").await;
    s.expect("keys-ok").await;
    viewer.assert_open();
    drop(viewer);

    demo.stop_on_sigterm();
    let left = processes_under(&state);
    assert!(left.is_empty(), "processes left running: {left:?}");
}

// ---------------------------------------------------------------------------
// The qemu backend across live migration, with the agents as processes.

/// The two nodes' names, in the order of [`Nodes::dirs`].
const NODES: [&str; 2] = ["node-a", "node-b"];

/// The qemu backend on two nodes, as the two-node demo runs it but with
/// every agent its own process (so one can die alone): the stack's agent
/// is `node-a`, a second `vmgate agent` is `node-b`, each with its own
/// QEMU run directory, behind the stack's gateway. The test moves the
/// guest between them with QMP `migrate` to a fresh `-incoming` QEMU, as
/// `vmgate demo --nodes 2` does.
struct Nodes {
    stack: Stack,
    image: vmgate_testkit::GuestImage,
    /// Each node's QEMU run directory.
    dirs: [std::path::PathBuf; 2],
    /// Each node's agent log, in the stack's directory.
    logs: [&'static str; 2],
    /// Where the guest runs now.
    here: usize,
}

/// One live migration, as the test saw it.
struct Moved {
    /// The destination's QMP first said `running` (polled every 10 ms).
    resumed: std::time::SystemTime,
    /// QEMU's own downtime, ms.
    downtime: u64,
}

impl Nodes {
    async fn start() -> Nodes {
        let mut stack = Stack::start_full(
            Backend::Qemu,
            true,
            |o| o.channels.push(BULK.into()),
            |cfg| cfg.node = NODES[0].into(),
            |_, _| {},
        )
        .await;
        let image = tokio::task::spawn_blocking(|| {
            vmgate_testkit::build_image(&vmgate_testkit::default_cache_dir())
        })
        .await
        .unwrap()
        .unwrap();
        let dirs = [stack.qemu().run_dir.clone(), stack.dir.path().join("b")];
        std::fs::create_dir_all(&dirs[1]).unwrap();
        let guest =
            vmgate::demo::on_node(vmgate::demo::guest_config(stack.qemu()), &dirs[0], &dirs[1]);
        let mut cfg = stack.state.agent_config(common::any_port(), vec![guest]);
        cfg.node = NODES[1].into();
        cfg.log_dir = stack.dir.path().join("logs-node-b");
        std::fs::create_dir_all(&cfg.log_dir).unwrap();
        let b = stack.spawn_agent("agent-b", &cfg, Backend::Qemu).await;
        stack
            .restart_gateway(|gw| {
                let mut agent = gw.agent_list[0].clone();
                agent.addr = b;
                gw.agent_list.push(agent);
            })
            .await;
        Nodes {
            stack,
            image,
            dirs,
            logs: ["agent.log", "agent-b.log"],
            here: 0,
        }
    }

    /// The QMP socket of the guest's QEMU on node `i`.
    fn qmp_of(&self, i: usize) -> std::path::PathBuf {
        self.dirs[i].join("qmp.sock")
    }

    /// The guest's screen as its QEMU (on the node it runs on) has it: QMP
    /// `screendump`.
    async fn screendump(&self) -> Image {
        let path = self.stack.dir.path().join(format!(
            "screendump-{}.ppm",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut q = tokio::time::timeout(WAIT, Qmp::connect(&self.qmp_of(self.here)))
            .await
            .expect("QMP answers")
            .expect("QMP connects");
        q.execute(
            "screendump",
            serde_json::json!({ "filename": path.to_str().unwrap() }),
        )
        .await
        .expect("screendump");
        let img = Image::ppm(&path);
        let _ = std::fs::remove_file(&path);
        img
    }

    /// How many times node `i`'s agent logged that the guest left it.
    fn departures(&self, i: usize) -> usize {
        common::plain(&self.stack.log(self.logs[i]))
            .lines()
            .filter(|l| l.contains("guest run state (QMP)") && l.contains("state=Migrated"))
            .count()
    }

    /// A fresh `-incoming` QEMU on the other node, listening on
    /// `migrate.sock` in its run directory.
    async fn incoming(&self) -> (Guest, std::path::PathBuf) {
        let to = 1 - self.here;
        let sock = self.dirs[to].join("migrate.sock");
        let mut opts = BootOptions::new("demo", &self.dirs[to]);
        opts.channels.push(BULK.into());
        let (image, s) = (self.image.clone(), sock.clone());
        let guest = tokio::task::spawn_blocking(move || Guest::boot_incoming(&image, &opts, &s))
            .await
            .unwrap()
            .expect("starting the incoming QEMU");
        (guest, sock)
    }

    /// Starts a live migration to the other node: QMP `migrate` to a fresh
    /// `-incoming` QEMU there, returned.
    async fn start_move(&self) -> Guest {
        let (target, sock) = self.incoming().await;
        let mut q = Qmp::connect(&self.qmp_of(self.here)).await.unwrap();
        q.execute(
            "migrate",
            serde_json::json!({ "uri": format!("unix:{}", sock.display()) }),
        )
        .await
        .expect("QMP migrate");
        target
    }

    /// Waits (polling every 10 ms) until `target` says `running`: when
    /// the guest resumed there.
    async fn resumed(&self, target: &mut Guest) -> std::time::SystemTime {
        let deadline = Instant::now() + WAIT;
        loop {
            if status(&target.qmp_socket).await.as_deref() == Some("running") {
                return std::time::SystemTime::now();
            }
            assert!(
                target.is_running() && Instant::now() < deadline,
                "the guest did not resume on {} within {WAIT:?}: {}",
                NODES[1 - self.here],
                std::fs::read_to_string(&target.log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The guest runs on `target` now: the old QEMU quits, and `target`
    /// becomes the stack's guest.
    async fn moved_to(&mut self, target: Guest) {
        let _ = std::fs::remove_file(self.dirs[1 - self.here].join("migrate.sock"));
        let old = std::mem::replace(self.stack.qemu_guest(), target);
        quit(old).await;
        self.here = 1 - self.here;
    }

    /// Live-migrates the guest to the other node ([`Nodes::start_move`]);
    /// once it resumed there, waits for the old node's agent to see it leave
    /// (its sessions then end with 4413 and the gateway follows them), and
    /// quits the old QEMU.
    async fn migrate(&mut self) -> Moved {
        let left = self.departures(self.here);
        let mut target = self.start_move().await;
        let resumed = self.resumed(&mut target).await;
        let mut q = Qmp::connect(&self.qmp_of(self.here)).await.unwrap();
        let st = q
            .execute("query-migrate", serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(st["status"], "completed", "{st}");
        let downtime = st["downtime"].as_u64().unwrap_or(0);
        drop(q);
        // The old node's agent polls every 200 ms: once it saw the guest
        // leave, its QEMU may go.
        let deadline = Instant::now() + WAIT;
        while self.departures(self.here) == left {
            assert!(
                Instant::now() < deadline,
                "{} never saw the guest leave:\n{}",
                NODES[self.here],
                self.stack.log(self.logs[self.here])
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.moved_to(target).await;
        Moved { resumed, downtime }
    }

    /// The process id of node `i`'s agent.
    fn agent_pid(&self, i: usize) -> u32 {
        match i {
            0 => self.stack.agent_pid(),
            _ => self.stack.extra_agent_pid("agent-b"),
        }
    }
}

/// QMP `query-status`'s `status`, or none if QMP does not answer in 2 s.
async fn status(qmp: &std::path::Path) -> Option<String> {
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        let mut q = Qmp::connect(qmp).await?;
        q.execute("query-status", serde_json::json!({})).await
    })
    .await
    .ok()?
    .ok()?;
    answer["status"].as_str().map(str::to_string)
}

/// Asks `guest`'s QEMU to quit, then kills and reaps it (removing its
/// sockets).
async fn quit(guest: Guest) {
    if let Ok(mut q) = Qmp::connect(&guest.qmp_socket).await {
        let _ = q.execute("quit", serde_json::json!({})).await;
    }
    tokio::task::spawn_blocking(move || drop(guest))
        .await
        .unwrap();
}

/// UTC seconds since midnight, as log lines show them.
fn ms_between(from: std::time::SystemTime, to: std::time::SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// Waits for a notice containing `needle` among those after the first
/// `since`; returns when it was read (the session is read as it comes).
async fn notice_at(s: &mut Session, since: usize, needle: &str) -> std::time::SystemTime {
    notices_at(s, since, needle, 1).await
}

/// Waits for `n` notices containing `needle` among those after the first
/// `since`; returns when the last was read.
async fn notices_at(
    s: &mut Session,
    since: usize,
    needle: &str,
    n: usize,
) -> std::time::SystemTime {
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.notices[since..]
        .iter()
        .filter(|t| t.contains(needle))
        .count()
        < n
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Event::Timeout | Event::Closed(..) = s.next_event(left).await {
            panic!(
                "not {n} notices {needle:?}; notices: {:?}, closed: {:?}",
                s.notices, s.closed
            );
        }
    }
    std::time::SystemTime::now()
}

/// What a channel session received.
struct Received {
    bytes: Vec<u8>,
    notices: Vec<String>,
    closed: Option<(u16, String)>,
}

/// Reads the channel session `ws` until `len` bytes came, it closed, or
/// `wait` passed; `progress` says how many bytes came so far.
async fn receive(
    mut ws: vmgate::client::Ws,
    len: usize,
    progress: tokio::sync::watch::Sender<usize>,
    wait: Duration,
) -> Received {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut out = Received {
        bytes: Vec::with_capacity(len),
        notices: Vec::new(),
        closed: None,
    };
    let deadline = tokio::time::Instant::now() + wait;
    while out.bytes.len() < len {
        let Ok(msg) = tokio::time::timeout_at(deadline, ws.next()).await else {
            break;
        };
        match msg {
            Some(Ok(Message::Binary(b))) => {
                out.bytes.extend_from_slice(&b);
                progress.send_replace(out.bytes.len());
            }
            Some(Ok(Message::Text(t))) => match vmgate_wire::Control::parse(t.as_str()) {
                Ok(vmgate_wire::Control::Notice { text }) => out.notices.push(text),
                other => panic!("the gateway sent {other:?} on a channel session"),
            },
            Some(Ok(Message::Close(f))) => {
                out.closed = Some(
                    f.map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new())),
                );
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                out.closed = Some((1006, e.to_string()));
                break;
            }
            None => {
                out.closed = Some((1006, "stream ended".into()));
                break;
            }
        }
    }
    out
}

/// `seq 1 n`.
fn seq(n: u32) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// What the guest writes to [`BULK`]: `seq 1 BULK_LINES`, then
/// `BULK_BLOCKS` numbered blocks of `seq 1 11000`.
fn bulk() -> Vec<u8> {
    let block = seq(11000);
    let blocks = (1..=BULK_BLOCKS).flat_map(|n| {
        let mut b = format!("block {n}\n").into_bytes();
        b.extend_from_slice(&block);
        b
    });
    seq(BULK_LINES).into_iter().chain(blocks).collect()
}

/// The qemu backend across live migration (docs/migration.md, "The `qemu`
/// backend"), with node-a's and node-b's agents as processes. Opened on
/// node-a: a serial session, a channel session receiving 16 MiB that the
/// guest writes, a viewer through `vmgate vnc` and the screen page in
/// headless Chromium. Across a QMP `migrate` to node-b the transfer comes
/// whole and in order on the same session, told it follows; the serial
/// session follows in the same shell, and what it draws on the VGA console
/// reaches the viewer, whose framebuffer then equals node-b's QMP
/// `screendump` pixel for pixel, and the page's canvas too. A migration to
/// a socket nobody listens on, and one cancelled half-way, leave every
/// session where it was, with no notice. Moves back and forth
/// (`VMGATE_MIGRATIONS`) are each drawn on, compared and timed from the
/// guest's resume to the viewer's first update and the serial notice
/// (BENCHMARKS.md); two moves in quick succession keep the viewer and the
/// page, which never saw its WebSocket close. Last, the old node's agent
/// hangs before the guest leaves and is killed once it resumed elsewhere:
/// the serial session ends with 4502 "connection to agent lost" within
/// the QUIC idle timeout (or follows, if the gateway learnt of the move
/// first), and a new session reaches the guest on its new node.
#[tokio::test]
async fn qemu_backend_sessions_follow_the_guest_across_live_migration() {
    let mut nodes = Nodes::start().await;
    let stack = &nodes.stack;
    let mut serial = stack.serial().await;
    serial.expect_notice("you hold the keyboard").await;
    serial.send(b"MIG=kept-$((6*7))\n").await;
    serial.send(b"echo before-$((2+2))\n").await;
    serial.expect("before-4").await;
    let viewer = Viewer::start(stack, &stack.name).await;
    let on_a = viewer.wait_screen(WAIT, || nodes.screendump()).await;
    // The screen page in a browser, beside it.
    let t = stack.ticket(&stack.name, &["vnc"], false);
    let mut page = Page::open(&t.url, &stack.dir.path().join("browser")).await;
    page.wait_screen(WAIT, || nodes.screendump()).await;

    // 16.6 MiB from the guest on a channel, on their way when the guest
    // moves: lines, then numbered blocks, written to the port from the
    // guest's shell.
    let t = stack.ticket(&stack.name, &[BULK], false);
    let url = format!(
        "wss://{}/ws/{}/{BULK}?ticket={}",
        stack.gw_addr, stack.name, t.ticket
    );
    let ws = stack.connect(&url).await;
    let want = bulk();
    let (progress, mut came) = tokio::sync::watch::channel(0usize);
    let transfer = tokio::spawn(receive(ws, want.len(), progress, 3 * WAIT));
    serial
        .send(
            format!(
                "seq 1 11000 >/tmp/b; for p in /sys/class/virtio-ports/*; do [ $(cat $p/name) = {BULK} ] && d=/dev/${{p##*/}}; done; {{ seq 1 {BULK_LINES}; for n in $(seq {BULK_BLOCKS}); do echo block $n; cat /tmp/b; done; }} >$d & echo started-$((3*3))\n"
            )
            .as_bytes(),
        )
        .await;
    serial.expect("started-9").await;
    // The move starts once the first 100 kB came: the guest writes lines.
    tokio::time::timeout(WAIT, came.wait_for(|n| *n >= 100_000))
        .await
        .expect("the guest's bytes come through the channel")
        .unwrap();

    let notices = serial.notices.len();
    let updates = viewer.updates();
    let (moved, followed) = tokio::join!(
        nodes.migrate(),
        notice_at(&mut serial, notices, "this session follows it")
    );
    let during = *came.borrow();
    assert!(
        during < want.len(),
        "the transfer was over before the guest moved"
    );

    // The transfer, on the same session, arrives whole and in order.
    let got = transfer.await.unwrap();
    let bulk_lines = |log: &str| {
        common::plain(&nodes.stack.log(log))
            .lines()
            .filter(|l| l.contains(BULK))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(got.closed, None, "the channel session ended");
    if let Some(at) = got.bytes.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "the bytes differ from byte {at} on: got {:?}, not {:?}\n{}\n{}",
            String::from_utf8_lossy(
                &got.bytes[at.saturating_sub(20)..(at + 20).min(got.bytes.len())]
            ),
            String::from_utf8_lossy(&want[at.saturating_sub(20)..(at + 20).min(want.len())]),
            bulk_lines("agent.log"),
            bulk_lines("agent-b.log"),
        );
    }
    assert_eq!(
        got.bytes.len(),
        want.len(),
        "{} of {} bytes came\n{}\n{}",
        got.bytes.len(),
        want.len(),
        bulk_lines("agent.log"),
        bulk_lines("agent-b.log"),
    );
    assert!(
        got.notices
            .iter()
            .any(|n| n.contains("this session follows it")),
        "{:?}",
        got.notices
    );
    // node-b's agent had connected the port while its QEMU waited for the
    // guest, and the followed session got that connection: QEMU drops what
    // the guest writes to a port nobody is connected to, and a line written
    // in the instant of the move was lost that way before.
    let b_log = common::plain(&nodes.stack.log("agent-b.log"));
    assert!(
        b_log.lines().any(
            |l| l.contains("channel connected ahead of the guest's migration in")
                && l.contains(BULK)
        ),
        "{b_log}"
    );

    // The serial session goes on in the same shell, on node-b.
    serial.send(b"echo mig=$MIG\n").await;
    serial.expect("mig=kept-42").await;
    // What is drawn on the VGA console now reaches the viewer, whose
    // framebuffer equals node-b's screendump.
    serial
        .send(b"printf '\\033[44m\\033[2Jmoved-%s' $((6*7)) > /dev/tty1; echo drawn-$((1+1))\n")
        .await;
    serial.expect("drawn-2").await;
    let on_b = viewer.wait_screen(WAIT, || nodes.screendump()).await;
    assert_ne!(on_a, on_b, "the screen after the move is the new one");
    viewer.assert_open();
    page.wait_screen(WAIT, || nodes.screendump()).await;
    let mut screen_ms = vec![ms_between(
        moved.resumed,
        first_update(&viewer, updates, moved.resumed),
    )];
    let mut serial_ms = vec![ms_between(moved.resumed, followed)];
    eprintln!(
        "moved (QEMU downtime {} ms; {during} of {} bytes had come)",
        moved.downtime,
        want.len()
    );
    let stack = &nodes.stack;
    // The viewer's and the page's screens.
    assert_eq!(
        stack
            .log("gateway.log")
            .matches("screen spliced onto the guest's new node")
            .count(),
        2
    );
    let moves_seen = stack.log("gateway.log").matches("guest migrated;").count();

    // A migration that fails (nobody listens where it goes) and one that
    // is cancelled leave the guest and every session where they were, with
    // no notice.
    let notices = serial.notices.len();
    let left = nodes.departures(nodes.here);
    let mut q = Qmp::connect(&nodes.qmp_of(nodes.here)).await.unwrap();
    let nowhere = stack.dir.path().join("nobody-listens.sock");
    let failed = q
        .execute(
            "migrate",
            serde_json::json!({ "uri": format!("unix:{}", nowhere.display()) }),
        )
        .await;
    if failed.is_ok() {
        let deadline = Instant::now() + WAIT;
        loop {
            let st = q
                .execute("query-migrate", serde_json::json!({}))
                .await
                .unwrap();
            if st["status"] == "failed" {
                break;
            }
            assert!(Instant::now() < deadline, "the migration to nowhere: {st}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(q);
    // Cancelled half-way: slowed to 1 MiB/s, so it is still running when
    // `migrate_cancel` comes.
    let mut q = Qmp::connect(&nodes.qmp_of(nodes.here)).await.unwrap();
    let params = q
        .execute("query-migrate-parameters", serde_json::json!({}))
        .await
        .unwrap();
    let bandwidth = params["max-bandwidth"].as_u64().expect("max-bandwidth");
    q.execute(
        "migrate-set-parameters",
        serde_json::json!({ "max-bandwidth": 1u64 << 20 }),
    )
    .await
    .unwrap();
    drop(q);
    let mut target = nodes.start_move().await;
    let mut q = Qmp::connect(&nodes.qmp_of(nodes.here)).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let st = q
            .execute("query-migrate", serde_json::json!({}))
            .await
            .unwrap();
        if st["status"] == "active" && st["ram"]["transferred"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the migration never got going: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    q.execute("migrate_cancel", serde_json::json!({}))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let st = q
            .execute("query-migrate", serde_json::json!({}))
            .await
            .unwrap();
        if st["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "migrate_cancel: {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    q.execute(
        "migrate-set-parameters",
        serde_json::json!({ "max-bandwidth": bandwidth }),
    )
    .await
    .unwrap();
    drop(q);
    tokio::task::spawn_blocking(move || target.kill())
        .await
        .unwrap();
    assert_eq!(
        status(&nodes.qmp_of(nodes.here)).await.as_deref(),
        Some("running")
    );
    serial.send(b"echo still-$((3*3))\n").await;
    serial.expect("still-9").await;
    assert_eq!(serial.notices.len(), notices, "{:?}", serial.notices);
    assert_eq!(nodes.departures(nodes.here), left);
    viewer.assert_open();
    let stack = &nodes.stack;
    assert_eq!(
        stack.log("gateway.log").matches("guest migrated;").count(),
        moves_seen,
        "{}",
        stack.log("gateway.log")
    );

    // Back and forth, each move drawn on and compared with the new node's
    // screendump, and timed: from the guest resuming on its new node (its
    // QMP's first `running`) to the viewer's first update and to the
    // serial session's notice that it follows. VMGATE_MIGRATIONS sets how
    // many (BENCHMARKS.md used 10); CI makes 2.
    let moves: usize = std::env::var("VMGATE_MIGRATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    for i in 0..moves {
        let notices = serial.notices.len();
        let updates = viewer.updates();
        let (moved, followed) = tokio::join!(
            nodes.migrate(),
            notice_at(&mut serial, notices, "this session follows it")
        );
        let text = format!(
            "printf '\\033[4{}m\\033[2Jmove-%s' $(({i}+100)) > /dev/tty1; echo drawn-$(({i}+200))\n",
            i % 7 + 1
        );
        serial.send(text.as_bytes()).await;
        serial.expect(&format!("drawn-{}", i + 200)).await;
        viewer.wait_screen(WAIT, || nodes.screendump()).await;
        screen_ms.push(ms_between(
            moved.resumed,
            first_update(&viewer, updates, moved.resumed),
        ));
        serial_ms.push(ms_between(moved.resumed, followed));
    }
    let stats = |v: &mut Vec<i64>| {
        v.sort_unstable();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (s_med, s_max) = stats(&mut screen_ms);
    let (c_med, c_max) = stats(&mut serial_ms);
    eprintln!(
        "{} qemu-backend migrations: resume to the viewer's first update: median {s_med} ms, max {s_max} ms {screen_ms:?}; \
         resume to the serial session following: median {c_med} ms, max {c_max} ms {serial_ms:?}",
        moves + 1
    );
    // Measured deadlines: the old node's agent polls QMP every 200 ms.
    assert!(s_max < 3_000, "{screen_ms:?}");
    assert!(c_max < 3_000, "{serial_ms:?}");

    // Two moves in quick succession: the second starts as soon as the
    // first is done, while the gateway may still be splicing. The viewer
    // and the page stay open and show what is drawn on the final node.
    let spliced = "screen spliced onto the guest's new node";
    // Each screen splices once or twice (once if its splice follows the
    // guest on from the node it left at once).
    let want_splices = nodes.stack.log("gateway.log").matches(spliced).count() + 2;
    let notices = serial.notices.len();
    nodes.migrate().await;
    nodes.migrate().await;
    let deadline = Instant::now() + WAIT;
    while nodes.stack.log("gateway.log").matches(spliced).count() < want_splices {
        assert!(
            Instant::now() < deadline,
            "not {want_splices} splices:\n{}",
            nodes.stack.log("gateway.log")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    notices_at(&mut serial, notices, "this session follows it", 2).await;
    serial
        .send(b"printf '\\033[47m\\033[2Jquick' > /dev/tty1; echo drawn-$((7*11))\n")
        .await;
    serial.expect("drawn-77").await;
    viewer.wait_screen(WAIT, || nodes.screendump()).await;
    page.wait_screen(WAIT, || nodes.screendump()).await;
    page.quit_having_stayed_connected().await;
    {
        let seen = viewer.seen.lock().unwrap();
        // Tight, spliced with its streams reset; never ZRLE or zlib.
        assert!(seen.encodings.contains(&7), "{:?}", seen.encodings);
        assert!(
            seen.encodings.is_subset(&[0, 5, 7, -223].into()),
            "{:?}",
            seen.encodings
        );
    }

    // The old node's agent dies mid-switch: it hangs (SIGSTOP) before the
    // guest leaves, so it never reports the move, and is killed once the
    // guest resumed on the other node. The gateway cannot tell a dead agent
    // from a cut network, so it does not guess where the guest went: each
    // session on that node ends with 4502 "connection to agent lost" once
    // the QUIC connection times out (8 s), unless the gateway had learnt of
    // the move first and followed it. Either way, within a bound; and a new
    // session reaches the guest on its new node.
    let from = nodes.here;
    let pid = nix::unistd::Pid::from_raw(nodes.agent_pid(from) as i32);
    let links_down = nodes
        .stack
        .log("gateway.log")
        .matches("agent link down")
        .count();
    let mut tries = 0;
    let stopped = loop {
        use nix::sys::signal::{kill, Signal};
        kill(pid, Signal::SIGSTOP).unwrap();
        let stopped = Instant::now();
        // Stopped between two of its QMP polls, not holding the socket
        // (QEMU serves one QMP client at a time): a poll takes a few ms.
        let free =
            tokio::time::timeout(Duration::from_secs(1), Qmp::connect(&nodes.qmp_of(from))).await;
        if matches!(free, Ok(Ok(_))) {
            break stopped;
        }
        tries += 1;
        assert!(tries < 3, "the stopped agent held QMP {tries} times");
        kill(pid, Signal::SIGCONT).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut target = nodes.start_move().await;
    nodes.resumed(&mut target).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let notices = serial.notices.len();
    let ended = loop {
        let left = (stopped + Duration::from_secs(20)).saturating_duration_since(Instant::now());
        match serial.next_event(left).await {
            Event::Closed(code, reason) => break Some((code, reason)),
            Event::Notice(n) if n.contains("this session follows it") => break None,
            Event::Timeout => panic!(
                "the serial session neither followed nor ended within 20 s of its agent hanging; notices {:?}",
                &serial.notices[notices..]
            ),
            _ => {}
        }
    };
    let took = stopped.elapsed();
    match &ended {
        Some((code, reason)) => {
            assert_eq!(*code, 4502, "{reason}");
            assert!(reason.contains("connection to agent lost"), "{reason}");
        }
        None => {
            serial.send(b"echo after-$((8*8))\n").await;
            serial.expect("after-64").await;
        }
    }
    eprintln!(
        "the old node's agent died mid-switch: the serial session {ended:?} {took:?} after it hung"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let s = viewer.seen.lock().unwrap().ended.clone();
        match (&ended, s) {
            (Some(_), Some(_)) => break,
            (None, None) if viewer.updates() > 0 => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the viewer did not end with the serial session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match from {
        0 => nodes.stack.kill_agent(),
        _ => nodes.stack.kill_extra_agent("agent-b"),
    }
    nodes.moved_to(target).await;
    // Once the gateway gave up on the dead agent's link, new sessions go
    // to the guest's new node.
    while nodes
        .stack
        .log("gateway.log")
        .matches("agent link down")
        .count()
        == links_down
    {
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "the gateway kept a hung agent's link for 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut fresh = nodes.stack.serial().await;
    fresh.send(b"echo fresh-$((9*9))\n").await;
    fresh.expect("fresh-81").await;
}

/// When the viewer got its first update after `resumed`, among those after
/// the first `since`.
fn first_update(
    viewer: &Viewer,
    since: usize,
    resumed: std::time::SystemTime,
) -> std::time::SystemTime {
    viewer.seen.lock().unwrap().wall[since..]
        .iter()
        .copied()
        .find(|t| *t >= resumed)
        .expect("an update after the move")
}
