//! After a failover, a restart of tidepool keeps the old primary fenced,
//! even when it comes back as a stand-alone primary.

mod failover_support;

use std::time::Duration;

use failover_support::FailoverBed;
use tidepool_tests::Tidepool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_old_primary_stays_fenced_across_a_restart() -> anyhow::Result<()> {
    let mut bed = FailoverBed::start(false, "")?;
    let (old, new) = bed.kill_primary().await?;
    let state = std::fs::read_to_string(bed.state.path().join("tidepool-state.json"))?;
    assert!(state.contains(&old) && state.contains(&new), "{state}");

    // The old primary comes back as a primary of its own: dangerous.
    bed.cluster.start_node_no_wait(&old)?;
    assert_eq!(bed.cluster.psql(&old, "SELECT pg_is_in_recovery()")?, "f");

    let config = std::fs::read_to_string(bed.tidepool.config_path())?;
    bed.tidepool.terminate(Duration::from_secs(10))?;
    bed.tidepool = Tidepool::start(&config)?;
    assert_eq!(bed.primary()?.as_deref(), Some(new.as_str()));
    assert_eq!(bed.status(&old)?, "down");

    let c = bed.tidepool.connect("app", "app", "app").await?;
    for i in 0..20i64 {
        c.execute("INSERT INTO ticks (seq) VALUES ($1)", &[&(1000 + i)])
            .await?;
    }
    assert!(bed.seqs(&new)?.contains(&1019));
    assert!(
        !bed.seqs(&old)?.contains(&1000),
        "no write reached the fenced node"
    );
    assert_eq!(bed.primary()?.as_deref(), Some(new.as_str()));

    // The operator's attach overrides the fence.
    let out = bed.ctl(&["attach", &old])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
