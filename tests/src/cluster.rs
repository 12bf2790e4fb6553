//! Real PostgreSQL clusters for end-to-end tests.
//!
//! A cluster is created by `scripts/dev-cluster` (so tests, developers and
//! the demo share one way of building it) in a temporary directory on free
//! ports (or the ports and loopback addresses [`PgClusterOpts`] asks for),
//! and removed on drop. See the script's `--help` for what is inside:
//! superuser `postgres`/`postgres`, `app`/`app` (SCRAM), `md5user`/`md5pass`
//! (md5), `trustuser` (trust), `replicator`/`replicator`, database `app`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::paths::scripts_dir;
use crate::ports::free_port_on;

/// Exit code of `scripts/dev-cluster` when one of its ports is taken.
const EXIT_PORT_IN_USE: i32 = 75;

/// How a test cluster is made.
#[derive(Debug, Clone)]
pub struct PgClusterOpts {
    /// Number of streaming standbys besides the primary.
    pub standbys: usize,
    /// `synchronous_standby_names = 'ANY 1 (*)'` on every node.
    pub sync: bool,
    /// `fsync = off` (and `synchronous_commit = off` unless `sync`): faster,
    /// and harmless for a cluster that lives as long as a test.
    pub fast: bool,
    /// TLS as RDS ships it (`rds.force_ssl`): `ssl = on` and only hostssl
    /// rules for TCP, with a throwaway CA made in the cluster's directory
    /// (see [`PgCluster::tls_dir`]).
    pub tls: bool,
    /// The IPv4 loopback address (`127.0.0.0/8`) of each node, primary
    /// first: one per node (`standbys + 1`), e.g. `127.0.0.2`, `127.0.0.3`.
    /// Nodes on distinct addresses may share a port, as Aurora instances do.
    /// Empty: every node on 127.0.0.1.
    pub hosts: Vec<String>,
    /// The port of each node, primary first: one per node. Empty: free ports
    /// (free on the node's address), chosen again when one is taken before
    /// the cluster starts. Given: exactly these, and a port that is taken is
    /// an error.
    pub ports: Vec<u16>,
}

impl Default for PgClusterOpts {
    fn default() -> Self {
        Self {
            standbys: 2,
            sync: false,
            fast: true,
            tls: false,
            hosts: Vec::new(),
            ports: Vec::new(),
        }
    }
}

impl PgClusterOpts {
    /// A primary with `standbys` asynchronous standbys.
    pub fn standbys(standbys: usize) -> Self {
        Self {
            standbys,
            ..Self::default()
        }
    }
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        })
    }
}

/// One PostgreSQL server of a [`PgCluster`].
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    /// `pg0`, `pg1`, …; also its `cluster_name`, its `application_name` in
    /// `pg_stat_replication` and (for standbys) its replication slot.
    pub name: String,
    /// Role when the cluster was started; [`PgCluster::role`] asks the node.
    pub role: Role,
    /// The IPv4 loopback address the node listens on: 127.0.0.1 unless
    /// [`PgClusterOpts::hosts`] said otherwise.
    pub host: String,
    pub port: u16,
    /// The node's directory: `data/`, its Unix socket, `postgresql.log`.
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
}

