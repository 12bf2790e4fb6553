//! moto server (PyPI `moto[server]`, installed into the test venv by
//! `scripts/setup`) as the AWS endpoint of a test, and the venv's Python
//! with boto3 to set up and inspect what a test needs there.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{free_port, wait_until};

/// A program of the test venv (`${TIDEPOOL_VENV:-~/.cache/tidepool/venv}`).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var("TIDEPOOL_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/tidepool/venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    PathBuf::from(venv).join("bin").join(name)
}

/// A moto server on `host` and a free port; stopped on drop.
pub struct Moto {
    child: Child,
    /// `http://host:port`, for `AWS_ENDPOINT_URL`.
    pub endpoint: String,
}

impl Moto {
    pub fn start(host: Ipv4Addr) -> Result<Moto> {
        let port = free_port();
        let child = Command::new(venv_bin("moto_server"))
            .args(["-H", &host.to_string(), "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("moto_server (run scripts/setup)")?;
        let addr = SocketAddr::from((host, port));
        wait_until(Duration::from_secs(30), "moto_server", || {
            std::net::TcpStream::connect(addr).is_ok()
        })?;
        Ok(Moto {
            child,
            endpoint: format!("http://{addr}"),
        })
    }

    /// Runs Python `body` with `boto3`, `json` and `kw` (the keyword
    /// arguments of a boto3 client on this server: endpoint, region
    /// us-east-1, test credentials) in scope; returns its last printed line.
    pub fn python(&self, body: &str) -> Result<String> {
        let script = format!(
            "import boto3, json\nkw = dict(endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n{body}",
            self.endpoint
        );
        let out = Command::new(venv_bin("python3"))
            .arg("-c")
            .arg(script)
            .output()?;
        if !out.status.success() {
            bail!("python: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
