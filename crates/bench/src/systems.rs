//! The systems under test, started and reached the same way: each opens a
//! connection to one behaviour of the byte source ([`Mode`]) and says which
//! processes' memory is its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use vmgate::state::{write_toml, GatewayInfo, State};
use vmgate::tickets::{mint, TicketRequest};
use vmgate_agent::config::{Endpoint, GuestConfig};

use crate::client::{self, Client, Ws};

/// The gateway's configuration for a benchmark. The benchmark measures
/// capacity, so the session limits (a production safety net: 64 per guest,
/// 10,000 per gateway by default) are lifted above the idle levels it holds;
/// all its sessions go to one guest.
pub fn gateway_config(
    state: &State,
    listen: std::net::SocketAddr,
    agent: std::net::SocketAddr,
) -> vmgate_gateway::GatewayConfig {
    let mut cfg = state.gateway_config(listen, &[agent]);
    cfg.limits.max_sessions = 1_000_000;
    cfg.limits.max_sessions_per_guest = 1_000_000;
    // Each gateway of a run (all-in-one, split) its own embedded store: a
    // store file is held by one gateway at a time.
    static GATEWAYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = GATEWAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = state.path(&format!("gateway-{n}.redb"));
    let _ = std::fs::remove_file(&file);
    cfg.store.path = Some(file);
    cfg
}
use crate::source::{Mode, Ports};

/// The guest every vmgate system serves; its channels all lead to the
/// source's sockets (a channel is exclusive, so each session gets its own).
pub const GUEST: &str = "bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain TCP to the source: the ceiling.
    Raw,
    /// TLS WebSockets served by the source itself: the client's ceiling.
    Client,
    Websockify,
    VmgateAio,
    VmgateSplit,
    /// Split mode again, from another `vmgate` binary (`--compare`): a
    /// change's before and after, measured in one run.
    VmgateSplitCompare,
    /// Split mode with `[agents] session_transport = "tcp"`: each session
    /// its own TCP + TLS connection from the gateway to the agent.
    VmgateSplitTcp,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw loopback TCP",
            Kind::Client => "client ceiling (wss from source)",
            Kind::Websockify => "websockify",
            Kind::VmgateAio => "vmgate all-in-one",
            Kind::VmgateSplit => "vmgate split",
            Kind::VmgateSplitCompare => "vmgate split, --compare binary",
            Kind::VmgateSplitTcp => "vmgate split, TCP to the agent",
        }
    }
}

/// One open session, whatever carries it.
pub enum Conn {
    Tcp(TcpStream, Box<[u8]>),
    Ws(Box<Ws>),
}

impl Conn {
    /// Waits for the next bytes; returns how many.
    pub async fn recv(&mut self) -> Result<usize> {
        match self {
            Conn::Tcp(s, buf) => match s.read(buf).await? {
                0 => bail!("connection ended"),
                n => Ok(n),
            },
            Conn::Ws(ws) => Ok(client::next_binary(ws).await?.len()),
        }
    }

    /// Sends `msg` and waits until as many bytes came back.
    pub async fn echo(&mut self, msg: &Bytes) -> Result<()> {
        match self {
            Conn::Tcp(s, buf) => {
                s.write_all(msg).await?;
                let mut got = 0;
                while got < msg.len() {
                    match s.read(&mut buf[..]).await? {
                        0 => bail!("connection ended"),
                        n => got += n,
                    }
                }
                Ok(())
            }
            Conn::Ws(ws) => client::echo_once(ws, msg).await,
        }
    }

    pub async fn close(self) {
        match self {
            Conn::Tcp(..) => {}
            Conn::Ws(ws) => client::close(*ws).await,
        }
    }
}

/// Channel names of the bench guest, handed out once each.
pub struct Names {
    counts: [usize; 3],
    next: [AtomicUsize; 3],
}

impl Names {
    pub fn new(bulk: usize, echo: usize, hello: usize) -> Names {
        Names {
            counts: [bulk, echo, hello],
            next: Default::default(),
        }
    }

    fn idx(mode: Mode) -> usize {
        match mode {
            Mode::Bulk => 0,
            Mode::Echo => 1,
            Mode::Hello => 2,
        }
    }

    fn name(mode: Mode, i: usize) -> String {
        format!("{}{i}", &mode.name()[..1])
    }

    /// The next unused channel of `mode`.
    pub fn take(&self, mode: Mode) -> Result<String> {
        let k = Self::idx(mode);
        let i = self.next[k].fetch_add(1, Ordering::Relaxed);
        if i >= self.counts[k] {
            bail!("out of {} channels: raise the count", mode.name());
        }
        Ok(Self::name(mode, i))
    }

