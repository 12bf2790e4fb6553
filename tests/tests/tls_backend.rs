//! tidepool towards backends that accept TLS only (as RDS does with
//! `rds.force_ssl`): every connection it opens — pooled sessions, health
//! checks, lag sampling, the catalog, cancel requests — goes over TLS with
//! the backend's `sslmode`, and a mode the backend refuses is named in the
//! error.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tidepool_tests::{
    PgCluster, PgClusterOpts, Tidepool, TidepoolOpts, certs, free_port, wait_for, wait_until,
};

fn tls_cluster(standbys: usize) -> PgCluster {
    PgCluster::start(PgClusterOpts {
        standbys,
        tls: true,
        ..PgClusterOpts::default()
    })
    .expect("a TLS cluster starts")
}

/// tidepool for `cluster` with `backend_defaults` (TOML lines) and read
/// load balancing on.
fn config(cluster: &PgCluster, backend_defaults: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\n\
         [pool]\nmode = \"transaction\"\n\n\
         [health_check]\nuser = \"postgres\"\npassword = \"postgres\"\nperiod = \"500ms\"\nmax_retries = 0\n\
         timeout = \"10s\"\nconnect_timeout = \"10s\"\n\n\
         [load_balancing]\nenabled = true\nsr_check_period = \"200ms\"\nread_only_functions = [\"inet_server_port\"]\n\n\
         [backend_defaults]\n{backend_defaults}\n\n{}\n[[users]]\nname = \"app\"\npassword = \"app\"\n",
        free_port(),
        free_port(),
        cluster.backends_toml()
    )
}

async fn app(tp: &Tidepool) -> Result<tokio_postgres::Client> {
    let (c, conn) =
        tokio_postgres::connect(&tp.conn_string("app", "app", "app"), tokio_postgres::NoTls)
            .await
            .context("connecting to tidepool")?;
    tokio::spawn(conn);
    Ok(c)
}

fn nodes_json(tp: &Tidepool) -> serde_json::Value {
    let (_, body) = tp.http_get("/v1/nodes").expect("GET /v1/nodes");
    serde_json::from_str(&body).expect("JSON")
}

/// The `last_error` of every node, joined.
fn node_errors(tp: &Tidepool) -> String {
    let v = nodes_json(tp);
    let nodes = v
        .get("nodes")
        .and_then(|n| n.as_array())
        .cloned()
        .unwrap_or_default();
    nodes
        .iter()
        .filter_map(|n| {
            n.get("last_error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_backends_serve_sessions_health_checks_lag_and_cancel_over_tls() {
    let cluster = tls_cluster(2);
    let ca = cluster.tls_dir().join("ca.crt");
    let tp = Tidepool::start(&config(
        &cluster,
        &format!(
            "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
            ca.display()
        ),
    ))
    .expect("tidepool becomes ready: health checks pass over TLS");
    let c = app(&tp).await.unwrap();
    // The session's own backend connection is TLS.
    let row = c
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the pooled connection uses TLS");
    // Writes reach the primary; reads go to standbys once their lag is
    // known, which the lag sampler measures over TLS.
    c.batch_execute("create table t (i int); insert into t values (1)")
        .await
        .unwrap();
    let standby_ports: Vec<i32> = cluster.standbys().iter().map(|n| n.port as i32).collect();
    for n in cluster.standbys() {
        let name = n.name.clone();
        tokio::task::block_in_place(|| {
            wait_until(Duration::from_secs(20), "the standby to replay t", || {
                cluster
                    .psql_db(&name, "app", "select to_regclass('t') is not null")
                    .is_ok_and(|o| o == "t")
            })
        })
        .unwrap();
    }
    // Sessions that have not written (the writer's reads stay on the
    // primary); each picks its read node when it starts, as in Pgpool-II,
    // so a session started before the standbys' lag was first sampled
    // reads from the primary: try new ones until one reads a standby.
    let mut served_by_standby = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !served_by_standby && std::time::Instant::now() < deadline {
        let reader = app(&tp).await.unwrap();
        let port: i32 = reader
            .query_one("select inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        served_by_standby = standby_ports.contains(&port);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served_by_standby,
        "reads are load-balanced to standbys (lag sampled over TLS)\n{}\n{}",
        nodes_json(&tp),
        tp.log_tail(40)
    );
    // A cancel travels to the backend and ends the statement.
    let cancel = c.cancel_token();
    let slow = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = c.simple_query("select pg_sleep(30)").await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, took) = slow.await.unwrap();
    let e = r.expect_err("the statement is cancelled");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code().to_string()),
        Some("57014".to_string()),
        "{e}"
    );
    assert!(
        took < Duration::from_secs(20),
        "cancelled at once, took {took:?}"
    );
    // Every node is up, and the admin view says its connections are TLS.
    let v = nodes_json(&tp);
    let nodes = v["nodes"].as_array().unwrap();
    for n in nodes {
        assert_eq!(n["status"], "up", "{n}");
        assert_eq!(n["sslmode"], "verify-full", "{n}");
        assert_eq!(n["ssl"], true, "{n}");
    }
}

#[test]
fn sslmode_disable_against_a_tls_only_backend_names_the_node_and_the_setting() {
    let cluster = tls_cluster(0);
    let tp = Tidepool::start_with(
        &config(&cluster, "sslmode = \"disable\""),
        TidepoolOpts {
            wait_ready: false,
            ..TidepoolOpts::default()
        },
    )
    .unwrap();
    let errors = wait_for(Duration::from_secs(20), "an error naming sslmode", || {
        let e = node_errors(&tp);
        anyhow::ensure!(e.contains("sslmode"), "errors so far: {e}");
        Ok(e)
    })
    .expect("the health check's error names the setting");
    assert!(errors.contains("\"disable\""), "{errors}");
    assert!(errors.contains("TLS"), "{errors}");
    // The log names the node too.
    let log = tp.log();
    assert!(log.contains("pg0") && log.contains("sslmode"), "{log}");
}

/// Points every node of `cluster` at the certificate `cert`/`key`.
fn serve_certificate(cluster: &PgCluster, cert: &Path, key: &Path) -> Result<()> {
    certs::give_to_server_user(key)?;
    for n in cluster.nodes() {
        cluster.psql(
            &n.name,
            &format!("alter system set ssl_cert_file = '{}'", cert.display()),
        )?;
        cluster.psql(
            &n.name,
            &format!("alter system set ssl_key_file = '{}'", key.display()),
        )?;
        cluster.psql(&n.name, "select pg_reload_conf()")?;
    }
    Ok(())
}

fn starts_and_serves(cluster: &PgCluster, defaults: &str) -> Result<()> {
    let tp = Tidepool::start(&config(cluster, defaults))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let c = app(&tp).await?;
        let row = c
            .query_one(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            )
            .await?;
        anyhow::ensure!(row.get::<_, bool>(0), "not TLS");
        Ok(())
    })
}

