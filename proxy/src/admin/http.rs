//! The admin HTTP API on `server.admin_listen`: liveness, readiness,
//! Prometheus metrics, the node table, and control requests.
//!
//! Handlers only read snapshots and counters, or ask the owner of a piece
//! of state to change it (`app::reload` for the configuration, the
//! cluster's failover manager for attach, detach, promote and recover).
//! The watchdog's view and planned switchover come from the watchdog task
//! (404 when `[watchdog]` is not configured). Cache invalidation asks the
//! query cache (409 when it is off, so a script never mistakes "off" for
//! "done").
//!
//! In front of the handlers, outermost first: what a web browser sends for
//! another site is refused (403), and so, on a loopback socket, is a
//! request for a host name that is not loopback (421: DNS rebinding); the
//! body must arrive within [`REQUEST_READ_TIMEOUT`]; then the bearer token,
//! and a deadline for every handler but the node actions. The checks are
//! in `checks`, their decisions pure functions in `guard`.
//! Connections are served by hyper itself, for its header read timeout.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

use crate::{
    admin::{
        checks::{Checks, limit_handler_time, read_body_in_time, refuse_foreign, require_token},
        prometheus,
        view::NodeView,
    },
    app::{self, Shared},
    cluster::{Action, ControlError, Snapshot},
};

/// Time a client has to send a request's line and headers, and then again
/// its body; a connection kept alive is closed once idle this long.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most time a handler may take, the node actions excepted (see [`router`]).
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the admin API on `listener` until `shared.shutdown` turns true,
/// then lets each connection finish the request under way (bounded by
/// `server.shutdown_timeout`).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let bound = listener
        .local_addr()
        .unwrap_or_else(|_| shared.config.load().server.admin_listen);
    let app = router(shared.clone(), bound);
    let mut stop = std::pin::pin!(shutdown_requested(shared.shutdown.clone()));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        app.clone(),
                        shared.shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving.
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    let grace = shared.config.load().server.shutdown_timeout;
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}

/// Resolves once shutdown is asked for. A dropped sender means nobody can
/// ask for shutdown any more: never resolve rather than stop on a closed
/// channel.
async fn shutdown_requested(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serves one connection over HTTP/1.1. hyper closes it when a request's
/// line and headers take longer than [`REQUEST_READ_TIMEOUT`] (a client
/// that sends half a request and stalls), or when it sits idle between
/// requests that long. On shutdown the request under way is answered, then
/// the connection closes.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    shutdown: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(REQUEST_READ_TIMEOUT);
    let service = TowerToHyperService::new(app);
    let mut conn = std::pin::pin!(http.serve_connection(TokioIo::new(stream), service));
    let mut stop = std::pin::pin!(shutdown_requested(shutdown));
    let outcome = tokio::select! {
        outcome = conn.as_mut() => outcome,
        () = &mut stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = outcome {
        // Timeouts, resets, malformed requests: the client's doing.
        tracing::debug!(%peer, error = %e, "admin connection closed");
    }
}

/// Every route of the admin API, served on the socket bound to `bound`.
/// Everything but `/healthz` sits behind the bearer token when one is
/// configured: liveness probes carry no secret. The checks against
/// browsers (`refuse_foreign`) and the body's deadline apply to every
/// route.
pub fn router(shared: Arc<Shared>, bound: SocketAddr) -> Router {
    let checks = Checks {
        shared: shared.clone(),
        bound,
    };
    // No handler deadline here: the failover manager bounds each step of an
    // action with the [failover] timeouts (a recovery may take
    // recovery_timeout, 10 minutes by default, after the actions queued
    // before it), and the action carries on whether or not anyone waits, so
    // a deadline would only turn a success into an error.
    let node_actions = Router::new()
        .route("/v1/nodes/{id}/attach", post(attach))
        .route("/v1/nodes/{id}/detach", post(detach))
        .route("/v1/nodes/{id}/promote", post(promote))
        .route("/v1/nodes/{id}/recover", post(recover));
    let protected = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/nodes", get(nodes))
        .route("/v1/pools", get(pools))
        .route("/v1/reload", post(reload))
        .route("/v1/watchdog", get(watchdog_status))
        .route("/v1/watchdog/switchover", post(watchdog_switchover))
        .route("/v1/cache/invalidate", post(cache_invalidate))
        .fallback(not_found)
        .layer(middleware::from_fn(limit_handler_time))
        .merge(node_actions)
        .layer(middleware::from_fn_with_state(
            checks.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(protected)
        .layer(middleware::from_fn(read_body_in_time))
        .layer(middleware::from_fn_with_state(checks, refuse_foreign))
        .with_state(shared)
}

/// An error answer: a status and a JSON body whose `error` says what went
/// wrong and what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.body[key] = value;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready means writes have somewhere to go: a primary is known.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let snap = shared.cluster.snapshot();
    // Supervised services that stopped unexpectedly, and why.
    let services: serde_json::Map<String, serde_json::Value> = shared
        .services
        .states()
        .into_iter()
        .filter(|(_, s)| s.restarts > 0)
        .map(|(name, s)| (name.to_string(), json!(s)))
        .collect();
    if let Some(p) = snap.primary() {
        return Json(json!({ "ready": true, "primary": p.name, "service_restarts": services }))
            .into_response();
    }
    let nodes: Vec<String> = snap
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} {} {}{}",
                n.name,
                n.status.as_str(),
                n.role.as_str(),
                n.last_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let reason = if nodes.is_empty() {
        "no backends are configured".to_string()
    } else {
        format!(
            "no primary is known in the node table: {}",
            nodes.join(", ")
        )
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "ready": false, "reason": reason, "service_restarts": services })),
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
        prometheus::render(&shared),
    )
        .into_response()
}

