//! A primary killed with `kill -9` under a write loop: tidepool promotes the
//! standby with the most WAL, the other standby follows it, and writes
//! resume.

mod failover_support;

use std::time::{Duration, Instant};

use failover_support::{FailoverBed, Writer, acked, outage, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_is_replaced_and_the_other_standby_follows() -> anyhow::Result<()> {
    let bed = FailoverBed::start(false, "")?;
    let old = bed.cluster.primary().name.clone();
    assert_eq!(bed.primary()?.as_deref(), Some(old.as_str()));
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed_at = Instant::now();
    bed.cluster.kill9(&old)?;
    wait(Duration::from_secs(20), "a new primary", || {
        Ok(bed.primary()?.is_some_and(|p| p != old))
    })
    .await?;
    let failed_over_at = Instant::now();
    let new = bed.primary()?.unwrap();
    let follower = bed
        .cluster
        .standbys()
        .into_iter()
        .map(|n| n.name.clone())
        .find(|n| *n != new)
        .unwrap();
    wait(
        Duration::from_secs(20),
        "the other standby to stream from the new primary",
        || Ok(bed.streaming_from(&new)?.contains(&follower)),
    )
    .await?;
    // Writes go on for a while after the failover.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = writer.stop().await;

    let gap = outage(&outcomes, killed_at).expect("writes before and after the kill");
    println!(
        "outage after kill -9 of the primary: {} ms",
        gap.as_millis()
    );
    let errors: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    println!(
        "{} writes, {} errors: {errors:?}",
        outcomes.len(),
        errors.len()
    );
    assert!(gap < Duration::from_secs(10), "outage {gap:?}");
    assert!(outcomes.last().unwrap().error.is_none(), "writes resumed");
    assert_eq!(bed.status(&old)?, "down", "the old primary is fenced");
    assert_eq!(bed.cluster.role(&new)?, tidepool_tests::Role::Primary);
    // Every write acknowledged once the new primary was known is on it
    // (writes acknowledged by the old primary just before its death may be
    // lost: this cluster replicates asynchronously).
    let on_new = bed.seqs(&new)?;
    let after: Vec<i64> = outcomes
        .iter()
        .filter(|o| o.error.is_none() && o.at > failed_over_at)
        .map(|o| o.seq)
        .collect();
    assert!(!after.is_empty());
    for s in &after {
        assert!(
            on_new.contains(s),
            "write {s} acknowledged after the failover is missing"
        );
    }
    assert!(acked(&outcomes).len() > 10);
    Ok(())
}
