//! `vmgate demo`: one command gives a working console URL, and SIGTERM stops
//! everything it started, QEMU included.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Session, WAIT};

/// The demo process, stopped like a user would (SIGTERM) if the test fails
/// half-way, so it never leaves a QEMU behind.
struct Demo(std::process::Child);

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

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = demo.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
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
    drop(viewer);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = demo.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let left = processes_under(&state);
    assert!(left.is_empty(), "processes left running: {left:?}");
}
