//! Clients over TLS: libpq with verify-full and channel binding, client
//! certificates (`cert`, `clientcert`), hostssl / hostnossl, PostgreSQL
//! 17's direct TLS negotiation, and a certificate replaced on disk served
//! after SIGHUP without dropping anyone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, certs, free_port, wait_until, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Bed {
    cluster: PgCluster,
    tp: Tidepool,
    ca: PathBuf,
}

/// A TLS cluster (backends verify-full) and tidepool serving TLS with the
/// cluster CA's `tidepool.crt`, verifying client certificates of that CA.
fn bed(extra_tls: &str) -> Bed {
    let cluster = PgCluster::start(PgClusterOpts {
        standbys: 0,
        tls: true,
        ..PgClusterOpts::default()
    })
    .unwrap();
    let dir = cluster.tls_dir();
    let ca = dir.join("ca.crt");
    // tidepool's own copy of its certificate, so a test can replace it.
    let own = dir.join("served");
    std::fs::create_dir_all(&own).unwrap();
    // A rule for plaintext clients, unless every client must use TLS.
    let plain_rule = if extra_tls.contains("require") {
        ""
    } else {
        "[[hba]]\ntype = \"hostnossl\"\ndatabase = \"all\"\nuser = \"md5user\"\naddress = \"all\"\nmethod = \"reject\"\n"
    };
    std::fs::copy(dir.join("tidepool.crt"), own.join("tidepool.crt")).unwrap();
    std::fs::copy(dir.join("tidepool.key"), own.join("tidepool.key")).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\n\
         [pool]\nmode = \"transaction\"\n\n\
         [health_check]\nuser = \"postgres\"\npassword = \"postgres\"\n\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n{extra_tls}\n\n\
         [backend_defaults]\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"\n\n{}\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\n\n\
         [[users]]\nname = \"trustuser\"\npassword = \"unused\"\n\n\
         [[hba]]\ntype = \"hostssl\"\ndatabase = \"all\"\nuser = \"trustuser\"\naddress = \"all\"\nmethod = \"cert\"\n\n\
         [[hba]]\ntype = \"hostssl\"\ndatabase = \"all\"\nuser = \"app\"\naddress = \"all\"\nmethod = \"scram-sha-256\"\n\n\
         {plain_rule}",
        free_port(),
        free_port(),
        own.join("tidepool.crt").display(),
        own.join("tidepool.key").display(),
        ca.display(),
        ca.display(),
        cluster.backends_toml(),
    );
    let tp = Tidepool::start(&config).unwrap();
    Bed { cluster, tp, ca }
}

/// psql with `conninfo` (host and port added); Ok(output) or Err(stderr).
fn psql(bed: &Bed, conninfo: &str, sql: &str) -> Result<String, String> {
    let psql = bed.cluster.bindir().unwrap().join("psql");
    let out = Command::new(psql)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={} connect_timeout=10 {conninfo}",
            bed.tp.port()
        ))
        .env_remove("PGSSLMODE")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn client_cert(bed: &Bed, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let dir = bed.cluster.tls_dir();
    certs::Ca::existing(&dir)
        .issue(&dir, name, cn, None, certs::Usage::Client, false)
        .unwrap()
}

#[test]
fn libpq_logs_in_with_verify_full_channel_binding_and_client_certificates() {
    let bed = bed("client_mode = \"prefer\"");
    let ca = bed.ca.display().to_string();
    // SCRAM over TLS, the server certificate checked, the exchange bound to
    // the channel (SCRAM-SHA-256-PLUS).
    let out = psql(
        &bed,
        &format!(
            "user=app password=app dbname=app sslmode=verify-full sslrootcert={ca} channel_binding=require"
        ),
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .expect("verify-full with channel_binding=require logs in");
    assert_eq!(out, "t", "the backend connection is TLS too");

    // The `cert` method: the certificate's common name is the user.
    let (cert, key) = client_cert(&bed, "trustuser-client", "trustuser");
    let with_cert = |user: &str, cert: &Path, key: &Path| {
        psql(
            &bed,
            &format!(
                "user={user} dbname=app sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
                cert.display(),
                key.display()
            ),
            "select current_user",
        )
    };
    assert_eq!(with_cert("trustuser", &cert, &key).unwrap(), "trustuser");
    // Without a certificate, or with someone else's, the rule refuses.
    let e = psql(
        &bed,
        &format!("user=trustuser dbname=app sslmode=verify-full sslrootcert={ca}"),
        "select 1",
    )
    .unwrap_err();
    assert!(e.contains("requires a valid client certificate"), "{e}");
    let (other_cert, other_key) = client_cert(&bed, "app-client", "app");
    let e = with_cert("trustuser", &other_cert, &other_key).unwrap_err();
    assert!(e.contains("certificate authentication failed"), "{e}");

    // A certificate from a CA tidepool does not trust fails the handshake.
    let dir = bed.cluster.tls_dir();
    let rogue = certs::Ca::new(&dir, "rogue-ca").unwrap();
    let (rc, rk) = rogue
        .issue(
            &dir,
            "rogue-client",
            "trustuser",
            None,
            certs::Usage::Client,
            false,
        )
        .unwrap();
    assert!(with_cert("trustuser", &rc, &rk).is_err());

    // hostssl rules do not match plaintext: 28000, no entry.
    let e = psql(
        &bed,
        "user=app password=app dbname=app sslmode=disable",
        "select 1",
    )
    .unwrap_err();
    assert!(
        e.contains("no tidepool hba entry") && e.contains("no encryption"),
        "{e}"
    );
    // hostnossl rules match plaintext only.
    let e = psql(
        &bed,
        "user=md5user password=md5pass dbname=app sslmode=disable",
        "select 1",
    )
    .unwrap_err();
    assert!(e.contains("rejects connection"), "{e}");
    let e = psql(
        &bed,
        &format!("user=md5user password=md5pass dbname=app sslmode=require sslrootcert={ca}"),
        "select 1",
    )
    .unwrap_err();
    assert!(e.contains("no tidepool hba entry"), "{e}");
}

#[test]
fn client_mode_require_refuses_plaintext_for_every_user() {
    let bed = bed("client_mode = \"require\"");
    let e = psql(
        &bed,
        "user=app password=app dbname=app sslmode=disable",
        "select 1",
    )
    .unwrap_err();
    assert!(e.contains("TLS connections only"), "{e}");
    let ok = psql(
        &bed,
        "user=app password=app dbname=app sslmode=require",
        "select 1",
    );
    assert_eq!(ok.unwrap(), "1");
}

/// The subject of the certificate tidepool presents.
fn served_subject(port: u16) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_default()
        .to_string()
}

