//! Request heads checked before hyper sees them, so that what hyper would refuse with an empty
//! body gets a status and a sentence: the first head read here (431 or 414 past
//! `server.max_header_bytes`, 408 when it stalls), and every head, the first and each later one of
//! a keep-alive connection, checked by [`check`] (too many fields, NUL bytes, folded lines, an
//! unknown version, ambiguous framing) through a [`Watch`] on the connection's reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::transport::Flow;

/// Why no request head could be read.
#[derive(Debug)]
pub enum HeadError {
    /// The client closed (or sent nothing before the timeout): nothing to answer.
    Gone,
    /// Over the limit: what was read of it.
    TooLarge(BytesMut),
    Timeout,
}

/// Where the head ends (after its blank line), searching from `from`: CRLF CRLF, or a bare LF
/// line ending anywhere in it (RFC 9112 §2.2 lets a recipient take a bare LF as a line end, and
/// hyper behind does).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// Length of the head at the start of `buf` (all of it when it has no end).
pub fn head_len(buf: &[u8]) -> usize {
    head_end(buf, 0).unwrap_or(buf.len())
}

/// Reads until the end of the first request head; returns every byte read (the head and
/// anything pipelined after it), to be replayed to hyper.
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
    timeout: Duration,
) -> Result<BytesMut, HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    let res = tokio::time::timeout(timeout, async {
        loop {
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(buf.capacity().max(1024));
            }
            let scan_from = buf.len().saturating_sub(3);
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(HeadError::Gone),
                Ok(_) => {}
            }
            if let Some(end) = head_end(&buf, scan_from) {
                if end > max {
                    buf.truncate(end);
                    return Err(HeadError::TooLarge(std::mem::take(&mut buf)));
                }
                return Ok(());
            }
            if buf.len() > max {
                return Err(HeadError::TooLarge(std::mem::take(&mut buf)));
            }
        }
    })
    .await;
    match res {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(e)) => Err(e),
        Err(_) if buf.is_empty() => Err(HeadError::Gone),
        Err(_) => Err(HeadError::Timeout),
    }
}

/// What every request head must keep to: `server.max_header_bytes` and `server.max_headers`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// A head refused before it is routed: the status and the sentence saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub body: String,
}

impl Refused {
    fn new(status: StatusCode, why: impl std::fmt::Display) -> Self {
        crate::metrics::METRICS.head_refusals.inc();
        let reason = status.canonical_reason().unwrap_or("");
        Refused {
            status,
            body: format!("{} {reason}: {why}\n", status.as_u16()),
        }
    }
}

/// How the message behind a head ends, for finding the next head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A body of this many bytes (0: none).
    Length(u64),
    Chunked,
    /// An upgrade or CONNECT: what follows may not be HTTP. `bodiless` when the request
    /// announced no body (so, if the answer does not switch, the next head follows it).
    Switch {
        bodiless: bool,
    },
}

/// Longest request target hyper takes (its `MAX_URI_LEN`): past it, 414 with our sentence.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// The refusal of a head over `server.max_header_bytes` (`seen` bytes of it so far): 414 when
/// the request line alone is too long, 431 otherwise.
pub fn too_large(seen: &[u8], lim: &Limits) -> Refused {
    let line = seen.iter().position(|&b| b == b'\n').unwrap_or(seen.len());
    if line > lim.max_bytes {
        return Refused::new(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request line is over {} bytes (server.max_header_bytes). Send long data in a request body, not in the URL.",
                lim.max_bytes
            ),
        );
    }
    Refused::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!(
            "the request head is at least {} bytes and the limit is {} (server.max_header_bytes). Send fewer or \
smaller headers (large cookies are the usual cause), or raise the limit.",
            seen.len(),
            lim.max_bytes
        ),
    )
}

