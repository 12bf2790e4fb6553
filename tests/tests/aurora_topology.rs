//! A `[[clusters]]` entry against the closest stand-in for Aurora that runs
//! here: PostgreSQL instances on distinct loopback addresses sharing one
//! port, each answering `aurora_version()` and an `aurora_replica_status()`
//! that reads the topology the test dictates (a JSON file in the
//! instance's data directory, so instances may disagree, as they do in the
//! middle of a real failover). The instances' identifiers are the last
//! octet of their address, mapped by `instance_host_pattern =
//! "127.0.0.?"`. The cluster endpoint is a forwarder that keeps leading to
//! the first writer for the whole test, as a cluster endpoint's DNS name
//! does until its TTL runs out.

mod failover_support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use failover_support::{Writer, acked, outage, wait};
use tidepool_tests::{
    Forwarder, PgCluster, PgClusterOpts, Tidepool, TidepoolOpts, free_port, free_port_on_all,
    moto::Moto,
};

const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const ENDPOINT: &str = "127.0.0.10";

/// The stand-in's functions, made on the primary (standbys replay them).
const STAND_IN: &str = r#"
CREATE FUNCTION aurora_version() RETURNS text LANGUAGE sql AS $$ SELECT '16.4.stand-in' $$;
CREATE FUNCTION aurora_replica_status(
    OUT server_id text, OUT session_id text, OUT replica_lag_in_msec real,
    OUT last_update_timestamp timestamptz)
RETURNS SETOF record LANGUAGE sql SECURITY DEFINER AS $$
  SELECT t.server_id, t.session_id, t.replica_lag_in_msec, now()
  FROM json_to_recordset(pg_read_file('aurora_topology.json')::json)
       AS t(server_id text, session_id text, replica_lag_in_msec real)
$$;
"#;

/// One instance of a dictated topology: (identifier, writer, lag in ms).
type Dictated<'a> = [(&'a str, bool, f64)];

struct Bed {
    cluster: PgCluster,
    tidepool: Tidepool,
    _endpoint: Forwarder,
    port: u16,
}

impl Bed {
    /// `nodes` instances (primary first), the stand-in installed, each
    /// dictating `topology`; tidepool in front with `extra` lines.
    fn start(nodes: usize, sync: bool, topology: &Dictated, extra: &str) -> Result<Bed> {
        Self::start_on(
            &HOSTS[..nodes],
            "127.0.0.?",
            (sync, false),
            topology,
            extra,
            TidepoolOpts::default(),
        )
    }

    /// Instances on `hosts` (primary first) named after `pattern`; the
    /// cluster (synchronous, TLS only) as `sync_tls` says.
    fn start_on(
        hosts: &[&str],
        pattern: &str,
        (sync, tls): (bool, bool),
        topology: &Dictated,
        extra: &str,
        opts: TidepoolOpts,
    ) -> Result<Bed> {
        let nodes = hosts.len();
        let hosts: Vec<&str> = hosts.to_vec();
        let mut all = hosts.clone();
        all.push(ENDPOINT);
        let port = free_port_on_all(&all);
        let cluster = PgCluster::start(PgClusterOpts {
            standbys: nodes - 1,
            sync,
            tls,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ports: vec![port; nodes],
            ..PgClusterOpts::default()
        })?;
        let extra = if tls {
            format!(
                "{extra}\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"",
                cluster.tls_dir().join("ca.crt").display()
            )
        } else {
            extra.to_string()
        };
        let primary = cluster.primary().name.clone();
        cluster.psql(&primary, STAND_IN)?;
        cluster.psql_db(
            &primary,
            "app",
            "CREATE TABLE ticks (seq bigint PRIMARY KEY, at timestamptz DEFAULT now()); \
             ALTER TABLE ticks OWNER TO app",
        )?;
        cluster.wait_streaming()?;
        let bed_nodes: Vec<String> = cluster.nodes().iter().map(|n| n.name.clone()).collect();
        for n in &bed_nodes {
            dictate(&cluster, n, topology)?;
        }
        let endpoint = Forwarder::start(
            format!("{ENDPOINT}:{port}").parse()?,
            format!("{}:{port}", hosts[0]).parse()?,
        )?;
        let toml = format!(
            r#"[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"

[pool]
mode = "transaction"
primary_wait_timeout = "10s"

[health_check]
password = "postgres"
period = "1s"
retry_delay = "200ms"

[load_balancing]
enabled = true
statement_level = true
delay_threshold_by_time = "1s"

[[clusters]]
name = "orders"
endpoint = "{ENDPOINT}"
port = {port}
instance_host_pattern = "{pattern}"
topology_period = "200ms"
{extra}

[[users]]
name = "app"
password = "app"

[[users]]
name = "postgres"
password = "postgres"
"#,
            listen = free_port(),
            admin = free_port(),
        );
        let tidepool = Tidepool::start_with(&toml, opts)?;
        Ok(Bed {
            cluster,
            tidepool,
            _endpoint: endpoint,
            port,
        })
    }