fn rustls_client(ca: &Path, alpn: bool) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_negotiation_and_a_certificate_swapped_on_sighup() {
    let bed = tokio::task::block_in_place(|| bed("client_mode = \"prefer\""));
    let port = bed.tp.port();
    // PostgreSQL 17's sslnegotiation=direct: TLS from the first byte, ALPN
    // "postgresql"; then the startup message inside TLS.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls_client(&bed.ca, true)
        .connect(name.clone(), tcp)
        .await
        .expect("direct TLS handshake");
    tls.write_all(&wire::startup_packet(&[
        ("user", "app"),
        ("database", "app"),
    ]))
    .await
    .unwrap();
    let mut first = [0u8; 9];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], b'R', "an authentication request");
    assert_eq!(&first[5..9], &10u32.to_be_bytes(), "AuthenticationSASL");
    // Direct TLS without ALPN is refused.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let refused = async {
        let mut tls = rustls_client(&bed.ca, false)
            .connect(name.clone(), tcp)
            .await?;
        tls.write_all(&wire::startup_packet(&[
            ("user", "app"),
            ("database", "app"),
        ]))
        .await?;
        let mut b = [0u8; 1];
        let n = tls.read(&mut b).await?;
        anyhow::ensure!(n > 0, "closed");
        Ok(())
    };
    assert!(refused.await.is_err(), "direct TLS needs ALPN postgresql");

    // A client that stays connected across the certificate swap.
    let ca = bed.ca.display().to_string();
    let mut held = tokio::process::Command::new(bed.cluster.bindir().unwrap().join("psql"))
        .args(["-X", "-q", "-A", "-t"])
        .arg(format!(
            "host=127.0.0.1 port={port} user=app password=app dbname=app sslmode=verify-full sslrootcert={ca}"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = held.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(held.stdout.take().unwrap());
    async fn ask(
        stdin: &mut tokio::process::ChildStdin,
        stdout: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
        sql: &str,
    ) -> String {
        use tokio::io::AsyncBufReadExt;
        stdin
            .write_all(format!("{sql};\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .expect("an answer")
            .unwrap();
        line.trim().to_string()
    }
    assert_eq!(ask(&mut stdin, &mut stdout, "select 41 + 1").await, "42");

    let before = tokio::task::block_in_place(|| served_subject(port));
    assert!(
        before.contains("CN") && !before.contains("rotated"),
        "{before}"
    );
    let dir = bed.cluster.tls_dir();
    let (cert, key) = certs::Ca::existing(&dir)
        .issue(
            &dir,
            "rotated",
            "rotated.tidepool",
            Some("DNS:localhost,IP:127.0.0.1"),
            certs::Usage::Server,
            true,
        )
        .unwrap();
    let own = dir.join("served");
    std::fs::copy(&cert, own.join("tidepool.crt")).unwrap();
    std::fs::copy(&key, own.join("tidepool.key")).unwrap();
    bed.tp.sighup().unwrap();
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(10), "the rotated certificate", || {
            served_subject(port).contains("rotated.tidepool")
        })
    })
    .unwrap();
    // New clients verify the new certificate (an RSA key now).
    let out = tokio::task::block_in_place(|| {
        psql(
            &bed,
            &format!(
                "user=app password=app dbname=app sslmode=verify-full sslrootcert={ca} channel_binding=require"
            ),
            "select 1",
        )
    });
    assert_eq!(out.unwrap(), "1");
    // The client connected before is still served.
    assert_eq!(ask(&mut stdin, &mut stdout, "select 2 + 2").await, "4");

    // A broken file on reload keeps the old certificate and says why.
    std::fs::write(own.join("tidepool.key"), "not a key").unwrap();
    let (code, body) = tokio::task::block_in_place(|| bed.tp.http_post("/v1/reload")).unwrap();
    assert_ne!(code, 200, "{body}");
    assert!(body.contains("tidepool.key"), "{body}");
    let still = tokio::task::block_in_place(|| served_subject(port));
    assert!(still.contains("rotated.tidepool"), "{still}");
    drop(stdin);
    let _ = held.wait().await;
}
