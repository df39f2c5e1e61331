//! Admission of a WebSocket on a hub route, in one fixed order: the handshake, the origin, the
//! group from the path, then the route's `on_connect` backend hook (which may refuse with a
//! Close right after the 101, or choose groups, user and info), then a connection slot, then
//! the join. Each step refuses with a status and a sentence; only a
//! connection that passed every step gets its 101 and a session.
//!
//! HTTP/1.1's GET + Upgrade and HTTP/2's extended CONNECT (RFC 8441) take the same steps: they
//! differ only in the handshake check ([`handshake::check`] or
//! [`handshake::check_extended_connect`]) and the answer (101 with `Sec-WebSocket-Accept`, or
//! 200); the session then runs on the upgraded connection or the upgraded h2 stream alike.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::rate::IpSlot;
use super::route::Route;
use super::state::Server;
use crate::auth::{Grant, JwtError};
use crate::broker::policy::GroupPattern;
use crate::config::{ConnectFailure, OnMessage};
use crate::hooks::Conn;
use crate::hooks::answer::Verdict;
use crate::hooks::connect::Knock;
use crate::hooks::relay::Forwarder;
use crate::hub::{Join, Presence};
use crate::lifecycle::Slot;
use crate::metrics::METRICS;
use crate::reply::{Body, full, text};
use crate::transport::{Rewind, Transport};
use crate::ws::close::CloseReason;
use crate::ws::codec::{Compression, PLAIN};
use crate::ws::deflate;
use crate::ws::frame;
use crate::ws::handshake::{self, Accept, HandshakeError};
use crate::ws::outbox::Outbox;
use crate::ws::session::{RouteCtx, Session};
use crate::ws::v1;
use crate::ws::{Extras, Relay};

/// Why a WebSocket was not admitted; each reason is one response.
#[derive(Debug)]
enum Refusal {
    Handshake(HandshakeError),
    Origin(String),
    Group(String),
    Unauthorized(JwtError),
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
            Refusal::Unauthorized(_) => "token",
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
                    "403 Forbidden: pages from {origin:?} may not open WebSockets on {path}: only origins in \
websocket.allowed_origins may (by default the same host as this request and localhost). If they should, add \
{origin:?} to websocket.allowed_origins (or allowed_origins of this [[route]]); \"*\" allows every origin.\n"
                ),
            ),
            Refusal::Unauthorized(e) => {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    format!("401 Unauthorized: {e} (path {path}).\n"),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wsgate\""),
                );
                r
            }
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

/// Answers a request on a WebSocket route: an explained refusal, or a 101 (HTTP/2: a 200) and
/// a session.
pub async fn websocket(
    mut req: Request<Incoming>,
    route: &Route,
    group: Result<Option<String>, String>,
    server: &Arc<Server>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let via = http_version(&req);
    let admitted = check_handshake(&req, route, &path, peer).and_then(|accept| {
        check_origin(&req, route, &path, peer)?;
        let group = group.map_err(Refusal::Group)?;
        let grant = check_token(&req, route, group.as_deref(), server, peer)?;
        check_open(server)?;
        Ok((accept, group, grant))
    });
    let (mut accept, group, grant) = match admitted {
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
                via,
                r.status().as_u16(),
                Some(reason),
                started.elapsed(),
                bytes,
            );
            return r;
        }
    };
    let id = server.next_id();
    let plan = match ask_backend(&req, route, &path, group, server, peer, id, &accept).await {
        // The backend may name the user; otherwise the token's `sub` is who presence shows.
        Ok(mut plan) => {
            if plan.user.is_none() {
                plan.user = grant.as_ref().map(|g| g.user.to_string());
            }
            plan
        }
        Err((code, reason)) => {
            let close_timeout = server.config.websocket.close_timeout.get();
            return close_at_once(&mut req, &accept, code, reason, close_timeout);
        }
    };
    let slot = match take_slot(server, peer) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(&path),
    };
    // Join before the 101 goes out: a backend that publishes as soon as the browser's `onopen`
    // fires must find the member there. Until the session runs, messages wait in its outbox. A
    // wsgate.v1 client joins nothing by itself: it subscribes by command.
    let compression = negotiate_compression(&req, route, &mut accept);
    let codecs = compression.map_or(PLAIN, |c| c.codecs);
    let v1 = (accept.protocol.as_deref() == Some(v1::PROTOCOL)).then(|| {
        let mut s = route.v1_settings(&path, codecs);
        s.user = plan.user.as_deref().map(Arc::from);
        s.grant = grant.clone();
        if let Some(groups) = &plan.chosen {
            // The backend chose the groups: they are the ones this client may use.
            s.allowed = groups
                .iter()
                .map(|g| GroupPattern::from_template("{g}", &[("g", g.as_str())]))
                .collect();
            s.allowed_text = groups.clone();
        }
        s
    });
    let speaks = Speaks { v1, compression };
    let joined = Joined::new(server, id, plan, slot, route, &path, speaks).await;
    if let Some(g) = grant {
        tokio::spawn(expire(Arc::downgrade(&joined.outbox), g));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = route.ctx.clone();
    // The peer's place under server.max_connections_per_ip stays taken while the session runs.
    let ip_slot = req.extensions().get::<Arc<IpSlot>>().cloned();
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
                joined.start(stream, leftover, ctx, ip_slot);
            }
            // Not plain TCP underneath: the upgraded stream replays what it buffered itself.
            Err(upgraded) => joined.start(TokioIo::new(upgraded), Bytes::new(), ctx, ip_slot),
        }
    });
    METRICS.handshakes_accepted.inc();
    METRICS.websocket_opened("hub", via);
    let status = accept.status().as_u16();
    crate::access::handshake(peer, &path, via, status, None, started.elapsed(), 0);
    upgrade_response(&accept)
}

