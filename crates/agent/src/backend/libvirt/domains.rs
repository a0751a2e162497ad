//! The libvirt backend's domain table, sans-IO: what the agent learned
//! about each domain goes in (a [`Seen`] per domain after a re-read, or one
//! after a lifecycle event), the inventory and the refusals for guests it
//! does not serve come out, and serving a domain starts and stops through
//! the [`Serving`] the caller passes (the console hubs, the sessions).
//!
//! The rules it keeps: a running, selected domain is served once per run
//! (a new libvirt id or changed devices start it over); a domain that stops
//! ends its sessions with the reason its event gave; a selected persistent
//! domain that is defined but not running is listed as down, without
//! channels, so a session to it is refused as "not running" rather than
//! "unknown". Live migration ([`Phase`], from the lifecycle events): a
//! domain started here by an incoming migration is served (its consoles
//! connect) but listed as down until libvirt resumes it here; a domain
//! paused here by an outgoing migration's last phase is listed as
//! migrating out, at once, so the gateway may move its sessions as soon
//! as the new node runs it (docs/migration.md).

use std::collections::{BTreeSet, HashMap};

use virt::sys;
use vmgate_wire::{ChannelInfo, ChannelKind, Close, CloseCode, GuestInfo, GuestState};

use super::xml::Devices;

/// What the agent learns about one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Running and selected: serve it.
    Serve { id: u32, devices: Devices },
    /// Selected, persistent and not running: list it as down.
    Down,
    /// Gone, not selected, or stopped and transient.
    Ignore,
}

/// Where a served domain is in a live migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running here (or paused by someone: its consoles work).
    Running,
    /// Started here by an incoming migration (`STARTED`/`MIGRATED`), not
    /// resumed yet: listed as down; it may never run here.
    Incoming,
    /// Paused here by an outgoing migration (`SUSPENDED`/`MIGRATED` or
    /// `POSTCOPY`): listed as migrating out until it stops here (the
    /// migration's Confirm) or runs here again (`RESUMED`: it failed).
    Leaving,
}

/// The migration phase a lifecycle event begins, if any. Any `RESUMED`
/// means running here: the end of an incoming migration, or an outgoing
/// one that failed and resumed the guest where it was.
pub fn phase_change(event: u32, detail: u32) -> Option<Phase> {
    match (event, detail) {
        (sys::VIR_DOMAIN_EVENT_STARTED, sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED) => {
            Some(Phase::Incoming)
        }
        (
            sys::VIR_DOMAIN_EVENT_SUSPENDED,
            sys::VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED | sys::VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY,
        ) => Some(Phase::Leaving),
        (sys::VIR_DOMAIN_EVENT_RESUMED, _) => Some(Phase::Running),
        _ => None,
    }
}

/// The stop reason of a domain that migrated away: its sessions close with
/// [`CloseCode::GuestMoved`], which the gateway follows to the new node.
pub const MIGRATED_AWAY: &str = "migrated to another node";

/// Why a domain stopped, for events that mean it did; `None` for the others
/// (a domain seen inactive after, say, its `SHUTDOWN` event is left to the
/// `STOPPED` event that follows, which says how it stopped).
pub fn stop_reason(event: u32, detail: u32) -> Option<&'static str> {
    if event != sys::VIR_DOMAIN_EVENT_STOPPED && event != sys::VIR_DOMAIN_EVENT_CRASHED {
        return None;
    }
    Some(match (event, detail) {
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) => "shut down",
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED) => "destroyed",
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED)
        | (sys::VIR_DOMAIN_EVENT_CRASHED, _) => "crashed",
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED) => MIGRATED_AWAY,
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_SAVED) => "saved",
        (sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_FAILED) => "failed",
        _ => "no longer running",
    })
}

/// How a session ends when its domain stopped for `why` (a stop reason).
pub fn stopped_close(why: &str) -> Close {
    if why == MIGRATED_AWAY {
        return Close::new(
            CloseCode::GuestMoved,
            format!("guest {MIGRATED_AWAY}: reconnect"),
        );
    }
    Close::new(CloseCode::GuestDown, format!("guest stopped ({why})"))
}

