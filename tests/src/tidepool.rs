//! A `tidepool run -c FILE` process under test.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::PgCluster;
use crate::paths::target_dir;

/// Client port when the config names none (DESIGN: 9999).
const DEFAULT_PORT: u16 = 9999;
/// Admin HTTP port when the config names none (DESIGN: 9898).
const DEFAULT_ADMIN_PORT: u16 = 9898;

/// How a [`Tidepool`] process is started.
#[derive(Debug, Clone)]
pub struct TidepoolOpts {
    /// The binary; default: `$TIDEPOOL_BIN`, else `tidepool` next to the
    /// test binaries' profile directory (`target/debug/tidepool`).
    pub bin: Option<PathBuf>,
    /// Extra environment (e.g. `RUST_LOG`, `AWS_ENDPOINT_URL`).
    pub env: Vec<(String, String)>,
    /// Arguments after `run -c FILE`.
    pub args: Vec<String>,
    /// A command to run tidepool under, e.g. `["ip", "netns", "exec", "ns1"]`.
    pub wrapper: Vec<String>,
    /// Where to probe for readiness; default 127.0.0.1 and the port of
    /// `server.listen`.
    pub wait_addr: Option<SocketAddr>,
    /// After the client port accepts, also wait until the admin API's
    /// `GET /readyz` answers 200 (a primary is known).
    pub wait_ready: bool,
    /// How long to wait for the client port (and readiness).
    pub start_timeout: Duration,
}

impl Default for TidepoolOpts {
    fn default() -> Self {
        Self {
            bin: None,
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            args: Vec::new(),
            wrapper: Vec::new(),
            wait_addr: None,
            wait_ready: true,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A running tidepool process with its own directory holding
/// `tidepool.toml` and `tidepool.log` (stdout and stderr). Killed (with
/// anything it started) on drop; when the test panics its log's tail is
/// printed.
pub struct Tidepool {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    admin_port: u16,
}

impl Tidepool {
    /// Writes `config_toml` to a file, runs `tidepool run -c FILE` and waits
    /// until the client port (from `server.listen`) accepts TCP connections.
    pub fn start(config_toml: &str) -> Result<Tidepool> {
        Self::start_with(config_toml, TidepoolOpts::default())
    }

    /// [`start`](Self::start) with options.
    pub fn start_with(config_toml: &str, opts: TidepoolOpts) -> Result<Tidepool> {
        let (port, admin_port) = ports_of(config_toml)?;
        let bin = match opts.bin.clone() {
            Some(bin) => bin,
            None => Self::binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("tidepool-")
            .tempdir()
            .context("creating tidepool's directory")?;
        let config = dir.path().join("tidepool.toml");
        std::fs::write(&config, config_toml).context("writing tidepool.toml")?;
        let log = File::create(dir.path().join("tidepool.log")).context("creating tidepool.log")?;

        let mut cmd = match opts.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group, so that drop also ends what it started.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;

        let mut tidepool = Tidepool {
            dir,
            child,
            port,
            admin_port,
        };
        let addr = opts
            .wait_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
        let deadline = Instant::now() + opts.start_timeout;
        tidepool.wait_accepting(addr, deadline)?;
        if opts.wait_ready {
            tidepool.wait_ready(deadline)?;
        }
        Ok(tidepool)
    }

    /// The tidepool binary the tests run: `$TIDEPOOL_BIN`, else
    /// `<target>/<profile>/tidepool`.
    pub fn binary() -> Result<PathBuf> {
        if let Some(bin) = std::env::var_os("TIDEPOOL_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let bin = target_dir().join("tidepool");
        if !bin.exists() {
            bail!(
                "tidepool binary not found at {}: run `cargo build -p tidepool` (scripts/test does) or set TIDEPOOL_BIN",
                bin.display()
            );
        }
        Ok(bin)
    }

    fn wait_accepting(&mut self, addr: SocketAddr, deadline: Instant) -> Result<()> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "tidepool exited during start-up ({status}); log:\n{}",
                    self.log_tail(40)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "tidepool did not accept on {addr} in time; log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "tidepool exited during start-up ({status}); log:\n{}",
                    self.log_tail(40)
                );
            }
            let answer = self.http_get("/readyz");
            if matches!(answer, Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "tidepool did not become ready in time: GET /readyz gave {answer:?}; log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the admin HTTP API; returns the status code and body.
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_request(self.admin_port, "GET", path)
    }

    /// `POST path` (empty body) on the admin HTTP API; returns the status
    /// code and body.
    pub fn http_post(&self, path: &str) -> Result<(u16, String)> {
        http_request(self.admin_port, "POST", path)
    }

    /// Client port (`server.listen`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Admin HTTP port (`server.admin_listen`).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// A libpq key/value connection string to tidepool's client port.
    pub fn conn_string(&self, user: &str, password: &str, db: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={user} dbname={db} connect_timeout=5",
            self.port
        );
        if !password.is_empty() {
            s.push_str(&format!(" password={password}"));
        }
        s
    }

    /// Connects to tidepool with tokio-postgres; the connection runs on a
    /// spawned task (needs a tokio runtime).
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_string(user, password, db), tokio_postgres::NoTls)
                .await
                .with_context(|| {
                    format!("connecting to tidepool on port {} as {user}", self.port)
                })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file tidepool was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tidepool.toml")
    }

