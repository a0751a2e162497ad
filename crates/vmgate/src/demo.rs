//! `vmgate demo`: the test guest behind an agent and a gateway, in one
//! process, on a fresh state directory. Agent and gateway still talk QUIC
//! with mutual TLS over loopback, exactly as they would across hosts.
//!
//! With `--nodes 2` there are two agents, `node-a` and `node-b`, each with
//! its own QEMU run directory, and the guest live-migrates between them
//! (every `--migrate-every`, or when the user presses Enter): a fresh
//! `-incoming` QEMU on the other node, QMP `migrate` to it, and once the
//! gateway routes the guest there, the source QEMU quits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use vmgate_agent::config::{Endpoint, GuestConfig};
use vmgate_testkit::{BootOptions, Guest};

use crate::state::{write_toml, GatewayInfo, State};
use crate::tickets::{mint, TicketRequest};

pub struct DemoOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// The gateway's store URL (`redis://…`); none: the embedded one.
    pub store: Option<String>,
    /// 1: one agent (`demo-node`); 2: `node-a` and `node-b`.
    pub nodes: u8,
    /// With two nodes, migrate this often; none: on Enter.
    pub migrate_every: Option<Duration>,
}

/// The bound on one live migration of the demo guest (128 MiB over a unix
/// socket takes a second or two).
const MIGRATE_DEADLINE: Duration = Duration::from_secs(60);
/// The bound on the gateway routing the guest to its new node.
const REROUTE_DEADLINE: Duration = Duration::from_secs(10);

/// The agent's view of a test guest booted by the kit.
pub fn guest_config(guest: &Guest) -> GuestConfig {
    GuestConfig {
        name: guest.name.clone(),
        qmp: Some(guest.qmp_socket.clone()),
        vnc: Some(guest.vnc_socket.clone()),
        // Each VNC session is a socketpair handed to QEMU over QMP.
        vnc_via: Some(vmgate_agent::config::VncVia::Qmp),
        // The test guest's PC speaker plays into its VNC display's audiodev.
        audio: true,
        serial: vec![Endpoint {
            name: "serial0".into(),
            path: guest.serial_socket.clone(),
        }],
        channel: guest
            .channel_sockets
            .iter()
            .map(|(name, path)| Endpoint {
                name: name.clone(),
                path: path.clone(),
            })
            .collect(),
        // The kit's empty CD-ROM, filled by `vmgate media demo insert`.
        media: vec![vmgate_agent::config::MediaDrive {
            name: "media".into(),
            id: vmgate_testkit::CDROM_ID.into(),
        }],
    }
}

