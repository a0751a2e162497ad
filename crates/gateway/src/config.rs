//! The gateway's configuration file (TOML), validated once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::routing::GuestAllow;

pub use vmgate_config::ConfigError;

/// The gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// TCP address of the public HTTPS listener (consoles, web page).
    pub listen: SocketAddr,
    /// The public HTTPS certificate and key (PEM).
    pub tls: PublicTls,
    /// The ticket verifying (public) key, PEM. The gateway cannot mint.
    pub ticket_public_key: PathBuf,
    /// More verifying keys accepted besides `ticket_public_key`, while the
    /// minter's key rotates (docs/operations.md); at most
    /// `vmgate_ticket::MAX_VERIFYING_KEYS - 1`. Re-read on SIGHUP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ticket_public_keys: Vec<PathBuf>,
    /// How the gateway reaches agents.
    pub agents: AgentsTls,
    /// The agents to connect to.
    #[serde(default, rename = "agent")]
    pub agent_list: Vec<AgentEntry>,
    /// Session and abuse limits (every field has a default).
    #[serde(default)]
    pub limits: Limits,
    /// The audit log; none without this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    /// The administrators' listener; none without this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminListener>,
    /// Which sites may frame the console pages (control panels).
    #[serde(default, skip_serializing_if = "Embed::is_default")]
    pub embed: Embed,
    /// Where used tickets, throttling, session counts and page sessions
    /// live: an embedded database (the default) or a Redis shared by a
    /// fleet of gateways ([`crate::store`], docs/fleet.md).
    #[serde(default)]
    pub store: StoreConfig,
}

/// The gateway's store ([`crate::store`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://…` (TLS): every
    /// gateway pointing at the same store is one fleet. Without it the
    /// gateway keeps its state in an embedded database at `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The embedded database file. Default: `gateway.redb` in
    /// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else in
    /// `/var/lib/vmgate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// CA bundle (PEM) a `rediss://` server's certificate must chain to;
    /// default: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Prefix of every key this fleet writes, so fleets may share a Redis.
    pub prefix: String,
    /// This gateway's name in the fleet's session list and its metrics.
    /// Default: the host name and the public listener's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Deadline of each call to Redis (and of connecting), milliseconds.
    pub timeout_ms: u64,
    /// A session's lease in the fleet's registry, seconds: renewed every
    /// third of it; a dead gateway's sessions leave the list and stop
    /// counting against the limits at most this long after it died.
    pub lease_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            url: None,
            path: None,
            ca: None,
            prefix: "vmgate:".into(),
            name: None,
            timeout_ms: 2000,
            lease_secs: 30,
        }
    }
}

impl StoreConfig {
    /// The embedded database's file.
    pub fn embedded_path(&self) -> PathBuf {
        if let Some(p) = &self.path {
            return p.clone();
        }
        let dir = std::env::var_os("STATE_DIRECTORY")
            // systemd may pass several, separated by colons: the first.
            .and_then(|d| {
                d.to_str()
                    .and_then(|d| d.split(':').next())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("/var/lib/vmgate"));
        dir.join("gateway.redb")
    }

    /// Checks the URL's scheme and the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.url {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(ConfigError::Invalid(
                    "store.url: use redis://host:6379/0 or rediss://host:6380/0".into(),
                ));
            }
        }
        if !(50..=60_000).contains(&self.timeout_ms) {
            return Err(ConfigError::Invalid("store.timeout_ms: 50 to 60000".into()));
        }
        if !(3..=3600).contains(&self.lease_secs) {
            return Err(ConfigError::Invalid("store.lease_secs: 3 to 3600".into()));
        }
        if self.prefix.len() > 64 || self.prefix.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid(
                "store.prefix: at most 64 printable characters, no spaces".into(),
            ));
        }
        if let Some(n) = &self.name {
            if !vmgate_wire::valid_name(n) {
                return Err(ConfigError::Invalid(format!(
                    "store.name: {n:?} is not a name (letters, digits and . _ : -)"
                )));
            }
        }
        Ok(())
    }
}

/// Embedding the console pages in another site's page (an iframe in a
/// control panel).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embed {
    /// Origins allowed to frame the pages (`https://panel.example`, a port
    /// may be `*`): the pages' `frame-ancestors`, and the only parents the
    /// pages post events to and take commands from. Empty (the default):
    /// no site may frame them.
    #[serde(default)]
    pub frame_ancestors: Vec<String>,
}

