//! Pooling: many clients over few connections, bounded waiting, settings and
//! pinned session state carried right, pool sizes reloaded live.

mod common;

use std::{sync::Arc, time::Duration};

use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, wait_until_async};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_finish_their_transactions_over_twenty_connections() {
    // trust keeps 1,000 logins cheap; authentication has its own tests.
    let bed = common::bed(
        0,
        "transaction",
        "max_size = 20\ncheckout_timeout = \"60s\"",
        "[[hba]]\ntype = \"host\"\ndatabase = \"all\"\nuser = \"all\"\naddress = \"127.0.0.1/32\"\nmethod = \"trust\"\n",
    )
    .await
    .unwrap();
    let setup = bed.app().await.unwrap();
    setup
        .batch_execute("CREATE TABLE t1000 (client int, n int)")
        .await
        .unwrap();
    let port = bed.tidepool.port();
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let conn =
                    format!("host=127.0.0.1 port={port} user=app dbname=app connect_timeout=30");
                let (mut c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                // Every client is connected before any starts its work.
                barrier.wait().await;
                for n in 0..2 {
                    let tx = c.transaction().await?;
                    tx.execute("INSERT INTO t1000 VALUES ($1, $2)", &[&i, &n])
                        .await?;
                    tx.execute("SELECT pg_sleep(0.001)", &[]).await?;
                    tx.commit().await?;
                }
                Ok::<_, tokio_postgres::Error>(c)
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(
            t.await
                .unwrap()
                .expect("every client's transactions commit"),
        );
    }
    let n: i64 = setup
        .query_one("SELECT count(*) FROM t1000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2000);
    let pools = bed.show("POOL_POOLS").await.unwrap();
    let app = pools.iter().find(|p| p["username"] == "app").unwrap();
    let conns: usize = app["connections"].parse().unwrap();
    assert!(conns <= 20, "{conns} backend connections for a pool of 20");
    let direct = bed.direct().await.unwrap();
    let backends: i64 = direct
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND application_name <> 'tidepool health check'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(backends <= 21, "{backends} server processes for user app");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overfull_wait_queue_gives_a_clear_error_not_a_hang() {
    let bed = common::bed(
        0,
        "transaction",
        "max_size = 1\nmax_waiting_clients = 2\ncheckout_timeout = \"2s\"",
        "",
    )
    .await
    .unwrap();
    // One client holds the only connection inside a transaction.
    let holder = bed.app().await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let clients: Vec<_> = futures_util::future::join_all((0..6).map(|_| bed.app())).await;
    let started = std::time::Instant::now();
    let results = futures_util::future::join_all(
        clients
            .iter()
            .map(|c| async move { c.as_ref().unwrap().simple_query("SELECT 1").await }),
    )
    .await;
    let codes: Vec<Option<String>> = results
        .iter()
        .map(|r| r.as_ref().err().and_then(common::sqlstate))
        .collect();
    // Every client gets an answer, and every answer is 53300: the queue is
    // full (at once) or the wait timed out (after checkout_timeout).
    assert!(
        codes.iter().all(|c| c.as_deref() == Some("53300")),
        "{codes:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let messages: Vec<String> = results
        .iter()
        .map(|r| {
            r.as_ref()
                .err()
                .and_then(|e| e.as_db_error())
                .map(|d| d.message().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("max_waiting_clients")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("checkout_timeout")),
        "{messages:?}"
    );
    // The holder finishes; the clients work again.
    holder.batch_execute("COMMIT").await.unwrap();
    for c in &clients {
        c.as_ref().unwrap().simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_each_client_across_shared_connections() {
    let bed = common::bed(0, "transaction", "max_size = 1", "")
        .await
        .unwrap();
    let a = bed.app().await.unwrap();
    let b = bed.app().await.unwrap();
    a.batch_execute("SET search_path TO a_schema, public; SET application_name = 'client-a'")
        .await
        .unwrap();
    b.batch_execute("SET statement_timeout = '7s'")
        .await
        .unwrap();
    for _ in 0..3 {
        let sp: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
        assert_eq!(sp, "a_schema, public");
        let st: String = a
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(st, "0");
        let app: String = a
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(app, "client-a");
        let sp: String = b.query_one("SHOW search_path", &[]).await.unwrap().get(0);
        assert_eq!(sp, "\"$user\", public");
        let st: String = b
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(st, "7s");
    }
    b.batch_execute("RESET statement_timeout").await.unwrap();
    let st: String = b
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(st, "0");
    // Startup parameters travel the same way.
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "{} options='-c search_path=from_startup' application_name=startup-app",
            bed.tidepool.conn_string("app", "app", "app")
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    a.simple_query("SELECT 1").await.unwrap();
    let sp: String = c.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(sp, "from_startup");
    let app: String = c
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "startup-app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_that_cannot_move_pins_the_client_and_is_counted() {
    let bed = common::bed(0, "transaction", "max_size = 2", "")
        .await
        .unwrap();
    let a = bed.app().await.unwrap();
    let before: u64 = bed.show("POOL_PROCESSES").await.unwrap()[0]["sessions_pinned"]
        .parse()
        .unwrap();
    a.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    // Other clients take turns on the pool meanwhile.
    let others: Vec<_> = futures_util::future::join_all((0..3).map(|_| bed.app())).await;
    for o in &others {
        o.as_ref().unwrap().simple_query("SELECT 1").await.unwrap();
    }
    for i in 0..5 {
        a.execute("INSERT INTO scratch VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    let n: i64 = a
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    let after: u64 = bed.show("POOL_PROCESSES").await.unwrap()[0]["sessions_pinned"]
        .parse()
        .unwrap();
    assert_eq!(after, before + 1);
    // Session-level advisory locks stay with their session, too.
    let pid1: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.batch_execute("DISCARD ALL").await.unwrap();
    let _ = pid1;
    let held: bool = a
        .query_one("SELECT pg_try_advisory_lock(42)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(held);
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let direct = bed.direct().await.unwrap();
    let holder: i32 = direct
        .query_one(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 42",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        holder, pid_a,
        "the lock's session serves the client that took it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_changes_pool_size_without_dropping_clients() {
    let bed = common::bed(0, "transaction", "max_size = 2", "")
        .await
        .unwrap();
    let c = bed.app().await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let pools = bed.show("POOL_POOLS").await.unwrap();
    assert_eq!(pools[0]["max_size"], "2");
    let cfg = std::fs::read_to_string(bed.tidepool.config_path()).unwrap();
    bed.tidepool
        .rewrite_config(&cfg.replace("max_size = 2", "max_size = 7"))
        .unwrap();
    bed.tidepool.sighup().unwrap();
    wait_until_async(Duration::from_secs(10), "pool size 7", || async {
        bed.show("POOL_POOLS")
            .await
            .map(|p| p[0]["max_size"] == "7")
            .unwrap_or(false)
    })
    .await
    .unwrap();
    // The client connected before the reload is still served.
    let v: i32 = c.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    // A broken file changes nothing and tidepool keeps serving.
    bed.tidepool
        .rewrite_config("[pool]\nmax_size = \"many\"\n")
        .unwrap();
    bed.tidepool.sighup().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pools = bed.show("POOL_POOLS").await.unwrap();
    assert_eq!(pools[0]["max_size"], "7");
    let _: &Tidepool = &bed.tidepool;
}

/// Clients spread over four worker threads share a pool of two server
/// connections: a worker with none idle borrows another's, every
/// transaction commits, and the pool never grows past its size — under
/// both schedulers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_four_workers_share_a_pool_of_two() {
    for scheduler in ["per_core", "work_stealing"] {
        let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
        let cfg = common::config(
            &cluster,
            "transaction",
            "max_size = 2\ncheckout_timeout = \"60s\"",
            "",
        )
        .replace(
            "[server]\n",
            &format!("[server]\nworker_threads = 4\nscheduler = \"{scheduler}\"\n"),
        );
        let bed = common::Bed {
            tidepool: Tidepool::start(&cfg).unwrap(),
            cluster,
        };
        bed.wait_ready().await.unwrap();
        let setup = bed.app().await.unwrap();
        setup
            .batch_execute("CREATE TABLE shared2 (client int, n int)")
            .await
            .unwrap();
        let port = bed.tidepool.port();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                tokio::spawn(async move {
                    let conn = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");
                    let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
                    tokio::spawn(conn);
                    for n in 0..20 {
                        c.batch_execute(&format!(
                            "BEGIN; INSERT INTO shared2 VALUES ({i}, {n}); SELECT pg_sleep(0.0005); COMMIT"
                        ))
                        .await?;
                    }
                    Ok::<_, tokio_postgres::Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await
                .unwrap()
                .expect("every client's transactions commit");
        }
        let n: i64 = setup
            .query_one("SELECT count(*) FROM shared2", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 800, "{scheduler}");
        let pools = bed.show("POOL_POOLS").await.unwrap();
        let app = pools.iter().find(|p| p["username"] == "app").unwrap();
        let conns: usize = app["connections"].parse().unwrap();
        assert!(
            conns <= 2,
            "{scheduler}: {conns} server connections for a pool of 2"
        );
    }
}
