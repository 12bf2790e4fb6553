//! Planned switchover: hold writes (the snapshot has no primary, so
//! sessions wait), stop the old primary cleanly, wait until the new one has
//! replayed everything the old one wrote, promote it, and restart the old
//! primary as its standby.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    DetachCause, Detached, Role,
    command::{self, write_owned},
    control::ControlError,
    executor::{ActionError, slot_for},
    failover::Lsn,
    manager::Manager,
};

/// The data directory of node `id`, when it is configured and on this machine.
pub(super) fn local_dir(m: &Manager, id: usize) -> Option<PathBuf> {
    m.cluster()
        .backend(id)
        .and_then(|b| b.data_directory)
        .map(PathBuf::from)
        .filter(|d| d.join("PG_VERSION").exists())
}

/// Where `pg_ctl start` sends the server's output for node `id`.
pub(super) fn log_file(m: &Manager, id: usize, dir: &Path) -> PathBuf {
    m.cluster()
        .backend(id)
        .and_then(|b| b.log_file)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            dir.parent()
                .unwrap_or(Path::new("/tmp"))
                .join("postgresql.log")
        })
}

/// Turns the stopped server of `dir` into a standby of `primary` and starts it.
pub(super) async fn start_as_standby(
    m: &Manager,
    id: usize,
    dir: &Path,
    primary: usize,
) -> Result<(), ActionError> {
    let conninfo = m.primary_conninfo(primary)?;
    let slot = slot_for(&m.target(id).name);
    m.connect(primary).await?.ensure_slot(&slot).await?;
    write_owned(dir, &dir.join("standby.signal"), "", false)?;
    let conf = format!(
        "\n# written by tidepool: standby of {}\nprimary_conninfo = {}\nprimary_slot_name = {}\n",
        m.target(primary).name,
        super::executor::quote_literal(&conninfo),
        super::executor::quote_literal(&slot),
    );
    write_owned(dir, &dir.join("postgresql.auto.conf"), &conf, true)?;
    m.tools().start(dir, &log_file(m, id, dir)).await
}

