//! The `wsgate.v1` protocol, negotiated with `Sec-WebSocket-Protocol: wsgate.v1`: JSON commands
//! from the client (`subscribe`, `unsubscribe`, `publish`, `history`, `presence`), a reply to
//! each with the same `id`, and publications as envelopes ([`super::codec::V1`]). PROTOCOL.md
//! documents every message.
//!
//! A v1 connection joins no group by itself; the route decides which groups it may subscribe
//! to. Bad input gets an error reply with a code and a sentence and the connection stays open,
//! until `websocket.max_command_errors` is passed (then 1008). Commands are handled in order:
//! while one waits on the broker, later ones wait too.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::close::{CloseCode, ProtocolError};
use super::codec::{Codecs, envelope, json_str};
use super::frame::{self, OpCode};
use super::outbox::Outbox;
use crate::broker::policy::GroupPattern;
use crate::broker::{
    BoxFuture, HistoryQuery, Kind, Position, PresenceEntry, Publication, Recovery,
};
use crate::hub::group::check_name;
use crate::hub::{FirstFrame, Hub, Join, Member, Presence, presence_json};
use crate::metrics::METRICS;

/// The subprotocol name.
pub const PROTOCOL: &str = "wsgate.v1";

/// Longest `info` a client may attach to its presence, in bytes of JSON.
const MAX_INFO_BYTES: usize = 1024;

/// What a v1 connection may do, from its route (with the path's values filled in) and the
/// `[websocket]` limits.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Groups it may subscribe to (and publish to, read the history and presence of).
    pub allowed: Vec<GroupPattern>,
    /// The patterns as configured, for error messages.
    pub allowed_text: Vec<String>,
    pub client_publish: bool,
    pub echo_to_sender: bool,
    pub presence: bool,
    pub join_leave: bool,
    pub max_errors: u32,
    pub max_subscriptions: usize,
    pub recovery_limit: usize,
    pub max_group_bytes: usize,
    /// The user presence shows for this connection (named by an `on_connect` hook, else the
    /// token's `sub`).
    pub user: Option<Arc<str>>,
    /// The token the connection was admitted with (`[jwt]`): its user goes into presence, its
    /// groups bound what the route allows, and `refresh` replaces it.
    pub grant: Option<Arc<crate::auth::Grant>>,
    /// The codecs its publications use (compressed when it negotiated permessage-deflate).
    pub codecs: Codecs,
}

/// The state of one v1 connection.
pub struct V1 {
    settings: Settings,
    subs: Vec<Arc<str>>,
    errors: u32,
    /// A command waiting on the broker: the frames to send when it is done, and the
    /// subscription to forget if it failed.
    pending: Option<BoxFuture<Done>>,
    /// Commands that arrived while one was pending, in order.
    backlog: VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for V1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V1")
            .field("subs", &self.subs)
            .field("errors", &self.errors)
            .field("pending", &self.pending.is_some())
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

/// What a finished command leaves to do.
struct Done {
    frames: Vec<Bytes>,
    /// A subscribe the broker could not serve: not subscribed after all.
    failed: Option<Arc<str>>,
    error: bool,
}

/// An error reply: a code (as HTTP's) and a sentence.
struct Refusal(u16, String);

impl Refusal {
    fn bad(s: impl Into<String>) -> Self {
        Refusal(400, s.into())
    }
}

/// What the connection does with the client's message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Too many bad commands: close with this.
    Close(ProtocolError),
}

/// The commands a client may send, for error messages.
const TYPES: &str = "subscribe, unsubscribe, publish, history, presence and refresh";

impl V1 {
    pub fn new(settings: Settings) -> Self {
        V1 {
            settings,
            subs: Vec::new(),
            errors: 0,
            pending: None,
            backlog: VecDeque::new(),
        }
    }

    /// Whether a command is still waiting on the broker (the session then reads no more).
    pub fn is_busy(&self) -> bool {
        self.pending.is_some() || !self.backlog.is_empty()
    }

    /// Handles one message from the client; replies go to `outbox`.
    pub fn on_message(
        &mut self,
        text: bool,
        payload: &[u8],
        hub: &Arc<Hub>,
        outbox: &Arc<Outbox>,
        cx: &mut Context<'_>,
    ) -> Verdict {
        if !text {
            return self.refuse(
                None,
                Refusal::bad(
                    "wsgate.v1 commands are JSON text frames; this was a binary frame (publish binary data as base64 in \"b64data\")",
                ),
                outbox,
            );
        }
        if self.is_busy() {
            self.backlog.push_back(payload.to_vec());
            return Verdict::Continue;
        }
        self.command(payload, hub, outbox, cx)
    }

