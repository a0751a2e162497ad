//! What only the libvirt backend does: it follows libvirt's lifecycle
//! events (start, stop, save and restore, live migration to a second
//! node), closes the sessions of a domain that stops, lists defined domains
//! as down, honours the metadata filter, survives a libvirtd restart, and
//! shares the console with `virsh console`. Real libvirtd, real QEMU, real
//! agent and gateway processes.

mod common;

use common::libvirt::{restart_libvirtd, DAEMON};
use common::rfb::{Image, Page, Viewer};
use common::{Backend, Event, Session, Stack};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_domain_started_after_the_agent_is_routed_without_a_restart() {
    let stack = Stack::start_backend(Backend::Libvirt).await;
    let late = format!("{}.late", stack.name);
    let t = stack.ticket(&late, &["serial0"], false);
    let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    assert_eq!(code, 4404, "{reason}");

    let _domain = stack.create_domain(&late).await;
    // The agent learns of it from libvirt's event and pushes its inventory;
    // the same gateway and agent processes route it.
    stack.wait_routable_guest(&late).await;
    stack.wait_booted(&late).await;
    let t = stack.ticket(&late, &["serial0"], false);
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    s.expect_notice("you hold the keyboard").await;
    s.send(b"echo late-$((20+3))\n").await;
    s.expect("late-23").await;
    let log = stack.log("agent.log");
    assert!(
        log.lines()
            .any(|l| l.contains("serving domain") && l.contains(&late)),
        "agent log:\n{}",
        stack.log("agent.log")
    );
}

