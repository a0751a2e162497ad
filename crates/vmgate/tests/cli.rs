//! `vmgate console` under a real pseudo-terminal: raw mode while attached,
//! the terminal restored on detach and on remote close.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Stack, WAIT};
use nix::pty::openpty;
use nix::sys::termios::{tcgetattr, LocalFlags};

/// A `vmgate console` child on a pty, with everything it printed.
struct PtyConsole {
    child: Child,
    master: std::fs::File,
    slave: OwnedFd,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl PtyConsole {
    fn spawn(args: &[&str]) -> PtyConsole {
        let pty = openpty(None, None).expect("openpty");
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child = Command::new(env!("CARGO_BIN_EXE_vmgate"))
            .args(args)
            .stdin(stdio(&pty.slave))
            .stdout(stdio(&pty.slave))
            .stderr(stdio(&pty.slave))
            .spawn()
            .expect("spawning vmgate console");
        let master = std::fs::File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every slave fd is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        PtyConsole {
            child,
            master,
            slave: pty.slave,
            seen,
        }
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the terminal:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn canonical(&self) -> bool {
        let t = tcgetattr(self.slave.as_fd()).expect("tcgetattr");
        t.local_flags.contains(LocalFlags::ICANON) && t.local_flags.contains(LocalFlags::ECHO)
    }

    fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited normally");
            }
            assert!(Instant::now() < deadline, "vmgate console did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PtyConsole {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_terminal_is_raw_while_attached_and_restored_on_detach() {
    let stack = Stack::start().await;
    let state = stack.state.dir.to_str().unwrap().to_string();
    let mut con = PtyConsole::spawn(&["console", "demo", "--state-dir", &state]);
    assert!(con.canonical(), "a fresh pty starts canonical");
    con.wait_for("you hold the keyboard");
    assert!(!con.canonical(), "raw mode while attached");
    con.master.write_all(b"echo pty-$((6*7))\r").unwrap();
    con.wait_for("pty-42");
    con.master.write_all(&[0x1d]).unwrap(); // Ctrl+]
    assert_eq!(con.exit_code(), 0);
    con.wait_for("detached");
    assert!(con.canonical(), "terminal restored after detach");
}

#[tokio::test]
async fn the_terminal_is_restored_when_the_gateway_closes_the_session() {
    let stack = Stack::start().await;
    let state = stack.state.dir.to_str().unwrap().to_string();
    let t = stack.ticket_with(
        "demo",
        &["serial0"],
        false,
        Duration::from_secs(60),
        Some(Duration::from_secs(2)),
    );
    let mut con = PtyConsole::spawn(&["console", "--url", &t.url, "--state-dir", &state]);
    con.wait_for("you hold the keyboard");
    assert!(!con.canonical(), "raw mode while attached");
    // The ticket's 2 s maximum session length ends it from the gateway's
    // side: "ended by someone else" in the client commands' one table.
    assert_eq!(con.exit_code(), 5);
    con.wait_for("maximum session length");
    assert!(con.canonical(), "terminal restored after a remote close");
}

#[tokio::test]
async fn piped_input_runs_and_the_client_leaves_when_output_settles() {
    let stack = Stack::start().await;
    let state = stack.state.dir.to_str().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(["console", "demo", "--state-dir", &state])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo piped-$((3*3))\n")
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("piped-9"));
}

/// The guest's output cannot set the operator's terminal title or
/// clipboard, and text that looks like a vmgate notice stays guest output:
/// on stdout, among the guest's bytes, while real notices come on stderr.
#[tokio::test]
async fn guest_output_cannot_set_the_title_or_clipboard_nor_pass_for_a_notice() {
    let stack = Stack::start().await;
    let state = stack.state.dir.to_str().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(["console", "demo", "--state-dir", &state])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // printf substitutes %s, so "fake-42" appears only in what the guest
    // printed, not in the shell's echo of the command.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"printf '\\033]0;pwned-%s\\007\\033]52;c;cHduZWQ=\\007[vmgate] keyboard taken over by fake-%s\\n' 7 42\n",
        )
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("[vmgate] keyboard taken over by fake-42"),
        "the guest's line is guest output: {stdout:?}"
    );
    assert!(!stderr.contains("fake-42"), "{stderr:?}");
    assert!(stderr.contains("you hold the keyboard"), "{stderr:?}");
    assert!(
        !stdout.contains("\u{1b}]"),
        "an OSC reached the terminal: {stdout:?}"
    );
    assert!(!stdout.contains("pwned-7"), "{stdout:?}");
}

