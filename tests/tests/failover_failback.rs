//! `auto_failback`: a standby detached after failing its health checks is
//! attached again once it answers and streams from the primary; with the
//! setting off, or when the operator detached it, it stays detached.

mod failover_support;

use std::time::Duration;

use anyhow::Result;
use failover_support::{Extra, FailoverBed, wait};

/// Stops `standby`, waits for tidepool to detach it for failing its
/// checks, starts it again and waits until tidepool's checks reach it.
async fn bounce(bed: &FailoverBed, standby: &str) -> Result<()> {
    bed.cluster.stop_node(standby)?;
    wait(
        Duration::from_secs(20),
        "the standby to be detached",
        || Ok(bed.status(standby)? == "down"),
    )
    .await
    .map_err(|e| e.context(bed.tidepool.log_tail(30)))?;
    let reason = bed.detach_reason(standby)?;
    assert!(reason.starts_with("health check failed"), "{reason}");
    bed.cluster.start_node(standby)?;
    assert!(
        bed.streaming_from(&bed.cluster.primary().name)?
            .contains(&standby.to_string())
    );
    wait(
        Duration::from_secs(20),
        "checks to reach the standby",
        || Ok(bed.node(standby)?["reachable"] == true),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_back_and_streaming_is_attached_again() -> Result<()> {
    let bed = FailoverBed::start_with(
        false,
        &Extra {
            failover: "auto_failback = true",
            ..Extra::default()
        },
    )?;
    let standbys: Vec<String> = bed
        .cluster
        .standbys()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let (standby, other) = (&standbys[0], &standbys[1]);
    bounce(&bed, standby).await?;
    wait(
        Duration::from_secs(20),
        "the standby to be attached again",
        || Ok(bed.status(standby)? == "up"),
    )
    .await
    .map_err(|e| e.context(bed.tidepool.log_tail(20)))?;
    assert_eq!(bed.detach_reason(standby)?, "");
    assert_eq!(bed.metric("tidepool_failbacks_total")?, 1.0);
    assert!(bed.tidepool.log().contains("auto_failback"));
    // It takes reads again.
    let (client, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await?;

    // A standby the operator detached stays detached although it streams.
    let out = bed.ctl(&["detach", other])?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        bed.streaming_from(&bed.cluster.primary().name)?
            .contains(other)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bed.status(other)?, "down");
    assert_eq!(bed.metric("tidepool_failbacks_total")?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_failback_a_standby_back_stays_detached() -> Result<()> {
    let bed = FailoverBed::start(false, "")?;
    let standby = bed.cluster.standbys()[0].name.clone();
    bounce(&bed, &standby).await?;
    // Several health-check periods with the standby answering.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bed.status(&standby)?, "down");
    assert_eq!(bed.metric("tidepool_failbacks_total")?, 0.0);
    Ok(())
}