    /// Every channel, as the agent's guest configuration.
    pub fn guest(&self, source_dir: &Path) -> GuestConfig {
        let channel = Mode::ALL
            .iter()
            .flat_map(|&m| {
                (0..self.counts[Self::idx(m)]).map(move |i| Endpoint {
                    name: Self::name(m, i),
                    path: m.socket(source_dir),
                })
            })
            .collect();
        GuestConfig {
            name: GUEST.into(),
            qmp: None,
            vnc: None,
            vnc_via: None,
            audio: false,
            serial: vec![],
            channel,
            media: vec![],
        }
    }
}

enum Reach {
    Raw(Ports),
    Client(u16),
    /// One websockify per behaviour (its target is fixed at start).
    Websockify([u16; 3]),
    Vmgate {
        port: u16,
        state: State,
    },
}

/// A running system and the processes it is made of.
pub struct System {
    pub kind: Kind,
    reach: Reach,
    client: Client,
    names: std::sync::Arc<Names>,
    /// Killed when the system is dropped.
    children: Vec<Child>,
    /// Whose memory counts as the system's (descendants included):
    /// the gateway, or the hello websockify.
    pub mem_pid: Option<u32>,
    /// A second process reported alongside (split: the agent).
    pub other_pid: Option<u32>,
}

/// What starting a system needs.
pub struct Env {
    pub work: PathBuf,
    pub state: State,
    pub source_dir: PathBuf,
    pub ports: Ports,
    pub client: Client,
    /// Channels of each behaviour (bulk, echo, hello) the guest declares.
    pub channels: [usize; 3],
    pub bin_dir: PathBuf,
    pub websockify: PathBuf,
    /// Another `vmgate` binary, run as [`Kind::VmgateSplitCompare`].
    pub compare: Option<PathBuf>,
    /// The `--compare` binary's sessions go over TCP + TLS to the agent.
    pub compare_tcp: bool,
    /// The test guest's VNC socket, when the VNC workload runs: the split
    /// agent then serves that guest too ([`crate::vnc::GUEST`]).
    pub vnc: Option<PathBuf>,
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `line` without its terminal colour codes (ESC `[` … final byte).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The `addr=` of the line containing `marker` in `{name}.log`, written by
/// `child` once it listens; fails if it exits first or stays silent 10 s.
async fn logged_addr(
    env: &Env,
    child: &mut Child,
    name: &str,
    marker: &str,
) -> Result<std::net::SocketAddr> {
    let path = env.work.join(format!("{name}.log"));
    for _ in 0..200 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let found = text.lines().filter(|l| l.contains(marker)).find_map(|l| {
            without_colours(l)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr=").and_then(|a| a.parse().ok()))
        });
        if let Some(addr) = found {
            return Ok(addr);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited ({status}) before listening; see {}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{name} did not say it listens within 10 s; see {}",
        path.display()
    )
}

fn log_file(env: &Env, name: &str) -> Result<Stdio> {
    Ok(std::fs::File::create(env.work.join(format!("{name}.log")))?.into())
}

/// Waits until something accepts TCP on `port`.
async fn wait_listening(port: u16) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on port {port} after 10 s")
}