/// Starts and stops serving a domain; the table decides when.
pub trait Serving {
    /// What serving one run of a domain holds (its console hubs, ...).
    type Run;
    /// Starts serving `name`, running as libvirt id `id` with `devices`.
    fn start(&mut self, name: &str, id: u32, devices: &Devices) -> Self::Run;
    /// Stops serving it: its sessions end, saying `reason`.
    fn stop(&mut self, name: &str, run: Self::Run, reason: &str);
}

/// A domain being served.
pub struct Served<R> {
    /// libvirt's id of this run: a domain started again gets a new one.
    pub id: u32,
    pub devices: Devices,
    pub run: R,
    /// Where it is in a live migration, if in one.
    pub phase: Phase,
}

/// The domains of one libvirt daemon, as far as the agent serves them.
pub struct Table<R> {
    served: HashMap<String, Served<R>>,
    /// Selected persistent domains that are defined but not running, never
    /// also in `served`.
    down: BTreeSet<String>,
}

impl<R> Default for Table<R> {
    fn default() -> Self {
        Table {
            served: HashMap::new(),
            down: BTreeSet::new(),
        }
    }
}

impl<R> Table<R> {
    /// The domain `name`, if it is served.
    pub fn get(&self, name: &str) -> Option<&Served<R>> {
        self.served.get(name)
    }

    /// Reconciles with a re-read of every domain (after a (re)connect, or
    /// when events were lost): `seen` holds every domain that is not
    /// [`Seen::Ignore`].
    pub fn resync<S: Serving<Run = R>>(&mut self, seen: HashMap<String, Seen>, serving: &mut S) {
        let gone: Vec<String> = self
            .served
            .keys()
            .filter(|n| !matches!(seen.get(*n), Some(Seen::Serve { .. })))
            .cloned()
            .collect();
        for name in gone {
            self.stop(&name, "no longer running", serving);
        }
        self.down.clear();
        for (name, seen) in seen {
            match seen {
                Seen::Serve { id, devices } => self.serve(name, id, devices, serving),
                Seen::Down => {
                    self.down.insert(name);
                }
                Seen::Ignore => {}
            }
        }
    }

    /// Applies a re-read of one domain after an event about it; `stopped`
    /// says how it stopped, if the event was its stop, and `phase` the
    /// migration phase it began ([`phase_change`]).
    pub fn update<S: Serving<Run = R>>(
        &mut self,
        name: &str,
        seen: Seen,
        stopped: Option<&str>,
        phase: Option<Phase>,
        serving: &mut S,
    ) {
        if let (Some(reason), false) = (stopped, matches!(seen, Seen::Serve { .. })) {
            self.stop(name, reason, serving);
        }
        match seen {
            Seen::Serve { id, devices } => {
                self.down.remove(name);
                self.serve(name.into(), id, devices, serving);
                if let Some(r) = self.served.get_mut(name) {
                    r.phase = match (phase, r.phase) {
                        (Some(Phase::Incoming), _) => Phase::Incoming,
                        // Only a guest that ran here can leave.
                        (Some(Phase::Leaving), Phase::Running) => Phase::Leaving,
                        (Some(Phase::Running), _) => Phase::Running,
                        (_, now) => now,
                    };
                }
            }
            // Inactive but still served: its STOPPED event follows and
            // closes its sessions with the reason.
            Seen::Down if self.served.contains_key(name) => {}
            Seen::Down => {
                if self.down.insert(name.into()) {
                    tracing::info!(domain = %name, "domain defined but not running; listed as down");
                }
            }
            Seen::Ignore => {
                self.down.remove(name);
            }
        }
    }

    /// Starts serving a running domain, unless this run of it is served
    /// already.
    fn serve<S: Serving<Run = R>>(
        &mut self,
        name: String,
        id: u32,
        devices: Devices,
        serving: &mut S,
    ) {
        let mut phase = Phase::Running;
        if let Some(r) = self.served.get(&name) {
            if r.id == id && r.devices == devices {
                return;
            }
            // The same run with other devices is where it was.
            if r.id == id {
                phase = r.phase;
            }
            // Restarted (new id) or its devices changed: start over.
            self.stop(&name, "restarted", serving);
        }
        let run = serving.start(&name, id, &devices);
        self.served.insert(
            name,
            Served {
                id,
                devices,
                run,
                phase,
            },
        );
    }

