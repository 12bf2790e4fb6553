//! With synchronous replication, a kill -9 of the primary loses no
//! acknowledged write: tidepool promotes the standby with the most WAL.

mod failover_support;

use std::time::{Duration, Instant};

use failover_support::{FailoverBed, Writer, acked, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_failover_with_sync_standbys() -> anyhow::Result<()> {
    let bed = FailoverBed::start(true, "")?;
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, new) = bed.kill_primary().await?;
    let resumed = Instant::now();
    wait(Duration::from_secs(20), "writes after the failover", || {
        Ok(Instant::now() > resumed + Duration::from_secs(2))
    })
    .await?;
    let outcomes = writer.stop().await;
    let acked = acked(&outcomes);
    let on_new = bed.seqs(&new)?;
    let missing: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|s| !on_new.contains(s))
        .collect();
    println!(
        "{} writes acknowledged, {} on the new primary {new}, missing: {missing:?}",
        acked.len(),
        on_new.len()
    );
    assert!(acked.len() > 20, "the writer made progress");
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    assert!(outcomes.last().unwrap().error.is_none(), "writes resumed");
    Ok(())
}