/// Checks one complete request head (up to and including its blank line) as hyper would parse
/// it, saying what is wrong instead of hyper's empty 400/414/431; returns how its message ends.
pub fn check(head: &[u8], lim: &Limits) -> Result<Framing, Refused> {
    use StatusCode as S;
    if head.len() > lim.max_bytes {
        return Err(too_large(head, lim));
    }
    if let Some(at) = head.iter().position(|&b| b == 0) {
        return Err(Refused::new(
            S::BAD_REQUEST,
            format!("the request head holds a NUL byte (at byte {at}), which HTTP never allows."),
        ));
    }
    if head
        .split(|&b| b == b'\n')
        .skip(1)
        .any(|l| matches!(l.first(), Some(b' ' | b'\t')))
    {
        return Err(Refused::new(
            S::BAD_REQUEST,
            "a header line starts with whitespace: folded header lines (obs-fold) are not accepted \
(RFC 9112 section 5.2). Send each field on one line.",
        ));
    }
    let mut fields = vec![httparse::EMPTY_HEADER; lim.max_headers];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(head);
    let bad = |why: &str| Err(Refused::new(S::BAD_REQUEST, why));
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return bad("the request head ends before its blank line.");
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused::new(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "the request has more than {} header fields (server.max_headers). Send fewer, or raise the limit.",
                    lim.max_headers
                ),
            ));
        }
        Err(httparse::Error::Version) => {
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            let version = String::from_utf8_lossy(line)
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .trim()
                .chars()
                .take(16)
                .collect::<String>();
            return Err(Refused::new(
                S::HTTP_VERSION_NOT_SUPPORTED,
                format!("{version:?} is not a version served here; use HTTP/1.1."),
            ));
        }
        Err(httparse::Error::HeaderName) => {
            return bad(
                "a header field name holds a character a field name may not (RFC 9110 section 5.1), or a line lacks its ':'.",
            );
        }
        Err(httparse::Error::HeaderValue) => {
            return bad("a header field value holds a control character.");
        }
        Err(httparse::Error::Token | httparse::Error::NewLine | httparse::Error::Status) => {
            return bad(
                "the request line is malformed; it must be METHOD SP target SP HTTP/1.1 with CRLF line ends.",
            );
        }
    }
    if req.path.is_some_and(|p| p.len() > MAX_TARGET) {
        return Err(Refused::new(
            S::URI_TOO_LONG,
            format!(
                "the request target is over {MAX_TARGET} bytes. Send long data in a request body, not in the URL."
            ),
        ));
    }
    let mut length: Option<&[u8]> = None;
    let mut chunked = None;
    let mut switch = req.method == Some("CONNECT");
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("content-length") {
            if length.is_some_and(|l| l != f.value) {
                return bad("the request has two different Content-Length fields.");
            }
            length = Some(f.value);
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides; anything but chunked last has no length hyper could find.
            let last = f.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if f.name.eq_ignore_ascii_case("upgrade") {
            switch = true;
        }
    }
    match (length, chunked) {
        (Some(_), Some(_)) => bad(
            "the request has both Content-Length and Transfer-Encoding, which can smuggle a request \
past a proxy (RFC 9112 section 6.3). Send one of them.",
        ),
        (_, Some(false)) => bad("Transfer-Encoding must end with chunked on a request."),
        _ if switch => Ok(Framing::Switch {
            bodiless: chunked.is_none() && length.is_none_or(|v| v.trim_ascii() == b"0"),
        }),
        (_, Some(true)) => Ok(Framing::Chunked),
        (Some(v), None) => match std::str::from_utf8(v.trim_ascii()).ok().and_then(|v| {
            v.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| v.parse::<u64>().ok())
                .flatten()
        }) {
            Some(n) => Ok(Framing::Length(n)),
            None => bad("Content-Length is not a number of bytes."),
        },
        (None, None) => Ok(Framing::Length(0)),
    }
}

/// The request hyper is given in place of a refused head: it ends the connection, and the
/// service answers it with the refusal (see [`Refusal`]).
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: wsgate\r\nconnection: close\r\n\r\n";

/// What the [`Watch`] and the service answering a connection's requests tell each other: the
/// refusal of the `n`th request (0 the first), which the service answers in order after the
/// requests before it; and which upgrade request was answered without switching protocols,
/// after which the watch checks heads again.
#[derive(Debug, Default)]
pub struct Refusal {
    refused: Mutex<Option<(u64, Refused)>>,
    /// 1 + the index of the last request answered with anything but 101 (0: none yet).
    not_switched: std::sync::atomic::AtomicU64,
}

impl Refusal {
    /// The refusal to answer the `n`th request with, if it is that one.
    pub fn take(&self, n: u64) -> Option<Refused> {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if r.as_ref().is_some_and(|(i, _)| *i == n) {
            r.take().map(|(_, refused)| refused)
        } else {
            None
        }
    }

    /// The `n`th request was answered with a status other than 101: the connection stays
    /// HTTP/1.1 (RFC 9110 section 7.8). Called before the answer is written, so before the
    /// client can send its next request.
    pub fn answered_without_switching(&self, n: u64) {
        self.not_switched
            .store(n + 1, std::sync::atomic::Ordering::Release);
    }

    fn was_not_switched(&self, n: u64) -> bool {
        self.not_switched.load(std::sync::atomic::Ordering::Acquire) == n + 1
    }
}

/// Where a [`Watch`] is in the byte stream.
#[derive(Debug)]
enum At {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// After upgrade request number `.0`, waiting for its answer: if it did not switch, the
    /// next bytes are the next head.
    Asked(u64),
}

/// Checks every request head of a keep-alive connection before hyper reads it (the first is
/// also checked by `conn`): a head is released to hyper only once it is complete and passed
/// [`check`]; a refused one is replaced by a stand-in request that the service answers with
/// the refusal. Bodies pass as they arrive (their framing is followed to find the next head);
/// after an upgrade or CONNECT the watch steps aside, unless the answer did not switch
/// protocols and the client waited for it, as RFC 6455 clients do: then it checks the next head.
#[derive(Debug)]
pub struct Watch {
    lim: Limits,
    at: At,
    /// Bytes not yet released: part of a head or of a chunk's framing line.
    held: BytesMut,
    /// Heads released so far.
    heads: u64,
    refusal: Arc<Refusal>,
}