fn refused_with(cluster: &PgCluster, defaults: &str, expected: &[&str]) {
    let tp = Tidepool::start_with(
        &config(cluster, defaults),
        TidepoolOpts {
            wait_ready: false,
            ..TidepoolOpts::default()
        },
    )
    .unwrap();
    let errors = wait_for(Duration::from_secs(20), "a health-check error", || {
        let e = node_errors(&tp);
        anyhow::ensure!(!e.is_empty(), "no error yet");
        Ok(e)
    })
    .expect("the node fails its health check");
    for x in expected {
        assert!(
            errors.to_lowercase().contains(&x.to_lowercase()),
            "{defaults}: expected {x:?} in {errors}"
        );
    }
    let (code, _) = tp.http_get("/readyz").unwrap();
    assert_ne!(code, 200, "no primary is known");
}

#[test]
fn verify_full_refuses_another_ca_and_a_wrong_host_name_require_accepts_both() {
    let cluster = tls_cluster(0);
    let dir = cluster.tls_dir();
    let ca = dir.join("ca.crt");
    // A certificate from another CA: tidepool is given that CA to trust.
    let other = certs::Ca::new(&dir, "other-ca").unwrap();
    refused_with(
        &cluster,
        &format!(
            "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
            other.cert.display()
        ),
        &["handshake", "verify-full", "UnknownIssuer"],
    );
    starts_and_serves(
        &cluster,
        &format!(
            "sslmode = \"require\"\nsslrootcert = \"{}\"",
            other.cert.display()
        ),
    )
    .expect("require does not check the certificate");

    // The nodes present a certificate of the right CA for another name.
    let (cert, key) = certs::Ca::existing(&dir)
        .issue(
            &dir,
            "wrong-name",
            "db.wrong.example",
            Some("DNS:db.wrong.example"),
            certs::Usage::Server,
            true,
        )
        .unwrap();
    serve_certificate(&cluster, &cert, &key).unwrap();
    wait_until(Duration::from_secs(10), "the new node certificate", || {
        std::process::Command::new("openssl")
            .args(["s_client", "-starttls", "postgres", "-connect"])
            .arg(format!("127.0.0.1:{}", cluster.primary().port))
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("db.wrong.example"))
    })
    .expect("the node serves the new certificate");
    refused_with(
        &cluster,
        &format!(
            "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
            ca.display()
        ),
        &["handshake", "not valid for name"],
    );
    starts_and_serves(
        &cluster,
        &format!(
            "sslmode = \"verify-ca\"\nsslrootcert = \"{}\"",
            ca.display()
        ),
    )
    .expect("verify-ca checks the chain, not the name");
    starts_and_serves(&cluster, "sslmode = \"require\"").expect("require accepts it");
}
