//! The routing table, sans-IO: each agent's latest inventory kept on its
//! own, and one route per guest name merged from all of them.
//!
//! Inventories go in ([`Table::apply`], [`Table::remove`]), routes come out
//! ([`Table::route`], [`Table::list`]), and so do the events the caller
//! logs and counts ([`Applied`]). The rules:
//!
//! * a snapshot replaces only its own agent's claims, and an agent that
//!   disconnects takes only its own claims with it;
//! * an agent claims only names its allow-list ([`GuestAllow`]) admits and
//!   that are valid names, each once per snapshot; other names are dropped
//!   and reported;
//! * running wins over down, whatever the order the snapshots came in;
//! * two agents saying one guest runs is a conflict, reported once when it
//!   starts. The route stays with the claim that has been running longest,
//!   so a newcomer cannot take a running guest's route over;
//! * the one way the route leaves a node whose guest is still there: that
//!   node itself says the guest is paused for an outgoing live migration
//!   ([`GuestState::MigratingOut`]), which does not count as running. Then
//!   the claim running longest on another (allowed) agent takes the route,
//!   and the move is reported ([`Applied::moved`]) so the gateway moves
//!   the sessions at once. A node that says migrating out keeps its age:
//!   if the migration fails and it says running again, the route comes back
//!   to it. The new node saying "running" alone never moves anything;
//! * when no claim says running, one that says migrating out is listed,
//!   else the first agent in the configuration.
//!
//! The connection type `C` is opaque here (the gateway's QUIC connection),
//! so the rules are unit-tested without a network.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vmgate_wire::{valid_name, GuestInfo, GuestState};

/// Which guest names one agent may claim: `None` (no `guests` in its
/// configuration) admits every name; otherwise a name must equal one of
/// the patterns or, for a pattern ending in `*`, start with what precedes
/// the `*` (`"web-*"`; a lone `"*"` admits every name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestAllow(Option<Vec<String>>);

impl GuestAllow {
    /// Every name.
    pub fn any() -> GuestAllow {
        GuestAllow(None)
    }

    /// The names `patterns` admit (see [`GuestAllow`]).
    pub fn only(patterns: Vec<String>) -> GuestAllow {
        GuestAllow(Some(patterns))
    }

    /// Whether `name` may be claimed.
    pub fn admits(&self, name: &str) -> bool {
        let Some(patterns) = &self.0 else {
            return true;
        };
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }

    /// Whether `pattern` is one [`GuestAllow::admits`] understands: a valid
    /// guest name, optionally followed by one `*`, or `*` alone.
    pub fn valid_pattern(pattern: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => valid_name(prefix),
            None => valid_name(pattern),
        }
    }
}

/// Why a name in an agent's inventory was not taken as a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The agent's allow-list does not admit the name.
    NotAllowed,
    /// Not a valid guest name (`vmgate_wire::valid_name`).
    InvalidName,
    /// Listed more than once in the same snapshot (the first is kept).
    Duplicate,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::InvalidName => "invalid_name",
            Refusal::Duplicate => "duplicate",
        }
    }
}

/// Two or more agents say `guest` is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub guest: String,
    /// The agents claiming it, the one keeping the route first.
    pub agents: Vec<usize>,
}

/// A guest's route went from one agent to another because the first said
/// the guest left it (migrating out, or down) and the second runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub guest: String,
    pub from: usize,
    pub to: usize,
}

/// What applying one snapshot changed that someone should hear about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Names refused that this agent's previous snapshot did not already
    /// have refused (each refusal is reported once, not on every snapshot).
    pub refused: Vec<(String, Refusal)>,
    /// Conflicts that began with this snapshot.
    pub conflicts: Vec<Conflict>,
    /// Routes that moved with this snapshot (see [`Table::departed`]).
    pub moved: Vec<Moved>,
}

/// One agent's claim on one name.
#[derive(Debug, Clone)]
struct Claim {
    guest: GuestInfo,
    /// When (in the table's event count) this agent began to say the guest
    /// is here (running, or paused to migrate out), if it says so now: the
    /// oldest such claim keeps the route while it runs.
    since: Option<u64>,
}

impl Claim {
    fn running(&self) -> bool {
        self.guest.state == GuestState::Running
    }

    /// Whether its agent says the guest left it or is leaving.
    fn leaving(&self) -> bool {
        matches!(
            self.guest.state,
            GuestState::MigratingOut | GuestState::Down
        )
    }
}

