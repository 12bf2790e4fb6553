//! Triggers besides the health check's own verdict.
//!
//! - A backend connection that breaks — a session's, or the health check's
//!   kept one — (`failover_on_backend_error`) or that its server ends with
//!   FATAL 57P01 (`failover_on_backend_shutdown`) reports the node. The manager probes the node once, as a health check
//!   would, and only when that probe fails too does it handle the node as a
//!   failed health check (`Manager::on_failure`, the one path every failure
//!   takes). One broken connection proves little on its own: a
//!   `pg_terminate_backend()`, a restart already over, a connection the
//!   network dropped. The probe skips the health check's retries, which is
//!   what makes this trigger faster.
//! - `auto_failback`: a health check that finds a standby answering while it
//!   is detached after failing its checks asks the manager to re-attach it;
//!   the manager does once the node is in recovery and streams from the
//!   current primary. Nodes detached by the operator, fenced old primaries
//!   and false primaries stay detached.

use std::{fmt, sync::atomic::Ordering, time::SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use super::{
    DetachCause, Detached, Node, Status, control::Request, executor, manager::Manager, unix_ms,
};
use crate::config::{BackendFlag, FailoverConfig};

/// What went wrong with a backend connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Connecting, reading or writing failed.
    Error(String),
    /// The server ended the session with FATAL 57P01 (admin_shutdown).
    Shutdown(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Error(e) => write!(f, "backend connection failed: {e}"),
            Fault::Shutdown(m) => write!(f, "backend shutting down (57P01): {m}"),
        }
    }
}

/// Whether a session's `fault` on `node` is worth a probe: the node is
/// attached, tidepool may detach it, and the matching setting is on.
pub(super) fn worth_probing(cfg: &FailoverConfig, node: &Node, fault: &Fault) -> bool {
    let enabled = match fault {
        Fault::Error(_) => cfg.failover_on_backend_error,
        Fault::Shutdown(_) => cfg.failover_on_backend_shutdown,
    };
    enabled && node.flag == BackendFlag::AllowToFailover && node.status != Status::Down
}

/// Reports `fault` on `node` to the manager, which probes the node. Called
/// by sessions; cheap when the node is already reported or detached.
pub fn report_fault(
    cluster: &super::Cluster,
    control: &super::Control,
    failover: &FailoverConfig,
    node: usize,
    fault: Fault,
) {
    let snap = cluster.snapshot();
    let Some(n) = snap.node(node) else { return };
    if worth_probing(failover, n, &fault) {
        send_fault(cluster, node, fault, &control.sender());
    }
}

/// Queues `fault` on `node` for the manager, unless one already waits there
/// or the node is held back on purpose (a switchover or recovery stops it).
/// The manager checks the settings again before it probes.
pub(super) fn send_fault(
    cluster: &super::Cluster,
    node: usize,
    fault: Fault,
    sender: &UnboundedSender<Request>,
) {
    let Some(c) = cluster.counters(node) else {
        return;
    };
    if cluster.held(node) || c.fault_reported.swap(true, Ordering::AcqRel) {
        return;
    }
    let name = cluster.snapshot().node(node).map(|n| n.name.clone());
    tracing::warn!(node = name.unwrap_or_default(), %fault, "backend failure reported; the node will be probed");
    let sent = sender.send(Request::BackendFault { node, fault });
    if sent.is_err() {
        c.fault_reported.store(false, Ordering::Release);
    }
}

/// Probes `node` once after a reported `fault`. Returns the failure to
/// hand to `on_failure` when the probe fails too (the node is then marked
/// unreachable, as a failed health check marks it), `None` when the node
/// answers, is no longer attached, or the settings say to ignore the fault.
pub(super) async fn confirm(m: &Manager, node: usize, fault: Fault) -> Option<String> {
    let enabled = m
        .cluster()
        .snapshot()
        .node(node)
        .is_some_and(|n| worth_probing(&m.config().failover, n, &fault));
    let verdict = match enabled {
        true => probe_after_fault(m, node, fault.to_string()).await,
        false => None,
    };
    if let Some(c) = m.cluster().counters(node) {
        c.fault_reported.store(false, Ordering::Release);
    }
    verdict
}

