//! The serial console end to end: QEMU → agent → QUIC → gateway →
//! WebSocket, with a real guest, real TLS and real QUIC. Each scenario runs
//! against both agent backends (`qemu::…` and `libvirt::…`).

mod common;

use std::time::Duration;

use common::{for_each_backend, Backend, Event, Session, Stack, WAIT};

for_each_backend!(
    a_typed_command_runs_in_the_guest_and_its_output_comes_back,
    output_printed_while_nobody_is_attached_is_replayed_and_logged,
    one_keyboard_many_watchers_and_force_takes_over,
    each_bad_ticket_is_refused_with_its_own_reason_and_others_are_untouched,
    unknown_guest_and_unknown_channel_are_refused_clearly,
    a_dead_agent_closes_its_sessions_and_the_gateway_reconnects,
    a_session_ends_when_the_ticket_max_session_length_passes,
);

async fn a_typed_command_runs_in_the_guest_and_its_output_comes_back(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let mut s = stack.serial().await;
    s.expect_notice("you hold the keyboard").await;
    s.send(b"echo typed-$((6*7))\n").await;
    s.expect("typed-42").await;
}

async fn output_printed_while_nobody_is_attached_is_replayed_and_logged(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let mut a = stack.serial().await;
    a.send(b"(sleep 2; echo detached-$((5+5))) &\n").await;
    a.expect("echo detached").await;
    drop(a);
    // Nobody is attached when the guest prints it; the agent's log gets it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !stack.console_log().contains("detached-10") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "log never got the output; log:\n{}\nagent log:\n{}",
            stack.console_log(),
            stack.log("agent.log")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The next session starts with the scrollback, which has it too.
    let t = stack.ticket(&stack.name, &["serial0"], true);
    let mut b = Session::new(stack.connect(&t.ws_url).await);
    match b.next_event(WAIT).await {
        Event::Data(d) => assert!(
            String::from_utf8_lossy(&d).contains("detached-10"),
            "first data is the scrollback"
        ),
        other => panic!("expected the scrollback first, got {other:?}"),
    }
}

async fn one_keyboard_many_watchers_and_force_takes_over(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let mut a = stack.serial().await;
    a.expect_notice("you hold the keyboard").await;
    let mut b = stack.serial().await;
    b.expect_notice("another session holds the keyboard").await;
    let ro = stack.ticket(&stack.name, &["serial0"], true);
    let mut c = Session::new(stack.connect(&ro.ws_url).await);
    c.expect_notice("read-only").await;

    // The writer's command reaches the guest; everybody sees the output.
    a.send(b"echo from-a-$((1+1))\n").await;
    for s in [&mut a, &mut b, &mut c] {
        s.expect("from-a-2").await;
    }
    // The others' keystrokes never do.
    b.send(b"echo from-b-$((2+1))\n").await;
    b.expect_notice("input dropped").await;
    c.send(b"echo from-c-$((3+1))\n").await;
    a.send(b"echo marker-$((4+1))\n").await;
    for s in [&mut a, &mut b, &mut c] {
        s.expect("marker-5").await;
        assert!(!s.text().contains("from-b-3"), "non-writer input ran");
        assert!(!s.text().contains("from-c-4"), "read-only input ran");
    }

    // --force takes the keyboard; the old writer is told and loses it.
    let t = stack.ticket(&stack.name, &["serial0"], false);
    let mut d = Session::new(stack.connect(&format!("{}&force=true", t.ws_url)).await);
    d.expect_notice("took the keyboard over").await;
    a.expect_notice("keyboard taken over").await;
    d.send(b"echo from-d-$((5+1))\n").await;
    d.expect("from-d-6").await;
    a.send(b"echo from-a-again-$((6+1))\n").await;
    d.send(b"echo marker2-$((7+1))\n").await;
    d.expect("marker2-8").await;
    a.expect("marker2-8").await;
    assert!(
        !d.text().contains("from-a-again-7"),
        "old writer still typed"
    );
}

