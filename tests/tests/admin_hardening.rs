//! The admin API on loopback answers its operators, not the web pages
//! their browsers have open: a request for another site (`Origin`,
//! `Sec-Fetch-Site`) or for a name that is not loopback (DNS rebinding) is
//! refused before it can act, while curl-like clients keep working. A
//! client that sends half a request and stalls is disconnected, and the
//! API keeps serving everyone else meanwhile.

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// Sends `head` (request line and headers, without the blank line that
/// ends them) with an empty body on a new connection to 127.0.0.1:`port`;
/// returns the status and the body.
fn exchange(port: u16, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{head}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (status, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (code, body.to_string())
}

/// Node `name`'s entry in `GET /v1/nodes`.
fn node(bed: &common::Bed, name: &str) -> serde_json::Value {
    let (code, body) = bed.tidepool.http_get("/v1/nodes").unwrap();
    assert_eq!(code, 200, "{body}");
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {body}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_act_on_the_admin_api_but_plain_clients_can() {
    let bed = common::bed(0, "transaction", "", "").await.unwrap();
    let port = bed.tidepool.admin_port();
    let own = format!("127.0.0.1:{port}");

    // A page of another site posts to the API: refused before it acts.
    let (code, body) = exchange(
        port,
        &format!("POST /v1/nodes/0/detach HTTP/1.1\r\nHost: {own}\r\nOrigin: http://evil.example"),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (code, body) = exchange(
        port,
        &format!("POST /v1/nodes/0/detach HTTP/1.1\r\nHost: {own}\r\nSec-Fetch-Site: cross-site"),
    );
    assert_eq!(code, 403, "{body}");
    // DNS rebinding: the page's own name now points at 127.0.0.1, so its
    // origin matches the Host it asks for; the name is not loopback.
    let (code, body) = exchange(
        port,
        &format!(
            "POST /v1/nodes/0/detach HTTP/1.1\r\nHost: evil.example:{port}\r\n\
             Origin: http://evil.example:{port}"
        ),
    );
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("evil.example"), "{body}");
    let (code, body) = exchange(
        port,
        "POST /v1/nodes/0/detach HTTP/1.1\r\nHost: evil.example",
    );
    assert_eq!(code, 421, "{body}");
    let pg0 = node(&bed, "pg0");
    assert_eq!(pg0["status"], "up", "the node stays attached: {pg0}");
    assert_eq!(pg0["detaches"], 0, "{pg0}");

    // curl and tidepool ctl: no Origin, the address they connect to.
    let (code, body) = exchange(port, &format!("GET /v1/nodes HTTP/1.1\r\nHost: {own}"));
    assert_eq!(code, 200, "{body}");
    let (code, body) = exchange(
        port,
        &format!("GET /healthz HTTP/1.1\r\nHost: localhost:{port}"),
    );
    assert_eq!((code, body.as_str()), (200, "ok"));
    // HTTP/1.0 sends no Host.
    let (code, body) = exchange(port, "GET /v1/nodes HTTP/1.0");
    assert_eq!(code, 200, "{body}");
    // A page of the API itself is its own origin.
    let (code, body) = exchange(
        port,
        &format!("POST /v1/reload HTTP/1.1\r\nHost: {own}\r\nOrigin: http://{own}"),
    );
    assert_eq!(code, 200, "{body}");
}

/// Whether the peer has neither answered nor closed `stream` yet.
fn still_waiting(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let waiting = matches!(stream.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    waiting
}

/// Reads `stream` until the peer closes it, failing if that takes longer
/// than `limit`; returns what it sent.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("the connection is still open after {limit:?}");
        }
        // Reset by the server: closed too.
        Err(_) => {}
    }
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_request_is_disconnected_while_others_are_served() {
    let bed = common::bed(0, "transaction", "", "").await.unwrap();
    let port = bed.tidepool.admin_port();
    let mut half_head = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half_head.write_all(b"GET /heal").unwrap();
    let mut half_body = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        half_body,
        "POST /v1/reload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    let stalled = Instant::now();

    // Everyone else is served meanwhile.
    for _ in 0..5 {
        let (code, body) = bed.tidepool.http_get("/healthz").unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"));
    }
    let (code, body) = bed.tidepool.http_get("/v1/nodes").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        still_waiting(&half_head) && still_waiting(&half_body),
        "the stalled clients were not answered at once"
    );

    // Then both are dropped: the half-sent head without an answer, the
    // half-sent body with 408.
    read_until_closed(&mut half_head, Duration::from_secs(20));
    let answer = read_until_closed(&mut half_body, Duration::from_secs(20));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        stalled.elapsed() < Duration::from_secs(25),
        "{:?}",
        stalled.elapsed()
    );
    let (code, body) = bed.tidepool.http_get("/healthz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
}
