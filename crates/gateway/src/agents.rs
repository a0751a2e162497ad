//! The gateway's side of the agent link: one QUIC connection per agent,
//! kept up with reconnects, feeding the inventories the agents push into
//! the routing table ([`crate::routing`]), and logging and counting what
//! the table reports (refused names, conflicts). Sessions open a stream on
//! that connection, or (`[agents] session_transport = "tcp"`) a TCP + TLS
//! connection of their own to the same agent; either way the same header
//! and frames, under the same deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vmgate_relay::backoff::Backoff;
use vmgate_relay::quic::{QuicRx, QuicTx};
use vmgate_relay::stream::{Io, StreamRx, StreamTx};
use vmgate_relay::{Either, FrameRx};
use vmgate_wire::{
    ChannelKind, Close, CloseCode, Frame, GuestInfo, GuestState, Inventory, Mode, OpenRequest,
    StreamKind,
};

use crate::config::AgentEntry;
use crate::metrics::Metrics;
use crate::routing::{Applied, Table};
use crate::untrusted::Escaped;

/// At most this many refused names are logged per snapshot (all are
/// counted): an agent cannot flood the log with a long inventory.
const MAX_LOGGED_REFUSALS: usize = 8;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How long an agent may take to answer a session request.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// Where a guest lives now.
type Route = crate::routing::Route<quinn::Connection>;

/// A session's own TCP + TLS connection to its agent.
type TlsConn = vmgate_tls::TcpLinkStream;
/// What an agent sends on a session: a QUIC stream's or a TCP
/// connection's frames.
pub type AgentRx = Either<QuicRx, StreamRx<ReadHalf<TlsConn>>>;
/// What the gateway sends an agent on a session.
pub type AgentTx = Either<QuicTx, StreamTx<WriteHalf<TlsConn>>>;

/// A console stream the agent accepted.
pub struct Opened {
    pub rx: AgentRx,
    pub tx: AgentTx,
    /// The channel's kind, as the agent's inventory says: the session
    /// pipeline picks its per-kind handling from it, never from the name.
    pub kind: ChannelKind,
    /// The agent (its index in the configuration) that serves it: the
    /// session moves when the guest departs from it ([`AgentPool::departure`]).
    pub agent: usize,
}

/// A guest as the gateway sees it (for inventory listings).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoutedGuest {
    pub node: String,
    pub agent: SocketAddr,
    #[serde(flatten)]
    pub guest: GuestInfo,
}

/// All agents, their connections and the guests they host.
pub struct AgentPool {
    agents: Vec<AgentEntry>,
    /// Connects to each agent with the transport of its path.
    endpoint: vmgate_tls::LinkClient,
    /// Set: sessions go over TCP + TLS connections of their own.
    tcp: Option<vmgate_tls::TcpLinkClient>,
    routes: RwLock<Table<quinn::Connection>>,
    /// Counts the routes that moved because a guest departed from a node
    /// (live migration): sessions waiting in [`AgentPool::departure`] look
    /// again at each change.
    moves: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    next_session: AtomicU64,
}

