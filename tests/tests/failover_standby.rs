//! A standby killed under `pgbench -S` load, with reads load-balanced to
//! standbys: it is detached; pgbench's sessions, which read from the other
//! standby, and a client writing through the primary finish without an
//! error; a session that was reading from the killed standby is told with
//! a clear error and, reconnecting, is served by a healthy node.
//!
//! Who reads where is fixed by `app_name_redirect_preference_list`:
//! pgbench (application_name `bench`) reads from the surviving standby, the
//! `victim` client from the standby that is killed.

mod failover_support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use failover_support::{Extra, FailoverBed, Writer, wait};

/// A client of tidepool with `application_name`.
async fn client(bed: &FailoverBed, application_name: &str) -> Result<tokio_postgres::Client> {
    let conn = format!(
        "{} application_name={application_name}",
        bed.tidepool.conn_string("app", "app", "app")
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The port of the server that ran the client's read.
async fn read_port(client: &tokio_postgres::Client) -> Result<u16> {
    let row = client
        .query_one("SELECT inet_server_port()::int", &[])
        .await?;
    Ok(u16::try_from(row.get::<_, i32>(0))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_standby_is_detached_without_errors_for_sessions_not_using_it() -> Result<()> {
    let bed = FailoverBed::start_with(
        false,
        &Extra {
            rest: "[load_balancing]\napp_name_redirect_preference_list = \"bench:1,victim:2\"",
            ..Extra::default()
        },
    )?;
    let primary = bed.cluster.primary().name.clone();
    let (survivor, doomed) = (
        bed.cluster.nodes()[1].clone(),
        bed.cluster.nodes()[2].clone(),
    );
    let bin = bed.cluster.bindir()?;
    let p = bed.cluster.primary();
    let init = Command::new(bin.join("pgbench"))
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            &p.host,
            "-p",
            &p.port.to_string(),
        ])
        .args(["-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .output()?;
    anyhow::ensure!(init.status.success(), "pgbench -i: {init:?}");
    for standby in [&survivor.name, &doomed.name] {
        wait(
            Duration::from_secs(20),
            "pgbench tables on the standby",
            || {
                Ok(bed
                    .cluster
                    .psql_db(standby, "app", "SELECT count(*) FROM pgbench_accounts")
                    .is_ok_and(|n| n == "100000"))
            },
        )
        .await?;
    }

    // The victim reads from the standby that is about to die, in the
    // middle of a long statement when it does.
    let victim = client(&bed, "victim").await?;
    assert_eq!(read_port(&victim).await?, doomed.port);
    let long_read = tokio::spawn(async move {
        let r = victim
            .simple_query("SELECT count(*) FROM generate_series(1, 2000000000)")
            .await;
        (victim, r)
    });
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(50),
    );
    let bench = Command::new(bin.join("pgbench"))
        .args(["-S", "-n", "-T", "6", "-c", "4", "-j", "2"])
        .args(["-h", "127.0.0.1", "-p", &bed.tidepool.port().to_string()])
        .args(["-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .env("PGAPPNAME", "bench")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    bed.cluster.kill9(&doomed.name)?;
    wait(
        Duration::from_secs(20),
        "the standby to be detached",
        || Ok(bed.status(&doomed.name)? == "down"),
    )
    .await?;
    let reason = bed.detach_reason(&doomed.name)?;
    assert!(reason.contains("health check failed"), "{reason}");

    // The session that used the standby got a clear error ...
    let (victim, r) = tokio::time::timeout(Duration::from_secs(20), long_read).await??;
    let e = r.expect_err("the standby died under the victim's statement");
    let db = e
        .as_db_error()
        .with_context(|| format!("an ErrorResponse, not {e}"))?;
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(
        db.message().contains("lost the backend connection"),
        "{db:?}"
    );
    assert!(db.hint().is_some_and(|h| h.contains("reconnect")), "{db:?}");
    assert!(victim.is_closed());
    // ... and a new session is served by a node that is up.
    let victim = client(&bed, "victim").await?;
    assert_ne!(read_port(&victim).await?, doomed.port);

    // Sessions that did not use it: pgbench and the writer, no errors.
    let out = tokio::task::spawn_blocking(move || bench.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}\n{stderr}"
    );
    let processed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(processed > 0, "{stdout}");
    let detached = Instant::now();
    wait(Duration::from_secs(5), "writes after the detach", || {
        Ok(detached.elapsed() > Duration::from_secs(1))
    })
    .await?;
    let outcomes = writer.stop().await;
    let errors: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(outcomes.len() > 20);
    assert_eq!(
        bed.primary()?.as_deref(),
        Some(primary.as_str()),
        "no failover"
    );
    // pgbench's reads went to the surviving standby all along.
    let survivor_selects = bed.node(&survivor.name)?["selects"].as_u64().unwrap_or(0);
    assert!(
        survivor_selects >= processed,
        "{survivor_selects} < {processed}"
    );
    Ok(())
}
