//! How publications go on the wire for each client protocol a WebSocket connection can speak.
//! The hub's fan-out calls each codec once per publication and shares the bytes among every
//! member speaking it.
//!
//! - [`RAW`]: the message itself in one text or binary frame, as plain `new WebSocket(url)`
//!   clients expect. Presence events are not sent.
//! - [`V1`]: `wsgate.v1` envelopes, JSON in a text frame:
//!   `{"type":"pub","group":"room:1","epoch":"…","offset":42,"data":…}` (see PROTOCOL.md).
//! - [`V1_EVENTS`]: the same, plus `join`/`leave` events for a client that asked for them.
//! - [`Deflated`]: any of these compressed with permessage-deflate (RFC 7692) for the clients
//!   that negotiated it: still one encoding per publication, shared by every such member, as
//!   no connection keeps a compression context ([`super::deflate`]). Messages under the
//!   route's `compression_min_bytes` go plain.

use std::sync::Mutex;

use base64::Engine;
use bytes::Bytes;

use super::frame::{self, OpCode, RSV1};
use crate::broker::{Kind, Publication};
use crate::hub::Codec;
use crate::metrics::METRICS;

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

/// A message for one connection alone (`POST /api/connections/{id}/messages`, a backend's
/// reply to a forwarded message): a plain client gets it as it is, in one frame; a `wsgate.v1`
/// client gets `{"type":"message","data":…}` (or `"b64data"` for binary).
pub fn direct(v1: bool, data: &[u8], kind: Kind) -> Bytes {
    if !v1 {
        let op = if kind == Kind::Binary {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        return frame::encode(op, data);
    }
    let mut out = String::with_capacity(data.len() + 32);
    out.push_str("{\"type\":\"message\"");
    match kind {
        Kind::Binary => {
            out.push_str(",\"b64data\":\"");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
            out.push('"');
        }
        // Checked as one JSON value by whoever made it.
        Kind::Json => {
            out.push_str(",\"data\":");
            out.push_str(&String::from_utf8_lossy(data));
        }
        _ => {
            out.push_str(",\"data\":");
            out.push_str(&json_str(&String::from_utf8_lossy(data)));
        }
    }
    out.push('}');
    frame::encode(OpCode::Text, out.as_bytes())
}

/// The codecs a connection's publications use, one per client protocol.
#[derive(Debug, Clone, Copy)]
pub struct Codecs {
    pub raw: &'static dyn Codec,
    pub v1: &'static dyn Codec,
    pub v1_events: &'static dyn Codec,
}

/// Uncompressed frames.
pub static PLAIN: Codecs = Codecs {
    raw: &RAW,
    v1: &V1,
    v1_events: &V1_EVENTS,
};

/// A protocol's frames compressed with permessage-deflate when their payload has at least
/// `min_bytes` and compressing makes them smaller; plain otherwise.
#[derive(Debug)]
pub struct Deflated {
    name: &'static str,
    inner: &'static dyn Codec,
    min_bytes: usize,
    window: u8,
}

impl Codec for Deflated {
    fn name(&self) -> &'static str {
        self.name
    }

    fn encode(&self, p: &Publication) -> Option<Bytes> {
        // A client's message comes framed for plain clients already: compress those bytes.
        let plain = match &p.encoded {
            Some((name, bytes)) if *name == self.inner.name() => bytes.clone(),
            _ => self.inner.encode(p)?,
        };
        Some(compress_frame(plain, self.min_bytes, self.window))
    }

    fn delivered(&self, frame: &Bytes, members: usize) {
        if frame.first().is_some_and(|b| b & RSV1 != 0) {
            METRICS.deflate_deliveries.add(members as u64);
        }
    }
}

