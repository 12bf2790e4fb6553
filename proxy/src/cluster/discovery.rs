//! The watcher of a `[[clusters]]` entry: reads the managed cluster's
//! topology from the database and keeps the node table true to it.
//!
//! While the writer answers, it alone is asked every `topology_period`:
//! its view adds and retires instances and gives the readers' lag. When no
//! confirmed writer takes writes — its connection failed, its health check
//! failed, it answered in recovery or read-only (25006, `Cluster::demote`),
//! or its own view names another writer — every known instance and the
//! cluster endpoint are asked every `failover_poll` (for at most
//! `failover_poll_timeout`, then every `topology_period`), and writes wait
//! for the first instance that confirms itself writer (`topology`'s rule).
//! The cluster endpoint is asked too but never trusted to be the writer:
//! its DNS name may still lead to the old one.
//!
//! tidepool never promotes or detaches an instance: AWS runs the failover.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinSet};

use super::{
    Cluster, Lag, Lags, Source, Status,
    topology::{self, Member, Row, View},
};
use crate::{
    config::{ClusterConfig, ClusterKind, HealthCheckConfig},
    credentials::Login,
    tls::BackendTls,
};

/// An instance to ask (`name: None`: the cluster endpoint).
#[derive(Debug, Clone)]
struct Asked {
    name: Option<String>,
    host: String,
    port: u16,
}

/// What the watcher keeps between rounds.
struct Watcher {
    cluster: Arc<Cluster>,
    c: ClusterConfig,
    tls: Arc<BackendTls>,
    login: Login,
    kind: Option<ClusterKind>,
    clients: HashMap<Option<String>, tokio_postgres::Client>,
    lags: Arc<Lags>,
    /// Since when no confirmed writer takes writes.
    writerless_since: Option<Instant>,
    /// The writer's last ask failed: ask everyone next round.
    writer_silent: bool,
    /// When RDS was last asked for the members (`DescribeDBClusters`), and
    /// whether this node may ask at all.
    rds_asked: Option<Instant>,
    rds_allowed: bool,
    /// Each target's last error, so that a new one is logged as a warning
    /// and its repetitions (every poll of a dead instance) quietly.
    last_errors: HashMap<Option<String>, String>,
}

/// How often RDS is asked at most while no instance answers.
const RDS_EVERY: Duration = Duration::from_secs(10);

