//! scripts/demo as a new user runs it: start it, kill -9 its primary to
//! watch the failover, stop it, start it again — the second demo serves.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tidepool_tests::{Tidepool, free_port, scripts_dir, wait_for_async};

struct Demo {
    child: Child,
    uri: String,
}

impl Demo {
    fn start(dir: &Path, ports: &str, listen: u16, admin: u16) -> Demo {
        let log = std::fs::File::create(dir.join(format!("demo-{listen}.err"))).unwrap();
        let mut child = Command::new(scripts_dir().join("demo"))
            .args(["--no-setup", "--no-build", "--dir"])
            .arg(dir.join("demo"))
            .args(["--ports", ports])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .env("TIDEPOOL_BIN", Tidepool::binary().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("postgres://"),
            "the demo printed no URI: {}",
            std::fs::read_to_string(dir.join(format!("demo-{listen}.err"))).unwrap_or_default()
        );
        Demo {
            child,
            uri: line.trim().to_string(),
        }
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.uri, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    }

    /// SIGTERM, as the demo's help says: it stops tidepool and the
    /// cluster. Whether it stopped within a minute.
    fn terminate(&mut self) -> bool {
        if self.child.try_wait().ok().flatten().is_some() {
            return true;
        }
        signal_group(self.child.id(), "TERM");
        for _ in 0..600 {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_group(self.child.id(), "KILL");
        let _ = self.child.wait();
        false
    }

    fn stop(mut self) {
        assert!(self.terminate(), "the demo did not stop within 60 s");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_started_again_after_a_failover_serves() {
    let dir = tempfile::tempdir().unwrap();
    // The servers run as their own user and must reach the cluster inside.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ports = format!("{},{},{}", free_port(), free_port(), free_port());
    let (listen, admin) = (free_port(), free_port());

    let demo = Demo::start(dir.path(), &ports, listen, admin);
    let c = demo.client().await;
    c.batch_execute("CREATE TABLE before (n int); INSERT INTO before VALUES (1)")
        .await
        .unwrap();
    // kill -9 the primary: tidepool fails over and fences it.
    let out = Command::new(scripts_dir().join("dev-cluster"))
        .args(["kill", "--dir"])
        .arg(dir.path().join("demo/cluster"))
        .args(["--node", "pg0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_async(
        Duration::from_secs(60),
        "writes after the failover",
        || async {
            let c = demo.client().await;
            c.batch_execute("INSERT INTO before VALUES (2)").await?;
            Ok(())
        },
    )
    .await
    .unwrap();
    let state = std::fs::read_to_string(dir.path().join("demo/tidepool-state.json")).unwrap();
    assert!(state.contains("pg0"), "pg0 fenced: {state}");

    //");
    demo.stop();

    // A new demo: a fresh cluster, and it serves.
    let demo = Demo::start(dir.path(), &ports, listen, admin);
    let c = demo.client().await;
    c.batch_execute("CREATE TABLE after (n int); INSERT INTO after VALUES (3)")
        .await
        .unwrap();
    let n: i32 = c
        .query_one("SELECT n FROM after", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    demo.stop();
}