impl AgentPool {
    /// Starts one connection task per agent.
    pub fn start(
        agents: Vec<AgentEntry>,
        endpoint: vmgate_tls::LinkClient,
        tcp: Option<vmgate_tls::TcpLinkClient>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<AgentPool> {
        let pool = Arc::new(AgentPool {
            agents,
            endpoint,
            tcp,
            routes: RwLock::new(Table::default()),
            moves: watch::channel(0).0,
            metrics,
            next_session: AtomicU64::new(first_session_id()),
        });
        for idx in 0..pool.agents.len() {
            tokio::spawn(agent_loop(pool.clone(), idx, shutdown.clone()));
        }
        pool
    }

    /// A fresh session id, shared with the agent for its logs. Unique in a
    /// fleet: each gateway counts from a random start
    /// ([`first_session_id`]).
    pub fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The guests every connected agent reports.
    pub fn guests(&self) -> Vec<RoutedGuest> {
        let routes = self.routes.read().expect("routes lock");
        routes
            .list()
            .into_iter()
            .map(|(agent, node, guest)| RoutedGuest {
                node: node.to_string(),
                agent: self.agents[agent].addr,
                guest: guest.clone(),
            })
            .collect()
    }

    /// Where `guest` lives, if it is known, has `channel`, and is running;
    /// and the channel's kind.
    fn route(&self, guest: &str, channel: &str) -> Result<(Route, ChannelKind), Close> {
        let route = self
            .routes
            .read()
            .expect("routes lock")
            .route(guest)
            .ok_or_else(|| {
                Close::new(
                    CloseCode::UnknownGuest,
                    format!("unknown guest {guest}: no connected agent hosts it"),
                )
            })?;
        let kind = admit(&route.guest, channel)?;
        Ok((route, kind))
    }

    /// Checks that a session on `guest`/`channel` could open now, without
    /// opening it: a ticket is not used up on a guest that is not there.
    pub fn check(&self, guest: &str, channel: &str) -> Result<(), Close> {
        self.route(guest, channel).map(|_| ())
    }

    /// Opens a console stream on the agent hosting `guest`.
    pub async fn open(
        &self,
        session: u64,
        guest: &str,
        channel: &str,
        mode: Mode,
        force: bool,
    ) -> Result<Opened, Close> {
        let (route, kind) = self.route(guest, channel)?;
        let unreachable = |e: &dyn std::fmt::Display| {
            Close::new(
                CloseCode::AgentUnreachable,
                format!("agent of guest {guest} unreachable: {e}"),
            )
        };
        let req = OpenRequest {
            kind: StreamKind::Console,
            session,
            guest: guest.into(),
            channel: channel.into(),
            mode,
            force,
        };
        let answer = tokio::time::timeout(OPEN_DEADLINE, async {
            let (tx, mut rx) = match &self.tcp {
                None => {
                    let (mut send, recv) =
                        route.conn.open_bi().await.map_err(|e| unreachable(&e))?;
                    send.write_all(&req.encode())
                        .await
                        .map_err(|e| unreachable(&e))?;
                    let rx = QuicRx::new(recv, BytesMut::new(), "agent");
                    (Either::A(QuicTx::new(send, "agent")), Either::A(rx))
                }
                Some(tcp) => {
                    let agent = &self.agents[route.agent];
                    let conn = tcp
                        .connect(agent.addr, &agent.server_name)
                        .await
                        .map_err(|e| unreachable(&e))?;
                    let (recv, mut send) = tokio::io::split(conn);
                    send.write_all(&req.encode())
                        .await
                        .map_err(|e| unreachable(&e))?;
                    send.flush().await.map_err(|e| unreachable(&e))?;
                    let rx = StreamRx::new(recv, BytesMut::new(), "agent");
                    (Either::B(StreamTx::new(Io(send), "agent")), Either::B(rx))
                }
            };
            match rx.recv().await? {
                Some(Frame::Opened) => Ok(Opened {
                    rx,
                    tx,
                    kind,
                    agent: route.agent,
                }),
                Some(Frame::Close(c)) => Err(c),
                _ => Err(Close::new(
                    CloseCode::ProtocolError,
                    "agent answered the session request with an unexpected frame",
                )),
            }
        })
        .await;
        answer.unwrap_or_else(|_| Err(unreachable(&"no answer within 10 s")))
    }

    /// Resolves once `guest` has departed from agent `agent` (which says
    /// the guest is migrating out of it, or down, while another agent runs
    /// it and has its route: [`Table::departed`]); never otherwise. A
    /// session on `agent` then moves without waiting for that agent to end
    /// it (docs/migration.md).
    pub fn departure(
        self: &Arc<Self>,
        guest: &str,
        agent: usize,
    ) -> impl Future<Output = ()> + Send + 'static {
        let pool = self.clone();
        let guest = guest.to_string();
        let mut moves = self.moves.subscribe();
        async move {
            loop {
                if pool
                    .routes
                    .read()
                    .expect("routes lock")
                    .departed(&guest, agent)
                {
                    return;
                }
                if moves.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Agent `agent` sent a new inventory over `conn`.
    fn apply(&self, agent: usize, conn: &quinn::Connection, inv: Inventory) {
        let entry = &self.agents[agent];
        let applied = self.routes.write().expect("routes lock").apply(
            agent,
            &entry.allow(),
            inv.node.clone(),
            conn.clone(),
            inv.guests,
        );
        self.report(agent, &inv.node, applied);
    }

    /// Agent `agent` is disconnected: its claims, and only its, go.
    fn forget(&self, agent: usize) {
        self.routes.write().expect("routes lock").remove(agent);
    }

    /// Logs and counts what applying an inventory reported (outside the
    /// routes lock).
    fn report(&self, agent: usize, node: &str, applied: Applied) {
        let addr = self.agents[agent].addr;
        let refused = applied.refused.len();
        for (i, (name, why)) in applied.refused.into_iter().enumerate() {
            self.metrics.inventory_refused(why.as_str());
            if i < MAX_LOGGED_REFUSALS {
                tracing::warn!(agent = %addr, node = %Escaped(node), guest = %Escaped(&name),
                    reason = why.as_str(),
                    "guest name in the agent's inventory ignored (see [[agent]] guests in the gateway config)");
            }
        }
        if refused > MAX_LOGGED_REFUSALS {
            tracing::warn!(agent = %addr, more = refused - MAX_LOGGED_REFUSALS,
                "more guest names in the agent's inventory ignored");
        }
        if !applied.moved.is_empty() {
            for m in &applied.moved {
                tracing::info!(guest = %Escaped(&m.guest), from = %self.agents[m.from].addr,
                    to = %self.agents[m.to].addr, node = %Escaped(node),
                    "guest departed from its node (live migration); its sessions follow it now");
            }
            self.moves.send_modify(|n| *n = n.wrapping_add(1));
        }
        for c in applied.conflicts {
            self.metrics.route_conflict();
            let agents: Vec<String> = c
                .agents
                .iter()
                .map(|&i| self.agents[i].addr.to_string())
                .collect();
            tracing::warn!(guest = %Escaped(&c.guest), agents = %agents.join(","),
                routed_to = %agents[0],
                "two agents report this guest running; routing to the one that reported it first (for a moment during a live migration this is normal)");
        }
    }
}

/// Whether a known guest takes a session on `channel` now. The state comes
/// first: a guest that is down may list no channels (the libvirt backend
/// learns a domain's endpoints when it starts). Answers the channel's kind.
fn admit(guest: &GuestInfo, channel: &str) -> Result<ChannelKind, Close> {
    let name = &guest.name;
    match guest.state {
        GuestState::Running => {}
        GuestState::Down => {
            return Err(Close::new(
                CloseCode::GuestDown,
                format!("guest {name} is not running"),
            ))
        }
        // Paused for the last phase of a live migration: it runs again in
        // a moment, on another node (or here, if the migration fails).
        // 4413, so a session following it waits on (follow::reopen).
        GuestState::MigratingOut => {
            return Err(Close::new(
                CloseCode::GuestMoved,
                format!("guest {name} is migrating to another node: reconnect in a moment"),
            ))
        }
    }
    match guest.channels.iter().find(|c| c.name == channel) {
        Some(c) => Ok(c.kind),
        None => Err(Close::new(
            CloseCode::UnknownChannel,
            format!("guest {name} has no channel {channel}"),
        )),
    }
}

/// Keeps one agent connected and its guests routed, until shutdown.
async fn agent_loop(pool: Arc<AgentPool>, idx: usize, shutdown: CancellationToken) {
    let entry = pool.agents[idx].clone();
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = follow_agent(&pool, idx, &entry, &mut backoff) => r,
        };
        pool.forget(idx);
        if let Err(e) = result {
            tracing::warn!(agent = %entry.addr, error = %e, "agent link down; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
    pool.forget(idx);
}

/// Connects, then applies inventory snapshots until the link breaks.
async fn follow_agent(
    pool: &AgentPool,
    idx: usize,
    entry: &AgentEntry,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let conn = pool
        .endpoint
        .connect(entry.addr, &entry.server_name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&OpenRequest::inventory().encode())
        .await
        .map_err(|e| e.to_string())?;
    let mut rx = QuicRx::new(recv, BytesMut::new(), "agent");
    loop {
        match rx.recv().await {
            Ok(Some(Frame::Inventory(json))) => {
                let inv = Inventory::from_json(&json).map_err(|e| e.to_string())?;
                tracing::info!(agent = %entry.addr, node = %Escaped(&inv.node), guests = inv.guests.len(), "inventory");
                pool.apply(idx, &conn, inv);
                backoff.reset();
            }
            Ok(Some(other)) => {
                return Err(format!("unexpected frame on inventory stream: {other:?}"))
            }
            Ok(None) => return Err("agent ended the inventory stream".into()),
            Err(c) => return Err(c.reason),
        }
    }
}

/// Where a gateway's session ids start: a random number below 2^52, so ids
/// of a fleet's gateways do not meet (two starts within a million of each
/// other: odds about 2^-32) and stay exact as JSON numbers (below 2^53).
fn first_session_id() -> u64 {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("the operating system's random generator");
    (u64::from_le_bytes(raw) >> 12).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmgate_wire::{ChannelInfo, ChannelKind};

    fn guest(state: GuestState, channels: &[&str]) -> GuestInfo {
        GuestInfo {
            name: "web".into(),
            state,
            channels: channels
                .iter()
                .map(|c| ChannelInfo::new(c.to_string(), ChannelKind::Serial))
                .collect(),
        }
    }

    #[test]
    fn a_down_guest_is_refused_as_not_running_whatever_its_channels() {
        for g in [
            guest(GuestState::Down, &[]),
            guest(GuestState::Down, &["serial0"]),
        ] {
            let e = admit(&g, "serial0").unwrap_err();
            assert_eq!(e.code, CloseCode::GuestDown);
            assert_eq!(e.reason, "guest web is not running");
        }
    }

    #[test]
    fn a_guest_migrating_out_is_refused_as_moving_so_a_follower_waits() {
        let e = admit(&guest(GuestState::MigratingOut, &["serial0"]), "serial0").unwrap_err();
        assert_eq!(e.code, CloseCode::GuestMoved);
        assert!(e.reason.contains("migrating to another node"), "{e}");
    }

    #[test]
    fn a_running_guest_admits_its_channels_only() {
        let g = guest(GuestState::Running, &["serial0"]);
        assert_eq!(admit(&g, "serial0"), Ok(ChannelKind::Serial));
        let e = admit(&g, "serial9").unwrap_err();
        assert_eq!(e.code, CloseCode::UnknownChannel);
        assert_eq!(e.reason, "guest web has no channel serial9");
    }
}
