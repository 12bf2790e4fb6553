//! What every admin request passes before its handler, outermost first: a
//! browser's request for another site is refused (403), and so, on a
//! loopback socket, is a host name that is not loopback (421: DNS
//! rebinding); the body must arrive within [`REQUEST_READ_TIMEOUT`]; the
//! bearer token; a deadline for every handler but the node actions. The
//! decisions are pure functions in `guard`; this is the axum glue.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    guard,
    http::{ApiError, HANDLER_TIMEOUT, REQUEST_READ_TIMEOUT},
};
use crate::app::Shared;

/// Largest request body: the API's bodies are a few bytes of JSON.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the checks in front of the handlers read.
#[derive(Clone)]
pub(super) struct Checks {
    pub(super) shared: Arc<Shared>,
    /// The address the API's socket is bound to. The checks follow the
    /// socket, not `server.admin_listen`: a reload can change the setting,
    /// but moving the socket takes a restart.
    pub(super) bound: SocketAddr,
}

/// Rejects requests without the configured bearer token. The token is read
/// per request so that a reload (or a rotated token file) takes effect at
/// once; when it cannot be read, every request is refused. Without a token,
/// only a loopback socket answers, and only while
/// `server.admin_allow_unauthenticated_loopback` allows it.
pub(super) async fn require_token(
    State(checks): State<Checks>,
    request: Request,
    next: Next,
) -> Response {
    let config = checks.shared.config.load_full();
    let expected = match config.admin_token() {
        Ok(None) => match guard::tokenless_refusal(&config.server, checks.bound) {
            None => return next.run(request).await,
            Some(reason) => {
                tracing::error!("refusing admin requests: {reason}");
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
            }
        },
        Ok(Some(token)) => token,
        Err(e) => {
            tracing::error!(error = %e, "no usable admin token; refusing admin requests");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no usable admin token ({e}); fix it and reload"),
            )
            .into_response();
        }
    };
    if token_matches(request.headers(), &expected) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token: send `Authorization: Bearer <server.admin_token>`",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Refuses what a web browser may send for a page the operator happens to
/// have open: requests for another site (403), and, on a loopback socket,
/// requests for a host name that is not loopback (421: a page that points
/// its own name at 127.0.0.1, DNS rebinding). curl, probes and `tidepool
/// ctl` send no `Origin` and name the address they connect to, so they
/// pass.
pub(super) async fn refuse_foreign(
    State(checks): State<Checks>,
    request: Request,
    next: Next,
) -> Response {
    match guard::foreign_refusal(checks.bound, &request) {
        Some((status, reason)) => {
            tracing::warn!("admin request refused: {reason}");
            ApiError::new(status, reason).into_response()
        }
        None => next.run(request).await,
    }
}

/// Reads the whole body before anything else runs, within
/// [`REQUEST_READ_TIMEOUT`] and [`MAX_BODY_BYTES`]. A client that stalls
/// mid-body is answered 408 and its connection closed (hyper stops reading
/// a body nobody waits for), instead of holding a handler, some of which
/// have no deadline of their own.
pub(super) async fn read_body_in_time(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let reading = axum::body::to_bytes(body, MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(REQUEST_READ_TIMEOUT, reading).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "cannot read the request body ({e}); bodies are JSON of at most \
                     {MAX_BODY_BYTES} bytes"
                ),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {REQUEST_READ_TIMEOUT:?}"),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Gives a handler [`HANDLER_TIMEOUT`] to answer; past it, the handler is
/// dropped and the client told so (a reload under way still finishes on
/// its own thread).
pub(super) async fn limit_handler_time(request: Request, next: Next) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    match tokio::time::timeout(HANDLER_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(request = %what, "admin request abandoned after {HANDLER_TIMEOUT:?}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{what} did not finish within {HANDLER_TIMEOUT:?}; tidepool's log may say why"
                ),
            )
            .into_response()
        }
    }
}

/// Compares digests in constant time, so that neither the content nor the
/// length of the token leaks through response timing.
fn token_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = Sha256::digest(given.trim().as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn only_the_exact_bearer_token_matches() {
        assert!(token_matches(&bearer("Bearer s3cret"), "s3cret"));
        assert!(!token_matches(&bearer("Bearer s3cre"), "s3cret"));
        assert!(!token_matches(&bearer("Bearer s3cret!"), "s3cret"));
        assert!(!token_matches(&bearer("Basic s3cret"), "s3cret"));
        assert!(!token_matches(&HeaderMap::new(), "s3cret"));
    }
}
