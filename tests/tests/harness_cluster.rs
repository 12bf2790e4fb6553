//! The test bed itself: clusters stream, authenticate as documented, run
//! side by side and leave nothing behind.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use tidepool_tests::{PgCluster, PgClusterOpts, Role, minimal_config, wait_for, wait_until};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Pids of live (non-zombie) processes whose working directory lies under
/// `dir`: every PostgreSQL server process works in its data directory.
fn processes_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true);
        if cwd.starts_with(dir) && !zombie {
            pids.push(pid);
        }
    }
    pids
}

fn wait_replicated(cluster: &PgCluster, db: &str, sql: &str, expected: &str) -> Result<()> {
    for standby in cluster.standbys() {
        wait_for(
            TIMEOUT,
            &format!("{sql} = {expected} on {}", standby.name),
            || {
                let got = cluster.psql_db(standby, db, sql)?;
                if got != expected {
                    bail!("{} answered {got:?}", standby.name);
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}

#[test]
fn primary_streams_to_two_standbys_and_writes_reach_both() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(2)).unwrap();
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.primary().role, Role::Primary);
    assert_eq!(cluster.standbys().len(), 2);

    let replicas = cluster
        .psql(
            cluster.primary(),
            "SELECT string_agg(application_name, ',' ORDER BY application_name) \
             FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .unwrap();
    assert_eq!(replicas, "pg1,pg2");
    for standby in cluster.standbys() {
        assert_eq!(
            cluster.psql(standby, "SELECT pg_is_in_recovery()").unwrap(),
            "t"
        );
    }

    cluster
        .psql_db(
            cluster.primary(),
            "app",
            "CREATE TABLE t (v text); INSERT INTO t VALUES ('hello')",
        )
        .unwrap();
    wait_replicated(&cluster, "app", "SELECT string_agg(v, ',') FROM t", "hello").unwrap();
}

#[tokio::test]
async fn users_log_in_over_tcp_with_their_auth_methods() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
    let primary = cluster.primary();

    // How the passwords are stored decides the method md5 lines accept.
    let stored = cluster
        .psql(
            primary,
            "SELECT string_agg(rolname || '=' || left(coalesce(rolpassword, 'none'), 5), ',' ORDER BY rolname) \
             FROM pg_authid WHERE rolname IN ('app', 'md5user', 'trustuser')",
        )
        .unwrap();
    let parts: Vec<&str> = stored.split(',').collect();
    assert_eq!(parts[0], "app=SCRAM", "{stored}");
    assert!(parts[1].starts_with("md5user=md5"), "{stored}");
    assert_eq!(parts[2], "trustuser=none", "{stored}");

    for (user, password) in [
        ("app", "app"),
        ("md5user", "md5pass"),
        ("trustuser", ""),
        ("postgres", "postgres"),
    ] {
        let client = cluster
            .connect(primary, user, password, "app")
            .await
            .unwrap();
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
    }

    for (user, password) in [
        ("app", "wrong"),
        ("md5user", "wrong"),
        ("app", ""),
        ("nosuchuser", "x"),
    ] {
        let err = cluster.connect(primary, user, password, "app").await.err();
        assert!(
            err.is_some(),
            "{user} with password {password:?} must be refused"
        );
    }
}

#[test]
fn crashed_and_stopped_nodes_come_back() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(1)).unwrap();
    let standby = cluster.standbys()[0].name.clone();

    cluster.kill9(&standby).unwrap();
    assert!(!cluster.is_running(&standby).unwrap());
    assert!(
        cluster
            .node(&standby)
            .data_dir
            .join("postmaster.pid")
            .exists(),
        "a crash leaves its pid file"
    );
    cluster.start_node(&standby).unwrap();
    assert_eq!(cluster.role(&standby).unwrap(), Role::Standby);

    let primary = cluster.primary().name.clone();
    cluster.stop_node(&primary).unwrap();
    assert!(!cluster.is_running(&primary).unwrap());
    cluster.start_node(&primary).unwrap();
    cluster.wait_streaming().unwrap();
    cluster
        .psql_db(
            &primary,
            "app",
            "CREATE TABLE after_restart (v int); INSERT INTO after_restart VALUES (7)",
        )
        .unwrap();
    wait_replicated(&cluster, "app", "SELECT sum(v) FROM after_restart", "7").unwrap();

    cluster.promote(&standby).unwrap();
    assert_eq!(cluster.role(&standby).unwrap(), Role::Primary);
    cluster.stop_node(&primary).unwrap();
    assert_eq!(cluster.current_primary().unwrap().name, standby);
}

#[test]
fn dropping_a_cluster_leaves_no_postgres_process() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(2)).unwrap();
    let dir = cluster.dir().to_path_buf();
    assert!(processes_under(&dir).len() >= 3);
    // A crashed node (stale postmaster.pid) must not stop the clean-up.
    cluster.kill9(&cluster.standbys()[1].name).unwrap();
    drop(cluster);
    wait_until(
        Duration::from_secs(10),
        "every server process to exit",
        || processes_under(&dir).is_empty(),
    )
    .unwrap();
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn clusters_run_side_by_side() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| PgCluster::start(PgClusterOpts::standbys(1)));
        let b = s.spawn(|| PgCluster::start(PgClusterOpts::standbys(1)));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let ports_a: Vec<u16> = a.nodes().iter().map(|n| n.port).collect();
    assert!(b.nodes().iter().all(|n| !ports_a.contains(&n.port)));

    a.psql_db(
        a.primary(),
        "app",
        "CREATE TABLE which (v text); INSERT INTO which VALUES ('a')",
    )
    .unwrap();
    b.psql_db(
        b.primary(),
        "app",
        "CREATE TABLE which (v text); INSERT INTO which VALUES ('b')",
    )
    .unwrap();
    wait_replicated(&a, "app", "SELECT v FROM which", "a").unwrap();
    wait_replicated(&b, "app", "SELECT v FROM which", "b").unwrap();
}

#[test]
fn backends_toml_lists_every_node_for_tidepool() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(1)).unwrap();
    let config = minimal_config(&cluster, 6432, 6433);
    let parsed: toml::Table = toml::from_str(&config).unwrap();
    let backends = parsed["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    for (backend, node) in backends.iter().zip(cluster.nodes()) {
        assert_eq!(backend["name"].as_str(), Some(node.name.as_str()));
        assert_eq!(backend["port"].as_integer(), Some(i64::from(node.port)));
        assert_eq!(backend["flag"].as_str(), Some("allow_to_failover"));
    }
    assert_eq!(parsed["users"][0]["name"].as_str(), Some("app"));
}
