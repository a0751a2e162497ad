//! The security boundary end to end: the admin listener and its
//! credentials, the ticket minter, ending sessions, throttling, the Origin
//! check, session limits, the audit log and the metrics — through the real
//! gateway, agent and guest, over real TLS and QUIC.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Session, Stack};
use http::Method;
use vmgate::admin_client::{request, AdminCreds};

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn admin_routes_are_absent_on_the_public_listener_and_need_credentials() {
    let stack = Stack::start_secure(|_| {}).await;
    let public = format!("https://{}", stack.gw_addr);
    // Even with the admin token, the public listener has no admin route.
    let creds = AdminCreds {
        ca: stack.state.public_ca(),
        ..stack.admin_token()
    };
    for (method, path) in [
        (Method::GET, "/v1/sessions"),
        (Method::GET, "/v1/guests"),
        (Method::DELETE, "/v1/sessions/1"),
        (Method::POST, "/v1/tickets"),
        (Method::GET, "/metrics"),
        (Method::GET, "/v1/console/demo/serial0"),
    ] {
        let a = stack
            .admin(method.clone(), &format!("{public}{path}"), &creds)
            .await;
        assert_eq!(
            a.status, 404,
            "{method} {path} on the public port: {}",
            a.body
        );
    }

    let admin = stack.admin_url();
    let sessions = format!("{admin}/v1/sessions");
    let no_token = AdminCreds {
        token: None,
        ..stack.admin_token()
    };
    let a = stack.admin(Method::GET, &sessions, &no_token).await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("missing credentials"), "{}", a.body);
    let wrong = AdminCreds {
        token: Some("not-the-token-0123456789".into()),
        ..stack.admin_token()
    };
    let a = stack.admin(Method::GET, &sessions, &wrong).await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("invalid token"), "{}", a.body);

    // A client certificate from another CA fails the TLS handshake.
    let rogue = vmgate_tls::pki::Ca::new("rogue").unwrap();
    let id = rogue
        .issue_to(
            stack.dir.path(),
            "rogue-admin",
            &["vmgate-admin"],
            vmgate_tls::pki::Purpose::Client,
        )
        .unwrap();
    let rogue_creds = AdminCreds {
        cert: Some(id),
        ..stack.state.admin_cert_creds()
    };
    let r = request(Method::GET, &sessions, None, &rogue_creds).await;
    assert!(r.is_err(), "a rogue certificate got an answer: {r:?}");

    // The admin CA's certificate and the token both work.
    let a = stack
        .admin(
            Method::GET,
            &format!("{admin}/v1/guests"),
            &stack.state.admin_cert_creds(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let guests: Vec<serde_json::Value> = a.json().unwrap();
    assert_eq!(guests[0]["name"], "demo");
    assert_eq!(guests[0]["node"], "demo-node");
    let a = stack
        .admin(Method::GET, &sessions, &stack.admin_token())
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    // The gateway's admin listener cannot mint, and says who can.
    let a = stack
        .admin(
            Method::POST,
            &format!("{admin}/v1/tickets"),
            &stack.admin_token(),
        )
        .await;
    assert_eq!(a.status, 404);
    assert!(a.body.contains("vmgate admin"), "{}", a.body);
    assert!(stack.log("gateway.log").contains("admin request refused"));
}

#[tokio::test]
async fn vmgate_admin_mints_tickets_that_the_gateway_accepts() {
    let mut stack = Stack::start_secure(|_| {}).await;
    let minter = stack.start_minter().await;
    let tickets = format!("{minter}/v1/tickets");
    let body = serde_json::json!({"guest": "demo", "channels": ["serial0"], "ttl_secs": 60});

    let no_token = AdminCreds {
        token: None,
        ..stack.admin_token()
    };
    let a = request(Method::POST, &tickets, Some(&body), &no_token)
        .await
        .unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    let a = request(
        Method::POST,
        &tickets,
        Some(&serde_json::json!({"guest": "de/mo"})),
        &stack.admin_token(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 400);
    assert!(a.body.contains("invalid name"), "{}", a.body);
    // The minter's caps: time to redeem, session length, channel count.
    let many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
    for (ask, refusal) in [
        (
            serde_json::json!({"guest": "demo", "ttl_secs": 301}),
            "ttl must be 1 to 300",
        ),
        (
            serde_json::json!({"guest": "demo", "max_session_secs": 86401}),
            "max_session must be 1 to 86400",
        ),
        (
            serde_json::json!({"guest": "demo", "channels": many}),
            "name 1 to 32 channels",
        ),
        (
            serde_json::json!({"guest": "demo", "channels": []}),
            "name 1 to 32 channels",
        ),
    ] {
        let a = request(Method::POST, &tickets, Some(&ask), &stack.admin_token())
            .await
            .unwrap();
        assert_eq!(a.status, 400, "{ask}: {}", a.body);
        assert!(a.body.contains(refusal), "{ask}: {}", a.body);
    }
    assert!(stack.log("minter.log").contains("ticket request refused"));

    // The CLI: `vmgate ticket --admin URL`, with the client certificate.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(["ticket", "demo", "--json", "--admin", &minter, "--admin-ca"])
        .arg(stack.state.path("admin-server-ca.pem"))
        .arg("--admin-cert")
        .arg(stack.state.path("admin-client.pem"))
        .arg("--admin-key")
        .arg(stack.state.path("admin-client.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ws_url = minted["ws_url"].as_str().unwrap();
    assert!(ws_url.starts_with(&format!(
        "wss://{}/ws/demo/serial0?ticket=vt1.",
        stack.gw_addr
    )));
    let mut s = Session::new(stack.connect(ws_url).await);
    s.expect_notice("you hold the keyboard").await;
    s.send(b"echo minted-$((3*5))\n").await;
    s.expect("minted-15").await;
    assert!(stack.log("minter.log").contains("ticket minted"));
    // The minter logs the ticket's id, never its text.
    let ticket = minted["ticket"].as_str().unwrap();
    assert!(!stack.log("minter.log").contains(ticket));
}

#[tokio::test]
async fn a_session_ended_by_delete_closes_with_its_reason_and_is_audited_with_its_bytes() {
    let stack = Stack::start_secure(|_| {}).await;
    stack.wait_no_sessions().await;
    let t = stack.ticket("demo", &["serial0"], false);
    let id = vmgate_client::peek(&t.ticket).unwrap().id;
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    s.expect_notice("you hold the keyboard").await;
    let typed = b"echo audited-$((6*7))\n";
    s.send(typed).await;
    s.expect("audited-42").await;
    // Everything the guest prints for it has arrived before the DELETE.
    let at = s.text().find("audited-42").unwrap();
    s.expect_since(at, "guest# ").await;

    let admin = stack.admin_url();
    let a = stack
        .admin(
            Method::GET,
            &format!("{admin}/v1/sessions"),
            &stack.admin_token(),
        )
        .await;
    let list: Vec<serde_json::Value> = a.json().unwrap();
    let mine = list
        .iter()
        .find(|v| v["ticket"] == id.as_str())
        .unwrap_or_else(|| panic!("session not listed: {list:?}"));
    assert_eq!(mine["guest"], "demo");
    assert_eq!(mine["mode"], "interactive");
    assert!(
        !a.body.contains(&t.ticket),
        "the listing shows a ticket's text"
    );
    let sid = mine["id"].as_u64().unwrap();

    let a = stack
        .admin(
            Method::DELETE,
            &format!("{admin}/v1/sessions/{sid}"),
            &stack.admin_token(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let (code, reason) = s.closed().await;
    assert_eq!(code, 4412);
    assert_eq!(reason, "ended by administrator");
    let a = stack
        .admin(
            Method::DELETE,
            &format!("{admin}/v1/sessions/{sid}"),
            &stack.admin_token(),
        )
        .await;
    assert_eq!(a.status, 404);

    // Both audit lines, with the bytes each way the client saw.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let lines = loop {
        let lines: Vec<_> = stack
            .audit()
            .into_iter()
            .filter(|l| l["ticket"] == id.as_str())
            .collect();
        if lines.len() == 2 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (start, end) = (&lines[0], &lines[1]);
    assert_eq!(start["event"], "session_start");
    assert_eq!(end["event"], "session_end");
    for l in [start, end] {
        assert_eq!(l["session"], sid);
        assert_eq!(l["guest"], "demo");
        assert_eq!(l["channel"], "serial0");
        assert_eq!(l["mode"], "interactive");
        assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    assert_eq!(end["start"], start["start"]);
    assert!(end["end"].as_str().is_some());
    assert_eq!(end["bytes_to_guest"], typed.len() as u64);
    assert_eq!(end["bytes_from_guest"], s.output.len() as u64);
    assert_eq!(end["close_code"], 4412);
    assert_eq!(end["close_reason"], "ended by administrator");
    let audit = std::fs::read_to_string(stack.state.path("audit.jsonl")).unwrap();
    assert!(
        !audit.contains(&t.ticket),
        "the audit log holds a ticket's text"
    );

    let m = stack.metrics().await;
    assert!(
        metric(&m, "vmgate_sessions_total{channel=\"serial0\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "vmgate_bytes_total{direction=\"to_guest\"}") >= typed.len() as u64,
        "{m}"
    );
    assert!(metric(&m, "vmgate_session_open_seconds_count") >= 1, "{m}");

    // The audit log is readable by its owner and group only, and a log
    // rotator can move it away: on SIGHUP the gateway starts a new file.
    use std::os::unix::fs::PermissionsExt;
    let path = stack.state.path("audit.jsonl");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path) & !0o640, 0, "audit log mode {:o}", mode(&path));
    let rotated = stack.state.path("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stack.gateway_pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    // Logged once the audit log was reopened.
    stack
        .wait_log("gateway.log", common::WAIT, "the SIGHUP reload", |l| {
            l.contains("SIGHUP: TLS certificate reloaded")
        })
        .await;
    let t = stack.ticket("demo", &["serial0"], true);
    let id = vmgate_client::peek(&t.ticket).unwrap().id;
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    s.expect_notice("read-only").await;
    drop(s);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while stack
        .audit()
        .iter()
        .filter(|l| l["ticket"] == id.as_str())
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no audit lines in the new file: {:?}",
            stack.audit()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        mode(&path) & !0o640,
        0,
        "new audit log mode {:o}",
        mode(&path)
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        !old.contains(&id),
        "a line after the rotation went to the old file"
    );
}

#[tokio::test]
async fn failed_tickets_are_throttled_per_source_address_and_counted_by_reason() {
    let stack = Stack::start_secure(|l| l.failed_tickets_per_address = 3).await;
    let base = format!("wss://{}/ws/demo/serial0", stack.gw_addr);
    // Garbage that never parses as a ticket is refused and counted, but
    // does not throttle the address (one client behind a shared NAT must
    // not lock the others out with it).
    for _ in 0..5 {
        let ws = stack
            .connect_as(&format!("{base}?ticket=garbage"), LOCAL, &[])
            .await
            .unwrap();
        let (code, reason) = Session::new(ws).closed().await;
        assert_eq!(code, 4401);
        assert!(reason.contains("malformed"), "{reason}");
    }
    let ok = stack.ticket("demo", &["serial0"], true);
    let ws = stack.connect_as(&ok.ws_url, LOCAL, &[]).await.unwrap();
    Session::new(ws).expect_notice("read-only").await;
    // Tickets that were checked and failed (forged: another key) do.
    let rogue = vmgate_ticket::SigningKey::generate();
    for _ in 0..3 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = vmgate_ticket::Claims::new(
            "demo",
            ["serial0"],
            vmgate_ticket::Mode::Interactive,
            now,
            60,
            None,
        );
        let forged = vmgate_ticket::mint(&rogue, &claims);
        let ws = stack
            .connect_as(&format!("{base}?ticket={forged}"), LOCAL, &[])
            .await
            .unwrap();
        let (code, reason) = Session::new(ws).closed().await;
        assert_eq!(code, 4401);
        assert!(reason.contains("does not accept"), "{reason}");
    }
    // A good ticket from the throttled address is refused unchecked.
    let good = stack.ticket("demo", &["serial0"], false);
    let ws = stack.connect_as(&good.ws_url, LOCAL, &[]).await.unwrap();
    let (code, reason) = Session::new(ws).closed().await;
    assert_eq!(code, 4429);
    assert!(reason.contains("too many failed tickets"), "{reason}");
    // Another address is not affected.
    let other = stack.ticket("demo", &["serial0"], false);
    let ws = stack.connect_as(&other.ws_url, OTHER, &[]).await.unwrap();
    let mut s = Session::new(ws);
    s.expect_notice("you hold the keyboard").await;
    s.send(b"echo from-other-$((2*21))\n").await;
    s.expect("from-other-42").await;

    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"malformed\"}"),
        5,
        "{m}"
    );
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"unknown_key\"}"),
        3,
        "{m}"
    );
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"throttled\"}"),
        1,
        "{m}"
    );
    assert!(stack.log("gateway.log").contains("ticket check throttled"));
}

