//! A planned switchover under a write loop loses no acknowledged write and
//! leaves the old primary streaming from the new one.

mod failover_support;

use std::time::Duration;

use failover_support::{FailoverBed, Writer, acked, outage, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_keeps_every_write_and_the_old_primary_follows() -> anyhow::Result<()> {
    let bed = FailoverBed::start(false, "")?;
    let old = bed.cluster.primary().name.clone();
    let target = bed.cluster.standbys()[0].name.clone();
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = std::time::Instant::now();
    let out = bed.ctl(&["promote", &target, "--switchover"])?;
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        bed.tidepool.log_tail(30)
    );
    assert_eq!(bed.primary()?.as_deref(), Some(target.as_str()));
    wait(
        Duration::from_secs(30),
        "the old primary to stream from the new one",
        || Ok(bed.streaming_from(&target)?.contains(&old)),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = writer.stop().await;
    let on_new = bed.seqs(&target)?;
    let missing: Vec<i64> = acked(&outcomes)
        .into_iter()
        .filter(|s| !on_new.contains(s))
        .collect();
    println!(
        "switchover: write pause {:?}, {} errors",
        outage(&outcomes, at),
        outcomes.iter().filter(|o| o.error.is_some()).count()
    );
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    assert!(outcomes.last().unwrap().error.is_none());
    assert_eq!(bed.status(&old)?, "up");
    assert_eq!(bed.cluster.role(&old)?, tidepool_tests::Role::Standby);
    Ok(())
}
