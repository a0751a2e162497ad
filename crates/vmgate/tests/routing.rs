//! Routing across several agents, end to end: one real guest behind one
//! agent, other `vmgate agent` processes claiming the same name (down, or
//! running without its consoles), the gateway merging what they all say.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{any_port, Backend, Session, Stack, WAIT};
use vmgate_agent::config::{Endpoint, GuestConfig};
use vmgate_gateway::config::AgentEntry;

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A guest of an extra agent: with a serial console whose socket does not
/// exist (reported down), or with no console at all (reported running,
/// with no channel).
fn claim(stack: &Stack, name: &str, serial: bool) -> GuestConfig {
    GuestConfig {
        name: name.into(),
        qmp: None,
        vnc: None,
        vnc_via: None,
        audio: false,
        serial: if serial {
            vec![Endpoint {
                name: "serial0".into(),
                path: stack.dir.path().join(format!("no-such-{name}.sock")),
            }]
        } else {
            Vec::new()
        },
        channel: Vec::new(),
        media: Vec::new(),
    }
}

/// Starts extra agent `name` on `addr` (port 0 the first time, the port
/// it got to restart it), hosting `guests`; answers where it listens.
async fn start_extra(
    stack: &mut Stack,
    name: &str,
    addr: SocketAddr,
    guests: Vec<GuestConfig>,
) -> SocketAddr {
    let mut cfg = stack.state.agent_config(addr, guests);
    cfg.node = format!("node-{name}");
    // Its own console logs: the guest names collide with the real agent's.
    cfg.log_dir = stack.dir.path().join(format!("{name}-logs"));
    stack.spawn_agent(name, &cfg, Backend::Qemu).await
}

/// `(state, node)` of each guest in the gateway's `GET /v1/guests`.
async fn listing(stack: &Stack) -> Vec<(String, String, String)> {
    let v: Vec<serde_json::Value> = stack.admin_get("/v1/guests").await.json().unwrap();
    v.iter()
        .map(|g| {
            let s = |k: &str| g[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("state"), s("node"))
        })
        .collect()
}