pub async fn run(opts: DemoOptions) -> Result<()> {
    let state = State::new(&opts.state_dir);
    state.init()?;
    eprintln!("[demo] building the test guest (cached after the first run)…");
    let image = tokio::task::spawn_blocking(|| {
        vmgate_testkit::build_image(&vmgate_testkit::default_cache_dir())
    })
    .await??;
    if !(1..=2).contains(&opts.nodes) {
        anyhow::bail!("--nodes must be 1 or 2, not {}", opts.nodes);
    }
    let two = opts.nodes == 2;
    if !two && opts.migrate_every.is_some() {
        anyhow::bail!("--migrate-every needs --nodes 2");
    }
    let names: &[&str] = if two {
        &["node-a", "node-b"]
    } else {
        &["demo-node"]
    };
    let run_dirs: Vec<PathBuf> = if two {
        names.iter().map(|n| state.path(n)).collect()
    } else {
        vec![state.path("guest")]
    };
    for d in &run_dirs {
        std::fs::create_dir_all(d)?;
    }
    let guest = Guest::boot(&image, &BootOptions::new("demo", &run_dirs[0]))
        .context("booting the demo guest")?;
    eprintln!("[demo] guest `demo` booted (QEMU pid {})", guest.pid());

    let shutdown = CancellationToken::new();
    let mut agents = Vec::new();
    let mut agent_addrs = Vec::new();
    for (i, node) in names.iter().enumerate() {
        let mut cfg = guest_config(&guest);
        if i > 0 {
            // The same guest, by the same socket names in this node's own
            // run directory (empty until the guest migrates here).
            cfg = on_node(cfg, &run_dirs[0], &run_dirs[i]);
        }
        let mut agent_cfg = state.agent_config("127.0.0.1:0".parse()?, vec![cfg]);
        if two {
            agent_cfg.node = (*node).into();
            agent_cfg.log_dir = state.path(&format!("logs-{node}"));
            std::fs::create_dir_all(&agent_cfg.log_dir)?;
        }
        let agent = vmgate_agent::Agent::bind(agent_cfg.clone())?;
        agent_addrs.push(agent.local_addr());
        let file = if two {
            format!("agent-{node}.toml")
        } else {
            "agent.toml".into()
        };
        write_toml(&state.path(&file), &agent_cfg)?;
        agents.push(agent);
    }
    let mut gw_cfg = state.gateway_config(opts.listen, &agent_addrs);
    gw_cfg.store.url = opts.store.clone();
    gw_cfg.validate()?;
    write_toml(&state.path("gateway.toml"), &gw_cfg)?;
    let gateway = vmgate_gateway::Gateway::bind(gw_cfg, shutdown.clone()).await?;
    let gw_addr = gateway.local_addr();
    let url = format!("https://{gw_addr}");
    state.write_gateway_info(&GatewayInfo { url: url.clone() })?;
    let pool = gateway.pool();
    let shared = gateway.shared();
    let agent_tasks: Vec<_> = agents
        .into_iter()
        .map(|a| tokio::spawn(a.run(shutdown.clone())))
        .collect();
    let gw_task = tokio::spawn(gateway.run());
    // Print the URL only once the gateway can route to the guest, and
    // accepts tickets minted now (not within its clock-skew margin of its
    // store's epoch, when it cannot tell them from tickets a lost record
    // may have held).
    let routed = async {
        while pool.check("demo", "serial0").is_err()
            || vmgate_gateway::tickets::unix_now() <= shared.tickets.accepts_issued_after()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), routed)
        .await
        .context("the gateway did not see the demo guest within 30 s")?;

    let ticket = mint(
        &state,
        &TicketRequest {
            guest: "demo".into(),
            channels: vec!["serial0".into()],
            mode: vmgate_ticket::Mode::Interactive,
            ttl: Duration::from_secs(3600),
            max_session: None,
        },
    )?;
    let screen = mint(
        &state,
        &TicketRequest {
            guest: "demo".into(),
            channels: vec![
                "vnc".into(),
                "serial0".into(),
                "audio".into(),
                "media".into(),
            ],
            mode: vmgate_ticket::Mode::Interactive,
            ttl: Duration::from_secs(3600),
            max_session: None,
        },
    )?;
    let sd = state.dir.display();
    println!(
        "\nvmgate demo is running: guest `demo` behind a gateway at {url}\n\n\
         Serial console in a browser (trust {sd}/public-ca.pem, or accept the certificate;\n\
         the ticket is single-use and valid for an hour):\n  {}\n\n\
         Screen (noVNC) with the serial console beside it, a speaker (try `tone 880 1000`)\n\
         and a Virtual media control (pick an ISO: it becomes the guest's /dev/sr0), in a browser:\n  {}\n\n\
         Screen in any VNC viewer (prints a local address):\n  vmgate vnc demo --state-dir {sd}\n\n\
         The guest's sound as WAV (`| aplay` to hear it):\n  vmgate audio demo --out - --state-dir {sd}\n\n\
         A local ISO as the guest's CD-ROM (then `mount /dev/sr0 /mnt` in the guest):\n  vmgate media demo insert FILE.iso --state-dir {sd}\n\n\
         Serial console in this terminal (Ctrl+] detaches):\n  vmgate console demo --state-dir {sd}\n\n\
         A fresh ticket:\n  vmgate ticket demo --channel serial0 --state-dir {sd}\n\n\
         Press Ctrl+C to stop (QEMU stops with it).{}",
        ticket.url,
        screen.url,
        match (two, opts.migrate_every) {
            (false, _) => String::new(),
            (true, Some(every)) => format!(
                "\n\nThe guest live-migrates between node-a and node-b every {}.",
                humantime::format_duration(every)
            ),
            (true, None) => {
                "\n\nPress Enter to live-migrate the guest to the other node.".into()
            }
        }
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut guest = guest;
    let mut here = 0usize;
    let mut enter = if two && opts.migrate_every.is_none() {
        Some(enter_lines())
    } else {
        None
    };
    let failed = loop {
        let next = async {
            match (two, opts.migrate_every, enter.as_mut()) {
                (false, _, _) => std::future::pending().await,
                (true, Some(every), _) => tokio::time::sleep(every).await,
                (true, None, Some(rx)) => {
                    if rx.recv().await.is_none() {
                        std::future::pending::<()>().await
                    }
                }
                (true, None, None) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
            _ = next => {}
        }
        let to = 1 - here;
        let moved = migrate(
            &image,
            &mut guest,
            (names[here], names[to]),
            &run_dirs[to],
            &pool,
        );
        let moved = tokio::select! {
            m = moved => m,
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
        };
        match moved {
            Ok(downtime) => {
                println!(
                    "guest demo moved {} -> {} (downtime {downtime} ms)",
                    names[here], names[to]
                );
                here = to;
            }
            Err(e) => break Some(e),
        }
    };
    eprintln!("[demo] stopping");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for t in agent_tasks {
            let _ = t.await;
        }
        let _ = gw_task.await;
    })
    .await;
    drop(guest);
    match failed {
        Some(e) => Err(e.context("live-migrating the demo guest")),
        None => Ok(()),
    }
}

