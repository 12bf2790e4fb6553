//! What a real driver's test suite (asyncpg's, run by scripts/driver-suite)
//! found tidepool doing differently from PostgreSQL, each against real
//! servers: prepared statements after `RESET ALL` and after a table changed
//! shape, notification process ids, `SET SESSION CHARACTERISTICS`, and
//! `DROP DATABASE` with pooled connections in the way.

mod common;

use tidepool_tests::wire;
use tokio::io::AsyncWriteExt;

/// A raw simple query, its replies read up to ReadyForQuery.
async fn simple(s: &mut tokio::net::TcpStream, sql: &str) {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    s.write_all(&wire::message(b'Q', &body)).await.unwrap();
    wire::read_until(s, b'Z').await.unwrap();
}

const TRUST: &str = "[[hba]]\ntype = \"host\"\ndatabase = \"all\"\nuser = \"all\"\naddress = \"all\"\nmethod = \"trust\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_leaves_prepared_statements_in_place() {
    // One server connection shared by every client; asyncpg's pool runs
    // `RESET ALL` (among others) each time a connection goes back to it.
    let bed = common::bed(0, "transaction", "max_size = 1", "")
        .await
        .unwrap();
    let a = bed.app().await.unwrap();
    let s = a.prepare("select $1::int * 2").await.unwrap();
    assert_eq!(a.query_one(&s, &[&2i32]).await.unwrap().get::<_, i32>(0), 4);
    a.batch_execute("RESET ALL").await.unwrap();
    // The statement is still on the server: a client preparing it again,
    // and the first client using it, both work.
    let b = bed.app().await.unwrap();
    let t = b.prepare("select $1::int * 2").await.unwrap();
    assert_eq!(b.query_one(&t, &[&3i32]).await.unwrap().get::<_, i32>(0), 6);
    assert_eq!(a.query_one(&s, &[&4i32]).await.unwrap().get::<_, i32>(0), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_again_after_its_table_changed_sees_the_new_table() {
    let bed = common::bed(0, "transaction", "max_size = 1", "")
        .await
        .unwrap();
    let a = bed.app().await.unwrap();
    a.batch_execute("CREATE TABLE shape (v date)")
        .await
        .unwrap();
    let ins = a.prepare("INSERT INTO shape VALUES ($1)").await.unwrap();
    assert_eq!(ins.params()[0], tokio_postgres::types::Type::DATE);
    // Another client makes the table again with another column type and
    // prepares the same text: the server parses it anew, as it would on a
    // direct connection.
    let b = bed.app().await.unwrap();
    b.batch_execute("DROP TABLE shape; CREATE TABLE shape (v int)")
        .await
        .unwrap();
    let ins2 = b.prepare("INSERT INTO shape VALUES ($1)").await.unwrap();
    assert_eq!(ins2.params()[0], tokio_postgres::types::Type::INT4);
    b.execute(&ins2, &[&7i32]).await.unwrap();

    // A result that changes shape: the server refuses the old plan once
    // (as it does directly); prepared again, the statement works.
    b.batch_execute("CREATE TABLE wide (a int); INSERT INTO wide VALUES (1)")
        .await
        .unwrap();
    let sel = a.prepare("SELECT * FROM wide").await.unwrap();
    assert_eq!(a.query(&sel, &[]).await.unwrap().len(), 1);
    b.batch_execute("ALTER TABLE wide ADD COLUMN b int")
        .await
        .unwrap();
    let e = a.query(&sel, &[]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{e:?}"
    );
    let sel = a.prepare("SELECT * FROM wide").await.unwrap();
    assert_eq!(sel.columns().len(), 2);
    let rows = a.query(&sel, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_name_the_senders_by_the_keys_tidepool_gave_them() {
    let bed = common::bed(0, "session", "", TRUST).await.unwrap();
    let port = bed.tidepool.port();
    let (mut listener, listener_pid) = wire::login_keyed(port, "app", "app", &[]).await.unwrap();
    let (mut sender, sender_pid) = wire::login_keyed(port, "app", "app", &[]).await.unwrap();
    simple(&mut listener, "LISTEN chan").await;
    // Another client's notification names that client.
    simple(&mut sender, "NOTIFY chan, 'from the other'").await;
    let n = wire::read_until(&mut listener, b'A').await.unwrap();
    assert_eq!(i32::from_be_bytes([n[0], n[1], n[2], n[3]]), sender_pid);
    // The client's own names itself.
    // (The server sends it just before its ReadyForQuery.)
    listener
        .write_all(&wire::message(b'Q', b"NOTIFY chan, 'from myself'\0"))
        .await
        .unwrap();
    let n = wire::read_until(&mut listener, b'A').await.unwrap();
    assert_eq!(i32::from_be_bytes([n[0], n[1], n[2], n[3]]), listener_pid);
    assert!(n.ends_with(b"from myself\0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_characteristics_follow_the_session_to_every_node() {
    // Reads may go to a standby: the session's default isolation must be
    // in force there too, and SERIALIZABLE (which standbys cannot run)
    // keeps the session's work on the primary.
    let bed = common::bed(
        2,
        "session",
        "",
        "[load_balancing]\nstatement_level = true\n",
    )
    .await
    .unwrap();
    let c = bed.app().await.unwrap();
    for level in ["repeatable read", "read committed", "serializable"] {
        c.batch_execute(&format!(
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {level}"
        ))
        .await
        .unwrap();
        for _ in 0..10 {
            let got: String = c
                .query_one("SHOW TRANSACTION ISOLATION LEVEL", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(got, level);
        }
    }
    // Serializable: every read runs on the primary.
    for _ in 0..10 {
        let standby: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!standby, "a serializable session read from a standby");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_is_not_stopped_by_tidepools_idle_connections() {
    // A standby: reads are routed, so tidepool asks the catalog of the
    // database too (on a connection of its own).
    let bed = common::bed(1, "transaction", "", "").await.unwrap();
    let primary = bed.cluster.primary().name.clone();
    bed.cluster
        .psql(&primary, "CREATE DATABASE scratch OWNER app")
        .unwrap();
    // Clients of `scratch` leave their server connections in the pool.
    for i in 0..3 {
        let c = bed.tidepool.connect("app", "app", "scratch").await.unwrap();
        c.batch_execute(&format!("CREATE TABLE t{i} (a int)"))
            .await
            .unwrap();
        c.query("SELECT * FROM t0, now()", &[]).await.unwrap();
    }
    let c = bed
        .tidepool
        .connect("postgres", "postgres", "postgres")
        .await
        .unwrap();
    c.batch_execute("DROP DATABASE scratch").await.unwrap();
    c.batch_execute("CREATE DATABASE scratch2 OWNER app")
        .await
        .unwrap();
    let d = bed
        .tidepool
        .connect("app", "app", "scratch2")
        .await
        .unwrap();
    // (A write: a read could reach the standby before it has the database.)
    d.batch_execute("CREATE TABLE x (a int)").await.unwrap();
    drop(d);
    c.batch_execute("ALTER DATABASE scratch2 RENAME TO scratch3")
        .await
        .unwrap();
}

/// The same unnamed Parse sent again is not read again only when it
/// changes nothing: a `DROP DATABASE` sent again must clear tidepool's
/// idle connections to that database again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_drop_database_sent_again_clears_the_pool_again() {
    let bed = common::bed(0, "transaction", "", TRUST).await.unwrap();
    let primary = bed.cluster.primary().name.clone();
    let mut s = wire::login(bed.tidepool.port(), "app", "app", &[])
        .await
        .unwrap();
    let drop_db = [
        wire::message(b'P', b"\0DROP DATABASE scratch\0\0\0"),
        wire::message(b'B', b"\0\0\0\0\0\0\0\0"),
        wire::message(b'E', b"\0\0\0\0\0"),
        wire::message(b'S', b""),
    ];
    for round in 0..3 {
        bed.cluster
            .psql(&primary, "CREATE DATABASE scratch OWNER app")
            .unwrap();
        // A client of `scratch` leaves its server connection in the pool.
        let c = bed.tidepool.connect("app", "app", "scratch").await.unwrap();
        c.batch_execute("SELECT 1").await.unwrap();
        drop(c);
        let held = bed
            .cluster
            .psql(
                &primary,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'scratch'",
            )
            .unwrap();
        assert_eq!(
            held.trim(),
            "1",
            "round {round}: the pool holds a connection"
        );
        let tags = round_trip(&mut s, &drop_db).await;
        assert_eq!(tags, b"12CZ", "round {round} (E = error)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_clients_session_state_is_not_left_to_the_next_client() {
    // One server connection: the next client gets the departed one's.
    let bed = common::bed(0, "transaction", "max_size = 1", "")
        .await
        .unwrap();
    let a = bed.app().await.unwrap();
    a.batch_execute(
        "CREATE TEMP TABLE copytab (a bytea); SELECT pg_advisory_lock(42); LISTEN departed",
    )
    .await
    .unwrap();
    let pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(a);
    let b = bed.app().await.unwrap();
    let row = b
        .query_one(
            "SELECT pg_backend_pid(), to_regclass('pg_temp.copytab') IS NULL, \
             (SELECT count(*) FROM pg_listening_channels())::int",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), pid, "the same server connection");
    assert!(row.get::<_, bool>(1), "the temporary table is gone");
    assert_eq!(row.get::<_, i32>(2), 0, "LISTEN is gone");
    // The advisory lock is free for anyone.
    let direct = bed.direct().await.unwrap();
    let free: bool = direct
        .query_one("SELECT pg_try_advisory_lock(42)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free, "the departed client's advisory lock is released");
    // A table made now by the new client is the one its reads see.
    b.batch_execute("CREATE TABLE copytab (a uuid)")
        .await
        .unwrap();
    let t = b.prepare("SELECT * FROM copytab LIMIT 1").await.unwrap();
    assert_eq!(t.columns()[0].type_(), &tokio_postgres::types::Type::UUID);
}

/// A primary and a standby with every unit balanced on its own, and a
/// raw-protocol client logged in (trust) through tidepool in `mode`.
async fn balanced_raw_session(mode: &str) -> (common::Bed, tokio::net::TcpStream) {
    let bed = common::bed(
        1,
        mode,
        "",
        &format!("{TRUST}\n[load_balancing]\nstatement_level = true\n"),
    )
    .await
    .unwrap();
    let s = wire::login(bed.tidepool.port(), "app", "app", &[])
        .await
        .unwrap();
    (bed, s)
}

/// Sends `msgs` and reads up to ReadyForQuery; returns the message tags.
async fn round_trip(s: &mut tokio::net::TcpStream, msgs: &[Vec<u8>]) -> Vec<u8> {
    s.write_all(&msgs.concat()).await.unwrap();
    let mut tags = Vec::new();
    loop {
        let (tag, _) = wire::read_message(s).await.unwrap();
        tags.push(tag);
        if tag == b'Z' {
            return tags;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_statement_is_found_by_its_bind_in_a_later_round_trip() {
    // Every unit is balanced on its own over the primary and a standby:
    // the Bind often lands on another connection than its Parse.
    let (_bed, mut s) = balanced_raw_session("transaction").await;
    let parse = wire::message(b'P', b"\0SELECT 1\0\0\0");
    let describe = wire::message(b'D', b"S\0");
    let sync = wire::message(b'S', b"");
    let bind = wire::message(b'B', b"\0\0\0\0\0\0\0\0");
    let execute = wire::message(b'E', b"\0\0\0\0\0");
    for round in 0..20 {
        let tags = round_trip(&mut s, &[parse.clone(), describe.clone(), sync.clone()]).await;
        assert_eq!(tags, b"1tTZ", "round {round}: Parse/Describe");
        let tags = round_trip(&mut s, &[bind.clone(), execute.clone(), sync.clone()]).await;
        assert_eq!(tags, b"2DCZ", "round {round}: Bind/Execute (E = error)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_a_servers_own_sessions_run_where_the_session_writes() {
    let bed = common::bed(
        2,
        "session",
        "",
        "[load_balancing]\nstatement_level = true\n",
    )
    .await
    .unwrap();
    let primary = bed.cluster.primary().port as i32;
    let c = bed.app().await.unwrap();
    for sql in [
        "SELECT inet_server_port(), pg_backend_pid()",
        "SELECT inet_server_port(), count(*) FROM pg_stat_activity",
        "SELECT inet_server_port(), count(*) FROM pg_prepared_xacts",
        "SELECT inet_server_port(), count(*) FROM pg_locks",
    ] {
        for _ in 0..5 {
            let port: i32 = c.query_one(sql, &[]).await.unwrap().get(0);
            assert_eq!(port, primary, "{sql}");
        }
    }
    // pg_terminate_backend(pg_backend_pid() of a session) reaches that
    // session's server process, not a standby's.
    let victim = bed.app().await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let killed: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    assert!(victim.query_one("SELECT 1", &[]).await.is_err());
}

/// Logs in with raw startup `params` and returns the ParameterStatus
/// values the login reported.
async fn reported_at_login(
    port: u16,
    params: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut all = vec![("user", "app"), ("database", "app")];
    all.extend_from_slice(params);
    s.write_all(&wire::startup_packet(&all)).await.unwrap();
    let mut out = std::collections::HashMap::new();
    loop {
        let (tag, body) = wire::read_message(&mut s).await.unwrap();
        match tag {
            b'S' => {
                let mut parts = body.split(|b| *b == 0);
                let k = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
                let v = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
                out.insert(k, v);
            }
            b'Z' => return out,
            b'E' => panic!("login refused: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_is_always_the_servers() {
    let bed = common::bed(0, "transaction", "", TRUST).await.unwrap();
    // The pool has logged in once: later logins are answered from it.
    bed.app()
        .await
        .unwrap()
        .batch_execute("SELECT 1")
        .await
        .unwrap();
    let port = bed.tidepool.port();
    for (asked, reported) in [
        ("utf-8", "UTF8"),
        ("UTF8", "UTF8"),
        ("euc-jp", "EUC_JP"),
        ("latin1", "LATIN1"),
    ] {
        let r = reported_at_login(port, &[("client_encoding", asked)]).await;
        assert_eq!(r["client_encoding"], reported, "client_encoding={asked}");
    }
    // A date style the pool cannot vouch for is answered by a server.
    let r = reported_at_login(port, &[("DateStyle", "german")]).await;
    assert_eq!(r["DateStyle"], "German, DMY");
    let r = reported_at_login(port, &[("application_name", "worker 7")]).await;
    assert_eq!(r["application_name"], "worker 7");
}

async fn sql_execute_of_a_protocol_statement(mode: &str) {
    // A standby and balanced reads: the Parse of `select 1` may run on one
    // node and the EXECUTE (which may write) on the primary.
    let (_bed, mut s) = balanced_raw_session(mode).await;
    let sync = wire::message(b'S', b"");
    let tags = round_trip(
        &mut s,
        &[
            wire::message(b'P', b"foobar\0select 41 + 1\0\0\0"),
            sync.clone(),
        ],
    )
    .await;
    assert_eq!(tags, b"1Z", "{mode}: prepare");
    for round in 0..10 {
        // Extended protocol, as asyncpg's fetchval('EXECUTE foobar') sends it.
        let tags = round_trip(
            &mut s,
            &[
                wire::message(b'P', b"\0EXECUTE foobar\0\0\0"),
                wire::message(b'B', b"\0\0\0\0\0\0\0\0"),
                wire::message(b'E', b"\0\0\0\0\0"),
                sync.clone(),
            ],
        )
        .await;
        assert_eq!(
            tags, b"12DCZ",
            "{mode} round {round}: extended EXECUTE (E = error)"
        );
    }
    // A simple query, once the connection has the statement (session
    // mode keeps its connections; transaction mode may serve the query on
    // another one).
    if mode == "session" {
        let tags = round_trip(&mut s, &[wire::message(b'Q', b"EXECUTE foobar\0")]).await;
        assert_eq!(tags, b"TDCZ", "{mode}: simple EXECUTE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_execute_finds_a_statement_prepared_by_a_parse_message_in_session_mode() {
    sql_execute_of_a_protocol_statement("session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_execute_finds_a_statement_prepared_by_a_parse_message_in_transaction_mode() {
    sql_execute_of_a_protocol_statement("transaction").await;
}

/// Sends `msgs` and reads up to ReadyForQuery; returns the messages.
async fn exchange(s: &mut tokio::net::TcpStream, msgs: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&msgs.concat()).await.unwrap();
    let mut out = Vec::new();
    loop {
        let m = wire::read_message(s).await.unwrap();
        let end = m.0 == b'Z';
        out.push(m);
        if end {
            return out;
        }
    }
}

/// The tags of `replies`, in order.
fn tags_of(replies: &[(u8, Vec<u8>)]) -> Vec<u8> {
    replies.iter().map(|m| m.0).collect()
}

async fn a_second_parse_of_an_open_name_is_refused(mode: &str) {
    let (_bed, mut s) = balanced_raw_session(mode).await;
    let sync = wire::message(b'S', b"");
    let bind = wire::message(b'B', b"\0dup\0\0\0\0\0\0\0");
    let execute = wire::message(b'E', b"\0\0\0\0\0");
    let tags = round_trip(
        &mut s,
        &[wire::message(b'P', b"dup\0select 1\0\0\0"), sync.clone()],
    )
    .await;
    assert_eq!(tags, b"1Z", "{mode}: prepare");
    for round in 0..5 {
        // As PostgreSQL: 42P05 naming the client's statement, and the rest
        // of the batch skipped (the Bind would run the first statement).
        let replies = exchange(
            &mut s,
            &[
                wire::message(b'P', b"dup\0select 2\0\0\0"),
                bind.clone(),
                execute.clone(),
                sync.clone(),
            ],
        )
        .await;
        let tags = tags_of(&replies);
        assert_eq!(tags, b"EZ", "{mode} round {round}");
        let text = String::from_utf8_lossy(&replies[0].1);
        assert!(text.contains("C42P05"), "{text}");
        assert!(
            text.contains("prepared statement \"dup\" already exists"),
            "{text}"
        );
        // The name still means the first statement.
        let replies = exchange(&mut s, &[bind.clone(), execute.clone(), sync.clone()]).await;
        let tags = tags_of(&replies);
        assert_eq!(tags, b"2DCZ", "{mode} round {round}");
        assert!(replies[1].1.ends_with(b"1"), "{:?}", replies[1].1);
    }
    // Closed, the name can be prepared again.
    let replies = exchange(
        &mut s,
        &[
            wire::message(b'C', b"Sdup\0"),
            wire::message(b'P', b"dup\0select 2\0\0\0"),
            bind.clone(),
            execute.clone(),
            sync.clone(),
        ],
    )
    .await;
    let tags = tags_of(&replies);
    assert_eq!(tags, b"312DCZ", "{mode}: after Close");
    assert!(replies[3].1.ends_with(b"2"), "{:?}", replies[3].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_parse_of_an_open_name_is_refused_in_session_mode() {
    a_second_parse_of_an_open_name_is_refused("session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_parse_of_an_open_name_is_refused_in_transaction_mode() {
    a_second_parse_of_an_open_name_is_refused("transaction").await;
}

async fn a_write_pipelined_behind_a_read_reaches_the_primary(mode: &str) {
    // Every unit balanced on its own: the read often runs on the standby,
    // and the write sent behind it, before its replies, must not follow it
    // there (as tokio-postgres sends a Close, a Sync and the next BEGIN).
    let (bed, mut s) = balanced_raw_session(mode).await;
    let c = bed.app().await.unwrap();
    c.batch_execute("CREATE TABLE pipelined (a int)")
        .await
        .unwrap();
    let sync = wire::message(b'S', b"");
    for round in 0..40 {
        let replies = exchange(
            &mut s,
            &[
                wire::message(b'P', b"\0SELECT 1\0\0\0"),
                wire::message(b'B', b"\0\0\0\0\0\0\0\0"),
                wire::message(b'E', b"\0\0\0\0\0"),
                sync.clone(),
                wire::message(b'Q', b"BEGIN\0"),
            ],
        )
        .await;
        let tags = tags_of(&replies);
        assert_eq!(tags, b"12DCZ", "{mode} round {round}");
        let mut tags = Vec::new();
        loop {
            let (tag, body) = wire::read_message(&mut s).await.unwrap();
            assert_ne!(
                tag,
                b'E',
                "{mode} round {round}: {}",
                String::from_utf8_lossy(&body)
            );
            tags.push(tag);
            if tag == b'Z' {
                break;
            }
        }
        let replies = exchange(
            &mut s,
            &[
                wire::message(b'Q', b"INSERT INTO pipelined VALUES (1)\0"),
                wire::message(b'Q', b"COMMIT\0"),
            ],
        )
        .await;
        let text: Vec<String> = replies
            .iter()
            .filter(|m| m.0 == b'E')
            .map(|m| String::from_utf8_lossy(&m.1).into_owned())
            .collect();
        assert!(text.is_empty(), "{mode} round {round}: {text:?}");
        wire::read_until(&mut s, b'Z').await.unwrap();
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM pipelined", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pipelined_behind_a_read_reaches_the_primary_in_session_mode() {
    a_write_pipelined_behind_a_read_reaches_the_primary("session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pipelined_behind_a_read_reaches_the_primary_in_transaction_mode() {
    a_write_pipelined_behind_a_read_reaches_the_primary("transaction").await;
}

async fn sql_deallocate_of_a_protocol_statement(mode: &str) {
    let (_bed, mut s) = balanced_raw_session(mode).await;
    let sync = wire::message(b'S', b"");
    let bind = wire::message(b'B', b"\0s1\0\0\0\0\0\0\0");
    let execute = wire::message(b'E', b"\0\0\0\0\0");
    let tags = round_trip(
        &mut s,
        &[wire::message(b'P', b"s1\0select 1\0\0\0"), sync.clone()],
    )
    .await;
    assert_eq!(tags, b"1Z", "{mode}: prepare");
    // As on a direct connection: the name is gone, the statement with it.
    let replies = exchange(&mut s, &[wire::message(b'Q', b"DEALLOCATE s1\0")]).await;
    let tags = tags_of(&replies);
    assert_eq!(tags, b"CZ", "{mode}: DEALLOCATE");
    assert_eq!(replies[0].1, b"DEALLOCATE\0");
    let replies = exchange(&mut s, &[bind.clone(), execute.clone(), sync.clone()]).await;
    let tags = tags_of(&replies);
    assert_eq!(tags, b"EZ", "{mode}: Bind after DEALLOCATE");
    let text = String::from_utf8_lossy(&replies[0].1);
    assert!(text.contains("C26000"), "{text}");
    // The name can be prepared again at once.
    let tags = round_trip(
        &mut s,
        &[
            wire::message(b'P', b"s1\0select 2\0\0\0"),
            bind,
            execute,
            sync,
        ],
    )
    .await;
    assert_eq!(tags, b"12DCZ", "{mode}: prepared again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_of_a_protocol_statement_in_session_mode() {
    sql_deallocate_of_a_protocol_statement("session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_of_a_protocol_statement_in_transaction_mode() {
    sql_deallocate_of_a_protocol_statement("transaction").await;
}

/// Every reply of `msgs` up to the `syncs`-th ReadyForQuery, as raw
/// messages.
async fn replies(
    s: &mut tokio::net::TcpStream,
    msgs: &[Vec<u8>],
    syncs: usize,
) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&msgs.concat()).await.unwrap();
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < syncs {
        let m = wire::read_message(s).await.unwrap();
        seen += usize::from(m.0 == b'Z');
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_every_size_reach_the_client_as_the_server_sent_them() {
    let bed = common::bed(0, "transaction", "", TRUST).await.unwrap();
    rows_as_sent(&bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_held_for_a_standby_and_kept_for_the_cache_reach_the_client_as_sent() {
    // The same through a standby, whose replies are held until it is
    // known that it runs the unit, and with the query cache reading them.
    let extra = format!(
        "{TRUST}\n[load_balancing]\nstatement_level = true\n\n[query_cache]\nenabled = true\n"
    );
    let bed = common::bed(1, "transaction", "", &extra).await.unwrap();
    rows_as_sent(&bed).await;
}

/// Results from one row to many reads' worth, mixed with the other
/// replies of a unit (descriptions, completions, a suspended portal, an
/// error) in one round trip each: the client reads exactly what the
/// primary sends it directly.
async fn rows_as_sent(bed: &common::Bed) {
    let sql = "SELECT g, repeat('x', g % 97) FROM generate_series(1, 20000) g; \
               SELECT 1; SELECT g FROM generate_series(1, 3) g; SELECT";
    let mut query = sql.as_bytes().to_vec();
    query.push(0);
    let parse = |name: &str, q: &str| {
        wire::message(
            b'P',
            &[name.as_bytes(), b"\0", q.as_bytes(), b"\0\0\0"].concat(),
        )
    };
    let bind = |portal: &str, stmt: &str| {
        wire::message(
            b'B',
            &[portal.as_bytes(), b"\0", stmt.as_bytes(), b"\0\0\0\0\0\0\0"].concat(),
        )
    };
    let execute = |portal: &str, rows: u32| {
        wire::message(
            b'E',
            &[portal.as_bytes(), b"\0", &rows.to_be_bytes()].concat(),
        )
    };
    let describe = |portal: &str| wire::message(b'D', &[b"P", portal.as_bytes(), b"\0"].concat());
    let sync = wire::message(b'S', b"");
    let msgs = [
        wire::message(b'Q', &query),
        // Rows in a transaction, a portal read in parts.
        wire::message(b'Q', b"BEGIN\0"),
        parse("", "SELECT g, md5(g::text) FROM generate_series(1, 5000) g"),
        bind("p", ""),
        describe("p"),
        execute("p", 3),
        execute("p", 0),
        sync.clone(),
        parse("", "SELECT g FROM generate_series(1, 10) g"),
        bind("", ""),
        execute("", 0),
        parse("", "SELECT 1 / (g - 5) FROM generate_series(1, 10) g"),
        bind("", ""),
        execute("", 0),
        sync.clone(),
        wire::message(b'Q', b"COMMIT\0"),
    ];
    let mut through = wire::login(bed.tidepool.port(), "app", "app", &[])
        .await
        .unwrap();
    let port = bed.cluster.primary().port;
    let mut direct = wire::login(port, "trustuser", "app", &[]).await.unwrap();
    let want = replies(&mut direct, &msgs, 5).await;
    let got = replies(&mut through, &msgs, 5).await;
    let rows = want.iter().filter(|m| m.0 == b'D').count();
    assert_eq!(rows, 20000 + 1 + 3 + 1 + 5000 + 10 + 4);
    assert!(tags_of(&want).contains(&b's') && tags_of(&want).contains(&b'E'));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}
