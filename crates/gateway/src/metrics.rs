//! The gateway's counters, exposed as Prometheus text on the admin listener
//! (`GET /metrics`): sessions by channel, bytes each way, refusals by
//! reason, relay errors, and how long sessions take to open.
//!
//! Hand-written exposition: a handful of series does not need a registry
//! crate. Every label value is either a fixed reason name or a channel name
//! that passed `vmgate_wire::valid_name` and an agent's inventory, so label
//! sets stay small and need no escaping.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the session-open latency histogram: from a
/// warm QUIC stream on a LAN to an agent at its open deadline.
const OPEN_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Labeled {
    sessions_total: BTreeMap<String, u64>,
    sessions_active: BTreeMap<String, u64>,
    refusals: BTreeMap<&'static str, u64>,
    relay_errors: BTreeMap<&'static str, u64>,
    inventory_refused: BTreeMap<&'static str, u64>,
    connections_closed: BTreeMap<&'static str, u64>,
    not_spliced: BTreeMap<&'static str, u64>,
    store_errors: BTreeMap<&'static str, u64>,
    open_counts: [u64; OPEN_BUCKETS.len()],
    open_count: u64,
    open_sum: f64,
}

/// All counters of one gateway process.
#[derive(Default)]
pub struct Metrics {
    /// Console bytes carried from clients to guests.
    pub bytes_to_guest: AtomicU64,
    /// Console bytes carried from guests to clients.
    pub bytes_from_guest: AtomicU64,
    /// Sessions that followed their guest to another node.
    followed: AtomicU64,
    /// Times two agents began to report one guest running.
    route_conflicts: AtomicU64,
    /// Bytes guests read from media clients served, as agents counted.
    media_bytes_read: AtomicU64,
    labeled: Mutex<Labeled>,
    /// This gateway's name in its fleet and its store's kind, for
    /// `vmgate_gateway_info`.
    identity: std::sync::OnceLock<(String, &'static str)>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Labeled) -> T) -> T {
        f(&mut self.labeled.lock().expect("metrics lock"))
    }

    /// A session was refused; `reason` is a fixed short name
    /// (`TicketError::code`, `CloseCode::as_str`, or a limit's name).
    pub fn refused(&self, reason: &'static str) {
        self.with(|m| *m.refusals.entry(reason).or_default() += 1);
    }

    /// A session opened on `channel` after `latency` (ticket check to the
    /// agent's answer).
    pub fn opened(&self, channel: &str, latency: Duration) {
        let secs = latency.as_secs_f64();
        self.with(|m| {
            *m.sessions_total.entry(channel.to_string()).or_default() += 1;
            *m.sessions_active.entry(channel.to_string()).or_default() += 1;
            for (i, le) in OPEN_BUCKETS.iter().enumerate() {
                if secs <= *le {
                    m.open_counts[i] += 1;
                }
            }
            m.open_count += 1;
            m.open_sum += secs;
        });
    }

    /// A session that [`opened`](Self::opened) has ended; `error` names the
    /// close code if it ended by a failure rather than by a person.
    pub fn ended(&self, channel: &str, error: Option<&'static str>) {
        self.with(|m| {
            if let Some(n) = m.sessions_active.get_mut(channel) {
                *n = n.saturating_sub(1);
            }
            if let Some(e) = error {
                *m.relay_errors.entry(e).or_default() += 1;
            }
        });
    }

    /// A guest name in an agent's inventory was ignored; `reason` is
    /// `routing::Refusal::as_str`.
    pub fn inventory_refused(&self, reason: &'static str) {
        self.with(|m| *m.inventory_refused.entry(reason).or_default() += 1);
    }

    /// The gateway closed a connection that had nothing to do, or whose
    /// peer stopped answering; `why` is `conns::Closed::as_str`.
    pub fn connection_closed(&self, why: &'static str) {
        self.with(|m| *m.connections_closed.entry(why).or_default() += 1);
    }

    /// A call to the store failed (`op` names it); what it was for was
    /// refused or will be tried again.
    pub fn store_error(&self, op: &'static str) {
        self.with(|m| *m.store_errors.entry(op).or_default() += 1);
    }

    /// Names this gateway (its fleet name) and its store's kind.
    pub fn identify(&self, name: &str, store: &'static str) {
        let _ = self.identity.set((name.to_string(), store));
    }