/// What a connection joins and is, as the route and its `on_connect` hook decided.
#[derive(Debug, Default)]
struct Plan {
    /// Groups a plain client joins; the first is its own (where a broadcast route publishes).
    groups: Vec<String>,
    /// The groups the backend chose, when it did.
    chosen: Option<Vec<String>>,
    user: Option<String>,
    info: Option<String>,
}

/// Asks the route's `on_connect` hook, if it has one, what to do with the client: a plan, or
/// the close code and reason it gets right after the 101 (a page sees a refused handshake only
/// as "failed", but it sees a Close's code and reason).
#[allow(clippy::too_many_arguments)]
async fn ask_backend(
    req: &Request<Incoming>,
    route: &Route,
    path: &str,
    group: Option<String>,
    server: &Server,
    peer: SocketAddr,
    id: u64,
    accept: &Accept,
) -> Result<Plan, (u16, String)> {
    let default = Plan {
        groups: group.iter().cloned().collect(),
        ..Plan::default()
    };
    let Some(url) = route.hooks.as_ref().and_then(|h| h.on_connect.as_ref()) else {
        return Ok(default);
    };
    let params = route.params(path).unwrap_or_default();
    let conn = conn_id(server, id);
    let knock = Knock {
        conn: &conn,
        route: &route.pattern,
        path,
        query: req.uri().query(),
        params: &params,
        group: group.as_deref(),
        headers: req.headers(),
        peer,
        protocol: accept.protocol.as_deref(),
    };
    match server.hooks.on_connect(url, &knock).await {
        Ok(Verdict::Accept(a)) => Ok(Plan {
            groups: a.groups.clone().unwrap_or(default.groups),
            chosen: a.groups,
            user: a.user,
            info: a.info,
        }),
        Ok(Verdict::Reject { code, reason }) => {
            tracing::info!(%peer, %path, code, %reason, "the backend refused a connection");
            Err((code, reason))
        }
        Err(e) => match server.hooks.settings().on_connect_failure {
            ConnectFailure::Close => {
                tracing::warn!(%peer, %path, error = %e, "on_connect failed; closing the client with 1011");
                Err((1011, e.reason().to_string()))
            }
            ConnectFailure::Accept => {
                tracing::warn!(%peer, %path, error = %e, "on_connect failed; letting the client in (hooks.on_connect_failure = \"accept\")");
                Ok(default)
            }
        },
    }
}

fn conn_id(server: &Server, id: u64) -> String {
    format!("{:x}.{id}", server.hub.node())
}

/// Completes the upgrade only to close at once with `code` and `reason`, then waits (at most
/// `close_timeout`) for the client's answer so our Close is not lost to a reset.
fn close_at_once(
    req: &mut Request<Incoming>,
    accept: &Accept,
    code: u16,
    reason: String,
    close_timeout: std::time::Duration,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let _ = tokio::time::timeout(close_timeout, async {
            io.write_all(&frame::encode_close(code, &reason)).await?;
            io.flush().await?;
            let mut buf = [0u8; 256];
            let _ = io.read(&mut buf).await?;
            io.shutdown().await
        })
        .await;
    });
    upgrade_response(accept)
}

