//! The listener and HTTP/1.1 connections: reading the first request head, handing the connection
//! to hyper, routing each request to a WebSocket route, the API, metrics or the demo page, and
//! draining everything on shutdown.
//!
//! This module does not know how groups are stored or how frames are parsed: it checks the
//! handshake with [`crate::ws::handshake`], then gives the upgraded socket to a
//! [`crate::ws::Session`].

mod head;
pub mod route;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::METRICS;
use crate::ws::Heartbeat;
use crate::ws::handshake::{self, Accept};
use crate::ws::outbox::Outbox;
use crate::ws::session::{self, Env, Session};
use head::HeadError;
pub use head::{Rewind, reply_and_close};
use route::Route;

/// Response body type: bodies the server writes itself ([`full`]) and streamed proxy bodies.
pub type Body = BoxBody<Bytes, BoxError>;

/// The error of a streamed body: hyper's, or an upstream socket's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    /// Hub routes, matched before proxy prefixes.
    pub routes: Vec<Route>,
    /// The built-in echo route: a convenience, so it yields to every configured route, proxy
    /// prefixes included (a `path_prefix = "/"` proxy gets `/ws/echo` too).
    pub echo: Option<Route>,
    pub hub: Arc<Hub>,
    pub heartbeat: Arc<Heartbeat>,
    session_env: Arc<Env>,
    /// Proxy routes, upstreams and tunnels.
    pub proxy: Arc<crate::proxy::Proxy>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
}

impl Shared {
    pub fn new(config: Arc<Config>, hub: Arc<Hub>, heartbeat: Arc<Heartbeat>) -> Self {
        let routes: Vec<Route> = config
            .effective_routes()
            .iter()
            .map(|r| Route::new(r, &config.websocket))
            .collect();
        let echo = (!config.websocket.echo_path.is_empty())
            .then(|| Route::echo(&config.websocket.echo_path, &config.websocket));
        let session_env = Arc::new(Env {
            hub: hub.clone(),
            heartbeat: heartbeat.clone(),
            close_timeout: config.websocket.close_timeout.get(),
            open: AtomicUsize::new(0),
        });
        let proxy = Arc::new(crate::proxy::Proxy::new(&config));
        Shared {
            config,
            routes,
            echo,
            hub,
            heartbeat,
            session_env,
            proxy,
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// WebSocket connections open now.
    pub fn open_connections(&self) -> usize {
        self.session_env.open.load(Ordering::Relaxed)
    }
}

/// Builds a plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { serve_conn(stream, peer, shared, shutdown).await });
            }
            Err(e) => {
                // Per-connection failures (reset before accept, ...) are not fatal. Running out
                // of descriptors is: back off instead of spinning, as axum's serve loop does.
                let fatal = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if fatal {
                    tracing::error!(error = %e, "accept failed; out of file descriptors or memory, retrying in 1s (raise the open files limit or lower server.max_connections)");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
            }
        }
    }
}

async fn serve_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cfg = &shared.config.server;
    let first = match head::read_head(
        &mut stream,
        cfg.max_header_bytes,
        cfg.handshake_timeout.get(),
    )
    .await
    {
        Ok(b) => b,
        Err(HeadError::Gone) => return,
        Err(HeadError::TooLarge(n)) => {
            let body = format!(
                "431 Request Header Fields Too Large: the request head is at least {n} bytes and the limit is {} \
(server.max_header_bytes). Send fewer or smaller headers (large cookies are the usual cause), or raise the limit.\n",
                cfg.max_header_bytes
            );
            reply_and_close(
                &mut stream,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &[],
                &body,
            )
            .await;
            return;
        }
        Err(HeadError::Timeout) => {
            let body = format!(
                "408 Request Timeout: the request head did not arrive within {} (server.handshake_timeout).\n",
                cfg.handshake_timeout
            );
            reply_and_close(&mut stream, StatusCode::REQUEST_TIMEOUT, &[], &body).await;
            return;
        }
    };
    // The usual WebSocket through the proxy (a fresh connection whose first request is the
    // upgrade) skips hyper on both sides; everything else is hyper's.
    let proxy = shared.proxy.clone();
    let route = |path: &str| shared.proxy_upstream(path);
    let stream = match crate::proxy::upgrade::serve_first(&proxy, stream, &first, peer, route).await
    {
        Ok(()) => return,
        Err(back) => back,
    };
    let io = TokioIo::new(Rewind::new(first.freeze(), stream));
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, shared).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.handshake_timeout.get())
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
            return;
        }
        _ = shutdown.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

