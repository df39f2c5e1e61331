//! Reading a backend's answers: what `on_connect` decided, and what a forwarded message's answer
//! asks for (messages to the client, publishes, a close). Each malformed answer is a sentence
//! naming the field, for the log and the client.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::broker::Kind;
use crate::hub::group::check_name;

/// Longest `info` kept for a connection, in bytes of JSON (as for `wsgate.v1` clients).
pub const MAX_INFO_BYTES: usize = 1024;

/// What `on_connect` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the client in.
    Accept(Accepted),
    /// Close it at once with `code` and `reason`.
    Reject { code: u16, reason: String },
}

/// An accepted client's groups, user and info as the backend chose them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// `None`: the route's own group.
    pub groups: Option<Vec<String>>,
    pub user: Option<String>,
    /// JSON text.
    pub info: Option<String>,
}

/// A message for one client, or a publication, from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub data: Bytes,
    pub kind: Kind,
}

/// What the answer to a forwarded message asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Messages for the client that sent the message, in order.
    pub messages: Vec<Message>,
    /// `(groups, message)` to publish, in order.
    pub publish: Vec<(Vec<String>, Message)>,
    /// Close the client with this code and reason.
    pub close: Option<(u16, String)>,
}

fn object(v: Value) -> Result<Map<String, Value>, String> {
    match v {
        Value::Object(o) => Ok(o),
        other => Err(format!(
            "{} where a JSON object was expected",
            kind_of(&other)
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// Reads an `on_connect` answer: `{"accept": true, "groups": [...], "user": "42", "info":
/// {...}}` or `{"accept": false, "status": 403, "reason": "..."}` (or `"code"`: a close code
/// 4000-4999). Groups are checked against the group name rules.
pub fn verdict(v: Value, max_groups: usize, max_group_bytes: usize) -> Result<Verdict, String> {
    let o = object(v)?;
    let accept = match o.get("accept") {
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "\"accept\" as {}; it must be true or false",
                kind_of(other)
            ));
        }
        None => {
            return Err("no \"accept\" field; answer {\"accept\": true} or {\"accept\": false, \"reason\": \"...\"}".into());
        }
    };
    if !accept {
        let reason = match o.get("reason") {
            Some(Value::String(s)) => s.clone(),
            None => "refused by the backend".into(),
            Some(other) => {
                return Err(format!(
                    "\"reason\" as {}; it must be a string",
                    kind_of(other)
                ));
            }
        };
        let status = match o.get("status") {
            None => 403,
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|s| (400..=599).contains(s))
                .ok_or_else(|| format!("\"status\": {n}; use an HTTP status from 400 to 599"))?,
            Some(other) => {
                return Err(format!(
                    "\"status\" as {}; it must be a number",
                    kind_of(other)
                ));
            }
        };
        let code = match o.get("code") {
            None => 4000 + status,
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|c| (4000..=4999).contains(c))
                .ok_or_else(|| {
                    format!("\"code\": {n}; a rejection's close code is 4000 to 4999")
                })?,
            Some(other) => {
                return Err(format!(
                    "\"code\" as {}; it must be a number",
                    kind_of(other)
                ));
            }
        };
        // A Close frame carries at most 123 bytes of reason (RFC 6455 §5.5).
        return Ok(Verdict::Reject {
            code: code as u16,
            reason: cut(reason, 123),
        });
    }
    let groups = match o.get("groups") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            if a.len() > max_groups {
                return Err(format!(
                    "{} groups; at most {max_groups} (websocket.max_subscriptions)",
                    a.len()
                ));
            }
            let mut out = Vec::with_capacity(a.len());
            for g in a {
                let Value::String(g) = g else {
                    return Err("\"groups\" with something that is not a string".into());
                };
                check_name(g, max_group_bytes).map_err(|m| format!("group {g:?}: {m}"))?;
                out.push(g.clone());
            }
            Some(out)
        }
        Some(other) => {
            return Err(format!(
                "\"groups\" as {}; it must be an array of strings",
                kind_of(other)
            ));
        }
    };
    let user = match o.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(format!(
                "\"user\" as {}; it must be a string or a number",
                kind_of(other)
            ));
        }
    };
    let info = match o.get("info") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let text = v.to_string();
            if text.len() > MAX_INFO_BYTES {
                return Err(format!(
                    "\"info\" of {} bytes of JSON; at most {MAX_INFO_BYTES} are kept",
                    text.len()
                ));
            }
            Some(text)
        }
    };
    Ok(Verdict::Accept(Accepted { groups, user, info }))
}

/// `"data"` (a string as text, any other JSON value as JSON) or `"b64data"` of `o`.
fn message_of(o: &Map<String, Value>, at: &str) -> Result<Message, String> {
    use base64::Engine;
    match (o.get("data"), o.get("b64data")) {
        (Some(_), Some(_)) => Err(format!("{at} has both \"data\" and \"b64data\"; give one")),
        (Some(Value::String(s)), None) => Ok(Message {
            data: Bytes::from(s.clone()),
            kind: Kind::Text,
        }),
        (Some(v), None) => Ok(Message {
            data: Bytes::from(v.to_string()),
            kind: Kind::Json,
        }),
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(|raw| Message {
                data: Bytes::from(raw),
                kind: Kind::Binary,
            })
            .map_err(|e| format!("{at} has \"b64data\" that is not base64 ({e})")),
        (None, Some(_)) => Err(format!("{at} has \"b64data\" that is not a string")),
        (None, None) => Err(format!("{at} has neither \"data\" nor \"b64data\"")),
    }
}