/// The HTTP version a handshake came over, as metrics and access lines name it.
fn http_version<B>(req: &Request<B>) -> &'static str {
    match req.version() {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

/// Method, version, upgrade headers, key and subprotocol (RFC 6455 §4.2.1); over HTTP/2 the
/// extended CONNECT, `:protocol`, version and subprotocol (RFC 8441 §5).
fn check_handshake(
    req: &Request<Incoming>,
    route: &Route,
    path: &str,
    peer: SocketAddr,
) -> Result<Accept, Refusal> {
    let checked = if req.version() == http::Version::HTTP_2 {
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        handshake::check_extended_connect(
            req.method(),
            protocol.map(hyper::ext::Protocol::as_str),
            req.headers(),
            &route.subprotocols,
        )
    } else {
        handshake::check(
            req.method(),
            req.version(),
            req.headers(),
            &route.subprotocols,
        )
    };
    checked.map_err(|e| {
        tracing::debug!(%peer, %path, error = %e, "handshake refused");
        Refusal::Handshake(e)
    })
}

/// permessage-deflate (RFC 7692) when the route has it on and the client offered something
/// acceptable; what the client is sent then. Never a refusal: a bad offer is declined and the
/// connection goes on uncompressed.
fn negotiate_compression(
    req: &Request<Incoming>,
    route: &Route,
    accept: &mut Accept,
) -> Option<&'static Compression> {
    if !route.compresses() {
        return None;
    }
    let agreed = deflate::negotiate(req.headers())?;
    accept.extensions = Some(agreed.response());
    route.compression_for(&agreed)
}

/// Another site's page may not use a visitor's cookies to join (RFC 6455 §10.2).
fn check_origin(
    req: &Request<Incoming>,
    route: &Route,
    path: &str,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    let origin = req.headers().get(header::ORIGIN);
    let host = req.headers().get(header::HOST).map(HeaderValue::as_bytes);
    if route.allows_origin(origin.map(HeaderValue::as_bytes), host) {
        return Ok(());
    }
    let origin = String::from_utf8_lossy(origin.map_or(&[][..], HeaderValue::as_bytes));
    tracing::info!(%peer, %path, %origin, "handshake refused: origin not allowed");
    Err(Refusal::Origin(origin.into_owned()))
}

/// With `[jwt]` set: a valid token that allows the route's group, unless the route is
/// anonymous and no token was sent.
fn check_token(
    req: &Request<Incoming>,
    route: &Route,
    group: Option<&str>,
    server: &Server,
    peer: SocketAddr,
) -> Result<Option<Arc<Grant>>, Refusal> {
    let Some(jwt) = &server.jwt else {
        return Ok(None);
    };
    let refuse = |e: JwtError| {
        tracing::info!(%peer, path = %req.uri().path(), error = %e, "handshake refused: token");
        Refusal::Unauthorized(e)
    };
    let Some(token) = jwt.token_from(req.headers(), req.uri().query()) else {
        return if route.anonymous {
            Ok(None)
        } else {
            Err(refuse(jwt.missing()))
        };
    };
    let claims = jwt.verify(&token).map_err(refuse)?;
    if let Some(g) = group {
        claims.check_group(g).map_err(refuse)?;
    }
    Ok(Some(Arc::new(Grant::new(jwt.clone(), claims))))
}

/// Closes the connection with 4001 "token expired" when its token runs out, unless a
/// `refresh` moved the expiry on meanwhile. Ends early once the connection is gone.
async fn expire(outbox: std::sync::Weak<Outbox>, grant: Arc<Grant>) {
    loop {
        let now = crate::auth::jwt::now_secs();
        let exp = grant.expires();
        if exp > now {
            tokio::time::sleep(std::time::Duration::from_secs(exp - now)).await;
            continue;
        }
        if let Some(o) = outbox.upgrade() {
            o.request_close(CloseReason::Disconnected {
                code: 4001,
                reason: Arc::from("token expired"),
            });
        }
        return;
    }
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
    *r.status_mut() = accept.status();
    *r.headers_mut() = accept.response_headers();
    r
}

/// What the handshake settled about the client's language: the `wsgate.v1` protocol or raw
/// frames, and the compression both sides agreed on.
struct Speaks {
    v1: Option<v1::Settings>,
    compression: Option<&'static Compression>,
}

