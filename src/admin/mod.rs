//! The operator's listener: a JSON admin API, the live console page, `/healthz`, `/readyz` and
//! `/metrics`, on its own address (`[admin] listen`, loopback unless `api_key` is set).
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when [`Server::readiness`] says so, else 503 with the reason.
//! - `GET /api/groups`: every group with members on this node and their counts.
//! - `GET /api/groups/{group}`: its members here (id, protocol) and its presence.
//! - `GET /api/connections/{id}`: one connection's groups, queue and liveness.
//! - `DELETE /api/connections/{id}?code=&reason=`: closes it (the publish API's disconnect).
//! - `POST /api/publish`: `{"group": "...", "data": "..."}`, a text message (the console's form).
//! - `GET /api/health`: the broker and every upstream server.
//! - `GET /api/stats`: counters the console turns into rates.
//! - `GET /`: the console (`web::console_page`).
//!
//! Errors answer a status and `{"error": "sentence"}`. This module only reads the server's
//! state and calls the hub's and API's own operations; it adds nothing to any hot path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::broker::{Kind, Publication};
use crate::config::Secret;
use crate::metrics::METRICS;
use crate::reply::{Body, json as json_response, text};
use crate::server::Server;
use crate::uri::percent_decode;

/// Largest request body the admin API reads (a console publish).
const MAX_BODY: usize = 64 * 1024;

/// What the admin listener serves from.
#[derive(Debug)]
pub struct Admin {
    server: Arc<Server>,
    key: Option<Secret>,
    started: Instant,
}

