//! `invalidation = "logical"`: writes that never pass through tidepool (a
//! job connected straight to the database, a trigger's target written by
//! another node's pooler) read from the primary's WAL. For each database
//! the cache has served, a temporary logical replication slot
//! (`test_decoding`) on the primary, read every `POLL`; each table a
//! committed transaction changed gets a new generation. The slot lives as
//! long as its connection: a lost connection or a new primary means a new
//! slot, and every result of the database is dropped (changes in between
//! were not seen).
//!
//! Needs `wal_level = logical` on the primary and a health-check user that
//! may create replication slots (REPLICATION or superuser; RDS:
//! `rds.logical_replication = 1` and the `rds_replication` role).

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use super::Primary;
use super::{QueryCache, policy};
use crate::{cluster::Cluster, config::Source};

/// How often each slot is read: the bound on staleness after a write
/// made outside tidepool, with the decoding itself.
const POLL: Duration = Duration::from_millis(100);
/// Rows of changes read at most per request (a large transaction is read
/// in parts).
const BATCH: i32 = 10_000;

/// Starts a follower for every database the cache sees, until shutdown.
pub async fn run(
    cluster: Arc<Cluster>,
    config: Arc<dyn Source>,
    cache: Arc<QueryCache>,
    shutdown: watch::Receiver<bool>,
) {
    let mut following: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        if *shutdown.borrow() {
            return;
        }
        tick.tick().await;
        for db in cache.databases() {
            if following.insert(db.clone()) {
                tokio::spawn(follow(
                    cluster.clone(),
                    config.clone(),
                    cache.clone(),
                    db,
                    shutdown.clone(),
                ));
            }
        }
    }
}

/// The table a `test_decoding` line names (`table public.acc: UPDATE: …`),
/// as the cache keys it.
pub fn changed_table(line: &str) -> Option<String> {
    let rest = line.strip_prefix("table ")?;
    let name = rest.split_once(": ")?.0;
    // `schema.table`, each part quoted when it needs to be.
    let last = match name.rsplit_once('.') {
        Some((_, t)) => t,
        None => name,
    };
    let bare = last
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .map(|t| t.replace("\"\"", "\""))
        .unwrap_or_else(|| last.to_string());
    Some(policy::table_id(&bare))
}

async fn follow(
    cluster: Arc<Cluster>,
    config: Arc<dyn Source>,
    cache: Arc<QueryCache>,
    db: String,
    shutdown: watch::Receiver<bool>,
) {
    let mut warned = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let primary = Primary {
            cluster: &cluster,
            config: &*config,
        };
        match follow_once(primary, &cache, &db, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                if !warned {
                    tracing::warn!(database = %db, error = %e,
                        "query cache: cannot follow the primary's WAL; writes made outside tidepool are not seen until this works");
                    warned = true;
                } else {
                    tracing::debug!(database = %db, error = %e, "query cache: WAL follower retrying");
                }
                // Whatever happened meanwhile was not seen.
                cache.bump(&db, &[policy::ALL_TABLES.to_string()]).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One slot on the current primary, read until it fails or the primary
/// changes (Err), or shutdown (Ok).
async fn follow_once(
    primary: Primary<'_>,
    cache: &QueryCache,
    db: &str,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), String> {
    let (client, conn, id) = super::connect_primary(primary, db, "tidepool query cache").await?;
    let host = primary
        .cluster
        .snapshot()
        .node(id)
        .map(|n| n.host.clone())
        .unwrap_or_default();
    let result = async {
        let slot = format!("tidepool_cache_{:016x}", rand::random::<u64>());
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'test_decoding', true)",
                &[&slot],
            )
            .await
            .map_err(|e| format!("creating slot: {}", db_error(&e)))?;
        tracing::info!(database = %db, %slot, node = %host, "query cache: following the primary's WAL");
        // Changes before the slot existed were not seen.
        cache.bump(db, &[policy::ALL_TABLES.to_string()]).await;
        let read = client
            .prepare(
                "SELECT data FROM pg_logical_slot_get_changes($1, NULL, $2, 'skip-empty-xacts', '1')",
            )
            .await
            .map_err(|e| db_error(&e))?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if crate::router::write_node(&primary.cluster.snapshot()).map(|n| n.id) != Some(id) {
                return Err("the primary changed".to_string());
            }
            loop {
                let rows = client
                    .query(&read, &[&slot, &BATCH])
                    .await
                    .map_err(|e| format!("reading changes: {}", db_error(&e)))?;
                let tables: BTreeSet<String> = rows
                    .iter()
                    .filter_map(|r| r.get::<_, Option<String>>(0))
                    .filter_map(|l| changed_table(&l))
                    .collect();
                if !tables.is_empty() {
                    let tables: Vec<String> = tables.into_iter().collect();
                    cache.bump(db, &tables).await;
                }
                if rows.len() < BATCH as usize {
                    break;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    drop(client);
    conn.abort();
    result
}

fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::changed_table;

    #[test]
    fn tables_are_read_from_test_decoding_lines() {
        assert_eq!(
            changed_table("table public.acc: UPDATE: id[integer]:1 v[integer]:5").as_deref(),
            Some("acc")
        );
        assert_eq!(
            changed_table("table s.\"My \"\"T\"\"\": INSERT: x[integer]:1").as_deref(),
            Some("My \"T\"")
        );
        assert_eq!(
            changed_table("table public.t: TRUNCATE: (no-flags)").as_deref(),
            Some("t")
        );
        assert_eq!(changed_table("BEGIN"), None);
        assert_eq!(changed_table("COMMIT"), None);
    }
}
