//! Deterministic simulation of watchdog clusters: seeded schedules of
//! crashes, restarts, symmetric and one-way partitions (whole links, or the
//! heartbeat path alone), delays, loss and heals, with clocks running at
//! different rates. A restarted node leaves its peers' links to it stale:
//! the next link message to it may be lost, as a write into a connection
//! the peer's old process held can be. Checked on every event:
//! never two nodes active at once; after a heal: an active leader within
//! the election bound, then no change of leader.

use super::core::{Action, Elector, Member, Millis, Msg, NodeId, Path, Settings, Standing};

const TICK: u64 = 25;

fn settings() -> Settings {
    Settings {
        heartbeat_interval: 100,
        election_timeout: 1000,
        lease: 600,
        verify_interval: 10_000,
        failback_after: 0,
        half_votes: false,
    }
}

/// Time after a heal within which a leader must be active: a restarted
/// node's quarantine, the slowest election timer (1.5 ET + rank delays),
/// a pre-vote and a vote round, and a lease round.
const HEAL_BOUND: u64 = 4_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Pending {
    at: u64,
    from: NodeId,
    to: NodeId,
    msg: Msg,
}

pub(super) struct Sim {
    rng: Rng,
    now: u64,
    members: Vec<Member>,
    s: Settings,
    nodes: Vec<Option<Elector>>,
    /// Local clock = offset + now * rate / 1000.
    rate: Vec<u64>,
    offset: Vec<u64>,
    next_tick: Vec<u64>,
    link: Vec<Vec<bool>>,
    /// `heartbeat_cut[a][b]`: heartbeat-path messages from a to b are lost.
    heartbeat_cut: Vec<Vec<bool>>,
    /// `stale[a][b]`: a's link to b predates b's restart.
    stale: Vec<Vec<bool>>,
    delay: (u64, u64),
    loss: u64,
    queue: Vec<Pending>,
    /// (completion time, node, incarnation) of de-escalations.
    undo: Vec<(u64, NodeId, u64)>,
    incarnation: Vec<u64>,
    active: Vec<bool>,
    pub(super) trace: Vec<String>,
    pub(super) leader_changes: Vec<(u64, Option<NodeId>)>,
}

