//! An `always_primary` node stopped for a while is never detached: clients
//! wait or retry and are served once it is back, and nothing is lost.

mod failover_support;

use std::time::Duration;

use failover_support::{Writer, acked, config, wait};
use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_always_primary_is_waited_for_not_detached() -> anyhow::Result<()> {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0))?;
    cluster.psql_db(
        cluster.primary(),
        "app",
        "CREATE TABLE ticks (seq bigint PRIMARY KEY, at timestamptz DEFAULT now()); ALTER TABLE ticks OWNER TO app",
    )?;
    let state = tempfile::tempdir()?;
    let toml = config(&cluster, state.path(), "flag = \"always_primary\"", "");
    let tidepool = Tidepool::start(&toml)?;
    let pg = cluster.primary().name.clone();
    let writer = Writer::start(
        tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.stop_node(&pg)?;
    let stopped = std::time::Instant::now();
    wait(Duration::from_secs(20), "10 s of outage", || {
        Ok(stopped.elapsed() > Duration::from_secs(10))
    })
    .await?;
    let (_, nodes) = tidepool.http_get("/v1/nodes")?;
    assert!(!nodes.contains("\"down\""), "never detached: {nodes}");
    cluster.start_node(&pg)?;
    let started = std::time::Instant::now();
    wait(Duration::from_secs(30), "writes to resume", || {
        Ok(started.elapsed() > Duration::from_secs(3))
    })
    .await?;
    let outcomes = writer.stop().await;
    assert!(
        outcomes.last().unwrap().error.is_none(),
        "clients are served again"
    );
    let on_disk = cluster.psql_db(&pg, "app", "SELECT seq FROM ticks")?;
    let on_disk: Vec<i64> = on_disk.lines().filter_map(|l| l.parse().ok()).collect();
    for s in acked(&outcomes) {
        assert!(on_disk.contains(&s), "acknowledged write {s} lost");
    }
    let (_, nodes) = tidepool.http_get("/v1/nodes")?;
    assert!(!nodes.contains("\"down\""), "never detached: {nodes}");
    Ok(())
}