    fn stop<S: Serving<Run = R>>(&mut self, name: &str, reason: &str, serving: &mut S) {
        if let Some(r) = self.served.remove(name) {
            serving.stop(name, r.run, reason);
        }
    }

    /// Why a served guest takes no new session now: it is in a live
    /// migration (the gateway may not know yet; it refuses these itself).
    pub fn migrating(&self, node: &str, guest: &str) -> Option<Close> {
        Some(match self.served.get(guest)?.phase {
            Phase::Running => return None,
            Phase::Incoming => Close::new(
                CloseCode::GuestDown,
                format!("guest {guest} is migrating to node {node} and does not run here yet"),
            ),
            Phase::Leaving => Close::new(
                CloseCode::GuestMoved,
                format!("guest {guest} is migrating away from node {node}: reconnect in a moment"),
            ),
        })
    }

    /// Why a guest that is not served is refused: down if it is a defined
    /// domain that is not running (the gateway may not know yet).
    pub fn not_served(&self, node: &str, guest: &str) -> Close {
        if self.down.contains(guest) {
            return Close::new(
                CloseCode::GuestDown,
                format!(
                    "guest {guest} is not running (its libvirt domain is shut off on node {node}; start it first)"
                ),
            );
        }
        Close::new(
            CloseCode::UnknownGuest,
            format!("no domain {guest} is served on node {node}"),
        )
    }

    /// The inventory's guests: the running domains with their endpoints, and
    /// the defined ones that are down, without channels.
    pub fn listing(&self) -> Vec<GuestInfo> {
        let mut guests: Vec<GuestInfo> = self
            .served
            .iter()
            .map(|(name, r)| {
                let d = &r.devices;
                let mut channels: Vec<ChannelInfo> = d
                    .consoles
                    .iter()
                    .map(|c| ChannelInfo::new(c.clone(), ChannelKind::Serial))
                    .collect();
                if d.vnc.is_some() {
                    channels.push(ChannelInfo::new("vnc", ChannelKind::Vnc));
                    channels.push(ChannelInfo {
                        unavailable: d.audio_missing.clone(),
                        ..ChannelInfo::new("audio", ChannelKind::Audio)
                    });
                }
                channels.extend(
                    d.channels
                        .iter()
                        .map(|c| ChannelInfo::new(c.clone(), ChannelKind::Channel)),
                );
                channels.extend(
                    d.cdroms
                        .iter()
                        .map(|c| ChannelInfo::new(c.name.clone(), ChannelKind::Media)),
                );
                let state = match r.phase {
                    Phase::Running => GuestState::Running,
                    Phase::Incoming => GuestState::Down,
                    Phase::Leaving => GuestState::MigratingOut,
                };
                GuestInfo {
                    name: name.clone(),
                    state,
                    channels,
                }
            })
            .chain(self.down.iter().map(|name| GuestInfo {
                name: name.clone(),
                state: GuestState::Down,
                channels: Vec::new(),
            }))
            .collect();
        guests.sort_by(|a, b| a.name.cmp(&b.name));
        guests
    }
}

#[cfg(test)]
mod tests {
    use super::super::xml::{parse_devices, tests::LIVE};
    use super::*;

    /// Records what the table started and stopped; a run is numbered by
    /// its start (#1 first).
    #[derive(Default)]
    struct Log(Vec<String>, usize);

    impl Serving for Log {
        type Run = usize;
        fn start(&mut self, name: &str, id: u32, _: &Devices) -> usize {
            self.0.push(format!("start {name} {id}"));
            self.1 += 1;
            self.1
        }
        fn stop(&mut self, name: &str, run: usize, reason: &str) {
            self.0.push(format!("stop {name} #{run} {reason}"));
        }
    }

    fn serve(id: u32) -> Seen {
        Seen::Serve {
            id,
            devices: parse_devices(LIVE).unwrap(),
        }
    }

    fn taken(log: &mut Log) -> Vec<String> {
        std::mem::take(&mut log.0)
    }

