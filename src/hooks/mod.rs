//! Backend hooks: wsgate tells an ordinary HTTP backend (Django, Flask, Rails, Express...)
//! about its WebSocket clients with JSON POSTs, the way Pushpin's WebSocket-over-HTTP and
//! Centrifugo's proxy do, so the backend needs no WebSocket code and no channel layer.
//!
//! - `on_connect` ([`connect`]): before a client is let in; the answer accepts or rejects it and
//!   may choose its groups, user and info.
//! - `on_message = "forward"` ([`relay`]): each client message, in order per connection; the
//!   answer may reply to that client and publish to groups.
//! - `on_disconnect` ([`relay`]): when a connection ends, with its close code.
//!
//! Every call has `hooks.timeout`, is retried `hooks.retries` times with doubling backoff when
//! it surely did not reach the backend (or when repeating it is harmless), is signed with
//! `hooks.secret` ([`sign`]) and goes through one keep-alive pool. The request and answer JSON
//! are documented in PROTOCOL.md. This module knows the hub and the broker's publications; it
//! knows nothing of sockets or frames (it reaches a connection through [`Member`]).

pub mod answer;
pub mod connect;
pub mod relay;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config;
use crate::hub::{Hub, Member};
use crate::metrics::METRICS;

/// Why a hook call failed; the message is a sentence for logs and for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// No connection to the backend (refused, unreachable, reset before an answer).
    #[error("the backend at {url} could not be reached ({cause})")]
    Unreachable { url: String, cause: String },
    /// No answer within `hooks.timeout`.
    #[error("the backend at {url} did not answer within {timeout:?} (hooks.timeout)")]
    Timeout { url: String, timeout: Duration },
    /// An answer other than 200.
    #[error("the backend at {url} answered {status}")]
    Status { url: String, status: u16 },
    /// A 200 whose body is not what the hook expects.
    #[error("the backend at {url} answered with {why}")]
    BadAnswer { url: String, why: String },
}