impl AsRef<str> for Node {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

#[derive(Debug, Deserialize)]
struct StatusJson {
    nodes: Vec<NodeStatus>,
}

#[derive(Debug, Deserialize)]
struct NodeStatus {
    #[serde(flatten)]
    node: Node,
    running: bool,
}

/// A primary with streaming standbys on loopback addresses (127.0.0.1 unless
/// [`PgClusterOpts::hosts`] says otherwise), stopped and removed on drop
/// (also when the test panics). Methods taking `node` accept a node name
/// (`"pg1"`) or a `&Node`.
pub struct PgCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl PgCluster {
    /// Creates and starts a cluster on free ports (or on
    /// [`PgClusterOpts::ports`]); returns once every standby streams from
    /// the primary.
    pub fn start(opts: PgClusterOpts) -> Result<PgCluster> {
        let count = opts.standbys + 1;
        if !opts.hosts.is_empty() && opts.hosts.len() != count {
            bail!(
                "PgClusterOpts::hosts lists {} address(es) for {count} node(s)",
                opts.hosts.len()
            );
        }
        if !opts.ports.is_empty() && opts.ports.len() != count {
            bail!(
                "PgClusterOpts::ports lists {} port(s) for {count} node(s)",
                opts.ports.len()
            );
        }
        // Free ports may be taken before the servers bind them: then new
        // ones are tried. Given ports are tried once.
        let attempts = if opts.ports.is_empty() { 5 } else { 1 };
        let mut last_err = None;
        for _ in 0..attempts {
            let dir = tempfile::Builder::new()
                .prefix("tidepool-pg-")
                .tempdir_in("/tmp")
                .context("creating the cluster directory")?;
            let ports: Vec<String> = if opts.ports.is_empty() {
                (0..count)
                    .map(|i| {
                        let host = opts.hosts.get(i).map_or("127.0.0.1", String::as_str);
                        free_port_on(host).to_string()
                    })
                    .collect()
            } else {
                opts.ports.iter().map(u16::to_string).collect()
            };
            let mut args = vec![
                "start".to_string(),
                "--json".into(),
                "--ports".into(),
                ports.join(","),
                "--standbys".into(),
                opts.standbys.to_string(),
            ];
            if !opts.hosts.is_empty() {
                args.push("--hosts".into());
                args.push(opts.hosts.join(","));
            }
            if opts.sync {
                args.push("--sync".into());
            }
            if opts.fast {
                args.push("--fast".into());
            }
            if opts.tls {
                args.push("--tls".into());
                args.push(dir.path().join("tls").display().to_string());
            }
            let out = dev_cluster(dir.path(), &args)?;
            if out.status.success() {
                let status: StatusJson =
                    serde_json::from_slice(&out.stdout).with_context(|| {
                        format!(
                            "parsing dev-cluster output: {}",
                            String::from_utf8_lossy(&out.stdout)
                        )
                    })?;
                let nodes = status.nodes.into_iter().map(|s| s.node).collect();
                return Ok(PgCluster { dir, nodes });
            }
            let err = command_error("dev-cluster start", &out);
            // Stop whatever did start before the directory goes away.
            let _ = dev_cluster(
                dir.path(),
                &["stop".into(), "--mode".into(), "immediate".into()],
            );
            if out.status.code() != Some(EXIT_PORT_IN_USE) {
                return Err(err);
            }
            if !opts.ports.is_empty() {
                return Err(err.context("a port of PgClusterOpts::ports is taken"));
            }
            last_err = Some(err);
        }
        Err(last_err
            .expect("at least one attempt")
            .context("ports kept being taken"))
    }

    /// The directory of the cluster's certificates, when it was started with
    /// TLS: `ca.crt`/`ca.key` (the CA), `node.crt` (the nodes'),
    /// `tidepool.crt`/`tidepool.key` (for tidepool's client side); the
    /// server certificates name `localhost` and `127.0.0.1` (so a node on
    /// another address passes `verify-full` as `host=localhost
    /// hostaddr=ADDRESS`, which is how its standbys reach it).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// The cluster's directory (one subdirectory per node).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node called `name`; panics when there is none.
    pub fn node(&self, name: impl AsRef<str>) -> &Node {
        let name = name.as_ref();
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }

    /// The node that was primary when the cluster started.
    pub fn primary(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Primary)
            .expect("a cluster has a primary")
    }

