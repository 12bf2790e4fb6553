//! Health checks: one task per node, probing it every period with a kept
//! connection, retrying a failed probe `max_retries` times `retry_delay`
//! apart, and reporting a node that failed them all to the manager.
//!
//! A crash closes the kept connection: the check wakes at once instead of
//! at the next period, so detection of a crash costs only the retries.
//! A detached standby that answers again is offered to the manager for
//! `auto_failback`.

use std::{sync::Arc, time::Instant};

use tokio::sync::{mpsc, watch};

use super::{Cluster, Role, Status, control::Request, trigger::Fault};
use crate::config::HealthCheckConfig;

/// Probes every node until `shutdown` fires, one task per node; restarts
/// the tasks when the node list changes.
pub async fn run_checks(
    cluster: Arc<Cluster>,
    settings: watch::Receiver<HealthCheckConfig>,
    mut shutdown: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<Request>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut nodes_seen = cluster.subscribe();
    loop {
        let snap = cluster.snapshot();
        for n in &snap.nodes {
            let check = Check {
                cluster: cluster.clone(),
                id: n.id,
                host: n.host.clone(),
                port: n.port,
                settings: settings.clone(),
                events: events.clone(),
            };
            tasks.spawn(check.run());
        }
        let addrs = |s: &super::Snapshot| -> Vec<String> {
            s.nodes
                .iter()
                .map(|n| format!("{}:{}", n.host, n.port))
                .collect()
        };
        let names = addrs(&snap);
        loop {
            tokio::select! {
                _ = shutdown.changed() => { tasks.abort_all(); return; }
                r = nodes_seen.changed() => {
                    if r.is_err() { return; }
                    if addrs(&cluster.snapshot()) != names { break; }
                }
                // A node's check never ends by itself: one that did
                // panicked. Every check starts again (its node's state
                // would freeze otherwise).
                Some(done) = tasks.join_next() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "a node's health check panicked; starting the checks again");
                        break;
                    }
                }
            }
        }
        // Aborted and joined: none is left for the next round to mistake
        // for a stopped check.
        tasks.shutdown().await;
    }
}

struct Check {
    cluster: Arc<Cluster>,
    id: usize,
    host: String,
    port: u16,
    settings: watch::Receiver<HealthCheckConfig>,
    events: mpsc::UnboundedSender<Request>,
}

/// The kept connection and a signal that fires when it closes.
struct Kept {
    client: tokio_postgres::Client,
    /// Fires when the connection ends, with the SQLSTATE and message of the
    /// error the server ended it with, if any (57P01: the server shuts down).
    closed: crate::tls::OwnDriver,
}

impl Check {
    fn settings(&self) -> HealthCheckConfig {
        let global = self.settings.borrow().clone();
        match self.cluster.backend(self.id) {
            Some(b) => b.health_check(&global),
            None => global,
        }
    }

    fn held(&self) -> bool {
        self.cluster.held(self.id)
    }

