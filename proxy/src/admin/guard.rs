//! What the admin HTTP API decides about a request before any handler
//! runs, as pure functions of its headers, the address its socket is bound
//! to and the configuration: whether a browser sent it for another site,
//! whether it names a host a loopback socket must not answer for (DNS
//! rebinding), and whether the API may answer without a token. `http.rs`
//! applies them.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::{
    extract::Request,
    http::{HeaderMap, StatusCode, header},
};

use crate::config::ServerConfig;

/// The status and reason a request for the API on `bound` is refused with
/// before it acts, or `None`: 403 for a request a browser made for another
/// site, 421 for a host name that a loopback socket does not answer for.
pub(super) fn foreign_refusal(
    bound: SocketAddr,
    request: &Request,
) -> Option<(StatusCode, String)> {
    let headers = request.headers();
    let host = header_str(headers, header::HOST);
    let origin = header_str(headers, header::ORIGIN);
    let fetch_site = header_str(headers, "sec-fetch-site");
    if let Some(reason) = cross_site_refusal(origin, host, fetch_site) {
        return Some((StatusCode::FORBIDDEN, reason));
    }
    let authority = request.uri().authority().map(|a| a.as_str());
    host_refusal(bound, host)
        .or_else(|| host_refusal(bound, authority))
        .map(|reason| (StatusCode::MISDIRECTED_REQUEST, reason))
}

/// A header's value. One that is not visible ASCII reads as empty, which
/// matches no origin and no host.
fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).map(|v| v.to_str().unwrap_or(""))
}

/// Why a request a browser made for another site is refused, or `None`.
/// Browsers send `Origin` on cross-origin requests and on every POST, and
/// `Sec-Fetch-Site`; other clients send neither. A request that names an
/// origin passes only when that origin is the API's own
/// (`http://` or `https://` and the `Host` it asks for).
fn cross_site_refusal(
    origin: Option<&str>,
    host: Option<&str>,
    fetch_site: Option<&str>,
) -> Option<String> {
    if fetch_site.is_some_and(|site| site.trim().eq_ignore_ascii_case("cross-site")) {
        return Some(
            "a browser sent this request for another site (Sec-Fetch-Site: cross-site); \
             use curl or tidepool ctl"
                .to_string(),
        );
    }
    let origin = origin?;
    let own = host.is_some_and(|host| {
        let origin = origin.to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        origin == format!("http://{host}") || origin == format!("https://{host}")
    });
    if own {
        return None;
    }
    Some(format!(
        "a browser sent this request for a page of {origin:?}, not of the admin API itself; \
         use curl or tidepool ctl, which send no Origin"
    ))
}

/// Why a request for `host` (its `Host`, or the authority of an
/// absolute-form request) is refused on the socket bound to `bound`, or
/// `None`. On loopback only loopback names are answered; a request without
/// one (HTTP/1.0 sends no `Host`) has nothing to check, and a socket that
/// is not loopback is guarded by the token.
fn host_refusal(bound: SocketAddr, host: Option<&str>) -> Option<String> {
    let host = host?;
    if !bound.ip().is_loopback() || is_loopback_host(host) {
        return None;
    }
    Some(format!(
        "the admin API listens on loopback ({bound}) and answers requests for localhost, \
         127.x.x.x or [::1] only, not for {host:?}"
    ))
}

