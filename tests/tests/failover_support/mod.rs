//! Pieces shared by the failover suites: a cluster with tidepool in front
//! configured for failover, a client that writes every 100 ms and records
//! each outcome, and outage arithmetic.

#![allow(dead_code)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, free_port, wait_for_async};

/// Lines added to the sections of [`config_with`]'s file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// The cluster takes TLS only (hostssl) and tidepool talks verify-full.
    pub tls: bool,
    /// Added to every `[[backends]]` entry.
    pub backend: &'a str,
    pub health_check: &'a str,
    pub failover: &'a str,
    /// Appended at the end (whole sections).
    pub rest: &'a str,
}

/// tidepool's config for failover tests: every node with its data
/// directory, the replication user, the state file in `state_dir`.
pub fn config(
    cluster: &PgCluster,
    state_dir: &std::path::Path,
    backend_extra: &str,
    extra: &str,
) -> String {
    config_with(
        cluster,
        state_dir,
        &Extra {
            backend: backend_extra,
            rest: extra,
            ..Extra::default()
        },
    )
}

/// [`config`] with lines added to any section.
pub fn config_with(cluster: &PgCluster, state_dir: &std::path::Path, x: &Extra) -> String {
    let backend_extra = x.backend;
    let backends: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| {
            format!(
                "[[backends]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\ndata_directory = \"{}\"\nlog_file = \"{}\"\n{backend_extra}\n",
                n.name,
                n.host,
                n.port,
                n.data_dir.display(),
                n.log_file.display(),
            )
        })
        .collect();
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
state_dir = "{state}"

[pool]
mode = "transaction"

[health_check]
password = "postgres"
{health}

[failover]
replication_user = "replicator"
replication_password = "replicator"
{failover}

{backends}

[[users]]
name = "app"
password = "app"

[[users]]
name = "postgres"
password = "postgres"

{extra}
"#,
        port = free_port(),
        admin = free_port(),
        state = state_dir.display(),
        backends = {
            let mut b = backends.join("\n");
            if x.tls {
                b.push_str(&format!(
                    "\n[backend_defaults]\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
                    cluster.tls_dir().join("ca.crt").display()
                ));
            }
            b
        },
        health = x.health_check,
        failover = x.failover,
        extra = x.rest,
    )
}

/// A cluster, a state directory and tidepool in front.
pub struct FailoverBed {
    pub tidepool: Tidepool,
    pub state: tempfile::TempDir,
    pub cluster: PgCluster,
}

impl FailoverBed {
    /// Starts a primary with two standbys (`sync` as asked), creates table
    /// `ticks`, and starts tidepool.
    pub fn start(sync: bool, extra: &str) -> Result<FailoverBed> {
        Self::start_with(
            sync,
            &Extra {
                rest: extra,
                ..Extra::default()
            },
        )
    }

    /// [`start`](Self::start) with lines added to any section of the config.
    pub fn start_with(sync: bool, extra: &Extra) -> Result<FailoverBed> {
        Self::start_prepared(sync, extra, |_| Ok(()))
    }

    /// [`start_with`](Self::start_with), running `prepare` on the cluster
    /// before tidepool starts.
    pub fn start_prepared(
        sync: bool,
        extra: &Extra,
        prepare: impl FnOnce(&PgCluster) -> Result<()>,
    ) -> Result<FailoverBed> {
        let cluster = PgCluster::start(PgClusterOpts {
            standbys: 2,
            sync,
            tls: extra.tls,
            ..PgClusterOpts::default()
        })?;
        prepare(&cluster)?;
        cluster.psql_db(
            cluster.primary(),
            "app",
            "CREATE TABLE ticks (seq bigint PRIMARY KEY, at timestamptz DEFAULT now()); ALTER TABLE ticks OWNER TO app",
        )?;
        cluster.wait_streaming()?;
        let state = tempfile::tempdir()?;
        let tidepool = Tidepool::start(&config_with(&cluster, state.path(), extra))?;
        Ok(FailoverBed {
            tidepool,
            state,
            cluster,
        })
    }