impl HookError {
    /// Whether repeating the call cannot make the backend do something twice: it never got
    /// the request, or said it is unavailable.
    fn surely_not_handled(&self) -> bool {
        match self {
            HookError::Unreachable { .. } => true,
            HookError::Status { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// A Close reason (at most 123 bytes, RFC 6455 §5.5): what went wrong without the URL.
    pub fn reason(&self) -> &'static str {
        match self {
            HookError::Unreachable { .. } => "the backend could not be reached; try again later",
            HookError::Timeout { .. } => "the backend did not answer in time; try again later",
            HookError::Status { .. } => "the backend failed (it answered with an error status)",
            HookError::BadAnswer { .. } => "the backend's answer was not understood",
        }
    }

    /// The status a client is told in an error message: 504 on a timeout, else 502.
    pub fn status(&self) -> u16 {
        match self {
            HookError::Timeout { .. } => 504,
            _ => 502,
        }
    }
}

/// Whether a call may be repeated after a timeout (the backend may have handled it already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// `on_connect` and `on_disconnect`: doing them twice does no harm.
    Harmless,
    /// A forwarded message: only retried when it surely did not reach the backend.
    Once,
}

/// The hook client: settings, the keep-alive pool, and the hub that answers publish into.
pub struct Hooks {
    client: Client<HttpConnector, Full<Bytes>>,
    cfg: config::Hooks,
    key: Option<ring::hmac::Key>,
    hub: Arc<Hub>,
    /// Most groups a backend may give one connection.
    pub(crate) max_groups: usize,
    /// Longest group name.
    pub(crate) max_group_bytes: usize,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Hooks {
    /// The hook client `cfg` describes; answers' publishes go to `hub`.
    pub fn new(cfg: &config::Config, hub: Arc<Hub>) -> Arc<Self> {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(cfg.hooks.timeout.get()));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.hooks.pool_idle_timeout.get())
            .pool_timer(TokioTimer::new())
            .build(conn);
        Arc::new(Hooks {
            client,
            key: cfg.hooks.secret.as_ref().map(|s| sign::key(s.expose())),
            cfg: cfg.hooks.clone(),
            hub,
            max_groups: cfg.websocket.max_subscriptions,
            max_group_bytes: cfg.websocket.max_group_bytes,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &config::Hooks {
        &self.cfg
    }

    /// The hub answers publish to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// POSTs `body` (JSON) to `url` and returns the answer's JSON, retrying as `repeat` and
    /// `[hooks]` allow.
    ///
    /// # Errors
    /// The last attempt's failure.
    pub async fn call(
        &self,
        url: &Uri,
        body: Bytes,
        repeat: Repeat,
    ) -> Result<serde_json::Value, HookError> {
        let mut backoff = self.cfg.retry_backoff.get();
        let mut attempt = 0;
        loop {
            METRICS.hook_calls.inc();
            let r = self.attempt(url, body.clone()).await;
            let err = match r {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            METRICS.hook_failures.inc();
            let again = err.surely_not_handled()
                || (repeat == Repeat::Harmless && matches!(err, HookError::Timeout { .. }));
            if attempt >= self.cfg.retries || !again {
                return Err(err);
            }
            tracing::debug!(%url, error = %err, attempt, "hook call failed; retrying");
            attempt += 1;
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    async fn attempt(&self, url: &Uri, body: Bytes) -> Result<serde_json::Value, HookError> {
        let timeout = self.cfg.timeout.get();
        let name = || url.to_string();
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = url.clone();
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::USER_AGENT, HeaderValue::from_static("wsgate"));
        if let Some(key) = &self.key {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let v = sign::signature(key, t, &body);
            h.insert(
                sign::HEADER,
                HeaderValue::from_str(&v).expect("hex and digits are a valid header value"),
            );
        }
        let limit = self.cfg.max_response_bytes;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HookError::Unreachable {
                    url: name(),
                    cause: cause_of(&e),
                })?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HookError::BadAnswer {
                            url: name(),
                            why: format!("more than {limit} bytes (hooks.max_response_bytes)"),
                        }
                    } else {
                        HookError::Unreachable {
                            url: name(),
                            cause: format!("the answer was cut off: {e}"),
                        }
                    }
                })?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(HookError::Status {
                    url: name(),
                    status: status.as_u16(),
                });
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                // An empty 200 is the easiest answer to write: "nothing to do".
                return Ok(serde_json::Value::Object(serde_json::Map::new()));
            }
            serde_json::from_slice(&bytes).map_err(|e| HookError::BadAnswer {
                url: name(),
                why: format!("a body that is not JSON ({e})"),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HookError::Timeout {
                url: name(),
                timeout,
            }),
        }
    }
}

/// The innermost cause of a client error ("Connection refused (os error 111)"), which is what
/// a person needs; hyper's own message is only "client error (Connect)".
fn cause_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Who a connection is, as every hook request says it.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The id across nodes (`"1.17"`), as presence and `DELETE /api/connections/{id}` use it.
    pub id: String,
    /// The route's pattern, e.g. `/room/{room}/`.
    pub route: String,
    /// The request path, e.g. `/room/123/`.
    pub path: String,
    /// The groups it is in.
    pub groups: Vec<String>,
    /// The user the backend named at connect time.
    pub user: Option<String>,
    /// The connection info the backend gave at connect time (JSON text).
    pub info: Option<String>,
}

impl Conn {
    /// The fields every request has, as a JSON object to add the event's own to.
    fn json(&self, event: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut o = serde_json::Map::new();
        o.insert("event".into(), event.into());
        o.insert("conn".into(), self.id.clone().into());
        o.insert("route".into(), self.route.clone().into());
        o.insert("path".into(), self.path.clone().into());
        o.insert("groups".into(), self.groups.clone().into());
        o.insert(
            "user".into(),
            self.user
                .clone()
                .map_or(serde_json::Value::Null, Into::into),
        );
        let info = self
            .info
            .as_deref()
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or(serde_json::Value::Null);
        o.insert("info".into(), info);
        o
    }
}

/// A client's view of a failed call: `{"type":"error","code":502,"message":"..."}`.
pub(crate) fn error_message(member: &dyn Member, code: u16, message: &str) {
    let body = serde_json::json!({"type": "error", "code": code, "message": message});
    if !member.send(body.to_string().as_bytes(), crate::broker::Kind::Json) {
        tracing::debug!(
            conn = member.id(),
            "an error message found the connection closing"
        );
    }
}