    async fn run(self) {
        let mut kept: Option<Kept> = None;
        let mut reported = false;
        // The kept connection broke: a failure of the next check is a
        // backend error (failover_on_backend_error) or shutdown.
        let mut broke: Option<Fault> = None;
        let name = self
            .cluster
            .snapshot()
            .node(self.id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        loop {
            let hc = self.settings();
            let mut attempt = 0;
            let outcome = loop {
                let started = Instant::now();
                let r = self.probe(&mut kept, &hc).await;
                if r.is_err() {
                    kept = None;
                }
                if let Some(c) = self.cluster.counters(self.id) {
                    c.record_check(r.is_ok(), attempt > 0, started.elapsed());
                }
                self.cluster.record_check(self.id, r.clone());
                if let (Err(e), Some(fault)) = (&r, broke.take()) {
                    // The manager probes once more and acts without
                    // waiting for the retries, if the settings allow.
                    let fault = match fault {
                        Fault::Shutdown(m) => Fault::Shutdown(format!("{m}; check: {e}")),
                        Fault::Error(m) => Fault::Error(format!("{m}; check: {e}")),
                    };
                    super::trigger::send_fault(&self.cluster, self.id, fault, &self.events);
                }
                match r {
                    Err(e) if attempt < hc.max_retries => {
                        tracing::debug!(node = %name, attempt, error = %e, "health check failed; retrying");
                        attempt += 1;
                        tokio::time::sleep(hc.retry_delay).await;
                    }
                    r => break r,
                }
            };
            match outcome {
                Ok(role) => {
                    reported = false;
                    let down = self
                        .cluster
                        .snapshot()
                        .node(self.id)
                        .is_some_and(|n| n.status == Status::Down);
                    if down && role == Role::Standby {
                        super::trigger::request_failback(&self.cluster, self.id, &self.events);
                    }
                }
                // A node held back by a switchover or recovery is stopped
                // on purpose: its failures are not news.
                Err(_) if self.held() => {}
                Err(error) if !reported => {
                    tracing::warn!(node = %name, retries = hc.max_retries, %error, "health check failed after every retry");
                    reported = true;
                    let _ = self.events.send(Request::NodeFailed {
                        node: self.id,
                        error,
                    });
                }
                Err(_) => {}
            }
            match kept.as_mut() {
                Some(k) => {
                    tokio::select! {
                        _ = tokio::time::sleep(hc.period) => {}
                        code = &mut k.closed => {
                            tracing::debug!(node = %name, "health-check connection closed; checking now");
                            broke = Some(match code.ok().flatten() {
                                Some((c, message)) if c == crate::protocol::sqlstate::ADMIN_SHUTDOWN => {
                                    Fault::Shutdown(format!("health-check connection: {message}"))
                                }
                                _ => Fault::Error("the health-check connection closed".into()),
                            });
                        }
                    }
                }
                None => tokio::time::sleep(hc.period).await,
            }
        }
    }

    /// One check: (re)connect if needed, then ask whether it is in recovery.
    async fn probe(&self, kept: &mut Option<Kept>, hc: &HealthCheckConfig) -> Result<Role, String> {
        if kept.as_ref().is_none_or(|k| k.client.is_closed()) {
            *kept = None;
            let tls = self.cluster.tls(self.id);
            let k = tokio::time::timeout(
                hc.connect_timeout,
                connect(&self.cluster, self.id, &self.host, self.port, &tls, hc),
            )
            .await
            .unwrap_or_else(|_| Err(format!("connect timed out after {:?}", hc.connect_timeout)))?;
            // What the node's connections are: known from the mode, or
            // asked once per connection where the server decides (prefer).
            let ssl = match tls.mode {
                crate::config::SslMode::Disable => false,
                crate::config::SslMode::Prefer => k
                    .client
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false),
                _ => true,
            };
            if let Some(c) = self.cluster.counters(self.id) {
                c.set_ssl(ssl);
            }
            // Which database system this is, for fences (see `persist`).
            match k
                .client
                .query_one(
                    "SELECT s.system_identifier::text, c.timeline_id \
                     FROM pg_control_system() s, pg_control_checkpoint() c",
                    &[],
                )
                .await
            {
                Ok(row) => match row.get::<_, String>(0).parse() {
                    Ok(system_identifier) => {
                        if let Some(c) = self.cluster.counters(self.id) {
                            c.set_system(super::persist::SystemId {
                                system_identifier,
                                timeline: row.get::<_, i32>(1) as u32,
                            });
                        }
                    }
                    Err(e) => tracing::debug!(node = self.id, error = %e, "system identifier"),
                },
                Err(e) => {
                    tracing::debug!(node = self.id, error = %e, "cannot read the system identifier")
                }
            }
            *kept = Some(k);
        }
        let client = &kept.as_ref().expect("connected above").client;
        let row = tokio::time::timeout(
            hc.timeout,
            client.query_one("SELECT pg_is_in_recovery()", &[]),
        )
        .await
        .map_err(|_| format!("health check timed out after {:?}", hc.timeout))?
        .map_err(|e| format!("query: {e}"))?;
        Ok(if row.get::<_, bool>(0) {
            Role::Standby
        } else {
            Role::Primary
        })
    }
}

async fn connect(
    cluster: &Cluster,
    id: usize,
    host: &str,
    port: u16,
    tls: &crate::tls::BackendTls,
    hc: &HealthCheckConfig,
) -> Result<Kept, String> {
    let password = cluster.check_password(id, host, port, hc).await?;
    let (client, closed) = tls
        .connect_own(crate::tls::OwnConnection {
            host,
            port,
            user: &hc.user,
            password: password.as_deref(),
            database: &hc.database,
            application: "tidepool health check",
            timeout: hc.connect_timeout,
        })
        .await?;
    Ok(Kept { client, closed })
}