    #[test]
    fn running_domains_list_their_endpoints_and_defined_ones_are_down_without_any() {
        let (mut t, mut log) = (Table::default(), Log::default());
        t.resync(
            HashMap::from([
                ("demo".to_string(), serve(3)),
                ("off".to_string(), Seen::Down),
                ("alpha".to_string(), Seen::Down),
            ]),
            &mut log,
        );
        let seen: Vec<_> = t
            .listing()
            .iter()
            .map(|g| (g.name.clone(), g.state, g.channels.len()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("alpha".into(), GuestState::Down, 0),
                // serial0, console1, vnc, audio, test.echo, media, media.sdb
                ("demo".into(), GuestState::Running, 7),
                ("off".into(), GuestState::Down, 0),
            ]
        );
        let demo = &t.listing()[1];
        let media: Vec<_> = demo
            .channels
            .iter()
            .filter(|c| c.kind == ChannelKind::Media)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(media, ["media", "media.sdb"]);
        let audio = demo.channels.iter().find(|c| c.name == "audio").unwrap();
        assert_eq!(
            (audio.kind, audio.unavailable.as_deref()),
            (ChannelKind::Audio, None)
        );
        assert_eq!(taken(&mut log), ["start demo 3"]);
        assert_eq!(t.not_served("n1", "off").code, CloseCode::GuestDown);
        assert!(t
            .not_served("n1", "off")
            .reason
            .contains("shut off on node n1"));
        assert_eq!(t.not_served("n1", "nope").code, CloseCode::UnknownGuest);
    }

    #[test]
    fn a_run_is_served_once_and_a_new_run_starts_over() {
        let (mut t, mut log) = (Table::default(), Log::default());
        t.update("demo", serve(3), None, None, &mut log);
        // The same run seen again (another event, a resync): nothing.
        t.update("demo", serve(3), None, None, &mut log);
        t.resync(HashMap::from([("demo".to_string(), serve(3))]), &mut log);
        assert_eq!(taken(&mut log), ["start demo 3"]);
        // Restarted between two looks: a new id.
        t.update("demo", serve(4), None, None, &mut log);
        assert_eq!(taken(&mut log), ["stop demo #1 restarted", "start demo 4"]);
        // Devices changed (a channel hot-plugged).
        let mut devices = parse_devices(LIVE).unwrap();
        devices.channels.push("extra".into());
        t.update("demo", Seen::Serve { id: 4, devices }, None, None, &mut log);
        assert_eq!(taken(&mut log), ["stop demo #2 restarted", "start demo 4"]);
        assert_eq!(t.get("demo").unwrap().devices.channels.len(), 2);
    }

    #[test]
    fn a_stop_event_ends_the_run_with_its_reason_and_a_persistent_domain_is_down() {
        let (mut t, mut log) = (Table::default(), Log::default());
        t.update("demo", serve(3), None, None, &mut log);
        // SHUTDOWN comes first: inactive, but the STOPPED event says how.
        t.update("demo", Seen::Down, None, None, &mut log);
        assert!(t.get("demo").is_some());
        assert_eq!(t.listing()[0].state, GuestState::Running);
        let why = stop_reason(
            sys::VIR_DOMAIN_EVENT_STOPPED,
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
        );
        t.update("demo", Seen::Down, why, None, &mut log);
        assert_eq!(taken(&mut log), ["start demo 3", "stop demo #1 destroyed"]);
        assert!(t.get("demo").is_none());
        assert_eq!(t.listing()[0].state, GuestState::Down);
        assert!(t.listing()[0].channels.is_empty());
        // Started again: served, no longer down.
        t.update("demo", serve(5), None, None, &mut log);
        assert_eq!(t.listing().len(), 1);
        assert_eq!(t.listing()[0].state, GuestState::Running);
        // Undefined while stopped (transient now): gone from the listing.
        t.update("demo", Seen::Ignore, why, None, &mut log);
        t.update("demo", Seen::Ignore, None, None, &mut log);
        assert!(t.listing().is_empty());
    }