/// A failure: a status and a sentence.
struct Failure(StatusCode, String);

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure(status, message.into())
    }

    fn into_response(self) -> Response<Body> {
        let mut r = json_response(self.0, &json!({ "error": self.1 }));
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl Admin {
    pub fn new(server: Arc<Server>) -> Arc<Self> {
        Arc::new(Admin {
            key: server.config.admin.api_key.clone(),
            server,
            started: Instant::now(),
        })
    }

    /// Serves the admin listener until the task is aborted: through the drain too, so probes
    /// see `/readyz` turn 503 while connections close.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, _peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    /// Answers one admin request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match self.route(req).await {
            Ok(r) => r,
            Err(f) => f.into_response(),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        // Probes and the page itself (which holds no data) need no key.
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => {
                return Ok(json_response(StatusCode::OK, &json!({ "status": "ok" })));
            }
            (&Method::GET, "/readyz") => return Ok(self.readyz()),
            (&Method::GET | &Method::HEAD, "/") => return Ok(crate::web::console_page(&req)),
            // Browsers ask for it with the page; a 204 keeps their consoles free of 404s.
            (&Method::GET, "/favicon.ico") => return Ok(text(StatusCode::NO_CONTENT, "")),
            _ => {}
        }
        self.authorise(&req)?;
        let query = req.uri().query().map(str::to_string);
        match (&method, path.as_str()) {
            (&Method::GET, "/metrics") => {
                let mut r = text(StatusCode::OK, METRICS.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(r)
            }
            (&Method::GET, "/api/groups") => Ok(self.groups()),
            (&Method::GET, "/api/health") => Ok(self.health()),
            (&Method::GET, "/api/stats") => Ok(self.stats()),
            (&Method::POST, "/api/publish") => self.publish(req).await,
            (_, p) if p.starts_with("/api/groups/") => {
                let group = percent_decode(&p["/api/groups/".len()..]);
                if method != Method::GET {
                    return Err(Failure::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        format!("{p} is read with GET"),
                    ));
                }
                self.group(&group).await
            }
            (_, p) if p.starts_with("/api/connections/") => {
                let id = percent_decode(&p["/api/connections/".len()..]);
                match method {
                    Method::GET => self.connection(&id),
                    // The publish API's own disconnect: same id parsing, codes and answers.
                    Method::DELETE => Ok(self.server.api.disconnect_request(&id, query.as_deref())),
                    _ => Err(Failure::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        format!("{p} takes GET (details) or DELETE (disconnect)"),
                    )),
                }
            }
            _ => Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no admin endpoint {method} {path}; there are GET /healthz, /readyz, /metrics, /api/groups, \
/api/groups/{{group}}, /api/connections/{{id}}, /api/health, /api/stats, DELETE /api/connections/{{id}} and POST /api/publish"
                ),
            )),
        }
    }

    fn authorise(&self, req: &Request<Incoming>) -> Result<(), Failure> {
        let Some(key) = &self.key else { return Ok(()) };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), key.expose().as_bytes()) => Ok(()),
            Some(_) => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "the Bearer key does not match admin.api_key",
            )),
            None => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "the admin API needs Authorization: Bearer <admin.api_key>",
            )),
        }
    }

    fn readyz(&self) -> Response<Body> {
        match self.server.readiness() {
            Ok(()) => json_response(StatusCode::OK, &json!({ "ready": true })),
            Err(why) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "ready": false, "reason": why }),
            ),
        }
    }

    fn groups(&self) -> Response<Body> {
        let groups: Vec<Value> = self
            .server
            .hub
            .groups()
            .into_iter()
            .map(|(name, n)| json!({ "group": &*name, "members": n }))
            .collect();
        json_response(
            StatusCode::OK,
            &json!({ "count": groups.len(), "groups": groups }),
        )
    }

    async fn group(&self, group: &str) -> Result<Response<Body>, Failure> {
        let node = self.server.hub.node();
        let members = self.server.hub.group_members(group).ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("group {group:?} has no members on this node (GET /api/groups lists those that do)"),
            )
        })?;
        let connections: Vec<Value> = members
            .iter()
            .map(|m| json!({ "id": conn_id(node, m.id), "protocol": m.protocol }))
            .collect();
        // Presence is the broker's, so it covers every node; empty when the route keeps none.
        let presence: Vec<Value> = match self.server.hub.broker().presence(group).await {
            Ok(list) => list
                .iter()
                .map(|e| serde_json::from_str(&crate::hub::presence_json(e)).unwrap_or(Value::Null))
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "group": group,
                "members": connections.len(),
                "connections": connections,
                "presence": presence,
            }),
        ))
    }

    fn connection(&self, id: &str) -> Result<Response<Body>, Failure> {
        let hub = &self.server.hub;
        let conn = parse_conn_id(id, hub.node()).ok_or_else(|| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not a connection id of this node; ids look like \"{:x}.42\" (GET /api/groups/{{group}} lists them)", hub.node()),
            )
        })?;
        let stats = hub.connection_stats(conn).ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("no connection {id} on this node; it may have closed already"),
            )
        })?;
        let now = self.server.heartbeat.now_ms();
        let groups: Vec<String> = hub.groups_of(conn).iter().map(|g| g.to_string()).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "groups": groups,
                "queued_bytes": stats.queued_bytes,
                "send_queue_bytes": stats.limit,
                "idle_ms": now.saturating_sub(stats.last_heard_ms),
                "closing": stats.closing,
            }),
        ))
    }

    fn health(&self) -> Response<Body> {
        let upstreams: Vec<Value> = self
            .server
            .proxy
            .upstreams
            .iter()
            .map(|u| {
                let servers: Vec<Value> = u
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| json!({ "addr": s.addr, "up": u.is_up(i), "backup": s.backup }))
                    .collect();
                let up = (0..u.servers.len()).filter(|&i| u.is_up(i)).count();
                json!({ "name": u.name, "up": up, "servers": servers })
            })
            .collect();
        let ready = self.server.readiness();
        json_response(
            StatusCode::OK,
            &json!({
                "ready": ready.is_ok(),
                "reason": ready.err(),
                "broker": {
                    "kind": format!("{:?}", self.server.config.broker.kind).to_lowercase(),
                    "up": METRICS.broker_up.get() == 1,
                    "reconnects": METRICS.broker_reconnects.get(),
                },
                "upstreams": upstreams,
            }),
        )
    }

    fn stats(&self) -> Response<Body> {
        let m = &*METRICS;
        json_response(
            StatusCode::OK,
            &json!({
                "uptime_s": self.started.elapsed().as_secs_f64(),
                "connections": self.server.open_connections(),
                "tunnels": self.server.proxy.open_tunnels(),
                "groups": self.server.hub.group_count(),
                "connections_total": m.connections_total.get(),
                "messages_received": m.messages_received.get(),
                "publishes": m.publishes.get(),
                "deliveries": m.deliveries.get(),
                "received_bytes": m.received_bytes.get(),
                "sent_bytes": m.sent_bytes.get(),
                "slow_consumers": m.slow_consumers.get(),
                "proxy_requests": m.proxy_requests.get(),
            }),
        )
    }

    async fn publish(&self, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
        let body = Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| {
                Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {MAX_BODY} bytes or was cut off; the console publishes small text messages (use the publish API for more)"),
                )
            })?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not JSON ({e}); send {{\"group\": \"room:1\", \"data\": \"text\"}}"
                ),
            )
        })?;
        let group = v.get("group").and_then(Value::as_str).unwrap_or_default();
        crate::hub::group::check_name(group, self.server.config.websocket.max_group_bytes)
            .map_err(|m| Failure::new(StatusCode::BAD_REQUEST, format!("\"group\": {m}")))?;
        let data = match v.get("data") {
            Some(Value::String(s)) => Bytes::from(s.clone()),
            Some(other) if !other.is_null() => Bytes::from(other.to_string()),
            _ => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "\"data\" is missing; send {\"group\": \"room:1\", \"data\": \"text\"}",
                ));
            }
        };
        let receipt = self
            .server
            .hub
            .publish(Publication::new(group, data, Kind::Text))
            .await
            .map_err(|e| Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        Ok(json_response(
            StatusCode::OK,
            &json!({ "group": group, "local_recipients": receipt.local_recipients }),
        ))
    }
}

/// `node.conn` as presence and the publish API write it.
fn conn_id(node: u64, conn: u64) -> String {
    format!("{node:x}.{conn}")
}

fn parse_conn_id(id: &str, node: u64) -> Option<u64> {
    let (n, c) = id.split_once('.')?;
    (u64::from_str_radix(n, 16).ok()? == node)
        .then(|| c.parse().ok())
        .flatten()
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_name_this_node() {
        assert_eq!(conn_id(0x1f, 42), "1f.42");
        assert_eq!(parse_conn_id("1f.42", 0x1f), Some(42));
        assert_eq!(parse_conn_id("1e.42", 0x1f), None);
        assert_eq!(parse_conn_id("42", 0x1f), None);
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
