//! The HTTP publish API: any backend, in any language, pushes messages to groups.
//!
//! - `POST /api/groups/{group}/messages`: the raw body is the message (text frame for `text/*`
//!   and JSON, binary otherwise).
//! - `POST /api/publish`: JSON `{"group": "...", "data": ...}` or `{"groups": [...], ...}`, with
//!   `"b64data"` instead of `"data"` for binary.
//!
//! - `POST /api/connections/{id}/messages`: the body is a message for one connection.
//!
//! A `multipart/form-data` body to a group publishes its text fields, one message each; a file
//! part is refused with 415 ([`multipart`]). Publishes answer JSON with the number of local
//! recipients. Errors answer JSON `{"error": "..."}`
//! whose sentence says what was wrong and how to fix it. This module parses and authorises, then
//! hands a [`Publication`] to the hub; it knows nothing about sockets or frames.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::auth::{Access, Keys};
use crate::broker::{HistoryQuery, Kind, Position, Publication, Recovery};
use crate::config::Config;
use crate::hub::group::check_name;
use crate::hub::{Hub, presence_json};
use crate::metrics::METRICS;
use crate::reply::{Body, json as json_response};
use crate::uri::percent_decode;

mod multipart;

/// The publish API: what it needs from the configuration, and the hub it publishes to.
#[derive(Debug)]
pub struct Api {
    hub: Arc<Hub>,
    cfg: crate::config::Api,
    keys: Keys,
    max_group_bytes: usize,
}

/// An API failure: a status and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// For a 405: the method the endpoint takes.
    allow: &'static str,
}

/// The endpoints.
#[derive(Debug)]
enum Endpoint {
    /// `POST /api/publish`
    Publish,
    /// `POST /api/groups/{group}/messages`
    Messages(String),
    /// `GET /api/groups/{group}/presence`
    Presence(String),
    /// `GET /api/groups/{group}/history`
    History(String),
    /// `DELETE /api/connections/{id}`
    Disconnect(String),
    /// `POST /api/connections/{id}/messages`
    Send(String),
}

impl Endpoint {
    fn parse(path: &str) -> Option<Endpoint> {
        if path == "/api/publish" {
            return Some(Endpoint::Publish);
        }
        if let Some(id) = path.strip_prefix("/api/connections/") {
            if let Some(id) = id.strip_suffix("/messages") {
                return (!id.is_empty() && !id.contains('/'))
                    .then(|| Endpoint::Send(percent_decode(id)));
            }
            return (!id.is_empty() && !id.contains('/'))
                .then(|| Endpoint::Disconnect(percent_decode(id)));
        }
        let (group, what) = path.strip_prefix("/api/groups/")?.split_once('/')?;
        let group = percent_decode(group);
        match what {
            "messages" => Some(Endpoint::Messages(group)),
            "presence" => Some(Endpoint::Presence(group)),
            "history" => Some(Endpoint::History(group)),
            _ => None,
        }
    }

    fn method(&self) -> Method {
        match self {
            Endpoint::Publish | Endpoint::Messages(_) | Endpoint::Send(_) => Method::POST,
            Endpoint::Presence(_) | Endpoint::History(_) => Method::GET,
            Endpoint::Disconnect(_) => Method::DELETE,
        }
    }
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            allow: "POST",
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn into_response(self) -> Response<Body> {
        METRICS.api_errors.inc();
        let mut r = json_response(self.status, &json!({ "error": self.message }));
        match self.status {
            StatusCode::METHOD_NOT_ALLOWED => {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(self.allow));
            }
            StatusCode::UNAUTHORIZED => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        r
    }
}

impl Api {
    pub fn new(hub: Arc<Hub>, cfg: &Config) -> Self {
        Api {
            hub,
            keys: Keys::new(&cfg.api),
            cfg: cfg.api.clone(),
            max_group_bytes: cfg.websocket.max_group_bytes,
        }
    }

    /// Handles any request under `/api` from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        match self.route(req, peer).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    /// Publishes to one group; the number of local members that took it.
    async fn publish(&self, group: &str, data: Bytes, kind: Kind) -> Result<usize, ApiError> {
        let r = self
            .hub
            .publish(Publication::new(group, data, kind))
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        Ok(r.local_recipients)
    }