    /// Two agents began to report one guest running.
    pub fn route_conflict(&self) {
        self.route_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// A media session ended after its guest read `bytes` from it.
    pub fn media_read(&self, bytes: u64) {
        self.media_bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A screen could not follow its guest to another node; `reason` is
    /// [`crate::splice::NotSpliced::label`].
    pub fn not_spliced(&self, reason: &'static str) {
        self.with(|m| *m.not_spliced.entry(reason).or_default() += 1);
    }

    /// A session followed its guest to another node (live migration).
    pub fn followed(&self) {
        self.followed.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = self.labeled.lock().expect("metrics lock");
        if let Some((name, store)) = self.identity.get() {
            let _ = writeln!(
                out,
                "# HELP vmgate_gateway_info This gateway's name in its fleet, and its store."
            );
            let _ = writeln!(out, "# TYPE vmgate_gateway_info gauge");
            let _ = writeln!(
                out,
                "vmgate_gateway_info{{gateway=\"{name}\",store=\"{store}\"}} 1"
            );
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_store_errors_total Calls to the store that failed (no answer in time, connection lost), by operation."
        );
        let _ = writeln!(out, "# TYPE vmgate_store_errors_total counter");
        for (op, n) in &m.store_errors {
            let _ = writeln!(out, "vmgate_store_errors_total{{op=\"{op}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_sessions_total Console sessions opened, by channel."
        );
        let _ = writeln!(out, "# TYPE vmgate_sessions_total counter");
        for (c, n) in &m.sessions_total {
            let _ = writeln!(out, "vmgate_sessions_total{{channel=\"{c}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_sessions_active Console sessions open now, by channel."
        );
        let _ = writeln!(out, "# TYPE vmgate_sessions_active gauge");
        for (c, n) in &m.sessions_active {
            let _ = writeln!(out, "vmgate_sessions_active{{channel=\"{c}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_bytes_total Console bytes relayed, by direction."
        );
        let _ = writeln!(out, "# TYPE vmgate_bytes_total counter");
        let _ = writeln!(
            out,
            "vmgate_bytes_total{{direction=\"to_guest\"}} {}",
            self.bytes_to_guest.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "vmgate_bytes_total{{direction=\"from_guest\"}} {}",
            self.bytes_from_guest.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP vmgate_sessions_followed_total Sessions that followed their guest to another node."
        );
        let _ = writeln!(out, "# TYPE vmgate_sessions_followed_total counter");
        let _ = writeln!(
            out,
            "vmgate_sessions_followed_total {}",
            self.followed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP vmgate_refusals_total Sessions refused, by reason."
        );
        let _ = writeln!(out, "# TYPE vmgate_refusals_total counter");
        for (r, n) in &m.refusals {
            let _ = writeln!(out, "vmgate_refusals_total{{reason=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_relay_errors_total Sessions ended by a failure, by close code."
        );
        let _ = writeln!(out, "# TYPE vmgate_relay_errors_total counter");
        for (r, n) in &m.relay_errors {
            let _ = writeln!(out, "vmgate_relay_errors_total{{code=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_inventory_refused_total Guest names in agents' inventories ignored, by reason."
        );
        let _ = writeln!(out, "# TYPE vmgate_inventory_refused_total counter");
        for (r, n) in &m.inventory_refused {
            let _ = writeln!(out, "vmgate_inventory_refused_total{{reason=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_connections_closed_total Connections the gateway closed for having nothing to do or a peer gone silent, by why."
        );
        let _ = writeln!(out, "# TYPE vmgate_connections_closed_total counter");
        for (r, n) in &m.connections_closed {
            let _ = writeln!(out, "vmgate_connections_closed_total{{reason=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_screen_splice_failed_total Screens that could not follow their migrated guest (the viewer got 4413), by why."
        );
        let _ = writeln!(out, "# TYPE vmgate_screen_splice_failed_total counter");
        for (r, n) in &m.not_spliced {
            let _ = writeln!(
                out,
                "vmgate_screen_splice_failed_total{{reason=\"{r}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP vmgate_route_conflicts_total Times two agents began to report one guest running."
        );
        let _ = writeln!(out, "# TYPE vmgate_route_conflicts_total counter");
        let _ = writeln!(
            out,
            "vmgate_route_conflicts_total {}",
            self.route_conflicts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP vmgate_media_bytes_read_total Bytes guests read from virtual media, as agents counted."
        );
        let _ = writeln!(out, "# TYPE vmgate_media_bytes_read_total counter");
        let _ = writeln!(
            out,
            "vmgate_media_bytes_read_total {}",
            self.media_bytes_read.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP vmgate_session_open_seconds From ticket check to the agent's answer."
        );
        let _ = writeln!(out, "# TYPE vmgate_session_open_seconds histogram");
        for (le, n) in OPEN_BUCKETS.iter().zip(m.open_counts) {
            let _ = writeln!(out, "vmgate_session_open_seconds_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "vmgate_session_open_seconds_bucket{{le=\"+Inf\"}} {}",
            m.open_count
        );
        let _ = writeln!(out, "vmgate_session_open_seconds_sum {}", m.open_sum);
        let _ = writeln!(out, "vmgate_session_open_seconds_count {}", m.open_count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.refused("expired");
        m.refused("expired");
        m.opened("serial0", Duration::from_millis(30));
        m.opened("vnc", Duration::from_secs(20));
        m.ended("vnc", Some("agent_unreachable"));
        m.bytes_to_guest.fetch_add(7, Ordering::Relaxed);
        m.inventory_refused("not_allowed");
        m.route_conflict();
        m.connection_closed("idle");
        let text = m.render();
        for line in [
            "vmgate_refusals_total{reason=\"expired\"} 2",
            "vmgate_sessions_total{channel=\"serial0\"} 1",
            "vmgate_sessions_active{channel=\"serial0\"} 1",
            "vmgate_sessions_active{channel=\"vnc\"} 0",
            "vmgate_relay_errors_total{code=\"agent_unreachable\"} 1",
            "vmgate_bytes_total{direction=\"to_guest\"} 7",
            "vmgate_session_open_seconds_bucket{le=\"0.025\"} 0",
            "vmgate_session_open_seconds_bucket{le=\"0.05\"} 1",
            "vmgate_session_open_seconds_bucket{le=\"10\"} 1",
            "vmgate_session_open_seconds_bucket{le=\"+Inf\"} 2",
            "vmgate_session_open_seconds_count 2",
            "vmgate_inventory_refused_total{reason=\"not_allowed\"} 1",
            "vmgate_route_conflicts_total 1",
            "vmgate_connections_closed_total{reason=\"idle\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
