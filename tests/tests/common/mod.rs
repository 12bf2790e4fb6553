//! Pieces shared by the proxy end-to-end suites.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::Result;
use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, free_port};

/// A cluster and a tidepool in front of it.
pub struct Bed {
    pub tidepool: Tidepool,
    pub cluster: PgCluster,
}

/// tidepool's config for `cluster`, with `mode` and extra TOML appended to
/// the `[pool]` section; users app (SCRAM on the servers), md5user (md5) and
/// trustuser are configured.
pub fn config(cluster: &PgCluster, mode: &str, pool_extra: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[pool]
mode = "{mode}"
{pool_extra}

[health_check]
period = "500ms"
password = "postgres"

{backends}

[[users]]
name = "app"
password = "app"

[[users]]
name = "md5user"
password = "md5pass"

[[users]]
name = "postgres"
password = "postgres"

{extra}
"#,
        port = free_port(),
        admin = free_port(),
        backends = cluster.backends_toml(),
    )
}

/// Starts a primary with `standbys` standbys and tidepool in `mode`, and
/// waits until tidepool knows the primary.
pub async fn bed(standbys: usize, mode: &str, pool_extra: &str, extra: &str) -> Result<Bed> {
    let cluster = PgCluster::start(PgClusterOpts::standbys(standbys))?;
    let cfg = config(&cluster, mode, pool_extra, extra);
    let tidepool = Tidepool::start(&cfg)?;
    let bed = Bed { tidepool, cluster };
    bed.wait_ready().await?;
    Ok(bed)
}

impl Bed {
    pub async fn app(&self) -> Result<tokio_postgres::Client> {
        self.tidepool.connect("app", "app", "app").await
    }

    pub async fn direct(&self) -> Result<tokio_postgres::Client> {
        self.cluster
            .connect(self.cluster.primary().name.as_str(), "app", "app", "app")
            .await
    }

    /// Waits until a client can run a query through tidepool.
    pub async fn wait_ready(&self) -> Result<()> {
        tidepool_tests::wait_for_async(Duration::from_secs(30), "tidepool to serve", || async {
            let c = self.app().await?;
            c.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    /// Rows of a `SHOW POOL_*` command as (column → value) maps.
    pub async fn show(&self, what: &str) -> Result<Vec<std::collections::HashMap<String, String>>> {
        let c = self.app().await?;
        let mut rows = Vec::new();
        for m in c.simple_query(&format!("SHOW {what}")).await? {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                let mut map = std::collections::HashMap::new();
                for (i, col) in r.columns().iter().enumerate() {
                    map.insert(col.name().to_string(), r.get(i).unwrap_or("").to_string());
                }
                rows.push(map);
            }
        }
        Ok(rows)
    }

    /// Runs a client program (psql, pgbench) against tidepool as `app`.
    pub fn run_client(&self, program: &str, args: &[&str]) -> Result<std::process::Output> {
        let bin = pg_bindir().join(program);
        let out = std::process::Command::new(bin)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.tidepool.port().to_string(),
                "-U",
                "app",
            ])
            .args(args)
            .env("PGPASSWORD", "app")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()?;
        Ok(out)
    }
}

/// Directory of the PostgreSQL client programs.
pub fn pg_bindir() -> std::path::PathBuf {
    let base = std::path::Path::new("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(base)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|v| v.join("bin"))
        .unwrap_or_else(|| "/usr/bin".into())
}

/// The SQLSTATE of a tokio-postgres error, if the server sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}
