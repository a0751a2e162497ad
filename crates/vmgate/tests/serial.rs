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
    let forged = vmgate_minter::sign(&foreign, &claims);
    let (code, reason) = refusal(format!("{base}/ws/{}/serial0?ticket={forged}", stack.name)).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("signature"), "{reason}");

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