/// Longest chunk-size or trailer line waited for.
const MAX_LINE: usize = 4096;

impl Watch {
    pub fn new(lim: Limits, refusal: Arc<Refusal>) -> Self {
        Watch {
            lim,
            at: At::Head,
            held: BytesMut::new(),
            heads: 0,
            refusal,
        }
    }

    /// Takes one line (through its LF) off `held` into `out`; `None` when it is not complete.
    fn line(&mut self, out: &mut BytesMut) -> Option<Option<BytesMut>> {
        match self.held.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = self.held.split_to(i + 1);
                out.extend_from_slice(&line);
                Some(Some(line))
            }
            None if self.held.len() > MAX_LINE => Some(None),
            None => None,
        }
    }
}

impl crate::transport::Inspect for Watch {
    fn inspect(&mut self, input: &[u8], out: &mut BytesMut) -> Flow {
        self.held.extend_from_slice(input);
        loop {
            match self.at {
                At::Head => {
                    let Some(end) = head_end(&self.held, 0) else {
                        if self.held.len() > self.lim.max_bytes {
                            let refused = too_large(&self.held, &self.lim);
                            return self.refuse(refused, out);
                        }
                        return Flow::More;
                    };
                    let head = self.held.split_to(end);
                    match check(&head, &self.lim) {
                        Ok(framing) => {
                            self.heads += 1;
                            out.extend_from_slice(&head);
                            self.at = match framing {
                                Framing::Switch { bodiless } => {
                                    if !bodiless || !self.held.is_empty() {
                                        // Bytes sent before the answer, or a body: no head
                                        // boundary to trust. Hyper's own limits apply.
                                        return self.step_aside(out);
                                    }
                                    At::Asked(self.heads - 1)
                                }
                                Framing::Length(0) => At::Head,
                                Framing::Length(n) => At::Body(n),
                                Framing::Chunked => At::ChunkSize,
                            };
                        }
                        Err(refused) => return self.refuse(refused, out),
                    }
                }
                At::Asked(n) => {
                    if self.held.is_empty() {
                        return Flow::More;
                    }
                    if !self.refusal.was_not_switched(n) {
                        // Switched (these are the new protocol's bytes), or the client did not
                        // wait for the answer.
                        return self.step_aside(out);
                    }
                    self.at = At::Head;
                }
                At::Body(n) => {
                    if self.held.is_empty() {
                        return Flow::More;
                    }
                    let take = n.min(self.held.len() as u64);
                    out.extend_from_slice(&self.held.split_to(take as usize));
                    self.at = if take == n {
                        At::Head
                    } else {
                        At::Body(n - take)
                    };
                }
                At::ChunkData(n) => {
                    if self.held.is_empty() {
                        return Flow::More;
                    }
                    let take = n.min(self.held.len() as u64);
                    out.extend_from_slice(&self.held.split_to(take as usize));
                    self.at = if take == n {
                        At::ChunkEnd
                    } else {
                        At::ChunkData(n - take)
                    };
                }
                At::ChunkSize | At::ChunkEnd | At::Trailers => {
                    let Some(line) = self.line(out) else {
                        return Flow::More;
                    };
                    // A body hyper will refuse anyway: from here on it is hyper's to judge.
                    let Some(line) = line else {
                        return self.step_aside(out);
                    };
                    let text = line.trim_ascii();
                    self.at = match self.at {
                        At::ChunkEnd if text.is_empty() => At::ChunkSize,
                        At::ChunkEnd => return self.step_aside(out),
                        At::Trailers if text.is_empty() => At::Head,
                        At::Trailers => At::Trailers,
                        _ => {
                            let hex = text.split(|&b| b == b';').next().unwrap_or_default();
                            match std::str::from_utf8(hex.trim_ascii())
                                .ok()
                                .and_then(|h| u64::from_str_radix(h, 16).ok())
                            {
                                Some(0) => At::Trailers,
                                Some(n) => At::ChunkData(n),
                                None => return self.step_aside(out),
                            }
                        }
                    };
                }
            }
        }
    }
}

impl Watch {
    fn refuse(&mut self, refused: Refused, out: &mut BytesMut) -> Flow {
        tracing::debug!(status = %refused.status, request = self.heads, "request head refused");
        *self
            .refusal
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((self.heads, refused));
        self.held = BytesMut::new();
        out.extend_from_slice(STAND_IN);
        Flow::End
    }

    fn step_aside(&mut self, out: &mut BytesMut) -> Flow {
        out.extend_from_slice(&self.held);
        self.held = BytesMut::new();
        Flow::Done
    }
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn a_head_ends_at_its_blank_line_whatever_the_line_endings() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\nrest", 0), Some(21));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\r\n", 0), Some(22));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }
}