async fn probe_after_fault(m: &Manager, node: usize, error: String) -> Option<String> {
    let snap = m.cluster().snapshot();
    let n = snap.node(node)?;
    let held = n.held;
    if n.status == Status::Down || held {
        return None;
    }
    let stats = &m.cluster().stats;
    stats.backend_faults.fetch_add(1, Ordering::Relaxed);
    let hc = match m.cluster().backend(node) {
        Some(b) => b.health_check(&m.hc()),
        None => m.hc(),
    };
    let started = std::time::Instant::now();
    let probe = async {
        let c = executor::connect(&m.target(node), &hc).await?;
        c.position(node).await
    };
    match probe.await {
        Ok(p) => {
            tracing::info!(node = %n.name, %error, in_recovery = p.in_recovery, "node answers the probe: not a node failure");
            None
        }
        Err(e) => {
            stats
                .backend_faults_confirmed
                .fetch_add(1, Ordering::Relaxed);
            let failure = format!("{error}; probe: {e}");
            tracing::warn!(node = %n.name, probe_ms = started.elapsed().as_millis() as u64, %failure, "node fails the probe after a broken connection");
            m.cluster().record_check(node, Err(failure.clone()));
            Some(failure)
        }
    }
}

/// Whether a node detached as `detached` says may come back by itself:
/// only a node detached after failing its health checks (or a confirmed
/// session report), never one the operator detached, a fenced old primary
/// or a false primary.
pub(super) fn failback_eligible(detached: Option<&Detached>) -> bool {
    detached.is_some_and(|d| d.cause == DetachCause::HealthCheck)
}

/// Asks the manager to consider re-attaching `node`, a detached node that
/// just answered a health check as a standby. At most one request per node
/// waits in the queue.
pub(super) fn request_failback(
    cluster: &super::Cluster,
    node: usize,
    sender: &UnboundedSender<Request>,
) {
    let Some(c) = cluster.counters(node) else {
        return;
    };
    if !failback_eligible(
        cluster
            .snapshot()
            .node(node)
            .and_then(|n| n.detached.as_ref()),
    ) || c.failback_requested.swap(true, Ordering::AcqRel)
    {
        return;
    }
    if sender.send(Request::Failback { node }).is_err() {
        c.failback_requested.store(false, Ordering::Release);
    }
}

/// Re-attaches `node` when `auto_failback` is on and the node is a standby
/// streaming from the current primary.
pub(super) async fn failback(m: &mut Manager, node: usize) {
    let r = try_failback(m, node).await;
    if let Some(c) = m.cluster().counters(node) {
        c.failback_requested.store(false, Ordering::Release);
    }
    if let Err(why) = r {
        tracing::debug!(node = %m.target(node).name, %why, "not failed back yet");
    }
}

async fn try_failback(m: &mut Manager, node: usize) -> Result<(), String> {
    let cfg = m.config();
    if !cfg.failover.auto_failback {
        return Ok(());
    }
    // In a watchdog cluster the leader decides; the others mirror it.
    if m.shared.consensus.as_ref().is_some_and(|c| !c.leading()) {
        return Ok(());
    }
    let snap = m.cluster().snapshot();
    let n = snap.node(node).ok_or("no such node")?.clone();
    let counters = m.cluster().counters(node).ok_or("no such node")?;
    if n.status != Status::Down || !failback_eligible(n.detached.as_ref()) {
        return Ok(());
    }
    let now = unix_ms(SystemTime::now());
    let last = counters.last_failback_ms.load(Ordering::Relaxed);
    let interval = cfg.failover.auto_failback_interval;
    if last != 0 && now.saturating_sub(last) < interval.as_millis() as u64 {
        return Err(format!(
            "failed back less than {interval:?} ago (failover.auto_failback_interval)"
        ));
    }
    let primary = snap.primary().ok_or("no primary")?.clone();
    let (s, p) = tokio::join!(m.connect(node), m.connect(primary.id));
    let (s, p) = (s.map_err(|e| e.to_string())?, p.map_err(|e| e.to_string())?);
    let pos = s.position(node).await.map_err(|e| e.to_string())?;
    if !pos.in_recovery {
        return Err("it is not in recovery".into());
    }
    let receiver = s
        .receiver()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("it does not stream")?;
    let timeline = p.timeline().await.map_err(|e| e.to_string())?;
    let from_primary = match &receiver.slot_name {
        Some(slot) => p.slot_active(slot).await.map_err(|e| e.to_string())?,
        None => receiver.sender_host == primary.host && receiver.sender_port == primary.port,
    };
    if !streams_from(&receiver, timeline, from_primary) {
        return Err(format!(
            "it streams from {}:{} on timeline {}, the primary {} is on timeline {timeline}",
            receiver.sender_host, receiver.sender_port, receiver.timeline, primary.name
        ));
    }
    counters.last_failback_ms.store(now, Ordering::Relaxed);
    m.cluster().attach(node);
    m.cluster().stats.failbacks.fetch_add(1, Ordering::Relaxed);
    m.persist();
    tracing::warn!(node = %n.name, primary = %primary.name, "auto_failback: standby streams from the primary again; attached");
    Ok(())
}