    /// The nodes that were standbys when the cluster started.
    pub fn standbys(&self) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Standby)
            .collect()
    }

    /// A libpq key/value connection string for `node` over TCP (usable by
    /// tokio-postgres and psql). An empty `password` is left out.
    pub fn conn_string(
        &self,
        node: impl AsRef<str>,
        user: &str,
        password: &str,
        db: &str,
    ) -> String {
        let n = self.node(node);
        let mut s = format!(
            "host={} port={} user={user} dbname={db} connect_timeout=5",
            n.host, n.port
        );
        if !password.is_empty() {
            s.push_str(&format!(" password={password}"));
        }
        s
    }

    /// Connects with tokio-postgres over TCP; the connection runs on a
    /// spawned task (needs a tokio runtime).
    pub async fn connect(
        &self,
        node: impl AsRef<str>,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client> {
        let conn_string = self.conn_string(node, user, password, db);
        let (client, connection) = tokio_postgres::connect(&conn_string, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting with {conn_string}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs `sql` with psql as superuser `postgres` in database `postgres`
    /// (over the node's Unix socket); returns its output, unaligned and
    /// tuples only (`a|b` per row), trimmed.
    pub fn psql(&self, node: impl AsRef<str>, sql: &str) -> Result<String> {
        self.psql_db(node, "postgres", sql)
    }

    /// [`psql`](Self::psql) in database `db`.
    pub fn psql_db(&self, node: impl AsRef<str>, db: &str, sql: &str) -> Result<String> {
        let n = self.node(node);
        let psql = self.bindir()?.join("psql");
        let out = Command::new(&psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .arg("-h")
            .arg(&n.socket_dir)
            .arg("-p")
            .arg(n.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .with_context(|| format!("running {}", psql.display()))?;
        if !out.status.success() {
            return Err(command_error(&format!("psql on {} ({sql})", n.name), &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// SIGKILL the node's postmaster and every child: a crash. Its stale
    /// `postmaster.pid` stays, as after a real one.
    pub fn kill9(&self, node: impl AsRef<str>) -> Result<()> {
        self.node_command("kill", node.as_ref(), &[])
    }

    /// Stops the node (fast shutdown).
    pub fn stop_node(&self, node: impl AsRef<str>) -> Result<()> {
        self.node_command("stop", node.as_ref(), &[])
    }

    /// Starts a stopped (or killed) node; a standby is waited for until it
    /// streams.
    pub fn start_node(&self, node: impl AsRef<str>) -> Result<()> {
        self.node_command("start", node.as_ref(), &[])
    }

    /// Starts a stopped node without waiting for it to stream.
    pub fn start_node_no_wait(&self, node: impl AsRef<str>) -> Result<()> {
        self.node_command("start", node.as_ref(), &["--no-wait"])
    }

    /// Whether the node's server runs.
    pub fn is_running(&self, node: impl AsRef<str>) -> Result<bool> {
        let name = node.as_ref();
        Ok(self
            .status()?
            .into_iter()
            .any(|s| s.node.name == name && s.running))
    }

    /// The node's role now (asks the server; a stopped node counts as a
    /// standby when it has a `standby.signal`).
    pub fn role(&self, node: impl AsRef<str>) -> Result<Role> {
        let name = node.as_ref();
        self.status()?
            .into_iter()
            .find(|s| s.node.name == name)
            .map(|s| s.node.role)
            .with_context(|| format!("no node {name}"))
    }

    /// The running node that is primary now; an error unless exactly one is.
    pub fn current_primary(&self) -> Result<&Node> {
        let primaries: Vec<String> = self
            .status()?
            .into_iter()
            .filter(|s| s.running && s.node.role == Role::Primary)
            .map(|s| s.node.name)
            .collect();
        match primaries.as_slice() {
            [one] => Ok(self.node(one)),
            [] => bail!("no running primary"),
            many => bail!("several running primaries: {many:?}"),
        }
    }

    /// Waits until every running standby streams from the primary.
    pub fn wait_streaming(&self) -> Result<()> {
        let out = dev_cluster(self.dir(), &["wait".into()])?;
        if !out.status.success() {
            return Err(command_error("dev-cluster wait", &out));
        }
        Ok(())
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self, node: impl AsRef<str>) -> Result<()> {
        let out = self.psql(&node, "SELECT pg_promote(wait => true, wait_seconds => 30)")?;
        if out != "t" {
            bail!("pg_promote on {} returned {out:?}", node.as_ref());
        }
        Ok(())
    }

    /// `[[backends]]` blocks of tidepool's config for every node, primary
    /// first, weight 1.0, flag `allow_to_failover`.
    pub fn backends_toml(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "[[backends]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\nweight = 1.0\nflag = \"allow_to_failover\"\n",
                    n.name, n.host, n.port
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The directory of the PostgreSQL programs the cluster runs.
    pub fn bindir(&self) -> Result<PathBuf> {
        let conf = std::fs::read_to_string(self.dir().join("cluster.conf"))
            .context("reading cluster.conf")?;
        conf.lines()
            .find_map(|l| l.strip_prefix("CL_BINDIR="))
            .map(|v| PathBuf::from(v.trim_matches('\'')))
            .context("cluster.conf has no CL_BINDIR")
    }

    fn status(&self) -> Result<Vec<NodeStatus>> {
        let out = dev_cluster(self.dir(), &["status".into(), "--json".into()])?;
        if !out.status.success() {
            return Err(command_error("dev-cluster status", &out));
        }
        let status: StatusJson =
            serde_json::from_slice(&out.stdout).context("parsing dev-cluster status")?;
        Ok(status.nodes)
    }

    fn node_command(&self, command: &str, name: &str, extra: &[&str]) -> Result<()> {
        self.node(name);
        let mut args = vec![command.to_string(), "--node".into(), name.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = dev_cluster(self.dir(), &args)?;
        if !out.status.success() {
            return Err(command_error(
                &format!("dev-cluster {command} --node {name}"),
                &out,
            ));
        }
        Ok(())
    }

    /// The last lines of every node's log (printed when a test panics).
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(&n.log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            s.push_str(&format!("--- {} ({}) ---\n", n.name, n.log_file.display()));
            for line in tail.into_iter().rev() {
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "PostgreSQL logs of {}:\n{}",
                self.dir().display(),
                self.log_tails(15)
            );
        }
        match dev_cluster(
            self.dir(),
            &["stop".into(), "--mode".into(), "immediate".into()],
        ) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("{:#}", command_error("dev-cluster stop", &out)),
            Err(err) => eprintln!("{err:#}"),
        }
        // The TempDir removes the directory.
    }
}

fn dev_cluster(dir: &Path, args: &[String]) -> Result<Output> {
    let script = scripts_dir().join("dev-cluster");
    Command::new(&script)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--timeout")
        .arg(CLUSTER_TIMEOUT.as_secs().to_string())
        .output()
        .with_context(|| format!("running {}", script.display()))
}

/// Deadline for starting servers and for standbys to stream.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

fn command_error(what: &str, out: &Output) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
