//! Guest channels end to end: a virtio-serial port of a real guest, through
//! the agent, QUIC with mutual TLS, the gateway's TLS WebSocket and the
//! `vmgate channel` command (stdin/stdout and `--listen` with socat).
//!
//! The guest echoes every byte on port `test.echo` back and counts each EOF
//! it reads there in /run/test.echo.eofs (crates/testkit/src/guest-init.sh).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{for_each_backend, Backend, Event, Session, Stack, WAIT};

// Scenarios that run against both agent backends (`qemu::…`, `libvirt::…`).
for_each_backend!(
    sixty_four_mib_of_random_bytes_go_through_the_echo_port_and_back_unchanged,
    a_second_session_is_refused_in_use_and_force_takes_the_port_over,
    eof_from_the_client_reaches_the_guest_and_comes_back_as_eof,
    a_read_only_sessions_input_and_eof_never_reach_the_guest,
    piped_input_gets_its_answer_before_the_cli_sends_eof,
    listen_serves_each_socat_connection_as_its_own_session,
    a_stalled_flooding_channel_does_not_hold_up_the_serial_console,
);
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const ECHO: &str = "test.echo";

/// `vmgate channel ARGS…` against the stack's state directory, with stdin
/// and stdout piped and stderr in `<name>.log`.
fn cli(stack: &Stack, name: &str, args: &[&str]) -> Child {
    let log = std::fs::File::create(stack.dir.path().join(format!("{name}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .arg("channel")
        .args(args)
        .env("VMGATE_STATE_DIR", &stack.state.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawning vmgate channel")
}

/// Waits for `child` to exit (bounded by [`WAIT`]: only a failing test
/// waits that long).
async fn exit_status(child: &mut Child, what: &str, stack: &Stack) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "{what} did not exit; its log:\n{}\nagent log:\n{}",
                stack.log(&format!("{what}.log")),
                stack.log("agent.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the process `pid` if still alive after `after`, unless dropped
/// first: a blocking read of its output then ends, and the test fails on
/// what came instead of hanging. Drop it before reaping the child.
struct KillAfter(tokio::task::JoinHandle<()>);

impl KillAfter {
    fn new(child: &Child, after: Duration) -> KillAfter {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        KillAfter(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("killing pid {pid} after {after:?}: its output never ended");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }))
    }
}

impl Drop for KillAfter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a session on `channel` with a ticket for `ticket_channels`.
async fn open(stack: &Stack, ticket_channels: &[&str], channel: &str, ro: bool) -> Session {
    let t = stack.ticket(&stack.name, ticket_channels, ro);
    let url = format!(
        "wss://{}/ws/{}/{channel}?ticket={}",
        stack.gw_addr, stack.name, t.ticket
    );
    Session::new(stack.connect(&url).await)
}

/// Opens an interactive session on the echo port and checks it echoes. No
/// retry on 4409: a session the client just closed may hold the port for a
/// moment longer, and the agent itself waits that out (its `IN_USE_GRACE`),
/// so an "in use" here is a failure.
async fn open_echo(stack: &Stack) -> Session {
    let mut s = open(stack, &[ECHO], ECHO, false).await;
    // An echoed probe proves the session is up; nothing else is sent.
    s.send(b"?").await;
    match s.next_event(WAIT).await {
        Event::Data(d) => {
            assert_eq!(d, b"?");
            s.output.clear();
            s
        }
        other => panic!("opening {ECHO}: {other:?}"),
    }
}

/// Runs `cmd` in the guest's shell and returns what it printed between
/// `<tag>=` and `=<tag>`.
async fn guest_says(stack: &Stack, cmd: &str, tag: &str) -> String {
    // Unique per call: the serial session replays earlier answers.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let tag = &format!("{tag}{}", CALLS.fetch_add(1, Ordering::Relaxed));
    let mut s = stack.serial().await;
    s.expect_notice("you hold the keyboard").await;
    // The tag is assembled by the shell so the echoed command never matches.
    s.send(format!("echo {tag}\"=\"$({cmd})\"=\"{tag}\n").as_bytes())
        .await;
    let open = format!("{tag}=");
    let start = s.expect_since(0, &open).await;
    let end = s.expect_since(start, &format!("={tag}")).await;
    let text = s.text();
    text[start..end - tag.len() - 1].to_string()
}

/// How many bytes the guest's echo port has received since boot, from
/// virtio_console's debugfs file (counted as data arrives in the guest).
async fn guest_bytes_received(stack: &Stack) -> u64 {
    let v = guest_says(
        stack,
        "grep bytes_received /sys/kernel/debug/virtio-ports/* | cut -d' ' -f2",
        "rx",
    )
    .await;
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bytes_received: {v:?}"))
}

/// Waits until the guest's echo loop has read `n` EOFs on its port.
async fn guest_saw_eofs(stack: &Stack, n: u32) {
    // Waits inside the guest, without forking, until the count is there.
    let cmd = format!(
        "until [ \"$(cat /run/test.echo.eofs 2>/dev/null)\" = {n} ]; do read -t 0.2 _ <>/run/nap; done; cat /run/test.echo.eofs"
    );
    assert_eq!(guest_says(stack, &cmd, "eofs").await.trim(), n.to_string());
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

async fn sixty_four_mib_of_random_bytes_go_through_the_echo_port_and_back_unchanged(
    backend: Backend,
) {
    const SIZE: usize = 64 << 20;
    let stack = Stack::start_backend(backend).await;
    let mut input = vec![0u8; SIZE];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut input)
        .unwrap();
    let input = Arc::new(input);
    let mut child = cli(&stack, "cli", &[&stack.name, ECHO]);
    let watchdog = KillAfter::new(&child, 4 * WAIT);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let input = input.clone();
        std::thread::spawn(move || {
            stdin.write_all(&input).expect("writing to vmgate channel");
            // stdin stays open until everything came back: an EOF now would
            // disconnect the port before the guest echoed the rest
            // (docs/channels.md).
            let _ = done_rx.recv();
            drop(stdin);
        })
    };
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::with_capacity(SIZE);
        let mut buf = vec![0u8; 1 << 16];
        while out.len() < SIZE {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let elapsed = started.elapsed();
        // After stdin's EOF: nothing more, then end of stream.
        let mut rest = Vec::new();
        let _ = done_tx.send(());
        stdout.read_to_end(&mut rest).unwrap();
        (out, rest, elapsed)
    });
    let (out, rest, elapsed) = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    writer.join().unwrap();
    drop(watchdog);
    let status = exit_status(&mut child, "cli", &stack).await;
    assert_eq!(
        out.len(),
        SIZE,
        "short echo; log:\n{}",
        stack.log("cli.log")
    );
    assert_eq!(fnv1a(&out), fnv1a(&input), "checksums differ");
    assert!(out == *input, "bytes differ");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
    assert_eq!(status.code(), Some(0), "log:\n{}", stack.log("cli.log"));
    eprintln!(
        "64 MiB through {ECHO} and back in {:.1}s: {:.2} MiB/s each way (fnv1a {:016x})",
        elapsed.as_secs_f64(),
        64.0 / elapsed.as_secs_f64(),
        fnv1a(&out)
    );
    // The stdin EOF reached the guest as the port's EOF.
    guest_saw_eofs(&stack, 1).await;
}

async fn eof_from_the_client_reaches_the_guest_and_comes_back_as_eof(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let mut s = open(&stack, &[ECHO], ECHO, false).await;
    s.send(b"before-eof").await;
    s.expect("before-eof").await;
    s.send_eof().await;
    // The guest's port reads EOF (QEMU dropped the host connection), and
    // the session's other direction ends with everything the guest sent.
    match s.next_event(WAIT).await {
        Event::Eof => {}
        other => panic!("expected eof right after the echo, got {other:?}"),
    }
    let (code, reason) = s.closed().await;
    assert_eq!(
        code,
        1000,
        "{reason}; agent log:\n{}",
        stack.log("agent.log")
    );
    assert_eq!(s.text(), "before-eof");
    guest_saw_eofs(&stack, 1).await;
    // The port is usable again, and the next EOF is counted too.
    let mut again = open_echo(&stack).await;
    again.send(b"second").await;
    again.expect("second").await;
    again.send_eof().await;
    assert!(matches!(again.next_event(WAIT).await, Event::Eof));
    assert_eq!(again.closed().await.0, 1000);
    guest_saw_eofs(&stack, 2).await;
}

async fn piped_input_gets_its_answer_before_the_cli_sends_eof(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    // stdin ends at once; the CLI lingers until the guest's output has been
    // quiet (generously long here: a loaded TCG guest may take seconds to
    // answer), then sends the EOF, so the echo is not cut off.
    let mut child = cli(&stack, "cli", &[&stack.name, ECHO, "--linger", "5s"]);
    let watchdog = KillAfter::new(&child, WAIT);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"piped request\n").unwrap();
    drop(stdin);
    let mut stdout = child.stdout.take().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    drop(watchdog);
    let status = exit_status(&mut child, "cli", &stack).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "piped request\n",
        "{}",
        stack.log("cli.log")
    );
    assert_eq!(status.code(), Some(0), "{}", stack.log("cli.log"));
    guest_saw_eofs(&stack, 1).await;
}

