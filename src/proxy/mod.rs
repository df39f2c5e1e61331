//! The reverse proxy: proxy routes (`path_prefix` + `proxy_pass`), upstream server choice and
//! health, HTTP forwarding, and WebSocket upgrades with a frame-aware tunnel.
//!
//! This module does not know about the hub, the broker or the publish API: the server hands it
//! a request that matched a proxy route and gets a response back ([`handle`]), or a fresh
//! connection whose first request is an upgrade ([`upgrade::serve_first`]).

pub mod balance;
pub mod error;
pub mod forward;
mod h1;
pub mod headers;
mod idle;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod uring;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

pub use balance::Upstream;
pub use error::Error;
pub use state::Proxy;
pub use tunnel::{Hold, TunnelSettings};

use crate::reply::Body;

/// Proxies one request to upstream `upstream`: a WebSocket upgrade or plain HTTP.
pub async fn handle(
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
    upstream: usize,
    peer: SocketAddr,
) -> Response<Body> {
    crate::metrics::METRICS.proxy_requests.inc();
    if upgrade::is_websocket_upgrade(&req) && req.version() < http::Version::HTTP_11 {
        // HTTP/1.0 has no upgrade (RFC 9110 §7.8); the hub routes answer the same.
        let mut r = crate::reply::text(
            http::StatusCode::UPGRADE_REQUIRED,
            "426 Upgrade Required: a WebSocket handshake needs HTTP/1.1; this request was HTTP/1.0. Send it as HTTP/1.1.\n",
        );
        r.headers_mut().insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        return r;
    }
    let started = std::time::Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let websocket = upgrade::is_websocket_upgrade(&req) || upgrade::is_extended_connect(&req);
    let via = if req.version() == http::Version::HTTP_2 {
        "2"
    } else {
        "1.1"
    };
    let resp = if websocket {
        let r = upgrade::upgrade(proxy, upstream, req, peer).await;
        if r.status().as_u16() == 101 || (via == "2" && r.status().is_success()) {
            crate::metrics::METRICS.websocket_opened("proxy", via);
        }
        r
    } else {
        forward::forward(proxy, upstream, req, peer).await
    };
    let (name, status, took) = (
        &proxy.upstreams[upstream].name,
        resp.status().as_u16(),
        started.elapsed(),
    );
    crate::metrics::METRICS.proxy_response(name, status, took);
    let bytes = hyper::body::Body::size_hint(resp.body()).exact();
    crate::access::proxied(peer, method.as_str(), &path, name, status, took, bytes);
    resp
}
