//! `vmgate`: parses flags, starts tracing, runs one subcommand.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vmgate::state::State;
use vmgate::tickets::{self, TicketRequest};

#[derive(Parser)]
#[command(
    name = "vmgate",
    version,
    about = "Console gateway for QEMU/KVM guests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// How log lines are written to stderr: `text` (coloured only when
    /// stderr is a terminal) or `json` (one object per line, for log
    /// shippers). `VMGATE_LOG` sets the level filter.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent (one per hypervisor node).
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// Where guests come from, overriding the config's `backend`:
        /// `qemu` (declared guests) or `libvirt` (running domains).
        #[arg(long)]
        backend: Option<vmgate_agent::config::BackendKind>,
        /// Check the configuration and the files it names, print every
        /// problem with its key, and exit (1 if any) without starting.
        #[arg(long)]
        check: bool,
    },
    /// Run a gateway (off-node, internet-facing).
    Gateway {
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of the configuration's `listen`, so one
        /// configuration serves several gateways on one host (a fleet
        /// sharing `[store] url`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Listen here instead of `[admin] listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Check the configuration and the files it names, print every
        /// problem with its key, and exit (1 if any) without starting.
        #[arg(long)]
        check: bool,
    },
    /// Run the ticket minter: the management-LAN admin API that holds the
    /// signing key (`POST /v1/tickets`). The gateway never holds it.
    Admin {
        #[arg(long)]
        config: PathBuf,
        /// Check the configuration and the files it names, print every
        /// problem with its key, and exit (1 if any) without starting.
        #[arg(long)]
        check: bool,
    },
    /// Boot the test guest behind an agent and a gateway, all in one process.
    Demo {
        #[command(flatten)]
        state: StateArg,
        /// Address of the gateway's HTTPS listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Run the demo's gateway on this store (`redis://host:6379/0`)
        /// instead of the embedded one in the state directory.
        #[arg(long)]
        store: Option<String>,
        /// 2: two agents, node-a and node-b, between which the guest
        /// live-migrates (1: one agent).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        nodes: u8,
        /// With --nodes 2, live-migrate the guest this often (`30s`);
        /// without it, on each Enter.
        #[arg(long, value_parser = humantime::parse_duration)]
        migrate_every: Option<Duration>,
    },
    /// Mint a ticket and print its URL.
    Ticket(TicketArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell) to stdout.
    Completions { shell: clap_complete::Shell },
    /// Write man pages (vmgate.1, vmgate-SUBCOMMAND.1) into a directory;
    /// packaging uses it.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        out: PathBuf,
    },
    /// Attach this terminal to a guest's serial console (Ctrl+] detaches).
    Console(ConsoleArgs),
    /// Join a guest's virtio-serial port to stdin/stdout, or serve it on a
    /// local socket (--listen).
    Channel(vmgate::channel::ChannelArgs),
    /// A local port for any VNC viewer, relaying to a guest's screen.
    Vnc(VncArgs),
    /// Record a guest's sound as WAV, to a file or stdout (--out -).
    Audio(vmgate::audio::AudioArgs),
    /// A local image as a guest's CD-ROM, read on demand (insert, eject,
    /// status).
    Media(vmgate::media::MediaArgs),
}

#[derive(Args)]
struct VncArgs {
    guest: String,
    /// Where to listen for VNC viewers: unix:PATH, or tcp:ADDR:PORT (port 0
    /// picks a free one) with --insecure-tcp. Printed on stdout's first
    /// line. Default: a unix socket only this user can open,
    /// $XDG_RUNTIME_DIR/vmgate-vnc-GUEST.sock (or in the state directory).
    #[arg(long, value_parser = vmgate::vnc::parse_listen)]
    listen: Option<vmgate::vnc::Listen>,
    /// Allow a TCP --listen, knowing that any local user can connect to a
    /// TCP port (and so open this guest's screen as you).
    #[arg(long)]
    insecure_tcp: bool,
    /// Watch only: the gateway drops the viewers' keys, pointer and clipboard.
    #[arg(long)]
    read_only: bool,
    /// Let viewers hear the guest: tickets name the `audio` channel too, so
    /// a viewer that speaks QEMU's audio extension (pseudo-encoding -259,
    /// e.g. TigerVNC 1.15 or later) gets the guest's sound in-band.
    #[arg(long)]
    audio: bool,
    /// Start an installed VNC viewer on the port; stop when it exits.
    #[arg(long)]
    viewer: bool,
    /// CA certificate to trust for the gateway (default: the state dir's).
    #[arg(long)]
    ca: Option<PathBuf>,
    #[command(flatten)]
    state: StateArg,
}

