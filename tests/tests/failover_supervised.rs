//! The failover manager panics (a fail point, set through `FAILPOINTS` in
//! the debug build the tests run): it is started again at once, the log
//! and the admin surface name it, and a primary killed afterwards is still
//! failed over.

mod failover_support;

use std::time::{Duration, Instant};

use anyhow::Result;
use failover_support::{config, wait};
use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, TidepoolOpts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_manager_that_panics_runs_again_and_still_fails_over() -> Result<()> {
    let cluster = PgCluster::start(PgClusterOpts::standbys(2))?;
    let state = tempfile::tempdir()?;
    let mut opts = TidepoolOpts::default();
    opts.env.push((
        "FAILPOINTS".into(),
        "failover-manager-request=1*panic".into(),
    ));
    let tidepool = Tidepool::start_with(&config(&cluster, state.path(), "", ""), opts)?;
    let ctl = |args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new(Tidepool::binary()?)
            .arg("ctl")
            .args(["--url", &tidepool.admin_url(), "--timeout", "30s"])
            .args(args)
            .output()?)
    };
    let standby = cluster.standbys()[1].name.clone();

    // The first request reaches the manager, which panics on it.
    let asked = Instant::now();
    let out = ctl(&["detach", &standby])?;
    assert!(
        !out.status.success(),
        "the request died with the manager: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    tidepool.wait_log("service started again", Duration::from_secs(1))?;
    eprintln!(
        "failover manager running again {:?} after the request",
        asked.elapsed()
    );
    let log = tidepool.log();
    assert!(
        log.contains("service stopped; restarting it")
            && log.contains("service=\"failover manager\""),
        "{}",
        tidepool.log_tail(20)
    );
    let (_, ready) = tidepool.http_get("/readyz")?;
    let ready: serde_json::Value = serde_json::from_str(&ready)?;
    assert_eq!(
        ready["service_restarts"]["failover manager"]["restarts"], 1,
        "{ready}"
    );
    let (_, metrics) = tidepool.http_get("/metrics")?;
    assert!(
        metrics.contains("tidepool_service_restarts_total{service=\"failover manager\"} 1"),
        "{metrics}"
    );

    // The manager started again takes requests...
    let out = ctl(&["detach", &standby])?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and fails a killed primary over.
    let old = cluster.primary().name.clone();
    cluster.kill9(&old)?;
    let nodes = || -> Result<serde_json::Value> {
        let (_, body) = tidepool.http_get("/v1/nodes")?;
        Ok(serde_json::from_str(&body)?)
    };
    wait(Duration::from_secs(20), "a new primary", || {
        Ok(nodes()?["primary"]
            .as_str()
            .is_some_and(|p| p != old && p != standby))
    })
    .await?;
    let (client, conn) = tokio_postgres::connect(
        &tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE after_restart (x int)")
        .await?;
    Ok(())
}