#[tokio::test]
async fn the_guest_going_away_ends_the_cli_with_status_4_after_its_last_bytes() {
    let stack = Stack::start().await;
    let mut child = cli(&stack, "cli", &["demo", ECHO]);
    let watchdog = KillAfter::new(&child, 2 * WAIT);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"last words\n").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while !out.ends_with(b"last words\n") {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        (out, stdout)
    });
    let (out, mut stdout) = out.await.unwrap();
    assert_eq!(out, b"last words\n");
    // The guest powers itself off: QEMU exits and closes the port's socket.
    let mut serial = stack.serial().await;
    serial.expect_notice("you hold the keyboard").await;
    serial.send(b"poweroff -f\n").await;
    drop(watchdog);
    let status = exit_status(&mut child, "cli", &stack).await;
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let log = stack.log("cli.log");
    assert_eq!(status.code(), Some(4), "log:\n{log}");
    assert!(
        log.contains("QEMU closed channel test.echo of demo"),
        "{log}"
    );
    assert!(log.contains("(4410)"), "{log}");
    drop(stdin);
}

async fn a_second_session_is_refused_in_use_and_force_takes_the_port_over(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let mut a = open_echo(&stack).await;
    let (code, reason) = open(&stack, &[ECHO], ECHO, false).await.closed().await;
    assert_eq!(code, 4409, "{reason}");
    assert!(reason.contains("in use"), "{reason}");
    assert!(reason.contains("--force"), "{reason}");
    // The CLI says so with its own status.
    let mut child = cli(&stack, "second", &[&stack.name, ECHO]);
    let status = exit_status(&mut child, "second", &stack).await;
    let log = stack.log("second.log");
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("in use"), "{log}");
    // The holder was not disturbed.
    a.send(b"still-mine").await;
    a.expect("still-mine").await;
    // --force: the holder is told, the new session has the port.
    let t = stack.ticket(&stack.name, &[ECHO], false);
    let mut b = Session::new(stack.connect(&format!("{}&force=true", t.ws_url)).await);
    let (code, reason) = a.closed().await;
    assert_eq!(code, 4411, "{reason}");
    assert!(reason.contains("took this channel over"), "{reason}");
    b.send(b"now-b").await;
    b.expect("now-b").await;
}

