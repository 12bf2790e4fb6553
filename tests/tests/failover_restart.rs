//! After a failover, a restart of tidepool keeps the old primary fenced,
//! even when it comes back as a stand-alone primary; a fence belongs to
//! the database system it was taken on.

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
    // The fence names the database system it was taken on: the cluster's,
    // which the new primary shares.
    let system = system_identifier(&bed, &new)?;
    let persisted: serde_json::Value = serde_json::from_str(&state)?;
    assert_eq!(
        persisted["systems"][&old]["system_identifier"].as_u64(),
        Some(system),
        "{state}"
    );

    // The old primary comes back as a primary of its own: dangerous.
    bed.cluster.start_node_no_wait(&old)?;
    assert_eq!(bed.cluster.psql(&old, "SELECT pg_is_in_recovery()")?, "f");

    let config = std::fs::read_to_string(bed.tidepool.config_path())?;
    bed.tidepool.terminate(Duration::from_secs(10))?;
    bed.tidepool = Tidepool::start(&config)?;
    assert_eq!(bed.primary()?.as_deref(), Some(new.as_str()));
    assert_eq!(bed.status(&old)?, "down");
    // Once tidepool has seen the old primary run the same system, it is
    // still fenced.
    seen_running(&bed, &old).await?;
    assert_eq!(
        bed.node(&old)?["system_identifier"].as_str(),
        Some(system.to_string().as_str())
    );
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

/// The node's database system identifier, asked directly.
fn system_identifier(bed: &FailoverBed, node: &str) -> anyhow::Result<u64> {
    Ok(bed
        .cluster
        .psql(node, "SELECT system_identifier FROM pg_control_system()")?
        .trim()
        .parse()?)
}

/// Waits until tidepool knows which system `node` runs and has checked it
/// twice more since, so that anything it decides on seeing it is done.
async fn seen_running(bed: &FailoverBed, node: &str) -> anyhow::Result<()> {
    let mut seen_at = None;
    failover_support::wait(Duration::from_secs(30), "the node's system seen", || {
        let n = bed.node(node)?;
        let checks = n["health_checks"].as_u64().unwrap_or(0);
        if n["system_identifier"].is_string() && seen_at.is_none() {
            seen_at = Some(checks);
        }
        Ok(seen_at.is_some_and(|s| checks >= s + 2))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_taken_on_another_database_system_does_not_apply() -> anyhow::Result<()> {
    let mut bed = FailoverBed::start(false, "")?;
    let primary = bed.cluster.primary().name.clone();
    let standbys: Vec<String> = bed
        .cluster
        .standbys()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let (same, rebuilt) = (&standbys[0], &standbys[1]);
    let system = system_identifier(&bed, &primary)?;
    // A state file from before: both standbys fenced, one on this cluster's
    // database system, one on a system that no longer exists (the node was
    // made again with initdb since, as a new demo cluster is).
    let config = std::fs::read_to_string(bed.tidepool.config_path())?;
    bed.tidepool.terminate(Duration::from_secs(10))?;
    let state = serde_json::json!({
        "detached": { same: "fenced", rebuilt: "fenced" },
        "primary": primary,
        "systems": {
            same: { "system_identifier": system, "timeline": 1 },
            rebuilt: { "system_identifier": system ^ 1, "timeline": 1 },
        },
    });
    std::fs::write(
        bed.state.path().join("tidepool-state.json"),
        serde_json::to_vec_pretty(&state)?,
    )?;
    bed.tidepool = Tidepool::start(&config)?;
    failover_support::wait(Duration::from_secs(30), "the rebuilt node attached", || {
        Ok(bed.status(rebuilt)? == "up")
    })
    .await?;
    seen_running(&bed, same).await?;
    assert_eq!(bed.status(same)?, "down", "same system: the fence holds");
    let persisted: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        bed.state.path().join("tidepool-state.json"),
    )?)?;
    assert!(persisted["detached"][rebuilt].is_null(), "{persisted}");
    assert!(persisted["systems"][rebuilt].is_null(), "{persisted}");
    assert_eq!(
        persisted["systems"][same]["system_identifier"].as_u64(),
        Some(system),
        "{persisted}"
    );
    // And it serves.
    let c = bed.tidepool.connect("app", "app", "app").await?;
    c.execute("INSERT INTO ticks (seq) VALUES (1)", &[]).await?;
    Ok(())
}