/// A node as the API shows it: the snapshot's fields, the counters, and
/// Pgpool's split between `role` (what tidepool acts on) and `pg_role`
/// (what PostgreSQL reported).
fn node_json(v: &NodeView) -> Value {
    let n = &v.node;
    let mut j = serde_json::to_value(n).unwrap_or_else(|_| json!({}));
    j["role"] = json!(v.role.as_str());
    j["pg_role"] = json!(n.role.as_str());
    j["primary"] = json!(v.primary);
    j["selects"] = json!(v.selects);
    j["queries"] = json!(v.queries);
    j["health_checks"] = json!(v.health_checks);
    j["health_check_failures"] = json!(v.health_check_failures);
    j["health_check_retries"] = json!(v.health_check_retries);
    j["detaches"] = json!(v.detaches);
    j["detach_reason"] = json!(n.detached.as_ref().map(|d| &d.message));
    j["detach_cause"] = json!(n.detached.as_ref().map(|d| d.cause.as_str()));
    j["sslmode"] = json!(v.sslmode);
    j["ssl"] = json!(v.ssl);
    j["system_identifier"] = json!(v.system.map(|s| s.system_identifier.to_string()));
    j["timeline"] = json!(v.system.map(|s| s.timeline));
    j["replication_delay"] = json!(v.lag.bytes);
    j["replication_state"] = json!(v.lag.replication_state);
    j["replication_sync_state"] = json!(v.lag.replication_sync_state);
    j
}

fn pools_json(shared: &Shared, snap: &Snapshot) -> Value {
    let pools: Vec<Value> = shared
        .pools
        .stats()
        .into_iter()
        .map(|p| {
            let name = snap.node(p.node).map(|n| n.name.clone());
            let mut v = serde_json::to_value(&p).unwrap_or_else(|_| json!({}));
            v["node_name"] = json!(name);
            v["active"] = json!(p.total.saturating_sub(p.idle));
            v
        })
        .collect();
    Value::Array(pools)
}

async fn nodes(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let (snap, views) = super::view::nodes(&shared);
    let nodes: Vec<Value> = views.iter().map(node_json).collect();
    Json(json!({
        "generation": snap.generation,
        "primary": snap.primary().map(|p| p.name.clone()),
        "nodes": nodes,
        "pools": pools_json(&shared, &snap),
    }))
}

async fn pools(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let snap = shared.cluster.snapshot();
    Json(json!({ "pools": pools_json(&shared, &snap) }))
}

