//! An idle client keeps no large buffer: after a large result and an
//! unnamed statement, what tidepool holds for each client that then sits
//! idle is small, in both pool modes. Measured as tidepool's RSS growth
//! per idle client, after a first round has warmed the allocator (what it
//! took from the system for the first clients' work is reused, not
//! counted). tidepool's allocator gives freed memory back to the system
//! at once here (`MIMALLOC_PURGE_DELAY=0`; by default it waits a little,
//! and RSS then counts room already freed): what is counted is what the
//! idle clients hold.

mod common;

use std::time::Duration;

use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, TidepoolOpts};
use tokio_postgres::{SimpleQueryMessage, types::Type};

/// The largest RSS growth per idle client accepted. A client that kept
/// its last large result's room (128 KiB and more for a 100 KB row) or its server
/// connection's read buffer would be far above it (216 KiB in transaction
/// pooling, 421 KiB in session pooling, before idle clients gave their
/// buffers back); what one holds now is 0-28 KiB (session pooling keeps
/// the client's server connection, and the page-grained RSS moves with
/// where the allocator placed it).
const PER_CLIENT_LIMIT: u64 = 64 * 1024;

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/PID/status")
        * 1024
}

/// `n` clients, each after a 100 KB row and an unnamed statement, kept
/// open and idle.
async fn idle_after_work(bed: &common::Bed, n: usize) -> Vec<tokio_postgres::Client> {
    let mut clients = Vec::new();
    for i in 0..n as i32 {
        let c = bed.app().await.unwrap();
        let rows = c.simple_query("SELECT repeat('x', 100000)").await.unwrap();
        let long = rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::len),
            _ => None,
        });
        assert_eq!(long, Some(100_000));
        let row = c
            .query_typed("SELECT $1::int + 1", &[(&i, Type::INT4)])
            .await
            .unwrap();
        assert_eq!(row[0].get::<_, i32>(0), i + 1);
        clients.push(c);
    }
    clients
}

async fn idle_clients_keep_no_large_buffers(mode: &str) {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
    let cfg = common::config(&cluster, mode, "max_size = 150", "");
    let opts = TidepoolOpts {
        env: vec![("MIMALLOC_PURGE_DELAY".into(), "0".into())],
        ..TidepoolOpts::default()
    };
    let bed = common::Bed {
        tidepool: Tidepool::start_with(&cfg, opts).unwrap(),
        cluster,
    };
    bed.wait_ready().await.unwrap();
    let pid = bed.tidepool.pid();
    let _warm = idle_after_work(&bed, 40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pid);
    let n = 80;
    let _idle = idle_after_work(&bed, n).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(pid);
    let per_client = after.saturating_sub(before) / n as u64;
    eprintln!(
        "{mode} pooling: RSS {} -> {} KiB with {n} more idle clients: {} bytes each",
        before / 1024,
        after / 1024,
        per_client
    );
    assert!(
        per_client < PER_CLIENT_LIMIT,
        "{mode} pooling: each idle client holds {per_client} bytes (limit {PER_CLIENT_LIMIT})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_keep_no_large_buffers_in_transaction_mode() {
    idle_clients_keep_no_large_buffers("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_keep_no_large_buffers_in_session_mode() {
    idle_clients_keep_no_large_buffers("session").await;
}
