//! A broken backend connection (`failover_on_backend_error`) and a
//! server's admin shutdown (`failover_on_backend_shutdown`) trigger the
//! failure handling at once. The health check's retries are made too slow
//! to act within these tests (30 retries a second apart), so the failover
//! can only come from the broken connection (a session's, or the health
//! check's own) and the single probe that confirms it. A session ended by
//! `pg_terminate_backend()` is probed too, and changes nothing. With both
//! settings off, only the (slow) retries decide.

mod failover_support;

use std::time::Duration;

use failover_support::{Extra, FailoverBed, Writer, wait};

/// Health checks that would take half a minute to declare a node failed.
const SLOW_CHECKS: &str = "health_check_max_retries = 30\nhealth_check_retry_delay = \"1s\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_to_the_killed_primary_fails_over_without_the_retries()
-> anyhow::Result<()> {
    let bed = FailoverBed::start_with(
        false,
        &Extra {
            backend: SLOW_CHECKS,
            ..Extra::default()
        },
    )?;
    let old = bed.cluster.primary().name.clone();
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bed.metric("tidepool_failovers_total")?, 0.0);

    bed.cluster.kill9(&old)?;
    wait(Duration::from_secs(15), "a new primary", || {
        Ok(bed.primary()?.is_some_and(|p| p != old))
    })
    .await
    .map_err(|e| e.context(manager_log(&bed)))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = writer.stop().await;
    assert!(outcomes.last().unwrap().error.is_none(), "writes resumed");

    let reason = bed.detach_reason(&old)?;
    assert!(
        // A killed postmaster's children may still say 57P01 ("unexpected
        // postmaster exit") before they die: either trigger may fire first.
        (reason.contains("backend connection failed") || reason.contains("57P01"))
            && reason.contains("probe"),
        "the broken connection, confirmed by a probe, fenced the old primary: {reason}\n{}",
        bed.tidepool.log_tail(30)
    );
    assert_eq!(bed.status(&old)?, "down");
    // The failover shows in /metrics.
    assert_eq!(
        bed.metric("tidepool_failovers_total")?,
        1.0,
        "one failover, at the first attempt:\n{}",
        manager_log(&bed)
    );
    assert!(bed.metric("tidepool_backend_faults_confirmed_total")? >= 1.0);
    assert!(bed.metric("tidepool_detaches_total")? >= 1.0);
    assert_eq!(
        bed.metric(&format!("tidepool_node_detaches_total{{node=\"{old}\"}}"))?,
        1.0
    );
    assert_eq!(bed.metric("tidepool_failed_actions_total")?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_shutdown_of_the_primary_fails_over_before_the_health_check() -> anyhow::Result<()>
{
    // Connection errors do not count here: only the 57P01 does.
    let bed = FailoverBed::start_with(
        false,
        &Extra {
            backend: SLOW_CHECKS,
            failover: "failover_on_backend_error = false",
            ..Extra::default()
        },
    )?;
    let old = bed.cluster.primary().name.clone();
    // A client inside a transaction holds its backend connection, so its
    // session reads the server's FATAL 57P01 as soon as it is sent.
    let (client, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    client.batch_execute("BEGIN; SELECT 1").await?;

    bed.cluster.stop_node(&old)?;
    wait(Duration::from_secs(15), "a new primary", || {
        Ok(bed.primary()?.is_some_and(|p| p != old))
    })
    .await
    .map_err(|e| e.context(manager_log(&bed)))?;
    let reason = bed.detach_reason(&old)?;
    assert!(
        reason.contains("57P01"),
        "the admin shutdown fenced the old primary: {reason}\n{}",
        bed.tidepool.log_tail(30)
    );
    // The client in the transaction was told, and a new session writes.
    assert!(client.simple_query("SELECT 1").await.is_err());
    let (fresh, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    fresh
        .execute("INSERT INTO ticks (seq) VALUES (1)", &[])
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_does_not_fail_over_a_healthy_primary() -> anyhow::Result<()> {
    let bed = FailoverBed::start_with(
        false,
        &Extra {
            backend: SLOW_CHECKS,
            ..Extra::default()
        },
    )?;
    let primary = bed.cluster.primary().name.clone();
    let (client, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    client.batch_execute("BEGIN").await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    // pg_terminate_backend() sends the same FATAL 57P01 as a shutdown.
    bed.cluster
        .psql(&primary, &format!("SELECT pg_terminate_backend({pid})"))?;
    wait(Duration::from_secs(10), "the probe of the primary", || {
        Ok(bed.metric("tidepool_backend_faults_total")? >= 1.0)
    })
    .await?;
    // The probe found the primary answering: nothing changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bed.primary()?.as_deref(), Some(primary.as_str()));
    assert_eq!(bed.status(&primary)?, "up");
    assert_eq!(bed.metric("tidepool_backend_faults_confirmed_total")?, 0.0);
    assert_eq!(bed.metric("tidepool_failovers_total")?, 0.0);
    Ok(())
}

/// tidepool's log without the lines of client sessions.
fn manager_log(bed: &FailoverBed) -> String {
    let log = bed.tidepool.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("no primary node is available"))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_triggers_off_only_the_health_check_retries_decide() -> anyhow::Result<()> {
    let bed = FailoverBed::start_with(
        false,
        &Extra {
            backend: SLOW_CHECKS,
            failover: "failover_on_backend_error = false\nfailover_on_backend_shutdown = false",
            ..Extra::default()
        },
    )?;
    let old = bed.cluster.primary().name.clone();
    bed.cluster.kill9(&old)?;
    wait(
        Duration::from_secs(10),
        "the primary to be seen failing",
        || Ok(bed.status(&old)? == "waiting"),
    )
    .await?;
    // Several seconds into its 30 retries the node is still only waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bed.status(&old)?, "waiting");
    assert_eq!(bed.primary()?, None);
    assert_eq!(bed.metric("tidepool_backend_faults_total")?, 0.0);
    assert_eq!(bed.metric("tidepool_failovers_total")?, 0.0);
    Ok(())
}