impl Embed {
    fn is_default(&self) -> bool {
        self.frame_ancestors.is_empty()
    }

    /// Checks each origin: `http` or `https`, a host of letters, digits,
    /// dots and dashes, an optional port (digits or `*`), nothing else (no
    /// path, no space, no `;`, which would end the CSP directive).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for o in &self.frame_ancestors {
            let ok = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
                .is_some_and(|rest| {
                    let (host, port) = match rest.rsplit_once(':') {
                        Some((h, p)) => (h, Some(p)),
                        None => (rest, None),
                    };
                    !host.is_empty()
                        && host
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                        && port.is_none_or(|p| {
                            p == "*"
                                || (!p.is_empty()
                                    && p.len() <= 5
                                    && p.bytes().all(|b| b.is_ascii_digit()))
                        })
                });
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "embed.frame_ancestors: {o:?} is not an origin like https://panel.example or https://panel.example:8443"
                )));
            }
        }
        Ok(())
    }

    /// The pages' Content-Security-Policy.
    pub fn content_security_policy(&self) -> String {
        let ancestors = if self.frame_ancestors.is_empty() {
            "'none'".to_string()
        } else {
            self.frame_ancestors.join(" ")
        };
        // data: images: noVNC draws the remote cursor as one; inline styles:
        // xterm.js and noVNC set them (scripts stay 'self' only).
        format!(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors {ancestors}"
        )
    }
}

/// The limits in force, replaced on SIGHUP ([`LiveLimits::reload`]): each
/// check reads the current ones, so a reload applies to the next request,
/// ticket and session, and sessions already open keep running.
#[derive(Debug)]
pub struct LiveLimits(std::sync::RwLock<std::sync::Arc<Limits>>);

impl LiveLimits {
    pub fn new(limits: Limits) -> LiveLimits {
        LiveLimits(std::sync::RwLock::new(std::sync::Arc::new(limits)))
    }

    /// The limits in force now.
    pub fn get(&self) -> std::sync::Arc<Limits> {
        self.0.read().expect("limits lock").clone()
    }

    /// Puts `new` in force. Returns the keys that changed but only apply
    /// to listeners started after a restart (each connection's deadlines,
    /// header bound, HTTP/2 settings and the unauthenticated connection
    /// caps are set when the listener starts), for the caller to log.
    pub fn reload(&self, new: Limits) -> Vec<&'static str> {
        let old = self.get();
        let mut restart = Vec::new();
        let mut differs = |key: &'static str, changed: bool| {
            if changed {
                restart.push(key);
            }
        };
        differs(
            "handshake_deadline_secs",
            old.handshake_deadline_secs != new.handshake_deadline_secs,
        );
        differs(
            "max_header_bytes",
            old.max_header_bytes != new.max_header_bytes,
        );
        differs(
            "max_unauthenticated_connections",
            old.max_unauthenticated_connections != new.max_unauthenticated_connections,
        );
        differs(
            "max_unauthenticated_per_address",
            old.max_unauthenticated_per_address != new.max_unauthenticated_per_address,
        );
        differs(
            "connection_idle_secs",
            old.connection_idle_secs != new.connection_idle_secs,
        );
        differs(
            "http2_keepalive_secs",
            old.http2_keepalive_secs != new.http2_keepalive_secs,
        );
        differs(
            "http2_max_streams",
            old.http2_max_streams != new.http2_max_streams,
        );
        *self.0.write().expect("limits lock") = std::sync::Arc::new(new);
        restart
    }
}