/// Whether a standby's WAL receiver follows the primary: it streams on the
/// primary's timeline, and the primary sees it (its slot active there, or
/// its sender is the primary's address).
fn streams_from(r: &executor::Receiver, primary_timeline: u32, seen_by_primary: bool) -> bool {
    r.timeline == primary_timeline && seen_by_primary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Role;

    fn node(flag: BackendFlag, status: Status) -> Node {
        Node {
            id: 0,
            name: "pg0".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            weight: 1.0,
            flag,
            status,
            reachable: true,
            role: Role::Primary,
            last_status_change: SystemTime::now(),
            last_error: None,
            source: crate::cluster::Source::Config,
            held: false,
            detached: None,
        }
    }

    #[test]
    fn only_attached_self_managed_nodes_are_probed_and_only_when_enabled() {
        let on = FailoverConfig::default();
        let err = Fault::Error("reset".into());
        let down = Fault::Shutdown("terminating connection".into());
        assert!(worth_probing(
            &on,
            &node(BackendFlag::AllowToFailover, Status::Up),
            &err
        ));
        assert!(worth_probing(
            &on,
            &node(BackendFlag::AllowToFailover, Status::Up),
            &down
        ));
        for flag in [BackendFlag::AlwaysPrimary, BackendFlag::DisallowToFailover] {
            assert!(!worth_probing(&on, &node(flag, Status::Up), &err));
            assert!(!worth_probing(&on, &node(flag, Status::Up), &down));
        }
        assert!(!worth_probing(
            &on,
            &node(BackendFlag::AllowToFailover, Status::Down),
            &err
        ));
        let off = FailoverConfig {
            failover_on_backend_error: false,
            failover_on_backend_shutdown: false,
            ..FailoverConfig::default()
        };
        assert!(!worth_probing(
            &off,
            &node(BackendFlag::AllowToFailover, Status::Up),
            &err
        ));
        assert!(!worth_probing(
            &off,
            &node(BackendFlag::AllowToFailover, Status::Up),
            &down
        ));
    }

    #[test]
    fn only_nodes_that_failed_their_checks_fail_back() {
        let why = |cause| Detached::new(cause, "");
        assert!(failback_eligible(Some(&why(DetachCause::HealthCheck))));
        for cause in [
            DetachCause::Operator,
            DetachCause::Fenced,
            DetachCause::LeftTopology,
            DetachCause::Leader,
            DetachCause::Unverified,
        ] {
            assert!(!failback_eligible(Some(&why(cause))), "{cause:?}");
        }
        assert!(!failback_eligible(None));
    }

    #[test]
    fn a_standby_follows_the_primary_only_on_its_timeline_and_seen_by_it() {
        let r = executor::Receiver {
            timeline: 2,
            slot_name: Some("pg1".into()),
            sender_host: "127.0.0.1".into(),
            sender_port: 5432,
        };
        assert!(streams_from(&r, 2, true));
        assert!(!streams_from(&r, 3, true));
        assert!(!streams_from(&r, 2, false));
    }
}