/// Re-reads the configuration file; an invalid file changes nothing and
/// every problem is listed with its key path.
async fn reload(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let task = tokio::task::spawn_blocking({
        let shared = shared.clone();
        move || app::reload(&shared)
    });
    let outcome = task.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload did not finish: {e}"),
        )
    })?;
    match outcome {
        Ok(outcome) => {
            tracing::info!(?outcome, "configuration reloaded through the admin API");
            Ok(Json(json!({ "reloaded": true, "outcome": outcome })))
        }
        Err(errors) => {
            for e in &errors {
                tracing::error!("reload refused, configuration unchanged: {e}");
            }
            let list: Vec<Value> = errors
                .iter()
                .map(|e| json!({ "path": e.path, "message": e.message }))
                .collect();
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "configuration rejected ({} error(s)); nothing was changed",
                    errors.len()
                ),
            )
            .with("errors", Value::Array(list)))
        }
    }
}

/// Carries out a node action through the failover manager and answers
/// with the node's state afterwards.
async fn node_action(shared: &Shared, id: &str, action: Action) -> Result<Json<Value>, ApiError> {
    match shared.control.request(id, action).await {
        Ok(v) => Ok(Json(v)),
        Err(e) => {
            let status = match &e {
                ControlError::NoSuchNode(_) => StatusCode::NOT_FOUND,
                ControlError::Conflict(_) => StatusCode::CONFLICT,
                ControlError::Failed(_) => StatusCode::BAD_GATEWAY,
                ControlError::NotRunning => StatusCode::SERVICE_UNAVAILABLE,
            };
            Err(ApiError::new(
                status,
                format!("{} of node {id}: {e}", action.as_str()),
            ))
        }
    }
}

async fn attach(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    node_action(&shared, &id, Action::Attach).await
}

async fn detach(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    node_action(&shared, &id, Action::Detach).await
}

async fn recover(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    node_action(&shared, &id, Action::Recover).await
}

/// `{"switchover": true}` asks for a planned switchover; an empty body or
/// `false` promotes the node and fences the current primary.
async fn promote(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let switchover = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("body must be JSON like {{\"switchover\": true}}: {e}"),
            )
        })?;
        match v.get("switchover") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("switchover must be true or false, not {other}"),
                ));
            }
        }
    };
    node_action(&shared, &id, Action::Promote { switchover }).await
}

fn watchdog(shared: &Shared) -> Result<&crate::watchdog::Watchdog, ApiError> {
    shared.watchdog.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this tidepool runs without a watchdog: add a [watchdog] section to use it",
        )
    })
}

/// `GET /v1/watchdog`: this node's view of the watchdog cluster.
async fn watchdog_status(State(shared): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let status = watchdog(&shared)?.status();
    Ok(Json(
        serde_json::to_value(&*status).unwrap_or_else(|_| json!({})),
    ))
}

#[derive(serde::Deserialize)]
struct SwitchoverBody {
    to: String,
}

/// `POST /v1/watchdog/switchover {"to": NODE}`: leadership and the address
/// move to NODE; nothing moves them back. Answers once the request is with
/// the leader; `GET /v1/watchdog` shows the move.
async fn watchdog_switchover(
    State(shared): State<Arc<Shared>>,
    body: Option<Json<SwitchoverBody>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    use crate::watchdog::{RequestError, core::SwitchoverError};
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "send a JSON body {\"to\": \"NODE\"} naming the watchdog node to switch over to",
        ));
    };
    let wd = watchdog(&shared)?;
    match wd.switchover(&body.to).await {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "message": format!(
                    "switchover to {} requested; `tidepool ctl watchdog` shows when it holds the address",
                    body.to
                ),
                "to": body.to,
            })),
        )),
        Err(RequestError::Switchover(e @ SwitchoverError::UnknownNode(_))) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(RequestError::Switchover(e)) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(e @ RequestError::Stopped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

#[derive(serde::Deserialize)]
struct InvalidateBody {
    table: Option<String>,
}

/// `POST /v1/cache/invalidate [{"table": T}]`: drops the query cache's
/// results that read T (in every database), or every result.
async fn cache_invalidate(
    State(shared): State<Arc<Shared>>,
    body: Option<Json<InvalidateBody>>,
) -> Result<Json<Value>, ApiError> {
    let Some(cache) = &shared.query_cache else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the query cache is off: set [query_cache] enabled = true",
        ));
    };
    let table = body.and_then(|Json(b)| b.table);
    cache
        .invalidate(table.as_deref())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(json!({
        "message": match &table {
            Some(t) => format!("results reading {t} dropped"),
            None => "every cached result dropped".to_string(),
        },
        "table": table,
    })))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such admin endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
}