    /// The disconnect endpoint as a response (the admin API serves the same operation).
    pub fn disconnect_request(&self, id: &str, query: Option<&str>) -> Response<Body> {
        match self.disconnect(id, query) {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    /// `DELETE /api/connections/{id}[?code=4000&reason=...]`: closes one connection of this
    /// node (ids as presence shows them) with that code (default 1000) and reason; its queued
    /// messages go out first.
    fn disconnect(&self, id: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        let (node, conn) = connection_id(id)?;
        let mut code = 1000u16;
        let mut reason = String::from("closed by the server");
        for (k, v) in query
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
        {
            let v = percent_decode(&v.replace('+', " "));
            match k {
                "code" => {
                    code = v
                        .parse()
                        .ok()
                        .filter(|c| valid_close_code(*c))
                        .ok_or_else(|| {
                            ApiError::bad(format!(
                                "code={v} cannot close a connection; use 1000, 1001, 1008, 1011, 1012, 1013 or an application code 3000-4999"
                            ))
                        })?;
                }
                "reason" => {
                    if v.len() > 123 {
                        return Err(ApiError::bad(
                            "reason is longer than the 123 bytes a Close frame carries",
                        ));
                    }
                    reason = v;
                }
                _ => {
                    return Err(ApiError::bad(format!(
                        "unknown query parameter {k:?}; disconnect takes code and reason"
                    )));
                }
            }
        }
        if node != self.hub.node() || !self.hub.disconnect(conn, code, &reason) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no connection {id} on this node; it may have closed already"),
            ));
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({ "closed": id, "code": code, "reason": reason }),
        ))
    }

    /// `POST /api/connections/{id}/messages`: the body is a message for that connection alone
    /// (text for `text/*` and JSON, binary otherwise, as for groups).
    async fn send(&self, id: &str, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let (node, conn) = connection_id(id)?;
        let kind = content_kind(&req)?;
        let json = json_content(&req);
        let body = read_body(req, self.cfg.max_body_bytes).await?;
        let kind = match kind {
            Some(k) => k,
            None => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "a message to one connection is the body itself; send it as text/plain, application/json or application/octet-stream",
                ));
            }
        };
        let kind = checked_kind(kind, json, &body)?;
        let gone = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no connection {id} on this node; it may have closed already"),
            )
        };
        if node != self.hub.node() {
            return Err(gone());
        }
        match self.hub.send_to(conn, &body, kind) {
            None => Err(gone()),
            Some(false) => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "connection {id} is closing (or too slow to take more); the message was not sent"
                ),
            )),
            Some(true) => Ok(json_response(StatusCode::OK, &json!({ "sent": id }))),
        }
    }

    /// `GET /api/groups/{group}/presence`: who is in the group, on every node.
    async fn presence(&self, group: &str) -> Result<Response<Body>, ApiError> {
        check_name(group, self.max_group_bytes)
            .map_err(|m| ApiError::bad(format!("{m} (from the URL)")))?;
        let list = self
            .hub
            .broker()
            .presence(group)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let connections: Vec<Value> = list
            .iter()
            .map(|e| serde_json::from_str(&presence_json(e)).unwrap_or(Value::Null))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({ "group": group, "count": list.len(), "connections": connections }),
        ))
    }

    /// `GET /api/groups/{group}/history[?limit=N][&epoch=E&offset=O]`: the group's kept
    /// publications (those after the given position, with `recovered`), oldest first.
    async fn history(&self, group: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        check_name(group, self.max_group_bytes)
            .map_err(|m| ApiError::bad(format!("{m} (from the URL)")))?;
        let mut limit = 100usize;
        let (mut epoch, mut offset) = (None, None);
        for (k, v) in query
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
        {
            let v = percent_decode(v);
            let number = || {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad(format!("{k}={v} is not a non-negative integer")))
            };
            match k {
                "limit" => limit = number()?.clamp(1, 10_000) as usize,
                "offset" => offset = Some(number()?),
                "epoch" => epoch = Some(v),
                _ => {
                    return Err(ApiError::bad(format!(
                        "unknown query parameter {k:?}; history takes limit, epoch and offset"
                    )));
                }
            }
        }
        let q = match (epoch, offset) {
            (Some(epoch), Some(offset)) => HistoryQuery::Since {
                since: Position {
                    epoch: Arc::from(epoch),
                    offset,
                },
                limit,
            },
            (None, None) => HistoryQuery::Last {
                last: limit,
                within: std::time::Duration::MAX,
            },
            _ => {
                return Err(ApiError::bad(
                    "give epoch and offset together (the position to read after), or neither",
                ));
            }
        };
        let r = self
            .hub
            .broker()
            .history(group, q)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let publications: Vec<Value> = r
            .publications
            .iter()
            .map(|p| {
                let mut o = serde_json::Map::new();
                if let Some(pos) = &p.position {
                    o.insert("offset".into(), json!(pos.offset));
                }
                match p.kind {
                    Kind::Binary => {
                        o.insert(
                            "b64data".into(),
                            json!(base64::engine::general_purpose::STANDARD.encode(&p.data)),
                        );
                    }
                    Kind::Json => {
                        let v = serde_json::from_slice(&p.data).unwrap_or(Value::Null);
                        o.insert("data".into(), v);
                    }
                    _ => {
                        o.insert("data".into(), json!(String::from_utf8_lossy(&p.data)));
                    }
                }
                Value::Object(o)
            })
            .collect();
        let mut out = json!({ "group": group, "publications": publications });
        if let Some(top) = &r.top {
            out["epoch"] = json!(top.epoch.as_ref());
            out["offset"] = json!(top.offset);
        }
        match &r.recovery {
            Recovery::Recovered => out["recovered"] = json!(true),
            Recovery::Lost(why) => {
                out["recovered"] = json!(false);
                out["reason"] = json!(why);
            }
            Recovery::NotAsked => {}
        }
        Ok(json_response(StatusCode::OK, &out))
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_string();
        // One canonical form for a group in the URL: escapes that spell no text are refused.
        if let Some(raw) = path
            .strip_prefix("/api/groups/")
            .and_then(|r| r.split('/').next())
        {
            crate::uri::decode_name(raw)
                .map_err(|m| ApiError::bad(format!("{m} (from the URL)")))?;
        }
        let Some(endpoint) = Endpoint::parse(&path) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no API endpoint at {path}; use POST /api/groups/{{group}}/messages, POST /api/publish, GET /api/groups/{{group}}/presence or GET /api/groups/{{group}}/history"
                ),
            ));
        };
        let method = endpoint.method();
        if req.method() != method {
            let mut e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {method}, not {}", req.method()),
            );
            e.allow = match method {
                Method::GET => "GET",
                Method::DELETE => "DELETE",
                _ => "POST",
            };
            return Err(e);
        }
        let need = match endpoint {
            Endpoint::Publish | Endpoint::Messages(_) => Access::Publish,
            _ => Access::Admin,
        };
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        self.keys
            .check(authorization, caller(&req, peer), need)
            .map_err(|e| {
                let status = if e.is_forbidden() {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::UNAUTHORIZED
                };
                ApiError::new(status, e.to_string())
            })?;
        let target = match endpoint {
            Endpoint::Publish => None,
            Endpoint::Messages(g) => Some(g),
            Endpoint::Send(id) => return self.send(&id, req).await,
            Endpoint::Presence(g) => return self.presence(&g).await,
            Endpoint::History(g) => return self.history(&g, req.uri().query()).await,
            Endpoint::Disconnect(id) => return self.disconnect(&id, req.uri().query()),
        };
        let kind = content_kind(&req)?;
        let json = json_content(&req);
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            // Not lowercased: a multipart boundary is case-sensitive.
            .to_string();
        let limit = self.cfg.max_body_bytes;
        let deadline = self.cfg.body_timeout.get();
        let body = tokio::time::timeout(deadline, read_body(req, limit))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within {} (api.body_timeout); send it at once",
                        self.cfg.body_timeout
                    ),
                )
            })??;
        match target {
            Some(group) => {
                check_name(&group, self.max_group_bytes)
                    .map_err(|m| ApiError::bad(format!("{m} (from the URL)")))?;
                let Some(kind) = kind else {
                    return self.publish_form(&group, &content_type, &body).await;
                };
                let kind = checked_kind(kind, json, &body)?;
                let n = self.publish(&group, body, kind).await?;
                Ok(json_response(StatusCode::OK, &json!({ "recipients": n })))
            }
            None => {
                if !is_json_request(&content_type.to_ascii_lowercase()) {
                    return Err(ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "POST /api/publish takes Content-Type: application/json; to publish a raw body use POST /api/groups/{group}/messages",
                    ));
                }
                self.publish_json(&body).await
            }
        }
    }

    /// A `multipart/form-data` body: each text field is published as one text message, in
    /// the form's order; a file part refuses the whole form (415) before anything is published.
    async fn publish_form(
        &self,
        group: &str,
        content_type: &str,
        body: &Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let refused = |(status, message): multipart::Refusal| {
            ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                message,
            )
        };
        let boundary = multipart::boundary(content_type).map_err(refused)?;
        let fields = multipart::text_fields(&boundary, body).map_err(refused)?;
        if fields.is_empty() {
            return Err(ApiError::bad(
                "the form has no fields; each text field is published as one message",
            ));
        }
        let mut total = 0;
        for (_, value) in &fields {
            total += self
                .publish(group, Bytes::from(value.clone()), Kind::Text)
                .await?;
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({ "recipients": total, "messages": fields.len() }),
        ))
    }

    async fn publish_json(&self, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad(format!(
                "the body is not valid JSON ({e}); expected {{\"group\": \"room:1\", \"data\": ...}}"
            ))
        })?;
        let Value::Object(obj) = v else {
            return Err(ApiError::bad(
                "the body must be a JSON object like {\"group\": \"room:1\", \"data\": ...}",
            ));
        };
        if let Some(k) = repeated_key(body) {
            return Err(ApiError::bad(format!(
                "the field {k:?} appears twice; parsers disagree on which one counts, so send it once"
            )));
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !["group", "groups", "data", "b64data"].contains(&k.as_str()))
        {
            return Err(ApiError::bad(format!(
                "unknown field {k:?}; the fields are group, groups, data and b64data"
            )));
        }
        let groups: Vec<String> = match (obj.get("group"), obj.get("groups")) {
            (Some(Value::String(g)), None) => vec![g.clone()],
            (None, Some(Value::Array(a))) => {
                let mut out = Vec::with_capacity(a.len());
                for g in a {
                    let Value::String(g) = g else {
                        return Err(ApiError::bad("\"groups\" must be an array of strings"));
                    };
                    // Listed twice would be delivered twice: refuse rather than guess.
                    if out.contains(g) {
                        return Err(ApiError::bad(format!(
                            "\"groups\" names {g:?} twice; list each group once"
                        )));
                    }
                    out.push(g.clone());
                }
                if out.is_empty() {
                    return Err(ApiError::bad(
                        "\"groups\" is empty; name at least one group",
                    ));
                }
                let max = self.cfg.max_groups_per_publish;
                if out.len() > max {
                    return Err(ApiError::bad(format!(
                        "\"groups\" names {} groups; the limit is {max} per request (api.max_groups_per_publish); split it into several requests",
                        out.len()
                    )));
                }
                out
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "give either \"group\" or \"groups\", not both",
                ));
            }
            (Some(_), None) => return Err(ApiError::bad("\"group\" must be a string")),
            (None, Some(_)) => return Err(ApiError::bad("\"groups\" must be an array of strings")),
            (None, None) => {
                return Err(ApiError::bad(
                    "missing \"group\" (or \"groups\"): say where to publish",
                ));
            }
        };
        for g in &groups {
            check_name(g, self.max_group_bytes)
                .map_err(|m| ApiError::bad(format!("{m} (group {g:?})")))?;
        }
        let (data, kind) = match (obj.get("data"), obj.get("b64data")) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "give either \"data\" or \"b64data\", not both",
                ));
            }
            (Some(Value::String(s)), None) => (Bytes::from(s.clone()), Kind::Text),
            (Some(v), None) => (Bytes::from(v.to_string()), Kind::Json),
            (None, Some(Value::String(b))) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| ApiError::bad(format!("\"b64data\" is not valid base64 ({e})")))?;
                (Bytes::from(raw), Kind::Binary)
            }
            (None, Some(_)) => return Err(ApiError::bad("\"b64data\" must be a base64 string")),
            (None, None) => {
                return Err(ApiError::bad(
                    "missing \"data\" (or \"b64data\"): say what to publish",
                ));
            }
        };
        if data.len() > self.cfg.max_body_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the message is over api.max_body_bytes",
            ));
        }
        let mut per_group = BTreeMap::new();
        let mut total = 0;
        for g in &groups {
            let n = self.publish(g, data.clone(), kind).await?;
            total += n;
            per_group.insert(g.clone(), n);
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({ "recipients": total, "groups": per_group }),
        ))
    }
}

