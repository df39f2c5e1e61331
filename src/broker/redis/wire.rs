//! How wsgate lays out a group in Redis and what its pub/sub messages and history entries look
//! like, as bytes. Pure functions, so both ends and the Lua scripts agree by test.
//!
//! Every key and the channel of group `g` share the hash tag `{g}`, so in a Redis Cluster they
//! live on one slot: the publish script touches them together, and `SPUBLISH` from it is legal.
//!
//! - channel `P:{g}`: pub/sub; a message is `epoch:offset:kind:origin:sender:data` (epoch empty
//!   and offset 0 for a group without history, sender empty when none);
//! - list `P:{g}:h`: history, oldest first, each entry `offset:at_ms:kind:data`;
//! - hash `P:{g}:m`: the stream's epoch (`e`) and last offset (`o`);
//! - hash `P:{g}:p` + sorted set `P:{g}:pz`: presence entries and when each expires.

use std::sync::Arc;

use bytes::Bytes;

use crate::broker::{Kind, Position, Publication};

/// Names of one group's keys and channel under a prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    pub channel: String,
    pub history: String,
    pub meta: String,
    pub presence: String,
    pub presence_expiry: String,
}

impl Keys {
    pub fn new(prefix: &str, group: &str) -> Self {
        let channel = format!("{prefix}:{{{group}}}");
        Keys {
            history: format!("{channel}:h"),
            meta: format!("{channel}:m"),
            presence: format!("{channel}:p"),
            presence_expiry: format!("{channel}:pz"),
            channel,
        }
    }
}

/// The group a channel of `prefix` carries, if it is one of ours.
pub fn group_of<'a>(prefix: &str, channel: &'a [u8]) -> Option<&'a str> {
    let rest = channel
        .strip_prefix(prefix.as_bytes())?
        .strip_prefix(b":{")?;
    let group = rest.strip_suffix(b"}")?;
    std::str::from_utf8(group).ok()
}

pub fn kind_code(k: Kind) -> &'static str {
    match k {
        Kind::Text => "t",
        Kind::Json => "j",
        Kind::Binary => "b",
        Kind::Join => "J",
        Kind::Leave => "L",
    }
}

fn kind_of(code: &[u8]) -> Option<Kind> {
    Some(match code {
        b"t" => Kind::Text,
        b"j" => Kind::Json,
        b"b" => Kind::Binary,
        b"J" => Kind::Join,
        b"L" => Kind::Leave,
        _ => return None,
    })
}

/// Splits `s` at its first `n` colons: `n` fields and the rest.
fn fields<const N: usize>(s: &[u8]) -> Option<([&[u8]; N], &[u8])> {
    let mut out = [&s[..0]; N];
    let mut rest = s;
    for f in out.iter_mut() {
        let at = rest.iter().position(|&b| b == b':')?;
        *f = &rest[..at];
        rest = &rest[at + 1..];
    }
    Some((out, rest))
}

fn num(s: &[u8]) -> Option<u64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The message head (everything before the data) of a publication sent without a stream.
pub fn plain_head(p: &Publication) -> String {
    format!(
        "::{}:{:x}:{}:",
        kind_code(p.kind),
        p.origin,
        p.sender.map(|s| s.to_string()).unwrap_or_default()
    )
}

/// What follows `epoch:offset:` in a message, for the publish script to append its position to.
pub fn tail_head(p: &Publication) -> String {
    format!(
        "{}:{:x}:{}:",
        kind_code(p.kind),
        p.origin,
        p.sender.map(|s| s.to_string()).unwrap_or_default()
    )
}

/// A pub/sub message of `group` back into a publication.
pub fn decode_message(group: &Arc<str>, msg: &Bytes) -> Option<Publication> {
    let ([epoch, offset, kind, origin, sender], data) = fields::<5>(msg)?;
    let position = if epoch.is_empty() {
        None
    } else {
        Some(Position {
            epoch: Arc::from(std::str::from_utf8(epoch).ok()?),
            offset: num(offset)?,
        })
    };
    let at = msg.len() - data.len();
    Some(Publication {
        group: group.clone(),
        data: msg.slice(at..),
        kind: kind_of(kind)?,
        position,
        origin: u64::from_str_radix(std::str::from_utf8(origin).ok()?, 16).ok()?,
        sender: if sender.is_empty() {
            None
        } else {
            Some(num(sender)?)
        },
        encoded: None,
    })
}

