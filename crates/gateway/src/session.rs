//! The one session pipeline: every console session, whoever it is for, goes
//! through [`serve`].
//!
//! A credential never opens anything by itself. A public ticket
//! ([`crate::public`]), a web page's session token ([`crate::pages`]) and an
//! administrator's credentials ([`crate::admin`]) each only produce a
//! [`Grant`]: which guest and channel, in which mode, with or without
//! `force`, until when, whether the session limits apply, and who it is
//! for in the audit log. From the grant on, everything is written once,
//! here:
//!
//! 1. admission under the session limits ([`crate::sessions`]);
//! 2. opening the stream on the agent that hosts the guest
//!    ([`crate::agents`]), which also says the channel's *kind* from that
//!    agent's inventory;
//! 3. the per-kind part, chosen from that kind (never from the channel's
//!    name): [`relay_screen`] for `vnc` (the RFB filter, and the splice
//!    that follows the guest across live migration, [`crate::splice`]),
//!    [`relay_following`] for serial consoles and channels (bytes as they
//!    are, following the guest across live migration), [`relay_audio`] for
//!    the guest's sound, [`relay_media`] for `media` (the media filter: a
//!    read-only session only asks what is in the drive). A new kind is a
//!    new arm of the `match` in [`serve`], and the
//!    compiler lists every place that must learn it;
//! 4. the session's end: ticket expiry, an administrator, the idle
//!    timeout, the gateway's shutdown; the audit lines and the metrics.
//!
//! Everything a session logs is inside one tracing span, `session`, with
//! its id, guest, channel and peer address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use vmgate_relay::{relay, FrameTx, Outcome};
use vmgate_wire::{ChannelKind, Close, CloseCode, Frame, Mode};

use crate::agents::Opened;
use crate::sessions::Live;
use crate::{follow, media, rfb_filter, splice, ws, Shared};

/// What a credential allows: one session on one channel of one guest.
#[derive(Debug, Clone)]
pub struct Grant {
    pub guest: String,
    pub channel: String,
    pub mode: Mode,
    /// Take the keyboard (serial) or the channel over from its holder.
    /// Only ever honoured for an interactive session ([`Grant::force`]).
    force: bool,
    /// When the session must end, if the credential limits it.
    pub until: Option<Instant>,
    /// Whether the session counts against the session limits. An
    /// administrator's recovery console does not: users who filled the
    /// limits must not lock the operator out.
    pub limited: bool,
    /// Who the session is for in the audit log and the session listing:
    /// the ticket's id (never its text), or `admin:<how>`.
    pub who: String,
    /// Whether the credential names the `audio` channel too: a `vnc`
    /// session then lets QEMU's audio through in-band (the RFB filter's
    /// [`vmgate_rfb::Policy::audio`]). Listening is not input: a read-only
    /// grant may have it.
    pub audio: bool,
    /// The client says its Tight decoder resets its zlib streams when told
    /// (`?tight=true`: the gateway's screen page, `vmgate vnc`): a `vnc`
    /// session then keeps Tight across a migration splice
    /// (docs/migration.md). Only which encodings QEMU may use depends on it.
    pub tight: bool,
}

impl Grant {
    /// A grant without `force`, counted against the session limits.
    pub fn new(guest: &str, channel: &str, mode: Mode, who: String) -> Grant {
        Grant {
            guest: guest.into(),
            channel: channel.into(),
            mode,
            force: false,
            until: None,
            limited: true,
            who,
            audio: false,
            tight: false,
        }
    }

    /// Allows audio if `channels` (the credential's scope) names it.
    pub fn with_audio_if_in(mut self, channels: &[String]) -> Grant {
        self.audio = channels.iter().any(|c| c == vmgate_ticket::AUDIO_SCOPE);
        self
    }

    /// Asks for `force`; a read-only grant never gets it.
    pub fn with_force(mut self, force: bool) -> Grant {
        self.force = force && self.mode == Mode::Interactive;
        self
    }

    /// Whether the session takes over from the channel's holder.
    pub fn force(&self) -> bool {
        self.force && self.mode == Mode::Interactive
    }

    /// Ends the session `max_session` seconds after `from`. A length too
    /// large for the clock (a minter may sign any number) means no limit,
    /// never a panic.
    pub fn for_at_most(mut self, from: Instant, max_session: Option<u64>) -> Grant {
        self.until = max_session.and_then(|s| from.checked_add(Duration::from_secs(s)));
        self
    }
}

