//! Raw HTTP/1.1 for the upstream side of WebSocket upgrades (and, on the fast path, the client
//! side too): the upstream request head written once into one buffer with canonical header
//! names, the upstream's response head read with `httparse`, and the body of a non-101 answer
//! decoded for relaying.
//!
//! A hyper client per upgrade cost a connection task, an `OnUpgrade` hand-over and a header map
//! per handshake, and could not write `Sec-WebSocket-Key` in the case some servers insist on
//! (hyper writes names lower-case or as `Sec-Websocket-Key`); an upgrade is one request on a
//! fresh connection, so none of what the client machinery offers is used.

use std::io;
use std::task::{Context, Poll};

use super::headers::{Forwarding, is_fixed_hop_by_hop};
use super::tls::Stream;
use crate::transport::Transport;
use bytes::{Bytes, BytesMut};

/// The most header fields read in one head: hyper's own default, so a head that hyper would
/// take is taken here too.
pub const MAX_HEADERS: usize = 100;

/// The most header fields of a client request the fast path takes (browsers send about 15 with
/// an upgrade). The parsed fields live in the connection task across the whole exchange, and
/// that task's size is paid by every connection; a head with more goes to hyper, which takes
/// up to [`MAX_HEADERS`].
pub const MAX_FAST_HEADERS: usize = 40;

/// The largest upstream response head read before giving up on the upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// One header field as bytes, whichever parser produced it.
pub type Field<'a> = (&'a [u8], &'a [u8]);

/// The fields of an `httparse` head as [`Field`]s.
pub fn fields<'a>(h: &'a [httparse::Header<'a>]) -> impl Iterator<Item = Field<'a>> + Clone {
    h.iter()
        .filter(|h| !h.name.is_empty())
        .map(|h| (h.name.as_bytes(), h.value))
}

/// Whether a comma-separated field (possibly repeated) holds `token`, case-insensitively.
pub fn has_token<'a>(fields: impl Iterator<Item = Field<'a>>, name: &str, token: &str) -> bool {
    fields
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .any(|(_, v)| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
}

/// The first value of field `name`.
pub fn get<'a>(mut fields: impl Iterator<Item = Field<'a>>, name: &str) -> Option<&'a [u8]> {
    fields
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

/// Whether field `name` is hop-by-hop in a message with `fields` (RFC 9110 §7.6.1): one of the
/// fixed list, or named in a `Connection` field.
pub fn is_hop_by_hop<'a>(name: &[u8], fields: impl Iterator<Item = Field<'a>>) -> bool {
    is_fixed_hop_by_hop(name)
        || has_token(
            fields,
            "connection",
            // Field names are ASCII; a name that is not cannot be named in Connection anyway.
            std::str::from_utf8(name).unwrap_or("\u{0}"),
        )
}

/// Writes a field name in canonical case (`Sec-WebSocket-Key`, `X-Forwarded-For`): some
/// WebSocket servers compare names case-sensitively (Caddy PR #6621 and Traefik normalise for
/// the same reason).
pub fn put_canonical(out: &mut Vec<u8>, name: &[u8]) {
    for (i, part) in name.split(|&b| b == b'-').enumerate() {
        if i > 0 {
            out.push(b'-');
        }
        if part.eq_ignore_ascii_case(b"websocket") {
            out.extend_from_slice(b"WebSocket");
            continue;
        }
        for (j, &b) in part.iter().enumerate() {
            out.push(if j == 0 {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            });
        }
    }
}

