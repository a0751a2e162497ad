//! The libvirt backend's connection to libvirtd: one supervisor task holds
//! it, registers for lifecycle events, re-reads a domain on each of its
//! events (and every domain after a (re)connect or lost events) into the
//! domain table, publishes the inventory, and reconnects with back-off when
//! libvirtd goes away. libvirt calls block, so they run on tokio's
//! blocking pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;
use vmgate_relay::backoff::Backoff;

use super::domains::{phase_change, stop_reason, Phase, Seen};
use super::xml::parse_devices;
use super::{ffi, Hubs, Shared};
use crate::config::LibvirtConfig;

/// Lifecycle events queued between libvirt's event thread and the
/// supervisor; on overflow the supervisor re-reads every domain.
const EVENT_DEPTH: usize = 256;
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// libvirt keepalive: a probe every 5 s, the connection is dead after 3
/// unanswered (a hung libvirtd is noticed within ~20 s).
const KEEPALIVE_INTERVAL: i32 = 5;
const KEEPALIVE_COUNT: u32 = 3;

/// Holds the connection: connects, follows events, reconnects.
pub async fn supervise(shared: Arc<Shared>) {
    if let Err(e) = ffi::init_event_loop() {
        tracing::error!(error = %e, "cannot start libvirt's event loop; the libvirt backend serves nothing");
        return;
    }
    let uri = shared.cfg.uri.clone();
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut failures = 0u32;
    loop {
        let (tx, mut events) = mpsc::channel(EVENT_DEPTH);
        let overflow = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(ffi::Closed {
            token: CancellationToken::new(),
            reason: Mutex::new("connection closed"),
        });
        let opened = {
            let (uri, overflow, closed) = (uri.clone(), overflow.clone(), closed.clone());
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                r = tokio::task::spawn_blocking(move || open(&uri, tx, overflow, closed)) => r,
            }
        };
        match opened {
            Ok(Ok((conn, registration))) => {
                tracing::info!(%uri, "connected to libvirt");
                failures = 0;
                backoff.reset();
                *shared.conn.lock().expect("conn lock") = Some(conn);
                resync(&shared).await;
                let why = loop {
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return,
                        _ = closed.token.cancelled() => {
                            break *closed.reason.lock().expect("reason lock");
                        }
                        ev = events.recv() => match ev {
                            None => break "event channel closed",
                            Some(ev) => {
                                if overflow.swap(false, Ordering::SeqCst) {
                                    tracing::warn!("libvirt events overflowed; re-reading every domain");
                                    resync(&shared).await;
                                } else {
                                    tracing::debug!(domain = %ev.domain, event = ev.event, detail = ev.detail, "libvirt lifecycle event");
                                    let phase = phase_change(ev.event, ev.detail);
                                    refresh(&shared, &ev.domain, stop_reason(ev.event, ev.detail), phase).await;
                                }
                            }
                        }
                    }
                };
                let conn = shared.conn.lock().expect("conn lock").take();
                tracing::warn!(%uri, reason = why, "lost the libvirt connection; reconnecting (domains keep running)");
                // Deregistering may talk to the (dead) daemon: not on a
                // runtime thread.
                tokio::task::spawn_blocking(move || drop((registration, conn)));
            }
            Ok(Err(e)) => {
                failures += 1;
                // The first failure says why; repeats while libvirtd is
                // away would only fill the log.
                if failures == 1 {
                    tracing::warn!(%uri, error = %e, "cannot connect to libvirt; retrying");
                } else {
                    tracing::debug!(%uri, error = %e, "cannot connect to libvirt; retrying");
                }
            }
            Err(e) => tracing::error!(error = %e, "libvirt connect task failed"),
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

/// Opens the connection and registers for events (blocking).
fn open(
    uri: &str,
    events: mpsc::Sender<ffi::Lifecycle>,
    overflow: Arc<AtomicBool>,
    closed: Arc<ffi::Closed>,
) -> Result<(Connect, ffi::Registration), String> {
    let conn = Connect::open(Some(uri)).map_err(|e| e.message().to_string())?;
    // Local drivers (test:///) have no keepalive; that is fine.
    let _ = conn.set_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT);
    let reg = ffi::register(&conn, events, overflow, closed)
        .map_err(|e| format!("registering for domain events: {}", e.message()))?;
    Ok((conn, reg))
}

