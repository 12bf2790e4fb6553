//! A client that leaves in the middle of an extended-protocol batch (no
//! Sync yet) must not leave its work to the next client of that server
//! connection: PostgreSQL alone rolls such work back when the client goes,
//! and so must tidepool — the connection is not reused while it holds an
//! implicit transaction or skips to a Sync that will never come.

mod common;

use std::time::Duration;

use tidepool_tests::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads messages until one tagged `tag` arrives; panics on an error.
async fn read_until(s: &mut tokio::net::TcpStream, tag: u8) {
    loop {
        let mut head = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
            .await
            .expect("an answer")
            .unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        assert_ne!(head[0], b'E', "error: {}", String::from_utf8_lossy(&body));
        if head[0] == tag {
            return;
        }
    }
}

/// Logs in as `app` (trusted by tidepool's hba here), runs `sql` with
/// Parse/Bind/Execute and a Flush — but no Sync — waits for its
/// CommandComplete (or for the error, with `fails`), and goes away.
async fn abandon(port: u16, sql: &str, fails: bool) {
    let mut s = wire::login(port, "app", "app", &[]).await.unwrap();
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut batch = wire::message(b'P', &parse);
    batch.extend(wire::message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    batch.extend(wire::message(b'E', &[0, 0, 0, 0, 0]));
    batch.extend(wire::message(b'H', &[]));
    s.write_all(&batch).await.unwrap();
    if fails {
        // The error, then the server skips everything until a Sync.
        let mut head = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
            .await
            .expect("an answer")
            .unwrap();
    } else {
        read_until(&mut s, b'C').await;
    }
    drop(s);
}

async fn abandoned_work_is_never_committed(mode: &str) {
    let hba = "[[hba]]\ntype = \"host\"\ndatabase = \"all\"\nuser = \"app\"\naddress = \"all\"\nmethod = \"trust\"\n";
    // One server connection, so the next client gets the same one.
    let bed = common::bed(0, mode, "max_size = 1", hba).await.unwrap();
    let c = bed.app().await.unwrap();
    c.batch_execute("create table t (i int)").await.unwrap();
    drop(c);
    abandon(bed.tidepool.port(), "insert into t values (1)", false).await;
    // A failed batch left before its Sync: the next client must not hang.
    abandon(bed.tidepool.port(), "select 1/0", true).await;
    let next = bed.app().await.unwrap();
    let n: i64 = tokio::time::timeout(
        Duration::from_secs(10),
        next.query_one("select count(*) from t", &[]),
    )
    .await
    .expect("the next client is answered")
    .unwrap()
    .get(0);
    assert_eq!(n, 0, "{mode}: the abandoned insert is not visible");
    next.batch_execute("insert into t values (2)")
        .await
        .unwrap();
    let direct = bed.direct().await.unwrap();
    let rows: Vec<i32> = direct
        .query("select i from t order by i", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec![2],
        "{mode}: only the acknowledged write is there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_abandoned_before_sync_is_rolled_back_in_transaction_mode() {
    abandoned_work_is_never_committed("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_abandoned_before_sync_is_rolled_back_in_session_mode() {
    abandoned_work_is_never_committed("session").await;
}
