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
