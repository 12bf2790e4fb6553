//! Logins the server refuses get the server's SQLSTATE at login, as
//! PostgreSQL gives them: an unknown database 3D000, an unknown setting in
//! `options` 42704, a bad value 22023 — in both pooling modes.

mod common;

async fn login_code(bed: &common::Bed, db: &str, options: Option<&str>) -> Option<String> {
    let mut cfg: tokio_postgres::Config =
        bed.tidepool.conn_string("app", "app", db).parse().unwrap();
    if let Some(o) = options {
        cfg.options(o);
    }
    match cfg.connect(tokio_postgres::NoTls).await {
        Ok((c, conn)) => {
            tokio::spawn(conn);
            // Refused later instead, if at all.
            c.simple_query("select 1")
                .await
                .err()
                .map(|e| format!("after login: {:?}", e.code().map(|c| c.code().to_string())))
        }
        Err(e) => e.code().map(|c| c.code().to_string()),
    }
}

async fn refusals_carry_the_servers_sqlstate(mode: &str) {
    let bed = common::bed(0, mode, "", "").await.unwrap();
    // The pool of the database has served a client before (the fast path).
    let c = bed.app().await.unwrap();
    c.simple_query("select 1").await.unwrap();
    assert_eq!(
        login_code(&bed, "nosuchdb", None).await.as_deref(),
        Some("3D000"),
        "{mode}"
    );
    assert_eq!(
        login_code(&bed, "app", Some("-c nosuch_setting=1"))
            .await
            .as_deref(),
        Some("42704"),
        "{mode}"
    );
    assert_eq!(
        login_code(&bed, "app", Some("-c work_mem=lots"))
            .await
            .as_deref(),
        Some("22023"),
        "{mode}"
    );
    // Logins to databases that do not exist leave no pool behind (and so
    // no metric series): twenty names, no trace.
    for i in 0..20 {
        assert_eq!(
            login_code(&bed, &format!("nosuch_{i}"), None)
                .await
                .as_deref(),
            Some("3D000")
        );
    }
    let pools = bed.show("POOL_POOLS").await.unwrap();
    assert!(
        pools
            .iter()
            .all(|p| !p.values().any(|v| v.starts_with("nosuch"))),
        "{mode}: {pools:?}"
    );
    let (_, metrics) = bed.tidepool.http_get("/metrics").unwrap();
    assert!(
        !metrics.contains("nosuch"),
        "{mode}: a series for a database that does not exist"
    );
    // A good option still logs in and takes effect.
    let mut cfg: tokio_postgres::Config = bed
        .tidepool
        .conn_string("app", "app", "app")
        .parse()
        .unwrap();
    cfg.options("-c work_mem=8MB");
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let v: String = c.query_one("show work_mem", &[]).await.unwrap().get(0);
    assert_eq!(v, "8MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refusals_carry_the_servers_sqlstate_in_transaction_mode() {
    refusals_carry_the_servers_sqlstate("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refusals_carry_the_servers_sqlstate_in_session_mode() {
    refusals_carry_the_servers_sqlstate("session").await;
}
