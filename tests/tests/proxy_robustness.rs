//! Bad input gets a clear error and tidepool keeps serving everyone else:
//! wrong credentials, hba rejections, garbage and truncated startup packets,
//! oversized messages, clients that vanish mid-query, broken config files.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use tidepool_tests::{wait_until_async, wire};

async fn login_error(bed: &common::Bed, user: &str, password: &str) -> (String, String) {
    let err = tokio_postgres::connect(
        &bed.tidepool.conn_string(user, password, "app"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("login must fail");
    let db = err
        .as_db_error()
        .expect("an ErrorResponse, not a dropped connection");
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_user_and_hba_reject_get_proper_errors() {
    let hba = r#"
[[hba]]
type = "host"
database = "all"
user = "blocked"
address = "all"
method = "reject"

[[hba]]
type = "host"
database = "all"
user = "md5user"
address = "127.0.0.1/32"
method = "md5"

[[hba]]
type = "host"
database = "all"
user = "all"
address = "127.0.0.1/32"
method = "scram-sha-256"
"#;
    let bed = common::bed(0, "transaction", "", hba).await.unwrap();
    let (code, msg) = login_error(&bed, "app", "wrong").await;
    assert_eq!(code, "28P01");
    assert!(msg.contains("password authentication failed"), "{msg}");
    let (code, _) = login_error(&bed, "nobody", "x").await;
    assert_eq!(code, "28P01", "an unknown user reads like a wrong password");
    let (code, msg) = login_error(&bed, "blocked", "x").await;
    assert_eq!(code, "28000");
    assert!(msg.contains("rejects"), "{msg}");
    // md5 clients work (and fail) with md5.
    let c = bed
        .tidepool
        .connect("md5user", "md5pass", "app")
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let (code, _) = login_error(&bed, "md5user", "nope").await;
    assert_eq!(code, "28P01");
    // Nothing else happened: everyone else is served.
    bed.app()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

/// Sends raw bytes and returns whatever the server answers before closing.
fn raw_exchange(port: u16, bytes: &[u8], then_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    if then_close {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The SQLSTATE of the first ErrorResponse in `bytes`, if any.
fn error_code(bytes: &[u8]) -> Option<String> {
    let at = bytes.iter().position(|&b| b == b'E')?;
    let body = bytes.get(at + 5..)?;
    let mut fields = body.split(|&b| b == 0);
    fields.find_map(|f| {
        f.strip_prefix(b"C")
            .map(|c| String::from_utf8_lossy(c).into_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_oversized_input_leave_tidepool_serving() {
    let hba = r#"
[[users]]
name = "trustuser"
password = ""

[[hba]]
type = "host"
database = "all"
user = "trustuser"
address = "127.0.0.1/32"
method = "trust"

[[hba]]
type = "host"
database = "all"
user = "all"
address = "all"
method = "scram-sha-256"
"#;
    let bed = common::bed(0, "transaction", "", hba).await.unwrap();
    let port = bed.tidepool.port();
    let c = bed.app().await.unwrap();
    c.batch_execute("CREATE TABLE survivors (x int)")
        .await
        .unwrap();

    // Garbage: a length too small to be a startup packet. As PostgreSQL
    // does ("invalid length of startup packet" is logged, not sent), the
    // connection is closed without an answer: a client probing the port
    // and leaving gets nothing to choke on.
    let answer = raw_exchange(port, b"\x00\x00\x00\x02garbage", false);
    assert!(answer.is_empty(), "{answer:?}");
    // Oversized startup packet (length 1 MB): the same.
    let answer = raw_exchange(port, &[0, 0x10, 0, 0, 0, 3, 0, 0], false);
    assert!(answer.is_empty(), "{answer:?}");
    assert!(
        bed.tidepool
            .log()
            .contains("invalid length of startup packet"),
        "the refusal is logged"
    );
    // Unsupported protocol version.
    let mut v2 = wire::startup_packet(&[("user", "app")]);
    v2[4..8].copy_from_slice(&0x0002_0000u32.to_be_bytes());
    assert_eq!(
        error_code(&raw_exchange(port, &v2, false)).as_deref(),
        Some("0A000")
    );
    // A startup packet without a user.
    let answer = raw_exchange(port, &wire::startup_packet(&[("database", "app")]), false);
    assert_eq!(error_code(&answer).as_deref(), Some("28000"));
    // Truncated: half a startup packet, then the client vanishes.
    let pkt = wire::startup_packet(&[("user", "app"), ("database", "app")]);
    raw_exchange(port, &pkt[..pkt.len() / 2], true);
    // Random bytes.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    raw_exchange(port, &noise, false);
    // SSLRequest is answered 'N' and the client may go on in clear text.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    assert_eq!(&n, b"N");
    drop(s);

    // After login: a message claiming 2 GB, and an unknown message type.
    for bad in [&b"Q\x7f\xff\xff\xff"[..], &b"!\x00\x00\x00\x04"[..]] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&wire::startup_packet(&[
            ("user", "trustuser"),
            ("database", "app"),
        ]))
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(6).any(|w| w == b"Z\x00\x00\x00\x05I") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "login as trustuser failed: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(bad).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert_eq!(error_code(&rest).as_deref(), Some("08P01"), "{rest:?}");
    }

    // A client that vanishes mid-query: its backend connection is closed,
    // the transaction rolled back, and nobody else notices.
    let (victim, conn) = tokio_postgres::connect(
        &bed.tidepool.conn_string("app", "app", "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let conn_task = tokio::spawn(conn);
    let query = tokio::spawn(async move {
        victim
            .batch_execute("BEGIN; INSERT INTO survivors VALUES (1); SELECT pg_sleep(30)")
            .await
    });
    let direct = bed.direct().await.unwrap();
    wait_until_async(Duration::from_secs(10), "the victim's query to run", || async {
        direct
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()", &[])
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await
    .unwrap();
    conn_task.abort();
    query.abort();
    wait_until_async(Duration::from_secs(10), "the abandoned server session to end", || async {
        direct
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()", &[])
            .await
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    })
    .await
    .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM survivors", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the vanished client's transaction was rolled back");

    // Everyone else is still served, on the same tidepool process.
    for _ in 0..5 {
        let other = bed.app().await.unwrap();
        other.simple_query("SELECT 1").await.unwrap();
    }
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_after_login_get_an_error_and_others_go_on() {
    let bed = common::bed(0, "transaction", "", "").await.unwrap();
    let port = bed.tidepool.port();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&wire::startup_packet(&[
        ("user", "md5user"),
        ("database", "app"),
    ]))
    .unwrap();
    // Default hba asks for SCRAM, which a raw socket cannot easily do: the
    // server's request is an AuthenticationSASL ('R'); answer it with junk.
    let mut head = [0u8; 1];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"R");
    s.write_all(b"p\x00\x00\x00\x08junk").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(error_code(&rest).as_deref(), Some("08P01"), "{rest:?}");
    bed.app()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[test]
fn a_config_with_errors_is_refused_with_every_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "127.0.0.1:1"
admin_listen = "0.0.0.0:9898"
[pool]
mode = "statement"
max_size = 0
[[backends]]
name = "pg0"
host = "127.0.0.1"
port = "five"
[[backends]]
name = "pg1"
host = ""
weight = -1
[[users]]
name = "app"
password = "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
[[hba]]
type = "host"
database = "all"
user = "all"
address = "10.0.0.0/33"
method = "scram-sha-256"
"#,
    )
    .unwrap();
    let bin = tidepool_tests::Tidepool::binary().unwrap();
    let out = std::process::Command::new(&bin)
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "pool.mode",
        "backends[0].port",
        "backends[1].host",
        "backends[1].weight",
        "server.admin_token",
        "users[0].backend_password",
        "hba[0].address",
    ] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }
    // `run` refuses the same file before listening.
    let out = std::process::Command::new(&bin)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("backends[0].port"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_secret_cannot_serve_the_rule_looks_like_an_unknown_one() {
    // `hashed` has an md5 hash as its secret, under a scram-sha-256 rule:
    // it can never log in. It must get the same whole SCRAM exchange as a
    // user tidepool does not know, not an immediate refusal (which would
    // tell a prober the name exists).
    let extra = r#"
[[users]]
name = "hashed"
password = "md504d4a9616f5b4c7cdb75992b7c5a43e9"
backend_password = "secret"

[[hba]]
type = "host"
database = "all"
user = "all"
address = "all"
method = "scram-sha-256"
"#;
    let bed = common::bed(0, "transaction", "", extra).await.unwrap();
    let first_answer = |user: &'static str| {
        let port = bed.tidepool.port();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            s.write_all(&wire::startup_packet(&[
                ("user", user),
                ("database", "app"),
            ]))
            .await
            .unwrap();
            let mut head = [0u8; 9];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
                .await
                .unwrap()
                .unwrap();
            (
                head[0],
                i32::from_be_bytes([head[5], head[6], head[7], head[8]]),
            )
        }
    };
    // 'R' with code 10: AuthenticationSASL, for both.
    assert_eq!(first_answer("hashed").await, (b'R', 10));
    assert_eq!(first_answer("nobody").await, (b'R', 10));
    // And both end as a wrong password would.
    for user in ["hashed", "nobody"] {
        let (code, msg) = login_error(&bed, user, "secret").await;
        assert_eq!(code, "28P01", "{user}");
        assert!(
            msg.contains("password authentication failed"),
            "{user}: {msg}"
        );
    }
}