/// The ticket crate's mode as the wire's.
pub fn wire_mode(m: vmgate_ticket::Mode) -> Mode {
    match m {
        vmgate_ticket::Mode::Interactive => Mode::Interactive,
        vmgate_ticket::Mode::ReadOnly => Mode::ReadOnly,
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Interactive => "interactive",
        Mode::ReadOnly => "read-only",
    }
}

/// Where a session request came from and what it asks for, before any
/// credential was checked. `guest` and `channel` passed
/// [`vmgate_wire::valid_name`]: they are safe to log.
#[derive(Debug, Clone)]
pub struct Request {
    pub guest: String,
    pub channel: String,
    pub peer: SocketAddr,
    /// The connection it came on: authenticated while the session runs
    /// ([`crate::conns`]).
    pub conn: crate::conns::Conn,
}

/// Runs one session on a client WebSocket: `authorize` turns the request's
/// credential into a [`Grant`] (or a refusal the client receives as its
/// close), then the pipeline does the rest.
pub async fn serve<F, Fut>(
    shared: Arc<Shared>,
    req: Request,
    rx: ws::WsRx,
    tx: ws::WsTx,
    authorize: F,
) where
    F: FnOnce(Arc<Shared>, Request) -> Fut,
    Fut: Future<Output = Result<Grant, Close>>,
{
    let sid = shared.pool.session_id();
    let span = tracing::info_span!("session", id = sid, guest = %req.guest, channel = %req.channel, peer = %req.peer);
    let _running = shared.drain.token();
    pipeline(shared, req, sid, rx, tx, authorize)
        .instrument(span)
        .await
}

async fn pipeline<F, Fut>(
    shared: Arc<Shared>,
    req: Request,
    sid: u64,
    rx: ws::WsRx,
    tx: ws::WsTx,
    authorize: F,
) where
    F: FnOnce(Arc<Shared>, Request) -> Fut,
    Fut: Future<Output = Result<Grant, Close>>,
{
    let opening = Instant::now();
    let grant = match authorize(shared.clone(), req.clone()).await {
        Ok(g) => g,
        Err(close) => {
            tracing::warn!(reason = %close, "session refused");
            return refuse(tx, close).await;
        }
    };
    // From here the connection carries a granted session: it no longer
    // counts against the caps on connections without one.
    let _authenticated = req.conn.session();
    let record = crate::audit::SessionRecord {
        session: sid,
        ticket: grant.who.clone(),
        guest: grant.guest.clone(),
        channel: grant.channel.clone(),
        mode: mode_name(grant.mode),
        peer: req.peer,
    };
    let live = match shared.sessions.admit(record, !grant.limited).await {
        Ok(live) => live,
        Err(close) => return refuse(tx, close).await,
    };
    let opened = match shared
        .pool
        .open(sid, &grant.guest, &grant.channel, grant.mode, grant.force())
        .await
    {
        Ok(o) => o,
        Err(close) => {
            shared.metrics.refused(close.code.as_str());
            tracing::warn!(ticket = %grant.who, reason = %close, "session refused");
            return refuse(tx, close).await;
        }
    };
    tracing::info!(ticket = %grant.who, mode = mode_name(grant.mode), force = grant.force(),
        audio = grant.audio, kind = ?opened.kind, "session opened");
    live.opened(opening.elapsed());
    let stop = ends(&shared, &grant, &live);
    let out = match opened.kind {
        ChannelKind::Vnc => relay_screen(&shared, &live, &grant, sid, rx, tx, opened, stop).await,
        ChannelKind::Serial | ChannelKind::Channel => {
            relay_following(&shared, &live, &grant, sid, rx, tx, opened, stop).await
        }
        ChannelKind::Audio => relay_audio(&live, rx, tx, opened, stop).await,
        ChannelKind::Media => relay_media(&shared, &live, &grant, rx, tx, opened, stop).await,
    };
    live.finish(&out);
}

/// What ends any session from outside its byte streams: the gateway's
/// shutdown, the grant's deadline, an administrator, the idle timeout.
fn ends(
    shared: &Shared,
    grant: &Grant,
    live: &Live,
) -> impl Future<Output = Close> + Send + 'static {
    let shutdown = shared.shutdown.clone();
    let until = grant.until;
    let ended_by_admin_or_idle = live.stop();
    async move {
        let expire = async {
            match until {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => Close::new(CloseCode::GoingAway, "the gateway is shutting down"),
            _ = expire => Close::new(
                CloseCode::SessionExpired,
                "the ticket's maximum session length was reached: mint a new ticket",
            ),
            c = ended_by_admin_or_idle => c,
        }
    }
}