/// Reads the answer to a forwarded message: `{}` (nothing to do), or any of `"messages": [..]`
/// (each a string, sent as text, `{"b64data": "..."}`, sent as binary, or any other JSON
/// value, sent as its JSON text), `"publish":
/// [{"group": "...", "data": ...}, ...]` (or `"groups"`, `"b64data"`) and `"close": {"code":
/// 4000, "reason": "..."}`.
pub fn reply(v: Value, max_group_bytes: usize) -> Result<Reply, String> {
    let o = object(v)?;
    let mut r = Reply::default();
    match o.get("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, m) in a.iter().enumerate() {
                r.messages.push(match m {
                    Value::String(s) => Message {
                        data: Bytes::from(s.clone()),
                        kind: Kind::Text,
                    },
                    // `{"b64data": "..."}` alone is a binary message (an object with other keys,
                    // or a string holding this shape, goes as text).
                    Value::Object(o) if o.len() == 1 && o.contains_key("b64data") => {
                        message_of(o, &format!("messages[{i}]"))?
                    }
                    v => Message {
                        data: Bytes::from(v.to_string()),
                        kind: Kind::Json,
                    },
                });
            }
        }
        Some(other) => {
            return Err(format!(
                "\"messages\" as {}; it must be an array",
                kind_of(other)
            ));
        }
    }
    match o.get("publish") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, p) in a.iter().enumerate() {
                let at = format!("publish[{i}]");
                let Value::Object(p) = p else {
                    return Err(format!(
                        "{at} that is not an object like {{\"group\": \"room:1\", \"data\": ...}}"
                    ));
                };
                let groups: Vec<String> = match (p.get("group"), p.get("groups")) {
                    (Some(Value::String(g)), None) => vec![g.clone()],
                    (None, Some(Value::Array(gs))) => gs
                        .iter()
                        .map(|g| g.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| format!("{at} has \"groups\" that are not all strings"))?,
                    _ => {
                        return Err(format!(
                            "{at} needs \"group\" (a string) or \"groups\" (an array of strings)"
                        ));
                    }
                };
                for g in &groups {
                    check_name(g, max_group_bytes)
                        .map_err(|m| format!("{at}: group {g:?}: {m}"))?;
                }
                r.publish.push((groups, message_of(p, &at)?));
            }
        }
        Some(other) => {
            return Err(format!(
                "\"publish\" as {}; it must be an array",
                kind_of(other)
            ));
        }
    }
    match o.get("close") {
        None | Some(Value::Null) => {}
        Some(Value::Object(c)) => {
            let code = c.get("code").and_then(Value::as_u64).unwrap_or(1000);
            if !(code == 1000 || (4000..=4999).contains(&code)) {
                return Err(format!(
                    "\"close\" with code {code}; use 1000 or 4000 to 4999"
                ));
            }
            let reason = c
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            r.close = Some((code as u16, cut(reason, 123)));
        }
        Some(other) => {
            return Err(format!(
                "\"close\" as {}; it must be an object",
                kind_of(other)
            ));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rejection_maps_its_status_to_a_4xxx_close_code() {
        let v = verdict(
            json!({"accept": false, "status": 401, "reason": "log in first"}),
            10,
            64,
        );
        assert_eq!(
            v,
            Ok(Verdict::Reject {
                code: 4401,
                reason: "log in first".into()
            })
        );
        let v = verdict(json!({"accept": false, "code": 4100}), 10, 64).unwrap();
        assert!(matches!(v, Verdict::Reject { code: 4100, .. }));
    }

    #[test]
    fn an_answer_without_accept_says_what_to_send() {
        let e = verdict(json!({"ok": true}), 10, 64).unwrap_err();
        assert!(e.contains("no \"accept\" field"), "{e}");
        let e = verdict(json!({"accept": true, "groups": ["ok", ""]}), 10, 64).unwrap_err();
        assert!(e.contains("group \"\""), "{e}");
        let e = verdict(json!({"accept": true, "groups": ["a", "b", "c"]}), 2, 64).unwrap_err();
        assert!(e.contains("websocket.max_subscriptions"), "{e}");
    }

    #[test]
    fn an_accept_keeps_groups_user_and_info() {
        let v = verdict(
            json!({"accept": true, "groups": ["room:1", "user:7"], "user": 7, "info": {"name": "ann"}}),
            10,
            64,
        )
        .unwrap();
        assert_eq!(
            v,
            Verdict::Accept(Accepted {
                groups: Some(vec!["room:1".into(), "user:7".into()]),
                user: Some("7".into()),
                info: Some("{\"name\":\"ann\"}".into()),
            })
        );
    }

    #[test]
    fn a_reply_reads_messages_publishes_and_close() {
        let r = reply(
            json!({"messages": ["hi", {"n": 1}], "publish": [{"group": "room:1", "data": "x"}, {"groups": ["a", "b"], "b64data": "AP8="}], "close": {"code": 4000, "reason": "bye"}}),
            64,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[1].kind, Kind::Json);
        assert_eq!(r.publish[1].0, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(&r.publish[1].1.data[..], &[0u8, 255]);
        assert_eq!(r.close, Some((4000, "bye".into())));
        let r = reply(
            json!({"messages": [{"b64data": "AP8="}, {"b64data": "x", "n": 1}]}),
            64,
        )
        .unwrap();
        assert_eq!(r.messages[0].kind, Kind::Binary);
        assert_eq!(&r.messages[0].data[..], &[0u8, 255]);
        assert_eq!(r.messages[1].kind, Kind::Json);
        assert_eq!(reply(json!({}), 64), Ok(Reply::default()));
        let e = reply(json!({"publish": [{"data": "x"}]}), 64).unwrap_err();
        assert!(e.starts_with("publish[0] needs \"group\""), "{e}");
    }
}