/// Whether `host` is `localhost`, an address in 127.0.0.0/8 or `[::1]`,
/// each with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some(parts) => parts,
            None => return false,
        },
        None => host.find(':').map_or((host, ""), |at| host.split_at(at)),
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !port_ok {
        return false;
    }
    if host.starts_with('[') {
        return name.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why the API, bound to `bound`, may not answer without a token, or `None`
/// when it may: only on a loopback socket, and only while
/// `admin_allow_unauthenticated_loopback` is on.
pub(super) fn tokenless_refusal(server: &ServerConfig, bound: SocketAddr) -> Option<String> {
    if !bound.ip().is_loopback() {
        return Some(format!(
            "the admin API listens on {bound}, which is not loopback, and no admin token is \
             configured: set server.admin_token or server.admin_token_file and reload"
        ));
    }
    if !server.admin_allow_unauthenticated_loopback {
        return Some(
            "no admin token is configured and server.admin_allow_unauthenticated_loopback is \
             false: set server.admin_token or server.admin_token_file and reload"
                .to_string(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_without_origin_or_from_the_apis_own_origin_pass() {
        let api = Some("127.0.0.1:9898");
        // (Origin, Sec-Fetch-Site, served) of requests for `api`.
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            // curl, probes, tidepool ctl; a URL typed in the address bar.
            (None, None, true),
            (None, Some("none"), true),
            // Pages of the API itself.
            (Some("http://127.0.0.1:9898"), None, true),
            (Some("https://127.0.0.1:9898"), Some("same-origin"), true),
            (Some("HTTP://127.0.0.1:9898"), None, true),
            // Pages of other sites, of other ports, under other names.
            (Some("http://evil.example"), None, false),
            (Some("http://127.0.0.1:3000"), None, false),
            (Some("http://localhost:9898"), None, false),
            (Some("http://127.0.0.1:9898/"), None, false),
            (Some("ftp://127.0.0.1:9898"), None, false),
            (Some("null"), None, false),
            (Some(""), None, false),
            (None, Some("cross-site"), false),
            (None, Some("Cross-Site"), false),
            (Some("http://127.0.0.1:9898"), Some("cross-site"), false),
        ];
        for &(origin, fetch_site, served) in cases {
            assert_eq!(
                cross_site_refusal(origin, api, fetch_site).is_none(),
                served,
                "Origin {origin:?}, Sec-Fetch-Site {fetch_site:?}"
            );
        }
        // The origin is compared with the Host asked for, whatever its case.
        let localhost = Some("LocalHost:9898");
        assert_eq!(
            cross_site_refusal(Some("http://localhost:9898"), localhost, None),
            None
        );
        assert!(cross_site_refusal(Some("http://127.0.0.1:9898"), localhost, None).is_some());
        // HTTP/1.0: no Host, so no origin can be the API's own.
        assert_eq!(cross_site_refusal(None, None, None), None);
        assert!(cross_site_refusal(Some("http://127.0.0.1:9898"), None, None).is_some());
    }

    #[test]
    fn a_loopback_socket_answers_loopback_host_names_only() {
        let loopback: SocketAddr = "127.0.0.1:9898".parse().unwrap();
        // (Host, served)
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1:9898", true),
            ("127.0.0.1", true),
            ("127.1.2.3:80", true),
            ("localhost", true),
            ("LocalHost:9898", true),
            ("[::1]", true),
            ("[::1]:9898", true),
            ("[0:0:0:0:0:0:0:1]:9898", true),
            ("evil.example", false),
            ("evil.example:9898", false),
            ("localhost.evil.example", false),
            ("127.0.0.1.nip.io:9898", false),
            ("127.1:9898", false),
            ("10.0.0.1:9898", false),
            ("0.0.0.0:9898", false),
            ("[::2]:9898", false),
            ("[127.0.0.1]:9898", false),
            ("::1", false),
            ("[::1", false),
            ("[::1]x", false),
            ("127.0.0.1:", false),
            ("127.0.0.1:http", false),
            ("localhost:9898:1", false),
            ("", false),
        ];
        for &(host, served) in cases {
            assert_eq!(
                host_refusal(loopback, Some(host)).is_none(),
                served,
                "Host {host:?}"
            );
        }
        assert!(
            host_refusal(loopback, None).is_none(),
            "HTTP/1.0 sends no Host"
        );
        let v6: SocketAddr = "[::1]:9898".parse().unwrap();
        assert!(host_refusal(v6, Some("evil.example")).is_some());
        assert!(host_refusal(v6, Some("[::1]:9898")).is_none());
        // Off loopback the token guards the API, whatever name reaches it.
        let open: SocketAddr = "0.0.0.0:9898".parse().unwrap();
        assert!(host_refusal(open, Some("evil.example")).is_none());
    }

    #[test]
    fn without_a_token_only_an_allowed_loopback_socket_answers() {
        let loopback: SocketAddr = "127.0.0.1:9898".parse().unwrap();
        let open: SocketAddr = "0.0.0.0:9898".parse().unwrap();
        let mut server = ServerConfig::default();
        assert!(server.admin_allow_unauthenticated_loopback);
        assert_eq!(tokenless_refusal(&server, loopback), None);
        assert!(tokenless_refusal(&server, open).is_some());
        server.admin_allow_unauthenticated_loopback = false;
        let reason = tokenless_refusal(&server, loopback).unwrap();
        assert!(
            reason.contains("admin_allow_unauthenticated_loopback"),
            "{reason}"
        );
        assert!(tokenless_refusal(&server, open).is_some());
    }
}