/// `vnc`: the viewer's bytes go through the RFB filter (message boundaries,
/// the shared flag, a read-only viewer's input dropped), whoever the viewer
/// is, and the screen follows the guest across live migration: the
/// gateway splices the viewer's RFB stream onto a new connection on the
/// guest's new node ([`crate::splice`]). If it cannot, the viewer gets the
/// 4413 with why, and reconnects.
#[allow(clippy::too_many_arguments)]
async fn relay_screen(
    shared: &Shared,
    live: &Live,
    grant: &Grant,
    sid: u64,
    rx: ws::WsRx,
    tx: ws::WsTx,
    opened: Opened,
    stop: impl Future<Output = Close> + Send,
) -> Outcome {
    let policy = vmgate_rfb::Policy {
        read_only: grant.mode == Mode::ReadOnly,
        audio: grant.audio,
    };
    let server = Arc::new(std::sync::Mutex::new(vmgate_rfb::ServerParser::new()));
    let (rx, rfb_failed) = rfb_filter::wrap(rx, policy, sid);
    let mut rx = rx.spliceable(server.clone(), grant.tight);
    let dropped = rx.dropped_count();
    let stop = async move {
        tokio::select! {
            c = stop => c,
            c = rfb_failed => c,
        }
    };
    tokio::pin!(stop);
    let mut tx = follow::HoldMoved::new(tx);
    let (mut qrx, mut qtx, mut agent) = (opened.rx, opened.tx, opened.agent);
    let mut total = (0, 0);
    let out = loop {
        // The screen leaves its node when the guest departs from it
        // (follow::Departure), or when that node's agent says it moved.
        let departure = follow::Departure::new(shared.pool.departure(&grant.guest, agent));
        let input = departure.gate(live.count_to_guest(&mut rx));
        let mut watched = splice::ServerWatch::new(qrx, server.clone(), departure, &grant.guest);
        let out = relay(
            input,
            &mut tx,
            live.count_from_guest(&mut watched),
            qtx,
            &mut stop,
        )
        .await;
        if let (old, true) = watched.into_inner() {
            follow::let_go(old);
        }
        total = (total.0 + out.a_to_b, total.1 + out.b_to_a);
        let done = |close| Outcome {
            close,
            a_to_b: total.0,
            b_to_a: total.1,
        };
        if out.close.code != CloseCode::GuestMoved {
            break done(out.close);
        }
        tracing::info!("guest migrated; splicing its screen");
        let moved = Instant::now();
        match splice_screen(shared, grant, sid, &mut rx, &mut tx, &server, &mut stop).await {
            Ok(o) => {
                shared.metrics.followed();
                tracing::info!(
                    switch_ms = moved.elapsed().as_millis() as u64,
                    "screen spliced onto the guest's new node"
                );
                (qrx, qtx, agent) = (o.rx, o.tx, o.agent);
                tx.resume(format!(
                    "guest {} migrated to another node: this screen follows it",
                    grant.guest
                ))
                .await;
            }
            Err(close) => {
                tracing::warn!(reason = %close, "could not splice the screen");
                tx.give_up(close.clone()).await;
                break done(close);
            }
        }
    };
    let dropped = *dropped.lock().expect("dropped lock");
    tracing::info!(reason = %out.close, bytes_to_guest = out.a_to_b, bytes_from_guest = out.b_to_a,
        input_dropped = dropped.input, audio_dropped = dropped.audio,
        audio_encodings_stripped = dropped.audio_encodings,
        unspliceable_encodings_stripped = dropped.unspliceable_encodings, "session ended");
    out
}

