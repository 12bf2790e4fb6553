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