/// What one connected agent says.
#[derive(Debug, Clone)]
struct AgentView<C> {
    node: String,
    conn: C,
    claims: BTreeMap<String, Claim>,
    /// Names refused in its last snapshot, so a refusal is reported once.
    refused: BTreeSet<(String, Refusal)>,
}

/// Where a guest is routed.
#[derive(Debug, Clone)]
pub struct Route<C> {
    /// The agent's index in the configuration.
    pub agent: usize,
    pub node: String,
    pub conn: C,
    pub guest: GuestInfo,
}

/// Every connected agent's claims, and the merged route of each name.
#[derive(Debug, Clone)]
pub struct Table<C> {
    agents: BTreeMap<usize, AgentView<C>>,
    /// The agent each name routes to, kept in step with `agents`.
    merged: HashMap<String, usize>,
    /// Names with more than one running claim now.
    conflicted: BTreeSet<String>,
    /// Counts snapshots: orders running claims by when they began.
    clock: u64,
}

impl<C> Default for Table<C> {
    fn default() -> Table<C> {
        Table {
            agents: BTreeMap::new(),
            merged: HashMap::new(),
            conflicted: BTreeSet::new(),
            clock: 0,
        }
    }
}

impl<C: Clone> Table<C> {
    /// Agent `agent` (reached over `conn`, on `node`) now hosts `guests`,
    /// its whole inventory; names `allow` does not admit are refused.
    pub fn apply(
        &mut self,
        agent: usize,
        allow: &GuestAllow,
        node: String,
        conn: C,
        guests: Vec<GuestInfo>,
    ) -> Applied {
        self.clock = self.clock.saturating_add(1);
        let now = self.clock;
        let old = self.agents.remove(&agent);
        let (old_claims, old_refused) = match old {
            Some(v) => (v.claims, v.refused),
            None => (BTreeMap::new(), BTreeSet::new()),
        };
        let mut claims = BTreeMap::new();
        let mut refused = BTreeSet::new();
        for guest in guests {
            let why = if !valid_name(&guest.name) {
                Some(Refusal::InvalidName)
            } else if !allow.admits(&guest.name) {
                Some(Refusal::NotAllowed)
            } else if claims.contains_key(&guest.name) {
                Some(Refusal::Duplicate)
            } else {
                None
            };
            if let Some(why) = why {
                refused.insert((guest.name, why));
                continue;
            }
            let since = match guest.state {
                GuestState::Down => None,
                GuestState::Running | GuestState::MigratingOut => Some(
                    old_claims
                        .get(&guest.name)
                        .and_then(|c| c.since)
                        .unwrap_or(now),
                ),
            };
            claims.insert(guest.name.clone(), Claim { guest, since });
        }
        let touched: BTreeSet<String> = old_claims
            .into_keys()
            .chain(claims.keys().cloned())
            .collect();
        let new_refusals = refused.difference(&old_refused).cloned().collect();
        self.agents.insert(
            agent,
            AgentView {
                node,
                conn,
                claims,
                refused,
            },
        );
        let (conflicts, moved) = self.merge(touched);
        Applied {
            refused: new_refusals,
            conflicts,
            moved,
        }
    }

    /// Agent `agent` disconnected: its claims, and only its, are gone.
    pub fn remove(&mut self, agent: usize) {
        if let Some(v) = self.agents.remove(&agent) {
            // A departed agent reports no move: its sessions went with it.
            self.merge(v.claims.into_keys().collect());
        }
    }

    /// Where `guest` routes now, if any connected agent may claim it.
    pub fn route(&self, guest: &str) -> Option<Route<C>> {
        let agent = *self.merged.get(guest)?;
        let view = &self.agents[&agent];
        Some(Route {
            agent,
            node: view.node.clone(),
            conn: view.conn.clone(),
            guest: view.claims[guest].guest.clone(),
        })
    }

    /// Every routed guest with its agent and node, by name.
    pub fn list(&self) -> Vec<(usize, &str, &GuestInfo)> {
        let mut v: Vec<_> = self
            .merged
            .iter()
            .map(|(name, &agent)| {
                let view = &self.agents[&agent];
                (agent, view.node.as_str(), &view.claims[name].guest)
            })
            .collect();
        v.sort_by(|a, b| a.2.name.cmp(&b.2.name));
        v
    }

    /// Names claimed as running by more than one agent now.
    pub fn conflicted(&self) -> &BTreeSet<String> {
        &self.conflicted
    }