/// Watches cluster `c` until shutdown.
pub async fn run(
    cluster: Arc<Cluster>,
    c: ClusterConfig,
    health: watch::Receiver<HealthCheckConfig>,
    lags: Arc<Lags>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = c.endpoint_backend().tls(&Default::default());
    let mut w = Watcher {
        tls: Arc::new(BackendTls::load_or_refusing(&settings)),
        login: {
            let hc = health.borrow();
            Login::for_checks(
                hc.password.as_deref(),
                hc.password_secret.as_deref(),
                &settings,
            )
        },
        kind: c.kind,
        cluster,
        c,
        clients: HashMap::new(),
        lags,
        writerless_since: None,
        writer_silent: false,
        rds_asked: None,
        rds_allowed: true,
        last_errors: HashMap::new(),
    };
    let mut changed = w.cluster.subscribe();
    loop {
        let hc = health.borrow().clone();
        let again_now = w.round(&hc).await;
        if again_now {
            continue;
        }
        let period = match w.writerless_since {
            Some(t) if t.elapsed() < w.c.failover_poll_timeout => w.c.failover_poll,
            _ if w.writer_silent => w.c.failover_poll,
            _ => w.c.topology_period,
        };
        let sleep = tokio::time::sleep(period);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = shutdown.changed() => return,
                _ = w.cluster.writer_check_asked() => break,
                r = changed.changed() => {
                    if r.is_err() { return; }
                    // A writer lost (check failed, answered read-only):
                    // look for the next one now, not after the period.
                    if w.writerless_since.is_none() && w.writer().is_none() {
                        break;
                    }
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

impl Watcher {
    /// The confirmed writer that takes writes now: (id, name).
    fn writer(&self) -> Option<(usize, String)> {
        let snap = self.cluster.snapshot();
        snap.primary()
            .filter(|n| n.source.discovered())
            .map(|n| (n.id, n.name.clone()))
    }

    fn source(&self) -> Source {
        match self.kind {
            Some(ClusterKind::MultiAzCluster) => Source::MultiAzTopology,
            _ => Source::AuroraTopology,
        }
    }

    /// One round; true when the next should follow at once.
    async fn round(&mut self, hc: &HealthCheckConfig) -> bool {
        let writer = self.writer();
        let cluster = self.cluster.clone();
        let stats = &cluster.stats;
        match (&writer, self.writerless_since) {
            (None, None) => {
                self.writerless_since = Some(Instant::now());
                if self
                    .cluster
                    .snapshot()
                    .nodes
                    .iter()
                    .any(|n| n.source.discovered())
                {
                    stats.writer_losses.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(cluster = %self.c.name, "no confirmed writer: asking every instance for the topology");
                }
            }
            (Some(_), Some(since)) => {
                // Crowned by this watcher's last round.
                self.writerless_since = None;
                tracing::info!(cluster = %self.c.name, after_ms = since.elapsed().as_millis() as u64, "writes go to the confirmed writer");
            }
            _ => {}
        }
        let snap = self.cluster.snapshot();
        let targets: Vec<Asked> = match &writer {
            Some((id, name)) if !self.writer_silent && snap.node(*id).is_some() => {
                let n = &snap.nodes[*id];
                vec![Asked {
                    name: Some(name.clone()),
                    host: n.host.clone(),
                    port: n.port,
                }]
            }
            _ => snap
                .nodes
                .iter()
                .filter(|n| n.source.discovered() && n.status != Status::Down)
                .map(|n| Asked {
                    name: Some(n.name.clone()),
                    host: n.host.clone(),
                    port: n.port,
                })
                .chain(std::iter::once(Asked {
                    name: None,
                    host: self.c.endpoint.clone(),
                    port: self.c.port,
                }))
                .collect(),
        };
        let fast = writer.is_none() || self.writer_silent;
        let deadline = if fast {
            hc.timeout.min(Duration::from_secs(1))
        } else {
            hc.timeout
        };
        let asked_at = Instant::now();
        let views = self.ask(targets, hc, deadline).await;
        cluster.writer_checked();
        stats
            .topology_reads
            .fetch_add(views.len() as u64, Ordering::Relaxed);
        let writer_view = writer.as_ref().and_then(|(_, name)| {
            views
                .iter()
                .find(|v| v.asked.as_deref() == Some(name.as_str()))
        });
        match (&writer, writer_view) {
            (Some(_), Some(v)) if v.confirms_writer() => {
                self.writer_silent = false;
                self.settle(v, asked_at);
                false
            }
            (Some((id, _)), Some(v)) => {
                let why = if v.read_only {
                    "it answers in recovery or read-only"
                } else {
                    "its topology names another writer"
                };
                self.cluster.demote(*id, why);
                true
            }
            (Some(_), None) => {
                // Silent: its health check decides whether it is down;
                // meanwhile everyone is asked who writes.
                self.writer_silent = true;
                if let Some(v) = topology::confirmed_writer(&views) {
                    let v = v.clone();
                    self.settle(&v, asked_at);
                }
                false
            }
            (None, _) => {
                match topology::confirmed_writer(&views) {
                    Some(v) => {
                        let v = v.clone();
                        self.writer_silent = false;
                        self.settle(&v, asked_at);
                        // The next round finds the writer crowned (once its
                        // health check has it up; until then, the poll).
                        return self.writer().is_some();
                    }
                    None => {
                        // Instances the views name that the table lacks, or
                        // that had left (the new writer, first of all), are
                        // asked next.
                        let source = self.source();
                        for m in views.iter().flat_map(|v| &v.members) {
                            self.join(m, source);
                        }
                        if views.is_empty() {
                            self.ask_rds().await;
                        }
                    }
                }
                false
            }
        }
    }

    /// No instance and not the cluster endpoint answered: RDS lists the
    /// cluster's members (`DescribeDBClusters`, with `cluster_identifier`
    /// and the permission), so that tidepool asks each at its own endpoint.
    /// The database's topology stays the authority: members it does not
    /// list leave again once it answers.
    async fn ask_rds(&mut self) {
        let Some(id) = self.c.cluster_identifier.clone() else {
            return;
        };
        if !self.rds_allowed || self.rds_asked.is_some_and(|t| t.elapsed() < RDS_EVERY) {
            return;
        }
        self.rds_asked = Some(Instant::now());
        let rds = self.cluster.credentials().rds().await;
        let topology = match tokio::time::timeout(Duration::from_secs(10), rds.topology(&id)).await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let text = e.to_string();
                if text.contains("AccessDenied") || text.contains("not authorized") {
                    self.rds_allowed = false;
                    tracing::warn!(cluster = %self.c.name, error = %text, "DescribeDBClusters is not allowed: instances are found from the database only");
                } else {
                    tracing::warn!(cluster = %self.c.name, error = %text, "DescribeDBClusters failed");
                }
                return;
            }
            Err(_) => {
                tracing::warn!(cluster = %self.c.name, "DescribeDBClusters did not answer within 10 s");
                return;
            }
        };
        for m in topology.writer.iter().chain(&topology.readers) {
            let Some(endpoint) = &m.endpoint else {
                continue;
            };
            if self
                .cluster
                .snapshot()
                .nodes
                .iter()
                .any(|n| n.name == m.instance_id && n.status != Status::Down)
            {
                continue;
            }
            let member = Member {
                name: m.instance_id.clone(),
                host: self
                    .c
                    .instance_host(&m.instance_id)
                    .unwrap_or_else(|| endpoint.address.clone()),
                port: endpoint
                    .port
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(self.c.port),
                writer: false,
                lag: None,
            };
            self.join(&member, Source::DescribeDbClusters);
        }
    }

    /// Applies the confirmed writer's view: members, roles, lags.
    fn settle(&mut self, v: &View, asked_at: Instant) {
        let source = self.source();
        let snap = self.cluster.snapshot();
        let known = snap
            .nodes
            .iter()
            .filter(|n| n.source.discovered() && n.status != Status::Down)
            .map(|n| n.name.as_str());
        let (join, leave) = topology::membership(v, known);
        for m in join {
            self.join(m, source);
        }
        for name in leave {
            if let Some(n) = snap.nodes.iter().find(|n| n.name == name) {
                self.cluster.leave(n.id);
                self.cluster
                    .stats
                    .instances_left
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let snap = self.cluster.snapshot();
        let Some(writer) = v
            .asked
            .as_ref()
            .and_then(|me| snap.nodes.iter().find(|n| &n.name == me))
        else {
            return;
        };
        if writer.role != super::Role::Primary {
            self.cluster
                .stats
                .writer_changes
                .fetch_add(1, Ordering::Relaxed);
        }
        self.cluster
            .crown(writer.id, self.c.writer_weight, self.c.reader_weight);
        let mut lags = BTreeMap::new();
        for m in &v.members {
            let (Some((lag, age)), Some(n)) = (m.lag, snap.nodes.iter().find(|n| n.name == m.name))
            else {
                continue;
            };
            lags.insert(
                n.id,
                Lag {
                    bytes: 0,
                    time: lag,
                    // The reader held, `age` before the figure was read,
                    // everything the writer committed `lag` before that.
                    covers_since: asked_at.checked_sub(lag + age),
                    replication_state: "",
                    replication_sync_state: "",
                },
            );
        }
        self.lags.store(Arc::new(lags));
    }

    fn join(&self, m: &Member, source: Source) {
        let b = self.c.instance(&m.name, &m.host, m.port);
        if self.cluster.join(b, source).1 {
            self.cluster
                .stats
                .instances_joined
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks every target at once; the views of those that answered within
    /// `deadline`.
    async fn ask(
        &mut self,
        targets: Vec<Asked>,
        hc: &HealthCheckConfig,
        deadline: Duration,
    ) -> Vec<View> {
        let mut set = JoinSet::new();
        for t in targets {
            let client = self.clients.remove(&t.name);
            let job = Ask {
                c: self.c.clone(),
                kind: self.kind,
                tls: self.tls.clone(),
                login: self.login.clone(),
                credentials: self.cluster.credentials().clone(),
                hc: hc.clone(),
            };
            set.spawn(async move {
                let name = t.name.clone();
                match tokio::time::timeout(deadline, job.run(t, client)).await {
                    Ok((client, r)) => (name, client, r),
                    Err(_) => (name, None, Err(format!("no answer within {deadline:?}"))),
                }
            });
        }
        let mut views = Vec::new();
        while let Some(done) = set.join_next().await {
            let Ok((name, client, r)) = done else {
                continue;
            };
            if let Some(client) = client {
                self.clients.insert(name.clone(), client);
            }
            match r {
                Ok((kind, view)) => {
                    self.last_errors.remove(&name);
                    if self.kind.is_none() {
                        tracing::info!(cluster = %self.c.name, kind = kind.as_str(), "cluster kind detected");
                        self.kind = Some(kind);
                    }
                    views.push(view);
                }
                Err(e) => {
                    self.cluster
                        .stats
                        .topology_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let instance = name.as_deref().unwrap_or("(cluster endpoint)");
                    if self.last_errors.get(&name) == Some(&e) {
                        tracing::debug!(cluster = %self.c.name, instance, error = %e, "topology not read");
                    } else {
                        tracing::warn!(cluster = %self.c.name, instance, error = %e, "topology not read");
                        self.last_errors.insert(name.clone(), e);
                    }
                }
            }
        }
        views
    }
}

/// One question to one instance, owning what it needs.
struct Ask {
    c: ClusterConfig,
    kind: Option<ClusterKind>,
    tls: Arc<BackendTls>,
    login: Login,
    credentials: Arc<crate::credentials::Credentials>,
    hc: HealthCheckConfig,
}

impl Ask {
    async fn run(
        self,
        t: Asked,
        client: Option<tokio_postgres::Client>,
    ) -> (
        Option<tokio_postgres::Client>,
        Result<(ClusterKind, View), String>,
    ) {
        let client = match client.filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match self.connect(&t).await {
                Ok(c) => c,
                Err(e) => return (None, Err(e)),
            },
        };
        let r = self.read(&client, &t).await;
        if r.is_err() {
            return (None, r);
        }
        (Some(client), r)
    }

    async fn read(
        &self,
        client: &tokio_postgres::Client,
        t: &Asked,
    ) -> Result<(ClusterKind, View), String> {
        let kind = match self.kind {
            Some(k) => k,
            None => {
                let row = client
                    .query_one(topology::DETECT, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
                    (true, _) => ClusterKind::Aurora,
                    (false, true) => ClusterKind::MultiAzCluster,
                    _ => {
                        return Err(format!(
                            "{}:{} is neither Aurora (no aurora_version()) nor an RDS Multi-AZ DB \
                             cluster (no rds_tools.show_topology()): set clusters.kind or use [[backends]]",
                            t.host, t.port
                        ));
                    }
                }
            }
        };
        if kind == ClusterKind::Aurora && self.c.instance_host_pattern.is_none() {
            return Err(format!(
                "{}:{} is Aurora, whose topology names instances only by identifier: \
                 set clusters.instance_host_pattern",
                t.host, t.port
            ));
        }
        let rows = client
            .query(topology::query(kind), &[])
            .await
            .map_err(|e| e.to_string())?;
        let mut read_only = true;
        let mut members = Vec::new();
        for r in &rows {
            read_only = r.try_get::<_, bool>(0).map_err(|e| e.to_string())?;
            let row = match kind {
                ClusterKind::Aurora => Row {
                    id: r.try_get(1).ok().flatten(),
                    writer: r.try_get(2).ok().flatten(),
                    lag_ms: r.try_get(3).ok().flatten(),
                    age_s: r.try_get(4).ok().flatten(),
                    port: None,
                },
                ClusterKind::MultiAzCluster => Row {
                    id: r.try_get(1).ok().flatten(),
                    writer: r.try_get(2).ok().flatten(),
                    port: r.try_get(3).ok().flatten(),
                    ..Row::default()
                },
            };
            if let Some(m) = topology::member(&self.c, kind, &row) {
                members.push(m);
            }
        }
        Ok((
            kind,
            View {
                asked: t.name.clone(),
                read_only,
                members,
            },
        ))
    }

    async fn connect(&self, t: &Asked) -> Result<tokio_postgres::Client, String> {
        let password = self
            .credentials
            .password(&self.login, &t.host, t.port, &self.hc.user)
            .await?;
        let (client, _driver) = self
            .tls
            .connect_own(crate::tls::OwnConnection {
                host: &t.host,
                port: t.port,
                user: &self.hc.user,
                password: password.as_deref(),
                database: &self.hc.database,
                application: "tidepool topology",
                timeout: self.hc.connect_timeout,
            })
            .await?;
        Ok(client)
    }
}
