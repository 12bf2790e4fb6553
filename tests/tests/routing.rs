//! Read load balancing: every rule proven with the node that served the
//! statement as evidence (`inet_server_port()` names it).

mod common;

use std::{collections::HashMap, time::Duration};

use tidepool_tests::wait_until_async;
use tokio_postgres::SimpleQueryMessage;

/// Port of the server that ran `sql` (which must return it in column 0).
async fn port_of(c: &tokio_postgres::Client, sql: &str) -> u16 {
    for m in c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap().parse().unwrap();
        }
    }
    panic!("{sql}: no row");
}

fn ports(bed: &common::Bed) -> (u16, Vec<u16>) {
    (
        bed.cluster.primary().port,
        bed.cluster.standbys().iter().map(|n| n.port).collect(),
    )
}

/// A cluster of a primary and 2 standbys; the primary takes no reads
/// (weight 0) so a read that lands on it was sent there on purpose.
async fn lb_bed(mode: &str, lb: &str) -> common::Bed {
    let cluster =
        tidepool_tests::PgCluster::start(tidepool_tests::PgClusterOpts::standbys(2)).unwrap();
    let mut cfg = common::config(
        &cluster,
        mode,
        "max_size = 10",
        &format!("[load_balancing]\n{lb}\n"),
    );
    // weight 0 for the primary (first [[backends]] entry).
    cfg = cfg.replacen("weight = 1.0", "weight = 0.0", 1);
    let tidepool = tidepool_tests::Tidepool::start(&cfg).unwrap();
    let bed = common::Bed { tidepool, cluster };
    bed.wait_ready().await.unwrap();
    bed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_standbys_and_writes_and_write_like_reads_never_do() {
    // Where each statement goes, its session's earlier writes aside (the
    // Pgpool-II rule: only an explicit transaction's reads follow its
    // writes; read-your-writes by position is proven below).
    let bed = lb_bed(
        "transaction",
        "statement_level = true\ndisable_on_write = \"transaction\"",
    )
    .await;
    let (primary, standbys) = ports(&bed);
    let c = bed.app().await.unwrap();
    c.batch_execute(
        "CREATE TABLE items (id serial PRIMARY KEY, v int); CREATE SEQUENCE seq; \
         CREATE UNLOGGED TABLE scratch (v int); INSERT INTO items (v) SELECT g FROM generate_series(1, 10) g",
    )
    .await
    .unwrap();
    // Let the standbys replay the DDL.
    wait_until_async(Duration::from_secs(10), "standbys to see items", || async {
        let mut ok = true;
        for s in &standbys {
            let d = bed
                .cluster
                .connect(
                    bed.cluster
                        .nodes()
                        .iter()
                        .find(|n| n.port == *s)
                        .unwrap()
                        .name
                        .as_str(),
                    "app",
                    "app",
                    "app",
                )
                .await
                .unwrap();
            ok &= d
                .query_one("SELECT to_regclass('items') IS NOT NULL", &[])
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false);
        }
        ok
    })
    .await
    .unwrap();

    let mut seen: HashMap<u16, usize> = HashMap::new();
    for _ in 0..60 {
        *seen
            .entry(port_of(&c, "SELECT inet_server_port(), count(*) FROM items").await)
            .or_default() += 1;
    }
    assert_eq!(
        seen.get(&primary),
        None,
        "weight 0: the primary took reads: {seen:?}"
    );
    for s in &standbys {
        assert!(
            seen.get(s).copied().unwrap_or(0) >= 10,
            "standby {s} got too few reads: {seen:?}"
        );
    }

    // Each of these must run on the primary.
    for sql in [
        "INSERT INTO items (v) VALUES (1) RETURNING inet_server_port()",
        "UPDATE items SET v = v WHERE id = 1 RETURNING inet_server_port()",
        "SELECT inet_server_port() FROM items WHERE id = 1 FOR UPDATE",
        "SELECT inet_server_port() FROM items WHERE id = 1 FOR SHARE",
        "SELECT inet_server_port(), nextval('seq')",
        "WITH d AS (DELETE FROM items WHERE id = -1 RETURNING *) SELECT inet_server_port() FROM (SELECT 1) x LEFT JOIN d ON true",
        "SELECT inet_server_port(), count(*) FROM scratch",
        "/* tidepool: primary */ SELECT inet_server_port()",
        "/* a comment */ SELECT inet_server_port()",
        "SELECT inet_server_port(), pg_advisory_xact_lock(1)",
    ] {
        assert_eq!(port_of(&c, sql).await, primary, "{sql}");
    }
    // A read-write transaction runs on the primary; a READ ONLY one may not.
    let rw = c
        .simple_query("BEGIN; SELECT inet_server_port(); COMMIT")
        .await
        .unwrap();
    let rw_port: u16 = rw
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(rw_port, primary);
    let mut ro_ports = Vec::new();
    for _ in 0..10 {
        let ro = c
            .simple_query("BEGIN READ ONLY; SELECT inet_server_port(); COMMIT")
            .await
            .unwrap();
        ro_ports.push(
            ro.iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse::<u16>().unwrap()),
                    _ => None,
                })
                .unwrap(),
        );
    }
    assert!(
        ro_ports.iter().all(|p| standbys.contains(p)),
        "{ro_ports:?}"
    );

    // Extended protocol: decided at Parse.
    let read = c.prepare("SELECT inet_server_port()::int").await.unwrap();
    let write = c
        .prepare("INSERT INTO items (v) VALUES (7) RETURNING inet_server_port()::int")
        .await
        .unwrap();
    for _ in 0..10 {
        let p: i32 = c.query_one(&read, &[]).await.unwrap().get(0);
        assert!(
            standbys.contains(&(p as u16)),
            "{p} primary {primary} standbys {standbys:?}\n{}",
            bed.tidepool.log_tail(30)
        );
        let p: i32 = c.query_one(&write, &[]).await.unwrap().get(0);
        assert_eq!(p as u16, primary);
    }

    // select_cnt counts the balanced reads per node.
    let nodes = bed.show("POOL_NODES").await.unwrap();
    let counted: usize = nodes
        .iter()
        .filter(|n| standbys.contains(&n["port"].parse().unwrap()))
        .map(|n| n["select_cnt"].parse::<usize>().unwrap())
        .sum();
    assert!(counted >= 60, "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_by_weight_within_statistical_bounds() {
    let cluster =
        tidepool_tests::PgCluster::start(tidepool_tests::PgClusterOpts::standbys(2)).unwrap();
    let mut cfg = common::config(&cluster, "transaction", "max_size = 10", "");
    // Weights 0 (primary), 1 and 3.
    cfg = cfg.replacen("weight = 1.0", "weight = 0.0", 1);
    let last = cfg.rfind("weight = 1.0").unwrap();
    cfg.replace_range(last..last + "weight = 1.0".len(), "weight = 3.0");
    let tidepool = tidepool_tests::Tidepool::start(&cfg).unwrap();
    let bed = common::Bed { tidepool, cluster };
    bed.wait_ready().await.unwrap();
    let heavy = bed.cluster.nodes().last().unwrap().port;
    let mut on_heavy = 0;
    let sessions = 120;
    for _ in 0..sessions {
        let c = bed.app().await.unwrap();
        let first = port_of(&c, "SELECT inet_server_port()").await;
        // Session-level choice: the same node for the whole session.
        assert_eq!(port_of(&c, "SELECT inet_server_port()").await, first);
        if first == heavy {
            on_heavy += 1;
        }
    }
    // Expected 90 of 120 (p = 0.75); 99.9% bounds ≈ ±3.3σ (σ ≈ 4.7).
    assert!(
        (74..=106).contains(&on_heavy),
        "{on_heavy} of {sessions} on the weight-3 node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_with_replay_paused_loses_reads_until_it_resumes() {
    let bed = lb_bed(
        "transaction",
        "statement_level = true\ndelay_threshold = 1024\nsr_check_period = \"200ms\"",
    )
    .await;
    let (_, standbys) = ports(&bed);
    let paused = bed.cluster.standbys()[0].name.clone();
    let paused_port = standbys[0];
    let c = bed.app().await.unwrap();
    c.batch_execute("CREATE TABLE filler (x text)")
        .await
        .unwrap();
    bed.cluster
        .psql(&paused, "SELECT pg_wal_replay_pause()")
        .unwrap();
    // Make the paused standby fall behind.
    c.batch_execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 200)")
        .await
        .unwrap();
    wait_until_async(
        Duration::from_secs(5),
        "reads to leave the paused standby",
        || async {
            let mut on_paused = 0;
            for _ in 0..20 {
                if port_of(&c, "SELECT inet_server_port()").await == paused_port {
                    on_paused += 1;
                }
            }
            on_paused == 0
        },
    )
    .await
    .unwrap();
    bed.cluster
        .psql(&paused, "SELECT pg_wal_replay_resume()")
        .unwrap();
    wait_until_async(
        Duration::from_secs(10),
        "reads to come back to the resumed standby",
        || async {
            let mut on_paused = 0;
            for _ in 0..20 {
                if port_of(&c, "SELECT inet_server_port()").await == paused_port {
                    on_paused += 1;
                }
            }
            on_paused > 0
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_write_always_sends_the_sessions_reads_to_the_primary() {
    let bed = lb_bed(
        "transaction",
        "statement_level = true\ndisable_on_write = \"always\"",
    )
    .await;
    let (primary, standbys) = ports(&bed);
    let c = bed.app().await.unwrap();
    assert!(standbys.contains(&port_of(&c, "SELECT inet_server_port()").await));
    // A statement prepared while the session reads from standbys…
    let read = c.prepare("SELECT inet_server_port()::int").await.unwrap();
    let p: i32 = c.query_one(&read, &[]).await.unwrap().get(0);
    assert!(standbys.contains(&(p as u16)));
    c.batch_execute("CREATE TABLE w (x int)").await.unwrap();
    for _ in 0..10 {
        assert_eq!(port_of(&c, "SELECT inet_server_port()").await, primary);
        // …moves to the primary with the session after its write.
        let p: i32 = c.query_one(&read, &[]).await.unwrap().get(0);
        assert_eq!(p as u16, primary);
    }
    // Another session is not affected.
    let other = bed.app().await.unwrap();
    assert!(standbys.contains(&port_of(&other, "SELECT inet_server_port()").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_preference_by_application_name_wins() {
    let bed = lb_bed(
        "transaction",
        "app_name_redirect_preference_list = \"reporting:2\"",
    )
    .await;
    let target = bed.cluster.nodes()[2].port;
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "{} application_name=reporting",
            bed.tidepool.conn_string("app", "app", "app")
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..10 {
        assert_eq!(port_of(&c, "SELECT inet_server_port()").await, target);
    }
}

fn pgbench_ok(bed: &common::Bed, args: &[&str]) {
    let out = bed.run_client("pgbench", args).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench {args:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if args.contains(&"-T") {
        assert!(
            stdout.contains("number of failed transactions: 0 "),
            "{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_with_load_balancing_in_both_modes() {
    for mode in ["transaction", "session"] {
        let bed = lb_bed(mode, "").await;
        pgbench_ok(&bed, &["-i", "-s", "1", "-q", "app"]);
        for m in ["simple", "extended", "prepared"] {
            pgbench_ok(&bed, &["-c", "4", "-j", "2", "-T", "2", "-M", m, "app"]);
            pgbench_ok(
                &bed,
                &["-S", "-c", "4", "-j", "2", "-T", "2", "-M", m, "app"],
            );
        }
        let nodes = bed.show("POOL_NODES").await.unwrap();
        let standby_selects: usize = nodes
            .iter()
            .filter(|n| n["role"] == "standby")
            .map(|n| n["select_cnt"].parse::<usize>().unwrap())
            .sum();
        assert!(
            standby_selects > 0,
            "{mode}: no reads reached a standby: {nodes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_name_the_node_and_overrides_and_isolation_route_as_configured() {
    let bed = lb_bed(
        "transaction",
        "statement_level = true\nnotice_per_node_statement = true\nread_only_functions = [\"^random$\"]\nwrite_functions = [\"^upper$\"]\nprimary_routing_patterns = [\"audit_log\"]",
    )
    .await;
    let (primary, standbys) = ports(&bed);
    let (c, mut conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    // random() is volatile in the catalog but configured read-only;
    // upper() is immutable but configured as writing.
    assert!(standbys.contains(&port_of(&c, "SELECT inet_server_port(), random()").await));
    assert_eq!(
        port_of(&c, "SELECT inet_server_port(), upper('x')").await,
        primary
    );
    assert_eq!(
        port_of(&c, "SELECT inet_server_port(), 'audit_log'").await,
        primary
    );
    let rows = c
        .simple_query("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT inet_server_port(); COMMIT")
        .await
        .unwrap();
    let p: u16 = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(p, primary);
    let mut notices = Vec::new();
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        notices.push(n);
    }
    assert!(
        notices
            .iter()
            .any(|n| n.contains("standby") && n.contains("load balanced")),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| n.contains("primary") && n.contains("may write")),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| n.contains("primary_routing_pattern")),
        "{notices:?}"
    );
    assert!(
        notices.iter().any(|n| n.contains("serializable")),
        "{notices:?}"
    );
}

/// A client whose NOTICEs (one per routed unit) arrive on a channel.
async fn noticed_client(
    bed: &common::Bed,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (c, mut conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    (c, rx)
}

/// Runs `sql` (errors allowed: routing happens first) and returns the
/// routing NOTICE it got.
async fn routed(
    c: &tokio_postgres::Client,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    sql: &str,
) -> String {
    let answer = c.simple_query(sql).await.map(|_| ());
    if answer.is_err() {
        // tokio-postgres returns at the ErrorResponse, before the
        // ReadyForQuery that ends the statement; a query sent before that
        // arrives is pipelined behind it on the same server connection
        // (tidepool routes at statement boundaries only). Let it arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{sql}: no routing notice (answer: {answer:?})"))
            .unwrap();
        if n.starts_with("tidepool: node") {
            return n;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_kind_lands_where_the_rules_say() {
    let bed = lb_bed(
        "transaction",
        "statement_level = true\nnotice_per_node_statement = true",
    )
    .await;
    let setup = bed.app().await.unwrap();
    setup
        .batch_execute("CREATE TABLE items (id int, v int); INSERT INTO items VALUES (1, 1)")
        .await
        .unwrap();
    bed.cluster.wait_streaming().unwrap();
    let (c, mut rx) = noticed_client(&bed).await;
    let primary = "(pg0, primary)";
    for sql in [
        "SELECT * INTO items_copy FROM items",
        "LISTEN ch",
        "NOTIFY ch",
        "VACUUM items",
        "LOCK TABLE items",
        "SELECT 1; INSERT INTO items VALUES (2, 2)",
        "COMMIT PREPARED 'nothing'",
        "this is not sql",
        "SELECT setval('nothing', 1)",
        "CREATE TABLE more (a int)",
        "DELETE FROM items WHERE id = 99",
    ] {
        let n = routed(&c, &mut rx, sql).await;
        assert!(n.contains(primary), "{sql}: {n}");
        if sql.starts_with("LISTEN") {
            // LISTEN pins the session to its connection until UNLISTEN *.
            c.simple_query("UNLISTEN *").await.unwrap();
        }
    }
    for sql in [
        "SELECT count(*) FROM items",
        "SHOW work_mem",
        "EXPLAIN SELECT * FROM items",
        "WITH x AS (SELECT * FROM items) SELECT * FROM x",
        "SELECT lower('X')",
        "BEGIN READ ONLY; SELECT 1; COMMIT",
    ] {
        let n = routed(&c, &mut rx, sql).await;
        assert!(n.contains("standby"), "{sql}: {n}");
    }
    // A failed transaction stays where it began (the primary).
    let n = routed(&c, &mut rx, "BEGIN").await;
    assert!(n.contains(primary), "{n}");
    assert!(c.simple_query("SELECT 1/0").await.is_err());
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "the failed transaction is kept"
    );
    c.simple_query("ROLLBACK").await.unwrap();
    // Temporary tables: created on the primary, then the session stays there.
    let n = routed(&c, &mut rx, "CREATE TEMP TABLE tt (a int)").await;
    assert!(n.contains(primary), "{n}");
    for _ in 0..5 {
        assert_eq!(
            port_of(
                &c,
                "SELECT inet_server_port() FROM (SELECT count(*) FROM tt) x"
            )
            .await,
            bed.cluster.primary().port
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dml_adaptive_keeps_reads_of_written_tables_on_the_primary() {
    let bed = lb_bed(
        "transaction",
        "statement_level = true\ndisable_on_write = \"dml_adaptive\"\ndml_adaptive_relations = [\"orders:order_lines\"]",
    )
    .await;
    let (primary, standbys) = ports(&bed);
    let setup = bed.app().await.unwrap();
    setup
        .batch_execute("CREATE TABLE orders (id int); CREATE TABLE order_lines (id int); CREATE TABLE other (id int)")
        .await
        .unwrap();
    bed.cluster.wait_streaming().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = bed.app().await.unwrap();
    assert!(
        standbys.contains(
            &port_of(
                &c,
                "SELECT inet_server_port() FROM (SELECT count(*) FROM orders) x"
            )
            .await
        )
    );
    c.batch_execute("INSERT INTO orders VALUES (1)")
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            port_of(
                &c,
                "SELECT inet_server_port() FROM (SELECT count(*) FROM orders) x"
            )
            .await,
            primary
        );
        assert_eq!(
            port_of(
                &c,
                "SELECT inet_server_port() FROM (SELECT count(*) FROM order_lines) x"
            )
            .await,
            primary
        );
        assert!(
            standbys.contains(
                &port_of(
                    &c,
                    "SELECT inet_server_port() FROM (SELECT count(*) FROM other) x"
                )
                .await
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_what_it_just_wrote_while_other_sessions_read_standbys() {
    // The default rule (disable_on_write = "session_lsn"), session-level
    // balancing: the read node is picked once per session.
    let bed = lb_bed("transaction", "").await;
    let (primary, standbys) = ports(&bed);
    // Four writers, 250 tables each: create, then read at once.
    let writers = (0..4).map(|w| {
        let bed = &bed;
        async move {
            let c = bed.app().await.unwrap();
            for i in 0..250 {
                let t = format!("ryw_{w}_{i}");
                c.batch_execute(&format!(
                    "CREATE TABLE {t} (x int); INSERT INTO {t} VALUES ({i})"
                ))
                .await
                .unwrap();
                // Simple and extended protocol reads alike.
                let got: i32 = if i % 2 == 0 {
                    let rows = c
                        .simple_query(&format!("SELECT x FROM {t}"))
                        .await
                        .unwrap_or_else(|e| panic!("{t}: {e:?}"));
                    rows.iter()
                        .find_map(|m| match m {
                            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
                            _ => None,
                        })
                        .unwrap()
                } else {
                    c.query_one(&format!("SELECT x FROM {t}"), &[])
                        .await
                        .unwrap_or_else(|e| panic!("{t}: {e:?}"))
                        .get(0)
                };
                assert_eq!(got, i, "{t}");
            }
            c
        }
    });
    // Meanwhile sessions that have not written read from the standbys.
    let reader = async {
        let mut seen = HashMap::new();
        for _ in 0..40 {
            let c = bed.app().await.unwrap();
            *seen
                .entry(port_of(&c, "SELECT inet_server_port()").await)
                .or_insert(0) += 1;
        }
        seen
    };
    let (writers, seen) = tokio::join!(futures_util::future::join_all(writers), reader);
    assert!(
        !seen.contains_key(&primary) && seen.keys().all(|p| standbys.contains(p)),
        "reads of sessions that did not write: {seen:?}"
    );
    // Once the standbys have replayed a writer's last write, its reads go
    // back to its standby.
    let c = &writers[0];
    wait_until_async(
        Duration::from_secs(20),
        "the writer's reads to return to a standby",
        || async { standbys.contains(&port_of(c, "SELECT inet_server_port()").await) },
    )
    .await
    .unwrap();
}

/// proxy/src/router/primary_only_functions.txt, without comments.
fn primary_only_functions() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proxy/src/router/primary_only_functions.txt"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_only_a_primary_runs_never_reach_a_standby() {
    let bed = lb_bed("transaction", "statement_level = true").await;
    let standby = bed.cluster.standbys()[0].name.clone();
    let direct = bed
        .cluster
        .connect(standby.as_str(), "postgres", "postgres", "postgres")
        .await
        .unwrap();
    let listed = primary_only_functions();
    // Every entry is one a standby refuses…
    for f in &listed {
        let e = direct
            .simple_query(&format!("SELECT {f}()"))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            "{f} on a standby: {e:?}"
        );
    }
    // …and every argument-less, non-volatile built-in a standby refuses
    // this way is listed.
    let candidates = direct
        .query(
            "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'pg_catalog' AND p.provolatile <> 'v' AND p.pronargs = 0 \
             AND p.prokind = 'f' AND NOT p.proretset \
             AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype) \
             AND p.proname NOT IN ('current_user', 'session_user', 'current_role', 'user')",
            &[],
        )
        .await
        .unwrap();
    for row in candidates {
        let f: String = row.get(0);
        if let Err(e) = direct.simple_query(&format!("SELECT {f}()")).await
            && e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
        {
            assert!(
                listed.contains(&f),
                "{f} is refused by a standby but not listed"
            );
        }
    }
    // Through tidepool, with every read balanced over the standbys: 50 runs
    // of each, no error.
    let c = bed.app().await.unwrap();
    for f in &listed {
        for _ in 0..50 {
            c.simple_query(&format!("SELECT {f}()"))
                .await
                .unwrap_or_else(|e| panic!("{f}: {e:?}"));
            c.query(&format!("SELECT {f}()"), &[])
                .await
                .unwrap_or_else(|e| panic!("{f} (extended): {e:?}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pool_nodes_tells_streaming_and_sync_states() {
    for (sync, want) in [(false, "async"), (true, "quorum")] {
        let cluster = tidepool_tests::PgCluster::start(tidepool_tests::PgClusterOpts {
            sync,
            ..tidepool_tests::PgClusterOpts::standbys(2)
        })
        .unwrap();
        let cfg = common::config(&cluster, "transaction", "", "");
        let tidepool = tidepool_tests::Tidepool::start(&cfg).unwrap();
        let bed = common::Bed { tidepool, cluster };
        bed.wait_ready().await.unwrap();
        let standbys: Vec<u16> = bed.cluster.standbys().iter().map(|n| n.port).collect();
        wait_until_async(Duration::from_secs(20), "replication states", || async {
            let nodes = bed.show("POOL_NODES").await.unwrap();
            let states: Vec<(String, String)> = nodes
                .iter()
                .filter(|n| standbys.contains(&n["port"].parse().unwrap()))
                .map(|n| {
                    (
                        n["replication_state"].clone(),
                        n["replication_sync_state"].clone(),
                    )
                })
                .collect();
            states.len() == 2
                && states
                    .iter()
                    .all(|(state, s)| state == "streaming" && s == want)
        })
        .await
        .unwrap_or_else(|e| panic!("sync={sync}: {e}: {:?}", bed.tidepool.log_tail(5)));
        // The primary has no replication state of its own.
        let nodes = bed.show("POOL_NODES").await.unwrap();
        let primary = bed.cluster.primary().port.to_string();
        let p = nodes.iter().find(|n| n["port"] == primary).unwrap();
        assert_eq!(p["replication_state"], "");
    }
}

/// `tidepool_standby_refusals_total` from the metrics.
fn standby_refusals(bed: &common::Bed) -> u64 {
    let (_, text) = bed.tidepool.http_get("/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tidepool_standby_refusals_total "))
        .unwrap_or_else(|| panic!("no standby_refusals counter in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_a_standby_refuses_runs_again_on_the_primary() {
    for mode in ["transaction", "session"] {
        let bed = lb_bed(mode, "statement_level = true").await;
        let (primary, _) = ports(&bed);
        // A function tidepool's list cannot know: STABLE in the catalog, so
        // its reads are balanced, but it needs a primary.
        let direct = bed.direct().await.unwrap();
        direct
            .batch_execute(
                "CREATE FUNCTION app_xid() RETURNS bigint LANGUAGE sql STABLE \
                 AS 'SELECT txid_current()'",
            )
            .await
            .unwrap();
        for s in bed.cluster.standbys() {
            let c = bed
                .cluster
                .connect(s.name.as_str(), "app", "app", "app")
                .await
                .unwrap();
            wait_until_async(
                Duration::from_secs(20),
                "the function on the standby",
                || {
                    let c = &c;
                    async move {
                        c.query_opt("SELECT 1 FROM pg_proc WHERE proname = 'app_xid'", &[])
                            .await
                            .is_ok_and(|r| r.is_some())
                    }
                },
            )
            .await
            .unwrap();
            let e = c.simple_query("SELECT app_xid()").await.unwrap_err();
            assert_eq!(
                e.code(),
                Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
                "{mode}: the standby refuses it: {e:?}"
            );
        }
        let before = standby_refusals(&bed);
        let c = bed.app().await.unwrap();
        // Reads still go to the standbys…
        let (_, standbys) = ports(&bed);
        assert!(standbys.contains(&port_of(&c, "SELECT inet_server_port()").await));
        // …and the refused ones run on the primary, simple and extended,
        // with the prepared statement still there for its next run.
        let stmt = c
            .prepare("SELECT inet_server_port(), app_xid()")
            .await
            .unwrap();
        for i in 0..50 {
            let port = port_of(&c, "SELECT inet_server_port(), app_xid()").await;
            assert_eq!(port, primary, "{mode}: run {i} (simple)");
            let row = c
                .query_one("SELECT inet_server_port(), app_xid()", &[])
                .await
                .unwrap_or_else(|e| panic!("{mode}: run {i} (extended): {e:?}"));
            assert_eq!(row.get::<_, i32>(0) as u16, primary, "{mode}: run {i}");
            let row = c
                .query_one(&stmt, &[])
                .await
                .unwrap_or_else(|e| panic!("{mode}: run {i} (prepared): {e:?}"));
            assert_eq!(row.get::<_, i32>(0) as u16, primary, "{mode}: run {i}");
        }
        let refused = standby_refusals(&bed) - before;
        assert!(
            refused >= 100,
            "{mode}: {refused} refusals counted; the standbys should have refused each run"
        );
        // An error of the statement itself is still the client's.
        let e = c.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO),
            "{mode}"
        );
    }
}