impl System {
    pub async fn start(kind: Kind, env: &Env) -> Result<System> {
        let mut sys = System {
            kind,
            reach: Reach::Raw(env.ports.clone()),
            client: env.client.clone(),
            names: std::sync::Arc::new(Names::new(
                env.channels[0],
                env.channels[1],
                env.channels[2],
            )),
            children: vec![],
            mem_pid: None,
            other_pid: None,
        };
        match kind {
            Kind::Raw => {}
            Kind::Client => sys.reach = Reach::Client(env.ports.wss),
            Kind::Websockify => {
                let mut ports = [0u16; 3];
                for (i, mode) in Mode::ALL.iter().enumerate() {
                    let port = free_tcp_port()?;
                    let child = Command::new(&env.websockify)
                        .arg("--cert")
                        .arg(env.state.path("gateway-public.pem"))
                        .arg("--key")
                        .arg(env.state.path("gateway-public.key"))
                        .arg("--unix-target")
                        .arg(mode.socket(&env.source_dir))
                        .arg(format!("127.0.0.1:{port}"))
                        .stdin(Stdio::null())
                        .stdout(log_file(env, &format!("websockify-{}", mode.name()))?)
                        .stderr(Stdio::inherit())
                        .kill_on_drop(true)
                        .spawn()
                        .context("starting websockify (run bench/run, which installs it)")?;
                    if *mode == Mode::Hello {
                        sys.mem_pid = child.id();
                    }
                    sys.children.push(child);
                    ports[i] = port;
                }
                for p in ports {
                    wait_listening(p).await?;
                }
                sys.reach = Reach::Websockify(ports);
            }
            Kind::VmgateAio => {
                let mut agent_cfg = env.state.agent_config("127.0.0.1:0".parse()?, vec![]);
                agent_cfg.guests.push(sys.names.guest(&env.source_dir));
                let agent_toml = env.work.join("agent-aio.toml");
                write_toml(&agent_toml, &agent_cfg)?;
                let mut child = Command::new(env.bin_dir.join("vmgate-bench"))
                    .arg("aio")
                    .arg("--state")
                    .arg(&env.state.dir)
                    .arg("--agent-config")
                    .arg(&agent_toml)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(log_file(env, "vmgate-aio")?)
                    .kill_on_drop(true)
                    .spawn()?;
                let mut line = String::new();
                BufReader::new(child.stdout.take().expect("piped"))
                    .read_line(&mut line)
                    .await?;
                let port: u16 = line
                    .trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .with_context(|| format!("all-in-one said {line:?}, not its URL"))?;
                sys.mem_pid = child.id();
                sys.children.push(child);
                sys.vmgate(env, port).await?;
            }
            Kind::VmgateSplit | Kind::VmgateSplitCompare | Kind::VmgateSplitTcp => {
                let (vmgate, tag) = match (kind, &env.compare) {
                    (Kind::VmgateSplitCompare, Some(bin)) => (bin.clone(), "-compare"),
                    (Kind::VmgateSplitCompare, None) => bail!("no --compare binary"),
                    (Kind::VmgateSplitTcp, _) => (env.bin_dir.join("vmgate"), "-tcp"),
                    _ => (env.bin_dir.join("vmgate"), ""),
                };
                // Both bind port 0 and say in their logs which port they got.
                let mut agent_cfg = env.state.agent_config("127.0.0.1:0".parse()?, vec![]);
                agent_cfg.guests.push(sys.names.guest(&env.source_dir));
                if let Some(vnc) = &env.vnc {
                    agent_cfg.guests.push(GuestConfig {
                        name: crate::vnc::GUEST.into(),
                        qmp: None,
                        vnc: Some(vnc.clone()),
                        vnc_via: None,
                        audio: false,
                        serial: vec![],
                        channel: vec![],
                        media: vec![],
                    });
                }
                agent_cfg.tcp_sessions = kind == Kind::VmgateSplitTcp
                    || (kind == Kind::VmgateSplitCompare && env.compare_tcp);
                let agent_toml = env.work.join(format!("agent-split{tag}.toml"));
                write_toml(&agent_toml, &agent_cfg)?;
                let mut agent = Command::new(&vmgate)
                    .arg("agent")
                    .arg("--config")
                    .arg(&agent_toml)
                    .stdin(Stdio::null())
                    .stderr(log_file(env, &format!("vmgate-agent{tag}"))?)
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting `vmgate agent`")?;
                let agent_log = format!("vmgate-agent{tag}");
                let agent_addr =
                    logged_addr(env, &mut agent, &agent_log, "agent listening").await?;
                let mut gw_cfg = gateway_config(&env.state, "127.0.0.1:0".parse()?, agent_addr);
                if kind == Kind::VmgateSplitTcp
                    || (kind == Kind::VmgateSplitCompare && env.compare_tcp)
                {
                    gw_cfg.agents.session_transport = vmgate_gateway::config::SessionTransport::Tcp;
                }
                let gw_toml = env.work.join(format!("gateway-split{tag}.toml"));
                write_toml(&gw_toml, &gw_cfg)?;
                let mut gateway = Command::new(&vmgate)
                    .arg("gateway")
                    .arg("--config")
                    .arg(&gw_toml)
                    .stdin(Stdio::null())
                    .stderr(log_file(env, &format!("vmgate-gateway{tag}"))?)
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting `vmgate gateway`")?;
                let gw_log = format!("vmgate-gateway{tag}");
                let port = logged_addr(env, &mut gateway, &gw_log, "gateway listening")
                    .await?
                    .port();
                sys.other_pid = agent.id();
                sys.mem_pid = gateway.id();
                sys.children.push(agent);
                sys.children.push(gateway);
                sys.vmgate(env, port).await?;
            }
        }
        Ok(sys)
    }

