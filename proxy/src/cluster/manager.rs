//! The manager: the one task that changes attachment and roles. It takes
//! health-check failures and operator requests from one queue and handles
//! them one at a time, so two actions never interleave; it watches the
//! node table for two primaries; it persists every change.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use super::{
    Cluster, DetachCause, Detached, Role, Status,
    command::{self, PgTools, Vars},
    control::{Control, ControlError, Request},
    executor::{self, ActionError, NodeAddress, NodeConn},
    failover::{self, OnFailure, Position},
    persist,
};
use crate::{
    config::{self, HealthCheckConfig},
    pool::Pools,
};

/// How often a watchdog member looks at the backend views.
const CONSENSUS_TICK: Duration = Duration::from_millis(100);

/// What the manager works with, and nothing else.
#[derive(Clone)]
pub struct ManagerHandles {
    pub cluster: Arc<Cluster>,
    /// The configuration in force, read again at each decision.
    pub config: Arc<dyn config::Source>,
    /// The configuration file, beside which the state file lives unless
    /// `server.state_dir` says otherwise.
    pub config_path: Option<PathBuf>,
    /// The pools, whose idle connections to a node going away it closes.
    pub pools: Arc<Pools>,
    /// Its queue.
    pub control: Control,
    /// In a watchdog cluster, the members' views of the backends.
    pub consensus: Option<Arc<super::consensus::Consensus>>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Restores the persisted state into the node table (at once, before any
/// health check can bring a fenced node up) and returns the manager's task.
pub fn run_manager(shared: ManagerHandles) -> impl std::future::Future<Output = ()> + Send {
    let cfg = shared.config.current();
    let state_path = persist::path(
        cfg.server.state_dir.as_deref(),
        shared.config_path.as_deref(),
    );
    let mut last_primary = None;
    let mut fences = std::collections::BTreeMap::new();
    match persist::load(&state_path) {
        Ok(state) => {
            let snap = shared.cluster.snapshot();
            for (name, why) in state.detached_nodes() {
                if let Some(n) = snap.nodes.iter().find(|n| n.name == name) {
                    tracing::info!(node = %name, reason = %why.message, cause = why.cause.as_str(), state = %state_path.display(), "node stays detached (persisted state)");
                    shared.cluster.detach(n.id, why);
                }
            }
            last_primary = state.primary;
            fences = state.systems;
        }
        Err(e) => {
            // The file may have held fences: attaching anything could route
            // writes to an old primary. Nothing is attached until an
            // operator says so.
            let reason = format!(
                "{e}: tidepool cannot tell which nodes were fenced, so none is attached until an operator attaches it (tidepool ctl attach NODE) or repairs the file"
            );
            tracing::error!(state = %state_path.display(), "{reason}");
            let snap = shared.cluster.snapshot();
            for n in &snap.nodes {
                shared
                    .cluster
                    .detach(n.id, Detached::new(DetachCause::Unverified, &reason));
            }
        }
    }
    // A manager that stopped mid-request may have left a node's request
    // marked as queued: this one takes requests for every node again.
    for n in &shared.cluster.snapshot().nodes {
        if let Some(c) = shared.cluster.counters(n.id) {
            c.fault_reported.store(false, Ordering::Relaxed);
            c.failback_requested.store(false, Ordering::Relaxed);
        }
    }
    let rx = shared.control.receiver();
    let mut m = Manager {
        shared,
        state_path,
        last_primary,
        fences,
        seen_primaries: Vec::new(),
        persist_error: None,
    };
    async move {
        let Ok(mut rx) = rx.try_lock_owned() else {
            tracing::error!("failover manager started twice");
            return;
        };
        let mut changes = m.cluster().subscribe();
        let mut shutdown = m.shared.shutdown.clone();
        // In a watchdog cluster, backend decisions follow the views the
        // heartbeats bring: look at them a few times a heartbeat round.
        let mut consensus = tokio::time::interval(CONSENSUS_TICK);
        consensus.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = rx.recv() => match req {
                    Some(r) => m.handle(r).await,
                    None => return,
                },
                r = changes.changed() => {
                    if r.is_err() { return; }
                    m.on_change().await;
                }
                _ = consensus.tick(), if m.shared.consensus.is_some() => m.decide().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The manager's state between requests.
pub(super) struct Manager {
    pub(super) shared: ManagerHandles,
    state_path: PathBuf,
    last_primary: Option<String>,
    /// The database system each detached node was fenced on, by name.
    fences: std::collections::BTreeMap<String, persist::SystemId>,
    /// Primaries seen at the last split check, so a split is examined once.
    seen_primaries: Vec<usize>,
    /// Why the last write of the state file failed, until one succeeds.
    persist_error: Option<String>,
}

impl Manager {
    pub(super) fn cluster(&self) -> &Arc<Cluster> {
        &self.shared.cluster
    }

    pub(super) fn config(&self) -> config::Current {
        self.shared.config.current()
    }

    pub(super) fn hc(&self) -> HealthCheckConfig {
        self.config().health_check.clone()
    }

    pub(super) fn tools(&self) -> PgTools {
        let cfg = self.config();
        PgTools::new(
            cfg.failover.pg_bin_dir.as_deref(),
            cfg.failover.command_timeout,
        )
    }

    pub(super) fn target(&self, id: usize) -> NodeAddress {
        let snap = self.cluster().snapshot();
        // A node a reload removed meanwhile: its SQL and commands fail to
        // connect (and say so) instead of taking the manager down.
        let (name, host, port) = snap
            .node(id)
            .map(|n| (n.name.clone(), n.host.clone(), n.port))
            .unwrap_or_else(|| {
                (
                    format!("node {id} (no longer configured)"),
                    String::new(),
                    0,
                )
            });
        NodeAddress {
            name,
            host,
            port,
            tls: self.cluster().tls(id),
            cluster: self.cluster().clone(),
            id,
        }
    }

    pub(super) async fn connect(&self, id: usize) -> Result<NodeConn, ActionError> {
        executor::connect(&self.target(id), &self.hc()).await
    }

    /// Writes the persisted state; a failure is logged (the node table in
    /// memory stays right).
    pub(super) fn persist(&mut self) {
        if let Some(p) = self.cluster().snapshot().primary() {
            self.last_primary = Some(p.name.clone());
        }
        let detached: std::collections::BTreeMap<String, Detached> =
            self.cluster().detached().into_iter().collect();
        // A fence keeps the system it was taken on; a new one takes the
        // system the node was last seen running.
        let snap = self.cluster().snapshot();
        self.fences = detached
            .keys()
            .filter_map(|name| {
                let known = self.fences.get(name).copied().or_else(|| {
                    snap.nodes
                        .iter()
                        .find(|n| &n.name == name)
                        .and_then(|n| self.cluster().counters(n.id))
                        .and_then(|c| c.system())
                });
                known.map(|s| (name.clone(), s))
            })
            .collect();
        let state = persist::State {
            causes: detached.iter().map(|(n, d)| (n.clone(), d.cause)).collect(),
            detached: detached.into_iter().map(|(n, d)| (n, d.message)).collect(),
            primary: self.last_primary.clone(),
            systems: self.fences.clone(),
        };
        match persist::save(&self.state_path, &state) {
            Ok(()) => self.persist_error = None,
            Err(e) => {
                tracing::error!(error = %e, "cannot persist the node table's state");
                self.persist_error = Some(e.to_string());
            }
        }
    }

    /// Detaches `id` and closes its idle pooled connections.
    pub(super) fn detach(&mut self, id: usize, why: Detached) {
        tracing::warn!(node = %self.target(id).name, reason = %why.message, cause = why.cause.as_str(), "detaching node");
        self.cluster().detach(id, why);
        self.drain(id);
        self.persist();
    }

    pub(super) fn drain(&self, id: usize) {
        self.shared.pools.for_each(|p| {
            if p.key.node == id {
                p.drain_idle();
            }
        });
    }

    /// Placeholder values for a command about `node` (and the primaries).
    pub(super) fn vars(&self, node: usize, new: Option<usize>, old: Option<usize>) -> Vars {
        let cfg = self.config();
        let dir = |id: usize| cfg.backends.get(id).and_then(|b| b.data_directory.clone());
        let t = |id: usize| self.target(id);
        Vars {
            node_id: Some(node),
            node_host: Some(t(node).host),
            node_port: Some(t(node).port),
            node_dir: dir(node),
            new_id: new,
            new_host: new.map(|i| t(i).host),
            new_port: new.map(|i| t(i).port),
            new_dir: new.and_then(dir),
            old_main_id: old,
            old_id: old,
            old_host: old.map(|i| t(i).host),
            old_port: old.map(|i| t(i).port),
        }
    }

    async fn handle(&mut self, req: Request) {
        // Tests make the manager fail here (debug builds, FAILPOINTS).
        fail::fail_point!("failover-manager-request");
        match req {
            Request::NodeFailed { node, error } => self.on_failure(node, error).await,
            Request::BackendFault { node, fault } => {
                if let Some(error) = super::trigger::confirm(self, node, fault).await {
                    self.on_failure(node, error).await;
                }
            }
            Request::Failback { node } => super::trigger::failback(self, node).await,
            Request::Action {
                node,
                action,
                reply,
            } => {
                let mut r = self.action(&node, action).await;
                // A change a restart would forget (a fence above all) is
                // not a success: the operator must know.
                if r.is_ok()
                    && let Some(e) = &self.persist_error
                {
                    r = Err(ControlError::Failed(ActionError::Refused(format!(
                        "done in memory, but not persisted ({e}): a restart would undo it; fix the state directory"
                    ))));
                }
                if let Err(e) = &r {
                    self.cluster()
                        .stats
                        .failed_actions
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%node, action = action.as_str(), error = %e, "request failed");
                }
                let _ = reply.send(r);
            }
        }
    }

    async fn on_failure(&mut self, node: usize, error: String) {
        let snap = self.cluster().snapshot();
        // The report may have waited behind a long action: a node that
        // answers again, or is held back on purpose, has not failed.
        let held = self.cluster().held(node);
        if held || snap.node(node).is_some_and(|n| n.reachable) {
            tracing::info!(node = %self.target(node).name, "failure report outdated; ignored");
            return;
        }
        if let Some(c) = self.shared.consensus.clone() {
            // A watchdog member only reports; the leader decides once a
            // quorum of members sees the failure.
            tracing::warn!(node = %self.target(node).name, %error, "backend failing; reported to the watchdog cluster");
            c.note_failing(&self.target(node).name);
            self.decide().await;
            return;
        }
        self.act_on_failure(node, error).await;
    }

    /// Detaches `node` or fails over from it, as its flag and the
    /// settings allow.
    pub(super) async fn act_on_failure(&mut self, node: usize, error: String) {
        let cfg = self.config();
        let snap = self.cluster().snapshot();
        match failover::on_failure(&snap, node, cfg.failover.auto_failover) {
            OnFailure::Nothing => {}
            OnFailure::KeepRetrying => {
                tracing::warn!(node = %self.target(node).name, %error, "node unreachable; its flag forbids detaching it, so checks go on");
            }
            OnFailure::Detach | OnFailure::DetachPrimary => {
                self.detach(
                    node,
                    Detached::new(
                        DetachCause::HealthCheck,
                        format!("{}: {error}", failover::HEALTH_CHECK_FAILED),
                    ),
                );
            }
            OnFailure::Failover => {
                let reason =
                    format!("primary failed its health checks ({error}); fenced by failover");
                let why = Detached::new(DetachCause::Fenced, reason);
                if let Err(e) = self.failover(node, why, None).await {
                    self.cluster()
                        .stats
                        .failed_actions
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "failover failed: no primary");
                }
            }
        }
    }

    /// Fences `old` and promotes `to` (or the standby with the most WAL),
    /// then points the other standbys at it. Returns the new primary.
    pub(super) async fn failover(
        &mut self,
        old: usize,
        why: Detached,
        to: Option<usize>,
    ) -> Result<usize, ControlError> {
        let started = std::time::Instant::now();
        self.cluster()
            .stats
            .failovers
            .fetch_add(1, Ordering::Relaxed);
        // Fence first, so that a crash of tidepool mid-way keeps it fenced.
        self.detach(old, why);
        let snap = self.cluster().snapshot();
        // Connect to every other node at once: the connections serve the
        // WAL positions, the promotion and the repointing.
        let mut conns = self.connect_all(&snap, old).await;
        let order = match to {
            Some(n) => vec![n],
            None => {
                let mut positions: Vec<Position> = Vec::new();
                for (id, c) in &conns {
                    match c.position(*id).await {
                        Ok(p) => positions.push(p),
                        Err(e) => tracing::warn!(error = %e, "no WAL position"),
                    }
                }
                tracing::info!(?positions, "failover candidates");
                failover::candidates(&snap, &positions, old)
            }
        };
        let mut last_err = None;
        let mut promoted = None;
        for id in order {
            match self.promote(id, old, conns.remove(&id)).await {
                Ok(()) => {
                    promoted = Some(id);
                    break;
                }
                Err(e) => {
                    tracing::error!(node = %self.target(id).name, error = %e, "promotion failed");
                    last_err = Some(e);
                }
            }
        }
        let Some(new) = promoted else {
            return Err(match last_err {
                Some(e) => e.into(),
                None => ControlError::Conflict(
                    "no standby can be promoted: none is attached, answering, allow_to_failover and in recovery".into(),
                ),
            });
        };
        self.cluster().set_role(new, Role::Primary);
        self.persist();
        tracing::warn!(old = %self.target(old).name, new = %self.target(new).name, elapsed_ms = started.elapsed().as_millis() as u64, "failover: new primary takes writes");
        self.follow_all(new, old).await;
        Ok(new)
    }

    /// Connections to every attached node but `except`, opened at once.
    async fn connect_all(
        &self,
        snap: &super::Snapshot,
        except: usize,
    ) -> std::collections::HashMap<usize, NodeConn> {
        let hc = self.hc();
        let mut set = tokio::task::JoinSet::new();
        for n in snap
            .nodes
            .iter()
            .filter(|n| n.id != except && n.status != Status::Down)
        {
            let (id, t, hc) = (n.id, self.target(n.id), hc.clone());
            set.spawn(async move { (id, executor::connect(&t, &hc).await) });
        }
        let mut conns = std::collections::HashMap::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((id, Ok(c))) => {
                    conns.insert(id, c);
                }
                Ok((_, Err(e))) => tracing::warn!(error = %e, "not a candidate"),
                Err(e) => tracing::warn!(error = %e, "connect task failed"),
            }
        }
        conns
    }