    /// Moves a waiting command on; once it is done, the ones queued behind it run.
    pub fn poll_pending(
        &mut self,
        hub: &Arc<Hub>,
        outbox: &Arc<Outbox>,
        cx: &mut Context<'_>,
    ) -> Verdict {
        loop {
            if let Some(f) = self.pending.as_mut() {
                match f.as_mut().poll(cx) {
                    Poll::Pending => return Verdict::Continue,
                    Poll::Ready(done) => {
                        self.pending = None;
                        if let Verdict::Close(e) = self.finish(done, outbox) {
                            return Verdict::Close(e);
                        }
                    }
                }
            }
            let Some(next) = self.backlog.pop_front() else {
                return Verdict::Continue;
            };
            if let Verdict::Close(e) = self.command(&next, hub, outbox, cx) {
                return Verdict::Close(e);
            }
        }
    }

    /// Leaves every group subscribed to (the connection is gone).
    pub fn leave_all(&mut self, hub: &Hub, id: u64) {
        for g in self.subs.drain(..) {
            hub.leave(&g, id);
        }
    }

    fn finish(&mut self, done: Done, outbox: &Arc<Outbox>) -> Verdict {
        if let Some(g) = done.failed {
            self.subs.retain(|s| *s != g);
        }
        for f in &done.frames {
            outbox.push(f);
        }
        if done.error {
            return self.count_error();
        }
        Verdict::Continue
    }

    /// Runs a future now if it is ready (the memory broker's always are), else keeps it.
    fn run(
        &mut self,
        mut f: BoxFuture<Done>,
        outbox: &Arc<Outbox>,
        cx: &mut Context<'_>,
    ) -> Verdict {
        match f.as_mut().poll(cx) {
            Poll::Ready(done) => self.finish(done, outbox),
            Poll::Pending => {
                self.pending = Some(f);
                Verdict::Continue
            }
        }
    }

