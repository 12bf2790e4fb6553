//! The tidepool process handle: start against a real cluster, serve, reload,
//! stop; a start that fails reports tidepool's own words.

use std::time::Duration;

use tidepool_tests::{PgCluster, PgClusterOpts, Tidepool, free_port, minimal_config};

#[tokio::test]
async fn tidepool_process_serves_reloads_and_stops_on_sigterm() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(1)).unwrap();
    let config = minimal_config(&cluster, free_port(), free_port());
    let mut tidepool = Tidepool::start(&config).unwrap();

    let client = tidepool.connect("app", "app", "app").await.unwrap();
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    drop(client);

    tidepool.rewrite_config(&config).unwrap();
    tidepool.sighup().unwrap();
    assert!(
        tidepool.is_running(),
        "SIGHUP must not end tidepool; log:\n{}",
        tidepool.log_tail(20)
    );

    tidepool.terminate(Duration::from_secs(30)).unwrap();
    assert!(!tidepool.is_running());
}

#[test]
fn a_failed_start_reports_tidepools_log() {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nno_such_key = 1\n",
        free_port()
    );
    let err = match Tidepool::start(&config) {
        Ok(_) => panic!("tidepool started with an unknown key"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("no_such_key"), "{err}");
}

/// `client_idle_timeout` ends a session idle outside a transaction with
/// PostgreSQL's 57P05, whether it waits with no server connection
/// (transaction pooling) or on its own one (session pooling); a session
/// idle inside a transaction and a busy one are left alone.
#[tokio::test]
async fn idle_clients_are_ended_after_client_idle_timeout() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(0)).unwrap();
    for mode in ["transaction", "session"] {
        let config = minimal_config(&cluster, free_port(), free_port())
            .replace("[server]\n", "[server]\nclient_idle_timeout = \"1500ms\"\n")
            .replace("mode = \"transaction\"", &format!("mode = \"{mode}\""));
        let tidepool = Tidepool::start(&config).unwrap();
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(
                &tidepool.conn_string("app", "app", "app"),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            (client, tokio::spawn(connection))
        };
        let (idle, idle_end) = connect().await;
        idle.simple_query("SELECT 1").await.unwrap();
        let (in_tx, in_tx_end) = connect().await;
        in_tx.simple_query("BEGIN").await.unwrap();
        let (busy, _busy_end) = connect().await;
        busy.simple_query("SELECT pg_sleep(2.5)").await.unwrap();

        let err = tokio::time::timeout(Duration::from_secs(10), idle_end)
            .await
            .expect("the idle session must end")
            .unwrap()
            .expect_err("the idle session must end with an error");
        let code = err.as_db_error().map(|e| e.code().code().to_string());
        assert_eq!(code.as_deref(), Some("57P05"), "{mode}: {err}");
        assert!(idle.is_closed(), "{mode}");

        assert!(
            !in_tx_end.is_finished(),
            "{mode}: ended inside a transaction"
        );
        in_tx.simple_query("COMMIT").await.unwrap();
        busy.simple_query("SELECT 1").await.unwrap();
    }
}

/// SIGTERM ends idle sessions at once, each told why as PostgreSQL tells
/// its clients at a fast shutdown (57P01), instead of waiting out the
/// grace period for clients that have nothing in flight.
#[tokio::test]
async fn idle_sessions_are_told_of_a_shutdown() {
    let cluster = PgCluster::start(PgClusterOpts::standbys(1)).unwrap();
    let config = minimal_config(&cluster, free_port(), free_port());
    let mut tidepool = Tidepool::start(&config).unwrap();

    let mut ends = Vec::new();
    for _ in 0..3 {
        let (client, connection) = tokio_postgres::connect(
            &tidepool.conn_string("app", "app", "app"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        let end = tokio::spawn(connection);
        client.simple_query("SELECT 1").await.unwrap();
        ends.push((client, end));
    }

    tidepool.terminate(Duration::from_secs(30)).unwrap();
    for (_client, end) in ends {
        let err = end
            .await
            .unwrap()
            .expect_err("the session must end with an error");
        let code = err.as_db_error().map(|e| e.code().code().to_string());
        assert_eq!(code.as_deref(), Some("57P01"), "{err}");
    }
}
