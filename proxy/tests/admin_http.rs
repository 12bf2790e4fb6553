//! The admin HTTP API served in-process on loopback, and `tidepool ctl`
//! talking to it. No PostgreSQL is needed: the node table starts with no
//! primary and the tests record health-check outcomes themselves.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tidepool::{
    admin,
    app::{self, Shared},
    cluster::Role,
    config::Config,
    pool::PoolKeyRef,
};
use tokio::{net::TcpListener, sync::watch};

struct Admin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    config_path: PathBuf,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

/// A configuration whose admin address is `admin`, plus `extra` TOML
/// lines for `[server]`, with `pool.max_size = max_size`.
fn config_text(admin: SocketAddr, server_extra: &str, max_size: usize) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "{admin}"
{server_extra}

[pool]
max_size = {max_size}

[[backends]]
name = "pg0"
host = "127.0.0.1"
port = 1

[[backends]]
name = "pg1"
host = "127.0.0.1"
port = 2

[[users]]
name = "app"
password = "secret"
"#
    )
}

async fn start(server_extra: &str) -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("tidepool.toml");
    std::fs::write(&config_path, config_text(addr, server_extra, 5)).unwrap();
    let config = Config::load(&config_path).expect("test configuration is valid");
    let (shutdown, rx) = watch::channel(false);
    let shared = Shared::new(config, Some(config_path.clone()), rx);
    let server = tokio::spawn(admin::http::serve(listener, shared.clone()));
    Admin {
        shared,
        addr,
        config_path,
        shutdown,
        server,
        _dir: dir,
    }
}

