//! Access lines: one per WebSocket handshake on a hub route and one per proxied request, at
//! `info` under the target `wsgate::access`, so a filter such as `wsgate::access=off` (or a
//! JSON log's `target` field) separates them from the rest. A leaf: callers pass what they know.

use std::net::SocketAddr;
use std::time::Duration;

/// A WebSocket handshake on a hub route: `101` (`200` for an HTTP/2 extended CONNECT), or the
/// refusal's status and reason; `http_version` is "1.1" or "2".
pub fn handshake(
    peer: SocketAddr,
    path: &str,
    http_version: &str,
    status: u16,
    refusal: Option<&str>,
    took: Duration,
    bytes: u64,
) {
    tracing::info!(
        target: "wsgate::access",
        kind = "handshake",
        %peer,
        path,
        http_version,
        status,
        refusal = refusal.unwrap_or("-"),
        duration_ms = ms(took),
        bytes,
        "access"
    );
}

/// A proxied request (plain or upgrade): the status the client got, the upstream, the time to
/// the response head, and the response body's size where it was known then.
pub fn proxied(
    peer: SocketAddr,
    method: &str,
    path: &str,
    upstream: &str,
    status: u16,
    took: Duration,
    bytes: Option<u64>,
) {
    tracing::info!(
        target: "wsgate::access",
        kind = "proxy",
        %peer,
        method,
        path,
        upstream,
        status,
        duration_ms = ms(took),
        bytes = bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        "access"
    );
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