    /// GET /v1/nodes as JSON.
    pub fn nodes(&self) -> Result<serde_json::Value> {
        let (code, body) = self.tidepool.http_get("/v1/nodes")?;
        anyhow::ensure!(code == 200, "GET /v1/nodes: {code} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// The node tidepool routes writes to.
    pub fn primary(&self) -> Result<Option<String>> {
        Ok(self.nodes()?["primary"].as_str().map(str::to_string))
    }

    /// Kills the primary with kill -9 and waits until tidepool routes
    /// writes to another node; returns (old primary, new primary).
    pub async fn kill_primary(&self) -> Result<(String, String)> {
        let old = self.cluster.primary().name.clone();
        self.cluster.kill9(&old)?;
        wait(Duration::from_secs(20), "a new primary", || {
            Ok(self.primary()?.is_some_and(|p| p != old))
        })
        .await?;
        let new = self.primary()?.context("no primary")?;
        Ok((old, new))
    }

    /// A node's status in tidepool's table (`up`, `waiting`, `down`).
    pub fn status(&self, node: &str) -> Result<String> {
        let v = self.nodes()?;
        v["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == node))
            .and_then(|n| n["status"].as_str().map(str::to_string))
            .with_context(|| format!("no node {node} in {v}"))
    }

    /// A node's entry in GET /v1/nodes.
    pub fn node(&self, node: &str) -> Result<serde_json::Value> {
        let v = self.nodes()?;
        v["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == node))
            .cloned()
            .with_context(|| format!("no node {node} in {v}"))
    }

    /// Why a node is detached, as GET /v1/nodes says.
    pub fn detach_reason(&self, node: &str) -> Result<String> {
        Ok(self.node(node)?["detach_reason"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The value of one sample of GET /metrics, e.g. `tidepool_failovers_total`
    /// or `tidepool_node_detaches_total{node="pg1"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> Result<f64> {
        let (code, body) = self.tidepool.http_get("/metrics")?;
        anyhow::ensure!(code == 200, "GET /metrics: {code} {body}");
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map(|v| v.trim().parse())
            .transpose()?
            .unwrap_or(0.0))
    }

    /// Runs `tidepool ctl ARGS` against this tidepool.
    pub fn ctl(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(std::process::Command::new(Tidepool::binary()?)
            .arg("ctl")
            .args(["--url", &self.tidepool.admin_url(), "--timeout", "120s"])
            .args(args)
            .output()?)
    }

    /// `tidepool ctl ARGS`, which must succeed; the error shows its output
    /// and tidepool's log.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<()> {
        let out = self.ctl(args)?;
        anyhow::ensure!(
            out.status.success(),
            "tidepool ctl {}: {}{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.tidepool.log_tail(30)
        );
        Ok(())
    }

    /// Application names streaming from `node`.
    pub fn streaming_from(&self, node: &str) -> Result<Vec<String>> {
        let out = self.cluster.psql(
            node,
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1",
        )?;
        Ok(out
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Every `seq` in `ticks` on `node`.
    pub fn seqs(&self, node: &str) -> Result<Vec<i64>> {
        let out = self
            .cluster
            .psql_db(node, "app", "SELECT seq FROM ticks ORDER BY seq")?;
        Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

/// One write attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seq: i64,
    pub at: Instant,
    pub error: Option<String>,
}

/// A client inserting `seq` into `ticks` through tidepool every `every`,
/// reconnecting after errors.
pub struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Outcome>>,
}

impl Writer {
    pub fn start(conn_string: String, every: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut client: Option<tokio_postgres::Client> = None;
            let mut seq = 0i64;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                seq += 1;
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    write(&mut client, &conn_string, seq),
                )
                .await;
                let error = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("timed out".to_string()),
                };
                if error.is_some() {
                    client = None;
                }
                out.push(Outcome {
                    seq,
                    at: Instant::now(),
                    error,
                });
            }
            out
        });
        Writer { stop, task }
    }

    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task")
    }
}

async fn write(
    client: &mut Option<tokio_postgres::Client>,
    conn: &str,
    seq: i64,
) -> Result<(), String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let (c, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *client = Some(c);
    }
    let c = client.as_ref().expect("connected above");
    c.execute("INSERT INTO ticks (seq) VALUES ($1)", &[&seq])
        .await
        .map(|_| ())
        .map_err(|e| match e.as_db_error() {
            Some(d) => format!("{} {}", d.code().code(), d.message()),
            None => e.to_string(),
        })
}

/// Sequence numbers of acknowledged writes.
pub fn acked(outcomes: &[Outcome]) -> Vec<i64> {
    outcomes
        .iter()
        .filter(|o| o.error.is_none())
        .map(|o| o.seq)
        .collect()
}

/// The longest gap between two consecutive successful writes, the later
/// of which came after `at` (the moment the fault was injected).
pub fn outage(outcomes: &[Outcome], at: Instant) -> Option<Duration> {
    let ok: Vec<Instant> = outcomes
        .iter()
        .filter(|o| o.error.is_none())
        .map(|o| o.at)
        .collect();
    ok.windows(2)
        .filter(|w| w[1] > at)
        .map(|w| w[1] - w[0])
        .max()
}

/// Waits (up to `timeout`) until `f` holds on the bed.
pub async fn wait(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    wait_for_async(timeout, what, || {
        let r = f();
        async move {
            match r {
                Ok(true) => Ok(()),
                Ok(false) => anyhow::bail!("not yet"),
                Err(e) => Err(e),
            }
        }
    })
    .await
}
