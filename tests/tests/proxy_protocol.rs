//! Clients speak to tidepool as to PostgreSQL: psql, tokio-postgres (simple
//! and extended protocol), pgbench, COPY, cancel — in both pooling modes.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, pin_mut};

async fn extended_and_simple_queries_work(mode: &str) {
    let size = if mode == "session" {
        "max_size = 8"
    } else {
        "max_size = 2"
    };
    let bed = common::bed(0, mode, size, "").await.unwrap();
    let c = bed.app().await.unwrap();
    // Simple protocol.
    let rows = c.simple_query("SELECT 1 AS one, 'x' AS two").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1"))
    );
    // Extended protocol with parameters; the statement is prepared once and
    // used in later transactions, which in transaction mode may run on
    // another backend connection.
    c.batch_execute("CREATE TABLE IF NOT EXISTS kv (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let insert = c.prepare("INSERT INTO kv VALUES ($1, $2)").await.unwrap();
    let select = c.prepare("SELECT v FROM kv WHERE k = $1").await.unwrap();
    for i in 0..50i32 {
        c.execute(&insert, &[&i, &format!("v{i}")]).await.unwrap();
    }
    // Other clients use the pool's connections in between.
    let others: Vec<_> = futures_util::future::join_all((0..4).map(|_| bed.app())).await;
    for o in &others {
        let o = o.as_ref().unwrap();
        o.query_one("SELECT count(*) FROM kv", &[]).await.unwrap();
    }
    for i in 0..50i32 {
        let row = c.query_one(&select, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("v{i}"));
    }
    // A failing statement in the extended protocol, then the session goes on.
    let err = c.query_one("SELECT 1/$1::int", &[&0i32]).await.unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("22012"));
    assert_eq!(
        c.query_one(&select, &[&7i32])
            .await
            .unwrap()
            .get::<_, String>(0),
        "v7"
    );
    // Explicit transactions.
    let mut c2 = bed.app().await.unwrap();
    let tx = c2.transaction().await.unwrap();
    tx.execute("INSERT INTO kv VALUES (1000, 'tx')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM kv WHERE k = 1000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // psql through tidepool.
    let out = bed
        .run_client(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-d",
                "app",
                "-c",
                "SELECT count(*) FROM kv",
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_tokio_postgres_work_in_transaction_mode() {
    extended_and_simple_queries_work("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_tokio_postgres_work_in_session_mode() {
    extended_and_simple_queries_work("session").await;
}

fn pgbench_ok(bed: &common::Bed, args: &[&str]) {
    let out = bed.run_client("pgbench", args).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench {args:?} failed:\n{stdout}\n{stderr}"
    );
    if args.contains(&"-T") {
        assert!(
            stdout.contains("number of failed transactions: 0 "),
            "{stdout}"
        );
        let processed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(processed > 0, "{stdout}");
    }
}

async fn pgbench_runs(mode: &str) {
    // Session pooling gives every client a server connection of its own;
    // transaction pooling serves the 8 clients with 4, which -M prepared
    // (a blocking PQprepare while the thread's other clients hold
    // connections in open transactions) must survive without a deadlock.
    let size = if mode == "session" {
        "max_size = 12"
    } else {
        "max_size = 4"
    };
    let bed = common::bed(0, mode, size, "").await.unwrap();
    pgbench_ok(&bed, &["-i", "-s", "1", "-q", "app"]);
    for protocol in ["simple", "extended", "prepared"] {
        pgbench_ok(
            &bed,
            &["-c", "8", "-j", "2", "-T", "2", "-M", protocol, "app"],
        );
        pgbench_ok(
            &bed,
            &["-S", "-c", "8", "-j", "2", "-T", "2", "-M", protocol, "app"],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_and_runs_complete_in_transaction_mode() {
    pgbench_runs("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_and_runs_complete_in_session_mode() {
    pgbench_runs("session").await;
}

async fn copy_out(c: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
    let stream = c.copy_out(sql).await.unwrap();
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_100k_rows_through_tidepool_matches_direct() {
    let bed = common::bed(0, "transaction", "", "").await.unwrap();
    let c = bed.app().await.unwrap();
    c.batch_execute("CREATE TABLE big (id int, name text, at timestamptz)")
        .await
        .unwrap();
    let mut data = Vec::new();
    for i in 0..100_000 {
        data.extend_from_slice(
            format!("{i}\tname-{i}\t2026-01-01 00:00:{:02}+00\n", i % 60).as_bytes(),
        );
    }
    let sink = c.copy_in("COPY big FROM STDIN").await.unwrap();
    pin_mut!(sink);
    for chunk in data.chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 100_000);
    let through = copy_out(&c, "COPY (SELECT * FROM big ORDER BY id) TO STDOUT").await;
    let direct = copy_out(
        &bed.direct().await.unwrap(),
        "COPY (SELECT * FROM big ORDER BY id) TO STDOUT",
    )
    .await;
    assert_eq!(through.len(), direct.len());
    assert!(
        through == direct,
        "COPY output through tidepool differs from direct"
    );
    assert_eq!(through.iter().filter(|&&b| b == b'\n').count(), 100_000);
    // A failed COPY leaves the session usable.
    let sink = c.copy_in::<_, Bytes>("COPY big FROM STDIN").await.unwrap();
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\tnow\n"))
        .await
        .unwrap();
    assert!(sink.finish().await.is_err());
    let n: i64 = c
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_pg_sleep_returns_at_once_and_the_session_goes_on() {
    let bed = common::bed(0, "transaction", "", "").await.unwrap();
    let c = bed.app().await.unwrap();
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    let elapsed = started.elapsed();
    canceller.await.unwrap().unwrap();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("57014"), "{err}");
    println!("pg_sleep(30) cancelled after {elapsed:?} (cancel sent at 300ms)");
    // pg_sleep(30) did not run to its end.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let v: i32 = c.query_one("SELECT 42", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

/// A cancel request that comes while the client's statement waits for a
/// server connection (here: behind another client's open transaction in a
/// pool of one) is not dropped: the statement is cancelled once it runs,
/// as it would be on a direct connection, where the server was already
/// running it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_while_the_statement_waits_for_a_connection_cancels_it() {
    let bed = common::bed(0, "transaction", "max_size = 1", "")
        .await
        .unwrap();
    let holder = bed.app().await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let c = bed.app().await.unwrap();
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(30)").await.map(|_| ());
        (r, c)
    });
    // The statement is queued for the pool's one connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sleeper.is_finished());
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let (r, c) = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .expect("the cancelled statement ended")
        .unwrap();
    let err = r.expect_err("pg_sleep(30) was cancelled");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The cancel was spent on that statement: the next one runs.
    let v: i32 = c.query_one("SELECT 42", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

/// A client's messages are read in place: while its first statement
/// waits for a server connection, the rest of a message it had only half
/// sent arrives, and is read after the half that came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_split_across_a_wait_for_a_connection_is_read_whole() {
    use tidepool_tests::wire;
    use tokio::io::AsyncWriteExt;

    let bed = common::bed(
        0,
        "transaction",
        "max_size = 1",
        "[[hba]]\ntype = \"host\"\ndatabase = \"all\"\nuser = \"all\"\naddress = \"all\"\nmethod = \"trust\"\n",
    )
    .await
    .unwrap();
    let holder = bed.app().await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut s = wire::login(bed.tidepool.port(), "app", "app", &[])
        .await
        .unwrap();
    let first = wire::message(b'Q', b"SELECT 1\0");
    let second = wire::message(b'Q', b"SELECT 'second', 2 + 2\0");
    let (head, tail) = second.split_at(9);
    // One whole Query and the start of the next: the first waits for the
    // pool's one connection.
    s.write_all(&[first.as_slice(), head].concat())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(tail).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let mut rows = Vec::new();
    for _ in 0..2 {
        loop {
            let (tag, body) =
                tokio::time::timeout(Duration::from_secs(10), wire::read_message(&mut s))
                    .await
                    .expect("replies came")
                    .unwrap();
            match tag {
                b'D' => rows.push(body),
                b'E' => panic!("error: {}", String::from_utf8_lossy(&body)),
                b'Z' => break,
                _ => {}
            }
        }
    }
    assert_eq!(rows.len(), 2, "one row per query");
    let last = String::from_utf8_lossy(&rows[1]).into_owned();
    assert!(last.contains("second") && last.contains('4'), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_notifications_and_parameter_status_reach_the_client() {
    let bed = common::bed(0, "session", "", "").await.unwrap();
    let (client, mut connection) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    client
        .batch_execute(
            "LISTEN chan; DO $$BEGIN RAISE NOTICE 'hello notice'; END$$; NOTIFY chan, 'payload'",
        )
        .await
        .unwrap();
    let mut saw_notice = false;
    let mut saw_notification = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(saw_notice && saw_notification) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(tokio_postgres::AsyncMessage::Notice(n))) => {
                saw_notice |= n.message() == "hello notice"
            }
            Ok(Some(tokio_postgres::AsyncMessage::Notification(n))) => {
                saw_notification |= n.channel() == "chan" && n.payload() == "payload"
            }
            _ => {}
        }
    }
    assert!(saw_notice && saw_notification);
}
