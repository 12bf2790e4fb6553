//! A client that pipelines faster than it reads its replies costs tidepool
//! about what it costs PostgreSQL's own backend: tidepool holds a bounded
//! backlog of replies and of replies awaited, then lets the server wait,
//! which makes the server stop reading, which makes the client's writes
//! wait.

mod common;

use std::time::Duration;

use tidepool_tests::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// How a client pipelines: `count` copies of `message`, all sent from one
/// task, while another reads the replies 64 KiB at a time — after a pause
/// of `pause_before` (a client that does not read at all for a while),
/// then with `pause` between reads (a slow reader).
struct Pipeline {
    message: Vec<u8>,
    count: usize,
    pause_before: Duration,
    pause: Duration,
}

impl Pipeline {
    /// Runs on `s`; returns the number of ReadyForQuery messages read, and
    /// the connection, still open.
    async fn run(&self, s: tokio::net::TcpStream) -> (usize, tokio::net::TcpStream) {
        let (mut rd, mut wr) = s.into_split();
        let batch = self.message.repeat(100);
        let rounds = self.count / 100;
        let writer = tokio::spawn(async move {
            for _ in 0..rounds {
                wr.write_all(&batch).await.unwrap();
            }
            wr
        });
        tokio::time::sleep(self.pause_before).await;
        let mut ready = 0;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while ready < self.count {
            let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut chunk))
                .await
                .expect("replies keep coming")
                .unwrap();
            assert!(n > 0, "closed after {ready} replies");
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while buf.len() - at >= 5 {
                let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]);
                let end = at + 1 + len as usize;
                if buf.len() < end {
                    break;
                }
                match buf[at] {
                    b'Z' => ready += 1,
                    b'E' => panic!("error: {}", String::from_utf8_lossy(&buf[at + 5..end])),
                    _ => {}
                }
                at = end;
            }
            buf.drain(..at);
            tokio::time::sleep(self.pause).await;
        }
        let wr = writer.await.unwrap();
        (ready, rd.reunite(wr).unwrap())
    }
}

async fn costs_tidepool_no_more_than_postgresql(p: Pipeline) {
    let trust = "[[hba]]\ntype = \"host\"\ndatabase = \"all\"\nuser = \"all\"\naddress = \"all\"\nmethod = \"trust\"\n";
    let bed = common::bed(0, "session", "", trust).await.unwrap();

    // What the client costs PostgreSQL's backend, directly.
    let port = bed.cluster.primary().port;
    let (s, pid) = wire::login_keyed(port, "trustuser", "app", &[])
        .await
        .unwrap();
    let (ready, _open) = p.run(s).await;
    assert_eq!(ready, p.count);
    let backend = peak_rss(pid as u32);

    // And what it costs tidepool: its peak grows by no more than twice that.
    let before = peak_rss(bed.tidepool.pid());
    let s = wire::login(bed.tidepool.port(), "app", "app", &[])
        .await
        .unwrap();
    let (ready, _open) = p.run(s).await;
    assert_eq!(ready, p.count);
    let grown = peak_rss(bed.tidepool.pid()).saturating_sub(before);
    eprintln!(
        "backend peak {} KiB; tidepool grew by {} KiB",
        backend / 1024,
        grown / 1024
    );
    assert!(
        grown <= 2 * backend,
        "tidepool grew by {grown} bytes for a client its backend served in {backend}"
    );
    // Others are served after.
    let c = bed.app().await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_large_results_costs_tidepool_no_more_than_postgresql() {
    // 40 MB of results for 280 KB of queries, read 64 KiB a millisecond.
    costs_tidepool_no_more_than_postgresql(Pipeline {
        message: wire::message(b'Q', b"SELECT repeat('x', 4096)\0"),
        count: 10_000,
        pause_before: Duration::ZERO,
        pause: Duration::from_millis(1),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_not_read_for_a_while_costs_tidepool_no_more_than_postgresql() {
    // 2 MB of Sync messages, each a reply to wait for, sent while the
    // client reads nothing for two seconds.
    costs_tidepool_no_more_than_postgresql(Pipeline {
        message: wire::message(b'S', b""),
        count: 400_000,
        pause_before: Duration::from_secs(2),
        pause: Duration::ZERO,
    })
    .await;
}
