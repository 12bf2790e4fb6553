//! The instances of a managed cluster in the node table: they join when
//! the topology lists them, leave when it no longer does, and take the
//! writer's role only when `discovery` confirmed it. Ids stay stable: an
//! instance that leaves keeps its place (down, never routed to) and takes
//! it again if it comes back, so pools and sessions keyed by id never
//! point at another instance.

use std::{sync::Arc, time::SystemTime};

use super::{Cluster, DetachCause, Detached, Node, Role, Source, Status};
use crate::config::BackendConfig;
use crate::tls::BackendTls;

/// Why an instance that left the topology is down.
pub const LEFT_TOPOLOGY: &str = "not in the cluster's topology";

impl Cluster {
    /// Puts instance `b` (found by `source`) in the table, or brings back
    /// the one of that name that left; returns its id and whether it
    /// joined (new, back, or at a new address).
    pub fn join(&self, b: BackendConfig, source: Source) -> (usize, bool) {
        let snap = self.snapshot();
        if let Some(n) = snap.nodes.iter().find(|n| n.name == b.name) {
            let id = n.id;
            let moved = n.host != b.host || n.port != b.port;
            if moved {
                let mut backends = Vec::clone(&self.backends.load());
                if let Some(slot) = backends.get_mut(id) {
                    *slot = b.clone();
                }
                self.tls.store(Arc::new(super::compile_tls(&backends)));
                self.backends.store(Arc::new(backends));
            }
            // Back in the topology after it left; an operator's detach
            // stays.
            let back = n.status == Status::Down
                && n.detached.as_ref().map(|d| d.cause) == Some(DetachCause::LeftTopology);
            if back || moved {
                tracing::info!(node = %b.name, host = %b.host, port = b.port, "cluster instance back in the topology");
                self.update(|s| {
                    let n = &mut s.nodes[id];
                    n.detached = None;
                    n.host = b.host.clone();
                    n.port = b.port;
                    n.status = Status::Waiting;
                    n.reachable = false;
                    n.role = Role::Unknown;
                    n.source = source;
                    n.last_status_change = SystemTime::now();
                });
            }
            return (id, back || moved);
        }
        tracing::info!(node = %b.name, host = %b.host, port = b.port, discovered_by = source.as_str(), "cluster instance joins the node table");
        let mut backends = Vec::clone(&self.backends.load());
        let id = backends.len();
        let mut tls = Vec::clone(&self.tls.load());
        tls.push(Arc::new(BackendTls::load_or_refusing(
            &b.tls(&Default::default()),
        )));
        let mut counters = Vec::clone(&self.counters.load());
        counters.push(Arc::default());
        backends.push(b.clone());
        // Counters, TLS and settings first: whoever sees the node in a
        // snapshot finds them.
        self.counters.store(Arc::new(counters));
        self.tls.store(Arc::new(tls));
        self.backends.store(Arc::new(backends));
        self.update(|s| {
            s.nodes.push(Node {
                id,
                name: b.name.clone(),
                host: b.host.clone(),
                port: b.port,
                weight: b.weight,
                flag: b.flag,
                status: Status::Waiting,
                reachable: false,
                role: Role::Unknown,
                last_status_change: SystemTime::now(),
                last_error: None,
                source,
                held: false,
                detached: None,
            })
        });
        (id, true)
    }

    /// Instance `id` is no longer in the topology: down, never routed to.
    pub fn leave(&self, id: usize) {
        let snap = self.snapshot();
        let Some(n) = snap.node(id) else { return };
        if n.status == Status::Down {
            return;
        }
        tracing::info!(node = %n.name, "cluster instance left the topology");
        self.update(|s| {
            let n = &mut s.nodes[id];
            n.status = Status::Down;
            n.detached = Some(Detached::new(DetachCause::LeftTopology, LEFT_TOPOLOGY));
            n.role = Role::Unknown;
            n.last_status_change = SystemTime::now();
        });
    }

    /// The topology's writer, confirmed on its own connection: instance
    /// `writer` takes writes (and `writer_weight` of the reads), every
    /// other instance is a reader (`reader_weight`).
    pub fn crown(&self, writer: usize, writer_weight: f64, reader_weight: f64) {
        let desired = |n: &Node| {
            if n.id == writer {
                (Role::Primary, writer_weight)
            } else if n.role == Role::Primary {
                (Role::Standby, reader_weight)
            } else {
                (n.role, reader_weight)
            }
        };
        let snap = self.snapshot();
        let settled = snap
            .nodes
            .iter()
            .filter(|n| n.source.discovered())
            .all(|n| (n.role, n.weight) == desired(n));
        if settled {
            return;
        }
        if let Some(n) = snap.node(writer).filter(|n| n.role != Role::Primary) {
            tracing::info!(node = %n.name, "cluster writer confirmed: it takes the writes");
        }
        self.update(|s| {
            for n in s.nodes.iter_mut().filter(|n| n.source.discovered()) {
                let (role, weight) = desired(n);
                if n.role != role {
                    n.last_status_change = SystemTime::now();
                }
                n.role = role;
                n.weight = weight;
            }
        });
    }

    /// A session's report that the writer answered a write read-only
    /// (25006): the topology watcher asks it at once, and demotes it if it
    /// answers read-only itself (a client's own read-only setting does not
    /// count). Resolves once the watcher has asked it twice since (or
    /// after two seconds), so that the unit runs again on whatever writer
    /// the watcher confirms.
    pub async fn check_writer(&self) {
        let mut rounds = self.writer_checks.subscribe();
        rounds.borrow_and_update();
        self.check_writer.notify_one();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            for _ in 0..2 {
                if rounds.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// The watcher: a session asks for the writer to be checked now.
    pub(super) async fn writer_check_asked(&self) {
        self.check_writer.notified().await
    }

    /// The watcher: a round that asked the writer (or every instance) ended.
    pub(super) fn writer_checked(&self) {
        self.writer_checks.send_modify(|n| *n += 1);
    }

    /// Whether node `id` is a managed cluster's instance (the per-unit
    /// path: no snapshot is cloned).
    pub fn is_instance(&self, id: usize) -> bool {
        self.current
            .load()
            .nodes
            .get(id)
            .is_some_and(|n| n.source.discovered())
    }

    /// Cluster instance `id` answered a write read-only (25006) or in
    /// recovery: it is no writer; writes wait for the topology to name
    /// the next one. Nothing for a configured node (its checks and the
    /// failover manager decide).
    pub fn demote(&self, id: usize, why: &str) {
        let snap = self.snapshot();
        let Some(n) = snap.node(id) else { return };
        if !n.source.discovered() || n.role != Role::Primary {
            return;
        }
        tracing::warn!(node = %n.name, why, "cluster writer no longer writes; looking for the new one");
        self.update(|s| {
            let n = &mut s.nodes[id];
            if n.role == Role::Primary {
                n.role = Role::Standby;
                n.last_status_change = SystemTime::now();
            }
        });
    }
}
