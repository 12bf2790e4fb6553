//! Sockets that never finish startup do not lock clients out: they have a
//! budget of their own (`server.max_startup_connections`), apart from
//! `max_client_connections`, which counts logged-in clients only.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_neither_count_as_clients_nor_exceed_their_budget() {
    let bed = common::bed(0, "transaction", "", "").await.unwrap();
    // Reconfigure: 5 logged-in clients, 20 sockets in startup.
    let cfg = std::fs::read_to_string(bed.tidepool.config_path()).unwrap().replace(
        "[server]\n",
        "[server]\nmax_client_connections = 5\nmax_startup_connections = 20\nstartup_timeout = \"60s\"\n",
    );
    bed.tidepool.rewrite_config(&cfg).unwrap();
    let (code, body) = bed.tidepool.http_post("/v1/reload").unwrap();
    assert_eq!(code, 200, "{body}");
    let port = bed.tidepool.port();
    // Ten silent sockets: more than max_client_connections.
    let silent: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    tidepool_tests::wait_until(Duration::from_secs(10), "sockets counted", || {
        bed.tidepool
            .http_get("/metrics")
            .is_ok_and(|(_, m)| m.contains("tidepool_clients_starting 10"))
    })
    .unwrap();
    // A real client still logs in.
    let c = bed
        .app()
        .await
        .expect("silent sockets take no client places");
    c.simple_query("select 1").await.unwrap();
    // Past the startup budget, sockets are turned away at once with 53300.
    let more: Vec<TcpStream> = (0..15)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut refused = 0;
    for mut s in more {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        if String::from_utf8_lossy(&answer).contains("53300") {
            refused += 1;
        }
    }
    assert!(refused >= 5, "{refused} of 15 refused at once");
    drop(silent);
    // Logged-in clients are limited by max_client_connections.
    let mut held = Vec::new();
    for i in 0..4 {
        let c = bed.app().await;
        assert!(
            c.is_ok(),
            "client {i}: {c:?}\n{}",
            bed.tidepool.log_tail(20)
        );
        held.push(c);
    }
    let sixth = bed.app().await;
    let e = sixth.expect_err("a sixth logged-in client is refused");
    let code = e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .map(|c| c.code().to_string());
    assert_eq!(code.as_deref(), Some("53300"), "{e:?}");
}