async fn each_bad_ticket_is_refused_with_its_own_reason_and_others_are_untouched(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let mut live = stack.serial().await;
    live.expect_notice("you hold the keyboard").await;
    let base = format!("wss://{}", stack.gw_addr);

    let refusal = |url: String| {
        let stack = &stack;
        async move { Session::new(stack.connect(&url).await).closed().await }
    };

    let expired = stack.ticket_with(&stack.name, &["serial0"], false, Duration::ZERO, None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, reason) = refusal(expired.ws_url).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("expired"), "{reason}");

    let once = stack.ticket(&stack.name, &["serial0"], true);
    let mut first = Session::new(stack.connect(&once.ws_url).await);
    first.expect_notice("read-only").await;
    let (code, reason) = refusal(once.ws_url.clone()).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("already used"), "{reason}");

    let other_guest = stack.ticket("other", &["serial0"], false);
    let (code, reason) = refusal(format!(
        "{base}/ws/{}/serial0?ticket={}",
        stack.name, other_guest.ticket
    ))
    .await;
    assert_eq!(code, 4403);
    assert!(reason.contains("another guest"), "{reason}");

    let other_channel = stack.ticket(&stack.name, &["test.echo"], false);
    let (code, reason) = refusal(format!(
        "{base}/ws/{}/serial0?ticket={}",
        stack.name, other_channel.ticket
    ))
    .await;
    assert_eq!(code, 4403);
    assert!(reason.contains("channel"), "{reason}");

    let foreign = vmgate_minter::SigningKey::generate();
    let claims = vmgate_ticket::Claims::new(
        stack.name.as_str(),
        ["serial0"],
        vmgate_ticket::Mode::Interactive,
        vmgate::tickets::now(),
        60,
        None,
    );
    let foreign_ticket = vmgate_minter::sign(&foreign, &claims);
    let (code, reason) = refusal(format!(
        "{base}/ws/{}/serial0?ticket={foreign_ticket}",
        stack.name
    ))
    .await;
    assert_eq!(code, 4401);
    let foreign_kid = foreign.verifying_key().id();
    assert!(
        reason.contains(&foreign_kid) && reason.contains("does not accept"),
        "{reason}"
    );
    // The same ticket claiming the gateway's key: the signature fails.
    let ours = vmgate_minter::SigningKey::load(stack.state.signing_key())
        .unwrap()
        .verifying_key()
        .id();
    let forged = foreign_ticket.replace(&foreign_kid, &ours);
    let (code, reason) = refusal(format!("{base}/ws/{}/serial0?ticket={forged}", stack.name)).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("signature invalid"), "{reason}");

    let (code, reason) = refusal(format!("{base}/ws/{}/serial0?ticket=garbage", stack.name)).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("malformed"), "{reason}");

    let (code, reason) = refusal(format!("{base}/ws/{}/serial0", stack.name)).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("missing ticket"), "{reason}");

    // The session that was open all along still works.
    live.send(b"echo still-alive-$((8*8))\n").await;
    live.expect("still-alive-64").await;
    let gw_log = stack.log("gateway.log");
    for reason in [
        "expired",
        "replayed",
        "wrong_guest",
        "wrong_channel",
        "bad_signature",
        "unknown_key",
        "malformed",
    ] {
        assert!(
            gw_log.contains(reason),
            "refusal {reason} not logged:\n{gw_log}"
        );
    }
}

async fn unknown_guest_and_unknown_channel_are_refused_clearly(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let t = stack.ticket("nosuchguest", &["serial0"], false);
    let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    assert_eq!(code, 4404);
    assert!(reason.contains("unknown guest nosuchguest"), "{reason}");
    let t = stack.ticket(&stack.name, &["serial9"], false);
    let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    assert_eq!(code, 4405);
    assert!(reason.contains("no channel serial9"), "{reason}");
}

async fn a_dead_agent_closes_its_sessions_and_the_gateway_reconnects(backend: Backend) {
    let mut stack = Stack::start_backend(backend).await;
    let mut s = stack.serial().await;
    s.expect_notice("you hold the keyboard").await;
    stack.kill_agent();
    let (code, reason) = s.closed().await;
    assert_eq!(code, 4502, "{reason}");
    assert!(reason.contains("agent"), "{reason}");
    // While the agent is away, new sessions get a clear refusal.
    let t = stack.ticket(&stack.name, &["serial0"], false);
    let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    assert!(code == 4404 || code == 4502, "{code} {reason}");
    // Back again: the same gateway routes new sessions without a restart.
    stack.start_agent();
    stack.wait_routable().await;
    let mut s = stack.serial().await;
    s.send(b"echo back-$((9+9))\n").await;
    s.expect("back-18").await;
}

#[tokio::test]
async fn the_agent_reconnects_to_a_restarted_qemu_by_itself() {
    let mut stack = Stack::start().await;
    let mut s = stack.serial().await;
    s.expect_notice("you hold the keyboard").await;
    let before = s.output.len();
    stack.qemu_guest().restart().expect("restarting QEMU");
    // The attached session is told, stays attached, and sees the new boot.
    s.expect_notice("disconnected").await;
    s.expect_booted(before).await;
    s.send(b"echo reborn-$((10+1))\n").await;
    s.expect("reborn-11").await;
    assert!(stack.log("agent.log").contains("serial console connected"));
}

