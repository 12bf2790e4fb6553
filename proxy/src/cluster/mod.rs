//! The node table: every configured backend with its role and status, and
//! the tasks that keep it true.
//!
//! `cluster` is the only writer of node state. It publishes immutable
//! snapshots through an `ArcSwap`; sessions, the router and the admin
//! surface read the current snapshot without locking.
//!
//! - `health`: one task per node probes it (`pg_is_in_recovery()`), retries,
//!   and reports a node that failed all its retries to the manager;
//! - `failover`: pure decisions over a snapshot (detach, promote whom, which
//!   of two primaries is false);
//! - `manager`: the one task that changes attachment and roles — it runs the
//!   decisions, the operator's requests (attach, detach, promote,
//!   switchover, recover) one at a time, and persists the outcome;
//! - `executor`, `command`: the I/O those actions need (SQL on the nodes,
//!   shell commands, `pg_ctl` and friends as the data directory's owner);
//! - `switchover`, `recovery`: the planned switchover and online recovery;
//! - `trigger`: failures sessions see (a broken backend connection, an admin
//!   shutdown) that make the manager re-probe a node at once, and
//!   `auto_failback` of standbys that come back;
//! - `persist`: the state file that keeps fenced nodes fenced across restarts;
//! - `consensus`: in a watchdog cluster, which backend failures a quorum of
//!   tidepool nodes sees, and the leader's table the others mirror.

mod command;
pub mod consensus;
mod control;
pub mod discovery;
mod executor;
pub mod failover;
mod health;
mod instances;
mod lag;
mod manager;
mod operator;
pub mod persist;
mod recovery;
mod switchover;
pub mod topology;
pub mod transition;
mod trigger;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::HealthCheckConfig;
use crate::config::{BackendConfig, BackendFlag};
use crate::credentials::{Credentials, Login};
use crate::tls::BackendTls;

pub use control::{Action, Control, ControlError, Request};
pub use health::run_checks;
pub use lag::{Lag, Lags};
pub use manager::{ManagerHandles, run_manager};
pub use trigger::{Fault, report_fault};

/// What the node is, as PostgreSQL reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Standby,
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        }
    }
}

/// Whether tidepool uses the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Attached and answering.
    Up,
    /// Attached, not yet checked, not answering (retries under way), or held
    /// back during a switchover.
    Waiting,
    /// Detached: never routed to until attached again.
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Waiting => "waiting",
            Status::Down => "down",
        }
    }
}

/// One node, as of one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: usize,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub weight: f64,
    pub flag: BackendFlag,
    pub status: Status,
    /// Whether the last health check reached the server.
    pub reachable: bool,
    pub role: Role,
    #[serde(with = "humantime_serde")]
    pub last_status_change: SystemTime,
    pub last_error: Option<String>,
    /// How the node came to be in the table.
    pub source: Source,
    /// Held back from routing (switchover, recovery): checks do not bring
    /// it up.
    pub held: bool,
    /// Why the node is detached, while it is (status down).
    pub detached: Option<Detached>,
}

/// Why a node is detached, and so what may attach it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetachCause {
    /// Its health checks failed: `auto_failback` attaches it again once it
    /// answers as a standby streaming from the primary.
    HealthCheck,
    /// An operator detached it: only an operator attaches it.
    Operator,
    /// The old primary of a failover or switchover, or a second primary:
    /// fenced until an operator or online recovery brings it back.
    Fenced,
    /// A managed cluster's instance that left its topology: attached again
    /// when it is back.
    LeftTopology,
    /// The watchdog leader's table says so: attached again when it stops
    /// saying so.
    Leader,
    /// The state file could not be read, so whether the node was fenced is
    /// not known: only an operator attaches it.
    Unverified,
}

impl DetachCause {
    pub fn as_str(self) -> &'static str {
        match self {
            DetachCause::HealthCheck => "health_check",
            DetachCause::Operator => "operator",
            DetachCause::Fenced => "fenced",
            DetachCause::LeftTopology => "left_topology",
            DetachCause::Leader => "leader",
            DetachCause::Unverified => "unverified",
        }
    }
}

/// A detached node's cause and the message shown for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detached {
    pub cause: DetachCause,
    pub message: String,
}

impl Detached {
    pub fn new(cause: DetachCause, message: impl Into<String>) -> Detached {
        Detached {
            cause,
            message: message.into(),
        }
    }
}