#[tokio::test]
async fn serial_channel_and_vnc_work_and_a_destroyed_domain_closes_them_with_guest_stopped() {
    let stack = Stack::start_backend(Backend::Libvirt).await;
    let mut serial = stack.serial().await;
    serial.expect_notice("you hold the keyboard").await;
    // A channel session (on the channel's own socket), echoing.
    let t = stack.ticket(&stack.name, &["test.echo"], false);
    let mut first = Session::new(stack.connect(&t.ws_url).await);
    first.send(b"ping-libvirt").await;
    first.expect("ping-libvirt").await;
    // The client's end of input ends the channel session normally, and
    // frees the channel for the next one.
    first
        .ws
        .send(Message::text(r#"{"type":"eof"}"#))
        .await
        .unwrap();
    let (code, reason) = closed_or_log(&stack, &mut first).await;
    // Both directions ended: the gateway closes without an error code.
    assert!(code == 1000 || code == 1005, "{code} {reason}");
    let t = stack.ticket(&stack.name, &["test.echo"], false);
    let mut echo = Session::new(stack.connect(&t.ws_url).await);
    echo.send(b"pong-libvirt").await;
    echo.expect("pong-libvirt").await;
    // VNC through virDomainOpenGraphicsFD: a fresh RFB connection, with no
    // VNC listener involved.
    let t = stack.ticket(&stack.name, &["vnc"], false);
    let mut vnc = Session::new(stack.connect(&t.ws_url).await);
    vnc.expect("RFB 003.008\n").await;

    stack.domain.as_ref().unwrap().destroy();
    for s in [&mut serial, &mut echo, &mut vnc] {
        let (code, reason) = closed_or_log(&stack, s).await;
        assert_eq!(code, 4410, "{reason}");
        assert!(reason.contains("guest stopped"), "{reason}");
        assert!(reason.contains("destroyed"), "{reason}");
    }
    // And it is gone from the inventory: new sessions are refused.
    let t = stack.ticket(&stack.name, &["serial0"], false);
    let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    assert!(code == 4404 || code == 4410, "{code} {reason}");
}

#[tokio::test]
async fn a_defined_domain_that_is_not_running_is_refused_as_down_until_it_is_undefined() {
    let stack = Stack::start_backend(Backend::Libvirt).await;
    let name = format!("{}.p", stack.name);
    // Defined, never started: listed down (from libvirt's DEFINED event).
    let domain = stack.define_domain(&name).await;
    stack.wait_guest_state(&name, Some("down")).await;
    let reason = refused(&stack, &name, 4410).await;
    assert_eq!(reason, format!("guest {name} is not running"));
    let gw_log = stack.log("gateway.log");
    assert!(
        gw_log
            .lines()
            .any(|l| l.contains("session refused") && l.contains(&name) && l.contains("(4410)")),
        "refusal not logged:\n{gw_log}"
    );

    // Started: served, with its console.
    domain.start();
    stack.wait_routable_guest(&name).await;
    assert_eq!(stack.guest_state(&name).await.as_deref(), Some("running"));
    stack.wait_booted(&name).await;
    let t = stack.ticket(&name, &["serial0"], false);
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    s.expect_notice("you hold the keyboard").await;
    s.send(b"echo persistent-$((50+5))\n").await;
    s.expect("persistent-55").await;

    // Destroyed: the session closes with the reason, and the domain is
    // listed down again, not forgotten.
    domain.destroy();
    let (code, reason) = closed_or_log(&stack, &mut s).await;
    assert_eq!(code, 4410, "{reason}");
    assert_eq!(reason, "guest stopped (destroyed)");
    let reason = refused(&stack, &name, 4410).await;
    assert!(reason.contains("not running"), "{reason}");
    stack.wait_guest_state(&name, Some("down")).await;

    // Undefined: gone, an unknown guest.
    domain.undefine();
    stack.wait_guest_state(&name, None).await;
    let reason = refused(&stack, &name, 4404).await;
    assert!(
        reason.contains(&format!("unknown guest {name}")),
        "{reason}"
    );
}

/// Opens a serial session to `guest` and expects it refused with `code`;
/// returns the reason.
/// `virsh save` takes a running domain off the node the way a migration
/// away does, and `virsh restore` brings it back the way a migration in
/// does (a STARTED event, a new libvirt id), with the guest's memory as it
/// was: its sessions close with the reason, and afterwards it is served
/// again with its shell where it left off.
#[tokio::test]
async fn a_saved_domain_closes_its_sessions_and_once_restored_is_served_where_it_was() {
    let stack = Stack::start_backend(Backend::Libvirt).await;
    let mut serial = stack.serial().await;
    serial.expect_notice("you hold the keyboard").await;
    serial.send(b"MARK=kept-$((40+2))\n").await;
    serial.send(b"echo set-$((1+1))\n").await;
    serial.expect("set-2").await;

    let image = stack.dir.path().join("saved.img");
    let (name, file) = (stack.name.clone(), image.clone());
    let out = tokio::task::spawn_blocking(move || {
        common::libvirt::virsh(&["save", &name, file.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "virsh save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, reason) = closed_or_log(&stack, &mut serial).await;
    assert_eq!(code, 4410, "{reason}");
    assert!(reason.contains("guest stopped (saved)"), "{reason}");

    let file = image.clone();
    let out = tokio::task::spawn_blocking(move || {
        common::libvirt::virsh(&["restore", file.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "virsh restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.wait_routable_guest(&stack.name).await;
    // The console is attached to the restored domain's new pty: the
    // session opens at once.
    let mut serial = stack.serial().await;
    serial.expect_notice("you hold the keyboard").await;
    // The same shell, not a new boot: the variable set before the save.
    serial.send(b"echo mark=$MARK\n").await;
    serial.expect("mark=kept-42").await;
    let log = stack.log("agent.log");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("serving domain") && l.contains(&stack.name))
            .count(),
        2,
        "served once per run:\n{log}"
    );
}

/// `[libvirt] metadata_uri`: only domains carrying a `<metadata>` element
/// in that namespace are served. The filter is read on each lifecycle
/// event, so an element set later takes effect at the domain's next one.
#[tokio::test]
async fn a_metadata_filter_serves_only_the_domains_that_carry_the_element() {
    let stack = Stack::start_libvirt_with(|l| {
        l.metadata_uri = Some(common::libvirt::METADATA_NS.into());
    })
    .await;
    // The stack's own domain carries the element: it is served (the stack
    // started). Another one, selected by name, does not (created paused,
    // so its boot is still to come once it is served).
    let plain = format!("{}.plain", stack.name);
    let _domain = stack.create_untagged_paused_domain(&plain).await;
    stack
        .wait_log(
            "agent.log",
            common::WAIT,
            &format!("lifecycle event about {plain}"),
            |l| l.contains("libvirt lifecycle event") && l.contains(&plain),
        )
        .await;
    let reason = refused(&stack, &plain, 4404).await;
    assert!(reason.contains("unknown guest"), "{reason}");

    // Tag it while it is paused; its resume (the next lifecycle event)
    // makes the agent read it again.
    let name = plain.clone();
    tokio::task::spawn_blocking(move || {
        for args in [
            vec![
                "metadata",
                &name,
                "--uri",
                common::libvirt::METADATA_NS,
                "--key",
                "t",
                "--set",
                "<selected/>",
                "--live",
            ],
            vec!["resume", &name],
        ] {
            let out = common::libvirt::virsh(&args);
            assert!(
                out.status.success(),
                "virsh {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    })
    .await
    .unwrap();
    stack.wait_routable_guest(&plain).await;
    // Served from its resume: the console shows its boot up to the shell,
    // and one command typed then is answered.
    let t = stack.ticket(&plain, &["serial0"], false);
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    s.expect_notice("you hold the keyboard").await;
    s.expect_booted(0).await;
    s.send(b"echo tagged-$((5*5))\n").await;
    s.expect("tagged-25").await;
}

/// Live migration to another node, for real, followed: the serial and
/// channel sessions open on the first node stay open and go on against the
/// guest on the second node (the gateway re-opens them there and says so
/// in a notice); the screen of a viewer through `vmgate vnc` stays open
/// too, spliced onto the second node's VNC server (docs/migration.md): what
/// is written to the guest's VGA console after the move reaches the viewer
/// and equals the second node's screenshot, and the viewer, which lists
/// ZRLE, zlib and Tight first, only ever gets Hextile (it cannot decode the
/// others); the screen page in headless Chromium (noVNC,
/// tests/browser/migrate.mjs) stays open through every move, its canvas
/// equal to the new node's screenshot, and the browser sees no WebSocket
/// close; a VNC session whose viewer had not finished its handshake
/// cannot be spliced and gets 4413 with why; new sessions reach the second
/// node's agent; then a failed migration, one that fails after node B
/// paused the guest (nothing moves), moves back and forth (measured, each
/// back before the old node's Confirm),
/// two quick moves, and the guest stopped on its last node. The second node is a second libvirtd on this machine
/// ([`common::libvirt::SecondNode`]).
#[tokio::test]
async fn a_live_migrated_domain_is_followed_to_the_other_nodes_agent() {
    let node_b = tokio::task::spawn_blocking(common::libvirt::SecondNode::start)
        .await
        .unwrap();
    let mut stack = Stack::start_backend(Backend::Libvirt).await;
    let mut cfg = stack.state.agent_config(common::any_port(), vec![]);
    cfg.node = "node-b".into();
    cfg.log_dir = stack.dir.path().join("logs-node-b");
    cfg.libvirt.uri = node_b.uri.clone();
    cfg.libvirt.domains = vec![stack.name.clone()];
    // Node B's channel sockets live in its own mount namespace.
    cfg.libvirt.channel_via = vmgate_agent::config::ChannelVia::Stream;
    let b_addr = stack.spawn_libvirt_agent("agent-b", &cfg).await;
    // The gateway learns of node B's agent once it listens.
    stack
        .restart_gateway(|gw| {
            let mut b = gw.agent_list[0].clone();
            b.addr = b_addr;
            gw.agent_list.push(b);
        })
        .await;

    let mut serial = stack.serial().await;
    serial.expect_notice("you hold the keyboard").await;
    serial.send(b"MIG=moved-$((6*7))\n").await;
    serial.send(b"echo before-$((2+2))\n").await;
    serial.expect("before-4").await;
    let t = stack.ticket(&stack.name, &["test.echo"], false);
    let mut echo = Session::new(stack.connect(&t.ws_url).await);
    echo.send(b"ping-on-a").await;
    echo.expect("ping-on-a").await;
    let t = stack.ticket(&stack.name, &["vnc"], false);
    let mut vnc = Session::new(stack.connect(&t.ws_url).await);
    vnc.expect("RFB 003.008\n").await;
    let viewer = Viewer::start(&stack, &stack.name).await;
    let on_a = viewer
        .wait_screen(common::WAIT, || screenshot(None, &stack))
        .await;
    // The screen page in a browser, beside it.
    let t = stack.ticket(&stack.name, &["vnc"], false);
    let mut page = Page::open(&t.url, &stack.dir.path().join("browser")).await;
    page.wait_screen(common::WAIT, || screenshot(None, &stack))
        .await;

    let (name, uri) = (stack.name.clone(), node_b.uri.clone());
    let out = tokio::task::spawn_blocking(move || {
        common::libvirt::virsh(&[
            "migrate",
            "--live",
            &name,
            &uri,
            "--migrateuri",
            "tcp://127.0.0.1",
        ])
    })
    .await
    .unwrap();
    let migrated = std::time::Instant::now();
    assert!(
        out.status.success(),
        "virsh migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A screen whose viewer never finished its handshake cannot be
    // spliced: told to reconnect, and why.
    let (code, reason) = closed_or_log(&stack, &mut vnc).await;
    assert_eq!(code, 4413, "{reason}");
    assert!(reason.contains("migrated to another node"), "{reason}");
    assert!(
        reason.contains("had not finished its RFB handshake"),
        "{reason}"
    );
    // The serial session follows, to the same running guest.
    serial.expect_notice("this session follows it").await;
    serial.send(b"echo mig=$MIG\n").await;
    serial.expect("mig=moved-42").await;
    // So does the channel session.
    echo.expect_notice("this session follows it").await;
    echo.send(b"ping-on-b").await;
    echo.expect("ping-on-b").await;
    let b_log = stack.log("agent-b.log");
    assert!(
        b_log
            .lines()
            .any(|l| l.contains("serving domain") && l.contains(&stack.name)),
        "agent-b log:\n{b_log}"
    );
    let gw = stack.log("gateway.log");
    assert_eq!(
        gw.matches("session follows the guest to its new node")
            .count(),
        2,
        "{gw}"
    );
    // The viewer's screen stayed open: the whole screen came again from
    // node B, and what is drawn on the guest's VGA console now reaches it.
    let spliced = "screen spliced onto the guest's new node";
    stack
        .wait_log("gateway.log", common::WAIT, spliced, |l| {
            l.contains(spliced)
        })
        .await;
    let gw = common::plain(&stack.log("gateway.log"));
    let first = gw
        .lines()
        .find(|l| l.contains(spliced))
        .unwrap()
        .to_string();
    assert!(first.contains("switch_ms="), "{first}");
    viewer.assert_open();
    serial
        .send(b"printf '\\033[44m\\033[2Jmoved-%s' $((6*7)) > /dev/tty1; echo drawn-$((1+1))\n")
        .await;
    serial.expect("drawn-2").await;
    let on_b = viewer
        .wait_screen(common::WAIT, || screenshot(Some(&node_b), &stack))
        .await;
    assert_ne!(on_a, on_b, "the screen after the move is the new one");
    // The page too, without having seen its WebSocket close.
    page.wait_screen(common::WAIT, || screenshot(Some(&node_b), &stack))
        .await;
    // Both kept Tight (`vmgate vnc` and the page say their decoders reset
    // their streams when told), and each was told once.
    let reset = "Tight streams reset in the viewer";
    let resets = common::plain(&stack.log("gateway.log"))
        .matches(reset)
        .count();
    assert_eq!(resets, 2, "one Tight reset per spliced screen");
    {
        let seen = viewer.seen.lock().unwrap();
        let after = seen.updates.iter().find(|t| **t > migrated);
        eprintln!(
            "first screen update {:?} after virsh migrate returned; {first}",
            after.map(|t| t.duration_since(migrated))
        );
        // Tight, spliced with its streams reset; never ZRLE or zlib.
        assert!(seen.encodings.contains(&7), "{:?}", seen.encodings);
        assert!(
            seen.encodings.is_subset(&[0, 5, 7, -223].into()),
            "{:?}",
            seen.encodings
        );
    }
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("vmgate_screen_splice_failed_total{reason=\"handshake\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vmgate_sessions_followed_total 4"),
        "{metrics}"
    );
    // New sessions reach node B too.
    let t = stack.ticket(&stack.name, &["vnc"], false);
    let mut vnc = Session::new(stack.connect(&t.ws_url).await);
    vnc.expect("RFB 003.008\n").await;
    drop(vnc);

    // Back and forth, each move measured: from the guest resuming on its
    // new node (the libvirt RESUMED/migrated event, as that node's agent
    // logs it) to the viewer's first screen update and to the serial
    // session's notice that it follows. VMGATE_MIGRATIONS sets how many
    // (BENCHMARKS.md used 10); CI makes 2.
    let moves: usize = std::env::var("VMGATE_MIGRATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    // A migration that fails (the destination cannot listen on the
    // address asked for) leaves the guest, and every session, where they
    // were.
    let (name, a) = (stack.name.clone(), common::libvirt::URI.to_string());
    let failed = node_b
        .virsh(&[
            "migrate",
            "--live",
            &name,
            &a,
            "--migrateuri",
            "tcp://192.0.2.1:49152",
        ])
        .status;
    assert!(!failed.success(), "a migration to a closed port failed");
    let notices = serial.notices.len();
    serial.send(b"echo still-$((3*3))\n").await;
    serial.expect("still-9").await;
    assert_eq!(serial.notices.len(), notices, "{:?}", serial.notices);
    viewer.assert_open();

    // A migration that fails after the old node paused the guest for its
    // last phase (held to 1 MiB/s, paused by --timeout after 1 s, then
    // aborted while paused): node B said the guest was migrating out, the
    // first node never ran it, and nothing moves. Meanwhile a new session
    // is told to come back in a moment; afterwards everything goes on
    // where it was.
    let phases = |s: &Stack, phase: &str| {
        common::plain(&s.log("agent-b.log"))
            .lines()
            .filter(|l| l.contains("live migration phase") && l.contains(phase))
            .count()
    };
    let (left, ran) = (
        phases(&stack, "phase=Leaving"),
        phases(&stack, "phase=Running"),
    );
    let departures = |s: &Stack| s.log("gateway.log").matches("guest departed").count();
    let departed = departures(&stack);
    let (name, a, b) = (
        stack.name.clone(),
        common::libvirt::URI.to_string(),
        node_b.uri.clone(),
    );
    let slow = tokio::task::spawn_blocking(move || {
        std::process::Command::new("virsh")
            .args(["-q", "-c", &b, "migrate", "--live", &name, &a])
            .args(["--migrateuri", "tcp://127.0.0.1", "--bandwidth", "1"])
            .args(["--timeout", "1", "--timeout-suspend"])
            .output()
            .expect("running virsh")
    });
    let until = |what: &'static str| {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        move |stack: &Stack| {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}:\n{}",
                stack.log("agent-b.log")
            )
        }
    };
    let check = until("node B never paused the guest to migrate it out");
    while phases(&stack, "phase=Leaving") == left {
        check(&stack);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reason = refused(&stack, &stack.name, 4413).await;
    assert!(reason.contains("migrating"), "{reason}");
    let out = node_b.virsh(&["domjobabort", &stack.name]);
    assert!(
        out.status.success(),
        "domjobabort: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = slow.await.unwrap();
    assert!(!out.status.success(), "the aborted migration failed");
    let check = until("node B never resumed the guest");
    while phases(&stack, "phase=Running") == ran {
        check(&stack);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    serial.send(b"echo resumed-$((4*4))\n").await;
    serial.expect("resumed-16").await;
    assert_eq!(serial.notices.len(), notices, "{:?}", serial.notices);
    assert_eq!(departures(&stack), departed, "{}", stack.log("gateway.log"));
    echo.send(b"ping-still-on-b").await;
    echo.expect("ping-still-on-b").await;
    viewer.assert_open();

    let (mut screen_ms, mut serial_ms, mut stopped_ms) = (Vec::new(), Vec::new(), Vec::new());
    // RESUMED/migrated events so far, as each node's agent logged them:
    // node B's from the first move, and from the migration aborted there
    // (which resumed the guest in place with the same event); the moves
    // that arrived on each node apart.
    let mut resumes = [0, 0];
    for (n, log) in resumes.iter_mut().zip(["agent.log", "agent-b.log"]) {
        *n = common::plain(&stack.log(log))
            .lines()
            .filter(|l| {
                l.contains("libvirt lifecycle event")
                    && l.contains(&format!("domain={}", stack.name))
                    && l.split_whitespace().any(|w| w == "event=4")
                    && l.split_whitespace().any(|w| w == "detail=1")
            })
            .count();
    }
    let mut arrivals = [0, 1];
    for i in 0..moves {
        let to_b = i % 2 == 1;
        let updates = viewer.updates();
        let notices = serial.notices.len();
        // The notice is read while virsh runs: it comes before the
        // migration's end (the old node's Confirm), and is timed on arrival.
        let (_, serial_at) = tokio::join!(
            migrate(&stack, &node_b, to_b),
            notice_since(&mut serial, notices, "this session follows it")
        );
        let node = to_b.then_some(&node_b);
        resumes[usize::from(to_b)] += 1;
        arrivals[usize::from(to_b)] += 1;
        let log = if to_b { "agent-b.log" } else { "agent.log" };
        let resumed = resumed_at(&stack, log, resumes[usize::from(to_b)]).await;
        let text = format!(
            "printf '\\033[4{}m\\033[2Jmove-%s' $(({i}+100)) > /dev/tty1; echo drawn-$(({i}+200))\n",
            i % 7 + 1
        );
        serial.send(text.as_bytes()).await;
        serial.expect(&format!("drawn-{}", i + 200)).await;
        viewer
            .wait_screen(common::WAIT, || screenshot(node, &stack))
            .await;
        let first = viewer.seen.lock().unwrap().wall[updates..]
            .iter()
            .map(|t| seconds_of_day(*t))
            .find(|t| *t >= resumed)
            .expect("an update after the move");
        screen_ms.push(((first - resumed) * 1000.0).round() as u64);
        let from = if to_b { "agent.log" } else { "agent-b.log" };
        // Departures from A: its creation there, then each arrival.
        let nth = if to_b { arrivals[0] + 1 } else { arrivals[1] };
        let stopped = event_at(&stack, from, "event=5", "detail=3", nth).await;
        stopped_ms.push(((stopped - resumed) * 1000.0).round() as i64);
        serial_ms.push(((serial_at - resumed) * 1000.0).max(0.0).round() as u64);
        // The gateway acts on the guest resuming on its new node, not on
        // the old node ending the sessions: the screen and the serial
        // session are back before the old node's libvirt even says the
        // guest stopped there (the migration's Confirm, 1.2-2.1 s after the
        // resume here). An ordering, not a time, so a loaded CI slows both
        // sides alike; waiting for the old node's 4413 again fails it.
        assert!(
            first < stopped && serial_at < stopped,
            "move {i}: screen back {} ms, serial notice {} ms, old node stopped {} ms after the resume",
            screen_ms[i],
            serial_ms[i],
            stopped_ms[i]
        );
    }
    let stats = |v: &mut Vec<u64>| {
        v.sort_unstable();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (s_med, s_max) = stats(&mut screen_ms);
    let (c_med, c_max) = stats(&mut serial_ms);
    let gw = common::plain(&stack.log("gateway.log"));
    let switches: Vec<&str> = gw
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("switch_ms=")))
        .collect();
    eprintln!(
        "{moves} migrations: resume to the viewer's first update: median {s_med} ms, max {s_max} ms {screen_ms:?}; \
         resume to the serial session following: median {c_med} ms, max {c_max} ms {serial_ms:?}; \
         source stopped after resume: {stopped_ms:?} ms; gateway's switch after the departure (or the old node's 4413): {switches:?}"
    );
    // Measured deadlines: the issue asks for the screen within a second.
    assert!(s_max < 5_000, "{screen_ms:?}");

    echo.send(b"ping-after-all").await;
    echo.expect("ping-after-all").await;

    // Two moves in quick succession: the second starts as soon as the
    // first is done, while the gateway is still splicing (libvirt holds
    // the screen's open until the second migration's job is over, and the
    // splice follows the guest on). The viewer and the page stay open and
    // show what is drawn on the final node.
    let on_b = moves.is_multiple_of(2);
    let spliced = "screen spliced onto the guest's new node";
    // Each screen splices once or twice (once if its splice follows the
    // guest on from the node it left at once).
    let want = stack.log("gateway.log").matches(spliced).count() + 2;
    migrate(&stack, &node_b, !on_b).await;
    migrate(&stack, &node_b, on_b).await;
    let node = on_b.then_some(&node_b);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while stack.log("gateway.log").matches(spliced).count() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not {want} splices:\n{}",
            stack.log("gateway.log")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Drawn through a new serial session that takes the keyboard (the
    // followed one holds it on the final node).
    let t = stack.ticket(&stack.name, &["serial0"], false);
    let mut forced = Session::new(stack.connect(&format!("{}&force=true", t.ws_url)).await);
    forced
        .send(b"printf '\\033[47m\\033[2Jquick' > /dev/tty1; echo drawn-$((7*11))\n")
        .await;
    forced.expect("drawn-77").await;
    viewer
        .wait_screen(common::WAIT, || screenshot(node, &stack))
        .await;
    viewer.assert_open();
    page.wait_screen(common::WAIT, || screenshot(node, &stack))
        .await;
    page.quit_having_stayed_connected().await;
    // The guest stops where it now runs: every session ends, the screen too.
    let out = match on_b {
        true => node_b.virsh(&["destroy", &stack.name]),
        false => common::libvirt::virsh(&["destroy", &stack.name]),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, reason) = closed_or_log(&stack, &mut forced).await;
    assert_eq!(code, 4410, "{reason}");
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while viewer.seen.lock().unwrap().ended.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the viewer stayed connected to a stopped guest"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(node_b);
}

/// Live-migrates the stack's domain to node B, or back to the first node.
async fn migrate(stack: &Stack, node_b: &common::libvirt::SecondNode, to_b: bool) {
    let (name, b) = (stack.name.clone(), node_b.uri.clone());
    let out = tokio::task::spawn_blocking(move || {
        let (from, to) = if to_b {
            (common::libvirt::URI, b.as_str())
        } else {
            (b.as_str(), common::libvirt::URI)
        };
        std::process::Command::new("virsh")
            .args(["-q", "-c", from, "migrate", "--live", &name, to])
            .args(["--migrateuri", "tcp://127.0.0.1"])
            .output()
            .expect("running virsh")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "virsh migrate (to node B: {to_b}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// UTC seconds since midnight, as log lines show them.
fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// When the `nth` (from 1) RESUMED/migrated event for the stack's domain
/// was logged in `log`, in [`seconds_of_day`].
async fn resumed_at(stack: &Stack, log: &str, nth: usize) -> f64 {
    event_at(stack, log, "event=4", "detail=1", nth).await
}

/// When the `nth` (from 1) libvirt lifecycle event `event` with `detail`
/// for the stack's domain was logged in `log`, in [`seconds_of_day`].
async fn event_at(stack: &Stack, log: &str, event: &str, detail: &str, nth: usize) -> f64 {
    let is_resume = |l: &&str| {
        l.contains("libvirt lifecycle event")
            && l.contains(&format!("domain={}", stack.name))
            && l.split_whitespace().any(|w| w == event)
            && l.split_whitespace().any(|w| w == detail)
    };
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let line = loop {
        let text = common::plain(&stack.log(log));
        if let Some(l) = text.lines().filter(is_resume).nth(nth - 1) {
            break l.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {event} {detail} #{nth} in {log}:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // 2026-12-03T05:39:02.203451Z ...
    let hms = &line[11..line.find('Z').unwrap()];
    let mut parts = hms.split(':').map(|p| p.parse::<f64>().unwrap());
    let (h, m, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    h * 3600.0 + m * 60.0 + s
}

/// Waits for a notice containing `needle` among those after the first
/// `since`; when it came, in [`seconds_of_day`].
async fn notice_since(s: &mut Session, since: usize, needle: &str) -> f64 {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !s.notices[since..].iter().any(|n| n.contains(needle)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Event::Timeout | Event::Closed(..) = s.next_event(left).await {
            panic!("no notice {needle:?}; notices: {:?}", s.notices);
        }
    }
    seconds_of_day(std::time::SystemTime::now())
}

/// The guest's screen as libvirt shows it, on node B or the first node.
async fn screenshot(node: Option<&common::libvirt::SecondNode>, stack: &Stack) -> Image {
    let path = stack.dir.path().join(format!(
        "shot-{}.img",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let p = path.to_str().unwrap().to_string();
    let out = match node {
        Some(n) => n.virsh(&["screenshot", &stack.name, &p]),
        None => common::libvirt::virsh(&["screenshot", &stack.name, &p]),
    };
    assert!(
        out.status.success(),
        "virsh screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Image::load(&path)
}

async fn refused(stack: &Stack, guest: &str, code: u16) -> String {
    let t = stack.ticket(guest, &["serial0"], false);
    let (c, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    assert_eq!(c, code, "{reason}");
    reason
}

/// Waits for the session's close; on a timeout, shows the agent's log.
async fn closed_or_log(stack: &Stack, s: &mut Session) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.next_event(left).await {
            Event::Closed(code, reason) => return (code, reason),
            Event::Timeout => panic!(
                "session not closed; events: {:?} {:?}\nagent log:\n{}\ngateway log:\n{}",
                s.notices,
                s.text(),
                stack.log("agent.log"),
                stack.log("gateway.log")
            ),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_libvirtd_restart_under_a_running_agent_is_survived() {
    // Other tests in this binary need libvirtd up: restart it alone.
    let exclusive = DAEMON.write().await;
    let stack = Stack::start_with_daemon_held(Backend::Libvirt).await;
    let mut before = stack.serial().await;
    before.expect_notice("you hold the keyboard").await;

    tokio::task::spawn_blocking(restart_libvirtd).await.unwrap();
    // The console stream went with the daemon: the session is told and
    // stays attached while the agent reconnects.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !stack
        .log("agent.log")
        .contains("lost the libvirt connection")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never noticed; agent log:\n{}",
            stack.log("agent.log")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    before.expect_notice("disconnected").await;
    while stack
        .log("agent.log")
        .matches("connected to libvirt")
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never reconnected; agent log:\n{}",
            stack.log("agent.log")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // New sessions work, and so does the one that stayed.
    let mut after = stack.serial().await;
    after.expect_notice("keyboard").await;
    before.send(b"echo survived-$((30+3))\n").await;
    after.expect("survived-33").await;
    before.expect("survived-33").await;
    drop(exclusive);
}

#[tokio::test]
async fn an_administrators_virsh_console_and_force_take_the_console_from_each_other() {
    let stack = Stack::start_backend(Backend::Libvirt).await;
    let mut s = stack.serial().await;
    s.expect_notice("you hold the keyboard").await;
    // The host administrator takes the console over for recovery (`virsh
    // console` wants a terminal: `script` gives it one).
    let mut admin = std::process::Command::new("script")
        .args([
            "-qfc",
            &format!(
                "virsh -c {} console --force {}",
                common::libvirt::URI,
                stack.name
            ),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running script(1)");
    s.expect_notice("disconnected").await;
    // vmgate does not take it back by itself: a session is refused, and told
    // how to take it.
    let t = stack.ticket(&stack.name, &["serial0"], false);
    let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    assert_eq!(code, 4409, "{reason}");
    assert!(reason.contains("--force"), "{reason}");
    // With --force it does (VIR_DOMAIN_CONSOLE_FORCE), and it works.
    let t = stack.ticket(&stack.name, &["serial0"], false);
    let mut f = Session::new(stack.connect(&format!("{}&force=true", t.ws_url)).await);
    f.expect_notice("keyboard").await;
    f.send(b"echo taken-back-$((40+2))\n").await;
    f.expect("taken-back-42").await;
    let _ = admin.kill();
    let _ = admin.wait();
}
