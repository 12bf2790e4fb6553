//! Online recovery of a failed primary while writes go on: it rejoins as a
//! standby of the new primary and catches up.

mod failover_support;

use std::time::Duration;

use failover_support::{Extra, FailoverBed, Writer, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_primary_is_recovered_as_a_standby_under_writes() -> anyhow::Result<()> {
    let bed = FailoverBed::start(false, "")?;
    let old = bed.cluster.primary().name.clone();
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, new) = bed.kill_primary().await?;
    assert_eq!(bed.status(&old)?, "down");

    let out = bed.ctl(&["recover", &old])?;
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        bed.tidepool.log_tail(30)
    );
    assert_eq!(bed.status(&old)?, "up");
    assert!(bed.streaming_from(&new)?.contains(&old));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = writer.stop().await;
    assert!(outcomes.last().unwrap().error.is_none(), "writes went on");
    // It caught up: the last acknowledged write reaches it.
    let last = outcomes
        .iter()
        .rev()
        .find(|o| o.error.is_none())
        .unwrap()
        .seq;
    wait(
        Duration::from_secs(20),
        "the recovered node to replay the last write",
        || {
            let seqs = bed.seqs(&old);
            if let Err(e) = &seqs {
                eprintln!("{e:#}");
            }
            Ok(seqs?.contains(&last))
        },
    )
    .await?;
    assert_eq!(bed.cluster.role(&old)?, tidepool_tests::Role::Standby);
    Ok(())
}

/// pg_rewind needs data checksums or `wal_log_hints`: without them on the
/// old primary, recovery falls back to a fresh base backup and the node
/// still comes back as a standby of the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pg_rewind_cannot_rewind_is_recovered_from_a_base_backup() -> anyhow::Result<()> {
    // Turned off before tidepool starts, so the restart is no failure.
    let bed = FailoverBed::start_prepared(false, &Extra::default(), |cluster| {
        let primary = &cluster.primary().name;
        cluster.psql(primary, "ALTER SYSTEM SET wal_log_hints = off")?;
        cluster.stop_node(primary)?;
        cluster.start_node(primary)?;
        assert_eq!(cluster.psql(primary, "SHOW wal_log_hints")?, "off");
        cluster.wait_streaming()
    })?;
    let old = bed.cluster.primary().name.clone();
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, new) = bed.kill_primary().await?;

    let out = bed.ctl(&["recover", &old])?;
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        bed.tidepool.log_tail(30)
    );
    let log = bed.tidepool.log();
    assert!(
        log.contains("pg_rewind failed; taking a base backup instead")
            && log.contains("wal_log_hints"),
        "{}",
        bed.tidepool.log_tail(30)
    );
    assert_eq!(bed.status(&old)?, "up");
    assert_eq!(bed.cluster.role(&old)?, tidepool_tests::Role::Standby);
    assert!(bed.streaming_from(&new)?.contains(&old));
    let outcomes = writer.stop().await;
    assert!(outcomes.last().unwrap().error.is_none(), "writes went on");
    let last = outcomes
        .iter()
        .rev()
        .find(|o| o.error.is_none())
        .unwrap()
        .seq;
    wait(
        Duration::from_secs(20),
        "the rebuilt node to replay the last write",
        || Ok(bed.seqs(&old)?.contains(&last)),
    )
    .await?;
    Ok(())
}
