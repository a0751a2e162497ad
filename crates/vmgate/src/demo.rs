//! `vmgate demo`: the test guest behind an agent and a gateway, in one
//! process, on a fresh state directory. Agent and gateway still talk QUIC
//! with mutual TLS over loopback, exactly as they would across hosts.

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
}

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
    let run_dir = state.path("guest");
    std::fs::create_dir_all(&run_dir)?;
    let guest = Guest::boot(&image, &BootOptions::new("demo", &run_dir))
        .context("booting the demo guest")?;
    eprintln!("[demo] guest `demo` booted (QEMU pid {})", guest.pid());

    let shutdown = CancellationToken::new();
    let agent_cfg = state.agent_config("127.0.0.1:0".parse()?, vec![guest_config(&guest)]);
    let agent = vmgate_agent::Agent::bind(agent_cfg.clone())?;
    let agent_addr = agent.local_addr();
    write_toml(&state.path("agent.toml"), &agent_cfg)?;
    let mut gw_cfg = state.gateway_config(opts.listen, &[agent_addr]);
    gw_cfg.store.url = opts.store.clone();
    gw_cfg.validate()?;
    write_toml(&state.path("gateway.toml"), &gw_cfg)?;
    let gateway = vmgate_gateway::Gateway::bind(gw_cfg, shutdown.clone()).await?;
    let gw_addr = gateway.local_addr();
    let url = format!("https://{gw_addr}");
    state.write_gateway_info(&GatewayInfo { url: url.clone() })?;
    let pool = gateway.pool();
    let shared = gateway.shared();
    let agent_task = tokio::spawn(agent.run(shutdown.clone()));
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
         Press Ctrl+C to stop (QEMU stops with it).",
        ticket.url,
        screen.url
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("[demo] stopping");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = agent_task.await;
        let _ = gw_task.await;
    })
    .await;
    drop(guest);
    Ok(())
}
