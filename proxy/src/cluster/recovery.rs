//! Online recovery: bring a detached node back as a standby of the current
//! primary while writes go on. Through `failover.recovery_command` when one
//! is configured, else built in when the node's data directory is on this
//! machine (`pg_rewind`, else `pg_basebackup`). The node is attached once
//! it streams and lags by at most `failover.recovery_max_lag_bytes`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    Role, Status,
    command::{self, write_owned},
    control::ControlError,
    executor::ActionError,
    manager::Manager,
    switchover::{local_dir, start_as_standby},
};

/// Files a rewind or base backup would replace with the primary's, but that
/// belong to the node (its port, its name, its access rules).
const OWN_FILES: &[&str] = &[
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "postgresql.auto.conf",
];

pub(super) async fn run(m: &mut Manager, id: usize) -> Result<(), ControlError> {
    let snap = m.cluster().snapshot();
    let Some(node) = snap.node(id) else {
        return Err(ControlError::NoSuchNode(id.to_string()));
    };
    if node.status != Status::Down {
        return Err(ControlError::Conflict(format!(
            "{} is attached: only a detached node is recovered (detach it first)",
            node.name
        )));
    }
    let primary = snap
        .primary()
        .ok_or_else(|| ControlError::Conflict("no primary is known to recover from".into()))?
        .id;
    // A configured command wins, as failover_command and
    // follow_primary_command do: the operator chose how nodes are rebuilt.
    let how = match (
        m.config().failover.recovery_command.clone(),
        local_dir(m, id),
    ) {
        (Some(cmd), _) => How::Command(cmd),
        (None, Some(dir)) => How::Rebuild(dir),
        (None, None) => {
            return Err(ControlError::Conflict(format!(
                "recovery of {} needs its data directory on this machine (backends[{id}].data_directory) or failover.recovery_command",
                node.name
            )));
        }
    };
    let started = std::time::Instant::now();
    tracing::warn!(node = %node.name, primary = %m.target(primary).name, "online recovery started");
    // The node is stopped and started on purpose: its failing checks must
    // not be reported, or a report queued meanwhile would detach it again
    // once attached.
    m.cluster().hold(id, true);
    let r = recover(m, id, primary, how).await;
    match r {
        Ok(()) => {
            // It just answered as a streaming standby: routed to at once,
            // without waiting for its next health check.
            m.cluster().record_check(id, Ok(Role::Standby));
            m.cluster().attach(id);
            m.persist();
            tracing::warn!(node = %m.target(id).name, elapsed_ms = started.elapsed().as_millis() as u64, "online recovery done: node attached as a standby");
        }
        Err(_) => m.cluster().hold(id, false),
    }
    r.map_err(ControlError::from)
}

/// How a node is rebuilt.
enum How {
    /// `failover.recovery_command`.
    Command(String),
    /// Built in, on this data directory.
    Rebuild(PathBuf),
}

/// Rebuilds `id` as a standby of `primary` and waits until it caught up.
async fn recover(m: &Manager, id: usize, primary: usize, how: How) -> Result<(), ActionError> {
    let cfg = m.config();
    match how {
        How::Command(cmd) => {
            let vars = m.vars(id, Some(primary), None);
            command::shell(&command::expand(&cmd, &vars), cfg.failover.recovery_timeout).await?;
        }
        How::Rebuild(dir) => rebuild(m, id, primary, &dir).await?,
    }
    wait_caught_up(
        m,
        id,
        primary,
        cfg.failover.recovery_timeout,
        cfg.failover.recovery_max_lag_bytes,
    )
    .await
}