/// Waits until the listing satisfies `ok`; fails showing it.
async fn wait_listing(stack: &Stack, what: &str, ok: impl Fn(&[(String, String, String)]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let l = listing(stack).await;
        if ok(&l) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}; listing: {l:?}\ngateway log:\n{}",
            stack.log("gateway.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has(l: &[(String, String, String)], name: &str) -> bool {
    l.iter().any(|g| g.0 == name)
}

fn demo(l: &[(String, String, String)]) -> Option<(String, String)> {
    l.iter()
        .find(|g| g.0 == "demo")
        .map(|g| (g.1.clone(), g.2.clone()))
}

/// An interactive console on `demo` through the gateway: the guest's shell
/// answers, then the session is closed so the next one gets the keyboard.
async fn console_answers(stack: &Stack, n: u32) {
    let mut s = stack.serial().await;
    s.expect_notice("you hold the keyboard").await;
    s.send(format!("echo routed-$(({n}*7))\n").as_bytes()).await;
    s.expect(&format!("routed-{}", n * 7)).await;
    let _ = s.ws.close(None).await;
    let _ = s.closed().await;
}

/// What a fresh session on `demo` is refused with.
async fn refusal(stack: &Stack) -> (u16, String) {
    let t = stack.ticket("demo", &["serial0"], false);
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    s.closed().await
}

/// Hole 6 of issue 11: routing was last-writer-wins. Now each agent's
/// inventory is kept on its own and merged: a "down" from another node,
/// in either order, never hides the running guest; a disconnect takes
/// only the disconnected agent's names; a second running claim is a
/// conflict, logged and counted, and the route stays; and an agent's
/// `guests` allow-list keeps it from claiming names outside it.
#[tokio::test]
async fn a_running_guest_stays_routed_whatever_other_agents_say_and_the_allow_list_holds() {
    let mut stack = Stack::start_secure_with(|_| {}).await;
    // Agent A (the stack's) serves the real guest. B says demo is down; C,
    // allowed only web-*, says demo runs (it has no console there).
    let b_down = |s: &Stack| vec![claim(s, "demo", true), claim(s, "web-1", true)];
    let b_running = |s: &Stack| vec![claim(s, "demo", false), claim(s, "web-1", true)];
    let guests = b_down(&stack);
    let b_addr = start_extra(&mut stack, "b", any_port(), guests).await;
    let guests = vec![claim(&stack, "demo", false), claim(&stack, "web-2", true)];
    let c_addr = start_extra(&mut stack, "c", any_port(), guests).await;
    stack
        .restart_gateway(|cfg| {
            for (addr, guests) in [(b_addr, vec!["demo", "web-*"]), (c_addr, vec!["web-*"])] {
                cfg.agent_list.push(AgentEntry {
                    addr,
                    server_name: "localhost".into(),
                    guests: Some(guests.into_iter().map(String::from).collect()),
                });
            }
        })
        .await;
    wait_listing(&stack, "B's and C's inventories", |l| {
        has(l, "web-1") && has(l, "web-2")
    })
    .await;
    let l = listing(&stack).await;
    assert_eq!(
        demo(&l),
        Some(("running".into(), "demo-node".into())),
        "{l:?}"
    );
    console_answers(&stack, 1).await;
    // C's claim was refused by its allow-list: logged (escaped) and
    // counted, and not a conflict.
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_inventory_refused_total{reason=\"not_allowed\"}"),
        1,
        "{m}"
    );
    assert_eq!(metric(&m, "vmgate_route_conflicts_total"), 0, "{m}");
    let refused_line = common::plain(&stack.log("gateway.log")).lines().any(|l| {
        l.contains(&format!("agent={c_addr}"))
            && l.contains("guest=\"demo\"")
            && l.contains("not_allowed")
    });
    assert!(refused_line, "{}", stack.log("gateway.log"));

    // A goes away: demo is down (B's word), never C's refused "running".
    stack.kill_agent();
    wait_listing(&stack, "demo down on node-b", |l| {
        demo(l) == Some(("down".into(), "node-b".into()))
    })
    .await;
    let (code, reason) = refusal(&stack).await;
    assert_eq!(code, 4410, "{reason}");

    // B's down came first, A's running after: running.
    stack.start_agent();
    wait_listing(&stack, "demo running again", |l| {
        demo(l) == Some(("running".into(), "demo-node".into()))
    })
    .await;
    console_answers(&stack, 2).await;

    // B disconnects: its names go, demo (served by A) stays.
    stack.kill_extra_agent("b");
    wait_listing(&stack, "web-1 gone with B", |l| !has(l, "web-1")).await;
    let l = listing(&stack).await;
    assert_eq!(
        demo(&l),
        Some(("running".into(), "demo-node".into())),
        "{l:?}"
    );
    console_answers(&stack, 3).await;

    // A's running came first, B's down after: still running on A.
    let guests = b_down(&stack);
    start_extra(&mut stack, "b", b_addr, guests).await;
    wait_listing(&stack, "B back", |l| has(l, "web-1")).await;
    let l = listing(&stack).await;
    assert_eq!(
        demo(&l),
        Some(("running".into(), "demo-node".into())),
        "{l:?}"
    );
    console_answers(&stack, 4).await;

    // B comes back saying demo runs too: a conflict, logged and counted;
    // the route stays with A, which said it first.
    stack.kill_extra_agent("b");
    wait_listing(&stack, "web-1 gone with B", |l| !has(l, "web-1")).await;
    let guests = b_running(&stack);
    start_extra(&mut stack, "b", b_addr, guests).await;
    wait_listing(&stack, "B back", |l| has(l, "web-1")).await;
    let m = stack.metrics().await;
    assert_eq!(metric(&m, "vmgate_route_conflicts_total"), 1, "{m}");
    let conflict_line = common::plain(&stack.log("gateway.log")).lines().any(|l| {
        l.contains("two agents report this guest running")
            && l.contains("guest=\"demo\"")
            && l.contains(&b_addr.to_string())
    });
    assert!(conflict_line, "{}", stack.log("gateway.log"));
    let l = listing(&stack).await;
    assert_eq!(
        demo(&l),
        Some(("running".into(), "demo-node".into())),
        "{l:?}"
    );
    console_answers(&stack, 5).await;
}