#[tokio::test]
async fn tickets_open_only_their_channel_and_unlisted_ports_are_not_exposed() {
    const HIDDEN: &str = "org.example.hidden";
    let stack = Stack::start_with(
        |boot| boot.channels.push(HIDDEN.into()),
        // The agent is told about the echo port only: the guest's other
        // port must not be reachable, whatever the ticket says.
        |cfg| cfg.channel.retain(|c| c.name == ECHO),
    )
    .await;
    assert!(stack.qemu().channel_socket(HIDDEN).is_some());
    for (ticket, channel) in [
        (ECHO, "serial0"),
        (ECHO, HIDDEN),
        (ECHO, "vnc"),
        ("serial0", ECHO),
        (HIDDEN, ECHO),
    ] {
        let (code, reason) = open(&stack, &[ticket], channel, false).await.closed().await;
        assert_eq!(code, 4403, "ticket for {ticket} on {channel}: {reason}");
        assert!(reason.contains("channel"), "{reason}");
    }
    let (code, reason) = open(&stack, &[HIDDEN], HIDDEN, false).await.closed().await;
    assert_eq!(code, 4405, "{reason}");
    assert!(reason.contains(&format!("no channel {HIDDEN}")), "{reason}");
    // The scoped ticket does open its own channel.
    let mut s = open(&stack, &[ECHO], ECHO, false).await;
    s.send(b"in-scope").await;
    s.expect("in-scope").await;
    let gw_log = stack.log("gateway.log");
    assert!(gw_log.contains("wrong_channel"), "{gw_log}");
}