/// `plain`, an unmasked data frame, compressed when its payload has at least `min_bytes` and
/// compressing makes it smaller; `plain` itself otherwise.
pub fn compress_frame(plain: Bytes, min_bytes: usize, window: u8) -> Bytes {
    let Some(h) = frame::parse_header(&plain) else {
        return plain;
    };
    let payload = &plain[h.size..];
    let Some(op) = OpCode::from_u8(h.opcode_raw).filter(|_| payload.len() >= min_bytes) else {
        return plain;
    };
    match frame::encode_compressed(op, payload, window) {
        Some(c) => {
            let header = frame::parse_header(&c).map_or(0, |h| h.size);
            METRICS.deflate_compressed.inc();
            METRICS.deflate_bytes_in.add(payload.len() as u64);
            METRICS.deflate_bytes_out.add((c.len() - header) as u64);
            c
        }
        None => plain,
    }
}

/// What connections that negotiated permessage-deflate on one route, with one window size,
/// are sent.
#[derive(Debug)]
pub struct Compression {
    pub codecs: Codecs,
    /// Payloads smaller than this go plain.
    pub min_bytes: usize,
    /// The LZ77 window our compressed messages use, or `None` to send everything plain (a
    /// client that allowed us only 8 bits, which zlib cannot compress within).
    pub window: Option<u8>,
}

impl Compression {
    /// The settings for `min_bytes` and a negotiated `window`, made once per process and kept
    /// (a few per route: the codec names must live as long as the groups that list them).
    pub fn get(min_bytes: usize, window: Option<u8>) -> &'static Compression {
        static MADE: Mutex<Vec<&'static Compression>> = Mutex::new(Vec::new());
        let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = made
            .iter()
            .find(|c| c.min_bytes == min_bytes && c.window == window)
        {
            return c;
        }
        let codecs = match window {
            None => PLAIN,
            Some(w) => {
                let wrap = |inner: &'static dyn Codec| -> &'static dyn Codec {
                    let name = format!("{}+deflate/{min_bytes}/{w}", inner.name());
                    Box::leak(Box::new(Deflated {
                        name: Box::leak(name.into_boxed_str()),
                        inner,
                        min_bytes,
                        window: w,
                    }))
                };
                Codecs {
                    raw: wrap(&RAW),
                    v1: wrap(&V1),
                    v1_events: wrap(&V1_EVENTS),
                }
            }
        };
        let c: &'static Compression = Box::leak(Box::new(Compression {
            codecs,
            min_bytes,
            window,
        }));
        made.push(c);
        c
    }

    /// A frame of the session's own (an echo) as this connection is sent it.
    pub fn frame(&self, plain: Bytes) -> Bytes {
        match self.window {
            Some(w) => compress_frame(plain, self.min_bytes, w),
            None => plain,
        }
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
    fn deflated_codecs_compress_large_messages_once_and_leave_small_ones_plain() {
        let c = Compression::get(40, Some(15));
        assert!(std::ptr::eq(c, Compression::get(40, Some(15))), "made once");
        assert_ne!(c.codecs.raw.name(), RAW.name());
        let big = publication(
            Kind::Text,
            br#"{"percent":40,"text":"progress progress progress progress progress progress"}"#,
        );
        let f = c.codecs.raw.encode(&big).unwrap();
        assert_eq!(f[0], 0x80 | RSV1 | 0x1, "FIN, RSV1, text");
        let h = frame::parse_header(&f).unwrap();
        let mut out = bytes::BytesMut::new();
        super::super::deflate::inflate(&f[h.size..], 1 << 20, &mut out).unwrap();
        assert_eq!(&out[..], &big.data[..]);
        let small = publication(Kind::Text, b"hi");
        assert_eq!(&c.codecs.raw.encode(&small).unwrap()[..], b"\x81\x02hi");
        // v1 envelopes are compressed as a whole.
        let f = c.codecs.v1.encode(&big).unwrap();
        assert_eq!(f[0] & RSV1, RSV1);
        // An 8-bit window: everything plain, on the plain codecs' lists.
        let eight = Compression::get(40, None);
        assert_eq!(eight.codecs.raw.name(), "raw");
        assert_eq!(
            eight.frame(RAW.encode(&big).unwrap()),
            RAW.encode(&big).unwrap()
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