    /// Live migration as the lifecycle events tell it: in, the domain is
    /// served (consoles connect) but down until libvirt resumes it here;
    /// out, it is migrating out from the pause on, until it stops here
    /// (moved) or resumes here (the migration failed). A user's pause is
    /// not a departure. Nothing restarts along the way.
    #[test]
    fn a_migration_in_is_down_until_resumed_and_one_out_is_migrating_out_until_it_ends() {
        use sys::*;
        let (mut t, mut log) = (Table::default(), Log::default());
        let state = |t: &Table<usize>| t.listing()[0].state;
        let ev = phase_change;
        t.update(
            "demo",
            serve(7),
            None,
            ev(VIR_DOMAIN_EVENT_STARTED, VIR_DOMAIN_EVENT_STARTED_MIGRATED),
            &mut log,
        );
        assert_eq!(state(&t), GuestState::Down);
        assert_eq!(
            t.migrating("n2", "demo").unwrap().code,
            CloseCode::GuestDown
        );
        // A pause for an outgoing migration cannot happen to it.
        let paused_out = ev(
            VIR_DOMAIN_EVENT_SUSPENDED,
            VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED,
        );
        t.update("demo", serve(7), None, paused_out, &mut log);
        assert_eq!(state(&t), GuestState::Down);
        let resumed = ev(VIR_DOMAIN_EVENT_RESUMED, VIR_DOMAIN_EVENT_RESUMED_MIGRATED);
        t.update("demo", serve(7), None, resumed, &mut log);
        assert_eq!(state(&t), GuestState::Running);
        assert_eq!(t.migrating("n2", "demo"), None);

        // Out: the pause says it at once; a failed migration resumes it.
        t.update("demo", serve(7), None, paused_out, &mut log);
        assert_eq!(state(&t), GuestState::MigratingOut);
        let refused = t.migrating("n2", "demo").unwrap();
        assert_eq!(refused.code, CloseCode::GuestMoved);
        assert!(
            refused.reason.contains("migrating away from node n2"),
            "{refused}"
        );
        t.update("demo", serve(7), None, resumed, &mut log);
        assert_eq!(state(&t), GuestState::Running);
        // A user's pause and resume: still running here.
        let user = ev(
            VIR_DOMAIN_EVENT_SUSPENDED,
            VIR_DOMAIN_EVENT_SUSPENDED_PAUSED,
        );
        assert_eq!(user, None);
        t.update("demo", serve(7), None, user, &mut log);
        assert_eq!(state(&t), GuestState::Running);
        // Out again, and this time it moves: stopped, its sessions moved.
        t.update("demo", serve(7), None, paused_out, &mut log);
        assert_eq!(state(&t), GuestState::MigratingOut);
        let moved = stop_reason(VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_MIGRATED);
        t.update("demo", Seen::Ignore, moved, None, &mut log);
        assert!(t.listing().is_empty());
        assert_eq!(
            taken(&mut log),
            ["start demo 7", &format!("stop demo #1 {MIGRATED_AWAY}")]
        );
    }

    #[test]
    fn a_resync_stops_what_is_gone_and_forgets_what_is_no_longer_down() {
        let (mut t, mut log) = (Table::default(), Log::default());
        t.update("a", serve(1), None, None, &mut log);
        t.update("b", serve(2), None, None, &mut log);
        t.update("c", Seen::Down, None, None, &mut log);
        taken(&mut log);
        // libvirtd came back: b is gone, c undefined meanwhile.
        t.resync(HashMap::from([("a".to_string(), serve(1))]), &mut log);
        assert_eq!(taken(&mut log), ["stop b #2 no longer running"]);
        let names: Vec<_> = t.listing().into_iter().map(|g| g.name).collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn stop_reasons_name_the_cause() {
        assert_eq!(
            stop_reason(
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED
            ),
            Some("destroyed")
        );
        assert!(stop_reason(
            sys::VIR_DOMAIN_EVENT_STOPPED,
            sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED
        )
        .unwrap()
        .contains("migrated"));
        assert_eq!(
            stop_reason(sys::VIR_DOMAIN_EVENT_CRASHED, 0),
            Some("crashed")
        );
        assert_eq!(stop_reason(sys::VIR_DOMAIN_EVENT_SHUTDOWN, 0), None);
        assert_eq!(stop_reason(sys::VIR_DOMAIN_EVENT_STARTED, 0), None);
    }

    #[test]
    fn a_migrated_domain_moves_its_sessions_and_others_are_down() {
        let moved = stopped_close(MIGRATED_AWAY);
        assert_eq!(moved.code, CloseCode::GuestMoved);
        assert!(moved.reason.contains("reconnect"), "{moved}");
        let saved = stopped_close("saved");
        assert_eq!(saved.code, CloseCode::GuestDown);
        assert_eq!(saved.reason, "guest stopped (saved)");
    }
}