    /// Whether `guest`, whose sessions on agent `agent` were opened there,
    /// has moved away from it: `agent` itself says the guest is leaving or
    /// left it (migrating out, or down), and the route is now on another
    /// agent that runs it. Only then does the gateway move those sessions
    /// before the old agent ends them.
    pub fn departed(&self, guest: &str, agent: usize) -> bool {
        let Some(&to) = self.merged.get(guest) else {
            return false;
        };
        let claim = |a: usize| self.agents.get(&a).and_then(|v| v.claims.get(guest));
        to != agent
            && claim(to).is_some_and(Claim::running)
            && claim(agent).is_some_and(Claim::leaving)
    }

    /// Recomputes the route of each name in `names`; answers the conflicts
    /// that began and the routes that moved.
    fn merge(&mut self, names: BTreeSet<String>) -> (Vec<Conflict>, Vec<Moved>) {
        let mut began = Vec::new();
        let mut moved = Vec::new();
        for name in names {
            // (since, agent) of the claims saying the guest runs, and of
            // those saying it is migrating out: oldest first, and the agent
            // index breaks a tie (one snapshot never makes two).
            let (mut running, mut leaving) = (Vec::new(), Vec::new());
            let mut first_down = None;
            for (&agent, view) in &self.agents {
                let Some(c) = view.claims.get(&name) else {
                    continue;
                };
                match (c.since, c.running()) {
                    (Some(since), true) => running.push((since, agent)),
                    (Some(since), false) => leaving.push((since, agent)),
                    (None, _) => {
                        first_down.get_or_insert(agent);
                    }
                }
            }
            running.sort_unstable();
            leaving.sort_unstable();
            // The oldest running claim has the route: a node that says it
            // is migrating out stops counting (and counts again, with its
            // age, if it says running again).
            let to = running
                .first()
                .or(leaving.first())
                .map(|r| r.1)
                .or(first_down);
            let from = match to {
                Some(agent) => self.merged.insert(name.clone(), agent),
                None => self.merged.remove(&name),
            };
            if let (Some(from), Some(to)) = (from, to) {
                if from != to && self.departed(&name, from) {
                    moved.push(Moved {
                        guest: name.clone(),
                        from,
                        to,
                    });
                }
            }
            if running.len() > 1 {
                if self.conflicted.insert(name.clone()) {
                    began.push(Conflict {
                        guest: name,
                        agents: running.iter().map(|r| r.1).collect(),
                    });
                }
            } else {
                self.conflicted.remove(&name);
            }
        }
        (began, moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vmgate_wire::{ChannelInfo, ChannelKind};

    fn g(name: &str, state: GuestState) -> GuestInfo {
        GuestInfo {
            name: name.into(),
            state,
            channels: vec![ChannelInfo::new("serial0", ChannelKind::Serial)],
        }
    }
    use GuestState::{Down, MigratingOut, Running};

    fn apply(t: &mut Table<u32>, agent: usize, guests: &[(&str, GuestState)]) -> Applied {
        let list = guests.iter().map(|(n, s)| g(n, *s)).collect();
        t.apply(
            agent,
            &GuestAllow::any(),
            format!("node{agent}"),
            agent as u32,
            list,
        )
    }

    fn routed(t: &Table<u32>, name: &str) -> Option<(usize, GuestState)> {
        t.route(name).map(|r| (r.agent, r.guest.state))
    }

    #[test]
    fn a_later_down_snapshot_does_not_overwrite_running_in_either_order() {
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", Running)]);
        apply(&mut t, 1, &[("web", Down)]);
        assert_eq!(routed(&t, "web"), Some((0, Running)));

        let mut t = Table::default();
        apply(&mut t, 1, &[("web", Down)]);
        assert_eq!(routed(&t, "web"), Some((1, Down)));
        apply(&mut t, 0, &[("web", Running)]);
        assert_eq!(routed(&t, "web"), Some((0, Running)));
        let r = t.route("web").unwrap();
        assert_eq!((r.node.as_str(), r.conn), ("node0", 0));
    }

    #[test]
    fn a_disconnect_takes_only_that_agents_claims() {
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", Running), ("db", Running)]);
        apply(&mut t, 1, &[("web", Down), ("mail", Running)]);
        t.remove(1);
        assert_eq!(routed(&t, "web"), Some((0, Running)));
        assert_eq!(routed(&t, "mail"), None);
        t.remove(0);
        assert!(t.list().is_empty());
        assert!(t.merged.is_empty());
    }

    #[test]
    fn the_down_agent_leaving_keeps_the_route_and_the_running_one_leaving_falls_back_to_down() {
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", Running)]);
        apply(&mut t, 1, &[("web", Down)]);
        t.remove(0);
        assert_eq!(routed(&t, "web"), Some((1, Down)));
        apply(&mut t, 0, &[("web", Running)]);
        assert_eq!(routed(&t, "web"), Some((0, Running)));
    }

    #[test]
    fn two_running_claims_are_a_conflict_reported_once_and_the_older_keeps_the_route() {
        let mut t = Table::default();
        assert!(apply(&mut t, 1, &[("web", Running)]).conflicts.is_empty());
        let a = apply(&mut t, 0, &[("web", Running)]);
        assert_eq!(
            a.conflicts,
            vec![Conflict {
                guest: "web".into(),
                agents: vec![1, 0]
            }]
        );
        assert_eq!(routed(&t, "web"), Some((1, Running)));
        // The same snapshots again: still one conflict, not a new one, and
        // the newcomer never takes over by repeating itself.
        assert!(apply(&mut t, 0, &[("web", Running)]).conflicts.is_empty());
        assert!(apply(&mut t, 1, &[("web", Running)]).conflicts.is_empty());
        assert_eq!(routed(&t, "web"), Some((1, Running)));
        // The old node stops it (a live migration's end): the new one has it.
        apply(&mut t, 1, &[("web", Down)]);
        assert!(t.conflicted().is_empty());
        assert_eq!(routed(&t, "web"), Some((0, Running)));
        // A conflict that ends and begins again is reported again.
        assert_eq!(apply(&mut t, 1, &[("web", Running)]).conflicts.len(), 1);
    }

    /// The narrow exception to "a running guest stays routed": only the
    /// node that runs the guest can let the route go, by saying it is
    /// migrating out; then a running claim elsewhere takes it, the move is
    /// reported, and the old node's sessions count as departed. The new
    /// node saying "running" alone moves nothing.
    #[test]
    fn only_the_running_node_saying_it_migrates_out_lets_another_running_one_take_the_route() {
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", Running)]);
        apply(&mut t, 1, &[("web", Down)]); // waiting for the migration
                                            // The new node says running first: a conflict, and nothing moves.
        let a = apply(&mut t, 1, &[("web", Running)]);
        assert_eq!(a.conflicts.len(), 1);
        assert!(a.moved.is_empty());
        assert_eq!(routed(&t, "web"), Some((0, Running)));
        assert!(!t.departed("web", 0));
        // The old node says the guest is leaving it: the route moves, once.
        let a = apply(&mut t, 0, &[("web", MigratingOut)]);
        assert_eq!(
            a.moved,
            vec![Moved {
                guest: "web".into(),
                from: 0,
                to: 1
            }]
        );
        assert!(a.conflicts.is_empty() && t.conflicted().is_empty());
        assert_eq!(routed(&t, "web"), Some((1, Running)));
        assert!(t.departed("web", 0));
        assert!(!t.departed("web", 1));
        // Its later "down" (the migration confirmed) moves nothing again.
        assert!(apply(&mut t, 0, &[("web", Down)]).moved.is_empty());
        assert!(t.departed("web", 0));
        assert_eq!(routed(&t, "web"), Some((1, Running)));

        // The usual order: the old node pauses first, the new one resumes.
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", Running)]);
        apply(&mut t, 1, &[("web", Down)]);
        assert!(apply(&mut t, 0, &[("web", MigratingOut)]).moved.is_empty());
        assert_eq!(routed(&t, "web"), Some((0, MigratingOut)));
        assert!(!t.departed("web", 0));
        let a = apply(&mut t, 1, &[("web", Running)]);
        assert_eq!(a.moved.len(), 1);
        assert_eq!(routed(&t, "web"), Some((1, Running)));
        assert!(t.departed("web", 0));
    }

    /// A migration that fails after the old node paused the guest (it runs
    /// there again, the new node never ran it) changes nothing: no move,
    /// no departed sessions, the route where it was. And a node that
    /// paused keeps its age: a newcomer that claimed the guest meanwhile
    /// does not keep the route once the old node runs it again.
    #[test]
    fn a_migration_that_fails_after_the_pause_moves_nothing_and_the_old_node_keeps_its_age() {
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", Running)]);
        apply(&mut t, 1, &[("web", Down)]);
        assert!(apply(&mut t, 0, &[("web", MigratingOut)]).moved.is_empty());
        assert!(apply(&mut t, 1, &[]).moved.is_empty()); // destination gone
        let a = apply(&mut t, 0, &[("web", Running)]);
        assert_eq!(a, Applied::default());
        assert_eq!(routed(&t, "web"), Some((0, Running)));
        assert!(!t.departed("web", 0));

        // Agent 1 claimed web running all along (a conflict): while agent 0
        // pauses it has the route, and gives it back when 0 runs it again.
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", Running)]);
        apply(&mut t, 1, &[("web", Running)]);
        apply(&mut t, 0, &[("web", MigratingOut)]);
        assert_eq!(routed(&t, "web"), Some((1, Running)));
        let a = apply(&mut t, 0, &[("web", Running)]);
        assert_eq!(a.conflicts.len(), 1);
        assert!(a.moved.is_empty(), "a route coming back is not a departure");
        assert_eq!(routed(&t, "web"), Some((0, Running)));
        assert!(!t.departed("web", 1));
    }

    /// A node that disconnects reports no move (its sessions ended with
    /// its connection), and a node that never claimed the guest has no
    /// departed sessions.
    #[test]
    fn a_disconnect_or_a_stranger_is_no_departure() {
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", MigratingOut)]);
        apply(&mut t, 1, &[("web", Running)]);
        assert!(t.departed("web", 0));
        assert!(!t.departed("web", 2));
        t.remove(0);
        assert!(!t.departed("web", 0));
        let mut t = Table::default();
        apply(&mut t, 0, &[("web", Running)]);
        apply(&mut t, 1, &[("web", Down)]);
        t.remove(0);
        let a = apply(&mut t, 1, &[("web", Running)]);
        assert!(a.moved.is_empty());
    }

    #[test]
    fn the_allow_list_refuses_names_and_reports_each_refusal_once() {
        let mut t: Table<u32> = Table::default();
        let allow = GuestAllow::only(vec!["web-*".into(), "db".into()]);
        let list = || {
            vec![
                g("web-1", Running),
                g("db", Running),
                g("db2", Running),
                g("mail", Down),
                g("bad\nname", Running),
                g("web-1", Down),
            ]
        };
        let a = t.apply(0, &allow, "n".into(), 0, list());
        assert_eq!(
            a.refused,
            vec![
                ("bad\nname".to_string(), Refusal::InvalidName),
                ("db2".to_string(), Refusal::NotAllowed),
                ("mail".to_string(), Refusal::NotAllowed),
                ("web-1".to_string(), Refusal::Duplicate),
            ]
        );
        let names: Vec<_> = t.list().iter().map(|r| r.2.name.clone()).collect();
        assert_eq!(names, ["db", "web-1"]);
        assert_eq!(
            routed(&t, "web-1"),
            Some((0, Running)),
            "the first entry is kept"
        );
        assert_eq!(
            t.apply(0, &allow, "n".into(), 0, list()),
            Applied::default()
        );
        // Refused names do not shadow another agent's claim.
        apply(&mut t, 1, &[("mail", Running)]);
        assert_eq!(routed(&t, "mail"), Some((1, Running)));
    }

    #[test]
    fn allow_list_patterns() {
        let a = GuestAllow::only(vec!["web-*".into(), "db".into()]);
        assert!(a.admits("web-1") && a.admits("web-") && a.admits("db"));
        assert!(!a.admits("db2") && !a.admits("web") && !a.admits("xweb-1"));
        assert!(GuestAllow::only(vec!["*".into()]).admits("anything"));
        assert!(!GuestAllow::only(vec![]).admits("web"));
        assert!(GuestAllow::any().admits("web"));
        for ok in ["*", "web-*", "db", "a.b:c_d-*"] {
            assert!(GuestAllow::valid_pattern(ok), "{ok}");
        }
        for bad in ["", "**", "we*b", "web/*", "a b", "*web"] {
            assert!(!GuestAllow::valid_pattern(bad), "{bad}");
        }
    }

    /// One agent's snapshot: a few names from a small set so they collide.
    fn snapshot() -> impl Strategy<Value = Vec<(String, GuestState)>> {
        let state = prop_oneof![Just(Running), Just(Down), Just(MigratingOut)];
        prop::collection::vec(("[a-d]", state), 0..5)
    }

    fn infos(s: &[(String, GuestState)]) -> Vec<GuestInfo> {
        s.iter().map(|(n, st)| g(n, *st)).collect()
    }

    /// Each listed name's state and, unless in conflict, its agent; and
    /// the names in conflict.
    type Outcome = (Vec<(String, GuestState, Option<usize>)>, BTreeSet<String>);

    /// What must not depend on the order events came in: each listed
    /// name's state, the agent when only one claims that state (which one
    /// of several is routed depends on who said it first), and which names
    /// are in conflict.
    fn outcome(t: &Table<u32>) -> Outcome {
        let list = t
            .list()
            .into_iter()
            .map(|(agent, _, gi)| {
                let same = t
                    .agents
                    .values()
                    .filter(|v| {
                        v.claims
                            .get(&gi.name)
                            .is_some_and(|c| c.guest.state == gi.state)
                    })
                    .count();
                let unique = same == 1 || gi.state == Down;
                (gi.name.clone(), gi.state, unique.then_some(agent))
            })
            .collect();
        (list, t.conflicted.clone())
    }

    /// The outcome straight from each agent's last snapshot, no table:
    /// running if anyone says so, else migrating out if anyone says so.
    fn expected(last: &BTreeMap<usize, Vec<(String, GuestState)>>) -> Vec<(String, GuestState)> {
        let rank = |s: GuestState| match s {
            Running => 2,
            MigratingOut => 1,
            Down => 0,
        };
        let mut m: BTreeMap<String, GuestState> = BTreeMap::new();
        for snap in last.values() {
            let mut seen = BTreeSet::new();
            for (n, st) in snap {
                if !seen.insert(n) {
                    continue; // a duplicate: the first entry counts
                }
                let s = m.entry(n.clone()).or_insert(Down);
                if rank(*st) > rank(*s) {
                    *s = *st;
                }
            }
        }
        m.into_iter().collect()
    }

    proptest! {
        /// The agents' snapshots applied in any two orders give the same
        /// routes; a name is running iff some agent says so, migrating out
        /// iff none says running and some says migrating out.
        #[test]
        fn snapshot_order_does_not_matter(
            snaps in prop::collection::vec(snapshot(), 1..5),
            order in Just((0..4usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let mut a = Table::default();
            for (i, s) in snaps.iter().enumerate() {
                a.apply(i, &GuestAllow::any(), format!("n{i}"), i as u32, infos(s));
            }
            let mut b = Table::default();
            for &i in order.iter().filter(|&&i| i < snaps.len()) {
                b.apply(i, &GuestAllow::any(), format!("n{i}"), i as u32, infos(&snaps[i]));
            }
            prop_assert_eq!(outcome(&a), outcome(&b));
            let last = snaps.iter().cloned().enumerate().collect();
            let states: Vec<_> = outcome(&a).0.into_iter().map(|(n, s, _)| (n, s)).collect();
            prop_assert_eq!(states, expected(&last));
        }

        /// Any interleaving of snapshots and disconnects ends where the
        /// agents' last words say: a disconnect takes only its agent's
        /// claims, a later down never overwrites another agent's running.
        #[test]
        fn any_history_ends_where_the_last_snapshots_say(
            events in prop::collection::vec((0..4usize, prop::option::of(snapshot())), 0..24),
        ) {
            let mut t = Table::default();
            let mut last: BTreeMap<usize, Vec<(String, GuestState)>> = BTreeMap::new();
            for (agent, snap) in &events {
                match snap {
                    Some(s) => {
                        t.apply(*agent, &GuestAllow::any(), format!("n{agent}"), *agent as u32, infos(s));
                        last.insert(*agent, s.clone());
                    }
                    None => {
                        t.remove(*agent);
                        last.remove(agent);
                    }
                }
            }
            let mut fresh = Table::default();
            for (agent, s) in &last {
                fresh.apply(*agent, &GuestAllow::any(), format!("n{agent}"), *agent as u32, infos(s));
            }
            prop_assert_eq!(outcome(&t), outcome(&fresh));
            let states: Vec<_> = outcome(&t).0.into_iter().map(|(n, s, _)| (n, s)).collect();
            prop_assert_eq!(states, expected(&last));
            // The routed claim is always one its agent makes now, and a
            // session's node is departed exactly when it says the guest
            // left it and another agent runs it where the route is.
            for (agent, _, gi) in t.list() {
                let first = last[&agent].iter().find(|(n, _)| *n == gi.name);
                prop_assert_eq!(first.map(|(_, st)| *st), Some(gi.state));
                for (&other, snap) in &last {
                    let says = snap.iter().find(|(n, _)| *n == gi.name).map(|(_, st)| *st);
                    let left = matches!(says, Some(Down | MigratingOut));
                    prop_assert_eq!(
                        t.departed(&gi.name, other),
                        left && other != agent && gi.state == Running
                    );
                }
            }
        }
    }
}