/// How a node came to be in the table: configured, or an instance of a
/// `[[clusters]]` entry found by reading its topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Source {
    #[serde(rename = "config")]
    Config,
    #[serde(rename = "aurora_replica_status()")]
    AuroraTopology,
    #[serde(rename = "rds_tools.show_topology()")]
    MultiAzTopology,
    #[serde(rename = "DescribeDBClusters")]
    DescribeDbClusters,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::AuroraTopology => "aurora_replica_status()",
            Source::MultiAzTopology => "rds_tools.show_topology()",
            Source::DescribeDbClusters => "DescribeDBClusters",
        }
    }

    /// An instance of a managed cluster: its role comes from the cluster's
    /// topology, confirmed on its own connection (`cluster::discovery`).
    pub fn discovered(self) -> bool {
        self != Source::Config
    }
}

/// An immutable view of every node.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    /// Bumped on every change, so readers can tell snapshots apart.
    pub generation: u64,
}

impl Snapshot {
    /// The node that takes writes: an attached, answering `always_primary`
    /// node, else the attached node that answers it is not in recovery.
    /// `None` while no primary answers (a failover or switchover is under
    /// way): sessions wait for one.
    pub fn primary(&self) -> Option<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.status == Status::Up)
            .find(|n| n.flag == BackendFlag::AlwaysPrimary)
            .or_else(|| {
                self.nodes
                    .iter()
                    .find(|n| n.status == Status::Up && n.role == Role::Primary)
            })
    }

    pub fn node(&self, id: usize) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// The role tidepool acts on for node `id` (Pgpool's `role`, beside
    /// `pg_role`: what PostgreSQL reported): a node that reports itself
    /// primary but is not the one writes go to (two primaries after a
    /// split) is unknown. `primary` is [`Snapshot::primary`]'s id, passed
    /// in so a view of every node finds it once.
    pub fn effective_role(id: usize, reported: Role, primary: Option<usize>) -> Role {
        if Some(id) == primary {
            Role::Primary
        } else if reported == Role::Primary {
            Role::Unknown
        } else {
            reported
        }
    }

    /// The node called `key`, or with index `key`.
    pub fn find(&self, key: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == key)
            .or_else(|| key.parse::<usize>().ok().and_then(|i| self.nodes.get(i)))
    }
}

/// Per-node counters and details that change outside snapshots.
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub selects: AtomicU64,
    pub queries: AtomicU64,
    pub health_checks: AtomicU64,
    pub health_check_failures: AtomicU64,
    /// Checks that were retries of a failed one.
    pub health_check_retries: AtomicU64,
    /// Sum of check durations, for the average.
    pub health_check_micros: AtomicU64,
    /// Unix milliseconds of the last check, success and failure (0: never).
    pub last_health_check_ms: AtomicU64,
    pub last_health_check_ok_ms: AtomicU64,
    pub last_health_check_failed_ms: AtomicU64,
    /// Times the node was detached (by tidepool or an operator).
    pub detaches: AtomicU64,
    /// A session's report of a broken connection waits in the manager's
    /// queue: further reports add nothing.
    pub fault_reported: AtomicBool,
    /// A request to re-attach the node (auto_failback) waits in the
    /// manager's queue.
    pub failback_requested: AtomicBool,
    /// Unix milliseconds of the node's last automatic failback (0: never).
    pub last_failback_ms: AtomicU64,
    /// Whether the node's connections are TLS, as the health check's last
    /// connection found: 0 not known yet, 1 plaintext, 2 TLS.
    pub ssl: std::sync::atomic::AtomicU8,
    /// The database system the node reported to the health check's last
    /// connection (not known: never reached, or not allowed to ask).
    pub system: Mutex<Option<persist::SystemId>>,
}