/// `(node, connection)` of an id as presence shows it (`"1.42"`).
fn connection_id(id: &str) -> Result<(u64, u64), ApiError> {
    id.split_once('.')
        .and_then(|(n, c)| Some((u64::from_str_radix(n, 16).ok()?, c.parse::<u64>().ok()?)))
        .ok_or_else(|| {
            ApiError::bad(format!(
                "{id:?} is not a connection id; ids look like \"1.42\" (GET /api/groups/{{group}}/presence lists them, and hooks name them in \"conn\")"
            ))
        })
}

/// Close codes the API may ask for: the registered ones that describe a server's decision, and
/// the ones for applications (RFC 6455 §7.4).
/// The first key the body's top-level object repeats (serde_json would keep the last silently).
fn repeated_key(body: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut repeated = None;
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                if repeated.is_none() && !seen.insert(k.clone()) {
                    repeated = Some(k);
                }
            }
            Ok(repeated)
        }
    }
    serde_json::Deserializer::from_slice(body)
        .deserialize_map(Keys)
        .ok()
        .flatten()
}

fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1008 | 1011..=1013 | 3000..=4999)
}

fn is_json_request(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Who is calling, for the loopback rule: a request relayed by a proxy on this machine
/// (carrying `X-Forwarded-For` or `Forwarded`) is not a local caller, whoever relayed it.
fn caller(req: &Request<Incoming>, peer: IpAddr) -> IpAddr {
    let h = req.headers();
    if let Some(xff) = h.get("x-forwarded-for") {
        return xff
            .to_str()
            .ok()
            .and_then(|v| v.split(',').next())
            .and_then(|ip| ip.trim().parse().ok())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    }
    if h.contains_key(header::FORWARDED) {
        return IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    }
    peer
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
fn json_content(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| is_json_request(&v.to_ascii_lowercase()))
}

/// The kind a raw body is published as: text must be UTF-8, and a body sent as JSON must be
/// JSON, because a wsgate.v1 client receives it as a JSON value in its envelope (raw clients
/// get the same bytes as a text frame either way).
fn checked_kind(kind: Kind, json: bool, body: &[u8]) -> Result<Kind, ApiError> {
    check_text(kind, body)?;
    if !json {
        return Ok(kind);
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| {
        ApiError::bad(format!(
            "the body is not valid JSON ({e}); send it as text/plain to publish it as text"
        ))
    })?;
    Ok(Kind::Json)
}

/// A text message's body must be UTF-8.
fn check_text(kind: Kind, body: &[u8]) -> Result<(), ApiError> {
    if kind != Kind::Text {
        return Ok(());
    }
    std::str::from_utf8(body).map(|_| ()).map_err(|e| {
        ApiError::bad(format!(
            "the body is not valid UTF-8 (byte {}), so it cannot be a text message; send it as application/octet-stream for a binary message",
            e.valid_up_to()
        ))
    })
}

/// Decides text or binary from Content-Type (RFC 9110 §8.3: none means octet-stream); `None`
/// for a `multipart/form-data` form, whose text fields are the messages.
fn content_kind(req: &Request<Incoming>) -> Result<Option<Kind>, ApiError> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(Some(Kind::Binary));
    };
    let ct = ct
        .to_str()
        .map_err(|_| ApiError::bad("the Content-Type header is not ASCII"))?
        .to_ascii_lowercase();
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim();
    let charset = parts
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .map(|c| c.trim_matches('"').to_string())
        .next();
    if mime == "multipart/form-data" {
        return Ok(None);
    }
    if mime.starts_with("multipart/") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{mime} is an envelope, not a message; send the message itself as the body (text/plain, application/json or application/octet-stream), or a multipart/form-data form of text fields"
            ),
        ));
    }
    let text = mime.starts_with("text/")
        || mime == "application/json"
        || (mime.starts_with("application/") && mime.ends_with("+json"))
        || mime == "application/x-www-form-urlencoded";
    if !text {
        return Ok(Some(Kind::Binary));
    }
    match charset.as_deref() {
        None | Some("utf-8" | "utf8" | "us-ascii") => Ok(Some(Kind::Text)),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "charset {other} is not supported; WebSocket text messages are UTF-8, so send charset=utf-8"
            ),
        )),
    }
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is over the {limit} byte limit (api.max_body_bytes); send a smaller message or raise the limit"
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_big())
        }
        Err(e) => Err(ApiError::bad(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::repeated_key;

    #[test]
    fn a_repeated_key_is_found() {
        assert_eq!(
            repeated_key(br#"{"group": "a", "data": 1, "group": "b"}"#).as_deref(),
            Some("group")
        );
        assert_eq!(
            repeated_key(br#"{"group": "a", "data": {"x": 1, "x": 2}}"#),
            None
        );
        assert_eq!(repeated_key(b"[1]"), None);
    }
}