/// Moves a screen whose guest moved: checks the old stream ended between
/// two messages, opens the screen on the guest's new node, hands it the
/// viewer ([`splice::attach`]), tells the viewer if the size changed, and
/// cuts the viewer's stream over. The new node's stream, or the Close for
/// the viewer.
#[allow(clippy::too_many_arguments)]
async fn splice_screen<R, S>(
    shared: &Shared,
    grant: &Grant,
    sid: u64,
    rx: &mut rfb_filter::RfbRx<R>,
    tx: &mut follow::HoldMoved<ws::WsTx>,
    server: &std::sync::Mutex<vmgate_rfb::ServerParser>,
    stop: &mut std::pin::Pin<&mut S>,
) -> Result<Opened, Close>
where
    S: Future<Output = Close>,
{
    let not_spliced = |n: splice::NotSpliced| {
        shared.metrics.not_spliced(n.label);
        Close::new(
            CloseCode::GuestMoved,
            format!(
                "guest {} migrated to another node, but {}",
                grant.guest, n.reason
            ),
        )
    };
    let old_size =
        splice::can_leave(&server.lock().expect("server parser lock")).map_err(not_spliced)?;
    let viewer = rx.cut().expect("a spliceable session");
    let size = viewer.lists(vmgate_rfb::server::DESKTOP_SIZE);
    let mut attempt = 1;
    let (o, (parser, new_size)) = loop {
        // The original mode, never `force`: the new node's holder keeps it.
        let mut o = follow::reopen(
            &*shared.pool,
            sid,
            &grant.guest,
            &grant.channel,
            grant.mode,
            stop,
        )
        .await?;
        // What the viewer holds down is released on the node that keeps it.
        let before = viewer.clone();
        let attached = tokio::select! {
            a = splice::attach(&mut o, viewer) => a,
            c = stop.as_mut() => return Err(c),
        };
        match attached {
            Ok(a) => break (o, a),
            // The guest moved on (or stopped) while the gateway shook
            // hands: follow it again, a few times at most.
            Err(n) if n.again && attempt < splice::ATTEMPTS => {
                tracing::info!(reason = %n.reason, attempt, "the guest left the node the screen was being spliced onto; following it again");
                *viewer = before;
                attempt += 1;
            }
            Err(n) => return Err(not_spliced(n)),
        }
    };
    if new_size != old_size {
        if !size {
            return Err(not_spliced(splice::NotSpliced::new(
                "resize",
                format!(
                    "its screen is {}x{} there, not {}x{}, and the viewer cannot be resized: reconnect",
                    new_size.0, new_size.1, old_size.0, old_size.1
                ),
            )));
        }
        let resize = vmgate_rfb::splice::desktop_size(new_size.0, new_size.1);
        tx.send(Frame::Data(resize.into())).await?;
    }
    *server.lock().expect("server parser lock") = parser;
    Ok(o)
}

/// `audio`: the agent's framed PCM as it comes, and the client's format
/// request (the agent reads nothing else). Its ticket named `audio`, or it
/// could not have opened this channel. Not followed across a migration: a
/// new node's stream starts with its own header, so the client reconnects.
async fn relay_audio(
    live: &Live,
    rx: ws::WsRx,
    tx: ws::WsTx,
    opened: Opened,
    stop: impl Future<Output = Close> + Send,
) -> Outcome {
    let out = relay(
        live.count_to_guest(rx),
        tx,
        live.count_from_guest(opened.rx),
        opened.tx,
        stop,
    )
    .await;
    tracing::info!(reason = %out.close, bytes_to_guest = out.a_to_b, bytes_from_guest = out.b_to_a,
        "session ended");
    out
}