/// What the agent learns about one domain (blocking).
fn inspect(cfg: &LibvirtConfig, dom: &Domain) -> Seen {
    let Ok(name) = dom.name() else {
        return Seen::Ignore;
    };
    if !cfg.selects_name(&name) {
        return Seen::Ignore;
    }
    if !vmgate_wire::valid_name(&name) {
        tracing::warn!(domain = %name, "domain name is not a valid guest name; not exposed");
        return Seen::Ignore;
    }
    if let Some(uri) = &cfg.metadata_uri {
        if dom
            .metadata(sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(uri), 0)
            .is_err()
        {
            return Seen::Ignore;
        }
    }
    match (dom.is_active(), dom.is_persistent()) {
        (Ok(true), _) => {}
        (Ok(false), Ok(true)) => return Seen::Down,
        _ => return Seen::Ignore,
    }
    let Some(id) = dom.id() else {
        return Seen::Ignore;
    };
    match dom.xml_desc(0) {
        Ok(xml) => match parse_devices(&xml) {
            Ok(devices) => Seen::Serve { id, devices },
            Err(e) => {
                tracing::warn!(domain = %name, error = %e, "cannot read the domain's XML; not exposed");
                Seen::Ignore
            }
        },
        Err(e) => {
            tracing::debug!(domain = %name, error = %e.message(), "domain vanished while read");
            Seen::Ignore
        }
    }
}

/// The connection now; `None` while libvirtd is unreachable.
pub fn current_conn(shared: &Shared) -> Option<Connect> {
    shared.conn.lock().expect("conn lock").clone()
}

/// Re-reads every domain and reconciles (after a (re)connect or overflow).
async fn resync(shared: &Arc<Shared>) {
    let Some(conn) = current_conn(shared) else {
        return;
    };
    let cfg = shared.cfg.clone();
    let seen = tokio::task::spawn_blocking(move || {
        // Active and inactive (defined) domains alike.
        let doms = conn
            .list_all_domains(0)
            .map_err(|e| e.message().to_string())?;
        Ok::<_, String>(
            doms.iter()
                .filter_map(|d| match (d.name(), inspect(&cfg, d)) {
                    (Ok(_), Seen::Ignore) | (Err(_), _) => None,
                    (Ok(name), seen) => Some((name, seen)),
                })
                .collect::<HashMap<_, _>>(),
        )
    })
    .await;
    let seen = match seen {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot list libvirt domains");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "libvirt list task failed");
            return;
        }
    };
    shared
        .domains
        .lock()
        .expect("domains lock")
        .resync(seen, &mut Hubs(shared));
    publish(shared);
}

/// Re-reads one domain after an event about it; `stopped` says how, if the
/// event was its stop, and `phase` the live-migration phase it began. The
/// inventory goes out at once: a guest paused to migrate out, or resumed
/// here by a migration, is news the gateway acts on.
async fn refresh(
    shared: &Arc<Shared>,
    name: &str,
    stopped: Option<&'static str>,
    phase: Option<Phase>,
) {
    let Some(conn) = current_conn(shared) else {
        return;
    };
    let cfg = shared.cfg.clone();
    let lookup = name.to_string();
    let seen = tokio::task::spawn_blocking(move || match conn.lookup_domain_by_name(&lookup) {
        Ok(dom) => inspect(&cfg, &dom),
        Err(_) => Seen::Ignore,
    })
    .await
    .unwrap_or(Seen::Ignore);
    shared.domains.lock().expect("domains lock").update(
        name,
        seen,
        stopped,
        phase,
        &mut Hubs(shared),
    );
    if let Some(phase) = phase {
        tracing::info!(domain = %name, ?phase, "live migration phase");
    }
    publish(shared);
}

/// Sends the table's listing to gateways, if it changed.
fn publish(shared: &Shared) {
    let guests = shared.domains.lock().expect("domains lock").listing();
    shared.inventory.send_if_modified(|inv| {
        let changed = inv.guests != guests;
        inv.guests = guests;
        changed
    });
}