fn put_field(out: &mut Vec<u8>, canonical_name: &[u8], value: &[u8]) {
    out.extend_from_slice(canonical_name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the upstream request's `Host` is chosen.
#[derive(Debug, Clone, Copy)]
pub struct HostRule<'a> {
    /// Keep the client's `Host` when it sent one (`proxy.preserve_host`).
    pub preserve: bool,
    /// The server's `host:port`, used otherwise.
    pub upstream: &'a str,
}

/// Writes the upstream request head of a WebSocket upgrade into `out`: `GET target`, the
/// client's end-to-end fields with canonical names, `Host` per `host`, the forwarding fields per
/// `fwd`, and `Connection: Upgrade` + `Upgrade: websocket` (hop-by-hop, so removed with the rest
/// and put back for this hop).
pub fn put_upgrade_request<'a, I>(
    out: &mut Vec<u8>,
    target: &[u8],
    fields: I,
    fwd: &Forwarding,
    host: HostRule<'_>,
) where
    I: Iterator<Item = Field<'a>> + Clone,
{
    let client_host = get(fields.clone(), "host");
    let (mut has_xfp, mut has_xfh) = (false, false);
    for (n, _) in fields.clone() {
        has_xfp |= n.eq_ignore_ascii_case(b"x-forwarded-proto");
        has_xfh |= n.eq_ignore_ascii_case(b"x-forwarded-host");
    }
    // Names that do not come through as they are: computed below, or hop-by-hop.
    let managed = |n: &[u8]| {
        n.eq_ignore_ascii_case(b"host")
            || n.eq_ignore_ascii_case(b"x-forwarded-for")
            || n.eq_ignore_ascii_case(b"forwarded")
            || (!fwd.trusted
                && (n.eq_ignore_ascii_case(b"x-forwarded-proto")
                    || n.eq_ignore_ascii_case(b"x-forwarded-host")))
    };

    out.extend_from_slice(b"GET ");
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    match client_host {
        Some(h) if host.preserve => out.extend_from_slice(h),
        _ => out.extend_from_slice(host.upstream.as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    for (n, v) in fields.clone() {
        if managed(n) || is_hop_by_hop(n, fields.clone()) {
            continue;
        }
        put_canonical(out, n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let values = |name: &'static [u8]| {
        fields
            .clone()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    out.extend_from_slice(b"X-Forwarded-For: ");
    fwd.put_xff(out, values(b"x-forwarded-for"));
    out.extend_from_slice(b"\r\n");
    if !(fwd.trusted && has_xfp) {
        put_field(out, b"X-Forwarded-Proto", fwd.proto.as_bytes());
    }
    if !(fwd.trusted && has_xfh)
        && let Some(h) = client_host
    {
        put_field(out, b"X-Forwarded-Host", h);
    }
    out.extend_from_slice(b"Forwarded: ");
    fwd.put_forwarded(out, values(b"forwarded"), client_host);
    out.extend_from_slice(b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
}

/// How the body of a response is delimited (RFC 9112 §6.3, for responses to a `GET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    Eof,
}

/// The framing of a response with `status` and `fields`; `Err` says what is wrong with it.
pub fn response_framing<'a>(
    status: u16,
    fields: impl Iterator<Item = Field<'a>> + Clone,
) -> Result<Framing, String> {
    if status < 200 || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let mut te = fields
        .clone()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding"))
        .peekable();
    if te.peek().is_some() {
        let last = te
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .last();
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::Eof,
        });
    }
    let mut len = None;
    for (_, v) in fields.filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length")) {
        for part in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    format!(
                        "its Content-Length {:?} is not a number",
                        String::from_utf8_lossy(v)
                    )
                })?;
            if len.is_some_and(|l| l != n) {
                return Err("it sent conflicting Content-Length values".into());
            }
            len = Some(n);
        }
    }
    Ok(len.map_or(Framing::Eof, Framing::Length))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Eof,
    Done,
}

/// Decodes a response body from a socket, chunk by chunk, starting with the bytes that came
/// with the head. Chunked bodies come out as their data only (trailers are dropped, as for
/// plain HTTP).
#[derive(Debug)]
pub struct BodyReader {
    buf: BytesMut,
    state: State,
    idle: super::idle::ReadIdle,
}

impl BodyReader {
    /// `read_timeout` bounds each wait for more of the body.
    pub fn new(framing: Framing, already: BytesMut, read_timeout: std::time::Duration) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Eof => State::Eof,
        };
        BodyReader {
            buf: already,
            state,
            idle: super::idle::ReadIdle::new(read_timeout),
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The exact length still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of body data; `None` at the end of the body.
    pub fn poll_chunk<S: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let mut scratch = [0u8; 8192];
        loop {
            if let Some(out) = self.step()? {
                return Poll::Ready(Ok(out));
            }
            match io.poll_recv(cx, &mut scratch) {
                Poll::Ready(Ok(0)) if self.state == State::Eof => {
                    self.state = State::Done;
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection in the middle of the body",
                    )));
                }
                Poll::Ready(Ok(n)) => {
                    self.buf.extend_from_slice(&scratch[..n]);
                    self.idle.progress();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.idle.poll_expired(cx)?;
                    return Poll::Pending;
                }
            }
        }
    }

    /// Advances over buffered bytes: `Some(output)` when there is something to return, `None`
    /// when more bytes must be read.
    fn step(&mut self) -> io::Result<Option<Option<Bytes>>> {
        loop {
            match self.state {
                State::Done => return Ok(Some(None)),
                State::Length(0) => self.state = State::Done,
                State::Length(n) | State::ChunkData(n) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (self.buf.len() as u64).min(n);
                    let left = n - take;
                    self.state = match self.state {
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Some(Some(self.buf.split_to(take as usize).freeze())));
                }
                State::Eof => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Some(self.buf.split().freeze())));
                }
                State::ChunkEnd => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(bad_chunk("a chunk is not followed by CRLF"));
                    }
                    let _ = self.buf.split_to(2);
                    self.state = State::ChunkSize;
                }
                State::ChunkSize | State::Trailers => {
                    let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            return Err(bad_chunk("a chunk-size or trailer line is too long"));
                        }
                        return Ok(None);
                    };
                    let line = self.buf.split_to(end + 1);
                    let line = line[..end].strip_suffix(b"\r").unwrap_or(&line[..end]);
                    if self.state == State::Trailers {
                        if line.is_empty() {
                            self.state = State::Done;
                        }
                        continue;
                    }
                    let digits = line
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or_else(|| bad_chunk("a chunk size is not hexadecimal"))?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
            }
        }
    }
}

