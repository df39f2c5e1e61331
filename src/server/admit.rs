//! Admission of a WebSocket on a hub route, in one fixed order: the handshake, the origin, the
//! group from the path, then (as they land) authentication and backend hooks, then a
//! connection slot, then the join. Each step refuses with a status and a sentence; only a
//! connection that passed every step gets its 101 and a session.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::route::Route;
use super::state::Server;
use crate::broker::HistoryQuery;
use crate::hub::{Join, Presence};
use crate::lifecycle::Slot;
use crate::metrics::METRICS;
use crate::reply::{Body, full, text};
use crate::transport::{Rewind, Transport};
use crate::ws::close::CloseReason;
use crate::ws::codec::RAW;
use crate::ws::handshake::{self, Accept, HandshakeError};
use crate::ws::outbox::Outbox;
use crate::ws::session::{RouteCtx, Session};
use crate::ws::v1;

/// Why a WebSocket was not admitted; each reason is one response.
#[derive(Debug)]
enum Refusal {
    Handshake(HandshakeError),
    Origin(String),
    Group(String),
    ShuttingDown,
    Full { max: usize },
}

impl Refusal {
    /// The `outcome` label of `wsgate_ws_handshakes_total`.
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Handshake(e) => e.reason(),
            Refusal::Origin(_) => "origin",
            Refusal::Group(_) => "group",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Full { .. } => "max_connections",
        }
    }

    fn into_response(self, path: &str) -> Response<Body> {
        match self {
            Refusal::Handshake(e) => {
                let mut r = text(e.status(), e.body(path));
                r.headers_mut().extend(e.headers());
                r
            }
            Refusal::Origin(origin) => text(
                StatusCode::FORBIDDEN,
                format!(
                    "403 Forbidden: pages from {origin} may not open WebSockets on {path}. \
If they should, add {origin:?} to allowed_origins of this route (or websocket.allowed_origins).\n"
                ),
            ),
            Refusal::Group(why) => text(
                StatusCode::BAD_REQUEST,
                format!("400 Bad Request: {why} (from the path {path}).\n"),
            ),
            Refusal::ShuttingDown => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Unavailable: wsgate is shutting down; reconnect in a moment.\n",
            ),
            Refusal::Full { max } => {
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "503 Service Unavailable: this server holds its maximum of {max} WebSocket connections \
(server.max_connections). Retry with backoff, or raise the limit.\n"
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                r
            }
        }
    }
}

/// Answers a request on a WebSocket route: an explained refusal, or a 101 and a session.
pub async fn websocket(
    mut req: Request<Incoming>,
    route: &Route,
    group: Result<Option<String>, String>,
    server: &Arc<Server>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let admitted = check_handshake(&req, route, &path, peer).and_then(|accept| {
        check_origin(&req, route, &path, peer)?;
        let group = group.map_err(Refusal::Group)?;
        check_open(server)?;
        let slot = take_slot(server, peer)?;
        Ok((accept, group, slot))
    });
    let (accept, group, slot) = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            // `max_connections` is counted where the slot was refused.
            if !matches!(refusal, Refusal::Full { .. }) {
                METRICS.handshake_refused(refusal.reason());
            }
            let reason = refusal.reason();
            let r = refusal.into_response(&path);
            let bytes = hyper::body::Body::size_hint(r.body()).exact().unwrap_or(0);
            crate::access::handshake(
                peer,
                &path,
                r.status().as_u16(),
                Some(reason),
                started.elapsed(),
                bytes,
            );
            return r;
        }
    };
    // Join before the 101 goes out: a backend that publishes as soon as the browser's `onopen`
    // fires must find the member there. Until the session runs, messages wait in its outbox. A
    // wsgate.v1 client joins nothing by itself: it subscribes by command.
    let v1 = (accept.protocol.as_deref() == Some(v1::PROTOCOL)).then(|| route.v1_settings(&path));
    let joined = Joined::new(server, group, slot, route, v1).await;
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
        match upgraded.downcast::<TokioIo<Rewind<TcpStream>>>() {
            Ok(parts) => {
                // Build the leftover in its own scope: `unread` and `read_buf` are views into
                // the request buffers (KiBs each), which must not live as long as the session.
                let (stream, leftover) = {
                    let read_buf = parts.read_buf;
                    let (stream, unread) = parts.io.into_inner().into_parts();
                    let mut leftover =
                        bytes::BytesMut::with_capacity(unread.len() + read_buf.len());
                    leftover.extend_from_slice(&unread);
                    leftover.extend_from_slice(&read_buf);
                    (stream, leftover.freeze())
                };
                joined.start(stream, leftover, ctx);
            }
            // Not plain TCP underneath: the upgraded stream replays what it buffered itself.
            Err(upgraded) => joined.start(TokioIo::new(upgraded), Bytes::new(), ctx),
        }
    });
    METRICS.handshakes_accepted.inc();
    crate::access::handshake(peer, &path, 101, None, started.elapsed(), 0);
    upgrade_response(&accept)
}