/// Session and abuse limits. Old configurations without a `[limits]`
/// section get these defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// End a session after this many seconds without a byte either way
    /// (0: never). Console users can sit idle for long, so off by default.
    pub idle_timeout_secs: u64,
    /// Sessions open at once on this gateway (0: unlimited).
    pub max_sessions: usize,
    /// Sessions open at once on one guest (0: unlimited).
    pub max_sessions_per_guest: usize,
    /// Failed ticket checks one source address may make per
    /// `throttle_window_secs` before its attempts are refused unchecked
    /// (0: no throttling). IPv6 addresses count per /64.
    pub failed_tickets_per_address: u32,
    /// The throttling window, in seconds.
    pub throttle_window_secs: u64,
    /// Deadline for a client's TLS handshake, and again for its request
    /// headers; the ticket is checked at once after the upgrade.
    pub handshake_deadline_secs: u64,
    /// Longest request target (path and query) accepted, in bytes.
    pub max_url_bytes: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Browser pages allowed to open console WebSockets, as origins
    /// (`https://console.example.com`). The gateway's own page (same origin
    /// as the request's Host) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Refuse a console WebSocket whose `Origin` header is not allowed
    /// (cross-site WebSocket hijacking). Clients that send no Origin (the
    /// CLI, native tools) are not browsers and pass.
    pub check_origin: bool,
    /// Longest ticket lifetime accepted (`not_after - iat`), in seconds.
    /// It also bounds how long after the store began a new epoch tickets
    /// minted before it are refused ("issued before the gateway's ticket
    /// store began").
    pub max_ticket_ttl_secs: u64,
    /// How far a minter's clock may be ahead of this gateway's, in
    /// seconds. A ticket issued further in the future is refused, and so
    /// is one issued up to this long after the store's epoch began (it
    /// cannot be told from one issued just before). Keep clocks in sync (NTP).
    pub ticket_clock_skew_secs: u64,
    /// Connections without a session (in the TLS handshake, sending
    /// requests, or idle) the public listener holds at once; more are
    /// closed at accept. It is also kept under the open-files limit.
    pub max_unauthenticated_connections: u32,
    /// The same, from one source address (IPv6: one /64). A user behind a
    /// shared NAT holding a console is not counted: a connection with a
    /// session is authenticated.
    pub max_unauthenticated_per_address: u32,
    /// Close a connection that has no session and no request in progress
    /// for this many seconds (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub connection_idle_secs: u64,
    /// Send an HTTP/2 PING this often, and close the connection if it is
    /// not answered within as long (0: no PINGs).
    pub http2_keepalive_secs: u64,
    /// Concurrent streams one HTTP/2 connection may open (a web console
    /// page needs a few: the page, its assets, a screen and a serial
    /// WebSocket).
    pub http2_max_streams: u32,
    /// On SIGTERM, how long sessions (told 1001 "going away") and
    /// connections get to finish before the gateway exits anyway.
    pub drain_secs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            idle_timeout_secs: 0,
            max_sessions: 10_000,
            max_sessions_per_guest: 64,
            failed_tickets_per_address: 20,
            throttle_window_secs: 60,
            handshake_deadline_secs: 10,
            max_url_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            allowed_origins: Vec::new(),
            check_origin: true,
            max_ticket_ttl_secs: 3600,
            ticket_clock_skew_secs: 1,
            max_unauthenticated_connections: 4096,
            max_unauthenticated_per_address: 64,
            connection_idle_secs: 60,
            http2_keepalive_secs: 30,
            http2_max_streams: 64,
            drain_secs: 5,
        }
    }
}

/// Where audit lines go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// A file opened for append: one JSON object per line.
    pub path: PathBuf,
}

/// The administrators' HTTPS listener: management LAN only, its own
/// certificate and its own credentials. It can list and end sessions, read
/// metrics and inventory, and open any console; it cannot mint tickets (the
/// gateway never holds the signing key: `vmgate admin` does).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminListener {
    /// TCP address, on the management network.
    pub listen: SocketAddr,
    /// The listener's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA of administrators' client certificates (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// File holding the administrators' bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Browser origins (`https://ops.example.com`) whose pages may call
    /// this listener. Default none: every request that carries an `Origin`
    /// header is refused (403), so a page on another site cannot ride an
    /// operator's browser (and its admin client certificate) into the
    /// admin API or a console. Tools that send no `Origin` (the CLI,
    /// scripts) are not browsers and pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Connections this listener holds at once, counted apart from the
    /// public listener's, so a flood there never takes these. Default 64.
    #[serde(default = "default_admin_connections")]
    pub max_connections: u32,
    /// Connections without a session from one source address. Default 16.
    #[serde(default = "default_admin_per_address")]
    pub max_connections_per_address: u32,
}

fn default_admin_connections() -> u32 {
    64
}

fn default_admin_per_address() -> u32 {
    16
}