impl NodeCounters {
    /// Whether the node's connections are TLS (`None`: not known yet).
    pub fn ssl(&self) -> Option<bool> {
        match self.ssl.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    pub fn set_ssl(&self, tls: bool) {
        self.ssl.store(if tls { 2 } else { 1 }, Ordering::Relaxed);
    }

    pub fn system(&self) -> Option<persist::SystemId> {
        *self.system.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_system(&self, system: persist::SystemId) {
        *self.system.lock().unwrap_or_else(|e| e.into_inner()) = Some(system);
    }

    /// Records one health check that took `took`.
    fn record_check(&self, ok: bool, retry: bool, took: Duration) {
        let now = unix_ms(SystemTime::now());
        self.health_checks.fetch_add(1, Ordering::Relaxed);
        if retry {
            self.health_check_retries.fetch_add(1, Ordering::Relaxed);
        }
        self.health_check_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.last_health_check_ms.store(now, Ordering::Relaxed);
        if ok {
            self.last_health_check_ok_ms.store(now, Ordering::Relaxed);
        } else {
            self.health_check_failures.fetch_add(1, Ordering::Relaxed);
            self.last_health_check_failed_ms
                .store(now, Ordering::Relaxed);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters of the node table's own changes.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    pub failovers: AtomicU64,
    pub switchovers: AtomicU64,
    pub recoveries: AtomicU64,
    pub attaches: AtomicU64,
    pub detaches: AtomicU64,
    pub false_primaries: AtomicU64,
    pub failed_actions: AtomicU64,
    /// Standbys re-attached by `auto_failback`.
    pub failbacks: AtomicU64,
    /// Session reports of a broken backend connection or a shutdown that
    /// the manager re-probed, and those the probe confirmed.
    pub backend_faults: AtomicU64,
    pub backend_faults_confirmed: AtomicU64,
    /// `[[clusters]]`: topology answers read, and asks that failed.
    pub topology_reads: AtomicU64,
    pub topology_errors: AtomicU64,
    /// Times the cluster had no confirmed writer (lost, or answering
    /// read-only), and times another instance was confirmed writer.
    pub writer_losses: AtomicU64,
    pub writer_changes: AtomicU64,
    /// Instances that joined the node table, and that left the topology.
    pub instances_joined: AtomicU64,
    pub instances_left: AtomicU64,
}

/// Owner of the node table.
pub struct Cluster {
    current: Arc<ArcSwap<Snapshot>>,
    /// The primary as the newest snapshot names it (see [`PrimaryWord`]):
    /// what a statement asks of the node table, in one atomic read.
    primary: AtomicU64,
    changed: watch::Sender<u64>,
    counters: Arc<ArcSwap<Vec<Arc<NodeCounters>>>>,
    backends: ArcSwap<Vec<BackendConfig>>,
    /// Each node's TLS settings, compiled from its configuration.
    tls: ArcSwap<Vec<Arc<BackendTls>>>,
    /// Where backend passwords come from (secrets, IAM tokens).
    credentials: Arc<Credentials>,
    pub stats: ClusterCounters,
    /// A session asks the topology watcher to check a managed cluster's
    /// writer now (it answered a write read-only) ...
    check_writer: tokio::sync::Notify,
    /// ... and the watcher counts the rounds it asked it (`instances.rs`).
    writer_checks: watch::Sender<u64>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("generation", &self.current.load().generation)
            .finish_non_exhaustive()
    }
}

fn compile_tls(backends: &[BackendConfig]) -> Vec<Arc<BackendTls>> {
    backends
        .iter()
        .map(|b| Arc::new(BackendTls::load_or_refusing(&b.tls(&Default::default()))))
        .collect()
}

fn fresh_nodes(backends: &[BackendConfig]) -> Vec<Node> {
    let now = SystemTime::now();
    backends
        .iter()
        .enumerate()
        .map(|(id, b)| Node {
            id,
            name: b.name.clone(),
            host: b.host.clone(),
            port: b.port,
            weight: b.weight,
            flag: b.flag,
            status: Status::Waiting,
            reachable: false,
            role: if b.flag == BackendFlag::AlwaysPrimary {
                Role::Primary
            } else {
                Role::Unknown
            },
            last_status_change: now,
            last_error: None,
            source: Source::Config,
            held: false,
            detached: None,
        })
        .collect()
}

/// A snapshot's primary packed in one word: its generation (the high 47
/// bits, so that a newer snapshot's word is the larger), whether the
/// primary is a managed cluster's instance (bit 16), and its id + 1 (the
/// low 16 bits; 0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PrimaryWord(u64);

impl PrimaryWord {
    fn of(s: &Snapshot) -> PrimaryWord {
        let (id, discovered) = s
            .primary()
            .map_or((0, false), |n| (n.id as u64 + 1, n.source.discovered()));
        PrimaryWord((s.generation << 17) | (u64::from(discovered) << 16) | (id & 0xffff))
    }

    fn id(self) -> Option<usize> {
        match self.0 & 0xffff {
            0 => None,
            n => Some(n as usize - 1),
        }
    }

    fn discovered(self) -> bool {
        self.0 & (1 << 16) != 0
    }
}

/// One reader's cached view of the cluster's current snapshot and node
/// counters (a session routing reads): each read compares one pointer
/// with the current one and takes the new value only when it changed,
/// where a read of the shared value registers and releases a reference.
/// What it returns is always the current value; the value it last saw is
/// kept until it reads again.
pub struct View {
    snapshot: arc_swap::Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
    counters: arc_swap::Cache<Arc<ArcSwap<NodeCounterList>>, Arc<NodeCounterList>>,
}

/// Each node's counters, by node id.
type NodeCounterList = Vec<Arc<NodeCounters>>;

impl View {
    /// The current snapshot.
    pub fn snapshot(&mut self) -> &Arc<Snapshot> {
        self.snapshot.load()
    }

    /// Runs `f` on node `node`'s counters, if there is such a node (as
    /// [`Cluster::count`]).
    pub fn count<R>(&mut self, node: usize, f: impl FnOnce(&NodeCounters) -> R) -> Option<R> {
        self.counters.load().get(node).map(|c| f(c))
    }
}

impl Cluster {
    pub fn new(backends: &[BackendConfig]) -> Arc<Cluster> {
        let counters = backends.iter().map(|_| Arc::default()).collect();
        let first = Snapshot {
            nodes: fresh_nodes(backends),
            generation: 0,
        };
        Arc::new(Cluster {
            primary: AtomicU64::new(PrimaryWord::of(&first).0),
            current: Arc::new(ArcSwap::from_pointee(first)),
            changed: watch::channel(0).0,
            counters: Arc::new(ArcSwap::from_pointee(counters)),
            backends: ArcSwap::from_pointee(backends.to_vec()),
            tls: ArcSwap::from_pointee(compile_tls(backends)),
            credentials: Arc::default(),
            stats: ClusterCounters::default(),
            check_writer: tokio::sync::Notify::new(),
            writer_checks: watch::channel(0).0,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A reader's own view of the snapshot and the nodes' counters (see
    /// [`View`]).
    pub fn view(&self) -> View {
        View {
            snapshot: arc_swap::Cache::new(self.current.clone()),
            counters: arc_swap::Cache::new(self.counters.clone()),
        }
    }

    /// Notified with the generation of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The id of the node that takes writes now (see [`Snapshot::primary`]).
    pub fn primary_id(&self) -> Option<usize> {
        self.primary_word().id()
    }

    fn primary_word(&self) -> PrimaryWord {
        PrimaryWord(self.primary.load(Ordering::Acquire))
    }

    /// Whether work on node `id` is guarded against a read-only answer
    /// (see `session::refusal`): the node is not the primary, or it is a
    /// managed cluster's instance (whose writer AWS may move). One atomic
    /// read: the per-unit path.
    pub fn guarded(&self, id: usize) -> bool {
        let p = self.primary_word();
        p.id() != Some(id) || p.discovered()
    }

    /// Runs `f` on node `node`'s counters, if there is such a node, without
    /// taking a reference to them (unlike [`Cluster::counters`]): this is
    /// the per-query path.
    pub fn count<R>(&self, node: usize, f: impl FnOnce(&NodeCounters) -> R) -> Option<R> {
        self.counters.load().get(node).map(|c| f(c))
    }

    pub fn counters(&self, node: usize) -> Option<Arc<NodeCounters>> {
        self.counters.load().get(node).cloned()
    }

    /// The configuration of node `id`.
    pub fn backend(&self, id: usize) -> Option<BackendConfig> {
        self.backends.load().get(id).cloned()
    }

    /// How to reach node `id` over TLS (`prefer` for an id not configured).
    pub fn tls(&self, id: usize) -> Arc<BackendTls> {
        self.tls.load().get(id).cloned().unwrap_or_default()
    }

    /// Where backend passwords come from.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// How tidepool's own connections to node `id` log in as `hc`'s user.
    pub fn check_login(&self, id: usize, hc: &HealthCheckConfig) -> Login {
        let node = self
            .backend(id)
            .map(|b| b.tls(&Default::default()))
            .unwrap_or_default();
        Login::for_checks(hc.password.as_deref(), hc.password_secret.as_deref(), &node)
    }

    /// The password for tidepool's own connections to node `id` at
    /// `host:port` as `hc`'s user (configured, from a secret, or a token).
    pub async fn check_password(
        &self,
        id: usize,
        host: &str,
        port: u16,
        hc: &HealthCheckConfig,
    ) -> Result<Option<String>, String> {
        let login = self.check_login(id, hc);
        self.credentials
            .password(&login, host, port, &hc.user)
            .await
    }

    /// Reads the nodes' certificate files again (after a reload: a
    /// rotated CA bundle or client certificate is used by new connections).
    pub fn reload_tls(&self) {
        self.tls.store(Arc::new(compile_tls(&self.backends.load())));
    }

    /// Publishes a new snapshot made by `f` from the current one.
    fn update(&self, f: impl Fn(&mut Snapshot)) {
        let mut generation = 0;
        let mut word = PrimaryWord(0);
        self.current.rcu(|cur| {
            let mut next = Snapshot::clone(cur);
            f(&mut next);
            next.generation = cur.generation + 1;
            generation = next.generation;
            // The last run is the snapshot stored.
            word = PrimaryWord::of(&next);
            next
        });
        // Two updates may race: the newer snapshot's word wins, whichever
        // is written last.
        self.primary.fetch_max(word.0, Ordering::AcqRel);
        let _ = self.changed.send(generation);
    }

    /// Applies `event` to node `id` inside the snapshot's atomic swap (the
    /// transition is pure: `transition.rs`); true when the node changed.
    fn apply(&self, id: usize, event: transition::Event) -> bool {
        let cur = self.snapshot();
        let Some(n) = cur.node(id) else { return false };
        let now = SystemTime::now();
        if !transition::changed(n, &transition::transition(n, &event, now)) {
            return false;
        }
        self.update(|s| {
            if let Some(n) = s.nodes.get_mut(id) {
                *n = transition::transition(n, &event, now);
            }
        });
        if let Some(a) = self.snapshot().node(id)
            && (a.status, a.role) != (n.status, n.role)
        {
            tracing::info!(node = %n.name, role = a.role.as_str(), status = a.status.as_str(), from_status = n.status.as_str(), "node state changed");
        }
        true
    }

    /// Records the outcome of one health check of `node`: reachability and
    /// role. A detached node stays down; a failing or held node waits.
    pub fn record_check(&self, node: usize, outcome: Result<Role, String>) {
        self.apply(node, transition::Event::Checked(outcome));
    }

    /// Detaches `node` (status down, never routed to) for `why`.
    pub fn detach(&self, node: usize, why: Detached) {
        let Some(c) = self.counters(node) else { return };
        c.detaches.fetch_add(1, Ordering::Relaxed);
        self.stats.detaches.fetch_add(1, Ordering::Relaxed);
        self.apply(node, transition::Event::Detach(why));
    }

    /// Attaches `node` again: it is routed to once its checks answer.
    pub fn attach(&self, node: usize) {
        if self.counters(node).is_none() {
            return;
        }
        self.stats.attaches.fetch_add(1, Ordering::Relaxed);
        self.apply(node, transition::Event::Attach);
    }

    /// Holds `node` back from routing (`true`) or releases it.
    pub fn hold(&self, node: usize, held: bool) {
        self.apply(node, transition::Event::Hold(held));
    }

    /// Whether `node` is held back from routing.
    pub fn held(&self, node: usize) -> bool {
        self.current.load().nodes.get(node).is_some_and(|n| n.held)
    }

    /// Sets the role tidepool knows `node` to have now (after promoting it).
    pub fn set_role(&self, node: usize, role: Role) {
        self.update(|s| {
            if let Some(n) = s.nodes.get_mut(node)
                && n.role != role
            {
                n.role = role;
                n.last_status_change = SystemTime::now();
            }
        });
    }

    /// Detached nodes and why, by name.
    pub fn detached(&self) -> HashMap<String, Detached> {
        let snap = self.snapshot();
        snap.nodes
            .iter()
            .filter(|n| n.status == Status::Down)
            .map(|n| {
                let why = n
                    .detached
                    .clone()
                    .unwrap_or_else(|| Detached::new(DetachCause::Operator, ""));
                (n.name.clone(), why)
            })
            .collect()
    }

    /// Replaces the node list after a configuration reload, keeping what is
    /// known of nodes that stay (matched by name).
    pub fn reconfigure(&self, backends: &[BackendConfig]) {
        let cur = self.snapshot();
        let fresh = fresh_nodes(backends);
        let old_counters = self.counters.load_full();
        let mut counters = Vec::new();
        let nodes: Vec<Node> = fresh
            .iter()
            .map(|f| {
                let old = cur.nodes.iter().find(|o| o.name == f.name);
                counters.push(
                    old.and_then(|o| old_counters.get(o.id).cloned())
                        .unwrap_or_default(),
                );
                match old {
                    Some(o) if o.host == f.host && o.port == f.port => Node {
                        weight: f.weight,
                        flag: f.flag,
                        id: f.id,
                        ..o.clone()
                    },
                    _ => f.clone(),
                }
            })
            .collect();
        self.counters.store(Arc::new(counters));
        self.tls.store(Arc::new(compile_tls(backends)));
        self.backends.store(Arc::new(backends.to_vec()));
        self.update(|s| s.nodes = nodes.clone());
    }
}

#[cfg(test)]
mod tests;
