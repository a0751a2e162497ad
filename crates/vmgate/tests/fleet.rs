//! A fleet: a real HAProxy (Debian's, TCP mode, round robin) in front of
//! three `vmgate gateway` processes sharing a real `redis-server`, over one
//! agent and the real test guest. One stack for every check, in order:
//! single use across gateways, limits and throttling across gateways, an
//! administrator ending a session at another gateway, the fleet's session
//! list, the screen page in headless Chromium through HAProxy, and Redis
//! killed and restarted under open sessions.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{plain, Session, Stack};
use vmgate_testkit::{HaProxy, Redis};

const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const TIMEOUT_MS: u64 = 500;
const LEASE_SECS: u64 = 3;

/// `url` (a ticket URL of the stack's first gateway) at `to`.
fn at(stack: &Stack, url: &str, to: SocketAddr) -> String {
    url.replace(&stack.gw_addr.to_string(), &to.to_string())
}

/// A forged ticket (another key) for `guest`/`serial0` at `gw` from `from`.
async fn forged(stack: &Stack, gw: SocketAddr, from: IpAddr) -> (u16, String) {
    let rogue = vmgate_ticket::SigningKey::generate();
    let claims = vmgate_ticket::Claims::new(
        stack.name.as_str(),
        ["serial0"],
        vmgate_ticket::Mode::Interactive,
        vmgate::tickets::now(),
        60,
        None,
    );
    let t = vmgate_ticket::mint(&rogue, &claims);
    let url = format!("wss://{gw}/ws/{}/serial0?ticket={t}", stack.name);
    let ws = stack.connect_as(&url, from, &[]).await.unwrap();
    Session::new(ws).closed().await
}

/// `GET path` on an admin listener with the stack's token.
async fn admin_get(stack: &Stack, admin: SocketAddr, path: &str) -> String {
    let a = stack
        .admin(
            http::Method::GET,
            &format!("https://{admin}{path}"),
            &stack.admin_token(),
        )
        .await;
    assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    a.body
}

/// Runs tests/browser/screen.mjs on `url` over HTTP/1.1; its report.
async fn browser(url: &str, out: &Path, typed: &str) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run scripts/setup (scripts/deps.d/vnc.sh installs playwright-core)"
    );
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(dir.join("screen.mjs"))
            .env("VMGATE_URL", url)
            .env("VMGATE_OUT", out)
            .env("VMGATE_TYPE", typed)
            .env("VMGATE_HTTP1", "1")
            .stderr(Stdio::inherit())
            .output(),
    )
    .await
    .expect("the browser script finished")
    .expect("running node");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "browser output is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(report["ok"], true, "browser: {report:#}");
    report
}