    /// Promotes `id` (built-in `pg_promote()` or `failover_command`),
    /// through `conn` when one is open.
    pub(super) async fn promote(
        &self,
        id: usize,
        old: usize,
        conn: Option<NodeConn>,
    ) -> Result<(), ActionError> {
        let cfg = self.config();
        let timeout = cfg.failover.promote_timeout;
        match &cfg.failover.failover_command {
            Some(cmd) => {
                let vars = self.vars(old, Some(id), Some(old));
                command::shell(&command::expand(cmd, &vars), cfg.failover.command_timeout).await?;
                self.wait_promoted(id, timeout).await
            }
            None => {
                tracing::info!(node = %self.target(id).name, "promoting");
                let conn = match conn {
                    Some(c) => c,
                    None => self.connect(id).await?,
                };
                conn.promote(timeout).await
            }
        }
    }

    async fn wait_promoted(&self, id: usize, timeout: Duration) -> Result<(), ActionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(c) = self.connect(id).await
                && let Ok(p) = c.position(id).await
                && !p.in_recovery
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ActionError::Timeout {
                    node: self.target(id).name,
                    what: "waiting for promotion by failover_command",
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Points every other standby at `new`; failures are logged (the
    /// standby stays attached and can be recovered).
    pub(super) async fn follow_all(&mut self, new: usize, old: usize) {
        let snap = self.cluster().snapshot();
        let followers = failover::followers(&snap, new, old);
        let results =
            futures_util::future::join_all(followers.iter().map(|&f| self.follow(f, new, old)))
                .await;
        for (f, r) in followers.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    tracing::info!(standby = %self.target(f).name, primary = %self.target(new).name, "standby follows the new primary")
                }
                Err(e) => {
                    tracing::error!(standby = %self.target(f).name, error = %e, "standby could not follow the new primary")
                }
            }
        }
    }

    async fn follow(&self, standby: usize, new: usize, old: usize) -> Result<(), ActionError> {
        let cfg = self.config();
        if let Some(cmd) = &cfg.failover.follow_primary_command {
            let vars = self.vars(standby, Some(new), Some(old));
            return command::shell(&command::expand(cmd, &vars), cfg.failover.command_timeout)
                .await
                .map(|_| ());
        }
        let (s, p) = tokio::join!(self.connect(standby), self.connect(new));
        let (s, p) = (s?, p?);
        let slot = match s.slot_name().await? {
            name if !name.is_empty() => name,
            _ => executor::slot_for(&self.target(standby).name),
        };
        p.ensure_slot(&slot).await?;
        s.repoint(&self.primary_conninfo(new)?, &slot).await
    }

    /// `primary_conninfo` for streaming from `primary`.
    pub(super) fn primary_conninfo(&self, primary: usize) -> Result<String, ActionError> {
        let cfg = self.config();
        let user = cfg.failover.replication_user.as_deref().ok_or_else(|| {
            ActionError::Refused(
                "set failover.replication_user (and replication_password) so standbys can stream from the new primary".into(),
            )
        })?;
        let t = self.target(primary);
        let tls = self
            .cluster()
            .backend(primary)
            .map(|b| b.tls(&cfg.backend_defaults))
            .unwrap_or_default();
        Ok(executor::conninfo(
            &t.host,
            t.port,
            user,
            cfg.failover.replication_password.as_deref(),
            &tls,
        ))
    }

    /// Detaches false primaries when two attached nodes answer as primary.
    async fn on_change(&mut self) {
        self.drop_fences_of_rebuilt_nodes();
        let snap = self.cluster().snapshot();
        let primaries = failover::primaries(&snap);
        if primaries == self.seen_primaries {
            return;
        }
        self.seen_primaries = primaries.clone();
        if primaries.len() < 2 || !self.config().failover.detach_false_primary {
            return;
        }
        let mut timelines = Vec::new();
        for &id in &primaries {
            match self.connect(id).await {
                Ok(c) => match c.timeline().await {
                    Ok(t) => timelines.push((id, t)),
                    Err(e) => tracing::warn!(error = %e, "cannot read timeline"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot read timeline"),
            }
        }
        tracing::warn!(?timelines, "several nodes answer as primary");
        for id in failover::false_primaries(&snap, &timelines) {
            let tli = timelines.iter().find(|(n, _)| *n == id).map(|t| t.1);
            let newest = timelines.iter().map(|t| t.1).max();
            self.cluster()
                .stats
                .false_primaries
                .fetch_add(1, Ordering::Relaxed);
            self.detach(
                id,
                Detached::new(
                    DetachCause::Fenced,
                    format!("false primary: on timeline {tli:?}, another primary is on {newest:?}"),
                ),
            );
        }
        self.seen_primaries = failover::primaries(&self.cluster().snapshot());
    }

    /// A fence belongs to the database system it was taken on: a detached
    /// node that now runs another one was made again from scratch (a new
    /// cluster on the same address) and is attached.
    fn drop_fences_of_rebuilt_nodes(&mut self) {
        if self.fences.is_empty() {
            return;
        }
        let snap = self.cluster().snapshot();
        let detached = snap
            .nodes
            .iter()
            .filter(|n| n.status == Status::Down)
            .map(|n| {
                let now = self.cluster().counters(n.id).and_then(|c| c.system());
                (n.name.as_str(), now)
            });
        let rebuilt = failover::rebuilt(detached, &self.fences);
        for name in &rebuilt {
            let Some(n) = snap.nodes.iter().find(|n| &n.name == name) else {
                continue;
            };
            let fenced = self.fences.remove(name);
            let now = self.cluster().counters(n.id).and_then(|c| c.system());
            tracing::warn!(
                node = %name,
                fenced_on = ?fenced.map(|s| s.system_identifier),
                now = ?now.map(|s| s.system_identifier),
                "the fenced node runs another database system now (made again from scratch): its fence no longer applies, attaching it"
            );
            self.cluster().attach(n.id);
        }
        if !rebuilt.is_empty() {
            self.persist();
        }
    }
}
