//! How publications go on the wire for each client protocol a WebSocket connection can speak.
//! The hub's fan-out calls each codec once per publication and shares the bytes among every
//! member speaking it.
//!
//! - [`RAW`]: the message itself in one text or binary frame, as plain `new WebSocket(url)`
//!   clients expect. Presence events are not sent.
//! - [`V1`]: `wsgate.v1` envelopes, JSON in a text frame:
//!   `{"type":"pub","group":"room:1","epoch":"…","offset":42,"data":…}` (see PROTOCOL.md).
//! - [`V1_EVENTS`]: the same, plus `join`/`leave` events for a client that asked for them.

use base64::Engine;
use bytes::Bytes;

use super::frame::{self, OpCode};
use crate::broker::{Kind, Publication};
use crate::hub::Codec;

/// Bare payloads: the message in one frame.
#[derive(Debug)]
pub struct Raw;

pub static RAW: Raw = Raw;

impl Codec for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn encode(&self, p: &Publication) -> Option<Bytes> {
        let op = match p.kind {
            Kind::Text | Kind::Json => OpCode::Text,
            Kind::Binary => OpCode::Binary,
            Kind::Join | Kind::Leave => return None,
        };
        Some(frame::encode(op, &p.data))
    }
}

/// `wsgate.v1` envelopes; with `events`, presence events too.
#[derive(Debug)]
pub struct V1 {
    events: bool,
}

pub static V1: V1 = V1 { events: false };
pub static V1_EVENTS: V1 = V1 { events: true };

impl Codec for V1 {
    fn name(&self) -> &'static str {
        if self.events { "v1+events" } else { "v1" }
    }

    fn encode(&self, p: &Publication) -> Option<Bytes> {
        if !p.kind.is_message() && !self.events {
            return None;
        }
        Some(frame::encode(OpCode::Text, envelope(p).as_bytes()))
    }

    fn tracks_positions(&self) -> bool {
        true
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A publication as a `wsgate.v1` envelope (the JSON text, unframed).
pub fn envelope(p: &Publication) -> String {
    let mut out = String::with_capacity(p.data.len() + 64);
    let typ = match p.kind {
        Kind::Join => "join",
        Kind::Leave => "leave",
        _ => "pub",
    };
    out.push_str("{\"type\":\"");
    out.push_str(typ);
    out.push_str("\",\"group\":");
    out.push_str(&json_str(&p.group));
    if let Some(pos) = &p.position {
        out.push_str(",\"epoch\":");
        out.push_str(&json_str(&pos.epoch));
        out.push_str(",\"offset\":");
        out.push_str(&pos.offset.to_string());
    }
    match p.kind {
        // Checked as one JSON value by whoever made the publication.
        Kind::Json => {
            out.push_str(",\"data\":");
            out.push_str(&String::from_utf8_lossy(&p.data));
        }
        Kind::Text => {
            out.push_str(",\"data\":");
            out.push_str(&json_str(&String::from_utf8_lossy(&p.data)));
        }
        Kind::Binary => {
            out.push_str(",\"b64data\":\"");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(&p.data));
            out.push('"');
        }
        Kind::Join | Kind::Leave => {
            out.push_str(",\"connection\":");
            out.push_str(&String::from_utf8_lossy(&p.data));
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Position;
    use std::sync::Arc;

    fn publication(kind: Kind, data: &'static [u8]) -> Publication {
        Publication::new("room:1", Bytes::from_static(data), kind)
    }

    #[test]
    fn raw_puts_the_message_in_one_frame_of_its_kind() {
        assert_eq!(
            &RAW.encode(&publication(Kind::Text, b"hi")).unwrap()[..],
            b"\x81\x02hi"
        );
        assert_eq!(
            &RAW.encode(&publication(Kind::Binary, b"\x00")).unwrap()[..],
            b"\x82\x01\x00"
        );
        assert_eq!(RAW.encode(&publication(Kind::Join, b"{}")), None);
    }

    fn v1_text(c: &V1, p: &Publication) -> Option<String> {
        let f = c.encode(p)?;
        let h = frame::parse_header(&f).unwrap();
        Some(String::from_utf8(f[h.size..].to_vec()).unwrap())
    }

    #[test]
    fn v1_envelopes_carry_the_position_and_the_data_as_published() {
        let mut p = publication(Kind::Json, br#"{"percent":40}"#);
        p.position = Some(Position {
            epoch: Arc::from("ab12"),
            offset: 42,
        });
        assert_eq!(
            v1_text(&V1, &p).unwrap(),
            r#"{"type":"pub","group":"room:1","epoch":"ab12","offset":42,"data":{"percent":40}}"#
        );
        assert_eq!(
            v1_text(&V1, &publication(Kind::Text, b"say \"hi\"")).unwrap(),
            r#"{"type":"pub","group":"room:1","data":"say \"hi\""}"#
        );
        assert_eq!(
            v1_text(&V1, &publication(Kind::Binary, b"\x00\xff")).unwrap(),
            r#"{"type":"pub","group":"room:1","b64data":"AP8="}"#
        );
    }

    #[test]
    fn presence_events_go_only_to_clients_that_asked() {
        let p = publication(Kind::Leave, br#"{"id":"1.2","user":null,"info":null}"#);
        assert_eq!(v1_text(&V1, &p), None);
        assert_eq!(
            v1_text(&V1_EVENTS, &p).unwrap(),
            r#"{"type":"leave","group":"room:1","connection":{"id":"1.2","user":null,"info":null}}"#
        );
    }
}
