//! The query cache, end to end: real PostgreSQL, real memcached. A result
//! is answered from the cache only while no write that passed through
//! tidepool (any client, any protocol, any node sharing the store) can
//! have changed it.

mod common;

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, free_port, wait_for_async};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Rows of `sql` as text, with the column names first.
async fn rows(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    for m in c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    {
        if let SimpleQueryMessage::Row(r) = m {
            if out.is_empty() {
                out.push(
                    r.columns()
                        .iter()
                        .map(|c| Some(c.name().to_string()))
                        .collect(),
                );
            }
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    out
}

/// `SELECT v, note FROM acc WHERE id = $1` with the unnamed statement
/// (Parse, Bind, Describe, Execute, Sync in one round trip).
async fn by_typed(c: &Client, id: i32) -> Vec<(i32, String)> {
    c.query_typed(
        "SELECT v, note FROM acc WHERE id = $1",
        &[(&id, tokio_postgres::types::Type::INT4)],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
    .collect()
}

async fn value(c: &Client, sql: &str) -> String {
    rows(c, sql).await[1][0].clone().unwrap_or_default()
}

/// `SHOW POOL_CACHE` through `t`, as column → value.
async fn cache_figures(t: &Tidepool) -> HashMap<String, String> {
    let c = t.connect("app", "app", "app").await.unwrap();
    let r = rows(&c, "SHOW POOL_CACHE").await;
    r[0].iter()
        .zip(&r[1])
        .map(|(k, v)| (k.clone().unwrap(), v.clone().unwrap_or_default()))
        .collect()
}

async fn hits(t: &Tidepool) -> u64 {
    cache_figures(t).await["num_cache_hits"].parse().unwrap()
}

/// A memcached server of the test's own, on a free port; stopped on drop.
struct Memcached {
    child: Child,
    port: u16,
}

impl Memcached {
    fn start() -> Result<Memcached> {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Result<Memcached> {
        let child = Command::new("memcached")
            .args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-m",
                "64",
                "-u",
                "nobody",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting memcached (scripts/setup installs it)")?;
        tidepool_tests::wait_for(Duration::from_secs(10), "memcached to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))?;
            Ok(())
        })?;
        Ok(Memcached { child, port })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.stop();
    }
}

fn cache_section(store: &str, extra: &str) -> String {
    format!("[query_cache]\nenabled = true\nstore = \"{store}\"\n{extra}\n")
}

async fn start(cluster: &PgCluster, mode: &str, cache: &str) -> Tidepool {
    let cfg = common::config(cluster, mode, "max_size = 10", cache);
    let t = Tidepool::start(&cfg).unwrap();
    wait_for_async(Duration::from_secs(30), "tidepool to serve", || async {
        let c = t.connect("app", "app", "app").await?;
        c.simple_query("SELECT 1").await?;
        Ok(())
    })
    .await
    .unwrap();
    t
}

async fn setup_tables(cluster: &PgCluster) {
    let d = cluster
        .connect(cluster.primary().name.as_str(), "app", "app", "app")
        .await
        .unwrap();
    d.batch_execute(
        "CREATE TABLE acc (id int PRIMARY KEY, v int, note text); \
         INSERT INTO acc SELECT g, g * 10, 'row ' || g FROM generate_series(1, 20) g; \
         CREATE TABLE other (id int PRIMARY KEY, v int); INSERT INTO other VALUES (1, 1); \
         CREATE TABLE secret (v int); INSERT INTO secret VALUES (7); \
         CREATE TABLE big (v text); INSERT INTO big SELECT repeat('x', 1000) FROM generate_series(1, 200)",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_answers_repeated_reads_and_never_serves_a_result_a_write_changed() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
    setup_tables(&cluster).await;
    let t = start(
        &cluster,
        "transaction",
        &cache_section(
            "memory",
            "no_cache_tables = [\"secret\"]\nmax_entry_size = 65536",
        ),
    )
    .await;
    let direct = cluster
        .connect(cluster.primary().name.as_str(), "app", "app", "app")
        .await
        .unwrap();
    let a = t.connect("app", "app", "app").await.unwrap();
    let b = t.connect("app", "app", "app").await.unwrap();
    let q = "SELECT id, v, note FROM acc WHERE id <= 5 ORDER BY id";

    // A repeated read is answered from the cache, equal to the database's
    // answer (column names and every value).
    let first = rows(&a, q).await;
    let h0 = hits(&t).await;
    assert_eq!(rows(&a, q).await, first);
    assert_eq!(rows(&b, q).await, first);
    assert_eq!(hits(&t).await, h0 + 2, "both repeats are hits");
    assert_eq!(rows(&direct, q).await, first);

    // A write by another client, in either protocol, is seen at once.
    for i in 0..20 {
        let want = 1000 + i;
        if i % 2 == 0 {
            b.simple_query(&format!("UPDATE acc SET v = {want} WHERE id = 1"))
                .await
                .unwrap();
        } else {
            b.execute("UPDATE acc SET v = $1 WHERE id = 1", &[&want])
                .await
                .unwrap();
        }
        assert_eq!(
            value(&a, "SELECT v FROM acc WHERE id = 1").await,
            want.to_string(),
            "round {i}"
        );
        // And the new value is cached in turn.
        assert_eq!(
            value(&a, "SELECT v FROM acc WHERE id = 1").await,
            want.to_string()
        );
    }

    // The extended protocol: a query with parameters (Parse, Bind,
    // Describe, Execute, Sync) and a prepared statement run (Bind,
    // Execute, Sync) are answered from the cache too, per parameter value.
    let five = by_typed(&a, 5).await;
    let h = hits(&t).await;
    assert_eq!(by_typed(&a, 5).await, five);
    assert_eq!(by_typed(&b, 5).await, five);
    assert_eq!(hits(&t).await, h + 2);
    assert_eq!(five, vec![(50, "row 5".to_string())]);
    assert_eq!(by_typed(&a, 6).await, vec![(60, "row 6".to_string())]);
    let st = a.prepare("SELECT v FROM acc WHERE id = $1").await.unwrap();
    let run = |id: i32| {
        let (a, st) = (&a, &st);
        async move { a.query_one(st, &[&id]).await.unwrap().get::<_, i32>(0) }
    };
    assert_eq!(run(7).await, 70);
    let h = hits(&t).await;
    assert_eq!(run(7).await, 70);
    assert_eq!(hits(&t).await, h + 1, "a prepared statement's run is a hit");
    b.execute("UPDATE acc SET v = 71 WHERE id = $1", &[&7i32])
        .await
        .unwrap();
    assert_eq!(run(7).await, 71);
    b.simple_query("UPDATE acc SET note = 'five' WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(by_typed(&a, 5).await, vec![(50, "five".to_string())]);

    // A transaction's write: invisible (and uncached) before COMMIT, seen after.
    b.simple_query("BEGIN").await.unwrap();
    b.simple_query("UPDATE acc SET v = -1 WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(value(&a, "SELECT v FROM acc WHERE id = 2").await, "20");
    assert_eq!(value(&a, "SELECT v FROM acc WHERE id = 2").await, "20");
    b.simple_query("COMMIT").await.unwrap();
    assert_eq!(value(&a, "SELECT v FROM acc WHERE id = 2").await, "-1");
    // Rolled back: the old value stays right, and stays cached.
    assert_eq!(value(&a, "SELECT v FROM acc WHERE id = 2").await, "-1");
    b.simple_query("BEGIN").await.unwrap();
    b.simple_query("UPDATE acc SET v = -2 WHERE id = 2")
        .await
        .unwrap();
    b.simple_query("ROLLBACK").await.unwrap();
    let before = hits(&t).await;
    assert_eq!(value(&a, "SELECT v FROM acc WHERE id = 2").await, "-1");
    assert_eq!(
        hits(&t).await,
        before + 1,
        "a rolled-back write dropped a result"
    );
    // A rollback to a savepoint is not the end: the COMMIT after it is.
    b.batch_execute(
        "BEGIN; UPDATE acc SET v = -3 WHERE id = 2; SAVEPOINT s; \
         UPDATE acc SET v = -4 WHERE id = 3; ROLLBACK TO SAVEPOINT s",
    )
    .await
    .unwrap();
    b.simple_query("COMMIT").await.unwrap();
    assert_eq!(value(&a, "SELECT v FROM acc WHERE id = 2").await, "-3");

    // DDL drops every result of the database.
    value(&a, "SELECT count(*) FROM other").await;
    b.simple_query("ALTER TABLE other ADD COLUMN w int DEFAULT 5")
        .await
        .unwrap();
    assert_eq!(
        rows(&a, "SELECT * FROM other").await[0],
        vec![Some("id".into()), Some("v".into()), Some("w".into())]
    );

    // Never cached: volatile functions, reads inside a transaction,
    // excluded tables, results over max_entry_size.
    let never = [
        "SELECT random() FROM acc WHERE id = 3",
        "SELECT v FROM secret",
        "SELECT * FROM big",
    ];
    for sql in never {
        rows(&a, sql).await;
        let before = hits(&t).await;
        rows(&a, sql).await;
        assert_eq!(hits(&t).await, before, "{sql} was answered from the cache");
    }
    a.simple_query("BEGIN").await.unwrap();
    let before = hits(&t).await;
    rows(&a, q).await;
    rows(&a, q).await;
    a.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        hits(&t).await,
        before,
        "a read inside a transaction was cached"
    );

    // A temporary table shadowing a cached one: the session reads its own.
    let c = t.connect("app", "app", "app").await.unwrap();
    rows(&c, "SELECT v FROM other").await;
    let s = Tidepool::start(&common::config(
        &cluster,
        "session",
        "max_size = 4",
        &cache_section("memory", ""),
    ))
    .unwrap();
    wait_for_async(Duration::from_secs(30), "session-mode tidepool", || async {
        s.connect("app", "app", "app")
            .await?
            .simple_query("SELECT 1")
            .await?;
        Ok(())
    })
    .await
    .unwrap();
    let sc = s.connect("app", "app", "app").await.unwrap();
    assert_eq!(value(&sc, "SELECT v FROM other").await, "1");
    assert_eq!(value(&sc, "SELECT v FROM other").await, "1");
    sc.batch_execute("CREATE TEMP TABLE other (v int); INSERT INTO other VALUES (99)")
        .await
        .unwrap();
    assert_eq!(value(&sc, "SELECT v FROM other").await, "99");

    // Invalidation by hand.
    rows(&a, q).await;
    let (code, body) = t.http_post("/v1/cache/invalidate").unwrap();
    assert_eq!(code, 200, "{body}");
    let before = hits(&t).await;
    rows(&a, q).await;
    assert_eq!(hits(&t).await, before, "a result survived the invalidation");

    let (code, metrics) = t.http_get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tidepool_query_cache_hits_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sharing_memcached_never_serve_a_stale_result_and_outlive_memcached() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
    setup_tables(&cluster).await;
    let mut mc = Memcached::start().unwrap();
    let cache = cache_section(
        "memcached",
        &format!("memcached_servers = [\"127.0.0.1:{}\"]", mc.port),
    );
    // Three nodes, as a watchdog group's, sharing one memcached.
    let n1 = start(&cluster, "transaction", &cache).await;
    let n2 = start(&cluster, "transaction", &cache).await;
    let n3 = start(&cluster, "session", &cache).await;
    let c1 = n1.connect("app", "app", "app").await.unwrap();
    let c2 = n2.connect("app", "app", "app").await.unwrap();
    let c3 = n3.connect("app", "app", "app").await.unwrap();
    let q = "SELECT v FROM acc WHERE id = 4";

    // Stored by one node, answered by the other.
    assert_eq!(value(&c1, q).await, "40");
    wait_for_async(
        Duration::from_secs(5),
        "node 2 to hit node 1's result",
        || async {
            let before = hits(&n2).await;
            assert_eq!(value(&c2, q).await, "40");
            anyhow::ensure!(hits(&n2).await > before, "not a hit yet");
            Ok(())
        },
    )
    .await
    .unwrap();

    // Writes through one node, reads through the others: never the old value.
    let clients = [&c1, &c2, &c3];
    for i in 0..30 {
        let want = 500 + i;
        let w = clients[i as usize % 3];
        // Every node reads (and caches) the current value first.
        for r in clients {
            value(r, q).await;
            value(r, q).await;
        }
        w.execute("UPDATE acc SET v = $1 WHERE id = 4", &[&want])
            .await
            .unwrap();
        for (k, r) in clients.iter().enumerate() {
            assert_eq!(value(r, q).await, want.to_string(), "round {i}, node {k}");
        }
    }
    assert!(hits(&n1).await + hits(&n2).await + hits(&n3).await > 30);
    // The extended protocol too: stored by one node, then a write through
    // it, read through the other.
    let (ts1, ts2) = (by_typed(&c1, 8).await, by_typed(&c2, 8).await);
    assert_eq!(ts1, ts2);
    c1.execute("UPDATE acc SET v = -8 WHERE id = 8", &[])
        .await
        .unwrap();
    assert_eq!(by_typed(&c2, 8).await[0].0, -8);

    // memcached killed mid-run: every query still answered, correctly.
    mc.stop();
    for i in 0..10 {
        let want = 900 + i;
        c1.execute("UPDATE acc SET v = $1 WHERE id = 4", &[&want])
            .await
            .unwrap();
        assert_eq!(value(&c2, q).await, want.to_string());
        assert_eq!(value(&c1, q).await, want.to_string());
    }
    let f = cache_figures(&n2).await;
    assert_eq!(f["store_available"], "false", "{f:?}");
    assert!(f["store_errors"].parse::<u64>().unwrap() > 0, "{f:?}");

    // Back again (empty): cached and invalidated as before.
    let _mc = Memcached::start_on(mc.port).unwrap();
    wait_for_async(
        Duration::from_secs(10),
        "a hit after memcached is back",
        || async {
            value(&c1, q).await;
            let before = hits(&n2).await;
            value(&c2, q).await;
            anyhow::ensure!(hits(&n2).await > before, "no hit yet");
            Ok(())
        },
    )
    .await
    .unwrap();
    c2.execute("UPDATE acc SET v = 1 WHERE id = 4", &[])
        .await
        .unwrap();
    assert_eq!(value(&c1, q).await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_invalidation_sees_writes_made_straight_on_the_primary_within_a_second() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
    setup_tables(&cluster).await;
    let primary = cluster.primary().name.clone();
    {
        let d = cluster
            .connect(primary.as_str(), "postgres", "postgres", "postgres")
            .await
            .unwrap();
        d.simple_query("ALTER SYSTEM SET wal_level = logical")
            .await
            .unwrap();
    }
    cluster.stop_node(&primary).unwrap();
    cluster.start_node(&primary).unwrap();
    let t = start(
        &cluster,
        "transaction",
        &cache_section("memory", "invalidation = \"logical\""),
    )
    .await;
    let c = t.connect("app", "app", "app").await.unwrap();
    let q = "SELECT v FROM acc WHERE id = 9";
    value(&c, q).await;
    t.wait_log("following the primary's WAL", Duration::from_secs(15))
        .unwrap();
    let direct = cluster
        .connect(primary.as_str(), "app", "app", "app")
        .await
        .unwrap();
    let mut took = Vec::new();
    for i in 0..5 {
        // Cached first (a hit proves it), then written behind tidepool's back.
        wait_for_async(Duration::from_secs(5), "a hit", || async {
            value(&c, q).await;
            let before = hits(&t).await;
            value(&c, q).await;
            anyhow::ensure!(hits(&t).await > before, "no hit yet");
            Ok(())
        })
        .await
        .unwrap();
        let want = (7000 + i).to_string();
        direct
            .simple_query(&format!("UPDATE acc SET v = {want} WHERE id = 9"))
            .await
            .unwrap();
        let written = std::time::Instant::now();
        while value(&c, q).await != want {
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "round {i}: still stale"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(written.elapsed());
    }
    eprintln!("direct writes seen through tidepool after {took:?}");
    assert!(took.iter().all(|d| *d < Duration::from_secs(1)), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_cascades_roles_and_pipelined_writes_never_yield_a_stale_or_foreign_result() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
    setup_tables(&cluster).await;
    let primary = cluster.primary().name.clone();
    let admin = cluster
        .connect(primary.as_str(), "postgres", "postgres", "postgres")
        .await
        .unwrap();
    admin
        .batch_execute("CREATE ROLE reader NOLOGIN; GRANT reader TO app")
        .await
        .unwrap();
    let direct = cluster
        .connect(primary.as_str(), "app", "app", "app")
        .await
        .unwrap();
    direct
        .batch_execute(
            "CREATE VIEW acc_view AS SELECT id, v FROM acc; \
             CREATE TABLE parent (id int PRIMARY KEY); \
             CREATE TABLE child (id int, pid int REFERENCES parent ON DELETE CASCADE); \
             INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (10, 1), (20, 2)",
        )
        .await
        .unwrap();
    let t = start(&cluster, "session", &cache_section("memory", "")).await;
    let a = t.connect("app", "app", "app").await.unwrap();
    let b = t.connect("app", "app", "app").await.unwrap();

    // A view is not a table: never answered from the cache.
    value(&a, "SELECT v FROM acc_view WHERE id = 1").await;
    let before = hits(&t).await;
    value(&a, "SELECT v FROM acc_view WHERE id = 1").await;
    assert_eq!(hits(&t).await, before, "a view's result was cached");

    // A foreign key's cascade changes another table: seen at once.
    assert_eq!(value(&a, "SELECT count(*) FROM child").await, "2");
    assert_eq!(value(&a, "SELECT count(*) FROM child").await, "2");
    b.simple_query("DELETE FROM parent WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(value(&a, "SELECT count(*) FROM child").await, "1");

    // Another role's rows are not this role's answer.
    let q = "SELECT v FROM acc WHERE id = 12";
    value(&a, q).await;
    value(&a, q).await;
    b.simple_query("SET ROLE reader").await.unwrap();
    let refused = b.simple_query(q).await.unwrap_err();
    assert_eq!(
        common::sqlstate(&refused).as_deref(),
        Some("42501"),
        "a role without the grant got a cached result: {refused:?}"
    );
    b.simple_query("RESET ROLE").await.unwrap();

    // A write pipelined behind a read: the read's end is not the write's.
    // The write waits on a row lock another connection holds; meanwhile a
    // third client reads the row twice (a hit would be the old value
    // later), then the lock goes and the write commits.
    let locker = cluster
        .connect(primary.as_str(), "app", "app", "app")
        .await
        .unwrap();
    locker
        .batch_execute("BEGIN; UPDATE acc SET v = v WHERE id = 13")
        .await
        .unwrap();
    let c = std::sync::Arc::new(t.connect("app", "app", "app").await.unwrap());
    let pipelined = {
        let c = c.clone();
        tokio::spawn(async move {
            // Both queries go out at once (simple protocol: one round trip).
            let read = c.simple_query("SELECT v FROM acc WHERE id = 14");
            let write = c.simple_query("UPDATE acc SET v = 1313 WHERE id = 13");
            let (r, w) = tokio::join!(read, write);
            r.unwrap();
            w.unwrap()
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::CommandComplete(n) => Some(*n),
                    _ => None,
                })
                .sum::<u64>()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reader = t.connect("app", "app", "app").await.unwrap();
    assert_eq!(
        value(&reader, "SELECT v FROM acc WHERE id = 13").await,
        "130"
    );
    assert_eq!(
        value(&reader, "SELECT v FROM acc WHERE id = 13").await,
        "130"
    );
    locker.simple_query("COMMIT").await.unwrap();
    assert_eq!(pipelined.await.unwrap(), 1);
    assert_eq!(
        value(&reader, "SELECT v FROM acc WHERE id = 13").await,
        "1313"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_store_evicts_and_a_hit_says_so_when_asked() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
    setup_tables(&cluster).await;
    let t = start(
        &cluster,
        "transaction",
        &format!(
            "{}\n[load_balancing]\nnotice_per_node_statement = true\n",
            cache_section("memory", "memory_size = 65536\nmax_entry_size = 8192")
        ),
    )
    .await;
    let c = t.connect("app", "app", "app").await.unwrap();
    // 20 results of about 4 KiB: more than 64 KiB in all.
    for round in 0..3 {
        for id in 1..=20 {
            let r = rows(
                &c,
                &format!("SELECT id, repeat('x', 4000) FROM acc WHERE id = {id}"),
            )
            .await;
            assert_eq!(
                r[1][0].as_deref(),
                Some(id.to_string().as_str()),
                "round {round}"
            );
        }
    }
    let (_, metrics) = t.http_get("/metrics").unwrap();
    let evicted: u64 = metrics
        .lines()
        .find(|l| l.starts_with("tidepool_query_cache_evictions_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(evicted > 0, "{metrics}");

    // psql shows the NOTICE a hit carries.
    let psql = common::pg_bindir().join("psql");
    let q = "SELECT v FROM acc WHERE id = 15";
    let out = Command::new(psql)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &t.port().to_string(),
            "-U",
            "app",
            "-d",
            "app",
            "-X",
        ])
        .args(["-c", q, "-c", q])
        .env("PGPASSWORD", "app")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("answered from the query cache"), "{stderr}");
}