#[derive(Args)]
struct StateArg {
    /// Where the demo keeps keys, certificates and the gateway address.
    #[arg(long, env = "VMGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Args)]
struct TicketArgs {
    guest: String,
    /// A channel the ticket opens (repeat for several): serial0, vnc, a port name.
    #[arg(long = "channel", default_value = "serial0")]
    channels: Vec<String>,
    /// Watch only: the gateway and agent drop this session's input.
    #[arg(long)]
    read_only: bool,
    /// How long the ticket may be redeemed (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Longest session the ticket allows.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_session: Option<Duration>,
    /// Print one JSON object: url, ws_url, ticket, expires_at.
    #[arg(long)]
    json: bool,
    /// Mint through this admin API (`vmgate admin`, https://host:port)
    /// instead of a local signing key.
    #[arg(long)]
    admin: Option<String>,
    #[command(flatten)]
    admin_creds: AdminCredArgs,
    #[command(flatten)]
    state: StateArg,
}

/// How to authenticate to an admin API.
#[derive(Args)]
struct AdminCredArgs {
    /// CA of the admin API's certificate.
    #[arg(long)]
    admin_ca: Option<PathBuf>,
    /// A file with the administrators' bearer token.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// An administrator's client certificate (with --admin-key).
    #[arg(long, requires = "admin_key")]
    admin_cert: Option<PathBuf>,
    #[arg(long, requires = "admin_cert")]
    admin_key: Option<PathBuf>,
}

impl AdminCredArgs {
    fn creds(self) -> Result<vmgate::admin_client::AdminCreds> {
        let ca = self
            .admin_ca
            .context("--admin-ca: the CA of the admin API's certificate")?;
        let cert = match (self.admin_cert, self.admin_key) {
            (Some(cert), Some(key)) => Some(vmgate_tls::Identity { cert, key }),
            _ => None,
        };
        let creds = vmgate::admin_client::AdminCreds {
            ca,
            cert,
            token: None,
        };
        match self.admin_token_file {
            Some(t) => creds.with_token_file(&t),
            None if creds.cert.is_some() => Ok(creds),
            None => anyhow::bail!("give --admin-token-file, or --admin-cert and --admin-key"),
        }
    }
}

#[derive(Args)]
#[command(after_help = vmgate_wire::EXIT_STATUS)]
struct ConsoleArgs {
    /// The guest (not needed with --url).
    guest: Option<String>,
    #[arg(long, default_value = "serial0")]
    channel: String,
    /// A ticket URL to use instead of minting one.
    #[arg(long)]
    url: Option<String>,
    /// Watch only.
    #[arg(long)]
    read_only: bool,
    /// Take the keyboard over from the session holding it.
    #[arg(long)]
    force: bool,
    /// CA certificate to trust for the gateway (default: the state dir's).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Open the console through the gateway's admin listener at this URL
    /// (https://host:port), without a ticket: the recovery path.
    #[arg(long)]
    admin: Option<String>,
    #[command(flatten)]
    admin_creds: AdminCredArgs,
    #[command(flatten)]
    state: StateArg,
}

/// Logs go to stderr: coloured text only on a terminal (a log file or
/// journald gets plain lines), or JSON lines. Each session's lines carry
/// its span (id, guest, channel) in both formats.
fn init_tracing(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT. The handlers are installed
/// before this returns, so a signal sent once the service said it is ready
/// is never the default action (death without a drain).
fn until_signal(shutdown: CancellationToken) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        notify_systemd(sd_notify::NotifyState::Stopping);
        shutdown.cancel();
    }
}

/// The service is up: tells systemd so, and if the unit has a watchdog
/// (`WatchdogSec=`), pings it every half period from the runtime itself,
/// so a runtime that stops making progress stops the pings and systemd
/// restarts the service.
fn service_ready() {
    notify_systemd(sd_notify::NotifyState::Ready);
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(std::time::Duration::from_millis(100));
    tracing::info!(period = ?period, "pinging the systemd watchdog");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notify_systemd(sd_notify::NotifyState::Watchdog);
        }
    });
}

/// Tells systemd (`Type=notify` units) how the service is doing: ready once
/// its listeners are bound, stopping once it drains. Nothing without
/// `NOTIFY_SOCKET`.
fn notify_systemd(state: sd_notify::NotifyState) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

async fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Agent {
            config,
            backend,
            check,
        } => {
            let mut cfg = vmgate_agent::AgentConfig::load(&config)?;
            if let Some(b) = backend {
                cfg.backend = b;
                cfg.validate()?;
            }
            if check {
                return Ok(report_check(&config, vmgate_agent::check::check(&cfg)));
            }
            let shutdown = CancellationToken::new();
            let agent = vmgate_agent::Agent::bind(cfg)?;
            tokio::spawn(until_signal(shutdown.clone()));
            let logs = agent.console_logs();
            on_sighup(move || {
                tracing::info!("SIGHUP: reopening the console logs");
                logs.reopen();
            });
            service_ready();
            agent.run(shutdown).await;
            Ok(0)
        }
        Cmd::Gateway {
            config,
            listen,
            admin_listen,
            check,
        } => {
            let mut cfg = vmgate_gateway::GatewayConfig::load(&config)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(l) = admin_listen {
                match cfg.admin.as_mut() {
                    Some(a) => a.listen = l,
                    None => anyhow::bail!(
                        "--admin-listen: {} has no [admin] section to move",
                        config.display()
                    ),
                }
            }
            cfg.validate()
                .with_context(|| format!("{} with the flags given", config.display()))?;
            if check {
                return Ok(report_check(&config, vmgate_gateway::check::check(&cfg)));
            }
            let shutdown = CancellationToken::new();
            let gw = vmgate_gateway::Gateway::bind(cfg, shutdown.clone()).await?;
            tokio::spawn(until_signal(shutdown.clone()));
            let shared = gw.shared();
            on_sighup(move || reload_gateway(&shared, &config));
            service_ready();
            gw.run().await;
            Ok(0)
        }
        Cmd::Admin { config, check } => {
            let cfg = vmgate_minter::MinterConfig::load(&config)?;
            if check {
                return Ok(report_check(&config, vmgate_minter::check::check(&cfg)));
            }
            let shutdown = CancellationToken::new();
            let m = vmgate_minter::MinterServer::bind(cfg, shutdown.clone()).await?;
            tokio::spawn(until_signal(shutdown.clone()));
            service_ready();
            m.run().await;
            Ok(0)
        }
        Cmd::Demo {
            state,
            listen,
            store,
            nodes,
            migrate_every,
        } => {
            vmgate::demo::run(vmgate::demo::DemoOptions {
                state_dir: vmgate::state::resolve(state.state_dir),
                listen,
                store,
                nodes,
                migrate_every,
            })
            .await?;
            Ok(0)
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "vmgate", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Man { out } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("writing man pages into {}", out.display()))?;
            Ok(0)
        }
        Cmd::Ticket(a) => {
            let state = State::new(vmgate::state::resolve(a.state.state_dir));
            let req = TicketRequest {
                guest: a.guest,
                channels: a.channels,
                mode: mode(a.read_only),
                ttl: a.ttl,
                max_session: a.max_session,
            };
            let minted = match &a.admin {
                Some(url) => tickets::mint_via_admin(url, &a.admin_creds.creds()?, &req).await?,
                None => tickets::mint(&state, &req)?,
            };
            if a.json {
                println!("{}", serde_json::to_string(&minted)?);
            } else {
                println!("{}", minted.url);
            }
            Ok(0)
        }
        Cmd::Console(a) => {
            let state = State::new(vmgate::state::resolve(a.state.state_dir));
            if let Some(admin) = &a.admin {
                let guest = a.guest.as_deref().context("name the guest")?;
                let url = vmgate_client::url::admin_console_url(admin, guest, &a.channel, a.force)?;
                let ws = vmgate::admin_client::console(&url, &a.admin_creds.creds()?).await?;
                let ended =
                    vmgate::console::run(ws, &format!("{guest} ({}, admin)", a.channel)).await?;
                return Ok(ended.exit_code());
            }
            let ws_url = match (&a.url, &a.guest) {
                (Some(url), _) => vmgate_client::url::ws_url_from(url, Some(&a.channel))?,
                (None, Some(guest)) => {
                    tickets::mint(
                        &state,
                        &TicketRequest {
                            guest: guest.clone(),
                            channels: vec![a.channel.clone()],
                            mode: mode(a.read_only),
                            ttl: Duration::from_secs(60),
                            max_session: None,
                        },
                    )?
                    .ws_url
                }
                (None, None) => anyhow::bail!("name a guest, or pass --url with a ticket URL"),
            };
            let ws_url = if a.force {
                vmgate_client::url::with_force(&ws_url)
            } else {
                ws_url
            };
            let ca = a.ca.unwrap_or_else(|| state.public_ca());
            let ws = vmgate::client::connect(&ws_url, &ca).await?;
            let what = a.guest.as_deref().unwrap_or("the guest").to_string();
            let ended = vmgate::console::run(ws, &format!("{what} ({})", a.channel)).await?;
            Ok(ended.exit_code())
        }
        Cmd::Channel(a) => vmgate::channel::run(a).await,
        Cmd::Vnc(a) => vnc(a).await,
        Cmd::Audio(a) => vmgate::audio::run(a).await,
        Cmd::Media(a) => vmgate::media::run(a).await,
    }
}