/// Serial consoles and channels: the client's bytes as they are, and the
/// session follows the guest when it migrates ([`crate::follow`]).
#[allow(clippy::too_many_arguments)]
async fn relay_following(
    shared: &Shared,
    live: &Live,
    grant: &Grant,
    sid: u64,
    rx: ws::WsRx,
    tx: ws::WsTx,
    opened: Opened,
    stop: impl Future<Output = Close> + Send,
) -> Outcome {
    let (guest, channel) = (&grant.guest, &grant.channel);
    let mut rx = live.count_to_guest(rx);
    let mut tx = follow::HoldMoved::new(tx);
    tokio::pin!(stop);
    let (mut qrx, mut qtx, mut agent) = (opened.rx, opened.tx, opened.agent);
    let mut total = (0, 0);
    let out = loop {
        // The session leaves its node when the guest departs from it
        // (follow::Departure), or when that node's agent says it moved.
        let departure = follow::Departure::new(shared.pool.departure(guest, agent));
        let input = departure.gate(&mut rx);
        let mut old = follow::Leave::new(qrx, departure, guest);
        let out = relay(
            input,
            &mut tx,
            live.count_from_guest(&mut old),
            qtx,
            &mut stop,
        )
        .await;
        if let (old, true) = old.into_inner() {
            follow::let_go(old);
        }
        total = (total.0 + out.a_to_b, total.1 + out.b_to_a);
        let done = |close| Outcome {
            close,
            a_to_b: total.0,
            b_to_a: total.1,
        };
        if out.close.code != CloseCode::GuestMoved {
            break done(out.close);
        }
        tracing::info!("guest migrated; following it");
        let moved = Instant::now();
        // The original mode, never `force`: the new node's holder keeps it.
        match follow::reopen(&*shared.pool, sid, guest, channel, grant.mode, &mut stop).await {
            Ok(o) => {
                shared.metrics.followed();
                tracing::info!(
                    switch_ms = moved.elapsed().as_millis() as u64,
                    "session follows the guest to its new node"
                );
                (qrx, qtx, agent) = (o.rx, o.tx, o.agent);
                tx.resume(format!(
                    "guest {guest} migrated to another node: this session follows it"
                ))
                .await;
            }
            Err(close) => {
                tracing::warn!(reason = %close, "could not follow the guest");
                tx.give_up(close.clone()).await;
                break done(close);
            }
        }
    };
    tracing::info!(reason = %out.close, bytes_to_guest = out.a_to_b, bytes_from_guest = out.b_to_a,
        "session ended");
    out
}

/// `media`: both directions followed by the media filter ([`media`]): a
/// read-only session may only ask what is in the drive, malformed media
/// messages end the session, and the bytes a guest read are kept for the
/// audit line. A drive's medium lives on its node, so a moved guest's
/// session is not followed: the client gets the close.
async fn relay_media(
    shared: &Shared,
    live: &Live,
    grant: &Grant,
    rx: ws::WsRx,
    tx: ws::WsTx,
    opened: Opened,
    stop: impl Future<Output = Close> + Send,
) -> Outcome {
    let (crx, arx, failed, seen) = media::wrap(
        rx,
        opened.rx,
        grant.mode == Mode::ReadOnly,
        shared.metrics.clone(),
    );
    let stop = async move {
        tokio::select! {
            c = stop => c,
            c = failed => c,
        }
    };
    let out = relay(
        live.count_to_guest(crx),
        tx,
        live.count_from_guest(arx),
        opened.tx,
        stop,
    )
    .await;
    let ejected = seen.ejected();
    if let Some(e) = ejected {
        live.set_bytes_read(e.bytes_read);
    }
    tracing::info!(reason = %out.close, bytes_to_guest = out.a_to_b, bytes_from_guest = out.b_to_a,
        bytes_read = ejected.map(|e| e.bytes_read), reads = ejected.map(|e| e.reads), "session ended");
    out
}

/// Refuses a session: the client gets `close` as its WebSocket close.
pub async fn refuse(mut tx: ws::WsTx, close: Close) {
    let _ = tx.send(Frame::Close(close)).await;
    tx.finish().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_grant_never_forces() {
        let g = Grant::new("g", "serial0", Mode::ReadOnly, "t".into()).with_force(true);
        assert!(!g.force());
        let g = Grant::new("g", "serial0", Mode::Interactive, "t".into()).with_force(true);
        assert!(g.force());
    }

    #[test]
    fn audio_is_granted_only_by_the_audio_channel_in_the_scope() {
        let scope = |c: &[&str]| c.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let g = Grant::new("g", "vnc", Mode::ReadOnly, "t".into());
        assert!(!g.audio);
        assert!(!g.clone().with_audio_if_in(&scope(&["vnc"])).audio);
        assert!(
            !g.clone()
                .with_audio_if_in(&scope(&["vnc", "audio0", "Audio"]))
                .audio
        );
        assert!(g.with_audio_if_in(&scope(&["vnc", "audio"])).audio);
    }

    #[test]
    fn a_session_length_too_large_for_the_clock_is_no_limit_not_a_panic() {
        let now = Instant::now();
        let g = Grant::new("g", "vnc", Mode::Interactive, "t".into());
        assert_eq!(g.clone().for_at_most(now, None).until, None);
        assert_eq!(
            g.clone().for_at_most(now, Some(30)).until,
            Some(now + Duration::from_secs(30))
        );
        assert_eq!(g.for_at_most(now, Some(u64::MAX)).until, None);
    }
}