/// Method, version, upgrade headers, key and subprotocol (RFC 6455 §4.2.1).
fn check_handshake(
    req: &Request<Incoming>,
    route: &Route,
    path: &str,
    peer: SocketAddr,
) -> Result<Accept, Refusal> {
    handshake::check(
        req.method(),
        req.version(),
        req.headers(),
        &route.subprotocols,
    )
    .map_err(|e| {
        tracing::debug!(%peer, %path, error = %e, "handshake refused");
        Refusal::Handshake(e)
    })
}

/// Another site's page may not use a visitor's cookies to join (RFC 6455 §10.2).
fn check_origin(
    req: &Request<Incoming>,
    route: &Route,
    path: &str,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    let origin = req.headers().get(header::ORIGIN);
    if route.allows_origin(origin.map(HeaderValue::as_bytes)) {
        return Ok(());
    }
    let origin = String::from_utf8_lossy(origin.map_or(&[][..], HeaderValue::as_bytes));
    tracing::info!(%peer, %path, %origin, "handshake refused: origin not allowed");
    Err(Refusal::Origin(origin.into_owned()))
}

/// No new connection once shutdown began.
fn check_open(server: &Server) -> Result<(), Refusal> {
    if server.shutdown.is_begun() {
        return Err(Refusal::ShuttingDown);
    }
    Ok(())
}

/// One of `server.max_connections` places.
fn take_slot(server: &Server, peer: SocketAddr) -> Result<Slot, Refusal> {
    server.sessions.slots.take().map_err(|full| {
        METRICS.connections_refused.inc();
        tracing::warn!(%peer, max = full.max, "connection refused: server.max_connections reached");
        Refusal::Full { max: full.max }
    })
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
    server: Arc<Server>,
    outbox: Arc<Outbox>,
    group: Option<Arc<str>>,
    slot: Option<Slot>,
    v1: Option<v1::Settings>,
}

impl Joined {
    async fn new(
        server: &Arc<Server>,
        group: Option<String>,
        slot: Slot,
        route: &Route,
        v1: Option<v1::Settings>,
    ) -> Self {
        let id = server.next_id();
        let limit = server.config.websocket.send_queue_bytes;
        let outbox = Arc::new(Outbox::new(id, limit, server.heartbeat.now_ms()));
        server.heartbeat.register(&outbox);
        let member: Arc<dyn crate::hub::Member> = outbox.clone();
        server.hub.register(&member);
        if server.shutdown.is_begun() {
            // Shutdown walked the registry before we were in it.
            outbox.request_close(CloseReason::Shutdown);
        }
        let group: Option<Arc<str>> = group.filter(|_| v1.is_none()).map(Arc::from);
        if let Some(g) = &group {
            let how = Join {
                codec: &RAW,
                presence: route.presence.then(Presence::default),
                events: route.join_leave,
            };
            match route.replay() {
                HistoryQuery::Live => {
                    server.hub.join(g, outbox.clone(), how);
                }
                q => {
                    let attached = server
                        .hub
                        .attach(g, outbox.clone(), how.clone(), q, None)
                        .await;
                    if let Err(e) = attached {
                        tracing::warn!(group = %g, error = %e, "no replay for a joining client");
                        server.hub.join(g, outbox.clone(), how);
                    }
                }
            }
        }
        Joined {
            server: server.clone(),
            outbox,
            group,
            slot: Some(slot),
            v1,
        }
    }

    /// Starts the session task for the upgraded connection.
    fn start<S: Transport>(mut self, stream: S, leftover: Bytes, ctx: Arc<RouteCtx>) {
        if let Some(slot) = self.slot.take() {
            slot.keep();
        }
        let session = Session::new(
            stream,
            leftover,
            self.outbox.clone(),
            ctx,
            self.group.take(),
            self.server.sessions.clone(),
            self.v1.take(),
        );
        tokio::spawn(session);
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        // Not started: leave the group here (the slot goes back with `self.slot`).
        if self.slot.is_some() {
            if let Some(g) = &self.group {
                self.server.hub.leave(g, self.outbox.id);
            }
            self.server.hub.unregister(self.outbox.id);
        }
    }
}