async fn a_read_only_sessions_input_and_eof_never_reach_the_guest(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let before = guest_bytes_received(&stack).await;
    let mut ro = open(&stack, &[ECHO], ECHO, true).await;
    ro.send(b"read-only-input").await;
    // Even its EOF is dropped: it would disconnect the guest's port.
    ro.send_eof().await;
    ro.send(b"more-read-only-input").await;
    ro.ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
    assert_eq!(ro.closed().await.0, 1000);
    // Ordered after the read-only session: QEMU serves one host connection
    // at a time, so when this echo is back the guest got all before it.
    let mut rw = open_echo(&stack).await;
    rw.send(b"sync").await;
    rw.expect("sync").await;
    assert_eq!(rw.text(), "sync", "the read-only input came back");
    let after = guest_bytes_received(&stack).await;
    // Only the probe ("?") of open_echo_when_free and "sync".
    assert_eq!(after - before, 5, "the guest received read-only input");
    let agent_log = stack.log("agent.log");
    assert!(agent_log.contains("input dropped"), "{agent_log}");
}

/// Under libvirt the agent connects to the channel's socket itself (the
/// default `channel_via = "socket"`), so a client that does not read holds
/// the guest back exactly as under the qemu backend.
async fn a_stalled_flooding_channel_does_not_hold_up_the_serial_console(backend: Backend) {
    const MSG: usize = 64 << 10;
    /// Far above what the socket, QUIC, TLS and guest buffers hold.
    const FLOOD_BOUND: u64 = 256 << 20;
    let stack = Stack::start_backend(backend).await;
    let rss_before = rss_kib(stack.agent_pid());
    let flood = open_echo(&stack).await;
    let (mut sink, mut stream) = futures_util::StreamExt::split(flood.ws);
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pattern = |i: u64| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    // Sends without end and never reads: the echo fills every buffer back
    // to the guest, then the sends block too.
    let writer = {
        let (sent, stop) = (sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut at = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let chunk: Vec<u8> = (at..at + MSG as u64).map(pattern).collect();
                sink.send(Message::binary(chunk)).await.unwrap();
                at += MSG as u64;
                sent.store(at, Ordering::Relaxed);
            }
            // No EOF: it would disconnect the port while the guest still
            // echoes (docs/channels.md).
            at
        })
    };
    // Backpressure holds the flood: within WAIT its sends stop making
    // progress (none for 3 s: a busy guest may pause its echo for a
    // moment), well before a bound no buffering along the path comes
    // near. Without backpressure they never stop.
    let flooding = Instant::now();
    let (mut last, mut since) = (u64::MAX, Instant::now());
    while since.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = sent.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        }
        assert!(
            now < FLOOD_BOUND && flooding.elapsed() < WAIT,
            "the flood was never held back: {} MiB sent in {:?}",
            now >> 20,
            flooding.elapsed()
        );
    }
    let stalled_at = sent.load(Ordering::Relaxed);
    // What the agent holds now, while the flood is held back.
    let rss_stalled = rss_kib(stack.agent_pid());
    // The serial console of the same guest, over the same gateway–agent
    // QUIC connection, completes its exchange ...
    let mut serial = stack.serial().await;
    serial.expect_notice("you hold the keyboard").await;
    serial.send(b"echo independent-$((20+22))\n").await;
    serial.expect("independent-42").await;
    // ... while the flood stays held back: not one more message went out.
    assert_eq!(
        sent.load(Ordering::Relaxed),
        stalled_at,
        "the stalled flood moved on while the console ran"
    );
    assert_eq!(
        stack.log("agent.log").matches("gateway connected").count(),
        1,
        "one QUIC connection between gateway and agent"
    );
    // Now read the flood: every byte comes back, in order.
    stop.store(true, Ordering::Relaxed);
    let mut got = 0u64;
    let mut total = None;
    tokio::pin!(writer);
    while total != Some(got) {
        tokio::select! {
            t = &mut writer, if total.is_none() => total = Some(t.unwrap()),
            m = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream)) => match m {
                Err(_) => panic!("the flood stopped coming back after {got} bytes"),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    for (k, &byte) in b.iter().enumerate() {
                        assert_eq!(byte, pattern(got + k as u64), "byte {}", got + k as u64);
                    }
                    got += b.len() as u64;
                }
                Ok(other) => panic!("flood session: {other:?} after {got} bytes"),
            },
        }
    }
    assert!(got >= stalled_at);
    let grew = rss_stalled
        .max(rss_kib(stack.agent_pid()))
        .saturating_sub(rss_before);
    eprintln!(
        "flood stalled after {:.1} MiB sent without reading; agent RSS grew {grew} KiB",
        stalled_at as f64 / (1 << 20) as f64
    );
    // Backpressure, not buffering: the agent did not keep the flood.
    assert!(
        grew < 32 << 10,
        "the agent grew by {grew} KiB holding a stalled flood"
    );
    if backend == Backend::Libvirt {
        let log = stack.log("agent.log");
        assert!(log.contains("channel opened on its socket"), "{log}");
    }
}