async fn rebuild(m: &Manager, id: usize, primary: usize, dir: &Path) -> Result<(), ActionError> {
    let tools = m.tools();
    // Fails early when no replication user is configured.
    m.primary_conninfo(primary)?;
    tools.stop(dir).await?;
    let saved: Vec<(&str, String)> = OWN_FILES
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok().map(|c| (*f, c)))
        .collect();
    let hc = m.hc();
    let p = m.target(primary);
    let source = format!(
        "host={} port={} user={} dbname={}",
        p.host, p.port, hc.user, hc.database
    );
    m.connect(primary).await?.checkpoint().await?;
    let d = dir.to_string_lossy();
    let password = m
        .cluster()
        .check_password(primary, &p.host, p.port, &hc)
        .await
        .map_err(|reason| ActionError::Connect {
            node: p.name.clone(),
            reason,
        })?
        .unwrap_or_default();
    // The tools reach the primary as strictly as tidepool does.
    let tls_env = m
        .cluster()
        .backend(primary)
        .map(|b| b.tls(&m.config().backend_defaults).libpq_env())
        .unwrap_or_default();
    let env = |password: &str| -> Vec<(String, String)> {
        let mut env = vec![("PGPASSWORD".to_string(), password.to_string())];
        env.extend(tls_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    };
    let rewind_env = env(&password);
    let rewind_env: Vec<(&str, &str)> = rewind_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let rewound = tools
        .run(
            dir,
            "pg_rewind",
            &["-D", &d, "--source-server", &source],
            &rewind_env,
        )
        .await;
    if let Err(e) = rewound {
        tracing::warn!(error = %e, "pg_rewind failed; taking a base backup instead");
        clear_dir(dir)?;
        let cfg = m.config();
        let user = cfg.failover.replication_user.clone().unwrap_or_default();
        let repl = format!("host={} port={} user={}", p.host, p.port, user);
        let password = cfg
            .failover
            .replication_password
            .clone()
            .unwrap_or_default();
        let backup_env = env(&password);
        let backup_env: Vec<(&str, &str)> = backup_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        tools
            .run(
                dir,
                "pg_basebackup",
                &["-D", &d, "-d", &repl, "-X", "stream", "-c", "fast"],
                &backup_env,
            )
            .await?;
    }
    for (f, contents) in &saved {
        write_owned(dir, &dir.join(f), contents, false)?;
    }
    start_as_standby(m, id, dir, primary).await
}

/// Removes everything inside `dir`, keeping `dir` itself (and its owner).
fn clear_dir(dir: &Path) -> Result<(), ActionError> {
    let fail =
        |e: std::io::Error| ActionError::Refused(format!("cannot empty {}: {e}", dir.display()));
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path).map_err(fail)?;
        } else {
            std::fs::remove_file(&path).map_err(fail)?;
        }
    }
    Ok(())
}

/// Waits until `id` streams and lags `primary` by at most `max_lag` bytes.
async fn wait_caught_up(
    m: &Manager,
    id: usize,
    primary: usize,
    timeout: Duration,
    max_lag: u64,
) -> Result<(), ActionError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last;
    // A receiver that cannot follow the primary's timeline streams for a
    // moment and fails again: ask for a few good answers in a row.
    let mut good = 0;
    loop {
        match check_lag(m, id, primary).await {
            Ok(Some(lag)) if lag <= max_lag => {
                good += 1;
                if good >= 3 {
                    return Ok(());
                }
                last = format!("{lag} bytes behind");
            }
            Ok(Some(lag)) => {
                good = 0;
                last = format!("{lag} bytes behind");
            }
            Ok(None) => {
                good = 0;
                last = "not streaming on the primary's timeline yet".into();
            }
            Err(e) => {
                good = 0;
                last = e.to_string();
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ActionError::Refused(format!(
                "{} did not catch up within {timeout:?}: {last}",
                m.target(id).name
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn check_lag(m: &Manager, id: usize, primary: usize) -> Result<Option<u64>, ActionError> {
    let c = m.connect(id).await?;
    let p = m.connect(primary).await?;
    if c.streaming_timeline().await? != Some(p.timeline().await?) {
        return Ok(None);
    }
    let replay = c.position(id).await?.replay.unwrap_or_default();
    let current = p.current_lsn().await?;
    Ok(Some(current.0.saturating_sub(replay.0)))
}
