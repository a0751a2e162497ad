//! The end-to-end harness: a real test guest under QEMU, `vmgate agent` and
//! `vmgate gateway` as separate processes talking QUIC with mutual TLS, and
//! clients going through the gateway's real TLS listener.
//!
//! Every suite can run against both agent backends: [`Stack::start_backend`]
//! takes a [`Backend`]. Under `qemu` the harness boots the guest itself and
//! declares its sockets in the agent's config; under `libvirt` it starts
//! libvirtd if needed and creates the guest as a transient libvirt domain,
//! which the agent finds by itself. A scenario written as
//! `async fn NAME(backend: Backend)` that uses [`Stack::name`] (not a
//! literal guest name) becomes one test per backend with
//! [`for_each_backend!`]: `qemu::NAME` and `libvirt::NAME`.
#![allow(dead_code)]

pub mod libvirt;
pub mod rfb;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use vmgate::client::Ws;
use vmgate::state::{write_toml, GatewayInfo, State};
use vmgate::tickets::{mint, Minted, TicketRequest};
use vmgate_testkit::{BootOptions, Guest};
use vmgate_wire::Control;

/// Which agent backend a [`Stack`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The agent is given the guest's QEMU sockets in its config.
    Qemu,
    /// The guest is a libvirt domain; the agent follows libvirt.
    Libvirt,
}

/// Turns each `async fn NAME(backend: Backend)` scenario into two tests,
/// `qemu::NAME` and `libvirt::NAME`.
#[allow(unused_macros)]
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod qemu {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Qemu).await
                }
            )*
        }
        mod libvirt {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Libvirt).await
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use for_each_backend;

/// Generous: TCG guests on two loaded cores are slow, and a deadline here
/// only bounds a failing test, it never decides a passing one.
pub const WAIT: Duration = Duration::from_secs(40);

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub state: State,
    pub backend: Backend,
    /// The guest's name: `demo` under qemu; unique per test under libvirt,
    /// where domain names are host-wide.
    pub name: String,
    /// The QEMU child (qemu backend).
    pub guest: Option<Guest>,
    /// The transient domain (libvirt backend).
    pub domain: Option<libvirt::Domain>,
    /// Held while the stack lives (libvirt): a libvirtd restart waits.
    _daemon: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    pub agent_addr: SocketAddr,
    pub gw_addr: SocketAddr,
    agent: Option<Child>,
    gateway: Option<Child>,
    /// The gateway's configuration as written.
    pub gw_cfg: vmgate_gateway::GatewayConfig,
    /// `vmgate admin`, once started.
    minter: Option<Child>,
    /// Unix second from which the running gateway accepts new tickets: it
    /// refuses those issued up to its start plus the clock-skew margin
    /// (the restart rule), and it started before it said it listens.
    tickets_from: u64,
    /// More agents by name ([`Stack::spawn_agent`]).
    extra_agents: Vec<(String, Child)>,
    pub minter_addr: Option<SocketAddr>,
}