/// The agent's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// `channel_via = "stream"` (what a remote libvirt URI gets):
/// `virDomainOpenChannel` works both ways, and since a libvirt stream
/// cannot hold the guest back, a client that stops reading has its session
/// ended with the reason once the agent's bounded backlog is full, instead
/// of the agent's memory growing without end; other sessions go on.
#[tokio::test]
async fn through_a_libvirt_stream_a_reader_that_stalls_is_ended_with_a_reason_not_buffered() {
    const MSG: usize = 64 << 10;
    let stack = Stack::start_libvirt_with(|l| {
        l.channel_via = vmgate_agent::config::ChannelVia::Stream;
    })
    .await;
    let mut echo = open_echo(&stack).await;
    echo.send(b"through-the-stream").await;
    echo.expect("through-the-stream").await;
    let log = stack.log("agent.log");
    assert!(
        log.contains("channel opened through virDomainOpenChannel"),
        "{log}"
    );
    drop(echo);

    let rss_before = rss_kib(stack.agent_pid());
    let flood = open_echo(&stack).await;
    let (mut sink, mut stream) = futures_util::StreamExt::split(flood.ws);
    let writer = tokio::spawn(async move {
        let mut at = 0u64;
        loop {
            let chunk = vec![(at >> 16) as u8; MSG];
            if sink.send(Message::binary(chunk)).await.is_err() {
                return at;
            }
            at += MSG as u64;
        }
    });
    // Nothing is read until the agent gave up on the session ...
    stack
        .wait_log(
            "agent.log",
            Duration::from_secs(120),
            "end of the stalled stream",
            |l| l.contains("the reader fell too far behind a libvirt stream"),
        )
        .await;
    let grew = rss_kib(stack.agent_pid()).saturating_sub(rss_before);
    // ... then what got through, and the close frame with the reason.
    let (code, reason) = loop {
        let m = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
            .await
            .expect("the stalled session's close frame in time");
        match m {
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("flood session ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, 4503, "{reason}");
    assert!(reason.contains("client fell over 8 MiB behind"), "{reason}");
    let sent = writer.await.unwrap();
    eprintln!(
        "stream session ended after {:.1} MiB sent; agent RSS grew {grew} KiB",
        sent as f64 / (1 << 20) as f64
    );
    // The backlog's bound, not the flood, is what the agent held.
    assert!(grew < 64 << 10, "the agent grew by {grew} KiB");
    // The guest and the channel are fine: the console answers and a new
    // session on the channel echoes.
    let mut serial = stack.serial().await;
    serial.send(b"echo after-$((6*7))\n").await;
    serial.expect("after-42").await;
    // (It may first get what the guest still held of the flood.)
    let mut again = open(&stack, &[ECHO], ECHO, false).await;
    again.send(b"again-after-the-flood").await;
    again.expect("again-after-the-flood").await;
}

async fn listen_serves_each_socat_connection_as_its_own_session(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let sock: PathBuf = stack.dir.path().join("echo.sock");
    let mut fwd = cli(
        &stack,
        "listen",
        &[
            &stack.name,
            ECHO,
            "--listen",
            &format!("unix:{}", sock.display()),
        ],
    );
    wait_for_socket(&sock, &stack).await;
    // The socket is the channel: only this user may connect.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    for round in 1..=2 {
        let line = format!("hello from socat {round}\n");
        let (status, out) = socat_round(&format!("UNIX-CONNECT:{}", sock.display()), &line).await;
        assert_eq!(
            String::from_utf8_lossy(&out),
            line,
            "round {round}; forwarder log:\n{}",
            stack.log("listen.log")
        );
        assert!(status.success(), "socat: {status}");
        guest_saw_eofs(&stack, round).await;
    }
    let log = stack.log("listen.log");
    assert!(
        log.contains("[conn 1]") && log.contains("[conn 2]"),
        "{log}"
    );
    assert!(log.contains("session ended"), "{log}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fwd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = exit_status(&mut fwd, "listen", &stack).await;
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "socket left behind");

    // The same over TCP, on a port the forwarder picks and reports.
    let mut fwd = cli(
        &stack,
        "listen-tcp",
        &[&stack.name, ECHO, "--listen", "tcp:127.0.0.1:0"],
    );
    let deadline = Instant::now() + WAIT;
    let addr = loop {
        let log = stack.log("listen-tcp.log");
        if let Some(rest) = log.split("on tcp:").nth(1) {
            if let Some(addr) = rest.split(':').take(2).collect::<Vec<_>>().get(..2) {
                break format!("{}:{}", addr[0], addr[1]);
            }
        }
        assert!(Instant::now() < deadline, "no tcp listener; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let line = "hello over tcp\n";
    let (status, out) = socat_round(&format!("TCP:{addr}"), line).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        line,
        "{}",
        stack.log("listen-tcp.log")
    );
    assert!(status.success(), "socat: {status}");
    guest_saw_eofs(&stack, 3).await;
    fwd.kill().unwrap();
    fwd.wait().unwrap();
}

async fn wait_for_socket(path: &Path, stack: &Stack) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no socket; log:\n{}",
            stack.log("listen.log")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One unmodified `socat - ADDRESS`: writes `line`, reads the echo,
/// then closes its stdin; socat half-closes the socket and exits when the
/// forwarder passes the guest's EOF back. One attempt: a round right after
/// the previous one gets the port (the agent waits out the previous
/// session's last moments).
async fn socat_round(address: &str, line: &str) -> (ExitStatus, Vec<u8>) {
    let mut socat = Command::new("socat")
        .arg("-")
        .arg(address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("socat (apt install socat)");
    let watchdog = KillAfter::new(&socat, WAIT);
    let stdin: ChildStdin = socat.stdin.take().unwrap();
    let mut stdout = socat.stdout.take().unwrap();
    let line = line.to_string();
    let (out, stdin) = tokio::task::spawn_blocking(move || {
        let mut stdin = stdin;
        stdin.write_all(line.as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while out.len() < line.len() {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        (out, stdin)
    })
    .await
    .unwrap();
    drop(stdin);
    // socat exits once the guest's EOF is back: bounded too, then reaped.
    let status = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(st) = socat.try_wait().unwrap() {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(watchdog);
    let status = status.unwrap_or_else(|_| {
        let _ = socat.kill();
        socat.wait().unwrap()
    });
    (status, out)
}