/// Waits until `new` has replayed past `lsn`.
async fn wait_replayed(
    m: &Manager,
    new: usize,
    lsn: Lsn,
    timeout: Duration,
) -> Result<(), ActionError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let c = m.connect(new).await?;
    loop {
        let p = c.position(new).await?;
        if p.replay.is_some_and(|r| r > lsn) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ActionError::Timeout {
                node: m.target(new).name,
                what: "replaying the old primary's last WAL",
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `new` has stopped receiving WAL and replayed all it got
/// (the old primary was stopped by a command tidepool cannot watch).
async fn wait_quiet(
    m: &Manager,
    new: usize,
    since: Lsn,
    timeout: Duration,
) -> Result<(), ActionError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let c = m.connect(new).await?;
    let mut stable = 0;
    loop {
        let p = c.position(new).await?;
        let done = p.replay >= Some(since) && p.replay >= p.receive && !c.streaming().await?;
        stable = if done { stable + 1 } else { 0 };
        if stable >= 3 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ActionError::Timeout {
                node: m.target(new).name,
                what: "waiting for the old primary's last WAL",
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until no transaction runs on `node` through tidepool, so
/// that stopping it interrupts nobody; closes connections going idle.
async fn wait_idle(m: &Manager, node: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        m.drain(node);
        let busy: usize = m
            .shared
            .pools
            .stats()
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.total.saturating_sub(p.idle))
            .sum();
        if busy == 0 || tokio::time::Instant::now() >= deadline {
            if busy > 0 {
                tracing::warn!(
                    busy,
                    "switchover: transactions still running on the old primary are cut"
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) async fn run(m: &mut Manager, new: usize) -> Result<(), ControlError> {
    let snap = m.cluster().snapshot();
    let old = snap
        .primary()
        .ok_or_else(|| {
            ControlError::Conflict("no primary is known: nothing to switch over from".into())
        })?
        .id;
    let cfg = m.config();
    let dir = local_dir(m, old);
    if dir.is_none() && cfg.failover.switchover_command.is_none() {
        return Err(ControlError::Conflict(format!(
            "switchover needs the old primary's data directory on this machine (backends[{old}].data_directory) or failover.switchover_command"
        )));
    }
    if dir.is_some() {
        m.primary_conninfo(new)?;
    }
    let timeout = cfg.failover.switchover_timeout;
    let started = std::time::Instant::now();
    tracing::warn!(old = %m.target(old).name, new = %m.target(new).name, "switchover: holding writes");
    m.cluster().hold(old, true);
    m.drain(old);
    wait_idle(m, old, timeout.min(Duration::from_secs(5))).await;
    let demoted = match &dir {
        Some(dir) => demote_builtin(m, old, new, dir, timeout).await,
        None => {
            demote_command(
                m,
                old,
                new,
                cfg.failover
                    .switchover_command
                    .as_deref()
                    .unwrap_or_default(),
                timeout,
            )
            .await
        }
    };
    if let Err(e) = demoted {
        tracing::error!(error = %e, "switchover aborted before promotion; the old primary resumes");
        if let Some(dir) = &dir
            && !m.tools().running(dir).await
            && let Err(e) = m.tools().start(dir, &log_file(m, old, dir)).await
        {
            tracing::error!(error = %e, "the old primary did not start again");
        }
        m.cluster().hold(old, false);
        return Err(e.into());
    }
    if let Err(e) = m
        .connect(new)
        .await?
        .promote(cfg.failover.promote_timeout)
        .await
    {
        // The old primary is stopped and the new one did not promote: fail
        // over to whichever standby can take it.
        tracing::error!(error = %e, "switchover: promotion failed");
        m.cluster().hold(old, false);
        return Err(e.into());
    }
    m.cluster().set_role(new, Role::Primary);
    m.cluster().set_role(old, Role::Standby);
    m.persist();
    tracing::warn!(new = %m.target(new).name, held_ms = started.elapsed().as_millis() as u64, "switchover: new primary takes writes");
    if let Some(dir) = &dir {
        match start_as_standby(m, old, dir, new).await {
            Ok(()) => m.cluster().hold(old, false),
            Err(e) => {
                tracing::error!(error = %e, "the old primary did not start as a standby; detaching it (recover it)");
                m.cluster().hold(old, false);
                m.detach(
                    old,
                    Detached::new(
                        DetachCause::Fenced,
                        format!("switchover: could not start as a standby: {e}"),
                    ),
                );
            }
        }
    } else {
        m.cluster().hold(old, false);
    }
    m.follow_all(new, old).await;
    m.persist();
    Ok(())
}

async fn demote_builtin(
    m: &Manager,
    old: usize,
    new: usize,
    dir: &Path,
    timeout: Duration,
) -> Result<(), ActionError> {
    let tools = m.tools();
    tools.stop(dir).await?;
    let (location, clean) = tools.checkpoint(dir).await?;
    if !clean {
        return Err(ActionError::Refused(format!(
            "{} did not shut down cleanly",
            m.target(old).name
        )));
    }
    let lsn: Lsn = location.parse().map_err(ActionError::Refused)?;
    tracing::info!(%lsn, "switchover: old primary stopped; waiting for the new one to replay its last checkpoint");
    wait_replayed(m, new, lsn, timeout).await
}

async fn demote_command(
    m: &Manager,
    old: usize,
    new: usize,
    cmd: &str,
    timeout: Duration,
) -> Result<(), ActionError> {
    let since = m.connect(old).await?.current_lsn().await?;
    let vars = m.vars(old, Some(new), Some(old));
    command::shell(
        &command::expand(cmd, &vars),
        m.config().failover.command_timeout,
    )
    .await?;
    wait_quiet(m, new, since, timeout).await
}