    /// Points clients at a vmgate gateway and waits until it routes the
    /// bench guest (the agent's inventory has arrived).
    async fn vmgate(&mut self, env: &Env, port: u16) -> Result<()> {
        env.state.write_gateway_info(&GatewayInfo {
            url: format!("https://127.0.0.1:{port}"),
        })?;
        self.reach = Reach::Vmgate {
            port,
            state: env.state.clone(),
        };
        // Until the agent's inventory arrived the guest is unknown; a
        // refused session holds no channel, so the probe reuses its own.
        let channel = self.names.take(Mode::Echo)?;
        let mut last = None;
        for _ in 0..200 {
            let probe = async {
                let path = self.ticket_path(&channel)?;
                let mut c = self.open_prepared(Mode::Echo, &path, false).await?;
                c.echo(&Bytes::from_static(b"up?")).await?;
                c.close().await;
                anyhow::Ok(())
            };
            match probe.await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last
            .expect("tried")
            .context("vmgate never served the bench guest"))
    }

    /// A WebSocket path with a fresh ticket for `channel` of the bench guest.
    fn ticket_path(&self, channel: &str) -> Result<String> {
        self.ticket_path_for(GUEST, channel)
    }

    /// A WebSocket path with a fresh ticket for `channel` of `guest`.
    pub fn ticket_path_for(&self, guest: &str, channel: &str) -> Result<String> {
        let Reach::Vmgate { state, .. } = &self.reach else {
            bail!("not a vmgate system");
        };
        let t = mint(
            state,
            &TicketRequest {
                guest: guest.into(),
                channels: vec![channel.into()],
                mode: vmgate_ticket::Mode::Interactive,
                ttl: Duration::from_secs(3600),
                max_session: None,
            },
        )?;
        // The minted URL's path: built by vmgate-client, like every URL.
        let uri: http::Uri = t.ws_url.parse()?;
        Ok(uri.path_and_query().map_or("/", |p| p.as_str()).to_string())
    }

    /// What opening a session of `mode` needs before the clock starts:
    /// for vmgate a fresh ticket (single use) for a fresh channel.
    pub fn prepare(&self, mode: Mode) -> Result<String> {
        Ok(match &self.reach {
            Reach::Vmgate { .. } => self.ticket_path(&self.names.take(mode)?)?,
            Reach::Client(_) => format!("/{}", mode.name()),
            _ => "/".into(),
        })
    }

    /// The processes whose CPU time is the system's (none for the raw
    /// ceiling and the client ceiling: their work is the source's).
    pub fn cpu_pids(&self) -> Vec<u32> {
        match self.kind {
            Kind::Raw | Kind::Client => vec![],
            // Every websockify instance (the bulk one does the work).
            Kind::Websockify => self.children.iter().filter_map(|c| c.id()).collect(),
            _ => self.mem_pid.into_iter().chain(self.other_pid).collect(),
        }
    }

    /// The system's processes each on its own, where it has more than one
    /// kind (split: the gateway, which a fleet pays for, and the agent).
    pub fn cpu_parts(&self) -> Vec<(&'static str, Vec<u32>)> {
        match self.kind {
            Kind::VmgateSplit | Kind::VmgateSplitCompare | Kind::VmgateSplitTcp => vec![
                ("gateway", self.mem_pid.into_iter().collect()),
                ("agent", self.other_pid.into_iter().collect()),
            ],
            _ => vec![],
        }
    }

    /// Opens a prepared session.
    pub async fn open_prepared(&self, mode: Mode, path: &str, small: bool) -> Result<Conn> {
        let port = match &self.reach {
            Reach::Raw(p) => {
                let s = TcpStream::connect(("127.0.0.1", p.tcp(mode))).await?;
                s.set_nodelay(true)?;
                let buf = vec![0u8; if small { 64 } else { 256 * 1024 }];
                return Ok(Conn::Tcp(s, buf.into_boxed_slice()));
            }
            Reach::Client(p) => *p,
            Reach::Websockify(ports) => ports[Mode::ALL.iter().position(|m| *m == mode).unwrap()],
            Reach::Vmgate { port, .. } => *port,
        };
        Ok(Conn::Ws(Box::new(
            self.client.connect(port, path, small).await?,
        )))
    }

    /// The gateway's public port (vmgate systems).
    pub fn vmgate_port(&self) -> Option<u16> {
        match &self.reach {
            Reach::Vmgate { port, .. } => Some(*port),
            _ => None,
        }
    }

    pub async fn open(&self, mode: Mode, small: bool) -> Result<Conn> {
        let path = self.prepare(mode)?;
        self.open_prepared(mode, &path, small).await
    }

    /// Stops the system's processes and waits for them.
    pub async fn stop(mut self) {
        for c in &mut self.children {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}