/// A member that joined its group at handshake time, before its session exists. Dropping it
/// (the upgrade failed) leaves the group and frees the connection slot; `start` hands both over
/// to the session, whose own drop does the same at the end.
struct Joined {
    server: Arc<Server>,
    outbox: Arc<Outbox>,
    group: Option<Arc<str>>,
    /// Further groups the backend chose, and the relay to it.
    extras: Option<Box<Extras>>,
    slot: Option<Slot>,
    v1: Option<v1::Settings>,
    compression: Option<&'static Compression>,
}

impl Joined {
    async fn new(
        server: &Arc<Server>,
        id: u64,
        plan: Plan,
        slot: Slot,
        route: &Route,
        path: &str,
        speaks: Speaks,
    ) -> Self {
        let Speaks { v1, compression } = speaks;
        let limit = server.config.websocket.send_queue_bytes;
        let outbox =
            Arc::new(Outbox::new(id, limit, server.heartbeat.now_ms()).speaking_v1(v1.is_some()));
        server.heartbeat.register(&outbox);
        let member: Arc<dyn crate::hub::Member> = outbox.clone();
        server.hub.register(&member);
        if server.shutdown.is_begun() {
            // Shutdown walked the registry before we were in it.
            outbox.request_close(CloseReason::Shutdown);
        }
        let groups: Vec<Arc<str>> = if v1.is_some() {
            Vec::new()
        } else {
            plan.groups.iter().map(|g| Arc::from(g.as_str())).collect()
        };
        let presence = Presence {
            user: plan.user.as_deref().map(Arc::from),
            info: plan.info.as_deref().map(Arc::from),
        };
        for g in &groups {
            let how = Join {
                codec: compression.map_or(PLAIN, |c| c.codecs).raw,
                presence: route.presence.then(|| presence.clone()),
                events: route.join_leave,
            };
            // Attached even without replay: a broker for many nodes answers once the group's
            // subscription is in place, so a publish right after the 101 reaches this member.
            let attached = server
                .hub
                .attach(g, outbox.clone(), how.clone(), route.replay(), None)
                .await;
            if let Err(e) = attached {
                tracing::warn!(group = %g, error = %e, "no replay for a joining client");
                server.hub.join(g, outbox.clone(), how);
            }
        }
        let extras = relay(server, route, path, id, &plan, &member);
        let mut groups = groups.into_iter();
        let group = groups.next();
        let extras = match (extras, groups.len()) {
            (None, 0) => None,
            (relay, _) => Some(Box::new(Extras::new(groups.collect(), relay))),
        };
        Joined {
            server: server.clone(),
            outbox,
            group,
            extras,
            slot: Some(slot),
            v1,
            compression,
        }
    }

    /// Starts the session task for the upgraded connection.
    fn start<S: Transport>(
        mut self,
        stream: S,
        leftover: Bytes,
        ctx: Arc<RouteCtx>,
        ip_slot: Option<Arc<IpSlot>>,
    ) {
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
        )
        .with_extras(self.extras.take())
        .compressing(self.compression)
        .keeping(
            ip_slot
                .filter(|s| s.counts())
                .map(|s| s as Arc<dyn std::any::Any + Send + Sync>),
        );
        // The session itself is the task (no wrapping future): its size is what an idle
        // connection's task costs.
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
            for g in self.extras.iter().flat_map(|x| &x.groups) {
                self.server.hub.leave(g, self.outbox.id);
            }
            // The backend heard of the connect: it hears of the end too.
            if let Some(relay) = self.extras.as_ref().and_then(|x| x.relay.as_ref()) {
                relay.closed(1006);
            }
            self.server.hub.unregister(self.outbox.id);
            self.server.heartbeat.forget(&self.outbox);
        }
    }
}

/// The relay of a connection whose route forwards its messages or wants to hear of its close.
fn relay(
    server: &Arc<Server>,
    route: &Route,
    path: &str,
    id: u64,
    plan: &Plan,
    member: &Arc<dyn crate::hub::Member>,
) -> Option<Arc<dyn Relay>> {
    let hooks = route.hooks.as_ref()?;
    let on_message = hooks
        .on_message
        .clone()
        .filter(|_| route.ctx.on_message == OnMessage::Forward);
    if on_message.is_none() && hooks.on_disconnect.is_none() {
        return None;
    }
    let conn = Conn {
        id: conn_id(server, id),
        route: route.pattern.clone(),
        path: path.to_string(),
        groups: plan.groups.clone(),
        user: plan.user.clone(),
        info: plan.info.clone(),
    };
    Some(Arc::new(Forwarder::new(
        server.hooks.clone(),
        conn,
        member.clone(),
        on_message,
        hooks.on_disconnect.clone(),
    )))
}