impl Shared {
    /// The proxy upstream serving `path`, with the precedence of [`handle`]: a hub route
    /// matching `path` wins over every proxy prefix.
    fn proxy_upstream(&self, path: &str) -> Option<usize> {
        if self.routes.iter().any(|r| r.matches(path).is_some()) {
            return None;
        }
        self.proxy.route(path)
    }
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    let path = req.uri().path().to_string();
    for r in &shared.routes {
        if let Some(group) = r.matches(&path) {
            return websocket(req, r, group, &shared, peer);
        }
    }
    if let Some(upstream) = shared.proxy.route(&path) {
        return shared.proxy.handle(req, upstream, peer).await;
    }
    if let Some(r) = &shared.echo
        && let Some(group) = r.matches(&path)
    {
        return websocket(req, r, group, &shared, peer);
    }
    match path.as_str() {
        "/" => crate::web::demo_page(&req),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // Browsers ask for it on every page; a 204 keeps their consoles free of 404 noise.
        "/favicon.ico" => text(StatusCode::NO_CONTENT, ""),
        "/metrics" => {
            let mut r = text(StatusCode::OK, METRICS.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        p if p == "/api" || p.starts_with("/api/") => crate::api::handle(req, &shared).await,
        _ => not_found(&path, &shared),
    }
}

fn not_found(path: &str, shared: &Shared) -> Response<Body> {
    let mut body = format!("404 Not Found: nothing is served at {path}.\n\nWebSocket routes:\n");
    for r in shared.routes.iter().chain(&shared.echo) {
        let what = match r.ctx.on_message {
            crate::config::OnMessage::Echo => "echo".to_string(),
            crate::config::OnMessage::Broadcast => "broadcast to its group".to_string(),
            crate::config::OnMessage::Drop => "receive only".to_string(),
        };
        body.push_str(&format!("  {}  ({what})\n", r.pattern));
    }
    let mut prefixes = shared.proxy.prefixes().peekable();
    if prefixes.peek().is_some() {
        body.push_str("\nProxied:\n");
        for (p, u) in prefixes {
            body.push_str(&format!("  {p}*  (upstream {u:?})\n"));
        }
    }
    body.push_str(
        "\nHTTP:\n  GET  /  (demo page)\n  POST /api/groups/{group}/messages\n  POST /api/publish\n  GET  /metrics\n  GET  /healthz\n",
    );
    text(StatusCode::NOT_FOUND, body)
}

/// Answers a request on a WebSocket route: an explained error, a 503, or a 101 and a session.
fn websocket(
    mut req: Request<Incoming>,
    route: &Route,
    group: Result<Option<String>, String>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let accept = match handshake::check(
        req.method(),
        req.version(),
        req.headers(),
        &route.subprotocols,
    ) {
        Ok(a) => a,
        Err(e) => {
            METRICS.handshake_failures.inc();
            tracing::debug!(%peer, %path, error = %e, "handshake refused");
            let mut r = text(e.status(), e.body(&path));
            r.headers_mut().extend(e.headers());
            return r;
        }
    };
    let origin = req.headers().get(header::ORIGIN);
    if !route.allows_origin(origin.map(HeaderValue::as_bytes)) {
        METRICS.handshake_failures.inc();
        let origin = String::from_utf8_lossy(origin.map_or(&[][..], HeaderValue::as_bytes));
        tracing::info!(%peer, %path, %origin, "handshake refused: origin not allowed");
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "403 Forbidden: pages from {origin} may not open WebSockets on {path}. \
If they should, add {origin:?} to allowed_origins of this route (or websocket.allowed_origins).\n"
            ),
        );
    }
    let group = match group {
        Ok(g) => g,
        Err(why) => {
            METRICS.handshake_failures.inc();
            return text(
                StatusCode::BAD_REQUEST,
                format!("400 Bad Request: {why} (from the path {path}).\n"),
            );
        }
    };
    if shared.shutting_down.load(Ordering::Relaxed) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: wsgate is shutting down; reconnect in a moment.\n",
        );
    }
    let max = shared.config.server.max_connections;
    if shared.session_env.open.fetch_add(1, Ordering::AcqRel) >= max {
        shared.session_env.open.fetch_sub(1, Ordering::AcqRel);
        METRICS.connections_refused.inc();
        tracing::warn!(%peer, max, "connection refused: server.max_connections reached");
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "503 Service Unavailable: this server holds its maximum of {max} WebSocket connections \
(server.max_connections). Retry with backoff, or raise the limit.\n"
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    }
    // Join before the 101 goes out: a backend that publishes as soon as the browser's `onopen`
    // fires must find the member there. Until the session runs, messages wait in its outbox.
    let joined = Joined::new(shared, group);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = route.ctx.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<Rewind>>() else {
            tracing::error!("upgraded connection has an unexpected type; this is a bug");
            return;
        };
        // Build the leftover in its own scope: `unread` and `read_buf` are views into the
        // request buffers (KiBs each), which must not live as long as the session.
        let (stream, leftover) = {
            let read_buf = parts.read_buf;
            let (stream, unread) = parts.io.into_inner().into_parts();
            let mut leftover = bytes::BytesMut::with_capacity(unread.len() + read_buf.len());
            leftover.extend_from_slice(&unread);
            leftover.extend_from_slice(&read_buf);
            (stream, leftover.freeze())
        };
        joined.start(stream, leftover, ctx);
    });
    upgrade_response(&accept)
}