/// `cfg` with every socket path under `from` moved to the same name under
/// `to`: the same guest as another node's agent sees it once it migrated
/// there (a QEMU started in that node's run directory).
pub fn on_node(mut cfg: GuestConfig, from: &std::path::Path, to: &std::path::Path) -> GuestConfig {
    let moved = |p: &mut PathBuf| {
        if let Ok(rest) = p.strip_prefix(from) {
            *p = to.join(rest);
        }
    };
    cfg.qmp.iter_mut().for_each(moved);
    cfg.vnc.iter_mut().for_each(moved);
    cfg.serial.iter_mut().for_each(|e| moved(&mut e.path));
    cfg.channel.iter_mut().for_each(|e| moved(&mut e.path));
    cfg
}

/// Each line the user enters on stdin (a thread: tokio's stdin would keep
/// the runtime from shutting down while it blocks).
fn enter_lines() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
            if tx.blocking_send(()).is_err() {
                return;
            }
        }
    });
    rx
}

/// Live-migrates the demo guest from `guest` (on node `nodes.0`) to a fresh
/// `-incoming` QEMU in `to_dir` (node `nodes.1`): QMP `migrate`, wait for it
/// to complete, wait for the gateway to route the guest to the new node
/// (the old node's agent has then seen the guest leave and ended its
/// sessions with "guest moved"), then quit the source. `guest` becomes the
/// new QEMU. Returns the downtime QEMU measured, in ms.
async fn migrate(
    image: &vmgate_testkit::GuestImage,
    guest: &mut Guest,
    nodes: (&str, &str),
    to_dir: &std::path::Path,
    pool: &vmgate_gateway::agents::AgentPool,
) -> Result<u64> {
    use vmgate_agent::qmp::Qmp;
    let incoming = to_dir.join("migrate.sock");
    let (image, opts, sock) = (
        image.clone(),
        BootOptions::new("demo", to_dir),
        incoming.clone(),
    );
    let target = tokio::task::spawn_blocking(move || Guest::boot_incoming(&image, &opts, &sock))
        .await?
        .context("starting the incoming QEMU")?;
    let source = guest.qmp_socket.clone();
    let downtime = tokio::time::timeout(MIGRATE_DEADLINE, async {
        let mut q = Qmp::connect(&source).await?;
        let uri = format!("unix:{}", incoming.display());
        q.execute("migrate", serde_json::json!({ "uri": uri }))
            .await?;
        loop {
            let st = q.execute("query-migrate", serde_json::json!({})).await?;
            match st.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => {
                    return Ok::<_, anyhow::Error>(
                        st.get("downtime").and_then(|d| d.as_u64()).unwrap_or(0),
                    )
                }
                s @ ("failed" | "cancelled") => {
                    let why = st.get("error-desc").and_then(|d| d.as_str()).unwrap_or("");
                    anyhow::bail!("migration {s}: {why}");
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .context("the migration did not complete in time")??;
    let _ = std::fs::remove_file(&incoming);
    // The old node's agent polls QMP: once it saw the guest leave, the
    // gateway routes to the new node, and only then may the source go.
    let to = nodes.1.to_string();
    tokio::time::timeout(REROUTE_DEADLINE, async {
        while !pool.guests().iter().any(|g| {
            g.guest.name == "demo"
                && g.node == to
                && g.guest.state == vmgate_wire::GuestState::Running
        }) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("the gateway did not route the guest to {to}"))?;
    let old = std::mem::replace(guest, target);
    let mut q = Qmp::connect(&old.qmp_socket).await?;
    let _ = q.execute("quit", serde_json::json!({})).await;
    drop(q);
    tokio::task::spawn_blocking(move || drop(old)).await?;
    Ok(downtime)
}
