//! Which part of wsgate serves a request path ([`Server::route`]), and the dispatch of a request
//! to it ([`handle`]): a hub route's WebSocket admission, the proxy, the API, metrics, health and
//! the demo page, or a 404 that lists what is served.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::admit;
use super::route::Route;
use super::state::Server;
use crate::config::OnMessage;
use crate::metrics::METRICS;
use crate::reply::{Body, text};

/// What serves a path, in order of precedence: hub routes, then the longest proxy prefix, then
/// the built-in echo route, then wsgate's own endpoints.
#[derive(Debug)]
pub enum Target<'a> {
    /// A hub route (or the echo route), with the group from the path or why it is not one.
    WebSocket {
        route: &'a Route,
        group: Result<Option<String>, String>,
    },
    /// The proxy, to upstream number `.0`.
    Proxy(usize),
    Demo,
    /// `/wsgate.js`, the browser client.
    Script,
    Health,
    /// `/readyz`: 200 while the broker takes publishes, else 503 saying why.
    Ready,
    Favicon,
    Metrics,
    Api,
    NotFound,
}

impl Server {
    /// Decides what serves `path` (without its query).
    pub fn route(&self, path: &str) -> Target<'_> {
        for r in &self.routes {
            if let Some(group) = r.matches(path) {
                return Target::WebSocket { route: r, group };
            }
        }
        if let Some(upstream) = self.proxy.route(path) {
            return Target::Proxy(upstream);
        }
        if let Some(r) = &self.echo
            && let Some(group) = r.matches(path)
        {
            return Target::WebSocket { route: r, group };
        }
        match path {
            "/" => Target::Demo,
            "/wsgate.js" => Target::Script,
            "/healthz" => Target::Health,
            "/readyz" => Target::Ready,
            "/favicon.ico" => Target::Favicon,
            "/metrics" => Target::Metrics,
            p if p == "/api" || p.starts_with("/api/") => Target::Api,
            _ => Target::NotFound,
        }
    }
}

/// Serves one request that hyper parsed.
pub async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    server: Arc<Server>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    // The proxy matches and forwards the normalised path: `/app/../secret` must not reach an
    // upstream that resolves it to `/secret`, outside the only prefix exposed.
    let path = match crate::uri::normalize_path(&path) {
        Ok(norm) => {
            if let Target::Proxy(upstream) = server.route(&norm) {
                let req = match with_path(req, &norm) {
                    Ok(r) => r,
                    Err(why) => return text(StatusCode::BAD_REQUEST, why),
                };
                return crate::proxy::handle(&server.proxy, req, upstream, peer).await;
            }
            norm.into_owned()
        }
        Err(why) => {
            if matches!(server.route(&path), Target::Proxy(_)) {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("400 Bad Request: {why} (path {path:?}).\n"),
                );
            }
            path
        }
    };
    match server.route(&path) {
        Target::WebSocket { route, group } => {
            admit::websocket(req, route, group, &server, peer).await
        }
        Target::Proxy(upstream) => crate::proxy::handle(&server.proxy, req, upstream, peer).await,
        Target::Demo => crate::web::demo_page(&req),
        Target::Script => crate::web::script(&req),
        Target::Health => text(StatusCode::OK, "ok\n"),
        Target::Ready => match server.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        // Browsers ask for it on every page; a 204 keeps their consoles free of 404 noise.
        Target::Favicon => text(StatusCode::NO_CONTENT, ""),
        Target::Metrics => {
            let mut r = text(StatusCode::OK, METRICS.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Target::Api => server.api.handle(req, peer.ip()).await,
        Target::NotFound => not_found(&path, &server),
    }
}

/// The request with its path replaced by `path` (the query kept).
fn with_path(mut req: Request<Incoming>, path: &str) -> Result<Request<Incoming>, String> {
    if req.uri().path() == path {
        return Ok(req);
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    match http::Uri::from_parts(parts) {
        Ok(u) => {
            *req.uri_mut() = u;
            Ok(req)
        }
        Err(e) => Err(format!(
            "400 Bad Request: the normalised path {path:?} is not a valid URI ({e}).\n"
        )),
    }
}

fn not_found(path: &str, server: &Server) -> Response<Body> {
    let mut body = format!("404 Not Found: nothing is served at {path}.\n\nWebSocket routes:\n");
    for r in server.routes.iter().chain(&server.echo) {
        let what = match r.ctx.on_message {
            OnMessage::Echo => "echo",
            OnMessage::Broadcast => "broadcast to its group",
            OnMessage::Drop => "receive only",
            OnMessage::Forward => "messages forwarded to a backend",
        };
        body.push_str(&format!("  {}  ({what})\n", r.pattern));
    }
    let mut prefixes = server.proxy.prefixes().peekable();
    if prefixes.peek().is_some() {
        body.push_str("\nProxied:\n");
        for (p, u) in prefixes {
            body.push_str(&format!("  {p}*  (upstream {u:?})\n"));
        }
    }
    body.push_str(
        "\nHTTP:\n  GET  /  (demo page)\n  GET  /wsgate.js  (the browser client)\n  POST /api/groups/{group}/messages\n  POST /api/publish\n  GET  /api/groups/{group}/presence\n  GET  /api/groups/{group}/history\n  POST /api/connections/{id}/messages\n  DELETE /api/connections/{id}\n  GET  /metrics\n  GET  /healthz\n  GET  /readyz\n",
    );
    text(StatusCode::NOT_FOUND, body)
}
