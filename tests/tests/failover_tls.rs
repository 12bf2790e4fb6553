//! The failover cycle against nodes that take TLS only (hostssl, as RDS's
//! rds.force_ssl): with `sslmode = "verify-full"` tidepool fails over a
//! killed primary under writes, the other standby follows over TLS, the old
//! primary is recovered (pg_rewind over TLS) and a switchover brings it
//! back — every connection tidepool and the repointed standbys open is TLS.

mod failover_support;

use std::time::Duration;

use failover_support::{Extra, FailoverBed, Writer, acked, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_recovery_and_switchover_run_over_tls() -> anyhow::Result<()> {
    let bed = FailoverBed::start_with(
        false,
        &Extra {
            tls: true,
            ..Extra::default()
        },
    )?;
    let old = bed.cluster.primary().name.clone();
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Failover: promotion and follow.
    let (_, new) = bed.kill_primary().await?;
    let follower = bed
        .cluster
        .standbys()
        .into_iter()
        .map(|n| n.name.clone())
        .find(|n| *n != new && *n != old)
        .unwrap();
    wait(
        Duration::from_secs(30),
        "the other standby to stream from the new primary",
        || Ok(bed.streaming_from(&new)?.contains(&follower)),
    )
    .await?;
    // Online recovery of the old primary.
    bed.ctl_ok(&["recover", &old])?;
    assert!(bed.streaming_from(&new)?.contains(&old));
    // Both standbys stream from the new primary over TLS.
    let tls_streams = bed.cluster.psql(
        &new,
        "select count(*) from pg_stat_replication r join pg_stat_ssl s using (pid) where s.ssl",
    )?;
    assert_eq!(tls_streams, "2");
    // Switchover back to the old primary.
    bed.ctl_ok(&["promote", &old, "--switchover"])?;
    assert_eq!(bed.primary()?.as_deref(), Some(old.as_str()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = writer.stop().await;
    assert!(outcomes.last().unwrap().error.is_none(), "writes go on");
    let last_acked = acked(&outcomes).into_iter().max().unwrap();
    wait(
        Duration::from_secs(20),
        "the last write on the primary",
        || Ok(bed.seqs(&old)?.contains(&last_acked)),
    )
    .await?;
    // Every node is up and reached over TLS.
    let nodes = bed.nodes()?;
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["ssl"], true, "{n}");
    }
    Ok(())
}