    fn command(
        &mut self,
        payload: &[u8],
        hub: &Arc<Hub>,
        outbox: &Arc<Outbox>,
        cx: &mut Context<'_>,
    ) -> Verdict {
        let obj = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return self.refuse(
                    None,
                    Refusal::bad(
                        "a command is a JSON object like {\"id\":1,\"type\":\"subscribe\",\"group\":\"room:1\"}",
                    ),
                    outbox,
                );
            }
            Err(e) => {
                return self.refuse(
                    None,
                    Refusal::bad(format!(
                        "the message is not JSON ({e}); a command looks like {{\"id\":1,\"type\":\"subscribe\",\"group\":\"room:1\"}}"
                    )),
                    outbox,
                );
            }
        };
        let Some(id) = obj.get("id").and_then(Value::as_u64) else {
            return self.refuse(
                None,
                Refusal::bad(
                    "every command needs a numeric \"id\" (a non-negative integer); the reply carries the same id",
                ),
                outbox,
            );
        };
        let typ = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            _ => {
                return self.refuse(
                    Some(id),
                    Refusal::bad(format!("every command needs a \"type\": one of {TYPES}")),
                    outbox,
                );
            }
        };
        let step = match typ {
            "subscribe" => self.subscribe(id, &obj, hub, outbox),
            "unsubscribe" => self.unsubscribe(id, &obj, hub, outbox),
            "publish" => self.publish(id, &obj, hub, outbox),
            "history" => self.history(id, &obj, hub),
            "presence" => self.presence(id, &obj, hub),
            "refresh" => self.refresh(id, &obj, outbox),
            other => Err(Refusal::bad(format!(
                "unknown command type {}; the types are {TYPES}",
                json_str(other)
            ))),
        };
        match step {
            Ok(Some(f)) => self.run(f, outbox, cx),
            Ok(None) => Verdict::Continue,
            Err(r) => self.refuse(Some(id), r, outbox),
        }
    }

    /// Sends an error reply and counts it.
    fn refuse(&mut self, id: Option<u64>, r: Refusal, outbox: &Arc<Outbox>) -> Verdict {
        outbox.push(&error_frame(id, r.0, &r.1));
        self.count_error()
    }

    fn count_error(&mut self) -> Verdict {
        METRICS.command_errors.inc();
        self.errors += 1;
        if self.errors > self.settings.max_errors {
            return Verdict::Close(ProtocolError::new(
                CloseCode(1008),
                format!(
                    "{} bad commands (websocket.max_command_errors is {}); see the error replies",
                    self.errors, self.settings.max_errors
                ),
            ));
        }
        Verdict::Continue
    }

    /// The command's `group`, checked against the name rules and the route's patterns.
    fn group(&self, obj: &Map<String, Value>) -> Result<Arc<str>, Refusal> {
        let g = match obj.get("group") {
            Some(Value::String(g)) => g.as_str(),
            Some(_) => return Err(Refusal::bad("\"group\" must be a string")),
            None => return Err(Refusal::bad("missing \"group\": say which group")),
        };
        check_name(g, self.settings.max_group_bytes).map_err(Refusal::bad)?;
        if !self.settings.allowed.iter().any(|p| p.matches(g)) {
            let allowed = if self.settings.allowed_text.is_empty() {
                "no group".to_string()
            } else {
                self.settings
                    .allowed_text
                    .iter()
                    .map(|s| json_str(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Refusal(
                403,
                format!(
                    "group {} is not allowed here: this route lets wsgate.v1 clients use {allowed} (the route's subscribe setting)",
                    json_str(g)
                ),
            ));
        }
        if let Some(grant) = &self.settings.grant {
            grant
                .check_group(g)
                .map_err(|e| Refusal(403, format!("{e} (the token's groups claim)")))?;
        }
        Ok(Arc::from(g))
    }

    /// `{"type":"refresh","token":"..."}`: a newer token for the same user, so the connection
    /// outlives the first token's `exp` (else it is closed with 4001 "token expired").
    fn refresh(
        &mut self,
        id: u64,
        obj: &Map<String, Value>,
        outbox: &Arc<Outbox>,
    ) -> Result<Option<BoxFuture<Done>>, Refusal> {
        let Some(grant) = &self.settings.grant else {
            return Err(Refusal::bad(
                "this connection was admitted without a token ([jwt] is off or the route is anonymous); there is nothing to refresh",
            ));
        };
        let token = match obj.get("token") {
            Some(Value::String(t)) => t.as_str(),
            _ => return Err(Refusal::bad("missing \"token\": the new JWT as a string")),
        };
        let exp = grant
            .refresh(token)
            .map_err(|e| Refusal(401, e.to_string()))?;
        outbox.push(&frame::encode(
            OpCode::Text,
            format!("{{\"id\":{id},\"type\":\"ok\",\"exp\":{exp}}}").as_bytes(),
        ));
        Ok(None)
    }

    fn subscribe(
        &mut self,
        id: u64,
        obj: &Map<String, Value>,
        hub: &Arc<Hub>,
        outbox: &Arc<Outbox>,
    ) -> Result<Option<BoxFuture<Done>>, Refusal> {
        let group = self.group(obj)?;
        if self.subs.contains(&group) {
            return Err(Refusal(
                409,
                format!("already subscribed to {}", json_str(&group)),
            ));
        }
        if self.subs.len() >= self.settings.max_subscriptions {
            return Err(Refusal(
                429,
                format!(
                    "already subscribed to {} groups, the most one connection may (websocket.max_subscriptions); unsubscribe from one first",
                    self.subs.len()
                ),
            ));
        }
        let since = match obj.get("since") {
            None | Some(Value::Null) => None,
            Some(v) => Some(position(v)?),
        };
        let events = match obj.get("events") {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) if self.settings.join_leave => true,
            Some(Value::Bool(true)) => {
                return Err(Refusal(
                    403,
                    "join and leave events are off on this route (its join_leave setting)".into(),
                ));
            }
            Some(_) => return Err(Refusal::bad("\"events\" must be true or false")),
        };
        let info = match obj.get("info") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let text = v.to_string();
                if text.len() > MAX_INFO_BYTES {
                    return Err(Refusal::bad(format!(
                        "\"info\" is {} bytes of JSON; at most {MAX_INFO_BYTES} are kept in presence",
                        text.len()
                    )));
                }
                Some(Arc::from(text))
            }
        };
        let q = match &since {
            Some(p) => HistoryQuery::Since {
                since: p.clone(),
                limit: self.settings.recovery_limit,
            },
            None => HistoryQuery::Live,
        };
        let asked = since.is_some();
        let first: FirstFrame = Box::new(move |recovery, top| {
            let mut reply = format!("{{\"id\":{id},\"type\":\"ok\"");
            if asked {
                match recovery {
                    Recovery::Lost(why) => {
                        reply.push_str(",\"recovered\":false,\"reason\":");
                        reply.push_str(&json_str(why));
                    }
                    _ => reply.push_str(",\"recovered\":true"),
                }
            }
            push_position(&mut reply, top);
            reply.push('}');
            Some(frame::encode(OpCode::Text, reply.as_bytes()))
        });
        let how = Join {
            codec: if events {
                self.settings.codecs.v1_events
            } else {
                self.settings.codecs.v1
            },
            presence: self.settings.presence.then_some(Presence {
                user: self.settings.user.clone(),
                info,
            }),
            events: self.settings.join_leave,
        };
        self.subs.push(group.clone());
        let member: Arc<dyn Member> = outbox.clone();
        let attached = hub.attach(&group, member, how, q, Some(first));
        Ok(Some(Box::pin(async move {
            match attached.await {
                Ok(()) => Done {
                    frames: Vec::new(),
                    failed: None,
                    error: false,
                },
                Err(e) => Done {
                    frames: vec![error_frame(Some(id), 503, &e.to_string())],
                    failed: Some(group),
                    error: false,
                },
            }
        })))
    }

    fn unsubscribe(
        &mut self,
        id: u64,
        obj: &Map<String, Value>,
        hub: &Arc<Hub>,
        outbox: &Arc<Outbox>,
    ) -> Result<Option<BoxFuture<Done>>, Refusal> {
        let group = self.group(obj)?;
        let Some(at) = self.subs.iter().position(|s| *s == group) else {
            return Err(Refusal(
                404,
                format!("not subscribed to {}", json_str(&group)),
            ));
        };
        self.subs.swap_remove(at);
        hub.leave(&group, outbox.id);
        outbox.push(&ok_frame(id, ""));
        Ok(None)
    }

    fn publish(
        &mut self,
        id: u64,
        obj: &Map<String, Value>,
        hub: &Arc<Hub>,
        outbox: &Outbox,
    ) -> Result<Option<BoxFuture<Done>>, Refusal> {
        let group = self.group(obj)?;
        if !self.settings.client_publish {
            return Err(Refusal(
                403,
                "clients may not publish on this route (its client_publish setting); publish from your backend through the HTTP API".into(),
            ));
        }
        let (data, kind) = match (obj.get("data"), obj.get("b64data")) {
            (Some(_), Some(_)) => {
                return Err(Refusal::bad(
                    "give either \"data\" or \"b64data\", not both",
                ));
            }
            (Some(Value::String(s)), None) => (Bytes::from(s.clone()), Kind::Text),
            (Some(v), None) => (Bytes::from(v.to_string()), Kind::Json),
            (None, Some(Value::String(b))) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| Refusal::bad(format!("\"b64data\" is not valid base64 ({e})")))?;
                (Bytes::from(raw), Kind::Binary)
            }
            (None, Some(_)) => return Err(Refusal::bad("\"b64data\" must be a base64 string")),
            (None, None) => {
                return Err(Refusal::bad(
                    "missing \"data\" (or \"b64data\"): say what to publish",
                ));
            }
        };
        let mut p = Publication::new(group, data, kind);
        if !self.settings.echo_to_sender {
            p = p.except(outbox.id);
        }
        let published = hub.publish(p);
        Ok(Some(Box::pin(async move {
            match published.await {
                Ok(r) => {
                    let mut extra = String::new();
                    push_position(&mut extra, r.position.as_ref());
                    Done {
                        frames: vec![ok_frame(id, &extra)],
                        failed: None,
                        error: false,
                    }
                }
                Err(e) => Done {
                    frames: vec![error_frame(Some(id), 503, &e.to_string())],
                    failed: None,
                    error: false,
                },
            }
        })))
    }

    fn history(
        &mut self,
        id: u64,
        obj: &Map<String, Value>,
        hub: &Arc<Hub>,
    ) -> Result<Option<BoxFuture<Done>>, Refusal> {
        let group = self.group(obj)?;
        let max = self.settings.recovery_limit;
        let limit = match obj.get("limit") {
            None | Some(Value::Null) => max,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => (n as usize).min(max),
                _ => return Err(Refusal::bad("\"limit\" must be a positive integer")),
            },
        };
        let q = match obj.get("since") {
            None | Some(Value::Null) => HistoryQuery::Last {
                last: limit,
                within: Duration::MAX,
            },
            Some(v) => HistoryQuery::Since {
                since: position(v)?,
                limit,
            },
        };
        let read = hub.broker().history(&group, q);
        Ok(Some(Box::pin(async move {
            match read.await {
                Ok(r) => {
                    let mut reply = format!("{{\"id\":{id},\"type\":\"history\"");
                    if let Recovery::Lost(why) = &r.recovery {
                        reply.push_str(",\"recovered\":false,\"reason\":");
                        reply.push_str(&json_str(why));
                    } else if r.recovery == Recovery::Recovered {
                        reply.push_str(",\"recovered\":true");
                    }
                    push_position(&mut reply, r.top.as_ref());
                    reply.push_str(",\"publications\":[");
                    for (i, p) in r.publications.iter().enumerate() {
                        if i > 0 {
                            reply.push(',');
                        }
                        reply.push_str(&envelope(p));
                    }
                    reply.push_str("]}");
                    Done {
                        frames: vec![frame::encode(OpCode::Text, reply.as_bytes())],
                        failed: None,
                        error: false,
                    }
                }
                Err(e) => Done {
                    frames: vec![error_frame(Some(id), 503, &e.to_string())],
                    failed: None,
                    error: false,
                },
            }
        })))
    }

    fn presence(
        &mut self,
        id: u64,
        obj: &Map<String, Value>,
        hub: &Arc<Hub>,
    ) -> Result<Option<BoxFuture<Done>>, Refusal> {
        let group = self.group(obj)?;
        let read = hub.broker().presence(&group);
        Ok(Some(Box::pin(async move {
            match read.await {
                Ok(list) => Done {
                    frames: vec![frame::encode(
                        OpCode::Text,
                        presence_reply(Some(id), &list).as_bytes(),
                    )],
                    failed: None,
                    error: false,
                },
                Err(e) => Done {
                    frames: vec![error_frame(Some(id), 503, &e.to_string())],
                    failed: None,
                    error: false,
                },
            }
        })))
    }
}

