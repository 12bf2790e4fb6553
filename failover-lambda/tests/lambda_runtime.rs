//! The function binary under the Lambda Runtime API, served by a small
//! emulator in the test (the same endpoints Lambda offers a custom runtime).

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::{Moto, two_instances};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

const BIN: &str = env!("CARGO_BIN_EXE_tidepool-failover-lambda");

/// What the function posted back for one invocation.
#[derive(Debug)]
enum Posted {
    Response(String, Value),
    Error(String, String),
}

#[derive(Clone)]
struct Emulator {
    events: Arc<Mutex<VecDeque<(String, Value)>>>,
    queued: Arc<Notify>,
    posted: mpsc::UnboundedSender<Posted>,
}

/// GET next: hands out queued events, holding the request open while the
/// queue is empty, as Lambda does between invocations.
async fn next(State(emu): State<Emulator>) -> impl IntoResponse {
    loop {
        // Register for wake-ups before looking, so a push in between is not missed.
        let notified = emu.queued.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let event = emu.events.lock().unwrap().pop_front();
        if let Some((id, event)) = event {
            let deadline =
                SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(60);
            let mut headers = HeaderMap::new();
            headers.insert(
                "lambda-runtime-aws-request-id",
                HeaderValue::from_str(&id).unwrap(),
            );
            headers.insert(
                "lambda-runtime-deadline-ms",
                HeaderValue::from_str(&deadline.as_millis().to_string()).unwrap(),
            );
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                HeaderValue::from_static(
                    "arn:aws:lambda:us-east-1:123456789012:function:tidepool-failover",
                ),
            );
            headers.insert(
                "lambda-runtime-trace-id",
                HeaderValue::from_static("Root=1-00000000-000000000000000000000000"),
            );
            return (StatusCode::OK, headers, event.to_string());
        }
        notified.await;
    }
}

async fn response(State(emu): State<Emulator>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    let _ = emu.posted.send(Posted::Response(id, value));
    StatusCode::ACCEPTED
}

async fn error(State(emu): State<Emulator>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let _ = emu
        .posted
        .send(Posted::Error(id, String::from_utf8_lossy(&body).into()));
    StatusCode::ACCEPTED
}

async fn init_error(State(emu): State<Emulator>, body: Bytes) -> StatusCode {
    let _ = emu.posted.send(Posted::Error(
        "init".into(),
        String::from_utf8_lossy(&body).into(),
    ));
    StatusCode::ACCEPTED
}

#[tokio::test]
async fn the_function_serves_events_from_the_runtime_api() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let allocation_id = clients
        .ec2
        .allocate_address()
        .send()
        .await
        .unwrap()
        .allocation_id
        .unwrap();

    let (tx, mut posted) = mpsc::unbounded_channel();
    let emu = Emulator {
        events: Arc::new(Mutex::new(VecDeque::new())),
        queued: Arc::new(Notify::new()),
        posted: tx,
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(emu.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runtime_api = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let b = &world.b;
    let events = [
        (
            "req-1",
            json!({"action": "switchover", "target": {"instance_id": b.instance_id, "private_ip": b.private_ip, "node": "tp-b"}}),
        ),
        (
            "req-2",
            json!({"action": "status", "target": {"instance_id": b.instance_id}}),
        ),
        // Lambda has no instance metadata: the event must name the target.
        ("req-3", json!({"action": "escalate"})),
    ];
    {
        let mut queue = emu.events.lock().unwrap();
        for (id, event) in &events {
            queue.push_back((id.to_string(), event.clone()));
        }
    }
    emu.queued.notify_waiters();

    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env("AWS_LAMBDA_RUNTIME_API", &runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "tidepool-failover")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/tidepool-failover")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "tests")
        .env("TIDEPOOL_MODE", "eip")
        .env("TIDEPOOL_EIP_ALLOCATION_ID", &allocation_id)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    let mut function = cmd.spawn().expect("start the function");

    let mut answers = Vec::new();
    while answers.len() < events.len() {
        let item = tokio::time::timeout(Duration::from_secs(60), posted.recv())
            .await
            .expect("the function answered within 60 s")
            .expect("emulator channel open");
        match item {
            Posted::Response(id, value) => answers.push((id, value)),
            Posted::Error(id, body) => panic!("invocation {id} failed: {body}"),
        }
    }
    let _ = function.kill().await;
    server.abort();

    let (id, switchover) = &answers[0];
    assert_eq!(id, "req-1");
    assert_eq!(switchover["ok"], true, "{switchover}");
    assert_eq!(switchover["active_node"], "tp-b");
    assert_eq!(switchover["changed"], true);
    assert_eq!(
        switchover["after"][0]["holder"]["instance_id"],
        b.instance_id.as_str()
    );

    let (id, status) = &answers[1];
    assert_eq!(id, "req-2");
    assert_eq!(status["holds"], true, "{status}");

    let (id, untargeted) = &answers[2];
    assert_eq!(id, "req-3");
    assert_eq!(untargeted["ok"], false);
    assert!(
        untargeted["error"].as_str().unwrap().contains("target"),
        "{untargeted}"
    );

    // The move is real: moto shows B holding the address.
    let out = clients
        .ec2
        .describe_addresses()
        .allocation_ids(&allocation_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.addresses()[0].instance_id(),
        Some(b.instance_id.as_str())
    );
}