/// Strips the terminal colours tracing puts in the log files.
pub fn plain(log: &str) -> String {
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

/// Where a service is told to listen: port 0, so the process itself picks a
/// free port (tests run in parallel; a port found free here and bound later
/// by the child could be taken in between). [`wait_listening`] reads the
/// port back from the process's log.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Waits until `child`, logging to `log`, logs the line containing `marker`
/// with its bound `addr=…`, and returns that address; fails if the process
/// exits first or says nothing within [`WAIT`].
pub async fn wait_listening(child: &mut Child, log: &Path, marker: &str) -> SocketAddr {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .filter(|l| l.contains(marker))
            .find_map(logged_addr)
        {
            return addr;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{} exited ({status}) before {marker:?}:\n{text}",
                log.display()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {marker:?} in {} within {WAIT:?}:\n{text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `addr=` field of a tracing line (colours or not).
fn logged_addr(line: &str) -> Option<SocketAddr> {
    plain(line)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
}

fn spawn(args: &[&str], log: PathBuf) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(args)
        .env("VMGATE_LOG", "info,vmgate_agent=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning vmgate")
}

impl Stack {
    /// Boots a guest named `demo`, starts an agent and a gateway for it, and
    /// waits until the gateway routes the guest.
    pub async fn start() -> Stack {
        Stack::start_with(|_| {}, |_| {}).await
    }

    /// [`Stack::start`] with the guest's boot options and the agent's view
    /// of it adjusted (e.g. a port the guest has but the agent does not
    /// expose).
    pub async fn start_with(
        boot: impl FnOnce(&mut BootOptions),
        config: impl FnOnce(&mut vmgate_agent::config::GuestConfig),
    ) -> Stack {
        Stack::start_full(
            Backend::Qemu,
            true,
            boot,
            |cfg| config(&mut cfg.guests[0]),
            |_, _| {},
        )
        .await
    }

    /// Boots the test guest, starts an agent (with `backend`) and a gateway
    /// for it, and waits until the guest's shell is reachable through them.
    ///
    /// Under libvirt the agent starts first and the domain after it, so the
    /// agent learns of it from libvirt's events and its console is attached
    /// before the guest prints anything.
    pub async fn start_backend(backend: Backend) -> Stack {
        Stack::start_full(backend, true, |_| {}, |_| {}, |_, _| {}).await
    }

    /// [`Stack::start_backend`] for a test that holds [`libvirt::DAEMON`]
    /// exclusively (to restart libvirtd).
    pub async fn start_with_daemon_held(backend: Backend) -> Stack {
        Stack::start_full(backend, false, |_| {}, |_| {}, |_, _| {}).await
    }

    /// [`Stack::start_backend`] under libvirt, with the agent's `[libvirt]`
    /// settings changed by `tune`.
    pub async fn start_libvirt_with(
        tune: impl FnOnce(&mut vmgate_agent::config::LibvirtConfig),
    ) -> Stack {
        Stack::start_full(
            Backend::Libvirt,
            true,
            |_| {},
            |cfg| tune(&mut cfg.libvirt),
            |_, _| {},
        )
        .await
    }

    /// Like [`Stack::start`], with an audit log at `audit.jsonl`, and limits
    /// as `tune` sets them.
    pub async fn start_secure(tune: impl FnOnce(&mut vmgate_gateway::config::Limits)) -> Stack {
        Stack::start_secure_with(|cfg| tune(&mut cfg.limits)).await
    }

    /// [`Stack::start_secure`] with the whole gateway configuration
    /// changed by `tune`.
    pub async fn start_secure_with(tune: impl FnOnce(&mut vmgate_gateway::GatewayConfig)) -> Stack {
        Stack::start_full(
            Backend::Qemu,
            true,
            |_| {},
            |_| {},
            |state, cfg| {
                cfg.audit = Some(vmgate_gateway::config::Audit {
                    path: state.path("audit.jsonl"),
                });
                tune(cfg);
            },
        )
        .await
    }

    /// Boots the stack with the guest's boot options, the agent's
    /// configuration and the gateway's configuration changed first.
    pub async fn start_full(
        backend: Backend,
        share_daemon: bool,
        boot: impl FnOnce(&mut BootOptions),
        config: impl FnOnce(&mut vmgate_agent::config::AgentConfig),
        configure: impl FnOnce(&State, &mut vmgate_gateway::GatewayConfig),
    ) -> Stack {
        if backend == Backend::Libvirt {
            tokio::task::spawn_blocking(libvirt::ensure_daemons)
                .await
                .unwrap();
        }
        let daemon = if backend == Backend::Libvirt && share_daemon {
            Some(libvirt::DAEMON.read().await)
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        let state = State::new(dir.path().join("state"));
        state.init().unwrap();
        let image = tokio::task::spawn_blocking(|| {
            vmgate_testkit::build_image(&vmgate_testkit::default_cache_dir())
        })
        .await
        .unwrap()
        .expect("building the test guest");
        let run = dir.path().join("guest");
        std::fs::create_dir_all(&run).unwrap();
        let (name, guest, agent_cfg) = match backend {
            Backend::Qemu => {
                let mut opts = BootOptions::new("demo", &run);
                boot(&mut opts);
                let guest = Guest::boot(&image, &opts).expect("booting");
                let guest_cfg = vmgate::demo::guest_config(&guest);
                let cfg = state.agent_config(any_port(), vec![guest_cfg]);
                ("demo".to_string(), Some(guest), cfg)
            }
            Backend::Libvirt => {
                let name = libvirt::unique_name();
                let mut cfg = state.agent_config(any_port(), vec![]);
                cfg.libvirt.uri = libvirt::URI.into();
                // This test's domains only: other tests run theirs beside.
                cfg.libvirt.domains = vec![name.clone(), format!("{name}.*")];
                (name, None, cfg)
            }
        };
        let mut agent_cfg = agent_cfg;
        config(&mut agent_cfg);
        write_toml(&state.path("agent.toml"), &agent_cfg).unwrap();
        let gw_cfg = state.gateway_config(any_port(), &[]);
        let mut stack = Stack {
            dir,
            state,
            backend,
            name,
            guest,
            domain: None,
            _daemon: daemon,
            agent_addr: any_port(),
            gw_addr: any_port(),
            agent: None,
            gateway: None,
            gw_cfg,
            minter: None,
            minter_addr: None,
            extra_agents: Vec::new(),
            tickets_from: 0,
        };
        stack.start_agent();
        let log = stack.dir.path().join("agent.log");
        stack.agent_addr =
            wait_listening(stack.agent.as_mut().unwrap(), &log, "agent listening").await;
        // A restarted agent binds the same port, as a real node's would.
        agent_cfg.listen = stack.agent_addr;
        write_toml(&stack.state.path("agent.toml"), &agent_cfg).unwrap();
        let mut gw_cfg = stack.state.gateway_config(any_port(), &[stack.agent_addr]);
        // Every stack has the admin listener: its guest listing is how the
        // harness knows a guest is routed.
        stack.state.init_admin().unwrap();
        gw_cfg.admin = Some(stack.state.gateway_admin_config(any_port()));
        configure(&stack.state, &mut gw_cfg);
        stack.gw_cfg = gw_cfg;
        stack.launch_gateway().await;
        if backend == Backend::Libvirt {
            stack.wait_agent_up().await;
            stack.domain = Some(stack.create_domain(&stack.name.clone()).await);
        }
        let name = stack.name.clone();
        stack.wait_routable_guest(&name).await;
        // Input typed before the guest's shell runs is lost, so tests start
        // once the prompt is there (the agent's scrollback has the boot).
        stack.wait_booted(&name).await;
        stack
    }
    /// Starts another test guest as libvirt domain `name` (a name the
    /// agent's filter selects: [`Stack::name`] followed by `.something`).
    pub async fn create_domain(&self, name: &str) -> libvirt::Domain {
        self.domain(name, libvirt::Domain::create).await
    }

    /// [`Stack::create_domain`] without the test domains' metadata
    /// element, paused ([`libvirt::Domain::create_untagged_paused`]).
    pub async fn create_untagged_paused_domain(&self, name: &str) -> libvirt::Domain {
        self.domain(name, libvirt::Domain::create_untagged_paused)
            .await
    }

    /// Defines another test guest as persistent libvirt domain `name`,
    /// without starting it (a name as for [`Stack::create_domain`]).
    pub async fn define_domain(&self, name: &str) -> libvirt::Domain {
        self.domain(name, libvirt::Domain::define).await
    }

    async fn domain(
        &self,
        name: &str,
        make: fn(&str, &vmgate_testkit::GuestImage, &std::path::Path) -> libvirt::Domain,
    ) -> libvirt::Domain {
        let image = tokio::task::spawn_blocking(|| {
            vmgate_testkit::build_image(&vmgate_testkit::default_cache_dir())
        })
        .await
        .unwrap()
        .expect("building the test guest");
        let run = self.dir.path().join("guest");
        let name = name.to_string();
        tokio::task::spawn_blocking(move || make(&name, &image, &run))
            .await
            .unwrap()
    }

    /// The qemu backend's guest process, to read.
    pub fn qemu(&self) -> &Guest {
        self.guest
            .as_ref()
            .expect("this test needs the qemu backend's guest")
    }

    /// The qemu backend's guest process.
    pub fn qemu_guest(&mut self) -> &mut Guest {
        self.guest
            .as_mut()
            .expect("this test needs the qemu backend's guest")
    }

    /// Waits until the guest's serial console shows a fresh boot's prompt.
    pub async fn wait_booted(&self, guest: &str) {
        let t = self.ticket(guest, &["serial0"], true);
        Session::new(self.connect(&t.ws_url).await)
            .expect_booted(0)
            .await;
    }

    /// Waits until the agent answers the gateway (an unknown guest is
    /// refused by the agent's inventory, not by a missing route to it).
    async fn wait_agent_up(&self) {
        self.wait_log("gateway.log", WAIT, "the agent's inventory", |l| {
            l.contains("inventory")
        })
        .await;
    }

    /// Waits (at most `wait`) until the log `name` has a line for which
    /// `line` holds; fails showing the gateway's and agent's logs.
    pub async fn wait_log(
        &self,
        name: &str,
        wait: Duration,
        what: &str,
        line: impl Fn(&str) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.log(name).lines().any(&line) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} in {name}; gateway log:\n{}\nagent log:\n{}",
                self.log("gateway.log"),
                self.log("agent.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the gateway with [`Stack::gw_cfg`] and waits until it
    /// listens. Its first start binds port 0 (and the admin listener too);
    /// the ports it got are written back into the configuration, so a
    /// restart binds the same ones and URLs handed out stay valid.
    async fn launch_gateway(&mut self) {
        let toml = self.state.path("gateway.toml");
        write_toml(&toml, &self.gw_cfg).unwrap();
        let log = self.dir.path().join("gateway.log");
        let mut child = spawn(
            &["gateway", "--config", toml.to_str().unwrap()],
            log.clone(),
        );
        self.gw_addr = wait_listening(&mut child, &log, "gateway listening").await;
        self.tickets_from = vmgate::tickets::now() + self.gw_cfg.limits.ticket_clock_skew_secs + 1;
        self.gw_cfg.listen = self.gw_addr;
        if let Some(admin) = self.gw_cfg.admin.as_mut() {
            admin.listen = wait_listening(&mut child, &log, "admin listener").await;
        }
        self.gateway = Some(child);
        write_toml(&toml, &self.gw_cfg).unwrap();
        self.state
            .write_gateway_info(&GatewayInfo {
                url: format!("https://{}", self.gw_addr),
            })
            .unwrap();
    }

    /// The gateway process, taken from the stack: the caller stops it
    /// (e.g. with a signal) and reaps it.
    pub fn take_gateway(&mut self) -> Option<Child> {
        self.gateway.take()
    }

    /// The agent process, taken from the stack: the caller stops it (e.g.
    /// with a signal) and reaps it.
    pub fn take_agent(&mut self) -> Option<Child> {
        self.agent.take()
    }

    /// Stops the gateway, changes its configuration with `configure`, and
    /// starts it again (its new log replaces `gateway.log`).
    pub async fn restart_gateway(
        &mut self,
        configure: impl FnOnce(&mut vmgate_gateway::GatewayConfig),
    ) {
        if let Some(mut g) = self.gateway.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
        configure(&mut self.gw_cfg);
        self.launch_gateway().await;
        self.wait_routable().await;
    }

    pub fn start_agent(&mut self) {
        let config = self.state.path("agent.toml");
        let mut args = vec!["agent", "--config", config.to_str().unwrap()];
        // The config leaves `backend` at its default: the flag selects.
        if self.backend == Backend::Libvirt {
            args.extend(["--backend", "libvirt"]);
        }
        self.agent = Some(spawn(&args, self.dir.path().join("agent.log")));
    }

    /// Starts another `vmgate agent --backend libvirt` with `cfg`, logging
    /// to `{name}.log`, and returns the address it listens on once it does
    /// (give `cfg` [`any_port`]); stopped with the stack.
    pub async fn spawn_libvirt_agent(
        &mut self,
        name: &str,
        cfg: &vmgate_agent::AgentConfig,
    ) -> SocketAddr {
        self.spawn_agent(name, cfg, Backend::Libvirt).await
    }

    /// Starts another `vmgate agent` with `cfg` under `backend`, logging to
    /// `{name}.log` (replaced on a restart), and returns the address it
    /// listens on once it does (give `cfg` [`any_port`], or the address a
    /// previous run got to restart it there); stopped with the stack or by
    /// [`Stack::kill_extra_agent`].
    pub async fn spawn_agent(
        &mut self,
        name: &str,
        cfg: &vmgate_agent::AgentConfig,
        backend: Backend,
    ) -> SocketAddr {
        let path = self.state.path(&format!("{name}.toml"));
        write_toml(&path, cfg).unwrap();
        let mut args = vec!["agent", "--config", path.to_str().unwrap()];
        if backend == Backend::Libvirt {
            args.extend(["--backend", "libvirt"]);
        }
        let log = self.dir.path().join(format!("{name}.log"));
        let mut child = spawn(&args, log.clone());
        let addr = wait_listening(&mut child, &log, "agent listening").await;
        self.extra_agents.push((name.to_string(), child));
        addr
    }

    /// Starts another `vmgate gateway` on the stack's configuration file
    /// with `--listen` and `--admin-listen` on free ports (as a fleet's
    /// gateways on one host share one file), logging to `{name}.log`;
    /// returns its public and admin addresses once it listens. Stopped
    /// with the stack or by [`Stack::kill_extra_agent`]`(name)`.
    pub async fn spawn_gateway(&mut self, name: &str) -> (SocketAddr, SocketAddr) {
        let toml = self.state.path("gateway.toml");
        let log = self.dir.path().join(format!("{name}.log"));
        let mut child = spawn(
            &[
                "gateway",
                "--config",
                toml.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            log.clone(),
        );
        let public = wait_listening(&mut child, &log, "gateway listening").await;
        let admin = wait_listening(&mut child, &log, "admin listener").await;
        self.extra_agents.push((name.to_string(), child));
        (public, admin)
    }

    /// The process id of the agent [`Stack::spawn_agent`] started as `name`.
    pub fn extra_agent_pid(&self, name: &str) -> u32 {
        self.extra_agents
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no agent {name} runs"))
            .1
            .id()
    }

    /// Kills the agent [`Stack::spawn_agent`] started as `name`.
    pub fn kill_extra_agent(&mut self, name: &str) {
        let i = self
            .extra_agents
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no agent {name} runs"));
        let (_, mut c) = self.extra_agents.remove(i);
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The agent process's id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().expect("the gateway runs").id()
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("the agent runs").id()
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// The serial console's log file on the agent.
    pub fn console_log(&self) -> String {
        std::fs::read_to_string(self.state.logs().join(format!("{}.serial0.log", self.name)))
            .unwrap_or_default()
    }

    pub fn ticket(&self, guest: &str, channels: &[&str], read_only: bool) -> Minted {
        self.ticket_with(guest, channels, read_only, Duration::from_secs(60), None)
    }

    /// A ticket minted with the state directory's key, within the local
    /// minter's caps; a `ttl` of zero, which no minter issues, gives a
    /// ticket that has already expired (signed outside the caps).
    pub fn ticket_with(
        &self,
        guest: &str,
        channels: &[&str],
        read_only: bool,
        ttl: Duration,
        max_session: Option<Duration>,
    ) -> Minted {
        let mode = if read_only {
            vmgate_ticket::Mode::ReadOnly
        } else {
            vmgate_ticket::Mode::Interactive
        };
        if ttl.is_zero() {
            let claims = vmgate_ticket::Claims::new(
                guest,
                channels.iter().copied(),
                mode,
                vmgate::tickets::now(),
                0,
                max_session.map(|d| d.as_secs()),
            );
            let key = vmgate_minter::SigningKey::load(self.state.signing_key()).unwrap();
            let ticket = vmgate_minter::sign(&key, &claims);
            let base = format!("https://{}", self.gw_addr);
            return Minted {
                url: vmgate_client::url::web_url(&base, &ticket).unwrap(),
                ws_url: vmgate_client::url::ws_url(&base, guest, channels[0], &ticket).unwrap(),
                ticket,
                id: claims.id,
                expires_at: String::new(),
                expires_at_unix: claims.not_after,
            };
        }
        mint(
            &self.state,
            &TicketRequest {
                guest: guest.into(),
                channels: channels.iter().map(|c| c.to_string()).collect(),
                mode,
                ttl,
                max_session,
            },
        )
        .unwrap()
    }

    /// A WebSocket to `url` through the gateway's TLS listener.
    pub async fn connect(&self, url: &str) -> Ws {
        vmgate::client::connect(url, &self.state.public_ca())
            .await
            .expect("connecting to the gateway")
    }

    /// Opens an interactive serial session.
    pub async fn serial(&self) -> Session {
        let t = self.ticket(&self.name, &["serial0"], false);
        Session::new(self.connect(&t.ws_url).await)
    }

    /// The gateway's admin listener, `https://…`.
    pub fn admin_url(&self) -> String {
        let a = self
            .gw_cfg
            .admin
            .as_ref()
            .expect("the harness configures the admin listener");
        format!("https://{}", a.listen)
    }

    /// An administrator's credentials using the bearer token.
    pub fn admin_token(&self) -> vmgate::admin_client::AdminCreds {
        self.state.admin_token_creds().unwrap()
    }

    /// One admin API request; panics if it cannot be made at all.
    pub async fn admin(
        &self,
        method: http::Method,
        url: &str,
        creds: &vmgate::admin_client::AdminCreds,
    ) -> vmgate::admin_client::Answer {
        vmgate::admin_client::request(method, url, None, creds)
            .await
            .unwrap_or_else(|e| panic!("admin request to {url}: {e:#}"))
    }

    /// `GET` on the gateway's admin listener with the token; must be 200.
    pub async fn admin_get(&self, path: &str) -> vmgate::admin_client::Answer {
        let url = format!("{}{path}", self.admin_url());
        let a = self
            .admin(http::Method::GET, &url, &self.admin_token())
            .await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.body
    }

    /// The audit log's lines, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// Starts `vmgate admin` (the minter) and waits until it answers;
    /// returns its URL.
    pub async fn start_minter(&mut self) -> String {
        let cfg = self
            .state
            .minter_config(any_port(), &format!("https://{}", self.gw_addr));
        write_toml(&self.state.path("admin.toml"), &cfg).unwrap();
        let log = self.dir.path().join("minter.log");
        let mut minter = spawn(
            &[
                "admin",
                "--config",
                self.state.path("admin.toml").to_str().unwrap(),
            ],
            log.clone(),
        );
        let addr = wait_listening(&mut minter, &log, "ticket minter listening").await;
        self.minter = Some(minter);
        self.minter_addr = Some(addr);
        let url = format!("https://{addr}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = vmgate::admin_client::request(
                http::Method::GET,
                &format!("{url}/healthz"),
                None,
                &self.admin_token(),
            )
            .await;
            if matches!(r, Ok(ref a) if a.status == 200) {
                return url;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "vmgate admin never answered: {r:?}\n{}",
                self.log("minter.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A WebSocket to `url` from source address `from`, with extra request
    /// headers; the handshake's error if the gateway refused it.
    pub async fn connect_as(
        &self,
        url: &str,
        from: IpAddr,
        headers: &[(&str, &str)],
    ) -> Result<Ws, String> {
        let mut c = vmgate_client::Connector::new(&self.state.public_ca())
            .unwrap()
            .bind(from);
        for (k, v) in headers {
            c = c.header(k, v).unwrap();
        }
        c.connect(url).await.map_err(|e| e.to_string())
    }

    /// The state (`running`, `down`) of `guest` in the gateway's admin
    /// `GET /v1/guests`, or `None` if it is not listed.
    pub async fn guest_state(&self, guest: &str) -> Option<String> {
        let v: Vec<serde_json::Value> = self.admin_get("/v1/guests").await.json().unwrap();
        v.iter()
            .find(|g| g["name"] == guest)
            .map(|g| g["state"].as_str().unwrap_or_default().to_string())
    }

    /// Waits until [`Stack::guest_state`] of `guest` is `want`.
    pub async fn wait_guest_state(&self, guest: &str, want: Option<&str>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = self.guest_state(guest).await;
            if state.as_deref() == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{guest} stays {state:?}, not {want:?}; gateway log:\n{}\nagent log:\n{}",
                self.log("gateway.log"),
                self.log("agent.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the gateway lists no session (earlier ones finished).
    pub async fn wait_no_sessions(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let a = self
                .admin(
                    http::Method::GET,
                    &format!("{}/v1/sessions", self.admin_url()),
                    &self.admin_token(),
                )
                .await;
            let v: Vec<serde_json::Value> = a.json().unwrap();
            if v.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sessions stay: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the gateway routes the guest to a live agent.
    pub async fn wait_routable(&self) {
        self.wait_routable_guest(&self.name.clone()).await
    }

    /// Waits until the gateway routes `guest` to a live agent: the admin
    /// API lists it running, then a read-only session gets the agent's
    /// greeting from the guest's console. Fails after [`WAIT`].
    pub async fn wait_routable_guest(&self, guest: &str) {
        self.wait_guest_state(guest, Some("running")).await;
        self.wait_tickets_accepted().await;
        let t = self.ticket(guest, &["serial0"], true);
        Session::new(self.connect(&t.ws_url).await)
            .expect_notice("read-only session")
            .await;
    }

    /// Waits until a ticket minted now is newer than the gateway's start
    /// plus its clock-skew margin (a computed wait, not a poll).
    pub async fn wait_tickets_accepted(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let from = Duration::from_secs(self.tickets_from);
        if let Some(left) = from.checked_sub(now) {
            tokio::time::sleep(left).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A failing test shows what the services said (CI keeps no files).
        if std::thread::panicking() {
            for log in ["agent.log", "gateway.log"] {
                let text = self.log(log);
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("--- last lines of {log} ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let extra = std::mem::take(&mut self.extra_agents);
        for c in [self.agent.take(), self.gateway.take(), self.minter.take()]
            .into_iter()
            .flatten()
            .chain(extra.into_iter().map(|(_, c)| c))
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(g) = self.guest.as_mut() {
            g.kill();
        }
        // The domain (if any) is destroyed when dropped.
    }
}

/// What a client saw next.
#[derive(Debug)]
pub enum Event {
    Data(Vec<u8>),
    Notice(String),
    Eof,
    Closed(u16, String),
    Timeout,
}

/// A console WebSocket with everything it received so far.
pub struct Session {
    pub ws: Ws,
    /// All console bytes received.
    pub output: Vec<u8>,
    pub notices: Vec<String>,
    pub closed: Option<(u16, String)>,
}

impl Session {
    pub fn new(ws: Ws) -> Session {
        Session {
            ws,
            output: Vec::new(),
            notices: Vec::new(),
            closed: None,
        }
    }

    /// Sends the half-close control message (`{"type":"eof"}`).
    pub async fn send_eof(&mut self) {
        self.ws
            .send(Message::text(Control::Eof.to_text()))
            .await
            .expect("sending to the gateway");
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .await
            .expect("sending to the gateway");
    }

    pub async fn next_event(&mut self, wait: Duration) -> Event {
        if let Some((c, r)) = &self.closed {
            return Event::Closed(*c, r.clone());
        }
        let msg = match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => return Event::Timeout,
            Ok(m) => m,
        };
        let ev = match msg {
            Some(Ok(Message::Binary(b))) => {
                self.output.extend_from_slice(&b);
                Event::Data(b.to_vec())
            }
            Some(Ok(Message::Text(t))) => match Control::parse(t.as_str()) {
                Ok(Control::Eof) => Event::Eof,
                Ok(Control::Notice { text }) => {
                    self.notices.push(text.clone());
                    Event::Notice(text)
                }
                other => panic!("the gateway sent {other:?}: {t}"),
            },
            Some(Ok(Message::Close(f))) => {
                let (c, r) = f
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                self.closed = Some((c, r.clone()));
                Event::Closed(c, r)
            }
            Some(Ok(_)) => return Box::pin(self.next_event(wait)).await,
            Some(Err(e)) => {
                self.closed = Some((1006, e.to_string()));
                Event::Closed(1006, e.to_string())
            }
            None => {
                self.closed = Some((1006, "stream ended".into()));
                Event::Closed(1006, "stream ended".into())
            }
        };
        ev
    }

    /// Reads until the output contains `needle`; panics with what came
    /// instead after [`WAIT`].
    pub async fn expect(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !String::from_utf8_lossy(&self.output).contains(needle) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Timeout => panic!(
                    "no {needle:?} within {WAIT:?}; output so far:\n{}",
                    String::from_utf8_lossy(&self.output)
                ),
                Event::Closed(c, r) => panic!(
                    "session closed ({c} {r}) before {needle:?}; output:\n{}",
                    String::from_utf8_lossy(&self.output)
                ),
                _ => {}
            }
        }
    }

    /// Reads until `needle` appears in the output at or after byte `from`;
    /// returns the offset just past it.
    pub async fn expect_since(&mut self, from: usize, needle: &str) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = &self.output[from.min(self.output.len())..];
            if let Some(i) = text
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                return from + i + needle.len();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Timeout | Event::Closed(..) => {
                    panic!("no {needle:?} after byte {from}; output:\n{}", self.text())
                }
                _ => {}
            }
        }
    }

    /// Reads until a fresh boot (one printed at or after byte `from`) shows
    /// its ready line and the shell's prompt.
    pub async fn expect_booted(&mut self, from: usize) {
        let ready = self.expect_since(from, "vmgate-guest-ready").await;
        // The guest starts the serial shell in the background just before
        // it prints the ready line, so the first prompt may come before it
        // (seen under load as "guest# \x1b[6nvmgate-guest-ready").
        let prompt_before = self.output[from..ready]
            .windows(b"guest# ".len())
            .any(|w| w == b"guest# ");
        if !prompt_before {
            self.expect_since(ready, "guest# ").await;
        }
    }

    /// Reads until a notice containing `needle` arrives.
    pub async fn expect_notice(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.notices.iter().any(|n| n.contains(needle)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Timeout | Event::Closed(..) => {
                    panic!("no notice {needle:?}; notices: {:?}", self.notices)
                }
                _ => {}
            }
        }
    }

    /// Reads until the session closes; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_event(WAIT).await {
                Event::Closed(c, r) => return (c, r),
                Event::Timeout => panic!("session did not close within {WAIT:?}"),
                _ => {}
            }
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}
