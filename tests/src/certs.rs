//! Certificates the tests make with the `openssl` command: CAs, server
//! certificates (with the names a test wants, right or wrong) and client
//! certificates (for the `cert` method and `clientcert`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// A CA: its certificate and key files.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

impl Ca {
    /// The CA whose `ca.crt` and `ca.key` are in `dir` (e.g. a TLS
    /// cluster's [`tls_dir`](crate::PgCluster::tls_dir)).
    pub fn existing(dir: &Path) -> Ca {
        Ca {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        }
    }

    /// A new self-signed CA `NAME.crt`/`NAME.key` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Result<Ca> {
        std::fs::create_dir_all(dir)?;
        let ca = Ca {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/O=tidepool tests/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path_str(&ca.key),
            "-out",
            path_str(&ca.cert),
        ])?;
        Ok(ca)
    }

    /// A certificate `NAME.crt`/`NAME.key` in `dir` signed by this CA, with
    /// common name `cn` and, for a server, subject alternative names `san`
    /// (like `DNS:localhost,IP:127.0.0.1`). `rsa` makes an RSA key instead
    /// of an EC one.
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        san: Option<&str>,
        usage: Usage,
        rsa: bool,
    ) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let csr = dir.join(format!("{name}.csr"));
        let ext = dir.join(format!("{name}.ext"));
        let newkey: &[&str] = if rsa {
            &["-newkey", "rsa:2048"]
        } else {
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        };
        let subj = format!("/O=tidepool tests/CN={cn}");
        let mut args = vec!["req", "-new"];
        args.extend_from_slice(newkey);
        args.extend_from_slice(&[
            "-nodes",
            "-subj",
            &subj,
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&csr),
        ]);
        openssl(&args)?;
        let mut lines = vec![
            "basicConstraints = critical, CA:FALSE".to_string(),
            "keyUsage = critical, digitalSignature, keyEncipherment".to_string(),
            format!(
                "extendedKeyUsage = {}",
                match usage {
                    Usage::Server => "serverAuth",
                    Usage::Client => "clientAuth",
                }
            ),
        ];
        if let Some(san) = san {
            lines.push(format!("subjectAltName = {san}"));
        }
        std::fs::write(&ext, lines.join("\n") + "\n")?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&self.cert),
            "-CAkey",
            path_str(&self.key),
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&cert),
        ])?;
        let _ = std::fs::remove_file(csr);
        let _ = std::fs::remove_file(ext);
        set_mode(&key, 0o600)?;
        Ok((cert, key))
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Hands a key file to the user the test PostgreSQL servers run as (when
/// the tests run as root): PostgreSQL reads only keys it owns.
pub fn give_to_server_user(path: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let user = std::env::var("TIDEPOOL_PG_USER").unwrap_or_else(|_| "tidepool-pg".into());
    let out = Command::new("chown")
        .arg(format!("{user}:"))
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "chown {user} {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    set_mode(path, 0o600)
}