impl Sim {
    pub(super) fn new(n: usize, seed: u64, s: Settings, priorities: &[u32]) -> Sim {
        let mut rng = Rng(seed);
        let members = (0..n)
            .map(|i| Member {
                name: format!("n{i}"),
                priority: priorities.get(i).copied().unwrap_or(1),
            })
            .collect::<Vec<_>>();
        let rate = (0..n).map(|_| 950 + rng.below(101)).collect::<Vec<_>>();
        let offset = (0..n).map(|_| rng.below(1_000_000)).collect::<Vec<_>>();
        let mut sim = Sim {
            next_tick: (0..n).map(|_| rng.below(TICK)).collect(),
            rng,
            now: 0,
            members,
            s,
            nodes: (0..n).map(|_| None).collect(),
            rate,
            offset,
            link: vec![vec![true; n]; n],
            heartbeat_cut: vec![vec![false; n]; n],
            stale: vec![vec![false; n]; n],
            delay: (1, 5),
            loss: 0,
            queue: Vec::new(),
            undo: Vec::new(),
            incarnation: vec![0; n],
            active: vec![false; n],
            trace: Vec::new(),
            leader_changes: Vec::new(),
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn local(&self, i: NodeId) -> Millis {
        self.offset[i] + self.now * self.rate[i] / 1000
    }

    fn start(&mut self, i: NodeId) {
        self.incarnation[i] += 1;
        // Its own links are new; its peers' links to it are stale.
        self.stale[i].fill(false);
        if self.incarnation[i] > 1 {
            for a in 0..self.nodes.len() {
                self.stale[a][i] = a != i && self.nodes[a].is_some();
            }
        }
        let seed = self.rng.next();
        let now = self.local(i);
        self.nodes[i] = Some(Elector::new(
            i,
            self.members.clone(),
            self.s.clone(),
            now,
            seed,
        ));
        self.trace.push(format!("{} start n{i}", self.now));
    }

    fn crash(&mut self, i: NodeId) {
        if self.nodes[i].take().is_some() {
            self.active[i] = false;
            self.trace.push(format!("{} crash n{i}", self.now));
        }
    }

    pub(super) fn node(&self, i: NodeId) -> Option<&Elector> {
        self.nodes[i].as_ref()
    }

    pub(super) fn active(&self) -> Vec<NodeId> {
        (0..self.active.len()).filter(|&i| self.active[i]).collect()
    }

    pub(super) fn now(&self) -> u64 {
        self.now
    }

    pub(super) fn heal(&mut self) {
        let n = self.nodes.len();
        self.link = vec![vec![true; n]; n];
        self.heartbeat_cut = vec![vec![false; n]; n];
        self.delay = (1, 5);
        self.loss = 0;
        for i in 0..n {
            if self.nodes[i].is_none() {
                self.start(i);
            }
        }
        self.trace.push(format!("{} heal", self.now));
    }

    /// One random fault.
    fn fault(&mut self) {
        let n = self.nodes.len();
        let i = self.rng.below(n as u64) as usize;
        match self.rng.below(9) {
            0 => self.crash(i),
            1 => {
                if self.nodes[i].is_none() {
                    self.start(i);
                }
            }
            2 | 3 => {
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(50)).collect();
                for a in 0..n {
                    for b in 0..n {
                        self.link[a][b] = side[a] == side[b];
                    }
                }
                self.trace.push(format!("{} partition {side:?}", self.now));
            }
            4 => {
                let j = self.rng.below(n as u64) as usize;
                self.link[i][j] = false;
                self.trace.push(format!("{} drop n{i}->n{j}", self.now));
            }
            8 => self.deafen(i),
            5 => {
                self.delay = (self.rng.below(50), 50 + self.rng.below(300));
                self.trace
                    .push(format!("{} delay {:?}", self.now, self.delay));
            }
            6 => {
                self.loss = [0, 5, 30, 80][self.rng.below(4) as usize];
                self.trace.push(format!("{} loss {}%", self.now, self.loss));
            }
            _ => {
                let j = self.rng.below(n as u64) as usize;
                self.link[i][j] = true;
                self.link[j][i] = true;
                self.heartbeat_cut[i][j] = false;
                self.heartbeat_cut[j][i] = false;
            }
        }
    }

    /// Runs until `until`, checking safety on every event.
    pub(super) fn run_until(&mut self, until: u64) -> Result<(), String> {
        loop {
            let tick = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].is_some())
                .min_by_key(|&i| self.next_tick[i]);
            let msg = (0..self.queue.len()).min_by_key(|&k| self.queue[k].at);
            let undo = (0..self.undo.len()).min_by_key(|&k| self.undo[k].0);
            let t_tick = tick.map_or(u64::MAX, |i| self.next_tick[i]);
            let t_msg = msg.map_or(u64::MAX, |k| self.queue[k].at);
            let t_undo = undo.map_or(u64::MAX, |k| self.undo[k].0);
            let t = t_tick.min(t_msg).min(t_undo);
            if t > until {
                self.now = until;
                return Ok(());
            }
            self.now = t;
            let touched = if t == t_undo {
                let (_, i, inc) = self.undo.swap_remove(undo.unwrap());
                if inc != self.incarnation[i] || self.nodes[i].is_none() {
                    continue;
                }
                self.active[i] = false;
                let now = self.local(i);
                self.nodes[i].as_mut().unwrap().deescalated(now);
                i
            } else if t == t_msg {
                let p = self.queue.swap_remove(msg.unwrap());
                if self.nodes[p.to].is_none() {
                    continue;
                }
                let now = self.local(p.to);
                self.nodes[p.to].as_mut().unwrap().step(p.from, p.msg, now);
                p.to
            } else {
                let i = tick.unwrap();
                self.next_tick[i] += TICK;
                let now = self.local(i);
                self.nodes[i].as_mut().unwrap().tick(now);
                i
            };
            self.drain(touched)?;
        }
    }

    fn drain(&mut self, i: NodeId) -> Result<(), String> {
        let ready = self.nodes[i].as_mut().unwrap().take_ready();
        for (to, msg) in ready.messages {
            if !self.link[i][to] || self.rng.chance(self.loss) {
                continue;
            }
            let mut extra = 0;
            match msg.path() {
                Path::Heartbeat if self.heartbeat_cut[i][to] => continue,
                Path::Heartbeat => {}
                Path::Link if self.stale[i][to] => {
                    // The first write after the peer restarted: lost, or
                    // sent again on a fresh connection.
                    self.stale[i][to] = false;
                    if self.rng.chance(50) {
                        continue;
                    }
                    extra = 1 + self.rng.below(20);
                }
                Path::Link => {}
            }
            let (lo, hi) = self.delay;
            let at = self.now + extra + lo + self.rng.below(hi - lo + 1);
            self.queue.push(Pending {
                at,
                from: i,
                to,
                msg,
            });
        }
        for a in ready.actions {
            match a {
                Action::Escalate { term } => {
                    if let Some(j) = self.active().into_iter().find(|&j| j != i) {
                        return Err(format!(
                            "t={}: n{i} escalates (term {term}) while n{j} is active",
                            self.now
                        ));
                    }
                    self.active[i] = true;
                    self.trace
                        .push(format!("{} n{i} escalates term {term}", self.now));
                    self.leader_changes.push((self.now, Some(i)));
                }
                Action::DeEscalate { term } => {
                    let done = self.now + self.rng.below(20);
                    self.undo.push((done, i, self.incarnation[i]));
                    self.trace
                        .push(format!("{} n{i} de-escalates term {term}", self.now));
                }
                Action::Verify { .. } => {}
            }
        }
        Ok(())
    }

    /// A random schedule of `faults` faults, then a heal; checks the
    /// bound and stability after every heal that lasts long enough.
    pub(super) fn random_schedule(&mut self, faults: usize) -> Result<(), String> {
        self.run_until(3_000)?;
        for _ in 0..faults {
            if self.rng.chance(15) {
                self.heal();
                self.check_heal(self.now)?;
            } else {
                self.fault();
                let until = self.now + 100 + self.rng.below(3_000);
                self.run_until(until)?;
            }
        }
        self.heal();
        self.check_heal(self.now)
    }

    /// After a heal at `at`: one active leader within the bound, and the
    /// same one for the next 5 s.
    fn check_heal(&mut self, at: u64) -> Result<(), String> {
        self.run_until(at + HEAL_BOUND)?;
        let active = self.active();
        if active.len() != 1 {
            return Err(format!(
                "t={}: {} s after a heal, active nodes {active:?}",
                self.now,
                HEAL_BOUND / 1000
            ));
        }
        let changes = self.leader_changes.len();
        self.run_until(at + HEAL_BOUND + 5_000)?;
        if self.leader_changes.len() != changes || self.active() != active {
            return Err(format!(
                "t={}: leadership flapped after a heal: {:?}",
                self.now,
                &self.leader_changes[changes..]
            ));
        }
        let leaders = (0..self.nodes.len())
            .filter(|&i| self.node(i).is_some_and(|n| n.role() == Standing::Leader))
            .count();
        if leaders != 1 {
            return Err(format!("t={}: {leaders} leaders after a heal", self.now));
        }
        Ok(())
    }

    /// Cuts `i` off from every other node (both directions).
    pub(super) fn isolate(&mut self, i: NodeId) {
        for j in 0..self.nodes.len() {
            if j != i {
                self.link[i][j] = false;
                self.link[j][i] = false;
            }
        }
    }

    /// Drops every heartbeat-path message into `i`; links stay up.
    pub(super) fn deafen(&mut self, i: NodeId) {
        for a in 0..self.nodes.len() {
            self.heartbeat_cut[a][i] = a != i;
        }
        self.trace
            .push(format!("{} heartbeats into n{i} dropped", self.now));
    }

    pub(super) fn crash_node(&mut self, i: NodeId) {
        self.crash(i);
    }

    pub(super) fn switchover(&mut self, at: NodeId, to: &str) {
        let now = self.local(at);
        self.nodes[at]
            .as_mut()
            .unwrap()
            .switchover(to, now)
            .unwrap();
        self.drain(at).unwrap();
    }

    pub(super) fn set_healthy(&mut self, i: NodeId, healthy: bool) {
        self.nodes[i].as_mut().unwrap().set_healthy(healthy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedules() -> u64 {
        std::env::var("TIDEPOOL_SIM_SCHEDULES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000)
    }

    fn run_many(n: usize, count: u64, s: Settings) {
        for seed in 0..count {
            let mut sim = Sim::new(n, seed * 7919 + n as u64, s.clone(), &[]);
            if let Err(e) = sim.random_schedule(12) {
                let tail = sim.trace.len().saturating_sub(60);
                panic!(
                    "seed {seed}, {n} nodes: {e}\n{}",
                    sim.trace[tail..].join("\n")
                );
            }
        }
    }

    #[test]
    fn random_schedules_of_three_nodes_never_have_two_active() {
        run_many(3, schedules(), settings());
    }

    #[test]
    fn random_schedules_of_five_nodes_never_have_two_active() {
        run_many(5, schedules() / 4, settings());
    }

    #[test]
    fn random_schedules_with_priorities_and_failback_never_have_two_active() {
        for seed in 0..schedules() / 4 {
            let s = Settings {
                failback_after: 2_000,
                ..settings()
            };
            let mut sim = Sim::new(3, seed, s, &[3, 2, 1]);
            // Only safety here: a failback is a planned change of leader.
            for _ in 0..10 {
                sim.fault();
                let until = sim.now() + 100 + sim.rng.below(3_000);
                if let Err(e) = sim.run_until(until) {
                    panic!("seed {seed}: {e}\n{}", sim.trace.join("\n"));
                }
            }
        }
    }

    fn stable_leader(sim: &mut Sim) -> NodeId {
        let t = sim.now() + HEAL_BOUND;
        sim.run_until(t).unwrap();
        let a = sim.active();
        assert_eq!(a.len(), 1, "{}", sim.trace.join("\n"));
        a[0]
    }

    #[test]
    fn the_highest_priority_node_usually_wins_the_first_election() {
        // Rank windows are a quarter election timeout apart; clocks that
        // run up to 10% apart can still overlap them now and then.
        let wins = (0..50)
            .filter(|&seed| stable_leader(&mut Sim::new(3, seed, settings(), &[1, 3, 2])) == 1)
            .count();
        assert!(wins >= 45, "{wins} of 50");
    }

    #[test]
    fn a_crashed_leader_is_replaced_within_the_bound() {
        for seed in 0..50 {
            let mut sim = Sim::new(3, seed, settings(), &[]);
            let old = stable_leader(&mut sim);
            let t0 = sim.now();
            sim.crash_node(old);
            let t = t0 + 2 * settings().election_timeout + 500;
            sim.run_until(t).unwrap();
            let a = sim.active();
            assert!(a.len() == 1 && a[0] != old, "seed {seed}: {a:?}");
            let (at, _) = *sim.leader_changes.last().unwrap();
            assert!(
                at - t0 <= 2_500,
                "seed {seed}: took {} ms\n{}",
                at - t0,
                sim.trace.join("\n")
            );
        }
    }

    #[test]
    fn an_isolated_leader_lets_go_before_the_majority_takes_over() {
        for seed in 0..50 {
            let mut sim = Sim::new(3, seed, settings(), &[]);
            let old = stable_leader(&mut sim);
            sim.isolate(old);
            let t = sim.now() + HEAL_BOUND;
            sim.run_until(t).unwrap();
            let a = sim.active();
            assert!(a.len() == 1 && a[0] != old, "seed {seed}: {a:?}");
            assert_ne!(sim.node(old).unwrap().role(), Standing::Leader);
            // Healing brings the old leader back as a follower: no change.
            let changes = sim.leader_changes.len();
            sim.heal();
            let t = sim.now() + 5_000;
            sim.run_until(t).unwrap();
            assert_eq!(sim.leader_changes.len(), changes, "seed {seed}");
        }
    }

    #[test]
    fn a_leader_deaf_to_heartbeat_replies_is_replaced_and_never_leads_again() {
        let mut took = Vec::new();
        for seed in 0..schedules() / 10 {
            let mut sim = Sim::new(3, seed, settings(), &[]);
            let old = stable_leader(&mut sim);
            let t0 = sim.now();
            sim.deafen(old);
            let changes = sim.leader_changes.len();
            let t = t0 + 20_000;
            sim.run_until(t).unwrap();
            let moved: Vec<_> = sim.leader_changes[changes..].to_vec();
            let trace = || sim.trace[sim.trace.len().saturating_sub(40)..].join("\n");
            // One move, to another node, within 2.5 s; then it stays.
            assert_eq!(moved.len(), 1, "seed {seed}: {moved:?}\n{}", trace());
            let (at, to) = moved[0];
            assert!(to.is_some_and(|n| n != old), "seed {seed}: {moved:?}");
            assert!(
                at - t0 <= 2_500,
                "seed {seed}: took {} ms\n{}",
                at - t0,
                trace()
            );
            assert_ne!(
                sim.node(old).unwrap().role(),
                Standing::Leader,
                "seed {seed}"
            );
            took.push(at - t0);
        }
        took.sort_unstable();
        eprintln!(
            "deaf leader replaced after (simulated ms): median {}, max {}",
            took[took.len() / 2],
            took[took.len() - 1]
        );
    }

    #[test]
    fn links_left_stale_by_restarts_cost_no_safety_and_heal() {
        for seed in 0..schedules() / 4 {
            let mut sim = Sim::new(3, seed * 31 + 7, settings(), &[]);
            let mut leader = stable_leader(&mut sim);
            for _ in 0..4 {
                // Followers restart first, then the leader is killed.
                for i in (0..3).filter(|&i| i != leader) {
                    sim.crash_node(i);
                    sim.heal();
                    let t = sim.now() + 1_200;
                    if let Err(e) = sim.run_until(t) {
                        panic!("seed {seed}: {e}\n{}", sim.trace.join("\n"));
                    }
                }
                sim.crash_node(leader);
                let t = sim.now() + HEAL_BOUND;
                if let Err(e) = sim.run_until(t) {
                    panic!("seed {seed}: {e}\n{}", sim.trace.join("\n"));
                }
                let a = sim.active();
                assert!(
                    a.len() == 1 && a[0] != leader,
                    "seed {seed}: {a:?}\n{}",
                    sim.trace.join("\n")
                );
                leader = a[0];
                sim.heal();
            }
        }
    }

    #[test]
    fn a_switchover_moves_the_address_and_nobody_moves_it_back() {
        for seed in 0..50 {
            let s = Settings {
                failback_after: 1_000,
                ..settings()
            };
            let mut sim = Sim::new(3, seed, s, &[3, 2, 1]);
            assert_eq!(stable_leader(&mut sim), 0);
            // Asked on a follower: forwarded to the leader.
            sim.switchover(1, "n2");
            let t = sim.now() + 2_000;
            sim.run_until(t).unwrap();
            assert_eq!(
                sim.active(),
                vec![2],
                "seed {seed}\n{}",
                sim.trace.join("\n")
            );
            let changes = sim.leader_changes.len();
            let t = sim.now() + 10_000;
            sim.run_until(t).unwrap();
            assert_eq!(sim.leader_changes.len(), changes, "seed {seed}");
        }
    }

    #[test]
    fn leadership_fails_back_to_the_highest_priority_once_it_is_stable() {
        let s = Settings {
            failback_after: 2_000,
            ..settings()
        };
        let mut sim = Sim::new(3, 11, s, &[3, 2, 1]);
        assert_eq!(stable_leader(&mut sim), 0);
        sim.crash_node(0);
        assert_eq!(stable_leader(&mut sim), 1);
        sim.heal();
        let t = sim.now() + 8_000;
        sim.run_until(t).unwrap();
        assert_eq!(sim.active(), vec![0], "{}", sim.trace.join("\n"));
    }

    #[test]
    fn an_unhealthy_leader_hands_over_to_a_healthy_peer() {
        let mut sim = Sim::new(3, 5, settings(), &[3, 2, 1]);
        assert_eq!(stable_leader(&mut sim), 0);
        sim.set_healthy(0, false);
        let t = sim.now() + 3_000;
        sim.run_until(t).unwrap();
        assert_eq!(sim.active(), vec![1], "{}", sim.trace.join("\n"));
    }
}