fn upgrade_response(accept: &Accept) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *r.headers_mut() = accept.response_headers();
    r
}

/// A member that joined its group at handshake time, before its session exists. Dropping it
/// (the upgrade failed) leaves the group and frees the connection slot; `start` hands both over
/// to the session, whose own drop does the same at the end.
struct Joined {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    group: Option<Arc<str>>,
    armed: bool,
}

impl Joined {
    fn new(shared: &Arc<Shared>, group: Option<String>) -> Self {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let limit = shared.config.websocket.send_queue_bytes;
        let outbox = Arc::new(Outbox::new(id, limit, shared.heartbeat.now_ms()));
        shared.heartbeat.register(&outbox);
        if shared.shutting_down.load(Ordering::Relaxed) {
            // Shutdown walked the registry before we were in it.
            outbox.request_close(session::SHUTDOWN);
        }
        let group: Option<Arc<str>> = group.map(Arc::from);
        if let Some(g) = &group {
            shared.hub.join(g, outbox.clone());
        }
        Joined {
            shared: shared.clone(),
            outbox,
            group,
            armed: true,
        }
    }

    /// Starts the session task for the upgraded connection.
    fn start(mut self, stream: TcpStream, leftover: Bytes, ctx: Arc<session::RouteCtx>) {
        self.armed = false;
        let env = self.shared.session_env.clone();
        let session = Session::new(
            stream,
            leftover,
            self.outbox.clone(),
            ctx,
            self.group.clone(),
            env,
        );
        tokio::spawn(session);
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        if self.armed {
            if let Some(g) = &self.group {
                self.shared.hub.leave(g, self.outbox.id);
            }
            self.shared.session_env.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Sends Close 1001 to every WebSocket client and waits until all are gone or `grace` passes.
/// Proxy tunnels first get `proxy.shutdown_grace` to end on their own, then both of their sides
/// get Close 1001 too. Returns whether every connection finished in time.
pub async fn drain(shared: &Shared, grace: Duration) -> bool {
    shared.shutting_down.store(true, Ordering::SeqCst);
    shared.proxy.shutting_down.store(true, Ordering::SeqCst);
    let conns = shared.heartbeat.connections();
    tracing::info!(connections = conns.len(), grace = ?grace, "closing WebSocket connections with 1001");
    for c in &conns {
        c.request_close(session::SHUTDOWN);
    }
    let tunnel_grace = shared.config.proxy.shutdown_grace.get();
    if shared.proxy.open_tunnels() > 0 && !tunnel_grace.is_zero() {
        tracing::info!(tunnels = shared.proxy.open_tunnels(), grace = ?tunnel_grace, "waiting for proxy tunnels to end (proxy.shutdown_grace)");
        let until = tokio::time::Instant::now() + tunnel_grace;
        while shared.proxy.open_tunnels() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for c in shared.proxy.heartbeat.connections() {
        c.request_close(session::SHUTDOWN);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while shared.open_connections() > 0 || shared.proxy.open_tunnels() > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