#[tokio::test]
async fn cross_origin_oversized_and_idle_sessions_are_refused() {
    let mut stack = Stack::start_secure(|l| {
        l.allowed_origins = vec!["https://portal.example".into()];
    })
    .await;
    let t = stack.ticket("demo", &["serial0"], false);
    let err = stack
        .connect_as(&t.ws_url, LOCAL, &[("origin", "https://evil.example")])
        .await
        .expect_err("a foreign page got a console WebSocket");
    assert!(err.contains("403"), "{err}");
    // The refused attempt did not use the ticket up.
    let own = format!("https://{}", stack.gw_addr);
    let ws = stack
        .connect_as(&t.ws_url, LOCAL, &[("origin", &own)])
        .await
        .expect("the gateway's own page is allowed");
    Session::new(ws).expect_notice("keyboard").await;
    let t2 = stack.ticket("demo", &["serial0"], true);
    let ws = stack
        .connect_as(&t2.ws_url, LOCAL, &[("origin", "https://portal.example")])
        .await
        .expect("a configured origin is allowed");
    Session::new(ws).expect_notice("read-only").await;
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"origin\"}"),
        1,
        "{m}"
    );

    // Bounded request sizes: a long URL, a huge header, a long ticket.
    let long = format!("{}&pad={}", t2.ws_url, "x".repeat(9000));
    let err = stack
        .connect_as(&long, LOCAL, &[])
        .await
        .expect_err("long URL");
    assert!(err.contains("414"), "{err}");
    let pad = "y".repeat(20_000);
    let err = stack
        .connect_as(&t2.ws_url, LOCAL, &[("x-pad", &pad)])
        .await
        .expect_err("huge header");
    assert!(err.contains("431"), "{err}");
    let ws = stack
        .connect_as(
            &format!(
                "wss://{}/ws/demo/serial0?ticket=vt1.{}",
                stack.gw_addr,
                "A".repeat(5000)
            ),
            LOCAL,
            &[],
        )
        .await
        .unwrap();
    let (code, reason) = Session::new(ws).closed().await;
    assert_eq!(code, 4401);
    assert!(reason.contains("longer than 4096 bytes"), "{reason}");

    // Bounded WebSocket messages (1 MiB) and frames (1 MiB): a message of
    // two 600 KiB fragments, which the gateway reads until the total passes
    // the limit, ends the session with its reason; a single 2 MiB frame is
    // refused at its header (the client may see the reset of a connection
    // closed with its frame unread rather than the close frame). Neither
    // reaches the guest; both are audited and counted with their reason.
    {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::Message;
        const LIMIT: &str = "over the 1048576-byte limit";
        let frame = |len: usize, op: Data, last: bool| {
            Message::Frame(Frame::message(vec![b'#'; len], OpCode::Data(op), last))
        };
        let t = stack.ticket("demo", &["serial0"], false);
        let mut s = Session::new(stack.connect_as(&t.ws_url, LOCAL, &[]).await.unwrap());
        s.expect_notice("keyboard").await;
        s.ws.send(frame(600 * 1024, Data::Binary, false))
            .await
            .unwrap();
        s.ws.send(frame(600 * 1024, Data::Continue, true))
            .await
            .unwrap();
        let (code, reason) = s.closed().await;
        assert_eq!(code, 4400, "{reason}");
        assert!(reason.contains(LIMIT), "{reason}");
        let fragmented = t.id;

        let t = stack.ticket("demo", &["serial0"], false);
        let mut s = Session::new(stack.connect_as(&t.ws_url, LOCAL, &[]).await.unwrap());
        s.expect_notice("keyboard").await;
        let sent =
            tokio::time::timeout(common::WAIT, s.ws.send(frame(2 << 20, Data::Binary, true)))
                .await
                .expect("the gateway neither read nor refused a 2 MiB frame");
        let (code, reason) = s.closed().await;
        eprintln!("a 2 MiB frame: sent {sent:?}, the client saw {code} {reason:?}");
        assert!(
            (code == 4400 && reason.contains(LIMIT)) || code == 1006,
            "a 2 MiB frame: {code} {reason}"
        );
        for id in [fragmented, t.id] {
            let deadline = tokio::time::Instant::now() + common::WAIT;
            let end = loop {
                let end = stack
                    .audit()
                    .into_iter()
                    .find(|l| l["ticket"] == id.as_str() && l["event"] == "session_end");
                if end.is_some() || tokio::time::Instant::now() > deadline {
                    break end.expect("no session_end audit line");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(end["close_code"], 4400, "{end}");
            assert!(
                end["close_reason"].as_str().unwrap().contains(LIMIT),
                "{end}"
            );
            assert_eq!(end["bytes_to_guest"], 0, "{end}");
        }
        let m = stack.metrics().await;
        assert_eq!(
            metric(&m, "vmgate_relay_errors_total{code=\"protocol_error\"}"),
            2,
            "{m}"
        );
    }

    // With an idle timeout, a session with traffic stays open past it, and
    // once nobody types and the guest prints nothing it is ended, the
    // timeout after its last byte. (Set only now: the guest boots quietly,
    // and the harness's boot probe would be idle too.)
    const IDLE: Duration = Duration::from_secs(3);
    stack
        .restart_gateway(|cfg| cfg.limits.idle_timeout_secs = IDLE.as_secs())
        .await;
    let mut s = stack.serial().await;
    s.expect_notice("keyboard").await;
    let opened = std::time::Instant::now();
    let mut n = 0;
    let mut last = opened;
    while opened.elapsed() < 3 * IDLE {
        if n > 0 {
            // Every second, well within the timeout.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        n += 1;
        let at = s.output.len();
        s.send(format!("echo tick-$(({n}*7))\n").as_bytes()).await;
        // The echo and the prompt after it: the last bytes either way.
        let after = s.expect_since(at, &format!("tick-{}", n * 7)).await;
        s.expect_since(after, "guest# ").await;
        last = std::time::Instant::now();
    }
    let (code, reason) = loop {
        match s.next_event(common::WAIT).await {
            common::Event::Data(_) => last = std::time::Instant::now(),
            common::Event::Closed(c, r) => break (c, r),
            e => panic!("{e:?} instead of the idle close"),
        }
    };
    let took = last.elapsed();
    assert_eq!(code, 4408, "{reason}");
    assert!(reason.contains("idle for 3s"), "{reason}");
    assert!(
        took + Duration::from_millis(200) >= IDLE && took <= IDLE + Duration::from_secs(3),
        "closed {took:?} after the last byte, not about {IDLE:?}"
    );
}

#[tokio::test]
async fn sessions_per_guest_are_limited_but_the_admin_console_still_opens_and_forces() {
    let stack = Stack::start_secure(|l| l.max_sessions_per_guest = 2).await;
    stack.wait_no_sessions().await;
    let mut a = stack.serial().await;
    a.expect_notice("you hold the keyboard").await;
    let mut b = stack.serial().await;
    b.expect_notice("another session holds the keyboard").await;
    let t = stack.ticket("demo", &["serial0"], false);
    let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    assert_eq!(code, 4429);
    assert!(
        reason.contains("guest demo has its maximum of 2"),
        "{reason}"
    );

    // The recovery path: an administrator's console needs no ticket, is
    // not counted against the limit, and can take the keyboard over.
    let url = format!(
        "{}/v1/console/demo/serial0?force=true",
        stack.admin_url().replacen("https://", "wss://", 1)
    );
    let ws = vmgate::admin_client::console(&url, &stack.admin_token())
        .await
        .unwrap();
    let mut admin = Session::new(ws);
    admin.expect_notice("took the keyboard over").await;
    a.expect_notice("keyboard taken over").await;
    admin.send(b"echo admin-$((50+1))\n").await;
    admin.expect("admin-51").await;
    // Without credentials it does not open.
    let no_token = AdminCreds {
        token: None,
        ..stack.admin_token()
    };
    assert!(vmgate::admin_client::console(&url, &no_token)
        .await
        .is_err());

    drop(admin);

    // The same from the CLI: `vmgate console GUEST --admin URL --force`
    // (whether the closed admin WebSocket has let go of the keyboard yet or
    // not, --force makes this one the writer).
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(["console", "demo", "--force", "--admin", &stack.admin_url()])
        .arg("--admin-ca")
        .arg(stack.state.path("admin-server-ca.pem"))
        .arg("--admin-token-file")
        .arg(stack.state.path("admin.token"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = cli.stdin.take().unwrap();
        stdin.write_all(b"echo admin-cli-$((6*7))\n").await.unwrap();
    }
    let out = tokio::time::timeout(common::WAIT, cli.wait_with_output())
        .await
        .expect("the admin console CLI did not finish")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("admin-cli-42"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("you hold the keyboard") || stderr.contains("took the keyboard over"),
        "{stderr}"
    );

    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !stack
        .audit()
        .iter()
        .any(|l| l["ticket"] == "admin:token" && l["event"] == "session_end")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "admin console not audited: {:?}",
            stack.audit()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long after `since` the gateway closed `conn` (EOF, or the TLS
/// session cut), and what it sent before.
async fn closed_after(
    conn: &mut (impl tokio::io::AsyncRead + Unpin),
    since: std::time::Instant,
) -> (Duration, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, conn.read_to_end(&mut all))
        .await
        .expect("a silent client was kept");
    (since.elapsed(), all)
}

#[tokio::test]
async fn silent_clients_are_dropped_at_the_handshake_deadline() {
    use std::sync::Arc;
    // The default deadline is 10 s: a close well before that shows the
    // setting is what closed the connection.
    const DEADLINE: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_secs(3);
    let stack = Stack::start_secure(|l| l.handshake_deadline_secs = DEADLINE.as_secs()).await;
    let in_bounds = |what: &str, took: Duration| {
        // The gateway's clock starts after ours (accept, or its side of
        // the handshake), so the close is never earlier than the deadline;
        // a few ms of slack is for timer rounding.
        assert!(
            took + Duration::from_millis(50) >= DEADLINE && took <= DEADLINE + MARGIN,
            "{what}: closed after {took:?}, not within [{DEADLINE:?}, {:?}]",
            DEADLINE + MARGIN
        );
    };

    // TCP only: no TLS ClientHello ever comes.
    let start = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(stack.gw_addr).await.unwrap();
    let (took, sent) = closed_after(&mut tcp, start).await;
    assert!(
        sent.is_empty(),
        "the gateway sent {sent:?} to a silent client"
    );
    in_bounds("no ClientHello", took);

    // TLS done (HTTP/2 agreed), then no request at all.
    let roots = vmgate_tls::load_roots(&stack.state.public_ca()).unwrap();
    let connect = |alpn: &'static [u8]| {
        let cfg = vmgate_tls::client_config(roots.clone(), &[alpn]).unwrap();
        async move {
            let tcp = tokio::net::TcpStream::connect(stack.gw_addr).await.unwrap();
            let name = vmgate_tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
            tls
        }
    };
    let mut tls = connect(b"h2").await;
    let start = std::time::Instant::now();
    // (HTTP/2's SETTINGS may come first: only the close time matters.)
    in_bounds(
        "no request after TLS",
        closed_after(&mut tls, start).await.0,
    );

    // TLS done (HTTP/1.1), then a request head that never ends: a header
    // line every 300 ms, for longer than the deadline (slowloris).
    let tls = connect(b"http/1.1").await;
    let start = std::time::Instant::now();
    let (mut rx, mut tx) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
        for i in 0..20 {
            if tx.write_all(&head).await.is_err() || tx.flush().await.is_err() {
                return;
            }
            head = format!("x-slow-{i}: 1\r\n").into_bytes();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let (took, sent) = closed_after(&mut rx, start).await;
    trickle.abort();
    eprintln!("a request head that never ends: closed after {took:?}, sent {sent:?}");
    in_bounds("a request head that never ends", took);
    assert!(
        !String::from_utf8_lossy(&sent).contains("200 OK"),
        "answered an unfinished request: {sent:?}"
    );
    assert!(
        !stack.log("gateway.log").contains("panicked"),
        "{}",
        stack.log("gateway.log")
    );
}

/// Serves `page` (as it is at each request) at `/page.html` over plain
/// HTTP and passes every `/report?…` query to `reports`.
async fn serve_page(
    page: std::sync::Arc<std::sync::Mutex<String>>,
    reports: tokio::sync::mpsc::UnboundedSender<String>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            let page = page.clone();
            let reports = reports.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                let resp = if let Some(q) = target.strip_prefix("/report?") {
                    let _ = reports.send(q.to_string());
                    "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
                } else if target == "/page.html" {
                    let page = page.lock().unwrap().clone();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// Opens `url` in headless Chromium and returns the first report its page
/// sends, killing the browser afterwards.
async fn chromium_report(
    stack: &Stack,
    url: &str,
    reports: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut browser = tokio::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            // The gateway's certificate is from the test's own CA.
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting chromium");
    let got = tokio::time::timeout(common::WAIT, reports.recv()).await;
    let _ = browser.kill().await;
    match got {
        Ok(Some(r)) => r,
        _ => panic!(
            "the page never reported; gateway log:\n{}",
            stack.log("gateway.log")
        ),
    }
}

#[tokio::test]
async fn a_page_from_another_site_cannot_open_a_console_in_chromium() {
    let mut stack = Stack::start_secure(|_| {}).await;
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    // The attacker's page: it has a valid ticket (say, phished) and tries
    // to ride the user's browser into the console.
    let attack = |ws_url: &str| {
        format!(
            r#"<!doctype html><script>
        const report = s => fetch("/report?" + encodeURIComponent(s));
        const ws = new WebSocket({ws_url:?});
        ws.onopen = () => report("open");
        ws.onclose = e => report("closed " + e.code);
        </script>"#
        )
    };
    let t = stack.ticket("demo", &["serial0"], true);
    let page = std::sync::Arc::new(std::sync::Mutex::new(attack(&t.ws_url)));
    let site = serve_page(page.clone(), tx).await;
    let page_url = format!("http://{site}/page.html");
    let r = chromium_report(&stack, &page_url, &mut reports).await;
    assert_eq!(r, "closed%201006", "a foreign page opened a console");
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"origin\"}"),
        1,
        "{m}"
    );

    // The same page, once its origin is allowed, does open it: the refusal
    // above was the Origin check and nothing else.
    stack
        .restart_gateway(|cfg| cfg.limits.allowed_origins = vec![format!("http://{site}")])
        .await;
    // A ticket minted after the restart (one from before it is refused).
    let t = stack.ticket("demo", &["serial0"], true);
    *page.lock().unwrap() = attack(&t.ws_url);
    let r = chromium_report(&stack, &page_url, &mut reports).await;
    assert_eq!(r, "open");
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

/// Reads until the session has received at least `n` bytes in all.
async fn read_to(s: &mut Session, n: usize) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while s.output.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.next_event(left).await {
            common::Event::Timeout | common::Event::Closed(..) => {
                panic!("{} of {n} bytes, then {:?}", s.output.len(), s.closed)
            }
            _ => {}
        }
    }
}

/// A viewer's byte stream: a console WebSocket, or a stream opened at the
/// agent itself.
trait Viewer {
    fn received(&self) -> &[u8];
    async fn send_bytes(&mut self, b: &[u8]);
    /// Reads until at least `n` bytes were received in all.
    async fn read_to(&mut self, n: usize);
}

impl Viewer for Session {
    fn received(&self) -> &[u8] {
        &self.output
    }
    async fn send_bytes(&mut self, b: &[u8]) {
        self.send(b).await
    }
    async fn read_to(&mut self, n: usize) {
        read_to(self, n).await
    }
}

/// The RFB handshake of a viewer, then SetEncodings and an update request
/// (not input: they pass); returns the bytes sent.
async fn rfb_handshake(s: &mut impl Viewer) -> usize {
    s.read_to(12).await;
    assert_eq!(&s.received()[..12], b"RFB 003.008\n");
    s.send_bytes(b"RFB 003.008\n").await;
    s.read_to(13).await;
    let n = s.received()[12] as usize;
    s.read_to(13 + n).await;
    assert!(
        s.received()[13..13 + n].contains(&1),
        "security None offered"
    );
    s.send_bytes(&[1]).await;
    s.read_to(13 + n + 4).await;
    assert_eq!(
        &s.received()[13 + n..17 + n],
        &[0, 0, 0, 0],
        "security result OK"
    );
    s.send_bytes(&[0]).await;
    let init = 17 + n;
    s.read_to(init + 24).await;
    let name = &s.received()[init + 20..init + 24];
    let name_len = u32::from_be_bytes([name[0], name[1], name[2], name[3]]) as usize;
    s.read_to(init + 24 + name_len).await;
    s.send_bytes(&[2, 0, 0, 1, 0, 0, 0, 0]).await;
    s.send_bytes(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await;
    12 + 1 + 1 + 8 + 10
}

#[tokio::test]
async fn an_admin_read_only_vnc_console_never_reaches_the_guest() {
    let stack = Stack::start_secure(|_| {}).await;
    let url = format!(
        "{}/v1/console/demo/vnc?read_only=true",
        stack.admin_url().replacen("https://", "wss://", 1)
    );
    let mut vnc = Session::new(
        vmgate::admin_client::console(&url, &stack.admin_token())
            .await
            .unwrap(),
    );
    let mut non_input = rfb_handshake(&mut vnc).await;
    // Keys typing a command, a click, a paste, a QEMU extended key event.
    let line = "echo adminro-$((2+3)) > /dev/ttyS0\r";
    let mut keys = 0;
    for ch in line.chars() {
        let sym = if ch == '\r' { 0xff0d } else { ch as u32 };
        for down in [1u8, 0] {
            let mut m = vec![4, down, 0, 0];
            m.extend_from_slice(&sym.to_be_bytes());
            vnc.send(&m).await;
            keys += 1;
        }
    }
    vnc.send(&[5, 1, 0, 100, 0, 100]).await;
    vnc.send(&[5, 0, 0, 100, 0, 100]).await;
    vnc.send(&[6, 0, 0, 0, 0, 0, 0, 4, b'l', b's', b'\r', b'\n'])
        .await;
    vnc.send(&[255, 0, 0, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0x53])
        .await;
    let dropped = keys + 2 + 1 + 1;
    // The session still works: an update request is answered.
    let before = vnc.output.len();
    vnc.send(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await;
    non_input += 10;
    read_to(&mut vnc, before + 1).await;
    drop(vnc);

    // The agent got the handshake and the update requests, not one byte of
    // input; the gateway's RFB filter counted what it dropped.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let (agent_line, gw_line) = loop {
        let agent = plain(&stack.log("agent.log"));
        let gw = plain(&stack.log("gateway.log"));
        let a = agent
            .lines()
            .find(|l| l.contains("session ended") && l.contains("channel=vnc"))
            .map(str::to_string);
        let g = gw
            .lines()
            .find(|l| l.contains("session ended") && l.contains("channel=vnc"))
            .map(str::to_string);
        if let (Some(a), Some(g)) = (a, g) {
            break (a, g);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ended VNC session:\nagent:\n{agent}\ngateway:\n{gw}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        agent_line.contains(&format!("to_guest={non_input} ")),
        "the guest's VNC server got more than {non_input} non-input bytes: {agent_line}"
    );
    assert!(
        gw_line.contains(&format!("input_dropped={dropped}")),
        "the gateway did not drop the {dropped} input messages: {gw_line}"
    );
}

/// A QUIC client to the stack's agent presenting `id` and trusting the
/// agent CA: opens a console stream on `demo`'s serial console with
/// `force` and returns the agent's first frame, or how the connection
/// ended.
async fn open_on_agent(
    stack: &Stack,
    id: &vmgate_tls::Identity,
) -> Result<vmgate_wire::Frame, quinn::ConnectionError> {
    use vmgate_wire::{Frame, Mode, OpenRequest, StreamKind};
    let tls =
        vmgate_tls::mtls_client_config(id, &stack.state.path("agent-ca.pem"), &[vmgate_wire::ALPN])
            .unwrap();
    let client = vmgate_tls::quic_client(tls).unwrap();
    let attempt = async {
        let conn = client
            .connect(stack.agent_addr, "localhost")
            .unwrap()
            .await?;
        let (mut tx, mut rx) = conn.open_bi().await?;
        let req = OpenRequest {
            kind: StreamKind::Console,
            session: 7,
            guest: "demo".into(),
            channel: "serial0".into(),
            mode: Mode::Interactive,
            force: true,
        };
        let mut buf = bytes::BytesMut::new();
        let first = async {
            tx.write_all(&req.encode()).await.ok()?;
            loop {
                if let Some(f) = Frame::decode(&mut buf).ok()? {
                    return Some(f);
                }
                let chunk = rx.read_chunk(64 * 1024, true).await.ok()??;
                buf.extend_from_slice(&chunk.bytes);
            }
        };
        match first.await {
            Some(f) => Ok(f),
            None => Err(conn.closed().await),
        }
    };
    tokio::time::timeout(common::WAIT, attempt)
        .await
        .expect("the agent neither answered nor refused")
}

/// A console stream opened at the stack's agent directly over QUIC, as a
/// gateway would (the gateway's client certificate): none of the gateway's
/// filtering is on its path.
struct AgentStream {
    tx: quinn::SendStream,
    rx: quinn::RecvStream,
    buf: bytes::BytesMut,
    output: Vec<u8>,
    _conn: (quinn::Connection, quinn::Endpoint),
}

impl AgentStream {
    async fn open(
        stack: &Stack,
        channel: &str,
        mode: vmgate_wire::Mode,
        session: u64,
    ) -> AgentStream {
        use vmgate_wire::{Frame, OpenRequest, StreamKind};
        let id = vmgate_tls::Identity {
            cert: stack.state.path("gateway-client.pem"),
            key: stack.state.path("gateway-client.key"),
        };
        let tls = vmgate_tls::mtls_client_config(
            &id,
            &stack.state.path("agent-ca.pem"),
            &[vmgate_wire::ALPN],
        )
        .unwrap();
        let client = vmgate_tls::quic_client(tls).unwrap();
        let conn = client
            .connect(stack.agent_addr, "localhost")
            .unwrap()
            .await
            .expect("connecting to the agent");
        let (mut tx, rx) = conn.open_bi().await.unwrap();
        let req = OpenRequest {
            kind: StreamKind::Console,
            session,
            guest: stack.name.clone(),
            channel: channel.into(),
            mode,
            force: false,
        };
        tx.write_all(&req.encode()).await.unwrap();
        let mut s = AgentStream {
            tx,
            rx,
            buf: bytes::BytesMut::new(),
            output: Vec::new(),
            _conn: (conn, client),
        };
        match s.next_frame().await {
            Some(Frame::Opened) => s,
            other => panic!("the agent did not open {channel}: {other:?}"),
        }
    }

    /// The agent's next frame; `None` when the stream ended.
    async fn next_frame(&mut self) -> Option<vmgate_wire::Frame> {
        let read = async {
            loop {
                if let Some(f) = vmgate_wire::Frame::decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                let chunk = self.rx.read_chunk(64 * 1024, true).await.ok()??;
                self.buf.extend_from_slice(&chunk.bytes);
            }
        };
        tokio::time::timeout(common::WAIT, read)
            .await
            .expect("the agent sent nothing in time")
    }
}

impl Viewer for AgentStream {
    fn received(&self) -> &[u8] {
        &self.output
    }
    async fn send_bytes(&mut self, b: &[u8]) {
        let mut out = bytes::BytesMut::new();
        vmgate_wire::Frame::Data(bytes::Bytes::copy_from_slice(b)).encode(&mut out);
        self.tx.write_all(&out).await.unwrap();
    }
    async fn read_to(&mut self, n: usize) {
        while self.output.len() < n {
            match self.next_frame().await {
                Some(vmgate_wire::Frame::Data(d)) => self.output.extend_from_slice(&d),
                Some(vmgate_wire::Frame::Notice(_)) => {}
                other => panic!("{} of {n} bytes, then {other:?}", self.output.len()),
            }
        }
    }
}

/// Key events typing `text` on a US keyboard (Shift held for shifted
/// characters), then Enter.
fn rfb_keys(text: &str) -> Vec<[u8; 8]> {
    const SHIFT_L: u32 = 0xffe1;
    let key = |sym: u32, down: bool| {
        let s = sym.to_be_bytes();
        [4, down as u8, 0, 0, s[0], s[1], s[2], s[3]]
    };
    let mut out = Vec::new();
    for ch in text.chars() {
        let shifted = ch.is_ascii_uppercase() || "!@#$%^&*()_+{}|:\"<>?~".contains(ch);
        if shifted {
            out.push(key(SHIFT_L, true));
        }
        out.push(key(ch as u32, true));
        out.push(key(ch as u32, false));
        if shifted {
            out.push(key(SHIFT_L, false));
        }
    }
    out.push(key(0xff0d, true));
    out.push(key(0xff0d, false));
    out
}

/// Hole 9, defence in depth: a read-only VNC stream opened at the agent
/// itself, with the gateway's credentials but none of its filtering, types
/// a command, clicks, pastes and sends a QEMU key event. The guest runs
/// none of it, while the same viewer still sees the screen and an
/// interactive stream's command does run. The agent counts what it
/// dropped, and QEMU got exactly the handshake and the update requests.
#[tokio::test]
async fn a_read_only_vnc_stream_opened_at_the_agent_never_reaches_the_guest() {
    use vmgate_wire::Mode;
    let stack = Stack::start().await;
    let t = stack.ticket("demo", &["serial0"], true);
    let mut serial = Session::new(stack.connect(&t.ws_url).await);
    serial.expect_notice("read-only").await;

    let mut ro = AgentStream::open(&stack, "vnc", Mode::ReadOnly, 900_001).await;
    let mut non_input = rfb_handshake(&mut ro).await;
    let keys = rfb_keys("echo agentro-$((2+3)) > /dev/ttyS0");
    for k in &keys {
        ro.send_bytes(k).await;
    }
    ro.send_bytes(&[5, 1, 0, 100, 0, 100]).await;
    ro.send_bytes(&[5, 0, 0, 100, 0, 100]).await;
    ro.send_bytes(&[6, 0, 0, 0, 0, 0, 0, 4, b'l', b's', b'\r', b'\n'])
        .await;
    ro.send_bytes(&[255, 0, 0, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0x53])
        .await;
    let dropped = keys.len() + 2 + 1 + 1;
    // Still a viewer: an update request after all that is answered, so
    // QEMU has also processed whatever came before it.
    let before = ro.output.len();
    ro.send_bytes(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await;
    non_input += 10;
    ro.read_to(before + 1).await;

    // An interactive stream's command runs (the test can see a key work).
    let mut rw = AgentStream::open(&stack, "vnc", Mode::Interactive, 900_002).await;
    rfb_handshake(&mut rw).await;
    for k in rfb_keys("echo agentrw-$((3+4)) > /dev/ttyS0") {
        rw.send_bytes(&k).await;
    }
    serial.expect("agentrw-7").await;
    assert!(
        !serial.text().contains("agentro-5"),
        "a read-only stream's keys ran:\n{}",
        serial.text()
    );
    drop((ro, rw));

    let deadline = tokio::time::Instant::now() + common::WAIT;
    let line = loop {
        let agent = plain(&stack.log("agent.log"));
        if let Some(l) = agent
            .lines()
            .find(|l| l.contains("session ended") && l.contains("session=900001 "))
        {
            break l.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ended read-only VNC session:\n{agent}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        line.contains(&format!("to_guest={non_input} ")),
        "QEMU got more than the {non_input} non-input bytes: {line}"
    );
    assert!(
        line.contains(&format!("input_dropped={dropped}")),
        "the agent did not count the {dropped} input messages it dropped: {line}"
    );
}

/// Runs `vmgate ARGS` and expects it to refuse to start; returns stderr.
async fn refused_at_start(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        common::WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_vmgate"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("vmgate {args:?} kept running"))
    .unwrap();
    assert!(!out.status.success(), "vmgate {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A TCP + TLS connection to the stack's agent's TCP listener (the
/// session transport `"tcp"`), presenting `id` (or no certificate) and
/// trusting the agent CA: opens a console on `demo`'s serial console with
/// `force` and returns the agent's first frame, or the error that ended
/// the attempt.
async fn open_on_agent_tcp(
    stack: &Stack,
    id: Option<&vmgate_tls::Identity>,
) -> Result<vmgate_wire::Frame, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use vmgate_wire::{Frame, Mode, OpenRequest, StreamKind};
    let ca = stack.state.path("agent-ca.pem");
    let alpn = &[vmgate_wire::TCP_ALPN];
    let tls = match id {
        Some(id) => vmgate_tls::mtls_client_config(id, &ca, alpn).unwrap(),
        None => vmgate_tls::client_config(vmgate_tls::load_roots(&ca).unwrap(), alpn).unwrap(),
    };
    let attempt = async {
        let mut conn = vmgate_tls::TcpLinkClient::new(tls)
            .connect(stack.agent_addr, "localhost")
            .await
            .map_err(|e| e.to_string())?;
        let req = OpenRequest {
            kind: StreamKind::Console,
            session: 8,
            guest: "demo".into(),
            channel: "serial0".into(),
            mode: Mode::Interactive,
            force: true,
        };
        // TLS 1.3: the client's certificate is checked after the client
        // finished its part of the handshake; a refusal shows on the
        // first read.
        conn.write_all(&req.encode())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = bytes::BytesMut::new();
        loop {
            if let Some(f) = Frame::decode(&mut buf).map_err(|e| e.to_string())? {
                return Ok(f);
            }
            if conn.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("the agent closed the connection".to_string());
            }
        }
    };
    tokio::time::timeout(common::WAIT, attempt)
        .await
        .expect("the agent neither answered nor refused")
}

/// Hole 1: root on one node takes that node's agent certificate and key
/// and connects, as a gateway would, to another node's agent. The running
/// `vmgate agent` refuses it in the TLS certificate check (the certificate
/// is serverAuth only and from the agent CA, not the gateway-client CA),
/// over QUIC and over its TCP listener alike, while the gateway's client
/// certificate, in the same test, opens the same console over both. Over
/// TCP a client without a certificate is refused in its handshake too,
/// and one that never speaks is closed at the 10 s handshake deadline;
/// each refusal is logged with its reason and count. A configuration of
/// the old single-CA layout does not start, on either side, and says what
/// to change.
#[tokio::test]
async fn a_nodes_certificate_opens_no_console_on_an_agent_and_one_ca_layouts_do_not_start() {
    use vmgate_tls::pki::{write_identity, Ca};
    let stack = Stack::start_full(
        common::Backend::Qemu,
        true,
        |_| {},
        |agent| agent.tcp_sessions = true,
        |_, _| {},
    )
    .await;
    let state = &stack.state;
    // A client that connects over TCP and never starts its handshake;
    // measured at the end of the test.
    let silent_from = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(stack.agent_addr)
        .await
        .unwrap();
    let silent_closed = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 16];
        let n = silent.read(&mut b).await.unwrap_or(0);
        (n, silent_from.elapsed())
    });
    // Every node's certificate comes from the agent CA: this one stands
    // for node A's.
    let node = vmgate_tls::Identity {
        cert: state.path("agent.pem"),
        key: state.path("agent.key"),
    };
    let err = open_on_agent(&stack, &node)
        .await
        .expect_err("a node's certificate opened a console");
    let quinn::ConnectionError::ConnectionClosed(close) = &err else {
        panic!("not refused in the handshake: {err}");
    };
    // TLS alert 43, unsupported_certificate: the certificate check.
    assert_eq!(u64::from(close.error_code), 0x100 + 43, "{err}");
    stack
        .wait_log("agent.log", common::WAIT, "certificate refusal", |l| {
            l.contains("gateway handshake failed")
                && l.contains("invalid peer certificate")
                && l.contains("client authentication")
        })
        .await;

    let gateway = vmgate_tls::Identity {
        cert: state.path("gateway-client.pem"),
        key: state.path("gateway-client.key"),
    };
    let first = open_on_agent(&stack, &gateway).await.unwrap();
    assert_eq!(first, vmgate_wire::Frame::Opened);

    // The same over the agent's TCP listener: the node's certificate is
    // refused (alert 43, unsupported_certificate), as is no certificate
    // at all (alert 116, certificate_required), each at once; the
    // gateway's opens the console.
    let err = open_on_agent_tcp(&stack, Some(&node))
        .await
        .expect_err("a node's certificate opened a console over TCP");
    assert!(err.contains("UnsupportedCertificate"), "{err}");
    let started = std::time::Instant::now();
    let err = open_on_agent_tcp(&stack, None)
        .await
        .expect_err("a client without a certificate opened a console over TCP");
    assert!(err.contains("CertificateRequired"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    stack
        .wait_log("agent.log", common::WAIT, "TCP certificate refusals", |l| {
            l.contains("gateway handshake failed")
                && l.contains("transport=\"tcp\"")
                && l.contains("reason=\"handshake_failed\"")
                && l.contains("refused=2")
                && l.contains("certificate")
        })
        .await;
    let first = open_on_agent_tcp(&stack, Some(&gateway)).await.unwrap();
    assert_eq!(first, vmgate_wire::Frame::Opened);
    // The silent client: closed by the agent at its handshake deadline.
    let (n, after) = tokio::time::timeout(common::WAIT, silent_closed)
        .await
        .expect("a silent TCP client was never closed")
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        after >= Duration::from_secs(10) && after < Duration::from_secs(13),
        "a silent client was closed after {after:?}, not at the 10 s deadline"
    );
    stack
        .wait_log("agent.log", common::WAIT, "TCP deadline refusal", |l| {
            l.contains("gateway handshake timed out")
                && l.contains("reason=\"handshake_deadline\"")
                && l.contains("refused=1")
        })
        .await;

    // The old layout: one internal CA, leaves for both purposes.
    let dir = stack.dir.path();
    let one = Ca::new("internal").unwrap();
    let ca = one.write_cert(&dir.join("internal-ca.pem")).unwrap();
    let both = || {
        vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ]
    };
    let (c, k) = one.issue_with(&["localhost"], both()).unwrap();
    let old_agent = write_identity(dir, "old-agent", &c, &k).unwrap();
    let (c, k) = one.issue_with(&["vmgate-gateway"], both()).unwrap();
    let old_gw = write_identity(dir, "old-gateway", &c, &k).unwrap();

    let mut cfg = state.agent_config("127.0.0.1:0".parse().unwrap(), vec![]);
    cfg.tls.cert = old_agent.cert;
    cfg.tls.key = old_agent.key;
    cfg.tls.gateway_ca = ca.clone();
    let path = dir.join("old-agent.toml");
    vmgate::state::write_toml(&path, &cfg).unwrap();
    let stderr = refused_at_start(&["agent", "--config", path.to_str().unwrap()]).await;
    assert!(
        stderr.contains("chains to [tls] gateway_ca") && stderr.contains("gateway-client CA"),
        "{stderr}"
    );

    let mut cfg = state.gateway_config("127.0.0.1:0".parse().unwrap(), &[stack.agent_addr]);
    cfg.agents.ca = ca;
    cfg.agents.cert = old_gw.cert;
    cfg.agents.key = old_gw.key;
    let path = dir.join("old-gateway.toml");
    vmgate::state::write_toml(&path, &cfg).unwrap();
    let stderr = refused_at_start(&["gateway", "--config", path.to_str().unwrap()]).await;
    assert!(
        stderr.contains("chains to [agents] ca") && stderr.contains("gateway-client CA"),
        "{stderr}"
    );
}

/// A WebSocket to the admin listener's `url` with the bearer token and
/// extra request headers; the handshake's error if it was refused.
async fn admin_ws_with(
    stack: &Stack,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    String,
> {
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let token = stack.admin_token().token.unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let addr = stack.gw_cfg.admin.as_ref().unwrap().listen;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let roots = vmgate_tls::load_roots(&stack.state.path("admin-server-ca.pem")).unwrap();
    let tls = vmgate_tls::client_config(roots, &[b"http/1.1"]).unwrap();
    let host = req.uri().host().unwrap().to_string();
    let name = vmgate_tls::rustls::pki_types::ServerName::try_from(host).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_admin_listener_refuses_every_request_from_a_browser_page_not_allowed() {
    let mut stack = Stack::start_secure(|_| {}).await;
    let url = format!(
        "{}/v1/console/demo/serial0?force=true",
        stack.admin_url().replacen("https://", "wss://", 1)
    );
    // Valid credentials, but sent by a page on another site: refused
    // before anything opens, and counted.
    for origin in ["https://evil.example", &stack.admin_url()] {
        let err = admin_ws_with(&stack, &url, &[("origin", origin)])
            .await
            .expect_err("a page got the admin console");
        assert!(err.contains("403"), "{err}");
    }
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"admin_origin\"}"),
        2,
        "{m}"
    );
    assert!(stack.log("gateway.log").contains("Origin not allowed"));
    // Without Origin (the CLI, scripts) the same request works.
    let mut s = Session::new(admin_ws_with(&stack, &url, &[]).await.unwrap());
    s.send(b"echo no-origin-$((7*7))\n").await;
    s.expect("no-origin-49").await;
    drop(s);
    // An origin the operator allowed works too.
    stack
        .restart_gateway(|cfg| {
            cfg.admin.as_mut().unwrap().allowed_origins = vec!["https://ops.example".into()]
        })
        .await;
    let ws = admin_ws_with(&stack, &url, &[("origin", "https://ops.example")]).await;
    let mut s = Session::new(ws.expect("an allowed origin"));
    s.send(b"echo allowed-origin-$((8*8))\n").await;
    s.expect("allowed-origin-64").await;
}

#[tokio::test]
async fn names_with_control_characters_are_refused_and_logged_escaped() {
    let stack = Stack::start_secure(|_| {}).await;
    let t = stack.ticket("demo", &["serial0"], false);
    let evil = "evil%0aFORGED-LINE%1b]0;pwned%07%1b[31m";
    for url in [
        format!(
            "wss://{}/ws/{evil}/serial0?ticket={}",
            stack.gw_addr, t.ticket
        ),
        format!("wss://{}/ws/demo/{evil}?ticket={}", stack.gw_addr, t.ticket),
    ] {
        let (code, reason) = Session::new(stack.connect(&url).await).closed().await;
        assert_eq!(code, 4400, "{reason}");
        assert!(
            reason.starts_with("invalid guest or channel name: use 1 to 128 letters"),
            "{reason}"
        );
    }
    // The admin listener refuses them as well.
    let url = format!(
        "{}/v1/console/{evil}/serial0",
        stack.admin_url().replacen("https://", "wss://", 1)
    );
    let err = admin_ws_with(&stack, &url, &[]).await.expect_err("opened");
    assert!(err.contains("400"), "{err}");
    let log = stack.log("gateway.log");
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("invalid guest or channel name"))
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    for l in &refusals {
        assert!(
            l.contains(r"evil\u{a}FORGED-LINE\u{1b}]0;pwned\u{7}\u{1b}[31m"),
            "{l}"
        );
    }
    // Nothing of the names reached the log raw: no forged line, no
    // terminal escape (tracing's own colour codes are `ESC[`…`m` only).
    assert!(!log.lines().any(|l| l.starts_with("FORGED-LINE")), "{log}");
    assert!(!log.contains("\x1b]0;pwned"), "{log}");
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"invalid_name\"}"),
        3,
        "{m}"
    );
    // The ticket was not used up by the refused attempts.
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    s.expect_notice("keyboard").await;
}

/// A ticket minted straight with the signing key, as a minter could sign
/// it, whatever `vmgate ticket` or `vmgate admin` would allow.
fn mint_raw(stack: &Stack, guest: &str, channels: &[&str], max_session: Option<u64>) -> String {
    let key = vmgate_ticket::SigningKey::load(stack.state.signing_key()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = vmgate_ticket::Claims::new(
        guest,
        channels.iter().copied(),
        vmgate_ticket::Mode::Interactive,
        now,
        60,
        max_session,
    );
    vmgate_ticket::mint(&key, &claims)
}

/// `POST /api/session` on the public listener: the web page's redemption.
async fn page_session(stack: &Stack, ticket: &str) -> vmgate::admin_client::Answer {
    let creds = AdminCreds {
        ca: stack.state.public_ca(),
        cert: None,
        token: None,
    };
    request(
        Method::POST,
        &format!("https://{}/api/session", stack.gw_addr),
        Some(&serde_json::json!({ "ticket": ticket })),
        &creds,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_huge_max_session_neither_panics_nor_breaks_the_web_console_for_the_next_user() {
    let stack = Stack::start_secure(|_| {}).await;
    for huge in [u64::MAX, u64::MAX / 2, 1 << 40] {
        // Straight to the WebSocket.
        let t = mint_raw(&stack, "demo", &["serial0"], Some(huge));
        let url = format!("wss://{}/ws/demo/serial0?ticket={t}", stack.gw_addr);
        let mut s = Session::new(stack.connect(&url).await);
        s.expect_notice("keyboard").await;
        s.send(format!("echo huge-{}\n", huge % 1000).as_bytes())
            .await;
        s.expect(&format!("huge-{}", huge % 1000)).await;
        drop(s);
        // Through the web page's session.
        let t = mint_raw(&stack, "demo", &["serial0"], Some(huge));
        let a = page_session(&stack, &t).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v: serde_json::Value = a.json().unwrap();
        let url = format!(
            "wss://{}/ws/demo/serial0?session={}",
            stack.gw_addr,
            v["session"].as_str().unwrap()
        );
        let mut s = Session::new(stack.connect(&url).await);
        s.expect_notice("keyboard").await;
    }
    // The next user's web console still works.
    let t = mint_raw(&stack, "demo", &["serial0"], Some(60));
    let a = page_session(&stack, &t).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = a.json().unwrap();
    let url = format!(
        "wss://{}/ws/demo/serial0?session={}",
        stack.gw_addr,
        v["session"].as_str().unwrap()
    );
    let mut s = Session::new(stack.connect(&url).await);
    s.expect_notice("keyboard").await;
    s.send(b"echo next-user-$((9*9))\n").await;
    s.expect("next-user-81").await;
    assert!(!stack.log("gateway.log").contains("panicked"));
}

#[tokio::test]
async fn a_read_only_ticket_with_force_cannot_take_the_keyboard_over() {
    let stack = Stack::start_secure(|_| {}).await;
    let mut holder = stack.serial().await;
    holder.expect_notice("you hold the keyboard").await;
    let ro = stack.ticket("demo", &["serial0"], true);
    let mut watcher = Session::new(stack.connect(&format!("{}&force=true", ro.ws_url)).await);
    watcher.expect_notice("read-only").await;
    watcher.send(b"echo forced-$((5*5))\n").await;
    // The holder keeps the keyboard: its own line runs, and it comes after
    // the watcher's input would have, on the same console.
    holder.send(b"echo holder-$((6*6))\n").await;
    holder.expect("holder-36").await;
    watcher.expect("holder-36").await;
    assert!(!holder.text().contains("forced-25"), "{}", holder.text());
    assert!(
        !holder.notices.iter().any(|n| n.contains("taken over")),
        "{:?}",
        holder.notices
    );
}

#[tokio::test]
async fn sigterm_closes_every_session_with_going_away_and_the_gateway_exits_0() {
    use nix::sys::signal::{kill, Signal};
    let mut stack = Stack::start_secure(|_| {}).await;
    let mut a = stack.serial().await;
    a.expect_notice("keyboard").await;
    let t = stack.ticket("demo", &["serial0"], true);
    let mut b = Session::new(stack.connect(&t.ws_url).await);
    b.expect_notice("read-only").await;
    let url = format!(
        "{}/v1/console/demo/serial0",
        stack.admin_url().replacen("https://", "wss://", 1)
    );
    let mut admin = Session::new(admin_ws_with(&stack, &url, &[]).await.unwrap());
    admin
        .expect_notice("another session holds the keyboard")
        .await;

    let mut gw = stack.take_gateway().unwrap();
    let sent = std::time::Instant::now();
    kill(nix::unistd::Pid::from_raw(gw.id() as i32), Signal::SIGTERM).unwrap();
    let mut last_close = Duration::ZERO;
    for s in [&mut a, &mut b, &mut admin] {
        let (code, reason) = s.closed().await;
        last_close = sent.elapsed();
        assert_eq!(
            (code, reason.as_str()),
            (1001, "the gateway is shutting down")
        );
        // At once, not after the drain period.
        assert!(
            last_close < Duration::from_secs(2),
            "closed {last_close:?} after SIGTERM"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = gw.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Within the drain's bound (5 s) and the clients' close handshakes.
    assert!(
        exited < Duration::from_secs(6),
        "exited {exited:?} after SIGTERM"
    );
    // Not before it had closed every session.
    assert!(
        exited >= last_close,
        "exited {exited:?}, last close {last_close:?}"
    );
    assert!(stack.log("gateway.log").contains("gateway drained"));
}

/// SIGTERM of the agent: every session through it (a serial console's
/// keyboard holder and a watcher, a channel) is closed with 1001 and the
/// agent's reason at once, not 4502 "agent unreachable", and the agent
/// exits 0 within its drain bound.
#[tokio::test]
async fn sigterm_of_the_agent_closes_its_sessions_with_going_away_and_it_exits_0() {
    use nix::sys::signal::{kill, Signal};
    let mut stack = Stack::start().await;
    let mut a = stack.serial().await;
    a.expect_notice("keyboard").await;
    let t = stack.ticket("demo", &["serial0"], true);
    let mut b = Session::new(stack.connect(&t.ws_url).await);
    b.expect_notice("read-only").await;
    let t = stack.ticket("demo", &["test.echo"], false);
    let mut c = Session::new(stack.connect(&t.ws_url).await);
    // Open at the agent (the guest's echo loop need not be up for this).
    stack
        .wait_log("agent.log", common::WAIT, "the channel session", |l| {
            l.contains("session opened") && l.contains("test.echo")
        })
        .await;

    let mut agent = stack.take_agent().unwrap();
    let sent = std::time::Instant::now();
    kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    for s in [&mut a, &mut b, &mut c] {
        let (code, reason) = s.closed().await;
        let after = sent.elapsed();
        eprintln!("closed {code} {reason:?} {after:?} after SIGTERM");
        assert_eq!(
            (code, reason.as_str()),
            (1001, "the agent is shutting down")
        );
        // At once, not after the drain period.
        assert!(
            after < Duration::from_secs(2),
            "closed {after:?} after SIGTERM"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = agent.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = sent.elapsed();
    eprintln!("the agent exited {exited:?} after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Within the drain's bound (5 s) and the endpoint's close (1 s).
    assert!(
        exited < Duration::from_secs(7),
        "exited {exited:?} after SIGTERM"
    );
    // Drained, not cut off at the bound: every session's end was delivered.
    assert!(
        stack.log("agent.log").contains("agent drained"),
        "{}",
        stack.log("agent.log")
    );
}

/// A forged ticket (another key) for `demo`/`serial0` from `from`: checked
/// and refused, so it counts towards `from`'s throttle.
async fn send_forged(stack: &Stack, from: IpAddr) {
    let rogue = vmgate_ticket::SigningKey::generate();
    let claims = vmgate_ticket::Claims::new(
        "demo",
        ["serial0"],
        vmgate_ticket::Mode::Interactive,
        vmgate::tickets::now(),
        60,
        None,
    );
    let forged = vmgate_ticket::mint(&rogue, &claims);
    let url = format!("wss://{}/ws/demo/serial0?ticket={forged}", stack.gw_addr);
    let ws = stack.connect_as(&url, from, &[]).await.unwrap();
    let (code, reason) = Session::new(ws).closed().await;
    assert_eq!(code, 4401, "{reason}");
}

/// The embedded store (the default) keeps a gateway's rules across its
/// restarts: a used ticket stays used, a throttled address stays throttled
/// for the rest of its window, and tickets still unused keep working. A
/// new store (its file gone) starts a new epoch: every ticket issued before
/// it is refused, whether or not it was used.
#[tokio::test]
async fn a_used_ticket_and_a_throttled_address_stay_refused_after_a_gateway_restart() {
    let mut stack = Stack::start_secure(|l| l.failed_tickets_per_address = 2).await;
    let used = stack.ticket_with("demo", &["serial0"], false, Duration::from_secs(300), None);
    let unused = stack.ticket_with("demo", &["serial0"], true, Duration::from_secs(300), None);
    let mut s = Session::new(stack.connect(&used.ws_url).await);
    s.expect_notice("keyboard").await;
    drop(s);
    for _ in 0..2 {
        send_forged(&stack, OTHER).await;
    }
    stack.restart_gateway(|_| {}).await;
    let (code, reason) = Session::new(stack.connect(&used.ws_url).await)
        .closed()
        .await;
    assert_eq!(code, 4401, "{reason}");
    assert_eq!(
        reason,
        "ticket already used: tickets are single-use, mint a new one"
    );
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"replayed\"}"),
        1,
        "{m}"
    );
    // The unused one, minted before the restart, still works.
    Session::new(stack.connect(&unused.ws_url).await)
        .expect_notice("read-only")
        .await;
    // The address throttled before the restart still is, with a good ticket.
    let good = stack.ticket("demo", &["serial0"], true);
    let ws = stack.connect_as(&good.ws_url, OTHER, &[]).await.unwrap();
    let (code, reason) = Session::new(ws).closed().await;
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("too many failed tickets"), "{reason}");
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_refusals_total{reason=\"throttled\"}"),
        1,
        "{m}"
    );
    assert!(m.contains("vmgate_gateway_info{gateway=\""), "{m}");
    assert!(m.contains("store=\"embedded\"} 1"), "{m}");

    // A new store (the file gone): its epoch is now, so the record that
    // was lost cannot be replayed against it.
    let minted = stack.ticket_with("demo", &["serial0"], true, Duration::from_secs(300), None);
    let fresh_db = stack.state.path("gateway-new.redb");
    stack
        .restart_gateway(|cfg| cfg.store.path = Some(fresh_db))
        .await;
    let series = "vmgate_refusals_total{reason=\"issued_before_restart\"}";
    // (The harness's readiness probes may have been refused so too.)
    let before = metric(&stack.metrics().await, series);
    for t in [&used, &minted] {
        let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
        assert_eq!(code, 4401, "{reason}");
        assert_eq!(
            reason,
            "ticket issued before the gateway's ticket store began: mint a new one"
        );
    }
    let m = stack.metrics().await;
    assert_eq!(metric(&m, series), before + 2, "{m}");
    assert!(stack.log("gateway.log").contains("issued_before_restart"));
    // A fresh ticket works (with force: the agent may not have noticed yet
    // that the killed gateway's session, which held the keyboard, is gone).
    let fresh = stack.ticket("demo", &["serial0"], false);
    let mut s = Session::new(stack.connect(&format!("{}&force=true", fresh.ws_url)).await);
    s.expect_notice("keyboard").await;
    s.send(b"echo after-restart-$((4*11))\n").await;
    s.expect("after-restart-44").await;

    // A ticket living longer than the gateway allows is refused.
    stack
        .restart_gateway(|cfg| cfg.limits.max_ticket_ttl_secs = 120)
        .await;
    let long = stack.ticket_with("demo", &["serial0"], false, Duration::from_secs(121), None);
    let (code, reason) = Session::new(stack.connect(&long.ws_url).await)
        .closed()
        .await;
    assert_eq!(code, 4401, "{reason}");
    assert_eq!(
        reason,
        "ticket lives longer than this gateway allows (120s): mint a shorter one"
    );
    let ok = stack.ticket_with("demo", &["serial0"], true, Duration::from_secs(120), None);
    Session::new(stack.connect(&ok.ws_url).await)
        .expect_notice("read-only")
        .await;
}

/// Rotating the ticket signing key loses no session: the new verifying key
/// is added to the gateway (SIGHUP), tickets from both keys work, then the
/// old key is dropped (SIGHUP) and its tickets are refused; a new public
/// certificate is presented after the next SIGHUP; a session opened with an
/// old-key ticket before any of it keeps working.
#[tokio::test]
async fn the_ticket_key_and_the_certificate_rotate_on_sighup_without_losing_a_session() {
    let mut stack = Stack::start().await;
    let mut live = stack.serial().await;
    live.expect_notice("you hold the keyboard").await;
    let claims = |channel: &str| {
        vmgate_ticket::Claims::new(
            stack.name.as_str(),
            [channel],
            vmgate_ticket::Mode::ReadOnly,
            vmgate::tickets::now(),
            60,
            None,
        )
    };
    let url = |ticket: String| {
        format!(
            "wss://{}/ws/{}/serial0?ticket={ticket}",
            stack.gw_addr, stack.name
        )
    };
    let old = vmgate_minter::SigningKey::load(stack.state.signing_key()).unwrap();
    let new = vmgate_minter::SigningKey::generate();
    let new_pub = stack.state.path("ticket-new.pub");
    new.verifying_key().save(&new_pub).unwrap();
    let hup = |stack: &Stack| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(stack.gateway_pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    };
    let reloaded = |n: usize| {
        move |l: &str| {
            l.contains("ticket verifying keys reloaded") && l.contains(&format!("keys={n}"))
        }
    };

    // Before: a new-key ticket is refused.
    let s = Session::new(
        stack
            .connect(&url(vmgate_minter::sign(&new, &claims("serial0"))))
            .await,
    );
    let (code, reason) = {
        let mut s = s;
        s.closed().await
    };
    assert_eq!(code, 4401, "{reason}");
    // The refusal names the key the gateway does not have yet.
    assert!(
        reason.contains(&new.verifying_key().id()) && reason.contains("does not accept"),
        "{reason}"
    );

    // Step 1: the gateway accepts both keys.
    stack.gw_cfg.extra_ticket_public_keys = vec![new_pub.clone()];
    vmgate::state::write_toml(&stack.state.path("gateway.toml"), &stack.gw_cfg).unwrap();
    hup(&stack);
    stack
        .wait_log(
            "gateway.log",
            Duration::from_secs(5),
            "the reload with 2 keys",
            reloaded(2),
        )
        .await;
    for key in [&old, &new] {
        let mut s = Session::new(
            stack
                .connect(&url(vmgate_minter::sign(key, &claims("serial0"))))
                .await,
        );
        s.expect_notice("read-only").await;
    }

    // Step 2: the minter signs with the new key; the old one is dropped.
    stack.gw_cfg.ticket_public_key = new_pub;
    stack.gw_cfg.extra_ticket_public_keys = Vec::new();
    vmgate::state::write_toml(&stack.state.path("gateway.toml"), &stack.gw_cfg).unwrap();
    hup(&stack);
    stack
        .wait_log(
            "gateway.log",
            Duration::from_secs(5),
            "the reload with 1 key",
            reloaded(1),
        )
        .await;
    let mut s = Session::new(
        stack
            .connect(&url(vmgate_minter::sign(&old, &claims("serial0"))))
            .await,
    );
    let (code, reason) = s.closed().await;
    assert_eq!(code, 4401, "{reason}");
    assert!(
        reason.contains(&old.verifying_key().id()) && reason.contains("does not accept"),
        "{reason}"
    );
    let mut s = Session::new(
        stack
            .connect(&url(vmgate_minter::sign(&new, &claims("serial0"))))
            .await,
    );
    s.expect_notice("read-only").await;

    // A broken configuration on SIGHUP keeps the keys in use.
    std::fs::write(stack.state.path("gateway.toml"), "not toml").unwrap();
    hup(&stack);
    stack
        .wait_log(
            "gateway.log",
            Duration::from_secs(5),
            "the refused reload",
            |l| l.contains("configuration not reloaded"),
        )
        .await;
    let mut s = Session::new(
        stack
            .connect(&url(vmgate_minter::sign(&new, &claims("serial0"))))
            .await,
    );
    s.expect_notice("read-only").await;

    // Limits and allowed origins: a panel's page is refused before; after
    // a SIGHUP its origin passes, and the per-guest limit lowered to one
    // (the live session) refuses the session itself. A listener-level
    // limit changed says it needs a restart.
    let panel = [("origin", "https://panel.example")];
    let err = stack
        .connect_as(
            &url(vmgate_minter::sign(&new, &claims("serial0"))),
            LOCAL,
            &panel,
        )
        .await
        .expect_err("an origin not allowed yet");
    assert!(err.contains("403"), "{err}");
    stack.gw_cfg.limits.allowed_origins = vec!["https://panel.example".into()];
    stack.gw_cfg.limits.max_sessions_per_guest = 1;
    stack.gw_cfg.limits.http2_max_streams += 1;
    vmgate::state::write_toml(&stack.state.path("gateway.toml"), &stack.gw_cfg).unwrap();
    hup(&stack);
    // Earlier reloads logged "limits and allowed origins reloaded" too:
    // this one's own last line is the one naming the listener-level key,
    // logged once the new limits are in place.
    stack
        .wait_log(
            "gateway.log",
            Duration::from_secs(5),
            "the limits reload, naming http2_max_streams as applying after a restart",
            |l| l.contains("only after a restart") && l.contains("http2_max_streams"),
        )
        .await;
    let ws = stack
        .connect_as(
            &url(vmgate_minter::sign(&new, &claims("serial0"))),
            LOCAL,
            &panel,
        )
        .await
        .expect("the origin allowed on SIGHUP");
    let (code, reason) = Session::new(ws).closed().await;
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("maximum of 1 sessions"), "{reason}");

    // The public certificate: a new one (from a new CA) on SIGHUP. New
    // handshakes get it; the session already up keeps going.
    let new_ca = vmgate_tls::pki::Ca::new("rotated public CA").unwrap();
    let new_ca_pem = new_ca
        .write_cert(&stack.state.path("public-ca-new.pem"))
        .unwrap();
    let id = new_ca
        .issue_to(
            stack.dir.path(),
            "public-new",
            &["127.0.0.1", "localhost"],
            vmgate_tls::pki::Purpose::Server,
        )
        .unwrap();
    stack.gw_cfg.tls.cert = id.cert.clone();
    stack.gw_cfg.tls.key = id.key.clone();
    vmgate::state::write_toml(&stack.state.path("gateway.toml"), &stack.gw_cfg).unwrap();
    hup(&stack);
    stack
        .wait_log(
            "gateway.log",
            Duration::from_secs(5),
            "the certificate reload",
            |l| l.contains("TLS certificate reloaded") && l.contains("public-new.pem"),
        )
        .await;
    let handshake = |ca: std::path::PathBuf| {
        let addr = stack.gw_addr;
        async move {
            let roots = vmgate_tls::load_roots(&ca).unwrap();
            let cfg = vmgate_tls::client_config(roots, &[b"http/1.1"]).unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = vmgate_tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name, tcp)
                .await
        }
    };
    handshake(new_ca_pem)
        .await
        .expect("a new handshake presents the new certificate");
    handshake(stack.state.public_ca())
        .await
        .expect_err("the old certificate is no longer presented");

    // The session opened with an old-key ticket, over the old certificate,
    // before all of it.
    live.send(b"echo rotated-$((6*7))\n").await;
    live.expect("rotated-42").await;
}