    fn node_name(&self, host: &str) -> String {
        self.cluster
            .nodes()
            .iter()
            .find(|n| n.host == host)
            .map(|n| n.name.clone())
            .expect("a node on that address")
    }

    /// Every instance dictates `topology`.
    fn dictate_all(&self, topology: &Dictated) -> Result<()> {
        for n in self.cluster.nodes() {
            if self.cluster.is_running(&n.name)? {
                dictate(&self.cluster, &n.name, topology)?;
            }
        }
        Ok(())
    }

    /// GET /v1/nodes: name → (status, role, discovered_by).
    fn nodes(&self) -> Result<BTreeMap<String, (String, String, String)>> {
        let (code, body) = self.tidepool.http_get("/v1/nodes")?;
        anyhow::ensure!(code == 200, "GET /v1/nodes: {code} {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let primary = v["primary"].as_str().map(str::to_string);
        Ok(v["nodes"]
            .as_array()
            .context("nodes")?
            .iter()
            .map(|n| {
                let name = n["name"].as_str().unwrap_or_default().to_string();
                let role = if primary.as_deref() == Some(name.as_str()) {
                    "primary".to_string()
                } else {
                    n["role"].as_str().unwrap_or_default().to_string()
                };
                (
                    name,
                    (
                        n["status"].as_str().unwrap_or_default().to_string(),
                        role,
                        n["source"].as_str().unwrap_or_default().to_string(),
                    ),
                )
            })
            .collect())
    }

    /// The addresses that served `n` single-statement reads through
    /// tidepool, with how many each.
    async fn readers(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let (client, conn) = tokio_postgres::connect(
            &self.tidepool.conn_string("app", "app", "app"),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let row = client
                .query_one("SELECT host(inet_server_addr())", &[])
                .await?;
            *seen.entry(row.get::<_, String>(0)).or_default() += 1;
        }
        Ok(seen)
    }

    /// Waits until reads spread over exactly `hosts`.
    async fn wait_reads_on(&self, hosts: &[&str], what: &str) -> Result<()> {
        let want: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut last = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            last = self.readers(60).await?;
            if last.keys().cloned().collect::<Vec<_>>() == want {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!(
            "{what}: reads went to {last:?}, expected {want:?}\n{}\n{}",
            serde_json::to_string(&self.nodes()?)?,
            self.tidepool.log_tail(40)
        )
    }
}

/// An Aurora cluster `orders` in moto with `instances`, and tidepool's
/// environment pointing its AWS SDK there.
fn moto_cluster(moto: &Moto, instances: &[&str], mut opts: TidepoolOpts) -> Result<TidepoolOpts> {
    let ids: Vec<String> = instances.iter().map(|i| format!("'{i}'")).collect();
    moto.python(&format!(
        "rds = boto3.client('rds', **kw)\n\
         rds.create_db_cluster(DBClusterIdentifier='orders', Engine='aurora-postgresql', \
           MasterUsername='tidepool', MasterUserPassword='password-1')\n\
         for i in [{}]:\n\
         \x20   rds.create_db_instance(DBInstanceIdentifier=i, DBClusterIdentifier='orders', \
           Engine='aurora-postgresql', DBInstanceClass='db.r6g.large')\n\
         print('ok')",
        ids.join(", ")
    ))?;
    for (k, v) in [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        opts.env.push((k.into(), v.into()));
    }
    Ok(opts)
}

impl Bed {
    /// Waits until `writer` takes writes and `reader` is an answering
    /// reader.
    async fn wait_writer_and_reader(&self, writer: &str, reader: &str) -> Result<()> {
        wait(Duration::from_secs(20), "writer and reader", || {
            let n = self.nodes()?;
            Ok(n.get(writer).is_some_and(|n| n.1 == "primary")
                && n.get(reader)
                    .is_some_and(|n| n.0 == "up" && n.1 == "standby"))
        })
        .await
    }
}

/// Makes instance `node` answer `topology` (written whole, then renamed).
fn dictate(cluster: &PgCluster, node: &str, topology: &Dictated) -> Result<()> {
    let rows: Vec<serde_json::Value> = topology
        .iter()
        .map(|(id, writer, lag)| {
            serde_json::json!({
                "server_id": id,
                "session_id": if *writer { "MASTER_SESSION_ID".to_string() } else { format!("reader-{id}") },
                "replica_lag_in_msec": lag,
            })
        })
        .collect();
    let dir = &cluster.node(node).data_dir;
    let tmp = dir.join("aurora_topology.json.new");
    std::fs::write(&tmp, serde_json::to_vec(&rows)?)?;
    std::fs::rename(&tmp, dir.join("aurora_topology.json"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_join_and_leave_the_topology_take_and_lose_reads() -> Result<()> {
    // Instance 4 runs but is not in the topology yet.
    let bed = Bed::start(3, false, &[("2", true, 0.0), ("3", false, 0.0)], "")?;
    wait(Duration::from_secs(20), "the writer and one reader", || {
        let n = bed.nodes()?;
        Ok(n.get("2").is_some_and(|n| n.0 == "up" && n.1 == "primary")
            && n.get("3").is_some_and(|n| n.0 == "up" && n.1 == "standby")
            && !n.contains_key("4"))
    })
    .await?;
    let n = bed.nodes()?;
    assert_eq!(n["2"].2, "aurora_replica_status()", "{n:?}");
    // SHOW POOL_NODES: how each was found, and the topology's delay.
    let (client, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    let rows: Vec<tokio_postgres::SimpleQueryRow> = client
        .simple_query("SHOW POOL_NODES")
        .await?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.get("discovered_by"), Some("aurora_replica_status()"));
        assert_eq!(r.get("replication_delay"), Some("0.000"));
    }
    // writer_weight = 0: reads go to the reader only.
    bed.wait_reads_on(&["127.0.0.3"], "one reader").await?;

    // A reader joins at run time, without a reload.
    bed.dictate_all(&[("2", true, 0.0), ("3", false, 0.0), ("4", false, 0.0)])?;
    bed.wait_reads_on(&["127.0.0.3", "127.0.0.4"], "a reader joined")
        .await?;

    // A lagging reader loses its reads (delay_threshold_by_time = 1s).
    bed.dictate_all(&[("2", true, 0.0), ("3", false, 5000.0), ("4", false, 10.0)])?;
    bed.wait_reads_on(&["127.0.0.4"], "reader 3 lags").await?;
    let delays: Vec<(String, String)> = client
        .simple_query("SHOW POOL_NODES")
        .await?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get("hostname").unwrap_or_default().to_string(),
                r.get("replication_delay").unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .collect();
    assert!(
        delays.contains(&("127.0.0.3".to_string(), "5.000".to_string())),
        "{delays:?}"
    );

    // A reader leaves the topology: it is down, reads go elsewhere.
    bed.dictate_all(&[("2", true, 0.0), ("3", false, 0.0)])?;
    bed.wait_reads_on(&["127.0.0.3"], "reader 4 left").await?;
    let n = bed.nodes()?;
    assert_eq!(n["4"].0, "down", "{n:?}");

    // With every reader over the threshold, reads fall back to the writer.
    bed.dictate_all(&[("2", true, 0.0), ("3", false, 9000.0)])?;
    bed.wait_reads_on(&["127.0.0.2"], "no reader within the threshold")
        .await?;

    // It comes back.
    bed.dictate_all(&[("2", true, 0.0), ("3", false, 0.0), ("4", false, 0.0)])?;
    bed.wait_reads_on(&["127.0.0.3", "127.0.0.4"], "reader 4 is back")
        .await?;
    let metric = |name: &str| -> Result<f64> {
        let (_, body) = bed.tidepool.http_get("/metrics")?;
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    };
    assert!(metric("tidepool_cluster_instances_joined_total")? >= 4.0);
    assert!(metric("tidepool_cluster_instances_left_total")? >= 1.0);
    assert!(metric("tidepool_topology_reads_total")? > 10.0);
    Ok(())
}

/// Promotes `node`. Its commits stop waiting for a synchronous standby:
/// Aurora's storage, not a standby, makes a commit durable.
fn promote(bed: &Bed, node: &str) -> Result<()> {
    bed.cluster.promote(node)?;
    bed.cluster
        .psql(node, "ALTER SYSTEM SET synchronous_standby_names = ''")?;
    bed.cluster.psql(node, "SELECT pg_reload_conf()")?;
    Ok(())
}

/// Kills the writer, dictates the new topology on the survivor before it
/// is promoted (so it claims the writer's role while still in recovery,
/// which must not be enough), then promotes it.
/// Returns when the writer was killed and when the new one was promoted.
async fn fail_over(bed: &Bed, old: &'static str, new: &'static str) -> Result<(Instant, Instant)> {
    let old_node = bed.node_name(&format!("127.0.0.{old}"));
    let new_node = bed.node_name(&format!("127.0.0.{new}"));
    bed.cluster.kill9(&old_node)?;
    let at = Instant::now();
    dictate(
        &bed.cluster,
        &new_node,
        &[(new, true, 0.0), (old, false, 0.0)],
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = bed.nodes()?;
    assert_ne!(
        n[new].1, "primary",
        "an instance in recovery was made the writer: {n:?}"
    );
    promote(bed, &new_node)?;
    Ok((at, Instant::now()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_new_writer_while_the_endpoint_still_leads_to_the_dead_one() -> Result<()>
{
    let bed = Bed::start(2, true, &[("2", true, 0.0), ("3", false, 0.0)], "")?;
    wait(Duration::from_secs(20), "the writer", || {
        Ok(bed
            .nodes()?
            .get("2")
            .is_some_and(|n| n.0 == "up" && n.1 == "primary"))
    })
    .await?;
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (at, promoted) = fail_over(&bed, "2", "3").await?;
    wait(Duration::from_secs(20), "writes on the new writer", || {
        Ok(bed.nodes()?.get("3").is_some_and(|n| n.1 == "primary"))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = writer.stop().await;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let gap = outage(&outcomes, at).with_context(|| {
        format!(
            "writes never resumed: {failed:?}\n{}",
            bed.tidepool.log_tail(40)
        )
    })?;
    let after_promotion = outcomes
        .iter()
        .find(|o| o.error.is_none() && o.at > promoted)
        .map(|o| o.at - promoted);
    eprintln!(
        "aurora stand-in: writes resumed after {gap:?} ({after_promotion:?} after the promotion); \
         {} of {} writes failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    assert!(gap < Duration::from_secs(5), "outage {gap:?}");
    assert!(
        failed.iter().all(|e| !e.starts_with("25006")),
        "a read-only answer reached the writer: {failed:?}"
    );
    let new_node = bed.node_name("127.0.0.3");
    let on_disk = bed
        .cluster
        .psql_db(&new_node, "app", "SELECT seq FROM ticks")?;
    let on_disk: Vec<i64> = on_disk.lines().filter_map(|l| l.parse().ok()).collect();
    for s in acked(&outcomes) {
        assert!(on_disk.contains(&s), "acknowledged write {s} lost");
    }
    // The endpoint still leads to the dead writer.
    let dead: SocketAddr = format!("{ENDPOINT}:{}", bed.port).parse()?;
    let through_endpoint = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_postgres::connect(
            &format!(
                "host={} port={} user=app password=app dbname=app",
                dead.ip(),
                dead.port()
            ),
            tokio_postgres::NoTls,
        ),
    )
    .await;
    assert!(
        !matches!(through_endpoint, Ok(Ok(_))),
        "the endpoint should still lead to the dead writer"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_turns_read_only_never_answers_a_write_with_25006() -> Result<()> {
    let bed = Bed::start(2, true, &[("2", true, 0.0), ("3", false, 0.0)], "")?;
    wait(Duration::from_secs(20), "the writer", || {
        Ok(bed
            .nodes()?
            .get("2")
            .is_some_and(|n| n.0 == "up" && n.1 == "primary"))
    })
    .await?;
    let writer = Writer::start(
        bed.tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = bed.node_name("127.0.0.2");
    let new = bed.node_name("127.0.0.3");
    // The old writer keeps answering, read-only, and its own view still
    // names it the writer (read-only is enough to be no writer); the new
    // one is promoted.
    bed.cluster
        .psql(&old, "ALTER SYSTEM SET default_transaction_read_only = on")?;
    bed.cluster.psql(&old, "SELECT pg_reload_conf()")?;
    let at = Instant::now();
    promote(&bed, &new)?;
    dictate(&bed.cluster, &new, &[("3", true, 0.0), ("2", false, 0.0)])?;
    wait(Duration::from_secs(20), "writes on the new writer", || {
        Ok(bed.nodes()?.get("3").is_some_and(|n| n.1 == "primary"))
    })
    .await?;
    dictate(&bed.cluster, &old, &[("3", true, 0.0), ("2", false, 0.0)])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = writer.stop().await;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    let gap = outage(&outcomes, at).context("writes resumed")?;
    eprintln!("read-only writer: longest gap between writes {gap:?}");
    let on_new = bed.cluster.psql_db(&new, "app", "SELECT seq FROM ticks")?;
    let on_new: Vec<i64> = on_new.lines().filter_map(|l| l.parse().ok()).collect();
    for s in acked(&outcomes) {
        assert!(
            on_new.contains(&s),
            "acknowledged write {s} not on the writer"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_asks_rds_to_fail_over_to_the_named_instance() -> Result<()> {
    // RDS instance identifiers begin with a letter: the reader is
    // `localhost` (pattern "?" keeps it a host name that resolves here).
    let moto = Moto::start(std::net::Ipv4Addr::LOCALHOST)?;
    let opts = moto_cluster(&moto, &["orders-1", "localhost"], TidepoolOpts::default())?;
    let topology = [("127.0.0.2", true, 0.0), ("localhost", false, 0.0)];
    let bed = Bed::start_on(
        &["127.0.0.2", "127.0.0.1"],
        "?",
        (false, false),
        &topology,
        "kind = \"aurora\"\ncluster_identifier = \"orders\"",
        opts,
    )?;
    bed.wait_writer_and_reader("127.0.0.2", "localhost").await?;
    let ctl = |args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new(Tidepool::binary()?)
            .arg("ctl")
            .args([
                "--url",
                &bed.tidepool.admin_url(),
                "--json",
                "--timeout",
                "60s",
            ])
            .args(args)
            .output()?)
    };
    let out = ctl(&["promote", "localhost", "--switchover"])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bed.tidepool.log_tail(20)
    );
    let v: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(v["writer_before"], "orders-1", "{v}");
    assert_eq!(v["writer_after"], "localhost", "{v}");
    let writer = moto.python(
        "rds = boto3.client('rds', **kw)\n\
         c = rds.describe_db_clusters(DBClusterIdentifier='orders')['DBClusters'][0]\n\
         print([m['DBInstanceIdentifier'] for m in c['DBClusterMembers'] if m['IsClusterWriter']][0])",
    )?;
    assert_eq!(writer, "localhost");
    // tidepool promoted nothing itself: the database still names its writer.
    let n = bed.nodes()?;
    assert_eq!(n["127.0.0.2"].1, "primary", "{n:?}");
    // The writer is not a reader to fail over to.
    let out = ctl(&["promote", "127.0.0.2"])?;
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("only an attached, answering standby"),
        "{said}"
    );
    Ok(())
}

/// An RDS Multi-AZ DB cluster's functions: `rds_tools.show_topology()` and
/// the writer's resource id, read from `multiaz_topology.json`.
const MULTI_AZ_STAND_IN: &str = r#"
CREATE SCHEMA rds_tools;
CREATE FUNCTION rds_tools.show_topology(text DEFAULT '')
RETURNS TABLE (id text, endpoint text, port int) LANGUAGE sql SECURITY DEFINER AS $$
  SELECT t.id, t.endpoint, t.port
  FROM json_to_recordset(pg_read_file('multiaz_topology.json')::json -> 'instances')
       AS t(id text, endpoint text, port int)
$$;
CREATE FUNCTION rds_tools.multi_az_db_cluster_source_dbi_resource_id()
RETURNS TABLE (multi_az_db_cluster_source_dbi_resource_id text)
LANGUAGE sql SECURITY DEFINER AS $$
  SELECT pg_read_file('multiaz_topology.json')::json ->> 'writer'
$$;
"#;

/// Makes `node` answer a Multi-AZ topology: `writer` (a resource id) and
/// every instance as (resource id, address).
fn dictate_multi_az(
    cluster: &PgCluster,
    node: &str,
    port: u16,
    writer: &str,
    instances: &[(&str, &str)],
) -> Result<()> {
    let v = serde_json::json!({
        "writer": writer,
        "instances": instances
            .iter()
            .map(|(id, host)| serde_json::json!({"id": id, "endpoint": host, "port": port}))
            .collect::<Vec<_>>(),
    });
    let dir = &cluster.node(node).data_dir;
    let tmp = dir.join("multiaz_topology.json.new");
    std::fs::write(&tmp, serde_json::to_vec(&v)?)?;
    std::fs::rename(&tmp, dir.join("multiaz_topology.json"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_az_db_cluster_is_told_apart_and_its_writer_followed() -> Result<()> {
    let hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let mut all = hosts.to_vec();
    all.push(ENDPOINT);
    let port = free_port_on_all(&all);
    let cluster = PgCluster::start(PgClusterOpts {
        standbys: 2,
        sync: true,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ports: vec![port; 3],
        ..PgClusterOpts::default()
    })?;
    let primary = cluster.primary().name.clone();
    cluster.psql(&primary, MULTI_AZ_STAND_IN)?;
    cluster.psql_db(
        &primary,
        "app",
        "CREATE TABLE ticks (seq bigint PRIMARY KEY, at timestamptz DEFAULT now()); \
         ALTER TABLE ticks OWNER TO app",
    )?;
    cluster.wait_streaming()?;
    let ids = [("db-a", hosts[0]), ("db-b", hosts[1]), ("db-c", hosts[2])];
    let names: Vec<String> = cluster.nodes().iter().map(|n| n.name.clone()).collect();
    for n in &names {
        dictate_multi_az(&cluster, n, port, "db-a", &ids)?;
    }
    let _endpoint = Forwarder::start(
        format!("{ENDPOINT}:{port}").parse()?,
        format!("{}:{port}", hosts[0]).parse()?,
    )?;
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
[pool]
primary_wait_timeout = "10s"
[health_check]
password = "postgres"
[[clusters]]
name = "billing"
endpoint = "{ENDPOINT}"
port = {port}
topology_period = "200ms"
[[users]]
name = "app"
password = "app"
"#,
        listen = free_port(),
        admin = free_port(),
    );
    let tidepool = Tidepool::start(&toml)?;
    let nodes = || -> Result<serde_json::Value> {
        let (_, body) = tidepool.http_get("/v1/nodes")?;
        Ok(serde_json::from_str(&body)?)
    };
    wait(Duration::from_secs(20), "three instances", || {
        let v = nodes()?;
        Ok(v["primary"] == "127.0.0.2"
            && v["nodes"].as_array().is_some_and(|ns| {
                ns.len() == 3
                    && ns
                        .iter()
                        .all(|n| n["source"] == "rds_tools.show_topology()")
            }))
    })
    .await?;
    assert!(tidepool.log().contains("kind=\"multi_az_cluster\""));
    let writer = Writer::start(
        tidepool.conn_string("app", "app", "app"),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // RDS fails the writer over to db-b.
    let (old, new) = (names[0].clone(), names[1].clone());
    cluster.kill9(&old)?;
    let at = Instant::now();
    cluster.promote(&new)?;
    cluster.psql(&new, "ALTER SYSTEM SET synchronous_standby_names = ''")?;
    cluster.psql(&new, "SELECT pg_reload_conf()")?;
    for n in &names[1..] {
        dictate_multi_az(&cluster, n, port, "db-b", &ids)?;
    }
    wait(Duration::from_secs(20), "writes on db-b", || {
        Ok(nodes()?["primary"] == "127.0.0.3")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = writer.stop().await;
    let gap = outage(&outcomes, at).context("writes resumed")?;
    eprintln!("multi-az stand-in: writes resumed after {gap:?}");
    assert!(gap < Duration::from_secs(5), "outage {gap:?}");
    let on_disk = cluster.psql_db(&new, "app", "SELECT seq FROM ticks")?;
    let on_disk: Vec<i64> = on_disk.lines().filter_map(|l| l.parse().ok()).collect();
    for s in acked(&outcomes) {
        assert!(on_disk.contains(&s), "acknowledged write {s} lost");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_found_and_served_over_verified_tls() -> Result<()> {
    // The instances take TLS only (as RDS with rds.force_ssl);
    // tidepool verifies each instance's certificate against its address.
    let bed = Bed::start_on(
        &HOSTS[..2],
        "127.0.0.?",
        (false, true),
        &[("2", true, 0.0), ("3", false, 0.0)],
        "",
        TidepoolOpts::default(),
    )?;
    bed.wait_writer_and_reader("2", "3").await?;
    let (client, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    client
        .execute("INSERT INTO ticks (seq) VALUES (1)", &[])
        .await?;
    bed.wait_reads_on(&["127.0.0.3"], "reads on the reader")
        .await?;
    for n in bed.cluster.nodes() {
        let out = bed.cluster.psql(
            &n.name,
            "SELECT count(*) FILTER (WHERE NOT s.ssl) || '/' || count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name LIKE 'tidepool%' OR a.usename = 'app'",
        )?;
        let (plain, all) = out.split_once('/').context("count")?;
        assert_eq!(
            plain, "0",
            "plaintext connections from tidepool on {}",
            n.name
        );
        assert_ne!(all, "0", "tidepool connected to {}", n.name);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_names_the_instances_when_the_database_cannot_be_asked() -> Result<()> {
    // Nothing answers at the cluster endpoint: DescribeDBClusters (moto)
    // names the members, which join the table to be asked in turn. The
    // member is `localhost` so that its name resolves without DNS.
    let moto = Moto::start(std::net::Ipv4Addr::LOCALHOST)?;
    let opts = moto_cluster(
        &moto,
        &["localhost"],
        TidepoolOpts {
            wait_ready: false,
            ..TidepoolOpts::default()
        },
    )?;
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
[health_check]
password = "postgres"
connect_timeout = "500ms"
[[clusters]]
name = "orders"
kind = "aurora"
endpoint = "{ENDPOINT}"
port = {port}
instance_host_pattern = "?"
cluster_identifier = "orders"
[[users]]
name = "app"
password = "app"
"#,
        listen = free_port(),
        admin = free_port(),
        port = free_port_on_all(&[ENDPOINT, "127.0.0.1"]),
    );
    let tidepool = Tidepool::start_with(&toml, opts)?;
    wait(
        Duration::from_secs(30),
        "members from DescribeDBClusters",
        || {
            let (_, body) = tidepool.http_get("/v1/nodes")?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let mut found: Vec<(String, String, String)> = v["nodes"]
                .as_array()
                .context("nodes")?
                .iter()
                .map(|n| {
                    (
                        n["name"].as_str().unwrap_or_default().to_string(),
                        n["host"].as_str().unwrap_or_default().to_string(),
                        n["source"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            found.sort();
            Ok(found
                == [(
                    "localhost".to_string(),
                    "localhost".to_string(),
                    "DescribeDBClusters".to_string(),
                )])
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_read_only_setting_leaves_the_writer_alone() -> Result<()> {
    let bed = Bed::start(2, false, &[("2", true, 0.0), ("3", false, 0.0)], "")?;
    bed.wait_writer_and_reader("2", "3").await?;
    // A client whose sessions are read-only gets the server's 25006 (after
    // the watcher found the writer still writing), and other clients keep
    // writing to the same writer.
    let (ro, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    ro.batch_execute("SET default_transaction_read_only = on")
        .await?;
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        ro.execute("INSERT INTO ticks (seq) VALUES (1)", &[]),
    )
    .await
    .context("the refused write came back")?
    .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("25006"),
        "{e}"
    );
    let n = bed.nodes()?;
    assert_eq!(n["2"].1, "primary", "the writer stays: {n:?}");
    let (rw, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    rw.execute("INSERT INTO ticks (seq) VALUES (2)", &[])
        .await?;

    // An operator's detach of a reader holds across topology rounds; the
    // writer cannot be detached (AWS runs its failover).
    let (code, body) = bed.tidepool.http_post("/v1/nodes/3/detach")?;
    assert_eq!(code, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bed.nodes()?["3"].0, "down", "the topology undid the detach");
    let (code, body) = bed.tidepool.http_post("/v1/nodes/2/detach")?;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("managed cluster"), "{body}");
    Ok(())
}