/// `{"id":…,"type":"presence","count":N,"connections":[…]}` (without `id` for the HTTP API).
pub fn presence_reply(id: Option<u64>, list: &[PresenceEntry]) -> String {
    let mut out = String::from("{");
    if let Some(id) = id {
        out.push_str(&format!("\"id\":{id},\"type\":\"presence\","));
    }
    out.push_str(&format!("\"count\":{},\"connections\":[", list.len()));
    for (i, e) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&presence_json(e));
    }
    out.push_str("]}");
    out
}

/// `"since": {"epoch": "…", "offset": 41}`.
fn position(v: &Value) -> Result<Position, Refusal> {
    let bad = || {
        Refusal::bad(
            "\"since\" must look like {\"epoch\":\"…\",\"offset\":41}: the epoch and offset of the last publication the client got",
        )
    };
    let epoch = v.get("epoch").and_then(Value::as_str).ok_or_else(bad)?;
    let offset = v.get("offset").and_then(Value::as_u64).ok_or_else(bad)?;
    Ok(Position {
        epoch: Arc::from(epoch),
        offset,
    })
}

fn push_position(out: &mut String, p: Option<&Position>) {
    if let Some(p) = p {
        out.push_str(",\"epoch\":");
        out.push_str(&json_str(&p.epoch));
        out.push_str(",\"offset\":");
        out.push_str(&p.offset.to_string());
    }
}

/// `{"id":…,"type":"ok"…}` with `extra` fields (each starting with a comma).
fn ok_frame(id: u64, extra: &str) -> Bytes {
    frame::encode(
        OpCode::Text,
        format!("{{\"id\":{id},\"type\":\"ok\"{extra}}}").as_bytes(),
    )
}

/// `{"id":…,"type":"error","code":…,"message":"…"}`; `id` is null when the command had none.
fn error_frame(id: Option<u64>, code: u16, message: &str) -> Bytes {
    let id = id.map_or("null".to_string(), |i| i.to_string());
    frame::encode(
        OpCode::Text,
        format!(
            "{{\"id\":{id},\"type\":\"error\",\"code\":{code},\"message\":{}}}",
            json_str(message)
        )
        .as_bytes(),
    )
}
