//! A standby killed under load is detached; clients writing through the
//! primary see no error.

mod failover_support;

use std::time::{Duration, Instant};

use failover_support::{FailoverBed, Writer, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_standby_is_detached_without_client_errors() -> anyhow::Result<()> {
    let bed = FailoverBed::start(false, "")?;
    let primary = bed.cluster.primary().name.clone();
    let standby = bed.cluster.standbys()[1].name.clone();
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    bed.cluster.kill9(&standby)?;
    wait(
        Duration::from_secs(20),
        "the standby to be detached",
        || Ok(bed.status(&standby)? == "down"),
    )
    .await?;
    let detached = Instant::now();
    wait(Duration::from_secs(5), "writes after the detach", || {
        Ok(detached.elapsed() > Duration::from_secs(1))
    })
    .await?;
    let outcomes = writer.stop().await;
    let errors: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(outcomes.len() > 20);
    assert_eq!(
        bed.primary()?.as_deref(),
        Some(primary.as_str()),
        "no failover"
    );
    let v = bed.nodes()?;
    let n = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == standby.as_str())
        .unwrap()
        .clone();
    assert!(
        n["detach_reason"]
            .as_str()
            .is_some_and(|r| r.contains("health check failed")),
        "{n}"
    );
    let stats = bed.tidepool.http_get("/v1/nodes")?.1;
    assert!(stats.contains("health_check_retries"), "{stats}");
    Ok(())
}