async fn vnc(a: VncArgs) -> Result<i32> {
    let state = State::new(vmgate::state::resolve(a.state.state_dir));
    let ca = a.ca.unwrap_or_else(|| state.public_ca());
    let listen = a.listen.unwrap_or_else(|| {
        vmgate::vnc::Listen::Unix(vmgate::vnc::default_socket(&state, &a.guest))
    });
    vmgate::vnc::run(vmgate::vnc::VncOptions {
        state,
        guest: a.guest,
        listen,
        insecure_tcp: a.insecure_tcp,
        read_only: a.read_only,
        audio: a.audio,
        viewer: a.viewer,
        ca,
    })
    .await?;
    Ok(0)
}

/// `vmgate gateway` on SIGHUP: reopens its audit log (after a log rotator
/// moved it), re-reads its public TLS certificate, its ticket verifying
/// keys (rotation), its limits and allowed origins, without touching open
/// sessions. What does not load is
/// logged and what is in use stays.
fn reload_gateway(shared: &vmgate_gateway::Shared, config: &std::path::Path) {
    tracing::info!("SIGHUP: reopening the audit log");
    shared.sessions.reopen_audit();
    let cfg = match vmgate_gateway::GatewayConfig::load(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the certificate and ticket keys in use stay");
            return;
        }
    };
    let public = vmgate_tls::Identity {
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    };
    match shared.public_cert.reload(&public) {
        Ok(()) => tracing::info!(cert = %public.cert.display(), "SIGHUP: TLS certificate reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the one in use stays")
        }
    }
    match cfg.ticket_keys() {
        Ok(keys) => {
            let n = keys.len();
            let ids: Vec<String> = keys.iter().map(vmgate_ticket::VerifyingKey::id).collect();
            shared.tickets.set_keys(keys);
            tracing::info!(keys = n, key_ids = ?ids, "SIGHUP: ticket verifying keys reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: ticket keys not reloaded; the keys in use stay")
        }
    }
    let l = &cfg.limits;
    shared
        .tickets
        .set_issue_limits(l.max_ticket_ttl_secs, l.ticket_clock_skew_secs);
    let on_restart = shared.limits.reload(cfg.limits.clone());
    tracing::info!(
        origins = l.allowed_origins.len(),
        max_sessions = l.max_sessions,
        max_sessions_per_guest = l.max_sessions_per_guest,
        "SIGHUP: limits and allowed origins reloaded"
    );
    if !on_restart.is_empty() {
        tracing::warn!(keys = ?on_restart, "SIGHUP: these limits changed but apply to connections only after a restart");
    }
}

/// Prints what `--check` found: one line per problem on stderr (`FILE:
/// key: what is wrong`), or `FILE: ok` on stdout; the exit status is 1 if
/// anything is wrong.
fn report_check(config: &std::path::Path, problems: Vec<vmgate_config::Problem>) -> i32 {
    if problems.is_empty() {
        println!("{}: ok", config.display());
        return 0;
    }
    for p in &problems {
        eprintln!("{}: {p}", config.display());
    }
    1
}

/// Runs `reload` on every SIGHUP. The handler is installed before this
/// returns, so a SIGHUP sent once the service said it is ready is never
/// the default action (death).
fn on_sighup(mut reload: impl FnMut() + Send + 'static) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload();
        }
    });
}

fn mode(read_only: bool) -> vmgate_ticket::Mode {
    if read_only {
        vmgate_ticket::Mode::ReadOnly
    } else {
        vmgate_ticket::Mode::Interactive
    }
}

fn main() {
    let cli = Cli::parse();
    let service = matches!(
        cli.cmd,
        Cmd::Agent { .. } | Cmd::Gateway { .. } | Cmd::Admin { .. } | Cmd::Demo { .. }
    );
    init_tracing(if service { "info" } else { "warn" }, cli.log_format);
    let rt = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    let code = match rt.block_on(run(cli)).context("vmgate") {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // The stdin reader thread may still be blocked in read(2): leave without
    // waiting for it (the terminal is already restored).
    rt.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}