    /// The directory holding the config and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the config file (atomically); follow with [`sighup`](Self::sighup)
    /// or the admin API's reload.
    pub fn rewrite_config(&self, config_toml: &str) -> Result<()> {
        let tmp = self.dir.path().join("tidepool.toml.new");
        std::fs::write(&tmp, config_toml)?;
        std::fs::rename(&tmp, self.config_path())?;
        Ok(())
    }

    /// Sends SIGHUP (reload the config).
    pub fn sighup(&self) -> Result<()> {
        self.signal(libc::SIGHUP)
    }

    /// Sends `signal` to the tidepool process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill(2)");
        }
        Ok(())
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit (SIGKILL
    /// after that); returns how it exited.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.kill_group();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill()?;
                bail!(
                    "tidepool did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the process (and its process group) and reap it.
    pub fn kill(&mut self) -> Result<()> {
        self.kill_group();
        let _ = self.child.kill();
        self.child.wait().context("waiting for tidepool")?;
        Ok(())
    }

    fn kill_group(&self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }

    /// Everything tidepool wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tidepool.log")).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        crate::wait::wait_until(timeout, &format!("{needle:?} in tidepool's log"), || {
            self.log().contains(needle)
        })
        .with_context(|| format!("log:\n{}", self.log_tail(40)))
    }
}

impl Drop for Tidepool {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "tidepool log ({}):\n{}",
                self.dir.path().display(),
                self.log_tail(40)
            );
        }
        let _ = self.kill();
    }
}

/// A minimal HTTP/1.1 exchange with 127.0.0.1:`port` (no client library
/// needed for a handful of admin calls).
fn http_request(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// Decodes a chunked HTTP body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The client and admin ports named by a config (`server.listen`,
/// `server.admin_listen`), with DESIGN's defaults.
fn ports_of(config_toml: &str) -> Result<(u16, u16)> {
    let table: toml::Table =
        toml::from_str(config_toml).context("the tidepool config is not valid TOML")?;
    let server = table.get("server").and_then(|v| v.as_table());
    let port = |key: &str, default: u16| -> Result<u16> {
        match server.and_then(|s| s.get(key)).and_then(|v| v.as_str()) {
            None => Ok(default),
            Some(addr) => addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .with_context(|| format!("server.{key} = {addr:?} has no port")),
        }
    };
    Ok((
        port("listen", DEFAULT_PORT)?,
        port("admin_listen", DEFAULT_ADMIN_PORT)?,
    ))
}

/// A minimal tidepool config for `cluster`: client port `port`, admin port
/// `admin_port`, transaction pooling, health checks as the cluster's
/// superuser, every node as a backend, user `app`/`app`.
pub fn minimal_config(cluster: &PgCluster, port: u16, admin_port: u16) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\n\
         [pool]\nmode = \"transaction\"\n\n\
         [health_check]\nuser = \"postgres\"\npassword = \"postgres\"\n\n\
         {}\n[[users]]\nname = \"app\"\npassword = \"app\"\n",
        cluster.backends_toml()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_server_section() {
        let cfg = "[server]\nlisten = \"0.0.0.0:6543\"\nadmin_listen = \"127.0.0.1:7654\"\n";
        assert_eq!(ports_of(cfg).unwrap(), (6543, 7654));
    }

    #[test]
    fn ports_default_to_the_documented_ones() {
        assert_eq!(
            ports_of("[pool]\nmode = \"session\"\n").unwrap(),
            (9999, 9898)
        );
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn ipv6_listen_addresses_parse() {
        let cfg = "[server]\nlisten = \"[::]:6543\"\n";
        assert_eq!(ports_of(cfg).unwrap().0, 6543);
    }
}