/// One history entry: its offset, when it was kept (Redis' clock, ms) and the publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub at_ms: u64,
    pub kind: Kind,
    pub data: Bytes,
}

pub fn decode_entry(e: &Bytes) -> Option<Entry> {
    let ([offset, at, kind], data) = fields::<3>(e)?;
    let at_data = e.len() - data.len();
    Some(Entry {
        offset: num(offset)?,
        at_ms: num(at)?,
        kind: kind_of(kind)?,
        data: e.slice(at_data..),
    })
}

/// A presence entry as stored: `=user` (or `-` for none), a newline, then the info JSON (or
/// `-`): a user is never confused with "none", and JSON never starts with `-` alone.
pub fn encode_presence(user: Option<&str>, info: Option<&str>) -> String {
    format!(
        "{}\n{}",
        user.map_or("-".to_string(), |u| format!("={u}")),
        info.unwrap_or("-")
    )
}

pub fn decode_presence(s: &[u8]) -> (Option<Arc<str>>, Option<Arc<str>>) {
    let s = String::from_utf8_lossy(s);
    let (user, info) = s.split_once('\n').unwrap_or((&s, "-"));
    (
        user.strip_prefix('=').map(Arc::from),
        (info != "-").then(|| Arc::from(info)),
    )
}

/// A presence field: `node.conn` (node in hex, as clients see connection ids).
pub fn presence_field(node: u64, conn: u64) -> String {
    format!("{node:x}.{conn}")
}

pub fn parse_presence_field(f: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(f).ok()?;
    let (n, c) = s.split_once('.')?;
    Some((u64::from_str_radix(n, 16).ok()?, c.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_group_shares_its_hash_tag_and_the_channel_names_the_group() {
        let k = Keys::new("ws", "room:{1}");
        assert_eq!(k.channel, "ws:{room:{1}}");
        assert_eq!(k.history, "ws:{room:{1}}:h");
        assert_eq!(group_of("ws", k.channel.as_bytes()), Some("room:{1}"));
        assert_eq!(group_of("other", k.channel.as_bytes()), None);
        assert_eq!(group_of("ws", b"ws:room"), None);
    }

    #[test]
    fn a_message_round_trips_with_binary_data_and_colons() {
        let mut p = Publication::new("g", Bytes::from_static(b"a:b\0\xffc"), Kind::Binary);
        p.origin = 0xabc;
        p.sender = Some(7);
        let msg = Bytes::from(format!("ep1:42:{}", tail_head(&p)).into_bytes());
        let msg = Bytes::from([&msg[..], &p.data[..]].concat());
        let g: Arc<str> = Arc::from("g");
        let back = decode_message(&g, &msg).unwrap();
        assert_eq!(back.data, p.data);
        assert_eq!(back.origin, 0xabc);
        assert_eq!(back.sender, Some(7));
        assert_eq!(back.position.unwrap().offset, 42);
        let plain = Bytes::from(
            [
                plain_head(&Publication::new("g", Bytes::new(), Kind::Json)).as_bytes(),
                b"{}",
            ]
            .concat(),
        );
        let back = decode_message(&g, &plain).unwrap();
        assert_eq!(
            (back.position, back.kind, back.sender),
            (None, Kind::Json, None)
        );
        assert_eq!(&back.data[..], b"{}");
        assert!(decode_message(&g, &Bytes::from_static(b"garbage")).is_none());
    }

    #[test]
    fn entries_and_presence_round_trip() {
        let e = decode_entry(&Bytes::from_static(b"9:1700000000123:t:x:y")).unwrap();
        assert_eq!(
            (e.offset, e.at_ms, e.kind, &e.data[..]),
            (9, 1700000000123, Kind::Text, &b"x:y"[..])
        );
        let s = encode_presence(Some("-ann"), Some("{\"a\":1}"));
        assert_eq!(
            decode_presence(s.as_bytes()),
            (Some(Arc::from("-ann")), Some(Arc::from("{\"a\":1}")))
        );
        assert_eq!(
            decode_presence(encode_presence(None, None).as_bytes()),
            (None, None)
        );
        assert_eq!(
            parse_presence_field(presence_field(0xff, 12).as_bytes()),
            Some((0xff, 12))
        );
    }
}