impl Admin {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut req = client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("admin API answers");
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        self.request(Method::GET, path, None).await
    }

    async fn post(&self, path: &str) -> (StatusCode, String) {
        self.request(Method::POST, path, None).await
    }

    /// `POST path` with `headers` added (or replacing reqwest's `Host`).
    async fn post_with(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut req = client.post(self.url(path));
        for &(name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req.send().await.expect("admin API answers");
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    /// Runs the real `tidepool ctl` binary with `args`.
    async fn ctl(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .arg("ctl")
            .args(args)
            .env_remove("TIDEPOOL_ADMIN_URL")
            .env_remove("TIDEPOOL_ADMIN_TOKEN")
            .kill_on_drop(true)
            .output()
            .await
            .expect("tidepool binary runs")
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_is_ok_and_readyz_waits_for_a_primary() {
    let admin = start("").await;
    assert_eq!(
        admin.get("/healthz").await,
        (StatusCode::OK, "ok".to_string())
    );

    let (status, body) = admin.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v = json(&body);
    assert_eq!(v["ready"], false);
    assert!(
        v["reason"].as_str().unwrap().contains("no primary"),
        "{body}"
    );

    admin.shared.cluster.record_check(0, Ok(Role::Primary));
    let (status, body) = admin.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["primary"], "pg0");
}

/// Every sample line is `name{labels} value`, and belongs to a family
/// announced by a TYPE line.
fn assert_exposition_format(text: &str) -> HashSet<String> {
    let mut families = HashSet::new();
    let mut samples = HashSet::new();
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if words.first() == Some(&"TYPE") {
                assert!(is_name(words[1]), "bad family name: {line}");
                assert!(
                    [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "unknown"
                    ]
                    .contains(&words[2]),
                    "bad type: {line}"
                );
                families.insert(words[1].to_string());
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line in exposition");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("value is not a number: {line}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels end with }");
                for pair in split_labels(labels) {
                    let (k, v) = pair.split_once('=').expect("label is k=\"v\"");
                    assert!(is_name(k), "bad label name in {line}");
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(is_name(name), "bad metric name: {line}");
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            families.contains(family) || families.contains(name),
            "sample without a TYPE line: {line}"
        );
        samples.insert(name.to_string());
    }
    samples
}

/// Splits `a="x",b="y"` at the commas outside quoted values.
fn split_labels(labels: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        out.push(&labels[start..]);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_cover_clients_pools_and_nodes_in_prometheus_text() {
    let admin = start("").await;
    let key = PoolKeyRef {
        node: 1,
        user: "app",
        database: "app",
    };
    let config = admin.shared.config.load_full();
    admin.shared.pools.get_or_create(key, || {
        (
            app::pool_limits(&config, "app"),
            tidepool::pool::Endpoint {
                host: "127.0.0.1".into(),
                port: 2,
                login: tidepool::credentials::Login::Password(None),
                credentials: Default::default(),
                tls: Default::default(),
            },
        )
    });
    admin.shared.cluster.record_check(0, Ok(Role::Primary));
    admin.shared.cluster.record_check(1, Err("refused".into()));
    // The health-check task counts checks; here one failed check of pg1.
    let pg1 = admin.shared.cluster.counters(1).unwrap();
    pg1.health_checks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pg1.health_check_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    let (status, text) = admin.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let samples = assert_exposition_format(&text);
    for name in [
        "tidepool_clients_active",
        "tidepool_clients_total",
        "tidepool_auth_failures_total",
        "tidepool_client_errors_total",
        "tidepool_queries_total",
        "tidepool_cancel_requests_total",
        "tidepool_sessions_pinned_total",
        "tidepool_reloads_total",
        "tidepool_pool_connections",
        "tidepool_pool_connections_idle",
        "tidepool_pool_connections_active",
        "tidepool_pool_waiting_clients",
        "tidepool_pool_checkouts_total",
        "tidepool_pool_connects_total",
        "tidepool_pool_connect_errors_total",
        "tidepool_pool_wait_timeouts_total",
        "tidepool_pool_queue_full_total",
        "tidepool_pool_wait_seconds_total",
        "tidepool_node_up",
        "tidepool_node_role",
        "tidepool_node_reachable",
        "tidepool_node_selects_total",
        "tidepool_node_queries_total",
        "tidepool_node_health_checks_total",
        "tidepool_node_health_check_failures_total",
    ] {
        assert!(samples.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        text.contains("tidepool_node_up{node=\"pg0\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("tidepool_node_up{node=\"pg1\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("tidepool_node_role{node=\"pg0\",role=\"primary\"} 1\n"));
    assert!(text.contains("tidepool_node_health_check_failures_total{node=\"pg1\"} 1\n"));
    assert!(
        text.contains("tidepool_pool_connections{node=\"pg1\",user=\"app\",database=\"app\"} 0\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_emptied_while_running_refuses_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, "s3cret\n").unwrap();
    let admin = start(&format!("admin_token_file = \"{}\"", file.display())).await;
    let (status, _) = admin
        .request(Method::GET, "/v1/nodes", Some("s3cret"))
        .await;
    assert_eq!(status, StatusCode::OK);
    std::fs::write(&file, "").unwrap();
    for token in [None, Some(""), Some(" "), Some("s3cret")] {
        let (status, body) = admin
            .request(Method::POST, "/v1/nodes/1/detach", token)
            .await;
        assert!(
            status.is_server_error() || status == StatusCode::UNAUTHORIZED,
            "{token:?}: {status} {body}"
        );
        assert_ne!(status, StatusCode::OK);
    }
    let (_, body) = admin.request(Method::GET, "/v1/nodes", None).await;
    assert!(body.contains("empty"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_token_guards_everything_but_healthz() {
    let admin = start(r#"admin_token = "s3cret""#).await;
    assert_eq!(admin.get("/healthz").await.0, StatusCode::OK);
    for path in ["/readyz", "/metrics", "/v1/nodes", "/v1/pools"] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(json(&body)["error"].as_str().unwrap().contains("token"));
        let (status, _) = admin.request(Method::GET, path, Some("wrong")).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
    }
    assert_eq!(admin.post("/v1/reload").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        admin.post("/v1/nodes/0/promote").await.0,
        StatusCode::UNAUTHORIZED
    );

    let ok = |p| admin.request(Method::GET, p, Some("s3cret"));
    assert_eq!(ok("/metrics").await.0, StatusCode::OK);
    assert_eq!(ok("/v1/nodes").await.0, StatusCode::OK);
    assert_eq!(ok("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);

    // ctl takes the token from the flag, or from the config file.
    let url = admin.url("");
    let out = admin.ctl(&["--url", &url, "nodes"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = admin
        .ctl(&["--url", &url, "--token", "s3cret", "nodes"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = admin.config_path.to_str().unwrap();
    let out = admin.ctl(&["-c", config, "nodes"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_refuses_a_broken_file_and_applies_a_valid_one() {
    let admin = start("").await;
    let good = config_text(admin.addr, "", 5);

    write_config(
        &admin.config_path,
        &good.replace("max_size = 5", "max_size = \"seven\""),
    );
    let (status, body) = admin.post("/v1/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let v = json(&body);
    let errors = v["errors"].as_array().expect("errors listed");
    assert!(
        errors.iter().any(|e| e["path"] == "pool.max_size"),
        "{body}"
    );
    assert!(v["error"].as_str().unwrap().contains("nothing was changed"));
    assert_eq!(admin.shared.config.load().pool.max_size, 5);

    write_config(&admin.config_path, &config_text(admin.addr, "", 7));
    let (status, body) = admin.post("/v1/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["reloaded"], true);
    assert_eq!(admin.shared.config.load().pool.max_size, 7);
    let (_, metrics) = admin.get("/metrics").await;
    assert!(metrics.contains("tidepool_reloads_total 1\n"), "{metrics}");

    // ctl reports a refused reload with every key, and fails.
    write_config(
        &admin.config_path,
        &good.replace("max_size = 5", "max_size = 0"),
    );
    let out = admin.ctl(&["--url", &admin.url(""), "reload"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pool.max_size: must be at least 1"),
        "{stderr}"
    );
    assert_eq!(admin.shared.config.load().pool.max_size, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_invalidation_with_the_cache_off_is_refused_and_ctl_fails() {
    let admin = start("").await;
    let (status, body) = admin
        .request(Method::POST, "/v1/cache/invalidate", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("query cache is off"),
        "{body}"
    );
    assert_eq!(admin.get("/v1/nope").await.0, StatusCode::NOT_FOUND);

    let url = admin.url("");
    let out = admin
        .ctl(&["--url", url.as_str(), "cache-invalidate", "--table", "t"])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("query cache is off"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_and_pools_are_listed_and_ctl_shows_them() {
    let admin = start("").await;
    admin.shared.cluster.record_check(0, Ok(Role::Primary));
    admin.shared.cluster.record_check(1, Ok(Role::Standby));
    admin
        .shared
        .cluster
        .counters(1)
        .unwrap()
        .health_checks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    let (status, body) = admin.get("/v1/nodes").await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["primary"], "pg0");
    assert_eq!(v["nodes"][1]["role"], "standby");
    assert_eq!(v["nodes"][1]["health_checks"], 1);
    assert!(v["pools"].is_array());
    assert_eq!(admin.get("/v1/pools").await.0, StatusCode::OK);

    let url = admin.url("");
    let out = admin.ctl(&["--url", &url, "nodes", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(printed["nodes"][0]["name"], "pg0");
    assert_eq!(printed["nodes"][0]["role"], "primary");
    assert_eq!(printed["nodes"][1]["port"], 2);

    let out = admin.ctl(&["--url", &url, "nodes"]).await;
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("id  name  host:port"), "{table}");
    assert!(
        lines[2].contains("pg0") && lines[2].contains("127.0.0.1:1"),
        "{table}"
    );
    assert!(
        lines[2].contains("primary") && lines[3].contains("standby"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_from_web_pages_are_refused_before_they_act() {
    let admin = start("").await;
    let own = admin.addr.to_string();
    let own_origin = format!("http://{own}");
    // The failover manager does not run here: a detach that got through
    // would wait for it until the client gives up.
    let refused = [
        (("origin", "http://evil.example"), StatusCode::FORBIDDEN),
        (("sec-fetch-site", "cross-site"), StatusCode::FORBIDDEN),
        (("host", "evil.example"), StatusCode::MISDIRECTED_REQUEST),
    ];
    for (header, expected) in refused {
        let (status, body) = admin.post_with("/v1/nodes/pg1/detach", &[header]).await;
        assert_eq!(status, expected, "{header:?}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    // A page of the API itself, and plain clients under a loopback name.
    let headers = [("origin", own_origin.as_str()), ("host", own.as_str())];
    let (status, body) = admin.post_with("/v1/reload", &headers).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let localhost = format!("localhost:{}", admin.addr.port());
    let (status, body) = admin
        .post_with("/v1/reload", &[("host", localhost.as_str())])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_api_without_a_token_can_be_closed_to_everyone() {
    let admin = start("").await;
    assert_eq!(admin.get("/v1/nodes").await.0, StatusCode::OK);
    // check-config refuses such a file; the API refuses too, should the
    // setting ever be in force without a token.
    let mut config = (*admin.shared.config.load_full()).clone();
    config.server.admin_allow_unauthenticated_loopback = false;
    admin
        .shared
        .config
        .store(Arc::new(tidepool::app::Runtime::new(config)));
    assert_eq!(admin.get("/healthz").await.0, StatusCode::OK);
    let (status, body) = admin.get("/v1/nodes").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("admin_allow_unauthenticated_loopback"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_mid_request_line_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let admin = start("").await;
    let mut stalled = tokio::net::TcpStream::connect(admin.addr).await.unwrap();
    stalled.write_all(b"GET /heal").await.unwrap();
    assert_eq!(admin.get("/healthz").await.0, StatusCode::OK);
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still connected after 20 s");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_stops_when_shutdown_is_signalled() {
    let admin = start("").await;
    assert_eq!(admin.get("/healthz").await.0, StatusCode::OK);
    admin.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), admin.server)
        .await
        .expect("admin server stops on shutdown")
        .unwrap();
}
