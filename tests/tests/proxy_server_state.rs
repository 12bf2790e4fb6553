//! Server connections stay correct between clients: prepared statements
//! survive `DEALLOCATE ALL` / `DISCARD ALL`, a connection that died while
//! idle is never handed out, and a backend's FATAL reaches the client once.

mod common;

use std::time::Duration;

use tidepool_tests::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRUST_APP: &str = "[[hba]]\ntype = \"host\"\ndatabase = \"all\"\nuser = \"app\"\naddress = \"all\"\nmethod = \"trust\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_deallocate_all_and_discard_all() {
    // One server connection: every client shares it.
    let bed = common::bed(0, "transaction", "max_size = 1", "")
        .await
        .unwrap();
    let c = bed.app().await.unwrap();
    let add = c.prepare("select $1::int + 1").await.unwrap();
    let one: i32 = c.query_one(&add, &[&1i32]).await.unwrap().get(0);
    assert_eq!(one, 2);
    // What psycopg sends after a rollback once it has prepared anything.
    c.batch_execute("DEALLOCATE ALL").await.unwrap();
    let two: i32 = c.query_one(&add, &[&2i32]).await.unwrap().get(0);
    assert_eq!(two, 3, "the statement is prepared again on the connection");
    // Another client of the same server connection.
    let other = bed.app().await.unwrap();
    let same = other.prepare("select $1::int + 1").await.unwrap();
    other.batch_execute("DISCARD ALL").await.unwrap();
    let three: i32 = other.query_one(&same, &[&3i32]).await.unwrap().get(0);
    assert_eq!(three, 4);
    let four: i32 = c.query_one(&add, &[&4i32]).await.unwrap().get(0);
    assert_eq!(four, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_killed_on_the_server_are_not_handed_to_new_clients() {
    let bed = common::bed(0, "transaction", "max_size = 4", "")
        .await
        .unwrap();
    // Four server connections in the pool, idle.
    let clients: Vec<_> = futures_util::future::join_all((0..4).map(|_| bed.app()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    futures_util::future::join_all(
        clients
            .iter()
            .map(|c| c.batch_execute("select pg_sleep(0.3)")),
    )
    .await;
    drop(clients);
    // The server ends them (a restart, an idle timeout, pg_terminate_backend).
    let primary = bed.cluster.primary().name.clone();
    bed.cluster
        .psql(
            &primary,
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app'",
        )
        .unwrap();
    tidepool_tests::wait_until(Duration::from_secs(10), "the backends to end", || {
        bed.cluster
            .psql(
                &primary,
                "select count(*) from pg_stat_activity where usename = 'app'",
            )
            .is_ok_and(|n| n == "0")
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every new client is served, none gets a dead connection.
    for i in 0..8 {
        let c = bed.app().await.unwrap();
        let r = c.query_one("select 1", &[]).await;
        assert!(r.is_ok(), "client {i}: {r:?}");
    }
}

/// Every message until the server closes: (tag, body).
async fn read_all(s: &mut tokio::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut bytes)).await;
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]])
            as usize;
        let end = (at + 1 + len).min(bytes.len());
        out.push((bytes[at], bytes[at + 5..end].to_vec()));
        at = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_fatal_reaches_the_client_once() {
    let bed = common::bed(0, "session", "", TRUST_APP).await.unwrap();
    let mut s = wire::login(bed.tidepool.port(), "app", "app", &[])
        .await
        .unwrap();
    let q = b"select pg_sleep(30)\0";
    s.write_all(&wire::message(b'Q', q)).await.unwrap();
    let primary = bed.cluster.primary().name.clone();
    tidepool_tests::wait_until(Duration::from_secs(10), "the sleeping backend", || {
        bed.cluster
            .psql(
                &primary,
                "select count(pg_terminate_backend(pid)) from pg_stat_activity where query = 'select pg_sleep(30)'",
            )
            .is_ok_and(|n| n == "1")
    })
    .unwrap();
    let messages = read_all(&mut s).await;
    let errors: Vec<String> = messages
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| String::from_utf8_lossy(b).replace('\0', " "))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("57P01"),
        "the server's own FATAL: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_cannot_inject_sql_whatever_the_previous_client_set() {
    let bed = common::bed(0, "transaction", "max_size = 1", "")
        .await
        .unwrap();
    let base = bed.tidepool.conn_string("app", "app", "app");
    let connect = |cfg: tokio_postgres::Config| async move {
        let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    // A client leaves the pooled connection with backslash escapes on.
    let mut cfg: tokio_postgres::Config = base.parse().unwrap();
    cfg.options("-c standard_conforming_strings=off");
    let first = connect(cfg).await;
    let scs: String = first
        .query_one("show standard_conforming_strings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(scs, "off");
    drop(first);
    // The next one's application_name ends a plain literal early there.
    let name = r"x\'; create table pwned (); --";
    let mut cfg: tokio_postgres::Config = base.parse().unwrap();
    cfg.application_name(name);
    let next = connect(cfg).await;
    let got: String = next
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, name, "the value arrives as the client sent it");
    let direct = bed.direct().await.unwrap();
    let pwned: bool = direct
        .query_one("select to_regclass('pwned') is not null", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!pwned, "nothing of the value ran as SQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_text_in_the_clients_encoding_passes_and_malformed_messages_get_an_error() {
    let bed = common::bed(0, "transaction", "", TRUST_APP).await.unwrap();
    let port = bed.tidepool.port();
    // LATIN1: 'é' is the single byte 0xE9, not UTF-8.
    let mut s = wire::login(port, "app", "app", &[("client_encoding", "LATIN1")])
        .await
        .unwrap();
    s.write_all(&wire::message(
        b'Q',
        b"select length('\xe9') || ':' || '\xe9'\0",
    ))
    .await
    .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let mut b = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "the connection stays: {answer:?}");
        answer.extend_from_slice(&b[..n]);
    }
    assert!(
        answer.windows(3).any(|w| w == b"1:\xe9"),
        "one character, sent back in LATIN1: {answer:?}"
    );
    let mut at = 0;
    while at + 5 <= answer.len() {
        assert_ne!(answer[at], b'E', "no error: {answer:?}");
        let len = u32::from_be_bytes([
            answer[at + 1],
            answer[at + 2],
            answer[at + 3],
            answer[at + 4],
        ]);
        at += 1 + len as usize;
    }
    // A Bind without its strings' terminators: an ErrorResponse, then the
    // session ends (as PostgreSQL answers a malformed message).
    let mut s = wire::login(port, "app", "app", &[]).await.unwrap();
    s.write_all(&wire::message(b'B', b"ab")).await.unwrap();
    let messages = read_all(&mut s).await;
    let errors: Vec<String> = messages
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| String::from_utf8_lossy(b).replace('\0', " "))
        .collect();
    assert_eq!(errors.len(), 1, "{messages:?}");
    assert!(errors[0].contains("08P01"), "{errors:?}");
    // Everyone else is still served.
    bed.app()
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
}