impl AdminListener {
    pub fn auth(&self) -> AdminAuth {
        AdminAuth {
            client_ca: self.client_ca.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

/// How administrators authenticate: a client certificate chaining to
/// `client_ca`, or `Authorization: Bearer <token>` with the token in
/// `token_file`. At least one is required; with both, either works.
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    pub client_ca: Option<PathBuf>,
    /// One line; at least 16 characters.
    pub token_file: Option<PathBuf>,
}

impl AdminAuth {
    pub fn validate(&self, what: &str) -> Result<(), ConfigError> {
        if self.client_ca.is_none() && self.token_file.is_none() {
            return Err(ConfigError::Invalid(format!(
                "{what}: set client_ca or token_file: an administrators' listener must authenticate"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The gateway's identity towards agents, and whom it trusts as an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsTls {
    /// The agent CA: agent certificates must chain to it (serverAuth).
    pub ca: PathBuf,
    /// The gateway's client certificate (clientAuth), from the
    /// gateway-client CA that agents name in `gateway_ca`; refused at start
    /// if it chains to `ca`.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How each console session reaches its agent: `"quic"` (the default,
    /// a stream on the gateway's one QUIC connection to that agent) or
    /// `"tcp"` (a TCP + TLS 1.3 connection of its own to the agent's TCP
    /// listener, on the QUIC port's number, with the same certificates and
    /// checks; agents need `tcp_sessions = true`). The agent's inventory
    /// always comes over QUIC.
    /// BENCHMARKS.md (issue 17) has what each costs.
    #[serde(default)]
    pub session_transport: SessionTransport,
}

/// How console sessions travel from the gateway to an agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionTransport {
    /// A stream per session on one QUIC connection per agent.
    #[default]
    Quic,
    /// A TCP + TLS connection per session.
    Tcp,
}

/// One agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// UDP address of the agent's QUIC listener (and, with
    /// `session_transport = "tcp"`, the TCP address of its session
    /// listener: the same number).
    pub addr: SocketAddr,
    /// The name its certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// The guest names this agent may claim: exact names, or a prefix
    /// followed by `*` (`["web-*", "db1"]`). Without it the agent may claim
    /// any name; names outside the list are ignored, logged and counted
    /// (`vmgate_inventory_refused_total{reason="not_allowed"}`), so a
    /// compromised node cannot take over another node's guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guests: Option<Vec<String>>,
}

impl AgentEntry {
    /// The names it may claim.
    pub fn allow(&self) -> GuestAllow {
        match &self.guests {
            Some(p) => GuestAllow::only(p.clone()),
            None => GuestAllow::any(),
        }
    }
}

fn default_server_name() -> String {
    "localhost".into()
}

impl GatewayConfig {
    /// Every verifying key the gateway accepts tickets from: the current
    /// one first, then the extra ones.
    pub fn ticket_keys(&self) -> Result<Vec<vmgate_ticket::VerifyingKey>, vmgate_ticket::KeyError> {
        std::iter::once(&self.ticket_public_key)
            .chain(&self.extra_ticket_public_keys)
            .map(vmgate_ticket::VerifyingKey::load)
            .collect()
    }
}

/// Reads and parses a TOML configuration file (the gateway's and `vmgate
/// admin`'s), naming the file in every error.
pub(crate) use vmgate_config::read_toml;

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        let cfg: GatewayConfig = read_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what the schema cannot, so the rest of the gateway can trust it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.embed.validate()?;
        self.store.validate()?;
        if self.extra_ticket_public_keys.len() >= vmgate_ticket::MAX_VERIFYING_KEYS {
            return Err(ConfigError::Invalid(format!(
                "extra_ticket_public_keys: at most {} keys (each forged ticket costs one check per key)",
                vmgate_ticket::MAX_VERIFYING_KEYS - 1
            )));
        }
        let l = &self.limits;
        if l.handshake_deadline_secs == 0 {
            return Err(ConfigError::Invalid(
                "limits.handshake_deadline_secs must be at least 1".into(),
            ));
        }
        if l.max_ticket_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_ticket_ttl_secs must be at least 1".into(),
            ));
        }
        if l.ticket_clock_skew_secs > 60 {
            return Err(ConfigError::Invalid(
                "limits.ticket_clock_skew_secs above 60: synchronise the clocks (NTP) instead"
                    .into(),
            ));
        }
        if l.failed_tickets_per_address > 0 && l.throttle_window_secs == 0 {
            return Err(ConfigError::Invalid(
                "limits.throttle_window_secs must be at least 1 when throttling".into(),
            ));
        }
        if l.max_url_bytes < 256 || l.max_header_bytes < 8192 {
            return Err(ConfigError::Invalid(
                "limits.max_url_bytes must be at least 256 and max_header_bytes at least 8192"
                    .into(),
            ));
        }
        check_origins("limits.allowed_origins", &l.allowed_origins)?;
        if l.max_unauthenticated_connections == 0 || l.max_unauthenticated_per_address == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_unauthenticated_connections and max_unauthenticated_per_address must be at least 1".into(),
            ));
        }
        if l.connection_idle_secs == 0 {
            return Err(ConfigError::Invalid(
                "limits.connection_idle_secs must be at least 1".into(),
            ));
        }
        if l.http2_max_streams < 4 {
            return Err(ConfigError::Invalid(
                "limits.http2_max_streams must be at least 4 (a web console page uses a few at once)"
                    .into(),
            ));
        }
        for a in &self.agent_list {
            for p in a.guests.iter().flatten() {
                if !GuestAllow::valid_pattern(p) {
                    return Err(ConfigError::Invalid(format!(
                        "[[agent]] {} guests: {p:?} is neither a guest name nor a name prefix followed by `*` (like \"web-*\")",
                        a.addr
                    )));
                }
            }
        }
        if let Some(a) = &self.admin {
            a.auth().validate("[admin]")?;
            check_origins("[admin] allowed_origins", &a.allowed_origins)?;
            if a.max_connections == 0 || a.max_connections_per_address == 0 {
                return Err(ConfigError::Invalid(
                    "[admin] max_connections and max_connections_per_address must be at least 1"
                        .into(),
                ));
            }
            // Port 0 on both is fine: each bind gets its own free port.
            if a.listen == self.listen && self.listen.port() != 0 {
                return Err(ConfigError::Invalid(
                    "[admin] listen must differ from the public listen address".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Each entry must be an origin: a scheme and a host, no path.
fn check_origins(what: &str, origins: &[String]) -> Result<(), ConfigError> {
    for o in origins {
        if !(o.starts_with("https://") || o.starts_with("http://")) || o.ends_with('/') {
            return Err(ConfigError::Invalid(format!(
                "{what}: {o:?} is not an origin like https://console.example.com"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_puts_limits_in_force_and_names_those_needing_a_restart() {
        let live = LiveLimits::new(Limits::default());
        let mut new = Limits {
            max_sessions_per_guest: 1,
            allowed_origins: vec!["https://panel.example".into()],
            ..Limits::default()
        };
        assert!(live.reload(new.clone()).is_empty());
        assert_eq!(live.get().max_sessions_per_guest, 1);
        assert_eq!(live.get().allowed_origins, ["https://panel.example"]);
        new.http2_max_streams += 1;
        new.handshake_deadline_secs += 1;
        assert_eq!(
            live.reload(new),
            ["handshake_deadline_secs", "http2_max_streams"]
        );
    }

    #[test]
    fn embedding_origins_are_checked_and_make_the_frame_ancestors() {
        let embed = |o: &[&str]| Embed {
            frame_ancestors: o.iter().map(|s| s.to_string()).collect(),
        };
        assert!(Embed::default()
            .content_security_policy()
            .ends_with("frame-ancestors 'none'"));
        let ok = embed(&[
            "https://panel.example",
            "http://127.0.0.1:8080",
            "https://p.example:*",
        ]);
        ok.validate().unwrap();
        assert!(ok.content_security_policy().ends_with(
            "frame-ancestors https://panel.example http://127.0.0.1:8080 https://p.example:*"
        ));
        for bad in [
            "panel.example",
            "https://panel.example/path",
            "https://panel.example; script-src *",
            "https://",
            "ftp://panel.example",
            "https://panel.example:99999x",
            "*",
        ] {
            let e = embed(&[bad]).validate().unwrap_err().to_string();
            assert!(e.contains("embed.frame_ancestors"), "{bad}: {e}");
        }
    }

    const OLD: &str = r#"
        listen = "127.0.0.1:8443"
        ticket_public_key = "ticket.pub"
        [tls]
        cert = "gw.pem"
        key = "gw.key"
        [agents]
        ca = "ca.pem"
        cert = "gi.pem"
        key = "gi.key"
        [[agent]]
        addr = "127.0.0.1:7443"
    "#;

    #[test]
    fn a_config_without_the_new_sections_still_loads_with_limits_on() {
        let cfg: GatewayConfig = toml::from_str(OLD).unwrap();
        cfg.validate().unwrap();
        assert!(cfg.admin.is_none() && cfg.audit.is_none());
        assert!(cfg.limits.check_origin);
        assert!(cfg.limits.failed_tickets_per_address > 0);
    }

    #[test]
    fn a_gateway_config_cannot_name_a_signing_key() {
        // The gateway verifies tickets and never mints: there is no field
        // for the signing key, and unknown fields are refused.
        let text = format!("ticket_signing_key = \"ticket.key\"\n{OLD}");
        let err = toml::from_str::<GatewayConfig>(&text).unwrap_err();
        assert!(err.to_string().contains("ticket_signing_key"), "{err}");
    }

    #[test]
    fn admin_needs_credentials_and_its_own_address() {
        let text = format!(
            "{OLD}\n[admin]\nlisten = \"127.0.0.1:9443\"\ncert = \"a.pem\"\nkey = \"a.key\"\n"
        );
        let cfg: GatewayConfig = toml::from_str(&text).unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("client_ca"));
        let cfg: GatewayConfig = toml::from_str(&format!("{text}token_file = \"t\"\n")).unwrap();
        cfg.validate().unwrap();
        let same = text.replace("9443", "8443");
        let cfg: GatewayConfig = toml::from_str(&format!("{same}token_file = \"t\"\n")).unwrap();
        assert!(cfg.validate().is_err());
        // Port 0 twice is two different free ports.
        let any = same.replace(":8443", ":0");
        let cfg: GatewayConfig = toml::from_str(&format!("{any}token_file = \"t\"\n")).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn limits_are_checked() {
        let cfg: GatewayConfig = toml::from_str(&format!(
            "{OLD}\n[limits]\nallowed_origins = [\"evil.example\"]\n"
        ))
        .unwrap();
        assert!(cfg.validate().is_err());
        let cfg: GatewayConfig =
            toml::from_str(&format!("{OLD}\n[limits]\nhandshake_deadline_secs = 0\n")).unwrap();
        assert!(cfg.validate().is_err());
        assert!(toml::from_str::<GatewayConfig>(&format!("{OLD}\n[limits]\nbogus = 1\n")).is_err());
        for bad in [
            "max_unauthenticated_connections = 0",
            "max_unauthenticated_per_address = 0",
            "connection_idle_secs = 0",
            "http2_max_streams = 3",
        ] {
            let cfg: GatewayConfig = toml::from_str(&format!("{OLD}\n[limits]\n{bad}\n")).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            let field = bad.split(' ').next().unwrap();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }

    #[test]
    fn an_agents_guest_allow_list_is_patterns_checked_at_start() {
        let cfg: GatewayConfig = toml::from_str(OLD).unwrap();
        assert_eq!(cfg.agent_list[0].allow(), GuestAllow::any());
        let cfg: GatewayConfig =
            toml::from_str(&format!("{OLD}guests = [\"web-*\", \"db1\"]\n")).unwrap();
        cfg.validate().unwrap();
        let allow = cfg.agent_list[0].allow();
        assert!(allow.admits("web-3") && allow.admits("db1") && !allow.admits("db2"));
        let cfg: GatewayConfig = toml::from_str(&format!("{OLD}guests = [\"w*b\"]\n")).unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:7443") && e.contains("\"w*b\""), "{e}");
    }

    proptest::proptest! {
        /// Any text: parsing and validation return, never panic.
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC{0,400}") {
            if let Ok(cfg) = toml::from_str::<GatewayConfig>(&text) {
                let _ = cfg.validate();
            }
        }

        /// The known-good file with one line mangled still never panics.
        #[test]
        fn mangled_good_config_never_panics(line in 0usize..14, junk in "\\PC{0,40}") {
            let text: String = OLD.lines().enumerate()
                .map(|(i, l)| if i == line { junk.clone() } else { l.to_string() })
                .collect::<Vec<_>>().join("\n");
            if let Ok(cfg) = toml::from_str::<GatewayConfig>(&text) {
                let _ = cfg.validate();
            }
        }
    }
}