async fn a_session_ends_when_the_ticket_max_session_length_passes(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let t = stack.ticket_with(
        &stack.name,
        &["serial0"],
        false,
        Duration::from_secs(60),
        Some(Duration::from_secs(2)),
    );
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    s.expect_notice("keyboard").await;
    let (code, reason) = s.closed().await;
    assert_eq!(code, 4408);
    assert!(reason.contains("maximum session length"), "{reason}");
}

/// Reads until `needle` appears at or after byte `from`, looking at each
/// byte once (a flood is megabytes); fails after [`WAIT`].
async fn until(s: &mut Session, from: usize, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut checked = from;
    loop {
        let hay = &s.output[checked.saturating_sub(needle.len()).max(from)..];
        if hay.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return;
        }
        checked = s.output.len();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.next_event(left).await {
            Event::Timeout | Event::Closed(..) => panic!(
                "no {needle:?} after byte {from} within {WAIT:?} ({} bytes read); notices: {:?}",
                s.output.len(),
                s.notices
            ),
            _ => {}
        }
    }
}

/// Hole 5: a guest that floods its serial console cannot fill the node's
/// disk, and the flood holds nothing up. Under a 64 KiB × 2 cap the log
/// rotates, no file passes the cap, the files are 0640 in a directory the
/// agent created 0750, an interactive round trip on the flooded console
/// stays quick, and SIGHUP makes the agent reopen a log an external
/// rotator moved away.
#[tokio::test]
async fn a_guest_flooding_its_console_stays_within_the_log_cap_and_nothing_stalls() {
    use std::os::unix::fs::PermissionsExt;
    const CAP: u64 = 64 * 1024;
    let logs = std::sync::Arc::new(std::sync::OnceLock::new());
    let set = logs.clone();
    let stack = Stack::start_full(
        Backend::Qemu,
        true,
        |_| {},
        move |cfg| {
            cfg.log_dir = cfg.log_dir.with_file_name("capped-logs");
            cfg.console_log = vmgate_agent::config::ConsoleLogConfig {
                max_bytes: CAP,
                keep: 1,
            };
            set.set(cfg.log_dir.clone()).unwrap();
        },
        |_, _| {},
    )
    .await;
    let dir = logs.get().unwrap().clone();
    let current = dir.join("demo.serial0.log");
    let rotated = dir.join("demo.serial0.log.1");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o750);

    let mut s = stack.serial().await;
    s.expect_notice("you hold the keyboard").await;
    let start = s.output.len();
    let flood_began = tokio::time::Instant::now();
    s.send(b"timeout 8 yes vmgate-flood-0123456789abcdefghijklmnopqrstuvwxyz &\n")
        .await;
    until(
        &mut s,
        start,
        "-0123456789abcdefghijklmnopqrstuvwxyz\r\nvmgate-flood",
    )
    .await;
    // Round trips on the console the guest is flooding.
    let mut worst = Duration::ZERO;
    for i in 0..3u32 {
        let from = s.output.len();
        let sent = tokio::time::Instant::now();
        s.send(format!("echo rt-{i}-$((6*7))\n").as_bytes()).await;
        until(&mut s, from, &format!("rt-{i}-42")).await;
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during = s.output.len() - start;
    eprintln!("round trips during the flood: worst {worst:?}; {during} bytes of output so far");
    // Measured 60-230 ms during the flood on a loaded 2-core host.
    assert!(
        worst < Duration::from_secs(3),
        "a round trip took {worst:?} during the flood"
    );
    let from = s.output.len();
    s.send(b"wait; echo flood-done-$((1+1))\n").await;
    until(&mut s, from, "flood-done-2").await;
    let flooded = s.output.len() - start;
    eprintln!(
        "{flooded} bytes in {:?}; skipped: {:?}",
        flood_began.elapsed(),
        s.notices
            .iter()
            .filter(|n| n.contains("fell behind"))
            .collect::<Vec<_>>()
    );
    eprintln!("the guest printed {flooded} bytes");
    assert!(
        flooded as u64 > 3 * CAP,
        "the flood printed only {flooded} bytes: too little to need rotation"
    );

    // The log has the end of it, and no file passed the cap.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&std::fs::read(&current).unwrap_or_default())
        .contains("flood-done-2")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never got the end of the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sizes: Vec<u64> = [&current, &rotated]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect();
    eprintln!("log files: {sizes:?} bytes");
    assert!(sizes.iter().all(|&n| n <= CAP), "{sizes:?}");
    assert_eq!(sizes[1], CAP, "the rotated file is a full one");
    assert!(
        !dir.join("demo.serial0.log.2").exists(),
        "more than keep = 1"
    );
    assert_eq!((mode(&current), mode(&rotated)), (0o640, 0o640));

    // An external rotator moves the file away and sends SIGHUP.
    let moved = dir.join("moved.log");
    std::fs::rename(&current, &moved).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stack.agent_pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    stack
        .wait_log("agent.log", WAIT, "the writer's reopen", |l| {
            l.contains("reopening the console log") && l.contains("demo.serial0.log")
        })
        .await;
    s.send(b"echo after-hup-$((2+2))\n").await;
    s.expect("after-hup-4").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&std::fs::read(&current).unwrap_or_default())
        .contains("after-hup-4")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reopened log never got new output"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!String::from_utf8_lossy(&std::fs::read(&moved).unwrap()).contains("after-hup-4"));
    assert_eq!(mode(&current), 0o640);
    let agent = stack.log("agent.log");
    assert!(!agent.contains("console log write failed"), "{agent}");
}