#[tokio::test]
async fn three_gateways_behind_haproxy_share_one_redis_as_one_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path()).unwrap();
    let url = redis.url();
    let mut stack = Stack::start_secure_with(|cfg| {
        cfg.store.url = Some(url);
        cfg.store.timeout_ms = TIMEOUT_MS;
        cfg.store.lease_secs = LEASE_SECS;
        cfg.limits.max_sessions_per_guest = 3;
        // The two replays below count against 127.0.0.1: under this.
        cfg.limits.failed_tickets_per_address = 3;
    })
    .await;
    let gw1 = stack.gw_addr;
    let admin1 = stack.gw_cfg.admin.as_ref().unwrap().listen;
    // The two others: the same file, their own ports.
    let (gw2, admin2) = stack.spawn_gateway("gateway2").await;
    let (gw3, admin3) = stack.spawn_gateway("gateway3").await;
    let haproxy = HaProxy::start(dir.path(), &[gw1, gw2, gw3]).unwrap();
    let lb = haproxy.addr;
    // Each gateway knows the guest before the first session (the agent
    // serves every gateway at once).
    for admin in [admin1, admin2, admin3] {
        let deadline = Instant::now() + common::WAIT;
        while !admin_get(&stack, admin, "/v1/guests")
            .await
            .contains("running")
        {
            assert!(Instant::now() < deadline, "{admin} never routed the guest");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // 1. Single use across the fleet: redeemed at gw1, replayed at gw2, gw3.
    let t = stack.ticket(&stack.name, &["serial0"], true);
    let mut held = Session::new(stack.connect(&t.ws_url).await);
    held.expect_notice("read-only").await;
    for gw in [gw2, gw3] {
        let (code, reason) = Session::new(stack.connect(&at(&stack, &t.ws_url, gw)).await)
            .closed()
            .await;
        assert_eq!(code, 4401, "{reason}");
        assert_eq!(
            reason,
            "ticket already used: tickets are single-use, mint a new one"
        );
    }

    // 2. The per-guest limit (3) counts the fleet's sessions: one at each
    // of gw1 (held), gw2 and gw3, and a fourth is refused at any gateway.
    let mut on2 = Session::new(
        stack
            .connect(&at(
                &stack,
                &stack.ticket(&stack.name, &["serial0"], true).ws_url,
                gw2,
            ))
            .await,
    );
    on2.expect_notice("read-only").await;
    let interactive = stack.ticket(&stack.name, &["serial0"], false);
    let mut on3 = Session::new(stack.connect(&at(&stack, &interactive.ws_url, gw3)).await);
    on3.expect_notice("keyboard").await;
    for gw in [gw1, gw2, gw3] {
        let t = stack.ticket(&stack.name, &["serial0"], true);
        let (code, reason) = Session::new(stack.connect(&at(&stack, &t.ws_url, gw)).await)
            .closed()
            .await;
        assert_eq!(code, 4429, "{reason}");
        assert_eq!(
            reason,
            format!(
                "guest {} has its maximum of 3 sessions open: close one first",
                stack.name
            )
        );
    }

    // 3. The fleet's list, on gw1: the session on gw3 with its gateway; an
    // administrator at gw1 ends it, and gw3 closes it with today's reason.
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&admin_get(&stack, admin1, "/v1/sessions").await).unwrap();
    assert_eq!(list.len(), 3, "{list:#?}");
    let on_gw3: Vec<_> = list
        .iter()
        .filter(|s| {
            s["gateway"]
                .as_str()
                .is_some_and(|g| g.ends_with(&format!(":{}", gw3.port())))
        })
        .collect();
    assert_eq!(on_gw3.len(), 1, "{list:#?}");
    assert_eq!(on_gw3[0]["ticket"], interactive.id, "{list:#?}");
    let id = on_gw3[0]["id"].as_u64().unwrap();
    let asked = Instant::now();
    let a = stack
        .admin(
            http::Method::DELETE,
            &format!("https://{admin1}/v1/sessions/{id}"),
            &stack.admin_token(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let (code, reason) = on3.closed().await;
    let took = asked.elapsed();
    assert_eq!((code, reason.as_str()), (4412, "ended by administrator"));
    assert!(took < Duration::from_secs(2), "ended {took:?} after DELETE");
    drop(on2);
    // Released: the three gateways list the one session left, held at gw1.
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECS + 2);
    loop {
        let list = admin_get(&stack, admin3, "/v1/sessions").await;
        let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
        if list.len() == 1 {
            assert_eq!(list[0]["ticket"], t.id);
            break;
        }
        assert!(Instant::now() < deadline, "{list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 4. Throttling across the fleet: three forged tickets at gw1 from
    // 127.0.0.2, then a good ticket from there at gw3 is refused unchecked.
    for _ in 0..3 {
        let (code, reason) = forged(&stack, gw1, OTHER).await;
        assert_eq!(code, 4401, "{reason}");
    }
    let good = stack.ticket(&stack.name, &["serial0"], true);
    let ws = stack
        .connect_as(&at(&stack, &good.ws_url, gw3), OTHER, &[])
        .await
        .unwrap();
    let (code, reason) = Session::new(ws).closed().await;
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("too many failed tickets"), "{reason}");

    // 5. The screen page in Chromium through HAProxy, over HTTP/1.1: the
    // page session is minted on one gateway and its WebSockets join it on
    // others; keys typed into the screen run in the guest.
    let page = stack.ticket(&stack.name, &["vnc", "serial0"], false);
    let out = dir.path().join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let report = browser(
        &at(&stack, &page.url, lb),
        &out,
        "echo fleet-$((6*7)) > /dev/ttyS0",
    )
    .await;
    assert_eq!(report["status"], "connected", "{report:#}");
    held.expect("fleet-42").await;
    let logs = [
        plain(&stack.log("gateway.log")),
        plain(&std::fs::read_to_string(stack.dir.path().join("gateway2.log")).unwrap()),
        plain(&std::fs::read_to_string(stack.dir.path().join("gateway3.log")).unwrap()),
    ];
    let ticket = format!("ticket={}", page.id);
    let minted: Vec<usize> = (0..3)
        .filter(|&i| {
            logs[i]
                .lines()
                .any(|l| l.contains("page session started") && l.contains(&ticket))
        })
        .collect();
    let joined: Vec<usize> = (0..3)
        .filter(|&i| {
            logs[i]
                .lines()
                .any(|l| l.contains("session opened") && l.contains(&ticket))
        })
        .collect();
    assert_eq!(minted.len(), 1, "the page session was minted once");
    assert!(
        joined.iter().any(|g| *g != minted[0]),
        "page session minted on gateway {} and joined on {joined:?} only",
        minted[0] + 1
    );

    // 6. Redis dies: open sessions go on, new ones are refused with the
    // store's reason; Redis back (empty): new sessions work again with no
    // gateway restarted.
    let keyboard = stack.ticket(&stack.name, &["serial0"], false);
    let mut live = Session::new(
        stack
            .connect(&format!("{}&force=true", at(&stack, &keyboard.ws_url, gw2)))
            .await,
    );
    live.expect_notice("keyboard").await;
    redis.kill();
    live.send(b"echo alive-$((5*5))\n").await;
    live.expect("alive-25").await;
    held.expect("alive-25").await;
    let refused = stack.ticket(&stack.name, &["serial0"], true);
    for gw in [gw1, gw2, gw3] {
        let started = Instant::now();
        let (code, reason) = Session::new(stack.connect(&at(&stack, &refused.ws_url, gw)).await)
            .closed()
            .await;
        assert_eq!(
            (code, reason.as_str()),
            (
                4500,
                "the gateway's session store is unreachable: try again shortly"
            )
        );
        assert!(
            started.elapsed() < Duration::from_millis(4 * TIMEOUT_MS + 1000),
            "refused after {:?}",
            started.elapsed()
        );
    }
    let m = admin_get(&stack, admin3, "/metrics").await;
    assert!(
        m.contains("vmgate_refusals_total{reason=\"store_unavailable\"} 1"),
        "{m}"
    );
    assert!(m.contains("vmgate_store_errors_total{op="), "{m}");
    // Still, while Redis is down.
    live.send(b"echo still-$((6*6))\n").await;
    live.expect("still-36").await;
    redis.restart().unwrap();
    let back = Instant::now();
    // A ticket issued after the new epoch (Redis's restart) plus the margin.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let fresh = 'retry: loop {
        let t = stack.ticket(&stack.name, &["serial0"], true);
        let mut s = Session::new(stack.connect(&at(&stack, &t.ws_url, lb)).await);
        loop {
            match s.next_event(common::WAIT).await {
                common::Event::Notice(n) if n.contains("read-only") => break 'retry s,
                common::Event::Data(_) | common::Event::Notice(_) => {}
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "after Redis came back: {other:?}"
                    );
                    continue 'retry;
                }
            }
        }
    };
    drop(fresh);
    live.send(b"echo after-$((7*7))\n").await;
    live.expect("after-49").await;
    assert!(
        back.elapsed() < Duration::from_secs(12),
        "{:?}",
        back.elapsed()
    );
    for log in ["gateway.log", "gateway2.log", "gateway3.log"] {
        let text = plain(&std::fs::read_to_string(stack.dir.path().join(log)).unwrap());
        assert!(text.contains("the store does not answer"), "{log}:\n{text}");
    }
    drop(haproxy);
}