/// `vmgate vnc` listens on a unix socket only this user can open (0600 from
/// the moment it exists), and a viewer's RFB handshake goes through it; a
/// TCP port, which every local user reaches, is refused without
/// `--insecure-tcp`.
#[tokio::test]
async fn vnc_listens_on_a_private_unix_socket_and_tcp_needs_insecure_tcp() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    let state = stack.state.dir.to_str().unwrap().to_string();

    let refused = Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args([
            "vnc",
            "demo",
            "--listen",
            "tcp:127.0.0.1:0",
            "--state-dir",
            &state,
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--insecure-tcp"), "{err}");

    let socket = stack.dir.path().join("vnc.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(["vnc", "demo", "--state-dir", &state, "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    });
    let first = tokio::time::timeout(WAIT, first)
        .await
        .expect("vmgate vnc prints its socket")
        .unwrap()
        .unwrap();
    assert_eq!(first.trim(), format!("unix:{}", socket.display()));
    let mode = std::fs::symlink_metadata(&socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let mut viewer = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut version = [0u8; 12];
    tokio::time::timeout(WAIT, viewer.read_exact(&mut version))
        .await
        .expect("the guest's VNC server greets the viewer")
        .unwrap();
    assert_eq!(&version, b"RFB 003.008\n");
    viewer.write_all(b"RFB 003.008\n").await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

/// Log files get plain lines, never colour codes (they are not terminals);
/// `--log-format json` gives one JSON object per line, which a log shipper
/// parses, fields included.
#[tokio::test]
async fn logs_are_plain_in_files_and_json_lines_on_request() {
    let stack = Stack::start().await;
    for name in ["gateway.log", "agent.log"] {
        let log = stack.log(name);
        assert!(log.lines().count() > 2, "{name}:\n{log}");
        assert!(!log.contains('\x1b'), "{name} has escape codes:\n{log}");
    }
    // A second gateway on the stack's configuration, on a port of its own.
    let mut cfg = stack.gw_cfg.clone();
    cfg.listen = common::any_port();
    cfg.admin = None;
    cfg.limits.ticket_clock_skew_secs = 0;
    // Its own embedded store: the first gateway holds the stack's file.
    cfg.store.path = Some(stack.dir.path().join("json-gateway.redb"));
    let toml = stack.dir.path().join("json-gateway.toml");
    vmgate::state::write_toml(&toml, &cfg).unwrap();
    let path = stack.dir.path().join("json-gateway.log");
    let log = std::fs::File::create(&path).unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_vmgate"))
            .args(["--log-format", "json", "gateway", "--config"])
            .arg(&toml)
            .env("VMGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + WAIT;
    let listening = loop {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Some(l) = text.lines().find(|l| l.contains("gateway listening")) {
            break l.to_string();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "gateway exited:\n{text}"
        );
        assert!(Instant::now() < deadline, "no listening line:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // A session through this gateway: once it knows the agent's guests,
    // with a ticket minted after it started.
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&path)
        .unwrap()
        .contains("inventory")
    {
        assert!(Instant::now() < deadline, "no inventory within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr: std::net::SocketAddr = {
        let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
        v["fields"]["addr"].as_str().unwrap().parse().unwrap()
    };
    // Tickets count only from the second after the process started (its
    // clock-skew margin is 0 here): a computed wait, not a poll.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(now.as_secs() + 1) - now).await;
    let t = stack.ticket(&stack.name, &["serial0"], true);
    let url = format!("wss://{addr}/ws/{}/serial0?ticket={}", stack.name, t.ticket);
    let mut s = common::Session::new(stack.connect(&url).await);
    match s.next_event(WAIT).await {
        common::Event::Data(_) => {}
        other => panic!("the session through the JSON gateway: {other:?}"),
    }
    drop(s);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&path).unwrap();
    // Each line of the session carries the session's span: id, guest, channel.
    let session_lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["span"]["name"] == "session")
        .collect();
    assert!(
        !session_lines.is_empty(),
        "no line in a session span:\n{text}"
    );
    for v in &session_lines {
        assert_eq!(v["span"]["guest"], stack.name.as_str(), "{v}");
        assert_eq!(v["span"]["channel"], "serial0", "{v}");
        assert!(
            v["span"]["id"].is_number() || v["span"]["id"].is_string(),
            "{v}"
        );
    }
    // The agent's lines of a session carry its span too.
    let agent = stack.log("agent.log");
    assert!(
        agent.lines().any(|l| l.contains("session{id=")
            && l.contains("channel=serial0")
            && l.contains("session opened")),
        "{agent}"
    );
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let addr: std::net::SocketAddr = v["fields"]["addr"]
        .as_str()
        .expect("the address is a field")
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "{listening}");
}

/// `--check` on each service's configuration: the demo's files pass, and
/// each broken one exits 1 with a line naming the key at fault.
#[test]
fn check_passes_good_configurations_and_names_the_key_of_each_problem() {
    use std::os::unix::fs::PermissionsExt;
    use vmgate::state::{write_toml, State};
    let dir = tempfile::tempdir().unwrap();
    let state = State::new(dir.path());
    state.init().unwrap();
    state.init_admin().unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut agent = state.agent_config(any, Vec::new());
    let mut gateway = state.gateway_config(any, &[any]);
    gateway.admin = Some(state.gateway_admin_config(any));
    let minter = state.minter_config(any, "https://127.0.0.1:8443");
    let check = |cmd: &str, cfg: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_vmgate"))
            .args([cmd, "--check", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let files = [
        ("agent", dir.path().join("a.toml")),
        ("gateway", dir.path().join("g.toml")),
        ("admin", dir.path().join("m.toml")),
    ];
    write_toml(&files[0].1, &agent).unwrap();
    write_toml(&files[1].1, &gateway).unwrap();
    write_toml(&files[2].1, &minter).unwrap();
    for (cmd, file) in &files {
        let (code, out, err) = check(cmd, file);
        assert_eq!(code, 0, "{cmd}: {err}");
        assert_eq!(out.trim(), format!("{}: ok", file.display()), "{cmd}");
    }

    // The agent trusting the CA that signed it (one CA for both sides).
    agent.tls.gateway_ca = state.path("agent-ca.pem");
    write_toml(&files[0].1, &agent).unwrap();
    let (code, _, err) = check("agent", &files[0].1);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(": tls.gateway_ca: "), "{err}");

    // The gateway: a public key others can read, a server certificate
    // where the agents want a client one.
    let public_key = state.path("gateway-public.key");
    std::fs::set_permissions(&public_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    gateway.agents.cert = state.path("gateway-public.pem");
    gateway.agents.key = state.path("admin-server.key");
    write_toml(&files[1].1, &gateway).unwrap();
    let (code, _, err) = check("gateway", &files[1].1);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(": tls.key: ") && err.contains("mode 644"),
        "{err}"
    );
    assert!(
        err.contains(": agents.cert: ") && err.contains("clientAuth"),
        "{err}"
    );
    assert!(
        err.contains(": agents.key: ") && err.contains("is not the key"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 3, "one line per problem: {err}");

    // The minter: a signing key others can read.
    let signing = state.signing_key();
    std::fs::set_permissions(&signing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = check("admin", &files[2].1);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(": ticket_signing_key: "), "{err}");
}

/// Under a `Type=notify` unit the services say when they are ready and when
/// they stop: `READY=1` once bound, `STOPPING=1` on SIGTERM (here for `vmgate
/// admin`, which needs no guest; the agent and gateway make the same calls).
#[test]
fn services_notify_systemd_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use vmgate::state::{write_toml, State};
    let dir = tempfile::tempdir().unwrap();
    let state = State::new(dir.path());
    state.init().unwrap();
    state.init_admin().unwrap();
    let toml = dir.path().join("admin.toml");
    write_toml(
        &toml,
        &state.minter_config("127.0.0.1:0".parse().unwrap(), "https://127.0.0.1:1"),
    )
    .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(["admin", "--config"])
        .arg(&toml)
        .env("NOTIFY_SOCKET", &sock_path)
        // A 1 s watchdog: pinged every half second.
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within the deadline");
    assert_eq!(&buf[..n], b"READY=1\n");
    // Watchdog pings: three within 2 s (one at once, then every 0.5 s).
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        let n = sock.recv(&mut buf).expect("a watchdog ping within 2 s");
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // Pings may still arrive before it.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = sock
            .recv(&mut buf)
            .expect("STOPPING=1 within 2 s of SIGTERM");
        if &buf[..n] == b"STOPPING=1\n" {
            break;
        }
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
        assert!(Instant::now() < deadline, "no STOPPING=1 within 2 s");
    }
    assert!(child.wait().unwrap().success());
}

/// A child process killed when the test ends, failing or not.
struct KillOnDrop(Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