fn bad_chunk(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the upstream's chunked body is malformed: {what}"),
    )
}

/// A response body streamed from the upstream socket to a hyper response. It holds the
/// server's in-flight count until the body is done.
#[derive(Debug)]
pub struct UpstreamBody {
    io: Stream,
    reader: BodyReader,
    _active: super::balance::Active,
}

impl UpstreamBody {
    pub fn new(io: Stream, reader: BodyReader, active: super::balance::Active) -> Self {
        UpstreamBody {
            io,
            reader,
            _active: active,
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        let me = self.get_mut();
        me.reader
            .poll_chunk(cx, &mut me.io)
            .map(|r| r.transpose().map(|r| r.map(hyper::body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_done()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.reader.remaining() {
            Some(n) => hyper::body::SizeHint::with_exact(n),
            None => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::{Client, Trusted};

    #[test]
    fn names_get_canonical_case() {
        for (name, want) in [
            ("sec-websocket-key", "Sec-WebSocket-Key"),
            ("SEC-WEBSOCKET-PROTOCOL", "Sec-WebSocket-Protocol"),
            ("x-forwarded-for", "X-Forwarded-For"),
            ("cookie", "Cookie"),
            ("x--odd-", "X--Odd-"),
        ] {
            let mut out = Vec::new();
            put_canonical(&mut out, name.as_bytes());
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    fn head(pairs: &[(&'static str, &'static str)], trusted: &[&str], preserve: bool) -> String {
        let trusted = Trusted::new(&trusted.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let fwd = Forwarding::new(Client {
            peer: "10.1.2.3:5000".parse().unwrap(),
            proto: "http",
            trusted: &trusted,
        });
        let mut out = Vec::new();
        put_upgrade_request(
            &mut out,
            b"/chat?x=1",
            pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            &fwd,
            HostRule {
                preserve,
                upstream: "127.0.0.1:9",
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_upgrade_head_follows_the_header_rules() {
        let h = head(
            &[
                ("host", "example.com"),
                ("connection", "Upgrade, X-Foo"),
                ("upgrade", "WebSocket"),
                ("x-foo", "1"),
                ("keep-alive", "5"),
                ("sec-websocket-key", "k"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=6.6.6.6"),
            ],
            &[],
            true,
        );
        assert_eq!(
            h,
            "GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nSec-WebSocket-Key: k\r\n\
X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: example.com\r\n\
Forwarded: for=10.1.2.3;host=example.com;proto=http\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
        let h = head(
            &[
                ("Host", "example.com"),
                ("X-Forwarded-For", "198.51.100.1"),
                ("X-Forwarded-Proto", "https"),
                ("Forwarded", "for=198.51.100.1;proto=https"),
            ],
            &["10.0.0.0/8"],
            false,
        );
        assert_eq!(
            h,
            "GET /chat?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Forwarded-Proto: https\r\n\
X-Forwarded-For: 198.51.100.1, 10.1.2.3\r\nX-Forwarded-Host: example.com\r\n\
Forwarded: for=198.51.100.1;proto=https, for=10.1.2.3;host=example.com;proto=http\r\n\
Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |pairs: &[(&'static str, &'static str)], status| {
            response_framing(
                status,
                pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            )
        };
        assert_eq!(f(&[("content-length", "5")], 200), Ok(Framing::Length(5)));
        assert_eq!(
            f(
                &[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "5")
                ],
                200
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(f(&[("transfer-encoding", "gzip")], 200), Ok(Framing::Eof));
        assert_eq!(f(&[], 404), Ok(Framing::Eof));
        assert_eq!(f(&[("content-length", "5")], 304), Ok(Framing::Empty));
        assert!(f(&[("content-length", "5, 6")], 200).is_err());
        assert!(f(&[("content-length", "-1")], 200).is_err());
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..wire.len() {
            let mut r = BodyReader::new(
                Framing::Chunked,
                BytesMut::from(&wire[..split]),
                std::time::Duration::from_secs(60),
            );
            let mut got = Vec::new();
            let mut fed = split;
            loop {
                match r.step().unwrap() {
                    Some(Some(b)) => got.extend_from_slice(&b),
                    Some(None) => break,
                    None => {
                        assert!(
                            fed < wire.len(),
                            "wants more than the body at split {split}"
                        );
                        r.buf.extend_from_slice(&wire[fed..fed + 1]);
                        fed += 1;
                    }
                }
            }
            assert_eq!(got, b"hello world", "split at {split}");
            assert_eq!(fed, wire.len(), "split at {split}");
        }
    }
}
