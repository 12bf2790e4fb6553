//! Replication delay of each standby, measured every `sr_check_period`:
//! in WAL bytes (the primary's current LSN minus the standby's replay LSN)
//! and in time (since the last replayed transaction, zero when the standby
//! has replayed all it received). The router skips standbys over the
//! thresholds; `SHOW POOL_NODES` shows the figures.
//!
//! Each round also says up to when a standby is known to be current: the
//! primary's position is sampled at the start of every round and kept for a
//! while; a standby whose replay position has reached the position sampled
//! at instant `t` holds every transaction committed before `t`
//! (`Lag::covers_since`), which is what read-your-writes by position
//! (`disable_on_write = "session_lsn"`) asks of it.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

pub use crate::cluster::{Lag, Lags};
use crate::{
    cluster::{Cluster, Role, Status},
    config::Config,
};

/// pg_stat_replication's `state` and `sync_state` values, as tidepool
/// shows them (anything else shows as empty).
const REPLICATION_STATES: &[&str] = &["startup", "catchup", "streaming", "backup", "stopping"];
const SYNC_STATES: &[&str] = &["async", "potential", "sync", "quorum"];

fn known(value: &str, values: &[&'static str]) -> &'static str {
    values.iter().find(|v| **v == value).copied().unwrap_or("")
}

/// Primary positions sampled at the start of recent rounds, oldest first.
#[derive(Debug, Default)]
pub struct PrimaryPositions {
    samples: VecDeque<(Instant, u64)>,
}

impl PrimaryPositions {
    /// Rounds kept: a standby more than this many rounds behind is not
    /// known to hold anything recent.
    const KEPT: usize = 32;

    /// Records the primary's position as read by a query sent at `at`.
    pub fn record(&mut self, at: Instant, lsn: u64) {
        if self.samples.back().is_some_and(|&(_, last)| lsn < last) {
            // A new primary (its positions start elsewhere): forget the old.
            self.samples.clear();
        }
        self.samples.push_back((at, lsn));
        while self.samples.len() > Self::KEPT {
            self.samples.pop_front();
        }
    }

    /// The latest instant whose primary position a standby replayed up to
    /// `replayed` has reached.
    pub fn covered(&self, replayed: u64) -> Option<Instant> {
        self.samples
            .iter()
            .rev()
            .find(|&&(_, lsn)| lsn <= replayed)
            .map(|&(at, _)| at)
    }
}

async fn connect(
    host: &str,
    port: u16,
    tls: &crate::tls::BackendTls,
    password: Option<String>,
    cfg: &Config,
) -> Option<tokio_postgres::Client> {
    let hc = &cfg.health_check;
    tls.connect_own(crate::tls::OwnConnection {
        host,
        port,
        user: &hc.user,
        password: password.as_deref(),
        database: &hc.database,
        application: "tidepool sr check",
        timeout: hc.connect_timeout,
    })
    .await
    .ok()
    .map(|(client, _driver)| client)
}

/// Measures every standby's delay until shutdown.
pub async fn run<C: std::ops::Deref<Target: AsRef<Config>>>(
    cluster: Arc<Cluster>,
    config: impl Fn() -> C,
    lags: Arc<Lags>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut clients: BTreeMap<(String, u16), tokio_postgres::Client> = BTreeMap::new();
    let mut positions = PrimaryPositions::default();
    loop {
        let held = config();
        let cfg: &Config = (*held).as_ref();
        let period = cfg.load_balancing.sr_check_period;
        let snapshot = cluster.snapshot();
        let mut next = BTreeMap::new();
        if let Some(primary) = snapshot.primary() {
            let key = (primary.host.clone(), primary.port);
            let asked_at = Instant::now();
            let current = match sample(
                &mut clients,
                &key,
                (&cluster, primary.id),
                cfg,
                "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, 0::float8",
            )
            .await
            {
                Some((lsn, _)) => {
                    positions.record(asked_at, lsn);
                    lsn
                }
                None => {
                    wait(&mut shutdown, period).await;
                    continue;
                }
            };
            let walsenders = replication(&clients, &key, cfg).await;
            for n in snapshot
                .nodes
                .iter()
                .filter(|n| n.role == Role::Standby && n.status == Status::Up)
            {
                let (state, sync) = walsenders
                    .iter()
                    .find(|(name, _, _)| *name == n.name)
                    .map(|(_, state, sync)| {
                        (known(state, REPLICATION_STATES), known(sync, SYNC_STATES))
                    })
                    .unwrap_or(("", ""));
                let key = (n.host.clone(), n.port);
                let sql = "SELECT COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0), \
                           CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                           ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8";
                if let Some((replayed, secs)) =
                    sample(&mut clients, &key, (&cluster, n.id), cfg, sql).await
                {
                    next.insert(
                        n.id,
                        Lag {
                            bytes: current.saturating_sub(replayed),
                            time: Duration::from_secs_f64(secs.max(0.0)),
                            covers_since: positions.covered(replayed),
                            replication_state: state,
                            replication_sync_state: sync,
                        },
                    );
                }
            }
        }
        lags.store(Arc::new(next));
        if wait(&mut shutdown, period).await {
            return;
        }
    }
}

/// Sleeps `period`; true when shutting down.
async fn wait(shutdown: &mut watch::Receiver<bool>, period: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(period) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// The primary's walsenders: (application_name, state, sync_state).
async fn replication(
    clients: &BTreeMap<(String, u16), tokio_postgres::Client>,
    key: &(String, u16),
    cfg: &Config,
) -> Vec<(String, String, String)> {
    let Some(client) = clients.get(key) else {
        return Vec::new();
    };
    let q = client.query(
        "SELECT application_name, state, sync_state FROM pg_stat_replication",
        &[],
    );
    match tokio::time::timeout(cfg.health_check.timeout, q).await {
        Ok(Ok(rows)) => rows
            .iter()
            .map(|r| {
                let get = |i: usize| {
                    r.try_get::<_, Option<String>>(i)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                };
                (get(0), get(1), get(2))
            })
            .collect(),
        _ => Vec::new(),
    }
}

async fn sample(
    clients: &mut BTreeMap<(String, u16), tokio_postgres::Client>,
    key: &(String, u16),
    (cluster, id): (&Cluster, usize),
    cfg: &Config,
    sql: &str,
) -> Option<(u64, f64)> {
    if clients.get(key).is_none_or(|c| c.is_closed()) {
        let password = cluster
            .check_password(id, &key.0, key.1, &cfg.health_check)
            .await
            .ok()?;
        let c = connect(&key.0, key.1, &cluster.tls(id), password, cfg).await?;
        clients.insert(key.clone(), c);
    }
    let client = clients.get(key)?;
    match tokio::time::timeout(cfg.health_check.timeout, client.query_one(sql, &[])).await {
        Ok(Ok(row)) => {
            let lsn: i64 = row.try_get(0).unwrap_or(0);
            let secs: f64 = row.try_get(1).unwrap_or(0.0);
            Some((lsn.max(0) as u64, secs))
        }
        _ => {
            clients.remove(key);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_covers_the_latest_instant_whose_position_it_replayed() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = PrimaryPositions::default();
        p.record(at(0), 100);
        p.record(at(1), 200);
        p.record(at(2), 300);
        assert_eq!(p.covered(50), None);
        assert_eq!(p.covered(100), Some(at(0)));
        assert_eq!(p.covered(299), Some(at(1)));
        assert_eq!(p.covered(1_000), Some(at(2)));
        // A new primary whose positions are lower: the old ones go.
        p.record(at(3), 10);
        assert_eq!(p.covered(299), Some(at(3)));
        assert_eq!(p.covered(5), None);
        for i in 0..100 {
            p.record(at(4 + i), 1_000 + i);
        }
        assert_eq!(p.covered(1_000), None, "only the last rounds are kept");
    }
}