/// Runs tests/browser/console.mjs on `url` (a serial-only ticket's web
/// console), typing `typed`; returns its report.
async fn console_page(url: &str, typed: &str, expect: Option<&str>) -> serde_json::Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run scripts/setup (npm packages of tests/browser)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("console.mjs"))
        .env("VMGATE_URL", url)
        .env("VMGATE_TYPE", typed)
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    if let Some(e) = expect {
        cmd.env("VMGATE_EXPECT", e);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the browser script finished")
        .expect("running node");
    let r: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "browser script output is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(r["ok"], true, "{r:#}");
    r
}

/// The serial-only web page in headless Chromium: keys typed into its
/// xterm.js terminal run in the guest; with a read-only ticket the page
/// sends no input at all (the agent would drop it anyway) and says it is
/// read-only; and either way the single-use ticket is gone from the
/// address bar and the tab's history once the page has read it.
#[tokio::test]
async fn the_serial_web_page_types_into_the_guest_and_a_read_only_one_sends_nothing() {
    let stack = Stack::start().await;
    let ro = stack.ticket("demo", &["serial0"], true);
    let mut watcher = Session::new(stack.connect(&ro.ws_url).await);
    watcher.expect_notice("read-only").await;
    let page_url = format!("https://{}/console", stack.gw_addr);

    let t = stack.ticket("demo", &["serial0"], false);
    assert!(t.url.ends_with(&format!("/console#ticket={}", t.ticket)));
    let r = console_page(&t.url, "echo web-$((6*7))", Some("web-42")).await;
    assert_eq!(r["state"], "connected", "{r:#}");
    assert_eq!(r["notice"], "you hold the keyboard", "{r:#}");
    watcher.expect("web-42").await;
    assert!(r["sentBinary"].as_u64().unwrap() > 0, "{r:#}");
    // The ticket left the page's URL and history.
    assert_eq!(r["location"], page_url.as_str(), "{r:#}");
    let history = r["history"].as_array().unwrap();
    assert!(!history.is_empty(), "{r:#}");
    assert!(
        history
            .iter()
            .all(|u| !u.as_str().unwrap().contains(&t.ticket)),
        "{r:#}"
    );

    // Read-only: the page sends nothing, and nothing runs in the guest.
    let at = watcher.output.len();
    let t = stack.ticket("demo", &["serial0"], true);
    let r = console_page(&t.url, "echo ro-$((5*5))", None).await;
    assert_eq!(r["state"], "read-only", "{r:#}");
    assert_eq!(r["status"], "connected, read-only", "{r:#}");
    assert!(r["notice"].as_str().unwrap().contains("read-only"), "{r:#}");
    assert_eq!(r["sentBinary"], 0, "the read-only page sent input: {r:#}");
    assert_eq!(r["location"], page_url.as_str(), "{r:#}");
    assert!(
        r["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| !u.as_str().unwrap().contains(&t.ticket)),
        "{r:#}"
    );
    // A command typed afterwards runs; the read-only page's never did.
    let mut s = stack.serial().await;
    s.expect_notice("you hold the keyboard").await;
    s.send(b"echo after-$((3*3))\n").await;
    let end = watcher.expect_since(at, "after-9").await;
    assert!(
        !String::from_utf8_lossy(&watcher.output[at..end]).contains("ro-25"),
        "{}",
        watcher.text()
    );
}
